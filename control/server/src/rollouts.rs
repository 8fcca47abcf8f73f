//! Rollouts that move a route's traffic from a stable virtual node to a canary step by step,
//! analyse each interval, promote and roll back by themselves.
//!
//! One task per rollout, written as the rollout reads: gates, steps, checks, promotion. Its
//! weights are applied to the route like any apply (persisted, versioned, sent to every
//! Envoy the route reaches), and its status is persisted at every change, so a restarted
//! server resumes the same step with the weight the route already has. A breaker opening on
//! the canary's cluster rolls back at once.

use crate::analysis::evaluate;
use crate::mesh::Mesh;
use crate::metrics::MeshMetrics;
use crate::store::{Leader, Store, StoreError};
use maille_api::{
    BreakerSignal, Check, CircuitState, Event, Phase, RolloutAction, RolloutStatus, Sample, Verdict,
};
use maille_model::{
    HeaderMatchMethod, HttpRouteHeader, Key, Kind, Promotion, Resource, RollbackMode, Rollout,
    RouteOptions, SourceKind, WebhookKind, WeightedTarget,
};
use maille_translate::names;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};

/// Checks and events kept per rollout.
pub const KEPT: usize = 200;
/// Default webhook timeout.
pub const WEBHOOK_TIMEOUT_MS: u64 = 5000;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where analysis reads the numbers of a cluster over a time window.
#[tonic::async_trait]
pub trait MetricSource: Send + Sync + std::fmt::Debug {
    /// What `cluster` did from `from_ms` to `to_ms` (whole seconds where the source keeps
    /// seconds: successive windows `[a, b)`, `[b, c)` count every request once).
    async fn sample(&self, cluster: &str, from_ms: u64, to_ms: u64) -> Result<Sample, String>;
}

#[tonic::async_trait]
impl MetricSource for MeshMetrics {
    async fn sample(&self, cluster: &str, from_ms: u64, to_ms: u64) -> Result<Sample, String> {
        Ok(MeshMetrics::sample(self, cluster, from_ms, to_ms))
    }
}

enum Cmd {
    Act(RolloutAction, oneshot::Sender<Result<(), String>>),
    Breaker(BreakerSignal),
}

#[derive(Debug)]
struct Running {
    spec_hash: u64,
    tx: mpsc::Sender<Cmd>,
    handle: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Inner {
    mesh: Arc<Mesh>,
    store: Arc<dyn Store>,
    mesh_metrics: Arc<dyn MetricSource>,
    cloudwatch: Option<Arc<dyn MetricSource>>,
    statuses: Mutex<BTreeMap<Key, RolloutStatus>>,
    tasks: Mutex<BTreeMap<Key, Running>>,
    /// Who leads, among servers sharing the store (`None`: this one, alone).
    leader: Option<watch::Receiver<Leader>>,
}

/// Every rollout of the mesh.
#[derive(Debug, Clone)]
pub struct Rollouts {
    inner: Arc<Inner>,
}

fn spec_hash(r: &Rollout) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&r.spec)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

