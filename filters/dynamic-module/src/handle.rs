//! Safe handles on Envoy's objects, each valid for the hook that hands it out.

use std::ffi::c_void;
use std::marker::PhantomData;

use crate::abi::{self, EnvoyBuffer, EnvoyHttpHeader, Host, ModuleBuffer, ModuleHttpHeader};

/// A metrics call Envoy refused, or one this crate refused before asking Envoy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// Envoy has no metric with that id (`MetricNotFound`).
    #[error("no such metric")]
    NotFound,
    /// Envoy refused the labels (`InvalidLabels`).
    #[error("invalid labels")]
    InvalidLabels,
    /// Metrics can only be defined while the configuration loads (`Frozen`).
    #[error("metrics are frozen once the configuration has loaded")]
    Frozen,
    /// The call gave `got` label values for a metric defined with `expected` labels. Envoy
    /// does not check this itself (the header says the lengths MUST match), so it is refused
    /// here.
    #[error("{got} label values for a metric with {expected} labels")]
    LabelCount { expected: usize, got: usize },
    /// An answer this crate does not know.
    #[error("metrics call failed with {0}")]
    Other(u32),
}

pub(crate) fn metric_result(r: u32) -> Result<(), MetricError> {
    match r {
        abi::METRICS_SUCCESS => Ok(()),
        abi::METRICS_NOT_FOUND => Err(MetricError::NotFound),
        abi::METRICS_INVALID_LABELS => Err(MetricError::InvalidLabels),
        abi::METRICS_FROZEN => Err(MetricError::Frozen),
        n => Err(MetricError::Other(n)),
    }
}

/// A counter without labels, defined at configuration time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter(pub(crate) usize);

/// A counter with labels: one series per combination of label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterVec {
    id: usize,
    labels: usize,
}

/// A gauge with labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaugeVec {
    id: usize,
    labels: usize,
}

/// Label values as Envoy reads them; checked against the metric's label count first.
fn label_buffers(values: &[&str], expected: usize) -> Result<Vec<ModuleBuffer>, MetricError> {
    if values.len() != expected {
        return Err(MetricError::LabelCount {
            expected,
            got: values.len(),
        });
    }
    Ok(values
        .iter()
        .map(|v| ModuleBuffer::new(v.as_bytes()))
        .collect())
}

/// Bytes Envoy owns, as a slice living as long as `_owner`'s borrow.
///
/// # Safety
/// `buf` must be null or point to `buf.length` readable bytes that stay valid and unchanged
/// for the lifetime `'a`.
pub(crate) unsafe fn envoy_bytes<'a, T: ?Sized>(
    buf: &EnvoyBuffer,
    _owner: &'a T,
) -> Option<&'a [u8]> {
    if buf.ptr.is_null() {
        return None;
    }
    // SAFETY: non-null and valid for `length` bytes during `'a`, per this function's contract.
    Some(unsafe { std::slice::from_raw_parts(buf.ptr.cast::<u8>(), buf.length) })
}

/// The HTTP stream a hook runs for. Borrowed values (header values, the cluster name) are
/// Envoy's own bytes, valid until the hook returns or a setter is called; the borrow checker
/// holds both, since setters take `&mut self`.
#[derive(Debug)]
pub struct HttpFilterHandle<'h> {
    host: &'static Host,
    ptr: *mut c_void,
    _hook: PhantomData<&'h mut ()>,
}

