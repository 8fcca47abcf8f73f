//! OTLP spans in, X-Ray documents out: Maille's collector against Rotel (PyPI `rotel`, its
//! `aws-xray` exporter with a custom endpoint), both sending to the same local X-Ray sink
//! that counts documents, in the same run on this machine.
//!
//! `make bench-collector` (installs Rotel into .venv first). Environment: `SECONDS` of load
//! per collector (default 10), `CLIENTS` concurrent gRPC senders (default 4), `BATCH` spans
//! per request (default 100). Reports spans/s delivered, CPU seconds per million spans,
//! peak memory; then Maille with a sink taking 100 ms per call (a distant X-Ray: what
//! several calls in flight carry), and under overload (a sink taking 500 ms per call) to
//! show memory stays bounded while senders are pushed back.
//!
//! Then logs: Envoy's access log records (its default line and the mesh's attributes) to a
//! local CloudWatch Logs sink, log events per CPU second against the collector's own traces
//! path measured in the same run (no peer exporting OTLP logs to CloudWatch Logs is
//! available from the registries: Rotel 0.0.1a15 has none), and with the sink taking 100 ms
//! per call.

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

fn env_or(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The X-Ray and CloudWatch Logs sink: counts documents of `PutTraceSegments` and events
/// of `PutLogEvents`, optionally slowly; takes `CreateLogGroup` and `CreateLogStream`.
fn sink(rt: &tokio::runtime::Runtime, delay: Duration) -> (u16, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap, body: Bytes| {
        let c = c.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let n = v["TraceSegmentDocuments"].as_array().map_or(0, Vec::len)
                + v["logEvents"].as_array().map_or(0, Vec::len);
            c.fetch_add(n as u64, Ordering::Relaxed);
            let logs = headers
                .get("x-amz-target")
                .and_then(|t| t.to_str().ok())
                .is_some_and(|t| t.starts_with("Logs_"));
            (
                [("content-type", "application/x-amz-json-1.1")],
                if logs {
                    "{}"
                } else {
                    r#"{"UnprocessedTraceSegments":[]}"#
                },
            )
        }
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, count)
}

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: f64 = fields
            .get(11)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            + fields
                .get(12)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        ticks / 100.0
    }

    fn peak_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
            / 1024.0
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} did not open");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn maille(sink: u16, queue: usize) -> (Proc, u16) {
    let (grpc, http) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_maille-collector"))
        .args([
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
        ])
        .args(["--queue-capacity", &queue.to_string(), "--no-metrics"])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{sink}"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("maille-collector");
    wait_port(grpc);
    (Proc { child }, grpc)
}

