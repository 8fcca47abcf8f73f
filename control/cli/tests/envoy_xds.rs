//! The control server against real Envoy 1.40: Envoy starts from a generated bootstrap only,
//! gets everything over ADS, routes as the spec says, follows `maillectl apply`, keeps its
//! last good config when it refuses a version, and survives the server's restart.

mod common;

use common::*;
use maille_testkit::repo_root;
use serde_json::Value;
use std::time::Duration;

fn write_spec(dir: &std::path::Path, name: &str, spec: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(spec).unwrap()).unwrap();
    p.display().to_string()
}

#[test]
fn envoy_routes_by_spec_follows_weights_and_keeps_last_good_on_nack() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let apps = Apps::start(&rt, &["white", "black"]);

    // 100/0: everything to white.
    let f = write_spec(
        dir.path(),
        "mesh.json",
        &colorteller(&apps, &[("white", 100), ("black", 0)]),
    );
    let (ok, out, err) = control.ctl(&["apply", "-f", &f]);
    assert!(ok, "apply failed: {err}");
    assert!(
        out.contains("route/demo/colorteller/color created"),
        "{out}"
    );

    let (envoy, egress) = control.envoy("demo", "gateway");
    let first = eventually(
        "Envoy routes colorteller.local",
        Duration::from_secs(30),
        || {
            let t = tally(egress, 20);
            (t.get("white") == Some(&20), t)
        },
    );
    assert_eq!(first.get("white"), Some(&20));
    let before_black = apps.hits["black"].load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(before_black, 0, "black must get nothing at weight 0");

    // 50/50 with `maillectl apply --wait`: the split shows in real traffic.
    let f = write_spec(
        dir.path(),
        "mesh.json",
        &colorteller(&apps, &[("white", 50), ("black", 50)]),
    );
    let (ok, out, err) = control.ctl(&["apply", "-f", &f, "--wait"]);
    assert!(ok, "apply --wait failed: {out}{err}");
    assert!(
        out.contains("route/demo/colorteller/color updated"),
        "{out}"
    );
    let ack_line = out
        .lines()
        .find(|l| l.contains("apply to last ACK"))
        .unwrap_or_else(|| panic!("no ACK time reported: {out}"));
    eprintln!("50/50: {ack_line}");
    // Envoy splits natively: every request after the ACK goes to a colour.
    let t = tally(egress, 400);
    let (w, b) = (
        t.get("white").copied().unwrap_or(0),
        t.get("black").copied().unwrap_or(0),
    );
    assert_eq!(w + b, 400, "every request answered by a colour: {t:?}");
    // 400 fair coin flips: outside 140..=260 has probability below 1e-9.
    assert!((140..=260).contains(&w), "50/50 split gave {t:?}");
    // Envoy made those choices itself (its per-cluster counters), with no filter.
    let stats = envoy.stats("upstream_rq_total");
    let counted = |c: &str| {
        stats
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("cluster.node/{c}/")))
            .map(|(_, v)| *v)
            .sum::<u64>()
    };
    assert_eq!(counted("black") as usize, b, "{stats:?}");
    assert!(counted("white") as usize >= w, "{stats:?}");

    // A version Envoy refuses (RE2 program too large for Envoy's limit) leaves the last good
    // routes serving, and `maillectl status` shows Envoy's error.
    let mut bad = colorteller(&apps, &[("white", 50), ("black", 50)]);
    for d in bad.as_array_mut().unwrap() {
        if d.get("routeName").is_some() {
            d["spec"]["httpRoute"]["match"] =
                serde_json::json!({"path": {"regex": "/(a+b+c+d+e+f+g+h+i+j+){12}"}});
        }
    }
    let f = write_spec(dir.path(), "bad.json", &bad);
    let (ok, out, err) = control.ctl(&["apply", "-f", &f, "--wait", "--timeout", "5"]);
    assert!(!ok, "apply --wait must fail when Envoy refuses: {out}");
    assert!(
        err.contains("RDS refused") && err.contains("RE2"),
        "refusal reported: {err}"
    );
    let (ok, status, _) = control.ctl(&["status"]);
    assert!(ok);
    assert!(
        status.contains("NACK of") && status.contains("program size"),
        "{status}"
    );
    let t = tally(egress, 40);
    assert_eq!(
        t.get("white").copied().unwrap_or(0) + t.get("black").copied().unwrap_or(0),
        40,
        "the last good routes keep serving after the NACK: {t:?}"
    );
    // A new Envoy of the same node is given what the node last accepted, not the refused
    // version: it routes at once.
    let (_second, egress2) = control.envoy("demo", "gateway");
    let t = eventually(
        "a reconnecting Envoy gets the last good routes",
        Duration::from_secs(30),
        || {
            let t = tally(egress2, 10);
            (
                t.get("white").copied().unwrap_or(0) + t.get("black").copied().unwrap_or(0) == 10,
                t,
            )
        },
    );
    assert!(t.keys().all(|k| k == "white" || k == "black"), "{t:?}");

    // A fixed version is acknowledged and clears the error.
    let f = write_spec(
        dir.path(),
        "mesh.json",
        &colorteller(&apps, &[("white", 0), ("black", 100)]),
    );
    let (ok, out, err) = control.ctl(&["apply", "-f", &f, "--wait"]);
    assert!(ok, "{out}{err}");
    let t = tally(egress, 20);
    assert_eq!(t.get("black"), Some(&20), "{t:?}");
    let (_, status, _) = control.ctl(&["status"]);
    assert!(!status.contains("NACK of"), "{status}");
    drop(envoy);
}

