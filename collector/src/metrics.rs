//! OpenTelemetry metrics to CloudWatch datums.
//!
//! - Gauges and non-monotonic sums: the value as it is.
//! - Monotonic sums and histograms with cumulative temporality become deltas against the
//!   previous point of the same series (metric, resource, attributes). **First point
//!   policy**: the first cumulative point of a series is sent whole when the series started
//!   after this collector did (everything it counts is new: Envoy only reports a counter once
//!   it is used, so its first point already holds the first requests); a series that started
//!   earlier gives a baseline that is not sent (part of it may have been sent by a collector
//!   before a restart). A point lower than the one before, or with a new start time, is a
//!   reset: its own value is the delta. Delta temporality is sent as is. Envoy 1.40 writes
//!   start times in microseconds; they are read as such.
//! - Histograms become `Values`/`Counts` (a representative value per non-empty bucket: the
//!   bucket's middle, its bound for the open-ended ones, clamped to min/max when known); over
//!   150 non-empty buckets they become a statistic set (count, sum, min, max).
//! - Dimensions come from an allowlist of attributes (resource or point), at most 30.
//! - NaN and infinite values are dropped and counted.
//! - Requests hold at most 1,000 datums and stay under 1 MB (the delivery loop batches them).
//! - A request's conversion is staged: the cumulative state (and the drop counts) move on
//!   only when its datums are queued, so a request pushed back and sent again loses no delta.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, HistogramDataPoint, NumberDataPoint,
};
use std::collections::{BTreeMap, HashMap};

/// Most datums per `PutMetricData`.
pub(crate) const MAX_DATUMS_PER_REQUEST: usize = 1000;
/// Largest `PutMetricData` payload, bytes (kept under with a margin for the encoding).
pub(crate) const MAX_REQUEST_BYTES: usize = 1_000_000;
/// Most dimensions per datum.
pub(crate) const MAX_DIMENSIONS: usize = 30;
/// Most distinct values per datum.
pub(crate) const MAX_VALUES: usize = 150;
/// Longest metric or dimension name.
pub(crate) const MAX_NAME_LEN: usize = 255;
/// Longest dimension value.
pub(crate) const MAX_DIMENSION_VALUE_LEN: usize = 1024;

/// Dimensions taken when no allowlist is configured: the service and Envoy's own tags.
pub(crate) const DEFAULT_DIMENSIONS: [&str; 5] = [
    "service.name",
    "envoy.cluster_name",
    "envoy.response_code_class",
    "envoy.http_conn_manager_prefix",
    "maille.variant",
];

/// The value of a datum.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// One value.
    Single(f64),
    /// A distribution as values and their counts.
    Distribution {
        /// Representative values.
        values: Vec<f64>,
        /// How many times each.
        counts: Vec<f64>,
    },
    /// A statistic set.
    Stats {
        /// Samples.
        count: f64,
        /// Their sum.
        sum: f64,
        /// Smallest.
        min: f64,
        /// Largest.
        max: f64,
    },
}

/// One CloudWatch datum, before it becomes the SDK's type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Datum {
    /// Metric name.
    pub(crate) name: String,
    /// Dimensions, sorted by name.
    pub(crate) dimensions: Vec<(String, String)>,
    /// Milliseconds since the epoch.
    pub(crate) timestamp_ms: i64,
    /// The value.
    pub(crate) value: Value,
    /// CloudWatch unit, when the OpenTelemetry unit maps to one.
    pub(crate) unit: Option<&'static str>,
}

impl Datum {
    /// A generous estimate of its encoded size, for request splitting.
    pub(crate) fn approx_bytes(&self) -> usize {
        let dims: usize = self
            .dimensions
            .iter()
            .map(|(k, v)| k.len() + v.len() + 80)
            .sum();
        let vals = match &self.value {
            Value::Single(_) => 40,
            Value::Distribution { values, .. } => values.len() * 60,
            Value::Stats { .. } => 160,
        };
        self.name.len() + dims + vals + 160
    }
}

#[derive(Debug, Clone)]
enum Prev {
    Number {
        start: u64,
        value: f64,
    },
    Histogram {
        start: u64,
        count: u64,
        sum: f64,
        buckets: Vec<u64>,
    },
}

