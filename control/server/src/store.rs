//! Where the mesh resources live between restarts. The server talks to a [`Store`]; the
//! default is [`RedbStore`], an embedded file, and a shared store for several replicas can
//! take its place behind the same trait.

use maille_model::{Key, Resource};
use maille_translate::{CloudMap, CloudMapInstance, CloudMapQuery};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// A failure of the store, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(pub String);

fn err(what: &str) -> impl Fn(redb::Error) -> StoreError + '_ {
    move |e| StoreError(format!("{what}: {e}"))
}

impl StoreError {
    /// Whether another server sharing the store wrote the version first (the change may be
    /// tried again on top of its).
    pub fn is_conflict(&self) -> bool {
        self.0.starts_with(crate::etcd_store::CONFLICT)
    }
}

/// Durable resources plus the version counter of the applied state.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Everything stored, and the last version.
    fn load(&self) -> Result<(u64, BTreeMap<Key, Resource>), StoreError>;
    /// Writes `upserts`, removes `deletes` and sets the version, all or nothing.
    fn commit(&self, version: u64, upserts: &[Resource], deletes: &[Key])
        -> Result<(), StoreError>;
    /// [`Store::load`], and what [`Store::commit_cloud_map`] kept, read together (`None`: a
    /// store of one server, which keeps no answers).
    fn load_all(&self) -> Result<Loaded, StoreError> {
        let (version, resources) = self.load()?;
        Ok(Loaded {
            version,
            resources,
            cloud_map: None,
        })
    }
    /// What changed since `since` (a [`Delta::revision`] an earlier call returned; `None`:
    /// everything), read at one moment. The default reads everything.
    fn load_since(&self, since: Option<u64>) -> Result<Delta, StoreError> {
        let _ = since;
        let l = self.load_all()?;
        Ok(Delta {
            revision: None,
            version: l.version,
            keys: None,
            changed: l.resources,
            cloud_map: l.cloud_map,
        })
    }
    /// [`Store::commit`] of a change after which no node asks Cloud Map `unasked` any more:
    /// their answers go with it, so that a node added back later is not served the instances
    /// of then (a store that keeps no answers ignores them). With `as_leader` (a rollout's
    /// step), a shared store refuses it once this server no longer leads, so a server that
    /// lost the lease without noticing cannot undo what the new leader did.
    fn commit_dropping(
        &self,
        version: u64,
        upserts: &[Resource],
        deletes: &[Key],
        unasked: &[CloudMapQuery],
        as_leader: bool,
    ) -> Result<(), StoreError> {
        let _ = (unasked, as_leader);
        self.commit(version, upserts, deletes)
    }
    /// Sets the version with no resource changed, keeping `changes` to what Cloud Map answered
    /// (a query's instances; `None`: the query is asked no more) for the other servers
    /// sharing the store, all or nothing; a shared store takes them only while this server
    /// leads. A store bounds one commit: it may keep only the first of `changes`, and
    /// returns how many it kept (at least one, when there are any). A store of one server
    /// keeps only the version: its server asks again when it starts.
    fn commit_cloud_map(
        &self,
        version: u64,
        changes: &[(CloudMapQuery, Option<Vec<CloudMapInstance>>)],
    ) -> Result<usize, StoreError> {
        self.commit(version, &[], &[])?;
        Ok(changes.len())
    }
    /// Every rollout status kept, by rollout key (JSON documents of `maille-api`).
    fn rollout_statuses(&self) -> Result<Vec<(Key, Vec<u8>)>, StoreError>;
    /// Keeps (or, with `None`, forgets) a rollout's status.
    fn save_rollout_status(&self, key: &Key, status: Option<&[u8]>) -> Result<(), StoreError>;
    /// Keeps `bytes` as the secret `name` (the certificate authority's key, the token key)
    /// unless one is kept already, and returns the one kept: whoever created it first wins,
    /// so every reader gets the same.
    fn create_secret(&self, name: &str, bytes: &[u8]) -> Result<Vec<u8>, StoreError>;
    /// For a store other servers write too: the newest version written, as it changes
    /// (each server then takes the others' changes). `None`: this server is the only writer.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// For a store other servers write too: runs for leader as `me` (work done once:
    /// rollouts), registers `server` among the live servers, and tells who leads, as it
    /// changes. `None`: this server is the only one, so it leads.
    fn campaign(
        &self,
        me: &str,
        server: ServerEntry,
        ttl: std::time::Duration,
    ) -> Option<tokio::sync::watch::Receiver<Leader>> {
        let _ = (me, server, ttl);
        None
    }
    /// Keeps (or, with `None`, forgets) what Envoy `node` refused of `type_url` and what it
    /// accepted before, for the other servers: an Envoy that reconnects to another is
    /// served what it last accepted. A store of one server keeps this in memory only.
    fn save_refusal(
        &self,
        node: &str,
        type_url: &str,
        record: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let _ = (node, type_url, record);
        Ok(())
    }
    /// Everything [`Store::save_refusal`] kept: `(node, type URL, record)`.
    fn refusals(&self) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        Ok(Vec::new())
    }
    /// The live servers sharing the store (none for a store of one server), or why they
    /// could not be listed.
    fn try_servers(&self) -> Result<Vec<ServerEntry>, StoreError> {
        Ok(Vec::new())
    }
    /// [`Store::try_servers`], none when they could not be listed (logged).
    fn servers(&self) -> Vec<ServerEntry> {
        self.try_servers().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "bootstraps list this server only");
            Vec::new()
        })
    }
}

