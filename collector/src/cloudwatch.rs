//! CloudWatch's `PutMetricData` as the delivery loop's destination: datums made SDK types,
//! at most 1,000 per call and under 1 MB, failures read by the shared AWS rules (CloudWatch
//! throttles with `400 Throttling`).

use crate::aws;
use crate::delivery::{Destination, Entry, Item, Rejected, SendError};
use crate::metrics::{Datum, Value};

/// Where `PutMetricData` goes.
#[derive(Debug, Clone)]
pub struct CloudWatchSink {
    client: aws_sdk_cloudwatch::Client,
    namespace: String,
    storage_resolution: i32,
}

impl CloudWatchSink {
    /// CloudWatch from an SDK config, into `namespace`, at `storage_resolution` seconds (1 or 60).
    pub fn new(
        config: &aws_config::SdkConfig,
        namespace: &str,
        storage_resolution: i32,
    ) -> CloudWatchSink {
        // The SDK's own retries are off: the delivery loop retries, and backs off, itself.
        use aws_sdk_cloudwatch::config::{retry::RetryConfig, Builder};
        CloudWatchSink {
            client: aws_sdk_cloudwatch::Client::from_conf(
                Builder::from(config)
                    .retry_config(RetryConfig::disabled())
                    .build(),
            ),
            namespace: namespace.to_owned(),
            storage_resolution,
        }
    }

    fn datum(&self, d: &Datum) -> aws_sdk_cloudwatch::types::MetricDatum {
        use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit, StatisticSet};
        let mut b = MetricDatum::builder()
            .metric_name(&d.name)
            .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from_millis(
                d.timestamp_ms,
            ))
            .storage_resolution(self.storage_resolution)
            .set_dimensions(Some(
                d.dimensions
                    .iter()
                    .map(|(k, v)| Dimension::builder().name(k).value(v).build())
                    .collect(),
            ));
        if let Some(u) = d.unit {
            b = b.unit(StandardUnit::from(u));
        }
        b = match &d.value {
            Value::Single(v) => b.value(*v),
            Value::Distribution { values, counts } => b
                .set_values(Some(values.clone()))
                .set_counts(Some(counts.clone())),
            Value::Stats {
                count,
                sum,
                min,
                max,
            } => b.statistic_values(
                StatisticSet::builder()
                    .sample_count(*count)
                    .sum(*sum)
                    .minimum(*min)
                    .maximum(*max)
                    .build(),
            ),
        };
        b.build()
    }
}

impl Item for Datum {
    fn bytes(&self) -> usize {
        self.approx_bytes()
    }

    fn describe(&self) -> String {
        format!("datum {} {:?}", self.name, self.dimensions)
    }
}

impl Destination<Datum> for CloudWatchSink {
    const NAME: &'static str = "CloudWatch";

    async fn send(&self, batch: &[Entry<Datum>]) -> Result<Vec<Rejected>, SendError> {
        self.client
            .put_metric_data()
            .namespace(&self.namespace)
            .set_metric_data(Some(batch.iter().map(|e| self.datum(&e.item)).collect()))
            .send()
            .await
            .map(|_| Vec::new())
            .map_err(|e| aws::classify("CloudWatch", &e))
    }
}
