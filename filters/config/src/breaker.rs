//! Configuration of the `breaker` filter: a circuit breaker per upstream cluster that
//! answers locally while open and signals every state change.
//!
//! ```json
//! {
//!   "windowMillis": 10000, "minRequests": 20, "failureRatio": 0.5,
//!   "consecutiveFailures": 5, "openMillis": 5000, "halfOpenProbes": 3,
//!   "failureOn": { "serverErrors": true, "gatewayErrors": true, "resets": true, "latencyMillis": 1000 },
//!   "signal": { "cluster": "maille_control", "path": "/v1/signals/breaker" }
//! }
//! ```
//!
//! Every field has a default: `{}` is a valid configuration.

use serde::{Deserialize, Serialize};

use crate::error::{check_header_name, parse_json, quoted, Validator};
use crate::ConfigError;

/// Response header set on requests answered locally while the circuit is open:
/// `open; cluster=<name>`.
pub const DEFAULT_CIRCUIT_HEADER: &str = "x-maille-circuit";
/// Request header the breaker reads the upstream cluster from when it is set (the canary
/// filter writes it); otherwise Envoy's `cluster_name` property.
pub const DEFAULT_CLUSTER_HEADER: &str = "x-maille-cluster";
/// Window length bounds, milliseconds.
pub const WINDOW_MILLIS: std::ops::RangeInclusive<u64> = 1_000..=600_000;
/// Open interval bounds, milliseconds.
pub const OPEN_MILLIS: std::ops::RangeInclusive<u64> = 100..=3_600_000;
/// Minimum-requests bounds.
pub const MIN_REQUESTS: std::ops::RangeInclusive<u32> = 1..=1_000_000;
/// Half-open probe bounds.
pub const HALF_OPEN_PROBES: std::ops::RangeInclusive<u32> = 1..=1_000;
/// Consecutive-failure bounds (0 turns that trigger off).
pub const CONSECUTIVE_FAILURES: std::ops::RangeInclusive<u32> = 0..=1_000_000;
/// Latency threshold bounds, milliseconds.
pub const LATENCY_MILLIS: std::ops::RangeInclusive<u64> = 1..=3_600_000;
/// Signal call timeout bounds, milliseconds.
pub const SIGNAL_TIMEOUT_MILLIS: std::ops::RangeInclusive<u64> = 10..=60_000;

/// The whole configuration of one breaker filter instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Length of the sliding window of outcomes, in ms (1,000 to 600,000). Default 10,000.
    pub window_millis: u64,
    /// Fewest requests in the window before the failure ratio can trip the circuit.
    /// Default 20.
    pub min_requests: u32,
    /// Trip when failures / requests in the window exceed this (0 < ratio <= 1). Default 0.5.
    pub failure_ratio: f64,
    /// Trip after this many failures in a row, whatever the window says; 0 turns this off.
    /// Default 5.
    pub consecutive_failures: u32,
    /// How long the circuit stays open before it lets probes through, in ms. Default 5,000.
    pub open_millis: u64,
    /// Probe requests let through while half-open; all must succeed to close the circuit,
    /// one failure opens it again. Default 3.
    pub half_open_probes: u32,
    /// Which outcomes count as failures.
    pub failure_on: FailureOn,
    /// Where to announce state changes, if anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
    /// Response header on local answers while open. Default `x-maille-circuit`.
    pub circuit_header: String,
    /// Request header holding the upstream cluster, when present. Default
    /// `x-maille-cluster` (set by the canary filter, placed before this one). The wasm
    /// build reads it first, then the route's cluster; the native build asks Envoy for the
    /// route's cluster first (behind the canary's `cluster_header` route, the canary's
    /// choice) and reads the header only when the route has none.
    pub cluster_header: String,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window_millis: 10_000,
            min_requests: 20,
            failure_ratio: 0.5,
            consecutive_failures: 5,
            open_millis: 5_000,
            half_open_probes: 3,
            failure_on: FailureOn::default(),
            signal: None,
            circuit_header: DEFAULT_CIRCUIT_HEADER.into(),
            cluster_header: DEFAULT_CLUSTER_HEADER.into(),
        }
    }
}

/// Which outcomes count as failures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FailureOn {
    /// Any 5xx status. Default true.
    pub server_errors: bool,
    /// 502, 503 and 504 (also counted by `serverErrors`). Default true.
    pub gateway_errors: bool,
    /// The upstream reset the stream or could not be reached (Envoy's response code details
    /// name an upstream reset or connection failure). Default true.
    pub resets: bool,
    /// Responses slower than this many ms (time to response headers). Default: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_millis: Option<u64>,
}

impl Default for FailureOn {
    fn default() -> Self {
        FailureOn {
            server_errors: true,
            gateway_errors: true,
            resets: true,
            latency_millis: None,
        }
    }
}

/// The control endpoint that hears of state changes: an HTTP POST through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Signal {
    /// The Envoy cluster of the control server.
    pub cluster: String,
    /// The path to POST to, such as `/v1/signals/breaker`.
    pub path: String,
    /// The `:authority` of the call. Default `maille-control`.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Call timeout in ms (10 to 60,000). Default 1,000. A slow or absent endpoint never
    /// delays traffic: calls are made from the plugin's root context, off the request path.
    #[serde(default = "default_signal_timeout")]
    pub timeout_millis: u64,
}

