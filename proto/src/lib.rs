//! `tollgate.v1`: the gRPC contract between the Tollgate control plane and its
//! sidecars (policy distribution, quota leases, approvals).
//!
//! The `.proto` files and the tonic/prost code generated from them (with
//! `protox`, so no system `protoc`) land here with the control plane; until
//! then this crate only names the package version both sides must agree on.

/// The protobuf package every Tollgate message lives in.
pub const PACKAGE: &str = "tollgate.v1";
