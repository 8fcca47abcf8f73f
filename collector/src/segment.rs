//! OpenTelemetry spans to X-Ray segment documents: a span's facts are read once
//! ([`Facts`]) and written straight to JSON by one writer, within X-Ray's 64 KB whatever
//! field holds the bulk.
//!
//! - Trace ids: `1-<first 8 hex>-<last 24 hex>` of the 128-bit id, whatever made it (X-Ray
//!   accepts W3C ids). Span ids: 16 hex.
//! - SERVER spans and spans without a parent become segments named after `service.name`;
//!   others subsegments, sent as their own documents (`"type": "subsegment"`, with
//!   `parent_id`), named after the peer; CLIENT and PRODUCER subsegments get
//!   `"namespace": "remote"`.
//! - The `http` block comes from current and older attribute names (`http.request.method` or
//!   `http.method`, `http.response.status_code` or `http.status_code`, ...), and from string
//!   or integer values: Envoy sends `http.status_code` as a string.
//! - `error` (4xx), `throttle` (429) and `fault` (5xx, span status ERROR, or exceptions
//!   without a status) from status codes; `cause` from `exception` events.
//! - Annotations from a configured list of attributes plus the mesh's markers (canary variant,
//!   circuit state, upstream cluster), keys made X-Ray-safe, values of at most 1,000
//!   characters, at most 50; the other attributes
//!   (and annotations beyond 50 or whose X-Ray key is taken) go to metadata. A repeated
//!   attribute key keeps its last value. NaN and the infinities are written as text.
//! - `origin` and the `aws` block from resource attributes (EC2, ECS/Fargate, EKS), each
//!   value at most [`MAX_AWS_VALUE_BYTES`].
//! - A document over [`MAX_DOCUMENT_BYTES`] is trimmed, never dropped: metadata values go
//!   first (largest first), then exception stacks, then exceptions beyond what fits, and
//!   the remaining long strings (URL, user agent, method, client address, annotation values,
//!   exception types and messages) are cut to a common length. A trimmed document (or one
//!   whose name, annotation or `aws` value was cut to X-Ray's limits) says so in
//!   `metadata.default["maille.trimmed"]`. The plan is computed from the sizes of the parts,
//!   so trimming takes time linear in the span's size.

mod check;
mod json;
mod trim;

pub use check::check_document;

use json::W;
use opentelemetry_proto::tonic::common::v1::{any_value::Value as V, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use std::borrow::Cow;
use trim::Plan;

/// Largest segment document X-Ray takes, bytes.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// Longest segment name.
pub(crate) const MAX_NAME_CHARS: usize = 200;
/// Longest annotation key.
pub(crate) const MAX_ANNOTATION_KEY_CHARS: usize = 500;
/// Longest annotation string value.
pub(crate) const MAX_ANNOTATION_VALUE_CHARS: usize = 1000;
/// Most annotations per document (X-Ray allows 50 per trace).
pub(crate) const MAX_ANNOTATIONS: usize = 50;
/// Longest value in the `aws` block, bytes of JSON: platform ids and ARNs are far shorter,
/// and the block is repeated in every segment of the sender.
pub(crate) const MAX_AWS_VALUE_BYTES: usize = 512;
/// Punctuation X-Ray allows in names, besides letters, digits and whitespace.
const NAME_PUNCTUATION: &str = "_.:/%&#=+\\-@";
/// The metadata key that marks a trimmed document.
const TRIMMED: &str = "maille.trimmed";

/// Attributes that always become annotations: the mesh's own markers. Envoy writes request
/// headers into span tags by `custom_tags`; the canary filter's variant header is one.
pub(crate) const MESH_ANNOTATIONS: [&str; 5] = [
    "maille.variant",
    "x-maille-variant",
    "maille.circuit",
    "upstream_cluster",
    "upstream_cluster.name",
];

/// How spans become documents.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    /// Attribute keys (besides [`MESH_ANNOTATIONS`]) to index as annotations.
    pub(crate) annotations: Vec<String>,
    /// Resource attributes used where a sender's resource lacks them: the collector's
    /// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME`. A sidecar on ECS or EKS sets them
    /// so that Envoy's spans (Envoy does not detect its platform) carry `origin` and `aws`.
    pub(crate) default_resource: Vec<(String, String)>,
}

