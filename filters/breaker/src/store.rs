//! Circuits kept in process memory, shared by all of Envoy's workers: the native build's
//! counterpart of the wasm build's proxy-wasm shared data.
//!
//! One [`ClusterCircuit`] per upstream cluster holds the [`Record`] behind a mutex, so every
//! outcome of every worker goes into it (no lost update) and a state change is seen by the
//! next request of any worker. Its state is mirrored in an atomic that the healthy path reads
//! without locking.
//!
//! The healthy path does not lock for successes either: while the circuit is closed and its
//! window holds no failure, successes cannot trip it, so they are added to an atomic count
//! tagged with their window bucket, and folded into the record under the lock before anything
//! reads it (a failure, a new bucket, an admission while not closed, [`ClusterCircuit::record`]).
//! Once the window holds a failure every outcome takes the lock, so the circuit trips on the
//! outcome that crosses its limits, as [`Circuit`] alone would. A success that races with the
//! change of bucket can be counted in the next bucket; none is lost.
//!
//! Counts for the metrics accumulate in atomics until Envoy's main thread takes them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::{Admission, Circuit, Record, State, Transition};

/// Most clusters one process tracks. Cluster names can come from a request header; beyond
/// this many, new names are not tracked (their requests pass) rather than letting a client
/// grow memory and metric series without end.
pub const MAX_CLUSTERS: usize = 1_000;
/// Longest cluster name tracked (Envoy's own names are far shorter).
pub const MAX_CLUSTER_NAME: usize = 255;

/// Why a cluster is not tracked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untracked {
    /// [`MAX_CLUSTERS`] clusters are tracked already.
    #[error("already tracking {0} clusters")]
    Full(usize),
    /// The name is empty or longer than [`MAX_CLUSTER_NAME`].
    #[error("cluster name of {0} bytes")]
    BadName(usize),
}

/// Counts of one cluster not yet reported in Envoy's metrics.
#[derive(Debug, Default)]
pub struct Counts {
    requests: AtomicU64,
    failures: AtomicU64,
    rejections: AtomicU64,
    trips: AtomicU64,
}

/// Counts taken for reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Taken {
    /// Requests let through (including probes).
    pub requests: u64,
    /// Outcomes that counted as failures.
    pub failures: u64,
    /// Requests answered locally while open.
    pub rejections: u64,
    /// Changes to open.
    pub trips: u64,
}

impl Counts {
    /// Takes everything counted since the last call.
    pub fn take(&self) -> Taken {
        Taken {
            requests: self.requests.swap(0, Ordering::Relaxed),
            failures: self.failures.swap(0, Ordering::Relaxed),
            rejections: self.rejections.swap(0, Ordering::Relaxed),
            trips: self.trips.swap(0, Ordering::Relaxed),
        }
    }
}

/// Bucket tag of no pending successes.
const NO_BUCKET: u64 = u64::MAX;

/// One cluster's circuit.
#[derive(Debug)]
pub struct ClusterCircuit {
    name: Arc<str>,
    /// `record.state`, written under the lock, read without it.
    state: AtomicU8,
    record: Mutex<Record>,
    /// The bucket whose successes may be counted in `pending` without the lock: set under
    /// the lock when the circuit is closed and its window clean, else [`NO_BUCKET`].
    clean_bucket: AtomicU64,
    /// Successes of `clean_bucket` not yet in the record.
    pending: AtomicU64,
    counts: Counts,
}

fn state_from(v: u8) -> State {
    match v {
        1 => State::Open,
        2 => State::HalfOpen,
        _ => State::Closed,
    }
}

