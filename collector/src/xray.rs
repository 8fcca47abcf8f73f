//! OpenTelemetry spans to X-Ray segment documents, and the X-Ray document rules checked.
//!
//! - Trace ids: `1-<first 8 hex>-<last 24 hex>` of the 128-bit id, whatever made it (X-Ray
//!   accepts W3C ids). Span ids: 16 hex.
//! - SERVER spans and spans without a parent become segments; others subsegments, sent as
//!   their own documents (`"type": "subsegment"`, with `parent_id`); CLIENT and PRODUCER
//!   subsegments get `"namespace": "remote"`.
//! - The `http` block comes from current and older attribute names (`http.request.method` or
//!   `http.method`, `http.response.status_code` or `http.status_code`, ...), and from string
//!   or integer values: Envoy sends `http.status_code` as a string.
//! - `error` (4xx), `throttle` (429) and `fault` (5xx, or span status ERROR) from status codes;
//!   `cause` from `exception` events.
//! - Annotations from a configured list of attributes plus the mesh's markers (canary variant,
//!   circuit state, upstream cluster), keys made X-Ray-safe; other attributes go to metadata.
//! - `origin` and the `aws` block from resource attributes (EC2, ECS/Fargate, EKS).
//! - A document over 64 KB loses metadata (largest values first) until it fits; the span is
//!   never dropped.

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use serde_json::{json, Map, Value};

/// Largest segment document X-Ray takes, bytes.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// Longest segment name.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest annotation key.
pub const MAX_ANNOTATION_KEY_CHARS: usize = 500;
/// Longest annotation string value.
pub const MAX_ANNOTATION_VALUE_CHARS: usize = 1000;
/// Most annotations per document (X-Ray allows 50 per trace).
pub const MAX_ANNOTATIONS: usize = 50;

/// Attributes that always become annotations: the mesh's own markers. Envoy writes request
/// headers into span tags by `custom_tags`; the canary filter's variant header is one.
pub const MESH_ANNOTATIONS: [&str; 5] = [
    "maille.variant",
    "x-maille-variant",
    "maille.circuit",
    "upstream_cluster",
    "upstream_cluster.name",
];

/// How spans become documents.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Attribute keys (besides [`MESH_ANNOTATIONS`]) to index as annotations.
    pub annotations: Vec<String>,
    /// Resource attributes used where a sender's resource lacks them: the collector's
    /// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME`. A sidecar on ECS or EKS sets them
    /// so that Envoy's spans (Envoy does not detect its platform) carry `origin` and `aws`.
    pub default_resource: Vec<(String, String)>,
}

impl Options {
    /// `default_resource` from the OpenTelemetry environment conventions:
    /// `OTEL_RESOURCE_ATTRIBUTES` (`key=value,...`, percent-encoded values) and
    /// `OTEL_SERVICE_NAME` (which wins for `service.name`).
    pub fn resource_from_env(
        resource_attributes: Option<&str>,
        service_name: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = resource_attributes
            .unwrap_or("")
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                let k = k.trim();
                (!k.is_empty()).then(|| (k.to_owned(), percent_decode(v.trim())))
            })
            .collect();
        if let Some(s) = service_name.filter(|s| !s.is_empty()) {
            out.retain(|(k, _)| k != "service.name");
            out.push(("service.name".into(), s.to_owned()));
        }
        out
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn attr_value(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => serde_json::Number::from_f64(*d)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(attr_value).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(
            kv.values
                .iter()
                .filter_map(|k| Some((k.key.clone(), attr_value(k.value.as_ref()?))))
                .collect(),
        ),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex(b)),
        // Profiles' string-table references carry no value on their own.
        Some(any_value::Value::StringValueStrindex(_)) | None => Value::Null,
    }
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 0xf)] as char);
    }
    s
}

/// Attributes as a map of JSON values.
pub fn attributes(kvs: &[KeyValue]) -> Map<String, Value> {
    kvs.iter()
        .filter_map(|kv| Some((kv.key.clone(), attr_value(kv.value.as_ref()?))))
        .collect()
}

/// The X-Ray trace id of a 128-bit OpenTelemetry trace id.
pub fn trace_id(id: &[u8]) -> Option<String> {
    (id.len() == 16 && id.iter().any(|b| *b != 0))
        .then(|| format!("1-{}-{}", hex(&id[..4]), hex(&id[4..])))
}

/// `name` with what X-Ray refuses replaced by `_`, at most 200 characters.
pub fn segment_name(name: &str) -> String {
    segment_name_if_changed(name).unwrap_or_else(|| name.to_owned())
}

/// [`segment_name`], `None` when the name is fine as it is.
fn segment_name_if_changed(name: &str) -> Option<String> {
    let allowed = |c: char| c.is_alphanumeric() || c.is_whitespace() || "_.:/%&#=+\\-@".contains(c);
    if name.len() <= MAX_NAME_CHARS && !name.trim().is_empty() && name.chars().all(allowed) {
        return None;
    }
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() || "_.:/%&#=+\\-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME_CHARS)
        .collect();
    if s.trim().is_empty() {
        s = "unknown".into();
    }
    Some(s)
}

/// An annotation key X-Ray accepts: letters, digits and `_`.
pub fn annotation_key(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(MAX_ANNOTATION_KEY_CHARS)
        .collect()
}

fn first<'a>(attrs: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .find_map(|k| attrs.get(*k).filter(|v| !v.is_null()))
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Keys read into the `http` block (kept out of metadata).
const HTTP_KEYS: [&str; 22] = [
    "http.request.method",
    "http.method",
    "url.full",
    "http.url",
    "url.scheme",
    "http.scheme",
    "server.address",
    "http.host",
    "url.path",
    "http.target",
    "user_agent.original",
    "http.user_agent",
    "user_agent",
    "client.address",
    "http.client_ip",
    "http.response.status_code",
    "http.status_code",
    "http.response.body.size",
    "http.response_content_length",
    "response_size",
    "x_forwarded_for",
    "http.request.header.x_forwarded_for",
];

