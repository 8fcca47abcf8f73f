//! The OTLP receivers with hostile and compressed input, in-process and with a fake X-Ray
//! (no external process): spans whose bulk sits in any field become documents within X-Ray's
//! 64 KB; gzip is accepted on gRPC and HTTP and a gzip bomb is refused by name; a request that
//! can never succeed gets a status clients do not retry; a request whose decoded form would be
//! out of proportion to its size is refused; large spans do not stall `/healthz`; a full queue
//! tells gRPC clients when to retry.

mod common;

use common::*;
use maille_collector::check_document;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::Event;
use prost::Message;
use std::io::Write;
use std::time::{Duration, Instant};

fn grpc_export(
    rt: &tokio::runtime::Runtime,
    port: u16,
    req: ExportTraceServiceRequest,
    gzip: bool,
) -> Result<(), tonic::Status> {
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = TraceServiceClient::new(channel).max_encoding_message_size(usize::MAX);
        if gzip {
            c = c.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        c.export(req).await.map(|_| ())
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// POSTs protobuf to `/v1/traces`; the status and the body.
fn http_post(port: u16, body: Vec<u8>, encoding: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut req = agent
        .post(&format!("http://127.0.0.1:{port}/v1/traces"))
        .header("content-type", "application/x-protobuf");
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    let mut r = req.send(&body[..]).expect("the collector answers");
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

/// Sends a POST's headers announcing `len` bytes of body, none of the body, and returns
/// what the server answers.
fn raw_headers_only(port: u16, path: &str, len: usize) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/x-protobuf\r\ncontent-length: {len}\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn stats_of(running: &maille_collector::Running) -> String {
    running.stats.to_json().to_string()
}

fn check_all(docs: &[serde_json::Value]) {
    for d in docs {
        let size = d.to_string().len();
        check_document(d).unwrap_or_else(|e| panic!("{size} bytes: {e:?}"));
    }
}

#[test]
fn a_span_with_6000_short_attributes_is_exported_within_64_kb() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = Fake::ok();
    let running = fast_collector(&rt, fast_config(), fake.clone());
    let attrs = (0..6000)
        .map(|i| text(&format!("attr.{i:04}"), "v"))
        .collect();
    let req = export_request(
        vec![text("service.name", "wide")],
        vec![numbered_span(1, 1, attrs)],
    );
    let (status, body) = http_post(running.http_port, req.encode_to_vec(), None);
    assert_eq!(status, 200, "{body}");
    let docs = fake.wait_stored(1, Duration::from_secs(30), &|| stats_of(&running));
    check_all(&docs);
    assert_eq!(docs[0]["metadata"]["default"]["maille.trimmed"], true);
    rt.block_on(running.stop());
}

#[test]
fn four_attributes_with_30_kb_keys_are_exported_within_64_kb() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = Fake::ok();
    let running = fast_collector(&rt, fast_config(), fake.clone());
    let attrs = (0..4)
        .map(|i| text(&format!("{i}{}", "k".repeat(30_000)), "v"))
        .collect();
    let req = export_request(vec![], vec![numbered_span(1, 1, attrs)]);
    grpc_export(&rt, running.grpc_port, req, false).unwrap();
    let docs = fake.wait_stored(1, Duration::from_secs(30), &|| stats_of(&running));
    check_all(&docs);
    rt.block_on(running.stop());
}

#[test]
fn bulk_in_any_field_is_trimmed_to_64_kb() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = Fake::ok();
    let running = fast_collector(&rt, fast_config(), fake.clone());
    let big = |c: &str| c.repeat(100_000);
    let exception = |attrs: Vec<KeyValue>| Event {
        name: "exception".into(),
        attributes: attrs,
        ..Default::default()
    };
    let mut spans = Vec::new();
    for (i, key) in [
        "url.full",
        "http.url",
        "user_agent.original",
        "http.request.method",
        "client.address",
        "server.address",
        "url.path",
        "x-maille-variant",
    ]
    .iter()
    .enumerate()
    {
        spans.push(numbered_span(1, 10 + i as u64, vec![text(key, &big("u"))]));
    }
    // Escaped characters are six bytes each in JSON.
    spans.push(numbered_span(
        1,
        30,
        vec![text("user_agent.original", &big("\u{1}"))],
    ));
    let mut s = numbered_span(1, 31, vec![]);
    s.events
        .push(exception(vec![text("exception.type", &big("T"))]));
    spans.push(s);
    let mut s = numbered_span(1, 32, vec![]);
    s.events.push(exception(vec![
        text("exception.message", &big("m")),
        text("exception.stacktrace", &"frame\n".repeat(40_000)),
    ]));
    spans.push(s);
    let mut s = numbered_span(1, 33, vec![]);
    for _ in 0..3000 {
        s.events.push(exception(vec![
            text("exception.type", "ValueError"),
            text("exception.message", "again"),
        ]));
    }
    spans.push(s);
    let mut req = export_request(vec![text("service.name", "bulky")], spans);
    // Bulk in the resource: ECS attributes become the `aws` block of every segment.
    req.resource_spans.push(
        export_request(
            vec![
                text("service.name", &big("s")),
                text("cloud.platform", "aws_ecs"),
                text("aws.ecs.task.arn", &big("a")),
                text("container.name", &big("c")),
                text("container.id", &big("i")),
            ],
            vec![numbered_span(2, 1, vec![])],
        )
        .resource_spans
        .remove(0),
    );
    let n = 13;
    grpc_export(&rt, running.grpc_port, req, false).unwrap();
    let docs = fake.wait_stored(n, Duration::from_secs(30), &|| stats_of(&running));
    check_all(&docs);
    for d in &docs {
        assert!(
            d["id"].is_string() && d["trace_id"].is_string() && d["name"].is_string(),
            "{d}"
        );
    }
    rt.block_on(running.stop());
}

