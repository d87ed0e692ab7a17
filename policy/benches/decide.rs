//! `Bundle::decide` on the seed policy and on a generated 1,000-rule policy.
//!
//! Run with `cargo bench -p tollgate-policy --bench decide`. Each benchmark is
//! named `decide/<policy>/<case>`; the time printed is one decision. The goal
//! (issue: decision speed) is ≤ 200 ns per decision without conditions on the
//! 1,000-rule policy.

use std::cell::Cell;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::value::RawValue;
use tollgate_policy::{Arguments, Bundle, Call, LocalCounters, Outcome, load};

const SEED: &str = include_str!("../../examples/seed-policy.json");

const SERVICES: [&str; 10] = [
    "github", "gitlab", "jira", "slack", "linear", "notion", "stripe", "postgres", "s3", "k8s",
];
const VERBS: [&str; 10] = [
    "list", "get", "create", "update", "delete", "search", "archive", "sync", "export", "watch",
];
const OBJECTS: [&str; 5] = ["issues", "comments", "users", "files", "events"];

/// A policy of 1,000 `tools` entries:
///
/// - 500 exact names `<service>_<verb>_<object>`; every tenth has a
///   `rate_limit` (with a huge `max`), every 25th (not limited) denies;
/// - 400 globs in three families whose literal counts differ (7, 11, 15), so
///   globs of equal specificity never overlap: 150 prefixes `mcp000_*`,
///   150 suffixes `*_v000_admin`, 100 infixes `team000_*_report`;
/// - 100 exact names `db00_execute_sql` with `deny_if` and `require` groups.
fn thousand_rules() -> String {
    let mut tools = serde_json::Map::new();
    let mut n = 0;
    for s in SERVICES {
        for v in VERBS {
            for o in OBJECTS {
                let rule = if n % 10 == 0 {
                    serde_json::json!({"rate_limit": {"max": 1_000_000_000_000_u64, "window": "minute"}})
                } else if n % 25 == 1 {
                    serde_json::json!({"action": "deny", "reason": "not for agents"})
                } else {
                    serde_json::json!({})
                };
                tools.insert(format!("{s}_{v}_{o}"), rule);
                n += 1;
            }
        }
    }
    for i in 0..150 {
        tools.insert(format!("mcp{i:03}_*"), serde_json::json!({}));
        tools.insert(
            format!("*_v{i:03}_admin"),
            serde_json::json!({"action": "require_approval", "reason": "admin tools need a human"}),
        );
    }
    for i in 0..100 {
        tools.insert(format!("team{i:03}_*_report"), serde_json::json!({}));
    }
    for i in 0..100 {
        tools.insert(
            format!("db{i:02}_execute_sql"),
            serde_json::json!({
                "deny_if": [
                    {
                        "conditions": [
                            {"path": "args.query", "op": "regex", "value": "(?i)\\b(drop|truncate)\\s+table\\b"}
                        ],
                        "on_deny": "no DROP or TRUNCATE"
                    },
                    {
                        "conditions": [
                            {"path": "args.options.dry_run", "op": "eq", "value": false},
                            {"path": "args.limit", "op": "gt", "value": 10_000}
                        ]
                    },
                    {
                        "conditions": [
                            {"path": "args.tags", "op": "contains", "value": "pii"}
                        ]
                    }
                ],
                "require": [
                    {
                        "conditions": [
                            {"path": "args.database", "op": "in", "value": ["analytics", "staging"]},
                            {"path": "args.reason", "op": "exists"},
                            {"path": "args.options.timeout_ms", "op": "lte", "value": 30_000}
                        ]
                    }
                ]
            }),
        );
    }
    assert_eq!(tools.len(), 1000);
    serde_json::json!({"version": "1", "default": "deny", "tools": tools}).to_string()
}

