//! Test fixtures: the control server in-process on free ports, small HTTP apps that answer
//! their own name, Envoy started from a bootstrap the server makes.

#![allow(dead_code, unreachable_pub)]

use maille_control::{start, Running, ServerConfig};
#[allow(unused_imports)]
pub use maille_testkit::eventually;
use maille_testkit::{agent, free_port, repo_root, Envoy};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A tokio runtime for the in-process servers; tests themselves are synchronous.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The control server, with its state in `state` (a redb file) and the built filters.
pub struct Control {
    pub running: Option<Running>,
    pub xds_port: u16,
    pub http_port: u16,
    pub state: PathBuf,
}

impl Control {
    pub fn start(rt: &tokio::runtime::Runtime, state: &Path, ports: Option<(u16, u16)>) -> Control {
        Control::start_with_modules(rt, state, ports, &repo_root().join("target/filters"))
    }

    pub fn start_with_modules(
        rt: &tokio::runtime::Runtime,
        state: &Path,
        ports: Option<(u16, u16)>,
        modules: &Path,
    ) -> Control {
        Control::start_full(
            rt,
            state,
            ports,
            modules,
            maille_control::ca::DEFAULT_LIFETIME,
        )
    }

    /// As [`Control::start`], the proxies' certificates living `cert_lifetime`.
    pub fn start_with_lifetime(
        rt: &tokio::runtime::Runtime,
        state: &Path,
        ports: Option<(u16, u16)>,
        cert_lifetime: Duration,
    ) -> Control {
        Control::start_full(
            rt,
            state,
            ports,
            &repo_root().join("target/filters"),
            cert_lifetime,
        )
    }

    fn start_full(
        rt: &tokio::runtime::Runtime,
        state: &Path,
        ports: Option<(u16, u16)>,
        modules: &Path,
        cert_lifetime: Duration,
    ) -> Control {
        // Port 0 unless asked: the server binds at once and reports what it got, so no other
        // test can take its ports in between.
        let (xds, http) = ports.unwrap_or((0, 0));
        let running = rt
            .block_on(start(ServerConfig {
                xds_addr: format!("127.0.0.1:{xds}").parse().unwrap(),
                http_addr: format!("127.0.0.1:{http}").parse().unwrap(),
                advertise_address: "127.0.0.1".into(),
                state_path: Some(state.to_path_buf()),
                etcd: None,
                modules_dir: Some(modules.to_path_buf()),
                cloudwatch: None,
                cloud_map_every: std::time::Duration::from_millis(300),
                cert_lifetime,
                ca_pem: None,
                token_dir: None,
                tls_names: Vec::new(),
                peer_address: None,
                leader_ttl: Duration::from_secs(2),
            }))
            .expect("control server starts");
        Control {
            xds_port: running.xds_port,
            http_port: running.http_port,
            running: Some(running),
            state: state.to_path_buf(),
        }
    }

    /// A replica sharing its state in etcd at `store` (`etcd://...`); its tokens and CA
    /// certificate are written into `dir` (the same for every replica: they come from etcd).
    pub fn start_on_etcd(rt: &tokio::runtime::Runtime, dir: &Path, store: &str) -> Control {
        let running = rt
            .block_on(start(ServerConfig {
                xds_addr: "127.0.0.1:0".parse().unwrap(),
                http_addr: "127.0.0.1:0".parse().unwrap(),
                advertise_address: "127.0.0.1".into(),
                state_path: None,
                etcd: Some((
                    maille_control::etcd_store::EtcdAddress::parse(store).unwrap(),
                    Default::default(),
                )),
                modules_dir: Some(repo_root().join("target/filters")),
                cloudwatch: None,
                cloud_map_every: std::time::Duration::from_millis(300),
                cert_lifetime: maille_control::ca::DEFAULT_LIFETIME,
                ca_pem: None,
                token_dir: Some(dir.to_path_buf()),
                tls_names: Vec::new(),
                peer_address: None,
                leader_ttl: Duration::from_secs(2),
            }))
            .expect("control server starts on etcd");
        Control {
            xds_port: running.xds_port,
            http_port: running.http_port,
            running: Some(running),
            // Not a file: where the tokens and the CA are found (beside it).
            state: dir.join("state.redb"),
        }
    }

