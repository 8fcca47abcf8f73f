//! The canary filter in real Envoy 1.40, in both of its builds (the wasm module on V8 and the
//! native dynamic module): routing, split, stickiness, refusal of bad configs, metrics, and
//! the wasm module's size. Needs `make setup` and `make filters`.

use std::collections::HashMap;

use maille_testkit::{agent, filter_wasm, for_each_runtime, Runtime};
use maille_testkit::{start_canary_on, Envoy, Upstreams};

for_each_runtime!(
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
    fn start(runtime: Runtime, up: &Upstreams, config: &str) -> Front {
        let (envoy, port) = start_canary_on(runtime, up, config)
            .unwrap_or_else(|e| panic!("Envoy refused a good config ({}):\n{}", e.status, e.log));
        Front {
            envoy,
            port,
            agent: agent(),
        }
    }

    /// Sends GET / with `headers`; returns who served it and the variant it saw.
    fn get(&self, headers: &[(&str, &str)]) -> (String, String) {
        let mut req = self.agent.get(&format!("http://127.0.0.1:{}/", self.port));
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
        let body = resp.body_mut().read_to_string().expect("body");
        (body.trim().to_owned(), seen)
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

fn header_rule_sends_matching_requests_to_canary_and_others_to_stable(runtime: Runtime) {
    let up = Upstreams::start();
    let front = Front::start(
        runtime,
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
        // A client cannot choose the cluster itself: the filter replaces the header.
        assert_eq!(front.get(&[("x-maille-cluster", "canary")]).0, "stable");
    }
    let stats = front.envoy.stats("maille_canary");
    assert_eq!(
        stats.get(&runtime.stat("maille_canary.decisions.canary.rule")),
        Some(&100),
        "{stats:?}"
    );
    assert_eq!(
        stats.get(&runtime.stat("maille_canary.decisions.stable.random")),
        Some(&200),
        "{stats:?}"
    );
}

fn random_split_90_10_over_2000_requests(runtime: Runtime) {
    let up = Upstreams::start();
    let front = Front::start(runtime, &up, &split_config(90, 10));
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
            .get(&runtime.stat("maille_canary.decisions.canary.random"))
            .copied(),
        Some(canary as u64),
        "{stats:?}"
    );
}

fn sticky_users_stay_put_and_canary_users_stay_on_canary_when_it_grows(runtime: Runtime) {
    let up = Upstreams::start();
    let users: Vec<String> = (0..200).map(|i| format!("user-{i:03}")).collect();
    let assign = |front: &Front| -> HashMap<String, String> {
        users
            .iter()
            .map(|u| (u.clone(), front.get(&[("x-user-id", u)]).0))
            .collect()
    };

    let front = Front::start(runtime, &up, &split_config(90, 10));
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

    let front = Front::start(runtime, &up, &split_config(80, 20));
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

fn bad_configs_are_refused_and_the_log_names_the_problem(runtime: Runtime) {
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
    for (config, expected) in cases {
        match start_canary_on(runtime, &up, &config) {
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
