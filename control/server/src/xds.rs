//! The ADS server (state of the world, xDS v3 over gRPC): one stream per Envoy, resources
//! from [`Control::node_resources`], ACK/NACK tracked per type.
//!
//! A type is sent when Envoy first asks for it, when the names it asks for change, and when
//! a new snapshot changes its content for that node. A NACK is recorded (with Envoy's
//! message) and the refused content is not sent to that node again; a new stream from the
//! same node gets the last content it accepted instead, so a refused version never replaces
//! the last good one.

use crate::auth::{bearer, NodeTokens};
use crate::ca::Ca;
use crate::clients::{now_secs, Clients};
use crate::mesh::{types, Content, Mesh, Snapshot};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use maille_api::Nack;
use maille_translate::{names, NodeOptions};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// The tonic service.
#[derive(Debug, Clone)]
pub struct Ads {
    mesh: Arc<Mesh>,
    clients: Arc<Clients>,
    ca: Arc<Ca>,
    tokens: Arc<NodeTokens>,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// How soon a stream's first request must name its node.
const FIRST_REQUEST_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest request an Envoy may send (a discovery request is small; a NACK carries a message).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

impl Ads {
    /// A service over `mesh`, recording each stream in `clients`; its streams end when
    /// `stop` turns true.
    pub fn new(
        mesh: Arc<Mesh>,
        clients: Arc<Clients>,
        ca: Arc<Ca>,
        tokens: Arc<NodeTokens>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> AggregatedDiscoveryServiceServer<Ads> {
        AggregatedDiscoveryServiceServer::new(Ads {
            mesh,
            clients,
            ca,
            tokens,
            stop,
        })
        .max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

#[derive(Debug, Default)]
struct TypeState {
    names: Vec<String>,
    sent: Content,
    sent_version: String,
    nonce: String,
    acked_hash: Option<u64>,
}

struct Stream_ {
    mesh: Arc<Mesh>,
    clients: Arc<Clients>,
    client: u64,
    node: Option<(String, String, String, NodeOptions)>,
    types: HashMap<&'static str, TypeState>,
    nonce: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    /// Snapshot version being delivered, and whether every type has been acknowledged.
    target_version: u64,
    /// The extension configs Envoy refused only because it is still fetching a dynamic
    /// module they name (`nack_on_cache_miss`): sent again, marked, until it takes them.
    fetching: Option<Fetching>,
    ca: Arc<Ca>,
    /// The proxy's certificate and the trust bundle as SDS secrets, once Envoy asked.
    identity: Option<Identity>,
    tokens: Arc<NodeTokens>,
    /// The stream's bearer token: the node id of its first request must be the one it names.
    token: String,
}

/// A proxy's secrets, and when they are replaced.
struct Identity {
    secrets: Content,
    renew_at: tokio::time::Instant,
}

/// The SDS secrets of `spiffe_id`'s new certificate and of the trust bundle.
fn identity(ca: &Ca, mesh: &str, proxy: &str) -> Result<Identity, Status> {
    use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    let issued = ca.issue_proxy(mesh, proxy).map_err(|e| {
        tracing::error!(error = %e, "issuing a certificate");
        Status::internal("the certificate authority could not issue a certificate")
    })?;
    let inline = |s: String| DataSource {
        specifier: Some(Specifier::InlineString(s)),
        ..Default::default()
    };
    let cert = tls::Secret {
        name: names::IDENTITY_SECRET.into(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: Some(inline(issued.certificate_chain)),
            private_key: Some(inline(issued.private_key)),
            ..Default::default()
        })),
    };
    let trust = tls::Secret {
        name: names::TRUST_SECRET.into(),
        r#type: Some(tls::secret::Type::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: Some(inline(ca.trust_bundle().to_owned())),
                ..Default::default()
            },
        )),
    };
    let any = |s: &tls::Secret| envoy_types::pb::google::protobuf::Any {
        type_url: types::SECRET.into(),
        value: prost::Message::encode_to_vec(s),
    };
    Ok(Identity {
        secrets: Content::new(vec![
            (names::IDENTITY_SECRET.to_owned(), any(&cert)),
            (names::TRUST_SECRET.to_owned(), any(&trust)),
        ]),
        // Replaced at half its lifetime.
        renew_at: tokio::time::Instant::now() + ca.lifetime() / 2,
    })
}

/// A module fetch Envoy is waiting on, for this stream's extension configs.
struct Fetching {
    /// The modules (sha256) Envoy said it does not have yet; empty: it did not say which.
    shas: std::collections::HashSet<String>,
    /// Refusals so far.
    tries: u32,
    /// When to send again; `None` once sent, until Envoy answers.
    due: Option<tokio::time::Instant>,
}

