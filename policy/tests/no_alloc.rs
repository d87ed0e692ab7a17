//! Deciding a call must not allocate on the hot paths.
//!
//! `allocation-counter` installs a counting global allocator in this test
//! binary only (the workspace forbids `unsafe_code`, so the test cannot
//! implement `GlobalAlloc` itself) and counts the current thread's
//! allocations, so other test threads do not disturb the counts.
//!
//! Each path is decided once before measuring: first uses allocate once
//! (thread-locals, regex caches, a counter's bucket).

use std::time::Duration;

use tollgate_policy::{Bundle, Call, LocalCounters, Outcome, load};

#[path = "support/thousand_rules.rs"]
mod support;

/// The benchmark's 1,000-rule policy (`tests/support/thousand_rules.rs`), compiled.
fn thousand_rules() -> Bundle {
    let text = support::thousand_rules();
    match load(&text) {
        Ok(bundle) => bundle,
        Err(e) => panic!("the 1,000-rule policy must load:\n{e}"),
    }
}

/// Allocations made by `calls` decisions of `tool`, one every 100 ms, after
/// two minutes of warm-up decisions (so a limit's bucket exists and its
/// window has held a full minute of slots: a window grows to its largest
/// size once, then reuses it).
fn allocations(bundle: &Bundle, tool: &str, want: Outcome, calls: u64) -> u64 {
    let counters = LocalCounters::new();
    let call = Call {
        grant: "agent-1",
        ..Call::new("any", tool)
    };
    let warm_up = 240;
    for i in 0..warm_up {
        let d = bundle.decide(&call, Duration::from_millis(500 * i), &counters);
        assert_eq!(d.outcome, want, "{tool}: {d:?}");
    }
    let start = Duration::from_millis(500 * warm_up);
    allocation_counter::measure(|| {
        for i in 0..calls {
            let now = start + Duration::from_millis(100 * i);
            let d = bundle.decide(&call, now, &counters);
            assert_eq!(d.outcome, want);
        }
    })
    .count_total
}

#[test]
fn the_counting_allocator_counts() {
    let n = allocation_counter::measure(|| drop(std::hint::black_box(Box::new(1_u64))));
    assert_eq!(n.count_total, 1);
}

#[test]
fn an_exact_allow_without_limits_or_conditions_allocates_nothing() {
    let bundle = thousand_rules();
    assert_eq!(
        allocations(&bundle, "jira_search_users", Outcome::Allow, 1000),
        0
    );
    // Tool names match case-insensitively; a mixed-case name is lower-cased
    // on the stack.
    assert_eq!(
        allocations(&bundle, "Jira_Search_Users", Outcome::Allow, 1000),
        0
    );
}

#[test]
fn glob_default_and_limit_paths_allocate_nothing_once_warm() {
    let bundle = thousand_rules();
    let cases = [
        ("mcp117_fetch_page", Outcome::Allow),
        ("reset_password_v042_admin", Outcome::RequireApproval),
        ("team063_weekly_report", Outcome::Allow),
        ("unknown_tool_name", Outcome::Deny),
        ("github_list_issues", Outcome::Allow),
    ];
    let counts: Vec<_> = cases
        .iter()
        .map(|&(tool, want)| (tool, allocations(&bundle, tool, want, 1000)))
        .collect();
    eprintln!("allocations per 1000 decisions: {counts:?}");
    assert!(counts.iter().all(|&(_, n)| n == 0), "{counts:?}");
}

#[test]
fn identifying_a_caller_allocates_nothing_in_either_form() {
    let sha256_of_test = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let mut file = serde_json::json!({
        "servers": {"s": {"version": "1", "default": "allow"}},
        "grants": {"ci": {"token_sha256": sha256_of_test}}
    });
    let plain = tollgate_policy::load_value(&file).expect("valid");
    let key = tollgate_policy::GrantKey::new([9; 32]);
    tollgate_policy::key_grant_tokens(&mut file, &key);
    let keyed = tollgate_policy::load_distributed(&file, Some(&key)).expect("valid");
    for bundle in [&plain, &keyed] {
        let n = allocation_counter::measure(|| {
            for _ in 0..100 {
                assert!(bundle.grant_for_token(b"test").is_some());
                assert!(bundle.grant_for_token(b"wrong").is_none());
            }
        });
        assert_eq!(n.count_total, 0);
    }
}
