//! # tollgate-sidecar
//!
//! The per-pod data plane (ARCHITECTURE.md §2): an MCP proxy that peeks at every
//! JSON-RPC message, decides each `tools/call` against the policy snapshot,
//! forwards what is allowed byte for byte, and answers the rest itself.
//!
//! A request's path, by module: [`listener`] (routes) → a transport
//! ([`streamable`] or [`legacy_sse`]) → [`judge`] (read, [`mcp::peek`],
//! identify, decide: a [`verdict`] per message) → [`forward`] what is
//! allowed / [`reply`] builds every reply the sidecar writes →
//! [`sse_filter`] and [`mcp::list_filter`] (responses streamed back);
//! [`decision_log`] and [`metrics`] record. The policy lives in [`snapshot`];
//! in fleet mode [`rollout_report`] counts decisions per policy version (and a
//! shadow version's differences) for staged rollouts.

pub mod admin;
pub mod approvals;
pub mod config;
pub mod conn;
pub mod control;
pub mod decision_log;
pub mod demo;
pub mod forward;
pub mod identity;
pub mod judge;
pub mod legacy_sse;
pub mod listener;
pub mod mcp;
pub mod metrics;
pub mod reply;
pub mod rollout_report;
pub mod routes;
pub mod session_ids;
pub mod snapshot;
pub mod sse_filter;
pub mod state;
pub mod streamable;
pub mod upstream;
pub mod verdict;
