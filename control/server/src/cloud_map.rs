//! AWS Cloud Map discovery for the mesh's `awsCloudMap` nodes: every period, and at once when
//! an apply asks a new question, the server asks Cloud Map (`DiscoverInstances`, healthy
//! instances only, the node's attributes as query parameters) for each query the nodes make,
//! through the default AWS chain (`AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_SERVICEDISCOVERY`
//! reach another endpoint, such as moto), and serves the answers over EDS: a change of
//! instances re-translates only the nodes that call that service, and reaches their Envoys
//! without touching their clusters.
//!
//! Among servers sharing a store, only the leader asks: it keeps the answers in the store
//! with a new version, and the others serve them from there. A new leader starts from the
//! answers kept and asks at once.
//!
//! A query that fails keeps its last answer (traffic keeps flowing to the instances it had)
//! and is logged once per new error; it is asked again the next period. A query never
//! answered yet sends Envoy no endpoints at all, so an Envoy keeps the ones it had (across a
//! restart of this server) and a new one waits for the first answer.

use crate::mesh::Mesh;
use crate::store::Leader;
use aws_sdk_servicediscovery::error::ProvideErrorMetadata;
use aws_sdk_servicediscovery::types::HealthStatusFilter;
use aws_sdk_servicediscovery::Client;
use maille_translate::{CloudMapInstance, CloudMapQuery};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The longest a `DiscoverInstances` call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most instances read per query (`DiscoverInstances`' own maximum).
const MAX_INSTANCES: i32 = 1000;
/// Queries asked at once (one slow service does not hold back the others' answers).
const IN_FLIGHT: usize = 16;

/// What one answer was: its instances, and how many Cloud Map gave that could not be used.
type Answer = Result<(Vec<CloudMapInstance>, usize), String>;

/// What this server's polling does, for `/v1/status`.
#[derive(Debug, Default)]
pub struct Polling {
    asking: AtomicBool,
    calls: AtomicU64,
    failing: Mutex<BTreeMap<String, String>>,
}

impl Polling {
    /// Its status, given how many queries the nodes make (`None` while they make none and
    /// no call was made).
    pub fn status(&self, queries: usize) -> Option<maille_api::CloudMapStatus> {
        let calls = self.calls.load(Ordering::Relaxed);
        (queries > 0 || calls > 0).then(|| maille_api::CloudMapStatus {
            asking: self.asking.load(Ordering::Relaxed),
            calls,
            queries,
            failing: self
                .failing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        })
    }

    fn set_failing(&self, failing: &BTreeMap<CloudMapQuery, String>) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = failing
            .iter()
            .map(|(q, e)| (q.to_string(), e.clone()))
            .collect();
    }
}

/// Whether this server is the one to ask (`leader` is `None` for a server alone on its
/// store).
fn leads(leader: &Option<watch::Receiver<Leader>>) -> bool {
    leader.as_ref().is_none_or(|l| l.borrow().me)
}

/// Polls Cloud Map every `every` until `stop`, while this server leads; does nothing (and
/// builds no AWS client) while no node uses Cloud Map.
pub(crate) async fn run(
    mesh: Arc<Mesh>,
    every: Duration,
    mut leader: Option<watch::Receiver<Leader>>,
    polling: Arc<Polling>,
    mut stop: watch::Receiver<bool>,
) {
    let every = every.max(Duration::from_millis(100));
    let mut client: Option<Client> = None;
    let mut failing: BTreeMap<CloudMapQuery, String> = BTreeMap::new();
    let mut skipped: BTreeMap<CloudMapQuery, usize> = BTreeMap::new();
    let mut snapshots = mesh.subscribe();
    loop {
        if let Some(l) = &mut leader {
            if !l.borrow_and_update().me {
                // The leader asks; this server serves what it keeps in the store.
                polling.asking.store(false, Ordering::Relaxed);
                failing.clear();
                polling.set_failing(&failing);
                tokio::select! {
                    changed = l.changed() => if changed.is_err() { return },
                    _ = stop.changed() => return,
                }
                continue;
            }
        }
        polling.asking.store(true, Ordering::Relaxed);
        let queries = mesh.current().cloud_map_queries.clone();
        failing.retain(|q, _| queries.contains(q));
        skipped.retain(|q, _| queries.contains(q));
        if !queries.is_empty() {
            let c = match &client {
                Some(c) => c.clone(),
                None => {
                    let c = new_client().await;
                    client = Some(c.clone());
                    c
                }
            };
            let answers = tokio::select! {
                a = ask_all(&c, &queries) => a,
                _ = stop.changed() => break,
            };
            polling
                .calls
                .fetch_add(answers.len() as u64, Ordering::Relaxed);
            if !leads(&leader) {
                // Led elsewhere since: the new leader's answers count.
                continue;
            }
            let mut served = BTreeMap::new();
            for (q, a) in answers {
                match a {
                    Ok((instances, unusable)) => {
                        if failing.remove(&q).is_some() {
                            tracing::info!(query = %q, instances = instances.len(), "Cloud Map answers again");
                        }
                        if unusable > 0 && skipped.get(&q) != Some(&unusable) {
                            tracing::warn!(query = %q, unusable, "Cloud Map instances without a usable IP address (AWS_INSTANCE_IPV4 or AWS_INSTANCE_IPV6) are not served");
                        }
                        skipped.insert(q.clone(), unusable);
                        served.insert(q, instances);
                    }
                    Err(e) => {
                        if failing.get(&q) != Some(&e) {
                            tracing::warn!(query = %q, error = %e, "Cloud Map DiscoverInstances failed; its nodes keep their last instances");
                            failing.insert(q, e);
                        }
                    }
                }
            }
            polling.set_failing(&failing);
            match mesh.update_cloud_map(served).await {
                Ok(true) => tracing::info!("Cloud Map's answers changed: a new version served"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "serving Cloud Map instances"),
            }
        } else if let Err(e) = mesh.update_cloud_map(BTreeMap::new()).await {
            // Only drops the answers the store keeps for nodes gone since.
            tracing::error!(error = %e, "dropping Cloud Map answers no node asks for");
        }
        let asked = queries;
        // The next period, or sooner when an apply asks a question not asked yet, or when
        // this server stops leading.
        let sleep = tokio::time::sleep(every);
        tokio::pin!(sleep);
        let stepped_down = async {
            match &mut leader {
                Some(l) => {
                    if l.wait_for(|l| !l.me).await.is_err() {
                        // The campaign is over (the server stops): as it was.
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stepped_down);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = &mut stepped_down => break,
                _ = stop.changed() => return,
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = snapshots.borrow_and_update().cloud_map_queries.clone();
                    if !now.is_subset(&asked) {
                        break;
                    }
                }
            }
        }
    }
}

