//! CloudWatch Logs' `PutLogEvents` as the delivery loop's destination. The loop gives it
//! calls of one stream's events (their partition) within the API's limits: 10,000 events,
//! 1 MiB counting 26 bytes per event, 24 hours between the first and the last. Each call's
//! events are sent in time order; a group or stream that does not exist is created (and the
//! group given its retention, when configured) and the call sent again. Events CloudWatch
//! Logs says are too old, too new or past the group's retention are given up on by that
//! reason; the rest of the call is delivered.

use crate::aws;
use crate::delivery::{Destination, Entry, Item, Rejected, SendError};
use crate::logs::{Event, Stream, EVENT_OVERHEAD};
use aws_sdk_cloudwatchlogs::types::InputLogEvent;

/// Where log events go.
#[derive(Debug, Clone)]
pub struct CloudWatchLogsSink {
    client: aws_sdk_cloudwatchlogs::Client,
    retention_days: Option<i32>,
}

impl CloudWatchLogsSink {
    /// CloudWatch Logs from an SDK config; groups this creates keep events for
    /// `retention_days` (CloudWatch Logs' own default, never expiring, when `None`). The SDK's
    /// own retries are off: the delivery loop retries, and backs off, itself.
    pub fn new(config: &aws_config::SdkConfig, retention_days: Option<i32>) -> CloudWatchLogsSink {
        use aws_sdk_cloudwatchlogs::config::{retry::RetryConfig, Builder};
        CloudWatchLogsSink {
            client: aws_sdk_cloudwatchlogs::Client::from_conf(
                Builder::from(config)
                    .retry_config(RetryConfig::disabled())
                    .build(),
            ),
            retention_days,
        }
    }

    /// Creates the group (with its retention) and the stream; either may exist already.
    async fn create(&self, stream: &Stream) -> Result<(), SendError> {
        match self
            .client
            .create_log_group()
            .log_group_name(&stream.group)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(group = %stream.group, "created the log group");
                if let Some(days) = self.retention_days {
                    self.client
                        .put_retention_policy()
                        .log_group_name(&stream.group)
                        .retention_in_days(days)
                        .send()
                        .await
                        .map_err(|e| aws::classify("CloudWatch Logs", &e))?;
                }
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception()) => {}
            Err(e) => return Err(aws::classify("CloudWatch Logs", &e)),
        }
        match self
            .client
            .create_log_stream()
            .log_group_name(&stream.group)
            .log_stream_name(&stream.name)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(aws::classify("CloudWatch Logs", &e)),
        }
    }
}

impl Item for Event {
    fn bytes(&self) -> usize {
        self.message.len() + EVENT_OVERHEAD
    }

    fn describe(&self) -> String {
        format!(
            "log event {:016x} of {} {}",
            self.id, self.stream.group, self.stream.name
        )
    }

    fn partition(&self) -> u64 {
        self.key
    }

    fn time_ms(&self) -> i64 {
        self.timestamp_ms
    }
}

impl Destination<Event> for CloudWatchLogsSink {
    const NAME: &'static str = "CloudWatch Logs";

    async fn send(&self, batch: &[Entry<Event>]) -> Result<Vec<Rejected>, SendError> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let stream = first.item.stream.clone();
        // In time order (stable: one request's events keep theirs); `order[i]` is the batch
        // index of the i-th event sent.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|i| batch[*i].item.timestamp_ms);
        let events: Vec<InputLogEvent> = order
            .iter()
            .map(|i| {
                let e = &batch[*i].item;
                InputLogEvent::builder()
                    .timestamp(e.timestamp_ms)
                    .message(&e.message)
                    .build()
                    .expect("timestamp and message are set")
            })
            .collect();
        let put = || {
            self.client
                .put_log_events()
                .log_group_name(&stream.group)
                .log_stream_name(&stream.name)
                .set_log_events(Some(events.clone()))
                .send()
        };
        let out = match put().await {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                self.create(&stream).await?;
                put()
                    .await
                    .map_err(|e| aws::classify("CloudWatch Logs", &e))?
            }
            Err(e) => return Err(aws::classify("CloudWatch Logs", &e)),
        };
        let mut rejected = Vec::new();
        if let Some(info) = out.rejected_log_events_info() {
            let n = order.len();
            let clamp = |i: i32| usize::try_from(i).ok().map(|i| i.min(n));
            let mut reject = |range: std::ops::Range<usize>, reason: &str| {
                for sent in range {
                    rejected.push(Rejected {
                        index: order[sent],
                        reason: format!("rejected by CloudWatch Logs: {reason}"),
                        retryable: false,
                    });
                }
            };
            if let Some(end) = info.too_old_log_event_end_index().and_then(clamp) {
                reject(0..(end + 1).min(n), "older than 14 days");
            }
            if let Some(end) = info.expired_log_event_end_index().and_then(clamp) {
                reject(0..(end + 1).min(n), "older than the group's retention");
            }
            if let Some(start) = info.too_new_log_event_start_index().and_then(clamp) {
                reject(start..n, "more than 2 hours in the future");
            }
            rejected.sort_by_key(|r| r.index);
            rejected.dedup_by_key(|r| r.index);
        }
        Ok(rejected)
    }
}