impl ClusterCircuit {
    fn new(name: Arc<str>) -> ClusterCircuit {
        ClusterCircuit {
            name,
            state: AtomicU8::new(State::Closed as u8),
            record: Mutex::new(Record::default()),
            clean_bucket: AtomicU64::new(NO_BUCKET),
            pending: AtomicU64::new(0),
            counts: Counts::default(),
        }
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state as of the last change.
    pub fn state(&self) -> State {
        state_from(self.state.load(Ordering::Acquire))
    }

    /// Counts not yet reported.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// A copy of the record, pending successes folded in (for tests and diagnostics).
    pub fn record(&self, circuit: &Circuit) -> Record {
        let mut rec = self.lock();
        let t = self.fold(circuit, &mut rec);
        self.settle(&rec, t, &mut |_, _| {});
        rec.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        // A panic while holding the lock leaves a record that is still well-formed data.
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the pending successes into the record, in their bucket. Under the lock.
    fn fold(&self, circuit: &Circuit, rec: &mut Record) -> Option<Transition> {
        let bucket = self.clean_bucket.swap(NO_BUCKET, Ordering::AcqRel);
        let n = self.pending.swap(0, Ordering::AcqRel);
        if n == 0 || bucket == NO_BUCKET {
            return None;
        }
        // Successes of a closed, clean window: they cannot trip it (`record_successes` checks
        // anyway, and ignores them if the circuit has changed state since).
        circuit.record_successes(rec, bucket, u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Applies the end of an update: mirrors the state, counts a trip, and hands every change
    /// to `on_change` while the record is still locked, so that changes of one cluster reach
    /// it in `generation` order.
    fn settle(
        &self,
        rec: &Record,
        changes: impl IntoIterator<Item = Transition>,
        on_change: &mut impl FnMut(&str, Transition),
    ) {
        self.state.store(rec.state as u8, Ordering::Release);
        // Pending successes must be zero while the tag is unset: `fold` left them so.
        for t in changes {
            if t.to == State::Open {
                self.counts.trips.fetch_add(1, Ordering::Relaxed);
            }
            on_change(&self.name, t);
        }
    }

    /// Decides a request. While the circuit is closed this reads one atomic and neither
    /// locks nor reads the clock (`now_ms` is called only when it is not closed).
    pub fn admit(
        &self,
        circuit: &Circuit,
        now_ms: impl FnOnce() -> u64,
        mut on_change: impl FnMut(&str, Transition),
    ) -> Admission {
        let admission = if self.state() == State::Closed {
            Admission::Allow
        } else {
            let mut rec = self.lock();
            let folded = self.fold(circuit, &mut rec);
            self.settle(&rec, folded, &mut on_change);
            if rec.state == State::Closed {
                Admission::Allow
            } else {
                let (a, _, t) = circuit.admit(&mut rec, now_ms());
                self.settle(&rec, t, &mut on_change);
                a
            }
        };
        let count = match admission {
            Admission::Reject { .. } => &self.counts.rejections,
            Admission::Allow | Admission::Probe => &self.counts.requests,
        };
        count.fetch_add(1, Ordering::Relaxed);
        admission
    }

    /// Counts the outcome of a request this circuit let through (`probe`: as a half-open
    /// probe) at `now_ms`.
    pub fn outcome(
        &self,
        circuit: &Circuit,
        now_ms: u64,
        failed: bool,
        probe: bool,
        mut on_change: impl FnMut(&str, Transition),
    ) {
        if failed {
            self.counts.failures.fetch_add(1, Ordering::Relaxed);
        } else if !probe {
            let bucket = circuit.bucket_start(now_ms);
            if self.clean_bucket.load(Ordering::Acquire) == bucket {
                self.pending.fetch_add(1, Ordering::AcqRel);
                return;
            }
        }
        let mut rec = self.lock();
        let folded = self.fold(circuit, &mut rec);
        self.settle(&rec, folded, &mut on_change);
        let t = if failed || probe {
            circuit.record(&mut rec, now_ms, failed, probe)
        } else {
            circuit.record_successes(&mut rec, now_ms, 1)
        };
        self.settle(&rec, t, &mut on_change);
        // Closed with a clean window: this bucket's next successes need no lock.
        if rec.state == State::Closed && circuit.window_is_clean(&rec, now_ms) {
            self.clean_bucket
                .store(circuit.bucket_start(now_ms), Ordering::Release);
        }
    }
}

/// Every tracked cluster of the process.
#[derive(Debug)]
pub struct Store {
    clusters: RwLock<HashMap<Arc<str>, Arc<ClusterCircuit>>>,
    limit: usize,
}

impl Store {
    /// An empty store tracking at most `limit` clusters.
    pub fn new(limit: usize) -> Store {
        Store {
            clusters: RwLock::new(HashMap::new()),
            limit,
        }
    }

    /// The process's store: one circuit per cluster for every breaker configuration, as the
    /// wasm build shares its records through its VM's shared data, so a configuration update
    /// keeps the circuits' state.
    pub fn global() -> &'static Store {
        static STORE: OnceLock<Store> = OnceLock::new();
        STORE.get_or_init(|| Store::new(MAX_CLUSTERS))
    }

    /// The circuit of cluster `name`, made on first use.
    pub fn cluster(&self, name: &str) -> Result<Arc<ClusterCircuit>, Untracked> {
        if name.is_empty() || name.len() > MAX_CLUSTER_NAME {
            return Err(Untracked::BadName(name.len()));
        }
        if let Some(c) = self
            .clusters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(c.clone());
        }
        let mut all = self.clusters.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = all.get(name) {
            return Ok(c.clone());
        }
        if all.len() >= self.limit {
            return Err(Untracked::Full(self.limit));
        }
        let name: Arc<str> = name.into();
        let c = Arc::new(ClusterCircuit::new(name.clone()));
        all.insert(name, c.clone());
        Ok(c)
    }

    /// Every tracked cluster, sorted by name.
    pub fn clusters(&self) -> Vec<Arc<ClusterCircuit>> {
        let mut v: Vec<_> = self
            .clusters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maille_filter_config::breaker::BreakerConfig;
    use std::sync::Barrier;

    fn circuit(json: &str) -> Circuit {
        Circuit::new(BreakerConfig::from_json(json.as_bytes()).unwrap())
    }

    #[test]
    fn concurrent_outcomes_are_all_counted() {
        // No trip possible: every outcome must land in the window, from every thread.
        let c = circuit(
            r#"{"windowMillis": 600000, "minRequests": 1000000, "consecutiveFailures": 0}"#,
        );
        let store = Store::new(10);
        let (threads, per) = (8u32, 5_000u32);
        let start = Barrier::new(threads as usize);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (store, c, start) = (&store, &c, &start);
                s.spawn(move || {
                    let cc = store.cluster("svc").unwrap();
                    start.wait();
                    for i in 0..per {
                        assert_eq!(
                            cc.admit(c, || 1_000, |_, _| panic!("no change")),
                            Admission::Allow
                        );
                        // Every third outcome of thread t fails; all in one bucket.
                        cc.outcome(
                            c,
                            1_000 + u64::from(i % 7),
                            (i + t) % 3 == 0,
                            false,
                            |_, _| panic!("no change"),
                        );
                    }
                });
            }
        });
        let cc = store.cluster("svc").unwrap();
        let expected_failures: u32 = (0..threads)
            .map(|t| (0..per).filter(|i| (i + t) % 3 == 0).count() as u32)
            .sum();
        assert_eq!(
            cc.record(&c).window(1_010, 600_000),
            (threads * per, expected_failures)
        );
        let taken = cc.counts().take();
        assert_eq!(
            taken,
            Taken {
                requests: u64::from(threads * per),
                failures: u64::from(expected_failures),
                rejections: 0,
                trips: 0
            }
        );
        assert_eq!(cc.counts().take(), Taken::default(), "taken once");
    }

