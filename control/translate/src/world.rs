//! What a translation reads: the mesh's resources and the filter modules served, and the
//! record of what each node's translation looked at ([`Dep`]), so that a change of the mesh
//! re-translates only the nodes it can affect.

use maille_model::{Key, Kind, Resource, Resources, Route, VirtualNode};
use sha2::Digest;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::Path;

/// A filter module the server hands out over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Module {
    /// URL Envoy fetches it from (through the control cluster).
    pub url: String,
    /// Hex sha256 of its bytes; Envoy checks it and caches by it.
    pub sha256: String,
}

/// Everything the translation reads.
#[derive(Debug, Clone, Copy)]
pub struct World<'a> {
    /// All resources.
    pub resources: &'a Resources,
    /// Filter modules by file name (`canary.wasm`, `libmaille_breaker.so`).
    pub modules: &'a BTreeMap<String, Module>,
    /// The instances AWS Cloud Map last gave for each query of an `awsCloudMap` node (an
    /// absent query: not discovered yet).
    pub cloud_map: &'a CloudMap,
    /// Who calls each node ([`callers`]).
    pub callers: &'a Callers,
}

/// The SPIFFE IDs of the proxies that may call each virtual node, by `(mesh, node)`: the
/// nodes that have one of the virtual services it serves as a backend, and the gateways
/// with a route to one ([`callers`]).
pub type Callers = BTreeMap<(String, String), BTreeSet<String>>;

/// No callers known (translations that do not authorize callers, such as tests').
pub static NO_CALLERS: Callers = BTreeMap::new();

/// Who may call each virtual node of `resources`: for each virtual service, the nodes it
/// reaches (its provider node, or every target of its router's routes); each node that has
/// it as a backend, and each gateway with a route to it, calls those nodes.
pub fn callers(resources: &Resources) -> Callers {
    let get = |kind: Kind, mesh: &str, name: &str| {
        resources
            .get(&Key {
                kind,
                mesh: mesh.to_owned(),
                name: name.to_owned(),
            })
            .map(|r| r.as_ref())
    };
    // The nodes each virtual service reaches, by (mesh, service).
    let reaches = |mesh: &str, service: &str| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let Some(Resource::VirtualService(vs)) = get(Kind::VirtualService, mesh, service) else {
            return out;
        };
        let Some(p) = &vs.spec.provider else {
            return out;
        };
        if let Some(n) = &p.virtual_node {
            out.insert(n.virtual_node_name.clone());
        }
        if let Some(r) = &p.virtual_router {
            let from = Key {
                kind: Kind::Route,
                mesh: mesh.to_owned(),
                name: format!("{}/", r.virtual_router_name),
            };
            let prefix = from.name.clone();
            for (k, res) in resources.range((Bound::Included(from), Bound::Unbounded)) {
                if k.kind != Kind::Route || k.mesh != mesh || !k.name.starts_with(&prefix) {
                    break;
                }
                if let Resource::Route(rt) = res.as_ref() {
                    out.extend(
                        rt.spec
                            .weighted_targets()
                            .iter()
                            .map(|t| t.virtual_node.clone()),
                    );
                }
            }
        }
        out
    };
    let mut out = Callers::new();
    for (k, r) in resources {
        let (caller, services): (String, Vec<&str>) = match r.as_ref() {
            Resource::VirtualNode(n) => (
                crate::names::spiffe_id(&k.mesh, &n.virtual_node_name),
                n.spec
                    .backends
                    .iter()
                    .map(|b| b.virtual_service.virtual_service_name.as_str())
                    .collect(),
            ),
            Resource::GatewayRoute(gr) => (
                crate::names::spiffe_id(
                    &k.mesh,
                    &crate::names::gateway_proxy(&gr.virtual_gateway_name),
                ),
                gr.spec
                    .target()
                    .map(|(_, t)| t.virtual_service.virtual_service_name.as_str())
                    .into_iter()
                    .collect(),
            ),
            _ => continue,
        };
        for s in services {
            for node in reaches(&k.mesh, s) {
                out.entry((k.mesh.clone(), node))
                    .or_default()
                    .insert(caller.clone());
            }
        }
    }
    out
}

