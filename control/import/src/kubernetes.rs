//! Kubernetes manifests of the App Mesh controller for Kubernetes (`appmesh.k8s.aws/v1beta2`),
//! as `kubectl apply -f` takes them: multi-document YAML (or JSON), `kind: List` too, across
//! any number of files. The objects become the App Mesh resources the controller would have
//! made of them:
//!
//! - **Names** are the objects' `spec.awsName`, else the controller's defaults: a `Mesh` keeps
//!   its name, a `VirtualNode` or `VirtualRouter` is `<name>_<namespace>`, a `VirtualService`
//!   is `<name>.<namespace>`; a router's embedded `spec.routes[]` become routes named by their
//!   `name`.
//! - **References** (`virtualNodeRef`, `virtualServiceRef`, `virtualRouterRef`, each with an
//!   optional `namespace` that defaults to the referring object's) name the referenced
//!   object's App Mesh name; `*ARN` references give the ARN's last segment. A reference to an
//!   object that is not in the files given is refused: its App Mesh name cannot be known.
//! - **The mesh** of a namespaced object is its `spec.meshRef`, else the one `Mesh` whose
//!   `namespaceSelector` matches the labels of the object's `Namespace` (given in the files),
//!   else, when the files give no `Namespace` object for its namespace, the only `Mesh` of
//!   the files.
//! - `BackendGroup`s expand into the backends of the virtual nodes that list them
//!   (`name: "*"` is every virtual service of the group's namespace).
//! - `podSelector` is kept on the virtual node as metadata (`kubernetes`).
//!
//! - A `GatewayRoute` belongs to the one `VirtualGateway` of its mesh whose
//!   `namespaceSelector` matches the route's namespace (absent: none; empty: all) and whose
//!   `gatewayRouteSelector` (absent or empty: all) matches the route's labels; none or
//!   several is refused, as the controller does. Gateways and gateway routes are named
//!   `<name>_<namespace>` by default; a gateway's `podSelector` is the controller's
//!   business (which pods get its Envoy), not the mesh's, and is dropped with a warning.
//!
//! Objects of other API groups (Deployments, Services, ...) are skipped with a warning;
//! anything else a CRD field Maille does not know is refused with its path.

use super::{typed, ImportError, Imported};
use maille_model::Kind;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The API group of the controller's resources.
pub(super) const GROUP: &str = "appmesh.k8s.aws/";
/// The version read.
const VERSION: &str = "appmesh.k8s.aws/v1beta2";
/// The kinds of that version.
const KINDS: [&str; 7] = [
    "Mesh",
    "VirtualNode",
    "VirtualService",
    "VirtualRouter",
    "VirtualGateway",
    "GatewayRoute",
    "BackendGroup",
];

/// Whether `text` holds an object of the controller's API group: a line that sets
/// `apiVersion: appmesh.k8s.aws/...` (YAML) or `"apiVersion": "appmesh.k8s.aws/...` (JSON),
/// not a mere mention (a CloudFormation template labelling an EKS namespace).
pub(super) fn looks_like(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start().trim_start_matches(['-', ' ', '{']);
        let Some(rest) = l
            .strip_prefix("apiVersion")
            .or_else(|| l.strip_prefix("\"apiVersion\""))
        else {
            return false;
        };
        rest.trim_start().strip_prefix(':').is_some_and(|v| {
            v.trim_start()
                .trim_start_matches(['"', '\''])
                .starts_with(GROUP)
        })
    })
}

/// Most objects of one import (hostile input: a YAML bomb of millions of tiny documents).
const MAX_OBJECTS: usize = 100_000;

/// One object of the manifests.
#[derive(Debug)]
struct Object {
    file: String,
    kind: String,
    name: String,
    namespace: String,
    labels: Map<String, Value>,
    spec: Map<String, Value>,
}

