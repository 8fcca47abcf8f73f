//! The OTLP receivers: gRPC (`TraceService/Export`, `MetricsService/Export`,
//! `LogsService/Export`) and HTTP (`POST /v1/traces`, `/v1/metrics`, `/v1/logs`, protobuf or
//! JSON), gzip accepted on both.
//!
//! Each request is refused or taken whole. On its way in it is decompressed within the
//! largest request size, counted on the wire ([`scan`]) so that one whose decoded form would
//! be out of proportion to its size is refused before it is decoded, decoded, converted and
//! queued. A request over 64 KiB (and every metrics request, whose conversion holds the
//! cumulative state) is handled on the blocking pool, a bounded number at once, so that a
//! large request cannot stall `/healthz` or other senders.
//!
//! Answers follow the OTLP specification: what can never succeed is not retried by clients
//! (gRPC `INVALID_ARGUMENT`, HTTP 400/413/415); a full queue answers `RESOURCE_EXHAUSTED`
//! with `RetryInfo` (HTTP 429 with `Retry-After`), which clients retry.

mod grpc;
mod http;
mod scan;

pub(crate) use grpc::Grpc;
pub(crate) use http::http_export;

use crate::delivery::{Queue, Refusal};
use crate::logs::{Event, Targets};
use crate::metrics::{Converter, Datum};
use crate::segment::{document, Doc, Options, ResourceView};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::bytes::Bytes;
use prost::Message;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// How long a sender pushed back by a full queue is told to wait (gRPC `RetryInfo`, HTTP
/// `Retry-After`).
pub(crate) const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Default largest request accepted, bytes, compressed or not (the OTLP exporters' default
/// batch fits easily).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;
/// Requests up to this size are handled on the async worker: converting them takes well
/// under a millisecond.
const INLINE_BYTES: usize = 64 * 1024;
/// Bytes of X-Ray documents a request may make per byte of it: spans that repeat a sender's
/// large resource in each of their segments can multiply it.
const DOCUMENTS_PER_WIRE_BYTE: usize = 32;
/// Bytes of documents any request may make.
const DOCUMENTS_FLOOR: usize = 1 << 20;

/// Why a request was not taken; nothing of it was.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// Malformed, or out of proportion: never worth sending again.
    #[error("{0}")]
    Invalid(String),
    /// Over the largest request size.
    #[error("{0}")]
    TooLarge(String),
    /// A content type or encoding the collector does not speak.
    #[error("{0}")]
    Unsupported(String),
    /// The queue could not take it (full: retry later; stopping or the spool failing).
    #[error(transparent)]
    Queue(#[from] Refusal),
    /// The conversion failed inside (a bug); the request was not taken.
    #[error("{0}")]
    Internal(String),
}

/// How a body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Protobuf,
    Json,
}

/// What every request goes through: its size limit and the bound on conversions at once.
#[derive(Debug, Clone)]
pub(crate) struct Intake {
    /// Largest request, bytes (also the most a gzip body may decompress to).
    pub(crate) max_request_bytes: usize,
    /// Conversions on the blocking pool at once.
    pub(crate) converters: Arc<Semaphore>,
}

/// A kind of OTLP data: traces or metrics.
pub(crate) trait Signal: Clone + Send + Sync + 'static {
    type Request: Message + Default + serde::de::DeserializeOwned + Send + 'static;
    type Response: Message + serde::Serialize + Send + 'static;
    /// How messages name it ("trace", "metrics").
    const WHAT: &'static str;
    /// The gRPC service and its Export method's path.
    const SERVICE: &'static str;
    const METHOD: &'static str;
    const ROOT: scan::Root;
    /// Whether every request is handled on the blocking pool.
    const ALWAYS_BLOCKING: bool;
    /// Converts and queues a decoded request of `wire` bytes, all or nothing.
    fn take(&self, req: Self::Request, wire: usize) -> Result<Self::Response, Refused>;
}

/// Handles one request body, off the async workers when it is large.
pub(crate) async fn receive<S: Signal>(
    sig: &S,
    intake: &Intake,
    body: Bytes,
    format: Format,
    gzip: bool,
) -> Result<S::Response, Refused> {
    let max = intake.max_request_bytes;
    if !(S::ALWAYS_BLOCKING || gzip || body.len() > INLINE_BYTES) {
        return process(sig, body, format, gzip, max);
    }
    let permit = intake
        .converters
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Refusal::Closed)?;
    let sig = sig.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        process(&sig, body, format, gzip, max)
    })
    .await
    .unwrap_or_else(|e| Err(Refused::Internal(format!("conversion failed: {e}"))))
}

