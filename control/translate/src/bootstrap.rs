//! The Envoy bootstrap of one virtual node's proxy: its node id and Maille metadata, an admin
//! listener, ADS towards the control server, and the static clusters that reach it (and the
//! node's collector sidecar, when it has one).
//!
//! Every parameter is checked first ([`BootstrapParams::new`]), and the document is written
//! by a serialiser (JSON, which Envoy reads as YAML too), so no value can add configuration of
//! its own.

use crate::names;
use crate::options::NodeOptions;
use serde_json::{json, Value};
use std::net::IpAddr;

/// Where Envoys reach the control server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlEndpoints {
    /// Address (IP or DNS name) Envoys use to reach the server.
    pub advertise_address: String,
    /// ADS (gRPC) port.
    pub xds_port: u16,
    /// HTTP port (admin API, modules, signals).
    pub http_port: u16,
    /// The other servers sharing its store, each `(address, ADS port, HTTP port)`: Envoy
    /// reaches any of them, and another when one is gone.
    pub peers: Vec<(String, u16, u16)>,
}

impl ControlEndpoints {
    /// Every server, this one first: `(address, ADS port, HTTP port)`.
    fn all(&self) -> Vec<(&str, u16, u16)> {
        let mut v = vec![(
            self.advertise_address.as_str(),
            self.xds_port,
            self.http_port,
        )];
        for (a, x, h) in &self.peers {
            if !v.contains(&(a.as_str(), *x, *h)) {
                v.push((a.as_str(), *x, *h));
            }
        }
        v
    }
}

/// How often Envoy sends its stats to its sinks.
pub const STATS_FLUSH: &str = "5s";

/// Envoy's admin port when none is asked for.
pub const DEFAULT_ADMIN_PORT: u16 = 9901;

/// A bootstrap parameter that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BootstrapError {
    /// The parameter (`node`, `listenAddress`, ...).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> BootstrapError {
    BootstrapError {
        field,
        message: message.into(),
    }
}

/// Checked parameters of one bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapParams {
    node_id: String,
    virtual_node: String,
    admin_port: u16,
    opts: NodeOptions,
}

/// Whether `s` is an IP address or a DNS name (RFC 1123 labels).
pub fn valid_host(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl BootstrapParams {
    /// Checks the parameters: a node id `mesh/<mesh>/virtualNode/<name>` (or
    /// `.../virtualGateway/<name>`) with valid names,
    /// ports above 0 and distinct, the listen address an IP address, the application's an IP
    /// address or a DNS name.
    pub fn new(
        node_id: &str,
        admin_port: u16,
        opts: NodeOptions,
    ) -> Result<BootstrapParams, BootstrapError> {
        let (mesh, vn) = names::parse_node_id(node_id).ok_or_else(|| {
            bad(
                "node",
                format!("{node_id:?} is not a node id: use mesh/<mesh>/virtualNode/<name> (or mesh/<mesh>/virtualGateway/<name> for a gateway)"),
            )
        })?;
        for n in [mesh, names::as_gateway(vn).unwrap_or(vn)] {
            if !maille_model::valid_name(n) {
                return Err(bad(
                    "node",
                    format!("{n:?} must be 1 to 255 letters, digits, '-' or '_'"),
                ));
            }
        }
        let mut ports = vec![
            ("adminPort", admin_port),
            ("ingressPort", opts.ingress_port),
            ("egressPort", opts.egress_port),
        ];
        if let Some(p) = opts.otlp_port {
            ports.push(("otlpPort", p));
        }
        for (i, (field, p)) in ports.iter().enumerate() {
            if *p == 0 {
                return Err(bad(field, "must be 1..=65535, got 0"));
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, q)| q == p) {
                return Err(bad(field, format!("{p} is already {other}")));
            }
        }
        if opts.listen_address.parse::<IpAddr>().is_err() {
            return Err(bad(
                "listenAddress",
                format!("must be an IP address, got {:?}", opts.listen_address),
            ));
        }
        if !valid_host(&opts.app_address) {
            return Err(bad(
                "appAddress",
                format!(
                    "must be an IP address or a DNS name, got {:?}",
                    opts.app_address
                ),
            ));
        }
        Ok(BootstrapParams {
            node_id: node_id.to_owned(),
            virtual_node: vn.to_owned(),
            admin_port,
            opts,
        })
    }
}

fn static_cluster(name: &str, address: &str, port: u16, http2: bool) -> Value {
    cluster_of(name, &[(address, port)], http2)
}

