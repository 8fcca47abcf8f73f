//! What the mesh's mutual TLS costs, measured in one run on this machine:
//! - requests/s and p99 through a virtual gateway's Envoy to white's Envoy to the app, with
//!   the mesh `STRICT` (mTLS on the hop between the Envoys, RBAC on white) and `DISABLED`
//!   (plaintext), keep-alive (wrk, 1 thread, 16 connections, 10 s);
//! - the same hop with a new connection per request: clients straight to white's Envoy
//!   (4 threads, 5 s, once per mode after the keep-alive rounds), a full mTLS handshake with
//!   a gateway certificate each time under `STRICT`, a plain TCP connection under `DISABLED`;
//! - the control server's CPU per 1,000 certificate rotations: a key, a certificate and its
//!   signature from the CA, as each ADS stream makes them at every rotation.
//!
//! `cargo bench -p maillectl --bench mtls` (part of `make bench-control`); `ROUNDS=3`.
//! Keep-alive: medians of the rounds, the two modes alternating within each round.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use maille_testkit::free_port;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn mesh(gw: u16, app: u16, ingress: u16, mtls: &str) -> Value {
    gateway_to_white(gw, app, ingress, json!({"mtls": mtls}), false)
}

/// wrk against `port`: (requests/s, p99 ms), or what went wrong.
fn wrk(port: u16) -> Result<(f64, f64), String> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c16",
            "-d10s",
            "--latency",
            "-H",
            "Host: white.local",
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk (Debian's wrk: make setup)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| {
            let v = v.trim();
            let (n, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
            let n: f64 = n.parse().unwrap_or(f64::NAN);
            match unit {
                "us" => n / 1000.0,
                "s" => n * 1000.0,
                _ => n,
            }
        })
        .unwrap_or(f64::NAN);
    if text.contains("Non-2xx") {
        let sample = maille_testkit::agent()
            .get(&format!("http://127.0.0.1:{port}/"))
            .header("host", "white.local")
            .call()
            .map(|mut r| r.body_mut().read_to_string().unwrap_or_default());
        return Err(format!(
            "wrk saw errors through the mesh ({sample:?}):\n{text}"
        ));
    }
    Ok((rps, p99))
}

/// Accepts any server certificate: the bench measures the handshake, not the check (the
/// tests check it).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(issued: &maille_control::ca::Issued) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<_> =
        rustls::pki_types::CertificateDer::pem_slice_iter(issued.certificate_chain.as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.private_key.as_bytes()).unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .unwrap();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// One request on a new connection to `port`: over mTLS with `tls`, else plaintext.
fn fresh_request(port: u16, tls: Option<&Arc<rustls::ClientConfig>>) -> bool {
    let Ok(tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = tcp.set_nodelay(true);
    let req = b"GET / HTTP/1.1\r\nHost: white.local\r\nConnection: close\r\n\r\n";
    let mut answer = Vec::new();
    let ok = match tls {
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from("white.local").unwrap();
            let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp);
            s.write_all(req).is_ok() && {
                let _ = s.read_to_end(&mut answer);
                true
            }
        }
        None => {
            let mut s = tcp;
            s.write_all(req).is_ok() && {
                let _ = s.read_to_end(&mut answer);
                true
            }
        }
    };
    ok && answer.starts_with(b"HTTP/1.1 200")
}

/// Requests/s with a new connection each, 4 threads for 5 s; (requests/s, failures).
fn fresh(port: u16, tls: Option<Arc<rustls::ClientConfig>>) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, bad, tls) = (stop.clone(), ok.clone(), bad.clone(), tls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if fresh_request(port, tls.as_ref()) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    (
        ok.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        bad.load(Ordering::Relaxed),
    )
}

/// This process's CPU time (user + system), from /proc.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // Linux's USER_HZ.
    Duration::from_millis(ticks * 10)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One setup in `mode`: the control server, white's app and Envoy, the gateway's Envoy;
