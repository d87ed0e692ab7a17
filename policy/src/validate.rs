//! Reading a policy file: every structural error at once, each with its JSON
//! pointer, what is wrong and what is expected.
//!
//! serde stops at the first error, and operators fix files faster when they see
//! all of them, so the file is walked by hand. The walk builds the same
//! [`crate::document`] values serde would (a test holds the two to agreement),
//! keeping every part that is valid so that later checks still run on it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::classes::RiskClass;
use crate::document::*;
use crate::error::{Errors, child};

/// Reads a whole file. The result holds every valid part even when `errs`
/// is not empty.
pub(crate) fn read_file(v: &Value, errs: &mut Errors) -> Option<PolicyFile> {
    let Value::Object(m) = v else {
        errs.push(
            "",
            format!(
                "expected a policy document or a bundle (a JSON object), found {}",
                describe(v)
            ),
        );
        return None;
    };
    if m.contains_key("servers") || m.contains_key("grants") {
        read_bundle(v, "", errs).map(PolicyFile::Bundle)
    } else {
        read_policy(v, "", errs).map(|p| PolicyFile::Policy(Box::new(p)))
    }
}

const BUNDLE_FIELDS: &[&str] = &["servers", "grants"];
const GRANT_FIELDS: &[&str] = &["token_sha256", "token_hmac_sha256", "labels", "policies"];
const POLICY_FIELDS: &[&str] = &[
    "version",
    "default",
    "mode",
    "hide",
    "all_tools",
    "classes",
    "tools",
];
const RULE_FIELDS: &[&str] = &[
    "action",
    "reason",
    "class",
    "limits",
    "rate_limit",
    "deny_if",
    "require",
    "approval",
];
const LIMIT_FIELDS: &[&str] = &["counter", "window", "max", "scope", "on_unavailable"];
const RATE_LIMIT_FIELDS: &[&str] = &["max", "window"];
const GROUP_FIELDS: &[&str] = &["conditions", "on_deny"];
const CONDITION_FIELDS: &[&str] = &["path", "op", "value"];
const APPROVAL_FIELDS: &[&str] = &["timeout", "hold", "show_arguments"];

fn read_bundle(v: &Value, at: &str, errs: &mut Errors) -> Option<BundleDocument> {
    let m = object(v, at, errs, BUNDLE_FIELDS, "a bundle")?;
    let servers = match m.get("servers") {
        Some(v) => map_of(v, &child(at, "servers"), errs, "server", read_policy),
        None => {
            errs.push(
                at,
                "a bundle needs `servers`: an object of policy documents by server name",
            );
            BTreeMap::new()
        }
    };
    let grants = m
        .get("grants")
        .map(|v| map_of(v, &child(at, "grants"), errs, "grant", read_grant))
        .unwrap_or_default();
    Some(BundleDocument { servers, grants })
}

fn read_grant(v: &Value, at: &str, errs: &mut Errors) -> Option<Grant> {
    let m = object(v, at, errs, GRANT_FIELDS, "a grant")?;
    let token_sha256 = optional(m, at, "token_sha256", errs, |v, at, errs| {
        hex32(
            v,
            at,
            errs,
            "the SHA-256 of the token, e.g. from `printf %s TOKEN | sha256sum`",
        )
    });
    let token_hmac_sha256 = optional(m, at, "token_hmac_sha256", errs, |v, at, errs| {
        hex32(
            v,
            at,
            errs,
            "the keyed hash of the token, as a control plane distributes it",
        )
    });
    match (
        m.contains_key("token_sha256"),
        m.contains_key("token_hmac_sha256"),
    ) {
        (false, false) => errs.push(
            at,
            "missing field `token_sha256`: expected the SHA-256 of the grant's bearer token in hex \
             (`printf %s TOKEN | sha256sum`)",
        ),
        (true, true) => errs.push(
            at,
            "a grant names its token once: `token_sha256` (in policy files) or \
             `token_hmac_sha256` (in bundles a control plane distributes), not both; remove one",
        ),
        _ => {}
    }
    let labels = m
        .get("labels")
        .map(|v| {
            map_of(v, &child(at, "labels"), errs, "label", |v, at, errs| {
                string(v, at, errs)
            })
        })
        .unwrap_or_default();
    let policies = m
        .get("policies")
        .map(|v| map_of(v, &child(at, "policies"), errs, "server", read_policy))
        .unwrap_or_default();
    Some(Grant {
        token_sha256,
        token_hmac_sha256,
        labels,
        policies,
    })
}

