//! Who may call the admin API: operator tokens with a role each, checked
//! on every call against an in-memory table of the store's tokens (so a
//! check never waits on SQLite, and a revocation holds from the next call).
//!
//! Roles nest: `admin` may do all an `approver` may, who may do all a
//! `viewer` may. The table is loaded once at start ([`Authority::new`]) and
//! changed only together with the store ([`Authority::insert`],
//! [`Authority::revoke`]).

pub mod bootstrap;
pub mod token;

use std::collections::HashMap;
use std::sync::RwLock;

use tonic::metadata::MetadataMap;

use crate::role::Role;
use crate::store::StoredToken;

/// Who made a call: the token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// How an operator gets a token, said whenever a call has none that works.
pub const HOW_TO_GET_A_TOKEN: &str = "pass --token-file or set TOLLGATE_TOKEN; an admin creates \
     one with `tollgate token create --role viewer --name NAME`; the first admin token is in \
     admin-token in the control plane's --data directory";

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no operator token: {HOW_TO_GET_A_TOKEN}")]
    Missing,
    #[error(
        "the operator token is malformed (expected `authorization: Bearer {}`): {HOW_TO_GET_A_TOKEN}",
        token::SHAPE
    )]
    Malformed,
    #[error(
        "unknown operator token (id {id}): it was not issued by this control plane or its \
         secret is wrong; {HOW_TO_GET_A_TOKEN}"
    )]
    Unknown { id: String },
    #[error(
        "operator token {name:?} was revoked; ask an admin for a new one ({HOW_TO_GET_A_TOKEN})"
    )]
    Revoked { name: String },
    #[error(
        "`{command}` needs role {need}; token {name:?} has role {has}; ask an admin for a token \
         with role {need}"
    )]
    Forbidden {
        command: &'static str,
        need: Role,
        name: String,
        has: Role,
    },
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Forbidden { .. } => tonic::Status::permission_denied(e.to_string()),
            _ => tonic::Status::unauthenticated(e.to_string()),
        }
    }
}

/// One token as checked: what is needed to verify it, and who it names.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    role: Role,
    salt: Vec<u8>,
    hash: Vec<u8>,
    revoked: bool,
}

/// A token found by [`Authority::find`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub revoked: bool,
}

/// The live table of operator tokens, by id. A panic while it was locked
/// cannot leave it half-changed (each change is one map operation), so a
/// poisoned lock is used as is.
#[derive(Debug, Default)]
pub struct Authority {
    tokens: RwLock<HashMap<String, Entry>>,
    /// Token changes (create, revoke) one at a time, so the store and the
    /// table change in the same order.
    pub changes: tokio::sync::Mutex<()>,
}

impl Authority {
    /// The table for `tokens` (as the store lists them).
    pub fn new(tokens: impl IntoIterator<Item = StoredToken>) -> Self {
        let authority = Self::default();
        for t in tokens {
            authority.insert(&t);
        }
        authority
    }

    /// Checks the `authorization: Bearer <token>` in `metadata` and that its
    /// role includes `need`; `command` names the refused action for the
    /// operator (`policy push`).
    pub fn check(
        &self,
        metadata: &MetadataMap,
        need: Role,
        command: &'static str,
    ) -> Result<Principal, AuthError> {
        let header = metadata
            .get("authorization")
            .ok_or(AuthError::Missing)?
            .to_str()
            .map_err(|_| AuthError::Malformed)?;
        let (scheme, text) = header.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        self.check_token(text.trim(), need, command)
            .map(|(_, principal)| principal)
    }

    /// Checks a token's text (`tgt_…`) and that its role includes `need`;
    /// returns the token's id (to look it up again with [`Authority::live`])
    /// and who it names.
    pub fn check_token(
        &self,
        text: &str,
        need: Role,
        command: &'static str,
    ) -> Result<(String, Principal), AuthError> {
        let presented = token::parse(text).ok_or(AuthError::Malformed)?;
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        let unknown = || AuthError::Unknown {
            id: presented.id.to_owned(),
        };
        let entry = tokens.get(presented.id).ok_or_else(unknown)?;
        if !token::verify(&entry.salt, &entry.hash, presented.secret) {
            return Err(unknown());
        }
        if entry.revoked {
            return Err(AuthError::Revoked {
                name: entry.name.clone(),
            });
        }
        if entry.role < need {
            return Err(AuthError::Forbidden {
                command,
                need,
                name: entry.name.clone(),
                has: entry.role,
            });
        }
        Ok((
            presented.id.to_owned(),
            Principal {
                name: entry.name.clone(),
                role: entry.role,
            },
        ))
    }

    /// Who token `id` names now, unless it is unknown or revoked: a login
    /// made with it holds only while this answers.
    pub fn live(&self, id: &str) -> Option<Principal> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens.get(id).filter(|e| !e.revoked).map(|e| Principal {
            name: e.name.clone(),
            role: e.role,
        })
    }

    /// Adds (or replaces) a token as stored.
    pub fn insert(&self, t: &StoredToken) {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        tokens.insert(
            t.id.clone(),
            Entry {
                name: t.name.clone(),
                role: t.role,
                salt: t.salt.clone(),
                hash: t.hash.clone(),
                revoked: t.revoked_at.is_some(),
            },
        );
    }

    /// Refuses token `id` from now on.
    pub fn revoke(&self, id: &str) {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = tokens.get_mut(id) {
            entry.revoked = true;
        }
    }

    /// The live token named `name_or_id`, or any token with that id.
    pub fn find(&self, name_or_id: &str) -> Option<Found> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens
            .iter()
            .find(|(_, e)| !e.revoked && e.name == name_or_id)
            .or_else(|| tokens.get_key_value(name_or_id))
            .map(|(id, e)| Found {
                id: id.clone(),
                name: e.name.clone(),
                role: e.role,
                revoked: e.revoked,
            })
    }

    /// How many live tokens have role admin.
    pub fn live_admins(&self) -> usize {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens
            .values()
            .filter(|e| !e.revoked && e.role == Role::Admin)
            .count()
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
