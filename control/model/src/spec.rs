//! Mesh resources in the shape and with the field names of the App Mesh API
//! (`CreateVirtualNode` and friends), plus Maille's own `Filter`.
//!
//! A resource document is what `aws appmesh describe-*` prints (`{"virtualNode": {...}}`) or
//! the body of a `create-*` call with a kind added; `maille-import` reads both, and
//! CloudFormation and Terraform, into these types.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The kinds of resource, in the order they must exist (a route needs its router, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A service mesh: the boundary of names.
    Mesh,
    /// A logical service instance group, with its listeners and backends.
    VirtualNode,
    /// Routes traffic for a virtual service between virtual nodes.
    VirtualRouter,
    /// One route of a virtual router.
    Route,
    /// The name clients call; provided by a node or a router.
    VirtualService,
    /// An ingress Envoy at the edge of the mesh: clients outside call its listeners.
    VirtualGateway,
    /// One route of a virtual gateway: which requests go to which virtual service.
    GatewayRoute,
    /// Maille: a wasm filter with its config, attached to virtual nodes.
    Filter,
    /// Maille: a progressive delivery of a route from a stable node to a canary.
    Rollout,
}

impl Kind {
    /// All kinds, in dependency order.
    pub const ALL: [Kind; 9] = [
        Kind::Mesh,
        Kind::VirtualNode,
        Kind::VirtualRouter,
        Kind::Route,
        Kind::VirtualService,
        Kind::VirtualGateway,
        Kind::GatewayRoute,
        Kind::Filter,
        Kind::Rollout,
    ];

    /// The App Mesh name of the kind, as in `describe-virtual-node` output keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Mesh => "mesh",
            Kind::VirtualNode => "virtualNode",
            Kind::VirtualRouter => "virtualRouter",
            Kind::Route => "route",
            Kind::VirtualService => "virtualService",
            Kind::VirtualGateway => "virtualGateway",
            Kind::GatewayRoute => "gatewayRoute",
            Kind::Filter => "filter",
            Kind::Rollout => "rollout",
        }
    }

    /// The field naming a resource of this kind in App Mesh's JSON (`virtualNodeName`), and
    /// for a route or a gateway route the field naming its router or gateway.
    pub fn name_fields(self) -> (&'static str, Option<&'static str>) {
        match self {
            Kind::Mesh => ("meshName", None),
            Kind::VirtualNode => ("virtualNodeName", None),
            Kind::VirtualRouter => ("virtualRouterName", None),
            Kind::Route => ("routeName", Some("virtualRouterName")),
            Kind::VirtualService => ("virtualServiceName", None),
            Kind::VirtualGateway => ("virtualGatewayName", None),
            Kind::GatewayRoute => ("gatewayRouteName", Some("virtualGatewayName")),
            Kind::Filter => ("filterName", None),
            Kind::Rollout => ("rolloutName", None),
        }
    }

    /// Parses [`Kind::as_str`] names and the CLI's kebab-case ones (`virtual-node`).
    pub fn parse(s: &str) -> Option<Kind> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        let norm = norm.strip_suffix('s').unwrap_or(&norm);
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().to_ascii_lowercase() == norm)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies a resource: kind, mesh, name (for a route, `router/route`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    /// The kind.
    pub kind: Kind,
    /// The mesh it belongs to (for a mesh, its own name).
    pub mesh: String,
    /// Its name; a route's is `<virtualRouterName>/<routeName>`, a gateway route's
    /// `<virtualGatewayName>/<gatewayRouteName>`.
    pub name: String,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == Kind::Mesh {
            write!(f, "mesh/{}", self.mesh)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.mesh, self.name)
        }
    }
}

/// A set of resources by key, as the server holds it: shared, so that a new version of the
/// mesh copies pointers, not resources.
pub type Resources = BTreeMap<Key, Arc<Resource>>;

/// `resources` by key (a later one replaces an earlier one with the same key).
pub fn resources(resources: impl IntoIterator<Item = Resource>) -> Resources {
    resources
        .into_iter()
        .map(|r| (r.key(), Arc::new(r)))
        .collect()
}