/// 64 hex digits, read as lower case; `what` says what they are.
fn hex32(v: &Value, at: &str, errs: &mut Errors, what: &str) -> Option<String> {
    let s = string(v, at, errs)?;
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(s.to_ascii_lowercase())
    } else {
        errs.push(at, format!("expected 64 hex digits ({what}), found {s:?}"));
        None
    }
}

fn read_policy(v: &Value, at: &str, errs: &mut Errors) -> Option<PolicyDocument> {
    let m = object(v, at, errs, POLICY_FIELDS, "a policy document")?;
    let version = required(m, at, "version", errs, r#""1""#, |v, at, errs| {
        choose(v, at, errs, &[("1", LanguageVersion::V1)])
    });
    let default = required(
        m,
        at,
        "default",
        errs,
        r#""allow" or "deny""#,
        |v, at, errs| {
            choose(
                v,
                at,
                errs,
                &[
                    ("allow", DefaultAction::Allow),
                    ("deny", DefaultAction::Deny),
                ],
            )
        },
    );
    let mode = optional(m, at, "mode", errs, |v, at, errs| {
        choose(
            v,
            at,
            errs,
            &[("enforce", Mode::Enforce), ("shadow", Mode::Shadow)],
        )
    });
    let hide = optional(m, at, "hide", errs, |v, at, errs| {
        Some(list_of(v, at, errs, |v, at, errs| {
            let s = string(v, at, errs)?;
            match crate::glob::parse(&s) {
                Ok(_) => Some(s),
                Err(e) => {
                    errs.push(at, e);
                    None
                }
            }
        }))
    });
    let all_tools = optional(m, at, "all_tools", errs, |v, at, errs| {
        read_rule(v, at, errs, RuleKind::AllTools)
    });
    let classes = optional(m, at, "classes", errs, |v, at, errs| {
        let m = object(v, at, errs, &[], "an object of rules by risk class")?;
        let mut out = BTreeMap::new();
        for (name, v) in m {
            let here = child(at, name);
            match name.parse::<RiskClass>() {
                Ok(class) => {
                    if let Some(rule) = read_rule(v, &here, errs, RuleKind::Class) {
                        out.insert(class, rule);
                    }
                }
                Err(()) => errs.push(
                    &here,
                    format!(
                        "unknown risk class {name:?}; expected one of {}",
                        class_names()
                    ),
                ),
            }
        }
        Some(out)
    });
    let tools = optional(m, at, "tools", errs, |v, at, errs| {
        let m = object(v, at, errs, &[], "an object of rules by tool name or glob")?;
        let mut out = BTreeMap::new();
        for (name, v) in m {
            let here = child(at, name);
            if let Err(e) = crate::glob::parse(name) {
                errs.push(&here, e);
            }
            if let Some(rule) = read_rule(v, &here, errs, RuleKind::Tool) {
                out.insert(name.clone(), rule);
            }
        }
        Some(out)
    });
    Some(PolicyDocument {
        // Missing or wrong values are already reported; stand-ins keep the rest checkable.
        version: version.unwrap_or(LanguageVersion::V1),
        default: default.unwrap_or(DefaultAction::Deny),
        mode: mode.unwrap_or_default(),
        hide: hide.unwrap_or_default(),
        all_tools,
        classes: classes.unwrap_or_default(),
        tools: tools.unwrap_or_default(),
    })
}

#[derive(Clone, Copy, PartialEq)]
enum RuleKind {
    Tool,
    Class,
    AllTools,
}

