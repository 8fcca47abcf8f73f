//! Envoys configured by the control server log every request to their collector sidecar,
//! which writes them to CloudWatch Logs (moto, a real AWS API endpoint): each request made
//! through the gateway appears once in the gateway's log group with its status, duration,
//! upstream cluster, variant and trace id, and that trace id is the one X-Ray holds; and
//! requests made while CloudWatch Logs is away for 20 s arrive once it is back.

mod common;

use common::*;
use maille_collector::{start, CloudWatchLogsSink, Config, XraySink};
use maille_testkit::{free_port, Moto};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    use aws_sdk_xray::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test", "test", None, None, "static",
        )))
        .build()
}

/// Every event of every stream of `group`, as JSON.
fn group_events(rt: &tokio::runtime::Runtime, endpoint: &str, group: &str) -> Vec<Value> {
    let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk(endpoint));
    rt.block_on(async {
        let Ok(page) = logs.filter_log_events().log_group_name(group).send().await else {
            return Vec::new();
        };
        page.events()
            .iter()
            .filter_map(|e| serde_json::from_str(e.message()?).ok())
            .collect()
    })
}

#[test]
fn every_request_is_logged_once_in_cloudwatch_logs_with_its_trace_id() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start_on(free_port());
    let collector = rt
        .block_on(start(
            Config {
                grpc_addr: "127.0.0.1:0".parse().unwrap(),
                http_addr: "127.0.0.1:0".parse().unwrap(),
                ..Config::default()
            },
            XraySink::new(&sdk(&moto.url())),
            None,
            Some(CloudWatchLogsSink::new(&sdk(&moto.url()), None)),
        ))
        .unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let apps = Apps::start(&rt, &["blue", "white"]);
    let f = dir.path().join("mesh.json");
    std::fs::write(
        &f,
        colorteller(&apps, &[("white", 1), ("blue", 1)]).to_string(),
    )
    .unwrap();
    let (ok, out, err) = control.ctl(&["apply", "-f", f.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let otlp = Some(collector.grpc_port);
    let (_gateway, egress) = control.envoy_with("demo", "gateway", free_port(), otlp);
    eventually("the gateway routes", Duration::from_secs(30), || {
        let t = tally(egress, 2);
        (
            t.values().sum::<usize>() == 2 && !t.contains_key("HTTP 503"),
            t,
        )
    });
    // The requests of the test, each its own user agent (an `x-request-id` of the client's
    // that is not Envoy's UUID would turn tracing off for it).
    let a = maille_testkit::agent();
    let mut answers = BTreeMap::new();
    for i in 0..20 {
        let id = format!("req-{i:02}");
        let mut r = a
            .get(&format!("http://127.0.0.1:{egress}/"))
            .header("host", "colorteller.local")
            .header("user-agent", &id)
            .call()
            .expect("through Envoy");
        answers.insert(id, r.body_mut().read_to_string().unwrap());
    }
    let events = eventually(
        "the 20 requests reach CloudWatch Logs",
        Duration::from_secs(30),
        || {
            let ev: Vec<Value> = group_events(&rt, &moto.url(), "/maille/gateway")
                .into_iter()
                .filter(|e| {
                    e["user_agent"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("req-"))
                })
                .collect();
            (ev.len() >= 20, ev)
        },
    );
    // Once each, with what App Mesh's line holds and the mesh's fields.
    let mut by_id: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in &events {
        by_id
            .entry(e["user_agent"].as_str().unwrap().to_owned())
            .or_default()
            .push(e);
    }
    assert_eq!(
        by_id.keys().collect::<Vec<_>>(),
        answers.keys().collect::<Vec<_>>()
    );
    let mut traces = Vec::new();
    let mut answers_by_trace = BTreeMap::new();
    for (id, evs) in &by_id {
        assert_eq!(evs.len(), 1, "{id} logged {} times: {evs:?}", evs.len());
        let e = evs[0];
        let colour = &answers[id];
        assert_eq!(e["response_code"], "200", "{e}");
        assert!(
            e["duration"].as_str().unwrap().parse::<u64>().is_ok(),
            "{e}"
        );
        assert_eq!(e["variant"], colour.as_str(), "{e}");
        assert!(
            e["upstream_cluster"]
                .as_str()
                .unwrap()
                .contains(colour.as_str()),
            "{e}"
        );
        assert_eq!(e["method"], "GET");
        assert_eq!(e["mesh"], "demo", "{e}");
        assert_eq!(e["authority"], "colorteller.local");
        assert!(
            e["request_id"].as_str().unwrap().len() == 36,
            "Envoy's UUID: {e}"
        );
        let line = e["message"].as_str().unwrap();
        assert!(line.contains("\"GET / HTTP/1.1\" 200"), "{line}");
        let t = e["xray_trace_id"].as_str().unwrap();
        assert!(t.starts_with("1-") && t.len() == 35, "{e}");
        traces.push(t.to_owned());
        answers_by_trace.insert(t.to_owned(), colour.clone());
    }
    // The trace ids are X-Ray's: the gateway's segment of each is there.
    let xray = aws_sdk_xray::Client::new(&sdk(&moto.url()));
    let found = eventually("X-Ray holds the traces", Duration::from_secs(30), || {
        let got = rt.block_on(async {
            xray.batch_get_traces()
                .set_trace_ids(Some(traces[..5].to_vec()))
                .send()
                .await
                .map(|o| {
                    o.traces()
                        .iter()
                        .filter_map(|t| t.id().map(str::to_owned))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        });
        (got.len() == 5, got)
    });
    for t in &traces[..5] {
        assert!(found.contains(t), "{t} not in X-Ray: {found:?}");
    }
    // `maillectl traces --trace-id` shows the trace's line under its waterfall.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_maillectl"))
        .args(["traces", "--trace-id", &traces[0]])
        .env("AWS_ENDPOINT_URL", moto.url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with(&format!("trace {}", traces[0])), "{text}");
    let at = text
        .find("access log (1 line,")
        .unwrap_or_else(|| panic!("{text}"));
    let line = text[at..].lines().nth(1).unwrap_or_default();
    assert!(
        line.contains("/maille/gateway")
            && line.contains("200 GET /")
            && line.contains(&format!("variant={}", answers_by_trace[&traces[0]])),
        "{text}"
    );
    // CloudWatch Logs away for 20 s while requests keep coming; then back (moto restarted on
    // its port remembers nothing: the collector makes the group and stream again).
    let port = moto.port;
    drop(moto);
    let away = std::time::Instant::now();
    let mut during = Vec::new();
    for i in 0..20 {
        let id = format!("away-{i:02}");
        a.get(&format!("http://127.0.0.1:{egress}/"))
            .header("host", "colorteller.local")
            .header("user-agent", &id)
            .call()
            .expect("through Envoy while CloudWatch Logs is away");
        during.push(id);
        std::thread::sleep(Duration::from_millis(950));
    }
    let stats = collector.log_stats.as_ref().unwrap();
    assert!(stats.retried() >= 1, "{}", stats.to_json());
    let wait = Duration::from_secs(20).saturating_sub(away.elapsed());
    std::thread::sleep(wait);
    let moto = Moto::start_on(port);
    let back = eventually(
        "the requests made while away reach CloudWatch Logs",
        Duration::from_secs(60),
        || {
            let mut got: Vec<String> = group_events(&rt, &moto.url(), "/maille/gateway")
                .iter()
                .filter_map(|e| e["user_agent"].as_str().map(str::to_owned))
                .filter(|u| u.starts_with("away-"))
                .collect();
            got.sort();
            (got.len() >= during.len(), got)
        },
    );
    assert_eq!(back, during, "each once");
    let stats = collector.log_stats.as_ref().unwrap().to_json();
    assert_eq!(stats["dropped"], serde_json::json!({}), "{stats}");
    rt.block_on(collector.stop());
}
