//! Golden tests of what every ColorTeller node's Envoy gets, and a consistency check of every
//! example: each RDS, EDS, ECDS and cluster name referenced exists. No Envoy, no server: part
//! of the fast tier.
//!
//! The goldens (`tests/golden/<example>/<node>.json`) are Envoy's own JSON of the resources
//! (proto field names, `Any`s expanded), so a diff reads like an Envoy config dump. After an
//! intended change, `MAILLE_BLESS=1 cargo test -p maille-translate --test golden` rewrites
//! them; review the diff before committing it.

use maille_model::{Resource, Resources};
use maille_translate::{node_config, Module, NodeConfig, NodeOptions, World};
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, SerializeOptions};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Envoy's protos, from the envoy-types crate's own copy, compiled once.
fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            // This platform's packages only: the others need not be downloaded.
            .args(["metadata", "--format-version", "1", "--locked", "--offline"])
            .args([
                "--filter-platform",
                &format!("{}-unknown-linux-gnu", std::env::consts::ARCH),
            ])
            .current_dir(repo())
            .output()
            .expect("cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
        let manifest = meta["packages"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "envoy-types"))
            .and_then(|p| p["manifest_path"].as_str())
            .expect("envoy-types in the dependency graph");
        let proto = Path::new(manifest).parent().unwrap().join("proto");
        let includes: Vec<PathBuf> = [
            "data-plane-api",
            "xds",
            "protoc-gen-validate",
            "googleapis",
            "cel-spec",
            "opentelemetry-proto",
            "client_model",
        ]
        .iter()
        .map(|d| proto.join(d))
        .collect();
        let files = [
            "envoy/config/listener/v3/listener.proto",
            "envoy/config/route/v3/route.proto",
            "envoy/config/cluster/v3/cluster.proto",
            "envoy/config/endpoint/v3/endpoint.proto",
            "envoy/config/core/v3/extension.proto",
            "envoy/config/trace/v3/opentelemetry.proto",
            "envoy/extensions/access_loggers/open_telemetry/v3/logs_service.proto",
            "envoy/extensions/access_loggers/file/v3/file.proto",
            "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
            "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
            "envoy/extensions/filters/http/router/v3/router.proto",
            "envoy/extensions/filters/http/rbac/v3/rbac.proto",
            "envoy/extensions/filters/network/rbac/v3/rbac.proto",
            "envoy/extensions/filters/http/wasm/v3/wasm.proto",
            "envoy/extensions/filters/http/dynamic_modules/v3/dynamic_modules.proto",
            "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
            "envoy/extensions/transport_sockets/tls/v3/tls.proto",
            "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
            "envoy/extensions/http/early_header_mutation/header_mutation/v3/header_mutation.proto",
            "google/protobuf/empty.proto",
        ];
        let fds = protox::compile(files, &includes).expect("Envoy's protos compile");
        DescriptorPool::from_file_descriptor_set(fds).expect("descriptor pool")
    })
}

/// A message as Envoy writes it in a config dump.
fn envoy_json<T: Message + Name>(m: &T) -> Value {
    let desc = pool()
        .get_message_by_name(&T::full_name())
        .unwrap_or_else(|| panic!("{} is not in the compiled protos", T::full_name()));
    let mut dm = DynamicMessage::decode(desc, m.encode_to_vec().as_slice()).expect("decodes");
    expand_anys(&mut dm);
    let mut ser = serde_json::Serializer::new(Vec::new());
    dm.serialize_with_options(
        &mut ser,
        &SerializeOptions::new().use_proto_field_name(true),
    )
    .unwrap_or_else(|e| panic!("{}: {e} (an Any of a type not compiled?)", T::full_name()));
    serde_json::from_slice(&ser.into_inner()).unwrap()
}

