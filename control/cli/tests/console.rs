//! The web console in a real headless browser (Debian's chromium and chromium-driver, driven
//! by selenium from the project's .venv; `make setup` installs them): the control server in
//! process with the demo mesh and running rollouts, `console_check.py` against its page.
//! Checked against the server's own API: the page loads without console errors, shows the
//! routes with their weights, a running rollout advancing, an analysed rollout's checks on its
//! chart, breaker states from the signals, a refused action with the server's reason; a click
//! on abort rolls the rollout back; the page shows the server going away and coming back.
//!
//! The screenshots stay in the test's temporary folder, or in `MAILLE_CONSOLE_SHOTS` if set.

mod common;
mod rollout_fixture;

use common::*;
use maille_control::metrics::PREFIX;
use rollout_fixture::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A cluster name that would run script if the page wrote it as markup.
const HOSTILE: &str = r#"node/<img src=x onerror="document.title='pwned'">/1"#;

/// The browser check's bound, start to end.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(240);

/// One flush of Envoy's delta stats for `cluster`: requests, 5xx, and a latency histogram.
fn stats(cluster: &str, total: u64, errors: u64, buckets: &[u64]) -> Value {
    let attrs = json!([{"key": "envoy.cluster_name", "value": {"stringValue": cluster}}]);
    json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"name": format!("{PREFIX}.cluster.upstream_rq_total"), "sum": {"aggregationTemporality": 1, "isMonotonic": true,
            "dataPoints": [{"asInt": total.to_string(), "attributes": attrs}]}},
        {"name": format!("{PREFIX}.cluster.upstream_rq_xx"), "sum": {"aggregationTemporality": 1, "isMonotonic": true,
            "dataPoints": [{"asInt": errors.to_string(), "attributes": [
                {"key": "envoy.cluster_name", "value": {"stringValue": cluster}},
                {"key": "envoy.response_code_class", "value": {"stringValue": "5"}}]}]}},
        {"name": format!("{PREFIX}.cluster.upstream_rq_time"), "histogram": {"aggregationTemporality": 1,
            "dataPoints": [{"attributes": attrs, "count": buckets.iter().sum::<u64>().to_string(),
                "explicitBounds": [10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
                "bucketCounts": buckets.iter().map(|b| b.to_string()).collect::<Vec<_>>()}]}}
    ]}]}]})
}

