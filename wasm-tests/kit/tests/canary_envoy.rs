//! The canary in real Envoy 1.40, in its three forms (the wasm filter on V8, the native
//! dynamic module as an HTTP filter, and the same module as the route's cluster specifier):
//! routing, split, stickiness, refusal of bad configs, metrics, and the wasm module's size.
//! Needs `make setup` and `make filters`.

use std::collections::HashMap;

use maille_testkit::{agent, filter_wasm, Runtime};
use maille_testkit::{start_canary_on, start_canary_specifier, Envoy, EnvoyExit, Upstreams};

/// How the canary runs in Envoy.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// An HTTP filter writing the cluster header (`deploy/envoy/canary.yaml`,
    /// `canary-native.yaml`).
    Filter(Runtime),
    /// The native module as the route's cluster specifier (`canary-specifier.yaml`).
    Specifier,
}

impl Form {
    fn start(self, up: &Upstreams, config: &str) -> Result<(Envoy, u16), EnvoyExit> {
        match self {
            Form::Filter(runtime) => start_canary_on(runtime, up, config),
            Form::Specifier => start_canary_specifier(up, config),
        }
    }

    /// The `/stats` name of the canary's metric `name`.
    fn stat(self, name: &str) -> String {
        match self {
            Form::Filter(runtime) => runtime.stat(name),
            Form::Specifier => Runtime::Native.stat(name),
        }
    }
}

/// Each test once per [`Form`]: `name::wasm`, `name::native`, `name::specifier`.
macro_rules! for_each_form {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                use super::*;
                #[test]
                fn wasm() {
                    $test(Form::Filter(Runtime::Wasm))
                }
                #[test]
                fn native() {
                    $test(Form::Filter(Runtime::Native))
                }
                #[test]
                fn specifier() {
                    $test(Form::Specifier)
                }
            }
        )*
    };
}

for_each_form!(
    header_rule_sends_matching_requests_to_canary_and_others_to_stable,
    random_split_90_10_over_2000_requests,
    sticky_users_stay_put_and_canary_users_stay_on_canary_when_it_grows,
    bad_configs_are_refused_and_the_log_names_the_problem,
);

/// The module must stay small enough to ship in xDS and load fast.
const MAX_MODULE_BYTES: u64 = 150_000;

struct Front {
    envoy: Envoy,
    port: u16,
    agent: ureq::Agent,
}

impl Front {
    fn start(form: Form, up: &Upstreams, config: &str) -> Front {
        let (envoy, port) = form
            .start(up, config)
            .unwrap_or_else(|e| panic!("Envoy refused a good config ({}):\n{}", e.status, e.log));
        Front {
            envoy,
            port,
            agent: agent(),
        }
    }

    /// Sends GET / with `headers`; returns who served it and the variant it saw.
    fn get(&self, headers: &[(&str, &str)]) -> (String, String) {
        let (served, variant, _) = self.get_path("/", headers);
        (served, variant)
    }

    /// [`Front::get`], and the `x-maille-cluster` the upstream saw.
    fn get_seen(&self, headers: &[(&str, &str)]) -> (String, String, String) {
        self.get_path("/echo-cluster", headers)
    }

    fn get_path(&self, path: &str, headers: &[(&str, &str)]) -> (String, String, String) {
        let mut req = self
            .agent
            .get(&format!("http://127.0.0.1:{}{path}", self.port));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req.call().expect("request through Envoy");
        assert_eq!(
            resp.status(),
            200,
            "status; Envoy log:\n{}",
            self.envoy.log()
        );
        let seen = header(&resp, "x-seen-variant");
        let cluster = header(&resp, "x-seen-cluster");
        let body = resp.body_mut().read_to_string().expect("body");
        (body.trim().to_owned(), seen, cluster)
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn split_config(stable: u32, canary: u32) -> String {
    format!(
        r#"{{"targets": [{{"name": "stable", "cluster": "stable", "weight": {stable}}},
                         {{"name": "canary", "cluster": "canary", "weight": {canary}}}],
            "sticky": {{"header": "x-user-id"}}}}"#
    )
}

fn header_rule_sends_matching_requests_to_canary_and_others_to_stable(form: Form) {
    let up = Upstreams::start();
    let front = Front::start(
        form,
        &up,
        r#"{"targets": [{"name": "stable", "cluster": "stable", "weight": 100},
                        {"name": "canary", "cluster": "canary", "weight": 0}],
            "rules": [{"match": {"headers": [{"name": "x-canary", "match": {"exact": "always"}}]},
                       "target": "canary"}]}"#,
    );
    for _ in 0..100 {
        assert_eq!(
            front.get(&[("x-canary", "always")]),
            ("canary".into(), "canary".into())
        );
        assert_eq!(
            front.get(&[("x-canary", "never")]),
            ("stable".into(), "stable".into())
        );
        // A client chooses neither the cluster nor the variant the upstream sees. The filter
        // overwrites the cluster header; behind the specifier nothing sets it, and the
        // client's is dropped.
        let (served, _, cluster) = front.get_seen(&[("x-maille-cluster", "canary")]);
        assert_eq!(served, "stable");
        let expected = match form {
            Form::Filter(_) => "stable",
            Form::Specifier => "",
        };
        assert_eq!(cluster, expected, "x-maille-cluster the upstream saw");
        assert_eq!(
            front.get(&[("x-maille-variant", "canary")]),
            ("stable".into(), "stable".into())
        );
    }
    let stats = front.envoy.stats("maille_canary");
    assert_eq!(
        stats.get(&form.stat("maille_canary.decisions.canary.rule")),
        Some(&100),
        "{stats:?}"
    );
    assert_eq!(
        stats.get(&form.stat("maille_canary.decisions.stable.random")),
        Some(&300),
        "{stats:?}"
    );
}