impl Rollouts {
    /// Loads the kept statuses and starts the supervisor, which runs a task for every
    /// rollout of the mesh until `stop`.
    pub fn start(
        mesh: Arc<Mesh>,
        store: Arc<dyn Store>,
        mesh_metrics: Arc<dyn MetricSource>,
        cloudwatch: Option<Arc<dyn MetricSource>>,
        leader: Option<watch::Receiver<Leader>>,
        mut stop: watch::Receiver<bool>,
    ) -> (Rollouts, tokio::task::JoinHandle<()>) {
        let statuses = load_statuses(store.as_ref()).unwrap_or_default();
        let r = Rollouts {
            inner: Arc::new(Inner {
                mesh,
                store,
                mesh_metrics,
                cloudwatch,
                statuses: Mutex::new(statuses),
                tasks: Mutex::new(BTreeMap::new()),
                leader: leader.clone(),
            }),
        };
        let sup = r.clone();
        let handle = tokio::spawn(async move {
            let mut snaps = sup.inner.mesh.subscribe();
            // Alone on its store, a server leads.
            let (_always, mut leader) = match leader {
                Some(l) => (None, l),
                None => {
                    let (tx, rx) = watch::channel(Leader {
                        me: true,
                        holder: None,
                    });
                    (Some(tx), rx)
                }
            };
            let mut leading = false;
            loop {
                let now = leader.borrow_and_update().me;
                if now && !leading {
                    // Where the last leader left each rollout.
                    // Where the last leader left each rollout; not read: no rollout starts
                    // (it would start again from its first step), tried again in a second.
                    match load_statuses(sup.inner.store.as_ref()) {
                        Ok(kept) => {
                            *sup.inner.statuses.lock().unwrap_or_else(|e| e.into_inner()) = kept
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "leading, but the rollouts' statuses are unreadable; trying again in 1 s");
                            tokio::select! {
                                _ = stop.wait_for(|s| *s) => break,
                                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            }
                        }
                    }
                } else if !now && leading {
                    sup.stop_tasks().await;
                }
                leading = now;
                if leading {
                    sup.reconcile();
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    c = snaps.changed() => if c.is_err() { break },
                    c = leader.changed() => if c.is_err() { break },
                }
            }
            sup.stop_tasks().await;
        });
        (r, handle)
    }

    async fn stop_tasks(&self) {
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, t) in tasks {
            t.handle.abort();
            let _ = t.handle.await;
        }
    }

    /// Who leads among servers sharing the store (`None`: this server is alone on it).
    pub fn leader(&self) -> Option<Leader> {
        self.inner.leader.as_ref().map(|l| l.borrow().clone())
    }

    /// Whether rollouts run here; else which server runs them.
    fn leading(&self) -> Result<(), String> {
        match &self.inner.leader {
            None => Ok(()),
            Some(l) => {
                let l = l.borrow();
                if l.me {
                    Ok(())
                } else {
                    Err(match &l.holder {
                        Some(h) => {
                            format!("rollouts run on the leading control server, {h}: ask it")
                        }
                        None => {
                            "no control server leads at the moment (etcd unreachable?); try again"
                                .to_owned()
                        }
                    })
                }
            }
        }
    }

    /// On a server that does not lead, the statuses as the leader keeps them.
    fn refresh(&self) {
        if self.leading().is_err() {
            if let Ok(kept) = load_statuses(self.inner.store.as_ref()) {
                *self
                    .inner
                    .statuses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = kept;
            }
        }
    }
}

/// The statuses kept in `store` (one unreadable is logged and starts again).
fn load_statuses(store: &dyn Store) -> Result<BTreeMap<Key, RolloutStatus>, StoreError> {
    let mut statuses = BTreeMap::new();
    let all = store.rollout_statuses().inspect_err(|e| {
        tracing::error!(error = %e, "rollout statuses unreadable");
    })?;
    for (k, bytes) in all {
        match serde_json::from_slice::<RolloutStatus>(&bytes) {
            Ok(s) => {
                statuses.insert(k, s);
            }
            Err(e) => {
                tracing::error!(rollout = %k, error = %e, "kept rollout status unreadable; it starts again")
            }
        }
    }
    Ok(statuses)
}

