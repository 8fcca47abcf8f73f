//! The collector against a real AWS API endpoint (moto): spans sent over OTLP gRPC and HTTP
//! come back from X-Ray's `GetTraceSummaries` / `BatchGetTraces` as one trace with its
//! parent/child links, every document passing the X-Ray rules; malformed requests get errors
//! while the collector keeps serving; an endpoint that is down for a while loses nothing.

mod common;

use common::*;
use maille_collector::check_document;
use maille_testkit::{agent, free_port};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
use serde_json::Value;
use std::time::{Duration, SystemTime};

fn s(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn span(
    trace: &[u8; 16],
    id: u8,
    parent: Option<u8>,
    kind: SpanKind,
    name: &str,
    attrs: Vec<KeyValue>,
) -> Span {
    let t = now_ns() - 1_000_000_000;
    Span {
        trace_id: trace.to_vec(),
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: t + u64::from(id) * 1_000_000,
        end_time_unix_nano: t + 200_000_000,
        attributes: attrs,
        ..Default::default()
    }
}

fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![s("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn spans_over_grpc_and_http_come_back_from_xray_as_one_trace() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start_on(free_port());
    let running = collector(&rt, &moto.url());
    let trace: [u8; 16] = [
        0x5f, 0x1e, 0x2d, 0x3c, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];

    // gRPC: the gateway's server span and its client call (as Envoy reports them).
    let grpc = request(
        "gateway",
        vec![
            span(
                &trace,
                1,
                None,
                SpanKind::Server,
                "ingress",
                vec![
                    s("http.method", "GET"),
                    s("http.url", "http://gateway/color"),
                    s("http.status_code", "200"),
                ],
            ),
            span(
                &trace,
                2,
                Some(1),
                SpanKind::Client,
                "egress colorteller.local",
                vec![
                    s("http.method", "GET"),
                    s("http.status_code", "503"),
                    s("upstream_cluster", "node/colorteller-black/9080"),
                    s("x-maille-variant", "colorteller-black"),
                ],
            ),
        ],
    );
    let port = running.grpc_port;
    let resp = rt.block_on(async move {
        let mut c = TraceServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        c.export(grpc).await.unwrap().into_inner()
    });
    assert!(resp.partial_success.is_none(), "{resp:?}");

    // HTTP/JSON: colorteller's server span, child of the gateway's client span.
    let json = serde_json::json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "colorteller-black"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5f1e2d3c0102030405060708090a0b0c", "spanId": "0303030303030303", "parentSpanId": "0202020202020202",
            "name": "ingress", "kind": 2, "startTimeUnixNano": (now_ns() - 900_000_000).to_string(), "endTimeUnixNano": (now_ns() - 800_000_000).to_string(),
            "attributes": [{"key": "http.response.status_code", "value": {"intValue": "503"}}]}]}]}]});
    let http = format!("http://127.0.0.1:{}/v1/traces", running.http_port);
    let mut r = agent()
        .post(&http)
        .header("content-type", "application/json")
        .send(json.to_string())
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );

    // Malformed and oversized requests are refused with a reason; the collector keeps serving.
    let mut r = agent()
        .post(&http)
        .header("content-type", "application/x-protobuf")
        .send(&b"\xff\xff\xff"[..])
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("not an OTLP/protobuf trace request"));
    let r = agent()
        .post(&http)
        .header("content-type", "application/x-protobuf")
        .send(vec![0u8; 100 * 1024])
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = agent()
        .post(&http)
        .header("content-type", "text/plain")
        .send("hello")
        .unwrap();
    assert_eq!(r.status(), 415);
    let mut bad_ids = request(
        "x",
        vec![span(&trace, 9, None, SpanKind::Server, "x", vec![])],
    );
    bad_ids.resource_spans[0].scope_spans[0].spans[0].span_id = vec![1, 2];
    let port = running.grpc_port;
    let resp = rt.block_on(async move {
        let mut c = TraceServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        c.export(bad_ids).await.unwrap().into_inner()
    });
    assert_eq!(resp.partial_success.map(|p| p.rejected_spans), Some(1));

    wait_exported(&running, 3, Duration::from_secs(20));
    let xray_trace = "1-5f1e2d3c-0102030405060708090a0b0c".to_string();
    let docs = stored(&rt, &moto.url(), std::slice::from_ref(&xray_trace));
    assert_eq!(docs.len(), 3, "{docs:#?}");
    for d in docs.values() {
        check_document(d).unwrap_or_else(|e| panic!("{d}: {e:?}"));
        assert_eq!(d["trace_id"], xray_trace.as_str());
    }
    let root = &docs["0101010101010101"];
    let call = &docs["0202020202020202"];
    let teller = &docs["0303030303030303"];
    assert_eq!(root["name"], "gateway");
    assert!(root.get("parent_id").is_none());
    assert_eq!(call["parent_id"], "0101010101010101");
    assert_eq!(call["namespace"], "remote");
    assert_eq!(call["fault"], true);
    assert_eq!(call["http"]["response"]["status"], 503);
    assert_eq!(call["annotations"]["maille_variant"], "colorteller-black");
    assert_eq!(teller["parent_id"], "0202020202020202");
    assert_eq!(teller["name"], "colorteller-black");
    // And the trace is found by its summary.
    let ids = trace_ids(&moto.url());
    assert!(ids.contains(&xray_trace), "{ids:?}");
    let stats = running.stats.to_json();
    assert_eq!(stats["received"], 4, "{stats}");
    assert_eq!(stats["dropped"]["invalid trace or span id"], 1, "{stats}");
    rt.block_on(running.stop());
}

