//! stdio MCP servers, served over Streamable HTTP on a loopback port so that
//! the rest of the sidecar treats them like any HTTP upstream.

use http::Uri;

/// Starts the bridge for `command` and returns the URL it serves.
pub async fn bridge(server: &str, command: &str) -> anyhow::Result<Uri> {
    anyhow::bail!(
        "--upstream {server}=stdio:{command}: stdio upstreams are not available in this build yet"
    )
}
