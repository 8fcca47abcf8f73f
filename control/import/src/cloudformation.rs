//! CloudFormation templates: the `AWS::AppMesh::*` resources of a template, in YAML (with the
//! short forms `!Ref`, `!Sub`, `!GetAtt`, `!Join`, `!Select`, ...) or JSON (`Ref`,
//! `Fn::Sub`, ...). Parameters take their values from the command line, else their
//! `Default`; only the parameters that the App Mesh resources use need a value, and every
//! one missing is named in one error. `Conditions` are evaluated (`Fn::Equals`, `Fn::And`,
//! `Fn::Or`, `Fn::Not`, `Condition`), with `Fn::If` and `AWS::NoValue` in values and
//! `Condition` on resources (a resource whose condition is false is skipped, with a
//! warning). `Fn::ImportValue` of an export takes its value from `-p ImportValue:NAME=VALUE`;
//! `Fn::FindInMap` reads `Mappings`. `DependsOn`, `Metadata`, `Outputs` and non-App Mesh
//! resources are ignored (non-App Mesh resources with a warning).
//!
//! `Ref` to an App Mesh resource gives its name, where AWS gives the ARN: ARNs mean nothing
//! outside AWS, and templates use the result as a name. `Fn::GetAtt` gives the name
//! attributes (`MeshName`, `VirtualNodeName`, ...); `Arn` and `Uid` are made up.

use super::{typed, ImportError, Imported, Params};
use maille_model::Kind;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// The `-p` prefix that gives the value of an export read with `Fn::ImportValue`.
pub(super) const IMPORT_VALUE: &str = "ImportValue:";

/// What `AWS::NoValue` resolves to while resolving: removed from the mapping or list that
/// holds it (never left in a result).
const NO_VALUE: &str = "\u{0}maille:AWS::NoValue\u{0}";

/// Pseudo parameters, overridable with `-p AWS::Region=...`.
const PSEUDO: [(&str, &str); 6] = [
    ("AWS::Region", "us-east-1"),
    ("AWS::AccountId", "123456789012"),
    ("AWS::Partition", "aws"),
    ("AWS::StackName", "maille"),
    ("AWS::URLSuffix", "amazonaws.com"),
    ("AWS::NoValue", ""),
];

/// Deepest nesting of intrinsic functions followed.
const MAX_DEPTH: usize = 32;
/// Most conditions of a template (CloudFormation's own limit is far lower): a chain of
/// conditions referring to each other is evaluated recursively.
const MAX_CONDITIONS: usize = 1000;
/// Longest chain of conditions each using the next (each link may nest MAX_DEPTH deep).
const MAX_CONDITION_CHAIN: usize = 64;

