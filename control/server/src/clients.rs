//! The Envoys connected over ADS: what each was sent and acknowledged, and what each node
//! refused, so a refused version is never sent again in place of the last good one.

use crate::mesh::Content;
use maille_api::ClientStatus;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
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
}

/// The registry of connected Envoys.
#[derive(Debug, Default)]
pub struct Clients {
    clients: Mutex<(u64, BTreeMap<u64, ClientStatus>)>,
    memory: Mutex<Memory>,
}

/// Seconds since the epoch.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Clients {
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
    }

    /// Envoy `node` accepted `content` of `type_url`.
    pub fn accepted(&self, node: &str, type_url: &'static str, content: Content) {
        let mut m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        let key = (node.to_owned(), type_url);
        if m.refused.get(&key) == Some(&content.hash) {
            m.refused.remove(&key);
        }
        if m.last_good.len() >= MAX_REMEMBERED && !m.last_good.contains_key(&key) {
            if let Some(k) = m.last_good.keys().next().cloned() {
                m.last_good.remove(&k);
            }
        }
        m.last_good.insert(key, content);
    }

    /// If `hash` is what `node` refused before, the last content it accepted instead.
    pub fn instead_of_refused(
        &self,
        node: &str,
        type_url: &'static str,
        hash: u64,
    ) -> Option<Content> {
        let m = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        let key = (node.to_owned(), type_url);
        if m.refused.get(&key) != Some(&hash) {
            return None;
        }
        m.last_good.get(&key).cloned()
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
