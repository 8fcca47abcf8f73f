//! The host's ABI behaviour, shown with small modules written in WAT: strict mode, traps
//! with the module's message, shared data CAS between workers, timers on the host clock,
//! outgoing HTTP calls, local responses, properties, header maps, and WASI-style modules.

use std::time::Duration;

use maille_wasm_host::abi_pairs;
use maille_wasm_host::{Action, Error, Host, HttpCallResponse, LogLevel, Vm};

/// WAT string literal for raw bytes.
fn lit(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A module: the imports it names (`(func $x (param ...) (result ...))` lines after the
/// import name), a bump allocator, memory, and `body`.
fn module(imports: &[(&str, &str)], body: &str) -> String {
    let imports: String = imports
        .iter()
        .map(|(name, sig)| {
            let (m, n) = name.split_once('.').unwrap_or(("env", name));
            format!("(import \"{m}\" \"{n}\" (func ${n} {sig}))\n")
        })
        .collect();
    format!(
        r#"(module
{imports}
(memory (export "memory") 2)
(global $heap (mut i32) (i32.const 65536))
(func (export "malloc") (param $n i32) (result i32)
  (local $p i32)
  (local.set $p (global.get $heap))
  (global.set $heap (i32.add (global.get $heap) (local.get $n)))
  (local.get $p))
(func (export "proxy_abi_version_0_2_1"))
{body})"#
    )
}

fn configured(host: &Host, wat: &str) -> Vm {
    let mut vm = host.load_bytes(wat.as_bytes()).expect("load");
    vm.configure(b"").expect("configure");
    vm
}

const I5: &str = "(param i32 i32 i32 i32 i32) (result i32)";
const I3: &str = "(param i32 i32 i32) (result i32)";

#[test]
fn strict_mode_names_the_unimplemented_call_and_lenient_mode_returns_unimplemented() {
    let wat = module(
        &[(
            "proxy_call_foreign_function",
            "(param i32 i32 i32 i32 i32 i32) (result i32)",
        )],
        r#"(global $status (mut i32) (i32.const -1))
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (global.set $status (call $proxy_call_foreign_function
               (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
             (i32.const 0))
           (func (export "status") (result i32) (global.get $status))"#,
    );
    let host = Host::new();
    let mut vm = configured(&host, &wat);
    match vm.request(&[]) {
        Err(Error::Trap { callback, trap, .. }) => {
            assert_eq!(callback, "proxy_on_request_headers");
            assert!(
                trap.contains("unimplemented host call env.proxy_call_foreign_function"),
                "{trap}"
            );
        }
        other => panic!("strict mode did not trap: {other:?}"),
    }

    let mut vm = configured(&host, &wat);
    vm.strict(false);
    vm.request(&[]).expect("lenient");
    assert_eq!(
        vm.unimplemented_calls(),
        ["env.proxy_call_foreign_function"]
    );
}

#[test]
fn a_trap_carries_the_module_message() {
    let msg = "panicked at src/lib.rs:7: invariant broken";
    let wat = module(
        &[("proxy_log", I3)],
        &format!(
            r#"(data (i32.const 1024) "{msg}")
               (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                 (drop (call $proxy_log (i32.const 5) (i32.const 1024) (i32.const {len})))
                 unreachable)"#,
            len = msg.len()
        ),
    );
    let host = Host::new();
    let mut vm = configured(&host, &wat);
    let err = vm.request(&[]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("proxy_on_request_headers trapped"), "{text}");
    assert!(text.contains("unreachable"), "{text}");
    assert!(text.contains(msg), "{text}");
}

/// Gets `counter` in request headers, sets it in response headers with the CAS it got, and
/// reports the set's status in `x-cas-status` (one digit).
fn cas_module() -> String {
    module(
        &[
            ("proxy_get_shared_data", I5),
            ("proxy_set_shared_data", I5),
            ("proxy_replace_header_map_value", I5),
        ],
        r#"(data (i32.const 1024) "counter")
           (data (i32.const 1040) "x-cas-status")
           (data (i32.const 1056) "new")
           (global $cas (mut i32) (i32.const 0))
           (func (export "proxy_on_context_create") (param i32 i32))
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (drop (call $proxy_get_shared_data (i32.const 1024) (i32.const 7)
               (i32.const 2000) (i32.const 2004) (i32.const 2008)))
             (global.set $cas (i32.load (i32.const 2008)))
             (i32.const 0))
           (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
             (i32.store8 (i32.const 2100)
               (i32.add (i32.const 48)
                 (call $proxy_set_shared_data (i32.const 1024) (i32.const 7)
                   (i32.const 1056) (i32.const 3) (global.get $cas))))
             (drop (call $proxy_replace_header_map_value (i32.const 2)
               (i32.const 1040) (i32.const 12) (i32.const 2100) (i32.const 1)))
             (i32.const 0))"#,
    )
}

#[test]
fn shared_data_cas_between_two_workers_loses_no_update() {
    let host = Host::new();
    host.set_shared_data("counter", b"old");
    let wat = cas_module();
    let mut w1 = configured(&host, &wat);
    let mut w2 = configured(&host, &wat);

    let mut s1 = w1.stream();
    s1.request_headers(&[], true).unwrap(); // w1 reads, CAS c1
    {
        let mut s2 = w2.stream();
        s2.request_headers(&[], true).unwrap(); // w2 reads, CAS c1
        s2.response_headers(&[(":status", "200")], true).unwrap(); // w2 writes with c1: ok
        assert_eq!(s2.response_header("x-cas-status").as_deref(), Some("0"));
    }
    s1.response_headers(&[(":status", "200")], true).unwrap(); // w1 writes with stale c1
    assert_eq!(
        s1.response_header("x-cas-status").as_deref(),
        Some("8"),
        "CAS_MISMATCH"
    );
    drop(s1);
    let (value, _) = host.shared_data("counter").unwrap();
    assert_eq!(value, b"new");
}

#[test]
fn timers_follow_the_host_clock() {
    let wat = module(
        &[
            (
                "proxy_set_tick_period_milliseconds",
                "(param i32) (result i32)",
            ),
            (
                "proxy_define_metric",
                "(param i32 i32 i32 i32) (result i32)",
            ),
            ("proxy_increment_metric", "(param i32 i64) (result i32)"),
        ],
        r#"(data (i32.const 1024) "ticks")
           (func (export "proxy_on_configure") (param i32 i32) (result i32)
             (drop (call $proxy_set_tick_period_milliseconds (i32.const 1000)))
             (drop (call $proxy_define_metric (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 2000)))
             (i32.const 1))
           (func (export "proxy_on_tick") (param i32)
             (drop (call $proxy_increment_metric (i32.load (i32.const 2000)) (i64.const 1))))"#,
    );
    let host = Host::new();
    let mut vm = configured(&host, &wat);
    assert_eq!(vm.tick_period(), Some(Duration::from_secs(1)));
    assert_eq!(vm.advance(Duration::from_millis(3_500)).unwrap(), 3);
    assert_eq!(host.metric("ticks"), Some(3));
    assert_eq!(vm.advance(Duration::from_millis(500)).unwrap(), 1);
    assert_eq!(host.metric("ticks"), Some(4));
}

#[test]
fn http_calls_pause_the_stream_until_the_test_answers() {
    let pairs = abi_pairs(&[
        (":method", "GET"),
        (":path", "/check"),
        (":authority", "auth"),
    ]);
    let wat = module(
        &[
            (
                "proxy_http_call",
                "(param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)",
            ),
            ("proxy_get_header_map_value", I5),
            ("proxy_add_header_map_value", I5),
            ("proxy_continue_stream", "(param i32) (result i32)"),
        ],
        &format!(
            r#"(data (i32.const 1024) "auth-cluster")
               (data (i32.const 1100) ":status")
               (data (i32.const 1120) "x-auth-status")
               (data (i32.const 2048) "{pairs}")
               (func (export "proxy_on_context_create") (param i32 i32))
               (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                 (drop (call $proxy_http_call (i32.const 1024) (i32.const 12)
                   (i32.const 2048) (i32.const {plen}) (i32.const 0) (i32.const 0)
                   (i32.const 0) (i32.const 0) (i32.const 500) (i32.const 3000)))
                 (i32.const 1))
               (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
                 (drop (call $proxy_get_header_map_value (i32.const 6) (i32.const 1100) (i32.const 7)
                   (i32.const 3004) (i32.const 3008)))
                 (drop (call $proxy_add_header_map_value (i32.const 0) (i32.const 1120) (i32.const 13)
                   (i32.load (i32.const 3004)) (i32.load (i32.const 3008))))
                 (drop (call $proxy_continue_stream (i32.const 0))))"#,
            pairs = lit(&pairs),
            plen = pairs.len()
        ),
    );
    let host = Host::new();
    let mut vm = configured(&host, &wat);
    let mut s = vm.stream();
    assert_eq!(
        s.request_headers(&[(":path", "/")], true).unwrap(),
        Action::Pause
    );
    let calls = s.vm().http_calls().to_vec();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].upstream, "auth-cluster");
    assert_eq!(calls[0].header(":path"), Some("/check"));
    assert_eq!(calls[0].timeout, Duration::from_millis(500));
    s.vm()
        .respond(
            calls[0].token,
            HttpCallResponse {
                headers: vec![(":status".into(), "204".into())],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(s.resumed(), (1, 0));
    assert_eq!(s.request_header("x-auth-status").as_deref(), Some("204"));
    assert!(s.vm().http_calls().is_empty());
}

#[test]
fn local_responses_properties_and_header_maps() {
    let headers = abi_pairs(&[("x-why", "policy")]);
    let wat = module(
        &[
            (
                "proxy_send_local_response",
                "(param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)",
            ),
            ("proxy_get_property", "(param i32 i32 i32 i32) (result i32)"),
            ("proxy_get_header_map_pairs", I3),
            ("proxy_set_header_map_pairs", I3),
            ("proxy_replace_header_map_value", I5),
        ],
        &format!(
            r#"(data (i32.const 1024) "denied")
               (data (i32.const 1040) "go away")
               (data (i32.const 1056) "{headers}")
               (data (i32.const 1200) "cluster_name\00")
               (data (i32.const 1220) "x-cluster")
               (func (export "proxy_on_context_create") (param i32 i32))
               (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                 (drop (call $proxy_send_local_response (i32.const 403) (i32.const 1024) (i32.const 6)
                   (i32.const 1040) (i32.const 7) (i32.const 1056) (i32.const {hlen}) (i32.const -1)))
                 (i32.const 1))
               (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
                 ;; round-trip the whole map, then add the upstream cluster property
                 (drop (call $proxy_get_header_map_pairs (i32.const 2) (i32.const 3000) (i32.const 3004)))
                 (drop (call $proxy_set_header_map_pairs (i32.const 2)
                   (i32.load (i32.const 3000)) (i32.load (i32.const 3004))))
                 (drop (call $proxy_get_property (i32.const 1200) (i32.const 13) (i32.const 3008) (i32.const 3012)))
                 (drop (call $proxy_replace_header_map_value (i32.const 2) (i32.const 1220) (i32.const 9)
                   (i32.load (i32.const 3008)) (i32.load (i32.const 3012))))
                 (i32.const 0))"#,
            headers = lit(&headers),
            hlen = headers.len()
        ),
    );
    let host = Host::new();
    let mut vm = configured(&host, &wat);
    let mut s = vm.request(&[(":path", "/admin")]).unwrap();
    let local = s.local_response().expect("local response").clone();
    assert_eq!(local.status, 403);
    assert_eq!(local.details, "denied");
    assert_eq!(local.body, b"go away");
    assert_eq!(
        local.headers,
        vec![("x-why".to_owned(), "policy".to_owned())]
    );

    s.set_upstream_cluster("svc-blue");
    s.response_headers(&[(":status", "200"), ("Server", "x")], true)
        .unwrap();
    assert_eq!(s.response_header("server").as_deref(), Some("x"));
    assert_eq!(s.response_header("x-cluster").as_deref(), Some("svc-blue"));
}

#[test]
fn wasi_modules_load_and_write_to_the_log() {
    let wat = module(
        &[
            (
                "wasi_snapshot_preview1.fd_write",
                "(param i32 i32 i32 i32) (result i32)",
            ),
            (
                "wasi_snapshot_preview1.environ_sizes_get",
                "(param i32 i32) (result i32)",
            ),
            (
                "wasi_snapshot_preview1.clock_time_get",
                "(param i32 i64 i32) (result i32)",
            ),
            (
                "wasi_snapshot_preview1.random_get",
                "(param i32 i32) (result i32)",
            ),
            ("wasi_snapshot_preview1.proc_exit", "(param i32)"),
        ],
        r#"(data (i32.const 1024) "hello from wasi\n")
           (func (export "_start")
             (i32.store (i32.const 2000) (i32.const 1024))
             (i32.store (i32.const 2004) (i32.const 16))
             (drop (call $fd_write (i32.const 1) (i32.const 2000) (i32.const 1) (i32.const 2008)))
             (drop (call $environ_sizes_get (i32.const 2012) (i32.const 2016)))
             (drop (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 2024)))
             (drop (call $random_get (i32.const 2032) (i32.const 16))))
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (call $proc_exit (i32.const 3))
             (i32.const 0))"#,
    );
    let host = Host::new();
    let mut vm = configured(&host, &wat);
    assert_eq!(vm.log_lines(LogLevel::Info), ["hello from wasi"]);
    let err = vm.request(&[]).unwrap_err().to_string();
    assert!(err.contains("proc_exit(3)"), "{err}");
}

