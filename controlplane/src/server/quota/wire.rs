//! Between `tollgate.v1` quota messages and the allocator's own types.

use std::time::Duration;

use tokio::time::Instant;
use tollgate_proto::v1::{BucketId, BucketReport, FleetBucket, FleetHolder, Lease as LeaseProto};

use super::super::stored_limits::Versions;
use crate::quota::{BucketKey, BucketView, HeldLease, Lease, Report};

/// The scopes counted across the fleet (`pod` is counted by each sidecar).
const FLEET_SCOPES: [&str; 3] = ["grant", "session", "global"];

/// A bucket report as the allocator takes it, with the limit of the version
/// it names as stored (the report's `max` and `window_ms` are the node's and
/// are not read), or why it cannot be.
pub(super) fn parse<'a>(
    b: &'a BucketReport,
    versions: &mut Versions,
) -> Result<(&'a BucketId, BucketKey, Report), String> {
    let Some(id) = b.bucket.as_ref() else {
        return Err("a bucket report without its bucket (server, counter, scope, key)".to_owned());
    };
    if id.server.is_empty() || id.counter.is_empty() {
        return Err(format!(
            "{}: a bucket needs its server and counter; both must be non-empty",
            name(id)
        ));
    }
    if !FLEET_SCOPES.contains(&id.scope.as_str()) {
        return Err(format!(
            "{}: scope {:?} is not counted across the fleet; expected grant, session or global",
            name(id),
            id.scope
        ));
    }
    if id.scope == "global" && !id.key.is_empty() {
        return Err(format!(
            "{}: a global bucket has no key, but {:?} was given; send key \"\"",
            name(id),
            id.key
        ));
    }
    let spec = versions
        .spec(b.policy_version, id)
        .map_err(|e| format!("{}: {e}", name(id)))?;
    let key = BucketKey {
        server: id.server.clone(),
        counter: id.counter.clone(),
        scope_key: id.key.clone(),
    };
    let report = Report {
        policy_version: b.policy_version,
        spec,
        admitted_total: b.admitted_total,
        unleased_total: b.unleased_total,
        denied: b.denied,
        held: b.held.as_ref().map(|h| HeldLease {
            seq: h.seq,
            granted_total: h.granted_total,
        }),
        demand: b.demand,
        standby: b.standby,
        window_admitted: b.window_admitted,
    };
    Ok((id, key, report))
}

/// `server/counter` with its scope and key, for error lines.
pub(super) fn name(id: &BucketId) -> String {
    if id.key.is_empty() {
        format!("bucket {}/{} ({})", id.server, id.counter, id.scope)
    } else {
        format!(
            "bucket {}/{} ({} {:?})",
            id.server, id.counter, id.scope, id.key
        )
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn lease_proto(id: &BucketId, lease: Lease) -> LeaseProto {
    LeaseProto {
        bucket: Some(id.clone()),
        seq: lease.seq,
        granted_total: lease.granted_total,
        ttl_ms: millis(lease.ttl),
        refresh_ms: millis(lease.refresh),
        fallback: lease.fallback,
        fallback_after_ms: millis(lease.fallback_after),
        fallback_for_ms: millis(lease.fallback_for),
    }
}

pub(super) fn bucket_proto(v: BucketView, now: Instant) -> FleetBucket {
    FleetBucket {
        server: v.key.server,
        counter: v.key.counter,
        key: v.key.scope_key,
        policy_version: v.policy_version,
        max: v.max,
        window_ms: millis(v.window),
        consumed: v.consumed,
        unleased: v.unleased,
        reserved: v.reserved,
        learning: v.learning,
        holders: v
            .holders
            .into_iter()
            .map(|h| FleetHolder {
                node_id: h.node_id,
                epoch: h.epoch,
                connected: h.connected,
                reservation: h.reservation,
                granted_total: h.granted_total,
                admitted_total: h.admitted_total,
                demand: h.demand,
                expires_in_ms: if h.expired {
                    0
                } else {
                    millis(h.expires.saturating_duration_since(now))
                },
                expired: h.expired,
                unleased_total: h.unleased_total,
                denied: h.denied,
            })
            .collect(),
    }
}
