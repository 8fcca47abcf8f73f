//! `maille-control`: the control server. Flags in `--help`.

use clap::Parser;
use maille_control::{start, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Maille's control server: serves App Mesh-shaped meshes to Envoy over ADS, with the canary
/// and breaker wasm filters. Apply specs with `maillectl apply -f`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// ADS (gRPC, xDS v3) listen address.
    #[arg(long, env = "MAILLE_XDS_ADDR", default_value = "127.0.0.1:18000")]
    xds_addr: SocketAddr,
    /// Admin API, App Mesh API, console, bootstraps, module downloads and breaker signals
    /// (HTTPS, with a certificate from Maille's CA: clients trust `maille-ca.pem`, written
    /// beside the tokens) listen address.
    #[arg(long, env = "MAILLE_HTTP_ADDR", default_value = "127.0.0.1:18080")]
    http_addr: SocketAddr,
    /// Address Envoys use to reach this server (written into bootstraps and module URLs).
    #[arg(long, env = "MAILLE_ADVERTISE_ADDRESS", default_value = "127.0.0.1")]
    advertise_address: String,
    /// State file (embedded redb store); restarts restore everything from it.
    #[arg(
        long,
        env = "MAILLE_STATE",
        default_value = "maille-state.redb",
        conflicts_with = "ephemeral"
    )]
    state: PathBuf,
    /// Keep state in memory only (lost on exit).
    #[arg(long)]
    ephemeral: bool,
    /// Keep the state in etcd instead, shared with the other control servers given the same
    /// store: `etcd://HOST:PORT[,HOST:PORT...]` (`etcds://` for TLS). Every server serves
    /// ADS and the admin API; a change through any reaches every server's Envoys.
    #[arg(long, env = "MAILLE_STORE", conflicts_with_all = ["ephemeral", "state"],
          value_parser = maille_control::etcd_store::EtcdAddress::parse)]
    store: Option<maille_control::etcd_store::EtcdAddress>,
    /// The CA certificate (PEM) etcd's certificates chain to (`etcds://`).
    #[arg(long, env = "MAILLE_ETCD_CA", requires = "store")]
    etcd_ca: Option<PathBuf>,
    /// This server's client certificate (PEM) for etcd, when etcd asks for one.
    #[arg(long, env = "MAILLE_ETCD_CERT", requires_all = ["store", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// Among servers sharing `--store`: the lifetime (s) of the leader's lease. One server
    /// leads and runs the rollouts; when it is gone another takes over within this time and
    /// resumes each rollout where the store says it was.
    #[arg(long, env = "MAILLE_LEADER_TTL_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(2..=300))]
    leader_ttl_secs: u64,
    /// The key (PEM) of `--etcd-cert`.
    #[arg(long, env = "MAILLE_ETCD_KEY", requires_all = ["store", "etcd_cert"])]
    etcd_key: Option<PathBuf>,
    /// Folder of `<name>.wasm` filter modules to serve (`make filters` writes target/filters).
    #[arg(long, env = "MAILLE_MODULES", default_value = "target/filters")]
    modules: PathBuf,
    /// CloudWatch namespace that rollouts with `analysis.source.type: cloudwatch` read (what
    /// the collectors export, such as `Maille`), through the default AWS chain. Needs a
    /// server built with `--features cloudwatch`.
    #[arg(long, env = "MAILLE_CLOUDWATCH_NAMESPACE")]
    cloudwatch_namespace: Option<String>,
    /// How often (ms) AWS Cloud Map is asked for the healthy instances of `awsCloudMap`
    /// nodes, through the default AWS chain (AWS_ENDPOINT_URL reaches another endpoint).
    /// Only while some node uses Cloud Map.
    #[arg(long, env = "MAILLE_CLOUD_MAP_INTERVAL_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    cloud_map_interval_ms: u64,
    /// Lifetime of each proxy's certificate (s), from Maille's certificate authority; each
    /// is replaced at half its lifetime, over SDS, with no restart.
    #[arg(long, env = "MAILLE_CERT_LIFETIME_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(4..=31_536_000))]
    cert_lifetime_secs: u64,
    /// A CA certificate (PEM: the signing CA first, then its chain to your root) to sign
    /// proxies' certificates with, such as an intermediate of your own PKI. Without it the
    /// server makes a root on first start and keeps it in the state.
    #[arg(long, env = "MAILLE_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The private key (PEM, PKCS#8) of `--ca-cert`.
    #[arg(long, env = "MAILLE_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Folder to write the admin API's tokens into: `maille-admin.token` (everything),
    /// `maille-read.token` (read only) and `maille-bootstrap.token` (bootstraps only),
    /// readable by their owner only, and `maille-ca.pem`, the CA certificate clients verify
    /// this server with. `maillectl` on this machine finds the admin token and the CA there.
    /// Default: the state file's folder.
    #[arg(long, env = "MAILLE_TOKEN_DIR")]
    token_dir: Option<PathBuf>,
    /// Another DNS name or IP address clients reach the admin port at (repeatable; comma
    /// separated in the variable): the server's certificate names it, beside the advertise
    /// address, `localhost` and `127.0.0.1`.
    #[arg(long = "tls-name", env = "MAILLE_TLS_NAMES", value_delimiter = ',')]
    tls_names: Vec<String>,
    /// Among servers sharing `--store`: the address the other servers reach this one's
    /// admin port at (the leader's rollout analysis gathers the stats each server's Envoys
    /// send it). Default: the advertise address. Servers that all advertise one name (a
    /// Kubernetes Service) each give their own here, such as the pod's IP; the server's
    /// certificate names it.
    #[arg(long, env = "MAILLE_PEER_ADDRESS", requires = "store")]
    peer_address: Option<String>,
}

