//! The mesh as served: the applied resources (persisted in a [`Store`]), the filter modules,
//! and each node's Envoy resources, published as numbered [`Snapshot`]s.
//!
//! A change costs what it touches. The reference checks look at the changed resources only
//! (and, for a delete, at what refers to it); the node translations it can affect are found
//! from what each node's translation read ([`Dep`]) and only those are made again; every
//! other node keeps its resources, so its Envoy is sent nothing.

use crate::modules::Modules;
use crate::store::{Store, StoreError};
use envoy_types::pb::google::protobuf::Any;
use maille_api::ApplyReport;
use maille_model::{check_changes, check_resource, Key, Kind, Resource, Resources, SpecErrors};
use maille_translate::{
    node_config, Callers, CloudMap, CloudMapInstance, CloudMapQuery, Dep, Module, NodeConfig,
    NodeOptions, World,
};
use prost::{Message, Name};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;
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
    /// SDS: the proxy's certificate and the trust bundle (per stream, not per snapshot).
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    /// Every type, in the order Envoy applies them (secrets first, clusters before
    /// endpoints, listeners before routes).
    pub const ALL: [&str; 6] = [SECRET, CLUSTER, ENDPOINT, EXTENSION, LISTENER, ROUTE];

    /// A short name for status output.
    pub fn short(type_url: &str) -> &str {
        match type_url {
            LISTENER => "LDS",
            ROUTE => "RDS",
            CLUSTER => "CDS",
            ENDPOINT => "EDS",
            EXTENSION => "ECDS",
            SECRET => "SDS",
            other => other,
        }
    }

    /// The served type named `url`, if it is one.
    pub fn known(url: &str) -> Option<&'static str> {
        ALL.into_iter().find(|t| *t == url)
    }
}

/// Most node configurations kept for Envoys whose options differ from the defaults; past it,
/// one is dropped (and made again when asked for).
const MAX_SERVED: usize = 100_000;
/// Snapshot times remembered for apply-to-ACK measurements.
const MADE_KEPT: usize = 64;

/// One applied state of the mesh, as served.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every apply, delete or module change; survives restarts.
    pub version: u64,
    /// All resources.
    pub resources: Resources,
    /// Served modules by name.
    pub modules: BTreeMap<String, Module>,
    /// What AWS Cloud Map last answered for the mesh's `awsCloudMap` nodes.
    pub cloud_map: Arc<CloudMap>,
    /// The Cloud Map queries the resources' nodes make (what the poller asks).
    pub cloud_map_queries: Arc<BTreeSet<CloudMapQuery>>,
    /// Who may call each node (for the RBAC rules of mesh mTLS).
    pub callers: Arc<Callers>,
    /// When it was made (for apply-to-ACK times).
    pub made_at: Instant,
}

impl Snapshot {
    fn world(&self) -> World<'_> {
        World {
            resources: &self.resources,
            modules: &self.modules,
            cloud_map: &self.cloud_map,
            callers: &self.callers,
        }
    }
}

/// The answers of `cm` to the queries in `wanted`.
fn asked(cm: &CloudMap, wanted: &BTreeSet<CloudMapQuery>) -> CloudMap {
    cm.iter()
        .filter(|(q, _)| wanted.contains(*q))
        .map(|(q, i)| (q.clone(), i.clone()))
        .collect()
}

/// Resources of one type as sent: `(name, Any)` sorted by name, and a hash of them.
#[derive(Debug, Clone, Default)]
pub struct Content {
    /// The resources.
    pub items: Arc<Vec<(String, Any)>>,
    /// A hash of names and bytes (never 0, which means "nothing sent yet").
    pub hash: u64,
}

impl Content {
    /// `items`, hashed.
    pub fn new(items: Vec<(String, Any)>) -> Content {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (n, a) in &items {
            n.hash(&mut h);
            a.value.hash(&mut h);
        }
        Content {
            items: Arc::new(items),
            hash: h.finish().max(1),
        }
    }

