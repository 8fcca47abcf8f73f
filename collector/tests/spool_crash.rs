//! The collector binary with its disk spool, killed with SIGKILL while X-Ray is away and
//! spans keep coming, then restarted: every span it accepted reaches X-Ray.

mod common;

use common::*;
use maille_testkit::free_port;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const TRACE: [u8; 16] = [0x5f, 0x1e, 0x2d, 0x3f, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4];

fn collector_process(grpc: u16, http: u16, moto_port: u16, spool: &std::path::Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_maille-collector"))
        .args([
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
        ])
        .arg("--spool")
        .arg(spool)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{moto_port}"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start maille-collector");
    let deadline = Instant::now() + Duration::from_secs(20);
    while maille_testkit::agent()
        .get(&format!("http://127.0.0.1:{http}/healthz"))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "collector did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn one_span(i: u32) -> ExportTraceServiceRequest {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut id = [0u8; 8];
    id[4..].copy_from_slice(&i.to_be_bytes());
    id[0] = 0xaa;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("crashy".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: TRACE.to_vec(),
                    span_id: id.to_vec(),
                    name: "work".into(),
                    kind: 1,
                    start_time_unix_nano: t - 1_000_000,
                    end_time_unix_nano: t,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Sends spans `range` one request each; returns the span ids the collector acknowledged.
fn send(rt: &tokio::runtime::Runtime, grpc: u16, range: std::ops::Range<u32>) -> Vec<String> {
    rt.block_on(async move {
        let mut ok = Vec::new();
        let Ok(mut c) = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}")).await
        else {
            return ok;
        };
        for i in range {
            if c.export(one_span(i)).await.is_ok() {
                ok.push(format!("aa000000{i:08x}"));
            }
        }
        ok
    })
}

#[test]
fn sigkill_with_the_spool_on_loses_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let moto_port = free_port();
    let (grpc, http) = (free_port(), free_port());
    let moto = Moto::start_on(moto_port);
    let mut c = collector_process(grpc, http, moto_port, &spool);
    let mut accepted = send(&rt, grpc, 0..50);
    // X-Ray goes away; spans keep coming and wait in the spool.
    drop(moto);
    accepted.extend(send(&rt, grpc, 50..150));
    assert_eq!(
        accepted.len(),
        150,
        "the collector takes spans while X-Ray is away"
    );
    c.kill().unwrap();
    c.wait().unwrap();
    // Both come back; the restarted collector sends what the spool held.
    let moto = Moto::start_on(moto_port);
    let mut c = collector_process(grpc, http, moto_port, &spool);
    accepted.extend(send(&rt, grpc, 150..170));
    let xray_trace = "1-5f1e2d3f-040404040404040404040404".to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = stored_docs(&rt, &moto.url(), std::slice::from_ref(&xray_trace), true);
        if accepted.iter().all(|id| got.contains_key(id)) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|id| !got.contains_key(*id))
        .collect();
    let _ = c.kill();
    let _ = c.wait();
    assert!(
        missing.is_empty(),
        "{} of {} accepted spans missing: {missing:?}",
        missing.len(),
        accepted.len()
    );
}