    pub fn stop(&mut self, rt: &tokio::runtime::Runtime) {
        if let Some(r) = self.running.take() {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), r.stop())
                    .await
                    .expect("control server stops within 10 s")
            });
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.http_port)
    }

    /// An HTTP agent that verifies this server with the CA it wrote beside its state.
    pub fn agent(&self) -> ureq::Agent {
        control_agent(&self.state)
    }

    /// The admin token the server wrote next to its state.
    pub fn admin_token(&self) -> String {
        token_beside(&self.state)
    }

    pub fn get(&self, path: &str) -> Value {
        let mut r = self
            .agent()
            .get(&format!("{}{path}", self.url()))
            .header("authorization", format!("Bearer {}", self.admin_token()))
            .call()
            .expect("admin API answers");
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }

    pub fn get_text(&self, path: &str) -> String {
        self.agent()
            .get(&format!("{}{path}", self.url()))
            .header("authorization", format!("Bearer {}", self.admin_token()))
            .call()
            .expect("admin API answers")
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    /// `maillectl` against this server, finding its token where the server wrote it;
    /// (exit ok, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_maillectl"))
            .arg("--server")
            .arg(self.url())
            .env("MAILLE_STATE", &self.state)
            .args(args)
            .output()
            .expect("run maillectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts Envoy for virtual node `node` of `mesh` from the server's bootstrap; returns it
    /// and its egress port.
    pub fn envoy(&self, mesh: &str, node: &str) -> (Envoy, u16) {
        self.envoy_with_ingress(mesh, node, free_port())
    }

    /// As [`Control::envoy`], with the first ingress listener on `ingress`.
    pub fn envoy_with_ingress(&self, mesh: &str, node: &str, ingress: u16) -> (Envoy, u16) {
        self.envoy_with(mesh, node, ingress, None)
    }

    /// As [`Control::envoy_with_ingress`], tracing to a collector on `otlp` when given.
    pub fn envoy_with(
        &self,
        mesh: &str,
        node: &str,
        ingress: u16,
        otlp: Option<u16>,
    ) -> (Envoy, u16) {
        envoy_via(|a| self.ctl(a), mesh, node, ingress, otlp)
    }

    /// Starts the Envoy of virtual gateway `gateway` of `mesh` from `maillectl bootstrap`.
    pub fn gateway_envoy(&self, mesh: &str, gateway: &str) -> Envoy {
        let admin = free_port();
        let (ok, yaml, err) = self.ctl(&[
            "bootstrap",
            "--node",
            &format!("mesh/{mesh}/virtualGateway/{gateway}"),
            "--admin-port",
            &admin.to_string(),
            "--egress-port",
            &free_port().to_string(),
            "--listen-address",
            "127.0.0.1",
        ]);
        assert!(ok, "maillectl bootstrap for a gateway: {err}");
        Envoy::start(&yaml, admin)
            .unwrap_or_else(|e| panic!("Envoy exited ({}):\n{}", e.status, e.log))
    }

    /// POST `body` (JSON) to the admin API; the answer as JSON (whatever its status).
    pub fn post(&self, path: &str, body: &Value) -> Value {
        post(&self.agent(), &self.url(), &self.admin_token(), path, body)
    }
}

/// An HTTP agent that verifies the control server whose state is `state` with the CA
/// certificate it wrote beside it (`maille-ca.pem`), statuses not taken as errors.
pub fn control_agent(state: &Path) -> ureq::Agent {
    maille_testkit::agent_trusting(&state.with_file_name("maille-ca.pem"))
}

/// The admin token a server with its state in `state` wrote beside it.
pub fn token_beside(state: &Path) -> String {
    let file = state.parent().unwrap().join("maille-admin.token");
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .to_owned()
}

fn post(agent: &ureq::Agent, base: &str, token: &str, path: &str, body: &Value) -> Value {
    let mut r = agent
        .post(&format!("{base}{path}"))
        .header(maille_api::paths::CLIENT_HEADER, "test")
        .header("authorization", format!("Bearer {token}"))
        .send_json(body)
        .expect("admin API answers");
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null)
}

