//! Approval request ids: `ap_` and 26 characters of lowercase base32
//! (RFC 4648 alphabet) of 130 random bits from the operating system.

/// RFC 4648's base32 alphabet, lowercase.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The characters after `ap_`.
pub const ID_CHARS: usize = 26;

/// A new id; `None` when the system gives no randomness (then no request is
/// filed: a guessable id would let anyone name another's approval).
pub fn new_id() -> Option<String> {
    // 26 characters × 5 bits = 130 bits, from 17 random bytes (136 bits).
    let mut bytes = [0u8; 17];
    getrandom::fill(&mut bytes).ok()?;
    let mut out = String::with_capacity(3 + ID_CHARS);
    out.push_str("ap_");
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 && out.len() < 3 + ID_CHARS {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    Some(out)
}

/// Whether `id` has the shape of an approval id (checked before it is
/// looked up or echoed).
pub fn is_id(id: &str) -> bool {
    id.strip_prefix("ap_")
        .is_some_and(|rest| rest.len() == ID_CHARS && rest.bytes().all(|b| ALPHABET.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_base32_and_distinct() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert!(is_id(&a), "{a}");
        assert_eq!(a.len(), 29);
        assert_ne!(a, b);
        assert!(!is_id("ap_ABC"));
        assert!(!is_id(&a.replace("ap_", "xx_")));
    }
}
