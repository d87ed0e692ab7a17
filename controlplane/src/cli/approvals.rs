//! `tollgate approvals list | approve | deny`: the fleet's approval
//! requests (list: role viewer; approve and deny: role approver).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use serde_json::{Value, json};
use tollgate_proto::v1::{
    Approval, ApprovalRequest, ApprovalState, DecideApprovalRequest, ListApprovalsRequest,
};

use super::fleet::runtime;
use super::remote::{Answer, Remote};

/// The largest list the CLI reads.
const MAX_LIST_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Approval requests, newest first.
    List {
        /// Only requests in this state: pending, approved, denied, expired
        /// or used.
        #[arg(long)]
        state: Option<String>,
        /// Keep printing the table as requests are filed and change.
        #[arg(long)]
        watch: bool,
        /// One JSON object per request instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending request: the agent's next retry of the same call
    /// goes through, once.
    Approve {
        /// The request's id (ap_…).
        id: String,
        /// Why; told to the agent and kept in the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deny a pending request; the agent is told the reason.
    Deny {
        /// The request's id (ap_…).
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
}

pub fn run(cmd: ApprovalsCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        // A list carries each request's arguments (up to 64 KiB each).
        let mut client = remote
            .connect()
            .await?
            .max_decoding_message_size(MAX_LIST_BYTES);
        match cmd {
            ApprovalsCommand::List { state, watch, json } => {
                let filter = parse_state(state.as_deref())?;
                let req = ListApprovalsRequest {
                    state: filter.into(),
                };
                if !watch {
                    let approvals = client
                        .list_approvals(req)
                        .await
                        .answer("cannot list approval requests")?
                        .into_inner()
                        .approvals;
                    print(&approvals, json, false);
                    return Ok(ExitCode::SUCCESS);
                }
                let mut updates = client
                    .watch_approvals(req)
                    .await
                    .answer("cannot watch approval requests")?
                    .into_inner();
                let clear = !json && std::io::stdout().is_terminal();
                let mut shown: BTreeMap<String, Approval> = BTreeMap::new();
                while let Some(update) = updates
                    .message()
                    .await
                    .answer("the approvals watch failed")?
                {
                    if json {
                        print(&update.approvals, true, false);
                        continue;
                    }
                    if update.snapshot {
                        shown.clear();
                    }
                    for a in update.approvals {
                        let keep = filter == ApprovalState::Unspecified || a.state == filter as i32;
                        let id = request(&a).id.clone();
                        if keep {
                            shown.insert(id, a);
                        } else {
                            shown.remove(&id);
                        }
                    }
                    let mut rows: Vec<Approval> = shown.values().cloned().collect();
                    rows.sort_by_key(|a| std::cmp::Reverse(request(a).created_unix_ms));
                    print(&rows, false, clear);
                }
            }
            ApprovalsCommand::Approve { id, reason } => {
                let decided = client
                    .decide_approval(DecideApprovalRequest {
                        id: id.clone(),
                        approve: true,
                        reason,
                    })
                    .await
                    .answer(&format!("cannot approve {id}"))?
                    .into_inner();
                println!("{}", decided_line("approved", &decided));
            }
            ApprovalsCommand::Deny { id, reason } => {
                let decided = client
                    .decide_approval(DecideApprovalRequest {
                        id: id.clone(),
                        approve: false,
                        reason,
                    })
                    .await
                    .answer(&format!("cannot deny {id}"))?
                    .into_inner();
                println!("{}", decided_line("denied", &decided));
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn parse_state(state: Option<&str>) -> anyhow::Result<ApprovalState> {
    let Some(state) = state else {
        return Ok(ApprovalState::Unspecified);
    };
    match ApprovalState::from_str_name(&state.to_ascii_uppercase()) {
        Some(s) if s != ApprovalState::Unspecified => Ok(s),
        _ => bail!(
            "--state {state:?} is not a state; use pending, approved, denied, expired or used"
        ),
    }
}

/// `approved ap_… (call ci → files.delete, by alice)`.
fn decided_line(verb: &str, a: &Approval) -> String {
    let r = request(a);
    let mut line = format!(
        "{verb} {} (call {} → {}.{}, by {})",
        r.id, r.grant, r.server, r.tool, a.decided_by
    );
    if !a.reason.is_empty() {
        line.push_str(": ");
        line.push_str(&a.reason);
    }
    line
}

fn request(a: &Approval) -> &ApprovalRequest {
    static EMPTY: ApprovalRequest = ApprovalRequest {
        id: String::new(),
        node: String::new(),
        server: String::new(),
        grant: String::new(),
        session: String::new(),
        tool: String::new(),
        arguments_sha256: String::new(),
        arguments_json: String::new(),
        policy_version: String::new(),
        rule: String::new(),
        created_unix_ms: 0,
        expires_unix_ms: 0,
    };
    a.request.as_ref().unwrap_or(&EMPTY)
}

fn state_name(state: i32) -> &'static str {
    match ApprovalState::try_from(state).unwrap_or(ApprovalState::Unspecified) {
        ApprovalState::Pending => "pending",
        ApprovalState::Approved => "approved",
        ApprovalState::Denied => "denied",
        ApprovalState::Expired => "expired",
        ApprovalState::Used => "used",
        ApprovalState::Unspecified => "unknown",
    }
}

fn print(approvals: &[Approval], as_json: bool, clear: bool) {
    let now = crate::approvals::now_ms();
    if as_json {
        for a in approvals {
            println!("{}", approval_json(a));
        }
        return;
    }
    if clear {
        print!("\x1b[2J\x1b[H");
    }
    println!(
        "{:<29} {:<8} {:<16} {:<12} {:<12} {:<16} {:<12} {:<14} DECIDED BY",
        "ID", "STATE", "NODE", "GRANT", "SERVER", "TOOL", "ARGS", "AGE/EXPIRES"
    );
    for a in approvals {
        let r = request(a);
        let live = matches!(
            ApprovalState::try_from(a.state),
            Ok(ApprovalState::Pending | ApprovalState::Approved)
        );
        let expires = if live {
            format!("in {}", span(r.expires_unix_ms - now))
        } else {
            "-".to_owned()
        };
        println!(
            "{:<29} {:<8} {:<16} {:<12} {:<12} {:<16} {:<12} {:<14} {}",
            r.id,
            state_name(a.state),
            r.node,
            r.grant,
            r.server,
            r.tool,
            r.arguments_sha256.get(..12).unwrap_or(&r.arguments_sha256),
            format!("{}/{expires}", span(now - r.created_unix_ms)),
            if a.decided_by.is_empty() {
                "-"
            } else {
                &a.decided_by
            }
        );
    }
}

fn approval_json(a: &Approval) -> Value {
    let r = request(a);
    json!({
        "id": r.id,
        "state": state_name(a.state),
        "node": r.node,
        "grant": r.grant,
        "server": r.server,
        "tool": r.tool,
        "session": r.session,
        "arguments_sha256": r.arguments_sha256,
        "arguments": serde_json::from_str::<Value>(&r.arguments_json).ok(),
        "policy_version": r.policy_version,
        "rule": r.rule,
        "created_unix_ms": r.created_unix_ms,
        "expires_unix_ms": r.expires_unix_ms,
        "reason": a.reason,
        "decided_by": a.decided_by,
        "decided_unix_ms": a.decided_unix_ms,
        "used_by": a.used_by,
        "used_unix_ms": a.used_unix_ms,
    })
}

/// A duration in milliseconds as `45s`, `12m`, `3h`, `2d` (0 when past).
fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_and_spans_read_short() {
        assert_eq!(
            parse_state(Some("Pending")).unwrap(),
            ApprovalState::Pending
        );
        assert_eq!(parse_state(None).unwrap(), ApprovalState::Unspecified);
        let e = parse_state(Some("maybe")).unwrap_err().to_string();
        assert!(e.contains("use pending, approved"), "{e}");
        assert!(parse_state(Some("approval_state_unspecified")).is_err());
        assert_eq!(
            [
                span(-5),
                span(59_999),
                span(60_000),
                span(7_200_000),
                span(200_000_000)
            ],
            ["0s", "59s", "1m", "2h", "2d"]
        );
    }
}