/// Makes every `Any` printable: an empty one (which enables a filter on a route) is shown as
/// `google.protobuf.Empty`, and the contents of the others are made printable in turn.
fn expand_anys(m: &mut DynamicMessage) {
    use prost_reflect::Value as V;
    fn walk(v: &mut V) {
        match v {
            V::Message(m) => {
                if m.descriptor().full_name() == "google.protobuf.Any" {
                    any(m)
                } else {
                    expand_anys(m)
                }
            }
            V::List(items) => items.iter_mut().for_each(walk),
            V::Map(entries) => entries.values_mut().for_each(walk),
            _ => {}
        }
    }
    fn any(m: &mut DynamicMessage) {
        let url = m
            .get_field_by_name("type_url")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if url.is_empty() {
            m.set_field_by_name(
                "type_url",
                V::String("type.googleapis.com/google.protobuf.Empty".into()),
            );
            return;
        }
        let name = url.rsplit('/').next().unwrap_or_default();
        let Some(desc) = pool().get_message_by_name(name) else {
            return;
        };
        let bytes = m
            .get_field_by_name("value")
            .and_then(|v| v.as_bytes().cloned())
            .unwrap_or_default();
        if let Ok(mut inner) = DynamicMessage::decode(desc, bytes) {
            expand_anys(&mut inner);
            m.set_field_by_name("value", V::Bytes(inner.encode_to_vec().into()));
        }
    }
    for (_, v) in m.fields_mut() {
        walk(v);
    }
}

fn config_json(cfg: &NodeConfig) -> Value {
    json!({
        "listeners": cfg.listeners.iter().map(envoy_json).collect::<Vec<_>>(),
        "routes": cfg.routes.iter().map(envoy_json).collect::<Vec<_>>(),
        "clusters": cfg.clusters.iter().map(envoy_json).collect::<Vec<_>>(),
        "endpoints": cfg.endpoints.iter().map(envoy_json).collect::<Vec<_>>(),
        "filters": cfg.filters.iter().map(envoy_json).collect::<Vec<_>>(),
        "warnings": cfg.warnings,
    })
}

/// The modules a server would serve, with fixed hashes so that goldens do not follow builds.
fn modules() -> BTreeMap<String, Module> {
    [
        "canary.wasm",
        "breaker.wasm",
        "libmaille_canary.so",
        "libmaille_breaker.so",
    ]
    .into_iter()
    .enumerate()
    .map(|(i, n)| {
        let sha = format!("{:0>64}", i + 1);
        (
            n.to_owned(),
            Module {
                url: format!("http://127.0.0.1:18080/v1/modules/{n}?sha256={sha}"),
                sha256: sha,
            },
        )
    })
    .collect()
}

fn load(rel: &str) -> Resources {
    let i = maille_import::import_paths(&[repo().join(rel)], &Default::default())
        .unwrap_or_else(|e| panic!("{rel}: {e:?}"));
    let r = maille_model::resources(i.resources);
    maille_model::check_all(&r).unwrap_or_else(|e| panic!("{rel}: {e}"));
    r
}

fn nodes(r: &Resources) -> Vec<(String, String)> {
    r.values()
        .filter_map(|r| match r.as_ref() {
            Resource::VirtualNode(n) => Some((n.mesh_name.clone(), n.virtual_node_name.clone())),
            _ => None,
        })
        .collect()
}

/// Every value under a key named `key`, anywhere in `v`.
fn values_of<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    out.push(x);
                }
                values_of(x, key, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| values_of(x, key, out)),
        _ => {}
    }
}

fn strings<'a>(v: &'a Value, key: &str) -> BTreeSet<&'a str> {
    let mut out = Vec::new();
    values_of(v, key, &mut out);
    out.into_iter().filter_map(Value::as_str).collect()
}

