//! `maillectl rollout`: list rollouts, show one (a readable view, a live view, or JSON),
//! wait for one to end (for pipelines: the exit code says how it ended), and promote, pause,
//! resume or abort one. Everything goes through the admin API's typed client.

use anyhow::{bail, Result};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use maille_api::{Check, Event, Phase, RolloutAction, RolloutStatus, Sample, Verdict};
use maillectl::client::{action_segment, ApiError, Client};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant, SystemTime};

/// Exit code: the rollout succeeded (or, without --wait/--watch, the command did its job).
pub(crate) const EXIT_OK: i32 = 0;
/// Exit code: an error (no such rollout, a refused action, the server unreachable for long).
pub(crate) const EXIT_ERROR: i32 = 1;
/// Exit code: the rollout rolled back (traffic is back on the stable).
pub(crate) const EXIT_ROLLED_BACK: i32 = 3;
/// Exit code: the rollout failed (stopped by an error; traffic as it was left).
pub(crate) const EXIT_FAILED: i32 = 4;
/// Exit code: --timeout passed before the rollout ended.
pub(crate) const EXIT_TIMEOUT: i32 = 5;

/// How often a live view or a wait asks the server.
const POLL: Duration = Duration::from_secs(1);
/// Each poll's own bound: a stalled server shows as unreachable rather than freezing a view.
const POLL_TIMEOUT: Duration = Duration::from_secs(5);
/// A wait gives up when the server stays unreachable this long (a restart takes seconds;
/// the rollout itself resumes where it was).
const MAX_OUTAGE: Duration = Duration::from_secs(60);
/// Checks and events the readable view shows (the newest).
const SHOWN_CHECKS: usize = 10;
const SHOWN_EVENTS: usize = 15;
/// Events printed when a wait starts, for context.
const EVENTS_AT_START: usize = 10;

const AFTER_HELP: &str = "\
NAME is MESH/NAME, or NAME with --mesh MESH; NAME alone will do when one mesh has a rollout
of that name.

Examples:
  maillectl rollout list
  maillectl rollout status colorapp/blue
  maillectl rollout status blue --watch          # live view, redrawn every second
  maillectl rollout status blue -o json | jq .canaryWeight
  maillectl rollout status colorapp/blue --wait --timeout 1800 && deploy-next-stage
  maillectl rollout pause colorapp/blue
  maillectl rollout resume colorapp/blue
  maillectl rollout promote colorapp/blue        # past a pause step, or straight to 100%
  maillectl rollout abort colorapp/blue          # all traffic back on the stable now

Exit codes of --wait and --watch (for pipelines such as Jenkins):
  0  the rollout succeeded (promoted)
  1  error: no such rollout, the server unreachable for 60 s, the rollout deleted
  2  bad command line
  3  the rollout rolled back
  4  the rollout failed (stopped by an error; traffic as it was left)
  5  --timeout passed before the rollout ended
Other commands exit 0 on success and 1 on an error or a refusal (printed with the server's
reason).";

/// Progressive delivery: follow rollouts and steer them.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub(crate) struct RolloutArgs {
    #[command(subcommand)]
    command: RolloutCommand,
}

