//! A wire-level census of an OTLP request before it is decoded: how much memory its decoded
//! form would take, so that a request whose decoded form is out of proportion to its size
//! is refused before it is decoded.
//!
//! Why a census: protobuf's smallest values are two bytes on the wire (an empty array value
//! or attribute is `0a 00`), and each decodes to a struct of 32 to 300 bytes; 7 MB of empty
//! array values decode to hundreds of MB. Counting needs no allocation and reads each byte
//! once; it follows the OTLP schema (which fields are messages, strings, or packed numbers)
//! and prices each decoded value at the size of the struct it becomes (the
//! `opentelemetry-proto` types' own sizes), plus the bytes of strings. Telemetry as Envoy and
//! the SDKs send it comes to 3 to 9 times its size (its strings are short, prost's structs
//! are not); an empty value is 16 times its two bytes, an empty attribute 32, an empty span
//! over 100. The limit is [`DECODED_PER_WIRE_BYTE`] times, plus [`DECODED_FLOOR`]; the
//! vectors' spare capacity can add up to as much again.
//!
//! JSON bodies get a coarser bound: every decoded struct starts with a `{`, so their number
//! times the largest struct bounds the decoded form.

use opentelemetry_proto::tonic::collector::logs::v1 as cl;
use opentelemetry_proto::tonic::collector::metrics::v1 as cm;
use opentelemetry_proto::tonic::collector::trace::v1 as ct;
use opentelemetry_proto::tonic::common::v1 as common;
use opentelemetry_proto::tonic::logs::v1 as logs;
use opentelemetry_proto::tonic::metrics::v1 as metrics;
use opentelemetry_proto::tonic::resource::v1 as resource;
use opentelemetry_proto::tonic::trace::v1 as trace;
use prost::encoding::{decode_varint, WireType};
use std::mem::size_of;

/// Decoded bytes allowed per byte on the wire.
pub(crate) const DECODED_PER_WIRE_BYTE: usize = 12;
/// Decoded bytes any request may take, whatever its size.
pub(crate) const DECODED_FLOOR: usize = 1 << 20;
/// Decoded bytes allowed per byte of JSON: the JSON bound prices every object at the
/// largest struct, so it needs more room than the protobuf census.
pub(crate) const DECODED_PER_JSON_BYTE: usize = 32;
/// Deepest nesting followed (prost stops at 100).
const MAX_DEPTH: u32 = 100;

/// The requests the census knows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Root {
    Traces,
    Metrics,
    Logs,
}

