//! What an apply costs in a large mesh: N virtual nodes (two behind each of N/2 services,
//! each service a router with one route; every node calls three services), then one-route
//! weight changes, each timed from the call to the new snapshot being served. The baseline in
//! the same run is what every apply used to cost: translating every node once.
//!
//! `cargo bench -p maille-control --bench apply` (part of `make bench-control`);
//! `APPLY_NODES=1000,10000` (the default) sets the sizes, `APPLY_ROUNDS=50` the changes.

use maille_control::modules::Modules;
use maille_control::store::MemoryStore;
use maille_control::Mesh;
use maille_model::Resource;
use maille_translate::{node_config, NodeOptions, World};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn service(i: usize) -> String {
    format!("svc-{i}.mesh.local")
}

fn route(i: usize, w: (u32, u32)) -> serde_json::Value {
    json!({"route": {"meshName": "big", "virtualRouterName": format!("vr-{i}"), "routeName": "r",
        "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
            {"virtualNode": format!("n-{}", 2 * i), "weight": w.0},
            {"virtualNode": format!("n-{}", 2 * i + 1), "weight": w.1}]}}}}})
}

fn mesh_docs(nodes: usize) -> Vec<serde_json::Value> {
    let services = nodes / 2;
    let mut docs = vec![json!({"mesh": {"meshName": "big", "spec": {}}})];
    for n in 0..nodes {
        // Three services, spread over the mesh.
        let backends: Vec<_> = (1..=3)
            .map(|k| json!({"virtualService": {"virtualServiceName": service((n * 7919 + k * 104_729) % services)}}))
            .collect();
        docs.push(
            json!({"virtualNode": {"meshName": "big", "virtualNodeName": format!("n-{n}"), "spec": {
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": format!("n-{n}.local")}},
            "backends": backends}}}),
        );
    }
    for i in 0..services {
        docs.push(
            json!({"virtualRouter": {"meshName": "big", "virtualRouterName": format!("vr-{i}"),
            "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}}}),
        );
        docs.push(route(i, (1, 0)));
        docs.push(
            json!({"virtualService": {"meshName": "big", "virtualServiceName": service(i),
            "spec": {"provider": {"virtualRouter": {"virtualRouterName": format!("vr-{i}")}}}}}),
        );
    }
    docs
}

fn resources(docs: &[serde_json::Value]) -> Vec<Resource> {
    maille_import::import_str(
        "big.json",
        &serde_json::Value::Array(docs.to_vec()).to_string(),
        maille_import::Format::ApiJson,
        &Default::default(),
    )
    .expect("the generated mesh imports")
    .resources
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let sizes: Vec<usize> = std::env::var("APPLY_NODES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds: usize = std::env::var("APPLY_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| nodes | resources | first apply | one-route apply p50 | max | nodes affected (median) | translate every node (old cost of any apply) | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for nodes in sizes {
        let docs = mesh_docs(nodes);
        let all = resources(&docs);
        let mesh = Mesh::new(
            Arc::new(MemoryStore::default()),
            Modules::new(None, "http://x"),
        )
        .unwrap();
        let t = Instant::now();
        rt.block_on(mesh.apply(all.clone(), false))
            .expect("applies");
        let first = t.elapsed();
        let mut times = Vec::new();
        let mut affected = Vec::new();
        for k in 0..rounds {
            let i = (k * 31) % (nodes / 2);
            let change = resources(&[
                json!({"mesh": {"meshName": "big", "spec": {}}}),
                route(i, (1, 1 + k as u32 % 3)),
            ]);
            let change: Vec<Resource> = change
                .into_iter()
                .filter(|r| matches!(r, Resource::Route(_)))
                .collect();
            let t = Instant::now();
            let r = rt.block_on(mesh.apply(change, false)).expect("applies");
            times.push(t.elapsed());
            affected.push(r.affected_nodes);
        }
        affected.sort();
        // Baseline: one translation of every node, as each apply did before.
        let snap = mesh.current();
        let callers = maille_translate::callers(&snap.resources);
        let world = World {
            resources: &snap.resources,
            modules: &snap.modules,
            cloud_map: &maille_translate::NO_CLOUD_MAP,
            callers: &callers,
        };
        let t = Instant::now();
        for n in 0..nodes {
            std::hint::black_box(node_config(
                world,
                "big",
                &format!("n-{n}"),
                &NodeOptions::default(),
            ));
        }
        let every = t.elapsed();
        let p50 = median(times.clone());
        println!(
            "| {nodes} | {} | {:.0} ms | {:.2} ms | {:.2} ms | {} | {:.0} ms | {:.0}x |",
            all.len(),
            first.as_secs_f64() * 1e3,
            p50.as_secs_f64() * 1e3,
            times.iter().max().unwrap().as_secs_f64() * 1e3,
            affected[affected.len() / 2],
            every.as_secs_f64() * 1e3,
            every.as_secs_f64() / p50.as_secs_f64(),
        );
    }
}
