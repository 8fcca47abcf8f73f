//! Test harnesses for Maille's filters.
//!
//! - [`host`]: a proxy-wasm host on wasmtime that loads the real `.wasm` files and drives
//!   them as Envoy would, with a clock the test moves, shared data shared by several worker
//!   VMs, metrics, outgoing HTTP calls the test answers, and local responses. Fast and
//!   deterministic: for filter tests and benchmarks.
//! - [`envoy`]: real Envoy (from the project's `.venv`) with the real `.wasm` files, on free
//!   ports of 127.0.0.1, stopped on drop: the end-to-end tests in `tests/` use it.
#![forbid(unsafe_code)]

pub mod envoy;
pub mod host;

pub use envoy::{free_port, render, repo_root, start_canary, Envoy, EnvoyExit, Upstreams};
pub use host::{
    Action, Error, Headers, Host, HttpCall, HttpCallResponse, LocalResponse, LogEntry, LogLevel,
    MetricType, PluginSettings, Stream, Vm,
};
