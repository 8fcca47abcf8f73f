//! The collector assembled: the OTLP gRPC and HTTP receivers, `/healthz` and `/stats` on the
//! HTTP port, and three delivery loops, traces to X-Ray, metrics to CloudWatch and logs to
//! CloudWatch Logs, each over its own bounded queue.

use crate::cloudwatch::CloudWatchSink;
use crate::cloudwatch_logs::CloudWatchLogsSink;
use crate::delivery::{Capacity, Item, Limits, Queue, Stats};
use crate::logs::{Event, Targets, MAX_CALL_BYTES, MAX_CALL_SPAN_MS, MAX_EVENTS_PER_CALL};
use crate::metrics::{Converter, Datum, MAX_DATUMS_PER_REQUEST, MAX_REQUEST_BYTES};
use crate::otlp::{
    http_export, DiscardedLogs, Grpc, Intake, Logs, Metrics, Traces, DEFAULT_MAX_REQUEST_BYTES,
};
use crate::segment::{Doc, Options, MAX_DOCUMENT_BYTES};
use crate::spool::Spool;
use crate::xray::{Sink, Xray, MAX_BATCH};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a partial batch waits for more.
const LINGER: Duration = Duration::from_millis(200);

/// Settings. [`Config::default`] listens on the OTLP ports of 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Config {
    /// OTLP gRPC address (4317 by convention).
    pub grpc_addr: SocketAddr,
    /// OTLP HTTP address (4318 by convention); also `/healthz` and `/stats`.
    pub http_addr: SocketAddr,
    /// Documents (and, separately, metric datums) held at most while X-Ray or CloudWatch is
    /// slow or away; beyond, senders are told to retry.
    pub queue_capacity: usize,
    /// Bytes of documents held at most.
    pub queue_bytes: usize,
    /// Largest request, bytes, and the most a gzip body may decompress to.
    pub max_request_bytes: usize,
    /// Span attributes to index as X-Ray annotations (besides the mesh's markers).
    pub annotations: Vec<String>,
    /// Folder of the disk spool (trace documents; log events in its `logs` folder); `None`
    /// keeps the queues in memory only.
    pub spool: Option<std::path::PathBuf>,
    /// The CloudWatch Logs group and stream of each sender's log records.
    pub logs: Targets,
    /// Distinct log streams written to at most (senders name them); records of others are
    /// refused and counted.
    pub max_log_streams: usize,
    /// Attribute keys that become CloudWatch dimensions (defaults when empty).
    pub dimensions: Vec<String>,
    /// Calls in flight at once, to X-Ray and to CloudWatch each.
    pub max_in_flight: usize,
    /// Large requests converted at once, off the async workers.
    pub converters: usize,
    /// How long stopping may take: receivers end, what is held is delivered meanwhile, and
    /// what is left after it stays in the spool (or is counted lost without one).
    pub shutdown_timeout: Duration,
}

/// Default distinct log streams: a sidecar's Envoy and application need one or two.
pub const DEFAULT_MAX_LOG_STREAMS: usize = 100;
/// Default calls in flight: 64 calls of 50 documents every 100 ms carry 32,000 documents a
/// second even with slow round trips; an idle collector has none.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Default bytes of documents held.
pub const DEFAULT_QUEUE_BYTES: usize = 512 * 1024 * 1024;
/// Default time to stop in: SIGTERM ends the process within 5 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

impl Default for Config {
    fn default() -> Config {
        Config {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 4317)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 4318)),
            queue_capacity: 100_000,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            annotations: Vec::new(),
            spool: None,
            logs: Targets::default(),
            max_log_streams: DEFAULT_MAX_LOG_STREAMS,
            dimensions: Vec::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            converters: 1,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// A running collector.
#[derive(Debug)]
pub struct Running {
    /// Bound gRPC port.
    pub grpc_port: u16,
    /// Bound HTTP port.
    pub http_port: u16,
    /// The trace counters.
    pub stats: Arc<Stats>,
    /// The metrics counters, when metrics are exported.
    pub metric_stats: Option<Arc<Stats>>,
    /// The log counters (without a logs destination, of the records taken and dropped).
    pub log_stats: Option<Arc<Stats>>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    traces: (Queue<Doc>, JoinHandle<()>),
    metrics: Option<(Queue<Datum>, JoinHandle<()>)>,
    logs: Option<(Queue<Event>, JoinHandle<()>)>,
    spooled: bool,
    shutdown_timeout: Duration,
}