impl HttpFilterHandle<'_> {
    pub(crate) fn new(host: &'static Host, ptr: *mut c_void) -> Self {
        HttpFilterHandle {
            host,
            ptr,
            _hook: PhantomData,
        }
    }

    fn header(&self, kind: u32, name: &str) -> Option<&[u8]> {
        let mut out = EnvoyBuffer::empty();
        // SAFETY: `self.ptr` is the stream's filter, valid during this hook; `name` outlives
        // the call; `out` is a valid place to write; the count pointer may be null.
        let found = unsafe {
            (self.host.get_header)(
                self.ptr,
                kind,
                ModuleBuffer::new(name.as_bytes()),
                &mut out,
                0,
                std::ptr::null_mut(),
            )
        };
        if !found {
            return None;
        }
        // SAFETY: Envoy's header value, valid until the hook ends or a setter is called; both
        // end `&self`'s borrow.
        unsafe { envoy_bytes(&out, self) }
    }

    /// The first value of request header `name` (lowercase), if present.
    pub fn request_header(&self, name: &str) -> Option<&[u8]> {
        self.header(abi::HEADER_REQUEST, name)
    }

    /// The first value of response header `name` (lowercase), if present.
    pub fn response_header(&self, name: &str) -> Option<&[u8]> {
        self.header(abi::HEADER_RESPONSE, name)
    }

    /// Sets request header `name`, replacing every value it had. False if Envoy refused
    /// (no request headers in this phase).
    pub fn set_request_header(&mut self, name: &str, value: &[u8]) -> bool {
        self.set(abi::HEADER_REQUEST, name, ModuleBuffer::new(value))
    }

    /// Removes request header `name`.
    pub fn remove_request_header(&mut self, name: &str) -> bool {
        self.set(abi::HEADER_REQUEST, name, ModuleBuffer::null())
    }

    fn set(&mut self, kind: u32, name: &str, value: ModuleBuffer) -> bool {
        // SAFETY: the stream is valid during this hook and both buffers outlive the call
        // (Envoy copies them).
        unsafe { (self.host.set_header)(self.ptr, kind, ModuleBuffer::new(name.as_bytes()), value) }
    }

    /// Asks Envoy to route the request again (after a header the route reads has changed).
    pub fn clear_route_cache(&mut self) {
        // SAFETY: the stream is valid during this hook.
        unsafe { (self.host.clear_route_cache)(self.ptr) }
    }

    /// Answers the request locally: `status`, `headers`, `body`, and `details` (Envoy's
    /// response code details, e.g. in access logs).
    pub fn send_response(
        &mut self,
        status: u32,
        headers: &[(&str, &[u8])],
        body: &[u8],
        details: &str,
    ) {
        let mut list: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHttpHeader {
                key_ptr: k.as_ptr().cast(),
                key_length: k.len(),
                value_ptr: v.as_ptr().cast(),
                value_length: v.len(),
            })
            .collect();
        // SAFETY: the stream is valid during this hook; `list`, `body` and `details` outlive
        // the call, which copies them.
        unsafe {
            (self.host.send_response)(
                self.ptr,
                status,
                list.as_mut_ptr(),
                list.len(),
                ModuleBuffer::new(body),
                ModuleBuffer::new(details.as_bytes()),
            )
        }
    }

    /// The upstream cluster of the request's route, as Envoy resolves it now.
    pub fn route_cluster(&self) -> Option<&[u8]> {
        let mut out = EnvoyBuffer::empty();
        // SAFETY: the stream is valid during this hook; `out` is a valid place to write.
        if !unsafe { (self.host.get_cluster_name)(self.ptr, &mut out) } {
            return None;
        }
        // SAFETY: the cluster's name, owned by Envoy's cluster info, which outlives the hook.
        unsafe { envoy_bytes(&out, self) }
    }

    /// `response.code`, once there is a response.
    pub fn response_code(&self) -> Option<u64> {
        let mut out = 0u64;
        // SAFETY: the stream is valid during this hook; `out` is a valid place to write.
        unsafe { (self.host.get_attribute_int)(self.ptr, abi::ATTRIBUTE_RESPONSE_CODE, &mut out) }
            .then_some(out)
    }

    /// `response.code_details` (`via_upstream`, `upstream_reset_before_response_started{..}`).
    pub fn response_code_details(&self) -> Option<&[u8]> {
        let mut out = EnvoyBuffer::empty();
        // SAFETY: the stream is valid during this hook; `out` is a valid place to write.
        let found = unsafe {
            (self.host.get_attribute_string)(
                self.ptr,
                abi::ATTRIBUTE_RESPONSE_CODE_DETAILS,
                &mut out,
            )
        };
        if !found {
            return None;
        }
        // SAFETY: Envoy's stream info string, valid during this hook.
        unsafe { envoy_bytes(&out, self) }
    }

    /// Adds `n` to a counter.
    pub fn increment_counter(&self, counter: Counter, n: u64) -> Result<(), MetricError> {
        // SAFETY: the stream is valid during this hook; no labels.
        metric_result(unsafe {
            (self.host.increment_counter)(self.ptr, counter.0, std::ptr::null_mut(), 0, n)
        })
    }
}

/// What a configuration may do while it loads (on Envoy's main thread): define metrics.
/// Envoy 1.40 refuses new metrics once the configuration is loaded, so this handle exists
/// only during [`crate::HttpFilterConfig::new`].
#[derive(Debug)]
pub struct ConfigContext<'c> {
    host: &'static Host,
    ptr: *mut c_void,
    pub(crate) tick: Option<std::time::Duration>,
    _load: PhantomData<&'c mut ()>,
}

