//! Maille's `canary` proxy-wasm filter: picks the upstream of each request.
//!
//! Rules are tried in order (conditions on headers, cookies, query parameters, path prefix
//! and method, as in App Mesh); the first that holds names the target. Otherwise the request
//! is split by weight: sticky when the configured key (a header or cookie such as a user id)
//! is present, random when not. The filter then writes the target's Envoy cluster into a
//! request header that the route reads with `cluster_header`, and the target's name (the
//! variant, `stable` / `canary`) into a second header for traces and metrics.
//!
//! The configuration is [`maille_filter_config::canary::CanaryConfig`]. The decision logic in
//! [`Router`] is plain Rust, tested and benchmarked natively. It runs in Envoy two ways: the
//! proxy-wasm glue (`filter`, compiled for wasm32) and the Envoy dynamic-module glue
//! ([`native`], compiled for the host; its hooks are exported from `libmaille_canary.so` with
//! the `dynamic-module` feature).
#![forbid(unsafe_code)]

mod router;

#[cfg(target_arch = "wasm32")]
mod filter;

#[cfg(not(target_arch = "wasm32"))]
pub mod native;

pub use router::{Decision, Reason, Request, Router, RouterTarget};

#[cfg(all(feature = "dynamic-module", not(target_arch = "wasm32")))]
maille_dynamic_module::export_http_filter!(native::CanaryModule);
#[cfg(all(feature = "dynamic-module", not(target_arch = "wasm32")))]
maille_dynamic_module::export_cluster_specifier!(native::CanarySpecifier);
