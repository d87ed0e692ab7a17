//! The operator-token and audit methods of `Admin`: create, list and revoke
//! tokens, list the audit trail. The store and the in-memory table change
//! together, under [`Authority::changes`](crate::auth::Authority).

use tollgate_proto::v1::{
    self as pb, CreateTokenRequest, CreateTokenResponse, ListAuditResponse, ListTokensResponse,
    TokenInfo,
};
use tonic::Status;

use super::ControlPlane;
use super::authorize::Action;
use crate::auth::{Found, Principal, token};
use crate::role::Role;
use crate::status::unix_now;
use crate::store::StoredToken;

/// The most audit entries one listing returns (the newest).
pub(super) const AUDIT_LIMIT: usize = 10_000;

/// A token's name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
fn check_name(name: &str) -> Result<(), Status> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "token name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-'"
        )))
    }
}

fn info(t: &StoredToken) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role.as_str().to_owned(),
        created_at: t.created_at,
        created_by: t.created_by.clone(),
        revoked_at: t.revoked_at.unwrap_or(0),
    }
}

impl ControlPlane {
    /// Issues a token for `who`; audited whether it succeeds or not.
    pub(super) async fn create_token(
        &self,
        who: &Principal,
        req: CreateTokenRequest,
    ) -> Result<CreateTokenResponse, Status> {
        let created = self.issue(who, &req).await;
        match &created {
            Ok(r) => {
                let detail = r
                    .info
                    .as_ref()
                    .map(|i| format!("role {}, id {}", i.role, i.id))
                    .unwrap_or_default();
                tracing::info!(by = %who.name, name = %req.name, role = %req.role, "operator token created");
                self.audit(who, Action::TokenCreate, &req.name, "created", &detail)
                    .await;
            }
            Err(e) => {
                self.audit(who, Action::TokenCreate, &req.name, "refused", e.message())
                    .await
            }
        }
        created
    }

    async fn issue(
        &self,
        who: &Principal,
        req: &CreateTokenRequest,
    ) -> Result<CreateTokenResponse, Status> {
        check_name(&req.name)?;
        let role: Role = req.role.parse().map_err(Status::invalid_argument)?;
        let issued = token::issue()
            .map_err(|e| Status::internal(format!("no randomness for a token: {e}")))?;
        let stored = StoredToken {
            id: issued.id,
            name: req.name.clone(),
            role,
            salt: issued.salt,
            hash: issued.hash,
            created_at: unix_now(),
            created_by: who.name.clone(),
            revoked_at: None,
        };
        let _one_change = self.auth.changes.lock().await;
        let to_store = stored.clone();
        self.store(move |s| s.add_token(&to_store)).await?;
        self.auth.insert(&stored);
        Ok(CreateTokenResponse {
            token: issued.token,
            info: Some(info(&stored)),
        })
    }

    pub(super) async fn list_tokens(&self) -> Result<ListTokensResponse, Status> {
        let tokens = self.store(|s| s.tokens()).await?;
        Ok(ListTokensResponse {
            tokens: tokens.iter().map(info).collect(),
        })
    }

    /// Revokes the live token named `name_or_id`, or the token with that
    /// id; audited whether it succeeds or not.
    pub(super) async fn revoke_token(
        &self,
        who: &Principal,
        name_or_id: &str,
    ) -> Result<TokenInfo, Status> {
        let revoked = self.revoke(name_or_id).await;
        match &revoked {
            Ok(t) => {
                tracing::info!(by = %who.name, name = %t.name, id = %t.id, "operator token revoked");
                self.audit(
                    who,
                    Action::TokenRevoke,
                    &t.name,
                    "revoked",
                    &format!("id {}", t.id),
                )
                .await;
            }
            Err(e) => {
                self.audit(who, Action::TokenRevoke, name_or_id, "refused", e.message())
                    .await
            }
        }
        revoked
    }

    async fn revoke(&self, name_or_id: &str) -> Result<TokenInfo, Status> {
        let _one_change = self.auth.changes.lock().await;
        let Some(Found {
            id,
            name,
            role,
            revoked,
        }) = self.auth.find(name_or_id)
        else {
            return Err(Status::not_found(format!(
                "no live token is named {name_or_id:?} and no token has that id; \
                 `tollgate token list` shows them"
            )));
        };
        if revoked {
            return Err(Status::failed_precondition(format!(
                "token {name:?} (id {id}) is already revoked"
            )));
        }
        if role == Role::Admin && self.auth.live_admins() <= 1 {
            return Err(Status::failed_precondition(format!(
                "token {name:?} is the last live admin token: nobody could create or revoke \
                 tokens without it; create another admin token first \
                 (`tollgate token create --role admin --name NAME`)"
            )));
        }
        let at = unix_now();
        let key = id.clone();
        if !self.store(move |s| s.revoke_token(&key, at)).await? {
            return Err(Status::failed_precondition(format!(
                "token {name:?} (id {id}) is already revoked"
            )));
        }
        self.auth.revoke(&id);
        let tokens = self.store(|s| s.tokens()).await?;
        tokens
            .iter()
            .find(|t| t.id == id)
            .map(info)
            .ok_or_else(|| Status::internal(format!("token {id} vanished from the store")))
    }

    pub(super) async fn list_audit(&self, since: i64) -> Result<ListAuditResponse, Status> {
        let entries = self
            .store(move |s| s.audit_since(since, AUDIT_LIMIT))
            .await?;
        Ok(ListAuditResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    at: e.at,
                    actor: e.actor,
                    action: e.action,
                    target: e.target,
                    outcome: e.outcome,
                    detail: e.detail,
                })
                .collect(),
        })
    }
}
