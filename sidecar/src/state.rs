//! What every request shares: the policy store, counters, routes, metrics,
//! the decision log, and each server's tool catalog.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hashbrown::HashMap;
use http::HeaderMap;
use http::header::HeaderName;
use tollgate_policy::{Annotations, Counters, LocalCounters};

use crate::approvals::Approvals;
use crate::approvals::events::Events;
use crate::decision_log::DecisionLog;
use crate::mcp::list_filter::{ListIds, SeenTool};
use crate::metrics::{Metrics, ServerMetrics, ToolCounters};
use crate::reply::RequestError;
use crate::snapshot::{LivePolicy, Snapshot};
use crate::upstream::HttpUpstream;

/// The sidecar's shared state.
#[derive(Debug)]
pub struct Sidecar {
    /// The policy in force.
    pub policy: Arc<LivePolicy>,
    /// Rate-limit counters: local, or, in fleet mode, fleet-wide limits held
    /// as leases ([`crate::control::quota::FleetCounters`]).
    pub counters: Arc<dyn Counters>,
    /// The counters' clock origin.
    pub started: Instant,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The decision log.
    pub log: DecisionLog,
    /// This sidecar's node id: the grant when the bundle has no grants.
    pub node_id: Arc<str>,
    /// The header that carries grant tokens.
    pub grant_header: HeaderName,
    /// The largest request body accepted, in bytes.
    pub max_body: usize,
    /// How long a request's whole body may take to arrive.
    pub body_timeout: Duration,
    /// Legacy SSE sessions open at once, per route.
    pub max_legacy_sessions: usize,
    /// The largest upstream `tools/list` response filtered, in bytes.
    pub max_response: usize,
    /// Servers by route name (`""` for the single unnamed upstream at `/mcp`).
    pub routes: HashMap<String, Arc<Route>>,
    /// The ids forwarded `tools/list` requests carry.
    pub list_ids: ListIds,
    /// Held calls' approvals.
    pub approvals: Approvals,
    decisions: AtomicU64,
    decision_prefix: String,
}

impl Sidecar {
    /// Shared state over `routes`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policy: Arc<LivePolicy>,
        metrics: Arc<Metrics>,
        log: DecisionLog,
        node_id: Arc<str>,
        grant_header: HeaderName,
        max_body: usize,
        routes: HashMap<String, Arc<Route>>,
    ) -> Self {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let approvals = Approvals::local(
            Arc::clone(&node_id),
            Events::new(Arc::clone(&metrics), log.clone()),
            "http://127.0.0.1:9901",
        );
        Self {
            approvals,
            policy,
            counters: Arc::new(LocalCounters::new()),
            started: Instant::now(),
            metrics,
            log,
            node_id,
            grant_header,
            max_body,
            body_timeout: Duration::from_secs(30),
            max_legacy_sessions: 1_000,
            max_response: 16 << 20,
            routes,
            list_ids: ListIds::default(),
            decisions: AtomicU64::new(0),
            decision_prefix: format!("dec_{boot:x}_"),
        }
    }

    /// Uses `counters`, whose clock starts at `origin`, instead of local ones.
    pub fn with_counters(mut self, counters: Arc<dyn Counters>, origin: Instant) -> Self {
        self.counters = counters;
        self.started = origin;
        self
    }

    /// Gives clients `timeout` to send a request's whole body.
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Lets at most `n` legacy SSE sessions be open per route.
    pub fn with_max_legacy_sessions(mut self, n: usize) -> Self {
        self.max_legacy_sessions = n;
        self
    }

    /// Holds calls with `approvals`.
    pub fn with_approvals(mut self, approvals: Approvals) -> Self {
        self.approvals = approvals;
        self
    }

    /// The counters' current time.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Who calls, for every transport: the grant `snapshot` finds for the
    /// request's token (or this node's id without grants). Refused as
    /// unidentified, with the request's JSON-RPC id from `id`, where grants
    /// are set and the token matches none.
    pub fn caller(
        &self,
        snapshot: &Snapshot,
        headers: &HeaderMap,
        id: impl FnOnce() -> Option<Bytes>,
    ) -> Result<Arc<str>, RequestError> {
        snapshot
            .caller(headers, &self.grant_header, &self.node_id)
            .map_err(|e| RequestError::Unidentified {
                id: id(),
                message: e.to_string(),
            })
    }

    /// A new decision id, unique within this sidecar's lifetime.
    pub fn decision_id(&self) -> String {
        let n = self.decisions.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:x}", self.decision_prefix)
    }
}

