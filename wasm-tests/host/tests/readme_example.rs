//! The example of wasm-tests/README.md, kept compiling and passing.

use std::time::Duration;

use maille_testkit::filter_wasm;
use maille_wasm_host::{Action, Error, Host};

#[test]
fn routes_beta_users_to_the_canary() -> Result<(), Error> {
    let host = Host::new(); // clock, shared data, metrics
    let mut vm = host.load(filter_wasm("canary"))?; // one worker
    vm.configure(
        br#"{"targets": [{"name": "stable", "cluster": "v1", "weight": 100},
                         {"name": "canary", "cluster": "v2", "weight": 0}],
             "rules": [{"match": {"headers": [{"name": "x-beta"}]}, "target": "canary"}]}"#,
    )?;

    let s = vm.request(&[(":path", "/"), ("x-beta", "1")])?; // request headers, end of stream
    assert_eq!(s.request_header("x-maille-cluster").as_deref(), Some("v2"));
    drop(s); // on_done, on_log, on_delete

    assert_eq!(host.metric("maille_canary.decisions.canary.rule"), Some(1));

    // Step by step, with a property, and a second worker sharing the host.
    let mut s = vm.stream();
    s.set_upstream_cluster("svc-blue");
    assert_eq!(
        s.request_headers(&[(":path", "/")], true)?,
        Action::Continue
    );
    s.response_headers(&[(":status", "503")], true)?;
    assert!(s.local_response().is_none());
    drop(s);
    let mut worker2 = host.load(filter_wasm("canary"))?;
    worker2.configure(br#"{"targets": [{"name": "stable", "cluster": "v1", "weight": 1}]}"#)?;
    assert_eq!(vm.advance(Duration::from_secs(5))?, 0); // canary sets no timer
    assert_eq!(
        host.metric("maille_canary.decisions.stable.random"),
        Some(1)
    );
    Ok(())
}
