//! OTLP receivers: gRPC (`TraceService/Export`) and HTTP (`POST /v1/traces`, protobuf or
//! JSON). Each request is converted whole and queued whole; a full queue answers
//! `RESOURCE_EXHAUSTED` (gRPC) or `429` with `retry-after` (HTTP) so that senders retry,
//! and a malformed or oversized request gets an error naming the problem while the
//! collector keeps serving.

use crate::export::Queue;
use crate::xray::{span_to_json, Options, ResourceView};
use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Default largest request accepted, bytes (the OTLP exporters' default batch fits easily).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// What both receivers share.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// The export queue.
    pub queue: Queue,
    /// Conversion options.
    pub options: Arc<Options>,
    /// Largest request, bytes.
    pub max_request_bytes: usize,
}

/// What became of one request.
#[derive(Debug)]
pub enum Outcome {
    /// Queued; `rejected` spans could not be converted (bad ids), with the reason.
    Accepted {
        /// Spans not converted.
        rejected: i64,
        /// Why, when some were.
        message: String,
    },
    /// The queue was full: nothing was taken.
    Full(String),
    /// The request could not be recorded (spool): nothing was taken.
    Failed(String),
}

impl Receiver {
    /// Converts and queues a request's spans, all or none.
    pub fn take(&self, req: ExportTraceServiceRequest) -> Outcome {
        let mut docs = Vec::new();
        let mut rejected = 0i64;
        let mut spans = 0u64;
        for rs in &req.resource_spans {
            let resource = ResourceView::new(rs.resource.as_ref(), &self.options);
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    spans += 1;
                    match span_to_json(span, &resource, &self.options) {
                        Some((id, json)) => docs.push(crate::export::Doc { id, json }),
                        None => rejected += 1,
                    }
                }
            }
        }
        match self.queue.offer(docs) {
            Ok(()) => {
                let stats = &self.queue.stats;
                stats.received.fetch_add(spans, Ordering::Relaxed);
                if rejected > 0 {
                    stats.drop_n("invalid trace or span id", rejected as u64);
                }
                Outcome::Accepted {
                    rejected,
                    message: if rejected > 0 {
                        format!("{rejected} span(s) without a valid 16-byte trace id and 8-byte span id")
                    } else {
                        String::new()
                    },
                }
            }
            Err(e @ crate::export::QueueFull::Full { .. }) => Outcome::Full(e.to_string()),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// The gRPC service.
    pub fn grpc(self) -> TraceServiceServer<Receiver> {
        let max = self.max_request_bytes;
        TraceServiceServer::new(self).max_decoding_message_size(max)
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        match self.take(request.into_inner()) {
            Outcome::Accepted { rejected, message } => {
                Ok(tonic::Response::new(ExportTraceServiceResponse {
                    partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                        rejected_spans: rejected,
                        error_message: message,
                    }),
                }))
            }
            Outcome::Full(m) => Err(tonic::Status::resource_exhausted(m)),
            Outcome::Failed(m) => Err(tonic::Status::unavailable(m)),
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain")],
        message.into(),
    )
        .into_response()
}

/// Decodes an OTLP/HTTP body by its content type (`application/x-protobuf`, the default, or
/// `application/json`); `true` with JSON. The error is the response to send.
pub fn decode<T: Message + Default + serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Bytes,
    what: &str,
) -> Result<(T, bool), Box<Response>> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let bad = |m: String| Box::new(error(StatusCode::BAD_REQUEST, m));
    if ct.starts_with("application/json") {
        serde_json::from_slice::<T>(&body)
            .map(|r| (r, true))
            .map_err(|e| bad(format!("not an OTLP/JSON {what} request: {e}")))
    } else if ct.starts_with("application/x-protobuf") || ct.is_empty() {
        T::decode(body)
            .map(|r| (r, false))
            .map_err(|e| bad(format!("not an OTLP/protobuf {what} request: {e}")))
    } else {
        Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content-type {ct:?}: use application/x-protobuf or application/json"),
        )))
    }
}

/// An OTLP/HTTP response in the encoding of the request.
pub fn encode<T: Message + serde::Serialize>(resp: &T, json: bool) -> Response {
    if json {
        axum::Json(serde_json::to_value(resp).unwrap_or_default()).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            resp.encode_to_vec(),
        )
            .into_response()
    }
}

/// `POST /v1/traces`: `application/x-protobuf` or `application/json`.
pub async fn http_traces(
    axum::extract::State(r): axum::extract::State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (req, json) = match decode::<ExportTraceServiceRequest>(&headers, body, "trace") {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    match r.take(req) {
        Outcome::Accepted { rejected, message } => {
            let resp = ExportTraceServiceResponse {
                partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: message,
                }),
            };
            encode(&resp, json)
        }
        Outcome::Full(m) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            m,
        )
            .into_response(),
        Outcome::Failed(m) => error(StatusCode::SERVICE_UNAVAILABLE, m),
    }
}
