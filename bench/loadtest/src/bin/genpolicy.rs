//! Prints the benchmark's 1,000-rule policy (the shape of
//! `policy/benches/decide.rs`) to standard output:
//!
//! - 500 exact names `<service>_<verb>_<object>`; every tenth has a
//!   `rate_limit` with a `max` no run reaches, every 25th (not limited) denies;
//! - 400 globs in three non-overlapping families: 150 prefixes `mcp000_*`,
//!   150 suffixes `*_v000_admin` (approval), 100 infixes `team000_*_report`;
//! - 100 exact names `db00_execute_sql` with `deny_if` and `require` groups.
//!
//! The benchmark calls `jira_search_users`: exact, allowed, not limited.

#![forbid(unsafe_code)]

use serde_json::json;

const SERVICES: [&str; 10] = [
    "github", "gitlab", "jira", "slack", "linear", "notion", "stripe", "postgres", "s3", "k8s",
];
const VERBS: [&str; 10] = [
    "list", "get", "create", "update", "delete", "search", "archive", "sync", "export", "watch",
];
const OBJECTS: [&str; 5] = ["issues", "comments", "users", "files", "events"];

fn main() {
    println!("{}", thousand_rules());
}

fn thousand_rules() -> serde_json::Value {
    let mut tools = serde_json::Map::new();
    let mut n = 0;
    for s in SERVICES {
        for v in VERBS {
            for o in OBJECTS {
                let rule = if n % 10 == 0 {
                    json!({"rate_limit": {"max": 1_000_000_000_000_u64, "window": "minute"}})
                } else if n % 25 == 1 {
                    json!({"action": "deny", "reason": "not for agents"})
                } else {
                    json!({})
                };
                tools.insert(format!("{s}_{v}_{o}"), rule);
                n += 1;
            }
        }
    }
    for i in 0..150 {
        tools.insert(format!("mcp{i:03}_*"), json!({}));
        tools.insert(
            format!("*_v{i:03}_admin"),
            json!({"action": "require_approval", "reason": "admin tools need a human"}),
        );
    }
    for i in 0..100 {
        tools.insert(format!("team{i:03}_*_report"), json!({}));
    }
    for i in 0..100 {
        tools.insert(
            format!("db{i:02}_execute_sql"),
            json!({
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
                    {"conditions": [{"path": "args.tags", "op": "contains", "value": "pii"}]}
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
    assert_eq!(
        tools.len(),
        1000,
        "the generator must make 1,000 distinct entries"
    );
    json!({"version": "1", "default": "deny", "tools": tools})
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_benchmarked_tool_is_an_unlimited_allowed_exact_name() {
        let p = super::thousand_rules();
        assert_eq!(p["tools"]["jira_search_users"], serde_json::json!({}));
    }
}
