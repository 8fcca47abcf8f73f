//! The Envoy dynamic-module glue (Linux shared library): the same [`Circuit`] as the wasm
//! filter, with the same admissions, local answers, log lines, signals and refusals, through
//! `maille-dynamic-module`.
//!
//! Where the wasm build keeps records in proxy-wasm shared data and batches per worker, this
//! one keeps them in the process ([`Store::global`]): every outcome is counted at once under
//! the cluster's lock, and a change made on one worker is seen by the next request on any.
//! Signals are queued as they happen (in `generation` order per cluster) and sent from
//! Envoy's main thread, one at a time, through an HTTP callout that belongs to no request.
//! Metrics are labelled by cluster, because Envoy 1.40 refuses new metrics once a dynamic
//! module's configuration has loaded: `/stats` shows
//! `dynamicmodulescustom.maille_breaker.<what>.cluster.<cluster>` where the wasm build shows
//! `wasmcustom.maille_breaker.<cluster>.<what>`. The counts reach Envoy from the main thread,
//! every second and at every state change.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use maille_dynamic_module::{
    coarse_now_ms, log, CalloutResponse, CalloutResult, ConfigContext, Configured, CounterVec,
    GaugeVec, HeadersStatus, HttpFilter, HttpFilterConfig, HttpFilterHandle, Level, MainThread,
    Wake,
};
use maille_filter_config::breaker::BreakerConfig;

use crate::store::{ClusterCircuit, Store};
use crate::{signal_body, Admission, Circuit, Outcome, State, Transition};

/// Prefix of log lines and metrics.
const NAME: &str = "maille_breaker";
/// How often counts are reported to Envoy when nothing changes state.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Signals waiting to be sent, at most; beyond, the oldest are dropped (and logged).
const MAX_PENDING_SIGNALS: usize = 256;

/// The metrics, one series per cluster.
#[derive(Debug)]
struct Metrics {
    requests: CounterVec,
    failures: CounterVec,
    rejections: CounterVec,
    trips: CounterVec,
    state: GaugeVec,
}

/// Signals waiting for Envoy's main thread, and the one under way.
#[derive(Debug, Default)]
struct Outbox {
    pending: VecDeque<(String, Transition)>,
    in_flight: Option<u64>,
}

/// One loaded configuration of the breaker filter, shared by every worker.
#[derive(Debug)]
pub struct BreakerModule {
    circuit: Circuit,
    store: &'static Store,
    metrics: Metrics,
    outbox: Mutex<Outbox>,
    /// Main thread only: the state each cluster's gauge was last set to.
    reported: Mutex<HashMap<String, State>>,
    /// An untracked cluster was logged already (once per configuration).
    warned_untracked: AtomicBool,
}

impl BreakerModule {
    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a change for the control endpoint. Called with the cluster's record locked,
    /// so one cluster's changes are queued in generation order.
    fn queue_signal(&self, cluster: &str, t: Transition) {
        if self.circuit.config().signal.is_none() {
            return;
        }
        let mut out = self.outbox();
        if out.pending.len() >= MAX_PENDING_SIGNALS {
            if let Some((c, old)) = out.pending.pop_front() {
                log(
                    Level::Warn,
                    &format!(
                        "{NAME}: signal queue full: dropped {c} {} -> {}",
                        old.from.as_str(),
                        old.to.as_str()
                    ),
                );
            }
        }
        out.pending.push_back((cluster.to_owned(), t));
    }