#[test]
fn envoy_keeps_serving_while_the_server_is_down_and_reconnects_to_restored_state() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.redb");
    let mut control = Control::start(&rt, &state, None);
    let ports = (control.xds_port, control.http_port);
    let apps = Apps::start(&rt, &["white", "black"]);
    let f = write_spec(
        dir.path(),
        "mesh.json",
        &colorteller(&apps, &[("white", 100), ("black", 0)]),
    );
    let (ok, _, err) = control.ctl(&["apply", "-f", &f]);
    assert!(ok, "{err}");
    let (_envoy, egress) = control.envoy("demo", "gateway");
    eventually("Envoy routes", Duration::from_secs(30), || {
        let t = tally(egress, 10);
        (t.get("white") == Some(&10), t)
    });

    // Server stopped: Envoy keeps its config and keeps routing.
    control.stop(&rt);
    let t = tally(egress, 20);
    assert_eq!(
        t.get("white"),
        Some(&20),
        "Envoy serves without its server: {t:?}"
    );

    // Restarted on the same ports from the same state file: the mesh is back and Envoy
    // reconnects on its own.
    let control = Control::start(&rt, &state, Some(ports));
    let resources = control.get("/v1/resources");
    assert_eq!(
        resources["resources"].as_array().map(Vec::len),
        Some(7),
        "{resources}"
    );
    eventually("Envoy reconnects", Duration::from_secs(60), || {
        let s = control.get("/v1/status");
        let n = s["clients"].as_array().map(Vec::len).unwrap_or(0);
        (n == 1, s)
    });
    // And follows changes made after the restart.
    let f = write_spec(
        dir.path(),
        "mesh.json",
        &colorteller(&apps, &[("white", 0), ("black", 100)]),
    );
    let (ok, out, err) = control.ctl(&["apply", "-f", &f, "--wait"]);
    assert!(ok, "{out}{err}");
    let t = tally(egress, 20);
    assert_eq!(t.get("black"), Some(&20), "{t:?}");
}

