//! Test harnesses for Maille's filters.
//!
//! [`envoy`] runs real Envoy (from the project's `.venv`) with the real `.wasm` files, on
//! free ports of 127.0.0.1, and stops it on drop: the end-to-end tests in `tests/` use it.
//! A wasmtime-based proxy-wasm host for fast deterministic filter tests joins it next.
#![forbid(unsafe_code)]

pub mod envoy;

pub use envoy::{free_port, render, repo_root, start_canary, Envoy, EnvoyExit, Upstreams};
