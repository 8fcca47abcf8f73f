//! AWS Cloud Map discovery end to end: a node found through `awsCloudMap` (with an attribute
//! filter), its instances registered and deregistered in Cloud Map (moto, through the AWS
//! SDK) while a real Envoy serves, and the traffic following them; Cloud Map going away
//! leaves Envoy on the last instances. One test per binary: it sets the process's AWS
//! environment, which the in-process control server reads as a deployed one would.

mod common;

use common::*;
use maille_testkit::{free_port, Moto};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[test]
fn envoy_follows_cloud_map_instances_as_they_register_and_deregister() {
    let rt = runtime();
    let moto = Moto::start_on(free_port());
    // The control server's AWS chain: what a deployment sets.
    std::env::set_var("AWS_ENDPOINT_URL", moto.url());
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_REGION", "us-east-1");

    let apps = Apps::start(&rt, &["white", "black", "blue"]);
    let sd = CloudMapService::create(&rt, &moto.url());
    let register = |name: &str, stage: &str| sd.register(&rt, &apps, name, stage);
    let deregister = |name: &str| sd.deregister(&rt, name);
    register("white", "prod");
    register("black", "canary"); // not prod: never a target

    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(&rt, &dir.path().join("state.redb"), None);
    let spec = dir.path().join("mesh.json");
    std::fs::write(&spec, cloud_map_mesh().to_string()).unwrap();
    let (ok, out, err) = control.ctl(&["apply", "-f", spec.to_str().unwrap(), "--wait"]);
    assert!(ok, "{out}{err}");
    let (envoy, egress) = control.envoy("demo", "gateway");

    let only = |want: &[&str]| {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        move |t: &BTreeMap<String, usize>| t.keys().cloned().collect::<BTreeSet<_>>() == want
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut watch = |what: &str, want: &[&str]| {
        let is = only(want);
        let t = eventually(what, Duration::from_secs(30), || {
            let t = tally(egress, 30);
            (is(&t), t)
        });
        seen.extend(t.keys().cloned());
        t
    };
    watch("the prod instance serves", &["white"]);
    register("blue", "prod");
    watch("a new prod instance joins", &["white", "blue"]);
    deregister("white");
    watch("a deregistered instance leaves", &["blue"]);
    assert!(
        !seen.contains("black"),
        "an instance without stage=prod was a target"
    );

    // Cloud Map gone: the last instances keep serving (the server logs the failure).
    drop(moto);
    std::thread::sleep(Duration::from_secs(2));
    let t = tally(egress, 30);
    assert_eq!(t.get("blue"), Some(&30), "{t:?}\n{}", envoy.log());

    // The control server restarted while Cloud Map is still away: the Envoy reconnects and,
    // sent nothing for a query not answered yet, keeps the instances it has.
    let mut control = control;
    let (xds, http) = (control.xds_port, control.http_port);
    control.stop(&rt);
    let control = Control::start(&rt, &dir.path().join("state.redb"), Some((xds, http)));
    eventually("the Envoy reconnects", Duration::from_secs(30), || {
        let clients = control.get("/v1/status")["clients"].clone();
        (
            clients
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c.to_string().contains("gateway"))),
            clients,
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    let t = tally(egress, 30);
    assert_eq!(t.get("blue"), Some(&30), "{t:?}\n{}", envoy.log());
}
