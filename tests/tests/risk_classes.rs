//! A tool's risk class comes from the annotations its server lists. A
//! sidecar that has not seen them — just restarted, or called before any
//! `tools/list` — judges the tool by the strictest class the annotations
//! could give it, never by a laxer guess from its name.
//!
//! server-everything's `echo` is read-only by its annotations, and `write`
//! by its name alone. The policy here allows writes and denies reads, so a
//! sidecar that guessed from the name after a restart would let through a
//! call it denied before.

use serde_json::{Value, json};
use tollgate_e2e::net::{self, Reply};
use tollgate_e2e::{Peers, Sidecar, Transport, sidecar};

fn policy() -> Value {
    json!({
        "version": "1",
        "default": "deny",
        "classes": {
            "write": { "action": "allow" },
            "read": { "action": "deny", "reason": "Reads go through the cache." }
        }
    })
}

/// A new MCP session through `sidecar`; its id.
fn session(sidecar: &Sidecar) -> String {
    net::open_mcp_session(sidecar.listen, "risk-classes").0
}

/// The reply's JSON-RPC message (JSON, or the first SSE event with data).
fn message(reply: &Reply) -> Value {
    let text = reply.text();
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .map_or(text.as_str(), str::trim);
    serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Calls `echo`; the decision and rule the sidecar gave, or `allow`.
fn call_echo(sidecar: &Sidecar, session: &str) -> (String, String) {
    let reply = net::post_mcp(
        sidecar.listen,
        Some(session),
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#,
    );
    let m = message(&reply);
    let d = &m["result"]["_meta"]["tollgate/decision"];
    match d["decision"].as_str() {
        Some(decision) => (
            decision.to_owned(),
            d["rule"].as_str().unwrap_or("").to_owned(),
        ),
        None => {
            assert_eq!(m["result"]["content"][0]["text"], json!("Echo: hi"), "{m}");
            ("allow".to_owned(), String::new())
        }
    }
}

fn list(sidecar: &Sidecar, session: &str) {
    let reply = net::post_mcp(
        sidecar.listen,
        Some(session),
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[test]
fn annotations_not_seen_yet_are_judged_by_the_strictest_class() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let start = || {
        sidecar::builder()
            .upstream(everything.url())
            .policy(&policy())
            .start()
    };

    let first = start();
    let s = session(&first);
    list(&first, &s);
    assert_eq!(
        call_echo(&first, &s),
        ("deny".to_owned(), "/classes/read".to_owned()),
        "listed as read-only, echo is a read"
    );
    drop(first);

    // A new sidecar, as after a restart: nothing listed yet.
    let second = start();
    let s = session(&second);
    let (decision, rule) = call_echo(&second, &s);
    assert_eq!(
        decision, "deny",
        "before its annotations are seen, echo must not be judged laxer than they could make it (rule {rule})"
    );
    assert_eq!(
        rule, "(default deny)",
        "no rule covers a possibly destructive tool here"
    );
    list(&second, &s);
    assert_eq!(
        call_echo(&second, &s),
        ("deny".to_owned(), "/classes/read".to_owned())
    );
}