pub(super) fn import(file: &str, text: &str, params: &Params) -> Result<Imported, ImportError> {
    let err = |path: &str, message: String| ImportError {
        file: file.to_owned(),
        path: path.to_owned(),
        message,
    };
    let doc = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| err("", format!("not JSON: {e}")))?
    } else {
        yaml_to_json(text).map_err(|m| err("", m))?
    };
    let Value::Object(top) = doc else {
        return Err(err(
            "",
            "a template is a mapping with a Resources section".into(),
        ));
    };
    let resources = match top.get("Resources") {
        Some(Value::Object(r)) => r.clone(),
        _ => return Err(err("Resources", "missing or not a mapping".into())),
    };
    let section = |name: &str| match top.get(name) {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    let conditions = section("Conditions");
    if conditions.len() > MAX_CONDITIONS {
        return Err(err(
            "Conditions",
            format!("more than {MAX_CONDITIONS} conditions"),
        ));
    }
    let mut ctx = Ctx {
        file,
        params: BTreeMap::new(),
        unset: BTreeSet::new(),
        missing: RefCell::new(BTreeSet::new()),
        resources: &resources,
        conditions,
        evaluated: RefCell::new(BTreeMap::new()),
        mappings: section("Mappings"),
        imports: params
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(IMPORT_VALUE)?.to_owned(), v.clone())))
            .collect(),
        imported: RefCell::new(BTreeSet::new()),
        evaluating: RefCell::new(BTreeSet::new()),
    };
    let mut out = Imported::default();
    // Parameters: command line, else Default; Number parameters become numbers. One with
    // neither is an error only if something imported uses it.
    if let Some(Value::Object(ps)) = top.get("Parameters") {
        for (name, decl) in ps {
            out.parameters.insert(name.clone());
            let ty = decl.get("Type").and_then(Value::as_str).unwrap_or("String");
            let raw = match params.get(name) {
                Some(v) => Value::String(v.clone()),
                None => match decl.get("Default") {
                    Some(d) => d.clone(),
                    None => {
                        ctx.unset.insert(name.clone());
                        continue;
                    }
                },
            };
            let v = match (ty, &raw) {
                ("Number", Value::String(s)) => s
                    .parse::<i64>()
                    .map(Value::from)
                    .or_else(|_| s.parse::<f64>().map(Value::from))
                    .map_err(|_| {
                        err(
                            &format!("Parameters.{name}"),
                            format!("is a Number, got {s:?}"),
                        )
                    })?,
                _ => raw,
            };
            ctx.params.insert(name.clone(), v);
        }
    }
    for (k, v) in PSEUDO {
        out.parameters.insert(k.to_owned());
        let v = params.get(k).map(String::as_str).unwrap_or(v);
        let v = if k == "AWS::NoValue" { NO_VALUE } else { v };
        ctx.params.insert(k.to_owned(), Value::String(v.to_owned()));
    }

    let result = resources_of(&ctx, &resources, &mut out);
    let missing = ctx.missing.into_inner();
    if !missing.is_empty() {
        // Reported first: other errors may only follow from the values missing.
        let given: Vec<String> = missing.iter().map(|n| format!("-p {n}=VALUE")).collect();
        return Err(err(
            "Parameters",
            format!(
                "no value for {}, which the App Mesh resources use: give {}",
                missing.iter().cloned().collect::<Vec<_>>().join(", "),
                given.join(" ")
            ),
        ));
    }
    result?;
    out.parameters.extend(
        ctx.imported
            .into_inner()
            .into_iter()
            .map(|k| format!("{IMPORT_VALUE}{k}")),
    );
    Ok(out)
}

