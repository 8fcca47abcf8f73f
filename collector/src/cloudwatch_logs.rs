//! CloudWatch Logs' `PutLogEvents` as the delivery loop's destination. The loop gives it
//! calls of one stream's events within the API's limits: 10,000 events, 1 MiB counting 26
//! bytes per event, 24 hours between the first and the last. Each call's events are sent in
//! time order. A stream that does not exist is created, and its group first when that is
//! missing too (given its retention, when configured), and the call sent again; names
//! CloudWatch Logs refuses give up on the call's events at once. Events older than 14 days
//! or more than 2 hours ahead are given up on without a call, those CloudWatch Logs says are
//! too old, too new or past the group's retention after it, by that reason and at once; the
//! rest of the call is delivered.

use crate::aws;
use crate::delivery::{Destination, Entry, Item, Rejected, SendError};
use crate::logs::{Event, Stream, EVENT_OVERHEAD};
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Events older than this are refused by CloudWatch Logs.
const OLDEST_MS: i64 = 14 * 24 * 3600 * 1000;
/// Events further ahead than this are refused by CloudWatch Logs.
const NEWEST_MS: i64 = 2 * 3600 * 1000;
/// Why an event outside those bounds is given up on.
const TOO_OLD: &str = "older than 14 days";
const TOO_NEW: &str = "more than 2 hours in the future";

/// Tries at setting a created group's retention before giving up on it (logged).
const RETENTION_TRIES: u32 = 5;

/// Where log events go.
#[derive(Debug, Clone)]
pub struct CloudWatchLogsSink {
    client: aws_sdk_cloudwatchlogs::Client,
    retention_days: Option<i32>,
    /// Groups created here whose retention is not set yet (the call failed), with the tries
    /// so far: tried again before their next events are sent, at most
    /// [`RETENTION_TRIES`] times. Retention never holds events back.
    retention_pending: Arc<Mutex<HashMap<String, u32>>>,
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
            retention_pending: Arc::default(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.retention_pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the retention of a group created here, best effort: a failure is logged and
    /// tried again with the group's next calls, a few times; events are delivered either way
    /// (a role without `logs:PutRetentionPolicy` gets groups that never expire).
    async fn set_retention(&self, group: &str) {
        let Some(days) = self.retention_days else {
            return;
        };
        match self
            .client
            .put_retention_policy()
            .log_group_name(group)
            .retention_in_days(days)
            .send()
            .await
        {
            Ok(_) => {
                self.pending().remove(group);
            }
            Err(e) => {
                let why = aws::classify("CloudWatch Logs", &e);
                let mut pending = self.pending();
                let tries = pending.entry(group.to_owned()).or_insert(0);
                *tries += 1;
                if *tries >= RETENTION_TRIES {
                    pending.remove(group);
                    tracing::error!(%group, days, error = %why, "cannot set the log group's retention; giving up (its events never expire)");
                } else {
                    tracing::warn!(%group, days, error = %why, "cannot set the log group's retention yet; trying again with its next events");
                }
            }
        }
    }

    /// Creates the stream, and first its group when that is missing too (a role that may
    /// only create streams in groups made elsewhere works); either may exist already.
    async fn create(&self, stream: &Stream) -> Result<(), SendError> {
        let create_stream = || {
            self.client
                .create_log_stream()
                .log_group_name(&stream.group)
                .log_stream_name(&stream.name)
                .send()
        };
        if made(create_stream().await)? != Made::GroupMissing {
            return Ok(());
        }
        let group = self
            .client
            .create_log_group()
            .log_group_name(&stream.group)
            .send()
            .await;
        if made(group)? == Made::Now {
            tracing::info!(group = %stream.group, "created the log group");
            self.set_retention(&stream.group).await;
        }
        match made(create_stream().await)? {
            // The group was just made and is not yet visible everywhere.
            Made::GroupMissing => Err(SendError::Retryable(format!(
                "CloudWatch Logs: log group {} not found just after it was created",
                stream.group
            ))),
            _ => Ok(()),
        }
    }
}

/// What a CreateLogGroup or CreateLogStream came to.
#[derive(Debug, PartialEq, Eq)]
enum Made {
    Now,
    Already,
    /// The stream's group does not exist.
    GroupMissing,
}

fn made<T, E>(
    r: Result<
        T,
        aws_smithy_runtime_api::client::result::SdkError<
            E,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >,
    >,
) -> Result<Made, SendError>
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata
        + std::error::Error
        + Send
        + Sync
        + 'static,
{
    use aws_smithy_types::error::metadata::ProvideErrorMetadata;
    match r {
        Ok(_) => Ok(Made::Now),
        Err(e) => match e.code() {
            Some("ResourceAlreadyExistsException") => Ok(Made::Already),
            Some("ResourceNotFoundException") => Ok(Made::GroupMissing),
            _ => Err(aws::classify("CloudWatch Logs", &e)),
        },
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

    fn same_call(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.stream, &other.stream) || self.stream == other.stream
    }

    fn time_ms(&self) -> i64 {
        self.timestamp_ms
    }
}

/// Gives up at once on `index` for `reason`: CloudWatch Logs will never take it.
fn never(index: usize, reason: &str) -> Rejected {
    Rejected {
        index,
        reason: format!("rejected by CloudWatch Logs: {reason}"),
        sends: 1,
    }
}

/// The events of a call that CloudWatch Logs' `rejectedLogEventsInfo` names, by their place
/// in the batch (`order[i]` is the batch index of the i-th event sent): too old up to
/// `too_old_end` (exclusive), past the group's retention up to `expired_end` (read as
/// exclusive too: the API does not say), too new from `too_new_start` (inclusive).
fn rejected_by_info(
    order: &[usize],
    too_old_end: Option<i32>,
    expired_end: Option<i32>,
    too_new_start: Option<i32>,
) -> Vec<Rejected> {
    let n = order.len();
    let at = |i: Option<i32>| i.and_then(|i| usize::try_from(i).ok()).map(|i| i.min(n));
    let mut out = Vec::new();
    let old = at(too_old_end).unwrap_or(0);
    let expired = at(expired_end).unwrap_or(0);
    let new = at(too_new_start).unwrap_or(n);
    for (sent, index) in order.iter().enumerate() {
        if sent < old {
            out.push(never(*index, TOO_OLD));
        } else if sent < expired {
            out.push(never(*index, "older than the group's retention"));
        } else if sent >= new {
            out.push(never(*index, TOO_NEW));
        }
    }
    out
}

impl Destination<Event> for CloudWatchLogsSink {
    const NAME: &'static str = "CloudWatch Logs";

