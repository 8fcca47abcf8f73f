//! OTLP log records to CloudWatch Logs events: each record becomes one JSON event in the log
//! group and stream its resource names (templates from configuration), at the record's
//! time, within the API's size limit.
//!
//! The event is the record as JSON: `message` (the body: Envoy's access log line), each
//! attribute by its key, `trace_id` and `span_id` (hex, as OpenTelemetry writes them),
//! `xray_trace_id` (`1-…-…`, as X-Ray shows it, so the X-Ray console's id finds the line),
//! and `severity` when given. A record without a trace id of its own takes it from a
//! `trace_id` attribute of 32 hex digits (what Envoy's `%TRACE_ID%` writes).

use crate::segment::Options;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::{Map, Value};
use std::sync::Arc;

/// CloudWatch Logs' bytes per event on top of its message, in the request size limits.
pub(crate) const EVENT_OVERHEAD: usize = 26;
/// Largest event message: 256 KiB less the overhead (CloudWatch Logs' event limit).
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024 - EVENT_OVERHEAD;
/// Events per `PutLogEvents`.
pub(crate) const MAX_EVENTS_PER_CALL: usize = 10_000;
/// Bytes per `PutLogEvents`: messages plus 26 bytes each.
pub(crate) const MAX_CALL_BYTES: usize = 1_048_576;
/// Time between the earliest and latest event of one call, at most (24 hours).
pub(crate) const MAX_CALL_SPAN_MS: i64 = 24 * 3600 * 1000;
/// Longest log group or stream name.
const MAX_NAME: usize = 512;

/// Default log group: one per service.
pub const DEFAULT_LOG_GROUP: &str = "/maille/{service.name}";
/// Default log stream: one per host (task, pod or instance) of the service.
pub const DEFAULT_LOG_STREAM: &str = "{host.name}";

/// A log group and stream.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Stream {
    pub(crate) group: String,
    pub(crate) name: String,
}

/// One CloudWatch Logs event, made when its record is received.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    /// Its own id, for the spool's acknowledgements.
    pub(crate) id: u64,
    pub(crate) stream: Arc<Stream>,
    /// Milliseconds since the epoch.
    pub(crate) timestamp_ms: i64,
    /// The JSON text.
    pub(crate) message: String,
}

impl Event {
    pub(crate) fn new(stream: Arc<Stream>, id: u64, timestamp_ms: i64, message: String) -> Event {
        Event {
            id,
            stream,
            timestamp_ms,
            message,
        }
    }
}

/// A log group or stream name with `{attribute}` placeholders, filled from the sender's
/// resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    group: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Attr(String),
}

impl Template {
    /// Parses a log group (`group`) or stream name template; the error says what is wrong.
    pub fn parse(s: &str, group: bool) -> Result<Template, String> {
        let what = if group { "log group" } else { "log stream" };
        let mut parts = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            match rest.find('{') {
                None => {
                    parts.push(Part::Text(rest.to_owned()));
                    rest = "";
                }
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Text(rest[..i].to_owned()));
                    }
                    let after = &rest[i + 1..];
                    let Some(j) = after.find('}') else {
                        return Err(format!("{what} {s:?}: a '{{' without its '}}'"));
                    };
                    let key = after[..j].trim();
                    if key.is_empty() {
                        return Err(format!("{what} {s:?}: an empty '{{}}'"));
                    }
                    parts.push(Part::Attr(key.to_owned()));
                    rest = &after[j + 1..];
                }
            }
        }
        for p in &parts {
            if let Part::Text(t) = p {
                if let Some(c) = t.chars().find(|c| !name_char(*c, group)) {
                    return Err(format!(
                        "{what} {s:?}: {c:?} is not allowed in a CloudWatch Logs {what} name"
                    ));
                }
            }
        }
        if parts.is_empty() {
            return Err(format!("{what}: empty"));
        }
        Ok(Template { parts, group })
    }

    /// The name for a resource: each placeholder is the resource's attribute, else the
    /// collector's default resource's, else `host.name` the collector's host name and
    /// `service.name` `unknown_service`; characters CloudWatch Logs does not take become
    /// `_`, and the name is cut to 512 bytes.
    fn render(&self, resource: &[KeyValue], defaults: &[(String, String)], host: &str) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Attr(k) => {
                    let found = resource
                        .iter()
                        .find(|kv| kv.key == *k)
                        .and_then(|kv| kv.value.as_ref())
                        .and_then(text)
                        .filter(|v| !v.is_empty())
                        .or_else(|| {
                            defaults
                                .iter()
                                .find(|(dk, _)| dk == k)
                                .map(|(_, v)| v.clone())
                        });
                    let v = found.unwrap_or_else(|| match k.as_str() {
                        "host.name" => host.to_owned(),
                        "service.name" => "unknown_service".to_owned(),
                        _ => "unknown".to_owned(),
                    });
                    out.extend(
                        v.chars()
                            .map(|c| if name_char(c, self.group) { c } else { '_' }),
                    );
                }
            }
        }
        // Group names under `aws/` are AWS's own.
        if self.group && out.starts_with("aws/") {
            out.insert(0, '_');
        }
        let mut cut = out.len().min(MAX_NAME);
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out
    }
}