/// What a store holds, read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The last version.
    pub version: u64,
    /// Every resource.
    pub resources: BTreeMap<Key, Resource>,
    /// What Cloud Map last answered the leader, by query (`None`: a store of one server).
    pub cloud_map: Option<CloudMap>,
}

/// What [`Store::load_since`] read.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    /// Where the next call starts from (`None`: the store reads everything each time).
    pub revision: Option<u64>,
    /// The last version.
    pub version: u64,
    /// Every resource's key (`None`: `changed` holds every resource).
    pub keys: Option<std::collections::BTreeSet<Key>>,
    /// The resources written since (every resource, when read from the start).
    pub changed: BTreeMap<Key, Resource>,
    /// What Cloud Map last answered the leader (as [`Loaded::cloud_map`]).
    pub cloud_map: Option<CloudMap>,
}

/// A live server among those sharing a store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerEntry {
    /// This process's own id among the servers (random, made at start).
    pub id: String,
    /// The address Envoys reach it at (bootstraps list it).
    pub address: String,
    /// Its ADS port.
    pub xds_port: u16,
    /// Its admin port.
    pub http_port: u16,
    /// Its admin API as the other servers reach it (`https://HOST:PORT`): the leader asks
    /// every server for the stats its Envoys sent it.
    pub peer_url: String,
}

/// Who does the work done once among servers sharing a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leader {
    /// Whether this server does.
    pub me: bool,
    /// The server that does (its address), when known.
    pub holder: Option<String>,
}

const RESOURCES: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("resources");
const META: redb::TableDefinition<'_, &str, u64> = redb::TableDefinition::new("meta");
const ROLLOUTS: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("rollouts");
const SECRETS: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("secrets");

fn key_string(k: &Key) -> String {
    // A JSON key keeps any name unambiguous.
    serde_json::to_string(k).unwrap_or_default()
}

