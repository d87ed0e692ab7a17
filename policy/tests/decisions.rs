//! Decision tables for the policy language (ARCHITECTURE.md §3).
//!
//! One row = a policy document, a call, the expected outcome and the JSON
//! pointer of the rule that decided. Rows are grouped by the step of the
//! evaluation order they exercise; [`SCRIPTS`]-style sequences cover limits,
//! where a decision depends on the calls before it and on the clock.

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_policy::{
    Annotations, Arguments, Bundle, Call, Decision, LocalCounters, Outcome, RiskClass, load,
};

// ---- calls ---------------------------------------------------------------

/// A call as a row writes it: JSON text for the arguments and annotations
/// (`""` means absent).
#[derive(Debug, Clone, Copy)]
struct C {
    server: &'static str,
    tool: &'static str,
    args: &'static str,
    grant: &'static str,
    session: Option<&'static str>,
    annotations: &'static str,
}

/// A call of `tool` on server `demo` by grant `g1`, with nothing else.
const fn call(tool: &'static str) -> C {
    C {
        server: "demo",
        tool,
        args: "",
        grant: "g1",
        session: None,
        annotations: "",
    }
}

impl C {
    const fn args(self, args: &'static str) -> C {
        C { args, ..self }
    }
    const fn on(self, server: &'static str) -> C {
        C { server, ..self }
    }
    const fn by(self, grant: &'static str) -> C {
        C { grant, ..self }
    }
    const fn session(self, session: &'static str) -> C {
        C {
            session: Some(session),
            ..self
        }
    }
    const fn annotated(self, annotations: &'static str) -> C {
        C {
            annotations,
            ..self
        }
    }
}

fn decide(bundle: &Bundle, c: &C, now: Duration, counters: &LocalCounters) -> Decision {
    let args: Option<Value> = (!c.args.is_empty())
        .then(|| serde_json::from_str(c.args).unwrap_or_else(|e| panic!("args {}: {e}", c.args)));
    let annotations: Option<Annotations> = (!c.annotations.is_empty()).then(|| {
        serde_json::from_str(c.annotations)
            .unwrap_or_else(|e| panic!("annotations {}: {e}", c.annotations))
    });
    let call = Call {
        server: c.server,
        tool: c.tool,
        arguments: args.as_ref().map_or(Arguments::None, Arguments::Value),
        grant: c.grant,
        session: c.session,
        annotations: annotations.as_ref(),
    };
    bundle.decide(&call, now, counters)
}

