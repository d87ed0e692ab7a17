//! The operator's side of rollouts (the `Admin` rollout calls): start one,
//! act on it, and read where it stands — the status `tollgate rollout
//! status` prints, gate values and the shadow's "would change" report
//! included. Roles are checked and actions audited by the caller
//! (`admin.rs`); refusals here speak to the operator.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_proto::v1::{
    GetRolloutRequest, ListRolloutsResponse, RolloutActionRequest, RolloutStatus,
    StartRolloutRequest,
};
use tonic::Status;

use super::super::ControlPlane;
use super::{Rollouts, unix_ms};
use crate::rollout::gates::{self, Gate};
use crate::rollout::{Definition, Rollout, State, record};

/// How often a watcher gets the status even without a change.
const WATCH_REFRESH: Duration = Duration::from_secs(1);
/// Lagging nodes named in a status.
const LAGGING_NAMED: usize = 20;

/// Starts a rollout of `req.version` by `who`.
pub async fn start(
    cp: &ControlPlane,
    who: &str,
    req: StartRolloutRequest,
) -> Result<RolloutStatus, Status> {
    let _serial = cp.push_lock.lock().await;
    if let Some(active) = cp.rollouts.active() {
        return Err(Status::failed_precondition(format!(
            "rollout {} of version {} is {}; one rollout at a time: let it finish, or `tollgate \
             rollout abort {}` first",
            active.def.id,
            active.def.version,
            active.state.name(),
            active.def.id
        )));
    }
    let Some(served) = cp.latest.borrow().as_ref().map(|l| l.version) else {
        return Err(Status::failed_precondition(
            "no policy is served yet: `tollgate policy push` a first version, then roll out the \
             next",
        ));
    };
    let version = req.version;
    if cp.store(move |s| s.get(version)).await?.is_none() {
        return Err(Status::not_found(format!(
            "no policy version {version}; push it with `tollgate policy push --stage FILE` first"
        )));
    }
    let seq = cp.rollouts.newest().map_or(0, |(seq, _)| seq) + 1;
    let def = Definition {
        id: format!("r{seq}"),
        version,
        from: served,
        server: req.server,
        selector: req.selector.into_iter().collect(),
        steps: if req.steps.is_empty() {
            vec![1.0, 10.0, 50.0, 100.0]
        } else {
            req.steps
        },
        bake_ms: req.bake_ms.max(0),
        shadow_ms: req.shadow_ms.max(0),
        max_deny_rate_increase: req.max_deny_rate_increase,
        ack_timeout_ms: if req.ack_timeout_ms > 0 {
            req.ack_timeout_ms
        } else {
            30_000
        },
        min_calls: req.min_calls,
        started_by: who.to_owned(),
    };
    def.validate()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    cp.store(move |s| s.stage(version, true)).await?;
    let nodes = cp.fleet.views(version);
    let rollout = Rollout::start(def, unix_ms(), &nodes);
    let id = rollout.def.id.clone();
    cp.rollouts
        .change(cp, |current, s, tally| {
            *current = Some(rollout);
            *s = seq;
            *tally = Default::default();
            (true, ())
        })
        .await?;
    tracing::info!(rollout = %id, version, from = served, "rollout started");
    cp.rollouts.status(cp, &id)
}

