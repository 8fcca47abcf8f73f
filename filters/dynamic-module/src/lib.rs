//! Envoy dynamic modules for Maille's filters: the part of Envoy's dynamic-module C ABI
//! (Envoy 1.40, ABI v0.2.0) that the filters use, and a safe wrapper over it, so that a filter
//! crate builds as a native shared library Envoy loads with
//! `envoy.filters.http.dynamic_modules`, with `#![forbid(unsafe_code)]` kept.
//!
//! A filter implements [`HttpFilterConfig`] (one per loaded configuration, shared by every
//! worker) and [`HttpFilter`] (one per stream), and exports them with
//! [`export_http_filter!`]. The wrapper gives the hooks handles that are valid for the hook's
//! duration only ([`HttpFilterHandle`], [`ConfigContext`], [`MainThread`]), catches every
//! panic at the boundary (logged through Envoy, answered with a safe default), and resolves
//! Envoy's callbacks by name when the module loads, so a missing callback is a clear load
//! error rather than a crash, and test binaries that link a filter need no Envoy.
//!
//! A module may also be a cluster specifier ([`ClusterSpecifier`], exported with
//! [`export_cluster_specifier!`]): asked for a route's cluster while Envoy resolves it.
//!
//! It does not cover the whole ABI (bodies, trailers, streams, per-route configuration): the
//! filters need headers, local replies, metrics, a main-thread timer and HTTP callouts.
//! This is the only crate of the workspace with `unsafe` code; each block says why it holds.

#[doc(hidden)]
pub mod abi;
mod handle;
#[doc(hidden)]
pub mod hooks;
#[doc(hidden)]
pub mod specifier;

#[cfg(test)]
mod tests;

pub use handle::{
    CalloutError, CalloutResponse, CalloutResult, ConfigContext, Counter, CounterVec, GaugeVec,
    HttpFilterHandle, MainThread, MetricError, Wake,
};
pub use hooks::Configured;
pub use specifier::{ClusterSpecifier, SpecifierConfigContext, SpecifierHandle};

// Panics are caught at the boundary; with `panic = "abort"` a panic would take Envoy down.
#[cfg(panic = "abort")]
compile_error!("maille-dynamic-module needs panic = \"unwind\" (the release profile's default)");

/// What a headers hook tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersStatus {
    /// Go on with the next filter.
    Continue,
    /// Stop here (after a local reply).
    StopIteration,
}

impl HeadersStatus {
    pub(crate) fn to_abi(self) -> u32 {
        match self {
            HeadersStatus::Continue => abi::STATUS_CONTINUE,
            HeadersStatus::StopIteration => abi::STATUS_STOP_ITERATION,
        }
    }
}

/// Log levels of Envoy's `dynamic_modules` logger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn to_abi(self) -> u32 {
        match self {
            Level::Debug => abi::LOG_DEBUG,
            Level::Info => abi::LOG_INFO,
            Level::Warn => abi::LOG_WARN,
            Level::Error => abi::LOG_ERROR,
        }
    }
}

/// Writes `msg` to Envoy's log (logger `dynamic_modules`) at `level`.
pub fn log(level: Level, msg: &str) {
    if let Some(h) = hooks::host() {
        // SAFETY: `log` is Envoy's, callable from any thread; `msg` outlives the call.
        unsafe { (h.log)(level.to_abi(), abi::ModuleBuffer::new(msg.as_bytes())) }
    }
}

/// Whether Envoy would write a line at `level` (to skip formatting one it would drop).
pub fn log_enabled(level: Level) -> bool {
    match hooks::host() {
        // SAFETY: `log_enabled` is Envoy's, callable from any thread.
        Some(h) => unsafe { (h.log_enabled)(level.to_abi()) },
        None => false,
    }
}

