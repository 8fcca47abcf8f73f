//! The ADS stream's state machine over an in-memory transport, with tonic's own client as the
//! peer (as Envoy speaks it): first requests, ACKs, NACKs, stale nonces, pushes on change, and
//! a reconnect after a NACK. Also what an apply touches. No Envoy: part of the fast tier.

mod common;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use maille_control::auth::NodeTokens;
use maille_control::clients::Clients;
use maille_control::mesh::types;
use maille_control::modules::Modules;
use maille_control::store::MemoryStore;
use maille_control::xds::Ads;
use maille_control::Mesh;
use maille_model::Resource;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Endpoint, Server};
use tonic::Streaming;

const GATEWAY: &str = "mesh/colorapp/virtualNode/colorgateway";
const WHITE: &str = "mesh/colorapp/virtualNode/colorteller-white";

struct Fixture {
    mesh: Arc<Mesh>,
    clients: Arc<Clients>,
    tokens: Arc<NodeTokens>,
    channel: tonic::transport::Channel,
    _modules: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    common::stand_in_modules(dir.path());
    let mesh = Arc::new(
        Mesh::new(
            Arc::new(MemoryStore::default()),
            Modules::new(Some(dir.path().to_path_buf()), "http://127.0.0.1:1"),
        )
        .unwrap(),
    );
    mesh.apply(common::colorapp(), false).await.unwrap();
    let clients = Arc::new(Clients::default());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let ca = Arc::new(
        maille_control::ca::Ca::load_or_create(
            &MemoryStore::default(),
            maille_control::ca::DEFAULT_LIFETIME,
        )
        .unwrap(),
    );
    let tokens = Arc::new(NodeTokens::load_or_create(&MemoryStore::default()).unwrap());
    let ads = Ads::new(mesh.clone(), clients.clone(), ca, tokens.clone(), stop_rx);
    // One in-memory connection per dial.
    let (conn_tx, conn_rx) = mpsc::channel::<Result<tokio::io::DuplexStream, std::io::Error>>(8);
    tokio::spawn(
        Server::builder()
            .add_service(ads)
            .serve_with_incoming(ReceiverStream::new(conn_rx)),
    );
    let channel = Endpoint::try_from("http://in-memory")
        .unwrap()
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let conn_tx = conn_tx.clone();
            async move {
                let (client, server) = tokio::io::duplex(1 << 20);
                conn_tx
                    .send(Ok(server))
                    .await
                    .map_err(|_| std::io::Error::other("server gone"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
            }
        }));
    Fixture {
        mesh,
        clients,
        tokens,
        channel,
        _modules: dir,
        _stop: stop,
    }
}

/// One ADS stream, driven as Envoy drives it.
struct Stream {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Stream {
    /// A stream with `node`'s token.
    async fn open(f: &Fixture, node: &str) -> Stream {
        Stream::try_open(f, Some(&f.tokens.token(node)))
            .await
            .unwrap()
    }

    /// A stream with `token` (none: anonymous), or why it was refused.
    async fn try_open(f: &Fixture, token: Option<&str>) -> Result<Stream, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let mut client = AggregatedDiscoveryServiceClient::new(f.channel.clone());
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let rx = client.stream_aggregated_resources(req).await?.into_inner();
        Ok(Stream { tx, rx })
    }

