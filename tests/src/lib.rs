//! Whole-binary tests of Tollgate: the `tollgate` and `tollgate-sidecar`
//! binaries run as real processes against real MCP peers over real sockets.
//!
//! The helpers that start those processes live here; the scenarios live in
//! this crate's `tests/` folder as the sidecar and control plane grow.
