//! The wrapper's logic against a fake Envoy: a callback table whose functions work on plain
//! Rust structs (a stream, a configuration) and record what the module asked for.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::abi::{self, EnvoyBuffer, EnvoyHttpHeader, Host, ModuleBuffer, ModuleHttpHeader};
use crate::hooks;
use crate::*;

// === the fake Envoy ===

thread_local! {
    static LOGS: RefCell<Vec<(u32, String)>> = const { RefCell::new(Vec::new()) };
}

fn logs() -> Vec<String> {
    LOGS.with(|l| l.borrow().iter().map(|(_, m)| m.clone()).collect())
}

/// A local reply: status, headers, body, details.
type LocalReply = (u32, Vec<(String, Vec<u8>)>, Vec<u8>, String);
/// A callout: cluster, headers, body, timeout.
type Callout = (String, Vec<(String, String)>, Vec<u8>, u64);
/// A callout answer as the test filter saw it: id, result, status, body.
type Answer = (u64, CalloutResult, Option<u16>, Vec<u8>);

#[derive(Default)]
struct FakeStream {
    request: Vec<(String, Vec<u8>)>,
    response: Vec<(String, Vec<u8>)>,
    cluster: Option<String>,
    code: Option<u64>,
    details: Option<String>,
    local_reply: Option<LocalReply>,
    counters: HashMap<usize, u64>,
    route_cleared: usize,
    /// The worker the stream runs on.
    worker: u32,
    /// Called from inside `send_response`, as Envoy's local reply re-enters the filter.
    reenter: Option<Box<dyn Fn(*mut c_void)>>,
}

#[derive(Default)]
struct FakeConfig {
    defined: Vec<(bool, String, Vec<String>)>,
    frozen: bool,
    series: HashMap<(bool, usize, Vec<String>), u64>,
    callouts: Vec<Callout>,
    scheduler: FakeScheduler,
}

#[derive(Default)]
struct FakeScheduler {
    commits: Mutex<Vec<u64>>,
    created: AtomicBool,
    deleted: AtomicBool,
    commits_after_delete: AtomicUsize,
}

unsafe fn bytes(ptr: *const c_char, len: usize) -> Vec<u8> {
    if ptr.is_null() {
        return Vec::new();
    }
    // SAFETY: the module passes buffers valid during the call.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len).to_vec() }
}

unsafe fn text(b: ModuleBuffer) -> String {
    // SAFETY: as in `bytes`.
    String::from_utf8(unsafe { bytes(b.ptr, b.length) }).expect("utf-8 from the module")
}

unsafe fn stream<'a>(p: *mut c_void) -> &'a mut FakeStream {
    // SAFETY: tests pass a `FakeStream` as Envoy's filter pointer.
    unsafe { &mut *p.cast::<FakeStream>() }
}

unsafe fn config<'a>(p: *mut c_void) -> &'a mut FakeConfig {
    // SAFETY: tests pass a `FakeConfig` as Envoy's configuration pointer.
    unsafe { &mut *p.cast::<FakeConfig>() }
}

unsafe extern "C" fn fake_log(level: u32, msg: ModuleBuffer) {
    // SAFETY: the module's message, valid during the call.
    let m = unsafe { text(msg) };
    LOGS.with(|l| l.borrow_mut().push((level, m)));
}

unsafe extern "C" fn fake_log_enabled(level: u32) -> bool {
    level >= abi::LOG_INFO
}

unsafe extern "C" fn fake_concurrency() -> u32 {
    2
}

unsafe extern "C" fn fake_worker_index(f: *mut c_void) -> u32 {
    // SAFETY: a `FakeStream`.
    unsafe { stream(f) }.worker
}

unsafe extern "C" fn fake_get_header(
    f: *mut c_void,
    kind: u32,
    key: ModuleBuffer,
    out: *mut EnvoyBuffer,
    index: usize,
    _count: *mut usize,
) -> bool {
    // SAFETY: a `FakeStream`; the key is the module's.
    let (s, key) = unsafe { (stream(f), text(key)) };
    let map = if kind == abi::HEADER_REQUEST {
        &s.request
    } else {
        &s.response
    };
    match map.iter().filter(|(k, _)| *k == key).nth(index) {
        Some((_, v)) => {
            // SAFETY: `out` is the module's valid out-pointer.
            unsafe {
                *out = EnvoyBuffer {
                    ptr: v.as_ptr().cast(),
                    length: v.len(),
                }
            };
            true
        }
        None => false,
    }
}

unsafe extern "C" fn fake_set_header(
    f: *mut c_void,
    kind: u32,
    key: ModuleBuffer,
    value: ModuleBuffer,
) -> bool {
    // SAFETY: a `FakeStream`; buffers are the module's.
    let (s, key) = unsafe { (stream(f), text(key)) };
    let map = if kind == abi::HEADER_REQUEST {
        &mut s.request
    } else {
        &mut s.response
    };
    map.retain(|(k, _)| *k != key);
    if !value.ptr.is_null() {
        // SAFETY: the module's value.
        map.push((key, unsafe { bytes(value.ptr, value.length) }));
    }
    true
}

unsafe extern "C" fn fake_send_response(
    f: *mut c_void,
    status: u32,
    headers: *mut ModuleHttpHeader,
    n: usize,
    body: ModuleBuffer,
    details: ModuleBuffer,
) {
    // SAFETY: a `FakeStream`; the header array and buffers are the module's.
    let s = unsafe { stream(f) };
    let list = (0..n)
        .map(|i| {
            // SAFETY: `n` headers at `headers`.
            let h = unsafe { &*headers.add(i) };
            // SAFETY: the module's header bytes.
            unsafe {
                (
                    String::from_utf8(bytes(h.key_ptr, h.key_length)).unwrap(),
                    bytes(h.value_ptr, h.value_length),
                )
            }
        })
        .collect();
    // SAFETY: the module's buffers.
    s.local_reply = Some(unsafe { (status, list, bytes(body.ptr, body.length), text(details)) });
    if let Some(reenter) = s.reenter.take() {
        reenter(f);
    }
}

