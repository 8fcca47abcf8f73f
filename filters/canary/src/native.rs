//! The Envoy dynamic-module glue (Linux shared library): the same [`Router`] as the wasm
//! filter, with the same headers, metrics and refusals, through `maille-dynamic-module`.
//!
//! Metrics are plain counters defined when the configuration loads, one per target and
//! reason: `maille_canary.decisions.<target>.<reason>` under Envoy's dynamic-module
//! namespace (`dynamicmodulescustom.` by default, `metrics_namespace` in Envoy's
//! `DynamicModuleConfig`), where the wasm build's are under `wasmcustom.`.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use maille_dynamic_module::{
    log, ClusterSpecifier, ConfigContext, Configured, Counter, HeadersStatus, HttpFilter,
    HttpFilterConfig, HttpFilterHandle, Level, MetricError, SpecifierConfigContext,
    SpecifierHandle,
};
use maille_filter_config::canary::{DEFAULT_CLUSTER_HEADER, DEFAULT_VARIANT_HEADER};
use xxhash_rust::xxh64::xxh64;

use crate::{Decision, Reason, Request, Router};

/// Prefix of every log line and metric of this filter.
const NAME: &str = "maille_canary";

/// One loaded configuration of the canary filter, shared by every worker.
#[derive(Debug)]
pub struct CanaryModule {
    router: Router,
    /// `[target][reason]`: `maille_canary.decisions.<target>.<reason>`.
    counters: Vec<[Counter; 3]>,
    /// Keys the random numbers of the non-sticky split (counter mode over xxh64, as the wasm
    /// build does).
    seed: u64,
}

/// Threads that have drawn random numbers so far: each gets its own stream of counters.
static THREADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// (this thread's number, its draws so far).
    static DRAWS: Cell<(u64, u64)> = Cell::new((THREADS.fetch_add(1, Ordering::Relaxed), 0));
}

impl CanaryModule {
    /// A uniformly random number for this request.
    fn random(&self) -> u32 {
        let (thread, n) = DRAWS.with(|d| {
            let (t, n) = d.get();
            d.set((t, n.wrapping_add(1)));
            (t, n)
        });
        let mut block = [0u8; 16];
        block[..8].copy_from_slice(&thread.to_le_bytes());
        block[8..].copy_from_slice(&n.to_le_bytes());
        xxh64(&block, self.seed) as u32
    }
}

impl CanaryModule {
    /// Parses `config` and defines the decision counters with `define`.
    fn load(
        config: &[u8],
        mut define: impl FnMut(&str) -> Result<Counter, MetricError>,
    ) -> Result<CanaryModule, String> {
        if config.is_empty() {
            return Err(
                "no configuration: the filter needs a JSON configuration with `targets`".into(),
            );
        }
        let router =
            Router::from_json(config).map_err(|e| format!("invalid configuration: {e}"))?;
        let mut counters = Vec::with_capacity(router.targets().len());
        for t in router.targets() {
            let mut ids = Vec::with_capacity(Reason::ALL.len());
            for reason in Reason::ALL {
                let name = format!("{NAME}.decisions.{}.{}", t.name, reason.as_str());
                ids.push(define(&name).map_err(|e| format!("metric {name}: {e}"))?);
            }
            counters.push([ids[0], ids[1], ids[2]]);
        }
        log(
            Level::Info,
            &format!("{NAME}: configured {} target(s)", router.targets().len()),
        );
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64);
        Ok(CanaryModule {
            router,
            counters,
            seed,
        })
    }

    /// The decision counter of `decision`.
    fn counter(&self, decision: &Decision) -> Option<Counter> {
        self.counters
            .get(decision.target)
            .map(|c| c[decision.reason.index()])
    }
}

impl HttpFilterConfig for CanaryModule {
    const NAME: &'static str = NAME;
    type Filter = CanaryStream;

    fn new(cx: &mut ConfigContext<'_>, config: &[u8]) -> Result<Self, String> {
        CanaryModule::load(config, |name| cx.define_counter(name))
    }

    fn new_filter(&self) -> CanaryStream {
        CanaryStream
    }
}

/// The canary as a cluster specifier (`specifier_name: maille_canary` of Envoy's
/// `envoy.router.cluster_specifier_plugin.dynamic_modules`): the same decision, made while
/// Envoy resolves the route, naming the cluster directly. It writes no header: the route adds
/// the variant header from the chosen cluster's metadata
/// (`%CLUSTER_METADATA(maille:variant)%`, see `deploy/envoy/canary-specifier.yaml`), so a
/// configuration that names its own `clusterHeader` or `variantHeader` is refused. The
/// decision counters count selections: Envoy selects again when a filter refreshes the
/// route's cluster.
#[derive(Debug)]
pub struct CanarySpecifier(CanaryModule);