/// Turns OTLP metrics into datums, keeping the state cumulative series need.
#[derive(Debug, Default)]
pub(crate) struct Converter {
    /// Attribute keys that become dimensions.
    pub(crate) dimensions: Vec<String>,
    /// When this collector started, ns since the epoch: series that started later are new.
    pub(crate) started_ns: u64,
    state: HashMap<String, Prev>,
    /// Dropped points by reason.
    pub(crate) dropped: BTreeMap<String, u64>,
}

/// What converting one request made: its datums, and the state it moves to once they are
/// queued ([`Converter::commit`]).
#[derive(Debug)]
pub(crate) struct Converted {
    pub(crate) datums: Vec<Datum>,
    /// Points in the request.
    pub(crate) points: u64,
    pub(crate) staged: Staged,
}

/// State changes of a conversion not yet committed.
#[derive(Debug, Default)]
pub(crate) struct Staged {
    state: HashMap<String, Prev>,
    dropped: BTreeMap<String, u64>,
}

impl Staged {
    /// Points this conversion drops, by reason.
    pub(crate) fn dropped(&self) -> &BTreeMap<String, u64> {
        &self.dropped
    }

    fn drop(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_owned()).or_default() += 1;
    }
}

fn unit(u: &str) -> Option<&'static str> {
    Some(match u {
        "s" => "Seconds",
        "ms" => "Milliseconds",
        "us" => "Microseconds",
        "By" => "Bytes",
        "KiBy" => "Kilobytes",
        "MiBy" => "Megabytes",
        "bit" => "Bits",
        "%" => "Percent",
        "1" | "{request}" | "{requests}" | "{count}" => "Count",
        _ => return None,
    })
}

fn attr_string(kv: &KeyValue) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    Some(match kv.value.as_ref()?.value.as_ref()? {
        V::StringValue(s) => s.clone(),
        V::IntValue(i) => i.to_string(),
        V::DoubleValue(d) => d.to_string(),
        V::BoolValue(b) => b.to_string(),
        _ => return None,
    })
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

impl Converter {
    /// A converter taking `dimensions` (or [`DEFAULT_DIMENSIONS`] when empty).
    pub(crate) fn new(dimensions: Vec<String>) -> Converter {
        Converter {
            dimensions: if dimensions.is_empty() {
                DEFAULT_DIMENSIONS.iter().map(|s| s.to_string()).collect()
            } else {
                dimensions
            },
            started_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            ..Default::default()
        }
    }

    /// Whether a series with this start time began after the collector did.
    fn is_new(&self, start: u64, time: u64) -> bool {
        // Microseconds (Envoy) are a thousand times smaller than the point's own time.
        let start = if start > 0 && start.saturating_mul(100) < time {
            start.saturating_mul(1000)
        } else {
            start
        };
        start > 0 && start >= self.started_ns
    }

    /// Moves on to the state a conversion staged.
    pub(crate) fn commit(&mut self, staged: Staged) {
        self.state.extend(staged.state);
        for (reason, n) in staged.dropped {
            *self.dropped.entry(reason).or_default() += n;
        }
    }

    /// Records `now` for a series, returning what it had before (this request's earlier
    /// point first).
    fn swap(&self, staged: &mut Staged, key: String, now: Prev) -> Option<Prev> {
        let before = self.state.get(&key).cloned();
        staged.state.insert(key, now).or(before)
    }

    fn dims(&self, resource: &[KeyValue], point: &[KeyValue]) -> Vec<(String, String)> {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for kv in resource.iter().chain(point) {
            if self.dimensions.iter().any(|d| d == &kv.key) {
                if let Some(v) = attr_string(kv).filter(|v| !v.is_empty()) {
                    out.insert(
                        truncate(&kv.key, MAX_NAME_LEN),
                        truncate(&v, MAX_DIMENSION_VALUE_LEN),
                    );
                }
            }
        }
        out.into_iter().take(MAX_DIMENSIONS).collect()
    }

    fn series_key(name: &str, resource: &[KeyValue], point: &[KeyValue]) -> String {
        let mut attrs: Vec<String> = resource
            .iter()
            .chain(point)
            .map(|kv| format!("{}={}", kv.key, attr_string(kv).unwrap_or_default()))
            .collect();
        attrs.sort();
        format!("{name}|{}", attrs.join(","))
    }

