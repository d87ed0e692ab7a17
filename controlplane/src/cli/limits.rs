//! `tollgate limits`: the control plane's fleet-wide rate-limit buckets and
//! the lease each sidecar holds in them.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use tollgate_proto::v1::{FleetBucket, FleetHolder, ListLimitsRequest};

use super::fleet::runtime;
use super::remote::{Answer, Remote};

/// How often `--watch` asks again.
const WATCH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
pub struct LimitsArgs {
    /// Only this MCP server's limits.
    #[arg(long)]
    server: Option<String>,
    /// The whole answer as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Print it again every second.
    #[arg(long)]
    watch: bool,
}

pub fn limits(remote: &Remote, args: &LimitsArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = remote.connect().await?;
        let request = ListLimitsRequest {
            server: args.server.clone().unwrap_or_default(),
        };
        let clear = args.watch && !args.json && std::io::stdout().is_terminal();
        loop {
            let buckets = client
                .list_limits(request.clone())
                .await
                .answer(&format!(
                    "cannot list fleet-wide limits from the control plane at {}",
                    remote.addr
                ))?
                .into_inner()
                .buckets;
            if args.json {
                println!("{}", response_json(&buckets));
            } else {
                if clear {
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", table(&buckets, args.server.as_deref()));
            }
            if !args.watch {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    })
}

/// A bucket row, then one indented row per node holding leases in it.
fn table(buckets: &[FleetBucket], server: Option<&str>) -> String {
    let mut out = String::new();
    if buckets.is_empty() {
        match server {
            Some(s) => out.push_str(&format!(
                "no fleet-wide limits reported for server {s} (sidecars report a bucket once a \
                 call hits it)\n"
            )),
            None => out.push_str(
                "no fleet-wide limits reported (sidecars report a bucket once a call hits it)\n",
            ),
        }
        return out;
    }
    for (i, b) in buckets.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<16} {:<12} {:<9} {:<9} LEARNING",
            "SERVER", "COUNTER", "KEY", "LIMIT", "CONSUMED", "RESERVED"
        );
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<16} {:<12} {:<9} {:<9} {}",
            b.server,
            b.counter,
            if b.key.is_empty() { "-" } else { &b.key },
            format!("{}/{}", b.max, window(b.window_ms)),
            b.consumed,
            b.reserved,
            if b.learning { "yes" } else { "no" },
        );
        let _ = writeln!(
            out,
            "  {:<24} {:<9} {:<8} {:<8} {:<8} EXPIRES IN",
            "NODE", "CONNECTED", "LEASED", "GRANTED", "ADMITTED"
        );
        for h in &b.holders {
            let _ = writeln!(
                out,
                "  {:<24} {:<9} {:<8} {:<8} {:<8} {}",
                h.node_id,
                if h.connected { "yes" } else { "no" },
                h.reservation,
                h.granted_total,
                h.admitted_total,
                expires_in(h),
            );
        }
    }
    out
}

/// `1m`, `30s`, `1500ms`: a window in its largest whole unit.
fn window(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    for (size, unit) in UNITS {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn expires_in(h: &FleetHolder) -> String {
    if h.expired {
        return "expired".to_owned();
    }
    let ms = h.expires_in_ms;
    if ms < 60_000 {
        format!("{}.{}s", ms / 1000, ms % 1000 / 100)
    } else {
        format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000)
    }
}

fn response_json(buckets: &[FleetBucket]) -> Value {
    let buckets: Vec<Value> = buckets
        .iter()
        .map(|b| {
            let holders: Vec<Value> = b
                .holders
                .iter()
                .map(|h| {
                    json!({
                        "node_id": h.node_id,
                        "epoch": h.epoch,
                        "connected": h.connected,
                        "reservation": h.reservation,
                        "granted_total": h.granted_total,
                        "admitted_total": h.admitted_total,
                        "unleased_total": h.unleased_total,
                        "denied": h.denied,
                        "demand": h.demand,
                        "expires_in_ms": h.expires_in_ms,
                        "expired": h.expired,
                    })
                })
                .collect();
            json!({
                "server": b.server,
                "counter": b.counter,
                "key": b.key,
                "policy_version": b.policy_version,
                "max": b.max,
                "window_ms": b.window_ms,
                "consumed": b.consumed,
                "unleased": b.unleased,
                "reserved": b.reserved,
                "learning": b.learning,
                "holders": holders,
            })
        })
        .collect();
    json!({ "buckets": buckets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(node: &str, connected: bool, expires_in_ms: u64) -> FleetHolder {
        FleetHolder {
            node_id: node.to_owned(),
            epoch: 7,
            connected,
            reservation: 20,
            granted_total: 70,
            admitted_total: 50,
            demand: 30,
            expires_in_ms,
            expired: expires_in_ms == 0,
            unleased_total: 0,
            denied: 1,
        }
    }

    fn bucket() -> FleetBucket {
        FleetBucket {
            server: "files".to_owned(),
            counter: "files:writes".to_owned(),
            key: String::new(),
            policy_version: 3,
            max: 100,
            window_ms: 60_000,
            consumed: 50,
            unleased: 0,
            reserved: 20,
            learning: false,
            holders: vec![holder("pod-1", true, 8_250), holder("pod-2", false, 0)],
        }
    }

    #[test]
    fn the_table_shows_each_bucket_then_its_nodes() {
        let text = table(&[bucket()], None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[0].starts_with("SERVER") && lines[0].ends_with("LEARNING"));
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            ["files", "files:writes", "-", "100/1m", "50", "20", "no"]
        );
        let pod1: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(pod1, ["pod-1", "yes", "20", "70", "50", "8.2s"]);
        let pod2: Vec<&str> = lines[4].split_whitespace().collect();
        assert_eq!(pod2, ["pod-2", "no", "20", "70", "50", "expired"]);
    }

    #[test]
    fn no_bucket_says_so() {
        assert!(table(&[], None).starts_with("no fleet-wide limits reported"));
        assert!(table(&[], Some("files")).contains("for server files"));
    }

    #[test]
    fn windows_and_expiries_print_in_their_largest_unit() {
        assert_eq!(window(60_000), "1m");
        assert_eq!(window(90_000), "90s");
        assert_eq!(window(86_400_000), "1d");
        assert_eq!(window(1_500), "1500ms");
        assert_eq!(expires_in(&holder("a", true, 125_000)), "2m05s");
    }

    #[test]
    fn json_carries_every_field() {
        let v = response_json(&[bucket()]);
        assert_eq!(v["buckets"][0]["window_ms"], 60_000);
        assert_eq!(v["buckets"][0]["holders"][1]["expired"], true);
        assert_eq!(v["buckets"][0]["holders"][0]["node_id"], "pod-1");
    }
}