#[test]
fn gzip_is_accepted_on_grpc_and_http() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = Fake::ok();
    let running = fast_collector(&rt, fast_config(), fake.clone());
    let req = |i| {
        export_request(
            vec![text("service.name", "zipped")],
            vec![numbered_span(3, i, vec![text("http.url", "http://x/y")])],
        )
    };
    grpc_export(&rt, running.grpc_port, req(1), true).expect("gzip over gRPC");
    let (status, body) = http_post(
        running.http_port,
        gzip(&req(2).encode_to_vec()),
        Some("gzip"),
    );
    assert_eq!(status, 200, "gzip over HTTP: {body}");
    let docs = fake.wait_stored(2, Duration::from_secs(20), &|| stats_of(&running));
    let ids = fake.stored_ids();
    assert!(
        ids.contains(&doc_id(1)) && ids.contains(&doc_id(2)),
        "{ids:?}"
    );
    assert!(docs
        .iter()
        .all(|d| d["http"]["request"]["url"] == "http://x/y"));
    // An encoding the collector does not speak is refused by name.
    let (status, body) = http_post(running.http_port, req(3).encode_to_vec(), Some("br"));
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("br"), "{body}");
    rt.block_on(running.stop());
}

#[test]
fn a_gzip_bomb_gets_a_clear_refusal_not_memory() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let running = fast_collector(&rt, fast_config(), Fake::ok());
    // 200 MB of zeros in about 200 KB.
    let bomb = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..200 {
            e.write_all(&zeros).unwrap();
        }
        e.finish().unwrap()
    };
    let (status, body) = http_post(running.http_port, bomb, Some("gzip"));
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("decompress"), "{body}");
    // Over gRPC: a valid request padded to 20 MB once decompressed.
    let mut req = export_request(vec![], vec![numbered_span(4, 1, vec![])]);
    req.resource_spans[0].scope_spans[0].spans[0].name = "z".repeat(20 << 20);
    let e = grpc_export(&rt, running.grpc_port, req, true).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // Still serving.
    let (status, _) = http_post(
        running.http_port,
        export_request(vec![], vec![numbered_span(4, 2, vec![])]).encode_to_vec(),
        None,
    );
    assert_eq!(status, 200);
    rt.block_on(running.stop());
}

#[test]
fn an_oversized_grpc_request_gets_invalid_argument_not_a_retryable_code() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let running = fast_collector(&rt, fast_config(), Fake::ok());
    let mut req = export_request(vec![], vec![numbered_span(5, 1, vec![])]);
    req.resource_spans[0].scope_spans[0].spans[0].name = "z".repeat(9 << 20);
    let e = grpc_export(&rt, running.grpc_port, req.clone(), false).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("8388608"), "names the limit: {e:?}");
    // Over HTTP the size is known from Content-Length and refused before the body is read
    // (a client still writing the body may see the connection closed instead of the answer,
    // so the request is sent without one).
    let len = req.encoded_len();
    assert!(len > 8 << 20);
    let answer = raw_headers_only(running.http_port, "/v1/traces", len);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    rt.block_on(running.stop());
}

