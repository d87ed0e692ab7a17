//! The fleet's approval requests: the one [`Ledger`] of the control plane,
//! written through to the store on every change and announced to whoever
//! subscribes (the nodes' approvals streams, the admin watch, the page, the
//! webhook).
//!
//! Nodes file requests and use approvals; operators decide them. Single use
//! holds fleet-wide because every node's retry goes through this ledger:
//! whichever node a retry lands on, an approval is used once. No protobuf
//! here: the gRPC service (`server/approvals`) adapts this to the wire.

pub mod bounds;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
use tollgate_policy::approvals::{
    ApprovalError, ApprovalRecord, ApprovalState, CallKey, Ledger, UseOutcome,
};

use crate::metrics::ApprovalMetrics;
use crate::store::{AuditEntry, PolicyStore, StoreError};
pub use bounds::Refused;

/// How often due requests are expired.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long an ended request (denied, expired, used) is kept.
pub const KEEP_ENDED_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// Changes a subscriber may fall behind before it misses some (it is told
/// how many, and re-reads the list).
const EVENTS_BUFFER: usize = 1024;

/// Why a node's request was not filed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Ledger(#[from] ApprovalError),
    #[error("the approval request could not be stored: {0}")]
    Store(StoreError),
}

/// Why a retry could not use an approval: the change could not be stored,
/// so the call must not go upstream.
#[derive(Debug, thiserror::Error)]
#[error("the approval's use could not be stored, so the call is not let through: {0}")]
pub struct UseError(StoreError);

/// The fleet's approval requests.
pub struct Approvals {
    book: Mutex<Book>,
    /// Serializes changes: each is stored before the next is made, so the
    /// store never ends up behind a change already announced.
    writes: tokio::sync::Mutex<()>,
    store: Arc<dyn PolicyStore>,
    events: broadcast::Sender<ApprovalRecord>,
    metrics: ApprovalMetrics,
}

impl Approvals {
    /// The requests stored in `store`, as they stood when it stopped.
    pub fn open(store: Arc<dyn PolicyStore>, metrics: ApprovalMetrics) -> Result<Self, StoreError> {
        let mut book = Book::default();
        for record in store.approvals()? {
            // Ids are the table's key: a duplicate cannot come back.
            let _ = book.file(record);
        }
        metrics.pending.set(book.pending_total() as i64);
        Ok(Self {
            book: Mutex::new(book),
            writes: tokio::sync::Mutex::new(()),
            store,
            events: broadcast::channel(EVENTS_BUFFER).0,
            metrics,
        })
    }

    /// The request `id` as it stands now (expired when its time has passed,
    /// even before the sweep stores that).
    pub fn get(&self, id: &str) -> Option<ApprovalRecord> {
        let now = now_ms();
        self.book()
            .ledger
            .get(id, NO_EXPIRY)
            .cloned()
            .map(|r| as_of(r, now))
    }

    /// Every request, newest first, optionally only those in `state`.
    pub fn list(&self, state: Option<ApprovalState>) -> Vec<ApprovalRecord> {
        let now = now_ms();
        self.book()
            .ledger
            .list(None, NO_EXPIRY)
            .into_iter()
            .map(|r| as_of(r, now))
            .filter(|r| state.is_none_or(|s| r.state == s))
            .collect()
    }

    /// Every filed or changed request, as it is stored. A receiver that
    /// falls more than 1,024 changes behind gets `Lagged` and should re-read
    /// [`Approvals::list`].
    pub fn subscribe(&self) -> broadcast::Receiver<ApprovalRecord> {
        self.events.subscribe()
    }

