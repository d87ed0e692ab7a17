//! How grants name their bearer tokens: the operator's form and the keyed
//! form a control plane distributes.
//!
//! A policy file names a caller by `token_sha256`, the hex SHA-256 of its
//! bearer token. A bundle of those is a dictionary of unsalted hashes: anyone
//! holding a copy can test guessed tokens against it. So a control plane
//! sends sidecars each grant as `token_hmac_sha256` instead:
//! `hex(HMAC-SHA256(key, SHA-256(token)))`, the HMAC taken over the 32 raw
//! bytes of the digest (the control plane never sees the token itself), keyed
//! with its deployment's [`GrantKey`]. The key travels beside the bundle,
//! never in it.
//!
//! Compiling a bundle builds its grant table from either form (one form a
//! bundle, keyed grants only with their key); a sidecar then identifies a
//! caller with one SHA-256 of the token, plus one HMAC when the bundle is
//! keyed, and neither allocates.

use std::fmt;

use std::sync::Arc;

use hashbrown::HashMap;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::document::BundleDocument;
use crate::error::{Errors, child};

/// A deployment's grant key: the HMAC-SHA256 key of `token_hmac_sha256`.
///
/// Holds the HMAC state already keyed, so each use costs only the HMAC of
/// one 32-byte message. Its `Debug` does not show the key.
#[derive(Clone)]
pub struct GrantKey {
    bytes: [u8; GrantKey::LEN],
    mac: Hmac<Sha256>,
}

impl GrantKey {
    /// The key's length in bytes.
    pub const LEN: usize = 32;

    /// The key with these bytes.
    pub fn new(bytes: [u8; Self::LEN]) -> Self {
        // HMAC takes a key of any length, so keying cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&bytes)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        Self { bytes, mac }
    }

    /// The key in `bytes`, or `None` unless they are exactly [`Self::LEN`] long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; Self::LEN]>::try_from(bytes).ok().map(Self::new)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.bytes
    }

    /// HMAC-SHA256 of a token's raw SHA-256 digest under this key.
    pub fn token_hmac(&self, token_sha256: &[u8; 32]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(token_sha256);
        mac.finalize().into_bytes().into()
    }
}

impl PartialEq for GrantKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for GrantKey {}

impl fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GrantKey(..)")
    }
}

/// How a compiled bundle's grant table is keyed.
#[derive(Debug, Clone)]
pub(crate) enum TokenHashing {
    /// By SHA-256 of the token (`token_sha256`).
    Sha256,
    /// By HMAC-SHA256 of that digest under the key (`token_hmac_sha256`).
    HmacSha256(GrantKey),
}

impl TokenHashing {
    /// The grant table's key for a bearer token.
    pub(crate) fn of_token(&self, token: &[u8]) -> [u8; 32] {
        self.of_sha256(&Sha256::digest(token).into())
    }

    /// The grant table's key for a token's SHA-256 digest.
    pub(crate) fn of_sha256(&self, digest: &[u8; 32]) -> [u8; 32] {
        match self {
            TokenHashing::Sha256 => *digest,
            TokenHashing::HmacSha256(key) => key.token_hmac(digest),
        }
    }
}

/// The grant table of a bundle: grant ids by token hash, and how the hashes
/// are made. Every grant names its token the same way as the first grant
/// that names one; keyed grants need `grant_key`.
pub(crate) fn grant_tokens(
    b: &BundleDocument,
    grant_key: Option<&GrantKey>,
    errs: &mut Errors,
) -> (TokenHashing, HashMap<[u8; 32], Arc<str>>) {
    const PLAIN: &str = "token_sha256";
    const KEYED: &str = "token_hmac_sha256";
    let form = b
        .grants
        .iter()
        .find_map(|(id, g)| match (&g.token_sha256, &g.token_hmac_sha256) {
            (Some(_), None) => Some((id, PLAIN)),
            (None, Some(_)) => Some((id, KEYED)),
            _ => None,
        });
    let hashing = match (form, grant_key) {
        (Some((_, KEYED)), Some(key)) => TokenHashing::HmacSha256(key.clone()),
        _ => TokenHashing::Sha256,
    };
    let mut by_token = HashMap::new();
    for (id, grant) in &b.grants {
        let at = child("/grants", id);
        let (field, hex) = match (&grant.token_sha256, &grant.token_hmac_sha256) {
            (Some(hex), None) => (PLAIN, hex),
            (None, Some(hex)) => (KEYED, hex),
            // Neither or both: reported while reading.
            _ => continue,
        };
        let here = child(&at, field);
        if let Some((first, form)) = form.filter(|(_, form)| *form != field) {
            errs.push(
                &here,
                format!(
                    "grant `{first}` names its token by `{form}`, and every grant of a bundle \
                     must name it the same way; write `{PLAIN}` for every grant (a control \
                     plane keys them all when it distributes the bundle)"
                ),
            );
            continue;
        }
        if field == KEYED && grant_key.is_none() {
            errs.push(
                &here,
                "a keyed token hash is only usable with the grant key of the control plane \
                 that distributed the bundle, and none came with it; in a policy file, name \
                 the token by `token_sha256` (`printf %s TOKEN | sha256sum`)",
            );
            continue;
        }
        let Some(digest) = decode_hex32(hex) else {
            continue; // reported while reading
        };
        if let Some(other) = by_token.insert(digest, id.as_str().into()) {
            errs.push(
                &here,
                format!("grant `{other}` has the same token; each token must identify one grant"),
            );
        }
    }
    (hashing, by_token)
}