#[test]
fn the_console_shows_the_mesh_and_its_rollouts_and_aborts_one() {
    let root = maille_testkit::repo_root();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists() && std::path::Path::new("/usr/bin/chromedriver").exists(),
        "the console test needs chromium, chromium-driver and selenium: run `make setup`"
    );
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.redb");
    let mut control = Control::start(&rt, &state, None);
    let ports = (control.xds_port, control.http_port);
    // Three meshes: a time-stepped rollout to abort, one with analysis whose checks are
    // drawn, one held at a pause step.
    for m in ["colorapp", "colorapp2", "colorapp3"] {
        apply_mesh(&control, dir.path(), m);
    }
    apply_rollout(
        &control,
        dir.path(),
        "colorapp",
        "blue",
        // Steps of 2.5 s, then an hour at 70%: it is still running when the page aborts it,
        // however slow the machine.
        {
            let steps: Vec<Value> = [10, 20, 30, 40, 50, 60]
                .iter()
                .map(|w| json!({"weight": w, "duration": {"unit": "ms", "value": 2500}}))
                .chain([json!({"weight": 70, "duration": {"unit": "s", "value": 3600}})])
                .collect();
            json!({ "steps": steps })
        },
    );
    apply_rollout(
        &control,
        dir.path(),
        "colorapp2",
        "green",
        json!({"stepWeight": 10, "stepDuration": {"unit": "s", "value": 4},
               "analysis": {"interval": {"unit": "ms", "value": 1000}, "minRequests": 10, "failureLimit": 5,
                            "successRate": {"min": 0.95}, "latencyP99": {"maxMillis": 250}}}),
    );
    apply_rollout(
        &control,
        dir.path(),
        "colorapp3",
        "gated",
        json!({"steps": [{"weight": 10, "pause": true}, {"weight": 100, "duration": {"unit": "s", "value": 60}}]}),
    );
    until(
        &control,
        "colorapp3",
        "gated",
        "the pause step",
        Duration::from_secs(15),
        |s| s["phase"] == "Paused",
    );

    // Traffic numbers as Envoy's stats sink sends them, once a second just after the second
    // turns (a check counts the second it falls in, so a batch later in that second would
    // be missed): the canary mostly healthy, with three bad seconds; its p99 a little above
    // the stable's, higher every other second.
    let metrics = control.running.as_ref().unwrap().metrics.clone();
    let feeding = Arc::new(AtomicBool::new(true));
    let feeder = {
        let on = feeding.clone();
        std::thread::spawn(move || {
            let mut second = 0u64;
            while on.load(Ordering::Relaxed) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                let wait = 1000 - now.subsec_millis().min(999) as u64 + 20;
                std::thread::sleep(Duration::from_millis(wait));
                let at = now.as_secs() + 1;
                let errors = if (3..6).contains(&second) {
                    40
                } else {
                    second % 2
                };
                let slow = second % 2;
                metrics.record(
                    &serde_json::from_value(stats(
                        "node/colorteller-blue/10013",
                        100,
                        errors,
                        &[10, 30, 40, 20 - 5 * slow, 5 * slow, 0, 0, 0],
                    ))
                    .unwrap(),
                    at,
                );
                metrics.record(
                    &serde_json::from_value(stats(
                        "node/colorteller-white/10011",
                        200,
                        0,
                        &[40, 90, 60, 10, 0, 0, 0, 0],
                    ))
                    .unwrap(),
                    at,
                );
                second += 1;
            }
        })
    };
    // A breaker opened on red, another half-opened on black (neither is a canary), and one on
    // white closed again, as Envoys signal them (with a node token); and a signal whose
    // cluster is markup, which the page must show as text. Red and black are kept directly:
    // while the rollouts run, no route has them, so no node has their clusters and the API
    // refuses their signals (checked below); white's comes through the API.
    let a = control.agent();
    let running = control.running.as_ref().unwrap();
    let gateway_token = running
        .node_tokens
        .signal_token("mesh/colorapp/virtualNode/colorgateway");
    let signal = |cluster: &str, from: &str, to: &str, gen: u64| {
        json!({"cluster": cluster, "from": from, "to": to, "generation": gen,
               "failureRatio": 0.6, "requests": 20, "failures": 12, "consecutiveFailures": 5,
               "atMillis": 1_795_753_011_355u64 + gen})
    };
    let post = |token: Option<&str>, body: &serde_json::Value| -> u16 {
        let mut r = a.post(&format!("{}/v1/signals/breaker", control.url()));
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        match r.send_json(body) {
            Ok(r) => r.status().as_u16(),
            Err(ureq::Error::StatusCode(c)) => c,
            Err(e) => panic!("{e}"),
        }
    };
    let white = signal("node/colorteller-white/10011", "open", "closed", 3);
    assert_eq!(post(None, &white), 401, "no node token");
    assert_eq!(
        post(Some("maille-node.v1.00.00"), &white),
        401,
        "a made-up token"
    );
    let red = signal("node/colorteller-red/10014", "closed", "open", 1);
    assert_eq!(
        post(Some(&gateway_token), &red),
        403,
        "no longer the gateway's cluster"
    );
    let hostile = signal(HOSTILE, "open", "closed", 1);
    assert_eq!(
        post(Some(&gateway_token), &hostile),
        403,
        "not the node's cluster"
    );
    assert_eq!(post(Some(&gateway_token), &white), 204);
    for body in [
        red,
        signal("node/colorteller-black/10012", "closed", "open", 1),
        signal("node/colorteller-black/10012", "open", "half_open", 2),
        hostile,
    ] {
        running.signals.record(
            "mesh/colorapp/virtualNode/colorgateway",
            serde_json::from_value(body).unwrap(),
            100,
        );
    }

    let shots = std::env::var_os("MAILLE_CONSOLE_SHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("shots"));
    let stderr_log = dir.path().join("console_check.stderr");
    let mut child = Command::new(&python)
        .arg(root.join("control/cli/tests/console_check.py"))
        .args([
            "--url",
            &format!("{}/#token={}", control.url(), control.admin_token()),
        ])
        .arg("--shots")
        .arg(&shots)
        .args([
            "--abort",
            "colorapp/blue",
            "--analysed",
            "colorapp2/green",
            "--gated",
            "colorapp3/gated",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_log).unwrap())
        .spawn()
        .expect("run console_check.py");
    let mut to_script = child.stdin.take().unwrap();
    let from_script = BufReader::new(child.stdout.take().unwrap());
    let child = Arc::new(Mutex::new(child));
    let finished = Arc::new(AtomicBool::new(false));
    // Whatever the browser does, the check ends: killed past its deadline.
    let watchdog = {
        let (child, finished) = (child.clone(), finished.clone());
        std::thread::spawn(move || {
            let end = Instant::now() + SCRIPT_DEADLINE;
            while !finished.load(Ordering::Relaxed) {
                if Instant::now() > end {
                    let _ = child.lock().unwrap().kill();
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut report: Option<Value> = None;
    let mut phase_via_api = Value::Null;
    let mut transcript = String::new();
    for line in from_script.lines() {
        let line = line.unwrap();
        transcript.push_str(&line);
        transcript.push('\n');
        match line.as_str() {
            "STOP" => {
                // What the page showed before, as the server says it.
                phase_via_api = status(&control, "colorapp", "blue");
                control.stop(&rt);
                writeln!(to_script, "stopped").unwrap();
            }
            "START" => {
                control = Control::start(&rt, &state, Some(ports));
                writeln!(to_script, "started").unwrap();
            }
            l => {
                if let Some(j) = l.strip_prefix("REPORT ") {
                    report = Some(serde_json::from_str(j).unwrap());
                }
            }
        }
    }
    let code = child.lock().unwrap().wait().unwrap();
    finished.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    feeding.store(false, Ordering::Relaxed);
    feeder.join().unwrap();
    let err = std::fs::read_to_string(&stderr_log).unwrap_or_default();
    let report = report.unwrap_or(Value::Null);
    if !code.success() {
        let green = control
            .running
            .as_ref()
            .map(|_| status(&control, "colorapp2", "green"));
        let checks: Vec<String> = green
            .iter()
            .flat_map(|g| g["checks"].as_array().cloned().unwrap_or_default())
            .map(|c| format!("{} {} {}", c["atMillis"], c["verdict"], c["canary"]))
            .collect();
        panic!(
            "console_check.py failed ({code}); screenshots in {}\n{err}\nreport: {report:#}\n{transcript}\nchecks of colorapp2/green:\n{}",
            shots.display(),
            checks.join("\n")
        );
    }
    let ctx = format!("report: {report:#}");

    // Loaded, and quiet: no console errors while the server was up.
    assert_eq!(report["title"], "Maille console", "{ctx}");
    assert_eq!(report["connection"], "connected", "{ctx}");
    assert_eq!(report["consoleErrors"], json!([]), "{ctx}");
    // After the actions, only the refused one's 409, which the browser logs itself.
    for e in report["consoleErrorsAfter"].as_array().unwrap() {
        let e = e.as_str().unwrap();
        assert!(
            e.contains("/v1/rollouts/colorapp3/gated/resume") && e.contains("409"),
            "{ctx}"
        );
    }

    // The running rollout advanced on the page.
    let w = report["weights"].as_array().unwrap();
    let (w0, w1) = (w[0].as_u64().unwrap(), w[1].as_u64().unwrap());
    assert!(w1 > w0 && w0 >= 10, "{ctx}");
    assert_eq!(report["weightText"], format!("{w1}%"), "{ctx}");
    assert_eq!(report["phaseBefore"], "Progressing", "{ctx}");
    assert!(
        report["stepText"].as_str().unwrap().ends_with(" of 7"),
        "{ctx}"
    );
    assert!(
        report["facts"].as_str().unwrap().contains("Next step"),
        "{ctx}"
    );

    // The analysed rollout's checks: one marker per check, lines for both sides and the two
    // thresholds; the bad second is a failed check.
    let chart = &report["chart"];
    assert!(chart["verdicts"].as_u64().unwrap() >= 3, "{ctx}");
    assert_eq!(chart["thresholds"], 2, "{ctx}");
    assert_eq!(
        (
            chart["canarySeries"].as_u64(),
            chart["stableSeries"].as_u64()
        ),
        (Some(2), Some(2)),
        "{ctx}"
    );
    assert!(chart["passes"].as_u64().unwrap() >= 1, "{ctx}");
    let green = status(&control, "colorapp2", "green");
    let fails_via_api = green["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .count();
    assert!(
        fails_via_api >= 1,
        "the bad second failed no check: {green:#}"
    );
    assert!(chart["fails"].as_u64().unwrap() >= 1, "{ctx}");

    // Breakers: the latest state per cluster.
    assert_eq!(
        report["breakers"],
        json!({"node/colorteller-red/10014": "open", "node/colorteller-black/10012": "half-open",
               "node/colorteller-white/10011": "closed", HOSTILE: "closed"}),
        "{ctx}"
    );
    assert_eq!(report["signalRows"], 5, "{ctx}");
    // The markup showed as its characters: no element made of it, no script run.
    assert_eq!(report["hostileText"], HOSTILE, "{ctx}");
    assert_eq!(report["images"], 0, "{ctx}");
    assert_eq!(report["titleAtEnd"], "Maille console", "{ctx}");

    // The refusal, in the server's words; the buttons say what they act on.
    assert_eq!(report["resumeLabel"], "Resume colorapp3/gated", "{ctx}");
    assert!(
        report["refusal"]
            .as_str()
            .unwrap()
            .contains("refused (HTTP 409): not paused by a user (a pause step waits for promote)"),
        "{ctx}"
    );
    assert_eq!(report["abortLabel"], "Abort colorapp/blue", "{ctx}");

    // Abort rolled it back: the page and the server agree, and the route is on the stable.
    assert_eq!(report["phaseAfter"], "RolledBack", "{ctx}");
    assert!(
        report["answer"]
            .as_str()
            .unwrap()
            .contains("Now RolledBack"),
        "{ctx}"
    );
    assert_eq!(
        report["buttonsAfter"],
        json!({"promote": false, "pause": false, "resume": false, "abort": false}),
        "{ctx}"
    );
    assert_eq!(phase_via_api["phase"], "RolledBack", "{phase_via_api:#}");
    assert_eq!(phase_via_api["reason"], "aborted by a user");
    let s = status(&control, "colorapp", "blue");
    assert_eq!(s["phase"], "RolledBack");
    assert_eq!(
        route_weights(&control, "colorapp"),
        [
            ("colorteller-white".into(), 100),
            ("colorteller-blue".into(), 0)
        ]
    );

    // The routes the page showed are the server's, with their shares of the weight.
    let shown = &report["routes"];
    for mesh in ["colorapp", "colorapp3"] {
        let v = control.get(&format!("/v1/resources?kind=route&mesh={mesh}"));
        for r in v["resources"].as_array().unwrap() {
            let r = &r["route"];
            let key = format!(
                "{}/{}/{}",
                r["meshName"].as_str().unwrap(),
                r["virtualRouterName"].as_str().unwrap(),
                r["routeName"].as_str().unwrap()
            );
            let targets = r["spec"]["httpRoute"]["action"]["weightedTargets"]
                .as_array()
                .unwrap();
            let total: u64 = targets.iter().map(|t| t["weight"].as_u64().unwrap()).sum();
            let want: Vec<Value> = targets
                .iter()
                .map(|t| {
                    let share = (t["weight"].as_u64().unwrap() as f64 * 1000.0 / total as f64)
                        .round()
                        / 10.0;
                    json!([t["virtualNode"], format!("{share}%")])
                })
                .collect();
            assert_eq!(shown[&key], Value::Array(want), "{key}: {ctx}");
        }
    }
    // The paused rollout's route at 10%: 90/10 on the page.
    assert_eq!(
        shown["colorapp3/colorteller-vr/colorteller-route"],
        json!([["colorteller-white", "90%"], ["colorteller-blue", "10%"]]),
        "{ctx}"
    );

    // The server away: said so, retried, and back.
    let banner = report["downBanner"].as_str().unwrap();
    assert!(
        banner.contains("The control server is unreachable since"),
        "{ctx}"
    );
    assert!(banner.contains("Retrying every second"), "{ctx}");
    assert_eq!(report["connectionDown"], "unreachable", "{ctx}");
    assert_eq!(report["connectionBack"], "connected", "{ctx}");
    assert_eq!(report["phaseAfterRestart"], "RolledBack", "{ctx}");
    for shot in [
        "console-running.png",
        "console-aborted.png",
        "console-down.png",
    ] {
        let png = std::fs::read(shots.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{shot}");
    }
    control.stop(&rt);
}
