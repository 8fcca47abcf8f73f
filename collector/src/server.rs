//! Runs the collector: OTLP gRPC and HTTP receivers, a health and stats endpoint on the HTTP
//! port, and the X-Ray exporter.

use crate::export::{self, Sink};
use crate::metrics_export::{http_metrics, CloudWatchSink, MetricStats, MetricsReceiver};
use crate::receive::{http_traces, Receiver};
use crate::xray::Options;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// OTLP gRPC address (4317 by convention).
    pub grpc_addr: SocketAddr,
    /// OTLP HTTP address (4318 by convention); also `/healthz` and `/stats`.
    pub http_addr: SocketAddr,
    /// Queue capacity, documents.
    pub queue_capacity: usize,
    /// Largest request, bytes.
    pub max_request_bytes: usize,
    /// Span attributes to index as X-Ray annotations (besides the mesh's markers).
    pub annotations: Vec<String>,
    /// Folder of the disk spool; `None` keeps the queue in memory only.
    pub spool: Option<std::path::PathBuf>,
    /// Attribute keys that become CloudWatch dimensions (defaults when empty).
    pub dimensions: Vec<String>,
}

/// A running collector.
#[derive(Debug)]
pub struct Running {
    /// Bound gRPC port.
    pub grpc_port: u16,
    /// Bound HTTP port.
    pub http_port: u16,
    /// The counters.
    pub stats: Arc<export::Stats>,
    /// The metrics counters, when metrics are exported.
    pub metric_stats: Option<Arc<MetricStats>>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    exporter: JoinHandle<()>,
}

impl Running {
    /// Stops receiving, then waits until the exporter has delivered what was queued.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for s in self.servers {
            let _ = s.await;
        }
        let _ = self.exporter.await;
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Binds the ports and starts everything, exporting traces to `sink` and, when given,
/// metrics to `metrics`.
pub async fn start<S: Sink>(
    cfg: Config,
    sink: S,
    metrics: Option<CloudWatchSink>,
) -> std::io::Result<Running> {
    let grpc = TcpListener::bind(cfg.grpc_addr).await?;
    let http = TcpListener::bind(cfg.http_addr).await?;
    let grpc_port = grpc.local_addr()?.port();
    let http_port = http.local_addr()?.port();
    let spool = match &cfg.spool {
        Some(dir) => {
            let (s, left) = crate::spool::Spool::open(dir).map_err(std::io::Error::other)?;
            Some((Arc::new(s), left))
        }
        None => None,
    };
    let (queue, exporter) = export::start(sink, cfg.queue_capacity, spool);
    let stats = queue.stats.clone();
    let receiver = Receiver {
        queue,
        options: Arc::new(Options {
            annotations: cfg.annotations.clone(),
            default_resource: Options::resource_from_env(
                std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok().as_deref(),
                std::env::var("OTEL_SERVICE_NAME").ok().as_deref(),
            ),
        }),
        max_request_bytes: cfg.max_request_bytes,
    };
    let (stop, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    let metrics = metrics.map(|m| MetricsReceiver::start(m, cfg.dimensions.clone(), 10_000));
    let metric_stats = metrics.as_ref().map(|(m, _)| m.stats.clone());

    let svc = receiver.clone().grpc();
    let msvc = metrics
        .as_ref()
        .map(|(m, _)| m.clone().grpc(cfg.max_request_bytes));
    let rx = stop_rx.clone();
    servers.push(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(svc)
            .add_optional_service(msvc)
            .serve_with_incoming_shutdown(incoming, stopped(rx))
            .await
        {
            tracing::error!(error = %e, "OTLP gRPC receiver ended");
        }
    }));

    let st = stats.clone();
    let ms = metric_stats.clone();
    let mr = metrics.as_ref().map(|(m, _)| m.clone());
    let mut app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(http_traces))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/stats",
            axum::routing::get(move || {
                let (st, ms, mr) = (st.clone(), ms.clone(), mr.clone());
                async move {
                    let mut v = st.to_json();
                    if let (Some(ms), Some(mr)) = (ms, mr) {
                        v["metrics"] = serde_json::json!({
                            "exported": ms.exported.load(std::sync::atomic::Ordering::Relaxed),
                            "retried": ms.retried.load(std::sync::atomic::Ordering::Relaxed),
                            "refused": ms.refused.load(std::sync::atomic::Ordering::Relaxed),
                            "dropped": mr.dropped(),
                        });
                    }
                    axum::Json(v)
                }
            }),
        )
        .with_state(receiver);
    if let Some((m, _)) = &metrics {
        app = app.merge(
            axum::Router::new()
                .route("/v1/metrics", axum::routing::post(http_metrics))
                .with_state(m.clone()),
        );
    }
    let app = app.layer(axum::extract::DefaultBodyLimit::max(cfg.max_request_bytes));
    let rx = stop_rx;
    servers.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(http, app)
            .with_graceful_shutdown(stopped(rx))
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
        stop,
        servers,
        exporter,
    })
}