/// `table` (readable) or `json` (the API's JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// One rollout, by name.
#[derive(Debug, Args)]
struct Target {
    /// MESH/NAME, or NAME (with --mesh, or alone when one mesh has a rollout of that name).
    name: String,
    /// The rollout's mesh.
    #[arg(long)]
    mesh: Option<String>,
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Every rollout: phase, step, the canary's weight, what it waits for.
    List {
        /// `table` or `json` (the API's RolloutsAnswer).
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One rollout: phase, step, weights, next step, what it waits for, recent checks with
    /// each threshold, events.
    #[command(
        group(ArgGroup::new("follow").multiple(true).args(["watch", "wait"])),
        after_long_help = AFTER_HELP
    )]
    Status {
        #[command(flatten)]
        target: Target,
        /// A live view, redrawn every second until the rollout ends (or Ctrl-C); when stdout
        /// is not a terminal, one line per change.
        #[arg(long)]
        watch: bool,
        /// Block until the rollout ends, printing a line per change; exit 0 only when it
        /// succeeded (codes below).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 5). Default: no limit.
        #[arg(long, value_name = "SECS", requires = "follow")]
        timeout: Option<u64>,
        /// `table` or `json` (the API's RolloutStatus; with --wait or --watch, one JSON line
        /// per change).
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Past a pause step; elsewhere, straight to promotion (the remaining steps skipped).
    #[command(after_long_help = AFTER_HELP)]
    Promote(Target),
    /// Hold at the current step until `resume`.
    #[command(after_long_help = AFTER_HELP)]
    Pause(Target),
    /// Go on after a `pause`.
    #[command(after_long_help = AFTER_HELP)]
    Resume(Target),
    /// Roll back now: all traffic back on the stable.
    #[command(after_long_help = AFTER_HELP)]
    Abort(Target),
}

/// Runs a `rollout` command; the process's exit code.
pub(crate) fn run(server: &str, args: RolloutArgs) -> Result<i32> {
    let api = Client::new(server);
    match args.command {
        RolloutCommand::List { output } => {
            let all = api.rollouts()?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", list_table(&all.rollouts, now_ms()));
            }
            Ok(EXIT_OK)
        }
        RolloutCommand::Status {
            target,
            watch,
            wait,
            timeout,
            output,
        } => {
            let (mesh, name) = resolve(&api, &target)?;
            // An unknown name is refused here, naming the rollouts there are; later, while
            // following, a 404 means the rollout was deleted.
            let s = get(&api, &mesh, &name)?;
            if !watch && !wait {
                if output == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    let spec = spec_of(&api, &mesh, &name);
                    print!("{}", view(&s, spec.as_ref(), now_ms()));
                }
                return Ok(EXIT_OK);
            }
            let screen = watch && output == Output::Table && std::io::stdout().is_terminal();
            follow(
                server,
                &mesh,
                &name,
                Follow {
                    screen,
                    json: output == Output::Json,
                    timeout: timeout.map(Duration::from_secs),
                },
            )
        }
        RolloutCommand::Promote(t) => act(&api, &t, RolloutAction::Promote),
        RolloutCommand::Pause(t) => act(&api, &t, RolloutAction::Pause),
        RolloutCommand::Resume(t) => act(&api, &t, RolloutAction::Resume),
        RolloutCommand::Abort(t) => act(&api, &t, RolloutAction::Abort),
    }
}

fn act(api: &Client, t: &Target, action: RolloutAction) -> Result<i32> {
    let (mesh, name) = resolve(api, t)?;
    match api.rollout_action(&mesh, &name, action) {
        Ok(s) => {
            println!("{}", line(&s, None, now_ms()));
            Ok(EXIT_OK)
        }
        Err(e @ ApiError::Refused { status: 404, .. }) => {
            bail!("{}", unknown(api, &mesh, &name, &e))
        }
        Err(ApiError::Refused { body, .. }) => {
            bail!("cannot {} {mesh}/{name}: {body}", action_segment(action))
        }
        Err(e) => Err(e.into()),
    }
}