impl Options {
    /// `default_resource` from the OpenTelemetry environment conventions:
    /// `OTEL_RESOURCE_ATTRIBUTES` (`key=value,...`, percent-encoded values) and
    /// `OTEL_SERVICE_NAME` (which wins for `service.name`).
    pub(crate) fn resource_from_env(
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

    /// Whether attribute `key` becomes an annotation: the mesh's markers and the configured
    /// ones.
    fn is_annotation(&self, key: &str) -> bool {
        MESH_ANNOTATIONS.contains(&key) || self.annotations.iter().any(|a| a == key)
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Bytes, not a str slice: what follows `%` may be any character.
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(b[i + 1]) << 4 | hex(b[i + 2]));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A segment document, serialised once when its span is received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Doc {
    /// Its `id`: the span id.
    pub(crate) id: u64,
    /// The JSON document.
    pub(crate) json: String,
}

impl Doc {
    /// The `id` as X-Ray writes it.
    pub(crate) fn id_hex(&self) -> String {
        format!("{:016x}", self.id)
    }
}

/// The text of a plain value: strings as they are, numbers and booleans as JSON writes them.
fn text(v: &V) -> Option<Cow<'_, str>> {
    match v {
        V::StringValue(s) => Some(Cow::Borrowed(s)),
        V::IntValue(i) => Some(Cow::Owned(i.to_string())),
        V::BoolValue(b) => Some(Cow::Owned(b.to_string())),
        V::DoubleValue(d) if d.is_finite() => Some(Cow::Owned(serde_json::to_string(d).ok()?)),
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

fn value_of(kv: &KeyValue) -> Option<&V> {
    kv.value.as_ref().and_then(|v| v.value.as_ref())
}

/// Writes an attribute value as JSON: arrays and key-value lists as arrays and objects,
/// bytes as hex, a missing value as `null`. Nesting is bounded by the decoders (protobuf and
/// JSON both refuse deep nesting).
fn write_value(w: &mut W, v: Option<&V>) {
    match v {
        Some(V::StringValue(s)) => w.str(s),
        Some(V::BoolValue(b)) => w.raw(if *b { "true" } else { "false" }),
        Some(V::IntValue(i)) => w.int(*i),
        Some(V::DoubleValue(d)) => w.double(*d),
        Some(V::BytesValue(b)) => w.hex_str(b),
        Some(V::ArrayValue(a)) => {
            w.raw("[");
            for (i, x) in a.values.iter().enumerate() {
                if i > 0 {
                    w.raw(",");
                }
                write_value(w, x.value.as_ref());
            }
            w.raw("]");
        }
        Some(V::KvlistValue(kv)) => {
            w.raw("{");
            let mut first = true;
            for x in &kv.values {
                w.key(&mut first, &x.key);
                write_value(w, value_of(x));
            }
            w.raw("}");
        }
        // Profiles' string-table references carry no value on their own.
        Some(V::StringValueStrindex(_)) | None => w.raw("null"),
    }
}

pub(crate) fn valid_trace_id(id: &[u8]) -> bool {
    id.len() == 16 && id.iter().any(|b| *b != 0)
}

fn name_char_allowed(c: char) -> bool {
    c.is_alphanumeric() || c.is_whitespace() || NAME_PUNCTUATION.contains(c)
}

/// `name` with what X-Ray refuses replaced by `_`, at most 200 characters; `None` when the
/// name is fine as it is.
fn segment_name_if_changed(name: &str) -> Option<String> {
    if name.len() <= MAX_NAME_CHARS
        && !name.trim().is_empty()
        && name.chars().all(name_char_allowed)
    {
        return None;
    }
    let mut s: String = name
        .chars()
        .take(MAX_NAME_CHARS)
        .map(|c| if name_char_allowed(c) { c } else { '_' })
        .collect();
    if s.trim().is_empty() {
        s = "unknown".into();
    }
    Some(s)
}

fn segment_name(name: &str) -> Cow<'_, str> {
    segment_name_if_changed(name).map_or(Cow::Borrowed(name), Cow::Owned)
}

/// An annotation key X-Ray accepts: letters, digits and `_`, and the variant under one name
/// whichever tag carried it.
fn annotation_name(key: &str) -> Cow<'_, str> {
    if key == "x-maille-variant" {
        Cow::Borrowed("maille_variant")
    } else if !key.is_empty()
        && key.len() <= MAX_ANNOTATION_KEY_CHARS
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Cow::Borrowed(key)
    } else {
        let k: String = key
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(MAX_ANNOTATION_KEY_CHARS)
            .collect();
        Cow::Owned(if k.is_empty() { "_".into() } else { k })
    }
}

