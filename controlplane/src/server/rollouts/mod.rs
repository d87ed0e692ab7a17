//! Staged rollouts in the running control plane: the current rollout and
//! its tallies, the version (and shadow) each node should run, the bundles
//! of versions other than the served one, and the task that moves the
//! rollout on (see [`crate::rollout`] for the pure core it drives).
//!
//! The served version (`ControlPlane::latest`) is what every node is sent
//! without a rollout. The newest rollout governs the nodes in its scope
//! while the served version is still its `from`: it stops governing when it
//! completes over every node (its version becomes the served one) or when a
//! later push replaces the served version.

pub mod operators;
pub mod reports;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tollgate_proto::v1::DecisionReport;
use tonic::Status;

use super::{ControlPlane, Latest};
use crate::rollout::{DenyRate, Desired, Rollout, State, record};
use crate::store::StoredRollout;
use reports::Tally;

/// How often the driver looks at the rollout without a change (bake and
/// shadow periods, ACK timeouts).
const DRIVE_EVERY: Duration = Duration::from_millis(500);
/// Bundles of versions other than the served one kept prepared.
const PREPARED_KEPT: usize = 8;

/// The newest rollout, and what the fleet reported under it.
#[derive(Default)]
struct Current {
    seq: u64,
    rollout: Option<Rollout>,
    tally: Tally,
}

pub struct Rollouts {
    current: Mutex<Current>,
    /// Bumped whenever a node's desired version may have changed.
    changed: watch::Sender<u64>,
    prepared: Mutex<BTreeMap<u64, Arc<Latest>>>,
}

