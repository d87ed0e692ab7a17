//! `tollgate-sidecar`: the per-pod data plane that proxies MCP traffic and
//! decides every `tools/call` against the policy (DESIGN §2).
//!
//! The proxy itself is the next piece of work; this binary already links the
//! policy engine it will enforce with, and says so instead of pretending to serve.

fn main() -> std::process::ExitCode {
    eprintln!(
        "tollgate-sidecar {}: the MCP proxy is not built yet; \
         use `tollgate policy eval` to try a policy (policy language {})",
        env!("CARGO_PKG_VERSION"),
        tollgate_policy::LANGUAGE_VERSION
    );
    std::process::ExitCode::from(2)
}