/// The most tool names one server's catalog learns.
pub const MAX_CATALOG_TOOLS: usize = 10_000;

/// One MCP server the sidecar serves.
#[derive(Debug)]
pub struct Route {
    /// The server's name in the policy bundle.
    pub server: Arc<str>,
    /// Where the sidecar serves it (`/mcp` or `/mcp/<name>`).
    pub path: String,
    /// How to reach it.
    pub upstream: Upstream,
    /// The tools of its latest `tools/list`.
    pub catalog: ArcSwap<Catalog>,
    /// Its per-request metric handles.
    pub metrics: ServerMetrics,
    registry: Arc<Metrics>,
}

impl Route {
    /// A route with an empty catalog.
    pub fn new(server: &str, path: String, upstream: Upstream, metrics: &Arc<Metrics>) -> Self {
        let server: Arc<str> = server.into();
        Self {
            metrics: metrics.server(&server),
            server,
            path,
            upstream,
            catalog: ArcSwap::default(),
            registry: Arc::clone(metrics),
        }
    }

    /// The decision counters for a call of `tool` (listed or not).
    pub fn counters<'a>(&'a self, tool: Option<&'a CatalogTool>) -> &'a ToolCounters {
        tool.map_or(&self.metrics.unlisted, |t| &t.counters)
    }

    /// Merges the tools of a `tools/list` result into the catalog. Past
    /// [`MAX_CATALOG_TOOLS`] names (an upstream listing without end) new
    /// names are not learned: they are judged without annotations and
    /// counted as unlisted, so neither memory nor metric labels grow.
    pub fn learn(&self, seen: Vec<SeenTool>) {
        if seen.is_empty() {
            return;
        }
        let mut skipped = 0;
        self.catalog.rcu(|old| {
            let mut tools = old.tools.clone();
            skipped = 0;
            for t in &seen {
                let counters = match tools.get(t.name.as_str()) {
                    Some(known) => known.counters.clone(),
                    None if tools.len() >= MAX_CATALOG_TOOLS => {
                        skipped += 1;
                        continue;
                    }
                    None => self
                        .registry
                        .tool_counters(&self.server, Some(&Arc::from(t.name.as_str()))),
                };
                tools.insert(
                    t.name.as_str().into(),
                    CatalogTool {
                        annotations: t.annotations,
                        counters,
                    },
                );
            }
            Catalog { tools }
        });
        self.registry.evicted("catalog_tools", skipped);
    }
}

/// How a server is reached.
#[derive(Debug)]
pub enum Upstream {
    /// Streamable HTTP.
    Http(HttpUpstream),
    /// The legacy HTTP+SSE transport (2024-11-05): the URL of its SSE endpoint.
    LegacySse(HttpUpstream),
}

/// Tools a server has listed, by name.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// The tools.
    pub tools: HashMap<Box<str>, CatalogTool>,
}

/// A listed tool.
#[derive(Debug, Clone)]
pub struct CatalogTool {
    /// Its annotations (they feed risk classes).
    pub annotations: Option<Annotations>,
    /// Its decision counters.
    pub counters: ToolCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_stops_learning_new_names_at_its_cap() {
        let metrics = Arc::new(Metrics::new());
        let up = HttpUpstream::new("s", "http://127.0.0.1:1/mcp".parse().unwrap());
        let route = Route::new("s", "/mcp".into(), Upstream::Http(up), &metrics);
        let seen = |from: usize, n: usize| -> Vec<SeenTool> {
            (from..from + n)
                .map(|i| SeenTool {
                    name: format!("tool_{i}"),
                    annotations: None,
                })
                .collect()
        };
        route.learn(seen(0, MAX_CATALOG_TOOLS - 5));
        route.learn(seen(MAX_CATALOG_TOOLS - 5, 20));
        let catalog = route.catalog.load();
        assert_eq!(catalog.tools.len(), MAX_CATALOG_TOOLS);
        // Names already known are still updated.
        route.learn(vec![SeenTool {
            name: "tool_0".into(),
            annotations: Some(Annotations {
                read_only_hint: Some(true),
                ..Annotations::default()
            }),
        }]);
        assert!(route.catalog.load().tools["tool_0"].annotations.is_some());
        assert!(
            metrics
                .encode()
                .contains("tollgate_state_evictions_total{state=\"catalog_tools\"} 15")
        );
    }
}
