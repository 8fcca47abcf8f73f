//! A virtual gateway's Envoy: a listener per gateway listener, on the listener's own port,
//! whose routes are the gateway routes in App Mesh order; each hands the request, rewritten,
//! to the gateway's egress listener (on the loopback only), which routes it to the target
//! virtual service exactly as a virtual node's egress would (the service's router's routes
//! apply after the gateway's rewrite, as in App Mesh).

use crate::access_log::access_logs;
use crate::cluster::http2_upstream;
use crate::names;
use crate::node::{
    circuit_breakers, egress, filter_chains, http_connection_manager, listener_tls, NodeConfig,
};
use crate::options::{defaults, NodeOptions};
use crate::proto::*;
use crate::route::{exact_header, header_matcher, path_specifier, regex};
use crate::world::Ctx;
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use maille_model::*;

pub(crate) fn translate_gateway(
    cx: &Ctx<'_>,
    mesh: &str,
    name: &str,
    opts: &NodeOptions,
) -> NodeConfig {
    let mut out = NodeConfig::default();
    let mesh_res = cx.get(Kind::Mesh, mesh, mesh);
    let Some(Resource::VirtualGateway(gw)) = cx.get(Kind::VirtualGateway, mesh, name) else {
        out.warnings
            .push(format!("no virtual gateway {name:?} in mesh {mesh:?}"));
        return out;
    };
    let routes = cx.gateway_routes_of(mesh, name);

    // The egress half: a virtual node whose backends are the routes' targets.
    let mut backends: Vec<Backend> = Vec::new();
    for (_, t) in routes.iter().filter_map(|gr| gr.spec.target()) {
        let vs = &t.virtual_service.virtual_service_name;
        if !backends
            .iter()
            .any(|b| &b.virtual_service.virtual_service_name == vs)
        {
            backends.push(Backend {
                virtual_service: VirtualServiceBackend {
                    virtual_service_name: vs.clone(),
                    client_policy: None,
                },
            });
        }
    }
    let as_node = VirtualNode {
        mesh_name: mesh.to_owned(),
        virtual_node_name: names::gateway_proxy(name),
        spec: VirtualNodeSpec {
            listeners: Vec::new(),
            backends,
            backend_defaults: gw.spec.backend_defaults.clone(),
            service_discovery: None,
            logging: gw.spec.logging.clone(),
        },
        kubernetes: None,
        maille: None,
    };
    let logs = access_logs(&as_node, opts);
    // Only the gateway's own listeners take outside traffic.
    let inner = NodeOptions {
        listen_address: "127.0.0.1".into(),
        ..opts.clone()
    };
    // Each request is logged once, where the client is seen: on the gateway's listener.
    egress(&mut out, cx, &as_node, &inner, mesh_res, &[]);
    // App Mesh's gateway connection pool limits what the gateway sends upstream: the
    // clusters of its targets (App Mesh allows one listener; a second's pool is warned).
    let pools: Vec<&GatewayConnectionPool> = gw
        .spec
        .listeners
        .iter()
        .filter_map(|l| l.connection_pool.as_ref())
        .collect();
    if let Some(pool) = pools.first() {
        let cb = circuit_breakers(&ConnectionPool {
            http: pool.http.clone(),
            http2: pool.http2.clone(),
            grpc: pool.grpc.clone(),
            tcp: None,
        });
        for c in &mut out.clusters {
            c.circuit_breakers = Some(cb.clone());
        }
        if pools.len() > 1 {
            out.warnings.push(format!(
                "virtual gateway {name:?}: only the first listener's connectionPool applies (to every target cluster)"
            ));
        }
    }

    let hop = names::GATEWAY_EGRESS.to_owned();
    let mut c = cluster::Cluster {
        name: hop.clone(),
        connect_timeout: Some(ms(defaults::CONNECT_TIMEOUT_MS)),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: hop.clone(),
            endpoints: vec![locality(&[("127.0.0.1", u32::from(opts.egress_port))])],
            ..Default::default()
        }),
        ..Default::default()
    };
    // HTTP/2 to the egress listener carries HTTP/1, HTTP/2 and gRPC alike. Every request
    // of the gateway takes this hop: Envoy's default limits (1,024) must not apply to it;
    // the targets' clusters keep the real ones.
    http2_upstream(&mut c);
    c.circuit_breakers = Some(cluster::CircuitBreakers {
        thresholds: vec![cluster::circuit_breakers::Thresholds {
            max_connections: Some(u32v(u32::MAX)),
            max_pending_requests: Some(u32v(u32::MAX)),
            max_requests: Some(u32v(u32::MAX)),
            max_retries: Some(u32v(u32::MAX)),
            ..Default::default()
        }],
        ..Default::default()
    });
    out.clusters.push(c);

    let ports: Vec<u32> = gw
        .spec
        .listeners
        .iter()
        .map(|l| l.port_mapping.port)
        .collect();
    for gr in &routes {
        if let Some(p) = route_port(gr).filter(|p| !ports.contains(p)) {
            out.warnings.push(format!(
                "gateway route {}/{}: match.port {p} is none of the gateway's listener ports {ports:?}: it never matches",
                gr.virtual_gateway_name, gr.gateway_route_name
            ));
        }
    }
    for (i, l) in gw.spec.listeners.iter().enumerate() {
        let port = l.port_mapping.port;
        let rds = names::gateway_listener(port);
        let mut vhost = route::VirtualHost {
            name: format!("{rds}/routes"),
            domains: vec!["*".into()],
            ..Default::default()
        };
        // The gateway answers its own health checks on the path, ahead of every route.
        if let Some(h) = l.health_check.as_ref() {
            match (h.protocol.as_str(), &h.path, h.port) {
                ("http" | "http2", Some(path), p) if p.is_none_or(|p| p == port) => {
                    vhost.routes.push(health_route(&rds, path));
                }
                _ => out.warnings.push(format!(
                    "virtual gateway {name:?}: listener {port}: only an http or http2 healthCheck with a path and no port of its own is answered"
                )),
            }
        }
        for gr in routes
            .iter()
            .filter(|gr| route_port(gr).is_none_or(|p| p == port))
        {
            match envoy_gateway_route(gr, &hop) {
                Ok((r, warning)) => {
                    vhost.routes.push(r);
                    out.warnings.extend(warning);
                }
                Err(w) => out.warnings.push(w),
            }
        }
        out.routes.push(route::RouteConfiguration {
            name: rds.clone(),
            virtual_hosts: vec![vhost],
            ..Default::default()
        });
        let filter = http_connection_manager(
            &rds,
            Vec::new(),
            opts.otlp_port.map(|_| as_node.virtual_node_name.as_str()),
            true,
            logs.clone(),
            true,
            true,
        );
        let mut l_out = listener::Listener {
            name: rds.clone(),
            address: Some(socket(&opts.listen_address, port)),
            traffic_direction: core::TrafficDirection::Inbound as i32,
            ..Default::default()
        };
        if let Some(t) = &l.tls {
            out.warnings.extend(crate::tls::ca_notes(
                &format!("spec.listeners[{i}].tls"),
                Some(&t.certificate),
                t.validation.as_ref().map(|v| &v.trust),
            ));
        }
        filter_chains(&mut l_out, &rds, vec![filter], listener_tls(l.tls.as_ref()));
        out.listeners.push(l_out);
    }
    out
}