/// Milliseconds since the Unix epoch from the kernel's coarse real-time clock (a few ms of
/// resolution, a fraction of `SystemTime::now`'s cost): for time buckets and timestamps on
/// the request path, not for measuring latencies.
pub fn coarse_now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid place to write; CLOCK_REALTIME_COARSE exists on Linux ≥ 2.6.32.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() * 1000 + u64::from(d.subsec_millis()));
    }
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// A filter's configuration: made once per loaded configuration on Envoy's main thread,
/// then shared by the streams of every worker.
pub trait HttpFilterConfig: Sized + Send + Sync + 'static {
    /// The filter's name, first in its log lines (`maille_breaker: ...`).
    const NAME: &'static str;
    /// The per-stream filter.
    type Filter: HttpFilter<Config = Self>;

    /// Parses and checks `config` (the `filter_config` of Envoy's `DynamicModuleFilter`: a
    /// `StringValue`'s text, or empty) and defines the metrics. An error refuses the
    /// configuration: Envoy logs `NAME: <error>` and rejects it.
    fn new(cx: &mut ConfigContext<'_>, config: &[u8]) -> Result<Self, String>;

    /// The filter of a new stream (on its worker). A zero-sized filter keeps no per-stream
    /// state: nothing is allocated per stream and this is called at each hook instead, so it
    /// must have no effect of its own there.
    fn new_filter(&self) -> Self::Filter;

    /// Prepares the filter of a finished stream for a new one on the same worker (the wrapper
    /// keeps finished streams' objects for reuse). The default replaces it with
    /// [`HttpFilterConfig::new_filter`]; a filter may instead reset its per-stream fields and
    /// keep what it learnt, such as a lookup it will need again.
    fn reuse_filter(&self, filter: &mut Self::Filter) {
        *filter = self.new_filter();
    }

    /// On Envoy's main thread, after [`ConfigContext::tick_every`]'s period or a
    /// [`Configured::notify_main_thread`].
    fn on_main_thread(&self, _main: &mut MainThread<'_>, _why: Wake) {}

    /// On Envoy's main thread, when a [`MainThread::http_callout`] is answered or fails.
    fn on_callout_done(
        &self,
        _main: &mut MainThread<'_>,
        _callout_id: u64,
        _response: &CalloutResponse<'_>,
    ) {
    }
}

/// The filter of one HTTP stream; its hooks run on the stream's worker, one at a time.
/// (`Send`: a finished stream's object waits for reuse in its configuration's pool.)
pub trait HttpFilter: Sized + Send + 'static {
    /// Its configuration.
    type Config: HttpFilterConfig<Filter = Self>;

    /// The request headers have arrived.
    fn on_request_headers(
        &mut self,
        _config: &Configured<Self::Config>,
        _envoy: &mut HttpFilterHandle<'_>,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        HeadersStatus::Continue
    }

    /// The response headers have arrived (not for a local reply this filter sent).
    fn on_response_headers(
        &mut self,
        _config: &Configured<Self::Config>,
        _envoy: &mut HttpFilterHandle<'_>,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        HeadersStatus::Continue
    }

    /// [`HttpFilter::on_request_headers`] panicked (and was logged): leave the request in a
    /// safe state. The default lets it through unchanged.
    fn request_headers_panicked(
        _config: &Configured<Self::Config>,
        _envoy: &mut HttpFilterHandle<'_>,
    ) -> HeadersStatus {
        HeadersStatus::Continue
    }
}

