use std::borrow::Cow;

use maille_filter_config::canary::{
    compile_full_match, CanaryConfig, MatchMethod, RequestMatch, StickyKey, ValueMatch,
};
use maille_filter_config::ConfigError;
use xxhash_rust::xxh64::xxh64;

/// Read access to the request being routed. Header names are passed lowercase, including
/// the pseudo-headers `:path` and `:method`; the first value of a repeated header is enough.
///
/// A header whose value is empty counts as absent: Envoy hands an empty value to a wasm
/// module as a null pointer, which the Rust SDK reports as "no such header", so the filter
/// cannot tell the two apart in Envoy. The router treats them alike everywhere so that what
/// is tested natively is what runs there.
pub trait Request {
    /// The value of request header `name`, if present.
    fn header(&self, name: &str) -> Option<Cow<'_, str>>;
}

/// Why a target was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A rule matched.
    Rule,
    /// The weighted split, keyed by the sticky value.
    Sticky,
    /// The weighted split, at random (no sticky value on the request).
    Random,
}

impl Reason {
    /// All reasons, in the order of [`Reason::index`].
    pub const ALL: [Reason; 3] = [Reason::Rule, Reason::Sticky, Reason::Random];

    /// A short lowercase name, used in metric names.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rule => "rule",
            Reason::Sticky => "sticky",
            Reason::Random => "random",
        }
    }

    /// Position in [`Reason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The outcome for one request: an index into [`Router::targets`] and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index of the chosen target.
    pub target: usize,
    /// Why it was chosen.
    pub reason: Reason,
}

/// A target as the router holds it.
#[derive(Debug, Clone)]
pub struct RouterTarget {
    /// The variant name.
    pub name: String,
    /// The Envoy cluster.
    pub cluster: String,
    /// The relative weight.
    pub weight: u32,
    /// Per-target seed of the sticky hash, derived from the name so that reordering or
    /// adding targets does not move users between the others.
    seed: u64,
}

/// A validated canary configuration, compiled for fast decisions.
#[derive(Debug)]
pub struct Router {
    targets: Vec<RouterTarget>,
    rules: Vec<CompiledRule>,
    sticky: Option<Sticky>,
    total_weight: u32,
    cluster_header: String,
    variant_header: String,
}

#[derive(Debug)]
enum Sticky {
    Header(String),
    Cookie(String),
}

#[derive(Debug)]
struct CompiledRule {
    target: usize,
    prefix: Option<String>,
    method: Option<String>,
    headers: Vec<Matcher>,
    cookies: Vec<Matcher>,
    query: Vec<Matcher>,
}

#[derive(Debug)]
struct Matcher {
    name: String,
    invert: bool,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(regex_lite::Regex),
    Range(i64, i64),
    Present(bool),
}

/// A request header, an empty value counting as absent (see [`Request`]).
fn header<'r, R: Request + ?Sized>(req: &'r R, name: &str) -> Option<Cow<'r, str>> {
    req.header(name).filter(|v| !v.is_empty())
}

// === impl Router ===