fn process<S: Signal>(
    sig: &S,
    body: Bytes,
    format: Format,
    gzip: bool,
    max: usize,
) -> Result<S::Response, Refused> {
    let body = if gzip { gunzip(&body, max)? } else { body };
    let wire = body.len();
    let what = S::WHAT;
    let req = match format {
        Format::Protobuf => {
            scan::check(S::ROOT, &body).map_err(|e| {
                Refused::Invalid(format!("not an OTLP/protobuf {what} request: {e}"))
            })?;
            S::Request::decode(body).map_err(|e| {
                Refused::Invalid(format!("not an OTLP/protobuf {what} request: {e}"))
            })?
        }
        Format::Json => {
            scan::check_json(S::ROOT, &body)
                .map_err(|e| Refused::Invalid(format!("not an OTLP/JSON {what} request: {e}")))?;
            serde_json::from_slice(&body)
                .map_err(|e| Refused::Invalid(format!("not an OTLP/JSON {what} request: {e}")))?
        }
    };
    sig.take(req, wire)
}

/// Decompresses a gzip body, to at most `max` bytes: a gzip bomb gets an error, not memory.
fn gunzip(body: &[u8], max: usize) -> Result<Bytes, Refused> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(body)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Refused::Invalid(format!("the body is not valid gzip: {e}")))?;
    if out.len() > max {
        return Err(Refused::TooLarge(format!(
            "the gzip body decompresses to more than {max} bytes, the largest request taken (--max-request-bytes)"
        )));
    }
    Ok(out.into())
}

// === impl Traces ===

/// Spans to X-Ray documents into the trace queue.
#[derive(Debug, Clone)]
pub(crate) struct Traces {
    pub(crate) queue: Queue<Doc>,
    pub(crate) options: Arc<Options>,
}

impl Signal for Traces {
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    const WHAT: &'static str = "trace";
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const METHOD: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const ROOT: scan::Root = scan::Root::Traces;
    const ALWAYS_BLOCKING: bool = false;

    fn take(&self, req: Self::Request, wire: usize) -> Result<Self::Response, Refused> {
        let budget = DOCUMENTS_PER_WIRE_BYTE
            .saturating_mul(wire)
            .saturating_add(DOCUMENTS_FLOOR);
        let (mut spans, mut invalid, mut trimmed, mut bytes) = (0u64, 0u64, 0u64, 0usize);
        let mut docs = Vec::new();
        for rs in &req.resource_spans {
            let res = ResourceView::new(rs.resource.as_ref(), &self.options);
            for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                spans += 1;
                let Some(w) = document(span, &res, &self.options) else {
                    invalid += 1;
                    continue;
                };
                bytes += w.doc.json.len();
                if bytes > budget {
                    return Err(Refused::Invalid(format!(
                        "the request's {spans} spans so far make more than {budget} bytes of X-Ray documents from {wire} bytes, more than {DOCUMENTS_PER_WIRE_BYTE}x its size (a large resource repeated in every segment?)"
                    )));
                }
                trimmed += u64::from(w.trimmed);
                docs.push(w.doc);
            }
        }
        self.queue.offer(docs)?;
        let stats = self.queue.stats();
        stats.add_received(spans);
        stats.add_trimmed(trimmed);
        stats.drop_n("invalid trace or span id", invalid);
        Ok(ExportTraceServiceResponse {
            partial_success: (invalid > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: invalid as i64,
                error_message: format!(
                    "{invalid} span(s) without a valid 16-byte trace id and 8-byte span id"
                ),
            }),
        })
    }
}

// === impl Metrics ===

/// Metric points to CloudWatch datums into the metrics queue.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) queue: Queue<Datum>,
    pub(crate) converter: Arc<Mutex<Converter>>,
}

impl Signal for Metrics {
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;
    const WHAT: &'static str = "metrics";
    const SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const METHOD: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    const ROOT: scan::Root = scan::Root::Metrics;
    const ALWAYS_BLOCKING: bool = true;