/// Exports the event hooks Envoy looks up in a dynamic module, for the HTTP filter whose
/// configuration type is `$config` (an [`HttpFilterConfig`]). Invoke it once, in the crate
/// that builds the `cdylib`; the library is then loaded by the name of its file
/// (`libNAME.so` for `dynamic_module_config: { name: NAME }`).
#[macro_export]
macro_rules! export_http_filter {
    ($config:ty) => {
        const _: () = {
            use ::core::ffi::{c_char, c_void};
            use $crate::abi::{EnvoyBuffer, EnvoyHttpHeader};
            use $crate::hooks;

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
                hooks::program_init()
            }

            // Envoy calls each hook below with the arguments abi.h describes; each forwards
            // them unchanged to the `hooks` function of the same name.
            #[no_mangle]
            unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
                envoy: *mut c_void,
                name: EnvoyBuffer,
                config: EnvoyBuffer,
            ) -> *const c_void {
                // SAFETY: Envoy's arguments, as `hooks` requires them.
                unsafe { hooks::config_new::<$config>(envoy, name, config) }
            }

            #[no_mangle]
            unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
                module: *const c_void,
            ) {
                // SAFETY: Envoy's arguments, as `hooks` requires them.
                unsafe { hooks::config_destroy::<$config>(module) }
            }

            #[no_mangle]
            unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
                envoy: *mut c_void,
                module: *const c_void,
                event: u64,
            ) {
                // SAFETY: Envoy's arguments, as `hooks` requires them.
                unsafe { hooks::config_scheduled::<$config>(envoy, module, event) }
            }

            #[no_mangle]
            unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
                envoy: *mut c_void,
                module: *const c_void,
                callout_id: u64,
                result: u32,
                headers: *const EnvoyHttpHeader,
                headers_len: usize,
                body: *const EnvoyBuffer,
                body_len: usize,
            ) {
                // SAFETY: Envoy's arguments, as `hooks` requires them.
                unsafe {
                    hooks::config_callout_done::<$config>(
                        envoy, module, callout_id, result, headers, headers_len, body, body_len,
                    )
                }
            }

            #[no_mangle]
            unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
                config: *const c_void,
                envoy: *mut c_void,
            ) -> *const c_void {
                // SAFETY: Envoy's arguments, as `hooks` requires them.
                unsafe { hooks::filter_new::<$config>(config, envoy) }
            }

            #[no_mangle]
            unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
                envoy: *mut c_void,
                module: *const c_void,
                end_of_stream: bool,
            ) -> u32 {
                // SAFETY: Envoy's arguments, as `hooks` requires them.
                unsafe { hooks::request_headers::<$config>(envoy, module, end_of_stream) }
            }

            #[no_mangle]
            unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
                envoy: *mut c_void,
                module: *const c_void,
                end_of_stream: bool,
            ) -> u32 {
                // SAFETY: Envoy's arguments, as `hooks` requires them.
                unsafe { hooks::response_headers::<$config>(envoy, module, end_of_stream) }
            }

            #[no_mangle]
            unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(
                module: *const c_void,
            ) {
                // SAFETY: Envoy's arguments, as `hooks` requires them.
                unsafe { hooks::filter_destroy::<$config>(module) }
            }

            // Hooks Envoy 1.40 requires that these filters do not use: bodies and trailers
            // pass through, per-stream callouts, streams and schedulers are never started,
            // and the end of a stream needs nothing (its object goes back to the pool when
            // Envoy destroys it).
            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
                _: *mut c_void,
                _: *const c_void,
            ) {
            }

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
                _: *mut c_void,
                _: *const c_void,
                _: bool,
            ) -> u32 {
                0
            }

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
                _: *mut c_void,
                _: *const c_void,
            ) -> u32 {
                0
            }

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
                _: *mut c_void,
                _: *const c_void,
                _: bool,
            ) -> u32 {
                0
            }

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
                _: *mut c_void,
                _: *const c_void,
            ) -> u32 {
                0
            }

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
                _: *mut c_void,
                _: *const c_void,
                _: u64,
                _: u32,
                _: *const EnvoyHttpHeader,
                _: usize,
                _: *const EnvoyBuffer,
                _: usize,
            ) {
            }

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
                _: *mut c_void,
                _: *const c_void,
                _: u64,
                _: *const EnvoyHttpHeader,
                _: usize,
                _: bool,
            ) {
            }

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
                _: *mut c_void,
                _: *const c_void,
                _: u64,
                _: *const EnvoyBuffer,
                _: usize,
                _: bool,
            ) {
            }

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
                _: *mut c_void,
                _: *const c_void,
                _: u64,
                _: *const EnvoyHttpHeader,
                _: usize,
            ) {
            }

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
                _: *mut c_void,
                _: *const c_void,
                _: u64,
            ) {
            }

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
                _: *mut c_void,
                _: *const c_void,
                _: u64,
                _: u32,
            ) {
            }

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
                _: *mut c_void,
                _: *const c_void,
                _: u64,
            ) {
            }

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
                _: *mut c_void,
                _: *const c_void,
            ) {
            }

            #[no_mangle]
            extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
                _: *mut c_void,
                _: *const c_void,
            ) {
            }
        };
    };
}
