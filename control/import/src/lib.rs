//! Reads existing App Mesh definitions, unchanged, into [`Resource`]s: App Mesh API JSON (as
//! `aws appmesh describe-*` prints it, or `create-*` input), CloudFormation templates with
//! `AWS::AppMesh::*` resources (YAML or JSON), Terraform `aws_appmesh_*` resources, and the
//! App Mesh controller's Kubernetes manifests (`appmesh.k8s.aws/v1beta2`).
//! What is not supported is reported as a warning or an error, never dropped silently.
//!
//! Only `maillectl` links this crate (and its YAML and HCL parsers): the control server takes
//! resources already in the model's JSON form.
#![forbid(unsafe_code)]

mod apijson;
mod cloudformation;
mod kubernetes;
mod terraform;

use maille_model::Resource;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A definition that could not be read, with the file and the field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    /// The file (or `-`).
    pub file: String,
    /// Where in it (`Resources.ColorNode.Properties.Spec.Listeners[0]`), possibly empty.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path.is_empty() {
            true => write!(f, "{}: {}", self.file, self.message),
            false => write!(f, "{}: {}: {}", self.file, self.path, self.message),
        }
    }
}

impl std::error::Error for ImportError {}

/// Resources read, and what was ignored on the way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Imported {
    /// The resources, in file order.
    pub resources: Vec<Resource>,
    /// Parts ignored (output-only fields, tags, unsupported resource types), with where.
    pub warnings: Vec<String>,
    /// The `-p` names the files take (CloudFormation parameters, pseudo parameters and
    /// exports, Terraform variables): a `-p` no file takes is refused.
    pub parameters: std::collections::BTreeSet<String>,
}

/// Formats a file may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// App Mesh API JSON.
    ApiJson,
    /// A CloudFormation template (YAML or JSON).
    CloudFormation,
    /// Terraform HCL.
    Terraform,
    /// Kubernetes manifests of the App Mesh controller (`appmesh.k8s.aws/v1beta2`), and
    /// any other Kubernetes objects beside them (skipped with a warning).
    Kubernetes,
}

/// Values for CloudFormation parameters and Terraform variables given on the command line.
pub type Params = BTreeMap<String, String>;

/// Every document of a YAML stream as JSON, with the YAML reader the CloudFormation import
/// uses (CloudFormation's short-form tags become their long forms).
pub fn yaml_documents(text: &str) -> Result<Vec<serde_json::Value>, String> {
    cloudformation::yaml_documents(text)
}

/// Guesses the format from the file name and content: `.tf` is Terraform; a document with
/// `AWSTemplateFormatVersion` or `Resources` is CloudFormation; other JSON is API JSON.
pub fn detect(name: &str, text: &str) -> Format {
    if name.ends_with(".tf") {
        return Format::Terraform;
    }
    if kubernetes::looks_like(text) {
        return Format::Kubernetes;
    }
    let head: String = text.chars().take(4096).collect();
    if head.contains("AWSTemplateFormatVersion") || head.contains("Resources") {
        return Format::CloudFormation;
    }
    // Other Kubernetes objects (a Deployment beside the mesh's manifests).
    let kube = |l: &str| {
        let l = l.trim_start_matches(['{', ' ', '"']);
        l.starts_with("apiVersion") || l.starts_with("kind")
    };
    if head.lines().any(kube) {
        return Format::Kubernetes;
    }
    if name.ends_with(".yaml") || name.ends_with(".yml") {
        return Format::CloudFormation;
    }
    Format::ApiJson
}

/// Reads `text` (from `file`, for messages) in `format`. A `-p` the file does not take is
/// refused.
pub fn import_str(
    file: &str,
    text: &str,
    format: Format,
    params: &Params,
) -> Result<Imported, ImportError> {
    let i = import_one(file, text, format, params)?;
    if let Some(e) = unknown_params(params, &i.parameters) {
        return Err(ImportError {
            file: file.to_owned(),
            path: String::new(),
            message: e,
        });
    }
    Ok(i)
}

