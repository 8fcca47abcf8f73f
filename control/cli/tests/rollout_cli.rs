//! `maillectl rollout` against an in-process control server holding the demo mesh and
//! time-stepped rollouts (no analysis, no Envoy): the JSON status advancing, `--wait`'s exit
//! codes (success, an abort from a second maillectl, a timeout), `--watch` in a pipe and in a
//! terminal, pause / resume / promote / abort with the server's refusals, unknown names.

mod common;
mod rollout_fixture;

use common::*;
use rollout_fixture::*;
use serde_json::Value;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `status -o json`, parsed.
fn json_status(control: &Control, name: &str) -> Value {
    let out = ctl(control, &["rollout", "status", name, "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

#[test]
fn status_advances_and_wait_exits_0_on_success() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    apply_mesh(&control, dir.path(), "colorapp");
    apply_rollout(
        &control,
        dir.path(),
        "colorapp",
        "blue",
        steps(&[20, 50, 80], 2000),
    );

    // A live view in a pipe: one line per change, no screen control.
    let watch = Command::new(env!("CARGO_BIN_EXE_maillectl"))
        .env("MAILLE_STATE", &control.state)
        .args([
            "--server",
            &control.url(),
            "rollout",
            "status",
            "blue",
            "--watch",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // A pipeline reading JSON: one document per change.
    let json_wait = Command::new(env!("CARGO_BIN_EXE_maillectl"))
        .env("MAILLE_STATE", &control.state)
        .args([
            "--server",
            &control.url(),
            "rollout",
            "status",
            "colorapp/blue",
            "--wait",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // `status -o json`: the phase and the canary's weight move with the steps.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains(&50) {
        let s = json_status(&control, "colorapp/blue");
        assert_eq!(s["phase"], "Progressing", "{s:#}");
        let w = s["canaryWeight"].as_u64().unwrap();
        if seen.last() != Some(&w) {
            seen.push(w);
        }
        assert!(Instant::now() < deadline, "weights seen: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen: Vec<u64> = seen.into_iter().filter(|w| *w > 0).collect();
    assert_eq!(seen, [20, 50], "the canary's weight went 20 then 50");

    // The readable view says where it is and when it moves on; the list names it.
    let out = ctl(&control, &["rollout", "status", "colorapp/blue"]);
    let view = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        view.contains("rollout colorapp/blue   Progressing"),
        "{view}"
    );
    assert!(view.contains("plan 20% → [50%] → 80%"), "{view}");
    assert!(view.contains("colorteller-blue   50%"), "{view}");
    assert!(view.contains("colorteller-white  50%"), "{view}");
    assert!(view.contains("next step  in "), "{view}");
    assert!(
        view.contains("no analysis: steps advance on time"),
        "{view}"
    );
    assert!(view.contains("step 2 of 3: canary at 50%"), "{view}");
    let out = ctl(&control, &["rollout", "list"]);
    let list = text(&out.stdout);
    assert!(
        list.lines().any(|l| l.starts_with("colorapp/blue")
            && l.contains("Progressing")
            && l.contains("colorteller-vr/colorteller-route")),
        "{list}"
    );

    // `--wait` (NAME alone: one mesh has it) ends with the rollout, exit 0.
    let t = Instant::now();
    let out = ctl(&control, &["rollout", "status", "blue", "--wait"]);
    let log = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{log}{}", text(&out.stderr));
    assert!(
        t.elapsed() > Duration::from_millis(500),
        "returned before the end: {log}"
    );
    assert!(
        log.contains("step 3/3 canary colorteller-blue 80%"),
        "{log}"
    );
    assert!(
        log.lines()
            .last()
            .unwrap()
            .contains("colorapp/blue Succeeded")
            || log.contains("colorapp/blue Succeeded step 3/3 canary colorteller-blue 100%"),
        "{log}"
    );
    assert!(
        log.contains("succeeded    colorteller-blue serves"),
        "{log}"
    );
    assert_eq!(
        route_weights(&control, "colorapp"),
        [
            ("colorteller-white".into(), 0),
            ("colorteller-blue".into(), 100)
        ]
    );

    // The live view ended with it, printed each step once and no screen control.
    let out = watch.wait_with_output().unwrap();
    let log = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{log}{}", text(&out.stderr));
    assert!(!log.contains('\x1b'), "screen control in a pipe: {log:?}");
    for w in ["20%", "50%", "80%"] {
        let n = log
            .lines()
            .filter(|l| {
                l.contains("Progressing step") && l.contains(&format!("colorteller-blue {w},"))
            })
            .count();
        assert_eq!(n, 1, "one line for the step at {w}: {log}");
    }
    assert!(log.contains("colorapp/blue Succeeded"), "{log}");

    let out = json_wait.wait_with_output().unwrap();
    let log = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{log}{}", text(&out.stderr));
    let docs: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let mut weights: Vec<u64> = docs
        .iter()
        .map(|d| d["canaryWeight"].as_u64().unwrap())
        .collect();
    weights.dedup();
    // (0 until the first step is set, if it started that early)
    weights.retain(|w| *w > 0);
    assert_eq!(weights, [20, 50, 80, 100], "{log}");
    assert_eq!(docs.last().unwrap()["phase"], "Succeeded", "{log}");
}

#[test]
fn wait_exits_nonzero_after_an_abort_and_on_timeout() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    apply_mesh(&control, dir.path(), "colorapp");
    apply_rollout(
        &control,
        dir.path(),
        "colorapp",
        "blue",
        steps(&[30, 60], 3_600_000),
    );
    until(
        &control,
        "colorapp",
        "blue",
        "step 1",
        Duration::from_secs(15),
        |s| s["canaryWeight"] == 30,
    );

    // A timeout ends the wait with its own code; the rollout goes on.
    let t = Instant::now();
    let out = ctl(
        &control,
        &[
            "rollout",
            "status",
            "colorapp/blue",
            "--wait",
            "--timeout",
            "1",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(
        text(&out.stderr).contains("timed out after 1s"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(status(&control, "colorapp", "blue")["phase"], "Progressing");
    // --timeout means nothing without a wait: refused as a usage error.
    let out = ctl(
        &control,
        &["rollout", "status", "colorapp/blue", "--timeout", "1"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // A pipeline waits; a second maillectl aborts; the wait ends with RolledBack's code.
    let mut wait = Command::new(env!("CARGO_BIN_EXE_maillectl"))
        .env("MAILLE_STATE", &control.state)
        .args([
            "--server",
            &control.url(),
            "rollout",
            "status",
            "colorapp/blue",
            "--wait",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first line is out: it is waiting.
    let mut stdout = wait.stdout.take().unwrap();
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    let first = text(&first);
    assert!(
        first.contains("colorapp/blue Progressing step 1/2 canary colorteller-blue 30%"),
        "{first}"
    );
    assert!(
        wait.try_wait().unwrap().is_none(),
        "--wait returned while it runs"
    );

    let out = ctl(&control, &["rollout", "abort", "colorapp/blue"]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        said.contains("colorapp/blue RolledBack step 1/2 canary colorteller-blue 0%, stable colorteller-white 100%; aborted by a user"),
        "{said}"
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let code = wait.wait().unwrap().code();
    assert_eq!(code, Some(3), "{first}\n{rest}");
    assert!(rest.contains("rolled-back"), "{rest}");
    assert!(rest.contains("colorapp/blue RolledBack"), "{rest}");
    // The server agrees, and the route is back on the stable.
    assert_eq!(status(&control, "colorapp", "blue")["phase"], "RolledBack");
    assert_eq!(
        route_weights(&control, "colorapp"),
        [
            ("colorteller-white".into(), 100),
            ("colorteller-blue".into(), 0)
        ]
    );
    // Waiting on an ended rollout answers at once, with its code.
    let out = ctl(
        &control,
        &[
            "rollout",
            "status",
            "colorapp/blue",
            "--wait",
            "--timeout",
            "30",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn pause_resume_promote_and_refusals() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    apply_mesh(&control, dir.path(), "colorapp");
    apply_rollout(
        &control,
        dir.path(),
        "colorapp",
        "blue",
        serde_json::json!({"steps": [{"weight": 10, "pause": true},
                                     {"weight": 50, "duration": {"unit": "s", "value": 3600}}]}),
    );
    until(
        &control,
        "colorapp",
        "blue",
        "the pause step",
        Duration::from_secs(15),
        |s| s["phase"] == "Paused",
    );
    let run = |args: &[&str]| {
        let out = ctl(&control, args);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };

    let (code, out, _) = run(&["rollout", "status", "colorapp/blue"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("waits for  promotion"), "{out}");

    // At a pause step, resume is refused with the server's reason; nothing changes.
    let (code, out, err) = run(&["rollout", "resume", "colorapp/blue"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        err.contains(
            "cannot resume colorapp/blue: not paused by a user (a pause step waits for promote)"
        ),
        "{err}"
    );
    assert_eq!(status(&control, "colorapp", "blue")["phase"], "Paused");

    // Promote moves past it.
    let (code, out, err) = run(&["rollout", "promote", "blue", "--mesh", "colorapp"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("colorapp/blue Progressing step 2/2 canary colorteller-blue 50%, stable colorteller-white 50%"),
        "{out}"
    );
    assert_eq!(
        route_weights(&control, "colorapp"),
        [
            ("colorteller-white".into(), 50),
            ("colorteller-blue".into(), 50)
        ]
    );

    // Pause holds; a second pause is refused; resume goes on.
    let (code, out, _) = run(&["rollout", "pause", "colorapp/blue"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("colorapp/blue Paused step 2/2") && out.contains("waits for resume"),
        "{out}"
    );
    let (code, _, err) = run(&["rollout", "pause", "colorapp/blue"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot pause colorapp/blue: already paused"),
        "{err}"
    );
    let (code, out, _) = run(&["rollout", "resume", "colorapp/blue"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("colorapp/blue Progressing step 2/2"), "{out}");

    // Promote skips the hour-long step: the canary serves.
    let (code, out, _) = run(&["rollout", "promote", "colorapp/blue"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("colorapp/blue Succeeded step 2/2 canary colorteller-blue 100%"),
        "{out}"
    );
    assert_eq!(
        route_weights(&control, "colorapp"),
        [
            ("colorteller-white".into(), 0),
            ("colorteller-blue".into(), 100)
        ]
    );
    // An ended rollout refuses, saying why.
    let (code, _, err) = run(&["rollout", "abort", "colorapp/blue"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot abort colorapp/blue: ") && err.contains("has ended"),
        "{err}"
    );
    assert_eq!(status(&control, "colorapp", "blue")["phase"], "Succeeded");
}

#[test]
fn unknown_and_ambiguous_names_are_refused_clearly() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let run = |args: &[&str]| {
        let out = ctl(&control, args);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, out, _) = run(&["rollout", "list"]);
    assert_eq!((code, out.as_str()), (Some(0), "no rollouts\n"));
    let (code, _, err) = run(&["rollout", "status", "blue"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no rollout named \"blue\"; the server has no rollouts"),
        "{err}"
    );

    apply_mesh(&control, dir.path(), "colorapp");
    apply_mesh(&control, dir.path(), "colorapp2");
    let long = steps(&[30], 3_600_000);
    apply_rollout(&control, dir.path(), "colorapp", "blue", long.clone());
    apply_rollout(&control, dir.path(), "colorapp2", "blue", long);
    for m in ["colorapp", "colorapp2"] {
        until(
            &control,
            m,
            "blue",
            "started",
            Duration::from_secs(15),
            |s| s["canaryWeight"] == 30,
        );
    }

    // Unknown, in a mesh or anywhere: refused, naming what there is, changing nothing.
    for args in [
        &["rollout", "status", "colorapp/nope"][..],
        &["rollout", "abort", "colorapp/nope"],
        &["rollout", "status", "--wait", "colorapp/nope"],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(
            err.contains("no rollout \"nope\" in mesh \"colorapp\"")
                || err.contains("no rollout rollout/colorapp/nope"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("the server has: colorapp/blue, colorapp2/blue"),
            "{args:?}: {err}"
        );
    }
    let (code, _, err) = run(&["rollout", "pause", "nope"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no rollout named \"nope\"; the server has: colorapp/blue, colorapp2/blue"),
        "{err}"
    );
    let (code, _, err) = run(&["rollout", "status", "blue", "--mesh", "nomesh"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("in mesh \"nomesh\""), "{err}");
    // Not a name at all.
    let (code, _, err) = run(&["rollout", "status", "colorapp/blue/x"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("\"blue/x\" is not a rollout name"), "{err}");
    let (code, _, err) = run(&["rollout", "status", "colorapp/blue", "--mesh", "colorapp2"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("names another mesh than --mesh \"colorapp2\""),
        "{err}"
    );

    // One name in two meshes: say which.
    let (code, _, err) = run(&["rollout", "pause", "blue"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("rollouts named \"blue\" are in meshes colorapp, colorapp2: say which, as colorapp/blue or --mesh colorapp"),
        "{err}"
    );
    for m in ["colorapp", "colorapp2"] {
        assert_eq!(status(&control, m, "blue")["phase"], "Progressing");
    }
    let (code, out, _) = run(&["rollout", "pause", "blue", "--mesh", "colorapp2"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("colorapp2/blue Paused"), "{out}");
    assert_eq!(status(&control, "colorapp", "blue")["phase"], "Progressing");
}

#[test]
fn a_stopped_server_is_named() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let url = control.url();
    control.stop(&rt);
    let out = Command::new(env!("CARGO_BIN_EXE_maillectl"))
        .env("MAILLE_STATE", &control.state)
        .args(["--server", &url, "rollout", "abort", "colorapp/blue"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("cannot reach the control server at {url}")),
        "{err}"
    );
}

#[test]
fn watch_in_a_terminal_redraws_in_place() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    apply_mesh(&control, dir.path(), "colorapp");
    apply_rollout(
        &control,
        dir.path(),
        "colorapp",
        "blue",
        steps(&[25, 75], 2000),
    );
    // `script` (util-linux) gives the command a terminal and copies what it draws.
    let cmd = format!(
        "{} --server {} rollout status colorapp/blue --watch",
        env!("CARGO_BIN_EXE_maillectl"),
        control.url()
    );
    let out = Command::new("script")
        .env("MAILLE_STATE", &control.state)
        .args(["-qefc", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    let screen = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{screen}");
    let frames: Vec<&str> = screen.split("\x1b[H\x1b[2J").skip(1).collect();
    assert!(frames.len() >= 3, "{} frames: {screen}", frames.len());
    assert!(
        frames.iter().any(|f| f.contains("colorteller-blue   25%")),
        "{screen}"
    );
    assert!(
        frames.iter().any(|f| f.contains("colorteller-blue   75%")),
        "{screen}"
    );
    let last = frames.last().unwrap();
    assert!(last.contains("rollout colorapp/blue   Succeeded"), "{last}");
    assert!(frames[0].contains("Ctrl-C to stop"), "{}", frames[0]);
}
