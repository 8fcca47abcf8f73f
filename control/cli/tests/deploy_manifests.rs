//! The deployment files of `deploy/` are checked, not just written: the ECS task definition
//! against the ECS API model botocore ships, its IAM policy for the collector's permissions,
//! the EC2 systemd units with `systemd-analyze verify`, the Kubernetes manifests rendered by
//! kustomize and validated against Kubernetes' OpenAPI schemas; and the Envoy bootstraps the
//! ECS and Kubernetes pods fetch pass `envoy --mode validate`.

mod common;

use maille_control::{start, ServerConfig};
use maille_testkit::{envoy_bin, repo_root};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Runs a command, failing the test with its output when it fails; returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (make setup installs it)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `kubectl kustomize DIR`, as YAML and as a list of JSON objects.
fn kustomize(dir: &Path) -> (String, Vec<Value>) {
    let yaml = run(Command::new(repo_root().join(".venv/bin/kubectl"))
        .arg("kustomize")
        .arg(dir));
    let objects =
        maille_import::yaml_documents(&yaml).unwrap_or_else(|e| panic!("kustomize's output: {e}"));
    (yaml, objects)
}

/// A file holding `text`, in a folder removed when the test process ends.
fn write_temp(text: &str) -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.path().join(format!("{n}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `kubernetes-validate --strict` against Kubernetes 1.33's schemas (EKS's standard support).
fn kube_validate(file: &Path) -> (bool, String) {
    let out = Command::new(repo_root().join(".venv/bin/kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", "1.33.0"])
        .arg(file)
        .output()
        .expect("kubernetes-validate (make setup installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Has Envoy check a bootstrap.
fn envoy_validate(yaml: &str) -> Result<(), String> {
    let path = write_temp(yaml);
    let out = Command::new(envoy_bin())
        .args([
            "--mode",
            "validate",
            "--use-dynamic-base-id",
            "-l",
            "error",
            "-c",
        ])
        .arg(&path)
        .output()
        .expect("run envoy");
    let _ = std::fs::remove_file(&path);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout))
    }
}

#[test]
fn the_kubernetes_manifests_validate_and_their_bootstraps_pass_envoy() {
    let root = repo_root();
    let (yaml, objects) = kustomize(&root.join("deploy/k8s"));
    let file = write_temp(&yaml);
    let (ok, text) = kube_validate(&file);
    assert!(ok, "kubernetes-validate: {text}");
    let kinds =
        |kind: &str| -> Vec<&Value> { objects.iter().filter(|o| o["kind"] == kind).collect() };
    let names = |kind: &str| -> Vec<String> {
        let mut v: Vec<String> = kinds(kind)
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let workloads = [
        "colorgateway",
        "colorteller-black",
        "colorteller-blue",
        "colorteller-red",
        "colorteller-white",
    ];
    let mut expected: Vec<&str> = workloads.to_vec();
    expected.push("maille-control");
    expected.sort();
    assert_eq!(names("Deployment"), expected);
    assert_eq!(names("Service"), expected);

    // The control server the pods' bootstraps come from, advertising its Service's name, with
    // the classic ColorTeller mesh for this cluster's DNS domain.
    let rt = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let control_dns = "maille-control.maille-system.svc.cluster.local";
    let server = rt
        .block_on(start(ServerConfig {
            xds_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            advertise_address: control_dns.into(),
            state_path: Some(dir.path().join("state.redb")),
            etcd: None,
            modules_dir: Some(root.join("target/filters")),
            cloudwatch: None,
            cloud_map_every: std::time::Duration::from_millis(300),
            cert_lifetime: maille_control::ca::DEFAULT_LIFETIME,
            ca_pem: None,
            token_dir: None,
            tls_names: Vec::new(),
            peer_address: None,
            leader_ttl: std::time::Duration::from_secs(2),
        }))
        .unwrap();
    let url = format!("https://127.0.0.1:{}", server.http_port);
    let ca = dir.path().join("maille-ca.pem");
    let state = dir.path().join("state.redb");
    let bootstrap_token = std::fs::read_to_string(dir.path().join("maille-bootstrap.token"))
        .unwrap()
        .trim()
        .to_owned();
    run(Command::new(env!("CARGO_BIN_EXE_maillectl"))
        .env("MAILLE_STATE", dir.path().join("state.redb"))
        .args([
            "--server",
            &url,
            "apply",
            "-p",
            "services_domain=colorapp.svc.cluster.local",
            "-f",
        ])
        .arg(root.join("deploy/examples/colorteller/appmesh-terraform.tf")));

    for d in kinds("Deployment")
        .into_iter()
        .filter(|d| d["metadata"]["namespace"] == "colorapp")
    {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], name,
            "{d}"
        );
        assert_eq!(pod["serviceAccountName"], name);
        let init: Vec<&str> = pod["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(init, ["envoy-bootstrap", "collector", "envoy"], "{name}");
        for sidecar in &pod["initContainers"].as_array().unwrap()[1..] {
            assert_eq!(
                sidecar["restartPolicy"], "Always",
                "{name}: native sidecars"
            );
        }
        let boot = &pod["initContainers"][0];
        let env = |c: &Value, k: &str| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == k)
                .map(|e| e["value"].as_str().unwrap().to_owned())
        };
        assert_eq!(
            env(boot, "MAILLE_SERVER").unwrap(),
            format!("https://{control_dns}:18080")
        );
        let node = env(boot, "MAILLE_NODE").unwrap();
        assert_eq!(node, format!("mesh/colorapp/virtualNode/{name}"));
        // The CA comes from the Secret that holds the token.
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "maille-ca")
            .unwrap_or_else(|| panic!("{name}: no maille-ca volume"));
        assert_eq!(volume["secret"]["secretName"], "maille-bootstrap-token");
        assert_eq!(volume["secret"]["items"][0]["key"], "ca.pem");
        // The pod's own command, run here against the test's server under the name the pod
        // uses (curl checks the certificate names it and chains to the CA): Envoy takes
        // what it gets.
        let script = boot["command"][2].as_str().unwrap();
        assert!(script.starts_with("curl "), "{script}");
        let out = dir.path().join(format!("{name}.yaml"));
        let here = script
            .replacen(
                "curl ",
                &format!(
                    "curl --resolve {control_dns}:{}:127.0.0.1 ",
                    server.http_port
                ),
                1,
            )
            .replace(
                "$(MAILLE_SERVER)",
                &format!("https://{control_dns}:{}", server.http_port),
            )
            .replace("$(MAILLE_NODE)", &node)
            .replace("$(MAILLE_BOOTSTRAP_TOKEN)", &bootstrap_token)
            .replace("/etc/envoy/envoy.yaml", &out.display().to_string())
            .replace("/etc/maille/ca.pem", &ca.display().to_string());
        let fetched = Command::new("sh").args(["-c", &here]).output().unwrap();
        assert!(
            fetched.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&fetched.stderr)
        );
        let body = std::fs::read_to_string(&out).unwrap();
        assert!(
            body.contains(control_dns) && body.contains("maille_collector"),
            "{name}: {body}"
        );
        envoy_validate(&body).unwrap_or_else(|e| panic!("{name}'s bootstrap: {e}\n{body}"));
        let app = &pod["containers"][0];
        if name == "colorgateway" {
            assert_eq!(app["args"][0], "gateway");
            assert_eq!(
                env(app, "COLORAPP_SERVICE").unwrap(),
                "colorteller.colorapp.svc.cluster.local"
            );
        } else {
            assert_eq!(app["args"][0], "teller");
            assert_eq!(
                env(app, "COLORAPP_COLOR").unwrap(),
                name.trim_start_matches("colorteller-")
            );
        }
        let svc = kinds("Service")
            .into_iter()
            .find(|s| s["metadata"]["name"] == name)
            .unwrap();
        assert_eq!(svc["spec"]["selector"]["app.kubernetes.io/name"], name);
        assert_eq!(
            svc["spec"]["ports"][0]["port"], 9080,
            "the spec's listener port"
        );
        assert_eq!(
            svc["spec"]["ports"][0]["targetPort"], "ingress",
            "callers reach Envoy"
        );
    }
    // The ECS task's Envoy fetches its bootstrap the same way.
    let td: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/ecs/taskdef-colorgateway.json")).unwrap(),
    )
    .unwrap();
    let envoy = td["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "envoy")
        .unwrap();
    let cmd = envoy["command"][0].as_str().unwrap();
    let query = cmd
        .split("/v1/bootstrap?")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert!(
        cmd.contains("Authorization: Bearer $MAILLE_BOOTSTRAP_TOKEN")
            && cmd.contains("--ca-certificate=/tmp/maille-ca.pem")
            && cmd.contains("\"$MAILLE_CA_PEM\" > /tmp/maille-ca.pem"),
        "{cmd}"
    );
    let secrets: Vec<&str> = envoy["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(secrets, ["MAILLE_BOOTSTRAP_TOKEN", "MAILLE_CA_PEM"]);
    let mut r = common::control_agent(&state)
        .get(&format!("{url}/v1/bootstrap?{query}"))
        .header("authorization", format!("Bearer {bootstrap_token}"))
        .call()
        .unwrap();
    let body = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status(), 200, "ECS: {body}");
    assert!(
        body.contains("maille_collector"),
        "the ECS Envoy traces to its collector: {body}"
    );
    envoy_validate(&body).unwrap_or_else(|e| panic!("the ECS bootstrap: {e}\n{body}"));
    rt.block_on(server.stop());

    // And the schema check is strict: a misspelt field is refused, naming it.
    let bad = yaml.replacen("serviceAccountName:", "serviceAcountName:", 1);
    let (ok, text) = kube_validate(&write_temp(&bad));
    assert!(!ok && text.contains("serviceAcountName"), "{text}");
}

