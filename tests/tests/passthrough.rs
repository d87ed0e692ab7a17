//! What the sidecar must carry untouched besides tool calls: progress
//! notifications on a call's stream, requests the server sends the client
//! (elicitation, sampling) and the client's answers, over Streamable HTTP
//! and over the legacy HTTP+SSE transport; and the end of a session (`DELETE`).
//! The Python `mcp` SDK 2.x client against
//! `@modelcontextprotocol/server-everything`, whose `trigger-*` tools make
//! the server side of each exchange.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_e2e::{Peers, Sidecar, Transport, net, process, sidecar};

const LONG_RUNNING: &str = "trigger-long-running-operation";
const ELICITATION: &str = "trigger-elicitation-request";
const SAMPLING: &str = "trigger-sampling-request";

/// Only the tools these tests use are allowed, so every call passes the policy
/// rather than its default.
fn policy() -> Value {
    json!({
        "version": "1",
        "default": "deny",
        "tools": {
            LONG_RUNNING: { "action": "allow" },
            ELICITATION: { "action": "allow" },
            SAMPLING: { "action": "allow" }
        }
    })
}

/// `client.py` with options `tollgate_e2e::peers::PythonClient` has no
/// setter for (`--elicit`, `--sample`).
struct Sdk {
    peers: Peers,
    options: Vec<String>,
}

impl Sdk {
    fn new(peers: &Peers) -> Sdk {
        Sdk {
            peers: peers.clone(),
            options: vec!["--trace".into()],
        }
    }

    fn option(mut self, name: &str, value: &str) -> Sdk {
        self.options.extend([name.to_owned(), value.to_owned()]);
        self
    }

    /// Runs `steps` in one session; the output document (panics unless it exits 0).
    fn steps(&self, url: &str, steps: &Value) -> Value {
        let mut cmd = Command::new(self.peers.python());
        cmd.arg(self.peers.dir().join("client.py"))
            .args(&self.options)
            .arg(url)
            .args(["steps", "-"])
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let stdin = steps.to_string();
        let done = process::run(
            "client.py",
            cmd,
            Some(stdin.as_bytes()),
            Duration::from_secs(120),
        );
        assert!(
            done.status.success(),
            "client.py {url} failed ({}):\nstdout: {}\nstderr:\n{}",
            done.status,
            done.stdout,
            done.stderr
        );
        serde_json::from_str(done.stdout.trim())
            .unwrap_or_else(|e| panic!("client.py's output is not JSON ({e}): {}", done.stdout))
    }
}

