//! The cluster that reaches a target virtual node: DNS or EDS, HTTP/2, client TLS, outlier
//! detection, health checks.

use crate::names;
use crate::node::*;
use crate::options::defaults;
use crate::proto::*;
use crate::tls::*;
use crate::world::CloudMapQuery;
use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use maille_model::*;

/// The cluster that reaches `target` on `port` (its first listener when `None`); adds the
/// cluster (and its EDS assignment) to `out`. `None` when the node has no listener. A DNS
/// name is resolved by the node's `ipPreference`, else its mesh's, else IPv4 first (App
/// Mesh's default).
pub(crate) fn target_cluster(
    out: &mut NodeConfig,
    cx: &crate::world::Ctx<'_>,
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
        c.dns_lookup_family = match dns
            .ip_preference
            .as_deref()
            .or_else(|| mesh_ip_preference(cx, target))
        {
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
        let mut eps: Vec<(&str, u32)> = sd
            .and_then(|s| s.endpoints.as_ref())
            .map(|eps| {
                eps.iter()
                    .map(|e| (e.address.as_str(), e.port.unwrap_or(port)))
                    .collect()
            })
            .unwrap_or_default();
        let mut unanswered = false;
        if let Some(cm) = sd.and_then(|s| s.aws_cloud_map.as_ref()) {
            // Until Cloud Map answers there is no assignment: a starting Envoy waits 1 s for
            // one (not Envoy's default 15 s) before it goes on with the cluster empty.
            if let Some(eds) = c
                .eds_cluster_config
                .as_mut()
                .and_then(|e| e.eds_config.as_mut())
            {
                eds.initial_fetch_timeout = Some(ms(1_000));
            }
            let preference = cm
                .ip_preference
                .as_deref()
                .or_else(|| mesh_ip_preference(cx, target));
            let answer = cx.cloud_map(&CloudMapQuery::from(cm));
            unanswered = answer.is_none();
            // Cloud Map registers one port per instance: the node's first listener's.
            let first = target.spec.listeners.first().map(|l| l.port_mapping.port) == Some(port);
            for i in answer.unwrap_or_default() {
                let (v4, v6) = (i.ipv4.as_deref(), i.ipv6.as_deref());
                let address = match preference {
                    Some("IPv4_ONLY") => v4,
                    Some("IPv6_ONLY") => v6,
                    Some("IPv6_PREFERRED") => v6.or(v4),
                    _ => v4.or(v6),
                };
                if let Some(a) = address {
                    eps.push((a, i.port.filter(|_| first).unwrap_or(port)));
                }
            }
            eps.sort_unstable();
            eps.dedup();
        }
        // A Cloud Map query not answered yet: no assignment at all, so that an Envoy keeps
        // the endpoints it has (this server restarted) and a new one waits for the answer.
        if !unanswered {
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
    }
    let proto = l.port_mapping.protocol.as_str();
    if proto == "http2" || proto == "grpc" {
        http2_upstream(&mut c);
    }
    match policy.and_then(|p| p.tls.as_ref()) {
        // The client policy's own TLS, where it applies, takes precedence over the mesh's.
        Some(t) if t.enforce.unwrap_or(true) && (t.ports.is_empty() || t.ports.contains(&port)) => {
            out.warnings.extend(ca_notes(
                &format!("clientPolicy.tls towards {:?}", target.virtual_node_name),
                t.certificate.as_ref(),
                Some(&t.validation.trust),
            ));
            c.transport_socket = Some(upstream_tls(t));
        }
        // The mesh's mTLS (as the target takes it), unless the target's listener has TLS of
        // its own.
        _ if own_tls(l).is_none() && node_mtls(cx, target).0 != MtlsMode::Disabled => {
            c.transport_socket = Some(mesh_upstream_tls(
                &names::spiffe_id(&target.mesh_name, &target.virtual_node_name),
                proto,
            ));
        }
        _ => {}
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

/// The `serviceDiscovery.ipPreference` of `target`'s mesh, if it sets one.
fn mesh_ip_preference<'a>(cx: &crate::world::Ctx<'a>, target: &VirtualNode) -> Option<&'a str> {
    match cx.get(Kind::Mesh, &target.mesh_name, &target.mesh_name) {
        Some(Resource::Mesh(m)) => m
            .spec
            .service_discovery
            .as_ref()
            .and_then(|sd| sd.ip_preference.as_deref()),
        _ => None,
    }
}

pub(crate) fn health_check(h: &HealthCheck) -> core::HealthCheck {
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

pub(crate) fn http2_upstream(c: &mut cluster::Cluster) {
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
