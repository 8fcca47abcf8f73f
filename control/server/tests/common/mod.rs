//! Shared by the server's in-process tests.

use std::path::Path;

/// Writes stand-ins for every module the server serves into `dir`: the server only hashes
/// and serves them, so their bytes are their names.
pub(crate) fn stand_in_modules(dir: &Path) {
    for f in [
        "canary.wasm",
        "breaker.wasm",
        "libmaille_canary.so",
        "libmaille_breaker.so",
    ] {
        std::fs::write(dir.join(f), f.as_bytes()).unwrap();
    }
}