fn http_block(attrs: &Map<String, Value>) -> (Option<Value>, Option<i64>) {
    let mut req = Map::new();
    if let Some(m) = first(attrs, &["http.request.method", "http.method"]).and_then(as_str) {
        req.insert("method".into(), json!(m));
    }
    let url = first(attrs, &["url.full", "http.url"])
        .and_then(as_str)
        .or_else(|| {
            let host = first(attrs, &["server.address", "http.host"]).and_then(as_str)?;
            let scheme = first(attrs, &["url.scheme", "http.scheme"])
                .and_then(as_str)
                .unwrap_or_else(|| "http".into());
            let path = first(attrs, &["url.path", "http.target"])
                .and_then(as_str)
                .unwrap_or_default();
            Some(format!("{scheme}://{host}{path}"))
        });
    if let Some(u) = url {
        req.insert("url".into(), json!(u));
    }
    if let Some(ua) = first(
        attrs,
        &["user_agent.original", "http.user_agent", "user_agent"],
    )
    .and_then(as_str)
    {
        req.insert("user_agent".into(), json!(ua));
    }
    if let Some(ip) = first(attrs, &["client.address", "http.client_ip"]).and_then(as_str) {
        req.insert("client_ip".into(), json!(ip));
    }
    let status = first(attrs, &["http.response.status_code", "http.status_code"]).and_then(as_int);
    let mut resp = Map::new();
    if let Some(s) = status {
        resp.insert("status".into(), json!(s));
    }
    if let Some(len) = first(
        attrs,
        &[
            "http.response.body.size",
            "http.response_content_length",
            "response_size",
        ],
    )
    .and_then(as_int)
    {
        resp.insert("content_length".into(), json!(len));
    }
    if req.is_empty() && resp.is_empty() {
        return (None, status);
    }
    let mut http = Map::new();
    if !req.is_empty() {
        http.insert("request".into(), Value::Object(req));
    }
    if !resp.is_empty() {
        http.insert("response".into(), Value::Object(resp));
    }
    (Some(Value::Object(http)), status)
}

fn origin_and_aws(res: &Map<String, Value>) -> (Option<&'static str>, Option<Value>) {
    let get = |k: &str| res.get(k).and_then(as_str);
    match get("cloud.platform").as_deref() {
        Some("aws_ec2") => (
            Some("AWS::EC2::Instance"),
            Some(
                json!({"ec2": {"instance_id": get("host.id"), "availability_zone": get("cloud.availability_zone")}}),
            ),
        ),
        Some("aws_ecs") => (
            Some("AWS::ECS::Container"),
            Some(
                json!({"ecs": {"container": get("container.name").or_else(|| get("host.name")),
                                 "container_id": get("container.id"),
                                 "task_arn": get("aws.ecs.task.arn"),
                                 "launch_type": get("aws.ecs.launchtype"),
                                 "availability_zone": get("cloud.availability_zone")}}),
            ),
        ),
        Some("aws_eks") => (
            Some("AWS::EKS::Container"),
            Some(
                json!({"eks": {"pod": get("k8s.pod.name"), "cluster_name": get("k8s.cluster.name"),
                                 "container_id": get("container.id")}}),
            ),
        ),
        _ => (None, None),
    }
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, x| !x.is_null());
        for x in m.values_mut() {
            strip_nulls(x);
        }
    }
}

/// Whether attribute `key` becomes an annotation: the mesh's markers and the configured ones.
fn is_annotation(key: &str, opts: &Options) -> bool {
    MESH_ANNOTATIONS.contains(&key) || opts.annotations.iter().any(|a| a == key)
}

/// The annotation key of attribute `key`: X-Ray-safe, and the variant under one name
/// whichever tag carried it.
fn annotation_name(key: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    if key == "x-maille-variant" {
        Cow::Borrowed("maille_variant")
    } else if key.len() <= MAX_ANNOTATION_KEY_CHARS
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(annotation_key(key))
    }
}

/// The first [`MAX_ANNOTATION_VALUE_CHARS`] characters of an annotation's text.
fn annotation_text(s: &str) -> &str {
    s.char_indices()
        .nth(MAX_ANNOTATION_VALUE_CHARS)
        .map_or(s, |(cut, _)| &s[..cut])
}

/// The document flags an HTTP status and the span's status set: 429 `error` + `throttle`,
/// 4xx `error`, 5xx `fault`, else a span status ERROR `fault`.
fn status_flags(status: Option<i64>, span: &Span) -> &'static [&'static str] {
    let span_error = span
        .status
        .as_ref()
        .is_some_and(|s| s.code == StatusCode::Error as i32);
    match status {
        Some(429) => &["error", "throttle"],
        Some(s) if (400..500).contains(&s) => &["error"],
        Some(s) if s >= 500 => &["fault"],
        _ if span_error => &["fault"],
        _ => &[],
    }
}

/// One span as an X-Ray document. `None` for a span without valid trace or span ids (it
/// cannot be placed in any trace; the caller counts it as dropped with that reason).
pub fn span_to_document(span: &Span, resource: Option<&Resource>, opts: &Options) -> Option<Value> {
    let mut doc = span_document(span, &ResourceView::new(resource, opts), opts)?;
    fit(&mut doc);
    Some(doc)
}

