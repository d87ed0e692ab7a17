//! Deciding one call.
//!
//! The order (ARCHITECTURE.md §3): hidden → rule lookup (exact name, else the most
//! specific glob, else the tool's risk class, else the default) → the rule's
//! `deny` → `all_tools`' `deny` → `require`/`deny_if` (the rule's, then
//! `all_tools`') → limits (the rule's and `all_tools`', all-or-nothing) →
//! `require_approval` → allow. Every decision names the rule that made it by
//! its JSON pointer into the file.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::classes::{Annotations, RiskClass, classify};
use crate::compile::{
    ApprovalSpec, Bundle, CompiledGroup, CompiledLimit, CompiledPolicy, CompiledRule,
};
use crate::conditions::{ArgsView, Arguments};
use crate::document::{Action, DefaultAction, Mode, Scope, Window};
use crate::limits::{Admission, Charge, Counters};

/// One `tools/call` to decide.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The MCP server's name (as configured in the sidecar).
    pub server: &'a str,
    /// The tool's name, as decoded from the request.
    pub tool: &'a str,
    /// The call's `arguments`.
    pub arguments: Arguments<'a>,
    /// Who is calling: the grant id (or the sidecar's node id without grants).
    pub grant: &'a str,
    /// The MCP session, if the transport has one.
    pub session: Option<&'a str>,
    /// The tool's annotations from the server's latest `tools/list`.
    pub annotations: Option<&'a Annotations>,
}

impl<'a> Call<'a> {
    /// A call of `tool` on `server` with no arguments, grant, session or annotations.
    pub fn new(server: &'a str, tool: &'a str) -> Self {
        Self {
            server,
            tool,
            arguments: Arguments::None,
            grant: "",
            session: None,
            annotations: None,
        }
    }
}

/// What policy says about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Forward it.
    Allow,
    /// Refuse it, with a reason.
    Deny,
    /// Refuse it until a limit admits it again.
    RateLimited,
    /// Hold it for a human's approval.
    RequireApproval,
    /// Answer as if the tool did not exist.
    Hidden,
}

impl Outcome {
    /// `allow`, `deny`, `rate_limited`, `require_approval` or `hidden`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::RateLimited => "rate_limited",
            Outcome::RequireApproval => "require_approval",
            Outcome::Hidden => "hidden",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `tools/list` shows a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Listed.
    Listed,
    /// Removed: `hide` names it.
    Hidden,
    /// Removed: every call of it would be denied.
    Denied,
}

/// The limit that refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitInfo {
    /// The counter's id.
    pub counter: Arc<str>,
    /// Calls admitted per window.
    pub max: u64,
    /// The window.
    pub window: Window,
    /// Who shares the budget.
    pub scope: Scope,
}

/// A decision: built once, passed on to the answer, the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the policy says. In shadow mode this is the would-be outcome; see
    /// [`Decision::enforced`].
    pub outcome: Outcome,
    /// The JSON pointer of the rule that decided, or `(default deny)` /
    /// `(default allow)`.
    pub rule: Arc<str>,
    /// Why, for the agent (deny, rate limit).
    pub reason: Option<Arc<str>>,
    /// When a rate-limited call would be admitted.
    pub retry_after: Option<Duration>,
    /// The refusing limit, when rate-limited.
    pub limit: Option<LimitInfo>,
    /// How approval works, when approval is required.
    pub approval: Option<ApprovalSpec>,
    /// The risk class, when a class rule (or the default after a class lookup) decided.
    pub class: Option<RiskClass>,
    /// True when the policy is in shadow mode: the call goes through regardless.
    pub shadow: bool,
}

impl Decision {
    fn new(outcome: Outcome, rule: &Arc<str>) -> Self {
        Self {
            outcome,
            rule: Arc::clone(rule),
            reason: None,
            retry_after: None,
            limit: None,
            approval: None,
            class: None,
            shadow: false,
        }
    }

    /// What happens to the call: the outcome, or `Allow` in shadow mode.
    pub fn enforced(&self) -> Outcome {
        if self.shadow {
            Outcome::Allow
        } else {
            self.outcome
        }
    }
}

