//! Between `tollgate.v1` quota messages and the lease accounting's own
//! types ([`super::leases`]): reports out, split to the sizes the control
//! plane accepts; leases in, the unreadable ones dropped.

use std::sync::Arc;
use std::time::Duration;

use tollgate_policy::document::Scope;
use tollgate_proto::v1::{BucketId, Lease, LeaseHeld, QuotaLeases, QuotaReport};
use tollgate_proto::{MAX_BUCKETS_PER_REPORT, MAX_REPORT_BYTES};

use super::bucket::LeaseKey;
use super::leases::{BucketReport, LeaseGrant, Leases};

/// `buckets` as reports of at most [`MAX_BUCKETS_PER_REPORT`] buckets and
/// about [`MAX_REPORT_BYTES`] each, numbered from `first_seq`; at least one
/// (a report with no bucket still says the sidecar is there). The control
/// plane refuses a larger report whole, so a sidecar with more buckets
/// splits them rather than losing every lease.
pub fn reports(buckets: Vec<BucketReport>, first_seq: u64, epoch: u64) -> Vec<QuotaReport> {
    let report = |report_seq| QuotaReport {
        node: None,
        epoch,
        buckets: Vec::new(),
        report_seq,
    };
    let mut reports = vec![report(first_seq)];
    let mut bytes = 0;
    for b in buckets.into_iter().map(bucket_report) {
        let size = encoded_bound(&b);
        let full = reports.last().is_some_and(|r| {
            r.buckets.len() == MAX_BUCKETS_PER_REPORT
                || (!r.buckets.is_empty() && bytes + size > MAX_REPORT_BYTES)
        });
        if full {
            reports.push(report(first_seq + reports.len() as u64));
            bytes = 0;
        }
        bytes += size;
        if let Some(r) = reports.last_mut() {
            r.buckets.push(b);
        }
    }
    reports
}

fn bucket_report(b: BucketReport) -> tollgate_proto::v1::BucketReport {
    tollgate_proto::v1::BucketReport {
        bucket: Some(BucketId {
            server: b.bucket.server.to_string(),
            counter: b.bucket.counter.to_string(),
            scope: b.bucket.scope.as_str().to_owned(),
            key: b.bucket.key.to_string(),
        }),
        policy_version: b.policy_version,
        max: b.max,
        window_ms: u64::try_from(b.window.as_millis()).unwrap_or(u64::MAX),
        admitted_total: b.admitted_total,
        unleased_total: b.unleased_total,
        denied: b.denied,
        held: b.held.map(|l| LeaseHeld {
            seq: l.seq,
            granted_total: l.granted_total,
        }),
        demand: b.demand,
        standby: b.standby,
        window_admitted: b.window_admitted,
    }
}

/// An upper bound of a bucket report's encoded size: its strings, and the
/// most its tags, lengths and integers can take.
fn encoded_bound(b: &tollgate_proto::v1::BucketReport) -> usize {
    let strings = b.bucket.as_ref().map_or(0, |id| {
        id.server.len() + id.counter.len() + id.scope.len() + id.key.len()
    });
    strings + 192
}

/// The leases of one answer; a lease naming no bucket, or a scope that is
/// not the fleet's, is dropped.
pub fn leases(answer: &QuotaLeases) -> Leases {
    Leases {
        answers_report: answer.answers_report,
        grants: answer.leases.iter().filter_map(grant).collect(),
    }
}

fn grant(lease: &Lease) -> Option<LeaseGrant> {
    let id = lease.bucket.as_ref()?;
    Some(LeaseGrant {
        bucket: LeaseKey {
            server: id.server.as_str().into(),
            counter: Arc::from(id.counter.as_str()),
            scope: scope_of(&id.scope)?,
            key: id.key.as_str().into(),
        },
        seq: lease.seq,
        granted_total: lease.granted_total,
        ttl: Duration::from_millis(lease.ttl_ms),
        refresh: (lease.refresh_ms > 0).then(|| Duration::from_millis(lease.refresh_ms)),
        fallback: lease.fallback,
        fallback_after: Duration::from_millis(lease.fallback_after_ms),
        fallback_for: Duration::from_millis(lease.fallback_for_ms),
    })
}

fn scope_of(s: &str) -> Option<Scope> {
    match s {
        "grant" => Some(Scope::Grant),
        "session" => Some(Scope::Session),
        "global" => Some(Scope::Global),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(scope: &str, refresh_ms: u64) -> Lease {
        Lease {
            bucket: Some(BucketId {
                server: "s".into(),
                counter: "s:calls".into(),
                scope: scope.into(),
                key: "agent".into(),
            }),
            seq: 3,
            granted_total: 9,
            ttl_ms: 10_000,
            refresh_ms,
            fallback: 2,
            fallback_after_ms: 30_000,
            fallback_for_ms: 60_000,
        }
    }

    #[test]
    fn leases_naming_no_fleet_bucket_are_dropped_and_the_rest_converted() {
        let mut bucketless = lease("grant", 0);
        bucketless.bucket = None;
        let answer = QuotaLeases {
            leases: vec![
                lease("session", 500),
                lease("pod", 500),
                bucketless,
                lease("grant", 0),
            ],
            answers_report: 7,
            errors: Vec::new(),
        };
        let got = leases(&answer);
        assert_eq!(got.answers_report, 7);
        assert_eq!(got.grants.len(), 2, "{got:?}");
        let g = &got.grants[0];
        assert_eq!(
            (
                &*g.bucket.server,
                &*g.bucket.counter,
                g.bucket.scope,
                &*g.bucket.key
            ),
            ("s", "s:calls", Scope::Session, "agent")
        );
        assert_eq!((g.seq, g.granted_total, g.fallback), (3, 9, 2));
        assert_eq!(g.ttl, Duration::from_secs(10));
        assert_eq!(g.refresh, Some(Duration::from_millis(500)));
        assert_eq!(
            (g.fallback_after, g.fallback_for),
            (Duration::from_secs(30), Duration::from_secs(60))
        );
        assert_eq!(
            got.grants[1].refresh, None,
            "0: the interval stays as it is"
        );
    }
}