impl ConfigContext<'_> {
    pub(crate) fn new(host: &'static Host, ptr: *mut c_void) -> Self {
        ConfigContext {
            host,
            ptr,
            tick: None,
            _load: PhantomData,
        }
    }

    fn define(&mut self, gauge: bool, name: &str, labels: &[&str]) -> Result<usize, MetricError> {
        let mut names: Vec<ModuleBuffer> = labels
            .iter()
            .map(|l| ModuleBuffer::new(l.as_bytes()))
            .collect();
        let names_ptr = if names.is_empty() {
            std::ptr::null_mut()
        } else {
            names.as_mut_ptr()
        };
        let mut id = 0usize;
        let define = if gauge {
            self.host.define_gauge
        } else {
            self.host.define_counter
        };
        // SAFETY: the configuration is valid while it loads; `name` and `names` outlive the
        // call (Envoy copies them); `id` is a valid place to write.
        let r = unsafe {
            define(
                self.ptr,
                ModuleBuffer::new(name.as_bytes()),
                names_ptr,
                names.len(),
                &mut id,
            )
        };
        metric_result(r).map(|()| id)
    }

    /// Defines a counter without labels: `/stats` shows it as `<namespace>.<name>`.
    pub fn define_counter(&mut self, name: &str) -> Result<Counter, MetricError> {
        self.define(false, name, &[]).map(Counter)
    }

    /// Defines a counter with labels: `/stats` shows each series as
    /// `<namespace>.<name>.<label>.<value>...`.
    pub fn define_counter_vec(
        &mut self,
        name: &str,
        labels: &[&str],
    ) -> Result<CounterVec, MetricError> {
        self.define(false, name, labels).map(|id| CounterVec {
            id,
            labels: labels.len(),
        })
    }

    /// Defines a gauge with labels.
    pub fn define_gauge_vec(
        &mut self,
        name: &str,
        labels: &[&str],
    ) -> Result<GaugeVec, MetricError> {
        self.define(true, name, labels).map(|id| GaugeVec {
            id,
            labels: labels.len(),
        })
    }

    /// Asks for [`crate::HttpFilterConfig::on_main_thread`] every `period` (a thread of this
    /// module wakes Envoy's main thread; it stops when the configuration goes).
    pub fn tick_every(&mut self, period: std::time::Duration) {
        self.tick = Some(period);
    }
}

/// Why [`crate::HttpFilterConfig::on_main_thread`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The period asked for with [`ConfigContext::tick_every`] passed.
    Tick,
    /// A stream called [`crate::Configured::notify_main_thread`].
    Notified,
}

/// Envoy's main thread, for the configuration: metrics of the configuration and HTTP
/// callouts that belong to no request.
#[derive(Debug)]
pub struct MainThread<'m> {
    host: &'static Host,
    ptr: *mut c_void,
    _hook: PhantomData<&'m mut ()>,
}

/// Why a callout could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalloutError {
    /// `:method`, `:path` or `host` is missing.
    #[error("missing :method, :path or host")]
    MissingRequiredHeaders,
    /// No such cluster in Envoy's configuration.
    #[error("cluster not found")]
    ClusterNotFound,
    /// Envoy reused an id (should not happen).
    #[error("duplicate callout id")]
    DuplicateCalloutId,
    /// Envoy could not create the request (no healthy host, for instance).
    #[error("cannot create the request")]
    CannotCreateRequest,
    /// An answer this crate does not know.
    #[error("callout failed with {0}")]
    Other(u32),
}