#[test]
fn response_code_and_request_duration_properties_follow_envoy() {
    // On response headers, copy two properties into shared data for the test to read.
    let wat = module(
        &[
            ("proxy_get_property", "(param i32 i32 i32 i32) (result i32)"),
            ("proxy_set_shared_data", I5),
        ],
        r#"(data (i32.const 1024) "response\00code\00")
           (data (i32.const 1040) "request\00duration\00")
           (data (i32.const 1060) "code")
           (data (i32.const 1070) "duration")
           (func (export "proxy_on_context_create") (param i32 i32))
           (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
             (drop (call $proxy_get_property (i32.const 1024) (i32.const 14) (i32.const 3000) (i32.const 3004)))
             (drop (call $proxy_set_shared_data (i32.const 1060) (i32.const 4)
               (i32.load (i32.const 3000)) (i32.load (i32.const 3004)) (i32.const 0)))
             (drop (call $proxy_get_property (i32.const 1040) (i32.const 17) (i32.const 3000) (i32.const 3004)))
             (drop (call $proxy_set_shared_data (i32.const 1070) (i32.const 8)
               (i32.load (i32.const 3000)) (i32.load (i32.const 3004)) (i32.const 0)))
             (i32.const 0))"#,
    );
    let host = Host::new();
    let mut vm = configured(&host, &wat);
    let mut s = vm.stream();
    s.request_headers(&[(":path", "/")], true).unwrap();
    host.advance(Duration::from_millis(250));
    s.response_headers(&[(":status", "503")], true).unwrap();
    drop(s);
    assert_eq!(host.shared_data("code").unwrap().0, 503i64.to_le_bytes());
    assert_eq!(
        host.shared_data("duration").unwrap().0,
        250_000_000i64.to_le_bytes()
    );
}
