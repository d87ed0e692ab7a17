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
