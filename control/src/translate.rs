//! Mesh resources to the Envoy v3 resources of one virtual node's proxy.
//!
//! Each Envoy serves one virtual node (node id `mesh/<mesh>/virtualNode/<name>`):
//! - one ingress listener per node listener, in front of the local application;
//! - one egress listener whose route configuration has a virtual host per backend virtual
//!   service, with the service's router's routes in App Mesh order;
//! - a cluster per reachable target node (DNS, or endpoints served over EDS);
//! - a canary filter instance (ECDS) per route with two or more weighted targets, enabled
//!   only on that route: it makes the weighted choice (sticky when configured), writes the
//!   cluster header the route reads and the variant marker;
//! - the node's Maille `Filter`s (ECDS), in the outbound path.
//!
//! App Mesh's defaults are made explicit in [`defaults`].

use crate::names;
use crate::spec::*;
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3 as wasm_filter;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3 as tls_inspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_proxy;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::envoy::extensions::wasm::v3 as wasm;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{Any, Duration, StringValue, UInt32Value};
use maille_filter_config::canary::{CanaryConfig, Target};
use prost::Name;
use std::collections::BTreeMap;

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

/// A wasm module the server hands out over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Module {
    /// URL Envoy fetches it from (through the control cluster).
    pub url: String,
    /// Hex sha256 of its bytes; Envoy checks it and caches by it.
    pub sha256: String,
}

/// The Envoy resources of one proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeConfig {
    /// LDS.
    pub listeners: Vec<listener::Listener>,
    /// RDS.
    pub routes: Vec<route::RouteConfiguration>,
    /// CDS.
    pub clusters: Vec<cluster::Cluster>,
    /// EDS.
    pub endpoints: Vec<endpoint::ClusterLoadAssignment>,
    /// ECDS (HTTP filters).
    pub filters: Vec<core::TypedExtensionConfig>,
    /// Parts of the spec that were not translated, and why.
    pub warnings: Vec<String>,
}

fn ms(millis: u64) -> Duration {
    Duration {
        seconds: (millis / 1000) as i64,
        nanos: ((millis % 1000) * 1_000_000) as i32,
    }
}

fn u32v(v: u32) -> UInt32Value {
    UInt32Value { value: v }
}

fn any<T: prost::Message + Name>(m: &T) -> Any {
    Any {
        type_url: T::type_url(),
        value: m.encode_to_vec(),
    }
}

fn socket(address: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// Everything the translation reads.
#[derive(Debug)]
pub struct World<'a> {
    /// All resources.
    pub resources: &'a BTreeMap<Key, Resource>,
    /// Wasm modules by name (`canary`, `breaker`).
    pub modules: &'a BTreeMap<String, Module>,
}

impl World<'_> {
    fn get(&self, kind: Kind, mesh: &str, name: &str) -> Option<&Resource> {
        self.resources.get(&Key {
            kind,
            mesh: mesh.to_owned(),
            name: name.to_owned(),
        })
    }

    fn node(&self, mesh: &str, name: &str) -> Option<&VirtualNode> {
        match self.get(Kind::VirtualNode, mesh, name) {
            Some(Resource::VirtualNode(n)) => Some(n),
            _ => None,
        }
    }

    fn routes_of(&self, mesh: &str, router: &str) -> Vec<&Route> {
        let mut routes: Vec<&Route> = self
            .resources
            .values()
            .filter_map(|r| match r {
                Resource::Route(rt) if rt.mesh_name == mesh && rt.virtual_router_name == router => {
                    Some(rt)
                }
                _ => None,
            })
            .collect();
        // App Mesh order: by priority (0 first); routes without one after, longest match
        // first; then by name, so the order is stable.
        routes.sort_by(|a, b| {
            let pa = a.spec.priority.unwrap_or(u32::MAX);
            let pb = b.spec.priority.unwrap_or(u32::MAX);
            pa.cmp(&pb)
                .then_with(|| specificity(b).cmp(&specificity(a)))
                .then_with(|| a.route_name.cmp(&b.route_name))
        });
        routes
    }
}

fn specificity(r: &Route) -> usize {
    let m = r
        .spec
        .http_route
        .as_ref()
        .or(r.spec.http2_route.as_ref())
        .map(|h| &h.matches);
    match m {
        Some(m) => {
            let path = match (&m.prefix, &m.path) {
                (Some(p), _) => p.len(),
                (_, Some(PathMatch { exact: Some(e), .. })) => 10_000 + e.len(),
                (_, Some(_)) => 5_000,
                _ => 0,
            };
            path + 100 * (m.headers.len() + m.query_parameters.len())
        }
        None => 0,
    }
}

