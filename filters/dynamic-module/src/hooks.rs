//! The event hooks Envoy calls, generic over the filter; [`crate::export_http_filter!`]
//! exports one monomorphic `extern "C"` function per hook that calls these.
//!
//! Every hook catches panics: a panic becomes an error in Envoy's log and a safe answer
//! (Continue, or the filter's own [`crate::HttpFilter::request_headers_panicked`]), and the
//! stream it happened on is left alone from then on. A hook that Envoy calls while another
//! hook of the same stream is still running (a local reply re-entering the filter) is
//! answered Continue without touching the filter.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::abi::{self, EnvoyBuffer, EnvoyHttpHeader, Host};
use crate::handle::{CalloutResponse, ConfigContext, HttpFilterHandle, MainThread, Wake};
use crate::{log, HeadersStatus, HttpFilter, HttpFilterConfig, Level};

/// Envoy's callbacks, resolved by `envoy_dynamic_module_on_program_init`.
static HOST: OnceLock<Host> = OnceLock::new();

pub(crate) fn host() -> Option<&'static Host> {
    HOST.get()
}

/// Event ids of the configuration's scheduler.
const EVENT_TICK: u64 = 1;
const EVENT_NOTIFY: u64 = 2;

thread_local! {
    /// The message and place of the last panic on this thread, kept by the panic hook for
    /// the hook that catches it.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

fn log_panic<C: HttpFilterConfig>(hook: &str, payload: &(dyn std::any::Any + Send)) {
    log_panic_of(C::NAME, hook, payload);
}

/// Logs a panic caught in `hook` of the module part named `name` (`maille_canary: panic in
/// select: ...`).
pub(crate) fn log_panic_of(name: &str, hook: &str, payload: &(dyn std::any::Any + Send)) {
    log(
        Level::Error,
        &format!("{name}: panic in {hook}: {}", panic_message(payload)),
    );
}

/// `envoy_dynamic_module_on_program_init`: resolves Envoy's callbacks and returns the ABI
/// version, or null (Envoy then unloads the module) when a callback is missing.
pub fn program_init() -> *const c_char {
    init(abi::resolve_from_process())
}

pub(crate) fn init(host: Result<Host, &'static str>) -> *const c_char {
    match host {
        Ok(h) => {
            // A second load of the same module keeps the first table (same process, same
            // symbols).
            let _ = HOST.set(h);
            // Panics are caught at every hook and logged through Envoy; the hook keeps the
            // message and location for that instead of printing to stderr (tests print too).
            #[cfg(test)]
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                #[cfg(test)]
                previous(info);
                let msg = match (
                    info.payload().downcast_ref::<&str>(),
                    info.payload().downcast_ref::<String>(),
                ) {
                    (Some(s), _) => (*s).to_owned(),
                    (None, Some(s)) => s.clone(),
                    (None, None) => "panic".to_owned(),
                };
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{at}")));
            }));
            abi::ABI_VERSION.as_ptr()
        }
        Err(missing) => {
            let msg = format!(
                "maille dynamic module: this Envoy lacks the callback `{missing}` (built for Envoy 1.40, ABI {})",
                abi::ABI_VERSION.to_string_lossy()
            );
            // Say why through Envoy's log when at least its log callback is there.
            if let Ok(h) = Host::resolve(|name| {
                if name.to_bytes() == b"envoy_dynamic_module_callback_log" {
                    // SAFETY: NUL-terminated name; RTLD_DEFAULT is the global scope.
                    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
                } else {
                    std::ptr::null_mut()
                }
            }) {
                // SAFETY: `log` was resolved; the message outlives the call.
                unsafe { (h.log)(abi::LOG_ERROR, abi::ModuleBuffer::new(msg.as_bytes())) };
            }
            eprintln!("{msg}");
            std::ptr::null()
        }
    }
}

/// A configuration scheduler of Envoy's: wakes the main thread from any thread.
#[derive(Debug)]
struct Scheduler {
    host: &'static Host,
    ptr: *mut c_void,
}