unsafe extern "C" fn fake_cluster(f: *mut c_void, out: *mut EnvoyBuffer) -> bool {
    // SAFETY: a `FakeStream`.
    let s = unsafe { stream(f) };
    match &s.cluster {
        Some(c) => {
            // SAFETY: the module's out-pointer.
            unsafe {
                *out = EnvoyBuffer {
                    ptr: c.as_ptr().cast(),
                    length: c.len(),
                }
            };
            true
        }
        None => false,
    }
}

unsafe extern "C" fn fake_attr_string(f: *mut c_void, id: u32, out: *mut EnvoyBuffer) -> bool {
    // SAFETY: a `FakeStream`.
    let s = unsafe { stream(f) };
    match (&s.details, id) {
        (Some(d), abi::ATTRIBUTE_RESPONSE_CODE_DETAILS) => {
            // SAFETY: the module's out-pointer.
            unsafe {
                *out = EnvoyBuffer {
                    ptr: d.as_ptr().cast(),
                    length: d.len(),
                }
            };
            true
        }
        _ => false,
    }
}

unsafe extern "C" fn fake_attr_int(f: *mut c_void, id: u32, out: *mut u64) -> bool {
    // SAFETY: a `FakeStream`.
    let s = unsafe { stream(f) };
    match (s.code, id) {
        (Some(c), abi::ATTRIBUTE_RESPONSE_CODE) => {
            // SAFETY: the module's out-pointer.
            unsafe { *out = c };
            true
        }
        _ => false,
    }
}

unsafe extern "C" fn fake_clear_route(f: *mut c_void) {
    // SAFETY: a `FakeStream`.
    unsafe { stream(f) }.route_cleared += 1;
}

unsafe fn define(
    gauge: bool,
    c: *mut c_void,
    name: ModuleBuffer,
    labels: *mut ModuleBuffer,
    n: usize,
    id: *mut usize,
) -> u32 {
    // SAFETY: a `FakeConfig`; the module's buffers.
    let (cfg, name) = unsafe { (config(c), text(name)) };
    if cfg.frozen {
        return abi::METRICS_FROZEN;
    }
    // SAFETY: `n` label names at `labels`.
    let labels = (0..n).map(|i| unsafe { text(*labels.add(i)) }).collect();
    cfg.defined.push((gauge, name, labels));
    // SAFETY: the module's out-pointer.
    unsafe { *id = cfg.defined.len() };
    abi::METRICS_SUCCESS
}

unsafe extern "C" fn fake_define_counter(
    c: *mut c_void,
    name: ModuleBuffer,
    labels: *mut ModuleBuffer,
    n: usize,
    id: *mut usize,
) -> u32 {
    // SAFETY: forwarded as given.
    unsafe { define(false, c, name, labels, n, id) }
}

unsafe extern "C" fn fake_define_gauge(
    c: *mut c_void,
    name: ModuleBuffer,
    labels: *mut ModuleBuffer,
    n: usize,
    id: *mut usize,
) -> u32 {
    // SAFETY: forwarded as given.
    unsafe { define(true, c, name, labels, n, id) }
}

unsafe extern "C" fn fake_increment(
    f: *mut c_void,
    id: usize,
    _labels: *mut ModuleBuffer,
    _n: usize,
    v: u64,
) -> u32 {
    // SAFETY: a `FakeStream`.
    *unsafe { stream(f) }.counters.entry(id).or_default() += v;
    abi::METRICS_SUCCESS
}

unsafe fn config_series(
    gauge: bool,
    c: *mut c_void,
    id: usize,
    labels: *mut ModuleBuffer,
    n: usize,
    v: u64,
) -> u32 {
    // SAFETY: a `FakeConfig`.
    let cfg = unsafe { config(c) };
    let Some((_, _, names)) = cfg.defined.get(id.wrapping_sub(1)) else {
        return abi::METRICS_NOT_FOUND;
    };
    // Envoy reads `names.len()` values whatever `n` says; the fake checks instead.
    assert_eq!(n, names.len(), "label count reached Envoy unchecked");
    // SAFETY: `n` values at `labels`.
    let values = (0..n).map(|i| unsafe { text(*labels.add(i)) }).collect();
    let e = cfg.series.entry((gauge, id, values)).or_default();
    if gauge {
        *e = v;
    } else {
        *e += v;
    }
    abi::METRICS_SUCCESS
}

unsafe extern "C" fn fake_config_increment(
    c: *mut c_void,
    id: usize,
    labels: *mut ModuleBuffer,
    n: usize,
    v: u64,
) -> u32 {
    // SAFETY: forwarded as given.
    unsafe { config_series(false, c, id, labels, n, v) }
}

unsafe extern "C" fn fake_config_set_gauge(
    c: *mut c_void,
    id: usize,
    labels: *mut ModuleBuffer,
    n: usize,
    v: u64,
) -> u32 {
    // SAFETY: forwarded as given.
    unsafe { config_series(true, c, id, labels, n, v) }
}

unsafe extern "C" fn fake_scheduler_new(c: *mut c_void) -> *mut c_void {
    // SAFETY: a `FakeConfig`.
    let s = &unsafe { config(c) }.scheduler;
    s.created.store(true, Ordering::SeqCst);
    (s as *const FakeScheduler).cast_mut().cast()
}

unsafe extern "C" fn fake_scheduler_commit(s: *mut c_void, event: u64) {
    // SAFETY: the `FakeScheduler` of a live `FakeConfig`.
    let s = unsafe { &*s.cast::<FakeScheduler>() };
    if s.deleted.load(Ordering::SeqCst) {
        s.commits_after_delete.fetch_add(1, Ordering::SeqCst);
    }
    s.commits.lock().unwrap().push(event);
}

unsafe extern "C" fn fake_scheduler_delete(s: *mut c_void) {
    // SAFETY: as above.
    unsafe { &*s.cast::<FakeScheduler>() }
        .deleted
        .store(true, Ordering::SeqCst);
}

