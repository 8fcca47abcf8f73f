//! Configuration of the `canary` filter: header-based canary routing with a weighted,
//! optionally sticky, split.
//!
//! ```json
//! {
//!   "targets": [
//!     { "name": "stable", "cluster": "colorteller-white", "weight": 90 },
//!     { "name": "canary", "cluster": "colorteller-blue",  "weight": 10 }
//!   ],
//!   "sticky": { "header": "x-user-id" },
//!   "rules": [
//!     { "match": { "headers": [ { "name": "x-canary", "match": { "exact": "true" } } ] },
//!       "target": "canary" }
//!   ]
//! }
//! ```
//!
//! For each request the filter takes the first rule whose conditions all hold; without one it
//! splits by weight. It then writes the chosen target's cluster into `clusterHeader` (read by
//! an Envoy route with `cluster_header`) and the target's name into `variantHeader`.
//! Field names follow App Mesh's `HttpRouteMatch` where one exists there.

use serde::{Deserialize, Serialize};

use crate::error::{check_header_name, check_token, parse_json, quoted, Validator};
use crate::ConfigError;

/// Request header the filter writes the chosen Envoy cluster into, unless configured.
pub const DEFAULT_CLUSTER_HEADER: &str = "x-maille-cluster";
/// Request header the filter writes the chosen target's name (the variant) into, unless
/// configured. Envoy's tracer turns it into a span tag and the collector into an X-Ray
/// annotation.
pub const DEFAULT_VARIANT_HEADER: &str = "x-maille-variant";
/// At most this many weighted targets (App Mesh's limit for `weightedTargets`).
pub const MAX_TARGETS: usize = 10;
/// A target's weight is in `0..=MAX_WEIGHT` (App Mesh's range); weights are relative.
pub const MAX_WEIGHT: u32 = 100;
/// At most this many rules.
pub const MAX_RULES: usize = 50;
/// At most this many header, cookie or query-parameter conditions of each kind per rule
/// (App Mesh allows 10 header matches per route).
pub const MAX_CONDITIONS: usize = 10;
/// Longest match value (App Mesh's limit for header match strings).
pub const MAX_MATCH_VALUE_LEN: usize = 255;
/// Longest target name; it becomes a header value and part of metric names.
pub const MAX_TARGET_NAME_LEN: usize = 64;
/// Longest Envoy cluster name accepted.
pub const MAX_CLUSTER_NAME_LEN: usize = 255;
/// Largest compiled size of one regex, in bytes, so a config cannot make a filter slow.
pub const MAX_REGEX_SIZE: usize = 64 * 1024;
/// HTTP methods a rule may match (App Mesh's set).
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// [`METHODS`] as one string, for messages.
const METHOD_NAMES: &str = "GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH";

/// The whole configuration of one canary filter instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryConfig {
    /// The upstream choices, 1 to 10. Each has a name (the variant marker), an Envoy cluster
    /// and a relative weight for the split.
    pub targets: Vec<Target>,
    /// Rules tried in order before the split; the first whose conditions all hold decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Where the sticky key is read from. When the request carries it, the split is a
    /// deterministic function of its value (one user stays on one target, and raising a
    /// target's weight only moves users onto it); when absent, the split is random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyKey>,
    /// Request header that receives the chosen target's Envoy cluster. Any value the client
    /// sent in it is replaced. Default `x-maille-cluster`.
    #[serde(default = "default_cluster_header")]
    pub cluster_header: String,
    /// Request header that receives the chosen target's name. Default `x-maille-variant`.
    #[serde(default = "default_variant_header")]
    pub variant_header: String,
}

fn default_cluster_header() -> String {
    DEFAULT_CLUSTER_HEADER.to_owned()
}

fn default_variant_header() -> String {
    DEFAULT_VARIANT_HEADER.to_owned()
}

/// One upstream choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    /// Name of this variant (`stable`, `canary`, `v2`): letters, digits, `-`, `_`. Written
    /// into the variant header and used in metric names.
    pub name: String,
    /// The Envoy cluster that serves this target.
    pub cluster: String,
    /// Relative weight in the split, 0 to 100. 0 means "only by rule".
    pub weight: u32,
}

/// Where the sticky key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum StickyKey {
    /// A request header, such as `x-user-id`.
    Header(String),
    /// A cookie, by name.
    Cookie(String),
}

/// A rule: when every condition of `match` holds, the request goes to `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// The conditions; all must hold. At least one is required.
    #[serde(rename = "match")]
    pub matches: RequestMatch,
    /// Name of a target in `targets`.
    pub target: String,
}

