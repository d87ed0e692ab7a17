//! `tollgate inject`: adds the sidecar to Kubernetes workloads in a YAML or
//! JSON file (or standard input) and prints the result, e.g.
//! `kubectl get deploy web -o yaml | tollgate inject | kubectl apply -f -`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::inject::{self, Options, Outcome};

/// The control plane's gRPC URL as pods reach it in the default install.
pub const DEFAULT_CONTROL_PLANE: &str = "https://tollgate.tollgate-system.svc:50051";
/// The cert-manager ClusterIssuer of pods' client certificates in the default install.
pub const DEFAULT_IDENTITY_ISSUER: &str = "tollgate";

#[derive(Debug, Args)]
pub struct InjectArgs {
    /// The manifests to inject: a file, or `-` for standard input. YAML (one
    /// or more documents) or JSON; Deployments, StatefulSets, DaemonSets,
    /// ReplicaSets, Jobs, CronJobs, Pods and Lists of them are injected,
    /// other kinds pass through unchanged.
    #[arg(
        short = 'f',
        long = "filename",
        default_value = "-",
        value_name = "FILE|-"
    )]
    file: String,
    /// The control plane's gRPC URL as pods reach it (http:// only for a
    /// development control plane run with --insecure-dev).
    #[arg(long, default_value = DEFAULT_CONTROL_PLANE, value_name = "URL")]
    control_plane: String,
    /// MCP servers the sidecar fronts for workloads whose pod template has
    /// no tollgate.dev/upstreams annotation: `NAME=URL` (repeatable) or one URL.
    #[arg(long = "upstream", value_name = "[NAME=]URL")]
    upstreams: Vec<String>,
    /// The sidecar's image.
    #[arg(long, default_value = inject::DEFAULT_IMAGE)]
    image: String,
    /// A ConfigMap in each workload's namespace whose ca.crt verifies the
    /// control plane (default: the CA of the pod's identity certificate).
    #[arg(long, value_name = "NAME")]
    ca_config_map: Option<String>,
    /// The cert-manager ClusterIssuer that gives each pod its client
    /// certificate (through cert-manager's CSI driver) for an https://
    /// control plane.
    #[arg(long, default_value = DEFAULT_IDENTITY_ISSUER, value_name = "NAME")]
    identity_issuer: String,
    /// No client certificate: for a control plane that does not check node
    /// identity (--insecure-dev).
    #[arg(long)]
    no_identity: bool,
    /// The SPIFFE trust domain of pods' certificates (the control plane's --trust-domain).
    #[arg(long, default_value = crate::tls::certs::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Write the result here instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

impl InjectArgs {
    /// The injection options these flags give.
    pub fn options(&self) -> Options {
        let https = self.control_plane.starts_with("https://");
        Options {
            image: self.image.clone(),
            control_plane: self.control_plane.clone(),
            ca_config_map: self.ca_config_map.clone(),
            identity_issuer: (https && !self.no_identity).then(|| self.identity_issuer.clone()),
            trust_domain: self.trust_domain.clone(),
            upstreams: self.upstreams.clone(),
        }
    }
}

pub fn run(args: &InjectArgs) -> anyhow::Result<ExitCode> {
    let opts = args.options();
    if let Err(e) = inject::upstreams::parse(opts.upstreams.iter().map(String::as_str)) {
        anyhow::bail!("--upstream: {e}");
    }
    let input = read_input(&args.file)?;
    let injected = inject::text::inject(&input, &opts)
        .with_context(|| format!("cannot inject {}", source_name(&args.file)))?;
    for (doc, report) in &injected.reports {
        for warning in &report.warnings {
            eprintln!("warning: document {doc}: {warning}");
        }
        match &report.outcome {
            Outcome::Skipped(why) => eprintln!("{} skipped: {why}", report.what),
            outcome => eprintln!("{} {}", report.what, outcome.label()),
        }
    }
    match &args.output {
        Some(path) => std::fs::write(path, &injected.text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{}", injected.text),
    }
    Ok(ExitCode::SUCCESS)
}

fn source_name(file: &str) -> String {
    if file == "-" {
        "standard input".into()
    } else {
        file.to_owned()
    }
}

fn read_input(file: &str) -> anyhow::Result<String> {
    let limit = inject::text::MAX_INPUT as u64 + 1;
    let mut bytes = Vec::new();
    if file == "-" {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(limit).read_to_end(&mut bytes))
            .with_context(|| format!("cannot read {file}"))?;
    }
    if bytes.len() as u64 >= limit {
        anyhow::bail!(
            "{} is larger than {} bytes: inject it in parts",
            source_name(file),
            inject::text::MAX_INPUT
        );
    }
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", source_name(file)))
}