/// The Envoy resources for the proxy of virtual node `node` of `mesh`. A node that does not
/// exist gets no resources and a warning (its Envoy keeps waiting, as with App Mesh).
pub fn node_config(world: &World<'_>, mesh: &str, node: &str, opts: &NodeOptions) -> NodeConfig {
    let mut out = NodeConfig::default();
    let Some(vn) = world.node(mesh, node) else {
        out.warnings
            .push(format!("no virtual node {node:?} in mesh {mesh:?}"));
        return out;
    };
    ingress(&mut out, vn, opts);
    egress(&mut out, world, vn, opts);
    out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    out.clusters.dedup_by(|a, b| a.name == b.name);
    out.endpoints
        .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    out.endpoints
        .dedup_by(|a, b| a.cluster_name == b.cluster_name);
    out
}

// === ingress ===

fn ingress(out: &mut NodeConfig, vn: &VirtualNode, opts: &NodeOptions) {
    for (i, l) in vn.spec.listeners.iter().enumerate() {
        let port = l.port_mapping.port;
        let envoy_port = u32::from(opts.ingress_port) + i as u32;
        let local = names::local_cluster(port);
        let proto = l.port_mapping.protocol.as_str();
        let mut c = cluster::Cluster {
            name: local.clone(),
            connect_timeout: Some(ms(defaults::CONNECT_TIMEOUT_MS)),
            cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
                cluster::cluster::DiscoveryType::Static as i32,
            )),
            load_assignment: Some(endpoint::ClusterLoadAssignment {
                cluster_name: local.clone(),
                endpoints: vec![locality(&[(opts.app_address.as_str(), port)])],
                ..Default::default()
            }),
            ..Default::default()
        };
        if proto == "http2" || proto == "grpc" {
            http2_upstream(&mut c);
        }
        if let Some(pool) = &l.connection_pool {
            let mut t = cluster::circuit_breakers::Thresholds::default();
            if let Some(h) = &pool.http {
                t.max_connections = Some(u32v(h.max_connections));
                t.max_pending_requests = h.max_pending_requests.map(u32v);
            }
            if let Some(h) = pool.http2.as_ref().or(pool.grpc.as_ref()) {
                t.max_requests = Some(u32v(h.max_requests));
            }
            if let Some(h) = &pool.tcp {
                t.max_connections = Some(u32v(h.max_connections));
            }
            c.circuit_breakers = Some(cluster::CircuitBreakers {
                thresholds: vec![t],
                ..Default::default()
            });
        }
        if let Some(h) = &l.health_check {
            c.health_checks.push(health_check(h));
        }
        out.clusters.push(c);

        let name = names::ingress(port);
        let filter = if proto == "tcp" {
            let idle = l
                .timeout
                .as_ref()
                .and_then(|t| t.tcp.as_ref())
                .and_then(|t| t.idle)
                .map(|d| d.millis())
                .unwrap_or(defaults::IDLE_TIMEOUT_MS);
            listener::Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(any(
                    &tcp_proxy::TcpProxy {
                        stat_prefix: name.clone(),
                        cluster_specifier: Some(tcp_proxy::tcp_proxy::ClusterSpecifier::Cluster(
                            local.clone(),
                        )),
                        idle_timeout: Some(ms(idle)),
                        ..Default::default()
                    },
                ))),
            }
        } else {
            let t = l.timeout.as_ref().and_then(|t| match proto {
                "http2" => t.http2.as_ref(),
                "grpc" => t.grpc.as_ref(),
                _ => t.http.as_ref(),
            });
            let rc = route::RouteConfiguration {
                name: name.clone(),
                virtual_hosts: vec![route::VirtualHost {
                    name: format!("{name}/local"),
                    domains: vec!["*".into()],
                    routes: vec![route::Route {
                        name: format!("{name}/local"),
                        r#match: Some(route::RouteMatch {
                            path_specifier: Some(route::route_match::PathSpecifier::Prefix(
                                "/".into(),
                            )),
                            ..Default::default()
                        }),
                        action: Some(route::route::Action::Route(route::RouteAction {
                            cluster_specifier: Some(
                                route::route_action::ClusterSpecifier::Cluster(local.clone()),
                            ),
                            timeout: Some(ms(per_request(t))),
                            idle_timeout: Some(ms(idle(t))),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            out.routes.push(rc);
            http_connection_manager(
                &name,
                Vec::new(),
                opts.otlp_port.map(|_| vn.virtual_node_name.as_str()),
            )
        };
        let mut l_out = listener::Listener {
            name: name.clone(),
            address: Some(socket(&opts.listen_address, envoy_port)),
            traffic_direction: core::TrafficDirection::Inbound as i32,
            ..Default::default()
        };
        match l.tls.as_ref().filter(|t| t.mode != "DISABLED") {
            None => l_out.filter_chains.push(listener::FilterChain {
                filters: vec![filter],
                ..Default::default()
            }),
            Some(t) => {
                let tls_chain = listener::FilterChain {
                    name: format!("{name}/tls"),
                    filters: vec![filter.clone()],
                    transport_socket: Some(downstream_tls(t)),
                    filter_chain_match: (t.mode == "PERMISSIVE").then(|| {
                        listener::FilterChainMatch {
                            transport_protocol: "tls".into(),
                            ..Default::default()
                        }
                    }),
                    ..Default::default()
                };
                l_out.filter_chains.push(tls_chain);
                if t.mode == "PERMISSIVE" {
                    // TLS and plaintext on one port: the TLS inspector tells them apart.
                    l_out.listener_filters.push(listener::ListenerFilter {
                        name: "envoy.filters.listener.tls_inspector".into(),
                        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(any(
                            &tls_inspector::TlsInspector::default(),
                        ))),
                        ..Default::default()
                    });
                    l_out.filter_chains.push(listener::FilterChain {
                        name: format!("{name}/plaintext"),
                        filters: vec![filter],
                        ..Default::default()
                    });
                }
            }
        }
        out.listeners.push(l_out);
    }
}

fn file(path: &str) -> core::DataSource {
    core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(path.to_owned())),
        ..Default::default()
    }
}

fn tls_certificates(c: &TlsCertificate) -> Vec<tls::TlsCertificate> {
    c.file
        .iter()
        .map(|f| tls::TlsCertificate {
            certificate_chain: Some(file(&f.certificate_chain)),
            private_key: Some(file(&f.private_key)),
            ..Default::default()
        })
        .collect()
}

fn validation_context(v: &TlsValidation) -> tls::common_tls_context::ValidationContextType {
    tls::common_tls_context::ValidationContextType::ValidationContext(
        tls::CertificateValidationContext {
            trusted_ca: v.trust.file.as_ref().map(|f| file(&f.certificate_chain)),
            match_typed_subject_alt_names: v
                .subject_alternative_names
                .iter()
                .flat_map(|s| s.matches.exact.iter())
                .map(|name| tls::SubjectAltNameMatcher {
                    san_type: tls::subject_alt_name_matcher::SanType::Dns as i32,
                    matcher: Some(matcher::StringMatcher {
                        match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(
                            name.clone(),
                        )),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    )
}

fn downstream_tls(t: &ListenerTls) -> core::TransportSocket {
    let ctx = tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: tls_certificates(&t.certificate),
            validation_context_type: t.validation.as_ref().map(validation_context),
            ..Default::default()
        }),
        require_client_certificate: t
            .validation
            .as_ref()
            .map(|_| envoy_types::pb::google::protobuf::BoolValue { value: true }),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

fn upstream_tls(t: &ClientPolicyTls) -> core::TransportSocket {
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: t
                .certificate
                .as_ref()
                .map(tls_certificates)
                .unwrap_or_default(),
            validation_context_type: Some(validation_context(&t.validation)),
            ..Default::default()
        }),
        sni: t
            .validation
            .subject_alternative_names
            .as_ref()
            .and_then(|s| s.matches.exact.first().cloned())
            .unwrap_or_default(),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(&ctx))),
    }
}