unsafe extern "C" fn fake_callout(
    c: *mut c_void,
    id: *mut u64,
    cluster: ModuleBuffer,
    headers: *mut ModuleHttpHeader,
    n: usize,
    body: ModuleBuffer,
    timeout: u64,
) -> u32 {
    // SAFETY: a `FakeConfig`; the module's buffers.
    let (cfg, cluster) = unsafe { (config(c), text(cluster)) };
    if cluster == "missing" {
        return abi::CALLOUT_INIT_CLUSTER_NOT_FOUND;
    }
    let list = (0..n)
        .map(|i| {
            // SAFETY: `n` headers at `headers`.
            let h = unsafe { &*headers.add(i) };
            // SAFETY: the module's header bytes.
            unsafe {
                (
                    String::from_utf8(bytes(h.key_ptr, h.key_length)).unwrap(),
                    String::from_utf8(bytes(h.value_ptr, h.value_length)).unwrap(),
                )
            }
        })
        .collect();
    // SAFETY: the module's body.
    cfg.callouts.push((
        cluster,
        list,
        unsafe { bytes(body.ptr, body.length) },
        timeout,
    ));
    // SAFETY: the module's out-pointer.
    unsafe { *id = cfg.callouts.len() as u64 };
    abi::CALLOUT_INIT_SUCCESS
}

/// One `select` call of a cluster specifier: the request's headers and the cluster chosen.
#[derive(Default)]
struct FakeSelect {
    request: Vec<(String, Vec<u8>)>,
    cluster: Option<String>,
}

unsafe extern "C" fn fake_specifier_get_header(
    ctx: *mut c_void,
    key: ModuleBuffer,
    out: *mut EnvoyBuffer,
    index: usize,
    _count: *mut usize,
) -> bool {
    // SAFETY: tests pass a `FakeSelect` as Envoy's context; the key is the module's.
    let (s, key) = unsafe { (&*ctx.cast::<FakeSelect>(), text(key)) };
    match s.request.iter().filter(|(k, _)| *k == key).nth(index) {
        Some((_, v)) => {
            // SAFETY: `out` is the module's valid out-pointer.
            unsafe {
                *out = EnvoyBuffer {
                    ptr: v.as_ptr().cast(),
                    length: v.len(),
                }
            };
            true
        }
        None => false,
    }
}

unsafe extern "C" fn fake_specifier_set_cluster(ctx: *mut c_void, name: ModuleBuffer) {
    // SAFETY: a `FakeSelect`; the name is the module's.
    let (s, name) = unsafe { (&mut *ctx.cast::<FakeSelect>(), text(name)) };
    s.cluster = Some(name);
}

fn fake_host() -> Host {
    Host {
        log: fake_log,
        log_enabled: fake_log_enabled,
        get_concurrency: fake_concurrency,
        worker_index: fake_worker_index,
        get_header: fake_get_header,
        set_header: fake_set_header,
        send_response: fake_send_response,
        get_cluster_name: fake_cluster,
        get_attribute_string: fake_attr_string,
        get_attribute_int: fake_attr_int,
        clear_route_cache: fake_clear_route,
        define_counter: fake_define_counter,
        define_gauge: fake_define_gauge,
        increment_counter: fake_increment,
        config_increment_counter: fake_config_increment,
        config_set_gauge: fake_config_set_gauge,
        scheduler_new: fake_scheduler_new,
        scheduler_commit: fake_scheduler_commit,
        scheduler_delete: fake_scheduler_delete,
        http_callout: fake_callout,
        specifier_get_header: fake_specifier_get_header,
        specifier_set_cluster: fake_specifier_set_cluster,
        specifier_define_counter: fake_define_counter,
        specifier_increment_counter: fake_config_increment,
    }
}

fn install() {
    let v = hooks::init(Ok(fake_host()));
    // SAFETY: `init` returns a NUL-terminated static string on success.
    assert_eq!(unsafe { CStr::from_ptr(v) }, abi::ABI_VERSION);
}

// === a filter to drive ===

#[derive(Debug)]
struct TestConfig {
    hits: Counter,
    by_cluster: CounterVec,
    state: GaugeVec,
    main_calls: Mutex<Vec<Wake>>,
    callouts: Mutex<Vec<Answer>>,
    reuses: AtomicUsize,
}

struct TestFilter {
    seen: Vec<String>,
}

impl HttpFilterConfig for TestConfig {
    const NAME: &'static str = "test_filter";
    type Filter = TestFilter;

    fn new(cx: &mut ConfigContext<'_>, config: &[u8]) -> Result<Self, String> {
        match config {
            b"bad" => {
                return Err(
                    "invalid configuration: windowMillis: must be 1000..=600000, got 5".into(),
                )
            }
            b"panic" => panic!("config exploded"),
            b"tick" => cx.tick_every(Duration::from_millis(5)),
            _ => {}
        }
        Ok(TestConfig {
            hits: cx.define_counter("test.hits").map_err(|e| e.to_string())?,
            by_cluster: cx
                .define_counter_vec("test.requests", &["cluster"])
                .map_err(|e| e.to_string())?,
            state: cx
                .define_gauge_vec("test.state", &["cluster"])
                .map_err(|e| e.to_string())?,
            main_calls: Mutex::new(Vec::new()),
            callouts: Mutex::new(Vec::new()),
            reuses: AtomicUsize::new(0),
        })
    }

    fn new_filter(&self) -> TestFilter {
        TestFilter { seen: Vec::new() }
    }

    fn reuse_filter(&self, filter: &mut TestFilter) {
        self.reuses.fetch_add(1, Ordering::SeqCst);
        filter.seen = vec!["reused".into()];
    }

    fn on_main_thread(&self, main: &mut MainThread<'_>, why: Wake) {
        self.main_calls.lock().unwrap().push(why);
        main.increment_counter_vec(self.by_cluster, &["svc"], 3)
            .unwrap();
        main.set_gauge_vec(self.state, &["svc"], 2).unwrap();
        assert_eq!(
            main.increment_counter_vec(self.by_cluster, &["svc", "extra"], 1),
            Err(MetricError::LabelCount {
                expected: 1,
                got: 2
            })
        );
        main.http_callout(
            "control",
            &[(":method", "POST"), (":path", "/x"), ("host", "ctl")],
            b"{}",
            250,
        )
        .unwrap();
        assert_eq!(
            main.http_callout("missing", &[], b"", 1),
            Err(CalloutError::ClusterNotFound)
        );
    }