/// Envoy for `node` from a bootstrap `maillectl` gets through `ctl`; it and its egress port.
pub fn envoy_via(
    ctl: impl Fn(&[&str]) -> (bool, String, String),
    mesh: &str,
    node: &str,
    ingress: u16,
    otlp: Option<u16>,
) -> (Envoy, u16) {
    let admin = free_port();
    let egress = free_port();
    let mut args: Vec<String> = [
        "bootstrap",
        "--node",
        &format!("{mesh}/{node}"),
        "--admin-port",
        &admin.to_string(),
        "--ingress-port",
        &ingress.to_string(),
        "--egress-port",
        &egress.to_string(),
        "--listen-address",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(p) = otlp {
        args.extend(["--otlp-port".to_owned(), p.to_string()]);
    }
    let (ok, yaml, err) = ctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "maillectl bootstrap failed: {err}");
    let envoy = Envoy::start(&yaml, admin)
        .unwrap_or_else(|e| panic!("Envoy exited ({}):\n{}", e.status, e.log));
    (envoy, egress)
}

/// The control server as its own process (the built `maille-control` next to `maillectl`),
/// on fixed ports so that it can be killed and started again on the same state.
pub struct Process {
    child: std::process::Child,
    pub state: PathBuf,
    pub xds: u16,
    pub http: u16,
    /// How it keeps its state: `--state <file>`, or `--store etcd://...` and the rest.
    store_args: Vec<String>,
    /// Its environment beyond the test's (the AWS chain).
    env: Vec<(String, String)>,
}

impl Process {
    pub fn start(state: &Path) -> Process {
        let args = vec!["--state".to_owned(), state.display().to_string()];
        Process::start_on(state, free_port(), free_port(), args, Vec::new())
    }

    /// A server sharing its state in etcd at `store`, its tokens and CA certificate written
    /// into `dir`, leading (when it does) with a lease of `ttl_secs`.
    pub fn start_on_etcd(dir: &Path, store: &str, ttl_secs: u64) -> Process {
        Process::start_on_etcd_with_env(dir, store, ttl_secs, &[])
    }

    /// [`Process::start_on_etcd`], with `env` set in its environment.
    pub fn start_on_etcd_with_env(
        dir: &Path,
        store: &str,
        ttl_secs: u64,
        env: &[(&str, &str)],
    ) -> Process {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args = vec![
            "--store".to_owned(),
            store.to_owned(),
            "--token-dir".to_owned(),
            dir.display().to_string(),
            "--leader-ttl-secs".to_owned(),
            ttl_secs.to_string(),
        ];
        Process::start_on(&dir.join("state.redb"), free_port(), free_port(), args, env)
    }

    /// A server started with `args` (beside its listen addresses and modules, which are
    /// the test's), its files in `dir`.
    pub fn start_with_args(dir: &Path, args: Vec<String>) -> Process {
        Process::start_on(
            &dir.join("state.redb"),
            free_port(),
            free_port(),
            args,
            Vec::new(),
        )
    }

