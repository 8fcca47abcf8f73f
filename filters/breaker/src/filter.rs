//! The proxy-wasm glue: shared records with CAS, local answers, metrics and signals.
//!
//! Host calls go through `proxy_wasm::hostcalls` and their errors are handled here: the
//! SDK's convenience methods unwrap them, and a panic would kill the VM.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use maille_filter_config::breaker::BreakerConfig;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::{signal_body, Admission, Circuit, Outcome, Record, State, Transition};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(BreakerRoot::default()));
}}

/// Prefix of log lines and metrics.
const NAME: &str = "maille_breaker";
/// Shared-data keys: one record per cluster. The version changes with the record's layout,
/// so that old and new VMs side by side during an upgrade never read each other's.
const KEY_PREFIX: &str = "maille_breaker/v2/";
/// How often a worker merges its batched successes into the shared records and sends
/// queued signals.
const TICK: Duration = Duration::from_millis(50);
/// Compare-and-swap attempts before an update is given up (and logged).
const CAS_ATTEMPTS: usize = 64;
/// Merges a worker remembers per cluster, to put back if the record is created again.
const JOURNAL_LEN: usize = 64;
/// Signals waiting to be sent, at most; beyond, the oldest are dropped (and logged).
const MAX_PENDING_SIGNALS: usize = 256;

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// A cluster's shared record (closed and empty when there is none yet) and its CAS value.
fn read(key: &str) -> (Record, Option<u32>) {
    let (bytes, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
    let rec = bytes
        .as_deref()
        .and_then(Record::decode)
        .unwrap_or_default();
    (rec, cas)
}

/// Metric ids of one cluster.
#[derive(Clone, Copy)]
struct ClusterMetrics {
    requests: Option<u32>,
    failures: Option<u32>,
    rejections: Option<u32>,
    trips: Option<u32>,
    state: Option<u32>,
}

impl ClusterMetrics {
    fn define(cluster: &str) -> ClusterMetrics {
        let def = |kind, what: &str| {
            hostcalls::define_metric(kind, &format!("{NAME}.{cluster}.{what}")).ok()
        };
        ClusterMetrics {
            requests: def(MetricType::Counter, "requests"),
            failures: def(MetricType::Counter, "failures"),
            rejections: def(MetricType::Counter, "rejections"),
            trips: def(MetricType::Counter, "trips"),
            state: def(MetricType::Gauge, "state"),
        }
    }
}

fn bump(id: Option<u32>) {
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// What the root context and its streams share.
struct Plugin {
    circuit: Circuit,
    metrics: RefCell<HashMap<String, ClusterMetrics>>,
    /// State changes this worker made, waiting to be sent by the root context.
    signals: RefCell<VecDeque<(String, Transition)>>,
    /// Per cluster, what this worker has not merged into shared data and metrics yet.
    pending: RefCell<HashMap<String, Pending>>,
    /// Per cluster, the state this worker last read or wrote in shared data. While it is
    /// closed, requests are admitted without reading shared data (in Envoy each read costs
    /// about as much as a header read, ~6% of a request); it is refreshed by every merge
    /// (a failure merges at once) and by the timer, so a trip made by another worker is
    /// seen here within one tick.
    states: RefCell<HashMap<String, State>>,
    /// Per cluster, this worker's first merges and the record epoch they are in.
    journals: RefCell<HashMap<String, Journal>>,
}

/// A worker's first [`JOURNAL_LEN`] merges into a cluster's record. A worker that read the
/// key as missing creates it (empty) right after; if it was preempted in between, its
/// create lands on counts others wrote. The record's epoch then differs from the one the
/// journal's merges went into, and they are merged again. Creates only come from reads
/// made before the key first existed, so the first merges are the ones at risk.
#[derive(Default)]
struct Journal {
    epoch: u32,
    merges: Vec<Merge>,
}

/// One merge: successes, then maybe a failure (and whether it was a probe), at `now`.
#[derive(Clone, Copy)]
struct Merge {
    now: u64,
    successes: u32,
    failure: Option<bool>,
}

/// A worker's batch for one cluster. Healthy traffic costs no shared-data write per
/// request: successes are merged on the timer; a failure merges the batch at once.
#[derive(Default, Clone, Copy)]
struct Pending {
    successes: u32,
    requests: i64,
}

impl Plugin {
    fn metrics(&self, cluster: &str) -> ClusterMetrics {
        *self
            .metrics
            .borrow_mut()
            .entry(cluster.to_owned())
            .or_insert_with(|| ClusterMetrics::define(cluster))
    }

    /// Reads the cluster's record, applies `update`, and writes it back with CAS, retrying
    /// when another worker got there first. `update` returns whether the record changed
    /// and a value to hand back.
    ///
    /// A record whose epoch is not the one this worker's journal went into gets the journal
    /// merged again first.
    fn update<T>(
        &self,
        cluster: &str,
        mut update: impl FnMut(&mut Record) -> (bool, T),
    ) -> Option<T> {
        let key = format!("{KEY_PREFIX}{cluster}");
        let mut replayed = Vec::new();
        for _ in 0..CAS_ATTEMPTS {
            let (mut rec, cas) = read(&key);
            let Some(cas) = cas else {
                let (changed, out) = update(&mut rec.clone());
                if !changed {
                    self.remember(cluster, rec.state);
                    return Some(out);
                }
                // The ABI has no create-if-absent: a write to a missing key always lands.
                // So a missing key is created empty, and only CAS writes carry counts.
                if let Err(status) = hostcalls::set_shared_data(&key, Some(&rec.encode()), None) {
                    log(
                        LogLevel::Error,
                        &format!("{NAME}: cluster {cluster}: shared data write failed: {status:?}"),
                    );
                    return None;
                }
                continue;
            };
            if rec.epoch == 0 {
                rec.epoch = cas;
            }
            replayed.clear();
            let replay = self.replay(cluster, &mut rec, &mut replayed);
            let (changed, out) = update(&mut rec);
            if !changed && !replay {
                self.remember(cluster, rec.state);
                return Some(out);
            }
            match hostcalls::set_shared_data(&key, Some(&rec.encode()), Some(cas)) {
                Ok(()) => {
                    self.remember(cluster, rec.state);
                    if let Some(j) = self.journals.borrow_mut().get_mut(cluster) {
                        j.epoch = rec.epoch;
                    }
                    if replay {
                        log(
                            LogLevel::Warn,
                            &format!("{NAME}: cluster {cluster}: the record was created again over counts; merged this worker's again"),
                        );
                    }
                    for t in replayed.drain(..) {
                        self.transitioned(cluster, t);
                    }
                    return Some(out);
                }
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    log(
                        LogLevel::Error,
                        &format!("{NAME}: cluster {cluster}: shared data write failed: {status:?}"),
                    );
                    return None;
                }
            }
        }
        log(
            LogLevel::Warn,
            &format!("{NAME}: cluster {cluster}: gave up after {CAS_ATTEMPTS} CAS conflicts"),
        );
        None
    }

    /// Merges this worker's journal into `rec` again if `rec` is another epoch than the
    /// one the journal went into. Returns whether it did.
    fn replay(&self, cluster: &str, rec: &mut Record, transitions: &mut Vec<Transition>) -> bool {
        let journals = self.journals.borrow();
        let Some(j) = journals.get(cluster) else {
            return false;
        };
        if j.epoch == rec.epoch || j.merges.is_empty() {
            return false;
        }
        for m in &j.merges {
            transitions.extend(self.circuit.record_successes(rec, m.now, m.successes));
            if let Some(probe) = m.failure {
                transitions.extend(self.circuit.record(rec, m.now, true, probe));
            }
        }
        true
    }

    /// Notes a merge made into epoch `epoch`, while the journal has room.
    fn journal(&self, cluster: &str, merge: Merge, epoch: u32) {
        let mut journals = self.journals.borrow_mut();
        // Merges are on the failure path and every tick: no key allocated once it is there.
        if !journals.contains_key(cluster) {
            journals.insert(cluster.to_owned(), Journal::default());
        }
        let Some(j) = journals.get_mut(cluster) else {
            return;
        };
        j.epoch = epoch;
        if j.merges.len() < JOURNAL_LEN {
            j.merges.push(merge);
        }
    }

    fn remember(&self, cluster: &str, state: State) {
        let mut states = self.states.borrow_mut();
        match states.get_mut(cluster) {
            Some(s) => *s = state,
            None => {
                states.insert(cluster.to_owned(), state);
            }
        }
    }

    /// Whether this worker last saw the cluster's circuit closed.
    fn known_closed(&self, cluster: &str) -> bool {
        self.states.borrow().get(cluster) == Some(&State::Closed)
    }

    fn take_pending(&self, cluster: &str) -> Pending {
        self.pending
            .borrow_mut()
            .get_mut(cluster)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Merges a cluster's batched successes, then `failure` if any (an outcome at `now`),
    /// into the shared record in one compare-and-swap; signals what changed. Returns whether
    /// it read the record (there was something to merge).
    fn merge(&self, cluster: &str, now: u64, failure: Option<bool>) -> bool {
        let batch = self.take_pending(cluster);
        if batch.requests > 0 {
            if let Some(id) = self.metrics(cluster).requests {
                let _ = hostcalls::increment_metric(id, batch.requests);
            }
        }
        if batch.successes == 0 && failure.is_none() {
            return false;
        }
        let circuit = &self.circuit;
        let mut changes = Vec::new();
        let merged = self.update(cluster, |rec| {
            changes.clear();
            let before = rec.clone();
            changes.extend(circuit.record_successes(rec, now, batch.successes));
            if let Some(probe) = failure {
                changes.extend(circuit.record(rec, now, true, probe));
            }
            let changed = *rec != before;
            (changed, changed.then_some(rec.epoch))
        });
        // Only what was written is journalled (outcomes an open circuit ignores are not).
        if let Some(Some(epoch)) = merged {
            self.journal(
                cluster,
                Merge {
                    now,
                    successes: batch.successes,
                    failure,
                },
                epoch,
            );
        }
        for t in changes {
            self.transitioned(cluster, t);
        }
        true
    }

    /// The timer: merges every cluster's batch, and re-reads the state of each cluster this
    /// worker knows that had nothing to merge; either way one read per cluster.
    fn sync_all(&self) {
        let mut clusters: Vec<String> = self
            .pending
            .borrow()
            .keys()
            .chain(self.states.borrow().keys())
            .cloned()
            .collect();
        if clusters.is_empty() {
            return;
        }
        clusters.sort_unstable();
        clusters.dedup();
        let now = now_ms();
        for c in clusters {
            if !self.merge(&c, now, None) {
                // A read (and a write only when the journal must be merged again).
                self.update(&c, |_| (false, ()));
            }
        }
    }

    fn transitioned(&self, cluster: &str, t: Transition) {
        let m = self.metrics(cluster);
        if let Some(id) = m.state {
            let _ = hostcalls::record_metric(id, t.to as u64);
        }
        if t.to == State::Open {
            bump(m.trips);
        }
        log(
            LogLevel::Info,
            &format!(
                "{NAME}: cluster {cluster}: {} -> {} (failure ratio {:.2}: {} of {} requests in the window, {} in a row)",
                t.from.as_str(),
                t.to.as_str(),
                t.failure_ratio(),
                t.failures,
                t.requests,
                t.consecutive
            ),
        );
        if self.circuit.config().signal.is_some() {
            let mut q = self.signals.borrow_mut();
            if q.len() >= MAX_PENDING_SIGNALS {
                if let Some((c, old)) = q.pop_front() {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "{NAME}: signal queue full: dropped {c} {} -> {}",
                            old.from.as_str(),
                            old.to.as_str()
                        ),
                    );
                }
            }
            q.push_back((cluster.to_owned(), t));
        }
    }
}

