//! `--rollout-steps`: one more version, staged (`policy push --stage`) and
//! rolled out over the whole fleet in the given steps with no bake, so each
//! step starts as soon as the previous one's nodes all ACKed.
//!
//! Which nodes a step chooses is a pure function of the rollout id and the
//! node ids (`tollgate_controlplane::rollout::placement`), so the benchmark
//! knows each node's step; every node stamps its own ACK time. A step's time
//! is from the previous step's last ACK (the first: from the start RPC) to
//! its own last ACK: the control plane noticing the gate passed, sending to
//! the step's nodes, and their ACKs.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::time::Instant;
use tollgate_controlplane::rollout::placement::{chosen, cut, place};
use tollgate_proto::v1::{GetRolloutRequest, PushPolicyRequest, StartRolloutRequest};

use super::sidecar::Board;
use super::{Admin, ms};

pub async fn measure(
    admin: &mut Admin,
    board: &Board,
    ids: &[String],
    steps: &[f64],
    content: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let staged = admin
        .push_policy(PushPolicyRequest {
            content,
            message: "fanout benchmark rollout".to_owned(),
            stage: true,
            ..PushPolicyRequest::default()
        })
        .await
        .context("staging the rollout's version failed")?
        .into_inner();
    ensure!(
        staged.accepted && staged.created,
        "staging refused: {staged:?}"
    );
    let version = staged.version;
    board.expect(version);
    let started = Instant::now();
    let rollout = admin
        .start_rollout(StartRolloutRequest {
            version,
            steps: steps.to_vec(),
            bake_ms: 0,
            max_deny_rate_increase: 1.0,
            ack_timeout_ms: i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
            min_calls: 0,
            ..StartRolloutRequest::default()
        })
        .await
        .context("starting the rollout failed")?
        .into_inner();
    let known: Vec<&str> = ids.iter().map(String::as_str).collect();
    let cuts: Vec<f64> = steps.iter().map(|p| cut(&rollout.id, *p, &known)).collect();
    let step_of = |id: &str| {
        let at = place(&rollout.id, id);
        cuts.iter()
            .position(|c| chosen(at, *c))
            .unwrap_or(steps.len())
    };
    let deadline = started + timeout;
    while board.reached() < ids.len() {
        if Instant::now() >= deadline {
            let r = admin
                .get_rollout(GetRolloutRequest::default())
                .await
                .map(|r| r.into_inner());
            bail!(
                "rollout {}: {} of {} nodes ACKed v{version} after {}; {r:?}",
                rollout.id,
                board.reached(),
                ids.len(),
                ms(started.elapsed())
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut last = vec![Duration::ZERO; steps.len()];
    let mut count = vec![0usize; steps.len()];
    for (index, id) in ids.iter().enumerate() {
        let k = step_of(id).min(steps.len() - 1);
        let at = board.acked_after(index, started).unwrap_or(Duration::MAX);
        last[k] = last[k].max(at);
        count[k] += 1;
    }
    let mut previous = Duration::ZERO;
    let mut total = 0;
    for (k, p) in steps.iter().enumerate() {
        total += count[k];
        let took = last[k].saturating_sub(previous);
        println!(
            "fanout: rollout {} step {}/{} ({p}%): {} more nodes ({total} in all) ACKed v{version} {} after the previous step's last ACK (at +{})",
            rollout.id,
            k + 1,
            steps.len(),
            count[k],
            ms(took),
            ms(last[k]),
        );
        println!(
            "RESULT rollout_step={} percent={p} nodes={} step_ms={:.1} at_ms={:.1}",
            k + 1,
            count[k],
            took.as_secs_f64() * 1e3,
            last[k].as_secs_f64() * 1e3,
        );
        previous = last[k];
    }
    // The control plane saw the same: Completed over every node.
    loop {
        let r = admin
            .get_rollout(GetRolloutRequest::default())
            .await
            .context("reading the rollout failed")?
            .into_inner();
        if r.state == "Completed" {
            break;
        }
        if Instant::now() >= deadline {
            bail!("rollout {} never completed: {r:?}", rollout.id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
