use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long Envoy may take to become ready (V8 compiles the modules at start).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository root (the workspace folder).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("wasm-tests/kit sits two levels inside the workspace")
        .to_path_buf()
}

/// The Envoy binary: `$MAILLE_ENVOY`, else `.venv/bin/envoy` (installed by `make setup`).
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MAILLE_ENVOY") {
        return p.into();
    }
    let p = repo_root().join(".venv/bin/envoy");
    assert!(
        p.exists(),
        "Envoy not found at {}: run `make setup` (or set MAILLE_ENVOY)",
        p.display()
    );
    p
}

/// A built filter module, `target/filters/<name>.wasm`; fails the test if it is missing.
pub fn filter_wasm(name: &str) -> PathBuf {
    let p = repo_root()
        .join("target/filters")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `make filters` first",
        p.display()
    );
    p
}

/// Which build of a filter Envoy runs: the proxy-wasm module on V8, or the native Envoy
/// dynamic module (`libmaille_<name>.so`), built from the same crate by
/// `scripts/build-filters.sh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `target/filters/<name>.wasm` with `envoy.filters.http.wasm`.
    Wasm,
    /// `target/filters/libmaille_<name>.so` with `envoy.filters.http.dynamic_modules`.
    Native,
}

impl Runtime {
    /// Both, wasm first.
    pub const ALL: [Runtime; 2] = [Runtime::Wasm, Runtime::Native];

    /// The built module of filter `name` (`canary`, `breaker`); fails the test if it is
    /// missing.
    pub fn module(self, name: &str) -> PathBuf {
        match self {
            Runtime::Wasm => filter_wasm(name),
            Runtime::Native => filter_native(name),
        }
    }

    /// The Envoy template of `deploy/envoy/` for filter `name` in this runtime.
    pub fn template(self, name: &str) -> String {
        match self {
            Runtime::Wasm => format!("deploy/envoy/{name}.yaml"),
            Runtime::Native => format!("deploy/envoy/{name}-native.yaml"),
        }
    }

    /// The template variable that takes the module's path (`CANARY_WASM`, `BREAKER_MODULE`).
    pub fn module_var(self, name: &str) -> String {
        match self {
            Runtime::Wasm => format!("{}_WASM", name.to_ascii_uppercase()),
            Runtime::Native => format!("{}_MODULE", name.to_ascii_uppercase()),
        }
    }

    /// The name Envoy's `/stats` gives a filter metric defined as `name`: wasm metrics are
    /// under `wasmcustom.`, dynamic-module metrics under `dynamicmodulescustom.` (Envoy's
    /// default `metrics_namespace`).
    pub fn stat(self, name: &str) -> String {
        match self {
            Runtime::Wasm => format!("wasmcustom.{name}"),
            Runtime::Native => format!("dynamicmodulescustom.{name}"),
        }
    }

    /// The `/stats` name of the breaker's per-cluster metric `what` (`trips`, `state`, ...).
    /// The wasm filter defines one metric per cluster, `maille_breaker.<cluster>.<what>`;
    /// Envoy 1.40 lets a dynamic module define metrics only while its configuration loads,
    /// so the native filter's are labelled by cluster, which `/stats` spells
    /// `maille_breaker.<what>.cluster.<cluster>`.
    pub fn breaker_stat(self, cluster: &str, what: &str) -> String {
        match self {
            Runtime::Wasm => self.stat(&format!("maille_breaker.{cluster}.{what}")),
            Runtime::Native => self.stat(&format!("maille_breaker.{what}.cluster.{cluster}")),
        }
    }
}

/// Runs a test function `fn name(runtime: Runtime)` once per [`Runtime`], as the tests
/// `name::wasm` and `name::native`.
#[macro_export]
macro_rules! for_each_runtime {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[test]
                fn wasm() {
                    super::$test($crate::Runtime::Wasm)
                }
                #[test]
                fn native() {
                    super::$test($crate::Runtime::Native)
                }
            }
        )*
    };
}

/// A built native filter module, `target/filters/libmaille_<name>.so` (the name Envoy looks
/// up for `dynamic_module_config: { name: maille_<name> }`); fails the test if it is missing.
pub fn filter_native(name: &str) -> PathBuf {
    let p = repo_root()
        .join("target/filters")
        .join(format!("libmaille_{name}.so"));
    assert!(
        p.exists(),
        "{} is missing: run `make filters` first",
        p.display()
    );
    p
}

