//! Reading traces back from X-Ray for `maillectl traces`: the segment documents of a trace
//! as a tree, a one-line summary per trace, a waterfall for the terminal, and the service
//! graph (who calls whom, how often, how often it fails).
//!
//! Everything here works on the segment documents X-Ray returns (`BatchGetTraces`), so it
//! reads the same from AWS and from a local endpoint.

use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The annotation that carries the canary variant (the collector maps `x-maille-variant` to
/// it), as used in filter expressions: `annotation.maille_variant = "canary"`.
pub const VARIANT_ANNOTATION: &str = "maille_variant";

/// One segment or subsegment of a trace, flattened out of X-Ray's documents.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// Segment id.
    pub id: String,
    /// Parent id (absent for the trace's root).
    pub parent: Option<String>,
    /// Name: the service for a segment, the remote call's name for a subsegment.
    pub name: String,
    /// The service it belongs to (its own name for a segment, its segment's for a
    /// subsegment).
    pub service: String,
    /// A segment (a service's own work) rather than a subsegment.
    pub segment: bool,
    /// Start, seconds since the epoch.
    pub start: f64,
    /// End, seconds since the epoch (the start when still in progress).
    pub end: f64,
    /// HTTP status, when known.
    pub status: Option<u16>,
    /// A 4xx (`error`) or throttled.
    pub error: bool,
    /// A 5xx (`fault`).
    pub fault: bool,
    /// Annotations, values as text.
    pub annotations: BTreeMap<String, String>,
}

impl Span {
    /// Duration in milliseconds.
    pub fn millis(&self) -> f64 {
        (self.end - self.start) * 1000.0
    }
}

/// A trace: its id and its spans, sorted by start time.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The X-Ray trace id.
    pub id: String,
    /// Every segment and subsegment.
    pub spans: Vec<Span>,
}

/// Error reading a segment document.
#[derive(Debug, thiserror::Error)]
#[error("trace {trace}: segment document {index}: {message}")]
pub struct DocumentError {
    trace: String,
    index: usize,
    message: String,
}

