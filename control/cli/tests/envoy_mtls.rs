//! Mesh-wide mutual TLS in real Envoy, with certificates from Maille's certificate authority
//! served over SDS: a virtual gateway's Envoy calls white through white's own Envoy; white's
//! listener takes only TLS from a proxy of the mesh that declares it as a backend; the
//! certificates rotate under load with no failed request, across a restart of the server.

mod common;

use common::*;
use maille_testkit::{agent, free_port};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The mesh of these tests ([`gateway_to_white`], with a rogue node), mTLS from `maille`.
fn mesh(gw: u16, app: u16, ingress: u16, maille: Option<Value>) -> Value {
    gateway_to_white(gw, app, ingress, maille.unwrap_or(json!({})), true)
}

/// The gateway's SPIFFE ID.
const GATEWAY_ID: &str = "spiffe://maille/mesh/sec/virtualGateway/ingress";

/// The gateway's Envoy.
fn gateway_envoy(c: &Control) -> maille_testkit::Envoy {
    c.gateway_envoy("sec", "ingress")
}

fn gateway_cert(ca: &maille_control::ca::Ca) -> maille_control::ca::Issued {
    ca.issue_proxy("sec", &maille_translate::names::gateway_proxy("ingress"))
        .unwrap()
}

fn apply(c: &Control, dir: &Path, doc: &Value) {
    let f = dir.join("mesh.json");
    std::fs::write(&f, doc.to_string()).unwrap();
    let (ok, out, err) = c.ctl(&["apply", "-f", f.to_str().unwrap()]);
    assert!(ok, "apply: {out}{err}");
}

/// `curl` straight to `port` on 127.0.0.1: over TLS with the certificate `cert` (files
/// `<cert>.crt`, `<cert>.key` in `dir`) when given, else plaintext. The status, or the
/// error when there is none.
fn curl(dir: &Path, port: u16, cert: Option<&str>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ]);
    match cert {
        Some(c) => {
            cmd.arg("-k")
                .arg("--cert")
                .arg(dir.join(format!("{c}.crt")))
                .arg("--key")
                .arg(dir.join(format!("{c}.key")))
                .arg(format!("https://127.0.0.1:{port}/"));
        }
        None => {
            cmd.arg(format!("http://127.0.0.1:{port}/"));
        }
    }
    let out = cmd.output().expect("curl");
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        format!(
            "error {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

fn write_cert(dir: &Path, name: &str, issued: &maille_control::ca::Issued) {
    std::fs::write(dir.join(format!("{name}.crt")), &issued.certificate_chain).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &issued.private_key).unwrap();
}