    fn on_callout_done(&self, _: &mut MainThread<'_>, id: u64, r: &CalloutResponse<'_>) {
        self.callouts
            .lock()
            .unwrap()
            .push((id, r.result, r.status(), r.body()));
    }
}

impl HttpFilter for TestFilter {
    type Config = TestConfig;

    fn on_request_headers(
        &mut self,
        config: &Configured<TestConfig>,
        envoy: &mut HttpFilterHandle<'_>,
        _eos: bool,
    ) -> HeadersStatus {
        let mode = envoy.request_header("x-mode").map(<[u8]>::to_vec);
        match mode.as_deref() {
            Some(b"panic") => panic!("hook exploded"),
            Some(b"reply") => {
                envoy.send_response(503, &[("retry-after", b"2")], b"closed\n", "test_reply");
                return HeadersStatus::StopIteration;
            }
            _ => {}
        }
        let copied = envoy.request_header("x-in").map(<[u8]>::to_vec);
        if let Some(v) = copied {
            envoy.set_request_header("x-out", &v);
        }
        envoy.remove_request_header("x-secret");
        envoy.clear_route_cache();
        let cluster = envoy
            .route_cluster()
            .map(|c| String::from_utf8_lossy(c).into_owned());
        self.seen.push(format!("cluster={cluster:?}"));
        envoy.increment_counter(config.hits, 1).unwrap();
        config.notify_main_thread();
        HeadersStatus::Continue
    }

    fn on_response_headers(
        &mut self,
        _config: &Configured<TestConfig>,
        envoy: &mut HttpFilterHandle<'_>,
        _eos: bool,
    ) -> HeadersStatus {
        let status = envoy.response_header(":status").map(<[u8]>::to_vec);
        let code = envoy.response_code();
        let details = envoy.response_code_details().map(<[u8]>::to_vec);
        let summary = format!("{status:?} {code:?} {details:?} after {:?}", self.seen);
        envoy.set_request_header("x-summary", summary.as_bytes());
        HeadersStatus::Continue
    }

    fn request_headers_panicked(
        _config: &Configured<TestConfig>,
        envoy: &mut HttpFilterHandle<'_>,
    ) -> HeadersStatus {
        envoy.remove_request_header("x-maille-cluster");
        HeadersStatus::Continue
    }
}

fn envoy_ptr<T>(t: &mut T) -> *mut c_void {
    (t as *mut T).cast()
}

fn load(cfg: &mut FakeConfig, json: &[u8]) -> *const c_void {
    // SAFETY: the fake configuration stands for Envoy's; the buffers are valid.
    unsafe {
        hooks::config_new::<TestConfig>(
            envoy_ptr(cfg),
            EnvoyBuffer {
                ptr: b"test".as_ptr().cast(),
                length: 4,
            },
            EnvoyBuffer {
                ptr: json.as_ptr().cast(),
                length: json.len(),
            },
        )
    }
}

