//! OTLP over HTTP: `POST /v1/traces` and `/v1/metrics`, `application/x-protobuf` (the
//! default) or `application/json`, optionally `Content-Encoding: gzip`. The answer is in the
//! request's encoding; a refusal is text naming the reason, with the status OTLP clients
//! read: 400, 413 and 415 are not retried, 429 (with `Retry-After`) and 503 are.

use super::{receive, Format, Intake, Refused, Signal};
use crate::delivery::Refusal;
use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;

fn error(status: StatusCode, message: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], message).into_response()
}

fn refusal(e: Refused) -> Response {
    match e {
        Refused::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        Refused::TooLarge(m) => error(StatusCode::PAYLOAD_TOO_LARGE, m),
        Refused::Unsupported(m) => error(StatusCode::UNSUPPORTED_MEDIA_TYPE, m),
        Refused::Queue(full @ Refusal::Full { .. }) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(
                header::RETRY_AFTER,
                super::RETRY_AFTER.as_secs().to_string(),
            )],
            full.to_string(),
        )
            .into_response(),
        Refused::Queue(other) => error(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
        Refused::Internal(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// How the body is encoded and compressed, from its headers.
fn body_kind(headers: &HeaderMap) -> Result<(Format, bool), Refused> {
    let ct = header_text(headers, header::CONTENT_TYPE);
    let format = if ct.starts_with("application/json") {
        Format::Json
    } else if ct.starts_with("application/x-protobuf") || ct.is_empty() {
        Format::Protobuf
    } else {
        return Err(Refused::Unsupported(format!(
            "content-type {ct:?}: use application/x-protobuf or application/json"
        )));
    };
    let gzip = match header_text(headers, header::CONTENT_ENCODING).as_str() {
        "" | "identity" => false,
        "gzip" | "x-gzip" => true,
        other => {
            return Err(Refused::Unsupported(format!(
                "content-encoding {other:?}: send gzip or no encoding"
            )))
        }
    };
    Ok((format, gzip))
}

/// `POST /v1/traces` or `/v1/metrics`.
pub(crate) async fn http_export<S: Signal>(
    axum::extract::State((sig, intake)): axum::extract::State<(S, Intake)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (format, gzip) = match body_kind(&headers) {
        Ok(k) => k,
        Err(e) => return refusal(e),
    };
    match receive(&sig, &intake, body, format, gzip).await {
        Ok(resp) if format == Format::Json => axum::Json(resp).into_response(),
        Ok(resp) => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            resp.encode_to_vec(),
        )
            .into_response(),
        Err(e) => refusal(e),
    }
}
