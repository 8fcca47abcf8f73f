//! The X-Ray API calls behind `maillectl traces`, with the AWS SDK: trace summaries in a
//! time window (with a filter expression), the traces' segment documents, the service graph.
//!
//! AWS access follows the SDK's default chain (region, credentials, `AWS_ENDPOINT_URL`), so the
//! same commands read AWS or a local endpoint such as moto.

use crate::traces::{Edge, Trace};
use anyhow::{Context, Result};
use aws_sdk_xray::primitives::DateTime;
use aws_sdk_xray::Client;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use std::time::SystemTime;

/// Most trace ids per `BatchGetTraces` call.
const BATCH: usize = 5;

/// The AWS configuration from the default chain (region, credentials, `AWS_ENDPOINT_URL`);
/// `endpoint` overrides the endpoint. Loaded once per command, for X-Ray and CloudWatch Logs.
pub async fn aws_config(endpoint: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

/// An X-Ray client of `cfg`.
pub fn client(cfg: &aws_config::SdkConfig) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .build_https();
    let conf = aws_sdk_xray::config::Builder::from(cfg)
        .http_client(SummaryUsersAsList(http))
        .build();
    Client::from_conf(conf)
}

/// The ids of traces that ended in `[from, to]`, newest first, at most `limit`, with the
/// filter expression when given. When the endpoint refuses the filter expression (a local
/// endpoint may not implement them), the ids of every trace in the window, and why: the
/// caller then filters the documents itself.
pub async fn trace_ids(
    client: &Client,
    from: SystemTime,
    to: SystemTime,
    filter: Option<&str>,
    limit: usize,
) -> Result<(Vec<String>, Option<String>)> {
    match summaries(client, from, to, filter, limit).await {
        Ok(ids) => Ok((ids, None)),
        Err(e) if filter.is_some() => {
            let why: String = format!("{e:#}").chars().take(120).collect();
            Ok((
                summaries(client, from, to, None, usize::MAX).await?,
                Some(why),
            ))
        }
        Err(e) => Err(e),
    }
}

async fn summaries(
    client: &Client,
    from: SystemTime,
    to: SystemTime,
    filter: Option<&str>,
    limit: usize,
) -> Result<Vec<String>> {
    let mut out: Vec<(f64, String)> = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .get_trace_summaries()
            .start_time(DateTime::from(from))
            .end_time(DateTime::from(to))
            .set_filter_expression(filter.map(str::to_owned))
            .set_next_token(token.take())
            .send()
            .await
            .context("X-Ray GetTraceSummaries")?;
        for s in page.trace_summaries() {
            if let Some(id) = s.id() {
                let t = s.start_time().map_or(0.0, |t| t.as_secs_f64());
                out.push((t, id.to_owned()));
            }
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() || out.len() >= limit {
            break;
        }
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    Ok(out.into_iter().map(|(_, id)| id).collect())
}

/// The traces with these ids, with their segment documents.
pub async fn traces(client: &Client, ids: &[String]) -> Result<Vec<Trace>> {
    let mut out = Vec::new();
    for chunk in ids.chunks(BATCH) {
        let mut token = None;
        loop {
            let page = client
                .batch_get_traces()
                .set_trace_ids(Some(chunk.to_vec()))
                .set_next_token(token.take())
                .send()
                .await
                .context("X-Ray BatchGetTraces")?;
            for t in page.traces() {
                let id = t.id().unwrap_or_default();
                let docs: Vec<&str> = t.segments().iter().filter_map(|s| s.document()).collect();
                out.push(Trace::from_documents(id, &docs)?);
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
    }
    // A trace sent in several pages arrives as several parts: join them.
    let mut joined: Vec<Trace> = Vec::new();
    for t in out {
        match joined.iter_mut().find(|j| j.id == t.id) {
            Some(j) => {
                j.spans.extend(t.spans);
                j.spans.sort_by(|a, b| a.start.total_cmp(&b.start));
            }
            None => joined.push(t),
        }
    }
    Ok(joined)
}

/// X-Ray's own service graph for `[from, to]`, as edges. Empty when the endpoint has none
/// (a local endpoint may not compute it; the caller then builds it from traces).
pub async fn service_graph(client: &Client, from: SystemTime, to: SystemTime) -> Result<Vec<Edge>> {
    let mut services = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .get_service_graph()
            .start_time(DateTime::from(from))
            .end_time(DateTime::from(to))
            .set_next_token(token.take())
            .send()
            .await
            .context("X-Ray GetServiceGraph")?;
        services.extend(page.services().iter().cloned());
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    Ok(edges_of(&services))
}

/// Edges from X-Ray's service graph: each service's edges to the services it calls, with
/// the callee side's counts (`ok`, `error` = 4xx, `fault` = 5xx), and `client` edges for
/// requests from outside.
pub fn edges_of(services: &[aws_sdk_xray::types::Service]) -> Vec<Edge> {
    let name_of = |ref_id: i32| {
        services
            .iter()
            .find(|s| s.reference_id() == Some(ref_id))
            .and_then(|s| s.name().map(str::to_owned))
            .unwrap_or_else(|| format!("#{ref_id}"))
    };
    let mut edges = Vec::new();
    for s in services {
        let from = match s.r#type() {
            Some("client") => crate::traces::CLIENT.to_owned(),
            _ => s.name().unwrap_or("?").to_owned(),
        };
        for e in s.edges() {
            let Some(to) = e.reference_id() else { continue };
            let st = e.summary_statistics();
            let count = |f: fn(&aws_sdk_xray::types::EdgeStatistics) -> Option<i64>| {
                st.and_then(f).unwrap_or(0).max(0) as u64
            };
            let errors = st
                .and_then(|s| s.error_statistics())
                .and_then(|e| e.total_count())
                .unwrap_or(0)
                .max(0) as u64;
            let faults = st
                .and_then(|s| s.fault_statistics())
                .and_then(|f| f.total_count())
                .unwrap_or(0)
                .max(0) as u64;
            edges.push(Edge {
                from: from.clone(),
                to: name_of(to),
                calls: count(|s| s.total_count()),
                errors,
                faults,
            });
        }
    }
    edges.sort();
    edges
}

/// Some X-Ray endpoints (moto 5.1) answer `GetTraceSummaries` with `"Users": {}` where the
/// API has a list, which the SDK rightly refuses. This client reads those answers whole and
/// makes such a `Users` an empty list; every other answer passes untouched.
#[derive(Debug, Clone)]
struct SummaryUsersAsList(SharedHttpClient);

impl HttpClient for SummaryUsersAsList {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(UsersFix(self.0.http_connector(settings, components)))
    }
}

#[derive(Debug)]
struct UsersFix(SharedHttpConnector);

impl HttpConnector for UsersFix {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let summaries = request.uri().ends_with("/TraceSummaries");
        let inner = self.0.call(request);
        if !summaries {
            return inner;
        }
        HttpConnectorFuture::new(async move {
            let mut resp = inner.await?;
            if !resp.status().is_success() {
                return Ok(resp);
            }
            let body = ByteStream::new(resp.take_body())
                .collect()
                .await
                .map_err(|e| ConnectorError::io(Box::new(e)))?
                .into_bytes();
            let fixed = fix_users(&body).unwrap_or_else(|| body.to_vec());
            *resp.body_mut() = SdkBody::from(fixed);
            Ok(resp)
        })
    }
}