/// `pause`, `resume`, `promote`, `abort` or `rollback` of the newest
/// rollout (`req.id` must name it, or be empty).
pub async fn act(
    cp: &ControlPlane,
    who: &str,
    req: RolloutActionRequest,
) -> Result<RolloutStatus, Status> {
    let _serial = cp.push_lock.lock().await;
    let Some((_, newest)) = cp.rollouts.newest() else {
        return Err(Status::not_found(
            "no rollout yet: `tollgate rollout start` one",
        ));
    };
    if !req.id.is_empty() && req.id != newest.def.id {
        return Err(Status::failed_precondition(format!(
            "rollout {} is not the newest ({}); only the newest rollout can be acted on",
            req.id, newest.def.id
        )));
    }
    let served = cp.latest.borrow().as_ref().map_or(0, |l| l.version);
    let now = unix_ms();
    let nodes = cp.fleet.views(newest.def.version);
    let action = req.action.clone();
    let who = who.to_owned();
    let reserve = cp
        .rollouts
        .change(cp, move |current, _, _| {
            let Some(r) = current.as_mut() else {
                return (false, Ok(None));
            };
            let done = match action.as_str() {
                "pause" => r.pause(now, &who),
                "resume" => r.resume(now),
                "promote" => r.promote(now, &nodes),
                "abort" => r.abort(now),
                "rollback" => {
                    if r.state == State::Completed
                        && served != r.def.from
                        && served != r.def.version
                    {
                        return (
                            false,
                            Err(Status::failed_precondition(format!(
                                "version {served} was pushed after rollout {} completed; push \
                                 the version you want instead",
                                r.def.id
                            ))),
                        );
                    }
                    r.rollback(now)
                }
                other => {
                    return (
                        false,
                        Err(Status::invalid_argument(format!(
                            "unknown rollout action {other:?}; use pause, resume, promote, abort \
                             or rollback"
                        ))),
                    );
                }
            };
            match done {
                Ok(()) => {
                    // Back from a rollout that made its version the served
                    // one: `from` is served again.
                    let back = (r.state == State::RolledBack && served == r.def.version)
                        .then_some((r.def.version, r.def.from));
                    let done = (r.state == State::Completed && r.def.selector.is_empty())
                        .then_some((0, r.def.version));
                    (true, Ok(back.or(done)))
                }
                Err(e) => (false, Err(Status::failed_precondition(e.to_string()))),
            }
        })
        .await??;
    if let Some((restage, serve)) = reserve {
        if restage != 0 {
            cp.store(move |s| s.stage(restage, true)).await?;
        } else {
            cp.store(move |s| s.stage(serve, false)).await?;
        }
        drop(_serial);
        cp.rollouts.serve(cp, serve).await?;
    }
    cp.rollouts.status(cp, &newest.def.id)
}

/// A push with `--force` during an active rollout aborts it first.
pub async fn abort_for_push(cp: &ControlPlane) -> Result<Option<String>, Status> {
    let now = unix_ms();
    cp.rollouts
        .change(cp, |current, _, _| match current.as_mut() {
            Some(r) if r.state.active() => {
                let id = r.def.id.clone();
                (r.abort(now).is_ok(), Some(id))
            }
            _ => (false, None),
        })
        .await
}

/// The rollout named `id` ("" for the newest).
pub async fn get(cp: &ControlPlane, req: &GetRolloutRequest) -> Result<RolloutStatus, Status> {
    let newest = cp.rollouts.newest().map(|(_, r)| r.def.id);
    match newest {
        None => Err(Status::not_found("no rollout yet")),
        Some(id) if req.id.is_empty() || req.id == id => cp.rollouts.status(cp, &id),
        Some(_) => {
            let list = list(cp).await?;
            list.rollouts
                .into_iter()
                .find(|r| r.id == req.id)
                .ok_or_else(|| Status::not_found(format!("no rollout {}", req.id)))
        }
    }
}

/// The newest rollouts, newest first (older ones as stored, without live
/// node counts).
pub async fn list(cp: &ControlPlane) -> Result<ListRolloutsResponse, Status> {
    let rows = cp.store(|s| s.rollouts()).await?;
    let newest = cp.rollouts.newest().map(|(_, r)| r.def.id);
    let mut rollouts = Vec::with_capacity(rows.len());
    for row in rows {
        if Some(&row.id) == newest.as_ref() {
            rollouts.push(cp.rollouts.status(cp, &row.id)?);
            continue;
        }
        match record::decode(&row.record) {
            Ok(r) => rollouts.push(describe(&r)),
            Err(e) => tracing::warn!(rollout = %row.id, "{e}"),
        }
    }
    Ok(ListRolloutsResponse { rollouts })
}

