//! The native filter modules in real Envoy 1.40 under what should make them fail cleanly:
//! a module missing a hook Envoy requires, configurations that are wrong or hostile (for
//! both builds of the breaker, which share the validation), and requests with huge, many or
//! non-UTF-8 headers fed to the loaded `.so` files, which must never take Envoy down.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use maille_testkit::{agent, eventually, for_each_runtime, free_port, start_breaker_on};
use maille_testkit::{start_canary_breaker_native, start_canary_on, start_canary_specifier};
use maille_testkit::{Envoy, Runtime, Upstreams};

for_each_runtime!(
    bad_breaker_configs_are_refused_and_the_log_names_the_field,
    hostile_configs_are_refused_without_a_crash,
);

/// Sends `request` (raw bytes, `connection: close`) and returns the status and the body.
fn raw(port: u16, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to Envoy");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).expect("write request");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A GET of `path` with `headers` (name, raw value bytes).
fn get(path: &str, headers: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n").into_bytes();
    for (k, v) in headers {
        r.extend_from_slice(k.as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(v);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r
}

fn refused(exit: &maille_testkit::EnvoyExit, expected: &[&str], config: &str) {
    // A refusal, not a crash: Envoy exits 1 after logging why (a signal would be a crash).
    assert_eq!(
        exit.status.code(),
        Some(1),
        "Envoy did not exit 1 on {config}:\n{}",
        exit.log
    );
    for e in expected {
        assert!(
            exit.log.contains(e),
            "log does not name `{e}` for {config}:\n{}",
            exit.log
        );
    }
}

#[test]
fn a_module_missing_a_required_hook_is_refused_by_name() {
    // A real shared library with the first hooks only, as a module built against another
    // ABI would be: Envoy must refuse it and say which hook is missing.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("partial.c");
    std::fs::write(
        &src,
        r#"
        #include <stddef.h>
        const char* envoy_dynamic_module_on_program_init(void) { return "v0.2.0"; }
        const void* envoy_dynamic_module_on_http_filter_config_new(void* e, const char* n, size_t nl, const char* c, size_t cl) { static int x; return &x; }
        void envoy_dynamic_module_on_http_filter_config_destroy(const void* c) {}
        const void* envoy_dynamic_module_on_http_filter_new(const void* c, void* e) { static int y; return &y; }
        "#,
    )
    .unwrap();
    let so = dir.path().join("libpartial.so");
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .expect("cc (the C compiler Rust links with)");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );

    let up = Upstreams::start();
    let (admin, port) = (free_port(), free_port());
    let yaml = format!(
        r#"
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts: [{{ name: app, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: stable }} }}] }}]
          http_filters:
          - name: partial
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{ name: partial, module: {{ local: {{ filename: "{so}" }} }} }}
              filter_name: partial
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - {{ name: stable, type: STATIC, load_assignment: {{ cluster_name: stable, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {stable} }} }} }} }}] }}] }} }}
"#,
        so = so.display(),
        stable = up.stable_port,
    );
    match Envoy::start(&yaml, admin) {
        Ok(envoy) => panic!("Envoy loaded a module without its hooks:\n{}", envoy.log()),
        Err(exit) => refused(
            &exit,
            &["envoy_dynamic_module_on_http_filter_request_headers"],
            "libpartial.so",
        ),
    }

    // The same library as a route's cluster specifier: it has none of those hooks.
    let (admin, port) = (free_port(), free_port());
    let yaml = format!(
        r#"
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route:
                  inline_cluster_specifier_plugin:
                    extension:
                      name: partial
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.router.cluster_specifiers.dynamic_modules.v3.DynamicModuleClusterSpecifier
                        dynamic_module_config: {{ name: partial, module: {{ local: {{ filename: "{so}" }} }} }}
                        specifier_name: partial
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - {{ name: stable, type: STATIC, load_assignment: {{ cluster_name: stable, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {stable} }} }} }} }}] }}] }} }}
"#,
        so = so.display(),
        stable = up.stable_port,
    );
    match Envoy::start(&yaml, admin) {
        Ok(envoy) => panic!(
            "Envoy took a cluster specifier without its hooks:\n{}",
            envoy.log()
        ),
        Err(exit) => refused(
            &exit,
            &["envoy_dynamic_module_on_cluster_specifier_config_new"],
            "libpartial.so as a cluster specifier",
        ),
    }
}

