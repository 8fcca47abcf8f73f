//! App Mesh API JSON: what `aws appmesh describe-virtual-node` prints
//! (`{"virtualNode": {"meshName": ..., "virtualNodeName": ..., "spec": ..., "metadata": ...,
//! "status": ...}}`), the input of `create-*` calls (`{"meshName": ..., "virtualNodeName":
//! ..., "spec": ...}`), or a list of either.

use super::{typed, ImportError, Imported};
use maille_model::Kind;
use serde_json::Value;

/// Output-only fields of `describe-*`, ignored quietly: they are not configuration.
const OUTPUT_ONLY: [&str; 2] = ["metadata", "status"];
/// Request fields with no meaning here, ignored with a warning.
const IGNORED: [&str; 2] = ["clientToken", "meshOwner"];

pub(super) fn import(file: &str, text: &str) -> Result<Imported, ImportError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ImportError {
        file: file.to_owned(),
        path: String::new(),
        message: format!("not JSON: {e}"),
    })?;
    let mut out = Imported::default();
    match v {
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                one(file, &format!("[{i}]"), item, &mut out)?;
            }
        }
        other => one(file, "", other, &mut out)?,
    }
    Ok(out)
}

/// The kind named by the only key of a `describe-*` document, or guessed from the name
/// fields of a `create-*` input.
fn kind_of(obj: &serde_json::Map<String, Value>) -> Option<(Kind, bool)> {
    if obj.len() == 1 {
        let (k, v) = obj.iter().next()?;
        if v.is_object() {
            if let Some(kind) = Kind::ALL.into_iter().find(|kind| kind.as_str() == k) {
                return Some((kind, true));
            }
        }
    }
    let has = |k: &str| obj.contains_key(k);
    let kind = if has("gatewayRouteName") {
        Kind::GatewayRoute
    } else if has("virtualGatewayName") {
        Kind::VirtualGateway
    } else if has("routeName") {
        Kind::Route
    } else if has("virtualNodeName") {
        Kind::VirtualNode
    } else if has("virtualRouterName") {
        Kind::VirtualRouter
    } else if has("virtualServiceName") {
        Kind::VirtualService
    } else if has("filterName") {
        Kind::Filter
    } else if has("rolloutName") {
        Kind::Rollout
    } else if has("meshName") {
        Kind::Mesh
    } else {
        return None;
    };
    Some((kind, false))
}

fn one(file: &str, base: &str, v: Value, out: &mut Imported) -> Result<(), ImportError> {
    let Value::Object(obj) = v else {
        return Err(ImportError {
            file: file.to_owned(),
            path: base.to_owned(),
            message: "expected an App Mesh resource object".into(),
        });
    };
    let Some((kind, wrapped)) = kind_of(&obj) else {
        return Err(ImportError {
            file: file.to_owned(),
            path: base.to_owned(),
            message: "not an App Mesh resource: expected a key such as \"virtualNode\" \
                      (describe output) or \"virtualNodeName\" (create input)"
                .into(),
        });
    };
    let (mut inner, path) = if wrapped {
        let Some((k, Value::Object(m))) = obj.into_iter().next() else {
            return Err(ImportError {
                file: file.to_owned(),
                path: base.to_owned(),
                message: "expected an object inside the kind key".into(),
            });
        };
        let p = if base.is_empty() {
            k
        } else {
            format!("{base}.{k}")
        };
        (m, p)
    } else {
        (obj, base.to_owned())
    };
    for k in OUTPUT_ONLY {
        inner.remove(k);
    }
    for k in IGNORED {
        if inner.remove(k).is_some() {
            out.warnings.push(format!(
                "{file}: {}{k}: ignored (not part of the mesh configuration)",
                if path.is_empty() {
                    String::new()
                } else {
                    format!("{path}.")
                }
            ));
        }
    }
    if let Some(t) = inner.remove("tags") {
        let tp = if path.is_empty() {
            "tags".to_owned()
        } else {
            format!("{path}.tags")
        };
        let pairs = t
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| {
                        Some((
                            t.get("key")?.as_str()?.to_owned(),
                            t.get("value")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned(),
                        ))
                    })
                    .collect()
            })
            .ok_or_else(|| ImportError {
                file: file.to_owned(),
                path: tp.clone(),
                message: "expected a list of {\"key\", \"value\"}".into(),
            })?;
        if let Some(m) = super::tags(file, &tp, kind, pairs, &mut out.warnings)? {
            inner.insert("maille".into(), m);
        }
    }
    out.resources
        .push(typed(file, &path, kind, Value::Object(inner))?);
    Ok(())
}