    /// Only the resources named in `names` (all when empty).
    pub fn only(&self, names: &[String]) -> Content {
        if names.is_empty() {
            return self.clone();
        }
        Content::new(
            self.items
                .iter()
                .filter(|(n, _)| names.iter().any(|w| w == n))
                .cloned()
                .collect(),
        )
    }
}

/// The resources of one Envoy, by type URL.
#[derive(Debug, Default)]
pub struct NodeResources {
    /// By type URL.
    pub by_type: HashMap<&'static str, Content>,
    /// What was not translated.
    pub warnings: Vec<String>,
}

fn pack<T: Message + Name>(items: Vec<T>, name: impl Fn(&T) -> String) -> Content {
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
    Content::new(v)
}

impl From<NodeConfig> for NodeResources {
    fn from(cfg: NodeConfig) -> NodeResources {
        let mut by_type = HashMap::new();
        by_type.insert(types::LISTENER, pack(cfg.listeners, |l| l.name.clone()));
        by_type.insert(types::ROUTE, pack(cfg.routes, |r| r.name.clone()));
        by_type.insert(types::CLUSTER, pack(cfg.clusters, |c| c.name.clone()));
        by_type.insert(
            types::ENDPOINT,
            pack(cfg.endpoints, |e| e.cluster_name.clone()),
        );
        by_type.insert(types::EXTENSION, pack(cfg.filters, |f| f.name.clone()));
        NodeResources {
            by_type,
            warnings: cfg.warnings,
        }
    }
}

