//! Checks of mesh resources against App Mesh's ranges and references. Every error names
//! the resource and the field path, e.g.
//! `virtualNode/demo/white: spec.listeners[0].healthCheck.intervalMillis: must be
//! 5000..=300000, got 100`.

use crate::rollout::*;
use crate::spec::*;
use std::fmt;

/// App Mesh's limits, as named in its API reference.
pub mod limits {
    /// Longest resource name.
    pub const MAX_NAME_LEN: usize = 255;
    /// Listeners per virtual node (App Mesh allowed 1 in most regions; Maille allows more).
    pub const MAX_LISTENERS: usize = 10;
    /// Backends per virtual node.
    pub const MAX_BACKENDS: usize = 50;
    /// Weighted targets per route action.
    pub const MAX_TARGETS: usize = 10;
    /// Largest target weight.
    pub const MAX_WEIGHT: u32 = 100;
    /// Largest route priority.
    pub const MAX_PRIORITY: u32 = 1000;
    /// Header (or gRPC metadata) conditions per route.
    pub const MAX_HEADERS: usize = 10;
    /// Query parameter conditions per route.
    pub const MAX_QUERY_PARAMETERS: usize = 10;
    /// Longest header match value.
    pub const MAX_MATCH_LEN: usize = 255;
    /// Health check interval range, milliseconds.
    pub const HEALTH_INTERVAL_MS: std::ops::RangeInclusive<u64> = 5_000..=300_000;
    /// Health check timeout range, milliseconds.
    pub const HEALTH_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 2_000..=60_000;
    /// Healthy and unhealthy threshold range.
    pub const HEALTH_THRESHOLD: std::ops::RangeInclusive<u32> = 2..=10;
    /// Most retries of one request.
    pub const MAX_RETRIES: u32 = 10;
}

/// One problem, at a field path of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The resource, as `kind/mesh/name`.
    pub resource: String,
    /// The field path from the resource's root (`spec.listeners[0].portMapping.port`).
    pub path: String,
    /// What is wrong, with the value given.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.resource, self.message)
        } else {
            write!(f, "{}: {}: {}", self.resource, self.path, self.message)
        }
    }
}

/// All problems found in a set of resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

struct Check<'a> {
    resource: String,
    errors: &'a mut Vec<SpecError>,
}

impl Check<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(SpecError {
            resource: self.resource.clone(),
            path: path.into(),
            message: message.into(),
        });
    }

    fn name(&mut self, path: &str, name: &str) {
        if !valid_name(name) {
            self.err(
                path,
                format!(
                    "must be 1 to {} letters, digits, '-' or '_', got {name:?}",
                    limits::MAX_NAME_LEN
                ),
            );
        }
    }

    fn service_name(&mut self, path: &str, name: &str) {
        if name.is_empty()
            || name.len() > limits::MAX_NAME_LEN
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            self.err(
                path,
                format!("must be a DNS-style name of 1 to 255 characters, got {name:?}"),
            );
        }
    }

    fn port(&mut self, path: &str, port: u32) {
        if !(1..=65535).contains(&port) {
            self.err(path, format!("must be 1..=65535, got {port}"));
        }
    }

    fn protocol(&mut self, path: &str, p: &str) {
        if !["http", "http2", "grpc", "tcp"].contains(&p) {
            self.err(
                path,
                format!("must be one of http, http2, grpc, tcp, got {p:?}"),
            );
        }
    }

    fn range<T: PartialOrd + fmt::Display + Copy>(
        &mut self,
        path: &str,
        v: T,
        r: std::ops::RangeInclusive<T>,
    ) {
        if !r.contains(&v) {
            self.err(
                path,
                format!("must be {}..={}, got {v}", r.start(), r.end()),
            );
        }
    }

    fn at_least_one(&mut self, path: &str, v: u32) {
        if v < 1 {
            self.err(path, format!("must be at least 1, got {v}"));
        }
    }

    fn regex(&mut self, path: &str, re: &str) {
        if let Err(e) = regex_lite::Regex::new(re) {
            self.err(path, format!("is not a valid regular expression: {e}"));
        }
    }
}

/// Checks one resource on its own: names, ranges, one-of members.
pub fn check_resource(r: &Resource) -> Result<(), SpecErrors> {
    let mut errors = Vec::new();
    check_into(r, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors(errors))
    }
}

