//! `tollgate serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::sync::watch;

use crate::inject;
use crate::quota::AllocatorConfig;
use crate::server::webhook::WebhookConfig;
use crate::server::{self, Config};
use crate::tls::{NodeIdentity, TlsFiles};

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
    /// Fleet-wide limits: how long a lease lets a sidecar admit calls without
    /// hearing back (capped at each limit's window). After a start the control
    /// plane grants nothing new for this long plus --lease-grace (it re-learns
    /// what the sidecars hold).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// How often sidecars report on their fleet-wide buckets.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    lease_refresh: Duration,
    /// The longest a lease may take to reach a sidecar.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    lease_grace: Duration,
    /// After a start, also grant nothing new for one window of each limit:
    /// exact even for a sidecar that stays silent through re-learning.
    #[arg(long)]
    learn_whole_window: bool,
    /// How long a sidecar cut off from the control plane may admit calls on
    /// `fallback` once it may start; its capacity stays reserved that long
    /// and one window more, whether it is cut off or gone.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    fallback_horizon: Duration,
    /// When the store has no operator token yet, store the token in this file
    /// (`tgt_<16 hex>_<64 hex>`) as admin token `bootstrap`. Without it, a
    /// new admin token is written to DATA/admin-token (0600). Ignored once
    /// any token exists.
    #[arg(long, value_name = "PATH")]
    bootstrap_token_file: Option<PathBuf>,
    /// Serve TLS on both ports (and the webhook's, without --webhook-cert)
    /// with this certificate (PEM, chain first); re-read when the file
    /// changes. `tollgate certs init DIR` makes one.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// mTLS: sidecars present certificates from this CA, and a policy or
    /// quota stream may only speak for the node its certificate names (DNS
    /// name = node id, URI = spiffe://TRUST-DOMAIN/ns/NS/sa/SA).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// The SPIFFE trust domain node certificates must be in.
    #[arg(long, default_value = crate::tls::certs::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Development only: take node ids as sidecars declare them (no
    /// --client-ca). Anything that reaches the gRPC port can then speak for
    /// any node. Said in the log and on /readyz.
    #[arg(long, conflicts_with = "client_ca")]
    insecure_dev: bool,
    /// Where people reach the --http port, for links to approval pages
    /// (`URL/approvals/ID`); default http(s)://<the --http address>.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// POST each new approval request to this URL (http or https) as JSON,
    /// signed with X-Tollgate-Signature: sha256=HMAC(secret, timestamp +
    /// "." + body); retried, never delaying a call.
    #[arg(long, value_name = "URL")]
    approval_webhook: Option<String>,
    /// The webhook's signing secret (at least 16 bytes). Without it, one is
    /// generated once into DATA/approval-webhook-secret (0600).
    #[arg(long, value_name = "FILE", requires = "approval_webhook")]
    approval_webhook_secret_file: Option<PathBuf>,
    /// Serve the Kubernetes mutating admission webhook on this address:
    /// HTTPS only, `POST /inject` adds the sidecar to pods (the same patch
    /// as `tollgate inject`). Needs --inject-control-plane and a certificate.
    #[arg(long, value_name = "ADDR")]
    webhook_addr: Option<SocketAddr>,
    /// The webhook's certificate (PEM, chain first; its names must include
    /// the Service's DNS name); default --tls-cert. Re-read when it changes.
    #[arg(long, value_name = "PEM", requires_all = ["webhook_key", "webhook_addr"])]
    webhook_cert: Option<PathBuf>,
    /// The private key of --webhook-cert (PEM); default --tls-key.
    #[arg(long, value_name = "PEM", requires = "webhook_cert")]
    webhook_key: Option<PathBuf>,
    /// The sidecar image the webhook injects.
    #[arg(long, value_name = "IMAGE", default_value = concat!("tollgate:", env!("CARGO_PKG_VERSION")))]
    inject_image: String,
    /// The control plane's gRPC URL as injected pods reach it (e.g.
    /// https://tollgate.tollgate-system.svc:50051).
    #[arg(long, value_name = "URL", requires = "webhook_addr")]
    inject_control_plane: Option<String>,
    /// A ConfigMap in each pod's namespace whose `ca.crt` verifies an
    /// https:// --inject-control-plane.
    #[arg(long, value_name = "NAME", requires = "webhook_addr")]
    inject_ca_config_map: Option<String>,
    /// Upstreams for pods without a `tollgate.dev/upstreams` annotation
    /// (`NAME=URL` or a bare URL; repeatable).
    #[arg(
        long = "inject-upstream",
        value_name = "[NAME=]URL",
        requires = "webhook_addr"
    )]
    inject_upstreams: Vec<String>,
    /// The cert-manager ClusterIssuer that gives each injected pod its
    /// client certificate (through cert-manager's CSI driver, naming the pod
    /// and its SPIFFE id in --trust-domain) for an https:// control plane.
    #[arg(
        long,
        value_name = "NAME",
        default_value = crate::cli::inject::DEFAULT_IDENTITY_ISSUER
    )]
    inject_identity_issuer: String,
    /// Injected pods get no client certificate: for a control plane that
    /// does not check node identity (--insecure-dev).
    #[arg(long, requires = "webhook_addr")]
    inject_no_identity: bool,
}