/// The body with every summary's object-valued `Users` made `[]`; `None` when nothing needed
/// changing (or the body is not JSON).
fn fix_users(body: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut changed = false;
    for s in v.get_mut("TraceSummaries")?.as_array_mut()? {
        if let Some(u) = s.get_mut("Users").filter(|u| u.is_object()) {
            *u = serde_json::Value::Array(Vec::new());
            changed = true;
        }
    }
    changed.then(|| serde_json::to_vec(&v).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_xray::types::{EdgeStatistics, ErrorStatistics, FaultStatistics, Service};

    #[test]
    fn object_users_become_a_list_and_the_rest_stays() {
        let body = br#"{"TraceSummaries":[{"Id":"1-a","Users":{}},{"Id":"1-b","Users":[{"UserName":"u"}]}]}"#;
        let fixed: serde_json::Value = serde_json::from_slice(&fix_users(body).unwrap()).unwrap();
        assert_eq!(fixed["TraceSummaries"][0]["Users"], serde_json::json!([]));
        assert_eq!(fixed["TraceSummaries"][1]["Users"][0]["UserName"], "u");
        assert_eq!(fix_users(br#"{"TraceSummaries":[{"Users":[]}]}"#), None);
        assert_eq!(fix_users(b"not json"), None);
    }

    #[test]
    fn service_graph_edges_carry_counts_and_failures() {
        let edge = |to: i32, total: i64, err: i64, fault: i64| {
            aws_sdk_xray::types::Edge::builder()
                .reference_id(to)
                .summary_statistics(
                    EdgeStatistics::builder()
                        .total_count(total)
                        .error_statistics(ErrorStatistics::builder().total_count(err).build())
                        .fault_statistics(FaultStatistics::builder().total_count(fault).build())
                        .build(),
                )
                .build()
        };
        let services = vec![
            Service::builder()
                .reference_id(0)
                .name("client")
                .r#type("client")
                .edges(edge(1, 10, 0, 0))
                .build(),
            Service::builder()
                .reference_id(1)
                .name("colorgateway")
                .edges(edge(2, 10, 1, 3))
                .build(),
            Service::builder()
                .reference_id(2)
                .name("colorteller-red")
                .build(),
        ];
        let e = edges_of(&services);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].from.as_str(), e[0].to.as_str(), e[0].calls),
            ("client", "colorgateway", 10)
        );
        assert_eq!(
            (
                e[1].from.as_str(),
                e[1].to.as_str(),
                e[1].calls,
                e[1].errors,
                e[1].faults
            ),
            ("colorgateway", "colorteller-red", 10, 1, 3)
        );
    }
}
