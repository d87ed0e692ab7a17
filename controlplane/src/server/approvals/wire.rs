//! Between `tollgate.v1` approval messages and the ledger's own types
//! (shared by the nodes' stream and the admin API).

use tollgate_policy::approvals::{ApprovalRecord, ApprovalState, CallKey};
use tollgate_proto::v1 as pb;

/// The wire form of `state`.
pub fn state_to_proto(state: ApprovalState) -> pb::ApprovalState {
    match state {
        ApprovalState::Pending => pb::ApprovalState::Pending,
        ApprovalState::Approved => pb::ApprovalState::Approved,
        ApprovalState::Denied => pb::ApprovalState::Denied,
        ApprovalState::Expired => pb::ApprovalState::Expired,
        ApprovalState::Used => pb::ApprovalState::Used,
    }
}

/// The ledger's state for a wire value; `None` for UNSPECIFIED or a value
/// this control plane does not know.
pub fn state_from_proto(value: i32) -> Option<ApprovalState> {
    match pb::ApprovalState::try_from(value).ok()? {
        pb::ApprovalState::Unspecified => None,
        pb::ApprovalState::Pending => Some(ApprovalState::Pending),
        pb::ApprovalState::Approved => Some(ApprovalState::Approved),
        pb::ApprovalState::Denied => Some(ApprovalState::Denied),
        pb::ApprovalState::Expired => Some(ApprovalState::Expired),
        pb::ApprovalState::Used => Some(ApprovalState::Used),
    }
}

/// A new pending request from `node` (the stream's proved identity, which
/// replaces whatever the message says).
pub fn request_to_record(r: pb::ApprovalRequest, node: &str) -> ApprovalRecord {
    ApprovalRecord {
        id: r.id,
        call: CallKey {
            grant: r.grant,
            server: r.server,
            tool: r.tool,
            arguments_sha256: r.arguments_sha256,
        },
        node: node.to_owned(),
        session: r.session,
        arguments_json: r.arguments_json,
        policy_version: r.policy_version,
        rule: r.rule,
        created_ms: r.created_unix_ms,
        expires_ms: r.expires_unix_ms,
        state: ApprovalState::Pending,
        reason: String::new(),
        decided_by: String::new(),
        decided_ms: 0,
        used_by: String::new(),
        used_ms: 0,
    }
}

/// A request and where it stands, as sent to nodes and operators.
pub fn record_to_proto(r: ApprovalRecord) -> pb::Approval {
    pb::Approval {
        state: state_to_proto(r.state).into(),
        reason: r.reason,
        decided_by: r.decided_by,
        decided_unix_ms: r.decided_ms,
        used_by: r.used_by,
        used_unix_ms: r.used_ms,
        request: Some(pb::ApprovalRequest {
            id: r.id,
            node: r.node,
            server: r.call.server,
            grant: r.call.grant,
            session: r.session,
            tool: r.call.tool,
            arguments_sha256: r.call.arguments_sha256,
            arguments_json: r.arguments_json,
            policy_version: r.policy_version,
            rule: r.rule,
            created_unix_ms: r.created_ms,
            expires_unix_ms: r.expires_ms,
        }),
    }
}

/// The call a retry names.
pub fn use_to_call(u: &pb::UseApproval) -> CallKey {
    CallKey {
        grant: u.grant.clone(),
        server: u.server.clone(),
        tool: u.tool.clone(),
        arguments_sha256: u.arguments_sha256.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_the_wire_and_the_node_is_the_streams() {
        let sent = pb::ApprovalRequest {
            id: "ap_x".into(),
            node: "someone-else".into(),
            server: "files".into(),
            grant: "ci".into(),
            session: "s1".into(),
            tool: "delete".into(),
            arguments_sha256: "ab".into(),
            arguments_json: "{}".into(),
            policy_version: "3".into(),
            rule: "/rules/0".into(),
            created_unix_ms: 1,
            expires_unix_ms: 2,
        };
        let record = request_to_record(sent.clone(), "n1");
        assert_eq!(record.node, "n1");
        let back = record_to_proto(record);
        assert_eq!(
            back.request,
            Some(pb::ApprovalRequest {
                node: "n1".into(),
                ..sent
            })
        );
        assert_eq!(back.state, pb::ApprovalState::Pending as i32);
        for s in [
            ApprovalState::Pending,
            ApprovalState::Approved,
            ApprovalState::Denied,
            ApprovalState::Expired,
            ApprovalState::Used,
        ] {
            assert_eq!(state_from_proto(state_to_proto(s) as i32), Some(s));
        }
        assert_eq!(state_from_proto(0), None);
        assert_eq!(state_from_proto(99), None);
    }
}