    fn take(&self, req: Self::Request, _wire: usize) -> Result<Self::Response, Refused> {
        // Held from conversion to queueing: the cumulative state moves on only when the
        // datums were taken, so a request pushed back and sent again loses no delta.
        let mut converter = self.converter.lock().unwrap_or_else(|e| e.into_inner());
        let converted = converter.convert(&req);
        self.queue.offer(converted.datums)?;
        let stats = self.queue.stats();
        for (reason, n) in converted.staged.dropped() {
            stats.drop_n(reason, *n);
        }
        stats.add_received(converted.points);
        converter.commit(converted.staged);
        Ok(ExportMetricsServiceResponse {
            partial_success: None,
        })
    }
}

// === impl Logs ===

/// Log records to CloudWatch Logs events into the logs queue.
#[derive(Debug, Clone)]
pub(crate) struct Logs {
    pub(crate) queue: Queue<Event>,
    pub(crate) targets: Arc<Targets>,
    pub(crate) options: Arc<Options>,
    /// The collector's host name, for streams named by `host.name`.
    pub(crate) host: Arc<str>,
    /// The streams written to, at most `max_streams`: senders name them (by their resource),
    /// so their number is bounded; one `Arc` per stream.
    pub(crate) streams: Arc<Mutex<std::collections::HashSet<Arc<crate::logs::Stream>>>>,
    pub(crate) max_streams: usize,
}

impl Logs {
    /// The stream as held (one `Arc` per stream), or `None` past the limit; `new` hears of
    /// a stream admitted by this call, to be let go if its request is refused.
    fn admit(
        &self,
        stream: Arc<crate::logs::Stream>,
        new: &mut Vec<Arc<crate::logs::Stream>>,
    ) -> Option<Arc<crate::logs::Stream>> {
        let mut held = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = held.get(&stream) {
            return Some(s.clone());
        }
        if held.len() >= self.max_streams {
            return None;
        }
        held.insert(stream.clone());
        new.push(stream.clone());
        Some(stream)
    }

    /// Lets go of streams admitted for a request that was refused.
    fn release(&self, new: Vec<Arc<crate::logs::Stream>>) {
        let mut held = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        for s in new {
            held.remove(&s);
        }
    }
}

/// Bytes of events a request may make per byte of it (each record's resource and scope are
/// not repeated in its event; its JSON keys and quotes are).
const EVENTS_PER_WIRE_BYTE: usize = 8;

impl Signal for Logs {
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    const WHAT: &'static str = "logs";
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const METHOD: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const ROOT: scan::Root = scan::Root::Logs;
    const ALWAYS_BLOCKING: bool = false;

    fn take(&self, req: Self::Request, wire: usize) -> Result<Self::Response, Refused> {
        let mut new = Vec::new();
        let taken = self.take_admitting(req, wire, &mut new);
        if taken.is_err() {
            self.release(new);
        }
        taken
    }
}

impl Logs {
    fn take_admitting(
        &self,
        req: ExportLogsServiceRequest,
        wire: usize,
        new: &mut Vec<Arc<crate::logs::Stream>>,
    ) -> Result<ExportLogsServiceResponse, Refused> {
        let budget = EVENTS_PER_WIRE_BYTE
            .saturating_mul(wire)
            .saturating_add(DOCUMENTS_FLOOR);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let (mut records, mut trimmed, mut bytes, mut over) = (0u64, 0u64, 0usize, 0u64);
        let mut events = Vec::new();
        for rl in &req.resource_logs {
            let stream = crate::logs::stream_for(
                &self.targets,
                rl.resource.as_ref(),
                &self.options,
                &self.host,
            );
            let all = rl.scope_logs.iter().flat_map(|sl| &sl.log_records);
            if all.clone().next().is_none() {
                continue;
            }
            let Some(stream) = self.admit(stream, new) else {
                let n = all.count() as u64;
                records += n;
                over += n;
                continue;
            };
            let mesh = crate::logs::mesh_of(rl.resource.as_ref());
            for rec in all {
                records += 1;
                let c = crate::logs::event(rec, &stream, mesh, now_ms);
                bytes += c.event.message.len();
                if bytes > budget {
                    return Err(Refused::Invalid(format!(
                        "the request's {records} log records so far make more than {budget} bytes of CloudWatch Logs events from {wire} bytes, more than {EVENTS_PER_WIRE_BYTE}x its size"
                    )));
                }
                trimmed += u64::from(c.trimmed);
                events.push(c.event);
            }
        }
        self.queue.offer(events)?;
        let stats = self.queue.stats();
        stats.add_received(records);
        stats.add_trimmed(trimmed);
        let max = self.max_streams;
        stats.drop_n(
            &format!("more than {max} log streams (--max-log-streams)"),
            over,
        );
        Ok(ExportLogsServiceResponse {
            partial_success: (over > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: over as i64,
                error_message: format!(
                    "{over} record(s) of a log group and stream beyond the collector's {max} (--max-log-streams)"
                ),
            }),
        })
    }
}

