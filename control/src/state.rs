//! The control server's state: the applied resources (persisted in a [`Store`]), the wasm
//! modules it serves, the Envoys connected over ADS and what each has acknowledged.

use crate::spec::{Key, Resource};
use crate::store::{Store, StoreError};
use crate::translate::{self, Module, NodeOptions};
use crate::validate::{check_all, check_resource, SpecErrors};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use serde::Serialize;
use sha2::Digest;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::sync::watch;

/// xDS type URLs served.
pub mod types {
    /// LDS.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RDS.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// CDS.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS.
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// ECDS.
    pub const EXTENSION: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

    /// A short name for status output.
    pub fn short(type_url: &str) -> &str {
        match type_url {
            LISTENER => "LDS",
            ROUTE => "RDS",
            CLUSTER => "CDS",
            ENDPOINT => "EDS",
            EXTENSION => "ECDS",
            other => other,
        }
    }
}

/// One applied state of the mesh, as served.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every apply, delete or module change; survives restarts.
    pub version: u64,
    /// All resources.
    pub resources: BTreeMap<Key, Resource>,
    /// Served modules by name.
    pub modules: BTreeMap<String, Module>,
    /// When it was made (for apply-to-ACK times).
    pub made_at: Instant,
}

/// The resources of one Envoy, per type URL, each as `(name, Any)` sorted by name.
#[derive(Debug, Default)]
pub struct NodeResources {
    /// By type URL.
    pub by_type: HashMap<&'static str, Vec<(String, Any)>>,
    /// What was not translated.
    pub warnings: Vec<String>,
}

