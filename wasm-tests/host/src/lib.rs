//! A proxy-wasm host on wasmtime that runs real filter modules as Envoy would: the fast,
//! deterministic way to test a filter with the exact `.wasm` that ships (the clock moves only
//! when the test moves it; outgoing HTTP calls wait until the test answers them). It knows
//! nothing of Maille's filters; real Envoy end to end is `maille-testkit`'s job.
//!
//! One [`Host`] holds what Envoy shares between its worker threads: the clock, shared data
//! (with compare-and-swap), shared queues and metrics. Each [`Vm`] is one worker's instance
//! of a module; [`Stream`] drives one HTTP stream through it. Nothing is global: every test
//! builds its own host.

#![forbid(unsafe_code)]

mod imports;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use wasmtime::{Engine, Instance, Linker, Module, Store, TypedFunc};

pub use crate::abi::{Action, Headers, LogLevel, MetricType};

mod abi;

/// The host clock starts here (2026-01-01T00:00:00Z) and moves only when a test moves it.
pub const EPOCH_NANOS: u64 = 1_767_225_600_000_000_000;

/// What can go wrong when loading or driving a module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The module could not be read, compiled or instantiated.
    #[error("loading {path}: {message}")]
    Load {
        /// The module's path (or `<bytes>`).
        path: String,
        /// Why.
        message: String,
    },
    /// The module trapped (a panic, `unreachable`, a bad memory access) or called a host
    /// function this host does not implement in strict mode.
    #[error("{callback} trapped: {trap}{}", last_words(.log))]
    Trap {
        /// The callback the host was running.
        callback: String,
        /// The trap as wasmtime reports it.
        trap: String,
        /// The module's own error and critical log lines (a Rust panic message is logged at
        /// critical by the SDK before it aborts).
        log: Vec<String>,
    },
    /// The module refused its configuration (`proxy_on_vm_start` or `proxy_on_configure`
    /// returned false).
    #[error("{callback} returned false{}", last_words(.log))]
    Refused {
        /// `proxy_on_vm_start` or `proxy_on_configure`.
        callback: String,
        /// The module's error and critical log lines.
        log: Vec<String>,
    },
}

/// Envoy's serialisation of a header map, for tests that build module data by hand.
pub fn abi_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let owned: Headers = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    abi::serialize_pairs(&owned)
}

fn last_words(log: &[String]) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("; module log: {}", log.join(" | "))
    }
}

/// One log line of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its level.
    pub level: LogLevel,
    /// The message.
    pub message: String,
    /// The context that was active when it was logged.
    pub context_id: u32,
}

/// A response the module sent itself (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status.
    pub status: u32,
    /// The details string (Envoy's response code details).
    pub details: String,
    /// The body.
    pub body: Vec<u8>,
    /// The headers.
    pub headers: Headers,
    /// The gRPC status, or -1.
    pub grpc_status: i32,
}

/// An outgoing `proxy_http_call`, waiting for the test to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// The token the module got.
    pub token: u32,
    /// The context that made the call (gets the response).
    pub context_id: u32,
    /// The upstream cluster named in the call.
    pub upstream: String,
    /// Request headers (`:method`, `:path`, `:authority` and others).
    pub headers: Headers,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Headers,
    /// Timeout asked for.
    pub timeout: Duration,
}

impl HttpCall {
    /// The value of one request header of the call.
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }
}

/// The answer a test gives to an [`HttpCall`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCallResponse {
    /// Response headers, `:status` among them. Empty means the call failed (reset,
    /// timeout, no upstream), as Envoy reports it.
    pub headers: Headers,
    /// Response body.
    pub body: Vec<u8>,
    /// Response trailers.
    pub trailers: Headers,
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

// === Host ===

/// What Envoy shares between workers; clone it to share it.
#[derive(Clone)]
pub struct Host {
    engine: Engine,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    now: u64,
    data: HashMap<String, (Vec<u8>, u32)>,
    /// `proxy_get_shared_data` calls so far, all keys and VMs.
    data_reads: u64,
    next_cas: u32,
    queues: Vec<Queue>,
    metrics: Vec<Metric>,
    modules: HashMap<String, Module>,
}

