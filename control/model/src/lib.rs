//! Maille's model of a mesh: App Mesh's resources (Mesh, VirtualNode, VirtualRouter, Route,
//! VirtualService) in the shape and with the field names of the App Mesh API, plus Maille's
//! own kinds (`Filter`), and their validation against App Mesh's ranges and the references
//! between them. Every error names the resource and the field path.
//!
//! It reads no file format (that is `maille-import`) and knows nothing of Envoy (that is
//! `maille-translate`): the server, the translation and `maillectl` all speak these types.
#![forbid(unsafe_code)]

pub mod coverage;
mod rollout;
mod spec;
mod validate;

pub use rollout::*;
pub use spec::*;
pub use validate::{
    check_all, check_changes, check_resource, limits, valid_name, SpecError, SpecErrors,
};