/// The mesh and name `t` designates.
fn resolve(api: &Client, t: &Target) -> Result<(String, String)> {
    let (mesh, name) = match (t.name.split_once('/'), &t.mesh) {
        (Some((m, n)), None) => (Some(m.to_owned()), n.to_owned()),
        (Some((m, n)), Some(flag)) if m == flag => (Some(m.to_owned()), n.to_owned()),
        (Some(_), Some(flag)) => bail!(
            "{:?} names another mesh than --mesh {flag:?}: give MESH/NAME or NAME --mesh MESH",
            t.name
        ),
        (None, m) => (m.clone(), t.name.clone()),
    };
    for (what, v) in [
        ("mesh", mesh.as_deref()),
        ("rollout name", Some(name.as_str())),
    ] {
        if let Some(v) = v {
            if !maille_model::valid_name(v) {
                bail!(
                    "{v:?} is not a {what}: names are 1 to {} letters, digits, '-' or '_' (give MESH/NAME or NAME)",
                    maille_model::limits::MAX_NAME_LEN
                );
            }
        }
    }
    if let Some(m) = mesh {
        return Ok((m, name));
    }
    let all = api.rollouts()?.rollouts;
    let meshes: Vec<&str> = all
        .iter()
        .filter(|r| r.name == name)
        .map(|r| r.mesh.as_str())
        .collect();
    match meshes.as_slice() {
        [m] => Ok(((*m).to_owned(), name)),
        [] => bail!("no rollout named {name:?}; {}", known(&all)),
        many => bail!(
            "rollouts named {name:?} are in meshes {}: say which, as {}/{name} or --mesh {}",
            many.join(", "),
            many[0],
            many[0]
        ),
    }
}

/// "the server has: a/b, c/d" or "the server has no rollouts".
fn known(all: &[RolloutStatus]) -> String {
    if all.is_empty() {
        return "the server has no rollouts".into();
    }
    let names: Vec<String> = all
        .iter()
        .map(|r| format!("{}/{}", r.mesh, r.name))
        .collect();
    format!("the server has: {}", names.join(", "))
}

fn unknown(api: &Client, mesh: &str, name: &str, e: &ApiError) -> String {
    match api.rollouts() {
        Ok(all) => format!("{e}; {}", known(&all.rollouts)),
        Err(_) => format!("no rollout {mesh}/{name}: {e}"),
    }
}

fn get(api: &Client, mesh: &str, name: &str) -> Result<RolloutStatus> {
    match api.rollout(mesh, name) {
        Ok(s) => Ok(s),
        Err(e @ ApiError::Refused { status: 404, .. }) => bail!("{}", unknown(api, mesh, name, &e)),
        Err(e) => Err(e.into()),
    }
}

/// The rollout's spec, for what the status does not say (each step's duration).
fn spec_of(api: &Client, mesh: &str, name: &str) -> Option<maille_model::Rollout> {
    api.rollout_specs(Some(mesh))
        .ok()?
        .into_iter()
        .find(|r| r.rollout_name == name)
}

// === following ===

#[derive(Debug, Clone, Copy)]
struct Follow {
    /// Redraw a full view in place (a terminal); else print lines.
    screen: bool,
    /// One JSON document per change.
    json: bool,
    timeout: Option<Duration>,
}

/// What a change is, for the line printer: the countdown to the next step is not one.
fn change_key(s: &RolloutStatus) -> impl PartialEq {
    (
        s.phase,
        s.step,
        s.canary_weight,
        s.waiting_for.clone(),
        s.reason.clone(),
        s.rolling_back,
        s.spec_hash,
    )
}

/// The exit code for an ended rollout.
fn exit_code(p: Phase) -> i32 {
    match p {
        Phase::Succeeded => EXIT_OK,
        Phase::RolledBack => EXIT_ROLLED_BACK,
        Phase::Failed => EXIT_FAILED,
        Phase::Progressing | Phase::Paused => EXIT_ERROR,
    }
}

/// What the line printer has printed so far.
#[derive(Debug, Default)]
struct Printed {
    last: Option<RolloutStatus>,
}