impl Rollouts {
    /// Starts, restarts or stops tasks so that each rollout resource has one for its spec.
    fn reconcile(&self) {
        let snap = self.inner.mesh.current();
        let rollouts: Vec<Rollout> = snap
            .resources
            .values()
            .filter_map(|r| match r.as_ref() {
                Resource::Rollout(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<Key> = rollouts
            .iter()
            .map(|r| Resource::Rollout(r.clone()).key())
            .collect();
        // Deleted rollouts: stop, forget.
        let gone: Vec<Key> = tasks
            .keys()
            .filter(|k| !keys.contains(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(t) = tasks.remove(&k) {
                t.handle.abort();
            }
        }
        {
            let mut st = self
                .inner
                .statuses
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let stale: Vec<Key> = st.keys().filter(|k| !keys.contains(k)).cloned().collect();
            for k in stale {
                st.remove(&k);
                let _ = self.inner.store.save_rollout_status(&k, None);
            }
        }
        for (key, ro) in keys.into_iter().zip(rollouts) {
            let hash = spec_hash(&ro);
            if tasks.get(&key).is_some_and(|t| t.spec_hash == hash) {
                continue;
            }
            if let Some(t) = tasks.remove(&key) {
                t.handle.abort();
            }
            let kept = self
                .inner
                .statuses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned()
                .filter(|s| s.spec_hash == hash);
            let status = kept.unwrap_or_else(|| RolloutStatus {
                mesh: ro.mesh_name.clone(),
                name: ro.rollout_name.clone(),
                route: format!("{}/{}", ro.spec.virtual_router_name, ro.spec.route_name),
                stable: ro.spec.stable.clone(),
                canary: ro.spec.canary.clone(),
                plan: ro.spec.plan().iter().map(|(w, _)| *w).collect(),
                steps: ro.spec.plan().len(),
                spec_hash: hash,
                ..Default::default()
            });
            self.inner
                .statuses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), status.clone());
            let (tx, rx) = mpsc::channel(16);
            let run = Run {
                inner: self.inner.clone(),
                key: key.clone(),
                ro,
                status,
                rx,
            };
            let handle = tokio::spawn(run.run());
            tasks.insert(
                key,
                Running {
                    spec_hash: hash,
                    tx,
                    handle,
                },
            );
        }
    }

    /// Every rollout's status.
    pub fn list(&self) -> Vec<RolloutStatus> {
        self.refresh();
        self.inner
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// One rollout's status.
    pub fn get(&self, mesh: &str, name: &str) -> Option<RolloutStatus> {
        self.refresh();
        self.inner
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key(mesh, name))
            .cloned()
    }

    /// Asks a rollout to promote, pause, resume or abort; its status after.
    pub async fn act(
        &self,
        mesh: &str,
        name: &str,
        action: RolloutAction,
    ) -> Result<RolloutStatus, ActError> {
        let k = key(mesh, name);
        self.leading().map_err(ActError::Refused)?;
        let tx = {
            let tasks = self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner());
            tasks.get(&k).map(|t| t.tx.clone())
        };
        let Some(tx) = tx else {
            return Err(ActError::NotFound(k.to_string()));
        };
        let (otx, orx) = oneshot::channel();
        let ended = |r: &Rollouts| {
            let phase = r.get(mesh, name).map(|s| s.phase).unwrap_or_default();
            ActError::Refused(format!(
                "{k} has ended ({phase:?}); apply a changed spec to start again"
            ))
        };
        if tx.send(Cmd::Act(action, otx)).await.is_err() {
            return Err(ended(self));
        }
        match tokio::time::timeout(Duration::from_secs(10), orx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(ActError::Refused(e)),
            Ok(Err(_)) => return Err(ended(self)),
            Err(_) => return Err(ActError::Refused(format!("{k} did not answer within 10 s"))),
        }
        self.get(mesh, name)
            .ok_or_else(|| ActError::NotFound(k.to_string()))
    }

    /// A breaker signal: a circuit opening on a rollout's canary rolls it back at once.
    pub fn on_signal(&self, s: &BreakerSignal) {
        if s.to != CircuitState::Open {
            return;
        }
        let tasks = self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let statuses = self
            .inner
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (k, t) in tasks.iter() {
            let Some(st) = statuses.get(k) else { continue };
            if st.phase.is_done() || !s.cluster.starts_with(&format!("node/{}/", st.canary)) {
                continue;
            }
            let _ = t.tx.try_send(Cmd::Breaker(s.clone()));
        }
    }
}

/// Why an action was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// No such rollout.
    #[error("no rollout {0}")]
    NotFound(String),
    /// The rollout cannot do it now.
    #[error("{0}")]
    Refused(String),
}

fn key(mesh: &str, name: &str) -> Key {
    Key {
        kind: Kind::Rollout,
        mesh: mesh.to_owned(),
        name: name.to_owned(),
    }
}

/// What a wait ended with.
enum Wake {
    Time,
    Cmd(Cmd),
}

/// How a step of the rollout went on.
enum Flow {
    Continue,
    Stop,
}

struct Run {
    inner: Arc<Inner>,
    key: Key,
    ro: Rollout,
    status: RolloutStatus,
    rx: mpsc::Receiver<Cmd>,
}

fn cookie_regex(name: &str, value: &str) -> String {
    let esc = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c.to_string()
                } else {
                    format!("\\{c}")
                }
            })
            .collect::<String>()
    };
    format!("(.*;\\s*)?{}={}(;.*)?", esc(name), esc(value))
}

impl Run {
    fn event(&mut self, kind: &str, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(rollout = %self.key, kind, %message, "rollout");
        self.status.events.push(Event {
            at_millis: now_ms(),
            kind: kind.into(),
            message,
        });
        if self.status.events.len() > KEPT {
            let n = self.status.events.len() - KEPT;
            self.status.events.drain(..n);
        }
    }

