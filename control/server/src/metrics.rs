//! The mesh's own numbers for rollout analysis, with no AWS in between: every generated
//! bootstrap has a second OpenTelemetry stats sink that sends Envoy's counters and
//! histograms, as deltas, to this server (OTLP `MetricsService/Export` on the ADS port).
//! Deltas need no memory of each sender: what arrives is added to the second it arrived in,
//! per upstream cluster.
//!
//! Kept: `cluster.upstream_rq_total`, `cluster.upstream_rq_xx` (class 5) and
//! `cluster.upstream_rq_time` of the mesh's target clusters (`node/<node>/<port>`), for the
//! last hour, for at most [`MAX_CLUSTERS`] clusters. Everything else is read and dropped.

use maille_api::{Sample, StatsWindow};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Seconds of history kept per cluster.
pub const KEEP_SECONDS: u64 = 3600;
/// Clusters tracked; past it, the one heard from least recently is forgotten.
pub const MAX_CLUSTERS: usize = 2000;
/// Largest stats request read, bytes (an Envoy with many clusters sends a few hundred KB).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// The prefix the bootstraps give this sink's metric names.
pub const PREFIX: &str = maille_translate::names::CONTROL_STATS_PREFIX;

/// One second of one cluster.
#[derive(Debug, Clone, Default)]
struct Second {
    requests: u64,
    errors: u64,
    bounds: Vec<f64>,
    buckets: Vec<u64>,
}

#[derive(Debug, Default)]
struct Cluster {
    seconds: BTreeMap<u64, Second>,
    last_heard: u64,
}

/// The numbers per upstream cluster.
#[derive(Debug, Default)]
pub struct MeshMetrics {
    clusters: Mutex<HashMap<String, Cluster>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn number(p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> u64 {
    match p.value {
        Some(number_data_point::Value::AsInt(i)) => i.max(0) as u64,
        Some(number_data_point::Value::AsDouble(d)) if d.is_finite() && d > 0.0 => d as u64,
        _ => 0,
    }
}

/// A window's sample: its success rate and p99.
pub fn to_sample(w: &StatsWindow) -> Sample {
    Sample::from_counts(w.requests, w.errors, p99(&w.bounds, &w.buckets))
}

/// The p99 of a histogram (upper bounds `bounds`, counts per bucket, the last one open),
/// interpolated within its bucket.
pub fn p99(bounds: &[f64], buckets: &[u64]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * 0.99).ceil() as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        if seen + n >= rank && *n > 0 {
            // (A histogram of more counts than bounds and one has no p99.)
            let lo = match i.checked_sub(1) {
                None => 0.0,
                Some(b) => *bounds.get(b)?,
            };
            let Some(hi) = bounds.get(i).copied() else {
                return Some(lo);
            };
            let frac = (rank - seen) as f64 / *n as f64;
            return Some(lo + (hi - lo) * frac);
        }
        seen += n;
    }
    bounds.last().copied()
}

impl MeshMetrics {
    /// Adds what one export request carries, at second `at`.
    pub fn record(&self, req: &ExportMetricsServiceRequest, at: u64) {
        self.record_only(req, at, |_| true)
    }

