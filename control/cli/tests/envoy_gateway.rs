//! A virtual gateway against real Envoy 1.40: its Envoy starts from `maillectl bootstrap`
//! for the gateway, listens on the gateway listener's port, and sends each request to the
//! target virtual service of the first gateway route that matches, rewritten as the route
//! says; the service's own router applies after. The upstreams echo what they received.

mod common;

use common::*;
use maille_testkit::{agent, free_port, Envoy};
use serde_json::{json, Value};
use std::time::Duration;

/// Apps that answer `<name> <path and query> <host>`.
fn echo_apps(rt: &tokio::runtime::Runtime, names: &[&str]) -> Vec<(String, u16)> {
    names
        .iter()
        .map(|name| {
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("bind app");
            let port = listener.local_addr().unwrap().port();
            let n = name.to_string();
            let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
                let n = n.clone();
                async move {
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    format!("{n} {} {host}", req.uri())
                }
            });
            rt.spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            (name.to_string(), port)
        })
        .collect()
}

fn gateway_route(name: &str, spec: Value) -> Value {
    json!({"meshName": "demo", "virtualGatewayName": "ingress", "gatewayRouteName": name,
           "spec": spec})
}

fn to(vs: &str) -> Value {
    json!({"virtualService": {"virtualServiceName": vs}})
}