fn request_header_value(s: &FakeStream, name: &str) -> Option<String> {
    s.request
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

// === tests ===

#[test]
fn resolution_names_the_first_missing_callback() {
    let present = fake_log as unsafe extern "C" fn(u32, ModuleBuffer) as *mut c_void;
    assert!(Host::resolve(|_| present).is_ok());
    for missing in Host::SYMBOLS {
        let err = Host::resolve(|name| {
            if name.to_bytes() == missing.as_bytes() {
                std::ptr::null_mut()
            } else {
                present
            }
        })
        .unwrap_err();
        assert_eq!(err, *missing);
    }
    // Loading without them answers null (Envoy then unloads the module) and says which.
    assert!(hooks::init(Err("envoy_dynamic_module_callback_http_get_header")).is_null());
}

#[test]
fn a_refused_or_panicking_configuration_is_logged_by_name_and_not_loaded() {
    install();
    let mut cfg = FakeConfig::default();
    assert!(load(&mut cfg, b"bad").is_null());
    assert!(load(&mut cfg, b"panic").is_null());
    let l = logs();
    assert!(
        l.iter().any(|m| m
            == "test_filter: invalid configuration: windowMillis: must be 1000..=600000, got 5"),
        "{l:?}"
    );
    assert!(
        l.iter().any(
            |m| m.starts_with("test_filter: panic in configuration: config exploded at ")
                && m.contains("tests.rs:")
        ),
        "{l:?}"
    );
    // A refused configuration made no scheduler.
    assert!(!cfg.scheduler.created.load(Ordering::SeqCst));
}

#[test]
fn metrics_are_defined_at_load_and_frozen_metrics_are_an_error() {
    install();
    let mut cfg = FakeConfig::default();
    let module = load(&mut cfg, b"{}");
    assert!(!module.is_null());
    assert_eq!(
        cfg.defined,
        [
            (false, "test.hits".to_owned(), vec![]),
            (
                false,
                "test.requests".to_owned(),
                vec!["cluster".to_owned()]
            ),
            (true, "test.state".to_owned(), vec!["cluster".to_owned()]),
        ]
    );
    let mut frozen = FakeConfig {
        frozen: true,
        ..FakeConfig::default()
    };
    assert!(load(&mut frozen, b"{}").is_null());
    assert!(
        logs()
            .iter()
            .any(|m| m == "test_filter: metrics are frozen once the configuration has loaded"),
        "{:?}",
        logs()
    );
    // SAFETY: the pointer `config_new` returned, destroyed once.
    unsafe { hooks::config_destroy::<TestConfig>(module) };
    assert!(cfg.scheduler.deleted.load(Ordering::SeqCst));
}

#[test]
fn hooks_read_and_write_headers_count_and_see_the_route() {
    install();
    let mut cfg = FakeConfig::default();
    let module = load(&mut cfg, b"{}");
    let mut s = FakeStream {
        request: vec![
            ("x-in".into(), vec![0xff, b'a', 0x00]),
            ("x-secret".into(), b"1".to_vec()),
        ],
        cluster: Some("svc".into()),
        ..FakeStream::default()
    };
    let env = envoy_ptr(&mut s);
    // SAFETY: the configuration and stream are live fakes; each hook gets its own pointers.
    unsafe {
        let f = hooks::filter_new::<TestConfig>(module, env);
        assert!(!f.is_null());
        assert_eq!(
            hooks::request_headers::<TestConfig>(env, f, true),
            abi::STATUS_CONTINUE
        );
        stream(env).response = vec![(":status".into(), b"503".to_vec())];
        stream(env).code = Some(503);
        stream(env).details =
            Some("upstream_reset_before_response_started{connection_failure}".into());
        assert_eq!(
            hooks::response_headers::<TestConfig>(env, f, false),
            abi::STATUS_CONTINUE
        );
        hooks::filter_destroy::<TestConfig>(f);
    }
    // Bytes, not text: a value that is not UTF-8 is copied as it was.
    assert_eq!(
        s.request
            .iter()
            .find(|(k, _)| k == "x-out")
            .map(|(_, v)| v.clone()),
        Some(vec![0xff, b'a', 0x00])
    );
    assert_eq!(request_header_value(&s, "x-secret"), None);
    assert_eq!(s.route_cleared, 1);
    assert_eq!(s.counters.get(&1), Some(&1), "test.hits is id 1");
    assert_eq!(
        request_header_value(&s, "x-summary").as_deref(),
        Some(
            "Some([53, 48, 51]) Some(503) Some([117, 112, 115, 116, 114, 101, 97, 109, 95, 114, 101, 115, 101, 116, 95, 98, 101, 102, 111, 114, 101, 95, 114, 101, 115, 112, 111, 110, 115, 101, 95, 115, 116, 97, 114, 116, 101, 100, 123, 99, 111, 110, 110, 101, 99, 116, 105, 111, 110, 95, 102, 97, 105, 108, 117, 114, 101, 125]) after [\"cluster=Some(\\\"svc\\\")\"]"
        )
    );
    // The stream asked for the main thread once; it runs there with the configuration's
    // metrics and callouts.
    assert_eq!(*cfg.scheduler.commits.lock().unwrap(), [2]);
    // SAFETY: Envoy's main thread runs the event for the live configuration.
    unsafe { hooks::config_scheduled::<TestConfig>(envoy_ptr(&mut cfg), module, 2) };
    assert_eq!(
        cfg.series.get(&(false, 2, vec!["svc".to_owned()])),
        Some(&3)
    );
    assert_eq!(cfg.series.get(&(true, 3, vec!["svc".to_owned()])), Some(&2));
    assert_eq!(
        cfg.callouts,
        [(
            "control".to_owned(),
            vec![
                (":method".to_owned(), "POST".to_owned()),
                (":path".to_owned(), "/x".to_owned()),
                ("host".to_owned(), "ctl".to_owned())
            ],
            b"{}".to_vec(),
            250
        )]
    );
    // SAFETY: the pointer `config_new` returned, destroyed once.
    unsafe { hooks::config_destroy::<TestConfig>(module) };
}

#[test]
fn notifications_before_the_main_thread_runs_are_merged() {
    install();
    let mut cfg = FakeConfig::default();
    let module = load(&mut cfg, b"{}");
    // SAFETY: the pointer `config_new` returned, alive until destroyed below.
    let configured = unsafe { &*module.cast::<Configured<TestConfig>>() };
    for _ in 0..5 {
        configured.notify_main_thread();
    }
    assert_eq!(*cfg.scheduler.commits.lock().unwrap(), [2]);
    // SAFETY: as above, on the main thread.
    unsafe { hooks::config_scheduled::<TestConfig>(envoy_ptr(&mut cfg), module, 2) };
    configured.notify_main_thread();
    assert_eq!(*cfg.scheduler.commits.lock().unwrap(), [2, 2]);
    assert_eq!(*configured.main_calls.lock().unwrap(), [Wake::Notified]);
    // SAFETY: destroyed once.
    unsafe { hooks::config_destroy::<TestConfig>(module) };
}

#[test]
fn a_panicking_hook_is_logged_recovered_and_the_stream_left_alone() {
    install();
    let mut cfg = FakeConfig::default();
    let module = load(&mut cfg, b"{}");
    let mut s = FakeStream {
        request: vec![
            ("x-mode".into(), b"panic".to_vec()),
            ("x-maille-cluster".into(), b"chosen-by-client".to_vec()),
        ],
        ..FakeStream::default()
    };
    let env = envoy_ptr(&mut s);
    // SAFETY: live fakes.
    unsafe {
        let f = hooks::filter_new::<TestConfig>(module, env);
        assert_eq!(
            hooks::request_headers::<TestConfig>(env, f, true),
            abi::STATUS_CONTINUE
        );
        // Poisoned: later hooks do not run the filter (it would write x-summary).
        stream(env).response = vec![(":status".into(), b"200".to_vec())];
        assert_eq!(
            hooks::response_headers::<TestConfig>(env, f, false),
            abi::STATUS_CONTINUE
        );
        hooks::filter_destroy::<TestConfig>(f);
    }
    assert_eq!(
        request_header_value(&s, "x-maille-cluster"),
        None,
        "recovery ran"
    );
    assert_eq!(request_header_value(&s, "x-summary"), None);
    assert!(
        logs()
            .iter()
            .any(|m| m.starts_with("test_filter: panic in on_request_headers: hook exploded at ")),
        "{:?}",
        logs()
    );
    // SAFETY: destroyed once.
    unsafe { hooks::config_destroy::<TestConfig>(module) };
}

#[test]
fn a_hook_envoy_reenters_from_a_local_reply_does_not_touch_the_filter() {
    install();
    let mut cfg = FakeConfig::default();
    let module = load(&mut cfg, b"{}");
    let mut s = FakeStream {
        request: vec![("x-mode".into(), b"reply".to_vec())],
        ..FakeStream::default()
    };
    let env = envoy_ptr(&mut s);
    // SAFETY: live fakes.
    let f = unsafe { hooks::filter_new::<TestConfig>(module, env) };
    let reentered = std::rc::Rc::new(std::cell::Cell::new(None));
    let seen = reentered.clone();
    let fp = f as usize;
    // SAFETY: a live fake stream.
    unsafe { stream(env) }.reenter = Some(Box::new(move |e| {
        // SAFETY: the same live stream, while its request hook is running.
        seen.set(Some(unsafe {
            hooks::response_headers::<TestConfig>(e, fp as *const c_void, true)
        }));
    }));
    // SAFETY: live fakes.
    unsafe {
        assert_eq!(
            hooks::request_headers::<TestConfig>(env, f, true),
            abi::STATUS_STOP_ITERATION
        );
        hooks::filter_destroy::<TestConfig>(f);
    }
    assert_eq!(reentered.get(), Some(abi::STATUS_CONTINUE));
    assert_eq!(
        request_header_value(&s, "x-summary"),
        None,
        "filter not re-entered"
    );
    assert_eq!(
        s.local_reply,
        Some((
            503,
            vec![("retry-after".to_owned(), b"2".to_vec())],
            b"closed\n".to_vec(),
            "test_reply".to_owned()
        ))
    );
    // SAFETY: destroyed once.
    unsafe { hooks::config_destroy::<TestConfig>(module) };
}

#[test]
fn the_ticker_wakes_the_main_thread_and_stops_before_the_scheduler_goes() {
    install();
    let mut cfg = FakeConfig::default();
    let module = load(&mut cfg, b"tick");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cfg.scheduler.commits.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "no ticks");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(cfg
        .scheduler
        .commits
        .lock()
        .unwrap()
        .iter()
        .all(|e| *e == 1));
    // SAFETY: destroyed once; the ticker is joined first.
    unsafe { hooks::config_destroy::<TestConfig>(module) };
    assert!(cfg.scheduler.deleted.load(Ordering::SeqCst));
    let after = cfg.scheduler.commits.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(cfg.scheduler.commits.lock().unwrap().len(), after);
    assert_eq!(cfg.scheduler.commits_after_delete.load(Ordering::SeqCst), 0);
}