impl Printed {
    /// The lines to print for `s`, given what was printed before: a status line when
    /// something changed, each new event and each new check.
    fn lines(
        &mut self,
        s: &RolloutStatus,
        spec: Option<&maille_model::Rollout>,
        now: u64,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let (events, checks): (&[Event], &[Check]) = match &self.last {
            Some(prev) if prev.spec_hash != s.spec_hash => {
                out.push(format!(
                    "{} a changed spec started {}/{} again",
                    clock(now),
                    s.mesh,
                    s.name
                ));
                (&s.events, &s.checks)
            }
            Some(prev) => (
                after(&s.events, prev.events.last(), |a, b| a == b),
                after(&s.checks, prev.checks.last(), |a, b| {
                    a.at_millis == b.at_millis
                }),
            ),
            None => (
                &s.events[s.events.len().saturating_sub(EVENTS_AT_START)..],
                &[][..],
            ),
        };
        if self
            .last
            .as_ref()
            .is_none_or(|p| change_key(p) != change_key(s))
        {
            out.push(format!("{} {}", clock(now), line(s, spec, now)));
        }
        for e in events {
            out.push(format!(
                "  {} {:<12} {}",
                clock(e.at_millis),
                e.kind,
                e.message
            ));
        }
        for c in checks {
            out.push(format!("  {} check {}", clock(c.at_millis), check_line(c)));
        }
        self.last = Some(s.clone());
        out
    }
}

/// The items of `all` after `last` (found from the end, as the server keeps the newest); all
/// of them when `last` is no longer there.
fn after<'a, T>(all: &'a [T], last: Option<&T>, same: impl Fn(&T, &T) -> bool) -> &'a [T] {
    let Some(last) = last else { return all };
    match all.iter().rposition(|x| same(x, last)) {
        Some(i) => &all[i + 1..],
        None => all,
    }
}

fn follow(server: &str, mesh: &str, name: &str, f: Follow) -> Result<i32> {
    let api = Client::with_timeout(server, POLL_TIMEOUT);
    let start = Instant::now();
    let mut printed = Printed::default();
    let mut last_json = String::new();
    let mut down_since: Option<Instant> = None;
    let mut last_view = String::new();
    let out = std::io::stdout();
    loop {
        let now = now_ms();
        match api.rollout(mesh, name) {
            Ok(s) => {
                if let Some(t) = down_since.take() {
                    if !f.screen {
                        println!(
                            "{} control server back after {}",
                            clock(now),
                            span(t.elapsed().as_millis() as u64)
                        );
                    }
                }
                let spec = spec_of(&api, mesh, name);
                if f.json {
                    let j = serde_json::to_string(&s)?;
                    if j != last_json {
                        println!("{j}");
                        last_json = j;
                    }
                } else if f.screen {
                    last_view = view(&s, spec.as_ref(), now);
                    let mut o = out.lock();
                    // Home, clear: the view is redrawn in place.
                    write!(o, "\x1b[H\x1b[2J{last_view}")?;
                    if !s.phase.is_done() {
                        writeln!(
                            o,
                            "\nupdated {} UTC, every {}s; Ctrl-C to stop",
                            clock(now),
                            POLL.as_secs()
                        )?;
                    }
                    o.flush()?;
                } else {
                    for l in printed.lines(&s, spec.as_ref(), now) {
                        println!("{l}");
                    }
                }
                if s.phase.is_done() {
                    return Ok(exit_code(s.phase));
                }
            }
            Err(e @ ApiError::Refused { status: 404, .. }) => {
                bail!("{mesh}/{name} is gone (deleted?): {e}")
            }
            Err(e) => {
                let since = *down_since.get_or_insert_with(Instant::now);
                let why = format!("{:#}", anyhow::Error::from(e));
                if since.elapsed() >= MAX_OUTAGE {
                    bail!(
                        "gave up after {}: {why}",
                        span(since.elapsed().as_millis() as u64)
                    );
                }
                if f.screen {
                    let mut o = out.lock();
                    write!(
                        o,
                        "\x1b[H\x1b[2J{last_view}\n{} UTC: {why}; retrying every {}s\n",
                        clock(now),
                        POLL.as_secs()
                    )?;
                    o.flush()?;
                } else if since.elapsed() < POLL {
                    // Once per outage.
                    eprintln!("{} {why}; retrying", clock(now));
                }
            }
        }
        if let Some(t) = f.timeout {
            if start.elapsed() >= t {
                eprintln!(
                    "timed out after {}s; {}/{} has not ended",
                    t.as_secs(),
                    mesh,
                    name
                );
                return Ok(EXIT_TIMEOUT);
            }
        }
        std::thread::sleep(POLL);
    }
}