impl Rollouts {
    /// The rollouts state from the newest stored rollout (`None`: none yet).
    pub fn open(newest: Option<&StoredRollout>) -> Result<Self, record::RecordError> {
        let mut current = Current::default();
        if let Some(stored) = newest {
            current.seq = stored.seq;
            current.rollout = Some(record::decode(&stored.record)?);
        }
        Ok(Self {
            current: Mutex::new(current),
            changed: watch::Sender::new(0),
            prepared: Mutex::new(BTreeMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        // A panic mid-update leaves a rollout that is still readable.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes when a node's desired version may have changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// What node `id` with `labels` should run when `served` is what every
    /// node is sent.
    pub fn desired(
        &self,
        id: &str,
        labels: &std::collections::HashMap<String, String>,
        served: u64,
    ) -> Desired {
        let current = self.lock();
        current
            .rollout
            .as_ref()
            .filter(|r| r.def.from == served)
            .and_then(|r| r.desired(id, &labels.clone().into_iter().collect()))
            .unwrap_or(Desired::live(served))
    }

    /// The newest rollout, if still active (Progressing or Paused).
    pub fn active(&self) -> Option<Rollout> {
        self.lock().rollout.clone().filter(|r| r.state.active())
    }

    /// The newest rollout and its sequence number.
    pub fn newest(&self) -> Option<(u64, Rollout)> {
        let c = self.lock();
        c.rollout.clone().map(|r| (c.seq, r))
    }

    /// Adds a node's report to the newest rollout's tally, if it is active.
    pub fn report(&self, report: &DecisionReport) {
        let mut c = self.lock();
        let Current { rollout, tally, .. } = &mut *c;
        if let Some(r) = rollout.as_ref().filter(|r| r.state.active()) {
            tally.add(r, report);
        }
    }

    /// The deny-rate values of the newest rollout's current phase.
    fn rate(r: &Rollout, tally: &Tally) -> DenyRate {
        DenyRate {
            new: tally.new,
            old: tally.old,
            margin: r.def.max_deny_rate_increase,
            min_calls: r.def.min_calls,
        }
    }

    /// Runs `f` on the newest rollout with its tally; stores it and wakes
    /// the streams when `f` says it changed. A new rollout (`seq` above the
    /// newest) starts a fresh tally.
    async fn change<R>(
        &self,
        cp: &ControlPlane,
        f: impl FnOnce(&mut Option<Rollout>, &mut u64, &mut Tally) -> (bool, R),
    ) -> Result<R, Status> {
        let (stored, out) = {
            let mut c = self.lock();
            let Current {
                seq,
                rollout,
                tally,
            } = &mut *c;
            let (changed, out) = f(rollout, seq, tally);
            let stored = changed
                .then(|| rollout.as_ref().map(|r| stored(*seq, r)))
                .flatten();
            (stored, out)
        };
        if let Some(stored) = stored {
            cp.store(move |s| s.put_rollout(&stored)).await?;
            self.bump();
        }
        Ok(out)
    }

    /// The bundle of `version` as sent: the served one, or one read from
    /// the store and prepared once.
    pub async fn bundle(&self, cp: &ControlPlane, version: u64) -> Result<Arc<Latest>, Status> {
        if let Some(latest) = cp.latest.borrow().clone().filter(|l| l.version == version) {
            return Ok(latest);
        }
        if let Some(found) = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&version)
        {
            return Ok(found.clone());
        }
        let stored = cp
            .store(move |s| s.get(version))
            .await?
            .ok_or_else(|| Status::not_found(format!("no policy version {version}")))?;
        let key = cp.grant_key.clone();
        let prepared = tokio::task::spawn_blocking(move || Arc::new(Latest::new(stored, &key)))
            .await
            .map_err(|e| Status::internal(format!("preparing version {version} failed: {e}")))?;
        let mut kept = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        kept.insert(version, prepared.clone());
        while kept.len() > PREPARED_KEPT {
            kept.pop_first();
        }
        Ok(prepared)
    }

    /// One look at the active rollout: records previous versions, judges
    /// the gates, moves it on; a rollout completing over every node makes
    /// its version the served one.
    async fn drive(&self, cp: &ControlPlane) -> Result<(), Status> {
        let Some(version) = self.active().map(|r| r.def.version) else {
            return Ok(());
        };
        let nodes = cp.fleet.views(version);
        let now = unix_ms();
        let completed = self
            .change(cp, |rollout, _, tally| match rollout.as_mut() {
                Some(r) if r.state.active() => {
                    let rate = Self::rate(r, tally);
                    let changed = r.tick(now, &nodes, &rate);
                    let done = (r.state == State::Completed && r.def.selector.is_empty())
                        .then_some(r.def.version);
                    (changed, done)
                }
                _ => (false, None),
            })
            .await?;
        if let Some(version) = completed {
            self.serve(cp, version).await?;
        }
        Ok(())
    }

    /// Makes `version` what every node is sent (a rollout completed over
    /// every node, or a rollback returned to `from`).
    async fn serve(&self, cp: &ControlPlane, version: u64) -> Result<(), Status> {
        let _serial = cp.push_lock.lock().await;
        let bundle = self.bundle(cp, version).await?;
        cp.metrics.latest_version.set(version as i64);
        cp.latest.send_replace(Some(bundle));
        self.bump();
        Ok(())
    }
}

/// The rollout as stored.
fn stored(seq: u64, r: &Rollout) -> StoredRollout {
    StoredRollout {
        seq,
        id: r.def.id.clone(),
        state: r.state.name().to_owned(),
        record: record::encode(r),
        updated_ms: r.updated_ms,
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Moves the active rollout on, on every fleet change (batched) and every
/// [`DRIVE_EVERY`], until the control plane drains.
pub async fn drive(cp: Arc<ControlPlane>) {
    let mut fleet = cp.fleet.subscribe();
    let mut draining = cp.drain.latch();
    loop {
        tokio::select! {
            biased;
            () = draining.set() => return,
            r = fleet.changed() => if r.is_err() { return },
            () = tokio::time::sleep(DRIVE_EVERY) => {}
        }
        // A fleet reconnecting changes the table thousands of times a
        // second: one look per batch.
        tokio::time::sleep(Duration::from_millis(50)).await;
        fleet.borrow_and_update();
        if let Err(status) = cp.rollouts.drive(&cp).await {
            tracing::warn!(
                "cannot move the rollout on (it holds where it is): {}",
                status.message()
            );
        }
    }
}