/// The `-p` names that no file takes, as one message.
fn unknown_params(params: &Params, taken: &std::collections::BTreeSet<String>) -> Option<String> {
    let unknown: Vec<&str> = params
        .keys()
        .filter(|k| !taken.contains(*k))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        return None;
    }
    let mut known: Vec<&str> = taken
        .iter()
        .map(String::as_str)
        .filter(|k| !k.starts_with("AWS::"))
        .collect();
    known.truncate(20);
    Some(format!(
        "-p {}: no file of this call takes such a parameter or variable{}",
        unknown.join(", -p "),
        if known.is_empty() {
            String::new()
        } else {
            format!(" (they take: {})", known.join(", "))
        }
    ))
}

fn import_one(
    file: &str,
    text: &str,
    format: Format,
    params: &Params,
) -> Result<Imported, ImportError> {
    match format {
        Format::ApiJson => apijson::import(file, text),
        Format::CloudFormation => cloudformation::import(file, text, params),
        Format::Terraform => terraform::import(file, text, params),
        Format::Kubernetes => kubernetes::import(&[(file.to_owned(), text.to_owned())])
            .map_err(|mut e| e.swap_remove(0)),
    }
}

/// Reads a file, or every `.json`, `.yaml`, `.yml` and `.tf` file under a folder (sorted by
/// name). Errors of every file are returned together.
pub fn import_paths(paths: &[PathBuf], params: &Params) -> Result<Imported, Vec<ImportError>> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files);
    }
    let mut out = Imported::default();
    let mut errors = Vec::new();
    // Kubernetes manifests are read together: their references cross files.
    let mut manifests = Vec::new();
    for f in files {
        let name = f.display().to_string();
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ImportError {
                    file: name,
                    path: String::new(),
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        let format = detect(&name, &text);
        if format == Format::Kubernetes {
            manifests.push((name, text));
            continue;
        }
        match import_one(&name, &text, format, params) {
            Ok(i) => {
                out.resources.extend(i.resources);
                out.warnings.extend(i.warnings);
                out.parameters.extend(i.parameters);
            }
            Err(e) => errors.push(e),
        }
    }
    if !manifests.is_empty() {
        match kubernetes::import(&manifests) {
            Ok(i) => {
                out.resources.extend(i.resources);
                out.warnings.extend(i.warnings);
            }
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        if let Some(e) = unknown_params(params, &out.parameters) {
            errors.push(ImportError {
                file: paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                path: String::new(),
                message: e,
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for e in entries {
            let ext = e.extension().and_then(|x| x.to_str()).unwrap_or("");
            if e.is_dir() || ["json", "yaml", "yml", "tf"].contains(&ext) {
                collect(&e, out);
            }
        }
    } else {
        out.push(p.to_path_buf());
    }
}

/// The tag keys that carry Maille's settings, in every format (App Mesh's tags are the one
/// extension point all its formats have), by the kind of resource they go on:
/// - on a route, `maille:sticky-header` and `maille:sticky-cookie` ask for a sticky split on
///   that header or cookie;
/// - on a mesh, `maille:mtls` (`STRICT`, `PERMISSIVE`, `DISABLED`) and
///   `maille:authorization` (`BACKENDS`, `NONE`) set its mutual TLS;
/// - on a virtual node, `maille:mtls` sets its own mutual TLS instead of its mesh's.
pub const MAILLE_TAGS: [(maille_model::Kind, &str, &str); 5] = [
    (
        maille_model::Kind::Route,
        "maille:sticky-header",
        "sticky.header",
    ),
    (
        maille_model::Kind::Route,
        "maille:sticky-cookie",
        "sticky.cookie",
    ),
    (maille_model::Kind::Mesh, "maille:mtls", "mtls"),
    (
        maille_model::Kind::Mesh,
        "maille:authorization",
        "authorization",
    ),
    (maille_model::Kind::VirtualNode, "maille:mtls", "mtls"),
];

/// Reads a resource's tags: the `maille:` ones become its Maille settings (the value of its
/// `maille` field); the others are not part of the mesh and get one warning. A `maille:` tag
/// Maille does not know, or on a resource that takes none, is an error naming it.
pub(crate) fn tags(
    file: &str,
    path: &str,
    kind: maille_model::Kind,
    tags: Vec<(String, String)>,
    warnings: &mut Vec<String>,
) -> Result<Option<serde_json::Value>, ImportError> {
    let mut out = serde_json::Map::new();
    let mut others = false;
    for (k, v) in tags {
        if !k.starts_with("maille:") {
            others = true;
            continue;
        }
        let err = |message: String| ImportError {
            file: file.to_owned(),
            path: path.to_owned(),
            message,
        };
        let known = |of: maille_model::Kind| {
            MAILLE_TAGS
                .iter()
                .filter(|(kk, ..)| *kk == of)
                .map(|(_, t, _)| *t)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some((tag_kind, _, field)) = MAILLE_TAGS
            .iter()
            .find(|(kk, t, _)| *t == k && *kk == kind)
            .or_else(|| MAILLE_TAGS.iter().find(|(_, t, _)| *t == k))
        else {
            return Err(err(format!(
                "tag {k:?}: not a Maille tag; known: {}",
                MAILLE_TAGS
                    .iter()
                    .map(|(_, t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if *tag_kind != kind {
            return Err(err(format!(
                "tag {k:?}: goes on a {} ({} on a {})",
                tag_kind.as_str(),
                match known(kind) {
                    s if s.is_empty() => "none".to_owned(),
                    s => s,
                },
                kind.as_str()
            )));
        }
        match field.split_once('.') {
            Some((outer, inner)) => {
                let o = out
                    .entry(outer.to_owned())
                    .or_insert_with(|| serde_json::json!({}));
                if let Some(m) = o.as_object_mut() {
                    m.insert(inner.to_owned(), v.into());
                }
            }
            None => {
                out.insert((*field).to_owned(), v.into());
            }
        }
    }
    if others {
        warnings.push(format!(
            "{file}: {path}: ignored (not part of the mesh configuration)"
        ));
    }
    Ok((!out.is_empty()).then_some(serde_json::Value::Object(out)))
}

/// Turns a JSON value in App Mesh API shape (camelCase) into a resource of `kind`, naming
/// the path of a bad field.
pub(crate) fn typed(
    file: &str,
    base: &str,
    kind: maille_model::Kind,
    v: serde_json::Value,
) -> Result<Resource, ImportError> {
    use maille_model::Kind;
    fn de<T: serde::de::DeserializeOwned>(
        file: &str,
        base: &str,
        v: serde_json::Value,
    ) -> Result<T, ImportError> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let p = e.path().to_string();
            ImportError {
                file: file.to_owned(),
                path: match (base.is_empty(), p == ".") {
                    (_, true) => base.to_owned(),
                    (true, false) => p,
                    (false, false) => format!("{base}.{p}"),
                },
                message: e.into_inner().to_string(),
            }
        })
    }
    Ok(match kind {
        Kind::Mesh => Resource::Mesh(de(file, base, v)?),
        Kind::VirtualNode => Resource::VirtualNode(de(file, base, v)?),
        Kind::VirtualRouter => Resource::VirtualRouter(de(file, base, v)?),
        Kind::Route => Resource::Route(de(file, base, v)?),
        Kind::VirtualService => Resource::VirtualService(de(file, base, v)?),
        Kind::VirtualGateway => Resource::VirtualGateway(de(file, base, v)?),
        Kind::GatewayRoute => Resource::GatewayRoute(de(file, base, v)?),
        Kind::Filter => Resource::Filter(de(file, base, v)?),
        Kind::Rollout => Resource::Rollout(de(file, base, v)?),
    })
}

/// Converts PascalCase keys (CloudFormation, `Spec.Listeners[0].PortMapping`) to App Mesh's
/// camelCase, recursively; values are kept.
pub(crate) fn camel_keys(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (camel(&k), camel_keys(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(camel_keys).collect()),
        other => other,
    }
}

fn camel(k: &str) -> String {
    // A leading run of capitals is an acronym: `DNS` -> `dns`, `HTTP2` -> `http2`,
    // `AWSCloudMap` -> `awsCloudMap`; otherwise only the first letter drops: `PortMapping`.
    let chars: Vec<char> = k.chars().collect();
    let run = chars
        .iter()
        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        .count();
    let lower_to = if run == chars.len() {
        run
    } else if run > 1 {
        run - 1
    } else {
        run.min(1)
    };
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < lower_to {
                c.to_ascii_lowercase()
            } else {
                *c
            }
        })
        .collect()
}

/// snake_case (Terraform) to camelCase.
pub(crate) fn snake_to_camel(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    let mut up = false;
    for ch in k.chars() {
        if ch == '_' {
            up = true;
        } else if up {
            out.push(ch.to_ascii_uppercase());
            up = false;
        } else {
            out.push(ch);
        }
    }
    out
}
