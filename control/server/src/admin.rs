//! The admin API (HTTP/JSON, the types of `maille-api`) that `maillectl` speaks, and the HTTP
//! endpoints Envoys use: filter module downloads and the breaker's signal endpoint.

use crate::auth::Scope;
use crate::clients::Clients;
use crate::mesh::{types, ApplyError, Mesh};
use crate::rollouts::{ActError, Rollouts};
use crate::signals::Signals;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use maille_api::{
    paths, ApplyRequest, BootstrapQuery, BreakerSignal, DeleteRequest, ErrorBody, FieldError,
    NodeAnswer, ResourcesAnswer, RolloutAction, RolloutsAnswer, ServedModule, SignalsAnswer,
    StatusAnswer, MAX_SIGNAL_BYTES,
};
use maille_model::Kind;
use maille_translate::bootstrap::{self, BootstrapParams, ControlEndpoints};
use maille_translate::{names, NodeOptions};
use serde::Deserialize;
use std::sync::Arc;

/// Largest admin request body (a big mesh in one apply).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The served mesh.
    pub mesh: Arc<Mesh>,
    /// Connected Envoys.
    pub clients: Arc<Clients>,
    /// Breaker signals.
    pub signals: Arc<Signals>,
    /// The rollouts.
    pub rollouts: Rollouts,
    /// Where Envoys reach this server (for bootstraps).
    pub endpoints: ControlEndpoints,
    /// The certificate authority (its trust bundle goes into bootstraps).
    pub ca: Arc<crate::ca::Ca>,
    /// Node tokens (one goes into each bootstrap).
    pub tokens: Arc<crate::auth::NodeTokens>,
    /// The admin API's tokens.
    pub admin_tokens: Arc<crate::auth::AdminTokens>,
    /// Cloud Map polling (its status).
    pub cloud_map: Arc<crate::cloud_map::Polling>,
    /// The stats this server's Envoys sent it.
    pub mesh_metrics: Arc<crate::metrics::MeshMetrics>,
    /// This server's id among those sharing its store.
    pub server_id: String,
}

/// The router of the admin API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(paths::HEALTH, get(|| async { "ok" }))
        .route(paths::APPLY, post(apply))
        .route(paths::DELETE, post(delete))
        .route(paths::RESOURCES, get(resources))
        .route(paths::STATUS, get(status))
        .route(&format!("{}/{{*node}}", paths::NODES), get(node))
        .route(paths::BOOTSTRAP, get(bootstrap))
        .route(paths::NODE_TOKEN, get(node_token))
        .route(&format!("{}/{{file}}", paths::MODULES), get(module))
        .route(
            paths::SIGNAL,
            post(signal).layer(axum::extract::DefaultBodyLimit::max(MAX_SIGNAL_BYTES)),
        )
        .route(paths::SIGNALS, get(signals))
        .route(paths::ROLLOUTS, get(rollouts))
        .route(paths::MESH_STATS, get(mesh_stats))
        .route(
            &format!("{}/{{mesh}}/{{name}}", paths::ROLLOUTS),
            get(rollout),
        )
        .route(
            &format!("{}/{{mesh}}/{{name}}/{{action}}", paths::ROLLOUTS),
            post(rollout_action),
        )
        .route("/", get(crate::console::page))
        .merge(crate::appmesh_api::router())
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The scope a request needs; `None`: open to anyone (the health check, the console's page,
/// module downloads, which Envoy fetches by sha256; the App Mesh API, which checks SigV4
/// itself; the breaker's signals, which name a node and a cluster).
fn needs(method: &axum::http::Method, path: &str) -> Option<Scope> {
    use axum::http::Method;
    let open = path == paths::HEALTH
        || path == "/"
        || path
            .strip_prefix(paths::MODULES)
            .is_some_and(|r| r.starts_with('/'))
        || (path == paths::SIGNAL && method == Method::POST)
        || path.starts_with("/v20190125/");
    if open {
        None
    } else if path == paths::NODE_TOKEN {
        // A credential: not for the read-only token.
        Some(Scope::Admin)
    } else if path == paths::BOOTSTRAP {
        // A bootstrap carries a node token.
        Some(Scope::Bootstrap)
    } else if method == Method::GET || method == Method::HEAD {
        Some(Scope::Read)
    } else {
        Some(Scope::Admin)
    }
}

/// Refuses a request without the token its scope needs.
async fn guard(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(need) = needs(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if need == Scope::Bootstrap {
        // A node's own token fetches that node's bootstrap (a deployment holding one node's
        // credential only).
        if let Some(node) = token.and_then(|t| s.tokens.node_of(t)) {
            let asked = axum::extract::Query::<BootstrapQuery>::try_from_uri(req.uri())
                .map(|q| q.0.node)
                .unwrap_or_default();
            if asked == node {
                return next.run(req).await;
            }
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "this token is node {:?}'s: it fetches that node's bootstrap only",
                    node.chars().take(300).collect::<String>()
                ),
            );
        }
    }
    match token.and_then(|t| s.admin_tokens.scope_of(t)) {
        Some(have) if have.allows(need) => next.run(req).await,
        Some(have) => error(
            StatusCode::FORBIDDEN,
            format!(
                "{} {}: the {} token cannot do this; it needs the admin token",
                req.method(),
                req.uri().path(),
                match have {
                    Scope::Read => "read-only",
                    Scope::Bootstrap => "bootstrap",
                    Scope::Admin => "admin",
                }
            ),
        ),
        None => {
            tracing::warn!(path = %req.uri().path(), "admin API: request without a valid token refused");
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                format!(
                    "{}: {} (authorization: Bearer <token>): maillectl reads it from {} next to the server's state, or takes --token / MAILLE_TOKEN / MAILLE_TOKEN_FILE",
                    req.uri().path(),
                    if token.is_some() { "this token is not valid here" } else { "this needs a token" },
                    crate::auth::ADMIN_TOKEN_FILE
                ),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"maille\""),
            );
            r
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorBody::new(message))).into_response()
}