/// Log records when logs are not exported (`--no-logs`): taken, so that Envoy's access
/// logger is not answered UNIMPLEMENTED on every flush, and counted as dropped by that reason.
#[derive(Debug, Clone)]
pub(crate) struct DiscardedLogs {
    pub(crate) stats: Arc<crate::delivery::Stats>,
}

impl Signal for DiscardedLogs {
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    const WHAT: &'static str = "logs";
    const SERVICE: &'static str = Logs::SERVICE;
    const METHOD: &'static str = Logs::METHOD;
    const ROOT: scan::Root = scan::Root::Logs;
    const ALWAYS_BLOCKING: bool = false;

    fn take(&self, req: Self::Request, _wire: usize) -> Result<Self::Response, Refused> {
        let n: usize = req
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .map(|sl| sl.log_records.len())
            .sum();
        self.stats.add_received(n as u64);
        self.stats.drop_n("logs not exported (--no-logs)", n as u64);
        Ok(ExportLogsServiceResponse {
            partial_success: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Condvar;
    use std::time::Duration;

    /// A signal whose conversion waits until the test opens its gate.
    #[derive(Clone, Default)]
    struct Gated {
        gate: Arc<(Mutex<bool>, Condvar)>,
        running: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Gated {
        fn open(&self) {
            *self.gate.0.lock().unwrap() = true;
            self.gate.1.notify_all();
        }
    }

    impl Signal for Gated {
        type Request = ExportTraceServiceRequest;
        type Response = ExportTraceServiceResponse;
        const WHAT: &'static str = "trace";
        const SERVICE: &'static str = "test";
        const METHOD: &'static str = "/test/Export";
        const ROOT: scan::Root = scan::Root::Traces;
        const ALWAYS_BLOCKING: bool = false;

        fn take(&self, _: Self::Request, _: usize) -> Result<Self::Response, Refused> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            let (open, cv) = &*self.gate;
            let mut g = open.lock().unwrap();
            while !*g {
                g = cv.wait(g).unwrap();
            }
            drop(g);
            std::thread::sleep(Duration::from_millis(20));
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(Default::default())
        }
    }

    fn large_body() -> Bytes {
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        name: "n".repeat(INLINE_BYTES + 1),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
        .into()
    }

    fn intake(converters: usize) -> Intake {
        Intake {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            converters: Arc::new(Semaphore::new(converters)),
        }
    }

    #[test]
    fn a_large_request_is_converted_off_the_async_worker() {
        let sig = Gated::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let s = sig.clone();
        std::thread::spawn(move || {
            // One thread for everything async: if the conversion ran on it, nothing else
            // could open the gate.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let r = rt.block_on(async move {
                let (s2, intake) = (s.clone(), intake(1));
                let task = tokio::spawn(async move {
                    receive(&s2, &intake, large_body(), Format::Protobuf, false).await
                });
                while s.running.load(Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                s.open();
                task.await.unwrap()
            });
            let _ = tx.send(r.is_ok());
        });
        let ok = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the conversion held the async worker");
        assert!(ok);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_conversions_run_a_bounded_number_at_once() {
        let sig = Gated::default();
        sig.open();
        let intake = intake(2);
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let (s, i) = (sig.clone(), intake.clone());
                tokio::spawn(
                    async move { receive(&s, &i, large_body(), Format::Protobuf, false).await },
                )
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(sig.most.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn gzip_is_decompressed_within_the_limit() {
        use std::io::Write;
        let gz = |b: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(b).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(&gunzip(&gz(b"hello"), 5).unwrap()[..], b"hello");
        // Two members, as `cat a.gz b.gz` makes.
        let two = [gz(b"ab"), gz(b"cd")].concat();
        assert_eq!(&gunzip(&two, 100).unwrap()[..], b"abcd");
        match gunzip(&gz(&[0u8; 10_000]), 9_999) {
            Err(Refused::TooLarge(m)) => assert!(m.contains("9999 bytes"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(gunzip(b"not gzip", 100), Err(Refused::Invalid(_))));
    }
}
