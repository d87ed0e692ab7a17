//! Human approvals, as a pure ledger: requests filed, decided by a person,
//! expired, and used by exactly one retry of the same call.
//!
//! The control plane keeps one ledger for the fleet (backed by its store);
//! a sidecar without a control plane keeps its own. No I/O and no clock: the
//! caller passes the time as Unix milliseconds.
//!
//! A request is for one exact call: grant, server, tool and the SHA-256 of
//! the arguments' canonical JSON. A retry of that call uses the approval once
//! it is approved and before it expires; the approval is then used, and the
//! next retry needs a new request. Other arguments never match.

use std::collections::HashMap;

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalState {
    /// Waiting for a person.
    Pending,
    /// Approved: the next retry of the call goes through.
    Approved,
    /// Denied, with a reason.
    Denied,
    /// Not decided (or not used) before it expired.
    Expired,
    /// Approved, then used by one retry.
    Used,
}

impl ApprovalState {
    /// `pending`, `approved`, `denied`, `expired` or `used`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Used => "used",
        }
    }
}

/// The call a request is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallKey {
    /// The caller's grant.
    pub grant: String,
    /// The MCP server.
    pub server: String,
    /// The tool.
    pub tool: String,
    /// SHA-256 (hex) of the arguments' canonical JSON.
    pub arguments_sha256: String,
}

/// One approval request and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    /// `ap_…`, unique.
    pub id: String,
    /// The call it is for.
    pub call: CallKey,
    /// The node that filed it.
    pub node: String,
    /// The MCP session, if any.
    pub session: String,
    /// The arguments' canonical JSON when approvers may see them, else empty.
    pub arguments_json: String,
    /// The policy version and rule that asked for it.
    pub policy_version: String,
    /// The rule's JSON pointer.
    pub rule: String,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Unix milliseconds; pending or approved past this, it is expired.
    pub expires_ms: i64,
    /// Where it stands.
    pub state: ApprovalState,
    /// The approver's reason.
    pub reason: String,
    /// Who decided.
    pub decided_by: String,
    /// When, Unix milliseconds (0 before).
    pub decided_ms: i64,
    /// The node whose retry used it.
    pub used_by: String,
    /// When, Unix milliseconds (0 before).
    pub used_ms: i64,
}

/// Why a ledger operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// No request has this id.
    #[error("no approval request {0}; list them with `tollgate approvals list`")]
    Unknown(String),
    /// The request is not pending.
    #[error("approval request {id} is {} already{}; only a pending request can be decided", state.as_str(), by.as_deref().map(|b| format!(" (by {b})")).unwrap_or_default())]
    NotPending {
        /// The request.
        id: String,
        /// Where it stands.
        state: ApprovalState,
        /// Who decided it, if someone did.
        by: Option<String>,
    },
    /// A deny without a reason.
    #[error("denying approval request {0} needs a reason: the agent is told it")]
    NoReason(String),
    /// A request filed twice.
    #[error("approval request {0} exists already")]
    Duplicate(String),
}

/// What a retry of a call finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UseOutcome {
    /// An approval was approved and unexpired: it is now used; forward once.
    Granted(ApprovalRecord),
    /// The latest request for the call stands here (pending, denied, expired
    /// or used): no forwarding.
    Found(ApprovalRecord),
    /// No request for this call: file one.
    None,
}

