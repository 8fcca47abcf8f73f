//! Terraform: `aws_appmesh_*` resources in HCL, with references between them
//! (`aws_appmesh_mesh.demo.name`, `.id`, `.arn`), `var.*` (defaults or `-p name=value`) and
//! `local.*` resolved, and string templates evaluated. Blocks become App Mesh API fields
//! (`port_mapping` -> `portMapping`; repeated blocks such as `listener`, `backend`,
//! `weighted_target` and `header` -> `listeners`, `backends`, `weightedTargets`, `headers`).
//! `depends_on`, `provider` and `lifecycle` are ignored; `count` and `for_each` are refused,
//! other resource types are reported and skipped.

use super::{snake_to_camel, typed, ImportError, Imported, Params};
use hcl::eval::{Context, Evaluate};
use maille_model::Kind;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Passes over locals and names, for references to references.
const PASSES: usize = 8;

/// Repeated Terraform blocks and the App Mesh list fields they make.
const LISTS: [(&str, &str); 6] = [
    ("listener", "listeners"),
    ("backend", "backends"),
    ("weighted_target", "weightedTargets"),
    ("header", "headers"),
    ("query_parameter", "queryParameters"),
    ("metadata", "metadata"),
];

fn kind_of(ty: &str) -> Option<Kind> {
    Some(match ty {
        "aws_appmesh_mesh" => Kind::Mesh,
        "aws_appmesh_virtual_node" => Kind::VirtualNode,
        "aws_appmesh_virtual_router" => Kind::VirtualRouter,
        "aws_appmesh_route" => Kind::Route,
        "aws_appmesh_virtual_service" => Kind::VirtualService,
        "aws_appmesh_virtual_gateway" => Kind::VirtualGateway,
        "aws_appmesh_gateway_route" => Kind::GatewayRoute,
        _ => return None,
    })
}

fn name_field(kind: Kind) -> &'static str {
    kind.name_fields().0
}