    /// As [`MeshMetrics::record`], only the clusters `allowed` says (those of the node that
    /// exports: no proxy reports another's).
    pub fn record_only(
        &self,
        req: &ExportMetricsServiceRequest,
        at: u64,
        allowed: impl Fn(&str) -> bool,
    ) {
        let mut adds: Vec<(String, Second)> = Vec::new();
        let suffix = |name: &str| -> Option<String> {
            name.strip_prefix(PREFIX)
                .and_then(|n| n.strip_prefix('.'))
                .map(str::to_owned)
        };
        for rm in &req.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let Some(name) = suffix(&m.name) else {
                        continue;
                    };
                    match (name.as_str(), &m.data) {
                        ("cluster.upstream_rq_total", Some(Data::Sum(s))) => {
                            for p in &s.data_points {
                                if let Some(c) = attr(&p.attributes, "envoy.cluster_name") {
                                    adds.push((
                                        c.to_owned(),
                                        Second {
                                            requests: number(p),
                                            ..Default::default()
                                        },
                                    ));
                                }
                            }
                        }
                        ("cluster.upstream_rq_xx", Some(Data::Sum(s))) => {
                            for p in &s.data_points {
                                if attr(&p.attributes, "envoy.response_code_class") != Some("5") {
                                    continue;
                                }
                                if let Some(c) = attr(&p.attributes, "envoy.cluster_name") {
                                    adds.push((
                                        c.to_owned(),
                                        Second {
                                            errors: number(p),
                                            ..Default::default()
                                        },
                                    ));
                                }
                            }
                        }
                        ("cluster.upstream_rq_time", Some(Data::Histogram(h))) => {
                            for p in &h.data_points {
                                if let Some(c) = attr(&p.attributes, "envoy.cluster_name") {
                                    adds.push((
                                        c.to_owned(),
                                        Second {
                                            bounds: p.explicit_bounds.clone(),
                                            buckets: p.bucket_counts.clone(),
                                            ..Default::default()
                                        },
                                    ));
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        adds.retain(|(cluster, _)| allowed(cluster));
        if adds.is_empty() {
            return;
        }
        let mut g = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        for (name, add) in adds {
            // Only the mesh's target clusters can be a rollout's.
            if !name.starts_with("node/") {
                continue;
            }
            if !g.contains_key(&name) && g.len() >= MAX_CLUSTERS {
                if let Some(oldest) = g
                    .iter()
                    .min_by_key(|(_, c)| c.last_heard)
                    .map(|(k, _)| k.clone())
                {
                    g.remove(&oldest);
                }
            }
            let c = g.entry(name).or_default();
            c.last_heard = at;
            let s = c.seconds.entry(at).or_default();
            s.requests += add.requests;
            s.errors += add.errors;
            if !add.buckets.is_empty() {
                if s.bounds != add.bounds || s.buckets.len() != add.buckets.len() {
                    s.bounds = add.bounds;
                    s.buckets = add.buckets;
                } else {
                    for (a, b) in s.buckets.iter_mut().zip(add.buckets) {
                        *a += b;
                    }
                }
            }
            while c
                .seconds
                .first_key_value()
                .is_some_and(|(t, _)| *t + KEEP_SECONDS < at)
            {
                c.seconds.pop_first();
            }
        }
    }

    /// What `cluster` did in the whole seconds from `from_ms`'s up to, not including,
    /// `to_ms`'s: the second still filling is left to the next window, so that successive
    /// windows `[a, b)`, `[b, c)` count every delta once.
    pub fn sample(&self, cluster: &str, from_ms: u64, to_ms: u64) -> Sample {
        to_sample(&self.window(cluster, from_ms, to_ms))
    }

    /// The counts behind [`MeshMetrics::sample`], which add up across servers.
    pub fn window(&self, cluster: &str, from_ms: u64, to_ms: u64) -> StatsWindow {
        let g = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let mut w = StatsWindow::default();
        let (from, to) = (from_ms / 1000, to_ms / 1000);
        let Some(c) = g.get(cluster).filter(|_| from < to) else {
            return w;
        };
        for (_, sec) in c.seconds.range(from..to) {
            // A second of other bounds than the first (a changed bootstrap) adds its counts
            // but not its histogram.
            w.add(&StatsWindow {
                requests: sec.requests,
                errors: sec.errors,
                bounds: sec.bounds.clone(),
                buckets: sec.buckets.clone(),
                server: String::new(),
            });
        }
        w
    }

    /// The OTLP service that feeds it.
    /// Each export must carry a node token (`authorization: Bearer`) that `tokens` made, and
    /// counts only for the clusters that node has in `mesh`.
    pub fn service(
        self: &Arc<Self>,
        tokens: Arc<crate::auth::NodeTokens>,
        mesh: Arc<crate::mesh::Mesh>,
    ) -> MetricsServiceServer<Receiver> {
        MetricsServiceServer::new(Receiver(self.clone(), tokens, mesh))
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

/// The OTLP metrics receiver of [`MeshMetrics`].
#[derive(Debug, Clone)]
pub struct Receiver(
    Arc<MeshMetrics>,
    Arc<crate::auth::NodeTokens>,
    Arc<crate::mesh::Mesh>,
);

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let Some(node) = crate::auth::bearer(request.metadata()).and_then(|t| self.1.node_of(t))
        else {
            return Err(tonic::Status::unauthenticated(
                "stats are taken only from proxies with a node token",
            ));
        };
        let clusters = self.2.clusters_of(&node);
        self.0
            .record_only(request.get_ref(), now_secs(), |c| clusters.contains(c));
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::metrics::v1::{
        Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    };

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn sum(name: &str, points: Vec<(Vec<KeyValue>, i64)>) -> Metric {
        Metric {
            name: format!("{PREFIX}.{name}"),
            data: Some(Data::Sum(Sum {
                data_points: points
                    .into_iter()
                    .map(|(a, v)| NumberDataPoint {
                        attributes: a,
                        value: Some(number_data_point::Value::AsInt(v)),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn request(
        cluster: &str,
        total: i64,
        five: i64,
        buckets: Vec<u64>,
    ) -> ExportMetricsServiceRequest {
        let c = || kv("envoy.cluster_name", cluster);
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        sum("cluster.upstream_rq_total", vec![(vec![c()], total)]),
                        sum(
                            "cluster.upstream_rq_xx",
                            vec![
                                (vec![c(), kv("envoy.response_code_class", "5")], five),
                                (
                                    vec![c(), kv("envoy.response_code_class", "2")],
                                    total - five,
                                ),
                            ],
                        ),
                        Metric {
                            name: format!("{PREFIX}.cluster.upstream_rq_time"),
                            data: Some(Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint {
                                    attributes: vec![c()],
                                    explicit_bounds: vec![1.0, 5.0, 10.0, 100.0],
                                    bucket_counts: buckets,
                                    ..Default::default()
                                }],
                                ..Default::default()
                            })),
                            ..Default::default()
                        },
                        // Another sink's name and a non-mesh cluster: ignored.
                        sum("cluster.other", vec![(vec![c()], 1000)]),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn deltas_from_several_envoys_add_up_per_second() {
        let m = MeshMetrics::default();
        m.record(
            &request("node/canary/80", 50, 5, vec![0, 40, 10, 0, 0]),
            100,
        );
        m.record(&request("node/canary/80", 50, 0, vec![0, 50, 0, 0, 0]), 100);
        m.record(
            &request("node/canary/80", 10, 10, vec![0, 0, 0, 0, 10]),
            103,
        );
        m.record(&request("local/80", 10, 10, vec![0, 0, 0, 0, 10]), 100);
        let s = m.sample("node/canary/80", 100_000, 101_000);
        assert_eq!((s.requests, s.errors), (100, 5));
        assert_eq!(s.success_rate, Some(0.95));
        // 100 answers: the 99th is in the 1..5 ms bucket (90 there after 0 below).
        let p = s.p99_millis.unwrap();
        assert!((5.0..=10.0).contains(&p), "{p}");
        // Windows are whole seconds, [from, to): the second still filling is left to the
        // next window, which counts it.
        assert_eq!(m.sample("node/canary/80", 100_000, 103_999).requests, 100);
        assert_eq!(m.sample("node/canary/80", 101_000, 104_000).requests, 10);
        assert_eq!(
            m.sample("node/canary/80", 101_000, 104_000).p99_millis,
            Some(100.0)
        );
        assert_eq!(m.sample("local/80", 0, u64::MAX).requests, 0);
        assert_eq!(m.sample("node/none/1", 0, u64::MAX), Sample::default());
    }

    #[test]
    fn an_export_counts_only_for_the_clusters_allowed() {
        let m = MeshMetrics::default();
        let req = request("node/canary/80", 50, 0, vec![0, 50, 0, 0, 0]);
        m.record_only(&req, 100, |c| c == "node/stable/80");
        assert_eq!(m.sample("node/canary/80", 0, u64::MAX), Sample::default());
        m.record_only(&req, 100, |c| c == "node/canary/80");
        assert_eq!(m.sample("node/canary/80", 0, u64::MAX).requests, 50);
    }

    #[test]
    fn history_and_clusters_are_bounded() {
        let m = MeshMetrics::default();
        for i in 0..(MAX_CLUSTERS as u64 + 10) {
            m.record(
                &request(&format!("node/n{i}/80"), 1, 0, vec![1, 0, 0, 0, 0]),
                i,
            );
        }
        assert_eq!(m.clusters.lock().unwrap().len(), MAX_CLUSTERS);
        assert_eq!(
            m.sample("node/n0/80", 0, u64::MAX).requests,
            0,
            "the oldest went"
        );
        for t in 0..(KEEP_SECONDS + 100) {
            m.record(&request("node/x/80", 1, 0, vec![1, 0, 0, 0, 0]), t);
        }
        let kept = m.clusters.lock().unwrap()["node/x/80"].seconds.len() as u64;
        assert!(kept <= KEEP_SECONDS + 1, "{kept}");
    }

    #[test]
    fn p99_interpolates_in_its_bucket() {
        assert_eq!(p99(&[10.0], &[0, 0]), None);
        assert_eq!(p99(&[10.0, 20.0], &[100, 0, 0]), Some(9.9));
        assert_eq!(p99(&[10.0], &[0, 5]), Some(10.0));
    }
}

/// The mesh's numbers across servers sharing a store: each Envoy sends its stats to the
/// server it is connected to, so the leader's analysis adds this server's to what every
/// other live server answers on [`maille_api::paths::MESH_STATS`]. A server that does not
/// answer makes the sample unavailable (the check counts as no data) rather than judged on
/// part of the traffic.
#[derive(Debug)]
pub struct MeshWide {
    /// This server's.
    pub own: Arc<MeshMetrics>,
    /// Where the live servers are listed.
    pub store: Arc<dyn crate::store::Store>,
    /// This server's own id (not asked).
    pub me: String,
    /// The read token (the same on every server sharing the store).
    pub token: String,
    /// Verifies the other servers with the mesh's CA.
    pub agent: ureq::Agent,
}

/// Longest wait for another server's stats.
pub const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// What server `peer` says of `cluster` from `from_ms` to `to_ms`.
fn ask(
    agent: &ureq::Agent,
    token: &str,
    peer: &str,
    cluster: &str,
    from_ms: u64,
    to_ms: u64,
) -> Result<StatsWindow, String> {
    let failed = |e: &dyn std::fmt::Display| format!("the mesh's stats from {peer}: {e}");
    let mut r = agent
        .get(&format!("{peer}{}", maille_api::paths::MESH_STATS))
        .query("cluster", cluster)
        .query("fromMillis", from_ms.to_string())
        .query("toMillis", to_ms.to_string())
        .header("authorization", &format!("Bearer {token}"))
        .call()
        .map_err(|e| failed(&e))?;
    let status = r.status();
    let body = r
        .body_mut()
        .with_config()
        .limit(1024 * 1024)
        .read_to_string()
        .map_err(|e| failed(&e))?;
    if !status.is_success() {
        return Err(failed(&format!("{status}: {body}")));
    }
    serde_json::from_str(&body).map_err(|e| failed(&e))
}

#[tonic::async_trait]
impl crate::rollouts::MetricSource for MeshWide {
    async fn sample(&self, cluster: &str, from_ms: u64, to_ms: u64) -> Result<Sample, String> {
        let mut w = self.own.window(cluster, from_ms, to_ms);
        let store = self.store.clone();
        let servers = tokio::task::spawn_blocking(move || store.try_servers())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("listing the servers: {e}"))?;
        if !servers.iter().any(|s| s.id == self.me) {
            return Err("this server is not among the live servers yet".into());
        }
        // Each other server once, by its id; two at one address cannot both be asked.
        let others: Vec<crate::store::ServerEntry> =
            servers.into_iter().filter(|s| s.id != self.me).collect();
        for (i, a) in others.iter().enumerate() {
            if let Some(b) = others[i + 1..].iter().find(|b| b.peer_url == a.peer_url) {
                return Err(format!(
                    "servers {} and {} are both at {}: give each its own --peer-address",
                    a.id, b.id, a.peer_url
                ));
            }
        }
        let mut asks = tokio::task::JoinSet::new();
        for s in others {
            let (agent, token, cluster) =
                (self.agent.clone(), self.token.clone(), cluster.to_owned());
            asks.spawn_blocking(move || {
                let w = ask(&agent, &token, &s.peer_url, &cluster, from_ms, to_ms)?;
                if w.server != s.id {
                    return Err(format!(
                        "asked server {} at {}, and {:?} answered",
                        s.id, s.peer_url, w.server
                    ));
                }
                if !w.well_formed() {
                    return Err(format!(
                        "the mesh's stats from {}: {} histogram counts for {} bounds",
                        s.peer_url,
                        w.buckets.len(),
                        w.bounds.len()
                    ));
                }
                Ok(w)
            });
        }
        let mut one_histogram = true;
        while let Some(got) = asks.join_next().await {
            let theirs = got.map_err(|e| e.to_string())??;
            one_histogram &= w.add(&theirs);
        }
        if !one_histogram {
            tracing::warn!(
                cluster,
                "servers report latency histograms of different bounds: no p99 judged"
            );
            return Ok(Sample::from_counts(w.requests, w.errors, None));
        }
        Ok(to_sample(&w))
    }
}
