//! `tollgate policy check | eval | schema` (offline) and `push | versions |
//! show | diff` (against a control plane, in [`super::fleet`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tollgate_policy::{Annotations, Arguments, Bundle, Call, Decision, LocalCounters};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files; print every error with its JSON pointer.
    ///
    /// Exits 0 when every file is valid, 1 when any is not.
    Check {
        /// Policy documents or bundles (JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Decide a call against a policy file and print the decision.
    Eval(EvalArgs),
    /// Print the JSON Schema of policy files.
    Schema,
    /// Validate a policy file on the control plane and store it as the new
    /// version every sidecar should run.
    ///
    /// Exits 1 when the file is refused (its errors are printed).
    Push(super::versions::PushArgs),
    /// List the stored versions.
    Versions,
    /// Print one version's content.
    Show {
        #[arg(value_name = "VERSION")]
        number: u64,
    },
    /// Which rules changed from version A to version B.
    Diff { a: u64, b: u64 },
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The policy document or bundle.
    file: PathBuf,
    /// The tool's name.
    #[arg(long)]
    tool: String,
    /// The server (needed for a bundle with more than one server).
    #[arg(long)]
    server: Option<String>,
    /// The call's arguments, as a JSON object.
    #[arg(long, value_name = "JSON")]
    args: Option<String>,
    /// The caller's grant id (keys `scope: grant` limits).
    #[arg(long, value_name = "ID", default_value = "cli")]
    grant: String,
    /// The MCP session id (keys `scope: session` limits).
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// The tool's MCP annotations, e.g. '{"destructiveHint": true}'.
    #[arg(long, value_name = "JSON")]
    annotations: Option<String>,
    /// Decide the same call N times at one instant, so limits show.
    #[arg(long, value_name = "N", default_value_t = 1)]
    repeat: u32,
    /// One JSON object per decision instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs a `policy` command; `remote` is the control plane, for those that
/// need one.
pub fn run(cmd: PolicyCommand, remote: &super::remote::Remote) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { files } => Ok(check(&files)),
        PolicyCommand::Eval(args) => eval(&args),
        PolicyCommand::Schema => {
            print!("{}", tollgate_policy::json_schema());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Push(args) => super::versions::push(remote, &args),
        PolicyCommand::Versions => super::versions::versions(remote),
        PolicyCommand::Show { number } => super::versions::show(remote, number),
        PolicyCommand::Diff { a, b } => super::versions::diff_versions(remote, a, b),
    }
}

/// Loads a file, or prints `FILE: /pointer: message` lines and returns `None`.
fn load(path: &Path) -> Option<Bundle> {
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            println!("{shown}: cannot read the file: {e}");
            return None;
        }
    };
    match tollgate_policy::load(&text) {
        Ok(bundle) => Some(bundle),
        Err(errors) => {
            for e in errors.iter() {
                println!("{shown}: {e}");
            }
            None
        }
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for path in files {
        match load(path) {
            Some(bundle) => {
                let s = bundle.stats();
                println!(
                    "ok: {} ({} tool{}, {} limit{})",
                    path.display(),
                    s.tools,
                    plural(s.tools),
                    s.limits,
                    plural(s.limits)
                );
            }
            None => ok = false,
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn eval(a: &EvalArgs) -> anyhow::Result<ExitCode> {
    let Some(bundle) = load(&a.file) else {
        return Ok(ExitCode::from(1));
    };
    let server = match (&a.server, bundle.servers().as_slice()) {
        (Some(s), _) => s.clone(),
        (None, []) => "default".to_owned(),
        (None, [only]) => (*only).to_owned(),
        (None, many) => bail!(
            "{} is a bundle with servers {}; say which with --server",
            a.file.display(),
            many.join(", ")
        ),
    };
    let arguments: Option<Value> = a
        .args
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--args is not valid JSON")?;
    let annotations: Option<Annotations> = a
        .annotations
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .context("--annotations must be a JSON object such as '{\"readOnlyHint\": true}'")?;
    let call = Call {
        server: &server,
        tool: &a.tool,
        arguments: arguments.as_ref().map_or(Arguments::None, Arguments::Value),
        grant: &a.grant,
        session: a.session.as_deref(),
        annotations: annotations.as_ref(),
    };
    let counters = LocalCounters::new();
    for n in 1..=a.repeat {
        let d = bundle.decide(&call, Duration::ZERO, &counters);
        if a.json {
            println!("{}", decision_json(n, &d));
        } else {
            println!("{}", decision_line(&d));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `decision rule[: reason][; retry_after=…][; approval …]`.
fn decision_line(d: &Decision) -> String {
    let mut line = if d.shadow {
        format!("{} (shadow: would {})", d.enforced(), d.outcome)
    } else {
        d.outcome.to_string()
    };
    line.push(' ');
    line.push_str(&d.rule);
    if let Some(reason) = &d.reason {
        line.push_str(": ");
        line.push_str(reason);
    }
    if let Some(r) = d.retry_after {
        line.push_str(&format!("; retry_after={}", human(r)));
    }
    if let Some(ap) = d.approval {
        line.push_str(&format!(
            "; approval timeout={} hold={}",
            human(ap.timeout),
            human(ap.hold)
        ));
    }
    if let Some(class) = d.class {
        line.push_str(&format!(" [class {class}]"));
    }
    line
}

fn decision_json(n: u32, d: &Decision) -> Value {
    json!({
        "call": n,
        "decision": d.outcome.as_str(),
        "enforced": d.enforced().as_str(),
        "shadow": d.shadow,
        "rule": &*d.rule,
        "reason": d.reason.as_deref(),
        "retry_after_ms": d.retry_after.map(|r| r.as_millis() as u64),
        "class": d.class.map(|c| c.as_str()),
        "approval": d.approval.map(|ap| json!({
            "timeout_ms": ap.timeout.as_millis() as u64,
            "hold_ms": ap.hold.as_millis() as u64,
        })),
    })
}

/// `250ms`, `12s`, `59.062s`, `10m`, `2h`.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0..1_000 => format!("{ms}ms"),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) && ms >= 120_000 => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{:.3}s", d.as_secs_f64()),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