fn must_load(doc: &str) -> Bundle {
    load(doc).unwrap_or_else(|e| panic!("{e}\nin document:\n{doc}"))
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// ---- rows ----------------------------------------------------------------

struct Row {
    what: &'static str,
    doc: String,
    call: C,
    outcome: Outcome,
    rule: &'static str,
    reason: Option<&'static str>,
}

fn row(what: &'static str, doc: &str, call: C, outcome: Outcome, rule: &'static str) -> Row {
    Row {
        what,
        doc: doc.to_owned(),
        call,
        outcome,
        rule,
        reason: None,
    }
}

impl Row {
    fn reason(mut self, reason: &'static str) -> Row {
        self.reason = Some(reason);
        self
    }
}

/// Decides every row with fresh counters at time zero and reports every
/// mismatch at once.
fn check_rows(rows: &[Row]) {
    let mut failures = Vec::new();
    for r in rows {
        let bundle = must_load(&r.doc);
        let d = decide(&bundle, &r.call, Duration::ZERO, &LocalCounters::new());
        let reason_ok = r
            .reason
            .is_none_or(|want| d.reason.as_deref() == Some(want));
        if d.outcome != r.outcome || &*d.rule != r.rule || !reason_ok {
            failures.push(format!(
                "{}: {:?}\n    expected {} by {} (reason {:?})\n    got      {} by {} (reason {:?})",
                r.what, r.call, r.outcome, r.rule, r.reason, d.outcome, d.rule, d.reason
            ));
        }
        // Enforce-mode documents enforce what they decide.
        assert!(!d.shadow, "{}: not a shadow document", r.what);
        assert_eq!(d.enforced(), d.outcome, "{}", r.what);
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

use Outcome::{Allow, Deny, Hidden, RateLimited, RequireApproval};

// ---- lookup: hidden → exact → glob → pinned class → annotations → name → default

const LOOKUP: &str = r#"{
  "version": "1",
  "default": "deny",
  "hide": ["secret_tool", "debug_*", "Legacy_Tool", "OLD_*"],
  "classes": {
    "read": {},
    "destructive": {"action": "require_approval", "reason": "destructive tools need a human"},
    "financial": {"action": "deny", "reason": "no money"},
    "execute": {"action": "deny"}
  },
  "tools": {
    "secret_tool": {},
    "delete_x": {"action": "deny", "reason": "exact delete_x"},
    "delete_*": {"reason": "delete glob"},
    "*_session": {"action": "deny", "reason": "session glob"},
    "get_?": {"action": "deny", "reason": "one letter"},
    "get_*": {},
    "Refund_Now": {},
    "pinned_read": {"class": "read"},
    "pinned_write": {"class": "write"},
    "pinned_financial": {"class": "financial"}
  }
}"#;

const DESTRUCTIVE: &str = r#"{"destructiveHint": true}"#;
const NOT_DESTRUCTIVE: &str = r#"{"destructiveHint": false}"#;
const READ_ONLY: &str = r#"{"readOnlyHint": true}"#;
const NOT_READ_ONLY: &str = r#"{"readOnlyHint": false}"#;

#[test]
#[rustfmt::skip]
fn lookup_order() {
    let d = LOOKUP;
    check_rows(&[
        // Hidden, exact and glob, before any rule; case-insensitive.
        row("hidden exact beats an exact rule", d, call("secret_tool"), Hidden, "/hide/0"),
        row("hidden exact, upper case", d, call("SECRET_TOOL"), Hidden, "/hide/0"),
        row("hidden glob", d, call("debug_dump"), Hidden, "/hide/1"),
        row("hidden glob, mixed case", d, call("DEBUG_Dump"), Hidden, "/hide/1"),
        row("hidden upper-case name", d, call("legacy_tool"), Hidden, "/hide/2"),
        row("hidden upper-case glob", d, call("old_thing"), Hidden, "/hide/3"),
        // Exact rule beats every glob that matches.
        row("exact rule", d, call("delete_x"), Deny, "/tools/delete_x").reason("exact delete_x"),
        row("exact rule, upper case", d, call("DELETE_X"), Deny, "/tools/delete_x"),
        row("exact rule ignores annotations", d, call("Delete_X").annotated(READ_ONLY), Deny, "/tools/delete_x"),
        row("upper-case key matches lower-case call", d, call("refund_now"), Allow, "/tools/Refund_Now"),
        row("upper-case key matches upper-case call", d, call("REFUND_NOW"), Allow, "/tools/Refund_Now"),
        // Globs: the most specific wins (more literals, then more `?`).
        row("glob", d, call("delete_y"), Allow, "/tools/delete_*"),
        row("glob, upper case", d, call("DELETE_Y"), Allow, "/tools/delete_*"),
        row("more literals win", d, call("delete_session"), Deny, "/tools/*_session").reason("session glob"),
        row("more literals win, other prefix", d, call("get_session"), Deny, "/tools/*_session"),
        row("`?` beats `*` at equal literals", d, call("get_a"), Deny, "/tools/get_?"),
        row("only `*` matches two letters", d, call("get_ab"), Allow, "/tools/get_*"),
        row("glob beats name class", d, call("delete_everything").annotated(DESTRUCTIVE), Allow, "/tools/delete_*"),
        // A pinned class takes the class rule, whatever the annotations say.
        row("pinned class", d, call("pinned_read").annotated(DESTRUCTIVE), Allow, "/classes/read"),
        row("pinned class, upper case", d, call("PINNED_READ"), Allow, "/classes/read"),
        row("pinned class without a class rule", d, call("pinned_write"), Deny, "(default deny)"),
        row("pinned class that denies", d, call("pinned_financial"), Deny, "/classes/financial").reason("no money"),
        // Class from annotations.
        row("destructiveHint", d, call("frobnicate").annotated(DESTRUCTIVE), RequireApproval, "/classes/destructive"),
        row("readOnlyHint", d, call("frobnicate").annotated(READ_ONLY), Allow, "/classes/read"),
        row("readOnlyHint false means destructive", d, call("frobnicate").annotated(NOT_READ_ONLY), RequireApproval, "/classes/destructive"),
        row("destructiveHint false means write", d, call("frobnicate").annotated(NOT_DESTRUCTIVE), Deny, "(default deny)"),
        row("annotation beats a destructive name", d, call("remove_user").annotated(NOT_DESTRUCTIVE), Deny, "(default deny)"),
        row("readOnlyHint beats a destructive name", d, call("purge_cache").annotated(READ_ONLY), Allow, "/classes/read"),
        row("readOnlyHint beats a financial name", d, call("refund_order").annotated(READ_ONLY), Allow, "/classes/read"),
        row("financial name beats destructiveHint false", d, call("refund_order").annotated(NOT_DESTRUCTIVE), Deny, "/classes/financial"),
        // Class from the name.
        row("read name", d, call("list_users"), Allow, "/classes/read"),
        row("read name, upper case", d, call("LIST_USERS"), Allow, "/classes/read"),
        row("destructive name", d, call("remove_user"), RequireApproval, "/classes/destructive").reason("destructive tools need a human"),
        row("destructive camelCase name", d, call("dropTable"), RequireApproval, "/classes/destructive"),
        row("financial name", d, call("refund_order"), Deny, "/classes/financial").reason("no money"),
        row("execute name", d, call("run_script"), Deny, "/classes/execute").reason("the rule denies this tool"),
        // No rule: the default.
        row("write name, no write rule", d, call("create_thing"), Deny, "(default deny)"),
        row("unknown word", d, call("frobnicate"), Deny, "(default deny)"),
    ]);
}

#[test]
fn lookup_reports_the_class_it_consulted() {
    let bundle = must_load(LOOKUP);
    let counters = LocalCounters::new();
    let class = |c: C| decide(&bundle, &c, Duration::ZERO, &counters).class;
    assert_eq!(class(call("delete_x")), None, "named by a rule");
    assert_eq!(class(call("delete_y")), None, "named by a glob");
    assert_eq!(class(call("pinned_read")), Some(RiskClass::Read));
    assert_eq!(class(call("pinned_write")), Some(RiskClass::Write));
    assert_eq!(
        class(call("frobnicate").annotated(DESTRUCTIVE)),
        Some(RiskClass::Destructive)
    );
    assert_eq!(class(call("refund_order")), Some(RiskClass::Financial));
    assert_eq!(class(call("create_thing")), Some(RiskClass::Write));
    assert_eq!(class(call("secret_tool")), None, "hidden");
}

#[test]
fn long_names_are_matched_case_insensitively() {
    // Longer than the evaluator's stack buffer for lower-casing.
    let long_upper = format!("DELETE_{}", "X".repeat(300));
    let long_lower = long_upper.to_ascii_lowercase();
    let doc = format!(
        r#"{{"version": "1", "default": "deny", "tools": {{"{long_lower}": {{"action": "deny"}}, "delete_*": {{}}}}}}"#
    );
    let bundle = must_load(&doc);
    let counters = LocalCounters::new();
    let d = bundle.decide(&Call::new("demo", &long_upper), Duration::ZERO, &counters);
    assert_eq!(d.outcome, Deny);
    assert_eq!(&*d.rule, format!("/tools/{long_lower}"));
    let other = format!("DELETE_{}", "Y".repeat(300));
    let d = bundle.decide(&Call::new("demo", &other), Duration::ZERO, &counters);
    assert_eq!((d.outcome, &*d.rule), (Allow, "/tools/delete_*"));
}

// ---- after the lookup: deny → all_tools deny → conditions → limits → approval

const DEFAULT_ALLOW: &str = r#"{
  "version": "1",
  "default": "allow",
  "classes": {"destructive": {"action": "deny", "reason": "no deleting"}}
}"#;

const ALL_TOOLS_DENY: &str = r#"{
  "version": "1",
  "default": "allow",
  "all_tools": {"action": "deny", "reason": "maintenance"},
  "tools": {"x": {}, "y": {"action": "deny", "reason": "y is off"}}
}"#;

