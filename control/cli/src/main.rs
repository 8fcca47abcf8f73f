//! `maillectl`: the command line of Maille's control server. Flags in `--help`; the work is
//! in the library (`maillectl::client`, `offline`, `traces_cmd`) and `rollout_cmd`.

mod rollout_cmd;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use maille_api::{ApplyReport, BootstrapQuery};
use maille_import::{import_paths, Params};
use maille_model::{Key, Kind, Resource};
use maillectl::client::{self, Client};
use maillectl::traces_cmd::TracesArgs;
use maillectl::{offline, parse_param, traces_cmd};
use std::path::PathBuf;
use std::time::Duration;

/// Drive Maille's control server: apply App Mesh specs (API JSON, CloudFormation, Terraform,
/// Kubernetes manifests), inspect what is served, see which Envoys acknowledged it, and make
/// Envoy bootstraps.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The control server's admin API.
    #[arg(
        long,
        global = true,
        env = "MAILLE_SERVER",
        default_value = "https://127.0.0.1:18080"
    )]
    server: String,
    /// The CA certificate (PEM) the server's certificate is verified with. Without it,
    /// maillectl reads `maille-ca.pem` where the server writes it (beside its tokens: next
    /// to MAILLE_TOKEN_FILE or MAILLE_STATE, in the current folder, or in /var/lib/maille),
    /// else trusts the public roots.
    #[arg(long, global = true, env = "MAILLE_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// The admin API token. Without it, maillectl reads the file MAILLE_TOKEN_FILE names,
    /// else `maille-admin.token` where the server writes it: next to MAILLE_STATE, in the
    /// current folder, or in /var/lib/maille. The read-only token (`maille-read.token`)
    /// serves `get`, `status` and the like.
    #[arg(long, global = true, env = "MAILLE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or replace the resources in files or folders (any supported format).
    Apply {
        /// Files or folders (.json, .yaml, .yml, .tf).
        #[arg(short = 'f', long = "file", required_unless_present = "paths")]
        files: Vec<PathBuf>,
        /// Files or folders, as with -f (`maillectl import a.yaml b/`).
        #[arg(value_name = "FILE")]
        paths: Vec<PathBuf>,
        /// A CloudFormation parameter or Terraform variable: NAME=VALUE (repeatable; each goes to
        /// the files that take it). An export that a template reads with Fn::ImportValue:
        /// ImportValue:NAME=VALUE.
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
        #[arg(short = 'f', long = "file", required_unless_present = "paths")]
        files: Vec<PathBuf>,
        /// Files or folders, as with -f (`maillectl import a.yaml b/`).
        #[arg(value_name = "FILE")]
        paths: Vec<PathBuf>,
        /// NAME=VALUE (repeatable).
        #[arg(short = 'p', long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
    },
    /// List resources.
    Get {
        /// mesh, virtual-node, virtual-router, route, virtual-service, virtual-gateway,
        /// gateway-route, filter or rollout; all when absent.
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
        /// Its name (a route: ROUTER/ROUTE; a gateway route: GATEWAY/ROUTE; a mesh: the
        /// mesh's name).
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
        #[arg(short = 'f', long = "file", required_unless_present = "paths")]
        files: Vec<PathBuf>,
        /// Files or folders, as with -f (`maillectl import a.yaml b/`).
        #[arg(value_name = "FILE")]
        paths: Vec<PathBuf>,
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
    /// Print an Envoy bootstrap for a virtual node's or virtual gateway's proxy that points
    /// at this server.
    Bootstrap {
        /// The virtual node: `mesh/<mesh>/virtualNode/<name>`, or `<mesh>/<name>`; a
        /// virtual gateway: `mesh/<mesh>/virtualGateway/<name>` (it listens on its
        /// listeners' own ports; `--egress-port` is its internal hop, on 127.0.0.1).
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
    /// Print a node's token (needs the admin token): it fetches that node's bootstrap and
    /// nothing else, for a deployment that should hold one node's credential only, e.g.
    /// `kubectl create secret generic maille-node-white --from-literal=token="$(maillectl
    /// token --node colorapp/colorteller-white)"`.
    Token {
        /// The node, as for `bootstrap`.
        #[arg(long)]
        node: String,
    },
    /// Breaker state changes received from the breaker filters.
    Signals,
    /// Offline: check definitions, translate every virtual node, and have Envoy validate each
    /// node's configuration (`envoy --mode validate`). Needs no server.
    Validate {
        /// Files or folders.
        #[arg(short = 'f', long = "file", required_unless_present = "paths")]
        files: Vec<PathBuf>,
        /// Files or folders, as with -f (`maillectl import a.yaml b/`).
        #[arg(value_name = "FILE")]
        paths: Vec<PathBuf>,
        /// NAME=VALUE (repeatable).
        #[arg(short = 'p', long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// The Envoy binary.
        #[arg(long, env = "MAILLE_ENVOY", default_value = "envoy")]
        envoy: PathBuf,
        /// Folder of the filter modules.
        #[arg(long, default_value = "target/filters")]
        modules: PathBuf,
        /// Also keep each node's self-contained bootstrap in this folder
        /// (`<mesh>/<node>.pb`, binary protobuf: `envoy -c FILE`, with `--config-yaml` to add
        /// an admin listener): the node's configuration run with no control server.
        #[arg(long, value_name = "DIR")]
        write_bootstraps: Option<PathBuf>,
        /// Envoy port of the (first) ingress listener in the nodes' configurations.
        #[arg(long, default_value_t = maille_translate::defaults::INGRESS_PORT)]
        ingress_port: u16,
        /// Envoy port of the egress listener in the nodes' configurations.
        #[arg(long, default_value_t = maille_translate::defaults::EGRESS_PORT)]
        egress_port: u16,
    },
    /// Read traces back from AWS X-Ray (or a local endpoint: AWS_ENDPOINT_URL): recent traces,
    /// filtered by annotation (e.g. the canary variant) or service; one trace as a waterfall;
    /// the service graph. AWS access follows the default chain (AWS_REGION, AWS_PROFILE...).
    ///
    /// The AWS CLI reads the same data: `aws xray get-trace-summaries --start-time ...
    /// --end-time ... --filter-expression 'annotation.maille_variant = "canary"'`.
    Traces(TracesArgs),
    /// Progressive delivery: list rollouts, show one (`--watch` live, `-o json`), wait for
    /// one to end (`--wait`: exit 0 only when it succeeded), promote, pause, resume, abort.
    Rollout(rollout_cmd::RolloutArgs),
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

fn print_report(r: &ApplyReport, dry_run: bool) {
    let verb = if dry_run { "would be " } else { "" };
    for (keys, label) in [
        (&r.created, "created"),
        (&r.updated, "updated"),
        (&r.deleted, "deleted"),
    ] {
        for k in keys {
            println!("{k} {verb}{label}");
        }
    }
    for k in &r.unchanged {
        println!("{k} unchanged");
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if !dry_run {
        println!("version {}", r.version);
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
    if let Some(t) = &cli.token {
        client::set_token(t.trim().to_owned());
    }
    if let Some(f) = &cli.ca_cert {
        let found = std::fs::read_to_string(f).map(|pem| client::pem_certificates(&pem));
        match found {
            Ok(certs) if !certs.is_empty() => client::set_ca(f.clone()),
            Ok(_) => {
                eprintln!("error: --ca-cert {}: no PEM certificate in it", f.display());
                std::process::exit(2);
            }
            Err(e) => {
                eprintln!("error: --ca-cert {}: {e}", f.display());
                std::process::exit(2);
            }
        }
    }
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// `--node` as a full node id (`<mesh>/<name>` is a virtual node's).
fn full_node_id(node: String) -> Result<String> {
    if node.starts_with("mesh/") {
        Ok(node)
    } else if let Some((m, n)) = node.split_once('/') {
        Ok(maille_translate::names::node_id(m, n))
    } else {
        bail!(
            "--node must be mesh/<mesh>/virtualNode/<name>, mesh/<mesh>/virtualGateway/<name> or <mesh>/<name>, got {node:?}"
        )
    }
}

/// Runs the command; the exit code (`rollout --wait` says how the rollout ended with it).
fn run(cli: Cli) -> Result<i32> {
    let api = Client::new(&cli.server);
    match cli.command {
        Command::Apply {
            mut files,
            paths,
            params,
            dry_run,
            wait,
            timeout,
        } => {
            files.extend(paths);
            let r = api.apply(read(&files, params)?, dry_run)?;
            print_report(&r, dry_run);
            if wait && !dry_run {
                println!(
                    "{}",
                    api.wait_synced(r.version, Duration::from_secs(timeout))?
                );
            }
        }
        Command::Import {
            mut files,
            paths,
            params,
        } => {
            files.extend(paths);
            let resources = read(&files, params)?;
            println!("{}", serde_json::to_string_pretty(&resources)?);
        }
        Command::Diff {
            mut files,
            paths,
            params,
        } => {
            files.extend(paths);
            let r = api.apply(read(&files, params)?, true)?;
            print_report(&r, true);
        }
        Command::Get { kind, mesh, output } => {
            let kind = kind.map(|k| parse_kind(&k)).transpose()?;
            let v = api.resources(kind, mesh.as_deref())?;
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&v.resources)?);
            } else {
                println!("{:<16} {:<20} NAME", "KIND", "MESH");
                for r in &v.resources {
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
            let kind = parse_kind(&kind)?;
            let mesh = match (kind, mesh) {
                (Kind::Mesh, _) => name.clone(),
                (_, Some(m)) => m,
                (_, None) => bail!("--mesh is required to delete a {kind}"),
            };
            let r = api.delete(vec![Key { kind, mesh, name }], dry_run)?;
            print_report(&r, dry_run);
        }
        Command::Status { output } => {
            let v = api.status()?;
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(0);
            }
            println!("served version {}", v.version);
            if v.clients.is_empty() {
                println!("no Envoy connected");
            }
            for c in &v.clients {
                println!(
                    "{}  ({})  synced to version {}",
                    c.node, c.peer, c.synced_version
                );
                for (t, st) in &c.types {
                    let acked = st.acked.as_deref().unwrap_or("-");
                    println!("  {t:<5} sent {:<22} acked {acked}", st.sent);
                    if let Some(n) = &st.last_nack {
                        println!("        NACK of {}: {}", n.version, n.message);
                    }
                }
                for w in &c.warnings {
                    println!("  warning: {w}");
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
            let node = full_node_id(node)?;
            print!(
                "{}",
                api.bootstrap(&BootstrapQuery {
                    node,
                    admin_port: Some(admin_port),
                    ingress_port: Some(ingress_port),
                    egress_port: Some(egress_port),
                    listen_address: Some(listen_address),
                    app_address: Some(app_address),
                    otlp_port,
                })?
            );
        }
        Command::Token { node } => {
            println!("{}", api.node_token(&full_node_id(node)?)?.token);
        }
        Command::Validate {
            mut files,
            paths,
            params,
            envoy,
            modules,
            write_bootstraps,
            ingress_port,
            egress_port,
        } => offline::validate(
            {
                files.extend(paths);
                read(&files, params)?
            },
            &envoy,
            &modules,
            &maille_translate::NodeOptions {
                ingress_port,
                egress_port,
                ..Default::default()
            },
            write_bootstraps.as_deref(),
        )?,
        Command::Signals => {
            for s in api.signals()?.signals {
                println!("{}", serde_json::to_string(&s)?);
            }
        }
        Command::Traces(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(traces_cmd::run(args))?;
        }
        Command::Rollout(args) => return rollout_cmd::run(&cli.server, args),
    }
    Ok(0)
}

fn parse_kind(kind: &str) -> Result<Kind> {
    Kind::parse(kind).with_context(|| {
        format!("unknown kind {kind:?}: use mesh, virtual-node, virtual-router, route, virtual-service, virtual-gateway, gateway-route, filter or rollout")
    })
}