/// The first [`MAX_ANNOTATION_VALUE_CHARS`] characters of an annotation's text.
fn annotation_text(s: &str) -> &str {
    s.char_indices()
        .nth(MAX_ANNOTATION_VALUE_CHARS)
        .map_or(s, |(cut, _)| &s[..cut])
}

/// What a sender's resource contributes to its spans' documents, read once for all the
/// spans of a `ResourceSpans`: the segment name, and `origin` and `aws` from its platform
/// attributes (filled in from [`Options::default_resource`] where it says nothing).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ResourceView {
    /// `service.name`, made a valid segment name.
    service: Option<String>,
    origin: Option<&'static str>,
    /// The `aws` block, written.
    aws_json: Option<String>,
    /// The service name was cut to [`MAX_NAME_CHARS`], or an `aws` value to
    /// [`MAX_AWS_VALUE_BYTES`].
    trimmed: bool,
}

/// Resource attributes the documents use.
const RESOURCE_KEYS: [&str; 11] = [
    "service.name",
    "cloud.platform",
    "host.id",
    "cloud.availability_zone",
    "container.name",
    "host.name",
    "container.id",
    "aws.ecs.task.arn",
    "aws.ecs.launchtype",
    "k8s.pod.name",
    "k8s.cluster.name",
];

impl ResourceView {
    /// Reads `resource` with the defaults of `opts`.
    pub(crate) fn new(resource: Option<&Resource>, opts: &Options) -> ResourceView {
        let mut found: [Option<Cow<'_, str>>; RESOURCE_KEYS.len()] = Default::default();
        for kv in resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]) {
            if let Some(i) = RESOURCE_KEYS.iter().position(|k| *k == kv.key) {
                if let Some(t) = value_of(kv).and_then(text) {
                    found[i] = Some(t);
                }
            }
        }
        for (k, v) in &opts.default_resource {
            if let Some(i) = RESOURCE_KEYS.iter().position(|r| r == k) {
                if found[i].is_none() {
                    found[i] = Some(Cow::Borrowed(v));
                }
            }
        }
        let get = |k: &str| {
            let i = RESOURCE_KEYS.iter().position(|r| *r == k)?;
            found[i].as_deref()
        };
        let (origin, block, fields): (_, _, &[(&str, &[&str])]) = match get("cloud.platform") {
            Some("aws_ec2") => (
                Some("AWS::EC2::Instance"),
                "ec2",
                &[
                    ("instance_id", &["host.id"]),
                    ("availability_zone", &["cloud.availability_zone"]),
                ],
            ),
            Some("aws_ecs") => (
                Some("AWS::ECS::Container"),
                "ecs",
                &[
                    ("container", &["container.name", "host.name"]),
                    ("container_id", &["container.id"]),
                    ("task_arn", &["aws.ecs.task.arn"]),
                    ("launch_type", &["aws.ecs.launchtype"]),
                    ("availability_zone", &["cloud.availability_zone"]),
                ],
            ),
            Some("aws_eks") => (
                Some("AWS::EKS::Container"),
                "eks",
                &[
                    ("pod", &["k8s.pod.name"]),
                    ("cluster_name", &["k8s.cluster.name"]),
                    ("container_id", &["container.id"]),
                ],
            ),
            _ => (None, "", &[]),
        };
        let mut trimmed = false;
        let aws_json = origin.map(|_| {
            let mut w = W::default();
            w.raw("{");
            w.str(block);
            w.raw(":{");
            let mut first = true;
            for (name, keys) in fields {
                if let Some(v) = keys.iter().find_map(|k| get(k)) {
                    w.key(&mut first, name);
                    trimmed |= json::escaped_len(v) > MAX_AWS_VALUE_BYTES;
                    w.capped(v, MAX_AWS_VALUE_BYTES);
                }
            }
            w.raw("}}");
            String::from_utf8(w.0).unwrap_or_default()
        });
        let service = get("service.name");
        trimmed |= service.is_some_and(|s| s.chars().nth(MAX_NAME_CHARS).is_some());
        ResourceView {
            service: service.map(|s| segment_name(s).into_owned()),
            origin,
            aws_json,
            trimmed,
        }
    }
}

