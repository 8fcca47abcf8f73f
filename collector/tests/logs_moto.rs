//! Log records through the collector to CloudWatch Logs on a real AWS API endpoint (moto):
//! over gRPC and HTTP (protobuf, JSON, gzip), into groups and streams the collector creates,
//! once each and in time order; malformed requests refused while others are served; an
//! outage of 20 s loses nothing; events CloudWatch Logs refuses are dropped by their reason
//! without holding back the rest.

mod common;

use common::*;
use maille_testkit::{agent, free_port};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use std::time::Duration;

fn send_grpc(rt: &tokio::runtime::Runtime, port: u16, req: ExportLogsServiceRequest) {
    rt.block_on(async move {
        let mut c = LogsServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        c.export(req).await.expect("logs taken");
    });
}

fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn numbers(events: &[(i64, serde_json::Value)]) -> Vec<i64> {
    events
        .iter()
        .map(|(_, m)| m["n"].as_i64().expect("n"))
        .collect()
}

#[test]
fn log_records_over_grpc_and_http_arrive_in_cloudwatch_logs_once_and_in_time_order() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start_on(free_port());
    let running = collector(&rt, &moto.url());
    let t0 = now_ms() - 60_000;
    // gRPC: out of time order inside the request, with a trace id.
    let mut rec = log_record(1, t0 + 30);
    rec.trace_id = vec![
        0x5f, 0x1e, 0x2d, 0x3d, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    send_grpc(
        &rt,
        running.grpc_port,
        logs_request(
            "teller",
            "host-1",
            vec![rec, log_record(2, t0 + 10), log_record(3, t0 + 20)],
        ),
    );
    // HTTP protobuf, gzip.
    let body = logs_request("teller", "host-1", vec![log_record(4, t0 + 40)]).encode_to_vec();
    let r = agent()
        .post(&format!("http://127.0.0.1:{}/v1/logs", running.http_port))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .send(&gzip(&body)[..])
        .unwrap();
    assert_eq!(r.status(), 200);
    // HTTP JSON, another service: another group.
    let json = serde_json::to_vec(&logs_request(
        "gateway",
        "host-2",
        vec![log_record(5, t0 + 50)],
    ))
    .unwrap();
    let r = agent()
        .post(&format!("http://127.0.0.1:{}/v1/logs", running.http_port))
        .header("content-type", "application/json")
        .send(&json[..])
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_logs_exported(&running, 5, Duration::from_secs(30));

    let teller = log_events(&rt, &moto.url(), "/maille/teller", "host-1");
    assert_eq!(numbers(&teller), [2, 3, 1, 4], "once each, in time order");
    let times: Vec<i64> = teller.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        times,
        [t0 + 10, t0 + 20, t0 + 30, t0 + 40].map(|t| t as i64)
    );
    let first = &teller[2].1;
    assert_eq!(first["message"], "line 1");
    assert_eq!(
        first["xray_trace_id"],
        "1-5f1e2d3d-0102030405060708090a0b0c"
    );
    let gateway = log_events(&rt, &moto.url(), "/maille/gateway", "host-2");
    assert_eq!(numbers(&gateway), [5]);
    let stats = running.log_stats.as_ref().unwrap().to_json();
    assert_eq!(stats["received"], 5, "{stats}");
    assert_eq!(stats["exported"], 5, "{stats}");
    rt.block_on(running.stop());
}

