//! Command-line configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Tollgate's sidecar: an MCP proxy that decides every tools/call against policy.
#[derive(Debug, Parser)]
#[command(name = "tollgate-sidecar", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands besides running the proxy.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the built-in demo MCP server (a test-session service) at /mcp.
    DemoUpstream {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:3100")]
        listen: SocketAddr,
    },
}

/// The proxy's settings.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where agents connect (MCP).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// An MCP server to front: `NAME=URL` (served at /mcp/NAME), a single
    /// `URL` (served at /mcp as server `default`), `NAME=stdio:<command line>`,
    /// or `NAME=sse:<URL of the legacy SSE endpoint>`. Repeatable.
    #[arg(long = "upstream", value_name = "[NAME=]URL")]
    pub upstreams: Vec<String>,
    /// The policy file (a policy document or a bundle), watched for changes.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Fleet mode: take the policy from this control plane (gRPC URL, e.g.
    /// https://tollgate.tollgate-system:50051, or http:// for a development
    /// control plane) instead of a file.
    #[arg(long, value_name = "URL", conflicts_with = "policy")]
    pub control_plane: Option<String>,
    /// The CA (PEM) that signed an https:// control plane's certificate.
    #[arg(long, value_name = "PEM", requires = "control_plane")]
    pub ca: Option<PathBuf>,
    /// This sidecar's client certificate (PEM) for an https:// control plane
    /// that verifies node identity; re-read on every reconnect.
    #[arg(long, value_name = "PEM", requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Labels reported to the control plane (`k=v,…`; repeatable; override --labels-file).
    #[arg(
        long,
        value_name = "K=V",
        value_delimiter = ',',
        requires = "control_plane"
    )]
    pub labels: Vec<String>,
    /// Labels reported to the control plane, from a Kubernetes downward-API
    /// file (`key="value"` lines).
    #[arg(long, value_name = "PATH", requires = "control_plane")]
    pub labels_file: Option<PathBuf>,
    /// The namespace reported to the control plane.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAME")]
    pub namespace: Option<String>,
    /// Where the last good bundle from the control plane is kept, so a restart
    /// while the control plane is down enforces it at once.
    #[arg(long, value_name = "DIR", requires = "control_plane")]
    pub state_dir: Option<PathBuf>,
    /// Fleet mode: how often decision counts per policy version (and a
    /// shadow version's differences) are reported for staged rollouts, e.g.
    /// `5s` or `500ms`.
    #[arg(
        long,
        default_value = "5s",
        value_name = "DURATION",
        value_parser = parse_interval
    )]
    pub decision_report_interval: std::time::Duration,
    /// How often the policy file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub policy_poll_ms: u64,
    /// Health, readiness and metrics (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// The base URL of the page where people decide approval requests
    /// (`URL/approvals/ID` is shown to agents); default: this sidecar's
    /// admin address.
    #[arg(long, env = "TOLLGATE_APPROVAL_URL", value_name = "URL")]
    pub approval_url: Option<String>,
    /// Where decision records go: a file path, or `-` for standard output.
    #[arg(long, value_name = "PATH|-")]
    pub decision_log: Option<String>,
    /// Put call arguments in decision records (not only their SHA-256).
    #[arg(long)]
    pub log_arguments: bool,
    /// This sidecar's node id; the grant for every call when the bundle has no grants.
    #[arg(long, env = "POD_NAME")]
    pub node_id: Option<String>,
    /// The request header that carries grant tokens.
    #[arg(long, default_value = "authorization")]
    pub grant_header: String,
    /// The largest request body accepted, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body: usize,
    /// Client connections open at once on the MCP listener; more are closed
    /// as they are accepted.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_connections: usize,
    /// How long a client has to send a request's headers (and an idle
    /// keep-alive connection stays open), in milliseconds.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub header_timeout_ms: u64,
    /// How long a client has to send a request's whole body, in milliseconds.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub body_timeout_ms: u64,
    /// The most header bytes a request may carry.
    #[arg(long, default_value_t = 64 << 10, value_name = "BYTES")]
    pub max_header_bytes: usize,
    /// HTTP/2 streams open at once on one client connection.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub max_streams_per_connection: u32,
    /// Session-scoped limit buckets kept; past it a new session's bucket
    /// replaces an idle one, else another session's.
    #[arg(long, default_value_t = tollgate_policy::DEFAULT_SESSION_BUCKETS, value_name = "N")]
    pub max_session_buckets: usize,
    /// Legacy SSE sessions open at once per server; more are refused (503).
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    pub max_legacy_sessions: usize,
    /// Bytes of decision records waiting to be written; past it records are
    /// dropped and counted.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    pub decision_log_max_bytes: usize,
    /// Sessions (child processes) of each stdio server running at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_stdio_sessions: usize,
    /// Sessions of each stdio server one grant may have running at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_stdio_sessions_per_grant: usize,
}

impl RunArgs {
    /// The stdio bridges' bounds.
    pub fn stdio_limits(&self) -> crate::upstream::stdio::Limits {
        crate::upstream::stdio::Limits {
            max_sessions: self.max_stdio_sessions.max(1),
            max_sessions_per_grant: self.max_stdio_sessions_per_grant.max(1),
            ..Default::default()
        }
    }