/// (everything to keep alive, the gateway's port, white's ingress port, a gateway
/// certificate for direct calls).
#[allow(clippy::type_complexity)]
fn setup(
    rt: &tokio::runtime::Runtime,
    mode: &str,
) -> (
    (
        tempfile::TempDir,
        Control,
        Apps,
        maille_testkit::Envoy,
        maille_testkit::Envoy,
    ),
    u16,
    u16,
    Arc<rustls::ClientConfig>,
) {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(rt, &dir.path().join("state.redb"), None);
    let apps = Apps::start(rt, &["white"]);
    let (ingress, gw) = (free_port(), free_port());
    let f = dir.path().join("mesh.json");
    std::fs::write(&f, mesh(gw, apps.ports["white"], ingress, mode).to_string()).unwrap();
    let (ok, out, err) = control.ctl(&["apply", "-f", f.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let (white, _) = control.envoy_with_ingress("sec", "white", ingress);
    let gateway = control.gateway_envoy("sec", "ingress");
    let a = maille_testkit::agent();
    eventually("the gateway answers", Duration::from_secs(30), || {
        let r = a
            .get(&format!("http://127.0.0.1:{gw}/"))
            .header("host", "white.local")
            .call();
        (
            r.as_ref().is_ok_and(|r| r.status() == 200),
            format!("{r:?}"),
        )
    });
    let ca = control.running.as_ref().unwrap().ca.clone();
    let tls = tls_config(
        &ca.issue_proxy("sec", &maille_translate::names::gateway_proxy("ingress"))
            .unwrap(),
    );
    ((dir, control, apps, white, gateway), gw, ingress, tls)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let rt = runtime();
    // Each measurement on a setup of its own, made in its mode: the modes alternate within
    // each round. New connections last, once per mode: thousands of closed connections a
    // second leave the machine's ephemeral ports in TIME_WAIT for a minute.
    let mut rows: std::collections::BTreeMap<&str, Vec<(f64, f64)>> = Default::default();
    for round in 0..rounds {
        for mode in ["STRICT", "DISABLED"] {
            let (mut kept, gw, _, _) = setup(&rt, mode);
            let (rps, p99) = wrk(gw).unwrap_or_else(|e| panic!("{mode}: {e}"));
            eprintln!("round {round} {mode}: {rps:.0} req/s p99 {p99:.2} ms");
            rows.entry(mode).or_default().push((rps, p99));
            kept.1.stop(&rt);
        }
    }
    let mut fresh_rps = std::collections::BTreeMap::new();
    let mut ca = None;
    for mode in ["STRICT", "DISABLED"] {
        let (mut kept, _, ingress, tls) = setup(&rt, mode);
        let (rps, failed) = fresh(ingress, (mode == "STRICT").then(|| tls.clone()));
        assert_eq!(failed, 0, "{mode}: new connections failed");
        eprintln!("{mode}: new connections {rps:.0} req/s");
        fresh_rps.insert(mode, rps);
        ca = kept.1.running.as_ref().map(|r| r.ca.clone());
        kept.1.stop(&rt);
    }
    let ca = ca.expect("a CA");
    let m = |mode: &str, i: usize| {
        if i == 2 {
            return fresh_rps[mode];
        }
        median(rows[mode].iter().map(|r| [r.0, r.1][i]).collect())
    };

    // Rotations: what an ADS stream does at each (a key, a certificate, a signature).
    let n = 10_000;
    let c0 = cpu();
    let t0 = Instant::now();
    for _ in 0..n {
        std::hint::black_box(ca.issue_proxy("sec", "white").unwrap());
    }
    let (cpu_ms, wall_ms) = (
        (cpu() - c0).as_secs_f64() * 1000.0,
        t0.elapsed().as_secs_f64() * 1000.0,
    );

    println!("\nMesh mTLS: gateway Envoy -> white's Envoy -> app, 2 cores, same run; medians of {rounds} rounds");
    println!("| mode | keep-alive req/s | p99 ms | new connections req/s |\n|---|---|---|---|");
    for mode in ["DISABLED", "STRICT"] {
        println!(
            "| {mode} | {:.0} | {:.2} | {:.0} |",
            m(mode, 0),
            m(mode, 1),
            m(mode, 2)
        );
    }
    println!(
        "| STRICT / DISABLED | {:.2}x | {:.2}x | {:.2}x |",
        m("STRICT", 0) / m("DISABLED", 0),
        m("STRICT", 1) / m("DISABLED", 1),
        m("STRICT", 2) / m("DISABLED", 2)
    );
    println!(
        "\nCertificate rotations: {n} in {wall_ms:.0} ms; CPU per 1,000 rotations: {:.0} ms",
        cpu_ms * 1000.0 / n as f64
    );
}
