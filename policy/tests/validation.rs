//! Validation: every error names a JSON pointer and says what is wrong, all
//! errors are reported at once, and the hand-written reader agrees with the
//! serde model on what a valid file means.

use serde_json::{Value, json};
use tollgate_policy::{PolicyError, PolicyFile, load, load_value, read};

/// Every error of a document that must not load.
fn errors(text: &str) -> Vec<PolicyError> {
    match load(text) {
        Ok(_) => panic!("loaded, but must not:\n{text}"),
        Err(e) => e.0,
    }
}

fn errors_of(value: &Value) -> Vec<PolicyError> {
    errors(&value.to_string())
}

/// Asserts that the errors are exactly one, at `pointer`, and that its
/// message contains every fragment.
#[track_caller]
fn assert_one(errs: &[PolicyError], pointer: &str, fragments: &[&str]) {
    assert_eq!(
        errs.len(),
        1,
        "expected one error at {pointer}, got:\n{}",
        show(errs)
    );
    assert_error(errs, pointer, fragments);
}

/// Asserts that some error is at `pointer` with a message containing every fragment.
#[track_caller]
fn assert_error(errs: &[PolicyError], pointer: &str, fragments: &[&str]) {
    let found = errs
        .iter()
        .any(|e| e.pointer == pointer && fragments.iter().all(|f| e.message.contains(f)));
    assert!(
        found,
        "no error at {pointer} containing {fragments:?}; got:\n{}",
        show(errs)
    );
}