/// One mesh resource.
#[allow(clippy::large_enum_variant)] // Resources are few and long-lived; boxing buys nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Resource {
    /// `AWS::AppMesh::Mesh`
    Mesh(Mesh),
    /// `AWS::AppMesh::VirtualNode`
    VirtualNode(VirtualNode),
    /// `AWS::AppMesh::VirtualRouter`
    VirtualRouter(VirtualRouter),
    /// `AWS::AppMesh::Route`
    Route(Route),
    /// `AWS::AppMesh::VirtualService`
    VirtualService(VirtualService),
    /// `AWS::AppMesh::VirtualGateway`
    VirtualGateway(VirtualGateway),
    /// `AWS::AppMesh::GatewayRoute`
    GatewayRoute(GatewayRoute),
    /// Maille's wasm filter attachment.
    Filter(Filter),
    /// Maille's progressive delivery.
    Rollout(crate::rollout::Rollout),
}

impl Resource {
    /// Its key.
    pub fn key(&self) -> Key {
        let (kind, mesh, name) = match self {
            Resource::Mesh(m) => (Kind::Mesh, &m.mesh_name, m.mesh_name.clone()),
            Resource::VirtualNode(r) => {
                (Kind::VirtualNode, &r.mesh_name, r.virtual_node_name.clone())
            }
            Resource::VirtualRouter(r) => (
                Kind::VirtualRouter,
                &r.mesh_name,
                r.virtual_router_name.clone(),
            ),
            Resource::Route(r) => (
                Kind::Route,
                &r.mesh_name,
                format!("{}/{}", r.virtual_router_name, r.route_name),
            ),
            Resource::VirtualService(r) => (
                Kind::VirtualService,
                &r.mesh_name,
                r.virtual_service_name.clone(),
            ),
            Resource::VirtualGateway(r) => (
                Kind::VirtualGateway,
                &r.mesh_name,
                r.virtual_gateway_name.clone(),
            ),
            Resource::GatewayRoute(r) => (
                Kind::GatewayRoute,
                &r.mesh_name,
                format!("{}/{}", r.virtual_gateway_name, r.gateway_route_name),
            ),
            Resource::Filter(r) => (Kind::Filter, &r.mesh_name, r.filter_name.clone()),
            Resource::Rollout(r) => (Kind::Rollout, &r.mesh_name, r.rollout_name.clone()),
        };
        Key {
            kind,
            mesh: mesh.clone(),
            name,
        }
    }
}

// === Mesh ===

/// A mesh (`CreateMesh`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mesh {
    /// Name of the mesh, 1 to 255 letters, digits, `-` or `_`.
    pub mesh_name: String,
    /// The mesh's settings.
    #[serde(default)]
    pub spec: MeshSpec,
    /// Maille's settings of the mesh, beyond App Mesh's (from the `maille:` tags of any
    /// format, or this field in Maille's JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maille: Option<MeshOptions>,
}

/// Maille's settings of a mesh: encryption and authorization between its proxies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshOptions {
    /// Mutual TLS between the mesh's proxies, with certificates from Maille's certificate
    /// authority (tag `maille:mtls`): `STRICT` (the default: a node's listeners take only
    /// TLS from a proxy of the mesh), `PERMISSIVE` (TLS and plaintext, for a migration) or
    /// `DISABLED`. A listener's own App Mesh `tls` takes precedence over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<String>,
    /// Which proxies a node takes calls from, under `STRICT` (tag `maille:authorization`):
    /// `BACKENDS` (the default: only the nodes and gateways that declare one of its virtual
    /// services as a backend or route target) or `NONE` (any proxy of the mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<String>,
}

/// Mesh-wide mutual TLS, as set by [`MeshOptions::mtls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    /// TLS with a mesh certificate required on every node listener.
    Strict,
    /// TLS and plaintext accepted; proxies send TLS.
    Permissive,
    /// Plaintext.
    Disabled,
}

impl MtlsMode {
    /// The mode a `maille.mtls` value names (`STRICT`, `PERMISSIVE`, `DISABLED`).
    pub fn parse(s: &str) -> Option<MtlsMode> {
        match s {
            "STRICT" => Some(MtlsMode::Strict),
            "PERMISSIVE" => Some(MtlsMode::Permissive),
            "DISABLED" => Some(MtlsMode::Disabled),
            _ => None,
        }
    }
}