impl Trace {
    /// A trace from its segment documents (JSON text, as `BatchGetTraces` returns them).
    /// Subsegments embedded in a document are taken too.
    pub fn from_documents(id: &str, docs: &[&str]) -> Result<Trace, DocumentError> {
        let mut spans = Vec::new();
        for (index, d) in docs.iter().enumerate() {
            let v: Value = serde_json::from_str(d).map_err(|e| DocumentError {
                trace: id.to_owned(),
                index,
                message: e.to_string(),
            })?;
            flatten(&v, None, None, &mut spans).map_err(|message| DocumentError {
                trace: id.to_owned(),
                index,
                message,
            })?;
        }
        // A subsegment sent as its own document names its segment only by parent id: give
        // it its segment's service.
        let by_id: HashMap<String, (Option<String>, bool, String)> = spans
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    (s.parent.clone(), s.segment, s.service.clone()),
                )
            })
            .collect();
        for s in spans.iter_mut().filter(|s| !s.segment) {
            let mut at = s.parent.clone();
            let mut hops = 0;
            while let Some(p) = at {
                match by_id.get(&p) {
                    Some((_, true, service)) => {
                        s.service = service.clone();
                        break;
                    }
                    Some((parent, false, _)) if hops < 64 => {
                        at = parent.clone();
                        hops += 1;
                    }
                    _ => break,
                }
            }
        }
        spans.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.id.cmp(&b.id)));
        Ok(Trace {
            id: id.to_owned(),
            spans,
        })
    }

    /// Start of the earliest span.
    pub fn start(&self) -> f64 {
        self.spans.iter().map(|s| s.start).fold(f64::NAN, f64::min)
    }

    /// From the earliest start to the latest end, milliseconds.
    pub fn millis(&self) -> f64 {
        let end = self.spans.iter().map(|s| s.end).fold(f64::NAN, f64::max);
        ((end - self.start()) * 1000.0).max(0.0)
    }

    /// The services, in the order they first appear.
    pub fn services(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.spans
            .iter()
            .filter(|s| s.segment && seen.insert(s.service.clone()))
            .map(|s| s.service.clone())
            .collect()
    }

    /// Every value of annotation `key` in the trace.
    pub fn annotation_values(&self, key: &str) -> BTreeSet<String> {
        self.spans
            .iter()
            .filter_map(|s| s.annotations.get(key).cloned())
            .collect()
    }

    /// The root span (no parent, or a parent not in the trace), earliest first.
    pub fn root(&self) -> Option<&Span> {
        let ids: BTreeSet<&str> = self.spans.iter().map(|s| s.id.as_str()).collect();
        self.spans
            .iter()
            .find(|s| s.parent.as_deref().is_none_or(|p| !ids.contains(p)))
    }

    /// Whether the trace has `key = value` among its annotations, and a span of `service`
    /// when given.
    pub fn matches(&self, annotations: &[(String, String)], service: Option<&str>) -> bool {
        annotations
            .iter()
            .all(|(k, v)| self.annotation_values(k).contains(v))
            && service.is_none_or(|s| self.spans.iter().any(|sp| sp.segment && sp.service == s))
    }

    /// One line of the trace list, as JSON.
    pub fn summary(&self) -> Value {
        let root = self.root();
        json!({
            "id": self.id,
            "start": self.start(),
            "durationMs": round2(self.millis()),
            "services": self.services(),
            "status": root.and_then(|r| r.status),
            "fault": self.spans.iter().any(|s| s.fault),
            "error": self.spans.iter().any(|s| s.error),
            "variants": self.annotation_values(VARIANT_ANNOTATION),
            "spans": self.spans.len(),
        })
    }

    /// The trace as a waterfall: one line per span, indented under its parent, with a bar
    /// of `width` columns placed on the trace's time line.
    pub fn waterfall(&self, width: usize) -> String {
        let width = width.max(10);
        let t0 = self.start();
        let total = self.millis().max(0.001);
        let ids: BTreeSet<&str> = self.spans.iter().map(|s| s.id.as_str()).collect();
        let mut children: BTreeMap<Option<&str>, Vec<&Span>> = BTreeMap::new();
        for s in &self.spans {
            let parent = s.parent.as_deref().filter(|p| ids.contains(p));
            children.entry(parent).or_default().push(s);
        }
        let mut lines = Vec::new();
        let mut stack: Vec<(&Span, usize)> = children
            .get(&None)
            .map(|v| v.iter().rev().map(|s| (*s, 0)).collect())
            .unwrap_or_default();
        while let Some((s, depth)) = stack.pop() {
            lines.push((s, depth));
            if let Some(kids) = children.get(&Some(s.id.as_str())) {
                stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
            }
        }
        let label = |s: &Span, depth: usize| {
            let kind = if s.segment { "" } else { " (call)" };
            format!("{}{}{kind}", "  ".repeat(depth), s.name)
        };
        let label_width = lines
            .iter()
            .map(|(s, d)| label(s, *d).chars().count())
            .max()
            .unwrap_or(0)
            .min(60);
        let mut out = format!(
            "trace {}  {:.1} ms  {} spans  {}\n",
            self.id,
            total,
            self.spans.len(),
            self.services().join(" -> ")
        );
        for (s, depth) in lines {
            let from = ((s.start - t0) * 1000.0 / total * width as f64).round() as usize;
            let len = ((s.millis() / total) * width as f64).ceil().max(1.0) as usize;
            let from = from.min(width - 1);
            let len = len.min(width - from);
            let bar = format!(
                "{}{}{}",
                " ".repeat(from),
                "█".repeat(len),
                " ".repeat(width - from - len)
            );
            let status = s.status.map_or("-".to_owned(), |c| c.to_string());
            let flag = if s.fault {
                " FAULT"
            } else if s.error {
                " ERROR"
            } else {
                ""
            };
            let notes: Vec<String> = s
                .annotations
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!(
                "  {:<label_width$} |{bar}| {:>8.2} ms  {status}{flag}  {}\n",
                label(s, depth),
                s.millis(),
                notes.join(" ")
            ));
        }
        out
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn flatten(
    v: &Value,
    parent: Option<&str>,
    service: Option<&str>,
    out: &mut Vec<Span>,
) -> Result<(), String> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let id = text("id").ok_or("no id")?;
    let name = text("name").unwrap_or_else(|| "?".to_owned());
    let start = v
        .get("start_time")
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("{id}: no start_time"))?;
    let end = v.get("end_time").and_then(Value::as_f64).unwrap_or(start);
    // Embedded subsegments have no type field; a document is a subsegment when it says so.
    let segment = service.is_none() && v.get("type").and_then(Value::as_str) != Some("subsegment");
    let parent = text("parent_id").or(parent.map(str::to_owned));
    let own_service = match service {
        Some(s) => s.to_owned(),
        None if segment => name.clone(),
        None => String::new(),
    };
    let annotations = v
        .get("annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    out.push(Span {
        id: id.clone(),
        parent,
        name,
        service: own_service.clone(),
        segment,
        start,
        end,
        status: v
            .pointer("/http/response/status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok()),
        error: flag("error") || flag("throttle"),
        fault: flag("fault"),
        annotations,
    });
    if let Some(subs) = v.get("subsegments").and_then(Value::as_array) {
        let svc = (!own_service.is_empty()).then_some(own_service.as_str());
        for s in subs {
            flatten(s, Some(&id), svc, out)?;
        }
    }
    Ok(())
}

