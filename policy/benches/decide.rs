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

#[path = "../tests/support/thousand_rules.rs"]
mod thousand_rules;
use thousand_rules::thousand_rules;

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