impl Running {
    /// Stops receiving and delivers what is held, within the shutdown timeout; then stops
    /// sending, and says how much was left (kept in the spool, or lost without one).
    pub async fn stop(self) {
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let _ = self.stop.send(true);
        for mut s in self.servers {
            if tokio::time::timeout_at(deadline, &mut s).await.is_err() {
                s.abort();
            }
        }
        self.traces.0.close();
        if let Some((m, _)) = &self.metrics {
            m.close();
        }
        if let Some((l, _)) = &self.logs {
            l.close();
        }
        let (queue, handle) = self.traces;
        let left = drain(queue, handle, deadline).await;
        if left > 0 && self.spooled {
            tracing::warn!(undelivered = left, "stopping: {left} trace documents not delivered in time; kept in the spool, sent after a restart");
        } else if left > 0 {
            tracing::warn!(undelivered = left, "stopping: {left} trace documents not delivered in time and lost (--spool keeps them)");
        }
        if let Some((queue, handle)) = self.metrics {
            let left = drain(queue, handle, deadline).await;
            if left > 0 {
                tracing::warn!(
                    undelivered = left,
                    "stopping: {left} metric datums not delivered in time and lost"
                );
            }
        }
        if let Some((queue, handle)) = self.logs {
            let left = drain(queue, handle, deadline).await;
            if left > 0 && self.spooled {
                tracing::warn!(undelivered = left, "stopping: {left} log events not delivered in time; kept in the spool, sent after a restart");
            } else if left > 0 {
                tracing::warn!(undelivered = left, "stopping: {left} log events not delivered in time and lost (--spool keeps them)");
            }
        }
    }
}

