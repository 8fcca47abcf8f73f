//! The proxy-wasm glue: configuration, per-request decision, headers and metrics.
//!
//! Host calls go through `proxy_wasm::hostcalls` and their errors are handled here, because
//! the SDK's convenience methods unwrap them and a panic would kill the VM.

use std::borrow::Cow;
use std::cell::Cell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

use xxhash_rust::xxh64::xxh64;

use crate::{Reason, Request, Router};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(CanaryRoot::default()));
}}

/// Prefix of every log line and metric of this filter.
const NAME: &str = "maille_canary";

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

struct Configured {
    router: Router,
    /// Counter ids, `[target][reason]`: `maille_canary.decisions.<target>.<reason>`.
    counters: Vec<[Option<u32>; 3]>,
}

#[derive(Default)]
struct CanaryRoot {
    state: Option<Rc<Configured>>,
    /// Random numbers for the non-sticky split: xxh64 of a counter, keyed by a seed taken
    /// from the clock at configure time (a counter-mode generator; xxh64 is already here
    /// for the sticky hash).
    seed: u64,
    counter: Cell<u64>,
}

impl Context for CanaryRoot {}

impl RootContext for CanaryRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        ) {
            Ok(Some(b)) if !b.is_empty() => b,
            _ => {
                log(
                    LogLevel::Error,
                    &format!("{NAME}: no configuration: the plugin needs a JSON configuration with `targets`"),
                );
                return false;
            }
        };
        let router = match Router::from_json(&bytes) {
            Ok(r) => r,
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("{NAME}: invalid configuration: {e}"),
                );
                return false;
            }
        };
        let counters = router
            .targets()
            .iter()
            .map(|t| {
                Reason::ALL.map(|reason| {
                    let name = format!("{NAME}.decisions.{}.{}", t.name, reason.as_str());
                    hostcalls::define_metric(MetricType::Counter, &name).ok()
                })
            })
            .collect();
        log(
            LogLevel::Info,
            &format!("{NAME}: configured {} target(s)", router.targets().len()),
        );
        let seed = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0x5eed, |d| d.as_nanos() as u64);
        self.seed = seed;
        self.state = Some(Rc::new(Configured { router, counters }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let n = self.counter.get().wrapping_add(1);
        self.counter.set(n);
        let random = xxh64(&n.to_le_bytes(), self.seed) as u32;
        Some(Box::new(CanaryStream {
            state: self.state.clone(),
            random,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct CanaryStream {
    state: Option<Rc<Configured>>,
    random: u32,
}

impl Context for CanaryStream {}

/// The request headers, read from the host on demand.
struct HostHeaders;

impl Request for HostHeaders {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
            .map(Cow::Owned)
    }
}

impl HttpContext for CanaryStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(state) = &self.state else {
            return Action::Continue;
        };
        let router = &state.router;
        let decision = router.decide(&HostHeaders, self.random);
        let Some(target) = router.targets().get(decision.target) else {
            // Unreachable by construction; never let a client-chosen cluster through.
            let _ =
                hostcalls::remove_map_value(MapType::HttpRequestHeaders, router.cluster_header());
            return Action::Continue;
        };
        // Replaces any value the client sent: clients must not pick clusters themselves.
        if hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            router.cluster_header(),
            Some(&target.cluster),
        )
        .is_err()
        {
            let _ =
                hostcalls::remove_map_value(MapType::HttpRequestHeaders, router.cluster_header());
        }
        let _ = hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            router.variant_header(),
            Some(&target.name),
        );
        if let Some(Some(id)) = state
            .counters
            .get(decision.target)
            .map(|c| c[decision.reason.index()])
        {
            let _ = hostcalls::increment_metric(id, 1);
        }
        Action::Continue
    }
}
