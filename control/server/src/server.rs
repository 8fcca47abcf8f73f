//! Runs the control server: ADS on one port, the admin API and module downloads on another,
//! and a watch on the modules folder.

use crate::admin::{self, AppState};
use crate::auth::{AdminTokens, NodeTokens};
use crate::ca::Ca;
use crate::clients::Clients;
use crate::mesh::Mesh;
use crate::metrics::MeshMetrics;
use crate::modules::Modules;
use crate::rollouts::{MetricSource, Rollouts};
use crate::signals::Signals;
use crate::store::{MemoryStore, RedbStore, Store, StoreError};
use crate::xds::Ads;
use maille_translate::bootstrap::{valid_host, ControlEndpoints};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Lifetime of the server's own certificate.
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// How often the modules folder is read again for new module builds.
const MODULE_POLL: Duration = Duration::from_secs(2);

/// Settings of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// ADS (gRPC) address.
    pub xds_addr: SocketAddr,
    /// Admin API and modules (HTTP) address.
    pub http_addr: SocketAddr,
    /// Address Envoys reach this server at (in bootstraps and module URLs).
    pub advertise_address: String,
    /// The state file; `None` keeps state in memory only (unless `etcd` is given).
    pub state_path: Option<PathBuf>,
    /// The state in etcd, shared with other servers (then `state_path` is not used).
    pub etcd: Option<(crate::etcd_store::EtcdAddress, crate::etcd_store::EtcdTls)>,
    /// Folder of `<name>.wasm` modules.
    pub modules_dir: Option<PathBuf>,
    /// Where rollouts with a CloudWatch analysis source read their numbers (none: such
    /// rollouts hold, saying why).
    pub cloudwatch: Option<Arc<dyn MetricSource>>,
    /// How often AWS Cloud Map is asked for the instances of `awsCloudMap` nodes (only
    /// while some node uses it).
    pub cloud_map_every: Duration,
    /// Lifetime of the proxies' certificates (replaced at half of it).
    pub cert_lifetime: Duration,
    /// The CA to sign with, as PEM (its certificate then its chain, and its key); `None`:
    /// the one kept in the store, made on first start.
    pub ca_pem: Option<(String, String)>,
    /// Folder the admin API's tokens are written into (`maille-admin.token`,
    /// `maille-read.token`, `maille-bootstrap.token`), with the CA's certificate
    /// (`maille-ca.pem`) clients verify the server with; `None`: the state file's folder
    /// (none for a state in memory).
    pub token_dir: Option<PathBuf>,
    /// Among servers sharing a store: how long the leader's lease lives; another server
    /// takes over within it when the leader is gone.
    pub leader_ttl: Duration,
    /// More names (DNS names or IP addresses) the server's certificate is valid for, beside
    /// the advertise address, `localhost` and `127.0.0.1`.
    pub tls_names: Vec<String>,
    /// Among servers sharing a store: the address the others reach this one's admin port at
    /// (the leader gathers the mesh's stats from every server); `None`: the advertise
    /// address. Servers that all advertise one name (a Kubernetes Service) each give
    /// their own here (the pod's IP).
    pub peer_address: Option<String>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A port could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The state could not be loaded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The certificate authority cannot be used.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// A setting cannot be used.
    #[error("{0}")]
    Config(String),
}

