//! The documents spans become: the mapping (ids, names, the http block, flags, cause,
//! annotations, metadata, origin and aws), and trimming: every span's document ends within
//! 64 KB whatever holds the bulk, in time linear in its size.

use super::*;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use opentelemetry_proto::tonic::trace::v1::{span::Event, Status};
use serde_json::{json, Value};

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}
fn s(k: &str, v: &str) -> KeyValue {
    kv(k, any_value::Value::StringValue(v.into()))
}

fn span(kind: SpanKind, parent: bool, attrs: Vec<KeyValue>) -> Span {
    Span {
        trace_id: (1..=16).collect(),
        span_id: vec![0xab; 8],
        parent_span_id: if parent { vec![0xcd; 8] } else { Vec::new() },
        name: "egress colorteller.local".into(),
        kind: kind as i32,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        attributes: attrs,
        ..Default::default()
    }
}

fn resource(attrs: Vec<KeyValue>) -> Resource {
    Resource {
        attributes: attrs,
        ..Default::default()
    }
}

#[test]
fn envoy_client_span_with_string_status_becomes_remote_subsegment_with_fault() {
    // As Envoy 1.40's OpenTelemetry tracer sends an egress span.
    let sp = span(
        SpanKind::Client,
        true,
        vec![
            s("http.method", "GET"),
            s("http.url", "http://colorteller.local/color"),
            s("http.status_code", "503"),
            s("upstream_cluster", "node/colorteller-black/9080"),
            s("x-maille-variant", "colorteller-black"),
            s("user_agent", "curl/8.0"),
            s("component", "proxy"),
            s("response_flags", "UH"),
        ],
    );
    let doc = span_to_document(
        &sp,
        Some(&resource(vec![s("service.name", "gateway")])),
        &Options::default(),
    )
    .unwrap();
    check_document(&doc).unwrap();
    assert_eq!(doc["trace_id"], "1-01020304-05060708090a0b0c0d0e0f10");
    assert_eq!(doc["id"], "abababababababab");
    assert_eq!(doc["parent_id"], "cdcdcdcdcdcdcdcd");
    assert_eq!(doc["type"], "subsegment");
    assert_eq!(doc["namespace"], "remote");
    assert_eq!(doc["name"], "node/colorteller-black/9080");
    assert_eq!(doc["http"]["request"]["method"], "GET");
    assert_eq!(
        doc["http"]["request"]["url"],
        "http://colorteller.local/color"
    );
    assert_eq!(doc["http"]["request"]["user_agent"], "curl/8.0");
    assert_eq!(doc["http"]["response"]["status"], 503);
    assert_eq!(doc["fault"], true);
    assert!(doc.get("error").is_none());
    assert_eq!(doc["annotations"]["maille_variant"], "colorteller-black");
    assert_eq!(
        doc["annotations"]["upstream_cluster"],
        "node/colorteller-black/9080"
    );
    assert_eq!(doc["metadata"]["default"]["response_flags"], "UH");
    assert!(doc["metadata"]["default"].get("http.status_code").is_none());
    assert!(
        (doc["end_time"].as_f64().unwrap() - doc["start_time"].as_f64().unwrap() - 0.25).abs()
            < 1e-6
    );
}

