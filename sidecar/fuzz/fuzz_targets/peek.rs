//! The request peek never panics, and what it calls a tool call is the call a
//! peer parsing the same body with `serde_json::Value` would see: same method
//! (up to ASCII case), same tool name, same arguments.
//!
//! The peek skips members it does not need without checking their UTF-8 or
//! their `\u` escapes, so it may read a body `Value` refuses. The reference
//! peer is then a lenient one that replaces invalid UTF-8; a body even that
//! refuses is only checked for panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_sidecar::mcp::peek::{Message, Peeked, TOOLS_CALL, peek};

fuzz_target!(|data: &[u8]| {
    let Ok(peeked) = peek(data) else { return };
    let lenient = || serde_json::from_str::<Value>(&String::from_utf8_lossy(data));
    let Ok(value) = serde_json::from_slice::<Value>(data).or_else(|_| lenient()) else {
        return;
    };
    match (&peeked, &value) {
        (Peeked::Single(m), v) => agree(m, v),
        (Peeked::Batch(ms), Value::Array(vs)) => {
            assert_eq!(ms.len(), vs.len());
            ms.iter().zip(vs).for_each(|(m, v)| agree(m, v));
        }
        (Peeked::Batch(_), _) => panic!("a batch that is not an array"),
    }
});

fn agree(m: &Message<'_>, v: &Value) {
    assert_eq!(m.method.as_deref(), v["method"].as_str(), "method");
    let is_call = v["method"]
        .as_str()
        .is_some_and(|s| s.eq_ignore_ascii_case(TOOLS_CALL));
    assert_eq!(m.call.is_some(), is_call, "judged as a tool call");
    if let Some(call) = &m.call {
        assert_eq!(Some(&*call.name), v["params"]["name"].as_str(), "tool name");
        let args = call
            .arguments
            .map(|raw| serde_json::from_str::<Value>(raw.get()).expect("raw is JSON"));
        assert_eq!(
            args.unwrap_or(Value::Null),
            v["params"]["arguments"],
            "arguments"
        );
    }
}
