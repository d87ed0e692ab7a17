//! Filtering `tools/list` results: hidden tools, and tools every call of
//! which would be denied, are removed; the annotations of every listed tool
//! are collected so risk classes can use them.

use serde_json::Value;
use tollgate_policy::{Annotations, Listing};

/// A tool seen in a `tools/list` result.
#[derive(Debug, Clone)]
pub struct SeenTool {
    /// Its name.
    pub name: String,
    /// Its annotations, if it had any.
    pub annotations: Option<Annotations>,
}

/// Filters every `tools/list` result among `message` (one JSON-RPC message
/// or a batch) whose id is in `ids`. Returns the new bytes if anything was
/// removed, and the tools seen either way.
pub fn filter(
    message: &[u8],
    ids: &[Value],
    listing: impl Fn(&str, Option<&Annotations>) -> Listing,
) -> (Option<Vec<u8>>, Vec<SeenTool>) {
    let Ok(mut value) = serde_json::from_slice::<Value>(message) else {
        return (None, Vec::new());
    };
    let mut seen = Vec::new();
    let mut changed = false;
    match &mut value {
        Value::Array(items) => {
            for item in items {
                changed |= filter_one(item, ids, &listing, &mut seen);
            }
        }
        item => changed |= filter_one(item, ids, &listing, &mut seen),
    }
    let bytes = changed.then(|| serde_json::to_vec(&value).unwrap_or_else(|_| message.to_vec()));
    (bytes, seen)
}

fn filter_one(
    message: &mut Value,
    ids: &[Value],
    listing: &impl Fn(&str, Option<&Annotations>) -> Listing,
    seen: &mut Vec<SeenTool>,
) -> bool {
    if !message.get("id").is_some_and(|id| ids.contains(id)) {
        return false;
    }
    let Some(tools) = message
        .pointer_mut("/result/tools")
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    let before = tools.len();
    tools.retain(|tool| {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            // A tool without a name cannot be called; drop it rather than guess.
            return false;
        };
        let annotations = tool
            .get("annotations")
            .and_then(|a| serde_json::from_value::<Annotations>(a.clone()).ok());
        seen.push(SeenTool {
            name: name.to_owned(),
            annotations,
        });
        listing(name, annotations.as_ref()) == Listing::Listed
    });
    tools.len() != before
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn listing(name: &str, a: Option<&Annotations>) -> Listing {
        if name.starts_with("debug") {
            Listing::Hidden
        } else if a.and_then(|a| a.destructive_hint) == Some(true) {
            Listing::Denied
        } else {
            Listing::Listed
        }
    }

    #[test]
    fn removes_hidden_and_denied_tools_of_matching_ids() {
        let msg = json!({"jsonrpc": "2.0", "id": 3, "result": {"tools": [
            {"name": "echo"},
            {"name": "debug_dump"},
            {"name": "wipe", "annotations": {"destructiveHint": true}},
        ], "nextCursor": "c"}});
        let (out, seen) = filter(msg.to_string().as_bytes(), &[json!(3)], listing);
        let out: Value = serde_json::from_slice(&out.unwrap()).unwrap();
        assert_eq!(out["result"]["tools"], json!([{"name": "echo"}]));
        assert_eq!(out["result"]["nextCursor"], "c");
        assert_eq!(seen.len(), 3);
        assert_eq!(
            seen[2].annotations.and_then(|a| a.destructive_hint),
            Some(true)
        );
    }

    #[test]
    fn leaves_other_messages_alone() {
        let msg = json!({"jsonrpc": "2.0", "id": 4, "result": {"tools": [{"name": "debug_dump"}]}});
        let (out, _) = filter(msg.to_string().as_bytes(), &[json!(3)], listing);
        assert!(out.is_none());
        let (out, _) = filter(b"not json", &[json!(3)], listing);
        assert!(out.is_none());
    }

    #[test]
    fn filters_inside_batches() {
        let msg = json!([{"id": "a", "result": {"tools": [{"name": "debug_x"}, {"name": "y"}]}}, {"id": "b", "result": {}}]);
        let (out, _) = filter(msg.to_string().as_bytes(), &[json!("a")], listing);
        let out: Value = serde_json::from_slice(&out.unwrap()).unwrap();
        assert_eq!(out[0]["result"]["tools"], json!([{"name": "y"}]));
    }
}
