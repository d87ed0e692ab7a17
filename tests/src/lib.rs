//! Whole-binary tests of Tollgate: the `tollgate` and `tollgate-sidecar`
//! binaries run as real processes against real MCP peers over real sockets.
//!
//! The harness, one concern a module:
//!
//! | module | what |
//! |---|---|
//! | [`approvals`] | a standalone sidecar's approval endpoints: list, approve, deny, wait for a request |
//! | [`bins`] | the workspace's binaries, built once per test process |
//! | [`browser`] | a real headless Chromium over WebDriver, for the control plane's pages |
//! | [`kube`] | Debian's kubectl (kustomize) that `scripts/install-peers.sh` unpacks, YAML streams, the typed round-trip of Kubernetes objects |
//! | [`process`] | a child process killed on drop, its output shown when a test fails |
//! | [`net`] | free loopback ports, waiting for a port, a tiny HTTP/1.1 client |
//! | [`https`] | a tiny HTTPS/1.1 client trusting a CA file, for the control plane's TLS ports |
//! | [`legacy_sse`] | a hand-made legacy HTTP+SSE client: the stream's endpoint and messages |
//! | [`link`] | a TCP proxy a test can cut, to partition a pod from the control plane |
//! | [`recorder`] | a recording MCP upstream (Streamable HTTP and legacy SSE), to assert what reached the upstream |
//! | [`scratch`] | a temporary directory per test |
//! | [`sidecar`] | `tollgate-sidecar` with a policy file, and its built-in demo upstream |
//! | [`peers`] | the real MCP peers `scripts/install-peers.sh` installs: server-everything (Node), the Python `mcp` SDK client, the conformance tool |
//!
//! A scenario that needs the peers starts with
//! `let Some(peers) = Peers::require() else { return };`: without
//! `scripts/install-peers.sh` having run, that fails the test saying so, or —
//! with `TOLLGATE_SKIP_PEERS=1` — prints "skipped" and the test returns.
//!
//! Every server binds 127.0.0.1 only. Processes belong to the test thread
//! that started them: drop them before the test ends (they are also killed
//! when that thread exits, via `setpriv --pdeathsig`).

#![forbid(unsafe_code)]

pub mod approvals;
pub mod bins;
pub mod browser;
pub mod controlplane;
pub mod https;
pub mod kube;
pub mod legacy_sse;
pub mod link;
pub mod net;
pub mod peers;
pub mod process;
pub mod recorder;
pub mod scratch;
pub mod sidecar;

pub use peers::{ClientRun, Everything, Peers, Transport};
pub use process::Process;
pub use scratch::Scratch;
pub use sidecar::{DemoUpstream, Sidecar, SidecarBuilder};