impl Router {
    /// Parses, validates and compiles a JSON configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Router, ConfigError> {
        Router::new(&CanaryConfig::from_json(bytes)?)
    }

    /// Compiles a configuration, validating it first.
    pub fn new(config: &CanaryConfig) -> Result<Router, ConfigError> {
        config.validate()?;
        let targets: Vec<RouterTarget> = config
            .targets
            .iter()
            .map(|t| RouterTarget {
                name: t.name.clone(),
                cluster: t.cluster.clone(),
                weight: t.weight,
                seed: xxh64(t.name.as_bytes(), 0),
            })
            .collect();
        let rules = config
            .rules
            .iter()
            .map(|r| CompiledRule {
                // validate() checked that every rule names a target.
                target: targets.iter().position(|t| t.name == r.target).unwrap_or(0),
                ..compile_match(&r.matches)
            })
            .collect();
        Ok(Router {
            total_weight: targets.iter().map(|t| t.weight).sum(),
            targets,
            rules,
            sticky: config.sticky.as_ref().map(|s| match s {
                StickyKey::Header(h) => Sticky::Header(h.to_ascii_lowercase()),
                StickyKey::Cookie(c) => Sticky::Cookie(c.clone()),
            }),
            cluster_header: config.cluster_header.to_ascii_lowercase(),
            variant_header: config.variant_header.to_ascii_lowercase(),
        })
    }

    /// The targets, in configuration order.
    pub fn targets(&self) -> &[RouterTarget] {
        &self.targets
    }

    /// The request header that receives the chosen cluster (lowercase).
    pub fn cluster_header(&self) -> &str {
        &self.cluster_header
    }

    /// The request header that receives the chosen variant name (lowercase).
    pub fn variant_header(&self) -> &str {
        &self.variant_header
    }

    /// Chooses the target for a request. `random` is a uniformly random number, used only
    /// when no rule matches and the request carries no sticky key.
    pub fn decide<R: Request + ?Sized>(&self, req: &R, random: u32) -> Decision {
        self.decide_with(req, || random)
    }

    /// [`Router::decide`], drawing the random number only when the split needs one.
    pub fn decide_with<R: Request + ?Sized>(
        &self,
        req: &R,
        random: impl FnOnce() -> u32,
    ) -> Decision {
        for rule in &self.rules {
            if rule.matches(req) {
                return Decision {
                    target: rule.target,
                    reason: Reason::Rule,
                };
            }
        }
        let key = match &self.sticky {
            Some(Sticky::Header(name)) => header(req, name),
            Some(Sticky::Cookie(name)) => header(req, "cookie")
                .and_then(|c| cookie(&c, name).map(|v| Cow::Owned(v.to_owned()))),
            None => None,
        };
        match key {
            Some(key) if !key.is_empty() => Decision {
                target: self.sticky_target(key.as_bytes()),
                reason: Reason::Sticky,
            },
            _ => Decision {
                target: self.random_target(random()),
                reason: Reason::Random,
            },
        }
    }

    /// Weighted rendezvous hashing: each target scores `-ln(u) / weight` with `u` a hash of
    /// (key, target) in (0, 1), and the lowest score wins. Shares follow the weights, and when
    /// one target's weight rises only keys moving onto it change target: users already on the
    /// canary stay there as it grows.
    fn sticky_target(&self, key: &[u8]) -> usize {
        let mut best = (0, f64::INFINITY);
        for (i, t) in self.targets.iter().enumerate() {
            if t.weight == 0 {
                continue;
            }
            let h = xxh64(key, t.seed);
            // 53 random bits, offset by half a step so u is never 0 or 1.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -u.ln() / f64::from(t.weight);
            if score < best.1 {
                best = (i, score);
            }
        }
        best.0
    }

    fn random_target(&self, random: u32) -> usize {
        // total_weight > 0 is guaranteed by validation; max(1) keeps this total anyway.
        let mut r = random % self.total_weight.max(1);
        for (i, t) in self.targets.iter().enumerate() {
            if r < t.weight {
                return i;
            }
            r -= t.weight;
        }
        0
    }
}

fn compile_match(m: &RequestMatch) -> CompiledRule {
    let compile = |list: &[ValueMatch], lowercase: bool| -> Vec<Matcher> {
        list.iter()
            .map(|vm| Matcher {
                name: if lowercase {
                    vm.name.to_ascii_lowercase()
                } else {
                    vm.name.clone()
                },
                invert: vm.invert,
                kind: match &vm.method {
                    None | Some(MatchMethod::Present(true)) => Kind::Present(true),
                    Some(MatchMethod::Present(false)) => Kind::Present(false),
                    Some(MatchMethod::Exact(s)) => Kind::Exact(s.clone()),
                    Some(MatchMethod::Prefix(s)) => Kind::Prefix(s.clone()),
                    Some(MatchMethod::Suffix(s)) => Kind::Suffix(s.clone()),
                    // validate() compiled it already; an impossible failure never matches.
                    Some(MatchMethod::Regex(re)) => compile_full_match(re)
                        .map(Kind::Regex)
                        .unwrap_or(Kind::Present(false)),
                    Some(MatchMethod::Range(r)) => Kind::Range(r.start, r.end),
                },
            })
            .collect()
    };
    CompiledRule {
        target: 0,
        prefix: m.prefix.clone(),
        method: m.method.clone(),
        headers: compile(&m.headers, true),
        cookies: compile(&m.cookies, false),
        query: compile(&m.query_parameters, false),
    }
}