impl Mesh {
    /// The mesh's mutual TLS mode (`STRICT` unless set otherwise).
    pub fn mtls(&self) -> MtlsMode {
        self.maille
            .as_ref()
            .and_then(|m| m.mtls.as_deref())
            .and_then(MtlsMode::parse)
            .unwrap_or(MtlsMode::Strict)
    }

    /// Whether a node takes calls only from the proxies that declare it as a backend
    /// (under `STRICT`; the default).
    pub fn authorizes_backends(&self) -> bool {
        self.mtls() == MtlsMode::Strict
            && self
                .maille
                .as_ref()
                .and_then(|m| m.authorization.as_deref())
                != Some("NONE")
    }
}

/// `MeshSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSpec {
    /// Whether traffic to destinations outside the mesh is allowed (`ALLOW_ALL`) or not
    /// (`DROP_ALL`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_filter: Option<EgressFilter>,
    /// Mesh-wide service discovery preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_discovery: Option<MeshServiceDiscovery>,
}

/// `EgressFilter`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressFilter {
    /// `ALLOW_ALL` or `DROP_ALL`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// `MeshServiceDiscovery`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshServiceDiscovery {
    /// `IPv4_PREFERRED`, `IPv6_PREFERRED`, `IPv4_ONLY` or `IPv6_ONLY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_preference: Option<String>,
}

// === VirtualNode ===

/// A virtual node (`CreateVirtualNode`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualNode {
    /// The mesh.
    pub mesh_name: String,
    /// Its name; its Envoy's node id is `mesh/<meshName>/virtualNode/<virtualNodeName>`.
    pub virtual_node_name: String,
    /// Its settings.
    pub spec: VirtualNodeSpec,
    /// The Kubernetes object it was read from (`appmesh.k8s.aws` manifests): kept for tools
    /// that map pods to nodes, unused by the translation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesSource>,
    /// Maille's settings of the node (from the `maille:` tags of any format, or this field
    /// in Maille's JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maille: Option<VirtualNodeOptions>,
}

/// Maille's settings of a virtual node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualNodeOptions {
    /// The node's own mutual TLS, instead of its mesh's (tag `maille:mtls` on the node):
    /// `PERMISSIVE` for a node that clients outside the mesh call too (behind a load
    /// balancer), `DISABLED` for one with no Maille proxy (called in plaintext), `STRICT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<String>,
}

impl VirtualNode {
    /// The node's mutual TLS: its own setting, else its mesh's (`mesh`, when there is one),
    /// else `STRICT`.
    pub fn mtls(&self, mesh: Option<&Mesh>) -> MtlsMode {
        self.maille
            .as_ref()
            .and_then(|m| m.mtls.as_deref())
            .and_then(MtlsMode::parse)
            .unwrap_or_else(|| mesh.map_or(MtlsMode::Strict, Mesh::mtls))
    }
}

/// A virtual node's Kubernetes `VirtualNode` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesSource {
    /// Its namespace.
    pub namespace: String,
    /// Its name there (the virtual node's name is its `awsName`, by default
    /// `<name>_<namespace>`).
    pub name: String,
    /// `spec.podSelector`: the pods whose Envoys are this node, as a Kubernetes label
    /// selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<serde_json::Value>,
}

/// `VirtualNodeSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualNodeSpec {
    /// Inbound listeners; App Mesh allows one per node in most regions, Maille up to 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    /// Virtual services this node calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    /// Client policy applied to every backend unless the backend sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_defaults: Option<BackendDefaults>,
    /// How other nodes reach this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_discovery: Option<ServiceDiscovery>,
    /// Access logging of this node's Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
}

/// `Listener` of a virtual node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// The application's port and protocol.
    pub port_mapping: PortMapping,
    /// Active health checking of the local application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive ejection of bad hosts of this node, applied by its clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Limits on connections and requests to the local application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// Timeouts of requests to the local application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<ListenerTimeout>,
    /// TLS termination of inbound traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

/// `ListenerTls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// `STRICT` (TLS only), `PERMISSIVE` (TLS and plaintext) or `DISABLED`.
    pub mode: String,
    /// The listener's certificate.
    pub certificate: TlsCertificate,
    /// When given, clients must present a certificate that this validates (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<TlsValidation>,
}

