//! Filtering `tools/list` results: hidden tools, and tools every call of
//! which would be denied, are removed; the annotations of every listed tool
//! are collected so risk classes can use them.
//!
//! Replies are matched to requests by an id the sidecar owns, never by the
//! client's: each forwarded `tools/list` request carries a [`ListIds`]
//! token in place of its id, and the reply gets the client's id back, byte
//! for byte. An upstream that re-serialises ids (`1.0` echoed as `1`) or
//! replays a reply on a resumed stream cannot slip a list past the filter.
//! A reply that carries `result.tools` but no token of this sidecar's is
//! filtered with the strictest view: a tool stays only if it would be listed
//! whatever annotations the server gave it.

use serde_json::{Map, Value};
use tollgate_policy::{Annotations, Listing};

/// A tool seen in a `tools/list` result.
#[derive(Debug, Clone)]
pub struct SeenTool {
    /// Its name.
    pub name: String,
    /// Its annotations, if it had any.
    pub annotations: Option<Annotations>,
}

/// The ids the sidecar gives forwarded `tools/list` requests:
/// `tollgate-list-<nonce>-<the client's id, hex>`. The nonce is random per
/// process, so a client cannot make one; the client's id travels inside, so
/// a reply is matched and restored without state, on whatever stream it
/// comes back.
#[derive(Debug, Clone)]
pub struct ListIds {
    prefix: String,
}

impl Default for ListIds {
    fn default() -> Self {
        let nonce = crate::session_ids::SessionIds::new().next();
        Self {
            prefix: format!("tollgate-list-{}-", &nonce[..16]),
        }
    }
}

impl ListIds {
    /// The token (a JSON string, quotes included) for a request whose raw id is `raw`.
    pub fn token(&self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + 2 * raw.len() + 2);
        out.push(b'"');
        out.extend_from_slice(self.prefix.as_bytes());
        for b in raw {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        out.push(b'"');
        out
    }

    /// The client's raw id that `id` stands for, if it is one of this
    /// sidecar's tokens around a valid JSON-RPC id (a string or a number).
    fn restore(&self, id: &Value) -> Option<String> {
        let hex = id.as_str()?.strip_prefix(self.prefix.as_str())?;
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect();
        let text = String::from_utf8(bytes?).ok()?;
        // An upstream sees the tokens and could forge one: what goes back in
        // the client's reply must still be a valid id.
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::String(_) | Value::Number(_)) => Some(text),
            _ => None,
        }
    }

    /// Whether `data` may hold a `tools/list` reply: it names `tools`, or
    /// has an escape that could spell it. Lets streams skip parsing the
    /// events no list reply can be in.
    pub fn may_hold_list(data: &[u8]) -> bool {
        memchr::memmem::find(data, b"tools").is_some()
            || memchr::memmem::find(data, b"\\u").is_some()
    }
}

/// What [`filter`] did to a message.
#[derive(Debug, Default)]
pub struct Filtered {
    /// The new bytes, if anything changed (a tool removed, an id restored).
    pub bytes: Option<Vec<u8>>,
    /// Tools of the replies matched to this sidecar's requests.
    pub seen: Vec<SeenTool>,
    /// Replies matched to this sidecar's requests.
    pub matched: usize,
}

/// Filters every `tools/list` reply among `message` (one JSON-RPC message or
/// a batch): replies to this sidecar's requests by `listing`, with the
/// client's id restored; other replies carrying `result.tools` by the
/// strictest view. Bytes that are not JSON are left alone.
pub fn filter(
    message: &[u8],
    ids: &ListIds,
    listing: impl Fn(&str, Option<&Annotations>) -> Listing,
) -> Filtered {
    let Ok(value) = serde_json::from_slice::<Value>(message) else {
        return Filtered::default();
    };
    let mut out = Filtered::default();
    let mut changed = false;
    let mut bytes = Vec::with_capacity(message.len());
    match value {
        Value::Array(items) => {
            bytes.push(b'[');
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    bytes.push(b',');
                }
                changed |= filter_one(item, ids, &listing, &mut out, &mut bytes);
            }
            bytes.push(b']');
        }
        item => changed |= filter_one(item, ids, &listing, &mut out, &mut bytes),
    }
    out.bytes = changed.then_some(bytes);
    out
}