/// A test fixture of this kit, `wasm-tests/kit/fixtures/<name>` (Envoy templates of
/// upstreams the tests talk to, not configurations users deploy).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// First and last port [`free_port`] hands out: below Linux's ephemeral range (32768 and
/// up), so that no outbound connection of a running test (Envoy to its upstreams, clients)
/// can take a port between the moment it is chosen and the moment Envoy binds it.
const PORTS: std::ops::Range<u32> = 20_000..32_000;

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A port on 127.0.0.1 that was free a moment ago, never the same twice in one test binary.
pub fn free_port() -> u16 {
    let span = PORTS.end - PORTS.start;
    // Test binaries run one after another; each starts somewhere else in the range.
    let offset = (std::process::id() * 997) % span;
    for _ in 0..span {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = (PORTS.start + (offset + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {PORTS:?}")
}

/// Fills `${NAME}` placeholders of a template file from `vars`; every placeholder must be
/// given, so a renamed variable fails loudly instead of reaching Envoy.
pub fn render(template: &Path, vars: &[(&str, &str)]) -> String {
    let text = std::fs::read_to_string(template)
        .unwrap_or_else(|e| panic!("reading {}: {e}", template.display()));
    let vars: HashMap<&str, &str> = vars.iter().copied().collect();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .unwrap_or_else(|| panic!("unclosed ${{ in {}", template.display()));
        let name = &after[..end];
        let value = vars
            .get(name)
            .unwrap_or_else(|| panic!("{} needs ${{{name}}}", template.display()));
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// How a process that should not have started ended.
#[derive(Debug)]
pub struct EnvoyExit {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it logged.
    pub log: String,
}

/// A running Envoy, killed on drop.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    admin_port: u16,
    dir: tempfile::TempDir,
    agent: ureq::Agent,
}

static STARTED: AtomicU32 = AtomicU32::new(0);

impl Envoy {
    /// Starts Envoy with `config` (YAML) and one worker, and waits until its admin `/ready`
    /// says LIVE. `admin_port` must be the port the config gives the admin listener.
    /// Returns how it ended if it exits before it is ready.
    pub fn start(config: &str, admin_port: u16) -> Result<Envoy, EnvoyExit> {
        let dir = tempfile::tempdir().expect("temp dir");
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let config_path = dir.path().join(format!("envoy-{n}.yaml"));
        std::fs::write(&config_path, config).expect("write config");
        let log_path = dir.path().join("envoy.log");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "1", "--use-dynamic-base-id", "-l", "info"])
            // Flush the log file often: tests read it while Envoy runs.
            .args(["--file-flush-interval-msec", "50"])
            .arg("--log-path")
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy");
        let agent = agent();
        let mut envoy = Envoy {
            child,
            admin_port,
            dir,
            agent,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = envoy.child.try_wait().expect("wait envoy") {
                return Err(EnvoyExit {
                    status,
                    log: envoy.log(),
                });
            }
            if let Ok(body) = envoy.admin_get("/ready") {
                if body.trim() == "LIVE" {
                    return Ok(envoy);
                }
            }
            assert!(
                Instant::now() < deadline,
                "Envoy was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                envoy.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts Envoy from a template (a path relative to the repository root, such as
    /// `deploy/envoy/breaker.yaml`, or [`fixture`]'s) filled with `vars`; `admin_port` must be the value given for `ADMIN_PORT`.
    pub fn from_template(
        template: impl AsRef<Path>,
        vars: &[(&str, &str)],
        admin_port: u16,
    ) -> Result<Envoy, EnvoyExit> {
        Envoy::start(&render(&repo_root().join(template), vars), admin_port)
    }

    /// POST on the admin interface (e.g. `/runtime_modify?key=value`); the body.
    pub fn admin_post(&self, path: &str) -> Result<String, ureq::Error> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        self.agent
            .post(&url)
            .send_empty()?
            .body_mut()
            .read_to_string()
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// GET on the admin interface; the body.
    pub fn admin_get(&self, path: &str) -> Result<String, ureq::Error> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        self.agent.get(&url).call()?.body_mut().read_to_string()
    }

    /// Counters and gauges whose names contain `filter`, from `/stats`.
    pub fn stats(&self, filter: &str) -> HashMap<String, u64> {
        let body = self
            .admin_get(&format!("/stats?filter={filter}"))
            .expect("admin /stats");
        body.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `f` holds, or fails with `what` and the last value seen.
pub fn eventually<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> (bool, T),
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let (ok, v) = f();
        if ok {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; last seen {v:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP client for tests: keep-alive, statuses as values, bounded timeouts.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// As [`agent`], verifying HTTPS servers with the CA certificates (PEM) in `ca_file` only,
/// such as the `maille-ca.pem` the control server writes beside its state.
pub fn agent_trusting(ca_file: &Path) -> ureq::Agent {
    use ureq::tls::{PemItem, RootCerts, TlsConfig};
    let pem = std::fs::read(ca_file).unwrap_or_else(|e| panic!("{}: {e}", ca_file.display()));
    let roots: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|p| match p {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    assert!(!roots.is_empty(), "{}: no certificate", ca_file.display());
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::Specific(std::sync::Arc::new(roots)))
                .build(),
        )
        .build()
        .into()
}

/// The two upstream services of `fixtures/upstreams.yaml`, `stable` and `canary`, which
/// answer with their own name.
#[derive(Debug)]
pub struct Upstreams {
    /// Port of `stable`.
    pub stable_port: u16,
    /// Port of `canary`.
    pub canary_port: u16,
    _envoy: Envoy,
}

impl Upstreams {
    /// Starts them on free ports.
    pub fn start() -> Upstreams {
        let admin = free_port();
        let stable_port = free_port();
        let canary_port = free_port();
        let config = render(
            &fixture("upstreams.yaml"),
            &[
                ("ADMIN_PORT", &admin.to_string()),
                ("STABLE_PORT", &stable_port.to_string()),
                ("CANARY_PORT", &canary_port.to_string()),
            ],
        );
        let envoy = Envoy::start(&config, admin)
            .unwrap_or_else(|e| panic!("upstreams did not start: {}\n{}", e.status, e.log));
        Upstreams {
            stable_port,
            canary_port,
            _envoy: envoy,
        }
    }
}

/// A JSON document as the content of a single-quoted YAML scalar: one line, quotes doubled.
pub fn yaml_single_quoted(json: &str) -> String {
    let one_line = json.lines().map(str::trim).collect::<Vec<_>>().join(" ");
    one_line.replace('\'', "''")
}

/// Front Envoy of `deploy/envoy/canary.yaml` with the canary filter configured by `config`
/// (JSON), routing to `up`. Returns the Envoy and its listener port, or how it failed.
pub fn start_canary(up: &Upstreams, config: &str) -> Result<(Envoy, u16), EnvoyExit> {
    start_canary_on(Runtime::Wasm, up, config)
}

/// [`start_canary`] with the canary filter of `runtime` (`deploy/envoy/canary.yaml` or
/// `deploy/envoy/canary-native.yaml`).
pub fn start_canary_on(
    runtime: Runtime,
    up: &Upstreams,
    config: &str,
) -> Result<(Envoy, u16), EnvoyExit> {
    start_canary_template(
        &runtime.template("canary"),
        &runtime.module_var("canary"),
        &runtime.module("canary"),
        up,
        config,
    )
}

/// Front Envoy of `deploy/envoy/canary-specifier.yaml`: the canary as a native cluster
/// specifier on the route (no HTTP filter), configured by `config`.
pub fn start_canary_specifier(up: &Upstreams, config: &str) -> Result<(Envoy, u16), EnvoyExit> {
    let c = render_canary_specifier(up, config);
    Envoy::start(&c.yaml, c.admin).map(|e| (e, c.listener))
}

fn start_canary_template(
    template: &str,
    module_var: &str,
    module: &Path,
    up: &Upstreams,
    config: &str,
) -> Result<(Envoy, u16), EnvoyExit> {
    let c = render_canary(template, module_var, module, up, config);
    Envoy::start(&c.yaml, c.admin).map(|e| (e, c.listener))
}

/// A canary template rendered for `up` and `config`, with the ports it was given.
#[derive(Debug)]
pub struct RenderedCanary {
    /// The Envoy configuration.
    pub yaml: String,
    /// Its admin port.
    pub admin: u16,
    /// Its listener port.
    pub listener: u16,
}

/// `deploy/envoy/canary-specifier.yaml` rendered as [`start_canary_specifier`] would start it.
pub fn render_canary_specifier(up: &Upstreams, config: &str) -> RenderedCanary {
    render_canary(
        "deploy/envoy/canary-specifier.yaml",
        "CANARY_MODULE",
        &filter_native("canary"),
        up,
        config,
    )
}

fn render_canary(
    template: &str,
    module_var: &str,
    module: &Path,
    up: &Upstreams,
    config: &str,
) -> RenderedCanary {
    let admin = free_port();
    let listener = free_port();
    // The config goes into a single-quoted YAML scalar: one line, quotes doubled.
    let quoted = yaml_single_quoted(config);
    let yaml = render(
        &repo_root().join(template),
        &[
            ("ADMIN_PORT", &admin.to_string()),
            ("LISTENER_PORT", &listener.to_string()),
            ("STABLE_PORT", &up.stable_port.to_string()),
            ("CANARY_PORT", &up.canary_port.to_string()),
            (module_var, &module.display().to_string()),
            ("CANARY_CONFIG", &quoted),
        ],
    );
    RenderedCanary {
        yaml,
        admin,
        listener,
    }
}

/// Front Envoy of the breaker template of `runtime` (`deploy/envoy/breaker.yaml` or
/// `deploy/envoy/breaker-native.yaml`) with the breaker configured by `config` (JSON), in
/// front of `flaky_port`, signalling to `signal_port`. Returns the Envoy and its listener
/// port, or how it failed.
pub fn start_breaker_on(
    runtime: Runtime,
    config: &str,
    flaky_port: u16,
    signal_port: u16,
) -> Result<(Envoy, u16), EnvoyExit> {
    let (admin, port) = (free_port(), free_port());
    Envoy::from_template(
        runtime.template("breaker"),
        &[
            ("ADMIN_PORT", &admin.to_string()),
            ("LISTENER_PORT", &port.to_string()),
            ("FLAKY_PORT", &flaky_port.to_string()),
            ("SIGNAL_PORT", &signal_port.to_string()),
            (
                &runtime.module_var("breaker"),
                &runtime.module("breaker").display().to_string(),
            ),
            ("BREAKER_CONFIG", &yaml_single_quoted(config)),
        ],
        admin,
    )
    .map(|e| (e, port))
}

/// Front Envoy of `deploy/envoy/canary-breaker-native.yaml`: both filters as native modules,
/// the canary's `canary` and the breaker's `breaker` configurations (JSON), routing to `up`,
/// signalling to `signal_port`.
pub fn start_canary_breaker_native(
    up: &Upstreams,
    canary: &str,
    breaker: &str,
    signal_port: u16,
) -> Result<(Envoy, u16), EnvoyExit> {
    let (admin, port) = (free_port(), free_port());
    Envoy::from_template(
        "deploy/envoy/canary-breaker-native.yaml",
        &[
            ("ADMIN_PORT", &admin.to_string()),
            ("LISTENER_PORT", &port.to_string()),
            ("STABLE_PORT", &up.stable_port.to_string()),
            ("CANARY_PORT", &up.canary_port.to_string()),
            ("SIGNAL_PORT", &signal_port.to_string()),
            (
                "CANARY_MODULE",
                &filter_native("canary").display().to_string(),
            ),
            (
                "BREAKER_MODULE",
                &filter_native("breaker").display().to_string(),
            ),
            ("CANARY_CONFIG", &yaml_single_quoted(canary)),
            ("BREAKER_CONFIG", &yaml_single_quoted(breaker)),
        ],
        admin,
    )
    .map(|e| (e, port))
}

/// One request a [`RecordingServer`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Request method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Request body.
    pub body: String,
}

/// A small HTTP/1.1 server on 127.0.0.1 that answers every request `200` and records it:
/// the control endpoint of end-to-end tests. Stops on drop.
#[derive(Debug)]
pub struct RecordingServer {
    /// Its port.
    pub port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RecordingServer {
    /// Starts it on a free port.
    pub fn start() -> RecordingServer {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recording server");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, stopping) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let reqs = reqs.clone();
                std::thread::spawn(move || {
                    let mut writer = match conn.try_clone() {
                        Ok(w) => w,
                        Err(_) => return,
                    };
                    let mut reader = BufReader::new(conn);
                    // One request after another on a kept-alive connection, until EOF.
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut parts = line.split_whitespace();
                        let method = parts.next().unwrap_or_default().to_owned();
                        let path = parts.next().unwrap_or_default().to_owned();
                        let mut length = 0usize;
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                if k.eq_ignore_ascii_case("content-length") {
                                    length = v.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        reqs.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Recorded {
                                method,
                                path,
                                body: String::from_utf8_lossy(&body).into_owned(),
                            });
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if writer.write_all(ok).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RecordingServer {
            port,
            requests,
            stop,
        }
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits (at most `timeout`) until `n` requests have arrived; returns them.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.requests();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}
