//! The admin port over TLS: a listener for `axum::serve` that hands over connections once
//! their TLS handshake is done. Handshakes run side by side, each bounded in time, so that
//! a client that connects and says nothing holds up no one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Time a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;

/// A TLS config serving `cert_chain_pem` with `key_pem`, for HTTP/1.1.
pub fn server_config(
    cert_chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the server certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the server key: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the server certificate: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An HTTPS client that trusts the CA certificates of `trust` (PEM) only, each call
/// bounded by `timeout`, statuses as values: how one server calls another.
pub fn agent_trusting(trust: &str, timeout: Duration) -> ureq::Agent {
    use ureq::tls::{PemItem, RootCerts, TlsConfig};
    let roots: Vec<_> = ureq::tls::parse_pem(trust.as_bytes())
        .filter_map(|p| match p {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::Specific(Arc::new(roots)))
                .build(),
        )
        .build()
        .into()
}

/// Connections of one port, after their handshake.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `config` on `tcp`.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let tls = TlsAcceptor::from(config);
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, most likely: wait rather than spin.
                        tracing::warn!(error = %e, "admin port: accepting a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin port: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "admin port: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Closes the port.
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor ended (it is aborted only when this is dropped): serve no more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn config() -> (Arc<rustls::ServerConfig>, String) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = crate::ca::Ca::load_or_create(
            &crate::store::MemoryStore::default(),
            crate::ca::DEFAULT_LIFETIME,
        )
        .unwrap();
        let own = ca
            .issue_for(
                "spiffe://maille/control",
                &["127.0.0.1".to_owned()],
                Duration::from_secs(3600),
            )
            .unwrap();
        (
            server_config(&own.certificate_chain, &own.private_key).unwrap(),
            ca.trust_bundle().to_owned(),
        )
    }

    #[tokio::test]
    async fn a_silent_client_holds_up_no_other() {
        use axum::serve::Listener;
        let (cfg, trust) = config();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut l = TlsListener::new(tcp, cfg).unwrap();
        // Ten clients connect and say nothing.
        let mut silent = Vec::new();
        for _ in 0..10 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // One that speaks TLS is served at once.
        let client = tokio::task::spawn_blocking(move || {
            let agent = agent_trusting(&trust, Duration::from_secs(5));
            agent
                .get(&format!("https://127.0.0.1:{}/", addr.port()))
                .call()
        });
        let (mut io, _) = tokio::time::timeout(Duration::from_secs(5), l.accept())
            .await
            .expect("the TLS client's connection, before the silent ones time out");
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"GET / HTTP/1.1"));
        io.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        io.flush().await.unwrap();
        let resp = client.await.unwrap().unwrap();
        assert_eq!(resp.status(), 204);
        drop(silent);
    }

    #[tokio::test]
    async fn plaintext_gets_no_answer_and_dropping_closes_the_port() {
        let (cfg, _) = config();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let l = TlsListener::new(tcp, cfg).unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
        assert!(
            !buf.starts_with(b"HTTP/1.1"),
            "plaintext got an HTTP answer"
        );
        drop(l);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            TcpListener::bind(addr).await.is_ok(),
            "the port is still held"
        );
    }
}
