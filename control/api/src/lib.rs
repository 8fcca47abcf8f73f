//! The control server's admin API: the paths, and the typed request and answer bodies that
//! the server writes and `maillectl` (or any client) reads. One definition for both sides,
//! so a field renamed on one side cannot silently read as missing on the other.
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | POST | [`paths::APPLY`] | [`ApplyRequest`] → [`ApplyReport`] |
//! | POST | [`paths::DELETE`] | [`DeleteRequest`] → [`ApplyReport`] |
//! | GET | [`paths::RESOURCES`] `?kind=&mesh=` | [`ResourcesAnswer`] |
//! | GET | [`paths::STATUS`] | [`StatusAnswer`] |
//! | GET | [`paths::NODES`]`/{node id}` | [`NodeAnswer`] |
//! | GET | [`paths::BOOTSTRAP`] `?node=...` ([`BootstrapQuery`]) | an Envoy bootstrap |
//! | GET | [`paths::NODE_TOKEN`] `?node=...` | [`NodeTokenAnswer`] (admin only) |
//! | GET | `/v1/modules/{name}.wasm` | a filter module |
//! | POST | [`paths::SIGNAL`] | [`BreakerSignal`] (from the breaker filter) |
//! | GET | [`paths::SIGNALS`] | [`SignalsAnswer`] |
//! | GET | [`paths::ROLLOUTS`] | [`RolloutsAnswer`] |
//! | GET | [`paths::ROLLOUTS`]`/{mesh}/{name}` | [`RolloutStatus`] |
//! | POST | [`paths::ROLLOUTS`]`/{mesh}/{name}/{promote,pause,resume,abort}` | [`RolloutStatus`] |
//! | GET | `/` | the web console |
//!
//! Every refusal is an [`ErrorBody`]; a refused apply lists each problem with its resource
//! and field path.
#![forbid(unsafe_code)]

use maille_model::{Key, Resource};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The API's paths.
pub mod paths {
    /// Create or replace resources.
    pub const APPLY: &str = "/v1/apply";
    /// Delete resources.
    pub const DELETE: &str = "/v1/delete";
    /// The stored resources.
    pub const RESOURCES: &str = "/v1/resources";
    /// Connected Envoys.
    pub const STATUS: &str = "/v1/status";
    /// What one node is served (followed by `/<node id>`).
    pub const NODES: &str = "/v1/nodes";
    /// An Envoy bootstrap.
    pub const BOOTSTRAP: &str = "/v1/bootstrap";
    /// A node's token, which fetches that node's bootstrap and nothing else (admin only).
    pub const NODE_TOKEN: &str = "/v1/node-token";
    /// Filter module downloads (followed by `/<name>.wasm`).
    pub const MODULES: &str = "/v1/modules";
    /// Where breaker filters post their state changes.
    pub const SIGNAL: &str = "/v1/signals/breaker";
    /// The breaker signals received.
    pub const SIGNALS: &str = "/v1/signals";
    /// Liveness.
    pub const HEALTH: &str = "/healthz";
    /// Rollouts.
    pub const ROLLOUTS: &str = "/v1/rollouts";
    /// What one upstream cluster did, by the stats this server's Envoys sent it
    /// (`?cluster=&fromMillis=&toMillis=`): the leader's rollout analysis adds up every
    /// server's.
    pub const MESH_STATS: &str = "/v1/mesh-stats";
    /// A request header every change (apply, delete, a rollout's actions) must carry, with
    /// the client's name: a browser cannot send it cross-site without a CORS preflight this
    /// server never grants, so another web page cannot make a change (CSRF).
    pub const CLIENT_HEADER: &str = "x-maille-client";
}

/// `POST /v1/apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyRequest {
    /// The resources to create or replace.
    pub resources: Vec<Resource>,
    /// Check and report, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /v1/delete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteRequest {
    /// The resources to delete.
    pub keys: Vec<Key>,
    /// Check and report, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What an apply or delete changed (or, on a dry run, would change).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// The version now served (unchanged on a dry run or when nothing changed).
    pub version: u64,
    /// Created resources.
    pub created: Vec<String>,
    /// Changed resources.
    pub updated: Vec<String>,
    /// Resources given that were already as given.
    pub unchanged: Vec<String>,
    /// Deleted resources.
    pub deleted: Vec<String>,
    /// Parts of the spec Envoy will not see, for the nodes this change affects.
    pub warnings: Vec<String>,
    /// How many virtual nodes' Envoy configurations this change affects.
    #[serde(default)]
    pub affected_nodes: usize,
}

