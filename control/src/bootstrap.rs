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
    maille.app_address: \"{app}\"
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
static_resources:
  clusters:
{xds_c}{ctl_c}",
        addr = server.advertise_address,
        xds = server.xds_port,
        ingress = opts.ingress_port,
        egress = opts.egress_port,
        listen = opts.listen_address,
        app = opts.app_address,
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
