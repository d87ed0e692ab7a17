//! The policy document as written by operators: the serde model.
//!
//! These types are the single description of the format: the JSON Schema
//! (`policy/policy.schema.json`) is generated from them, and the validating
//! reader in [`crate::validate`] builds exactly these values (a test checks that
//! it agrees with serde on every example). Nothing here decides anything; see
//! [`crate::compile`] for the evaluator built from a document.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::classes::RiskClass;

/// A policy file: either one policy document, which applies to every server,
/// or a bundle with one policy per server and the grants (caller identities).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PolicyFile {
    /// `{"servers": {...}, "grants": {...}}`.
    Bundle(BundleDocument),
    /// `{"version": "1", "default": ..., ...}`.
    Policy(Box<PolicyDocument>),
}

/// A bundle: what one sidecar enforces.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleDocument {
    /// The policy of each MCP server, by the server's name in the sidecar's
    /// configuration (`/mcp/<name>`).
    pub servers: BTreeMap<String, PolicyDocument>,
    /// Callers, by grant id. A bearer token whose SHA-256 matches a grant's
    /// `token_sha256` (or, in a bundle as a control plane distributes it,
    /// whose keyed hash matches `token_hmac_sha256`) identifies the call as
    /// that grant's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grants: BTreeMap<String, Grant>,
}

/// One caller's identity and, optionally, its own policies. The token is
/// named by exactly one of `token_sha256` and `token_hmac_sha256`, and every
/// grant of a bundle uses the same one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    {"required": ["token_sha256"]},
    {"required": ["token_hmac_sha256"]}
]))]
pub struct Grant {
    /// Lower-case hex SHA-256 of the caller's bearer token (64 characters):
    /// how policy files name the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", regex(pattern = r"^[0-9a-f]{64}$"))]
    pub token_sha256: Option<String>,
    /// Lower-case hex HMAC-SHA256 of the token's raw SHA-256 digest, keyed
    /// with the control plane's grant key (64 characters): how a control
    /// plane sends the token to sidecars, with the key beside the bundle.
    /// Not for policy files: without the key, nothing can check it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", regex(pattern = r"^[0-9a-f]{64}$"))]
    pub token_hmac_sha256: Option<String>,
    /// Free-form labels, reported with every decision for this grant.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Policies that replace the server's policy for this grant's calls.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policies: BTreeMap<String, PolicyDocument>,
}

/// One policy document (language version 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// The language version; always `"1"`.
    pub version: LanguageVersion,
    /// What happens to a tool that no rule names and no class rule covers.
    pub default: DefaultAction,
    /// `enforce` (the default) or `shadow`: decide and report, but forward every call.
    #[serde(default, skip_serializing_if = "Mode::is_enforce")]
    pub mode: Mode,
    /// Tool names or globs removed from `tools/list` and answered as unknown tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hide: Vec<String>,
    /// A rule applied to every call in addition to the tool's own (typically limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_tools: Option<Rule>,
    /// Rules for tools that no `tools` entry names, by risk class.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<RiskClass, Rule>,
    /// Rules by exact tool name or glob (`*` any run of characters, `?` one character).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, Rule>,
}

/// The policy language version: only `"1"` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LanguageVersion {
    /// Version 1.
    #[serde(rename = "1")]
    V1,
}

/// The action for calls that no rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DefaultAction {
    /// Allow them (still subject to `all_tools`).
    Allow,
    /// Deny them.
    Deny,
}

/// Whether decisions are enforced or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Decisions are enforced.
    #[default]
    Enforce,
    /// Decisions are computed and reported as would-be; every call is forwarded.
    Shadow,
}

impl Mode {
    fn is_enforce(&self) -> bool {
        *self == Mode::Enforce
    }
}

/// What a rule does with a call once its conditions and limits pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Forward the call.
    #[default]
    Allow,
    /// Refuse the call with the rule's `reason`.
    Deny,
    /// Hold the call until a human approves it.
    RequireApproval,
}

impl Action {
    /// The name used in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::RequireApproval => "require_approval",
        }
    }
}

/// A rule: for one tool (or glob), one risk class, or `all_tools`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `allow` (the default), `deny` or `require_approval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Why; shown to the agent when the rule denies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Pins the tool's risk class: the rule under `classes` for it then decides.
    /// Only on `tools` entries, and only alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<RiskClass>,
    /// Rate limits; a call is admitted only if every limit (with `all_tools`') admits it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<Limit>,
    /// Shorthand for one `grant`-scoped limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The call is denied when every condition of any one group holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_if: Vec<ConditionGroup>,
    /// The call is denied unless every condition of every group holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<ConditionGroup>,
    /// How approvals work; only with `"action": "require_approval"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

/// A rate limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// The counter's name. Limits that name the same counter share one budget;
    /// without a name the limit has a counter of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<String>,
    /// The sliding window's length.
    pub window: Window,
    /// Calls admitted in any window of that length (at least 1).
    #[schemars(range(min = 1))]
    pub max: u64,
    /// Who shares the budget (default `grant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// For a fleet-wide limit (scope `grant`, `session` or `global`): what a
    /// sidecar does when its lease has run out and the control plane cannot be
    /// reached (default `fallback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_unavailable: Option<OnUnavailable>,
}

