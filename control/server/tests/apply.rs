//! The write path in process: refusals that change nothing, dry runs, warnings of the nodes a
//! change affects, and the incremental translation held against translating from scratch
//! over random sequences of changes. No Envoy: part of the fast tier.

mod common;

use maille_control::mesh::{types, NodeResources};
use maille_control::modules::Modules;
use maille_control::store::{MemoryStore, RedbStore};
use maille_control::{ApplyError, Mesh};
use maille_model::{Key, Kind, Resource};
use maille_translate::{node_config, NodeOptions, World};
use std::sync::Arc;

fn modules_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::stand_in_modules(dir.path());
    dir
}

fn mesh_in(dir: &tempfile::TempDir) -> Mesh {
    Mesh::new(
        Arc::new(MemoryStore::default()),
        Modules::new(Some(dir.path().to_path_buf()), "http://127.0.0.1:1"),
    )
    .unwrap()
}

fn find(resources: &[Resource], kind: Kind, name: &str) -> Resource {
    resources
        .iter()
        .find(|r| r.key().kind == kind && r.key().name == name)
        .unwrap()
        .clone()
}

fn key(kind: Kind, name: &str) -> Key {
    Key {
        kind,
        mesh: "colorapp".into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn refusals_name_the_field_and_change_nothing() {
    let dir = modules_dir();
    let mesh = mesh_in(&dir);
    mesh.apply(common::colorapp(), false).await.unwrap();
    let v = mesh.current().version;

    // A node whose backend does not exist.
    let mut gw = find(&common::colorapp(), Kind::VirtualNode, "colorgateway");
    if let Resource::VirtualNode(n) = &mut gw {
        n.spec.backends[0].virtual_service.virtual_service_name = "nope.demo.local".into();
    }
    let Err(ApplyError::Invalid(e)) = mesh.apply(vec![gw], false).await else {
        panic!("a dangling backend was applied");
    };
    assert!(
        e.to_string().contains(
            "virtualNode/colorapp/colorgateway: spec.backends[0].virtualService.virtualServiceName: no virtual service named \"nope.demo.local\""
        ),
        "{e}"
    );
    // Deleting what others refer to names who refers to it.
    let Err(ApplyError::Invalid(e)) = mesh
        .delete(vec![key(Kind::VirtualNode, "colorteller-red")], false)
        .await
    else {
        panic!("a referenced node was deleted");
    };
    assert!(
        e.to_string()
            .contains("route/colorapp/colorteller-vr/colorteller-route: spec.httpRoute.action.weightedTargets[2].virtualNode"),
        "{e}"
    );
    let Err(ApplyError::Invalid(e)) = mesh.delete(vec![key(Kind::Mesh, "colorapp")], false).await
    else {
        panic!("a mesh with resources was deleted");
    };
    assert!(e.to_string().contains("meshName: no mesh named"), "{e}");
    assert_eq!(mesh.current().version, v, "a refusal changed the version");
    assert_eq!(mesh.current().resources.len(), common::colorapp().len());
}

#[tokio::test]
async fn dry_runs_report_and_warnings_come_from_the_affected_nodes() {
    // The breaker's module is not in the folder: the gateway's Envoy will not get it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("libmaille_canary.so"), b"canary").unwrap();
    let mesh = mesh_in(&dir);
    let r = mesh.apply(common::colorapp(), false).await.unwrap();
    assert_eq!(r.affected_nodes, 5, "{r:?}");
    let warning =
        "virtualNode/colorapp/colorgateway: filter \"breaker\": module \"libmaille_breaker.so\" is not served";
    assert!(r.warnings.iter().any(|w| w.starts_with(warning)), "{r:?}");
    let v = mesh.current().version;
    let mut f = find(&common::colorapp(), Kind::Filter, "breaker");
    if let Resource::Filter(f) = &mut f {
        f.spec.config["windowMillis"] = serde_json::json!(20000);
    }
    let r = mesh.apply(vec![f.clone()], true).await.unwrap();
    assert_eq!(r.version, v);
    assert_eq!(r.updated, ["filter/colorapp/breaker"]);
    assert_eq!(r.affected_nodes, 1);
    assert!(r.warnings.iter().any(|w| w.starts_with(warning)), "{r:?}");
    assert_eq!(mesh.current().version, v, "a dry run changed the version");
    let r = mesh.apply(vec![f], false).await.unwrap();
    assert_eq!(
        (r.version, r.affected_nodes, r.warnings.len()),
        (v + 1, 1, 1),
        "{r:?}"
    );
    // Applying the same again changes nothing but the one resource.
    let r = mesh.apply(common::colorapp(), false).await.unwrap();
    assert_eq!(r.updated, ["filter/colorapp/breaker"]);
    assert_eq!(r.unchanged.len(), common::colorapp().len() - 1);
}

/// A tiny deterministic generator (xorshift), so a failure repeats.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn same(a: &NodeResources, b: &NodeResources) -> bool {
    types::ALL
        .iter()
        .all(|t| a.by_type.get(t).map(|c| c.hash) == b.by_type.get(t).map(|c| c.hash))
        && a.warnings == b.warnings
}

/// One random change of the demo mesh.
fn change(rng: &mut Rng, base: &[Resource]) -> (Vec<Resource>, Vec<Key>) {
    let tellers = [
        "colorteller-white",
        "colorteller-black",
        "colorteller-blue",
        "colorteller-red",
    ];
    match rng.next(8) {
        0 => {
            let mut r = find(base, Kind::Route, "colorteller-vr/colorteller-route");
            if let Resource::Route(rt) = &mut r {
                for t in &mut rt.spec.http_route.as_mut().unwrap().action.weighted_targets {
                    t.weight = rng.next(4) as u32;
                }
                if rt
                    .spec
                    .http_route
                    .as_ref()
                    .unwrap()
                    .action
                    .weighted_targets
                    .iter()
                    .all(|t| t.weight == 0)
                {
                    rt.spec.http_route.as_mut().unwrap().action.weighted_targets[0].weight = 1;
                }
            }
            (vec![r], vec![])
        }
        1 => {
            // A teller's port moves: the gateway's cluster for it is renamed.
            let t = tellers[rng.next(4) as usize];
            let mut n = find(base, Kind::VirtualNode, t);
            if let Resource::VirtualNode(n) = &mut n {
                n.spec.listeners[0].port_mapping.port = 20000 + rng.next(3) as u32;
            }
            (vec![n], vec![])
        }
        2 => (
            vec![],
            vec![key(Kind::Route, "colorteller-vr/colorteller-canary")],
        ),
        3 => (
            vec![find(base, Kind::Route, "colorteller-vr/colorteller-canary")],
            vec![],
        ),
        4 => {
            let mut f = find(base, Kind::Filter, "breaker");
            if let Resource::Filter(f) = &mut f {
                f.spec.virtual_nodes = if rng.next(2) == 0 {
                    vec!["colorgateway".into()]
                } else {
                    vec!["colorgateway".into(), tellers[rng.next(4) as usize].into()]
                };
            }
            (vec![f], vec![])
        }
        5 => {
            // White calls the colour service too (or stops).
            let mut n = find(base, Kind::VirtualNode, "colorteller-white");
            let mut gw = find(base, Kind::VirtualNode, "colorgateway");
            if let (Resource::VirtualNode(n), Resource::VirtualNode(g)) = (&mut n, &mut gw) {
                if rng.next(2) == 0 {
                    n.spec.backends = g.spec.backends.clone();
                }
            }
            (vec![n], vec![])
        }
        6 => {
            // The colour service served by one node directly, or by its router.
            let mut vs = find(base, Kind::VirtualService, "colorteller.demo.local");
            if rng.next(2) == 0 {
                let mut gvs = find(base, Kind::VirtualService, "colorgateway.demo.local");
                if let (Resource::VirtualService(a), Resource::VirtualService(b)) =
                    (&mut vs, &mut gvs)
                {
                    let mut p = b.spec.provider.clone().unwrap();
                    p.virtual_node.as_mut().unwrap().virtual_node_name =
                        tellers[rng.next(4) as usize].into();
                    a.spec.provider = Some(p);
                }
            }
            (vec![vs], vec![])
        }
        _ => {
            let mut m = find(base, Kind::Mesh, "colorapp");
            if let Resource::Mesh(m) = &mut m {
                if let Some(f) = m.spec.egress_filter.as_mut() {
                    f.kind = if rng.next(2) == 0 {
                        "ALLOW_ALL".into()
                    } else {
                        "DROP_ALL".into()
                    };
                }
            }
            (vec![m], vec![])
        }
    }
}

#[tokio::test]
async fn incremental_translation_equals_translating_from_scratch() {
    let dir = modules_dir();
    let mesh = mesh_in(&dir);
    let base = common::colorapp();
    mesh.apply(base.clone(), false).await.unwrap();
    let nodes = [
        "colorgateway",
        "colorteller-white",
        "colorteller-black",
        "colorteller-blue",
        "colorteller-red",
    ];
    let opts = [
        NodeOptions::default(),
        NodeOptions {
            otlp_port: Some(4317),
            ingress_port: 16000,
            ..NodeOptions::default()
        },
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut applied = 0;
    for step in 0..300 {
        // Every Envoy flavour is asked first, so the cache holds what the change must evict.
        let snap = mesh.current();
        for n in nodes {
            for o in &opts {
                mesh.node_resources(&snap, "colorapp", n, o);
            }
        }
        let (upserts, deletes) = change(&mut rng, &base);
        let what = format!(
            "{:?} {:?}",
            upserts
                .iter()
                .map(|r| r.key().to_string())
                .collect::<Vec<_>>(),
            deletes
        );
        let ok = if deletes.is_empty() {
            mesh.apply(upserts, false).await.is_ok()
        } else {
            mesh.delete(deletes, false).await.is_ok()
        };
        applied += usize::from(ok);
        if step % 50 == 0 {
            // A module changes too.
            std::fs::write(
                dir.path().join("libmaille_breaker.so"),
                format!("breaker {step}"),
            )
            .unwrap();
            assert!(mesh.reload_modules().await.unwrap());
        }
        let snap = mesh.current();
        let callers = maille_translate::callers(&snap.resources);
        let world = World {
            resources: &snap.resources,
            modules: &snap.modules,
            cloud_map: &maille_translate::NO_CLOUD_MAP,
            callers: &callers,
        };
        for n in nodes {
            for o in &opts {
                let cached = mesh.node_resources(&snap, "colorapp", n, o);
                let fresh = NodeResources::from(node_config(world, "colorapp", n, o));
                assert!(same(&cached, &fresh), "step {step} ({what}): {n} is stale");
            }
        }
    }
    assert!(applied > 200, "only {applied} of 300 changes applied");
}

#[tokio::test]
async fn a_restart_serves_what_was_applied() {
    let dir = modules_dir();
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("state.redb");
    let open = || {
        Mesh::new(
            Arc::new(RedbStore::open(&path).unwrap()),
            Modules::new(Some(dir.path().to_path_buf()), "http://127.0.0.1:1"),
        )
        .unwrap()
    };
    let before = {
        let mesh = open();
        mesh.apply(common::colorapp(), false).await.unwrap();
        let snap = mesh.current();
        (
            snap.version,
            mesh.node_resources(&snap, "colorapp", "colorgateway", &NodeOptions::default()),
        )
    };
    let mesh = open();
    let snap = mesh.current();
    assert_eq!(snap.version, before.0);
    let after = mesh.node_resources(&snap, "colorapp", "colorgateway", &NodeOptions::default());
    assert!(same(&before.1, &after));
    // The restarted server knows what each node depends on: a route change reaches the gateway.
    let mut r = find(
        &common::colorapp(),
        Kind::Route,
        "colorteller-vr/colorteller-route",
    );
    if let Resource::Route(rt) = &mut r {
        rt.spec.http_route.as_mut().unwrap().action.weighted_targets[0].weight = 3;
    }
    assert_eq!(mesh.apply(vec![r], false).await.unwrap().affected_nodes, 1);
}