fn check_into(r: &Resource, errors: &mut Vec<SpecError>) {
    let mut c = Check {
        resource: r.key().to_string(),
        errors,
    };
    match r {
        Resource::Mesh(m) => {
            c.name("meshName", &m.mesh_name);
            if let Some(f) = &m.spec.egress_filter {
                if f.kind != "ALLOW_ALL" && f.kind != "DROP_ALL" {
                    c.err(
                        "spec.egressFilter.type",
                        format!("must be ALLOW_ALL or DROP_ALL, got {:?}", f.kind),
                    );
                }
            }
            if let Some(o) = &m.maille {
                if let Some(v) = o.mtls.as_deref() {
                    if MtlsMode::parse(v).is_none() {
                        c.err(
                            "maille.mtls",
                            format!("must be STRICT, PERMISSIVE or DISABLED, got {v:?}"),
                        );
                    }
                }
                if let Some(v) = o.authorization.as_deref() {
                    if !["BACKENDS", "NONE"].contains(&v) {
                        c.err(
                            "maille.authorization",
                            format!("must be BACKENDS or NONE, got {v:?}"),
                        );
                    }
                }
            }
            if let Some(p) = m
                .spec
                .service_discovery
                .as_ref()
                .and_then(|s| s.ip_preference.as_deref())
            {
                ip_preference(&mut c, "spec.serviceDiscovery.ipPreference", p);
            }
        }
        Resource::VirtualNode(n) => {
            c.name("meshName", &n.mesh_name);
            c.name("virtualNodeName", &n.virtual_node_name);
            if let Some(v) = n.maille.as_ref().and_then(|o| o.mtls.as_deref()) {
                if MtlsMode::parse(v).is_none() {
                    c.err(
                        "maille.mtls",
                        format!("must be STRICT, PERMISSIVE or DISABLED, got {v:?}"),
                    );
                }
            }
            node_spec(&mut c, &n.spec);
        }
        Resource::VirtualRouter(vr) => {
            c.name("meshName", &vr.mesh_name);
            c.name("virtualRouterName", &vr.virtual_router_name);
            if vr.spec.listeners.is_empty() || vr.spec.listeners.len() > 10 {
                c.err(
                    "spec.listeners",
                    format!(
                        "1 to 10 listeners are required, got {}",
                        vr.spec.listeners.len()
                    ),
                );
            }
            let mut ports = std::collections::BTreeSet::new();
            for (i, l) in vr.spec.listeners.iter().enumerate() {
                if !ports.insert(l.port_mapping.port) {
                    c.err(
                        format!("spec.listeners[{i}].portMapping.port"),
                        format!("port {} is listed twice", l.port_mapping.port),
                    );
                }
            }
            for (i, l) in vr.spec.listeners.iter().enumerate() {
                c.port(
                    &format!("spec.listeners[{i}].portMapping.port"),
                    l.port_mapping.port,
                );
                c.protocol(
                    &format!("spec.listeners[{i}].portMapping.protocol"),
                    &l.port_mapping.protocol,
                );
            }
        }
        Resource::Rollout(ro) => {
            c.name("meshName", &ro.mesh_name);
            c.name("rolloutName", &ro.rollout_name);
            rollout_spec(&mut c, &ro.spec);
        }
        Resource::Route(rt) => {
            c.name("meshName", &rt.mesh_name);
            c.name("virtualRouterName", &rt.virtual_router_name);
            c.name("routeName", &rt.route_name);
            route_spec(&mut c, &rt.spec);
            if let Some(s) = rt.maille.as_ref().and_then(|m| m.sticky.as_ref()) {
                sticky(&mut c, s);
            }
        }
        Resource::VirtualService(vs) => {
            c.name("meshName", &vs.mesh_name);
            c.service_name("virtualServiceName", &vs.virtual_service_name);
            if let Some(p) = &vs.spec.provider {
                match (&p.virtual_node, &p.virtual_router) {
                    (Some(n), None) => c.name(
                        "spec.provider.virtualNode.virtualNodeName",
                        &n.virtual_node_name,
                    ),
                    (None, Some(r)) => c.name(
                        "spec.provider.virtualRouter.virtualRouterName",
                        &r.virtual_router_name,
                    ),
                    _ => c.err(
                        "spec.provider",
                        "exactly one of virtualNode, virtualRouter is required",
                    ),
                }
            }
        }
        Resource::VirtualGateway(g) => {
            c.name("meshName", &g.mesh_name);
            c.name("virtualGatewayName", &g.virtual_gateway_name);
            gateway_spec(&mut c, &g.spec);
        }
        Resource::GatewayRoute(gr) => {
            c.name("meshName", &gr.mesh_name);
            c.name("virtualGatewayName", &gr.virtual_gateway_name);
            c.name("gatewayRouteName", &gr.gateway_route_name);
            gateway_route_spec(&mut c, &gr.spec);
        }
        Resource::Filter(f) => {
            c.name("meshName", &f.mesh_name);
            c.name("filterName", &f.filter_name);
            match f.spec.module.as_str() {
                "breaker" => {
                    let bytes = serde_json::to_vec(&f.spec.config).unwrap_or_default();
                    if let Err(e) = maille_filter_config::breaker::BreakerConfig::from_json(&bytes)
                    {
                        for fe in e.errors {
                            let path = if fe.path.is_empty() {
                                "spec.config".to_owned()
                            } else {
                                format!("spec.config.{}", fe.path)
                            };
                            c.err(path, fe.message);
                        }
                    }
                }
                other => c.err(
                    "spec.module",
                    format!("unknown module {other:?}: Maille serves `breaker`"),
                ),
            }
            if f.spec.virtual_nodes.is_empty() {
                c.err("spec.virtualNodes", "at least one virtual node is required");
            }
            for (i, n) in f.spec.virtual_nodes.iter().enumerate() {
                c.name(&format!("spec.virtualNodes[{i}]"), n);
            }
        }
    }
}

fn ip_preference(c: &mut Check<'_>, path: &str, p: &str) {
    if !["IPv4_PREFERRED", "IPv6_PREFERRED", "IPv4_ONLY", "IPv6_ONLY"].contains(&p) {
        c.err(
            path,
            format!("must be IPv4_PREFERRED, IPv6_PREFERRED, IPv4_ONLY or IPv6_ONLY, got {p:?}"),
        );
    }
}

/// App Mesh's `FileAccessLog`: a path, and a format of `text` (a line with Envoy's
/// `%COMMAND%`s) or `json` (`key`/`value` pairs), as App Mesh takes them.
fn access_log_file(c: &mut Check<'_>, p: &str, f: &FileAccessLog) {
    if f.path.is_empty() || f.path.chars().count() > 255 {
        c.err(
            format!("{p}.path"),
            "a file path of 1 to 255 characters is required",
        );
    }
    let Some(format) = &f.format else { return };
    let Some(obj) = format.as_object() else {
        c.err(
            format!("{p}.format"),
            "must be an object with `text` or `json`",
        );
        return;
    };
    if let Some(k) = obj.keys().find(|k| *k != "text" && *k != "json") {
        c.err(
            format!("{p}.format.{k}"),
            "unknown field: the format is `text` or `json`",
        );
    }
    match (obj.get("text"), obj.get("json")) {
        (Some(t), None) => match t.as_str() {
            Some(t) if !t.is_empty() && t.chars().count() <= 1000 => {}
            _ => c.err(
                format!("{p}.format.text"),
                "a string of 1 to 1000 characters is required",
            ),
        },
        (None, Some(j)) => match j.as_array() {
            Some(pairs) if !pairs.is_empty() => {
                for (i, pair) in pairs.iter().enumerate() {
                    for field in ["key", "value"] {
                        match pair.get(field).and_then(|v| v.as_str()) {
                            Some(v) if !v.is_empty() && v.chars().count() <= 100 => {}
                            _ => c.err(
                                format!("{p}.format.json[{i}].{field}"),
                                "a string of 1 to 100 characters is required",
                            ),
                        }
                    }
                    if let Some(k) = pair
                        .as_object()
                        .and_then(|o| o.keys().find(|k| *k != "key" && *k != "value"))
                    {
                        c.err(
                            format!("{p}.format.json[{i}].{k}"),
                            "unknown field: a pair is `key` and `value`",
                        );
                    }
                }
            }
            _ => c.err(
                format!("{p}.format.json"),
                "a list of `key`/`value` pairs is required",
            ),
        },
        _ => c.err(
            format!("{p}.format"),
            "exactly one of `text` or `json` is required",
        ),
    }
}