    fn save(&self) {
        self.inner
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.key.clone(), self.status.clone());
        match serde_json::to_vec(&self.status) {
            Ok(b) => {
                if let Err(e) = self.inner.store.save_rollout_status(&self.key, Some(&b)) {
                    tracing::error!(rollout = %self.key, error = %e, "cannot keep the rollout's status");
                }
            }
            Err(e) => tracing::error!(error = %e, "rollout status"),
        }
    }

    fn interval(&self) -> u64 {
        self.ro.spec.interval_ms()
    }

    /// Waits until `until` (ms since the epoch) or a command.
    async fn wait(&mut self, until: Option<u64>) -> Wake {
        let sleep = async {
            match until {
                Some(t) => {
                    tokio::time::sleep(Duration::from_millis(t.saturating_sub(now_ms()))).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => Wake::Time,
            c = self.rx.recv() => match c {
                Some(c) => Wake::Cmd(c),
                None => std::future::pending().await,
            },
        }
    }

    async fn run(mut self) {
        if self.status.phase.is_done() {
            // Answer commands with why nothing happens, until the spec changes.
            while let Some(c) = self.rx.recv().await {
                if let Cmd::Act(_, tx) = c {
                    let _ = tx.send(Err(format!(
                        "{} has ended ({:?}); apply a changed spec to start again",
                        self.key, self.status.phase
                    )));
                }
            }
            return;
        }
        if self.status.events.is_empty() {
            self.event(
                "started",
                format!(
                    "{} from {} to {} in {} steps",
                    self.status.route, self.ro.spec.stable, self.ro.spec.canary, self.status.steps
                ),
            );
            self.status.phase = Phase::Progressing;
            self.save();
            if let Flow::Stop = self.gate(WebhookKind::PreRollout).await {
                return;
            }
            if let Flow::Stop = self.enter_step(0).await {
                return;
            }
        } else {
            self.event(
                "resumed",
                format!(
                    "by a restarted server at step {} (canary at {}%)",
                    self.status.step + 1,
                    self.status.canary_weight
                ),
            );
            self.save();
        }
        loop {
            let flow = if self.status.phase == Phase::Paused {
                self.paused().await
            } else if self.status.rolling_back {
                self.step_back().await
            } else {
                self.progress().await
            };
            if let Flow::Stop = flow {
                return;
            }
            if self.status.phase.is_done() {
                self.save();
                return;
            }
        }
    }

    /// Handles a command; `Stop` when the rollout ended because of it.
    async fn command(&mut self, c: Cmd) -> Flow {
        match c {
            Cmd::Breaker(s) => {
                let why = if s.from == CircuitState::HalfOpen {
                    format!(
                        "breaker opened on {} again: a half-open probe failed",
                        s.cluster
                    )
                } else {
                    format!(
                        "breaker opened on {} (failure ratio {:.2}: {} of {} requests, {} in a row)",
                        s.cluster, s.failure_ratio, s.failures, s.requests, s.consecutive_failures
                    )
                };
                self.rollback(why, true).await
            }
            Cmd::Act(a, tx) => {
                let (answer, flow) = match a {
                    RolloutAction::Abort => {
                        let f = self.rollback("aborted by a user".into(), true).await;
                        (Ok(()), f)
                    }
                    RolloutAction::Pause => {
                        if self.status.phase == Phase::Paused {
                            (Err("already paused".to_owned()), Flow::Continue)
                        } else {
                            self.status.phase = Phase::Paused;
                            self.status.waiting_for = Some("resume".into());
                            self.event("paused", "by a user");
                            self.save();
                            (Ok(()), Flow::Continue)
                        }
                    }
                    RolloutAction::Resume => {
                        if self.status.phase != Phase::Paused
                            || self.status.waiting_for.as_deref() != Some("resume")
                        {
                            (
                                Err("not paused by a user (a pause step waits for promote)".into()),
                                Flow::Continue,
                            )
                        } else {
                            self.status.phase = Phase::Progressing;
                            self.status.waiting_for = None;
                            self.status.last_check_at_millis = now_ms();
                            self.event("resumed", "by a user");
                            self.save();
                            (Ok(()), Flow::Continue)
                        }
                    }
                    RolloutAction::Promote => {
                        let f = if self.at_pause_step() {
                            self.status.phase = Phase::Progressing;
                            self.status.waiting_for = None;
                            self.event(
                                "promoted",
                                format!("past pause step {}", self.status.step + 1),
                            );
                            self.advance().await
                        } else {
                            self.event("promoted", "by a user: the remaining steps are skipped");
                            self.promote(false).await
                        };
                        (Ok(()), f)
                    }
                };
                let _ = tx.send(answer);
                flow
            }
        }
    }

    fn at_pause_step(&self) -> bool {
        self.ro
            .spec
            .plan()
            .get(self.status.step)
            .is_some_and(|(_, d)| d.is_none())
    }

    async fn paused(&mut self) -> Flow {
        match self.wait(None).await {
            Wake::Cmd(c) => self.command(c).await,
            Wake::Time => Flow::Continue,
        }
    }

    /// One wait of the current step: a check when an interval is due, the next step when
    /// the step is done.
    async fn progress(&mut self) -> Flow {
        let plan = self.ro.spec.plan();
        let Some((_, duration)) = plan.get(self.status.step).copied() else {
            return self.promote(true).await;
        };
        let Some(duration) = duration else {
            self.status.phase = Phase::Paused;
            self.status.waiting_for = Some("promotion".into());
            self.status.next_step_at_millis = None;
            self.event(
                "paused",
                format!("at step {}: waiting for promote", self.status.step + 1),
            );
            self.save();
            return Flow::Continue;
        };
        let due = self.status.step_started_at_millis + duration;
        let analysis = self.ro.spec.analysis.is_some();
        let next_check = self.status.last_check_at_millis + self.interval();
        let step_ready = !analysis || self.status.passed_in_step > 0;
        let until = match (analysis, step_ready) {
            (false, _) => due,
            (true, true) => due.min(next_check),
            (true, false) => next_check,
        };
        let next = step_ready.then_some(due);
        if self.status.next_step_at_millis != next {
            self.status.next_step_at_millis = next;
            self.save();
        }
        match self.wait(Some(until)).await {
            Wake::Cmd(c) => return self.command(c).await,
            Wake::Time => {}
        }
        let now = now_ms();
        if analysis && now >= next_check {
            if let Flow::Stop = self.check(now).await {
                return Flow::Stop;
            }
            if self.status.phase.is_done() || self.status.rolling_back {
                return Flow::Continue;
            }
        }
        let ready = !analysis || self.status.passed_in_step > 0;
        if now >= due && ready {
            return self.advance().await;
        }
        Flow::Continue
    }

    /// The cluster Envoy routes a target node's traffic to.
    fn cluster_of(&self, node: &str) -> String {
        let snap = self.inner.mesh.current();
        let port = snap
            .resources
            .get(&Key {
                kind: Kind::VirtualNode,
                mesh: self.ro.mesh_name.clone(),
                name: node.to_owned(),
            })
            .and_then(|r| match r.as_ref() {
                Resource::VirtualNode(n) => n.spec.listeners.first().map(|l| l.port_mapping.port),
                _ => None,
            })
            .unwrap_or(0);
        names::node_cluster(node, port)
    }

    async fn check(&mut self, now: u64) -> Flow {
        let Some(a) = self.ro.spec.analysis.clone() else {
            return Flow::Continue;
        };
        let from = self
            .status
            .last_check_at_millis
            .max(self.status.step_started_at_millis);
        self.status.last_check_at_millis = now;
        let source: Arc<dyn MetricSource> = match a.source.kind {
            SourceKind::Mesh => self.inner.mesh_metrics.clone(),
            SourceKind::Cloudwatch => match &self.inner.cloudwatch {
                Some(c) => c.clone(),
                None => {
                    self.event("no-data", "the CloudWatch source is not configured on this server (maille-control --cloudwatch)");
                    self.save();
                    return Flow::Continue;
                }
            },
        };
        let (canary_c, stable_c) = (
            self.cluster_of(&self.ro.spec.canary),
            self.cluster_of(&self.ro.spec.stable),
        );
        let samples = tokio::join!(
            source.sample(&canary_c, from, now),
            source.sample(&stable_c, from, now)
        );
        let (canary, stable) = match samples {
            (Ok(c), Ok(s)) => (c, s),
            (Err(e), _) | (_, Err(e)) => {
                // The interval's traffic is judged with the next one's.
                self.status.last_check_at_millis = from;
                self.event("no-data", format!("metrics unavailable: {e}"));
                (Sample::default(), Sample::default())
            }
        };
        let (verdict, measures) = evaluate(&a, &canary, &stable);
        self.status.checks.push(Check {
            at_millis: now,
            step: self.status.step,
            canary_weight: self.status.canary_weight,
            verdict,
            canary,
            stable,
            measures: measures.clone(),
        });
        if self.status.checks.len() > KEPT {
            let n = self.status.checks.len() - KEPT;
            self.status.checks.drain(..n);
        }
        match verdict {
            Verdict::Pass => {
                self.status.no_data_intervals = 0;
                self.status.passed_in_step += 1;
                self.status.waiting_for = None;
            }
            Verdict::NoData => {
                self.status.no_data_intervals += 1;
                let n = self.status.no_data_intervals;
                self.status.waiting_for = Some(format!(
                    "data: {} canary requests, {} needed",
                    canary.requests,
                    a.min_requests
                        .unwrap_or(crate::analysis::DEFAULT_MIN_REQUESTS)
                ));
                self.event(
                    "no-data",
                    format!(
                        "{} canary requests in the interval; holding ({n} in a row)",
                        canary.requests
                    ),
                );
                if a.max_no_data.is_some_and(|cap| n > cap) {
                    self.save();
                    return self
                        .rollback(format!("no data for {n} intervals"), false)
                        .await;
                }
            }
            Verdict::Fail => {
                self.status.no_data_intervals = 0;
                self.status.failed_checks += 1;
                let why: Vec<String> = measures
                    .iter()
                    .filter(|m| !m.pass)
                    .map(|m| {
                        format!(
                            "{} {} (must be {} {:.4})",
                            m.metric,
                            m.value
                                .map(|v| format!("{v:.4}"))
                                .unwrap_or_else(|| "?".into()),
                            m.op,
                            m.threshold
                        )
                    })
                    .collect();
                self.event(
                    "check-failed",
                    format!("{} ({} failed)", why.join(", "), self.status.failed_checks),
                );
                if self.status.failed_checks > a.failure_limit.unwrap_or(0) {
                    self.save();
                    return self
                        .rollback(
                            format!(
                                "{} failed checks: {}",
                                self.status.failed_checks,
                                why.join(", ")
                            ),
                            false,
                        )
                        .await;
                }
            }
        }
        self.save();
        Flow::Continue
    }

    /// Into step `i`: its gate, then its weight.
    async fn enter_step(&mut self, i: usize) -> Flow {
        if let Flow::Stop = self.gate(WebhookKind::PreStep).await {
            return Flow::Stop;
        }
        let plan = self.ro.spec.plan();
        let w = plan[i].0;
        if let Err(e) = self.set_route(w, None).await {
            return self.fail(e);
        }
        self.status.step = i;
        self.status.canary_weight = w;
        let now = now_ms();
        self.status.step_started_at_millis = now;
        self.status.last_check_at_millis = now;
        self.status.passed_in_step = 0;
        self.status.waiting_for = None;
        self.event(
            "step",
            format!("step {} of {}: canary at {w}%", i + 1, plan.len()),
        );
        self.save();
        Flow::Continue
    }

    async fn advance(&mut self) -> Flow {
        let next = self.status.step + 1;
        if next >= self.ro.spec.plan().len() {
            self.promote(true).await
        } else {
            self.enter_step(next).await
        }
    }

    /// Promotion: through the confirm-promotion gate unless a user asked for it.
    async fn promote(&mut self, gated: bool) -> Flow {
        if gated {
            if let Flow::Stop = self.gate(WebhookKind::ConfirmPromotion).await {
                return Flow::Stop;
            }
        }
        let mode = self.ro.spec.promotion;
        if let Err(e) = self.set_route(100, Some(mode)).await {
            return self.fail(e);
        }
        self.status.canary_weight = 100;
        self.status.step = self.status.steps;
        self.status.phase = Phase::Succeeded;
        self.status.waiting_for = None;
        self.status.next_step_at_millis = None;
        self.event(
            "succeeded",
            match mode {
                Promotion::FullWeight => {
                    format!("{} serves {}", self.ro.spec.canary, self.status.route)
                }
                Promotion::ReplaceRoute => format!(
                    "{} rewritten to {} alone",
                    self.status.route, self.ro.spec.canary
                ),
            },
        );
        self.save();
        self.notify(WebhookKind::PostRollout).await;
        Flow::Stop
    }

    /// A rollback: at once, or (a step-back spec, not `now`) one step down per interval.
    async fn rollback(&mut self, reason: String, now: bool) -> Flow {
        self.status.reason = Some(reason.clone());
        if self.ro.spec.rollback == RollbackMode::StepBack && !now && self.status.canary_weight > 0
        {
            self.status.rolling_back = true;
            self.status.phase = Phase::Progressing;
            self.status.waiting_for = None;
            self.event("rollback", format!("stepping back: {reason}"));
            self.save();
            self.notify(WebhookKind::Rollback).await;
            return Flow::Continue;
        }
        if let Err(e) = self.set_route(0, None).await {
            return self.fail(e);
        }
        self.status.canary_weight = 0;
        self.status.phase = Phase::RolledBack;
        self.status.rolling_back = false;
        self.status.waiting_for = None;
        self.status.next_step_at_millis = None;
        self.event(
            "rolled-back",
            format!("traffic on {}: {reason}", self.ro.spec.stable),
        );
        self.save();
        self.notify(WebhookKind::Rollback).await;
        Flow::Stop
    }

    /// A step-back rollback: the previous step's weight, one interval at a time, to 0.
    async fn step_back(&mut self) -> Flow {
        match self.wait(Some(now_ms() + self.interval())).await {
            Wake::Cmd(c) => return self.command(c).await,
            Wake::Time => {}
        }
        let plan = self.ro.spec.plan();
        let lower = plan
            .iter()
            .map(|(w, _)| *w)
            .filter(|w| *w < self.status.canary_weight)
            .max()
            .unwrap_or(0);
        if lower == 0 {
            let reason = self.status.reason.clone().unwrap_or_default();
            return self.rollback(reason, true).await;
        }
        if let Err(e) = self.set_route(lower, None).await {
            return self.fail(e);
        }
        self.status.canary_weight = lower;
        if let Some(i) = plan.iter().position(|(w, _)| *w == lower) {
            self.status.step = i;
        }
        self.event("rollback", format!("canary back to {lower}%"));
        self.save();
        Flow::Continue
    }

    fn fail(&mut self, why: String) -> Flow {
        self.status.phase = Phase::Failed;
        self.status.reason = Some(why.clone());
        self.event("failed", why);
        self.save();
        Flow::Stop
    }

    /// Calls the gate webhooks of `kind` until all answer 2xx; a refusal holds the rollout
    /// and is retried every interval. `Stop` when a command ended the rollout meanwhile.
    async fn gate(&mut self, kind: WebhookKind) -> Flow {
        let hooks: Vec<_> = self
            .ro
            .spec
            .webhooks
            .iter()
            .filter(|w| w.kind == kind)
            .cloned()
            .collect();
        if hooks.is_empty() {
            return Flow::Continue;
        }
        loop {
            let mut refused = None;
            for h in &hooks {
                if let Err(e) = self.call(h).await {
                    refused = Some(format!("webhook {} ({}): {e}", h.name, kind_name(kind)));
                    break;
                }
            }
            let Some(why) = refused else {
                if self
                    .status
                    .waiting_for
                    .as_deref()
                    .is_some_and(|w| w.starts_with("webhook"))
                {
                    self.status.waiting_for = None;
                    self.event("webhook", format!("{} gate passed", kind_name(kind)));
                    self.save();
                }
                return Flow::Continue;
            };
            if self.status.waiting_for.as_deref() != Some(why.as_str()) {
                self.event("webhook", format!("halted: {why}"));
            }
            self.status.waiting_for = Some(why);
            self.save();
            match self.wait(Some(now_ms() + self.interval())).await {
                Wake::Time => {}
                Wake::Cmd(c) => {
                    // Boxed: a command can promote, which passes a gate again.
                    if let Flow::Stop = Box::pin(self.command(c)).await {
                        return Flow::Stop;
                    }
                    if self.status.phase.is_done() {
                        return Flow::Stop;
                    }
                }
            }
        }
    }

    /// Calls the notification webhooks of `kind`; failures are recorded, nothing halts.
    async fn notify(&mut self, kind: WebhookKind) {
        let hooks: Vec<_> = self
            .ro
            .spec
            .webhooks
            .iter()
            .filter(|w| w.kind == kind)
            .cloned()
            .collect();
        for h in hooks {
            if let Err(e) = self.call(&h).await {
                self.event("webhook", format!("{} ({}): {e}", h.name, kind_name(kind)));
            }
        }
        self.save();
    }

    async fn call(&self, h: &maille_model::Webhook) -> Result<(), String> {
        let body = serde_json::json!({
            "type": kind_name(h.kind),
            "rollout": &self.status,
        });
        let url = h.url.clone();
        let timeout = Duration::from_millis(h.timeout_millis.unwrap_or(WEBHOOK_TIMEOUT_MS));
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .build()
                .into();
            match agent.post(&url).send_json(&body) {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
                Err(ureq::Error::Timeout(_)) => {
                    Err(format!("no answer within {} ms", timeout.as_millis()))
                }
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .unwrap_or_else(|e| Err(format!("webhook call panicked: {e}")))
    }

    /// Sets the route to `weight` for the canary (and A/B routes while it runs); with
    /// `promotion`, the rollout's end.
    async fn set_route(&self, weight: u32, promotion: Option<Promotion>) -> Result<(), String> {
        let spec = &self.ro.spec;
        let mesh = &self.ro.mesh_name;
        let rkey = Key {
            kind: Kind::Route,
            mesh: mesh.clone(),
            name: format!("{}/{}", spec.virtual_router_name, spec.route_name),
        };
        let snap = self.inner.mesh.current();
        let Some(Resource::Route(route)) = snap.resources.get(&rkey).map(|r| r.as_ref().clone())
        else {
            return Err(format!("{rkey} is gone"));
        };
        let mut route = route;
        let ports: HashMap<String, Option<u32>> = route
            .spec
            .http_route
            .as_ref()
            .or(route.spec.http2_route.as_ref())
            .map(|h| &h.action)
            .or(route.spec.grpc_route.as_ref().map(|g| &g.action))
            .or(route.spec.tcp_route.as_ref().map(|t| &t.action))
            .map(|a| {
                a.weighted_targets
                    .iter()
                    .map(|t| (t.virtual_node.clone(), t.port))
                    .collect()
            })
            .unwrap_or_default();
        let target = |n: &str, w: u32| WeightedTarget {
            virtual_node: n.to_owned(),
            weight: w,
            port: ports.get(n).copied().flatten(),
        };
        let targets = match promotion {
            Some(Promotion::ReplaceRoute) => vec![target(&spec.canary, 100)],
            _ => vec![
                target(&spec.stable, 100 - weight.min(100)),
                target(&spec.canary, weight.min(100)),
            ],
        };
        let matches = {
            let action = if let Some(h) = route.spec.http_route.as_mut() {
                &mut h.action
            } else if let Some(h) = route.spec.http2_route.as_mut() {
                &mut h.action
            } else if let Some(g) = route.spec.grpc_route.as_mut() {
                &mut g.action
            } else if let Some(t) = route.spec.tcp_route.as_mut() {
                &mut t.action
            } else {
                return Err(format!("{rkey} has no route action"));
            };
            action.weighted_targets = targets;
            route
                .spec
                .http_route
                .as_ref()
                .or(route.spec.http2_route.as_ref())
                .map(|h| h.matches.clone())
        };
        if let Some(s) = &spec.sticky {
            route.maille = Some(RouteOptions {
                sticky: Some(s.clone()),
            });
        }
        let mut upserts = vec![Resource::Route(route.clone())];
        let mut deletes = Vec::new();
        let running = promotion.is_none() && weight > 0;
        for (i, m) in spec.matches.iter().enumerate() {
            let name = format!("{}-ab{}", self.ro.rollout_name, i);
            let key = Key {
                kind: Kind::Route,
                mesh: mesh.clone(),
                name: format!("{}/{name}", spec.virtual_router_name),
            };
            // A/B users get the canary from the first step until the rollout ends; a
            // rolled-back canary gets no one.
            if !running {
                if snap.resources.contains_key(&key) {
                    deletes.push(key);
                }
                continue;
            }
            let Some(base) = matches.clone() else {
                continue;
            };
            let mut ab = route.clone();
            ab.route_name = name;
            ab.maille = None;
            ab.spec.priority = Some(route.spec.priority.unwrap_or(1000).saturating_sub(1));
            let mut mm = base;
            mm.headers.extend(m.headers.iter().cloned());
            for c in &m.cookies {
                mm.headers.push(HttpRouteHeader {
                    name: "cookie".into(),
                    invert: false,
                    matches: Some(HeaderMatchMethod {
                        exact: None,
                        prefix: None,
                        suffix: None,
                        regex: Some(cookie_regex(&c.name, &c.value)),
                        range: None,
                    }),
                });
            }
            let h = ab.spec.http_route.as_mut().or(ab.spec.http2_route.as_mut());
            if let Some(h) = h {
                h.matches = mm;
                h.action.weighted_targets = vec![target(&spec.canary, 100)];
            }
            upserts.push(Resource::Route(ab));
        }
        // One change: the route's weights and the A/B routes move together.
        self.inner
            .mesh
            .apply_as_leader(upserts, deletes)
            .await
            .map_err(|e| format!("setting {rkey}: {e}"))?;
        Ok(())
    }
}

fn kind_name(k: WebhookKind) -> &'static str {
    match k {
        WebhookKind::PreRollout => "pre-rollout",
        WebhookKind::PreStep => "pre-step",
        WebhookKind::ConfirmPromotion => "confirm-promotion",
        WebhookKind::PostRollout => "post-rollout",
        WebhookKind::Rollback => "rollback",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_matches_are_anchored_and_escaped() {
        assert_eq!(cookie_regex("beta", "1.0"), "(.*;\\s*)?beta=1\\.0(;.*)?");
    }
}
