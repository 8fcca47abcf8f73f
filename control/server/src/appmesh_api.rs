//! App Mesh's own REST API (version 2019-01-25, `restJson1`), on the admin port under
//! `/v20190125/`: create, describe, update, delete and list of meshes, virtual nodes,
//! routers, routes, services, gateways and gateway routes, so that the AWS CLI, the SDKs
//! (`--endpoint-url`) and Terraform's AWS provider (a custom `appmesh` endpoint) keep
//! managing the mesh. A change goes through the same validation and store as
//! `maillectl apply`, and reaches the Envoys the same way.
//!
//! Requests must be signed with SigV4, the admin API's token as the secret access key
//! ([`crate::sigv4`]); the access key id names the client in the server's log. Tags are not kept: `ListTagsForResource`
//! answers none, and `TagResource`/`UntagResource` are refused. Errors carry App Mesh's types
//! (`x-amzn-ErrorType`: `BadRequestException`, `NotFoundException`, `ConflictException`,
//! `ResourceInUseException`, `ForbiddenException`) and, for a bad spec, every field path.
//! Maille keeps no per-resource times: `metadata.createdAt` and `lastUpdatedAt` are those of
//! the answer, `version` the mesh's version.

use crate::admin::AppState;
use crate::mesh::ApplyError;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use maille_import::{import_str, Format, Params};
use maille_model::{Key, Kind, Resource};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The API's path prefix.
pub const PREFIX: &str = "/v20190125";
/// Most items of one list page.
const MAX_LIMIT: usize = 100;

/// The routes of the API, to merge into the admin router.
pub fn router() -> Router<AppState> {
    Router::new().route(&format!("{PREFIX}/{{*rest}}"), any(handle))
}

/// An App Mesh error answer.
fn fail(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let message = message.into();
    (
        status,
        [("x-amzn-ErrorType", kind.to_owned())],
        axum::Json(json!({"__type": kind, "message": message})),
    )
        .into_response()
}

fn bad(message: impl Into<String>) -> Response {
    fail(StatusCode::BAD_REQUEST, "BadRequestException", message)
}

/// What a path names: a kind, its mesh, the router or gateway of a route, and the name (none
/// for the collection).
#[derive(Debug)]
struct Target {
    kind: Kind,
    mesh: String,
    parent: Option<String>,
    name: Option<String>,
}

impl Target {
    fn parse(rest: &str) -> Option<Target> {
        let s: Vec<&str> = rest.split('/').collect();
        if s.iter().any(|p| p.is_empty()) || s.first() != Some(&"meshes") {
            return None;
        }
        let own = |s: &&str| (*s).to_owned();
        let coll = |c: &str| match c {
            "virtualNodes" => Some(Kind::VirtualNode),
            "virtualRouters" => Some(Kind::VirtualRouter),
            "virtualServices" => Some(Kind::VirtualService),
            "virtualGateways" => Some(Kind::VirtualGateway),
            _ => None,
        };
        let t = match s.len() {
            1 => Target {
                kind: Kind::Mesh,
                mesh: String::new(),
                parent: None,
                name: None,
            },
            2 => Target {
                kind: Kind::Mesh,
                mesh: s[1].to_owned(),
                parent: None,
                name: Some(s[1].to_owned()),
            },
            3 | 4 => Target {
                kind: coll(s[2])?,
                mesh: s[1].to_owned(),
                parent: None,
                name: s.get(3).map(own),
            },
            5 | 6 => {
                let kind = match (s[2], s[4]) {
                    ("virtualRouter", "routes") => Kind::Route,
                    ("virtualGateway", "gatewayRoutes") => Kind::GatewayRoute,
                    _ => return None,
                };
                Target {
                    kind,
                    mesh: s[1].to_owned(),
                    parent: Some(s[3].to_owned()),
                    name: s.get(5).map(own),
                }
            }
            _ => return None,
        };
        Some(t)
    }

    fn key(&self, name: &str) -> Key {
        Key {
            kind: self.kind,
            mesh: if self.kind == Kind::Mesh {
                name.to_owned()
            } else {
                self.mesh.clone()
            },
            name: match &self.parent {
                Some(p) => format!("{p}/{name}"),
                None => name.to_owned(),
            },
        }
    }
}