fn node_spec(c: &mut Check<'_>, s: &VirtualNodeSpec) {
    if s.listeners.len() > limits::MAX_LISTENERS {
        c.err(
            "spec.listeners",
            format!(
                "at most {} listeners, got {}",
                limits::MAX_LISTENERS,
                s.listeners.len()
            ),
        );
    }
    for (i, l) in s.listeners.iter().enumerate() {
        let p = format!("spec.listeners[{i}]");
        c.port(&format!("{p}.portMapping.port"), l.port_mapping.port);
        c.protocol(
            &format!("{p}.portMapping.protocol"),
            &l.port_mapping.protocol,
        );
        if s.listeners[..i]
            .iter()
            .any(|o| o.port_mapping.port == l.port_mapping.port)
        {
            c.err(
                format!("{p}.portMapping.port"),
                format!(
                    "port {} is used by an earlier listener",
                    l.port_mapping.port
                ),
            );
        }
        if let Some(h) = &l.health_check {
            let hp = format!("{p}.healthCheck");
            c.range(
                &format!("{hp}.healthyThreshold"),
                h.healthy_threshold,
                limits::HEALTH_THRESHOLD,
            );
            c.range(
                &format!("{hp}.unhealthyThreshold"),
                h.unhealthy_threshold,
                limits::HEALTH_THRESHOLD,
            );
            c.range(
                &format!("{hp}.intervalMillis"),
                h.interval_millis,
                limits::HEALTH_INTERVAL_MS,
            );
            c.range(
                &format!("{hp}.timeoutMillis"),
                h.timeout_millis,
                limits::HEALTH_TIMEOUT_MS,
            );
            c.protocol(&format!("{hp}.protocol"), &h.protocol);
            if let Some(port) = h.port {
                c.port(&format!("{hp}.port"), port);
            }
            match (&h.path, h.protocol.as_str()) {
                (None, "http" | "http2") => c.err(
                    format!("{hp}.path"),
                    "is required for http and http2 health checks",
                ),
                (Some(path), _) if !path.starts_with('/') => c.err(
                    format!("{hp}.path"),
                    format!("must start with '/', got {path:?}"),
                ),
                _ => {}
            }
        }
        if let Some(o) = &l.outlier_detection {
            let op = format!("{p}.outlierDetection");
            c.range(
                &format!("{op}.maxEjectionPercent"),
                o.max_ejection_percent,
                0..=100,
            );
            c.at_least_one(&format!("{op}.maxServerErrors"), o.max_server_errors);
            if o.interval.millis() == 0 {
                c.err(format!("{op}.interval.value"), "must be above 0");
            }
            if o.base_ejection_duration.millis() == 0 {
                c.err(
                    format!("{op}.baseEjectionDuration.value"),
                    "must be above 0",
                );
            }
        }
        if let Some(pool) = &l.connection_pool {
            let pp = format!("{p}.connectionPool");
            let set = [
                pool.http.is_some(),
                pool.http2.is_some(),
                pool.grpc.is_some(),
                pool.tcp.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if set != 1 {
                c.err(&pp, "exactly one of http, http2, grpc, tcp is required");
            }
            if let Some(h) = &pool.http {
                c.at_least_one(&format!("{pp}.http.maxConnections"), h.max_connections);
                if let Some(m) = h.max_pending_requests {
                    c.at_least_one(&format!("{pp}.http.maxPendingRequests"), m);
                }
            }
            if let Some(h) = &pool.http2 {
                c.at_least_one(&format!("{pp}.http2.maxRequests"), h.max_requests);
            }
            if let Some(h) = &pool.grpc {
                c.at_least_one(&format!("{pp}.grpc.maxRequests"), h.max_requests);
            }
            if let Some(h) = &pool.tcp {
                c.at_least_one(&format!("{pp}.tcp.maxConnections"), h.max_connections);
            }
        }
        if let Some(t) = &l.tls {
            if !["STRICT", "PERMISSIVE", "DISABLED"].contains(&t.mode.as_str()) {
                c.err(
                    format!("{p}.tls.mode"),
                    format!("must be STRICT, PERMISSIVE or DISABLED, got {:?}", t.mode),
                );
            }
            certificate(c, &format!("{p}.tls.certificate"), &t.certificate);
            if let Some(v) = &t.validation {
                validation(c, &format!("{p}.tls.validation"), v);
            }
        }
    }
    if s.backends.len() > limits::MAX_BACKENDS {
        c.err(
            "spec.backends",
            format!(
                "at most {} backends, got {}",
                limits::MAX_BACKENDS,
                s.backends.len()
            ),
        );
    }
    for (i, b) in s.backends.iter().enumerate() {
        c.service_name(
            &format!("spec.backends[{i}].virtualService.virtualServiceName"),
            &b.virtual_service.virtual_service_name,
        );
        if let Some(cp) = &b.virtual_service.client_policy {
            client_policy(
                c,
                &format!("spec.backends[{i}].virtualService.clientPolicy"),
                cp,
            );
        }
    }
    if let Some(cp) = s
        .backend_defaults
        .as_ref()
        .and_then(|d| d.client_policy.as_ref())
    {
        client_policy(c, "spec.backendDefaults.clientPolicy", cp);
    }
    if let Some(f) = s
        .logging
        .as_ref()
        .and_then(|l| l.access_log.as_ref())
        .map(|a| &a.file)
    {
        access_log_file(c, "spec.logging.accessLog.file", f);
    }
    if let Some(sd) = &s.service_discovery {
        let set = [
            sd.dns.is_some(),
            sd.aws_cloud_map.is_some(),
            sd.endpoints.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            c.err(
                "spec.serviceDiscovery",
                "exactly one of dns, awsCloudMap, endpoints is required",
            );
        }
        if let Some(cm) = &sd.aws_cloud_map {
            let p = "spec.serviceDiscovery.awsCloudMap";
            // App Mesh's limits: names of 1 to 1024 characters, at most 10 attributes.
            for (field, v) in [
                ("namespaceName", &cm.namespace_name),
                ("serviceName", &cm.service_name),
            ] {
                if v.is_empty() || v.chars().count() > 1024 {
                    c.err(
                        format!("{p}.{field}"),
                        "a name of 1 to 1024 characters is required",
                    );
                }
            }
            if cm.attributes.len() > 10 {
                c.err(
                    format!("{p}.attributes"),
                    format!("at most 10 attributes, got {}", cm.attributes.len()),
                );
            }
            for (i, a) in cm.attributes.iter().enumerate() {
                if a.key.is_empty()
                    || a.key.len() > 255
                    || !a.key.bytes().all(|b| (b'!'..=b'~').contains(&b))
                {
                    c.err(
                        format!("{p}.attributes[{i}].key"),
                        "1 to 255 printable ASCII characters without spaces are required",
                    );
                }
                if a.value.is_empty() || a.value.chars().count() > 1024 {
                    c.err(
                        format!("{p}.attributes[{i}].value"),
                        "1 to 1024 characters are required",
                    );
                }
            }
            if let Some(ip) = cm.ip_preference.as_deref() {
                ip_preference(c, &format!("{p}.ipPreference"), ip);
            }
        }
        if let Some(dns) = &sd.dns {
            if dns.hostname.is_empty() {
                c.err("spec.serviceDiscovery.dns.hostname", "must not be empty");
            }
            if let Some(rt) = dns.response_type.as_deref() {
                if rt != "LOADBALANCER" && rt != "ENDPOINTS" {
                    c.err(
                        "spec.serviceDiscovery.dns.responseType",
                        format!("must be LOADBALANCER or ENDPOINTS, got {rt:?}"),
                    );
                }
            }
            if let Some(p) = dns.ip_preference.as_deref() {
                ip_preference(c, "spec.serviceDiscovery.dns.ipPreference", p);
            }
        }
        if let Some(eps) = &sd.endpoints {
            if eps.is_empty() {
                c.err(
                    "spec.serviceDiscovery.endpoints",
                    "at least one endpoint is required",
                );
            }
            for (i, e) in eps.iter().enumerate() {
                if e.address.parse::<std::net::IpAddr>().is_err() {
                    c.err(
                        format!("spec.serviceDiscovery.endpoints[{i}].address"),
                        format!("must be an IP address, got {:?}", e.address),
                    );
                }
                if let Some(port) = e.port {
                    c.port(&format!("spec.serviceDiscovery.endpoints[{i}].port"), port);
                }
            }
        }
    }
}

/// A gateway's listeners are a node's without outlier detection, timeouts or TCP: they
/// are checked as a node's, at the same paths.
fn gateway_spec(c: &mut Check<'_>, s: &VirtualGatewaySpec) {
    if s.listeners.is_empty() {
        c.err("spec.listeners", "at least one listener is required");
    }
    for (i, l) in s.listeners.iter().enumerate() {
        if l.port_mapping.protocol == "tcp" {
            c.err(
                format!("spec.listeners[{i}].portMapping.protocol"),
                "must be one of http, http2, grpc, got \"tcp\"",
            );
        }
    }
    let as_node = VirtualNodeSpec {
        listeners: s
            .listeners
            .iter()
            .map(|l| Listener {
                port_mapping: l.port_mapping.clone(),
                health_check: l.health_check.clone(),
                outlier_detection: None,
                connection_pool: l.connection_pool.as_ref().map(|p| ConnectionPool {
                    http: p.http.clone(),
                    http2: p.http2.clone(),
                    grpc: p.grpc.clone(),
                    tcp: None,
                }),
                timeout: None,
                tls: l.tls.clone(),
            })
            .collect(),
        backend_defaults: s.backend_defaults.clone(),
        logging: s.logging.clone(),
        ..Default::default()
    };
    node_spec(c, &as_node);
}

fn gateway_route_spec(c: &mut Check<'_>, s: &GatewayRouteSpec) {
    let kinds = [
        s.http_route.is_some(),
        s.http2_route.is_some(),
        s.grpc_route.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if kinds != 1 {
        c.err(
            "spec",
            "exactly one of httpRoute, http2Route, grpcRoute is required",
        );
    }
    if let Some(p) = s.priority {
        c.range("spec.priority", p, 0..=limits::MAX_PRIORITY);
    }
    for (field, r) in [("httpRoute", &s.http_route), ("http2Route", &s.http2_route)] {
        let Some(r) = r else { continue };
        let p = format!("spec.{field}");
        let m = &r.matches;
        let as_route = HttpRouteMatch {
            prefix: m.prefix.clone(),
            path: m.path.clone(),
            headers: m.headers.clone(),
            method: m.method.clone(),
            scheme: None,
            query_parameters: m.query_parameters.clone(),
            port: m.port,
        };
        // A match on the host name alone takes every path.
        if m.hostname.is_none() || m.prefix.is_some() || m.path.is_some() || m.port.is_some() {
            http_match(c, &format!("{p}.match"), &as_route);
        }
        if let Some(h) = &m.hostname {
            hostname_match(c, &format!("{p}.match.hostname"), h);
        }
        target(c, &format!("{p}.action.target"), &r.action.target);
        let Some(rw) = &r.action.rewrite else {
            continue;
        };
        let rp = format!("{p}.action.rewrite");
        if rw.prefix.is_some() && rw.path.is_some() {
            c.err(&rp, "only one of prefix, path may be given");
        }
        if let Some(pr) = &rw.prefix {
            if m.prefix.is_none() {
                c.err(format!("{rp}.prefix"), "needs match.prefix");
            }
            match (&pr.default_prefix, &pr.value) {
                (Some(d), None) => enabled(c, &format!("{rp}.prefix.defaultPrefix"), d),
                (None, Some(v)) if !v.starts_with('/') => c.err(
                    format!("{rp}.prefix.value"),
                    format!("must start with '/', got {v:?}"),
                ),
                (None, Some(_)) => {}
                _ => c.err(
                    format!("{rp}.prefix"),
                    "exactly one of defaultPrefix, value is required",
                ),
            }
        }
        if let Some(pa) = &rw.path {
            if !pa.exact.starts_with('/') {
                c.err(
                    format!("{rp}.path.exact"),
                    format!("must start with '/', got {:?}", pa.exact),
                );
            }
        }
        if let Some(d) = rw
            .hostname
            .as_ref()
            .and_then(|h| h.default_target_hostname.as_ref())
        {
            enabled(c, &format!("{rp}.hostname.defaultTargetHostname"), d);
        }
    }
    if let Some(r) = &s.grpc_route {
        let p = "spec.grpcRoute";
        headers(c, &format!("{p}.match.metadata"), &r.matches.metadata);
        if let Some(port) = r.matches.port {
            c.port(&format!("{p}.match.port"), port);
        }
        if let Some(h) = &r.matches.hostname {
            hostname_match(c, &format!("{p}.match.hostname"), h);
        }
        target(c, &format!("{p}.action.target"), &r.action.target);
        if let Some(d) = r
            .action
            .rewrite
            .as_ref()
            .and_then(|rw| rw.hostname.as_ref())
            .and_then(|h| h.default_target_hostname.as_ref())
        {
            enabled(
                c,
                &format!("{p}.action.rewrite.hostname.defaultTargetHostname"),
                d,
            );
        }
    }
}

fn enabled(c: &mut Check<'_>, p: &str, v: &str) {
    if v != "ENABLED" && v != "DISABLED" {
        c.err(p, format!("must be ENABLED or DISABLED, got {v:?}"));
    }
}

fn hostname_match(c: &mut Check<'_>, p: &str, h: &HostnameMatch) {
    match (&h.exact, &h.suffix) {
        (Some(v), None) | (None, Some(v)) => {
            if v.is_empty() || v.len() > 253 || v.contains(['/', ' ', ':']) {
                c.err(p, format!("must be a host name without port, got {v:?}"));
            }
        }
        _ => c.err(p, "exactly one of exact, suffix is required"),
    }
}

fn target(c: &mut Check<'_>, p: &str, t: &GatewayRouteTarget) {
    c.service_name(
        &format!("{p}.virtualService.virtualServiceName"),
        &t.virtual_service.virtual_service_name,
    );
    if let Some(port) = t.port {
        c.port(&format!("{p}.port"), port);
    }
}

fn certificate(c: &mut Check<'_>, p: &str, cert: &TlsCertificate) {
    match (&cert.file, &cert.sds, &cert.acm) {
        (Some(f), None, None) => {
            if f.certificate_chain.is_empty() {
                c.err(format!("{p}.file.certificateChain"), "must not be empty");
            }
            if f.private_key.is_empty() {
                c.err(format!("{p}.file.privateKey"), "must not be empty");
            }
        }
        // Maille's CA serves both: the proxy's own certificate over SDS.
        (None, Some(_), None) | (None, None, Some(_)) => {}
        _ => c.err(p, "exactly one of file, sds, acm is required"),
    }
}

fn validation(c: &mut Check<'_>, p: &str, v: &TlsValidation) {
    match (&v.trust.file, &v.trust.sds, &v.trust.acm) {
        (Some(f), None, None) if f.certificate_chain.is_empty() => c.err(
            format!("{p}.trust.file.certificateChain"),
            "must not be empty",
        ),
        (Some(_), None, None) => {}
        // Maille's CA serves both: the mesh's trust bundle over SDS.
        (None, Some(_), None) | (None, None, Some(_)) => {}
        _ => c.err(
            format!("{p}.trust"),
            "exactly one of file, sds, acm is required",
        ),
    }
    if let Some(s) = &v.subject_alternative_names {
        if s.matches.exact.is_empty() {
            c.err(
                format!("{p}.subjectAlternativeNames.match.exact"),
                "at least one name is required",
            );
        }
    }
}

fn client_policy(c: &mut Check<'_>, p: &str, cp: &ClientPolicy) {
    let Some(t) = &cp.tls else { return };
    for (i, port) in t.ports.iter().enumerate() {
        c.port(&format!("{p}.tls.ports[{i}]"), *port);
    }
    if let Some(cert) = &t.certificate {
        certificate(c, &format!("{p}.tls.certificate"), cert);
    }
    validation(c, &format!("{p}.tls.validation"), &t.validation);
}

/// An HTTP token (RFC 9110): header and cookie names.
fn token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= limits::MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn sticky(c: &mut Check<'_>, s: &Sticky) {
    sticky_at(c, "maille.sticky", s)
}

fn sticky_at(c: &mut Check<'_>, p: &str, s: &Sticky) {
    match (&s.header, &s.cookie) {
        (Some(h), None) => {
            if !token(h) || h.starts_with(':') {
                c.err(
                    format!("{p}.header"),
                    format!("must be a header name (letters, digits, -, _ ...), got {h:?}"),
                );
            }
        }
        (None, Some(k)) => {
            if !token(k) {
                c.err(
                    format!("{p}.cookie"),
                    format!("must be a cookie name, got {k:?}"),
                );
            }
        }
        _ => c.err(
            "maille.sticky",
            "exactly one of header or cookie is required",
        ),
    }
}

fn duration_in(c: &mut Check<'_>, p: &str, d: &AmDuration, min_ms: u64, max_ms: u64) {
    let ms = d.millis();
    if !(min_ms..=max_ms).contains(&ms) {
        c.err(
            p,
            format!("must be {} ms to {} ms, got {ms} ms", min_ms, max_ms),
        );
    }
}

fn rollout_spec(c: &mut Check<'_>, s: &RolloutSpec) {
    c.name("spec.virtualRouterName", &s.virtual_router_name);
    c.name("spec.routeName", &s.route_name);
    c.name("spec.stable", &s.stable);
    c.name("spec.canary", &s.canary);
    if s.stable == s.canary {
        c.err("spec.canary", "must differ from spec.stable");
    }
    match (s.step_weight, s.steps.is_empty()) {
        (Some(_), false) => c.err("spec", "give stepWeight or steps, not both"),
        (None, true) => c.err("spec", "one of stepWeight or steps is required"),
        (Some(w), true) => {
            c.range("spec.stepWeight", w, 1..=100);
            let max = s.max_weight.unwrap_or(100);
            c.range("spec.maxWeight", max, 1..=100);
            if max < w {
                c.err(
                    "spec.maxWeight",
                    format!("must be at least stepWeight ({w}), got {max}"),
                );
            }
        }
        (None, false) => {
            if s.max_weight.is_some() {
                c.err("spec.maxWeight", "goes with stepWeight, not steps");
            }
            if s.steps.len() > MAX_STEPS {
                c.err(
                    "spec.steps",
                    format!("at most {MAX_STEPS} steps, got {}", s.steps.len()),
                );
            }
            let mut last = 0;
            for (i, st) in s.steps.iter().enumerate() {
                let p = format!("spec.steps[{i}]");
                c.range(&format!("{p}.weight"), st.weight, 0..=100);
                if st.weight < last {
                    c.err(
                        format!("{p}.weight"),
                        format!("weights must not decrease: {} after {last}", st.weight),
                    );
                }
                last = st.weight;
                match (&st.duration, st.pause) {
                    (Some(_), true) => c.err(&p, "a pause step has no duration"),
                    (Some(d), false) => {
                        duration_in(c, &format!("{p}.duration"), d, 1000, MAX_STEP_MS)
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(d) = &s.step_duration {
        duration_in(c, "spec.stepDuration", d, 1000, MAX_STEP_MS);
    }
    if let Some(st) = &s.sticky {
        sticky_at(c, "spec.sticky", st);
    }
    if s.matches.len() > MAX_WEBHOOKS {
        c.err(
            "spec.matches",
            format!("at most {MAX_WEBHOOKS}, got {}", s.matches.len()),
        );
    }
    for (i, m) in s.matches.iter().enumerate() {
        let p = format!("spec.matches[{i}]");
        if m.headers.is_empty() && m.cookies.is_empty() {
            c.err(&p, "needs at least one header or cookie condition");
        }
        headers(c, &format!("{p}.headers"), &m.headers);
        for (j, k) in m.cookies.iter().enumerate() {
            if !token(&k.name) {
                c.err(
                    format!("{p}.cookies[{j}].name"),
                    format!("must be a cookie name, got {:?}", k.name),
                );
            }
            if k.value.is_empty()
                || k.value.len() > limits::MAX_MATCH_LEN
                || k.value.contains([';', ',', ' ', '"'])
            {
                c.err(
                    format!("{p}.cookies[{j}].value"),
                    format!(
                        "must be 1 to {} characters without ; , space or \", got {:?}",
                        limits::MAX_MATCH_LEN,
                        k.value
                    ),
                );
            }
        }
    }
    if let Some(a) = &s.analysis {
        if let Some(d) = &a.interval {
            duration_in(c, "spec.analysis.interval", d, 1000, 3_600_000);
        }
        if a.min_requests == Some(0) {
            c.err("spec.analysis.minRequests", "must be at least 1");
        }
        if a.success_rate.is_none() && a.latency_p99.is_none() {
            c.err("spec.analysis", "needs successRate or latencyP99");
        }
        if let Some(sr) = &a.success_rate {
            match (sr.min, sr.max_drop_from_stable) {
                (Some(v), None) | (None, Some(v)) if (0.0..=1.0).contains(&v) => {}
                (Some(_), None) | (None, Some(_)) => {
                    c.err("spec.analysis.successRate", "must be 0..=1")
                }
                _ => c.err(
                    "spec.analysis.successRate",
                    "exactly one of min or maxDropFromStable",
                ),
            }
        }
        if let Some(l) = &a.latency_p99 {
            match (l.max_millis, l.max_ratio_to_stable) {
                (Some(v), None) | (None, Some(v)) if v > 0.0 && v.is_finite() => {}
                (Some(_), None) | (None, Some(_)) => {
                    c.err("spec.analysis.latencyP99", "must be above 0")
                }
                _ => c.err(
                    "spec.analysis.latencyP99",
                    "exactly one of maxMillis or maxRatioToStable",
                ),
            }
        }
        if let Some(ns) = &a.source.namespace {
            if a.source.kind != SourceKind::Cloudwatch {
                c.err(
                    "spec.analysis.source.namespace",
                    "goes with type cloudwatch",
                );
            }
            if ns.is_empty() || ns.len() > 255 || ns.starts_with(':') {
                c.err(
                    "spec.analysis.source.namespace",
                    format!("must be a CloudWatch namespace, got {ns:?}"),
                );
            }
        }
    }
    if s.webhooks.len() > MAX_WEBHOOKS {
        c.err(
            "spec.webhooks",
            format!("at most {MAX_WEBHOOKS}, got {}", s.webhooks.len()),
        );
    }
    for (i, w) in s.webhooks.iter().enumerate() {
        let p = format!("spec.webhooks[{i}]");
        c.name(&format!("{p}.name"), &w.name);
        if s.webhooks[..i].iter().any(|o| o.name == w.name) {
            c.err(format!("{p}.name"), format!("{:?} is used twice", w.name));
        }
        let rest = w
            .url
            .strip_prefix("http://")
            .or_else(|| w.url.strip_prefix("https://"));
        if !rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
            || w.url.chars().any(char::is_whitespace)
        {
            c.err(
                format!("{p}.url"),
                format!("must be an http:// or https:// URL, got {:?}", w.url),
            );
        }
        if let Some(t) = w.timeout_millis {
            c.range(&format!("{p}.timeoutMillis"), t, 100..=60_000);
        }
    }
}

fn route_spec(c: &mut Check<'_>, s: &RouteSpec) {
    let kinds = [
        s.http_route.is_some(),
        s.http2_route.is_some(),
        s.grpc_route.is_some(),
        s.tcp_route.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if kinds != 1 {
        c.err(
            "spec",
            "exactly one of httpRoute, http2Route, grpcRoute, tcpRoute is required",
        );
    }
    if let Some(p) = s.priority {
        c.range("spec.priority", p, 0..=limits::MAX_PRIORITY);
    }
    for (field, r) in [("httpRoute", &s.http_route), ("http2Route", &s.http2_route)] {
        let Some(r) = r else { continue };
        let p = format!("spec.{field}");
        http_match(c, &format!("{p}.match"), &r.matches);
        action(c, &format!("{p}.action"), &r.action);
        if let Some(rp) = &r.retry_policy {
            retry(c, &format!("{p}.retryPolicy"), rp, false);
        }
    }
    if let Some(r) = &s.grpc_route {
        let p = "spec.grpcRoute";
        if r.matches.method_name.is_some() && r.matches.service_name.is_none() {
            c.err(format!("{p}.match.methodName"), "needs match.serviceName");
        }
        headers(c, &format!("{p}.match.metadata"), &r.matches.metadata);
        if let Some(port) = r.matches.port {
            c.port(&format!("{p}.match.port"), port);
        }
        action(c, &format!("{p}.action"), &r.action);
        if let Some(rp) = &r.retry_policy {
            retry(c, &format!("{p}.retryPolicy"), rp, true);
        }
    }
    if let Some(r) = &s.tcp_route {
        action(c, "spec.tcpRoute.action", &r.action);
        if let Some(port) = r.matches.as_ref().and_then(|m| m.port) {
            c.port("spec.tcpRoute.match.port", port);
        }
    }
}

fn http_match(c: &mut Check<'_>, p: &str, m: &HttpRouteMatch) {
    match (&m.prefix, &m.path) {
        // A match on the port alone takes every path, as App Mesh does.
        (None, None) if m.port.is_some() => {}
        (None, None) => c.err(p, "one of prefix, path, port is required"),
        (Some(_), Some(_)) => c.err(p, "only one of prefix, path may be given"),
        (Some(prefix), None) if !prefix.starts_with('/') => c.err(
            format!("{p}.prefix"),
            format!("must start with '/', got {prefix:?}"),
        ),
        (None, Some(path)) => match (&path.exact, &path.regex) {
            (Some(e), None) if !e.starts_with('/') => c.err(
                format!("{p}.path.exact"),
                format!("must start with '/', got {e:?}"),
            ),
            (None, Some(re)) => c.regex(&format!("{p}.path.regex"), re),
            (Some(_), None) => {}
            _ => c.err(
                format!("{p}.path"),
                "exactly one of exact, regex is required",
            ),
        },
        _ => {}
    }
    headers(c, &format!("{p}.headers"), &m.headers);
    if let Some(method) = &m.method {
        if !maille_filter_config::canary::METHODS.contains(&method.as_str()) {
            c.err(
                format!("{p}.method"),
                format!(
                    "must be one of {}, got {method:?}",
                    maille_filter_config::canary::METHODS.join(", ")
                ),
            );
        }
    }
    if let Some(s) = &m.scheme {
        if s != "http" && s != "https" {
            c.err(
                format!("{p}.scheme"),
                format!("must be http or https, got {s:?}"),
            );
        }
    }
    if m.query_parameters.len() > limits::MAX_QUERY_PARAMETERS {
        c.err(
            format!("{p}.queryParameters"),
            format!(
                "at most {} conditions, got {}",
                limits::MAX_QUERY_PARAMETERS,
                m.query_parameters.len()
            ),
        );
    }
    for (i, q) in m.query_parameters.iter().enumerate() {
        if q.name.is_empty() {
            c.err(
                format!("{p}.queryParameters[{i}].name"),
                "must not be empty",
            );
        }
    }
    if let Some(port) = m.port {
        c.port(&format!("{p}.port"), port);
    }
}

fn headers(c: &mut Check<'_>, p: &str, hs: &[HttpRouteHeader]) {
    if hs.len() > limits::MAX_HEADERS {
        c.err(
            p,
            format!(
                "at most {} conditions, got {}",
                limits::MAX_HEADERS,
                hs.len()
            ),
        );
    }
    for (i, h) in hs.iter().enumerate() {
        let hp = format!("{p}[{i}]");
        if h.name.is_empty()
            || h.name.len() > limits::MAX_NAME_LEN
            || !h
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:".contains(&b))
        {
            c.err(
                format!("{hp}.name"),
                format!("is not a header name: {:?}", h.name),
            );
        }
        let Some(m) = &h.matches else { continue };
        let set = [
            m.exact.is_some(),
            m.prefix.is_some(),
            m.suffix.is_some(),
            m.regex.is_some(),
            m.range.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            c.err(
                format!("{hp}.match"),
                "exactly one of exact, prefix, suffix, regex, range is required",
            );
        }
        for (f, v) in [
            ("exact", &m.exact),
            ("prefix", &m.prefix),
            ("suffix", &m.suffix),
        ] {
            if let Some(v) = v {
                if v.is_empty() || v.len() > limits::MAX_MATCH_LEN {
                    c.err(
                        format!("{hp}.match.{f}"),
                        format!("must be 1 to {} characters", limits::MAX_MATCH_LEN),
                    );
                }
            }
        }
        if let Some(re) = &m.regex {
            c.regex(&format!("{hp}.match.regex"), re);
        }
        if let Some(r) = m.range {
            if r.start >= r.end {
                c.err(
                    format!("{hp}.match.range"),
                    format!("start must be below end, got {}..{}", r.start, r.end),
                );
            }
        }
    }
}

fn action(c: &mut Check<'_>, p: &str, a: &RouteAction) {
    let n = a.weighted_targets.len();
    if n == 0 || n > limits::MAX_TARGETS {
        c.err(
            format!("{p}.weightedTargets"),
            format!("must hold 1 to {} targets, got {n}", limits::MAX_TARGETS),
        );
    }
    for (i, t) in a.weighted_targets.iter().enumerate() {
        let tp = format!("{p}.weightedTargets[{i}]");
        c.name(&format!("{tp}.virtualNode"), &t.virtual_node);
        c.range(&format!("{tp}.weight"), t.weight, 0..=limits::MAX_WEIGHT);
        if let Some(port) = t.port {
            c.port(&format!("{tp}.port"), port);
        }
        if a.weighted_targets[..i]
            .iter()
            .any(|o| o.virtual_node == t.virtual_node && o.port == t.port)
        {
            c.err(
                format!("{tp}.virtualNode"),
                format!("{:?} is already a target of this route", t.virtual_node),
            );
        }
    }
    if n > 0 && a.weighted_targets.iter().all(|t| t.weight == 0) {
        c.err(
            format!("{p}.weightedTargets"),
            "the weights sum to 0: at least one target needs a weight above 0",
        );
    }
}

fn retry(c: &mut Check<'_>, p: &str, r: &HttpRetryPolicy, grpc: bool) {
    const HTTP: [&str; 4] = [
        "server-error",
        "gateway-error",
        "client-error",
        "stream-error",
    ];
    const GRPC: [&str; 5] = [
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    ];
    for (i, e) in r.http_retry_events.iter().enumerate() {
        if !HTTP.contains(&e.as_str()) {
            c.err(
                format!("{p}.httpRetryEvents[{i}]"),
                format!("must be one of {}, got {e:?}", HTTP.join(", ")),
            );
        }
    }
    for (i, e) in r.tcp_retry_events.iter().enumerate() {
        if e != "connection-error" {
            c.err(
                format!("{p}.tcpRetryEvents[{i}]"),
                format!("must be connection-error, got {e:?}"),
            );
        }
    }
    if !grpc && !r.grpc_retry_events.is_empty() {
        c.err(
            format!("{p}.grpcRetryEvents"),
            "only gRPC routes have grpcRetryEvents",
        );
    }
    for (i, e) in r.grpc_retry_events.iter().enumerate() {
        if !GRPC.contains(&e.as_str()) {
            c.err(
                format!("{p}.grpcRetryEvents[{i}]"),
                format!("must be one of {}, got {e:?}", GRPC.join(", ")),
            );
        }
    }
    if r.http_retry_events.is_empty()
        && r.tcp_retry_events.is_empty()
        && r.grpc_retry_events.is_empty()
    {
        c.err(p, "at least one retry event is required");
    }
    c.range(
        &format!("{p}.maxRetries"),
        r.max_retries,
        0..=limits::MAX_RETRIES,
    );
    if r.per_retry_timeout.millis() == 0 {
        c.err(format!("{p}.perRetryTimeout.value"), "must be above 0");
    }
}

/// Whether `name` is a valid App Mesh resource name: 1 to 255 letters, digits, `-` or `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= limits::MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a whole set of resources: each on its own, then the references between them
/// (a route's router and target nodes, a service's provider, a node's backends, every
/// resource's mesh).
pub fn check_all(resources: &Resources) -> Result<(), SpecErrors> {
    let mut errors = Vec::new();
    for r in resources.values() {
        check_into(r, &mut errors);
    }
    for (key, r) in resources {
        check_refs(resources, key, r, &mut errors);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors(errors))
    }
}

/// The reference checks of [`check_all`] for a change only: `next` is the whole set after
/// the change, `upserted` the keys created or replaced (each already checked on its own with
/// [`check_resource`]), `deleted` the keys removed. Costs what the change touches: the
/// upserted resources' references, and, when something is deleted, one pass over the
/// references of the rest.
pub fn check_changes(
    next: &Resources,
    upserted: &[Key],
    deleted: &[Key],
) -> Result<(), SpecErrors> {
    let mut errors = Vec::new();
    for key in upserted {
        if let Some(r) = next.get(key) {
            check_refs(next, key, r, &mut errors);
        }
    }
    if !deleted.is_empty() {
        for (key, r) in next {
            if !upserted.contains(key) {
                check_refs(next, key, r, &mut errors);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SpecErrors(errors))
    }
}

fn check_refs(resources: &Resources, key: &Key, r: &Resource, errors: &mut Vec<SpecError>) {
    let has = |kind: Kind, mesh: &str, name: &str| {
        resources.contains_key(&Key {
            kind,
            mesh: mesh.to_owned(),
            name: name.to_owned(),
        })
    };
    let mut c = Check {
        resource: key.to_string(),
        errors,
    };
    if key.kind != Kind::Mesh && !has(Kind::Mesh, &key.mesh, &key.mesh) {
        c.err("meshName", format!("no mesh named {:?}", key.mesh));
    }
    match r {
        Resource::Route(rt) => {
            if !has(Kind::VirtualRouter, &rt.mesh_name, &rt.virtual_router_name) {
                c.err(
                    "virtualRouterName",
                    format!("no virtual router named {:?}", rt.virtual_router_name),
                );
            }
            let (field, act) = if let Some(h) = &rt.spec.http_route {
                ("httpRoute", &h.action)
            } else if let Some(h) = &rt.spec.http2_route {
                ("http2Route", &h.action)
            } else if let Some(g) = &rt.spec.grpc_route {
                ("grpcRoute", &g.action)
            } else if let Some(t) = &rt.spec.tcp_route {
                ("tcpRoute", &t.action)
            } else {
                return;
            };
            for (i, t) in act.weighted_targets.iter().enumerate() {
                if !has(Kind::VirtualNode, &rt.mesh_name, &t.virtual_node) {
                    c.err(
                        format!("spec.{field}.action.weightedTargets[{i}].virtualNode"),
                        format!("no virtual node named {:?}", t.virtual_node),
                    );
                }
            }
        }
        Resource::VirtualService(vs) => {
            if let Some(p) = &vs.spec.provider {
                if let Some(n) = &p.virtual_node {
                    if !has(Kind::VirtualNode, &vs.mesh_name, &n.virtual_node_name) {
                        c.err(
                            "spec.provider.virtualNode.virtualNodeName",
                            format!("no virtual node named {:?}", n.virtual_node_name),
                        );
                    }
                }
                if let Some(vr) = &p.virtual_router {
                    if !has(Kind::VirtualRouter, &vs.mesh_name, &vr.virtual_router_name) {
                        c.err(
                            "spec.provider.virtualRouter.virtualRouterName",
                            format!("no virtual router named {:?}", vr.virtual_router_name),
                        );
                    }
                }
            }
        }
        Resource::VirtualNode(n) => {
            for (i, b) in n.spec.backends.iter().enumerate() {
                let name = &b.virtual_service.virtual_service_name;
                if !has(Kind::VirtualService, &n.mesh_name, name) {
                    c.err(
                        format!("spec.backends[{i}].virtualService.virtualServiceName"),
                        format!("no virtual service named {name:?}"),
                    );
                }
            }
        }
        Resource::GatewayRoute(gr) => {
            if !has(
                Kind::VirtualGateway,
                &gr.mesh_name,
                &gr.virtual_gateway_name,
            ) {
                c.err(
                    "virtualGatewayName",
                    format!("no virtual gateway named {:?}", gr.virtual_gateway_name),
                );
            }
            let Some((field, t)) = gr.spec.target() else {
                return;
            };
            let name = &t.virtual_service.virtual_service_name;
            if !has(Kind::VirtualService, &gr.mesh_name, name) {
                c.err(
                    format!("spec.{field}.action.target.virtualService.virtualServiceName"),
                    format!("no virtual service named {name:?}"),
                );
            }
        }
        Resource::Filter(f) => {
            for (i, n) in f.spec.virtual_nodes.iter().enumerate() {
                if !has(Kind::VirtualNode, &f.mesh_name, n) {
                    c.err(
                        format!("spec.virtualNodes[{i}]"),
                        format!("no virtual node named {n:?}"),
                    );
                }
            }
        }
        Resource::Rollout(ro) => {
            let s = &ro.spec;
            let rk = Key {
                kind: Kind::Route,
                mesh: ro.mesh_name.clone(),
                name: format!("{}/{}", s.virtual_router_name, s.route_name),
            };
            if !resources.contains_key(&rk) {
                c.err(
                    "spec.routeName",
                    format!(
                        "no route {:?} of virtual router {:?}",
                        s.route_name, s.virtual_router_name
                    ),
                );
            }
            for (field, n) in [("spec.stable", &s.stable), ("spec.canary", &s.canary)] {
                if !has(Kind::VirtualNode, &ro.mesh_name, n) {
                    c.err(field, format!("no virtual node named {n:?}"));
                }
            }
        }
        Resource::Mesh(_) | Resource::VirtualRouter(_) | Resource::VirtualGateway(_) => {}
    }
}
