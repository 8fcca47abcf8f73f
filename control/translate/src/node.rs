//! One proxy's resources: the ingress listeners in front of the local application, the egress
//! listener with a virtual host per backend, TCP backends' own listeners.

use crate::access_log::access_logs;
use crate::cluster::*;
use crate::filters::*;
use crate::names;
use crate::options::{defaults, NodeOptions};
use crate::proto::*;
use crate::route::*;
use crate::tls::*;
use crate::world::{Ctx, Dep, World};
use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3 as router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3 as tls_inspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3 as network_rbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp_proxy;
use maille_model::*;
use std::collections::BTreeSet;

/// The Envoy resources of one proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeConfig {
    /// What the translation read: a change to any of these may change this config.
    pub depends_on: BTreeSet<Dep>,
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

/// The Envoy resources for the proxy of virtual node `node` of `mesh`. A node that does not
/// exist gets no resources and a warning (its Envoy keeps waiting, as with App Mesh).
///
/// `node` may also name a virtual gateway's proxy ([`names::gateway_proxy`]).
pub fn node_config(world: World<'_>, mesh: &str, node: &str, opts: &NodeOptions) -> NodeConfig {
    let cx = Ctx::new(world);
    let mut out = match names::as_gateway(node) {
        Some(gw) => crate::gateway::translate_gateway(&cx, mesh, gw, opts),
        None => translate_node(&cx, mesh, node, opts),
    };
    out.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    out.clusters.dedup_by(|a, b| a.name == b.name);
    out.endpoints
        .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    out.endpoints
        .dedup_by(|a, b| a.cluster_name == b.cluster_name);
    out.depends_on = cx.into_deps();
    out
}

fn translate_node(cx: &Ctx<'_>, mesh: &str, node: &str, opts: &NodeOptions) -> NodeConfig {
    let mut out = NodeConfig::default();
    // The mesh's own settings (egress filter) apply to every node.
    let mesh_res = cx.get(Kind::Mesh, mesh, mesh);
    let Some(vn) = cx.node(mesh, node) else {
        out.warnings
            .push(format!("no virtual node {node:?} in mesh {mesh:?}"));
        return out;
    };
    // The same access logs on every listener: made once.
    let logs = access_logs(vn, opts);
    ingress(&mut out, cx, vn, opts, &logs);
    egress(&mut out, cx, vn, opts, mesh_res, &logs);
    out
}

fn ingress(
    out: &mut NodeConfig,
    cx: &Ctx<'_>,
    vn: &VirtualNode,
    opts: &NodeOptions,
    logs: &[AccessLog],
) {
    let mesh = vn.mesh_name.as_str();
    // Mesh mTLS on the listeners without TLS of their own (the node's setting, else the
    // mesh's); under STRICT, only the declared callers get in (unless the mesh says NONE).
    let (mtls, authorize) = node_mtls(cx, vn);
    let callers = if mtls == MtlsMode::Strict && authorize {
        Some(cx.callers_of(mesh, &vn.virtual_node_name))
    } else {
        None
    };
    if callers.as_ref().is_some_and(|c| c.is_empty())
        && vn.spec.listeners.iter().any(|l| own_tls(l).is_none())
    {
        out.warnings.push(format!(
            "no node or gateway of mesh {mesh:?} has {:?} as a backend: under STRICT mTLS its listeners take no calls (tag it maille:mtls PERMISSIVE if clients outside the mesh call it, or put a virtual gateway in front)",
            vn.virtual_node_name
        ));
    }
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
            c.circuit_breakers = Some(circuit_breakers(pool));
        }
        if let Some(h) = &l.health_check {
            c.health_checks.push(health_check(h));
            // App Mesh's `healthCheck.port`: the application answers its checks on another
            // port than the one it serves.
            if let (Some(hp), Some(la)) = (h.port, c.load_assignment.as_mut()) {
                for e in la
                    .endpoints
                    .iter_mut()
                    .flat_map(|l| l.lb_endpoints.iter_mut())
                {
                    if let Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) =
                        e.host_identifier.as_mut()
                    {
                        ep.health_check_config = Some(endpoint::endpoint::HealthCheckConfig {
                            port_value: hp,
                            ..Default::default()
                        });
                    }
                }
            }
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
            let mut fs = Vec::new();
            if let (Some(c), None) = (&callers, own_tls(l)) {
                fs.push(listener::Filter {
                    name: "envoy.filters.network.rbac".into(),
                    config_type: Some(listener::filter::ConfigType::TypedConfig(any(
                        &network_rbac::Rbac {
                            stat_prefix: name.replace('/', "_"),
                            rules: Some(callers_rbac(c)),
                            ..Default::default()
                        },
                    ))),
                });
            }
            fs.push(tcp_proxy_filter(
                name.clone(),
                tcp_proxy::tcp_proxy::ClusterSpecifier::Cluster(local.clone()),
                idle,
                logs.to_vec(),
            ));
            fs
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
            let mut http_filters = Vec::new();
            if let (Some(c), None) = (&callers, own_tls(l)) {
                http_filters.push(hcm::HttpFilter {
                    name: "envoy.filters.http.rbac".into(),
                    config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                        &http_rbac::Rbac {
                            rules: Some(callers_rbac(c)),
                            ..Default::default()
                        },
                    ))),
                    ..Default::default()
                });
            }
            vec![http_connection_manager(
                &name,
                http_filters,
                opts.otlp_port.map(|_| vn.virtual_node_name.as_str()),
                false,
                logs.to_vec(),
                true,
                false,
            )]
        };
        let mut l_out = listener::Listener {
            name: name.clone(),
            address: Some(socket(&opts.listen_address, envoy_port)),
            traffic_direction: core::TrafficDirection::Inbound as i32,
            ..Default::default()
        };
        if let Some(t) = &l.tls {
            out.warnings.extend(ca_notes(
                &format!("spec.listeners[{i}].tls"),
                Some(&t.certificate),
                t.validation.as_ref().map(|v| &v.trust),
            ));
        }
        // The listener's own TLS, unless DISABLED (then the mesh's applies).
        let tls = match (own_tls(l), mtls) {
            (Some(t), _) => listener_tls(Some(t)),
            (None, MtlsMode::Disabled) => None,
            (None, MtlsMode::Strict) => Some(("STRICT", mesh_downstream_tls(mesh, proto))),
            (None, MtlsMode::Permissive) => Some(("PERMISSIVE", mesh_downstream_tls(mesh, proto))),
        };
        filter_chains(&mut l_out, &name, filter, tls);
        out.listeners.push(l_out);
    }
}

