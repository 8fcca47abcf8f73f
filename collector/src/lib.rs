//! Maille's collector: a sidecar that receives OpenTelemetry from Envoy and applications
//! (OTLP over gRPC and HTTP, gzip or not) and exports traces to AWS X-Ray, metrics to AWS
//! CloudWatch and logs (Envoy's access logs) to CloudWatch Logs, losing nothing it accepted: a request is taken whole into a bounded queue or
//! refused with a status that tells the sender whether to retry; one delivery loop per
//! destination sends batches within the API's limits, several at once, retries what may
//! succeed later and gives up, by name and count, only on what never will; an optional disk
//! spool survives crashes and restarts.
//!
//! It does not sample, aggregate spans, or tail-sample; it speaks OTLP in and the AWS APIs
//! out. Spans become X-Ray segment documents in `segment` (within X-Ray's 64 KB whatever field
//! holds the bulk), metrics become CloudWatch datums in `metrics` (cumulative sums and
//! histograms as deltas), log records become CloudWatch Logs events in `logs`; `otlp` receives, `delivery` sends, `aws` reads AWS failures,
//! `xray`, `cloudwatch` and `cloudwatch_logs` are the three destinations, `spool` the disk journal, `server`
//! assembles them. The binary (`maille-collector`) parses flags and calls [`start`].
#![forbid(unsafe_code)]

mod aws;
mod cloudwatch;
mod cloudwatch_logs;
mod delivery;
mod logs;
mod metrics;
mod otlp;
mod segment;
mod server;
mod spool;
mod xray;

pub use cloudwatch::CloudWatchSink;
pub use cloudwatch_logs::CloudWatchLogsSink;
pub use delivery::{SendError, Stats};
pub use logs::{
    Targets as LogTargets, Template as LogTemplate, DEFAULT_LOG_GROUP, DEFAULT_LOG_STREAM,
};
pub use otlp::DEFAULT_MAX_REQUEST_BYTES;
pub use segment::{check_document, MAX_DOCUMENT_BYTES};
pub use server::{
    start, Config, Running, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_LOG_STREAMS, DEFAULT_QUEUE_BYTES,
    DEFAULT_SHUTDOWN_TIMEOUT,
};
pub use xray::{Sink, Unprocessed, XraySink};