// === rendering ===

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `HH:MM:SS` (UTC) of a time in ms since the epoch.
fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// A duration, short: `850ms`, `4s`, `2m05s`, `1h02m`.
fn span(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Progressing => "Progressing",
        Phase::Paused => "Paused",
        Phase::Succeeded => "Succeeded",
        Phase::RolledBack => "RolledBack",
        Phase::Failed => "Failed",
    }
}

/// `n/N`, 1-based, `N/N` once past the last step.
fn step_of(s: &RolloutStatus) -> String {
    format!("{}/{}", (s.step + 1).min(s.steps), s.steps)
}

/// When the next step is due, if time is what the rollout waits for.
///
/// The server's `nextStepAtMillis` is taken when it belongs to the current step (it is later
/// than the step's start); otherwise the step's duration comes from the spec (a server that
/// saved the status before setting it keeps the previous step's value there).
fn next_step_at(s: &RolloutStatus, spec: Option<&maille_model::Rollout>) -> Option<u64> {
    if s.phase != Phase::Progressing || s.rolling_back {
        return None;
    }
    if let Some(t) = s
        .next_step_at_millis
        .filter(|t| *t > s.step_started_at_millis)
    {
        return Some(t);
    }
    let spec = &spec?.spec;
    let (_, duration) = spec.plan().get(s.step).copied()?;
    if spec.analysis.is_some() && s.passed_in_step == 0 {
        // A step with analysis waits for a passing check as well.
        return None;
    }
    Some(s.step_started_at_millis + duration?)
}

/// What it waits for, in words; with `now`, time says how long.
fn waits_for(s: &RolloutStatus, next: Option<u64>, now: Option<u64>) -> Option<String> {
    if s.phase.is_done() {
        return None;
    }
    if let Some(w) = &s.waiting_for {
        return Some(w.clone());
    }
    if s.rolling_back {
        return Some("stepping back".into());
    }
    next.map(|t| match now {
        Some(now) => format!("time: next step in {}", span(t.saturating_sub(now))),
        None => "time".into(),
    })
}

/// One line: `colorapp/blue Progressing step 2/3 canary colorteller-blue 30%, stable
/// colorteller-white 70%; waits for ...`.
fn line(s: &RolloutStatus, spec: Option<&maille_model::Rollout>, now: u64) -> String {
    let mut l = format!(
        "{}/{} {} step {} canary {} {}%, stable {} {}%",
        s.mesh,
        s.name,
        phase_name(s.phase),
        step_of(s),
        s.canary,
        s.canary_weight,
        s.stable,
        100u32.saturating_sub(s.canary_weight)
    );
    if let Some(w) = waits_for(s, next_step_at(s, spec), Some(now)) {
        let _ = write!(l, "; waits for {w}");
    }
    if let Some(r) = &s.reason {
        let _ = write!(l, "; {r}");
    }
    l
}

fn list_table(all: &[RolloutStatus], now: u64) -> String {
    if all.is_empty() {
        return "no rollouts\n".into();
    }
    let mut t = format!(
        "{:<28} {:<12} {:<6} {:<24} {:>6}  {:<34} WAITS FOR\n",
        "MESH/NAME", "PHASE", "STEP", "CANARY", "WEIGHT", "ROUTE"
    );
    for s in all {
        let w = waits_for(s, next_step_at(s, None), Some(now))
            .or_else(|| s.reason.clone())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            t,
            "{:<28} {:<12} {:<6} {:<24} {:>5}%  {:<34} {w}",
            format!("{}/{}", s.mesh, s.name),
            phase_name(s.phase),
            step_of(s),
            s.canary,
            s.canary_weight,
            s.route
        );
    }
    t
}

/// A bar of `width` cells, `pct` of them full.
fn bar(pct: u32, width: usize) -> String {
    let full = (pct.min(100) as usize * width + 50) / 100;
    format!("{}{}", "█".repeat(full), "░".repeat(width - full))
}

