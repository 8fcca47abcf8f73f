//! Rollout analysis from CloudWatch, against a local CloudWatch (moto): the numbers a
//! collector would export for the canary and the stable, read with GetMetricData, and a
//! rollout that rolls back on them. Built with the `cloudwatch` feature only.

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
use maille_api::{Phase, Verdict};
use maille_control::cloudwatch::CloudWatchSource;
use maille_control::metrics::MeshMetrics;
use maille_control::modules::Modules;
use maille_control::rollouts::{MetricSource, Rollouts};
use maille_control::store::MemoryStore;
use maille_control::Mesh;
use maille_testkit::{free_port, repo_root};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn put(cw: &aws_sdk_cloudwatch::Client, cluster: &str, total: f64, errors: f64) {
    let dim = |k: &str, v: &str| Dimension::builder().name(k).value(v).build();
    let at = DateTime::from_millis(now_ms());
    cw.put_metric_data()
        .namespace("Maille")
        .metric_data(
            MetricDatum::builder()
                .metric_name("envoy.cluster.upstream_rq_total")
                .dimensions(dim("envoy.cluster_name", cluster))
                .value(total)
                .timestamp(at)
                .build(),
        )
        .metric_data(
            MetricDatum::builder()
                .metric_name("envoy.cluster.upstream_rq_xx")
                .dimensions(dim("envoy.cluster_name", cluster))
                .dimensions(dim("envoy.response_code_class", "5"))
                .value(errors)
                .timestamp(at)
                .build(),
        )
        .send()
        .await
        .expect("PutMetricData");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_reads_cloudwatch_and_rolls_back_on_what_it_says() {
    let port = free_port();
    let moto = maille_testkit::Moto::start_on(port);
    let url = moto.url();
    // The whole test process talks to the local endpoint, as the server would to AWS.
    std::env::set_var("AWS_ENDPOINT_URL", &url);
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let cw = aws_sdk_cloudwatch::Client::new(&config);
    let source = CloudWatchSource::from_env("Maille").await;

    // What a collector exported, read back.
    let t0 = now_ms() as u64;
    put(&cw, "node/colorteller-blue/10013", 100.0, 50.0).await;
    put(&cw, "node/colorteller-white/10011", 200.0, 0.0).await;
    let s = source
        .sample(
            "node/colorteller-blue/10013",
            t0 - 1000,
            now_ms() as u64 + 1000,
        )
        .await
        .unwrap();
    assert_eq!(
        (s.requests, s.errors, s.success_rate),
        (100, 50, Some(0.5)),
        "{s:?}"
    );
    let s = source
        .sample(
            "node/colorteller-white/10011",
            t0 - 1000,
            now_ms() as u64 + 1000,
        )
        .await
        .unwrap();
    assert_eq!((s.requests, s.errors), (200, 0));

    // A rollout whose analysis reads CloudWatch: the canary fails half, it rolls back.
    let store = Arc::new(MemoryStore::default());
    let mesh = Arc::new(Mesh::new(store.clone(), Modules::new(None, "http://x")).unwrap());
    let demo = repo_root().join("deploy/examples/colorteller/local/colorapp.json");
    let mut resources = maille_import::import_paths(&[demo], &Default::default())
        .unwrap()
        .resources;
    let rollout = serde_json::json!([{"rollout": {"meshName": "colorapp", "rolloutName": "blue", "spec": {
        "virtualRouterName": "colorteller-vr", "routeName": "colorteller-route",
        "stable": "colorteller-white", "canary": "colorteller-blue",
        "stepWeight": 50, "stepDuration": {"unit": "s", "value": 60},
        "analysis": {"source": {"type": "cloudwatch", "namespace": "Maille"},
                     "interval": {"unit": "s", "value": 2}, "minRequests": 10,
                     "successRate": {"min": 0.9}}}}}]);
    resources.extend(
        maille_import::import_str(
            "r.json",
            &rollout.to_string(),
            maille_import::Format::ApiJson,
            &Default::default(),
        )
        .unwrap()
        .resources,
    );
    mesh.apply(resources, false).await.unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let source: Arc<dyn MetricSource> = Arc::new(source);
    let (rollouts, _sup) = Rollouts::start(
        mesh,
        store,
        Arc::new(MeshMetrics::default()),
        Some(source),
        None,
        rx,
    );
    let feeder = {
        let cw = cw.clone();
        tokio::spawn(async move {
            loop {
                put(&cw, "node/colorteller-blue/10013", 40.0, 20.0).await;
                put(&cw, "node/colorteller-white/10011", 40.0, 0.0).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = rollouts.get("colorapp", "blue");
        if st.as_ref().is_some_and(|s| s.phase == Phase::RolledBack) {
            break st.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no rollback: {st:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    feeder.abort();
    let failed = st
        .checks
        .iter()
        .find(|c| c.verdict == Verdict::Fail)
        .unwrap();
    assert!(failed.canary.requests >= 10, "{failed:?}");
    assert!(failed.canary.success_rate.unwrap() < 0.9, "{failed:?}");
    assert!(failed.stable.requests > 0, "{failed:?}");
    drop(moto);
}