/// Conditions on a request, as in App Mesh's `HttpRouteMatch`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatch {
    /// The path (with its query string) starts with this; must start with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The request method is this one (`GET`, `POST`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Conditions on request headers, up to 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    /// Conditions on cookies of the `cookie` header, up to 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<ValueMatch>,
    /// Conditions on query parameters (compared as sent, not percent-decoded), up to 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<ValueMatch>,
}

impl RequestMatch {
    fn is_empty(&self) -> bool {
        self.prefix.is_none()
            && self.method.is_none()
            && self.headers.is_empty()
            && self.cookies.is_empty()
            && self.query_parameters.is_empty()
    }
}

/// A condition on one named value (a header, a cookie or a query parameter), as App Mesh's
/// `HttpRouteHeader`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    /// Name of the header (case-insensitive), cookie or query parameter (case-sensitive).
    pub name: String,
    /// Invert the result of the match. As in Envoy, a missing value never matches except
    /// through `present`: `{ "present": true }` inverted matches when the value is absent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
    /// How to compare; absent means "is present", as in App Mesh.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub method: Option<MatchMethod>,
}

/// How a value is compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum MatchMethod {
    /// Equal to this string.
    Exact(String),
    /// Starts with this string.
    Prefix(String),
    /// Ends with this string.
    Suffix(String),
    /// Matches this regular expression in full (as Envoy's `safe_regex`); the syntax is that
    /// of the `regex` crate without Unicode classes.
    Regex(String),
    /// An integer in `start..end` (start inclusive, end exclusive, as Envoy's `range_match`).
    Range(Range),
    /// `true`: the value is present; `false`: it is absent.
    Present(bool),
}

/// An integer range, start inclusive, end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Range {
    /// First value in the range.
    pub start: i64,
    /// First value after the range.
    pub end: i64,
}

// === impl CanaryConfig ===

impl CanaryConfig {
    /// Parses and validates a configuration. Errors name the field path.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let config: CanaryConfig = parse_json(bytes)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every limit and reference; reports all problems found, each with its path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut v = Validator::default();

        check_header_name(&mut v, "clusterHeader", &self.cluster_header);
        check_header_name(&mut v, "variantHeader", &self.variant_header);
        if self
            .cluster_header
            .eq_ignore_ascii_case(&self.variant_header)
        {
            v.error(
                "variantHeader",
                format!(
                    "must differ from clusterHeader, both are {}",
                    quoted(&self.variant_header)
                ),
            );
        }