// SAFETY: Envoy's config scheduler commit may be called from any thread; the pointer is only
// deleted when the scheduler is dropped, after every thread that could commit has stopped.
unsafe impl Send for Scheduler {}
// SAFETY: as above; `commit` takes `&self` and Envoy synchronises it.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    fn commit(&self, event: u64) {
        if !self.ptr.is_null() {
            // SAFETY: a live scheduler (deleted only on drop).
            unsafe { (self.host.scheduler_commit)(self.ptr, event) }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: created by `scheduler_new`, deleted once, here.
            unsafe { (self.host.scheduler_delete)(self.ptr) }
        }
    }
}

/// A thread of this module that wakes the main thread every period until stopped.
#[derive(Debug)]
struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(scheduler: Arc<Scheduler>, period: Duration) -> std::io::Result<Ticker> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("maille-tick".into())
            .spawn(move || {
                let (lock, cv) = &*flag;
                let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let (guard, _) = cv
                        .wait_timeout(stopped, period)
                        .unwrap_or_else(|e| e.into_inner());
                    stopped = guard;
                    if *stopped {
                        return;
                    }
                    scheduler.commit(EVENT_TICK);
                }
            })?;
        Ok(Ticker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One worker's spare stream objects: the last one freed in an atomic slot (a worker
/// serving one request after another takes it back with a single swap), more behind a lock.
struct Pool<C: HttpFilterConfig> {
    last: AtomicPtr<Stream<C>>,
    spare: Mutex<Vec<Box<Stream<C>>>>,
}

impl<C: HttpFilterConfig> Pool<C> {
    fn new() -> Self {
        Pool {
            last: AtomicPtr::new(std::ptr::null_mut()),
            spare: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Option<Box<Stream<C>>> {
        let p = self.last.swap(std::ptr::null_mut(), Ordering::Acquire);
        if p.is_null() {
            return self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        }
        // SAFETY: the slot holds only pointers from `Box::into_raw` in `give`, and the swap
        // made this thread their only owner.
        Some(unsafe { Box::from_raw(p) })
    }

    /// Keeps `s` for reuse, or hands it back when the pool is full.
    fn give(&self, s: Box<Stream<C>>) -> Option<Box<Stream<C>>> {
        let previous = self.last.swap(Box::into_raw(s), Ordering::AcqRel);
        if previous.is_null() {
            return None;
        }
        // SAFETY: as in `take`: the swap made this thread the owner of the previous one.
        let previous = unsafe { Box::from_raw(previous) };
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < POOLED_PER_WORKER {
            spare.push(previous);
            None
        } else {
            Some(previous)
        }
    }
}

impl<C: HttpFilterConfig> Drop for Pool<C> {
    fn drop(&mut self) {
        let p = *self.last.get_mut();
        if !p.is_null() {
            // SAFETY: a pointer from `Box::into_raw`, owned by the pool being dropped.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// Spare stream objects kept per worker, at most: a new stream takes one instead of
/// allocating (Envoy 1.40 creates and destroys a filter per request).
const POOLED_PER_WORKER: usize = 256;

/// A loaded configuration as its streams see it: the filter's own configuration (through
/// `Deref`) and a way to wake Envoy's main thread.
pub struct Configured<C: HttpFilterConfig> {
    config: C,
    /// Spare streams, one pool per Envoy worker (uncontended: a worker's streams are made
    /// and destroyed on it).
    pools: Box<[Pool<C>]>,
    // Held for its Drop, which joins the thread; fields drop in order, so the ticker stops
    // before the scheduler it commits to is deleted.
    _ticker: Option<Ticker>,
    scheduler: Arc<Scheduler>,
    notified: AtomicBool,
}

impl<C: HttpFilterConfig + std::fmt::Debug> std::fmt::Debug for Configured<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configured")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<C: HttpFilterConfig> std::ops::Deref for Configured<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.config
    }
}

impl<C: HttpFilterConfig> Configured<C> {
    /// Asks for [`HttpFilterConfig::on_main_thread`] with [`Wake::Notified`] soon. Calls
    /// before it runs are merged into one. Safe from any worker.
    pub fn notify_main_thread(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            self.scheduler.commit(EVENT_NOTIFY);
        }
    }
}

/// Bytes Envoy passed in a hook.
///
/// # Safety
/// `b` must be null or valid for `b.length` bytes during the hook.
pub(crate) unsafe fn hook_bytes(b: &EnvoyBuffer) -> &[u8] {
    if b.ptr.is_null() {
        &[]
    } else {
        // SAFETY: per this function's contract.
        unsafe { std::slice::from_raw_parts(b.ptr.cast::<u8>(), b.length) }
    }
}

/// `envoy_dynamic_module_on_http_filter_config_new`.
///
/// # Safety
/// Envoy's arguments: a live configuration and buffers valid during the call.
pub unsafe fn config_new<C: HttpFilterConfig>(
    envoy: *mut c_void,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    let Some(host) = host() else {
        return std::ptr::null();
    };
    // SAFETY: Envoy's configuration bytes, valid during this call.
    let bytes = unsafe { hook_bytes(&config) };
    let built = catch_unwind(AssertUnwindSafe(|| {
        let mut cx = ConfigContext::new(host, envoy);
        C::new(&mut cx, bytes).map(|c| (c, cx.tick))
    }));
    let (config, tick) = match built {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            log(Level::Error, &format!("{}: {e}", C::NAME));
            return std::ptr::null();
        }
        Err(p) => {
            log_panic::<C>("configuration", &*p);
            return std::ptr::null();
        }
    };
    // SAFETY: a live configuration, on the main thread.
    let ptr = unsafe { (host.scheduler_new)(envoy) };
    let scheduler = Arc::new(Scheduler { host, ptr });
    let ticker = match tick {
        Some(period) => match Ticker::start(scheduler.clone(), period) {
            Ok(t) => Some(t),
            Err(e) => {
                log(
                    Level::Error,
                    &format!("{}: could not start the timer thread: {e}", C::NAME),
                );
                return std::ptr::null();
            }
        },
        None => None,
    };
    // Workers are numbered 0..concurrency; stateless filters need no pools.
    let workers = if stateless::<C>() {
        0
    } else {
        // SAFETY: on the main thread, as `get_concurrency` requires.
        unsafe { (host.get_concurrency)() as usize }
    };
    Box::into_raw(Box::new(Configured {
        config,
        pools: (0..workers).map(|_| Pool::new()).collect(),
        _ticker: ticker,
        scheduler,
        notified: AtomicBool::new(false),
    }))
    .cast::<c_void>()
    .cast_const()
}

/// `envoy_dynamic_module_on_http_filter_config_destroy`.
///
/// # Safety
/// `ptr` is null or was returned by [`config_new`] for `C` and is not used again.
pub unsafe fn config_destroy<C: HttpFilterConfig>(ptr: *const c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: `ptr` came from `Box::into_raw` in `config_new::<C>`; Envoy destroys it once,
    // after every stream of the configuration.
    let boxed = unsafe { Box::from_raw(ptr.cast_mut().cast::<Configured<C>>()) };
    if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(boxed))) {
        log_panic::<C>("configuration destroy", &*p);
    }
}