impl MainThread<'_> {
    pub(crate) fn new(host: &'static Host, ptr: *mut c_void) -> Self {
        MainThread {
            host,
            ptr,
            _hook: PhantomData,
        }
    }

    /// Adds `n` to the series of `counter` named by `values`.
    pub fn increment_counter_vec(
        &mut self,
        counter: CounterVec,
        values: &[&str],
        n: u64,
    ) -> Result<(), MetricError> {
        let mut buffers = label_buffers(values, counter.labels)?;
        // SAFETY: the configuration is valid on the main thread while its hooks run; the
        // label buffers outlive the call and their count matches the definition.
        metric_result(unsafe {
            (self.host.config_increment_counter)(
                self.ptr,
                counter.id,
                buffers.as_mut_ptr(),
                buffers.len(),
                n,
            )
        })
    }

    /// Sets the series of `gauge` named by `values` to `value`.
    pub fn set_gauge_vec(
        &mut self,
        gauge: GaugeVec,
        values: &[&str],
        value: u64,
    ) -> Result<(), MetricError> {
        let mut buffers = label_buffers(values, gauge.labels)?;
        // SAFETY: as in `increment_counter_vec`.
        metric_result(unsafe {
            (self.host.config_set_gauge)(
                self.ptr,
                gauge.id,
                buffers.as_mut_ptr(),
                buffers.len(),
                value,
            )
        })
    }

    /// Sends an HTTP request through Envoy's `cluster`; the answer comes to
    /// [`crate::HttpFilterConfig::on_callout_done`] with the returned id. `headers` must
    /// include `:method`, `:path` and `host`.
    pub fn http_callout(
        &mut self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_millis: u64,
    ) -> Result<u64, CalloutError> {
        let mut list: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHttpHeader {
                key_ptr: k.as_ptr().cast(),
                key_length: k.len(),
                value_ptr: v.as_ptr().cast(),
                value_length: v.len(),
            })
            .collect();
        let mut id = 0u64;
        // SAFETY: the configuration is valid on the main thread; every buffer outlives the
        // call (Envoy copies the request); `id` is a valid place to write.
        let r = unsafe {
            (self.host.http_callout)(
                self.ptr,
                &mut id,
                ModuleBuffer::new(cluster.as_bytes()),
                list.as_mut_ptr(),
                list.len(),
                ModuleBuffer::new(body),
                timeout_millis,
            )
        };
        match r {
            abi::CALLOUT_INIT_SUCCESS => Ok(id),
            abi::CALLOUT_INIT_MISSING_REQUIRED_HEADERS => Err(CalloutError::MissingRequiredHeaders),
            abi::CALLOUT_INIT_CLUSTER_NOT_FOUND => Err(CalloutError::ClusterNotFound),
            abi::CALLOUT_INIT_DUPLICATE_CALLOUT_ID => Err(CalloutError::DuplicateCalloutId),
            abi::CALLOUT_INIT_CANNOT_CREATE_REQUEST => Err(CalloutError::CannotCreateRequest),
            n => Err(CalloutError::Other(n)),
        }
    }
}

/// How a callout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutResult {
    /// A response arrived (any status).
    Success,
    /// The request was reset: connection refused, timeout, upstream reset.
    Reset,
    /// The response was larger than Envoy's buffer limit.
    ExceedResponseBufferLimit,
    /// An answer this crate does not know.
    Other(u32),
}

impl CalloutResult {
    pub(crate) fn from_abi(r: u32) -> Self {
        match r {
            abi::CALLOUT_SUCCESS => CalloutResult::Success,
            abi::CALLOUT_RESET => CalloutResult::Reset,
            abi::CALLOUT_EXCEED_RESPONSE_BUFFER_LIMIT => CalloutResult::ExceedResponseBufferLimit,
            n => CalloutResult::Other(n),
        }
    }
}

/// The answer to a callout, valid during [`crate::HttpFilterConfig::on_callout_done`].
#[derive(Debug)]
pub struct CalloutResponse<'r> {
    /// How it ended.
    pub result: CalloutResult,
    headers: &'r [EnvoyHttpHeader],
    body: &'r [EnvoyBuffer],
}

impl<'r> CalloutResponse<'r> {
    /// # Safety
    /// `headers` and `body` must be null or point to `headers_len` and `body_len` valid
    /// elements whose buffers stay valid for `'r`.
    pub(crate) unsafe fn new(
        result: u32,
        headers: *const EnvoyHttpHeader,
        headers_len: usize,
        body: *const EnvoyBuffer,
        body_len: usize,
    ) -> Self {
        let headers = if headers.is_null() || headers_len == 0 {
            &[][..]
        } else {
            // SAFETY: per this function's contract.
            unsafe { std::slice::from_raw_parts(headers, headers_len) }
        };
        let body = if body.is_null() || body_len == 0 {
            &[][..]
        } else {
            // SAFETY: per this function's contract.
            unsafe { std::slice::from_raw_parts(body, body_len) }
        };
        CalloutResponse {
            result: CalloutResult::from_abi(result),
            headers,
            body,
        }
    }

    /// The response headers (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&'r [u8], &'r [u8])> + '_ {
        self.headers.iter().map(|h| {
            let part = |ptr: *const std::ffi::c_char, len: usize| -> &'r [u8] {
                if ptr.is_null() {
                    &[]
                } else {
                    // SAFETY: Envoy's header bytes, valid for `'r` (see `new`).
                    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
                }
            };
            (
                part(h.key_ptr, h.key_length),
                part(h.value_ptr, h.value_length),
            )
        })
    }

    /// The `:status` header, when there is a response.
    pub fn status(&self) -> Option<u16> {
        self.headers()
            .find(|(k, _)| *k == b":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
    }

    /// The body, its chunks joined.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in self.body {
            if !chunk.ptr.is_null() {
                // SAFETY: Envoy's body chunk, valid for `'r` (see `new`).
                out.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(chunk.ptr.cast::<u8>(), chunk.length)
                });
            }
        }
        out
    }
}
