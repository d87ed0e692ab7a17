//! `tollgate rollout start | pause | resume | promote | abort | rollback |
//! status | list`: staged rollouts of a policy version (start and actions:
//! role admin; status and list: role viewer).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tollgate_proto::v1::{
    GetRolloutRequest, ListRolloutsRequest, RolloutActionRequest, RolloutStatus,
    StartRolloutRequest,
};

use super::fleet::{runtime, time};
use super::remote::{Answer, Remote};

/// Width of the progress bar, in characters.
const BAR: usize = 30;
/// Samples printed under the "would change" report.
const SAMPLES_SHOWN: usize = 10;

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Roll a stored version out in steps (push it with `policy push --stage`).
    #[command(disable_version_flag = true)]
    Start(StartArgs),
    /// Hold the rollout where it is.
    Pause(Target),
    /// Go on from a pause (the current step's ACK timeout and bake start over).
    Resume(Target),
    /// Pass the current step (or shadow phase) without its gates.
    Promote(Target),
    /// Stop the rollout: its nodes return to the version they were sent before.
    Abort(Target),
    /// Return every node the rollout moved to the version it ran before.
    Rollback(Target),
    /// Where a rollout stands: step, phase, nodes, gates, the shadow report.
    Status(StatusArgs),
    /// Rollouts, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The stored version to roll out.
    #[arg(long)]
    version: u64,
    /// The server whose policy the version changes (for the record).
    #[arg(long)]
    server: Option<String>,
    /// Only nodes with all these labels (k=v,k=v) are in scope.
    #[arg(long)]
    selector: Option<String>,
    /// Percent of the nodes in scope per step, ascending, ending at 100.
    #[arg(long, default_value = "1,10,50,100")]
    steps: String,
    /// How long each step holds after its nodes ACKed, gates watched.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    bake: Duration,
    /// Run each step's new nodes with the version as a shadow this long
    /// first (decided beside the live version, not enforced).
    #[arg(long, value_parser = humantime::parse_duration)]
    shadow: Option<Duration>,
    /// The deny-rate increase allowed on the new version (0.05: 5 points).
    #[arg(long, default_value_t = 0.05)]
    max_deny_rate_increase: f64,
    /// How long a step's nodes have to ACK.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ack_timeout: Duration,
    /// Below this many calls the deny-rate gate is inconclusive (and a step
    /// pauses after its bake); 0: no traffic needed.
    #[arg(long, default_value_t = 20)]
    min_calls: u64,
}

#[derive(Debug, Args)]
pub struct Target {
    /// The rollout (r1, r2…); the newest when left out.
    id: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The rollout (r1, r2…); the newest when left out.
    id: Option<String>,
    /// Keep printing the status as it changes.
    #[arg(long)]
    watch: bool,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn selector(text: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--selector takes key=value pairs separated by commas; got {pair:?}");
        };
        out.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(out)
}

