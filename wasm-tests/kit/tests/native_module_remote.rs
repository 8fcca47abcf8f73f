//! Loading the native filter modules from a remote source in Envoy 1.40
//! (`DynamicModuleConfig.module.remote`: an HTTP URI fetched through an Envoy cluster and
//! checked against its sha256), as a control server would hand them to Envoys: from a static
//! bootstrap, and through xDS (LDS from a file) with `nack_on_cache_miss`, where Envoy
//! rejects the listener until the module is in its cache and accepts it once it is.
//!
//! Envoy caches a fetched module as `/tmp/envoy_dynamic_module_<sha256>.so` for every later
//! process; each test serves its own copy with a unique trailer (an ELF loader ignores it) so
//! that a real fetch happens, and removes the cached file afterwards.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use maille_testkit::{agent, eventually, filter_native, free_port, Envoy, Upstreams};
use sha2::{Digest, Sha256};

/// A module file served over HTTP at `/module.so`, with its sha256 and a count of fetches.
struct ModuleServer {
    port: u16,
    sha256: String,
    fetches: Arc<AtomicUsize>,
}

impl ModuleServer {
    fn start(module: &[u8]) -> ModuleServer {
        let nonce = format!(
            "maille-test-{}-{:?}",
            std::process::id(),
            std::time::Instant::now()
        );
        let bytes: Vec<u8> = [module, nonce.as_bytes()].concat();
        let sha256 = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fetches = Arc::new(AtomicUsize::new(0));
        let count = fetches.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                // Skip the request's headers.
                let mut h = String::new();
                while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
                    h.clear();
                }
                let mut conn = conn;
                if line.starts_with("GET /module.so ") {
                    count.fetch_add(1, Ordering::SeqCst);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        bytes.len()
                    );
                    let _ = conn.write_all(head.as_bytes());
                    let _ = conn.write_all(&bytes);
                } else {
                    let _ = conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                }
            }
        });
        ModuleServer {
            port,
            sha256,
            fetches,
        }
    }

    fn cached(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/envoy_dynamic_module_{}.so", self.sha256))
    }
}

impl Drop for ModuleServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.cached());
    }
}

const CANARY: &str = r#"{"targets": [{"name": "stable", "cluster": "stable", "weight": 100}, {"name": "canary", "cluster": "canary", "weight": 0}], "rules": [{"match": {"headers": [{"name": "x-canary", "match": {"exact": "always"}}]}, "target": "canary"}]}"#;

/// The listener with the canary module from `server`, `extra` lines added to its
/// `dynamic_module_config`.
fn listener(port: u16, server: &ModuleServer, sha256: &str, extra: &str) -> String {
    format!(
        r#"name: ingress
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: ingress
      route_config:
        virtual_hosts: [{{ name: app, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster_header: x-maille-cluster }} }}] }}]
      http_filters:
      - name: maille.canary
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
          dynamic_module_config:
            name: maille_canary
            {extra}
            module:
              remote:
                http_uri: {{ uri: "http://modules/module.so", cluster: modules, timeout: 5s }}
                sha256: "{sha256}"
          filter_name: maille_canary
          filter_config:
            "@type": type.googleapis.com/google.protobuf.StringValue
            value: '{CANARY}'
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#,
        sha256 = sha256,
        extra = extra,
    )
    .replace("{CANARY}", CANARY)
    .replace(
        "http://modules/module.so",
        &format!("http://127.0.0.1:{}/module.so", server.port),
    )
}