/// What Envoy 1.40 says when it refuses an extension config only while it fetches a dynamic
/// module: "Remote module not cached; background fetch in progress. SHA256: <hex>".
const FETCHING: &str = "Remote module not cached; background fetch in progress";

/// Refusals while fetching after which the config counts as refused (a module Envoy can
/// never fetch: its server down, a wrong sha256): about 4 minutes of tries.
const MAX_FETCH_TRIES: u32 = 12;

/// The wait before resending a config Envoy refused while fetching: 250 ms, doubling, at
/// most 30 s.
fn resend_after(tries: u32) -> std::time::Duration {
    std::time::Duration::from_millis(250u64.saturating_mul(1 << tries.min(7)).min(30_000))
}

/// The sha256 a "not cached" refusal names, if it names one.
fn fetching_sha(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("SHA256: ")?;
    let hex: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .take(64)
        .collect();
    (hex.len() == 64).then_some(hex)
}

impl Stream_ {
    fn node_id(&self) -> &str {
        self.node.as_ref().map(|n| n.0.as_str()).unwrap_or("")
    }

    /// The content of `type_url` for this node at `snap`, filtered by the requested names
    /// for the types Envoy asks by name.
    fn content(&self, snap: &Snapshot, type_url: &'static str, names_: &[String]) -> Content {
        let Some((_, mesh, vn, opts)) = &self.node else {
            return Content::new(Vec::new());
        };
        if type_url == types::SECRET {
            return self
                .identity
                .as_ref()
                .map(|i| i.secrets.only(names_))
                .unwrap_or_default();
        }
        let res = self.mesh.node_resources(snap, mesh, vn, opts);
        let all = res.by_type.get(type_url).cloned().unwrap_or_default();
        if matches!(type_url, types::ROUTE | types::ENDPOINT | types::EXTENSION) {
            all.only(names_)
        } else {
            all
        }
    }

