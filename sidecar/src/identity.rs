//! Who is calling: the grant a bearer token identifies, or the sidecar's own
//! node id when the bundle has no grants (egress mode counts per pod).
//!
//! The bundle holds token hashes only, in the operator's form (SHA-256) or
//! the keyed form a control plane distributes (HMAC-SHA256 of that digest);
//! [`Bundle::grant_for_token`] hashes the presented token the same way.

use std::sync::Arc;

use http::HeaderMap;
use http::header::HeaderName;
use tollgate_policy::Bundle;

/// Why a call could not be identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No token where grants are configured.
    #[error(
        "this MCP endpoint requires a grant token in the `{0}` header (Bearer <token>); ask the operator for one"
    )]
    Missing(String),
    /// A token that matches no grant.
    #[error(
        "the token in the `{0}` header matches no grant in the policy bundle; check the token or ask the operator to add its grant"
    )]
    Unknown(String),
}

/// The caller's grant id for this request.
pub fn identify(
    headers: &HeaderMap,
    header: &HeaderName,
    bundle: &Bundle,
    node_id: &Arc<str>,
) -> Result<Arc<str>, IdentityError> {
    if !bundle.has_grants() {
        return Ok(Arc::clone(node_id));
    }
    let Some(token) = headers
        .get(header)
        .and_then(|v| v.to_str().ok())
        .map(bearer)
        .filter(|t| !t.is_empty())
    else {
        return Err(IdentityError::Missing(header.to_string()));
    };
    bundle
        .grant_for_token(token.as_bytes())
        .cloned()
        .ok_or_else(|| IdentityError::Unknown(header.to_string()))
}

/// The token of `Bearer <token>` (scheme case-insensitive), or the whole value.
fn bearer(value: &str) -> &str {
    let v = value.trim();
    match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE: &str = r#"{"servers": {"s": {"version": "1", "default": "allow"}},
        "grants": {"ci": {"token_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}}"#;

    #[test]
    fn tokens_identify_grants() {
        let bundle = tollgate_policy::load(BUNDLE).unwrap();
        let node: Arc<str> = "pod-1".into();
        let h = http::header::AUTHORIZATION;
        let mut headers = HeaderMap::new();
        assert_eq!(
            identify(&headers, &h, &bundle, &node),
            Err(IdentityError::Missing("authorization".into()))
        );
        headers.insert(&h, "Bearer test".parse().unwrap());
        assert_eq!(
            identify(&headers, &h, &bundle, &node).unwrap().as_ref(),
            "ci"
        );
        headers.insert(&h, "bearer  test ".parse().unwrap());
        assert_eq!(
            identify(&headers, &h, &bundle, &node).unwrap().as_ref(),
            "ci"
        );
        headers.insert(&h, "Bearer nope".parse().unwrap());
        assert_eq!(
            identify(&headers, &h, &bundle, &node),
            Err(IdentityError::Unknown("authorization".into()))
        );
    }

    #[test]
    fn keyed_bundles_identify_with_their_key() {
        let key = tollgate_policy::GrantKey::new([5; 32]);
        let mut value: serde_json::Value = serde_json::from_str(BUNDLE).unwrap();
        tollgate_policy::key_grant_tokens(&mut value, &key);
        let node: Arc<str> = "pod-1".into();
        let h = http::header::AUTHORIZATION;
        let mut headers = HeaderMap::new();
        headers.insert(&h, "Bearer test".parse().unwrap());
        let bundle = tollgate_policy::load_distributed(&value, Some(&key)).unwrap();
        assert_eq!(
            identify(&headers, &h, &bundle, &node).unwrap().as_ref(),
            "ci"
        );
        let other = tollgate_policy::GrantKey::new([6; 32]);
        let bundle = tollgate_policy::load_distributed(&value, Some(&other)).unwrap();
        assert_eq!(
            identify(&headers, &h, &bundle, &node),
            Err(IdentityError::Unknown("authorization".into()))
        );
    }

    #[test]
    fn without_grants_the_node_is_the_grant() {
        let bundle = tollgate_policy::load(r#"{"version": "1", "default": "allow"}"#).unwrap();
        let node: Arc<str> = "pod-1".into();
        let id = identify(
            &HeaderMap::new(),
            &http::header::AUTHORIZATION,
            &bundle,
            &node,
        )
        .unwrap();
        assert_eq!(&*id, "pod-1");
    }
}
