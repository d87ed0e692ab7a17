//! The operator CLI, one module per command group.

pub mod policy;