/// One span as an X-Ray document, serialised: its id and its JSON, within
/// [`MAX_DOCUMENT_BYTES`] (see [`fit`]). The receivers' path: serialised once unless it must
/// be trimmed.
pub fn span_to_json(
    span: &Span,
    resource: &ResourceView,
    opts: &Options,
) -> Option<(String, String)> {
    if let Some(json) = direct::document(span, resource, opts) {
        if json.len() <= MAX_DOCUMENT_BYTES {
            return Some((hex(&span.span_id), json));
        }
    }
    // Everything the direct writer leaves alone (exceptions, structured or repeated
    // attributes, documents to trim) goes through the document tree.
    let mut doc = span_document(span, resource, opts)?;
    let to_json = |d: &Value| serde_json::to_string(d).unwrap_or_default();
    let mut json = to_json(&doc);
    if json.len() > MAX_DOCUMENT_BYTES {
        fit(&mut doc);
        json = to_json(&doc);
    }
    Some((hex(&span.span_id), json))
}

/// The common span written straight to JSON, without building a document tree: the same
/// document as [`span_document`] (the tests compare them), for spans whose attributes are
/// plain (strings, integers, booleans, finite doubles), distinct, and within the annotation
/// limit, and that carry no exceptions. `None` hands the span to the tree.
mod direct {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    use std::borrow::Cow;

    struct W(Vec<u8>);

    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    impl W {
        fn raw(&mut self, s: &str) {
            self.0.extend_from_slice(s.as_bytes());
        }
        fn str(&mut self, s: &str) {
            let _ = serde_json::to_writer(&mut self.0, s);
        }
        fn key(&mut self, first: &mut bool, k: &str) {
            if !std::mem::take(first) {
                self.0.push(b',');
            }
            self.str(k);
            self.0.push(b':');
        }
        /// `"1-<8 hex>-<24 hex>"`, as [`trace_id`] writes it.
        fn trace_id(&mut self, id: &[u8]) {
            self.raw("\"1-");
            self.hex_digits(&id[..4]);
            self.0.push(b'-');
            self.hex_digits(&id[4..]);
            self.0.push(b'"');
        }
        fn hex_digits(&mut self, b: &[u8]) {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            for x in b {
                self.0.push(DIGITS[usize::from(x >> 4)]);
                self.0.push(DIGITS[usize::from(x & 0xf)]);
            }
        }
        fn hex_str(&mut self, b: &[u8]) {
            self.0.push(b'"');
            self.hex_digits(b);
            self.0.push(b'"');
        }
        fn value(&mut self, v: &V) {
            match v {
                V::StringValue(s) => self.str(s),
                V::IntValue(i) => {
                    let _ = serde_json::to_writer(&mut self.0, i);
                }
                V::BoolValue(b) => self.raw(if *b { "true" } else { "false" }),
                V::DoubleValue(d) => {
                    let _ = serde_json::to_writer(&mut self.0, d);
                }
                _ => self.raw("null"),
            }
        }
    }

    fn plain(v: &AnyValue) -> Option<&V> {
        match v.value.as_ref()? {
            V::DoubleValue(d) if !d.is_finite() => None,
            p @ (V::StringValue(_) | V::IntValue(_) | V::BoolValue(_) | V::DoubleValue(_)) => {
                Some(p)
            }
            _ => None,
        }
    }

