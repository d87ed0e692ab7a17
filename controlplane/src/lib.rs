//! Tollgate's control plane and operator CLI.
//!
//! The control plane (`tollgate serve`) stores immutable, numbered policy
//! versions, streams the latest to every sidecar over gRPC with ACK/NACK
//! (xDS style), and keeps a status row per sidecar. The CLI checks and
//! evaluates policies offline and talks to a control plane for the rest.

#![forbid(unsafe_code)]

pub mod approvals;
pub mod auth;
pub mod cli;
pub mod diff;
pub mod inject;
pub mod metrics;
pub mod push;
pub mod quota;
pub mod role;
pub mod rollout;
pub mod server;
pub mod status;
pub mod store;
pub mod tls;