/// The plan, the current step in brackets; long plans elided around it.
fn plan_text(s: &RolloutStatus) -> String {
    let n = s.plan.len();
    let cur = s.step.min(n);
    let show = |i: usize| n <= 12 || i == 0 || i + 1 == n || i.abs_diff(cur) <= 2;
    let mut parts = Vec::new();
    let mut gap = false;
    for (i, w) in s.plan.iter().enumerate() {
        if !show(i) {
            if !gap {
                parts.push("…".to_owned());
            }
            gap = true;
            continue;
        }
        gap = false;
        parts.push(if i == cur && !s.phase.is_done() {
            format!("[{w}%]")
        } else {
            format!("{w}%")
        });
    }
    parts.join(" → ")
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "FAIL",
        Verdict::NoData => "no data",
    }
}

fn sample_text(x: &Sample) -> String {
    format!(
        "{:>6} req {:>5} err {:>8} {:>9}",
        x.requests,
        x.errors,
        x.success_rate
            .map(|r| format!("{:.2}%", r * 100.0))
            .unwrap_or_else(|| "-".into()),
        x.p99_millis
            .map(|p| format!("{p:.1}ms"))
            .unwrap_or_else(|| "-".into()),
    )
}

fn measure_value(metric: &str, v: f64) -> String {
    if metric == "latencyP99" {
        format!("{v:.1}ms")
    } else {
        format!("{v:.4}")
    }
}

fn measures_text(c: &Check) -> String {
    c.measures
        .iter()
        .map(|m| {
            format!(
                "{} {} {} {} {}",
                if m.pass { "✓" } else { "✗" },
                m.metric,
                m.value
                    .map(|v| measure_value(&m.metric, v))
                    .unwrap_or_else(|| "?".into()),
                m.op,
                measure_value(&m.metric, m.threshold)
            )
        })
        .collect::<Vec<_>>()
        .join("   ")
}

/// A check on one line (for the line printer).
fn check_line(c: &Check) -> String {
    let mut l = format!(
        "step {} at {}%: {}; canary {}; stable {}",
        c.step + 1,
        c.canary_weight,
        verdict_name(c.verdict),
        sample_text(&c.canary)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        sample_text(&c.stable)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    );
    if !c.measures.is_empty() {
        let _ = write!(l, "; {}", measures_text(c));
    }
    l
}

