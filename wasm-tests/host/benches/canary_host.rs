//! Time per request through canary.wasm in the wasmtime host (a whole stream: context
//! create, request headers, delete), and the same decision made natively by the code the
//! module is built from, in the same run. `bench/host.sh` prints the medians and the ratio.

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use maille_canary::{Request, Router};
use maille_testkit::filter_wasm;
use maille_wasm_host::Host;

const CONFIG: &str = r#"{
  "targets": [{"name": "stable", "cluster": "stable", "weight": 90},
              {"name": "canary", "cluster": "canary", "weight": 10}],
  "sticky": {"header": "x-user-id"},
  "rules": [{"match": {"headers": [{"name": "x-canary", "match": {"exact": "always"}}]}, "target": "canary"}]
}"#;

const BASE: [(&str, &str); 5] = [
    (":method", "GET"),
    (":path", "/api/colors?x=1"),
    (":authority", "app.example"),
    ("user-agent", "bench/1.0"),
    ("accept", "*/*"),
];

struct Native<'a>(&'a [(&'a str, &'a str)]);

impl Request for Native<'_> {
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| Cow::Borrowed(*v))
    }
}

fn bench(c: &mut Criterion) {
    let host = Host::new();
    let mut vm = host.load(filter_wasm("canary")).expect("load canary.wasm");
    vm.configure(CONFIG.as_bytes()).expect("configure");
    let router = Router::from_json(CONFIG.as_bytes()).expect("config");

    for (scenario, extra) in [
        ("rule", ("x-canary", "always")),
        ("sticky", ("x-user-id", "user-4242")),
    ] {
        let mut headers = BASE.to_vec();
        headers.push(extra);
        c.bench_function(&format!("host/{scenario}"), |b| {
            b.iter(|| {
                let s = vm.request(black_box(&headers)).expect("request");
                black_box(s.request_header("x-maille-cluster"));
            })
        });
        c.bench_function(&format!("native/{scenario}"), |b| {
            b.iter(|| black_box(router.decide(&Native(black_box(&headers)), 7)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