/// What a node's resources refer to exists among them.
fn check_consistent(node: &str, j: &Value) {
    let names = |what: &str, key: &str| -> BTreeSet<String> {
        j[what]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[key].as_str().unwrap().to_owned())
            .collect()
    };
    let routes = names("routes", "name");
    let clusters = names("clusters", "name");
    let endpoints = names("endpoints", "cluster_name");
    let filters = names("filters", "name");
    for rds in strings(&j["listeners"], "route_config_name") {
        assert!(routes.contains(rds), "{node}: RDS {rds:?} is not served");
    }
    for r in j["routes"].as_array().unwrap() {
        let mut refs = strings(r, "cluster");
        // weighted_clusters name their clusters in `name`.
        let mut weighted = Vec::new();
        values_of(r, "weighted_clusters", &mut weighted);
        for w in weighted {
            refs.extend(strings(w, "name"));
        }
        for c in refs {
            assert!(
                clusters.contains(c),
                "{node}: route cluster {c:?} is not served"
            );
        }
    }
    for l in j["listeners"].as_array().unwrap() {
        for c in strings(l, "cluster") {
            assert!(
                clusters.contains(c),
                "{node}: listener cluster {c:?} is not served"
            );
        }
    }
    for c in j["clusters"].as_array().unwrap() {
        if c["type"] == "EDS" {
            let n = c["name"].as_str().unwrap();
            assert!(
                endpoints.contains(n),
                "{node}: EDS cluster {n:?} has no assignment"
            );
        }
    }
    // ECDS: every filter an HTTP connection manager asks for is served, and every filter a
    // route enables is in the chain.
    let mut chain = BTreeSet::new();
    let mut hf = Vec::new();
    values_of(&j["listeners"], "http_filters", &mut hf);
    for list in hf {
        for f in list.as_array().unwrap() {
            let n = f["name"].as_str().unwrap();
            if f.get("config_discovery").is_some() {
                assert!(
                    filters.contains(n),
                    "{node}: ECDS filter {n:?} is not served"
                );
            }
            chain.insert(n.to_owned());
        }
    }
    let mut per_route = Vec::new();
    values_of(&j["routes"], "typed_per_filter_config", &mut per_route);
    for m in per_route {
        for k in m.as_object().unwrap().keys() {
            assert!(
                chain.contains(k),
                "{node}: a route enables {k:?}, not in any chain"
            );
        }
    }
}

fn golden(example: &str, rel: &str, opts: &[(&str, NodeOptions)]) {
    let resources = load(rel);
    let modules = modules();
    let callers = maille_translate::callers(&resources);
    let world = World {
        resources: &resources,
        modules: &modules,
        cloud_map: &maille_translate::NO_CLOUD_MAP,
        callers: &callers,
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(example);
    let bless = std::env::var_os("MAILLE_BLESS").is_some();
    let mut mismatched = Vec::new();
    for (mesh, node) in nodes(&resources) {
        let o = opts
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
        let cfg = node_config(world, &mesh, &node, &o);
        let got = config_json(&cfg);
        check_consistent(&node, &got);
        let path = dir.join(format!("{node}.json"));
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; write it with MAILLE_BLESS=1 cargo test -p maille-translate --test golden",
                path.display()
            )
        });
        if want != text {
            mismatched.push(path.display().to_string());
        }
    }
    assert!(
        mismatched.is_empty(),
        "Envoy resources differ from the goldens (see `git diff` after MAILLE_BLESS=1): {mismatched:?}"
    );
}

#[test]
fn the_colorteller_mesh_of_the_app_mesh_examples() {
    golden(
        "colorteller",
        "deploy/examples/colorteller/appmesh-api.json",
        &[],
    );
}

#[test]
fn the_demo_mesh_with_its_breaker_and_tracing() {
    golden(
        "colorteller-local",
        "deploy/examples/colorteller/local/colorapp.json",
        &[(
            "colorgateway",
            NodeOptions {
                otlp_port: Some(4317),
                ..NodeOptions::default()
            },
        )],
    );
}

