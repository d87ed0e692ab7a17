//! The route table: one route per `--upstream`, served at `/mcp` (the
//! single unnamed upstream, server `default`) or `/mcp/<name>`, keyed by
//! the name in the path ("" for `/mcp`).

use std::sync::Arc;

use anyhow::Context;
use hashbrown::HashMap;

use crate::config::{Target, UpstreamSpec};
use crate::metrics::Metrics;
use crate::state::{Route, Upstream};
use crate::upstream::{HttpUpstream, stdio};

/// Builds every route, starting the in-process bridge of each stdio server.
/// The error names the `--upstream` that cannot be served.
pub fn table(
    specs: &[UpstreamSpec],
    stdio_limits: stdio::Limits,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<HashMap<String, Arc<Route>>> {
    let mut routes = HashMap::new();
    for spec in specs {
        let (key, path) = if spec.named {
            (spec.name.clone(), format!("/mcp/{}", spec.name))
        } else {
            (String::new(), "/mcp".to_owned())
        };
        let upstream = match &spec.target {
            Target::Http(url) => Upstream::Http(HttpUpstream::new(
                &spec.name,
                url.parse().with_context(|| format!("--upstream {url}"))?,
            )),
            Target::LegacySse(url) => Upstream::LegacySse(HttpUpstream::new(
                &spec.name,
                url.parse().with_context(|| format!("--upstream {url}"))?,
            )),
            Target::Stdio(command) => {
                Upstream::Http(stdio::bridge(&spec.name, command, stdio_limits.clone())?)
            }
        };
        routes.insert(
            key,
            Arc::new(Route::new(&spec.name, path, upstream, metrics)),
        );
    }
    Ok(routes)
}