        if self.targets.is_empty() {
            v.error("targets", "at least one target is required");
        } else if self.targets.len() > MAX_TARGETS {
            v.error(
                "targets",
                format!("at most {MAX_TARGETS} targets, got {}", self.targets.len()),
            );
        }
        for (i, t) in self.targets.iter().enumerate() {
            let path = format!("targets[{i}]");
            if t.name.is_empty()
                || t.name.len() > MAX_TARGET_NAME_LEN
                || !t
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                v.error(
                    format!("{path}.name"),
                    format!(
                        "must be 1 to {MAX_TARGET_NAME_LEN} letters, digits, '-' or '_', got {}",
                        quoted(&t.name)
                    ),
                );
            } else if self.targets[..i].iter().any(|o| o.name == t.name) {
                v.error(
                    format!("{path}.name"),
                    format!("duplicate target name {}", quoted(&t.name)),
                );
            }
            if t.cluster.is_empty()
                || t.cluster.len() > MAX_CLUSTER_NAME_LEN
                || !t.cluster.bytes().all(|b| b.is_ascii_graphic())
            {
                v.error(
                    format!("{path}.cluster"),
                    format!(
                        "must be 1 to {MAX_CLUSTER_NAME_LEN} visible ASCII characters, got {}",
                        quoted(&t.cluster)
                    ),
                );
            }
            if t.weight > MAX_WEIGHT {
                v.error(
                    format!("{path}.weight"),
                    format!("must be 0..={MAX_WEIGHT}, got {}", t.weight),
                );
            }
        }
        if !self.targets.is_empty() && self.targets.iter().all(|t| t.weight == 0) {
            v.error(
                "targets",
                "the weights sum to 0: at least one target needs a weight above 0",
            );
        }

        match &self.sticky {
            Some(StickyKey::Header(h)) => check_header_name(&mut v, "sticky.header", h),
            Some(StickyKey::Cookie(c)) => check_token(&mut v, "sticky.cookie", c),
            None => {}
        }

        if self.rules.len() > MAX_RULES {
            v.error(
                "rules",
                format!("at most {MAX_RULES} rules, got {}", self.rules.len()),
            );
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let path = format!("rules[{i}]");
            if !self.targets.iter().any(|t| t.name == rule.target) {
                v.error(
                    format!("{path}.target"),
                    format!("names no target in `targets`: {}", quoted(&rule.target)),
                );
            }
            check_request_match(&mut v, &format!("{path}.match"), &rule.matches);
        }

        v.finish()
    }

    /// Serialises the configuration as the filter reads it.
    pub fn to_json(&self) -> String {
        // Serialising these plain types cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn check_request_match(v: &mut Validator, path: &str, m: &RequestMatch) {
    if m.is_empty() {
        v.error(
            path,
            "needs at least one condition (prefix, method, headers, cookies or queryParameters)",
        );
    }
    if let Some(prefix) = &m.prefix {
        if !prefix.starts_with('/') || prefix.len() > MAX_MATCH_VALUE_LEN {
            v.error(
                format!("{path}.prefix"),
                format!(
                    "must start with '/' and be at most {MAX_MATCH_VALUE_LEN} bytes, got {}",
                    quoted(prefix)
                ),
            );
        }
    }
    if let Some(method) = &m.method {
        if !METHODS.contains(&method.as_str()) {
            v.error(
                format!("{path}.method"),
                format!("must be one of {METHOD_NAMES}, got {}", quoted(method)),
            );
        }
    }
    for (kind, list, is_header) in [
        ("headers", &m.headers, true),
        ("cookies", &m.cookies, false),
        ("queryParameters", &m.query_parameters, false),
    ] {
        if list.len() > MAX_CONDITIONS {
            v.error(
                format!("{path}.{kind}"),
                format!("at most {MAX_CONDITIONS} conditions, got {}", list.len()),
            );
        }
        for (i, vm) in list.iter().enumerate() {
            let p = format!("{path}.{kind}[{i}]");
            if is_header {
                check_header_name(v, &format!("{p}.name"), &vm.name);
            } else {
                check_token(v, &format!("{p}.name"), &vm.name);
            }
            if let Some(method) = &vm.method {
                check_match_method(v, &format!("{p}.match"), method);
            }
        }
    }
}

fn check_match_method(v: &mut Validator, path: &str, m: &MatchMethod) {
    match m {
        MatchMethod::Exact(s) | MatchMethod::Prefix(s) | MatchMethod::Suffix(s) => {
            let kind = match m {
                MatchMethod::Exact(_) => "exact",
                MatchMethod::Prefix(_) => "prefix",
                _ => "suffix",
            };
            if s.is_empty() || s.len() > MAX_MATCH_VALUE_LEN {
                v.error(
                    format!("{path}.{kind}"),
                    format!(
                        "must be 1 to {MAX_MATCH_VALUE_LEN} bytes, got {} bytes",
                        s.len()
                    ),
                );
            }
        }
        MatchMethod::Regex(re) => {
            if re.is_empty() || re.len() > MAX_MATCH_VALUE_LEN {
                v.error(
                    format!("{path}.regex"),
                    format!(
                        "must be 1 to {MAX_MATCH_VALUE_LEN} bytes, got {} bytes",
                        re.len()
                    ),
                );
            } else if let Err(e) = compile_full_match(re) {
                v.error(
                    format!("{path}.regex"),
                    format!("invalid regex {}: {e}", quoted(re)),
                );
            }
        }
        MatchMethod::Range(r) => {
            if r.start >= r.end {
                v.error(
                    format!("{path}.range"),
                    format!(
                        "start must be below end, got start {} end {}",
                        r.start, r.end
                    ),
                );
            }
        }
        MatchMethod::Present(_) => {}
    }
}