fn apply_error(e: ApplyError) -> Response {
    match e {
        ApplyError::Invalid(errs) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ErrorBody {
                error: "the resources are invalid; nothing was changed".into(),
                errors: errs
                    .0
                    .into_iter()
                    .map(|e| FieldError {
                        resource: e.resource,
                        path: e.path,
                        message: e.message,
                    })
                    .collect(),
            }),
        )
            .into_response(),
        ApplyError::NotFound(k) => error(StatusCode::NOT_FOUND, format!("{k} does not exist")),
        ApplyError::Exists(k) => error(StatusCode::CONFLICT, format!("{k} already exists")),
        ApplyError::Store(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Refuses a change that does not say which client sends it (see
/// [`paths::CLIENT_HEADER`]).
fn client(headers: &axum::http::HeaderMap) -> Result<(), Box<Response>> {
    if headers.contains_key(paths::CLIENT_HEADER) {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::FORBIDDEN,
            format!(
                "a change must carry the {} header (maillectl and the console send it)",
                paths::CLIENT_HEADER
            ),
        )))
    }
}

/// A JSON body of type `T`, or the 400 to answer, naming the field path that is wrong.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Box<Response>> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("{path}: {}", e.into_inner()),
        ))
    })
}

async fn apply(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    if let Err(r) = client(&headers) {
        return *r;
    }
    let req: ApplyRequest = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match s.mesh.apply(req.resources, req.dry_run).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => apply_error(e),
    }
}

async fn delete(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    if let Err(r) = client(&headers) {
        return *r;
    }
    let req: DeleteRequest = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match s.mesh.delete(req.keys, req.dry_run).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => apply_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Filter {
    kind: Option<String>,
    mesh: Option<String>,
}

async fn resources(State(s): State<AppState>, Query(f): Query<Filter>) -> Response {
    let kind = match f.kind.as_deref().map(|k| (k, Kind::parse(k))) {
        Some((k, None)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown kind {k:?}: use mesh, virtual-node, virtual-router, route, virtual-service, virtual-gateway, gateway-route, filter or rollout"),
            )
        }
        Some((_, k)) => k,
        None => None,
    };
    let snap = s.mesh.current();
    let list = snap
        .resources
        .iter()
        .filter(|(k, _)| kind.is_none_or(|want| k.kind == want))
        .filter(|(k, _)| f.mesh.as_ref().is_none_or(|m| &k.mesh == m))
        .map(|(_, r)| (**r).clone())
        .collect();
    Json(ResourcesAnswer {
        version: snap.version,
        resources: list,
    })
    .into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    let snap = s.mesh.current();
    Json(StatusAnswer {
        version: snap.version,
        modules: snap
            .modules
            .iter()
            .map(|(n, m)| {
                (
                    n.clone(),
                    ServedModule {
                        url: m.url.clone(),
                        sha256: m.sha256.clone(),
                    },
                )
            })
            .collect(),
        clients: s.clients.list(),
        leader: s.rollouts.leader().map(|l| maille_api::LeaderStatus {
            me: l.me,
            holder: l.holder,
        }),
        cloud_map: s.cloud_map.status(snap.cloud_map_queries.len()),
    })
    .into_response()
}

