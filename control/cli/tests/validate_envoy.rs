//! `maillectl validate`: every example's every node checked by Envoy 1.40 itself, and
//! refusals named. Needs Envoy (`.venv`) and the built filters.

use std::path::PathBuf;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/examples/colorteller")
        .join(name)
}

/// `maillectl validate -f <file>` with the project's Envoy and filters.
fn maillectl_validate(file: impl AsRef<std::ffi::OsStr>) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_maillectl"))
        .args(["validate", "-f"])
        .arg(file)
        .arg("--envoy")
        .arg(maille_testkit::envoy_bin())
        .arg("--modules")
        .arg(maille_testkit::repo_root().join("target/filters"))
        .output()
        .unwrap()
}

#[test]
fn envoy_validates_every_node_of_every_example() {
    maille_testkit::filter_wasm("canary");
    for f in [
        "appmesh-api.json",
        "appmesh-cloudformation.yaml",
        "appmesh-terraform.tf",
        "appmesh-kubernetes.yaml",
    ] {
        let out = maillectl_validate(example(f));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{f}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.matches(": valid (").count(), 5, "{f}: {stdout}");
        // The gateway's split is Envoy's own weighted clusters: no filter.
        assert!(
            stdout.contains("colorgateway: valid (2 listeners, 5 clusters, 0 filters)"),
            "{stdout}"
        );
    }
    // And Envoy's refusal of a config our checks let through is reported.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example("appmesh-api.json"))
        .unwrap()
        .replace(
            "\"prefix\": \"/\"\n",
            "\"path\": {\"regex\": \"/(a+b+c+d+e+f+g+h+i+j+){12}\"}\n",
        );
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, text).unwrap();
    let out = maillectl_validate(&bad);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("colorgateway: REFUSED by Envoy") && all.contains("program size"),
        "{all}"
    );
}