#[derive(Default)]
struct BreakerRoot {
    plugin: Option<Rc<Plugin>>,
    /// The signal call under way: one at a time, so that they arrive in order.
    in_flight: Option<u32>,
}

impl BreakerRoot {
    /// Sends the next queued signal unless one is under way.
    fn send_next(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(plugin) = &self.plugin else { return };
        let Some(signal) = plugin.circuit.config().signal.clone() else {
            return;
        };
        loop {
            let next = plugin.signals.borrow_mut().pop_front();
            let Some((cluster, t)) = next else { return };
            let body = signal_body(&cluster, &t);
            let headers = vec![
                (":method", "POST"),
                (":path", signal.path.as_str()),
                (":authority", signal.authority.as_str()),
                ("content-type", "application/json"),
            ];
            match hostcalls::dispatch_http_call(
                &signal.cluster,
                headers,
                Some(body.as_bytes()),
                vec![],
                Duration::from_millis(signal.timeout_millis),
            ) {
                Ok(token) => {
                    self.in_flight = Some(token);
                    return;
                }
                Err(status) => log(
                    LogLevel::Warn,
                    &format!(
                        "{NAME}: signal for {cluster} ({} -> {}) not sent: {status:?}",
                        t.from.as_str(),
                        t.to.as_str()
                    ),
                ),
            }
        }
    }
}

