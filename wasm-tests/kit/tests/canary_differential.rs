//! The same request sequences through the canary filter in real Envoy (canary.wasm on V8,
//! or the native dynamic module) and through canary.wasm in the wasmtime host: the same
//! routing outcome for every request, and the same metric counts at the end. With the native
//! module in Envoy this holds the two builds of the filter to each other.

use std::collections::HashMap;

use maille_testkit::{agent, filter_wasm, for_each_runtime, Runtime};
use maille_testkit::{start_canary_on, Upstreams};
use maille_wasm_host::Host;

for_each_runtime!(envoy_and_the_host_route_alike_and_count_alike);

const CONFIG: &str = r#"{
  "targets": [{"name": "stable", "cluster": "stable", "weight": 70},
              {"name": "canary", "cluster": "canary", "weight": 30}],
  "sticky": {"header": "x-user-id"},
  "rules": [
    {"match": {"headers": [{"name": "x-canary", "match": {"exact": "always"}}]}, "target": "canary"},
    {"match": {"headers": [{"name": "x-canary", "match": {"exact": "never"}}]}, "target": "stable"},
    {"match": {"cookies": [{"name": "tier", "match": {"regex": "gold|platinum"}}]}, "target": "canary"},
    {"match": {"prefix": "/beta/", "method": "POST",
               "queryParameters": [{"name": "v", "match": {"range": {"start": 2, "end": 4}}}]},
     "target": "canary"}
  ]
}"#;

struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
}

/// Deterministic sequences: rules, near misses, and sticky users (no random-split requests,
/// whose draws differ between runs by design).
fn sequences() -> Vec<Vec<Req>> {
    let mut seqs = Vec::new();
    for seq in 0..4 {
        let mut reqs = Vec::new();
        for i in 0..40 {
            let user = format!("user-{}", (i * 7 + seq * 13) % 23);
            let get = |path: &str, headers: Vec<(&'static str, String)>| Req {
                method: "GET",
                path: path.to_owned(),
                headers,
            };
            reqs.push(match (i + seq) % 8 {
                0 => get(
                    "/",
                    vec![("x-canary", "always".into()), ("x-user-id", user)],
                ),
                1 => get("/", vec![("x-canary", "never".into())]),
                2 => get(
                    "/",
                    vec![
                        ("cookie", format!("a=1; tier={}", ["gold", "silver"][i % 2])),
                        ("x-user-id", user),
                    ],
                ),
                3 => Req {
                    method: "POST",
                    path: format!("/beta/x?v={}", i % 5),
                    headers: vec![("x-user-id", user)],
                },
                4 => get("/beta/x?v=3", vec![("x-user-id", user)]),
                5 => get(
                    "/",
                    vec![("x-canary", "Always".into()), ("x-user-id", user)],
                ),
                _ => get("/", vec![("x-user-id", user)]),
            });
        }
        seqs.push(reqs);
    }
    seqs
}

fn envoy_and_the_host_route_alike_and_count_alike(runtime: Runtime) {
    let up = Upstreams::start();
    let (envoy, port) = start_canary_on(runtime, &up, CONFIG)
        .unwrap_or_else(|e| panic!("Envoy refused the config: {}\n{}", e.status, e.log));
    let http = agent();

    let host = Host::new();
    let mut vm = host.load(filter_wasm("canary")).unwrap();
    vm.configure(CONFIG.as_bytes()).unwrap();

    for (n, seq) in sequences().iter().enumerate() {
        for (i, r) in seq.iter().enumerate() {
            let url = format!("http://127.0.0.1:{port}{}", r.path);
            let mut req = ureq::http::Request::builder().method(r.method).uri(&url);
            for (k, v) in &r.headers {
                req = req.header(*k, v.as_str());
            }
            let mut resp = http
                .run(req.body(()).unwrap())
                .expect("request through Envoy");
            let in_envoy = resp.body_mut().read_to_string().unwrap().trim().to_owned();

            let mut pairs = vec![
                (":method", r.method),
                (":path", r.path.as_str()),
                (":authority", "app"),
            ];
            pairs.extend(r.headers.iter().map(|(k, v)| (*k, v.as_str())));
            let in_host = vm
                .request(&pairs)
                .unwrap()
                .request_header("x-maille-cluster")
                .unwrap();
            assert_eq!(
                in_envoy, in_host,
                "sequence {n} request {i}: {} {} {:?}",
                r.method, r.path, r.headers
            );
        }
    }

    let prefix = runtime.stat("");
    let envoy_counts: HashMap<String, u64> = envoy
        .stats("maille_canary.decisions")
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches(prefix.as_str()).to_owned(), v))
        .collect();
    let host_counts = host.metrics();
    assert_eq!(envoy_counts, host_counts);
    assert_eq!(host_counts.values().sum::<u64>(), 160);
    assert!(host_counts["maille_canary.decisions.canary.rule"] > 0);
    assert!(host_counts["maille_canary.decisions.stable.sticky"] > 0);
}
