//! Maille's collector: a sidecar that receives OpenTelemetry traces from Envoy and
//! applications (OTLP over gRPC and HTTP) and exports them to AWS X-Ray, losing nothing:
//! batches within the API's limits, only unprocessed documents resent, throttling and
//! server errors retried with backoff, and back-pressure to senders when the queue is full.
//!
//! Metrics go to CloudWatch `PutMetricData`: cumulative counters and histograms as deltas,
//! histograms as values and counts, within the API's limits.
#![forbid(unsafe_code)]

pub mod export;
pub mod metrics;
pub mod metrics_export;
pub mod receive;
pub mod server;
pub mod spool;
pub mod xray;
