//! Maille's collector: a sidecar that receives OpenTelemetry traces and metrics from Envoy
//! (OTLP over gRPC and HTTP) and exports traces to AWS X-Ray and metrics to CloudWatch.
//!
//! Not built yet: this crate holds its place in the workspace.
#![forbid(unsafe_code)]