#[test]
fn callout_answers_reach_the_configuration_with_status_and_body() {
    install();
    let mut cfg = FakeConfig::default();
    let module = load(&mut cfg, b"{}");
    let headers = [
        EnvoyHttpHeader {
            key_ptr: b":status".as_ptr().cast(),
            key_length: 7,
            value_ptr: b"202".as_ptr().cast(),
            value_length: 3,
        },
        EnvoyHttpHeader {
            key_ptr: b"x".as_ptr().cast(),
            key_length: 1,
            value_ptr: std::ptr::null(),
            value_length: 0,
        },
    ];
    let body = [
        EnvoyBuffer {
            ptr: b"o".as_ptr().cast(),
            length: 1,
        },
        EnvoyBuffer {
            ptr: b"k".as_ptr().cast(),
            length: 1,
        },
    ];
    // SAFETY: Envoy's side of two callouts: one answered, one reset with nothing.
    unsafe {
        hooks::config_callout_done::<TestConfig>(
            envoy_ptr(&mut cfg),
            module,
            7,
            abi::CALLOUT_SUCCESS,
            headers.as_ptr(),
            2,
            body.as_ptr(),
            2,
        );
        hooks::config_callout_done::<TestConfig>(
            envoy_ptr(&mut cfg),
            module,
            8,
            abi::CALLOUT_RESET,
            std::ptr::null(),
            0,
            std::ptr::null(),
            0,
        );
    }
    // SAFETY: the live configuration.
    let configured = unsafe { &*module.cast::<Configured<TestConfig>>() };
    assert_eq!(
        *configured.callouts.lock().unwrap(),
        [
            (7, CalloutResult::Success, Some(202), b"ok".to_vec()),
            (8, CalloutResult::Reset, None, vec![])
        ]
    );
    // SAFETY: destroyed once.
    unsafe { hooks::config_destroy::<TestConfig>(module) };
}

#[test]
fn null_pointers_from_envoy_are_answered_with_defaults() {
    install();
    // SAFETY: null module pointers are what Envoy passes after a failed filter_new.
    unsafe {
        assert_eq!(
            hooks::request_headers::<TestConfig>(std::ptr::null_mut(), std::ptr::null(), true),
            abi::STATUS_CONTINUE
        );
        assert!(hooks::filter_new::<TestConfig>(std::ptr::null(), std::ptr::null_mut()).is_null());
        hooks::filter_destroy::<TestConfig>(std::ptr::null());
        hooks::config_destroy::<TestConfig>(std::ptr::null());
    }
}

#[test]
fn the_export_macro_emits_every_hook_envoy_1_40_requires() {
    // The names `filter_config.cc` of Envoy 1.40 resolves without a fallback, plus
    // program_init; `exports` below is what the macro emits in `exported` (a test-only
    // module invoking it).
    let required = [
        "envoy_dynamic_module_on_program_init",
        "envoy_dynamic_module_on_http_filter_config_new",
        "envoy_dynamic_module_on_http_filter_config_destroy",
        "envoy_dynamic_module_on_http_filter_new",
        "envoy_dynamic_module_on_http_filter_request_headers",
        "envoy_dynamic_module_on_http_filter_request_body",
        "envoy_dynamic_module_on_http_filter_request_trailers",
        "envoy_dynamic_module_on_http_filter_response_headers",
        "envoy_dynamic_module_on_http_filter_response_body",
        "envoy_dynamic_module_on_http_filter_response_trailers",
        "envoy_dynamic_module_on_http_filter_stream_complete",
        "envoy_dynamic_module_on_http_filter_destroy",
        "envoy_dynamic_module_on_http_filter_http_callout_done",
        "envoy_dynamic_module_on_http_filter_http_stream_headers",
        "envoy_dynamic_module_on_http_filter_http_stream_data",
        "envoy_dynamic_module_on_http_filter_http_stream_trailers",
        "envoy_dynamic_module_on_http_filter_http_stream_complete",
        "envoy_dynamic_module_on_http_filter_http_stream_reset",
        "envoy_dynamic_module_on_http_filter_scheduled",
        "envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark",
        "envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark",
    ];
    let source = include_str!("lib.rs");
    for name in required {
        assert!(
            source.contains(&format!("extern \"C\" fn {name}(")),
            "export_http_filter! does not emit {name}"
        );
    }
    // And the exported symbols link and answer: the macro is expanded in this test binary.
    extern "C" {
        fn envoy_dynamic_module_on_program_init() -> *const c_char;
    }
    install();
    // SAFETY: the symbol the macro exports below; program_init takes no arguments.
    let v = unsafe { envoy_dynamic_module_on_program_init() };
    // Without Envoy in the process the resolution fails and it answers null; the fake
    // table installed above stays.
    if !v.is_null() {
        // SAFETY: non-null: the static version string.
        assert_eq!(unsafe { CStr::from_ptr(v) }, abi::ABI_VERSION);
    }
}

