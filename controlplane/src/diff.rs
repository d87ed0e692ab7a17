//! Which rules changed between two policy files: both are flattened to
//! `rule pointer → value` (`/tools/x`, `/classes/y`, `/grants/g`,
//! `/servers/s/tools/x`, and any other top-level setting such as
//! `/default`), then compared key by key.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// How one rule changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Added,
    Removed,
    Changed,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Added => "+",
            Change::Removed => "-",
            Change::Changed => "~",
        })
    }
}

/// The changed rules from `a` to `b`, by pointer.
pub fn diff(a: &Value, b: &Value) -> Vec<(String, Change)> {
    let (a, b) = (rules(a), rules(b));
    let mut out = Vec::new();
    for (ptr, va) in &a {
        match b.get(ptr) {
            None => out.push((ptr.clone(), Change::Removed)),
            Some(vb) if vb != va => out.push((ptr.clone(), Change::Changed)),
            Some(_) => {}
        }
    }
    for ptr in b.keys().filter(|p| !a.contains_key(*p)) {
        out.push((ptr.clone(), Change::Added));
    }
    out.sort();
    out
}

/// Maps whose entries are each one rule.
const RULE_MAPS: [&str; 3] = ["tools", "classes", "grants"];

fn rules(v: &Value) -> BTreeMap<String, &Value> {
    let mut out = BTreeMap::new();
    flatten(v, "", &mut out);
    out
}

fn flatten<'a>(v: &'a Value, prefix: &str, out: &mut BTreeMap<String, &'a Value>) {
    let Some(obj) = v.as_object() else {
        out.insert(prefix.to_owned(), v);
        return;
    };
    for (k, v) in obj {
        let ptr = format!("{prefix}/{}", escape(k));
        match v.as_object() {
            Some(entries) if k == "servers" && prefix.is_empty() => {
                for (name, doc) in entries {
                    flatten(doc, &format!("{ptr}/{}", escape(name)), out);
                }
            }
            Some(entries) if RULE_MAPS.contains(&k.as_str()) => {
                for (name, rule) in entries {
                    out.insert(format!("{ptr}/{}", escape(name)), rule);
                }
            }
            _ => {
                out.insert(ptr, v);
            }
        }
    }
}

/// RFC 6901 escaping of one reference token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_are_compared_by_pointer() {
        let a = json!({"servers": {"s": {"default": "deny", "tools": {
            "x": {}, "y": {"deny": true}, "a/b": {}}}}, "grants": {"g": {}}});
        let b = json!({"servers": {"s": {"default": "allow", "tools": {
            "x": {}, "y": {"deny": false}, "z": {}}}}, "grants": {"g": {}}});
        assert_eq!(
            diff(&a, &b),
            [
                ("/servers/s/default".to_owned(), Change::Changed),
                ("/servers/s/tools/a~1b".to_owned(), Change::Removed),
                ("/servers/s/tools/y".to_owned(), Change::Changed),
                ("/servers/s/tools/z".to_owned(), Change::Added),
            ]
        );
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn a_document_flattens_its_tools_and_classes() {
        let a = json!({"version": "1", "classes": {"destructive": "deny"}});
        let b = json!({"version": "1", "classes": {"destructive": "approve"}, "tools": {"t": {}}});
        assert_eq!(
            diff(&a, &b),
            [
                ("/classes/destructive".to_owned(), Change::Changed),
                ("/tools/t".to_owned(), Change::Added),
            ]
        );
    }
}