/// Where an attribute goes in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Read into the `http` block.
    Http,
    Annotation,
    Metadata,
    /// A later attribute has the same key.
    Shadowed,
}

#[derive(Debug)]
struct Attr<'a> {
    key: &'a str,
    value: Option<&'a V>,
    role: Role,
}

/// Keys read into the `http` block (kept out of metadata), by slot.
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

fn http_slot(key: &str) -> Option<usize> {
    // A match on the strings compiles to length-then-bytes comparisons: one per attribute.
    Some(match key {
        "http.request.method" => 0,
        "http.method" => 1,
        "url.full" => 2,
        "http.url" => 3,
        "url.scheme" => 4,
        "http.scheme" => 5,
        "server.address" => 6,
        "http.host" => 7,
        "url.path" => 8,
        "http.target" => 9,
        "user_agent.original" => 10,
        "http.user_agent" => 11,
        "user_agent" => 12,
        "client.address" => 13,
        "http.client_ip" => 14,
        "http.response.status_code" => 15,
        "http.status_code" => 16,
        "http.response.body.size" => 17,
        "http.response_content_length" => 18,
        "response_size" => 19,
        "x_forwarded_for" => 20,
        "http.request.header.x_forwarded_for" => 21,
        _ => return None,
    })
}

/// Attributes naming a subsegment's peer, in order of preference.
const PEER_KEYS: [&str; 5] = [
    "peer.service",
    "upstream_cluster",
    "server.address",
    "net.peer.name",
    "http.host",
];

/// An annotation's value.
#[derive(Debug)]
enum Annotation<'a> {
    Text(Cow<'a, str>),
    Int(i64),
    Double(f64),
    Bool(bool),
}

#[derive(Debug, Default)]
struct Exception<'a> {
    kind: Option<Cow<'a, str>>,
    message: Option<Cow<'a, str>>,
    stack: Option<Cow<'a, str>>,
}

/// The request fields of the `http` block, in writing order.
const REQUEST_FIELDS: [&str; 4] = ["method", "url", "user_agent", "client_ip"];

/// What a span's document says, read once from the span.
#[derive(Debug)]
pub(crate) struct Facts<'a> {
    span: &'a Span,
    res: &'a ResourceView,
    attrs: Vec<Attr<'a>>,
    name: Cow<'a, str>,
    has_parent: bool,
    is_segment: bool,
    remote: bool,
    request: [Option<Cow<'a, str>>; 4],
    status: Option<i64>,
    content_length: Option<i64>,
    flags: &'static [&'static str],
    annotations: Vec<(Cow<'a, str>, Annotation<'a>)>,
    exceptions: Vec<Exception<'a>>,
    /// A name or an annotation was cut to X-Ray's limit: the document says it was trimmed.
    cut: bool,
}

