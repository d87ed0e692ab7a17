//! What judging decided for the messages of one request (ARCHITECTURE.md §2).
//!
//! Judging ([`crate::judge`]) returns verdicts, not reply bytes: a message is
//! forwarded, answered by the sidecar with the decision, or held until an
//! external decision (a person approving the call). The transports act on the
//! verdicts and [`crate::reply`] builds every reply from them.

use std::sync::Arc;

use bytes::Bytes;
use tollgate_policy::Decision;

/// What happens to one message.
#[derive(Debug)]
pub enum Verdict {
    /// Sent upstream.
    Forward,
    /// Not forwarded: the sidecar answers with the decision.
    Answer(RefusedCall),
    /// Not forwarded yet: the call waits for a person's decision
    /// (`require_approval`). A single held call goes through
    /// [`crate::approvals::hold`]; in a batch it is answered at once.
    Hold(RefusedCall),
}

impl Verdict {
    /// The refused call, unless the message is forwarded.
    pub fn refused(&self) -> Option<&RefusedCall> {
        match self {
            Self::Forward => None,
            Self::Answer(r) | Self::Hold(r) => Some(r),
        }
    }
}

/// A `tools/call` policy did not let through as it is.
#[derive(Debug)]
pub struct RefusedCall {
    /// The message's raw JSON-RPC id (a slice of the body); `None` for a
    /// notification, which gets no reply.
    pub id: Option<Bytes>,
    /// The tool called.
    pub tool: Box<str>,
    /// The decision.
    pub decision: Decision,
    /// The decision's id in the decision log.
    pub decision_id: String,
    /// The policy version that decided.
    pub policy_version: Arc<str>,
}

/// The verdicts of a request's messages. Only messages that are not
/// forwarded are stored (most requests forward everything): any index not
/// listed is [`Verdict::Forward`].
#[derive(Debug, Default)]
pub struct Verdicts {
    not_forwarded: Vec<(usize, Verdict)>,
}

impl Verdicts {
    /// Records the verdict of message `index` (a [`Verdict::Forward`] needs
    /// no record).
    pub fn push(&mut self, index: usize, verdict: Verdict) {
        if !matches!(verdict, Verdict::Forward) {
            self.not_forwarded.push((index, verdict));
        }
    }

    /// The verdict of message `index`.
    pub fn get(&self, index: usize) -> &Verdict {
        self.not_forwarded
            .iter()
            .find(|(i, _)| *i == index)
            .map_or(&Verdict::Forward, |(_, v)| v)
    }

    /// Whether message `index` is forwarded.
    pub fn forwards(&self, index: usize) -> bool {
        matches!(self.get(index), Verdict::Forward)
    }

    /// How many messages are not forwarded.
    pub fn not_forwarded(&self) -> usize {
        self.not_forwarded.len()
    }

    /// Whether every message is forwarded.
    pub fn all_forwarded(&self) -> bool {
        self.not_forwarded.is_empty()
    }

    /// The held call of a single-message request that expects a reply.
    pub fn held(&self) -> Option<&RefusedCall> {
        match self.not_forwarded.as_slice() {
            [(0, Verdict::Hold(r))] if r.id.is_some() => Some(r),
            _ => None,
        }
    }

    /// The refused calls, in message order.
    pub fn refused(&self) -> impl Iterator<Item = &RefusedCall> {
        self.not_forwarded.iter().filter_map(|(_, v)| v.refused())
    }
}
