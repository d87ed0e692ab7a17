use serde_json::json;

use super::*;

/// `debug*` hidden; `echo` listed (a rule of its own); otherwise destructive
/// tools denied, and `read_*` denied unless read-only.
fn listing(name: &str, a: Option<&Annotations>) -> Listing {
    if name.starts_with("debug") {
        Listing::Hidden
    } else if name == "echo" {
        Listing::Listed
    } else if a.and_then(|a| a.destructive_hint) == Some(true)
        || (name.starts_with("read_") && a.and_then(|a| a.read_only_hint) != Some(true))
    {
        Listing::Denied
    } else {
        Listing::Listed
    }
}

fn reply(id: &str, tools: Value) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":{tools},"nextCursor":"c"}}}}"#)
}

fn token(ids: &ListIds, raw: &str) -> String {
    String::from_utf8(ids.token(raw.as_bytes())).unwrap()
}

#[test]
fn a_reply_to_the_sidecars_request_is_filtered_and_gets_the_clients_id_back() {
    let ids = ListIds::default();
    for client_id in ["3", "1.0", r#""a\u0062c""#, "12345678901234567890123", "-0"] {
        let msg = reply(
            &token(&ids, client_id),
            json!([
                {"name": "echo"},
                {"name": "debug_dump"},
                {"name": "wipe", "annotations": {"destructiveHint": true}},
            ]),
        );
        let out = filter(msg.as_bytes(), &ids, listing);
        let bytes = out.bytes.expect("a matched reply always changes");
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(&format!(r#"{{"id":{client_id},"#)),
            "the client's id must come back byte for byte: {text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["result"]["tools"], json!([{"name": "echo"}]), "{text}");
        assert_eq!(v["result"]["nextCursor"], "c");
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(out.matched, 1);
        assert_eq!(out.seen.len(), 3);
        assert_eq!(
            out.seen[2].annotations.and_then(|a| a.destructive_hint),
            Some(true)
        );
    }
}

#[test]
fn an_error_reply_gets_its_id_back_unfiltered() {
    let ids = ListIds::default();
    let msg = format!(
        r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":-32601,"message":"no"}}}}"#,
        token(&ids, "7")
    );
    let out = filter(msg.as_bytes(), &ids, listing);
    let v: Value = serde_json::from_slice(&out.bytes.unwrap()).unwrap();
    assert_eq!(v["id"], json!(7));
    assert_eq!(v["error"]["code"], json!(-32601));
    assert_eq!(out.matched, 1);
}

#[test]
fn an_unmatched_list_reply_gets_the_strictest_view() {
    let ids = ListIds::default();
    // Another sidecar's token, or the client's own id echoed: not ours.
    let other = ListIds::default();
    for id in [token(&other, "1"), "1".to_owned(), r#""x""#.to_owned()] {
        let msg = reply(
            &id,
            json!([
                {"name": "echo"},
                {"name": "debug_dump"},
                // Listed under its own annotations, but not whatever they were.
                {"name": "read_file", "annotations": {"readOnlyHint": true}},
                {"name": "write_file", "annotations": {"destructiveHint": false}},
            ]),
        );
        let out = filter(msg.as_bytes(), &ids, listing);
        let v: Value = serde_json::from_slice(&out.bytes.expect("tools were removed")).unwrap();
        assert_eq!(v["result"]["tools"], json!([{"name": "echo"}]), "{msg}");
        assert_eq!(out.matched, 0);
        assert!(out.seen.is_empty(), "unmatched replies teach nothing");
    }
}

#[test]
fn forged_tokens_never_put_invalid_json_in_a_reply() {
    let ids = ListIds::default();
    for raw in ["{}", "[1]", "1 2", "\"a", "null", "true"] {
        let msg = reply(&token(&ids, raw), json!([{"name": "debug_x"}]));
        let out = filter(msg.as_bytes(), &ids, listing);
        // Not restorable: treated as unmatched, filtered strictly, still JSON.
        let v: Value = serde_json::from_slice(&out.bytes.unwrap()).unwrap();
        assert_eq!(v["result"]["tools"], json!([]), "{raw}");
        assert_eq!(out.matched, 0, "{raw}");
    }
}

#[test]
fn leaves_other_messages_alone() {
    let ids = ListIds::default();
    let msg = json!({"jsonrpc": "2.0", "id": 4, "result": {"content": []}});
    assert!(
        filter(msg.to_string().as_bytes(), &ids, listing)
            .bytes
            .is_none()
    );
    assert!(filter(b"not json", &ids, listing).bytes.is_none());
}

#[test]
fn filters_inside_batches() {
    let ids = ListIds::default();
    let msg = format!(
        r#"[{},{{"id":"b","result":{{}}}}]"#,
        reply(
            &token(&ids, r#""a""#),
            json!([{"name": "debug_x"}, {"name": "y"}])
        )
    );
    let out = filter(msg.as_bytes(), &ids, listing);
    let v: Value = serde_json::from_slice(&out.bytes.unwrap()).unwrap();
    assert_eq!(v[0]["id"], json!("a"));
    assert_eq!(v[0]["result"]["tools"], json!([{"name": "y"}]));
    assert_eq!(v[1], json!({"id": "b", "result": {}}));
}

#[test]
fn may_hold_list_sees_escaped_names() {
    assert!(ListIds::may_hold_list(br#"{"result":{"tools":[]}}"#));
    assert!(ListIds::may_hold_list(br#"{"result":{"\u0074ools":[]}}"#));
    assert!(!ListIds::may_hold_list(
        br#"{"method":"notifications/progress"}"#
    ));
}
