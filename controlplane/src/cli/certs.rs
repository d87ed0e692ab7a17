//! `tollgate certs init | issue`: development certificates for TLS and
//! mTLS (see [`crate::tls::certs`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::tls::certs::{self, DEFAULT_TRUST_DOMAIN, NodeSubject};

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA and the control plane's serving certificate in DIR.
    Init {
        /// Where to write ca.pem, ca-key.pem, control-plane.pem and
        /// control-plane-key.pem (created 0700; keys 0600).
        dir: PathBuf,
        /// Names the control plane is reached by (DNS names or IP
        /// addresses; repeatable). localhost, 127.0.0.1 and ::1 are always in.
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Replace an existing CA (certificates it issued stop being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue a sidecar's client certificate from the CA in --dir.
    Issue {
        /// The directory `tollgate certs init` wrote.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The sidecar's node id (its --node-id; the pod name in Kubernetes).
        #[arg(long)]
        node: String,
        /// The node's Kubernetes namespace.
        #[arg(long)]
        namespace: String,
        /// The node's Kubernetes service account.
        #[arg(long, default_value = "default")]
        service_account: String,
        /// The SPIFFE trust domain (the control plane's --trust-domain).
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Where to write NODE.pem and NODE-key.pem (default: --dir).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::Init { dir, sans, force } => {
            let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
                .into_iter()
                .map(str::to_owned)
                .collect();
            for san in sans {
                if !names.contains(&san) {
                    names.push(san);
                }
            }
            for path in certs::init(&dir, &names, force)? {
                println!("wrote {}", path.display());
            }
            let d = dir.display();
            println!(
                "serve with:  tollgate serve --tls-cert {d}/{} --tls-key {d}/{} --client-ca {d}/{}",
                certs::SERVER_CERT,
                certs::SERVER_KEY,
                certs::CA_CERT
            );
            println!("sidecars:    tollgate certs issue --dir {d} --node NODE --namespace NS");
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Issue {
            dir,
            node,
            namespace,
            service_account,
            trust_domain,
            out,
        } => {
            let subject = NodeSubject {
                node_id: &node,
                namespace: &namespace,
                service_account: &service_account,
                trust_domain: &trust_domain,
            };
            let out = out.unwrap_or_else(|| dir.clone());
            let [cert, key] = certs::issue(&dir, &out, &subject)?;
            println!("wrote {} and {}", cert.display(), key.display());
            println!(
                "identity: node {node}, {} (sidecar: --node-id {node} --cert {} --key {} --ca {}/{})",
                subject.spiffe_id(),
                cert.display(),
                key.display(),
                dir.display(),
                certs::CA_CERT
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