    fn start_on(
        state: &Path,
        xds: u16,
        http: u16,
        store_args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Process {
        let bin = Path::new(env!("CARGO_BIN_EXE_maillectl"))
            .parent()
            .unwrap()
            .join("maille-control");
        assert!(
            bin.exists(),
            "{} missing: build the workspace's binaries (cargo build --bins)",
            bin.display()
        );
        let log = std::fs::File::create(state.with_extension("log")).unwrap();
        let child = std::process::Command::new(bin)
            .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(&store_args)
            .arg("--modules")
            .arg(repo_root().join("target/filters"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start maille-control");
        let p = Process {
            child,
            state: state.to_path_buf(),
            xds,
            http,
            store_args,
            env,
        };
        eventually(
            "the control server answers",
            Duration::from_secs(20),
            || {
                // The CA file is written before the port answers.
                let ok = std::fs::exists(p.state.with_file_name("maille-ca.pem")).unwrap_or(false)
                    && control_agent(&p.state)
                        .get(&format!("{}/healthz", p.url()))
                        .call()
                        .is_ok_and(|r| r.status() == 200);
                (
                    ok,
                    std::fs::read_to_string(p.state.with_extension("log")).unwrap_or_default(),
                )
            },
        );
        p
    }

    /// SIGKILL, then the same server again on the same state and ports.
    pub fn kill_and_restart(mut self) -> Process {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (state, xds, http) = (self.state.clone(), self.xds, self.http);
        let args = std::mem::take(&mut self.store_args);
        let env = std::mem::take(&mut self.env);
        std::mem::forget(self);
        Process::start_on(&state, xds, http, args, env)
    }

    /// SIGKILL, and no restart.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.http)
    }

    pub fn get(&self, path: &str) -> Value {
        let mut r = control_agent(&self.state)
            .get(&format!("{}{path}", self.url()))
            .header(
                "authorization",
                format!("Bearer {}", token_beside(&self.state)),
            )
            .call()
            .expect("admin API answers");
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }

    pub fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_maillectl"))
            .arg("--server")
            .arg(self.url())
            .env("MAILLE_STATE", &self.state)
            .args(args)
            .output()
            .expect("run maillectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn envoy(&self, mesh: &str, node: &str) -> (Envoy, u16) {
        envoy_via(|a| self.ctl(a), mesh, node, free_port(), None)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HTTP apps answering `GET` with their name, counting their hits; each can be made to
/// fail (answer 503).
pub struct Apps {
    pub ports: BTreeMap<String, u16>,
    pub hits: BTreeMap<String, Arc<AtomicU64>>,
    pub failing: BTreeMap<String, Arc<std::sync::atomic::AtomicBool>>,
    /// Per app: every n-th request answers 500 (0: none).
    pub error_every: BTreeMap<String, Arc<AtomicU64>>,
}

impl Apps {
    pub fn start(rt: &tokio::runtime::Runtime, names: &[&str]) -> Apps {
        let mut ports = BTreeMap::new();
        let mut hits = BTreeMap::new();
        let mut failing = BTreeMap::new();
        let mut error_every = BTreeMap::new();
        for name in names {
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("bind app");
            let port = listener.local_addr().unwrap().port();
            let counter = Arc::new(AtomicU64::new(0));
            let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let every = Arc::new(AtomicU64::new(0));
            let (n, c, f, e) = (
                name.to_string(),
                counter.clone(),
                fail.clone(),
                every.clone(),
            );
            let app = axum::Router::new().fallback(move || {
                let (n, c, f, e) = (n.clone(), c.clone(), f.clone(), e.clone());
                async move {
                    let i = c.fetch_add(1, Ordering::Relaxed);
                    let every = e.load(Ordering::Relaxed);
                    if every > 0 && i % every == 0 {
                        return (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            format!("{n} errs"),
                        );
                    }
                    if f.load(Ordering::Relaxed) {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("{n} is failing"),
                        )
                    } else {
                        (axum::http::StatusCode::OK, n)
                    }
                }
            });
            rt.spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            ports.insert(name.to_string(), port);
            hits.insert(name.to_string(), counter);
            failing.insert(name.to_string(), fail);
            error_every.insert(name.to_string(), every);
        }
        Apps {
            ports,
            hits,
            failing,
            error_every,
        }
    }
}

/// The ColorTeller mesh of the tests, in App Mesh API JSON (describe and create shapes mixed,
/// as users' files are): a gateway node calling `colorteller.local`, a router with one
/// weighted route over the colour nodes, which run on `apps`' ports. The colour nodes are
/// bare applications with no Envoy of their own, so the mesh's mTLS is off (`envoy_mtls.rs`
/// tests it, with an Envoy in front of every node).
pub fn colorteller(apps: &Apps, weights: &[(&str, u32)]) -> Value {
    let mut docs = vec![
        json!({"mesh": {"meshName": "demo", "spec": {"egressFilter": {"type": "DROP_ALL"}},
                        "maille": {"mtls": "DISABLED"},
                        "metadata": {"arn": "arn:aws:appmesh:us-east-1:123456789012:mesh/demo", "version": 1},
                        "status": {"status": "ACTIVE"}}}),
        json!({"meshName": "demo", "virtualNodeName": "gateway", "spec": {
            "listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}],
            "backends": [{"virtualService": {"virtualServiceName": "colorteller.local"}}]}}),
        json!({"meshName": "demo", "virtualRouterName": "colorteller", "spec": {
            "listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}]}}),
        json!({"meshName": "demo", "virtualServiceName": "colorteller.local", "spec": {
            "provider": {"virtualRouter": {"virtualRouterName": "colorteller"}}}}),
    ];
    for (name, port) in &apps.ports {
        // One colour by DNS name, the others by static endpoints (over EDS).
        let sd = if name == "white" {
            json!({"dns": {"hostname": "127.0.0.1"}})
        } else {
            json!({"endpoints": [{"address": "127.0.0.1"}]})
        };
        docs.push(
            json!({"virtualNode": {"meshName": "demo", "virtualNodeName": name, "spec": {
            "listeners": [{"portMapping": {"port": port, "protocol": "http"},
                           "outlierDetection": {"maxServerErrors": 5, "maxEjectionPercent": 50,
                               "interval": {"unit": "s", "value": 10},
                               "baseEjectionDuration": {"unit": "s", "value": 30}}}],
            "serviceDiscovery": sd}}}),
        );
    }
    let targets: Vec<Value> = weights
        .iter()
        .map(|(n, w)| json!({"virtualNode": n, "weight": w}))
        .collect();
    docs.push(
        json!({"meshName": "demo", "virtualRouterName": "colorteller", "routeName": "color",
        "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": targets}}}}),
    );
    Value::Array(docs)
}

/// A mesh `sec` whose virtual gateway `ingress`, on `gw`, routes everything to `white.local`,
/// served by white, whose own Envoy listens on `ingress` in front of the app on `app`; the
/// mesh's Maille settings are `maille` (mTLS); `rogue`, when asked, is a node of the mesh
/// that declares no backend.
pub fn gateway_to_white(gw: u16, app: u16, ingress: u16, maille: Value, rogue: bool) -> Value {
    let mut docs = vec![
        json!({"mesh": {"meshName": "sec", "spec": {}, "maille": maille}}),
        json!({"meshName": "sec", "virtualGatewayName": "ingress", "spec": {
            "listeners": [{"portMapping": {"port": gw, "protocol": "http"}}]}}),
        json!({"meshName": "sec", "virtualGatewayName": "ingress", "gatewayRouteName": "all", "spec": {
            "httpRoute": {"match": {"prefix": "/"},
                "action": {"target": {"virtualService": {"virtualServiceName": "white.local"}}}}}}),
        json!({"meshName": "sec", "virtualNodeName": "white", "spec": {
            "listeners": [{"portMapping": {"port": app, "protocol": "http"}}],
            "serviceDiscovery": {"endpoints": [{"address": "127.0.0.1", "port": ingress}]}}}),
        json!({"meshName": "sec", "virtualServiceName": "white.local", "spec": {
            "provider": {"virtualNode": {"virtualNodeName": "white"}}}}),
    ];
    if rogue {
        docs.push(
            json!({"meshName": "sec", "virtualNodeName": "rogue", "spec": {
            "listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}]}}),
        );
    }
    Value::Array(docs)
}

/// `mesh` (from [`colorteller`]) with its route made sticky on request header `header`,
/// asked the way App Mesh users can in every format: a `maille:sticky-header` tag.
pub fn sticky(mut mesh: Value, header: &str) -> Value {
    for d in mesh.as_array_mut().unwrap() {
        if d.get("routeName").is_some() {
            d["tags"] = json!([{"key": "maille:sticky-header", "value": header}]);
        }
    }
    mesh
}

/// Which app answers user `user` (header `x-user-id`) through Envoy's egress port.
pub fn answer_for(a: &ureq::Agent, egress: u16, user: &str) -> String {
    let mut r = a
        .get(&format!("http://127.0.0.1:{egress}/"))
        .header("host", "colorteller.local")
        .header("x-user-id", user)
        .call()
        .expect("request through Envoy");
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().unwrap_or_default();
    if status == 200 {
        body
    } else {
        format!("HTTP {status}")
    }
}

/// One GET / with `Host: host` through Envoy's egress port: the app's answer, or
/// `HTTP <status>`.
pub fn ask_host(a: &ureq::Agent, egress: u16, host: &str) -> String {
    let mut r = a
        .get(&format!("http://127.0.0.1:{egress}/"))
        .header("host", host)
        .call()
        .expect("request through Envoy");
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().unwrap_or_default();
    if status == 200 {
        body
    } else {
        format!("HTTP {status}")
    }
}

/// Requests for `colorteller.local` through Envoy's egress port every 10 ms, in the
/// background (for a rollout's analysis), counted in `sent`, until `on` drops.
pub fn background_traffic(
    egress: u16,
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        let a = maille_testkit::agent();
        while on.load(Ordering::Relaxed) {
            let _ = a
                .get(&format!("http://127.0.0.1:{egress}/"))
                .header("host", "colorteller.local")
                .call();
            sent.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Sends `n` requests for `colorteller.local` through Envoy's egress port; counts answers.
pub fn tally(egress: u16, n: usize) -> BTreeMap<String, usize> {
    let a = agent();
    let mut out = BTreeMap::new();
    for _ in 0..n {
        *out.entry(ask_host(&a, egress, "colorteller.local"))
            .or_default() += 1;
    }
    out
}

/// A Cloud Map service `demo.local/colorteller` in the Cloud Map at `endpoint` (moto), made
/// through the AWS SDK, to register the apps of `Apps` in.
pub struct CloudMapService {
    pub client: aws_sdk_servicediscovery::Client,
    pub service_id: String,
}

impl CloudMapService {
    pub fn create(rt: &tokio::runtime::Runtime, endpoint: &str) -> CloudMapService {
        use aws_sdk_servicediscovery::config::{
            BehaviorVersion, Credentials, Region, SharedCredentialsProvider,
        };
        let cfg = aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "test", "test", None, None, "static",
            )))
            .build();
        let client = aws_sdk_servicediscovery::Client::new(&cfg);
        let service_id = rt.block_on(async {
            client
                .create_http_namespace()
                .name("demo.local")
                .send()
                .await
                .expect("namespace");
            let ns = client.list_namespaces().send().await.expect("namespaces");
            let ns_id = ns.namespaces()[0].id().unwrap().to_owned();
            client
                .create_service()
                .name("colorteller")
                .namespace_id(ns_id)
                .send()
                .await
                .expect("service")
                .service()
                .and_then(|s| s.id())
                .unwrap()
                .to_owned()
        });
        CloudMapService { client, service_id }
    }

    /// Registers app `name` of `apps` (127.0.0.1, its port) with attribute `stage`.
    pub fn register(&self, rt: &tokio::runtime::Runtime, apps: &Apps, name: &str, stage: &str) {
        rt.block_on(
            self.client
                .register_instance()
                .service_id(&self.service_id)
                .instance_id(name)
                .attributes("AWS_INSTANCE_IPV4", "127.0.0.1")
                .attributes("AWS_INSTANCE_PORT", apps.ports[name].to_string())
                .attributes("stage", stage)
                .send(),
        )
        .unwrap_or_else(|e| panic!("register {name}: {e:?}"));
    }

    pub fn deregister(&self, rt: &tokio::runtime::Runtime, name: &str) {
        rt.block_on(
            self.client
                .deregister_instance()
                .service_id(&self.service_id)
                .instance_id(name)
                .send(),
        )
        .unwrap_or_else(|e| panic!("deregister {name}: {e:?}"));
    }
}

/// A mesh of a gateway calling `colorteller.local`, provided by one node found in Cloud Map
/// (namespace `demo.local`, service `colorteller`, instances with `stage=prod` only).
pub fn cloud_map_mesh() -> Value {
    json!([
        // The colours are bare apps with no Envoy of their own: no mesh mTLS.
        {"meshName": "demo", "spec": {}, "maille": {"mtls": "DISABLED"}},
        {"meshName": "demo", "virtualNodeName": "gateway", "spec": {
            "listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}],
            "backends": [{"virtualService": {"virtualServiceName": "colorteller.local"}}]}},
        {"meshName": "demo", "virtualNodeName": "colors", "spec": {
            "listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}],
            "serviceDiscovery": {"awsCloudMap": {
                "namespaceName": "demo.local", "serviceName": "colorteller",
                "attributes": [{"key": "stage", "value": "prod"}]}}}},
        {"meshName": "demo", "virtualServiceName": "colorteller.local", "spec": {
            "provider": {"virtualNode": {"virtualNodeName": "colors"}}}}
    ])
}