#[derive(Debug)]
struct Queue {
    vm_id: String,
    name: String,
    items: VecDeque<Vec<u8>>,
}

#[derive(Debug)]
struct Metric {
    name: String,
    kind: MetricType,
    value: u64,
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

impl Host {
    /// A new host with its clock at [`EPOCH_NANOS`].
    pub fn new() -> Host {
        Host {
            engine: Engine::default(),
            shared: Arc::new(Mutex::new(Shared {
                now: EPOCH_NANOS,
                data: HashMap::new(),
                data_reads: 0,
                next_cas: 1,
                queues: Vec::new(),
                metrics: Vec::new(),
                modules: HashMap::new(),
            })),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads a module from a file as one worker VM (compiled once per host and path).
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Vm, Error> {
        let path = path.as_ref();
        let key = path.display().to_string();
        let cached = self.lock().modules.get(&key).cloned();
        let module = match cached {
            Some(m) => m,
            None => {
                let m = Module::from_file(&self.engine, path).map_err(|e| Error::Load {
                    path: key.clone(),
                    message: format!("{e:#}"),
                })?;
                self.lock().modules.insert(key.clone(), m.clone());
                m
            }
        };
        Vm::new(self.clone(), module, key)
    }

    /// Loads a module from its bytes (binary or WAT text) as one worker VM.
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Vm, Error> {
        let module = Module::new(&self.engine, bytes).map_err(|e| Error::Load {
            path: "<bytes>".into(),
            message: format!("{e:#}"),
        })?;
        Vm::new(self.clone(), module, "<bytes>".into())
    }

    /// The clock, nanoseconds since the Unix epoch.
    pub fn now_nanos(&self) -> u64 {
        self.lock().now
    }

    /// Moves the clock forward. Timers fire when a VM runs them ([`Vm::run_timers`] or
    /// [`Vm::advance`]).
    pub fn advance(&self, by: Duration) {
        self.lock().now += by.as_nanos() as u64;
    }

    /// A metric's value by name (counters and gauges; histograms hold their last value).
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.lock()
            .metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    /// Every metric defined so far, by name.
    pub fn metrics(&self) -> HashMap<String, u64> {
        self.lock()
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.value))
            .collect()
    }

    /// The shared data under `key`, with its CAS value.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.lock().data.get(key).cloned()
    }

    /// How many times the VMs have read shared data so far.
    pub fn shared_data_reads(&self) -> u64 {
        self.lock().data_reads
    }

    /// Sets shared data as another worker would (new CAS value).
    pub fn set_shared_data(&self, key: &str, value: &[u8]) {
        let mut s = self.lock();
        let cas = s.next_cas;
        s.next_cas += 1;
        s.data.insert(key.to_owned(), (value.to_vec(), cas));
    }
}

// === impl Shared (used by the imports) ===

impl Shared {
    pub(crate) fn get_data(&mut self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.data_reads += 1;
        self.data.get(key).cloned()
    }

    /// Envoy's semantics: `cas == 0` writes unconditionally; otherwise the key's current
    /// CAS must equal it. Every write gets a new CAS.
    pub(crate) fn set_data(&mut self, key: &str, value: &[u8], cas: u32) -> abi::Status {
        if let Some((_, current)) = self.data.get(key) {
            if cas != 0 && cas != *current {
                return abi::Status::CasMismatch;
            }
        }
        let new = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.data.insert(key.to_owned(), (value.to_vec(), new));
        abi::Status::Ok
    }

    pub(crate) fn register_queue(&mut self, vm_id: &str, name: &str) -> u32 {
        if let Some(i) = self.resolve_queue(vm_id, name) {
            return i;
        }
        self.queues.push(Queue {
            vm_id: vm_id.to_owned(),
            name: name.to_owned(),
            items: VecDeque::new(),
        });
        self.queues.len() as u32
    }