#[test]
fn an_xray_outage_of_20_seconds_mid_stream_loses_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = free_port();
    let mut moto = Some(Moto::start_on(port));
    let running = collector(&rt, &moto.as_ref().unwrap().url());
    let trace: [u8; 16] = [0x5f, 0x1e, 0x2d, 0x3d, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9];
    let mut sent = Vec::new();
    let mut before: Vec<String> = Vec::new();
    // A span every 200 ms for 30 s; X-Ray is away from the 5th second to the 25th.
    let start = std::time::Instant::now();
    for i in 1..=150u8 {
        let at = Duration::from_millis(200 * u64::from(i));
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        if i == 25 {
            // What X-Ray holds before it goes (moto keeps it in memory only).
            wait_exported(&running, 24, Duration::from_secs(10));
            let m = moto.take().expect("moto up");
            before = stored(
                &rt,
                &m.url(),
                &["1-5f1e2d3d-090909090909090909090909".to_string()],
            )
            .into_keys()
            .collect();
            drop(m);
        }
        if i == 125 {
            moto = Some(Moto::start_on(port));
        }
        let req = request(
            "outage",
            vec![span(
                &trace,
                i,
                if i > 1 { Some(1) } else { None },
                SpanKind::Internal,
                "work",
                vec![],
            )],
        );
        let gp = running.grpc_port;
        rt.block_on(async move {
            let mut c = TraceServiceClient::connect(format!("http://127.0.0.1:{gp}"))
                .await
                .unwrap();
            c.export(req).await.unwrap();
        });
        sent.push(format!("{:016x}", u64::from_be_bytes([i; 8])));
        if i == 120 {
            // 19 s into the outage: nothing sent since it began has been delivered.
            let exported = running.stats.exported();
            assert!(exported < 30, "{exported} exported while X-Ray is away");
            assert!(running.stats.retried() >= 1);
        }
    }
    let moto = moto.expect("X-Ray is back");
    // Everything arrives, once.
    wait_exported(&running, 150, Duration::from_secs(60));
    let docs = stored(
        &rt,
        &moto.url(),
        &["1-5f1e2d3d-090909090909090909090909".to_string()],
    );
    let after: Vec<String> = docs.keys().cloned().collect();
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "nothing sent twice across the outage"
    );
    let mut got: Vec<String> = before.into_iter().chain(after).collect();
    got.sort();
    sent.sort();
    assert_eq!(got, sent, "every span id exactly once");
    assert_eq!(running.stats.exported(), 150);
    rt.block_on(running.stop());
}

