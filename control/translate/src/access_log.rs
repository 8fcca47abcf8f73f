//! A node's access logs: the file App Mesh's `logging.accessLog.file` names, in its format
//! (Envoy's default line when it gives none, as App Mesh did), and, when the node has a
//! collector sidecar, every request to the collector with Envoy's OpenTelemetry access
//! logger: the default line as the body and its fields, plus the trace id, the canary's
//! variant and the upstream cluster, as attributes. The collector writes them to CloudWatch
//! Logs, where the X-Ray trace id finds them.

use crate::options::{defaults, NodeOptions};
use crate::proto::*;
use envoy_types::pb::envoy::config::accesslog::v3 as accesslog;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as file;
use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3 as otel;
use envoy_types::pb::opentelemetry::proto::common::v1 as common;
use maille_model::VirtualNode;

/// Envoy's default access log line, which App Mesh wrote when a file log had no format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// The attributes of each record sent to the collector: the default line's fields, then
/// the mesh's (and `variant`, the canary's variant header).
pub const ATTRIBUTES: [(&str, &str); 17] = [
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("trace_id", "%TRACE_ID%"),
];

/// The access logs of `vn`'s listeners.
pub(crate) fn access_logs(vn: &VirtualNode, opts: &NodeOptions) -> Vec<accesslog::AccessLog> {
    let mut out = Vec::new();
    if let Some(f) = vn
        .spec
        .logging
        .as_ref()
        .and_then(|l| l.access_log.as_ref())
        .map(|a| &a.file)
    {
        let log = file::FileAccessLog {
            path: f.path.clone(),
            access_log_format: f
                .format
                .as_ref()
                .and_then(format)
                .map(file::file_access_log::AccessLogFormat::LogFormat),
        };
        out.push(accesslog::AccessLog {
            name: "envoy.access_loggers.file".into(),
            config_type: Some(accesslog::access_log::ConfigType::TypedConfig(any(&log))),
            ..Default::default()
        });
    }
    if opts.otlp_port.is_some() {
        out.push(to_collector(vn));
    }
    out
}

/// App Mesh's `LoggingFormat` (validated: `text`, or `json` of `key`/`value` strings) as
/// Envoy's.
fn format(f: &serde_json::Value) -> Option<core::SubstitutionFormatString> {
    use core::substitution_format_string::Format;
    if let Some(t) = f.get("text").and_then(|t| t.as_str()) {
        // A line per request, as App Mesh wrote them.
        let mut t = t.to_owned();
        if !t.ends_with('\n') {
            t.push('\n');
        }
        return Some(core::SubstitutionFormatString {
            format: Some(Format::TextFormatSource(core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(t)),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    let pairs = f.get("json")?.as_array()?;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let fields = pairs
        .iter()
        .filter_map(|p| {
            Some((
                p.get("key")?.as_str()?.to_owned(),
                Value {
                    kind: Some(Kind::StringValue(p.get("value")?.as_str()?.to_owned())),
                },
            ))
        })
        .collect();
    Some(core::SubstitutionFormatString {
        format: Some(Format::JsonFormat(Struct { fields })),
        ..Default::default()
    })
}

fn text(s: &str) -> common::AnyValue {
    common::AnyValue {
        value: Some(common::any_value::Value::StringValue(s.to_owned())),
    }
}

fn kv(k: &str, v: &str) -> common::KeyValue {
    common::KeyValue {
        key: k.to_owned(),
        value: Some(text(v)),
        ..Default::default()
    }
}

/// Envoy's OpenTelemetry access logger to the node's collector (cluster `maille_collector`).
fn to_collector(vn: &VirtualNode) -> accesslog::AccessLog {
    let mut attributes: Vec<common::KeyValue> = ATTRIBUTES.iter().map(|(k, v)| kv(k, v)).collect();
    attributes.push(kv(
        "variant",
        &format!("%REQ({})%", defaults::VARIANT_HEADER),
    ));
    let cfg = otel::OpenTelemetryAccessLogConfig {
        grpc_service: Some(crate::node::collector_grpc()),
        log_name: "maille_access_log".into(),
        body: Some(text(DEFAULT_FORMAT.trim_end())),
        attributes: Some(common::KeyValueList { values: attributes }),
        resource_attributes: Some(common::KeyValueList {
            values: vec![
                kv("service.name", &vn.virtual_node_name),
                kv("maille.mesh", &vn.mesh_name),
            ],
        }),
        ..Default::default()
    };
    accesslog::AccessLog {
        name: "envoy.access_loggers.open_telemetry".into(),
        config_type: Some(accesslog::access_log::ConfigType::TypedConfig(any(&cfg))),
        ..Default::default()
    }
}
