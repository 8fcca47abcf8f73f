//! Delivery to X-Ray: a bounded queue that pushes back on senders when full, batches of at
//! most 50 documents per `PutTraceSegments`, only the documents X-Ray reports unprocessed
//! sent again, throttling, server errors and an unreachable endpoint retried with
//! exponential backoff and jitter. A document leaves the queue only when X-Ray has taken it
//! or refused it for good (then it is counted as dropped, with the reason).

use crate::spool::{Spool, SpoolError};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// X-Ray's limit on documents per `PutTraceSegments`.
pub const MAX_BATCH: usize = 50;
/// How long a partial batch waits for more documents.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// First retry delay; doubles up to [`MAX_BACKOFF`], with full jitter.
pub const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Counters of what happened to documents.
#[derive(Debug, Default)]
pub struct Stats {
    /// Spans received.
    pub received: AtomicU64,
    /// Documents X-Ray accepted.
    pub exported: AtomicU64,
    /// Send attempts that were retried (whole batches or unprocessed documents).
    pub retried: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected_full: AtomicU64,
    /// Dropped documents or spans, by reason.
    pub dropped: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    /// Counts `n` dropped for `reason`.
    pub fn drop_n(&self, reason: &str, n: u64) {
        *self
            .dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason.to_owned())
            .or_default() += n;
    }

    /// As JSON, for `/stats`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "received": self.received.load(Ordering::Relaxed),
            "exported": self.exported.load(Ordering::Relaxed),
            "retried": self.retried.load(Ordering::Relaxed),
            "rejectedQueueFull": self.rejected_full.load(Ordering::Relaxed),
            "dropped": *self.dropped.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }
}

/// A segment document, serialised once when it is received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    /// Its `id`, to match X-Ray's unprocessed list.
    pub id: String,
    /// The JSON document.
    pub json: String,
}

impl Doc {
    /// From a document built by [`crate::xray::span_to_document`].
    pub fn new(doc: &Value) -> Doc {
        Doc {
            id: doc
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            json: doc.to_string(),
        }
    }
}

/// The sending side of the queue, shared by the receivers.
#[derive(Debug, Clone)]
pub struct Queue {
    tx: mpsc::Sender<Doc>,
    spool: Option<Arc<Spool>>,
    /// The counters.
    pub stats: Arc<Stats>,
}

/// Why a request was not taken; nothing of it was.
#[derive(Debug, thiserror::Error)]
pub enum QueueFull {
    /// No room for the whole request.
    #[error("the export queue is full ({capacity} documents): retry later")]
    Full {
        /// Queue capacity.
        capacity: usize,
    },
    /// The spool could not record it.
    #[error("the spool cannot record the request: {0}")]
    Spool(#[from] SpoolError),
}

impl Queue {
    /// Takes all of `docs` or none.
    pub fn offer(&self, docs: Vec<Doc>) -> Result<(), QueueFull> {
        if docs.is_empty() {
            return Ok(());
        }
        match self.tx.try_reserve_many(docs.len()) {
            Ok(permits) => {
                if let Some(s) = &self.spool {
                    s.append(&docs)?;
                }
                for (p, d) in permits.zip(docs) {
                    p.send(d);
                }
                Ok(())
            }
            Err(_) => {
                self.stats.rejected_full.fetch_add(1, Ordering::Relaxed);
                Err(QueueFull::Full {
                    capacity: self.tx.max_capacity(),
                })
            }
        }
    }
}

/// Where batches go: X-Ray, or a fake in unit tests.
pub trait Sink: Send + Sync + 'static {
    /// Sends documents (JSON strings); returns the ids X-Ray did not process, or an error.
    fn put(
        &self,
        docs: Vec<String>,
    ) -> impl std::future::Future<Output = Result<Vec<Unprocessed>, SendError>> + Send;
}

/// A document X-Ray did not process.
#[derive(Debug, Clone)]
pub struct Unprocessed {
    /// Its `id`.
    pub id: String,
    /// X-Ray's error code, if any.
    pub code: Option<String>,
}

/// Why a `PutTraceSegments` call failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: throttling, a 5xx, the endpoint unreachable or timing out.
    #[error("retryable: {0}")]
    Retryable(String),
    /// Not worth retrying (e.g. the request is invalid).
    #[error("refused: {0}")]
    Fatal(String),
}

/// X-Ray through the AWS SDK.
#[derive(Debug, Clone)]
pub struct XraySink {
    client: aws_sdk_xray::Client,
}