/// One `DiscoverInstances` question: a Cloud Map service and the attributes its instances
/// must have.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct CloudMapQuery {
    /// `NamespaceName`.
    pub namespace: String,
    /// `ServiceName`.
    pub service: String,
    /// `QueryParameters`, sorted by key.
    pub attributes: Vec<(String, String)>,
}

impl From<&maille_model::AwsCloudMapServiceDiscovery> for CloudMapQuery {
    fn from(c: &maille_model::AwsCloudMapServiceDiscovery) -> CloudMapQuery {
        let mut attributes: Vec<(String, String)> = c
            .attributes
            .iter()
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect();
        attributes.sort();
        attributes.dedup();
        CloudMapQuery {
            namespace: c.namespace_name.clone(),
            service: c.service_name.clone(),
            attributes,
        }
    }
}

impl std::fmt::Display for CloudMapQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service)?;
        for (k, v) in &self.attributes {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// A healthy instance as Cloud Map gives it (`AWS_INSTANCE_IPV4`, `AWS_INSTANCE_IPV6`,
/// `AWS_INSTANCE_PORT`).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct CloudMapInstance {
    /// Its IPv4 address.
    pub ipv4: Option<String>,
    /// Its IPv6 address.
    pub ipv6: Option<String>,
    /// Its port; the listener's when absent.
    pub port: Option<u32>,
}

/// Instances by query.
pub type CloudMap = BTreeMap<CloudMapQuery, Vec<CloudMapInstance>>;

/// No Cloud Map instances (for worlds without Cloud Map nodes).
pub static NO_CLOUD_MAP: CloudMap = BTreeMap::new();

/// Every Cloud Map query of `resources`' nodes: what the control server asks Cloud Map.
pub fn cloud_map_queries(resources: &Resources) -> BTreeSet<CloudMapQuery> {
    resources
        .values()
        .filter_map(|r| match r.as_ref() {
            Resource::VirtualNode(n) => n.spec.service_discovery.as_ref()?.aws_cloud_map.as_ref(),
            _ => None,
        })
        .map(CloudMapQuery::from)
        .collect()
}

/// One thing a node's translation read. A change to the mesh affects a node exactly when it
/// changes something the node's translation read ([`Dep::of_change`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dep {
    /// One resource, whether or not it existed.
    Resource(Key),
    /// The set of routes of a virtual router.
    RoutesOf {
        /// Its mesh.
        mesh: String,
        /// The router.
        router: String,
    },
    /// The set of routes of a virtual gateway.
    GatewayRoutesOf {
        /// Its mesh.
        mesh: String,
        /// The gateway.
        gateway: String,
    },
    /// The Maille `Filter`s attached to one virtual node.
    FiltersFor {
        /// The mesh.
        mesh: String,
        /// The virtual node.
        node: String,
    },
    /// A served module, by name.
    Module(String),
    /// The instances of a Cloud Map query.
    CloudMap(CloudMapQuery),
    /// Who may call a virtual node ([`callers`]).
    CallersOf {
        /// The mesh.
        mesh: String,
        /// The virtual node.
        node: String,
    },
}

impl Dep {
    /// What a create, update or delete of the resource `key` changes (`old` before, `new`
    /// after, `None` where it does not exist): the node translations that read any of these
    /// must be made again.
    pub fn of_change(key: &Key, old: Option<&Resource>, new: Option<&Resource>) -> Vec<Dep> {
        let mut out = vec![Dep::Resource(key.clone())];
        match key.kind {
            Kind::Route => {
                if let Some((router, _)) = key.name.split_once('/') {
                    out.push(Dep::RoutesOf {
                        mesh: key.mesh.clone(),
                        router: router.to_owned(),
                    });
                }
            }
            Kind::GatewayRoute => {
                if let Some((gateway, _)) = key.name.split_once('/') {
                    out.push(Dep::GatewayRoutesOf {
                        mesh: key.mesh.clone(),
                        gateway: gateway.to_owned(),
                    });
                }
            }
            Kind::Filter => {
                for r in [old, new].into_iter().flatten() {
                    if let Resource::Filter(f) = r {
                        for n in &f.spec.virtual_nodes {
                            out.push(Dep::FiltersFor {
                                mesh: key.mesh.clone(),
                                node: n.clone(),
                            });
                        }
                    }
                }
            }
            _ => {}
        }
        out
    }
}

