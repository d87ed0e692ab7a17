//! [`LocalBroker`]: the approval ledger of a sidecar that runs without a
//! control plane, decided through its admin port.
//!
//! Bounded: at most [`MAX_PENDING`] requests pending and [`MAX_RECORDS`]
//! kept, every text field at most [`MAX_FIELD`] bytes, and a sweep that
//! expires due requests and forgets ended ones after [`KEEP_ENDED`].

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tollgate_policy::approvals::Ledger;

use super::events::Events;
use super::{
    ApprovalRecord, ApprovalState, BoxFuture, Broker, CallKey, DecideError, UseOutcome, now_ms,
};

/// The most requests pending at once.
pub const MAX_PENDING: usize = 1_000;
/// The most requests kept (pending or ended).
pub const MAX_RECORDS: usize = 10_000;
/// The longest text field of a request, in bytes.
pub const MAX_FIELD: usize = 1024;
/// How long ended requests are kept, for the admin port's listing.
pub const KEEP_ENDED: Duration = Duration::from_secs(7 * 24 * 3600);

/// The ledger of a standalone sidecar.
#[derive(Debug)]
pub struct LocalBroker {
    inner: Mutex<Inner>,
    /// Bumped on every decision or expiry: waiters look again.
    changed: watch::Sender<u64>,
    node: Arc<str>,
    events: Events,
}

#[derive(Debug, Default)]
struct Inner {
    ledger: Ledger,
    /// Requests the ledger holds (filed minus forgotten).
    held: usize,
}

impl LocalBroker {
    /// An empty ledger for node `node`.
    pub fn new(node: Arc<str>, events: Events) -> Self {
        Self {
            inner: Mutex::default(),
            changed: watch::Sender::new(0),
            node,
            events,
        }
    }

    /// Expires due requests and forgets those that ended over
    /// [`KEEP_ENDED`] ago; run every few seconds.
    pub fn sweep(&self) {
        let now = now_ms();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        let forgotten = inner
            .ledger
            .forget_ended(now - KEEP_ENDED.as_millis() as i64);
        inner.held = inner.held.saturating_sub(forgotten);
    }

    /// Expires every pending request every `every`, forever.
    pub async fn sweep_every(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent ledger (every
        // ledger operation completes or does nothing): keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Expires due requests, recording each and waking waiters.
    fn expire(&self, inner: &mut Inner, now: i64) {
        let due = inner.ledger.expire(now);
        for id in &due {
            if let Some(r) = inner.ledger.get(id, now) {
                self.events.record(r, "expired");
            }
        }
        self.events.pending(inner.ledger.pending());
        if !due.is_empty() {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn file_now(&self, record: ApprovalRecord) -> Result<(), String> {
        check_fields(&record)?;
        let now = now_ms();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        if inner.ledger.pending() >= MAX_PENDING {
            return Err(format!(
                "this sidecar has {MAX_PENDING} approval requests pending, the most it keeps; \
                 decide some on its admin port (GET /approvals?state=pending) or let them expire"
            ));
        }
        if inner.held >= MAX_RECORDS {
            let forgotten = inner.ledger.forget_ended(now);
            inner.held = inner.held.saturating_sub(forgotten);
        }
        if inner.held >= MAX_RECORDS {
            return Err(format!(
                "this sidecar keeps {MAX_RECORDS} approval requests, the most it holds; decide the pending ones"
            ));
        }
        inner
            .ledger
            .file(record.clone())
            .map_err(|e| e.to_string())?;
        inner.held += 1;
        self.events.record(&record, "requested");
        self.events.pending(inner.ledger.pending());
        Ok(())
    }

    fn use_now(&self, call: &CallKey, named: Option<&str>) -> UseOutcome {
        let now = now_ms();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        let out = inner.ledger.use_for(call, named, &self.node, now);
        if let UseOutcome::Granted(r) = &out {
            self.events.record(r, "used");
        }
        out
    }

    fn get_now(&self, id: &str) -> Option<ApprovalRecord> {
        let now = now_ms();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        inner.ledger.get(id, now).cloned()
    }

    fn decide_now(
        &self,
        id: &str,
        approve: bool,
        reason: &str,
        by: &str,
    ) -> Result<ApprovalRecord, DecideError> {
        if reason.len() > MAX_FIELD || by.len() > MAX_FIELD {
            return Err(DecideError::TooLong(MAX_FIELD));
        }
        let now = now_ms();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        let record = inner.ledger.decide(id, approve, reason, by, now)?.clone();
        self.events
            .record(&record, if approve { "approved" } else { "denied" });
        self.events.pending(inner.ledger.pending());
        drop(inner);
        self.changed.send_modify(|n| *n += 1);
        Ok(record)
    }

    async fn wait_for(&self, id: &str, timeout: Duration) -> Option<ApprovalRecord> {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let record = self.get_now(id)?;
            if record.state != ApprovalState::Pending {
                return Some(record);
            }
            // Wake at its expiry too, to report it expired.
            let left = Duration::from_millis((record.expires_ms - now_ms()).max(0) as u64);
            let wake = deadline.min(tokio::time::Instant::now() + left);
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    if wake >= deadline {
                        return self.get_now(id).filter(|r| r.state != ApprovalState::Pending);
                    }
                }
            }
        }
    }
}

/// Refuses a request with a text field over [`MAX_FIELD`] bytes.
pub fn check_fields(r: &ApprovalRecord) -> Result<(), String> {
    let fields = [
        ("id", &r.id),
        ("grant", &r.call.grant),
        ("server", &r.call.server),
        ("tool", &r.call.tool),
        ("arguments digest", &r.call.arguments_sha256),
        ("node", &r.node),
        ("session", &r.session),
        ("policy version", &r.policy_version),
        ("rule", &r.rule),
    ];
    for (name, value) in fields {
        if value.len() > MAX_FIELD {
            return Err(format!(
                "the call's {name} is {} bytes, over the {MAX_FIELD} an approval request keeps; \
                 no approval can be requested for it",
                value.len()
            ));
        }
    }
    if r.arguments_json.len() > 64 * MAX_FIELD {
        return Err("the call's arguments are too large to show approvers".to_owned());
    }
    Ok(())
}

impl Broker for LocalBroker {
    fn file(&self, record: ApprovalRecord) -> BoxFuture<'_, Result<(), String>> {
        let out = self.file_now(record);
        Box::pin(async move { out })
    }

    fn use_for<'a>(
        &'a self,
        call: &'a CallKey,
        named: Option<&'a str>,
    ) -> BoxFuture<'a, UseOutcome> {
        let out = self.use_now(call, named);
        Box::pin(async move { out })
    }

    fn wait<'a>(&'a self, id: &'a str, timeout: Duration) -> BoxFuture<'a, Option<ApprovalRecord>> {
        Box::pin(self.wait_for(id, timeout))
    }

    fn list(&self, state: Option<ApprovalState>) -> BoxFuture<'_, Vec<ApprovalRecord>> {
        let now = now_ms();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        let out = inner.ledger.list(state, now);
        Box::pin(async move { out })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<ApprovalRecord>> {
        let out = self.get_now(id);
        Box::pin(async move { out })
    }

    fn decide<'a>(
        &'a self,
        id: &'a str,
        approve: bool,
        reason: &'a str,
        by: &'a str,
    ) -> BoxFuture<'a, Result<ApprovalRecord, DecideError>> {
        let out = self.decide_now(id, approve, reason, by);
        Box::pin(async move { out })
    }
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