crate::export_http_filter!(TestConfig);

#[test]
fn stream_objects_are_reused_per_worker_and_start_fresh() {
    install();
    let mut cfg = FakeConfig::default();
    let module = load(&mut cfg, b"{}");
    let run = |s: &mut FakeStream| -> usize {
        let env = envoy_ptr(s);
        // SAFETY: live fakes; one stream at a time, destroyed at the end.
        unsafe {
            let f = hooks::filter_new::<TestConfig>(module, env);
            hooks::request_headers::<TestConfig>(env, f, true);
            stream(env).response = vec![(":status".into(), b"200".to_vec())];
            hooks::response_headers::<TestConfig>(env, f, false);
            hooks::filter_destroy::<TestConfig>(f);
            f as usize
        }
    };
    // SAFETY: the live configuration.
    let configured = unsafe { &*module.cast::<Configured<TestConfig>>() };
    let mut a = FakeStream::default();
    let first = run(&mut a);
    let mut b = FakeStream {
        request: vec![("x-mode".into(), b"panic".to_vec())],
        ..FakeStream::default()
    };
    assert_eq!(run(&mut b), first, "worker 0 reused its spare object");
    assert_eq!(configured.reuses.load(Ordering::SeqCst), 1);
    // B panicked: its object is dropped, not pooled, so C gets a new filter.
    let mut c = FakeStream {
        cluster: Some("c".into()),
        ..FakeStream::default()
    };
    run(&mut c);
    assert_eq!(
        configured.reuses.load(Ordering::SeqCst),
        1,
        "a poisoned object came back"
    );
    assert_eq!(
        request_header_value(&c, "x-summary").as_deref(),
        Some("Some([50, 48, 48]) None None after [\"cluster=Some(\\\"c\\\")\"]")
    );
    // C's object is pooled and reused, through `reuse_filter`.
    let mut c2 = FakeStream::default();
    run(&mut c2);
    assert_eq!(configured.reuses.load(Ordering::SeqCst), 2);
    assert!(
        request_header_value(&c2, "x-summary")
            .is_some_and(|s| s.ends_with("after [\"reused\", \"cluster=None\"]")),
        "{:?}",
        request_header_value(&c2, "x-summary")
    );
    // Two streams alive at once on worker 0: when both end, one waits in the atomic slot and
    // one in the locked list; two new streams get both back.
    let mut s1 = FakeStream::default();
    let mut s2 = FakeStream::default();
    let (e1, e2) = (envoy_ptr(&mut s1), envoy_ptr(&mut s2));
    // SAFETY: live fakes; each stream destroyed once.
    unsafe {
        let f1 = hooks::filter_new::<TestConfig>(module, e1);
        let f2 = hooks::filter_new::<TestConfig>(module, e2);
        assert_ne!(f1, f2);
        hooks::filter_destroy::<TestConfig>(f1);
        hooks::filter_destroy::<TestConfig>(f2);
        let before = configured.reuses.load(Ordering::SeqCst);
        let g1 = hooks::filter_new::<TestConfig>(module, e1);
        let g2 = hooks::filter_new::<TestConfig>(module, e2);
        assert_eq!(configured.reuses.load(Ordering::SeqCst), before + 2);
        let mut got = [g1 as usize, g2 as usize];
        let mut had = [f1 as usize, f2 as usize];
        got.sort_unstable();
        had.sort_unstable();
        assert_eq!(got, had);
        hooks::filter_destroy::<TestConfig>(g1);
        hooks::filter_destroy::<TestConfig>(g2);
    }
    // Another worker has its own pool; a worker Envoy numbers beyond the concurrency it
    // announced still gets a working (unpooled) object.
    let mut other = FakeStream {
        worker: 1,
        ..FakeStream::default()
    };
    run(&mut other);
    // (5: the two single reuses above, f1 taking c2's object, and g1 and g2.)
    assert_eq!(
        configured.reuses.load(Ordering::SeqCst),
        5,
        "worker 1's pool was empty"
    );
    let mut d = FakeStream {
        worker: 9,
        cluster: Some("d".into()),
        ..FakeStream::default()
    };
    run(&mut d);
    assert!(request_header_value(&d, "x-summary").is_some_and(|s| s.contains(r#"Some(\"d\")"#)));
    // SAFETY: destroyed once, after its streams.
    unsafe { hooks::config_destroy::<TestConfig>(module) };
}

/// A filter without per-stream state.
#[derive(Debug)]
struct StatelessConfig;

struct StatelessFilter;

impl HttpFilterConfig for StatelessConfig {
    const NAME: &'static str = "stateless";
    type Filter = StatelessFilter;

    fn new(_: &mut ConfigContext<'_>, _: &[u8]) -> Result<Self, String> {
        Ok(StatelessConfig)
    }

    fn new_filter(&self) -> StatelessFilter {
        StatelessFilter
    }
}

impl HttpFilter for StatelessFilter {
    type Config = StatelessConfig;

    fn on_request_headers(
        &mut self,
        _: &Configured<StatelessConfig>,
        envoy: &mut HttpFilterHandle<'_>,
        _: bool,
    ) -> HeadersStatus {
        if envoy.request_header("x-mode").is_some() {
            panic!("stateless exploded");
        }
        envoy.set_request_header("x-seen", b"1");
        HeadersStatus::Continue
    }

    fn request_headers_panicked(
        _: &Configured<StatelessConfig>,
        envoy: &mut HttpFilterHandle<'_>,
    ) -> HeadersStatus {
        envoy.set_request_header("x-recovered", b"1");
        HeadersStatus::Continue
    }
}

#[test]
fn a_stateless_filter_costs_no_allocation_and_still_recovers_from_panics() {
    install();
    let mut cfg = FakeConfig::default();
    // SAFETY: the fake configuration stands for Envoy's.
    let module = unsafe {
        hooks::config_new::<StatelessConfig>(
            envoy_ptr(&mut cfg),
            EnvoyBuffer::empty(),
            EnvoyBuffer::empty(),
        )
    };
    let mut ok = FakeStream::default();
    let mut bad = FakeStream {
        request: vec![("x-mode".into(), b"panic".to_vec())],
        ..FakeStream::default()
    };
    // SAFETY: live fakes.
    unsafe {
        let f = hooks::filter_new::<StatelessConfig>(module, envoy_ptr(&mut ok));
        assert_eq!(
            f, module,
            "the configuration's own pointer: nothing allocated"
        );
        hooks::request_headers::<StatelessConfig>(envoy_ptr(&mut ok), f, true);
        hooks::filter_destroy::<StatelessConfig>(f);
        for _ in 0..2 {
            // No per-stream poisoning to remember: each panic is caught and recovered.
            hooks::request_headers::<StatelessConfig>(envoy_ptr(&mut bad), module, true);
        }
    }
    assert_eq!(request_header_value(&ok, "x-seen").as_deref(), Some("1"));
    assert_eq!(
        request_header_value(&bad, "x-recovered").as_deref(),
        Some("1")
    );
    assert_eq!(
        logs()
            .iter()
            .filter(|m| m.starts_with("stateless: panic in on_request_headers: stateless exploded"))
            .count(),
        2
    );
    // SAFETY: destroyed once.
    unsafe { hooks::config_destroy::<StatelessConfig>(module) };
}

#[test]
fn the_coarse_clock_is_the_wall_clock_to_within_its_resolution() {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let coarse = coarse_now_ms();
    assert!(coarse.abs_diff(wall) < 50, "coarse {coarse}, wall {wall}");
}

// === a cluster specifier to drive ===

#[derive(Debug)]
struct TestSpecifier {
    picked: Counter,
}

impl ClusterSpecifier for TestSpecifier {
    const NAME: &'static str = "test_specifier";

    fn new(cx: &mut SpecifierConfigContext<'_>, config: &[u8]) -> Result<Self, String> {
        assert_eq!(cx.name(), b"test", "the specifier_name Envoy passed");
        match config {
            b"bad" => Err("invalid configuration: targets: the weights sum to 0".into()),
            b"panic" => panic!("specifier config exploded"),
            _ => Ok(TestSpecifier {
                picked: cx
                    .define_counter("test.picked")
                    .map_err(|e| e.to_string())?,
            }),
        }
    }

    /// The cluster named by `x-pick`; none without it; `x-pick: panic` panics after choosing.
    fn select(&self, request: &mut SpecifierHandle<'_>) -> bool {
        let Some(pick) = request.request_header("x-pick").map(|v| v.to_vec()) else {
            return false;
        };
        request.set_cluster(&String::from_utf8_lossy(&pick));
        if pick == b"panic" {
            panic!("select exploded");
        }
        request.increment_counter(self.picked, 1).is_ok()
    }
}

fn load_specifier(cfg: &mut FakeConfig, config: &[u8]) -> *const c_void {
    // SAFETY: the fake configuration stands for Envoy's; the buffers are valid.
    unsafe {
        specifier::config_new::<TestSpecifier>(
            envoy_ptr(cfg),
            EnvoyBuffer {
                ptr: b"test".as_ptr().cast(),
                length: 4,
            },
            EnvoyBuffer {
                ptr: config.as_ptr().cast(),
                length: config.len(),
            },
        )
    }
}

fn select(module: *const c_void, headers: &[(&str, &str)]) -> (bool, Option<String>) {
    let mut call = FakeSelect {
        request: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect(),
        cluster: None,
    };
    // SAFETY: a live specifier configuration and a fake context for this call.
    let chosen = unsafe { specifier::select::<TestSpecifier>(module, envoy_ptr(&mut call)) };
    (chosen, call.cluster)
}

#[test]
fn a_refused_or_panicking_specifier_configuration_is_logged_by_name_and_not_loaded() {
    install();
    let mut cfg = FakeConfig::default();
    assert!(load_specifier(&mut cfg, b"bad").is_null());
    assert!(load_specifier(&mut cfg, b"panic").is_null());
    let l = logs();
    assert!(
        l.iter()
            .any(|m| m == "test_specifier: invalid configuration: targets: the weights sum to 0"),
        "{l:?}"
    );
    assert!(
        l.iter()
            .any(|m| m
                .starts_with("test_specifier: panic in configuration: specifier config exploded")),
        "{l:?}"
    );
}

#[test]
fn a_specifier_reads_headers_names_the_cluster_and_counts() {
    install();
    let mut cfg = FakeConfig::default();
    let module = load_specifier(&mut cfg, b"{}");
    assert!(!module.is_null(), "{:?}", logs());
    assert_eq!(
        select(module, &[("x-pick", "canary")]),
        (true, Some("canary".into()))
    );
    assert_eq!(select(module, &[("x-other", "canary")]), (false, None));
    assert_eq!(
        cfg.series.get(&(false, 1, Vec::new())),
        Some(&1),
        "{:?}",
        cfg.series
    );
    // SAFETY: made by `load_specifier`, not used again.
    unsafe { specifier::config_destroy::<TestSpecifier>(module) };
}

#[test]
fn a_panicking_select_keeps_no_choice_and_is_logged() {
    install();
    let mut cfg = FakeConfig::default();
    let module = load_specifier(&mut cfg, b"{}");
    // The call had set a cluster before it panicked: false tells Envoy to drop it.
    let (chosen, _) = select(module, &[("x-pick", "panic")]);
    assert!(!chosen);
    assert!(
        logs()
            .iter()
            .any(|m| m.starts_with("test_specifier: panic in select: select exploded")),
        "{:?}",
        logs()
    );
    // The next request is served as usual.
    assert_eq!(
        select(module, &[("x-pick", "stable")]),
        (true, Some("stable".into()))
    );
    // SAFETY: made by `load_specifier`, not used again.
    unsafe { specifier::config_destroy::<TestSpecifier>(module) };
}