/// A running server; stops on [`Running::stop`] or when dropped with the runtime.
#[derive(Debug)]
pub struct Running {
    /// The bound ADS port.
    pub xds_port: u16,
    /// The bound HTTP port.
    pub http_port: u16,
    /// The served mesh.
    pub mesh: Arc<Mesh>,
    /// The connected Envoys.
    pub clients: Arc<Clients>,
    /// The breaker signals received.
    pub signals: Arc<Signals>,
    /// The rollouts.
    pub rollouts: Rollouts,
    /// The mesh's own stats, as received.
    pub metrics: Arc<MeshMetrics>,
    /// The certificate authority.
    pub ca: Arc<Ca>,
    /// The admin API's tokens.
    pub admin_tokens: Arc<AdminTokens>,
    /// The proxies' tokens.
    pub node_tokens: Arc<NodeTokens>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops serving and waits for the servers to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Takes the changes other servers sharing the store write, as the store tells of them; a
/// failed read is tried again every second while the store is ahead.
async fn follow_store(
    mesh: Arc<Mesh>,
    mut changes: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        loop {
            let ahead = *changes.borrow_and_update();
            if ahead <= mesh.current().version || *stop.borrow() {
                break;
            }
            match mesh.sync_from_store().await {
                Ok(_) if mesh.current().version >= ahead => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "reading another server's change; trying again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        tokio::select! {
            c = changes.changed() => if c.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The CA's certificate, beside the tokens: what clients verify the server with.
pub const CA_FILE: &str = "maille-ca.pem";

/// The names the server's certificate is for.
fn tls_names(cfg: &ServerConfig) -> Vec<String> {
    let mut names = vec![
        cfg.advertise_address.clone(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    for n in cfg.tls_names.iter().chain(&cfg.peer_address) {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

/// `host` as a URL's host: an IPv6 address in brackets.
fn url_host(host: &str) -> std::borrow::Cow<'_, str> {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]").into()
    } else {
        host.into()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Binds both ports, loads the state and serves.
pub async fn start(cfg: ServerConfig) -> Result<Running, ServerError> {
    if !valid_host(&cfg.advertise_address) {
        return Err(ServerError::Config(format!(
            "advertise address {:?}: must be an IP address or a DNS name",
            cfg.advertise_address
        )));
    }
    if let Some(bad) = cfg.tls_names.iter().find(|n| !valid_host(n)) {
        return Err(ServerError::Config(format!(
            "--tls-name {bad:?}: must be an IP address or a DNS name"
        )));
    }
    if let Some(bad) = cfg.peer_address.as_ref().filter(|n| !valid_host(n)) {
        return Err(ServerError::Config(format!(
            "--peer-address {bad:?}: must be an IP address or a DNS name"
        )));
    }
    // Both of rustls's providers are in the build (the AWS SDK's is aws-lc): choose one for
    // the process, once (a second start finds it chosen).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let xds = bind(cfg.xds_addr).await?;
    let http = bind(cfg.http_addr).await?;
    let xds_port = xds.local_addr().map(|a| a.port()).unwrap_or(0);
    let http_port = http.local_addr().map(|a| a.port()).unwrap_or(0);
    let store: Arc<dyn Store> = match (&cfg.etcd, &cfg.state_path) {
        (Some((address, tls)), _) => Arc::new(crate::etcd_store::EtcdStore::connect(address, tls)?),
        (None, Some(p)) => Arc::new(RedbStore::open(p)?),
        (None, None) => Arc::new(MemoryStore::default()),
    };
    let modules = Modules::new(
        cfg.modules_dir.clone(),
        &format!("https://{}:{http_port}", cfg.advertise_address),
    );
    let ca = Arc::new(match &cfg.ca_pem {
        Some((cert, key)) => Ca::from_pem(cert, key, cfg.cert_lifetime),
        None => Ca::load_or_create(store.as_ref(), cfg.cert_lifetime),
    }?);
    let tokens = Arc::new(NodeTokens::load_or_create(store.as_ref())?);
    let admin_tokens = Arc::new(AdminTokens::load_or_create(store.as_ref())?);
    let token_dir = cfg.token_dir.clone().or_else(|| {
        cfg.state_path.as_ref().map(|p| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        })
    });
    if let Some(dir) = &token_dir {
        admin_tokens.write_files(dir).map_err(|e| {
            ServerError::Config(format!(
                "writing the admin tokens into {}: {e}",
                dir.display()
            ))
        })?;
        let ca_file = dir.join(CA_FILE);
        std::fs::write(&ca_file, ca.trust_bundle())
            .map_err(|e| ServerError::Config(format!("writing {}: {e}", ca_file.display())))?;
        tracing::info!(dir = %dir.display(), "admin API tokens written (maille-admin.token, maille-read.token, maille-bootstrap.token), and the CA's certificate (maille-ca.pem)");
    }
    // The server's own certificate (ADS and the admin port, over TLS), for the address
    // Envoys reach it at and the names clients may use. Made at each start; it lives a year.
    let own = ca.issue_server(store.as_ref(), &tls_names(&cfg), SERVER_CERT_LIFETIME)?;
    let https = crate::https::server_config(&own.certificate_chain, &own.private_key)
        .map_err(ServerError::Config)?;
    let store_for_rollouts = store.clone();
    let store_changes = store.changes();
    // Among servers sharing the store, one leads (runs the rollouts); named by its admin
    // address, which the others give to a client that asks them for a rollout's action.
    let peer_url = format!(
        "https://{}:{http_port}",
        url_host(
            cfg.peer_address
                .as_deref()
                .unwrap_or(&cfg.advertise_address)
        )
    );
    let server_id = format!("{:032x}", rand::random::<u128>());
    // Named by the address the others reach it at: servers behind one advertised name (a
    // Kubernetes Service) each have their own.
    let leader = store.campaign(
        &peer_url,
        crate::store::ServerEntry {
            id: server_id.clone(),
            address: cfg.advertise_address.clone(),
            xds_port,
            http_port,
            peer_url: peer_url.clone(),
        },
        cfg.leader_ttl,
    );
    let shared = leader.is_some();
    let mesh = Arc::new(Mesh::new(store, modules)?);
    // Servers sharing a store share what each node refused too.
    let clients = Arc::new(match store_changes {
        Some(_) => Clients::shared(store_for_rollouts.clone()),
        None => Clients::default(),
    });
    let signals = Arc::new(Signals::default());
    let cloud_map = Arc::new(crate::cloud_map::Polling::default());
    let endpoints = ControlEndpoints {
        peers: Vec::new(),
        advertise_address: cfg.advertise_address.clone(),
        xds_port,
        http_port,
    };
    let (stop, stop_rx) = watch::channel(false);
    let stop_cloud_map = stop_rx.clone();
    let mut tasks = Vec::new();

    let metrics = Arc::new(MeshMetrics::default());
    // Among servers sharing a store, each Envoy reports to its own server: the leader's
    // analysis adds up every server's numbers.
    let mesh_source: Arc<dyn MetricSource> = if shared {
        Arc::new(crate::metrics::MeshWide {
            own: metrics.clone(),
            store: store_for_rollouts.clone(),
            me: server_id.clone(),
            token: admin_tokens.read().to_owned(),
            agent: crate::https::agent_trusting(ca.trust_bundle(), crate::metrics::PEER_TIMEOUT),
        })
    } else {
        metrics.clone()
    };
    let (rollouts, supervisor) = Rollouts::start(
        mesh.clone(),
        store_for_rollouts,
        mesh_source,
        cfg.cloudwatch.clone(),
        leader.clone(),
        stop_rx.clone(),
    );
    tasks.push(supervisor);

    let mut rx = stop_rx.clone();
    let ads = Ads::new(
        mesh.clone(),
        clients.clone(),
        ca.clone(),
        tokens.clone(),
        stop_rx.clone(),
    );
    let stats = metrics.service(tokens.clone(), mesh.clone());
    let tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(&own.certificate_chain, &own.private_key),
    );
    let builder = tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|e| ServerError::Config(format!("ADS TLS: {e}")))?;
    tasks.push(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(xds);
        let result = builder
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(ads)
            .add_service(stats)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "ADS server ended");
        }
    }));

    let mut rx = stop_rx.clone();
    let app = admin::router(AppState {
        mesh: mesh.clone(),
        clients: clients.clone(),
        signals: signals.clone(),
        rollouts: rollouts.clone(),
        endpoints,
        ca: ca.clone(),
        tokens: tokens.clone(),
        admin_tokens: admin_tokens.clone(),
        cloud_map: cloud_map.clone(),
        mesh_metrics: metrics.clone(),
        server_id,
    });
    tasks.push(tokio::spawn(async move {
        let http = match crate::https::TlsListener::new(http, https) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin server did not start");
                return;
            }
        };
        let result = axum::serve(http, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "admin server ended");
        }
    }));

    let mut rx = stop_rx.clone();
    let m = mesh.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(MODULE_POLL) => {
                    match m.reload_modules().await {
                        Ok(true) => tracing::info!("wasm modules changed: new snapshot served"),
                        Ok(false) => {}
                        Err(e) => tracing::error!(error = %e, "reloading modules"),
                    }
                }
                _ = rx.changed() => break,
            }
        }
    }));

    if let Some(changes) = store_changes {
        tasks.push(tokio::spawn(follow_store(
            mesh.clone(),
            changes,
            stop_rx.clone(),
        )));
    }

    tasks.push(tokio::spawn(crate::cloud_map::run(
        mesh.clone(),
        cfg.cloud_map_every,
        leader,
        cloud_map,
        stop_cloud_map,
    )));

    tracing::info!(xds_port, http_port, "Maille control server listening");
    Ok(Running {
        xds_port,
        http_port,
        mesh,
        clients,
        signals,
        rollouts,
        metrics,
        ca,
        admin_tokens,
        node_tokens: tokens,
        stop,
        tasks,
    })
}
