//! A call's arguments in canonical JSON and their SHA-256: what an approval
//! request is bound to. Object keys are sorted at every depth, there is no
//! whitespace, and numbers and strings are written as serde_json writes
//! them; absent arguments are `{}`.

use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// The canonical JSON of `arguments` (`{}` when absent). `None` when the
/// raw text is not JSON (the peek has read it, so this does not happen for
/// a judged call).
pub fn canonical_json(arguments: Option<&RawValue>) -> Option<String> {
    let value: Value = match arguments {
        Some(raw) => serde_json::from_str(raw.get()).ok()?,
        None => Value::Object(Default::default()),
    };
    let mut out = String::with_capacity(arguments.map_or(2, |r| r.get().len()));
    write(&value, &mut out);
    Some(out)
}

/// The canonical JSON of a parsed value.
pub fn canonical_value(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// SHA-256 (lowercase hex) of `canonical`.
pub fn sha256_hex(canonical: &str) -> String {
    Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `value` with sorted keys and no whitespace. Sorting here, not
/// relying on the map type, keeps the digest the same whether or not
/// serde_json keeps insertion order.
fn write(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    write(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(text: &str) -> String {
        let raw = RawValue::from_string(text.into()).unwrap();
        sha256_hex(&canonical_json(Some(&raw)).unwrap())
    }

    #[test]
    fn key_order_and_whitespace_do_not_change_the_digest() {
        let a = digest(r#"{"b":1,"a":{"y":[1,2,{"q":true,"p":null}],"x":"s"}}"#);
        let b = digest(
            "{ \"a\" : { \"x\" : \"s\", \"y\" : [ 1, 2, { \"p\": null, \"q\": true } ] },\n \"b\" : 1 }",
        );
        assert_eq!(a, b);
        assert_eq!(
            canonical_json(Some(
                &RawValue::from_string(r#"{ "b": 1, "a": "\u0041" }"#.into()).unwrap()
            ))
            .unwrap(),
            r#"{"a":"A","b":1}"#
        );
    }

    #[test]
    fn different_values_change_the_digest() {
        assert_ne!(digest(r#"{"a":1}"#), digest(r#"{"a":2}"#));
        assert_ne!(digest(r#"{"a":"1"}"#), digest(r#"{"a":1}"#));
        assert_ne!(digest(r#"{"a":[1,2]}"#), digest(r#"{"a":[2,1]}"#));
        assert_ne!(digest(r#"{"a":1}"#), digest(r#"{"b":1}"#));
    }

    #[test]
    fn absent_arguments_are_an_empty_object() {
        assert_eq!(canonical_json(None).unwrap(), "{}");
        assert_eq!(sha256_hex(&canonical_json(None).unwrap()), digest("{ }"));
    }
}
