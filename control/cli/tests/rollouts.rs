//! Rollouts with real Envoys and real traffic: the gateway's Envoy sends its stats to the
//! control server, which moves the route's weights step by step, checks each interval, and
//! promotes or rolls back by itself.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn write(dir: &std::path::Path, name: &str, v: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p.display().to_string()
}

fn rollout(spec: Value) -> Value {
    let mut s = json!({"virtualRouterName": "colorteller", "routeName": "color",
                       "stable": "stable", "canary": "canary"});
    for (k, v) in spec.as_object().unwrap() {
        s[k] = v.clone();
    }
    json!([{"rollout": {"meshName": "demo", "rolloutName": "r", "spec": s}}])
}

struct Setup {
    _rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    control: Control,
    apps: Apps,
    _envoy: maille_testkit::Envoy,
    egress: u16,
}

/// The control server, two apps and the gateway's Envoy, routing everything to `stable`;
/// `extra` resources are added to the mesh.
fn setup(extra: Vec<Value>) -> Setup {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let apps = Apps::start(&rt, &["stable", "canary"]);
    let mut mesh = colorteller(&apps, &[("stable", 100), ("canary", 0)]);
    mesh.as_array_mut().unwrap().extend(extra);
    let f = write(dir.path(), "mesh.json", &mesh);
    let (ok, out, err) = control.ctl(&["apply", "-f", &f, "--wait"]);
    assert!(ok, "{out}{err}");
    let (envoy, egress) = control.envoy("demo", "gateway");
    eventually("stable answers", Duration::from_secs(30), || {
        let t = tally(egress, 5);
        (t.get("stable") == Some(&5), t)
    });
    Setup {
        _rt: rt,
        dir,
        control,
        apps,
        _envoy: envoy,
        egress,
    }
}

impl Setup {
    fn start_rollout(&self, spec: Value) {
        let f = write(self.dir.path(), "rollout.json", &rollout(spec));
        let (ok, out, err) = self.control.ctl(&["apply", "-f", &f]);
        assert!(ok, "{out}{err}");
        assert!(out.contains("rollout/demo/r created"), "{out}");
    }

    fn status(&self) -> Value {
        self.control.get("/v1/rollouts/demo/r")
    }

    fn wait(&self, what: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        eventually(what, Duration::from_secs(secs), || {
            let s = self.status();
            (f(&s), s)
        })
    }

    /// Requests in the background (for the analysis) until the flag drops.
    fn background(&self, on: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
        background_traffic(self.egress, on, sent)
    }
}

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

fn weight(s: &Value) -> u64 {
    s["canaryWeight"].as_u64().unwrap_or(0)
}

#[test]
fn a_healthy_canary_goes_through_every_step_with_the_split_it_says() {
    let s = setup(vec![]);
    let on = Arc::new(AtomicBool::new(true));
    let bg = s.background(on.clone(), Arc::new(AtomicU64::new(0)));
    s.start_rollout(json!({
        "steps": [{"weight": 20, "duration": {"unit": "s", "value": 6}},
                  {"weight": 50, "duration": {"unit": "s", "value": 6}},
                  {"weight": 80, "duration": {"unit": "s", "value": 6}}],
        "analysis": {"interval": {"unit": "s", "value": 6}, "minRequests": 10,
                     "successRate": {"min": 0.95}, "latencyP99": {"maxMillis": 1000}}
    }));
    for (i, w) in [20u64, 50, 80].into_iter().enumerate() {
        s.wait(&format!("step {}", i + 1), 60, |st| {
            weight(st) == w && st["step"] == i
        });
        std::thread::sleep(Duration::from_millis(300));
        let t = tally(s.egress, 1000);
        let canary = t.get("canary").copied().unwrap_or(0);
        let still = s.status();
        assert_eq!(
            weight(&still),
            w,
            "the step ended while measuring; status {still}"
        );
        println!(
            "step {} at {w}%: {canary} of 1000 on the canary ({t:?})",
            i + 1
        );
        assert!(
            (canary as i64 - w as i64 * 10).abs() <= 50,
            "step {} at {w}%: {canary} of 1000 on the canary: {t:?}",
            i + 1
        );
    }
    let st = s.wait("success", 60, |st| phase(st) == "Succeeded");
    on.store(false, Ordering::Relaxed);
    bg.join().unwrap();
    assert_eq!(weight(&st), 100);
    let t = tally(s.egress, 100);
    assert_eq!(t.get("canary"), Some(&100), "{t:?}");
    // Every step passed a check with the numbers kept.
    let checks = st["checks"].as_array().unwrap();
    for step in 0..3 {
        let c = checks
            .iter()
            .find(|c| c["step"] == step && c["verdict"] == "pass")
            .unwrap_or_else(|| panic!("no passing check at step {step}: {checks:?}"));
        assert!(c["canary"]["requests"].as_u64().unwrap() >= 10, "{c}");
        assert!(c["stable"]["requests"].as_u64().unwrap() > 0, "{c}");
        assert_eq!(c["measures"][0]["metric"], "successRate");
    }
}

