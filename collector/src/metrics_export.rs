//! Metrics to CloudWatch: OTLP metrics (gRPC `MetricsService/Export`, HTTP `POST
//! /v1/metrics`) converted by [`crate::metrics::Converter`], queued as `PutMetricData`
//! requests, and sent with retries: throttling (`400 Throttling`), 5xx and an unreachable
//! endpoint are retried with backoff and jitter; a full queue tells the sender to retry.

use crate::metrics::{requests, Converter, Datum, Value};
use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Counters of the metrics path.
#[derive(Debug, Default)]
pub struct MetricStats {
    /// Datums CloudWatch accepted.
    pub exported: AtomicU64,
    /// Requests retried.
    pub retried: AtomicU64,
    /// Datums dropped because CloudWatch refused them for good.
    pub refused: AtomicU64,
}

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
        CloudWatchSink {
            client: aws_sdk_cloudwatch::Client::new(config),
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

    /// Sends one request; `Ok(false)` when CloudWatch refused it for good.
    async fn put(&self, batch: &[Datum]) -> Result<bool, String> {
        use aws_sdk_cloudwatch::error::SdkError;
        let r = self
            .client
            .put_metric_data()
            .namespace(&self.namespace)
            .set_metric_data(Some(batch.iter().map(|d| self.datum(d)).collect()))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e)) => {
                let status = e.raw().status().as_u16();
                let msg = aws_sdk_cloudwatch::error::DisplayErrorContext(e.err()).to_string();
                if status >= 500 || status == 429 || msg.contains("Throttling") {
                    Err(format!("HTTP {status}: {msg}"))
                } else {
                    tracing::error!(status, error = %msg, datums = batch.len(), "CloudWatch refused metrics; dropped");
                    Ok(false)
                }
            }
            Err(e) => Err(aws_sdk_cloudwatch::error::DisplayErrorContext(&e).to_string()),
        }
    }
}

/// The metrics receiver and its queue.
#[derive(Debug, Clone)]
pub struct MetricsReceiver {
    converter: Arc<Mutex<Converter>>,
    tx: mpsc::Sender<Vec<Datum>>,
    /// Counters.
    pub stats: Arc<MetricStats>,
}

impl MetricsReceiver {
    /// Starts the exporter; `capacity` is in `PutMetricData` requests.
    pub fn start(
        sink: CloudWatchSink,
        dimensions: Vec<String>,
        capacity: usize,
    ) -> (MetricsReceiver, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Vec<Datum>>(capacity.max(1));
        let stats = Arc::new(MetricStats::default());
        let st = stats.clone();
        let handle = tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                let mut attempt = 0u32;
                loop {
                    match sink.put(&batch).await {
                        Ok(true) => {
                            st.exported.fetch_add(batch.len() as u64, Ordering::Relaxed);
                            break;
                        }
                        Ok(false) => {
                            st.refused.fetch_add(batch.len() as u64, Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, attempt, "CloudWatch send failed; retrying");
                            st.retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(crate::export::backoff(attempt)).await;
                            attempt += 1;
                        }
                    }
                }
            }
        });
        (
            MetricsReceiver {
                converter: Arc::new(Mutex::new(Converter::new(dimensions))),
                tx,
                stats,
            },
            handle,
        )
    }

    /// Converts and queues a request, all or none.
    pub fn take(&self, req: &ExportMetricsServiceRequest) -> Result<(), String> {
        let datums = self
            .converter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .convert(req);
        let reqs = requests(datums);
        match self.tx.try_reserve_many(reqs.len().max(1)) {
            Ok(permits) => {
                for (p, r) in permits.zip(reqs) {
                    p.send(r);
                }
                Ok(())
            }
            Err(_) => Err("the metrics queue is full: retry later".into()),
        }
    }

    /// Points dropped by the converter, by reason.
    pub fn dropped(&self) -> std::collections::BTreeMap<String, u64> {
        self.converter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dropped
            .clone()
    }

    /// The gRPC service.
    pub fn grpc(self, max: usize) -> MetricsServiceServer<MetricsReceiver> {
        MetricsServiceServer::new(self).max_decoding_message_size(max)
    }
}

#[tonic::async_trait]
impl MetricsService for MetricsReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.take(request.get_ref())
            .map(|()| {
                tonic::Response::new(ExportMetricsServiceResponse {
                    partial_success: None,
                })
            })
            .map_err(tonic::Status::resource_exhausted)
    }
}

/// `POST /v1/metrics`: protobuf or JSON.
pub async fn http_metrics(
    axum::extract::State(r): axum::extract::State<MetricsReceiver>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (req, json) =
        match crate::receive::decode::<ExportMetricsServiceRequest>(&headers, body, "metrics") {
            Ok(r) => r,
            Err(resp) => return *resp,
        };
    match r.take(&req) {
        Ok(()) => {
            let resp = ExportMetricsServiceResponse {
                partial_success: None,
            };
            crate::receive::encode(&resp, json)
        }
        Err(m) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            m,
        )
            .into_response(),
    }
}