/// The list answer's key for `kind`.
fn list_key(kind: Kind) -> &'static str {
    match kind {
        Kind::Mesh => "meshes",
        Kind::VirtualNode => "virtualNodes",
        Kind::VirtualRouter => "virtualRouters",
        Kind::Route => "routes",
        Kind::VirtualService => "virtualServices",
        Kind::VirtualGateway => "virtualGateways",
        Kind::GatewayRoute => "gatewayRoutes",
        Kind::Filter => "filters",
        Kind::Rollout => "rollouts",
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn region() -> String {
    std::env::var("AWS_REGION")
        .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|_| "us-east-1".into())
}

/// The account Maille reports as owner: App Mesh's field is required.
const ACCOUNT: &str = "000000000000";

fn arn(key: &Key) -> String {
    let path = match key.kind {
        Kind::Mesh => format!("mesh/{}", key.mesh),
        Kind::Route => {
            let (router, route) = key.name.split_once('/').unwrap_or((&key.name, ""));
            format!("mesh/{}/virtualRouter/{router}/route/{route}", key.mesh)
        }
        Kind::GatewayRoute => {
            let (gw, route) = key.name.split_once('/').unwrap_or((&key.name, ""));
            format!("mesh/{}/virtualGateway/{gw}/gatewayRoute/{route}", key.mesh)
        }
        k => format!("mesh/{}/{}/{}", key.mesh, k.as_str(), key.name),
    };
    format!("arn:aws:appmesh:{}:{ACCOUNT}:{path}", region())
}

fn metadata(key: &Key, version: u64) -> Value {
    let t = now_secs();
    json!({"arn": arn(key), "createdAt": t, "lastUpdatedAt": t, "meshOwner": ACCOUNT,
           "resourceOwner": ACCOUNT, "uid": format!("maille-{}", key), "version": version})
}

/// `<Kind>Data`: the resource with its metadata and status.
fn data(r: &Resource, version: u64, status: &str) -> Value {
    // `Resource` serializes as `{"<kind>": {...}}`: App Mesh's `<Kind>Data` is the inside.
    let mut v = match serde_json::to_value(r) {
        Ok(Value::Object(o)) => o.into_iter().next().map_or(Value::Null, |(_, v)| v),
        _ => Value::Null,
    };
    if let Value::Object(o) = &mut v {
        // Not App Mesh's: its `maille:` tags.
        o.remove("maille");
        o.remove("kubernetes");
        o.entry("spec").or_insert_with(|| json!({}));
        o.insert("metadata".into(), metadata(&r.key(), version));
        o.insert("status".into(), json!({"status": status}));
    }
    v
}

/// `<Kind>Ref`: a list item.
fn reference(r: &Resource, version: u64) -> Value {
    let key = r.key();
    let (name_field, parent_field) = key.kind.name_fields();
    let mut o = Map::new();
    o.insert("meshName".into(), key.mesh.clone().into());
    match (parent_field, key.name.split_once('/')) {
        (Some(pf), Some((parent, name))) => {
            o.insert(pf.into(), parent.into());
            o.insert(name_field.into(), name.into());
        }
        _ => {
            o.insert(name_field.into(), key.name.clone().into());
        }
    }
    if let Value::Object(md) = metadata(&key, version) {
        o.extend(md.into_iter().filter(|(k, _)| k != "uid"));
    }
    Value::Object(o)
}

/// The access key id of a SigV4 `Authorization` header.
fn access_key(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let cred = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")?
        .split(',')
        .find_map(|p| p.trim().strip_prefix("Credential="))?;
    let id = cred.split('/').next()?;
    (!id.is_empty()).then(|| id.to_owned())
}