/// The App Mesh resources of the template, resolved, into `out`.
fn resources_of(
    ctx: &Ctx<'_>,
    resources: &Map<String, Value>,
    out: &mut Imported,
) -> Result<(), ImportError> {
    for (logical, res) in resources {
        if let Err(e) = resource_of(ctx, logical, res, out) {
            // With values missing, go on to find every one of them (the error may only
            // follow from one); the missing ones are reported instead.
            if ctx.missing.borrow().is_empty() {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// One resource of the template, resolved, into `out` (or skipped, with a warning).
fn resource_of(
    ctx: &Ctx<'_>,
    logical: &str,
    res: &Value,
    out: &mut Imported,
) -> Result<(), ImportError> {
    let file = ctx.file;
    let err = |path: &str, message: String| ctx.err(path, message);
    let path = format!("Resources.{logical}");
    let ty = res.get("Type").and_then(Value::as_str).unwrap_or("");
    let kind = match ty {
        "AWS::AppMesh::Mesh" => Kind::Mesh,
        "AWS::AppMesh::VirtualNode" => Kind::VirtualNode,
        "AWS::AppMesh::VirtualRouter" => Kind::VirtualRouter,
        "AWS::AppMesh::Route" => Kind::Route,
        "AWS::AppMesh::VirtualService" => Kind::VirtualService,
        "AWS::AppMesh::VirtualGateway" => Kind::VirtualGateway,
        "AWS::AppMesh::GatewayRoute" => Kind::GatewayRoute,
        t if t.starts_with("AWS::AppMesh::") => {
            out.warnings.push(format!(
                "{file}: {path}: {t} is not supported by Maille yet; skipped"
            ));
            return Ok(());
        }
        t => {
            out.warnings.push(format!(
                "{file}: {path}: {t} is not an App Mesh resource; skipped"
            ));
            return Ok(());
        }
    };
    if let Some(c) = res.get("Condition") {
        let cp = format!("{path}.Condition");
        let name = c
            .as_str()
            .ok_or_else(|| err(&cp, "expected a condition's name".into()))?;
        if !ctx.condition(&cp, name, 0)? {
            out.warnings.push(format!(
                "{file}: {path}: its condition {name} is false; not imported"
            ));
            return Ok(());
        }
    }
    let props = match res.get("Properties") {
        Some(Value::Object(p)) => p.clone(),
        _ => Map::new(),
    };
    let mut resolved = Map::new();
    let mut maille = None;
    for (k, v) in props {
        let p = format!("{path}.Properties.{k}");
        match k.as_str() {
            "MeshOwner" => {
                out.warnings.push(format!(
                    "{file}: {p}: ignored (not part of the mesh configuration)"
                ));
                continue;
            }
            "Tags" => {
                let v = ctx.resolve(&p, &v, 0)?;
                let pairs = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| {
                                Some((
                                    t.get("Key")?.as_str()?.to_owned(),
                                    t.get("Value")
                                        .and_then(Value::as_str)
                                        .unwrap_or("")
                                        .to_owned(),
                                ))
                            })
                            .collect()
                    })
                    .ok_or_else(|| err(&p, "expected a list of Key/Value".into()))?;
                maille = super::tags(file, &p, kind, pairs, &mut out.warnings)?;
                continue;
            }
            _ => {}
        }
        let v = ctx.resolve(&p, &v, 0)?;
        if !is_no_value(&v) {
            resolved.insert(k, v);
        }
    }
    // The name CloudFormation would generate when the template gives none.
    let name_key = {
        let camel = kind.name_fields().0;
        let mut pascal = camel[..1].to_ascii_uppercase();
        pascal.push_str(&camel[1..]);
        pascal
    };
    resolved
        .entry(name_key)
        .or_insert_with(|| Value::String(logical.to_owned()));
    let mut v = super::camel_keys(Value::Object(resolved));
    if let (Some(m), Value::Object(o)) = (maille, &mut v) {
        o.insert("maille".into(), m);
    }
    out.resources
        .push(typed(file, &format!("{path}.Properties"), kind, v)?);

    Ok(())
}

fn is_no_value(v: &Value) -> bool {
    v.as_str() == Some(NO_VALUE)
}

fn is_function(k: &str) -> bool {
    k == "Ref" || k == "Condition" || k.starts_with("Fn::")
}

struct Ctx<'a> {
    file: &'a str,
    params: BTreeMap<String, Value>,
    /// Parameters with no value (no `-p`, no `Default`).
    unset: BTreeSet<String>,
    /// Those of them (and exports) that something imported used.
    missing: RefCell<BTreeSet<String>>,
    resources: &'a Map<String, Value>,
    /// The `Conditions` section, and the conditions evaluated so far.
    conditions: Map<String, Value>,
    evaluated: RefCell<BTreeMap<String, bool>>,
    /// The `Mappings` section.
    mappings: Map<String, Value>,
    /// Exports' values from `-p ImportValue:NAME=VALUE`, and those the template read.
    imports: BTreeMap<String, String>,
    imported: RefCell<BTreeSet<String>>,
    /// Conditions being evaluated (a reference back to one is a cycle).
    evaluating: RefCell<BTreeSet<String>>,
}

