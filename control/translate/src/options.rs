//! Where one Envoy listens and finds its application, and App Mesh's defaults.

/// App Mesh's defaults, which Maille applies where a spec is silent.
pub mod defaults {
    /// Envoy port of the ingress listener (the first; the next listeners take the next ports).
    pub const INGRESS_PORT: u16 = 15000;
    /// Envoy port of the egress listener.
    pub const EGRESS_PORT: u16 = 15001;
    /// Whole-request timeout of HTTP routes and listeners, ms (App Mesh: 15 s).
    pub const PER_REQUEST_TIMEOUT_MS: u64 = 15_000;
    /// Stream idle timeout, ms (App Mesh: 300 s).
    pub const IDLE_TIMEOUT_MS: u64 = 300_000;
    /// Connect timeout towards other nodes, ms.
    pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
    /// The retry policy App Mesh applied to routes without one: 2 retries, 15 s per try, on
    /// gateway errors and connection failures.
    pub const RETRY_ON: &str = "gateway-error,reset,connect-failure";
    /// See [`RETRY_ON`].
    pub const MAX_RETRIES: u32 = 2;
    /// See [`RETRY_ON`].
    pub const PER_RETRY_TIMEOUT_MS: u64 = 15_000;
    /// The sum every sticky split's weights are scaled to: with a constant total, Envoy maps a
    /// user's hash to the same point of the range whatever the weights, so a weight change
    /// only moves the users between the targets' old and new boundaries.
    pub const STICKY_TOTAL_WEIGHT: u32 = 10_000;
    /// Request header the canary filter writes the chosen cluster into.
    pub const CLUSTER_HEADER: &str = maille_filter_config::canary::DEFAULT_CLUSTER_HEADER;
    /// Request header that carries the chosen variant (the target virtual node's name).
    pub const VARIANT_HEADER: &str = maille_filter_config::canary::DEFAULT_VARIANT_HEADER;
}

/// Where one Envoy listens and finds its application; from the node's metadata (see
/// [`NodeOptions::from_metadata`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeOptions {
    /// Envoy port of the first ingress listener.
    pub ingress_port: u16,
    /// Envoy port of the egress listener.
    pub egress_port: u16,
    /// Address Envoy's listeners bind.
    pub listen_address: String,
    /// Address of the local application.
    pub app_address: String,
    /// Port of the node's collector sidecar (OTLP gRPC on 127.0.0.1): when set, every HTTP
    /// listener traces to it with Envoy's OpenTelemetry tracer (cluster `maille_collector`
    /// of the bootstrap), the variant header as a span tag.
    pub otlp_port: Option<u16>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            ingress_port: defaults::INGRESS_PORT,
            egress_port: defaults::EGRESS_PORT,
            listen_address: "0.0.0.0".into(),
            app_address: "127.0.0.1".into(),
            otlp_port: None,
        }
    }
}

impl NodeOptions {
    /// Reads `maille.ingress_port`, `maille.egress_port`, `maille.listen_address` and
    /// `maille.app_address` from Envoy's node metadata (set by `maillectl bootstrap`).
    pub fn from_metadata(md: Option<&envoy_types::pb::google::protobuf::Struct>) -> NodeOptions {
        use envoy_types::pb::google::protobuf::value::Kind as V;
        let mut o = NodeOptions::default();
        let Some(md) = md else { return o };
        let get = |k: &str| md.fields.get(k).and_then(|v| v.kind.clone());
        let port = |k: &str| match get(k) {
            Some(V::NumberValue(n)) if (1.0..=65535.0).contains(&n) => Some(n as u16),
            Some(V::StringValue(s)) => s.parse().ok(),
            _ => None,
        };
        let text = |k: &str| match get(k) {
            Some(V::StringValue(s)) if !s.is_empty() => Some(s),
            _ => None,
        };
        if let Some(p) = port("maille.ingress_port") {
            o.ingress_port = p;
        }
        if let Some(p) = port("maille.egress_port") {
            o.egress_port = p;
        }
        if let Some(a) = text("maille.listen_address") {
            o.listen_address = a;
        }
        if let Some(a) = text("maille.app_address") {
            o.app_address = a;
        }
        o.otlp_port = port("maille.otlp_port");
        o
    }
}