fn random_split_90_10_over_2000_requests(form: Form) {
    let up = Upstreams::start();
    let front = Front::start(form, &up, &split_config(90, 10));
    let n = 2_000;
    let canary = (0..n).filter(|_| front.get(&[]).0 == "canary").count();
    let share = canary as f64 / n as f64;
    assert!(
        (0.07..=0.13).contains(&share),
        "canary share {share:.3} ({canary} of {n})"
    );
    let stats = front.envoy.stats("maille_canary");
    assert_eq!(
        stats
            .get(&form.stat("maille_canary.decisions.canary.random"))
            .copied(),
        Some(canary as u64),
        "{stats:?}"
    );
}

fn sticky_users_stay_put_and_canary_users_stay_on_canary_when_it_grows(form: Form) {
    let up = Upstreams::start();
    let users: Vec<String> = (0..200).map(|i| format!("user-{i:03}")).collect();
    let assign = |front: &Front| -> HashMap<String, String> {
        users
            .iter()
            .map(|u| (u.clone(), front.get(&[("x-user-id", u)]).0))
            .collect()
    };

    let front = Front::start(form, &up, &split_config(90, 10));
    let first = assign(&front);
    for repeat in 0..3 {
        assert_eq!(assign(&front), first, "repeat {repeat} moved users");
    }
    let on_canary: Vec<&String> = first
        .iter()
        .filter(|(_, t)| *t == "canary")
        .map(|(u, _)| u)
        .collect();
    assert!(
        (5..=40).contains(&on_canary.len()),
        "{} of 200 users on canary at 10%",
        on_canary.len()
    );
    drop(front);

    let front = Front::start(form, &up, &split_config(80, 20));
    let after = assign(&front);
    for u in &on_canary {
        assert_eq!(
            after[*u], "canary",
            "{u} left the canary when its weight went 10 -> 20"
        );
    }
    let grown = after.values().filter(|t| *t == "canary").count();
    assert!(
        grown > on_canary.len(),
        "canary did not grow: {grown} users"
    );
}

fn bad_configs_are_refused_and_the_log_names_the_problem(form: Form) {
    let up = Upstreams::start();
    let eleven: Vec<String> = (0..11)
        .map(|i| format!(r#"{{"name": "t{i}", "cluster": "stable", "weight": 1}}"#))
        .collect();
    let cases = [
        (
            r#"{"targets": [{"name": "stable", "cluster": "stable", "weight": 1, "colour": "red"}]}"#.to_owned(),
            "unknown field `colour`",
        ),
        (
            r#"{"targets": [{"name": "stable", "cluster": "stable", "weight": 1}],
                "rules": [{"match": {"headers": [{"name": "x", "match": {"regex": "(open"}}]}, "target": "stable"}]}"#
                .to_owned(),
            "rules[0].match.headers[0].match.regex: invalid regex",
        ),
        (
            r#"{"targets": [{"name": "stable", "cluster": "stable", "weight": 0},
                            {"name": "canary", "cluster": "canary", "weight": 0}]}"#
                .to_owned(),
            "targets: the weights sum to 0",
        ),
        (
            format!(r#"{{"targets": [{}]}}"#, eleven.join(",")),
            "targets: at most 10 targets, got 11",
        ),
    ];
    let mut cases = cases.to_vec();
    if let Form::Specifier = form {
        // The route writes the variant header; a specifier writes none.
        for field in ["variantHeader", "clusterHeader"] {
            cases.push((
                format!(r#"{{"targets": [{{"name": "stable", "cluster": "stable", "weight": 1}}], "{field}": "x-v"}}"#),
                if field == "variantHeader" {
                    "variantHeader: a cluster specifier writes no headers"
                } else {
                    "clusterHeader: a cluster specifier writes no headers"
                },
            ));
        }
    }
    for (config, expected) in cases {
        match form.start(&up, &config) {
            Ok((envoy, _)) => panic!(
                "Envoy accepted a bad config:\n{config}\nlog:\n{}",
                envoy.log()
            ),
            Err(exit) => {
                assert!(!exit.status.success(), "Envoy exited 0 on:\n{config}");
                assert!(
                    exit.log.contains("maille_canary: invalid configuration")
                        && exit.log.contains(expected),
                    "log does not name `{expected}`:\n{}",
                    exit.log
                );
            }
        }
    }
}

#[test]
fn module_is_small() {
    let size = std::fs::metadata(filter_wasm("canary"))
        .expect("canary.wasm")
        .len();
    assert!(
        size <= MAX_MODULE_BYTES,
        "canary.wasm is {size} bytes, limit {MAX_MODULE_BYTES}"
    );
}

#[test]
fn a_specifier_name_the_module_does_not_have_is_refused() {
    let up = Upstreams::start();
    let c = maille_testkit::render_canary_specifier(
        &up,
        r#"{"targets": [{"name": "stable", "cluster": "stable", "weight": 1}]}"#,
    );
    let yaml = c.yaml.replace(
        "specifier_name: maille_canary",
        "specifier_name: maille_breaker",
    );
    match Envoy::start(&yaml, c.admin) {
        Ok(envoy) => panic!("Envoy took a specifier the module lacks:\n{}", envoy.log()),
        Err(exit) => assert!(
            exit.log.contains(
                r#"maille_canary: specifier_name: this module's cluster specifier is "maille_canary", got "maille_breaker""#
            ),
            "{}",
            exit.log
        ),
    }
}
