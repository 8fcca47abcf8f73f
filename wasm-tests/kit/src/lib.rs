//! Maille's end-to-end test kit: real Envoy 1.40 (from the project's `.venv`) started from
//! a configuration or a template, helper upstreams and a recording HTTP server, free ports on
//! 127.0.0.1, moto (a local AWS API endpoint), and bounded waits. Every process it starts is stopped on drop.
//!
//! It runs real parts only; the fast, in-process way to test a filter module is the proxy-wasm
//! host of `maille-wasm-host`.
#![forbid(unsafe_code)]

mod envoy;
mod etcd;
mod moto;

pub use envoy::*;
pub use etcd::{etcd_bin, Etcd, Member};
pub use moto::Moto;
