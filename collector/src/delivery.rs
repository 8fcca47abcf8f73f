//! The one delivery loop, shared by X-Ray and CloudWatch: a bounded queue that takes a
//! request whole or not at all, batches within the destination's limits, several calls in
//! flight, and failures isolated per item.
//!
//! - A call that fails as a whole with a retryable error (throttling, 5xx, timeout, the
//!   endpoint away) is retried with exponential backoff and jitter, without limit: an outage
//!   loses nothing, and the full queue pushes back on senders. Each such failure halves the
//!   number of calls allowed in flight, each success adds one back (up to the configured
//!   number), so a throttling API is not hammered.
//! - A call refused for its content (a 400 that is not throttling) is split in halves until
//!   the item that makes it fail is alone; that item is dropped and counted with the reason,
//!   the others are delivered.
//! - An item the destination leaves unprocessed is sent again later with backoff: at most
//!   [`PERMANENT_ATTEMPTS`] times for an error code that will not change, at most
//!   [`RETRYABLE_ATTEMPTS`] times for one that might, then dropped and counted with its code;
//!   at once when the destination says it will never take it (an event too old).
//!   It never holds back the items behind it.
//! - An item leaves the queue when it is delivered or given up on; a journal (the spool)
//!   hears of both. Stopping delivers what it can within a deadline, then counts what was
//!   left.

use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// First retry delay; doubles up to [`MAX_BACKOFF`], with jitter.
pub(crate) const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Sends of an item left unprocessed with an error code that will not change (the item
/// itself is refused) before it is given up on.
pub(crate) const PERMANENT_ATTEMPTS: u32 = 3;
/// Sends of an item left unprocessed with an error code that might change (throttling, an
/// internal failure) before it is given up on: with backoff, about ten minutes.
pub(crate) const RETRYABLE_ATTEMPTS: u32 = 60;

/// Why a call to a destination failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: throttling, a 5xx, the endpoint unreachable or timing out.
    #[error("retryable: {0}")]
    Retryable(String),
    /// The request was refused for what it holds (e.g. a 400 naming an invalid field):
    /// sending it again will not help, sending its items apart may.
    #[error("refused: {0}")]
    Refused(String),
}

/// An item of a call that the destination did not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    /// Its place in the batch.
    pub(crate) index: usize,
    /// Why, as counted when it is dropped (e.g. `unprocessed by X-Ray: InvalidName`).
    pub(crate) reason: String,
    /// Sends the item may have had, this one included, before it is given up on for this
    /// reason: [`RETRYABLE_ATTEMPTS`] for a reason that might go away,
    /// [`PERMANENT_ATTEMPTS`] for one that will not, 1 to give up at once (the destination
    /// said it will never take the item).
    pub(crate) sends: u32,
}

impl Rejected {
    /// Sends before giving up on an item left unprocessed with an error code that might go
    /// away (`retryable`) or not.
    pub(crate) fn sends_for(retryable: bool) -> u32 {
        if retryable {
            RETRYABLE_ATTEMPTS
        } else {
            PERMANENT_ATTEMPTS
        }
    }
}

/// Something the queue holds: a document or a datum.
pub(crate) trait Item: Send + Sync + 'static {
    /// Its size, for the queue's byte bound and the batches' limits.
    fn bytes(&self) -> usize;
    /// How logs name it.
    fn describe(&self) -> String;
    /// Whether it may share a call with `other`: only one log stream's events go in a call;
    /// anything goes with anything by default.
    fn same_call(&self, _other: &Self) -> bool {
        true
    }
    /// Its time, milliseconds since the epoch, when the destination bounds the time a call
    /// spans (CloudWatch Logs: 24 hours).
    fn time_ms(&self) -> i64 {
        0
    }
}

/// Where batches go.
pub(crate) trait Destination<T>: Send + Sync + 'static {
    /// How logs and drop reasons name it.
    const NAME: &'static str;
    /// Sends one batch; the items it did not take, or why the call failed as a whole.
    fn send(
        &self,
        batch: &[Entry<T>],
    ) -> impl Future<Output = Result<Vec<Rejected>, SendError>> + Send;
}

/// Hears of what the queue takes and what leaves it: the spool.
pub(crate) trait Journal<T>: Send + Sync + fmt::Debug {
    /// Records items before the sender is answered; an error refuses the request.
    fn append(&self, items: &[T]) -> Result<(), crate::spool::SpoolError>;
    /// Records items delivered or given up on.
    fn settled(&self, items: &[&T]);
}

