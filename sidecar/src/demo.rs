//! A built-in demo MCP upstream, so a newcomer can put Tollgate in front of
//! something and watch it decide.
//!
//! It models a test-session service with an in-memory store and seven tools
//! of deliberately mixed risk: read-only listings (`readOnlyHint`), a create,
//! a `destructiveHint` delete, a fake generator, and a `debug_dump` that
//! exposes the whole store — the kind of tool a policy should deny. Nothing
//! here touches the network or the disk; `generate_mock_api` only pretends.
//!
//! The server is rmcp's Streamable HTTP transport, served at `/mcp` over
//! hyper on a listener the caller binds.

use std::{convert::Infallible, io, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rmcp::{
    ServerHandler,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{CallToolResult, ContentBlock},
    tool, tool_handler, tool_router,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::{net::TcpListener, sync::Mutex, task::JoinSet};

/// The HTTP path the demo answers MCP on; every other path is a 404.
pub const MCP_PATH: &str = "/mcp";

/// How long to pause accepting after a listener error that is not about one
/// connection (e.g. the process ran out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);

/// Serves the demo MCP server on `listener` at [`MCP_PATH`] (Streamable
/// HTTP, stateful sessions for clients that ask for them).
///
/// Runs until the returned future is dropped (e.g. its task is aborted):
/// dropping it closes every open connection and MCP session. The store lives
/// as long as the future, so each call starts empty. Errors only if the
/// listener cannot report its address; accept errors are logged and retried.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let store = Store::default();
    let router = DemoServer::tool_router();
    let config = StreamableHttpServerConfig::default();
    // rmcp keeps sessions (and their SSE streams) in tasks of its own; this
    // guard cancels them when `serve` is dropped.
    let _sessions = config.cancellation_token.clone().drop_guard();
    let mcp = StreamableHttpService::new(
        move || {
            Ok(DemoServer {
                store: store.clone(),
                tool_router: router.clone(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        config,
    );
    tracing::info!("demo MCP server listening on http://{addr}{MCP_PATH}");

    // Owning the connection tasks here means dropping `serve` aborts them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(mcp.clone(), stream, peer));
                }
                Err(error) if is_connection_error(&error) => {
                    tracing::debug!(%error, "demo: a connection failed before it was accepted");
                }
                Err(error) => {
                    tracing::warn!(%error, "demo: accepting connections failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type Mcp = StreamableHttpService<DemoServer, LocalSessionManager>;
type DemoResponse = Response<BoxBody<Bytes, Infallible>>;

async fn serve_connection(mcp: Mcp, stream: tokio::net::TcpStream, peer: std::net::SocketAddr) {
    let service = service_fn(move |request: Request<Incoming>| {
        let mcp = mcp.clone();
        async move { Ok::<_, Infallible>(route(&mcp, request).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(error) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, %error, "demo: connection ended with an error");
    }
}

async fn route(mcp: &Mcp, request: Request<Incoming>) -> DemoResponse {
    if request.uri().path() == MCP_PATH {
        return mcp.handle(request).await;
    }
    let mut response = Response::new(
        Full::new(Bytes::from_static(
            b"not found: the demo MCP server answers at /mcp\n",
        ))
        .boxed(),
    );
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// Errors about one connection (the peer gave up before we accepted it),
/// which say nothing about the listener: accept the next one at once.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// One test session, as every tool returns it.
#[derive(Debug, Clone, Serialize)]
struct TestSession {
    /// `ts-N`, N counting from 1 in creation order; never reused.
    id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
}

/// The in-memory store shared by every MCP session of one [`serve`] call.
#[derive(Debug, Clone, Default)]
struct Store(Arc<Mutex<Sessions>>);

#[derive(Debug, Default, Serialize)]
struct Sessions {
    /// In creation order.
    sessions: Vec<TestSession>,
    /// The number the last created session got.
    last_id: u64,
}

/// `create_test_session_context`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
struct CreateSessionArgs {
    /// A human-readable name for the session.
    name: String,
    /// What the session is for.
    #[serde(default)]
    description: Option<String>,
}

/// Arguments naming one session.
#[derive(Debug, Deserialize, JsonSchema)]
struct SessionIdArgs {
    /// The session's id (`ts-N`), as create_test_session_context returned it.
    id: String,
}

/// `generate_mock_api`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
struct GenerateMockApiArgs {
    /// URL or file path of an OpenAPI spec (never fetched or read: the demo only echoes it).
    spec_url_or_path: String,
}

/// The MCP handler: one per MCP session, all sharing one [`Store`].
#[derive(Debug, Clone)]
struct DemoServer {
    store: Store,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl DemoServer {
    #[tool(
        description = "Create a test session context with a name and an optional description; \
                       returns the new session, including its id."
    )]
    async fn create_test_session_context(
        &self,
        Parameters(args): Parameters<CreateSessionArgs>,
    ) -> CallToolResult {
        let mut store = self.store.0.lock().await;
        store.last_id += 1;
        let session = TestSession {
            id: format!("ts-{}", store.last_id),
            name: args.name,
            description: args.description,
        };
        store.sessions.push(session.clone());
        CallToolResult::structured(json!(session))
    }

    #[tool(
        description = "List all test sessions, oldest first.",
        annotations(read_only_hint = true)
    )]
    async fn list_test_sessions(&self) -> CallToolResult {
        let store = self.store.0.lock().await;
        CallToolResult::structured(json!({ "sessions": store.sessions }))
    }

    #[tool(
        description = "Get one test session by id; a tool error if there is no such session.",
        annotations(read_only_hint = true)
    )]
    async fn get_test_session(
        &self,
        Parameters(SessionIdArgs { id }): Parameters<SessionIdArgs>,
    ) -> CallToolResult {
        let store = self.store.0.lock().await;
        match store.sessions.iter().find(|session| session.id == id) {
            Some(session) => CallToolResult::structured(json!(session)),
            None => unknown_session(&id),
        }
    }

    #[tool(
        description = "Delete a test session by id and return it; a tool error if there is no \
                       such session.",
        annotations(destructive_hint = true)
    )]
    async fn delete_test_session(
        &self,
        Parameters(SessionIdArgs { id }): Parameters<SessionIdArgs>,
    ) -> CallToolResult {
        let mut store = self.store.0.lock().await;
        match store.sessions.iter().position(|session| session.id == id) {
            Some(index) => {
                let session = store.sessions.remove(index);
                CallToolResult::structured(json!({ "deleted": session }))
            }
            None => unknown_session(&id),
        }
    }

    #[tool(
        description = "List the mock servers available to test sessions (a fixed list).",
        annotations(read_only_hint = true)
    )]
    async fn list_mock_servers(&self) -> CallToolResult {
        CallToolResult::structured(json!({
            "mock_servers": [
                { "name": "petstore", "protocol": "http", "base_url": "http://petstore.mock.invalid" },
                { "name": "payments", "protocol": "http", "base_url": "http://payments.mock.invalid" },
                { "name": "inventory", "protocol": "grpc", "base_url": "http://inventory.mock.invalid" },
            ]
        }))
    }

    #[tool(
        description = "Generate a mock API from an OpenAPI spec URL or file path and return the \
                       mock server it would start (demo: nothing is fetched or started)."
    )]
    async fn generate_mock_api(
        &self,
        Parameters(GenerateMockApiArgs { spec_url_or_path }): Parameters<GenerateMockApiArgs>,
    ) -> CallToolResult {
        CallToolResult::structured(json!({
            "mock_server": {
                "name": "generated",
                "spec": spec_url_or_path,
                "base_url": "http://generated.mock.invalid",
                "endpoints": 3,
            }
        }))
    }

    #[tool(
        description = "Dump the server's whole internal store (every session and the id \
                       counter), for debugging."
    )]
    async fn debug_dump(&self) -> CallToolResult {
        let store = self.store.0.lock().await;
        CallToolResult::structured(json!({ "store": &*store }))
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "tollgate-demo",
    instructions = "A demo test-session service for trying Tollgate policies: create, list, \
                    get and delete test sessions, list or generate mock servers, dump the store."
)]
impl ServerHandler for DemoServer {}

/// The tool error for an id that names no session: the caller's mistake, so
/// a result the model can read rather than a JSON-RPC error.
fn unknown_session(id: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(format!(
        "no test session with id {id:?}; list_test_sessions shows the ids that exist"
    ))])
}

#[cfg(test)]
#[path = "demo_tests.rs"]
mod tests;
