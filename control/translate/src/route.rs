//! App Mesh routes to Envoy routes: matches, retries, timeouts, weighted targets.

use crate::cluster::*;
use crate::filters::*;
use crate::names;
use crate::node::*;
use crate::options::defaults;
use crate::proto::*;
use crate::world::Ctx;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::Any;
use maille_filter_config::canary::{CanaryConfig, StickyKey, Target};
use maille_model::*;

pub(crate) fn prefix_match(p: &str) -> route::RouteMatch {
    route::RouteMatch {
        path_specifier: Some(route::route_match::PathSpecifier::Prefix(p.into())),
        ..Default::default()
    }
}

pub(crate) fn variant_header(variant: &str) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: defaults::VARIANT_HEADER.into(),
            value: variant.into(),
            ..Default::default()
        }),
        append_action: core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

pub(crate) fn default_retry() -> route::RetryPolicy {
    route::RetryPolicy {
        retry_on: defaults::RETRY_ON.into(),
        num_retries: Some(u32v(defaults::MAX_RETRIES)),
        per_try_timeout: Some(ms(defaults::PER_RETRY_TIMEOUT_MS)),
        ..Default::default()
    }
}

pub(crate) fn retry(p: &HttpRetryPolicy) -> route::RetryPolicy {
    let mut on = Vec::new();
    for e in &p.http_retry_events {
        on.push(match e.as_str() {
            "server-error" => "5xx",
            "gateway-error" => "gateway-error",
            "client-error" => "retriable-4xx",
            _ => "refused-stream,reset",
        });
    }
    if !p.tcp_retry_events.is_empty() {
        on.push("connect-failure");
    }
    for e in &p.grpc_retry_events {
        on.push(e.as_str());
    }
    route::RetryPolicy {
        retry_on: on.join(","),
        num_retries: Some(u32v(p.max_retries)),
        per_try_timeout: Some(ms(p.per_retry_timeout.millis())),
        ..Default::default()
    }
}

pub(crate) fn per_request(t: Option<&HttpTimeout>) -> u64 {
    t.and_then(|t| t.per_request)
        .map(|d| d.millis())
        .unwrap_or(defaults::PER_REQUEST_TIMEOUT_MS)
}

pub(crate) fn idle(t: Option<&HttpTimeout>) -> u64 {
    t.and_then(|t| t.idle)
        .map(|d| d.millis())
        .unwrap_or(defaults::IDLE_TIMEOUT_MS)
}

pub(crate) fn string_match(m: &HeaderMatchMethod) -> Option<matcher::StringMatcher> {
    use matcher::string_matcher::MatchPattern;
    let p = if let Some(v) = &m.exact {
        MatchPattern::Exact(v.clone())
    } else if let Some(v) = &m.prefix {
        MatchPattern::Prefix(v.clone())
    } else if let Some(v) = &m.suffix {
        MatchPattern::Suffix(v.clone())
    } else if let Some(v) = &m.regex {
        MatchPattern::SafeRegex(regex(v))
    } else {
        return None;
    };
    Some(matcher::StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    })
}

pub(crate) fn regex(re: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher {
        regex: re.to_owned(),
        ..Default::default()
    }
}

pub(crate) fn header_matcher(h: &HttpRouteHeader) -> route::HeaderMatcher {
    use route::header_matcher::HeaderMatchSpecifier as S;
    let spec = match &h.matches {
        None => S::PresentMatch(true),
        Some(m) => match m.range {
            Some(r) => S::RangeMatch(envoy_types::pb::envoy::r#type::v3::Int64Range {
                start: r.start,
                end: r.end,
            }),
            None => match string_match(m) {
                Some(s) => S::StringMatch(s),
                None => S::PresentMatch(true),
            },
        },
    };
    route::HeaderMatcher {
        name: h.name.to_ascii_lowercase(),
        invert_match: h.invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

pub(crate) fn exact_header(name: &str, value: &str) -> route::HeaderMatcher {
    route::HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(
            matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(value.into())),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// An App Mesh path condition: a prefix, an exact path or a regex (none: every path).
pub(crate) fn path_specifier(
    prefix: Option<&String>,
    path: Option<&PathMatch>,
) -> route::route_match::PathSpecifier {
    use route::route_match::PathSpecifier;
    match (prefix, path) {
        (Some(p), _) => PathSpecifier::Prefix(p.clone()),
        (None, Some(PathMatch { exact: Some(e), .. })) => PathSpecifier::Path(e.clone()),
        (None, Some(PathMatch { regex: Some(r), .. })) => PathSpecifier::SafeRegex(regex(r)),
        _ => PathSpecifier::Prefix("/".into()),
    }
}

/// An App Mesh query parameter condition: an exact value, or present.
pub(crate) fn query_matcher(q: &QueryParameterMatch) -> route::QueryParameterMatcher {
    route::QueryParameterMatcher {
        name: q.name.clone(),
        query_parameter_match_specifier: Some(match &q.matches {
            Some(e) => route::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                matcher::StringMatcher {
                    match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(
                        e.exact.clone(),
                    )),
                    ..Default::default()
                },
            ),
            None => {
                route::query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true)
            }
        }),
    }
}

