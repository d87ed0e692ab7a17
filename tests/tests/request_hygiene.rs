//! What reaches an upstream is what policy judged: a body the upstream would
//! decode differently (another charset, a content coding) is refused unread,
//! on every transport.
//!
//! The charset attack runs against the real Node peer: server-everything's
//! legacy HTTP+SSE transport decodes a POST by its `Content-Type` charset, so
//! `+AGU-cho` sent as UTF-7 is the tool `echo` there while it reads as
//! another name to anyone decoding UTF-8.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tollgate_e2e::legacy_sse::SseClient;
use tollgate_e2e::net::{self, Reply};
use tollgate_e2e::recorder::Recorder;
use tollgate_e2e::{Peers, Transport, sidecar};

/// Default allow, `echo` denied.
fn policy() -> Value {
    json!({
        "version": "1",
        "default": "allow",
        "tools": { "echo": { "action": "deny", "reason": "Echo is off." } }
    })
}

fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut headers = vec![
        ("Content-Type", content_type),
        ("Accept", "application/json, text/event-stream"),
    ];
    headers.extend_from_slice(extra);
    net::request(addr, "POST", path, &headers, Some(body.as_bytes()))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// A `tools/call` of `name` (raw text inside the JSON string) with this id.
fn call(id: i64, name: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{{"message":"smuggled"}}}}}}"#
    )
}

fn assert_refused_415(label: &str, reply: &Reply) {
    assert_eq!(reply.status, 415, "{label}: {}", reply.text());
    let body: Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{label}: the 415 is not JSON-RPC ({e}): {}", reply.text()));
    assert_eq!(body["error"]["code"], json!(-32600), "{label}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Content-")),
        "{label}: the error does not say which header to fix: {body}"
    );
}

#[test]
fn a_utf7_body_never_reaches_the_node_legacy_sse_server() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::Sse);
    let sidecar = sidecar::builder()
        .upstream(format!(
            "ev={}",
            everything.url().replacen("http", "sse:http", 1)
        ))
        .policy(&policy())
        .start();
    let mut sse = SseClient::open(sidecar.listen, "/mcp/ev/sse", &[]);
    let endpoint = sse.endpoint.clone();
    let json = "application/json";
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"hygiene","version":"1"}}}"#;
    assert_eq!(post(sidecar.listen, &endpoint, json, &[], init).status, 202);
    sse.answer("initialize", 1);
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    assert_eq!(
        post(sidecar.listen, &endpoint, json, &[], initialized).status,
        202
    );

    // UTF-7 for `echo`: the upstream would run the denied tool.
    for (id, content_type) in [
        (2, "application/json; charset=utf-7"),
        (3, "application/json;charset=UTF-7"),
        (4, "application/json; charset=\"utf-7\""),
        (5, "application/json; charset=utf-8; charset=utf-7"),
    ] {
        let reply = post(
            sidecar.listen,
            &endpoint,
            content_type,
            &[],
            &call(id, "+AGU-cho"),
        );
        assert_refused_415(content_type, &reply);
    }
    // A call the policy allows still works on the same session, and its
    // answer comes after any the refused ones would have had.
    let sum = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"get-sum","arguments":{"a":2,"b":3}}}"#;
    assert_eq!(post(sidecar.listen, &endpoint, json, &[], sum).status, 202);
    let answer = sse.answer("get-sum", 9);
    assert!(answer.to_string().contains('5'), "get-sum: {answer}");
    let smuggled: Vec<Value> = sse
        .received()
        .into_iter()
        .filter(|m| m.to_string().contains("smuggled"))
        .collect();
    assert!(
        smuggled.is_empty(),
        "the upstream ran the UTF-7 `echo` the policy denies: {smuggled:?}"
    );
    // `echo` sent as UTF-8 is judged as `echo`: denied, answered on the stream.
    let denied = post(sidecar.listen, &endpoint, json, &[], &call(10, "echo"));
    assert_eq!(denied.status, 202, "{}", denied.text());
    let answer = sse.answer("echo", 10);
    assert_eq!(answer["result"]["isError"], json!(true), "{answer}");
}

