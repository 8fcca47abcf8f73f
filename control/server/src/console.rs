//! The web console: one page, served as is (no build step, no CDN), that reads the admin
//! API every second: the mesh's routes and weights, each rollout's progress with its checks
//! drawn over time, breaker states and recent signals, the connected Envoys, and promote /
//! pause / resume / abort buttons. Its script builds the page with DOM calls only, so every
//! value from the API shows as text.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("console.html");

/// What the page may do: run and style itself (inline), read the API of its own origin, show
/// inline images; nothing else loads, nothing frames it (its buttons act on rollouts).
pub const CSP: &str = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_writes_no_markup_from_data() {
        // The only URL in the page is the SVG namespace, which names and loads nothing.
        let urls: Vec<&str> = PAGE
            .match_indices("://")
            .map(|(i, _)| &PAGE[i.saturating_sub(6)..(i + 30).min(PAGE.len())])
            .collect();
        assert!(
            urls.iter()
                .all(|u| u.contains("http://www.w3.org/2000/svg")),
            "{urls:?}"
        );
        for needle in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            " src=",
            "@import",
            "url(",
        ] {
            assert!(!PAGE.contains(needle), "the page uses {needle}");
        }
        // No external loads, and no framing by other sites.
        assert!(CSP.contains("default-src 'self'") && CSP.contains("frame-ancestors 'none'"));
    }
}
