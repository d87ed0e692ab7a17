//! A rollout as stored: one JSON document (definition, state, step, phase,
//! times, cuts, and each node's previous version), so a restarted control
//! plane resumes exactly where it was.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Definition, Phase, Rollout, State};

/// Why a stored rollout cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored rollout is unreadable ({0}); the store was written by another release or edited")]
pub struct RecordError(String);

pub fn encode(r: &Rollout) -> String {
    let d = &r.def;
    let (state, reason) = match &r.state {
        State::Paused { reason } => ("Paused", reason.as_str()),
        s => (s.name(), ""),
    };
    json!({
        "id": d.id, "version": d.version, "from": d.from, "server": d.server,
        "selector": d.selector, "steps": d.steps, "bake_ms": d.bake_ms,
        "shadow_ms": d.shadow_ms, "max_deny_rate_increase": d.max_deny_rate_increase,
        "ack_timeout_ms": d.ack_timeout_ms, "min_calls": d.min_calls,
        "started_by": d.started_by,
        "state": state, "reason": reason, "step": r.step, "phase": r.phase.as_str(),
        "started_ms": r.started_ms, "phase_started_ms": r.phase_started_ms,
        "acked_ms": r.acked_ms, "updated_ms": r.updated_ms, "cuts": r.cuts,
        "previous": r.previous,
    })
    .to_string()
}

pub fn decode(text: &str) -> Result<Rollout, RecordError> {
    let v: Value = serde_json::from_str(text).map_err(|e| RecordError(e.to_string()))?;
    let s = |k: &str| -> Result<String, RecordError> {
        v[k].as_str()
            .map(str::to_owned)
            .ok_or_else(|| RecordError(format!("{k} is not a string")))
    };
    let u = |k: &str| {
        v[k].as_u64()
            .ok_or_else(|| RecordError(format!("{k} is not a count")))
    };
    let i = |k: &str| {
        v[k].as_i64()
            .ok_or_else(|| RecordError(format!("{k} is not a time")))
    };
    let f = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| RecordError(format!("{k} is not a number")))
    };
    let floats = |k: &str| -> Result<Vec<f64>, RecordError> {
        v[k].as_array()
            .ok_or_else(|| RecordError(format!("{k} is not a list")))?
            .iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| RecordError(format!("{k} holds a non-number")))
            })
            .collect()
    };
    let selector: BTreeMap<String, String> = v["selector"]
        .as_object()
        .ok_or_else(|| RecordError("selector is not an object".to_owned()))?
        .iter()
        .map(|(k, x)| Ok((k.clone(), x.as_str().unwrap_or_default().to_owned())))
        .collect::<Result<_, RecordError>>()?;
    let previous: BTreeMap<String, u64> = v["previous"]
        .as_object()
        .ok_or_else(|| RecordError("previous is not an object".to_owned()))?
        .iter()
        .map(|(k, x)| {
            x.as_u64()
                .map(|n| (k.clone(), n))
                .ok_or_else(|| RecordError(format!("previous version of {k} is not a count")))
        })
        .collect::<Result<_, _>>()?;
    let state = match s("state")?.as_str() {
        "Progressing" => State::Progressing,
        "Paused" => State::Paused {
            reason: s("reason")?,
        },
        "Completed" => State::Completed,
        "Aborted" => State::Aborted,
        "RolledBack" => State::RolledBack,
        other => return Err(RecordError(format!("unknown state {other:?}"))),
    };
    let phase = match s("phase")?.as_str() {
        "Shadow" => Phase::Shadow,
        "Enforcing" => Phase::Enforcing,
        other => return Err(RecordError(format!("unknown phase {other:?}"))),
    };
    let def = Definition {
        id: s("id")?,
        version: u("version")?,
        from: u("from")?,
        server: s("server")?,
        selector,
        steps: floats("steps")?,
        bake_ms: i("bake_ms")?,
        shadow_ms: i("shadow_ms")?,
        max_deny_rate_increase: f("max_deny_rate_increase")?,
        ack_timeout_ms: i("ack_timeout_ms")?,
        min_calls: u("min_calls")?,
        started_by: s("started_by")?,
    };
    let step = u("step")? as usize;
    if step >= def.steps.len() {
        return Err(RecordError(format!("step {step} is past the last step")));
    }
    Ok(Rollout {
        def,
        state,
        step,
        phase,
        started_ms: i("started_ms")?,
        phase_started_ms: i("phase_started_ms")?,
        acked_ms: v["acked_ms"].as_i64(),
        updated_ms: i("updated_ms")?,
        cuts: floats("cuts")?,
        previous,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paused_rollout_reads_back_whole() {
        let def = Definition {
            id: "r4".to_owned(),
            version: 9,
            from: 8,
            server: "github".to_owned(),
            selector: [("zone".to_owned(), "a".to_owned())].into(),
            steps: vec![1.0, 10.0, 100.0],
            bake_ms: 60_000,
            shadow_ms: 300_000,
            max_deny_rate_increase: 0.05,
            ack_timeout_ms: 30_000,
            min_calls: 20,
            started_by: "ops".to_owned(),
        };
        let mut r = Rollout::start(def, 1_000, &[]);
        r.previous.insert("node-1".to_owned(), 7);
        r.pause(2_000, "ops").expect("pauses");
        assert_eq!(decode(&encode(&r)), Ok(r));
        assert!(decode("{\"id\":1}").is_err());
    }
}
