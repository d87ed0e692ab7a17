//! MCP message handling: peeking at requests, SSE framing, the sidecar's own
//! answers, and `tools/list` filtering.

pub mod answer;
pub mod encoding;
pub mod list_filter;
pub mod peek;
pub mod request_state;
pub mod sse;