impl<'a> Facts<'a> {
    /// `None` for a span without valid trace and span ids: it cannot be placed in any trace.
    pub(crate) fn read(span: &'a Span, res: &'a ResourceView, opts: &Options) -> Option<Facts<'a>> {
        if !valid_trace_id(&span.trace_id) || span.span_id.len() != 8 {
            return None;
        }
        let mut http: [Option<&'a V>; HTTP_KEYS.len()] = [None; HTTP_KEYS.len()];
        let mut peer: [Option<&'a V>; PEER_KEYS.len()] = [None; PEER_KEYS.len()];
        let mut attrs: Vec<Attr<'a>> = Vec::with_capacity(span.attributes.len());
        for kv in &span.attributes {
            let key = kv.key.as_str();
            let value = value_of(kv);
            if let Some(p) = PEER_KEYS.iter().position(|k| *k == key) {
                peer[p] = value.or(peer[p]);
            }
            let role = if let Some(slot) = http_slot(key) {
                http[slot] = value.or(http[slot]);
                Role::Http
            } else if opts.is_annotation(key) {
                Role::Annotation
            } else {
                Role::Metadata
            };
            attrs.push(Attr { key, value, role });
        }
        shadow_repeated_keys(&mut attrs);

        let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
        let has_parent =
            span.parent_span_id.len() == 8 && span.parent_span_id.iter().any(|b| *b != 0);
        let is_segment = kind == SpanKind::Server || !has_parent;
        let too_long = |s: &str| s.chars().nth(MAX_NAME_CHARS).is_some();
        let mut cut = false;
        let name = if is_segment {
            match &res.service {
                Some(s) => Cow::Borrowed(s.as_str()),
                None => {
                    cut |= too_long(&span.name);
                    segment_name(&span.name)
                }
            }
        } else {
            let peer_name = peer.iter().flatten().find_map(|v| text(v));
            cut |= too_long(peer_name.as_deref().unwrap_or(&span.name));
            match peer_name {
                Some(Cow::Borrowed(s)) => segment_name(s),
                Some(Cow::Owned(s)) => Cow::Owned(segment_name(&s).into_owned()),
                None => segment_name(&span.name),
            }
        };

        let pick = |slots: &[usize]| slots.iter().find_map(|s| http[*s].and_then(text));
        let url = pick(&[2, 3]).or_else(|| {
            let host = pick(&[6, 7])?;
            let scheme = pick(&[4, 5]).unwrap_or(Cow::Borrowed("http"));
            let path = pick(&[8, 9]).unwrap_or_default();
            Some(Cow::Owned(format!("{scheme}://{host}{path}")))
        });
        let request = [pick(&[0, 1]), url, pick(&[10, 11, 12]), pick(&[13, 14])];
        let status = [15, 16].iter().find_map(|s| http[*s].and_then(int));
        let content_length = [17, 18, 19].iter().find_map(|s| http[*s].and_then(int));

        let mut exceptions = Vec::new();
        for e in span.events.iter().filter(|e| e.name == "exception") {
            let mut ex = Exception::default();
            for kv in &e.attributes {
                let slot = match kv.key.as_str() {
                    "exception.type" => &mut ex.kind,
                    "exception.message" => &mut ex.message,
                    "exception.stacktrace" => &mut ex.stack,
                    _ => continue,
                };
                if let Some(t) = value_of(kv).and_then(text) {
                    *slot = Some(t);
                }
            }
            exceptions.push(ex);
        }
        let span_error = span
            .status
            .as_ref()
            .is_some_and(|s| s.code == StatusCode::Error as i32);
        let flags: &'static [&'static str] = match status {
            Some(429) => &["error", "throttle"],
            Some(s) if (400..500).contains(&s) => &["error"],
            Some(s) if s >= 500 => &["fault"],
            _ if span_error || !exceptions.is_empty() => &["fault"],
            _ => &[],
        };

        let mut annotations: Vec<(Cow<'a, str>, Annotation<'a>)> = Vec::new();
        for a in attrs.iter_mut().filter(|a| a.role == Role::Annotation) {
            let key = annotation_name(a.key);
            let value = match a.value {
                Some(V::StringValue(s)) => {
                    let t = annotation_text(s);
                    cut |= t.len() < s.len();
                    Some(Annotation::Text(Cow::Borrowed(t)))
                }
                Some(V::IntValue(i)) => Some(Annotation::Int(*i)),
                Some(V::BoolValue(b)) => Some(Annotation::Bool(*b)),
                Some(V::DoubleValue(d)) if d.is_finite() => Some(Annotation::Double(*d)),
                None => None,
                other => {
                    let mut w = W::default();
                    write_value(&mut w, other);
                    let t = String::from_utf8(w.0).unwrap_or_default();
                    let t = match other {
                        Some(V::DoubleValue(d)) => json::non_finite(*d).to_owned(),
                        _ => t,
                    };
                    let short = annotation_text(&t);
                    cut |= short.len() < t.len();
                    Some(Annotation::Text(Cow::Owned(short.to_owned())))
                }
            };
            // Nothing is lost: what cannot be an annotation stays in metadata.
            match value {
                Some(v)
                    if annotations.len() < MAX_ANNOTATIONS
                        && !annotations.iter().any(|(k, _)| *k == key) =>
                {
                    annotations.push((key, v))
                }
                _ => a.role = Role::Metadata,
            }
        }
        Some(Facts {
            span,
            res,
            attrs,
            name,
            has_parent,
            is_segment,
            remote: !is_segment && matches!(kind, SpanKind::Client | SpanKind::Producer),
            request,
            status,
            content_length,
            flags,
            annotations,
            exceptions,
            cut,
        })
    }