#[test]
fn other_charsets_and_content_codings_are_refused_unread_on_every_transport() {
    let recorder = Recorder::start();
    let streamable = sidecar::builder()
        .upstream(recorder.url())
        .policy(&policy())
        .start();
    let legacy = sidecar::builder()
        .upstream(format!("rec=sse:{}", recorder.sse_url()))
        .policy(&policy())
        .start();
    let sse = SseClient::open(legacy.listen, "/mcp/rec/sse", &[]);
    let endpoints = [
        (streamable.listen, "/mcp".to_owned()),
        (legacy.listen, sse.endpoint.clone()),
    ];
    let attempts: [(&str, &[(&str, &str)]); 6] = [
        ("application/json; charset=utf-16le", &[]),
        ("application/json; charset=iso-8859-1", &[]),
        ("application/json; charset=", &[]),
        ("application/json", &[("Content-Encoding", "gzip")]),
        (
            "application/json",
            &[("Content-Encoding", "identity, deflate")],
        ),
        ("application/json", &[("Content-Encoding", "")]),
    ];
    for (addr, path) in &endpoints {
        for (content_type, extra) in attempts {
            let label = format!("POST {path} {content_type} {extra:?}");
            let mark = recorder.count();
            let reply = post(*addr, path, content_type, extra, &call(7, "get-sum"));
            assert_refused_415(&label, &reply);
            let reached = recorder.since(mark);
            assert!(
                reached.iter().all(|r| r.method != "POST"),
                "{label}: reached the upstream: {:?}",
                reached.iter().map(|r| r.text()).collect::<Vec<_>>()
            );
        }
        // UTF-8 said either way is read and forwarded.
        for content_type in ["application/json", "application/json; charset=UTF-8"] {
            let mark = recorder.count();
            let reply = post(
                *addr,
                path,
                content_type,
                &[("Content-Encoding", "identity")],
                &call(8, "get-sum"),
            );
            assert!(
                matches!(reply.status, 200 | 202),
                "{content_type}: {} {}",
                reply.status,
                reply.text()
            );
            assert!(
                recorder
                    .since(mark)
                    .iter()
                    .any(|r| r.text().contains("get-sum")),
                "{content_type}: the allowed call did not reach the upstream"
            );
        }
    }
}

/// What reached the recorder since `mark`, as (method, target, Host,
/// X-Forwarded-Host).
fn reached(recorder: &Recorder, mark: usize) -> Vec<(String, String, String, String)> {
    recorder
        .since(mark)
        .into_iter()
        .map(|r| {
            let h = |n| r.header(n).unwrap_or("-").to_owned();
            (
                r.method.clone(),
                r.target.clone(),
                h("host"),
                h("x-forwarded-host"),
            )
        })
        .collect()
}

