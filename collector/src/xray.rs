//! X-Ray's `PutTraceSegments` as the delivery loop's destination: the [`Sink`] documents go
//! to (the AWS SDK's [`XraySink`], or a caller's own), and how its answer becomes an outcome
//! per document: the ids X-Ray lists in `UnprocessedTraceSegments` are matched to the
//! documents sent, their error codes read by the shared AWS rules.

use crate::aws;
use crate::delivery::{Destination, Entry, Item, Rejected, SendError};
use crate::segment::Doc;
use std::future::Future;

/// X-Ray's limit on documents per `PutTraceSegments`.
pub(crate) const MAX_BATCH: usize = 50;

/// Where trace documents go: X-Ray, or a test's or embedder's own.
pub trait Sink: Send + Sync + 'static {
    /// Sends segment documents (JSON text); returns the ones X-Ray did not process, or why
    /// the call failed as a whole.
    fn put(
        &self,
        docs: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Unprocessed>, SendError>> + Send;
}

/// A document X-Ray did not process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unprocessed {
    /// Its `id`.
    pub id: String,
    /// X-Ray's error code, if any.
    pub code: Option<String>,
}

/// X-Ray through the AWS SDK.
#[derive(Debug, Clone)]
pub struct XraySink {
    client: aws_sdk_xray::Client,
}

impl XraySink {
    /// From an SDK config (region, credentials, `AWS_ENDPOINT_URL` from the default chain).
    /// The SDK's own retries are off: the delivery loop retries, and backs off, itself.
    pub fn new(config: &aws_config::SdkConfig) -> XraySink {
        use aws_sdk_xray::config::{retry::RetryConfig, Builder};
        XraySink {
            client: aws_sdk_xray::Client::from_conf(
                Builder::from(config)
                    .retry_config(RetryConfig::disabled())
                    .build(),
            ),
        }
    }
}

impl Sink for XraySink {
    async fn put(&self, docs: Vec<String>) -> Result<Vec<Unprocessed>, SendError> {
        let out = self
            .client
            .put_trace_segments()
            .set_trace_segment_documents(Some(docs))
            .send()
            .await
            .map_err(|e| aws::classify("X-Ray", &e))?;
        Ok(out
            .unprocessed_trace_segments()
            .iter()
            .map(|u| Unprocessed {
                id: u.id().unwrap_or_default().to_owned(),
                code: u.error_code().map(str::to_owned),
            })
            .collect())
    }
}

impl Item for Doc {
    fn bytes(&self) -> usize {
        self.json.len()
    }

    fn describe(&self) -> String {
        format!("segment {}", self.id_hex())
    }
}

/// A [`Sink`] as the delivery loop's destination.
#[derive(Debug)]
pub(crate) struct Xray<S>(pub(crate) S);

impl<S: Sink> Destination<Doc> for Xray<S> {
    const NAME: &'static str = "X-Ray";

    async fn send(&self, batch: &[Entry<Doc>]) -> Result<Vec<Rejected>, SendError> {
        let docs = batch.iter().map(|e| e.item.json.clone()).collect();
        let unprocessed = self.0.put(docs).await?;
        let mut rejected = Vec::with_capacity(unprocessed.len());
        for u in unprocessed {
            let (reason, retryable) = match u.code.as_deref() {
                Some(code) => (
                    format!("unprocessed by X-Ray: {code}"),
                    aws::code_is_retryable(code),
                ),
                None => (
                    "unprocessed by X-Ray without an error code".to_owned(),
                    true,
                ),
            };
            let id = u64::from_str_radix(&u.id, 16).ok();
            let mut matched = false;
            for (index, e) in batch.iter().enumerate() {
                if Some(e.item.id) == id {
                    matched = true;
                    rejected.push(Rejected {
                        index,
                        reason: reason.clone(),
                        sends: Rejected::sends_for(retryable),
                    });
                }
            }
            if !matched {
                // Cannot be told apart from the documents X-Ray took; say so rather than
                // guess.
                tracing::warn!(id = %u.id, %reason, "X-Ray reported a document not in the call");
            }
        }
        Ok(rejected)
    }
}