    pub(crate) fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
            .map(|i| i as u32 + 1)
    }

    pub(crate) fn enqueue(&mut self, token: u32, value: &[u8]) -> abi::Status {
        match self.queues.get_mut((token as usize).wrapping_sub(1)) {
            Some(q) => {
                q.items.push_back(value.to_vec());
                abi::Status::Ok
            }
            None => abi::Status::NotFound,
        }
    }

    pub(crate) fn dequeue(&mut self, token: u32) -> Result<Vec<u8>, abi::Status> {
        match self.queues.get_mut((token as usize).wrapping_sub(1)) {
            Some(q) => q.items.pop_front().ok_or(abi::Status::Empty),
            None => Err(abi::Status::NotFound),
        }
    }

    /// Same name, same metric (Envoy's stats are shared by all workers).
    pub(crate) fn define_metric(&mut self, kind: MetricType, name: &str) -> u32 {
        if let Some(i) = self.metrics.iter().position(|m| m.name == name) {
            return i as u32 + 1;
        }
        self.metrics.push(Metric {
            name: name.to_owned(),
            kind,
            value: 0,
        });
        self.metrics.len() as u32
    }

    pub(crate) fn metric_mut(&mut self, id: u32) -> Option<(&mut u64, MetricType)> {
        self.metrics
            .get_mut((id as usize).wrapping_sub(1))
            .map(|m| (&mut m.value, m.kind))
    }
}

// === Vm ===

/// Per-VM state the imports work on.
pub(crate) struct State {
    pub(crate) host: Host,
    pub(crate) vm_id: String,
    pub(crate) strict: bool,
    pub(crate) plugin_name: String,
    pub(crate) root_id: String,
    pub(crate) plugin_config: Vec<u8>,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) log_level: LogLevel,
    pub(crate) logs: Vec<LogEntry>,
    pub(crate) tick_period: Option<Duration>,
    pub(crate) last_tick: u64,
    /// The context host calls act on.
    pub(crate) effective: u32,
    pub(crate) streams: HashMap<u32, StreamData>,
    pub(crate) vm_properties: HashMap<Vec<String>, Vec<u8>>,
    pub(crate) calls: Vec<HttpCall>,
    pub(crate) next_token: u32,
    /// The response being delivered by `proxy_on_http_call_response`.
    pub(crate) call_response: Option<HttpCallResponse>,
    /// Host calls the module made that this host does not implement (lenient mode).
    pub(crate) unimplemented: Vec<String>,
    pub(crate) random: u64,
}

/// Everything about one HTTP stream that host calls can see or change.
#[derive(Debug, Default, Clone)]
pub(crate) struct StreamData {
    pub(crate) request_headers: Headers,
    pub(crate) request_trailers: Headers,
    pub(crate) request_body: Vec<u8>,
    pub(crate) response_headers: Headers,
    pub(crate) response_trailers: Headers,
    pub(crate) response_body: Vec<u8>,
    pub(crate) local_response: Option<LocalResponse>,
    pub(crate) properties: HashMap<Vec<String>, Vec<u8>>,
    pub(crate) resumed_request: u32,
    pub(crate) resumed_response: u32,
    pub(crate) closed: bool,
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type HttpCallResponseFn = TypedFunc<(i32, i32, i32, i32, i32), ()>;

struct Callbacks {
    context_create: Option<TypedFunc<(i32, i32), ()>>,
    vm_start: Option<TypedFunc<(i32, i32), i32>>,
    configure: Option<TypedFunc<(i32, i32), i32>>,
    tick: Option<TypedFunc<i32, ()>>,
    request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    done: Option<TypedFunc<i32, i32>>,
    log: Option<TypedFunc<i32, ()>>,
    delete: Option<TypedFunc<i32, ()>>,
    http_call_response: Option<HttpCallResponseFn>,
    queue_ready: Option<TypedFunc<(i32, i32), ()>>,
}

/// One worker's instance of a module.
pub struct Vm {
    store: Store<State>,
    callbacks: Callbacks,
    root_context: Option<u32>,
    next_context: u32,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vm_id", &self.store.data().vm_id)
            .field("root_context", &self.root_context)
            .finish_non_exhaustive()
    }
}