/// Every request, by id, with the latest request of each call.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    by_id: HashMap<String, ApprovalRecord>,
    latest: HashMap<CallKey, String>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Files a new pending request (or puts back one read from a store).
    pub fn file(&mut self, record: ApprovalRecord) -> Result<(), ApprovalError> {
        if self.by_id.contains_key(&record.id) {
            return Err(ApprovalError::Duplicate(record.id));
        }
        let newer = self
            .latest
            .get(&record.call)
            .and_then(|id| self.by_id.get(id))
            .is_none_or(|old| old.created_ms <= record.created_ms);
        if newer {
            self.latest.insert(record.call.clone(), record.id.clone());
        }
        self.by_id.insert(record.id.clone(), record);
        Ok(())
    }

    /// The request `id`, expired first if its time has passed.
    pub fn get(&mut self, id: &str, now_ms: i64) -> Option<&ApprovalRecord> {
        self.expire_one(id, now_ms);
        self.by_id.get(id)
    }

    /// Approves (`approve`) or denies a pending request.
    pub fn decide(
        &mut self,
        id: &str,
        approve: bool,
        reason: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<&ApprovalRecord, ApprovalError> {
        self.expire_one(id, now_ms);
        let record = self
            .by_id
            .get_mut(id)
            .ok_or_else(|| ApprovalError::Unknown(id.to_owned()))?;
        if record.state != ApprovalState::Pending {
            return Err(ApprovalError::NotPending {
                id: id.to_owned(),
                state: record.state,
                by: (!record.decided_by.is_empty()).then(|| record.decided_by.clone()),
            });
        }
        if !approve && reason.trim().is_empty() {
            return Err(ApprovalError::NoReason(id.to_owned()));
        }
        record.state = if approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        record.reason = reason.trim().to_owned();
        record.decided_by = by.to_owned();
        record.decided_ms = now_ms;
        Ok(record)
    }

    /// A retry of `call` by `node`: uses the latest request's approval if it
    /// is approved and unexpired. `only` restricts the match to one request
    /// id (a client naming the approval it was given).
    pub fn use_for(
        &mut self,
        call: &CallKey,
        only: Option<&str>,
        node: &str,
        now_ms: i64,
    ) -> UseOutcome {
        let Some(id) = self.latest.get(call).cloned() else {
            return UseOutcome::None;
        };
        if only.is_some_and(|o| o != id) {
            // The named request is not this call's latest: look at it alone.
            return match only.and_then(|o| self.get(o, now_ms).cloned()) {
                Some(r) if r.call == *call => UseOutcome::Found(r),
                _ => UseOutcome::None,
            };
        }
        self.expire_one(&id, now_ms);
        let Some(record) = self.by_id.get_mut(&id) else {
            return UseOutcome::None;
        };
        if record.state == ApprovalState::Approved {
            record.state = ApprovalState::Used;
            record.used_by = node.to_owned();
            record.used_ms = now_ms;
            return UseOutcome::Granted(record.clone());
        }
        UseOutcome::Found(record.clone())
    }

    /// Marks every pending or approved request past its expiry expired;
    /// returns the ids that changed.
    pub fn expire(&mut self, now_ms: i64) -> Vec<String> {
        let due: Vec<String> = self
            .by_id
            .values()
            .filter(|r| is_due(r, now_ms))
            .map(|r| r.id.clone())
            .collect();
        for id in &due {
            self.expire_one(id, now_ms);
        }
        due
    }

    /// Every request, newest first, optionally only those in `state`.
    pub fn list(&mut self, state: Option<ApprovalState>, now_ms: i64) -> Vec<ApprovalRecord> {
        self.expire(now_ms);
        let mut out: Vec<ApprovalRecord> = self
            .by_id
            .values()
            .filter(|r| state.is_none_or(|s| r.state == s))
            .cloned()
            .collect();
        out.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        out
    }

    /// Requests pending now.
    pub fn pending(&self) -> usize {
        self.by_id
            .values()
            .filter(|r| r.state == ApprovalState::Pending)
            .count()
    }

    /// Forgets requests that ended (denied, expired, used) before
    /// `before_ms`, so the ledger stays bounded; returns how many.
    pub fn forget_ended(&mut self, before_ms: i64) -> usize {
        let gone: Vec<String> = self
            .by_id
            .values()
            .filter(|r| {
                matches!(
                    r.state,
                    ApprovalState::Denied | ApprovalState::Expired | ApprovalState::Used
                ) && r.decided_ms.max(r.used_ms).max(r.expires_ms) < before_ms
            })
            .map(|r| r.id.clone())
            .collect();
        for id in &gone {
            if let Some(r) = self.by_id.remove(id)
                && self.latest.get(&r.call) == Some(id)
            {
                self.latest.remove(&r.call);
            }
        }
        gone.len()
    }

    fn expire_one(&mut self, id: &str, now_ms: i64) {
        if let Some(r) = self.by_id.get_mut(id)
            && is_due(r, now_ms)
        {
            r.state = ApprovalState::Expired;
        }
    }
}