async fn handle(
    State(s): State<AppState>,
    Path(rest): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let client = match crate::sigv4::verify(&s.admin_tokens, &method, &uri, &headers, &body) {
        Ok((client, scope)) => {
            if scope != crate::auth::Scope::Admin && method != Method::GET {
                return fail(
                    StatusCode::FORBIDDEN,
                    "ForbiddenException",
                    "signed with the read-only token: describe and list only",
                );
            }
            client
        }
        Err(why) => {
            tracing::warn!(client = ?access_key(&headers), why, "App Mesh API: request refused");
            return fail(StatusCode::FORBIDDEN, "ForbiddenException", why);
        }
    };
    match (&method, rest.as_str()) {
        (&Method::GET, "tags") => return axum::Json(json!({"tags": []})).into_response(),
        (&Method::PUT, "tag" | "untag") => {
            return bad("Maille keeps no tags: the mesh configuration has none (Maille's own settings are `maille:` tags given at create)")
        }
        _ => {}
    }
    let Some(t) = Target::parse(&rest) else {
        return fail(
            StatusCode::NOT_FOUND,
            "NotFoundException",
            format!("{PREFIX}/{rest}: not a path of the App Mesh API"),
        );
    };
    if let Some(owner) = query.get("meshOwner") {
        if owner != ACCOUNT {
            tracing::warn!(
                client,
                owner,
                "App Mesh API: meshOwner ignored (Maille has one owner)"
            );
        }
    }
    match (&method, &t.name) {
        (&Method::GET, None) => list(&s, &t, &query),
        (&Method::GET, Some(name)) => describe(&s, &t, name),
        (&Method::PUT, None) => write(&s, &t, None, &body, &client).await,
        (&Method::PUT, Some(name)) => write(&s, &t, Some(name), &body, &client).await,
        (&Method::DELETE, Some(name)) => delete(&s, &t, name, &client).await,
        _ => fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "BadRequestException",
            format!("{method} {PREFIX}/{rest}: no such App Mesh operation"),
        ),
    }
}

fn not_found(key: &Key) -> Response {
    fail(
        StatusCode::NOT_FOUND,
        "NotFoundException",
        format!("{key} does not exist"),
    )
}

fn describe(s: &AppState, t: &Target, name: &str) -> Response {
    let snap = s.mesh.current();
    let key = t.key(name);
    match snap.resources.get(&key) {
        Some(r) => axum::Json(data(r, snap.version, "ACTIVE")).into_response(),
        None => not_found(&key),
    }
}

fn list(s: &AppState, t: &Target, query: &BTreeMap<String, String>) -> Response {
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => MAX_LIMIT,
        Some(Ok(l)) if (1..=MAX_LIMIT).contains(&l) => l,
        Some(_) => return bad(format!("limit: must be 1..={MAX_LIMIT}")),
    };
    let from = match query.get("nextToken").map(|n| n.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return bad("nextToken: not a token this server gave"),
    };
    let snap = s.mesh.current();
    let prefix = t.parent.as_ref().map(|p| format!("{p}/"));
    let all: Vec<Value> = snap
        .resources
        .iter()
        .filter(|(k, _)| k.kind == t.kind)
        .filter(|(k, _)| t.kind == Kind::Mesh || k.mesh == t.mesh)
        .filter(|(k, _)| prefix.as_ref().is_none_or(|p| k.name.starts_with(p)))
        .map(|(_, r)| reference(r, snap.version))
        .collect();
    if from > all.len() {
        return bad("nextToken: not a token this server gave");
    }
    let page: Vec<Value> = all.iter().skip(from).take(limit).cloned().collect();
    let end = from + page.len();
    let next = (end < all.len()).then(|| end.to_string());
    let mut o = Map::new();
    o.insert(list_key(t.kind).into(), Value::Array(page));
    if let Some(n) = next {
        o.insert("nextToken".into(), n.into());
    }
    axum::Json(Value::Object(o)).into_response()
}