/// Watches the rollout `req.id` ("" for the newest): its status now and on
/// every change, ending when the watcher goes or the control plane stops.
pub fn watch(
    cp: Arc<ControlPlane>,
    req: GetRolloutRequest,
    allowed: impl Fn() -> Result<(), Status> + Send + 'static,
) -> Result<ReceiverStream<Result<RolloutStatus, Status>>, Status> {
    let Some(tracked) = cp.drain.track() else {
        return Err(super::super::distribution::shutting_down());
    };
    let mut draining = cp.drain.latch();
    let (tx, rx) = mpsc::channel(2);
    let mut changed = cp.rollouts.subscribe();
    let mut fleet = cp.fleet.subscribe();
    tokio::spawn(async move {
        let _tracked = tracked;
        let tx = tx;
        let mut last = None;
        loop {
            if let Err(e) = allowed() {
                let _ = tx.send(Err(e)).await;
                return;
            }
            match get(&cp, &req).await {
                Ok(status) => {
                    if last.as_ref() != Some(&status) {
                        if tx.send(Ok(status.clone())).await.is_err() {
                            return;
                        }
                        last = Some(status);
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            tokio::select! {
                biased;
                () = draining.set() => return,
                r = changed.changed() => if r.is_err() { return },
                r = fleet.changed() => if r.is_err() { return },
                () = tokio::time::sleep(WATCH_REFRESH) => {}
                () = tx.closed() => return,
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// A rollout's definition and state, without node counts or gates.
fn describe(r: &Rollout) -> RolloutStatus {
    let (k, n) = r.step_of();
    let d = &r.def;
    RolloutStatus {
        id: d.id.clone(),
        version: d.version,
        from_version: d.from,
        server: d.server.clone(),
        selector: d.selector.clone().into_iter().collect(),
        steps: d.steps.clone(),
        state: r.state.name().to_owned(),
        reason: match &r.state {
            State::Paused { reason } => reason.clone(),
            _ => String::new(),
        },
        step: k as u32,
        steps_total: n as u32,
        phase: r.phase.as_str().to_owned(),
        max_deny_rate_increase: d.max_deny_rate_increase,
        bake_ms: d.bake_ms,
        shadow_ms: d.shadow_ms,
        started_ms: r.started_ms,
        updated_ms: r.updated_ms,
        phase_started_ms: r.phase_started_ms,
        acked_ms: r.acked_ms.unwrap_or(0),
        started_by: d.started_by.clone(),
        ..RolloutStatus::default()
    }
}

fn gate_text(g: &Gate) -> String {
    match g {
        Gate::Pass => "pass".to_owned(),
        Gate::Fail(why) => format!("fail: {why}"),
        Gate::Inconclusive(why) => format!("inconclusive: {why}"),
    }
}

impl Rollouts {
    /// The newest rollout's status, node counts, gates and shadow report.
    pub fn status(&self, cp: &ControlPlane, id: &str) -> Result<RolloutStatus, Status> {
        let c = self.lock();
        let Some(r) = c.rollout.as_ref().filter(|r| r.def.id == id) else {
            return Err(Status::not_found(format!("no rollout {id}")));
        };
        let mut out = describe(r);
        let nodes = cp.fleet.views(r.def.version);
        let mut pairs = Vec::new();
        let mut lagging = Vec::new();
        for n in nodes.iter().filter(|n| r.selects(&n.labels)) {
            out.nodes_in_scope += 1;
            let Some(want) = r.desired(&n.id, &n.labels) else {
                continue;
            };
            let chosen = r.chosen(&n.id, &n.labels);
            let counted = chosen || !r.state.active();
            if chosen {
                out.nodes_chosen += 1;
                pairs.push((n, want));
            }
            if counted {
                if n.runs == Some(want) {
                    out.nodes_at_target += 1;
                } else if n.connected && lagging.len() < LAGGING_NAMED {
                    lagging.push(n.id.clone());
                }
            }
        }
        if !r.state.active() {
            // Ended: the target is what each node in scope should run.
            out.nodes_chosen = out.nodes_in_scope;
        }
        out.lagging = lagging;
        let waited = unix_ms().saturating_sub(r.phase_started_ms);
        out.ack_gate = gate_text(&gates::acks(pairs, waited, r.def.ack_timeout_ms));
        let rate = Self::rate(r, &c.tally);
        out.deny_gate = gate_text(&rate.gate());
        out.new_calls = rate.new.calls;
        out.new_denied = rate.new.denied;
        out.old_calls = rate.old.calls;
        out.old_denied = rate.old.denied;
        out.differences = c.tally.differences();
        out.samples = c.tally.samples.iter().rev().cloned().collect();
        Ok(out)
    }
}
