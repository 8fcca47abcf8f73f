//! Rollouts in process, against the real mesh state and store, with the numbers fed as
//! Envoy's stats sink sends them: steps on time, analysis that holds without data, rolls
//! back on failures, webhook gates, user actions, a breaker trip, and a restart that
//! resumes the same step. No Envoy (the real-traffic suite is maillectl's rollouts.rs).

mod common;

use maille_api::{BreakerSignal, CircuitState, Phase, RolloutAction, RolloutStatus, Verdict};
use maille_control::metrics::{MeshMetrics, PREFIX};
use maille_control::modules::Modules;
use maille_control::rollouts::Rollouts;
use maille_control::store::{RedbStore, Store};
use maille_control::Mesh;
use maille_model::{Key, Kind, Resource};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rollout(spec: Value) -> Resource {
    let mut s = json!({
        "virtualRouterName": "colorteller-vr", "routeName": "colorteller-route",
        "stable": "colorteller-white", "canary": "colorteller-blue"
    });
    for (k, v) in spec.as_object().unwrap() {
        s[k] = v.clone();
    }
    let doc = json!([{"rollout": {"meshName": "colorapp", "rolloutName": "blue", "spec": s}}]);
    maille_import::import_str(
        "r.json",
        &doc.to_string(),
        maille_import::Format::ApiJson,
        &Default::default(),
    )
    .unwrap()
    .resources
    .remove(0)
}

struct Fixture {
    mesh: Arc<Mesh>,
    rollouts: Rollouts,
    metrics: Arc<MeshMetrics>,
    _stop: tokio::sync::watch::Sender<bool>,
    supervisor: tokio::task::JoinHandle<()>,
}

async fn fixture(store: Arc<dyn Store>) -> Fixture {
    let mesh = Arc::new(Mesh::new(store.clone(), Modules::new(None, "http://x")).unwrap());
    let metrics = Arc::new(MeshMetrics::default());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let (rollouts, supervisor) =
        Rollouts::start(mesh.clone(), store, metrics.clone(), None, None, rx);
    Fixture {
        mesh,
        rollouts,
        metrics,
        _stop: stop,
        supervisor,
    }
}

async fn with_mesh() -> Fixture {
    let f = fixture(Arc::new(maille_control::store::MemoryStore::default())).await;
    f.mesh.apply(common::colorapp(), false).await.unwrap();
    f
}

/// The route's weights for white and blue.
fn weights(mesh: &Mesh) -> (u32, u32) {
    let snap = mesh.current();
    let Some(Resource::Route(r)) = snap
        .resources
        .get(&Key {
            kind: Kind::Route,
            mesh: "colorapp".into(),
            name: "colorteller-vr/colorteller-route".into(),
        })
        .map(|r| r.as_ref().clone())
    else {
        panic!("no route")
    };
    let t = &r.spec.http_route.unwrap().action.weighted_targets;
    let w = |n: &str| {
        t.iter()
            .find(|x| x.virtual_node == n)
            .map_or(0, |x| x.weight)
    };
    (w("colorteller-white"), w("colorteller-blue"))
}

async fn until(
    f: &Fixture,
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut(&RolloutStatus) -> bool,
) -> RolloutStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = f.rollouts.get("colorapp", "blue") {
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; status {}",
                serde_json::to_string_pretty(&s).unwrap()
            );
        } else {
            assert!(Instant::now() < deadline, "{what}: no rollout");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One flush of Envoy's delta stats for `cluster`: `total` requests, `errors` 5xx.
fn stats(cluster: &str, total: i64, errors: i64) -> ExportMetricsServiceRequest {
    let doc = json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"name": format!("{PREFIX}.cluster.upstream_rq_total"), "sum": {"aggregationTemporality": 1, "isMonotonic": true,
            "dataPoints": [{"asInt": total.to_string(), "attributes": [{"key": "envoy.cluster_name", "value": {"stringValue": cluster}}]}]}},
        {"name": format!("{PREFIX}.cluster.upstream_rq_xx"), "sum": {"aggregationTemporality": 1, "isMonotonic": true,
            "dataPoints": [{"asInt": errors.to_string(), "attributes": [
                {"key": "envoy.cluster_name", "value": {"stringValue": cluster}},
                {"key": "envoy.response_code_class", "value": {"stringValue": "5"}}]}]}}
    ]}]}]});
    serde_json::from_value(doc).unwrap()
}

