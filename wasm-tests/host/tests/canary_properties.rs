//! Property tests of canary.wasm in the wasmtime host against the native code it is built
//! from: thousands of random configs and header sets. The module never traps; a config is
//! refused exactly when native validation refuses it (and the log names the first problem);
//! every decision made by a rule or by the sticky key is the one the native router makes.

use std::borrow::Cow;
use std::cell::Cell;

use maille_canary::{Reason, Request, Router};
use maille_filter_config::canary::{
    CanaryConfig, MatchMethod, Range, RequestMatch, Rule, StickyKey, Target, ValueMatch,
};
use maille_testkit::filter_wasm;
use maille_wasm_host::{Error, Host};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const HEADER_NAMES: &[&str] = &[
    "x-canary",
    "x-user-id",
    "x-tier",
    "cookie",
    ":path",
    ":method",
    "x-Mixed-Case",
];
const REGEXES: &[&str] = &[
    "a+",
    "(x",
    "[0-9]{2,4}",
    "a{99999999}",
    ".*",
    r"\d+",
    "(?i)gold",
    "[z-a]",
    "^$",
    "é+",
];

/// Values for headers and match strings; mostly short printable ASCII.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[ -~]{1,10}",
        1 => Just(String::new()),
        1 => "\\PC{1,6}",
        4 => prop::sample::select(vec!["always", "gold", "GOLD", "12", "-3", "u1"]).prop_map(String::from),
    ]
}

fn match_method() -> impl Strategy<Value = Option<MatchMethod>> {
    prop_oneof![
        2 => Just(None),
        3 => value().prop_map(|v| Some(MatchMethod::Exact(v))),
        2 => value().prop_map(|v| Some(MatchMethod::Prefix(v))),
        2 => value().prop_map(|v| Some(MatchMethod::Suffix(v))),
        2 => prop::sample::select(REGEXES).prop_map(|r| Some(MatchMethod::Regex(r.to_owned()))),
        2 => (-20i64..20, 0i64..40).prop_map(|(start, len)| Some(MatchMethod::Range(Range { start, end: start + len }))),
        1 => any::<bool>().prop_map(|p| Some(MatchMethod::Present(p))),
    ]
}

fn value_match(
    names: &'static [&'static str],
    bad: &'static str,
) -> impl Strategy<Value = ValueMatch> {
    let name = prop_oneof![19 => prop::sample::select(names), 1 => Just(bad)];
    (name, any::<bool>(), match_method()).prop_map(|(name, invert, method)| ValueMatch {
        name: name.to_owned(),
        invert,
        method,
    })
}

fn rule(target_names: Vec<String>) -> impl Strategy<Value = Rule> {
    let target =
        prop_oneof![19 => prop::sample::select(target_names), 1 => Just("nope".to_owned())];
    (
        prop::option::of(prop_oneof![9 => "/[a-z]{0,4}", 1 => "[a-z]{1,3}"]),
        prop::option::of(prop_oneof![9 => prop::sample::select(vec!["GET", "POST"]).prop_map(String::from), 1 => Just("FETCH".to_owned())]),
        prop::collection::vec(value_match(&["x-canary", "x-tier", "x-Mixed-Case"], "bad name"), 0..3),
        prop::collection::vec(value_match(&["beta", "uid"], "b;d"), 0..2),
        prop::collection::vec(value_match(&["v", "debug"], "a b"), 0..2),
        target,
    )
        .prop_map(|(prefix, method, headers, cookies, query_parameters, target)| Rule {
            matches: RequestMatch { prefix, method, headers, cookies, query_parameters },
            target,
        })
}

fn config() -> impl Strategy<Value = CanaryConfig> {
    // Names t0, t1, ... (now and then a bad or duplicate one), non-empty clusters (now and
    // then an empty one), weights mostly in range: most configs are valid.
    let target = (
        prop_oneof![30 => Just(None), 1 => Just(Some("bad name")), 1 => Just(Some("t0"))],
        prop_oneof![30 => "[a-z-]{1,6}", 1 => Just(String::new())],
        prop_oneof![30 => 0u32..=100, 1 => 101u32..200],
    );
    prop::collection::vec(target, 1..11)
        .prop_map(|ts| {
            ts.into_iter()
                .enumerate()
                .map(|(i, (name, cluster, weight))| Target {
                    name: name.map_or_else(|| format!("t{i}"), str::to_owned),
                    cluster,
                    weight,
                })
                .collect::<Vec<_>>()
        })
        .prop_flat_map(|targets| {
            let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
            (
                Just(targets),
                prop::collection::vec(rule(names), 0..4),
                prop::option::of(prop_oneof![
                    Just(StickyKey::Header("x-user-id".into())),
                    Just(StickyKey::Cookie("uid".into())),
                ]),
            )
                .prop_map(|(targets, rules, sticky)| CanaryConfig {
                    targets,
                    rules,
                    sticky,
                    cluster_header: "x-maille-cluster".into(),
                    variant_header: "x-maille-variant".into(),
                })
        })
}