/// The 32 bytes of 64 hex digits (either case), or `None`.
pub(crate) fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        *byte = u8::try_from(digit(pair[0])? << 4 | digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// Lower-case hex of 32 bytes.
pub(crate) fn encode_hex32(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Rewrites a policy file (as JSON) into the form a control plane
/// distributes: every `/grants/<id>/token_sha256` becomes
/// `token_hmac_sha256` under `key`. Everything else is left as it is.
///
/// Returns how many grants it changed (0: `file` is as it was). A
/// `token_sha256` that is not 64 hex digits (which no validated file has) is
/// removed rather than passed on: it may be a token pasted by mistake. The
/// grant then has no token, and whoever loads the result refuses it, naming
/// the grant.
pub fn key_grant_tokens(file: &mut Value, key: &GrantKey) -> usize {
    let Some(grants) = file.get_mut("grants").and_then(Value::as_object_mut) else {
        return 0;
    };
    let mut changed = 0;
    for grant in grants.values_mut().filter_map(Value::as_object_mut) {
        let Some(plain) = grant.remove("token_sha256") else {
            continue;
        };
        changed += 1;
        if let Some(digest) = plain.as_str().and_then(decode_hex32) {
            let hmac = encode_hex32(&key.token_hmac(&digest));
            grant.insert("token_hmac_sha256".to_owned(), Value::String(hmac));
        }
    }
    changed
}

/// Whether a policy file (as JSON) names any grant's token by
/// `token_hmac_sha256`, so that loading it needs the grant key.
pub fn needs_grant_key(file: &Value) -> bool {
    file.get("grants")
        .and_then(Value::as_object)
        .is_some_and(|grants| {
            grants
                .values()
                .any(|g| g.get("token_hmac_sha256").is_some())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_what_is_not_64_hex_digits() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 8) as u8);
        let hex = encode_hex32(&bytes);
        assert_eq!(&hex[..8], "00081018");
        assert_eq!(decode_hex32(&hex), Some(bytes));
        assert_eq!(decode_hex32(&hex.to_ascii_uppercase()), Some(bytes));
        assert_eq!(decode_hex32(&hex[..62]), None);
        assert_eq!(decode_hex32(&format!("{}g", &hex[..63])), None);
        assert_eq!(decode_hex32(&format!("{}é", &hex[..62])), None);
    }

    #[test]
    fn the_hmac_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2 checks the HMAC construction; here the
        // message is a 32-byte digest, so check against a second,
        // independent computation of the definition instead.
        let key = GrantKey::new([7; 32]);
        let digest: [u8; 32] = Sha256::digest(b"token").into();
        let mut inner = Sha256::new();
        inner.update([7 ^ 0x36; 32]);
        inner.update([0x36; 32]);
        inner.update(digest);
        let mut outer = Sha256::new();
        outer.update([7 ^ 0x5c; 32]);
        outer.update([0x5c; 32]);
        outer.update(inner.finalize());
        let expected: [u8; 32] = outer.finalize().into();
        assert_eq!(key.token_hmac(&digest), expected);
        assert_ne!(GrantKey::new([8; 32]).token_hmac(&digest), expected);
    }

    #[test]
    fn keys_are_32_bytes_and_not_shown() {
        assert!(GrantKey::from_slice(&[1; 31]).is_none());
        assert!(GrantKey::from_slice(&[1; 33]).is_none());
        let key = GrantKey::from_slice(&[1; 32]).expect("32 bytes");
        assert_eq!(key.as_bytes(), &[1; 32]);
        assert_eq!(format!("{key:?}"), "GrantKey(..)");
    }

    #[test]
    fn keying_replaces_only_grant_tokens() {
        let token = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let mut file = serde_json::json!({
            "servers": {"s": {"version": "1", "default": "allow",
                "tools": {"t": {"reason": token}}}},
            "grants": {
                "ci": {"token_sha256": token, "labels": {"team": "qa"}},
                "bad": {"token_sha256": "my-raw-token"}
            }
        });
        let key = GrantKey::new([3; 32]);
        assert_eq!(key_grant_tokens(&mut file, &key), 2);
        assert!(needs_grant_key(&file));
        let digest = decode_hex32(token).expect("hex");
        assert_eq!(
            file["grants"]["ci"],
            serde_json::json!({
                "token_hmac_sha256": encode_hex32(&key.token_hmac(&digest)),
                "labels": {"team": "qa"}
            })
        );
        assert_eq!(file["grants"]["bad"], serde_json::json!({}));
        assert_eq!(file["servers"]["s"]["tools"]["t"]["reason"], token);

        let mut document = serde_json::json!({"version": "1", "default": "deny"});
        assert_eq!(key_grant_tokens(&mut document, &key), 0);
    }
}