/// `ListenerTlsCertificate` / `ClientTlsCertificate`: one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    /// PEM files on the proxy's file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<TlsFileCertificate>,
    /// A secret from an SDS agent (SPIRE in App Mesh): Maille's CA serves the proxy's own
    /// certificate instead (the secret name is not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sds: Option<serde_json::Value>,
    /// An AWS Certificate Manager certificate: Maille's CA serves the proxy's own
    /// certificate instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acm: Option<serde_json::Value>,
}

/// `ListenerTlsFileCertificate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFileCertificate {
    /// Path of the PEM certificate chain.
    pub certificate_chain: String,
    /// Path of the PEM private key.
    pub private_key: String,
}

/// `TlsValidationContext`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsValidation {
    /// The certificate authorities trusted.
    pub trust: TlsTrust,
    /// Names the peer's certificate must carry (DNS subject alternative names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_alternative_names: Option<SubjectAlternativeNames>,
}

/// `TlsValidationContextTrust`: one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsTrust {
    /// A PEM bundle of CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<TlsTrustFile>,
    /// An SDS secret: Maille's CA serves the mesh's trust bundle instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sds: Option<serde_json::Value>,
    /// ACM Private CA: Maille's CA serves the mesh's trust bundle instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acm: Option<serde_json::Value>,
}

/// `TlsValidationContextFileTrust`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsTrustFile {
    /// Path of the PEM bundle.
    pub certificate_chain: String,
}

/// `SubjectAlternativeNames`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubjectAlternativeNames {
    /// The names.
    #[serde(rename = "match")]
    pub matches: SanMatch,
}

/// `SubjectAlternativeNameMatchers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SanMatch {
    /// Any of these exact names.
    pub exact: Vec<String>,
}

/// `ClientPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientPolicy {
    /// TLS towards the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientPolicyTls>,
}

/// `ClientPolicyTls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientPolicyTls {
    /// Whether TLS is required (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce: Option<bool>,
    /// Only towards these target ports; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u32>,
    /// A client certificate, for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<TlsCertificate>,
    /// How the backend's certificate is checked.
    pub validation: TlsValidation,
}

/// `PortMapping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    /// Port, 1 to 65535.
    pub port: u32,
    /// `http`, `http2`, `grpc` or `tcp`.
    pub protocol: String,
}

/// `HealthCheckPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// Consecutive successes before a host is healthy, 2 to 10.
    pub healthy_threshold: u32,
    /// Time between checks, 5000 to 300000 ms.
    pub interval_millis: u64,
    /// Path for `http` and `http2` checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Port to check; the listener's by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// `http`, `http2`, `grpc` or `tcp`.
    pub protocol: String,
    /// Time to wait for an answer, 2000 to 60000 ms.
    pub timeout_millis: u64,
    /// Consecutive failures before a host is unhealthy, 2 to 10.
    pub unhealthy_threshold: u32,
}

/// `Duration` as App Mesh writes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AmDuration {
    /// `ms` or `s`.
    pub unit: DurationUnit,
    /// Amount, at least 0.
    pub value: u64,
}

/// Unit of an [`AmDuration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DurationUnit {
    /// Milliseconds.
    #[serde(rename = "ms")]
    Ms,
    /// Seconds.
    #[serde(rename = "s")]
    S,
}

impl AmDuration {
    /// In milliseconds.
    pub fn millis(&self) -> u64 {
        match self.unit {
            DurationUnit::Ms => self.value,
            DurationUnit::S => self.value.saturating_mul(1000),
        }
    }
}

/// `OutlierDetection`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Base time a host stays ejected (multiplied by the times it was ejected).
    pub base_ejection_duration: AmDuration,
    /// Time between ejection sweeps.
    pub interval: AmDuration,
    /// Largest share of hosts ejected, 0 to 100.
    pub max_ejection_percent: u32,
    /// Consecutive 5xx before a host is ejected, at least 1.
    pub max_server_errors: u32,
}

/// `VirtualNodeConnectionPool`: one member, by protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// HTTP/1.1 limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpPool>,
    /// HTTP/2 limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<RequestPool>,
    /// gRPC limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<RequestPool>,
    /// TCP limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpPool>,
}

