//! Shared by the collector's tests: moto (a real AWS API endpoint), the collector
//! in-process, and reading X-Ray back.

#![allow(dead_code, unreachable_pub, unused_imports)]

use aws_sdk_xray::config::{BehaviorVersion, Credentials, Region};
use maille_collector::{start, Config, Running, SendError, Sink, Unprocessed, XraySink};
use maille_testkit::agent;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

pub use maille_testkit::Moto;

pub fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_xray::config::SharedCredentialsProvider::new(
            Credentials::new("test", "test", None, None, "static"),
        ))
        .build()
}

pub fn collector(rt: &tokio::runtime::Runtime, endpoint: &str) -> Running {
    rt.block_on(start(
        Config {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            queue_capacity: 10_000,
            max_request_bytes: 64 * 1024,
            ..Config::default()
        },
        XraySink::new(&sdk_config(endpoint)),
        Some(maille_collector::CloudWatchSink::new(
            &sdk_config(endpoint),
            "Maille",
            60,
        )),
        Some(maille_collector::CloudWatchLogsSink::new(
            &sdk_config(endpoint),
            None,
        )),
    ))
    .expect("collector starts")
}

/// All segment documents X-Ray holds for `trace_ids`, by id; a segment stored twice fails.
pub fn stored(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    trace_ids: &[String],
) -> BTreeMap<String, Value> {
    stored_docs(rt, endpoint, trace_ids, false)
}

/// As [`stored`]; with `allow_resent`, a segment stored twice (resent after a crash) is
/// kept once instead of failing the test.
pub fn stored_docs(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    trace_ids: &[String],
    allow_resent: bool,
) -> BTreeMap<String, Value> {
    let client = aws_sdk_xray::Client::new(&sdk_config(endpoint));
    rt.block_on(async {
        let out = client
            .batch_get_traces()
            .set_trace_ids(Some(trace_ids.to_vec()))
            .send()
            .await
            .expect("BatchGetTraces");
        let mut docs = BTreeMap::new();
        for t in out.traces() {
            for seg in t.segments() {
                let v: Value = serde_json::from_str(seg.document().unwrap_or("{}")).unwrap();
                let id = v["id"].as_str().unwrap_or_default().to_owned();
                assert!(
                    docs.insert(id.clone(), v).is_none() || allow_resent,
                    "segment {id} stored twice"
                );
            }
        }
        docs
    })
}

pub fn wait_exported(running: &Running, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let done = running.stats.exported();
        if done >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {n} exported within {timeout:?}: {}",
            running.stats.to_json()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ids of the traces X-Ray (moto) summarises for the last hour. Read over plain HTTP: moto
/// answers GetTraceSummaries with `"Users": {}`, which the AWS SDK's strict parser refuses.
pub fn trace_ids(endpoint: &str) -> Vec<String> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut r = agent()
        .post(&format!("{endpoint}/TraceSummaries"))
        .header("content-type", "application/json")
        // moto picks the service from the credential scope.
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/xray/aws4_request, SignedHeaders=host, Signature=0",
        )
        .send(serde_json::json!({"StartTime": now - 3600, "EndTime": now + 60}).to_string())
        .unwrap();
    let body = r.body_mut().read_to_string().unwrap();
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["TraceSummaries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["Id"].as_str().map(str::to_owned))
        .collect()
}

/// How many segment documents X-Ray (moto) holds for `trace_ids`, resent copies included.
pub fn raw_segment_count(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    trace_ids: &[String],
) -> usize {
    let client = aws_sdk_xray::Client::new(&sdk_config(endpoint));
    rt.block_on(async {
        let out = client
            .batch_get_traces()
            .set_trace_ids(Some(trace_ids.to_vec()))
            .send()
            .await
            .expect("BatchGetTraces");
        out.traces().iter().map(|t| t.segments().len()).sum()
    })
}

// === OTLP builders and a fake X-Ray, for the tests that start no external process ===

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

pub fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

pub fn text(k: &str, v: &str) -> KeyValue {
    kv(k, any_value::Value::StringValue(v.into()))
}

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Span `i` of trace `trace` (a root when `i` is 1, else a child of span 1).
pub fn numbered_span(trace: u64, i: u64, attrs: Vec<KeyValue>) -> Span {
    let t = now_nanos() - 1_000_000_000;
    let mut trace_id = [7u8; 16];
    trace_id[8..].copy_from_slice(&trace.to_be_bytes());
    Span {
        trace_id: trace_id.to_vec(),
        span_id: i.to_be_bytes().to_vec(),
        parent_span_id: if i == 1 {
            Vec::new()
        } else {
            1u64.to_be_bytes().to_vec()
        },
        name: "work".into(),
        kind: 1,
        start_time_unix_nano: t,
        end_time_unix_nano: t + 1_000_000,
        attributes: attrs,
        ..Default::default()
    }
}

