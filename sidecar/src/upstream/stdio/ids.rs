//! Session ids.

use std::hash::BuildHasher;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// Session ids: SHA-256 over a 256-bit random seed and a counter, so they
/// are unique and cannot be guessed from one another.
pub(super) struct SessionIds {
    seed: [u8; 32],
    next: AtomicU64,
}

impl SessionIds {
    pub(super) fn new() -> Self {
        let mut seed = [0u8; 32];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed));
        if let Err(e) = read {
            // std's hasher keys come from the OS's random source too.
            tracing::debug!("cannot read /dev/urandom ({e}); seeding session ids from std");
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

    pub(super) fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let digest = Sha256::new()
            .chain_update(self.seed)
            .chain_update(n.to_le_bytes())
            .finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}
