//! The breaker in real Envoy 1.40, in both of its builds (breaker.wasm on V8 and the native
//! dynamic module), in front of an upstream whose failure rate the test sets: the circuit
//! opens, the upstream sees nothing while it is open, clients get a fast 503 that says so,
//! the circuit closes once the upstream recovers, the metrics are in Envoy's /stats, and a
//! control endpoint hears every change in order.

use std::time::{Duration, Instant};

use maille_testkit::{agent, eventually, fixture, for_each_runtime, start_breaker_on};
use maille_testkit::{free_port, Envoy, RecordingServer, Runtime};

for_each_runtime!(
    the_circuit_opens_sheds_load_recovers_and_signals_each_change,
    a_dead_control_endpoint_does_not_touch_traffic,
);

const CONFIG: &str = r#"{"windowMillis": 5000, "minRequests": 10, "failureRatio": 0.5,
  "consecutiveFailures": 0, "openMillis": 1500, "halfOpenProbes": 2,
  "signal": {"cluster": "control", "path": "/v1/signals/breaker", "timeoutMillis": 500}}"#;

struct Setup {
    runtime: Runtime,
    front: Envoy,
    upstream: Envoy,
    port: u16,
    signals: Option<RecordingServer>,
    http: ureq::Agent,
}

impl Setup {
    /// With `signals` false, the control cluster points at a port nobody listens on.
    fn start(runtime: Runtime, signals: bool) -> Setup {
        let signals = signals.then(RecordingServer::start);
        let signal_port = signals.as_ref().map_or_else(free_port, |s| s.port);
        let (up_admin, flaky) = (free_port(), free_port());
        let upstream = Envoy::from_template(
            fixture("flaky-upstream.yaml"),
            &[
                ("ADMIN_PORT", &up_admin.to_string()),
                ("FLAKY_PORT", &flaky.to_string()),
                ("SERVICE_NAME", "flaky"),
            ],
            up_admin,
        )
        .unwrap_or_else(|e| panic!("upstream: {}\n{}", e.status, e.log));
        let (front, port) = start_breaker_on(runtime, CONFIG, flaky, signal_port)
            .unwrap_or_else(|e| panic!("front: {}\n{}", e.status, e.log));
        Setup {
            runtime,
            front,
            upstream,
            port,
            signals,
            http: agent(),
        }
    }

    fn fail_percent(&self, percent: u32) {
        self.upstream
            .admin_post(&format!(
                "/runtime_modify?fault.http.abort.abort_percent={percent}"
            ))
            .expect("runtime_modify");
    }

    /// Requests that reached the upstream so far.
    fn upstream_hits(&self) -> u64 {
        self.upstream.stats("http.flaky.downstream_rq_total")["http.flaky.downstream_rq_total"]
    }

    /// (status, x-maille-circuit, retry-after)
    fn get(&self) -> (u16, String, String) {
        let resp = self
            .http
            .get(&format!("http://127.0.0.1:{}/", self.port))
            .call()
            .expect("request through Envoy");
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        (
            resp.status().as_u16(),
            h("x-maille-circuit"),
            h("retry-after"),
        )
    }
}

