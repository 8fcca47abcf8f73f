//! `colorapp`: the services of the ColorTeller demo, as App Mesh's classic example has them.
//!
//! - `colorapp teller --color blue`: answers every request with its colour; `POST /fault`
//!   with a failure rate (0 to 1) makes that share of answers a `500`, to try the breaker.
//! - `colorapp gateway`: answers each request by asking the `colorteller` virtual service
//!   through its Envoy's egress listener (`Host: <service>`), passing the caller's headers on
//!   (the canary header, the trace context), and answering with what it got.
//!
//! Both answer `GET /ping` for health checks.

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// The ColorTeller demo services (a gateway and colour tellers) that `make demo` runs behind
/// Envoy sidecars.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// A colour teller: answers with its colour.
    Teller {
        /// Its colour (white, black, blue, red...).
        #[arg(long, env = "COLORAPP_COLOR")]
        color: String,
        /// Where it listens.
        #[arg(long, env = "COLORAPP_LISTEN", default_value = "127.0.0.1:9080")]
        listen: SocketAddr,
        /// The share of requests answered with 500 at start (0 to 1); change it while it runs
        /// with `curl -X POST 'http://LISTEN/fault?rate=0.5'`.
        #[arg(long, default_value_t = 0.0, value_parser = rate)]
        fail_rate: f64,
    },
    /// The gateway: asks the colorteller service through Envoy and answers with its colour.
    Gateway {
        /// Where it listens.
        #[arg(long, env = "COLORAPP_LISTEN", default_value = "127.0.0.1:9080")]
        listen: SocketAddr,
        /// Its Envoy's egress listener.
        #[arg(
            long,
            env = "COLORAPP_EGRESS",
            default_value = "http://127.0.0.1:15001"
        )]
        egress: String,
        /// The virtual service to ask (sent as the Host header).
        #[arg(
            long,
            env = "COLORAPP_SERVICE",
            default_value = "colorteller.demo.local"
        )]
        service: String,
    },
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("a failure rate is a number from 0 to 1, got {s:?}")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let (listen, app) = match cli.role {
        Role::Teller {
            color,
            listen,
            fail_rate,
        } => (listen, teller(color, fail_rate)),
        Role::Gateway {
            listen,
            egress,
            service,
        } => (listen, gateway(egress, service)),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    Ok(())
}

/// A teller's state: its colour, its failure rate (in millionths) and a request counter that
/// spreads failures evenly (a rate of 0.5 fails every second request).
#[derive(Debug)]
struct Teller {
    color: String,
    fail_ppm: AtomicU32,
    served: AtomicU64,
}

fn teller(color: String, fail_rate: f64) -> Router {
    let state = Arc::new(Teller {
        color,
        fail_ppm: AtomicU32::new((fail_rate * 1e6) as u32),
        served: AtomicU64::new(0),
    });
    Router::new()
        .route("/ping", get(|| async { "pong\n" }))
        .route("/fault", post(set_fault).get(get_fault))
        .fallback(tell)
        .with_state(state)
}

async fn tell(State(t): State<Arc<Teller>>) -> Response {
    let ppm = u64::from(t.fail_ppm.load(Ordering::Relaxed));
    let n = t.served.fetch_add(1, Ordering::Relaxed);
    // Fails when this request crosses the next whole failure: exact shares, evenly spread.
    let fails = (n + 1) * ppm / 1_000_000 > n * ppm / 1_000_000;
    if fails {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{} is failing\n", t.color),
        )
            .into_response()
    } else {
        format!("{}\n", t.color).into_response()
    }
}

async fn set_fault(
    State(t): State<Arc<Teller>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let given = q
        .get("rate")
        .cloned()
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
    match rate(&given) {
        Ok(r) => {
            t.fail_ppm.store((r * 1e6) as u32, Ordering::Relaxed);
            format!("{} fails {:.0}% of requests\n", t.color, r * 100.0).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn get_fault(State(t): State<Arc<Teller>>) -> String {
    let r = f64::from(t.fail_ppm.load(Ordering::Relaxed)) / 1e6;
    format!("{} fails {:.0}% of requests\n", t.color, r * 100.0)
}

#[derive(Debug)]
struct Gateway {
    egress: String,
    service: String,
    agent: ureq::Agent,
}

fn gateway(egress: String, service: String) -> Router {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(20)))
        .build()
        .new_agent();
    let state = Arc::new(Gateway {
        egress: egress.trim_end_matches('/').to_owned(),
        service,
        agent,
    });
    Router::new()
        .route("/ping", get(|| async { "pong\n" }))
        .fallback(ask)
        .with_state(state)
}

/// Headers a proxy must not pass on, and Envoy's own, which its egress listener would read.
fn passed_on(name: &HeaderName) -> bool {
    let n = name.as_str();
    !matches!(
        n,
        "host"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-connection"
            | "content-length"
    ) && !n.starts_with("x-envoy-")
}

/// Headers of the colorteller's answer the gateway shows its caller.
const ANSWER_HEADERS: [&str; 2] = ["x-maille-circuit", "retry-after"];

async fn ask(State(g): State<Arc<Gateway>>, uri: Uri, headers: HeaderMap) -> Response {
    let url = format!(
        "{}{}",
        g.egress,
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let result = tokio::task::spawn_blocking(move || {
        let mut req = g.agent.get(&url).header("host", &g.service);
        for (name, value) in headers.iter().filter(|(n, _)| passed_on(n)) {
            req = req.header(name.as_str(), value.as_bytes());
        }
        let mut resp = req.call()?;
        let status = resp.status();
        let kept: Vec<(HeaderName, HeaderValue)> = ANSWER_HEADERS
            .iter()
            .filter_map(|h| {
                resp.headers()
                    .get(*h)
                    .map(|v| (HeaderName::from_static(h), v.clone()))
            })
            .collect();
        let body = resp.body_mut().read_to_string()?;
        Ok::<_, ureq::Error>((status, kept, body))
    })
    .await;
    match result {
        Ok(Ok((status, kept, body))) => {
            let mut r = (
                StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
                body,
            )
                .into_response();
            r.headers_mut().extend(kept);
            r
        }
        Ok(Err(e)) => (
            StatusCode::BAD_GATEWAY,
            format!("gateway: cannot reach the colorteller service through Envoy: {e}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("gateway: {e}\n")).into_response(),
    }
}
