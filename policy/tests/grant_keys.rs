//! Grants in both forms: the operator's `token_sha256` and the keyed
//! `token_hmac_sha256` a control plane distributes. Both identify the same
//! token; the keyed form needs the right key; a grant names its token once.

use serde_json::{Value, json};
use tollgate_policy::{GrantKey, key_grant_tokens, load_distributed, load_value, needs_grant_key};

/// SHA-256 of "test".
const TEST_SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
/// SHA-256 of "other".
const OTHER_SHA256: &str = "d9298a10d1b0735837dc4bd85dac641b0f3cef27a47e5d53a54f2f3f5b2fcffa";

fn operator_bundle() -> Value {
    json!({
        "servers": {"s": {"version": "1", "default": "allow"}},
        "grants": {
            "ci": {"token_sha256": TEST_SHA256, "labels": {"team": "qa"}},
            "ops": {"token_sha256": OTHER_SHA256}
        }
    })
}

fn distributed(key: &GrantKey) -> Value {
    let mut value = operator_bundle();
    assert_eq!(key_grant_tokens(&mut value, key), 2);
    value
}

fn errors(value: &Value, key: Option<&GrantKey>) -> Vec<(String, String)> {
    match load_distributed(value, key) {
        Ok(_) => panic!("loaded, but must not:\n{value:#}"),
        Err(e) => e
            .iter()
            .map(|e| (e.pointer.clone(), e.message.clone()))
            .collect(),
    }
}

#[test]
fn both_forms_identify_the_same_tokens() {
    let key = GrantKey::new([42; 32]);
    let plain = load_value(&operator_bundle()).expect("the operator's form loads");
    let keyed_value = distributed(&key);
    assert!(needs_grant_key(&keyed_value));
    assert!(!needs_grant_key(&operator_bundle()));
    let keyed = load_distributed(&keyed_value, Some(&key)).expect("the keyed form loads");
    for bundle in [&plain, &keyed] {
        assert_eq!(bundle.grant_for_token(b"test").map(|g| &**g), Some("ci"));
        assert_eq!(bundle.grant_for_token(b"other").map(|g| &**g), Some("ops"));
        assert_eq!(bundle.grant_for_token(b"nope"), None);
        assert_eq!(
            bundle.grant_for_token_sha256(TEST_SHA256).map(|g| &**g),
            Some("ci")
        );
        assert_eq!(
            bundle.grant_labels("ci").and_then(|l| l.get("team")),
            Some(&"qa".to_owned())
        );
    }
    // The operator's form loads the same with a key given (a local file, or
    // an older control plane's bundle).
    let plain_with_key = load_distributed(&operator_bundle(), Some(&key)).expect("loads");
    assert_eq!(
        plain_with_key.grant_for_token(b"test").map(|g| &**g),
        Some("ci")
    );
}

#[test]
fn the_keyed_form_carries_no_token_sha256() {
    let key = GrantKey::new([42; 32]);
    let text = distributed(&key).to_string();
    assert!(!text.contains("token_sha256\""), "{text}");
    assert!(!text.contains(TEST_SHA256), "{text}");
    assert!(!text.contains(OTHER_SHA256), "{text}");
}

#[test]
fn a_wrong_key_identifies_nobody() {
    let keyed_value = distributed(&GrantKey::new([42; 32]));
    let wrong = load_distributed(&keyed_value, Some(&GrantKey::new([43; 32])))
        .expect("a wrong key cannot be told from a right one while loading");
    assert!(wrong.has_grants());
    assert_eq!(wrong.grant_for_token(b"test"), None);
    assert_eq!(wrong.grant_for_token(b"other"), None);
    assert_eq!(wrong.grant_for_token_sha256(TEST_SHA256), None);
}

#[test]
fn a_keyed_bundle_without_its_key_is_refused_at_each_keyed_grant() {
    let keyed_value = distributed(&GrantKey::new([42; 32]));
    let errs = errors(&keyed_value, None);
    let pointers: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        pointers,
        [
            "/grants/ci/token_hmac_sha256",
            "/grants/ops/token_hmac_sha256"
        ]
    );
    for (_, message) in &errs {
        assert!(message.contains("grant key"), "{message}");
        assert!(message.contains("`token_sha256`"), "{message}");
    }
    // And so through `load`, as `tollgate policy check` and `--policy` read files.
    assert!(tollgate_policy::load(&keyed_value.to_string()).is_err());
}

#[test]
fn a_grant_names_its_token_exactly_once() {
    let key = GrantKey::new([1; 32]);
    let both = json!({"servers": {}, "grants": {"g": {
        "token_sha256": TEST_SHA256, "token_hmac_sha256": OTHER_SHA256}}});
    let errs = errors(&both, Some(&key));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, "/grants/g");
    assert!(errs[0].1.contains("not both"), "{}", errs[0].1);

    let neither = json!({"servers": {}, "grants": {"g": {"labels": {}}}});
    let errs = errors(&neither, Some(&key));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, "/grants/g");
    assert!(
        errs[0].1.contains("missing field `token_sha256`"),
        "{}",
        errs[0].1
    );

    let bad = json!({"servers": {}, "grants": {"g": {"token_hmac_sha256": "abc"}}});
    let errs = errors(&bad, Some(&key));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, "/grants/g/token_hmac_sha256");
    assert!(
        errs[0].1.contains("expected 64 hex digits"),
        "{}",
        errs[0].1
    );
}

#[test]
fn a_bundle_names_every_token_the_same_way() {
    let key = GrantKey::new([1; 32]);
    let mixed = json!({"servers": {}, "grants": {
        "a": {"token_hmac_sha256": TEST_SHA256},
        "b": {"token_sha256": OTHER_SHA256}
    }});
    let errs = errors(&mixed, Some(&key));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, "/grants/b/token_sha256");
    assert!(
        errs[0]
            .1
            .contains("grant `a` names its token by `token_hmac_sha256`"),
        "{}",
        errs[0].1
    );
}

#[test]
fn keyed_tokens_are_unique_too() {
    let key = GrantKey::new([1; 32]);
    let mut twice = json!({"servers": {}, "grants": {
        "a": {"token_sha256": TEST_SHA256},
        "b": {"token_sha256": TEST_SHA256.to_ascii_uppercase()}
    }});
    key_grant_tokens(&mut twice, &key);
    let errs = errors(&twice, Some(&key));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, "/grants/b/token_hmac_sha256");
    assert!(
        errs[0].1.contains("grant `a` has the same token"),
        "{}",
        errs[0].1
    );
}