    async fn send(
        &mut self,
        snap: &Snapshot,
        type_url: &'static str,
        force: bool,
    ) -> Result<(), ()> {
        let names_ = self
            .types
            .get(type_url)
            .map(|t| t.names.clone())
            .unwrap_or_default();
        let mut content = self.content(snap, type_url, &names_);
        let node = self.node_id().to_owned();
        let st = self.types.entry(type_url).or_default();
        if st.sent.hash == 0 {
            // A new stream: if this node refused this content before, give it what it last
            // accepted instead.
            if let Some(good) = self
                .clients
                .instead_of_refused(&node, type_url, content.hash)
            {
                content = good;
            }
        } else if self.clients.is_refused(&node, type_url, content.hash) && !force {
            return Ok(());
        }
        if !force && st.sent.hash == content.hash {
            return Ok(());
        }
        self.nonce += 1;
        let version = format!("{}-{:012x}", snap.version, content.hash & 0xffff_ffff_ffff);
        let nonce = self.nonce.to_string();
        st.sent = content.clone();
        st.sent_version = version.clone();
        st.nonce = nonce.clone();
        // While Envoy fetches a module, the configs naming it go out marked, so that Envoy
        // takes them once it has the module. What is recorded as sent (and then refused or
        // accepted) is the config itself, unmarked.
        let wire = match (&self.fetching, type_url) {
            (Some(f), types::EXTENSION) => refetch_marked(&content, &f.shas),
            _ => content,
        };
        let resp = DiscoveryResponse {
            version_info: version.clone(),
            resources: wire.items.iter().map(|(_, a)| a.clone()).collect(),
            type_url: type_url.to_owned(),
            nonce,
            ..Default::default()
        };
        let short = types::short(type_url).to_owned();
        self.clients.update(self.client, |c| {
            c.types.entry(short).or_default().sent = version;
        });
        self.tx.send(Ok(resp)).await.map_err(|_| ())
    }

    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), Status> {
        if self.node.is_none() {
            let node = req.node.as_ref().ok_or_else(|| {
                Status::invalid_argument("the first request of a stream must carry the node")
            })?;
            if !self.tokens.verify(&node.id, &self.token) {
                tracing::warn!(node = %node.id, "ADS stream refused: its token is not this node's");
                return Err(Status::permission_denied(format!(
                    "the stream's token is not node {:?}'s (each node's bootstrap from `maillectl bootstrap` has its own)",
                    bounded_id(&node.id)
                )));
            }
            let (mesh, vn) = names::parse_node_id(&node.id).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "node id {:?} must be mesh/<mesh>/virtualNode/<name> or mesh/<mesh>/virtualGateway/<name> (see `maillectl bootstrap`)",
                    node.id
                ))
            })?;
            let opts = NodeOptions::from_metadata(node.metadata.as_ref());
            let warnings = self
                .mesh
                .node_resources(&self.mesh.current(), mesh, vn, &opts)
                .warnings
                .clone();
            self.node = Some((node.id.clone(), mesh.to_owned(), vn.to_owned(), opts));
            let id = node.id.clone();
            self.clients.update(self.client, |c| {
                c.node = id;
                c.warnings = warnings;
            });
            tracing::info!(node = %node.id, "Envoy connected");
        }
        let Some(type_url) = types::known(&req.type_url) else {
            tracing::debug!(type_url = %req.type_url, "unknown type requested; ignored");
            return Ok(());
        };
        if type_url == types::SECRET && self.identity.is_none() {
            if let Some((_, mesh, proxy, _)) = &self.node {
                self.identity = Some(identity(&self.ca, mesh, proxy)?);
            }
        }
        let snap = self.mesh.current();
        self.target_version = self.target_version.max(snap.version);
        let node = self.node_id().to_owned();
        let st = self.types.entry(type_url).or_default();
        if !req.response_nonce.is_empty() && req.response_nonce != st.nonce {
            // A reply to an older response; the newer one is in flight, and Envoy's reply
            // to it carries the names it wants now (taking them from this one would leave
            // the response in flight short of them, with nothing sent after).
            return Ok(());
        }
        let names_changed = st.names != req.resource_names;
        st.names = req.resource_names.clone();
        let short = types::short(type_url).to_owned();
        if !req.response_nonce.is_empty() {
            if let Some(err) = &req.error_detail {
                let tries = self.fetching.as_ref().map_or(0, |f| f.tries) + 1;
                if type_url == types::EXTENSION
                    && err.message.contains(FETCHING)
                    && tries <= MAX_FETCH_TRIES
                {
                    // Not a refusal of the content: Envoy fetches the module in the
                    // background and takes the config once it has it.
                    tracing::info!(node = %node, type_url = %short, tries, "Envoy is fetching a module; the config follows");
                    let f = self.fetching.get_or_insert_with(|| Fetching {
                        shas: Default::default(),
                        tries: 0,
                        due: None,
                    });
                    f.tries = tries;
                    f.shas.extend(fetching_sha(&err.message));
                    f.due = Some(tokio::time::Instant::now() + resend_after(tries - 1));
                } else {
                    if type_url == types::EXTENSION {
                        self.fetching = None;
                    }
                    tracing::warn!(node = %node, type_url = %short, version = %st.sent_version, error = %err.message, "Envoy refused (NACK)");
                    self.clients.refused(&node, type_url, st.sent.hash);
                }
                let nack = Nack {
                    version: st.sent_version.clone(),
                    message: bounded(&err.message),
                    at: now_secs(),
                };
                self.clients.update(self.client, |c| {
                    c.types.entry(short).or_default().last_nack = Some(nack);
                });
            } else {
                if type_url == types::EXTENSION {
                    self.fetching = None;
                }
                st.acked_hash = Some(st.sent.hash);
                self.clients.accepted(&node, type_url, st.sent.clone());
                let v = req.version_info.clone();
                self.clients.update(self.client, |c| {
                    let t = c.types.entry(short).or_default();
                    t.acked = Some(v);
                    t.last_nack = None;
                });
                self.check_synced();
            }
            if !names_changed {
                return Ok(());
            }
        }
        self.send(&snap, type_url, true)
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
        Ok(())
    }

    /// A new certificate for the proxy, sent at once.
    async fn renew_identity(&mut self) -> Result<(), ()> {
        let Some((_, mesh, proxy, _)) = &self.node else {
            return Ok(());
        };
        match identity(&self.ca, mesh, proxy) {
            Ok(i) => self.identity = Some(i),
            Err(_) => {
                // Tried again in a minute; the certificate in use is still valid.
                if let Some(i) = self.identity.as_mut() {
                    i.renew_at = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
                }
                return Ok(());
            }
        }
        let snap = self.mesh.current();
        self.send(&snap, types::SECRET, false).await
    }

    async fn on_snapshot(&mut self) -> Result<(), ()> {
        let snap = self.mesh.current();
        self.target_version = snap.version;
        let types_: Vec<&'static str> = self.types.keys().copied().collect();
        // Clusters before endpoints and listeners before routes, as Envoy applies them.
        for t in types::ALL {
            if types_.contains(&t) {
                self.send(&snap, t, false).await?;
            }
        }
        self.check_synced();
        Ok(())
    }

    fn check_synced(&mut self) {
        let all_acked = self
            .types
            .values()
            .all(|t| t.acked_hash == Some(t.sent.hash));
        if !all_acked || self.node.is_none() || self.types.is_empty() {
            return;
        }
        let v = self.target_version;
        let took = self
            .mesh
            .made_at(v)
            .map(|t| t.elapsed().as_secs_f64() * 1000.0);
        self.clients.update(self.client, |c| {
            if c.synced_version < v || c.sync_millis.is_none() {
                c.synced_version = v;
                c.sync_millis = took;
            }
        });
    }
}