/// How a plugin is set up in [`Vm::configure_with`].
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// The plugin's name (Envoy's `config.name`), the `plugin_name` property.
    pub name: String,
    /// The root id (`config.root_id`).
    pub root_id: String,
    /// The VM configuration (`vm_config.configuration`).
    pub vm_configuration: Vec<u8>,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            name: "plugin".into(),
            root_id: String::new(),
            vm_configuration: Vec::new(),
        }
    }
}

impl Vm {
    fn new(host: Host, module: Module, path: String) -> Result<Vm, Error> {
        let load_err = |e: wasmtime::Error| Error::Load {
            path: path.clone(),
            message: format!("{e:#}"),
        };
        let vm_id = String::new();
        let seed = host.lock().now;
        let mut store = Store::new(
            &host.engine,
            State {
                host: host.clone(),
                vm_id,
                strict: true,
                plugin_name: String::new(),
                root_id: String::new(),
                plugin_config: Vec::new(),
                vm_config: Vec::new(),
                log_level: LogLevel::Trace,
                logs: Vec::new(),
                tick_period: None,
                last_tick: seed,
                effective: 0,
                streams: HashMap::new(),
                vm_properties: HashMap::new(),
                calls: Vec::new(),
                next_token: 1,
                call_response: None,
                unimplemented: Vec::new(),
                random: seed ^ 0x9e37_79b9_7f4a_7c15,
            },
        );
        let mut linker: Linker<State> = Linker::new(&host.engine);
        imports::define(&mut linker).map_err(load_err)?;
        imports::stub_unknown(&mut linker, &module).map_err(load_err)?;
        let instance = linker
            .instantiate(&mut store, &module)
            .map_err(|e| trap_error(&store, "instantiation", e))?;
        let callbacks = Callbacks::resolve(&instance, &mut store);
        let mut vm = Vm {
            store,
            callbacks,
            root_context: None,
            next_context: 1,
        };
        // As Envoy: _initialize (reactor) and then main, or else _start.
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut vm.store, "_initialize") {
            init.call(&mut vm.store, ())
                .map_err(|e| trap_error(&vm.store, "_initialize", e))?;
            if let Ok(main) = instance.get_typed_func::<(i32, i32), i32>(&mut vm.store, "main") {
                main.call(&mut vm.store, (0, 0))
                    .map_err(|e| trap_error(&vm.store, "main", e))?;
            }
        } else if let Ok(start) = instance.get_typed_func::<(), ()>(&mut vm.store, "_start") {
            start
                .call(&mut vm.store, ())
                .map_err(|e| trap_error(&vm.store, "_start", e))?;
        }
        Ok(vm)
    }

    /// Strict mode (the default): a call to a host function this host does not implement
    /// traps, and the error names it. Lenient: such calls return `UNIMPLEMENTED` and are
    /// listed by [`Vm::unimplemented_calls`].
    pub fn strict(&mut self, strict: bool) -> &mut Self {
        self.store.data_mut().strict = strict;
        self
    }

    /// Host calls the module made that are not implemented here (lenient mode).
    pub fn unimplemented_calls(&self) -> &[String] {
        &self.store.data().unimplemented
    }

    /// Sets a VM-wide property (`path` segments as in Envoy, e.g. `["node", "id"]`).
    pub fn set_property(&mut self, path: &[&str], value: impl Into<Vec<u8>>) -> &mut Self {
        let key = path.iter().map(|s| s.to_string()).collect();
        self.store
            .data_mut()
            .vm_properties
            .insert(key, value.into());
        self
    }

    /// Creates the root context and configures the plugin with `configuration`, as Envoy
    /// does when it loads a plugin: `proxy_on_vm_start`, then `proxy_on_configure`.
    pub fn configure(&mut self, configuration: &[u8]) -> Result<(), Error> {
        self.configure_with(PluginSettings::default(), configuration)
    }

    /// [`Vm::configure`] with a plugin name, root id and VM configuration.
    pub fn configure_with(
        &mut self,
        settings: PluginSettings,
        configuration: &[u8],
    ) -> Result<(), Error> {
        let id = self.new_context_id();
        {
            let s = self.store.data_mut();
            s.plugin_name = settings.name.clone();
            s.root_id = settings.root_id.clone();
            s.vm_config = settings.vm_configuration.clone();
            s.plugin_config = configuration.to_vec();
            s.vm_properties
                .insert(vec!["plugin_name".into()], settings.name.into_bytes());
            s.vm_properties
                .insert(vec!["plugin_root_id".into()], settings.root_id.into_bytes());
            s.vm_properties
                .insert(vec!["plugin_vm_id".into()], s.vm_id.clone().into_bytes());
        }
        self.root_context = Some(id);
        self.enter(id);
        if let Some(f) = self.callbacks.context_create.clone() {
            f.call(&mut self.store, (id as i32, 0))
                .map_err(|e| trap_error(&self.store, "proxy_on_context_create", e))?;
        }
        let vm_config_len = self.store.data().vm_config.len() as i32;
        if let Some(f) = self.callbacks.vm_start.clone() {
            let ok = f
                .call(&mut self.store, (id as i32, vm_config_len))
                .map_err(|e| trap_error(&self.store, "proxy_on_vm_start", e))?;
            if ok == 0 {
                return Err(refused(&self.store, "proxy_on_vm_start"));
            }
        }
        let len = configuration.len() as i32;
        if let Some(f) = self.callbacks.configure.clone() {
            let ok = f
                .call(&mut self.store, (id as i32, len))
                .map_err(|e| trap_error(&self.store, "proxy_on_configure", e))?;
            if ok == 0 {
                return Err(refused(&self.store, "proxy_on_configure"));
            }
        }
        Ok(())
    }

    /// A new HTTP stream on this VM (its context is created on the first callback).
    pub fn stream(&mut self) -> Stream<'_> {
        let id = self.new_context_id();
        let now = self.store.data().host.lock().now;
        let mut data = StreamData::default();
        data.properties.insert(
            vec!["request".into(), "time".into()],
            (now as i64).to_le_bytes().to_vec(),
        );
        self.store.data_mut().streams.insert(id, data);
        Stream {
            vm: self,
            id,
            started: now,
            created: false,
            finished: false,
        }
    }

    /// Runs one request through a new stream: request headers (end of stream), then
    /// returns the stream to read the outcome from or to go on with the response.
    pub fn request(&mut self, headers: &[(&str, &str)]) -> Result<Stream<'_>, Error> {
        let mut s = self.stream();
        s.request_headers(headers, true)?;
        Ok(s)
    }

    /// Everything the module logged.
    pub fn logs(&self) -> &[LogEntry] {
        &self.store.data().logs
    }

    /// Log lines at `level` or above, messages only.
    pub fn log_lines(&self, level: LogLevel) -> Vec<String> {
        self.logs()
            .iter()
            .filter(|l| l.level >= level)
            .map(|l| l.message.clone())
            .collect()
    }

    /// The tick period the module asked for.
    pub fn tick_period(&self) -> Option<Duration> {
        self.store.data().tick_period
    }

    /// Calls `proxy_on_tick` once per tick period elapsed on the host clock since the
    /// last tick; returns how many ticks ran.
    pub fn run_timers(&mut self) -> Result<u32, Error> {
        let Some(period) = self.tick_period() else {
            return Ok(0);
        };
        let period = period.as_nanos() as u64;
        let now = self.store.data().host.lock().now;
        let mut ran = 0;
        while self.store.data().last_tick + period <= now {
            self.store.data_mut().last_tick += period;
            self.tick()?;
            ran += 1;
        }
        Ok(ran)
    }

    /// Moves the host clock and runs this VM's due timers.
    pub fn advance(&mut self, by: Duration) -> Result<u32, Error> {
        self.store.data().host.advance(by);
        self.run_timers()
    }

    /// Calls `proxy_on_tick` now.
    pub fn tick(&mut self) -> Result<(), Error> {
        let Some(root) = self.root_context else {
            return Ok(());
        };
        self.enter(root);
        if let Some(f) = self.callbacks.tick.clone() {
            f.call(&mut self.store, root as i32)
                .map_err(|e| trap_error(&self.store, "proxy_on_tick", e))?;
        }
        Ok(())
    }

    /// Outgoing HTTP calls not yet answered.
    pub fn http_calls(&self) -> &[HttpCall] {
        &self.store.data().calls
    }

    /// Answers an outgoing call: `proxy_on_http_call_response` runs in the context that
    /// made it. An empty `headers` reports a failed call, as Envoy does.
    pub fn respond(&mut self, token: u32, response: HttpCallResponse) -> Result<(), Error> {
        let Some(pos) = self
            .store
            .data()
            .calls
            .iter()
            .position(|c| c.token == token)
        else {
            panic!("no pending http call with token {token}");
        };
        let call = self.store.data_mut().calls.remove(pos);
        let (nh, nb, nt) = (
            response.headers.len() as i32,
            response.body.len() as i32,
            response.trailers.len() as i32,
        );
        self.store.data_mut().call_response = Some(response);
        self.enter(call.context_id);
        let result = match self.callbacks.http_call_response.clone() {
            Some(f) => f
                .call(
                    &mut self.store,
                    (call.context_id as i32, token as i32, nh, nb, nt),
                )
                .map_err(|e| trap_error(&self.store, "proxy_on_http_call_response", e)),
            None => Ok(()),
        };
        self.store.data_mut().call_response = None;
        result
    }

    /// Calls `proxy_on_queue_ready` for a queue token (as Envoy does after an enqueue).
    pub fn queue_ready(&mut self, token: u32) -> Result<(), Error> {
        let Some(root) = self.root_context else {
            return Ok(());
        };
        self.enter(root);
        if let Some(f) = self.callbacks.queue_ready.clone() {
            f.call(&mut self.store, (root as i32, token as i32))
                .map_err(|e| trap_error(&self.store, "proxy_on_queue_ready", e))?;
        }
        Ok(())
    }

    fn new_context_id(&mut self) -> u32 {
        let id = self.next_context;
        self.next_context += 1;
        id
    }

    fn enter(&mut self, context: u32) {
        self.store.data_mut().effective = context;
    }
}