    /// Approves or denies the pending request `id` as operator `by`: stored,
    /// audited, and announced (the filing node's streams push it to the
    /// node, so a held call completes at once).
    pub async fn decide(
        &self,
        id: &str,
        approve: bool,
        reason: &str,
        by: &str,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let _write = self.writes.lock().await;
        let now = now_ms();
        let (expired, decided) = {
            let mut book = self.book();
            let expired = book.expire(now);
            let decided = book.ledger.decide(id, approve, reason, by, now).cloned();
            if let Ok(record) = &decided {
                book.left_pending(&record.node);
            }
            (expired, decided)
        };
        self.changed(expired).await;
        let action = if approve {
            "approval.approve"
        } else {
            "approval.deny"
        };
        match &decided {
            Ok(record) => {
                if let Err(e) = self.put(record.clone()).await {
                    // The decision stands in memory and reaches the node;
                    // only a restart before the next change would lose it.
                    tracing::error!(id, error = %e, "cannot store an approval decision");
                }
                self.metrics.event(record.state.as_str());
                self.set_pending();
                let outcome = record.state.as_str();
                self.audit(by, action, id, outcome, &describe(record)).await;
                let _ = self.events.send(record.clone());
            }
            Err(e) => self.audit(by, action, id, "refused", &e.to_string()).await,
        }
        decided
    }

    /// Files `record` (a new pending request, its node already the stream's
    /// proved identity), checked against [`bounds`]: stored, then announced.
    pub async fn file(&self, mut record: ApprovalRecord) -> Result<(), FileError> {
        let _write = self.writes.lock().await;
        let now = now_ms();
        bounds::check(&record, now)?;
        record.state = ApprovalState::Pending;
        record.reason.clear();
        record.decided_by.clear();
        record.decided_ms = 0;
        record.used_by.clear();
        record.used_ms = 0;
        let (expired, refused) = {
            let mut book = self.book();
            let expired = book.expire(now);
            let pending = book.pending.get(&record.node).copied().unwrap_or(0);
            let refused: Option<FileError> = if pending >= bounds::MAX_PENDING_PER_NODE {
                Some(
                    Refused::TooManyPending {
                        node: record.node.clone(),
                        max: bounds::MAX_PENDING_PER_NODE,
                    }
                    .into(),
                )
            } else if book.ledger.get(&record.id, NO_EXPIRY).is_some() {
                Some(ApprovalError::Duplicate(record.id.clone()).into())
            } else {
                None
            };
            (expired, refused)
        };
        self.changed(expired).await;
        if let Some(refused) = refused {
            return Err(refused);
        }
        // Stored first: a request the node was told is filed survives a
        // restart.
        self.put(record.clone()).await.map_err(FileError::Store)?;
        // Checked above, under the write lock: the id is new.
        let _ = self.book().file(record.clone());
        self.metrics.event("filed");
        self.set_pending();
        let _ = self.events.send(record);
        Ok(())
    }

    /// A retry of `call` on `node`: uses the approval of the call's latest
    /// request (or of `only`, the one the client names) if it is approved
    /// and unexpired. `Granted` is stored before it is returned.
    pub async fn use_for(
        &self,
        call: &CallKey,
        only: Option<&str>,
        node: &str,
    ) -> Result<UseOutcome, UseError> {
        let _write = self.writes.lock().await;
        let now = now_ms();
        let (expired, outcome) = {
            let mut book = self.book();
            let expired = book.expire(now);
            (expired, book.ledger.use_for(call, only, node, now))
        };
        self.changed(expired).await;
        if let UseOutcome::Granted(record) = &outcome {
            self.put(record.clone()).await.map_err(UseError)?;
            self.metrics.event("used");
            let _ = self.events.send(record.clone());
        }
        Ok(outcome)
    }

    /// The requests of `node` a reconnecting node should hear about: decided
    /// or expired, and ended no longer ago than their own timeout (so a call
    /// held across the reconnect completes).
    pub fn decided_for(&self, node: &str) -> Vec<ApprovalRecord> {
        let now = now_ms();
        self.list(None)
            .into_iter()
            .filter(|r| r.node == node)
            .filter(|r| match r.state {
                ApprovalState::Approved => true,
                ApprovalState::Denied => now - r.decided_ms <= r.expires_ms - r.created_ms,
                ApprovalState::Expired => now - r.expires_ms <= r.expires_ms - r.created_ms,
                ApprovalState::Pending | ApprovalState::Used => false,
            })
            .collect()
    }