impl Ctx<'_> {
    fn err(&self, path: &str, message: impl Into<String>) -> ImportError {
        ImportError {
            file: self.file.to_owned(),
            path: path.to_owned(),
            message: message.into(),
        }
    }

    fn resolve(&self, path: &str, v: &Value, depth: usize) -> Result<Value, ImportError> {
        if depth > MAX_DEPTH {
            return Err(self.err(path, "intrinsic functions nested too deep (a cycle?)"));
        }
        match v {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, x)| self.resolve(&format!("{path}[{i}]"), x, depth + 1))
                .filter(|r| !r.as_ref().is_ok_and(is_no_value))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(m) if m.len() == 1 && m.keys().all(|k| is_function(k)) => {
                let Some((k, arg)) = m.iter().next() else {
                    return Ok(Value::Object(Map::new()));
                };
                let fp = format!("{path}.{k}");
                match k.as_str() {
                    "Ref" => self.reference(&fp, arg, depth),
                    "Fn::GetAtt" => self.get_att(&fp, arg, depth),
                    "Fn::Sub" => self.sub(&fp, arg, depth),
                    "Fn::Join" => {
                        let a = self.resolve(&fp, arg, depth + 1)?;
                        match a.as_array().map(Vec::as_slice) {
                            Some([Value::String(sep), Value::Array(items)]) => {
                                let parts: Result<Vec<String>, _> =
                                    items.iter().map(|x| self.scalar(&fp, x)).collect();
                                Ok(Value::String(parts?.join(sep)))
                            }
                            _ => Err(self.err(&fp, "expects [delimiter, [values]]")),
                        }
                    }
                    "Fn::Select" => {
                        let a = self.resolve(&fp, arg, depth + 1)?;
                        match a.as_array().map(Vec::as_slice) {
                            Some([idx, Value::Array(items)]) => {
                                let i = idx
                                    .as_u64()
                                    .or_else(|| idx.as_str().and_then(|s| s.parse().ok()))
                                    .ok_or_else(|| self.err(&fp, "index must be a number"))?;
                                items.get(i as usize).cloned().ok_or_else(|| {
                                    self.err(
                                        &fp,
                                        format!("index {i} out of {} values", items.len()),
                                    )
                                })
                            }
                            _ => Err(self.err(&fp, "expects [index, [values]]")),
                        }
                    }
                    "Fn::Split" => {
                        let a = self.resolve(&fp, arg, depth + 1)?;
                        match a.as_array().map(Vec::as_slice) {
                            Some([Value::String(sep), Value::String(s)]) => Ok(Value::Array(
                                s.split(sep.as_str())
                                    .map(|x| Value::String(x.to_owned()))
                                    .collect(),
                            )),
                            _ => Err(self.err(&fp, "expects [delimiter, string]")),
                        }
                    }
                    "Fn::If" => match arg.as_array().map(Vec::as_slice) {
                        Some([Value::String(c), yes, no]) => {
                            let chosen = if self.condition(&fp, c, depth + 1)? {
                                yes
                            } else {
                                no
                            };
                            self.resolve(&fp, chosen, depth + 1)
                        }
                        _ => {
                            Err(self.err(&fp, "expects [condition, value if true, value if false]"))
                        }
                    },
                    "Fn::ImportValue" => {
                        let name = self.resolve(&fp, arg, depth + 1)?;
                        let name = self.scalar(&fp, &name)?;
                        match self.imports.get(&name) {
                            Some(v) => {
                                self.imported.borrow_mut().insert(name.clone());
                                Ok(Value::String(v.clone()))
                            }
                            None => {
                                self.missing
                                    .borrow_mut()
                                    .insert(format!("{IMPORT_VALUE}{name}"));
                                Ok(Value::String(String::new()))
                            }
                        }
                    }
                    "Fn::FindInMap" => {
                        let a = self.resolve(&fp, arg, depth + 1)?;
                        let keys = match a.as_array().map(Vec::as_slice) {
                            Some([m, k1, k2]) => [
                                self.scalar(&fp, m)?,
                                self.scalar(&fp, k1)?,
                                self.scalar(&fp, k2)?,
                            ],
                            _ => return Err(self.err(&fp, "expects [map, top key, second key]")),
                        };
                        self.mappings
                            .get(&keys[0])
                            .and_then(|m| m.get(&keys[1]))
                            .and_then(|m| m.get(&keys[2]))
                            .cloned()
                            .ok_or_else(|| {
                                self.err(
                                    &fp,
                                    format!("Mappings has no {}.{}.{}", keys[0], keys[1], keys[2]),
                                )
                            })
                    }
                    "Condition" => {
                        let name = arg
                            .as_str()
                            .ok_or_else(|| self.err(&fp, "Condition takes a name"))?;
                        self.condition(&fp, name, depth + 1).map(Value::Bool)
                    }
                    f => Err(self.err(
                        &fp,
                        format!("{f} is not supported by Maille's import: resolve it first"),
                    )),
                }
            }
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, x) in m {
                    let v = self.resolve(&format!("{path}.{k}"), x, depth + 1)?;
                    if !is_no_value(&v) {
                        out.insert(k.clone(), v);
                    }
                }
                Ok(Value::Object(out))
            }
            other => Ok(other.clone()),
        }
    }

    /// The value of condition `name` of the `Conditions` section.
    fn condition(&self, path: &str, name: &str, _depth: usize) -> Result<bool, ImportError> {
        if let Some(b) = self.evaluated.borrow().get(name) {
            return Ok(*b);
        }
        let Some(expr) = self.conditions.get(name) else {
            return Err(self.err(path, format!("no condition named {name:?} in Conditions")));
        };
        if !self.evaluating.borrow_mut().insert(name.to_owned()) {
            return Err(self.err(path, format!("condition {name} refers back to itself")));
        }
        if self.evaluating.borrow().len() > MAX_CONDITION_CHAIN {
            self.evaluating.borrow_mut().remove(name);
            return Err(self.err(
                path,
                format!("condition {name}: a chain of more than {MAX_CONDITION_CHAIN} conditions, each using the next"),
            ));
        }
        // A condition's own expression starts a fresh depth: chains of conditions are
        // bounded by the cycle check and the number of conditions, not by MAX_DEPTH.
        let b = self.truth(&format!("Conditions.{name}"), expr, 0);
        self.evaluating.borrow_mut().remove(name);
        let b = b?;
        self.evaluated.borrow_mut().insert(name.to_owned(), b);
        Ok(b)
    }

    /// A condition expression: `Fn::Equals`, `Fn::And`, `Fn::Or`, `Fn::Not`, `Condition`.
    fn truth(&self, path: &str, v: &Value, depth: usize) -> Result<bool, ImportError> {
        if depth > MAX_DEPTH {
            return Err(self.err(path, "conditions nested too deep (a cycle?)"));
        }
        let Some((f, arg)) = v
            .as_object()
            .filter(|m| m.len() == 1)
            .and_then(|m| m.iter().next())
        else {
            return match v {
                Value::Bool(b) => Ok(*b),
                Value::String(s) if s == "true" || s == "false" => Ok(s == "true"),
                _ => Err(self.err(path, "expected a condition function")),
            };
        };
        let fp = format!("{path}.{f}");
        let list = || {
            arg.as_array()
                .ok_or_else(|| self.err(&fp, "expects a list of conditions"))
        };
        match f.as_str() {
            "Fn::Equals" => match arg.as_array().map(Vec::as_slice) {
                Some([a, b]) => {
                    let a = self.resolve(&fp, a, depth + 1)?;
                    let b = self.resolve(&fp, b, depth + 1)?;
                    Ok(self.scalar(&fp, &a)? == self.scalar(&fp, &b)?)
                }
                _ => Err(self.err(&fp, "expects [value, value]")),
            },
            "Fn::And" => {
                let mut all = true;
                for (i, c) in list()?.iter().enumerate() {
                    all &= self.truth(&format!("{fp}[{i}]"), c, depth + 1)?;
                }
                Ok(all)
            }
            "Fn::Or" => {
                let mut any = false;
                for (i, c) in list()?.iter().enumerate() {
                    any |= self.truth(&format!("{fp}[{i}]"), c, depth + 1)?;
                }
                Ok(any)
            }
            "Fn::Not" => match list()?.as_slice() {
                [c] => Ok(!self.truth(&format!("{fp}[0]"), c, depth + 1)?),
                _ => Err(self.err(&fp, "expects [condition]")),
            },
            "Condition" => {
                let name = arg
                    .as_str()
                    .ok_or_else(|| self.err(&fp, "Condition takes a name"))?;
                self.condition(&fp, name, depth + 1)
            }
            other => Err(self.err(&fp, format!("{other} is not a condition function"))),
        }
    }

    fn scalar(&self, path: &str, v: &Value) -> Result<String, ImportError> {
        match v {
            Value::String(s) if s == NO_VALUE => Err(self.err(
                path,
                "AWS::NoValue only removes a property or list item; it is not a value",
            )),
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(self.err(path, "expected a string")),
        }
    }

    fn reference(&self, path: &str, arg: &Value, depth: usize) -> Result<Value, ImportError> {
        let name = arg
            .as_str()
            .ok_or_else(|| self.err(path, "Ref takes a name"))?;
        if let Some(v) = self.params.get(name) {
            return Ok(v.clone());
        }
        if self.unset.contains(name) {
            // Named all at once at the end.
            self.missing.borrow_mut().insert(name.to_owned());
            return Ok(Value::String(String::new()));
        }
        if self.resources.contains_key(name) {
            return self.name_of(path, name, depth).map(Value::String);
        }
        Err(self.err(path, format!("no parameter or resource named {name:?}")))
    }

    /// The name of resource `logical`: its name property, else its logical id.
    fn name_of(&self, path: &str, logical: &str, depth: usize) -> Result<String, ImportError> {
        let r = &self.resources[logical];
        let key = match r.get("Type").and_then(Value::as_str).unwrap_or("") {
            "AWS::AppMesh::Mesh" => "MeshName",
            "AWS::AppMesh::VirtualNode" => "VirtualNodeName",
            "AWS::AppMesh::VirtualRouter" => "VirtualRouterName",
            "AWS::AppMesh::Route" => "RouteName",
            "AWS::AppMesh::VirtualService" => "VirtualServiceName",
            "AWS::AppMesh::VirtualGateway" => "VirtualGatewayName",
            "AWS::AppMesh::GatewayRoute" => "GatewayRouteName",
            t => {
                return Err(self.err(
                    path,
                    format!("refers to {logical} of type {t}, which Maille does not import"),
                ))
            }
        };
        match r.get("Properties").and_then(|p| p.get(key)) {
            Some(v) => {
                let v = self.resolve(
                    &format!("Resources.{logical}.Properties.{key}"),
                    v,
                    depth + 1,
                )?;
                self.scalar(path, &v)
            }
            None => Ok(logical.to_owned()),
        }
    }

    fn get_att(&self, path: &str, arg: &Value, depth: usize) -> Result<Value, ImportError> {
        let (logical, attr) = match arg {
            Value::Array(a) if a.len() == 2 => (
                a[0].as_str().unwrap_or_default().to_owned(),
                a[1].as_str().unwrap_or_default().to_owned(),
            ),
            Value::String(s) => match s.split_once('.') {
                Some((l, a)) => (l.to_owned(), a.to_owned()),
                None => return Err(self.err(path, "expects Resource.Attribute")),
            },
            _ => return Err(self.err(path, "expects [Resource, Attribute]")),
        };
        let Some(r) = self.resources.get(&logical) else {
            return Err(self.err(path, format!("no resource named {logical:?}")));
        };
        let ty = r.get("Type").and_then(Value::as_str).unwrap_or("");
        if ty == "AWS::ServiceDiscovery::Service" && attr == "Name" {
            // What App Mesh templates give awsCloudMap's ServiceName.
            return match r.get("Properties").and_then(|p| p.get("Name")) {
                Some(v) => self.resolve(path, v, depth + 1),
                None => Err(self.err(
                    path,
                    format!("{logical} has no Name (CloudFormation would make one up)"),
                )),
            };
        }
        match attr.as_str() {
            "MeshName" => match r.get("Properties").and_then(|p| p.get("MeshName")) {
                Some(v) => self.resolve(path, v, depth + 1),
                // The mesh itself: its name.
                None if ty == "AWS::AppMesh::Mesh" => Ok(Value::String(logical.clone())),
                None => Err(self.err(path, format!("{logical} has no MeshName"))),
            },
            "VirtualNodeName" | "VirtualRouterName" | "RouteName" | "VirtualServiceName"
            | "VirtualGatewayName" | "GatewayRouteName" => {
                // A route's `VirtualRouterName` is its router's: the property, when given.
                match r.get("Properties").and_then(|p| p.get(&attr)) {
                    Some(v) => self.resolve(path, v, depth + 1),
                    None => self.name_of(path, &logical, depth).map(Value::String),
                }
            }
            "Arn" => Ok(Value::String(format!(
                "arn:aws:appmesh:{}:{}:{}",
                self.params["AWS::Region"].as_str().unwrap_or(""),
                self.params["AWS::AccountId"].as_str().unwrap_or(""),
                self.name_of(path, &logical, depth)?
            ))),
            "Uid" => Ok(Value::String(format!("maille-{logical}"))),
            other => Err(self.err(
                path,
                format!("attribute {other:?} of {logical} is not supported"),
            )),
        }
    }

    fn sub(&self, path: &str, arg: &Value, depth: usize) -> Result<Value, ImportError> {
        let (template, vars) = match arg {
            Value::String(s) => (s.clone(), Map::new()),
            Value::Array(a) if a.len() == 2 => {
                let t = a[0]
                    .as_str()
                    .ok_or_else(|| self.err(path, "the first item is the template string"))?;
                let vars = match self.resolve(path, &a[1], depth + 1)? {
                    Value::Object(m) => m,
                    _ => return Err(self.err(path, "the second item is a mapping of variables")),
                };
                (t.to_owned(), vars)
            }
            _ => return Err(self.err(path, "expects a string or [string, {variables}]")),
        };
        let mut out = String::new();
        let mut rest = template.as_str();
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            // `${!Literal}` is written as `${Literal}`.
            if let Some(lit) = after.strip_prefix('!') {
                out.push_str("${");
                rest = lit;
                continue;
            }
            let end = after
                .find('}')
                .ok_or_else(|| self.err(path, format!("unclosed ${{ in {template:?}")))?;
            let name = &after[..end];
            let v = if let Some(v) = vars.get(name) {
                self.scalar(path, v)?
            } else if let Some((l, a)) = name.split_once('.').filter(|_| !name.starts_with("AWS::"))
            {
                let v = self.get_att(path, &Value::String(format!("{l}.{a}")), depth + 1)?;
                self.scalar(path, &v)?
            } else {
                let v = self.reference(path, &Value::String(name.to_owned()), depth + 1)?;
                self.scalar(path, &v)?
            };
            out.push_str(&v);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(Value::String(out))
    }
}