impl Callbacks {
    fn resolve(instance: &Instance, store: &mut Store<State>) -> Callbacks {
        macro_rules! f {
            ($name:literal) => {
                instance.get_typed_func(&mut *store, $name).ok()
            };
        }
        Callbacks {
            context_create: f!("proxy_on_context_create"),
            vm_start: f!("proxy_on_vm_start"),
            configure: f!("proxy_on_configure"),
            tick: f!("proxy_on_tick"),
            request_headers: f!("proxy_on_request_headers"),
            request_body: f!("proxy_on_request_body"),
            request_trailers: f!("proxy_on_request_trailers"),
            response_headers: f!("proxy_on_response_headers"),
            response_body: f!("proxy_on_response_body"),
            response_trailers: f!("proxy_on_response_trailers"),
            done: f!("proxy_on_done"),
            log: f!("proxy_on_log"),
            delete: f!("proxy_on_delete"),
            http_call_response: f!("proxy_on_http_call_response"),
            queue_ready: f!("proxy_on_queue_ready"),
        }
    }
}

fn module_last_words(store: &Store<State>) -> Vec<String> {
    store
        .data()
        .logs
        .iter()
        .filter(|l| l.level >= LogLevel::Error)
        .map(|l| l.message.clone())
        .collect()
}

fn trap_error(store: &Store<State>, callback: &str, e: wasmtime::Error) -> Error {
    Error::Trap {
        callback: callback.to_owned(),
        trap: format!("{e:#}"),
        log: module_last_words(store),
    }
}

