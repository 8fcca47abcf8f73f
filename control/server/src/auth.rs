//! Who may reach the control server.
//!
//! **Proxies** prove their node id with a token: `maille-node.v1.` and the hex HMAC-SHA256
//! of the node id under a key kept in the store (made on first start). `maillectl bootstrap`
//! writes it into the Envoy bootstrap, which sends it as `authorization: Bearer <token>` on
//! its ADS stream and stats export. The token is bound to one node id: a stream is served
//! only the resources of the node its token names, and only its ACKs and NACKs count for
//! that node. ADS runs over TLS (the server's certificate from Maille's CA, checked by the
//! trust bundle in the bootstrap), so the token does not cross the network in clear there.
//! Breaker signals go to the HTTP port (plaintext for now) with a separate *signal* token,
//! which cannot open a stream.
//!
//! Why a token and not a certificate in the bootstrap: the proxy's certificate comes over
//! its ADS stream (SDS) and rotates every few hours; Envoy cannot present it on the stream
//! that delivers it without an agent rewriting files. A per-node token from the bootstrap is
//! what the proxy has before anything else, and it names exactly one node. Changing the key
//! in the store revokes every token at once.

use crate::store::{Store, StoreError};
use ring::hmac;

/// The store's name of the node token key.
const STORED: &str = "node-token-key";

/// What a node token starts with.
pub const NODE_TOKEN_PREFIX: &str = "maille-node.v1.";

/// What a signal token starts with: the token a proxy's breaker signals with, over the
/// control server's HTTP port. Made with the same key for another purpose, it cannot open an
/// ADS stream.
pub const SIGNAL_TOKEN_PREFIX: &str = "maille-signal.v1.";

/// Makes and checks node tokens.
pub struct NodeTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for NodeTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTokens")
    }
}

