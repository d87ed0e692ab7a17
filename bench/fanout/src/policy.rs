//! The versions the benchmark pushes: one base policy document, made
//! distinct per push so every push is a new version (identical content would
//! be a no-op on the control plane).

use serde_json::{Map, Value};

/// Why a base policy cannot be varied.
#[derive(Debug)]
pub struct NotADocument(String);

impl std::fmt::Display for NotADocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the base policy must be a policy document with a \"tools\" object: {}",
            self.0
        )
    }
}

impl std::error::Error for NotADocument {}

/// A policy document the benchmark derives its versions from.
pub struct Base(Map<String, Value>);

impl Base {
    pub fn parse(bytes: &[u8]) -> Result<Self, NotADocument> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(doc)) if doc.get("tools").is_some_and(Value::is_object) => {
                Ok(Self(doc))
            }
            Ok(_) => Err(NotADocument("not an object with tools".to_owned())),
            Err(e) => Err(NotADocument(e.to_string())),
        }
    }

    /// The base with one extra, empty tool rule named after `round` and
    /// `salt`, so each (round, salt) gives content no earlier push had.
    pub fn variant(&self, round: u32, salt: u64) -> Vec<u8> {
        let mut doc = self.0.clone();
        if let Some(Value::Object(tools)) = doc.get_mut("tools") {
            tools.insert(
                format!("fanout_marker_{salt:x}_{round}"),
                Value::Object(Map::new()),
            );
        }
        // Serializing a `Value` built from parsed JSON cannot fail (string
        // keys only); an empty body would be refused by the push anyway.
        serde_json::to_vec_pretty(&Value::Object(doc)).unwrap_or_default()
    }
}
