//! The legacy transport's open sessions: one table for every route, keyed
//! by 128 random bits. Only the grant that opened a session's stream may
//! post to it, and only through the route that opened it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::session_ids::SessionIds;

/// Open legacy SSE sessions.
#[derive(Debug, Default)]
pub struct SseSessions {
    map: Mutex<HashMap<String, Arc<SseSession>>>,
    keys: SessionIds,
}

/// One client's SSE stream.
#[derive(Debug)]
pub struct SseSession {
    /// The route (its path) whose stream this is.
    pub route: Arc<str>,
    /// The grant that opened the stream: the only one that may post to it.
    pub grant: Arc<str>,
    /// Where the upstream wants this session's messages (path and query),
    /// once its `endpoint` event has arrived.
    pub upstream_endpoint: Mutex<Option<String>>,
    /// The sidecar's answers to inject into the stream.
    pub inject: mpsc::Sender<Bytes>,
}

impl SseSessions {
    /// SseSessions of `route` open now.
    pub fn open_on(&self, route: &str) -> usize {
        lock(&self.map)
            .values()
            .filter(|s| &*s.route == route)
            .count()
    }

    /// Adds `session` under a new key, unless its route already has `max`
    /// sessions open.
    pub fn insert(&self, session: Arc<SseSession>, max: usize) -> Option<String> {
        let mut map = lock(&self.map);
        let open = map.values().filter(|s| s.route == session.route).count();
        if open >= max {
            return None;
        }
        let key = self.keys.next();
        map.insert(key.clone(), session);
        Some(key)
    }

    /// The session `key` of `route`.
    pub fn get(&self, route: &str, key: &str) -> Option<Arc<SseSession>> {
        lock(&self.map)
            .get(key)
            .filter(|s| &*s.route == route)
            .cloned()
    }

    /// Forgets session `key`.
    pub fn remove(&self, key: &str) {
        lock(&self.map).remove(key);
    }
}

/// A lock whose holder cannot leave its data half-changed (each critical
/// section is one insert, remove, read or clone), so poisoning is ignored.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
