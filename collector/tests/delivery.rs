//! Delivery to X-Ray, in-process with fake X-Ray endpoints (no external process): one
//! document X-Ray always refuses does not hold back the others; a batch answered 400 is split
//! until the bad document is found and the rest are delivered; several calls are in flight at
//! once; stopping ends in bounded time and says what was left undelivered.

mod common;

use common::*;
use maille_collector::SendError;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn send_all(rt: &tokio::runtime::Runtime, port: u16, reqs: Vec<ExportTraceServiceRequest>) {
    rt.block_on(async move {
        let mut c = TraceServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        for r in reqs {
            c.export(r).await.expect("accepted");
        }
    })
}

/// `n` spans of one trace, `per_request` to a request.
fn requests(trace: u64, n: u64, per_request: u64) -> Vec<ExportTraceServiceRequest> {
    (0..n)
        .step_by(per_request as usize)
        .map(|first| {
            export_request(
                vec![common::text("service.name", "delivery")],
                (first + 1..=(first + per_request).min(n))
                    .map(|i| numbered_span(trace, i, vec![]))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn a_document_xray_always_refuses_does_not_hold_back_the_others() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bad = doc_id(1);
    let b = bad.clone();
    let fake = Fake::new(Duration::ZERO, move |docs| {
        Ok(docs
            .iter()
            .filter(|d| d["id"] == b.as_str())
            .map(|d| {
                (
                    d["id"].as_str().unwrap().to_owned(),
                    "InvalidSegment".into(),
                )
            })
            .collect())
    });
    let running = fast_collector(&rt, fast_config(), fake.clone());
    send_all(&rt, running.grpc_port, requests(11, 2000, 100));
    fake.wait_stored(1999, Duration::from_secs(60), &|| {
        running.stats.to_json().to_string()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let s = running.stats.to_json();
        if s["dropped"].as_object().is_some_and(|d| !d.is_empty()) || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dropped = stats["dropped"].as_object().unwrap();
    assert_eq!(dropped.len(), 1, "{stats}");
    let (reason, n) = dropped.iter().next().unwrap();
    assert!(
        reason.contains("InvalidSegment"),
        "dropped with its code: {stats}"
    );
    assert_eq!(n, 1);
    assert_eq!(stats["exported"], 1999, "{stats}");
    assert!(!fake.stored_ids().contains(&bad));
    // A bounded number of attempts, not one per backoff forever.
    let calls = fake.0.calls.load(Ordering::SeqCst);
    assert!(calls < 2000 / 50 + 10, "{calls} calls");
    rt.block_on(running.stop());
}

#[test]
fn a_batch_answered_400_is_split_until_the_bad_document_is_found() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bad = doc_id(17);
    let b = bad.clone();
    let fake = Fake::new(Duration::ZERO, move |docs| {
        if docs.iter().any(|d| d["id"] == b.as_str()) {
            Err(SendError::Refused(
                "HTTP 400: InvalidRequestException: segment too large".into(),
            ))
        } else {
            Ok(Vec::new())
        }
    });
    let running = fast_collector(&rt, fast_config(), fake.clone());
    send_all(&rt, running.grpc_port, requests(12, 50, 50));
    fake.wait_stored(49, Duration::from_secs(30), &|| {
        running.stats.to_json().to_string()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.stats.to_json()["dropped"]
        .as_object()
        .is_none_or(|d| d.is_empty())
    {
        assert!(Instant::now() < deadline, "{}", running.stats.to_json());
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = running.stats.to_json();
    assert_eq!(stats["exported"], 49, "{stats}");
    let dropped = stats["dropped"].as_object().unwrap();
    assert_eq!(
        dropped.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        1,
        "{stats}"
    );
    assert!(
        dropped.keys().any(|k| k.contains("segment too large")),
        "{stats}"
    );
    let ids = fake.stored_ids();
    assert_eq!(ids.len(), 49);
    assert!(!ids.contains(&bad));
    rt.block_on(running.stop());
}

#[test]
fn several_calls_are_in_flight_at_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = Fake::new(Duration::from_millis(200), |_| Ok(Vec::new()));
    let running = fast_collector(&rt, fast_config(), fake.clone());
    send_all(&rt, running.grpc_port, requests(13, 1000, 100));
    fake.wait_stored(1000, Duration::from_secs(60), &|| {
        running.stats.to_json().to_string()
    });
    let most = fake.0.max_in_flight.load(Ordering::SeqCst);
    assert!(most >= 8, "at most {most} PutTraceSegments in flight");
    rt.block_on(running.stop());
}

#[test]
fn stopping_ends_in_bounded_time_and_counts_what_was_left() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // X-Ray never answers.
    let fake = Fake::new(Duration::from_secs(3600), |_| Ok(Vec::new()));
    let running = fast_collector(&rt, fast_config(), fake.clone());
    send_all(&rt, running.grpc_port, requests(14, 120, 40));
    let stats = running.stats.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        rt.block_on(running.stop());
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("stop() returns within its drain deadline");
    let s = stats.to_json();
    assert_eq!(s["undeliveredAtExit"], 120, "{s}");
    assert_eq!(s["exported"], 0, "{s}");
}