/// The embedded default: one redb file.
#[derive(Debug)]
pub struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("creating {}: {e}", dir.display())))?;
        }
        let db = redb::Database::create(path)
            .map_err(|e| StoreError(format!("opening {}: {e}", path.display())))?;
        // It holds the certificate authority's key: readable by its owner only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError(format!("restricting {}: {e}", path.display())))?;
        }
        let txn = db.begin_write().map_err(|e| err("begin")(e.into()))?;
        {
            txn.open_table(RESOURCES)
                .map_err(|e| err("resources table")(e.into()))?;
            txn.open_table(META)
                .map_err(|e| err("meta table")(e.into()))?;
            txn.open_table(ROLLOUTS)
                .map_err(|e| err("rollouts table")(e.into()))?;
            txn.open_table(SECRETS)
                .map_err(|e| err("secrets table")(e.into()))?;
        }
        txn.commit().map_err(|e| err("commit")(e.into()))?;
        Ok(RedbStore { db })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<(u64, BTreeMap<Key, Resource>), StoreError> {
        use redb::{ReadableDatabase, ReadableTable};
        let txn = self
            .db
            .begin_read()
            .map_err(|e| err("begin read")(e.into()))?;
        let meta = txn.open_table(META).map_err(|e| err("meta")(e.into()))?;
        let version = meta
            .get("version")
            .map_err(|e| err("version")(e.into()))?
            .map(|v| v.value())
            .unwrap_or(0);
        let table = txn
            .open_table(RESOURCES)
            .map_err(|e| err("resources")(e.into()))?;
        let mut out = BTreeMap::new();
        for row in table.iter().map_err(|e| err("iterate")(e.into()))? {
            let (k, v) = row.map_err(|e| err("read")(e.into()))?;
            let r: Resource = serde_json::from_slice(v.value()).map_err(|e| {
                StoreError(format!("stored resource {} is unreadable: {e}", k.value()))
            })?;
            out.insert(r.key(), r);
        }
        Ok((version, out))
    }

    fn commit(
        &self,
        version: u64,
        upserts: &[Resource],
        deletes: &[Key],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| err("begin")(e.into()))?;
        {
            let mut t = txn
                .open_table(RESOURCES)
                .map_err(|e| err("resources")(e.into()))?;
            for r in upserts {
                let bytes = serde_json::to_vec(r).map_err(|e| StoreError(e.to_string()))?;
                t.insert(key_string(&r.key()).as_str(), bytes.as_slice())
                    .map_err(|e| err("insert")(e.into()))?;
            }
            for k in deletes {
                t.remove(key_string(k).as_str())
                    .map_err(|e| err("remove")(e.into()))?;
            }
            let mut m = txn.open_table(META).map_err(|e| err("meta")(e.into()))?;
            m.insert("version", version)
                .map_err(|e| err("version")(e.into()))?;
        }
        txn.commit().map_err(|e| err("commit")(e.into()))
    }

    fn rollout_statuses(&self) -> Result<Vec<(Key, Vec<u8>)>, StoreError> {
        use redb::{ReadableDatabase, ReadableTable};
        let txn = self
            .db
            .begin_read()
            .map_err(|e| err("begin read")(e.into()))?;
        let t = txn
            .open_table(ROLLOUTS)
            .map_err(|e| err("rollouts")(e.into()))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| err("iterate")(e.into()))? {
            let (k, v) = row.map_err(|e| err("read")(e.into()))?;
            let key: Key = serde_json::from_str(k.value()).map_err(|e| {
                StoreError(format!(
                    "stored rollout key {} is unreadable: {e}",
                    k.value()
                ))
            })?;
            out.push((key, v.value().to_vec()));
        }
        Ok(out)
    }

    fn save_rollout_status(&self, key: &Key, status: Option<&[u8]>) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| err("begin")(e.into()))?;
        {
            let mut t = txn
                .open_table(ROLLOUTS)
                .map_err(|e| err("rollouts")(e.into()))?;
            let k = key_string(key);
            match status {
                Some(b) => {
                    t.insert(k.as_str(), b)
                        .map_err(|e| err("insert")(e.into()))?;
                }
                None => {
                    t.remove(k.as_str()).map_err(|e| err("remove")(e.into()))?;
                }
            }
        }
        txn.commit().map_err(|e| err("commit")(e.into()))
    }

    fn create_secret(&self, name: &str, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        use redb::ReadableTable;
        let txn = self.db.begin_write().map_err(|e| err("begin")(e.into()))?;
        let kept = {
            let mut t = txn
                .open_table(SECRETS)
                .map_err(|e| err("secrets")(e.into()))?;
            let existing = t
                .get(name)
                .map_err(|e| err("read")(e.into()))?
                .map(|v| v.value().to_vec());
            match existing {
                Some(v) => v,
                None => {
                    t.insert(name, bytes).map_err(|e| err("insert")(e.into()))?;
                    bytes.to_vec()
                }
            }
        };
        txn.commit().map_err(|e| err("commit")(e.into()))?;
        Ok(kept)
    }
}

