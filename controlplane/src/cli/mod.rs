//! The operator CLI, one module per command group.

pub mod approvals;
pub mod audit;
pub mod certs;
pub mod fleet;
pub mod inject;
pub mod limits;
pub mod policy;
pub mod remote;
pub mod rollout;
pub mod serve;
pub mod tokens;
pub mod versions;