/// Compiles `re` so that it must match a whole value, as Envoy's `safe_regex` does.
/// The filters use this too, so what validates here is what runs there.
pub fn compile_full_match(re: &str) -> Result<regex_lite::Regex, regex_lite::Error> {
    regex_lite::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(MAX_REGEX_SIZE)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<CanaryConfig, String> {
        CanaryConfig::from_json(json.as_bytes()).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"{
        "targets": [
            {"name": "stable", "cluster": "svc-v1", "weight": 90},
            {"name": "canary", "cluster": "svc-v2", "weight": 10}
        ],
        "sticky": {"header": "x-user-id"},
        "rules": [
            {"match": {"headers": [{"name": "x-canary", "match": {"exact": "true"}}]}, "target": "canary"},
            {"match": {"prefix": "/beta", "method": "GET",
                       "cookies": [{"name": "beta", "match": {"regex": "yes|1"}}],
                       "queryParameters": [{"name": "v", "invert": true, "match": {"range": {"start": 1, "end": 3}}}]},
             "target": "canary"}
        ]
    }"#;

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.cluster_header, DEFAULT_CLUSTER_HEADER);
        assert_eq!(c.variant_header, DEFAULT_VARIANT_HEADER);
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.sticky, Some(StickyKey::Header("x-user-id".into())));
        assert_eq!(
            c.rules[1].matches.query_parameters[0].method,
            Some(MatchMethod::Range(Range { start: 1, end: 3 }))
        );
        // What the control server writes is what the filter reads.
        assert_eq!(CanaryConfig::from_json(c.to_json().as_bytes()).unwrap(), c);
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let err = parse(
            r#"{"targets": [{"name": "a", "cluster": "c", "weight": 1}],
                "rules": [{"match": {"headers": [{"name": "x", "match": {"exakt": "1"}}]}, "target": "a"}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("unknown variant `exakt`"), "{err}");
        #[cfg(feature = "field-paths")]
        assert!(err.starts_with("rules[0].match.headers[0].match"), "{err}");

        let err =
            parse(r#"{"targets": [{"name": "a", "cluster": "c", "weight": 1, "colour": 2}]}"#)
                .unwrap_err();
        assert!(err.contains("unknown field `colour`"), "{err}");
        #[cfg(feature = "field-paths")]
        assert!(err.starts_with("targets[0]"), "{err}");
    }

    #[test]
    fn bad_regex_is_refused_with_its_path() {
        let err = parse(
            r#"{"targets": [{"name": "a", "cluster": "c", "weight": 1}],
                "rules": [{"match": {"headers": [{"name": "x", "match": {"regex": "(unclosed"}}]}, "target": "a"}]}"#,
        )
        .unwrap_err();
        assert!(
            err.starts_with("rules[0].match.headers[0].match.regex: invalid regex"),
            "{err}"
        );
    }

    #[test]
    fn weights_summing_to_zero_are_refused() {
        let err = parse(
            r#"{"targets": [{"name": "a", "cluster": "c", "weight": 0}, {"name": "b", "cluster": "d", "weight": 0}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("targets: the weights sum to 0"), "{err}");
    }

    #[test]
    fn more_than_ten_targets_are_refused() {
        let targets: Vec<String> = (0..11)
            .map(|i| format!(r#"{{"name": "t{i}", "cluster": "c{i}", "weight": 1}}"#))
            .collect();
        let err = parse(&format!(r#"{{"targets": [{}]}}"#, targets.join(","))).unwrap_err();
        assert!(err.contains("targets: at most 10 targets, got 11"), "{err}");
    }

    #[test]
    fn method_names_list_every_method() {
        assert_eq!(METHOD_NAMES, METHODS.join(", "));
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let err = CanaryConfig::from_json(
            br#"{"targets": [{"name": "a b", "cluster": "c", "weight": 101},
                             {"name": "z", "cluster": "", "weight": 1}],
                 "clusterHeader": "x-same", "variantHeader": "X-Same",
                 "rules": [{"match": {}, "target": "nope"},
                           {"match": {"method": "FETCH", "prefix": "api",
                                      "headers": [{"name": ":path", "match": {"range": {"start": 5, "end": 5}}}]},
                            "target": "z"}]}"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "variantHeader",
                "targets[0].name",
                "targets[0].weight",
                "targets[1].cluster",
                "rules[0].target",
                "rules[0].match",
                "rules[1].match.prefix",
                "rules[1].match.method",
                "rules[1].match.headers[0].name",
                "rules[1].match.headers[0].match.range",
            ]
        );
    }

    #[test]
    fn duplicate_target_names_and_empty_targets_are_refused() {
        let err = parse(
            r#"{"targets": [{"name": "a", "cluster": "c", "weight": 1}, {"name": "a", "cluster": "d", "weight": 1}]}"#,
        )
        .unwrap_err();
        assert!(
            err.contains("targets[1].name: duplicate target name"),
            "{err}"
        );
        let err = parse(r#"{"targets": []}"#).unwrap_err();
        assert!(
            err.contains("targets: at least one target is required"),
            "{err}"
        );
        let err = parse(r#"{"rules": []}"#).unwrap_err();
        assert!(err.contains("missing field `targets`"), "{err}");
    }

    #[test]
    fn regex_matches_whole_value() {
        let re = compile_full_match("ab+").unwrap();
        assert!(re.is_match("abbb"));
        assert!(!re.is_match("xabb"));
        assert!(!re.is_match("abx"));
    }
}
