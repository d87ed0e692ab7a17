//! The approval page's templates and what they show of a request. The
//! templates (controlplane/templates/) escape every value they print.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use askama::Template;
use tollgate_policy::approvals::{ApprovalRecord, ApprovalState};

/// The signed-in approver, as the header shows them.
pub struct SignedIn {
    pub name: String,
    pub role: String,
    pub csrf: String,
}

/// One request, ready to show.
pub struct Shown {
    pub id: String,
    pub state: &'static str,
    pub pending: bool,
    pub grant: String,
    pub server: String,
    pub tool: String,
    pub node: String,
    pub session: String,
    pub policy_version: String,
    pub rule: String,
    pub created: String,
    pub expires: String,
    pub expires_in: String,
    pub decided_by: String,
    pub decided: String,
    pub reason: String,
    pub used_by: String,
    pub used: String,
    /// Pretty-printed arguments, or empty when the policy shows only the digest.
    pub arguments: String,
    pub digest: String,
}

impl Shown {
    pub fn new(r: &ApprovalRecord, now_ms: i64) -> Self {
        let open = matches!(r.state, ApprovalState::Pending | ApprovalState::Approved);
        Shown {
            id: r.id.clone(),
            state: r.state.as_str(),
            pending: r.state == ApprovalState::Pending,
            grant: r.call.grant.clone(),
            server: r.call.server.clone(),
            tool: r.call.tool.clone(),
            node: r.node.clone(),
            session: r.session.clone(),
            policy_version: r.policy_version.clone(),
            rule: r.rule.clone(),
            created: when(r.created_ms),
            expires: when(r.expires_ms),
            expires_in: if open && r.expires_ms > now_ms {
                format!("in {}", span(r.expires_ms - now_ms))
            } else {
                String::new()
            },
            decided_by: r.decided_by.clone(),
            decided: when(r.decided_ms),
            reason: r.reason.clone(),
            used_by: r.used_by.clone(),
            used: when(r.used_ms),
            arguments: pretty(&r.arguments_json),
            digest: r.call.arguments_sha256.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub signed_in: Option<SignedIn>,
    pub error: Option<String>,
    pub next: String,
}

#[derive(Template)]
#[template(path = "approval.html")]
pub struct ApprovalPage {
    pub signed_in: Option<SignedIn>,
    pub a: Shown,
    pub can_decide: bool,
    pub message: Option<String>,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "list.html")]
pub struct ListPage {
    pub signed_in: Option<SignedIn>,
    pub rows: Vec<Shown>,
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub signed_in: Option<SignedIn>,
    pub heading: String,
    pub text: String,
}

/// The page's stylesheet (served at `/page.css`: the pages allow no inline style).
pub const CSS: &str = include_str!("../../../templates/page.css");

/// Unix milliseconds as RFC 3339 (UTC, seconds); empty for 0.
fn when(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A duration in words: `42 s`, `9 min`, `3 h`.
fn span(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        ..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// Arguments' canonical JSON, indented for reading (as stored if it is not JSON).
fn pretty(json: &str) -> String {
    if json.is_empty() {
        return String::new();
    }
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| json.to_owned())
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_policy::approvals::CallKey;

    fn hostile() -> ApprovalRecord {
        ApprovalRecord {
            id: "ap_abcdefghijklmnopqrstuvwxyz".into(),
            call: CallKey {
                grant: "ci\"><script>alert(1)</script>".into(),
                server: "files".into(),
                tool: "<img src=x onerror=alert(2)>".into(),
                arguments_sha256: "ab".repeat(32),
            },
            node: "pod-a".into(),
            session: String::new(),
            arguments_json: r#"{"path":"</pre><script>alert(3)</script>"}"#.into(),
            policy_version: "v1".into(),
            rule: "/tools/x".into(),
            created_ms: 1_000,
            expires_ms: 601_000,
            state: ApprovalState::Pending,
            reason: String::new(),
            decided_by: String::new(),
            decided_ms: 0,
            used_by: String::new(),
            used_ms: 0,
        }
    }

    #[test]
    fn every_value_a_node_sent_is_escaped() {
        let page = ApprovalPage {
            signed_in: Some(SignedIn {
                name: "alice".into(),
                role: "approver".into(),
                csrf: "c".repeat(64),
            }),
            a: Shown::new(&hostile(), 2_000),
            can_decide: true,
            message: None,
            error: None,
        };
        let html = page.render().expect("renders");
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains("&#60;img src=x onerror=alert(2)&#62;"),
            "{html}"
        );
        assert!(
            html.contains("id=\"approve\""),
            "a pending request offers Approve"
        );
        assert!(
            html.contains(&"c".repeat(64)),
            "the form carries the CSRF token"
        );
    }

    #[test]
    fn spans_and_times_read_well() {
        assert_eq!(span(42_000), "42 s");
        assert_eq!(span(540_000), "9 min");
        assert_eq!(span(3 * 3_600_000), "3 h");
        assert_eq!(when(0), "");
        assert_eq!(when(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(pretty(""), "");
        assert_eq!(pretty("{\"a\":1}"), "{\n  \"a\": 1\n}");
        assert_eq!(pretty("not json"), "not json");
    }
}