fn bad_breaker_configs_are_refused_and_the_log_names_the_field(runtime: Runtime) {
    let cases = [
        (r#"{"windowMillis": 5}"#, "windowMillis: must be"),
        (
            r#"{"minRequests": 10, "colour": "red"}"#,
            "unknown field `colour`",
        ),
        (r#"{"failureRatio": "high"}"#, "invalid type"),
        (r#"{"failureRatio": 1.5}"#, "failureRatio"),
        (
            r#"{"signal": {"cluster": "control", "path": "/x", "timeoutMillis": 1}}"#,
            "signal.timeoutMillis: must be 10..=60000, got 1",
        ),
    ];
    for (config, expected) in cases {
        match start_breaker_on(runtime, config, free_port(), free_port()) {
            Ok((envoy, _)) => panic!("Envoy accepted {config}:\n{}", envoy.log()),
            Err(exit) => refused(
                &exit,
                &["maille_breaker: invalid configuration", expected],
                config,
            ),
        }
    }
}

fn hostile_configs_are_refused_without_a_crash(runtime: Runtime) {
    let up = Upstreams::start();
    let deep = format!(
        r#"{{"targets": {}1{}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let huge_name = format!(
        r#"{{"targets": [{{"name": "{}", "cluster": "stable", "weight": 1}}]}}"#,
        "n".repeat(200_000)
    );
    let many_rules: Vec<String> = (0..5_000)
        .map(|i| {
            format!(
                r#"{{"match": {{"headers": [{{"name": "x{i}", "match": {{"exact": "v"}}}}]}}, "target": "stable"}}"#
            )
        })
        .collect();
    let many = format!(
        r#"{{"targets": [{{"name": "stable", "cluster": "stable", "weight": 1}}], "rules": [{}]}}"#,
        many_rules.join(",")
    );
    let canary_cases = [
        // Refused at the first value of the wrong type, before any deep recursion.
        (deep.clone(), "invalid type: sequence"),
        (huge_name, "targets[0].name"),
        (many, "rules: at most 50 rules"),
        (
            r#"{"targets": [{"name": "s", "cluster": "stable", "weight": 1e999}]}"#.to_owned(),
            "invalid",
        ),
        ("\u{feff}{}".to_owned(), "expected value"),
        // A lone surrogate escape.
        (r#"{"targets": "\ud800"}"#.to_owned(), "hex escape"),
    ];
    for (config, expected) in &canary_cases {
        match start_canary_on(runtime, &up, config) {
            Ok((envoy, _)) => panic!("Envoy accepted a hostile canary config:\n{}", envoy.log()),
            Err(exit) => refused(
                &exit,
                &["maille_canary: invalid configuration", expected],
                &config.chars().take(80).collect::<String>(),
            ),
        }
    }
    let breaker_deep = format!(r#"{{"signal": {}}}"#, "[".repeat(5_000));
    match start_breaker_on(runtime, &breaker_deep, free_port(), free_port()) {
        Ok((envoy, _)) => panic!("Envoy accepted a hostile breaker config:\n{}", envoy.log()),
        Err(exit) => refused(
            &exit,
            &[
                "maille_breaker: invalid configuration",
                "invalid type: sequence",
            ],
            "deep breaker config",
        ),
    }
}

const CANARY: &str = r#"{"targets": [{"name": "stable", "cluster": "stable", "weight": 50},
                                   {"name": "canary", "cluster": "canary", "weight": 50}],
  "sticky": {"header": "x-user-id"},
  "rules": [
    {"match": {"headers": [{"name": "x-canary", "match": {"exact": "always"}}]}, "target": "canary"},
    {"match": {"cookies": [{"name": "tier", "match": {"regex": "gold|platinum"}}]}, "target": "canary"},
    {"match": {"queryParameters": [{"name": "v", "match": {"range": {"start": 2, "end": 4}}}]}, "target": "stable"}
  ]}"#;

#[test]
fn hostile_headers_never_crash_the_native_filters() {
    let up = Upstreams::start();
    let front = start_canary_breaker_native(&up, CANARY, "{}", free_port())
        .unwrap_or_else(|e| panic!("front: {}\n{}", e.status, e.log));
    hostile_headers_never_crash(front);
}

#[test]
fn hostile_headers_never_crash_the_canary_as_cluster_specifier() {
    let up = Upstreams::start();
    let front = start_canary_specifier(&up, CANARY)
        .unwrap_or_else(|e| panic!("front: {}\n{}", e.status, e.log));
    hostile_headers_never_crash(front);
}

/// The hostile requests below, to the canary `front` (its Envoy and listener port) routes
/// with [`CANARY`]: each is served by a target (or refused by Envoy's codec), and Envoy
/// keeps running without a panic.
fn hostile_headers_never_crash((mut front, port): (Envoy, u16)) {
    let not_utf8: Vec<u8> = (0x80..=0xffu8).collect();
    let served = |body: &str| body == "stable" || body == "canary";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a 50 KB sticky key",
            get("/", &[("x-user-id", vec![b'u'; 50_000])]),
        ),
        (
            "a sticky key of non-UTF-8 bytes",
            get("/", &[("x-user-id", not_utf8.clone())]),
        ),
        (
            "a rule header of non-UTF-8 bytes",
            get("/", &[("x-canary", not_utf8.clone())]),
        ),
        (
            "a cookie of 300 pairs and non-UTF-8 bytes",
            get(
                "/",
                &[(
                    "cookie",
                    [
                        b"tier=\xffgold; ".to_vec(),
                        (0..300)
                            .flat_map(|i| format!("k{i}=v{i}; ").into_bytes())
                            .collect(),
                    ]
                    .concat(),
                )],
            ),
        ),
        (
            "90 headers",
            get(
                "/",
                &(0..90)
                    .map(|i| ("x-junk", format!("value-{i}").into_bytes()))
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "a client-set cluster header of 40 KB of non-UTF-8",
            get("/", &[("x-maille-cluster", vec![0xfe; 40_000])]),
        ),
        (
            "query values out of range and not UTF-8",
            get("/?v=%ff%fe&v=99999999999999999999999&v", &[]),
        ),
    ];
    for (what, request) in &cases {
        let (status, body) = raw(port, request);
        assert!(
            status == 200 && served(&body),
            "{what}: {status} {body:?}\n{}",
            front.log()
        );
    }
    // Sticky on bytes: the same non-UTF-8 key goes to the same target every time.
    let first = raw(port, &get("/", &[("x-user-id", not_utf8.clone())])).1;
    for _ in 0..20 {
        assert_eq!(
            raw(port, &get("/", &[("x-user-id", not_utf8.clone())])).1,
            first
        );
    }
    // What Envoy's codec refuses never reaches the filters, and leaves them working.
    let (nul, _) = raw(
        port,
        b"GET / HTTP/1.1\r\nhost: app\r\nx-user-id: a\0b\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(nul, 400);
    let (too_big, _) = raw(port, &get("/", &[("x-user-id", vec![b'u'; 70_000])]));
    assert_eq!(too_big, 431);

    assert!(front.running(), "Envoy exited:\n{}", front.log());
    let http = agent();
    let mut resp = http
        .get(&format!("http://127.0.0.1:{port}/"))
        .header("x-canary", "always")
        .call()
        .unwrap();
    assert_eq!(resp.body_mut().read_to_string().unwrap().trim(), "canary");
    let log = front.log();
    assert!(!log.contains("panic"), "{log}");
    let stats = front.stats("maille");
    assert!(
        stats
            .get("dynamicmodulescustom.maille_canary.decisions.canary.rule")
            .is_some_and(|n| *n >= 1),
        "{stats:?}"
    );
}

#[test]
fn clients_naming_clusters_cannot_grow_the_breaker_without_bound() {
    // The route takes its cluster from a header nobody rewrites, so the breaker (which
    // asks Envoy for the route's cluster and finds none) reads the names clients send.
    let up = Upstreams::start();
    let (admin, port) = (free_port(), free_port());
    let yaml = format!(
        r#"
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: ingress
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
          - name: maille.breaker
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{ name: maille_breaker, module: {{ local: {{ filename: "{so}" }} }} }}
              filter_name: maille_breaker
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - {{ name: stable, type: STATIC, load_assignment: {{ cluster_name: stable, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {stable} }} }} }} }}] }}] }} }}
"#,
        so = Runtime::Native.module("breaker").display(),
        stable = up.stable_port,
    );
    let mut front =
        Envoy::start(&yaml, admin).unwrap_or_else(|e| panic!("front: {}\n{}", e.status, e.log));
    let http = agent();
    // 1,050 made-up names (Envoy answers 503, no such cluster), one 300-byte name, and the
    // real cluster, which is tracked first and must stay tracked.
    let send = |cluster: &str| {
        http.get(&format!("http://127.0.0.1:{port}/"))
            .header("x-maille-cluster", cluster)
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(send("stable"), 200);
    for i in 0..1_050 {
        assert_eq!(send(&format!("made-up-{i}")), 503);
    }
    assert_eq!(send(&"x".repeat(300)), 503);
    assert_eq!(send("stable"), 200);
    assert!(front.running());

    let series = eventually(
        "the breaker's request counts",
        Duration::from_secs(5),
        || {
            let stats = front.stats("maille_breaker.requests");
            let ok = stats.get("dynamicmodulescustom.maille_breaker.requests.cluster.stable")
                == Some(&2);
            (ok, stats)
        },
    );
    // Every tracked cluster has its series, and no more than the store's bound are tracked.
    assert!(
        series.len() <= 1_000 && series.len() >= 990,
        "{} series of maille_breaker.requests",
        series.len()
    );
    // Envoy's log file is flushed a moment after the stats move.
    let log = eventually("the bound in Envoy's log", Duration::from_secs(10), || {
        let log = front.log();
        (log.contains("already tracking 1000 clusters"), log)
    });
    assert_eq!(
        log.matches("maille_breaker: not tracking a cluster")
            .count(),
        1,
        "logged once:\n{}",
        log.lines()
            .filter(|l| l.contains("not tracking"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(log.contains("already tracking 1000 clusters"), "{log}");
}
