//! Maille's control server: turns App Mesh-shaped specs (Mesh, VirtualNode, VirtualRouter,
//! Route, VirtualService) and Maille's Filter and Rollout resources into Envoy v3 resources
//! and serves them over ADS.
//!
//! Not built yet: this crate holds its place in the workspace. The filter configs it will
//! generate are the types of `maille-filter-config`, so it can only produce configs the
//! filters accept.
#![forbid(unsafe_code)]