/// The limits of one destination's batches and calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Items per call.
    pub(crate) max_items: usize,
    /// Bytes of items per call.
    pub(crate) max_bytes: usize,
    /// Calls in flight at once.
    pub(crate) in_flight: usize,
    /// How long a partial batch waits for more items.
    pub(crate) linger: Duration,
    /// Milliseconds between the earliest and latest item of a call, at most.
    pub(crate) max_span_ms: i64,
}

/// An item and its delivery history.
#[derive(Debug)]
pub(crate) struct Entry<T> {
    pub(crate) item: T,
    /// Sends that left it unprocessed.
    attempts: u32,
    /// When it may be batched: its arrival, or for a retry, when its backoff ends.
    since: Instant,
}

/// An item waiting for its backoff to end: earliest first in the heap.
struct Waiting<T>(Entry<T>);

impl<T> PartialEq for Waiting<T> {
    fn eq(&self, o: &Self) -> bool {
        self.0.since == o.0.since
    }
}
impl<T> Eq for Waiting<T> {}
impl<T> PartialOrd for Waiting<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Waiting<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.0.since.cmp(&self.0.since)
    }
}

/// Counters of what happened to items, shown by `/stats`.
#[derive(Debug, Default)]
pub struct Stats {
    received: AtomicU64,
    exported: AtomicU64,
    retried: AtomicU64,
    rejected_full: AtomicU64,
    trimmed: AtomicU64,
    queued: AtomicU64,
    in_flight: AtomicU64,
    undelivered_at_exit: AtomicU64,
    dropped: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    /// Spans (or metric points) received.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Items the destination accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Calls and items sent again.
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Items dropped, by reason.
    pub fn dropped(&self) -> BTreeMap<String, u64> {
        self.dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Items held when the collector stopped, not delivered.
    pub fn undelivered_at_exit(&self) -> u64 {
        self.undelivered_at_exit.load(Ordering::Relaxed)
    }

    pub(crate) fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_trimmed(&self, n: u64) {
        self.trimmed.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` dropped for `reason`.
    pub(crate) fn drop_n(&self, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut d = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        match d.get_mut(reason) {
            Some(c) => *c += n,
            None => {
                d.insert(reason.to_owned(), n);
            }
        }
    }

    /// As JSON, for `/stats`.
    pub fn to_json(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "received": n(&self.received),
            "exported": n(&self.exported),
            "retried": n(&self.retried),
            "rejectedQueueFull": n(&self.rejected_full),
            "trimmed": n(&self.trimmed),
            "queued": n(&self.queued),
            "inFlight": n(&self.in_flight),
            "undeliveredAtExit": n(&self.undelivered_at_exit),
            "dropped": self.dropped(),
        })
    }
}

/// Why a request was not taken; nothing of it was.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// No room for the whole request.
    #[error("the {what} queue is full ({held} of {capacity} items, {bytes} of {max_bytes} bytes held): retry later")]
    Full {
        what: &'static str,
        held: usize,
        capacity: usize,
        bytes: usize,
        max_bytes: usize,
    },
    /// The collector is stopping.
    #[error("the collector is stopping")]
    Closed,
    /// The spool could not record it.
    #[error("the spool cannot record the request: {0}")]
    Spool(#[from] crate::spool::SpoolError),
}

struct State<T> {
    ready: VecDeque<Entry<T>>,
    waiting: BinaryHeap<Waiting<T>>,
    /// Items not yet settled (ready, waiting or in flight) and their bytes.
    held: usize,
    held_bytes: usize,
    /// Calls in flight, and how many may be.
    in_flight: usize,
    allowed: usize,
    closed: bool,
    abandoned: bool,
}

struct Shared<T> {
    what: &'static str,
    state: Mutex<State<T>>,
    /// Wakes the dispatcher (its only waiter: `notify_one` keeps the wake-up if it is busy).
    changed: Notify,
    capacity: usize,
    max_bytes: usize,
    stats: Arc<Stats>,
    journal: Option<Arc<dyn Journal<T>>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side of a queue, shared by the receivers.
pub(crate) struct Queue<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            shared: self.shared.clone(),
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("what", &self.shared.what)
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

/// The queue's capacity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Capacity {
    /// Items held at most.
    pub(crate) items: usize,
    /// Bytes of items held at most.
    pub(crate) bytes: usize,
}

impl<T: Item> Queue<T> {
    /// A queue of `what` ("trace", "metrics") holding `leftover` (from the spool) to begin
    /// with, even beyond its capacity.
    pub(crate) fn new(
        what: &'static str,
        capacity: Capacity,
        journal: Option<Arc<dyn Journal<T>>>,
        leftover: Vec<T>,
    ) -> Queue<T> {
        let now = Instant::now();
        let held_bytes = leftover.iter().map(Item::bytes).sum();
        let stats = Arc::new(Stats::default());
        stats.queued.store(leftover.len() as u64, Ordering::Relaxed);
        Queue {
            shared: Arc::new(Shared {
                what,
                state: Mutex::new(State {
                    held: leftover.len(),
                    held_bytes,
                    ready: leftover
                        .into_iter()
                        .map(|item| Entry {
                            item,
                            attempts: 0,
                            since: now,
                        })
                        .collect(),
                    waiting: BinaryHeap::new(),
                    in_flight: 0,
                    allowed: 1,
                    closed: false,
                    abandoned: false,
                }),
                changed: Notify::new(),
                capacity: capacity.items,
                max_bytes: capacity.bytes,
                stats,
                journal,
            }),
        }
    }

    /// The counters.
    pub(crate) fn stats(&self) -> &Arc<Stats> {
        &self.shared.stats
    }

    /// Takes all of `items` or none.
    pub(crate) fn offer(&self, items: Vec<T>) -> Result<(), Refusal> {
        if items.is_empty() {
            return Ok(());
        }
        let sh = &self.shared;
        let n = items.len();
        let bytes: usize = items.iter().map(Item::bytes).sum();
        {
            let mut st = sh.lock();
            if st.closed {
                return Err(Refusal::Closed);
            }
            if st.held + n > sh.capacity || st.held_bytes + bytes > sh.max_bytes {
                sh.stats.rejected_full.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Full {
                    what: sh.what,
                    held: st.held,
                    capacity: sh.capacity,
                    bytes: st.held_bytes,
                    max_bytes: sh.max_bytes,
                });
            }
            // Room is taken before the spool writes, outside the lock, so that the request
            // is refused whole if the spool fails.
            st.held += n;
            st.held_bytes += bytes;
        }
        if let Some(j) = &sh.journal {
            if let Err(e) = j.append(&items) {
                let mut st = sh.lock();
                st.held -= n;
                st.held_bytes -= bytes;
                return Err(e.into());
            }
        }
        let now = Instant::now();
        let mut st = sh.lock();
        st.ready.extend(items.into_iter().map(|item| Entry {
            item,
            attempts: 0,
            since: now,
        }));
        sh.stats.queued.store(st.held as u64, Ordering::Relaxed);
        drop(st);
        sh.changed.notify_one();
        Ok(())
    }

    /// Takes no more items; the exporter ends once everything held is settled.
    pub(crate) fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_one();
    }

    /// Stops sending: calls in flight are cancelled. Returns how many items were held.
    pub(crate) fn abandon(&self) -> usize {
        let mut st = self.shared.lock();
        st.closed = true;
        st.abandoned = true;
        let held = st.held;
        drop(st);
        self.shared
            .stats
            .undelivered_at_exit
            .store(held as u64, Ordering::Relaxed);
        self.shared.changed.notify_one();
        held
    }

    /// Starts the exporter: batches go to `dest` within `limits`.
    pub(crate) fn export<D: Destination<T>>(
        &self,
        dest: D,
        limits: Limits,
    ) -> tokio::task::JoinHandle<()> {
        self.shared.lock().allowed = limits.in_flight.max(1);
        tokio::spawn(dispatch(self.shared.clone(), Arc::new(dest), limits))
    }
}

/// The wait before retry `attempt` (0-based): exponential, capped, jittered in [cap/2, cap].
pub(crate) fn backoff(attempt: u32) -> Duration {
    let cap = BASE_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    let half = cap / 2;
    half + Duration::from_micros(rand::random_range(0..=half.as_micros() as u64))
}

/// What the dispatcher does next.
enum Next<T> {
    Send(Vec<Entry<T>>),
    Wait(Option<Instant>),
    Stop,
}

fn next_batch<T: Item>(sh: &Shared<T>, limits: &Limits) -> Next<T> {
    let mut st = sh.lock();
    if st.abandoned || (st.closed && st.held == 0) {
        return Next::Stop;
    }
    let now = Instant::now();
    while st.waiting.peek().is_some_and(|w| w.0.since <= now) {
        let Waiting(e) = st.waiting.pop().expect("peeked");
        st.ready.push_back(e);
    }
    let next_retry = st.waiting.peek().map(|w| w.0.since);
    if st.in_flight >= st.allowed || st.ready.is_empty() {
        // A finished call or a new item wakes the dispatcher; so does the next retry.
        return Next::Wait(if st.ready.is_empty() {
            next_retry
        } else {
            None
        });
    }
    // A partial batch waits a little for company, unless the collector is stopping.
    let ready_bytes = || st.ready.iter().map(|e| e.item.bytes()).sum::<usize>();
    let oldest = st.ready.front().map(|e| e.since).unwrap_or(now);
    if !st.closed
        && st.ready.len() < limits.max_items
        && oldest + limits.linger > now
        && ready_bytes() < limits.max_bytes
    {
        let at = oldest + limits.linger;
        return Next::Wait(Some(next_retry.map_or(at, |r| r.min(at))));
    }
    let batch = take_batch(&mut st.ready, limits);
    st.in_flight += 1;
    sh.stats
        .in_flight
        .store(st.in_flight as u64, Ordering::Relaxed);
    Next::Send(batch)
}

/// Items examined for one batch at most, beyond the first item: a batch of one partition
/// does not scan a queue of others without bound.
const SCAN_LIMIT: usize = 20_000;

/// Takes the next call's items from the front of `ready`: those that may share a call with
/// the first, within the limits of items, bytes and time span, in their order. The others
/// keep their places.
fn take_batch<T: Item>(ready: &mut VecDeque<Entry<T>>, limits: &Limits) -> Vec<Entry<T>> {
    let mut batch = Vec::with_capacity(limits.max_items.min(ready.len()));
    let Some(first) = ready.pop_front() else {
        return batch;
    };
    let (mut earliest, mut latest) = (first.item.time_ms(), first.item.time_ms());
    let mut bytes = first.item.bytes();
    batch.push(first);
    let mut skipped = Vec::new();
    let mut scanned = 0;
    while let Some(e) = ready.front() {
        if batch.len() == limits.max_items || scanned == SCAN_LIMIT {
            break;
        }
        scanned += 1;
        let (b, t) = (e.item.bytes(), e.item.time_ms());
        let together = e.item.same_call(&batch[0].item);
        if bytes + b > limits.max_bytes && together {
            break;
        }
        let fits = together && t.max(latest).saturating_sub(t.min(earliest)) <= limits.max_span_ms;
        let e = ready.pop_front().expect("front");
        if fits {
            bytes += b;
            earliest = earliest.min(t);
            latest = latest.max(t);
            batch.push(e);
        } else {
            skipped.push(e);
        }
    }
    for e in skipped.into_iter().rev() {
        ready.push_front(e);
    }
    batch
}

async fn dispatch<T: Item, D: Destination<T>>(sh: Arc<Shared<T>>, dest: Arc<D>, limits: Limits) {
    let mut calls = tokio::task::JoinSet::new();
    loop {
        while calls.try_join_next().is_some() {}
        match next_batch(&sh, &limits) {
            Next::Send(batch) => {
                calls.spawn(send(sh.clone(), dest.clone(), batch, limits));
            }
            Next::Wait(until) => match until {
                Some(at) => {
                    tokio::select! {
                        _ = sh.changed.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => sh.changed.notified().await,
            },
            // Dropping the calls cancels those still in flight (when abandoned).
            Next::Stop => return,
        }
    }
}

/// Sends one batch to the end: delivered, split, given up on, or back in the queue.
async fn send<T: Item, D: Destination<T>>(
    sh: Arc<Shared<T>>,
    dest: Arc<D>,
    batch: Vec<Entry<T>>,
    limits: Limits,
) {
    let mut parts = vec![batch];
    while let Some(part) = parts.pop() {
        let mut attempt = 0u32;
        loop {
            match dest.send(&part).await {
                Ok(rejected) => {
                    settle(&sh, part, rejected, D::NAME);
                    let mut st = sh.lock();
                    st.allowed = (st.allowed + 1).min(limits.in_flight.max(1));
                    break;
                }
                Err(SendError::Retryable(e)) => {
                    tracing::warn!(destination = D::NAME, error = %e, items = part.len(), attempt, "send failed; retrying");
                    sh.stats.retried.fetch_add(1, Ordering::Relaxed);
                    {
                        let mut st = sh.lock();
                        st.allowed = (st.allowed / 2).max(1);
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(SendError::Refused(e)) if part.len() == 1 => {
                    let reason = format!("refused by {}: {e}", D::NAME);
                    tracing::error!(item = %part[0].item.describe(), %reason, "dropped");
                    let rejected = vec![Rejected {
                        index: 0,
                        reason,
                        sends: 1,
                    }];
                    give_up(&sh, part, &rejected, D::NAME);
                    break;
                }
                Err(SendError::Refused(e)) => {
                    // One item (or a few) spoils the call: find it by halves.
                    tracing::warn!(destination = D::NAME, error = %e, items = part.len(), "call refused; sending its halves apart");
                    let mut part = part;
                    let right = part.split_off(part.len() / 2);
                    parts.push(right);
                    parts.push(part);
                    break;
                }
            }
        }
    }
    let mut st = sh.lock();
    st.in_flight -= 1;
    sh.stats
        .in_flight
        .store(st.in_flight as u64, Ordering::Relaxed);
    drop(st);
    sh.changed.notify_one();
}

/// Drops every item of `part` for its rejection reason.
fn give_up<T: Item>(sh: &Shared<T>, part: Vec<Entry<T>>, rejected: &[Rejected], name: &str) {
    let settled: Vec<&T> = part.iter().map(|e| &e.item).collect();
    if let Some(j) = &sh.journal {
        j.settled(&settled);
    }
    for r in rejected {
        sh.stats.drop_n(&r.reason, 1);
    }
    release(sh, &part);
    tracing::debug!(destination = name, items = part.len(), "given up on");
}

fn release<T: Item>(sh: &Shared<T>, gone: &[Entry<T>]) {
    let bytes: usize = gone.iter().map(|e| e.item.bytes()).sum();
    let mut st = sh.lock();
    st.held -= gone.len();
    st.held_bytes -= bytes;
    sh.stats.queued.store(st.held as u64, Ordering::Relaxed);
}

/// Sorts the items of an answered call: delivered, to try again later, or given up on.
fn settle<T: Item>(sh: &Shared<T>, part: Vec<Entry<T>>, rejected: Vec<Rejected>, name: &str) {
    let mut verdict: Vec<Option<&Rejected>> = vec![None; part.len()];
    for r in &rejected {
        if let Some(v) = verdict.get_mut(r.index) {
            *v = Some(r);
        }
    }
    let mut done = Vec::with_capacity(part.len());
    let mut again = Vec::new();
    let mut dropped: Vec<(String, String)> = Vec::new();
    for (mut e, v) in part.into_iter().zip(verdict) {
        match v {
            None => done.push(e),
            Some(r) => {
                e.attempts += 1;
                if e.attempts >= r.sends {
                    dropped.push((e.item.describe(), r.reason.clone()));
                    done.push(e);
                } else {
                    e.since = Instant::now() + backoff(e.attempts - 1);
                    again.push(e);
                }
            }
        }
    }
    let delivered = done.len() - dropped.len();
    if let Some(j) = &sh.journal {
        j.settled(&done.iter().map(|e| &e.item).collect::<Vec<_>>());
    }
    sh.stats
        .exported
        .fetch_add(delivered as u64, Ordering::Relaxed);
    for (item, reason) in &dropped {
        tracing::error!(destination = name, %item, %reason, "given up on after repeated refusals; dropped");
        sh.stats.drop_n(reason, 1);
    }
    if !again.is_empty() {
        tracing::warn!(destination = name, items = again.len(), reasons = ?rejected.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(), "left unprocessed; sending those again later");
        sh.stats
            .retried
            .fetch_add(again.len() as u64, Ordering::Relaxed);
        let mut st = sh.lock();
        st.waiting.extend(again.into_iter().map(Waiting));
    }
    release(sh, &done);
}

#[cfg(test)]
mod tests;