/// The clusters: the two upstreams and `modules`, the module server (Envoy connects to the
/// cluster, whatever host the URI names).
fn clusters(up: &Upstreams, server: &ModuleServer) -> String {
    let cluster = |name: &str, port: u16| {
        format!("  - {{ name: {name}, type: STATIC, connect_timeout: 1s, load_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}] }} }}\n")
    };
    format!(
        "  clusters:\n{}{}{}",
        cluster("stable", up.stable_port),
        cluster("canary", up.canary_port),
        cluster("modules", server.port)
    )
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

fn routed_to_canary(port: u16) -> (bool, String) {
    let got = agent()
        .get(&format!("http://127.0.0.1:{port}/"))
        .header("x-canary", "always")
        .call()
        .map(|mut r| {
            format!(
                "{} {}",
                r.status().as_u16(),
                r.body_mut().read_to_string().unwrap_or_default().trim()
            )
        })
        .unwrap_or_else(|e| e.to_string());
    (got == "200 canary", got)
}

#[test]
fn a_static_bootstrap_loads_the_module_from_a_remote_source_by_sha256() {
    let up = Upstreams::start();
    let server = ModuleServer::start(&std::fs::read(filter_native("canary")).unwrap());
    let (admin, port) = (free_port(), free_port());
    let yaml = format!(
        "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\nstatic_resources:\n  listeners:\n{}{}",
        indent(&listener(port, &server, &server.sha256, ""), "    ")
            .replacen("    name: ingress", "  - name: ingress", 1),
        clusters(&up, &server)
    );
    let envoy = Envoy::start(&yaml, admin)
        .unwrap_or_else(|e| panic!("Envoy refused the remote module: {}\n{}", e.status, e.log));
    // Envoy is ready only once the fetch is done (warming): the filter routes at once.
    let (ok, got) = routed_to_canary(port);
    assert!(ok, "{got}\n{}", envoy.log());
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
    assert!(
        server.cached().exists(),
        "Envoy caches the module by its sha256"
    );
}

#[test]
fn with_nack_on_cache_miss_lds_rejects_until_the_module_is_cached_then_accepts() {
    let up = Upstreams::start();
    let server = ModuleServer::start(&std::fs::read(filter_native("canary")).unwrap());
    let (admin, port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let lds = dir.path().join("lds.yaml");
    let push = |sha256: &str| {
        let doc =
            format!(
            "resources:\n- \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n{}",
            indent(&listener(port, &server, sha256, "nack_on_cache_miss: true"), "  ")
        );
        // Envoy watches the file for a move into place.
        let tmp = dir.path().join("lds.tmp");
        std::fs::write(&tmp, doc).unwrap();
        std::fs::rename(&tmp, &lds).unwrap();
    };
    let wrong = "0".repeat(64);
    push(&wrong);
    let yaml = format!(
        "admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}\nnode: {{ id: test, cluster: test }}\ndynamic_resources:\n  lds_config: {{ path_config_source: {{ path: \"{}\" }}, resource_api_version: V3 }}\nstatic_resources:\n{}",
        lds.display(),
        clusters(&up, &server)
    );
    let envoy = Envoy::start(&yaml, admin).unwrap_or_else(|e| panic!("{}\n{}", e.status, e.log));
    let lds_stat = |what: &str| {
        envoy
            .stats("listener_manager.lds.update_")
            .get(&format!("listener_manager.lds.update_{what}"))
            .copied()
            .unwrap_or(0)
    };
    // A sha256 that the fetched bytes never match: rejected, and no listener without the
    // filter (without nack_on_cache_miss Envoy would serve the listener without it).
    eventually("the first rejection", Duration::from_secs(10), || {
        (lds_stat("rejected") == 1, envoy.log().len())
    });
    // Envoy's log file is flushed a moment after the stat moves.
    eventually(
        "the refusal in Envoy's log",
        Duration::from_secs(10),
        || {
            let log = envoy.log();
            (
                log.contains("Remote module not cached; background fetch in progress"),
                log.len(),
            )
        },
    );
    assert_eq!(lds_stat("success"), 0);
    // The right sha256: rejected once more while the background fetch fills the cache...
    push(&server.sha256);
    eventually(
        "the module in Envoy's cache",
        Duration::from_secs(10),
        || {
            (
                server.cached().exists() && lds_stat("rejected") == 2,
                lds_stat("rejected"),
            )
        },
    );
    // ...and accepted when the control plane sends the listener again.
    push(&server.sha256);
    eventually("the listener accepted", Duration::from_secs(10), || {
        (lds_stat("success") == 1, lds_stat("rejected"))
    });
    let got = eventually(
        "routing by the remote module",
        Duration::from_secs(10),
        || routed_to_canary(port),
    );
    assert_eq!(got, "200 canary");
}
