//! What rollouts cost the control server: N concurrent rollouts (one route each, analysis
//! every second on the mesh's own stats, fed as Envoy's sink sends them), for a while; the
//! process's CPU time over the same period without rollouts (the stats feed alone) is the
//! baseline. Prints CPU per rollout per interval.
//!
//! `cargo bench -p maille-control --bench rollouts` (part of `make bench-control`);
//! `ROLLOUTS=100` and `SECONDS=20` by default.

use maille_control::metrics::{MeshMetrics, PREFIX};
use maille_control::modules::Modules;
use maille_control::rollouts::Rollouts;
use maille_control::store::MemoryStore;
use maille_control::Mesh;
use maille_model::Resource;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The process's user + system CPU time.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; after ')' (from the state, field 3)
    // they are the 12th and 13th. Fields before them may be negative (tpgid is -1 without
    // a terminal): index the fields, do not filter them.
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    Duration::from_millis(ticks * 10)
}

fn mesh_docs(n: usize) -> Vec<Value> {
    let mut d = vec![json!({"mesh": {"meshName": "m", "spec": {}}})];
    for i in 0..n {
        for side in ["s", "c"] {
            d.push(json!({"virtualNode": {"meshName": "m", "virtualNodeName": format!("{side}{i}"), "spec": {
                "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": format!("{side}{i}.local")}}}}}));
        }
        d.push(
            json!({"virtualRouter": {"meshName": "m", "virtualRouterName": format!("vr{i}"),
            "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}}}),
        );
        d.push(json!({"route": {"meshName": "m", "virtualRouterName": format!("vr{i}"), "routeName": "r",
            "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
                {"virtualNode": format!("s{i}"), "weight": 100}, {"virtualNode": format!("c{i}"), "weight": 0}]}}}}}));
    }
    d
}

fn rollouts(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"rollout": {"meshName": "m", "rolloutName": format!("r{i}"), "spec": {
            "virtualRouterName": format!("vr{i}"), "routeName": "r",
            "stable": format!("s{i}"), "canary": format!("c{i}"),
            "stepWeight": 10, "stepDuration": {"unit": "s", "value": 3600},
            "analysis": {"interval": {"unit": "s", "value": 1}, "minRequests": 10,
                         "successRate": {"min": 0.99}, "latencyP99": {"maxMillis": 100}}}}})
        })
        .collect()
}

fn import(docs: Vec<Value>) -> Vec<Resource> {
    maille_import::import_str(
        "b.json",
        &Value::Array(docs).to_string(),
        maille_import::Format::ApiJson,
        &Default::default(),
    )
    .expect("imports")
    .resources
}

/// One flush from one Envoy: every cluster's requests, 5xx and latency histogram.
fn flush(n: usize) -> ExportMetricsServiceRequest {
    let mut total = Vec::new();
    let mut xx = Vec::new();
    let mut time = Vec::new();
    for i in 0..n {
        for side in ["s", "c"] {
            let c = json!([{"key": "envoy.cluster_name", "value": {"stringValue": format!("node/{side}{i}/8080")}}]);
            total.push(json!({"asInt": "50", "attributes": c}));
            let mut a5 = c.clone();
            a5.as_array_mut()
                .unwrap()
                .push(json!({"key": "envoy.response_code_class", "value": {"stringValue": "5"}}));
            xx.push(json!({"asInt": "0", "attributes": a5}));
            time.push(json!({"attributes": c, "count": "50", "explicitBounds": [1.0, 5.0, 10.0, 50.0, 100.0],
                             "bucketCounts": ["10", "30", "8", "2", "0", "0"]}));
        }
    }
    serde_json::from_value(json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"name": format!("{PREFIX}.cluster.upstream_rq_total"), "sum": {"aggregationTemporality": 1, "dataPoints": total}},
        {"name": format!("{PREFIX}.cluster.upstream_rq_xx"), "sum": {"aggregationTemporality": 1, "dataPoints": xx}},
        {"name": format!("{PREFIX}.cluster.upstream_rq_time"), "histogram": {"aggregationTemporality": 1, "dataPoints": time}}
    ]}]}]}))
    .expect("an OTLP request")
}

fn main() {
    let n: usize = std::env::var("ROLLOUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let secs: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Arc::new(MemoryStore::default());
        let mesh = Arc::new(Mesh::new(store.clone(), Modules::new(None, "http://x")).unwrap());
        mesh.apply(import(mesh_docs(n)), false).await.unwrap();
        let metrics = Arc::new(MeshMetrics::default());
        let req = Arc::new(flush(n));
        // The stats of 10 gateway Envoys, each flushing every 5 s (2 flushes a second).
        let feed = {
            let (m, req) = (metrics.clone(), req.clone());
            tokio::spawn(async move {
                loop {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    m.record(&req, now);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        let c0 = cpu();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let baseline = cpu() - c0;
        let (_stop, rx) = tokio::sync::watch::channel(false);
        let (ro, _sup) = Rollouts::start(mesh.clone(), store, metrics, None, None, rx);
        mesh.apply(import(rollouts(n)), false).await.unwrap();
        // Let every rollout reach its first step, then measure.
        let t = Instant::now();
        while ro.list().iter().filter(|s| s.canary_weight == 10).count() < n {
            assert!(t.elapsed() < Duration::from_secs(60), "rollouts did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let checks0: usize = ro.list().iter().map(|s| s.checks.len()).sum();
        let c1 = cpu();
        let w = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let with = cpu() - c1;
        let elapsed = w.elapsed();
        let checks: usize = ro.list().iter().map(|s| s.checks.len()).sum::<usize>() - checks0;
        feed.abort();
        let extra = with.saturating_sub(baseline);
        println!("| rollouts | seconds | checks made | CPU, stats feed alone | CPU, with rollouts | CPU per rollout per interval | share of one core |");
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| {n} | {:.0} | {checks} | {:.2} s | {:.2} s | {:.3} ms | {:.2}% |",
            elapsed.as_secs_f64(),
            baseline.as_secs_f64(),
            with.as_secs_f64(),
            extra.as_secs_f64() * 1000.0 / checks.max(1) as f64,
            extra.as_secs_f64() * 100.0 / elapsed.as_secs_f64()
        );
    });
}
