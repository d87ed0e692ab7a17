//! Risk classes: what kind of effect a tool has, for tools no rule names.
//!
//! A tool's class comes from, in order:
//!
//! | step | source | class |
//! |---|---|---|
//! | 1 | the tool's rule pins `"class"` | that class |
//! | 2 | annotation `readOnlyHint: true` | `read` |
//! | 3 | a name word `pay`, `payment(s)`, `charge`, `refund`, `transfer`, `payout`, `invoice`, `purchase`, `withdraw` | `financial` |
//! | 4 | a name word `exec`, `execute`, `run`, `shell`, `eval`, `spawn`, `command`, `script` | `execute` |
//! | 5 | annotation `destructiveHint: true`, or `readOnlyHint: false` without `destructiveHint` (the MCP default is destructive) | `destructive` |
//! | 6 | annotation `destructiveHint: false` | `write` |
//! | 7 | a name word `delete`, `drop`, `remove`, `destroy`, `purge`, `truncate`, `wipe`, `erase`, `revoke`, `kill` | `destructive` |
//! | 8 | a first name word `get`, `list`, `read`, `search`, `find`, `fetch`, `describe`, `show`, `view`, `query`, `lookup`, `count`, `check` | `read` |
//! | 9 | anything else | `write` |
//!
//! Annotations cannot say that a tool moves money or runs code, so those name
//! words are read before them; a read-only tool cannot do either, so
//! `readOnlyHint: true` is read first. `idempotentHint` and `openWorldHint` do
//! not change the class. Name words are the name split at `_`, `-`, `.`, `/`,
//! and lower-to-upper case changes, compared case-insensitively
//! (`deleteUser` → `delete`, `user`).

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A tool's risk class.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RiskClass {
    /// Reads data, changes nothing.
    Read,
    /// Creates or changes data.
    Write,
    /// Deletes or irreversibly changes data.
    Destructive,
    /// Moves money.
    Financial,
    /// Runs code or commands.
    Execute,
}

impl RiskClass {
    /// Every class, in document order.
    pub const ALL: [RiskClass; 5] = [
        RiskClass::Read,
        RiskClass::Write,
        RiskClass::Destructive,
        RiskClass::Financial,
        RiskClass::Execute,
    ];

    /// The name used in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            RiskClass::Read => "read",
            RiskClass::Write => "write",
            RiskClass::Destructive => "destructive",
            RiskClass::Financial => "financial",
            RiskClass::Execute => "execute",
        }
    }
}

impl fmt::Display for RiskClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RiskClass {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        RiskClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or(())
    }
}

/// The MCP tool annotations that bear on a tool's class (from `tools/list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Annotations {
    /// `readOnlyHint`.
    #[serde(default)]
    pub read_only_hint: Option<bool>,
    /// `destructiveHint`.
    #[serde(default)]
    pub destructive_hint: Option<bool>,
    /// `idempotentHint` (does not change the class).
    #[serde(default)]
    pub idempotent_hint: Option<bool>,
    /// `openWorldHint` (does not change the class).
    #[serde(default)]
    pub open_world_hint: Option<bool>,
}

/// The class of a tool that no rule pins (steps 2–9 of the table above).
pub fn classify(name: &str, annotations: Option<&Annotations>) -> RiskClass {
    let hints = annotations.copied().unwrap_or_default();
    if hints.read_only_hint == Some(true) {
        return RiskClass::Read;
    }
    let (mut execute, mut destructive, mut first_read) = (false, false, false);
    for (i, word) in words(name).enumerate() {
        match word_kind(word) {
            Some(WordKind::Financial) => return RiskClass::Financial,
            Some(WordKind::Execute) => execute = true,
            Some(WordKind::Destructive) => destructive = true,
            Some(WordKind::Read) => first_read |= i == 0,
            None => {}
        }
    }
    if execute {
        return RiskClass::Execute;
    }
    match (hints.read_only_hint, hints.destructive_hint) {
        (_, Some(true)) | (Some(false), None) => return RiskClass::Destructive,
        (_, Some(false)) => return RiskClass::Write,
        _ => {}
    }
    if destructive {
        return RiskClass::Destructive;
    }
    if first_read {
        return RiskClass::Read;
    }
    RiskClass::Write
}

enum WordKind {
    Financial,
    Execute,
    Destructive,
    Read,
}

