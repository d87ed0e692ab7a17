//! `Bundle::fleet_buckets`: the fleet-wide buckets a sidecar asks leases for
//! before the first call.

use std::sync::Arc;
use std::time::Duration;

use tollgate_policy::FleetLimit;
use tollgate_policy::document::{OnUnavailable, Scope};

fn keys(bundle: &str, servers: &[&str]) -> Vec<(String, String, Scope, String, u64)> {
    let b = tollgate_policy::load(bundle).expect("valid");
    let node: Arc<str> = Arc::from("pod-1");
    let mut out: Vec<_> = b
        .fleet_buckets(servers, &node)
        .into_iter()
        .map(|f| {
            (
                f.server,
                f.counter.to_string(),
                f.scope,
                f.key.to_string(),
                f.max,
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn global_and_grant_limits_are_listed_per_server_pod_and_session_ones_are_not() {
    let doc = r#"{"version": "1", "default": "allow",
        "all_tools": {"limits": [{"counter": "all", "window": "minute", "max": 600, "scope": "global"}]},
        "tools": {
            "a": {"limits": [
                {"counter": "a", "window": "minute", "max": 30},
                {"counter": "p", "window": "second", "max": 5, "scope": "pod"},
                {"counter": "s", "window": "hour", "max": 9, "scope": "session"}
            ]}
        }}"#;
    // Without grants in the bundle, the grant is the node id. (A single
    // document's counters are named as written; buckets are per server.)
    assert_eq!(
        keys(doc, &["billing", "default"]),
        vec![
            (
                "billing".into(),
                "a".into(),
                Scope::Grant,
                "pod-1".into(),
                30
            ),
            (
                "billing".into(),
                "all".into(),
                Scope::Global,
                "".into(),
                600
            ),
            (
                "default".into(),
                "a".into(),
                Scope::Grant,
                "pod-1".into(),
                30
            ),
            (
                "default".into(),
                "all".into(),
                Scope::Global,
                "".into(),
                600
            ),
        ]
    );
    let b = tollgate_policy::load(doc).expect("valid");
    let one = &b.fleet_buckets(&["x"], &Arc::from("n"))[0];
    assert_eq!(one.window, Duration::from_secs(60));
    assert_eq!(one.on_unavailable, OnUnavailable::Fallback);
}

#[test]
fn with_grants_each_grant_has_its_bucket_and_grant_policies_count() {
    let sha = |c: char| c.to_string().repeat(64);
    let doc = format!(
        r#"{{"servers": {{"books": {{"version": "1", "default": "allow",
              "tools": {{"t": {{"rate_limit": {{"max": 3, "window": "minute"}}}}}}}}}},
            "grants": {{
              "alice": {{"token_sha256": "{}"}},
              "bob": {{"token_sha256": "{}", "policies": {{"books": {{"version": "1", "default": "allow",
                  "tools": {{"t": {{"limits": [{{"counter": "bob_t", "window": "hour", "max": 7, "on_unavailable": "deny"}}]}}}}}}}}}}
            }}}}"#,
        sha('a'),
        sha('b')
    );
    let got = keys(&doc, &["books", "unknown"]);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].2, Scope::Grant);
    assert_eq!((got[0].3.as_str(), got[0].4), ("alice", 3));
    assert_eq!(
        (got[1].1.as_str(), got[1].3.as_str(), got[1].4),
        ("books:bob_t", "bob", 7)
    );
}

#[test]
fn a_limit_is_found_by_server_and_counter_in_every_policy_for_the_server() {
    let sha = |c: char| c.to_string().repeat(64);
    let doc = format!(
        r#"{{"servers": {{
              "books": {{"version": "1", "default": "allow",
                "tools": {{"t": {{"limits": [{{"counter": "all", "window": "minute", "max": 90, "scope": "global"}}]}}}}}},
              "films": {{"version": "1", "default": "allow", "tools": {{}}}}}},
            "grants": {{
              "bob": {{"token_sha256": "{}", "policies": {{"books": {{"version": "1", "default": "allow",
                  "tools": {{"t": {{"limits": [{{"counter": "bob_t", "window": "hour", "max": 7, "scope": "session", "on_unavailable": "deny"}}]}}}}}}}}}}
            }}}}"#,
        sha('b')
    );
    let b = tollgate_policy::load(&doc).expect("valid");
    let limit = |scope, max, secs, on_unavailable| FleetLimit {
        scope,
        window: Duration::from_secs(secs),
        max,
        on_unavailable,
    };
    assert_eq!(
        b.fleet_limit("books", "books:all"),
        Some(limit(Scope::Global, 90, 60, OnUnavailable::Fallback))
    );
    // A grant's policy for the server counts too.
    assert_eq!(
        b.fleet_limit("books", "books:bob_t"),
        Some(limit(Scope::Session, 7, 3600, OnUnavailable::Deny))
    );
    // Counters are the server's own: not found under another server, nor
    // by their bare name.
    assert_eq!(b.fleet_limit("films", "books:all"), None);
    assert_eq!(b.fleet_limit("books", "all"), None);
    assert_eq!(b.fleet_limit("nowhere", "books:all"), None);

    // A single document applies to every server, its counters named as written.
    let single = tollgate_policy::load(
        r#"{"version": "1", "default": "allow",
            "tools": {"w": {"rate_limit": {"max": 4, "window": "second"}}}}"#,
    )
    .expect("valid");
    assert_eq!(
        single.fleet_limit("any", "/tools/w/rate_limit"),
        Some(limit(Scope::Grant, 4, 1, OnUnavailable::Fallback))
    );
}
