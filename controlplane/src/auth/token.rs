//! The operator token format: `tgt_<id>_<secret>`, with `id` 8 random bytes
//! and `secret` 32 random bytes, both lowercase hex. The id is public (it
//! names the token in lists and logs and finds it without a scan); only
//! SHA-256(salt ‖ secret) is kept, with a random 16-byte salt per token.

use sha2::{Digest, Sha256};

/// Every token starts with this, so a leaked one is easy to recognise.
pub const PREFIX: &str = "tgt_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
const SALT_BYTES: usize = 16;

/// What the format looks like, for error messages.
pub const SHAPE: &str = "tgt_<16 hex digits>_<64 hex digits>";

/// A token as presented: borrowed parts of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presented<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// A freshly made token: the text, shown once, and what is stored of it.
pub struct Issued {
    pub token: String,
    pub id: String,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

/// Splits `tgt_<id>_<secret>`; `None` if `text` is not in that shape.
pub fn parse(text: &str) -> Option<Presented<'_>> {
    let (id, secret) = text.strip_prefix(PREFIX)?.split_once('_')?;
    let hex = |s: &str, bytes: usize| {
        s.len() == bytes * 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    (hex(id, ID_BYTES) && hex(secret, SECRET_BYTES)).then_some(Presented { id, secret })
}

/// Makes a new random token.
pub fn issue() -> Result<Issued, getrandom::Error> {
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    let (id, secret) = (hex(&id), hex(&secret));
    let token = format!("{PREFIX}{id}_{secret}");
    let (id, salt, hash) = seal(Presented {
        id: &id,
        secret: &secret,
    })?;
    Ok(Issued {
        token,
        id,
        salt,
        hash,
    })
}

/// A presented token's id, a new salt and the salted hash of its secret:
/// what the store keeps of it.
pub fn seal(token: Presented<'_>) -> Result<(String, Vec<u8>, Vec<u8>), getrandom::Error> {
    let mut salt = vec![0u8; SALT_BYTES];
    getrandom::fill(&mut salt)?;
    let hash = digest(&salt, token.secret).to_vec();
    Ok((token.id.to_owned(), salt, hash))
}

/// Whether `secret` hashes to `hash` under `salt`, in time independent of
/// where the hashes differ.
pub fn verify(salt: &[u8], hash: &[u8], secret: &str) -> bool {
    let got = digest(salt, secret);
    got.len() == hash.len() && got.iter().zip(hash).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn digest(salt: &[u8], secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_parse_and_verify_and_nothing_else_does() {
        let issued = issue().expect("randomness");
        let p = parse(&issued.token).expect("an issued token parses");
        assert_eq!(p.id, issued.id);
        assert!(verify(&issued.salt, &issued.hash, p.secret));
        // One secret digit changed.
        let mut wrong = p.secret.to_owned();
        let last = if wrong.ends_with('0') { "1" } else { "0" };
        wrong.replace_range(63.., last);
        assert!(!verify(&issued.salt, &issued.hash, &wrong));
        // Another token's salt.
        let other = issue().expect("randomness");
        assert_ne!(other.id, issued.id);
        assert!(!verify(&other.salt, &issued.hash, p.secret));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let secret = "0".repeat(64);
        assert!(parse(&format!("tgt_0123456789abcdef_{secret}")).is_some());
        for bad in [
            String::new(),
            "tgt_".to_owned(),
            format!("tgx_0123456789abcdef_{secret}"),
            format!("tgt_0123456789ABCDEF_{secret}"),
            format!("tgt_0123456789abcde_{secret}"),
            format!("tgt_0123456789abcdef_{secret}0"),
            format!("tgt_0123456789abcdef{secret}"),
            format!("tgt_0123456789abcdef_{}", "g".repeat(64)),
        ] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
    }
}
