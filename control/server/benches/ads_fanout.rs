//! ADS fan-out: N simulated Envoys (one TLS connection and ADS stream each, with the node's
//! token, ACKing every response as Envoy does) on control servers started as their own
//! processes; then one route weight change, and the time from the apply until each client
//! has ACKed it.
//!
//! Two tables: one server alone (`ADS_CLIENTS`, default 1000,5000,10000), and three servers
//! sharing a real etcd (`ADS_REPLICA_CLIENTS`, default 10000,30000), the clients spread over
//! them, the change applied through one; then failover: a server SIGKILLed, and the time
//! until every Envoy it served is synced on another (median of 5 kills).
//!
//! The clients run in worker processes of at most 9,000 each (this bench's own binary,
//! `ADS_WORKER=1`): a process here may hold 20,000 descriptors. Each reconnects as Envoy
//! does, to the next server of its bootstrap's list, after Envoy's jittered exponential
//! backoff (a random wait below 500 ms, doubling with each try that gets no answer, up to
//! 30 s).
//!
//! `cargo bench -p maille-control --bench ads_fanout` (or `make bench-control`).

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
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
/// Clients per worker process.
const PER_WORKER: usize = 9_000;

/// A free port below the ephemeral range (32768 up): with 30,000 client connections a
/// port from that range may be some client's own when a killed server starts again.
fn free_port() -> u16 {
    loop {
        let p = 20_000 + (rand::random::<u16>() % 12_000);
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

struct Server {
    child: Option<Child>,
    xds: u16,
    http: u16,
    /// Where it writes its tokens and CA certificate.
    dir: PathBuf,
    args: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Server {
    /// A server alone (`store` none: in memory) or sharing `store` (`etcd://...`).
    fn start(dir: &Path, store: Option<&str>) -> Server {
        let mut args: Vec<String> = match store {
            None => vec!["--ephemeral".into()],
            Some(s) => vec![
                "--store".into(),
                s.into(),
                "--leader-ttl-secs".into(),
                "5".into(),
            ],
        };
        args.extend(["--token-dir".into(), dir.display().to_string()]);
        let mut s = Server {
            child: None,
            xds: free_port(),
            http: free_port(),
            dir: dir.to_path_buf(),
            args,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let child = Command::new(env!("CARGO_BIN_EXE_maille-control"))
            .args(["--xds-addr", &format!("127.0.0.1:{}", self.xds)])
            .args(["--http-addr", &format!("127.0.0.1:{}", self.http)])
            .args(&self.args)
            .arg("--modules")
            .arg(format!("{root}/target/filters"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start maille-control");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let up = self.dir.join("maille-ca.pem").exists()
                && self
                    .agent()
                    .get(&format!("https://127.0.0.1:{}/healthz", self.http))
                    .call()
                    .is_ok_and(|r| r.status() == 200);
            if up {
                return;
            }
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn agent(&self) -> ureq::Agent {
        // A server taking thousands of reconnections at once may take a while to list them.
        let pem = std::fs::read_to_string(self.dir.join("maille-ca.pem")).expect("CA");
        maille_control::https::agent_trusting(&pem, Duration::from_secs(120))
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("maille-admin.token"))
            .expect("admin token")
            .trim()
            .to_owned()
    }

    fn get(&self, path: &str) -> serde_json::Value {
        self.try_get(path).expect("admin API")
    }

    fn try_get(&self, path: &str) -> Result<serde_json::Value, String> {
        let mut r = self
            .agent()
            .get(&format!("https://127.0.0.1:{}{path}", self.http))
            .header("authorization", format!("Bearer {}", self.admin_token()))
            .call()
            .map_err(|e| e.to_string())?;
        // The status of 10,000 Envoys is more than ureq's default 10 MiB.
        let text = r
            .body_mut()
            .with_config()
            .limit(512 << 20)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| e.to_string())
    }

    /// The node's token and the trust bundle, from its bootstrap, as an Envoy gets them.
    fn creds(&self) -> (String, String) {
        let b = self.get(&format!("/v1/bootstrap?node={NODE}"));
        let auth = b["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"][0]
            ["value"]
            .as_str()
            .expect("token");
        let trust = b["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
            ["common_tls_context"]["validation_context"]["trusted_ca"]["inline_string"]
            .as_str()
            .expect("trust bundle");
        (
            auth.trim_start_matches("Bearer ").to_owned(),
            trust.to_owned(),
        )
    }

    fn rss_kib(&self) -> u64 {
        let Some(c) = &self.child else { return 0 };
        std::fs::read_to_string(format!("/proc/{}/status", c.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    fn clients(&self) -> usize {
        self.try_clients().expect("admin API")
    }

    fn try_clients(&self) -> Result<usize, String> {
        Ok(self.try_get("/v1/status")?["clients"]
            .as_array()
            .map_or(0, |c| c.len()))
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
        let mut r = self
            .agent()
            .post(&format!("https://127.0.0.1:{}/v1/apply", self.http))
            .header(maille_api::paths::CLIENT_HEADER, "bench")
            .header("authorization", format!("Bearer {}", self.admin_token()))
            .send_json(&body)
            .expect("apply");
        let text = r.body_mut().read_to_string().unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("apply: {text}"))
    }
}

// ---- the worker processes: simulated Envoys ----

#[derive(Default)]
struct Shared {
    target: AtomicU64,
}

/// One simulated Envoy, the `i`-th: connects to `ports[i]` (modulo their number), then to the next one whenever its stream
/// ends; prints `synced` after its first full sync, `resync <ns>` after each later one, and
/// `ack <ns>` when it has the target version.
async fn client(
    ports: Arc<Vec<u16>>,
    token: Arc<String>,
    trust: Arc<String>,
    i: usize,
    initial: u64,
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<String>,
) {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let mut at = i;
    let mut syncs = 0u32;
    let mut acked = false;
    // Failed tries in a row (streams that got no answer), for the backoff.
    let mut failed = 0u32;
    loop {
        let port = ports[at % ports.len()];
        at += 1;
        // Whether this stream synced (the bench counts each server's Envoys by it).
        let mut on = false;
        let stream = async {
            // As Envoy does: TLS to the server's certificate from the mesh's CA, the token.
            let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_secs(2))
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(trust.as_str()))
                        .domain_name("127.0.0.1"),
                )
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let t: tonic::metadata::MetadataValue<_> = format!("Bearer {token}")
                .parse()
                .map_err(|_| "token".to_owned())?;
            let mut c = AggregatedDiscoveryServiceClient::with_interceptor(
                channel,
                move |mut r: tonic::Request<()>| {
                    r.metadata_mut().insert("authorization", t.clone());
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
            while let Some(resp) = inbound.message().await.map_err(|e| e.to_string())? {
                // Answered: the next wait starts from the base again.
                failed = 0;
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
                    on = true;
                    syncs += 1;
                    let _ = out.send(if syncs == 1 {
                        format!("synced {port}")
                    } else {
                        format!("resync {} {port}", now_ns())
                    });
                }
                let target = shared.target.load(Ordering::Acquire);
                if !acked && target != 0 && v >= target {
                    acked = true;
                    let _ = out.send(format!("ack {}", now_ns()));
                }
            }
            Ok::<(), String>(())
        };
        let _ = stream.await;
        if on {
            let _ = out.send(format!("lost {port}"));
        }
        // Envoy's xDS retry (source/common/config/grpc_stream.h): a jittered exponential
        // backoff from 500 ms up to 30 s, reset once a stream is answered; then the next
        // server of its list.
        let cap = (500u64 << failed.min(6)).min(30_000);
        failed += 1;
        let wait: u64 = rand::random::<u64>() % cap;
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

fn worker_main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}"));
    let ports: Arc<Vec<u16>> = Arc::new(
        env("ADS_PORTS")
            .split(',')
            .map(|p| p.parse().unwrap())
            .collect(),
    );
    let (first, count): (usize, usize) = (
        env("ADS_FIRST").parse().unwrap(),
        env("ADS_COUNT").parse().unwrap(),
    );
    let initial: u64 = env("ADS_INITIAL").parse().unwrap();
    let token = Arc::new(env("ADS_TOKEN"));
    let trust = Arc::new(std::fs::read_to_string(env("ADS_TRUST_FILE")).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shared = Arc::new(Shared::default());
    let (out, mut lines) = mpsc::unbounded_channel::<String>();
    // A thread of its own writes the lines (stdout's lock is not for async tasks).
    std::thread::spawn(move || {
        let mut stdout = std::io::stdout().lock();
        while let Some(l) = lines.blocking_recv() {
            let _ = writeln!(stdout, "{l}");
            let _ = stdout.flush();
        }
    });
    for k in 0..count {
        let i = first + k;
        // Envoys of a fleet do not all connect in the same millisecond: 500 per 50 ms.
        if k > 0 && k % 500 == 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        rt.spawn(client(
            ports.clone(),
            token.clone(),
            trust.clone(),
            i,
            initial,
            shared.clone(),
            out.clone(),
        ));
    }
    // Commands from the bench: `target <version>`.
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if let Some(v) = line.strip_prefix("target ") {
            shared
                .target
                .store(v.parse().unwrap_or(0), Ordering::Release);
        }
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}

// ---- the bench ----

/// What the workers said.
#[derive(Default)]
struct Tally {
    synced: AtomicUsize,
    acks: Mutex<Vec<u128>>,
    resyncs: Mutex<Vec<u128>>,
    /// Synced streams per server's ADS port, as the clients tell.
    on: Mutex<std::collections::HashMap<u16, i64>>,
}

impl Tally {
    fn on(&self, port: u16) -> usize {
        self.on
            .lock()
            .unwrap()
            .get(&port)
            .copied()
            .unwrap_or(0)
            .max(0) as usize
    }

    fn count(&self, port: Option<&str>, by: i64) {
        if let Some(p) = port.and_then(|p| p.parse().ok()) {
            *self.on.lock().unwrap().entry(p).or_default() += by;
        }
    }
}

struct Workers {
    children: Vec<(Child, ChildStdin)>,
    tally: Arc<Tally>,
}

impl Workers {
    fn start(n: usize, ports: &[u16], initial: u64, token: &str, trust: &Path) -> Workers {
        let tally = Arc::new(Tally::default());
        let mut children = Vec::new();
        let ports = ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut first = 0;
        while first < n {
            let count = PER_WORKER.min(n - first);
            let mut c = Command::new(std::env::current_exe().unwrap())
                .env("ADS_WORKER", "1")
                .env("ADS_PORTS", &ports)
                .env("ADS_FIRST", first.to_string())
                .env("ADS_COUNT", count.to_string())
                .env("ADS_INITIAL", initial.to_string())
                .env("ADS_TOKEN", token)
                .env("ADS_TRUST_FILE", trust)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start a worker");
            let stdout = c.stdout.take().unwrap();
            let stdin = c.stdin.take().unwrap();
            let t = tally.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut words = line.split(' ');
                    match words.next() {
                        Some("synced") => {
                            t.synced.fetch_add(1, Ordering::Relaxed);
                            t.count(words.next(), 1);
                        }
                        Some("ack") => {
                            let ns = words.next().and_then(|n| n.parse().ok());
                            t.acks.lock().unwrap().push(ns.unwrap_or(0));
                        }
                        Some("resync") => {
                            let ns = words.next().and_then(|n| n.parse().ok());
                            t.resyncs.lock().unwrap().push(ns.unwrap_or(0));
                            t.count(words.next(), 1);
                        }
                        Some("lost") => t.count(words.next(), -1),
                        _ => {}
                    }
                }
            });
            children.push((c, stdin));
            first += count;
        }
        Workers { children, tally }
    }

    fn target(&mut self, v: u64) {
        for (_, stdin) in &mut self.children {
            let _ = writeln!(stdin, "target {v}");
            let _ = stdin.flush();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (c, _) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Row {
    connect_s: f64,
    p50: f64,
    p99: f64,
    max: f64,
    kib_per_client: Vec<f64>,
    rss_mib: Vec<f64>,
    synced: usize,
    acked: usize,
    failover_ms: Vec<f64>,
}

fn run(n: usize, replicas: usize, failovers: usize) -> Row {
    let etcd = (replicas > 1).then(|| maille_testkit::Etcd::start(1));
    let dirs: Vec<tempfile::TempDir> = (0..replicas)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let store = etcd.as_ref().map(|e| e.store_url());
    let mut servers: Vec<Server> = dirs
        .iter()
        .map(|d| Server::start(d.path(), store.as_deref()))
        .collect();
    let initial = servers[0].apply((8, 1, 1));
    let (token, trust) = servers[0].creds();
    let trust_file = dirs[0].path().join("trust.pem");
    std::fs::write(&trust_file, trust).unwrap();
    let rss0: Vec<u64> = servers.iter().map(Server::rss_kib).collect();
    let ports: Vec<u16> = servers.iter().map(|s| s.xds).collect();
    let start = Instant::now();
    let mut workers = Workers::start(n, &ports, initial, &token, &trust_file);
    let deadline = Instant::now() + Duration::from_secs(600);
    while workers.tally.synced.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let connect_s = start.elapsed().as_secs_f64();
    let synced = workers.tally.synced.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let rss1: Vec<u64> = servers.iter().map(Server::rss_kib).collect();
    let on: Vec<usize> = servers.iter().map(Server::clients).collect();

    // The weight change, through the first server.
    workers.target(initial + 1);
    std::thread::sleep(Duration::from_millis(200));
    let t0 = now_ns();
    let v = servers[0].apply((5, 5, 0));
    assert_eq!(v, initial + 1);
    let deadline = Instant::now() + Duration::from_secs(120);
    while workers.tally.acks.lock().unwrap().len() < synced && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut acks: Vec<f64> = workers
        .tally
        .acks
        .lock()
        .unwrap()
        .iter()
        .map(|ns| ns.saturating_sub(t0) as f64 / 1e6)
        .collect();
    acks.sort_by(f64::total_cmp);

    // Failover: a server SIGKILLed; the time until every Envoy it had is synced elsewhere.
    let mut failover_ms = Vec::new();
    for round in 0..failovers {
        let k = round % replicas;
        // As the clients tell: a server taking thousands of reconnections may be slow to
        // list them.
        let had = workers.tally.on(servers[k].xds);
        let before = workers.tally.resyncs.lock().unwrap().len();
        let t_kill = now_ns();
        servers[k].kill();
        let deadline = Instant::now() + Duration::from_secs(120);
        while workers.tally.resyncs.lock().unwrap().len() < before + had
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = workers.tally.resyncs.lock().unwrap();
        let last = r[before..].iter().max().copied().unwrap_or(t_kill);
        let done = r.len() - before;
        drop(r);
        if done < had {
            println!(
                "  failover round {round}: only {done} of {had} Envoys synced elsewhere within 120 s"
            );
        }
        let ms = last.saturating_sub(t_kill) as f64 / 1e6;
        println!(
            "  failover round {round}: {ms:.0} ms for the {done} of {had} Envoys of server {k}"
        );
        failover_ms.push(ms);
        servers[k].spawn();
    }
    let kib_per_client = rss0
        .iter()
        .zip(&rss1)
        .zip(&on)
        .map(|((a, b), c)| b.saturating_sub(*a) as f64 / (*c).max(1) as f64)
        .collect();
    let rss_mib = rss1.iter().map(|k| *k as f64 / 1024.0).collect();
    drop(workers);
    Row {
        connect_s,
        p50: pct(&acks, 0.5),
        p99: pct(&acks, 0.99),
        max: acks.last().copied().unwrap_or(f64::NAN),
        kib_per_client,
        rss_mib,
        synced,
        acked: acks.len(),
        failover_ms,
    }
}

fn counts(var: &str, default: &str) -> Vec<usize> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn list(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn main() {
    if std::env::var_os("ADS_WORKER").is_some() {
        return worker_main();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `cargo bench` passes `--bench`; nothing else is taken.
    let header = || {
        println!(
            "{:>8} {:>10} {:>14} {:>8} {:>8} {:>22} {:>22} {:>7} {:>7}",
            "clients",
            "connect s",
            "apply→ACK p50",
            "p99 ms",
            "max ms",
            "KiB/client per server",
            "RSS MiB per server",
            "synced",
            "acked"
        );
    };
    let line = |n: usize, r: &Row| {
        println!(
            "{n:>8} {:>10.2} {:>14.1} {:>8.1} {:>8.1} {:>22} {:>22} {:>7} {:>7}",
            r.connect_s,
            r.p50,
            r.p99,
            r.max,
            list(&r.kib_per_client, 1),
            list(&r.rss_mib, 0),
            r.synced,
            r.acked
        );
    };
    println!(
        "ADS fan-out: simulated Envoys on one maille-control (release), 2 cores, same machine"
    );
    header();
    for n in counts("ADS_CLIENTS", "1000,5000,10000") {
        line(n, &run(n, 1, 0));
    }
    println!();
    println!(
        "Three maille-control sharing a one-member etcd; clients spread over them, the change applied through the first; failover: a server SIGKILLed until all its Envoys are synced on another"
    );
    header();
    for n in counts("ADS_REPLICA_CLIENTS", "10000,30000") {
        let r = run(n, 3, 5);
        line(n, &r);
        let mut f = r.failover_ms;
        if f.is_empty() {
            continue;
        }
        f.sort_by(f64::total_cmp);
        println!(
            "  failover with {n} clients: median {:.0} ms over {} kills ({} ms)",
            pct(&f, 0.5),
            f.len(),
            list(&f, 0)
        );
    }
}