fn read_rule(v: &Value, at: &str, errs: &mut Errors, kind: RuleKind) -> Option<Rule> {
    let m = object(v, at, errs, RULE_FIELDS, "a rule")?;
    let action = optional(m, at, "action", errs, |v, at, errs| {
        choose(
            v,
            at,
            errs,
            &[
                ("allow", Action::Allow),
                ("deny", Action::Deny),
                ("require_approval", Action::RequireApproval),
            ],
        )
    });
    let reason = optional(m, at, "reason", errs, string);
    let class = optional(m, at, "class", errs, |v, at, errs| {
        let s = string(v, at, errs)?;
        let class = s.parse::<RiskClass>().ok();
        if class.is_none() {
            errs.push(
                at,
                format!(
                    "unknown risk class {s:?}; expected one of {}",
                    class_names()
                ),
            );
        }
        class
    });
    if class.is_some() || m.contains_key("class") {
        let here = child(at, "class");
        if kind != RuleKind::Tool {
            errs.push(&here, "only a `tools` entry can pin a risk class");
        } else if let Some(other) = m.keys().find(|k| *k != "class") {
            errs.push(
                &here,
                format!(
                    "a rule that pins `class` takes its behaviour from `/classes/<class>`, so it \
                     cannot also have `{other}`; remove one of them"
                ),
            );
        }
    }
    let limits = optional(m, at, "limits", errs, |v, at, errs| {
        Some(list_of(v, at, errs, read_limit))
    });
    let rate_limit = optional(m, at, "rate_limit", errs, read_rate_limit);
    let deny_if = optional(m, at, "deny_if", errs, |v, at, errs| {
        Some(list_of(v, at, errs, read_group))
    });
    let require = optional(m, at, "require", errs, |v, at, errs| {
        Some(list_of(v, at, errs, read_group))
    });
    let approval = optional(m, at, "approval", errs, read_approval);
    if m.contains_key("approval") && action != Some(Action::RequireApproval) {
        let actual = action.unwrap_or_default().as_str();
        errs.push(
            &child(at, "approval"),
            format!(
                "`approval` applies only to a rule whose `action` is \"require_approval\"; this \
                 rule's action is \"{actual}\": set the action or remove `approval`"
            ),
        );
    }
    Some(Rule {
        action,
        reason,
        class,
        limits: limits.unwrap_or_default(),
        rate_limit,
        deny_if: deny_if.unwrap_or_default(),
        require: require.unwrap_or_default(),
        approval,
    })
}

fn read_limit(v: &Value, at: &str, errs: &mut Errors) -> Option<Limit> {
    let m = object(v, at, errs, LIMIT_FIELDS, "a limit")?;
    let counter = optional(m, at, "counter", errs, |v, at, errs| {
        let s = string(v, at, errs)?;
        if s.is_empty() {
            errs.push(at, "a counter name must not be empty; remove `counter` to give the limit a counter of its own");
            return None;
        }
        Some(s)
    });
    let window = required(m, at, "window", errs, WINDOW_EXPECTED, read_window);
    let max = required(
        m,
        at,
        "max",
        errs,
        "a whole number of calls, at least 1",
        read_max,
    );
    let scope = optional(m, at, "scope", errs, |v, at, errs| {
        choose(
            v,
            at,
            errs,
            &[
                ("grant", Scope::Grant),
                ("session", Scope::Session),
                ("pod", Scope::Pod),
                ("global", Scope::Global),
            ],
        )
    });
    let on_unavailable = optional(m, at, "on_unavailable", errs, |v, at, errs| {
        choose(
            v,
            at,
            errs,
            &[
                ("fallback", OnUnavailable::Fallback),
                ("deny", OnUnavailable::Deny),
                ("allow", OnUnavailable::Allow),
            ],
        )
    });
    if on_unavailable.is_some() && scope == Some(Scope::Pod) {
        errs.push(
            &child(at, "on_unavailable"),
            "`on_unavailable` applies to fleet-wide limits (scope `grant`, `session` or `global`); a `pod` limit is always counted by the sidecar alone: remove `on_unavailable` or change the scope",
        );
    }
    Some(Limit {
        counter,
        window: window?,
        max: max?,
        scope,
        on_unavailable,
    })
}

fn read_rate_limit(v: &Value, at: &str, errs: &mut Errors) -> Option<RateLimit> {
    let m = object(
        v,
        at,
        errs,
        RATE_LIMIT_FIELDS,
        "a rate limit ({\"max\": N, \"window\": W})",
    )?;
    let max = required(
        m,
        at,
        "max",
        errs,
        "a whole number of calls, at least 1",
        read_max,
    );
    let window = required(m, at, "window", errs, WINDOW_EXPECTED, read_window);
    Some(RateLimit {
        max: max?,
        window: window?,
    })
}

const WINDOW_EXPECTED: &str = r#""second", "minute", "hour", "day" or a whole number of seconds"#;