/// What the census found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Census {
    /// Estimated bytes of the decoded request.
    pub(crate) decoded: usize,
    /// Values in repeated fields (messages, strings, numbers).
    pub(crate) values: usize,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScanError {
    #[error("malformed protobuf at byte {at}: {what}")]
    Malformed { at: usize, what: &'static str },
    #[error(
        "the request would take about {} MB once decoded ({values} values in {wire} bytes), more than {limit}x its size: send fewer, fuller values",
        decoded / 1_000_000 + 1
    )]
    OutOfProportion {
        decoded: usize,
        values: usize,
        wire: usize,
        limit: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum M {
    TraceRequest,
    ResourceSpans,
    Resource,
    EntityRef,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
    MetricsRequest,
    ResourceMetrics,
    ScopeMetrics,
    Metric,
    Points,
    NumberPoint,
    HistogramPoint,
    ExpHistogramPoint,
    Buckets,
    SummaryPoint,
    Quantile,
    Exemplar,
    HistogramPoints,
    ExpHistogramPoints,
    SummaryPoints,
    LogsRequest,
    ResourceLogs,
    ScopeLogs,
    LogRecord,
}

/// What a field of a message holds.
enum F {
    /// A repeated message: a new struct per value.
    Many(M),
    /// A singular message (or a oneof's): inside its parent's struct.
    One(M),
    /// A string or bytes: their bytes on the heap.
    Text,
    /// A repeated string.
    Texts,
    /// A repeated varint, packed or not: 8 bytes each decoded.
    Varints,
    /// A repeated fixed64 or double, packed or not.
    Fixed64s,
    /// A scalar, or a field OTLP does not have (prost skips it).
    Other,
}

fn field(m: M, n: u32) -> F {
    use F::*;
    use M::*;
    match (m, n) {
        (TraceRequest, 1) => Many(ResourceSpans),
        (ResourceSpans, 1) | (ResourceMetrics, 1) => One(Resource),
        (ResourceSpans, 2) => Many(ScopeSpans),
        (ResourceSpans | ResourceMetrics | ScopeSpans | ScopeMetrics, 3) => Text,
        (Resource, 1) => Many(KeyValue),
        (Resource, 3) => Many(EntityRef),
        (EntityRef, 1 | 2) => Text,
        (EntityRef, 3 | 4) => Texts,
        (ScopeSpans, 1) | (ScopeMetrics, 1) => One(Scope),
        (ScopeSpans, 2) => Many(Span),
        (Scope, 1 | 2) => Text,
        (Scope, 3) => Many(KeyValue),
        (Span, 1..=5) => Text,
        (Span, 9) => Many(KeyValue),
        (Span, 11) => Many(Event),
        (Span, 13) => Many(Link),
        (Span, 15) => One(Status),
        (Event, 2) => Text,
        (Event, 3) => Many(KeyValue),
        (Link, 1..=3) => Text,
        (Link, 4) => Many(KeyValue),
        (Status, 2) => Text,
        (KeyValue, 1) => Text,
        (KeyValue, 2) => One(AnyValue),
        (AnyValue, 1 | 7) => Text,
        (AnyValue, 5) => One(ArrayValue),
        (AnyValue, 6) => One(KeyValueList),
        (ArrayValue, 1) => Many(AnyValue),
        (KeyValueList, 1) => Many(KeyValue),
        (MetricsRequest, 1) => Many(ResourceMetrics),
        (ResourceMetrics, 2) => Many(ScopeMetrics),
        (ScopeMetrics, 2) => Many(Metric),
        (Metric, 1..=3) => Text,
        (Metric, 12) => Many(KeyValue),
        (Metric, 5 | 7) => One(Points),
        (Metric, 9) => One(HistogramPoints),
        (Metric, 10) => One(ExpHistogramPoints),
        (Metric, 11) => One(SummaryPoints),
        (Points, 1) => Many(NumberPoint),
        (HistogramPoints, 1) => Many(HistogramPoint),
        (ExpHistogramPoints, 1) => Many(ExpHistogramPoint),
        (SummaryPoints, 1) => Many(SummaryPoint),
        (NumberPoint, 7) | (HistogramPoint, 9) | (ExpHistogramPoint, 1) => Many(KeyValue),
        (SummaryPoint, 7) | (Exemplar, 7) => Many(KeyValue),
        (NumberPoint, 5) | (HistogramPoint, 8) | (ExpHistogramPoint, 11) => Many(Exemplar),
        (HistogramPoint, 6 | 7) => Fixed64s,
        (ExpHistogramPoint, 8 | 9) => One(Buckets),
        (Buckets, 2) => Varints,
        (SummaryPoint, 6) => Many(Quantile),
        (Exemplar, 4 | 5) => Text,
        (LogsRequest, 1) => Many(ResourceLogs),
        (ResourceLogs, 1) => One(Resource),
        (ResourceLogs, 2) => Many(ScopeLogs),
        (ResourceLogs | ScopeLogs, 3) => Text,
        (ScopeLogs, 1) => One(Scope),
        (ScopeLogs, 2) => Many(LogRecord),
        (LogRecord, 3 | 9 | 10 | 12) => Text,
        (LogRecord, 5) => One(AnyValue),
        (LogRecord, 6) => Many(KeyValue),
        _ => Other,
    }
}

/// The struct a message decodes to.
fn size(m: M) -> usize {
    use M::*;
    match m {
        TraceRequest => size_of::<ct::ExportTraceServiceRequest>(),
        ResourceSpans => size_of::<trace::ResourceSpans>(),
        Resource => size_of::<resource::Resource>(),
        EntityRef => size_of::<common::EntityRef>(),
        ScopeSpans => size_of::<trace::ScopeSpans>(),
        Scope => size_of::<common::InstrumentationScope>(),
        Span => size_of::<trace::Span>(),
        Event => size_of::<trace::span::Event>(),
        Link => size_of::<trace::span::Link>(),
        Status => size_of::<trace::Status>(),
        KeyValue => size_of::<common::KeyValue>(),
        AnyValue => size_of::<common::AnyValue>(),
        ArrayValue => size_of::<common::ArrayValue>(),
        KeyValueList => size_of::<common::KeyValueList>(),
        MetricsRequest => size_of::<cm::ExportMetricsServiceRequest>(),
        ResourceMetrics => size_of::<metrics::ResourceMetrics>(),
        ScopeMetrics => size_of::<metrics::ScopeMetrics>(),
        Metric => size_of::<metrics::Metric>(),
        NumberPoint => size_of::<metrics::NumberDataPoint>(),
        HistogramPoint => size_of::<metrics::HistogramDataPoint>(),
        ExpHistogramPoint => size_of::<metrics::ExponentialHistogramDataPoint>(),
        Buckets => size_of::<metrics::exponential_histogram_data_point::Buckets>(),
        SummaryPoint => size_of::<metrics::SummaryDataPoint>(),
        Quantile => size_of::<metrics::summary_data_point::ValueAtQuantile>(),
        Exemplar => size_of::<metrics::Exemplar>(),
        LogsRequest => size_of::<cl::ExportLogsServiceRequest>(),
        ResourceLogs => size_of::<logs::ResourceLogs>(),
        ScopeLogs => size_of::<logs::ScopeLogs>(),
        LogRecord => size_of::<logs::LogRecord>(),
        // Inside `Metric`'s data.
        Points | HistogramPoints | ExpHistogramPoints | SummaryPoints => 0,
    }
}

/// The largest struct a JSON object of `root` can become.
fn largest(root: Root) -> usize {
    use M::*;
    let own: &[M] = match root {
        Root::Traces => &[
            TraceRequest,
            ResourceSpans,
            ScopeSpans,
            Span,
            Event,
            Link,
            Status,
        ],
        Root::Metrics => &[
            MetricsRequest,
            ResourceMetrics,
            ScopeMetrics,
            Metric,
            NumberPoint,
            HistogramPoint,
            ExpHistogramPoint,
            Buckets,
            SummaryPoint,
            Quantile,
            Exemplar,
        ],
        Root::Logs => &[LogsRequest, ResourceLogs, ScopeLogs, LogRecord],
    };
    let common = [
        Resource,
        EntityRef,
        Scope,
        KeyValue,
        AnyValue,
        ArrayValue,
        KeyValueList,
    ];
    own.iter()
        .chain(&common)
        .map(|m| size(*m))
        .max()
        .unwrap_or(0)
}

/// Counts what `wire` (a protobuf request of `root`) decodes to.
pub(crate) fn census(root: Root, wire: &[u8]) -> Result<Census, ScanError> {
    let top = match root {
        Root::Traces => M::TraceRequest,
        Root::Metrics => M::MetricsRequest,
        Root::Logs => M::LogsRequest,
    };
    let mut c = Census {
        decoded: size(top),
        values: 0,
    };
    let mut elements = 0usize;
    walk(top, wire, 0, 0, &mut c, &mut elements)?;
    c.decoded = c.decoded.saturating_add(elements);
    Ok(c)
}

/// Refuses a protobuf request whose decoded form would be out of proportion to its size.
pub(crate) fn check(root: Root, wire: &[u8]) -> Result<Census, ScanError> {
    let c = census(root, wire)?;
    let limit = DECODED_PER_WIRE_BYTE
        .saturating_mul(wire.len())
        .saturating_add(DECODED_FLOOR);
    if c.decoded > limit {
        return Err(ScanError::OutOfProportion {
            decoded: c.decoded,
            values: c.values,
            wire: wire.len(),
            limit: DECODED_PER_WIRE_BYTE,
        });
    }
    Ok(c)
}

/// Refuses a JSON request whose objects could decode to more than
/// [`DECODED_PER_JSON_BYTE`] times its size.
pub(crate) fn check_json(root: Root, body: &[u8]) -> Result<(), ScanError> {
    let objects = body.iter().filter(|b| **b == b'{').count();
    let decoded = objects
        .saturating_mul(largest(root))
        .saturating_add(body.len());
    let limit = DECODED_PER_JSON_BYTE
        .saturating_mul(body.len())
        .saturating_add(DECODED_FLOOR);
    if decoded > limit {
        return Err(ScanError::OutOfProportion {
            decoded,
            values: objects,
            wire: body.len(),
            limit: DECODED_PER_JSON_BYTE,
        });
    }
    Ok(())
}

fn walk(
    m: M,
    mut buf: &[u8],
    base: usize,
    depth: u32,
    c: &mut Census,
    elements: &mut usize,
) -> Result<(), ScanError> {
    if depth > MAX_DEPTH {
        return Err(ScanError::Malformed {
            at: base,
            what: "nested more than 100 deep",
        });
    }
    let len = buf.len();
    while !buf.is_empty() {
        let at = base + (len - buf.len());
        let bad = |what| ScanError::Malformed { at, what };
        let key = decode_varint(&mut buf).map_err(|_| bad("bad field key"))?;
        let wire_type = WireType::try_from(key & 7).map_err(|_| bad("bad wire type"))?;
        let kind = field(m, (key >> 3) as u32);
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(|_| bad("bad varint"))?;
                if let F::Varints = kind {
                    c.values += 1;
                    *elements += 8;
                }
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire_type == WireType::SixtyFourBit {
                    8
                } else {
                    4
                };
                if buf.len() < n {
                    return Err(bad("truncated number"));
                }
                buf = &buf[n..];
                if let F::Fixed64s = kind {
                    c.values += 1;
                    *elements += 8;
                }
            }
            WireType::LengthDelimited => {
                let n = decode_varint(&mut buf).map_err(|_| bad("bad length"))?;
                if n > buf.len() as u64 {
                    return Err(bad("length beyond the end"));
                }
                let (payload, rest) = buf.split_at(n as usize);
                let inner = base + (len - buf.len());
                buf = rest;
                match kind {
                    F::Many(child) => {
                        c.values += 1;
                        *elements += size(child);
                        walk(child, payload, inner, depth + 1, c, elements)?;
                    }
                    F::One(child) => walk(child, payload, inner, depth + 1, c, elements)?,
                    F::Text => c.decoded += payload.len(),
                    F::Texts => {
                        c.values += 1;
                        *elements += size_of::<String>();
                        c.decoded += payload.len();
                    }
                    F::Varints => {
                        let n = payload.iter().filter(|b| **b < 0x80).count();
                        c.values += n;
                        *elements += 8 * n;
                    }
                    F::Fixed64s => {
                        c.values += payload.len() / 8;
                        *elements += payload.len();
                    }
                    F::Other => {}
                }
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(bad("groups are not part of OTLP"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use prost::Message;

    fn s(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn request(spans: Vec<trace::Span>, resource: Vec<KeyValue>) -> ct::ExportTraceServiceRequest {
        ct::ExportTraceServiceRequest {
            resource_spans: vec![trace::ResourceSpans {
                resource: Some(resource::Resource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_spans: vec![trace::ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// An Envoy-like span: ids, times, eight string tags.
    fn envoy_span(i: u64) -> trace::Span {
        trace::Span {
            trace_id: vec![7; 16],
            span_id: i.to_be_bytes().to_vec(),
            parent_span_id: vec![1; 8],
            name: "egress colorteller.local".into(),
            kind: 3,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_002_000_000,
            attributes: vec![
                s("http.method", "GET"),
                s("http.url", "http://colorteller.local/color"),
                s("http.status_code", "200"),
                s("upstream_cluster", "node/colorteller-white/9080"),
                s("x-maille-variant", "colorteller-white"),
                s("user_agent", "curl/8.0"),
                s("component", "proxy"),
                s("response_flags", "-"),
            ],
            status: Some(Default::default()),
            ..Default::default()
        }
    }

    /// What prost really allocates is below the estimate: the census of a request against
    /// the request decoded (strings and vectors at their capacity).
    #[test]
    fn normal_telemetry_is_far_within_the_limit() {
        let req = request(
            (0..100).map(envoy_span).collect(),
            vec![s("service.name", "gateway")],
        );
        let wire = req.encode_to_vec();
        let c = check(Root::Traces, &wire).expect("taken");
        let ratio = c.decoded as f64 / wire.len() as f64;
        println!("Envoy-like spans: {ratio:.1}x");
        assert!(ratio < DECODED_PER_WIRE_BYTE as f64 * 0.75, "{ratio:.1}x");
        assert!(ratio > 1.0, "{ratio:.1}x");
        assert_eq!(c.values, 1 + 1 + 100 + 100 * 8 + 1);
        // Small spans with numbers and booleans: still well within.
        let tiny: Vec<trace::Span> = (0..1000)
            .map(|i| trace::Span {
                trace_id: vec![7; 16],
                span_id: (i as u64).to_be_bytes().to_vec(),
                attributes: vec![KeyValue {
                    key: "ok".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::BoolValue(true)),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let wire = request(tiny, vec![]).encode_to_vec();
        let c = census(Root::Traces, &wire).unwrap();
        println!(
            "spans of ids and a boolean: {:.1}x",
            c.decoded as f64 / wire.len() as f64
        );
        assert!(
            c.decoded < DECODED_PER_WIRE_BYTE * wire.len(),
            "{:.1}x",
            c.decoded as f64 / wire.len() as f64
        );
    }

    #[test]
    fn empty_values_by_the_million_are_refused_and_named() {
        let empties = KeyValue {
            key: "e".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::ArrayValue(common::ArrayValue {
                    values: vec![AnyValue::default(); 1_000_000],
                })),
            }),
            ..Default::default()
        };
        let mut sp = envoy_span(1);
        sp.attributes.push(empties);
        let wire = request(vec![sp], vec![]).encode_to_vec();
        let e = check(Root::Traces, &wire).unwrap_err();
        assert!(
            e.to_string().contains("1000012 values") && e.to_string().contains("12x"),
            "{e}"
        );
        // Empty spans and empty attributes alike.
        let wire = request(vec![trace::Span::default(); 500_000], vec![]).encode_to_vec();
        assert!(matches!(
            check(Root::Traces, &wire),
            Err(ScanError::OutOfProportion { .. })
        ));
        let wire = request(vec![], vec![KeyValue::default(); 500_000]).encode_to_vec();
        assert!(matches!(
            check(Root::Traces, &wire),
            Err(ScanError::OutOfProportion { .. })
        ));
    }

    #[test]
    fn logs_are_counted_too() {
        use logs::{LogRecord, ResourceLogs, ScopeLogs};
        let req = |records: Vec<LogRecord>| {
            cl::ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: records,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec()
        };
        // Envoy's access log records: a line and sixteen attributes.
        let envoy = req((0..200)
            .map(|_| LogRecord {
                time_unix_nano: 1,
                body: Some(common::AnyValue {
                    value: Some(common::any_value::Value::StringValue(
                        "GET /color HTTP/1.1 200".into(),
                    )),
                }),
                attributes: (0..16).map(|i| s(&format!("k{i}"), "value")).collect(),
                trace_id: vec![1; 16],
                ..Default::default()
            })
            .collect());
        let c = check(Root::Logs, &envoy).expect("taken");
        assert!(
            c.decoded < 8 * envoy.len(),
            "{}",
            c.decoded as f64 / envoy.len() as f64
        );
        // Half a million empty records: two bytes each on the wire.
        let empty = req(vec![LogRecord::default(); 500_000]);
        assert!(matches!(
            check(Root::Logs, &empty),
            Err(ScanError::OutOfProportion { .. })
        ));
        // Empty attributes inside records.
        let attrs = req(vec![LogRecord {
            attributes: vec![KeyValue::default(); 500_000],
            ..Default::default()
        }]);
        assert!(matches!(
            check(Root::Logs, &attrs),
            Err(ScanError::OutOfProportion { .. })
        ));
    }

    #[test]
    fn metrics_are_counted_too() {
        use metrics::{
            exponential_histogram_data_point::Buckets, metric::Data, ExponentialHistogram,
            ExponentialHistogramDataPoint, Histogram, HistogramDataPoint, Metric, ResourceMetrics,
            ScopeMetrics,
        };
        let req = |data: Data| cm::ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "m".into(),
                        data: Some(data),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        // Envoy's histograms: twenty buckets, packed.
        let hist = req(Data::Histogram(Histogram {
            data_points: (0..200)
                .map(|_| HistogramDataPoint {
                    count: 10,
                    bucket_counts: vec![1; 20],
                    explicit_bounds: (0..19).map(f64::from).collect(),
                    attributes: vec![s("envoy.cluster_name", "colorteller")],
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: 2,
        }))
        .encode_to_vec();
        let c = check(Root::Metrics, &hist).expect("taken");
        assert!(
            c.decoded < 8 * hist.len(),
            "{}",
            c.decoded as f64 / hist.len() as f64
        );
        // A million zero bucket counts: one byte each packed, eight decoded: counted, and
        // within proportion.
        let zeros = req(Data::ExponentialHistogram(ExponentialHistogram {
            data_points: vec![ExponentialHistogramDataPoint {
                positive: Some(Buckets {
                    offset: 0,
                    bucket_counts: vec![0; 1_000_000],
                }),
                ..Default::default()
            }],
            aggregation_temporality: 1,
        }))
        .encode_to_vec();
        let c = census(Root::Metrics, &zeros).unwrap();
        assert!(c.values >= 1_000_000 && c.decoded >= 8_000_000, "{c:?}");
        check(Root::Metrics, &zeros).expect("8x is within");
    }

    #[test]
    fn malformed_input_is_refused_with_where() {
        for (bad, what) in [
            (&b"\xff\xff\xff"[..], "bad"),
            (&b"\x0a\x05ab"[..], "length beyond the end"),
            (&b"\x0b"[..], "groups"),
        ] {
            let e = census(Root::Traces, bad).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
        }
        // Nesting deeper than prost follows.
        let mut v = AnyValue::default();
        for _ in 0..120 {
            v = AnyValue {
                value: Some(any_value::Value::ArrayValue(common::ArrayValue {
                    values: vec![v],
                })),
            };
        }
        let mut sp = envoy_span(1);
        sp.attributes.push(KeyValue {
            key: "deep".into(),
            value: Some(v),
            ..Default::default()
        });
        let wire = request(vec![sp], vec![]).encode_to_vec();
        assert!(census(Root::Traces, &wire)
            .unwrap_err()
            .to_string()
            .contains("nested"));
    }

    #[test]
    fn json_objects_bound_json_requests() {
        let req = request(
            (0..100).map(envoy_span).collect(),
            vec![s("service.name", "g")],
        );
        let json = serde_json::to_vec(&req).unwrap();
        check_json(Root::Traces, &json).expect("normal OTLP/JSON is taken");
        let spans = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
            vec!["{}"; 300_000].join(",")
        );
        assert!(matches!(
            check_json(Root::Traces, spans.as_bytes()),
            Err(ScanError::OutOfProportion { .. })
        ));
    }
}
