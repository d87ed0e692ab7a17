//! `tollgate audit`: what operators did (pushes, token changes, refused
//! attempts), oldest first.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use clap::Args;
use serde_json::{Value, json};
use tollgate_proto::v1::{AuditEntry, ListAuditRequest};

use super::fleet::{runtime, time};
use super::remote::{Answer, Remote};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries since then: a duration back from now (`1h`, `30m`,
    /// `7days`) or a time (`2026-01-02T15:04:05Z`). Default: all.
    #[arg(long, value_parser = parse_since)]
    since: Option<i64>,
    /// One JSON object per entry (at, actor, action, target, outcome, detail).
    #[arg(long)]
    json: bool,
}

pub fn run(args: &AuditArgs, remote: &Remote) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let entries = remote
            .connect()
            .await?
            .list_audit(ListAuditRequest {
                since: args.since.unwrap_or(0),
            })
            .await
            .answer("cannot list the audit trail")?
            .into_inner()
            .entries;
        if args.json {
            for e in &entries {
                println!("{}", entry_json(e));
            }
        } else {
            println!(
                "{:<20} {:<16} {:<13} {:<20} {:<24} DETAIL",
                "AT", "ACTOR", "ACTION", "TARGET", "OUTCOME"
            );
            for e in &entries {
                println!(
                    "{:<20} {:<16} {:<13} {:<20} {:<24} {}",
                    time(e.at),
                    e.actor,
                    e.action,
                    e.target,
                    e.outcome,
                    e.detail
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn entry_json(e: &AuditEntry) -> Value {
    json!({
        "at": time(e.at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "outcome": e.outcome,
        "detail": e.detail,
    })
}

/// `--since`: a duration back from now, or an RFC 3339 time; as Unix seconds.
fn parse_since(s: &str) -> anyhow::Result<i64> {
    let at = match humantime::parse_duration(s) {
        Ok(back) => SystemTime::now()
            .checked_sub(back)
            .ok_or_else(|| anyhow!("{s:?} reaches back before 1970"))?,
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|_| {
            anyhow!("{s:?}: give a duration like 1h or 30m, or a time like 2026-01-02T15:04:05Z")
        })?,
    };
    let secs = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    i64::try_from(secs).context("--since is too far in the future")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_a_time() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let hour_ago = parse_since("1h").expect("a duration");
        assert!((now - 3600 - hour_ago).abs() <= 2, "{hour_ago} vs {now}");
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z").expect("a time"),
            1_700_000_000
        );
        let err = parse_since("yesterday").expect_err("neither");
        assert!(err.to_string().contains("like 1h"), "{err}");
    }
}
