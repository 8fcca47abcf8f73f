//! AWS Cloud Map discovery for the mesh's `awsCloudMap` nodes: every period, the server asks
//! Cloud Map (`DiscoverInstances`, healthy instances only, the node's attributes as query
//! parameters) for each query the nodes make, through the default AWS chain
//! (`AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_SERVICEDISCOVERY` reach another endpoint, such as
//! moto), and serves the answers over EDS: a change of instances re-translates only the
//! nodes that call that service, and reaches their Envoys without touching their clusters.
//!
//! A query that fails keeps its last answer (traffic keeps flowing to the instances it had)
//! and is logged once per new error; it is asked again the next period.

use crate::mesh::Mesh;
use aws_sdk_servicediscovery::types::HealthStatusFilter;
use aws_sdk_servicediscovery::Client;
use maille_translate::{cloud_map_queries, CloudMapInstance, CloudMapQuery};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The longest a `DiscoverInstances` call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most instances read per query (`DiscoverInstances`' own maximum).
const MAX_INSTANCES: i32 = 1000;

/// Polls Cloud Map every `every` until `stop`; does nothing (and builds no AWS client) while
/// no node uses Cloud Map.
pub(crate) async fn run(mesh: Arc<Mesh>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut client: Option<Client> = None;
    let mut failing: BTreeMap<CloudMapQuery, String> = BTreeMap::new();
    loop {
        let queries = cloud_map_queries(&mesh.current().resources);
        failing.retain(|q, _| queries.contains(q));
        if !queries.is_empty() {
            let c = match &client {
                Some(c) => c.clone(),
                None => {
                    let c = new_client().await;
                    client = Some(c.clone());
                    c
                }
            };
            let mut answers = BTreeMap::new();
            for q in queries {
                match discover(&c, &q).await {
                    Ok(instances) => {
                        if failing.remove(&q).is_some() {
                            tracing::info!(query = %q, instances = instances.len(), "Cloud Map answers again");
                        }
                        answers.insert(q, instances);
                    }
                    Err(e) => {
                        if failing.get(&q) != Some(&e) {
                            tracing::warn!(query = %q, error = %e, "Cloud Map DiscoverInstances failed; its nodes keep their last instances");
                            failing.insert(q, e);
                        }
                    }
                }
            }
            match mesh.update_cloud_map(answers).await {
                Ok(true) => tracing::info!("Cloud Map instances changed: new snapshot served"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "serving Cloud Map instances"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => break,
        }
    }
}

/// A client from the default AWS chain. `DiscoverInstances` goes to AWS's `data-` host
/// (`data-servicediscovery.<region>.amazonaws.com`); an endpoint given with
/// `AWS_ENDPOINT_URL` (moto, a VPC endpoint) is used as it is.
async fn new_client() -> Client {
    let cfg = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let mut b = aws_sdk_servicediscovery::config::Builder::from(&cfg);
    if cfg.endpoint_url().is_some() {
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

/// The healthy instances of `q`.
async fn discover(c: &Client, q: &CloudMapQuery) -> Result<Vec<CloudMapInstance>, String> {
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
            return Err(aws_sdk_servicediscovery::error::DisplayErrorContext(&e).to_string())
        }
        Err(_) => return Err(format!("no answer in {} s", CALL_TIMEOUT.as_secs())),
    };
    Ok(out
        .instances()
        .iter()
        .filter_map(|i| {
            let a = i.attributes()?;
            let get = |k: &str| a.get(k).filter(|v| !v.is_empty()).cloned();
            // Addresses go to Envoy as IPs: anything else would make it refuse the update.
            let instance = CloudMapInstance {
                ipv4: get("AWS_INSTANCE_IPV4").filter(|v| v.parse::<Ipv4Addr>().is_ok()),
                ipv6: get("AWS_INSTANCE_IPV6").filter(|v| v.parse::<Ipv6Addr>().is_ok()),
                port: get("AWS_INSTANCE_PORT")
                    .and_then(|p| p.parse().ok())
                    .filter(|p| (1..=65_535).contains(p)),
            };
            (instance.ipv4.is_some() || instance.ipv6.is_some()).then_some(instance)
        })
        .collect())
}