    async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn ask(&self, node: Option<&str>, type_url: &str, names: &[&str]) {
        self.send(DiscoveryRequest {
            node: node.map(|id| Node {
                id: id.into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
    }

    async fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
    }

    async fn nack(
        &self,
        r: &DiscoveryResponse,
        acked_version: &str,
        names: &[&str],
        message: &str,
    ) {
        self.send(DiscoveryRequest {
            type_url: r.type_url.clone(),
            version_info: acked_version.into(),
            response_nonce: r.nonce.clone(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: message.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5 s")
            .expect("stream ok")
            .expect("stream open")
    }

    /// Nothing arrives within `d`.
    async fn quiet(&mut self, d: Duration) -> Result<(), DiscoveryResponse> {
        match tokio::time::timeout(d, self.rx.message()).await {
            Err(_) => Ok(()),
            Ok(Ok(Some(r))) => Err(r),
            Ok(other) => panic!("stream ended: {other:?}"),
        }
    }
}

fn names(r: &DiscoveryResponse) -> Vec<String> {
    use prost::Message;
    r.resources
        .iter()
        .map(|a| match a.type_url.as_str() {
            types::CLUSTER => {
                envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(a.value.as_slice())
                    .unwrap()
                    .name
            }
            types::ROUTE => {
                envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(
                    a.value.as_slice(),
                )
                .unwrap()
                .name
            }
            types::SECRET => {
                envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret::decode(
                    a.value.as_slice(),
                )
                .unwrap()
                .name
            }
            other => other.to_owned(),
        })
        .collect()
}

/// The route with weights `white`, `black`, `red` (and the header route kept).
fn weights(white: u32, black: u32, red: u32) -> Resource {
    let mut r = common::colorapp()
        .into_iter()
        .find(|r| matches!(r, Resource::Route(rt) if rt.route_name == "colorteller-route"))
        .unwrap();
    if let Resource::Route(rt) = &mut r {
        let targets = &mut rt.spec.http_route.as_mut().unwrap().action.weighted_targets;
        for t in targets.iter_mut() {
            t.weight = match t.virtual_node.as_str() {
                "colorteller-white" => white,
                "colorteller-black" => black,
                _ => red,
            };
        }
    }
    r
}

#[tokio::test]
async fn the_first_request_must_name_a_node() {
    let f = fixture().await;
    let mut s = Stream::open(&f, GATEWAY).await;
    s.ask(None, types::CLUSTER, &[]).await;
    let e = tokio::time::timeout(Duration::from_secs(5), s.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let mut s = Stream::open(&f, "colorgateway").await;
    s.ask(Some("colorgateway"), types::CLUSTER, &[]).await;
    let e = tokio::time::timeout(Duration::from_secs(5), s.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        e.message().contains("mesh/<mesh>/virtualNode/<name>"),
        "{e}"
    );
}

#[tokio::test]
async fn no_stream_is_served_without_its_own_nodes_token() {
    let f = fixture().await;
    // No token at all: refused before anything is read.
    let e = Stream::try_open(&f, None).await.err().unwrap();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    // A genuine token of white's claiming to be the gateway, or a made-up one: refused at
    // the first request, with nothing sent.
    let e = Stream::try_open(&f, Some("maille-node.v1.00.00"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        e.code(),
        tonic::Code::Unauthenticated,
        "a made-up token: {e}"
    );
    for token in [f.tokens.token(WHITE)] {
        let mut s = Stream::try_open(&f, Some(&token)).await.unwrap();
        s.ask(Some(GATEWAY), types::CLUSTER, &[]).await;
        let e = tokio::time::timeout(Duration::from_secs(5), s.rx.message())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    }
    assert!(f.clients.list().iter().all(|c| c.node != GATEWAY));

    // The real gateway takes version A; a rogue with white's token tries to NACK it as the
    // gateway; the gateway reconnects and is still served A, with no NACK on its record.
    let mut gw = Stream::open(&f, GATEWAY).await;
    gw.ask(Some(GATEWAY), types::ROUTE, &["egress"]).await;
    let rds = gw.next().await;
    gw.ack(&rds, &["egress"]).await;
    drop(gw);
    let mut rogue = Stream::try_open(&f, Some(&f.tokens.token(WHITE)))
        .await
        .unwrap();
    rogue.ask(Some(GATEWAY), types::ROUTE, &["egress"]).await;
    rogue
        .nack(&rds, "", &["egress"], "forged: roll the gateway back")
        .await;
    assert!(rogue.rx.message().await.is_err());
    let mut gw = Stream::open(&f, GATEWAY).await;
    gw.ask(Some(GATEWAY), types::ROUTE, &["egress"]).await;
    let again = gw.next().await;
    assert_eq!(names(&again), ["egress"]);
    assert_eq!(again.resources, rds.resources);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for c in f.clients.list() {
        for t in c.types.values() {
            assert!(t.last_nack.is_none(), "{c:?}");
        }
    }
}

#[tokio::test]
async fn acks_nacks_pushes_and_a_reconnect() {
    let f = fixture().await;
    let mut s = Stream::open(&f, GATEWAY).await;
    s.ask(Some(GATEWAY), types::CLUSTER, &[]).await;
    let cds = s.next().await;
    assert_eq!(cds.type_url, types::CLUSTER);
    assert!(names(&cds).contains(&"node/colorteller-white/10011".to_string()));
    s.ack(&cds, &[]).await;
    s.ask(None, types::ROUTE, &["egress"]).await;
    let rds = s.next().await;
    assert_eq!(names(&rds), ["egress"]);
    s.ack(&rds, &["egress"]).await;
    // An ACK of an older nonce changes nothing and gets no answer.
    s.ack(&cds, &[]).await;
    assert!(s.quiet(Duration::from_millis(200)).await.is_ok());
    let status = f.clients.list();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].node, GATEWAY);
    assert_eq!(
        status[0].types["CDS"].acked.as_ref(),
        Some(&cds.version_info)
    );
    assert_eq!(
        status[0].types["RDS"].acked.as_ref(),
        Some(&rds.version_info)
    );

    // All traffic to white: the route changes, the clusters do not; only RDS is pushed.
    let before = f.mesh.current().version;
    let report = f.mesh.apply(vec![weights(1, 0, 0)], false).await.unwrap();
    assert_eq!(report.version, before + 1);
    let pushed = s.next().await;
    assert_eq!(pushed.type_url, types::ROUTE);
    assert_ne!(pushed.version_info, rds.version_info);
    assert!(
        s.quiet(Duration::from_millis(300)).await.is_ok(),
        "CDS was resent unchanged"
    );

    // Envoy refuses it: recorded with its message, the refused content is not resent.
    s.nack(&pushed, &rds.version_info, &["egress"], "regex too big")
        .await;
    let f2 = &f;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = &f2.clients.list()[0].types["RDS"];
    assert_eq!(st.last_nack.as_ref().unwrap().message, "regex too big");
    assert_eq!(st.acked.as_ref(), Some(&rds.version_info));
    assert!(s.quiet(Duration::from_millis(300)).await.is_ok());

    // A new stream of the same node gets what it last accepted, not the refused version.
    drop(s);
    let mut s2 = Stream::open(&f, GATEWAY).await;
    s2.ask(Some(GATEWAY), types::ROUTE, &["egress"]).await;
    let again = s2.next().await;
    assert_eq!(
        again.resources, rds.resources,
        "the refused routes came back"
    );
    s2.ack(&again, &["egress"]).await;

    // A later change that the node accepts replaces the memory.
    f.mesh.apply(vec![weights(0, 1, 0)], false).await.unwrap();
    let newer = s2.next().await;
    assert_ne!(newer.resources, rds.resources);
    s2.ack(&newer, &["egress"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = f.clients.list();
    let gw = st.iter().find(|c| c.node == GATEWAY).unwrap();
    assert!(gw.types["RDS"].last_nack.is_none());
    assert_eq!(gw.synced_version, f.mesh.current().version);
}

/// Envoy asks for more names twice before it reads the answer to the first (its listener
/// then its cluster subscribe to secrets): the second request carries a stale nonce and
/// gets no answer, but the ACK that follows carries the same names and must get them.
#[tokio::test]
async fn names_asked_with_a_stale_nonce_are_served_after_the_ack() {
    let f = fixture().await;
    let mut s = Stream::open(&f, GATEWAY).await;
    s.ask(Some(GATEWAY), types::SECRET, &["maille/identity"])
        .await;
    let first = s.next().await;
    assert_eq!(names(&first), ["maille/identity"]);
    s.ack(&first, &["maille/identity"]).await;
    // The listener lets its secret go, then asks again; the cluster asks for the trust.
    s.ack(&first, &["maille/trust"]).await;
    s.ack(&first, &["maille/trust", "maille/identity"]).await;
    let second = s.next().await;
    assert_eq!(names(&second), ["maille/trust"]);
    s.ack(&second, &["maille/trust", "maille/identity"]).await;
    let third = s.next().await;
    let mut got = names(&third);
    got.sort();
    assert_eq!(got, ["maille/identity", "maille/trust"]);
    s.ack(&third, &["maille/trust", "maille/identity"]).await;
    assert!(s.quiet(Duration::from_millis(200)).await.is_ok());
}

#[tokio::test]
async fn a_change_reaches_only_the_envoys_it_affects() {
    let f = fixture().await;
    let mut white = Stream::open(&f, WHITE).await;
    white.ask(Some(WHITE), types::LISTENER, &[]).await;
    let lds = white.next().await;
    white.ack(&lds, &[]).await;
    let report = f.mesh.apply(vec![weights(5, 5, 0)], false).await.unwrap();
    // The route is read by the gateway only (the tellers call nobody).
    assert_eq!(report.affected_nodes, 1, "{report:?}");
    assert!(
        white.quiet(Duration::from_millis(300)).await.is_ok(),
        "white was sent something"
    );
    assert_eq!(f.clients.list()[0].synced_version, f.mesh.current().version);
}