/// Waits for a closed queue's exporter until `deadline`, then abandons what is left; how
/// many items that was.
async fn drain<T: Item>(
    queue: Queue<T>,
    mut handle: JoinHandle<()>,
    deadline: tokio::time::Instant,
) -> usize {
    if tokio::time::timeout_at(deadline, &mut handle).await.is_ok() {
        return 0;
    }
    let left = queue.abandon();
    let _ = handle.await;
    left
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Binds the ports and starts everything, exporting traces to `sink` and, when given,
/// metrics to `metrics` and logs to `logs`.
pub async fn start<S: Sink>(
    cfg: Config,
    sink: S,
    metrics: Option<CloudWatchSink>,
    logs: Option<CloudWatchLogsSink>,
) -> std::io::Result<Running> {
    let grpc = TcpListener::bind(cfg.grpc_addr).await?;
    let http = TcpListener::bind(cfg.http_addr).await?;
    let grpc_port = grpc.local_addr()?.port();
    let http_port = http.local_addr()?.port();
    let capacity = Capacity {
        items: cfg.queue_capacity.max(MAX_BATCH),
        bytes: cfg.queue_bytes.max(MAX_DOCUMENT_BYTES),
    };
    let in_flight = cfg.max_in_flight.max(1);
    let (journal, leftover) = match &cfg.spool {
        Some(dir) => {
            let (s, left) = Spool::<Doc>::open(dir).map_err(std::io::Error::other)?;
            if !left.is_empty() {
                tracing::info!(documents = left.len(), "sending what the spool held");
            }
            (
                Some(Arc::new(s) as Arc<dyn crate::delivery::Journal<Doc>>),
                left,
            )
        }
        None => (None, Vec::new()),
    };
    let spooled = journal.is_some();
    let trace_queue = Queue::new("trace", capacity, journal, leftover);
    let trace_exporter = trace_queue.export(
        Xray(sink),
        Limits {
            max_items: MAX_BATCH,
            max_bytes: MAX_BATCH * MAX_DOCUMENT_BYTES,
            in_flight,
            linger: LINGER,
            max_span_ms: i64::MAX,
        },
    );
    let stats = trace_queue.stats().clone();
    let intake = Intake {
        max_request_bytes: cfg.max_request_bytes,
        converters: Arc::new(tokio::sync::Semaphore::new(cfg.converters.max(1))),
    };
    let options = Arc::new(Options {
        annotations: cfg.annotations.clone(),
        default_resource: Options::resource_from_env(
            std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok().as_deref(),
            std::env::var("OTEL_SERVICE_NAME").ok().as_deref(),
        ),
    });
    let traces = Traces {
        queue: trace_queue.clone(),
        options: options.clone(),
    };
    let logs = match logs {
        None => None,
        Some(sink) => {
            let (journal, leftover) = match &cfg.spool {
                Some(dir) => {
                    let (s, left) =
                        Spool::<Event>::open(&dir.join("logs")).map_err(std::io::Error::other)?;
                    if !left.is_empty() {
                        tracing::info!(
                            events = left.len(),
                            "sending the log events the spool held"
                        );
                    }
                    (
                        Some(Arc::new(s) as Arc<dyn crate::delivery::Journal<Event>>),
                        left,
                    )
                }
                None => (None, Vec::new()),
            };
            let queue = Queue::new(
                "logs",
                Capacity {
                    items: cfg.queue_capacity.max(MAX_EVENTS_PER_CALL),
                    bytes: cfg.queue_bytes.max(MAX_CALL_BYTES),
                },
                journal,
                leftover,
            );
            let exporter = queue.export(
                sink,
                Limits {
                    max_items: MAX_EVENTS_PER_CALL,
                    max_bytes: MAX_CALL_BYTES,
                    in_flight,
                    linger: LINGER,
                    max_span_ms: MAX_CALL_SPAN_MS,
                },
            );
            Some((
                Logs {
                    queue,
                    targets: Arc::new(cfg.logs.clone()),
                    options: options.clone(),
                    host: crate::logs::host_name().into(),
                    streams: Arc::default(),
                    max_streams: cfg.max_log_streams.max(1),
                },
                exporter,
            ))
        }
    };
    // Without a destination, records are still taken (and counted as dropped), so that
    // Envoy's access logger gets an answer.
    let discarded = logs.is_none().then(|| DiscardedLogs {
        stats: Arc::new(Stats::default()),
    });
    let log_stats = logs
        .as_ref()
        .map(|(l, _)| l.queue.stats().clone())
        .or_else(|| discarded.as_ref().map(|d| d.stats.clone()));
    let metrics = metrics.map(|sink| {
        let queue = Queue::new(
            "metrics",
            Capacity {
                items: cfg.queue_capacity.max(MAX_DATUMS_PER_REQUEST),
                bytes: cfg.queue_bytes.max(MAX_REQUEST_BYTES),
            },
            None,
            Vec::new(),
        );
        let exporter = queue.export(
            sink,
            Limits {
                max_items: MAX_DATUMS_PER_REQUEST,
                max_bytes: MAX_REQUEST_BYTES,
                in_flight,
                linger: LINGER,
                max_span_ms: i64::MAX,
            },
        );
        (
            Metrics {
                queue,
                converter: Arc::new(Mutex::new(Converter::new(cfg.dimensions.clone()))),
            },
            exporter,
        )
    });
    let metric_stats = metrics.as_ref().map(|(m, _)| m.queue.stats().clone());

    let (stop, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    let trace_grpc = Grpc::new(traces.clone(), intake.clone());
    let metric_grpc = metrics
        .as_ref()
        .map(|(m, _)| Grpc::new(m.clone(), intake.clone()));
    let log_grpc = logs
        .as_ref()
        .map(|(l, _)| Grpc::new(l.clone(), intake.clone()));
    let discard_grpc = discarded
        .as_ref()
        .map(|d| Grpc::new(d.clone(), intake.clone()));
    let rx = stop_rx.clone();
    servers.push(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(trace_grpc)
            .add_optional_service(metric_grpc)
            .add_optional_service(log_grpc)
            .add_optional_service(discard_grpc)
            .serve_with_incoming_shutdown(incoming, stopped(rx))
            .await
        {
            tracing::error!(error = %e, "OTLP gRPC receiver ended");
        }
    }));

    let st = stats.clone();
    let ms = metric_stats.clone();
    let ls = log_stats.clone();
    let mut app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(http_export::<Traces>).with_state((traces, intake.clone())),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/stats",
            axum::routing::get(move || {
                let (st, ms, ls) = (st.clone(), ms.clone(), ls.clone());
                async move {
                    let mut v = st.to_json();
                    if let Some(ms) = ms {
                        v["metrics"] = ms.to_json();
                    }
                    if let Some(ls) = ls {
                        v["logs"] = ls.to_json();
                    }
                    axum::Json(v)
                }
            }),
        );
    if let Some((m, _)) = &metrics {
        app = app.route(
            "/v1/metrics",
            axum::routing::post(http_export::<Metrics>).with_state((m.clone(), intake.clone())),
        );
    }
    if let Some((l, _)) = &logs {
        app = app.route(
            "/v1/logs",
            axum::routing::post(http_export::<Logs>).with_state((l.clone(), intake.clone())),
        );
    }
    if let Some(d) = &discarded {
        app = app.route(
            "/v1/logs",
            axum::routing::post(http_export::<DiscardedLogs>)
                .with_state((d.clone(), intake.clone())),
        );
    }
    let max = cfg.max_request_bytes;
    let app = app
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                announced_size(max, req, next)
            },
        ))
        .layer(axum::extract::DefaultBodyLimit::max(max));
    servers.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(http, app)
            .with_graceful_shutdown(stopped(stop_rx))
            .await
        {
            tracing::error!(error = %e, "OTLP HTTP receiver ended");
        }
    }));
    tracing::info!(grpc_port, http_port, "Maille collector receiving OTLP");
    Ok(Running {
        grpc_port,
        http_port,
        stats,
        metric_stats,
        log_stats,
        stop,
        servers,
        traces: (trace_queue, trace_exporter),
        metrics: metrics.map(|(m, h)| (m.queue, h)),
        logs: logs.map(|(l, h)| (l.queue, h)),
        spooled,
        shutdown_timeout: cfg.shutdown_timeout,
    })
}

/// Refuses a request whose `Content-Length` is over `max` before its body is read: the
/// client gets 413 while it may still be sending, rather than a closed connection.
async fn announced_size(
    max: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(n) if n > max as u64 => (
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            [(axum::http::header::CONTENT_TYPE, "text/plain")],
            format!("request body of {n} bytes: the limit is {max} bytes (--max-request-bytes)"),
        )
            .into_response(),
        _ => next.run(req).await,
    }
}
