//! `maillectl` against a running control server (no Envoy): apply, diff, get, delete,
//! refusals that change nothing, bootstrap.

mod common;

use common::*;

#[test]
fn maillectl_apply_diff_get_delete_and_refusals() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let example = maille_testkit::repo_root().join("deploy/examples/colorteller");
    let cfn = example.join("appmesh-cloudformation.yaml");
    let cfn = cfn.to_str().unwrap();

    // `import` shows what the template becomes, as API JSON, without a server.
    let (ok, out, err) = control.ctl(&["import", "-f", cfn]);
    assert!(ok, "{err}");
    let docs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(docs.as_array().unwrap().len(), 11);
    assert!(
        docs.as_array()
            .unwrap()
            .iter()
            .any(|d| d["virtualNode"]["virtualNodeName"] == "colorteller-white"),
        "{out}"
    );
    assert!(err.contains("PrivateDnsNamespace"), "{err}");
    // The files may also be given as they are, as with kubectl's and the AWS CLI's habits.
    let (ok, bare, err) = control.ctl(&["import", cfn]);
    assert!(ok, "{err}");
    assert_eq!(bare, out, "`import FILE` is `import -f FILE`");
    let (ok, _, err) = control.ctl(&["import"]);
    assert!(!ok && err.contains("--file"), "no file named: {err}");

    // Dry run changes nothing.
    let (ok, out, _) = control.ctl(&["apply", "-f", cfn, "--dry-run"]);
    assert!(ok);
    assert!(out.contains("mesh/colorapp would be created"), "{out}");
    assert_eq!(
        control.get("/v1/resources")["resources"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Apply the CloudFormation template as it is.
    let (ok, out, err) = control.ctl(&["apply", "-f", cfn]);
    assert!(ok, "{err}");
    assert_eq!(out.matches(" created").count(), 11, "{out}");
    assert!(
        err.contains("PrivateDnsNamespace is not an App Mesh resource; skipped"),
        "{err}"
    );

    // The same mesh from Terraform is unchanged: diff says so.
    let tf = example.join("appmesh-terraform.tf");
    let (ok, out, _) = control.ctl(&["diff", "-f", tf.to_str().unwrap()]);
    assert!(ok);
    assert_eq!(out.matches(" unchanged").count(), 11, "{out}");
    // With another domain it would change the nodes' hostnames and the services.
    let (ok, out, _) = control.ctl(&[
        "diff",
        "-f",
        tf.to_str().unwrap(),
        "-p",
        "services_domain=prod.internal",
    ]);
    assert!(ok);
    assert!(
        out.contains("virtualNode/colorapp/colorteller-white would be updated"),
        "{out}"
    );
    assert!(
        out.contains("virtualService/colorapp/colorteller.prod.internal would be created"),
        "{out}"
    );

    let (ok, out, _) = control.ctl(&["get", "route", "--mesh", "colorapp"]);
    assert!(ok);
    assert!(
        out.contains("colorteller-vr/colorteller-canary")
            && out.contains("colorteller-vr/colorteller-route"),
        "{out}"
    );

    // Deleting a node a route still sends traffic to is refused, with the reference named,
    // and nothing is deleted.
    let (ok, _, err) = control.ctl(&[
        "delete",
        "virtual-node",
        "colorteller-blue",
        "--mesh",
        "colorapp",
    ]);
    assert!(!ok);
    assert!(
        err.contains("route/colorapp/colorteller-vr/colorteller-canary: spec.httpRoute.action.weightedTargets[0].virtualNode: no virtual node named \"colorteller-blue\""),
        "{err}"
    );
    assert_eq!(
        control.get("/v1/resources?kind=virtual-node")["resources"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // Delete the route first, then the node.
    let (ok, _, err) = control.ctl(&[
        "delete",
        "route",
        "colorteller-vr/colorteller-canary",
        "--mesh",
        "colorapp",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = control.ctl(&[
        "delete",
        "virtual-node",
        "colorteller-blue",
        "--mesh",
        "colorapp",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("virtualNode/colorapp/colorteller-blue deleted"),
        "{out}"
    );

    // An invalid spec is refused as a whole with field paths; the state is untouched.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"meshName": "colorapp", "virtualRouterName": "colorteller-vr", "routeName": "colorteller-route",
            "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [{"virtualNode": "colorteller-white", "weight": 500}]}}}}]"#,
    )
    .unwrap();
    let before = control.get("/v1/resources");
    let (ok, _, err) = control.ctl(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("spec.httpRoute.action.weightedTargets[0].weight: must be 0..=100, got 500"),
        "{err}"
    );
    assert_eq!(control.get("/v1/resources"), before);

    // A file that is not an App Mesh definition names itself and the problem.
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, r#"{"hello": "world"}"#).unwrap();
    let (ok, _, err) = control.ctl(&["apply", "-f", junk.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("junk.json") && err.contains("not an App Mesh resource"),
        "{err}"
    );

    // A bootstrap for a node, and a clear refusal of a bad node id.
    let (ok, out, _) = control.ctl(&["bootstrap", "--node", "colorapp/colorgateway"]);
    assert!(ok);
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(b["node"]["id"], "mesh/colorapp/virtualNode/colorgateway");
    let xds = b["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "maille_xds")
        .unwrap();
    assert_eq!(
        xds.pointer("/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/port_value"),
        Some(&serde_json::json!(control.xds_port)),
        "{out}"
    );
    let (ok, _, err) = control.ctl(&["bootstrap", "--node", "gateway"]);
    assert!(!ok && err.contains("--node must be"), "{err}");
    // Values that would write configuration of their own are refused, with the parameter.
    let (ok, _, err) = control.ctl(&["bootstrap", "--node", "mesh/colorapp/virtualNode/x\nadmin:"]);
    assert!(!ok && err.contains("node: "), "{err}");
    let (ok, _, err) = control.ctl(&[
        "bootstrap",
        "--node",
        "colorapp/colorgateway",
        "--listen-address",
        "0.0.0.0\nadmin: {}",
    ]);
    assert!(
        !ok && err.contains("listenAddress: must be an IP address"),
        "{err}"
    );
}

#[test]
fn the_admin_api_takes_only_the_token_each_call_needs() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let token = |name: &str| {
        std::fs::read_to_string(dir.path().join(format!("maille-{name}.token")))
            .unwrap()
            .trim()
            .to_owned()
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("maille-admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is its owner's only");
    }
    let a = control.agent();
    let call = |method: &str, path: &str, token: Option<&str>| -> u16 {
        let url = format!("{}{path}", control.url());
        let with = |r: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match token {
            Some(t) => r.header("authorization", format!("Bearer {t}")),
            None => r,
        };
        let body = r#"{"resources": [{"mesh": {"meshName": "x", "spec": {}}}]}"#;
        let r = match method {
            "GET" => with(a.get(&url)).call(),
            _ => {
                let mut r = a
                    .post(&url)
                    .header(maille_api::paths::CLIENT_HEADER, "test")
                    .content_type("application/json");
                if let Some(t) = token {
                    r = r.header("authorization", format!("Bearer {t}"));
                }
                r.send(body)
            }
        };
        match r {
            Ok(r) => r.status().as_u16(),
            Err(ureq::Error::StatusCode(c)) => c,
            Err(e) => panic!("{e}"),
        }
    };
    let (admin, read, boot) = (token("admin"), token("read"), token("bootstrap"));
    let bootstrap = "/v1/bootstrap?node=mesh/x/virtualNode/a";
    // Anonymous: only the open endpoints.
    assert_eq!(call("GET", "/healthz", None), 200);
    assert_eq!(call("GET", "/v1/status", None), 401);
    assert_eq!(call("POST", "/v1/apply", None), 401);
    assert_eq!(call("GET", bootstrap, None), 401);
    assert_eq!(call("POST", "/v1/apply", Some("maille-admin.wrong")), 401);
    // Read-only: reads, no change, no bootstrap (it carries a node token).
    assert_eq!(call("GET", "/v1/status", Some(&read)), 200);
    assert_eq!(call("POST", "/v1/apply", Some(&read)), 403);
    assert_eq!(call("GET", bootstrap, Some(&read)), 403);
    // Bootstrap: bootstraps only.
    assert_eq!(call("GET", bootstrap, Some(&boot)), 200);
    assert_eq!(call("GET", "/v1/status", Some(&boot)), 403);
    assert_eq!(call("POST", "/v1/apply", Some(&boot)), 403);
    // Admin: everything.
    assert_eq!(call("POST", "/v1/apply", Some(&admin)), 200);
    assert_eq!(call("GET", bootstrap, Some(&admin)), 200);
    // A node's own token: that node's bootstrap only. `maillectl token` gives it (admin).
    assert_eq!(
        call(
            "GET",
            "/v1/node-token?node=mesh/x/virtualNode/a",
            Some(&read)
        ),
        403
    );
    assert_eq!(
        call(
            "GET",
            "/v1/node-token?node=mesh/x/virtualNode/a",
            Some(&boot)
        ),
        403
    );
    assert_eq!(call("GET", "/v1/node-token?node=a", Some(&admin)), 400);
    let (ok, out, err) = control.ctl(&["token", "--node", "x/a"]);
    assert!(ok, "{err}");
    let node = out.trim().to_owned();
    assert!(node.starts_with("maille-node.v1."), "{out}");
    assert_eq!(call("GET", bootstrap, Some(&node)), 200);
    assert_eq!(
        call(
            "GET",
            "/v1/bootstrap?node=mesh/x/virtualNode/b",
            Some(&node)
        ),
        403
    );
    assert_eq!(
        call(
            "GET",
            "/v1/bootstrap?node=mesh/x/virtualNode/a&x=1",
            Some(&node)
        ),
        403
    );
    assert_eq!(call("GET", "/v1/status", Some(&node)), 401);
    assert_eq!(call("POST", "/v1/apply", Some(&node)), 401);
    let (ok, _, err) = control.ctl(&["--token", &read, "token", "--node", "x/a"]);
    assert!(!ok && err.contains("admin token"), "{err}");
    // The bootstrap it fetched carries that same token, for ADS.
    let mut r = control
        .agent()
        .get(&format!("{}{bootstrap}", control.url()))
        .header("authorization", format!("Bearer {node}"))
        .call()
        .unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert!(text.contains(&format!("Bearer {node}")), "{text}");
    // Nothing refused changed anything: one apply, by the admin.
    assert_eq!(control.get("/v1/status")["version"], 1);
}

#[test]
fn a_change_without_the_client_header_is_refused_as_a_cross_site_request() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    // What another web page could make a browser send: a simple POST, no custom header.
    for path in ["/v1/apply", "/v1/delete", "/v1/rollouts/m/r/abort"] {
        let mut r = control
            .agent()
            .post(&format!("{}{path}", control.url()))
            .header("authorization", format!("Bearer {}", control.admin_token()))
            .content_type("text/plain")
            .send(r#"{"resources": [{"mesh": {"meshName": "x", "spec": {}}}]}"#)
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let body = r.body_mut().read_to_string().unwrap();
        assert!(body.contains("x-maille-client"), "{path}: {body}");
    }
    assert_eq!(
        control.get("/v1/resources")["resources"],
        serde_json::json!([])
    );
    // maillectl sends it.
    let (ok, _, err) = control.ctl(&["delete", "mesh", "nothing"]);
    assert!(!ok && err.contains("does not exist"), "{err}");
}

/// `maillectl` with nothing but `args` and `env`, run in `cwd` (no state beside it).
fn bare_ctl(cwd: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_maillectl"));
    for (k, _) in std::env::vars() {
        if k.starts_with("MAILLE_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .current_dir(cwd)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_admin_port_speaks_only_tls_that_maillectl_checks_with_the_servers_ca() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let port = control.http_port;
    let ca = dir.path().join("maille-ca.pem");
    let pem = std::fs::read_to_string(&ca).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let token = control.admin_token();

    // Plaintext gets no HTTP answer.
    let plain = maille_testkit::agent()
        .get(&format!("http://127.0.0.1:{port}/healthz"))
        .call();
    assert!(plain.is_err(), "plaintext answered: {plain:?}");
    // The certificate chains to the CA and names the addresses a client uses.
    for host in ["127.0.0.1", "localhost"] {
        let r = control
            .agent()
            .get(&format!("https://{host}:{port}/healthz"))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    // Another CA's client refuses the server.
    let stranger = tempfile::tempdir().unwrap();
    let other = maille_control::ca::Ca::load_or_create(
        &maille_control::store::MemoryStore::default(),
        maille_control::ca::DEFAULT_LIFETIME,
    )
    .unwrap();
    let other_pem = stranger.path().join("other.pem");
    std::fs::write(&other_pem, other.trust_bundle()).unwrap();
    let r = maille_testkit::agent_trusting(&other_pem)
        .get(&format!("https://127.0.0.1:{port}/healthz"))
        .call();
    assert!(r.is_err(), "a stranger's CA verified the server: {r:?}");

    let url = control.url();
    let cwd = tempfile::tempdir().unwrap();
    let with_token = [("MAILLE_TOKEN", token.as_str())];
    // Next to the state, as on the server's machine: no flag needed.
    let state = control.state.display().to_string();
    let (code, out) = bare_ctl(
        cwd.path(),
        &[("MAILLE_STATE", &state)],
        &["--server", &url, "status"],
    );
    assert_eq!(code, 0, "{out}");
    // Elsewhere: with --ca-cert (or MAILLE_CA_CERT).
    let ca_arg = ca.display().to_string();
    let (code, out) = bare_ctl(
        cwd.path(),
        &with_token,
        &["--server", &url, "--ca-cert", &ca_arg, "status"],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = bare_ctl(
        cwd.path(),
        &[("MAILLE_TOKEN", &token), ("MAILLE_CA_CERT", &ca_arg)],
        &["--server", &url, "status"],
    );
    assert_eq!(code, 0, "{out}");
    // Without the CA: the public roots do not know it, and the error says what to give.
    let (code, out) = bare_ctl(cwd.path(), &with_token, &["--server", &url, "status"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--ca-cert"), "{out}");
    // With another CA: refused alike.
    let other_arg = other_pem.display().to_string();
    let (code, out) = bare_ctl(
        cwd.path(),
        &with_token,
        &["--server", &url, "--ca-cert", &other_arg, "status"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("did not verify"), "{out}");
    // A CA file that is not there, or holds no certificate: named, before any call.
    let (code, out) = bare_ctl(
        cwd.path(),
        &with_token,
        &[
            "--server",
            &url,
            "--ca-cert",
            "/nonexistent/ca.pem",
            "status",
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("/nonexistent/ca.pem"), "{out}");
    let empty = cwd.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let (code, out) = bare_ctl(
        cwd.path(),
        &with_token,
        &[
            "--server",
            &url,
            "--ca-cert",
            &empty.display().to_string(),
            "status",
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no PEM certificate"), "{out}");
    // An http:// address: the error says to use https://.
    let (code, out) = bare_ctl(
        cwd.path(),
        &[("MAILLE_STATE", &state)],
        &["--server", &format!("http://127.0.0.1:{port}"), "status"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("use https://"), "{out}");
}
