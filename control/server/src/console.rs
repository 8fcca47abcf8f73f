//! The web console: one page, served as is (no build step, no CDN), that reads the admin
//! API: the mesh's routes and weights, each rollout's progress with its checks drawn over
//! time, breaker states and recent signals, and promote / pause / abort buttons.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("console.html");

/// `GET /`.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything is inline and same-origin: nothing else may load or run.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        PAGE,
    )
        .into_response()
}
