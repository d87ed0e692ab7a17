//! `fanout`: how fast one control plane gets a pushed version ACKed by N
//! sidecars, and what each connected sidecar costs it in memory.
//!
//! 1. Push v1 through the admin API; read the control plane's RSS.
//! 2. Open N simulated sidecars (see [`sidecar`]) over a few HTTP/2
//!    connections; wait until every one has ACKed v1 and the control plane's
//!    status table shows all N `SYNCED` on v1; read the RSS again.
//! 3. Push v2 (then v3, … for `--pushes`); the clock starts right before
//!    the push RPC. Report when 50 %, 99 % and 100 % of the nodes had
//!    received and ACKed it, by the clients' own clocks.
//! 4. With `--rollout-steps`, stage one more version and roll it out over
//!    the fleet in those steps with no bake (see [`rollout`]): report how
//!    long each step's nodes took to ACK.
//!
//! The control plane is a separate process (`tollgate serve`), so its RSS is
//! its own; pass its pid with `--cp-pid`, and an admin token (its
//! `<data>/admin-token`) with `--token-file`. Everything here is bounded by
//! `--timeout`.

#![forbid(unsafe_code)]

mod policy;
mod proc;
mod rollout;
mod sidecar;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::node_state::State;
use tollgate_proto::v1::{NodeStatusRequest, PushPolicyRequest};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use sidecar::{Board, Identity};

/// The admin client, sending the operator token on every call.
pub(crate) type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every admin call.
#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