/// Filters one message and writes it to `bytes`; returns whether it changed.
fn filter_one(
    mut message: Value,
    ids: &ListIds,
    listing: &impl Fn(&str, Option<&Annotations>) -> Listing,
    out: &mut Filtered,
    bytes: &mut Vec<u8>,
) -> bool {
    let restored = message.get("id").and_then(|id| ids.restore(id));
    let changed = match (&restored, message.pointer_mut("/result/tools")) {
        (Some(_), Some(Value::Array(tools))) => {
            out.matched += 1;
            retain_listed(tools, |name, a| listing(name, a), Some(&mut out.seen));
            true
        }
        (Some(_), _) => {
            // A reply to the sidecar's request without a tool list (an
            // error): only its id changes.
            out.matched += 1;
            true
        }
        (None, Some(Value::Array(tools))) => {
            retain_listed(tools, |name, _| strictest(listing, name), None)
        }
        (None, _) => false,
    };
    match (restored, message) {
        (Some(raw_id), Value::Object(mut fields)) => {
            fields.remove("id");
            write_with_id(bytes, &raw_id, &fields);
        }
        (_, message) => {
            // Serialising a Value cannot fail (its keys are strings).
            let _ = serde_json::to_writer(&mut *bytes, &message);
        }
    }
    changed
}

/// Keeps the tools `keep` lists; returns whether any was removed. Names
/// and annotations go to `seen` when given.
fn retain_listed(
    tools: &mut Vec<Value>,
    keep: impl Fn(&str, Option<&Annotations>) -> Listing,
    mut seen: Option<&mut Vec<SeenTool>>,
) -> bool {
    let before = tools.len();
    tools.retain(|tool| {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            // A tool without a name cannot be called; drop it rather than guess.
            return false;
        };
        let annotations = tool
            .get("annotations")
            .and_then(|a| serde_json::from_value::<Annotations>(a.clone()).ok());
        if let Some(seen) = seen.as_deref_mut() {
            seen.push(SeenTool {
                name: name.to_owned(),
                annotations,
            });
        }
        keep(name, annotations.as_ref()) == Listing::Listed
    });
    tools.len() != before
}

/// Listed only if listed whatever annotations the server gave the tool.
fn strictest(listing: &impl Fn(&str, Option<&Annotations>) -> Listing, name: &str) -> Listing {
    let hint = |read_only_hint, destructive_hint| Annotations {
        read_only_hint,
        destructive_hint,
        idempotent_hint: None,
        open_world_hint: None,
    };
    let variants = [
        None,
        Some(hint(Some(true), None)),
        Some(hint(Some(false), Some(true))),
        Some(hint(Some(false), Some(false))),
    ];
    match variants
        .iter()
        .map(|a| listing(name, a.as_ref()))
        .find(|l| *l != Listing::Listed)
    {
        Some(refused) => refused,
        None => Listing::Listed,
    }
}

/// `{"id":<raw_id>,…fields}`.
fn write_with_id(bytes: &mut Vec<u8>, raw_id: &str, fields: &Map<String, Value>) {
    bytes.extend_from_slice(b"{\"id\":");
    bytes.extend_from_slice(raw_id.as_bytes());
    for (k, v) in fields {
        bytes.push(b',');
        let _ = serde_json::to_writer(&mut *bytes, k);
        bytes.push(b':');
        let _ = serde_json::to_writer(&mut *bytes, v);
    }
    bytes.push(b'}');
}

#[cfg(test)]
#[path = "list_filter_tests.rs"]
mod tests;