#[cfg(feature = "cloudwatch")]
async fn cloudwatch(
    ns: Option<&str>,
) -> anyhow::Result<Option<std::sync::Arc<dyn maille_control::rollouts::MetricSource>>> {
    let Some(ns) = ns else { return Ok(None) };
    Ok(Some(std::sync::Arc::new(
        maille_control::cloudwatch::CloudWatchSource::from_env(ns).await,
    )))
}

#[cfg(not(feature = "cloudwatch"))]
async fn cloudwatch(
    ns: Option<&str>,
) -> anyhow::Result<Option<std::sync::Arc<dyn maille_control::rollouts::MetricSource>>> {
    match ns {
        Some(_) => anyhow::bail!(
            "--cloudwatch-namespace: this server was built without CloudWatch support \
             (cargo build -p maille-control --features cloudwatch)"
        ),
        None => Ok(None),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if !args.modules.is_dir() {
        tracing::warn!(dir = %args.modules.display(), "modules folder missing: routes that split traffic and filters are skipped until it exists (run `make filters`)");
    }
    let store_given = args.store.is_some();
    let running = start(ServerConfig {
        xds_addr: args.xds_addr,
        http_addr: args.http_addr,
        advertise_address: args.advertise_address,
        state_path: (!args.ephemeral && args.store.is_none()).then_some(args.state),
        etcd: match args.store {
            Some(address) => {
                let read = |f: &PathBuf, flag: &str| {
                    std::fs::read_to_string(f)
                        .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", f.display()))
                };
                let tls = maille_control::etcd_store::EtcdTls {
                    ca_pem: args
                        .etcd_ca
                        .as_ref()
                        .map(|f| read(f, "--etcd-ca"))
                        .transpose()?,
                    identity_pem: match (&args.etcd_cert, &args.etcd_key) {
                        (Some(c), Some(k)) => {
                            Some((read(c, "--etcd-cert")?, read(k, "--etcd-key")?))
                        }
                        _ => None,
                    },
                };
                Some((address, tls))
            }
            None => None,
        },
        modules_dir: Some(args.modules),
        cloudwatch: cloudwatch(args.cloudwatch_namespace.as_deref()).await?,
        cloud_map_every: std::time::Duration::from_millis(args.cloud_map_interval_ms),
        cert_lifetime: std::time::Duration::from_secs(args.cert_lifetime_secs),
        ca_pem: match (&args.ca_cert, &args.ca_key) {
            (Some(c), Some(k)) => Some((
                std::fs::read_to_string(c)
                    .map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", c.display()))?,
                std::fs::read_to_string(k)
                    .map_err(|e| anyhow::anyhow!("--ca-key {}: {e}", k.display()))?,
            )),
            _ => None,
        },
        // A state in memory has no folder: its tokens go into the current one.
        token_dir: args
            .token_dir
            .or_else(|| (args.ephemeral || store_given).then(|| PathBuf::from("."))),
        tls_names: args.tls_names,
        peer_address: args.peer_address,
        leader_ttl: std::time::Duration::from_secs(args.leader_ttl_secs),
    })
    .await?;
    println!(
        "maille-control: ADS on {}, admin API on {} (state version {})",
        running.xds_port,
        running.http_port,
        running.mesh.current().version
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    running.stop().await;
    Ok(())
}
