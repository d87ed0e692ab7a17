//! Fleet-wide limits (ARCHITECTURE.md §4, stream 2): limits with scope `grant`,
//! `session` or `global` are decided from leases the control plane hands out
//! over the quota stream; `pod` limits stay local.
//!
//! [`FleetCounters`] is the sidecar's counter store in fleet mode. A call is
//! decided at once from what the sidecar holds — never waiting for the network:
//!
//! - **A valid lease** (received, ttl not run out): admit while the bucket's
//!   count of calls admitted under leases is below the lease's cumulative
//!   `granted_total`; once it is reached, refuse until a larger lease arrives
//!   (the reporter asks for one at once).
//! - **No valid lease while the stream is up** (the bucket's first call, or
//!   a renewal still on its way): refuse, and report at once. The control
//!   plane answers within one round trip; the refusal's `retry_after` says so.
//! - **No valid lease and the control plane unreachable**: the limit's
//!   `on_unavailable` decides — `fallback` counts locally against the fallback
//!   capacity its newest lease set (`max` ÷ the nodes the control plane
//!   knew), only from `fallback_after` after that lease's receipt until
//!   `fallback_after + fallback_for` after its end, the span over which the
//!   control plane reserves that capacity for it (nothing before its first
//!   lease: nothing is reserved for it); `deny` refuses, `allow` admits.
//!   Calls admitted without a lease are counted (`unleased_total`) and
//!   reported when the stream is back.
//!
//! A lease's ttl runs from when the sidecar *sent* the report it answers, which
//! is no later than when the control plane sent it: the sidecar stops using a
//! lease no later than the control plane stops counting it as outstanding,
//! whatever the network delay (see `tollgate-controlplane`'s `quota` module for
//! why the fleet then never admits more than `max` in any window).
//!
//! [`Reporter`] keeps the quota stream open over the shared connection
//! ([`super::connection`]): every refresh interval it reports
//! every live bucket (admitted, refused, the lease held, the demand), at once
//! when a bucket is first hit or its lease runs dry, and takes the leases that
//! come back.
//!
//! Three parts, as the control plane's `server/quota/`: the lease accounting
//! ([`leases`], with `bucket` and the admission rules in `admit`), free of
//! protobuf and tonic; [`wire`], converting its reports and grants to and from
//! `tollgate.v1` messages; and [`reporter`], the stream task.

mod admit;
mod bucket;
pub mod leases;
pub mod reporter;
pub mod wire;

use std::time::Duration;

pub use bucket::LeaseKey;
pub use leases::FleetCounters;
pub use reporter::Reporter;

/// How often to report before the control plane has said (its leases carry it).
const DEFAULT_REFRESH: Duration = Duration::from_secs(1);
/// The shortest gap between two reports sent early (first hit, dry lease).
const EARLY_REPORT_GAP: Duration = Duration::from_millis(20);
