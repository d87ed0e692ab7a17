//! Human approvals on the data plane: a `tools/call` whose decision is
//! `require_approval` is filed as an approval request, held briefly while a
//! person may decide, and forwarded once when approved.
//!
//! | module | what |
//! |---|---|
//! | [`canonical`] | the arguments' canonical JSON and digest a request is bound to |
//! | [`ids`] | `ap_…` ids |
//! | [`events`] | approval events in the decision log and metrics |
//! | [`local`] | [`LocalBroker`]: the ledger of a sidecar without a control plane |
//! | [`hold`] | what a transport does with a held call |
//! | [`pending`] | the answers a client gets while its call waits |
//! | [`sessions`] | the sessions whose clients declared URL elicitation |
//! | [`admin_api`] | the admin port's `/approvals` endpoints |
//!
//! A [`Broker`] is where requests live: this sidecar's own ledger, or the
//! control plane's over the approvals stream.

pub mod admin_api;
pub mod canonical;
pub mod events;
pub mod hold;
pub mod ids;
pub mod local;
pub mod pending;
pub mod sessions;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::mcp::request_state::StateKey;

pub use local::LocalBroker;
pub use tollgate_policy::approvals::{
    ApprovalError, ApprovalRecord, ApprovalState, CallKey, UseOutcome,
};

/// A boxed future, so [`Broker`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a decision on the data plane was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// The ledger refused it (unknown id, not pending, deny without reason).
    #[error("{0}")]
    Ledger(#[from] ApprovalError),
    /// A reason or approver name over the limit.
    #[error("the reason and the approver's name are at most {0} bytes each")]
    TooLong(usize),
    /// Requests live on the control plane: decide there.
    #[error("decide on the control plane: tollgate approvals approve {0}")]
    Remote(String),
}

/// Where approval requests are filed, decided and used.
pub trait Broker: Send + Sync + std::fmt::Debug {
    /// Files a new pending request; the error says why it was not filed.
    fn file(&self, record: ApprovalRecord) -> BoxFuture<'_, Result<(), String>>;

    /// A retry of `call`: uses an approved, unexpired approval (then the
    /// call is forwarded once), else reports the call's latest request.
    /// `named` restricts the match to the approval the client names.
    fn use_for<'a>(
        &'a self,
        call: &'a CallKey,
        named: Option<&'a str>,
    ) -> BoxFuture<'a, UseOutcome>;

    /// Waits until request `id` is decided or expired (then its record), or
    /// `timeout` passes with it still pending (then `None`; also for an
    /// unknown id).
    fn wait<'a>(&'a self, id: &'a str, timeout: Duration) -> BoxFuture<'a, Option<ApprovalRecord>>;

    /// Requests, newest first, optionally only those in `state`.
    fn list(&self, state: Option<ApprovalState>) -> BoxFuture<'_, Vec<ApprovalRecord>>;

    /// Request `id`.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<ApprovalRecord>>;

    /// Approves (`approve`) or denies request `id` as `by`. Only a local
    /// ledger decides; a remote broker answers [`DecideError::Remote`].
    fn decide<'a>(
        &'a self,
        id: &'a str,
        approve: bool,
        reason: &'a str,
        by: &'a str,
    ) -> BoxFuture<'a, Result<ApprovalRecord, DecideError>>;
}

/// What a sidecar needs to hold calls: where requests live, where events
/// go, the approval page, and the `requestState` key.
#[derive(Debug)]
pub struct Approvals {
    /// Where requests are filed and decided.
    pub broker: Arc<dyn Broker>,
    /// Approval events to the decision log and metrics.
    pub events: events::Events,
    /// The base of the page where approvals are decided (no trailing `/`).
    pub url: String,
    /// This sidecar's own `requestState` key, used when the control plane
    /// sent no grant key; `None` when the system gave no randomness.
    pub state_key: Option<Arc<StateKey>>,
    /// Sessions whose client declared URL elicitation (2025-11-25).
    pub url_sessions: sessions::UrlSessions,
    /// This sidecar's node id (recorded on the requests it files).
    pub node: Arc<str>,
}

impl Approvals {
    /// A local ledger for `node`, decided at `url/approvals/ID`, with a
    /// random `requestState` key of this process.
    pub fn local(node: Arc<str>, events: events::Events, url: &str) -> Self {
        let broker = Arc::new(LocalBroker::new(Arc::clone(&node), events.clone()));
        Self::new(broker, events, url, node)
    }

    /// Requests in `broker`, decided at `url/approvals/ID`.
    pub fn new(broker: Arc<dyn Broker>, events: events::Events, url: &str, node: Arc<str>) -> Self {
        let mut secret = [0u8; 32];
        let state_key = getrandom::fill(&mut secret)
            .ok()
            .map(|()| Arc::new(StateKey::derive(&secret)));
        Self {
            broker,
            events,
            url: url.trim_end_matches('/').to_owned(),
            state_key,
            url_sessions: sessions::UrlSessions::default(),
            node,
        }
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