#[test]
fn every_example_translates_to_consistent_resources() {
    let modules = modules();
    for rel in [
        "deploy/examples/colorteller/appmesh-api.json",
        "deploy/examples/colorteller/appmesh-cloudformation.yaml",
        "deploy/examples/colorteller/appmesh-terraform.tf",
        "deploy/examples/colorteller/local/colorapp.json",
    ] {
        let resources = load(rel);
        let callers = maille_translate::callers(&resources);
        let world = World {
            resources: &resources,
            modules: &modules,
            cloud_map: &maille_translate::NO_CLOUD_MAP,
            callers: &callers,
        };
        let ns = nodes(&resources);
        assert!(ns.len() >= 5, "{rel}");
        for (mesh, node) in ns {
            let cfg = node_config(world, &mesh, &node, &NodeOptions::default());
            assert!(!cfg.listeners.is_empty(), "{rel}: {node} has no listener");
            check_consistent(&format!("{rel}: {node}"), &config_json(&cfg));
        }
    }
}

#[test]
fn the_consistency_check_catches_a_dangling_name() {
    // The check itself: a route config name nobody serves is caught.
    let resources = load("deploy/examples/colorteller/appmesh-api.json");
    let modules = modules();
    let callers = maille_translate::callers(&resources);
    let world = World {
        resources: &resources,
        modules: &modules,
        cloud_map: &maille_translate::NO_CLOUD_MAP,
        callers: &callers,
    };
    let (mesh, node) = nodes(&resources)
        .into_iter()
        .find(|(_, n)| n == "colorgateway")
        .unwrap();
    let mut cfg = node_config(world, &mesh, &node, &NodeOptions::default());
    cfg.routes.retain(|r| r.name != "egress");
    let j = config_json(&cfg);
    let caught = std::panic::catch_unwind(|| check_consistent("gateway", &j));
    assert!(caught.is_err(), "a missing RDS went unnoticed");
}

/// The demo mesh with the weighted route's targets and stickiness replaced.
fn with_route(targets: &[(&str, u32)], sticky: bool) -> Resources {
    let mut r = load("deploy/examples/colorteller/local/colorapp.json");
    let key = r
        .keys()
        .find(|k| k.name == "colorteller-vr/colorteller-route")
        .unwrap()
        .clone();
    let mut route = (*r[&key]).clone();
    if let Resource::Route(rt) = &mut route {
        let action = &mut rt.spec.http_route.as_mut().unwrap().action;
        action.weighted_targets = targets
            .iter()
            .map(|(n, w)| maille_model::WeightedTarget {
                virtual_node: (*n).into(),
                weight: *w,
                port: None,
            })
            .collect();
        rt.maille = sticky.then(|| maille_model::RouteOptions {
            sticky: Some(maille_model::Sticky {
                header: Some("X-User-Id".into()),
                cookie: None,
            }),
        });
    }
    r.insert(key, std::sync::Arc::new(route));
    r
}

fn gateway_json(r: &Resources) -> Value {
    let modules = modules();
    let callers = maille_translate::callers(r);
    let world = World {
        resources: r,
        modules: &modules,
        cloud_map: &maille_translate::NO_CLOUD_MAP,
        callers: &callers,
    };
    config_json(&node_config(
        world,
        "colorapp",
        "colorgateway",
        &NodeOptions::default(),
    ))
}

fn split_of(j: &Value) -> Value {
    let mut routes = Vec::new();
    values_of(&j["routes"], "routes", &mut routes);
    routes
        .iter()
        .flat_map(|rs| rs.as_array().unwrap())
        .find(|r| r["name"] == "route/colorteller-vr/colorteller-route")
        .unwrap()["route"]
        .clone()
}

