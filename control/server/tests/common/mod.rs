//! Shared by the server's in-process tests.

use maille_model::Resource;
use std::path::Path;

/// The demo's ColorTeller mesh, as `make demo` applies it.
#[allow(dead_code)] // not every test binary uses every helper
pub(crate) fn colorapp() -> Vec<Resource> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/examples/colorteller/local/colorapp.json");
    maille_import::import_paths(&[path], &Default::default())
        .unwrap()
        .resources
}

/// Writes stand-ins for every module the server serves into `dir`: the server only hashes
/// and serves them, so their bytes are their names.
#[allow(dead_code)] // not every test binary uses every helper
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