/// Which word list a word is on (ASCII case-insensitively), in one look:
/// financial, execute, destructive, read.
fn word_kind(word: &str) -> Option<WordKind> {
    let mut buf = [0u8; 8];
    let lower = buf.get_mut(..word.len())?;
    lower.copy_from_slice(word.as_bytes());
    lower.make_ascii_lowercase();
    Some(match &*lower {
        b"pay" | b"payment" | b"payments" | b"charge" | b"refund" | b"transfer" | b"payout"
        | b"invoice" | b"purchase" | b"withdraw" => WordKind::Financial,
        b"exec" | b"execute" | b"run" | b"shell" | b"eval" | b"spawn" | b"command" | b"script" => {
            WordKind::Execute
        }
        b"delete" | b"drop" | b"remove" | b"destroy" | b"purge" | b"truncate" | b"wipe"
        | b"erase" | b"revoke" | b"kill" => WordKind::Destructive,
        b"get" | b"list" | b"read" | b"search" | b"find" | b"fetch" | b"describe" | b"show"
        | b"view" | b"query" | b"lookup" | b"count" | b"check" => WordKind::Read,
        _ => return None,
    })
}

/// Splits a tool name into words at separators and lower→upper case changes.
fn words(name: &str) -> impl Iterator<Item = &str> {
    let bytes = name.as_bytes();
    let mut start = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let b = bytes[i];
            if matches!(b, b'_' | b'-' | b'.' | b'/' | b' ') {
                let word = &name[start..i];
                i += 1;
                start = i;
                if !word.is_empty() {
                    return Some(word);
                }
                continue;
            }
            if i > start && b.is_ascii_uppercase() && bytes[i - 1].is_ascii_lowercase() {
                let word = &name[start..i];
                start = i;
                i += 1;
                return Some(word);
            }
            i += 1;
        }
        if start < bytes.len() {
            let word = &name[start..];
            start = bytes.len();
            return Some(word);
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints(json: &str) -> Annotations {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn words_split_at_separators_and_case_changes() {
        let w: Vec<_> = words("deleteUser_now-x.y").collect();
        assert_eq!(w, ["delete", "User", "now", "x", "y"]);
        let w: Vec<_> = words("__a__").collect();
        assert_eq!(w, ["a"]);
        assert_eq!(words("").count(), 0);
    }

    #[test]
    fn classes_from_names() {
        let table = [
            ("delete_test_session", RiskClass::Destructive),
            ("dropTable", RiskClass::Destructive),
            ("remove_user", RiskClass::Destructive),
            ("charge_card", RiskClass::Financial),
            ("refund", RiskClass::Financial),
            ("bank_transfer", RiskClass::Financial),
            ("exec", RiskClass::Execute),
            ("run_tests", RiskClass::Execute),
            ("shell", RiskClass::Execute),
            ("get_test_session", RiskClass::Read),
            ("list_test_sessions", RiskClass::Read),
            ("read_file", RiskClass::Read),
            ("search", RiskClass::Read),
            ("create_test_session_context", RiskClass::Write),
            ("update_user", RiskClass::Write),
            ("get_and_delete", RiskClass::Destructive),
            ("playlist", RiskClass::Write),
        ];
        for (name, class) in table {
            assert_eq!(classify(name, None), class, "{name}");
        }
    }

    #[test]
    fn annotations_come_before_generic_names() {
        let ro = hints(r#"{"readOnlyHint": true}"#);
        assert_eq!(classify("delete_cache", Some(&ro)), RiskClass::Read);
        assert_eq!(classify("get_payment", Some(&ro)), RiskClass::Read);
        let destructive = hints(r#"{"destructiveHint": true}"#);
        assert_eq!(
            classify("update_user", Some(&destructive)),
            RiskClass::Destructive
        );
        assert_eq!(classify("refund", Some(&destructive)), RiskClass::Financial);
        let safe_write = hints(r#"{"readOnlyHint": false, "destructiveHint": false}"#);
        assert_eq!(
            classify("delete_draft", Some(&safe_write)),
            RiskClass::Write
        );
        let spec_default = hints(r#"{"readOnlyHint": false}"#);
        assert_eq!(
            classify("update_user", Some(&spec_default)),
            RiskClass::Destructive
        );
        let unrelated = hints(r#"{"idempotentHint": true, "openWorldHint": false}"#);
        assert_eq!(classify("list_users", Some(&unrelated)), RiskClass::Read);
    }
}
