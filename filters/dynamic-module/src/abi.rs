//! The subset of Envoy's dynamic-module C ABI (`source/extensions/dynamic_modules/abi/abi.h`,
//! ABI version v0.2.0 as shipped in Envoy 1.40) that Maille's filters use: the types, the
//! constants, and the callbacks, resolved from the Envoy process when the module loads.
//!
//! Every declaration here was checked against the header and against Envoy 1.40's behaviour
//! (`wasm-tests/kit/tests/*_envoy.rs` run them in a real Envoy). C enums cross the boundary as
//! `u32` and are compared with the constants below: a value Envoy adds later is then an
//! unknown number, not an invalid Rust enum.

use std::ffi::{c_char, c_void, CStr};

/// The ABI version this module is built against, returned from
/// `envoy_dynamic_module_on_program_init` (Envoy 1.40 logs "Dynamic module ABI version v0.2.0
/// matched."; on a mismatch it only warns).
pub const ABI_VERSION: &CStr = c"v0.2.0";

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by the module, read by Envoy
/// during the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn new(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr().cast(),
            length: bytes.len(),
        }
    }

    /// A null buffer: "no value" (`set_header` removes the header).
    pub fn null() -> ModuleBuffer {
        ModuleBuffer {
            ptr: std::ptr::null(),
            length: 0,
        }
    }
}

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl EnvoyBuffer {
    pub fn empty() -> EnvoyBuffer {
        EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        }
    }
}

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_envoy_http_header`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type`.
pub const HEADER_REQUEST: u32 = 0;
pub const HEADER_RESPONSE: u32 = 2;

/// `envoy_dynamic_module_type_log_level` (spdlog's order).
pub const LOG_DEBUG: u32 = 1;
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;

/// `envoy_dynamic_module_type_on_http_filter_*_status`: the same two leading values for
/// headers, body and trailers.
pub const STATUS_CONTINUE: u32 = 0;
pub const STATUS_STOP_ITERATION: u32 = 1;

/// `envoy_dynamic_module_type_metrics_result`.
pub const METRICS_SUCCESS: u32 = 0;
pub const METRICS_NOT_FOUND: u32 = 1;
pub const METRICS_INVALID_LABELS: u32 = 2;
pub const METRICS_FROZEN: u32 = 3;

/// `envoy_dynamic_module_type_http_callout_init_result`.
pub const CALLOUT_INIT_SUCCESS: u32 = 0;
pub const CALLOUT_INIT_MISSING_REQUIRED_HEADERS: u32 = 1;
pub const CALLOUT_INIT_CLUSTER_NOT_FOUND: u32 = 2;
pub const CALLOUT_INIT_DUPLICATE_CALLOUT_ID: u32 = 3;
pub const CALLOUT_INIT_CANNOT_CREATE_REQUEST: u32 = 4;

/// `envoy_dynamic_module_type_http_callout_result`.
pub const CALLOUT_SUCCESS: u32 = 0;
pub const CALLOUT_RESET: u32 = 1;
pub const CALLOUT_EXCEED_RESPONSE_BUFFER_LIMIT: u32 = 2;

/// `envoy_dynamic_module_type_attribute_id`: `response.code` and `response.code_details`.
pub const ATTRIBUTE_RESPONSE_CODE: u32 = 15;
pub const ATTRIBUTE_RESPONSE_CODE_DETAILS: u32 = 16;