/// The texts of a call result's text blocks, joined by newlines.
fn text_of(step: &Value) -> String {
    step["result"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no result content: {step:#}"))
        .iter()
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Three steps of one second each, with a progress token.
fn long_running_step() -> Value {
    json!({ "op": "call", "name": LONG_RUNNING, "arguments": { "duration": 3, "steps": 3 }, "progress": true })
}

/// The client saw progress 1, 2, 3 of 3, each as the server sent it — the
/// first a second or more before the result — and then the result.
fn assert_progress_streamed(step: &Value) {
    assert_eq!(
        text_of(step),
        "Long running operation completed. Duration: 3 seconds, Steps: 3.",
        "{step:#}"
    );
    let progress = step["progress"]
        .as_array()
        .unwrap_or_else(|| panic!("no progress recorded: {step:#}"));
    let seen: Vec<(f64, f64)> = progress
        .iter()
        .map(|p| {
            (
                p["progress"].as_f64().unwrap_or(-1.0),
                p["total"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)],
        "progress notifications: {step:#}"
    );
    // The server sends them at about 1 s, 2 s and 3 s, and the result right
    // after the last: a proxy that held the stream back would deliver them
    // all together with the result.
    let first = progress[0]["at"].as_f64().unwrap_or(f64::MAX);
    let elapsed = step["elapsed"].as_f64().unwrap_or(0.0);
    assert!(
        first + 1.0 <= elapsed,
        "the first progress notification arrived at {first} s, the result at {elapsed} s: \
         the stream was not passed on event by event; {step:#}"
    );
}

/// The elicitation request reached the client, its answer reached the
/// server, and the tool's result reports that answer.
fn assert_elicitation_round_trip(out: &Value, step: &Value) {
    let asked = out["elicitations"]
        .as_array()
        .unwrap_or_else(|| panic!("no elicitations recorded: {out:#}"));
    assert_eq!(asked.len(), 1, "{out:#}");
    assert_eq!(
        asked[0]["message"],
        json!("Please provide inputs for the following fields:")
    );
    assert_eq!(
        asked[0]["requestedSchema"]["required"],
        json!(["name"]),
        "{:#}",
        asked[0]
    );
    let text = text_of(step);
    for line in [
        "User provided the requested information!",
        "- Name: Ada Lovelace",
        "- Agreed to terms: true",
        "- Email: ada@example.com",
    ] {
        assert!(
            text.contains(line),
            "the tool result does not reflect the answer ({line:?} missing): {step:#}"
        );
    }
}

/// The sampling request reached the client (with the prompt the tool was
/// given), and the tool's result carries the client's answer back.
fn assert_sampling_round_trip(out: &Value, step: &Value) {
    let asked = out["samplings"]
        .as_array()
        .unwrap_or_else(|| panic!("no sampling requests recorded: {out:#}"));
    assert_eq!(asked.len(), 1, "{out:#}");
    assert_eq!(
        asked[0]["messages"][0]["content"]["text"],
        json!(format!("Resource {SAMPLING} context: What is 2 + 2?")),
        "{:#}",
        asked[0]
    );
    let text = text_of(step);
    let answer: Value = text
        .split_once('\n')
        .and_then(|(_, json)| serde_json::from_str(json).ok())
        .unwrap_or_else(|| panic!("no sampling result in the tool result: {step:#}"));
    assert_eq!(
        answer,
        json!({
            "model": "tollgate-e2e",
            "stopReason": "endTurn",
            "role": "assistant",
            "content": { "type": "text", "text": "Four." }
        }),
        "{step:#}"
    );
}

const ELICIT_ANSWER: &str = r#"{"action": "accept", "content": {"name": "Ada Lovelace", "check": true, "email": "ada@example.com"}}"#;
const SAMPLE_ANSWER: &str = "Four.";

fn elicitation_step() -> Value {
    json!({ "op": "call", "name": ELICITATION, "arguments": {} })
}

fn sampling_step() -> Value {
    json!({ "op": "call", "name": SAMPLING, "arguments": { "prompt": "What is 2 + 2?" } })
}

/// The decision log holds an `allow` for each tool named.
fn assert_allowed(sidecar: &Sidecar, tools: &[&str]) {
    let records = sidecar.decisions(tools.len());
    for tool in tools {
        assert!(
            records
                .iter()
                .any(|r| r["tool"] == json!(tool) && r["decision"] == json!("allow")),
            "no allow decision for {tool}: {records:#?}"
        );
    }
}

#[test]
fn progress_notifications_stream_through_the_sidecar() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let sidecar = sidecar::builder()
        .upstream(everything.url())
        .policy(&policy())
        .start();

    let out = Sdk::new(&peers).steps(&sidecar.mcp_url(), &json!([long_running_step()]));
    assert_progress_streamed(&out["results"][0]);
    assert_allowed(&sidecar, &[LONG_RUNNING]);

    // The call's answer came as a stream, and the SDK's DELETE at the end of
    // the session got the upstream's 200.
    let http = out["http"]
        .as_array()
        .unwrap_or_else(|| panic!("no trace: {out:#}"));
    let call = http
        .iter()
        .find(|h| h["mcp_method"] == json!(["tools/call"]))
        .unwrap_or_else(|| panic!("no tools/call in the trace: {http:#?}"));
    assert_eq!(call["status"], json!(200), "{call:#}");
    assert_eq!(call["content_type"], json!("text/event-stream"), "{call:#}");
    let last = http.last().unwrap_or(&Value::Null);
    assert_eq!(last["method"], json!("DELETE"), "{http:#?}");
    assert_eq!(last["status"], json!(200), "{http:#?}");
}

#[test]
fn an_elicitation_round_trip_passes_through_the_sidecar() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let sidecar = sidecar::builder()
        .upstream(everything.url())
        .policy(&policy())
        .start();

    let out = Sdk::new(&peers)
        .option("--elicit", ELICIT_ANSWER)
        .steps(&sidecar.mcp_url(), &json!([elicitation_step()]));
    assert_elicitation_round_trip(&out, &out["results"][0]);
    assert_allowed(&sidecar, &[ELICITATION]);

    // The client's answer is a JSON-RPC response POSTed on its own: the
    // sidecar took it (202, as the upstream answers) rather than judging it.
    let http = out["http"]
        .as_array()
        .unwrap_or_else(|| panic!("no trace: {out:#}"));
    let answer = http
        .iter()
        .find(|h| h["request"]["result"]["action"] == json!("accept"))
        .unwrap_or_else(|| panic!("no POST of the elicitation answer in the trace: {http:#?}"));
    assert_eq!(answer["status"], json!(202), "{answer:#}");
}

#[test]
fn a_sampling_round_trip_passes_through_the_sidecar() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::StreamableHttp);
    let sidecar = sidecar::builder()
        .upstream(everything.url())
        .policy(&policy())
        .start();

    let out = Sdk::new(&peers)
        .option("--sample", SAMPLE_ANSWER)
        .steps(&sidecar.mcp_url(), &json!([sampling_step()]));
    assert_sampling_round_trip(&out, &out["results"][0]);
    assert_allowed(&sidecar, &[SAMPLING]);
}

