//! The sealed `requestState` of an approval a 2026-07-28 client is told to
//! wait for (multi round-trip requests): the client echoes it verbatim on its
//! retry, so it is attacker-controlled input.
//!
//! The state binds the approval id, grant, server, tool, argument digest and
//! expiry, sealed with AES-256-GCM under a key derived (HKDF-SHA256) from a
//! secret every sidecar of a deployment shares (the grant key the control
//! plane distributes), so a retry that lands on another pod opens it too. A
//! changed byte, another deployment's key, an expired state or a state for
//! another call is refused, each with its own error.
//!
//! Wire form: `tg1.` then base64url (no padding) of nonce (12 bytes) ‖
//! ciphertext ‖ tag.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// The prefix of every sealed state (and its format's version).
const PREFIX: &str = "tg1.";
/// What the seal authenticates besides the content.
const AAD: &[u8] = b"tollgate requestState v1";
/// The longest state accepted, in characters (a sealed state is ~300).
pub const MAX_STATE: usize = 4096;

/// What a sealed state says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalState {
    /// The approval request (`ap_…`).
    #[serde(rename = "a")]
    pub approval_id: String,
    /// The caller's grant.
    #[serde(rename = "g")]
    pub grant: String,
    /// The MCP server.
    #[serde(rename = "s")]
    pub server: String,
    /// The tool.
    #[serde(rename = "t")]
    pub tool: String,
    /// SHA-256 (hex) of the arguments' canonical JSON.
    #[serde(rename = "d")]
    pub arguments_sha256: String,
    /// Unix milliseconds after which the state is refused.
    #[serde(rename = "e")]
    pub expires_ms: i64,
}

/// Why a `requestState` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not something this sidecar wrote.
    #[error(
        "the requestState is not one Tollgate issued (malformed); call the tool again without it to get a new approval request"
    )]
    Malformed,
    /// The seal does not verify: changed, or sealed under another key.
    #[error(
        "the requestState failed its integrity check (changed, or from another deployment); call the tool again without it"
    )]
    Forged,
    /// Past its expiry.
    #[error(
        "the requestState expired with approval {0}; call the tool again to request a new approval"
    )]
    Expired(String),
    /// Sealed for another call.
    #[error(
        "the requestState of approval {0} was issued for another call (grant, server, tool or arguments differ); retry that exact call, or call again without it"
    )]
    Foreign(String),
}

/// The key states are sealed with.
pub struct StateKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(..)")
    }
}

/// HKDF's output length for a 32-byte key.
struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

impl StateKey {
    /// The key derived from `secret` (the deployment's shared secret, or a
    /// sidecar's own random one when it runs alone).
    pub fn derive(secret: &[u8]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"tollgate").extract(secret);
        let mut bytes = [0u8; 32];
        // Both calls fail only for an output length HKDF cannot give; 32 is fine.
        let filled = prk
            .expand(&[b"requestState key v1"], KeyLen)
            .and_then(|okm| okm.fill(&mut bytes));
        debug_assert!(filled.is_ok());
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map(LessSafeKey::new)
            .unwrap_or_else(|_| unreachable!("AES-256-GCM takes a 32-byte key"));
        Self { key }
    }

    /// Seals `state`; `None` when the system gives no randomness for the
    /// nonce (then no state is issued: a repeated nonce would break the seal).
    pub fn seal(&self, state: &ApprovalState) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).ok()?;
        let mut data = serde_json::to_vec(state).unwrap_or_default();
        // Only fails for data over AES-GCM's limit, far beyond a state.
        let sealed = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut data,
        );
        debug_assert!(sealed.is_ok());
        let mut wire = Vec::with_capacity(NONCE_LEN + data.len());
        wire.extend_from_slice(&nonce);
        wire.extend_from_slice(&data);
        Some(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(wire)))
    }

    /// Opens `text` and checks it is for `call` and unexpired at `now_ms`.
    pub fn open(
        &self,
        text: &str,
        call: &ApprovalState,
        now_ms: i64,
    ) -> Result<ApprovalState, StateError> {
        let state = self.open_unchecked(text)?;
        if state.expires_ms <= now_ms {
            return Err(StateError::Expired(state.approval_id));
        }
        if state.grant != call.grant
            || state.server != call.server
            || state.tool != call.tool
            || state.arguments_sha256 != call.arguments_sha256
        {
            return Err(StateError::Foreign(state.approval_id));
        }
        Ok(state)
    }

    fn open_unchecked(&self, text: &str) -> Result<ApprovalState, StateError> {
        if text.len() > MAX_STATE {
            return Err(StateError::Malformed);
        }
        let body = text.strip_prefix(PREFIX).ok_or(StateError::Malformed)?;
        let mut wire = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| StateError::Malformed)?;
        if wire.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(StateError::Malformed);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&wire[..NONCE_LEN]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut wire[NONCE_LEN..],
            )
            .map_err(|_| StateError::Forged)?;
        serde_json::from_slice(plain).map_err(|_| StateError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ApprovalState {
        ApprovalState {
            approval_id: "ap_abcdefghijklmnopqrstuvwxyz".into(),
            grant: "ci".into(),
            server: "files".into(),
            tool: "delete".into(),
            arguments_sha256: "ab".repeat(32),
            expires_ms: 2_000,
        }
    }

    #[test]
    fn a_state_opens_for_its_call_until_it_expires() {
        let key = StateKey::derive(b"deployment secret");
        let sealed = key.seal(&state()).unwrap();
        assert!(sealed.starts_with("tg1."));
        assert_eq!(key.open(&sealed, &state(), 1_999), Ok(state()));
        // Another sidecar of the deployment derives the same key.
        assert!(
            StateKey::derive(b"deployment secret")
                .open(&sealed, &state(), 0)
                .is_ok()
        );
        assert_eq!(
            key.open(&sealed, &state(), 2_000),
            Err(StateError::Expired(state().approval_id))
        );
    }

    #[test]
    fn changed_foreign_and_garbage_states_are_refused() {
        let key = StateKey::derive(b"deployment secret");
        let sealed = key.seal(&state()).unwrap();
        // Every byte of the sealed part matters.
        let body = sealed.strip_prefix("tg1.").unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(body).unwrap();
        for i in [0, NONCE_LEN, raw.len() - 1] {
            raw[i] ^= 1;
            let tampered = format!("tg1.{}", URL_SAFE_NO_PAD.encode(&raw));
            assert_eq!(
                key.open(&tampered, &state(), 0),
                Err(StateError::Forged),
                "byte {i}"
            );
            raw[i] ^= 1;
        }
        assert_eq!(
            StateKey::derive(b"another deployment").open(&sealed, &state(), 0),
            Err(StateError::Forged)
        );
        let other = ApprovalState {
            arguments_sha256: "cd".repeat(32),
            ..state()
        };
        assert_eq!(
            key.open(&sealed, &other, 0),
            Err(StateError::Foreign(state().approval_id))
        );
        for junk in ["", "tg1.", "tg1.!!", "tg2.AAAA", &"x".repeat(MAX_STATE + 1)] {
            assert_eq!(
                key.open(junk, &state(), 0),
                Err(StateError::Malformed),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn two_seals_of_one_state_differ() {
        let key = StateKey::derive(b"s");
        assert_ne!(key.seal(&state()), key.seal(&state()));
    }
}