fn show(errs: &[PolicyError]) -> String {
    errs.iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A valid document with `tools` set to the given value.
fn with_tools(tools: Value) -> Value {
    json!({"version": "1", "default": "deny", "tools": tools})
}

/// A valid document whose tool `t` has a `deny_if` of the one condition.
fn with_condition(condition: Value) -> Value {
    with_tools(json!({"t": {"deny_if": [{"conditions": [condition]}]}}))
}

const SEED: &str = include_str!("../../examples/seed-policy.json");
const FULL: &str = include_str!("../../examples/full-policy.json");
const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

// ---- one test per kind of error ------------------------------------------

#[test]
fn unknown_field_suggests_the_nearest() {
    let errs = errors_of(&with_tools(json!({"t": {"actoin": "deny"}})));
    assert_one(
        &errs,
        "/tools/t/actoin",
        &[
            "unknown field `actoin`",
            "did you mean `action`?",
            "expected one of: action, reason",
        ],
    );

    // Far from every field: no guess, still the list.
    let errs = errors_of(&json!({"version": "1", "default": "deny", "whatever": 1}));
    assert_one(
        &errs,
        "/whatever",
        &["unknown field `whatever`", "expected one of: version"],
    );
    assert!(!errs[0].message.contains("did you mean"), "{}", errs[0]);

    // At every level.
    let errs = errors_of(&with_tools(json!({"t": {
        "limits": [{"window": "minute", "max": 1, "scop": "pod"}],
        "rate_limit": {"max": 1, "window": "minute", "burst": 2},
        "deny_if": [{"conditions": [{"path": "args.a", "op": "exists", "vaule": true}], "ondeny": "x"}],
        "action": "require_approval",
        "approval": {"timeout": "1m", "hodl": "1s"}
    }})));
    assert_eq!(errs.len(), 5, "{}", show(&errs));
    assert_error(&errs, "/tools/t/limits/0/scop", &["did you mean `scope`?"]);
    assert_error(
        &errs,
        "/tools/t/rate_limit/burst",
        &["unknown field `burst`"],
    );
    assert_error(
        &errs,
        "/tools/t/deny_if/0/conditions/0/vaule",
        &["did you mean `value`?"],
    );
    assert_error(
        &errs,
        "/tools/t/deny_if/0/ondeny",
        &["did you mean `on_deny`?"],
    );
    assert_error(&errs, "/tools/t/approval/hodl", &["did you mean `hold`?"]);
}

#[test]
fn unknown_fields_in_bundles_and_grants() {
    let errs = errors_of(&json!({
        "servers": {"demo": {"version": "1", "default": "deny", "tool": {}}},
        "grants": {"g": {"token_sha256": TOKEN, "label": {}}},
        "extra": true
    }));
    assert_eq!(errs.len(), 3, "{}", show(&errs));
    assert_error(&errs, "/extra", &["unknown field `extra` in a bundle"]);
    assert_error(&errs, "/servers/demo/tool", &["did you mean `tools`?"]);
    assert_error(&errs, "/grants/g/label", &["did you mean `labels`?"]);
}

#[test]
fn misspelt_limits_in_the_seed() {
    let mut seed: Value = serde_json::from_str(SEED).expect("seed JSON");
    let rule = seed["tools"]["create_test_session_context"]
        .as_object_mut()
        .expect("a rule");
    let limits = rule.remove("limits").expect("limits");
    rule.insert("limts".into(), limits);
    let errs = errors_of(&seed);
    assert_one(
        &errs,
        "/tools/create_test_session_context/limts",
        &["unknown field `limts` in a rule", "did you mean `limits`?"],
    );
}

#[test]
fn wrong_types() {
    let errs = errors_of(&json!({"version": "1", "default": 3}));
    assert_one(
        &errs,
        "/default",
        &[r#"expected one of "allow", "deny", found the number 3"#],
    );

    let errs = errors_of(&with_tools(json!({"t": {"reason": ["no"]}})));
    assert_one(
        &errs,
        "/tools/t/reason",
        &["expected a string, found a list"],
    );

    let errs = errors_of(&with_tools(
        json!({"t": {"limits": {"window": "minute", "max": 1}}}),
    ));
    assert_one(
        &errs,
        "/tools/t/limits",
        &["expected a list (a JSON array), found an object"],
    );

    let errs = errors_of(&with_tools(
        json!({"t": {"limits": [{"window": "minute", "max": "5"}]}}),
    ));
    assert_one(
        &errs,
        "/tools/t/limits/0/max",
        &[
            "expected a whole number of calls",
            r#"found the string "5""#,
        ],
    );

    let errs = errors_of(&with_tools(json!({"t": "deny"})));
    assert_one(
        &errs,
        "/tools/t",
        &[
            "expected a rule (a JSON object)",
            r#"found the string "deny""#,
        ],
    );

    let errs = errors_of(&json!({"version": 1, "default": "deny"}));
    assert_one(
        &errs,
        "/version",
        &[r#"expected one of "1", found the number 1"#],
    );

    let errs = errors_of(&json!({"version": "1", "default": "deny", "mode": "audit"}));
    assert_one(
        &errs,
        "/mode",
        &[r#"unknown value "audit"; expected one of "enforce", "shadow""#],
    );

    let errs = errors(r#"["version", "1"]"#);
    assert_one(
        &errs,
        "",
        &["expected a policy document or a bundle", "found a list"],
    );

    let errs = errors_of(&json!({"version": "1"}));
    assert_one(&errs, "", &["missing field `default`"]);
}

#[test]
fn unknown_window() {
    let errs = errors_of(&with_tools(
        json!({"t": {"limits": [{"window": "fortnight", "max": 1}]}}),
    ));
    assert_one(
        &errs,
        "/tools/t/limits/0/window",
        &[
            r#"unknown window "fortnight""#,
            r#""second", "minute", "hour", "day""#,
        ],
    );

    let errs = errors_of(&with_tools(
        json!({"t": {"rate_limit": {"window": 0, "max": 1}}}),
    ));
    assert_one(
        &errs,
        "/tools/t/rate_limit/window",
        &["a window of 0 seconds is not valid"],
    );

    let errs = errors_of(&with_tools(
        json!({"t": {"rate_limit": {"window": 1.5, "max": 1}}}),
    ));
    assert_one(
        &errs,
        "/tools/t/rate_limit/window",
        &["a window of 1.5 seconds is not valid"],
    );
}

#[test]
fn unknown_scope() {
    let errs = errors_of(&with_tools(
        json!({"t": {"limits": [{"window": "minute", "max": 1, "scope": "tenant"}]}}),
    ));
    assert_one(
        &errs,
        "/tools/t/limits/0/scope",
        &[r#"unknown value "tenant"; expected one of "grant", "session", "pod", "global""#],
    );
}

#[test]
fn on_unavailable_values_and_scope() {
    let errs = errors_of(&with_tools(json!({"t": {"limits": [
        {"window": "minute", "max": 1, "scope": "global", "on_unavailable": "open"},
        {"window": "minute", "max": 1, "scope": "pod", "on_unavailable": "deny"}
    ]}})));
    assert_error(
        &errs,
        "/tools/t/limits/0/on_unavailable",
        &[r#"unknown value "open"; expected one of "fallback", "deny", "allow""#],
    );
    assert_error(
        &errs,
        "/tools/t/limits/1/on_unavailable",
        &["applies to fleet-wide limits", "remove `on_unavailable`"],
    );
    assert_eq!(errs.len(), 2, "{}", show(&errs));
}

#[test]
fn max_of_zero() {
    let errs = errors_of(&with_tools(
        json!({"t": {"limits": [{"window": "minute", "max": 0}]}}),
    ));
    assert_one(
        &errs,
        "/tools/t/limits/0/max",
        &["`max` must be at least 1", "\"action\": \"deny\""],
    );
    let errs = errors_of(&with_tools(
        json!({"t": {"rate_limit": {"window": "minute", "max": 0}}}),
    ));
    assert_one(
        &errs,
        "/tools/t/rate_limit/max",
        &["`max` must be at least 1"],
    );
}

#[test]
fn invalid_regex() {
    let errs = errors_of(&with_condition(
        json!({"path": "args.p", "op": "regex", "value": "^(file:"}),
    ));
    assert_one(
        &errs,
        "/tools/t/deny_if/0/conditions/0/value",
        &[r#"invalid regex "^(file:""#, "unclosed group"],
    );
}

#[test]
fn null_operand_is_no_operand() {
    let errs = errors_of(&with_condition(
        json!({"path": "args.p", "op": "eq", "value": null}),
    ));
    assert_one(
        &errs,
        "/tools/t/deny_if/0/conditions/0/value",
        &["`eq` needs a `value` that is any JSON value"],
    );
}

#[test]
fn bad_condition_operands() {
    let errs = errors_of(&with_condition(
        json!({"path": "args.p", "op": "in", "value": "a"}),
    ));
    assert_one(
        &errs,
        "/tools/t/deny_if/0/conditions/0/value",
        &["`in` needs a `value` that is an array"],
    );
    let errs = errors_of(&with_condition(json!({"path": "args.p", "op": "lt"})));
    assert_one(
        &errs,
        "/tools/t/deny_if/0/conditions/0",
        &["`lt` needs a `value` that is a number"],
    );
    let errs = errors_of(&with_condition(
        json!({"path": "args.p", "op": "exists", "value": "yes"}),
    ));
    assert_one(
        &errs,
        "/tools/t/deny_if/0/conditions/0/value",
        &["`exists` needs a `value` that is true or false"],
    );
    let errs = errors_of(&with_condition(
        json!({"path": "args.p", "op": "like", "value": "x"}),
    ));
    assert_one(
        &errs,
        "/tools/t/deny_if/0/conditions/0/op",
        &[r#"unknown value "like""#, r#""not_in""#],
    );
    let errs = errors_of(&with_tools(json!({"t": {"require": [{"conditions": []}]}})));
    assert_one(
        &errs,
        "/tools/t/require/0/conditions",
        &["at least one condition"],
    );
}

#[test]
fn globs_that_tie() {
    let errs = errors_of(&with_tools(json!({"a_*": {}, "*_b": {"action": "deny"}})));
    assert_one(
        &errs,
        "/tools/a_*",
        &[
            "`a_*` and `*_b` are equally specific globs and both match \"a_b\"",
            "neither can win",
        ],
    );

    // The same specificity without a common name is fine; so is a more specific glob.
    assert!(load(&with_tools(json!({"a_*": {}, "b_*": {}})).to_string()).is_ok());
    assert!(load(&with_tools(json!({"a_*": {}, "*_bb": {}})).to_string()).is_ok());
    // `?` counts as more specific than `*`.
    assert!(load(&with_tools(json!({"get_?": {}, "get_*": {}})).to_string()).is_ok());

    // Case does not separate globs either.
    let errs = errors_of(&with_tools(json!({"A_*": {}, "*_b": {}})));
    assert_one(&errs, "/tools/A_*", &["both match \"a_b\""]);
}

#[test]
fn glob_syntax() {
    let errs = errors_of(&with_tools(json!({"get_[ab]": {}})));
    assert_one(
        &errs,
        "/tools/get_[ab]",
        &["`[` is not allowed in a tool name or glob"],
    );
    let errs = errors_of(&with_tools(json!({"": {}})));
    assert_one(&errs, "/tools/", &["must not be empty"]);
    let errs = errors_of(&json!({"version": "1", "default": "deny", "hide": ["ok", "{a,b}"]}));
    assert_one(&errs, "/hide/1", &["`{` is not allowed"]);
}

#[test]
fn condition_path_must_start_with_args() {
    for path in ["arguments.x", "x", "args.", "args.a..b", "args"] {
        let errs = errors_of(&with_condition(json!({"path": path, "op": "exists"})));
        assert_one(
            &errs,
            "/tools/t/deny_if/0/conditions/0/path",
            &[
                "a condition path is `args.` then the argument's dotted path",
                &format!("found {path:?}"),
            ],
        );
    }
}

#[test]
fn approval_needs_require_approval() {
    let errs = errors_of(&with_tools(json!({"t": {"approval": {"timeout": "1m"}}})));
    assert_one(
        &errs,
        "/tools/t/approval",
        &[
            "`approval` applies only to a rule whose `action` is \"require_approval\"",
            "this rule's action is \"allow\"",
        ],
    );
    let errs = errors_of(&json!({"version": "1", "default": "deny",
        "classes": {"destructive": {"action": "deny", "approval": {}}}}));
    assert_one(
        &errs,
        "/classes/destructive/approval",
        &["this rule's action is \"deny\""],
    );
}

#[test]
fn show_arguments_is_true_or_false() {
    let errs = errors_of(&with_tools(json!({"t": {"action": "require_approval",
        "approval": {"show_arguments": "yes"}}})));
    assert_one(
        &errs,
        "/tools/t/approval/show_arguments",
        &["expected true or false, found the string \"yes\""],
    );
}

#[test]
fn unknown_class() {
    let errs = errors_of(&json!({"version": "1", "default": "deny", "classes": {"dangerous": {}}}));
    assert_one(
        &errs,
        "/classes/dangerous",
        &[
            r#"unknown risk class "dangerous""#,
            r#""read", "write", "destructive", "financial", "execute""#,
        ],
    );
    let errs = errors_of(&with_tools(json!({"t": {"class": "risky"}})));
    assert_one(&errs, "/tools/t/class", &[r#"unknown risk class "risky""#]);
}

#[test]
fn pinned_class_stands_alone_on_tools() {
    let errs = errors_of(&with_tools(
        json!({"t": {"class": "read", "action": "deny"}}),
    ));
    assert_one(&errs, "/tools/t/class", &["cannot also have `action`"]);
    let errs =
        errors_of(&json!({"version": "1", "default": "deny", "all_tools": {"class": "read"}}));
    assert_one(
        &errs,
        "/all_tools/class",
        &["only a `tools` entry can pin a risk class"],
    );
}

#[test]
fn tool_keys_differing_only_in_case() {
    let errs = errors_of(&with_tools(
        json!({"Delete_X": {}, "delete_x": {"action": "deny"}}),
    ));
    assert_one(
        &errs,
        "/tools/delete_x",
        &[
            "`Delete_X` and `delete_x` differ only in case",
            "merge the two rules",
        ],
    );
}

#[test]
fn counter_declared_twice_differently() {
    let errs = errors_of(&with_tools(json!({
        "a": {"limits": [{"counter": "c", "window": "minute", "max": 5}]},
        "b": {"limits": [{"counter": "c", "window": "hour", "max": 5}]},
        "d": {"limits": [{"counter": "c", "window": "minute", "max": 5, "scope": "grant"}]},
        "e": {"limits": [{"counter": "c", "window": 60, "max": 5, "scope": "session"}]}
    })));
    assert_eq!(errs.len(), 2, "{}", show(&errs));
    assert_error(
        &errs,
        "/tools/b/limits/0",
        &[
            "counter `c` is also declared at /tools/a/limits/0 with window minute, max 5, scope grant",
            "(here: window hour, max 5, scope grant)",
        ],
    );
    assert_error(
        &errs,
        "/tools/e/limits/0",
        &["(here: window 60 s, max 5, scope session)"],
    );

    // Across the servers of a bundle, names do not clash: counters are per server.
    let ok = json!({"servers": {
        "s1": {"version": "1", "default": "deny", "tools": {"a": {"limits": [{"counter": "c", "window": "minute", "max": 5}]}}},
        "s2": {"version": "1", "default": "deny", "tools": {"a": {"limits": [{"counter": "c", "window": "hour", "max": 1}]}}}
    }});
    assert!(load_value(&ok).is_ok());
}

#[test]
fn bad_durations() {
    for bad in [
        "10",
        "m",
        "10 m",
        "10min",
        "1.5s",
        "-1s",
        "10M",
        "",
        "99999999999999999999s",
    ] {
        let errs = errors_of(&with_tools(json!({"t": {
            "action": "require_approval",
            "approval": {"timeout": bad}
        }})));
        assert_one(
            &errs,
            "/tools/t/approval/timeout",
            &[
                "expected a duration such as \"20s\", \"10m\"",
                &format!("found {bad:?}"),
            ],
        );
    }
    let errs = errors_of(&with_tools(
        json!({"t": {"action": "require_approval", "approval": {"hold": 20}}}),
    ));
    assert_one(
        &errs,
        "/tools/t/approval/hold",
        &["expected a string, found the number 20"],
    );
    for good in ["500ms", "0s", "20s", "10m", "2h", "1d"] {
        let doc =
            with_tools(json!({"t": {"action": "require_approval", "approval": {"hold": good}}}));
        assert!(load_value(&doc).is_ok(), "{good}");
    }
}

#[test]
fn bad_token_sha256() {
    for bad in ["abc", "g".repeat(64).as_str(), &format!("{TOKEN}0")] {
        let errs = errors_of(&json!({"servers": {}, "grants": {"g": {"token_sha256": bad}}}));
        assert_one(&errs, "/grants/g/token_sha256", &["expected 64 hex digits"]);
    }
    let errs = errors_of(&json!({"servers": {}, "grants": {"g": {}}}));
    assert_one(&errs, "/grants/g", &["missing field `token_sha256`"]);
    let errs = errors_of(&json!({"servers": {}, "grants": {
        "g": {"token_sha256": TOKEN},
        "h": {"token_sha256": TOKEN}
    }}));
    assert_one(
        &errs,
        "/grants/h/token_sha256",
        &["grant `g` has the same token"],
    );
}

#[test]
fn upper_case_token_is_read_as_lower_case() {
    // Unlike serde, which keeps the text: the one place the two differ
    // (excluded from `reader_agrees_with_serde_on_valid_documents`).
    let value =
        json!({"servers": {}, "grants": {"g": {"token_sha256": TOKEN.to_ascii_uppercase()}}});
    let Ok(PolicyFile::Bundle(bundle)) = read(&value) else {
        panic!("a valid bundle");
    };
    assert_eq!(bundle.grants["g"].token_sha256.as_deref(), Some(TOKEN));
    let compiled = load_value(&value).expect("valid");
    assert_eq!(
        compiled.grant_for_token_sha256(TOKEN).map(|g| &**g),
        Some("g")
    );
}

#[test]
fn grant_policy_for_an_unknown_server() {
    let errs = errors_of(&json!({
        "servers": {"demo": {"version": "1", "default": "deny"}},
        "grants": {"g": {"token_sha256": TOKEN, "policies": {"dmeo": {"version": "1", "default": "allow"}}}}
    }));
    assert_one(
        &errs,
        "/grants/g/policies/dmeo",
        &["no server `dmeo` under `/servers`"],
    );
}

#[test]
fn invalid_json() {
    let errs = errors("{\"version\": \"1\",\n \"default\": }");
    assert_one(&errs, "", &["not valid JSON", "(line 2, column 13)"]);
}

#[test]
fn every_error_is_reported_at_once() {
    let doc = json!({
        "version": "2",
        "default": "maybe",
        "hide": ["x["],
        "classes": {"dangerous": {}, "read": {"actoin": "allow"}},
        "all_tools": {"limits": [{"window": "fortnight", "max": 0, "scope": "tenant"}]},
        "tools": {
            "a_*": {"limits": [{"counter": "c", "window": "minute", "max": 1}]},
            "*_b": {"limits": [{"counter": "c", "window": "hour", "max": 1}]},
            "T": {},
            "t": {
                "approval": {"timeout": "soon"},
                "deny_if": [{"conditions": [{"path": "x", "op": "regex", "value": "("}]}]
            }
        }
    });
    let errs = errors_of(&doc);
    let expected = [
        ("/version", r#"unknown value "2""#),
        ("/default", r#"unknown value "maybe""#),
        ("/hide/0", "`[` is not allowed"),
        ("/classes/dangerous", "unknown risk class"),
        ("/classes/read/actoin", "did you mean `action`?"),
        ("/all_tools/limits/0/window", "unknown window"),
        ("/all_tools/limits/0/max", "`max` must be at least 1"),
        ("/all_tools/limits/0/scope", r#"unknown value "tenant""#),
        ("/tools/a_*", "equally specific globs"),
        (
            "/tools/a_*/limits/0",
            "counter `c` is also declared at /tools/*_b/limits/0",
        ),
        ("/tools/t", "differ only in case"),
        ("/tools/t/approval", "applies only to a rule whose `action`"),
        ("/tools/t/approval/timeout", "expected a duration"),
        (
            "/tools/t/deny_if/0/conditions/0/path",
            "a condition path is `args.`",
        ),
        ("/tools/t/deny_if/0/conditions/0/value", "invalid regex"),
    ];
    for (pointer, fragment) in expected {
        assert_error(&errs, pointer, &[fragment]);
    }
    assert_eq!(errs.len(), expected.len(), "{}", show(&errs));
    // In document order of pointers.
    let pointers: Vec<&str> = errs.iter().map(|e| e.pointer.as_str()).collect();
    let mut sorted = pointers.clone();
    sorted.sort_unstable();
    assert_eq!(pointers, sorted);
    // `read` alone reports the same, cross-document checks included.
    assert_eq!(read(&doc).expect_err("invalid").0, errs);
}

// ---- the reader and the serde model agree -------------------------------

fn valid_documents() -> Vec<(&'static str, Value)> {
    let parse = |text: &str| serde_json::from_str::<Value>(text).expect("JSON");
    vec![
        ("seed", parse(SEED)),
        ("full", parse(FULL)),
        ("minimal", json!({"version": "1", "default": "allow"})),
        (
            "every rule field",
            json!({
                "version": "1",
                "default": "deny",
                "mode": "shadow",
                "hide": ["debug_*", "secret", "get_?"],
                "all_tools": {
                    "limits": [{"window": "second", "max": 100, "scope": "pod"}],
                    "require": [{"conditions": [{"path": "args.tenant", "op": "exists"}]}]
                },
                "classes": {
                    "read": {},
                    "write": {"action": "allow", "rate_limit": {"max": 5, "window": "hour"}},
                    "destructive": {"action": "require_approval", "reason": "careful",
                                    "approval": {"timeout": "1h", "hold": "500ms"}},
                    "financial": {"action": "deny"},
                    "execute": {"action": "require_approval", "approval": {}}
                },
                "tools": {
                    "pinned": {"class": "execute"},
                    "Upper_Case": {"reason": "mixed case keys are kept as written"},
                    "t": {
                        "action": "allow",
                        "reason": "why",
                        "limits": [
                            {"counter": "n", "window": "day", "max": 1000, "scope": "global", "on_unavailable": "deny"},
                            {"window": 90, "max": 3, "scope": "session", "on_unavailable": "allow"},
                            {"counter": "m", "window": "minute", "max": 2, "scope": "grant", "on_unavailable": "fallback"}
                        ],
                        "rate_limit": {"max": 1, "window": 1},
                        "deny_if": [
                            {"conditions": [
                                {"path": "args.a", "op": "eq", "value": {"k": [1, 2.5, "x", null, true]}},
                                {"path": "args.a.b.0", "op": "neq", "value": "s"},
                                {"path": "args.c", "op": "in", "value": [1, "two"]},
                                {"path": "args.c", "op": "not_in", "value": []},
                                {"path": "args.n", "op": "lt", "value": -1.5},
                                {"path": "args.n", "op": "lte", "value": 0},
                                {"path": "args.n", "op": "gt", "value": 1e3},
                                {"path": "args.n", "op": "gte", "value": 18446744073709551615u64}
                            ], "on_deny": "because"},
                            {"conditions": [
                                {"path": "args.s", "op": "regex", "value": "^a+$"},
                                {"path": "args.s", "op": "contains", "value": "b"},
                                {"path": "args.s", "op": "exists"},
                                {"path": "args.s", "op": "exists", "value": false}
                            ]}
                        ],
                        "require": [{"conditions": [{"path": "args.x", "op": "eq", "value": 0}]}]
                    }
                }
            }),
        ),
        ("empty bundle", json!({"servers": {}})),
        // serde reads a null operand as none: `exists` then means `true`.
        (
            "null operand",
            with_condition(json!({"path": "args.a", "op": "exists", "value": null})),
        ),
        (
            "bundle",
            json!({
                "servers": {
                    "demo": parse(FULL),
                    "other": {"version": "1", "default": "allow", "mode": "enforce", "hide": []}
                },
                "grants": {
                    "alice": {
                        "token_sha256": TOKEN,
                        "labels": {"team": "qa", "env": "ci"},
                        "policies": {"demo": parse(SEED)}
                    },
                    "bob": {"token_sha256": "f".repeat(64), "labels": {}, "policies": {}}
                }
            }),
        ),
    ]
}

#[test]
fn reader_agrees_with_serde_on_valid_documents() {
    for (what, value) in valid_documents() {
        let by_reader = read(&value).unwrap_or_else(|e| panic!("{what}: {e}"));
        let by_serde: PolicyFile =
            serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{what}: serde: {e}"));
        assert_eq!(by_reader, by_serde, "{what}");
        // And they compile.
        assert!(load_value(&value).is_ok(), "{what}");
        // The model writes back what it read, up to defaults.
        let again = serde_json::to_value(&by_serde).expect("serializable");
        assert_eq!(read(&again).as_ref(), Ok(&by_reader), "{what}: round trip");
    }
}

#[test]
fn unknown_fields_are_rejected_by_both() {
    let cases = [
        json!({"version": "1", "default": "deny", "extra": 1}),
        with_tools(json!({"t": {"limts": []}})),
        with_tools(json!({"t": {"limits": [{"window": "minute", "max": 1, "per": "grant"}]}})),
        with_tools(json!({"t": {"rate_limit": {"window": "minute", "max": 1, "scope": "pod"}}})),
        with_tools(
            json!({"t": {"deny_if": [{"conditions": [{"path": "args.a", "op": "exists"}], "reason": "x"}]}}),
        ),
        with_condition(json!({"path": "args.a", "op": "exists", "values": true})),
        with_tools(json!({"t": {"action": "require_approval", "approval": {"expires": "1m"}}})),
        json!({"version": "1", "default": "deny", "all_tools": {"actions": "deny"}}),
        json!({"version": "1", "default": "deny", "classes": {"read": {"allow": true}}}),
        json!({"servers": {}, "grant": {}}),
        json!({"servers": {}, "grants": {"g": {"token_sha256": TOKEN, "roles": []}}}),
        json!({"servers": {"s": {"version": "1", "default": "deny", "tols": {}}}}),
        json!({"servers": {}, "grants": {"g": {"token_sha256": TOKEN,
            "policies": {"s": {"version": "1", "default": "deny", "tools": {"t": {"max": 1}}}}}}}),
    ];
    for value in cases {
        let by_reader = read(&value);
        let errs = by_reader
            .expect_err("the reader must reject an unknown field")
            .0;
        assert!(
            errs.iter().any(|e| e.message.starts_with("unknown field")),
            "{value}: {}",
            show(&errs)
        );
        let by_serde = serde_json::from_value::<PolicyFile>(value.clone());
        assert!(by_serde.is_err(), "serde accepted {value}: {by_serde:?}");
    }
}
