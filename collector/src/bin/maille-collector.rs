//! `maille-collector`: the sidecar. Flags in `--help`.

use clap::Parser;
use maille_collector::{
    start, CloudWatchLogsSink, CloudWatchSink, Config, LogTargets, LogTemplate, XraySink,
};
use std::net::SocketAddr;
use std::time::Duration;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Maille's collector: receives OpenTelemetry traces, metrics and logs over OTLP (gRPC and
/// HTTP, gzip or not) from Envoy and applications, and exports them to AWS X-Ray, CloudWatch
/// and CloudWatch Logs without losing any it accepted. AWS access follows the
/// default chain: AWS_REGION, credentials, and AWS_ENDPOINT_URL (e.g. a local moto server).
/// OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME fill in what senders' resources lack
/// (e.g. `cloud.platform=aws_ecs,aws.ecs.task.arn=...` for Envoy's spans on Fargate).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// OTLP gRPC listen address.
    #[arg(long, env = "MAILLE_OTLP_GRPC", default_value = "127.0.0.1:4317")]
    grpc_addr: SocketAddr,
    /// OTLP HTTP listen address (also /healthz and /stats).
    #[arg(long, env = "MAILLE_OTLP_HTTP", default_value = "127.0.0.1:4318")]
    http_addr: SocketAddr,
    /// Documents (and metric datums) held while X-Ray or CloudWatch is slow or away; when
    /// full, senders are told to retry.
    #[arg(long, default_value_t = 100_000)]
    queue_capacity: usize,
    /// Bytes of documents held at most (as --queue-capacity).
    #[arg(long, default_value_t = maille_collector::DEFAULT_QUEUE_BYTES)]
    queue_bytes: usize,
    /// Largest OTLP request accepted, bytes, and the most a gzip body may decompress to.
    #[arg(long, default_value_t = maille_collector::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// PutTraceSegments (and PutMetricData) calls in flight at once; fewer while the API
    /// throttles.
    #[arg(long, env = "MAILLE_MAX_IN_FLIGHT", default_value_t = maille_collector::DEFAULT_MAX_IN_FLIGHT as u16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    max_in_flight: u16,
    /// Seconds SIGTERM may take: what is held is delivered meanwhile, what is left stays in
    /// the spool (or is counted lost without one).
    #[arg(long, default_value_t = maille_collector::DEFAULT_SHUTDOWN_TIMEOUT.as_secs_f64())]
    shutdown_timeout: f64,
    /// Span attribute to index as an X-Ray annotation (repeatable); the mesh's markers
    /// (canary variant, circuit state, upstream cluster) always are.
    #[arg(long = "annotation")]
    annotations: Vec<String>,
    /// Keep accepted documents in this folder until X-Ray has them, so that an outage or a
    /// restart (even a crash) loses nothing.
    #[arg(long, env = "MAILLE_SPOOL")]
    spool: Option<std::path::PathBuf>,
    /// CloudWatch namespace of the metrics.
    #[arg(long, default_value = "Maille")]
    namespace: String,
    /// CloudWatch storage resolution in seconds: 60 (standard) or 1 (high resolution).
    #[arg(long, default_value_t = 60, value_parser = storage_resolution)]
    storage_resolution: i32,
    /// Attribute that becomes a CloudWatch dimension (repeatable); default: service.name,
    /// envoy.cluster_name, envoy.response_code_class, envoy.http_conn_manager_prefix,
    /// maille.variant.
    #[arg(long = "dimension")]
    dimensions: Vec<String>,
    /// Do not export metrics.
    #[arg(long)]
    no_metrics: bool,
    /// CloudWatch Logs group of the log records (Envoy's access logs); `{attribute}` is the
    /// sender's resource attribute (service.name defaults to OTEL_SERVICE_NAME, then
    /// unknown_service). Created when missing.
    #[arg(long, env = "MAILLE_LOG_GROUP", default_value = maille_collector::DEFAULT_LOG_GROUP)]
    log_group: String,
    /// CloudWatch Logs stream, as --log-group (host.name defaults to this machine's host
    /// name: one stream per task, pod or instance). Created when missing.
    #[arg(long, env = "MAILLE_LOG_STREAM", default_value = maille_collector::DEFAULT_LOG_STREAM)]
    log_stream: String,
    /// Days a log group this collector creates keeps its events (CloudWatch Logs' allowed
    /// values: 1, 3, 5, 7, 14, 30, 60, 90, ...); by default they never expire.
    #[arg(long, value_parser = retention_days)]
    log_retention_days: Option<i32>,
    /// Distinct log groups and streams written to at most: senders name them by their
    /// resource, so a sender cannot create without bound; records of others are refused
    /// (OTLP partial success) and counted.
    #[arg(long, default_value_t = maille_collector::DEFAULT_MAX_LOG_STREAMS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_log_streams: u32,
    /// Do not export logs.
    #[arg(long)]
    no_logs: bool,
    /// Worker threads. One keeps the sidecar to one core and spends the least CPU per span
    /// (about 100,000 spans/s on one core of the benchmark machine); raise it for more.
    /// Requests over 64 KiB are converted beside them, as many at once as this.
    #[arg(long, env = "MAILLE_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
}

fn storage_resolution(s: &str) -> Result<i32, String> {
    match s {
        "1" => Ok(1),
        "60" => Ok(60),
        other => Err(format!(
            "{other:?}: CloudWatch takes 1 (high resolution) or 60 (standard)"
        )),
    }
}

/// The retention periods CloudWatch Logs takes.
const RETENTION_DAYS: [i32; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

fn retention_days(s: &str) -> Result<i32, String> {
    match s.parse::<i32>() {
        Ok(d) if RETENTION_DAYS.contains(&d) => Ok(d),
        _ => Err(format!(
            "{s:?}: CloudWatch Logs keeps events for one of {RETENTION_DAYS:?} days"
        )),
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    if aws.region().is_none() {
        anyhow::bail!("no AWS region: set AWS_REGION (or a profile with one)");
    }
    if !(args.shutdown_timeout.is_finite() && args.shutdown_timeout >= 0.0) {
        anyhow::bail!(
            "--shutdown-timeout {}: a number of seconds, 0 or more",
            args.shutdown_timeout
        );
    }
    let logs = LogTargets {
        group: LogTemplate::parse(&args.log_group, true)
            .map_err(|e| anyhow::anyhow!("--log-group: {e}"))?,
        stream: LogTemplate::parse(&args.log_stream, false)
            .map_err(|e| anyhow::anyhow!("--log-stream: {e}"))?,
    };
    let running = start(
        Config {
            grpc_addr: args.grpc_addr,
            http_addr: args.http_addr,
            queue_capacity: args.queue_capacity,
            queue_bytes: args.queue_bytes,
            max_request_bytes: args.max_request_bytes,
            annotations: args.annotations,
            spool: args.spool,
            logs,
            max_log_streams: args.max_log_streams as usize,
            dimensions: args.dimensions,
            max_in_flight: usize::from(args.max_in_flight),
            converters: usize::from(args.threads),
            shutdown_timeout: Duration::from_secs_f64(args.shutdown_timeout),
        },
        XraySink::new(&aws),
        (!args.no_metrics)
            .then(|| CloudWatchSink::new(&aws, &args.namespace, args.storage_resolution)),
        (!args.no_logs).then(|| CloudWatchLogsSink::new(&aws, args.log_retention_days)),
    )
    .await?;
    println!(
        "maille-collector: OTLP gRPC on {}, HTTP on {}",
        running.grpc_port, running.http_port
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping: delivering what is queued, for up to --shutdown-timeout");
    running.stop().await;
    Ok(())
}