/// A translation in progress: reads the world and records what it read.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    world: World<'a>,
    deps: RefCell<BTreeSet<Dep>>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(world: World<'a>) -> Ctx<'a> {
        Ctx {
            world,
            deps: RefCell::new(BTreeSet::new()),
        }
    }

    fn read(&self, d: Dep) {
        self.deps.borrow_mut().insert(d);
    }

    pub(crate) fn into_deps(self) -> BTreeSet<Dep> {
        self.deps.into_inner()
    }

    pub(crate) fn get(&self, kind: Kind, mesh: &str, name: &str) -> Option<&'a Resource> {
        let key = Key {
            kind,
            mesh: mesh.to_owned(),
            name: name.to_owned(),
        };
        let r = self.world.resources.get(&key).map(|r| r.as_ref());
        self.read(Dep::Resource(key));
        r
    }

    pub(crate) fn node(&self, mesh: &str, name: &str) -> Option<&'a VirtualNode> {
        match self.get(Kind::VirtualNode, mesh, name) {
            Some(Resource::VirtualNode(n)) => Some(n),
            _ => None,
        }
    }

    pub(crate) fn module(&self, name: &str) -> Option<&'a Module> {
        self.read(Dep::Module(name.to_owned()));
        self.world.modules.get(name)
    }

    /// The instances Cloud Map last gave for `q`, if it answered yet.
    pub(crate) fn cloud_map(&self, q: &CloudMapQuery) -> Option<&'a [CloudMapInstance]> {
        self.read(Dep::CloudMap(q.clone()));
        self.world.cloud_map.get(q).map(Vec::as_slice)
    }

    /// The SPIFFE IDs of the proxies that may call `node` ([`callers`]).
    pub(crate) fn callers_of(&self, mesh: &str, node: &str) -> Vec<&'a str> {
        self.read(Dep::CallersOf {
            mesh: mesh.to_owned(),
            node: node.to_owned(),
        });
        self.world
            .callers
            .get(&(mesh.to_owned(), node.to_owned()))
            .map(|s| s.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// The keys of `kind` in `mesh` whose name starts with `prefix`, with their resources.
    fn range(
        &self,
        kind: Kind,
        mesh: &str,
        prefix: &str,
    ) -> impl Iterator<Item = &'a Resource> + use<'a> {
        let from = Key {
            kind,
            mesh: mesh.to_owned(),
            name: prefix.to_owned(),
        };
        let prefix = prefix.to_owned();
        let mesh = mesh.to_owned();
        self.world
            .resources
            .range((Bound::Included(from), Bound::Unbounded))
            .take_while(move |(k, _)| {
                k.kind == kind && k.mesh == mesh && k.name.starts_with(&prefix)
            })
            .map(|(_, r)| r.as_ref())
    }

    /// The routes of `router`, in App Mesh order: by priority (0 first); routes without one
    /// after, longest match first; then by name, so the order is stable.
    pub(crate) fn routes_of(&self, mesh: &str, router: &str) -> Vec<&'a Route> {
        self.read(Dep::RoutesOf {
            mesh: mesh.to_owned(),
            router: router.to_owned(),
        });
        let mut routes: Vec<&Route> = self
            .range(Kind::Route, mesh, &format!("{router}/"))
            .filter_map(|r| match r {
                Resource::Route(rt) => Some(rt),
                _ => None,
            })
            .collect();
        routes.sort_by(|a, b| {
            let pa = a.spec.priority.unwrap_or(u32::MAX);
            let pb = b.spec.priority.unwrap_or(u32::MAX);
            pa.cmp(&pb)
                // A route for one port before one for every port.
                .then_with(|| route_port(b).is_some().cmp(&route_port(a).is_some()))
                .then_with(|| specificity(b).cmp(&specificity(a)))
                .then_with(|| a.route_name.cmp(&b.route_name))
        });
        routes
    }

    /// The routes of virtual gateway `gateway`, in App Mesh order: by priority (0 first);
    /// routes without one after, a route for one port before one for every port, longest
    /// match first; then by name.
    pub(crate) fn gateway_routes_of(
        &self,
        mesh: &str,
        gateway: &str,
    ) -> Vec<&'a maille_model::GatewayRoute> {
        self.read(Dep::GatewayRoutesOf {
            mesh: mesh.to_owned(),
            gateway: gateway.to_owned(),
        });
        let mut routes: Vec<&maille_model::GatewayRoute> = self
            .range(Kind::GatewayRoute, mesh, &format!("{gateway}/"))
            .filter_map(|r| match r {
                Resource::GatewayRoute(gr) => Some(gr),
                _ => None,
            })
            .collect();
        use crate::gateway::{route_port, specificity};
        routes.sort_by(|a, b| {
            let pa = a.spec.priority.unwrap_or(u32::MAX);
            let pb = b.spec.priority.unwrap_or(u32::MAX);
            pa.cmp(&pb)
                .then_with(|| route_port(b).is_some().cmp(&route_port(a).is_some()))
                .then_with(|| specificity(b).cmp(&specificity(a)))
                .then_with(|| a.gateway_route_name.cmp(&b.gateway_route_name))
        });
        routes
    }

    /// The Maille `Filter`s of `mesh` attached to virtual node `node`, in name order.
    pub(crate) fn filters_for(&self, mesh: &str, node: &str) -> Vec<&'a maille_model::Filter> {
        self.read(Dep::FiltersFor {
            mesh: mesh.to_owned(),
            node: node.to_owned(),
        });
        self.range(Kind::Filter, mesh, "")
            .filter_map(|r| match r {
                Resource::Filter(f) if f.spec.virtual_nodes.iter().any(|n| n == node) => Some(f),
                _ => None,
            })
            .collect()
    }
}