/// Characters CloudWatch Logs takes in a group name (`[.\-_/#A-Za-z0-9]`) or a stream name
/// (anything but `:` and `*`).
fn name_char(c: char, group: bool) -> bool {
    if group {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#')
    } else {
        c != ':' && c != '*' && !c.is_control()
    }
}

fn text(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// Where events go and how they are named.
#[derive(Debug, Clone)]
pub struct Targets {
    /// The log group's name.
    pub group: Template,
    /// The log stream's name.
    pub stream: Template,
}

impl Default for Targets {
    fn default() -> Targets {
        Targets {
            group: Template::parse(DEFAULT_LOG_GROUP, true).expect("valid"),
            stream: Template::parse(DEFAULT_LOG_STREAM, false).expect("valid"),
        }
    }
}

/// The stream a resource's records go to.
pub(crate) fn stream_for(
    targets: &Targets,
    resource: Option<&Resource>,
    opts: &Options,
    host: &str,
) -> Arc<Stream> {
    let attrs = resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]);
    Arc::new(Stream {
        group: targets.group.render(attrs, &opts.default_resource, host),
        name: targets.stream.render(attrs, &opts.default_resource, host),
    })
}

/// The collector's host name, for streams whose sender does not say.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What converting a record made: its event, and whether it had to be cut to fit.
pub(crate) struct Converted {
    pub(crate) event: Event,
    pub(crate) trimmed: bool,
}

/// One record as an event of `stream`, from a resource of `mesh` (its `maille.mesh`, which
/// the event names as `mesh`: the group is per node name); `now_ms` when the record has no
/// time.
pub(crate) fn event(
    record: &LogRecord,
    stream: &Arc<Stream>,
    mesh: Option<&str>,
    now_ms: i64,
) -> Converted {
    let ns = if record.time_unix_nano != 0 {
        record.time_unix_nano
    } else {
        record.observed_time_unix_nano
    };
    let timestamp_ms = if ns == 0 {
        now_ms
    } else {
        i64::try_from(ns / 1_000_000).unwrap_or(i64::MAX)
    };
    let trace = if crate::segment::valid_trace_id(&record.trace_id) {
        Some(hex(&record.trace_id))
    } else {
        record
            .attributes
            .iter()
            .rev()
            .find(|kv| kv.key == "trace_id")
            .and_then(str_value)
            .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .filter(|t| t.bytes().any(|b| b != b'0'))
            .map(str::to_ascii_lowercase)
    };
    let span = (record.span_id.len() == 8 && record.span_id.iter().any(|b| *b != 0))
        .then(|| hex(&record.span_id));
    let mut message = serde_json::to_string(&Record {
        record,
        trace: trace.as_deref(),
        span: span.as_deref(),
        mesh,
    })
    .unwrap_or_default();
    let mut trimmed = false;
    if message.len() > MAX_MESSAGE_BYTES {
        trimmed = true;
        message = fit(record.body.as_ref(), trace.as_deref());
    }
    Converted {
        event: Event::new(stream.clone(), rand::random(), timestamp_ms, message),
        trimmed,
    }
}

/// A record as the event's JSON object, written straight out (no intermediate map).
struct Record<'a> {
    record: &'a LogRecord,
    trace: Option<&'a str>,
    span: Option<&'a str>,
    mesh: Option<&'a str>,
}

impl serde::Serialize for Record<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.record;
        let mut m = s.serialize_map(None)?;
        let body = r.body.as_ref().filter(|b| b.value.is_some());
        if let Some(b) = body {
            m.serialize_entry("message", &Any(b))?;
        }
        // The collector's own keys win over attributes of the same name.
        for kv in &r.attributes {
            let own = match kv.key.as_str() {
                "message" => body.is_some(),
                "trace_id" => self.trace.is_some(),
                "span_id" => self.span.is_some(),
                "severity" => !r.severity_text.is_empty(),
                "xray_trace_id" => true,
                "mesh" => self.mesh.is_some(),
                _ => false,
            };
            if own {
                continue;
            }
            match &kv.value {
                Some(v) => m.serialize_entry(&kv.key, &Any(v))?,
                None => m.serialize_entry(&kv.key, &())?,
            }
        }
        if let Some(t) = self.trace {
            m.serialize_entry("trace_id", t)?;
            m.serialize_entry("xray_trace_id", &xray_id(t))?;
        }
        if let Some(sp) = self.span {
            m.serialize_entry("span_id", sp)?;
        }
        if !r.severity_text.is_empty() {
            m.serialize_entry("severity", &r.severity_text)?;
        }
        if let Some(mesh) = self.mesh {
            m.serialize_entry("mesh", mesh)?;
        }
        m.end()
    }
}

