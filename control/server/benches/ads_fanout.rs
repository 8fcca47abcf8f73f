//! ADS fan-out: N simulated Envoys (one tonic ADS stream each, ACKing every response as
//! Envoy does) on the control server, started as its own process; then one route weight
//! change, and the time from the apply until each client has ACKed it.
//!
//! `cargo bench -p maille-control --bench ads_fanout` (or `make bench-control`);
//! `ADS_CLIENTS=1000,5000,10000` (the default) sets the client counts. Prints a table: connect time, apply to
//! ACK (p50, p99, max), the server's resident memory per client.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const TYPES: [&str; 5] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
];
/// The node every simulated Envoy claims to be: replicas of the gateway, the node whose
/// config a weight change of `colorteller-route` touches (App Mesh gave all replicas of a
/// virtual node one node id too).
const NODE: &str = "mesh/colorapp/virtualNode/colorgateway";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Server {
    child: Child,
    xds: u16,
    http: u16,
    /// Where it writes its tokens.
    tokens: tempfile::TempDir,
}

/// What a simulated Envoy needs from its bootstrap: the node token and the trust bundle.
#[derive(Clone)]
struct Creds {
    token: String,
    trust: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start() -> Server {
        let (xds, http) = (free_port(), free_port());
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let tokens = tempfile::tempdir().expect("token folder");
        let child = Command::new(env!("CARGO_BIN_EXE_maille-control"))
            .args(["--ephemeral", "--xds-addr", &format!("127.0.0.1:{xds}")])
            .arg("--token-dir")
            .arg(tokens.path())
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .arg("--modules")
            .arg(format!("{root}/target/filters"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start maille-control");
        let s = Server {
            child,
            xds,
            http,
            tokens,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("http://127.0.0.1:{http}/healthz"))
            .call()
            .is_err()
        {
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.tokens.path().join("maille-admin.token"))
            .expect("admin token")
            .trim()
            .to_owned()
    }

    /// The node's token and the trust bundle, from its bootstrap, as an Envoy gets them.
    fn creds(&self) -> Creds {
        let mut r = ureq::get(&format!(
            "http://127.0.0.1:{}/v1/bootstrap?node={NODE}",
            self.http
        ))
        .header("authorization", format!("Bearer {}", self.admin_token()))
        .call()
        .expect("bootstrap");
        let b: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        let auth = b["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"][0]
            ["value"]
            .as_str()
            .expect("token");
        let trust = b["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
            ["common_tls_context"]["validation_context"]["trusted_ca"]["inline_string"]
            .as_str()
            .expect("trust bundle");
        Creds {
            token: auth.trim_start_matches("Bearer ").to_owned(),
            trust: trust.to_owned(),
        }
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    fn apply(&self, weights: (u32, u32, u32)) -> u64 {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/examples/colorteller/appmesh-api.json"
        );
        let mut text = std::fs::read_to_string(path).expect("example");
        // The example's split is 8/1/1 (white/black/red).
        text = text
            .replacen("\"weight\": 8", &format!("\"weight\": {}", weights.0), 1)
            .replacen(
                "\"virtualNode\": \"colorteller-black\",\n                  \"weight\": 1",
                &format!(
                    "\"virtualNode\": \"colorteller-black\",\n                  \"weight\": {}",
                    weights.1
                ),
                1,
            )
            .replacen(
                "\"virtualNode\": \"colorteller-red\",\n                  \"weight\": 1",
                &format!(
                    "\"virtualNode\": \"colorteller-red\",\n                  \"weight\": {}",
                    weights.2
                ),
                1,
            );
        let i = maille_import::import_str(
            "bench",
            &text,
            maille_import::Format::ApiJson,
            &Default::default(),
        )
        .expect("import");
        let body = serde_json::json!({ "resources": i.resources });
        let mut r = ureq::post(&format!("http://127.0.0.1:{}/v1/apply", self.http))
            .header(maille_api::paths::CLIENT_HEADER, "bench")
            .header("authorization", format!("Bearer {}", self.admin_token()))
            .send_json(&body)
            .expect("apply");
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        v["version"].as_u64().expect("version")
    }
}

#[derive(Default)]
struct Shared {
    synced: AtomicUsize,
    target: AtomicU64,
    t0: Mutex<Option<Instant>>,
    ack_ms: Mutex<Vec<f64>>,
}

async fn client(
    port: u16,
    creds: Creds,
    i: usize,
    initial: u64,
    shared: Arc<Shared>,
) -> Result<(), String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    // As Envoy does: TLS to the server's certificate from the mesh's CA, the node's token.
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&creds.trust))
                .domain_name("127.0.0.1"),
        )
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {}", creds.token)
        .parse()
        .map_err(|_| "token".to_owned())?;
    let mut c = AggregatedDiscoveryServiceClient::with_interceptor(
        channel,
        move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", token.clone());
            Ok(r)
        },
    );
    let (tx, rx) = mpsc::channel(16);
    let node = Node {
        id: NODE.into(),
        cluster: format!("sim-{i}"),
        ..Default::default()
    };
    for (k, t) in TYPES.iter().enumerate() {
        let _ = tx
            .send(DiscoveryRequest {
                node: (k == 0).then(|| node.clone()),
                type_url: t.to_string(),
                ..Default::default()
            })
            .await;
    }
    let mut inbound = c
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut seen = [false; TYPES.len()];
    let mut counted = false;
    let mut recorded = false;
    while let Some(resp) = inbound.message().await.map_err(|e| e.to_string())? {
        let _ = tx
            .send(DiscoveryRequest {
                version_info: resp.version_info.clone(),
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            })
            .await;
        let v: u64 = resp
            .version_info
            .split('-')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if let Some(k) = TYPES.iter().position(|t| *t == resp.type_url) {
            seen[k] = true;
        }
        if !counted && v >= initial && seen.iter().all(|s| *s) {
            counted = true;
            shared.synced.fetch_add(1, Ordering::Relaxed);
        }
        let target = shared.target.load(Ordering::Acquire);
        if !recorded && target != 0 && v >= target {
            recorded = true;
            if let Some(t0) = *shared.t0.lock().unwrap() {
                shared
                    .ack_ms
                    .lock()
                    .unwrap()
                    .push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn run(n: usize) -> (f64, f64, f64, f64, f64, usize, usize) {
    let server = Server::start();
    let initial = server.apply((8, 1, 1));
    let creds = server.creds();
    let rss0 = server.rss_kib();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let errors = Arc::new(AtomicUsize::new(0));
    for i in 0..n {
        // Envoys of a fleet do not all connect in the same millisecond: 500 per 50 ms.
        if i > 0 && i % 500 == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let (s, e, c) = (shared.clone(), errors.clone(), creds.clone());
        let port = server.xds;
        rt.spawn(async move {
            if client(port, c, i, initial, s).await.is_err() {
                e.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while shared.synced.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let connect_s = start.elapsed().as_secs_f64();
    let synced = shared.synced.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = server.rss_kib();

    // The weight change.
    *shared.t0.lock().unwrap() = Some(Instant::now());
    shared.target.store(initial + 1, Ordering::Release);
    let v = server.apply((5, 5, 0));
    assert_eq!(v, initial + 1);
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.ack_ms.lock().unwrap().len() < synced && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut acks = shared.ack_ms.lock().unwrap().clone();
    acks.sort_by(f64::total_cmp);
    let per_client_kib = (rss1.saturating_sub(rss0)) as f64 / synced.max(1) as f64;
    rt.shutdown_timeout(Duration::from_secs(1));
    (
        connect_s,
        pct(&acks, 0.5),
        pct(&acks, 0.99),
        acks.last().copied().unwrap_or(f64::NAN),
        per_client_kib,
        synced,
        acks.len(),
    )
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `cargo bench` passes `--bench`; nothing else is taken.
    let counts: Vec<usize> = std::env::var("ADS_CLIENTS")
        .unwrap_or_else(|_| "1000,5000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "ADS fan-out: simulated Envoys on one maille-control (release), 2 cores, same machine"
    );
    println!(
        "{:>8} {:>12} {:>14} {:>14} {:>14} {:>16} {:>8} {:>8}",
        "clients",
        "connect s",
        "apply→ACK p50",
        "p99 ms",
        "max ms",
        "server KiB/client",
        "synced",
        "acked"
    );
    for n in counts {
        let (c, p50, p99, max, kib, synced, acked) = run(n);
        println!(
            "{n:>8} {c:>12.2} {p50:>14.1} {p99:>14.1} {max:>14.1} {kib:>16.1} {synced:>8} {acked:>8}"
        );
    }
}