/// One Envoy route for an App Mesh route, and the canary filter it enables (if it splits).
pub(crate) fn envoy_route(
    out: &mut NodeConfig,
    cx: &Ctx<'_>,
    rt: &Route,
    policy: Option<&ClientPolicy>,
) -> Result<(route::Route, Option<hcm::HttpFilter>), String> {
    let id = format!("route {}/{}", rt.virtual_router_name, rt.route_name);
    let mut m = route::RouteMatch::default();
    let (action, retry_policy, timeout) =
        if let Some(h) = rt.spec.http_route.as_ref().or(rt.spec.http2_route.as_ref()) {
            let hm = &h.matches;
            m.path_specifier = Some(path_specifier(hm.prefix.as_ref(), hm.path.as_ref()));
            m.headers = hm.headers.iter().map(header_matcher).collect();
            if let Some(method) = &hm.method {
                m.headers.push(exact_header(":method", method));
            }
            if let Some(s) = &hm.scheme {
                m.headers.push(exact_header(":scheme", s));
            }
            m.query_parameters = hm.query_parameters.iter().map(query_matcher).collect();
            (&h.action, h.retry_policy.as_ref(), h.timeout.as_ref())
        } else if let Some(g) = &rt.spec.grpc_route {
            let gm = &g.matches;
            m.path_specifier = Some(match (&gm.service_name, &gm.method_name) {
                (Some(s), Some(meth)) => {
                    route::route_match::PathSpecifier::Path(format!("/{s}/{meth}"))
                }
                (Some(s), None) => route::route_match::PathSpecifier::Prefix(format!("/{s}/")),
                _ => route::route_match::PathSpecifier::Prefix("/".into()),
            });
            m.headers = gm.metadata.iter().map(header_matcher).collect();
            m.grpc = Some(route::route_match::GrpcRouteMatchOptions {});
            (&g.action, g.retry_policy.as_ref(), g.timeout.as_ref())
        } else {
            return Err(format!("{id}: a tcpRoute has its own egress listener"));
        };

    // Targets with their clusters.
    let mut targets = Vec::new();
    for t in &action.weighted_targets {
        let Some(node) = cx.node(&rt.mesh_name, &t.virtual_node) else {
            return Err(format!(
                "{id}: no virtual node {:?} (skipped)",
                t.virtual_node
            ));
        };
        let Some(c) = target_cluster(out, cx, node, t.port, policy) else {
            return Err(format!(
                "{id}: target {:?} unreachable (skipped)",
                t.virtual_node
            ));
        };
        targets.push((t, c));
    }
    let mut ra = route::RouteAction {
        timeout: Some(ms(per_request(timeout))),
        idle_timeout: Some(ms(idle(timeout))),
        retry_policy: Some(retry_policy.map(retry).unwrap_or_else(default_retry)),
        ..Default::default()
    };
    let mut r = route::Route {
        name: names::route(&rt.virtual_router_name, &rt.route_name),
        r#match: Some(m),
        ..Default::default()
    };
    let live: Vec<_> = targets.iter().filter(|(t, _)| t.weight > 0).collect();
    let sticky = rt.maille.as_ref().and_then(|m| m.sticky.as_ref());
    let mut filter = None;
    if live.is_empty() {
        return Err(format!("{id}: no target has a weight above 0 (skipped)"));
    } else if live.len() == 1 {
        let (t, c) = live[0];
        ra.cluster_specifier = Some(route::route_action::ClusterSpecifier::Cluster(c.clone()));
        r.request_headers_to_add
            .push(variant_header(&t.virtual_node));
    } else if sticky.is_none() || targets.len() == 2 {
        // Envoy splits natively, each cluster adding its variant header.
        native_split(&mut ra, &targets, sticky);
    } else {
        // A sticky split over three or more targets: Envoy's hash-based split would move
        // users between the middle targets when weights change; the canary filter's
        // rendezvous hashing moves users only onto a target whose weight rose.
        let f = canary_split(out, cx, &id, rt, &targets, sticky, &mut r)?;
        filter = Some(f);
        ra.cluster_specifier = Some(route::route_action::ClusterSpecifier::ClusterHeader(
            defaults::CLUSTER_HEADER.into(),
        ));
    }
    r.action = Some(route::route::Action::Route(ra));
    Ok((r, filter))
}

