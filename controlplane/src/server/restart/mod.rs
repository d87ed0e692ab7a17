//! What a control plane leaves in its data dir so that the next one, after
//! a restart or a failover, keeps fleet-wide limits exact: until when its
//! leases may be in use ([`marker`], `quota-leases-until`) and which nodes
//! it served ([`served_nodes`], `quota-nodes`). Both are written before what
//! they cover is sent.

pub mod marker;
pub mod served_nodes;

/// The file in the data dir that says until when sent leases may be in use.
pub const QUOTA_MARKER: &str = "quota-leases-until";
/// The file in the data dir naming the nodes served quota.
pub const QUOTA_NODES: &str = "quota-nodes";