/// An edge of the service graph: `from` called `to` this many times.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
pub struct Edge {
    /// The caller (`client` for requests from outside the traces).
    pub from: String,
    /// The service called.
    pub to: String,
    /// Calls.
    pub calls: u64,
    /// Calls answered with a 4xx or throttled.
    pub errors: u64,
    /// Calls answered with a 5xx.
    pub faults: u64,
}

/// The caller of a trace's entry service.
pub const CLIENT: &str = "client";

/// The service graph of `traces`: an edge for each segment whose parent belongs to another
/// service (or to no one: the client), counted per call, with the callee's errors and faults.
pub fn graph(traces: &[Trace]) -> Vec<Edge> {
    let mut edges: BTreeMap<(String, String), Edge> = BTreeMap::new();
    for t in traces {
        let service_of: HashMap<&str, &str> = t
            .spans
            .iter()
            .map(|s| (s.id.as_str(), s.service.as_str()))
            .collect();
        for s in t.spans.iter().filter(|s| s.segment) {
            let from = s
                .parent
                .as_deref()
                .and_then(|p| service_of.get(p))
                .filter(|f| !f.is_empty())
                .copied()
                .unwrap_or(CLIENT);
            if from == s.service {
                continue;
            }
            let e = edges
                .entry((from.to_owned(), s.service.clone()))
                .or_insert_with(|| Edge {
                    from: from.to_owned(),
                    to: s.service.clone(),
                    ..Edge::default()
                });
            e.calls += 1;
            e.errors += u64::from(s.error);
            e.faults += u64::from(s.fault);
        }
    }
    edges.into_values().collect()
}

/// The graph as a table.
pub fn graph_table(edges: &[Edge]) -> String {
    let w = edges
        .iter()
        .map(|e| e.from.len() + e.to.len() + 4)
        .max()
        .unwrap_or(10)
        .max(10);
    let mut out = format!(
        "{:<w$}  {:>7}  {:>7}  {:>7}\n",
        "CALLER -> SERVICE", "CALLS", "4XX %", "5XX %"
    );
    for e in edges {
        let pct = |n: u64| 100.0 * n as f64 / e.calls.max(1) as f64;
        out.push_str(&format!(
            "{:<w$}  {:>7}  {:>7.1}  {:>7.1}\n",
            format!("{} -> {}", e.from, e.to),
            e.calls,
            pct(e.errors),
            pct(e.faults)
        ));
    }
    out
}

