//! Shared by the collector's tests: moto (a real AWS API endpoint), the collector
//! in-process, and reading X-Ray back.

#![allow(dead_code, unreachable_pub)]

use aws_sdk_xray::config::{BehaviorVersion, Credentials, Region};
use maille_collector::export::XraySink;
use maille_collector::server::{start, Config, Running};
use maille_testkit::{agent, repo_root};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// moto's server on a free port, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start_on(port: u16) -> Moto {
        let bin = repo_root().join(".venv/bin/moto_server");
        assert!(bin.exists(), "{} missing: run `make setup`", bin.display());
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let m = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent()
            .get(&format!("http://127.0.0.1:{port}/moto-api/"))
            .call()
            .is_err()
        {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_xray::config::SharedCredentialsProvider::new(
            Credentials::new("test", "test", None, None, "static"),
        ))
        .build()
}

pub fn collector(rt: &tokio::runtime::Runtime, endpoint: &str) -> Running {
    rt.block_on(start(
        Config {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            queue_capacity: 10_000,
            max_request_bytes: 64 * 1024,
            annotations: vec![],
            spool: None,
            dimensions: vec![],
        },
        XraySink::new(&sdk_config(endpoint)),
        Some(maille_collector::metrics_export::CloudWatchSink::new(
            &sdk_config(endpoint),
            "Maille",
            60,
        )),
    ))
    .expect("collector starts")
}

/// All segment documents X-Ray holds for `trace_ids`, by id; a segment stored twice fails.
pub fn stored(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    trace_ids: &[String],
) -> BTreeMap<String, Value> {
    stored_docs(rt, endpoint, trace_ids, false)
}

/// As [`stored`]; with `allow_resent`, a segment stored twice (resent after a crash) is
/// kept once instead of failing the test.
pub fn stored_docs(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    trace_ids: &[String],
    allow_resent: bool,
) -> BTreeMap<String, Value> {
    let client = aws_sdk_xray::Client::new(&sdk_config(endpoint));
    rt.block_on(async {
        let out = client
            .batch_get_traces()
            .set_trace_ids(Some(trace_ids.to_vec()))
            .send()
            .await
            .expect("BatchGetTraces");
        let mut docs = BTreeMap::new();
        for t in out.traces() {
            for seg in t.segments() {
                let v: Value = serde_json::from_str(seg.document().unwrap_or("{}")).unwrap();
                let id = v["id"].as_str().unwrap_or_default().to_owned();
                assert!(
                    docs.insert(id.clone(), v).is_none() || allow_resent,
                    "segment {id} stored twice"
                );
            }
        }
        docs
    })
}

pub fn wait_exported(running: &Running, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let done = running
            .stats
            .exported
            .load(std::sync::atomic::Ordering::Relaxed);
        if done >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {n} exported within {timeout:?}: {}",
            running.stats.to_json()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ids of the traces X-Ray (moto) summarises for the last hour. Read over plain HTTP: moto
/// answers GetTraceSummaries with `"Users": {}`, which the AWS SDK's strict parser refuses.
pub fn trace_ids(endpoint: &str) -> Vec<String> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut r = agent()
        .post(&format!("{endpoint}/TraceSummaries"))
        .header("content-type", "application/json")
        // moto picks the service from the credential scope.
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/xray/aws4_request, SignedHeaders=host, Signature=0",
        )
        .send(serde_json::json!({"StartTime": now - 3600, "EndTime": now + 60}).to_string())
        .unwrap();
    let body = r.body_mut().read_to_string().unwrap();
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["TraceSummaries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["Id"].as_str().map(str::to_owned))
        .collect()
}

/// How many segment documents X-Ray (moto) holds for `trace_ids`, resent copies included.
pub fn raw_segment_count(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    trace_ids: &[String],
) -> usize {
    let client = aws_sdk_xray::Client::new(&sdk_config(endpoint));
    rt.block_on(async {
        let out = client
            .batch_get_traces()
            .set_trace_ids(Some(trace_ids.to_vec()))
            .send()
            .await
            .expect("BatchGetTraces");
        out.traces().iter().map(|t| t.segments().len()).sum()
    })
}