const ALL_TOOLS_DENY_DEFAULT_DENY: &str = r#"{
  "version": "1",
  "default": "deny",
  "all_tools": {"action": "deny", "reason": "maintenance"},
  "tools": {"x": {}}
}"#;

const ORDER: &str = r#"{
  "version": "1",
  "default": "deny",
  "all_tools": {
    "deny_if": [{"conditions": [{"path": "args.env", "op": "eq", "value": "prod"}], "on_deny": "never in prod"}]
  },
  "tools": {
    "denied": {
      "action": "deny",
      "reason": "denied outright",
      "deny_if": [{"conditions": [{"path": "args.env", "op": "eq", "value": "prod"}]}]
    },
    "guarded": {
      "reason": "guarded tool",
      "deny_if": [
        {"conditions": [{"path": "args.path", "op": "regex", "value": "^/etc/"}], "on_deny": "no /etc"},
        {"conditions": [{"path": "args.force", "op": "eq", "value": true},
                        {"path": "args.env", "op": "eq", "value": "staging"}]}
      ],
      "require": [{"conditions": [{"path": "args.ticket", "op": "exists"},
                                  {"path": "args.ticket", "op": "regex", "value": "^T-[0-9]+$"}],
                   "on_deny": "a ticket T-<n> is required"}]
    },
    "plain": {"require": [{"conditions": [{"path": "args.n", "op": "gt", "value": 0}]}]},
    "approve": {"action": "require_approval", "reason": "a human decides",
                "approval": {"timeout": "5m", "hold": "2s", "show_arguments": true}}
  }
}"#;

const ALL_TOOLS_REQUIRE: &str = r#"{
  "version": "1",
  "default": "allow",
  "all_tools": {"require": [{"conditions": [{"path": "args.tenant", "op": "in", "value": ["a", "b"]}]}]},
  "tools": {"approve": {"action": "require_approval"}, "x": {}}
}"#;

const ALL_TOOLS_APPROVAL: &str = r#"{
  "version": "1",
  "default": "allow",
  "all_tools": {"action": "require_approval", "reason": "everything is reviewed"},
  "tools": {"mine": {"action": "require_approval", "reason": "mine"}, "x": {}}
}"#;