#[derive(Debug, Parser)]
#[command(about = "Time a policy push reaching N simulated sidecars")]
struct Args {
    /// The control plane's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// A file holding an admin token (`tollgate serve` writes the first one
    /// to <data>/admin-token).
    #[arg(long)]
    token_file: PathBuf,
    /// The control plane's pid, to read its RSS from /proc.
    #[arg(long)]
    cp_pid: Option<u32>,
    /// Simulated sidecars.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Policy streams multiplexed on one HTTP/2 connection.
    #[arg(long, default_value_t = 500)]
    streams_per_conn: usize,
    /// Streams being opened at once (the rest wait their turn).
    #[arg(long, default_value_t = 256)]
    open_concurrency: usize,
    /// The policy document every version is derived from.
    #[arg(long)]
    policy: PathBuf,
    /// Measured pushes after v1 (v2, v3, …).
    #[arg(long, default_value_t = 3)]
    pushes: u32,
    /// Seconds any one phase may take before the run fails.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Prefix of the simulated node ids.
    #[arg(long, default_value = "fanout")]
    id_prefix: String,
    /// mTLS: the `tollgate certs init` directory of a control plane serving
    /// with --client-ca. Each simulated sidecar gets a certificate of its
    /// own from that CA and its own connection, as real sidecars do
    /// (--streams-per-conn is then 1).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// After the pushes, roll one more version out in these steps (percent,
    /// e.g. 1,10,50,100) and time each step's ACKs.
    #[arg(long, value_delimiter = ',')]
    rollout_steps: Vec<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.nodes > 0, "--nodes must be at least 1");
    ensure!(
        args.streams_per_conn > 0,
        "--streams-per-conn must be at least 1"
    );
    let timeout = Duration::from_secs(args.timeout);
    let base = std::fs::read(&args.policy)
        .with_context(|| format!("cannot read {}", args.policy.display()))?;
    let base = policy::Base::parse(&base)?;
    let salt = fastrand::u64(..);
    let mut endpoint = Endpoint::from_shared(args.addr.clone())
        .with_context(|| format!("{} is not a URL", args.addr))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    let tls = match &args.tls_dir {
        Some(dir) => {
            let tls = tls::Fleet::load(dir)?;
            endpoint = endpoint
                .tls_config(tls.server_only())
                .context("the CA cannot be used")?;
            Some(Arc::new(tls))
        }
        None => None,
    };
    let streams_per_conn = if tls.is_some() {
        1
    } else {
        args.streams_per_conn
    };

    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("cannot read --token-file {}", args.token_file.display()))?;
    let bearer = Bearer(
        format!("Bearer {}", token.trim())
            .parse()
            .context("the token in --token-file is not printable ASCII")?,
    );
    let mut admin = AdminClient::with_interceptor(
        endpoint
            .connect()
            .await
            .context("cannot reach the control plane")?,
        bearer,
    )
    .max_decoding_message_size(256 << 20);
    let v1 = push(&mut admin, base.variant(1, salt)).await?;
    let rss_before = args.cp_pid.and_then(proc::rss);

    // ---- connect N sidecars and let them sync on v1 ----
    let conns = args.nodes.div_ceil(streams_per_conn);
    let mut channels = Vec::with_capacity(conns);
    if let Some(tls) = &tls {
        // One certificate and one connection per node, made before the
        // clock starts (as sidecars have theirs before they connect).
        let made = Instant::now();
        let mut endpoints = Vec::with_capacity(args.nodes);
        for index in 0..args.nodes {
            let id = node_id(&args.id_prefix, index);
            endpoints.push(endpoint.clone().tls_config(tls.node(&id)?)?);
        }
        eprintln!(
            "fanout: issued {} node certificates in {}",
            args.nodes,
            ms(made.elapsed())
        );
        let handshaking = Instant::now();
        let handshakes = Arc::new(Semaphore::new(args.open_concurrency.max(1)));
        let mut connecting = tokio::task::JoinSet::new();
        for (index, e) in endpoints.into_iter().enumerate() {
            let handshakes = handshakes.clone();
            connecting.spawn(async move {
                let _permit = handshakes.acquire().await;
                (index, e.connect().await)
            });
        }
        let mut made: Vec<Option<Channel>> = vec![None; args.nodes];
        while let Some(joined) = connecting.join_next().await {
            let (index, channel) = joined.context("a connect task failed")?;
            made[index] = Some(channel.context("cannot open an mTLS connection")?);
        }
        channels.extend(made.into_iter().flatten());
        eprintln!(
            "fanout: {} mTLS connections open after {}",
            channels.len(),
            ms(handshaking.elapsed())
        );
    } else {
        for _ in 0..conns {
            channels.push(
                endpoint
                    .connect()
                    .await
                    .context("cannot open a connection")?,
            );
        }
    }
    let board = Arc::new(Board::new(args.nodes));
    board.expect(v1);
    let open = Arc::new(Semaphore::new(args.open_concurrency.max(1)));
    let connecting = Instant::now();
    for index in 0..args.nodes {
        let me = Identity {
            index,
            id: node_id(&args.id_prefix, index),
            labels: vec![
                ("app".to_owned(), "fanout".to_owned()),
                ("shard".to_owned(), (index % 16).to_string()),
            ],
        };
        let channel = channels[index / streams_per_conn].clone();
        tokio::spawn(sidecar::run(me, channel, board.clone(), open.clone()));
    }
    wait_all(&board, args.nodes, connecting, timeout, "ACK v1").await?;
    let synced_v1 = connecting.elapsed();
    wait_table(&mut admin, &args.id_prefix, args.nodes, v1, timeout).await?;
    let table_v1 = connecting.elapsed();
    let (_, refused, _) = board.streams();
    println!(
        "fanout: {} nodes on {conns} HTTP/2 connection(s) ({} streams each{}): all ACKed v{v1} {} after the first open; status table: all SYNCED on v{v1} at +{}; opens refused (UNAVAILABLE, retried): {refused}",
        args.nodes,
        streams_per_conn,
        if tls.is_some() { ", mTLS" } else { "" },
        ms(synced_v1),
        ms(table_v1),
    );
    // Let allocations from the connect storm settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = args.cp_pid.and_then(proc::rss);

    // ---- pushes ----
    let mut expected = v1;
    for round in 0..args.pushes {
        expected += 1;
        board.expect(expected);
        let content = base.variant(round + 2, salt);
        let cpu_before = cpu(args.cp_pid);
        let pushed_at = Instant::now();
        let version = push(&mut admin, content).await?;
        let push_rtt = pushed_at.elapsed();
        ensure!(
            version == expected,
            "the push became v{version}, not v{expected}: is something else pushing to this control plane?"
        );
        wait_all(
            &board,
            args.nodes,
            pushed_at,
            timeout,
            &format!("ACK v{version}"),
        )
        .await?;
        let delays = board.ack_delays(pushed_at);
        let cpu_used = cpu(args.cp_pid) - cpu_before;
        wait_table(&mut admin, &args.id_prefix, args.nodes, version, timeout).await?;
        let table = pushed_at.elapsed();
        let (p50, p99, p100) = (
            nth(&delays, args.nodes, 0.50),
            nth(&delays, args.nodes, 0.99),
            nth(&delays, args.nodes, 1.0),
        );
        println!(
            "fanout: push v{version}: ACKed by 50% {}, 99% {}, 100% {} (push RPC {}; status table all SYNCED by +{}, polled); CPU until 100%: control plane {:.0} ms, fleet {:.0} ms",
            ms(p50),
            ms(p99),
            ms(p100),
            ms(push_rtt),
            ms(table),
            cpu_used.control_plane * 1e3,
            cpu_used.fleet * 1e3,
        );
        println!(
            "RESULT nodes={} conns={conns} version={version} p50_ms={:.1} p99_ms={:.1} p100_ms={:.1} push_rpc_ms={:.1} cp_cpu_ms={:.0} fleet_cpu_ms={:.0}",
            args.nodes,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            p100.as_secs_f64() * 1e3,
            push_rtt.as_secs_f64() * 1e3,
            cpu_used.control_plane * 1e3,
            cpu_used.fleet * 1e3,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // ---- a staged rollout ----
    if !args.rollout_steps.is_empty() {
        let ids: Vec<String> = (0..args.nodes)
            .map(|i| node_id(&args.id_prefix, i))
            .collect();
        let content = base.variant(args.pushes + 2, salt);
        rollout::measure(
            &mut admin,
            &board,
            &ids,
            &args.rollout_steps,
            content,
            timeout,
        )
        .await?;
    }

    // ---- memory ----
    let rss_after = args.cp_pid.and_then(proc::rss);
    match (rss_before, rss_connected, rss_after) {
        (Some(before), Some(connected), Some(after)) => {
            let per_node = (connected.now_kib as f64 - before.now_kib as f64) / args.nodes as f64;
            println!(
                "fanout: control plane RSS: before connecting {}, with {} connected {}, per connected node {per_node:.1} KiB; after the pushes {} (peak {})",
                mib(before.now_kib),
                args.nodes,
                mib(connected.now_kib),
                mib(after.now_kib),
                mib(after.peak_kib),
            );
            println!(
                "RESULT nodes={} rss_before_kib={} rss_connected_kib={} rss_per_node_kib={per_node:.1} rss_peak_kib={}",
                args.nodes, before.now_kib, connected.now_kib, after.peak_kib,
            );
        }
        _ => println!("fanout: control plane RSS not read (no --cp-pid, or /proc unreadable)"),
    }
    if let Some(me) = proc::rss(std::process::id()) {
        println!(
            "fanout: this process (the {} simulated sidecars): RSS {}",
            args.nodes,
            mib(me.now_kib)
        );
    }
    Ok(())
}

/// The id of simulated node `index` (a DNS name, as node certificates need).
fn node_id(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index:05}")
}