/// HTTP/1.1 connection pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPool {
    /// Most connections to the application, at least 1.
    pub max_connections: u32,
    /// Most requests waiting for a connection, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
}

/// HTTP/2 or gRPC connection pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestPool {
    /// Most requests in flight, at least 1.
    pub max_requests: u32,
}

/// TCP connection pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpPool {
    /// Most connections, at least 1.
    pub max_connections: u32,
}

/// `ListenerTimeout`: one member, by protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTimeout {
    /// HTTP/1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTimeout>,
    /// HTTP/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<HttpTimeout>,
    /// gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<HttpTimeout>,
    /// TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpTimeout>,
}

/// `HttpTimeout`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpTimeout {
    /// Idle time of a stream before it is closed (App Mesh default 300 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<AmDuration>,
    /// Time a whole request may take (App Mesh default 15 s; 0 disables it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_request: Option<AmDuration>,
}

/// `TcpTimeout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpTimeout {
    /// Idle time of a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<AmDuration>,
}

/// `Backend`: a virtual service this node calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// The virtual service.
    pub virtual_service: VirtualServiceBackend,
}

/// `VirtualServiceBackend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceBackend {
    /// Name of the virtual service (usually a DNS name such as `colorteller.local`).
    pub virtual_service_name: String,
    /// TLS policy towards it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_policy: Option<ClientPolicy>,
}

/// `BackendDefaults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendDefaults {
    /// TLS policy towards every backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_policy: Option<ClientPolicy>,
}

/// `ServiceDiscovery`: one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceDiscovery {
    /// A DNS name that resolves to the node's instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsServiceDiscovery>,
    /// AWS Cloud Map: the control server asks Cloud Map for the service's healthy
    /// instances and serves them over EDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_cloud_map: Option<AwsCloudMapServiceDiscovery>,
    /// Maille: a fixed list of instances, served over EDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<Endpoint>>,
}

/// `AwsCloudMapServiceDiscovery`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsCloudMapServiceDiscovery {
    /// The Cloud Map namespace's name (`DiscoverInstances`' `NamespaceName`).
    pub namespace_name: String,
    /// The Cloud Map service's name.
    pub service_name: String,
    /// Only instances with all these attributes (`QueryParameters`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<AwsCloudMapInstanceAttribute>,
    /// Which of an instance's addresses to use: `IPv4_PREFERRED` (the default),
    /// `IPv6_PREFERRED`, `IPv4_ONLY`, `IPv6_ONLY`; the mesh's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_preference: Option<String>,
}

/// `AwsCloudMapInstanceAttribute`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsCloudMapInstanceAttribute {
    /// The attribute's name.
    pub key: String,
    /// Its value.
    pub value: String,
}

/// `DnsServiceDiscovery`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsServiceDiscovery {
    /// The DNS name.
    pub hostname: String,
    /// `LOADBALANCER` (one address, kept per connection) or `ENDPOINTS` (every address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_type: Option<String>,
    /// Address family preference, as in [`MeshServiceDiscovery`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_preference: Option<String>,
}

/// Maille: one instance of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// IP address.
    pub address: String,
    /// Port; the node's listener port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

/// `Logging`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Logging {
    /// Where access logs go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
}

/// `AccessLog`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLog {
    /// A file (or `/dev/stdout`).
    pub file: FileAccessLog,
}

/// `FileAccessLog`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileAccessLog {
    /// Path of the file.
    pub path: String,
    /// Format (`text` or `json`), Envoy's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<serde_json::Value>,
}

// === VirtualRouter and Route ===

/// A virtual router (`CreateVirtualRouter`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualRouter {
    /// The mesh.
    pub mesh_name: String,
    /// Its name.
    pub virtual_router_name: String,
    /// Its settings.
    pub spec: VirtualRouterSpec,
}

/// `VirtualRouterSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualRouterSpec {
    /// The port and protocol it routes, exactly one.
    #[serde(default)]
    pub listeners: Vec<RouterListener>,
}

/// `VirtualRouterListener`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouterListener {
    /// Port and protocol.
    pub port_mapping: PortMapping,
}

