//! canary.wasm, the module that ships, driven through the wasmtime host.

use std::collections::HashMap;

use maille_testkit::filter_wasm;
use maille_wasm_host::{Action, Error, Host, LogLevel, Vm};

fn canary(host: &Host, config: &str) -> Vm {
    let mut vm = host.load(filter_wasm("canary")).expect("load canary.wasm");
    vm.configure(config.as_bytes())
        .unwrap_or_else(|e| panic!("good config refused: {e}"));
    vm
}

/// Runs one request; returns (cluster header, variant header).
fn route(vm: &mut Vm, headers: &[(&str, &str)]) -> (String, String) {
    let s = vm.request(headers).expect("request headers");
    (
        s.request_header("x-maille-cluster").unwrap_or_default(),
        s.request_header("x-maille-variant").unwrap_or_default(),
    )
}

const SPLIT: &str = r#"{
  "targets": [{"name": "stable", "cluster": "svc-v1", "weight": 90},
              {"name": "canary", "cluster": "svc-v2", "weight": 10}],
  "sticky": {"header": "x-user-id"},
  "rules": [
    {"match": {"headers": [{"name": "x-canary", "match": {"exact": "always"}}]}, "target": "canary"},
    {"match": {"prefix": "/beta/", "method": "POST",
               "cookies": [{"name": "tier", "match": {"regex": "gold|platinum"}}],
               "queryParameters": [{"name": "v", "match": {"range": {"start": 2, "end": 4}}}]},
     "target": "canary"}
  ]
}"#;

#[test]
fn rules_route_to_the_canary_and_set_both_headers() {
    let host = Host::new();
    let mut vm = canary(&host, SPLIT);
    assert_eq!(
        route(&mut vm, &[("x-canary", "always")]),
        ("svc-v2".into(), "canary".into())
    );
    let beta = [
        (":method", "POST"),
        (":path", "/beta/x?v=3"),
        ("cookie", "a=1; tier=gold"),
    ];
    assert_eq!(route(&mut vm, &beta).1, "canary");
    // One condition off and the rule does not hold: the split decides (random, 90/10).
    let mut off = beta;
    off[1] = (":path", "/beta/x?v=4");
    let rule_hits = host.metric("maille_canary.decisions.canary.rule");
    route(&mut vm, &off);
    assert_eq!(
        host.metric("maille_canary.decisions.canary.rule"),
        rule_hits
    );
    assert_eq!(rule_hits, Some(2));
}

#[test]
fn a_client_cannot_pick_the_cluster() {
    let host = Host::new();
    let mut vm = canary(
        &host,
        r#"{"targets": [{"name": "stable", "cluster": "svc-v1", "weight": 1},
                        {"name": "canary", "cluster": "svc-v2", "weight": 0}]}"#,
    );
    let s = vm
        .request(&[
            ("x-maille-cluster", "svc-v2"),
            ("X-Maille-Variant", "canary"),
        ])
        .unwrap();
    let headers = s.request_headers_now();
    let clusters: Vec<_> = headers
        .iter()
        .filter(|(k, _)| k == "x-maille-cluster")
        .collect();
    assert_eq!(clusters.len(), 1, "{headers:?}");
    assert_eq!(clusters[0].1, "svc-v1");
    assert_eq!(
        s.request_header("x-maille-variant").as_deref(),
        Some("stable")
    );
}

#[test]
fn split_is_90_10_and_counted() {
    let host = Host::new();
    let mut vm = canary(&host, SPLIT);
    let n = 5_000;
    let canary = (0..n).filter(|_| route(&mut vm, &[]).1 == "canary").count();
    let share = canary as f64 / n as f64;
    assert!((0.08..=0.12).contains(&share), "canary share {share}");
    assert_eq!(
        host.metric("maille_canary.decisions.canary.random"),
        Some(canary as u64)
    );
    assert_eq!(
        host.metric("maille_canary.decisions.stable.random"),
        Some((n - canary) as u64)
    );
}

#[test]
fn sticky_users_stay_and_survive_a_weight_increase_across_workers() {
    let host = Host::new();
    let users: Vec<String> = (0..1_000).map(|i| format!("u{i}")).collect();
    let mut worker1 = canary(&host, SPLIT);
    let mut worker2 = canary(&host, SPLIT);
    let mut before = HashMap::new();
    for u in &users {
        let a = route(&mut worker1, &[("x-user-id", u)]);
        // The other worker, and a repeat, agree.
        assert_eq!(route(&mut worker2, &[("x-user-id", u)]), a, "{u}");
        assert_eq!(route(&mut worker1, &[("x-user-id", u)]), a, "{u}");
        before.insert(u.clone(), a.1);
    }
    let mut grown = canary(
        &host,
        &SPLIT
            .replace("\"weight\": 90", "\"weight\": 80")
            .replace("\"weight\": 10", "\"weight\": 20"),
    );
    let mut moved_on = 0;
    for u in &users {
        let after = route(&mut grown, &[("x-user-id", u)]).1;
        if before[u] == "canary" {
            assert_eq!(after, "canary", "{u} left the canary");
        } else if after == "canary" {
            moved_on += 1;
        }
    }
    assert!(
        moved_on > 50,
        "only {moved_on} users joined the canary at 20%"
    );
}

#[test]
fn bad_configs_are_refused_at_configure_with_the_field_named() {
    let host = Host::new();
    let cases = [
        (
            r#"{"targets": [{"name": "a", "cluster": "c", "weight": 1}], "stickey": {}}"#,
            "unknown field `stickey`",
        ),
        (
            r#"{"targets": [{"name": "a", "cluster": "c", "weight": 0}]}"#,
            "targets: the weights sum to 0",
        ),
        (
            r#"{"targets": [{"name": "a", "cluster": "c", "weight": 1}],
                "rules": [{"match": {"headers": [{"name": "x", "match": {"regex": "a{99999999}"}}]}, "target": "a"}]}"#,
            "rules[0].match.headers[0].match.regex: invalid regex",
        ),
        ("not json", "expected ident"),
        ("", "no configuration"),
    ];
    for (config, expected) in cases {
        let mut vm = host.load(filter_wasm("canary")).unwrap();
        match vm.configure(config.as_bytes()) {
            Err(Error::Refused { callback, log }) => {
                assert_eq!(callback, "proxy_on_configure");
                assert!(
                    log.iter().any(|l| l.contains(expected)),
                    "{expected:?} not in {log:?}"
                );
            }
            other => panic!("config {config:?} was not refused: {other:?}"),
        }
    }
}

#[test]
fn module_exports_only_what_it_uses_and_logs_its_configuration() {
    let host = Host::new();
    let mut vm = canary(&host, SPLIT);
    // A response passes untouched: the module has no response callbacks at all.
    let mut s = vm.request(&[]).unwrap();
    assert_eq!(
        s.response_headers(&[(":status", "200")], true).unwrap(),
        Action::Continue
    );
    s.finish().unwrap();
    assert!(vm
        .log_lines(LogLevel::Info)
        .iter()
        .any(|l| l.contains("configured 2 target(s)")));
}
