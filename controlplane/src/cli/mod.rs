//! The operator CLI, one module per command group.

pub mod certs;
pub mod fleet;
pub mod limits;
pub mod policy;
pub mod serve;