#[test]
fn weighted_targets_split_natively_and_sticky_ones_keep_a_constant_total() {
    // Random split: Envoy's weighted clusters with the spec's weights, no canary filter.
    let j = gateway_json(&with_route(
        &[("colorteller-white", 8), ("colorteller-black", 2)],
        false,
    ));
    let route = split_of(&j);
    let clusters = route["weighted_clusters"]["clusters"].as_array().unwrap();
    let weights: Vec<(&str, u64)> = clusters
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["weight"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        weights,
        [
            ("node/colorteller-white/10011", 8),
            ("node/colorteller-black/10012", 2)
        ]
    );
    assert_eq!(
        clusters[1]["request_headers_to_add"][0]["header"]["value"],
        "colorteller-black"
    );
    assert!(route.get("hash_policy").is_none());
    assert!(
        !j["filters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"].as_str().unwrap().starts_with("filter/canary/")),
        "a canary filter where Envoy splits natively"
    );

    // Sticky over two targets: hashed on the header, weights scaled to 10,000 whatever the
    // spec's sum, so raising one's weight moves users onto it only.
    for (w, b) in [(9, 1), (8, 2), (1, 2)] {
        let j = gateway_json(&with_route(
            &[("colorteller-white", w), ("colorteller-black", b)],
            true,
        ));
        let route = split_of(&j);
        assert_eq!(
            route["hash_policy"][0]["header"]["header_name"],
            "x-user-id"
        );
        assert_eq!(route["weighted_clusters"]["use_hash_policy"], true);
        let ws: Vec<u64> = route["weighted_clusters"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["weight"].as_u64().unwrap())
            .collect();
        assert_eq!(ws.iter().sum::<u64>(), 10_000, "{ws:?}");
        assert_eq!(ws[0], u64::from(10_000 * w / (w + b)), "{ws:?}");
    }

    // Sticky over three targets: the canary filter's rendezvous hashing, enabled on this
    // route only.
    let j = gateway_json(&with_route(
        &[
            ("colorteller-white", 6),
            ("colorteller-black", 2),
            ("colorteller-red", 2),
        ],
        true,
    ));
    let route = split_of(&j);
    assert_eq!(route["cluster_header"], "x-maille-cluster");
    let canary = j["filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"].as_str().unwrap().starts_with("filter/canary/"))
        .expect("the canary filter");
    // Maille's own filter runs native: the dynamic module, fetched from the server.
    assert_eq!(
        canary["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
    );
    assert_eq!(
        canary.pointer("/typed_config/dynamic_module_config/module/remote/sha256"),
        Some(&json!(format!("{:0>64}", 3)))
    );
    let config = canary.pointer("/typed_config/filter_config/value").unwrap();
    assert!(
        config
            .as_str()
            .unwrap()
            .contains(r#""sticky":{"header":"x-user-id"}"#),
        "{config}"
    );
}

#[test]
fn access_logs_go_to_the_file_the_spec_names_and_to_the_collector() {
    let mut r = load("deploy/examples/colorteller/local/colorapp.json");
    let key = r
        .keys()
        .find(|k| k.name == "colorgateway")
        .expect("the gateway node")
        .clone();
    let mut node = (*r[&key]).clone();
    if let Resource::VirtualNode(vn) = &mut node {
        vn.spec.logging = Some(
            serde_json::from_value(json!({"accessLog": {"file": {"path": "/var/log/envoy.log",
                "format": {"json": [{"key": "code", "value": "%RESPONSE_CODE%"}]}}}}))
            .unwrap(),
        );
    }
    r.insert(key, std::sync::Arc::new(node));
    let modules = modules();
    let callers = maille_translate::callers(&r);
    let world = World {
        resources: &r,
        modules: &modules,
        cloud_map: &maille_translate::NO_CLOUD_MAP,
        callers: &callers,
    };
    let logs_of = |opts: &NodeOptions| -> Vec<Value> {
        let j = config_json(&node_config(world, "colorapp", "colorgateway", opts));
        let mut logs = Vec::new();
        values_of(&j["listeners"], "access_log", &mut logs);
        logs.into_iter().cloned().collect()
    };
    // Without a collector: the file, on every listener, in the spec's format.
    let plain = logs_of(&NodeOptions::default());
    assert!(!plain.is_empty());
    for l in &plain {
        let l = l.as_array().unwrap();
        assert_eq!(l.len(), 1, "{l:?}");
        assert_eq!(l[0]["typed_config"]["path"], "/var/log/envoy.log");
        assert_eq!(
            l[0]["typed_config"]["log_format"]["json_format"]["code"],
            "%RESPONSE_CODE%"
        );
    }
    // With one: the file and the collector, which gets the default line and the mesh's
    // fields as attributes, and the node as its service.
    let with = logs_of(&NodeOptions {
        otlp_port: Some(4317),
        ..NodeOptions::default()
    });
    assert_eq!(with.len(), plain.len());
    for l in &with {
        let otel = &l.as_array().unwrap()[1]["typed_config"];
        assert_eq!(
            otel["grpc_service"]["envoy_grpc"]["cluster_name"],
            "maille_collector"
        );
        assert!(otel["body"]["string_value"]
            .as_str()
            .unwrap()
            .starts_with("[%START_TIME%] \"%REQ(:METHOD)%"));
        let attrs: BTreeMap<&str, &str> = otel["attributes"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                (
                    kv["key"].as_str().unwrap(),
                    kv["value"]["string_value"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(attrs["trace_id"], "%TRACE_ID%");
        assert_eq!(attrs["upstream_cluster"], "%UPSTREAM_CLUSTER%");
        assert_eq!(attrs["variant"], "%REQ(x-maille-variant)%");
        assert_eq!(attrs["response_code"], "%RESPONSE_CODE%");
        assert_eq!(
            otel["resource_attributes"]["values"][0]["value"]["string_value"],
            "colorgateway"
        );
    }
}

#[test]
fn dns_names_resolve_by_the_nodes_ip_preference_else_the_meshs() {
    let family = |r: &Resources| -> BTreeSet<String> {
        let modules = modules();
        let callers = maille_translate::callers(r);
        let world = World {
            resources: r,
            modules: &modules,
            cloud_map: &maille_translate::NO_CLOUD_MAP,
            callers: &callers,
        };
        let j = config_json(&node_config(
            world,
            "colorapp",
            "colorgateway",
            &NodeOptions::default(),
        ));
        let mut f = Vec::new();
        values_of(&j["clusters"], "dns_lookup_family", &mut f);
        f.iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    };
    let mut r = load("deploy/examples/colorteller/appmesh-api.json");
    assert_eq!(
        family(&r),
        ["V4_PREFERRED".to_string()].into(),
        "App Mesh's default"
    );
    let mesh_key = r
        .keys()
        .find(|k| k.kind == maille_model::Kind::Mesh)
        .unwrap()
        .clone();
    let mut mesh = (*r[&mesh_key]).clone();
    if let Resource::Mesh(m) = &mut mesh {
        m.spec.service_discovery =
            Some(serde_json::from_value(json!({"ipPreference": "IPv6_ONLY"})).unwrap());
    }
    r.insert(mesh_key, std::sync::Arc::new(mesh));
    assert_eq!(family(&r), ["V6_ONLY".to_string()].into(), "the mesh's");
    // A node's own preference wins over the mesh's.
    let white = r
        .keys()
        .find(|k| k.name == "colorteller-white")
        .unwrap()
        .clone();
    let mut node = (*r[&white]).clone();
    if let Resource::VirtualNode(vn) = &mut node {
        vn.spec
            .service_discovery
            .as_mut()
            .and_then(|sd| sd.dns.as_mut())
            .expect("white is found by DNS")
            .ip_preference = Some("IPv4_ONLY".into());
    }
    r.insert(white, std::sync::Arc::new(node));
    assert_eq!(
        family(&r),
        ["V4_ONLY".to_string(), "V6_ONLY".to_string()].into()
    );
}

#[test]
fn a_health_check_port_is_where_envoy_checks_the_application() {
    let checked = |r: &Resources| -> Vec<Value> {
        let modules = modules();
        let callers = maille_translate::callers(r);
        let world = World {
            resources: r,
            modules: &modules,
            cloud_map: &maille_translate::NO_CLOUD_MAP,
            callers: &callers,
        };
        let j = config_json(&node_config(
            world,
            "colorapp",
            "colorteller-white",
            &NodeOptions::default(),
        ));
        let mut f = Vec::new();
        values_of(&j["clusters"], "health_check_config", &mut f);
        f.into_iter().cloned().collect()
    };
    let mut r = load("deploy/examples/colorteller/appmesh-api.json");
    assert!(
        checked(&r).is_empty(),
        "no port: the served port is checked"
    );
    let white = r
        .keys()
        .find(|k| k.name == "colorteller-white")
        .unwrap()
        .clone();
    let mut node = (*r[&white]).clone();
    if let Resource::VirtualNode(vn) = &mut node {
        vn.spec.listeners[0]
            .health_check
            .as_mut()
            .expect("white has a health check")
            .port = Some(9901);
    }
    r.insert(white, std::sync::Arc::new(node));
    maille_model::check_all(&r).expect("valid");
    assert_eq!(checked(&r), vec![json!({"port_value": 9901})]);
}

#[test]
fn cloud_map_instances_become_the_eds_endpoints_of_their_node() {
    use maille_translate::{CloudMap, CloudMapInstance, CloudMapQuery};
    let mut r = load("deploy/examples/colorteller/appmesh-api.json");
    let white = r
        .keys()
        .find(|k| k.name == "colorteller-white")
        .unwrap()
        .clone();
    let mut node = (*r[&white]).clone();
    if let Resource::VirtualNode(vn) = &mut node {
        vn.spec.service_discovery = Some(
            serde_json::from_value(json!({"awsCloudMap": {
                "namespaceName": "demo.local", "serviceName": "white",
                "attributes": [{"key": "stage", "value": "prod"}, {"key": "az", "value": "a"}]}}))
            .unwrap(),
        );
    }
    r.insert(white, std::sync::Arc::new(node));
    maille_model::check_all(&r).expect("valid");
    let endpoints = |cm: &CloudMap| -> Value {
        let modules = modules();
        let callers = maille_translate::callers(&r);
        let world = World {
            resources: &r,
            modules: &modules,
            cloud_map: cm,
            callers: &callers,
        };
        let j = config_json(&node_config(
            world,
            "colorapp",
            "colorgateway",
            &NodeOptions::default(),
        ));
        let Some(eds) = j["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["cluster_name"] == "node/colorteller-white/9080")
            .cloned()
        else {
            return Value::Null;
        };
        let mut out = Vec::new();
        values_of(&eds, "socket_address", &mut out);
        json!(out)
    };
    // Not answered yet: no assignment at all (an Envoy keeps what it has), not an error.
    assert_eq!(endpoints(&CloudMap::new()), Value::Null);
    // The query is the service and its attributes, in key order.
    let q = CloudMapQuery {
        namespace: "demo.local".into(),
        service: "white".into(),
        attributes: vec![("az".into(), "a".into()), ("stage".into(), "prod".into())],
    };
    let instance = |v4: Option<&str>, v6: Option<&str>, port: Option<u32>| CloudMapInstance {
        ipv4: v4.map(Into::into),
        ipv6: v6.map(Into::into),
        port,
    };
    // Answered with no instance: an empty assignment (503s).
    let empty: CloudMap = [(q.clone(), Vec::new())].into();
    assert_eq!(endpoints(&empty), json!([]));
    let cm: CloudMap = [(
        q,
        vec![
            instance(Some("10.0.0.1"), None, Some(8080)),
            instance(Some("10.0.0.2"), Some("fd00::2"), None),
            instance(None, Some("fd00::3"), None),
        ],
    )]
    .into();
    // IPv4 preferred (App Mesh's default): v6 only where there is no v4; the listener's port
    // where the instance gives none.
    assert_eq!(
        endpoints(&cm),
        json!([
            {"address": "10.0.0.1", "port_value": 8080},
            {"address": "10.0.0.2", "port_value": 9080},
            {"address": "fd00::3", "port_value": 9080}
        ])
    );
}
