//! Envoy's cluster specifier plugins (`envoy.router.cluster_specifier_plugin.dynamic_modules`,
//! Envoy 1.40): a module that picks a route's cluster while Envoy resolves the route.
//!
//! Where an HTTP filter that routes must write a header the route reads and then have Envoy
//! match the route again, a cluster specifier is asked once, from inside the route lookup,
//! reads the request headers in place and names the cluster. No filter object is made per
//! stream and no header is written. A route uses one with `inline_cluster_specifier_plugin`
//! (or `cluster_specifier_plugin`, naming one of the route configuration's); the route's
//! `request_headers_to_add` still apply, so a per-cluster header comes from a formatter
//! such as `%CLUSTER_METADATA(maille:variant)%`.
//!
//! A specifier implements [`ClusterSpecifier`] and is exported with
//! [`crate::export_cluster_specifier!`], next to the module's HTTP filter (whose
//! [`crate::export_http_filter!`] exports the module's program init).

use std::ffi::c_void;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::{EnvoyBuffer, Host, ModuleBuffer};
use crate::handle::{envoy_bytes, metric_result, Counter, MetricError};
use crate::hooks::{hook_bytes, host, log_panic_of};
use crate::{log, Level};

/// A cluster specifier's configuration: made on Envoy's main thread each time a route
/// configuration naming it loads (again on every RDS update; once for a named
/// `cluster_specifier_plugins` entry shared by several routes), then asked by every worker at
/// once (so it is read-only while serving), and destroyed on any thread.
pub trait ClusterSpecifier: Sized + Send + Sync + 'static {
    /// The specifier's name, first in its log lines.
    const NAME: &'static str;

    /// Parses and checks `config` (the `specifier_config` of Envoy's
    /// `DynamicModuleClusterSpecifier`: a `StringValue`'s text) and defines the metrics. An
    /// error refuses the configuration: Envoy logs `NAME: <error>` and rejects the route.
    fn new(cx: &mut SpecifierConfigContext<'_>, config: &[u8]) -> Result<Self, String>;

    /// Chooses the cluster of one request with [`SpecifierHandle::set_cluster`]. Envoy asks
    /// when it resolves the request's route (before any HTTP filter runs) and again each
    /// time a filter refreshes the route's cluster. Returning false (or panicking) discards
    /// what this call set and keeps the previous choice: on the first call there is none, and
    /// Envoy answers the route's `cluster_not_found_response_code` (503 by default) without
    /// reaching any upstream.
    fn select(&self, request: &mut SpecifierHandle<'_>) -> bool;
}

/// What a specifier's configuration may do while it loads: define metrics (Envoy 1.40 refuses
/// new ones afterwards).
#[derive(Debug)]
pub struct SpecifierConfigContext<'c> {
    host: &'static Host,
    ptr: *mut c_void,
    name: &'c [u8],
}

impl SpecifierConfigContext<'_> {
    /// The `specifier_name` of the configuration (which of a module's specifiers Envoy
    /// asks for).
    pub fn name(&self) -> &[u8] {
        self.name
    }

    /// Defines a counter without labels: `/stats` shows it as `<namespace>.<name>`.
    pub fn define_counter(&mut self, name: &str) -> Result<Counter, MetricError> {
        let mut id = 0usize;
        // SAFETY: the configuration is valid while it loads; `name` outlives the call (Envoy
        // copies it); no labels; `id` is a valid place to write.
        let r = unsafe {
            (self.host.specifier_define_counter)(
                self.ptr,
                ModuleBuffer::new(name.as_bytes()),
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        };
        metric_result(r).map(|()| Counter(id))
    }
}

/// One request a specifier is asked about, valid during [`ClusterSpecifier::select`] only.
/// Header values are Envoy's own bytes, valid until the call returns.
#[derive(Debug)]
pub struct SpecifierHandle<'s> {
    host: &'static Host,
    ctx: *mut c_void,
    config: *mut c_void,
    _select: PhantomData<&'s mut ()>,
}

impl SpecifierHandle<'_> {
    /// The first value of request header `name` (lowercase; `:path`, `:method` and the other
    /// pseudo-headers too), if present.
    pub fn request_header(&self, name: &str) -> Option<&[u8]> {
        let mut out = EnvoyBuffer::empty();
        // SAFETY: `ctx` is valid during `select`; `name` outlives the call; `out` is a valid
        // place to write; the count pointer may be null.
        let found = unsafe {
            (self.host.specifier_get_header)(
                self.ctx,
                ModuleBuffer::new(name.as_bytes()),
                &mut out,
                0,
                std::ptr::null_mut(),
            )
        };
        if !found {
            return None;
        }
        // SAFETY: Envoy's header value, unchanged while `select` runs (nothing here writes
        // headers).
        unsafe { envoy_bytes(&out, self) }
    }

    /// Routes the request to cluster `name` (Envoy copies it). A cluster Envoy does not know
    /// is answered as no cluster: the route's not-found status.
    pub fn set_cluster(&mut self, name: &str) {
        // SAFETY: `ctx` is valid during `select`; `name` outlives the call.
        unsafe { (self.host.specifier_set_cluster)(self.ctx, ModuleBuffer::new(name.as_bytes())) }
    }

    /// Adds `n` to a counter of this configuration.
    pub fn increment_counter(&self, counter: Counter, n: u64) -> Result<(), MetricError> {
        // SAFETY: the configuration outlives every `select` of it; Envoy's counters may be
        // incremented from any worker; no labels.
        metric_result(unsafe {
            (self.host.specifier_increment_counter)(
                self.config,
                counter.0,
                std::ptr::null_mut(),
                0,
                n,
            )
        })
    }
}