/// About 1 KB of arguments that pass every condition of `db00_execute_sql`.
fn sql_arguments() -> Box<RawValue> {
    let args = serde_json::json!({
        "database": "analytics",
        "query": "SELECT o.id, o.created_at, o.total_cents, c.country, c.segment \
                  FROM orders o JOIN customers c ON c.id = o.customer_id \
                  WHERE o.created_at >= now() - interval '7 days' AND o.status = 'paid' \
                  ORDER BY o.created_at DESC",
        "limit": 500,
        "reason": "weekly revenue report requested by the finance agent",
        "tags": ["report", "finance", "weekly", "read-only"],
        "options": {
            "dry_run": true,
            "timeout_ms": 5000,
            "explain": false,
            "format": "json",
            "columns": ["id", "created_at", "total_cents", "country", "segment"]
        },
        "context": {
            "agent": "finance-reporter",
            "run_id": "7f1c9e2a-4b3d-4e8f-9a6b-2c5d7e8f9a0b",
            "trace": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "notes": "Aggregate by country and segment; exclude test accounts; \
                      round totals to whole currency units before returning."
        },
        "parameters": [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233],
        "client": {"name": "tollgate-bench", "version": "0.1.0", "locale": "en-GB"}
    });
    let text = args.to_string();
    assert!((900..1200).contains(&text.len()), "{} bytes", text.len());
    RawValue::from_string(text).expect("valid JSON")
}

/// Benchmarks one call; `step` advances the injected clock between calls
/// (for limits), and the outcome is checked once before timing.
fn case(
    c: &mut Criterion,
    name: &str,
    bundle: &Bundle,
    call: &Call<'_>,
    step: Duration,
    want: Outcome,
) {
    let counters = LocalCounters::new();
    let now = Cell::new(Duration::ZERO);
    let first = bundle.decide(call, now.get(), &counters);
    assert_eq!(first.outcome, want, "{name}: {first:?}");
    c.bench_function(name, |b| {
        b.iter(|| {
            now.set(now.get() + step);
            black_box(bundle.decide(black_box(call), now.get(), &counters))
        })
    });
}

fn seed(c: &mut Criterion) {
    let bundle = load(SEED).expect("the seed policy loads");
    let limited = Call {
        grant: "agent-1",
        ..Call::new("tests", "create_test_session_context")
    };
    // 30 a minute: one call every 2.5 s keeps about 24 in the window, so every call is admitted.
    case(
        c,
        "decide/seed/limit-allow",
        &bundle,
        &limited,
        Duration::from_millis(2500),
        Outcome::Allow,
    );
    let unknown = Call {
        grant: "agent-1",
        ..Call::new("tests", "delete_test_session")
    };
    case(
        c,
        "decide/seed/default-deny",
        &bundle,
        &unknown,
        Duration::ZERO,
        Outcome::Deny,
    );
}

fn thousand(c: &mut Criterion) {
    let bundle = match load(&thousand_rules()) {
        Ok(b) => b,
        Err(e) => panic!("the 1,000-rule policy must load:\n{e}"),
    };
    assert_eq!(bundle.stats().tools, 1000);
    let call = |tool| Call {
        grant: "agent-1",
        ..Call::new("any", tool)
    };
    let none = Duration::ZERO;

    case(
        c,
        "decide/1000-rules/exact-allow",
        &bundle,
        &call("jira_search_users"),
        none,
        Outcome::Allow,
    );
    case(
        c,
        "decide/1000-rules/glob-prefix-allow",
        &bundle,
        &call("mcp117_fetch_page"),
        none,
        Outcome::Allow,
    );
    case(
        c,
        "decide/1000-rules/glob-suffix-approval",
        &bundle,
        &call("reset_password_v042_admin"),
        none,
        Outcome::RequireApproval,
    );
    case(
        c,
        "decide/1000-rules/glob-infix-allow",
        &bundle,
        &call("team063_weekly_report"),
        none,
        Outcome::Allow,
    );
    case(
        c,
        "decide/1000-rules/default-deny",
        &bundle,
        &call("unknown_tool_name"),
        none,
        Outcome::Deny,
    );
    // `github_list_issues` is entry 0: limited to 10^12 a minute. One call per
    // millisecond keeps the window sliding (slots expire and are reused).
    case(
        c,
        "decide/1000-rules/limit-allow",
        &bundle,
        &call("github_list_issues"),
        Duration::from_millis(1),
        Outcome::Allow,
    );
    let raw = sql_arguments();
    let sql = Call {
        arguments: Arguments::Raw(&raw),
        ..call("db42_execute_sql")
    };
    case(
        c,
        "decide/1000-rules/conditions-1KB-allow",
        &bundle,
        &sql,
        none,
        Outcome::Allow,
    );
}

criterion_group!(benches, seed, thousand);
criterion_main!(benches);