/// A route (`CreateRoute`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// The mesh.
    pub mesh_name: String,
    /// The router it belongs to.
    pub virtual_router_name: String,
    /// Its name.
    pub route_name: String,
    /// Its settings.
    pub spec: RouteSpec,
    /// Maille's settings of the route, beyond App Mesh's (from the `maille:` tags of any
    /// format, or this field in Maille's JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maille: Option<RouteOptions>,
}

/// Maille's settings of a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteOptions {
    /// Keep each user on one target of the weighted split: the choice is a hash of this key,
    /// so a user who reached a target stays there as long as the weights hold, and raising a
    /// target's weight only moves users onto it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
}

/// What identifies a user for a sticky split: exactly one of a request header or a cookie.
/// Requests without it are split at random.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sticky {
    /// A request header, such as `x-user-id` (tag `maille:sticky-header`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie, such as `session` (tag `maille:sticky-cookie`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// `RouteSpec`: exactly one of the four route kinds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// HTTP/1.1 route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_route: Option<HttpRoute>,
    /// HTTP/2 route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_route: Option<HttpRoute>,
    /// gRPC route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_route: Option<GrpcRoute>,
    /// TCP route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_route: Option<TcpRoute>,
    /// Order among the router's routes, 0 (first) to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

impl RouteSpec {
    /// The weighted targets of whichever kind of route this is (none without a kind).
    pub fn weighted_targets(&self) -> &[WeightedTarget] {
        if let Some(h) = self.http_route.as_ref().or(self.http2_route.as_ref()) {
            &h.action.weighted_targets
        } else if let Some(g) = &self.grpc_route {
            &g.action.weighted_targets
        } else if let Some(t) = &self.tcp_route {
            &t.action.weighted_targets
        } else {
            &[]
        }
    }
}

/// `HttpRoute` (also used for `http2Route`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Which requests it takes.
    #[serde(rename = "match")]
    pub matches: HttpRouteMatch,
    /// Where they go.
    pub action: RouteAction,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<HttpRetryPolicy>,
    /// Timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HttpTimeout>,
}

/// `HttpRouteMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// Path prefix, starting with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Whole-path match, exact or regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Header conditions, up to 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpRouteHeader>,
    /// HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Query parameter conditions, up to 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<QueryParameterMatch>,
    /// The router listener port it applies to (routers with several listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

/// `HttpPathMatch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    /// The path equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The path matches this regular expression (RE2 syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// `HttpRouteHeader`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteHeader {
    /// Header name.
    pub name: String,
    /// Invert the match.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
    /// How to compare; absent means "present".
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<HeaderMatchMethod>,
}

/// `HeaderMatchMethod`: one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatchMethod {
    /// Equal to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Ends with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// Matches this regular expression in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// An integer in `start..end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<MatchRange>,
}

/// `MatchRange`: start inclusive, end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchRange {
    /// First value.
    pub start: i64,
    /// First value after the range.
    pub end: i64,
}

/// `QueryParameterMatch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryParameterMatch {
    /// Parameter name.
    pub name: String,
    /// How to compare; absent means "present".
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<QueryExact>,
}

/// `QueryParameterMatch.match`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryExact {
    /// Equal to.
    pub exact: String,
}

/// `HttpRouteAction` / `GrpcRouteAction` / `TcpRouteAction`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteAction {
    /// 1 to 10 targets with relative weights 0 to 100.
    pub weighted_targets: Vec<WeightedTarget>,
}

/// `WeightedTarget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedTarget {
    /// Name of a virtual node of the mesh.
    pub virtual_node: String,
    /// Relative weight, 0 to 100.
    pub weight: u32,
    /// The node's listener port, when it has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

/// `HttpRetryPolicy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetryPolicy {
    /// `server-error`, `gateway-error`, `client-error`, `stream-error`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_retry_events: Vec<String>,
    /// `connection-error`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_retry_events: Vec<String>,
    /// For gRPC routes: `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`,
    /// `unavailable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_retry_events: Vec<String>,
    /// Most retries of one request.
    pub max_retries: u32,
    /// Timeout of each try.
    pub per_retry_timeout: AmDuration,
}

