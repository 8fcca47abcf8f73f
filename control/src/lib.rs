//! Maille's control server: takes App Mesh-shaped specs (Mesh, VirtualNode, VirtualRouter,
//! Route, VirtualService) and Maille's Filter, as App Mesh API JSON, CloudFormation or
//! Terraform, validates them with errors that name the field path, turns them into Envoy v3
//! resources plus Maille's wasm filters, and serves them to every Envoy over ADS.
//!
//! It does not run the data path: Envoy does, with the filters of `filters/`. The canary
//! filter configs it writes are the types of `maille-filter-config`, so it can only produce
//! configs the filter accepts.
#![forbid(unsafe_code)]

pub mod admin;
pub mod bootstrap;
pub mod import;
pub mod names;
pub mod server;
pub mod spec;
pub mod state;
pub mod store;
pub mod traces;
pub mod translate;
pub mod validate;
pub mod xds;
pub mod xray_api;