#[test]
fn server_span_is_a_segment_named_for_the_service_with_aws_origin() {
    let sp = span(
        SpanKind::Server,
        true,
        vec![
            s("http.request.method", "POST"),
            s("url.scheme", "https"),
            s("server.address", "colorgateway.demo.local"),
            s("url.path", "/color"),
            kv("http.response.status_code", any_value::Value::IntValue(429)),
        ],
    );
    let res = resource(vec![
        s("service.name", "color gateway!"),
        s("cloud.platform", "aws_ecs"),
        s(
            "aws.ecs.task.arn",
            "arn:aws:ecs:us-east-1:123456789012:task/c/abc",
        ),
        s("aws.ecs.launchtype", "fargate"),
        s("container.name", "gateway"),
    ]);
    let doc = span_to_document(&sp, Some(&res), &Options::default()).unwrap();
    check_document(&doc).unwrap();
    assert!(doc.get("type").is_none(), "a segment: {doc}");
    assert_eq!(doc["name"], "color gateway_");
    assert_eq!(
        doc["http"]["request"]["url"],
        "https://colorgateway.demo.local/color"
    );
    assert_eq!(doc["http"]["response"]["status"], 429);
    assert_eq!(
        (doc["error"].clone(), doc["throttle"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(doc["origin"], "AWS::ECS::Container");
    assert_eq!(doc["aws"]["ecs"]["launch_type"], "fargate");
    assert_eq!(doc["aws"]["ecs"]["container"], "gateway");
}

#[test]
fn exceptions_become_cause_and_status_error_a_fault() {
    let mut sp = span(SpanKind::Internal, true, vec![]);
    sp.status = Some(Status {
        code: StatusCode::Error as i32,
        message: "boom".into(),
    });
    sp.events.push(Event {
        name: "exception".into(),
        attributes: vec![
            s("exception.type", "ValueError"),
            s("exception.message", "bad colour"),
            s(
                "exception.stacktrace",
                "Traceback:\n  file a.py line 3\n  file b.py line 9",
            ),
        ],
        ..Default::default()
    });
    let doc = span_to_document(&sp, None, &Options::default()).unwrap();
    check_document(&doc).unwrap();
    assert_eq!(doc["fault"], true);
    let ex = &doc["cause"]["exceptions"][0];
    assert_eq!(ex["type"], "ValueError");
    assert_eq!(ex["message"], "bad colour");
    assert_eq!(ex["stack"].as_array().unwrap().len(), 3);
    assert!(check::is_hex(ex["id"].as_str().unwrap(), 16));
    assert!(doc.get("namespace").is_none(), "internal spans are local");
}

#[test]
fn configured_annotations_with_unsafe_keys_are_sanitised() {
    let sp = span(
        SpanKind::Server,
        false,
        vec![
            s("tenant.id", "acme"),
            kv("retries", any_value::Value::IntValue(2)),
        ],
    );
    let doc = span_to_document(
        &sp,
        None,
        &Options {
            annotations: vec!["tenant.id".into(), "retries".into()],
            ..Default::default()
        },
    )
    .unwrap();
    check_document(&doc).unwrap();
    assert_eq!(doc["annotations"]["tenant_id"], "acme");
    assert_eq!(doc["annotations"]["retries"], 2);
    assert!(doc.get("parent_id").is_none());
}

#[test]
fn otel_environment_fills_what_the_sender_did_not_say() {
    let opts = Options {
        default_resource: Options::resource_from_env(
            Some("cloud.platform=aws_ecs,aws.ecs.task.arn=arn%3Aaws%3Aecs%3Aus-east-1%3A1%3Atask%2Fx, service.name=ignored"),
            Some("colorgateway"),
        ),
        ..Default::default()
    };
    // Envoy's resource says nothing of the platform.
    let sp = span(SpanKind::Server, false, vec![]);
    let doc = span_to_document(&sp, None, &opts).unwrap();
    assert_eq!(doc["name"], "colorgateway");
    assert_eq!(doc["origin"], "AWS::ECS::Container");
    assert_eq!(
        doc["aws"]["ecs"]["task_arn"],
        "arn:aws:ecs:us-east-1:1:task/x"
    );
    // What the sender says wins.
    let doc =
        span_to_document(&sp, Some(&resource(vec![s("service.name", "own")])), &opts).unwrap();
    assert_eq!(doc["name"], "own");
}

#[test]
fn oversized_documents_lose_metadata_not_the_span() {
    let big = "x".repeat(40_000);
    let sp = span(
        SpanKind::Server,
        false,
        vec![
            s("big.one", &big),
            s("big.two", &big),
            s("small", "kept"),
            s("x-maille-variant", "canary"),
        ],
    );
    let doc = span_to_document(&sp, None, &Options::default()).unwrap();
    check_document(&doc).unwrap();
    let md = &doc["metadata"]["default"];
    assert_eq!(md["small"], "kept");
    assert_eq!(md["maille.trimmed"], true);
    assert!(md.get("big.one").is_none() || md.get("big.two").is_none());
    assert_eq!(doc["annotations"]["maille_variant"], "canary");
}

#[test]
fn ids_that_cannot_be_placed_are_refused() {
    let mut sp = span(SpanKind::Server, false, vec![]);
    sp.trace_id = vec![0; 16];
    assert!(span_to_document(&sp, None, &Options::default()).is_none());
    let mut sp = span(SpanKind::Server, false, vec![]);
    sp.span_id = vec![1, 2, 3];
    assert!(span_to_document(&sp, None, &Options::default()).is_none());
}

/// The document of `span` from `resource`, parsed.
pub(crate) fn span_to_document(
    span: &Span,
    resource: Option<&Resource>,
    opts: &Options,
) -> Option<Value> {
    let res = ResourceView::new(resource, opts);
    let w = document(span, &res, opts)?;
    Some(serde_json::from_str(&w.doc.json).expect("documents are JSON"))
}

/// Runs `f`, failing the test if it has not ended within a minute (a hang, not a slow run:
/// these take milliseconds).
fn ends<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} did not end"))
}

fn checked(doc: &Value) {
    let size = doc.to_string().len();
    check_document(doc).unwrap_or_else(|e| panic!("{size} bytes: {e:?}"));
}

#[test]
fn a_span_with_6000_short_attributes_is_trimmed_and_ends() {
    // Values shorter than the marker `true`: the old trimming removed and re-added the
    // marker forever.
    let attrs = (0..6000).map(|i| s(&format!("attr.{i:04}"), "v")).collect();
    let sp = span(SpanKind::Server, false, attrs);
    let doc = ends("trimming 6,000 attributes", move || {
        span_to_document(&sp, None, &Options::default()).unwrap()
    });
    checked(&doc);
    let md = doc["metadata"]["default"].as_object().unwrap();
    assert_eq!(md[TRIMMED], true);
    // As many as fit are kept.
    assert!(md.len() > 3000, "{} kept", md.len());
}

#[test]
fn four_attributes_with_30_kb_keys_are_trimmed_and_end() {
    let attrs = (0..4)
        .map(|i| s(&format!("{i}{}", "k".repeat(30_000)), "v"))
        .collect();
    let sp = span(SpanKind::Server, false, attrs);
    let doc = ends("trimming 30 KB keys", move || {
        span_to_document(&sp, None, &Options::default()).unwrap()
    });
    checked(&doc);
    assert_eq!(
        doc["metadata"]["default"].as_object().unwrap().len(),
        3,
        "two fit, and the marker"
    );
}

#[test]
fn bulk_in_each_field_is_cut_to_fit_and_the_rest_is_kept() {
    let big = "\u{1}b\"".repeat(40_000);
    let opts = Options {
        annotations: vec!["tenant".into()],
        ..Default::default()
    };
    for key in [
        "url.full",
        "http.url",
        "user_agent.original",
        "http.user_agent",
        "user_agent",
        "http.request.method",
        "http.method",
        "client.address",
        "http.client_ip",
        "server.address",
        "peer.service",
        "tenant",
    ] {
        let sp = span(
            SpanKind::Client,
            true,
            vec![
                s(key, &big),
                s("http.status_code", "503"),
                s("x-maille-variant", "canary"),
                s("small", "kept"),
            ],
        );
        let doc = span_to_document(&sp, None, &opts).unwrap();
        checked(&doc);
        assert_eq!(doc["id"], "abababababababab", "{key}");
        assert_eq!(doc["parent_id"], "cdcdcdcdcdcdcdcd", "{key}");
        assert_eq!(doc["fault"], true, "{key}");
        assert_eq!(doc["http"]["response"]["status"], 503, "{key}");
        assert_eq!(doc["annotations"]["maille_variant"], "canary", "{key}");
        if key == "tenant" {
            // An annotation holds 1,000 characters whatever the size of the document.
            let a = doc["annotations"]["tenant"].as_str().unwrap();
            assert_eq!(a.chars().count(), MAX_ANNOTATION_VALUE_CHARS);
        }
        assert_eq!(doc["metadata"]["default"][TRIMMED], true, "{key}: {doc}");
    }
    // Exceptions: a long type, a long message, a deep stack, and thousands of them.
    let exception = |t: &str, m: &str, st: &str| Event {
        name: "exception".into(),
        attributes: vec![
            s("exception.type", t),
            s("exception.message", m),
            s("exception.stacktrace", st),
        ],
        ..Default::default()
    };
    let mut sp = span(SpanKind::Server, false, vec![s("url.full", "http://x/y")]);
    sp.events.push(exception(&big, "m", "a\nb"));
    sp.events
        .push(exception("T", &big, &"frame\n".repeat(10_000)));
    sp.events
        .extend((0..3000).map(|_| exception("ValueError", "again", "f\ng")));
    let doc = span_to_document(&sp, None, &opts).unwrap();
    checked(&doc);
    let exs = doc["cause"]["exceptions"].as_array().unwrap();
    assert!(!exs.is_empty() && exs.len() < 3002, "{}", exs.len());
    assert_eq!(
        doc["http"]["request"]["url"], "http://x/y",
        "short strings are kept"
    );
    assert_eq!(doc["fault"], true);
    // The resource: its service name and platform values.
    let res = resource(vec![
        s("service.name", &big),
        s("cloud.platform", "aws_ecs"),
        s("aws.ecs.task.arn", &big),
        s("container.name", &big),
    ]);
    let doc = span_to_document(&span(SpanKind::Server, false, vec![]), Some(&res), &opts).unwrap();
    checked(&doc);
    assert_eq!(
        doc["name"].as_str().unwrap().chars().count(),
        MAX_NAME_CHARS
    );
    assert!(doc["aws"]["ecs"]["task_arn"].as_str().unwrap().len() <= MAX_AWS_VALUE_BYTES);
    assert_eq!(doc["metadata"]["default"][TRIMMED], true, "{doc}");
}

#[test]
fn repeated_keys_keep_the_last_value_and_non_finite_doubles_are_text() {
    let many: Vec<KeyValue> = (0..40).map(|i| s(&format!("k{i}"), "x")).collect();
    for extra in [Vec::new(), many] {
        let mut attrs = vec![
            s("dup", "first"),
            s("http.status_code", "200"),
            kv("nan", any_value::Value::DoubleValue(f64::NAN)),
            kv("inf", any_value::Value::DoubleValue(f64::NEG_INFINITY)),
            s("dup", "last"),
            s("http.status_code", "404"),
        ];
        attrs.extend(extra);
        let doc = span_to_document(
            &span(SpanKind::Server, false, attrs),
            None,
            &Options::default(),
        )
        .unwrap();
        checked(&doc);
        let md = &doc["metadata"]["default"];
        assert_eq!(md["dup"], "last");
        assert_eq!(md["nan"], "NaN");
        assert_eq!(md["inf"], "-Infinity");
        assert_eq!(doc["http"]["response"]["status"], 404);
        assert_eq!(doc["error"], true);
    }
}

#[test]
fn annotations_beyond_50_or_with_a_taken_key_stay_in_metadata() {
    let opts = Options {
        annotations: (0..60)
            .map(|i| format!("a.{i}"))
            .chain(["a_0".into()])
            .collect(),
        ..Default::default()
    };
    let mut attrs: Vec<KeyValue> = (0..60).map(|i| s(&format!("a.{i}"), "v")).collect();
    attrs.push(s("a_0", "collides with a.0"));
    attrs.push(kv(
        "x-maille-variant",
        any_value::Value::ArrayValue(Default::default()),
    ));
    let doc = span_to_document(&span(SpanKind::Server, false, attrs), None, &opts).unwrap();
    checked(&doc);
    assert_eq!(
        doc["annotations"].as_object().unwrap().len(),
        MAX_ANNOTATIONS
    );
    let md = doc["metadata"]["default"].as_object().unwrap();
    assert_eq!(md["a_0"], "collides with a.0");
    assert!(md.contains_key("a.59"), "{md:?}");
    assert!(doc["annotations"].get("a_0").is_some());
}

#[test]
fn percent_decoding_takes_any_character_after_a_percent() {
    let d = Options::resource_from_env(Some("a=%aé,b=%41%zz,c=100%"), None);
    assert_eq!(
        d,
        vec![
            ("a".into(), "%aé".into()),
            ("b".into(), "A%zz".into()),
            ("c".into(), "100%".into())
        ]
    );
}

const ALPHABETS: [&str; 6] = ["x", "\u{1}", "\"\\", "é", "😀", "a\nb\t"];

fn bulk(len: usize, alphabet: usize) -> String {
    ALPHABETS[alphabet % ALPHABETS.len()]
        .chars()
        .cycle()
        .take(len)
        .collect()
}

/// Where a property test puts a large value.
const PLACES: [&str; 22] = [
    "span name",
    "url.full",
    "http.url",
    "user_agent.original",
    "http.user_agent",
    "http.request.method",
    "client.address",
    "server.address",
    "url.path",
    "url.scheme",
    "peer.service",
    "x-maille-variant",
    "tenant",
    "metadata value",
    "metadata key",
    "metadata array",
    "exception.type",
    "exception.message",
    "exception.stacktrace",
    "service.name",
    "aws.ecs.task.arn",
    "container.name",
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    #[test]
    fn every_document_fits_whatever_holds_the_bulk(
        bulks in proptest::collection::vec((0..PLACES.len(), 0usize..120_000, 0usize..6), 1..4),
        many in 0usize..3000,
        many_len in 0usize..40,
        exceptions in 0usize..300,
        kind in 0usize..4,
        parent: bool,
    ) {
        let opts = Options { annotations: vec!["tenant".into()], ..Default::default() };
        let kind = [SpanKind::Server, SpanKind::Client, SpanKind::Internal, SpanKind::Producer][kind];
        let mut sp = span(kind, parent, vec![s("http.status_code", "500"), s("upstream_cluster", "c")]);
        let mut res = vec![s("cloud.platform", "aws_ecs")];
        let mut exception = Vec::new();
        for (place, len, alphabet) in &bulks {
            let v = bulk(*len, *alphabet);
            match PLACES[*place] {
                "span name" => sp.name = v,
                "metadata value" => sp.attributes.push(s("big", &v)),
                "metadata key" => sp.attributes.push(s(&v, "v")),
                "metadata array" => sp.attributes.push(kv(
                    "array",
                    any_value::Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                        values: (0..len / 8)
                            .map(|i| AnyValue { value: Some(any_value::Value::StringValue(bulk(i % 9, *alphabet))) })
                            .collect(),
                    }),
                )),
                k @ ("exception.type" | "exception.message") => exception.push(s(k, &v)),
                "exception.stacktrace" => exception.push(s("exception.stacktrace", &v.replace('x', "x\n"))),
                k @ ("service.name" | "aws.ecs.task.arn" | "container.name") => res.push(s(k, &v)),
                k => sp.attributes.push(s(k, &v)),
            }
        }
        sp.attributes.extend((0..many).map(|i| s(&format!("m{i}"), &bulk(many_len, i))));
        if !exception.is_empty() {
            sp.events.push(Event { name: "exception".into(), attributes: exception, ..Default::default() });
        }
        sp.events.extend((0..exceptions).map(|i| Event {
            name: "exception".into(),
            attributes: vec![s("exception.type", "E"), s("exception.message", &bulk(i % 50, i))],
            ..Default::default()
        }));
        let doc = span_to_document(&sp, Some(&resource(res)), &opts).expect("a document");
        let size = doc.to_string().len();
        proptest::prop_assert!(check_document(&doc).is_ok(), "{} bytes: {:?}", size, check_document(&doc));
        proptest::prop_assert_eq!(&doc["id"], "abababababababab");
        proptest::prop_assert_eq!(&doc["trace_id"], "1-01020304-05060708090a0b0c0d0e0f10");
        proptest::prop_assert_eq!(doc.get("parent_id").is_some(), parent);
        proptest::prop_assert_eq!(&doc["fault"], true);
        if doc["metadata"]["default"].get(TRIMMED).is_none() {
            // Not trimmed: nothing is missing.
            let want: std::collections::BTreeSet<&str> = sp
                .attributes
                .iter()
                .map(|kv| kv.key.as_str())
                .filter(|k| http_slot(k).is_none() && !opts.is_annotation(k))
                .collect();
            let got: std::collections::BTreeSet<&str> = doc["metadata"]["default"]
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            proptest::prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn every_http_key_reads_into_its_own_slot() {
    // `HTTP_KEYS` sizes the slots `http_slot` fills: the two must agree, key for key.
    for (i, key) in HTTP_KEYS.iter().enumerate() {
        assert_eq!(http_slot(key), Some(i), "{key}");
    }
}
