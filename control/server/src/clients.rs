//! The Envoys connected over ADS: what each was sent and acknowledged, and what each node
//! refused, so a refused version is never sent again in place of the last good one.

use crate::mesh::Content;
use crate::store::Store;
use maille_api::ClientStatus;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Nodes whose NACK memory is kept; past it the oldest entries go (a reconnecting Envoy of a
/// forgotten node is then sent the current version, which it may refuse again).
const MAX_REMEMBERED: usize = 100_000;

/// Per (node id, type URL).
type PerNodeType<T> = HashMap<(String, &'static str), T>;

/// What each node refused and last accepted, per type.
#[derive(Debug, Default)]
struct Memory {
    /// The content hash Envoy refused.
    refused: PerNodeType<u64>,
    /// The last content it accepted.
    last_good: PerNodeType<Content>,
    /// The refusals kept in a shared store too.
    shared: HashSet<(String, &'static str)>,
}

/// A refusal as kept in a shared store: the refused hash and the last good content.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    refused: u64,
    /// `(name, type URL, bytes in base64)` of each resource.
    good: Option<Vec<(String, String, String)>>,
}

impl Record {
    fn of(refused: u64, good: Option<&Content>) -> Record {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        Record {
            refused,
            good: good.map(|c| {
                c.items
                    .iter()
                    .map(|(n, a)| (n.clone(), a.type_url.clone(), b64.encode(&a.value)))
                    .collect()
            }),
        }
    }

    fn good(&self) -> Option<Content> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let items = self.good.as_ref()?;
        let mut out = Vec::with_capacity(items.len());
        for (n, t, v) in items {
            out.push((
                n.clone(),
                envoy_types::pb::google::protobuf::Any {
                    type_url: t.clone(),
                    value: b64.decode(v).ok()?,
                },
            ));
        }
        Some(Content::new(out))
    }
}

/// The registry of connected Envoys.
#[derive(Debug, Default)]
pub struct Clients {
    clients: Mutex<(u64, BTreeMap<u64, ClientStatus>)>,
    memory: Mutex<Memory>,
    /// A store shared with other servers, where refusals are kept for them too.
    store: Option<Arc<dyn Store>>,
    /// The refusals the store held when last read, and when: read again at most once a
    /// second, so that a thousand Envoys reconnecting at once cost one read.
    kept: Mutex<Option<(std::time::Instant, Arc<Kept>)>>,
}

/// Refusals read from a shared store: their records by (node id, type URL).
type Kept = HashMap<(String, String), Vec<u8>>;

/// How long the refusals read from a shared store are taken as current.
const KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Seconds since the epoch.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Clients {
    /// A registry whose refusals `store` keeps too (servers sharing it).
    pub fn shared(store: Arc<dyn Store>) -> Clients {
        Clients {
            store: Some(store),
            ..Default::default()
        }
    }

    fn keep(&self, node: &str, type_url: &'static str, record: Option<Record>) {
        let Some(store) = &self.store else { return };
        let bytes = record.map(|r| serde_json::to_vec(&r).unwrap_or_default());
        if let Err(e) = store.save_refusal(node, type_url, bytes.as_deref()) {
            tracing::warn!(node, error = %e, "keeping a refusal for the other servers");
        }
    }

    /// Registers a new ADS stream; returns its id.
    pub fn connected(&self, peer: String) -> u64 {
        let mut g = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        let id = g.0;
        g.1.insert(
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
    pub fn gone(&self, id: u64) {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .remove(&id);
    }

    /// Updates a stream's status.
    pub fn update(&self, id: u64, f: impl FnOnce(&mut ClientStatus)) {
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .get_mut(&id)
        {
            f(c);
        }
    }

    /// All connected Envoys.
    pub fn list(&self) -> Vec<ClientStatus> {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .values()
            .cloned()
            .collect()
    }

    /// Envoy `node` refused content `hash` of `type_url`.
    pub fn refused(&self, node: &str, type_url: &'static str, hash: u64) {
        let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        if m.refused.len() >= MAX_REMEMBERED {
            if let Some(k) = m.refused.keys().next().cloned() {
                m.refused.remove(&k);
            }
        }
        m.refused.insert((node.to_owned(), type_url), hash);
        if self.store.is_some() {
            let key = (node.to_owned(), type_url);
            let record = Record::of(hash, m.last_good.get(&key));
            m.shared.insert(key);
            drop(m);
            self.keep(node, type_url, Some(record));
        }
    }

    /// Envoy `node` accepted `content` of `type_url`.
    pub fn accepted(&self, node: &str, type_url: &'static str, content: Content) {
        let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        let key = (node.to_owned(), type_url);
        let mut cleared = false;
        if m.refused.get(&key) == Some(&content.hash) {
            m.refused.remove(&key);
            cleared = true;
        }
        if m.last_good.len() >= MAX_REMEMBERED && !m.last_good.contains_key(&key) {
            if let Some(k) = m.last_good.keys().next().cloned() {
                m.last_good.remove(&k);
            }
        }
        // A refusal the other servers know of follows: gone, or with this as the last good.
        let shared = m.shared.contains(&key);
        let record = match (shared, cleared, m.refused.get(&key)) {
            (false, _, _) => None,
            (true, true, _) | (true, _, None) => {
                m.shared.remove(&key);
                Some(None)
            }
            (true, false, Some(h)) => Some(Some(Record::of(*h, Some(&content)))),
        };
        m.last_good.insert(key, content);
        drop(m);
        if let Some(r) = record {
            self.keep(node, type_url, r);
        }
    }

    /// If `hash` is what `node` refused before, the last content it accepted instead.
    pub fn instead_of_refused(
        &self,
        node: &str,
        type_url: &'static str,
        hash: u64,
    ) -> Option<Content> {
        let key = (node.to_owned(), type_url);
        {
            let m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            if m.refused.contains_key(&key) || self.store.is_none() {
                if m.refused.get(&key) != Some(&hash) {
                    return None;
                }
                return m.last_good.get(&key).cloned();
            }
        }
        // Unknown here: the node may have refused it on another server.
        let all = self.kept_refusals()?;
        let kept = all.get(&(node.to_owned(), type_url.to_owned()))?;
        let record: Record = serde_json::from_slice(kept).ok()?;
        let good = record.good();
        let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        if m.refused.len() >= MAX_REMEMBERED || m.shared.len() >= MAX_REMEMBERED {
            return (record.refused == hash).then_some(good).flatten();
        }
        m.refused.insert(key.clone(), record.refused);
        m.shared.insert(key.clone());
        if let Some(g) = &good {
            m.last_good.insert(key, g.clone());
        }
        (record.refused == hash).then_some(good).flatten()
    }

    /// The refusals a shared store keeps, read at most once per [`KEPT_FOR`].
    fn kept_refusals(&self) -> Option<Arc<Kept>> {
        let store = self.store.as_ref()?;
        {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            match kept.as_mut() {
                Some((at, all)) if at.elapsed() < KEPT_FOR => return Some(all.clone()),
                // Stale: this caller reads; the others meanwhile take the stale copy.
                Some((at, _)) => *at = std::time::Instant::now(),
                None => {}
            }
        }
        let all = match store.refusals() {
            Ok(v) => Arc::new(
                v.into_iter()
                    .map(|(n, t, b)| ((n, t), b))
                    .collect::<HashMap<_, _>>(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "reading the refusals other servers kept");
                Arc::new(HashMap::new())
            }
        };
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((std::time::Instant::now(), all.clone()));
        Some(all)
    }

    /// Whether `node` refused `hash` of `type_url`.
    pub fn is_refused(&self, node: &str, type_url: &'static str, hash: u64) -> bool {
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused
            .get(&(node.to_owned(), type_url))
            == Some(&hash)
    }
}
