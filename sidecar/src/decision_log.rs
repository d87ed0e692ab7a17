//! The decision log: one JSON line per decision, written off the request path.
//!
//! Records go through a bounded channel to a writer task, bounded in records
//! and in bytes (a record may carry a call's arguments). When either is full
//! the record is dropped and counted (`tollgate_decision_log_dropped`);
//! when the sink fails the error is counted and logged once a minute at most.
//! A call never waits for, or fails because of, the log.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// One decision, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord {
    /// Unique decision id (also in the refusal's `_meta`).
    pub id: String,
    /// RFC 3339 UTC time of the decision.
    pub time: String,
    /// The policy version that decided.
    pub policy_version: Arc<str>,
    /// The server.
    pub server: Arc<str>,
    /// The grant (or node id).
    pub grant: Arc<str>,
    /// The MCP session, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The JSON-RPC method.
    pub method: &'static str,
    /// The tool.
    pub tool: String,
    /// SHA-256 (hex) of the canonical arguments (keys sorted, no spaces);
    /// computed by the writer task from `raw_arguments`.
    pub arguments_sha256: String,
    /// The arguments themselves, only with `--log-arguments`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
    /// The raw arguments as received, hashed off the request path.
    #[serde(skip)]
    pub raw_arguments: Option<Box<serde_json::value::RawValue>>,
    /// `allow`, `deny`, `rate_limited`, `require_approval` or `hidden`.
    pub decision: &'static str,
    /// True in shadow mode: the call went through whatever the decision.
    pub shadow: bool,
    /// The deciding rule's JSON pointer.
    pub rule: Arc<str>,
    /// The reason given, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Arc<str>>,
    /// Milliseconds until a rate-limited call would be admitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Microseconds spent deciding.
    pub micros: u64,
    /// The approval request (`ap_…`) an approval event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// For approval events, what happened: `requested`, `held`, `approved`,
    /// `denied`, `expired`, `used` or `pending`. Absent on plain decisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'static str>,
}

/// Where records go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    tx: Option<mpsc::Sender<DecisionRecord>>,
    metrics: Arc<Metrics>,
    /// Bytes the queued records hold, and the most they may.
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The bytes a queued record holds, about.
fn record_bytes(r: &DecisionRecord) -> usize {
    256 + r.tool.len()
        + r.session.as_ref().map_or(0, String::len)
        + r.raw_arguments.as_ref().map_or(0, |a| a.get().len())
}

/// Whether records carry the arguments themselves, not only their hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogArguments(pub bool);

/// Records waiting to be written before new ones are dropped.
const QUEUE: usize = 8_192;

impl DecisionLog {
    /// A log that records nothing.
    pub fn disabled(metrics: Arc<Metrics>) -> Self {
        Self {
            tx: None,
            metrics,
            queued: Arc::default(),
            max_bytes: 0,
        }
    }

    /// Starts the writer task for `sink`, queueing at most `max_bytes` of
    /// records. A file is created owner-only (0600): records name callers
    /// and, with `--log-arguments`, what they sent.
    pub async fn start(
        sink: Sink,
        with_arguments: LogArguments,
        metrics: Arc<Metrics>,
        max_bytes: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let out: Box<dyn AsyncWrite + Send + Unpin> = match &sink {
            Sink::Stdout => Box::new(tokio::io::stdout()),
            Sink::File(path) => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .await?,
            ),
        };
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write_loop(
            rx,
            BufWriter::new(out),
            with_arguments,
            Arc::clone(&metrics),
            Arc::clone(&queued),
        ));
        Ok(Self {
            tx: Some(tx),
            metrics,
            queued,
            max_bytes,
        })
    }

    /// Whether records are wanted (so callers can skip building them).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a record, or drops and counts it if the queue is full (in
    /// records or bytes).
    pub fn record(&self, record: DecisionRecord) {
        let Some(tx) = &self.tx else {
            return;
        };
        let size = record_bytes(&record);
        if self.queued.fetch_add(size, Ordering::Relaxed) + size > self.max_bytes {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            self.metrics.log_dropped();
            self.metrics.evicted("decision_log_bytes", 1);
            return;
        }
        if tx.try_send(record).is_err() {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            self.metrics.log_dropped();
        }
    }
}