/// An OTLP value, serialised as JSON.
struct Any<'a>(&'a AnyValue);

impl serde::Serialize for Any<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match &self.0.value {
            None | Some(any_value::Value::StringValueStrindex(_)) => s.serialize_unit(),
            Some(any_value::Value::StringValue(v)) => s.serialize_str(v),
            Some(any_value::Value::BoolValue(b)) => s.serialize_bool(*b),
            Some(any_value::Value::IntValue(i)) => s.serialize_i64(*i),
            Some(any_value::Value::DoubleValue(d)) if d.is_finite() => s.serialize_f64(*d),
            Some(any_value::Value::DoubleValue(d)) => s.collect_str(d),
            Some(any_value::Value::ArrayValue(a)) => {
                let mut q = s.serialize_seq(Some(a.values.len()))?;
                for v in &a.values {
                    q.serialize_element(&Any(v))?;
                }
                q.end()
            }
            Some(any_value::Value::KvlistValue(l)) => {
                let mut m = s.serialize_map(Some(l.values.len()))?;
                for kv in &l.values {
                    match &kv.value {
                        Some(v) => m.serialize_entry(&kv.key, &Any(v))?,
                        None => m.serialize_entry(&kv.key, &())?,
                    }
                }
                m.end()
            }
            Some(any_value::Value::BytesValue(b)) => s.serialize_str(&hex(b)),
        }
    }
}

/// An event too large for CloudWatch Logs: its body, cut to fit, and its trace id; the
/// attributes are left out.
fn fit(body: Option<&AnyValue>, trace: Option<&str>) -> String {
    let text = match body.and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(_) => body
            .map(|b| serde_json::to_string(&Any(b)).unwrap_or_default())
            .unwrap_or_default(),
        None => String::new(),
    };
    let mut m = Map::new();
    if let Some(t) = trace {
        m.insert("xray_trace_id".into(), xray_id(t).into());
        m.insert("trace_id".into(), t.into());
    }
    m.insert("maille.trimmed".into(), true.into());
    m.insert("message".into(), String::new().into());
    let frame = Value::Object(m.clone()).to_string().len();
    // Escaping makes a character at most six bytes (`\u0001`): cut in proportion until the
    // escaped text fits, each step shorter than the last; after a few, a sixth of the room
    // fits whatever the text.
    let room = MAX_MESSAGE_BYTES.saturating_sub(frame);
    let escaped = |t: &str| Value::String(t.to_owned()).to_string().len() - 2;
    let boundary = |mut c: usize| {
        while !text.is_char_boundary(c) {
            c -= 1;
        }
        c
    };
    let mut cut = boundary(text.len().min(room));
    for _ in 0..8 {
        let e = escaped(&text[..cut]);
        if e <= room {
            break;
        }
        cut = boundary((cut * room / e).min(cut - 1));
    }
    if escaped(&text[..cut]) > room {
        cut = boundary(cut.min(room / 6));
    }
    m.insert("message".into(), text[..cut].to_owned().into());
    Value::Object(m).to_string()
}

