//! `tollgate serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::server::{self, Config};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for gRPC (policy distribution and the admin API).
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc: SocketAddr,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Directory of the embedded store (created if missing).
    #[arg(long, default_value = "tollgate-data")]
    data: PathBuf,
    /// A node that has not acknowledged a sent version after this long is
    /// STALE (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    stale_after: Duration,
    /// Policy streams admitted into their opening handshake at once.
    #[arg(long, default_value_t = 256)]
    max_opening_streams: usize,
    /// Policy streams that may wait for admission (up to 5 s); more are
    /// refused with UNAVAILABLE at once and retry with their backoff.
    #[arg(long, default_value_t = 1024)]
    max_waiting_streams: usize,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config {
        grpc: args.grpc,
        http: args.http,
        data: args.data,
        stale_after: args.stale_after,
        max_opening_streams: args.max_opening_streams,
        max_waiting_streams: args.max_waiting_streams,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let running = server::start(config).await?;
        println!("tollgate control plane: grpc {}", running.grpc_addr);
        if let Some(http) = running.http_addr {
            println!("tollgate control plane: http {http}");
        }
        tokio::select! {
            r = running_wait(running) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn running_wait(running: server::Running) -> anyhow::Result<()> {
    running.wait().await
}

/// `500ms`, `10s`, `2m`, `1h`.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("{s:?} is not a duration like 10s"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => bail!("{s:?}: the unit must be ms, s, m or h"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(
            parse_duration("500ms").ok(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