fn the_circuit_opens_sheds_load_recovers_and_signals_each_change(runtime: Runtime) {
    let t = Setup::start(runtime, true);
    for _ in 0..20 {
        assert_eq!(t.get().0, 200);
    }

    // The upstream fails everything: the circuit opens once the window holds the minimum.
    t.fail_percent(100);
    let mut sent = 0;
    let opened = loop {
        sent += 1;
        let (status, circuit, _) = t.get();
        assert_eq!(status, 503);
        if !circuit.is_empty() {
            break circuit;
        }
        assert!(
            sent <= 30,
            "the circuit did not open after {sent} failing requests"
        );
    };
    assert_eq!(opened, "open; cluster=flaky");
    // 20 good + 10 failing in the window (5 s): 10 of 30 is not above half; it trips at 21 of 41.
    assert!(
        (20..=25).contains(&sent),
        "opened after {sent} failing requests"
    );

    // Open: fast local answers, and the upstream sees none of them.
    let hits = t.upstream_hits();
    let started = Instant::now();
    for _ in 0..50 {
        let (status, circuit, retry) = t.get();
        assert_eq!((status, circuit.as_str()), (503, "open; cluster=flaky"));
        assert!(matches!(retry.as_str(), "1" | "2"), "retry-after {retry}");
    }
    assert!(
        started.elapsed() < Duration::from_millis(1_400),
        "still open: no probe yet"
    );
    assert_eq!(
        t.upstream_hits(),
        hits,
        "requests reached the upstream while the circuit was open"
    );

    // The upstream recovers; after the open interval the probes close the circuit.
    t.fail_percent(0);
    std::thread::sleep(Duration::from_millis(1_600));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ok = 0;
    while ok < 10 {
        let (status, circuit, _) = t.get();
        if status == 200 && circuit.is_empty() {
            ok += 1;
        }
        assert!(Instant::now() < deadline, "the circuit did not close");
    }

    // The wasm build updates these as it goes; the native one reports them from Envoy's main
    // thread at each change and every second.
    let stat = |what: &str| t.runtime.breaker_stat("flaky", what);
    let stats = eventually("the breaker's metrics", Duration::from_secs(5), || {
        let stats = t.front.stats("maille_breaker");
        let ok = stats.get(&stat("trips")) == Some(&1)
            && stats.get(&stat("state")) == Some(&0)
            && stats.get(&stat("rejections")).is_some_and(|n| *n >= 50)
            && stats.get(&stat("failures")).is_some_and(|n| *n >= 10)
            && stats.get(&stat("requests")).is_some_and(|n| *n >= 40);
        (ok, stats)
    });
    assert_eq!(stats.get(&stat("trips")), Some(&1), "{stats:?}");

    let signals = t
        .signals
        .as_ref()
        .expect("recording")
        .wait_for(3, Duration::from_secs(3));
    let steps: Vec<(String, String)> = signals
        .iter()
        .map(|r| {
            assert_eq!(
                (r.method.as_str(), r.path.as_str()),
                ("POST", "/v1/signals/breaker")
            );
            let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON signal");
            assert_eq!(v["cluster"], "flaky");
            (
                v["from"].as_str().unwrap_or("").to_owned(),
                v["to"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("closed".to_owned(), "open".to_owned()),
            ("open".to_owned(), "half_open".to_owned()),
            ("half_open".to_owned(), "closed".to_owned())
        ],
        "{signals:?}"
    );
    let first: serde_json::Value = serde_json::from_str(&signals[0].body).unwrap();
    assert!(first["failureRatio"].as_f64().unwrap() > 0.5, "{first}");
}

fn a_dead_control_endpoint_does_not_touch_traffic(runtime: Runtime) {
    let t = Setup::start(runtime, false);
    t.fail_percent(100);
    let started = Instant::now();
    let mut opened_after = None;
    for n in 1..=40 {
        let (status, circuit, _) = t.get();
        assert_eq!(status, 503);
        if !circuit.is_empty() && opened_after.is_none() {
            opened_after = Some(n);
        }
    }
    // The tenth failure trips the circuit; the eleventh request is the first answered locally.
    assert_eq!(opened_after, Some(11), "minRequests 10, all failing");
    // The signal call fails (connection refused) without slowing anything down.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?} for 40 requests",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while !t.front.log().contains("signal call") {
        assert!(
            Instant::now() < deadline,
            "no log of the failed signal:\n{}",
            t.front.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = t.front.log();
    assert!(
        log.contains("maille_breaker: cluster flaky: closed -> open"),
        "{log}"
    );
    assert!(
        log.contains("failed (endpoint unreachable or timed out)") || log.contains("answered 503"),
        "{log}"
    );
    t.fail_percent(0);
    std::thread::sleep(Duration::from_millis(1_600));
    assert_eq!(
        t.get().0,
        200,
        "the probe goes through once the upstream is back"
    );
}
