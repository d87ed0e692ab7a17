//! The limits a quota report is accounted by: those of the policy version it
//! names, as this control plane stored it — never the `max` or window the
//! report carries, so a node cannot raise a limit for the fleet.
//!
//! A report may name only a version the control plane gave that node: one
//! its policy stream sent it, or one the node said it runs (by content hash)
//! on that stream — which is how a sidecar still running a stored version
//! after a control-plane restart is known again. Any other version is
//! refused for its buckets, with an error line the node logs. Each version
//! is read from the store and compiled once, on first use, and kept among
//! the [`VERSIONS_KEPT`] most recently used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
use tollgate_policy::{Bundle, FleetLimit};
use tollgate_proto::v1::BucketId;

use super::ControlPlane;
use crate::quota::LimitSpec;

/// Compiled versions kept. A fleet runs one version, two during a rollout;
/// the rest are stragglers and rollbacks.
pub const VERSIONS_KEPT: usize = 8;

/// One stored version, compiled; or why it does not compile.
type Compiled = Result<Bundle, String>;

/// Compiled stored versions, most recently used kept.
#[derive(Default)]
pub struct StoredLimits {
    entries: Mutex<Vec<Entry>>,
}

struct Entry {
    version: u64,
    /// When it was last asked for, on [`StoredLimits`]' own count.
    used: u64,
    cell: Arc<OnceCell<Arc<Compiled>>>,
}

impl StoredLimits {
    /// Version `version` (stored: 1 ≤ version ≤ the latest) compiled, read
    /// from the store on first use; concurrent first uses wait for one
    /// compile. A store error is not kept: the next call reads again.
    async fn get(&self, cp: &ControlPlane, version: u64) -> Result<Arc<Compiled>, String> {
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let now = entries.iter().map(|e| e.used).max().unwrap_or(0) + 1;
            match entries.iter_mut().find(|e| e.version == version) {
                Some(e) => {
                    e.used = now;
                    Arc::clone(&e.cell)
                }
                None => {
                    if entries.len() >= VERSIONS_KEPT
                        && let Some(oldest) = (0..entries.len()).min_by_key(|&i| entries[i].used)
                    {
                        entries.swap_remove(oldest);
                    }
                    let cell = Arc::new(OnceCell::new());
                    entries.push(Entry {
                        version,
                        used: now,
                        cell: Arc::clone(&cell),
                    });
                    cell
                }
            }
        };
        cell.get_or_try_init(|| async {
            let stored = cp
                .store(move |s| {
                    Ok(s.get(version)?.map(|v| {
                        std::str::from_utf8(&v.content)
                            .map_err(|e| format!("its content is not UTF-8 ({e})"))
                            .and_then(|text| tollgate_policy::load(text).map_err(|e| e.to_string()))
                    }))
                })
                .await
                .map_err(|status| {
                    format!(
                        "cannot read policy version {version} from the store: {}",
                        status.message()
                    )
                })?;
            stored
                .map(Arc::new)
                .ok_or_else(|| format!("policy version {version} is missing from the store"))
        })
        .await
        .cloned()
    }

    /// What each version named in a report of `node` accounts its buckets
    /// by, or the error line for its buckets.
    pub async fn resolve(
        &self,
        cp: &ControlPlane,
        node: &str,
        versions: impl IntoIterator<Item = u64>,
    ) -> Versions {
        let latest = cp.latest.borrow().as_ref().map_or(0, |l| l.version);
        let mut out = HashMap::new();
        for version in versions {
            if out.contains_key(&version) {
                continue;
            }
            let resolved = if version == 0 || version > latest {
                Err(format!(
                    "node {node} reported it under policy version {version}, which this control \
                     plane never stored (its latest is {latest}); it gets no lease. Check that \
                     the sidecar gets its policy from this control plane (a control plane on a \
                     new data dir numbers versions from 1 again), and push the policy \
                     (`tollgate policy push`) so the node is sent a version stored here"
                ))
            } else if !cp
                .fleet
                .read(node, |n| n.was_given(version))
                .unwrap_or(false)
            {
                Err(format!(
                    "node {node} reported it under policy version {version}, which this control \
                     plane has not sent to that node, nor has the node's policy stream said it \
                     runs it; it gets no lease. A node's reports are accepted under a version \
                     once its policy stream has it (after a control-plane restart, as soon as \
                     the sidecar's policy stream reconnects); if this persists, check with \
                     `tollgate status` that node {node}'s policy stream reaches this control \
                     plane under that node id"
                ))
            } else {
                match self.get(cp, version).await {
                    Ok(compiled) => match &*compiled {
                        Ok(_) => Ok(compiled),
                        Err(e) => Err(format!(
                            "policy version {version} as stored does not compile ({e}), so no \
                             limit can be read from it; push a corrected policy"
                        )),
                    },
                    Err(e) => Err(format!(
                        "{e}; it gets no lease until the store answers (tried again at node \
                         {node}'s next report)"
                    )),
                }
            };
            out.insert(version, resolved);
        }
        Versions {
            versions: out,
            found: HashMap::new(),
        }
    }
}

/// The versions one report names, resolved: each bucket's limit comes from
/// here.
pub struct Versions {
    versions: HashMap<u64, Result<Arc<Compiled>, String>>,
    /// Limits already looked up for this report, by version, server and
    /// counter: a report's many grant or session buckets share a few.
    found: HashMap<(u64, String, String), Option<FleetLimit>>,
}

impl Versions {
    /// The limit of bucket `id` under `version`, as stored; or the reason it
    /// cannot be accounted, for its error line (after the bucket's name).
    pub fn spec(&mut self, version: u64, id: &BucketId) -> Result<LimitSpec, String> {
        let bundle = match self.versions.get(&version) {
            Some(Ok(compiled)) => match &**compiled {
                Ok(bundle) => bundle,
                Err(e) => return Err(e.clone()),
            },
            Some(Err(e)) => return Err(e.clone()),
            None => {
                return Err(format!(
                    "policy version {version} was not looked up for this report"
                ));
            }
        };
        let limit = *self
            .found
            .entry((version, id.server.clone(), id.counter.clone()))
            .or_insert_with(|| bundle.fleet_limit(&id.server, &id.counter));
        let Some(limit) = limit else {
            return Err(format!(
                "policy version {version} has no limit with counter {:?} on server {:?}, so it \
                 gets no lease; the node's bundle and version {version} as stored here \
                 disagree: check with `tollgate status` that the node runs version {version}",
                id.counter, id.server
            ));
        };
        if limit.scope.as_str() != id.scope {
            return Err(format!(
                "policy version {version} gives counter {:?} scope {}, not {}; it gets no \
                 lease: check with `tollgate status` that the node runs version {version}",
                id.counter,
                limit.scope.as_str(),
                id.scope
            ));
        }
        Ok(LimitSpec {
            max: limit.max,
            window: limit.window,
        })
    }
}