/// Create (no `name`: it is in the body) or update (`name` from the path).
async fn write(
    s: &AppState,
    t: &Target,
    name: Option<&str>,
    body: &[u8],
    client: &str,
) -> Response {
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad(format!("the body is not JSON: {e}")),
        }
    };
    let Value::Object(mut input) = input else {
        return bad("the body must be a JSON object");
    };
    let (name_field, parent_field) = t.kind.name_fields();
    let creating = name.is_none();
    let name = match name {
        Some(n) => n.to_owned(),
        None => match input.get(name_field).and_then(Value::as_str) {
            Some(n) => n.to_owned(),
            None => return bad(format!("{name_field}: is required")),
        },
    };
    let key = t.key(&name);
    // What App Mesh has no field for, kept from the resource an update replaces: a route's
    // `maille:` settings (given as tags at create: a route's, a node's, the mesh's), a
    // node's Kubernetes source.
    let kept = (!creating)
        .then(|| s.mesh.current().resources.get(&key).cloned())
        .flatten();
    // The document `maillectl apply` would read: the create input with the path's names.
    input.insert(name_field.into(), name.into());
    if t.kind != Kind::Mesh {
        input.insert("meshName".into(), t.mesh.clone().into());
    }
    if let (Some(pf), Some(p)) = (parent_field, &t.parent) {
        input.insert(pf.into(), p.clone().into());
    }
    input.entry("spec").or_insert_with(|| json!({}));
    let text = Value::Object(input).to_string();
    let imported = match import_str("request", &text, Format::ApiJson, &Params::new()) {
        Ok(i) => i,
        Err(e) => return bad(format!("{}: {}", e.path, e.message)),
    };
    for w in &imported.warnings {
        tracing::warn!(client, "App Mesh API: {w}");
    }
    let Some(mut r) = imported.resources.into_iter().next() else {
        return bad("no resource in the request");
    };
    match (&mut r, kept.as_deref()) {
        (Resource::Route(new), Some(Resource::Route(old))) if new.maille.is_none() => {
            new.maille = old.maille.clone();
        }
        (Resource::VirtualNode(new), Some(Resource::VirtualNode(old))) => {
            if new.kubernetes.is_none() {
                new.kubernetes = old.kubernetes.clone();
            }
            if new.maille.is_none() {
                new.maille = old.maille.clone();
            }
        }
        (Resource::Mesh(new), Some(Resource::Mesh(old))) if new.maille.is_none() => {
            new.maille = old.maille.clone();
        }
        _ => {}
    }
    if r.key() != key {
        return bad(format!("the body names {}, the path {key}", r.key()));
    }
    // Created only if absent, updated only if present: checked where the change is made.
    match s
        .mesh
        .apply_expecting(vec![r.clone()], Vec::new(), false, Some(!creating))
        .await
    {
        Ok(report) => {
            tracing::info!(client, %key, version = report.version, "App Mesh API: {}", if creating { "created" } else { "updated" });
            axum::Json(data(&r, report.version, "ACTIVE")).into_response()
        }
        Err(e) => apply_failed(e, false),
    }
}

async fn delete(s: &AppState, t: &Target, name: &str, client: &str) -> Response {
    let key = t.key(name);
    let Some(r) = s.mesh.current().resources.get(&key).cloned() else {
        return not_found(&key);
    };
    match s.mesh.delete(vec![key.clone()], false).await {
        Ok(report) => {
            tracing::info!(client, %key, version = report.version, "App Mesh API: deleted");
            axum::Json(data(&r, report.version, "DELETED")).into_response()
        }
        Err(e) => apply_failed(e, true),
    }
}

fn apply_failed(e: ApplyError, deleting: bool) -> Response {
    match e {
        ApplyError::Invalid(errs) => {
            let message = errs
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            if deleting {
                fail(StatusCode::CONFLICT, "ResourceInUseException", message)
            } else {
                bad(message)
            }
        }
        ApplyError::NotFound(k) => fail(
            StatusCode::NOT_FOUND,
            "NotFoundException",
            format!("{k} does not exist"),
        ),
        ApplyError::Exists(k) => fail(
            StatusCode::CONFLICT,
            "ConflictException",
            format!("{k} already exists"),
        ),
        ApplyError::Store(e) => fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerErrorException",
            e.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_kind_mesh_parent_and_name() {
        let t = Target::parse("meshes").unwrap();
        assert_eq!((t.kind, t.name), (Kind::Mesh, None));
        let t = Target::parse("meshes/demo/virtualRouter/color/routes/r1").unwrap();
        assert_eq!(t.kind, Kind::Route);
        assert_eq!(t.key("r1").name, "color/r1");
        let t = Target::parse("meshes/demo/virtualGateway/gw/gatewayRoutes").unwrap();
        assert_eq!(
            (t.kind, t.parent.as_deref(), t.name),
            (Kind::GatewayRoute, Some("gw"), None)
        );
        for bad in [
            "",
            "meshes/",
            "meshes/demo/virtualRoutes",
            "meshes/demo/virtualRouter/x/y",
            "tags",
            "meshes/a/virtualNodes/b/c/d/e/f",
        ] {
            assert!(Target::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_access_key_of_a_sigv4_header_names_the_client() {
        let mut h = HeaderMap::new();
        assert_eq!(access_key(&h), None);
        h.insert("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261201/us-east-1/appmesh/aws4_request, SignedHeaders=host, Signature=abc".parse().unwrap());
        assert_eq!(access_key(&h).as_deref(), Some("AKIDEXAMPLE"));
        h.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(access_key(&h), None);
    }
}