/// A trace id (32 hex digits) as X-Ray writes it: `1-` its first 8, `-` the other 24.
fn xray_id(t: &str) -> String {
    format!("1-{}-{}", &t[..8], &t[8..])
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// The text of an attribute whose value is a string.
pub(crate) fn str_value(kv: &KeyValue) -> Option<&str> {
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The `maille.mesh` resource attribute: the mesh a record's node belongs to.
pub(crate) fn mesh_of(r: Option<&Resource>) -> Option<&str> {
    r?.attributes
        .iter()
        .find(|kv| kv.key == "maille.mesh")
        .and_then(str_value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn stream() -> Arc<Stream> {
        Arc::new(Stream {
            group: "g".into(),
            name: "s".into(),
        })
    }

    #[test]
    fn names_come_from_the_resource_then_the_defaults_and_are_made_valid() {
        let t = Targets::default();
        let res = Resource {
            attributes: vec![s("service.name", "color teller:blue")],
            ..Default::default()
        };
        let st = stream_for(&t, Some(&res), &Options::default(), "ip-10-0-0-1");
        assert_eq!(st.group, "/maille/color_teller_blue");
        assert_eq!(st.name, "ip-10-0-0-1");
        let opts = Options {
            default_resource: vec![("service.name".into(), "from-env".into())],
            ..Default::default()
        };
        let st = stream_for(&t, None, &opts, "h");
        assert_eq!(st.group, "/maille/from-env");
        let st = stream_for(&t, None, &Options::default(), "h");
        assert_eq!(st.group, "/maille/unknown_service");
        let aws = Template::parse("{service.name}", true).unwrap();
        assert_eq!(
            aws.render(&[s("service.name", "aws/lambda")], &[], "h"),
            "_aws/lambda"
        );
        let long = Template::parse(&format!("{}{{x}}", "a".repeat(600)), true).unwrap();
        assert_eq!(long.render(&[], &[], "h").len(), 512);
    }

    #[test]
    fn bad_templates_are_refused_by_what_is_wrong() {
        let e = Template::parse("/maille/{service.name", true).unwrap_err();
        assert!(e.contains("log group") && e.contains("without"), "{e}");
        let e = Template::parse("/maille/a b", true).unwrap_err();
        assert!(e.contains("' '"), "{e}");
        let e = Template::parse("a:b", false).unwrap_err();
        assert!(e.contains("log stream") && e.contains("':'"), "{e}");
        assert!(Template::parse("{}", true).is_err());
        assert!(Template::parse("", true).is_err());
    }

    #[test]
    fn a_record_becomes_json_with_its_trace_id_in_both_forms() {
        let rec = LogRecord {
            time_unix_nano: 1_700_000_000_123_456_789,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue("GET /color 200".into())),
            }),
            attributes: vec![
                s("response_code", "200"),
                s("trace_id", "5f1e2d3d0a0b0c0d0e0f101112131415"),
            ],
            ..Default::default()
        };
        let c = event(&rec, &stream(), None, 0);
        assert_eq!(c.event.timestamp_ms, 1_700_000_000_123);
        let v: Value = serde_json::from_str(&c.event.message).unwrap();
        assert_eq!(v["message"], "GET /color 200");
        assert_eq!(v["response_code"], "200");
        assert_eq!(v["xray_trace_id"], "1-5f1e2d3d-0a0b0c0d0e0f101112131415");
        // The record's own ids win over the attribute.
        let rec = LogRecord {
            trace_id: vec![0xab; 16],
            span_id: vec![1; 8],
            ..rec
        };
        let v: Value =
            serde_json::from_str(&event(&rec, &stream(), None, 0).event.message).unwrap();
        assert_eq!(v["trace_id"], "ab".repeat(16));
        assert_eq!(v["span_id"], "0101010101010101");
        // No time: the time it arrived.
        let v = event(&LogRecord::default(), &stream(), None, 42);
        assert_eq!(v.event.timestamp_ms, 42);
        // An attribute named as one of the collector's own keys gives way, once.
        let rec2 = LogRecord {
            attributes: vec![s("message", "forged"), s("xray_trace_id", "1-0-0")],
            trace_id: vec![0xab; 16],
            ..rec.clone()
        };
        let text = event(&rec2, &stream(), None, 0).event.message;
        assert_eq!(text.matches("\"message\"").count(), 1, "{text}");
        assert_eq!(text.matches("\"xray_trace_id\"").count(), 1, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["message"], "GET /color 200");
        // Envoy writes "-" when there is no trace.
        let rec = LogRecord {
            attributes: vec![s("trace_id", "-")],
            ..Default::default()
        };
        let v: Value =
            serde_json::from_str(&event(&rec, &stream(), None, 0).event.message).unwrap();
        assert!(v.get("xray_trace_id").is_none(), "{v}");
    }

    #[test]
    fn a_record_too_large_is_cut_to_the_event_limit_keeping_its_trace_id() {
        for filler in ["x", "\u{1}", "é"] {
            let rec = LogRecord {
                trace_id: vec![0xab; 16],
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(filler.repeat(300_000))),
                }),
                attributes: (0..100)
                    .map(|i| s(&format!("k{i}"), &"v".repeat(5_000)))
                    .collect(),
                ..Default::default()
            };
            let c = event(&rec, &stream(), None, 0);
            assert!(c.trimmed);
            assert!(c.event.message.len() <= MAX_MESSAGE_BYTES, "{filler:?}");
            assert!(c.event.message.len() > MAX_MESSAGE_BYTES / 8, "{filler:?}");
            let v: Value = serde_json::from_str(&c.event.message).unwrap();
            assert_eq!(
                v["xray_trace_id"],
                format!("1-{}-{}", "ab".repeat(4), "ab".repeat(12))
            );
            assert_eq!(v["maille.trimmed"], true);
            let kept = v["message"].as_str().unwrap();
            assert!(
                filler.repeat(300_000).starts_with(kept) && !kept.is_empty(),
                "{filler:?}"
            );
            assert_eq!(
                v["xray_trace_id"],
                format!("1-{}-{}", "ab".repeat(4), "ab".repeat(12))
            );
        }
    }
}
