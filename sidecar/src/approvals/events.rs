//! Approval events, recorded once each: a decision-log line with the
//! request's id and the event, and `tollgate_approvals_total{event}`.

use std::sync::Arc;

use crate::decision_log::{DecisionLog, DecisionRecord, now_rfc3339};
use crate::metrics::Metrics;

use super::ApprovalRecord;

/// Where approval events go.
#[derive(Debug, Clone)]
pub struct Events {
    metrics: Arc<Metrics>,
    log: DecisionLog,
}

impl Events {
    /// Events counted in `metrics` and written to `log`.
    pub fn new(metrics: Arc<Metrics>, log: DecisionLog) -> Self {
        Self { metrics, log }
    }

    /// Records `event` (`requested`, `held`, `approved`, `denied`,
    /// `expired`, `used` or `pending`) of request `r`.
    pub fn record(&self, r: &ApprovalRecord, event: &'static str) {
        self.metrics.approval(event);
        if !self.log.enabled() {
            return;
        }
        self.log.record(DecisionRecord {
            // Not a decision: named after the request and the event.
            id: format!("{}.{event}", r.id),
            time: now_rfc3339(),
            policy_version: r.policy_version.as_str().into(),
            server: r.call.server.as_str().into(),
            grant: r.call.grant.as_str().into(),
            session: (!r.session.is_empty()).then(|| r.session.clone()),
            method: "tools/call",
            tool: r.call.tool.clone(),
            arguments_sha256: r.call.arguments_sha256.clone(),
            arguments: None,
            raw_arguments: None,
            decision: "require_approval",
            shadow: false,
            rule: r.rule.as_str().into(),
            reason: (!r.reason.is_empty()).then(|| r.reason.as_str().into()),
            retry_after_ms: None,
            micros: 0,
            approval_id: Some(r.id.clone()),
            event: Some(event),
        });
    }

    /// Sets the pending gauge.
    pub fn pending(&self, n: usize) {
        self.metrics.approvals_pending(n);
    }
}
