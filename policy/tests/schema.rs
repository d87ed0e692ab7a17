//! `policy/policy.schema.json` is generated from the document types; this test
//! fails when the committed file is stale. Regenerate with
//! `TOLLGATE_UPDATE_SCHEMA=1 cargo test -p tollgate-policy --test schema`.

use std::path::PathBuf;

#[test]
fn committed_schema_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policy.schema.json");
    let generated = tollgate_policy::json_schema();
    if std::env::var_os("TOLLGATE_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "policy/policy.schema.json is stale; regenerate it with \
         TOLLGATE_UPDATE_SCHEMA=1 cargo test -p tollgate-policy --test schema"
    );
}

#[test]
fn schema_describes_the_document() {
    let schema: serde_json::Value = serde_json::from_str(&tollgate_policy::json_schema()).unwrap();
    let text = schema.to_string();
    for word in [
        "require_approval",
        "deny_if",
        "rate_limit",
        "token_sha256",
        "destructive",
        "shadow",
    ] {
        assert!(text.contains(word), "the schema should mention {word}");
    }
}