/// One problem of a refused apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// The resource (`virtualNode/colorapp/blue`).
    pub resource: String,
    /// The field path in it (`spec.listeners[0].portMapping.port`), possibly empty.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The body of every refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// For a refused apply: each problem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ErrorBody {
    /// An error with a message only.
    pub fn new(error: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            errors: Vec::new(),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)?;
        for e in &self.errors {
            write!(f, "\n  {}: ", e.resource)?;
            if !e.path.is_empty() {
                write!(f, "{}: ", e.path)?;
            }
            f.write_str(&e.message)?;
        }
        Ok(())
    }
}

/// `GET /v1/resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourcesAnswer {
    /// The version served.
    pub version: u64,
    /// The resources, in key order.
    pub resources: Vec<Resource>,
}

/// A filter module the server serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedModule {
    /// Where Envoys fetch it.
    pub url: String,
    /// Hex sha256 of its bytes.
    pub sha256: String,
}

/// A NACK as Envoy sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    /// The version Envoy refused.
    pub version: String,
    /// Envoy's error message.
    pub message: String,
    /// When (seconds since the epoch).
    pub at: f64,
}

/// What one connected Envoy has of one resource type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    /// Last version sent.
    pub sent: String,
    /// Last version Envoy acknowledged.
    pub acked: Option<String>,
    /// Last refusal, kept until a later version is acknowledged.
    pub last_nack: Option<Nack>,
}

/// One connected Envoy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientStatus {
    /// Node id.
    pub node: String,
    /// Peer address.
    pub peer: String,
    /// Connected since (seconds since the epoch).
    pub connected_at: f64,
    /// Per resource type (LDS, RDS, CDS, EDS, ECDS).
    pub types: BTreeMap<String, TypeStatus>,
    /// Highest snapshot version this Envoy has fully acknowledged.
    pub synced_version: u64,
    /// Time from that snapshot's apply to the last ACK that completed it, in milliseconds.
    pub sync_millis: Option<f64>,
    /// What was not translated for this node.
    pub warnings: Vec<String>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusAnswer {
    /// The version served.
    pub version: u64,
    /// The filter modules served, by name.
    pub modules: BTreeMap<String, ServedModule>,
    /// The connected Envoys.
    pub clients: Vec<ClientStatus>,
    /// Among servers sharing a store: whether this one leads (runs the rollouts), and which
    /// does. Absent for a server alone on its store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderStatus>,
    /// What this server asks AWS Cloud Map for the mesh's `awsCloudMap` nodes. Present
    /// while a node uses Cloud Map, or once this server has asked it.
    #[serde(default, rename = "cloudMap", skip_serializing_if = "Option::is_none")]
    pub cloud_map: Option<CloudMapStatus>,
}

/// Cloud Map discovery as one server does it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudMapStatus {
    /// Whether this server asks Cloud Map. Among servers sharing a store only the leader
    /// does; the others serve the answers it keeps in the store.
    pub asking: bool,
    /// `DiscoverInstances` calls this server has made since it started.
    pub calls: u64,
    /// The questions the nodes ask (`namespace/service attr=value…`).
    pub queries: usize,
    /// The questions whose last call from this server failed, with the error; they keep
    /// their last answer. Empty on a server that does not ask (see the leader's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failing: BTreeMap<String, String>,
}

/// Who leads among servers sharing a store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderStatus {
    /// Whether the server answering leads.
    pub me: bool,
    /// The leading server's admin address, when one leads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// `GET /v1/nodes/{node id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeAnswer {
    /// The node id.
    pub node: String,
    /// The version served.
    pub version: u64,
    /// Resource names by xDS type (LDS, RDS, CDS, EDS, ECDS).
    pub resources: BTreeMap<String, Vec<String>>,
    /// What was not translated.
    pub warnings: Vec<String>,
}