fn refused(store: &Store<State>, callback: &str) -> Error {
    Error::Refused {
        callback: callback.to_owned(),
        log: module_last_words(store),
    }
}

// === Stream ===

/// One HTTP stream through a [`Vm`]. Dropping it without [`Stream::finish`] finishes it.
#[derive(Debug)]
pub struct Stream<'a> {
    vm: &'a mut Vm,
    id: u32,
    started: u64,
    created: bool,
    finished: bool,
}

fn to_headers(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect()
}

fn action(v: i32) -> Action {
    if v == 0 {
        Action::Continue
    } else {
        Action::Pause
    }
}

impl Stream<'_> {
    /// This stream's context id.
    pub fn context_id(&self) -> u32 {
        self.id
    }

    fn data(&self) -> &StreamData {
        &self.vm.store.data().streams[&self.id]
    }

    fn data_mut(&mut self) -> &mut StreamData {
        self.vm
            .store
            .data_mut()
            .streams
            .get_mut(&self.id)
            .expect("stream data")
    }

    fn ensure_created(&mut self) -> Result<(), Error> {
        if self.created {
            return Ok(());
        }
        self.created = true;
        let root = self
            .vm
            .root_context
            .expect("configure the plugin before sending requests");
        self.vm.enter(self.id);
        if let Some(f) = self.vm.callbacks.context_create.clone() {
            f.call(&mut self.vm.store, (self.id as i32, root as i32))
                .map_err(|e| trap_error(&self.vm.store, "proxy_on_context_create", e))?;
        }
        Ok(())
    }

    fn call3(
        &mut self,
        name: &str,
        f: Option<TypedFunc<(i32, i32, i32), i32>>,
        a: i32,
        b: bool,
    ) -> Result<Action, Error> {
        self.ensure_created()?;
        self.vm.enter(self.id);
        match f {
            Some(f) => f
                .call(&mut self.vm.store, (self.id as i32, a, b as i32))
                .map(action)
                .map_err(|e| trap_error(&self.vm.store, name, e)),
            None => Ok(Action::Continue),
        }
    }

    fn call2(
        &mut self,
        name: &str,
        f: Option<TypedFunc<(i32, i32), i32>>,
        a: i32,
    ) -> Result<Action, Error> {
        self.ensure_created()?;
        self.vm.enter(self.id);
        match f {
            Some(f) => f
                .call(&mut self.vm.store, (self.id as i32, a))
                .map(action)
                .map_err(|e| trap_error(&self.vm.store, name, e)),
            None => Ok(Action::Continue),
        }
    }

    /// Sets a property of this stream (`["cluster_name"]`, `["response", "code"]`, ...).
    pub fn set_property(&mut self, path: &[&str], value: impl Into<Vec<u8>>) -> &mut Self {
        let key = path.iter().map(|s| s.to_string()).collect();
        self.data_mut().properties.insert(key, value.into());
        self
    }

    /// An integer property, as Envoy serialises them (8 bytes, little-endian).
    pub fn set_int_property(&mut self, path: &[&str], value: i64) -> &mut Self {
        self.set_property(path, value.to_le_bytes())
    }

    /// The upstream cluster, as Envoy's `xds.cluster_name` (known from the route at request
    /// headers) and `cluster_name` properties.
    pub fn set_upstream_cluster(&mut self, cluster: &str) -> &mut Self {
        self.set_property(&["xds", "cluster_name"], cluster);
        self.set_property(&["cluster_name"], cluster)
    }

    /// Request headers arrive: `proxy_on_request_headers`.
    pub fn request_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action, Error> {
        let headers = to_headers(headers);
        let n = headers.len() as i32;
        self.data_mut().request_headers = headers;
        let f = self.vm.callbacks.request_headers.clone();
        self.call3("proxy_on_request_headers", f, n, end_of_stream)
    }

    /// A request body chunk arrives: `proxy_on_request_body` (the body buffer accumulates).
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, Error> {
        self.data_mut().request_body.extend_from_slice(chunk);
        let n = self.data().request_body.len() as i32;
        let f = self.vm.callbacks.request_body.clone();
        self.call3("proxy_on_request_body", f, n, end_of_stream)
    }

    /// Request trailers arrive: `proxy_on_request_trailers`.
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action, Error> {
        let t = to_headers(trailers);
        let n = t.len() as i32;
        self.data_mut().request_trailers = t;
        let f = self.vm.callbacks.request_trailers.clone();
        self.call2("proxy_on_request_trailers", f, n)
    }

    /// Response headers arrive from upstream: `proxy_on_response_headers`. Sets the
    /// `response.code` property from `:status` and `request.duration` (nanoseconds since
    /// the stream began, on the host clock), as Envoy does; a test may override either.
    pub fn response_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action, Error> {
        let headers = to_headers(headers);
        let code_key = vec!["response".to_owned(), "code".to_owned()];
        if !self.data().properties.contains_key(&code_key) {
            if let Some(code) = find(&headers, ":status").and_then(|s| s.parse::<i64>().ok()) {
                self.set_property(&["response", "code"], code.to_le_bytes());
            }
        }
        let duration_key = vec!["request".to_owned(), "duration".to_owned()];
        if !self.data().properties.contains_key(&duration_key) {
            let now = self.vm.store.data().host.now_nanos();
            let start = self.started;
            self.set_property(
                &["request", "duration"],
                ((now - start) as i64).to_le_bytes(),
            );
        }
        let n = headers.len() as i32;
        self.data_mut().response_headers = headers;
        let f = self.vm.callbacks.response_headers.clone();
        self.call3("proxy_on_response_headers", f, n, end_of_stream)
    }

    /// A response body chunk arrives: `proxy_on_response_body`.
    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, Error> {
        self.data_mut().response_body.extend_from_slice(chunk);
        let n = self.data().response_body.len() as i32;
        let f = self.vm.callbacks.response_body.clone();
        self.call3("proxy_on_response_body", f, n, end_of_stream)
    }

    /// Response trailers arrive: `proxy_on_response_trailers`.
    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action, Error> {
        let t = to_headers(trailers);
        let n = t.len() as i32;
        self.data_mut().response_trailers = t;
        let f = self.vm.callbacks.response_trailers.clone();
        self.call2("proxy_on_response_trailers", f, n)
    }

    /// Ends the stream as Envoy does: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn finish(mut self) -> Result<(), Error> {
        self.finish_inner()
    }

    fn finish_inner(&mut self) -> Result<(), Error> {
        if self.finished || !self.created {
            self.finished = true;
            return Ok(());
        }
        self.finished = true;
        let id = self.id as i32;
        self.vm.enter(self.id);
        let cb = &self.vm.callbacks;
        let (done, log, delete) = (cb.done.clone(), cb.log.clone(), cb.delete.clone());
        if let Some(f) = done {
            f.call(&mut self.vm.store, id)
                .map_err(|e| trap_error(&self.vm.store, "proxy_on_done", e))?;
        }
        if let Some(f) = log {
            f.call(&mut self.vm.store, id)
                .map_err(|e| trap_error(&self.vm.store, "proxy_on_log", e))?;
        }
        if let Some(f) = delete {
            f.call(&mut self.vm.store, id)
                .map_err(|e| trap_error(&self.vm.store, "proxy_on_delete", e))?;
        }
        Ok(())
    }

    /// The request headers as they are now (after the module's changes).
    pub fn request_headers_now(&self) -> Headers {
        self.data().request_headers.clone()
    }

    /// One request header as it is now.
    pub fn request_header(&self, name: &str) -> Option<String> {
        find(&self.data().request_headers, name).map(str::to_owned)
    }

    /// One response header as it is now.
    pub fn response_header(&self, name: &str) -> Option<String> {
        find(&self.data().response_headers, name).map(str::to_owned)
    }

    /// The request body as it is now.
    pub fn request_body_now(&self) -> &[u8] {
        &self.data().request_body
    }

    /// The response body as it is now.
    pub fn response_body_now(&self) -> &[u8] {
        &self.data().response_body
    }

    /// The local response the module sent, if it did.
    pub fn local_response(&self) -> Option<&LocalResponse> {
        self.data().local_response.as_ref()
    }

    /// How many times the module resumed the request and the response.
    pub fn resumed(&self) -> (u32, u32) {
        let d = self.data();
        (d.resumed_request, d.resumed_response)
    }

    /// Whether the module closed (reset) the stream.
    pub fn closed(&self) -> bool {
        self.data().closed
    }

    /// The VM this stream runs on.
    pub fn vm(&mut self) -> &mut Vm {
        self.vm
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        // A stream left unfinished is finished; errors surface through finish() instead.
        let _ = self.finish_inner();
        self.vm.store.data_mut().streams.remove(&self.id);
    }
}
