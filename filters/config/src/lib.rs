//! The configuration contract of Maille's proxy-wasm filters.
//!
//! Each filter reads its configuration as JSON (Envoy's `configuration` of the wasm plugin,
//! a `google.protobuf.StringValue`). The types here are that JSON: the filters parse and
//! validate it with [`canary::CanaryConfig::from_json`] or [`breaker::BreakerConfig::from_json`], and the control server builds the
//! same types and serialises them, so it can only produce configs the filters accept.
//!
//! Errors name the field path of the bad input (`rules[1].match.headers[0].match.regex`), so
//! an Envoy log line or a `maillectl` error points at what to fix.
//!
//! This crate does no request processing; the decisions are made in the filter crates.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod canary;
mod error;

pub use error::{ConfigError, FieldError};
