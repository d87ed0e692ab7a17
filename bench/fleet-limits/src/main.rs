//! `fleet-limits`: does a fleet-wide limit hold, and use what it allows,
//! when the demand is skewed; and what does deciding under a lease cost?
//!
//! 1. Start a control plane in-process (`tollgate_controlplane::server::start`,
//!    127.0.0.1, a fresh data dir, short leases).
//! 2. Start `--nodes` simulated sidecars (see [`fleet`]), all enforcing one
//!    `global` limit of `--max` calls per `--window`; wait until each holds a
//!    lease. Then for `--duration`: `--hot` nodes call at `--hot-rate`, the
//!    next `--idle` make no calls, the rest call at `--low-rate`, each on a
//!    fixed schedule. Every decision is logged with its time.
//! 3. From the log: the fullest trailing window (admitted ÷ max; the limit
//!    says never above 1), and per fixed window after the first, admitted ÷
//!    min(max, calls made) (how much of what could be admitted was).
//! 4. Stop the fleet; one more sidecar on a limit no run can exhaust times
//!    `FleetCounters::acquire` under its lease against
//!    `LocalCounters::acquire` on the same charge (see [`latency`]).
//!
//! Prints a `RESULT fleet …` and a `RESULT latency …` line for
//! `bench/fleet-limits.sh`; errors (not missed goals) exit non-zero.

#![forbid(unsafe_code)]

mod analysis;
mod fleet;
mod latency;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use tollgate_controlplane::quota::AllocatorConfig;
use tollgate_controlplane::server::{self, Config};
use tollgate_policy::{Admission, Counters, LocalCounters};
use tonic::transport::Endpoint;

use analysis::Call;
use fleet::{Limit, QuotaCounts, Sidecar};

#[derive(Debug, Parser)]
#[command(about = "Fleet-wide limits under skewed demand, and the cost of a leased decision")]
struct Args {
    /// Simulated sidecars.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Of them, how many call at --hot-rate (the first ones).
    #[arg(long, default_value_t = 3)]
    hot: usize,
    /// Of them, how many make no calls at all (after the hot ones); the rest call at --low-rate.
    #[arg(long, default_value_t = 8)]
    idle: usize,
    /// Calls per second of each hot node.
    #[arg(long, default_value_t = 40.0)]
    hot_rate: f64,
    /// Calls per second of each low-rate node.
    #[arg(long, default_value_t = 0.5)]
    low_rate: f64,
    /// The global limit: calls per window.
    #[arg(long, default_value_t = 200)]
    max: u64,
    /// The limit's window, in seconds.
    #[arg(long, default_value_t = 5)]
    window: u64,
    /// Seconds of calls (at least two windows).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// The control plane's lease ttl, ms.
    #[arg(long, default_value_t = 2000)]
    lease_ttl_ms: u64,
    /// How often sidecars report, ms.
    #[arg(long, default_value_t = 250)]
    lease_refresh_ms: u64,
    /// The control plane's grace past a lease's ttl, ms.
    #[arg(long, default_value_t = 250)]
    lease_grace_ms: u64,
    /// Timed decisions per run of each store.
    #[arg(long, default_value_t = 1_000_000)]
    iterations: u64,
    /// Decisions on each store before timing.
    #[arg(long, default_value_t = 200_000)]
    warmup: u64,
    /// Runs of each store, interleaved.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Measure the fleet only (no `RESULT latency` line).
    #[arg(long)]
    skip_latency: bool,
    /// Score the first window too: calls start while idle sidecars still
    /// hold what they asked for before any call.
    #[arg(long)]
    score_first: bool,
}

/// How long the simulated sidecars may take to connect and hold a lease:
/// this, and [`CONNECT_WAIT_PER_NODE`] more per sidecar.
const CONNECT_WAIT: Duration = Duration::from_secs(15);
const CONNECT_WAIT_PER_NODE: Duration = Duration::from_millis(30);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(args))
}