async fn node(State(s): State<AppState>, Path(node): Path<String>) -> Response {
    let Some((mesh, vn)) = names::parse_node_id(&node) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{node:?} is not a node id: use mesh/<mesh>/virtualNode/<name> or mesh/<mesh>/virtualGateway/<name>"),
        );
    };
    let snap = s.mesh.current();
    let res = s
        .mesh
        .node_resources(&snap, mesh, vn, &NodeOptions::default());
    let resources = types::ALL
        .iter()
        .map(|t| {
            let names_ = res
                .by_type
                .get(t)
                .map(|c| c.items.iter().map(|(n, _)| n.clone()).collect())
                .unwrap_or_default();
            (types::short(t).to_owned(), names_)
        })
        .collect();
    Json(NodeAnswer {
        node: node.clone(),
        version: snap.version,
        resources,
        warnings: res.warnings.clone(),
    })
    .into_response()
}

async fn bootstrap(
    State(s): State<AppState>,
    q: Result<Query<BootstrapQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let d = NodeOptions::default();
    let opts = NodeOptions {
        ingress_port: q.ingress_port.unwrap_or(d.ingress_port),
        egress_port: q.egress_port.unwrap_or(d.egress_port),
        listen_address: q.listen_address.unwrap_or(d.listen_address),
        app_address: q.app_address.unwrap_or(d.app_address),
        otlp_port: q.otlp_port,
    };
    let params = match BootstrapParams::new(
        &q.node,
        q.admin_port.unwrap_or(bootstrap::DEFAULT_ADMIN_PORT),
        opts,
    ) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        bootstrap::render(
            &params,
            &ControlEndpoints {
                // Every live server sharing the store: Envoy goes to another when one dies.
                peers: s
                    .mesh
                    .store()
                    .servers()
                    .into_iter()
                    .map(|e| (e.address, e.xds_port, e.http_port))
                    .collect(),
                ..s.endpoints.clone()
            },
            &bootstrap::Credentials {
                node_token: s.tokens.token(&q.node),
                signal_token: s.tokens.signal_token(&q.node),
                trust_bundle: s.ca.trust_bundle().to_owned(),
            },
        ),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeTokenQuery {
    node: String,
}

async fn node_token(
    State(s): State<AppState>,
    q: Result<Query<NodeTokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if maille_translate::names::parse_node_id(&q.node).is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "node: must be mesh/<mesh>/virtualNode/<name> or mesh/<mesh>/virtualGateway/<name>, got {:?}",
                q.node.chars().take(300).collect::<String>()
            ),
        );
    }
    Json(maille_api::NodeTokenAnswer {
        token: s.tokens.token(&q.node),
        node: q.node,
    })
    .into_response()
}