/// `200 ok` on `path`: what a load balancer checking the gateway gets while its Envoy is up.
fn health_route(rds: &str, path: &str) -> route::Route {
    route::Route {
        name: format!("{rds}/health"),
        r#match: Some(route::RouteMatch {
            path_specifier: Some(route::route_match::PathSpecifier::Path(path.to_owned())),
            ..Default::default()
        }),
        action: Some(route::route::Action::DirectResponse(
            route::DirectResponseAction {
                status: 200,
                body: Some(core::DataSource {
                    specifier: Some(core::data_source::Specifier::InlineString("ok\n".into())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

pub(crate) fn route_port(gr: &GatewayRoute) -> Option<u32> {
    let s = &gr.spec;
    s.http_route
        .as_ref()
        .or(s.http2_route.as_ref())
        .and_then(|h| h.matches.port)
        .or_else(|| s.grpc_route.as_ref().and_then(|g| g.matches.port))
}

/// How specific a gateway route's match is, for App Mesh's order among routes of the same
/// priority: an exact path, then a regex, then the longest prefix; then more conditions.
pub(crate) fn specificity(gr: &GatewayRoute) -> (u8, usize, usize) {
    let s = &gr.spec;
    if let Some(h) = s.http_route.as_ref().or(s.http2_route.as_ref()) {
        let m = &h.matches;
        let (rank, len) = match (&m.prefix, &m.path) {
            (Some(p), _) => (1, p.len()),
            (_, Some(PathMatch { exact: Some(e), .. })) => (3, e.len()),
            (_, Some(_)) => (2, 0),
            _ => (0, 0),
        };
        let conditions = m.headers.len()
            + m.query_parameters.len()
            + usize::from(m.hostname.is_some())
            + usize::from(m.method.is_some());
        (rank, len, conditions)
    } else if let Some(g) = &s.grpc_route {
        (
            1,
            g.matches.service_name.as_ref().map_or(0, |s| s.len()),
            g.matches.metadata.len() + usize::from(g.matches.hostname.is_some()),
        )
    } else {
        (0, 0, 0)
    }
}

fn hostname_matcher(h: &HostnameMatch) -> route::HeaderMatcher {
    // The listener strips any port from Host first.
    let pattern = match (&h.exact, &h.suffix) {
        (Some(e), _) => matcher::string_matcher::MatchPattern::Exact(e.clone()),
        (None, Some(s)) => matcher::string_matcher::MatchPattern::Suffix(s.clone()),
        (None, None) => matcher::string_matcher::MatchPattern::Prefix(String::new()),
    };
    route::HeaderMatcher {
        name: ":authority".into(),
        header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
            matcher::StringMatcher {
                match_pattern: Some(pattern),
                ignore_case: true,
            },
        )),
        ..Default::default()
    }
}

/// One gateway route as an Envoy route to `hop`, and a warning for what it cannot honour.
fn envoy_gateway_route(
    gr: &GatewayRoute,
    hop: &str,
) -> Result<(route::Route, Option<String>), String> {
    let id = format!(
        "gateway route {}/{}",
        gr.virtual_gateway_name, gr.gateway_route_name
    );
    let Some((_, t)) = gr.spec.target() else {
        return Err(format!(
            "{id}: no httpRoute, http2Route or grpcRoute (skipped)"
        ));
    };
    let vs = &t.virtual_service.virtual_service_name;
    let mut m = route::RouteMatch::default();
    let mut ra = route::RouteAction {
        cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
            hop.to_owned(),
        )),
        // The egress listener's routes keep their own timeouts and retries.
        timeout: Some(ms(0)),
        ..Default::default()
    };
    let mut warning = None;
    let hostname_rewrite;
    if let Some(h) = gr.spec.http_route.as_ref().or(gr.spec.http2_route.as_ref()) {
        let hm = &h.matches;
        m.path_specifier = Some(path_specifier(hm.prefix.as_ref(), hm.path.as_ref()));
        m.headers = hm.headers.iter().map(header_matcher).collect();
        if let Some(method) = &hm.method {
            m.headers.push(exact_header(":method", method));
        }
        if let Some(host) = &hm.hostname {
            m.headers.push(hostname_matcher(host));
        }
        m.query_parameters = hm
            .query_parameters
            .iter()
            .map(crate::route::query_matcher)
            .collect();
        let rw = h.action.rewrite.clone().unwrap_or_default();
        if let Some(p) = &rw.path {
            ra.regex_rewrite = Some(matcher::RegexMatchAndSubstitute {
                pattern: Some(regex("^.*$")),
                substitution: p.exact.clone(),
            });
        } else if let Some(prefix) = &hm.prefix {
            // App Mesh's default: the matched prefix becomes `/`.
            let to = match &rw.prefix {
                Some(PrefixRewrite { value: Some(v), .. }) => Some(v.clone()),
                Some(PrefixRewrite {
                    default_prefix: Some(d),
                    ..
                }) if d == "DISABLED" => None,
                _ => Some("/".to_owned()),
            };
            if let Some(to) = to.filter(|to| to != prefix) {
                if to.ends_with('/') && !prefix.ends_with('/') {
                    // `/color` -> `/`: `/color/x` becomes `/x`, not `//x`.
                    ra.regex_rewrite = Some(matcher::RegexMatchAndSubstitute {
                        pattern: Some(regex(&format!("^{}/?", regex_lite::escape(prefix)))),
                        substitution: to,
                    });
                } else {
                    ra.prefix_rewrite = to;
                }
            }
        }
        hostname_rewrite = rw.hostname;
    } else if let Some(g) = &gr.spec.grpc_route {
        let gm = &g.matches;
        m.path_specifier = Some(match &gm.service_name {
            Some(s) => route::route_match::PathSpecifier::Prefix(format!("/{s}/")),
            None => route::route_match::PathSpecifier::Prefix("/".into()),
        });
        m.headers = gm.metadata.iter().map(header_matcher).collect();
        if let Some(host) = &gm.hostname {
            m.headers.push(hostname_matcher(host));
        }
        m.grpc = Some(route::route_match::GrpcRouteMatchOptions {});
        hostname_rewrite = g.action.rewrite.as_ref().and_then(|r| r.hostname.clone());
    } else {
        return Err(format!(
            "{id}: no httpRoute, http2Route or grpcRoute (skipped)"
        ));
    }
    // The egress listener picks the virtual service by Host: it always becomes the target's
    // name (with the target port, when given).
    let host = match t.port {
        Some(p) => format!("{vs}:{p}"),
        None => vs.clone(),
    };
    if hostname_rewrite
        .and_then(|h| h.default_target_hostname)
        .is_some_and(|d| d == "DISABLED")
    {
        warning = Some(format!(
            "{id}: rewrite.hostname.defaultTargetHostname DISABLED is not honoured: the Host header becomes {vs:?}"
        ));
    }
    ra.host_rewrite_specifier =
        Some(route::route_action::HostRewriteSpecifier::HostRewriteLiteral(host));
    Ok((
        route::Route {
            name: names::gateway_route(&gr.virtual_gateway_name, &gr.gateway_route_name),
            r#match: Some(m),
            action: Some(route::route::Action::Route(ra)),
            ..Default::default()
        },
        warning,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::node_config;
    use crate::world::{World, NO_CLOUD_MAP};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use prost::Message;

    fn address(l: &listener::Listener) -> String {
        match l.address.as_ref().and_then(|a| a.address.as_ref()) {
            Some(core::address::Address::SocketAddress(s)) => s.address.clone(),
            _ => String::new(),
        }
    }

    #[test]
    fn only_the_gateway_listeners_face_clients_and_the_hop_is_unlimited() {
        let docs: Vec<Resource> = serde_json::from_value(serde_json::json!([
            {"mesh": {"meshName": "m", "spec": {}}},
            {"virtualNode": {"meshName": "m", "virtualNodeName": "a", "spec": {
                "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": "a.local"}}}}},
            {"virtualService": {"meshName": "m", "virtualServiceName": "a.local",
                "spec": {"provider": {"virtualNode": {"virtualNodeName": "a"}}}}},
            {"virtualGateway": {"meshName": "m", "virtualGatewayName": "gw", "spec": {
                "listeners": [{"portMapping": {"port": 8443, "protocol": "http"}}]}}},
            {"gatewayRoute": {"meshName": "m", "virtualGatewayName": "gw",
                "gatewayRouteName": "r", "spec": {"httpRoute": {"match": {"prefix": "/", "port": 9999},
                "action": {"target": {"virtualService": {"virtualServiceName": "a.local"}}}}}}}
        ]))
        .unwrap();
        let resources = maille_model::resources(docs);
        let modules = Default::default();
        let callers = crate::callers(&resources);
        let world = World {
            resources: &resources,
            modules: &modules,
            cloud_map: &NO_CLOUD_MAP,
            callers: &callers,
        };
        let opts = NodeOptions {
            listen_address: "0.0.0.0".into(),
            ..NodeOptions::default()
        };
        let cfg = node_config(world, "m", &names::gateway_proxy("gw"), &opts);
        let by_name: std::collections::BTreeMap<&str, String> = cfg
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), address(l)))
            .collect();
        assert_eq!(
            by_name.get(names::EGRESS).map(String::as_str),
            Some("127.0.0.1")
        );
        assert_eq!(
            by_name
                .get(names::gateway_listener(8443).as_str())
                .map(String::as_str),
            Some("0.0.0.0")
        );
        let hop = cfg
            .clusters
            .iter()
            .find(|c| c.name == names::GATEWAY_EGRESS)
            .unwrap();
        let t = &hop.circuit_breakers.as_ref().unwrap().thresholds[0];
        assert_eq!(t.max_requests.as_ref().map(|v| v.value), Some(u32::MAX));
        // The gateway's listener is the edge: the peer is the client.
        let gl = cfg
            .listeners
            .iter()
            .find(|l| l.name == names::gateway_listener(8443))
            .unwrap();
        let Some(listener::filter::ConfigType::TypedConfig(any)) =
            &gl.filter_chains[0].filters[0].config_type
        else {
            panic!("no HCM")
        };
        let m = hcm::HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        assert_eq!(m.use_remote_address.map(|v| v.value), Some(true));
        // A route on a port the gateway does not listen on is said.
        assert!(
            cfg.warnings
                .iter()
                .any(|w| w.contains("gateway route gw/r: match.port 9999")),
            "{:?}",
            cfg.warnings
        );
    }
}