fn check(a: &Args) -> anyhow::Result<()> {
    ensure!(a.nodes > 0, "--nodes must be at least 1");
    ensure!(
        a.hot + a.idle <= a.nodes,
        "--hot {} + --idle {} is more than --nodes {}",
        a.hot,
        a.idle,
        a.nodes
    );
    ensure!(a.max > 0, "--max must be at least 1");
    ensure!(a.window > 0, "--window must be at least 1 s");
    ensure!(
        a.duration >= 2 * a.window,
        "--duration {} s must cover at least two windows of {} s (the first is not scored)",
        a.duration,
        a.window
    );
    for (name, rate) in [("--hot-rate", a.hot_rate), ("--low-rate", a.low_rate)] {
        ensure!(
            rate.is_finite() && (0.001..=100_000.0).contains(&rate),
            "{name} {rate} must be between 0.001 and 100000 calls per second"
        );
    }
    ensure!(
        a.iterations > 0 && a.rounds > 0,
        "--iterations and --rounds must be at least 1"
    );
    Ok(())
}

/// What a simulated sidecar does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Hot(f64),
    Idle,
    Low(f64),
}

impl Role {
    fn of(a: &Args, i: usize) -> Self {
        if i < a.hot {
            Role::Hot(a.hot_rate)
        } else if i < a.hot + a.idle {
            Role::Idle
        } else {
            Role::Low(a.low_rate)
        }
    }

    fn describe(self) -> String {
        match self {
            Role::Hot(r) => format!("hot  {r}/s"),
            Role::Idle => "idle".to_owned(),
            Role::Low(r) => format!("low  {r}/s"),
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let data = tempfile::tempdir().context("cannot create a data dir for the control plane")?;
    let mut config = Config::new(
        "127.0.0.1:0".parse().context("the gRPC address")?,
        data.path().to_path_buf(),
    );
    config.http = Some("127.0.0.1:0".parse().context("the HTTP address")?);
    config.quota = AllocatorConfig {
        lease_ttl: Duration::from_millis(args.lease_ttl_ms),
        refresh: Duration::from_millis(args.lease_refresh_ms),
        grace: Duration::from_millis(args.lease_grace_ms),
        learn_whole_window: false,
        ..AllocatorConfig::default()
    };
    let cp = server::start(config)
        .await
        .context("cannot start the control plane")?;
    // The first admin token, which the control plane wrote on its start.
    let token_file = data.path().join(server::ADMIN_TOKEN);
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("cannot read {}", token_file.display()))?;
    let token = token.trim();
    let endpoint = Endpoint::from_shared(format!("http://{}", cp.grpc_addr))
        .context("the control plane's URL")?
        .tcp_nodelay(true);
    println!(
        "fleet-limits: control plane on {} (lease ttl {} ms, refresh {} ms, grace {} ms; fresh data dir)",
        cp.grpc_addr, args.lease_ttl_ms, args.lease_refresh_ms, args.lease_grace_ms
    );

    let fleet_result = fleet_run(&args, &endpoint, token).await?;
    let cp_metrics = match cp.http_addr {
        Some(addr) => fleet::http_get(addr, "/metrics").await?,
        None => String::new(),
    };
    let cp_count = |name| fleet::sample(&cp_metrics, name).unwrap_or(0.0) as u64;
    println!(
        "RESULT fleet {} cp_reports={} cp_leases={}",
        fleet_result,
        cp_count("tollgate_controlplane_quota_reports_total"),
        cp_count("tollgate_controlplane_quota_leases_total"),
    );

    let latency = if args.skip_latency {
        None
    } else {
        Some(latency_run(&args, &endpoint, token).await?)
    };
    cp.shutdown()
        .await
        .context("the control plane did not stop cleanly")?;
    if let Some(latency) = latency {
        println!("RESULT latency {latency}");
    }
    Ok(())
}

/// Steps 2 and 3; the fields of the `RESULT fleet` line.
async fn fleet_run(args: &Args, endpoint: &Endpoint, token: &str) -> anyhow::Result<String> {
    let origin = Instant::now();
    // No grants in the bundle: every sidecar charges the one global bucket.
    let limit = Arc::new(
        Limit::new(
            endpoint,
            token,
            "fleet",
            "global",
            args.max,
            args.window,
            "",
        )
        .await?,
    );
    let mut sidecars: Vec<Arc<Sidecar>> = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let id = format!("fleet-{i:02}");
        sidecars.push(Arc::new(
            Sidecar::start(&id, endpoint, origin, &limit).await?,
        ));
    }
    let connecting = Instant::now();
    let wait = CONNECT_WAIT + CONNECT_WAIT_PER_NODE * u32::try_from(args.nodes).unwrap_or(u32::MAX);
    fleet::wait_connected(&sidecars, wait).await?;
    println!(
        "fleet-limits: {} simulated sidecars connected, each holding a lease, in {} ms",
        args.nodes,
        connecting.elapsed().as_millis()
    );
    // A few reports more, so the allocator has seen every node settle.
    tokio::time::sleep(Duration::from_millis(3 * args.lease_refresh_ms)).await;