#[test]
fn envoy_validates_http2_grpc_and_tcp_routes_and_tls() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    // Envoy reads the certificate files while validating: a self-signed one serves all.
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=m.local",
        ])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let pem = |n: &str| dir.path().join(n).display().to_string();
    let node = |name: &str, proto: &str, port: u32| {
        json!({"meshName": "m", "virtualNodeName": name, "spec": {
            "listeners": [{"portMapping": {"port": port, "protocol": proto},
                "connectionPool": if proto == "grpc" { json!({"grpc": {"maxRequests": 100}}) } else if proto == "http2" { json!({"http2": {"maxRequests": 50}}) } else { json!({"tcp": {"maxConnections": 10}}) },
                "timeout": if proto == "tcp" { json!({"tcp": {"idle": {"unit": "s", "value": 30}}}) } else { json!({proto: {"perRequest": {"unit": "s", "value": 5}}}) },
                "tls": {"mode": "PERMISSIVE", "certificate": {"file": {"certificateChain": pem("cert.pem"), "privateKey": pem("key.pem")}}}}],
            "serviceDiscovery": {"dns": {"hostname": format!("{name}.m.local"), "responseType": "ENDPOINTS"}}}})
    };
    let route = |router: &str, name: &str, spec: serde_json::Value| json!({"meshName": "m", "virtualRouterName": router, "routeName": name, "spec": spec});
    let docs = json!([
        {"meshName": "m"},
        {"meshName": "m", "virtualNodeName": "client", "spec": {
            "backends": [{"virtualService": {"virtualServiceName": "h2.m.local"}},
                         {"virtualService": {"virtualServiceName": "grpc.m.local"}},
                         {"virtualService": {"virtualServiceName": "db.m.local"}}],
            "backendDefaults": {"clientPolicy": {"tls": {"validation": {"trust": {"file": {"certificateChain": pem("cert.pem")}}}}}}}},
        // App Mesh's SPIRE and ACM sources, served by Maille's CA over SDS.
        {"meshName": "m", "virtualNodeName": "spire", "spec": {
            "listeners": [{"portMapping": {"port": 7000, "protocol": "http"},
                "tls": {"mode": "STRICT", "certificate": {"sds": {"secretName": "spiffe://example.org/spire"}},
                        "validation": {"trust": {"sds": {"secretName": "spiffe://example.org"}},
                            "subjectAlternativeNames": {"match": {"exact": ["spiffe://maille/mesh/m/virtualNode/client"]}}}}}],
            "backends": [{"virtualService": {"virtualServiceName": "db.m.local", "clientPolicy": {"tls": {
                "certificate": {"sds": {"secretName": "spiffe://example.org/spire"}},
                "validation": {"trust": {"acm": {"certificateAuthorityArns": ["arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/x"]}}}}}}}],
            "serviceDiscovery": {"dns": {"hostname": "spire.m.local"}}}},
        node("h2a", "http2", 8080), node("h2b", "http2", 8080), node("ga", "grpc", 9090), node("gb", "grpc", 9090), node("gc", "grpc", 9090), node("db", "tcp", 5432),
        {"meshName": "m", "virtualRouterName": "h2", "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http2"}}]}},
        {"meshName": "m", "virtualRouterName": "grpc", "spec": {"listeners": [{"portMapping": {"port": 9090, "protocol": "grpc"}}]}},
        // Sticky on a cookie over two targets: Envoy's hash policy.
        json!({"meshName": "m", "virtualRouterName": "h2", "routeName": "split",
            "maille": {"sticky": {"cookie": "session"}}, "spec": {"http2Route": {"match": {"prefix": "/", "method": "POST", "scheme": "https",
            "queryParameters": [{"name": "beta", "match": {"exact": "1"}}],
            "headers": [{"name": "x-tier", "invert": true, "match": {"range": {"start": 1, "end": 3}}}]},
            "action": {"weightedTargets": [{"virtualNode": "h2a", "weight": 3}, {"virtualNode": "h2b", "weight": 1}]},
            "retryPolicy": {"maxRetries": 3, "perRetryTimeout": {"unit": "ms", "value": 500}, "httpRetryEvents": ["stream-error", "client-error"]}}}}),
        route("grpc", "method", json!({"priority": 1, "grpcRoute": {"match": {"serviceName": "colors.Teller", "methodName": "Tell",
            "metadata": [{"name": "x-variant", "match": {"suffix": "-b"}}]},
            "action": {"weightedTargets": [{"virtualNode": "gb", "weight": 1}]},
            "retryPolicy": {"maxRetries": 1, "perRetryTimeout": {"unit": "s", "value": 1}, "grpcRetryEvents": ["unavailable", "deadline-exceeded"]}}})),
        // Sticky on a header over three targets: the canary filter.
        json!({"meshName": "m", "virtualRouterName": "grpc", "routeName": "service",
            "maille": {"sticky": {"header": "x-user-id"}}, "spec": {"priority": 2, "grpcRoute": {"match": {"serviceName": "colors.Teller"},
            "action": {"weightedTargets": [{"virtualNode": "ga", "weight": 8}, {"virtualNode": "gb", "weight": 1}, {"virtualNode": "gc", "weight": 1}]}}}}),
        {"meshName": "m", "virtualServiceName": "h2.m.local", "spec": {"provider": {"virtualRouter": {"virtualRouterName": "h2"}}}},
        {"meshName": "m", "virtualServiceName": "grpc.m.local", "spec": {"provider": {"virtualRouter": {"virtualRouterName": "grpc"}}}},
        {"meshName": "m", "virtualServiceName": "db.m.local", "spec": {"provider": {"virtualNode": {"virtualNodeName": "db"}}}},
        // A gateway: TLS towards clients, an HTTP/2 listener with rewrites and a gRPC one.
        {"meshName": "m", "virtualGatewayName": "edge", "spec": {
            "listeners": [
                {"portMapping": {"port": 8443, "protocol": "http2"},
                 "tls": {"mode": "STRICT", "certificate": {"file": {"certificateChain": pem("cert.pem"), "privateKey": pem("key.pem")}}}},
                {"portMapping": {"port": 9443, "protocol": "grpc"}}],
            "backendDefaults": {"clientPolicy": {"tls": {"validation": {"trust": {"file": {"certificateChain": pem("cert.pem")}}}}}},
            "logging": {"accessLog": {"file": {"path": "/dev/stdout", "format": {"text": "%REQ(:PATH)%\n"}}}}}},
        {"meshName": "m", "virtualGatewayName": "edge", "gatewayRouteName": "web", "spec": {"http2Route": {
            "match": {"prefix": "/h2", "port": 8443, "hostname": {"suffix": ".example.com"},
                      "queryParameters": [{"name": "v", "match": {"exact": "2"}}], "method": "GET"},
            "action": {"target": {"virtualService": {"virtualServiceName": "h2.m.local"}},
                       "rewrite": {"prefix": {"value": "/"}}}}}},
        {"meshName": "m", "virtualGatewayName": "edge", "gatewayRouteName": "exact", "spec": {"priority": 3, "httpRoute": {
            "match": {"path": {"regex": "^/v[0-9]+/ping$"}},
            "action": {"target": {"virtualService": {"virtualServiceName": "h2.m.local"}},
                       "rewrite": {"path": {"exact": "/ping"}}}}}},
        {"meshName": "m", "virtualGatewayName": "edge", "gatewayRouteName": "rpc", "spec": {"grpcRoute": {
            "match": {"serviceName": "colors.Teller", "port": 9443, "metadata": [{"name": "x-tier", "match": {"prefix": "gold"}}]},
            "action": {"target": {"virtualService": {"virtualServiceName": "grpc.m.local"}}}}}}
    ]);
    let f = dir.path().join("mesh.json");
    std::fs::write(&f, docs.to_string()).unwrap();
    let out = maillectl_validate(&f);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The client: egress + egress-tcp listeners; one canary filter (the 3-target sticky split).
    assert!(
        stdout.contains("mesh/m/virtualNode/client: valid (2 listeners, 6 clusters, 1 filters)"),
        "{stdout}"
    );
    // The gateway: its two listeners and its egress; the hop cluster and the targets'.
    assert!(
        stdout.contains("mesh/m/virtualGateway/edge: valid (3 listeners,"),
        "{stdout}"
    );
    // The SPIRE/ACM node: its listener and its client policy, over SDS from Maille's CA.
    assert!(
        stdout.contains("mesh/m/virtualNode/spire: valid (3 listeners,"),
        "{stdout}"
    );
    assert_eq!(stdout.matches(": valid (").count(), 9, "{stdout}");
}