#[test]
fn a_gateway_routes_by_its_gateway_routes_and_rewrites_as_they_say() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let apps = echo_apps(&rt, &["white", "blue"]);
    let gw_port = free_port();
    let log = dir.path().join("gateway-access.jsonl");
    let mut docs = vec![
        // The targets are bare echo servers with no Envoy of their own: no mesh mTLS
        // (envoy_mtls.rs has the gateway-to-node hop over mTLS).
        json!({"meshName": "demo", "spec": {"egressFilter": {"type": "DROP_ALL"}},
               "maille": {"mtls": "DISABLED"}}),
        json!({"meshName": "demo", "virtualServiceName": "white.local", "spec": {
            "provider": {"virtualNode": {"virtualNodeName": "white"}}}}),
        json!({"meshName": "demo", "virtualRouterName": "color", "spec": {
            "listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}]}}),
        json!({"meshName": "demo", "virtualRouterName": "color", "routeName": "all", "spec": {
            "httpRoute": {"match": {"prefix": "/"},
                "action": {"weightedTargets": [{"virtualNode": "blue", "weight": 1}]}}}}),
        json!({"meshName": "demo", "virtualServiceName": "color.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "color"}}}}),
        // `create-virtual-gateway` input, as the AWS CLI takes it.
        json!({"meshName": "demo", "virtualGatewayName": "ingress", "spec": {
            "listeners": [{"portMapping": {"port": gw_port, "protocol": "http"},
                "healthCheck": {"protocol": "http", "path": "/healthz", "healthyThreshold": 2,
                    "unhealthyThreshold": 2, "intervalMillis": 5000, "timeoutMillis": 2000},
                "connectionPool": {"http": {"maxConnections": 7, "maxPendingRequests": 3}}}],
            // App Mesh's JSON access log format.
            "logging": {"accessLog": {"file": {"path": log.display().to_string(), "format": {"json": [
                {"key": "path", "value": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"},
                {"key": "code", "value": "%RESPONSE_CODE%"}]}}}}}}),
        // The default: the matched prefix becomes `/`, Host the target's name.
        gateway_route(
            "white",
            json!({"httpRoute": {"match": {"prefix": "/white"},
            "action": {"target": to("white.local")}}}),
        ),
        gateway_route(
            "keep",
            json!({"httpRoute": {"match": {"prefix": "/keep/"},
            "action": {"target": to("white.local"),
                       "rewrite": {"prefix": {"defaultPrefix": "DISABLED"}}}}}),
        ),
        gateway_route(
            "value",
            json!({"httpRoute": {"match": {"prefix": "/v1/"},
            "action": {"target": to("white.local"),
                       "rewrite": {"prefix": {"value": "/api/"}}}}}),
        ),
        gateway_route(
            "path",
            json!({"httpRoute": {"match": {"path": {"exact": "/exact"}},
            "action": {"target": to("white.local"),
                       "rewrite": {"path": {"exact": "/replaced"}}}}}),
        ),
        // By host name, to a service behind a router.
        gateway_route(
            "by-host",
            json!({"httpRoute": {
            "match": {"prefix": "/", "hostname": {"suffix": ".blue.example.com"}},
            "action": {"target": to("color.local")}}}),
        ),
        // First by priority, though less specific than `white`.
        gateway_route(
            "canary-header",
            json!({"priority": 0, "httpRoute": {
            "match": {"prefix": "/", "headers": [{"name": "x-canary", "match": {"exact": "yes"}}]},
            "action": {"target": to("color.local")}}}),
        ),
    ];
    for (name, port) in &apps {
        docs.push(
            json!({"meshName": "demo", "virtualNodeName": name, "spec": {
            "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
            "serviceDiscovery": {"endpoints": [{"address": "127.0.0.1"}]}}}),
        );
    }
    let f = dir.path().join("mesh.json");
    std::fs::write(&f, serde_json::to_string_pretty(&docs).unwrap()).unwrap();
    let (ok, out, err) = control.ctl(&["apply", "-f", f.to_str().unwrap(), "--wait"]);
    assert!(ok, "{out}{err}");

    let admin = free_port();
    let egress = free_port();
    let (ok, yaml, err) = control.ctl(&[
        "bootstrap",
        "--node",
        "mesh/demo/virtualGateway/ingress",
        "--admin-port",
        &admin.to_string(),
        "--egress-port",
        &egress.to_string(),
        "--listen-address",
        "127.0.0.1",
    ]);
    assert!(ok, "maillectl bootstrap for a gateway: {err}");
    let envoy = Envoy::start(&yaml, admin)
        .unwrap_or_else(|e| panic!("Envoy exited ({}):\n{}", e.status, e.log));

    let a = agent();
    let ask = |path: &str, host: &str, header: Option<(&str, &str)>| -> String {
        let mut req = a
            .get(&format!("http://127.0.0.1:{gw_port}{path}"))
            .header("host", host);
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let mut r = req.call().expect("request through the gateway");
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().unwrap_or_default();
        if status == 200 {
            body
        } else {
            format!("HTTP {status}")
        }
    };
    eventually("the gateway serves", Duration::from_secs(30), || {
        let got = ask("/white/hello?x=1", "gw.example.com", None);
        (
            got == "white /hello?x=1 white.local",
            (
                got,
                envoy
                    .log()
                    .lines()
                    .rev()
                    .take(5)
                    .map(String::from)
                    .collect::<Vec<_>>(),
            ),
        )
    });
    let cases = [
        ("/white", "gw.example.com", None, "white / white.local"),
        (
            "/keep/a/b",
            "gw.example.com",
            None,
            "white /keep/a/b white.local",
        ),
        (
            "/v1/items?id=7",
            "gw.example.com",
            None,
            "white /api/items?id=7 white.local",
        ),
        (
            "/exact?q=1",
            "gw.example.com",
            None,
            "white /replaced?q=1 white.local",
        ),
        (
            "/anything",
            "shop.blue.example.com:8443",
            None,
            "blue /anything color.local",
        ),
        (
            "/white/x",
            "gw.example.com",
            Some(("x-canary", "yes")),
            "blue /white/x color.local",
        ),
    ];
    for (path, host, header, want) in cases {
        assert_eq!(
            ask(path, host, header),
            want,
            "{path} for {host} with {header:?}"
        );
    }
    // No gateway route takes it.
    assert_eq!(ask("/nowhere", "gw.example.com", None), "HTTP 404");
    // The load balancer's health check is answered by the gateway itself.
    assert_eq!(ask("/healthz", "10.0.0.1", None), "ok\n");
    // The connection pool limits what the gateway sends to its targets.
    let clusters = a
        .get(&format!("http://127.0.0.1:{admin}/clusters"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let white = apps.iter().find(|(n, _)| n == "white").unwrap().1;
    for limit in ["max_connections::7", "max_pending_requests::3"] {
        let line = format!("node/white/{white}::default_priority::{limit}");
        assert!(clusters.contains(&line), "{line} not in\n{clusters}");
    }

    // The gateway's access log: a JSON object per request, with the keys the spec names.
    eventually(
        "the JSON access log is written",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let code = |l: &Value| {
                l["code"]
                    .as_u64()
                    .or_else(|| l["code"].as_str()?.parse().ok())
            };
            let seen = lines
                .iter()
                .any(|l| l["path"] == "/v1/items?id=7" && code(l) == Some(200))
                && lines
                    .iter()
                    .any(|l| l["path"] == "/nowhere" && code(l) == Some(404));
            (seen, text)
        },
    );

    // A route deleted: its requests are no longer taken.
    let (ok, out, err) =
        control.ctl(&["delete", "gatewayRoute", "ingress/value", "--mesh", "demo"]);
    assert!(ok, "{out}{err}");
    eventually("the deleted route stops", Duration::from_secs(30), || {
        let got = ask("/v1/items", "gw.example.com", None);
        (got == "HTTP 404", got)
    });
}