/// A loaded specifier and Envoy's pointer to its configuration (for its metrics).
pub struct Specified<C: ClusterSpecifier> {
    config: C,
    envoy: *mut c_void,
}

impl<C: ClusterSpecifier + std::fmt::Debug> std::fmt::Debug for Specified<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Specified")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<C: ClusterSpecifier> std::ops::Deref for Specified<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.config
    }
}

// SAFETY: `envoy` is only passed to Envoy's metric callbacks, which Envoy makes safe from any
// thread, and it outlives this value (Envoy destroys the module's configuration first).
unsafe impl<C: ClusterSpecifier> Send for Specified<C> {}
// SAFETY: as above; `C` itself is `Sync`.
unsafe impl<C: ClusterSpecifier> Sync for Specified<C> {}

fn log_panic<C: ClusterSpecifier>(hook: &str, payload: &(dyn std::any::Any + Send)) {
    log_panic_of(C::NAME, hook, payload);
}

/// `envoy_dynamic_module_on_cluster_specifier_config_new` (main thread).
///
/// # Safety
/// Envoy's arguments: a live configuration and buffers valid during the call.
pub unsafe fn config_new<C: ClusterSpecifier>(
    envoy: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    let Some(host) = host() else {
        return std::ptr::null();
    };
    // SAFETY: Envoy's name and configuration bytes, valid during this call.
    let (name, bytes) = unsafe { (hook_bytes(&name), hook_bytes(&config)) };
    let built = catch_unwind(AssertUnwindSafe(|| {
        let mut cx = SpecifierConfigContext {
            host,
            ptr: envoy,
            name,
        };
        C::new(&mut cx, bytes)
    }));
    match built {
        Ok(Ok(config)) => Box::into_raw(Box::new(Specified { config, envoy }))
            .cast::<c_void>()
            .cast_const(),
        Ok(Err(e)) => {
            log(Level::Error, &format!("{}: {e}", C::NAME));
            std::ptr::null()
        }
        Err(p) => {
            log_panic::<C>("configuration", &*p);
            std::ptr::null()
        }
    }
}

/// `envoy_dynamic_module_on_cluster_specifier_config_destroy` (any thread: the last route
/// holding it may go on a worker).
///
/// # Safety
/// `ptr` is null or was returned by [`config_new`] for `C` and is not used again.
pub unsafe fn config_destroy<C: ClusterSpecifier>(ptr: *const c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: `ptr` came from `Box::into_raw` in `config_new::<C>`; Envoy destroys it once,
    // after its last `select`.
    let boxed = unsafe { Box::from_raw(ptr.cast_mut().cast::<Specified<C>>()) };
    if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(boxed))) {
        log_panic::<C>("configuration destroy", &*p);
    }
}

/// `envoy_dynamic_module_on_cluster_specifier_select` (a worker, concurrently with others).
///
/// # Safety
/// `module` is a live [`Specified<C>`] from [`config_new`]; `ctx` is Envoy's context of this
/// call.
pub unsafe fn select<C: ClusterSpecifier>(module: *const c_void, ctx: *mut c_void) -> bool {
    let Some(host) = host() else { return false };
    // SAFETY: Envoy passes the pointer `config_new` returned, alive during the call.
    let Some(cfg) = (unsafe { module.cast::<Specified<C>>().as_ref() }) else {
        return false;
    };
    let mut handle = SpecifierHandle {
        host,
        ctx,
        config: cfg.envoy,
        _select: PhantomData,
    };
    match catch_unwind(AssertUnwindSafe(|| cfg.config.select(&mut handle))) {
        Ok(chosen) => chosen,
        Err(p) => {
            // False drops whatever the call set: no cluster a half-made choice named.
            log_panic::<C>("select", &*p);
            false
        }
    }
}

/// Exports the cluster specifier hooks for `$config` (a [`ClusterSpecifier`]). Use it in a
/// crate that also invokes [`crate::export_http_filter!`], which exports the module's
/// `envoy_dynamic_module_on_program_init`.
#[macro_export]
macro_rules! export_cluster_specifier {
    ($config:ty) => {
        const _: () = {
            use ::core::ffi::c_void;
            use $crate::abi::EnvoyBuffer;
            use $crate::specifier;

            // Envoy calls each hook with the arguments abi.h describes; each forwards them
            // unchanged to the `specifier` function of the same name.
            #[no_mangle]
            unsafe extern "C" fn envoy_dynamic_module_on_cluster_specifier_config_new(
                envoy: *mut c_void,
                name: EnvoyBuffer,
                config: EnvoyBuffer,
            ) -> *const c_void {
                // SAFETY: Envoy's arguments, as `specifier` requires them.
                unsafe { specifier::config_new::<$config>(envoy, name, config) }
            }

            #[no_mangle]
            unsafe extern "C" fn envoy_dynamic_module_on_cluster_specifier_config_destroy(
                module: *const c_void,
            ) {
                // SAFETY: Envoy's arguments, as `specifier` requires them.
                unsafe { specifier::config_destroy::<$config>(module) }
            }

            #[no_mangle]
            unsafe extern "C" fn envoy_dynamic_module_on_cluster_specifier_select(
                module: *const c_void,
                ctx: *mut c_void,
            ) -> bool {
                // SAFETY: Envoy's arguments, as `specifier` requires them.
                unsafe { specifier::select::<$config>(module, ctx) }
            }
        };
    };
}
