//! The filter modules the server hands out: read from a folder (`<name>.wasm`), served over
//! HTTP with their sha256, and read again when they change.

use maille_translate::{modules_in, Module};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

type Set = (BTreeMap<String, Module>, BTreeMap<String, Arc<Vec<u8>>>);

/// The modules folder and what was last read from it.
#[derive(Debug)]
pub struct Modules {
    dir: Option<PathBuf>,
    http_base: String,
    current: Mutex<Set>,
}

impl Modules {
    /// Reads `dir` (none: no modules); URLs start with `http_base`, the server's HTTP port
    /// as Envoys reach it.
    pub fn new(dir: Option<PathBuf>, http_base: &str) -> Modules {
        let m = Modules {
            dir,
            http_base: http_base.to_owned(),
            current: Mutex::new(Default::default()),
        };
        m.reload();
        m
    }

    fn read(&self) -> Set {
        let Some(dir) = &self.dir else {
            return Default::default();
        };
        if !dir.is_dir() {
            tracing::warn!(dir = %dir.display(), "modules folder unreadable: no filters served");
        }
        let mut modules = BTreeMap::new();
        let mut bytes = BTreeMap::new();
        for (name, (m, b)) in modules_in(dir, &self.http_base) {
            modules.insert(name.clone(), m);
            bytes.insert(name, Arc::new(b));
        }
        (modules, bytes)
    }

    /// Reads the folder again; the names of the modules that appeared, changed or went.
    pub fn reload(&self) -> Vec<String> {
        let fresh = self.read();
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed: Vec<String> = fresh
            .0
            .iter()
            .filter(|(n, m)| cur.0.get(*n) != Some(*m))
            .map(|(n, _)| n.clone())
            .collect();
        changed.extend(cur.0.keys().filter(|n| !fresh.0.contains_key(*n)).cloned());
        if !changed.is_empty() {
            *cur = fresh;
        }
        changed
    }

    /// The modules served now, by name.
    pub fn current(&self) -> BTreeMap<String, Module> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The bytes of module `name`.
    pub fn bytes(&self, name: &str) -> Option<Arc<Vec<u8>>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .get(name)
            .cloned()
    }
}