// The replicated layout: three control servers on a three-member etcd. The manifests are
// validated; the etcd container's own command starts three members here (loopback ports
// for their DNS names) that form one cluster; the control container's own arguments start
// three servers on it that share their tokens and CA, elect one leader, and hand out
// bootstraps naming the one Service.
#[test]
fn the_replicated_kubernetes_manifests_validate_and_their_servers_share_one_state() {
    let root = repo_root();
    let (yaml, objects) = kustomize(&root.join("deploy/k8s-replicated"));
    let (ok, text) = kube_validate(&write_temp(&yaml));
    assert!(ok, "kubernetes-validate: {text}");
    let find = |kind: &str, name: &str| -> &Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    assert!(
        !objects.iter().any(|o| o["kind"] == "PersistentVolumeClaim"),
        "no volume of one writer"
    );
    let control = find("Deployment", "maille-control");
    assert_eq!(control["spec"]["replicas"], 3);
    assert_eq!(control["spec"]["strategy"]["type"], "RollingUpdate");
    let pod = &control["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["emptyDir"], serde_json::json!({}));
    let args: Vec<String> = pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("no --{name} in {args:?}"))
            .to_owned()
    };
    assert!(!args.iter().any(|a| a.starts_with("--state")), "{args:?}");
    // Each replica is reached by the others at its own pod's address.
    assert_eq!(flag("peer-address"), "$(POD_IP)");
    assert_eq!(
        pod["containers"][0]["env"][0],
        serde_json::json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    );

    // The store lists every member the StatefulSet makes, on the client port.
    let etcd = find("StatefulSet", "maille-etcd");
    let members = etcd["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(members, 3);
    let service = etcd["spec"]["serviceName"].as_str().unwrap();
    assert_eq!(find("Service", service)["spec"]["clusterIP"], "None");
    let hosts: Vec<String> = (0..members)
        .map(|i| format!("maille-etcd-{i}.{service}.maille-system.svc.cluster.local"))
        .collect();
    let store = flag("store");
    assert_eq!(
        store,
        format!(
            "etcd://{}",
            hosts
                .iter()
                .map(|h| format!("{h}:2379"))
                .collect::<Vec<_>>()
                .join(",")
        )
    );
    let command: Vec<&str> = etcd["spec"]["template"]["spec"]["containers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let cluster: Vec<String> = hosts
        .iter()
        .map(|h| format!("{}=http://{h}:2380", h.split('.').next().unwrap()))
        .collect();
    assert!(
        command.contains(&format!("--initial-cluster={}", cluster.join(",")).as_str()),
        "{command:?}"
    );
    assert!(
        command
            .iter()
            .any(|c| c.starts_with("--auto-compaction-retention=")),
        "etcd's history is compacted: {command:?}"
    );
    // Only the control servers (and the members) reach etcd.
    let policy = find("NetworkPolicy", "maille-etcd");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "maille-etcd"
    );
    let from: Vec<&Value> = policy["spec"]["ingress"][0]["from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| &f["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
        .collect();
    assert_eq!(from, ["maille-control", "maille-etcd"]);

    // The container's arguments, here: the test's listen ports and modules, a local etcd for
    // the members, a folder of its own for each server's files.
    // The StatefulSet's etcd command, run here once per member: each pod's name for
    // `$(POD_NAME)`, loopback ports for the members' DNS names, a folder for the volume.
    // The three form one cluster.
    let ports: Vec<(u16, u16)> = (0..members)
        .map(|_| (maille_testkit::free_port(), maille_testkit::free_port()))
        .collect();
    let to_loopback = |a: &str, me: usize| -> String {
        let mut a = a
            .replace("$(POD_NAME)", &format!("maille-etcd-{me}"))
            .replace(
                "http://0.0.0.0:2379",
                &format!("http://127.0.0.1:{}", ports[me].0),
            )
            .replace(
                "http://0.0.0.0:2380",
                &format!("http://127.0.0.1:{}", ports[me].1),
            );
        for (j, h) in hosts.iter().enumerate() {
            a = a
                .replace(&format!("{h}:2379"), &format!("127.0.0.1:{}", ports[j].0))
                .replace(&format!("{h}:2380"), &format!("127.0.0.1:{}", ports[j].1));
        }
        a
    };
    let data = tempfile::tempdir().unwrap();
    let _members: Vec<Child> = (0..members as usize)
        .map(|i| {
            let args: Vec<String> = command[1..]
                .iter()
                .map(|a| match a.strip_prefix("--data-dir=") {
                    Some(_) => format!("--data-dir={}", data.path().join(i.to_string()).display()),
                    None => to_loopback(a, i),
                })
                .collect();
            assert_eq!(command[0], "etcd");
            let log = std::fs::File::create(data.path().join(format!("{i}.log"))).unwrap();
            Child(
                Command::new(maille_testkit::etcd_bin())
                    .args(&args)
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let local_store = to_loopback(&store, 0);
    let endpoints = local_store
        .trim_start_matches("etcd://")
        .replace("127.", "http://127.");
    maille_testkit::eventually(
        "the three members form a cluster",
        std::time::Duration::from_secs(30),
        || {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &endpoints, "endpoint", "health"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            (
                out.status.success() && text.matches("is healthy").count() == members as usize,
                text,
            )
        },
    );
    let dirs: Vec<tempfile::TempDir> = (0..members).map(|_| tempfile::tempdir().unwrap()).collect();
    let servers: Vec<common::Process> = dirs
        .iter()
        .map(|d| {
            let here: Vec<String> = args
                .iter()
                .filter(|a| {
                    !["--xds-addr=", "--http-addr=", "--modules="]
                        .iter()
                        .any(|f| a.starts_with(f))
                })
                .map(|a| {
                    if a.starts_with("--store=") {
                        format!("--store={local_store}")
                    } else if a == "--peer-address=$(POD_IP)" {
                        "--peer-address=127.0.0.1".to_owned()
                    } else if a.starts_with("--token-dir=") {
                        format!("--token-dir={}", d.path().display())
                    } else {
                        a.clone()
                    }
                })
                .collect();
            common::Process::start_with_args(d.path(), here)
        })
        .collect();
    let file = |i: usize, f: &str| std::fs::read_to_string(dirs[i].path().join(f)).unwrap();
    for f in [
        "maille-admin.token",
        "maille-bootstrap.token",
        "maille-ca.pem",
    ] {
        for i in 1..servers.len() {
            assert_eq!(file(0, f), file(i, f), "{f} is the same on every replica");
        }
    }
    maille_testkit::eventually(
        "one server leads",
        std::time::Duration::from_secs(20),
        || {
            let leading: Vec<bool> = servers
                .iter()
                .map(|s| s.get("/v1/status")["leader"]["me"] == true)
                .collect();
            (
                leading.iter().filter(|l| **l).count() == 1,
                format!("{leading:?}"),
            )
        },
    );
    // A bootstrap from either names the Service alone: Envoy reconnects through it.
    let control_dns = flag("advertise-address");
    assert_eq!(
        control_dns,
        "maille-control.maille-system.svc.cluster.local"
    );
    let token = file(0, "maille-bootstrap.token");
    for s in &servers {
        let mut r = common::control_agent(&s.state)
            .get(&format!(
                "{}/v1/bootstrap?node=mesh/colorapp/virtualNode/colorteller-white",
                s.url()
            ))
            .header("authorization", format!("Bearer {}", token.trim()))
            .call()
            .unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        let boot = &maille_import::yaml_documents(&body).unwrap()[0];
        let xds = boot["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == maille_translate::names::XDS_CLUSTER)
            .unwrap_or_else(|| panic!("no ADS cluster: {body}"));
        let hosts: Vec<&Value> = xds["load_assignment"]["endpoints"][0]["lb_endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["endpoint"]["address"]["socket_address"]["address"])
            .collect();
        // (One entry per server here, as the test's listen on ports of their own; in the
        // cluster all listen on one port, and the bootstrap names the Service once.)
        assert!(
            !hosts.is_empty() && hosts.iter().all(|h| **h == control_dns),
            "the Service alone: {xds}"
        );
        envoy_validate(&body).unwrap_or_else(|e| panic!("bootstrap: {e}\n{body}"));
    }
}

/// A process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_ecs_task_definition_matches_the_ecs_api_model() {
    let root = repo_root();
    let out = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("deploy/ecs/validate.py"))
        .arg(root.join("deploy/ecs/taskdef-colorgateway.json"))
        .arg("--policy")
        .arg(root.join("deploy/ecs/task-role-policy.json"))
        .output()
        .expect("run validate.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("valid against the ECS API model"), "{text}");

    // The checker refuses what ECS would: an unknown field, a missing sidecar.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    let mut td: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/ecs/taskdef-colorgateway.json")).unwrap(),
    )
    .unwrap();
    td["containerDefinitions"][0]["memoryy"] = 512.into();
    std::fs::write(&bad, td.to_string()).unwrap();
    let out = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("deploy/ecs/validate.py"))
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("Unknown parameter in containerDefinitions[0]: \"memoryy\""));
}

#[test]
fn the_ec2_units_pass_systemd_analyze() {
    let dir = tempfile::tempdir().unwrap();
    let units = repo_root().join("deploy/ec2");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&units).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".service") {
            continue;
        }
        // A template unit is verified as an instance of it.
        let target = dir
            .path()
            .join(name.replace("@.service", "@colorgateway.service"));
        std::fs::copy(e.path(), &target).unwrap();
        files.push(target);
    }
    assert_eq!(files.len(), 3, "{files:?}");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&files)
        .output()
        .expect("systemd-analyze (Debian's systemd, installed by make setup)");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // The binaries are not installed on the test machine; anything else is a real problem.
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| {
            !l.trim().is_empty() && !l.contains("is not executable: No such file or directory")
        })
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    // And a broken unit is caught.
    let broken = dir.path().join("broken.service");
    std::fs::write(
        &broken,
        "[Service]\nExecStart=relative/path\nRestart=sometimes\n",
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&broken)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("bad unit file setting") && text.contains("relative/path"),
        "{text}"
    );
}
