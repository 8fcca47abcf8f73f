//! Maille's model to the Envoy v3 resources of each proxy: native Envoy wherever Envoy can do
//! the job, one of Maille's filters only where it adds function.
//!
//! A virtual gateway's Envoy (node id `mesh/<mesh>/virtualGateway/<name>`) has a listener
//! per gateway listener with the gateway routes, in front of an egress listener like a
//! node's (see `gateway.rs`).
//!
//! Each other Envoy serves one virtual node (node id `mesh/<mesh>/virtualNode/<name>`):
//! - one ingress listener per node listener, in front of the local application;
//! - one egress listener whose route configuration has a virtual host per backend virtual
//!   service, with the service's router's routes in App Mesh order;
//! - a cluster per reachable target node (DNS, or endpoints served over EDS: fixed ones, or
//!   the node's AWS Cloud Map instances as the server last discovered them);
//! - a canary filter instance (ECDS) per route with two or more weighted targets, enabled
//!   only on that route: it makes the weighted choice (sticky when configured), writes the
//!   cluster header the route reads and the variant marker;
//! - the node's Maille `Filter`s (ECDS), in the outbound path.
//!
//! Every translation records what it read ([`Dep`]), so the server re-translates only the
//! nodes a change can affect. The names of what Envoy gets are in [`names`], App Mesh's
//! defaults in [`defaults`], the bootstrap that points an Envoy at the server in
//! [`bootstrap`]. Serving is the server's job, not this crate's.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod bootstrap;
mod cluster;
mod filters;
mod gateway;
pub mod names;
mod node;
mod options;
mod proto;
mod route;
mod tls;
mod world;

pub use node::{node_config, NodeConfig};
pub use options::{defaults, NodeOptions};
pub use world::{
    callers, cloud_map_queries, is_module_file, modules_in, Callers, CloudMap, CloudMapInstance,
    CloudMapQuery, Dep, Module, World, NO_CALLERS, NO_CLOUD_MAP,
};