fn default_authority() -> String {
    "maille-control".into()
}

fn default_signal_timeout() -> u64 {
    1_000
}

impl BreakerConfig {
    /// Parses and validates a configuration. Errors name the field path.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let config: BreakerConfig = parse_json(bytes)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every limit; reports all problems found, each with its path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut v = Validator::default();
        range(&mut v, "windowMillis", self.window_millis, WINDOW_MILLIS);
        range(&mut v, "minRequests", self.min_requests, MIN_REQUESTS);
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            v.error(
                "failureRatio",
                format!("must be above 0 and at most 1, got {}", self.failure_ratio),
            );
        }
        range(
            &mut v,
            "consecutiveFailures",
            self.consecutive_failures,
            CONSECUTIVE_FAILURES,
        );
        range(&mut v, "openMillis", self.open_millis, OPEN_MILLIS);
        range(
            &mut v,
            "halfOpenProbes",
            self.half_open_probes,
            HALF_OPEN_PROBES,
        );
        if let Some(ms) = self.failure_on.latency_millis {
            range(&mut v, "failureOn.latencyMillis", ms, LATENCY_MILLIS);
        }
        let f = &self.failure_on;
        if !f.server_errors && !f.gateway_errors && !f.resets && f.latency_millis.is_none() {
            v.error(
                "failureOn",
                "counts nothing as a failure: the circuit could never open",
            );
        }
        if let Some(s) = &self.signal {
            if s.cluster.is_empty() || !s.cluster.bytes().all(|b| b.is_ascii_graphic()) {
                v.error("signal.cluster", "must be an Envoy cluster name");
            }
            if !s.path.starts_with('/') || !s.path.bytes().all(|b| b.is_ascii_graphic()) {
                v.error(
                    "signal.path",
                    format!("must start with '/', got {}", quoted(&s.path)),
                );
            }
            if s.authority.is_empty() || !s.authority.bytes().all(|b| b.is_ascii_graphic()) {
                v.error("signal.authority", "must be a host name");
            }
            range(
                &mut v,
                "signal.timeoutMillis",
                s.timeout_millis,
                SIGNAL_TIMEOUT_MILLIS,
            );
        }
        check_header_name(&mut v, "circuitHeader", &self.circuit_header);
        check_header_name(&mut v, "clusterHeader", &self.cluster_header);
        v.finish()
    }

    /// Serialises the configuration as the filter reads it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn range<T: PartialOrd + std::fmt::Display>(
    v: &mut Validator,
    path: &str,
    value: T,
    bounds: std::ops::RangeInclusive<T>,
) {
    if !bounds.contains(&value) {
        v.error(
            path,
            format!("must be {}..={}, got {value}", bounds.start(), bounds.end()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_is_the_defaults() {
        let c = BreakerConfig::from_json(b"{}").unwrap();
        assert_eq!(c, BreakerConfig::default());
        assert_eq!(BreakerConfig::from_json(c.to_json().as_bytes()).unwrap(), c);
    }

    #[test]
    fn full_config_round_trips() {
        let json = br#"{"windowMillis": 2000, "minRequests": 5, "failureRatio": 0.25,
            "consecutiveFailures": 0, "openMillis": 1000, "halfOpenProbes": 2,
            "failureOn": {"serverErrors": false, "gatewayErrors": true, "resets": false, "latencyMillis": 300},
            "signal": {"cluster": "control", "path": "/v1/signals/breaker"}}"#;
        let c = BreakerConfig::from_json(json).unwrap();
        assert_eq!(c.failure_on.latency_millis, Some(300));
        assert_eq!(c.signal.as_ref().unwrap().authority, "maille-control");
        assert_eq!(c.signal.as_ref().unwrap().timeout_millis, 1_000);
        assert_eq!(BreakerConfig::from_json(c.to_json().as_bytes()).unwrap(), c);
    }

    #[test]
    fn bad_values_are_refused_with_their_paths() {
        let err = BreakerConfig::from_json(
            br#"{"windowMillis": 10, "failureRatio": 1.5, "halfOpenProbes": 0,
                 "failureOn": {"latencyMillis": 0},
                 "signal": {"cluster": "", "path": "signals", "timeoutMillis": 1}}"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "windowMillis",
                "failureRatio",
                "halfOpenProbes",
                "failureOn.latencyMillis",
                "signal.cluster",
                "signal.path",
                "signal.timeoutMillis"
            ]
        );
        assert!(
            err.to_string()
                .contains("windowMillis: must be 1000..=600000, got 10"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_and_nothing_to_count_are_refused() {
        let err = BreakerConfig::from_json(br#"{"failureOn": {"timeouts": true}}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `timeouts`"),
            "{err}"
        );
        let err = BreakerConfig::from_json(
            br#"{"failureOn": {"serverErrors": false, "gatewayErrors": false, "resets": false}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("failureOn: counts nothing"),
            "{err}"
        );
    }
}