#[test]
fn a_new_module_build_reaches_envoy_without_a_restart() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let modules = dir.path().join("modules");
    std::fs::create_dir(&modules).unwrap();
    let wasm = std::fs::read(maille_testkit::filter_wasm("canary")).unwrap();
    std::fs::write(modules.join("canary.wasm"), &wasm).unwrap();
    let control = Control::start_with_modules(&rt, &dir.path().join("state.redb"), None, &modules);
    // A sticky split over three targets: the one kind of split made by the canary filter.
    let apps = Apps::start(&rt, &["white", "black", "blue"]);
    let f = write_spec(
        dir.path(),
        "mesh.json",
        &sticky(
            colorteller(&apps, &[("white", 34), ("black", 33), ("blue", 33)]),
            "x-user-id",
        ),
    );
    let (ok, _, err) = control.ctl(&["apply", "-f", &f, "--wait"]);
    assert!(ok, "{err}");
    let (envoy, egress) = control.envoy("demo", "gateway");
    let sha_before = control.get("/v1/status")["modules"]["canary.wasm"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let colours = |t: &std::collections::BTreeMap<String, usize>| {
        t.len() == 3
            && t.keys()
                .all(|k| ["white", "black", "blue"].contains(&k.as_str()))
    };
    eventually("the split answers", Duration::from_secs(30), || {
        let t = tally(egress, 40);
        (colours(&t), t)
    });
    assert!(envoy
        .log()
        .contains(&format!("maille_canary_{}", &sha_before[..12])));

    // A new build of the module: the same code with a custom section appended (a valid
    // module with a new sha256).
    let mut next = wasm.clone();
    let name = b"maille-build";
    let payload = b"2";
    next.push(0); // custom section
    next.push((1 + name.len() + payload.len()) as u8);
    next.push(name.len() as u8);
    next.extend_from_slice(name);
    next.extend_from_slice(payload);
    std::fs::write(modules.join("canary.wasm"), &next).unwrap();

    let sha_after = eventually(
        "the server serves the new module",
        Duration::from_secs(20),
        || {
            let s = control.get("/v1/status")["modules"]["canary.wasm"]["sha256"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (s != sha_before, s)
        },
    );
    // Envoy fetches it by its new sha256 and runs it, with no restart.
    eventually("Envoy runs the new module", Duration::from_secs(30), || {
        let _ = tally(egress, 5);
        let log = envoy.log();
        let tail: String = log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
        (
            log.contains(&format!("maille_canary_{}", &sha_after[..12])),
            (
                sha_after.clone(),
                tail,
                envoy.stats("wasm"),
                envoy.stats("extension_config_discovery"),
            ),
        )
    });
    eventually("the split keeps answering", Duration::from_secs(30), || {
        let t = tally(egress, 60);
        (colours(&t), t)
    });
}

#[test]
fn a_sticky_split_is_native_and_keeps_users_as_the_canary_grows() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let apps = Apps::start(&rt, &["stable", "canary"]);
    let spec = |canary: u32| {
        sticky(
            colorteller(&apps, &[("stable", 100 - canary), ("canary", canary)]),
            "x-user-id",
        )
    };
    let f = write_spec(dir.path(), "mesh.json", &spec(10));
    let (ok, _, err) = control.ctl(&["apply", "-f", &f, "--wait"]);
    assert!(ok, "{err}");
    let (envoy, egress) = control.envoy("demo", "gateway");
    // Native: weighted clusters hashed on the user's header, and no filter in the chain.
    let dump = envoy
        .admin_get("/config_dump?resource=dynamic_route_configs")
        .unwrap()
        + &envoy
            .admin_get("/config_dump?resource=dynamic_listeners")
            .unwrap();
    assert!(
        dump.contains("\"weighted_clusters\""),
        "no weighted_clusters"
    );
    assert!(dump.contains("\"use_hash_policy\": true"), "not hashed");
    assert!(
        dump.contains("\"header_name\": \"x-user-id\""),
        "hash not on the header"
    );
    if let Some(i) = dump.find("extensions.filters.http.wasm") {
        panic!(
            "a wasm filter is configured: ...{}...",
            &dump[i.saturating_sub(600)..(i + 200).min(dump.len())]
        );
    }
    let node = control.get("/v1/nodes/mesh/demo/virtualNode/gateway");
    assert_eq!(node["resources"]["ECDS"], serde_json::json!([]), "{node}");

    let a = maille_testkit::agent();
    let users: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let first: Vec<String> = eventually("the split answers", Duration::from_secs(30), || {
        let got: Vec<String> = users.iter().map(|u| answer_for(&a, egress, u)).collect();
        (got.iter().all(|g| g == "stable" || g == "canary"), got)
    });
    // Each user gets the same answer again.
    for (u, want) in users.iter().zip(&first) {
        assert_eq!(
            &answer_for(&a, egress, u),
            want,
            "{u} moved at the same weights"
        );
    }
    let on_canary: Vec<&String> = users
        .iter()
        .zip(&first)
        .filter(|(_, g)| *g == "canary")
        .map(|(u, _)| u)
        .collect();
    assert!(
        (8..=35).contains(&on_canary.len()),
        "{} of 200 users on a 10% canary",
        on_canary.len()
    );

    // 10% -> 20%: everyone on the canary stays there; more join.
    let f = write_spec(dir.path(), "mesh.json", &spec(20));
    let (ok, _, err) = control.ctl(&["apply", "-f", &f, "--wait"]);
    assert!(ok, "{err}");
    let now: Vec<String> = eventually("the new weights apply", Duration::from_secs(30), || {
        let got: Vec<String> = users.iter().map(|u| answer_for(&a, egress, u)).collect();
        let n = got.iter().filter(|g| *g == "canary").count();
        (n > on_canary.len(), got)
    });
    for (u, g) in users.iter().zip(&now) {
        if on_canary.contains(&u) {
            assert_eq!(g, "canary", "{u} left the canary when its weight rose");
        }
    }
    // And the split holds over 2,000 users: 20% +- 3 points.
    let canary = (0..2000)
        .filter(|i| answer_for(&a, egress, &format!("other-{i}")) == "canary")
        .count();
    println!(
        "sticky split at 20%: {canary} of 2000 on the canary; {} of 200 users kept",
        on_canary.len()
    );
    assert!(
        (340..=460).contains(&canary),
        "{canary} of 2000 on a 20% canary"
    );
}