/// # Safety
/// `ptr` is null or a live [`Configured<C>`] from [`config_new`].
unsafe fn configured<'a, C: HttpFilterConfig>(ptr: *const c_void) -> Option<&'a Configured<C>> {
    // SAFETY: per this function's contract.
    unsafe { ptr.cast::<Configured<C>>().as_ref() }
}

/// `envoy_dynamic_module_on_http_filter_config_scheduled` (main thread).
///
/// # Safety
/// Envoy's arguments: a live configuration and its module pointer.
pub unsafe fn config_scheduled<C: HttpFilterConfig>(
    envoy: *mut c_void,
    module: *const c_void,
    event: u64,
) {
    let Some(host) = host() else { return };
    // SAFETY: Envoy passes the pointer `config_new` returned, alive while it is scheduled.
    let Some(cfg) = (unsafe { configured::<C>(module) }) else {
        return;
    };
    let wake = if event == EVENT_NOTIFY {
        cfg.notified.store(false, Ordering::Release);
        Wake::Notified
    } else {
        Wake::Tick
    };
    let mut main = MainThread::new(host, envoy);
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| {
        cfg.config.on_main_thread(&mut main, wake)
    })) {
        log_panic::<C>("on_main_thread", &*p);
    }
}

/// `envoy_dynamic_module_on_http_filter_config_http_callout_done` (main thread).
///
/// # Safety
/// Envoy's arguments: a live configuration; headers and body valid during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn config_callout_done<C: HttpFilterConfig>(
    envoy: *mut c_void,
    module: *const c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_len: usize,
    body: *const EnvoyBuffer,
    body_len: usize,
) {
    let Some(host) = host() else { return };
    // SAFETY: as in `config_scheduled`.
    let Some(cfg) = (unsafe { configured::<C>(module) }) else {
        return;
    };
    // SAFETY: Envoy's response, valid until this hook returns.
    let response = unsafe { CalloutResponse::new(result, headers, headers_len, body, body_len) };
    let mut main = MainThread::new(host, envoy);
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| {
        cfg.config.on_callout_done(&mut main, callout_id, &response)
    })) {
        log_panic::<C>("on_callout_done", &*p);
    }
}

