//! What an operator token may do: the roles, their order and their names.
//! Shared by the token checks (`auth/`) and the store that keeps the tokens.

use std::str::FromStr;

/// What a token holder may do. Ordered: a higher role includes the lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: node status, limits, policy versions, the audit trail.
    Viewer,
    /// A viewer who may also decide approvals.
    Approver,
    /// Everything: pushes and tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role names, for error messages.
pub const ROLES: &str = "admin, approver or viewer";

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "approver" => Ok(Role::Approver),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?}: use {ROLES}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_and_parse() {
        assert!(Role::Admin > Role::Approver && Role::Approver > Role::Viewer);
        for r in [Role::Viewer, Role::Approver, Role::Admin] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        let err = "root".parse::<Role>().expect_err("unknown");
        assert!(err.contains(ROLES), "{err}");
    }
}