impl ServeArgs {
    /// TLS files and node identity, or why the combination cannot serve.
    fn security(&self) -> anyhow::Result<(Option<TlsFiles>, NodeIdentity)> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
            }),
            _ => None,
        };
        let identity = if self.client_ca.is_some() {
            NodeIdentity::Verified {
                trust_domain: self.trust_domain.clone(),
            }
        } else if self.insecure_dev {
            NodeIdentity::Declared
        } else {
            bail!(
                "the control plane cannot tell which node a sidecar is: give --client-ca (with \
                 --tls-cert and --tls-key; `tollgate certs init DIR` makes all three for a start) \
                 or, for development only, --insecure-dev"
            );
        };
        Ok((tls, identity))
    }

    /// The admission webhook's configuration, or why it cannot serve.
    fn webhook(&self) -> anyhow::Result<Option<WebhookConfig>> {
        let Some(addr) = self.webhook_addr else {
            return Ok(None);
        };
        let (cert, key) = match (&self.webhook_cert, &self.webhook_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => (cert.clone(), key.clone()),
                _ => bail!(
                    "--webhook-addr serves HTTPS only (the Kubernetes API server calls webhooks \
                     over TLS): give --webhook-cert and --webhook-key, or --tls-cert and \
                     --tls-key (the certificate's names must include the webhook Service's DNS \
                     name, e.g. `tollgate certs init DIR --san tollgate.tollgate-system.svc`)"
                ),
            },
        };
        let Some(control_plane) = self.inject_control_plane.clone() else {
            bail!(
                "--webhook-addr needs --inject-control-plane URL: the control plane's gRPC URL \
                 as injected pods reach it, e.g. https://tollgate.tollgate-system.svc:50051"
            );
        };
        if !is_http_url(&control_plane) {
            bail!(
                "--inject-control-plane {control_plane:?} is not a URL; give \
                 http(s)://HOST:PORT, e.g. https://tollgate.tollgate-system.svc:50051"
            );
        }
        if self.inject_image.trim().is_empty() {
            bail!(
                "--inject-image is empty; give the sidecar's image, e.g. tollgate:{}",
                env!("CARGO_PKG_VERSION")
            );
        }
        if let Err(e) = inject::upstreams::parse(self.inject_upstreams.iter().map(String::as_str)) {
            bail!("--inject-upstream: {e}");
        }
        let https = control_plane.starts_with("https://");
        Ok(Some(WebhookConfig {
            addr,
            tls: TlsFiles {
                cert,
                key,
                client_ca: None,
            },
            inject: inject::Options {
                image: self.inject_image.clone(),
                control_plane,
                ca_config_map: self.inject_ca_config_map.clone(),
                identity_issuer: (https && !self.inject_no_identity)
                    .then(|| self.inject_identity_issuer.clone()),
                trust_domain: self.trust_domain.clone(),
                upstreams: self.inject_upstreams.clone(),
            },
        }))
    }
}

/// `http://` or `https://` followed by a host.
fn is_http_url(s: &str) -> bool {
    ["http://", "https://"]
        .iter()
        .any(|scheme| s.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty()))
}

/// Keeps the data dir to this user: policies, node ids and quota state are
/// written owner-only (files 0600, directories 0700, whatever the umask
/// the control plane was started with), and an existing data dir is
/// closed to others.
fn private_files(data: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    if data.exists() {
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).with_context(
            || format!("cannot make --data {} private (chmod 0700)", data.display()),
        )?;
    }
    Ok(())
}

/// On SIGTERM or SIGINT: stop accepting, end every policy stream cleanly
/// (sidecars reconnect with their backoff), flush the store, exit 0. A
/// second signal exits at once, with status 1.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if args.lease_ttl.is_zero() || args.lease_refresh.is_zero() {
        bail!(
            "--lease-ttl and --lease-refresh must be above zero (got {:?} and {:?}); the defaults are 10s and 1s",
            args.lease_ttl,
            args.lease_refresh
        );
    }
    let (tls, node_identity) = args.security()?;
    let webhook = args.webhook()?;
    private_files(&args.data)?;
    let config = Config {
        tls,
        node_identity,
        grpc: args.grpc,
        http: args.http,
        data: args.data,
        stale_after: args.stale_after,
        max_opening_streams: args.max_opening_streams,
        max_waiting_streams: args.max_waiting_streams,
        quota: AllocatorConfig {
            lease_ttl: args.lease_ttl,
            refresh: args.lease_refresh,
            grace: args.lease_grace,
            learn_whole_window: args.learn_whole_window,
            fallback_horizon: args.fallback_horizon,
        },
        bootstrap_token_file: args.bootstrap_token_file,
        public_url: args.public_url,
        approval_webhook: args.approval_webhook,
        approval_webhook_secret_file: args.approval_webhook_secret_file,
        webhook,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = rt.block_on(async {
        let mut signals = Signals::new()?;
        let running = server::start(config).await?;
        println!("tollgate control plane: grpc {}", running.grpc_addr);
        if let Some(http) = running.http_addr {
            println!("tollgate control plane: http {http}");
        }
        if let Some(webhook) = running.webhook_addr {
            println!("tollgate control plane: webhook {webhook}");
        }
        let (count, received) = watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                let name = signals.next().await;
                if *count.borrow() == 0 {
                    tracing::info!(
                        signal = name,
                        "stopping cleanly; send it again to exit at once"
                    );
                } else {
                    tracing::warn!(signal = name, "second signal: exiting without a clean stop");
                }
                count.send_modify(|n| *n += 1);
            }
        });
        let (mut first, mut second) = (received.clone(), received);
        let stopped = running.serve_until(async move {
            let _ = first.wait_for(|n| *n >= 1).await;
        });
        tokio::select! {
            r = stopped => r.map(|()| ExitCode::SUCCESS).context("the control plane failed"),
            _ = second.wait_for(|n| *n >= 2) => Ok(ExitCode::from(1)),
        }
    });
    // Connections dropped at the end of a stop may leave tasks behind; they
    // hold nothing that needs finishing.
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// SIGTERM (what Kubernetes and systemd send) and SIGINT (Ctrl-C).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening; from here on neither signal ends the process by itself.
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
                int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
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
#[path = "serve_tests.rs"]
mod tests;
