//! The bridge against a real stdio MCP server (a small Python script, stdlib
//! only), called in process as the sidecar calls it, and by rmcp's client
//! over a loopback listener the test puts in front of it.

mod lifecycle;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::Digest;

use super::{Bridge, Limits, start};
use crate::mcp::sse::SseParser;
use crate::upstream::http::{Body, Caller, full};

/// A stdio MCP server: `echo` (with progress when asked), `ask` (an
/// elicitation round trip), `pid`, and `crash`. It prints a line that is not
/// JSON first, and `notifications/tools/list_changed` when told
/// `notifications/test/announce`.
const STUB: &str = r#"
import json, os, sys

def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()

def text(id, value):
    send({"jsonrpc": "2.0", "id": id,
          "result": {"content": [{"type": "text", "text": value}], "isError": False}})

print("stub: starting", file=sys.stderr, flush=True)
print("booting, not JSON", flush=True)
asked = {}
for line in sys.stdin:
    if not line.strip():
        continue
    message = json.loads(line)
    method, id = message.get("method"), message.get("id")
    params = message.get("params") or {}
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": id, "result": {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {"listChanged": True}},
            "serverInfo": {"name": "stub", "version": "1"}}})
    elif method == "notifications/test/announce":
        send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": id, "result": {}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": id, "result": {"tools": [{
            "name": "echo", "description": "Echoes its text.",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}]}})
    elif method == "tools/call":
        name, args = params.get("name"), params.get("arguments") or {}
        token = (params.get("_meta") or {}).get("progressToken")
        if name == "echo":
            if token is not None:
                send({"jsonrpc": "2.0", "method": "notifications/progress",
                      "params": {"progressToken": token, "progress": 1, "total": 1}})
            text(id, args.get("text", ""))
        elif name == "ask":
            asked["q1"] = id
            send({"jsonrpc": "2.0", "id": "q1", "method": "elicitation/create", "params": {
                "message": "Your name?", "requestedSchema": {"type": "object",
                "properties": {"name": {"type": "string"}}}}})
        elif name == "pid":
            text(id, str(os.getpid()))
        elif name == "crash":
            print("stub: crashing", file=sys.stderr, flush=True)
            os._exit(3)
        else:
            send({"jsonrpc": "2.0", "id": id,
                  "error": {"code": -32602, "message": "Unknown tool: " + str(name)}})
    elif method is None and id in asked:
        text(asked.pop(id), "hello " + message["result"]["content"]["name"])
"#;

fn stub_command() -> String {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    // Named by content, so runs share one file; written whole by a rename.
    let path = PATH.get_or_init(|| {
        let digest = sha2::Sha256::digest(STUB.as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("tollgate-stdio-stub-{name}.py"));
        if !path.exists() {
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            std::fs::write(&tmp, STUB).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        path
    });
    format!("python3 -u '{}'", path.display())
}

const WAIT: Duration = Duration::from_secs(20);

/// A client of one bridge.
struct Peer {
    bridge: Arc<Bridge>,
    /// The grant the sidecar would name for this client's requests.
    caller: Option<Arc<str>>,
}

async fn bridge_with(limits: Limits) -> Peer {
    Peer {
        bridge: start("stub", &stub_command(), limits).unwrap(),
        caller: None,
    }
}

/// Serves `bridge` on a loopback port, for clients that speak only HTTP.
async fn serve_loopback(bridge: Arc<Bridge>) -> Uri {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let bridge = Arc::clone(&bridge);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let bridge = Arc::clone(&bridge);
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            bridge.handle(req.map(Body::Upstream)).await,
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/mcp").parse().unwrap()
}

async fn bridge() -> Peer {
    bridge_with(Limits::default()).await
}

/// What one exchange returned.
struct Reply {
    status: StatusCode,
    session: Option<String>,
    events: Events,
}

/// The JSON-RPC messages of a reply, read as they arrive.
struct Events {
    body: Body,
    sse: bool,
    parser: SseParser,
}

impl Events {
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(event) = self.parser.next_event().unwrap() {
                if !event.data.is_empty() {
                    return Some(serde_json::from_str(&event.data).unwrap());
                }
                continue;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("the bridge did not answer in time");
            match frame {
                Some(frame) => {
                    if let Ok(data) = frame.unwrap().into_data() {
                        self.parser.push(data);
                    }
                }
                None => return None,
            }
        }
    }

    async fn all(mut self) -> Vec<Value> {
        if !self.sse {
            let bytes = self.body.collect().await.unwrap().to_bytes();
            return if bytes.is_empty() {
                vec![]
            } else {
                vec![serde_json::from_slice(&bytes).unwrap()]
            };
        }
        let mut out = vec![];
        while let Some(m) = self.next().await {
            out.push(m);
        }
        out
    }
}

