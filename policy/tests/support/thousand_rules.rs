//! The 1,000-rule policy shared by `benches/decide.rs` and `tests/no_alloc.rs`.

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
pub fn thousand_rules() -> String {
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