#[test]
#[rustfmt::skip]
fn evaluation_order() {
    check_rows(&[
        // Default allow still goes through all_tools; default deny does not.
        row("default allow", DEFAULT_ALLOW, call("create_thing"), Allow, "(default allow)"),
        row("class rule under default allow", DEFAULT_ALLOW, call("delete_thing"), Deny, "/classes/destructive").reason("no deleting"),
        row("default deny reason", LOOKUP, call("create_thing"), Deny, "(default deny)")
            .reason("no rule in the policy allows this tool, and the policy's default is deny"),
        row("all_tools deny after an allowing rule", ALL_TOOLS_DENY, call("x"), Deny, "/all_tools").reason("maintenance"),
        row("rule deny before all_tools deny", ALL_TOOLS_DENY, call("y"), Deny, "/tools/y").reason("y is off"),
        row("all_tools deny under default allow", ALL_TOOLS_DENY, call("z"), Deny, "/all_tools"),
        row("default deny before all_tools", ALL_TOOLS_DENY_DEFAULT_DENY, call("z"), Deny, "(default deny)"),
        row("all_tools deny with default deny", ALL_TOOLS_DENY_DEFAULT_DENY, call("x"), Deny, "/all_tools"),
        // deny before conditions.
        row("rule deny before deny_if", ORDER, call("denied").args(r#"{"env": "prod"}"#), Deny, "/tools/denied").reason("denied outright"),
        // deny_if groups: first that fires, every condition of a group must hold.
        row("deny_if", ORDER, call("guarded").args(r#"{"path": "/etc/passwd", "ticket": "T-1"}"#), Deny, "/tools/guarded/deny_if/0").reason("no /etc"),
        row("deny_if group of two", ORDER, call("guarded").args(r#"{"force": true, "env": "staging", "ticket": "T-1"}"#), Deny, "/tools/guarded/deny_if/1").reason("guarded tool"),
        row("deny_if group needs all", ORDER, call("guarded").args(r#"{"force": true, "ticket": "T-1"}"#), Allow, "/tools/guarded"),
        row("deny_if before require", ORDER, call("guarded").args(r#"{"path": "/etc/x"}"#), Deny, "/tools/guarded/deny_if/0"),
        // require: the first failing condition is named.
        row("require, missing", ORDER, call("guarded"), Deny, "/tools/guarded/require/0/conditions/0").reason("a ticket T-<n> is required"),
        row("require, second condition", ORDER, call("guarded").args(r#"{"ticket": "X-1"}"#), Deny, "/tools/guarded/require/0/conditions/1"),
        row("require holds", ORDER, call("guarded").args(r#"{"ticket": "T-12", "path": "/home/x"}"#), Allow, "/tools/guarded"),
        row("require reason fallback", ORDER, call("plain").args(r#"{"n": 0}"#), Deny, "/tools/plain/require/0/conditions/0")
            .reason("the call's arguments do not meet a required condition"),
        // The rule's conditions, then all_tools'.
        row("all_tools deny_if", ORDER, call("guarded").args(r#"{"env": "prod", "ticket": "T-1"}"#), Deny, "/all_tools/deny_if/0").reason("never in prod"),
        row("rule require before all_tools deny_if", ORDER, call("guarded").args(r#"{"env": "prod"}"#), Deny, "/tools/guarded/require/0/conditions/0"),
        row("all_tools require", ALL_TOOLS_REQUIRE, call("x").args(r#"{"tenant": "c"}"#), Deny, "/all_tools/require/0/conditions/0"),
        row("all_tools require holds", ALL_TOOLS_REQUIRE, call("x").args(r#"{"tenant": "a"}"#), Allow, "/tools/x"),
        row("all_tools require on default allow", ALL_TOOLS_REQUIRE, call("other"), Deny, "/all_tools/require/0/conditions/0"),
        // Conditions before approval.
        row("conditions before approval", ORDER, call("approve").args(r#"{"env": "prod"}"#), Deny, "/all_tools/deny_if/0"),
        row("all_tools require before approval", ALL_TOOLS_REQUIRE, call("approve"), Deny, "/all_tools/require/0/conditions/0"),
        row("approval", ORDER, call("approve").args(r#"{"env": "dev"}"#), RequireApproval, "/tools/approve").reason("a human decides"),
        row("approval after require", ALL_TOOLS_REQUIRE, call("approve").args(r#"{"tenant": "b"}"#), RequireApproval, "/tools/approve"),
        // require_approval: the rule's before all_tools'.
        row("all_tools approval", ALL_TOOLS_APPROVAL, call("x"), RequireApproval, "/all_tools").reason("everything is reviewed"),
        row("all_tools approval on default allow", ALL_TOOLS_APPROVAL, call("y"), RequireApproval, "/all_tools"),
        row("rule approval before all_tools'", ALL_TOOLS_APPROVAL, call("mine"), RequireApproval, "/tools/mine").reason("mine"),
    ]);
}

#[test]
fn approval_settings_are_carried_by_the_decision() {
    let bundle = must_load(ORDER);
    let d = decide(
        &bundle,
        &call("approve"),
        Duration::ZERO,
        &LocalCounters::new(),
    );
    assert_eq!(d.outcome, RequireApproval);
    let approval = d.approval.expect("approval settings");
    assert_eq!(approval.timeout, Duration::from_secs(300));
    assert_eq!(approval.hold, Duration::from_secs(2));
    assert!(
        approval.show_arguments,
        "the rule shows approvers the arguments"
    );

    // Defaults: ten minutes to decide, no hold.
    let bundle = must_load(ALL_TOOLS_APPROVAL);
    let d = decide(&bundle, &call("x"), Duration::ZERO, &LocalCounters::new());
    let approval = d.approval.expect("approval settings");
    assert_eq!(approval.timeout, Duration::from_secs(600));
    assert_eq!(approval.hold, Duration::ZERO);
    assert!(
        !approval.show_arguments,
        "by default approvers see only the digest"
    );

    // Nothing but approvals carry them.
    let d = decide(
        &bundle,
        &call("x").on("elsewhere"),
        Duration::ZERO,
        &LocalCounters::new(),
    );
    assert!(d.approval.is_some());
    let d = decide(
        &must_load(ORDER),
        &call("guarded"),
        Duration::ZERO,
        &LocalCounters::new(),
    );
    assert_eq!(d.outcome, Deny);
    assert_eq!(d.approval, None);
}

// ---- conditions: every operator, paths, missing arguments ------------------

/// (path, op, value as JSON text or "" for none, the call's arguments or "" for none, holds)
#[rustfmt::skip]
const CONDITIONS: &[(&str, &str, &str, &str, bool)] = &[
    // eq: numbers by value, any JSON, no type coercion.
    ("args.env", "eq", r#""prod""#, r#"{"env": "prod"}"#, true),
    ("args.env", "eq", r#""prod""#, r#"{"env": "PROD"}"#, false),
    ("args.env", "eq", r#""prod""#, r#"{}"#, false),
    ("args.env", "eq", r#""prod""#, "", false),
    ("args.n", "eq", "1", r#"{"n": 1.0}"#, true),
    ("args.n", "eq", "1", r#"{"n": "1"}"#, false),
    ("args.flag", "eq", "true", r#"{"flag": true}"#, true),
    ("args.flag", "eq", "true", r#"{"flag": "true"}"#, false),
    ("args.o", "eq", r#"{"a": [1, 2]}"#, r#"{"o": {"a": [1, 2]}}"#, true),
    ("args.o", "eq", r#"{"a": [1, 2]}"#, r#"{"o": {"a": [2, 1]}}"#, false),
    // neq: present and different; missing or null is not "different".
    ("args.env", "neq", r#""prod""#, r#"{"env": "dev"}"#, true),
    ("args.env", "neq", r#""prod""#, r#"{"env": "prod"}"#, false),
    ("args.env", "neq", r#""prod""#, r#"{}"#, false),
    ("args.env", "neq", r#""prod""#, r#"{"env": null}"#, false),
    ("args.n", "neq", "2", r#"{"n": 2.0}"#, false),
    // in / not_in.
    ("args.env", "in", r#"["dev", "staging"]"#, r#"{"env": "dev"}"#, true),
    ("args.env", "in", r#"["dev", "staging"]"#, r#"{"env": "prod"}"#, false),
    ("args.env", "in", r#"["dev", "staging"]"#, r#"{}"#, false),
    ("args.n", "in", "[1, 2.0]", r#"{"n": 2}"#, true),
    ("args.env", "in", "[]", r#"{"env": "dev"}"#, false),
    ("args.env", "not_in", r#"["prod"]"#, r#"{"env": "dev"}"#, true),
    ("args.env", "not_in", r#"["prod"]"#, r#"{"env": "prod"}"#, false),
    ("args.env", "not_in", r#"["prod"]"#, r#"{}"#, false),
    ("args.env", "not_in", r#"["prod"]"#, r#"{"env": null}"#, false),
    // lt / lte / gt / gte: numbers only.
    ("args.n", "lt", "10", r#"{"n": 9.5}"#, true),
    ("args.n", "lt", "10", r#"{"n": 10}"#, false),
    ("args.n", "lt", "10", r#"{"n": "5"}"#, false),
    ("args.n", "lt", "10", r#"{}"#, false),
    ("args.n", "lt", "0", r#"{"n": -1}"#, true),
    ("args.n", "lte", "10", r#"{"n": 10}"#, true),
    ("args.n", "lte", "10", r#"{"n": 10.5}"#, false),
    ("args.n", "gt", "100", r#"{"n": 101}"#, true),
    ("args.n", "gt", "100", r#"{"n": 100}"#, false),
    ("args.n", "gt", "100", r#"{"n": [101]}"#, false),
    ("args.n", "gt", "1e18", r#"{"n": 2000000000000000000}"#, true),
    ("args.n", "gte", "100", r#"{"n": 100}"#, true),
    ("args.n", "gte", "100", r#"{"n": 99.99}"#, false),
    ("args.n", "gte", "0.5", r#"{"n": 0.5}"#, true),
    // regex: strings only, unanchored unless anchored.
    ("args.p", "regex", r#""^(file:|/etc/)""#, r#"{"p": "/etc/passwd"}"#, true),
    ("args.p", "regex", r#""^(file:|/etc/)""#, r#"{"p": "file:///x"}"#, true),
    ("args.p", "regex", r#""^(file:|/etc/)""#, r#"{"p": "https://h/etc/x"}"#, false),
    ("args.p", "regex", r#""^(file:|/etc/)""#, r#"{"p": 42}"#, false),
    ("args.p", "regex", r#""^(file:|/etc/)""#, r#"{}"#, false),
    ("args.p", "regex", r#""secret""#, r#"{"p": "my-secret-key"}"#, true),
    ("args.p", "regex", r#""(?i)^drop\\s""#, r#"{"p": "DROP table"}"#, true),
    // contains: substring of a string, element of an array.
    ("args.q", "contains", r#""drop""#, r#"{"q": "please drop it"}"#, true),
    ("args.q", "contains", r#""drop""#, r#"{"q": "please DROP it"}"#, false),
    ("args.q", "contains", r#""urgent""#, r#"{"q": ["a", "urgent"]}"#, true),
    ("args.q", "contains", r#""urgent""#, r#"{"q": ["a", "urgent!"]}"#, false),
    ("args.q", "contains", "3", r#"{"q": [1, 3.0]}"#, true),
    ("args.q", "contains", r#""a""#, r#"{"q": {"a": 1}}"#, false),
    ("args.q", "contains", "3", r#"{"q": 3}"#, false),
    ("args.q", "contains", r#""drop""#, r#"{}"#, false),
    // exists: present and not null; `false` inverts.
    ("args.t", "exists", "", r#"{"t": "x"}"#, true),
    ("args.t", "exists", "", r#"{"t": ""}"#, true),
    ("args.t", "exists", "", r#"{"t": false}"#, true),
    ("args.t", "exists", "", r#"{"t": null}"#, false),
    ("args.t", "exists", "", r#"{}"#, false),
    ("args.t", "exists", "", "", false),
    ("args.t", "exists", "true", r#"{"t": 0}"#, true),
    ("args.t", "exists", "false", r#"{}"#, true),
    ("args.t", "exists", "false", r#"{"t": null}"#, true),
    ("args.t", "exists", "false", r#"{"t": 1}"#, false),
    // Nested paths and array indices.
    ("args.options.dry_run", "eq", "true", r#"{"options": {"dry_run": true}}"#, true),
    ("args.options.dry_run", "eq", "true", r#"{"options": {}}"#, false),
    ("args.options.dry_run", "eq", "true", r#"{"options": "dry_run"}"#, false),
    ("args.options.dry_run", "eq", "true", r#"{}"#, false),
    ("args.options.dry_run", "exists", "false", r#"{"options": 3}"#, true),
    ("args.a.b.c.d", "gte", "3", r#"{"a": {"b": {"c": {"d": 3}}}}"#, true),
    ("args.items.1.name", "eq", r#""b""#, r#"{"items": [{"name": "a"}, {"name": "b"}]}"#, true),
    ("args.items.1.name", "eq", r#""b""#, r#"{"items": [{"name": "b"}]}"#, false),
    ("args.items.0", "eq", r#""x""#, r#"{"items": ["x"]}"#, true),
    ("args.items.x", "exists", "", r#"{"items": ["x"]}"#, false),
    ("args.items.-1", "exists", "", r#"{"items": ["x"]}"#, false),
    ("args.m.0", "eq", r#""zero""#, r#"{"m": {"0": "zero"}}"#, true),
    ("args.items.1", "exists", "", r#"{"items": ["x"]}"#, false),
];

fn condition_doc(field: &str, path: &str, op: &str, value: &str) -> String {
    let mut condition = json!({"path": path, "op": op});
    if !value.is_empty() {
        condition["value"] = serde_json::from_str(value).expect("operand JSON");
    }
    json!({
        "version": "1",
        "default": "deny",
        "tools": {"t": {field: [{"conditions": [condition]}]}}
    })
    .to_string()
}

#[test]
fn condition_operators_in_deny_if() {
    let rows: Vec<Row> = CONDITIONS
        .iter()
        .map(|&(path, op, value, args, holds)| {
            let doc = condition_doc("deny_if", path, op, value);
            let (outcome, rule) = if holds {
                (Deny, "/tools/t/deny_if/0")
            } else {
                (Allow, "/tools/t")
            };
            row(
                "deny_if fires when the condition holds",
                &doc,
                call("t").args(args),
                outcome,
                rule,
            )
        })
        .collect();
    check_rows(&rows);
}

#[test]
fn condition_operators_in_require() {
    let rows: Vec<Row> = CONDITIONS
        .iter()
        .map(|&(path, op, value, args, holds)| {
            let doc = condition_doc("require", path, op, value);
            let (outcome, rule) = if holds {
                (Allow, "/tools/t")
            } else {
                (Deny, "/tools/t/require/0/conditions/0")
            };
            row(
                "require denies unless the condition holds",
                &doc,
                call("t").args(args),
                outcome,
                rule,
            )
        })
        .collect();
    check_rows(&rows);
}

#[test]
fn raw_arguments_decide_like_parsed_ones() {
    let bundle = must_load(ORDER);
    let counters = LocalCounters::new();
    for (text, outcome, rule) in [
        (
            r#"{"path": "/etc/x", "ticket": "T-1"}"#,
            Deny,
            "/tools/guarded/deny_if/0",
        ),
        (r#"{"ticket": "T-1"}"#, Allow, "/tools/guarded"),
        // Arguments that are not an object have no `ticket`: `require` fails.
        (r#""T-1""#, Deny, "/tools/guarded/require/0/conditions/0"),
    ] {
        let raw = serde_json::value::RawValue::from_string(text.to_owned()).expect("JSON");
        let call = Call {
            arguments: Arguments::Raw(&raw),
            ..Call::new("demo", "guarded")
        };
        let d = bundle.decide(&call, Duration::ZERO, &counters);
        assert_eq!((d.outcome, &*d.rule), (outcome, rule), "{text}");
    }
}

// ---- limits: scripts of calls over time --------------------------------------

/// One call of a script: when (milliseconds), what, and what must come of it.
type Step = (u64, C, Outcome, &'static str);

fn run_script(what: &str, doc: &str, steps: &[Step]) -> Vec<Decision> {
    let bundle = must_load(doc);
    let counters = LocalCounters::new();
    steps
        .iter()
        .enumerate()
        .map(|(i, &(at, c, outcome, rule))| {
            let d = decide(&bundle, &c, Duration::from_millis(at), &counters);
            assert_eq!(
                (d.outcome, &*d.rule),
                (outcome, rule),
                "{what}, step {i} at {at} ms: {c:?}\n{d:#?}"
            );
            d
        })
        .collect()
}

const LIMITS: &str = r#"{
  "version": "1",
  "default": "deny",
  "all_tools": {"limits": [{"counter": "all", "window": "minute", "max": 3, "scope": "pod"}]},
  "tools": {
    "a": {"limits": [{"window": "hour", "max": 1}]},
    "b": {},
    "approve": {"action": "require_approval", "rate_limit": {"max": 1, "window": 60}},
    "denied": {"action": "deny", "limits": [{"window": "minute", "max": 1}]},
    "checked": {"require": [{"conditions": [{"path": "args.ok", "op": "eq", "value": true}]}]}
  }
}"#;

#[test]
#[rustfmt::skip]
fn limits_are_all_or_nothing() {
    let a = call("a");
    let b = call("b");
    run_script(
        "a refused by its own limit charges nothing on all_tools",
        LIMITS,
        &[
            (0, a, Allow, "/tools/a"),
            (0, a, RateLimited, "/tools/a/limits/0"),
            (0, a, RateLimited, "/tools/a/limits/0"),
            (0, b, Allow, "/tools/b"),
            (0, b, Allow, "/tools/b"),
            (0, b, RateLimited, "/all_tools/limits/0"),
        ],
    );
    run_script(
        "all_tools refusing charges nothing on the rule's limit",
        LIMITS,
        &[
            (0, b, Allow, "/tools/b"),
            (0, b, Allow, "/tools/b"),
            (0, b, Allow, "/tools/b"),
            (1_000, a, RateLimited, "/all_tools/limits/0"),
            // The minute has passed; the hour would not have, had `a` been charged.
            (60_000, a, Allow, "/tools/a"),
        ],
    );
}

#[test]
#[rustfmt::skip]
fn limits_come_after_deny_and_conditions_and_before_approval() {
    run_script(
        "denied and condition-failing calls are not counted",
        LIMITS,
        &[
            (0, call("denied"), Deny, "/tools/denied"),
            (0, call("denied"), Deny, "/tools/denied"),
            (0, call("checked"), Deny, "/tools/checked/require/0/conditions/0"),
            (0, call("checked"), Deny, "/tools/checked/require/0/conditions/0"),
            (0, call("checked").args(r#"{"ok": true}"#), Allow, "/tools/checked"),
            (0, call("b"), Allow, "/tools/b"),
            (0, call("b"), Allow, "/tools/b"),
            (0, call("b"), RateLimited, "/all_tools/limits/0"),
        ],
    );
    run_script(
        "a limit refuses before approval is asked",
        LIMITS,
        &[
            (0, call("approve"), RequireApproval, "/tools/approve"),
            (0, call("approve"), RateLimited, "/tools/approve/rate_limit"),
            (60_000, call("approve"), RequireApproval, "/tools/approve"),
        ],
    );
}

const SCOPES: &str = r#"{
  "version": "1",
  "default": "deny",
  "tools": {
    "per_grant": {"limits": [{"window": "minute", "max": 1}]},
    "per_session": {"limits": [{"window": "minute", "max": 1, "scope": "session"}]},
    "per_pod": {"limits": [{"window": "minute", "max": 1, "scope": "pod"}]},
    "per_global": {"limits": [{"window": "minute", "max": 1, "scope": "global"}]},
    "shared_1": {"limits": [{"counter": "shared", "window": "minute", "max": 2}]},
    "shared_2": {"limits": [{"counter": "shared", "window": "minute", "max": 2}]},
    "twice": {"limits": [{"counter": "twice", "window": 10, "max": 2},
                         {"counter": "twice", "window": 10, "max": 2}]}
  }
}"#;

#[test]
#[rustfmt::skip]
fn limit_scopes_key_their_buckets() {
    let t = |tool| call(tool);
    run_script(
        "grant scope (the default)",
        SCOPES,
        &[
            (0, t("per_grant").by("g1"), Allow, "/tools/per_grant"),
            (0, t("per_grant").by("g1").session("s2"), RateLimited, "/tools/per_grant/limits/0"),
            (0, t("per_grant").by("g2"), Allow, "/tools/per_grant"),
        ],
    );
    run_script(
        "session scope",
        SCOPES,
        &[
            (0, t("per_session").by("g1").session("s1"), Allow, "/tools/per_session"),
            (0, t("per_session").by("g2").session("s1"), RateLimited, "/tools/per_session/limits/0"),
            (0, t("per_session").by("g1").session("s2"), Allow, "/tools/per_session"),
        ],
    );
    run_script(
        "calls without a session count per grant",
        SCOPES,
        &[
            (0, t("per_session").by("g1"), Allow, "/tools/per_session"),
            (0, t("per_session").by("g1"), RateLimited, "/tools/per_session/limits/0"),
            (0, t("per_session").by("g2"), Allow, "/tools/per_session"),
            (0, t("per_session").by("g2").session("s1"), Allow, "/tools/per_session"),
        ],
    );
    for (tool, allowed, refused) in [
        ("per_pod", "/tools/per_pod", "/tools/per_pod/limits/0"),
        ("per_global", "/tools/per_global", "/tools/per_global/limits/0"),
    ] {
        run_script(
            "pod and global scopes are shared by every grant and session",
            SCOPES,
            &[
                (0, t(tool).by("g1").session("s1"), Allow, allowed),
                (0, t(tool).by("g2").session("s2"), RateLimited, refused),
            ],
        );
    }
    run_script(
        "a named counter is shared by the rules that name it",
        SCOPES,
        &[
            (0, t("shared_1"), Allow, "/tools/shared_1"),
            (0, t("shared_2"), Allow, "/tools/shared_2"),
            (0, t("shared_1"), RateLimited, "/tools/shared_1/limits/0"),
            (0, t("shared_2"), RateLimited, "/tools/shared_2/limits/0"),
            (0, t("shared_2").by("g2"), Allow, "/tools/shared_2"),
        ],
    );
    run_script(
        "a counter named twice in one call is charged once",
        SCOPES,
        &[
            (0, t("twice"), Allow, "/tools/twice"),
            (0, t("twice"), Allow, "/tools/twice"),
            (0, t("twice"), RateLimited, "/tools/twice/limits/0"),
        ],
    );
}

#[test]
fn a_rate_limited_decision_says_when_and_which_limit() {
    let doc = r#"{"version": "1", "default": "deny",
        "tools": {"t": {"limits": [{"counter": "c", "window": 90, "max": 2, "scope": "session"}]}}}"#;
    let c = call("t").session("s");
    let ds = run_script(
        "retry_after",
        doc,
        &[
            (5_000, c, Allow, "/tools/t"),
            (20_000, c, Allow, "/tools/t"),
            (30_000, c, RateLimited, "/tools/t/limits/0"),
            // The first call leaves the window at 95 s.
            (94_999, c, RateLimited, "/tools/t/limits/0"),
            (95_000, c, Allow, "/tools/t"),
            (95_000, c, RateLimited, "/tools/t/limits/0"),
        ],
    );
    assert_eq!(ds[0].retry_after, None);
    assert_eq!(ds[2].retry_after, Some(Duration::from_secs(65)));
    assert_eq!(ds[3].retry_after, Some(Duration::from_millis(1)));
    // The second call (at 20 s) leaves the window at 110 s.
    assert_eq!(ds[5].retry_after, Some(Duration::from_secs(15)));
    let limit = ds[2].limit.as_ref().expect("the refusing limit");
    assert_eq!(&*limit.counter, "c");
    assert_eq!(limit.max, 2);
    assert_eq!(limit.window.seconds(), 90);
    assert_eq!(limit.scope.as_str(), "session");
    let reason = ds[2].reason.as_deref().expect("a reason");
    assert!(reason.contains("2 calls per 90 s"), "{reason}");
}

// ---- shadow mode ----------------------------------------------------------

const SHADOW: &str = r#"{
  "version": "1",
  "default": "deny",
  "mode": "shadow",
  "hide": ["hidden_*"],
  "tools": {
    "ok": {},
    "no": {"action": "deny", "reason": "no"},
    "once": {"rate_limit": {"max": 1, "window": "minute"}},
    "ask": {"action": "require_approval"}
  }
}"#;

#[test]
fn shadow_mode_reports_would_be_decisions_and_enforces_none() {
    let ds = run_script(
        "shadow",
        SHADOW,
        &[
            (0, call("ok"), Allow, "/tools/ok"),
            (0, call("no"), Deny, "/tools/no"),
            (0, call("once"), Allow, "/tools/once"),
            (0, call("once"), RateLimited, "/tools/once/rate_limit"),
            (0, call("ask"), RequireApproval, "/tools/ask"),
            (0, call("hidden_x"), Hidden, "/hide/0"),
            (0, call("unknown"), Deny, "(default deny)"),
        ],
    );
    for d in &ds {
        assert!(d.shadow, "{d:?}");
        assert_eq!(d.enforced(), Allow, "{d:?}");
    }
    assert_eq!(ds[1].reason.as_deref(), Some("no"));
    assert!(ds[3].retry_after.is_some());
}

// ---- bundles --------------------------------------------------------------

const TOKEN_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const TOKEN_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn bundle_doc() -> String {
    json!({
        "servers": {
            "demo": {"version": "1", "default": "deny", "tools": {
                "x": {"action": "deny", "reason": "no x"},
                "y": {},
                "limited": {"rate_limit": {"max": 1, "window": "minute"}}
            }},
            "other": {"version": "1", "default": "allow"},
            "watched": {"version": "1", "default": "allow", "mode": "shadow",
                        "tools": {"x": {"action": "deny"}}}
        },
        "grants": {
            "alice": {
                "token_sha256": TOKEN_A,
                "labels": {"team": "qa"},
                "policies": {"demo": {"version": "1", "default": "deny", "tools": {
                    "x": {},
                    "limited": {"rate_limit": {"max": 1, "window": "minute"}}
                }}}
            },
            "bob": {"token_sha256": TOKEN_B}
        }
    })
    .to_string()
}

#[test]
#[rustfmt::skip]
fn bundles_choose_the_policy_by_server_and_grant() {
    let doc = bundle_doc();
    check_rows(&[
        row("server policy", &doc, call("x").by("bob"), Deny, "/servers/demo/tools/x").reason("no x"),
        row("server policy allows", &doc, call("y").by("bob"), Allow, "/servers/demo/tools/y"),
        row("server policy, case-insensitive", &doc, call("X").by("bob"), Deny, "/servers/demo/tools/x"),
        row("server policy default", &doc, call("z").by("bob"), Deny, "(default deny)"),
        row("unknown server", &doc, call("x").on("nowhere").by("bob"), Deny, "(no policy for server)")
            .reason("the policy bundle has no policy for server `nowhere`; add it under `/servers`"),
        row("grant policy replaces the server's", &doc, call("x").by("alice"), Allow, "/grants/alice/policies/demo/tools/x"),
        row("grant policy replaces, not merges", &doc, call("y").by("alice"), Deny, "(default deny)"),
        row("grant without a policy for the server", &doc, call("q").on("other").by("alice"), Allow, "(default allow)"),
        row("unknown grant gets the server's policy", &doc, call("x").by("mallory"), Deny, "/servers/demo/tools/x"),
        row("grant on an unknown server", &doc, call("x").on("nowhere").by("alice"), Deny, "(no policy for server)"),
    ]);
}

#[test]
#[rustfmt::skip]
fn bundle_details() {
    let bundle = must_load(&bundle_doc());
    assert_eq!(bundle.servers(), ["demo", "other", "watched"]);
    assert!(bundle.has_grants());
    assert_eq!(
        bundle.grant_for_token_sha256(TOKEN_A).map(|g| &**g),
        Some("alice")
    );
    assert_eq!(bundle.grant_for_token_sha256(&"c".repeat(64)), None);
    assert_eq!(
        bundle.grant_labels("alice").and_then(|l| l.get("team")).map(String::as_str),
        Some("qa")
    );

    // Each server's own mode; no policy is neither shadow nor forwarded.
    let counters = LocalCounters::new();
    let d = decide(&bundle, &call("x").on("watched"), Duration::ZERO, &counters);
    assert_eq!((d.outcome, d.shadow, d.enforced()), (Deny, true, Allow));
    let d = decide(&bundle, &call("x").on("demo"), Duration::ZERO, &counters);
    assert_eq!((d.outcome, d.shadow, d.enforced()), (Deny, false, Deny));
    let d = decide(&bundle, &call("x").on("nowhere"), Duration::ZERO, &counters);
    assert_eq!((d.outcome, d.shadow, d.enforced()), (Deny, false, Deny));

    // The grant's policy has budgets of its own, apart from the server policy's.
    run_script(
        "grant policy limits",
        &bundle_doc(),
        &[
            (0, call("limited").by("bob"), Allow, "/servers/demo/tools/limited"),
            (0, call("limited").by("bob"), RateLimited, "/servers/demo/tools/limited/rate_limit"),
            (0, call("limited").by("alice"), Allow, "/grants/alice/policies/demo/tools/limited"),
            (0, call("limited").by("alice"), RateLimited, "/grants/alice/policies/demo/tools/limited/rate_limit"),
        ],
    );
}

#[test]
fn a_single_document_applies_to_every_server() {
    let bundle = must_load(LOOKUP);
    assert!(bundle.servers().is_empty());
    assert!(!bundle.has_grants());
    let counters = LocalCounters::new();
    for server in ["demo", "other", ""] {
        let d = decide(
            &bundle,
            &call("delete_x").on(server),
            Duration::ZERO,
            &counters,
        );
        assert_eq!((d.outcome, &*d.rule), (Deny, "/tools/delete_x"), "{server}");
    }
}

// ---- the examples' must-shows -----------------------------------------------

const SEED: &str = include_str!("../../examples/seed-policy.json");
const FULL: &str = include_str!("../../examples/full-policy.json");

#[test]
fn seed_allows_thirty_a_minute_then_rate_limits() {
    let bundle = must_load(SEED);
    let counters = LocalCounters::new();
    let c = call("create_test_session_context").by("agent-1");
    for i in 0..30 {
        let d = decide(&bundle, &c, secs(i), &counters);
        assert_eq!(d.outcome, Allow, "call {i}");
        assert_eq!(&*d.rule, "/tools/create_test_session_context");
    }
    let d = decide(&bundle, &c, secs(30), &counters);
    assert_eq!(d.outcome, RateLimited);
    assert_eq!(&*d.rule, "/tools/create_test_session_context/limits/0");
    // The first call, at 0 s, leaves the minute at 60 s.
    assert_eq!(d.retry_after, Some(secs(30)));
    let limit = d.limit.expect("the refusing limit");
    assert_eq!(&*limit.counter, "create_test_session_context_rate");
    assert_eq!((limit.max, limit.window.seconds()), (30, 60));
    // Another grant has its own budget.
    let d = decide(&bundle, &c.by("agent-2"), secs(30), &counters);
    assert_eq!(d.outcome, Allow);
    // A minute after the first call, one more is admitted, and only one.
    let d = decide(&bundle, &c, secs(60), &counters);
    assert_eq!(d.outcome, Allow);
    let d = decide(&bundle, &c, secs(60), &counters);
    assert_eq!(d.outcome, RateLimited);
    assert_eq!(d.retry_after, Some(secs(1)));
}

#[test]
#[rustfmt::skip]
fn seed_denies_other_tools_by_default() {
    check_rows(&[
        row("list_mock_servers", SEED, call("list_mock_servers"), Deny, "(default deny)"),
        row("case variant", SEED, call("Create_Test_Session_Context"), Allow, "/tools/create_test_session_context"),
    ]);
}

#[test]
#[rustfmt::skip]
fn full_policy_must_shows() {
    check_rows(&[
        row("delete glob", FULL, call("delete_test_session"), Deny, "/tools/delete_*")
            .reason("Deleting test data is not allowed for agents."),
        row("hidden", FULL, call("debug_dump"), Hidden, "/hide/0"),
        row("unknown destructive tool", FULL, call("update_widget").annotated(DESTRUCTIVE), RequireApproval, "/classes/destructive"),
        row("financial class", FULL, call("refund_order"), Deny, "/classes/financial")
            .reason("Payments are handled by the billing team."),
        row("read class", FULL, call("list_mock_servers"), Allow, "/classes/read"),
        row("write class has no rule", FULL, call("update_widget"), Deny, "(default deny)"),
        row("deny_if on a local spec", FULL, call("generate_mock_api").args(r#"{"spec_url_or_path": "/etc/shadow"}"#), Deny, "/tools/generate_mock_api/deny_if/0")
            .reason("Mock APIs may only be generated from remote specifications."),
        row("remote spec", FULL, call("generate_mock_api").args(r#"{"spec_url_or_path": "https://x/api.yaml"}"#), Allow, "/tools/generate_mock_api"),
    ]);

    let bundle = must_load(FULL);
    let d = decide(
        &bundle,
        &call("update_widget").annotated(DESTRUCTIVE),
        Duration::ZERO,
        &LocalCounters::new(),
    );
    let approval = d.approval.expect("approval settings");
    assert_eq!(approval.timeout, Duration::from_secs(10 * 60));
    assert_eq!(approval.hold, Duration::from_secs(20));
    assert_eq!(d.class, Some(RiskClass::Destructive));
}

#[test]
fn full_policy_limits() {
    let bundle = must_load(FULL);
    let counters = LocalCounters::new();
    let plan = call("execute_test_plan");
    for i in 0..10 {
        assert_eq!(
            decide(&bundle, &plan, Duration::ZERO, &counters).outcome,
            Allow,
            "{i}"
        );
    }
    let d = decide(&bundle, &plan, Duration::ZERO, &counters);
    assert_eq!(
        (d.outcome, &*d.rule),
        (RateLimited, "/tools/execute_test_plan/rate_limit")
    );

    // all_tools: 600 a minute for the whole fleet, over every grant and tool
    // (the 10 plans above count too).
    for i in 0..590 {
        let grant = if i % 2 == 0 { "g1" } else { "g2" };
        let d = decide(
            &bundle,
            &call("list_things").by(grant),
            Duration::ZERO,
            &counters,
        );
        assert_eq!(d.outcome, Allow, "{i}");
    }
    let d = decide(
        &bundle,
        &call("get_thing").by("g3"),
        Duration::ZERO,
        &counters,
    );
    assert_eq!((d.outcome, &*d.rule), (RateLimited, "/all_tools/limits/0"));
    assert_eq!(d.retry_after, Some(secs(60)));
}