/// `weighted_clusters` over `targets` in the spec's order, each adding its variant header;
/// when `sticky`, the choice is a hash of the user's key (`use_hash_policy`) and the weights
/// are scaled to [`defaults::STICKY_TOTAL_WEIGHT`]. With two targets, raising either's weight moves
/// users onto it only.
fn native_split(
    ra: &mut route::RouteAction,
    targets: &[(&WeightedTarget, String)],
    sticky: Option<&Sticky>,
) {
    let weights: Vec<u32> = match sticky {
        None => targets.iter().map(|(t, _)| t.weight).collect(),
        Some(_) => {
            let sum: u64 = targets.iter().map(|(t, _)| u64::from(t.weight)).sum();
            let mut scaled: Vec<u32> = targets
                .iter()
                .map(|(t, _)| {
                    (u64::from(t.weight) * u64::from(defaults::STICKY_TOTAL_WEIGHT) / sum.max(1))
                        as u32
                })
                .collect();
            // Rounding goes to the last target with a weight, keeping the total exact.
            let short = defaults::STICKY_TOTAL_WEIGHT - scaled.iter().sum::<u32>();
            if let Some(i) = targets.iter().rposition(|(t, _)| t.weight > 0) {
                scaled[i] += short;
            }
            scaled
        }
    };
    ra.cluster_specifier = Some(route::route_action::ClusterSpecifier::WeightedClusters(
        route::WeightedCluster {
            clusters: targets
                .iter()
                .zip(weights)
                .map(|((t, c), w)| route::weighted_cluster::ClusterWeight {
                    name: c.clone(),
                    weight: Some(u32v(w)),
                    request_headers_to_add: vec![variant_header(&t.virtual_node)],
                    ..Default::default()
                })
                .collect(),
            random_value_specifier: sticky.map(|_| {
                route::weighted_cluster::RandomValueSpecifier::UseHashPolicy(
                    envoy_types::pb::google::protobuf::BoolValue { value: true },
                )
            }),
            ..Default::default()
        },
    ));
    if let Some(s) = sticky {
        ra.hash_policy.push(hash_policy(s));
    }
}

fn hash_policy(s: &Sticky) -> route::route_action::HashPolicy {
    use route::route_action::hash_policy::{Cookie, Header, PolicySpecifier};
    let spec = match (&s.header, &s.cookie) {
        (Some(h), _) => PolicySpecifier::Header(Header {
            header_name: h.to_ascii_lowercase(),
            ..Default::default()
        }),
        (None, Some(c)) => PolicySpecifier::Cookie(Cookie {
            name: c.clone(),
            ..Default::default()
        }),
        (None, None) => PolicySpecifier::Header(Header::default()),
    };
    route::route_action::HashPolicy {
        policy_specifier: Some(spec),
        ..Default::default()
    }
}

/// The canary filter instance of this route (ECDS, enabled on this route only), making a
/// sticky choice over three or more targets and writing the cluster header the route reads.
fn canary_split(
    out: &mut NodeConfig,
    cx: &Ctx<'_>,
    id: &str,
    rt: &Route,
    targets: &[(&WeightedTarget, String)],
    sticky: Option<&Sticky>,
    r: &mut route::Route,
) -> Result<hcm::HttpFilter, String> {
    let config = CanaryConfig {
        targets: targets
            .iter()
            .map(|(t, c)| Target {
                name: t.virtual_node.clone(),
                cluster: c.clone(),
                weight: t.weight,
            })
            .collect(),
        rules: Vec::new(),
        sticky: sticky.map(|s| match (&s.header, &s.cookie) {
            (Some(h), _) => StickyKey::Header(h.to_ascii_lowercase()),
            (None, c) => StickyKey::Cookie(c.clone().unwrap_or_default()),
        }),
        cluster_header: defaults::CLUSTER_HEADER.into(),
        variant_header: defaults::VARIANT_HEADER.into(),
    };
    if let Err(e) = config.validate() {
        return Err(format!(
            "{id}: its canary filter config is refused: {e} (skipped)"
        ));
    }
    // The native module when served, else the wasm one.
    let found = [Runtime::Native, Runtime::Wasm]
        .into_iter()
        .find_map(|r| cx.module(&r.file("canary")).map(|m| (r, m)));
    let Some((runtime, module)) = found else {
        return Err(format!(
            "{id}: a sticky split over {} targets needs the canary module (libmaille_canary.so or canary.wasm), which is not served (skipped)",
            targets.len()
        ));
    };
    let name = names::versioned(
        &names::canary_filter(&rt.virtual_router_name, &rt.route_name),
        &module.sha256,
    );
    let (ext, filter) = extension(runtime, &name, module, "canary", &config.to_json(), true);
    out.filters.push(ext);
    r.typed_per_filter_config.insert(
        name.clone(),
        // An empty `config` (present, no type) enables a disabled filter on this route.
        any(&route::FilterConfig {
            config: Some(Any::default()),
            is_optional: false,
            disabled: false,
        }),
    );
    Ok(filter)
}