async fn write_loop(
    mut rx: mpsc::Receiver<DecisionRecord>,
    mut out: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    with_arguments: LogArguments,
    metrics: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
) {
    let mut last_report: Option<Instant> = None;
    let mut line = Vec::with_capacity(512);
    while let Some(record) = rx.recv().await {
        let mut batch = vec![record];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 256 {
                break;
            }
        }
        let taken: usize = batch.iter().map(record_bytes).sum();
        queued.fetch_sub(taken, Ordering::Relaxed);
        for record in &mut batch {
            // An approval event carries its request's digest already.
            if record.event.is_none() {
                let (hash, value) = arguments_sha256(record.raw_arguments.as_deref());
                record.arguments_sha256 = hash;
                record.arguments = value.filter(|_| with_arguments.0);
            }
            line.clear();
            if serde_json::to_writer(&mut line, record).is_err() {
                metrics.log_error();
                continue;
            }
            line.push(b'\n');
            if let Err(e) = out.write_all(&line).await {
                metrics.log_error();
                if last_report.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::error!("decision log write failed (records are being lost): {e}");
                    last_report = Some(Instant::now());
                }
            }
        }
        if out.flush().await.is_err() {
            metrics.log_error();
        }
    }
}

/// SHA-256 (hex) of arguments in canonical form: object keys sorted, no
/// insignificant whitespace. `None` arguments hash as `{}`.
pub fn arguments_sha256(
    arguments: Option<&serde_json::value::RawValue>,
) -> (String, Option<serde_json::Value>) {
    use sha2::{Digest, Sha256};
    // serde_json's default map is a BTreeMap: parsing sorts the keys.
    let value: serde_json::Value = arguments
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    let canonical = value.to_string();
    let digest = Sha256::digest(canonical.as_bytes());
    (
        digest.iter().map(|b| format!("{b:02x}")).collect(),
        Some(value),
    )
}

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now)
}

/// Unix milliseconds (0 or later) as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    rfc3339(Duration::from_millis(ms.max(0) as u64))
}

fn rfc3339(now: Duration) -> String {
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_hash_ignores_key_order_and_spacing() {
        let a =
            serde_json::value::RawValue::from_string(r#"{"b": 1, "a": [1, 2]}"#.into()).unwrap();
        let b = serde_json::value::RawValue::from_string(r#"{"a":[1,2],"b":1}"#.into()).unwrap();
        assert_eq!(arguments_sha256(Some(&a)).0, arguments_sha256(Some(&b)).0);
        assert_ne!(arguments_sha256(Some(&a)).0, arguments_sha256(None).0);
    }

    fn record(arguments: &str) -> DecisionRecord {
        DecisionRecord {
            id: "d1".into(),
            time: now_rfc3339(),
            policy_version: "v1".into(),
            server: "s".into(),
            grant: "g".into(),
            session: None,
            method: "tools/call",
            tool: "echo".into(),
            arguments_sha256: String::new(),
            arguments: None,
            raw_arguments: serde_json::value::RawValue::from_string(arguments.into()).ok(),
            decision: "allow",
            shadow: false,
            rule: "(default allow)".into(),
            reason: None,
            retry_after_ms: None,
            micros: 0,
            approval_id: None,
            event: None,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn queued_records_are_bounded_in_bytes_and_the_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.jsonl");
        let metrics = Arc::new(Metrics::new());
        let log = DecisionLog::start(
            Sink::File(path.clone()),
            LogArguments(false),
            Arc::clone(&metrics),
            1 << 20,
        )
        .await
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // 100 records of 100 KB each, queued before the writer runs: about
        // 10 fit in 1 MiB, the rest are dropped and counted.
        let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(100_000));
        for _ in 0..100 {
            log.record(record(&big));
        }
        let text = metrics.encode();
        let dropped = text
            .lines()
            .find_map(|l| l.strip_prefix("tollgate_decision_log_dropped_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap();
        assert!((85..=95).contains(&dropped), "{dropped} dropped:\n{text}");
        assert!(text.contains("tollgate_state_evictions_total{state=\"decision_log_bytes\"}"));
        // Once written, the budget is free again.
        while std::fs::read_to_string(&path).unwrap().lines().count() < (100 - dropped) as usize {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        log.record(record(&big));
        let again = metrics.encode();
        assert!(
            again.contains(&format!("tollgate_decision_log_dropped_total {dropped}")),
            "{again}"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