fn per_request(t: Option<&HttpTimeout>) -> u64 {
    t.and_then(|t| t.per_request)
        .map(|d| d.millis())
        .unwrap_or(defaults::PER_REQUEST_TIMEOUT_MS)
}

fn idle(t: Option<&HttpTimeout>) -> u64 {
    t.and_then(|t| t.idle)
        .map(|d| d.millis())
        .unwrap_or(defaults::IDLE_TIMEOUT_MS)
}

fn health_check(h: &HealthCheck) -> core::HealthCheck {
    use core::health_check::HealthChecker;
    let checker = match h.protocol.as_str() {
        "http" | "http2" => HealthChecker::HttpHealthCheck(core::health_check::HttpHealthCheck {
            path: h.path.clone().unwrap_or_else(|| "/".into()),
            codec_client_type: if h.protocol == "http2" {
                envoy_types::pb::envoy::r#type::v3::CodecClientType::Http2 as i32
            } else {
                envoy_types::pb::envoy::r#type::v3::CodecClientType::Http1 as i32
            },
            ..Default::default()
        }),
        "grpc" => HealthChecker::GrpcHealthCheck(core::health_check::GrpcHealthCheck::default()),
        _ => HealthChecker::TcpHealthCheck(core::health_check::TcpHealthCheck::default()),
    };
    core::HealthCheck {
        timeout: Some(ms(h.timeout_millis)),
        interval: Some(ms(h.interval_millis)),
        healthy_threshold: Some(u32v(h.healthy_threshold)),
        unhealthy_threshold: Some(u32v(h.unhealthy_threshold)),
        health_checker: Some(checker),
        ..Default::default()
    }
}

fn http2_upstream(c: &mut cluster::Cluster) {
    let opts = upstream_http::HttpProtocolOptions {
        upstream_protocol_options: Some(
            upstream_http::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                upstream_http::http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            core::Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        any(&opts),
    );
}

fn locality(addrs: &[(&str, u32)]) -> endpoint::LocalityLbEndpoints {
    endpoint::LocalityLbEndpoints {
        lb_endpoints: addrs
            .iter()
            .map(|(a, p)| endpoint::LbEndpoint {
                host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                    endpoint::Endpoint {
                        address: Some(socket(a, *p)),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// An HTTP connection manager on route configuration `rds` (from ADS) with `filters` before
/// the router.
fn http_connection_manager(
    rds: &str,
    mut filters: Vec<hcm::HttpFilter>,
    tracing: Option<&str>,
) -> listener::Filter {
    filters.push(hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
            &router::Router::default(),
        ))),
        ..Default::default()
    });
    let m = hcm::HttpConnectionManager {
        stat_prefix: rds.replace('/', "_"),
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads()),
                route_config_name: rds.to_owned(),
            },
        )),
        strip_port_mode: Some(hcm::http_connection_manager::StripPortMode::StripAnyHostPort(true)),
        http_filters: filters,
        tracing: tracing.map(trace_config),
        ..Default::default()
    };
    listener::Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(any(&m))),
    }
}