    /// Logs the changes a request made and wakes the main thread for the signals and metrics.
    fn changed(&self, config: &Configured<BreakerModule>, cluster: &str, changes: &[Transition]) {
        for t in changes {
            log(
                Level::Info,
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
        }
        config.notify_main_thread();
    }

    /// The cluster a request goes to: the route's cluster as Envoy resolves it now, else the
    /// configured header. Behind the canary filter (which writes that header and re-routes)
    /// the route's cluster is the one the canary chose; the route is also what a client
    /// cannot name by sending the header itself. (The wasm build reads the header first: a
    /// wasm filter's header read costs more than a property read here.)
    /// `last` is the cluster this stream object found before (objects are reused by
    /// worker, and a worker's requests mostly go to the same few clusters).
    fn cluster_of(
        &self,
        envoy: &HttpFilterHandle<'_>,
        last: &mut Option<(Box<[u8]>, Arc<ClusterCircuit>)>,
    ) -> bool {
        let header = &self.circuit.config().cluster_header;
        let Some(name) = envoy
            .route_cluster()
            .filter(|v| !v.is_empty())
            .or_else(|| envoy.request_header(header).filter(|v| !v.is_empty()))
        else {
            return false;
        };
        if last.as_ref().is_some_and(|(n, _)| **n == *name) {
            return true;
        }
        match self.store.cluster(&String::from_utf8_lossy(name)) {
            Ok(c) => {
                *last = Some((name.into(), c));
                true
            }
            Err(e) => {
                if !self.warned_untracked.swap(true, Ordering::Relaxed) {
                    log(
                        Level::Warn,
                        &format!("{NAME}: not tracking a cluster ({e}); its requests pass unchecked (logged once)"),
                    );
                }
                false
            }
        }
    }

    /// Reports the counts and states that changed since the last report.
    fn report(&self, main: &mut MainThread<'_>) {
        let m = &self.metrics;
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        for c in self.store.clusters() {
            let taken = c.counts().take();
            let name = [c.name()];
            for (counter, n) in [
                (m.requests, taken.requests),
                (m.failures, taken.failures),
                (m.rejections, taken.rejections),
                (m.trips, taken.trips),
            ] {
                if n > 0 {
                    if let Err(e) = main.increment_counter_vec(counter, &name, n) {
                        log(
                            Level::Warn,
                            &format!("{NAME}: cluster {}: counter: {e}", c.name()),
                        );
                    }
                }
            }
            let state = c.state();
            if reported.get(c.name()) != Some(&state) {
                match main.set_gauge_vec(m.state, &name, state as u64) {
                    Ok(()) => {
                        reported.insert(c.name().to_owned(), state);
                    }
                    Err(e) => log(
                        Level::Warn,
                        &format!("{NAME}: cluster {}: gauge: {e}", c.name()),
                    ),
                }
            }
        }
    }

    /// Sends the next queued signal unless one is under way.
    fn send_next(&self, main: &mut MainThread<'_>) {
        let Some(signal) = &self.circuit.config().signal else {
            return;
        };
        loop {
            let (cluster, t) = {
                let mut out = self.outbox();
                if out.in_flight.is_some() {
                    return;
                }
                match out.pending.pop_front() {
                    Some(next) => next,
                    None => return,
                }
            };
            let body = signal_body(&cluster, &t);
            let headers = [
                (":method", "POST"),
                (":path", signal.path.as_str()),
                ("host", signal.authority.as_str()),
                ("content-type", "application/json"),
            ];
            match main.http_callout(
                &signal.cluster,
                &headers,
                body.as_bytes(),
                signal.timeout_millis,
            ) {
                Ok(id) => {
                    self.outbox().in_flight = Some(id);
                    return;
                }
                Err(e) => log(
                    Level::Warn,
                    &format!(
                        "{NAME}: signal for {cluster} ({} -> {}) not sent: {e}",
                        t.from.as_str(),
                        t.to.as_str()
                    ),
                ),
            }
        }
    }
}

impl HttpFilterConfig for BreakerModule {
    const NAME: &'static str = NAME;
    type Filter = BreakerStream;

    fn new(cx: &mut ConfigContext<'_>, config: &[u8]) -> Result<Self, String> {
        // An absent configuration means all defaults.
        let config = if config.is_empty() { b"{}" } else { config };
        let config =
            BreakerConfig::from_json(config).map_err(|e| format!("invalid configuration: {e}"))?;
        let counter = |cx: &mut ConfigContext<'_>, what: &str| {
            let name = format!("{NAME}.{what}");
            cx.define_counter_vec(&name, &["cluster"])
                .map_err(|e| format!("metric {name}: {e}"))
        };
        let metrics = Metrics {
            requests: counter(cx, "requests")?,
            failures: counter(cx, "failures")?,
            rejections: counter(cx, "rejections")?,
            trips: counter(cx, "trips")?,
            state: cx
                .define_gauge_vec(&format!("{NAME}.state"), &["cluster"])
                .map_err(|e| format!("metric {NAME}.state: {e}"))?,
        };
        cx.tick_every(REPORT_EVERY);
        log(
            Level::Info,
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
        Ok(BreakerModule {
            circuit: Circuit::new(config),
            store: Store::global(),
            metrics,
            outbox: Mutex::new(Outbox::default()),
            reported: Mutex::new(HashMap::new()),
            warned_untracked: AtomicBool::new(false),
        })
    }

    fn new_filter(&self) -> BreakerStream {
        BreakerStream {
            cluster: None,
            admitted: false,
            probe: false,
            started: None,
        }
    }

    /// Keeps the cluster found last: the next request on this worker likely goes there too.
    fn reuse_filter(&self, filter: &mut BreakerStream) {
        filter.admitted = false;
        filter.probe = false;
        filter.started = None;
    }

