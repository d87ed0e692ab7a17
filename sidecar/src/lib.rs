//! # tollgate-sidecar
//!
//! The per-pod data plane (ARCHITECTURE.md §2): an MCP proxy that peeks at every
//! JSON-RPC message, decides each `tools/call` against the policy snapshot,
//! forwards what is allowed byte for byte, and answers the rest itself.
//!
//! A request's path, by module: [`listener`] (routes) → [`mcp::peek`] (what
//! is this message?) → [`identity`] (who calls?) → [`enforce`] (decide,
//! forward or answer) → [`mcp::answer`] (the sidecar's own replies) /
//! [`sse_filter`] and [`mcp::list_filter`] (responses streamed back) →
//! [`decision_log`] and [`metrics`]. The policy lives in [`snapshot`].

// Request handlers return the HTTP response to send as their error: built once
// per refused request and moved out at once, so its size does not matter.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod config;
pub mod conn;
pub mod control;
pub mod decision_log;
pub mod demo;
pub mod enforce;
pub mod identity;
pub mod legacy;
pub mod listener;
pub mod mcp;
pub mod metrics;
pub mod routes;
pub mod session_ids;
pub mod snapshot;
pub mod sse_filter;
pub mod state;
pub mod upstream;