    let window = Duration::from_secs(args.window);
    let duration = Duration::from_secs(args.duration);
    let first = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = first + duration;
    let start = first.into_std().duration_since(origin);
    let roles: Vec<Role> = (0..args.nodes).map(|i| Role::of(args, i)).collect();
    println!(
        "fleet-limits: {} s of calls: {} hot at {}/s, {} idle, {} at {}/s; global limit {} per {} s",
        args.duration,
        args.hot,
        args.hot_rate,
        args.idle,
        args.nodes - args.hot - args.idle,
        args.low_rate,
        args.max,
        args.window
    );
    let mut drivers = Vec::new();
    for (i, (sidecar, role)) in sidecars.iter().zip(&roles).enumerate() {
        let rate = match role {
            Role::Hot(r) | Role::Low(r) => *r,
            Role::Idle => continue,
        };
        // Spread the nodes' ticks over one period, so they do not call in step.
        let phase = Duration::from_secs_f64(i as f64 / args.nodes as f64 / rate);
        drivers.push((
            i,
            tokio::spawn(fleet::drive(
                Arc::clone(sidecar),
                Arc::clone(&limit),
                rate,
                first + phase,
                end,
            )),
        ));
    }
    let mut per_node: Vec<Vec<Call>> = vec![Vec::new(); args.nodes];
    for (i, d) in drivers {
        per_node[i] = d.await.context("a simulated sidecar's calls failed")?;
    }
    let mut quota = QuotaCounts {
        connected: true,
        ..Default::default()
    };
    for s in &sidecars {
        quota += s.quota();
    }
    drop(sidecars);

    // ---- the log ----
    let calls: Vec<Call> = per_node.iter().flatten().copied().collect();
    let mut admitted: Vec<Duration> = calls.iter().filter(|c| c.admitted).map(|c| c.at).collect();
    admitted.sort_unstable();
    let worst = analysis::worst_window(&admitted, window);
    let count = (args.duration / args.window) as usize;
    let windows = analysis::windows(&calls, start, window, count, args.max);
    let scored = &windows[usize::from(!args.score_first)..];
    let util_min = scored
        .iter()
        .map(|w| w.utilisation)
        .fold(f64::INFINITY, f64::min);
    let util_mean = scored.iter().map(|w| w.utilisation).sum::<f64>() / scored.len() as f64;

    println!("fleet-limits: per node (calls made / admitted):");
    for (i, (role, log)) in roles.iter().zip(&per_node).enumerate() {
        let ok = log.iter().filter(|c| c.admitted).count();
        println!(
            "  fleet-{i:02}  {:<12} {:>6} / {:<6}",
            role.describe(),
            log.len(),
            ok
        );
    }
    println!(
        "fleet-limits: per window of {} s from the first call:",
        args.window
    );
    for (k, w) in windows.iter().enumerate() {
        println!(
            "  window {k}  [{:>3} s, {:>3} s)  calls {:>6}  admitted {:>5}  ÷ min(max, calls) {:.3}{}",
            k as u64 * args.window,
            (k as u64 + 1) * args.window,
            w.demand,
            w.admitted,
            w.utilisation,
            if k == 0 && !args.score_first {
                "  (not scored)"
            } else {
                ""
            }
        );
    }
    println!(
        "fleet-limits: fullest trailing {} s window: {} admitted, ending at +{:.3} s",
        args.window,
        worst.admitted,
        worst.end.saturating_sub(start).as_secs_f64()
    );
    if quota.reports == 0 {
        bail!("the simulated sidecars sent no quota report: the benchmark measured nothing");
    }
    Ok(format!(
        "nodes={} hot={} idle={} low={} hot_rate={} low_rate={} max={} window_s={} duration_s={} \
         calls={} admitted={} worst_window={} worst_ratio={:.3} windows_scored={} util_min={:.3} \
         util_mean={:.3} reports={} leases={} unleased={} connected_at_end={}",
        args.nodes,
        args.hot,
        args.idle,
        args.nodes - args.hot - args.idle,
        args.hot_rate,
        args.low_rate,
        args.max,
        args.window,
        args.duration,
        calls.len(),
        admitted.len(),
        worst.admitted,
        worst.admitted as f64 / args.max as f64,
        scored.len(),
        util_min,
        util_mean,
        quota.reports,
        quota.leases,
        quota.unleased,
        quota.connected,
    ))
}

