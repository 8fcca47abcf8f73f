//! The admin API (HTTP/JSON) that `maillectl` speaks, and the HTTP endpoints Envoys use:
//! wasm module downloads and the breaker's signal endpoint.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/v1/apply` | `{"resources": [...], "dryRun": false}`: create or replace |
//! | POST | `/v1/delete` | `{"keys": [...], "dryRun": false}` |
//! | GET | `/v1/resources?kind=&mesh=` | the stored resources |
//! | GET | `/v1/status` | connected Envoys: node, versions sent and acknowledged, last NACK |
//! | GET | `/v1/nodes/{node id}` | the Envoy resource names generated for a node, and warnings |
//! | GET | `/v1/bootstrap?node=...` | an Envoy bootstrap (YAML) pointing at this server |
//! | GET | `/v1/modules/{name}.wasm` | a wasm module |
//! | POST | `/v1/signals/breaker` | breaker state changes (from the breaker filter) |
//! | GET | `/v1/signals` | the breaker signals received |
//! | GET | `/healthz` | `ok` |

use crate::names;
use crate::spec::{Key, Kind, Resource};
use crate::state::{types, ApplyError, Control};
use crate::translate::NodeOptions;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// Largest admin request body (a big mesh in one apply).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Where this server is reached, for bootstraps.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Address Envoys use to reach this server.
    pub advertise_address: String,
    /// ADS (gRPC) port.
    pub xds_port: u16,
    /// HTTP port (this API, modules, signals).
    pub http_port: u16,
}

#[derive(Debug, Clone)]
struct AppState {
    control: Arc<Control>,
    endpoints: Endpoints,
}

/// The router of the admin API.
pub fn router(control: Arc<Control>, endpoints: Endpoints) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/apply", post(apply))
        .route("/v1/delete", post(delete))
        .route("/v1/resources", get(resources))
        .route("/v1/status", get(status))
        .route("/v1/nodes/{*node}", get(node))
        .route("/v1/bootstrap", get(bootstrap))
        .route("/v1/modules/{file}", get(module))
        .route(names::SIGNAL_PATH, post(signal))
        .route("/v1/signals", get(signals))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(AppState { control, endpoints })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn apply_error(e: ApplyError) -> Response {
    match e {
        ApplyError::Invalid(errs) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": "the resources are invalid; nothing was changed",
                "errors": errs.0.iter().map(|e| json!({
                    "resource": e.resource, "path": e.path, "message": e.message,
                })).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
        ApplyError::NotFound(k) => error(StatusCode::NOT_FOUND, format!("{k} does not exist")),
        ApplyError::Store(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ApplyBody {
    resources: Vec<Resource>,
    #[serde(default)]
    dry_run: bool,
}

async fn apply(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let body: ApplyBody = match serde_path_to_error::deserialize(de) {
        Ok(b) => b,
        Err(e) => {
            let path = e.path().to_string();
            return error(
                StatusCode::BAD_REQUEST,
                format!("{path}: {}", e.into_inner()),
            );
        }
    };
    match s.control.apply(body.resources, body.dry_run).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => apply_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeleteBody {
    keys: Vec<Key>,
    #[serde(default)]
    dry_run: bool,
}

async fn delete(State(s): State<AppState>, Json(body): Json<DeleteBody>) -> Response {
    match s.control.delete(body.keys, body.dry_run).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => apply_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct Filter {
    kind: Option<String>,
    mesh: Option<String>,
}

async fn resources(State(s): State<AppState>, Query(f): Query<Filter>) -> Response {
    let kind = match f.kind.as_deref().map(|k| (k, Kind::parse(k))) {
        Some((k, None)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown kind {k:?}: use mesh, virtual-node, virtual-router, route, virtual-service or filter"),
            )
        }
        Some((_, k)) => k,
        None => None,
    };
    let snap = s.control.current();
    let list: Vec<&Resource> = snap
        .resources
        .iter()
        .filter(|(k, _)| kind.is_none_or(|want| k.kind == want))
        .filter(|(k, _)| f.mesh.as_ref().is_none_or(|m| &k.mesh == m))
        .map(|(_, r)| r)
        .collect();
    Json(json!({ "version": snap.version, "resources": list })).into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    let snap = s.control.current();
    Json(json!({
        "version": snap.version,
        "modules": snap.modules,
        "clients": s.control.clients(),
    }))
    .into_response()
}

async fn node(State(s): State<AppState>, Path(node): Path<String>) -> Response {
    let Some((mesh, vn)) = names::parse_node_id(&node) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{node:?} is not a node id: use mesh/<mesh>/virtualNode/<name>"),
        );
    };
    let snap = s.control.current();
    let res = s
        .control
        .node_resources(&snap, mesh, vn, &NodeOptions::default());
    let mut out = serde_json::Map::new();
    for t in [
        types::LISTENER,
        types::ROUTE,
        types::CLUSTER,
        types::ENDPOINT,
        types::EXTENSION,
    ] {
        let names_: Vec<&str> = res
            .by_type
            .get(t)
            .map(|v| v.iter().map(|(n, _)| n.as_str()).collect())
            .unwrap_or_default();
        out.insert(types::short(t).to_owned(), json!(names_));
    }
    Json(json!({ "node": node, "version": snap.version, "resources": out, "warnings": res.warnings }))
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BootstrapQuery {
    node: String,
    #[serde(default)]
    admin_port: Option<u16>,
    #[serde(default)]
    ingress_port: Option<u16>,
    #[serde(default)]
    egress_port: Option<u16>,
    #[serde(default)]
    listen_address: Option<String>,
    #[serde(default)]
    app_address: Option<String>,
    #[serde(default)]
    otlp_port: Option<u16>,
}

async fn bootstrap(State(s): State<AppState>, Query(q): Query<BootstrapQuery>) -> Response {
    let Some((_, vn)) = names::parse_node_id(&q.node) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "node {:?} is not a node id: use mesh/<mesh>/virtualNode/<name>",
                q.node
            ),
        );
    };
    let d = NodeOptions::default();
    let opts = NodeOptions {
        ingress_port: q.ingress_port.unwrap_or(d.ingress_port),
        egress_port: q.egress_port.unwrap_or(d.egress_port),
        listen_address: q.listen_address.unwrap_or(d.listen_address),
        app_address: q.app_address.unwrap_or(d.app_address),
        otlp_port: q.otlp_port,
    };
    let text = crate::bootstrap::render(
        &q.node,
        vn,
        &opts,
        q.admin_port.unwrap_or(9901),
        &s.endpoints,
    );
    ([(header::CONTENT_TYPE, "application/yaml")], text).into_response()
}

async fn module(State(s): State<AppState>, Path(file): Path<String>) -> Response {
    let Some(name) = file.strip_suffix(".wasm") else {
        return error(
            StatusCode::NOT_FOUND,
            format!("{file:?}: modules end in .wasm"),
        );
    };
    match s.control.module(name) {
        Some(bytes) => {
            tracing::info!(module = name, bytes = bytes.len(), "module download");
            (
                [(header::CONTENT_TYPE, "application/wasm")],
                bytes.as_ref().clone(),
            )
                .into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no module {name:?}")),
    }
}

async fn signal(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) if v.is_object() => {
            tracing::info!(signal = %v, "breaker signal");
            s.control.record_signal(v);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => error(StatusCode::BAD_REQUEST, "a breaker signal is a JSON object"),
    }
}

async fn signals(State(s): State<AppState>) -> Response {
    Json(json!({ "signals": s.control.signals() })).into_response()
}