#[test]
fn the_upstream_gets_its_own_authority_and_path_never_the_clients() {
    let recorder = Recorder::start();
    let authority = recorder.addr().to_string();
    let streamable = sidecar::builder()
        .upstream(recorder.url())
        .policy(&policy())
        .start();
    let forged: &[(&str, &str)] = &[
        ("Host", "billing.internal:8080"),
        ("X-Forwarded-Host", "admin.internal"),
        ("Forwarded", "host=admin.internal"),
    ];
    let upstream_saw = |recorder: &Recorder, mark: usize, method: &str, target: &str| {
        let all = reached(recorder, mark);
        assert!(
            all.contains(&(
                method.to_owned(),
                target.to_owned(),
                authority.clone(),
                "billing.internal:8080".to_owned()
            )),
            "{method} {target} with Host {authority} (the client's as X-Forwarded-Host) did not reach the upstream; it got {all:?}"
        );
        for r in recorder.since(mark) {
            assert!(
                r.header("forwarded").is_none(),
                "Forwarded reached the upstream: {r:?}"
            );
        }
    };

    // Streamable HTTP: POST, GET and DELETE, with a query the upstream must not see.
    let mark = recorder.count();
    let reply = post(
        streamable.listen,
        "/mcp?server=billing&tg=1",
        "application/json",
        forged,
        &call(1, "get-sum"),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    upstream_saw(&recorder, mark, "POST", "/mcp");
    for method in ["GET", "DELETE"] {
        let mark = recorder.count();
        let mut headers = forged.to_vec();
        headers.push(("Accept", "text/event-stream"));
        // The recorder answers a GET with a stream it closes at once.
        let _ = net::request(
            streamable.listen,
            method,
            "/mcp?server=billing",
            &headers,
            None,
        );
        upstream_saw(&recorder, mark, method, "/mcp");
    }
    // Discovery documents: the path is the upstream's, the query is dropped.
    let mark = recorder.count();
    let _ = net::request(
        streamable.listen,
        "GET",
        "/.well-known/oauth-protected-resource/mcp?resource=billing",
        forged,
        None,
    );
    upstream_saw(
        &recorder,
        mark,
        "GET",
        "/.well-known/oauth-protected-resource/mcp",
    );

    // Legacy SSE: the stream and the message endpoint the upstream named.
    let legacy = sidecar::builder()
        .upstream(format!("rec=sse:{}", recorder.sse_url()))
        .policy(&policy())
        .start();
    let mark = recorder.count();
    let sse = SseClient::open(legacy.listen, "/mcp/rec/sse?server=billing", forged);
    upstream_saw(&recorder, mark, "GET", "/sse");
    let mark = recorder.count();
    let message = format!("{}&server=billing", sse.endpoint);
    let reply = post(
        legacy.listen,
        &message,
        "application/json",
        forged,
        &call(2, "get-sum"),
    );
    assert_eq!(reply.status, 202, "{}", reply.text());
    let posted: Vec<_> = reached(&recorder, mark)
        .into_iter()
        .filter(|r| r.0 == "POST")
        .collect();
    assert!(
        posted.len() == 1
            && posted[0].1.starts_with("/message?sessionId=")
            && !posted[0].1.contains("billing")
            && posted[0].2 == authority,
        "the message went to {posted:?}, not to the endpoint the upstream named on {authority}"
    );
}

/// SHA-256 of `test` and of `other`: the tokens of two grants.
const TEST_TOKEN_SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const OTHER_TOKEN_SHA256: &str = "d9298a10d1b0735837dc4bd85dac641b0f3cef27a47e5d53a54f2f3f5b2fcffa";

#[test]
fn a_legacy_session_has_an_unguessable_key_and_takes_posts_only_from_its_grant() {
    let recorder = Recorder::start();
    let bundle = json!({
        "servers": { "rec": policy() },
        "grants": {
            "alice": { "token_sha256": TEST_TOKEN_SHA256 },
            "mallory": { "token_sha256": OTHER_TOKEN_SHA256 }
        }
    });
    let sidecar = sidecar::builder()
        .upstream(format!("rec=sse:{}", recorder.sse_url()))
        .policy(&bundle)
        .start();
    let alice: &[(&str, &str)] = &[("Authorization", "Bearer test")];
    let mallory: &[(&str, &str)] = &[("Authorization", "Bearer other")];
    let keys: Vec<String> = (0..3)
        .map(|_| {
            let sse = SseClient::open(sidecar.listen, "/mcp/rec/sse", alice);
            let key = sse
                .endpoint
                .split_once("tg=")
                .map(|(_, k)| k.to_owned())
                .unwrap_or_else(|| panic!("no session key in {:?}", sse.endpoint));
            assert!(
                key.len() >= 32 && key.bytes().all(|b| b.is_ascii_hexdigit()),
                "a session key must be 128 random bits (32 hex digits), not {key:?}"
            );
            key
        })
        .collect();
    assert!(keys[0] != keys[1] && keys[1] != keys[2], "{keys:?}");

    let mut sse = SseClient::open(sidecar.listen, "/mcp/rec/sse", alice);
    let endpoint = sse.endpoint.clone();
    // Another grant, knowing the key, is told there is no such session.
    let mark = recorder.count();
    let reply = post(
        sidecar.listen,
        &endpoint,
        "application/json",
        mallory,
        &call(1, "get-sum"),
    );
    assert_eq!(reply.status, 404, "{}", reply.text());
    let body: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    assert_eq!(body["error"]["code"], json!(-32600), "{}", reply.text());
    assert!(
        recorder.since(mark).iter().all(|r| r.method != "POST"),
        "another grant's POST reached the upstream"
    );
    // No token at all: 401, as on every endpoint.
    let reply = post(
        sidecar.listen,
        &endpoint,
        "application/json",
        &[],
        &call(2, "get-sum"),
    );
    assert_eq!(reply.status, 401, "{}", reply.text());
    // The grant that opened the stream posts as before.
    let mark = recorder.count();
    let reply = post(
        sidecar.listen,
        &endpoint,
        "application/json",
        alice,
        &call(3, "get-sum"),
    );
    assert_eq!(reply.status, 202, "{}", reply.text());
    sse.answer("get-sum", 3);
    let posted: Vec<String> = recorder
        .since(mark)
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.text())
        .collect();
    assert!(
        posted.len() == 1 && posted[0].contains(r#""id":3"#),
        "only alice's call may reach the upstream: {posted:?}"
    );
}