/// Feeds traffic every 200 ms while `on` holds: 20 requests to each side, the canary
/// answering `canary_errors` of them with a 5xx.
fn traffic(f: &Fixture, on: Arc<AtomicBool>, canary_errors: i64) -> tokio::task::JoinHandle<()> {
    let m = f.metrics.clone();
    tokio::spawn(async move {
        loop {
            if on.load(Ordering::Relaxed) {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                m.record(
                    &stats("node/colorteller-blue/10013", 20, canary_errors),
                    now,
                );
                m.record(&stats("node/colorteller-white/10011", 20, 0), now);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

#[tokio::test]
async fn steps_on_time_then_promotion() {
    let f = with_mesh().await;
    f.mesh
        .apply(
            vec![rollout(json!({"steps": [
                {"weight": 30, "duration": {"unit": "ms", "value": 1000}},
                {"weight": 60, "duration": {"unit": "ms", "value": 1000}}]}))],
            false,
        )
        .await
        .unwrap();
    let s = until(&f, "step 1", Duration::from_secs(15), |s| {
        s.canary_weight == 30
    })
    .await;
    assert_eq!((s.phase, s.step, s.steps), (Phase::Progressing, 0, 2));
    assert_eq!(weights(&f.mesh), (70, 30));
    until(&f, "step 2", Duration::from_secs(15), |s| {
        s.canary_weight == 60
    })
    .await;
    assert_eq!(weights(&f.mesh), (40, 60));
    let s = until(&f, "success", Duration::from_secs(15), |s| {
        s.phase == Phase::Succeeded
    })
    .await;
    assert_eq!(weights(&f.mesh), (0, 100));
    let kinds: Vec<&str> = s.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["started", "step", "step", "succeeded"], "{kinds:?}");
    // An ended rollout refuses actions, saying why.
    let e = f
        .rollouts
        .act("colorapp", "blue", RolloutAction::Pause)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("has ended"), "{e}");
}

#[tokio::test]
async fn no_data_holds_then_traffic_moves_it_and_failures_roll_it_back() {
    let f = with_mesh().await;
    f.mesh
        .apply(
            vec![rollout(json!({"stepWeight": 25, "maxWeight": 75,
                "analysis": {"interval": {"unit": "ms", "value": 1000}, "minRequests": 10, "failureLimit": 1,
                             "successRate": {"min": 0.9}}}))],
            false,
        )
        .await
        .unwrap();
    // No traffic: the rollout holds at its first step, counting intervals without data.
    let s = until(&f, "no data twice", Duration::from_secs(15), |s| {
        s.no_data_intervals >= 2
    })
    .await;
    assert_eq!(
        (s.phase, s.step, s.canary_weight),
        (Phase::Progressing, 0, 25)
    );
    assert!(s.checks.iter().all(|c| c.verdict == Verdict::NoData));
    assert!(
        s.waiting_for.as_deref().unwrap_or("").starts_with("data:"),
        "{s:?}"
    );
    // Traffic returns, healthy: it goes on.
    let on = Arc::new(AtomicBool::new(true));
    let t = traffic(&f, on.clone(), 0);
    let s = until(&f, "step 2", Duration::from_secs(15), |s| {
        s.canary_weight == 50
    })
    .await;
    let pass = s
        .checks
        .iter()
        .rev()
        .find(|c| c.verdict == Verdict::Pass)
        .unwrap();
    assert!(pass.canary.requests >= 10, "{pass:?}");
    assert_eq!(pass.measures[0].metric, "successRate");
    assert_eq!(pass.measures[0].threshold, 0.9);
    t.abort();
    // The canary fails half its requests: two failed checks (one more than the limit) and
    // it rolls back. (The check that ends step 2 may still see the healthy traffic of the
    // window before: step 3 is there so that the rollout cannot end before the failures.)
    let t = traffic(&f, on, 10);
    let s = until(&f, "rolled back", Duration::from_secs(15), |s| {
        s.phase == Phase::RolledBack
    })
    .await;
    t.abort();
    assert_eq!(s.failed_checks, 2, "{s:?}");
    assert!(
        s.reason
            .as_deref()
            .unwrap()
            .contains("2 failed checks: successRate 0.5"),
        "{s:?}"
    );
    assert_eq!(weights(&f.mesh), (100, 0));
}

#[tokio::test]
async fn a_webhook_gate_halts_until_it_says_yes() {
    let yes = Arc::new(AtomicBool::new(false));
    let y = yes.clone();
    let app = axum::Router::new().fallback(move || {
        let y = y.clone();
        async move {
            if y.load(Ordering::Relaxed) {
                axum::http::StatusCode::OK
            } else {
                axum::http::StatusCode::FORBIDDEN
            }
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await });
    let f = with_mesh().await;
    f.mesh
        .apply(
            vec![rollout(json!({"stepWeight": 50, "stepDuration": {"unit": "ms", "value": 1000},
                "webhooks": [{"name": "qa", "type": "pre-step", "url": format!("http://127.0.0.1:{port}/gate")}],
                "analysis": {"interval": {"unit": "ms", "value": 1000}, "successRate": {"min": 0.5}, "minRequests": 1}}))],
            false,
        )
        .await
        .unwrap();
    let s = until(&f, "halted", Duration::from_secs(15), |s| {
        s.waiting_for
            .as_deref()
            .is_some_and(|w| w.contains("HTTP 403"))
    })
    .await;
    assert_eq!(s.canary_weight, 0, "the gate let a step through");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(f.rollouts.get("colorapp", "blue").unwrap().canary_weight, 0);
    yes.store(true, Ordering::Relaxed);
    let s = until(&f, "gate passed", Duration::from_secs(15), |s| {
        s.canary_weight == 50
    })
    .await;
    assert!(s.events.iter().any(|e| e
        .message
        .contains("halted: webhook qa (pre-step): HTTP 403")));
}

#[tokio::test]
async fn pause_resume_promote_and_abort() {
    let f = with_mesh().await;
    f.mesh
        .apply(
            vec![rollout(json!({"steps": [{"weight": 10, "pause": true}, {"weight": 50, "duration": {"unit": "s", "value": 3600}}]}))],
            false,
        )
        .await
        .unwrap();
    let s = until(
        &f,
        "paused at the pause step",
        Duration::from_secs(15),
        |s| s.phase == Phase::Paused,
    )
    .await;
    assert_eq!(
        (s.canary_weight, s.waiting_for.as_deref()),
        (10, Some("promotion"))
    );
    let e = f
        .rollouts
        .act("colorapp", "blue", RolloutAction::Resume)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("waits for promote"), "{e}");
    let s = f
        .rollouts
        .act("colorapp", "blue", RolloutAction::Promote)
        .await
        .unwrap();
    assert_eq!((s.phase, s.canary_weight), (Phase::Progressing, 50));
    let s = f
        .rollouts
        .act("colorapp", "blue", RolloutAction::Pause)
        .await
        .unwrap();
    assert_eq!(s.phase, Phase::Paused);
    let s = f
        .rollouts
        .act("colorapp", "blue", RolloutAction::Resume)
        .await
        .unwrap();
    assert_eq!(s.phase, Phase::Progressing);
    let s = f
        .rollouts
        .act("colorapp", "blue", RolloutAction::Abort)
        .await
        .unwrap();
    assert_eq!(s.phase, Phase::RolledBack);
    assert_eq!(s.reason.as_deref(), Some("aborted by a user"));
    assert_eq!(weights(&f.mesh), (100, 0));
}

#[tokio::test]
async fn a_breaker_opening_on_the_canary_rolls_back_at_once() {
    let f = with_mesh().await;
    f.mesh
        .apply(
            vec![rollout(
                json!({"stepWeight": 50, "stepDuration": {"unit": "s", "value": 3600}}),
            )],
            false,
        )
        .await
        .unwrap();
    until(&f, "step 1", Duration::from_secs(15), |s| {
        s.canary_weight == 50
    })
    .await;
    let signal = |cluster: &str, to| BreakerSignal {
        cluster: cluster.into(),
        from: CircuitState::Closed,
        to,
        generation: 1,
        failure_ratio: 0.8,
        requests: 10,
        failures: 8,
        consecutive_failures: 5,
        at_millis: 0,
    };
    // Another cluster's breaker, or a closing one, changes nothing.
    f.rollouts
        .on_signal(&signal("node/colorteller-red/10014", CircuitState::Open));
    f.rollouts.on_signal(&signal(
        "node/colorteller-blue/10013",
        CircuitState::HalfOpen,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(weights(&f.mesh), (50, 50));
    let t = Instant::now();
    f.rollouts
        .on_signal(&signal("node/colorteller-blue/10013", CircuitState::Open));
    let s = until(&f, "rolled back", Duration::from_secs(2), |s| {
        s.phase == Phase::RolledBack
    })
    .await;
    println!("breaker signal to route on stable: {:?}", t.elapsed());
    assert_eq!(weights(&f.mesh), (100, 0));
    assert!(s
        .reason
        .unwrap()
        .starts_with("breaker opened on node/colorteller-blue/10013"));
}

#[tokio::test]
async fn a_restarted_server_resumes_the_same_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let step = {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
        let f = fixture(store).await;
        f.mesh.apply(common::colorapp(), false).await.unwrap();
        f.mesh
            .apply(
                vec![rollout(
                    json!({"stepWeight": 20, "stepDuration": {"unit": "ms", "value": 1500}}),
                )],
                false,
            )
            .await
            .unwrap();
        let s = until(&f, "step 2", Duration::from_secs(15), |s| {
            s.canary_weight == 40
        })
        .await;
        // The server stops: its tasks end where they are, saving nothing more.
        let _ = f._stop.send(true);
        let _ = f.supervisor.await;
        s
    };
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
    let f = fixture(store).await;
    // Same step, same weight, at once: no jump.
    let s = f.rollouts.get("colorapp", "blue").unwrap();
    assert_eq!((s.step, s.canary_weight), (step.step, 40));
    assert_eq!(weights(&f.mesh), (60, 40));
    let s = until(&f, "resumed", Duration::from_secs(3), |s| {
        s.events.iter().any(|e| e.kind == "resumed")
    })
    .await;
    assert_eq!(s.step, step.step);
    until(&f, "next step", Duration::from_secs(15), |s| {
        s.canary_weight == 60
    })
    .await;
}

/// A server that answers 200 and records each call's path and JSON body, in order.
async fn recording_hooks() -> (u16, Arc<std::sync::Mutex<Vec<(String, Value)>>>) {
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let c = calls.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: String| {
        let c = c.clone();
        async move {
            let v = serde_json::from_str(&body).unwrap_or(Value::Null);
            c.lock().unwrap().push((uri.path().to_owned(), v));
            axum::http::StatusCode::OK
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await });
    (port, calls)
}

fn hooks(port: u16, kinds: &[&str]) -> Value {
    kinds
        .iter()
        .map(|k| json!({"name": k, "type": k, "url": format!("http://127.0.0.1:{port}/{k}")}))
        .collect()
}

#[tokio::test]
async fn every_webhook_is_called_in_order_with_the_rollout_state() {
    let (port, calls) = recording_hooks().await;
    let f = with_mesh().await;
    let kinds = [
        "pre-rollout",
        "pre-step",
        "confirm-promotion",
        "post-rollout",
        "rollback",
    ];
    f.mesh
        .apply(
            vec![rollout(json!({
                "steps": [{"weight": 50, "duration": {"unit": "ms", "value": 1000}}],
                "webhooks": hooks(port, &kinds)}))],
            false,
        )
        .await
        .unwrap();
    until(&f, "success", Duration::from_secs(15), |s| {
        s.phase == Phase::Succeeded
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !calls
        .lock()
        .unwrap()
        .iter()
        .any(|(p, _)| p == "/post-rollout")
    {
        assert!(
            Instant::now() < deadline,
            "no post-rollout call: {:?}",
            calls.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = calls.lock().unwrap().clone();
    let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/pre-rollout",
            "/pre-step",
            "/confirm-promotion",
            "/post-rollout"
        ],
        "a successful rollout never calls the rollback hook"
    );
    // The body: the hook's type and the rollout's status.
    for (p, body) in &got {
        assert_eq!(
            format!("/{}", body["type"].as_str().unwrap_or("")),
            *p,
            "{body}"
        );
        assert_eq!(body["rollout"]["name"], "blue", "{p}: {body}");
        assert!(body["rollout"]["phase"].is_string(), "{p}: {body}");
    }
}

#[tokio::test]
async fn an_aborted_rollout_calls_its_rollback_webhook() {
    let (port, calls) = recording_hooks().await;
    let f = with_mesh().await;
    f.mesh
        .apply(
            vec![rollout(json!({
                "steps": [{"weight": 30, "duration": {"unit": "s", "value": 600}}],
                "webhooks": hooks(port, &["rollback", "post-rollout"])}))],
            false,
        )
        .await
        .unwrap();
    until(&f, "step 1", Duration::from_secs(15), |s| {
        s.canary_weight == 30
    })
    .await;
    f.rollouts
        .act("colorapp", "blue", RolloutAction::Abort)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = calls.lock().unwrap().clone();
        if let Some((_, body)) = got.iter().find(|(p, _)| p == "/rollback") {
            assert_eq!(body["type"], "rollback", "{body}");
            assert_eq!(body["rollout"]["name"], "blue", "{body}");
            assert_eq!(body["rollout"]["phase"], "RolledBack", "{body}");
            assert!(!got.iter().any(|(p, _)| p == "/post-rollout"), "{got:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no rollback call: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(weights(&f.mesh), (100, 0));
}