/// What the HMAC covers: the node id as it is for a node token, `signal:` and the node id for
/// a signal token.
fn purpose(prefix: &str, id: &[u8]) -> Vec<u8> {
    if prefix == SIGNAL_TOKEN_PREFIX {
        [b"signal:".as_slice(), id].concat()
    } else {
        id.to_vec()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl NodeTokens {
    /// The key kept in `store`, made on first use: every server on the store agrees.
    pub fn load_or_create(store: &dyn Store) -> Result<NodeTokens, StoreError> {
        let fresh: [u8; 32] = rand::random();
        let kept = store.create_secret(STORED, &fresh)?;
        Ok(NodeTokens {
            key: hmac::Key::new(hmac::HMAC_SHA256, &kept),
        })
    }

    /// The token of `node_id`: `maille-node.v1.<hex node id>.<hex HMAC>`.
    pub fn token(&self, node_id: &str) -> String {
        self.make(NODE_TOKEN_PREFIX, node_id)
    }

    /// The signal token of `node_id`: `maille-signal.v1.<hex node id>.<hex HMAC>`, the HMAC
    /// over `signal:` and the node id.
    pub fn signal_token(&self, node_id: &str) -> String {
        self.make(SIGNAL_TOKEN_PREFIX, node_id)
    }

    fn make(&self, prefix: &str, node_id: &str) -> String {
        format!(
            "{prefix}{}.{}",
            hex(node_id.as_bytes()),
            hex(hmac::sign(&self.key, &purpose(prefix, node_id.as_bytes())).as_ref())
        )
    }

    fn check(&self, prefix: &str, token: &str) -> Option<String> {
        let (id, mac) = token.strip_prefix(prefix)?.split_once('.')?;
        let (id, mac) = (unhex(id)?, unhex(mac)?);
        hmac::verify(&self.key, &purpose(prefix, &id), &mac).ok()?;
        String::from_utf8(id).ok()
    }

    /// The node id `token` names, if it is a genuine node token (its HMAC compared in
    /// constant time).
    pub fn node_of(&self, token: &str) -> Option<String> {
        self.check(NODE_TOKEN_PREFIX, token)
    }

    /// The node id a genuine signal token names.
    pub fn signal_node_of(&self, token: &str) -> Option<String> {
        self.check(SIGNAL_TOKEN_PREFIX, token)
    }

    /// Whether `token` is `node_id`'s.
    pub fn verify(&self, node_id: &str, token: &str) -> bool {
        self.node_of(token).as_deref() == Some(node_id)
    }
}

/// The bearer token of a gRPC request's `authorization` metadata, if any.
pub fn bearer(meta: &tonic::metadata::MetadataMap) -> Option<&str> {
    meta.get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn a_token_names_one_node_of_one_store() {
        let store = MemoryStore::default();
        let t = NodeTokens::load_or_create(&store).unwrap();
        let again = NodeTokens::load_or_create(&store).unwrap();
        let other = NodeTokens::load_or_create(&MemoryStore::default()).unwrap();
        let id = "mesh/m/virtualNode/white";
        let tok = t.token(id);
        assert!(tok.starts_with(NODE_TOKEN_PREFIX));
        assert!(t.verify(id, &tok));
        assert!(again.verify(id, &tok), "the same store's key");
        assert!(!other.verify(id, &tok), "another store's key");
        assert!(!t.verify("mesh/m/virtualNode/black", &tok));
        assert!(!t.verify(id, ""));
        assert!(!t.verify(id, &tok[..tok.len() - 2]));
        assert!(!t.verify(id, &tok.replace(NODE_TOKEN_PREFIX, "")));
        assert!(!t.verify(id, &format!("{tok}00")));
        assert!(!t.verify(id, "maille-node.v1.zz"));
        assert_eq!(t.node_of(&tok).as_deref(), Some(id));
        // Another node's id with this node's HMAC.
        let forged = format!(
            "{NODE_TOKEN_PREFIX}{}.{}",
            hex(b"mesh/m/virtualNode/black"),
            tok.rsplit('.').next().unwrap()
        );
        assert_eq!(t.node_of(&forged), None);
        // A signal token signals, and opens no stream; a node token does not signal.
        let sig = t.signal_token(id);
        assert_eq!(t.signal_node_of(&sig).as_deref(), Some(id));
        assert_eq!(t.node_of(&sig), None);
        assert_eq!(
            t.node_of(&sig.replace(SIGNAL_TOKEN_PREFIX, NODE_TOKEN_PREFIX)),
            None
        );
        assert_eq!(t.signal_node_of(&tok), None);
    }
}

/// What a caller of the admin API may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Fetch proxies' bootstraps, nothing else: what a deployment's start-up step holds (a
    /// Kubernetes Secret, an ECS secret, a file on an instance).
    Bootstrap,
    /// Read the mesh, status, rollouts and signals.
    Read,
    /// Everything: apply, delete, rollout actions, bootstraps.
    Admin,
}

impl Scope {
    /// Whether a token of this scope may do what `need` asks.
    pub fn allows(self, need: Scope) -> bool {
        matches!(
            (self, need),
            (Scope::Admin, _) | (Scope::Read, Scope::Read) | (Scope::Bootstrap, Scope::Bootstrap)
        )
    }
}

/// File (in the token folder, next to the state) holding the admin token.
pub const ADMIN_TOKEN_FILE: &str = "maille-admin.token";
/// File holding the read-only token.
pub const READ_TOKEN_FILE: &str = "maille-read.token";
/// File holding the bootstrap token.
pub const BOOTSTRAP_TOKEN_FILE: &str = "maille-bootstrap.token";

/// The admin API's two bearer tokens, kept in the store (made on first start).
pub struct AdminTokens {
    admin: String,
    read: String,
    bootstrap: String,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminTokens")
    }
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminTokens {
    /// The tokens kept in `store`, made on first use.
    pub fn load_or_create(store: &dyn Store) -> Result<AdminTokens, StoreError> {
        let make = |prefix: &str| -> Result<String, StoreError> {
            let fresh = format!("{prefix}{}", hex(&rand::random::<[u8; 32]>()));
            let kept = store.create_secret(&format!("token/{prefix}"), fresh.as_bytes())?;
            String::from_utf8(kept)
                .map_err(|_| StoreError(format!("stored {prefix} token unreadable")))
        };
        Ok(AdminTokens {
            admin: make("maille-admin.")?,
            read: make("maille-read.")?,
            bootstrap: make("maille-bootstrap.")?,
        })
    }

    /// The scope `token` grants, if any (compared in constant time).
    pub fn scope_of(&self, token: &str) -> Option<Scope> {
        if constant_time_eq(token.as_bytes(), self.admin.as_bytes()) {
            Some(Scope::Admin)
        } else if constant_time_eq(token.as_bytes(), self.read.as_bytes()) {
            Some(Scope::Read)
        } else if constant_time_eq(token.as_bytes(), self.bootstrap.as_bytes()) {
            Some(Scope::Bootstrap)
        } else {
            None
        }
    }

    /// The admin token (the secret of the App Mesh API's SigV4 too).
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// The read-only token.
    pub fn read(&self) -> &str {
        &self.read
    }

    /// Writes the tokens into `dir` ([`ADMIN_TOKEN_FILE`], [`READ_TOKEN_FILE`],
    /// [`BOOTSTRAP_TOKEN_FILE`]), readable by their owner only, for `maillectl` on this
    /// machine and for deployments.
    pub fn write_files(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (file, token) in [
            (ADMIN_TOKEN_FILE, &self.admin),
            (READ_TOKEN_FILE, &self.read),
            (BOOTSTRAP_TOKEN_FILE, &self.bootstrap),
        ] {
            let path = dir.join(file);
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                o.mode(0o600);
            }
            use std::io::Write;
            let mut f = o.open(&path)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            f.write_all(token.as_bytes())?;
            f.write_all(b"\n")?;
        }
        Ok(())
    }
}
