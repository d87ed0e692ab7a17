//! Session ids no client can guess: the keys of legacy SSE sessions and the
//! ids of stdio sessions.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// Session ids: 128 bits of SHA-256 over a 256-bit random seed and a
/// counter, so they are unique and cannot be guessed from one another.
#[derive(Debug)]
pub struct SessionIds {
    seed: [u8; 32],
    next: AtomicU64,
}

impl Default for SessionIds {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionIds {
    /// A generator seeded from the operating system's random source.
    pub fn new() -> Self {
        let mut seed = [0u8; 32];
        if let Err(e) = getrandom::fill(&mut seed) {
            // std's hasher keys come from the OS's random source too.
            tracing::warn!("the OS random source failed ({e}); seeding session ids from std");
            let keys = std::collections::hash_map::RandomState::new();
            for (i, chunk) in seed.chunks_mut(8).enumerate() {
                chunk.copy_from_slice(&keys.hash_one(i).to_le_bytes());
            }
        }
        SessionIds {
            seed,
            next: AtomicU64::new(0),
        }
    }

    /// A new id: 32 lower-case hex digits.
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let digest = Sha256::new()
            .chain_update(self.seed)
            .chain_update(n.to_le_bytes())
            .finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_128_bit_hex_and_differ_across_generators() {
        let (a, b) = (SessionIds::new(), SessionIds::new());
        let ids = [a.next(), a.next(), b.next()];
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2]);
    }
}
