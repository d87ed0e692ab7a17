//! What a push stores: the pushed file validated with the same checks as
//! `tollgate policy check`, and — for `--server NAME` — placed into a copy of
//! the latest bundle under `servers.NAME`. Pure: bytes in, bytes out.

use serde_json::{Map, Value};
use tollgate_policy::{PolicyError, PolicyFile};

/// The content to store for a push, in canonical form (pretty JSON with
/// sorted keys, one trailing newline), so the same policy always hashes the
/// same. On failure, every error found: pointers into the pushed file, or
/// into the resulting bundle (`/servers/NAME/…`) for errors only the whole
/// bundle shows.
pub fn prepare(
    content: &[u8],
    server: Option<&str>,
    latest: Option<(u64, &[u8])>,
) -> Result<Vec<u8>, Vec<PolicyError>> {
    let text = std::str::from_utf8(content)
        .map_err(|e| vec![error("", format!("the file is not UTF-8: {e}"))])?;
    tollgate_policy::load(text).map_err(|e| e.0)?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| vec![error("", format!("not valid JSON: {e}"))])?;
    let Some(server) = server.filter(|s| !s.is_empty()) else {
        return Ok(canonical(&value));
    };
    if let Ok(PolicyFile::Bundle(_)) = tollgate_policy::read(&value) {
        return Err(vec![error(
            "",
            format!(
                "with --server {server} the file must be one server's policy document, \
                 not a bundle; push a bundle without --server"
            ),
        )]);
    }
    let mut bundle = match latest {
        None => Value::Object(Map::new()),
        Some((version, bytes)) => {
            let base: Value = serde_json::from_slice(bytes).map_err(|e| {
                vec![error(
                    "",
                    format!("the latest version ({version}) is not JSON: {e}"),
                )]
            })?;
            if !matches!(tollgate_policy::read(&base), Ok(PolicyFile::Bundle(_))) {
                return Err(vec![error(
                    "",
                    format!(
                        "the latest version ({version}) is a single policy document, not a \
                         bundle, so there is no servers.{server} to replace; push a bundle \
                         (with \"servers\") first, or push this file without --server"
                    ),
                )]);
            }
            base
        }
    };
    let Some(root) = bundle.as_object_mut() else {
        // `read` accepted it as a bundle, which is an object.
        return Err(vec![error(
            "",
            "the latest version is not a JSON object".into(),
        )]);
    };
    let servers = root
        .entry("servers")
        .or_insert_with(|| Value::Object(Map::new()));
    match servers.as_object_mut() {
        Some(servers) => {
            servers.insert(server.to_owned(), value);
        }
        None => return Err(vec![error("/servers", "is not an object".into())]),
    }
    tollgate_policy::load_value(&bundle).map_err(|e| e.0)?;
    Ok(canonical(&bundle))
}

fn canonical(value: &Value) -> Vec<u8> {
    // Serializing a Value cannot fail: its keys are strings.
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

fn error(pointer: &str, message: String) -> PolicyError {
    PolicyError {
        pointer: pointer.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"version": "1", "default": "deny", "tools": {"echo": {}}}"#;

    #[test]
    fn a_valid_file_is_stored_canonically() {
        let a = prepare(DOC.as_bytes(), None, None).expect("valid");
        let spaced = DOC.replace(", ", ",\n   ");
        assert_eq!(prepare(spaced.as_bytes(), None, None).expect("valid"), a);
    }

    #[test]
    fn an_invalid_file_gives_every_error_with_its_pointer() {
        let errs =
            prepare(br#"{"version": "1", "default": "maybe"}"#, None, None).expect_err("invalid");
        assert!(errs.iter().any(|e| e.pointer == "/default"), "{errs:?}");
    }

    #[test]
    fn a_server_policy_goes_into_the_latest_bundle() {
        let base = br#"{"servers": {"a": {"version": "1", "default": "allow"}}}"#;
        let out = prepare(DOC.as_bytes(), Some("b"), Some((4, base))).expect("placed");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["servers"]["a"]["default"], "allow");
        assert_eq!(v["servers"]["b"]["tools"]["echo"], serde_json::json!({}));
        // No latest: a new bundle with just this server.
        let out = prepare(DOC.as_bytes(), Some("b"), None).expect("placed");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["servers"].as_object().map(|m| m.len()), Some(1));
    }

    #[test]
    fn a_server_policy_cannot_go_into_a_single_document() {
        let errs =
            prepare(DOC.as_bytes(), Some("b"), Some((2, DOC.as_bytes()))).expect_err("refused");
        assert!(
            errs[0].message.contains("latest version (2) is a single"),
            "{errs:?}"
        );
    }
}
