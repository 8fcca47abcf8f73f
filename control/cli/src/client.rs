//! A typed client of the control server's admin API (the types of `maille-api`).

use anyhow::Result;
use maille_api::{
    paths, ApplyReport, ApplyRequest, BootstrapQuery, DeleteRequest, ErrorBody, ResourcesAnswer,
    RolloutAction, RolloutStatus, RolloutsAnswer, SignalsAnswer, StatusAnswer,
};
use maille_model::{Key, Kind, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Why a call of the admin API did not give its answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No connection, or it broke: the server may be down or restarting.
    #[error("cannot reach the control server at {base}{hint}")]
    Unreachable {
        /// The server.
        base: String,
        /// What to try, when something suggests it.
        hint: &'static str,
        /// What the connection said.
        #[source]
        source: ureq::Error,
    },
    /// The server refused, saying why (an [`ErrorBody`]).
    #[error("{body}")]
    Refused {
        /// The HTTP status (404 for an unknown name, 409 for a refused action, ...).
        status: u16,
        /// The server's words.
        body: ErrorBody,
    },
    /// The server answered something that is not the API's: a proxy's page, a truncated body.
    #[error("{url} answered {detail}")]
    Unexpected {
        /// What was asked.
        url: String,
        /// What came back.
        detail: String,
    },
}

impl ApiError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What `maillectl` says it is in [`paths::CLIENT_HEADER`].
const CLIENT: &str = concat!("maillectl/", env!("CARGO_PKG_VERSION"));

/// The admin API of one control server.
#[derive(Debug)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// `Bearer <token>`, when one was found.
    authorization: Option<String>,
}

/// The token given with `--token`, if any (set once by `main`).
static GIVEN_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Uses `token` for every call (from `--token`).
pub fn set_token(token: String) {
    let _ = GIVEN_TOKEN.set(token);
}

/// The admin API token: `--token` (or `MAILLE_TOKEN`), else the file `MAILLE_TOKEN_FILE`
/// names, else `maille-admin.token` where the server writes it: in the folder of
/// `MAILLE_STATE`, the current folder, or `/var/lib/maille` (the EC2 and container
/// deployments' state folder).
pub fn find_token() -> Option<String> {
    if let Some(t) = GIVEN_TOKEN.get() {
        return Some(t.clone());
    }
    if let Ok(t) = std::env::var("MAILLE_TOKEN") {
        if !t.trim().is_empty() {
            return Some(t.trim().to_owned());
        }
    }
    let mut files = Vec::new();
    if let Ok(f) = std::env::var("MAILLE_TOKEN_FILE") {
        files.push(std::path::PathBuf::from(f));
    }
    if let Ok(state) = std::env::var("MAILLE_STATE") {
        if let Some(dir) = std::path::Path::new(&state).parent() {
            files.push(dir.join(TOKEN_FILE));
        }
    }
    files.push(std::path::PathBuf::from(TOKEN_FILE));
    files.push(std::path::Path::new("/var/lib/maille").join(TOKEN_FILE));
    files.into_iter().find_map(|f| {
        let t = std::fs::read_to_string(f).ok()?;
        let t = t.trim();
        (!t.is_empty()).then(|| t.to_owned())
    })
}

/// The file the server writes its admin token into, next to its state.
pub const TOKEN_FILE: &str = "maille-admin.token";

/// The file the server writes its CA's certificate into, beside its tokens.
pub const CA_FILE: &str = "maille-ca.pem";

/// The CA given with `--ca-cert`, if any (set once by `main`).
static GIVEN_CA: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Verifies the server with the CA certificate in `file` (from `--ca-cert`).
pub fn set_ca(file: std::path::PathBuf) {
    let _ = GIVEN_CA.set(file);
}

/// The certificates of a PEM text (none if it holds none).
pub fn pem_certificates(pem: &str) -> Vec<ureq::tls::Certificate<'static>> {
    ureq::tls::parse_pem(pem.as_bytes())
        .filter_map(|p| match p {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

/// The CA certificate the server's is verified with: `--ca-cert` (or `MAILLE_CA_CERT`),
/// else `maille-ca.pem` where the server writes it: beside `MAILLE_TOKEN_FILE`, in the
/// folder of `MAILLE_STATE`, the current folder or `/var/lib/maille`. None found: the
/// public roots (a server behind a certificate of a public CA).
pub fn find_ca() -> Option<Vec<ureq::tls::Certificate<'static>>> {
    let mut files = Vec::new();
    if let Some(f) = GIVEN_CA.get() {
        files.push(f.clone());
    }
    if let Ok(f) = std::env::var("MAILLE_CA_CERT") {
        files.push(std::path::PathBuf::from(f));
    }
    for var in ["MAILLE_TOKEN_FILE", "MAILLE_STATE"] {
        if let Ok(f) = std::env::var(var) {
            if let Some(dir) = std::path::Path::new(&f).parent() {
                files.push(dir.join(CA_FILE));
            }
        }
    }
    files.push(std::path::PathBuf::from(CA_FILE));
    files.push(std::path::Path::new("/var/lib/maille").join(CA_FILE));
    files.into_iter().find_map(|f| {
        // One that others may write is not trusted: whoever wrote it could stand in for the
        // server and collect the token.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f).ok()?.permissions().mode();
        if mode & 0o022 != 0 {
            eprintln!(
                "warning: {} is writable by others: not trusted as the server's CA",
                f.display()
            );
            return None;
        }
        let certs = pem_certificates(&std::fs::read_to_string(f).ok()?);
        (!certs.is_empty()).then_some(certs)
    })
}

/// An HTTP agent for the control server: its certificate verified with [`find_ca`].
pub fn agent(timeout: Duration) -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig};
    let roots = match find_ca() {
        Some(certs) => RootCerts::Specific(std::sync::Arc::new(certs)),
        None => RootCerts::WebPki,
    };
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build()
        .into()
}