/// `GrpcRoute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRoute {
    /// Which calls it takes.
    #[serde(rename = "match")]
    pub matches: GrpcRouteMatch,
    /// Where they go.
    pub action: RouteAction,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<HttpRetryPolicy>,
    /// Timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HttpTimeout>,
}

/// `GrpcRouteMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    /// Fully qualified service name (`pkg.Service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Method name; needs `serviceName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method_name: Option<String>,
    /// Conditions on request metadata (headers), up to 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<HttpRouteHeader>,
    /// Router listener port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

/// `TcpRoute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// Where connections go.
    pub action: RouteAction,
    /// Router listener port.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<TcpRouteMatch>,
    /// Idle timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TcpTimeout>,
}

/// `TcpRouteMatch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteMatch {
    /// Router listener port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

// === VirtualService ===

/// A virtual service (`CreateVirtualService`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {
    /// The mesh.
    pub mesh_name: String,
    /// Its name, the host name clients call (`colorteller.local`).
    pub virtual_service_name: String,
    /// Its settings.
    #[serde(default)]
    pub spec: VirtualServiceSpec,
}

/// `VirtualServiceSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// What serves it: a node or a router. Without one, calls to it fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
}

/// `VirtualServiceProvider`: one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Provider {
    /// Served directly by a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_node: Option<NodeRef>,
    /// Routed by a router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_router: Option<RouterRef>,
}

/// `VirtualNodeServiceProvider`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRef {
    /// The node.
    pub virtual_node_name: String,
}

/// `VirtualRouterServiceProvider`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouterRef {
    /// The router.
    pub virtual_router_name: String,
}

// === VirtualGateway ===

/// A virtual gateway (`CreateVirtualGateway`): an Envoy of its own at the mesh's edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualGateway {
    /// The mesh.
    pub mesh_name: String,
    /// Its name.
    pub virtual_gateway_name: String,
    /// Its settings.
    pub spec: VirtualGatewaySpec,
}

/// `VirtualGatewaySpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualGatewaySpec {
    /// Where clients connect (App Mesh allows one).
    pub listeners: Vec<GatewayListener>,
    /// Client policy towards every target virtual service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_defaults: Option<BackendDefaults>,
    /// Access logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
}

/// `VirtualGatewayListener`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayListener {
    /// The port the gateway's Envoy listens on, and its protocol (`http`, `http2`, `grpc`).
    pub port_mapping: PortMapping,
    /// How the gateway's own health is checked (by load balancers in front of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Limits on what the gateway sends on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<GatewayConnectionPool>,
    /// TLS towards clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

/// `VirtualGatewayConnectionPool`: one member, by protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConnectionPool {
    /// HTTP/1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpPool>,
    /// HTTP/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<RequestPool>,
    /// gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<RequestPool>,
}

// === GatewayRoute ===

/// A gateway route (`CreateGatewayRoute`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayRoute {
    /// The mesh.
    pub mesh_name: String,
    /// The gateway it belongs to.
    pub virtual_gateway_name: String,
    /// Its name.
    pub gateway_route_name: String,
    /// Its settings.
    pub spec: GatewayRouteSpec,
}

/// `GatewayRouteSpec`: one of the routes, and a priority.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayRouteSpec {
    /// HTTP/1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_route: Option<HttpGatewayRoute>,
    /// HTTP/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_route: Option<HttpGatewayRoute>,
    /// gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_route: Option<GrpcGatewayRoute>,
    /// 0 (first) to 1000; routes without one come after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

impl GatewayRouteSpec {
    /// The route's kind (`httpRoute`, `http2Route`, `grpcRoute`) and target; none when the
    /// spec has no route (which validation refuses).
    pub fn target(&self) -> Option<(&'static str, &GatewayRouteTarget)> {
        match (&self.http_route, &self.http2_route, &self.grpc_route) {
            (Some(h), _, _) => Some(("httpRoute", &h.action.target)),
            (None, Some(h), _) => Some(("http2Route", &h.action.target)),
            (None, None, Some(g)) => Some(("grpcRoute", &g.action.target)),
            _ => None,
        }
    }
}

/// `HttpGatewayRoute` (also `http2Route`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGatewayRoute {
    /// Which requests it takes.
    #[serde(rename = "match")]
    pub matches: HttpGatewayRouteMatch,
    /// Where they go.
    pub action: HttpGatewayRouteAction,
}

