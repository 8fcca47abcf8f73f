//! breaker.wasm in the wasmtime host, with the clock under the test's control.

use std::time::Duration;

use maille_breaker::{Record, State};
use maille_testkit::filter_wasm;
use maille_wasm_host::{Action, Error, Host, HttpCallResponse, Vm};

/// What became of one request.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// It went upstream; the upstream answered `status`.
    Upstream,
    /// The breaker answered it locally.
    Rejected { retry_after: String, marker: String },
}

fn breaker(host: &Host, config: &str) -> Vm {
    let mut vm = host
        .load(filter_wasm("breaker"))
        .expect("load breaker.wasm");
    vm.configure(config.as_bytes())
        .unwrap_or_else(|e| panic!("good config refused: {e}"));
    vm
}

/// One request to `svc`, answered by the upstream with `status` if it gets there.
fn call(vm: &mut Vm, status: u16) -> Seen {
    call_to(vm, "svc", status)
}

/// One request to `cluster`, answered by the upstream with `status` if it gets there.
fn call_to(vm: &mut Vm, cluster: &str, status: u16) -> Seen {
    let mut s = vm.stream();
    s.set_upstream_cluster(cluster);
    let action = s.request_headers(&[(":path", "/")], true).expect("request");
    if let Some(local) = s.local_response() {
        assert_eq!(action, Action::Pause);
        assert_eq!(local.status, 503);
        let h = |n: &str| {
            local
                .headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let seen = Seen::Rejected {
            retry_after: h("retry-after"),
            marker: h("x-maille-circuit"),
        };
        // Envoy runs the local reply through the encoder filters too.
        s.response_headers(&[(":status", "503")], true)
            .expect("local reply");
        return seen;
    }
    assert_eq!(action, Action::Continue);
    s.response_headers(&[(":status", &status.to_string())], true)
        .expect("response");
    Seen::Upstream
}

fn record(host: &Host) -> Record {
    Record::decode(&host.shared_data("maille_breaker/v2/svc").expect("record").0).expect("decodes")
}

fn open_seen(retry: &str) -> Seen {
    Seen::Rejected {
        retry_after: retry.into(),
        marker: "open; cluster=svc".into(),
    }
}

#[test]
fn trips_on_the_failure_ratio_but_not_under_the_minimum() {
    let host = Host::new();
    let mut vm = breaker(
        &host,
        r#"{"minRequests": 10, "failureRatio": 0.5, "consecutiveFailures": 0, "openMillis": 3000}"#,
    );
    // 9 failures: under the minimum of 10.
    for _ in 0..9 {
        assert_eq!(call(&mut vm, 503), Seen::Upstream);
    }
    assert_eq!(record(&host).state, State::Closed);
    assert_eq!(call(&mut vm, 503), Seen::Upstream); // 10 of 10: trips
    assert_eq!(record(&host).state, State::Open);
    assert_eq!(call(&mut vm, 200), open_seen("3"));
    assert_eq!(host.metric("maille_breaker.svc.trips"), Some(1));
    assert_eq!(host.metric("maille_breaker.svc.state"), Some(1));
    assert_eq!(host.metric("maille_breaker.svc.requests"), Some(10));
    assert_eq!(host.metric("maille_breaker.svc.failures"), Some(10));
    assert_eq!(host.metric("maille_breaker.svc.rejections"), Some(1));
    let log = vm.log_lines(maille_wasm_host::LogLevel::Info).join("\n");
    assert!(
        log.contains("cluster svc: closed -> open (failure ratio 1.00: 10 of 10"),
        "{log}"
    );
}

#[test]
fn trips_on_consecutive_failures_and_successes_reset_the_streak() {
    let host = Host::new();
    let mut vm = breaker(&host, r#"{"minRequests": 1000, "consecutiveFailures": 3}"#);
    for status in [500, 502, 200, 504, 500] {
        assert_eq!(call(&mut vm, status), Seen::Upstream);
    }
    assert_eq!(record(&host).state, State::Closed);
    assert_eq!(call(&mut vm, 503), Seen::Upstream);
    assert_eq!(record(&host).state, State::Open);
    // 4xx are not failures.
    let host = Host::new();
    let mut vm = breaker(&host, r#"{"minRequests": 1, "consecutiveFailures": 2}"#);
    for _ in 0..20 {
        assert_eq!(call(&mut vm, 404), Seen::Upstream);
    }
    // Successes are batched by the worker and merged by its timer.
    assert!(host.shared_data("maille_breaker/v2/svc").is_none());
    vm.advance(Duration::from_millis(50)).unwrap();
    let rec = record(&host);
    assert_eq!(rec.state, State::Closed);
    assert_eq!(rec.window(host.now_nanos() / 1_000_000, 10_000), (20, 0));
    assert_eq!(host.metric("maille_breaker.svc.requests"), Some(20));
}

#[test]
fn open_answers_fast_then_half_open_probes_are_bounded_then_it_closes() {
    let host = Host::new();
    let mut vm = breaker(
        &host,
        r#"{"minRequests": 5, "consecutiveFailures": 0, "openMillis": 5000, "halfOpenProbes": 2}"#,
    );
    for _ in 0..5 {
        call(&mut vm, 500);
    }
    // Open: answered locally, the retry-after counting down.
    assert_eq!(call(&mut vm, 200), open_seen("5"));
    vm.advance(Duration::from_millis(3_500)).unwrap();
    assert_eq!(call(&mut vm, 200), open_seen("2"));
    vm.advance(Duration::from_millis(1_500)).unwrap();

    // Half-open: two probes in flight at once, a third is turned away.
    let mut p1 = vm.stream();
    p1.set_upstream_cluster("svc");
    assert_eq!(p1.request_headers(&[], true).unwrap(), Action::Continue);
    drop_after_response(p1, 200);
    assert_eq!(record(&host).state, State::HalfOpen);
    let mut p2 = vm.stream();
    p2.set_upstream_cluster("svc");
    assert_eq!(p2.request_headers(&[], true).unwrap(), Action::Continue);
    {
        let mut p3 = p2.vm().stream();
        p3.set_upstream_cluster("svc");
        p3.request_headers(&[], true).unwrap();
        assert!(p3.local_response().is_some(), "a third probe went through");
    }
    drop_after_response(p2, 200);
    assert_eq!(record(&host).state, State::Closed);
    assert_eq!(host.metric("maille_breaker.svc.state"), Some(0));
    assert_eq!(call(&mut vm, 200), Seen::Upstream);
}

fn drop_after_response(mut s: maille_wasm_host::Stream<'_>, status: u16) {
    s.response_headers(&[(":status", &status.to_string())], true)
        .unwrap();
}

#[test]
fn a_failed_probe_opens_the_circuit_again() {
    let host = Host::new();
    let mut vm = breaker(
        &host,
        r#"{"minRequests": 1, "consecutiveFailures": 0, "openMillis": 1000, "halfOpenProbes": 1}"#,
    );
    call(&mut vm, 500);
    vm.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(call(&mut vm, 503), Seen::Upstream); // the probe fails
    assert_eq!(record(&host).state, State::Open);
    assert_eq!(call(&mut vm, 200), open_seen("1"));
    assert_eq!(host.metric("maille_breaker.svc.trips"), Some(2));
}

#[test]
fn state_changes_are_signalled_in_order_one_call_at_a_time() {
    let host = Host::new();
    let mut vm = breaker(
        &host,
        r#"{"minRequests": 2, "consecutiveFailures": 0, "openMillis": 1000, "halfOpenProbes": 1,
            "signal": {"cluster": "control", "path": "/v1/signals/breaker", "timeoutMillis": 200}}"#,
    );
    call(&mut vm, 500);
    call(&mut vm, 500); // closed -> open
    assert!(
        vm.http_calls().is_empty(),
        "signals are sent by the timer, off the request path"
    );
    vm.advance(Duration::from_millis(1_000)).unwrap();
    call(&mut vm, 200); // open -> half_open (the probe), then half_open -> closed
    vm.advance(Duration::from_millis(100)).unwrap();

    // One call at a time: the next goes when the previous one is answered, even by a failure.
    let mut bodies = Vec::new();
    let mut answers = [HttpCallResponse::default(), ok(), ok()].into_iter();
    while let Some(c) = vm.http_calls().first().cloned() {
        assert_eq!(vm.http_calls().len(), 1, "more than one signal in flight");
        assert_eq!(c.upstream, "control");
        assert_eq!(c.header(":method"), Some("POST"));
        assert_eq!(c.header(":path"), Some("/v1/signals/breaker"));
        assert_eq!(c.header("content-type"), Some("application/json"));
        assert_eq!(c.timeout, Duration::from_millis(200));
        bodies.push(serde_json::from_slice::<serde_json::Value>(&c.body).unwrap());
        vm.respond(c.token, answers.next().expect("at most three signals"))
            .unwrap();
    }
    let steps: Vec<(&str, &str, u64)> = bodies
        .iter()
        .map(|v| {
            assert_eq!(v["cluster"], "svc");
            (
                v["from"].as_str().unwrap(),
                v["to"].as_str().unwrap(),
                v["generation"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("closed", "open", 1),
            ("open", "half_open", 2),
            ("half_open", "closed", 3)
        ]
    );
    assert_eq!(
        (
            bodies[0]["requests"].as_u64(),
            bodies[0]["failures"].as_u64(),
            bodies[0]["failureRatio"].as_f64()
        ),
        (Some(2), Some(2), Some(1.0))
    );
    // The failed first call was logged; traffic never waited for any of it.
    assert!(vm
        .log_lines(maille_wasm_host::LogLevel::Warn)
        .iter()
        .any(|l| l.contains("signal call") && l.contains("failed")));
    assert_eq!(call(&mut vm, 200), Seen::Upstream);
}

fn ok() -> HttpCallResponse {
    HttpCallResponse {
        headers: vec![(":status".into(), "204".into())],
        ..Default::default()
    }
}

#[test]
fn two_workers_racing_on_shared_state_lose_no_update_and_no_transition() {
    let host = Host::new();
    // A long window and a high minimum: the count must reach exactly what was sent.
    let config = r#"{"windowMillis": 600000, "minRequests": 1000000, "consecutiveFailures": 0}"#;
    let per_worker = 400;
    let workers: Vec<Vm> = (0..2).map(|_| breaker(&host, config)).collect();
    let handles: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(w, mut vm)| {
            std::thread::spawn(move || {
                for i in 0..per_worker {
                    call(&mut vm, if (i + w) % 4 == 0 { 500 } else { 200 });
                }
                // Successes are batched per worker; the timer merges the last batch.
                vm.advance(Duration::from_millis(50)).unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let (total, failures) =
        record(&host).window(maille_wasm_host::EPOCH_NANOS / 1_000_000, 600_000);
    assert_eq!(total, 2 * per_worker as u32, "lost updates");
    assert_eq!(failures, 2 * per_worker as u32 / 4);

    // Racing to trip: exactly one trip, one closed -> open.
    let host = Host::new();
    let config = r#"{"minRequests": 50, "failureRatio": 0.5, "consecutiveFailures": 0, "openMillis": 600000}"#;
    let workers: Vec<Vm> = (0..2).map(|_| breaker(&host, config)).collect();
    let handles: Vec<_> = workers
        .into_iter()
        .map(|mut vm| {
            std::thread::spawn(move || {
                for _ in 0..200 {
                    call(&mut vm, 503);
                }
                vm.log_lines(maille_wasm_host::LogLevel::Info)
                    .into_iter()
                    .filter(|l| l.contains("->"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let transitions: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(transitions.len(), 1, "{transitions:?}");
    assert!(transitions[0].contains("closed -> open"));
    assert_eq!(host.metric("maille_breaker.svc.trips"), Some(1));
    assert_eq!(record(&host).state, State::Open);
    assert_eq!(
        host.metric("maille_breaker.svc.requests").unwrap()
            + host.metric("maille_breaker.svc.rejections").unwrap(),
        400
    );
}

#[test]
fn two_workers_failing_first_on_a_fresh_cluster_at_once_both_count() {
    // Each round, both workers send their first request to a cluster nobody has seen, at
    // the same moment, and it fails (a failure is merged at once). Shared data has no
    // create-if-absent, so a worker's create can land on the other's counts: its journal
    // puts them back on its next look.
    let host = Host::new();
    let config = r#"{"windowMillis": 600000, "minRequests": 1000000, "consecutiveFailures": 0}"#;
    let rounds = 300;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let mut vm = breaker(&host, config);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                for round in 0..rounds {
                    barrier.wait();
                    call_to(&mut vm, &format!("fresh{round}"), 503);
                }
                // Each worker's timer re-reads the clusters it knows (as Envoy's ticks do),
                // after both are done: a late create of the last round lands first.
                barrier.wait();
                vm.advance(Duration::from_millis(50)).unwrap();
                barrier.wait();
                vm.advance(Duration::from_millis(50)).unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let lost: Vec<usize> = (0..rounds)
        .filter(|round| {
            let (bytes, _) = host
                .shared_data(&format!("maille_breaker/v2/fresh{round}"))
                .expect("record");
            let rec = Record::decode(&bytes).expect("decodes");
            rec.window(maille_wasm_host::EPOCH_NANOS / 1_000_000, 600_000) != (2, 2)
        })
        .collect();
    assert!(lost.is_empty(), "rounds that lost a failure: {lost:?}");
}

#[test]
fn a_closed_circuit_costs_no_shared_data_read_and_other_workers_trips_show_within_a_tick() {
    let host = Host::new();
    let config = r#"{"minRequests": 1000, "consecutiveFailures": 3, "openMillis": 600000}"#;
    let mut a = breaker(&host, config);
    let mut b = breaker(&host, config);
    assert_eq!(call(&mut b, 200), Seen::Upstream);
    // Healthy traffic: admitted on the state this worker last saw, no read per request.
    let reads = host.shared_data_reads();
    for _ in 0..100 {
        assert_eq!(call(&mut b, 200), Seen::Upstream);
    }
    assert_eq!(
        host.shared_data_reads(),
        reads,
        "shared data read per healthy request"
    );

    // Another worker trips the circuit; this one sees it at its next tick (50 ms) at most.
    for _ in 0..3 {
        assert_eq!(call(&mut a, 503), Seen::Upstream);
    }
    assert_eq!(record(&host).state, State::Open);
    assert_eq!(call(&mut a, 200), open_seen("600"));
    b.advance(Duration::from_millis(50)).unwrap();
    assert_eq!(call(&mut b, 200), open_seen("600"));
    // b's 101 requests were counted by its tick, a's 3 as each failure merged: none lost.
    assert_eq!(host.metric("maille_breaker.svc.requests"), Some(104));
}

#[test]
fn bad_configs_are_refused_with_the_field_named() {
    let host = Host::new();
    for (config, expected) in [
        (r#"{"failureRatio": 0}"#, "failureRatio: must be above 0"),
        (
            r#"{"openMillis": 1}"#,
            "openMillis: must be 100..=3600000, got 1",
        ),
        (r#"{"signal": {"cluster": "c"}}"#, "missing field `path`"),
        (
            r#"{"windowMillis": 2000, "colour": 1}"#,
            "unknown field `colour`",
        ),
    ] {
        let mut vm = host.load(filter_wasm("breaker")).unwrap();
        match vm.configure(config.as_bytes()) {
            Err(Error::Refused { log, .. }) => {
                assert!(
                    log.iter().any(|l| l.contains(expected)),
                    "{expected:?} not in {log:?}"
                )
            }
            other => panic!("{config} not refused: {other:?}"),
        }
    }
}
