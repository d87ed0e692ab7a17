//! `tollgate status`: every sidecar's policy status, once or as it changes.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};
use tollgate_proto::v1::{NodeState, NodeStatusRequest, node_state::State};

use super::remote::{Answer, Remote};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One JSON object per node instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep printing the table as it changes.
    #[arg(long)]
    watch: bool,
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn status(remote: &Remote, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = remote.connect().await?;
        if !args.watch {
            let nodes = client
                .node_status(NodeStatusRequest {})
                .await
                .answer("cannot get node status")?
                .into_inner()
                .nodes;
            print_status(&nodes, args.json, false);
            return Ok(ExitCode::SUCCESS);
        }
        let mut updates = client
            .watch_status(NodeStatusRequest {})
            .await
            .answer("cannot watch node status")?
            .into_inner();
        let clear = !args.json && std::io::stdout().is_terminal();
        while let Some(update) = updates.message().await.answer("status stream failed")? {
            print_status(&update.nodes, args.json, clear);
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn print_status(nodes: &[NodeState], as_json: bool, clear: bool) {
    if as_json {
        for n in nodes {
            println!("{}", node_json(n));
        }
        return;
    }
    if clear {
        print!("\x1b[2J\x1b[H");
    }
    println!(
        "{:<24} {:<16} {:<24} {:<9} {:<7} {:<8} {:<8} {:<20} {:<20} NACK ERROR",
        "NODE",
        "NAMESPACE",
        "LABELS",
        "STATE",
        "APPLIED",
        "DESIRED",
        "CONNECT",
        "LAST ACK",
        "LAST NACK"
    );
    for n in nodes {
        let node = n.node.clone().unwrap_or_default();
        let namespace = if node.namespace.is_empty() {
            "-"
        } else {
            node.namespace.as_str()
        };
        println!(
            "{:<24} {:<16} {:<24} {:<9} {:<7} {:<8} {:<8} {:<20} {:<20} {}",
            node.id,
            namespace,
            fit(&labels(&node.labels), 24),
            state_name(n.state),
            versions(n.applied_version, n.applied_shadow_version),
            versions(n.desired_version, n.desired_shadow_version),
            if n.connected { "yes" } else { "no" },
            time(n.last_ack_at),
            time(n.last_nack_at),
            error_column(n)
        );
    }
}

/// The refusal of the last version sent, and a quota-stream conflict.
fn error_column(n: &NodeState) -> String {
    match (n.nack_error.is_empty(), n.quota_conflict.is_empty()) {
        (_, true) => n.nack_error.clone(),
        (true, false) => format!(
            "QUOTA CONFLICT ({}): {}",
            time(n.quota_conflict_at),
            n.quota_conflict
        ),
        (false, false) => format!(
            "{}; QUOTA CONFLICT ({}): {}",
            n.nack_error,
            time(n.quota_conflict_at),
            n.quota_conflict
        ),
    }
}

/// `7`, or `7+8s` with a shadow beside it; `-` for none.
fn versions(live: u64, shadow: u64) -> String {
    match (live, shadow) {
        (0, 0) => "-".to_owned(),
        (v, 0) => v.to_string(),
        (v, s) => format!("{v}+{s}s"),
    }
}

fn labels(labels: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    if pairs.is_empty() {
        "-".to_owned()
    } else {
        pairs.join(",")
    }
}

/// `text` cut to `width` characters, ending in `…` when cut (the whole of
/// it is in `--json`).
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

fn state_name(state: i32) -> &'static str {
    match State::try_from(state).unwrap_or(State::Unspecified) {
        State::Synced => "SYNCED",
        State::NotSent => "NOT_SENT",
        State::Stale => "STALE",
        State::Error => "ERROR",
        State::Pending => "PENDING",
        State::Unspecified => "UNKNOWN",
    }
}

fn node_json(n: &NodeState) -> Value {
    let node = n.node.clone().unwrap_or_default();
    json!({
        "node": node.id,
        "pod": node.pod,
        "namespace": node.namespace,
        "labels": node.labels,
        "build": node.build,
        "state": state_name(n.state),
        "connected": n.connected,
        "applied_version": n.applied_version,
        "sent_version": n.sent_version,
        "desired_version": n.desired_version,
        "desired_shadow_version": n.desired_shadow_version,
        "applied_shadow_version": n.applied_shadow_version,
        "last_ack_at": n.last_ack_at,
        "last_nack_at": n.last_nack_at,
        "nack_error": n.nack_error,
        "quota_conflict": n.quota_conflict,
        "quota_conflict_at": n.quota_conflict_at,
        "identity": n.identity,
    })
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`; `-` for never.
pub(crate) fn time(unix: i64) -> String {
    if unix <= 0 {
        return "-".to_owned();
    }
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{fit, time};

    #[test]
    fn long_labels_are_cut_to_the_column() {
        assert_eq!(fit("app=agent", 24), "app=agent");
        let cut = fit("app=agent,team=research,tollgate.dev/sidecar=injected", 24);
        assert_eq!(cut.chars().count(), 24);
        assert_eq!(cut, "app=agent,team=research…");
    }

    #[test]
    fn times_print_in_utc() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(time(951_782_400), "2000-02-29T00:00:00Z");
    }
}