impl XraySink {
    /// From an SDK config (region, credentials, `AWS_ENDPOINT_URL` from the default chain).
    pub fn new(config: &aws_config::SdkConfig) -> XraySink {
        XraySink {
            client: aws_sdk_xray::Client::new(config),
        }
    }
}

impl Sink for XraySink {
    async fn put(&self, docs: Vec<String>) -> Result<Vec<Unprocessed>, SendError> {
        use aws_sdk_xray::error::SdkError;
        match self
            .client
            .put_trace_segments()
            .set_trace_segment_documents(Some(docs))
            .send()
            .await
        {
            Ok(out) => Ok(out
                .unprocessed_trace_segments()
                .iter()
                .map(|u| Unprocessed {
                    id: u.id().unwrap_or_default().to_owned(),
                    code: u.error_code().map(str::to_owned),
                })
                .collect()),
            Err(SdkError::ServiceError(e)) => {
                let status = e.raw().status().as_u16();
                let msg = format!(
                    "HTTP {status}: {}",
                    aws_sdk_xray::error::DisplayErrorContext(e.err())
                );
                if status == 429 || status >= 500 || msg.contains("Throttl") {
                    Err(SendError::Retryable(msg))
                } else {
                    Err(SendError::Fatal(msg))
                }
            }
            Err(e) => Err(SendError::Retryable(
                aws_sdk_xray::error::DisplayErrorContext(&e).to_string(),
            )),
        }
    }
}

/// The wait before retry `attempt`: exponential, capped, with jitter.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let cap = BASE_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    // Full jitter: anywhere in [cap/2, cap].
    let half = cap / 2;
    half + Duration::from_micros(rand::random_range(0..=half.as_micros() as u64))
}

/// Creates the queue (`capacity` documents) and starts the exporter on it; the exporter
/// ends when every `Queue` clone is dropped and the queue is drained. With a spool, what it
/// held from before (`leftover`) is sent first.
pub fn start<S: Sink>(
    sink: S,
    capacity: usize,
    spool: Option<(Arc<Spool>, Vec<Doc>)>,
) -> (Queue, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity.max(MAX_BATCH));
    let stats = Arc::new(Stats::default());
    let (spool, leftover) = match spool {
        Some((s, l)) => (Some(s), l),
        None => (None, Vec::new()),
    };
    if !leftover.is_empty() {
        tracing::info!(documents = leftover.len(), "sending what the spool held");
        let tx = tx.clone();
        tokio::spawn(async move {
            for d in leftover {
                if tx.send(d).await.is_err() {
                    break;
                }
            }
        });
    }
    let handle = tokio::spawn(run(sink, rx, stats.clone(), spool.clone()));
    (Queue { tx, spool, stats }, handle)
}

async fn run<S: Sink>(
    sink: S,
    mut rx: mpsc::Receiver<Doc>,
    stats: Arc<Stats>,
    spool: Option<Arc<Spool>>,
) {
    let mut batch: Vec<Doc> = Vec::with_capacity(MAX_BATCH);
    loop {
        // Fill a batch: wait for the first document, then up to FLUSH_INTERVAL for more.
        if batch.is_empty() {
            match rx.recv().await {
                Some(d) => batch.push(d),
                None => return,
            }
        }
        let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(d)) => batch.push(d),
                Ok(None) | Err(_) => break,
            }
        }
        deliver(&sink, std::mem::take(&mut batch), &stats, spool.as_deref()).await;
    }
}