// === impl CompiledRule ===

impl CompiledRule {
    fn matches<R: Request + ?Sized>(&self, req: &R) -> bool {
        if let Some(method) = &self.method {
            if header(req, ":method").as_deref() != Some(method.as_str()) {
                return false;
            }
        }
        if self.prefix.is_some() || !self.query.is_empty() {
            let path = header(req, ":path");
            let path = path.as_deref().unwrap_or("");
            if let Some(prefix) = &self.prefix {
                if !path.starts_with(prefix.as_str()) {
                    return false;
                }
            }
            let query = path.split_once('?').map_or("", |(_, q)| q);
            let query = query.split_once('#').map_or(query, |(q, _)| q);
            if !self
                .query
                .iter()
                .all(|m| m.eval(query_param(query, &m.name)))
            {
                return false;
            }
        }
        if !self
            .headers
            .iter()
            .all(|m| m.eval(header(req, &m.name).as_deref()))
        {
            return false;
        }
        if !self.cookies.is_empty() {
            let cookies = header(req, "cookie");
            let cookies = cookies.as_deref().unwrap_or("");
            if !self
                .cookies
                .iter()
                .all(|m| m.eval(cookie(cookies, &m.name)))
            {
                return false;
            }
        }
        true
    }
}

impl Matcher {
    /// Envoy's semantics: a missing value fails every match but `present`; `invert` flips
    /// the result of a match that was performed.
    fn eval(&self, value: Option<&str>) -> bool {
        let Some(v) = value else {
            return match self.kind {
                // Absent: `present: want` matched iff !want; inverted iff invert.
                Kind::Present(want) => want == self.invert,
                _ => false,
            };
        };
        let matched = match &self.kind {
            Kind::Exact(s) => v == s,
            Kind::Prefix(s) => v.starts_with(s.as_str()),
            Kind::Suffix(s) => v.ends_with(s.as_str()),
            Kind::Regex(re) => re.is_match(v),
            Kind::Range(start, end) => v
                .trim_ascii()
                .parse::<i64>()
                .is_ok_and(|n| *start <= n && n < *end),
            Kind::Present(want) => *want,
        };
        matched != self.invert
    }
}

/// The value of cookie `name` in a `cookie` header (`a=1; b=2`), without surrounding quotes.
fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim_ascii() == name).then(|| {
            let v = v.trim_ascii();
            v.strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(v)
        })
    })
}