/// A node id as quoted in an error: at most 300 characters.
fn bounded_id(id: &str) -> &str {
    match id.char_indices().nth(300) {
        Some((cut, _)) => &id[..cut],
        None => id,
    }
}

/// Longest NACK message kept (Envoy's can quote a whole resource).
const MAX_NACK_MESSAGE: usize = 4096;

fn bounded(message: &str) -> String {
    match message.char_indices().nth(MAX_NACK_MESSAGE) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_owned(),
    }
}

/// `content` with the URL of each remote dynamic module in `shas` (every one, when `shas`
/// is empty) marked with the time (`&attempt=<ms>`). Envoy 1.40 keeps the hash of an
/// extension config it refused and takes no notice of the same config sent again, even
/// once the module it waited for is cached: the config sent after a "not cached" refusal
/// must differ. The URL is the part that may: Envoy finds the module by its sha256, and the
/// server ignores the query's other fields.
fn refetch_marked(content: &Content, shas: &std::collections::HashSet<String>) -> Content {
    let attempt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    use envoy_types::pb::envoy::config::core::v3::{async_data_source, TypedExtensionConfig};
    use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3::DynamicModuleFilter;
    use prost::{Message, Name};
    let items = content
        .items
        .iter()
        .map(|(name, any)| {
            let marked = (|| {
                let mut ext = TypedExtensionConfig::decode(any.value.as_slice()).ok()?;
                let inner = ext.typed_config.as_mut()?;
                if inner.type_url != DynamicModuleFilter::type_url() {
                    return None;
                }
                let mut f = DynamicModuleFilter::decode(inner.value.as_slice()).ok()?;
                let module = f.dynamic_module_config.as_mut()?.module.as_mut()?;
                let Some(async_data_source::Specifier::Remote(r)) = module.specifier.as_mut()
                else {
                    return None;
                };
                if !shas.is_empty() && !shas.contains(&r.sha256) {
                    return None;
                }
                let uri = &mut r.http_uri.as_mut()?.uri;
                let base = uri.split("&attempt=").next().unwrap_or_default().to_owned();
                *uri = format!("{base}&attempt={attempt}");
                inner.value = f.encode_to_vec();
                Some(envoy_types::pb::google::protobuf::Any {
                    type_url: any.type_url.clone(),
                    value: ext.encode_to_vec(),
                })
            })();
            (name.clone(), marked.unwrap_or_else(|| any.clone()))
        })
        .collect();
    Content::new(items)
}