#[test]
fn a_request_of_millions_of_empty_values_is_refused_by_its_decoded_size() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = Fake::ok();
    let running = fast_collector(&rt, fast_config(), fake.clone());
    // 3.5 million empty array values: 7 MB on the wire, hundreds of MB decoded.
    let empties = kv(
        "empties",
        any_value::Value::ArrayValue(ArrayValue {
            values: vec![AnyValue::default(); 3_500_000],
        }),
    );
    let req = export_request(vec![], vec![numbered_span(6, 1, vec![empties])]);
    let wire = req.encode_to_vec();
    assert!(wire.len() > 6_000_000 && wire.len() < 8 << 20);
    let e = grpc_export(&rt, running.grpc_port, req, false).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("values"), "{e:?}");
    let (status, body) = http_post(running.http_port, wire, None);
    assert_eq!(status, 400, "{body}");
    // Nothing of it was taken; the collector keeps serving.
    grpc_export(
        &rt,
        running.grpc_port,
        export_request(vec![], vec![numbered_span(6, 2, vec![])]),
        false,
    )
    .unwrap();
    let docs = fake.wait_stored(1, Duration::from_secs(20), &|| stats_of(&running));
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["id"], doc_id(2).as_str());
    rt.block_on(running.stop());
}

#[test]
fn large_spans_being_converted_do_not_stall_healthz() {
    // One worker thread, as the collector runs by default.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fake = Fake::ok();
    let running = fast_collector(&rt, fast_config(), fake.clone());
    // Each span carries 1 MB of metadata over 4,000 attributes.
    let body = {
        let attrs = |span: u64| {
            (0..4000)
                .map(|i| text(&format!("a{span}.{i}"), &"x".repeat(250)))
                .collect()
        };
        export_request(
            vec![],
            (1..=6).map(|i| numbered_span(7, i, attrs(i))).collect(),
        )
        .encode_to_vec()
    };
    let port = running.http_port;
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || http_post(port, body, None))
        })
        .collect();
    // A probe that gives up after 2 s: conversion must never hold the workers that long.
    let probe: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let start = Instant::now();
    let mut answered = 0;
    while senders.iter().any(|s| !s.is_finished()) || answered < 5 {
        let t = Instant::now();
        probe
            .get(&format!("http://127.0.0.1:{port}/healthz"))
            .call()
            .unwrap_or_else(|e| {
                panic!(
                    "/healthz did not answer within 2 s, {:?} into the conversion: {e}",
                    start.elapsed()
                )
            });
        answered += 1;
        std::thread::sleep(Duration::from_millis(50).saturating_sub(t.elapsed()));
    }
    for s in senders {
        let (status, body) = s.join().unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let docs = fake.wait_stored(6, Duration::from_secs(60), &|| stats_of(&running));
    check_all(&docs);
    rt.block_on(running.stop());
}

#[test]
fn a_full_queue_tells_grpc_clients_when_to_retry() {
    use tonic_types::StatusExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A sink that never answers keeps everything in the queue.
    let stuck = Fake::new(Duration::from_secs(3600), |_| Ok(Vec::new()));
    let mut cfg = fast_config();
    cfg.queue_capacity = 100;
    let running = fast_collector(&rt, cfg, stuck);
    let full = (0..10)
        .find_map(|r| {
            let spans = (1..=50)
                .map(|i| numbered_span(8, r * 100 + i, vec![]))
                .collect();
            grpc_export(&rt, running.grpc_port, export_request(vec![], spans), false).err()
        })
        .expect("the queue fills up");
    assert_eq!(full.code(), tonic::Code::ResourceExhausted, "{full:?}");
    let retry = full
        .get_details_retry_info()
        .expect("RetryInfo: without it OTLP clients must not retry RESOURCE_EXHAUSTED");
    assert!(retry.retry_delay.is_some_and(|d| d > Duration::ZERO));
    let (status, _) = http_post(
        running.http_port,
        export_request(vec![], vec![numbered_span(8, 5000, vec![])]).encode_to_vec(),
        None,
    );
    assert_eq!(status, 429);
    drop(running);
}

#[test]
fn without_a_logs_destination_records_are_taken_and_counted_as_dropped() {
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let running = fast_collector(&rt, fast_config(), Fake::ok());
    let port = running.grpc_port;
    rt.block_on(async move {
        let mut c = LogsServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        c.export(logs_request(
            "quiet",
            "h",
            vec![log_record(1, now_ms()), log_record(2, now_ms())],
        ))
        .await
        .expect("Envoy's access logger gets an answer, not UNIMPLEMENTED");
    });
    let body = logs_request("quiet", "h", vec![log_record(3, now_ms())]).encode_to_vec();
    let r = maille_testkit::agent()
        .post(&format!("http://127.0.0.1:{}/v1/logs", running.http_port))
        .header("content-type", "application/x-protobuf")
        .send(&body[..])
        .unwrap();
    assert_eq!(r.status(), 200);
    let stats = running.log_stats.as_ref().unwrap();
    assert_eq!(stats.received(), 3);
    assert_eq!(
        stats.dropped(),
        [("logs not exported (--no-logs)".to_string(), 3)].into()
    );
    rt.block_on(running.stop());
}