#[test]
fn malformed_otlp_logs_get_an_error_and_the_collector_keeps_serving() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start_on(free_port());
    let running = collector(&rt, &moto.url());
    let url = format!("http://127.0.0.1:{}/v1/logs", running.http_port);
    for (ct, body, want) in [
        ("application/x-protobuf", &b"\xff\xff\xff\xff"[..], 400),
        ("application/json", &b"{\"resourceLogs\": 7}"[..], 400),
        ("text/csv", &b"a,b"[..], 415),
    ] {
        let r = agent()
            .post(&url)
            .header("content-type", ct)
            .config()
            .http_status_as_error(false)
            .build()
            .send(body)
            .unwrap();
        assert_eq!(r.status(), want, "{ct}");
        let text = r.into_body().read_to_string().unwrap();
        assert!(!text.is_empty(), "{ct}: the refusal says why");
    }
    // gRPC: garbage bytes in a valid frame.
    let status = rt.block_on(async {
        let ch = tonic::transport::Channel::from_shared(format!(
            "http://127.0.0.1:{}",
            running.grpc_port
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();
        let mut g = tonic::client::Grpc::new(ch);
        g.ready().await.unwrap();
        g.unary::<Vec<u8>, Vec<u8>, _>(
            tonic::Request::new(vec![0xff, 0xff, 0xff]),
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
                .parse()
                .unwrap(),
            RawCodec,
        )
        .await
        .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // Meanwhile and after, good records are taken and delivered.
    send_grpc(
        &rt,
        running.grpc_port,
        logs_request("teller", "h", vec![log_record(1, now_ms())]),
    );
    wait_logs_exported(&running, 1, Duration::from_secs(30));
    assert_eq!(
        numbers(&log_events(&rt, &moto.url(), "/maille/teller", "h")),
        [1]
    );
    rt.block_on(running.stop());
}

#[test]
fn a_cloudwatch_logs_outage_of_20_seconds_loses_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = free_port();
    let mut moto = Some(Moto::start_on(port));
    let running = collector(&rt, &moto.as_ref().unwrap().url());
    let mut before = Vec::new();
    // A record every 200 ms for 30 s; CloudWatch Logs is away from the 5th second to the
    // 25th (moto forgets everything: the group and stream are created again).
    let start = std::time::Instant::now();
    for i in 1..=150u64 {
        let at = Duration::from_millis(200 * i);
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        if i == 25 {
            wait_logs_exported(&running, 24, Duration::from_secs(10));
            let m = moto.take().expect("moto up");
            before = numbers(&log_events(&rt, &m.url(), "/maille/outage", "h"));
            drop(m);
        }
        if i == 125 {
            moto = Some(Moto::start_on(port));
        }
        send_grpc(
            &rt,
            running.grpc_port,
            logs_request("outage", "h", vec![log_record(i, now_ms())]),
        );
        if i == 120 {
            let stats = running.log_stats.as_ref().unwrap();
            assert!(
                stats.exported() < 30,
                "{} exported while away",
                stats.exported()
            );
            assert!(stats.retried() >= 1);
        }
    }
    let moto = moto.expect("back");
    wait_logs_exported(&running, 150, Duration::from_secs(60));
    let after = numbers(&log_events(&rt, &moto.url(), "/maille/outage", "h"));
    assert!(after.iter().all(|n| !before.contains(n)), "none sent twice");
    let mut got: Vec<i64> = before.into_iter().chain(after).collect();
    got.sort();
    assert_eq!(
        got,
        (1..=150).collect::<Vec<i64>>(),
        "every record exactly once"
    );
    rt.block_on(running.stop());
}

#[test]
fn events_cloudwatch_logs_refuses_are_dropped_by_reason_and_the_rest_arrive() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start_on(free_port());
    let running = collector(&rt, &moto.url());
    let now = now_ms();
    let mut records: Vec<_> = (1..=8).map(|i| log_record(i, now - 1_000 + i)).collect();
    // Twenty days old (CloudWatch Logs takes 14) and three hours ahead (it takes 2).
    records.insert(3, log_record(100, now - 20 * 24 * 3600 * 1000));
    records.push(log_record(101, now + 3 * 3600 * 1000));
    send_grpc(&rt, running.grpc_port, logs_request("poison", "h", records));
    wait_logs_exported(&running, 8, Duration::from_secs(30));
    let stats = running.log_stats.as_ref().unwrap();
    assert_eq!(
        stats.dropped(),
        [
            (
                "rejected by CloudWatch Logs: older than 14 days".to_string(),
                1
            ),
            (
                "rejected by CloudWatch Logs: more than 2 hours in the future".to_string(),
                1
            )
        ]
        .into()
    );
    assert_eq!(
        numbers(&log_events(&rt, &moto.url(), "/maille/poison", "h")),
        (1..=8).collect::<Vec<i64>>()
    );
    assert_eq!(stats.exported(), 8);
    assert_eq!(stats.retried(), 0, "given up on at once, not sent again");
    rt.block_on(running.stop());
}

/// Sends bytes as they are.
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

fn logs_collector(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    retention: Option<i32>,
    max_log_streams: usize,
) -> maille_collector::Running {
    rt.block_on(maille_collector::start(
        maille_collector::Config {
            max_log_streams,
            ..fast_config()
        },
        maille_collector::XraySink::new(&sdk_config(endpoint)),
        None,
        Some(maille_collector::CloudWatchLogsSink::new(
            &sdk_config(endpoint),
            retention,
        )),
    ))
    .expect("collector starts")
}

type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A front before moto: answers the calls `refuse(operation, body)` picks with
/// AccessDeniedException, forwards the others; every call it saw, as (operation, body).
fn logs_front(
    rt: &tokio::runtime::Runtime,
    moto: String,
    refuse: fn(&str, &str) -> bool,
) -> (u16, Seen) {
    use axum::http::{HeaderMap, StatusCode};
    let seen: Seen = Default::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: String| {
        let (s, moto) = (s.clone(), moto.clone());
        async move {
            let op = headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .trim_start_matches("Logs_20140328.")
                .to_owned();
            s.lock().unwrap().push((op.clone(), body.clone()));
            if refuse(&op, &body) {
                return (
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"__type": "AccessDeniedException", "message": "not allowed by the test's role"})
                        .to_string(),
                );
            }
            tokio::task::spawn_blocking(move || forward(&moto, &headers, body))
            .await
            .unwrap()
        }
    });
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, seen)
}

