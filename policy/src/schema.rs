//! The JSON Schema of policy files, generated from [`crate::document`].

use crate::document::PolicyFile;

/// The JSON Schema (draft 2020-12) of a policy file, pretty-printed, with a
/// trailing newline: the content of `policy/policy.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(PolicyFile);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