impl Context for BreakerRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        if self.in_flight == Some(token) {
            self.in_flight = None;
        }
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        match status.as_deref() {
            Some(s) if s.starts_with('2') => {}
            Some(s) => log(
                LogLevel::Warn,
                &format!("{NAME}: signal call {token} answered {s}"),
            ),
            None if num_headers == 0 => log(
                LogLevel::Warn,
                &format!("{NAME}: signal call {token} failed (endpoint unreachable or timed out)"),
            ),
            None => log(
                LogLevel::Warn,
                &format!("{NAME}: signal call {token}: no status"),
            ),
        }
        self.send_next();
    }
}

impl RootContext for BreakerRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        // An absent configuration means all defaults.
        let bytes = if bytes.is_empty() {
            b"{}".to_vec()
        } else {
            bytes
        };
        let config = match BreakerConfig::from_json(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("{NAME}: invalid configuration: {e}"),
                );
                return false;
            }
        };
        if hostcalls::set_tick_period(TICK).is_err() {
            log(LogLevel::Error, &format!("{NAME}: could not set the timer"));
            return false;
        }
        log(
            LogLevel::Info,
            &format!(
                "{NAME}: configured: window {} ms, min {} requests, ratio {}, {} in a row, open {} ms, {} probes",
                config.window_millis,
                config.min_requests,
                config.failure_ratio,
                config.consecutive_failures,
                config.open_millis,
                config.half_open_probes
            ),
        );
        self.plugin = Some(Rc::new(Plugin {
            circuit: Circuit::new(config),
            metrics: RefCell::new(HashMap::new()),
            signals: RefCell::new(VecDeque::new()),
            pending: RefCell::new(HashMap::new()),
            states: RefCell::new(HashMap::new()),
            journals: RefCell::new(HashMap::new()),
        }));
        true
    }

    fn on_tick(&mut self) {
        if let Some(plugin) = &self.plugin {
            plugin.sync_all();
        }
        self.send_next();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BreakerStream {
            plugin: self.plugin.clone(),
            cluster: None,
            probe: false,
            answered_locally: false,
            start_ms: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct BreakerStream {
    plugin: Option<Rc<Plugin>>,
    /// The upstream cluster, once known.
    cluster: Option<String>,
    /// Admitted as a half-open probe.
    probe: bool,
    /// The 503 was ours: not an upstream outcome.
    answered_locally: bool,
    start_ms: u64,
}

impl Context for BreakerStream {}

impl BreakerStream {
    fn upstream_cluster(plugin: &Plugin) -> Option<String> {
        let header = &plugin.circuit.config().cluster_header;
        hostcalls::get_map_value(MapType::HttpRequestHeaders, header)
            .ok()
            .flatten()
            .filter(|v| !v.is_empty())
            .or_else(|| {
                // At request headers Envoy 1.40 knows the route's cluster as
                // `xds.cluster_name`; `cluster_name` only once an upstream is chosen.
                [vec!["xds", "cluster_name"], vec!["cluster_name"]]
                    .into_iter()
                    .find_map(|path| {
                        hostcalls::get_property(path)
                            .ok()
                            .flatten()
                            .and_then(|b| String::from_utf8(b).ok())
                            .filter(|v| !v.is_empty())
                    })
            })
    }
}

impl HttpContext for BreakerStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(plugin) = self.plugin.clone() else {
            return Action::Continue;
        };
        let Some(cluster) = Self::upstream_cluster(&plugin) else {
            return Action::Continue;
        };
        let circuit = &plugin.circuit;
        if circuit.config().failure_on.latency_millis.is_some() {
            self.start_ms = now_ms();
        }
        let mut transition = None;
        // The healthy path: the circuit was closed when this worker last looked; no read.
        let admission = if plugin.known_closed(&cluster) {
            Some(Admission::Allow)
        } else {
            plugin.update(&cluster, |rec| {
                if rec.state == State::Closed {
                    // Closed after all: no clock, no write.
                    return (false, Admission::Allow);
                }
                let (a, changed, t) = circuit.admit(rec, now_ms());
                transition = t;
                (changed, a)
            })
        };
        if let Some(t) = transition {
            plugin.transitioned(&cluster, t);
        }
        match admission.unwrap_or(Admission::Allow) {
            Admission::Allow => {}
            Admission::Probe => self.probe = true,
            Admission::Reject { retry_after_ms } => {
                bump(plugin.metrics(&cluster).rejections);
                self.answered_locally = true;
                let retry = retry_after_ms.div_ceil(1000).max(1).to_string();
                let marker = format!("open; cluster={cluster}");
                let body = format!("circuit open for upstream cluster {cluster}\n");
                let sent = hostcalls::send_http_response(
                    503,
                    vec![
                        ("retry-after", retry.as_str()),
                        (circuit.config().circuit_header.as_str(), marker.as_str()),
                        ("content-type", "text/plain"),
                    ],
                    Some(body.as_bytes()),
                );
                if sent.is_ok() {
                    return Action::Pause;
                }
                // Could not answer locally: let the request through rather than hang it.
                self.answered_locally = false;
            }
        }
        plugin
            .pending
            .borrow_mut()
            .entry(cluster.clone())
            .or_default()
            .requests += 1;
        self.cluster = Some(cluster);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.answered_locally {
            return Action::Continue;
        }
        let (Some(plugin), Some(cluster)) = (self.plugin.clone(), self.cluster.take()) else {
            return Action::Continue;
        };
        let circuit = &plugin.circuit;
        let status = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0);
        // Only a 5xx can carry Envoy's reset details: skip the property lookup otherwise.
        let reset = circuit.config().failure_on.resets
            && status >= 500
            && hostcalls::get_property(vec!["response", "code_details"])
                .ok()
                .flatten()
                .is_some_and(|d| {
                    d.starts_with(b"upstream_reset") || d.starts_with(b"no_healthy_upstream")
                });
        let latency_ms = match circuit.config().failure_on.latency_millis {
            Some(_) => now_ms().saturating_sub(self.start_ms),
            None => 0,
        };
        let failed = circuit.is_failure(&Outcome {
            status,
            reset,
            latency_ms,
        });
        if failed {
            bump(plugin.metrics(&cluster).failures);
            plugin.merge(&cluster, now_ms(), Some(self.probe));
        } else if self.probe {
            let now = now_ms();
            let mut transition = None;
            plugin.update(&cluster, |rec| {
                let before = rec.clone();
                transition = circuit.record(rec, now, false, true);
                (*rec != before, ())
            });
            if let Some(t) = transition {
                plugin.transitioned(&cluster, t);
            }
        } else {
            plugin
                .pending
                .borrow_mut()
                .entry(cluster)
                .or_default()
                .successes += 1;
        }
        Action::Continue
    }
}
