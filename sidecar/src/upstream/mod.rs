//! The MCP servers behind the sidecar.

pub mod http;
pub mod stdio;

pub use self::http::{HttpUpstream, UpstreamError};