/// Envoy's OpenTelemetry tracer towards the node's collector, every request sampled, the
/// canary's variant header as the span tag the collector makes an annotation of.
fn trace_config(service: &str) -> hcm::http_connection_manager::Tracing {
    use envoy_types::pb::envoy::config::trace::v3 as trace;
    use envoy_types::pb::envoy::r#type::tracing::v3 as tag;
    let otel = trace::OpenTelemetryConfig {
        grpc_service: Some(core::GrpcService {
            target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                core::grpc_service::EnvoyGrpc {
                    cluster_name: names::COLLECTOR_CLUSTER.into(),
                    ..Default::default()
                },
            )),
            timeout: Some(ms(2_000)),
            ..Default::default()
        }),
        service_name: service.to_owned(),
        ..Default::default()
    };
    hcm::http_connection_manager::Tracing {
        random_sampling: Some(envoy_types::pb::envoy::r#type::v3::Percent { value: 100.0 }),
        custom_tags: vec![tag::CustomTag {
            tag: defaults::VARIANT_HEADER.into(),
            r#type: Some(tag::custom_tag::Type::RequestHeader(
                tag::custom_tag::Header {
                    name: defaults::VARIANT_HEADER.into(),
                    ..Default::default()
                },
            )),
        }],
        provider: Some(trace::tracing::Http {
            name: "envoy.tracers.opentelemetry".into(),
            config_type: Some(trace::tracing::http::ConfigType::TypedConfig(any(&otel))),
        }),
        ..Default::default()
    }
}

// === egress ===

fn egress(out: &mut NodeConfig, world: &World<'_>, vn: &VirtualNode, opts: &NodeOptions) {
    let mesh = vn.mesh_name.as_str();
    let mut hosts = Vec::new();
    let mut http_filters = Vec::new();
    // Maille `Filter`s run after the canary filters: the breaker reads the cluster the
    // canary chose from `x-maille-cluster`.
    let mut node_filters = Vec::new();

    // Maille Filters attached to this node, in name order.
    for r in world.resources.values() {
        let Resource::Filter(f) = r else { continue };
        if f.mesh_name != mesh || !f.spec.virtual_nodes.contains(&vn.virtual_node_name) {
            continue;
        }
        let Some(module) = world.modules.get(&f.spec.module) else {
            out.warnings.push(format!(
                "filter {:?}: module {:?} is not served (missing from the modules folder)",
                f.filter_name, f.spec.module
            ));
            continue;
        };
        let name = names::versioned(&names::filter(&f.filter_name), &module.sha256);
        out.filters.push(wasm_extension(
            &name,
            module,
            &f.spec.module,
            &f.spec.config.to_string(),
        ));
        node_filters.push(ecds_filter(&name, false));
    }

    for b in &vn.spec.backends {
        let vs_name = &b.virtual_service.virtual_service_name;
        let Some(Resource::VirtualService(vs)) = world.get(Kind::VirtualService, mesh, vs_name)
        else {
            continue;
        };
        let policy = b.virtual_service.client_policy.as_ref().or(vn
            .spec
            .backend_defaults
            .as_ref()
            .and_then(|d| d.client_policy.as_ref()));
        if tcp_backend(out, world, vs, policy, opts) {
            continue;
        }
        let mut vhost = route::VirtualHost {
            name: names::service_host(vs_name),
            domains: vec![vs_name.clone()],
            ..Default::default()
        };
        match vs.spec.provider.as_ref() {
            Some(Provider {
                virtual_node: Some(n),
                ..
            }) => {
                if let Some(target) = world.node(mesh, &n.virtual_node_name) {
                    if let Some(c) = target_cluster(out, target, None, policy) {
                        vhost.routes.push(route::Route {
                            name: format!("{}/default", names::service_host(vs_name)),
                            r#match: Some(prefix_match("/")),
                            action: Some(route::route::Action::Route(route::RouteAction {
                                cluster_specifier: Some(
                                    route::route_action::ClusterSpecifier::Cluster(c),
                                ),
                                timeout: Some(ms(defaults::PER_REQUEST_TIMEOUT_MS)),
                                idle_timeout: Some(ms(defaults::IDLE_TIMEOUT_MS)),
                                retry_policy: Some(default_retry()),
                                ..Default::default()
                            })),
                            request_headers_to_add: vec![variant_header(&target.virtual_node_name)],
                            ..Default::default()
                        });
                    }
                }
            }
            Some(Provider {
                virtual_router: Some(r),
                ..
            }) => {
                for rt in world.routes_of(mesh, &r.virtual_router_name) {
                    if rt.spec.tcp_route.is_some() {
                        continue;
                    }
                    match envoy_route(out, world, rt, policy) {
                        Ok((route, filter)) => {
                            vhost.routes.push(route);
                            if let Some(f) = filter {
                                http_filters.push(f);
                            }
                        }
                        Err(w) => out.warnings.push(w),
                    }
                }
            }
            _ => out.warnings.push(format!(
                "virtual service {vs_name:?} has no provider: calls to it get 404"
            )),
        }
        hosts.push(vhost);
    }

    if world
        .get(Kind::Mesh, mesh, mesh)
        .and_then(|m| match m {
            Resource::Mesh(m) => m.spec.egress_filter.as_ref(),
            _ => None,
        })
        .is_some_and(|f| f.kind == "ALLOW_ALL")
    {
        out.warnings.push(
            "mesh egressFilter ALLOW_ALL: Maille's egress listener serves only mesh services \
             (there is no transparent redirect to pass other traffic through)"
                .into(),
        );
    }

    out.routes.push(route::RouteConfiguration {
        name: names::EGRESS.into(),
        virtual_hosts: hosts,
        ..Default::default()
    });
    out.listeners.push(listener::Listener {
        name: names::EGRESS.into(),
        address: Some(socket(&opts.listen_address, u32::from(opts.egress_port))),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        filter_chains: vec![listener::FilterChain {
            filters: vec![http_connection_manager(
                names::EGRESS,
                {
                    http_filters.extend(node_filters);
                    http_filters
                },
                opts.otlp_port.map(|_| vn.virtual_node_name.as_str()),
            )],
            ..Default::default()
        }],
        ..Default::default()
    });
}