/// The SPIFFE IDs and serial numbers of the certificates an Envoy presents (admin `/certs`).
fn envoy_certs(envoy: &maille_testkit::Envoy) -> Vec<(String, String)> {
    let j: Value =
        serde_json::from_str(&envoy.admin_get("/certs").unwrap_or_default()).unwrap_or(Value::Null);
    let mut out = Vec::new();
    for c in j["certificates"].as_array().into_iter().flatten() {
        for cert in c["cert_chain"].as_array().into_iter().flatten() {
            for san in cert["subject_alt_names"].as_array().into_iter().flatten() {
                if let Some(uri) = san["uri"].as_str() {
                    out.push((
                        uri.to_owned(),
                        cert["serial_number"].as_str().unwrap_or("").to_owned(),
                    ));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn get(a: &ureq::Agent, egress: u16, host: &str) -> String {
    match a
        .get(&format!("http://127.0.0.1:{egress}/"))
        .header("host", host)
        .call()
    {
        Ok(mut r) => format!(
            "{} {}",
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default()
        ),
        Err(ureq::Error::StatusCode(c)) => format!("HTTP {c}"),
        Err(e) => format!("error {e}"),
    }
}

#[test]
fn strict_mtls_takes_only_declared_callers_of_the_mesh() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let apps = Apps::start(&rt, &["white"]);
    let app = apps.ports["white"];
    let (ingress, egress) = (free_port(), free_port());
    apply(&control, dir.path(), &mesh(egress, app, ingress, None));
    let (white, _) = control.envoy_with_ingress("sec", "white", ingress);
    let gateway = gateway_envoy(&control);
    let a = agent();
    eventually(
        "the gateway reaches white over mTLS",
        Duration::from_secs(30),
        || {
            let got = get(&a, egress, "white.local");
            (got == "200 white", got)
        },
    );
    // Each Envoy presents the certificate of its own SPIFFE ID.
    let ids = |e: &maille_testkit::Envoy| -> Vec<String> {
        envoy_certs(e).into_iter().map(|(id, _)| id).collect()
    };
    assert_eq!(ids(&gateway), vec![GATEWAY_ID]);
    assert_eq!(
        ids(&white),
        vec!["spiffe://maille/mesh/sec/virtualNode/white"]
    );

    let ca = control.running.as_ref().unwrap().ca.clone();
    write_cert(dir.path(), "gateway", &gateway_cert(&ca));
    write_cert(
        dir.path(),
        "rogue",
        &ca.issue_proxy("sec", "rogue").unwrap(),
    );
    write_cert(
        dir.path(),
        "other-mesh",
        &ca.issue_proxy("other", &maille_translate::names::gateway_proxy("ingress"))
            .unwrap(),
    );
    let stranger = maille_control::ca::Ca::load_or_create(
        &maille_control::store::MemoryStore::default(),
        maille_control::ca::DEFAULT_LIFETIME,
    )
    .unwrap();
    write_cert(dir.path(), "other-ca", &gateway_cert(&stranger));
    let hits = || apps.hits["white"].load(Ordering::Relaxed);
    let before = hits();
    // A caller the spec declares gets in (so the refusals below are the certificates').
    assert_eq!(curl(dir.path(), ingress, Some("gateway")), "200");
    assert_eq!(hits(), before + 1);
    let plaintext = curl(dir.path(), ingress, None);
    assert!(plaintext.starts_with("error"), "plaintext: {plaintext}");
    let rogue = curl(dir.path(), ingress, Some("rogue"));
    assert_eq!(rogue, "403", "a node that does not declare white");
    for c in ["other-mesh", "other-ca"] {
        let got = curl(dir.path(), ingress, Some(c));
        assert!(got.starts_with("error"), "{c}: {got}");
    }
    assert_eq!(hits(), before + 1, "no refused call reached the app");

    // Authorization off: any proxy of the mesh; still no plaintext, no stranger.
    apply(
        &control,
        dir.path(),
        &mesh(egress, app, ingress, Some(json!({"authorization": "NONE"}))),
    );
    eventually("the rogue gets in", Duration::from_secs(20), || {
        let got = curl(dir.path(), ingress, Some("rogue"));
        (got == "200", got)
    });
    assert!(curl(dir.path(), ingress, None).starts_with("error"));
    assert!(curl(dir.path(), ingress, Some("other-ca")).starts_with("error"));

    // PERMISSIVE: plaintext too, for a migration; the gateway still calls over TLS.
    apply(
        &control,
        dir.path(),
        &mesh(egress, app, ingress, Some(json!({"mtls": "PERMISSIVE"}))),
    );
    eventually("plaintext gets in", Duration::from_secs(20), || {
        let got = curl(dir.path(), ingress, None);
        (got == "200", got)
    });
    assert_eq!(curl(dir.path(), ingress, Some("gateway")), "200");
    assert_eq!(get(&a, egress, "white.local"), "200 white");
    let tls_before = white
        .stats("listener.")
        .into_iter()
        .filter(|(k, _)| k.ends_with("ssl.handshake"))
        .map(|(_, v)| v)
        .sum::<u64>();
    assert!(tls_before > 0, "white's listener took TLS handshakes");

    // DISABLED: plaintext both ways.
    apply(
        &control,
        dir.path(),
        &mesh(egress, app, ingress, Some(json!({"mtls": "DISABLED"}))),
    );
    eventually("TLS is off", Duration::from_secs(20), || {
        let got = curl(dir.path(), ingress, Some("gateway"));
        (got.starts_with("error"), got)
    });
    eventually(
        "the gateway calls in plaintext",
        Duration::from_secs(20),
        || {
            let got = get(&a, egress, "white.local");
            (got == "200 white", got)
        },
    );

    // STRICT again, once the Envoys have let their secrets go (they do ~15 s after), so
    // that they subscribe to them anew: mTLS both ways again, plaintext refused.
    std::thread::sleep(Duration::from_secs(16));
    apply(&control, dir.path(), &mesh(egress, app, ingress, None));
    eventually("mTLS is back", Duration::from_secs(20), || {
        let got = (
            get(&a, egress, "white.local"),
            curl(dir.path(), ingress, None),
        );
        (got.0 == "200 white" && got.1.starts_with("error"), got)
    });
    drop((white, gateway));
}

/// Sends `rps` requests a second through `egress` (keep-alive, 4 senders) until `stop`;
/// counts answers `200 white` and the others (kept, a few).
fn load(
    egress: u16,
    rps: u64,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    let senders = 4;
    (0..senders)
        .map(|i| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let a = agent();
                let every = Duration::from_micros(1_000_000 * senders / rps);
                let mut next = Instant::now() + every * i as u32 / senders as u32;
                while !stop.load(Ordering::Relaxed) {
                    let got = get(&a, egress, "white.local");
                    if got == "200 white" {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.lock().unwrap().push(got);
                    }
                    next += every;
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                }
            })
        })
        .collect()
}

#[test]
fn certificates_rotate_every_10_s_under_200_requests_a_second_with_none_failed() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.redb");
    // Replaced at half their lifetime: every 10 s.
    let lifetime = Duration::from_secs(20);
    let mut control = Control::start_with_lifetime(&rt, &state, None, lifetime);
    let ports = (control.xds_port, control.http_port);
    let apps = Apps::start(&rt, &["white"]);
    let (ingress, egress) = (free_port(), free_port());
    apply(
        &control,
        dir.path(),
        &mesh(egress, apps.ports["white"], ingress, None),
    );
    let (white, _) = control.envoy_with_ingress("sec", "white", ingress);
    let gateway = gateway_envoy(&control);
    let a = agent();
    eventually("the gateway reaches white", Duration::from_secs(30), || {
        let got = get(&a, egress, "white.local");
        (got == "200 white", got)
    });
    let trust_before = control
        .running
        .as_ref()
        .unwrap()
        .ca
        .trust_bundle()
        .to_owned();

    let (stop, ok) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let senders = load(egress, 200, stop.clone(), ok.clone(), failed.clone());
    // New connections too: a fresh mTLS handshake with white's current certificate, twice
    // a second, with a certificate of the gateway's identity.
    let mut fresh = (0u64, Vec::new());
    let mut serials: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let start = Instant::now();
    let mut restarted = false;
    while start.elapsed() < Duration::from_secs(60) {
        for e in [&gateway, &white] {
            for (id, serial) in envoy_certs(e) {
                serials.entry(id).or_default().insert(serial);
            }
        }
        // A new one each time: they live 20 s too.
        let ca = control.running.as_ref().unwrap().ca.clone();
        write_cert(dir.path(), "gateway", &gateway_cert(&ca));
        let got = curl(dir.path(), ingress, Some("gateway"));
        if got == "200" {
            fresh.0 += 1;
        } else {
            fresh.1.push(got);
        }
        if !restarted && start.elapsed() > Duration::from_secs(30) {
            // The control server restarts on the same state: the Envoys keep their
            // certificates while it is away, and get new ones from the same CA.
            control.stop(&rt);
            std::thread::sleep(Duration::from_secs(2));
            control = Control::start_with_lifetime(&rt, &state, Some(ports), lifetime);
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    let ok = ok.load(Ordering::Relaxed);
    let failed = failed.lock().unwrap().clone();
    eprintln!(
        "{ok} requests ok, {} failed; {} fresh handshakes ok, {} failed; serials {serials:?}",
        failed.len(),
        fresh.0,
        fresh.1.len()
    );
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(10)]
    );
    assert!(fresh.1.is_empty(), "failed handshakes: {:?}", fresh.1);
    assert!(
        ok >= 200 * 50,
        "about 200 requests a second for 60 s, got {ok}"
    );
    assert!(fresh.0 >= 80, "{} fresh handshakes", fresh.0);
    // Every 10 s, and at the restart: at least 6 certificates each over the minute.
    for id in [GATEWAY_ID, "spiffe://maille/mesh/sec/virtualNode/white"] {
        let n = serials.get(id).map_or(0, |s| s.len());
        assert!(n >= 6, "{id}: {n} certificates seen");
    }
    assert_eq!(
        control.running.as_ref().unwrap().ca.trust_bundle(),
        trust_before,
        "the restarted server signs with the same CA"
    );
    drop((white, gateway));
}