    #[test]
    fn one_trip_for_all_workers_and_changes_in_generation_order() {
        let c = circuit(
            r#"{"minRequests": 10, "failureRatio": 0.5, "consecutiveFailures": 0, "openMillis": 100, "halfOpenProbes": 1}"#,
        );
        let store = Store::new(10);
        let changes = Mutex::new(Vec::new());
        let start = Barrier::new(6);
        std::thread::scope(|s| {
            for _ in 0..6 {
                let (store, c, changes, start) = (&store, &c, &changes, &start);
                s.spawn(move || {
                    let cc = store.cluster("svc").unwrap();
                    start.wait();
                    for i in 0..200u64 {
                        // 200 steps within 50 ms: all inside the open interval after the trip.
                        let now = 10_000 + i / 4;
                        let push = |name: &str, t: Transition| {
                            changes.lock().unwrap().push((
                                name.to_owned(),
                                t.from,
                                t.to,
                                t.generation,
                            ))
                        };
                        match cc.admit(c, || now, push) {
                            Admission::Reject { .. } => {}
                            a => cc.outcome(c, now, true, a == Admission::Probe, push),
                        }
                    }
                });
            }
        });
        let changes = changes.into_inner().unwrap();
        // All failing, all within the open interval after the trip: exactly one trip.
        assert_eq!(
            changes,
            [("svc".to_owned(), State::Closed, State::Open, 1)],
            "{changes:?}"
        );
        let cc = store.cluster("svc").unwrap();
        assert_eq!(cc.state(), State::Open);
        let taken = cc.counts().take();
        assert_eq!(taken.trips, 1);
        assert_eq!(taken.requests + taken.rejections, 6 * 200);
        assert!(taken.rejections > 0);
        // A state seen by one worker is the state of all: a new handle sees it open.
        assert!(matches!(
            store
                .cluster("svc")
                .unwrap()
                .admit(&c, || 10_050, |_, _| {}),
            Admission::Reject { .. }
        ));
    }