impl Object {
    /// How messages name it: `VirtualNode howto/front`, `Mesh colorapp`.
    fn at(&self) -> String {
        if self.kind == "Mesh" {
            format!("Mesh {}", self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }

    /// Its App Mesh name: `spec.awsName`, else the controller's default.
    fn aws_name(&self) -> String {
        if let Some(n) = self.spec.get("awsName").and_then(Value::as_str) {
            if !n.is_empty() {
                return n.to_owned();
            }
        }
        match self.kind.as_str() {
            "Mesh" => self.name.clone(),
            "VirtualService" => format!("{}.{}", self.name, self.namespace),
            _ => format!("{}_{}", self.name, self.namespace),
        }
    }
}

/// A reference field of the CRDs: `<field>Ref` or `<field>ARN` to an object of `kind`,
/// becoming App Mesh's `<to>`.
#[derive(Debug, Clone, Copy)]
struct Ref {
    field: &'static str,
    kind: &'static str,
    to: &'static str,
}

/// `VirtualService.spec.provider.virtualNode`.
const PROVIDER_NODE: Ref = Ref {
    field: "virtualNode",
    kind: "VirtualNode",
    to: "virtualNodeName",
};
/// `VirtualService.spec.provider.virtualRouter`.
const PROVIDER_ROUTER: Ref = Ref {
    field: "virtualRouter",
    kind: "VirtualRouter",
    to: "virtualRouterName",
};
/// `VirtualNode.spec.backends[].virtualService`.
const BACKEND: Ref = Ref {
    field: "virtualService",
    kind: "VirtualService",
    to: "virtualServiceName",
};
/// A route's `weightedTargets[]`.
const TARGET: Ref = Ref {
    field: "virtualNode",
    kind: "VirtualNode",
    to: "virtualNode",
};

/// All the objects read, and the namespaces' labels.
#[derive(Default)]
struct Manifests {
    objects: Vec<Object>,
    /// (kind, namespace, name) → index in `objects`; meshes under namespace "".
    index: BTreeMap<(String, String, String), usize>,
    /// Namespace objects: name → labels.
    namespaces: BTreeMap<String, Map<String, Value>>,
}

/// Reads the App Mesh objects of `files` (name, text) into resources. Every error of every
/// file is returned.
pub(super) fn import(files: &[(String, String)]) -> Result<Imported, Vec<ImportError>> {
    let mut out = Imported::default();
    let mut errors = Vec::new();
    let mut m = Manifests::default();
    for (file, text) in files {
        read_file(file, text, &mut m, &mut out.warnings, &mut errors);
    }
    let mut cx = Cx {
        m: &m,
        errors: Vec::new(),
    };
    for o in &m.objects {
        cx.convert(o, &mut out);
    }
    errors.extend(cx.errors);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn error(file: &str, path: impl Into<String>, message: impl Into<String>) -> ImportError {
    ImportError {
        file: file.to_owned(),
        path: path.into(),
        message: message.into(),
    }
}

fn read_file(
    file: &str,
    text: &str,
    m: &mut Manifests,
    warnings: &mut Vec<String>,
    errors: &mut Vec<ImportError>,
) {
    let docs = match super::yaml_documents(text) {
        Ok(d) => d,
        Err(e) => return errors.push(error(file, "", e)),
    };
    let mut items = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let at = format!("document {}", i + 1);
        match doc {
            Value::Null => {}
            Value::Object(mut o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                match o.remove("items") {
                    Some(Value::Array(list)) => {
                        for (j, item) in list.into_iter().enumerate() {
                            items.push((format!("{at}.items[{j}]"), item));
                        }
                    }
                    _ => errors.push(error(file, at, "a List needs `items`, a list of objects")),
                }
            }
            other => items.push((at, other)),
        }
    }
    for (at, item) in items {
        if m.objects.len() >= MAX_OBJECTS {
            return errors.push(error(
                file,
                at,
                format!("more than {MAX_OBJECTS} objects in one import"),
            ));
        }
        if let Err(e) = read_object(file, &at, item, m, warnings) {
            errors.push(e);
        }
    }
}

fn read_object(
    file: &str,
    at: &str,
    item: Value,
    m: &mut Manifests,
    warnings: &mut Vec<String>,
) -> Result<(), ImportError> {
    let Value::Object(mut o) = item else {
        return Err(error(file, at, "expected a Kubernetes object (a mapping)"));
    };
    let api = o
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let api = api.as_str();
    let kind = o
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if api.is_empty() || kind.is_empty() {
        return Err(error(
            file,
            at,
            "a Kubernetes object needs `apiVersion` and `kind`",
        ));
    }
    let meta = match o.remove("metadata") {
        Some(Value::Object(meta)) => meta,
        _ => Map::new(),
    };
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if api == "v1" && kind == "Namespace" {
        if name.is_empty() {
            return Err(error(file, format!("{at}.metadata.name"), "required"));
        }
        let mut labels = match meta.get("labels") {
            Some(Value::Object(l)) => l.clone(),
            _ => Map::new(),
        };
        // Kubernetes labels every namespace with its name.
        labels.insert(
            "kubernetes.io/metadata.name".into(),
            Value::String(name.clone()),
        );
        m.namespaces.insert(name, labels);
        return Ok(());
    }
    if !api.starts_with(GROUP) {
        warnings.push(format!(
            "{file}: {at}: {api} {kind} {name:?}: not an App Mesh resource; skipped"
        ));
        return Ok(());
    }
    if api != VERSION {
        return Err(error(
            file,
            format!("{at}.apiVersion"),
            format!("{api}: only {VERSION} is read (the controller's current version)"),
        ));
    }
    if !KINDS.contains(&kind.as_str()) {
        return Err(error(
            file,
            format!("{at}.kind"),
            format!(
                "{kind}: not a kind of {VERSION}; known: {}",
                KINDS.join(", ")
            ),
        ));
    }
    if name.is_empty() {
        return Err(error(
            file,
            format!("{at}.metadata.name"),
            "required (generateName is not supported: the name becomes App Mesh's)",
        ));
    }
    let namespace = if kind == "Mesh" {
        String::new()
    } else {
        match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() => ns.to_owned(),
            _ => {
                warnings.push(format!(
                    "{file}: {at}: {kind} {name:?} has no metadata.namespace: taken as \"default\" (kubectl would use its context's namespace)"
                ));
                "default".to_owned()
            }
        }
    };
    let spec = match o.remove("spec") {
        Some(Value::Object(s)) => s,
        None => Map::new(),
        Some(_) => return Err(error(file, format!("{at}.spec"), "expected a mapping")),
    };
    let obj = Object {
        file: file.to_owned(),
        kind: kind.clone(),
        name: name.clone(),
        namespace: namespace.clone(),
        labels: match meta.get("labels") {
            Some(Value::Object(l)) => l.clone(),
            _ => Map::new(),
        },
        spec,
    };
    let key = (kind, namespace, name);
    if m.index.contains_key(&key) {
        return Err(error(file, at, format!("{} is given twice", obj.at())));
    }
    m.index.insert(key, m.objects.len());
    m.objects.push(obj);
    Ok(())
}

/// Whether a Kubernetes label selector matches `labels`. An absent selector selects nothing,
/// an empty one everything (the controller's rule for `namespaceSelector`).
fn selects(selector: Option<&Value>, labels: &Map<String, Value>) -> Result<bool, String> {
    let Some(sel) = selector else {
        return Ok(false);
    };
    let Value::Object(sel) = sel else {
        return Err("a label selector is a mapping".into());
    };
    if let Some(ml) = sel.get("matchLabels") {
        let Value::Object(ml) = ml else {
            return Err("matchLabels: expected a mapping".into());
        };
        for (k, v) in ml {
            let Some(v) = v.as_str() else {
                return Err(format!("matchLabels.{k}: a label value is a string"));
            };
            if labels.get(k).and_then(Value::as_str) != Some(v) {
                return Ok(false);
            }
        }
    }
    if let Some(exprs) = sel.get("matchExpressions") {
        let Value::Array(exprs) = exprs else {
            return Err("matchExpressions: expected a list".into());
        };
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let has = labels.get(key).and_then(Value::as_str);
            let op = e.get("operator").and_then(Value::as_str);
            if matches!(op, Some("In" | "NotIn")) && values.is_empty() {
                return Err(format!(
                    "matchExpressions: {key} {}: values must not be empty",
                    op.unwrap_or_default()
                ));
            }
            let ok = match op {
                Some("In") => has.is_some_and(|v| values.contains(&v)),
                Some("NotIn") => !has.is_some_and(|v| values.contains(&v)),
                Some("Exists") => has.is_some(),
                Some("DoesNotExist") => has.is_none(),
                other => {
                    return Err(format!(
                        "matchExpressions: operator {other:?}: expected In, NotIn, Exists or DoesNotExist"
                    ))
                }
            };
            if !ok {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The conversion, gathering every error.
struct Cx<'a> {
    m: &'a Manifests,
    errors: Vec<ImportError>,
}

impl<'a> Cx<'a> {
    fn fail(&mut self, o: &Object, path: &str, message: impl Into<String>) {
        let path = if path.is_empty() {
            o.at()
        } else {
            format!("{}.{path}", o.at())
        };
        self.errors.push(error(&o.file, path, message));
    }

    fn find(&self, kind: &str, namespace: &str, name: &str) -> Option<&'a Object> {
        let ns = if kind == "Mesh" { "" } else { namespace };
        let m: &'a Manifests = self.m;
        m.index
            .get(&(kind.to_owned(), ns.to_owned(), name.to_owned()))
            .map(|i| &m.objects[*i])
    }

    /// The App Mesh name of the mesh `o` belongs to.
    fn mesh_of(&self, o: &Object) -> Result<String, (String, String)> {
        if let Some(r) = o.spec.get("meshRef") {
            let name = r.get("name").and_then(Value::as_str).unwrap_or("");
            return match self.find("Mesh", "", name) {
                Some(mesh) => Ok(mesh.aws_name()),
                None => Err((
                    "spec.meshRef.name".into(),
                    format!("no Mesh {name:?} in the files given"),
                )),
            };
        }
        let meshes: Vec<&Object> = self.m.objects.iter().filter(|m| m.kind == "Mesh").collect();
        match self.m.namespaces.get(&o.namespace) {
            Some(labels) => {
                let mut chosen = Vec::new();
                for mesh in &meshes {
                    match selects(mesh.spec.get("namespaceSelector"), labels) {
                        Ok(true) => chosen.push(*mesh),
                        Ok(false) => {}
                        Err(e) => {
                            return Err((
                                String::new(),
                                format!("{}: spec.namespaceSelector: {e}", mesh.at()),
                            ))
                        }
                    }
                }
                match chosen.as_slice() {
                    [one] => Ok(one.aws_name()),
                    [] => Err((
                        String::new(),
                        format!(
                            "no Mesh's namespaceSelector matches the labels of Namespace {:?} (give spec.meshRef, or label the namespace)",
                            o.namespace
                        ),
                    )),
                    many => Err((
                        String::new(),
                        format!(
                            "the namespaceSelector of several meshes match Namespace {:?}: {}",
                            o.namespace,
                            many.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    )),
                }
            }
            None => match meshes.as_slice() {
                [one] => Ok(one.aws_name()),
                [] => Err((
                    String::new(),
                    "no Mesh in the files given: give the Mesh object (or spec.meshRef)".into(),
                )),
                _ => Err((
                    String::new(),
                    format!(
                        "which mesh: give spec.meshRef, or the Namespace {:?} with the labels a Mesh's namespaceSelector selects",
                        o.namespace
                    ),
                )),
            },
        }
    }

    /// The App Mesh name a reference at `path` of `o` names: `<field>Ref {name, namespace?}`
    /// or `<field>ARN`, exactly one, to an object of `kind` in `o`'s mesh.
    fn reference(
        &mut self,
        o: &Object,
        mesh: &str,
        path: &str,
        holder: &Map<String, Value>,
        field: &str,
        kind: &str,
    ) -> Option<String> {
        let r = holder.get(&format!("{field}Ref"));
        let arn = holder.get(&format!("{field}ARN"));
        match (r, arn) {
            (Some(r), None) => {
                let p = format!("{path}.{field}Ref");
                let Some(name) = r.get("name").and_then(Value::as_str) else {
                    self.fail(o, &format!("{p}.name"), "required");
                    return None;
                };
                let ns = r
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(&o.namespace);
                let Some(target) = self.find(kind, ns, name) else {
                    self.fail(
                        o,
                        &p,
                        format!(
                            "no {kind} {ns}/{name} in the files given (give every manifest of the mesh in one call: its App Mesh name cannot be known otherwise)"
                        ),
                    );
                    return None;
                };
                match self.mesh_of(target) {
                    Ok(m) if m == mesh => Some(target.aws_name()),
                    Ok(m) => {
                        self.fail(
                            o,
                            &p,
                            format!("{} is in mesh {m:?}, not {mesh:?}", target.at()),
                        );
                        None
                    }
                    // Its own mesh error is reported where it is defined.
                    Err(_) => None,
                }
            }
            (None, Some(arn)) => {
                let p = format!("{path}.{field}ARN");
                let Some(arn) = arn.as_str() else {
                    self.fail(o, &p, "expected a string");
                    return None;
                };
                let kind_seg = format!("{}{}", kind[..1].to_ascii_lowercase(), &kind[1..]);
                // arn:<partition>:appmesh:<region>:<account>:mesh/<mesh>/<kind>/<name>
                let fields: Vec<&str> = arn.splitn(6, ':').collect();
                let res = match fields.as_slice() {
                    ["arn", _, "appmesh", _, _, res] => *res,
                    _ => "",
                };
                let parts: Vec<&str> = res.split('/').collect();
                match parts.as_slice() {
                    ["mesh", m, k, name] if *k == kind_seg && *m == mesh => {
                        Some((*name).to_owned())
                    }
                    ["mesh", m, k, _] if *k == kind_seg => {
                        self.fail(o, &p, format!("names mesh {m:?}, not {mesh:?}"));
                        None
                    }
                    _ => {
                        self.fail(
                            o,
                            &p,
                            format!("{arn:?}: expected arn:aws:appmesh:REGION:ACCOUNT:mesh/{mesh}/{kind_seg}/NAME"),
                        );
                        None
                    }
                }
            }
            (Some(_), Some(_)) => {
                self.fail(
                    o,
                    path,
                    format!("give one of {field}Ref and {field}ARN, not both"),
                );
                None
            }
            (None, None) => {
                self.fail(o, path, format!("{field}Ref or {field}ARN is required"));
                None
            }
        }
    }

    /// Turns `{<field>Ref | <field>ARN, ...}` at `path` into `{<to>: name, ...}`.
    fn replace_ref(&mut self, o: &Object, mesh: &str, path: &str, v: &mut Value, r: Ref) {
        let Value::Object(holder) = v else {
            self.fail(o, path, "expected a mapping");
            return;
        };
        let name = self.reference(o, mesh, path, holder, r.field, r.kind);
        holder.remove(&format!("{}Ref", r.field));
        holder.remove(&format!("{}ARN", r.field));
        if let Some(n) = name {
            holder.insert(r.to.to_owned(), Value::String(n));
        }
    }

    fn convert(&mut self, o: &Object, out: &mut Imported) {
        if o.kind == "BackendGroup" {
            return; // expanded into the nodes that use it
        }
        let mesh = if o.kind == "Mesh" {
            o.aws_name()
        } else {
            match self.mesh_of(o) {
                Ok(m) => m,
                Err((path, message)) => return self.fail(o, &path, message),
            }
        };
        let mut spec = o.spec.clone();
        spec.remove("awsName");
        spec.remove("meshRef");
        let mut spec = arn_keys(Value::Object(spec));
        let Value::Object(spec_map) = &mut spec else {
            return;
        };
        let before = self.errors.len();
        let (kind, mut v) = match o.kind.as_str() {
            "Mesh" => {
                spec_map.remove("namespaceSelector");
                if spec_map.remove("meshOwner").is_some() {
                    out.warnings.push(format!(
                        "{}: {}.spec.meshOwner: ignored (not part of the mesh configuration)",
                        o.file,
                        o.at()
                    ));
                }
                if let Some(sd) = spec_map.remove("meshServiceDiscovery") {
                    spec_map.insert("serviceDiscovery".into(), sd);
                }
                (
                    Kind::Mesh,
                    serde_json::json!({ "meshName": mesh, "spec": spec }),
                )
            }
            "VirtualNode" => {
                let pods = spec_map.remove("podSelector");
                let groups = spec_map.remove("backendGroups");
                self.node_backends(o, &mesh, spec_map, groups);
                let mut k8s = serde_json::json!({ "namespace": o.namespace, "name": o.name });
                if let Some(p) = pods {
                    k8s["podSelector"] = p;
                }
                (
                    Kind::VirtualNode,
                    serde_json::json!({
                        "meshName": mesh,
                        "virtualNodeName": o.aws_name(),
                        "spec": spec,
                        "kubernetes": k8s,
                    }),
                )
            }
            "VirtualService" => {
                if let Some(Value::Object(p)) = spec_map.get_mut("provider") {
                    if let Some(n) = p.get_mut("virtualNode") {
                        self.replace_ref(o, &mesh, "spec.provider.virtualNode", n, PROVIDER_NODE);
                    }
                    if let Some(r) = p.get_mut("virtualRouter") {
                        self.replace_ref(
                            o,
                            &mesh,
                            "spec.provider.virtualRouter",
                            r,
                            PROVIDER_ROUTER,
                        );
                    }
                }
                (
                    Kind::VirtualService,
                    serde_json::json!({
                        "meshName": mesh,
                        "virtualServiceName": o.aws_name(),
                        "spec": spec,
                    }),
                )
            }
            "VirtualRouter" => {
                let routes = spec_map.remove("routes");
                self.routes(o, &mesh, routes, out);
                (
                    Kind::VirtualRouter,
                    serde_json::json!({
                        "meshName": mesh,
                        "virtualRouterName": o.aws_name(),
                        "spec": spec,
                    }),
                )
            }
            "VirtualGateway" => {
                spec_map.remove("namespaceSelector");
                spec_map.remove("gatewayRouteSelector");
                if spec_map.remove("podSelector").is_some() {
                    out.warnings.push(format!(
                        "{}: {}.spec.podSelector: ignored (which pods run the gateway is the deployment's business)",
                        o.file,
                        o.at()
                    ));
                }
                (
                    Kind::VirtualGateway,
                    serde_json::json!({
                        "meshName": mesh,
                        "virtualGatewayName": o.aws_name(),
                        "spec": spec,
                    }),
                )
            }
            "GatewayRoute" => {
                let Some(gateway) = self.gateway_of(o, &mesh) else {
                    return;
                };
                for kind in ["httpRoute", "http2Route", "grpcRoute"] {
                    if let Some(vs) = spec_map
                        .get_mut(kind)
                        .and_then(|k| k.get_mut("action"))
                        .and_then(|a| a.get_mut("target"))
                        .and_then(|t| t.get_mut("virtualService"))
                    {
                        self.replace_ref(
                            o,
                            &mesh,
                            &format!("spec.{kind}.action.target.virtualService"),
                            vs,
                            BACKEND,
                        );
                    }
                }
                (
                    Kind::GatewayRoute,
                    serde_json::json!({
                        "meshName": mesh,
                        "virtualGatewayName": gateway,
                        "gatewayRouteName": o.aws_name(),
                        "spec": spec,
                    }),
                )
            }
            _ => return,
        };
        if self.errors.len() > before {
            return;
        }
        if let Value::Object(m) = &mut v {
            if m.get("spec")
                .is_some_and(|s| s.as_object().is_some_and(Map::is_empty))
                && kind == Kind::Mesh
            {
                m.remove("spec");
            }
        }
        match typed(&o.file, "", kind, v) {
            Ok(r) => out.resources.push(r),
            Err(e) => self.fail(o, &e.path, e.message),
        }
    }

    /// The App Mesh name of the one gateway of `mesh` that selects gateway route `o`.
    fn gateway_of(&mut self, o: &Object, mesh: &str) -> Option<String> {
        let ns_labels = self
            .m
            .namespaces
            .get(&o.namespace)
            .cloned()
            .unwrap_or_else(|| {
                let mut l = Map::new();
                l.insert(
                    "kubernetes.io/metadata.name".into(),
                    Value::String(o.namespace.clone()),
                );
                l
            });
        let all: &'a Manifests = self.m;
        let mut chosen = Vec::new();
        for gw in all.objects.iter().filter(|g| g.kind == "VirtualGateway") {
            if self.mesh_of(gw).ok().as_deref() != Some(mesh) {
                continue;
            }
            let by_ns = selects(gw.spec.get("namespaceSelector"), &ns_labels);
            // Absent or empty: every route of the selected namespaces.
            let by_labels = match gw.spec.get("gatewayRouteSelector") {
                None | Some(Value::Null) => Ok(true),
                sel => selects(sel, &o.labels),
            };
            match (by_ns, by_labels) {
                (Ok(true), Ok(true)) => chosen.push(gw),
                (Err(e), _) | (_, Err(e)) => {
                    self.fail(gw, "spec", e);
                    return None;
                }
                _ => {}
            }
        }
        match chosen.as_slice() {
            [one] => Some(one.aws_name()),
            [] => {
                self.fail(
                    o,
                    "",
                    format!(
                        "no VirtualGateway of mesh {mesh:?} selects it (their namespaceSelector must match Namespace {:?}, their gatewayRouteSelector its labels)",
                        o.namespace
                    ),
                );
                None
            }
            many => {
                self.fail(
                    o,
                    "",
                    format!(
                        "found several matching VirtualGateways, expecting 1: {}",
                        many.iter().map(|g| g.at()).collect::<Vec<_>>().join(", ")
                    ),
                );
                None
            }
        }
    }

    /// Resolves a node's `backends[].virtualService.virtualServiceRef|ARN` and appends the
    /// virtual services of its `backendGroups`.
    fn node_backends(
        &mut self,
        o: &Object,
        mesh: &str,
        spec: &mut Map<String, Value>,
        groups: Option<Value>,
    ) {
        let mut seen = BTreeSet::new();
        if let Some(Value::Array(backends)) = spec.get_mut("backends") {
            for (i, b) in backends.iter_mut().enumerate() {
                if let Some(vs) = b.get_mut("virtualService") {
                    self.replace_ref(
                        o,
                        mesh,
                        &format!("spec.backends[{i}].virtualService"),
                        vs,
                        BACKEND,
                    );
                    if let Some(n) = vs.get("virtualServiceName").and_then(Value::as_str) {
                        seen.insert(n.to_owned());
                    }
                }
            }
        }
        let Some(groups) = groups else { return };
        let Value::Array(groups) = groups else {
            return self.fail(o, "spec.backendGroups", "expected a list");
        };
        let mut added = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            let p = format!("spec.backendGroups[{i}]");
            let Some(name) = g.get("name").and_then(Value::as_str) else {
                self.fail(o, &format!("{p}.name"), "required");
                continue;
            };
            let ns = g
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(&o.namespace);
            let all: &'a Manifests = self.m;
            let services: Vec<&'a Object> = if name == "*" {
                all.objects
                    .iter()
                    .filter(|s| s.kind == "VirtualService" && s.namespace == ns)
                    .collect()
            } else {
                let Some(group) = self.find("BackendGroup", ns, name) else {
                    self.fail(
                        o,
                        &p,
                        format!("no BackendGroup {ns}/{name} in the files given"),
                    );
                    continue;
                };
                let list = group
                    .spec
                    .get("virtualservices")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let mut out = Vec::new();
                for (j, r) in list.iter().enumerate() {
                    let sname = r.get("name").and_then(Value::as_str).unwrap_or("");
                    let sns = r
                        .get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or(&group.namespace);
                    match self.find("VirtualService", sns, sname) {
                        Some(s) => out.push(s),
                        None => self.fail(
                            group,
                            &format!("spec.virtualservices[{j}]"),
                            format!("no VirtualService {sns}/{sname} in the files given"),
                        ),
                    }
                }
                out
            };
            for s in services {
                match self.mesh_of(s) {
                    Ok(m) if m == mesh => {}
                    _ => continue, // another mesh's services are not this node's backends
                }
                let n = s.aws_name();
                if seen.insert(n.clone()) {
                    added
                        .push(serde_json::json!({ "virtualService": { "virtualServiceName": n } }));
                }
            }
        }
        if !added.is_empty() {
            match spec.get_mut("backends") {
                Some(Value::Array(b)) => b.extend(added),
                _ => {
                    spec.insert("backends".into(), Value::Array(added));
                }
            }
        }
    }

    /// A router's embedded `spec.routes[]`, as routes of App Mesh.
    fn routes(&mut self, o: &Object, mesh: &str, routes: Option<Value>, out: &mut Imported) {
        let Some(routes) = routes else { return };
        let Value::Array(routes) = routes else {
            return self.fail(o, "spec.routes", "expected a list");
        };
        let router = o.aws_name();
        for (i, route) in routes.into_iter().enumerate() {
            let p = format!("spec.routes[{i}]");
            let Value::Object(mut r) = route else {
                self.fail(o, &p, "expected a mapping");
                continue;
            };
            let Some(Value::String(name)) = r.remove("name") else {
                self.fail(o, &format!("{p}.name"), "required (a string)");
                continue;
            };
            let before = self.errors.len();
            for kind in ["httpRoute", "http2Route", "grpcRoute", "tcpRoute"] {
                let Some(Value::Array(targets)) = r
                    .get_mut(kind)
                    .and_then(|k| k.get_mut("action"))
                    .and_then(|a| a.get_mut("weightedTargets"))
                else {
                    continue;
                };
                for (j, t) in targets.iter_mut().enumerate() {
                    self.replace_ref(
                        o,
                        mesh,
                        &format!("{p}.{kind}.action.weightedTargets[{j}]"),
                        t,
                        TARGET,
                    );
                }
            }
            if self.errors.len() > before {
                continue;
            }
            let v = serde_json::json!({
                "meshName": mesh,
                "virtualRouterName": router,
                "routeName": name,
                "spec": Value::Object(r),
            });
            match typed(&o.file, "", Kind::Route, v) {
                Ok(res) => out.resources.push(res),
                Err(e) => {
                    // Paths in the route's CRD form: spec.routes[i].<field>.
                    let path = match e.path.strip_prefix("spec") {
                        Some(rest) => format!("{p}{rest}"),
                        None => p.clone(),
                    };
                    self.fail(o, &path, e.message);
                }
            }
        }
    }
}

/// The CRD spells two ACM fields with a capital `ARN`; App Mesh's API with `Arn`.
fn arn_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let k = match k.as_str() {
                        "certificateARN" => "certificateArn".to_owned(),
                        "certificateAuthorityARNs" => "certificateAuthorityArns".to_owned(),
                        _ => k,
                    };
                    (k, arn_keys(v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(arn_keys).collect()),
        other => other,
    }
}
