//! Encryption in transit and TCP routes, in real Envoy: a gateway Envoy calls white through
//! white's own Envoy over mutual TLS, as App Mesh's listener TLS and client policies say;
//! and a TCP virtual service gets its own egress listener.

mod common;

use common::*;
use maille_testkit::free_port;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate signed by it for `name` (with DNS SAN `name`).
fn certs(dir: &Path, names: &[&str]) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=maille-test-ca",
        ],
    );
    for n in names {
        std::fs::write(
            dir.join(format!("{n}.ext")),
            format!("subjectAltName=DNS:{n}\n"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{n}.key"),
                "-out",
                &format!("{n}.csr"),
                "-subj",
                &format!("/CN={n}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{n}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{n}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{n}.ext"),
            ],
        );
    }
}

#[test]
fn gateway_reaches_white_over_mutual_tls_and_plaintext_is_refused() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    certs(&pki, &["white.demo.local", "gateway.demo.local"]);
    let f = |n: &str| pki.join(n).display().to_string();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let apps = Apps::start(&rt, &["white"]);
    let white_ingress = free_port();

    let mesh = |client_cert: bool| {
        let mut tls = json!({"validation": {"trust": {"file": {"certificateChain": f("ca.crt")}},
                                            "subjectAlternativeNames": {"match": {"exact": ["white.demo.local"]}}}});
        if client_cert {
            tls["certificate"] = json!({"file": {"certificateChain": f("gateway.demo.local.crt"), "privateKey": f("gateway.demo.local.key")}});
        }
        json!([
            {"meshName": "demo"},
            {"meshName": "demo", "virtualNodeName": "gateway", "spec": {
                "listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}],
                "backends": [{"virtualService": {"virtualServiceName": "colorteller.local",
                                                 "clientPolicy": {"tls": tls}}}]}},
            // White's app listens on its port; its Envoy terminates mutual TLS on its own
            // ingress port, which is where white is found.
            {"meshName": "demo", "virtualNodeName": "white", "spec": {
                "listeners": [{"portMapping": {"port": apps.ports["white"], "protocol": "http"},
                    "tls": {"mode": "STRICT",
                            "certificate": {"file": {"certificateChain": f("white.demo.local.crt"), "privateKey": f("white.demo.local.key")}},
                            "validation": {"trust": {"file": {"certificateChain": f("ca.crt")}}}}}],
                "serviceDiscovery": {"endpoints": [{"address": "127.0.0.1", "port": white_ingress}]}}},
            {"meshName": "demo", "virtualServiceName": "colorteller.local", "spec": {"provider": {"virtualNode": {"virtualNodeName": "white"}}}}
        ])
    };
    let spec = dir.path().join("mesh.json");
    std::fs::write(&spec, mesh(true).to_string()).unwrap();
    let (ok, out, err) = control.ctl(&["apply", "-f", spec.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let (white_envoy, _) = control.envoy_with_ingress("demo", "white", white_ingress);
    let (_gateway, egress) = control.envoy("demo", "gateway");
    eventually(
        "gateway reaches white over mTLS",
        Duration::from_secs(30),
        || {
            let t = tally(egress, 5);
            (t.get("white") == Some(&5), t)
        },
    );
    let handshakes: u64 = white_envoy
        .stats("ssl.handshake")
        .iter()
        .filter(|(k, _)| k.starts_with("listener."))
        .map(|(_, v)| v)
        .sum();
    assert!(
        handshakes >= 1,
        "white's Envoy terminated TLS: {:?}",
        white_envoy.stats("ssl")
    );

    // Without a client certificate, white's Envoy refuses the connection: no request reaches
    // the app.
    let hits = apps.hits["white"].load(std::sync::atomic::Ordering::Relaxed);
    std::fs::write(&spec, mesh(false).to_string()).unwrap();
    let (ok, out, err) = control.ctl(&["apply", "-f", spec.to_str().unwrap(), "--wait"]);
    assert!(ok, "{out}{err}");
    let t = eventually(
        "white refuses clients without a certificate",
        Duration::from_secs(30),
        || {
            let t = tally(egress, 5);
            (!t.contains_key("white"), t)
        },
    );
    assert!(t.keys().all(|k| k.starts_with("HTTP 5")), "{t:?}");
    assert_eq!(
        apps.hits["white"].load(std::sync::atomic::Ordering::Relaxed),
        hits
    );
}

#[test]
fn a_tcp_virtual_service_gets_its_own_egress_listener() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let apps = Apps::start(&rt, &["black"]);
    let tcp_port = free_port();
    let spec = json!([
        // Black is a bare TCP app with no Envoy of its own: no mesh mTLS.
        {"meshName": "demo", "maille": {"mtls": "DISABLED"}},
        {"meshName": "demo", "virtualNodeName": "gateway", "spec": {
            "backends": [{"virtualService": {"virtualServiceName": "black-tcp.local"}}]}},
        {"meshName": "demo", "virtualNodeName": "black", "spec": {
            "listeners": [{"portMapping": {"port": apps.ports["black"], "protocol": "tcp"}}],
            "serviceDiscovery": {"endpoints": [{"address": "127.0.0.1"}]}}},
        {"meshName": "demo", "virtualRouterName": "tcp-router", "spec": {
            "listeners": [{"portMapping": {"port": tcp_port, "protocol": "tcp"}}]}},
        {"meshName": "demo", "virtualRouterName": "tcp-router", "routeName": "all", "spec": {
            "tcpRoute": {"action": {"weightedTargets": [{"virtualNode": "black", "weight": 1}]},
                         "timeout": {"idle": {"unit": "s", "value": 60}}}}},
        {"meshName": "demo", "virtualServiceName": "black-tcp.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "tcp-router"}}}}
    ]);
    let f = dir.path().join("mesh.json");
    std::fs::write(&f, spec.to_string()).unwrap();
    let (ok, out, err) = control.ctl(&["apply", "-f", f.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let (envoy, _) = control.envoy("demo", "gateway");
    let body = eventually(
        "the TCP listener forwards to black",
        Duration::from_secs(30),
        || {
            let r = maille_testkit::agent()
                .get(&format!("http://127.0.0.1:{tcp_port}/"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok());
            (r.as_deref() == Some("black"), r)
        },
    );
    assert_eq!(body.as_deref(), Some("black"));
    let listeners = envoy.admin_get("/listeners").unwrap();
    assert!(
        listeners.contains("egress-tcp/black-tcp.local"),
        "{listeners}"
    );
}