#[test]
fn a_breaker_filter_resource_trips_and_signals_the_control_server() {
    // The default runtime: the breaker as an Envoy dynamic module, fetched by Envoy from
    // the control server.
    breaker_filter_resource(None);
}

#[test]
fn a_wasm_breaker_filter_resource_trips_and_signals_the_control_server() {
    breaker_filter_resource(Some("wasm"));
}

fn breaker_filter_resource(kind: Option<&str>) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    // The modules served: a copy of the built breaker with a trailer of its own (an ELF
    // loader ignores it), so that its sha256 is new to this host and Envoy really fetches it
    // (Envoy caches fetched modules in /tmp by sha256 across processes): the path where Envoy
    // refuses the config until the module is cached, and the server sends it again.
    let modules = dir.path().join("modules");
    std::fs::create_dir(&modules).unwrap();
    let built = repo_root().join("target/filters");
    for f in ["libmaille_breaker.so", "breaker.wasm"] {
        let mut bytes = std::fs::read(built.join(f)).expect("built filters (make filters)");
        if f.ends_with(".so") {
            bytes.extend(
                format!(
                    "maille-test-{}-{:?}",
                    std::process::id(),
                    std::time::SystemTime::now()
                )
                .bytes(),
            );
        }
        std::fs::write(modules.join(f), bytes).unwrap();
    }
    let control = Control::start_with_modules(&rt, &dir.path().join("state.redb"), None, &modules);
    let apps = Apps::start(&rt, &["white", "black"]);
    let mut mesh = colorteller(&apps, &[("white", 0), ("black", 100)]);
    // Maille's Filter resource: the breaker on the gateway's outbound path, signalling the
    // control server through the bootstrap's `maille_control` cluster.
    mesh.as_array_mut()
        .unwrap()
        .push(serde_json::json!({"filter": {
        "meshName": "demo", "filterName": "breaker", "spec": {
            "module": "breaker", "virtualNodes": ["gateway"],
            "config": {"windowMillis": 10000, "minRequests": 5, "failureRatio": 0.5,
                       "consecutiveFailures": 3, "openMillis": 60000,
                       "signal": {"cluster": "maille_control", "path": "/v1/signals/breaker"}}}}}));
    if let Some(r) = kind {
        let last = mesh.as_array().unwrap().len() - 1;
        mesh[last]["filter"]["spec"]["runtime"] = r.into();
    }
    let f = write_spec(dir.path(), "mesh.json", &mesh);
    let (ok, out, err) = control.ctl(&["apply", "-f", &f, "--wait"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("filter/demo/breaker created"), "{out}");
    let (envoy, egress) = control.envoy("demo", "gateway");
    eventually("black answers", Duration::from_secs(30), || {
        let t = tally(egress, 5);
        (t.get("black") == Some(&5), t)
    });

    // Black fails: the breaker opens and answers for it, and the server hears of it.
    apps.failing["black"].store(true, std::sync::atomic::Ordering::Relaxed);
    let t = tally(egress, 10);
    assert!(t.get("HTTP 503").copied().unwrap_or(0) == 10, "{t:?}");
    let hits_open = apps.hits["black"].load(std::sync::atomic::Ordering::Relaxed);
    let t = tally(egress, 20);
    assert_eq!(t.get("HTTP 503"), Some(&20), "{t:?}");
    assert_eq!(
        apps.hits["black"].load(std::sync::atomic::Ordering::Relaxed),
        hits_open,
        "no request reaches black while the circuit is open"
    );
    let signals = eventually(
        "the control server receives the signal",
        Duration::from_secs(10),
        || {
            let s = control.get("/v1/signals");
            let open = s["signals"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["to"] == "open");
            (open, s)
        },
    );
    let first = &signals["signals"][0];
    assert_eq!(first["from"], "closed");
    assert_eq!(first["to"], "open");
    assert!(
        first["cluster"]
            .as_str()
            .unwrap()
            .starts_with("node/black/"),
        "{first}"
    );
    let (ok, out, _) = control.ctl(&["signals"]);
    assert!(ok && out.contains("\"to\":\"open\""), "{out}");
    // The trips counter under the runtime's own names: the wasm filter's
    // `wasmcustom.maille_breaker.<cluster>.trips`, the module's
    // `dynamicmodulescustom.maille_breaker.trips.cluster.<cluster>`.
    let stats = envoy.stats("maille_breaker");
    let trips = stats.iter().find(|(k, v)| {
        **v >= 1
            && match kind {
                Some("wasm") => {
                    k.starts_with("wasmcustom.maille_breaker.") && k.ends_with(".trips")
                }
                _ => k.starts_with("dynamicmodulescustom.maille_breaker.trips.cluster.node/black/"),
            }
    });
    assert!(trips.is_some(), "{stats:?}");
    drop(envoy);
    // Envoy's cached copy of this test's module.
    if let Some(m) = control.get("/v1/status")["modules"]["libmaille_breaker.so"]["sha256"].as_str()
    {
        let _ = std::fs::remove_file(format!("/tmp/envoy_dynamic_module_{m}.so"));
    }
}