impl Peer {
    async fn send(&self, method: Method, session: Option<&str>, body: Option<Value>) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri("http://stdio.invalid/mcp")
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json");
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let mut req = req.body(full(body)).unwrap();
        if let Some(grant) = &self.caller {
            req.extensions_mut().insert(Caller(Arc::clone(grant)));
        }
        let resp = tokio::time::timeout(WAIT, Arc::clone(&self.bridge).handle(req))
            .await
            .expect("the bridge did not answer in time");
        let sse = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        Reply {
            status: resp.status(),
            session: resp
                .headers()
                .get("mcp-session-id")
                .map(|v| v.to_str().unwrap().to_owned()),
            events: Events {
                body: resp.into_body(),
                sse,
                parser: SseParser::new(1 << 20),
            },
        }
    }

    async fn post(&self, session: Option<&str>, body: Value) -> Reply {
        self.send(Method::POST, session, Some(body)).await
    }

    /// `initialize` and `notifications/initialized`; the session id.
    async fn initialize(&self) -> String {
        let reply = self
            .post(
                None,
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "test", "version": "1"}}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        let session = reply.session.clone().expect("no Mcp-Session-Id");
        let messages = reply.events.all().await;
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert_eq!(messages[0]["result"]["serverInfo"]["name"], "stub");
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert_eq!(
            self.post(Some(&session), note).await.status,
            StatusCode::ACCEPTED
        );
        session
    }

    /// A request's messages, in order, and the status.
    async fn call(&self, session: &str, id: u64, method: &str, params: Value) -> Vec<Value> {
        let reply = self
            .post(
                Some(session),
                json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.events.all().await
    }

    async fn tool(&self, session: &str, id: u64, name: &str, arguments: Value) -> Vec<Value> {
        self.call(
            session,
            id,
            "tools/call",
            json!({"name": name, "arguments": arguments}),
        )
        .await
    }
}

fn text(message: &Value) -> &str {
    message["result"]["content"][0]["text"].as_str().unwrap()
}

#[tokio::test]
async fn lists_and_calls_with_progress_first() {
    let peer = bridge().await;
    let session = peer.initialize().await;
    let tools = peer.call(&session, 1, "tools/list", json!({})).await;
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["id"], 1);
    assert_eq!(tools[0]["result"]["tools"][0]["name"], "echo");

    let params =
        json!({"name": "echo", "arguments": {"text": "hi"}, "_meta": {"progressToken": "p1"}});
    let messages = peer.call(&session, 2, "tools/call", params).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["method"], "notifications/progress");
    assert_eq!(messages[0]["params"]["progressToken"], "p1");
    assert_eq!(messages[1]["id"], 2);
    assert_eq!(text(&messages[1]), "hi");
}

#[tokio::test]
async fn a_batch_is_answered_on_one_stream() {
    let peer = bridge().await;
    let session = peer.initialize().await;
    let batch = json!([
        {"jsonrpc": "2.0", "id": "a", "method": "ping"},
        {"jsonrpc": "2.0", "id": "b", "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x\ny"}}},
    ]);
    let reply = peer.post(Some(&session), batch).await;
    assert_eq!(reply.status, StatusCode::OK);
    let messages = reply.events.all().await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["id"], "a");
    assert_eq!(messages[1]["id"], "b");
    assert_eq!(text(&messages[1]), "x\ny");
}

#[tokio::test]
async fn elicitation_round_trips_on_the_calls_stream() {
    let peer = bridge().await;
    let session = peer.initialize().await;
    let reply = peer
        .post(
            Some(&session),
            json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "ask"}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut events = reply.events;
    let ask = events.next().await.unwrap();
    assert_eq!(ask["method"], "elicitation/create");
    let answer = json!({"jsonrpc": "2.0", "id": ask["id"].clone(),
        "result": {"action": "accept", "content": {"name": "Ada"}}});
    assert_eq!(
        peer.post(Some(&session), answer).await.status,
        StatusCode::ACCEPTED
    );
    let result = events.next().await.unwrap();
    assert_eq!(result["id"], 5);
    assert_eq!(text(&result), "hello Ada");
    assert!(
        events.next().await.is_none(),
        "the stream ends once answered"
    );
}

#[tokio::test]
async fn cancelling_the_last_request_ends_its_stream() {
    let peer = bridge().await;
    let session = peer.initialize().await;
    let reply = peer
        .post(
            Some(&session),
            json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "ask"}}),
        )
        .await;
    let mut events = reply.events;
    assert_eq!(events.next().await.unwrap()["method"], "elicitation/create");
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 9, "reason": "changed my mind"}});
    assert_eq!(
        peer.post(Some(&session), cancel).await.status,
        StatusCode::ACCEPTED
    );
    assert!(events.next().await.is_none());
}

#[tokio::test]
async fn messages_outside_a_post_go_to_the_get_stream() {
    let peer = bridge().await;
    let session = peer.initialize().await;
    let announce = json!({"jsonrpc": "2.0", "method": "notifications/test/announce"});
    let reply = peer.post(Some(&session), announce).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    // No POST stream is open to carry the announcement.
    let get = peer.send(Method::GET, Some(&session), None).await;
    assert_eq!(get.status, StatusCode::OK);
    let mut events = get.events;
    let note = events.next().await.unwrap();
    assert_eq!(note["method"], "notifications/tools/list_changed");

    let second = peer.send(Method::GET, Some(&session), None).await;
    assert_eq!(second.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn rmcp_client_works_through_the_bridge() {
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    use rmcp::transport::StreamableHttpClientTransport;

    let peer = bridge().await;
    let url = serve_loopback(Arc::clone(&peer.bridge)).await;
    let transport = StreamableHttpClientTransport::from_uri(url.to_string());
    let client = ().serve(transport).await.unwrap();
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].name, "echo");
    let mut arguments = serde_json::Map::new();
    arguments.insert("text".into(), json!("via rmcp"));
    let result = client
        .call_tool(CallToolRequestParams::new("echo").with_arguments(arguments))
        .await
        .unwrap();
    let content = serde_json::to_value(&result.content).unwrap();
    assert_eq!(content[0]["text"], "via rmcp");
    client.cancel().await.unwrap();
}