/// A backend served over TCP (a router with a `tcp` listener, or a provider node whose first
/// listener is `tcp`) gets its own egress listener on the router's (or node's) port, since
/// TCP has no Host header to route by. Returns whether the backend was TCP.
fn tcp_backend(
    out: &mut NodeConfig,
    world: &World<'_>,
    vs: &VirtualService,
    policy: Option<&ClientPolicy>,
    opts: &NodeOptions,
) -> bool {
    let mesh = vs.mesh_name.as_str();
    let provider = vs.spec.provider.as_ref();
    let (port, targets, idle): (u32, Vec<(String, u32)>, Option<u64>) = match (
        provider.and_then(|p| p.virtual_router.as_ref()),
        provider.and_then(|p| p.virtual_node.as_ref()),
    ) {
        (Some(r), _) => {
            let Some(Resource::VirtualRouter(vr)) =
                world.get(Kind::VirtualRouter, mesh, &r.virtual_router_name)
            else {
                return false;
            };
            let Some(l) = vr.spec.listeners.first() else {
                return false;
            };
            if l.port_mapping.protocol != "tcp" {
                return false;
            }
            let Some(rt) = world
                .routes_of(mesh, &r.virtual_router_name)
                .into_iter()
                .find(|rt| rt.spec.tcp_route.is_some())
            else {
                out.warnings.push(format!(
                    "virtual router {:?} listens on tcp but has no tcpRoute",
                    r.virtual_router_name
                ));
                return true;
            };
            let Some(tr) = rt.spec.tcp_route.as_ref() else {
                return true;
            };
            let mut targets = Vec::new();
            for t in &tr.action.weighted_targets {
                let Some(node) = world.node(mesh, &t.virtual_node) else {
                    continue;
                };
                if let Some(c) = target_cluster(out, node, t.port, policy) {
                    targets.push((c, t.weight));
                }
            }
            let idle = tr.timeout.as_ref().and_then(|t| t.idle).map(|d| d.millis());
            (l.port_mapping.port, targets, idle)
        }
        (None, Some(n)) => {
            let Some(node) = world.node(mesh, &n.virtual_node_name) else {
                return false;
            };
            let Some(l) = node.spec.listeners.first() else {
                return false;
            };
            if l.port_mapping.protocol != "tcp" {
                return false;
            }
            let targets = target_cluster(out, node, None, policy)
                .map(|c| vec![(c, 1)])
                .unwrap_or_default();
            (l.port_mapping.port, targets, None)
        }
        _ => return false,
    };
    let live: Vec<&(String, u32)> = targets.iter().filter(|(_, w)| *w > 0).collect();
    let spec = match live.as_slice() {
        [] => {
            out.warnings.push(format!(
                "virtual service {:?}: no reachable tcp target",
                vs.virtual_service_name
            ));
            return true;
        }
        [(c, _)] => tcp_proxy::tcp_proxy::ClusterSpecifier::Cluster(c.clone()),
        many => tcp_proxy::tcp_proxy::ClusterSpecifier::WeightedClusters(
            tcp_proxy::tcp_proxy::WeightedCluster {
                clusters: many
                    .iter()
                    .map(
                        |(c, w)| tcp_proxy::tcp_proxy::weighted_cluster::ClusterWeight {
                            name: c.clone(),
                            weight: *w,
                            ..Default::default()
                        },
                    )
                    .collect(),
            },
        ),
    };
    let name = names::egress_tcp(&vs.virtual_service_name);
    out.listeners.push(listener::Listener {
        name: name.clone(),
        address: Some(socket(&opts.listen_address, port)),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(any(
                    &tcp_proxy::TcpProxy {
                        stat_prefix: name.replace('/', "_"),
                        cluster_specifier: Some(spec),
                        idle_timeout: Some(ms(idle.unwrap_or(defaults::IDLE_TIMEOUT_MS))),
                        ..Default::default()
                    },
                ))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    });
    true
}