fn retention_of(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
) -> std::collections::BTreeMap<String, Option<i32>> {
    let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk_config(endpoint));
    rt.block_on(
        logs.describe_log_groups()
            .log_group_name_prefix("/maille/")
            .send(),
    )
    .unwrap()
    .log_groups()
    .iter()
    .map(|g| {
        (
            g.log_group_name().unwrap().to_owned(),
            g.retention_in_days(),
        )
    })
    .collect()
}

#[test]
fn groups_it_creates_get_their_retention_and_a_group_made_elsewhere_gets_only_a_stream() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start_on(free_port());
    let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk_config(&moto.url()));
    // A group made elsewhere (by Terraform, say), without streams; the role may not create
    // it.
    rt.block_on(
        logs.create_log_group()
            .log_group_name("/maille/made")
            .send(),
    )
    .unwrap();
    let (front, seen) = logs_front(&rt, moto.url(), |op, body| {
        op == "CreateLogGroup" && body.contains("/maille/made")
    });
    let running = logs_collector(&rt, &format!("http://127.0.0.1:{front}"), Some(7), 100);
    for service in ["made", "fresh"] {
        send_grpc(
            &rt,
            running.grpc_port,
            logs_request(service, "h", vec![log_record(1, now_ms())]),
        );
    }
    wait_logs_exported(&running, 2, Duration::from_secs(30));
    for service in ["made", "fresh"] {
        let group = format!("/maille/{service}");
        assert_eq!(
            numbers(&log_events(&rt, &moto.url(), &group, "h")),
            [1],
            "{group}"
        );
    }
    assert!(
        !seen
            .lock()
            .unwrap()
            .iter()
            .any(|(op, body)| op == "CreateLogGroup" && body.contains("/maille/made")),
        "a missing stream in an existing group is made without CreateLogGroup"
    );
    assert_eq!(
        retention_of(&rt, &moto.url()),
        [
            ("/maille/fresh".to_string(), Some(7)),
            ("/maille/made".to_string(), None)
        ]
        .into(),
        "only the group the collector created gets --log-retention-days"
    );
    rt.block_on(running.stop());
}

#[test]
fn a_role_that_may_not_set_retention_still_delivers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start_on(free_port());
    let (front, seen) = logs_front(&rt, moto.url(), |op, _| op == "PutRetentionPolicy");
    let running = logs_collector(&rt, &format!("http://127.0.0.1:{front}"), Some(7), 100);
    for i in 1..=3 {
        send_grpc(
            &rt,
            running.grpc_port,
            logs_request("kept", "h", vec![log_record(i, now_ms())]),
        );
        wait_logs_exported(&running, i, Duration::from_secs(30));
    }
    assert_eq!(
        numbers(&log_events(&rt, &moto.url(), "/maille/kept", "h")),
        [1, 2, 3]
    );
    let tries = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(op, _)| op == "PutRetentionPolicy")
        .count();
    assert!(
        (2..=5).contains(&tries),
        "tried again with later calls, a few times: {tries}"
    );
    assert_eq!(retention_of(&rt, &moto.url())["/maille/kept"], None);
    rt.block_on(running.stop());
}

#[test]
fn senders_cannot_make_streams_without_bound() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start_on(free_port());
    let running = logs_collector(&rt, &moto.url(), None, 2);
    let mut partial = Vec::new();
    for service in ["a", "b", "c", "a"] {
        let port = running.grpc_port;
        let req = logs_request(
            service,
            "h",
            vec![log_record(1, now_ms()), log_record(2, now_ms())],
        );
        partial.push(rt.block_on(async move {
            let mut c = LogsServiceClient::connect(format!("http://127.0.0.1:{port}"))
                .await
                .unwrap();
            c.export(req)
                .await
                .unwrap()
                .into_inner()
                .partial_success
                .map_or(0, |p| p.rejected_log_records)
        }));
    }
    assert_eq!(
        partial,
        [0, 0, 2, 0],
        "the third stream is refused, the first still taken"
    );
    wait_logs_exported(&running, 6, Duration::from_secs(30));
    let stats = running.log_stats.as_ref().unwrap();
    assert_eq!(
        stats.dropped(),
        [("more than 2 log streams (--max-log-streams)".to_string(), 2)].into()
    );
    assert!(log_events(&rt, &moto.url(), "/maille/c", "h").is_empty());
    assert_eq!(
        numbers(&log_events(&rt, &moto.url(), "/maille/a", "h")),
        [1, 2, 1, 2]
    );
    rt.block_on(running.stop());
}