/// The port an HTTP, HTTP/2 or gRPC route matches on, if any.
pub(crate) fn route_port(rt: &Route) -> Option<u32> {
    rt.spec
        .http_route
        .as_ref()
        .or(rt.spec.http2_route.as_ref())
        .and_then(|h| h.matches.port)
        .or_else(|| rt.spec.grpc_route.as_ref().and_then(|g| g.matches.port))
}

fn specificity(r: &Route) -> usize {
    let m = r
        .spec
        .http_route
        .as_ref()
        .or(r.spec.http2_route.as_ref())
        .map(|h| &h.matches);
    match m {
        Some(m) => {
            let path = match (&m.prefix, &m.path) {
                (Some(p), _) => p.len(),
                (_, Some(maille_model::PathMatch { exact: Some(e), .. })) => 10_000 + e.len(),
                (_, Some(_)) => 5_000,
                _ => 0,
            };
            path + 100 * (m.headers.len() + m.query_parameters.len())
        }
        None => 0,
    }
}

/// Whether `file` is a module the server serves: `<name>.wasm` (proxy-wasm) or
/// `lib<name>.so` (an Envoy dynamic module), a plain file name.
pub fn is_module_file(file: &str) -> bool {
    let plain = !file.is_empty()
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !file.starts_with('.');
    plain && (file.ends_with(".wasm") || (file.starts_with("lib") && file.ends_with(".so")))
}

/// The filter modules of `dir` (`<name>.wasm`, `lib<name>.so`) by file name, as a server at
/// `http_base` serves them, with their bytes. Unreadable files are skipped.
pub fn modules_in(dir: &Path, http_base: &str) -> BTreeMap<String, (Module, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Some(name) = path.file_name().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        if !is_module_file(&name) || !path.is_file() {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let sha = hex(&sha2::Sha256::digest(&bytes));
        let module = Module {
            url: format!("{http_base}/v1/modules/{name}?sha256={sha}"),
            sha256: sha,
        };
        out.insert(name, (module, bytes));
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}