fn prefix_match(p: &str) -> route::RouteMatch {
    route::RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::Prefix(p.into())),
        ..Default::default()
    }
}

fn variant_header(variant: &str) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: defaults::VARIANT_HEADER.into(),
            value: variant.into(),
            ..Default::default()
        }),
        append_action: core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn default_retry() -> route::RetryPolicy {
    route::RetryPolicy {
        retry_on: defaults::RETRY_ON.into(),
        num_retries: Some(u32v(defaults::MAX_RETRIES)),
        per_try_timeout: Some(ms(defaults::PER_RETRY_TIMEOUT_MS)),
        ..Default::default()
    }
}

fn retry(p: &HttpRetryPolicy) -> route::RetryPolicy {
    let mut on = Vec::new();
    for e in &p.http_retry_events {
        on.push(match e.as_str() {
            "server-error" => "5xx",
            "gateway-error" => "gateway-error",
            "client-error" => "retriable-4xx",
            _ => "refused-stream,reset",
        });
    }
    if !p.tcp_retry_events.is_empty() {
        on.push("connect-failure");
    }
    for e in &p.grpc_retry_events {
        on.push(e.as_str());
    }
    route::RetryPolicy {
        retry_on: on.join(","),
        num_retries: Some(u32v(p.max_retries)),
        per_try_timeout: Some(ms(p.per_retry_timeout.millis())),
        ..Default::default()
    }
}

/// The cluster that reaches `target` on `port` (its first listener when `None`); adds the
/// cluster (and its EDS assignment) to `out`. `None` when the node has no listener.
fn target_cluster(
    out: &mut NodeConfig,
    target: &VirtualNode,
    port: Option<u32>,
    policy: Option<&ClientPolicy>,
) -> Option<String> {
    let l = match port {
        Some(p) => target
            .spec
            .listeners
            .iter()
            .find(|l| l.port_mapping.port == p),
        None => target.spec.listeners.first(),
    };
    let Some(l) = l else {
        out.warnings.push(format!(
            "virtual node {:?} has no listener{}: it cannot be a target",
            target.virtual_node_name,
            port.map(|p| format!(" on port {p}")).unwrap_or_default()
        ));
        return None;
    };
    let port = l.port_mapping.port;
    let name = names::node_cluster(&target.virtual_node_name, port);
    let mut c = cluster::Cluster {
        name: name.clone(),
        connect_timeout: Some(ms(defaults::CONNECT_TIMEOUT_MS)),
        ..Default::default()
    };
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType};
    let sd = target.spec.service_discovery.as_ref();
    if let Some(dns) = sd.and_then(|s| s.dns.as_ref()) {
        let t = if dns.response_type.as_deref() == Some("ENDPOINTS") {
            DiscoveryType::StrictDns
        } else {
            DiscoveryType::LogicalDns
        };
        c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(t as i32));
        c.dns_lookup_family = match dns.ip_preference.as_deref() {
            Some("IPv6_ONLY") => cluster::cluster::DnsLookupFamily::V6Only,
            Some("IPv4_ONLY") => cluster::cluster::DnsLookupFamily::V4Only,
            Some("IPv6_PREFERRED") => cluster::cluster::DnsLookupFamily::Auto,
            _ => cluster::cluster::DnsLookupFamily::V4Preferred,
        } as i32;
        c.load_assignment = Some(endpoint::ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: vec![locality(&[(dns.hostname.as_str(), port)])],
            ..Default::default()
        });
    } else {
        // Endpoints (or none yet) over EDS, so a change of instances touches only EDS.
        c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
        c.eds_cluster_config = Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.clone(),
        });
        let eps: Vec<(&str, u32)> = sd
            .and_then(|s| s.endpoints.as_ref())
            .map(|eps| {
                eps.iter()
                    .map(|e| (e.address.as_str(), e.port.unwrap_or(port)))
                    .collect()
            })
            .unwrap_or_default();
        out.endpoints.push(endpoint::ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: if eps.is_empty() {
                Vec::new()
            } else {
                vec![locality(&eps)]
            },
            ..Default::default()
        });
    }
    let proto = l.port_mapping.protocol.as_str();
    if proto == "http2" || proto == "grpc" {
        http2_upstream(&mut c);
    }
    if let Some(t) = policy.and_then(|p| p.tls.as_ref()) {
        if t.enforce.unwrap_or(true) && (t.ports.is_empty() || t.ports.contains(&port)) {
            c.transport_socket = Some(upstream_tls(t));
        }
    }
    if let Some(o) = &l.outlier_detection {
        c.outlier_detection = Some(cluster::OutlierDetection {
            consecutive_5xx: Some(u32v(o.max_server_errors)),
            interval: Some(ms(o.interval.millis())),
            base_ejection_time: Some(ms(o.base_ejection_duration.millis())),
            max_ejection_percent: Some(u32v(o.max_ejection_percent)),
            enforcing_consecutive_5xx: Some(u32v(100)),
            // App Mesh ejects on consecutive server errors only.
            enforcing_success_rate: Some(u32v(0)),
            ..Default::default()
        });
    }
    out.clusters.push(c);
    Some(name)
}

