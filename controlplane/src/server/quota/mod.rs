//! `Quota.StreamQuota`: fleet-wide rate limits as leases, one stream per
//! sidecar process, over the control plane's one [`Allocator`].
//!
//! Per stream: the first report names the node and the process's epoch (the
//! allocator's [`HolderKey`]); every report is answered by one
//! [`QuotaLeases`] echoing its `report_seq`, with a lease per bucket the
//! allocator accepted and an error line per bucket it did not. Each bucket
//! is accounted by its limit in the policy version it names, as stored, and
//! only under a version given to that node (see `stored_limits`). When the
//! stream ends, however it ends, the process is marked disconnected: its
//! leases stay accounted until they expire, its demand stops counting.
//!
//! The allocator is created when the control plane starts; it re-learns
//! while an earlier control plane's leases may be in use, and waits for the
//! nodes that one served (see [`crate::quota`] and `restart`); a
//! background task expires leases every [`TICK`]. Streams are let in through the same
//! [`StreamAdmission`](super::admission::StreamAdmission) as policy streams and end
//! cleanly when the control plane drains.
//!
//! Three parts: [`service`] (the gRPC service, one task per stream, and the
//! tick), [`wire`] (between `tollgate.v1` messages and the allocator's own
//! types) and [`ledger`] (the allocator, the open streams and the
//! restart-safety files, behind one lock).

mod ledger;
mod service;
mod wire;

use std::time::Duration;

pub use ledger::QuotaLedger;
pub use service::{QuotaService, tick};

/// How often leases past their expiry are charged and old consumption is
/// forgotten.
pub const TICK: Duration = Duration::from_secs(1);

/// The most buckets one report may name. A sidecar with more batches them
/// over several reports; a larger report is answered with one error and
/// nothing in it is accounted.
pub use tollgate_proto::MAX_BUCKETS_PER_REPORT;