#[test]
fn a_canary_failing_half_its_requests_is_rolled_back() {
    let s = setup(vec![]);
    s.apps.error_every["canary"].store(2, Ordering::Relaxed);
    let on = Arc::new(AtomicBool::new(true));
    let bg = s.background(on.clone(), Arc::new(AtomicU64::new(0)));
    s.start_rollout(json!({
        "stepWeight": 50, "stepDuration": {"unit": "s", "value": 60},
        "analysis": {"interval": {"unit": "s", "value": 5}, "minRequests": 10, "failureLimit": 1,
                     "successRate": {"min": 0.9}}
    }));
    s.wait("step 1", 30, |st| weight(st) == 50);
    let st = s.wait("rolled back", 60, |st| phase(st) == "RolledBack");
    on.store(false, Ordering::Relaxed);
    bg.join().unwrap();
    assert_eq!(st["failedChecks"], 2, "{st}");
    let failed: Vec<&Value> = st["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .collect();
    let rate = failed[0]["canary"]["successRate"].as_f64().unwrap();
    assert!((0.3..0.7).contains(&rate), "{rate}");
    // The status moves first; the Envoy gets the rollback's weights a moment later (its push
    // and ACK).
    eventually(
        "the Envoy is back on stable",
        Duration::from_secs(10),
        || {
            let t = tally(s.egress, 20);
            (t.get("stable") == Some(&20), t)
        },
    );
    let t = tally(s.egress, 200);
    assert_eq!(t.get("stable"), Some(&200), "all traffic on stable: {t:?}");
}

#[test]
fn without_traffic_a_rollout_holds_and_goes_on_when_traffic_returns() {
    let s = setup(vec![]);
    s.start_rollout(json!({
        "stepWeight": 50, "maxWeight": 100,
        "analysis": {"interval": {"unit": "s", "value": 5}, "minRequests": 10,
                     "successRate": {"min": 0.9}}
    }));
    let st = s.wait("two intervals without data", 40, |st| {
        st["noDataIntervals"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!((phase(&st), weight(&st)), ("Progressing", 50), "{st}");
    assert_eq!(st["failedChecks"], 0);
    let on = Arc::new(AtomicBool::new(true));
    let bg = s.background(on.clone(), Arc::new(AtomicU64::new(0)));
    let st = s.wait("success once traffic returns", 60, |st| {
        phase(st) == "Succeeded"
    });
    on.store(false, Ordering::Relaxed);
    bg.join().unwrap();
    assert!(st["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["verdict"] == "noData"));
}

#[test]
fn a_breaker_trip_on_the_canary_rolls_back_at_once() {
    let breaker = json!({"filter": {"meshName": "demo", "filterName": "breaker", "spec": {
        "module": "breaker", "virtualNodes": ["gateway"],
        "config": {"windowMillis": 10000, "minRequests": 5, "failureRatio": 0.5,
                   "consecutiveFailures": 3, "openMillis": 60000,
                   "signal": {"cluster": "maille_control", "path": "/v1/signals/breaker"}}}}});
    let s = setup(vec![breaker]);
    s.start_rollout(json!({"stepWeight": 50, "stepDuration": {"unit": "s", "value": 600}}));
    s.wait("step 1", 30, |st| weight(st) == 50);
    eventually("both answer", Duration::from_secs(30), || {
        let t = tally(s.egress, 40);
        (t.contains_key("canary") && t.contains_key("stable"), t)
    });
    s.apps.failing["canary"].store(true, Ordering::Relaxed);
    // Traffic until the canary's circuit opens; then until only the stable answers.
    let a = maille_testkit::agent();
    let ask = || {
        let mut r = a
            .get(&format!("http://127.0.0.1:{}/", s.egress))
            .header("host", "colorteller.local")
            .call()
            .unwrap();
        let body = r.body_mut().read_to_string().unwrap_or_default();
        (r.status().as_u16(), body)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut in_a_row = 0;
    let mut last_other = Instant::now();
    while in_a_row < 100 {
        assert!(Instant::now() < deadline, "traffic never settled on stable");
        let (code, body) = ask();
        if code == 200 && body == "stable" {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            last_other = Instant::now();
        }
    }
    let st = s.wait("rolled back", 10, |st| phase(st) == "RolledBack");
    assert!(
        st["reason"]
            .as_str()
            .unwrap()
            .starts_with("breaker opened on node/canary/"),
        "{st}"
    );
    let signals = s.control.get("/v1/signals");
    let trip = signals["signals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["to"] == "open")
        .expect("the trip was signalled");
    let trip_ms = trip["atMillis"].as_u64().unwrap();
    let settled = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - last_other.elapsed().as_millis() as u64;
    println!(
        "breaker trip to stable-only traffic: {} ms (last non-stable answer after the trip)",
        settled.saturating_sub(trip_ms)
    );
}

#[test]
fn sticky_users_stay_on_the_canary_and_ab_users_always_get_it() {
    let s = setup(vec![]);
    s.start_rollout(json!({
        "steps": [{"weight": 10, "pause": true}, {"weight": 30, "pause": true}],
        "sticky": {"header": "x-user-id"},
        "matches": [{"headers": [{"name": "x-beta", "match": {"exact": "1"}}]}]
    }));
    s.wait("paused at 10%", 30, |st| {
        weight(st) == 10 && phase(st) == "Paused"
    });
    let a = maille_testkit::agent();
    let users: Vec<String> = (0..300).map(|i| format!("u{i}")).collect();
    let canary_at = |users: &[String]| -> BTreeSet<String> {
        eventually("answers", Duration::from_secs(30), || {
            let got: Vec<String> = users.iter().map(|u| answer_for(&a, s.egress, u)).collect();
            (got.iter().all(|g| g == "stable" || g == "canary"), got)
        })
        .into_iter()
        .zip(users)
        .filter(|(g, _)| g == "canary")
        .map(|(_, u)| u.clone())
        .collect()
    };
    let first = eventually("the 10% split is in", Duration::from_secs(30), || {
        let c = canary_at(&users);
        (!c.is_empty(), c)
    });
    let beta = |a: &ureq::Agent| {
        let mut r = a
            .get(&format!("http://127.0.0.1:{}/", s.egress))
            .header("host", "colorteller.local")
            .header("x-beta", "1")
            .header("x-user-id", &format!("beta-{}", rand_id()))
            .call()
            .unwrap();
        r.body_mut().read_to_string().unwrap_or_default()
    };
    for _ in 0..50 {
        assert_eq!(beta(&a), "canary", "an A/B user missed the canary at 10%");
    }
    let r = s.control.post("/v1/rollouts/demo/r/promote", &json!({}));
    assert_eq!(weight(&r), 30, "{r}");
    let second = eventually("the 30% split is in", Duration::from_secs(30), || {
        let c = canary_at(&users);
        (c.len() > first.len(), c)
    });
    let left: Vec<&String> = first.difference(&second).collect();
    assert!(
        left.is_empty(),
        "users left the canary as it grew: {left:?}"
    );
    println!(
        "sticky: {} of 300 on the canary at 10%, {} at 30%, none left",
        first.len(),
        second.len()
    );
    for _ in 0..50 {
        assert_eq!(beta(&a), "canary", "an A/B user missed the canary at 30%");
    }
    // After the rollout the A/B route is gone with it.
    let r = s.control.post("/v1/rollouts/demo/r/promote", &json!({}));
    assert_eq!(phase(&r), "Succeeded", "{r}");
    let routes = s.control.get("/v1/resources?kind=route");
    assert!(
        !routes.to_string().contains("r-ab0"),
        "the A/B route outlived the rollout: {routes}"
    );
}

fn rand_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn a_killed_control_server_resumes_the_same_step() {
    // The server as its own process, killed with SIGKILL and started again on its state.
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let apps = Apps::start(&rt, &["stable", "canary"]);
    let server = Process::start(&dir.path().join("state.redb"));
    let ctl = |args: &[&str]| server.ctl(args);
    let mesh = write(
        dir.path(),
        "mesh.json",
        &colorteller(&apps, &[("stable", 100), ("canary", 0)]),
    );
    let (ok, out, err) = ctl(&["apply", "-f", &mesh, "--wait"]);
    assert!(ok, "{out}{err}");
    let (_envoy, egress) = server.envoy("demo", "gateway");
    eventually("stable answers", Duration::from_secs(30), || {
        let t = tally(egress, 5);
        (t.get("stable") == Some(&5), t)
    });
    let r = write(
        dir.path(),
        "rollout.json",
        &rollout(
            json!({"steps": [{"weight": 30, "duration": {"unit": "s", "value": 2}},
                                  {"weight": 60, "duration": {"unit": "s", "value": 600}}]}),
        ),
    );
    let (ok, out, err) = ctl(&["apply", "-f", &r]);
    assert!(ok, "{out}{err}");
    let before = eventually("step 2", Duration::from_secs(30), || {
        let s = server.get("/v1/rollouts/demo/r");
        (weight(&s) == 60, s)
    });
    let server = server.kill_and_restart();
    let after = server.get("/v1/rollouts/demo/r");
    assert_eq!(after["step"], before["step"], "{after}");
    assert_eq!(weight(&after), 60, "{after}");
    assert_eq!(after["stepStartedAtMillis"], before["stepStartedAtMillis"]);
    assert!(
        after["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "resumed"),
        "{after}"
    );
    // No weight jump: the Envoy, reconnected, keeps the 60% split.
    let t = eventually("the Envoy is back in sync", Duration::from_secs(30), || {
        let s = server.get("/v1/status");
        let synced = s["clients"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["node"] == "mesh/demo/virtualNode/gateway")
        });
        (synced, s)
    });
    drop(t);
    let t = tally(egress, 1000);
    let canary = t.get("canary").copied().unwrap_or(0);
    assert!((550..=650).contains(&canary), "{t:?}");
}
