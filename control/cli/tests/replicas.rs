//! Several control servers sharing their state in a real etcd (Debian's etcd-server on
//! loopback ports): a change through one reaches the Envoys of another, concurrent changes
//! through all of them end in one state and one version sequence, one server leads the
//! rollouts and another resumes them when it dies, an Envoy whose server dies goes to
//! another, and an etcd without a quorum refuses writes with a clear error while Envoys keep
//! what they have.

mod common;

use common::*;
use maille_testkit::Etcd;
use serde_json::Value;
use std::time::Duration;

fn write_spec(dir: &std::path::Path, name: &str, spec: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(spec).unwrap()).unwrap();
    p.display().to_string()
}

/// The weights of `demo`'s route as `replica` serves it.
fn weights(replica: &Control) -> Vec<u64> {
    let snap = replica.running.as_ref().unwrap().mesh.current();
    let route = snap
        .resources
        .values()
        .find_map(|r| match r.as_ref() {
            maille_model::Resource::Route(r) => Some(r.clone()),
            _ => None,
        })
        .expect("a route");
    let v = serde_json::to_value(&route).unwrap();
    v["spec"]["httpRoute"]["action"]["weightedTargets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["weight"].as_u64().unwrap())
        .collect()
}

/// How many Envoys `replica` serves.
fn envoys_on(replica: &Control) -> usize {
    replica.running.as_ref().unwrap().clients.list().len()
}

#[test]
fn a_change_through_one_replica_reaches_the_envoys_of_the_others() {
    let rt = runtime();
    let etcd = Etcd::start(3);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas: Vec<Control> = dirs
        .iter()
        .map(|d| Control::start_on_etcd(&rt, d.path(), &etcd.store_url()))
        .collect();
    let (a, b, c) = (&replicas[0], &replicas[1], &replicas[2]);
    // One CA and one set of tokens for all (kept in etcd, first writer wins).
    let ca =
        |d: &tempfile::TempDir| std::fs::read_to_string(d.path().join("maille-ca.pem")).unwrap();
    for (r, d) in replicas.iter().zip(&dirs).skip(1) {
        assert_eq!(r.admin_token(), a.admin_token());
        assert_eq!(ca(d), ca(&dirs[0]));
    }

    let apps = Apps::start(&rt, &["white", "black"]);
    let f = write_spec(
        dirs[0].path(),
        "mesh.json",
        &colorteller(&apps, &[("white", 100), ("black", 0)]),
    );
    let (ok, out, err) = a.ctl(&["apply", "-f", &f]);
    assert!(ok, "{out}{err}");
    // B and C hear of the mesh only through etcd.
    let version = a.running.as_ref().unwrap().mesh.current().version;
    for r in [b, c] {
        eventually("B and C have the mesh", Duration::from_secs(10), || {
            let v = r.running.as_ref().unwrap().mesh.current().version;
            (v == version, v)
        });
    }
    // Envoys for the gateway, bootstrapped from B and C in turn (each bootstrap lists every
    // server; the Envoy picks one), until B and C each serve at least one.
    let mut envoys = Vec::new();
    while envoys_on(b) == 0 || envoys_on(c) == 0 {
        assert!(
            envoys.len() < 20,
            "20 Envoys and still none on B or C: on A {}, B {}, C {}",
            envoys_on(a),
            envoys_on(b),
            envoys_on(c)
        );
        let from = if envoys.len() % 2 == 0 { b } else { c };
        envoys.push(from.envoy("demo", "gateway"));
        let n = envoys.len();
        eventually("the new Envoy connects", Duration::from_secs(20), || {
            let on = [envoys_on(a), envoys_on(b), envoys_on(c)];
            (on.iter().sum::<usize>() == n, on)
        });
    }
    eprintln!(
        "{} Envoys: on A {}, B {}, C {}",
        envoys.len(),
        envoys_on(a),
        envoys_on(b),
        envoys_on(c)
    );
    for (_, egress) in &envoys {
        eventually(
            "every Envoy routes to white",
            Duration::from_secs(30),
            || {
                let t = tally(*egress, 20);
                (t.get("white") == Some(&20), t)
            },
        );
    }
    // A change through A reaches the Envoys of B and C.
    let f = write_spec(
        dirs[0].path(),
        "mesh.json",
        &colorteller(&apps, &[("white", 0), ("black", 100)]),
    );
    let (ok, out, err) = a.ctl(&["apply", "-f", &f]);
    assert!(ok, "{out}{err}");
    for (_, egress) in &envoys {
        eventually(
            "every Envoy follows the change made through A",
            Duration::from_secs(20),
            || {
                let t = tally(*egress, 20);
                (t.get("black") == Some(&20), t)
            },
        );
    }
    // And B's and C's status show their Envoys synced to the version A made.
    let version = a.running.as_ref().unwrap().mesh.current().version;
    for r in [b, c] {
        eventually("their Envoys synced", Duration::from_secs(20), || {
            let s = r.get("/v1/status");
            let synced = s["clients"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["syncedVersion"].as_u64() == Some(version));
            (synced && !s["clients"].as_array().unwrap().is_empty(), s)
        });
    }
    drop(envoys);
}

#[test]
fn concurrent_changes_through_every_replica_end_in_one_state() {
    let rt = runtime();
    let etcd = Etcd::start(3);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let replicas: Vec<Control> = dirs
        .iter()
        .map(|d| Control::start_on_etcd(&rt, d.path(), &etcd.store_url()))
        .collect();
    let apps = Apps::start(&rt, &["white", "black"]);
    let f = write_spec(
        dirs[0].path(),
        "mesh.json",
        &colorteller(&apps, &[("white", 50), ("black", 50)]),
    );
    let (ok, out, err) = replicas[0].ctl(&["apply", "-f", &f]);
    assert!(ok, "{out}{err}");
    let start = replicas[0].running.as_ref().unwrap().mesh.current().version;
    // 200 applies, each its own pair of weights, spread over the replicas (67, 67, 66), all
    // at once.
    let route = |w: (u64, u64)| -> Value {
        colorteller(&apps, &[("white", w.0 as u32), ("black", w.1 as u32)])
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d.get("routeName").is_some())
            .unwrap()
            .clone()
    };
    let n = 200u64;
    let results: Vec<((u64, u64), Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let r = &replicas[(i % 3) as usize];
                let w = (i % 100 + 1, i / 100);
                let body = serde_json::json!({"resources": [{"route": route(w)}]});
                s.spawn(move || (w, r.post("/v1/apply", &body)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut versions: Vec<u64> = results
        .iter()
        .map(|(w, r)| {
            r["version"]
                .as_u64()
                .unwrap_or_else(|| panic!("apply of weights {w:?} failed: {r}"))
        })
        .collect();
    versions.sort();
    // One sequence: every apply got its own version, none skipped.
    assert_eq!(versions, ((start + 1)..=(start + n)).collect::<Vec<_>>());
    let last = results
        .iter()
        .find(|(_, r)| r["version"].as_u64() == Some(start + n))
        .unwrap()
        .0;
    // Every replica ends with the state of the last version, as etcd holds it.
    for r in &replicas {
        eventually(
            "every replica at the last version",
            Duration::from_secs(10),
            || {
                let v = r.running.as_ref().unwrap().mesh.current().version;
                (v == start + n, v)
            },
        );
        assert_eq!(weights(r), [last.0, last.1]);
    }
}

#[test]
fn without_an_etcd_quorum_writes_are_refused_and_envoys_keep_what_they_have() {
    let rt = runtime();
    let mut etcd = Etcd::start(3);
    let d = tempfile::tempdir().unwrap();
    let a = Control::start_on_etcd(&rt, d.path(), &etcd.store_url());
    let apps = Apps::start(&rt, &["white", "black"]);
    let f = write_spec(
        d.path(),
        "mesh.json",
        &colorteller(&apps, &[("white", 100), ("black", 0)]),
    );
    let (ok, out, err) = a.ctl(&["apply", "-f", &f]);
    assert!(ok, "{out}{err}");
    let (envoy, egress) = a.envoy("demo", "gateway");
    eventually("Envoy routes to white", Duration::from_secs(30), || {
        let t = tally(egress, 20);
        (t.get("white") == Some(&20), t)
    });
    // One member of three gone: nothing changes, writes go through.
    etcd.kill(0);
    let f1 = write_spec(
        d.path(),
        "mesh1.json",
        &colorteller(&apps, &[("white", 100), ("black", 0)]),
    );
    let mut f1_doc: Value = serde_json::from_str(&std::fs::read_to_string(&f1).unwrap()).unwrap();
    // A change Envoy does not see (a second listener-less node), so traffic stays on white.
    f1_doc
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"virtualNode": {
        "meshName": "demo", "virtualNodeName": "spare", "spec": {}}}));
    let f1 = write_spec(d.path(), "mesh1.json", &f1_doc);
    let (ok, out, err) = a.ctl(&["apply", "-f", &f1]);
    assert!(ok, "one member of three down: {out}{err}");
    assert_eq!(tally(egress, 20).get("white"), Some(&20));
    let version = a.running.as_ref().unwrap().mesh.current().version;

    // Two gone: no quorum.
    etcd.kill(1);
    let f2 = write_spec(
        d.path(),
        "mesh2.json",
        &colorteller(&apps, &[("white", 0), ("black", 100)]),
    );
    let (ok, out, err) = a.ctl(&["apply", "-f", &f2]);
    assert!(!ok, "an apply without etcd succeeded: {out}");
    assert!(err.contains("etcd"), "the error names the store: {err}");
    // Nothing changed: the same version served, Envoy still routes as before.
    assert_eq!(a.running.as_ref().unwrap().mesh.current().version, version);
    assert_eq!(tally(egress, 20).get("white"), Some(&20));
    let (ok, _, err) = a.ctl(&["get", "route"]);
    assert!(ok, "reads are served from memory: {err}");

    // The members back: the same apply goes through.
    etcd.restart(0);
    etcd.restart(1);
    eventually(
        "the apply goes through again",
        Duration::from_secs(30),
        || {
            let (ok, out, err) = a.ctl(&["apply", "-f", &f2]);
            (ok, format!("{out}{err}"))
        },
    );
    eventually("Envoy follows", Duration::from_secs(20), || {
        let t = tally(egress, 20);
        (t.get("black") == Some(&20), t)
    });
    drop(envoy);
}