    /// Expires due requests and forgets those ended more than 7 days
    /// before `now_ms`.
    pub async fn sweep(&self, now_ms: i64) {
        let _write = self.writes.lock().await;
        let (expired, forgotten) = {
            let mut book = self.book();
            let expired = book.expire(now_ms);
            (expired, book.ledger.forget_ended(now_ms - KEEP_ENDED_MS))
        };
        self.changed(expired).await;
        if forgotten > 0 {
            let before = now_ms - KEEP_ENDED_MS;
            let store = self.store.clone();
            match run_blocking(move || store.forget_ended_approvals(before)).await {
                Ok(_) => tracing::debug!(forgotten, "forgot approval requests ended 7 days ago"),
                Err(e) => tracing::error!(error = %e, "cannot forget ended approval requests"),
            }
        }
    }

    /// Sweeps every [`SWEEP_EVERY`] until `stop` resolves.
    pub async fn run_sweeper(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = every.tick() => self.sweep(now_ms()).await,
            }
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // The ledger's methods do not panic midway; a poisoned lock still
        // holds a whole ledger.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores, counts and announces requests the ledger just expired.
    async fn changed(&self, expired: Vec<ApprovalRecord>) {
        if expired.is_empty() {
            return;
        }
        for record in expired {
            if let Err(e) = self.put(record.clone()).await {
                tracing::error!(id = %record.id, error = %e, "cannot store an expired approval request");
            }
            self.metrics.event("expired");
            let _ = self.events.send(record);
        }
        self.set_pending();
    }

    async fn put(&self, record: ApprovalRecord) -> Result<(), StoreError> {
        let store = self.store.clone();
        run_blocking(move || store.put_approval(&record)).await
    }

    async fn audit(&self, actor: &str, action: &str, target: &str, outcome: &str, detail: &str) {
        let entry = AuditEntry {
            at: crate::status::unix_now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
            detail: detail.to_owned(),
        };
        let store = self.store.clone();
        if let Err(e) = run_blocking(move || store.record_audit(&entry)).await {
            tracing::error!(action, error = %e, "cannot record an approval decision in the audit trail");
        }
    }

    fn set_pending(&self) {
        self.metrics.pending.set(self.book().pending_total() as i64);
    }
}

/// A time no request expires at: reads through the ledger with it change
/// nothing (expiring is the sweep's and the writers' job, which store it).
const NO_EXPIRY: i64 = i64::MIN;

/// The ledger, with how many requests each node has pending, kept beside
/// it so that filing need not look at every request.
#[derive(Default)]
struct Book {
    ledger: Ledger,
    pending: HashMap<String, usize>,
}

impl Book {
    fn file(&mut self, record: ApprovalRecord) -> Result<(), ApprovalError> {
        let node = (record.state == ApprovalState::Pending).then(|| record.node.clone());
        self.ledger.file(record)?;
        if let Some(node) = node {
            *self.pending.entry(node).or_default() += 1;
        }
        Ok(())
    }

    /// A request of `node` is no longer pending.
    fn left_pending(&mut self, node: &str) {
        if let Some(n) = self.pending.get_mut(node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pending.remove(node);
            }
        }
    }

    /// Expires the due requests; returns them as they now stand.
    fn expire(&mut self, now: i64) -> Vec<ApprovalRecord> {
        let expired: Vec<ApprovalRecord> = self
            .ledger
            .expire(now)
            .iter()
            .filter_map(|id| self.ledger.get(id, NO_EXPIRY).cloned())
            .collect();
        for r in &expired {
            // Never decided: it expired pending (else approved).
            if r.decided_ms == 0 && r.decided_by.is_empty() {
                self.left_pending(&r.node);
            }
        }
        expired
    }

    fn pending_total(&self) -> usize {
        self.pending.values().sum()
    }
}

/// `r` as it stands at `now`: expired if its time has passed.
fn as_of(mut r: ApprovalRecord, now: i64) -> ApprovalRecord {
    if matches!(r.state, ApprovalState::Pending | ApprovalState::Approved) && now >= r.expires_ms {
        r.state = ApprovalState::Expired;
    }
    r
}

/// One line for the audit trail: the call and the reason.
fn describe(r: &ApprovalRecord) -> String {
    let mut line = format!(
        "call {} → {}.{} on node {}",
        r.call.grant, r.call.server, r.call.tool, r.node
    );
    if !r.reason.is_empty() {
        line.push_str(": ");
        line.push_str(&r.reason);
    }
    line
}

async fn run_blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())))
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