/// `GET /v1/node-token?node=...`: the node's token, for a deployment that holds one node's
/// credential only (it fetches that node's bootstrap, and opens that node's ADS stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeTokenAnswer {
    /// The node id.
    pub node: String,
    /// The token.
    pub token: String,
}

/// `GET /v1/bootstrap` query. Every value is checked before it reaches the bootstrap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapQuery {
    /// The node id, `mesh/<mesh>/virtualNode/<name>`.
    pub node: String,
    /// Envoy's admin port (9901).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_port: Option<u16>,
    /// Envoy port of the first ingress listener (15000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_port: Option<u16>,
    /// Envoy port of the egress listener (15001).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_port: Option<u16>,
    /// Address Envoy's listeners bind (0.0.0.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_address: Option<String>,
    /// Address of the local application (127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_address: Option<String>,
    /// Port of the node's collector sidecar (OTLP gRPC); enables tracing and stats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_port: Option<u16>,
}

/// A circuit's state, as the breaker filter names it (`closed`, `open`, `half_open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Requests pass.
    Closed,
    /// Requests are answered locally with 503.
    Open,
    /// A few probes pass.
    HalfOpen,
}

/// Longest upstream cluster name a signal may carry (Envoy's stat names are bounded too).
pub const MAX_SIGNAL_CLUSTER_LEN: usize = 1024;
/// Largest signal body the server reads, bytes.
pub const MAX_SIGNAL_BYTES: usize = 4096;

/// A breaker's state change (`POST /v1/signals/breaker`, sent by the breaker filter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BreakerSignal {
    /// The upstream cluster (`node/<virtual node>/<port>`).
    pub cluster: String,
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// Counts the cluster's state changes across workers: orders signals.
    pub generation: u64,
    /// Failures / requests in the window when it changed.
    pub failure_ratio: f64,
    /// Requests in the window.
    pub requests: u64,
    /// Failures in the window.
    pub failures: u64,
    /// Failures in a row.
    pub consecutive_failures: u64,
    /// When, milliseconds since the epoch (the filter's clock).
    pub at_millis: u64,
}

impl BreakerSignal {
    /// Checks what serde cannot: a bounded, non-empty cluster name and a ratio in 0..=1.
    pub fn check(&self) -> Result<(), String> {
        if self.cluster.is_empty() || self.cluster.len() > MAX_SIGNAL_CLUSTER_LEN {
            return Err(format!(
                "cluster: 1 to {MAX_SIGNAL_CLUSTER_LEN} bytes, got {}",
                self.cluster.len()
            ));
        }
        if !(0.0..=1.0).contains(&self.failure_ratio) {
            return Err(format!(
                "failureRatio: must be 0..=1, got {}",
                self.failure_ratio
            ));
        }
        Ok(())
    }
}

/// `GET /v1/signals`: the signals kept, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SignalsAnswer {
    /// The signals.
    pub signals: Vec<BreakerSignal>,
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Moving through its steps (or holding at one for data, a gate or a rollback step).
    #[default]
    Progressing,
    /// Held: by `pause`, or at a pause step until `promote`.
    Paused,
    /// Promoted: the canary serves.
    Succeeded,
    /// Traffic is back on the stable.
    RolledBack,
    /// Stopped by an error (the route or a node went away); traffic as it was left.
    Failed,
}

impl Phase {
    /// Whether the rollout has ended.
    pub fn is_done(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::RolledBack | Phase::Failed)
    }
}

/// What one side (canary or stable) did in an analysis interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// Share of non-5xx answers, when there were requests.
    pub success_rate: Option<f64>,
    /// 99th percentile latency, ms, when there were requests.
    pub p99_millis: Option<f64>,
}

/// `GET /v1/mesh-stats`: one cluster's requests, 5xx answers and latency histogram over
/// whole seconds, as one server's Envoys reported them. Windows of several servers add up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsWindow {
    /// Requests answered.
    pub requests: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// The latency histogram's upper bounds, ms (empty: no histogram reported).
    pub bounds: Vec<f64>,
    /// Its counts, one more than `bounds` (the last: above the last bound).
    pub buckets: Vec<u64>,
    /// The id of the server that answered (among servers sharing a store).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server: String,
}

impl StatsWindow {
    /// Whether its histogram is one: as many counts as bounds and one more, or none.
    pub fn well_formed(&self) -> bool {
        self.buckets.is_empty() || self.buckets.len() == self.bounds.len() + 1
    }

