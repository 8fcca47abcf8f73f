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

fn stats(http: u16) -> serde_json::Value {
    let mut r = maille_testkit::agent()
        .get(&format!("http://127.0.0.1:{http}/stats"))
        .call()
        .expect("/stats");
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

/// Sends SIGTERM; how long the process took to exit (at most `limit`, then it is killed).
fn terminate(c: &mut Child, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    while t.elapsed() < limit {
        if c.try_wait().unwrap().is_some() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
    None
}

#[test]
fn sigterm_exits_within_5_s_and_the_spool_keeps_what_was_undelivered() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let moto_port = free_port();
    let (grpc, http) = (free_port(), free_port());
    // X-Ray is unreachable: everything waits in the queue and the spool.
    let mut c = collector_process(grpc, http, moto_port, &spool);
    let accepted = send(&rt, grpc, 0..100);
    assert_eq!(accepted.len(), 100);
    let took = terminate(&mut c, Duration::from_secs(20));
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(5)),
        "exit after SIGTERM took {took:?}"
    );
    let moto = Moto::start_on(moto_port);
    let mut c = collector_process(grpc, http, moto_port, &spool);
    let xray_trace = "1-5f1e2d3f-040404040404040404040404".to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = stored_docs(&rt, &moto.url(), std::slice::from_ref(&xray_trace), true);
        if accepted.iter().all(|id| got.contains_key(id)) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = c.kill();
    let _ = c.wait();
    let missing = accepted.iter().filter(|id| !got.contains_key(*id)).count();
    assert_eq!(
        missing, 0,
        "spans accepted before SIGTERM missing after the restart"
    );
}

#[test]
fn a_document_given_up_on_is_not_replayed_after_a_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let moto = Moto::start_on(free_port());
    let bad = "aa00000000000007".to_string();
    let b = bad.clone();
    let front = Front::start(&rt, moto.url(), move |docs| {
        if docs.iter().any(|d| d["id"] == b.as_str()) {
            FrontRule::Unprocessed(vec![(b.clone(), "InvalidSegment".into())])
        } else {
            FrontRule::Forward
        }
    });
    let (grpc, http) = (free_port(), free_port());
    let mut c = collector_process(grpc, http, front.port, &spool);
    assert_eq!(send(&rt, grpc, 0..50).len(), 50);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = stats(http);
        if s["dropped"]["unprocessed by X-Ray: InvalidSegment"] == 1 && s["exported"] == 49 {
            break;
        }
        assert!(Instant::now() < deadline, "not given up on: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = front.times_seen(&bad);
    c.kill().unwrap();
    c.wait().unwrap();
    let mut c = collector_process(grpc, http, front.port, &spool);
    let later = send(&rt, grpc, 100..110);
    let xray_trace = "1-5f1e2d3f-040404040404040404040404".to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = stored_docs(&rt, &moto.url(), std::slice::from_ref(&xray_trace), true);
        if later.iter().all(|id| got.contains_key(id)) {
            assert!(!got.contains_key(&bad));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted collector delivers"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
    assert_eq!(
        front.times_seen(&bad),
        seen,
        "the restart sent the given-up document again"
    );
}

fn send_logs(rt: &tokio::runtime::Runtime, grpc: u16, range: std::ops::Range<u64>) -> Vec<i64> {
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    rt.block_on(async move {
        let mut ok = Vec::new();
        let Ok(mut c) = LogsServiceClient::connect(format!("http://127.0.0.1:{grpc}")).await else {
            return ok;
        };
        for i in range {
            let req = logs_request("crashy", "h", vec![log_record(i, now_ms())]);
            if c.export(req).await.is_ok() {
                ok.push(i as i64);
            }
        }
        ok
    })
}

#[test]
fn sigkill_with_the_spool_on_loses_no_log_event_and_replays_none_delivered() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let moto_port = free_port();
    let (grpc, http) = (free_port(), free_port());
    let stored = |moto: &Moto| -> Vec<i64> {
        let mut got: Vec<i64> = log_events(&rt, &moto.url(), "/maille/crashy", "h")
            .iter()
            .filter_map(|(_, m)| m["n"].as_i64())
            .collect();
        got.sort();
        got
    };
    // CloudWatch Logs is away from the start: what is accepted waits in the spool.
    let mut c = collector_process(grpc, http, moto_port, &spool);
    let mut accepted = send_logs(&rt, grpc, 0..100);
    assert_eq!(
        accepted.len(),
        100,
        "the collector takes records while away"
    );
    c.kill().unwrap();
    c.wait().unwrap();
    assert!(
        spool.join("logs/pending.jsonl").exists(),
        "log events are spooled in their own folder"
    );
    // It comes back; the restarted collector sends what the spool held, and what follows.
    let moto = Moto::start_on(moto_port);
    let mut c = collector_process(grpc, http, moto_port, &spool);
    accepted.extend(send_logs(&rt, grpc, 100..120));
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored(&moto).len() < accepted.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(stored(&moto), accepted, "every accepted record, once");
    // Once it has settled them, another SIGKILL and restart sends none of them again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats(http)["logs"]["exported"] != 120 {
        assert!(Instant::now() < deadline, "{}", stats(http));
        std::thread::sleep(Duration::from_millis(50));
    }
    c.kill().unwrap();
    c.wait().unwrap();
    let mut c = collector_process(grpc, http, moto_port, &spool);
    assert_eq!(stats(http)["logs"]["queued"], 0, "nothing left to replay");
    std::thread::sleep(Duration::from_secs(1));
    let _ = c.kill();
    let _ = c.wait();
    assert_eq!(stored(&moto), accepted, "none sent twice");
}
