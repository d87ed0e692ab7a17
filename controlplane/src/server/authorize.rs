//! Who may call each admin method, and the audit trail of what operators
//! did. Every method names the role it needs at its top
//! ([`ControlPlane::authorize`]); a valid token holder refused for their
//! role is audited, an unauthenticated caller only logged (anyone could
//! fill the trail otherwise).

use tonic::{Request, Status};

use super::ControlPlane;
use crate::auth::{AuthError, Principal};
use crate::role::Role;
use crate::status::unix_now;
use crate::store::AuditEntry;

/// What an operator asks the admin API to do: the CLI command that does it
/// (named in refusals) and the action recorded in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    PolicyPush,
    PolicyRead,
    Status,
    Limits,
    TokenCreate,
    TokenList,
    TokenRevoke,
    AuditList,
    ApprovalsRead,
    ApprovalDecide,
    RolloutStart,
    RolloutAct,
    RolloutRead,
}

impl Action {
    pub(super) fn command(self) -> &'static str {
        match self {
            Action::PolicyPush => "policy push",
            Action::PolicyRead => "policy versions|show|diff",
            Action::Status => "status",
            Action::Limits => "limits",
            Action::TokenCreate => "token create",
            Action::TokenList => "token list",
            Action::TokenRevoke => "token revoke",
            Action::AuditList => "audit",
            Action::ApprovalsRead => "approvals list",
            Action::ApprovalDecide => "approvals approve|deny",
            Action::RolloutStart => "rollout start",
            Action::RolloutAct => "rollout pause|resume|promote|abort|rollback",
            Action::RolloutRead => "rollout status|list",
        }
    }

    pub(super) fn audited_as(self) -> &'static str {
        match self {
            Action::PolicyPush => "policy.push",
            Action::PolicyRead => "policy.read",
            Action::Status => "status.read",
            Action::Limits => "limits.read",
            Action::TokenCreate => "token.create",
            Action::TokenList => "token.list",
            Action::TokenRevoke => "token.revoke",
            Action::AuditList => "audit.read",
            Action::ApprovalsRead => "approval.read",
            Action::ApprovalDecide => "approval.decide",
            Action::RolloutStart => "rollout.start",
            Action::RolloutAct => "rollout.act",
            Action::RolloutRead => "rollout.read",
        }
    }
}

impl ControlPlane {
    /// The caller of `request` if its token has at least role `need` for
    /// `action`; else UNAUTHENTICATED or PERMISSION_DENIED. A refusal for
    /// the role is audited with `target` (what the call would have changed).
    pub(super) async fn authorize<T>(
        &self,
        request: &Request<T>,
        need: Role,
        action: Action,
        target: &str,
    ) -> Result<Principal, Status> {
        let e = match self.auth.check(request.metadata(), need, action.command()) {
            Ok(who) => return Ok(who),
            Err(e) => e,
        };
        if let AuthError::Forbidden { name, has, .. } = &e {
            tracing::warn!(token = %name, role = %has, action = action.audited_as(), "refused: role too low");
            let who = Principal {
                name: name.clone(),
                role: *has,
            };
            let outcome = format!("denied: needs role {need}");
            self.audit(&who, action, target, &outcome, &format!("token role {has}"))
                .await;
        } else {
            let peer = request
                .remote_addr()
                .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
            tracing::warn!(%peer, action = action.audited_as(), error = %e, "unauthenticated admin call");
        }
        Err(e.into())
    }

    /// Appends to the audit trail. The action already happened: a store
    /// failure here is logged, not returned.
    pub(super) async fn audit(
        &self,
        who: &Principal,
        action: Action,
        target: &str,
        outcome: &str,
        detail: &str,
    ) {
        let entry = AuditEntry {
            at: unix_now(),
            actor: who.name.clone(),
            action: action.audited_as().to_owned(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
            detail: detail.to_owned(),
        };
        let action = entry.action.clone();
        if let Err(e) = self.store(move |s| s.record_audit(&entry)).await {
            tracing::error!(%action, error = %e.message(), "cannot record an operator action in the audit trail");
        }
    }
}