/// Longest answer read from the server (a big mesh in one listing).
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

impl Client {
    /// The server at `base` (`https://127.0.0.1:18080`).
    pub fn new(base: &str) -> Client {
        Client::with_timeout(base, Duration::from_secs(30))
    }

    /// As [`Client::new`], each call bounded by `timeout` (a live view polls with short ones,
    /// so that a stalled server shows as such instead of freezing the view).
    pub fn with_timeout(base: &str, timeout: Duration) -> Client {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            agent: agent(timeout),
            authorization: find_token().map(|t| format!("Bearer {t}")),
        }
    }

    /// The server's address.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, source: ureq::Error) -> ApiError {
        let hint = if self.base.starts_with("http://") {
            " (the control server speaks HTTPS: use https://)"
        } else if matches!(source, ureq::Error::Tls(_) | ureq::Error::Rustls(_))
            // rustls's refusal reaches here as an I/O error.
            || source.to_string().contains("invalid peer certificate")
        {
            " (its certificate did not verify: give the CA with --ca-cert or MAILLE_CA_CERT, \
             the server's maille-ca.pem)"
        } else {
            ""
        };
        ApiError::Unreachable {
            base: self.base.clone(),
            hint,
            source,
        }
    }

    fn answer(
        &self,
        path: &str,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> Result<String, ApiError> {
        let status = resp.status();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            return Ok(body);
        }
        match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => Err(ApiError::Refused {
                status: status.as_u16(),
                body: e,
            }),
            Err(_) => Err(ApiError::Unexpected {
                url: format!("{}{path}", self.base),
                detail: format!("{status}: {body}"),
            }),
        }
    }

    fn parse<T: DeserializeOwned>(&self, path: &str, text: &str) -> Result<T, ApiError> {
        serde_json::from_str(text).map_err(|e| ApiError::Unexpected {
            url: format!("{}{path}", self.base),
            detail: format!("something unexpected ({e}): {text}"),
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let text = self.get_text(path)?;
        self.parse(path, &text)
    }

    fn get_text(&self, path: &str) -> Result<String, ApiError> {
        let mut req = self.agent.get(&format!("{}{path}", self.base));
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        let resp = req.call().map_err(|e| self.unreachable(e))?;
        self.answer(path, resp)
    }

    fn post_request(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let mut req = self
            .agent
            .post(&format!("{}{path}", self.base))
            .header(paths::CLIENT_HEADER, CLIENT);
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        req
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ApiError> {
        let resp = self
            .post_request(path)
            .send_json(body)
            .map_err(|e| self.unreachable(e))?;
        let text = self.answer(path, resp)?;
        self.parse(path, &text)
    }

    fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let resp = self
            .post_request(path)
            .send_empty()
            .map_err(|e| self.unreachable(e))?;
        let text = self.answer(path, resp)?;
        self.parse(path, &text)
    }

    /// Creates or replaces `resources`.
    pub fn apply(&self, resources: Vec<Resource>, dry_run: bool) -> Result<ApplyReport> {
        Ok(self.post(paths::APPLY, &ApplyRequest { resources, dry_run })?)
    }

    /// Deletes `keys`.
    pub fn delete(&self, keys: Vec<Key>, dry_run: bool) -> Result<ApplyReport> {
        Ok(self.post(paths::DELETE, &DeleteRequest { keys, dry_run })?)
    }

    /// The stored resources, optionally of one kind or mesh.
    pub fn resources(&self, kind: Option<Kind>, mesh: Option<&str>) -> Result<ResourcesAnswer> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(k) = kind {
            q.push(("kind", k.as_str().to_owned()));
        }
        if let Some(m) = mesh {
            q.push(("mesh", m.to_owned()));
        }
        Ok(self.get(&format!("{}?{}", paths::RESOURCES, query(&q)))?)
    }

    /// Connected Envoys.
    pub fn status(&self) -> Result<StatusAnswer> {
        Ok(self.get(paths::STATUS)?)
    }

    /// The breaker signals received.
    pub fn signals(&self) -> Result<SignalsAnswer> {
        Ok(self.get(paths::SIGNALS)?)
    }

    /// Every rollout's status.
    pub fn rollouts(&self) -> Result<RolloutsAnswer, ApiError> {
        self.get(paths::ROLLOUTS)
    }

    /// One rollout's status; [`ApiError::Refused`] with 404 when there is none of that name.
    pub fn rollout(&self, mesh: &str, name: &str) -> Result<RolloutStatus, ApiError> {
        self.get(&rollout_path(mesh, name))
    }

    /// Asks a rollout to promote, pause, resume or abort; its status after. A refusal (409:
    /// the rollout cannot do it now; 404: no such rollout) carries the server's reason.
    pub fn rollout_action(
        &self,
        mesh: &str,
        name: &str,
        action: RolloutAction,
    ) -> Result<RolloutStatus, ApiError> {
        self.post_empty(&format!(
            "{}/{}",
            rollout_path(mesh, name),
            action_segment(action)
        ))
    }

    /// The stored Rollout resources (their specs), of one mesh or all.
    pub fn rollout_specs(
        &self,
        mesh: Option<&str>,
    ) -> Result<Vec<maille_model::Rollout>, ApiError> {
        let mut q = vec![("kind", Kind::Rollout.as_str().to_owned())];
        if let Some(m) = mesh {
            q.push(("mesh", m.to_owned()));
        }
        let a: ResourcesAnswer = self.get(&format!("{}?{}", paths::RESOURCES, query(&q)))?;
        Ok(a.resources
            .into_iter()
            .filter_map(|r| match r {
                Resource::Rollout(r) => Some(r),
                _ => None,
            })
            .collect())
    }

    /// A node's token (admin only).
    pub fn node_token(&self, node: &str) -> Result<maille_api::NodeTokenAnswer> {
        Ok(self.get(&format!(
            "{}?{}",
            paths::NODE_TOKEN,
            query(&[("node", node.to_owned())])
        ))?)
    }

    /// An Envoy bootstrap.
    pub fn bootstrap(&self, q: &BootstrapQuery) -> Result<String> {
        let v = serde_json::to_value(q)?;
        let pairs: Vec<(&str, String)> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect();
        Ok(self.get_text(&format!("{}?{}", paths::BOOTSTRAP, query(&pairs)))?)
    }

    /// Waits until every connected Envoy has acknowledged `version`; the line to print, or
    /// an error naming the Envoys behind and what they refused.
    pub fn wait_synced(&self, version: u64, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let s = self.status()?;
            let behind: Vec<_> = s
                .clients
                .iter()
                .filter(|c| c.synced_version < version)
                .collect();
            if behind.is_empty() {
                let worst = s
                    .clients
                    .iter()
                    .filter_map(|c| c.sync_millis)
                    .fold(0.0_f64, f64::max);
                return Ok(format!(
                    "{} Envoy(s) acknowledged version {version}; apply to last ACK: {worst:.0} ms",
                    s.clients.len()
                ));
            }
            if start.elapsed() > timeout {
                let mut msg = format!(
                    "{} Envoy(s) have not acknowledged version {version}:",
                    behind.len()
                );
                for c in behind {
                    msg.push_str(&format!("\n  {}", c.node));
                    for (t, st) in &c.types {
                        if let Some(n) = &st.last_nack {
                            msg.push_str(&format!(
                                "\n    {t} refused {}: {}",
                                n.version, n.message
                            ));
                        }
                    }
                }
                anyhow::bail!("{msg}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `/v1/rollouts/{mesh}/{name}`, each name one path segment whatever it holds.
fn rollout_path(mesh: &str, name: &str) -> String {
    format!("{}/{}/{}", paths::ROLLOUTS, segment(mesh), segment(name))
}

/// The path segment of an action, as the server parses it ([`RolloutAction::parse`]).
pub fn action_segment(a: RolloutAction) -> &'static str {
    match a {
        RolloutAction::Promote => "promote",
        RolloutAction::Pause => "pause",
        RolloutAction::Resume => "resume",
        RolloutAction::Abort => "abort",
    }
}

/// `k=v&...`, each value percent-encoded.
fn query(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(s: &str) -> String {
    encode_keeping(s, b"-._~/")
}

/// One path segment: a `/` in a name stays in the name.
fn segment(s: &str) -> String {
    encode_keeping(s, b"-._~")
}

fn encode_keeping(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            query(&[("node", "mesh/a b/virtualNode/x\nadmin:".into())]),
            "node=mesh/a%20b/virtualNode/x%0Aadmin%3A"
        );
    }

    #[test]
    fn rollout_names_are_one_segment_each() {
        assert_eq!(rollout_path("m", "a/b c"), "/v1/rollouts/m/a%2Fb%20c");
        for a in [
            RolloutAction::Promote,
            RolloutAction::Pause,
            RolloutAction::Resume,
            RolloutAction::Abort,
        ] {
            assert_eq!(RolloutAction::parse(action_segment(a)), Some(a));
        }
    }
}