    /// Adds `other`'s counts, and its histogram if its bounds are these (or these are none
    /// yet). `false`: the histograms' bounds differ, so the sum's cannot stand for all the
    /// requests; the caller judges no p99 on it.
    pub fn add(&mut self, other: &StatsWindow) -> bool {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        if other.buckets.is_empty() {
            return true;
        }
        if self.buckets.is_empty() {
            self.bounds = other.bounds.clone();
            self.buckets = vec![0; other.buckets.len()];
        }
        if self.bounds != other.bounds || self.buckets.len() != other.buckets.len() {
            return false;
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a = a.saturating_add(*b);
        }
        true
    }
}

impl Sample {
    /// `requests` answered, `errors` of them 5xx, with their p99: the success rate and the
    /// p99 only when there were requests.
    pub fn from_counts(requests: u64, errors: u64, p99_millis: Option<f64>) -> Sample {
        Sample {
            requests,
            errors,
            success_rate: (requests > 0)
                .then(|| 1.0 - errors.min(requests) as f64 / requests as f64),
            p99_millis: if requests > 0 { p99_millis } else { None },
        }
    }
}

/// One threshold of a check, with the values behind its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measure {
    /// `successRate` or `latencyP99`.
    pub metric: String,
    /// The canary's value.
    pub value: Option<f64>,
    /// The bound it was held to (absolute, or computed from the stable's value).
    pub threshold: f64,
    /// `>=` or `<=`.
    pub op: String,
    /// Whether it held.
    pub pass: bool,
}

/// The verdict of an analysis interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// Every threshold held.
    Pass,
    /// One did not.
    Fail,
    /// Too few canary requests to judge: held, neither passed nor failed.
    NoData,
}

/// One analysis check: when, on what, with which values, and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// When (ms since the epoch).
    pub at_millis: u64,
    /// The step it was made at (0-based).
    pub step: usize,
    /// The canary's weight then.
    pub canary_weight: u32,
    /// The verdict.
    pub verdict: Verdict,
    /// The canary's numbers.
    pub canary: Sample,
    /// The stable's numbers.
    pub stable: Sample,
    /// Each threshold.
    pub measures: Vec<Measure>,
}

/// Something that happened to a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// When (ms since the epoch).
    pub at_millis: u64,
    /// `started`, `step`, `check-failed`, `no-data`, `webhook`, `paused`, `resumed`,
    /// `promoted`, `succeeded`, `rollback`, `rolled-back`, `failed`.
    pub kind: String,
    /// What, in words.
    pub message: String,
}

/// A rollout's state, as the server keeps it (and persists it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Its mesh.
    pub mesh: String,
    /// Its name.
    pub name: String,
    /// The route it drives (`router/route`).
    pub route: String,
    /// The stable and canary virtual nodes.
    pub stable: String,
    /// See `stable`.
    pub canary: String,
    /// Where it is.
    pub phase: Phase,
    /// The current step (0-based; equal to `steps` once past the last).
    pub step: usize,
    /// How many steps.
    pub steps: usize,
    /// The canary's weight now.
    pub canary_weight: u32,
    /// The weights of the steps.
    pub plan: Vec<u32>,
    /// When the current step began (ms since the epoch).
    pub step_started_at_millis: u64,
    /// When the next step is due, if time is what it waits for.
    pub next_step_at_millis: Option<u64>,
    /// What it waits for besides time (a gate, data, a promotion).
    pub waiting_for: Option<String>,
    /// Failed checks so far.
    pub failed_checks: u32,
    /// Intervals without data in a row.
    pub no_data_intervals: u32,
    /// Passing checks in the current step.
    pub passed_in_step: u32,
    /// When the last check was made.
    pub last_check_at_millis: u64,
    /// Stepping back down (a step-back rollback).
    pub rolling_back: bool,
    /// Why it ended, or why it rolls back.
    pub reason: Option<String>,
    /// The checks, oldest first (the newest kept).
    pub checks: Vec<Check>,
    /// The events, oldest first (the newest kept).
    pub events: Vec<Event>,
    /// A hash of the spec this status belongs to: a changed spec starts a new rollout.
    pub spec_hash: u64,
}

