//! The accumulator's deltas, merge-back and bounds.

use std::sync::Arc;

use tollgate_policy::{Decision, Outcome};

use super::*;

fn decision(outcome: Outcome, rule: &str) -> Decision {
    Decision {
        outcome,
        rule: Arc::from(rule),
        reason: (outcome != Outcome::Allow).then(|| Arc::from("because")),
        retry_after: None,
        limit: None,
        approval: None,
        class: None,
        shadow: false,
    }
}

fn differ(d: &Decisions, server: &str, tool: &str, live: Outcome, shadow: Outcome) {
    let (live, shadow) = (decision(live, "/tools/x"), decision(shadow, "/tools/y"));
    d.differ(
        &Difference {
            server,
            tool,
            grant: "agent",
            live: &live,
            shadow: &shadow,
        },
        || "ab".repeat(32),
    );
}

fn counts(report: &DecisionReport, version: u64, shadow: bool) -> Option<VersionCounts> {
    report
        .versions
        .iter()
        .find(|v| v.version == version && v.shadow == shadow)
        .cloned()
}

#[test]
fn counts_are_deltas_per_version_and_role() {
    let d = Decisions::new(Arc::new(Metrics::new()));
    let live = d.tally(3, false);
    let shadow = d.tally(4, true);
    assert!(
        Arc::ptr_eq(&live, &d.tally(3, false)),
        "one tally per version"
    );
    for o in [
        Outcome::Allow,
        Outcome::Allow,
        Outcome::Deny,
        Outcome::Hidden,
    ] {
        live.count(o);
    }
    live.count(Outcome::RateLimited);
    live.count(Outcome::RequireApproval);
    shadow.count(Outcome::Deny);
    let report = d.drain().report(1);
    let v3 = counts(&report, 3, false).expect("live counts");
    assert_eq!(
        (v3.calls, v3.denied, v3.rate_limited, v3.approval_required),
        (6, 2, 1, 1),
        "hidden counts as denied"
    );
    let v4 = counts(&report, 4, true).expect("shadow counts");
    assert_eq!((v4.calls, v4.denied), (1, 1));
    assert!(d.drain().is_empty(), "a drain leaves nothing: deltas");
    live.count(Outcome::Allow);
    let next = d.drain().report(2);
    assert_eq!(next.versions.len(), 1, "only versions that decided since");
    assert_eq!(counts(&next, 3, false).unwrap().calls, 1);
}

#[test]
fn a_report_not_accepted_is_added_to_the_next() {
    let d = Decisions::new(Arc::new(Metrics::new()));
    let live = d.tally(1, false);
    live.count(Outcome::Deny);
    differ(&d, "s", "echo", Outcome::Allow, Outcome::Deny);
    let failed = d.drain();
    assert!(!failed.is_empty());
    // Meanwhile more calls.
    live.count(Outcome::Deny);
    live.count(Outcome::Allow);
    differ(&d, "s", "echo", Outcome::Allow, Outcome::Deny);
    differ(&d, "s", "add", Outcome::Allow, Outcome::Deny);
    d.restore(failed);
    let report = d.drain().report(3);
    let v1 = counts(&report, 1, false).unwrap();
    assert_eq!((v1.calls, v1.denied), (3, 2), "nothing lost, nothing twice");
    let echo = report
        .differences
        .iter()
        .find(|x| x.tool == "echo")
        .unwrap();
    assert_eq!(
        (echo.live.as_str(), echo.shadow.as_str(), echo.count),
        ("allow", "deny", 2)
    );
    assert_eq!(report.samples.len(), 3);
    assert_eq!(report.samples[0].tool, "echo", "the oldest sample first");
    assert_eq!(report.samples[0].shadow_rule, "/tools/y");
    assert_eq!(report.samples[0].shadow_reason, "because");
    assert_eq!(report.samples[0].arguments_sha256.len(), 64);
    assert!(d.drain().is_empty());
}

#[test]
fn differences_samples_and_versions_are_bounded() {
    let metrics = Arc::new(Metrics::new());
    let d = Decisions::new(Arc::clone(&metrics));
    let long = "t".repeat(10 * MAX_NAME);
    for i in 0..MAX_DIFFERENCES + 50 {
        differ(&d, "s", &format!("tool_{i}"), Outcome::Allow, Outcome::Deny);
    }
    differ(&d, "s", &long, Outcome::Allow, Outcome::Hidden);
    differ(&d, "s", "tool_0", Outcome::Allow, Outcome::Deny);
    let pending = d.drain();
    let report = pending.report(0);
    assert_eq!(report.differences.len(), MAX_DIFFERENCES + 2);
    let overflow: Vec<_> = report
        .differences
        .iter()
        .filter(|x| x.tool == OVERFLOW)
        .collect();
    assert_eq!(overflow.len(), 2, "one overflow key per decision pair");
    let allow_deny = overflow.iter().find(|x| x.shadow == "deny").unwrap();
    assert_eq!(allow_deny.count, 50);
    let tool_0 = report
        .differences
        .iter()
        .find(|x| x.tool == "tool_0")
        .unwrap();
    assert_eq!(tool_0.count, 2, "a kept key still counts past the cap");
    assert_eq!(report.samples.len(), MAX_SAMPLES);
    // Restoring into a full table keeps the bound.
    for i in 0..MAX_DIFFERENCES {
        differ(
            &d,
            "s",
            &format!("other_{i}"),
            Outcome::Deny,
            Outcome::Allow,
        );
    }
    d.restore(pending);
    let merged = d.drain().report(0);
    assert!(merged.differences.len() <= MAX_DIFFERENCES + 2 + 5);
    let total: u64 = merged.differences.iter().map(|x| x.count).sum();
    assert_eq!(total, (MAX_DIFFERENCES + 52 + MAX_DIFFERENCES) as u64);
    assert_eq!(merged.samples.len(), MAX_SAMPLES);
    // A name from a client is cut, at a character boundary.
    let long = format!("t{}", "é".repeat(MAX_NAME));
    differ(&d, "s", &long, Outcome::Allow, Outcome::Hidden);
    let cut = d.drain().report(0);
    assert_eq!(cut.differences[0].tool.len(), MAX_NAME - 1);
    assert_eq!(cut.samples[0].tool, cut.differences[0].tool);

    // Versions: past MAX_VERSIONS, the oldest unused tally goes.
    let held = d.tally(100, false);
    for v in 0..MAX_VERSIONS as u64 {
        d.tally(v, true).count(Outcome::Allow);
    }
    held.count(Outcome::Deny);
    let report = d.drain().report(0);
    assert_eq!(report.versions.len(), MAX_VERSIONS);
    assert!(
        counts(&report, 100, false).is_some(),
        "a tally in use is not evicted"
    );
    assert!(counts(&report, 0, true).is_none(), "the oldest unused went");
    assert!(
        metrics
            .encode()
            .contains("tollgate_state_evictions_total{state=\"decision_versions\"} 1")
    );
}
