//! The App Mesh API on the control server, driven by the AWS CLI and boto3 from the
//! project's `.venv` (`--endpoint-url`), with real Envoy 1.40 serving what they made: the
//! ColorTeller mesh created with `aws appmesh create-*`, a route changed with
//! `update-route` and then deleted, each change seen in traffic; App Mesh's errors for a
//! duplicate, a bad spec, a resource in use and an unsigned request.

mod common;

use common::*;
use maille_testkit::{agent, repo_root};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// The environment of an AWS client that talks to nothing but the control server, signing
/// with `secret` (the server's admin token).
fn aws_env<'a>(cmd: &'a mut Command, secret: &str) -> &'a mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "AKIDMAILLETEST")
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
}

/// The CA certificate the AWS clients verify the control server with.
fn ca_file(control: &Control) -> std::path::PathBuf {
    control.state.with_file_name("maille-ca.pem")
}

/// `aws appmesh <args> --endpoint-url <control>`: success, stdout as JSON (or Null), stderr.
fn aws(control: &Control, args: &[&str]) -> (bool, Value, String) {
    let mut cmd = Command::new(repo_root().join(".venv/bin/aws"));
    aws_env(&mut cmd, &control.admin_token())
        .env("AWS_CA_BUNDLE", ca_file(control))
        .arg("appmesh")
        .args(args)
        .args(["--endpoint-url", &control.url(), "--output", "json"]);
    let out = cmd.output().expect("run the AWS CLI from .venv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `aws appmesh <op> --cli-input-json <input>`, which must succeed; its answer.
fn aws_ok(control: &Control, op: &str, input: Value) -> Value {
    let (ok, out, err) = aws(control, &[op, "--cli-input-json", &input.to_string()]);
    assert!(ok, "aws appmesh {op} {input}: {err}");
    out
}

#[test]
fn the_aws_cli_and_boto3_manage_the_mesh_through_the_app_mesh_api() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let apps = Apps::start(&rt, &["white", "blue"]);

    let mesh = aws_ok(
        &control,
        "create-mesh",
        // The colours are bare apps with no Envoy of their own: no mesh mTLS.
        json!({"meshName": "demo", "spec": {"egressFilter": {"type": "DROP_ALL"}},
               "tags": [{"key": "maille:mtls", "value": "DISABLED"}]}),
    );
    assert_eq!(mesh["mesh"]["meshName"], "demo", "{mesh}");
    assert_eq!(mesh["mesh"]["status"]["status"], "ACTIVE", "{mesh}");
    assert!(
        mesh["mesh"]["metadata"]["arn"]
            .as_str()
            .is_some_and(|a| a.ends_with(":mesh/demo")),
        "{mesh}"
    );
    for (name, port) in &apps.ports {
        aws_ok(
            &control,
            "create-virtual-node",
            json!({"meshName": "demo", "virtualNodeName": name, "spec": {
                "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}}),
        );
    }
    aws_ok(
        &control,
        "create-virtual-router",
        json!({"meshName": "demo", "virtualRouterName": "colorteller", "spec": {
            "listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}]}}),
    );
    let route = |node: &str| {
        json!({"meshName": "demo", "virtualRouterName": "colorteller", "routeName": "color",
               "spec": {"httpRoute": {"match": {"prefix": "/"},
               "action": {"weightedTargets": [{"virtualNode": node, "weight": 1}]}}}})
    };
    aws_ok(&control, "create-route", route("white"));
    aws_ok(
        &control,
        "create-virtual-service",
        json!({"meshName": "demo", "virtualServiceName": "colorteller.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "colorteller"}}}}),
    );

    // Its backend exists first: Maille checks every reference. Its text access log, as App
    // Mesh's `logging.accessLog.file.format.text`.
    let log = dir.path().join("gateway-access.log");
    aws_ok(
        &control,
        "create-virtual-node",
        json!({"meshName": "demo", "virtualNodeName": "gateway", "spec": {
            "listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}],
            "backends": [{"virtualService": {"virtualServiceName": "colorteller.local"}}],
            "logging": {"accessLog": {"file": {"path": log.display().to_string(),
                "format": {"text": "text-log %REQ(:AUTHORITY)% %RESPONSE_CODE%\n"}}}}}}),
    );

    let (envoy, egress) = control.envoy("demo", "gateway");
    let a = agent();
    let ask = || ask_host(&a, egress, "colorteller.local");
    let tail = || {
        envoy
            .log()
            .lines()
            .rev()
            .take(5)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    eventually(
        "Envoy serves what the CLI made",
        Duration::from_secs(30),
        || {
            let got = ask();
            (got == "white", (got, tail()))
        },
    );

    eventually(
        "the text access log is written",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            (
                text.lines().any(|l| l == "text-log colorteller.local 200"),
                text,
            )
        },
    );

    // update-mesh keeps the mesh's Maille settings (given as tags at create), so the
    // traffic below still goes in plaintext to the bare apps.
    aws_ok(
        &control,
        "update-mesh",
        json!({"meshName": "demo", "spec": {"egressFilter": {"type": "DROP_ALL"}}}),
    );
    let meshes = control.get("/v1/resources?kind=mesh");
    assert_eq!(
        meshes["resources"][0]["mesh"]["maille"]["mtls"], "DISABLED",
        "{meshes}"
    );

    // update-route: the traffic moves.
    let updated = aws_ok(
        &control,
        "update-route",
        json!({"meshName": "demo", "virtualRouterName": "colorteller", "routeName": "color",
               "spec": route("blue")["spec"]}),
    );
    assert_eq!(
        updated["route"]["spec"]["httpRoute"]["action"]["weightedTargets"][0]["virtualNode"],
        "blue",
        "{updated}"
    );
    eventually(
        "update-route reaches Envoy",
        Duration::from_secs(30),
        || {
            let got = ask();
            (got == "blue", (got, tail()))
        },
    );
    let (ok, described, err) = aws(
        &control,
        &[
            "describe-route",
            "--mesh-name",
            "demo",
            "--virtual-router-name",
            "colorteller",
            "--route-name",
            "color",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(described["route"]["routeName"], "color");
    assert_eq!(described["route"]["virtualRouterName"], "colorteller");

    // App Mesh's errors.
    let (ok, _, err) = aws(&control, &["create-mesh", "--mesh-name", "demo"]);
    assert!(!ok && err.contains("ConflictException"), "{err}");
    let (ok, _, err) = aws(
        &control,
        &[
            "create-virtual-node",
            "--cli-input-json",
            &json!({"meshName": "demo",
            "virtualNodeName": "bad", "spec": {"listeners": [{"portMapping":
            {"port": 70000, "protocol": "http"}}]}})
            .to_string(),
        ],
    );
    assert!(
        !ok && err.contains("BadRequestException")
            && err.contains("spec.listeners[0].portMapping.port: must be 1..=65535, got 70000"),
        "{err}"
    );
    let (ok, _, err) = aws(
        &control,
        &[
            "delete-virtual-node",
            "--mesh-name",
            "demo",
            "--virtual-node-name",
            "blue",
        ],
    );
    assert!(!ok && err.contains("ResourceInUseException"), "{err}");
    let (ok, _, err) = aws(
        &control,
        &[
            "describe-virtual-node",
            "--mesh-name",
            "demo",
            "--virtual-node-name",
            "nope",
        ],
    );
    assert!(!ok && err.contains("NotFoundException"), "{err}");
    let r = control
        .agent()
        .get(&format!("{}/v20190125/meshes", control.url()))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(
        r.headers()
            .get("x-amzn-ErrorType")
            .and_then(|v| v.to_str().ok()),
        Some("ForbiddenException")
    );
    // Signed with a wrong secret: refused, nothing changed. Signed with the read-only
    // token: describe and list, no change.
    let with_secret = |secret: &str, args: &[&str]| -> (bool, String) {
        let mut cmd = Command::new(repo_root().join(".venv/bin/aws"));
        aws_env(&mut cmd, secret)
            .env("AWS_CA_BUNDLE", ca_file(&control))
            .arg("appmesh")
            .args(args)
            .args(["--endpoint-url", &control.url()]);
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = with_secret("wrong", &["delete-mesh", "--mesh-name", "demo"]);
    assert!(!ok && err.contains("signature does not match"), "{err}");
    let read = std::fs::read_to_string(dir.path().join("maille-read.token")).unwrap();
    let (ok, err) = with_secret(read.trim(), &["list-meshes"]);
    assert!(ok, "{err}");
    let (ok, err) = with_secret(read.trim(), &["delete-mesh", "--mesh-name", "demo"]);
    assert!(!ok && err.contains("read-only"), "{err}");
    assert!(aws(&control, &["describe-mesh", "--mesh-name", "demo"]).0);

    // boto3: a paginator over pages of one, and a describe.
    let script = r#"
import boto3, json, sys
c = boto3.client("appmesh", endpoint_url=sys.argv[1])
names = []
pages = 0
for page in c.get_paginator("list_virtual_nodes").paginate(meshName="demo", PaginationConfig={"PageSize": 1}):
    pages += 1
    names += [n["virtualNodeName"] for n in page["virtualNodes"]]
mesh = c.describe_mesh(meshName="demo")["mesh"]
print(json.dumps({"names": names, "pages": pages, "egress": mesh["spec"]["egressFilter"]["type"],
                  "meshes": [m["meshName"] for m in c.list_meshes()["meshes"]]}))
"#;
    let mut py = Command::new(repo_root().join(".venv/bin/python"));
    let out = aws_env(&mut py, &control.admin_token())
        .env("AWS_CA_BUNDLE", ca_file(&control))
        .args(["-c", script, &control.url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got,
        json!({"names": ["blue", "gateway", "white"], "pages": 3, "egress": "DROP_ALL",
               "meshes": ["demo"]})
    );

    // delete-route: the service has no route left, and Envoy says so.
    let (ok, deleted, err) = aws(
        &control,
        &[
            "delete-route",
            "--mesh-name",
            "demo",
            "--virtual-router-name",
            "colorteller",
            "--route-name",
            "color",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(deleted["route"]["status"]["status"], "DELETED");
    eventually(
        "delete-route reaches Envoy",
        Duration::from_secs(30),
        || {
            let got = ask();
            (got == "HTTP 404", (got, tail()))
        },
    );
}
