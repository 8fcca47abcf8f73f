//! The write path in process: refusals that change nothing, dry runs, warnings of the nodes a
//! change affects, and the incremental translation held against translating from scratch
//! over random sequences of changes. No Envoy: part of the fast tier.

mod common;

use maille_control::mesh::{types, NodeResources};
use maille_control::modules::Modules;
use maille_control::store::{MemoryStore, RedbStore, Store};
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

/// A mesh whose `colors` node finds its instances in Cloud Map.
fn cloud_map_mesh() -> Vec<Resource> {
    let text = r#"[
        {"meshName": "demo", "spec": {}, "maille": {"mtls": "DISABLED"}},
        {"meshName": "demo", "virtualNodeName": "gateway", "spec": {
            "listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}],
            "backends": [{"virtualService": {"virtualServiceName": "colorteller.local"}}]}},
        {"meshName": "demo", "virtualNodeName": "colors", "spec": {
            "listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}],
            "serviceDiscovery": {"awsCloudMap": {
                "namespaceName": "demo.local", "serviceName": "colorteller"}}}},
        {"meshName": "demo", "virtualServiceName": "colorteller.local", "spec": {
            "provider": {"virtualNode": {"virtualNodeName": "colors"}}}}
    ]"#;
    maille_import::import_str(
        "cloud-map.json",
        text,
        maille_import::Format::ApiJson,
        &Default::default(),
    )
    .unwrap()
    .resources
}

fn instance(ip: &str) -> maille_translate::CloudMapInstance {
    maille_translate::CloudMapInstance {
        ipv4: Some(ip.into()),
        ipv6: None,
        port: Some(8080),
    }
}

/// The addresses `mesh` serves the gateway for the `colors` node's cluster.
fn served_ips(mesh: &Mesh) -> Vec<String> {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message;
    let snap = mesh.current();
    let res = mesh.node_resources(&snap, "demo", "gateway", &NodeOptions::default());
    let mut ips = Vec::new();
    for (_, any) in res.by_type[types::ENDPOINT].items.iter() {
        let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
        for e in cla.endpoints.iter().flat_map(|l| l.lb_endpoints.iter()) {
            use envoy_types::pb::envoy::config::core::v3::address::Address;
            use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
            if let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier {
                if let Some(Address::SocketAddress(sa)) =
                    ep.address.as_ref().and_then(|a| a.address.as_ref())
                {
                    ips.push(sa.address.clone());
                }
            }
        }
    }
    ips.sort();
    ips
}

// Two servers on one store: the leader's Cloud Map answers reach the other through the
// store (kept with the version), a server started later reads them at once, and the
// answers of a node deleted leave the store with the delete (whichever server makes it),
// so that the node added back is not served the instances of then.
#[tokio::test]
async fn cloud_map_answers_reach_the_servers_that_do_not_ask_through_the_store() {
    let dir = modules_dir();
    let modules = || Modules::new(Some(dir.path().to_path_buf()), "http://127.0.0.1:1");
    let store = Arc::new(MemoryStore::default());
    let leader = Mesh::new(store.clone(), modules()).unwrap();
    let follower = Mesh::new(store.clone(), modules()).unwrap();
    leader.apply(cloud_map_mesh(), false).await.unwrap();
    assert!(follower.sync_from_store().await.unwrap());
    assert_eq!(served_ips(&follower), Vec::<String>::new());

    let q = leader
        .current()
        .cloud_map_queries
        .iter()
        .next()
        .unwrap()
        .clone();
    let answers = |ips: &[&str]| {
        [(q.clone(), ips.iter().map(|ip| instance(ip)).collect())]
            .into_iter()
            .collect()
    };
    assert!(leader
        .update_cloud_map(answers(&["10.0.0.2", "10.0.0.1"]))
        .await
        .unwrap());
    assert_eq!(served_ips(&leader), ["10.0.0.1", "10.0.0.2"]);
    // The same answer again: no new version.
    let v = leader.current().version;
    assert!(!leader
        .update_cloud_map(answers(&["10.0.0.1", "10.0.0.2"]))
        .await
        .unwrap());
    assert_eq!(leader.current().version, v);

    // The follower takes the answers with the version; only the gateway's endpoints change.
    assert!(follower.sync_from_store().await.unwrap());
    assert_eq!(follower.current().version, v);
    assert_eq!(served_ips(&follower), ["10.0.0.1", "10.0.0.2"]);

    // A server started now serves them before any change.
    let late = Mesh::new(store.clone(), modules()).unwrap();
    assert_eq!(served_ips(&late), ["10.0.0.1", "10.0.0.2"]);

    // The Cloud Map node goes, through the follower: its answers leave the store with that
    // change.
    let colors = find(&cloud_map_mesh(), Kind::VirtualNode, "colors");
    let vs = find(&cloud_map_mesh(), Kind::VirtualService, "colorteller.local");
    let gw = find(&cloud_map_mesh(), Kind::VirtualNode, "gateway");
    follower
        .delete(vec![gw.key(), vs.key(), colors.key()], false)
        .await
        .unwrap();
    assert!(store.load_all().unwrap().cloud_map.unwrap().is_empty());
    // Added back before the leader asked Cloud Map again: no server serves the instances of
    // then...
    follower.apply(cloud_map_mesh(), false).await.unwrap();
    assert!(leader.sync_from_store().await.unwrap());
    assert_eq!(served_ips(&leader), Vec::<String>::new());
    assert_eq!(served_ips(&follower), Vec::<String>::new());
    // ...and when Cloud Map gives the same instances again, every server serves them.
    assert!(leader
        .update_cloud_map(answers(&["10.0.0.1", "10.0.0.2"]))
        .await
        .unwrap());
    assert!(follower.sync_from_store().await.unwrap());
    assert_eq!(served_ips(&follower), ["10.0.0.1", "10.0.0.2"]);
    // Nothing left to drop: a poll with no node asking commits nothing.
    let v = leader.current().version;
    assert!(!leader
        .update_cloud_map(answers(&["10.0.0.1", "10.0.0.2"]))
        .await
        .unwrap());
    assert_eq!(leader.current().version, v);
}
