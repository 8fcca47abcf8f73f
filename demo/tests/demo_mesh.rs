//! `make demo` run unattended: the script starts the whole ColorTeller mesh (moto, control
//! server, five apps with Envoy and collector sidecars); then, as the tour it prints says: a
//! header-matched request reaches the canary colour, red made to fail trips the breaker, a
//! weight change moves the split, X-Ray holds gateway -> colorteller traces with the variant
//! annotation (read back with `maillectl traces` and with the AWS CLI through the demo's
//! env.sh), CloudWatch holds request metrics per colour,
//! and Ctrl-C (SIGINT) stops everything it started.

use maille_testkit::{agent, agent_trusting, eventually, repo_root};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const GATEWAY: &str = "http://127.0.0.1:10000/color";
const RED_APP: &str = "http://127.0.0.1:10014";
const MOTO: &str = "http://127.0.0.1:10070";

fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_colorapp"))
        .parent()
        .unwrap()
        .to_path_buf();
    for b in ["maille-control", "maillectl", "maille-collector"] {
        assert!(
            dir.join(b).exists(),
            "{} missing: build the workspace's binaries first (`make test` or `cargo build --bins`)",
            dir.join(b).display()
        );
    }
    dir
}

/// The demo script, killed with its children if the test fails before it stops it.
struct Demo {
    child: Child,
    run_dir: PathBuf,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            interrupt(self.child.id());
            let _ = self.child.wait();
        }
    }
}

/// Ctrl-C as a terminal sends it: SIGINT to the script's whole process group.
fn interrupt(pid: u32) {
    let _ = Command::new("kill")
        .args(["-INT", "--", &format!("-{pid}")])
        .status();
}

impl Demo {
    fn start(run_dir: &Path) -> Demo {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new("bash")
            .arg(repo_root().join("scripts/demo.sh"))
            // Its own process group, as a shell's foreground job: `interrupt` is a Ctrl-C.
            .process_group(0)
            .env("MAILLE_BIN_DIR", bin_dir())
            .env("RUN_DIR", run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start scripts/demo.sh");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Demo {
            child,
            run_dir: run_dir.to_path_buf(),
            lines,
            output: Vec::new(),
        }
    }

    /// Waits for a line of output containing `text`.
    fn wait_for(&mut self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.output.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {text:?} from the demo within {timeout:?}; its output:\n{}\nlogs in {}",
                    self.output.join("\n"),
                    self.run_dir.display()
                ),
            }
        }
    }

    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(bin_dir().join("maillectl"))
            .args(args)
            .env("MAILLE_SERVER", "https://127.0.0.1:10061")
            .env("MAILLE_STATE", self.run_dir.join("maille-state.redb"))
            .env("AWS_ENDPOINT_URL", MOTO)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "demo")
            .env("AWS_SECRET_ACCESS_KEY", "demo")
            .current_dir(repo_root())
            .output()
            .expect("run maillectl");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "maillectl {args:?}: {stdout}{stderr}");
        stdout.into_owned()
    }
}