/// The demo mesh's file as `dir/colorapp.json`.
fn demo_mesh(dir: &std::path::Path) -> String {
    let src = maille_testkit::repo_root().join("deploy/examples/colorteller/local/colorapp.json");
    let p = dir.join("colorapp.json");
    std::fs::copy(src, &p).unwrap();
    p.display().to_string()
}

/// Which of `procs` (those alive) says it leads.
fn leading(procs: &[Option<Process>]) -> Vec<usize> {
    procs
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            p.as_ref()
                .is_some_and(|p| p.get("/v1/status")["leader"]["me"] == true)
        })
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn the_leader_killed_mid_rollout_another_resumes_the_same_step() {
    let etcd = Etcd::start(1);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ttl = 2;
    let mut procs: Vec<Option<Process>> = dirs
        .iter()
        .map(|d| Some(Process::start_on_etcd(d.path(), &etcd.store_url(), ttl)))
        .collect();
    let a = procs[0].as_ref().unwrap();
    let (ok, out, err) = a.ctl(&["apply", "-f", &demo_mesh(dirs[0].path())]);
    assert!(ok, "{out}{err}");
    let leader = eventually("one leader", Duration::from_secs(10), || {
        let l = leading(&procs);
        (l.len() == 1, l)
    })[0];
    // Who leads is the same answer from each server.
    let holder = procs[leader].as_ref().unwrap().get("/v1/status")["leader"]["holder"].clone();
    for p in procs.iter().flatten() {
        assert_eq!(p.get("/v1/status")["leader"]["holder"], holder);
    }
    // A rollout of nine steps of 1.5 s, applied through a server that may not lead.
    let steps: Vec<Value> = (1..=9)
        .map(|i| serde_json::json!({"weight": i * 10, "duration": {"unit": "ms", "value": 1500}}))
        .collect();
    let doc = serde_json::json!([{"rollout": {"meshName": "colorapp", "rolloutName": "blue", "spec": {
        "virtualRouterName": "colorteller-vr", "routeName": "colorteller-route",
        "stable": "colorteller-white", "canary": "colorteller-blue", "steps": steps}}}]);
    let f = write_spec(dirs[0].path(), "rollout.json", &doc);
    let (ok, out, err) = a.ctl(&["apply", "-f", &f]);
    assert!(ok, "{out}{err}");
    // An action through a server that does not lead says which does.
    let follower = (leader + 1) % 3;
    let (ok, _, err) =
        procs[follower]
            .as_ref()
            .unwrap()
            .ctl(&["rollout", "pause", "colorapp/blue"]);
    assert!(!ok && err.contains("leading control server"), "{err}");

    let status = |p: &Process| p.get("/v1/rollouts/colorapp/blue");
    let before = eventually("the rollout at step 3", Duration::from_secs(20), || {
        let s = status(procs[leader].as_ref().unwrap());
        (s["step"].as_u64().unwrap_or(0) >= 3, s)
    });
    let (step, weight) = (
        before["step"].as_u64().unwrap(),
        before["canaryWeight"].as_u64().unwrap(),
    );
    let killed_at = std::time::Instant::now();
    procs[leader].take().unwrap().kill();
    let next = eventually("another leader", Duration::from_secs(10), || {
        let l = leading(&procs);
        (l.len() == 1, l)
    })[0];
    let took = killed_at.elapsed();
    assert!(next != leader);
    eprintln!("takeover after the leader's SIGKILL: {took:?} (lease {ttl} s)");
    assert!(
        took < Duration::from_secs(ttl * 2 + 1),
        "takeover took {took:?}, lease {ttl} s"
    );
    // It resumes where the store says: the same step or the one after, never back, never
    // skipping; then it goes on to the end.
    let p = procs[next].as_ref().unwrap();
    let resumed = status(p);
    let s = resumed["step"].as_u64().unwrap();
    assert!(
        s == step || s == step + 1,
        "resumed at {resumed}, killed at step {step}"
    );
    assert!(
        resumed["canaryWeight"].as_u64().unwrap() >= weight,
        "{resumed}"
    );
    let mut last = (s, resumed["canaryWeight"].as_u64().unwrap());
    let end = eventually("the rollout ends", Duration::from_secs(30), || {
        let st = status(p);
        let now = (
            st["step"].as_u64().unwrap_or(0),
            st["canaryWeight"].as_u64().unwrap_or(0),
        );
        assert!(
            now.0 >= last.0 && now.0 <= last.0 + 1 && now.1 >= last.1,
            "from {last:?} to {now:?}: {st}"
        );
        last = now;
        (st["phase"] == "Succeeded", st)
    });
    assert_eq!(end["canaryWeight"], 100, "{end}");
}

