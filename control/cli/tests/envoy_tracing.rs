//! Envoys configured by the control server trace to their collector sidecar: a request from
//! the gateway to white through both nodes' Envoys becomes one trace, the gateway's span the
//! parent of white's, the canary variant carried as an annotation.

mod common;

use common::*;
use maille_collector::{start, Config, SendError, Sink, Unprocessed};
use maille_testkit::free_port;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Keeps every document the collector would send to X-Ray.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Value>>>);

impl Sink for Recorder {
    async fn put(&self, docs: Vec<String>) -> Result<Vec<Unprocessed>, SendError> {
        let mut all = self.0.lock().unwrap();
        for d in docs {
            all.push(serde_json::from_str(&d).unwrap());
        }
        Ok(Vec::new())
    }
}

#[test]
fn requests_through_the_mesh_become_one_trace() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let collector = rt
        .block_on(start(
            Config {
                grpc_addr: "127.0.0.1:0".parse().unwrap(),
                http_addr: "127.0.0.1:0".parse().unwrap(),
                queue_capacity: 1000,
                max_request_bytes: 4 << 20,
                ..Config::default()
            },
            recorder.clone(),
            None,
            None,
        ))
        .unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let apps = Apps::start(&rt, &["white"]);
    let white_ingress = free_port();
    let spec = json!([
        {"meshName": "demo"},
        {"meshName": "demo", "virtualNodeName": "gateway", "spec": {
            "backends": [{"virtualService": {"virtualServiceName": "colorteller.local"}}]}},
        {"meshName": "demo", "virtualNodeName": "white", "spec": {
            "listeners": [{"portMapping": {"port": apps.ports["white"], "protocol": "http"}}],
            "serviceDiscovery": {"endpoints": [{"address": "127.0.0.1", "port": white_ingress}]}}},
        {"meshName": "demo", "virtualServiceName": "colorteller.local", "spec": {
            "provider": {"virtualNode": {"virtualNodeName": "white"}}}}
    ]);
    let f = dir.path().join("mesh.json");
    std::fs::write(&f, spec.to_string()).unwrap();
    let (ok, out, err) = control.ctl(&["apply", "-f", f.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let otlp = Some(collector.grpc_port);
    let (_white, _) = control.envoy_with("demo", "white", white_ingress, otlp);
    let (_gateway, egress) = control.envoy_with("demo", "gateway", free_port(), otlp);
    eventually("gateway reaches white", Duration::from_secs(30), || {
        let t = tally(egress, 1);
        (t.get("white") == Some(&1), t)
    });
    let docs = eventually(
        "both hops' spans reach the collector",
        Duration::from_secs(20),
        || {
            let docs = recorder.0.lock().unwrap().clone();
            let ok = docs.iter().any(|d| d["name"] == "gateway")
                && docs.iter().any(|d| d["name"] == "white");
            (ok, docs)
        },
    );
    let white = docs.iter().find(|d| d["name"] == "white").unwrap();
    let gateway = docs
        .iter()
        .find(|d| d["name"] == "gateway" && d["trace_id"] == white["trace_id"])
        .unwrap_or_else(|| panic!("no gateway span in white's trace: {docs:#?}"));
    for d in [white, gateway] {
        maille_collector::check_document(d).unwrap_or_else(|e| panic!("{d}: {e:?}"));
        assert_eq!(d["http"]["response"]["status"], 200, "{d}");
    }
    assert_eq!(
        white["parent_id"], gateway["id"],
        "white's span is the child of the gateway's"
    );
    assert_eq!(white["annotations"]["maille_variant"], "white", "{white}");
    rt.block_on(collector.stop());
}