    #[test]
    fn generations_stay_in_order_across_threads_through_many_changes() {
        // Trip, probe, reopen, ... as fast as threads can: each change is handed on under the
        // lock, so the sequence seen is 1, 2, 3, ... with no gap or swap.
        let c = circuit(
            r#"{"minRequests": 1, "failureRatio": 0.5, "consecutiveFailures": 0, "openMillis": 100, "halfOpenProbes": 1}"#,
        );
        let store = Store::new(10);
        let seen = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (store, c, seen) = (&store, &c, &seen);
                s.spawn(move || {
                    let cc = store.cluster("svc").unwrap();
                    for i in 0..2_000u64 {
                        // Time moves on by 101 ms per step: every open interval ends.
                        let now = 1_000_000 + (i * 4 + t) * 101;
                        let push =
                            |_: &str, tr: Transition| seen.lock().unwrap().push(tr.generation);
                        if let a @ (Admission::Allow | Admission::Probe) = cc.admit(c, || now, push)
                        {
                            cc.outcome(c, now, true, a == Admission::Probe, push);
                        }
                    }
                });
            }
        });
        let seen = seen.into_inner().unwrap();
        assert!(seen.len() > 100, "{} changes", seen.len());
        assert_eq!(seen, (1..=seen.len() as u32).collect::<Vec<_>>());
    }

    #[test]
    fn lock_free_successes_are_all_counted_in_their_buckets() {
        // All successes: after the first of each bucket they skip the lock.
        let c = circuit(r#"{"windowMillis": 10000, "minRequests": 1000000}"#);
        let store = Store::new(10);
        let start = Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (store, c, start) = (&store, &c, &start);
                s.spawn(move || {
                    let cc = store.cluster("svc").unwrap();
                    start.wait();
                    for i in 0..10_000u64 {
                        // Two buckets (1 s each): 50_000.. and 51_000..
                        let now = 50_000 + (i / 5_000) * 1_000 + i % 7;
                        cc.outcome(c, now, false, false, |_, _| panic!("no change"));
                    }
                });
            }
        });
        let rec = store.cluster("svc").unwrap().record(&c);
        assert_eq!(rec.window(51_010, 10_000), (40_000, 0), "none lost");
        let mut per_bucket: Vec<(u64, u32)> = rec
            .buckets
            .iter()
            .filter(|b| b.total > 0)
            .map(|b| (b.start_ms, b.total))
            .collect();
        per_bucket.sort_unstable();
        // Each thread's first 5,000 in the first bucket; a success racing with a change of
        // the lock-free bucket may land in the next one (a thread preempted between reading
        // the bucket and counting), once per change per thread, and while the threads
        // straddle the two buckets the change can happen many times: most, not all, land in
        // their own (this failed at 19,990 on a loaded machine).
        assert_eq!(per_bucket.len(), 2, "{per_bucket:?}");
        assert!(
            per_bucket[0].0 == 50_000 && per_bucket[0].1 >= 18_000,
            "{per_bucket:?}"
        );
    }

    #[test]
    fn successes_after_a_failure_trip_on_the_one_that_crosses_the_limit() {
        // 6 failures, then successes: the 10th request in the window trips (6 of 10 > 0.5),
        // exactly as the circuit alone decides, although successes were lock-free before.
        let c = circuit(r#"{"minRequests": 10, "failureRatio": 0.5, "consecutiveFailures": 0}"#);
        let store = Store::new(1);
        let cc = store.cluster("svc").unwrap();
        let trips = std::cell::RefCell::new(Vec::new());
        let push = |_: &str, t: Transition| trips.borrow_mut().push((t.requests, t.failures));
        for i in 0..30 {
            // Clean window: these go to the pending count...
            cc.outcome(&c, 1_000 + i, false, false, push);
        }
        // ...and leave the window: 20 s later they are out of it.
        for i in 0..6 {
            cc.outcome(&c, 30_000 + i, true, false, push);
        }
        for i in 0..3 {
            cc.outcome(&c, 30_100 + i, false, false, push);
            assert!(trips.borrow().is_empty(), "tripped early at success {i}");
        }
        cc.outcome(&c, 30_200, false, false, push);
        assert_eq!(*trips.borrow(), [(10, 6)]);
        assert_eq!(cc.state(), State::Open);
    }

    #[test]
    fn the_healthy_path_reads_no_clock() {
        let c = circuit("{}");
        let store = Store::new(1);
        let cc = store.cluster("svc").unwrap();
        assert_eq!(
            cc.admit(&c, || panic!("clock read while closed"), |_, _| {}),
            Admission::Allow
        );
    }

    #[test]
    fn names_and_numbers_of_clusters_are_bounded() {
        let store = Store::new(2);
        assert!(store.cluster("a").is_ok());
        assert!(store.cluster("b").is_ok());
        assert!(store.cluster("a").is_ok(), "known names stay tracked");
        assert_eq!(store.cluster("c").unwrap_err(), Untracked::Full(2));
        assert_eq!(store.cluster("").unwrap_err(), Untracked::BadName(0));
        let long = "x".repeat(MAX_CLUSTER_NAME + 1);
        assert_eq!(
            store.cluster(&long).unwrap_err(),
            Untracked::BadName(MAX_CLUSTER_NAME + 1)
        );
        assert_eq!(
            store
                .clusters()
                .iter()
                .map(|c| c.name().to_owned())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }
}