/// Why a change was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The resulting set of resources is invalid.
    #[error("{0}")]
    Invalid(#[from] SpecErrors),
    /// Deleting (or updating, when it must exist) something that does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// Creating, when it must not exist yet, something that exists.
    #[error("{0} already exists")]
    Exists(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A virtual node: (mesh, name).
type NodeRef = (String, String);

/// What each virtual node's translation read, and the translations made for connected
/// Envoys, valid at `version`.
#[derive(Debug, Default)]
struct Translations {
    version: u64,
    /// Per existing virtual node: what its translation read, and its warnings.
    deps: HashMap<NodeRef, (BTreeSet<Dep>, Vec<String>)>,
    /// The reverse: which nodes read each thing.
    by_dep: HashMap<Dep, BTreeSet<NodeRef>>,
    /// Translations for Envoys (a node and its options), made on demand.
    served: HashMap<(NodeRef, NodeOptions), Arc<NodeResources>>,
}

impl Translations {
    fn index(&mut self, node: NodeRef, cfg: &NodeConfig) {
        self.unindex(&node);
        for d in &cfg.depends_on {
            self.by_dep
                .entry(d.clone())
                .or_default()
                .insert(node.clone());
        }
        self.deps
            .insert(node, (cfg.depends_on.clone(), cfg.warnings.clone()));
    }

    fn unindex(&mut self, node: &NodeRef) {
        if let Some((deps, _)) = self.deps.remove(node) {
            for d in deps {
                if let Some(s) = self.by_dep.get_mut(&d) {
                    s.remove(node);
                    if s.is_empty() {
                        self.by_dep.remove(&d);
                    }
                }
            }
        }
    }

    /// The nodes that read any of `changed`, plus virtual nodes among `keys` (created ones
    /// have read nothing yet).
    fn affected(&self, changed: &[Dep], keys: &[Key]) -> BTreeSet<NodeRef> {
        let mut out = BTreeSet::new();
        for d in changed {
            if let Some(s) = self.by_dep.get(d) {
                out.extend(s.iter().cloned());
            }
        }
        for k in keys {
            if k.kind == Kind::VirtualNode {
                out.insert((k.mesh.clone(), k.name.clone()));
            }
        }
        out
    }
}

fn virtual_nodes(resources: &Resources) -> impl Iterator<Item = NodeRef> + '_ {
    resources
        .range(
            Key {
                kind: Kind::VirtualNode,
                mesh: String::new(),
                name: String::new(),
            }..Key {
                kind: Kind::VirtualRouter,
                mesh: String::new(),
                name: String::new(),
            },
        )
        .map(|(k, _)| (k.mesh.clone(), k.name.clone()))
}

/// What a change does with the store.
enum Write<F> {
    /// Nothing: it is only reported.
    DryRun,
    /// Commits it (with the version it gets), then serves it.
    Commit(F),
    /// Serves it as version `.0`, which another server sharing the store committed, with
    /// the Cloud Map answers `.1` the leader keeps there (`None`: a store that keeps none).
    Taken(u64, Option<CloudMap>),
}

/// The commit of a change that commits nothing.
type NoCommit = fn(&dyn Store, u64, &[CloudMapQuery]) -> Result<(), StoreError>;

/// How long a change (or a version bump) is tried again on top of other servers' before it
/// is refused.
const CONFLICTS_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// The served mesh and its write path.
#[derive(Debug)]
pub struct Mesh {
    store: Arc<dyn Store>,
    modules: Modules,
    snapshot: watch::Sender<Arc<Snapshot>>,
    write: tokio::sync::Mutex<()>,
    translations: Mutex<Translations>,
    made: Mutex<VecDeque<(u64, Instant)>>,
    /// The queries whose answers the store keeps (as last read or written here): the
    /// leader drops those no node asks any more.
    kept_queries: Mutex<BTreeSet<CloudMapQuery>>,
    /// The store's revision this server has taken everything up to (see
    /// [`Store::load_since`]): the next catch-up reads only what was written after it.
    revision: Mutex<Option<u64>>,
}

impl Mesh {
    /// Loads the resources from `store`, the modules from `modules`, and translates every
    /// virtual node once (to know what each depends on).
    pub fn new(store: Arc<dyn Store>, modules: Modules) -> Result<Mesh, StoreError> {
        let loaded = store.load_since(None)?;
        let version = loaded.version;
        let resources: Resources = loaded
            .changed
            .into_iter()
            .map(|(k, r)| (k, Arc::new(r)))
            .collect();
        let queries = maille_translate::cloud_map_queries(&resources);
        // What the leader last heard from Cloud Map, for a server that does not ask it.
        let kept = loaded.cloud_map.unwrap_or_default();
        let snap = Snapshot {
            version,
            cloud_map: Arc::new(asked(&kept, &queries)),
            cloud_map_queries: Arc::new(queries),
            callers: Arc::new(maille_translate::callers(&resources)),
            resources,
            modules: modules.current(),
            made_at: Instant::now(),
        };
        let mut t = Translations {
            version,
            ..Default::default()
        };
        let opts = NodeOptions::default();
        for (mesh, node) in virtual_nodes(&snap.resources) {
            let cfg = node_config(snap.world(), &mesh, &node, &opts);
            t.index((mesh, node), &cfg);
        }
        let (tx, _) = watch::channel(Arc::new(snap));
        Ok(Mesh {
            store,
            modules,
            snapshot: tx,
            write: tokio::sync::Mutex::new(()),
            translations: Mutex::new(t),
            made: Mutex::new(VecDeque::new()),
            kept_queries: Mutex::new(kept.into_keys().collect()),
            revision: Mutex::new(loaded.revision),
        })
    }

    /// Where the state is kept.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that wakes on every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// The served modules' bytes.
    pub fn modules(&self) -> &Modules {
        &self.modules
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

    /// Creates or replaces `resources`; with `dry_run`, only reports. On any error nothing
    /// changes.
    pub async fn apply(
        &self,
        resources: Vec<Resource>,
        dry_run: bool,
    ) -> Result<ApplyReport, ApplyError> {
        self.apply_and_delete(resources, Vec::new(), dry_run).await
    }

    /// Deletes `keys`; refused when something left would refer to them.
    pub async fn delete(&self, keys: Vec<Key>, dry_run: bool) -> Result<ApplyReport, ApplyError> {
        self.apply_and_delete(Vec::new(), keys, dry_run).await
    }

    /// Creates or replaces `resources` and deletes `keys` in one change (one version, one
    /// commit, one push): validated one by one, then together with what is left. A key to
    /// delete that does not exist is refused.
    pub async fn apply_and_delete(
        &self,
        resources: Vec<Resource>,
        keys: Vec<Key>,
        dry_run: bool,
    ) -> Result<ApplyReport, ApplyError> {
        self.apply_expecting(resources, keys, dry_run, None).await
    }

    /// Creates (`exists: Some(false)`: each must not exist yet) or updates (`Some(true)`:
    /// each must exist) `resources`, checked under the write lock so that two racing
    /// creates cannot both succeed; `None`: either.
    pub async fn apply_expecting(
        &self,
        resources: Vec<Resource>,
        keys: Vec<Key>,
        dry_run: bool,
        exists: Option<bool>,
    ) -> Result<ApplyReport, ApplyError> {
        self.apply_with(resources, keys, dry_run, exists, false)
            .await
    }

    /// [`Mesh::apply_and_delete`] of a change the leader makes (a rollout's step): refused
    /// by a shared store once this server no longer leads (see [`Store::commit_dropping`]).
    pub async fn apply_as_leader(
        &self,
        resources: Vec<Resource>,
        keys: Vec<Key>,
    ) -> Result<ApplyReport, ApplyError> {
        self.apply_with(resources, keys, false, None, true).await
    }

    async fn apply_with(
        &self,
        resources: Vec<Resource>,
        keys: Vec<Key>,
        dry_run: bool,
        exists: Option<bool>,
        as_leader: bool,
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
        let mut tries = 0u32;
        let give_up = Instant::now() + CONFLICTS_FOR;
        loop {
            match self.apply_locked(resources.clone(), keys.clone(), dry_run, exists, as_leader) {
                Err(ApplyError::Store(e)) if e.is_conflict() && Instant::now() < give_up => {
                    // Another replica wrote first: take its state, then check and write
                    // this change again on top of it, after a random wait that grows with
                    // the tries, so that servers racing each other do not race again.
                    tries += 1;
                    tracing::info!(
                        tries,
                        "another server wrote first; applying on top of its change"
                    );
                    self.catch_up_locked()?;
                    let ms = rand::random::<u64>() % (5 * u64::from(tries.min(20)) + 1);
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                other => return other,
            }
        }
    }

    /// [`Mesh::apply_expecting`] under the write lock.
    fn apply_locked(
        &self,
        resources: Vec<Resource>,
        keys: Vec<Key>,
        dry_run: bool,
        exists: Option<bool>,
        as_leader: bool,
    ) -> Result<ApplyReport, ApplyError> {
        let cur = self.current();
        let mut next = cur.resources.clone();
        let mut report = ApplyReport {
            version: cur.version,
            ..Default::default()
        };
        let mut upserts = Vec::new();
        for r in resources {
            let key = r.key();
            match (exists, next.contains_key(&key)) {
                (Some(false), true) => return Err(ApplyError::Exists(key.to_string())),
                (Some(true), false) => return Err(ApplyError::NotFound(key.to_string())),
                _ => {}
            }
            match next.get(&key) {
                Some(old) if **old == r => {
                    report.unchanged.push(key.to_string());
                    continue;
                }
                Some(_) => report.updated.push(key.to_string()),
                None => report.created.push(key.to_string()),
            }
            let r = Arc::new(r);
            upserts.push((key.clone(), r.clone()));
            next.insert(key, r);
        }
        for k in &keys {
            if next.remove(k).is_none() {
                return Err(ApplyError::NotFound(k.to_string()));
            }
            report.deleted.push(k.to_string());
        }
        let upserted: Vec<Key> = upserts.iter().map(|(k, _)| k.clone()).collect();
        check_changes(&next, &upserted, &keys)?;
        if upserts.is_empty() && keys.is_empty() {
            return Ok(report);
        }
        let stored: Vec<Resource> = upserts.iter().map(|(_, r)| (**r).clone()).collect();
        let deleted = keys.clone();
        let changed: Vec<Key> = upserted.into_iter().chain(keys).collect();
        let write = if dry_run {
            Write::DryRun
        } else {
            Write::Commit(
                move |store: &dyn Store, version, unasked: &[CloudMapQuery]| {
                    store.commit_dropping(version, &stored, &deleted, unasked, as_leader)
                },
            )
        };
        self.change(cur, next, changed, report, write)
    }

    /// Takes what another server sharing the store wrote (see [`Store::changes`]): a new
    /// snapshot of the stored state, re-translating the nodes it affects. `Ok(false)`: the
    /// store holds nothing newer.
    pub async fn sync_from_store(&self) -> Result<bool, StoreError> {
        let _guard = self.write.lock().await;
        self.catch_up_locked()
    }

    fn catch_up_locked(&self) -> Result<bool, StoreError> {
        let since = *self.revision.lock().unwrap_or_else(|e| e.into_inner());
        let mut loaded = self.store.load_since(since)?;
        let cur = self.current();
        let version = loaded.version;
        if version <= cur.version {
            // Everything up to that revision is served here already (this server's own
            // commits).
            *self.revision.lock().unwrap_or_else(|e| e.into_inner()) = loaded.revision;
            return Ok(false);
        }
        let mut keys = Vec::new();
        let mut next = Resources::new();
        if let Some(all) = loaded.keys.take() {
            for k in all {
                if loaded.changed.contains_key(&k) {
                    continue;
                }
                match cur.resources.get(&k) {
                    Some(old) => {
                        next.insert(k, old.clone());
                    }
                    None => {
                        // Unchanged since, yet not here: read everything once.
                        tracing::warn!(key = %k, "catching up: a resource neither changed nor known here; reading the whole state");
                        *self.revision.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        return self.catch_up_locked();
                    }
                }
            }
        }
        for (k, r) in std::mem::take(&mut loaded.changed) {
            match cur.resources.get(&k) {
                Some(old) if **old == r => {
                    next.insert(k, old.clone());
                }
                _ => {
                    keys.push(k.clone());
                    next.insert(k, Arc::new(r));
                }
            }
        }
        keys.extend(
            cur.resources
                .keys()
                .filter(|k| !next.contains_key(*k))
                .cloned(),
        );
        let report = ApplyReport {
            version: cur.version,
            ..Default::default()
        };
        if let Some(cm) = &loaded.cloud_map {
            *self.kept_queries.lock().unwrap_or_else(|e| e.into_inner()) =
                cm.keys().cloned().collect();
        }
        let write = Write::<NoCommit>::Taken(version, loaded.cloud_map);
        match self.change(cur, next, keys, report, write) {
            Ok(_) => {
                *self.revision.lock().unwrap_or_else(|e| e.into_inner()) = loaded.revision;
                Ok(true)
            }
            Err(ApplyError::Store(e)) => Err(e),
            Err(e) => Err(StoreError(e.to_string())),
        }
    }

    /// Commits a new version with no resource changed (modules), on top of what another
    /// server sharing the store wrote if it wrote first. The snapshot it
    /// follows, and the version.
    fn commit_bump(&self) -> Result<(Arc<Snapshot>, u64), StoreError> {
        let give_up = Instant::now() + CONFLICTS_FOR;
        loop {
            let cur = self.current();
            let version = cur.version + 1;
            match self.store.commit(version, &[], &[]) {
                Ok(()) => return Ok((cur, version)),
                Err(e) if e.is_conflict() && Instant::now() < give_up => {
                    self.catch_up_locked()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Re-reads the modules folder; when a module changed, serves a new snapshot so that
    /// Envoys fetch the new module (by its new sha256) without a restart.
    pub async fn reload_modules(&self) -> Result<bool, StoreError> {
        let _guard = self.write.lock().await;
        let changed = self.modules.reload();
        if changed.is_empty() {
            return Ok(false);
        }
        let (cur, version) = self.commit_bump()?;
        let snap = Snapshot {
            version,
            resources: cur.resources.clone(),
            modules: self.modules.current(),
            cloud_map: cur.cloud_map.clone(),
            cloud_map_queries: cur.cloud_map_queries.clone(),
            callers: cur.callers.clone(),
            made_at: Instant::now(),
        };
        let deps: Vec<Dep> = changed.into_iter().map(Dep::Module).collect();
        self.publish(snap, &deps, &[]);
        Ok(true)
    }

    /// Serves what Cloud Map answered for `answers` (each query's healthy instances), keeping
    /// the other queries' last answers; when that changes any query's instances, a new
    /// snapshot re-translates the nodes that read them. The leader's answers are kept in the
    /// store for the servers that do not ask Cloud Map, and answers to queries no node asks
    /// any more are dropped there. A store that holds only so much per commit takes the
    /// changes over several versions. `Ok(false)`: nothing was committed.
    pub async fn update_cloud_map(
        &self,
        answers: BTreeMap<CloudMapQuery, Vec<CloudMapInstance>>,
    ) -> Result<bool, StoreError> {
        let _guard = self.write.lock().await;
        let give_up = Instant::now() + CONFLICTS_FOR;
        let mut any = false;
        loop {
            let cur = self.current();
            let wanted = &cur.cloud_map_queries;
            let mut changes: Vec<(CloudMapQuery, Option<Vec<CloudMapInstance>>)> = self
                .kept_queries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|q| !wanted.contains(*q))
                .map(|q| (q.clone(), None))
                .collect();
            for (q, instances) in &answers {
                if !wanted.contains(q) {
                    continue;
                }
                let mut instances = instances.clone();
                instances.sort();
                instances.dedup();
                if cur.cloud_map.get(q) != Some(&instances) {
                    changes.push((q.clone(), Some(instances)));
                }
            }
            if changes.is_empty() {
                return Ok(any);
            }
            let version = cur.version + 1;
            let kept = match self.store.commit_cloud_map(version, &changes) {
                Ok(n) => n.clamp(1, changes.len()),
                Err(e) if e.is_conflict() && Instant::now() < give_up => {
                    if !self.catch_up_locked()? {
                        // The store says another wrote first, yet holds nothing newer: a
                        // moment before asking it again.
                        let ms = 20 + rand::random::<u64>() % 80;
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            changes.truncate(kept);
            let mut next = (*cur.cloud_map).clone();
            let mut deps = Vec::new();
            {
                let mut k = self.kept_queries.lock().unwrap_or_else(|e| e.into_inner());
                for (q, instances) in changes {
                    match instances {
                        Some(i) => {
                            deps.push(Dep::CloudMap(q.clone()));
                            k.insert(q.clone());
                            next.insert(q, i);
                        }
                        None => {
                            k.remove(&q);
                        }
                    }
                }
            }
            let snap = Snapshot {
                version,
                resources: cur.resources.clone(),
                modules: cur.modules.clone(),
                cloud_map: Arc::new(next),
                cloud_map_queries: cur.cloud_map_queries.clone(),
                callers: cur.callers.clone(),
                made_at: Instant::now(),
            };
            self.publish(snap, &deps, &[]);
            any = true;
        }
    }

    /// Writes as `write` says and publishes the change from `cur` to `next` of `keys`,
    /// re-translating the nodes it affects; fills in the report's warnings from them.
    fn change<F: FnOnce(&dyn Store, u64, &[CloudMapQuery]) -> Result<(), StoreError>>(
        &self,
        cur: Arc<Snapshot>,
        next: Resources,
        keys: Vec<Key>,
        mut report: ApplyReport,
        write: Write<F>,
    ) -> Result<ApplyReport, ApplyError> {
        let (version, commit, answers) = match write {
            Write::DryRun => (None, None, None),
            Write::Commit(f) => (None, Some(f), None),
            Write::Taken(v, answers) => (Some(v), None, answers),
        };
        let dry_run = version.is_none() && commit.is_none();
        let mut deps: Vec<Dep> = keys
            .iter()
            .flat_map(|k| {
                Dep::of_change(
                    k,
                    cur.resources.get(k).map(|r| r.as_ref()),
                    next.get(k).map(|r| r.as_ref()),
                )
            })
            .collect();
        // Only nodes, services, routes and gateway routes say who calls whom.
        let callers = if keys.iter().any(|k| {
            matches!(
                k.kind,
                Kind::VirtualNode | Kind::VirtualService | Kind::Route | Kind::GatewayRoute
            )
        }) {
            let c = maille_translate::callers(&next);
            let (old, new) = (cur.callers.as_ref(), &c);
            for k in old.keys().chain(new.keys()) {
                if old.get(k) != new.get(k) {
                    deps.push(Dep::CallersOf {
                        mesh: k.0.clone(),
                        node: k.1.clone(),
                    });
                }
            }
            Arc::new(c)
        } else {
            cur.callers.clone()
        };
        let version = version.unwrap_or(cur.version + 1);
        // Only a virtual node can change what Cloud Map is asked.
        let cloud_map_queries = if keys.iter().any(|k| k.kind == Kind::VirtualNode) {
            Arc::new(maille_translate::cloud_map_queries(&next))
        } else {
            cur.cloud_map_queries.clone()
        };
        // Only what the nodes still ask: a node removed and added back later must not be
        // served the instances of then.
        let cloud_map = match answers {
            // The leader's answers, from the store.
            Some(answers) => {
                let next = asked(&answers, &cloud_map_queries);
                deps.extend(
                    cloud_map_queries
                        .iter()
                        .filter(|q| cur.cloud_map.get(*q) != next.get(*q))
                        .map(|q| Dep::CloudMap(q.clone())),
                );
                Arc::new(next)
            }
            None if Arc::ptr_eq(&cloud_map_queries, &cur.cloud_map_queries) => {
                cur.cloud_map.clone()
            }
            None => Arc::new(asked(&cur.cloud_map, &cloud_map_queries)),
        };
        let snap = Snapshot {
            version,
            cloud_map,
            cloud_map_queries,
            callers,
            resources: next,
            modules: cur.modules.clone(),
            made_at: Instant::now(),
        };
        if dry_run {
            let affected = self
                .translations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .affected(&deps, &keys);
            report.affected_nodes = affected.len();
            let opts = NodeOptions::default();
            for (mesh, node) in affected {
                if snap.resources.contains_key(&node_key(&mesh, &node)) {
                    let cfg = node_config(snap.world(), &mesh, &node, &opts);
                    warnings_into(&mut report.warnings, &mesh, &node, &cfg.warnings);
                }
            }
            finish(&mut report);
            return Ok(report);
        }
        if let Some(commit) = commit {
            // The Cloud Map answers the store keeps for queries no node asks after this
            // change go with it (from whichever server makes it). Only those the store holds,
            // as this server last read or wrote it: a commit on top of a newer state
            // conflicts, and is made again after reading it.
            let unasked: Vec<CloudMapQuery> =
                if Arc::ptr_eq(&snap.cloud_map_queries, &cur.cloud_map_queries) {
                    Vec::new()
                } else {
                    let kept = self.kept_queries.lock().unwrap_or_else(|e| e.into_inner());
                    kept.iter()
                        .filter(|q| !snap.cloud_map_queries.contains(*q))
                        .cloned()
                        .collect()
                };
            commit(self.store.as_ref(), version, &unasked)?;
            let mut kept = self.kept_queries.lock().unwrap_or_else(|e| e.into_inner());
            for q in &unasked {
                kept.remove(q);
            }
        }
        report.version = version;
        let (n, warnings) = self.publish(snap, &deps, &keys);
        report.affected_nodes = n;
        report.warnings = warnings;
        finish(&mut report);
        Ok(report)
    }

    /// Serves `snap`: re-translates the nodes that read any of `deps` (and those of `keys`
    /// that are virtual nodes), forgets their Envoys' translations, then publishes. Returns
    /// how many nodes were affected and their warnings.
    fn publish(&self, snap: Snapshot, deps: &[Dep], keys: &[Key]) -> (usize, Vec<String>) {
        let mut warnings = Vec::new();
        let n;
        {
            let mut t = self.translations.lock().unwrap_or_else(|e| e.into_inner());
            let affected = t.affected(deps, keys);
            n = affected.len();
            let opts = NodeOptions::default();
            for node in &affected {
                if snap.resources.contains_key(&node_key(&node.0, &node.1)) {
                    let cfg = node_config(snap.world(), &node.0, &node.1, &opts);
                    warnings_into(&mut warnings, &node.0, &node.1, &cfg.warnings);
                    t.index(node.clone(), &cfg);
                } else {
                    t.unindex(node);
                }
            }
            t.served.retain(|(node, _), _| !affected.contains(node));
            t.version = snap.version;
        }
        {
            let mut m = self.made.lock().unwrap_or_else(|e| e.into_inner());
            m.push_back((snap.version, snap.made_at));
            while m.len() > MADE_KEPT {
                m.pop_front();
            }
        }
        self.snapshot.send_replace(Arc::new(snap));
        (n, warnings)
    }

    /// The resources of one Envoy at snapshot `snap`. Made once per node and options until
    /// a change affects the node.
    pub fn node_resources(
        &self,
        snap: &Snapshot,
        mesh: &str,
        node: &str,
        opts: &NodeOptions,
    ) -> Arc<NodeResources> {
        let key = ((mesh.to_owned(), node.to_owned()), opts.clone());
        {
            let t = self.translations.lock().unwrap_or_else(|e| e.into_inner());
            if t.version == snap.version {
                if let Some(r) = t.served.get(&key) {
                    return r.clone();
                }
            }
        }
        let exists = snap.resources.contains_key(&node_key(mesh, node));
        let res = Arc::new(NodeResources::from(node_config(
            snap.world(),
            mesh,
            node,
            opts,
        )));
        // Only the current snapshot's translations of existing nodes are kept: a node that
        // does not exist costs nothing to translate and could be any name a client sends.
        if exists {
            let mut t = self.translations.lock().unwrap_or_else(|e| e.into_inner());
            if t.version == snap.version {
                if t.served.len() >= MAX_SERVED {
                    if let Some(k) = t.served.keys().next().cloned() {
                        t.served.remove(&k);
                    }
                }
                t.served.insert(key, res.clone());
            }
        }
        res
    }

    /// The names of the clusters the proxy with node id `node_id` has now (default options);
    /// none for an id that is not a node's or a gateway's. What a proxy may report about
    /// (breaker signals, stats).
    pub fn clusters_of(&self, node_id: &str) -> std::collections::HashSet<String> {
        let Some((mesh, proxy)) = maille_translate::names::parse_node_id(node_id) else {
            return Default::default();
        };
        self.node_resources(&self.current(), mesh, proxy, &NodeOptions::default())
            .by_type
            .get(types::CLUSTER)
            .map(|c| c.items.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default()
    }

    /// The warnings of a node's last translation (default options), if it exists.
    pub fn warnings_of(&self, mesh: &str, node: &str) -> Option<Vec<String>> {
        self.translations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deps
            .get(&(mesh.to_owned(), node.to_owned()))
            .map(|(_, w)| w.clone())
    }
}

fn node_key(mesh: &str, node: &str) -> Key {
    Key {
        kind: Kind::VirtualNode,
        mesh: mesh.to_owned(),
        name: node.to_owned(),
    }
}

fn warnings_into(out: &mut Vec<String>, mesh: &str, node: &str, warnings: &[String]) {
    for w in warnings {
        out.push(format!("{}: {w}", node_key(mesh, node)));
    }
}

fn finish(report: &mut ApplyReport) {
    report.warnings.sort();
    report.warnings.dedup();
}