fn steps(text: &str) -> anyhow::Result<Vec<f64>> {
    text.split(',')
        .map(|s| {
            s.trim()
                .trim_end_matches('%')
                .parse::<f64>()
                .with_context(|| format!("--steps takes percentages like 1,10,50,100; got {s:?}"))
        })
        .collect()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub fn run(cmd: RolloutCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = remote.connect().await?;
        let act = |id: Option<String>, action: &str| RolloutActionRequest {
            id: id.unwrap_or_default(),
            action: action.to_owned(),
        };
        let acted = match cmd {
            RolloutCommand::Start(a) => {
                let req = StartRolloutRequest {
                    version: a.version,
                    server: a.server.unwrap_or_default(),
                    selector: selector(a.selector.as_deref().unwrap_or(""))?,
                    steps: steps(&a.steps)?,
                    bake_ms: millis(a.bake),
                    shadow_ms: a.shadow.map_or(0, millis),
                    max_deny_rate_increase: a.max_deny_rate_increase,
                    ack_timeout_ms: millis(a.ack_timeout),
                    min_calls: a.min_calls,
                };
                let s = client
                    .start_rollout(req)
                    .await
                    .answer("cannot start the rollout")?
                    .into_inner();
                println!("started rollout {} of version {}", s.id, s.version);
                s
            }
            RolloutCommand::Pause(t) => acted(&mut client, act(t.id, "pause")).await?,
            RolloutCommand::Resume(t) => acted(&mut client, act(t.id, "resume")).await?,
            RolloutCommand::Promote(t) => acted(&mut client, act(t.id, "promote")).await?,
            RolloutCommand::Abort(t) => acted(&mut client, act(t.id, "abort")).await?,
            RolloutCommand::Rollback(t) => acted(&mut client, act(t.id, "rollback")).await?,
            RolloutCommand::Status(a) => {
                let req = GetRolloutRequest {
                    id: a.id.unwrap_or_default(),
                };
                if !a.watch {
                    let s = client
                        .get_rollout(req)
                        .await
                        .answer("cannot read the rollout")?
                        .into_inner();
                    show(&s, a.json, false);
                    return Ok(ExitCode::SUCCESS);
                }
                let mut updates = client
                    .watch_rollout(req)
                    .await
                    .answer("cannot watch the rollout")?
                    .into_inner();
                let clear = !a.json && std::io::stdout().is_terminal();
                while let Some(s) = updates.message().await.answer("the rollout watch failed")? {
                    show(&s, a.json, clear);
                }
                return Ok(ExitCode::SUCCESS);
            }
            RolloutCommand::List { json } => {
                let list = client
                    .list_rollouts(ListRolloutsRequest {})
                    .await
                    .answer("cannot list rollouts")?
                    .into_inner();
                if json {
                    for r in &list.rollouts {
                        println!("{}", to_json(r));
                    }
                } else {
                    println!(
                        "{:<6} {:<8} {:<5} {:<12} {:<9} {:<20} REASON",
                        "ID", "VERSION", "FROM", "STATE", "STEP", "STARTED"
                    );
                    for r in &list.rollouts {
                        println!(
                            "{:<6} {:<8} {:<5} {:<12} {:<9} {:<20} {}",
                            r.id,
                            r.version,
                            r.from_version,
                            r.state,
                            format!("{}/{}", r.step, r.steps_total),
                            time(r.started_ms / 1000),
                            r.reason
                        );
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
        };
        show(&acted, false, false);
        Ok(ExitCode::SUCCESS)
    })
}

async fn acted(
    client: &mut super::remote::Admin,
    req: RolloutActionRequest,
) -> anyhow::Result<RolloutStatus> {
    let action = req.action.clone();
    Ok(client
        .act_on_rollout(req)
        .await
        .answer(&format!("cannot {action} the rollout"))?
        .into_inner())
}

fn show(s: &RolloutStatus, json: bool, clear: bool) {
    if json {
        println!("{}", to_json(s));
        return;
    }
    if clear {
        print!("\x1b[2J\x1b[H");
    }
    print!("{}", text(s));
}

/// `[#######.......]` for `done` of `of`.
fn bar(done: u32, of: u32) -> String {
    let filled = if of == 0 {
        0
    } else {
        (done as usize * BAR).div_ceil(of as usize).min(BAR)
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(BAR - filled))
}

fn seconds(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis(ms.max(0) as u64)).to_string()
}

/// The status as `rollout status` prints it.
pub fn text(s: &RolloutStatus) -> String {
    let mut out = String::new();
    let steps: Vec<String> = s.steps.iter().map(|p| format!("{p}%")).collect();
    out.push_str(&format!(
        "rollout {}: version {} (from {}){}\n",
        s.id,
        s.version,
        s.from_version,
        if s.server.is_empty() {
            String::new()
        } else {
            format!(", server {}", s.server)
        }
    ));
    out.push_str(&format!("  status:  {}", s.state));
    if !s.reason.is_empty() {
        out.push_str(&format!(" — {}", s.reason));
    }
    out.push('\n');
    out.push_str(&format!(
        "  step:    {} of {} ({}), {}  [{}]\n",
        s.step,
        s.steps_total,
        s.steps
            .get(s.step.saturating_sub(1) as usize)
            .map_or(String::new(), |p| format!("{p}%")),
        s.phase,
        steps.join(" → ")
    ));
    out.push_str(&format!(
        "  nodes:   {} {}/{} at their target ({} in scope)\n",
        bar(s.nodes_at_target, s.nodes_chosen),
        s.nodes_at_target,
        s.nodes_chosen,
        s.nodes_in_scope
    ));
    if !s.lagging.is_empty() {
        out.push_str(&format!("  waiting: {}\n", s.lagging.join(", ")));
    }
    out.push_str(&format!("  ack:     {}\n", s.ack_gate));
    out.push_str(&format!("  deny:    {}\n", s.deny_gate));
    out.push_str(&format!(
        "           new {}/{} denied, old {}/{} denied, margin {}\n",
        s.new_denied, s.new_calls, s.old_denied, s.old_calls, s.max_deny_rate_increase
    ));
    out.push_str(&format!(
        "  bake:    {}{}\n",
        seconds(s.bake_ms),
        if s.shadow_ms > 0 {
            format!(", shadow {}", seconds(s.shadow_ms))
        } else {
            String::new()
        }
    ));
    if !s.differences.is_empty() {
        out.push_str("  would change (shadow vs live):\n");
        for d in &s.differences {
            out.push_str(&format!(
                "    {:>6}  {}/{}: {} → {}\n",
                d.count, d.server, d.tool, d.live, d.shadow
            ));
        }
    }
    if !s.samples.is_empty() {
        out.push_str("  samples:\n");
        for x in s.samples.iter().take(SAMPLES_SHOWN) {
            out.push_str(&format!(
                "    {}/{} {} → {} by {}{} args sha256:{}\n",
                x.server,
                x.tool,
                x.live,
                x.shadow,
                x.shadow_rule,
                if x.shadow_reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", x.shadow_reason)
                },
                x.arguments_sha256.get(..16).unwrap_or(&x.arguments_sha256)
            ));
        }
    }
    out
}