/// Whether `C`'s filters keep no per-stream state (zero-sized): Envoy then gets the
/// configuration's own pointer for every stream, nothing is allocated, and each hook runs on
/// a fresh value from [`HttpFilterConfig::new_filter`].
const fn stateless<C: HttpFilterConfig>() -> bool {
    std::mem::size_of::<C::Filter>() == 0
}

/// One stream's filter.
struct Stream<C: HttpFilterConfig> {
    config: *const Configured<C>,
    /// Kept when the object waits in a pool, for [`HttpFilterConfig::reuse_filter`].
    filter: RefCell<C::Filter>,
    /// A hook panicked: the filter is not called again.
    poisoned: Cell<bool>,
    /// The pool it returns to.
    worker: usize,
}

// SAFETY: the filter is `Send` (a trait bound) and so are the cells around it; the one raw
// pointer, `config`, points at a `Sync` value that outlives the stream.
unsafe impl<C: HttpFilterConfig> Send for Stream<C> {}

/// `envoy_dynamic_module_on_http_filter_new` (a worker).
///
/// # Safety
/// `config` is the pointer [`config_new`] returned for `C`. For a stateless `C::Filter` the
/// answer is that same pointer; the hooks know it from `C`.
pub unsafe fn filter_new<C: HttpFilterConfig>(
    config: *const c_void,
    envoy: *mut c_void,
) -> *const c_void {
    // SAFETY: Envoy creates streams only from a configuration that loaded.
    let Some(cfg) = (unsafe { configured::<C>(config) }) else {
        return std::ptr::null();
    };
    if stateless::<C>() {
        return config;
    }
    let worker = match host() {
        // SAFETY: Envoy's filter of this stream, on its worker.
        Some(h) => unsafe { (h.worker_index)(envoy) as usize },
        None => usize::MAX,
    };
    let spare = cfg.pools.get(worker).and_then(Pool::take);
    let stream = match spare {
        Some(mut s) => {
            let made = catch_unwind(AssertUnwindSafe(|| {
                cfg.config.reuse_filter(s.filter.get_mut());
            }));
            if let Err(p) = made {
                // The object is dropped: it may hold a half-reset filter.
                log_panic::<C>("reuse_filter", &*p);
                return std::ptr::null();
            }
            s.poisoned.set(false);
            s
        }
        None => match catch_unwind(AssertUnwindSafe(|| cfg.config.new_filter())) {
            Ok(filter) => Box::new(Stream::<C> {
                config: cfg,
                filter: RefCell::new(filter),
                poisoned: Cell::new(false),
                worker,
            }),
            Err(p) => {
                // Envoy closes the stream when this is null.
                log_panic::<C>("new_filter", &*p);
                return std::ptr::null();
            }
        },
    };
    Box::into_raw(stream).cast::<c_void>().cast_const()
}

/// # Safety
/// `module` is null or a live `Stream<C>` from [`filter_new`].
unsafe fn stream<'a, C: HttpFilterConfig>(module: *const c_void) -> Option<&'a Stream<C>> {
    // SAFETY: per this function's contract.
    unsafe { module.cast::<Stream<C>>().as_ref() }
}