fn is_due(r: &ApprovalRecord, now_ms: i64) -> bool {
    matches!(r.state, ApprovalState::Pending | ApprovalState::Approved) && now_ms >= r.expires_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(args: &str) -> CallKey {
        CallKey {
            grant: "ci".into(),
            server: "files".into(),
            tool: "delete".into(),
            arguments_sha256: args.into(),
        }
    }

    fn request(id: &str, args: &str, created: i64) -> ApprovalRecord {
        ApprovalRecord {
            id: id.into(),
            call: call(args),
            node: "n1".into(),
            session: String::new(),
            arguments_json: String::new(),
            policy_version: "v1".into(),
            rule: "/rules/0".into(),
            created_ms: created,
            expires_ms: created + 600_000,
            state: ApprovalState::Pending,
            reason: String::new(),
            decided_by: String::new(),
            decided_ms: 0,
            used_by: String::new(),
            used_ms: 0,
        }
    }

    #[test]
    fn an_approval_is_used_once_for_the_same_call_only() {
        let mut l = Ledger::new();
        l.file(request("ap_1", "aa", 0)).unwrap();
        assert!(
            matches!(l.use_for(&call("aa"), None, "n1", 10), UseOutcome::Found(r) if r.state == ApprovalState::Pending)
        );
        l.decide("ap_1", true, "", "alice", 20).unwrap();
        assert_eq!(l.use_for(&call("bb"), None, "n2", 30), UseOutcome::None);
        match l.use_for(&call("aa"), None, "n2", 30) {
            UseOutcome::Granted(r) => {
                assert_eq!(r.used_by, "n2");
                assert_eq!(r.state, ApprovalState::Used);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(l.use_for(&call("aa"), None, "n1", 40), UseOutcome::Found(r) if r.state == ApprovalState::Used)
        );
    }

    #[test]
    fn decisions_are_single_and_deny_needs_a_reason() {
        let mut l = Ledger::new();
        l.file(request("ap_1", "aa", 0)).unwrap();
        assert_eq!(
            l.decide("ap_1", false, " ", "bob", 1).unwrap_err(),
            ApprovalError::NoReason("ap_1".into())
        );
        l.decide("ap_1", false, "too risky", "bob", 2).unwrap();
        let again = l.decide("ap_1", true, "", "alice", 3).unwrap_err();
        assert!(
            again.to_string().contains("denied already (by bob)"),
            "{again}"
        );
        assert!(matches!(
            l.decide("ap_9", true, "", "alice", 3),
            Err(ApprovalError::Unknown(_))
        ));
        assert_eq!(
            l.file(request("ap_1", "aa", 5)).unwrap_err(),
            ApprovalError::Duplicate("ap_1".into())
        );
    }

    #[test]
    fn past_expiry_nothing_is_decided_or_used() {
        let mut l = Ledger::new();
        l.file(request("ap_1", "aa", 0)).unwrap();
        let late = l.decide("ap_1", true, "", "alice", 600_000).unwrap_err();
        assert!(matches!(
            late,
            ApprovalError::NotPending {
                state: ApprovalState::Expired,
                ..
            }
        ));
        l.file(request("ap_2", "aa", 700_000)).unwrap();
        l.decide("ap_2", true, "", "alice", 700_001).unwrap();
        assert!(
            matches!(l.use_for(&call("aa"), None, "n1", 1_300_000), UseOutcome::Found(r) if r.state == ApprovalState::Expired)
        );
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn the_newest_request_of_a_call_is_the_one_used() {
        let mut l = Ledger::new();
        l.file(request("ap_1", "aa", 0)).unwrap();
        l.decide("ap_1", false, "no", "bob", 1).unwrap();
        l.file(request("ap_2", "aa", 2)).unwrap();
        l.decide("ap_2", true, "", "alice", 3).unwrap();
        // Naming the old, denied request does not use the new one.
        assert!(
            matches!(l.use_for(&call("aa"), Some("ap_1"), "n1", 4), UseOutcome::Found(r) if r.id == "ap_1")
        );
        assert!(
            matches!(l.use_for(&call("aa"), Some("ap_2"), "n1", 5), UseOutcome::Granted(r) if r.id == "ap_2")
        );
        assert_eq!(
            l.list(None, 6)
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["ap_2", "ap_1"]
        );
        assert_eq!(l.forget_ended(700_000), 2);
        assert_eq!(
            l.use_for(&call("aa"), None, "n1", 700_001),
            UseOutcome::None
        );
    }
}
