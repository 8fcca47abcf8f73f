//! X-Ray's rules for a segment document, checked: what the tests hold every document to,
//! and what a caller can run on documents of its own. moto checks little of a document's
//! content, so the checks live here.

use super::{
    MAX_ANNOTATIONS, MAX_ANNOTATION_KEY_CHARS, MAX_ANNOTATION_VALUE_CHARS, MAX_DOCUMENT_BYTES,
    MAX_NAME_CHARS, NAME_PUNCTUATION,
};
use serde_json::Value;

pub(super) fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a document against the X-Ray segment document rules; every problem found.
pub fn check_document(doc: &Value) -> Result<(), Vec<String>> {
    let mut e = Vec::new();
    let Some(o) = doc.as_object() else {
        return Err(vec!["a segment document is a JSON object".into()]);
    };
    let size = serde_json::to_vec(doc)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_DOCUMENT_BYTES {
        e.push(format!(
            "document is {size} bytes, over {MAX_DOCUMENT_BYTES}"
        ));
    }
    match o.get("name").and_then(Value::as_str) {
        None => e.push("name: required".into()),
        Some(n) => {
            if n.is_empty() || n.chars().count() > MAX_NAME_CHARS {
                e.push(format!(
                    "name: 1 to {MAX_NAME_CHARS} characters, got {}",
                    n.chars().count()
                ));
            }
            if let Some(c) = n.chars().find(|c| {
                !(c.is_alphanumeric() || c.is_whitespace() || NAME_PUNCTUATION.contains(*c))
            }) {
                e.push(format!("name: character {c:?} is not allowed"));
            }
        }
    }
    if !o
        .get("id")
        .and_then(Value::as_str)
        .is_some_and(|s| is_hex(s, 16))
    {
        e.push(format!(
            "id: 16 lowercase hex digits required, got {:?}",
            o.get("id")
        ));
    }
    match o.get("trace_id").and_then(Value::as_str) {
        Some(t) => {
            let parts: Vec<&str> = t.split('-').collect();
            if !(parts.len() == 3 && parts[0] == "1" && is_hex(parts[1], 8) && is_hex(parts[2], 24))
            {
                e.push(format!("trace_id: must be 1-<8 hex>-<24 hex>, got {t:?}"));
            }
        }
        None => e.push("trace_id: required".into()),
    }
    let start = o.get("start_time").and_then(Value::as_f64);
    let end = o.get("end_time").and_then(Value::as_f64);
    let in_progress = o.get("in_progress").and_then(Value::as_bool) == Some(true);
    match (start, end, in_progress) {
        (None, ..) => e.push("start_time: required (epoch seconds)".into()),
        (Some(_), None, false) => e.push("end_time or in_progress: required".into()),
        (Some(s), Some(t), _) if t < s => e.push(format!("end_time {t} is before start_time {s}")),
        _ => {}
    }
    if let Some(p) = o.get("parent_id") {
        if !p.as_str().is_some_and(|s| is_hex(s, 16)) {
            e.push(format!("parent_id: 16 hex digits required, got {p}"));
        }
    }
    if o.get("type").and_then(Value::as_str) == Some("subsegment") && o.get("parent_id").is_none() {
        e.push("a subsegment sent on its own needs parent_id".into());
    }
    if let Some(ns) = o.get("namespace").and_then(Value::as_str) {
        if ns != "aws" && ns != "remote" {
            e.push(format!("namespace: aws or remote, got {ns:?}"));
        }
    }
    if let Some(a) = o.get("annotations") {
        match a.as_object() {
            None => e.push("annotations: must be an object".into()),
            Some(m) => {
                if m.len() > MAX_ANNOTATIONS {
                    e.push(format!("annotations: at most {MAX_ANNOTATIONS}"));
                }
                for (k, v) in m {
                    if k.is_empty()
                        || k.len() > MAX_ANNOTATION_KEY_CHARS
                        || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        e.push(format!(
                            "annotations: key {k:?} must be letters, digits or _"
                        ));
                    }
                    match v {
                        Value::String(s) if s.chars().count() > MAX_ANNOTATION_VALUE_CHARS => e
                            .push(format!(
                                "annotations.{k}: longer than {MAX_ANNOTATION_VALUE_CHARS}"
                            )),
                        Value::String(_) | Value::Number(_) | Value::Bool(_) => {}
                        _ => e.push(format!(
                            "annotations.{k}: must be a string, number or boolean"
                        )),
                    }
                }
            }
        }
    }
    if let Some(s) = doc.pointer("/http/response/status") {
        if !s.is_i64() {
            e.push(format!("http.response.status: must be an integer, got {s}"));
        }
    }
    for flag in ["error", "fault", "throttle"] {
        if let Some(v) = o.get(flag) {
            if !v.is_boolean() {
                e.push(format!("{flag}: must be a boolean"));
            }
        }
    }
    if e.is_empty() {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_checker_catches_what_xray_refuses() {
        let bad = json!({"name": "a*b", "id": "XYZ", "trace_id": "1-abc-def", "start_time": 10.0, "end_time": 5.0,
                         "type": "subsegment", "annotations": {"bad key": 1, "nested": {"a": 1}}, "fault": "yes"});
        let errs = check_document(&bad).unwrap_err();
        for want in [
            "name: character '*'",
            "id:",
            "trace_id:",
            "end_time 5 is before",
            "needs parent_id",
            "key \"bad key\"",
            "annotations.nested",
            "fault: must be a boolean",
        ] {
            assert!(errs.iter().any(|e| e.contains(want)), "{want} in {errs:?}");
        }
    }
}