/// YAML to JSON, with CloudFormation's short-form tags turned into their long forms
/// (`!Ref X` into `{"Ref": "X"}`, `!GetAtt A.B` into `{"Fn::GetAtt": ["A", "B"]}`, ...).
fn yaml_to_json(text: &str) -> Result<Value, String> {
    yaml_documents(text)?
        .into_iter()
        .next()
        .ok_or_else(|| "empty document".to_owned())
}

/// Every document of a YAML stream as JSON (tags as in [`yaml_to_json`]).
pub(super) fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    use saphyr::{LoadableYamlNode, Yaml};
    let docs = Yaml::load_from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    docs.iter().map(convert).collect()
}

fn convert(y: &saphyr::Yaml<'_>) -> Result<Value, String> {
    use saphyr::{Scalar, Yaml};
    Ok(match y {
        Yaml::Value(s) => match s {
            Scalar::Null => Value::Null,
            Scalar::Boolean(b) => Value::Bool(*b),
            Scalar::Integer(i) => Value::from(*i),
            Scalar::FloatingPoint(f) => Value::from(f.into_inner()),
            Scalar::String(s) => Value::String(s.to_string()),
        },
        Yaml::Representation(s, _, _) => Value::String(s.to_string()),
        Yaml::Sequence(items) => Value::Array(items.iter().map(convert).collect::<Result<_, _>>()?),
        Yaml::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match convert(k)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, convert(v)?);
            }
            Value::Object(out)
        }
        // YAML's own tags (`!!str 8080`, `!!int "3"`): the value, as that type.
        Yaml::Tagged(tag, inner) if tag.is_yaml_core_schema() || tag.handle == "!!" => {
            let v = convert(inner)?;
            match (tag.suffix.as_str(), v) {
                ("str", Value::Number(n)) => Value::String(n.to_string()),
                ("str", Value::Bool(b)) => Value::String(b.to_string()),
                ("int", Value::String(s)) => s
                    .parse::<i64>()
                    .map(Value::from)
                    .map_err(|_| format!("!!int {s:?} is not an integer"))?,
                (_, v) => v,
            }
        }
        Yaml::Tagged(tag, inner) => {
            let inner = convert(inner)?;
            let name = tag.suffix.as_str();
            let long = match name {
                "Ref" | "Condition" => name.to_owned(),
                _ => format!("Fn::{name}"),
            };
            let arg = match (name, inner) {
                ("GetAtt", Value::String(s)) => match s.split_once('.') {
                    Some((a, b)) => {
                        Value::Array(vec![Value::String(a.into()), Value::String(b.into())])
                    }
                    None => Value::String(s),
                },
                (_, v) => v,
            };
            let mut m = Map::new();
            m.insert(long, arg);
            Value::Object(m)
        }
        Yaml::Alias(_) => return Err("YAML aliases are not supported".into()),
        Yaml::BadValue => return Err("a YAML value could not be read".into()),
    })
}
