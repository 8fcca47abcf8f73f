//! How long a failing canary keeps traffic: from the moment it starts failing (its app
//! answers errors) to the moment traffic is fully back on the stable (100 answers in a row
//! from it), with real Envoy and real traffic, five times each:
//! - analysis-driven: the canary fails half its requests; the example's analysis (interval
//!   10 s, failure limit 1: two failed checks) rolls it back;
//! - breaker-driven: the canary fails every request; Maille's breaker on the gateway opens
//!   and its signal rolls the rollout back.
//!
//! `cargo bench -p maillectl --bench rollback` (part of `make bench-control`); `RUNS=5`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn write(dir: &std::path::Path, name: &str, v: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

fn once(breaker: bool) -> Duration {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let apps = Apps::start(&rt, &["stable", "canary"]);
    let mut mesh = colorteller(&apps, &[("stable", 100), ("canary", 0)]);
    if breaker {
        mesh.as_array_mut().unwrap().push(
            json!({"filter": {"meshName": "demo", "filterName": "breaker", "spec": {
            "module": "breaker", "virtualNodes": ["gateway"],
            "config": {"windowMillis": 10000, "minRequests": 10, "failureRatio": 0.5,
                       "consecutiveFailures": 5, "openMillis": 10000,
                       "signal": {"cluster": "maille_control", "path": "/v1/signals/breaker"}}}}}),
        );
    }
    let (ok, out, err) =
        control.ctl(&["apply", "-f", &write(dir.path(), "m.json", &mesh), "--wait"]);
    assert!(ok, "{out}{err}");
    let (_envoy, egress) = control.envoy("demo", "gateway");
    let rollout = json!([{"rollout": {"meshName": "demo", "rolloutName": "r", "spec": {
        "virtualRouterName": "colorteller", "routeName": "color", "stable": "stable", "canary": "canary",
        "stepWeight": 20, "stepDuration": {"unit": "s", "value": 600},
        "analysis": {"interval": {"unit": "s", "value": 10}, "minRequests": 10, "failureLimit": 1,
                     "successRate": {"min": 0.95}}}}}]);
    let (ok, out, err) = control.ctl(&["apply", "-f", &write(dir.path(), "r.json", &rollout)]);
    assert!(ok, "{out}{err}");
    eventually("step 1", Duration::from_secs(30), || {
        let s = control.get("/v1/rollouts/demo/r");
        (s["canaryWeight"] == 20, s)
    });
    // A healthy first interval, then the failure starts.
    let on = Arc::new(AtomicBool::new(true));
    let a = maille_testkit::agent();
    let ask = |a: &ureq::Agent| -> bool {
        a.get(&format!("http://127.0.0.1:{egress}/"))
            .header("host", "colorteller.local")
            .call()
            .ok()
            .and_then(|mut r| {
                let ok = r.status() == 200;
                r.body_mut()
                    .read_to_string()
                    .ok()
                    .map(|b| ok && b == "stable")
            })
            .unwrap_or(false)
    };
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        ask(&a);
        std::thread::sleep(Duration::from_millis(10));
    }
    if breaker {
        apps.failing["canary"].store(true, Ordering::Relaxed);
    } else {
        apps.error_every["canary"].store(2, Ordering::Relaxed);
    }
    let onset = Instant::now();
    let mut in_a_row = 0;
    let mut last_other = onset;
    while in_a_row < 100 {
        assert!(
            onset.elapsed() < Duration::from_secs(120),
            "never back on stable"
        );
        if ask(&a) {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            last_other = Instant::now();
        }
        if in_a_row == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    on.store(false, Ordering::Relaxed);
    let st = control.get("/v1/rollouts/demo/r");
    assert_eq!(st["phase"], "RolledBack", "{st}");
    last_other.duration_since(onset)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!("| rollback | runs (s) | median |");
    println!("|---|---|---|");
    for (name, breaker) in [
        ("analysis (interval 10 s, failure limit 1)", false),
        ("breaker", true),
    ] {
        let times: Vec<Duration> = (0..runs).map(|_| once(breaker)).collect();
        let list: Vec<String> = times
            .iter()
            .map(|t| format!("{:.3}", t.as_secs_f64()))
            .collect();
        println!(
            "| {name} | {} | {:.3} s |",
            list.join(", "),
            median(times).as_secs_f64()
        );
    }
}