/// The readable view of one rollout.
fn view(s: &RolloutStatus, spec: Option<&maille_model::Rollout>, now: u64) -> String {
    let mut v = String::new();
    let stable_w = 100u32.saturating_sub(s.canary_weight);
    let name_w = s.canary.len().max(s.stable.len());
    let _ = writeln!(v, "rollout {}/{}   {}", s.mesh, s.name, phase_name(s.phase));
    let _ = writeln!(v, "  route      {}", s.route);
    let _ = writeln!(
        v,
        "  canary     {:<name_w$} {:>3}%  {}",
        s.canary,
        s.canary_weight,
        bar(s.canary_weight, 30)
    );
    let _ = writeln!(
        v,
        "  stable     {:<name_w$} {:>3}%  {}",
        s.stable,
        stable_w,
        bar(stable_w, 30)
    );
    let _ = writeln!(v, "  step       {}   plan {}", step_of(s), plan_text(s));
    let next = next_step_at(s, spec);
    if let Some(t) = next {
        let _ = writeln!(
            v,
            "  next step  in {} (at {} UTC)",
            span(t.saturating_sub(now)),
            clock(t)
        );
    }
    if let Some(w) = waits_for(s, next, None) {
        let _ = writeln!(v, "  waits for  {w}");
    }
    if let Some(r) = &s.reason {
        let _ = writeln!(v, "  reason     {r}");
    }
    if s.step_started_at_millis > 0 && !s.phase.is_done() {
        let _ = writeln!(
            v,
            "  in step    for {}",
            span(now.saturating_sub(s.step_started_at_millis))
        );
    }
    let _ = writeln!(
        v,
        "  checks     {} failed so far, {} passed in this step, {} without data in a row",
        s.failed_checks, s.passed_in_step, s.no_data_intervals
    );
    if s.checks.is_empty() {
        let _ = writeln!(
            v,
            "\nchecks: none{}",
            if spec.is_some_and(|r| r.spec.analysis.is_none()) {
                " (no analysis: steps advance on time)"
            } else {
                ""
            }
        );
    } else {
        let shown = &s.checks[s.checks.len().saturating_sub(SHOWN_CHECKS)..];
        let _ = writeln!(
            v,
            "\nchecks (the last {} of {}, times UTC)",
            shown.len(),
            s.checks.len()
        );
        let _ = writeln!(
            v,
            "  {:<8}  {:>4} {:>6}  {:<7}  {:<37}  STABLE",
            "TIME", "STEP", "WEIGHT", "VERDICT", "CANARY"
        );
        for c in shown {
            let _ = writeln!(
                v,
                "  {:<8}  {:>4} {:>5}%  {:<7}  {}  {}",
                clock(c.at_millis),
                c.step + 1,
                c.canary_weight,
                verdict_name(c.verdict),
                sample_text(&c.canary),
                sample_text(&c.stable)
            );
            if !c.measures.is_empty() {
                let _ = writeln!(v, "            {}", measures_text(c));
            }
        }
    }
    let shown = &s.events[s.events.len().saturating_sub(SHOWN_EVENTS)..];
    let _ = writeln!(
        v,
        "\nevents (the last {} of {}, times UTC)",
        shown.len(),
        s.events.len()
    );
    for e in shown {
        let _ = writeln!(v, "  {}  {:<12} {}", clock(e.at_millis), e.kind, e.message);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use maille_api::Measure;

    fn status() -> RolloutStatus {
        RolloutStatus {
            mesh: "colorapp".into(),
            name: "blue".into(),
            route: "colorteller-vr/colorteller-route".into(),
            stable: "colorteller-white".into(),
            canary: "colorteller-blue".into(),
            phase: Phase::Progressing,
            step: 1,
            steps: 3,
            canary_weight: 30,
            plan: vec![10, 30, 60],
            step_started_at_millis: 1_000_000,
            events: vec![Event {
                at_millis: 1_000_000,
                kind: "step".into(),
                message: "step 2 of 3: canary at 30%".into(),
            }],
            ..Default::default()
        }
    }

    fn spec(steps: serde_json::Value) -> maille_model::Rollout {
        serde_json::from_value(serde_json::json!({
            "meshName": "colorapp", "rolloutName": "blue",
            "spec": {"virtualRouterName": "colorteller-vr", "routeName": "colorteller-route",
                     "stable": "colorteller-white", "canary": "colorteller-blue", "steps": steps}
        }))
        .unwrap()
    }

    #[test]
    fn next_step_comes_from_the_server_unless_it_belongs_to_an_earlier_step() {
        let mut s = status();
        let r = spec(serde_json::json!([
            {"weight": 10, "duration": {"unit": "s", "value": 5}},
            {"weight": 30, "duration": {"unit": "s", "value": 7}},
            {"weight": 60, "pause": true}]));
        s.next_step_at_millis = Some(1_004_000);
        assert_eq!(next_step_at(&s, Some(&r)), Some(1_004_000));
        // The previous step's due time: the spec's duration of this step instead.
        s.next_step_at_millis = Some(999_990);
        assert_eq!(next_step_at(&s, Some(&r)), Some(1_007_000));
        assert_eq!(next_step_at(&s, None), None);
        // A pause step has no time; neither has a paused or ended rollout.
        s.step = 2;
        assert_eq!(next_step_at(&s, Some(&r)), None);
        s.step = 1;
        s.phase = Phase::Paused;
        assert_eq!(next_step_at(&s, Some(&r)), None);
    }

    #[test]
    fn the_line_says_phase_step_weights_and_what_it_waits_for() {
        let mut s = status();
        s.next_step_at_millis = Some(1_004_000);
        assert_eq!(
            line(&s, None, 1_001_000),
            "colorapp/blue Progressing step 2/3 canary colorteller-blue 30%, stable colorteller-white 70%; waits for time: next step in 3s"
        );
        s.phase = Phase::RolledBack;
        s.canary_weight = 0;
        s.reason = Some("aborted by a user".into());
        assert_eq!(
            line(&s, None, 1_001_000),
            "colorapp/blue RolledBack step 2/3 canary colorteller-blue 0%, stable colorteller-white 100%; aborted by a user"
        );
        s.phase = Phase::Succeeded;
        s.step = 3;
        assert!(line(&s, None, 0).contains("step 3/3"));
    }

    #[test]
    fn the_view_marks_each_threshold_and_the_current_step() {
        let mut s = status();
        s.checks.push(Check {
            at_millis: 3_723_000,
            step: 1,
            canary_weight: 30,
            verdict: Verdict::Fail,
            canary: Sample {
                requests: 100,
                errors: 20,
                success_rate: Some(0.8),
                p99_millis: Some(12.5),
            },
            stable: Sample {
                requests: 300,
                errors: 0,
                success_rate: Some(1.0),
                p99_millis: Some(10.0),
            },
            measures: vec![
                Measure {
                    metric: "successRate".into(),
                    value: Some(0.8),
                    threshold: 0.99,
                    op: ">=".into(),
                    pass: false,
                },
                Measure {
                    metric: "latencyP99".into(),
                    value: Some(12.5),
                    threshold: 500.0,
                    op: "<=".into(),
                    pass: true,
                },
            ],
        });
        let v = view(&s, None, 1_001_000);
        assert!(v.contains("plan 10% → [30%] → 60%"), "{v}");
        assert!(v.contains("01:02:03"), "{v}");
        assert!(
            v.contains("✗ successRate 0.8000 >= 0.9900   ✓ latencyP99 12.5ms <= 500.0ms"),
            "{v}"
        );
        assert!(v.contains("80.00%") && v.contains("100.00%"), "{v}");
        assert!(v.contains("FAIL"), "{v}");
        assert!(v.contains("step 2 of 3: canary at 30%"), "{v}");
    }

    #[test]
    fn long_plans_are_elided_around_the_current_step() {
        let mut s = status();
        s.plan = (1..=20).map(|i| i * 5).collect();
        s.steps = 20;
        s.step = 9;
        assert_eq!(
            plan_text(&s),
            "5% → … → 40% → 45% → [50%] → 55% → 60% → … → 100%"
        );
    }

    #[test]
    fn the_line_printer_prints_changes_and_new_events_once() {
        let mut p = Printed::default();
        let mut s = status();
        let first = p.lines(&s, None, 1_000_500);
        assert_eq!(first.len(), 2, "{first:?}"); // the status and the last events
                                                 // Only the countdown moved: nothing.
        assert!(p.lines(&s, None, 1_001_500).is_empty());
        s.step = 2;
        s.canary_weight = 60;
        s.events.push(Event {
            at_millis: 1_005_000,
            kind: "step".into(),
            message: "step 3 of 3: canary at 60%".into(),
        });
        let next = p.lines(&s, None, 1_005_100);
        assert_eq!(next.len(), 2, "{next:?}");
        assert!(
            next[0].contains("step 3/3 canary colorteller-blue 60%"),
            "{next:?}"
        );
        assert!(next[1].contains("step 3 of 3"), "{next:?}");
    }

    #[test]
    fn clocks_and_spans() {
        assert_eq!(clock(86_400_000 + 3_723_000), "01:02:03");
        assert_eq!(span(850), "850ms");
        assert_eq!(span(4_200), "4s");
        assert_eq!(span(125_000), "2m05s");
        assert_eq!(span(3_720_000), "1h02m");
        assert_eq!(exit_code(Phase::Succeeded), 0);
        assert_eq!(exit_code(Phase::RolledBack), 3);
        assert_eq!(exit_code(Phase::Failed), 4);
    }
}