#[test]
fn the_python_opentelemetry_sdk_sends_plain_and_gzip_over_grpc_and_http() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start_on(free_port());
    let running = collector(&rt, &moto.url());
    let python = maille_testkit::repo_root().join(".venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otel_sdk_client.py");
    let runs = [
        ("grpc", None),
        ("http", None),
        ("grpc", Some("gzip")),
        ("http", Some("gzip")),
    ];
    for (run, (protocol, compression)) in runs.into_iter().enumerate() {
        let endpoint = match protocol {
            "grpc" => format!("http://127.0.0.1:{}", running.grpc_port),
            _ => format!("http://127.0.0.1:{}", running.http_port),
        };
        let service = format!("shop-{protocol}-{}", compression.unwrap_or("plain"));
        let mut cmd = std::process::Command::new(&python);
        cmd.args([script, protocol, &endpoint, &service]);
        if let Some(c) = compression {
            // The SDK's own setting: every export is compressed.
            cmd.env("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", c);
        }
        let out = cmd.output().expect("run the Python SDK client");
        assert!(
            out.status.success(),
            "{protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        let (trace, span_ids) = (lines[0].clone(), &lines[1..]);
        wait_exported(&running, 2 * (run as u64 + 1), Duration::from_secs(20));
        let docs = stored(&rt, &moto.url(), std::slice::from_ref(&trace));
        let mut got: Vec<&String> = docs.keys().collect();
        let mut want: Vec<&String> = span_ids.iter().collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{service}: the SDK's spans, each once");
        let root = &docs[&span_ids[0]];
        let child = &docs[&span_ids[1]];
        for d in [root, child] {
            maille_collector::check_document(d).unwrap_or_else(|e| panic!("{d}: {e:?}"));
        }
        assert_eq!(root["name"], service.as_str());
        assert_eq!(root["origin"], "AWS::EC2::Instance");
        assert_eq!(root["aws"]["ec2"]["instance_id"], "i-0123456789abcdef0");
        assert_eq!(root["http"]["response"]["status"], 201);
        assert_eq!(child["name"], "payments");
        assert_eq!(child["parent_id"], root["id"]);
        assert_eq!(child["fault"], true);
        assert_eq!(child["cause"]["exceptions"][0]["type"], "ValueError");
        assert_eq!(child["cause"]["exceptions"][0]["message"], "card declined");
    }
    rt.block_on(running.stop());
}

/// A test endpoint in front of moto for `PutTraceSegments`: the first two calls are
/// throttled (429), the third stores only half its documents and reports the rest
/// unprocessed; after that it passes calls through.
fn flaky_front(
    rt: &tokio::runtime::Runtime,
    moto: String,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let forward = move |path: String, headers: HeaderMap, body: String| -> (StatusCode, String) {
        let mut req = agent().post(&format!("{moto}{path}"));
        for (k, v) in headers.iter() {
            if k == "authorization" || k == "content-type" || k.as_str().starts_with("x-amz") {
                req = req.header(k.as_str(), v.to_str().unwrap_or(""));
            }
        }
        let mut r = req.send(body).unwrap();
        (
            StatusCode::from_u16(r.status().as_u16()).unwrap(),
            r.body_mut().read_to_string().unwrap(),
        )
    };
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap, body: String| {
        let (c, forward) = (c.clone(), forward.clone());
        async move {
            let path = uri.path().to_owned();
            if path != "/TraceSegments" {
                return tokio::task::spawn_blocking(move || forward(path, headers, body)).await.unwrap();
            }
            match c.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => (StatusCode::TOO_MANY_REQUESTS, r#"{"__type":"ThrottledException","message":"Rate exceeded"}"#.to_owned()),
                2 => {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    let docs = v["TraceSegmentDocuments"].as_array().unwrap().clone();
                    let (keep, left) = docs.split_at(docs.len() / 2);
                    let ids: Vec<Value> = left
                        .iter()
                        .map(|d| {
                            let d: Value = serde_json::from_str(d.as_str().unwrap()).unwrap();
                            serde_json::json!({"Id": d["id"], "ErrorCode": "ThrottledException", "Message": "slow down"})
                        })
                        .collect();
                    let part = serde_json::json!({"TraceSegmentDocuments": keep}).to_string();
                    let _ = tokio::task::spawn_blocking(move || forward(path, headers, part)).await.unwrap();
                    (StatusCode::OK, serde_json::json!({"UnprocessedTraceSegments": ids}).to_string())
                }
                _ => tokio::task::spawn_blocking(move || forward(path, headers, body)).await.unwrap(),
            }
        }
    });
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, calls)
}

