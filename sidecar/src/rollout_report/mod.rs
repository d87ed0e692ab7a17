//! What this sidecar decided, per policy version, for staged rollouts
//! (issue #15; the `Rollouts.ReportDecisions` contract in `rollouts.proto`).
//!
//! Three bounded accumulators, drained into one report at a time:
//!
//! - **Per-version counts.** Each snapshot in fleet mode carries the
//!   [`Tally`] of its version (live) and, with a shadow, the shadow's: a
//!   decided `tools/call` is one relaxed atomic add on it, nothing else, so a
//!   sidecar without a shadow pays one counter increment per call. At most
//!   [`MAX_VERSIONS`] tallies are kept; a new one evicts the oldest that no
//!   snapshot uses any more (its unreported counts are dropped; the eviction
//!   is counted in `tollgate_state_evictions_total{state="decision_versions"}`).
//! - **Shadow differences**, per (server, tool, live decision, shadow
//!   decision): at most [`MAX_DIFFERENCES`] keys; past them a difference is
//!   counted under the server and tool [`OVERFLOW`] with its decision pair.
//! - **Samples** of differing calls: the first [`MAX_SAMPLES`] since the last
//!   report, with rule pointers, the shadow's reason and the SHA-256 of the
//!   canonical arguments (never the arguments).
//!
//! [`Decisions::drain`] takes everything as a [`Pending`] report (counts are
//! deltas since the previous drain); [`Decisions::restore`] adds a report
//! that was refused or failed back in, within the same bounds.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::HashMap;
use tollgate_policy::{Decision, Outcome};
use tollgate_proto::v1::{DecisionReport, ShadowDifference, ShadowSample, VersionCounts};

use crate::metrics::Metrics;

/// Policy versions whose counts are kept at once (live and shadow, current
/// and recently replaced).
pub const MAX_VERSIONS: usize = 16;
/// Distinct (server, tool, live, shadow) differences kept between reports.
pub const MAX_DIFFERENCES: usize = 1_000;
/// Samples of differing calls per report.
pub const MAX_SAMPLES: usize = 20;
/// The longest server or tool name kept, in bytes (longer names are cut at
/// a character boundary): names come from clients.
pub const MAX_NAME: usize = 128;
/// The server and tool a difference is counted under once
/// [`MAX_DIFFERENCES`] keys are taken.
pub const OVERFLOW: &str = "(overflow)";

/// Each outcome's place in a [`Tally`].
fn index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Allow => 0,
        Outcome::Deny => 1,
        Outcome::RateLimited => 2,
        Outcome::RequireApproval => 3,
        Outcome::Hidden => 4,
    }
}

/// One version's decisions since the last report, one counter per outcome.
#[derive(Debug, Default)]
pub struct Tally([AtomicU64; 5]);

impl Tally {
    /// Counts one decided call: one relaxed atomic add.
    pub fn count(&self, outcome: Outcome) {
        self.0[index(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the counts, leaving zeros.
    fn take(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.0[i].swap(0, Ordering::Relaxed))
    }

    /// Adds counts back.
    fn add(&self, counts: &[u64; 5]) {
        for (c, n) in self.0.iter().zip(counts) {
            if *n > 0 {
                c.fetch_add(*n, Ordering::Relaxed);
            }
        }
    }
}

/// One tally kept, by version and role.
#[derive(Debug)]
struct Entry {
    version: u64,
    shadow: bool,
    tally: Arc<Tally>,
}

/// A difference's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DiffKey {
    server: Box<str>,
    tool: Box<str>,
    live: Outcome,
    shadow: Outcome,
}

/// Differences and samples since the last report.
#[derive(Debug, Default)]
struct Shadowed {
    differences: HashMap<DiffKey, u64>,
    samples: Vec<ShadowSample>,
}

impl Shadowed {
    fn add(&mut self, key: DiffKey, n: u64) {
        let len = self.differences.len();
        match self.differences.get_mut(&key) {
            Some(count) => *count = count.saturating_add(n),
            None if len < MAX_DIFFERENCES => {
                self.differences.insert(key, n);
            }
            None => {
                let overflow = DiffKey {
                    server: OVERFLOW.into(),
                    tool: OVERFLOW.into(),
                    ..key
                };
                let count = self.differences.entry(overflow).or_insert(0);
                *count = count.saturating_add(n);
            }
        }
    }
}

/// One call on which the shadow decided otherwise than the live version.
#[derive(Debug)]
pub struct Difference<'a> {
    /// The server the call was for.
    pub server: &'a str,
    /// The tool called.
    pub tool: &'a str,
    /// The caller's grant.
    pub grant: &'a str,
    /// The live (enforced) decision.
    pub live: &'a Decision,
    /// The shadow's decision.
    pub shadow: &'a Decision,
}

/// A report drained from [`Decisions`], to send, and to restore if it is
/// not accepted.
#[derive(Debug, Default)]
pub struct Pending {
    counts: Vec<(u64, bool, [u64; 5])>,
    differences: Vec<(DiffKey, u64)>,
    samples: Vec<ShadowSample>,
}