    fn metadata(&self) -> impl Iterator<Item = (usize, &Attr<'a>)> {
        self.attrs
            .iter()
            .enumerate()
            .filter(|(_, a)| a.role == Role::Metadata)
    }

    /// Writes the document as `plan` says (what to leave out, how long strings may be).
    fn write(&self, plan: &Plan, w: &mut W) {
        let span = self.span;
        let mut first = true;
        w.raw("{");
        w.key(&mut first, "name");
        w.str(&self.name);
        w.key(&mut first, "id");
        w.hex_str(&span.span_id);
        w.key(&mut first, "trace_id");
        w.raw("\"1-");
        w.hex_digits(&span.trace_id[..4]);
        w.raw("-");
        w.hex_digits(&span.trace_id[4..]);
        w.raw("\"");
        w.key(&mut first, "start_time");
        w.double(span.start_time_unix_nano as f64 / 1e9);
        w.key(&mut first, "end_time");
        let end = span.end_time_unix_nano.max(span.start_time_unix_nano);
        w.double(end as f64 / 1e9);
        if self.has_parent {
            w.key(&mut first, "parent_id");
            w.hex_str(&span.parent_span_id);
        }
        if !self.is_segment {
            w.key(&mut first, "type");
            w.str("subsegment");
            if self.remote {
                w.key(&mut first, "namespace");
                w.str("remote");
            }
        }
        let has_request = self.request.iter().any(Option::is_some);
        let has_response = self.status.is_some() || self.content_length.is_some();
        if has_request || has_response {
            w.key(&mut first, "http");
            w.raw("{");
            let mut first_http = true;
            if has_request {
                w.key(&mut first_http, "request");
                w.raw("{");
                let mut f = true;
                for (k, v) in REQUEST_FIELDS.iter().zip(&self.request) {
                    if let Some(v) = v {
                        w.key(&mut f, k);
                        w.capped(v, plan.cap);
                    }
                }
                w.raw("}");
            }
            if has_response {
                w.key(&mut first_http, "response");
                w.raw("{");
                let mut f = true;
                for (k, v) in [
                    ("status", self.status),
                    ("content_length", self.content_length),
                ] {
                    if let Some(v) = v {
                        w.key(&mut f, k);
                        w.int(v);
                    }
                }
                w.raw("}");
            }
            w.raw("}");
        }
        for f in self.flags {
            w.key(&mut first, f);
            w.raw("true");
        }
        let kept = self.exceptions.len().min(plan.exceptions);
        if kept > 0 {
            w.key(&mut first, "cause");
            w.raw("{\"exceptions\":[");
            for (i, e) in self.exceptions[..kept].iter().enumerate() {
                if i > 0 {
                    w.raw(",");
                }
                self.write_exception(w, i, e, plan.cap, !plan.drops_stack(i));
            }
            w.raw("]}");
        }
        if !self.annotations.is_empty() {
            w.key(&mut first, "annotations");
            w.raw("{");
            let mut f = true;
            for (k, v) in &self.annotations {
                w.key(&mut f, k);
                match v {
                    Annotation::Text(s) => w.capped(s, plan.cap),
                    Annotation::Int(i) => w.int(*i),
                    Annotation::Double(d) => w.double(*d),
                    Annotation::Bool(b) => w.raw(if *b { "true" } else { "false" }),
                }
            }
            w.raw("}");
        }
        let mut f = true;
        for (i, a) in self.metadata() {
            if plan.drops_metadata(i) {
                continue;
            }
            if f {
                w.key(&mut first, "metadata");
                w.raw("{\"default\":{");
            }
            w.key(&mut f, a.key);
            write_value(w, a.value);
        }
        if plan.marker {
            if f {
                w.key(&mut first, "metadata");
                w.raw("{\"default\":{");
            }
            w.key(&mut f, TRIMMED);
            w.raw("true");
        }
        if !f {
            w.raw("}}");
        }
        if self.is_segment {
            if let Some(o) = self.res.origin {
                w.key(&mut first, "origin");
                w.str(o);
            }
            if let Some(a) = &self.res.aws_json {
                w.key(&mut first, "aws");
                w.raw(a);
            }
        }
        w.raw("}");
    }