/// A store in memory, for tests and `--ephemeral` runs.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<(u64, BTreeMap<Key, Resource>)>,
    cloud_map: Mutex<CloudMap>,
    rollouts: Mutex<BTreeMap<Key, Vec<u8>>>,
    secrets: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<(u64, BTreeMap<Key, Resource>), StoreError> {
        Ok(self
            .inner
            .lock()
            .map_err(|_| StoreError("poisoned".into()))?
            .clone())
    }

    // Kept like a shared store's, so that tests can share one between two meshes.
    fn load_all(&self) -> Result<Loaded, StoreError> {
        let g = self
            .inner
            .lock()
            .map_err(|_| StoreError("poisoned".into()))?;
        let cm = self
            .cloud_map
            .lock()
            .map_err(|_| StoreError("poisoned".into()))?;
        Ok(Loaded {
            version: g.0,
            resources: g.1.clone(),
            cloud_map: Some(cm.clone()),
        })
    }

    fn commit_dropping(
        &self,
        version: u64,
        upserts: &[Resource],
        deletes: &[Key],
        unasked: &[CloudMapQuery],
        _as_leader: bool,
    ) -> Result<(), StoreError> {
        self.commit(version, upserts, deletes)?;
        let mut cm = self
            .cloud_map
            .lock()
            .map_err(|_| StoreError("poisoned".into()))?;
        for q in unasked {
            cm.remove(q);
        }
        Ok(())
    }

    fn commit_cloud_map(
        &self,
        version: u64,
        changes: &[(CloudMapQuery, Option<Vec<CloudMapInstance>>)],
    ) -> Result<usize, StoreError> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| StoreError("poisoned".into()))?;
        let mut cm = self
            .cloud_map
            .lock()
            .map_err(|_| StoreError("poisoned".into()))?;
        g.0 = version;
        for (q, i) in changes {
            match i {
                Some(i) => cm.insert(q.clone(), i.clone()),
                None => cm.remove(q),
            };
        }
        Ok(changes.len())
    }

    fn commit(
        &self,
        version: u64,
        upserts: &[Resource],
        deletes: &[Key],
    ) -> Result<(), StoreError> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| StoreError("poisoned".into()))?;
        g.0 = version;
        for r in upserts {
            g.1.insert(r.key(), r.clone());
        }
        for k in deletes {
            g.1.remove(k);
        }
        Ok(())
    }

    fn rollout_statuses(&self) -> Result<Vec<(Key, Vec<u8>)>, StoreError> {
        Ok(self
            .rollouts
            .lock()
            .map_err(|_| StoreError("poisoned".into()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn save_rollout_status(&self, key: &Key, status: Option<&[u8]>) -> Result<(), StoreError> {
        let mut g = self
            .rollouts
            .lock()
            .map_err(|_| StoreError("poisoned".into()))?;
        match status {
            Some(b) => g.insert(key.clone(), b.to_vec()),
            None => g.remove(key),
        };
        Ok(())
    }

    fn create_secret(&self, name: &str, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut g = self
            .secrets
            .lock()
            .map_err(|_| StoreError("poisoned".into()))?;
        Ok(g.entry(name.to_owned())
            .or_insert_with(|| bytes.to_vec())
            .clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maille_model::{Mesh, MeshSpec};

    fn mesh(name: &str) -> Resource {
        Resource::Mesh(Mesh {
            mesh_name: name.into(),
            spec: MeshSpec::default(),
            maille: None,
        })
    }

    #[test]
    fn redb_store_keeps_resources_and_version_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            s.commit(1, &[mesh("a"), mesh("b")], &[]).unwrap();
            s.commit(2, &[], &[mesh("a").key()]).unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        let (v, all) = s.load().unwrap();
        assert_eq!(v, 2);
        assert_eq!(
            all.keys().cloned().collect::<Vec<_>>(),
            vec![mesh("b").key()]
        );
    }
}