fn string_match(m: &HeaderMatchMethod) -> Option<matcher::StringMatcher> {
    use matcher::string_matcher::MatchPattern;
    let p = if let Some(v) = &m.exact {
        MatchPattern::Exact(v.clone())
    } else if let Some(v) = &m.prefix {
        MatchPattern::Prefix(v.clone())
    } else if let Some(v) = &m.suffix {
        MatchPattern::Suffix(v.clone())
    } else if let Some(v) = &m.regex {
        MatchPattern::SafeRegex(regex(v))
    } else {
        return None;
    };
    Some(matcher::StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    })
}

fn regex(re: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher {
        regex: re.to_owned(),
        ..Default::default()
    }
}

fn header_matcher(h: &HttpRouteHeader) -> route::HeaderMatcher {
    use route::header_matcher::HeaderMatchSpecifier as S;
    let spec = match &h.matches {
        None => S::PresentMatch(true),
        Some(m) => match m.range {
            Some(r) => S::RangeMatch(envoy_types::pb::envoy::r#type::v3::Int64Range {
                start: r.start,
                end: r.end,
            }),
            None => match string_match(m) {
                Some(s) => S::StringMatch(s),
                None => S::PresentMatch(true),
            },
        },
    };
    route::HeaderMatcher {
        name: h.name.to_ascii_lowercase(),
        invert_match: h.invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

fn exact_header(name: &str, value: &str) -> route::HeaderMatcher {
    route::HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
            matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(value.into())),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// One Envoy route for an App Mesh route, and the canary filter it enables (if it splits).
fn envoy_route(
    out: &mut NodeConfig,
    world: &World<'_>,
    rt: &Route,
    policy: Option<&ClientPolicy>,
) -> Result<(route::Route, Option<hcm::HttpFilter>), String> {
    let id = format!("route {}/{}", rt.virtual_router_name, rt.route_name);
    let mut m = route::RouteMatch::default();
    let (action, retry_policy, timeout) = if let Some(h) =
        rt.spec.http_route.as_ref().or(rt.spec.http2_route.as_ref())
    {
        let hm = &h.matches;
        m.path_specifier = Some(match (&hm.prefix, &hm.path) {
            (Some(p), _) => route::route_match::PathSpecifier::Prefix(p.clone()),
            (None, Some(PathMatch { exact: Some(e), .. })) => {
                route::route_match::PathSpecifier::Path(e.clone())
            }
            (None, Some(PathMatch { regex: Some(r), .. })) => {
                route::route_match::PathSpecifier::SafeRegex(regex(r))
            }
            _ => route::route_match::PathSpecifier::Prefix("/".into()),
        });
        m.headers = hm.headers.iter().map(header_matcher).collect();
        if let Some(method) = &hm.method {
            m.headers.push(exact_header(":method", method));
        }
        if let Some(s) = &hm.scheme {
            m.headers.push(exact_header(":scheme", s));
        }
        m.query_parameters = hm
            .query_parameters
            .iter()
            .map(|q| route::QueryParameterMatcher {
                name: q.name.clone(),
                query_parameter_match_specifier: Some(match &q.matches {
                    Some(e) => {
                        route::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                            matcher::StringMatcher {
                                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(
                                    e.exact.clone(),
                                )),
                                ..Default::default()
                            },
                        )
                    }
                    None => {
                        route::query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(
                            true,
                        )
                    }
                }),
            })
            .collect();
        (&h.action, h.retry_policy.as_ref(), h.timeout.as_ref())
    } else if let Some(g) = &rt.spec.grpc_route {
        let gm = &g.matches;
        m.path_specifier = Some(match (&gm.service_name, &gm.method_name) {
            (Some(s), Some(meth)) => {
                route::route_match::PathSpecifier::Path(format!("/{s}/{meth}"))
            }
            (Some(s), None) => route::route_match::PathSpecifier::Prefix(format!("/{s}/")),
            _ => route::route_match::PathSpecifier::Prefix("/".into()),
        });
        m.headers = gm.metadata.iter().map(header_matcher).collect();
        m.grpc = Some(route::route_match::GrpcRouteMatchOptions {});
        (&g.action, g.retry_policy.as_ref(), g.timeout.as_ref())
    } else {
        return Err(format!("{id}: a tcpRoute has its own egress listener"));
    };

    // Targets with their clusters.
    let mut targets = Vec::new();
    for t in &action.weighted_targets {
        let Some(node) = world.node(&rt.mesh_name, &t.virtual_node) else {
            return Err(format!(
                "{id}: no virtual node {:?} (skipped)",
                t.virtual_node
            ));
        };
        let Some(c) = target_cluster(out, node, t.port, policy) else {
            return Err(format!(
                "{id}: target {:?} unreachable (skipped)",
                t.virtual_node
            ));
        };
        targets.push((t, c));
    }
    let mut ra = route::RouteAction {
        timeout: Some(ms(per_request(timeout))),
        idle_timeout: Some(ms(idle(timeout))),
        retry_policy: Some(retry_policy.map(retry).unwrap_or_else(default_retry)),
        ..Default::default()
    };
    let mut r = route::Route {
        name: names::route(&rt.virtual_router_name, &rt.route_name),
        r#match: Some(m),
        ..Default::default()
    };
    let live: Vec<_> = targets.iter().filter(|(t, _)| t.weight > 0).collect();
    let mut filter = None;
    if live.len() == 1 {
        let (t, c) = live[0];
        ra.cluster_specifier = Some(route::route_action::ClusterSpecifier::Cluster(c.clone()));
        r.request_headers_to_add
            .push(variant_header(&t.virtual_node));
    } else {
        // Two or more live targets: the canary filter instance of this route chooses.
        let config = CanaryConfig {
            targets: targets
                .iter()
                .map(|(t, c)| Target {
                    name: t.virtual_node.clone(),
                    cluster: c.clone(),
                    weight: t.weight,
                })
                .collect(),
            rules: Vec::new(),
            sticky: None,
            cluster_header: defaults::CLUSTER_HEADER.into(),
            variant_header: defaults::VARIANT_HEADER.into(),
        };
        if let Err(e) = config.validate() {
            return Err(format!(
                "{id}: its canary filter config is refused: {e} (skipped)"
            ));
        }
        let Some(module) = world.modules.get("canary") else {
            return Err(format!(
                "{id}: splits traffic but the canary module is not served (skipped)"
            ));
        };
        let name = names::versioned(
            &names::canary_filter(&rt.virtual_router_name, &rt.route_name),
            &module.sha256,
        );
        out.filters
            .push(wasm_extension(&name, module, "canary", &config.to_json()));
        filter = Some(ecds_filter(&name, true));
        ra.cluster_specifier = Some(route::route_action::ClusterSpecifier::ClusterHeader(
            defaults::CLUSTER_HEADER.into(),
        ));
        r.typed_per_filter_config.insert(
            name,
            // An empty `config` (present, no type) enables a disabled filter on this route.
            any(&route::FilterConfig {
                config: Some(Any::default()),
                is_optional: false,
                disabled: false,
            }),
        );
    }
    r.action = Some(route::route::Action::Route(ra));
    Ok((r, filter))
}