/// App Mesh's connection pool as Envoy's circuit breaker thresholds on a cluster.
pub(crate) fn circuit_breakers(pool: &ConnectionPool) -> cluster::CircuitBreakers {
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
    cluster::CircuitBreakers {
        thresholds: vec![t],
        ..Default::default()
    }
}

/// The listener's filter chains for `filters`: plaintext (`tls` `None`), TLS (`STRICT`), or
/// both told apart by the TLS inspector (`PERMISSIVE`); `tls` is the mode and the transport
/// socket of its TLS chain.
pub(crate) fn filter_chains(
    l_out: &mut listener::Listener,
    name: &str,
    filters: Vec<listener::Filter>,
    tls: Option<(&str, core::TransportSocket)>,
) {
    match tls {
        None => l_out.filter_chains.push(listener::FilterChain {
            filters,
            ..Default::default()
        }),
        Some((mode, socket)) => {
            let permissive = mode == "PERMISSIVE";
            let tls_chain = listener::FilterChain {
                name: format!("{name}/tls"),
                filters: filters.clone(),
                transport_socket: Some(socket),
                filter_chain_match: permissive.then(|| listener::FilterChainMatch {
                    transport_protocol: "tls".into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            l_out.filter_chains.push(tls_chain);
            if permissive {
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
                    filters,
                    ..Default::default()
                });
            }
        }
    }
}

/// A listener's own App Mesh `tls`, unless it is `DISABLED`: then the mesh's mTLS applies.
pub(crate) fn own_tls(l: &Listener) -> Option<&ListenerTls> {
    l.tls.as_ref().filter(|t| t.mode != "DISABLED")
}

/// A listener's App Mesh `tls` as [`filter_chains`] takes it (`None` when disabled).
pub(crate) fn listener_tls(t: Option<&ListenerTls>) -> Option<(&str, core::TransportSocket)> {
    t.filter(|t| t.mode != "DISABLED")
        .map(|t| (t.mode.as_str(), downstream_tls(t)))
}

/// Headers only Maille sets: removed from what the application sends to its egress listener,
/// before routing and before any filter, so that no client picks a cluster or a variant.
const MAILLE_HEADERS: [&str; 2] = [defaults::CLUSTER_HEADER, defaults::VARIANT_HEADER];

/// An HTTP connection manager on route configuration `rds` (from ADS) with `filters` before
/// the router; with `strip_maille_headers`, requests lose [`MAILLE_HEADERS`] first; each
/// request logged to `access_log`. At the mesh's `edge` (a gateway's listeners) the peer's
/// address is the client's: appended to X-Forwarded-For, and no client is taken as internal
/// (so none of its `x-envoy-*` headers is obeyed).
pub(crate) fn http_connection_manager(
    rds: &str,
    mut filters: Vec<hcm::HttpFilter>,
    tracing: Option<&str>,
    strip_maille_headers: bool,
    access_log: Vec<AccessLog>,
    strip_port: bool,
    edge: bool,
) -> listener::Filter {
    use envoy_types::pb::envoy::config::common::mutation_rules::v3 as rules;
    use envoy_types::pb::envoy::extensions::http::early_header_mutation::header_mutation::v3 as ehm;
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
        strip_port_mode: strip_port
            .then_some(hcm::http_connection_manager::StripPortMode::StripAnyHostPort(true)),
        http_filters: filters,
        use_remote_address: edge
            .then_some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
        internal_address_config: edge.then(|| {
            hcm::http_connection_manager::InternalAddressConfig {
                unix_sockets: false,
                cidr_ranges: Vec::new(),
            }
        }),
        tracing: tracing.map(trace_config),
        access_log,
        early_header_mutation_extensions: if strip_maille_headers {
            vec![core::TypedExtensionConfig {
                name: "envoy.http.early_header_mutation.header_mutation".into(),
                typed_config: Some(any(&ehm::HeaderMutation {
                    mutations: MAILLE_HEADERS
                        .iter()
                        .map(|h| rules::HeaderMutation {
                            action: Some(rules::header_mutation::Action::Remove((*h).into())),
                        })
                        .collect(),
                })),
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    listener::Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(any(&m))),
    }
}

/// Matches requests whose Host names `port` (or no port, when `port` is the router's first
/// listener's). The virtual host has already matched the service's name.
fn authority_port(port: u32, first: bool) -> route::HeaderMatcher {
    use envoy_types::pb::envoy::r#type::matcher::v3 as m;
    let pattern = if first {
        m::string_matcher::MatchPattern::SafeRegex(crate::route::regex(&format!(
            "^[^:]*(:{port})?$"
        )))
    } else {
        m::string_matcher::MatchPattern::Suffix(format!(":{port}"))
    };
    route::HeaderMatcher {
        name: ":authority".into(),
        header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
            m::StringMatcher {
                match_pattern: Some(pattern),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The node's collector sidecar as a gRPC service (the bootstrap's `maille_collector`).
pub(crate) fn collector_grpc() -> core::GrpcService {
    core::GrpcService {
        target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
            core::grpc_service::EnvoyGrpc {
                cluster_name: names::COLLECTOR_CLUSTER.into(),
                ..Default::default()
            },
        )),
        timeout: Some(ms(2_000)),
        ..Default::default()
    }
}

/// Envoy's OpenTelemetry tracer towards the node's collector, every request sampled, the
/// canary's variant header as the span tag the collector makes an annotation of.
fn trace_config(service: &str) -> hcm::http_connection_manager::Tracing {
    use envoy_types::pb::envoy::config::trace::v3 as trace;
    use envoy_types::pb::envoy::r#type::tracing::v3 as tag;
    let otel = trace::OpenTelemetryConfig {
        grpc_service: Some(collector_grpc()),
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

pub(crate) fn egress(
    out: &mut NodeConfig,
    cx: &Ctx<'_>,
    vn: &VirtualNode,
    opts: &NodeOptions,
    mesh_res: Option<&Resource>,
    logs: &[AccessLog],
) {
    let mesh = vn.mesh_name.as_str();
    let mut hosts = Vec::new();
    let mut http_filters = Vec::new();
    // Whether some route matches on the port: then Host keeps its port for routing.
    let mut by_port = false;
    // Maille `Filter`s run after the canary filters: the breaker reads the cluster the
    // canary chose from `x-maille-cluster`.
    let mut node_filters = Vec::new();

    // Maille Filters attached to this node, in name order.
    for f in cx.filters_for(mesh, &vn.virtual_node_name) {
        let runtime = f.spec.runtime;
        let file = runtime.file(&f.spec.module);
        let Some(module) = cx.module(&file) else {
            out.warnings.push(format!(
                "filter {:?}: module {file:?} is not served (missing from the modules folder)",
                f.filter_name
            ));
            continue;
        };
        let name = names::versioned(&names::filter(&f.filter_name), &module.sha256);
        let config = f.spec.config.to_string();
        let (ext, filter) = extension(runtime, &name, module, &f.spec.module, &config, false);
        out.filters.push(ext);
        node_filters.push(filter);
    }

    for b in &vn.spec.backends {
        let vs_name = &b.virtual_service.virtual_service_name;
        let Some(Resource::VirtualService(vs)) = cx.get(Kind::VirtualService, mesh, vs_name) else {
            continue;
        };
        let policy = b.virtual_service.client_policy.as_ref().or(vn
            .spec
            .backend_defaults
            .as_ref()
            .and_then(|d| d.client_policy.as_ref()));
        if tcp_backend(out, cx, vs, policy, opts, logs) {
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
                if let Some(target) = cx.node(mesh, &n.virtual_node_name) {
                    if let Some(c) = target_cluster(out, cx, target, None, policy) {
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
                let ports: Vec<u32> = match cx.get(
                    Kind::VirtualRouter,
                    mesh,
                    &r.virtual_router_name,
                ) {
                    Some(Resource::VirtualRouter(vr)) => {
                        let tcp = vr
                            .spec
                            .listeners
                            .iter()
                            .filter(|l| l.port_mapping.protocol == "tcp")
                            .count();
                        if tcp > 0 && tcp < vr.spec.listeners.len() {
                            out.warnings.push(format!(
                                    "virtual router {:?} mixes tcp and HTTP listeners: only its first listener's kind is served",
                                    r.virtual_router_name
                                ));
                        }
                        vr.spec
                            .listeners
                            .iter()
                            .map(|l| l.port_mapping.port)
                            .collect()
                    }
                    _ => Vec::new(),
                };
                for rt in cx.routes_of(mesh, &r.virtual_router_name) {
                    if rt.spec.tcp_route.is_some() {
                        continue;
                    }
                    match envoy_route(out, cx, rt, policy) {
                        Ok((mut route, filter)) => {
                            // A route for one of the router's ports: the port the caller
                            // named in Host (none: the router's first listener's).
                            if let Some(p) = crate::world::route_port(rt) {
                                by_port = true;
                                if !ports.contains(&p) {
                                    out.warnings.push(format!(
                                        "route {}/{}: match.port {p} is none of the router's listener ports {ports:?}: it never matches",
                                        rt.virtual_router_name, rt.route_name
                                    ));
                                }
                                if let Some(m) = route.r#match.as_mut() {
                                    m.headers.push(authority_port(p, ports.first() == Some(&p)));
                                }
                            }
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

    if mesh_res
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

    if by_port {
        // Host is no longer stripped of its port: every service is also `<name>:<port>`.
        for h in &mut hosts {
            let with_port: Vec<String> = h.domains.iter().map(|d| format!("{d}:*")).collect();
            h.domains.extend(with_port);
        }
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
                true,
                logs.to_vec(),
                !by_port,
                false,
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
    cx: &Ctx<'_>,
    vs: &VirtualService,
    policy: Option<&ClientPolicy>,
    opts: &NodeOptions,
    logs: &[AccessLog],
) -> bool {
    let mesh = vs.mesh_name.as_str();
    let provider = vs.spec.provider.as_ref();
    let (port, targets, idle): (u32, Vec<(String, u32)>, Option<u64>) = match (
        provider.and_then(|p| p.virtual_router.as_ref()),
        provider.and_then(|p| p.virtual_node.as_ref()),
    ) {
        (Some(r), _) => {
            let Some(Resource::VirtualRouter(vr)) =
                cx.get(Kind::VirtualRouter, mesh, &r.virtual_router_name)
            else {
                return false;
            };
            let Some(l) = vr.spec.listeners.first() else {
                return false;
            };
            if l.port_mapping.protocol != "tcp" {
                return false;
            }
            let Some(rt) = cx
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
                let Some(node) = cx.node(mesh, &t.virtual_node) else {
                    continue;
                };
                if let Some(c) = target_cluster(out, cx, node, t.port, policy) {
                    targets.push((c, t.weight));
                }
            }
            let idle = tr.timeout.as_ref().and_then(|t| t.idle).map(|d| d.millis());
            (l.port_mapping.port, targets, idle)
        }
        (None, Some(n)) => {
            let Some(node) = cx.node(mesh, &n.virtual_node_name) else {
                return false;
            };
            let Some(l) = node.spec.listeners.first() else {
                return false;
            };
            if l.port_mapping.protocol != "tcp" {
                return false;
            }
            let targets = target_cluster(out, cx, node, None, policy)
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
            filters: vec![tcp_proxy_filter(
                name.replace('/', "_"),
                spec,
                idle.unwrap_or(defaults::IDLE_TIMEOUT_MS),
                logs.to_vec(),
            )],
            ..Default::default()
        }],
        ..Default::default()
    });
    true
}

/// Envoy's TCP proxy to `cluster`, its stats under `stat_prefix`, closing connections idle
/// for `idle_ms`, each connection logged to `access_log`.
fn tcp_proxy_filter(
    stat_prefix: String,
    cluster: tcp_proxy::tcp_proxy::ClusterSpecifier,
    idle_ms: u64,
    access_log: Vec<AccessLog>,
) -> listener::Filter {
    listener::Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(any(
            &tcp_proxy::TcpProxy {
                stat_prefix,
                cluster_specifier: Some(cluster),
                idle_timeout: Some(ms(idle_ms)),
                access_log,
                ..Default::default()
            },
        ))),
    }
}