/// Resolves when the proxy's certificate is due to be replaced; never, before it has one.
async fn renew_due(identity: &Option<Identity>) {
    match identity {
        Some(i) => tokio::time::sleep_until(i.renew_at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the extension configs are due to be sent again; never, when they are not.
async fn resend_due(fetching: &Option<Fetching>) {
    match fetching.as_ref().and_then(|f| f.due) {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        // A genuine node token before anything else; which node it names is checked against
        // the first request's.
        let Some(token) = bearer(request.metadata())
            .filter(|t| self.tokens.node_of(t).is_some())
            .map(str::to_owned)
        else {
            tracing::warn!(peer = ?request.remote_addr(), "ADS stream refused: no valid node token");
            return Err(Status::unauthenticated(
                "no valid node token: Envoy's bootstrap (from `maillectl bootstrap`) sends it as authorization: Bearer <token>",
            ));
        };
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let clients = self.clients.clone();
        let client = clients.connected(peer);
        let mut snapshots = self.mesh.subscribe();
        let target_version = snapshots.borrow_and_update().version;
        let mut s = Stream_ {
            mesh: self.mesh.clone(),
            clients: clients.clone(),
            client,
            node: None,
            types: HashMap::new(),
            nonce: 0,
            tx,
            target_version,
            fetching: None,
            ca: self.ca.clone(),
            identity: None,
            tokens: self.tokens.clone(),
            token,
        };
        let mut stop = self.stop.clone();
        // A stream that names no node soon is dropped: it holds a task and a status entry.
        let first_by = tokio::time::Instant::now() + FIRST_REQUEST_WITHIN;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped(&mut stop) => break,
                    () = tokio::time::sleep_until(first_by), if s.node.is_none() => {
                        let _ = s.tx.send(Err(Status::deadline_exceeded(
                            "no first request naming the node within 30 s",
                        ))).await;
                        break;
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => {
                            if let Err(status) = s.on_request(req).await {
                                let _ = s.tx.send(Err(status)).await;
                                break;
                            }
                        }
                        Ok(None) | Err(_) => break,
                    },
                    changed = snapshots.changed() => {
                        if changed.is_err() || s.on_snapshot().await.is_err() {
                            break;
                        }
                    }
                    () = renew_due(&s.identity) => {
                        if s.renew_identity().await.is_err() {
                            break;
                        }
                    }
                    () = resend_due(&s.fetching) => {
                        // Due again only if Envoy refuses again.
                        if let Some(f) = s.fetching.as_mut() {
                            f.due = None;
                        }
                        let snap = s.mesh.current();
                        if s.send(&snap, types::EXTENSION, true).await.is_err() {
                            break;
                        }
                    }
                }
            }
            if let Some((node, ..)) = &s.node {
                tracing::info!(node = %node, "Envoy disconnected");
            }
            clients.gone(client);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "Maille serves state-of-the-world ADS; set api_type: GRPC (not DELTA_GRPC)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::extensions::dynamic_modules::v3::DynamicModuleConfig;
    use envoy_types::pb::envoy::extensions::filters::http::dynamic_modules::v3::DynamicModuleFilter;
    use envoy_types::pb::google::protobuf::Any;
    use prost::{Message, Name};

    fn native(name: &str, sha: &str) -> (String, Any) {
        let f = DynamicModuleFilter {
            dynamic_module_config: Some(DynamicModuleConfig {
                module: Some(core::AsyncDataSource {
                    specifier: Some(core::async_data_source::Specifier::Remote(
                        core::RemoteDataSource {
                            http_uri: Some(core::HttpUri {
                                uri: format!("http://c/v1/modules/x.so?sha256={sha}"),
                                ..Default::default()
                            }),
                            sha256: sha.into(),
                            ..Default::default()
                        },
                    )),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ext = core::TypedExtensionConfig {
            name: name.into(),
            typed_config: Some(Any {
                type_url: DynamicModuleFilter::type_url(),
                value: f.encode_to_vec(),
            }),
        };
        (
            name.into(),
            Any {
                type_url: core::TypedExtensionConfig::type_url(),
                value: ext.encode_to_vec(),
            },
        )
    }

    fn uri(item: &(String, Any)) -> String {
        let ext = core::TypedExtensionConfig::decode(item.1.value.as_slice()).unwrap();
        let f = DynamicModuleFilter::decode(ext.typed_config.unwrap().value.as_slice()).unwrap();
        match f
            .dynamic_module_config
            .unwrap()
            .module
            .unwrap()
            .specifier
            .unwrap()
        {
            core::async_data_source::Specifier::Remote(r) => r.http_uri.unwrap().uri,
            _ => panic!("not remote"),
        }
    }

    #[test]
    fn only_the_configs_of_the_modules_being_fetched_are_marked() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let content = Content::new(vec![native("one", &a), native("two", &b)]);
        let msg = format!("Remote module not cached; background fetch in progress. SHA256: {a}");
        assert!(msg.contains(FETCHING));
        let shas: std::collections::HashSet<String> = fetching_sha(&msg).into_iter().collect();
        assert_eq!(shas.len(), 1);
        let marked = refetch_marked(&content, &shas);
        assert!(
            uri(&marked.items[0]).contains("&attempt="),
            "{}",
            uri(&marked.items[0])
        );
        assert_eq!(uri(&marked.items[1]), uri(&content.items[1]));
        assert_ne!(marked.hash, content.hash);
        // Marked again: the URL carries one mark, not two.
        let again = refetch_marked(&marked, &shas);
        assert_eq!(uri(&again.items[0]).matches("&attempt=").count(), 1);
        // A refusal that names no module marks every module.
        let all = refetch_marked(&content, &Default::default());
        assert!(all.items.iter().all(|i| uri(i).contains("&attempt=")));
        assert_eq!(fetching_sha("no sha here"), None);
        assert_eq!(fetching_sha("SHA256: abc"), None);
    }
}
