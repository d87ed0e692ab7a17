//! The demo server against rmcp's own Streamable HTTP client, over real
//! loopback sockets.

use std::net::SocketAddr;

use rmcp::{
    ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt,
    model::{CallToolRequestParams, CallToolResult, JsonObject, ProtocolVersion, Tool},
    service::RunningService,
    transport::StreamableHttpClientTransport,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::serve;

type Client = RunningService<RoleClient, ()>;

async fn start() -> (SocketAddr, JoinHandle<anyhow::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, tokio::spawn(serve(listener)))
}

async fn connect(addr: SocketAddr) -> Client {
    let transport = StreamableHttpClientTransport::from_uri(format!("http://{addr}/mcp"));
    ().serve(transport).await.unwrap()
}

async fn call(client: &Client, tool: &'static str, arguments: Value) -> CallToolResult {
    let Value::Object(arguments) = arguments else {
        panic!("arguments must be a JSON object, got {arguments}");
    };
    client
        .call_tool(CallToolRequestParams::new(tool).with_arguments(arguments))
        .await
        .unwrap()
}

/// The structured content of a successful call.
fn ok(result: CallToolResult) -> Value {
    assert_eq!(result.is_error, Some(false), "{result:?}");
    result.structured_content.unwrap()
}

fn tool<'a>(tools: &'a [Tool], name: &str) -> &'a Tool {
    tools.iter().find(|tool| tool.name == name).unwrap()
}

fn required(schema: &JsonObject) -> Value {
    schema.get("required").cloned().unwrap_or(json!([]))
}

#[tokio::test]
async fn lists_seven_described_tools_with_their_hints() {
    let (addr, server) = start().await;
    let client = connect(addr).await;

    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "tollgate-demo");

    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|tool| tool.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "create_test_session_context",
            "debug_dump",
            "delete_test_session",
            "generate_mock_api",
            "get_test_session",
            "list_mock_servers",
            "list_test_sessions",
        ]
    );
    for tool in &tools {
        assert!(
            tool.description.is_some(),
            "{} has no description",
            tool.name
        );
        assert_eq!(tool.input_schema.get("type"), Some(&json!("object")));
    }

    for read_only in [
        "list_test_sessions",
        "get_test_session",
        "list_mock_servers",
    ] {
        let hints = tool(&tools, read_only).annotations.as_ref().unwrap();
        assert_eq!(hints.read_only_hint, Some(true), "{read_only}");
    }
    let delete = tool(&tools, "delete_test_session");
    assert_eq!(
        delete.annotations.as_ref().unwrap().destructive_hint,
        Some(true)
    );
    for unhinted in [
        "create_test_session_context",
        "generate_mock_api",
        "debug_dump",
    ] {
        assert!(tool(&tools, unhinted).annotations.is_none(), "{unhinted}");
    }

    let create = tool(&tools, "create_test_session_context");
    assert_eq!(required(&create.input_schema), json!(["name"]));
    assert_eq!(required(&delete.input_schema), json!(["id"]));
    let generate = tool(&tools, "generate_mock_api");
    assert_eq!(
        required(&generate.input_schema),
        json!(["spec_url_or_path"])
    );

    client.cancel().await.unwrap();
    server.abort();
}

#[tokio::test]
async fn a_session_lives_from_create_to_delete() {
    let (addr, server) = start().await;
    let client = connect(addr).await;

    let created = ok(call(
        &client,
        "create_test_session_context",
        json!({ "name": "checkout", "description": "happy path" }),
    )
    .await);
    assert_eq!(
        created,
        json!({ "id": "ts-1", "name": "checkout", "description": "happy path" })
    );

    let listed = ok(call(&client, "list_test_sessions", json!({})).await);
    assert_eq!(listed, json!({ "sessions": [created] }));

    let got = ok(call(&client, "get_test_session", json!({ "id": "ts-1" })).await);
    assert_eq!(got, created);

    let deleted = ok(call(&client, "delete_test_session", json!({ "id": "ts-1" })).await);
    assert_eq!(deleted, json!({ "deleted": created }));

    let gone = call(&client, "get_test_session", json!({ "id": "ts-1" })).await;
    assert_eq!(gone.is_error, Some(true));
    let message = &gone.content[0].as_text().unwrap().text;
    assert!(message.contains("ts-1"), "{message}");

    let dump = ok(call(&client, "debug_dump", json!({})).await);
    assert_eq!(dump, json!({ "store": { "sessions": [], "last_id": 1 } }));

    client.cancel().await.unwrap();
    server.abort();
}

/// A client of the session-less 2026-07-28 protocol gets a new handler per
/// request; it must still see what a session-ful client created.
#[tokio::test]
async fn sessions_are_shared_between_clients_and_protocol_versions() {
    let (addr, server) = start().await;
    let first = connect(addr).await;
    let transport = StreamableHttpClientTransport::from_uri(format!("http://{addr}/mcp"));
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    let second = ().serve_with_lifecycle(transport, lifecycle).await.unwrap();
    assert_eq!(
        second.peer_info().unwrap().protocol_version,
        ProtocolVersion::V_2026_07_28
    );

    ok(call(
        &first,
        "create_test_session_context",
        json!({ "name": "a" }),
    )
    .await);
    let listed = ok(call(&second, "list_test_sessions", json!({})).await);
    assert_eq!(
        listed,
        json!({ "sessions": [{ "id": "ts-1", "name": "a" }] })
    );

    first.cancel().await.unwrap();
    second.cancel().await.unwrap();
    server.abort();
}

#[tokio::test]
async fn other_paths_are_not_found_and_abort_stops_serving() {
    let (addr, server) = start().await;

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");

    server.abort();
    assert!(server.await.unwrap_err().is_cancelled());
    // The aborted task dropped the listener with it.
    assert!(TcpStream::connect(addr).await.is_err());
}