/// An HTTP filter whose config comes over ECDS; `disabled` filters run only on routes that
/// enable them.
fn ecds_filter(name: &str, disabled: bool) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.to_owned(),
        disabled,
        config_type: Some(hcm::http_filter::ConfigType::ConfigDiscovery(
            core::ExtensionConfigSource {
                config_source: Some(ads()),
                type_urls: vec![wasm_filter::Wasm::type_url()],
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The ECDS resource of a wasm filter: module fetched from the control server, checked by
/// sha256, with `config` as its plugin configuration.
fn wasm_extension(
    name: &str,
    module: &Module,
    vm: &str,
    config: &str,
) -> core::TypedExtensionConfig {
    let vm_config = wasm::VmConfig {
        vm_id: format!(
            "maille_{vm}_{}",
            &module.sha256[..module.sha256.len().min(12)]
        ),
        runtime: "envoy.wasm.runtime.v8".into(),
        code: Some(core::AsyncDataSource {
            specifier: Some(core::async_data_source::Specifier::Remote(
                core::RemoteDataSource {
                    http_uri: Some(core::HttpUri {
                        uri: module.url.clone(),
                        timeout: Some(ms(10_000)),
                        http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster(
                            names::CONTROL_CLUSTER.into(),
                        )),
                    }),
                    sha256: module.sha256.clone(),
                    retry_policy: Some(core::RetryPolicy {
                        num_retries: Some(u32v(5)),
                        ..Default::default()
                    }),
                },
            )),
        }),
        ..Default::default()
    };
    let plugin = wasm::PluginConfig {
        name: name.to_owned(),
        root_id: format!("maille_{vm}"),
        configuration: Some(any(&StringValue {
            value: config.to_owned(),
        })),
        vm: Some(wasm::plugin_config::Vm::VmConfig(vm_config)),
        ..Default::default()
    };
    core::TypedExtensionConfig {
        name: name.to_owned(),
        typed_config: Some(any(&wasm_filter::Wasm {
            config: Some(plugin),
        })),
    }
}
