//! Names of the Envoy resources generated for each mesh resource: the one place that says how
//! a listener, route, cluster or filter seen in Envoy's logs and `/stats` maps back to the
//! spec. Each Envoy serves one virtual node or virtual gateway; its node id says which.

/// Envoy node id of a virtual node's proxy, as App Mesh wrote it.
pub fn node_id(mesh: &str, virtual_node: &str) -> String {
    format!("mesh/{mesh}/virtualNode/{virtual_node}")
}

/// Envoy node id of a virtual gateway's proxy, as App Mesh wrote it.
pub fn gateway_node_id(mesh: &str, virtual_gateway: &str) -> String {
    format!("mesh/{mesh}/virtualGateway/{virtual_gateway}")
}

/// What the control server calls the proxy of virtual gateway `name` wherever it takes a
/// proxy's name beside a node's: `virtualGateway/<name>` (a node's name has no `/`).
pub fn gateway_proxy(name: &str) -> String {
    format!("{GATEWAY_PROXY_PREFIX}{name}")
}

/// See [`gateway_proxy`].
pub const GATEWAY_PROXY_PREFIX: &str = "virtualGateway/";

/// The gateway's name if `proxy` is a [`gateway_proxy`].
pub fn as_gateway(proxy: &str) -> Option<&str> {
    proxy.strip_prefix(GATEWAY_PROXY_PREFIX)
}

/// Parses [`node_id`] and [`gateway_node_id`]: `(mesh, proxy)`, where the proxy is the
/// node's name or the gateway's [`gateway_proxy`].
pub fn parse_node_id(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("mesh/")?;
    let (mesh, proxy) = match rest.split_once("/virtualNode/") {
        Some((mesh, node)) => (mesh, node),
        None => {
            let (mesh, _) = rest.split_once("/virtualGateway/")?;
            (mesh, &rest[mesh.len() + 1..])
        }
    };
    // A node's name has no `/`; a gateway's proxy is exactly `virtualGateway/<name>`.
    let name = match as_gateway(proxy) {
        Some(gw) if rest[mesh.len()..].starts_with("/virtualGateway/") => gw,
        Some(_) => return None,
        None => proxy,
    };
    (!mesh.is_empty() && !mesh.contains('/') && !name.is_empty() && !name.contains('/'))
        .then_some((mesh, proxy))
}

/// The trust domain of the SPIFFE IDs Maille's certificate authority issues.
pub const TRUST_DOMAIN: &str = "maille";

/// The SPIFFE ID in the certificate of the proxy `proxy` of `mesh` (a node's name or a
/// [`gateway_proxy`]): `spiffe://maille/` and its node id, such as
/// `spiffe://maille/mesh/colorapp/virtualNode/white`.
pub fn spiffe_id(mesh: &str, proxy: &str) -> String {
    match as_gateway(proxy) {
        Some(gw) => format!("spiffe://{TRUST_DOMAIN}/{}", gateway_node_id(mesh, gw)),
        None => format!("spiffe://{TRUST_DOMAIN}/{}", node_id(mesh, proxy)),
    }
}

/// The SPIFFE ID in the control server's own certificate (ADS over TLS).
pub const CONTROL_SPIFFE_ID: &str = "spiffe://maille/control";

/// The SDS secret holding a proxy's certificate and key, served on its ADS stream.
pub const IDENTITY_SECRET: &str = "maille/identity";

/// The SDS secret holding the mesh's trust bundle (the certificate authority's).
pub const TRUST_SECRET: &str = "maille/trust";

/// A gateway's listener on `port`; also its route configuration.
pub fn gateway_listener(port: u32) -> String {
    format!("gateway/{port}")
}

/// The cluster from a gateway's listeners to its own egress listener.
pub const GATEWAY_EGRESS: &str = "gateway-egress";

/// Envoy route of a gateway route.
pub fn gateway_route(gateway: &str, route: &str) -> String {
    format!("gatewayRoute/{gateway}/{route}")
}

/// Inbound listener for the node's listener on application port `port`; also the name of its
/// route configuration.
pub fn ingress(port: u32) -> String {
    format!("ingress/{port}")
}

/// Cluster of the local application behind the ingress listener on `port`.
pub fn local_cluster(port: u32) -> String {
    format!("local/{port}")
}

/// The outbound listener, and its route configuration: one virtual host per backend.
pub const EGRESS: &str = "egress";

/// Outbound TCP listener of a backend virtual service served over TCP; it listens on the
/// service's router (or provider node) port.
pub fn egress_tcp(virtual_service: &str) -> String {
    format!("egress-tcp/{virtual_service}")
}

/// Virtual host of a backend virtual service in the egress route configuration.
pub fn service_host(virtual_service: &str) -> String {
    format!("vs/{virtual_service}")
}

/// Envoy route for an App Mesh route.
pub fn route(router: &str, route: &str) -> String {
    format!("route/{router}/{route}")
}

/// Cluster that reaches virtual node `node` on its listener port `port`.
pub fn node_cluster(node: &str, port: u32) -> String {
    format!("node/{node}/{port}")
}

/// ECDS name of the canary filter instance of one route (weighted targets, sticky split and
/// the variant marker).
pub fn canary_filter(router: &str, route: &str) -> String {
    format!("filter/canary/{router}/{route}")
}

/// ECDS name of a Maille `Filter` resource.
pub fn filter(name: &str) -> String {
    format!("filter/{name}")
}

/// An ECDS filter name with its module's version: `<name>@<first 12 hex of sha256>`. A new
/// module build therefore arrives as a new filter (a listener update), which makes Envoy
/// fetch it: Envoy 1.40 does not fetch remote code again when an existing ECDS resource's
/// module changes.
pub fn versioned(name: &str, sha256: &str) -> String {
    format!("{name}@{}", &sha256[..sha256.len().min(12)])
}

/// Static cluster (in the bootstrap) of the control server's gRPC xDS port.
pub const XDS_CLUSTER: &str = "maille_xds";
/// Static cluster (in the bootstrap) of the control server's HTTP port: wasm modules and the
/// breaker's signal endpoint.
pub const CONTROL_CLUSTER: &str = "maille_control";
/// Static cluster (in the bootstrap, with `--otlp-port`) of the node's collector sidecar.
pub const COLLECTOR_CLUSTER: &str = "maille_collector";
/// Path of the breaker's signal endpoint on the control server.
pub const SIGNAL_PATH: &str = "/v1/signals/breaker";

/// Prefix of the stats Envoys send the control server (`maille.cluster.upstream_rq_total`).
pub const CONTROL_STATS_PREFIX: &str = "maille";