/// The node ids of the Envoys connected to `p`.
fn clients_of(p: &Process) -> Vec<String> {
    p.get("/v1/status")["clients"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c["node"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn an_envoy_whose_server_dies_goes_to_another_and_no_request_fails() {
    let rt = runtime();
    let etcd = Etcd::start(1);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut procs: Vec<Option<Process>> = dirs
        .iter()
        .map(|d| Some(Process::start_on_etcd(d.path(), &etcd.store_url(), 2)))
        .collect();
    let apps = Apps::start(&rt, &["white", "black"]);
    let f = write_spec(
        dirs[0].path(),
        "mesh.json",
        &colorteller(&apps, &[("white", 100), ("black", 0)]),
    );
    let a = procs[0].as_ref().unwrap();
    let (ok, out, err) = a.ctl(&["apply", "-f", &f]);
    assert!(ok, "{out}{err}");
    // Bootstraps list every live server.
    let xds_ports: Vec<u16> = procs.iter().flatten().map(|p| p.xds).collect();
    eventually(
        "a bootstrap lists both servers",
        Duration::from_secs(10),
        || {
            let (_, boot, _) = a.ctl(&["bootstrap", "--node", "demo/gateway"]);
            let both = xds_ports
                .iter()
                .all(|p| boot.contains(&format!("\"port_value\": {p}")));
            (both, boot)
        },
    );
    let (envoy, egress) = a.envoy("demo", "gateway");
    eventually("Envoy routes to white", Duration::from_secs(30), || {
        let t = tally(egress, 10);
        (t.get("white") == Some(&10), t)
    });
    let on = eventually("Envoy on one server", Duration::from_secs(10), || {
        let on: Vec<usize> = (0..2)
            .filter(|i| !clients_of(procs[*i].as_ref().unwrap()).is_empty())
            .collect();
        (on.len() == 1, on)
    })[0];
    let other = 1 - on;

    // Requests all along, every 10 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let a = maille_testkit::agent();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let got = ask_host(&a, egress, "colorteller.local");
                if got.starts_with("200") || got == "white" || got == "black" {
                    ok += 1;
                } else {
                    failed.push(got);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = std::time::Instant::now();
    procs[on].take().unwrap().kill();
    let survivor = procs[other].as_ref().unwrap();
    eventually(
        "Envoy reconnects to the other server",
        Duration::from_secs(20),
        || {
            let c = clients_of(survivor);
            (!c.is_empty(), c)
        },
    );
    let failover = killed_at.elapsed();
    eprintln!("failover (server SIGKILLed → its Envoy on another): {failover:?}");
    // Synced there, and following a change made through it.
    let f2 = write_spec(
        dirs[other].path(),
        "mesh2.json",
        &colorteller(&apps, &[("white", 0), ("black", 100)]),
    );
    let (ok, out, err) = survivor.ctl(&["apply", "-f", &f2, "--wait"]);
    assert!(ok, "{out}{err}");
    eventually(
        "Envoy follows the survivor",
        Duration::from_secs(20),
        || {
            let t = tally(egress, 10);
            (t.get("black") == Some(&10), t)
        },
    );
    // Requests go on a while after, on the survivor's configuration.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(ok > 150, "{ok} requests");
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok,
        &failed[..failed.len().min(5)]
    );
    drop(envoy);
}

#[test]
fn an_envoy_that_refused_a_version_is_not_sent_it_again_by_another_server() {
    let rt = runtime();
    let etcd = Etcd::start(1);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Control::start_on_etcd(&rt, da.path(), &etcd.store_url());
    let mut b = Control::start_on_etcd(&rt, db.path(), &etcd.store_url());
    let apps = Apps::start(&rt, &["white", "black"]);
    let f = write_spec(
        da.path(),
        "mesh.json",
        &colorteller(&apps, &[("white", 100), ("black", 0)]),
    );
    let (ok, out, err) = a.ctl(&["apply", "-f", &f]);
    assert!(ok, "{out}{err}");
    let xds = [a.xds_port, b.xds_port];
    eventually(
        "a bootstrap lists both servers",
        Duration::from_secs(10),
        || {
            let (_, boot, _) = a.ctl(&["bootstrap", "--node", "demo/gateway"]);
            let both = xds
                .iter()
                .all(|p| boot.contains(&format!("\"port_value\": {p}")));
            (both, boot)
        },
    );
    let (envoy, egress) = a.envoy("demo", "gateway");
    eventually("Envoy routes to white", Duration::from_secs(30), || {
        let t = tally(egress, 10);
        (t.get("white") == Some(&10), t)
    });
    let on_a = eventually("Envoy on one server", Duration::from_secs(10), || {
        let (na, nb) = (
            a.running.as_ref().unwrap().clients.list().len(),
            b.running.as_ref().unwrap().clients.list().len(),
        );
        (na + nb == 1, na == 1)
    });
    let (serving, other) = if on_a {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    // A route Envoy refuses (RE2 program too big).
    let mut bad = colorteller(&apps, &[("white", 50), ("black", 50)]);
    for d in bad.as_array_mut().unwrap() {
        if d.get("routeName").is_some() {
            d["spec"]["httpRoute"]["match"] =
                serde_json::json!({"path": {"regex": "/(a+b+c+d+e+f+g+h+i+j+){12}"}});
        }
    }
    let f = write_spec(da.path(), "bad.json", &bad);
    let (ok, out, _) = serving.ctl(&["apply", "-f", &f, "--wait", "--timeout", "5"]);
    assert!(!ok, "Envoy was to refuse it: {out}");
    // Its server goes; Envoy reconnects to the other, which sends what it last accepted.
    serving.stop(&rt);
    let status = eventually(
        "Envoy synced on the other server",
        Duration::from_secs(20),
        || {
            let s = other.get("/v1/status");
            let c = &s["clients"][0];
            let rds = &c["types"]["RDS"];
            (
                rds["acked"].is_string() && c["node"] == "mesh/demo/virtualNode/gateway",
                s,
            )
        },
    );
    let rds = &status["clients"][0]["types"]["RDS"];
    assert!(
        rds["lastNack"].is_null(),
        "the other server sent the refused routes again: {status}"
    );
    // And the refused weights are not what Envoy routes by.
    assert_eq!(tally(egress, 20).get("white"), Some(&20));
    drop(envoy);
}

#[test]
fn a_breaker_opening_on_the_canary_reaches_the_leader_from_any_server() {
    let rt = runtime();
    let etcd = Etcd::start(1);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Control::start_on_etcd(&rt, da.path(), &etcd.store_url());
    let b = Control::start_on_etcd(&rt, db.path(), &etcd.store_url());
    let (ok, out, err) = a.ctl(&["apply", "-f", &demo_mesh(da.path())]);
    assert!(ok, "{out}{err}");
    let steps: Vec<Value> = (1..=4)
        .map(|i| serde_json::json!({"weight": i * 20, "duration": {"unit": "s", "value": 30}}))
        .collect();
    let doc = serde_json::json!([{"rollout": {"meshName": "colorapp", "rolloutName": "blue", "spec": {
        "virtualRouterName": "colorteller-vr", "routeName": "colorteller-route",
        "stable": "colorteller-white", "canary": "colorteller-blue", "steps": steps}}}]);
    let (ok, out, err) = a.ctl(&["apply", "-f", &write_spec(da.path(), "r.json", &doc)]);
    assert!(ok, "{out}{err}");
    let replicas = [&a, &b];
    let leader = eventually("one leads", Duration::from_secs(10), || {
        let l: Vec<usize> = (0..2)
            .filter(|i| replicas[*i].get("/v1/status")["leader"]["me"] == true)
            .collect();
        (l.len() == 1, l)
    })[0];
    let (lead, follower) = (replicas[leader], replicas[1 - leader]);
    eventually(
        "the rollout at its first step",
        Duration::from_secs(10),
        || {
            let s = lead.get("/v1/rollouts/colorapp/blue");
            (s["canaryWeight"] == 20, s)
        },
    );
    // The gateway's breaker on the canary opens; its signal reaches the follower.
    let token = follower
        .running
        .as_ref()
        .unwrap()
        .node_tokens
        .signal_token("mesh/colorapp/virtualNode/colorgateway");
    let signal = serde_json::json!({"cluster": "node/colorteller-blue/10013", "from": "closed",
        "to": "open", "generation": 1, "failureRatio": 0.9, "requests": 20, "failures": 18,
        "consecutiveFailures": 9, "atMillis": 1_795_753_011_355u64});
    let r = follower
        .agent()
        .post(&format!("{}/v1/signals/breaker", follower.url()))
        .header("authorization", format!("Bearer {token}"))
        .send_json(&signal)
        .unwrap();
    assert_eq!(r.status(), 204);
    // The leader rolls back at once, long before the step's 30 s.
    let back = eventually("rolled back by the leader", Duration::from_secs(10), || {
        let s = lead.get("/v1/rollouts/colorapp/blue");
        (s["phase"] == "RolledBack", s)
    });
    assert_eq!(back["canaryWeight"], 0, "{back}");
    // The follower serves the same status, from etcd.
    assert_eq!(
        follower.get("/v1/rollouts/colorapp/blue")["phase"],
        "RolledBack"
    );
}

/// Which apps (by name) `replica` serves as the Cloud Map instances of the mesh.
fn cloud_map_apps(replica: &Control, apps: &Apps) -> Vec<String> {
    let snap = replica.running.as_ref().unwrap().mesh.current();
    let mut out: Vec<String> = snap
        .cloud_map
        .values()
        .flatten()
        .map(|i| {
            let port = i.port.unwrap_or(0) as u16;
            apps.ports
                .iter()
                .find(|(_, p)| **p == port)
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| format!("port {port}"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn cloud_map_is_asked_by_the_leader_alone_and_every_server_serves_its_answers() {
    let rt = runtime();
    let etcd = Etcd::start(1);
    let moto = maille_testkit::Moto::start_on(maille_testkit::free_port());
    let apps = Apps::start(&rt, &["white", "black"]);
    let sd = CloudMapService::create(&rt, &moto.url());
    sd.register(&rt, &apps, "white", "prod");
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    // A reaches Cloud Map (moto) and starts first, so it leads (on a lease long enough that
    // a busy machine does not lose it).
    let url = moto.url();
    let a = Process::start_on_etcd_with_env(
        dirs[0].path(),
        &etcd.store_url(),
        5,
        &[
            ("AWS_ENDPOINT_URL", &url),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("MAILLE_CLOUD_MAP_INTERVAL_MS", "300"),
        ],
    );
    eventually("A leads", Duration::from_secs(10), || {
        let s = a.get("/v1/status");
        (s["leader"]["me"] == true, s)
    });
    // B and C run in this process, whose environment reaches no Cloud Map: what they serve
    // comes from the leader through etcd.
    let b = Control::start_on_etcd(&rt, dirs[1].path(), &etcd.store_url());
    let c = Control::start_on_etcd(&rt, dirs[2].path(), &etcd.store_url());
    let f = write_spec(dirs[1].path(), "mesh.json", &cloud_map_mesh());
    let (ok, out, err) = b.ctl(&["apply", "-f", &f]);
    assert!(ok, "{out}{err}");
    let followers = [&b, &c];
    let served_everywhere = |what: &str, want: &[&str]| {
        for r in followers {
            eventually(what, Duration::from_secs(20), || {
                let got = cloud_map_apps(r, &apps);
                (got == want, got)
            });
        }
    };
    served_everywhere("B and C serve the prod instance", &["white"]);
    let (envoy, egress) = c.envoy("demo", "gateway");
    eventually("the Envoy routes to white", Duration::from_secs(30), || {
        let t = tally(egress, 20);
        (t.get("white") == Some(&20), t)
    });
    sd.register(&rt, &apps, "black", "prod");
    sd.deregister(&rt, "white");
    served_everywhere("B and C follow the instances", &["black"]);
    eventually("the Envoy follows them", Duration::from_secs(30), || {
        let t = tally(egress, 20);
        (t.get("black") == Some(&20), t)
    });
    // A server started now serves the kept answers from its start, asking nothing.
    let mut d = Control::start_on_etcd(&rt, dirs[3].path(), &etcd.store_url());
    assert_eq!(cloud_map_apps(&d, &apps), ["black"]);
    assert_eq!(d.get("/v1/status")["leader"]["me"], false);
    // Only the leader asked.
    let s = a.get("/v1/status");
    assert_eq!(s["cloudMap"]["asking"], true, "{s}");
    assert!(s["cloudMap"]["calls"].as_u64().unwrap() >= 2, "{s}");
    for r in [&b, &c, &d] {
        let s = r.get("/v1/status");
        assert_eq!(s["cloudMap"]["asking"], false, "{s}");
        assert_eq!(s["cloudMap"]["calls"], 0, "{s}");
    }
    assert_eq!(a.get("/v1/status")["leader"]["me"], true, "A still leads");
    d.stop(&rt);

    // The leader dies: another takes over the asking. It cannot reach Cloud Map, so every
    // server keeps the last answers, and so does the traffic.
    a.kill();
    let leader = eventually("B or C leads and asks", Duration::from_secs(20), || {
        let on: Vec<usize> = (0..2)
            .filter(|i| {
                let s = followers[*i].get("/v1/status");
                s["cloudMap"]["asking"] == true && s["cloudMap"]["calls"].as_u64().unwrap_or(0) > 0
            })
            .collect();
        (on.len() == 1, on)
    })[0];
    eventually(
        "its calls fail, named by query",
        Duration::from_secs(20),
        || {
            let s = followers[leader].get("/v1/status");
            let failing = s["cloudMap"]["failing"].to_string();
            (failing.contains("demo.local/colorteller stage=prod"), s)
        },
    );
    for r in followers {
        assert_eq!(cloud_map_apps(r, &apps), ["black"]);
    }
    let t = tally(egress, 20);
    assert_eq!(t.get("black"), Some(&20), "{t:?}\n{}", envoy.log());
    // An Envoy started now, from the server that does not lead, is served them too.
    let (_fresh, fresh_egress) = followers[1 - leader].envoy("demo", "gateway");
    eventually(
        "a new Envoy routes to black",
        Duration::from_secs(30),
        || {
            let t = tally(fresh_egress, 20);
            (t.get("black") == Some(&20), t)
        },
    );
}

/// A TCP forwarder to `to` that can be cut: every connection through it is closed and new
/// ones are refused, as when a network partition separates a server from etcd.
struct Link {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Link {
    fn start(rt: &tokio::runtime::Runtime, to: u16) -> Link {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, k) = (cut.clone(), conns.clone());
        rt.spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Under the lock `cut` takes: a connection is either refused or cut.
                let mut conns = k.lock().unwrap();
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                conns.push(tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                }));
            }
        });
        Link { port, cut, conns }
    }

    fn cut(&self) {
        let mut conns = self.conns.lock().unwrap();
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for h in conns.drain(..) {
            h.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

// A partition: the leader loses etcd while it stays up (its Envoys and admin API still
// reachable). It stops leading before its lease can end, so two servers never lead at once;
// the other takes over within the lease's lifetime and takes writes; the cut-off server
// refuses writes, naming etcd, and once the partition heals it follows the new leader's
// state without leading again.
#[test]
fn a_leader_cut_off_from_etcd_steps_down_before_another_leads() {
    let rt = runtime();
    let etcd = Etcd::start(1);
    let port: u16 = etcd
        .store_url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let link = Link::start(&rt, port);
    let ttl = 8;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Process::start_on_etcd(
        dirs[0].path(),
        &format!("etcd://127.0.0.1:{}", link.port),
        ttl,
    );
    eventually("A leads", Duration::from_secs(10), || {
        let s = a.get("/v1/status");
        (s["leader"]["me"] == true, s)
    });
    let b = Process::start_on_etcd(dirs[1].path(), &etcd.store_url(), ttl);
    let f = demo_mesh(dirs[0].path());
    let (ok, out, err) = a.ctl(&["apply", "-f", &f]);
    assert!(ok, "{out}{err}");
    eventually("B follows", Duration::from_secs(10), || {
        let (va, vb) = (
            a.get("/v1/status")["version"].clone(),
            b.get("/v1/status")["version"].clone(),
        );
        (va == vb, (va, vb))
    });
    assert_eq!(b.get("/v1/status")["leader"]["me"], false);

    link.cut();
    let cut_at = std::time::Instant::now();
    // Polled in turn: B is asked only after A, so B seen leading in a later round than A
    // seen not leading means A stopped first.
    let (mut a_down, mut b_up) = (None, None);
    let mut round = 0u32;
    while b_up.is_none() && cut_at.elapsed() < Duration::from_secs(ttl * 3) {
        round += 1;
        if a_down.is_none() && a.get("/v1/status")["leader"]["me"] != true {
            a_down = Some((round, cut_at.elapsed()));
        }
        if b.get("/v1/status")["leader"]["me"] == true {
            b_up = Some((round, cut_at.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ((a_round, a_down), (b_round, b_up)) =
        (a_down.expect("A stopped leading"), b_up.expect("B leads"));
    assert!(
        a_round < b_round,
        "A seen not leading at {a_down:?} (round {a_round}), B leading at {b_up:?} (round {b_round})"
    );
    assert!(
        b_up < Duration::from_secs(ttl + 3),
        "B leads {b_up:?} after the cut, within the lease ({ttl} s) and a few waits"
    );
    eprintln!("cut: A stopped leading after {a_down:?}, B led after {b_up:?} (lease {ttl} s)");

    // Writes: refused by A, naming etcd; taken by B.
    let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    spec.as_array_mut()
        .unwrap()
        .push(serde_json::json!({"virtualNode": {
            "meshName": "colorapp", "virtualNodeName": "spare", "spec": {}}}));
    let f2 = write_spec(dirs[1].path(), "spare.json", &spec);
    let (ok, out, err) = a.ctl(&["apply", "-f", &f2]);
    assert!(!ok, "A wrote without etcd: {out}");
    assert!(err.contains("etcd"), "the error names the store: {err}");
    let (ok, out, err) = b.ctl(&["apply", "-f", &f2]);
    assert!(ok, "B takes writes: {out}{err}");
    let version = b.get("/v1/status")["version"].as_u64().unwrap();

    // Healed: A follows B's state, and B keeps leading.
    link.heal();
    eventually("A catches up", Duration::from_secs(20), || {
        let s = a.get("/v1/status");
        (s["version"].as_u64() == Some(version), s["version"].clone())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(b.get("/v1/status")["leader"]["me"], true);
    let s = a.get("/v1/status");
    assert_eq!(s["leader"]["me"], false, "{s}");
    let (ok, out, err) = a.ctl(&["get", "virtual-node", "--mesh", "colorapp"]);
    assert!(
        ok && out.contains("spare"),
        "A serves what B wrote: {out}{err}"
    );
}

// The leader's work is fenced by its lease: a server whose lease ended without it noticing
// (paused, say) cannot write a rollout status, a rollout step or Cloud Map's answers over
// the new leader's; it is told who leads.
#[test]
fn a_deposed_leader_cannot_write_the_leaders_work() {
    use maille_control::etcd_store::{EtcdAddress, EtcdStore, EtcdTls};
    use maille_control::store::Store;
    let rt = runtime();
    let etcd = Etcd::start(1);
    let address = EtcdAddress::parse(&etcd.store_url()).unwrap();
    let a = EtcdStore::connect(&address, &EtcdTls::default()).unwrap();
    let b = EtcdStore::connect(&address, &EtcdTls::default()).unwrap();
    let key = maille_model::Key {
        kind: maille_model::Kind::Rollout,
        mesh: "demo".into(),
        name: "canary".into(),
    };
    // Not leading yet: refused.
    let e = a.save_rollout_status(&key, Some(b"{}")).unwrap_err();
    assert!(e.0.contains("does not lead"), "{e}");
    // A leads on a long lease (its campaign looks again every eighth of it, 75 s), so that
    // it does not notice what follows.
    let _guard = rt.enter();
    let mut la = a
        .campaign(
            "a",
            maille_control::store::ServerEntry {
                id: "a".into(),
                address: "a.example".into(),
                xds_port: 1,
                http_port: 2,
                peer_url: "https://a.example:2".into(),
            },
            Duration::from_secs(600),
        )
        .unwrap();
    rt.block_on(la.wait_for(|l| l.me)).unwrap();
    a.save_rollout_status(&key, Some(b"step 1")).unwrap();
    // Its lease ends behind its back (as when it was paused for longer than the lease):
    // B takes over.
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", address.endpoints[0]))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let got = ctl(&["get", "maille/leader", "-w", "json"]);
    let lease = serde_json::from_str::<Value>(&got).unwrap()["kvs"][0]["lease"]
        .as_i64()
        .unwrap();
    ctl(&["lease", "revoke", &format!("{lease:x}")]);
    let mut lb = b
        .campaign(
            "b",
            maille_control::store::ServerEntry {
                id: "b".into(),
                address: "b.example".into(),
                xds_port: 1,
                http_port: 2,
                peer_url: "https://b.example:2".into(),
            },
            Duration::from_secs(600),
        )
        .unwrap();
    rt.block_on(lb.wait_for(|l| l.me)).unwrap();
    b.save_rollout_status(&key, Some(b"step 2")).unwrap();
    assert!(la.borrow().me, "A has not noticed yet");

    // A's writes of the leader's work are refused, naming the leader; B's stand.
    let e = a
        .save_rollout_status(&key, Some(b"step 1 again"))
        .unwrap_err();
    assert!(e.0.contains("does not lead any more: b does"), "{e}");
    let version = b.load().unwrap().0;
    let e = a
        .commit_dropping(version + 1, &[], &[], &[], true)
        .unwrap_err();
    assert!(
        e.0.contains("does not lead any more: b does") && !e.is_conflict(),
        "{e}"
    );
    let e = a.commit_cloud_map(version + 1, &[]).unwrap_err();
    assert!(e.0.contains("does not lead any more"), "{e}");
    assert_eq!(
        b.rollout_statuses().unwrap(),
        [(key.clone(), b"step 2".to_vec())]
    );
    assert_eq!(b.load().unwrap().0, version);
    // Other writes are anyone's.
    a.commit(version + 1, &[], &[]).unwrap();
    assert_eq!(b.load().unwrap().0, version + 1);
}

// Each Envoy sends its stats to the server it is connected to; the leader's analysis adds up
// every server's. The leader here has no Envoy at all: the gateway's Envoy knows only the
// other server. A canary failing half its requests is still judged on them and rolled back
// (with the leader's own numbers alone it would hold, for want of data).
#[test]
fn the_leader_judges_a_canary_by_the_traffic_of_envoys_on_other_servers() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let rt = runtime();
    let etcd = Etcd::start(1);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Control::start_on_etcd(&rt, dirs[0].path(), &etcd.store_url());
    eventually("A leads", Duration::from_secs(10), || {
        let s = a.get("/v1/status");
        (s["leader"]["me"] == true, s)
    });
    let b = Control::start_on_etcd(&rt, dirs[1].path(), &etcd.store_url());
    let apps = Apps::start(&rt, &["stable", "canary"]);
    let f = write_spec(
        dirs[0].path(),
        "mesh.json",
        &colorteller(&apps, &[("stable", 100), ("canary", 0)]),
    );
    let (ok, out, err) = a.ctl(&["apply", "-f", &f]);
    assert!(ok, "{out}{err}");

    // The gateway's bootstrap from B, less A's endpoints: ADS, modules and stats go to B.
    let admin = maille_testkit::free_port();
    let egress = maille_testkit::free_port();
    let (ok, yaml, err) = b.ctl(&[
        "bootstrap",
        "--node",
        "demo/gateway",
        "--admin-port",
        &admin.to_string(),
        "--egress-port",
        &egress.to_string(),
        "--listen-address",
        "127.0.0.1",
    ]);
    assert!(ok, "{err}");
    let mut boot = maille_import::yaml_documents(&yaml).unwrap().remove(0);
    let a_ports = [a.xds_port, a.http_port];
    let mut dropped = 0;
    for c in boot["static_resources"]["clusters"].as_array_mut().unwrap() {
        if let Some(eps) = c["load_assignment"]["endpoints"][0]["lb_endpoints"].as_array_mut() {
            let before = eps.len();
            eps.retain(|e| {
                let port = e["endpoint"]["address"]["socket_address"]["port_value"].as_u64();
                !a_ports.iter().any(|p| Some(u64::from(*p)) == port)
            });
            dropped += before - eps.len();
        }
    }
    assert!(dropped >= 1, "the bootstrap listed A: {yaml}");
    let envoy = maille_testkit::Envoy::start(&boot.to_string(), admin)
        .unwrap_or_else(|e| panic!("Envoy exited ({}):\n{}", e.status, e.log));
    eventually("stable answers", Duration::from_secs(30), || {
        let t = tally(egress, 5);
        (t.get("stable") == Some(&5), t)
    });
    assert_eq!(envoys_on(&a), 0, "no Envoy on the leader");
    assert_eq!(envoys_on(&b), 1);

    apps.error_every["canary"].store(2, Ordering::Relaxed);
    let on = std::sync::Arc::new(AtomicBool::new(true));
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let bg = background_traffic(egress, on.clone(), sent.clone());
    let doc = serde_json::json!([{"rollout": {"meshName": "demo", "rolloutName": "r", "spec": {
        "virtualRouterName": "colorteller", "routeName": "color",
        "stable": "stable", "canary": "canary",
        "stepWeight": 50, "stepDuration": {"unit": "s", "value": 60},
        "analysis": {"interval": {"unit": "s", "value": 5}, "minRequests": 10, "failureLimit": 1,
                     "successRate": {"min": 0.9}}}}}]);
    let f = write_spec(dirs[1].path(), "rollout.json", &doc);
    let (ok, out, err) = b.ctl(&["apply", "-f", &f]);
    assert!(ok, "{out}{err}");
    let st = eventually("rolled back by A", Duration::from_secs(60), || {
        let st = a.get("/v1/rollouts/demo/r");
        (st["phase"] == "RolledBack", st)
    });
    on.store(false, Ordering::Relaxed);
    bg.join().unwrap();
    let failed: Vec<&Value> = st["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "fail")
        .collect();
    assert!(!failed.is_empty(), "{st}");
    let rate = failed[0]["canary"]["successRate"].as_f64().unwrap();
    assert!((0.3..0.7).contains(&rate), "{rate}: {st}");
    assert!(
        failed[0]["stable"]["requests"].as_u64().unwrap() > 0,
        "{st}"
    );
    eventually(
        "the Envoy is back on stable",
        Duration::from_secs(10),
        || {
            let t = tally(egress, 20);
            (t.get("stable") == Some(&20), t)
        },
    );
    drop(envoy);
}

// A server taking another's change reads every resource's key but only the resources
// written since it last read, in one transaction with the version.
#[test]
fn a_catch_up_reads_only_what_was_written_since() {
    use maille_control::etcd_store::{EtcdAddress, EtcdStore, EtcdTls};
    use maille_control::store::Store;
    let etcd = Etcd::start(1);
    let store = EtcdStore::connect(
        &EtcdAddress::parse(&etcd.store_url()).unwrap(),
        &EtcdTls::default(),
    )
    .unwrap();
    let path = maille_testkit::repo_root().join("deploy/examples/colorteller/local/colorapp.json");
    let mut all = maille_import::import_paths(&[path], &Default::default())
        .unwrap()
        .resources;
    assert!(all.len() > 3);
    store.commit(1, &all, &[]).unwrap();
    let first = store.load_since(None).unwrap();
    assert_eq!((first.version, first.changed.len()), (1, all.len()));
    assert!(first.keys.is_none(), "read from the start: every resource");
    let since = first.revision.expect("etcd has revisions");

    // One resource changed, one deleted.
    let gone = all.pop().unwrap().key();
    let changed = all[0].clone();
    store
        .commit(
            2,
            std::slice::from_ref(&changed),
            std::slice::from_ref(&gone),
        )
        .unwrap();
    let d = store.load_since(Some(since)).unwrap();
    assert_eq!(d.version, 2);
    assert_eq!(
        d.changed.keys().cloned().collect::<Vec<_>>(),
        [changed.key()],
        "only what was written since"
    );
    let keys = d.keys.expect("every key");
    assert_eq!(keys.len(), all.len());
    assert!(!keys.contains(&gone));
    assert!(d.revision.unwrap() > since);
    // Nothing since: nothing read but the keys.
    let again = store.load_since(d.revision).unwrap();
    assert!(again.changed.is_empty());
    assert_eq!(again.keys.unwrap().len(), all.len());
}