    fn text(v: &V) -> Option<Cow<'_, str>> {
        match v {
            V::StringValue(s) => Some(Cow::Borrowed(s)),
            V::IntValue(i) => Some(Cow::Owned(i.to_string())),
            V::BoolValue(b) => Some(Cow::Owned(b.to_string())),
            V::DoubleValue(d) => {
                serde_json::Number::from_f64(*d).map(|n| Cow::Owned(n.to_string()))
            }
            _ => None,
        }
    }

    fn int(v: &V) -> Option<i64> {
        match v {
            V::IntValue(i) => Some(*i),
            V::StringValue(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    pub(super) fn document(span: &Span, res: &ResourceView, opts: &Options) -> Option<String> {
        if span.trace_id.len() != 16 || span.trace_id.iter().all(|b| *b == 0) {
            return None;
        }
        if span.span_id.len() != 8 || span.events.iter().any(|e| e.name == "exception") {
            return None;
        }
        let mut attrs: Vec<(&str, &V)> = Vec::with_capacity(span.attributes.len());
        for kv in &span.attributes {
            let v = plain(kv.value.as_ref()?)?;
            if attrs.iter().any(|(k, _)| *k == kv.key) {
                return None;
            }
            attrs.push((kv.key.as_str(), v));
        }
        let get = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| attrs.iter().find(|(a, _)| a == k).map(|(_, v)| *v))
        };
        // Annotations first: anything unusual goes to the tree before writing starts.
        let mut annotations: Vec<(Cow<'_, str>, &V)> = Vec::new();
        for (k, v) in &attrs {
            if is_annotation(k, opts) {
                let key = annotation_name(k);
                if annotations.len() == MAX_ANNOTATIONS
                    || annotations.iter().any(|(a, _)| *a == key)
                {
                    return None;
                }
                annotations.push((key, v));
            }
        }
        let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
        let has_parent =
            span.parent_span_id.len() == 8 && span.parent_span_id.iter().any(|b| *b != 0);
        let is_segment = kind == SpanKind::Server || !has_parent;
        let name: Cow<'_, str> = if is_segment {
            Cow::Borrowed(res.service.as_deref().unwrap_or(&span.name))
        } else {
            get(&[
                "peer.service",
                "upstream_cluster",
                "server.address",
                "net.peer.name",
                "http.host",
            ])
            .and_then(text)
            .unwrap_or(Cow::Borrowed(&span.name))
        };
        // A buffer kept per thread: the document is written there, then copied out at its
        // exact size (the queue may hold 100,000 of them).
        let mut w = W(SCRATCH.with(|b| std::mem::take(&mut *b.borrow_mut())));
        w.0.clear();
        let mut first = true;
        w.raw("{");
        w.key(&mut first, "name");
        match segment_name_if_changed(&name) {
            Some(n) => w.str(&n),
            None => w.str(&name),
        }
        w.key(&mut first, "id");
        w.hex_str(&span.span_id);
        w.key(&mut first, "trace_id");
        w.trace_id(&span.trace_id);
        w.key(&mut first, "start_time");
        let _ = serde_json::to_writer(&mut w.0, &(span.start_time_unix_nano as f64 / 1e9));
        w.key(&mut first, "end_time");
        let end = span.end_time_unix_nano.max(span.start_time_unix_nano);
        let _ = serde_json::to_writer(&mut w.0, &(end as f64 / 1e9));
        if has_parent {
            w.key(&mut first, "parent_id");
            w.hex_str(&span.parent_span_id);
        }
        if !is_segment {
            w.key(&mut first, "type");
            w.str("subsegment");
            if matches!(kind, SpanKind::Client | SpanKind::Producer) {
                w.key(&mut first, "namespace");
                w.str("remote");
            }
        }
        // The http block, as `http_block` builds it.
        let method = get(&["http.request.method", "http.method"]).and_then(text);
        let url = get(&["url.full", "http.url"]).and_then(text).or_else(|| {
            let host = get(&["server.address", "http.host"]).and_then(text)?;
            let scheme = get(&["url.scheme", "http.scheme"])
                .and_then(text)
                .unwrap_or(Cow::Borrowed("http"));
            let path = get(&["url.path", "http.target"])
                .and_then(text)
                .unwrap_or_default();
            Some(Cow::Owned(format!("{scheme}://{host}{path}")))
        });
        let agent = get(&["user_agent.original", "http.user_agent", "user_agent"]).and_then(text);
        let ip = get(&["client.address", "http.client_ip"]).and_then(text);
        let status = get(&["http.response.status_code", "http.status_code"]).and_then(int);
        let length = get(&[
            "http.response.body.size",
            "http.response_content_length",
            "response_size",
        ])
        .and_then(int);
        let request = [
            ("method", method),
            ("url", url),
            ("user_agent", agent),
            ("client_ip", ip),
        ];
        let has_request = request.iter().any(|(_, v)| v.is_some());
        if has_request || status.is_some() || length.is_some() {
            w.key(&mut first, "http");
            w.raw("{");
            let mut first_http = true;
            if has_request {
                w.key(&mut first_http, "request");
                w.raw("{");
                let mut f = true;
                for (k, v) in &request {
                    if let Some(v) = v {
                        w.key(&mut f, k);
                        w.str(v);
                    }
                }
                w.raw("}");
            }
            if status.is_some() || length.is_some() {
                w.key(&mut first_http, "response");
                w.raw("{");
                let mut f = true;
                for (k, v) in [("status", status), ("content_length", length)] {
                    if let Some(v) = v {
                        w.key(&mut f, k);
                        let _ = serde_json::to_writer(&mut w.0, &v);
                    }
                }
                w.raw("}");
            }
            w.raw("}");
        }
        let flags = status_flags(status, span);
        for f in flags {
            w.key(&mut first, f);
            w.raw("true");
        }
        if !annotations.is_empty() {
            w.key(&mut first, "annotations");
            w.raw("{");
            let mut f = true;
            for (k, v) in &annotations {
                w.key(&mut f, k);
                match v {
                    V::StringValue(s) => w.str(annotation_text(s)),
                    other => w.value(other),
                }
            }
            w.raw("}");
        }
        let mut f = true;
        for (k, v) in &attrs {
            if is_annotation(k, opts) || HTTP_KEYS.contains(k) {
                continue;
            }
            if f {
                w.key(&mut first, "metadata");
                w.raw("{\"default\":{");
            }
            w.key(&mut f, k);
            w.value(v);
        }
        if !f {
            w.raw("}}");
        }
        if is_segment {
            if let Some(o) = res.origin {
                w.key(&mut first, "origin");
                w.str(o);
            }
            if let Some(a) = &res.aws_json {
                w.key(&mut first, "aws");
                w.raw(a);
            }
        }
        w.raw("}");
        let out = std::str::from_utf8(&w.0).ok().map(str::to_owned);
        SCRATCH.with(|b| *b.borrow_mut() = w.0);
        out
    }
}

/// What a sender's resource contributes to its spans' documents, read once for all the
/// spans of a `ResourceSpans`: the service name, and `origin` and `aws` from its platform
/// attributes (filled in from [`Options::default_resource`] where it says nothing).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceView {
    service: Option<String>,
    origin: Option<&'static str>,
    aws: Option<Value>,
    aws_json: Option<String>,
}

impl ResourceView {
    /// Reads `resource` with the defaults of `opts`.
    pub fn new(resource: Option<&Resource>, opts: &Options) -> ResourceView {
        let mut res = resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for (k, v) in &opts.default_resource {
            res.entry(k.clone())
                .or_insert_with(|| Value::String(v.clone()));
        }
        let (origin, mut aws) = origin_and_aws(&res);
        if let Some(a) = aws.as_mut() {
            strip_nulls(a);
        }
        ResourceView {
            service: res.get("service.name").and_then(as_str),
            origin,
            aws_json: aws.as_ref().map(Value::to_string),
            aws,
        }
    }
}

