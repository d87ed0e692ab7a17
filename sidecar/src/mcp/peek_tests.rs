use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn single(body: &str) -> Message<'_> {
    match peek(body.as_bytes()) {
        Ok(Peeked::Single(m)) => m,
        other => panic!("expected one message from {body}, got {other:?}"),
    }
}

#[test]
fn a_tool_call_is_read_borrowed() {
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#;
    let m = single(body);
    assert_eq!(m.kind, Kind::Request);
    assert_eq!(m.id.map(RawValue::get), Some("7"));
    assert!(matches!(m.method, Some(Cow::Borrowed("tools/call"))));
    let call = m.call.expect("a tools/call");
    assert!(matches!(call.name, Cow::Borrowed("echo")));
    assert_eq!(
        call.arguments.map(RawValue::get),
        Some(r#"{"message":"hi"}"#)
    );
}

#[test]
fn escaped_names_are_decoded_as_the_upstream_would() {
    let m = single(r#"{"id":1,"method":"tools\/call","params":{"name":"\u0064elete_x"}}"#);
    assert_eq!(m.method(), "tools/call");
    assert_eq!(m.call.expect("a call").name, "delete_x");
    let m = single(r#"{"id":1,"met\u0068od":"tools/call","params":{"na\u006de":"x"}}"#);
    assert_eq!(m.call.expect("escaped keys count").name, "x");
}

#[test]
fn method_case_variants_are_judged_as_tool_calls() {
    let m = single(r#"{"id":1,"method":"Tools/Call","params":{"name":"x"}}"#);
    assert_eq!(m.call.expect("judged").name, "x");
}

#[test]
fn duplicate_keys_are_refused() {
    let cases = [
        (
            r#"{"id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#,
            "method",
        ),
        (
            r#"{"id":1,"method":"tools/call","params":{"name":"ok","name":"delete_x"}}"#,
            "params.name",
        ),
        (
            r#"{"id":1,"method":"tools/call","params":{"name":"ok","n\u0061me":"delete_x"}}"#,
            "params.name",
        ),
    ];
    for (body, key) in cases {
        assert_eq!(
            peek(body.as_bytes()).unwrap_err(),
            PeekError::DuplicateKey(key),
            "{body}"
        );
    }
    let dup_id = peek(br#"{"id":1,"id":2,"method":"ping"}"#).unwrap_err();
    assert!(matches!(dup_id, PeekError::Invalid(_)), "{dup_id:?}");
}

#[test]
fn kinds() {
    assert_eq!(
        single(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).kind,
        Kind::Notification
    );
    assert_eq!(
        single(r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#).kind,
        Kind::Notification
    );
    assert_eq!(
        single(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).kind,
        Kind::Response
    );
    assert_eq!(
        single(r#"{"jsonrpc":"2.0","id":"a","error":{"code":1,"message":"m"}}"#).kind,
        Kind::Response
    );
    assert!(
        single(r#"{"id":1,"method":"tools/list","params":[1,2]}"#)
            .call
            .is_none()
    );
}

#[test]
fn batches_are_read_in_order() {
    let body = r#"[{"id":1,"method":"tools/call","params":{"name":"a"}},{"method":"notifications/x"},{"id":2,"result":{}}]"#;
    let Ok(Peeked::Batch(ms)) = peek(body.as_bytes()) else {
        panic!("a batch")
    };
    assert_eq!(ms.len(), 3);
    assert_eq!(ms[0].call.as_ref().map(|c| &*c.name), Some("a"));
    assert_eq!(ms[1].kind, Kind::Notification);
    assert_eq!(ms[2].kind, Kind::Response);
}

#[test]
fn bad_bodies_get_the_right_error() {
    let syntax = [
        "",
        "   ",
        "{",
        r#"{"id":1,"method":"x""#,
        "[1,",
        "nul",
        r#"{"method":"\ud800"}"#,
    ];
    for body in syntax {
        let e = peek(body.as_bytes()).unwrap_err();
        assert_eq!(e.code(), -32700, "{body:?}: {e:?}");
    }
    let invalid = [
        "[]",
        "42",
        r#""text""#,
        r#"{"id":1}"#,
        r#"{"method":3}"#,
        r#"{"id":1,"method":"tools/call"}"#,
        r#"{"id":1,"method":"tools/call","params":{"arguments":{}}}"#,
        r#"{"id":1,"method":"tools/call","params":{"name":7}}"#,
        r#"{"id":1,"method":"x","result":{}}"#,
        "[1]",
    ];
    for body in invalid {
        let e = peek(body.as_bytes()).unwrap_err();
        assert_eq!(e.code(), -32600, "{body:?}: {e:?}");
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let body = |depth: usize| {
        let args = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        format!(r#"{{"id":1,"method":"tools/call","params":{{"name":"x","arguments":{args}}}}}"#)
    };
    for depth in [100_000, 200, MAX_DEPTH - 1] {
        let e = peek(body(depth).as_bytes()).unwrap_err();
        assert_eq!(e.code(), -32600, "depth {depth}: {e:?}");
        assert!(e.to_string().contains("more than 64 levels deep"), "{e}");
    }
    // Brackets inside strings do not count; the message itself is two levels.
    assert!(peek(body(MAX_DEPTH - 2).as_bytes()).is_ok());
    let in_string = format!(
        r#"{{"id":1,"method":"x","params":{{"s":"{}\"{}"}}}}"#,
        "[".repeat(500),
        "{".repeat(500)
    );
    assert!(peek(in_string.as_bytes()).is_ok());
}

fn name_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{1,12}",
        any::<String>(),
        Just("delete_x".to_string()),
        Just("tools/call".to_string()),
    ]
}

/// A body built as a `Value`, then written with escapes and key order varied.
fn body_strategy() -> impl Strategy<Value = (Value, bool)> {
    (
        prop_oneof![Just("tools/call".to_string()), Just("tools/list".to_string()), name_strategy()],
        name_strategy(),
        prop::option::of(any::<i64>()),
        any::<bool>(),
        prop::collection::vec(("[a-z]{1,6}", any::<i32>()), 0..4),
    )
        .prop_map(|(method, name, id, escape, args)| {
            let mut v = json!({"jsonrpc": "2.0", "method": method, "params": {"name": name, "arguments": {}}});
            if let Some(id) = id {
                v["id"] = json!(id);
            }
            for (k, n) in args {
                v["params"]["arguments"][k] = json!(n);
            }
            (v, escape)
        })
}

/// Writes JSON with every non-alphanumeric ASCII character of strings escaped.
fn escaped(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                if c.is_ascii_alphanumeric() {
                    out.push(c);
                } else {
                    for unit in c.encode_utf16(&mut [0; 2]) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(escaped).collect::<Vec<_>>().join(",")
        ),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}:{}", escaped(&Value::String(k.clone())), escaped(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

proptest! {
    #[test]
    fn peek_agrees_with_serde_value((value, escape) in body_strategy()) {
        let text = if escape { escaped(&value) } else { value.to_string() };
        let parsed: Value = serde_json::from_str(&text).unwrap();
        let m = single(&text);
        prop_assert_eq!(m.method(), parsed["method"].as_str().unwrap());
        let is_call = parsed["method"].as_str().is_some_and(|s| s.eq_ignore_ascii_case(TOOLS_CALL));
        prop_assert_eq!(m.call.is_some(), is_call);
        if let Some(call) = &m.call {
            prop_assert_eq!(&*call.name, parsed["params"]["name"].as_str().unwrap());
            let args: Value = serde_json::from_str(call.arguments.unwrap().get()).unwrap();
            prop_assert_eq!(&args, &parsed["params"]["arguments"]);
        }
    }

    #[test]
    fn peek_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = peek(&bytes);
    }
}

#[test]
fn bodies_that_are_not_utf8_are_refused_even_in_skipped_members() {
    let mut body =
        br#"{"id":1,"method":"tools/call","params":{"name":"echo","_meta":{"x":"#.to_vec();
    body.extend_from_slice(b"\"\xff\xfe\"}}}");
    let e = peek(&body).unwrap_err();
    assert_eq!(e.code(), -32700, "{e}");
    assert!(e.to_string().contains("not UTF-8"), "{e}");
}