fn request() -> impl Strategy<Value = Vec<(String, String)>> {
    let pair = prop_oneof![
        (
            prop::sample::select(HEADER_NAMES).prop_map(String::from),
            value()
        ),
        ("[a-z-]{1,8}", value()),
        (
            "cookie".prop_map(String::from),
            "((beta|uid|x)=[a-z0-9\"]{0,4}; ?){0,3}"
        ),
        (
            ":path".prop_map(String::from),
            "/[a-z]{0,3}(\\?((v|debug)(=[0-9]{0,2})?&?){0,3})?"
        ),
    ];
    // Most requests carry a user id (header and cookie), so sticky decisions are compared.
    (
        prop::collection::vec(pair, 0..6),
        prop::option::weighted(0.8, "u[0-9]{1,3}"),
    )
        .prop_map(|(mut pairs, user)| {
            if let Some(u) = user {
                pairs.push(("x-user-id".into(), u.clone()));
                pairs.push(("cookie".into(), format!("uid={u}")));
            }
            pairs
        })
}

/// Headers as the native router sees them: lowercase names, first value wins.
struct Native<'a>(&'a [(String, String)]);

impl Request for Native<'_> {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| Cow::Borrowed(v.as_str()))
    }
}

#[test]
fn random_configs_are_refused_or_accepted_as_native_validation_says_and_route_alike() {
    let host = Host::new();
    let wasm = filter_wasm("canary");
    let mut runner = TestRunner::new(Config {
        cases: 800,
        ..Config::default()
    });
    let strategy = (config(), prop::collection::vec(request(), 16));
    let (accepted, compared) = (Cell::new(0), Cell::new(0));
    runner
        .run(&strategy, |(config, requests)| {
            let json = config.to_json();
            let mut vm = host.load(&wasm).expect("load");
            match (config.validate(), vm.configure(json.as_bytes())) {
                (Ok(()), Ok(())) => {}
                (Err(native), Err(Error::Refused { log, .. })) => {
                    let first = &native.errors[0];
                    prop_assert!(
                        log.iter().any(|l| l.contains(&first.to_string())),
                        "refused, but the log {:?} does not name {}",
                        log,
                        first
                    );
                    return Ok(());
                }
                (native, wasm) => {
                    return Err(TestCaseError::fail(format!(
                        "native validation {native:?} but the module said {wasm:?} for {json}"
                    )))
                }
            }
            accepted.set(accepted.get() + 1);
            let router = Router::new(&config).expect("valid");
            for headers in &requests {
                let pairs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let s = vm
                    .request(&pairs)
                    .map_err(|e| TestCaseError::fail(format!("{e} on {headers:?} with {json}")))?;
                let cluster = s.request_header("x-maille-cluster");
                let decision = router.decide(&Native(headers), 0);
                prop_assert!(cluster.is_some(), "no cluster header for {:?}", headers);
                if decision.reason != Reason::Random {
                    compared.set(compared.get() + 1);
                    prop_assert_eq!(
                        cluster.as_deref(),
                        Some(router.targets()[decision.target].cluster.as_str()),
                        "{:?} {:?} with {}",
                        decision,
                        headers,
                        json
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    // The test must exercise routing, not only refusals.
    eprintln!(
        "{} of 800 configs accepted, {} decisions compared",
        accepted.get(),
        compared.get()
    );
    assert!(
        accepted.get() >= 160,
        "only {} configs were valid",
        accepted.get()
    );
    assert!(
        compared.get() >= 800,
        "only {} decisions compared",
        compared.get()
    );
}

#[test]
fn junk_configurations_never_trap_and_are_refused_as_natively() {
    let host = Host::new();
    let wasm = filter_wasm("canary");
    let junk = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        "[{}\\[\\]\":,a-z0-9 ]{0,40}".prop_map(String::into_bytes),
        config().prop_map(|c| {
            // Valid JSON, mutated: a field renamed or a value of the wrong type.
            c.to_json()
                .replacen("weight", "wieght", 1)
                .replacen("\"name\"", "\"name\":1,\"x\"", 1)
                .into_bytes()
        }),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 600,
        ..Config::default()
    });
    runner
        .run(&junk, |bytes| {
            let mut vm = host.load(&wasm).expect("load");
            let native = CanaryConfig::from_json(&bytes);
            match (native, vm.configure(&bytes)) {
                (Ok(_), Ok(())) | (Err(_), Err(Error::Refused { .. })) => Ok(()),
                (native, wasm) => Err(TestCaseError::fail(format!(
                    "native {native:?}, module {wasm:?} for {:?}",
                    String::from_utf8_lossy(&bytes)
                ))),
            }
        })
        .unwrap();
}