fn to_json(s: &RolloutStatus) -> Value {
    let differences: Vec<Value> = s
        .differences
        .iter()
        .map(|d| {
            json!({
                "server": d.server, "tool": d.tool, "live": d.live, "shadow": d.shadow,
                "count": d.count,
            })
        })
        .collect();
    let samples: Vec<Value> = s
        .samples
        .iter()
        .map(|x| {
            json!({
                "server": x.server, "tool": x.tool, "grant": x.grant, "live": x.live,
                "shadow": x.shadow, "live_rule": x.live_rule, "shadow_rule": x.shadow_rule,
                "shadow_reason": x.shadow_reason, "arguments_sha256": x.arguments_sha256,
                "unix_ms": x.unix_ms,
            })
        })
        .collect();
    let mut out = json!({
        "id": s.id, "version": s.version, "from_version": s.from_version,
        "server": s.server, "selector": s.selector, "steps": s.steps,
        "state": s.state, "reason": s.reason, "step": s.step, "steps_total": s.steps_total,
        "phase": s.phase, "nodes_in_scope": s.nodes_in_scope, "nodes_chosen": s.nodes_chosen,
        "nodes_at_target": s.nodes_at_target, "lagging": s.lagging,
        "ack_gate": s.ack_gate, "deny_gate": s.deny_gate,
    });
    let more = json!({
        "new_calls": s.new_calls, "new_denied": s.new_denied,
        "old_calls": s.old_calls, "old_denied": s.old_denied,
        "max_deny_rate_increase": s.max_deny_rate_increase,
        "bake_ms": s.bake_ms, "shadow_ms": s.shadow_ms, "started_ms": s.started_ms,
        "updated_ms": s.updated_ms, "phase_started_ms": s.phase_started_ms,
        "acked_ms": s.acked_ms, "started_by": s.started_by,
        "differences": differences, "samples": samples,
    });
    if let (Some(o), Value::Object(m)) = (out.as_object_mut(), more) {
        o.extend(m);
    }
    out
}
