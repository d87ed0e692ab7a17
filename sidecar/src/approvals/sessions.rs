//! The MCP sessions (2025-11-25 and earlier) whose client declared URL
//! elicitation in `initialize`: those get the -32042 error naming the
//! approval page instead of a tool error. Bounded: past [`MAX_SESSIONS`]
//! the oldest is forgotten (its client then gets the tool error).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use serde_json::Value;

/// The most sessions remembered.
pub const MAX_SESSIONS: usize = 10_000;

/// Sessions whose client handles URL elicitation.
#[derive(Debug, Default)]
pub struct UrlSessions {
    inner: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl UrlSessions {
    /// Remembers `session`; returns how many were forgotten to make room.
    pub fn insert(&self, session: &str) -> u64 {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *guard;
        if !set.insert(session.to_owned()) {
            return 0;
        }
        order.push_back(session.to_owned());
        let mut evicted = 0;
        while order.len() > MAX_SESSIONS {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
                evicted += 1;
            }
        }
        evicted
    }

    /// Whether `session`'s client declared URL elicitation.
    pub fn contains(&self, session: &str) -> bool {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.0.contains(session)
    }
}

/// Whether an `initialize` message (raw JSON) declares
/// `capabilities.elicitation.url`.
pub fn declares_url_elicitation(initialize: &[u8]) -> bool {
    serde_json::from_slice::<Value>(initialize).is_ok_and(|m| {
        m.pointer("/params/capabilities/elicitation/url")
            .is_some_and(Value::is_object)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_bounded_oldest_first() {
        let s = UrlSessions::default();
        for i in 0..=MAX_SESSIONS {
            s.insert(&format!("s{i}"));
        }
        assert!(!s.contains("s0"));
        assert!(s.contains("s1"));
        assert!(declares_url_elicitation(
            br#"{"method":"initialize","params":{"capabilities":{"elicitation":{"url":{}}}}}"#
        ));
        assert!(!declares_url_elicitation(
            br#"{"method":"initialize","params":{"capabilities":{"elicitation":{}}}}"#
        ));
    }
}