/// A cluster of `hosts` (IP addresses or DNS names, each with its port).
fn cluster_of(name: &str, hosts: &[(&str, u16)], http2: bool) -> Value {
    let kind = if hosts.iter().all(|(a, _)| a.parse::<IpAddr>().is_ok()) {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let endpoints: Vec<Value> = hosts
        .iter()
        .map(|(a, p)| {
            json!({"endpoint": {"address": {"socket_address": {"address": a, "port_value": p}}}})
        })
        .collect();
    let mut c = json!({
        "name": name,
        "type": kind,
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": endpoints}]
        }
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    c
}

/// What a proxy proves itself with and trusts the control server by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The node's token, sent on its ADS stream and stats export.
    pub node_token: String,
    /// The node's signal token, sent with every call on the control cluster (breaker signals).
    pub signal_token: String,
    /// The trust bundle (PEM) that the control server's certificate chains to.
    pub trust_bundle: String,
}

/// An HTTP/2 gRPC service on `cluster` that sends the node's token.
fn grpc_service(cluster: &str, token: &str) -> Value {
    json!({
        "envoy_grpc": {"cluster_name": cluster},
        "initial_metadata": [{"key": "authorization", "value": format!("Bearer {token}")}]
    })
}

/// The cluster of the control server's HTTP port (module downloads, breaker signals): every
/// request on it carries the node's signal token, added by an upstream filter, so the server
/// knows which node signals.
fn control_cluster(server: &ControlEndpoints, token: &str, trust: &str) -> Value {
    let hosts: Vec<(&str, u16)> = server.all().into_iter().map(|(a, _, h)| (a, h)).collect();
    let mut c = cluster_of(names::CONTROL_CLUSTER, &hosts, false);
    c["transport_socket"] = control_tls(trust, "http/1.1");
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http_protocol_options": {}},
            "http_filters": [
                {
                    "name": "envoy.filters.http.header_mutation",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                        "mutations": {"request_mutations": [{"append": {
                            "header": {"key": "authorization", "value": format!("Bearer {token}")},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"
                        }}]}
                    }
                },
                {
                    "name": "envoy.filters.http.upstream_codec",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
                    }
                }
            ]
        }
    });
    c
}

/// TLS to the control server: its certificate must chain to `trust` and name
/// [`names::CONTROL_SPIFFE_ID`].
fn control_tls(trust: &str, alpn: &str) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": [alpn],
                "validation_context": {
                    "trusted_ca": {"inline_string": trust},
                    "match_typed_subject_alt_names": [{
                        "san_type": "URI",
                        "matcher": {"exact": names::CONTROL_SPIFFE_ID}
                    }]
                }
            }
        }
    })
}

/// The bootstrap, as a JSON document (Envoy reads it as `.yaml` or `.json`). `server` is
/// the control server's own configuration, checked when it starts; ADS runs over TLS with
/// `creds`.
pub fn render(p: &BootstrapParams, server: &ControlEndpoints, creds: &Credentials) -> String {
    let o = &p.opts;
    let mut metadata = json!({
        "maille.ingress_port": o.ingress_port,
        "maille.egress_port": o.egress_port,
        "maille.listen_address": o.listen_address,
        "maille.app_address": o.app_address,
    });
    let hosts: Vec<(&str, u16)> = server.all().into_iter().map(|(a, x, _)| (a, x)).collect();
    let mut xds = cluster_of(names::XDS_CLUSTER, &hosts, true);
    xds["transport_socket"] = control_tls(&creds.trust_bundle, "h2");
    let mut clusters = vec![
        xds,
        control_cluster(server, &creds.signal_token, &creds.trust_bundle),
    ];
    let mut doc = json!({
        "node": {
            "id": p.node_id,
            "cluster": p.virtual_node,
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p.admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [grpc_service(names::XDS_CLUSTER, &creds.node_token)]
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"}
        },
    });
    // Envoy's stats, as deltas, to the control server (rollout analysis with no AWS at
    // all): over the ADS cluster's HTTP/2 connection, every 5 s.
    let mut stats_service = grpc_service(names::XDS_CLUSTER, &creds.node_token);
    stats_service["timeout"] = json!("2s");
    let mut sinks = vec![json!({
        "name": "envoy.stat_sinks.open_telemetry",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig",
            "grpc_service": stats_service,
            "report_counters_as_deltas": true,
            "report_histograms_as_deltas": true,
            "prefix": names::CONTROL_STATS_PREFIX
        }
    })];
    doc["stats_flush_interval"] = json!(STATS_FLUSH);
    if let Some(port) = o.otlp_port {
        metadata["maille.otlp_port"] = json!(port);
        // Envoy's stats go to the collector sidecar too.
        sinks.push(json!({
            "name": "envoy.stat_sinks.open_telemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig",
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": names::COLLECTOR_CLUSTER},
                    "timeout": "2s"
                },
                "prefix": "envoy"
            }
        }));
        clusters.push(static_cluster(
            names::COLLECTOR_CLUSTER,
            "127.0.0.1",
            port,
            true,
        ));
    }
    doc["stats_sinks"] = json!(sinks);
    doc["node"]["metadata"] = metadata;
    doc["static_resources"] = json!({ "clusters": clusters });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