pub(super) fn import(file: &str, text: &str, params: &Params) -> Result<Imported, ImportError> {
    let err = |path: &str, message: String| ImportError {
        file: file.to_owned(),
        path: path.to_owned(),
        message,
    };
    let body = hcl::parse(text).map_err(|e| err("", format!("not HCL: {e}")))?;

    // Variables: -p values, else defaults.
    let mut vars = hcl::Map::new();
    for b in body
        .blocks()
        .filter(|b| b.identifier.as_str() == "variable")
    {
        let Some(name) = b.labels.first().map(|l| l.as_str().to_owned()) else {
            continue;
        };
        let ty = b
            .body
            .attributes()
            .find(|a| a.key.as_str() == "type")
            .map(|a| a.expr.to_string())
            .unwrap_or_default();
        let v = match params.get(&name) {
            Some(s) if ty.trim() == "number" => {
                s.parse::<i64>().map(hcl::Value::from).map_err(|_| {
                    err(
                        &format!("variable.{name}"),
                        format!("is a number, got {s:?}"),
                    )
                })?
            }
            Some(s) => hcl::Value::from(s.clone()),
            None => match b.body.attributes().find(|a| a.key.as_str() == "default") {
                Some(a) => a
                    .expr
                    .evaluate(&Context::new())
                    .map_err(|e| err(&format!("variable.{name}.default"), e.to_string()))?,
                None => {
                    return Err(err(
                        &format!("variable.{name}"),
                        format!("has no default: give it with -p {name}=VALUE"),
                    ))
                }
            },
        };
        vars.insert(name, v);
    }

    // Locals, in passes so that locals may use locals.
    let local_exprs: Vec<(String, hcl::Expression)> = body
        .blocks()
        .filter(|b| b.identifier.as_str() == "locals")
        .flat_map(|b| {
            b.body
                .attributes()
                .map(|a| (a.key.to_string(), a.expr.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut locals = hcl::Map::new();
    for _ in 0..PASSES {
        let ctx = context(&vars, &locals, &BTreeMap::new());
        for (k, e) in &local_exprs {
            if let Ok(v) = e.evaluate(&ctx) {
                locals.insert(k.clone(), v);
            }
        }
    }

    // The App Mesh resources, and what references to them give.
    let mut blocks = Vec::new();
    // AWS Cloud Map's resources: not imported, but App Mesh's refer to their names.
    let mut discovery = Vec::new();
    let mut out = Imported::default();
    out.parameters.extend(vars.keys().cloned());
    for b in body
        .blocks()
        .filter(|b| b.identifier.as_str() == "resource")
    {
        let (Some(ty), Some(label)) = (b.labels.first(), b.labels.get(1)) else {
            continue;
        };
        let (ty, label) = (ty.as_str().to_owned(), label.as_str().to_owned());
        let path = format!("resource.{ty}.{label}");
        match kind_of(&ty) {
            Some(kind) => blocks.push((kind, ty, label, path, b)),
            None if ty.starts_with("aws_appmesh_") => out.warnings.push(format!(
                "{file}: {path}: {ty} is not supported by Maille yet; skipped"
            )),
            None => {
                if ty.starts_with("aws_service_discovery_") {
                    discovery.push((ty.clone(), label.clone(), b));
                }
                out.warnings
                    .push(format!("{file}: {path}: not an App Mesh resource; skipped"));
            }
        }
    }
    let mut refs: BTreeMap<String, hcl::Map<String, hcl::Value>> = BTreeMap::new();
    for _ in 0..PASSES {
        let ctx = context(&vars, &locals, &refs);
        for (_, ty, label, _, b) in &blocks {
            let mut obj = hcl::Map::new();
            for a in b.body.attributes() {
                let k = a.key.as_str();
                if [
                    "name",
                    "mesh_name",
                    "virtual_router_name",
                    "virtual_gateway_name",
                ]
                .contains(&k)
                {
                    if let Ok(v) = a.expr.evaluate(&ctx) {
                        obj.insert(k.to_owned(), v);
                    }
                }
            }
            if let Some(hcl::Value::String(name)) = obj.get("name").cloned() {
                obj.insert("id".into(), hcl::Value::from(name.clone()));
                obj.insert(
                    "arn".into(),
                    hcl::Value::from(format!(
                        "arn:aws:appmesh:us-east-1:123456789012:{ty}/{name}"
                    )),
                );
            }
            let entry = refs.entry(ty.clone()).or_default();
            entry.insert(label.clone(), hcl::Value::Object(obj));
        }
        for (ty, label, b) in &discovery {
            if let Some(Ok(v)) = b
                .body
                .attributes()
                .find(|a| a.key.as_str() == "name")
                .map(|a| a.expr.evaluate(&ctx))
            {
                let mut obj = hcl::Map::new();
                obj.insert("name".into(), v);
                refs.entry(ty.clone())
                    .or_default()
                    .insert(label.clone(), hcl::Value::Object(obj));
            }
        }
    }

    let ctx = context(&vars, &locals, &refs);
    for (kind, _, _, path, b) in blocks {
        let mut fields = Map::new();
        let mut maille = None;
        for a in b.body.attributes() {
            let k = a.key.as_str();
            let ap = format!("{path}.{k}");
            match k {
                "count" | "for_each" => {
                    return Err(err(
                        &ap,
                        format!(
                        "{k} is not supported by Maille's import: write one resource per instance"
                    ),
                    ))
                }
                "depends_on" | "provider" => continue,
                "tags_all" | "mesh_owner" => {
                    out.warnings.push(format!(
                        "{file}: {ap}: ignored (not part of the mesh configuration)"
                    ));
                    continue;
                }
                "tags" => {
                    let v = a.expr.evaluate(&ctx).map_err(|e| err(&ap, e.to_string()))?;
                    let v = to_json(&ap, v).map_err(|m| err(&ap, m))?;
                    let pairs = v
                        .as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(k, v)| {
                                    (
                                        k.clone(),
                                        v.as_str()
                                            .map(str::to_owned)
                                            .unwrap_or_else(|| v.to_string()),
                                    )
                                })
                                .collect()
                        })
                        .ok_or_else(|| err(&ap, "expected a map of tags".into()))?;
                    maille = super::tags(file, &ap, kind, pairs, &mut out.warnings)?;
                    continue;
                }
                _ => {}
            }
            let v = a.expr.evaluate(&ctx).map_err(|e| err(&ap, e.to_string()))?;
            let key = if k == "name" {
                name_field(kind).to_owned()
            } else {
                snake_to_camel(k)
            };
            fields.insert(key, to_json(&ap, v).map_err(|m| err(&ap, m))?);
        }
        for sb in b.body.blocks() {
            match sb.identifier.as_str() {
                "lifecycle" => continue,
                "spec" => {
                    let sp = format!("{path}.spec");
                    let spec = block_json(&sp, &sb.body, &ctx).map_err(|(p, m)| err(&p, m))?;
                    fields.insert("spec".into(), spec);
                }
                other => {
                    return Err(err(
                        &format!("{path}.{other}"),
                        "unknown block for an App Mesh resource".into(),
                    ))
                }
            }
        }
        if let Some(m) = maille {
            fields.insert("maille".into(), m);
        }
        out.resources
            .push(typed(file, &path, kind, Value::Object(fields))?);
    }
    Ok(out)
}

fn context<'a>(
    vars: &hcl::Map<String, hcl::Value>,
    locals: &hcl::Map<String, hcl::Value>,
    refs: &BTreeMap<String, hcl::Map<String, hcl::Value>>,
) -> Context<'a> {
    let mut ctx = Context::new();
    ctx.declare_var("var", hcl::Value::Object(vars.clone()));
    ctx.declare_var("local", hcl::Value::Object(locals.clone()));
    for (ty, objs) in refs {
        ctx.declare_var(ty.as_str(), hcl::Value::Object(objs.clone()));
    }
    ctx
}

fn to_json(path: &str, v: hcl::Value) -> Result<Value, String> {
    serde_json::to_value(&v).map_err(|e| format!("{path}: {e}"))
}

/// A Terraform block body as an App Mesh JSON object.
fn block_json(path: &str, body: &hcl::Body, ctx: &Context<'_>) -> Result<Value, (String, String)> {
    let mut m = Map::new();
    for a in body.attributes() {
        let ap = format!("{path}.{}", a.key.as_str());
        let v = a
            .expr
            .evaluate(ctx)
            .map_err(|e| (ap.clone(), e.to_string()))?;
        m.insert(
            snake_to_camel(a.key.as_str()),
            to_json(&ap, v).map_err(|e| (ap.clone(), e))?,
        );
    }
    let mut lists: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for b in body.blocks() {
        let id = b.identifier.as_str();
        let list = LISTS.iter().find(|(t, _)| *t == id).map(|(_, f)| *f);
        let bp = match list {
            Some(f) => format!("{path}.{id}[{}]", lists.get(f).map_or(0, Vec::len)),
            None => format!("{path}.{id}"),
        };
        let v = block_json(&bp, &b.body, ctx)?;
        match list {
            Some(f) => lists.entry(f).or_default().push(v),
            None => {
                let key = snake_to_camel(id);
                if m.contains_key(&key) {
                    return Err((bp, format!("{id} may be given once")));
                }
                m.insert(key, v);
            }
        }
    }
    for (f, items) in lists {
        m.insert(f.to_owned(), Value::Array(items));
    }
    Ok(Value::Object(m))
}
