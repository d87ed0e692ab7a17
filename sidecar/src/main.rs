//! `tollgate-sidecar`: the per-pod data plane that proxies MCP traffic and
//! decides every `tools/call` against the policy (ARCHITECTURE.md §2).

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Parser;
use http::header::HeaderName;
use tokio::net::TcpListener;
use tollgate_policy::LocalCounters;
use tollgate_sidecar::approvals::admin_api::AdminApprovals;
use tollgate_sidecar::approvals::events::Events;
use tollgate_sidecar::approvals::{Approvals, Broker, LocalBroker};
use tollgate_sidecar::config::{Cli, Command, RunArgs, parse_upstreams};
use tollgate_sidecar::control::approvals::RemoteBroker;
use tollgate_sidecar::decision_log::{DecisionLog, LogArguments, Sink};
use tollgate_sidecar::metrics::Metrics;
use tollgate_sidecar::rollout_report::Decisions;
use tollgate_sidecar::snapshot::{self, LivePolicy};
use tollgate_sidecar::state::Sidecar;
use tollgate_sidecar::{admin, control, demo, listener};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate-sidecar: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::DemoUpstream { listen }) => {
                let listener = TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                eprintln!("demo MCP server on http://{listen}/mcp");
                demo::serve(listener).await
            }
            None => run(cli.run).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-sidecar: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let specs = parse_upstreams(&args.upstreams).map_err(|e| anyhow!(e))?;
    let metrics = Arc::new(Metrics::new());
    let policy = Arc::new(LivePolicy::default());
    match &args.policy {
        Some(path) => {
            // Load once before serving, so a valid file is in force from the first request.
            let loaded = match snapshot::load_file(path) {
                Ok((s, bytes)) => {
                    metrics.policy_loaded(s.version());
                    tracing::info!(version = %s.version(), file = %path.display(), "policy loaded");
                    policy.store(s);
                    Some(bytes)
                }
                Err(e) => {
                    metrics.reload_failed();
                    tracing::error!("{e}; denying every call until a valid policy loads");
                    // Reported once: the watcher waits for the file to change.
                    std::fs::read(path).ok()
                }
            };
            tokio::spawn(snapshot::watch(
                path.clone(),
                loaded,
                Arc::clone(&policy),
                Arc::clone(&metrics),
                Duration::from_millis(args.policy_poll_ms.max(50)),
            ));
        }
        None if args.control_plane.is_none() => {
            tracing::warn!("no --policy or --control-plane given: every tools/call is denied")
        }
        None => {}
    }

    let routes = tollgate_sidecar::routes::table(&specs, args.stdio_limits(), &metrics)?;

    let log = match args.decision_log.as_deref() {
        None => DecisionLog::disabled(Arc::clone(&metrics)),
        Some("-") => {
            DecisionLog::start(
                Sink::Stdout,
                LogArguments(args.log_arguments),
                Arc::clone(&metrics),
                args.decision_log_max_bytes,
            )
            .await?
        }
        Some(path) => DecisionLog::start(
            Sink::File(path.into()),
            LogArguments(args.log_arguments),
            Arc::clone(&metrics),
            args.decision_log_max_bytes,
        )
        .await
        .with_context(|| format!("cannot open the decision log {path}"))?,
    };
    let node_id: Arc<str> = args.node_id.clone().unwrap_or_else(hostname).into();
    let mut fleet_counters = None;
    let mut remote_approvals = None;
    if let Some(url) = &args.control_plane {
        let node = tollgate_proto::v1::Node {
            id: node_id.to_string(),
            pod: std::env::var("POD_NAME").unwrap_or_else(|_| node_id.to_string()),
            namespace: args.namespace.clone().unwrap_or_default(),
            labels: control::labels(&args.labels, args.labels_file.as_deref())?,
            build: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let config = control::FleetConfig {
            control_plane: url.clone(),
            node,
            state_dir: args.state_dir.clone(),
            backoff: Default::default(),
            tls: args.ca.clone().map(|ca| control::dial::ClientTls {
                ca,
                identity: args.cert.clone().zip(args.key.clone()),
            }),
        };
        let counters = Arc::new(control::quota::FleetCounters::new(
            std::time::Instant::now(),
            Arc::clone(&metrics),
        ));
        let connection = control::connect(&config)?;
        control::start_quota(
            &config,
            &connection,
            Arc::clone(&counters),
            Arc::clone(&policy),
            Arc::clone(&metrics),
            specs.iter().map(|s| s.name.clone()).collect(),
        );
        let (remote, stream) = RemoteBroker::new(
            config.node.clone(),
            Events::new(Arc::clone(&metrics), log.clone()),
        );
        tokio::spawn(stream.run(Arc::clone(&connection), config.backoff));
        remote_approvals = Some(Arc::new(remote));
        let decisions = Arc::new(Decisions::new(Arc::clone(&metrics)));
        control::start_rollouts(
            &config,
            &connection,
            Arc::clone(&decisions),
            Arc::clone(&metrics),
            args.decision_report_interval,
        );
        control::start(
            config,
            &connection,
            Arc::clone(&policy),
            Arc::clone(&metrics),
            decisions,
        )?;
        fleet_counters = Some(counters);
    }
    let grant_header = HeaderName::from_bytes(args.grant_header.to_ascii_lowercase().as_bytes())
        .with_context(|| {
            format!(
                "--grant-header {:?} is not a header name",
                args.grant_header
            )
        })?;
    // Standalone, this sidecar keeps the approval ledger and its admin port
    // decides; with a control plane, requests are decided there.
    let log_for_approvals = log.clone();
    let broker: Arc<dyn Broker> = match remote_approvals {
        Some(remote) => remote,
        None => {
            let local = Arc::new(LocalBroker::new(
                Arc::clone(&node_id),
                Events::new(Arc::clone(&metrics), log.clone()),
            ));
            tokio::spawn(Arc::clone(&local).sweep_every(Duration::from_secs(5)));
            local
        }
    };
    let approval_url = args
        .approval_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.admin));
    if !(approval_url.starts_with("http://") || approval_url.starts_with("https://"))
        || approval_url.parse::<http::Uri>().is_err()
    {
        return Err(anyhow!(
            "--approval-url {approval_url:?} is not an http(s) URL; give the base of the approval page, e.g. https://tollgate.example.com"
        ));
    }
    let admin_approvals = AdminApprovals {
        broker: broker.clone(),
        fleet: args.control_plane.is_some(),
    };
    let sc = Sidecar::new(
        Arc::clone(&policy),
        Arc::clone(&metrics),
        log,
        Arc::clone(&node_id),
        grant_header,
        args.max_body,
        routes,
    )
    .with_body_timeout(Duration::from_millis(args.body_timeout_ms.max(1)))
    .with_approvals(Approvals::new(
        broker,
        Events::new(Arc::clone(&metrics), log_for_approvals),
        &approval_url,
        Arc::clone(&node_id),
    ));
    let sc = sc.with_max_legacy_sessions(args.max_legacy_sessions);
    let sc = Arc::new(match fleet_counters {
        Some(c) => {
            let origin = c.origin();
            sc.with_counters(c, origin)
        }
        None => {
            let local = Arc::new(LocalCounters::with_session_cap(args.max_session_buckets));
            tokio::spawn(sweep_counters(Arc::clone(&local), Arc::clone(&metrics)));
            sc.with_counters(local, std::time::Instant::now())
        }
    });

    let admin_listener = TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("cannot listen on --admin {}", args.admin))?;
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&policy),
        Arc::clone(&metrics),
        admin_approvals,
    ));
    let limits = args.conn_limits();
    let mcp = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", args.listen))?;
    for spec in &specs {
        let path = if spec.named {
            format!("/mcp/{}", spec.name)
        } else {
            "/mcp".to_owned()
        };
        tracing::info!("serving {} at http://{}{path}", spec.name, args.listen);
    }
    tokio::select! {
        () = listener::serve(mcp, sc, limits) => Err(anyhow!("the MCP listener stopped")),
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

/// Forgets idle limit buckets every 10 s, and reports session buckets evicted.
async fn sweep_counters(local: Arc<LocalCounters>, metrics: Arc<Metrics>) {
    let origin = std::time::Instant::now();
    let mut reported = 0;
    let mut every = tokio::time::interval(Duration::from_secs(10));
    loop {
        every.tick().await;
        local.sweep(origin.elapsed());
        let evicted = local.evicted();
        metrics.evicted("session_buckets", evicted - reported);
        reported = evicted;
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tollgate-sidecar".to_owned())
}