    fn on_main_thread(&self, main: &mut MainThread<'_>, _why: Wake) {
        self.report(main);
        self.send_next(main);
    }

    fn on_callout_done(&self, main: &mut MainThread<'_>, id: u64, response: &CalloutResponse<'_>) {
        {
            let mut out = self.outbox();
            if out.in_flight == Some(id) {
                out.in_flight = None;
            }
        }
        match (response.result, response.status()) {
            (CalloutResult::Success, Some(s)) if (200..300).contains(&s) => {}
            (CalloutResult::Success, Some(s)) => log(
                Level::Warn,
                &format!("{NAME}: signal call {id} answered {s}"),
            ),
            (CalloutResult::Success, None) => {
                log(Level::Warn, &format!("{NAME}: signal call {id}: no status"))
            }
            _ => log(
                Level::Warn,
                &format!("{NAME}: signal call {id} failed (endpoint unreachable or timed out)"),
            ),
        }
        self.send_next(main);
    }
}

/// A stream's filter.
#[derive(Debug)]
pub struct BreakerStream {
    /// The upstream cluster (its name as Envoy gave it, and its circuit), kept when the
    /// object is reused for another stream.
    cluster: Option<(Box<[u8]>, Arc<ClusterCircuit>)>,
    /// This stream went upstream: its outcome counts.
    admitted: bool,
    /// Admitted as a half-open probe.
    probe: bool,
    /// When the request headers arrived, if latency counts.
    started: Option<Instant>,
}

impl HttpFilter for BreakerStream {
    type Config = BreakerModule;

    fn on_request_headers(
        &mut self,
        config: &Configured<BreakerModule>,
        envoy: &mut HttpFilterHandle<'_>,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        if !config.cluster_of(envoy, &mut self.cluster) {
            return HeadersStatus::Continue;
        }
        let Some((_, cluster)) = &self.cluster else {
            return HeadersStatus::Continue;
        };
        let circuit = &config.circuit;
        if circuit.config().failure_on.latency_millis.is_some() {
            self.started = Some(Instant::now());
        }
        let mut changes = Vec::new();
        let admission = cluster.admit(circuit, coarse_now_ms, |name, t| {
            config.queue_signal(name, t);
            changes.push(t);
        });
        if !changes.is_empty() {
            config.changed(config, cluster.name(), &changes);
        }
        match admission {
            Admission::Allow => {}
            Admission::Probe => self.probe = true,
            Admission::Reject { retry_after_ms } => {
                let retry = retry_after_ms.div_ceil(1000).max(1).to_string();
                let marker = format!("open; cluster={}", cluster.name());
                let body = format!("circuit open for upstream cluster {}\n", cluster.name());
                envoy.send_response(
                    503,
                    &[
                        ("retry-after", retry.as_bytes()),
                        (&circuit.config().circuit_header, marker.as_bytes()),
                        ("content-type", b"text/plain"),
                    ],
                    body.as_bytes(),
                    "maille_breaker_circuit_open",
                );
                return HeadersStatus::StopIteration;
            }
        }
        self.admitted = true;
        HeadersStatus::Continue
    }

    fn on_response_headers(
        &mut self,
        config: &Configured<BreakerModule>,
        envoy: &mut HttpFilterHandle<'_>,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        if !std::mem::take(&mut self.admitted) {
            return HeadersStatus::Continue;
        }
        let Some((_, cluster)) = &self.cluster else {
            return HeadersStatus::Continue;
        };
        let circuit = &config.circuit;
        // Envoy's `response.code` costs a fraction of a `:status` header read.
        let status = envoy
            .response_code()
            .and_then(|c| u32::try_from(c).ok())
            .or_else(|| {
                envoy
                    .response_header(":status")
                    .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u32>().ok())
            })
            .unwrap_or(0);
        // Only a 5xx can carry Envoy's reset details: skip the lookup otherwise.
        let reset = circuit.config().failure_on.resets
            && status >= 500
            && envoy.response_code_details().is_some_and(|d| {
                d.starts_with(b"upstream_reset") || d.starts_with(b"no_healthy_upstream")
            });
        let latency_ms = self.started.map_or(0, |t| t.elapsed().as_millis() as u64);
        let failed = circuit.is_failure(&Outcome {
            status,
            reset,
            latency_ms,
        });
        let mut changes = Vec::new();
        cluster.outcome(circuit, coarse_now_ms(), failed, self.probe, |name, t| {
            config.queue_signal(name, t);
            changes.push(t);
        });
        if !changes.is_empty() {
            config.changed(config, cluster.name(), &changes);
        }
        HeadersStatus::Continue
    }
}