/// Declares [`Host`], the table of Envoy callbacks, and its resolution by symbol name.
macro_rules! host_table {
    ($( $(#[$doc:meta])* $field:ident = $symbol:literal : fn($($arg:ty),* $(,)?) $(-> $ret:ty)?; )*) => {
        /// Envoy's callbacks that this crate calls, resolved once from the Envoy process.
        #[derive(Clone, Copy)]
        pub(crate) struct Host {
            $( $(#[$doc])* pub(crate) $field: unsafe extern "C" fn($($arg),*) $(-> $ret)?, )*
        }

        impl Host {
            /// Every symbol the table needs, in declaration order.
            #[cfg(test)]
            pub(crate) const SYMBOLS: &'static [&'static str] = &[$($symbol),*];

            /// Looks every callback up with `lookup` (the process's `dlsym`); the error is the
            /// first symbol that is missing.
            pub(crate) fn resolve(
                lookup: impl Fn(&CStr) -> *mut c_void,
            ) -> Result<Host, &'static str> {
                Ok(Host {
                    $( $field: {
                        let name = CStr::from_bytes_with_nul(concat!($symbol, "\0").as_bytes())
                            .map_err(|_| $symbol)?;
                        let p = lookup(name);
                        if p.is_null() {
                            return Err($symbol);
                        }
                        // SAFETY: `p` is the address of Envoy's exported C function of this
                        // name, whose C signature (abi.h) is the one declared here.
                        unsafe {
                            std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(p)
                        }
                    }, )*
                })
            }
        }

        impl std::fmt::Debug for Host {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("Host { .. }")
            }
        }
    };
}

host_table! {
    log = "envoy_dynamic_module_callback_log": fn(u32, ModuleBuffer);
    log_enabled = "envoy_dynamic_module_callback_log_enabled": fn(u32) -> bool;
    /// Main thread only.
    get_concurrency = "envoy_dynamic_module_callback_get_concurrency": fn() -> u32;
    worker_index = "envoy_dynamic_module_callback_http_filter_get_worker_index":
        fn(*mut c_void) -> u32;
    get_header = "envoy_dynamic_module_callback_http_get_header":
        fn(*mut c_void, u32, ModuleBuffer, *mut EnvoyBuffer, usize, *mut usize) -> bool;
    set_header = "envoy_dynamic_module_callback_http_set_header":
        fn(*mut c_void, u32, ModuleBuffer, ModuleBuffer) -> bool;
    send_response = "envoy_dynamic_module_callback_http_send_response":
        fn(*mut c_void, u32, *mut ModuleHttpHeader, usize, ModuleBuffer, ModuleBuffer);
    get_cluster_name = "envoy_dynamic_module_callback_http_get_cluster_name":
        fn(*mut c_void, *mut EnvoyBuffer) -> bool;
    get_attribute_string = "envoy_dynamic_module_callback_http_filter_get_attribute_string":
        fn(*mut c_void, u32, *mut EnvoyBuffer) -> bool;
    get_attribute_int = "envoy_dynamic_module_callback_http_filter_get_attribute_int":
        fn(*mut c_void, u32, *mut u64) -> bool;
    clear_route_cache = "envoy_dynamic_module_callback_http_clear_route_cache": fn(*mut c_void);
    define_counter = "envoy_dynamic_module_callback_http_filter_config_define_counter":
        fn(*mut c_void, ModuleBuffer, *mut ModuleBuffer, usize, *mut usize) -> u32;
    define_gauge = "envoy_dynamic_module_callback_http_filter_config_define_gauge":
        fn(*mut c_void, ModuleBuffer, *mut ModuleBuffer, usize, *mut usize) -> u32;
    increment_counter = "envoy_dynamic_module_callback_http_filter_increment_counter":
        fn(*mut c_void, usize, *mut ModuleBuffer, usize, u64) -> u32;
    config_increment_counter = "envoy_dynamic_module_callback_http_filter_config_increment_counter":
        fn(*mut c_void, usize, *mut ModuleBuffer, usize, u64) -> u32;
    config_set_gauge = "envoy_dynamic_module_callback_http_filter_config_set_gauge":
        fn(*mut c_void, usize, *mut ModuleBuffer, usize, u64) -> u32;
    scheduler_new = "envoy_dynamic_module_callback_http_filter_config_scheduler_new":
        fn(*mut c_void) -> *mut c_void;
    scheduler_commit = "envoy_dynamic_module_callback_http_filter_config_scheduler_commit":
        fn(*mut c_void, u64);
    scheduler_delete = "envoy_dynamic_module_callback_http_filter_config_scheduler_delete":
        fn(*mut c_void);
    http_callout = "envoy_dynamic_module_callback_http_filter_config_http_callout":
        fn(*mut c_void, *mut u64, ModuleBuffer, *mut ModuleHttpHeader, usize, ModuleBuffer, u64) -> u32;
    /// The cluster specifier's (`crate::specifier`): its context pointer first.
    specifier_get_header = "envoy_dynamic_module_callback_cluster_specifier_get_request_header_value":
        fn(*mut c_void, ModuleBuffer, *mut EnvoyBuffer, usize, *mut usize) -> bool;
    specifier_set_cluster = "envoy_dynamic_module_callback_cluster_specifier_set_cluster_name":
        fn(*mut c_void, ModuleBuffer);
    /// Its configuration's pointer first.
    specifier_define_counter = "envoy_dynamic_module_callback_cluster_specifier_config_define_counter":
        fn(*mut c_void, ModuleBuffer, *mut ModuleBuffer, usize, *mut usize) -> u32;
    specifier_increment_counter = "envoy_dynamic_module_callback_cluster_specifier_config_increment_counter":
        fn(*mut c_void, usize, *mut ModuleBuffer, usize, u64) -> u32;
}

/// Resolves [`Host`] from the running process (Envoy exports its callbacks as dynamic
/// symbols of the executable).
pub(crate) fn resolve_from_process() -> Result<Host, &'static str> {
    Host::resolve(|name| {
        // SAFETY: `name` is NUL-terminated; RTLD_DEFAULT searches the global scope, where the
        // Envoy executable's exported symbols are.
        unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
    })
}