impl Pending {
    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.differences.is_empty()
    }

    /// The report as sent (without the node, which the sender adds).
    pub fn report(&self, until_unix_ms: i64) -> DecisionReport {
        DecisionReport {
            node: None,
            versions: self
                .counts
                .iter()
                .map(|(version, shadow, c)| VersionCounts {
                    version: *version,
                    shadow: *shadow,
                    calls: c.iter().sum(),
                    denied: c[index(Outcome::Deny)] + c[index(Outcome::Hidden)],
                    rate_limited: c[index(Outcome::RateLimited)],
                    approval_required: c[index(Outcome::RequireApproval)],
                })
                .collect(),
            differences: self
                .differences
                .iter()
                .map(|(k, n)| ShadowDifference {
                    server: k.server.to_string(),
                    tool: k.tool.to_string(),
                    live: k.live.as_str().to_owned(),
                    shadow: k.shadow.as_str().to_owned(),
                    count: *n,
                })
                .collect(),
            samples: self.samples.clone(),
            until_unix_ms,
        }
    }
}

/// The accumulator (see the module doc).
#[derive(Debug)]
pub struct Decisions {
    versions: Mutex<VecDeque<Entry>>,
    shadowed: Mutex<Shadowed>,
    metrics: Arc<Metrics>,
}

/// Locks `m`, recovering from a panic elsewhere (the data are counters).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `name` cut to at most [`MAX_NAME`] bytes at a character boundary.
fn bounded(name: &str) -> &str {
    if name.len() <= MAX_NAME {
        return name;
    }
    let mut end = MAX_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

impl Decisions {
    /// An empty accumulator.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            versions: Mutex::new(VecDeque::with_capacity(MAX_VERSIONS)),
            shadowed: Mutex::new(Shadowed::default()),
            metrics,
        }
    }

    /// The tally of `version` (as a shadow or live), kept from now on: the
    /// one already kept, or a new one, evicting the oldest unused tally past
    /// [`MAX_VERSIONS`].
    pub fn tally(&self, version: u64, shadow: bool) -> Arc<Tally> {
        let mut versions = lock(&self.versions);
        if let Some(e) = versions
            .iter()
            .find(|e| e.version == version && e.shadow == shadow)
        {
            return Arc::clone(&e.tally);
        }
        if versions.len() >= MAX_VERSIONS {
            // Unused: only this table holds it (no snapshot decides with it).
            let at = versions
                .iter()
                .position(|e| Arc::strong_count(&e.tally) == 1)
                .unwrap_or(0);
            if versions.remove(at).is_some() {
                self.metrics.evicted("decision_versions", 1);
            }
        }
        let tally = Arc::new(Tally::default());
        versions.push_back(Entry {
            version,
            shadow,
            tally: Arc::clone(&tally),
        });
        tally
    }

    /// Records a call the shadow decided otherwise; `arguments_sha256` is
    /// asked for only when the call is sampled.
    pub fn differ(&self, d: &Difference<'_>, arguments_sha256: impl FnOnce() -> String) {
        self.metrics
            .shadow_difference(d.live.outcome.as_str(), d.shadow.outcome.as_str());
        let key = DiffKey {
            server: bounded(d.server).into(),
            tool: bounded(d.tool).into(),
            live: d.live.outcome,
            shadow: d.shadow.outcome,
        };
        let mut shadowed = lock(&self.shadowed);
        shadowed.add(key, 1);
        if shadowed.samples.len() < MAX_SAMPLES {
            shadowed.samples.push(ShadowSample {
                server: bounded(d.server).to_owned(),
                tool: bounded(d.tool).to_owned(),
                grant: bounded(d.grant).to_owned(),
                live: d.live.outcome.as_str().to_owned(),
                shadow: d.shadow.outcome.as_str().to_owned(),
                live_rule: d.live.rule.to_string(),
                shadow_rule: d.shadow.rule.to_string(),
                shadow_reason: d.shadow.reason.as_deref().unwrap_or_default().to_owned(),
                arguments_sha256: arguments_sha256(),
                unix_ms: unix_ms(),
            });
        }
    }

    /// Takes everything counted since the last drain.
    pub fn drain(&self) -> Pending {
        let counts = lock(&self.versions)
            .iter()
            .filter_map(|e| {
                let c = e.tally.take();
                c.iter().any(|n| *n > 0).then_some((e.version, e.shadow, c))
            })
            .collect();
        let shadowed = std::mem::take(&mut *lock(&self.shadowed));
        Pending {
            counts,
            differences: shadowed.differences.into_iter().collect(),
            samples: shadowed.samples,
        }
    }

    /// Adds a report that was not accepted back in: counts to their tallies
    /// (those of versions no longer kept are dropped, and counted as
    /// evictions), differences and samples within their bounds.
    pub fn restore(&self, pending: Pending) {
        {
            let versions = lock(&self.versions);
            for (version, shadow, counts) in &pending.counts {
                match versions
                    .iter()
                    .find(|e| e.version == *version && e.shadow == *shadow)
                {
                    Some(e) => e.tally.add(counts),
                    None => self.metrics.evicted("decision_versions", 1),
                }
            }
        }
        let mut shadowed = lock(&self.shadowed);
        for (key, n) in pending.differences {
            shadowed.add(key, n);
        }
        // The older samples first: they were drawn first.
        let mut samples = pending.samples;
        samples.append(&mut shadowed.samples);
        samples.truncate(MAX_SAMPLES);
        shadowed.samples = samples;
    }
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;