/// A self-contained Envoy bootstrap (binary protobuf, for `envoy --mode validate -c x.pb`)
/// holding everything one node would get over ADS: routes inlined into their listeners,
/// ECDS filters inlined into their HTTP filter chains with the module read from
/// `module_file(sha256)`, EDS assignments inlined into their clusters. Envoy's full validation
/// of this file is a check of what the server generates.
pub fn static_bootstrap(
    node_id: &str,
    cfg: &crate::NodeConfig,
    module_file: impl Fn(&str) -> Option<String>,
) -> Vec<u8> {
    use envoy_types::pb::envoy::config::bootstrap::v3 as bootstrap;
    use envoy_types::pb::envoy::config::cluster::v3 as cluster;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::config::listener::v3 as listener;
    use envoy_types::pb::envoy::extensions::filters::http::wasm::v3 as wasm_filter;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use envoy_types::pb::google::protobuf::Any;
    use prost::{Message, Name};

    // A remote module becomes the local file with its sha256.
    let local = |code: Option<&core::AsyncDataSource>| -> core::AsyncDataSource {
        let sha = match code.and_then(|c| c.specifier.as_ref()) {
            Some(core::async_data_source::Specifier::Remote(r)) => r.sha256.clone(),
            _ => String::new(),
        };
        core::AsyncDataSource {
            specifier: Some(core::async_data_source::Specifier::Local(
                core::DataSource {
                    specifier: module_file(&sha).map(core::data_source::Specifier::Filename),
                    ..Default::default()
                },
            )),
        }
    };
    let inline_filter = |name: &str| -> Option<Any> {
        use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3 as dm_filter;
        let ext = cfg.filters.iter().find(|f| f.name == name)?;
        let any = ext.typed_config.as_ref()?;
        if any.type_url == dm_filter::DynamicModuleFilter::type_url() {
            let mut f = dm_filter::DynamicModuleFilter::decode(any.value.as_slice()).ok()?;
            if let Some(c) = f.dynamic_module_config.as_mut() {
                c.module = Some(local(c.module.as_ref()));
                // A static bootstrap has the file; there is nothing to wait for.
                c.nack_on_cache_miss = false;
            }
            return Some(crate::proto::any(&f));
        }
        let mut w = wasm_filter::Wasm::decode(any.value.as_slice()).ok()?;
        if let Some(envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm::VmConfig(vm)) =
            w.config.as_mut().and_then(|c| c.vm.as_mut())
        {
            vm.code = Some(local(vm.code.as_ref()));
        }
        Some(crate::proto::any(&w))
    };

    let listeners = cfg
        .listeners
        .iter()
        .cloned()
        .map(|mut l| {
            for chain in &mut l.filter_chains {
                for f in &mut chain.filters {
                    let Some(listener::filter::ConfigType::TypedConfig(any)) = &mut f.config_type
                    else {
                        continue;
                    };
                    if any.type_url != hcm::HttpConnectionManager::type_url() {
                        continue;
                    }
                    let Ok(mut m) = hcm::HttpConnectionManager::decode(any.value.as_slice()) else {
                        continue;
                    };
                    if let Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) =
                        &m.route_specifier
                    {
                        if let Some(rc) =
                            cfg.routes.iter().find(|r| r.name == rds.route_config_name)
                        {
                            m.route_specifier =
                                Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
                                    rc.clone(),
                                ));
                        }
                    }
                    for hf in &mut m.http_filters {
                        if let Some(hcm::http_filter::ConfigType::ConfigDiscovery(_)) =
                            hf.config_type
                        {
                            if let Some(a) = inline_filter(&hf.name) {
                                hf.config_type = Some(hcm::http_filter::ConfigType::TypedConfig(a));
                            }
                        }
                    }
                    *any = crate::proto::any(&m);
                }
            }
            l
        })
        .collect();
    let clusters = cfg
        .clusters
        .iter()
        .cloned()
        .map(|mut c| {
            if c.eds_cluster_config.is_some() {
                c.eds_cluster_config = None;
                c.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
                    cluster::cluster::DiscoveryType::Static as i32,
                ));
                // No assignment (a Cloud Map query not answered here): no endpoints.
                c.load_assignment = Some(
                    cfg.endpoints
                        .iter()
                        .find(|e| e.cluster_name == c.name)
                        .cloned()
                        .unwrap_or_else(|| {
                            envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
                                cluster_name: c.name.clone(),
                                ..Default::default()
                            }
                        }),
                );
            }
            c
        })
        .collect();
    bootstrap::Bootstrap {
        node: Some(core::Node {
            id: node_id.to_owned(),
            cluster: "maille-validate".into(),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::bootstrap::StaticResources {
            listeners,
            clusters,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ControlEndpoints {
        ControlEndpoints {
            peers: Vec::new(),
            advertise_address: "maille-control.maille-system.svc.cluster.local".into(),
            xds_port: 18000,
            http_port: 18080,
        }
    }

    #[test]
    fn every_parameter_is_checked_and_named() {
        let ok = NodeOptions::default();
        let cases: Vec<(&str, u16, NodeOptions, &str)> = vec![
            ("mesh/m/virtualNode/x\nadmin:", 9901, ok.clone(), "node"),
            ("m/x", 9901, ok.clone(), "node"),
            ("mesh/m/virtualNode/", 9901, ok.clone(), "node"),
            ("mesh/m/virtualNode/a", 0, ok.clone(), "adminPort"),
            ("mesh/m/virtualNode/a", 15000, ok.clone(), "ingressPort"),
            (
                "mesh/m/virtualNode/a",
                9901,
                NodeOptions {
                    listen_address: "0.0.0.0\nadmin: {}".into(),
                    ..ok.clone()
                },
                "listenAddress",
            ),
            (
                "mesh/m/virtualNode/a",
                9901,
                NodeOptions {
                    app_address: "app\".evil".into(),
                    ..ok.clone()
                },
                "appAddress",
            ),
            (
                "mesh/m/virtualNode/a",
                9901,
                NodeOptions {
                    otlp_port: Some(15001),
                    ..ok.clone()
                },
                "otlpPort",
            ),
        ];
        for (node, admin, opts, field) in cases {
            let e = BootstrapParams::new(node, admin, opts).unwrap_err();
            assert_eq!(e.field, field, "{node:?}: {e}");
        }
    }

    #[test]
    fn the_bootstrap_is_a_document_of_exactly_the_given_values() {
        let p = BootstrapParams::new(
            "mesh/colorapp/virtualNode/colorgateway",
            9901,
            NodeOptions {
                app_address: "app.local".into(),
                otlp_port: Some(4317),
                ..NodeOptions::default()
            },
        )
        .unwrap();
        let creds = Credentials {
            node_token: "tok".into(),
            signal_token: "sig".into(),
            trust_bundle: "PEM".into(),
        };
        let v: Value = serde_json::from_str(&render(&p, &server(), &creds)).unwrap();
        // ADS and the stats export send the token, over TLS to the control server's identity.
        let ads = &v["dynamic_resources"]["ads_config"]["grpc_services"][0];
        assert_eq!(ads["initial_metadata"][0]["value"], "Bearer tok");
        // The control cluster (signals) sends the signal token, not the node token.
        let control = &v["static_resources"]["clusters"][1];
        assert_eq!(control["name"], names::CONTROL_CLUSTER);
        let mutation = &control["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"][0]
            ["typed_config"]["mutations"]["request_mutations"][0]["append"]["header"];
        assert_eq!(mutation["value"], "Bearer sig");
        let sink = &v["stats_sinks"][0]["typed_config"]["grpc_service"];
        assert_eq!(sink["initial_metadata"][0]["value"], "Bearer tok");
        assert_eq!(sink["timeout"], "2s");
        // Both clusters to the control server (ADS; signals and modules) verify it.
        for (i, alpn) in [(0, "h2"), (1, "http/1.1")] {
            let ctx = &v["static_resources"]["clusters"][i]["transport_socket"]["typed_config"]
                ["common_tls_context"];
            assert_eq!(ctx["alpn_protocols"][0], alpn);
            let tls = &ctx["validation_context"];
            assert_eq!(tls["trusted_ca"]["inline_string"], "PEM");
            assert_eq!(
                tls["match_typed_subject_alt_names"][0]["matcher"]["exact"],
                names::CONTROL_SPIFFE_ID
            );
        }
        assert_eq!(v["node"]["id"], "mesh/colorapp/virtualNode/colorgateway");
        assert_eq!(v["node"]["cluster"], "colorgateway");
        assert_eq!(v["node"]["metadata"]["maille.app_address"], "app.local");
        assert_eq!(v["node"]["metadata"]["maille.otlp_port"], 4317);
        let names: Vec<&str> = v["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["maille_xds", "maille_control", "maille_collector"]);
        // A DNS name is resolved by Envoy; an IP is static.
        assert_eq!(v["static_resources"]["clusters"][0]["type"], "STRICT_DNS");
        assert_eq!(v["static_resources"]["clusters"][2]["type"], "STATIC");
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "admin",
                "dynamic_resources",
                "node",
                "static_resources",
                "stats_flush_interval",
                "stats_sinks"
            ]
        );
    }
}