/// Sends one batch until X-Ray has taken every document (or refused it for good).
async fn deliver<S: Sink>(sink: &S, mut docs: Vec<Doc>, stats: &Stats, spool: Option<&Spool>) {
    let ack = |done: &[Doc]| {
        if let Some(s) = spool {
            if let Err(e) = s.ack(done) {
                tracing::error!(error = %e, "cannot record delivered documents in the spool");
            }
        }
    };
    let mut attempt = 0u32;
    while !docs.is_empty() {
        let bodies: Vec<String> = docs.iter().map(|d| d.json.clone()).collect();
        match sink.put(bodies).await {
            Ok(unprocessed) => {
                if unprocessed.is_empty() {
                    stats
                        .exported
                        .fetch_add(docs.len() as u64, Ordering::Relaxed);
                    ack(&docs);
                    return;
                }
                // Keep only what X-Ray did not process.
                let ids: Vec<&str> = unprocessed.iter().map(|u| u.id.as_str()).collect();
                let (left, done): (Vec<Doc>, Vec<Doc>) =
                    docs.into_iter().partition(|d| ids.contains(&d.id.as_str()));
                docs = left;
                stats
                    .exported
                    .fetch_add(done.len() as u64, Ordering::Relaxed);
                ack(&done);
                if docs.is_empty() {
                    // Unprocessed ids that match nothing sent: nothing left to resend.
                    return;
                }
                tracing::warn!(unprocessed = docs.len(), codes = ?unprocessed.iter().map(|u| u.code.clone()).collect::<Vec<_>>(), "X-Ray left documents unprocessed; resending those");
                stats.retried.fetch_add(1, Ordering::Relaxed);
            }
            Err(SendError::Retryable(e)) => {
                tracing::warn!(error = %e, documents = docs.len(), attempt, "X-Ray send failed; retrying");
                stats.retried.fetch_add(1, Ordering::Relaxed);
            }
            Err(SendError::Fatal(e)) => {
                tracing::error!(error = %e, documents = docs.len(), "X-Ray refused the batch; dropped");
                stats.drop_n("refused by X-Ray", docs.len() as u64);
                ack(&docs);
                return;
            }
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeSet;

    /// A fake X-Ray: fails the first `fail` calls, then leaves unprocessed every document
    /// whose id ends in `0` the first time it sees it.
    #[derive(Default, Clone)]
    struct Fake {
        fail: Arc<Mutex<u32>>,
        seen: Arc<Mutex<BTreeSet<String>>>,
        stored: Arc<Mutex<Vec<String>>>,
        batches: Arc<Mutex<Vec<usize>>>,
    }

    impl Sink for Fake {
        async fn put(&self, docs: Vec<String>) -> Result<Vec<Unprocessed>, SendError> {
            self.batches.lock().unwrap().push(docs.len());
            {
                let mut f = self.fail.lock().unwrap();
                if *f > 0 {
                    *f -= 1;
                    return Err(SendError::Retryable("HTTP 429: ThrottledException".into()));
                }
            }
            let mut out = Vec::new();
            for d in docs {
                let v: Value = serde_json::from_str(&d).unwrap();
                let id = v["id"].as_str().unwrap().to_owned();
                if id.ends_with('0') && self.seen.lock().unwrap().insert(id.clone()) {
                    out.push(Unprocessed {
                        id,
                        code: Some("ThrottledException".into()),
                    });
                } else {
                    self.stored.lock().unwrap().push(id);
                }
            }
            Ok(out)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_and_unprocessed_are_retried_without_duplicates() {
        let fake = Fake::default();
        *fake.fail.lock().unwrap() = 3;
        let (q, handle) = start(fake.clone(), 1000, None);
        let docs: Vec<Doc> = (0..120)
            .map(|i| Doc::new(&json!({"id": format!("{i:016x}")})))
            .collect();
        q.offer(docs).unwrap();
        let stats = q.stats.clone();
        drop(q);
        handle.await.unwrap();
        let stored = fake.stored.lock().unwrap().clone();
        let unique: BTreeSet<&String> = stored.iter().collect();
        assert_eq!(stored.len(), 120, "every document stored once");
        assert_eq!(unique.len(), 120);
        assert!(fake.batches.lock().unwrap().iter().all(|n| *n <= MAX_BATCH));
        assert_eq!(stats.exported.load(Ordering::Relaxed), 120);
        assert!(stats.retried.load(Ordering::Relaxed) >= 3);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_the_whole_request() {
        // A sink that never answers keeps the queue full.
        struct Stuck;
        impl Sink for Stuck {
            async fn put(&self, _: Vec<String>) -> Result<Vec<Unprocessed>, SendError> {
                std::future::pending().await
            }
        }
        let (q, _h) = start(Stuck, MAX_BATCH, None);
        let doc = |i: usize| Doc::new(&json!({"id": format!("{i:016x}")}));
        q.offer((0..MAX_BATCH).map(doc).collect()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await; // the exporter takes one batch
        q.offer((0..MAX_BATCH).map(doc).collect()).unwrap();
        let e = q.offer(vec![doc(1)]).unwrap_err();
        assert!(
            matches!(
                e,
                QueueFull::Full {
                    capacity: MAX_BATCH
                }
            ),
            "{e}"
        );
        assert_eq!(q.stats.rejected_full.load(Ordering::Relaxed), 1);
    }
}