/// The trace list: id, duration, the root's status (`!` when a span faulted), the variants,
/// the services in order.
pub fn list_table(traces: &[Trace]) -> String {
    let variants: Vec<String> = traces
        .iter()
        .map(|t| {
            t.annotation_values(VARIANT_ANNOTATION)
                .into_iter()
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let vw = variants.iter().map(String::len).max().unwrap_or(0).max(7);
    let mut out = format!(
        "{:<36}  {:>9}  {:>6}  {:<vw$}  SERVICES\n",
        "TRACE", "MS", "STATUS", "VARIANT"
    );
    for (t, v) in traces.iter().zip(&variants) {
        let status = t
            .root()
            .and_then(|r| r.status)
            .map_or("-".to_owned(), |c| c.to_string());
        let flag = if t.spans.iter().any(|s| s.fault) {
            "!"
        } else {
            ""
        };
        out.push_str(&format!(
            "{:<36}  {:>9.2}  {:>6}  {v:<vw$}  {}\n",
            t.id,
            t.millis(),
            format!("{status}{flag}"),
            t.services().join(" -> ")
        ));
    }
    out
}

/// An X-Ray filter expression for annotations and a service, as `GetTraceSummaries` takes.
pub fn filter_expression(
    annotations: &[(String, String)],
    service: Option<&str>,
) -> Option<String> {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut parts: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("annotation.{k} = {}", quote(v)))
        .collect();
    if let Some(s) = service {
        parts.push(format!("service({})", quote(s)));
    }
    (!parts.is_empty()).then(|| parts.join(" AND "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway segment whose egress call (a subsegment sent as its own document) leads to
    /// blue's segment, as the collector writes Envoy's spans; blue's answer a 503.
    fn docs() -> Vec<String> {
        vec![
            json!({"name": "colorgateway", "id": "a000000000000001", "trace_id": "1-5f000000-000000000000000000000001",
                   "start_time": 100.000, "end_time": 100.010, "http": {"response": {"status": 503}}, "fault": true}).to_string(),
            json!({"name": "node_colorteller-blue_9080", "id": "a000000000000002", "type": "subsegment",
                   "parent_id": "a000000000000001", "trace_id": "1-5f000000-000000000000000000000001",
                   "start_time": 100.002, "end_time": 100.009, "annotations": {"maille_variant": "blue"}}).to_string(),
            json!({"name": "colorteller-blue", "id": "a000000000000003", "parent_id": "a000000000000002",
                   "trace_id": "1-5f000000-000000000000000000000001", "start_time": 100.003, "end_time": 100.008,
                   "http": {"response": {"status": 503}}, "fault": true,
                   "annotations": {"maille_variant": "blue"},
                   "subsegments": [{"name": "db", "id": "a000000000000004", "start_time": 100.004, "end_time": 100.005}]}).to_string(),
        ]
    }

    fn trace() -> Trace {
        let d = docs();
        let refs: Vec<&str> = d.iter().map(String::as_str).collect();
        Trace::from_documents("1-5f000000-000000000000000000000001", &refs).unwrap()
    }

    #[test]
    fn documents_become_a_tree_with_services() {
        let t = trace();
        assert_eq!(t.spans.len(), 4);
        assert_eq!(t.services(), ["colorgateway", "colorteller-blue"]);
        let call = &t.spans[1];
        assert!(!call.segment);
        assert_eq!(
            call.service, "colorgateway",
            "a subsegment document belongs to its segment"
        );
        let db = t.spans.iter().find(|s| s.id == "a000000000000004").unwrap();
        assert_eq!(db.parent.as_deref(), Some("a000000000000003"));
        assert_eq!(db.service, "colorteller-blue");
        assert!((t.millis() - 10.0).abs() < 1e-6, "{}", t.millis());
        assert_eq!(t.root().unwrap().name, "colorgateway");
    }

    #[test]
    fn filters_by_annotation_and_service() {
        let t = trace();
        let a = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert!(t.matches(&a("maille_variant", "blue"), None));
        assert!(!t.matches(&a("maille_variant", "white"), None));
        assert!(t.matches(&[], Some("colorteller-blue")));
        assert!(!t.matches(&[], Some("colorteller-red")));
        assert_eq!(
            filter_expression(&a("maille_variant", "bl\"ue"), Some("gw")).unwrap(),
            r#"annotation.maille_variant = "bl\"ue" AND service("gw")"#
        );
        assert_eq!(filter_expression(&[], None), None);
    }

    #[test]
    fn waterfall_indents_children_and_places_bars_on_the_time_line() {
        let w = trace().waterfall(20);
        let lines: Vec<&str> = w.lines().collect();
        assert!(lines[0].contains("colorgateway -> colorteller-blue"), "{w}");
        assert!(lines[1].starts_with("  colorgateway "), "{w}");
        assert!(
            lines[2].starts_with("    node_colorteller-blue_9080 (call)"),
            "{w}"
        );
        assert!(lines[3].starts_with("      colorteller-blue "), "{w}");
        assert!(lines[4].starts_with("        db (call)"), "{w}");
        // The root spans the whole line; blue starts 3 ms (6 columns of 20) in.
        let bar = |l: &str| l.split('|').nth(1).unwrap().to_owned();
        assert_eq!(bar(lines[1]).trim(), "█".repeat(20));
        assert_eq!(bar(lines[3]).find('█'), Some(6));
        assert!(
            lines[3].contains("503 FAULT") && lines[3].contains("maille_variant=blue"),
            "{w}"
        );
    }

    #[test]
    fn graph_counts_calls_and_failures_per_edge() {
        let mut ok = trace();
        ok.id = "other".into();
        for s in &mut ok.spans {
            s.fault = false;
        }
        let g = graph(&[trace(), ok]);
        assert_eq!(
            g,
            vec![
                Edge {
                    from: "client".into(),
                    to: "colorgateway".into(),
                    calls: 2,
                    errors: 0,
                    faults: 1
                },
                Edge {
                    from: "colorgateway".into(),
                    to: "colorteller-blue".into(),
                    calls: 2,
                    errors: 0,
                    faults: 1
                },
            ]
        );
        let table = graph_table(&g);
        assert!(
            table.contains("colorgateway -> colorteller-blue"),
            "{table}"
        );
        assert!(table.contains("50.0"), "{table}");
    }

    #[test]
    fn the_list_shows_status_fault_variant_and_services() {
        let table = list_table(&[trace()]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("TRACE") && lines[0].contains("VARIANT"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("1-5f000000-000000000000000000000001"),
            "{table}"
        );
        assert!(
            lines[1].contains("503!") && lines[1].contains(" blue "),
            "{table}"
        );
        assert!(
            lines[1].ends_with("colorgateway -> colorteller-blue"),
            "{table}"
        );
    }

    #[test]
    fn a_bad_document_names_the_trace_and_the_document() {
        let e = Trace::from_documents("t1", &["{}", "nope"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t1") && e.contains("document 0") && e.contains("no id"),
            "{e}"
        );
    }
}