    /// The datums of one request, its state changes staged.
    pub(crate) fn convert(&self, req: &ExportMetricsServiceRequest) -> Converted {
        let mut out = Vec::new();
        let mut st = Staged::default();
        let mut points = 0u64;
        for rm in &req.resource_metrics {
            let res: &[KeyValue] = rm
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or(&[]);
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let name = truncate(&m.name, MAX_NAME_LEN);
                    let u = unit(&m.unit);
                    match &m.data {
                        Some(Data::Gauge(g)) => {
                            for p in &g.data_points {
                                points += 1;
                                self.number(&mut st, &mut out, &name, u, res, p, false);
                            }
                        }
                        Some(Data::Sum(s)) => {
                            let cumulative = s.aggregation_temporality
                                == AggregationTemporality::Cumulative as i32;
                            for p in &s.data_points {
                                points += 1;
                                self.number(
                                    &mut st,
                                    &mut out,
                                    &name,
                                    u,
                                    res,
                                    p,
                                    cumulative && s.is_monotonic,
                                );
                            }
                        }
                        Some(Data::Histogram(h)) => {
                            let cumulative = h.aggregation_temporality
                                == AggregationTemporality::Cumulative as i32;
                            for p in &h.data_points {
                                points += 1;
                                self.histogram(&mut st, &mut out, &name, u, res, p, cumulative);
                            }
                        }
                        Some(Data::Summary(s)) => {
                            for p in &s.data_points {
                                points += 1;
                                // Summaries are cumulative by definition; CloudWatch gets
                                // count and sum as a statistic set without min/max.
                                if p.count > 0 && p.sum.is_finite() {
                                    let mean = p.sum / p.count as f64;
                                    out.push(Datum {
                                        name: name.clone(),
                                        dimensions: self.dims(res, &p.attributes),
                                        timestamp_ms: (p.time_unix_nano / 1_000_000) as i64,
                                        value: Value::Stats {
                                            count: p.count as f64,
                                            sum: p.sum,
                                            min: mean,
                                            max: mean,
                                        },
                                        unit: u,
                                    });
                                }
                            }
                        }
                        Some(Data::ExponentialHistogram(e)) => {
                            for _ in &e.data_points {
                                points += 1;
                                st.drop("exponential histograms are not supported");
                            }
                        }
                        None => st.drop("metric without data"),
                    }
                }
            }
        }
        Converted {
            datums: out,
            points,
            staged: st,
        }
    }

    #[allow(clippy::too_many_arguments)] // One point and where it goes.
    fn number(
        &self,
        st: &mut Staged,
        out: &mut Vec<Datum>,
        name: &str,
        u: Option<&'static str>,
        res: &[KeyValue],
        p: &NumberDataPoint,
        cumulative: bool,
    ) {
        let v = match p.value {
            Some(number_data_point::Value::AsDouble(d)) => d,
            Some(number_data_point::Value::AsInt(i)) => i as f64,
            None => return st.drop("point without value"),
        };
        if !v.is_finite() {
            return st.drop("NaN or infinite value");
        }
        let value = if cumulative {
            let key = Self::series_key(name, res, &p.attributes);
            let prev = self.swap(
                st,
                key,
                Prev::Number {
                    start: p.start_time_unix_nano,
                    value: v,
                },
            );
            match prev {
                None if self.is_new(p.start_time_unix_nano, p.time_unix_nano) => v,
                None => return, // first point of an older series: the baseline
                Some(Prev::Number { start, value })
                    if start == p.start_time_unix_nano && v >= value =>
                {
                    v - value
                }
                Some(_) => v, // a reset
            }
        } else {
            v
        };
        out.push(Datum {
            name: name.to_owned(),
            dimensions: self.dims(res, &p.attributes),
            timestamp_ms: (p.time_unix_nano / 1_000_000) as i64,
            value: Value::Single(value),
            unit: u,
        });
    }

    #[allow(clippy::too_many_arguments)] // One point and where it goes.
    fn histogram(
        &self,
        st: &mut Staged,
        out: &mut Vec<Datum>,
        name: &str,
        u: Option<&'static str>,
        res: &[KeyValue],
        p: &HistogramDataPoint,
        cumulative: bool,
    ) {
        let sum = p.sum.unwrap_or(0.0);
        if !sum.is_finite() || p.explicit_bounds.iter().any(|b| !b.is_finite()) {
            return st.drop("NaN or infinite value");
        }
        let (count, sum, buckets) = if cumulative {
            let key = Self::series_key(name, res, &p.attributes);
            let prev = self.swap(
                st,
                key,
                Prev::Histogram {
                    start: p.start_time_unix_nano,
                    count: p.count,
                    sum,
                    buckets: p.bucket_counts.clone(),
                },
            );
            match prev {
                None if self.is_new(p.start_time_unix_nano, p.time_unix_nano) => {
                    (p.count, sum, p.bucket_counts.clone())
                }
                None => return,
                Some(Prev::Histogram {
                    start,
                    count,
                    sum: psum,
                    buckets,
                }) if start == p.start_time_unix_nano
                    && p.count >= count
                    && buckets.len() == p.bucket_counts.len()
                    && buckets.iter().zip(&p.bucket_counts).all(|(a, b)| b >= a) =>
                {
                    (
                        p.count - count,
                        sum - psum,
                        p.bucket_counts
                            .iter()
                            .zip(&buckets)
                            .map(|(b, a)| b - a)
                            .collect::<Vec<u64>>(),
                    )
                }
                Some(_) => (p.count, sum, p.bucket_counts.clone()),
            }
        } else {
            (p.count, sum, p.bucket_counts.clone())
        };
        if count == 0 {
            return;
        }
        let b = &p.explicit_bounds;
        let clamp = |v: f64| {
            let v = p.min.map_or(v, |m| v.max(m));
            p.max.map_or(v, |m| v.min(m))
        };
        let mut values = Vec::new();
        let mut counts = Vec::new();
        for (i, c) in buckets.iter().enumerate() {
            if *c == 0 {
                continue;
            }
            let rep = if b.is_empty() {
                sum / count as f64
            } else if i == 0 {
                b[0]
            } else if i >= b.len() {
                b[b.len() - 1]
            } else {
                (b[i - 1] + b[i]) / 2.0
            };
            values.push(clamp(rep));
            counts.push(*c as f64);
        }
        let value = if values.len() <= MAX_VALUES && !values.is_empty() {
            Value::Distribution { values, counts }
        } else {
            let mean = sum / count as f64;
            Value::Stats {
                count: count as f64,
                sum,
                min: p.min.unwrap_or(mean),
                max: p.max.unwrap_or(mean),
            }
        };
        out.push(Datum {
            name: name.to_owned(),
            dimensions: self.dims(res, &p.attributes),
            timestamp_ms: (p.time_unix_nano / 1_000_000) as i64,
            value,
            unit: u,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
    use opentelemetry_proto::tonic::metrics::v1::{
        Histogram, Metric, ResourceMetrics, ScopeMetrics, Sum,
    };

    /// Converts and commits, as a request that was queued.
    fn run(c: &mut Converter, req: &ExportMetricsServiceRequest) -> Vec<Datum> {
        let done = c.convert(req);
        c.commit(done.staged);
        done.datums
    }

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn req(metric: Metric) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: vec![kv("service.name", "gateway")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![metric],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn counter(v: f64, start: u64, t: u64) -> ExportMetricsServiceRequest {
        req(Metric {
            name: "cluster.upstream_rq_total".into(),
            unit: "1".into(),
            data: Some(Data::Sum(Sum {
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
                data_points: vec![NumberDataPoint {
                    attributes: vec![
                        kv("envoy.cluster_name", "colorteller"),
                        kv("not.a.dimension", "x"),
                    ],
                    start_time_unix_nano: start,
                    time_unix_nano: t,
                    value: Some(number_data_point::Value::AsDouble(v)),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        })
    }

    #[test]
    fn cumulative_counters_become_deltas_with_resets() {
        let mut c = Converter::new(vec![]);
        assert!(
            run(&mut c, &counter(10.0, 1, 1_000_000_000)).is_empty(),
            "first point is the baseline"
        );
        let d = run(&mut c, &counter(25.0, 1, 2_000_000_000));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].value, Value::Single(15.0));
        assert_eq!(d[0].unit, Some("Count"));
        assert_eq!(d[0].timestamp_ms, 2000);
        assert_eq!(
            d[0].dimensions,
            vec![
                ("envoy.cluster_name".into(), "colorteller".into()),
                ("service.name".into(), "gateway".into())
            ]
        );
        // Envoy restarted: the counter starts over.
        let d = run(&mut c, &counter(4.0, 5, 3_000_000_000));
        assert_eq!(d[0].value, Value::Single(4.0));
        // NaN is dropped and counted.
        assert!(run(&mut c, &counter(f64::NAN, 5, 4_000_000_000)).is_empty());
        assert_eq!(c.dropped.get("NaN or infinite value"), Some(&1));
    }

    #[test]
    fn a_conversion_that_is_not_queued_moves_no_state() {
        let mut c = Converter::new(vec![]);
        assert!(run(&mut c, &counter(10.0, 1, 1_000_000_000)).is_empty());
        // Pushed back (queue full): converted, not committed; sent again, same delta.
        let refused = c.convert(&counter(25.0, 1, 2_000_000_000));
        assert_eq!(refused.datums[0].value, Value::Single(15.0));
        let again = c.convert(&counter(25.0, 1, 2_000_000_000));
        assert_eq!(again.datums[0].value, Value::Single(15.0));
        c.commit(again.staged);
        let d = run(&mut c, &counter(30.0, 1, 3_000_000_000));
        assert_eq!(d[0].value, Value::Single(5.0));
        // Two points of one series in one request: the second is a delta of the first.
        let mut two = counter(40.0, 1, 4_000_000_000);
        two.resource_metrics
            .push(counter(44.0, 1, 5_000_000_000).resource_metrics.remove(0));
        let d = run(&mut c, &two);
        assert_eq!(
            d.iter().map(|d| d.value.clone()).collect::<Vec<_>>(),
            vec![Value::Single(10.0), Value::Single(4.0)]
        );
    }

    #[test]
    fn a_series_that_started_after_the_collector_counts_from_its_first_point() {
        let mut c = Converter::new(vec![]);
        // As Envoy sends it: start in microseconds, time in nanoseconds, first point at 13.
        let start_us = c.started_ns / 1000 + 5_000_000;
        let t0 = c.started_ns;
        let d = run(&mut c, &counter(13.0, start_us, t0 + 6_000_000_000));
        assert_eq!(d[0].value, Value::Single(13.0));
        let d = run(&mut c, &counter(13.0, start_us, t0 + 7_000_000_000));
        assert_eq!(d[0].value, Value::Single(0.0));
    }

    #[test]
    fn histograms_become_values_and_counts_of_the_delta() {
        let h = |counts: Vec<u64>, sum: f64, t: u64| {
            req(Metric {
                name: "cluster.upstream_rq_time".into(),
                unit: "ms".into(),
                data: Some(Data::Histogram(Histogram {
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    data_points: vec![HistogramDataPoint {
                        start_time_unix_nano: 1,
                        time_unix_nano: t,
                        count: counts.iter().sum(),
                        sum: Some(sum),
                        bucket_counts: counts,
                        explicit_bounds: vec![1.0, 5.0, 10.0],
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            })
        };
        let mut c = Converter::new(vec![]);
        assert!(run(&mut c, &h(vec![1, 2, 0, 0], 7.0, 1)).is_empty());
        let d = run(&mut c, &h(vec![1, 5, 2, 1], 60.0, 2));
        assert_eq!(d[0].unit, Some("Milliseconds"));
        assert_eq!(
            d[0].value,
            Value::Distribution {
                values: vec![3.0, 7.5, 10.0],
                counts: vec![3.0, 2.0, 1.0]
            }
        );
    }

    #[test]
    fn many_buckets_become_a_statistic_set_and_datum_sizes_are_estimated_generously() {
        let bounds: Vec<f64> = (1..=200).map(f64::from).collect();
        let m = req(Metric {
            name: "wide".into(),
            data: Some(Data::Histogram(Histogram {
                aggregation_temporality: AggregationTemporality::Delta as i32,
                data_points: vec![HistogramDataPoint {
                    time_unix_nano: 1,
                    count: 201,
                    sum: Some(20_100.0),
                    bucket_counts: vec![1; 201],
                    explicit_bounds: bounds,
                    min: Some(0.5),
                    max: Some(250.0),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        });
        let mut c = Converter::new(vec![]);
        let d = run(&mut c, &m);
        assert_eq!(
            d[0].value,
            Value::Stats {
                count: 201.0,
                sum: 20_100.0,
                min: 0.5,
                max: 250.0
            }
        );
        let big = Datum {
            name: "x".repeat(255),
            dimensions: (0..30)
                .map(|i| (format!("d{i}"), "v".repeat(1024)))
                .collect(),
            timestamp_ms: 0,
            value: Value::Single(1.0),
            unit: None,
        };
        // The estimate the batches are cut by covers what the SDK sends.
        let encoded: usize = 255 + 30 * (1024 + 20 + 60);
        assert!(big.approx_bytes() >= encoded);
    }
}