/// `GET /v1/rollouts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutsAnswer {
    /// Every rollout's status.
    pub rollouts: Vec<RolloutStatus>,
}

/// What a user can ask of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutAction {
    /// Past a pause step, or straight to promotion.
    Promote,
    /// Hold where it is.
    Pause,
    /// Go on after a pause.
    Resume,
    /// Roll back now.
    Abort,
}

impl RolloutAction {
    /// From its path segment.
    pub fn parse(s: &str) -> Option<RolloutAction> {
        match s {
            "promote" => Some(RolloutAction::Promote),
            "pause" => Some(RolloutAction::Pause),
            "resume" => Some(RolloutAction::Resume),
            "abort" => Some(RolloutAction::Abort),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_windows_of_several_servers_add_up_and_mixed_histograms_are_refused() {
        let w = |requests, errors, bounds: &[f64], buckets: &[u64]| StatsWindow {
            requests,
            errors,
            bounds: bounds.to_vec(),
            buckets: buckets.to_vec(),
            server: String::new(),
        };
        let mut sum = StatsWindow::default();
        assert!(sum.add(&w(10, 1, &[5.0, 10.0], &[6, 3, 1])));
        assert!(sum.add(&w(5, 0, &[], &[])));
        assert!(sum.add(&w(4, 2, &[5.0, 10.0], &[1, 1, 2])));
        assert_eq!((sum.requests, sum.errors), (19, 3));
        assert_eq!(sum.buckets, [7, 4, 3]);
        assert!(sum.well_formed());
        // Other bounds: the counts add, the histogram cannot.
        assert!(!sum.add(&w(1, 0, &[1.0], &[1, 0])));
        assert_eq!(sum.requests, 20);
        assert!(!w(1, 0, &[1.0], &[1, 0, 0]).well_formed());
        // Counts saturate rather than wrap (or panic).
        let mut big = w(u64::MAX, 0, &[], &[]);
        assert!(big.add(&w(1, 0, &[], &[])));
        assert_eq!(big.requests, u64::MAX);
    }

    #[test]
    fn the_breaker_filters_signal_body_reads_as_a_signal() {
        // The body the breaker filter writes (filters/breaker `signal_body`).
        let body = r#"{"cluster":"node/red/9080","from":"closed","to":"open","generation":1,"failureRatio":0.3125,"requests":16,"failures":5,"consecutiveFailures":5,"atMillis":1795753011355}"#;
        let s: BreakerSignal = serde_json::from_str(body).unwrap();
        assert_eq!(s.to, CircuitState::Open);
        assert_eq!(s.consecutive_failures, 5);
        s.check().unwrap();
        // As the breaker writes it (filters/breaker `State::as_str`).
        let half: BreakerSignal =
            serde_json::from_str(&body.replace(r#""from":"closed""#, r#""from":"half_open""#))
                .unwrap();
        assert_eq!(half.from, CircuitState::HalfOpen);
    }

    #[test]
    fn every_signal_the_breaker_writes_reads_as_a_signal() {
        use maille_breaker::{signal_body, State, Transition};
        let states = [State::Closed, State::Open, State::HalfOpen];
        for from in states {
            for to in states {
                let t = Transition {
                    from,
                    to,
                    at_ms: 1_767_225_600_000,
                    requests: 40,
                    failures: 25,
                    consecutive: 3,
                    generation: 7,
                };
                let body = signal_body("node/red/9080", &t);
                let s: BreakerSignal =
                    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
                s.check().unwrap();
                let name = |c: CircuitState| serde_json::to_value(c).unwrap();
                assert_eq!(name(s.from), from.as_str(), "{body}");
                assert_eq!(name(s.to), to.as_str(), "{body}");
            }
        }
    }

    #[test]
    fn refusals_print_each_field_error() {
        let e = ErrorBody {
            error: "the resources are invalid; nothing was changed".into(),
            errors: vec![FieldError {
                resource: "route/m/r/x".into(),
                path: "spec.httpRoute".into(),
                message: "required".into(),
            }],
        };
        assert_eq!(
            e.to_string(),
            "the resources are invalid; nothing was changed\n  route/m/r/x: spec.httpRoute: required"
        );
    }
}