/// The same three exchanges over the legacy HTTP+SSE transport, where every
/// message from the server, progress and requests included, travels on the
/// one `GET /sse` stream.
#[test]
fn progress_elicitation_and_sampling_pass_through_over_legacy_sse() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let everything = peers.everything(Transport::Sse);
    let sidecar = sidecar::builder()
        .upstream(format!("ev=sse:{}", everything.url()))
        .policy(&policy())
        .start();

    let out = Sdk::new(&peers)
        .option("--transport", "sse")
        .option("--elicit", ELICIT_ANSWER)
        .option("--sample", SAMPLE_ANSWER)
        .steps(
            &sidecar.url("/mcp/ev/sse"),
            &json!([long_running_step(), elicitation_step(), sampling_step()]),
        );
    let results = &out["results"];
    assert_progress_streamed(&results[0]);
    assert_elicitation_round_trip(&out, &results[1]);
    assert_sampling_round_trip(&out, &results[2]);
    assert_allowed(&sidecar, &[LONG_RUNNING, ELICITATION, SAMPLING]);
}

/// One HTTP exchange of a session's life, for comparing two runs.
#[derive(Debug, PartialEq)]
struct Exchange {
    what: &'static str,
    status: u16,
    /// The body when it is JSON (errors), else `Null`.
    json: Value,
}

const PROTOCOL: &str = "2025-06-18";

/// Opens a session at `http://addr{path}` by hand, ends it with `DELETE`,
/// and `DELETE`s it again. Returns the exchanges and the session id.
fn session_life(addr: SocketAddr, path: &str) -> (Vec<Exchange>, String) {
    let post = |session: Option<&str>, body: &Value| {
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ];
        if let Some(s) = session {
            headers.extend([("Mcp-Session-Id", s), ("MCP-Protocol-Version", PROTOCOL)]);
        }
        net::request(
            addr,
            "POST",
            path,
            &headers,
            Some(body.to_string().as_bytes()),
        )
        .unwrap_or_else(|e| panic!("POST http://{addr}{path}: {e}"))
    };
    let delete = |session: &str| {
        net::request(
            addr,
            "DELETE",
            path,
            &[
                ("Mcp-Session-Id", session),
                ("MCP-Protocol-Version", PROTOCOL),
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("DELETE http://{addr}{path}: {e}"))
    };
    let exchange = |what, reply: &net::Reply| Exchange {
        what,
        status: reply.status,
        json: serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
    };

    let init = post(
        None,
        &json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL,
                "capabilities": {},
                "clientInfo": { "name": "tollgate-e2e", "version": "0" }
            }
        }),
    );
    let session = init
        .header("mcp-session-id")
        .unwrap_or_else(|| {
            panic!(
                "initialize at http://{addr}{path} gave no Mcp-Session-Id ({}): {}",
                init.status,
                init.text()
            )
        })
        .to_owned();
    let initialized = post(
        Some(&session),
        &json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
    );
    let ended = delete(&session);
    let again = delete(&session);
    let exchanges = vec![
        // The body is an SSE stream, compared by status only.
        Exchange {
            what: "initialize",
            status: init.status,
            json: Value::Null,
        },
        exchange("notifications/initialized", &initialized),
        exchange("DELETE", &ended),
        exchange("DELETE again", &again),
    ];
    (exchanges, session)
}

/// A `DELETE` through the sidecar ends the session upstream, and the
/// upstream's status comes back as is: 200 for the live session, then 400
/// (with the upstream's JSON-RPC error) for the ended one.
#[test]
fn a_session_delete_reaches_the_upstream_through_the_sidecar() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let mut everything = peers.everything(Transport::StreamableHttp);
    let sidecar = sidecar::builder()
        .upstream(everything.url())
        .policy(&policy())
        .start();

    let (direct, _) = session_life(everything.addr, "/mcp");
    let (through, session) = session_life(sidecar.listen, "/mcp");
    let statuses: Vec<u16> = direct.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [200, 202, 200, 400],
        "server-everything's own answers changed: {direct:#?}"
    );
    assert_eq!(through, direct, "through the sidecar vs directly");

    // The upstream saw the DELETE, and the session is gone there.
    everything.process().wait_for_output(
        &format!("Received session termination request for session {session}"),
        Duration::from_secs(5),
    );
    let after = net::request(
        everything.addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Mcp-Session-Id", &session),
            ("MCP-Protocol-Version", PROTOCOL),
        ],
        Some(br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#),
    )
    .unwrap_or_else(|e| panic!("POST to the upstream: {e}"));
    assert_eq!(
        after.status,
        400,
        "the session still answers upstream after the DELETE through the sidecar: {}",
        after.text()
    );
}