/// The X-Ray document id of span `i`.
pub fn doc_id(i: u64) -> String {
    format!("{i:016x}")
}

pub fn export_request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// What a fake X-Ray answers to one `PutTraceSegments`: the ids it leaves unprocessed, with
/// their error codes, or an error for the whole call.
pub type Answer = Result<Vec<(String, String)>, SendError>;
pub type Answering = Box<dyn Fn(&[Value]) -> Answer + Send + Sync>;

/// A fake X-Ray: answers each call with `answer` after `delay`, stores what it processed,
/// and records how many calls were in flight at once.
pub struct FakeXray {
    pub stored: std::sync::Mutex<Vec<Value>>,
    pub calls: std::sync::atomic::AtomicU64,
    in_flight: std::sync::atomic::AtomicU64,
    pub max_in_flight: std::sync::atomic::AtomicU64,
    delay: Duration,
    answer: Answering,
}

#[derive(Clone)]
pub struct Fake(pub std::sync::Arc<FakeXray>);

impl Fake {
    pub fn new(
        delay: Duration,
        answer: impl Fn(&[Value]) -> Answer + Send + Sync + 'static,
    ) -> Fake {
        Fake(std::sync::Arc::new(FakeXray {
            stored: Default::default(),
            calls: Default::default(),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
            delay,
            answer: Box::new(answer),
        }))
    }

    /// Takes everything.
    pub fn ok() -> Fake {
        Fake::new(Duration::ZERO, |_| Ok(Vec::new()))
    }

    pub fn stored(&self) -> Vec<Value> {
        self.0.stored.lock().unwrap().clone()
    }

