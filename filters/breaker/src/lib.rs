//! Maille's `breaker` proxy-wasm filter: a circuit breaker per upstream cluster.
//!
//! Outcomes (status, upstream resets, latency) go into a sliding window kept in proxy-wasm
//! shared data, one record per cluster, updated with compare-and-swap so that all of
//! Envoy's workers see one circuit and lose no update. The circuit trips on a failure
//! ratio (with a minimum of requests) or on consecutive failures; while open, requests are
//! answered locally with 503, `retry-after` and a header naming the cluster; after the open
//! interval a bounded number of probes decide whether it closes or opens again.
//!
//! Every state change is signalled: metrics (a per-cluster state gauge; counters of
//! requests, failures, rejections, trips), a log line, and an HTTP POST to a configured
//! control endpoint, sent from the plugin's root context so that a slow or absent endpoint
//! never touches a request.
//!
//! The configuration is [`maille_filter_config::breaker::BreakerConfig`]. The state machine
//! in [`Circuit`] is plain Rust, tested natively. It runs in Envoy two ways: the proxy-wasm
//! glue (`filter`, wasm32; records in proxy-wasm shared data) and the Envoy dynamic-module
//! glue ([`native`], the host; records in process memory, [`store`]), whose hooks
//! `libmaille_breaker.so` exports with the `dynamic-module` feature.
#![forbid(unsafe_code)]

mod circuit;

#[cfg(target_arch = "wasm32")]
mod filter;

#[cfg(not(target_arch = "wasm32"))]
pub mod native;
#[cfg(not(target_arch = "wasm32"))]
pub mod store;

#[cfg(all(feature = "dynamic-module", not(target_arch = "wasm32")))]
maille_dynamic_module::export_http_filter!(native::BreakerModule);

pub use circuit::{
    Admission, Bucket, Circuit, Outcome, Record, State, Transition, BUCKETS, RECORD_LEN,
};

/// The JSON body of a state-change signal. `generation` counts the cluster's state changes
/// (shared by all workers): a receiver orders signals by it.
pub fn signal_body(cluster: &str, t: &Transition) -> String {
    format!(
        r#"{{"cluster":{},"from":"{}","to":"{}","generation":{},"failureRatio":{:.4},"requests":{},"failures":{},"consecutiveFailures":{},"atMillis":{}}}"#,
        serde_json::to_string(cluster).unwrap_or_default(),
        t.from.as_str(),
        t.to.as_str(),
        t.generation,
        t.failure_ratio(),
        t.requests,
        t.failures,
        t.consecutive,
        t.at_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_body_is_json_with_every_field() {
        let t = Transition {
            from: State::Closed,
            to: State::Open,
            at_ms: 1_767_225_600_000,
            requests: 40,
            failures: 25,
            consecutive: 3,
            generation: 5,
        };
        let body = signal_body("svc \"blue\"", &t);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["cluster"], "svc \"blue\"");
        assert_eq!(v["from"], "closed");
        assert_eq!(v["to"], "open");
        assert_eq!(v["generation"], 5);
        assert_eq!(v["failureRatio"], 0.625);
        assert_eq!(v["requests"], 40);
        assert_eq!(v["failures"], 25);
        assert_eq!(v["consecutiveFailures"], 3);
        assert_eq!(v["atMillis"], 1_767_225_600_000u64);
    }
}