/// The raw (not percent-decoded) value of query parameter `name`; `""` for `?name`.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k == name).then_some(v),
            None => (pair == name).then_some(""),
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Req(HashMap<String, String>);

    impl Req {
        fn new(pairs: &[(&str, &str)]) -> Req {
            Req(pairs
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect())
        }
    }

    impl Request for Req {
        fn header(&self, name: &str) -> Option<Cow<'_, str>> {
            self.0.get(name).map(|v| Cow::Borrowed(v.as_str()))
        }
    }

    fn router(json: &str) -> Router {
        Router::from_json(json.as_bytes()).unwrap()
    }

    fn split(stable: u32, canary: u32) -> Router {
        router(&format!(
            r#"{{"targets": [{{"name": "stable", "cluster": "s", "weight": {stable}}},
                             {{"name": "canary", "cluster": "c", "weight": {canary}}}],
                "sticky": {{"header": "x-user-id"}}}}"#
        ))
    }

    fn rule_router(conditions: &str) -> Router {
        router(&format!(
            r#"{{"targets": [{{"name": "stable", "cluster": "s", "weight": 1}},
                             {{"name": "canary", "cluster": "c", "weight": 0}}],
                "rules": [{{"match": {conditions}, "target": "canary"}}]}}"#
        ))
    }

    fn hits(r: &Router, req: &[(&str, &str)]) -> bool {
        let d = r.decide(&Req::new(req), 0);
        assert_eq!(d.target == 1, d.reason == Reason::Rule);
        d.target == 1
    }

    #[test]
    fn header_match_methods() {
        let cases: &[(&str, &str, bool)] = &[
            (r#"{"exact": "yes"}"#, "yes", true),
            (r#"{"exact": "yes"}"#, "yes!", false),
            (r#"{"prefix": "mob"}"#, "mobile", true),
            (r#"{"prefix": "mob"}"#, "desktop", false),
            (r#"{"suffix": "-beta"}"#, "ios-beta", true),
            (r#"{"suffix": "-beta"}"#, "ios", false),
            (r#"{"regex": "v[0-9]+"}"#, "v42", true),
            (r#"{"regex": "v[0-9]+"}"#, "v42x", false),
            (r#"{"range": {"start": 10, "end": 20}}"#, "10", true),
            (r#"{"range": {"start": 10, "end": 20}}"#, "19", true),
            (r#"{"range": {"start": 10, "end": 20}}"#, "20", false),
            (r#"{"range": {"start": 10, "end": 20}}"#, "ten", false),
            (r#"{"present": true}"#, "any", true),
        ];
        for (m, value, want) in cases {
            let r = rule_router(&format!(
                r#"{{"headers": [{{"name": "X-Test", "match": {m}}}]}}"#
            ));
            assert_eq!(hits(&r, &[("x-test", value)]), *want, "{m} on {value:?}");
            assert!(!hits(&r, &[("other", value)]), "{m} with the header absent");
            let inv = rule_router(&format!(
                r#"{{"headers": [{{"name": "x-test", "invert": true, "match": {m}}}]}}"#
            ));
            assert_eq!(
                hits(&inv, &[("x-test", value)]),
                !*want,
                "inverted {m} on {value:?}"
            );
        }
    }

    #[test]
    fn presence_and_absence() {
        let present = rule_router(r#"{"headers": [{"name": "x-beta"}]}"#);
        assert!(hits(&present, &[("x-beta", "1")]));
        // An empty value is absent, as the filter sees it in Envoy.
        assert!(!hits(&present, &[("x-beta", "")]));
        assert!(!hits(&present, &[]));
        let absent_inv = rule_router(r#"{"headers": [{"name": "x-beta", "invert": true}]}"#);
        assert!(hits(&absent_inv, &[]));
        assert!(!hits(&absent_inv, &[("x-beta", "1")]));
        let absent =
            rule_router(r#"{"headers": [{"name": "x-beta", "match": {"present": false}}]}"#);
        assert!(hits(&absent, &[]));
        assert!(!hits(&absent, &[("x-beta", "1")]));
        // Envoy: an inverted exact match on a missing header does not match.
        let inv_exact = rule_router(
            r#"{"headers": [{"name": "x-beta", "invert": true, "match": {"exact": "1"}}]}"#,
        );
        assert!(!hits(&inv_exact, &[]));
    }

    #[test]
    fn cookies_query_prefix_and_method() {
        let r = rule_router(r#"{"cookies": [{"name": "beta", "match": {"exact": "on"}}]}"#);
        assert!(hits(&r, &[("cookie", "a=1; beta=on; z=2")]));
        assert!(hits(&r, &[("cookie", "beta=\"on\"")]));
        assert!(!hits(&r, &[("cookie", "a=1; xbeta=on")]));
        assert!(!hits(&r, &[]));

        let r = rule_router(r#"{"queryParameters": [{"name": "v", "match": {"exact": "2"}}]}"#);
        assert!(hits(&r, &[(":path", "/api?a=1&v=2")]));
        assert!(hits(&r, &[(":path", "/api?v=2#frag")]));
        assert!(!hits(&r, &[(":path", "/api?v=22")]));
        assert!(!hits(&r, &[(":path", "/api/v=2")]));
        let r = rule_router(r#"{"queryParameters": [{"name": "debug"}]}"#);
        assert!(hits(&r, &[(":path", "/x?debug")]));
        assert!(!hits(&r, &[(":path", "/x?debugger=1")]));

        let r = rule_router(r#"{"prefix": "/beta/", "method": "POST"}"#);
        assert!(hits(&r, &[(":path", "/beta/x"), (":method", "POST")]));
        assert!(!hits(&r, &[(":path", "/beta/x"), (":method", "GET")]));
        assert!(!hits(&r, &[(":path", "/alpha"), (":method", "POST")]));
    }

    #[test]
    fn rules_apply_in_order_and_all_conditions_must_hold() {
        let r = router(
            r#"{"targets": [{"name": "a", "cluster": "ca", "weight": 1},
                            {"name": "b", "cluster": "cb", "weight": 0},
                            {"name": "c", "cluster": "cc", "weight": 0}],
                "rules": [
                  {"match": {"headers": [{"name": "x-t", "match": {"exact": "1"}},
                                         {"name": "x-u", "match": {"exact": "1"}}]}, "target": "b"},
                  {"match": {"headers": [{"name": "x-t"}]}, "target": "c"}]}"#,
        );
        let d = |pairs: &[(&str, &str)]| {
            r.targets()[r.decide(&Req::new(pairs), 0).target]
                .name
                .clone()
        };
        assert_eq!(d(&[("x-t", "1"), ("x-u", "1")]), "b");
        assert_eq!(d(&[("x-t", "1"), ("x-u", "2")]), "c");
        assert_eq!(d(&[("x-u", "1")]), "a");
    }

    #[test]
    fn random_split_follows_weights() {
        let r = split(90, 10);
        let mut canary = 0;
        for random in 0..10_000u32 {
            let d = r.decide(&Req::new(&[]), random);
            assert_eq!(d.reason, Reason::Random);
            canary += usize::from(d.target == 1);
        }
        assert_eq!(canary, 1_000);
    }

    #[test]
    fn sticky_split_is_deterministic_and_proportional() {
        let r = split(90, 10);
        let users: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let mut canary = 0;
        for u in &users {
            let first = r.decide(&Req::new(&[("x-user-id", u)]), 1);
            let again = r.decide(&Req::new(&[("x-user-id", u)]), 999);
            assert_eq!(first, again);
            assert_eq!(first.reason, Reason::Sticky);
            canary += usize::from(first.target == 1);
        }
        let share = canary as f64 / users.len() as f64;
        assert!((0.09..0.11).contains(&share), "canary share {share}");
    }

    #[test]
    fn raising_canary_weight_keeps_canary_users_on_canary() {
        let before = split(90, 10);
        let after = split(80, 20);
        let relative = split(90, 20); // weights are relative: the canary grows here too
        let mut moved_on = 0;
        for i in 0..20_000 {
            let u = format!("{i:08x}");
            let req = Req::new(&[("x-user-id", &u)]);
            let b = before.decide(&req, 0).target;
            if b == 1 {
                assert_eq!(after.decide(&req, 0).target, 1, "user {u} left the canary");
                assert_eq!(
                    relative.decide(&req, 0).target,
                    1,
                    "user {u} left the canary"
                );
            } else if after.decide(&req, 0).target == 1 {
                moved_on += 1;
            }
        }
        // About a tenth of all users join the canary.
        assert!(
            (1_600..2_400).contains(&moved_on),
            "{moved_on} users moved on"
        );
    }

    #[test]
    fn sticky_cookie_and_empty_key() {
        let r = router(
            r#"{"targets": [{"name": "a", "cluster": "ca", "weight": 50},
                            {"name": "b", "cluster": "cb", "weight": 50}],
                "sticky": {"cookie": "uid"}}"#,
        );
        let d = r.decide(&Req::new(&[("cookie", "x=1; uid=42")]), 0);
        assert_eq!(d.reason, Reason::Sticky);
        let e = r.decide(&Req::new(&[("cookie", "uid=")]), 0);
        assert_eq!(e.reason, Reason::Random);
    }

    #[test]
    fn zero_weight_targets_get_nothing_from_the_split() {
        let r = split(100, 0);
        for i in 0..2_000u32 {
            let u = i.to_string();
            assert_eq!(r.decide(&Req::new(&[("x-user-id", &u)]), i).target, 0);
            assert_eq!(r.decide(&Req::new(&[]), i.wrapping_mul(7_919)).target, 0);
        }
    }

    #[test]
    fn bad_config_is_refused() {
        let err =
            Router::from_json(br#"{"targets": [{"name": "a", "cluster": "c", "weight": 0}]}"#)
                .unwrap_err();
        assert!(err.to_string().contains("weights sum to 0"), "{err}");
    }
}
