//! Rollouts for the CLI's and the console's tests: the demo mesh
//! (`deploy/examples/colorteller/local/colorapp.json`) in an in-process control server, and a
//! time-stepped rollout of its weighted route from white to blue, applied with `maillectl`.

#![allow(dead_code, unreachable_pub)]

use crate::common::Control;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The demo mesh's file.
pub fn colorapp_file() -> std::path::PathBuf {
    maille_testkit::repo_root().join("deploy/examples/colorteller/local/colorapp.json")
}

/// Writes the rollout `name` of `mesh` (white to blue on `colorteller-vr/colorteller-route`,
/// no analysis) with the spec fields of `spec` into `dir`, and applies it.
pub fn apply_rollout(control: &Control, dir: &Path, mesh: &str, name: &str, spec: Value) {
    let mut s = json!({
        "virtualRouterName": "colorteller-vr", "routeName": "colorteller-route",
        "stable": "colorteller-white", "canary": "colorteller-blue"
    });
    for (k, v) in spec.as_object().expect("spec fields") {
        s[k] = v.clone();
    }
    let doc = json!([{"rollout": {"meshName": mesh, "rolloutName": name, "spec": s}}]);
    let file = dir.join(format!("rollout-{mesh}-{name}.json"));
    std::fs::write(&file, doc.to_string()).unwrap();
    let (ok, out, err) = control.ctl(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "apply of the rollout failed: {out}{err}");
}

/// Applies the demo mesh as `mesh` (its file with the mesh renamed).
pub fn apply_mesh(control: &Control, dir: &Path, mesh: &str) {
    let text = std::fs::read_to_string(colorapp_file()).unwrap();
    let text = text.replace(
        "\"meshName\": \"colorapp\"",
        &format!("\"meshName\": \"{mesh}\""),
    );
    let file = dir.join(format!("{mesh}.json"));
    std::fs::write(&file, text).unwrap();
    let (ok, out, err) = control.ctl(&["apply", "-f", file.to_str().unwrap()]);
    assert!(ok, "apply of the mesh failed: {out}{err}");
}

/// Steps of `ms` each at these weights.
pub fn steps(weights: &[u32], ms: u64) -> Value {
    json!({"steps": weights.iter().map(|w| json!({"weight": w, "duration": {"unit": "ms", "value": ms}})).collect::<Vec<_>>()})
}

/// `maillectl --server <control> args...`, waited for.
pub fn ctl(control: &Control, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_maillectl"))
        .arg("--server")
        .arg(control.url())
        .env("MAILLE_STATE", &control.state)
        .args(args)
        .output()
        .expect("run maillectl")
}

/// The rollout's status from the API.
pub fn status(control: &Control, mesh: &str, name: &str) -> Value {
    control.get(&format!("/v1/rollouts/{mesh}/{name}"))
}

/// Polls the rollout's status until `ok` holds; panics with the last status after `timeout`.
pub fn until(
    control: &Control,
    mesh: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(control, mesh, name);
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; status {s:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The weights of the route `colorteller-vr/colorteller-route` of `mesh`, by target node.
pub fn route_weights(control: &Control, mesh: &str) -> Vec<(String, u64)> {
    let v = control.get(&format!("/v1/resources?kind=route&mesh={mesh}"));
    let route = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["route"])
        .find(|r| r["routeName"] == "colorteller-route")
        .expect("the route")
        .clone();
    route["spec"]["httpRoute"]["action"]["weightedTargets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["virtualNode"].as_str().unwrap().to_owned(),
                t["weight"].as_u64().unwrap(),
            )
        })
        .collect()
}