/// What a sidecar does with a fleet-wide limit while it cannot renew its lease.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Count locally against the fallback capacity the control plane last
    /// set (the limit's max divided by the nodes it knew), within the span
    /// after the newest lease that the control plane reserves it for
    /// (`--fallback-horizon`); refuse outside it.
    #[default]
    Fallback,
    /// Refuse every call the limit governs.
    Deny,
    /// Admit every call the limit governs (counted, and reported later).
    Allow,
}

impl OnUnavailable {
    /// The name used in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Fallback => "fallback",
            OnUnavailable::Deny => "deny",
            OnUnavailable::Allow => "allow",
        }
    }
}

/// `{"max": N, "window": W}`: one limit scoped to the grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Calls admitted in any window (at least 1).
    #[schemars(range(min = 1))]
    pub max: u64,
    /// The sliding window's length.
    pub window: Window,
}

/// Who shares a limit's budget.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One budget per caller (grant).
    Grant,
    /// One budget per MCP session (`Mcp-Session-Id`).
    Session,
    /// One budget per sidecar.
    Pod,
    /// One budget for the whole fleet.
    Global,
}

impl Scope {
    /// The name used in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Grant => "grant",
            Scope::Session => "session",
            Scope::Pod => "pod",
            Scope::Global => "global",
        }
    }
}

/// A window length: a named unit or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Window {
    /// `second`, `minute`, `hour` or `day`.
    Named(NamedWindow),
    /// A number of seconds (at least 1).
    Seconds(#[schemars(range(min = 1))] u64),
}

impl Window {
    /// The window's length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Window::Named(NamedWindow::Second) => 1,
            Window::Named(NamedWindow::Minute) => 60,
            Window::Named(NamedWindow::Hour) => 3_600,
            Window::Named(NamedWindow::Day) => 86_400,
            Window::Seconds(s) => s,
        }
    }
}

impl fmt::Display for Window {
    /// "minute", or "90 s".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Window::Named(n) => f.write_str(n.as_str()),
            Window::Seconds(s) => write!(f, "{s} s"),
        }
    }
}

/// The named window lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NamedWindow {
    /// 1 second.
    Second,
    /// 60 seconds.
    Minute,
    /// 3,600 seconds.
    Hour,
    /// 86,400 seconds.
    Day,
}

impl NamedWindow {
    /// The name used in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            NamedWindow::Second => "second",
            NamedWindow::Minute => "minute",
            NamedWindow::Hour => "hour",
            NamedWindow::Day => "day",
        }
    }
}

/// Conditions that must all hold for the group to hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionGroup {
    /// The conditions (at least one).
    pub conditions: Vec<Condition>,
    /// The reason given to the agent when this group denies the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_deny: Option<String>,
}

/// A test on one argument of the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// `args.` then a dotted path into the arguments (`args.options.dry_run`;
    /// a number indexes an array: `args.items.0`).
    #[schemars(regex(pattern = r"^args\.[^.]+(\.[^.]+)*$"))]
    pub path: String,
    /// The comparison.
    pub op: Op,
    /// The operand: any JSON for `eq`/`neq`/`contains`, an array for `in`/`not_in`,
    /// a number for `lt`/`lte`/`gt`/`gte`, a regex string for `regex`,
    /// a boolean (default `true`) for `exists`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

/// Condition operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Equal (numbers compare by value: `1` equals `1.0`).
    Eq,
    /// Present and not equal.
    Neq,
    /// Equal to one of the array's elements.
    In,
    /// Present and equal to none of the array's elements.
    NotIn,
    /// A number less than the operand.
    Lt,
    /// A number at most the operand.
    Lte,
    /// A number greater than the operand.
    Gt,
    /// A number at least the operand.
    Gte,
    /// A string the regex matches (anywhere; anchor with `^…$`).
    Regex,
    /// A string containing the operand, or an array with an element equal to it.
    Contains,
    /// Present (not missing, not null) when the operand is `true` (the default).
    Exists,
}

impl Op {
    /// The name used in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::In => "in",
            Op::NotIn => "not_in",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Regex => "regex",
            Op::Contains => "contains",
            Op::Exists => "exists",
        }
    }
}

/// How a `require_approval` rule's approvals work.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// How long an approval request stays open before it expires (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationText>,
    /// How long the sidecar holds the agent's request open waiting for a quick
    /// decision before answering "pending" (default `0s`: answer at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<DurationText>,
    /// Whether approvers see the call's arguments (default `false`: only
    /// their SHA-256 digest leaves the sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_arguments: Option<bool>,
}

/// A duration written as an integer and a unit: `500ms`, `20s`, `10m`, `2h`, `1d`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct DurationText(#[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)$"))] pub String);

impl DurationText {
    /// The duration, or `None` when the text is not `<digits><unit>`.
    pub fn parse(&self) -> Option<std::time::Duration> {
        parse_duration(&self.0)
    }
}

/// Parses `<digits>(ms|s|m|h|d)`.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }?;
    Some(std::time::Duration::from_millis(millis))
}