/// Runs one stream hook: skips poisoned streams and re-entrant calls, catches panics.
///
/// # Safety
/// `module` is null or a live `Stream<C>`; `envoy` is its filter, valid during the hook.
unsafe fn run_hook<C: HttpFilterConfig, R>(
    name: &str,
    envoy: *mut c_void,
    module: *const c_void,
    default: R,
    body: impl FnOnce(&mut C::Filter, &Configured<C>, &mut HttpFilterHandle<'_>) -> R,
    recover: impl FnOnce(&Configured<C>, &mut HttpFilterHandle<'_>) -> R,
) -> R {
    let Some(host) = host() else { return default };
    if stateless::<C>() {
        // SAFETY: for stateless filters `module` is the configuration `filter_new` was given.
        let Some(cfg) = (unsafe { configured::<C>(module) }) else {
            return default;
        };
        let mut handle = HttpFilterHandle::new(host, envoy);
        return match catch_unwind(AssertUnwindSafe(|| {
            body(&mut cfg.config.new_filter(), cfg, &mut handle)
        })) {
            Ok(r) => r,
            Err(p) => {
                log_panic::<C>(name, &*p);
                catch_unwind(AssertUnwindSafe(|| recover(cfg, &mut handle))).unwrap_or(default)
            }
        };
    }
    // SAFETY: per this function's contract.
    let Some(s) = (unsafe { stream::<C>(module) }) else {
        return default;
    };
    if s.poisoned.get() {
        return default;
    }
    let Ok(mut filter) = s.filter.try_borrow_mut() else {
        // Envoy re-entered the filter from a callback of one of its own hooks.
        return default;
    };
    // SAFETY: the configuration outlives its streams (Envoy's filter holds it).
    let cfg = unsafe { &*s.config };
    let mut handle = HttpFilterHandle::new(host, envoy);
    match catch_unwind(AssertUnwindSafe(|| body(&mut filter, cfg, &mut handle))) {
        Ok(r) => r,
        Err(p) => {
            s.poisoned.set(true);
            log_panic::<C>(name, &*p);
            catch_unwind(AssertUnwindSafe(|| recover(cfg, &mut handle))).unwrap_or(default)
        }
    }
}

/// `envoy_dynamic_module_on_http_filter_request_headers`.
///
/// # Safety
/// Envoy's arguments for a live stream.
pub unsafe fn request_headers<C: HttpFilterConfig>(
    envoy: *mut c_void,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's arguments, per this function's contract.
    let status = unsafe {
        run_hook::<C, HeadersStatus>(
            "on_request_headers",
            envoy,
            module,
            HeadersStatus::Continue,
            |f, cfg, h| f.on_request_headers(cfg, h, end_of_stream),
            C::Filter::request_headers_panicked,
        )
    };
    status.to_abi()
}

/// `envoy_dynamic_module_on_http_filter_response_headers`.
///
/// # Safety
/// Envoy's arguments for a live stream.
pub unsafe fn response_headers<C: HttpFilterConfig>(
    envoy: *mut c_void,
    module: *const c_void,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: Envoy's arguments, per this function's contract.
    let status = unsafe {
        run_hook::<C, HeadersStatus>(
            "on_response_headers",
            envoy,
            module,
            HeadersStatus::Continue,
            |f, cfg, h| f.on_response_headers(cfg, h, end_of_stream),
            |_, _| HeadersStatus::Continue,
        )
    };
    status.to_abi()
}

/// `envoy_dynamic_module_on_http_filter_destroy`.
///
/// # Safety
/// `module` is null or a `Stream<C>` from [`filter_new`], not used again.
pub unsafe fn filter_destroy<C: HttpFilterConfig>(module: *const c_void) {
    if module.is_null() || stateless::<C>() {
        return;
    }
    // SAFETY: `module` came from `Box::into_raw` in `filter_new::<C>`; Envoy destroys each
    // stream's filter once.
    let boxed = unsafe { Box::from_raw(module.cast_mut().cast::<Stream<C>>()) };
    // SAFETY: the configuration outlives its streams (Envoy's filter holds it).
    let cfg = unsafe { &*boxed.config };
    // A poisoned filter is not reused: the panic may have left it half-changed.
    let boxed = match cfg.pools.get(boxed.worker) {
        Some(pool) if !boxed.poisoned.get() => match pool.give(boxed) {
            None => return,
            Some(extra) => extra,
        },
        _ => boxed,
    };
    if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(boxed))) {
        log_panic::<C>("filter destroy", &*p);
    }
}