    pub fn stored_ids(&self) -> std::collections::BTreeSet<String> {
        self.stored()
            .iter()
            .map(|d| d["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Waits (bounded) until `n` documents are stored.
    pub fn wait_stored(
        &self,
        n: usize,
        timeout: Duration,
        stats: &dyn Fn() -> String,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.stored();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} documents stored within {timeout:?}; stats {}",
                got.len(),
                stats()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Sink for Fake {
    async fn put(&self, docs: Vec<String>) -> Result<Vec<Unprocessed>, SendError> {
        use std::sync::atomic::Ordering::SeqCst;
        let f = &self.0;
        f.calls.fetch_add(1, SeqCst);
        let now = f.in_flight.fetch_add(1, SeqCst) + 1;
        f.max_in_flight.fetch_max(now, SeqCst);
        if !f.delay.is_zero() {
            tokio::time::sleep(f.delay).await;
        }
        f.in_flight.fetch_sub(1, SeqCst);
        let docs: Vec<Value> = docs
            .iter()
            .map(|d| serde_json::from_str(d).expect("documents are JSON"))
            .collect();
        let left = (f.answer)(&docs)?;
        let mut stored = f.stored.lock().unwrap();
        for d in docs {
            if !left.iter().any(|(id, _)| d["id"] == id.as_str()) {
                stored.push(d);
            }
        }
        Ok(left
            .into_iter()
            .map(|(id, code)| Unprocessed {
                id,
                code: Some(code),
            })
            .collect())
    }
}

/// Settings for a collector on free ports with nothing else around it.
pub fn fast_config() -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    }
}

/// The collector in-process, exporting traces to `sink` and no metrics.
pub fn fast_collector(rt: &tokio::runtime::Runtime, cfg: Config, sink: Fake) -> Running {
    rt.block_on(start(cfg, sink, None, None))
        .expect("collector starts")
}

/// What an X-Ray front answers to one `PutTraceSegments` (given its documents).
pub enum FrontRule {
    /// Pass the call to moto.
    Forward,
    /// Pass the other documents to moto and report these `(id, code)` unprocessed.
    Unprocessed(Vec<(String, String)>),
    /// Answer with this HTTP status and AWS error type, storing nothing.
    Refuse(u16, &'static str),
}

/// Sends a request a front received on to `url` (moto), with its AWS headers (moto does not
/// check signatures); moto's status and body, or 502.
pub fn forward(
    url: &str,
    headers: &axum::http::HeaderMap,
    body: String,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let mut req = agent().post(url);
    for (k, v) in headers.iter() {
        if k == "authorization" || k == "content-type" || k.as_str().starts_with("x-amz") {
            req = req.header(k.as_str(), v.to_str().unwrap_or(""));
        }
    }
    match req.send(body) {
        Ok(mut r) => (
            StatusCode::from_u16(r.status().as_u16()).unwrap(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// An X-Ray endpoint in front of moto that bends `PutTraceSegments` answers by `rule`, and
/// records the id of every document it was sent (in order, repeats included).
pub struct Front {
    pub port: u16,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Front {
    pub fn start(
        rt: &tokio::runtime::Runtime,
        moto: String,
        rule: impl Fn(&[Value]) -> FrontRule + Send + Sync + 'static,
    ) -> Front {
        Front::start_on(rt, 0, moto, rule)
    }

    pub fn start_on(
        rt: &tokio::runtime::Runtime,
        port: u16,
        moto: String,
        rule: impl Fn(&[Value]) -> FrontRule + Send + Sync + 'static,
    ) -> Front {
        use axum::http::{HeaderMap, StatusCode};
        use std::sync::{Arc, Mutex};
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let rule = Arc::new(rule);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let forward = move |path: String, headers: HeaderMap, body: String| {
            forward(&format!("{moto}{path}"), &headers, body)
        };
        let s = seen.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: String| {
                let (s, rule, forward) = (s.clone(), rule.clone(), forward.clone());
                async move {
                    let path = uri.path().to_owned();
                    let pass = move |body: String| {
                        let forward = forward.clone();
                        let headers = headers.clone();
                        let path = path.clone();
                        async move {
                            tokio::task::spawn_blocking(move || forward(path, headers, body))
                                .await
                                .unwrap()
                        }
                    };
                    if uri.path() != "/TraceSegments" {
                        return pass(body).await;
                    }
                    let v: Value = serde_json::from_str(&body).unwrap();
                    let docs: Vec<Value> = v["TraceSegmentDocuments"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| serde_json::from_str(d.as_str().unwrap()).unwrap())
                        .collect();
                    s.lock().unwrap().extend(
                        docs.iter()
                            .map(|d| d["id"].as_str().unwrap_or_default().to_owned()),
                    );
                    match rule(&docs) {
                        FrontRule::Forward => pass(body).await,
                        FrontRule::Refuse(status, kind) => (
                            StatusCode::from_u16(status).unwrap(),
                            serde_json::json!({"__type": kind, "message": "refused by the test front"})
                                .to_string(),
                        ),
                        FrontRule::Unprocessed(left) => {
                            let keep: Vec<String> = docs
                                .iter()
                                .filter(|d| !left.iter().any(|(id, _)| d["id"] == id.as_str()))
                                .map(|d| d.to_string())
                                .collect();
                            if !keep.is_empty() {
                                let part = serde_json::json!({"TraceSegmentDocuments": keep}).to_string();
                                let (status, answer) = pass(part).await;
                                if !status.is_success() {
                                    return (status, answer);
                                }
                            }
                            let ids: Vec<Value> = left
                                .iter()
                                .map(|(id, code)| serde_json::json!({"Id": id, "ErrorCode": code, "Message": "bent by the test front"}))
                                .collect();
                            (
                                StatusCode::OK,
                                serde_json::json!({"UnprocessedTraceSegments": ids}).to_string(),
                            )
                        }
                    }
                }
            },
        );
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Front { port, seen }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many times the document `id` reached this front.
    pub fn times_seen(&self, id: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| *s == id)
            .count()
    }
}

/// A logs request: `records` from a resource of `service` on `host`.
pub fn logs_request(
    service: &str,
    host: &str,
    records: Vec<opentelemetry_proto::tonic::logs::v1::LogRecord>,
) -> opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![text("service.name", service), text("host.name", host)],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Log record `i`: body `line i`, an attribute `n` of `i`, at `at_ms` (ms since the epoch).
pub fn log_record(i: u64, at_ms: u64) -> opentelemetry_proto::tonic::logs::v1::LogRecord {
    opentelemetry_proto::tonic::logs::v1::LogRecord {
        time_unix_nano: at_ms * 1_000_000,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(format!("line {i}"))),
        }),
        attributes: vec![kv("n", any_value::Value::IntValue(i as i64))],
        ..Default::default()
    }
}

pub fn now_ms() -> u64 {
    now_nanos() / 1_000_000
}

/// The events CloudWatch Logs (moto) holds in a stream, oldest first, as (time, message);
/// none when the group or stream does not exist.
pub fn log_events(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    group: &str,
    stream: &str,
) -> Vec<(i64, Value)> {
    let client = aws_sdk_cloudwatchlogs::Client::new(&sdk_config(endpoint));
    rt.block_on(async {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let Ok(page) = client
                .get_log_events()
                .log_group_name(group)
                .log_stream_name(stream)
                .start_from_head(true)
                .set_next_token(token.clone())
                .send()
                .await
            else {
                return out;
            };
            let n = page.events().len();
            for e in page.events() {
                out.push((
                    e.timestamp().unwrap_or_default(),
                    serde_json::from_str(e.message().unwrap_or("null")).unwrap_or(Value::Null),
                ));
            }
            let next = page.next_forward_token().map(str::to_owned);
            if n == 0 || next.is_none() || next == token {
                return out;
            }
            token = next;
        }
    })
}

pub fn wait_logs_exported(running: &Running, n: u64, timeout: Duration) {
    let stats = running.log_stats.as_ref().expect("logs exported");
    let deadline = Instant::now() + timeout;
    while stats.exported() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} log events exported within {timeout:?}: {}",
            stats.exported(),
            stats.to_json()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