#[test]
fn a_router_with_two_listeners_routes_by_the_port_the_caller_names() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let apps = Apps::start(&rt, &["white", "blue"]);
    let mut mesh = colorteller(&apps, &[("white", 1)]);
    let docs = mesh.as_array_mut().unwrap();
    for d in docs.iter_mut() {
        // The router listens on two ports; its routes match only on the port.
        if d.get("virtualRouterName").is_some() && d.get("routeName").is_none() {
            d["spec"]["listeners"] = serde_json::json!([
                {"portMapping": {"port": 9080, "protocol": "http"}},
                {"portMapping": {"port": 9090, "protocol": "http"}}
            ]);
        }
        if d.get("routeName").is_some() {
            d["spec"] = serde_json::json!({"httpRoute": {"match": {"port": 9080},
                "action": {"weightedTargets": [{"virtualNode": "white", "weight": 1}]}}});
        }
    }
    docs.push(
        serde_json::json!({"meshName": "demo", "virtualRouterName": "colorteller",
        "routeName": "blue-port", "spec": {"httpRoute": {"match": {"port": 9090},
        "action": {"weightedTargets": [{"virtualNode": "blue", "weight": 1}]}}}}),
    );
    // A route for every port, named to sort first: the port routes still go before it.
    docs.push(
        serde_json::json!({"meshName": "demo", "virtualRouterName": "colorteller",
        "routeName": "a-any-port", "spec": {"httpRoute": {"match": {"prefix": "/"},
        "action": {"weightedTargets": [{"virtualNode": "white", "weight": 1}]}}}}),
    );
    let f = write_spec(dir.path(), "mesh.json", &mesh);
    let (ok, out, err) = control.ctl(&["apply", "-f", &f, "--wait"]);
    assert!(ok, "{out}{err}");
    let (envoy, egress) = control.envoy("demo", "gateway");
    let a = maille_testkit::agent();
    let ask = |host: &str| ask_host(&a, egress, host);
    eventually("the port routes answer", Duration::from_secs(30), || {
        let got = (
            ask("colorteller.local"),
            ask("colorteller.local:9080"),
            ask("COLORTELLER.local:9090"),
        );
        (
            got == ("white".into(), "white".into(), "blue".into()),
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
    // Any other port: the route without a port.
    assert_eq!(ask("colorteller.local:9999"), "white");
}