/// The document of one span, before [`fit`].
fn span_document(span: &Span, res: &ResourceView, opts: &Options) -> Option<Value> {
    let trace = trace_id(&span.trace_id)?;
    if span.span_id.len() != 8 {
        return None;
    }
    let attrs = attributes(&span.attributes);
    let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
    let has_parent = span.parent_span_id.len() == 8 && span.parent_span_id.iter().any(|b| *b != 0);
    let is_segment = kind == SpanKind::Server || !has_parent;
    let service = res.service.clone().unwrap_or_else(|| span.name.clone());
    let name = if is_segment {
        service
    } else {
        first(
            &attrs,
            &[
                "peer.service",
                "upstream_cluster",
                "server.address",
                "net.peer.name",
                "http.host",
            ],
        )
        .and_then(as_str)
        .unwrap_or_else(|| span.name.clone())
    };
    let mut doc = Map::new();
    doc.insert("name".into(), json!(segment_name(&name)));
    doc.insert("id".into(), json!(hex(&span.span_id)));
    doc.insert("trace_id".into(), json!(trace));
    doc.insert(
        "start_time".into(),
        json!(span.start_time_unix_nano as f64 / 1e9),
    );
    doc.insert(
        "end_time".into(),
        json!(span.end_time_unix_nano.max(span.start_time_unix_nano) as f64 / 1e9),
    );
    if has_parent {
        doc.insert("parent_id".into(), json!(hex(&span.parent_span_id)));
    }
    if !is_segment {
        doc.insert("type".into(), json!("subsegment"));
        if matches!(kind, SpanKind::Client | SpanKind::Producer) {
            doc.insert("namespace".into(), json!("remote"));
        }
    }
    let (http, status) = http_block(&attrs);
    if let Some(h) = http {
        doc.insert("http".into(), h);
    }
    for f in status_flags(status, span) {
        doc.insert((*f).into(), json!(true));
    }
    // Exceptions.
    let exceptions: Vec<Value> = span
        .events
        .iter()
        .filter(|e| e.name == "exception")
        .enumerate()
        .map(|(i, e)| {
            let a = attributes(&e.attributes);
            let mut ex = json!({
                "id": format!("{}{:02x}", &hex(&span.span_id)[..14], i % 256),
                "type": a.get("exception.type").and_then(as_str),
                "message": a.get("exception.message").and_then(as_str),
            });
            if let Some(st) = a.get("exception.stacktrace").and_then(as_str) {
                ex["stack"] = Value::Array(
                    st.lines()
                        .take(50)
                        .map(|l| json!({"label": l.trim()}))
                        .collect(),
                );
            }
            strip_nulls(&mut ex);
            ex
        })
        .collect();
    if !exceptions.is_empty() {
        doc.insert("cause".into(), json!({"exceptions": exceptions}));
        if !doc.contains_key("fault") && !doc.contains_key("error") {
            doc.insert("fault".into(), json!(true));
        }
    }
    // Annotations and metadata.
    let mut annotations = Map::new();
    let mut metadata = Map::new();
    for (k, v) in attrs {
        if is_annotation(&k, opts) && annotations.len() < MAX_ANNOTATIONS {
            let v = match v {
                Value::String(s) => json!(annotation_text(&s)),
                Value::Number(_) | Value::Bool(_) => v,
                other => json!(annotation_text(&other.to_string())),
            };
            annotations.insert(annotation_name(&k).into_owned(), v);
        } else if !HTTP_KEYS.contains(&k.as_str()) {
            metadata.insert(k, v);
        }
    }
    if !annotations.is_empty() {
        doc.insert("annotations".into(), Value::Object(annotations));
    }
    if !metadata.is_empty() {
        doc.insert("metadata".into(), json!({ "default": metadata }));
    }
    if is_segment {
        if let Some(o) = res.origin {
            doc.insert("origin".into(), json!(o));
        }
        if let Some(a) = &res.aws {
            doc.insert("aws".into(), a.clone());
        }
    }
    Some(Value::Object(doc))
}

/// Trims metadata (largest values first), then exception stacks, until the document is
/// within [`MAX_DOCUMENT_BYTES`].
pub fn fit(doc: &mut Value) {
    let size = |d: &Value| serde_json::to_vec(d).map(|v| v.len()).unwrap_or(usize::MAX);
    while size(doc) > MAX_DOCUMENT_BYTES {
        let Some(md) = doc
            .get_mut("metadata")
            .and_then(|m| m.get_mut("default"))
            .and_then(Value::as_object_mut)
        else {
            break;
        };
        let Some(biggest) = md
            .iter()
            .max_by_key(|(_, v)| v.to_string().len())
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        md.remove(&biggest);
        md.insert("maille.trimmed".into(), json!(true));
        if md.len() == 1 {
            if let Some(o) = doc.as_object_mut() {
                o.remove("metadata");
            }
        }
    }
    while size(doc) > MAX_DOCUMENT_BYTES {
        let Some(exs) = doc
            .get_mut("cause")
            .and_then(|c| c.get_mut("exceptions"))
            .and_then(Value::as_array_mut)
        else {
            break;
        };
        let mut cut = false;
        for e in exs.iter_mut() {
            if let Some(o) = e.as_object_mut() {
                cut |= o.remove("stack").is_some();
                if let Some(Value::String(m)) = o.get_mut("message") {
                    if m.len() > 1024 {
                        m.truncate(1024);
                        cut = true;
                    }
                }
            }
        }
        if !cut {
            break;
        }
    }
}

fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a document against the X-Ray segment document rules; every problem found.
pub fn check_document(doc: &Value) -> Result<(), Vec<String>> {
    let mut e = Vec::new();
    let Some(o) = doc.as_object() else {
        return Err(vec!["a segment document is a JSON object".into()]);
    };
    let size = serde_json::to_vec(doc)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_DOCUMENT_BYTES {
        e.push(format!(
            "document is {size} bytes, over {MAX_DOCUMENT_BYTES}"
        ));
    }
    match o.get("name").and_then(Value::as_str) {
        None => e.push("name: required".into()),
        Some(n) => {
            if n.is_empty() || n.chars().count() > MAX_NAME_CHARS {
                e.push(format!(
                    "name: 1 to {MAX_NAME_CHARS} characters, got {}",
                    n.chars().count()
                ));
            }
            if let Some(c) = n.chars().find(|c| {
                !(c.is_alphanumeric() || c.is_whitespace() || "_.:/%&#=+\\-@".contains(*c))
            }) {
                e.push(format!("name: character {c:?} is not allowed"));
            }
        }
    }
    if !o
        .get("id")
        .and_then(Value::as_str)
        .is_some_and(|s| is_hex(s, 16))
    {
        e.push(format!(
            "id: 16 lowercase hex digits required, got {:?}",
            o.get("id")
        ));
    }
    match o.get("trace_id").and_then(Value::as_str) {
        Some(t) => {
            let parts: Vec<&str> = t.split('-').collect();
            if !(parts.len() == 3 && parts[0] == "1" && is_hex(parts[1], 8) && is_hex(parts[2], 24))
            {
                e.push(format!("trace_id: must be 1-<8 hex>-<24 hex>, got {t:?}"));
            }
        }
        None => e.push("trace_id: required".into()),
    }
    let start = o.get("start_time").and_then(Value::as_f64);
    let end = o.get("end_time").and_then(Value::as_f64);
    let in_progress = o.get("in_progress").and_then(Value::as_bool) == Some(true);
    match (start, end, in_progress) {
        (None, ..) => e.push("start_time: required (epoch seconds)".into()),
        (Some(_), None, false) => e.push("end_time or in_progress: required".into()),
        (Some(s), Some(t), _) if t < s => e.push(format!("end_time {t} is before start_time {s}")),
        _ => {}
    }
    if let Some(p) = o.get("parent_id") {
        if !p.as_str().is_some_and(|s| is_hex(s, 16)) {
            e.push(format!("parent_id: 16 hex digits required, got {p}"));
        }
    }
    if o.get("type").and_then(Value::as_str) == Some("subsegment") && o.get("parent_id").is_none() {
        e.push("a subsegment sent on its own needs parent_id".into());
    }
    if let Some(ns) = o.get("namespace").and_then(Value::as_str) {
        if ns != "aws" && ns != "remote" {
            e.push(format!("namespace: aws or remote, got {ns:?}"));
        }
    }
    if let Some(a) = o.get("annotations") {
        match a.as_object() {
            None => e.push("annotations: must be an object".into()),
            Some(m) => {
                if m.len() > MAX_ANNOTATIONS {
                    e.push(format!("annotations: at most {MAX_ANNOTATIONS}"));
                }
                for (k, v) in m {
                    if k.is_empty()
                        || k.len() > MAX_ANNOTATION_KEY_CHARS
                        || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        e.push(format!(
                            "annotations: key {k:?} must be letters, digits or _"
                        ));
                    }
                    match v {
                        Value::String(s) if s.chars().count() > MAX_ANNOTATION_VALUE_CHARS => e
                            .push(format!(
                                "annotations.{k}: longer than {MAX_ANNOTATION_VALUE_CHARS}"
                            )),
                        Value::String(_) | Value::Number(_) | Value::Bool(_) => {}
                        _ => e.push(format!(
                            "annotations.{k}: must be a string, number or boolean"
                        )),
                    }
                }
            }
        }
    }
    if let Some(s) = doc.pointer("/http/response/status") {
        if !s.is_i64() {
            e.push(format!("http.response.status: must be an integer, got {s}"));
        }
    }
    for flag in ["error", "fault", "throttle"] {
        if let Some(v) = o.get(flag) {
            if !v.is_boolean() {
                e.push(format!("{flag}: must be a boolean"));
            }
        }
    }
    if e.is_empty() {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{span::Event, Status};

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }
    fn s(k: &str, v: &str) -> KeyValue {
        kv(k, any_value::Value::StringValue(v.into()))
    }

    fn span(kind: SpanKind, parent: bool, attrs: Vec<KeyValue>) -> Span {
        Span {
            trace_id: (1..=16).collect(),
            span_id: vec![0xab; 8],
            parent_span_id: if parent { vec![0xcd; 8] } else { Vec::new() },
            name: "egress colorteller.local".into(),
            kind: kind as i32,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_250_000_000,
            attributes: attrs,
            ..Default::default()
        }
    }

    fn resource(attrs: Vec<KeyValue>) -> Resource {
        Resource {
            attributes: attrs,
            ..Default::default()
        }
    }

    #[test]
    fn envoy_client_span_with_string_status_becomes_remote_subsegment_with_fault() {
        // As Envoy 1.40's OpenTelemetry tracer sends an egress span.
        let sp = span(
            SpanKind::Client,
            true,
            vec![
                s("http.method", "GET"),
                s("http.url", "http://colorteller.local/color"),
                s("http.status_code", "503"),
                s("upstream_cluster", "node/colorteller-black/9080"),
                s("x-maille-variant", "colorteller-black"),
                s("user_agent", "curl/8.0"),
                s("component", "proxy"),
                s("response_flags", "UH"),
            ],
        );
        let doc = span_to_document(
            &sp,
            Some(&resource(vec![s("service.name", "gateway")])),
            &Options::default(),
        )
        .unwrap();
        check_document(&doc).unwrap();
        assert_eq!(doc["trace_id"], "1-01020304-05060708090a0b0c0d0e0f10");
        assert_eq!(doc["id"], "abababababababab");
        assert_eq!(doc["parent_id"], "cdcdcdcdcdcdcdcd");
        assert_eq!(doc["type"], "subsegment");
        assert_eq!(doc["namespace"], "remote");
        assert_eq!(doc["name"], "node/colorteller-black/9080");
        assert_eq!(doc["http"]["request"]["method"], "GET");
        assert_eq!(
            doc["http"]["request"]["url"],
            "http://colorteller.local/color"
        );
        assert_eq!(doc["http"]["request"]["user_agent"], "curl/8.0");
        assert_eq!(doc["http"]["response"]["status"], 503);
        assert_eq!(doc["fault"], true);
        assert!(doc.get("error").is_none());
        assert_eq!(doc["annotations"]["maille_variant"], "colorteller-black");
        assert_eq!(
            doc["annotations"]["upstream_cluster"],
            "node/colorteller-black/9080"
        );
        assert_eq!(doc["metadata"]["default"]["response_flags"], "UH");
        assert!(doc["metadata"]["default"].get("http.status_code").is_none());
        assert!(
            (doc["end_time"].as_f64().unwrap() - doc["start_time"].as_f64().unwrap() - 0.25).abs()
                < 1e-6
        );
    }

    #[test]
    fn server_span_is_a_segment_named_for_the_service_with_aws_origin() {
        let sp = span(
            SpanKind::Server,
            true,
            vec![
                s("http.request.method", "POST"),
                s("url.scheme", "https"),
                s("server.address", "colorgateway.demo.local"),
                s("url.path", "/color"),
                kv("http.response.status_code", any_value::Value::IntValue(429)),
            ],
        );
        let res = resource(vec![
            s("service.name", "color gateway!"),
            s("cloud.platform", "aws_ecs"),
            s(
                "aws.ecs.task.arn",
                "arn:aws:ecs:us-east-1:123456789012:task/c/abc",
            ),
            s("aws.ecs.launchtype", "fargate"),
            s("container.name", "gateway"),
        ]);
        let doc = span_to_document(&sp, Some(&res), &Options::default()).unwrap();
        check_document(&doc).unwrap();
        assert!(doc.get("type").is_none(), "a segment: {doc}");
        assert_eq!(doc["name"], "color gateway_");
        assert_eq!(
            doc["http"]["request"]["url"],
            "https://colorgateway.demo.local/color"
        );
        assert_eq!(doc["http"]["response"]["status"], 429);
        assert_eq!(
            (doc["error"].clone(), doc["throttle"].clone()),
            (json!(true), json!(true))
        );
        assert_eq!(doc["origin"], "AWS::ECS::Container");
        assert_eq!(doc["aws"]["ecs"]["launch_type"], "fargate");
        assert_eq!(doc["aws"]["ecs"]["container"], "gateway");
    }

    #[test]
    fn exceptions_become_cause_and_status_error_a_fault() {
        let mut sp = span(SpanKind::Internal, true, vec![]);
        sp.status = Some(Status {
            code: StatusCode::Error as i32,
            message: "boom".into(),
        });
        sp.events.push(Event {
            name: "exception".into(),
            attributes: vec![
                s("exception.type", "ValueError"),
                s("exception.message", "bad colour"),
                s(
                    "exception.stacktrace",
                    "Traceback:\n  file a.py line 3\n  file b.py line 9",
                ),
            ],
            ..Default::default()
        });
        let doc = span_to_document(&sp, None, &Options::default()).unwrap();
        check_document(&doc).unwrap();
        assert_eq!(doc["fault"], true);
        let ex = &doc["cause"]["exceptions"][0];
        assert_eq!(ex["type"], "ValueError");
        assert_eq!(ex["message"], "bad colour");
        assert_eq!(ex["stack"].as_array().unwrap().len(), 3);
        assert!(is_hex(ex["id"].as_str().unwrap(), 16));
        assert!(doc.get("namespace").is_none(), "internal spans are local");
    }

    #[test]
    fn configured_annotations_with_unsafe_keys_are_sanitised() {
        let sp = span(
            SpanKind::Server,
            false,
            vec![
                s("tenant.id", "acme"),
                kv("retries", any_value::Value::IntValue(2)),
            ],
        );
        let doc = span_to_document(
            &sp,
            None,
            &Options {
                annotations: vec!["tenant.id".into(), "retries".into()],
                ..Default::default()
            },
        )
        .unwrap();
        check_document(&doc).unwrap();
        assert_eq!(doc["annotations"]["tenant_id"], "acme");
        assert_eq!(doc["annotations"]["retries"], 2);
        assert!(doc.get("parent_id").is_none());
    }

    #[test]
    fn otel_environment_fills_what_the_sender_did_not_say() {
        let opts = Options {
            default_resource: Options::resource_from_env(
                Some("cloud.platform=aws_ecs,aws.ecs.task.arn=arn%3Aaws%3Aecs%3Aus-east-1%3A1%3Atask%2Fx, service.name=ignored"),
                Some("colorgateway"),
            ),
            ..Default::default()
        };
        // Envoy's resource says nothing of the platform.
        let sp = span(SpanKind::Server, false, vec![]);
        let doc = span_to_document(&sp, None, &opts).unwrap();
        assert_eq!(doc["name"], "colorgateway");
        assert_eq!(doc["origin"], "AWS::ECS::Container");
        assert_eq!(
            doc["aws"]["ecs"]["task_arn"],
            "arn:aws:ecs:us-east-1:1:task/x"
        );
        // What the sender says wins.
        let doc =
            span_to_document(&sp, Some(&resource(vec![s("service.name", "own")])), &opts).unwrap();
        assert_eq!(doc["name"], "own");
    }

    #[test]
    fn the_direct_writer_matches_the_document_tree_on_random_spans() {
        use opentelemetry_proto::tonic::trace::v1::{span::Event, Status};
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let keys = [
            "http.method",
            "http.request.method",
            "http.url",
            "url.full",
            "http.host",
            "server.address",
            "url.scheme",
            "url.path",
            "http.target",
            "user_agent",
            "client.address",
            "http.status_code",
            "http.response.status_code",
            "response_size",
            "upstream_cluster",
            "x-maille-variant",
            "maille.variant",
            "peer.service",
            "tenant",
            "a.b",
            "a_b",
            "plain",
            "quote\"key",
            "é",
        ];
        let opts = Options {
            annotations: vec!["tenant".into(), "a.b".into(), "a_b".into()],
            default_resource: vec![("cloud.platform".into(), "aws_eks".into())],
        };
        let res = resource(vec![s("service.name", "svc"), s("k8s.pod.name", "p-1")]);
        let view = ResourceView::new(Some(&res), &opts);
        let mut direct_taken = 0;
        for _ in 0..3000 {
            let mut attrs = Vec::new();
            for _ in 0..rng.random_range(0..8) {
                let k = keys[rng.random_range(0..keys.len())];
                let v = match rng.random_range(0..10) {
                    0 => any_value::Value::IntValue(rng.random_range(-5..700)),
                    1 => any_value::Value::BoolValue(rng.random()),
                    2 => {
                        any_value::Value::DoubleValue(f64::from(rng.random_range(0..900u32)) / 4.0)
                    }
                    3 if rng.random_range(0..10) == 0 => any_value::Value::DoubleValue(f64::NAN),
                    4 if rng.random_range(0..10) == 0 => {
                        any_value::Value::ArrayValue(Default::default())
                    }
                    5 => any_value::Value::StringValue(
                        ["200", " 503 ", "429", "x"][rng.random_range(0..4)].into(),
                    ),
                    _ => any_value::Value::StringValue(
                        ["GET", "colorteller", "a\"b\\c\n", "ünï", ""][rng.random_range(0..5)]
                            .repeat(rng.random_range(1..3)),
                    ),
                };
                attrs.push(kv(k, v));
            }
            let kind = [
                SpanKind::Server,
                SpanKind::Client,
                SpanKind::Internal,
                SpanKind::Producer,
            ][rng.random_range(0..4)];
            let mut sp = span(kind, rng.random(), attrs);
            if rng.random_range(0..8) == 0 {
                sp.status = Some(Status {
                    code: StatusCode::Error as i32,
                    ..Default::default()
                });
            }
            if rng.random_range(0..20) == 0 {
                sp.events.push(Event {
                    name: "exception".into(),
                    ..Default::default()
                });
            }
            let (_, json) = span_to_json(&sp, &view, &opts).unwrap();
            let tree = span_to_document(&sp, Some(&res), &opts).unwrap();
            assert_eq!(
                serde_json::from_str::<Value>(&json).unwrap(),
                tree,
                "{sp:?}"
            );
            direct_taken += usize::from(direct::document(&sp, &view, &opts).is_some());
        }
        assert!(
            direct_taken > 1500,
            "the direct writer took only {direct_taken} of 3000"
        );
    }

    #[test]
    fn the_receivers_serialised_path_gives_the_same_documents() {
        let big = "x".repeat(40_000);
        let res = resource(vec![
            s("service.name", "gateway"),
            s("cloud.platform", "aws_ecs"),
            s("aws.ecs.task.arn", "arn:aws:ecs:us-east-1:1:task/c/t"),
        ]);
        let opts = Options {
            annotations: vec!["tenant".into()],
            default_resource: vec![("container.name".into(), "envoy".into())],
        };
        let view = ResourceView::new(Some(&res), &opts);
        let spans = [
            span(
                SpanKind::Server,
                false,
                vec![s("http.status_code", "503"), s("tenant", "t1")],
            ),
            span(
                SpanKind::Client,
                true,
                vec![
                    s("x-maille-variant", &"v".repeat(1500)),
                    s("upstream_cluster", "c"),
                ],
            ),
            span(
                SpanKind::Server,
                true,
                vec![s("big.one", &big), s("big.two", &big), s("small", "kept")],
            ),
        ];
        for sp in &spans {
            let (id, json) = span_to_json(sp, &view, &opts).unwrap();
            let whole = span_to_document(sp, Some(&res), &opts).unwrap();
            assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), whole);
            assert_eq!(whole["id"], id);
            assert!(json.len() <= MAX_DOCUMENT_BYTES);
        }
        let long = span_to_document(&spans[1], Some(&res), &opts).unwrap();
        assert_eq!(
            long["annotations"]["maille_variant"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            MAX_ANNOTATION_VALUE_CHARS
        );
    }

    #[test]
    fn oversized_documents_lose_metadata_not_the_span() {
        let big = "x".repeat(40_000);
        let sp = span(
            SpanKind::Server,
            false,
            vec![
                s("big.one", &big),
                s("big.two", &big),
                s("small", "kept"),
                s("x-maille-variant", "canary"),
            ],
        );
        let doc = span_to_document(&sp, None, &Options::default()).unwrap();
        check_document(&doc).unwrap();
        let md = &doc["metadata"]["default"];
        assert_eq!(md["small"], "kept");
        assert_eq!(md["maille.trimmed"], true);
        assert!(md.get("big.one").is_none() || md.get("big.two").is_none());
        assert_eq!(doc["annotations"]["maille_variant"], "canary");
    }

    #[test]
    fn ids_that_cannot_be_placed_are_refused() {
        let mut sp = span(SpanKind::Server, false, vec![]);
        sp.trace_id = vec![0; 16];
        assert!(span_to_document(&sp, None, &Options::default()).is_none());
        let mut sp = span(SpanKind::Server, false, vec![]);
        sp.span_id = vec![1, 2, 3];
        assert!(span_to_document(&sp, None, &Options::default()).is_none());
    }

    #[test]
    fn the_checker_catches_what_xray_refuses() {
        let bad = json!({"name": "a*b", "id": "XYZ", "trace_id": "1-abc-def", "start_time": 10.0, "end_time": 5.0,
                         "type": "subsegment", "annotations": {"bad key": 1, "nested": {"a": 1}}, "fault": "yes"});
        let errs = check_document(&bad).unwrap_err();
        for want in [
            "name: character '*'",
            "id:",
            "trace_id:",
            "end_time 5 is before",
            "needs parent_id",
            "key \"bad key\"",
            "annotations.nested",
            "fault: must be a boolean",
        ] {
            assert!(errs.iter().any(|e| e.contains(want)), "{want} in {errs:?}");
        }
    }
}
