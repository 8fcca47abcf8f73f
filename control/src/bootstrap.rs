//! The Envoy bootstrap of one virtual node's proxy: its node id and Maille metadata, an admin
//! listener, ADS towards this server, and the two static clusters that reach it.

use crate::admin::Endpoints;
use crate::names;
use crate::translate::NodeOptions;

fn cluster(name: &str, address: &str, port: u16, http2: bool) -> String {
    let kind = if address.parse::<std::net::IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let h2 = if http2 {
        "    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
"
    } else {
        ""
    };
    format!(
        "  - name: {name}
    type: {kind}
    connect_timeout: 1s
{h2}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {address}, port_value: {port} }}
"
    )
}

/// The bootstrap as YAML.
pub fn render(
    node_id: &str,
    virtual_node: &str,
    opts: &NodeOptions,
    admin_port: u16,
    server: &Endpoints,
) -> String {
    format!(
        "# Envoy bootstrap for {node_id}, from Maille's control server.
# Listeners, routes, clusters and filters come over ADS from {addr}:{xds}.
node:
  id: {node_id}
  cluster: {virtual_node}
  metadata:
    maille.ingress_port: {ingress}
    maille.egress_port: {egress}
    maille.listen_address: \"{listen}\"
    maille.app_address: \"{app}\"{otlp_md}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: {{ cluster_name: {xds_cluster} }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
{stats}static_resources:
  clusters:
{xds_c}{ctl_c}{col_c}",
        addr = server.advertise_address,
        xds = server.xds_port,
        ingress = opts.ingress_port,
        egress = opts.egress_port,
        listen = opts.listen_address,
        app = opts.app_address,
        otlp_md = opts
            .otlp_port
            .map(|p| format!("\n    maille.otlp_port: {p}"))
            .unwrap_or_default(),
        stats = if opts.otlp_port.is_some() {
            format!(
                "# Envoy's stats go to the collector sidecar too.
stats_flush_interval: 10s
stats_sinks:
- name: envoy.stat_sinks.open_telemetry
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig
    grpc_service:
      envoy_grpc: {{ cluster_name: {} }}
      timeout: 2s
    prefix: envoy
",
                names::COLLECTOR_CLUSTER
            )
        } else {
            String::new()
        },
        col_c = opts
            .otlp_port
            .map(|p| cluster(names::COLLECTOR_CLUSTER, "127.0.0.1", p, true))
            .unwrap_or_default(),
        xds_cluster = names::XDS_CLUSTER,
        xds_c = cluster(
            names::XDS_CLUSTER,
            &server.advertise_address,
            server.xds_port,
            true
        ),
        ctl_c = cluster(
            names::CONTROL_CLUSTER,
            &server.advertise_address,
            server.http_port,
            false
        ),
    )
}

/// A self-contained Envoy bootstrap (binary protobuf, for `envoy --mode validate -c x.pb`)
/// holding everything one node would get over ADS: routes inlined into their listeners,
/// ECDS filters inlined into their HTTP filter chains with the module read from
/// `module_file(sha256)`, EDS assignments inlined into their clusters. Envoy's full validation
/// of this file is a check of what the server generates.
pub fn static_bootstrap(
    node_id: &str,
    cfg: &crate::translate::NodeConfig,
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

    let inline_filter = |name: &str| -> Option<Any> {
        let ext = cfg.filters.iter().find(|f| f.name == name)?;
        let mut w = wasm_filter::Wasm::decode(ext.typed_config.as_ref()?.value.as_slice()).ok()?;
        if let Some(envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm::VmConfig(vm)) =
            w.config.as_mut().and_then(|c| c.vm.as_mut())
        {
            // The remote module's sha256 says which module file this is.
            let sha = match vm.code.as_ref().and_then(|c| c.specifier.as_ref()) {
                Some(core::async_data_source::Specifier::Remote(r)) => r.sha256.clone(),
                _ => String::new(),
            };
            vm.code = Some(core::AsyncDataSource {
                specifier: Some(core::async_data_source::Specifier::Local(
                    core::DataSource {
                        specifier: module_file(&sha).map(core::data_source::Specifier::Filename),
                        ..Default::default()
                    },
                )),
            });
        }
        Some(Any {
            type_url: wasm_filter::Wasm::type_url(),
            value: w.encode_to_vec(),
        })
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
                    *any = Any {
                        type_url: hcm::HttpConnectionManager::type_url(),
                        value: m.encode_to_vec(),
                    };
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
                c.load_assignment = cfg
                    .endpoints
                    .iter()
                    .find(|e| e.cluster_name == c.name)
                    .cloned();
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
