//! A typed client of the control server's admin API (the types of `maille-api`).

use anyhow::{bail, Context, Result};
use maille_api::{
    paths, ApplyReport, ApplyRequest, BootstrapQuery, DeleteRequest, ErrorBody, ResourcesAnswer,
    SignalsAnswer, StatusAnswer,
};
use maille_model::{Key, Kind, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The admin API of one control server.
#[derive(Debug)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// The server at `base` (`http://127.0.0.1:18080`).
    pub fn new(base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into(),
        }
    }

    fn reach(&self) -> String {
        format!("cannot reach the control server at {}", self.base)
    }

    fn answer(&self, path: &str, mut resp: ureq::http::Response<ureq::Body>) -> Result<String> {
        let status = resp.status();
        let body = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer of {}{path}", self.base))?;
        if status.is_success() {
            return Ok(body);
        }
        match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => bail!("{e}"),
            Err(_) => bail!("{}{path} answered {status}: {body}", self.base),
        }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let text = self.get_text(path)?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}{path} answered something unexpected: {text}", self.base))
    }

    fn get_text(&self, path: &str) -> Result<String> {
        let resp = self
            .agent
            .get(&format!("{}{path}", self.base))
            .call()
            .with_context(|| self.reach())?;
        self.answer(path, resp)
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self
            .agent
            .post(&format!("{}{path}", self.base))
            .send_json(body)
            .with_context(|| self.reach())?;
        let text = self.answer(path, resp)?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}{path} answered something unexpected: {text}", self.base))
    }

    /// Creates or replaces `resources`.
    pub fn apply(&self, resources: Vec<Resource>, dry_run: bool) -> Result<ApplyReport> {
        self.post(paths::APPLY, &ApplyRequest { resources, dry_run })
    }

    /// Deletes `keys`.
    pub fn delete(&self, keys: Vec<Key>, dry_run: bool) -> Result<ApplyReport> {
        self.post(paths::DELETE, &DeleteRequest { keys, dry_run })
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
        self.get(&format!("{}?{}", paths::RESOURCES, query(&q)))
    }

    /// Connected Envoys.
    pub fn status(&self) -> Result<StatusAnswer> {
        self.get(paths::STATUS)
    }

    /// The breaker signals received.
    pub fn signals(&self) -> Result<SignalsAnswer> {
        self.get(paths::SIGNALS)
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
        self.get_text(&format!("{}?{}", paths::BOOTSTRAP, query(&pairs)))
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
                bail!("{msg}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
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
}