fn read_window(v: &Value, at: &str, errs: &mut Errors) -> Option<Window> {
    let named = [
        ("second", NamedWindow::Second),
        ("minute", NamedWindow::Minute),
        ("hour", NamedWindow::Hour),
        ("day", NamedWindow::Day),
    ];
    match v {
        Value::String(s) => match named.iter().find(|(n, _)| n == s) {
            Some((_, w)) => Some(Window::Named(*w)),
            None => {
                errs.push(
                    at,
                    format!("unknown window {s:?}; expected {WINDOW_EXPECTED}"),
                );
                None
            }
        },
        Value::Number(n) => match n.as_u64() {
            Some(s) if s >= 1 => Some(Window::Seconds(s)),
            _ => {
                errs.push(at, format!("a window of {n} seconds is not valid; expected a whole number of seconds, at least 1"));
                None
            }
        },
        other => {
            errs.push(
                at,
                format!("expected {WINDOW_EXPECTED}, found {}", describe(other)),
            );
            None
        }
    }
}

fn read_max(v: &Value, at: &str, errs: &mut Errors) -> Option<u64> {
    match v.as_u64() {
        Some(0) => {
            errs.push(at, "`max` must be at least 1; a limit of 0 refuses every call, so write `\"action\": \"deny\"` instead");
            None
        }
        Some(n) => Some(n),
        None => {
            errs.push(
                at,
                format!(
                    "expected a whole number of calls, at least 1, found {}",
                    describe(v)
                ),
            );
            None
        }
    }
}

fn read_group(v: &Value, at: &str, errs: &mut Errors) -> Option<ConditionGroup> {
    let m = object(
        v,
        at,
        errs,
        GROUP_FIELDS,
        "a condition group ({\"conditions\": [...]})",
    )?;
    let conditions = required(
        m,
        at,
        "conditions",
        errs,
        "a list of conditions",
        |v, at, errs| {
            let list = list_of(v, at, errs, read_condition);
            if v.as_array().is_some_and(Vec::is_empty) {
                errs.push(at, "a condition group needs at least one condition");
            }
            Some(list)
        },
    );
    let on_deny = optional(m, at, "on_deny", errs, string);
    Some(ConditionGroup {
        conditions: conditions?,
        on_deny,
    })
}

fn read_condition(v: &Value, at: &str, errs: &mut Errors) -> Option<Condition> {
    let m = object(
        v,
        at,
        errs,
        CONDITION_FIELDS,
        "a condition ({\"path\", \"op\", \"value\"})",
    )?;
    let path = required(
        m,
        at,
        "path",
        errs,
        "a path such as \"args.name\"",
        |v, at, errs| {
            let s = string(v, at, errs)?;
            let rest = s.strip_prefix("args.");
            if rest.is_none_or(|r| r.split('.').any(str::is_empty)) {
                errs.push(
                at,
                format!("a condition path is `args.` then the argument's dotted path (e.g. \"args.spec_url\" or \"args.options.dry_run\"); found {s:?}"),
            );
                return None;
            }
            Some(s)
        },
    );
    let ops = [
        ("eq", Op::Eq),
        ("neq", Op::Neq),
        ("in", Op::In),
        ("not_in", Op::NotIn),
        ("lt", Op::Lt),
        ("lte", Op::Lte),
        ("gt", Op::Gt),
        ("gte", Op::Gte),
        ("regex", Op::Regex),
        ("contains", Op::Contains),
        ("exists", Op::Exists),
    ];
    let op = required(m, at, "op", errs, "an operator", |v, at, errs| {
        choose(v, at, errs, &ops)
    });
    // serde reads `"value": null` as no value; so must this reader.
    let value = m.get("value").filter(|v| !v.is_null()).cloned();
    if let Some(op) = op
        && let Err(e) = crate::conditions::CompiledCondition::new(
            "args.x",
            op,
            value.as_ref(),
            &mut crate::conditions::RegexCache::default(),
        )
    {
        let here = if m.contains_key("value") {
            child(at, "value")
        } else {
            at.to_owned()
        };
        errs.push(&here, e);
        // Reported; keep it from the compiler, which would report it again.
        return None;
    }
    Some(Condition {
        path: path?,
        op: op?,
        value,
    })
}

