//! `tollgate.v1`: the gRPC contract between the Tollgate control plane and its
//! sidecars — policy distribution (`PolicyDistribution`), fleet-wide rate-limit
//! leases (`Quota`) and the operator's
//! admin API (`Admin`). Generated from `tollgate/v1/*.proto` by `build.rs`
//! with protox and tonic; no system `protoc` is needed.

/// The protobuf package every Tollgate message lives in.
pub const PACKAGE: &str = "tollgate.v1";

/// The generated messages, clients and servers.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("tollgate.v1");
}

/// The most buckets one `QuotaReport` may carry. A sidecar with more splits
/// them over several reports; the control plane answers a larger report with
/// one error and accounts nothing in it.
pub const MAX_BUCKETS_PER_REPORT: usize = 10_000;

/// The largest gRPC message either side of the quota stream encodes or
/// decodes, set explicitly on the server and the client alike. A report of
/// [`MAX_BUCKETS_PER_REPORT`] buckets stays far below it: a sidecar also
/// closes a report once its encoded size reaches [`MAX_REPORT_BYTES`].
pub const MAX_QUOTA_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The encoded size past which a sidecar starts a new report: a quarter of
/// [`MAX_QUOTA_MESSAGE_BYTES`], so that the answer, which names every bucket
/// again, fits too.
pub const MAX_REPORT_BYTES: usize = MAX_QUOTA_MESSAGE_BYTES / 4;