fn rotel(sink: u16) -> Option<(Proc, u16)> {
    let bin = root().join(".venv/lib/python3.11/site-packages/rotel/rotel-agent");
    let bin = if bin.exists() {
        bin
    } else {
        std::fs::read_dir(root().join(".venv/lib"))
            .ok()?
            .flatten()
            .find_map(|d| {
                let p = d.path().join("site-packages/rotel/rotel-agent");
                p.exists().then_some(p)
            })?
    };
    let (grpc, http) = (free_port(), free_port());
    let child = Command::new(bin)
        .args([
            "start",
            "--otlp-grpc-endpoint",
            &format!("127.0.0.1:{grpc}"),
        ])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
        .args([
            "--exporter",
            "aws-xray",
            "--xray-exporter-region",
            "us-east-1",
        ])
        .args([
            "--xray-exporter-custom-endpoint",
            &format!("http://127.0.0.1:{sink}"),
        ])
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_port(grpc);
    Some((Proc { child }, grpc))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn s(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn request(seq: u64, batch: u64) -> ExportTraceServiceRequest {
    let now = now_ns();
    let mut trace = [0u8; 16];
    trace[..8].copy_from_slice(&seq.to_be_bytes());
    trace[8] = 1;
    let spans = (0..batch)
        .map(|i| Span {
            trace_id: trace.to_vec(),
            span_id: (seq * 1000 + i + 1).to_be_bytes().to_vec(),
            parent_span_id: if i == 0 {
                Vec::new()
            } else {
                (seq * 1000 + 1).to_be_bytes().to_vec()
            },
            name: "egress colorteller.local".into(),
            kind: if i == 0 { 2 } else { 3 },
            start_time_unix_nano: now - 2_000_000,
            end_time_unix_nano: now,
            attributes: vec![
                s("http.method", "GET"),
                s("http.url", "http://colorteller.local/color"),
                s("http.status_code", "200"),
                s("upstream_cluster", "node/colorteller-white/9080"),
                s("x-maille-variant", "colorteller-white"),
                s("user_agent", "bench/1.0"),
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![s("service.name", "gateway")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// An access log request of `batch` records, as Envoy's OpenTelemetry access logger sends
/// Maille's (the default line as the body, its fields and the mesh's as attributes).
fn log_request(seq: u64, batch: u64) -> ExportLogsServiceRequest {
    let now = now_ns();
    let records = (0..batch)
        .map(|i| LogRecord {
            time_unix_nano: now,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!(
                    "[2026-12-01T16:00:00.000Z] \"GET /color HTTP/1.1\" 200 - 0 5 2 1 \"-\" \"bench/1.0\" \"6c9f3c1e-0d5a-4b7e-9a51-{seq:06x}{i:06x}\" \"colorteller.local\" \"127.0.0.1:9080\""
                ))),
            }),
            attributes: vec![
                s("start_time", "2026-12-01T16:00:00.000Z"),
                s("method", "GET"),
                s("path", "/color"),
                s("protocol", "HTTP/1.1"),
                s("response_code", "200"),
                s("response_flags", "-"),
                s("bytes_received", "0"),
                s("bytes_sent", "5"),
                s("duration", "2"),
                s("upstream_service_time", "1"),
                s("x_forwarded_for", "-"),
                s("user_agent", "bench/1.0"),
                s("request_id", "6c9f3c1e-0d5a-4b7e-9a51-0123456789ab"),
                s("authority", "colorteller.local"),
                s("upstream_host", "127.0.0.1:9080"),
                s("upstream_cluster", "node/colorteller-white/9080"),
                s("trace_id", &format!("{seq:016x}{i:016x}")),
                s("variant", "colorteller-white"),
            ],
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    s("service.name", "colorgateway"),
                    s("maille.mesh", "colorapp"),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// What the senders send.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Signal {
    Spans,
    Logs,
}

/// Sends spans or log records as fast as accepted for `secs`; items accepted and requests
/// pushed back.
fn load(
    rt: &tokio::runtime::Runtime,
    signal: Signal,
    port: u16,
    secs: u64,
    clients: u64,
    batch: u64,
) -> (u64, u64) {
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (a, r) = (accepted.clone(), refused.clone());
            rt.spawn(async move {
                let url = format!("http://127.0.0.1:{port}");
                let mut spans = TraceServiceClient::connect(url.clone()).await.unwrap();
                let mut logs = LogsServiceClient::connect(url).await.unwrap();
                let mut seq = c * 1_000_000_000;
                while Instant::now() < end {
                    seq += 1;
                    let sent = match signal {
                        Signal::Spans => spans.export(request(seq, batch)).await.map(|_| ()),
                        Signal::Logs => logs.export(log_request(seq, batch)).await.map(|_| ()),
                    };
                    match sent {
                        Ok(_) => {
                            a.fetch_add(batch, Ordering::Relaxed);
                        }
                        Err(_) => {
                            r.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = rt.block_on(t);
    }
    (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    )
}

struct Row {
    name: &'static str,
    accepted: u64,
    delivered: u64,
    secs: f64,
    cpu: f64,
    peak: f64,
}

#[allow(clippy::too_many_arguments)] // A bench's knobs, spelled out.
fn measure(
    rt: &tokio::runtime::Runtime,
    signal: Signal,
    name: &'static str,
    proc_: Proc,
    port: u16,
    count: Arc<AtomicU64>,
    secs: u64,
    clients: u64,
    batch: u64,
) -> Row {
    let base = count.load(Ordering::Relaxed);
    let cpu0 = proc_.cpu_seconds();
    let t0 = Instant::now();
    let (accepted, _) = load(rt, signal, port, secs, clients, batch);
    // Let it deliver what it accepted (up to 30 s more).
    let deadline = Instant::now() + Duration::from_secs(30);
    while count.load(Ordering::Relaxed) - base < accepted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs_total = t0.elapsed().as_secs_f64();
    Row {
        name,
        accepted,
        delivered: count.load(Ordering::Relaxed) - base,
        secs: secs_total,
        cpu: proc_.cpu_seconds() - cpu0,
        peak: proc_.peak_mib(),
    }
}

/// The rows as a table, rates in `unit`s.
fn table(unit: &str, rows: &[&Row]) {
    println!(
        "{:<8} {:>10} {:>10} {:>12} {:>16} {:>10}",
        "",
        "accepted",
        "delivered",
        format!("{unit}/s"),
        format!("CPU s / M {unit}"),
        "peak MiB"
    );
    for r in rows {
        println!(
            "{:<8} {:>10} {:>10} {:>12.0} {:>16.2} {:>10.1}",
            r.name,
            r.accepted,
            r.delivered,
            r.delivered as f64 / r.secs,
            r.cpu / (r.delivered.max(1) as f64 / 1e6),
            r.peak
        );
    }
}

fn main() {
    let secs = env_or("SECONDS", 10);
    let clients = env_or("CLIENTS", 4);
    let batch = env_or("BATCH", 100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (sink_port, count) = sink(&rt, Duration::ZERO);
    if std::env::var("PART").as_deref() != Ok("logs") {
        traces(&rt, sink_port, &count, secs, clients, batch);
    }
    logs(&rt, sink_port, &count, secs, clients, batch);
}

/// Spans: Maille against Rotel, then a slow and an overloaded sink.
fn traces(
    rt: &tokio::runtime::Runtime,
    sink_port: u16,
    count: &Arc<AtomicU64>,
    secs: u64,
    clients: u64,
    batch: u64,
) {
    println!("OTLP gRPC -> collector -> local X-Ray sink; {secs} s of load, {clients} senders, {batch} spans per request; 2 cores shared by all");
    let mut rows = Vec::new();
    let (p, port) = maille(sink_port, 100_000);
    rows.push(measure(
        rt,
        Signal::Spans,
        "maille",
        p,
        port,
        count.clone(),
        secs,
        clients,
        batch,
    ));
    match rotel(sink_port) {
        Some((p, port)) => rows.push(measure(
            rt,
            Signal::Spans,
            "rotel",
            p,
            port,
            count.clone(),
            secs,
            clients,
            batch,
        )),
        None => println!("rotel not found in .venv: `make bench-collector` installs it"),
    }
    table("spans", &rows.iter().collect::<Vec<_>>());
    if let [m, r] = rows.as_slice() {
        let per_cpu = |x: &Row| x.delivered as f64 / x.cpu.max(1e-9);
        println!(
            "spans per CPU second, maille / rotel: {:.2}x",
            per_cpu(m) / per_cpu(r)
        );
    }

    // A slow X-Ray: 100 ms per call. Delivered while the load lasts, per second.
    let (slow_port, slow_count) = sink(rt, Duration::from_millis(100));
    let (p, port) = maille(slow_port, 100_000);
    let t0 = Instant::now();
    let (accepted, refused) = load(rt, Signal::Spans, port, secs, clients, batch);
    let delivered = slow_count.load(Ordering::Relaxed);
    println!(
        "sink 100 ms per call: delivered {:.0} spans/s ({delivered} in {:.1} s), accepted {accepted}, pushed back {refused} requests, peak {:.1} MiB",
        delivered as f64 / t0.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        p.peak_mib()
    );
    drop(p);

    // Overload: the sink takes 500 ms per call, far slower than the load.
    let (slow_port, slow_count) = sink(rt, Duration::from_millis(500));
    let (p, port) = maille(slow_port, 20_000);
    let (accepted, refused) = load(rt, Signal::Spans, port, secs, clients, batch);
    println!(
        "overload (sink 500 ms per call, queue 20,000): accepted {accepted}, pushed back {refused} requests, delivered {} so far, peak {:.1} MiB",
        slow_count.load(Ordering::Relaxed),
        p.peak_mib()
    );
}

/// Envoy's access log records to CloudWatch Logs, against the traces path in the same run.
fn logs(
    rt: &tokio::runtime::Runtime,
    sink_port: u16,
    count: &Arc<AtomicU64>,
    secs: u64,
    clients: u64,
    batch: u64,
) {
    println!();
    println!("OTLP gRPC -> collector -> local CloudWatch Logs sink; {batch} access log records per request");
    let (p, port) = maille(sink_port, 100_000);
    let logs = measure(
        rt,
        Signal::Logs,
        "logs",
        p,
        port,
        count.clone(),
        secs,
        clients,
        batch,
    );
    let (p, port) = maille(sink_port, 100_000);
    let spans = measure(
        rt,
        Signal::Spans,
        "spans",
        p,
        port,
        count.clone(),
        secs,
        clients,
        batch,
    );
    table("items", &[&logs, &spans]);
    let per_cpu = |x: &Row| x.delivered as f64 / x.cpu.max(1e-9);
    println!(
        "log events per CPU second {:.0}, spans per CPU second {:.0}: logs / spans {:.2}x",
        per_cpu(&logs),
        per_cpu(&spans),
        per_cpu(&logs) / per_cpu(&spans)
    );
    let (slow_port, slow_count) = sink(rt, Duration::from_millis(100));
    let (p, port) = maille(slow_port, 100_000);
    let t0 = Instant::now();
    let (accepted, refused) = load(rt, Signal::Logs, port, secs, clients, batch);
    let delivered = slow_count.load(Ordering::Relaxed);
    println!(
        "logs, sink 100 ms per call: delivered {:.0} events/s ({delivered} in {:.1} s), accepted {accepted}, pushed back {refused} requests, peak {:.1} MiB",
        delivered as f64 / t0.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        p.peak_mib()
    );
}