fn read_approval(v: &Value, at: &str, errs: &mut Errors) -> Option<Approval> {
    let m = object(v, at, errs, APPROVAL_FIELDS, "approval settings")?;
    let duration = |v: &Value, at: &str, errs: &mut Errors| {
        let s = string(v, at, errs)?;
        if parse_duration(&s).is_some() {
            Some(DurationText(s))
        } else {
            errs.push(at, format!("expected a duration such as \"20s\", \"10m\", \"2h\" (units ms, s, m, h, d), found {s:?}"));
            None
        }
    };
    let timeout = optional(m, at, "timeout", errs, duration);
    let hold = optional(m, at, "hold", errs, duration);
    let show_arguments = optional(m, at, "show_arguments", errs, |v, at, errs| match v {
        Value::Bool(b) => Some(*b),
        other => {
            errs.push(
                at,
                format!("expected true or false, found {}", describe(other)),
            );
            None
        }
    });
    Some(Approval {
        timeout,
        hold,
        show_arguments,
    })
}

// ---- generic readers ----------------------------------------------------

/// The object at `at`, with any field not in `known` reported (unless
/// `known` is empty: a map with free keys).
fn object<'v>(
    v: &'v Value,
    at: &str,
    errs: &mut Errors,
    known: &[&str],
    what: &str,
) -> Option<&'v Map<String, Value>> {
    let Value::Object(m) = v else {
        errs.push(
            at,
            format!("expected {what} (a JSON object), found {}", describe(v)),
        );
        return None;
    };
    if !known.is_empty() {
        for key in m.keys().filter(|k| !known.contains(&k.as_str())) {
            let hint = known
                .iter()
                .map(|k| (strsim::damerau_levenshtein(k, key), *k))
                .filter(|(d, _)| *d <= 2)
                .min()
                .map(|(_, k)| format!("did you mean `{k}`? "))
                .unwrap_or_default();
            errs.push(
                &child(at, key),
                format!(
                    "unknown field `{key}` in {what}; {hint}expected one of: {}",
                    known.join(", ")
                ),
            );
        }
    }
    Some(m)
}

fn required<T>(
    m: &Map<String, Value>,
    at: &str,
    key: &str,
    errs: &mut Errors,
    expected: &str,
    read: impl FnOnce(&Value, &str, &mut Errors) -> Option<T>,
) -> Option<T> {
    match m.get(key) {
        Some(v) => read(v, &child(at, key), errs),
        None => {
            errs.push(at, format!("missing field `{key}`: expected {expected}"));
            None
        }
    }
}

fn optional<T>(
    m: &Map<String, Value>,
    at: &str,
    key: &str,
    errs: &mut Errors,
    read: impl FnOnce(&Value, &str, &mut Errors) -> Option<T>,
) -> Option<T> {
    m.get(key).and_then(|v| read(v, &child(at, key), errs))
}

fn string(v: &Value, at: &str, errs: &mut Errors) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        other => {
            errs.push(at, format!("expected a string, found {}", describe(other)));
            None
        }
    }
}

fn choose<T: Copy>(v: &Value, at: &str, errs: &mut Errors, choices: &[(&str, T)]) -> Option<T> {
    let names = || {
        choices
            .iter()
            .map(|(n, _)| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Value::String(s) = v else {
        errs.push(
            at,
            format!("expected one of {}, found {}", names(), describe(v)),
        );
        return None;
    };
    match choices.iter().find(|(n, _)| n == s) {
        Some((_, t)) => Some(*t),
        None => {
            errs.push(
                at,
                format!("unknown value {s:?}; expected one of {}", names()),
            );
            None
        }
    }
}

fn list_of<T>(
    v: &Value,
    at: &str,
    errs: &mut Errors,
    mut read: impl FnMut(&Value, &str, &mut Errors) -> Option<T>,
) -> Vec<T> {
    let Value::Array(items) = v else {
        errs.push(
            at,
            format!("expected a list (a JSON array), found {}", describe(v)),
        );
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| read(v, &child(at, &i.to_string()), errs))
        .collect()
}

fn map_of<T>(
    v: &Value,
    at: &str,
    errs: &mut Errors,
    what: &str,
    mut read: impl FnMut(&Value, &str, &mut Errors) -> Option<T>,
) -> BTreeMap<String, T> {
    let Some(m) = object(v, at, errs, &[], &format!("an object keyed by {what} name")) else {
        return BTreeMap::new();
    };
    m.iter()
        .filter_map(|(k, v)| Some((k.clone(), read(v, &child(at, k), errs)?)))
        .collect()
}

fn class_names() -> String {
    RiskClass::ALL
        .map(|c| format!("{:?}", c.as_str()))
        .join(", ")
}

/// A short description of a JSON value for error messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}