    async fn send(&self, batch: &[Entry<Event>]) -> Result<Vec<Rejected>, SendError> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        let stream = first.item.stream.clone();
        // What CloudWatch Logs would refuse by its time is given up on without a call.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut rejected = Vec::new();
        let mut order = Vec::with_capacity(batch.len());
        for (i, e) in batch.iter().enumerate() {
            if e.item.timestamp_ms < now - OLDEST_MS {
                rejected.push(never(i, TOO_OLD));
            } else if e.item.timestamp_ms > now + NEWEST_MS {
                rejected.push(never(i, TOO_NEW));
            } else {
                order.push(i);
            }
        }
        if order.is_empty() {
            return Ok(rejected);
        }
        // In time order (stable: one request's events keep theirs).
        order.sort_by_key(|i| batch[*i].item.timestamp_ms);
        // Made for each call (the SDK owns its request): one copy of the messages per call,
        // not one kept beside it.
        let events = || -> Vec<InputLogEvent> {
            order
                .iter()
                .map(|i| {
                    let e = &batch[*i].item;
                    InputLogEvent::builder()
                        .timestamp(e.timestamp_ms)
                        .message(&e.message)
                        .build()
                        .expect("timestamp and message are set")
                })
                .collect()
        };
        if self.pending().contains_key(&stream.group) {
            self.set_retention(&stream.group).await;
        }
        let put = || {
            self.client
                .put_log_events()
                .log_group_name(&stream.group)
                .log_stream_name(&stream.name)
                .set_log_events(Some(events()))
                .send()
        };
        let missing = |e: &aws_sdk_cloudwatchlogs::error::SdkError<_, _>| {
            e.as_service_error().is_some_and(
                |s: &aws_sdk_cloudwatchlogs::operation::put_log_events::PutLogEventsError| {
                    s.is_resource_not_found_exception()
                },
            )
        };
        let out = match put().await {
            Ok(out) => out,
            Err(e) if missing(&e) => {
                match self.create(&stream).await {
                    Ok(()) => {}
                    // The names themselves are refused: none of these events can go there.
                    Err(SendError::Refused(why)) => {
                        rejected.extend(order.iter().map(|&i| Rejected {
                            index: i,
                            reason: format!(
                                "CloudWatch Logs refused log group {:?} or stream {:?}: {why}",
                                stream.group, stream.name
                            ),
                            sends: 1,
                        }));
                        return Ok(rejected);
                    }
                    Err(e) => return Err(e),
                }
                match put().await {
                    Ok(out) => out,
                    // Just created, not yet visible everywhere.
                    Err(e) if missing(&e) => {
                        return Err(SendError::Retryable(format!(
                            "CloudWatch Logs: {} {} not found just after it was created",
                            stream.group, stream.name
                        )))
                    }
                    Err(e) => return Err(aws::classify("CloudWatch Logs", &e)),
                }
            }
            Err(e) => return Err(aws::classify("CloudWatch Logs", &e)),
        };
        if let Some(info) = out.rejected_log_events_info() {
            rejected.extend(rejected_by_info(
                &order,
                info.too_old_log_event_end_index(),
                info.expired_log_event_end_index(),
                info.too_new_log_event_start_index(),
            ));
        }
        Ok(rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_events_are_read_as_the_api_documents_them() {
        // Sent in time order; batch indices 4, 2, 0, 1, 3.
        let order = [4, 2, 0, 1, 3];
        let reasons = |r: Vec<Rejected>| {
            let mut v: Vec<(usize, String, u32)> = r
                .into_iter()
                .map(|r| (r.index, r.reason, r.sends))
                .collect();
            v.sort();
            v
        };
        // tooOldLogEventEndIndex 2 (exclusive): the first two sent.
        assert_eq!(
            reasons(rejected_by_info(&order, Some(2), None, None)),
            [
                (
                    2,
                    "rejected by CloudWatch Logs: older than 14 days".into(),
                    1
                ),
                (
                    4,
                    "rejected by CloudWatch Logs: older than 14 days".into(),
                    1
                )
            ]
        );
        // tooNewLogEventStartIndex 4 (inclusive): the last one sent.
        assert_eq!(
            reasons(rejected_by_info(&order, None, None, Some(4))),
            [(
                3,
                "rejected by CloudWatch Logs: more than 2 hours in the future".into(),
                1
            )]
        );
        // Expired up to 1, too old up to 0: only the first; out-of-range indices are bounded.
        let r = reasons(rejected_by_info(&order, Some(0), Some(1), Some(99)));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 4);
        assert!(r[0].1.ends_with("retention"));
        assert_eq!(rejected_by_info(&order, Some(-1), Some(77), None).len(), 5);
    }
}
