//! `tollgate`: Tollgate's control plane and operator CLI.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_controlplane::cli;

/// Tollgate: policy for what AI agents do through MCP servers.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about, propagate_version = true)]
struct Cli {
    /// The control plane's gRPC address (for push, versions, status, limits…).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    addr: String,
    /// A file holding your operator token (else the token itself in
    /// TOLLGATE_TOKEN). The first admin token is DATA/admin-token on the
    /// control plane's host.
    #[arg(long, global = true, env = "TOLLGATE_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    /// The CA (PEM) that signed an https:// control plane's certificate.
    #[arg(long, global = true, env = "TOLLGATE_CA", value_name = "PEM")]
    ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check, try, describe, push and compare policy files.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCommand),
    /// Run the control plane.
    Serve(Box<cli::serve::ServeArgs>),
    /// Make development certificates: a CA, the control plane's, sidecars'.
    #[command(subcommand)]
    Certs(cli::certs::CertsCommand),
    /// Show every sidecar's policy status.
    Status(cli::fleet::StatusArgs),
    /// Show fleet-wide rate limits: each bucket and the leases its nodes hold.
    Limits(cli::limits::LimitsArgs),
    /// Create, list and revoke operator tokens (role admin).
    #[command(subcommand)]
    Token(cli::tokens::TokenCommand),
    /// Show what operators did: pushes, token changes, refused attempts.
    Audit(cli::audit::AuditArgs),
    /// List, approve and deny approval requests (calls waiting for a person).
    #[command(subcommand)]
    Approvals(cli::approvals::ApprovalsCommand),
    /// Roll a policy version out in steps, with gates, pause and rollback.
    #[command(subcommand)]
    Rollout(cli::rollout::RolloutCommand),
    /// Add the sidecar to Kubernetes workloads (YAML or JSON) and print them.
    Inject(cli::inject::InjectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let remote = cli::remote::Remote {
        addr: cli.addr,
        token_file: cli.token_file,
        ca: cli.ca,
    };
    let result = match cli.command {
        Command::Policy(cmd) => cli::policy::run(cmd, &remote),
        Command::Serve(args) => cli::serve::run(*args),
        Command::Certs(cmd) => cli::certs::run(cmd),
        Command::Status(args) => cli::fleet::status(&remote, &args),
        Command::Limits(args) => cli::limits::limits(&remote, &args),
        Command::Token(cmd) => cli::tokens::run(cmd, &remote),
        Command::Audit(args) => cli::audit::run(&args, &remote),
        Command::Approvals(cmd) => cli::approvals::run(cmd, &remote),
        Command::Rollout(cmd) => cli::rollout::run(cmd, &remote),
        Command::Inject(args) => cli::inject::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
