//! The `tollgate policy` commands, run as the real binary on the example files.

use std::path::PathBuf;
use std::process::{Command, Output};

fn tollgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .output()
        .expect("the tollgate binary runs")
}

fn example(name: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    root.to_string_lossy().into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn check_accepts_the_examples() {
    let out = tollgate(&[
        "policy",
        "check",
        &example("seed-policy.json"),
        &example("full-policy.json"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("seed-policy.json (1 tool, 1 limit)"),
        "{text}"
    );
    assert!(
        text.contains("full-policy.json (4 tools, 3 limits)"),
        "{text}"
    );
}

#[test]
fn check_names_the_pointer_of_a_typo_and_exits_1() {
    let seed = std::fs::read_to_string(example("seed-policy.json")).unwrap();
    let dir = std::env::temp_dir().join(format!("tollgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let typo = dir.join("seed-typo.json");
    std::fs::write(&typo, seed.replace("\"limits\"", "\"limts\"")).unwrap();
    let out = tollgate(&["policy", "check", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    let line = text.lines().next().unwrap_or_default();
    assert!(
        line.starts_with(&format!(
            "{}: /tools/create_test_session_context/limts: unknown field `limts`",
            typo.display()
        )),
        "{text}"
    );
    assert!(line.contains("did you mean `limits`?"), "{line}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn check_reports_an_unreadable_file() {
    let out = tollgate(&["policy", "check", "/nonexistent/policy.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("/nonexistent/policy.json: cannot read the file"));
}

#[test]
fn eval_repeat_shows_the_rate_limit() {
    let out = tollgate(&[
        "policy",
        "eval",
        &example("seed-policy.json"),
        "--tool",
        "create_test_session_context",
        "--repeat",
        "31",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 31);
    assert!(
        lines[..30]
            .iter()
            .all(|l| *l == "allow /tools/create_test_session_context"),
        "{text}"
    );
    assert!(
        lines[30].starts_with("rate_limited /tools/create_test_session_context/limits/0: "),
        "{text}"
    );
    assert!(lines[30].ends_with("; retry_after=60s"), "{text}");
}

#[test]
fn eval_default_deny() {
    let out = tollgate(&[
        "policy",
        "eval",
        &example("seed-policy.json"),
        "--tool",
        "list_mock_servers",
    ]);
    let text = stdout(&out);
    assert!(text.starts_with("deny (default deny): "), "{text}");
}

#[test]
fn eval_full_policy_rules() {
    let full = example("full-policy.json");
    let delete = stdout(&tollgate(&[
        "policy",
        "eval",
        &full,
        "--tool",
        "delete_test_session",
    ]));
    assert_eq!(
        delete.trim(),
        "deny /tools/delete_*: Deleting test data is not allowed for agents."
    );
    let destructive = stdout(&tollgate(&[
        "policy",
        "eval",
        &full,
        "--tool",
        "purge_cache",
        "--annotations",
        r#"{"destructiveHint": true}"#,
    ]));
    assert_eq!(
        destructive.trim(),
        "require_approval /classes/destructive; approval timeout=10m hold=20s [class destructive]"
    );
    let hidden = stdout(&tollgate(&[
        "policy",
        "eval",
        &full,
        "--tool",
        "debug_dump",
    ]));
    assert_eq!(hidden.trim(), "hidden /hide/0");
}

#[test]
fn eval_json_carries_the_decision() {
    let out = tollgate(&[
        "policy",
        "eval",
        &example("full-policy.json"),
        "--tool",
        "generate_mock_api",
        "--args",
        r#"{"spec_url_or_path": "file:///etc/passwd"}"#,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["rule"], "/tools/generate_mock_api/deny_if/0");
    assert_eq!(
        v["reason"],
        "Mock APIs may only be generated from remote specifications."
    );
}

#[test]
fn eval_rejects_bad_arguments_json() {
    let out = tollgate(&[
        "policy",
        "eval",
        &example("seed-policy.json"),
        "--tool",
        "x",
        "--args",
        "{nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--args is not valid JSON"));
}

#[test]
fn schema_prints_the_committed_schema() {
    let out = tollgate(&["policy", "schema"]);
    let committed = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy/policy.schema.json"),
    )
    .unwrap();
    assert_eq!(stdout(&out), committed);
}
