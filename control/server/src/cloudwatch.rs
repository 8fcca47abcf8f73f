//! Rollout analysis from Amazon CloudWatch (`GetMetricData`) on what Maille's collectors
//! export: `envoy.cluster.upstream_rq_total` (dimension `envoy.cluster_name`),
//! `envoy.cluster.upstream_rq_xx` (`envoy.cluster_name`, `envoy.response_code_class` = 5)
//! and the p99 of `envoy.cluster.upstream_rq_time` (`envoy.cluster_name`): the series a
//! collector writes when run with `--dimension envoy.cluster_name --dimension
//! envoy.response_code_class`.
//!
//! Built with the `cloudwatch` feature only, so that the default server links no AWS SDK.

use crate::rollouts::MetricSource;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use maille_api::Sample;

/// CloudWatch through the AWS SDK (region, credentials, `AWS_ENDPOINT_URL` from the default
/// chain).
#[derive(Debug, Clone)]
pub struct CloudWatchSource {
    client: aws_sdk_cloudwatch::Client,
    namespace: String,
}

impl CloudWatchSource {
    /// The default AWS chain; metrics in `namespace` (the collectors' `--namespace`).
    pub async fn from_env(namespace: &str) -> CloudWatchSource {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        CloudWatchSource {
            client: aws_sdk_cloudwatch::Client::new(&config),
            namespace: namespace.to_owned(),
        }
    }

    fn query(
        &self,
        id: &str,
        metric: &str,
        dims: &[(&str, &str)],
        stat: &str,
        period: i32,
    ) -> MetricDataQuery {
        let m = Metric::builder()
            .namespace(&self.namespace)
            .metric_name(metric)
            .set_dimensions(Some(
                dims.iter()
                    .map(|(k, v)| Dimension::builder().name(*k).value(*v).build())
                    .collect(),
            ))
            .build();
        MetricDataQuery::builder()
            .id(id)
            .metric_stat(
                MetricStat::builder()
                    .metric(m)
                    .period(period)
                    .stat(stat)
                    .build(),
            )
            .return_data(true)
            .build()
    }
}

#[tonic::async_trait]
impl MetricSource for CloudWatchSource {
    async fn sample(&self, cluster: &str, from_ms: u64, to_ms: u64) -> Result<Sample, String> {
        let secs = to_ms.saturating_sub(from_ms).div_ceil(1000).max(1);
        // Standard-resolution data comes in minutes.
        let period = (secs.div_ceil(60) * 60) as i32;
        let c = [("envoy.cluster_name", cluster)];
        let out = self
            .client
            .get_metric_data()
            .start_time(DateTime::from_millis(from_ms as i64))
            .end_time(DateTime::from_millis(to_ms as i64))
            .metric_data_queries(self.query(
                "requests",
                "envoy.cluster.upstream_rq_total",
                &c,
                "Sum",
                period,
            ))
            .metric_data_queries(self.query(
                "errors",
                "envoy.cluster.upstream_rq_xx",
                &[
                    ("envoy.cluster_name", cluster),
                    ("envoy.response_code_class", "5"),
                ],
                "Sum",
                period,
            ))
            .metric_data_queries(self.query(
                "p99",
                "envoy.cluster.upstream_rq_time",
                &c,
                "p99",
                period,
            ))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "CloudWatch GetMetricData: {}",
                    aws_sdk_cloudwatch::error::DisplayErrorContext(&e)
                )
            })?;
        let mut s = Sample::default();
        let mut p99 = None;
        for r in out.metric_data_results() {
            let total: f64 = r.values().iter().sum();
            match r.id() {
                Some("requests") => s.requests = total.max(0.0) as u64,
                Some("errors") => s.errors = total.max(0.0) as u64,
                Some("p99") => p99 = r.values().iter().copied().reduce(f64::max),
                _ => {}
            }
        }
        let s = Sample::from_counts(s.requests, s.errors, p99);
        Ok(s)
    }
}