thread_local! {
    /// Reused buffer for glob matches, so a lookup allocates nothing.
    static GLOB_MATCHES: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

impl Bundle {
    /// Decides one call at time `now` (since the counters' epoch), charging
    /// `counters` if the call is admitted by its limits.
    pub fn decide(&self, call: &Call<'_>, now: Duration, counters: &dyn Counters) -> Decision {
        match self.policy_for(call.server, call.grant) {
            Some(policy) => policy.decide(call, now, counters),
            None => {
                let mut d = Decision::new(Outcome::Deny, &NO_POLICY.with(Arc::clone));
                d.reason = Some(
                    format!(
                        "the policy bundle has no policy for server `{}`; add it under `/servers`",
                        call.server
                    )
                    .into(),
                );
                d
            }
        }
    }
}

impl Bundle {
    /// [`CompiledPolicy::listing`] for `grant`'s view of `server`; a server
    /// without a policy lists nothing.
    pub fn listing(
        &self,
        server: &str,
        grant: &str,
        tool: &str,
        annotations: Option<&Annotations>,
    ) -> Listing {
        match self.policy_for(server, grant) {
            Some(p) => p.listing(tool, annotations),
            None => Listing::Denied,
        }
    }
}

thread_local! {
    static NO_POLICY: Arc<str> = Arc::from("(no policy for server)");
}

/// A tool name lower-cased (ASCII) without allocating for names of usual length.
struct LowerName {
    buf: [u8; 128],
    heap: Option<String>,
    len: usize,
}

impl LowerName {
    fn new(name: &str) -> Self {
        let mut out = Self {
            buf: [0; 128],
            heap: None,
            len: name.len(),
        };
        if name.len() <= out.buf.len() {
            out.buf[..name.len()].copy_from_slice(name.as_bytes());
            out.buf[..name.len()].make_ascii_lowercase();
        } else {
            out.heap = Some(name.to_ascii_lowercase());
        }
        out
    }

    fn as_str(&self) -> &str {
        match &self.heap {
            Some(s) => s,
            // ASCII lower-casing keeps UTF-8 valid; the fallback is never taken.
            None => std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default(),
        }
    }
}

impl CompiledPolicy {
    /// Decides one call against this policy.
    pub fn decide(&self, call: &Call<'_>, now: Duration, counters: &dyn Counters) -> Decision {
        let mut d = self.decide_enforced(call, now, counters);
        d.shadow = self.mode == Mode::Shadow;
        d
    }

    #[inline(always)]
    fn decide_enforced(&self, call: &Call<'_>, now: Duration, counters: &dyn Counters) -> Decision {
        // Most tool names are lower case already: look them up as they are.
        let lower;
        let name = if call.tool.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = LowerName::new(call.tool);
            lower.as_str()
        } else {
            call.tool
        };

        if let Some(pointer) = self.hidden(name) {
            return Decision::new(Outcome::Hidden, pointer);
        }

        let (rule, class) = self.lookup(name, call.tool, call.annotations);
        let Some(rule) = rule else {
            let outcome = match self.default {
                DefaultAction::Deny => Outcome::Deny,
                DefaultAction::Allow => Outcome::Allow,
            };
            let mut d = Decision::new(outcome, &self.default_pointer);
            d.class = class;
            if outcome == Outcome::Deny {
                d.reason = Some(Arc::clone(&self.default_reason));
                return d;
            }
            return self.apply(None, d, call, now, counters);
        };
        let mut d = Decision::new(Outcome::Allow, &rule.pointer);
        d.class = class;
        self.apply(Some(rule), d, call, now, counters)
    }

    /// Everything after the lookup: deny, conditions, limits, approval.
    #[inline(always)]
    fn apply(
        &self,
        rule: Option<&CompiledRule>,
        mut d: Decision,
        call: &Call<'_>,
        now: Duration,
        counters: &dyn Counters,
    ) -> Decision {
        let all = self.all_tools.map(|i| &self.rules[i]);
        let rules = || rule.into_iter().chain(all);

        for r in rules() {
            if r.action == Action::Deny {
                d.outcome = Outcome::Deny;
                d.rule = Arc::clone(&r.pointer);
                d.reason = Some(
                    r.reason
                        .clone()
                        .unwrap_or_else(|| "the rule denies this tool".into()),
                );
                return d;
            }
        }

        if rules().any(|r| !r.deny_if.is_empty() || !r.require.is_empty()) {
            let args = ArgsView::new(call.arguments);
            if !args.readable() {
                let first = rules()
                    .flat_map(|r| r.deny_if.iter().chain(&r.require))
                    .next()
                    .map(|g| Arc::clone(&g.pointer));
                d.outcome = Outcome::Deny;
                d.rule = first.unwrap_or_else(|| Arc::clone(&d.rule));
                d.reason = Some(
                    "the call's arguments could not be read (invalid JSON or nested too deeply), \
                     so the rule's conditions cannot be checked"
                        .into(),
                );
                return d;
            }
            for r in rules() {
                if let Some((pointer, reason)) = check_conditions(r, &args) {
                    d.outcome = Outcome::Deny;
                    d.rule = pointer;
                    d.reason = Some(reason);
                    return d;
                }
            }
        }

        let count: usize = rules().map(|r| r.limits.len()).sum();
        if count > 0 {
            let charge = |l| charge_for(l, call);
            let admission = if count == 1 {
                let one = rules().flat_map(|r| r.limits.first()).next();
                match one {
                    Some(l) => counters.acquire(&[charge(l)], now),
                    None => Admission::Admitted,
                }
            } else {
                let charges: SmallVec<[Charge<'_>; 4]> =
                    rules().flat_map(|r| r.limits.iter()).map(charge).collect();
                counters.acquire(&charges, now)
            };
            if let Admission::Refused { index, retry_after } = admission {
                let Some(l) = rules().flat_map(|r| r.limits.iter()).nth(index) else {
                    return d;
                };
                d.outcome = Outcome::RateLimited;
                d.rule = Arc::clone(&l.pointer);
                d.retry_after = Some(retry_after);
                d.reason = Some(
                    format!(
                        "{} call{} per {} for {} (counter `{}`, scope {})",
                        l.max,
                        if l.max == 1 { "" } else { "s" },
                        l.window,
                        call.tool,
                        l.counter,
                        l.scope.as_str()
                    )
                    .into(),
                );
                d.limit = Some(LimitInfo {
                    counter: Arc::clone(&l.counter),
                    max: l.max,
                    window: l.window,
                    scope: l.scope,
                });
                return d;
            }
        }

        if let Some(r) = rules().find(|r| r.action == Action::RequireApproval) {
            d.outcome = Outcome::RequireApproval;
            d.rule = Arc::clone(&r.pointer);
            d.approval = r.approval;
            d.reason = r.reason.clone();
            return d;
        }
        d
    }

    #[inline(always)]
    fn hidden(&self, name: &str) -> Option<&Arc<str>> {
        if let Some(p) = self.hidden_exact.get(name) {
            return Some(p);
        }
        if self.hidden_globs.is_empty() {
            return None;
        }
        GLOB_MATCHES.with_borrow_mut(|found| {
            found.clear();
            self.hidden_globs.matches_into(name, found);
            found.iter().min().map(|&i| &self.hidden_glob_pointers[i])
        })
    }

    /// The rule for a tool and, when classes were consulted, its class.
    #[inline(always)]
    fn lookup(
        &self,
        name: &str,
        tool: &str,
        annotations: Option<&Annotations>,
    ) -> (Option<&CompiledRule>, Option<RiskClass>) {
        let by_name = self.exact.get(name).copied().or_else(|| {
            if self.globs.is_empty() {
                return None;
            }
            // Globs were added most specific first.
            GLOB_MATCHES
                .with_borrow_mut(|found| self.globs.best(name, found))
                .map(|i| self.glob_rules[i])
        });
        match by_name.map(|i| &self.rules[i]) {
            Some(rule) => match rule.pinned_class {
                None => (Some(rule), None),
                Some(class) => (self.class_rule(class), Some(class)),
            },
            None => {
                let class = classify(tool, annotations);
                (self.class_rule(class), Some(class))
            }
        }
    }

    /// Whether `tools/list` shows the tool: not when hidden, nor when every
    /// call of it would be denied (its rule denies, `all_tools` denies, or no
    /// rule covers it and the default is deny). Tools that need approval or
    /// have limits or conditions stay listed. In shadow mode every tool stays.
    pub fn listing(&self, tool: &str, annotations: Option<&Annotations>) -> Listing {
        if self.mode == Mode::Shadow {
            return Listing::Listed;
        }
        let lower = LowerName::new(tool);
        if self.hidden(lower.as_str()).is_some() {
            return Listing::Hidden;
        }
        let all_deny = self
            .all_tools
            .is_some_and(|i| self.rules[i].action == Action::Deny);
        match self.lookup(lower.as_str(), tool, annotations).0 {
            _ if all_deny => Listing::Denied,
            None if self.default == DefaultAction::Deny => Listing::Denied,
            Some(rule) if rule.action == Action::Deny => Listing::Denied,
            _ => Listing::Listed,
        }
    }

    fn class_rule(&self, class: RiskClass) -> Option<&CompiledRule> {
        self.classes[class as usize].map(|i| &self.rules[i])
    }
}

fn charge_for<'a>(l: &'a CompiledLimit, call: &Call<'a>) -> Charge<'a> {
    Charge {
        counter: &l.counter,
        scope: l.scope,
        server: call.server,
        key: match l.scope {
            Scope::Grant => call.grant,
            // Calls without a session count per grant.
            Scope::Session => call.session.unwrap_or(call.grant),
            Scope::Pod | Scope::Global => "",
        },
        window: l.window_len,
        max: l.max,
        on_unavailable: l.on_unavailable,
    }
}

/// The first `deny_if` group that fires or `require` condition that fails.
fn check_conditions(rule: &CompiledRule, args: &ArgsView<'_>) -> Option<(Arc<str>, Arc<str>)> {
    let reason = |g: &CompiledGroup, fallback: &str| {
        g.on_deny
            .clone()
            .or_else(|| rule.reason.clone())
            .unwrap_or_else(|| fallback.into())
    };
    for g in &rule.deny_if {
        if g.conditions.iter().all(|(_, c)| c.holds(args)) {
            return Some((
                Arc::clone(&g.pointer),
                reason(g, "the call's arguments match a deny_if condition"),
            ));
        }
    }
    for g in &rule.require {
        if let Some((pointer, _)) = g.conditions.iter().find(|(_, c)| !c.holds(args)) {
            return Some((
                Arc::clone(pointer),
                reason(g, "the call's arguments do not meet a required condition"),
            ));
        }
    }
    None
}