/// Sends `n` requests to the gateway (with `header` when given); counts the answers (the
/// colour, or the breaker's answer).
fn tally(n: usize, header: Option<(&str, &str)>) -> BTreeMap<String, usize> {
    let a = agent();
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let mut req = a.get(GATEWAY);
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let mut r = req.call().expect("request to the gateway's Envoy");
        let circuit = r
            .headers()
            .get("x-maille-circuit")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let body = r.body_mut().read_to_string().unwrap_or_default();
        let key = match circuit {
            Some(c) => format!("503 circuit {c}"),
            None => body.trim().to_owned(),
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

/// The sum of `upstream_rq_total` deltas CloudWatch (moto) holds for one Envoy cluster.
fn requests_in_cloudwatch(rt: &tokio::runtime::Runtime, cluster: &str) -> f64 {
    use aws_sdk_cloudwatch::types::{Dimension, Statistic};
    let conf = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(aws_sdk_cloudwatch::config::BehaviorVersion::latest())
        .region(aws_sdk_cloudwatch::config::Region::new("us-east-1"))
        .endpoint_url(MOTO)
        .credentials_provider(aws_sdk_cloudwatch::config::Credentials::new(
            "demo", "demo", None, None, "static",
        ))
        .build();
    let client = aws_sdk_cloudwatch::Client::from_conf(conf);
    let now = std::time::SystemTime::now();
    let out = rt
        .block_on(
            client
                .get_metric_statistics()
                .namespace("Maille")
                .metric_name("envoy.cluster.upstream_rq_total")
                .dimensions(
                    Dimension::builder()
                        .name("envoy.cluster_name")
                        .value(cluster)
                        .build(),
                )
                .start_time((now - Duration::from_secs(900)).into())
                .end_time((now + Duration::from_secs(60)).into())
                .period(60)
                .statistics(Statistic::Sum)
                .send(),
        )
        .expect("CloudWatch GetMetricStatistics");
    out.datapoints().iter().filter_map(|d| d.sum()).sum()
}

#[test]
fn the_demo_mesh_routes_trips_traces_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Demo::start(dir.path());
    let first = demo.wait_for("first routed request", Duration::from_secs(180));
    eprintln!("{first}");
    demo.wait_for("Serving; Ctrl-C stops everything.", Duration::from_secs(10));

    // 1. The canary header: every request to blue.
    let canary = tally(20, Some(("x-color-canary", "blue")));
    assert_eq!(canary, BTreeMap::from([("blue".to_owned(), 20)]));
    // The split: white 8 / black 1 / red 1.
    let split = tally(300, None);
    eprintln!("split 8/1/1: {split:?}");
    assert!(
        !split.contains_key("blue"),
        "blue only by header: {split:?}"
    );
    let white = split.get("white").copied().unwrap_or(0);
    assert!((190..=280).contains(&white), "white ~240 of 300: {split:?}");
    assert!(split.get("black").copied().unwrap_or(0) >= 8, "{split:?}");
    assert!(split.get("red").copied().unwrap_or(0) >= 8, "{split:?}");

    // 9 (checked early, before red is made to fail). Between Envoys, mutual TLS: plaintext
    // to white's Envoy is refused, and each Envoy presents its node's SPIFFE ID.
    let plaintext = agent().get("http://127.0.0.1:10001/").call();
    assert!(
        matches!(
            plaintext,
            Err(ureq::Error::Io(_)) | Err(ureq::Error::ConnectionFailed)
        ),
        "plaintext to white's Envoy: {plaintext:?}"
    );
    let certs = agent()
        .get("http://127.0.0.1:10031/certs")
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        certs.contains("spiffe://maille/mesh/colorapp/virtualNode/colorteller-white"),
        "{certs}"
    );

    // 2. Red fails; the breaker opens after 5 failures in a row and answers for red.
    let r = agent()
        .post(&format!("{RED_APP}/fault?rate=1"))
        .send_empty()
        .unwrap();
    assert_eq!(r.status(), 200);
    let tripped = eventually("the breaker opens for red", Duration::from_secs(30), || {
        let t = tally(100, None);
        let open = t
            .keys()
            .any(|k| k.starts_with("503 circuit open; cluster=node/colorteller-red/"));
        (open, t)
    });
    eprintln!("red failing: {tripped:?}");
    assert!(
        tripped.get("red is failing").copied().unwrap_or(0) <= 5,
        "at most 5 failures reach the gateway before the circuit opens: {tripped:?}"
    );
    // The breaker signals the control server from its own context, after the request.
    eventually(
        "the open circuit signalled",
        Duration::from_secs(10),
        || {
            let signals = demo.ctl(&["signals"]);
            let ok = signals.contains("\"to\":\"open\"")
                && signals.contains("node/colorteller-red/10014");
            (ok, signals)
        },
    );

    // 3. A weight change moves the split: white 5 / black 5 / red 0.
    let applied = demo.ctl(&[
        "apply",
        "-f",
        "deploy/examples/colorteller/local/route-without-red.json",
        "--wait",
    ]);
    assert!(applied.contains("5 Envoy(s) acknowledged"), "{applied}");
    let moved = tally(200, None);
    eprintln!("split 5/5/0: {moved:?}");
    assert_eq!(
        moved.keys().cloned().collect::<Vec<_>>(),
        ["black", "white"],
        "{moved:?}"
    );
    assert!((60..=140).contains(&moved["white"]), "{moved:?}");

    // 4. X-Ray: gateway -> colorteller traces with the variant, through `maillectl traces`.
    let listed = eventually("blue's traces in X-Ray", Duration::from_secs(40), || {
        let out = demo.ctl(&[
            "traces",
            "--annotation",
            "maille_variant=colorteller-blue",
            "-o",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let n = v.as_array().map_or(0, Vec::len);
        (n >= 20, v)
    });
    let one = &listed[0];
    assert_eq!(
        one["services"],
        serde_json::json!(["colorgateway", "colorteller-blue"]),
        "{one}"
    );
    assert_eq!(
        one["variants"],
        serde_json::json!(["colorteller-blue"]),
        "{one}"
    );
    assert_eq!(one["status"], 200, "{one}");
    let id = one["id"].as_str().unwrap();
    // The waterfall, and under it the trace's access log lines: the gateway's Envoy logged
    // the request in and its call out, blue's Envoy the call in.
    let waterfall = eventually(
        "the trace's access log lines",
        Duration::from_secs(30),
        || {
            let w = demo.ctl(&["traces", "--trace-id", id]);
            (w.contains("access log (3 lines"), w)
        },
    );
    eprintln!("{waterfall}");
    let log_lines: Vec<&str> = waterfall
        .lines()
        .skip_while(|l| !l.starts_with("access log ("))
        .skip(1)
        .collect();
    assert_eq!(
        log_lines
            .iter()
            .filter(|l| l.contains("/maille/colorgateway ") && l.contains(" 200 GET /"))
            .count(),
        2,
        "{waterfall}"
    );
    assert!(
        log_lines
            .iter()
            .any(|l| l.contains("/maille/colorteller-blue ")
                && l.contains("variant=colorteller-blue")),
        "{waterfall}"
    );
    let lines: Vec<&str> = waterfall.lines().collect();
    assert!(lines[0].starts_with(&format!("trace {id}")), "{waterfall}");
    let at = |name: &str| {
        lines
            .iter()
            .position(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {waterfall}"))
    };
    let (gw, call, blue) = (
        at("colorgateway "),
        at("node/colorteller-blue/"),
        at("colorteller-blue "),
    );
    assert!(gw < call && call < blue, "{waterfall}");
    let indent = |i: usize| lines[i].len() - lines[i].trim_start().len();
    assert!(
        indent(gw) < indent(call) && indent(call) < indent(blue),
        "nested: {waterfall}"
    );
    let graph = demo.ctl(&["traces", "--graph", "-o", "json"]);
    let edges: serde_json::Value = serde_json::from_str(&graph).unwrap();
    let edge = |to: &str| {
        edges
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["from"] == "colorgateway" && e["to"] == to)
            .cloned()
            .unwrap_or_else(|| panic!("no colorgateway -> {to} in {graph}"))
    };
    assert!(
        edge("colorteller-blue")["calls"].as_u64().unwrap() >= 20,
        "{graph}"
    );
    let red = edge("colorteller-red");
    assert!(
        red["faults"].as_u64().unwrap() >= 5,
        "red's 500s are faults: {red}"
    );
    assert_eq!(edge("colorteller-white")["faults"], 0, "{graph}");

    // The AWS CLI, pointed at the same data by the demo's env.sh, as the tour shows.
    let aws = |cmd: &str| {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("source {}/env.sh && {cmd}", dir.path().display()))
            .output()
            .expect("bash");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{cmd}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let summaries = aws(
        "aws xray get-trace-summaries --start-time $(( $(date +%s) - 600 )) --end-time $(date +%s) \
         --query 'length(TraceSummaries)'",
    );
    assert!(
        summaries.trim().parse::<u32>().unwrap() >= 20,
        "{summaries}"
    );
    let segments = aws(&format!(
        "aws xray batch-get-traces --trace-ids {id} --query 'length(Traces[0].Segments)'"
    ));
    assert_eq!(segments.trim(), "3", "gateway, its call, blue: {segments}");
    let logged = aws(&format!(
        "aws logs filter-log-events --log-group-name /maille/colorgateway --filter-pattern '\"{id}\"' \
         --query 'length(events)'"
    ));
    assert_eq!(
        logged.trim(),
        "2",
        "the gateway's two lines of the trace: {logged}"
    );

    // 5. CloudWatch: requests per colour from the gateway's Envoy.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let per_colour = eventually(
        "request metrics per colour",
        Duration::from_secs(40),
        || {
            let m: BTreeMap<&str, f64> = [
                ("white", 10011),
                ("black", 10012),
                ("blue", 10013),
                ("red", 10014),
            ]
            .into_iter()
            .map(|(c, port)| {
                (
                    c,
                    requests_in_cloudwatch(&rt, &format!("node/colorteller-{c}/{port}")),
                )
            })
            .collect();
            // Every request the gateway's Envoy sent to blue was a header-matched one.
            (
                m["blue"] >= 20.0 && m["white"] >= 190.0 && m["black"] > 0.0 && m["red"] > 0.0,
                m,
            )
        },
    );
    eprintln!("CloudWatch upstream_rq_total per colour: {per_colour:?}");
    assert_eq!(
        per_colour["blue"], 20.0,
        "blue: exactly the 20 header-matched requests"
    );

    // The same metrics through the AWS CLI.
    let clusters = aws(
        "aws cloudwatch list-metrics --namespace Maille --metric-name envoy.cluster.upstream_rq_total \
         --output text --query \"Metrics[].Dimensions[?Name=='envoy.cluster_name'].Value\"",
    );
    assert!(
        clusters.contains("node/colorteller-blue/10013"),
        "{clusters}"
    );

    // 7. Rollouts, with traffic running as the tour says. A failing canary (red, every
    // request) rolls itself back. (Half its requests would not do: the route retries 5xx, so
    // callers see successes and the canary is fine by them.)
    let on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let on = on.clone();
        std::thread::spawn(move || {
            let a = agent();
            let mut i = 0u64;
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = a
                    .get(GATEWAY)
                    .header("x-user-id", &format!("user-{}", i % 500))
                    .call();
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let token = std::fs::read_to_string(demo.run_dir.join("maille-read.token")).unwrap();
    // The control server's port speaks HTTPS, its certificate from the demo's CA.
    let control = agent_trusting(&demo.run_dir.join("maille-ca.pem"));
    let status = |name: &str| -> serde_json::Value {
        let mut r = control
            .get(&format!(
                "https://127.0.0.1:10061/v1/rollouts/colorapp/{name}"
            ))
            .header("authorization", format!("Bearer {}", token.trim()))
            .call()
            .unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or_default()
    };
    let r = agent()
        .post("http://127.0.0.1:10014/fault?rate=1")
        .send_empty()
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = demo.ctl(&[
        "apply",
        "-f",
        "deploy/examples/colorteller/local/rollout-red.json",
    ]);
    assert!(out.contains("rollout/colorapp/red created"), "{out}");
    let red = eventually(
        "the failing canary rolls back",
        Duration::from_secs(90),
        || {
            let s = status("red");
            (s["phase"] == "RolledBack", s)
        },
    );
    println!("red rolled back: {}", red["reason"]);
    assert!(
        red["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("breaker opened on node/colorteller-red/")
            || red["failedChecks"].as_u64().unwrap_or(0) >= 2,
        "{red}"
    );
    let t = tally(50, None);
    assert_eq!(
        t.get("white"),
        Some(&50),
        "all traffic back on white: {t:?}"
    );
    // Blue takes over from white, step by step, checked at each; A/B users on blue throughout.
    let out = demo.ctl(&[
        "apply",
        "-f",
        "deploy/examples/colorteller/local/rollout-blue.json",
    ]);
    assert!(out.contains("rollout/colorapp/blue created"), "{out}");
    eventually("blue's first step", Duration::from_secs(30), || {
        let s = status("blue");
        (s["canaryWeight"] == 20, s)
    });
    // The status moves when the server publishes the step; the gateway's Envoy has it a
    // moment later (its ADS push and ACK).
    eventually("A/B users get blue", Duration::from_secs(10), || {
        let t = tally(20, Some(("x-color-beta", "yes")));
        (t.get("blue") == Some(&20), t)
    });
    let blue = eventually("blue succeeds", Duration::from_secs(180), || {
        let s = status("blue");
        (s["phase"] == "Succeeded", s)
    });
    on.store(false, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(blue["canaryWeight"], 100);
    let passed = blue["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"] == "pass")
        .count();
    assert!(passed >= 4, "a passing check per step: {blue}");
    let t = tally(50, None);
    assert_eq!(t.get("blue"), Some(&50), "blue serves: {t:?}");
    // The console is served by the control server.
    let mut r = control.get("https://127.0.0.1:10061/").call().unwrap();
    assert!(r.body_mut().read_to_string().unwrap().contains("Maille"));

    // 6. Ctrl-C stops everything the demo started.
    let pids = std::fs::read_to_string(dir.path().join("pids")).unwrap();
    interrupt(demo.child.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = demo.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not stop within 30 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the demo exits 0 on Ctrl-C: {status:?}");
    // Drain what it printed while stopping: no process is reported as having died.
    while let Ok(line) = demo.lines.recv_timeout(Duration::from_millis(500)) {
        demo.output.push(line);
    }
    let stopping = demo
        .output
        .iter()
        .position(|l| l.contains("stopping everything"))
        .expect("the demo says it is stopping");
    let after = &demo.output[stopping..];
    assert!(
        !after
            .iter()
            .any(|l| l.contains("exited") || l.contains("rror")),
        "error lines after Ctrl-C: {after:?}"
    );
    let mut started = 0;
    for line in pids.lines() {
        let (pid, name) = line.split_once(' ').unwrap();
        started += 1;
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "{name} (pid {pid}) still runs after Ctrl-C"
        );
    }
    assert_eq!(
        started, 17,
        "moto, control, and 5 x (app, collector, Envoy): {pids}"
    );
    assert!(
        std::net::TcpListener::bind("127.0.0.1:10000").is_ok(),
        "the gateway's port is free again"
    );
}