async fn module(State(s): State<AppState>, Path(file): Path<String>) -> Response {
    if !maille_translate::is_module_file(&file) {
        return error(
            StatusCode::NOT_FOUND,
            format!("{file:?}: modules are <name>.wasm or lib<name>.so"),
        );
    }
    match s.mesh.modules().bytes(&file) {
        Some(bytes) => {
            tracing::info!(module = %file, bytes = bytes.len(), "module download");
            let ct = if file.ends_with(".wasm") {
                "application/wasm"
            } else {
                "application/octet-stream"
            };
            ([(header::CONTENT_TYPE, ct)], bytes.as_ref().clone()).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no module {file:?}")),
    }
}

/// A breaker's signal: taken only from a proxy with its signal token (the bootstrap's control
/// cluster adds it to every call), about a cluster that proxy has.
async fn signal(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let node = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| s.tokens.signal_node_of(t.trim()));
    let Some(node) = node else {
        tracing::warn!("breaker signal refused: no signal token");
        return error(
            StatusCode::UNAUTHORIZED,
            "breaker signals are taken only from proxies, with their signal token (their bootstrap's control cluster adds it)",
        );
    };
    let sig: BreakerSignal = match body(&bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if let Err(e) = sig.check() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let clusters = s.mesh.clusters_of(&node);
    if !clusters.contains(&sig.cluster) {
        tracing::warn!(node = %node, cluster = %sig.cluster, "breaker signal refused: not a cluster of its node");
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "{node} has no cluster {:?} (its clusters: {})",
                sig.cluster,
                clusters
                    .iter()
                    .take(20)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    tracing::info!(node = %node, cluster = %sig.cluster, from = ?sig.from, to = ?sig.to, generation = sig.generation, "breaker signal");
    s.rollouts.on_signal(&sig);
    // Rollouts run on the leading server: a circuit opening reaches it from whichever
    // server the proxy's control cluster chose (once: a forwarded signal goes no further).
    if sig.to == maille_api::CircuitState::Open && !headers.contains_key(FORWARDED) {
        if let Some(leader) = s.rollouts.leader().filter(|l| !l.me) {
            if let (Some(to), Some(auth)) =
                (leader.holder, headers.get(header::AUTHORIZATION).cloned())
            {
                forward_signal(to, auth, bytes.clone(), s.ca.trust_bundle().to_owned());
            }
        }
    }
    s.signals.record(&node, sig, bytes.len());
    StatusCode::NO_CONTENT.into_response()
}

/// Marks a signal one server forwarded to the leading one.
const FORWARDED: &str = "x-maille-forwarded";

/// Posts a breaker signal to the leading server `to` (in the background, bounded to 5 s).
fn forward_signal(
    to: String,
    auth: axum::http::HeaderValue,
    body: axum::body::Bytes,
    trust: String,
) {
    tokio::task::spawn_blocking(move || {
        let agent = crate::https::agent_trusting(&trust, std::time::Duration::from_secs(5));
        let sent = agent
            .post(&format!("{to}{}", paths::SIGNAL))
            .header(
                header::AUTHORIZATION.as_str(),
                auth.to_str().unwrap_or_default(),
            )
            .header(FORWARDED, "1")
            .content_type("application/json")
            .send(&body[..]);
        match sent {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                tracing::warn!(leader = %to, status = %r.status(), "forwarding a breaker signal to the leader")
            }
            Err(e) => {
                tracing::warn!(leader = %to, error = %e, "forwarding a breaker signal to the leader")
            }
        }
    });
}

async fn signals(State(s): State<AppState>) -> Response {
    Json(SignalsAnswer {
        signals: s.signals.list(),
    })
    .into_response()
}

/// `?cluster=&fromMillis=&toMillis=` of [`paths::MESH_STATS`].
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StatsQuery {
    cluster: String,
    from_millis: u64,
    to_millis: u64,
}

async fn mesh_stats(
    State(s): State<AppState>,
    q: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match q {
        Ok(Query(q)) if q.from_millis > q.to_millis => error(
            StatusCode::BAD_REQUEST,
            format!(
                "{}: fromMillis {} is after toMillis {}",
                paths::MESH_STATS,
                q.from_millis,
                q.to_millis
            ),
        ),
        Ok(Query(q)) => {
            let mut w = s
                .mesh_metrics
                .window(&q.cluster, q.from_millis, q.to_millis);
            w.server = s.server_id.clone();
            Json(w).into_response()
        }
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "{}: {e} (cluster, fromMillis and toMillis, ms since the epoch)",
                paths::MESH_STATS
            ),
        ),
    }
}

async fn rollouts(State(s): State<AppState>) -> Response {
    Json(RolloutsAnswer {
        rollouts: s.rollouts.list(),
    })
    .into_response()
}

async fn rollout(
    State(s): State<AppState>,
    Path((mesh, name)): Path<(String, String)>,
) -> Response {
    match s.rollouts.get(&mesh, &name) {
        Some(r) => Json(r).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no rollout {name:?} in mesh {mesh:?}"),
        ),
    }
}

async fn rollout_action(
    State(s): State<AppState>,
    Path((mesh, name, action)): Path<(String, String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Err(r) = client(&headers) {
        return *r;
    }
    let Some(a) = RolloutAction::parse(&action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("{action:?}: a rollout can promote, pause, resume or abort"),
        );
    };
    match s.rollouts.act(&mesh, &name, a).await {
        Ok(r) => Json(r).into_response(),
        Err(e @ ActError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ ActError::Refused(_)) => error(StatusCode::CONFLICT, e.to_string()),
    }
}