    /// The MCP listener's connection bounds.
    pub fn conn_limits(&self) -> crate::conn::ConnLimits {
        crate::conn::ConnLimits {
            name: "mcp",
            max_connections: self.max_connections.max(1),
            header_timeout: std::time::Duration::from_millis(self.header_timeout_ms.max(1)),
            max_header_bytes: self.max_header_bytes,
            max_streams: self.max_streams_per_connection.max(1),
        }
    }
}

/// One `--upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// The server's name (`default` for an unnamed one).
    pub name: String,
    /// Whether it was named (served at /mcp/NAME) or not (served at /mcp).
    pub named: bool,
    /// How to reach it.
    pub target: Target,
}

/// How an upstream is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Streamable HTTP at this URL.
    Http(String),
    /// The legacy HTTP+SSE transport, SSE endpoint at this URL.
    LegacySse(String),
    /// A stdio server started with this command line.
    Stdio(String),
}

/// A duration of whole milliseconds, seconds or minutes (`500ms`, `5s`,
/// `1m`), from 100 ms to one hour.
pub fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 5s, 500ms, 1m)"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1_000),
        "m" => n.saturating_mul(60_000),
        _ => return Err(format!("{text:?} is not a duration (e.g. 5s, 500ms, 1m)")),
    };
    if !(100..=3_600_000).contains(&ms) {
        return Err(format!("{text:?} is out of range: from 100ms to 60m"));
    }
    Ok(std::time::Duration::from_millis(ms))
}

/// Reads the `--upstream` values.
pub fn parse_upstreams(values: &[String]) -> Result<Vec<UpstreamSpec>, String> {
    let mut out: Vec<UpstreamSpec> = Vec::new();
    for v in values {
        let (name, rest) = match v.split_once('=') {
            Some((n, r)) if !n.contains(':') && !n.contains('/') => (Some(n), r),
            _ => (None, v.as_str()),
        };
        if let Some(n) = name
            && (n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(format!(
                "--upstream {v}: a server name uses only letters, digits, `-` and `_`"
            ));
        }
        let target = if let Some(cmd) = rest.strip_prefix("stdio:") {
            Target::Stdio(cmd.trim().to_owned())
        } else if let Some(url) = rest.strip_prefix("sse:") {
            Target::LegacySse(url.to_owned())
        } else if rest.starts_with("http://") {
            Target::Http(rest.to_owned())
        } else {
            return Err(format!(
                "--upstream {v}: expected an http:// URL, `stdio:<command>` or `sse:<URL>` (https upstreams are not supported: the upstream runs in the same pod)"
            ));
        };
        let spec = UpstreamSpec {
            name: name.unwrap_or("default").to_owned(),
            named: name.is_some(),
            target,
        };
        if out.iter().any(|o| o.name == spec.name) {
            return Err(format!(
                "--upstream {v}: the name `{}` is used twice",
                spec.name
            ));
        }
        out.push(spec);
    }
    if out.iter().any(|u| !u.named) && out.len() > 1 {
        return Err("an unnamed --upstream is served at /mcp and must be the only one; name each upstream (NAME=URL) to serve several".into());
    }
    if out.is_empty() {
        return Err(
            "give at least one --upstream (e.g. --upstream http://127.0.0.1:3001/mcp)".into(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_forms() {
        let u = parse_upstreams(&["http://127.0.0.1:3001/mcp".into()]).unwrap();
        assert_eq!(
            u[0],
            UpstreamSpec {
                name: "default".into(),
                named: false,
                target: Target::Http("http://127.0.0.1:3001/mcp".into())
            }
        );
        let u = parse_upstreams(&[
            "a=http://x/mcp".into(),
            "b=stdio: npx server".into(),
            "c=sse:http://x/sse".into(),
        ])
        .unwrap();
        assert_eq!(u[1].target, Target::Stdio("npx server".into()));
        assert_eq!(u[2].target, Target::LegacySse("http://x/sse".into()));
        assert!(parse_upstreams(&["a=ftp://x".into()]).is_err());
        assert!(parse_upstreams(&["http://x".into(), "b=http://y".into()]).is_err());
        assert!(parse_upstreams(&["a=http://x".into(), "a=http://y".into()]).is_err());
        assert!(parse_upstreams(&["a b=http://x".into()]).is_err());
    }

    #[test]
    fn report_intervals_have_units_and_bounds() {
        let ms = |t| parse_interval(t).map(|d| d.as_millis());
        assert_eq!(ms("5s"), Ok(5_000));
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("2m"), Ok(120_000));
        for bad in [
            "5",
            "5h",
            "s",
            "-1s",
            "50ms",
            "61m",
            "99999999999999999999s",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
        let cli = Cli::try_parse_from(["tollgate-sidecar", "--upstream", "http://127.0.0.1:1/mcp"])
            .unwrap();
        assert_eq!(cli.run.decision_report_interval.as_secs(), 5, "the default");
    }

    #[test]
    fn policy_file_and_control_plane_are_exclusive() {
        use clap::Parser;
        let err = Cli::try_parse_from([
            "tollgate-sidecar",
            "--policy",
            "p.json",
            "--control-plane",
            "http://127.0.0.1:50051",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("cannot be used with"), "{err}");
        let cli = Cli::try_parse_from([
            "tollgate-sidecar",
            "--control-plane",
            "http://127.0.0.1:50051",
            "--labels",
            "app=a,team=b",
            "--labels",
            "zone=z",
            "--state-dir",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(cli.run.labels, ["app=a", "team=b", "zone=z"]);
    }
}
