//! `maillectl traces`: recent traces from X-Ray, one as a waterfall with its access log
//! lines from CloudWatch Logs, or the service graph.

use crate::traces::{filter_expression, graph, graph_table, list_table, Trace};
use crate::{logs_api, xray_api};
use crate::{parse_age, parse_param};
use anyhow::{bail, Result};
use serde_json::Value;
use std::time::Duration;

/// `maillectl traces`.
#[derive(Debug, clap::Args)]
pub struct TracesArgs {
    /// Only traces with this annotation value, NAME=VALUE (repeatable), e.g.
    /// maille_variant=canary.
    #[arg(short, long = "annotation", value_parser = parse_param)]
    pub annotations: Vec<(String, String)>,
    /// Only traces through this service (virtual node).
    #[arg(long)]
    pub service: Option<String>,
    /// How far back: 90s, 10m, 2h (at most 24h).
    #[arg(long, default_value = "10m", value_parser = parse_age)]
    pub since: Duration,
    /// At most this many traces in the list.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Show this trace as a waterfall, with its access log lines from CloudWatch Logs.
    #[arg(long)]
    pub trace_id: Option<String>,
    /// CloudWatch Logs groups searched for the trace's access log lines: those whose name
    /// starts so (the collectors write to /maille/<service> by default).
    #[arg(long, default_value = "/maille/")]
    pub log_group_prefix: String,
    /// Do not read access log lines from CloudWatch Logs.
    #[arg(long)]
    pub no_logs: bool,
    /// Show the service graph (who calls whom, calls, 4xx and 5xx shares) instead.
    #[arg(long, conflicts_with = "trace_id")]
    pub graph: bool,
    /// `table` or `json`.
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
    /// The X-Ray (and CloudWatch Logs) endpoint (default: the SDK's, from AWS_ENDPOINT_URL
    /// or the region).
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

/// Runs `maillectl traces`.
pub async fn run(a: TracesArgs) -> Result<()> {
    let cfg = xray_api::aws_config(a.endpoint_url.as_deref()).await;
    let client = xray_api::client(&cfg);
    if let Some(id) = &a.trace_id {
        let found = xray_api::traces(&client, std::slice::from_ref(id)).await?;
        let Some(t) = found.into_iter().find(|t| &t.id == id) else {
            bail!("no trace {id} in X-Ray (traces appear a few seconds after their requests)");
        };
        let lines = if a.no_logs {
            None
        } else {
            access_log(&a, &cfg, &t).await
        };
        if a.output == "json" {
            let mut v = t.summary();
            if let Some(lines) = &lines {
                v["accessLog"] = lines.iter().map(logs_api::LogLine::to_json).collect();
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", t.waterfall(40));
            if let Some(lines) = &lines {
                println!();
                if lines.is_empty() {
                    println!(
                        "access log: no line of this trace in CloudWatch Logs groups {}* (lines arrive a few seconds after their requests)",
                        a.log_group_prefix
                    );
                } else {
                    let n = lines.len();
                    println!(
                        "access log ({n} line{}, CloudWatch Logs {}*):",
                        if n == 1 { "" } else { "s" },
                        a.log_group_prefix
                    );
                    for l in lines {
                        println!("  {}", l.render());
                    }
                }
            }
        }
        return Ok(());
    }
    let to = std::time::SystemTime::now();
    let from = to - a.since;
    if a.graph {
        let mut edges = xray_api::service_graph(&client, from, to).await?;
        let mut source = "X-Ray's service graph".to_owned();
        if edges.is_empty() {
            // A local endpoint has no service graph: build it from the traces themselves.
            let (ids, _) = xray_api::trace_ids(&client, from, to, None, usize::MAX).await?;
            let all = xray_api::traces(&client, &ids).await?;
            edges = graph(&all);
            source = format!("built from {} traces", all.len());
        }
        if a.output == "json" {
            println!("{}", serde_json::to_string_pretty(&edges)?);
        } else {
            println!("service graph, last {}s ({source})", a.since.as_secs());
            print!("{}", graph_table(&edges));
        }
        return Ok(());
    }
    let filter = filter_expression(&a.annotations, a.service.as_deref());
    let (ids, refused) = xray_api::trace_ids(&client, from, to, filter.as_deref(), a.limit).await?;
    if let Some(why) = refused {
        eprintln!(
            "note: the X-Ray endpoint did not take the filter expression ({why}); filtering here"
        );
    }
    let mut shown = Vec::new();
    // Fetch in small steps until enough traces match (the endpoint may not filter).
    for chunk in ids.chunks(25) {
        for t in xray_api::traces(&client, chunk).await? {
            if t.matches(&a.annotations, a.service.as_deref()) && shown.len() < a.limit {
                shown.push(t);
            }
        }
        if shown.len() >= a.limit {
            break;
        }
    }
    shown.sort_by(|x, y| y.start().total_cmp(&x.start()));
    if a.output == "json" {
        let v: Vec<Value> = shown.iter().map(|t| t.summary()).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if shown.is_empty() {
        println!(
            "no traces in the last {}s{}",
            a.since.as_secs(),
            filter.map(|f| format!(" matching {f}")).unwrap_or_default()
        );
        return Ok(());
    }
    print!("{}", list_table(&shown));
    println!("waterfall of one: maillectl traces --trace-id <TRACE>");
    Ok(())
}

/// The trace's access log lines, from a minute before it to a minute after; `None`, with a
/// note on stderr, when CloudWatch Logs cannot be read (the waterfall is shown anyway).
async fn access_log(
    a: &TracesArgs,
    cfg: &aws_config::SdkConfig,
    t: &Trace,
) -> Option<Vec<logs_api::LogLine>> {
    let client = aws_sdk_cloudwatchlogs::Client::new(cfg);
    let start = (t.start() * 1000.0) as i64;
    let end = start + t.millis() as i64;
    match logs_api::lines_of_trace(
        &client,
        &a.log_group_prefix,
        &t.id,
        start - 60_000,
        end + 60_000,
    )
    .await
    {
        Ok((lines, left_out)) => {
            if left_out {
                eprintln!(
                    "note: only the first {} log groups under {} were searched (narrow --log-group-prefix)",
                    crate::logs_api::MAX_GROUPS,
                    a.log_group_prefix
                );
            }
            Some(lines)
        }
        Err(e) => {
            eprintln!("note: no access log lines: {e:#} (--no-logs skips them)");
            None
        }
    }
}