/// `HttpGatewayRouteMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGatewayRouteMatch {
    /// Path prefix (`/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Exact or regex path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Query parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<QueryParameterMatch>,
    /// HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The host the client called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<HostnameMatch>,
    /// Headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpRouteHeader>,
    /// The gateway listener's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

/// `GatewayRouteHostnameMatch`: one member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostnameMatch {
    /// The whole host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Its ending (`.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
}

/// `HttpGatewayRouteAction`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGatewayRouteAction {
    /// The virtual service.
    pub target: GatewayRouteTarget,
    /// What is changed on the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpGatewayRouteRewrite>,
}

/// `GatewayRouteTarget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayRouteTarget {
    /// The virtual service requests go to.
    pub virtual_service: GatewayRouteVirtualService,
    /// Its listener port, when its provider has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

/// `GatewayRouteVirtualService`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayRouteVirtualService {
    /// Its name.
    pub virtual_service_name: String,
}

/// `HttpGatewayRouteRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGatewayRouteRewrite {
    /// The matched prefix: replaced by `/` (the default), by `value`, or kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<PrefixRewrite>,
    /// The whole path replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// The Host header: the target service's name (the default) or kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<HostnameRewrite>,
}

/// `HttpGatewayRoutePrefixRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixRewrite {
    /// `ENABLED` (the matched prefix becomes `/`) or `DISABLED` (kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_prefix: Option<String>,
    /// What the matched prefix becomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `HttpGatewayRoutePathRewrite`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathRewrite {
    /// The new path.
    pub exact: String,
}

/// `GatewayRouteHostnameRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostnameRewrite {
    /// `ENABLED` (Host becomes the target's name, the default) or `DISABLED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_target_hostname: Option<String>,
}

/// `GrpcGatewayRoute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcGatewayRoute {
    /// Which calls it takes.
    #[serde(rename = "match")]
    pub matches: GrpcGatewayRouteMatch,
    /// Where they go.
    pub action: GrpcGatewayRouteAction,
}

/// `GrpcGatewayRouteMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcGatewayRouteMatch {
    /// The fully qualified gRPC service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// The host the client called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<HostnameMatch>,
    /// Request metadata.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<HttpRouteHeader>,
    /// The gateway listener's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}

/// `GrpcGatewayRouteAction`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcGatewayRouteAction {
    /// The virtual service.
    pub target: GatewayRouteTarget,
    /// What is changed on the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<GrpcGatewayRouteRewrite>,
}

/// `GrpcGatewayRouteRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcGatewayRouteRewrite {
    /// The Host header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<HostnameRewrite>,
}

// === Filter (Maille) ===

/// Maille: a wasm filter, with its config, in the outbound path of some virtual nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    /// The mesh.
    pub mesh_name: String,
    /// Its name.
    pub filter_name: String,
    /// Its settings.
    pub spec: FilterSpec,
}

/// How Envoy runs one of Maille's filters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Runtime {
    /// An Envoy dynamic module (`libmaille_<module>.so`), fetched from the control server by
    /// sha256: native code with direct access to Envoy's headers.
    #[default]
    Native,
    /// A proxy-wasm module (`<module>.wasm`) on Envoy's V8 runtime: portable and sandboxed.
    Wasm,
}

impl Runtime {
    /// The file the control server serves for `module` in this runtime.
    pub fn file(self, module: &str) -> String {
        match self {
            Runtime::Native => format!("libmaille_{module}.so"),
            Runtime::Wasm => format!("{module}.wasm"),
        }
    }
}

/// `FilterSpec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterSpec {
    /// The module: `breaker` (a module the server serves from its modules folder).
    pub module: String,
    /// How Envoy runs it: `native` (the default: an Envoy dynamic module, fastest) or `wasm`
    /// (proxy-wasm on V8: portable and sandboxed).
    #[serde(default)]
    pub runtime: Runtime,
    /// The module's configuration, checked against the module's schema where Maille knows it.
    pub config: serde_json::Value,
    /// Virtual nodes whose outbound traffic passes through it.
    pub virtual_nodes: Vec<String>,
}