/// Every query's answer, at most [`IN_FLIGHT`] at a time.
async fn ask_all(c: &Client, queries: &BTreeSet<CloudMapQuery>) -> Vec<(CloudMapQuery, Answer)> {
    let mut pending = queries.iter().cloned();
    let mut running = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(queries.len());
    loop {
        while running.len() < IN_FLIGHT {
            let Some(q) = pending.next() else { break };
            let c = c.clone();
            running.spawn(async move {
                let a = discover(&c, &q).await;
                (q, a)
            });
        }
        match running.join_next().await {
            Some(Ok(answer)) => out.push(answer),
            // A panicked call: its query keeps its last answer.
            Some(Err(e)) => tracing::error!(error = %e, "a Cloud Map call failed"),
            None => return out,
        }
    }
}

/// A client from the default AWS chain. `DiscoverInstances` goes to AWS's `data-` host
/// (`data-servicediscovery.<region>.amazonaws.com`); an endpoint given with
/// `AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_SERVICEDISCOVERY` (moto, a VPC endpoint) is used
/// as it is.
async fn new_client() -> Client {
    let cfg = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let mut b = aws_sdk_servicediscovery::config::Builder::from(&cfg);
    let custom = cfg.endpoint_url().is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_SERVICEDISCOVERY").is_some_and(|v| !v.is_empty());
    if custom {
        b = b.interceptor(NoHostPrefix);
    }
    Client::from_conf(b.build())
}

/// Drops the operation's host prefix before the endpoint is resolved.
#[derive(Debug)]
struct NoHostPrefix;

impl aws_sdk_servicediscovery::config::Intercept for NoHostPrefix {
    fn name(&self) -> &'static str {
        "NoHostPrefix"
    }

    fn modify_before_retry_loop(
        &self,
        _context: &mut aws_sdk_servicediscovery::config::interceptors::BeforeTransmitInterceptorContextMut<'_>,
        _components: &aws_sdk_servicediscovery::config::RuntimeComponents,
        cfg: &mut aws_sdk_servicediscovery::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        cfg.interceptor_state()
            .unset::<aws_smithy_runtime_api::client::endpoint::EndpointPrefix>();
        Ok(())
    }
}

/// The healthy instances of `q`, and how many had no usable address. An error is said in a
/// form that stays the same while the cause does (its code and message, no request id).
async fn discover(c: &Client, q: &CloudMapQuery) -> Answer {
    let mut req = c
        .discover_instances()
        .namespace_name(&q.namespace)
        .service_name(&q.service)
        .health_status(HealthStatusFilter::Healthy)
        .max_results(MAX_INSTANCES);
    for (k, v) in &q.attributes {
        req = req.query_parameters(k, v);
    }
    let out = match tokio::time::timeout(CALL_TIMEOUT, req.send()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Err(match e.as_service_error() {
                Some(se) => format!(
                    "{}: {}",
                    se.code().unwrap_or("error"),
                    se.message().unwrap_or("no message")
                ),
                None => aws_sdk_servicediscovery::error::DisplayErrorContext(&e).to_string(),
            })
        }
        Err(_) => return Err(format!("no answer in {} s", CALL_TIMEOUT.as_secs())),
    };
    let mut unusable = 0;
    let instances = out
        .instances()
        .iter()
        .filter_map(|i| {
            let a = i.attributes();
            let get = |k: &str| a.and_then(|a| a.get(k)).filter(|v| !v.is_empty()).cloned();
            // Addresses go to Envoy as IPs: anything else would make it refuse the update.
            let instance = CloudMapInstance {
                ipv4: get("AWS_INSTANCE_IPV4").filter(|v| v.parse::<Ipv4Addr>().is_ok()),
                ipv6: get("AWS_INSTANCE_IPV6").filter(|v| v.parse::<Ipv6Addr>().is_ok()),
                port: get("AWS_INSTANCE_PORT")
                    .and_then(|p| p.parse().ok())
                    .filter(|p| (1..=65_535).contains(p)),
            };
            let usable = instance.ipv4.is_some() || instance.ipv6.is_some();
            if !usable {
                unusable += 1;
            }
            usable.then_some(instance)
        })
        .collect();
    Ok((instances, unusable))
}