/// Step 4; the fields of the `RESULT latency` line.
async fn latency_run(args: &Args, endpoint: &Endpoint, token: &str) -> anyhow::Result<String> {
    // The sidecar's own grant bucket (a bundle without grants keys `grant`
    // limits by the node id), limited to 2^40 calls a minute: the sidecar
    // asks for all of it at every report, so its lease never runs dry and
    // every timed decision is admitted under it — the hot path. (A global
    // bucket takes the same path in `acquire`, but its lease follows the
    // demand of the last report interval, and the runs here are bursts.)
    let node = "latency-00";
    let limit = Arc::new(Limit::new(endpoint, token, "latency", "grant", 1 << 40, 60, node).await?);
    let origin = Instant::now();
    let sidecar = Arc::new(Sidecar::start(node, endpoint, origin, &limit).await?);
    // Connected before the first call: one made earlier would be admitted
    // without a lease (the sidecar acts alone until it hears from the
    // control plane), which is not the path measured here.
    fleet::wait_connected(std::slice::from_ref(&sidecar), CONNECT_WAIT).await?;
    let fleet = Arc::clone(&sidecar.counters);
    let local = LocalCounters::new();
    // Fill the local store's bucket as the fleet's holds one, so neither
    // run creates it.
    if local.acquire(&[limit.charge()], origin.elapsed()) != Admission::Admitted {
        bail!("the local store refused the first call of a limit of 2^40");
    }
    let (iterations, warmup, rounds) = (args.iterations, args.warmup, args.rounds);
    let timed = Arc::clone(&limit);
    println!(
        "fleet-limits: decision latency: {rounds} interleaved rounds of {iterations} decisions per store on one thread, after {warmup} each"
    );
    let result = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + CONNECT_WAIT;
        if !latency::prime(&*fleet, timed.charge(), origin, warmup.max(1), deadline) {
            return None;
        }
        Some(latency::measure(
            &*fleet,
            &local,
            timed.charge(),
            origin,
            iterations,
            warmup,
            rounds,
        ))
    })
    .await
    .context("the latency run failed")?
    .with_context(|| {
        format!("the latency sidecar's lease never admitted {warmup} decisions in a row within {CONNECT_WAIT:?}")
    })?;
    let quota = sidecar.quota();
    drop(sidecar);
    let (fleet_ns, local_ns) = (
        latency::median(&result.fleet),
        latency::median(&result.local),
    );
    let runs = |v: &[latency::Run]| {
        v.iter()
            .map(|r| format!("{:.1}", r.ns_per_decision))
            .collect::<Vec<_>>()
            .join(",")
    };
    let refused = |v: &[latency::Run]| v.iter().map(|r| r.refused).sum::<u64>();
    println!(
        "fleet-limits: ns/decision per round: leased {} | local {}",
        runs(&result.fleet),
        runs(&result.local)
    );
    Ok(format!(
        "iterations={iterations} rounds={rounds} fleet_ns={fleet_ns:.1} local_ns={local_ns:.1} \
         ratio={:.3} fleet_refused={} local_refused={} fleet_runs={} local_runs={} reports={} leases={} unleased={}",
        fleet_ns / local_ns,
        refused(&result.fleet),
        refused(&result.local),
        runs(&result.fleet),
        runs(&result.local),
        quota.reports,
        quota.leases,
        quota.unleased,
    ))
}
