//! Judging with a shadow version beside the live one: the agent's verdict is
//! the live decision's, the shadow's differences are recorded, and the
//! shadow charges no limit.

use std::sync::Arc;

use bytes::Bytes;
use hashbrown::HashMap;
use http::header::HeaderName;

use super::*;
use crate::approvals::canonical::{canonical_json, sha256_hex};
use crate::decision_log::DecisionLog;
use crate::metrics::Metrics;
use crate::rollout_report::Decisions;
use crate::snapshot::{LivePolicy, Shadow};
use crate::state::{Route, Sidecar, Upstream};
use crate::upstream::HttpUpstream;

/// Live: every tool allowed.
const LIVE: &str = r#"{"version": "1", "default": "allow"}"#;
/// Shadow: `echo` denied, `add` limited to one call a minute.
const SHADOW: &str = r#"{"version": "1", "default": "allow", "tools": {
    "echo": {"action": "deny", "reason": "echo is retired"},
    "add": {"limits": [{"counter": "add_pod", "window": "minute", "max": 1, "scope": "pod"}]}
}}"#;

fn call(tool: &str, arguments: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments}}}}}"#
    ))
}

struct Setup {
    sc: Sidecar,
    route: Arc<Route>,
    decisions: Arc<Decisions>,
    metrics: Arc<Metrics>,
}

fn setup() -> Setup {
    setup_with(LIVE)
}

fn setup_with(live: &str) -> Setup {
    let metrics = Arc::new(Metrics::new());
    let decisions = Arc::new(Decisions::new(Arc::clone(&metrics)));
    let policy = Arc::new(LivePolicy::default());
    let live = tollgate_policy::load(live).expect("live policy");
    let shadow = tollgate_policy::load(SHADOW).expect("shadow policy");
    policy.store(
        Snapshot::new(live, Arc::from("v1"))
            .with_tally(decisions.tally(1, false))
            .with_shadow(Some(Shadow::new(shadow, 2, Arc::clone(&decisions)))),
    );
    // Never contacted: judging does not forward.
    let upstream = HttpUpstream::new("default", "http://127.0.0.1:1/mcp".parse().unwrap());
    let route = Arc::new(Route::new(
        "default",
        "/mcp".into(),
        Upstream::Http(upstream),
        &metrics,
    ));
    let routes = HashMap::from([(String::new(), Arc::clone(&route))]);
    let sc = Sidecar::new(
        policy,
        Arc::clone(&metrics),
        DecisionLog::disabled(Arc::clone(&metrics)),
        Arc::from("pod-a"),
        HeaderName::from_static("authorization"),
        1 << 20,
        routes,
    );
    Setup {
        sc,
        route,
        decisions,
        metrics,
    }
}

/// Judges `body` as the sidecar does; returns whether it is forwarded as it came.
fn forwarded(s: &Setup, body: &Bytes) -> bool {
    let peeked = peek(body).expect("a valid message");
    let messages = peeked.messages();
    let snapshot = s.sc.policy.load();
    let grant: Arc<str> = Arc::from("pod-a");
    let verdicts = judge(&s.sc, &s.route, None, messages, &snapshot, &grant, body);
    if !verdicts.all_forwarded() {
        return false;
    }
    let (out, _) = forward_body(body, false, messages, &verdicts, &s.sc.list_ids);
    out == *body
}

#[test]
fn the_live_decision_is_enforced_and_the_shadow_difference_recorded() {
    let s = setup();
    let body = call("echo", r#"{"message": "hi", "a": 1}"#);
    assert!(
        forwarded(&s, &body),
        "the live allow forwards the call unchanged"
    );
    let report = s.decisions.drain().report(0);
    let live = report
        .versions
        .iter()
        .find(|v| !v.shadow)
        .expect("live counts");
    let shadow = report
        .versions
        .iter()
        .find(|v| v.shadow)
        .expect("shadow counts");
    assert_eq!((live.version, live.calls, live.denied), (1, 1, 0));
    assert_eq!((shadow.version, shadow.calls, shadow.denied), (2, 1, 1));
    assert_eq!(report.differences.len(), 1);
    let d = &report.differences[0];
    assert_eq!(
        (
            d.server.as_str(),
            d.tool.as_str(),
            d.live.as_str(),
            d.shadow.as_str(),
            d.count
        ),
        ("default", "echo", "allow", "deny", 1)
    );
    let sample = &report.samples[0];
    assert_eq!(sample.shadow_reason, "echo is retired");
    assert_eq!(sample.shadow_rule, "/tools/echo");
    assert_eq!(sample.grant, "pod-a");
    let raw = serde_json::value::RawValue::from_string(r#"{"a":1,"message":"hi"}"#.into()).unwrap();
    assert_eq!(
        sample.arguments_sha256,
        sha256_hex(&canonical_json(Some(&raw)).unwrap()),
        "the digest of the canonical arguments"
    );
    assert!(
        s.metrics
            .encode()
            .contains("tollgate_shadow_differences_total{live=\"allow\",shadow=\"deny\"} 1")
    );
}

#[test]
fn a_shadow_charges_no_limit() {
    let s = setup();
    for _ in 0..3 {
        assert!(forwarded(&s, &call("add", r#"{"a": 1, "b": 2}"#)));
    }
    let report = s.decisions.drain().report(0);
    let shadow = report
        .versions
        .iter()
        .find(|v| v.shadow)
        .expect("shadow counts");
    assert_eq!(
        (shadow.calls, shadow.rate_limited),
        (3, 0),
        "every limit admits a shadow's call and none is charged"
    );
    assert!(report.differences.is_empty(), "{:?}", report.differences);
}

#[test]
fn a_live_rate_limit_is_no_difference_from_a_shadow_that_evaluates_none() {
    // Live: `echo` limited to one call a minute; the shadow denies it, and
    // allows `add`, limited live too.
    let live = r#"{"version": "1", "default": "allow", "tools": {
        "echo": {"limits": [{"counter": "echo_pod", "window": "minute", "max": 1, "scope": "pod"}]},
        "add": {"limits": [{"counter": "add_pod", "window": "minute", "max": 1, "scope": "pod"}]}
    }}"#;
    let s = setup_with(live);
    assert!(forwarded(&s, &call("add", "{}")));
    assert!(!forwarded(&s, &call("add", "{}")), "the live limit refuses");
    assert!(forwarded(&s, &call("echo", "{}")));
    assert!(!forwarded(&s, &call("echo", "{}")));
    let report = s.decisions.drain().report(0);
    let live = report
        .versions
        .iter()
        .find(|v| !v.shadow)
        .expect("live counts");
    assert_eq!((live.calls, live.rate_limited), (4, 2));
    let mut pairs: Vec<_> = report
        .differences
        .iter()
        .map(|d| (d.tool.as_str(), d.live.as_str(), d.shadow.as_str(), d.count))
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [
            ("echo", "allow", "deny", 1),
            ("echo", "rate_limited", "deny", 1)
        ],
        "rate_limited against the shadow's allow is not reported"
    );
}