    fn write_exception(&self, w: &mut W, i: usize, e: &Exception<'_>, cap: usize, stack: bool) {
        let mut f = true;
        w.raw("{");
        w.key(&mut f, "id");
        w.raw("\"");
        w.hex_digits(&self.span.span_id[..7]);
        w.hex_digits(&[(i % 256) as u8]);
        w.raw("\"");
        if let Some(t) = &e.kind {
            w.key(&mut f, "type");
            w.capped(t, cap);
        }
        if let Some(m) = &e.message {
            w.key(&mut f, "message");
            w.capped(m, cap);
        }
        if let (true, Some(st)) = (stack, &e.stack) {
            w.key(&mut f, "stack");
            w.raw("[");
            for (n, line) in st.lines().take(50).enumerate() {
                if n > 0 {
                    w.raw(",");
                }
                w.raw("{\"label\":");
                w.str(line.trim());
                w.raw("}");
            }
            w.raw("]");
        }
        w.raw("}");
    }
}

/// Marks every attribute whose key comes again later: the last value wins, as in a map.
fn shadow_repeated_keys(attrs: &mut [Attr<'_>]) {
    if attrs.len() <= 16 {
        for i in 0..attrs.len() {
            if attrs[i + 1..].iter().any(|b| b.key == attrs[i].key) {
                attrs[i].role = Role::Shadowed;
            }
        }
    } else {
        let mut seen = std::collections::HashSet::with_capacity(attrs.len());
        for a in attrs.iter_mut().rev() {
            if !seen.insert(a.key) {
                a.role = Role::Shadowed;
            }
        }
    }
}

thread_local! {
    /// A buffer kept per thread: a document is written there, then copied out at its exact
    /// size (the queue may hold 100,000 of them).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Scratch space above this is given back after use.
const SCRATCH_KEPT: usize = 256 * 1024;

/// A span's document, and whether it had to be trimmed.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) doc: Doc,
    pub(crate) trimmed: bool,
}

/// One span as an X-Ray document within [`MAX_DOCUMENT_BYTES`]; `None` for a span without
/// valid trace and span ids.
pub(crate) fn document(span: &Span, res: &ResourceView, opts: &Options) -> Option<Written> {
    let facts = Facts::read(span, res, opts)?;
    let mut w = W(SCRATCH.with(|b| std::mem::take(&mut *b.borrow_mut())));
    w.0.clear();
    let whole = Plan::whole(&facts);
    facts.write(&whole, &mut w);
    let mut trimmed = whole.marker;
    if w.len() > MAX_DOCUMENT_BYTES {
        let plan = trim::plan(&facts, w.len());
        w.0.clear();
        facts.write(&plan, &mut w);
        if w.len() > MAX_DOCUMENT_BYTES {
            debug_assert!(false, "trim plan left {} bytes: {plan:?}", w.len());
            w.0.clear();
            facts.write(&Plan::minimal(&facts), &mut w);
        }
        trimmed = true;
    }
    let json = String::from_utf8(w.0.as_slice().to_vec()).ok();
    if w.0.capacity() > SCRATCH_KEPT {
        w.0 = Vec::new();
    }
    SCRATCH.with(|b| *b.borrow_mut() = w.0);
    let id = u64::from_be_bytes(span.span_id.as_slice().try_into().ok()?);
    Some(Written {
        doc: Doc { id, json: json? },
        trimmed,
    })
}

#[cfg(test)]
pub(crate) mod tests;