fn pack<T: Message + Name>(items: Vec<T>, name: impl Fn(&T) -> String) -> Vec<(String, Any)> {
    let mut v: Vec<(String, Any)> = items
        .into_iter()
        .map(|m| {
            (
                name(&m),
                Any {
                    type_url: T::type_url(),
                    value: m.encode_to_vec(),
                },
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// What an apply changed.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// The version now served (unchanged on a dry run or when nothing changed).
    pub version: u64,
    /// Created resources.
    pub created: Vec<String>,
    /// Changed resources.
    pub updated: Vec<String>,
    /// Resources given that were already as given.
    pub unchanged: Vec<String>,
    /// Deleted resources.
    pub deleted: Vec<String>,
    /// Parts of the spec Envoy will not see, per node.
    pub warnings: Vec<String>,
}

/// Why an apply was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The resulting set of resources is invalid.
    #[error("{0}")]
    Invalid(#[from] SpecErrors),
    /// Deleting something that does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A NACK as Envoy sent it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nack {
    /// The version Envoy refused.
    pub version: String,
    /// Envoy's error message.
    pub message: String,
    /// When (seconds since the epoch).
    pub at: f64,
}

/// What one connected Envoy has of one resource type.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    /// Last version sent.
    pub sent: String,
    /// Last version Envoy acknowledged.
    pub acked: Option<String>,
    /// Last refusal, kept until a later version is acknowledged.
    pub last_nack: Option<Nack>,
}

/// One connected Envoy.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientStatus {
    /// Node id.
    pub node: String,
    /// Peer address.
    pub peer: String,
    /// Connected since (seconds since the epoch).
    pub connected_at: f64,
    /// Per resource type (LDS, RDS, CDS, EDS, ECDS).
    pub types: BTreeMap<String, TypeStatus>,
    /// Highest snapshot version this Envoy has fully acknowledged.
    pub synced_version: u64,
    /// Time from that snapshot's apply to the last ACK that completed it, in milliseconds.
    pub sync_millis: Option<f64>,
    /// What was not translated for this node.
    pub warnings: Vec<String>,
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Settings of a [`Control`].
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Folder of `<name>.wasm` modules to serve (`target/filters`).
    pub modules_dir: Option<PathBuf>,
    /// Base URL of this server's HTTP port as Envoys reach it (`http://127.0.0.1:18080`).
    pub http_base: String,
}

type NodeCacheKey = (String, NodeOptions);
/// Resources of one type as sent: `(name, Any)` sorted by name.
pub type Content = Arc<Vec<(String, Any)>>;
/// Per (node id, type URL).
type PerNodeType<T> = Mutex<HashMap<(String, &'static str), T>>;
type ModuleSet = (BTreeMap<String, Module>, BTreeMap<String, Arc<Vec<u8>>>);

/// The shared state behind the ADS server and the admin API.
#[derive(Debug)]
pub struct Control {
    store: Arc<dyn Store>,
    config: ControlConfig,
    snapshot: watch::Sender<Arc<Snapshot>>,
    write: tokio::sync::Mutex<()>,
    module_bytes: Mutex<BTreeMap<String, Arc<Vec<u8>>>>,
    node_cache: Mutex<(u64, HashMap<NodeCacheKey, Arc<NodeResources>>)>,
    clients: Mutex<BTreeMap<u64, ClientStatus>>,
    next_client: Mutex<u64>,
    /// Per (node, type): the content hash Envoy refused, and the last content it accepted.
    refused: PerNodeType<u64>,
    last_good: PerNodeType<(u64, Content)>,
    signals: Mutex<VecDeque<serde_json::Value>>,
    made: Mutex<VecDeque<(u64, Instant)>>,
}

/// Most breaker signals kept for `GET /v1/signals`.
const MAX_SIGNALS: usize = 1000;

impl Control {
    /// Loads the state from `store` and the modules from the modules folder.
    pub fn new(store: Arc<dyn Store>, config: ControlConfig) -> Result<Arc<Control>, StoreError> {
        let (version, resources) = store.load()?;
        let (modules, bytes) = read_modules(&config);
        let snap = Snapshot {
            version,
            resources,
            modules,
            made_at: Instant::now(),
        };
        let (tx, _) = watch::channel(Arc::new(snap));
        Ok(Arc::new(Control {
            store,
            config,
            snapshot: tx,
            write: tokio::sync::Mutex::new(()),
            module_bytes: Mutex::new(bytes),
            node_cache: Mutex::new((u64::MAX, HashMap::new())),
            clients: Mutex::new(BTreeMap::new()),
            next_client: Mutex::new(0),
            refused: Mutex::new(HashMap::new()),
            last_good: Mutex::new(HashMap::new()),
            signals: Mutex::new(VecDeque::new()),
            made: Mutex::new(VecDeque::new()),
        }))
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that wakes on every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    fn publish(
        &self,
        version: u64,
        resources: BTreeMap<Key, Resource>,
        modules: BTreeMap<String, Module>,
    ) {
        let made_at = Instant::now();
        {
            let mut m = self.made.lock().unwrap_or_else(|e| e.into_inner());
            m.push_back((version, made_at));
            while m.len() > 64 {
                m.pop_front();
            }
        }
        self.snapshot.send_replace(Arc::new(Snapshot {
            version,
            resources,
            modules,
            made_at,
        }));
    }

    /// Creates or replaces `resources`; with `dry_run`, only reports. The whole resulting
    /// set is validated first: on any error nothing changes.
    pub async fn apply(
        &self,
        resources: Vec<Resource>,
        dry_run: bool,
    ) -> Result<ApplyReport, ApplyError> {
        let mut errors = Vec::new();
        for r in &resources {
            if let Err(e) = check_resource(r) {
                errors.extend(e.0);
            }
        }
        if !errors.is_empty() {
            return Err(SpecErrors(errors).into());
        }
        let _guard = self.write.lock().await;
        let cur = self.current();
        let mut next = cur.resources.clone();
        let mut report = ApplyReport {
            version: cur.version,
            ..Default::default()
        };
        let mut upserts = Vec::new();
        for r in resources {
            let key = r.key();
            match next.get(&key) {
                Some(old) if *old == r => report.unchanged.push(key.to_string()),
                Some(_) => {
                    report.updated.push(key.to_string());
                    upserts.push(r.clone());
                }
                None => {
                    report.created.push(key.to_string());
                    upserts.push(r.clone());
                }
            }
            next.insert(key, r);
        }
        check_all(&next)?;
        report.warnings = warnings_of(&next, &cur.modules);
        if dry_run || upserts.is_empty() {
            return Ok(report);
        }
        let version = cur.version + 1;
        self.store.commit(version, &upserts, &[])?;
        report.version = version;
        self.publish(version, next, cur.modules.clone());
        Ok(report)
    }

    /// Deletes `keys`; refused when something left would refer to them.
    pub async fn delete(&self, keys: Vec<Key>, dry_run: bool) -> Result<ApplyReport, ApplyError> {
        let _guard = self.write.lock().await;
        let cur = self.current();
        let mut next = cur.resources.clone();
        let mut report = ApplyReport {
            version: cur.version,
            ..Default::default()
        };
        for k in &keys {
            if next.remove(k).is_none() {
                return Err(ApplyError::NotFound(k.to_string()));
            }
            report.deleted.push(k.to_string());
        }
        check_all(&next)?;
        if dry_run || keys.is_empty() {
            return Ok(report);
        }
        let version = cur.version + 1;
        self.store.commit(version, &[], &keys)?;
        report.version = version;
        self.publish(version, next, cur.modules.clone());
        Ok(report)
    }

    /// Reads the modules folder again; when a module changed, serves a new snapshot so that
    /// Envoys fetch the new module (by its new sha256) without a restart.
    pub async fn reload_modules(&self) -> Result<bool, StoreError> {
        let (modules, bytes) = read_modules(&self.config);
        let _guard = self.write.lock().await;
        let cur = self.current();
        if modules == cur.modules {
            return Ok(false);
        }
        *self.module_bytes.lock().unwrap_or_else(|e| e.into_inner()) = bytes;
        let version = cur.version + 1;
        self.store.commit(version, &[], &[])?;
        self.publish(version, cur.resources.clone(), modules);
        Ok(true)
    }

    /// The bytes of module `name` if its sha256 is `sha` (or any when `sha` is `None`).
    pub fn module(&self, name: &str) -> Option<Arc<Vec<u8>>> {
        self.module_bytes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The resources of one Envoy at snapshot `snap`, computed once per node and version.
    pub fn node_resources(
        &self,
        snap: &Snapshot,
        mesh: &str,
        node: &str,
        opts: &NodeOptions,
    ) -> Arc<NodeResources> {
        let key = (crate::names::node_id(mesh, node), opts.clone());
        {
            let cache = self.node_cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.0 == snap.version {
                if let Some(r) = cache.1.get(&key) {
                    return r.clone();
                }
            }
        }
        let world = translate::World {
            resources: &snap.resources,
            modules: &snap.modules,
        };
        let cfg = translate::node_config(&world, mesh, node, opts);
        let mut by_type = HashMap::new();
        by_type.insert(types::LISTENER, pack(cfg.listeners, |l| l.name.clone()));
        by_type.insert(types::ROUTE, pack(cfg.routes, |r| r.name.clone()));
        by_type.insert(types::CLUSTER, pack(cfg.clusters, |c| c.name.clone()));
        by_type.insert(
            types::ENDPOINT,
            pack(cfg.endpoints, |e| e.cluster_name.clone()),
        );
        by_type.insert(types::EXTENSION, pack(cfg.filters, |f| f.name.clone()));
        let res = Arc::new(NodeResources {
            by_type,
            warnings: cfg.warnings,
        });
        let mut cache = self.node_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != snap.version {
            *cache = (snap.version, HashMap::new());
        }
        cache.1.insert(key, res.clone());
        res
    }

    // === connected Envoys ===

    /// Registers a new ADS stream; returns its id.
    pub fn client_connected(&self, peer: String) -> u64 {
        let mut n = self.next_client.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        let id = *n;
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                ClientStatus {
                    peer,
                    connected_at: now_secs(),
                    ..Default::default()
                },
            );
        id
    }

    /// Forgets a stream.
    pub fn client_gone(&self, id: u64) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Updates a stream's status.
    pub fn with_client(&self, id: u64, f: impl FnOnce(&mut ClientStatus)) {
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&id)
        {
            f(c);
        }
    }

    /// All connected Envoys.
    pub fn clients(&self) -> Vec<ClientStatus> {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// When snapshot `version` was made, if still remembered.
    pub fn made_at(&self, version: u64) -> Option<Instant> {
        self.made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, t)| *t)
    }

    /// Envoy `node` refused content `hash` of `type_url`.
    pub fn record_refused(&self, node: &str, type_url: &'static str, hash: u64) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((node.to_owned(), type_url), hash);
    }

    /// Envoy `node` accepted `content` (hash `hash`) of `type_url`.
    pub fn record_good(
        &self,
        node: &str,
        type_url: &'static str,
        hash: u64,
        content: Arc<Vec<(String, Any)>>,
    ) {
        self.last_good
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((node.to_owned(), type_url), (hash, content));
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if r.get(&(node.to_owned(), type_url)) == Some(&hash) {
            r.remove(&(node.to_owned(), type_url));
        }
    }

    /// If `hash` is what `node` refused before, the last content it accepted instead.
    pub fn instead_of_refused(
        &self,
        node: &str,
        type_url: &'static str,
        hash: u64,
    ) -> Option<(u64, Content)> {
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(node.to_owned(), type_url))
            .copied();
        if refused != Some(hash) {
            return None;
        }
        self.last_good
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(node.to_owned(), type_url))
            .cloned()
    }

    /// Whether `node` refused `hash` of `type_url`.
    pub fn is_refused(&self, node: &str, type_url: &'static str, hash: u64) -> bool {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(node.to_owned(), type_url))
            == Some(&hash)
    }

    // === breaker signals ===

    /// Keeps a breaker signal (the newest [`MAX_SIGNALS`]).
    pub fn record_signal(&self, signal: serde_json::Value) {
        let mut s = self.signals.lock().unwrap_or_else(|e| e.into_inner());
        s.push_back(signal);
        while s.len() > MAX_SIGNALS {
            s.pop_front();
        }
    }

    /// The kept breaker signals, oldest first.
    pub fn signals(&self) -> Vec<serde_json::Value> {
        self.signals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Translation warnings of every node of `resources`.
fn warnings_of(
    resources: &BTreeMap<Key, Resource>,
    modules: &BTreeMap<String, Module>,
) -> Vec<String> {
    let world = translate::World { resources, modules };
    let mut out = Vec::new();
    for r in resources.values() {
        if let Resource::VirtualNode(n) = r {
            let cfg = translate::node_config(
                &world,
                &n.mesh_name,
                &n.virtual_node_name,
                &NodeOptions::default(),
            );
            for w in cfg.warnings {
                out.push(format!("{}: {w}", r.key()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The modules of `dir` as the server would serve them from `http_base`.
pub fn modules_in(dir: &std::path::Path, http_base: &str) -> BTreeMap<String, Module> {
    read_modules(&ControlConfig {
        modules_dir: Some(dir.to_path_buf()),
        http_base: http_base.to_owned(),
    })
    .0
}

fn read_modules(config: &ControlConfig) -> ModuleSet {
    let mut modules = BTreeMap::new();
    let mut bytes = BTreeMap::new();
    let Some(dir) = &config.modules_dir else {
        return (modules, bytes);
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "modules folder unreadable: no wasm filters served");
        return (modules, bytes);
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("wasm") {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        match std::fs::read(&path) {
            Ok(b) => {
                let sha = hex(&sha2::Sha256::digest(&b));
                modules.insert(
                    name.clone(),
                    Module {
                        url: format!("{}/v1/modules/{name}.wasm?sha256={sha}", config.http_base),
                        sha256: sha,
                    },
                );
                bytes.insert(name, Arc::new(b));
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "module unreadable"),
        }
    }
    (modules, bytes)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