impl ClusterSpecifier for CanarySpecifier {
    const NAME: &'static str = NAME;

    fn new(cx: &mut SpecifierConfigContext<'_>, config: &[u8]) -> Result<Self, String> {
        if cx.name() != NAME.as_bytes() {
            return Err(format!(
                "specifier_name: this module's cluster specifier is {NAME:?}, got {:?}",
                String::from_utf8_lossy(cx.name())
            ));
        }
        let m = CanaryModule::load(config, |name| cx.define_counter(name))?;
        for (field, value, default) in [
            (
                "clusterHeader",
                m.router.cluster_header(),
                DEFAULT_CLUSTER_HEADER,
            ),
            (
                "variantHeader",
                m.router.variant_header(),
                DEFAULT_VARIANT_HEADER,
            ),
        ] {
            if value != default {
                return Err(format!(
                    "invalid configuration: {field}: a cluster specifier writes no headers (the route's request_headers_to_add sets the variant header); remove {field}"
                ));
            }
        }
        Ok(CanarySpecifier(m))
    }

    fn select(&self, request: &mut SpecifierHandle<'_>) -> bool {
        let m = &self.0;
        let decision = m
            .router
            .decide_with(&SpecifierHeaders(request), || m.random());
        let Some(target) = m.router.targets().get(decision.target) else {
            // Unreachable by construction; no choice is the route's not-found answer.
            return false;
        };
        request.set_cluster(&target.cluster);
        if let Some(c) = m.counter(&decision) {
            let _ = request.increment_counter(c, 1);
        }
        true
    }
}

/// The request headers as the cluster specifier reads them (same rules as [`EnvoyHeaders`]).
struct SpecifierHeaders<'a, 's>(&'a SpecifierHandle<'s>);

impl Request for SpecifierHeaders<'_, '_> {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0.request_header(name).map(text)
    }
}

/// A header value as text: borrowed when it is UTF-8 (nearly always), else its lossy copy.
fn text(v: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(v) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(v),
    }
}

/// A stream's filter: all its work happens in one hook, so it keeps nothing (zero-sized:
/// Envoy's streams cost this module no allocation).
#[derive(Debug)]
pub struct CanaryStream;

/// The request headers, read from Envoy on demand. Header values are bytes; one that is not
/// UTF-8 is matched as its lossy text (invalid bytes become U+FFFD).
struct EnvoyHeaders<'a, 'h>(&'a HttpFilterHandle<'h>);

impl Request for EnvoyHeaders<'_, '_> {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0.request_header(name).map(text)
    }
}

impl HttpFilter for CanaryStream {
    type Config = CanaryModule;

    fn on_request_headers(
        &mut self,
        config: &Configured<CanaryModule>,
        envoy: &mut HttpFilterHandle<'_>,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        let router = &config.router;
        let decision = router.decide_with(&EnvoyHeaders(envoy), || config.random());
        let Some(target) = router.targets().get(decision.target) else {
            // Unreachable by construction; never let a client-chosen cluster through.
            envoy.remove_request_header(router.cluster_header());
            return HeadersStatus::Continue;
        };
        // Replaces any value the client sent: clients must not pick clusters themselves.
        if !envoy.set_request_header(router.cluster_header(), target.cluster.as_bytes()) {
            envoy.remove_request_header(router.cluster_header());
        }
        envoy.set_request_header(router.variant_header(), target.name.as_bytes());
        // Envoy matched the route before this filter ran: match again with the value just
        // written (Envoy 1.40's cheaper "refresh the route's cluster" does not re-read a
        // `cluster_header` route).
        envoy.clear_route_cache();
        if let Some(c) = config.counter(&decision) {
            let _ = envoy.increment_counter(c, 1);
        }
        HeadersStatus::Continue
    }

    /// A panic while deciding: the request must not keep a cluster the client chose.
    fn request_headers_panicked(
        config: &Configured<CanaryModule>,
        envoy: &mut HttpFilterHandle<'_>,
    ) -> HeadersStatus {
        envoy.remove_request_header(config.router.cluster_header());
        envoy.clear_route_cache();
        HeadersStatus::Continue
    }
}
