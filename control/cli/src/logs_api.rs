//! A trace's access log lines from CloudWatch Logs, for `maillectl traces --trace-id`: the
//! collectors write each Envoy's access log as JSON events carrying `xray_trace_id`; the
//! groups under a prefix (the collectors' default `/maille/`) are searched for the trace id
//! as a quoted term (`FilterLogEvents`) around the trace's time.

use anyhow::{Context, Result};
use serde_json::Value;

/// Most log groups searched.
pub(crate) const MAX_GROUPS: usize = 50;
/// Most lines read per group.
const MAX_LINES: usize = 200;
/// Most pages read per group: CloudWatch Logs may answer pages with few or no events and a
/// token for more.
const MAX_PAGES: usize = 50;

/// One access log line.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Milliseconds since the epoch.
    pub timestamp_ms: i64,
    pub group: String,
    pub stream: String,
    /// The event, as the collector wrote it (JSON), or its text.
    pub event: Value,
}

impl LogLine {
    /// One line for a terminal: time, group, status, method, path, duration, variant and
    /// upstream cluster (or the event's text when it is not an access log record).
    pub fn render(&self) -> String {
        let time = format_time(self.timestamp_ms);
        let e = &self.event;
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("-");
        if e.get("response_code").is_some() {
            let mut line = format!(
                "{time}  {:<24} {} {} {} {}ms",
                self.group,
                s("response_code"),
                s("method"),
                s("path"),
                s("duration"),
            );
            if s("variant") != "-" {
                line.push_str(&format!("  variant={}", s("variant")));
            }
            line.push_str(&format!("  upstream={}", s("upstream_cluster")));
            if s("response_flags") != "-" {
                line.push_str(&format!("  flags={}", s("response_flags")));
            }
            line
        } else {
            let text = match e.get("message") {
                Some(Value::String(m)) => m.clone(),
                _ => e.to_string(),
            };
            format!("{time}  {:<24} {text}", self.group)
        }
    }

    /// As JSON, for `-o json`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "timestamp": self.timestamp_ms,
            "logGroup": self.group,
            "logStream": self.stream,
            "event": self.event,
        })
    }
}

fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let day = secs.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3600,
        day / 60 % 60,
        day % 60,
        ms.rem_euclid(1000)
    )
}

/// The lines of trace `trace_id` (X-Ray's `1-…-…`) in the groups named `prefix…`, between
/// `from_ms` and `to_ms`, oldest first; and whether groups were left out past
/// [`MAX_GROUPS`].
pub async fn lines_of_trace(
    client: &aws_sdk_cloudwatchlogs::Client,
    prefix: &str,
    trace_id: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<(Vec<LogLine>, bool)> {
    let mut groups = Vec::new();
    let mut left_out = false;
    let mut token: Option<String> = None;
    loop {
        let page = client
            .describe_log_groups()
            .log_group_name_prefix(prefix)
            .set_next_token(token.take())
            .send()
            .await
            .context("CloudWatch Logs DescribeLogGroups")?;
        for g in page.log_groups() {
            if let Some(name) = g.log_group_name() {
                if groups.len() < MAX_GROUPS {
                    groups.push(name.to_owned());
                } else {
                    left_out = true;
                }
            }
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() || left_out {
            break;
        }
        if groups.len() == MAX_GROUPS {
            // Another page: more groups than are searched.
            left_out = true;
            break;
        }
    }
    let pattern = format!("\"{}\"", trace_id.replace('"', ""));
    let mut lines = Vec::new();
    for group in groups {
        let (mut token, mut kept): (Option<String>, usize) = (None, 0);
        for _ in 0..MAX_PAGES {
            let page = client
                .filter_log_events()
                .log_group_name(&group)
                .filter_pattern(&pattern)
                .start_time(from_ms)
                .end_time(to_ms)
                .limit(MAX_LINES as i32)
                .set_next_token(token.take())
                .send()
                .await
                .with_context(|| format!("CloudWatch Logs FilterLogEvents in {group}"))?;
            for e in page.events() {
                let text = e.message().unwrap_or_default();
                let event =
                    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into()));
                // The term may match elsewhere in a line; keep the trace's own.
                if event
                    .get("xray_trace_id")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t != trace_id)
                {
                    continue;
                }
                kept += 1;
                lines.push(LogLine {
                    timestamp_ms: e.timestamp().unwrap_or_default(),
                    group: group.clone(),
                    stream: e.log_stream_name().unwrap_or_default().to_owned(),
                    event,
                });
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() || kept >= MAX_LINES {
                break;
            }
        }
    }
    lines.sort_by(|a, b| {
        (a.timestamp_ms, &a.group, &a.stream).cmp(&(b.timestamp_ms, &b.group, &b.stream))
    });
    Ok((lines, left_out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_log_line_shows_its_request_and_the_mesh_fields() {
        let l = LogLine {
            timestamp_ms: 1_700_000_123_456,
            group: "/maille/colorgateway".into(),
            stream: "h".into(),
            event: serde_json::json!({"response_code": "200", "method": "GET", "path": "/color",
                "duration": "3", "variant": "colorteller-blue", "upstream_cluster": "c/blue",
                "response_flags": "-"}),
        };
        assert_eq!(
            l.render(),
            "22:15:23.456  /maille/colorgateway     200 GET /color 3ms  variant=colorteller-blue  upstream=c/blue"
        );
        let other = LogLine {
            event: serde_json::json!({"message": "hello"}),
            ..l
        };
        assert!(other.render().ends_with("/maille/colorgateway     hello"));
    }
}