/// CPU seconds used so far by the control plane (0 when unknown) and by
/// this process (the simulated fleet).
#[derive(Debug, Clone, Copy)]
struct Cpu {
    control_plane: f64,
    fleet: f64,
}

fn cpu(cp_pid: Option<u32>) -> Cpu {
    Cpu {
        control_plane: cp_pid.and_then(proc::cpu_seconds).unwrap_or(0.0),
        fleet: proc::cpu_seconds(std::process::id()).unwrap_or(0.0),
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            control_plane: self.control_plane - earlier.control_plane,
            fleet: self.fleet - earlier.fleet,
        }
    }
}

/// Pushes `content`; the version it became.
async fn push(admin: &mut Admin, content: Vec<u8>) -> anyhow::Result<u64> {
    let resp = admin
        .push_policy(PushPolicyRequest {
            content,
            server: String::new(),
            message: "fanout benchmark".to_owned(),
            ..PushPolicyRequest::default()
        })
        .await
        .context("push failed")?
        .into_inner();
    if !resp.accepted {
        let errors: Vec<String> = resp
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.pointer, e.message))
            .collect();
        bail!(
            "the control plane refused the policy: {}",
            errors.join("; ")
        );
    }
    ensure!(resp.created, "the push was a no-op (identical content)");
    Ok(resp.version)
}

/// Waits until all `n` nodes have ACKed the version the board expects.
/// Polls every millisecond: the nodes stamp their own times, so the poll
/// only decides when to stop waiting, not what is measured.
async fn wait_all(
    board: &Board,
    n: usize,
    since: Instant,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = since + timeout;
    let mut report = Instant::now() + Duration::from_secs(2);
    while board.reached() < n {
        let now = Instant::now();
        let (open, refused, failed) = board.streams();
        if now >= deadline || failed + board.reached() >= n && failed > 0 {
            bail!(
                "{what}: {} of {n} nodes after {} ({open} streams open, {refused} opens refused, {failed} failed)",
                board.reached(),
                ms(now - since)
            );
        }
        if now >= report {
            eprintln!(
                "fanout: {what}: {} of {n} so far ({open} streams open, {refused} opens refused)",
                board.reached()
            );
            report = now + Duration::from_secs(2);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Polls the control plane's status table until the `n` benchmark nodes
/// are connected and `SYNCED` on `version`.
async fn wait_table(
    admin: &mut Admin,
    prefix: &str,
    n: usize,
    version: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let prefix = format!("{prefix}-");
    loop {
        let rows = admin
            .node_status(NodeStatusRequest {})
            .await
            .context("node status failed")?
            .into_inner()
            .nodes;
        let synced = rows
            .iter()
            .filter(|r| r.node.as_ref().is_some_and(|n| n.id.starts_with(&prefix)))
            .filter(|r| {
                r.connected && r.state == State::Synced as i32 && r.applied_version == version
            })
            .count();
        if synced >= n {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            bail!(
                "status table: {synced} of {n} nodes SYNCED on v{version} after {}",
                ms(start.elapsed())
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The delay by which a fraction `q` of `n` nodes had ACKed (`delays` sorted).
fn nth(delays: &[Duration], n: usize, q: f64) -> Duration {
    let k = ((q * n as f64).ceil() as usize).clamp(1, n);
    delays.get(k - 1).copied().unwrap_or(Duration::MAX)
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
