//! Real Envoy 1.40 with its OpenTelemetry tracer, two hops (gateway -> colorteller ->
//! application), sending spans to the collector, which exports to X-Ray (moto): each request
//! comes back as one trace with the hops linked parent to child, the http block filled from
//! Envoy's string-typed tags, the fault flag on a 5xx, and the canary variant annotation.

mod common;

use common::*;
use maille_collector::check_document;
use maille_testkit::{agent, free_port, Envoy};
use serde_json::Value;
use std::time::{Duration, Instant};

fn hop(service: &str, direction: &str, listen: u16, next: u16, app: u16, otlp: u16) -> Envoy {
    let admin = free_port();
    Envoy::from_template(
        "deploy/envoy/traced-hop.yaml",
        &[
            ("ADMIN_PORT", &admin.to_string()),
            ("LISTEN_PORT", &listen.to_string()),
            ("NEXT_PORT", &next.to_string()),
            ("UPSTREAM_PORT", &app.to_string()),
            ("SERVICE", service),
            ("DIRECTION", direction),
            ("OTLP_PORT", &otlp.to_string()),
        ],
        admin,
    )
    .unwrap_or_else(|e| panic!("{service} Envoy exited ({}):\n{}", e.status, e.log))
}

#[test]
fn envoy_traces_across_two_hops_arrive_in_xray_as_one_trace() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start_on(free_port());
    let running = collector(&rt, &moto.url());
    let (gw, ct, app) = (free_port(), free_port(), free_port());
    let _colorteller = hop("colorteller", "INBOUND", ct, app, app, running.grpc_port);
    let _gateway = hop(
        "gateway",
        "OUTBOUND",
        gw,
        ct,
        free_port(),
        running.grpc_port,
    );

    let a = agent();
    let mut ok = a
        .get(&format!("http://127.0.0.1:{gw}/color"))
        .call()
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.body_mut().read_to_string().unwrap().trim(),
        "colorteller"
    );
    let fail = a
        .get(&format!("http://127.0.0.1:{gw}/fail"))
        .call()
        .unwrap();
    assert_eq!(fail.status(), 503);

    // Two requests, a span per hop each.
    wait_exported(&running, 4, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(20);
    let docs: Vec<Value> = loop {
        let ids = trace_ids(&moto.url());
        let docs: Vec<Value> = if ids.is_empty() {
            Vec::new()
        } else {
            stored(&rt, &moto.url(), &ids).into_values().collect()
        };
        if docs.len() >= 4 || Instant::now() > deadline {
            break docs;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(docs.len(), 4, "{docs:#?}");
    for d in &docs {
        check_document(d).unwrap_or_else(|e| panic!("{d}: {e:?}"));
        assert_eq!(
            d["annotations"]["maille_variant"], "colorteller-black",
            "{d}"
        );
    }
    let path_of = |d: &Value| {
        d["http"]["request"]["url"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let failed: Vec<&Value> = docs
        .iter()
        .filter(|d| path_of(d).ends_with("/fail"))
        .collect();
    assert_eq!(failed.len(), 2, "{docs:#?}");
    let (parent, child) = if failed[0].get("parent_id").is_none() {
        (failed[0], failed[1])
    } else {
        (failed[1], failed[0])
    };
    assert_eq!(
        parent["trace_id"], child["trace_id"],
        "one trace across the hops"
    );
    assert_eq!(
        child["parent_id"], parent["id"],
        "colorteller's span is the child of the gateway's"
    );
    assert_eq!(parent["name"], "gateway");
    assert_eq!(child["name"], "colorteller");
    for d in [parent, child] {
        assert_eq!(d["http"]["request"]["method"], "GET", "{d}");
        assert_eq!(
            d["http"]["response"]["status"], 503,
            "Envoy's string status becomes a number: {d}"
        );
        assert_eq!(d["fault"], true, "{d}");
    }
    let fine = docs
        .iter()
        .find(|d| path_of(d).ends_with("/color"))
        .unwrap();
    assert_eq!(fine["http"]["response"]["status"], 200);
    assert!(
        fine.get("fault").is_none() && fine.get("error").is_none(),
        "{fine}"
    );
    rt.block_on(running.stop());
}

#[test]
fn envoy_metrics_arrive_in_cloudwatch_as_deltas() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start_on(free_port());
    let running = collector(&rt, &moto.url());
    let (gw, app) = (free_port(), free_port());
    // One hop in front of its own application.
    let _gateway = hop("gateway", "OUTBOUND", gw, app, app, running.grpc_port);
    // Let Envoy flush its first (baseline) values before the traffic.
    std::thread::sleep(Duration::from_millis(2500));
    let a = agent();
    for _ in 0..10 {
        assert_eq!(
            a.get(&format!("http://127.0.0.1:{gw}/color"))
                .call()
                .unwrap()
                .status(),
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            a.get(&format!("http://127.0.0.1:{gw}/fail"))
                .call()
                .unwrap()
                .status(),
            503
        );
    }
    let client = aws_sdk_cloudwatch::Client::new(&sdk_config(&moto.url()));
    let sum_of = |name: &'static str, dims: Vec<(&'static str, &'static str)>| {
        let client = client.clone();
        rt.block_on(async move {
            use aws_sdk_cloudwatch::types::{Dimension, Statistic};
            let now = std::time::SystemTime::now();
            let out = client
                .get_metric_statistics()
                .namespace("Maille")
                .metric_name(name)
                .set_dimensions(Some(
                    dims.iter()
                        .map(|(k, v)| Dimension::builder().name(*k).value(*v).build())
                        .collect(),
                ))
                .start_time(aws_sdk_cloudwatch::primitives::DateTime::from(
                    now - Duration::from_secs(600),
                ))
                .end_time(aws_sdk_cloudwatch::primitives::DateTime::from(
                    now + Duration::from_secs(600),
                ))
                .period(60)
                .statistics(Statistic::Sum)
                .send()
                .await
                .expect("GetMetricStatistics");
            out.datapoints().iter().filter_map(|d| d.sum()).sum::<f64>()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let total = loop {
        let total = sum_of(
            "envoy.cluster.upstream_rq_total",
            vec![("envoy.cluster_name", "next")],
        );
        if total >= 13.0 || Instant::now() > deadline {
            break total;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let listed = rt
        .block_on(client.list_metrics().namespace("Maille").send())
        .expect("ListMetrics");
    let names: Vec<String> = listed
        .metrics()
        .iter()
        .filter(|m| m.metric_name().unwrap_or("").contains("upstream_rq"))
        .map(|m| {
            format!(
                "{} {:?}",
                m.metric_name().unwrap_or(""),
                m.dimensions()
                    .iter()
                    .map(|d| (d.name().unwrap_or(""), d.value().unwrap_or("")))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    // 13 requests went upstream after the baseline: the deltas add up to exactly that.
    assert_eq!(
        total,
        13.0,
        "sum of upstream_rq_total deltas; stats {}; metrics {names:#?}",
        running.stats.to_json()
    );
    let errors = sum_of(
        "envoy.cluster.upstream_rq_xx",
        vec![
            ("envoy.cluster_name", "next"),
            ("envoy.response_code_class", "5"),
        ],
    );
    assert_eq!(errors, 3.0, "5xx deltas");
    assert!(
        listed
            .metrics()
            .iter()
            .any(|m| m.metric_name() == Some("envoy.cluster.upstream_rq_time")),
        "histograms too"
    );
    rt.block_on(running.stop());
}
