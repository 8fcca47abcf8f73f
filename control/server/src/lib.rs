//! Maille's control server: keeps the mesh (App Mesh resources and Maille's own, validated,
//! persisted), and serves every Envoy its resources over ADS (state of the world, ACK/NACK
//! tracked per type; a refused version never replaces the last good one), the admin API
//! `maillectl` speaks, the filter modules, and the breaker filters' signal endpoint.
//!
//! Translation to Envoy is `maille-translate`'s job and the model's checks are
//! `maille-model`'s; this crate decides when to translate (only the nodes a change affects)
//! and what to send to whom. It reads no YAML, HCL or AWS API: clients send resources in the
//! model's JSON form.
#![forbid(unsafe_code)]

pub mod admin;
pub mod analysis;
pub mod appmesh_api;
pub mod auth;
pub mod ca;
pub mod clients;
mod cloud_map;
#[cfg(feature = "cloudwatch")]
pub mod cloudwatch;
pub mod console;
pub mod etcd_store;
pub mod https;
pub mod mesh;
pub mod metrics;
pub mod modules;
pub mod rollouts;
pub mod server;
pub mod signals;
pub mod sigv4;
pub mod store;
pub mod xds;

pub use mesh::{ApplyError, Mesh, Snapshot};
pub use server::{start, Running, ServerConfig, ServerError};