#[test]
fn throttling_and_unprocessed_segments_are_retried_without_duplicates() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start_on(free_port());
    let (front, calls) = flaky_front(&rt, moto.url());
    let running = collector(&rt, &format!("http://127.0.0.1:{front}"));
    let trace: [u8; 16] = [0x5f, 0x1e, 0x2d, 0x3e, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7];
    let spans: Vec<Span> = (1..=40u8)
        .map(|i| {
            span(
                &trace,
                i,
                if i > 1 { Some(1) } else { None },
                SpanKind::Internal,
                "work",
                vec![],
            )
        })
        .collect();
    let req = request("throttled", spans);
    let gp = running.grpc_port;
    rt.block_on(async move {
        let mut c = TraceServiceClient::connect(format!("http://127.0.0.1:{gp}"))
            .await
            .unwrap();
        c.export(req).await.unwrap();
    });
    wait_exported(&running, 40, Duration::from_secs(30));
    assert!(
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 4,
        "throttled twice, partial once, then the rest"
    );
    let docs = stored(
        &rt,
        &moto.url(),
        &["1-5f1e2d3e-070707070707070707070707".to_string()],
    );
    assert_eq!(docs.len(), 40, "every span stored");
    let stats = running.stats.to_json();
    assert_eq!(stats["exported"], 40, "{stats}");
    // The SDK retries the throttled calls itself; the unprocessed half is resent by us.
    assert!(stats["retried"].as_u64().unwrap() >= 1, "{stats}");
    rt.block_on(running.stop());
}

/// Spans `first..first + n` of trace `trace`, 100 to a request, over gRPC.
fn send_spans(rt: &tokio::runtime::Runtime, port: u16, trace: &[u8; 16], first: u8, n: usize) {
    let reqs: Vec<ExportTraceServiceRequest> = (0..n)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|c| {
            request(
                "isolated",
                c.iter()
                    .map(|i| {
                        let mut sp = span(trace, first, Some(1), SpanKind::Internal, "w", vec![]);
                        sp.span_id = (*i as u64 + 1).to_be_bytes().to_vec();
                        sp
                    })
                    .collect(),
            )
        })
        .collect();
    rt.block_on(async move {
        let mut c = TraceServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        for r in reqs {
            c.export(r).await.expect("accepted");
        }
    });
}

fn wait_dropped(running: &maille_collector::Running, reason: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = running.stats.to_json();
        if s["dropped"][reason] == 1 {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "{reason}: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_document_xray_always_leaves_unprocessed_is_dropped_by_code_and_the_rest_arrive() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start_on(free_port());
    let bad = format!("{:016x}", 7u64);
    let b = bad.clone();
    let front = Front::start(&rt, moto.url(), move |docs| {
        if docs.iter().any(|d| d["id"] == b.as_str()) {
            FrontRule::Unprocessed(vec![(b.clone(), "InvalidSegment".into())])
        } else {
            FrontRule::Forward
        }
    });
    let running = collector(&rt, &front.url());
    let trace: [u8; 16] = [0x5f, 0x1e, 0x2d, 0x40, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3];
    send_spans(&rt, running.grpc_port, &trace, 1, 2000);
    wait_exported(&running, 1999, Duration::from_secs(60));
    let stats = wait_dropped(&running, "unprocessed by X-Ray: InvalidSegment");
    assert_eq!(stats["exported"], 1999, "{stats}");
    let docs = stored(
        &rt,
        &moto.url(),
        &["1-5f1e2d40-030303030303030303030303".to_string()],
    );
    assert_eq!(docs.len(), 1999);
    assert!(!docs.contains_key(&bad));
    for d in docs.values().take(50) {
        check_document(d).unwrap_or_else(|e| panic!("{d}: {e:?}"));
    }
    assert_eq!(front.times_seen(&bad), 3, "a bounded number of attempts");
    rt.block_on(running.stop());
}

#[test]
fn a_batch_xray_answers_400_delivers_its_good_documents() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start_on(free_port());
    let bad = format!("{:016x}", 17u64);
    let b = bad.clone();
    let front = Front::start(&rt, moto.url(), move |docs| {
        if docs.iter().any(|d| d["id"] == b.as_str()) {
            FrontRule::Refuse(400, "InvalidRequestException")
        } else {
            FrontRule::Forward
        }
    });
    let running = collector(&rt, &front.url());
    let trace: [u8; 16] = [0x5f, 0x1e, 0x2d, 0x41, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3];
    send_spans(&rt, running.grpc_port, &trace, 1, 50);
    wait_exported(&running, 49, Duration::from_secs(30));
    let stats = wait_dropped(
        &running,
        "refused by X-Ray: X-Ray HTTP 400 InvalidRequestException: refused by the test front",
    );
    assert_eq!(stats["exported"], 49, "{stats}");
    let docs = stored(
        &rt,
        &moto.url(),
        &["1-5f1e2d41-030303030303030303030303".to_string()],
    );
    assert_eq!(docs.len(), 49);
    assert!(!docs.contains_key(&bad));
    rt.block_on(running.stop());
}
