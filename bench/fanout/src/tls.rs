//! mTLS for the simulated fleet: the CA of a `tollgate certs init`
//! directory, and a node certificate per simulated sidecar issued from it
//! the way `tollgate certs issue` does.

use std::path::Path;

use anyhow::Context;
use tollgate_controlplane::tls::certs::{
    self, CertificateAuthority, DEFAULT_TRUST_DOMAIN, NodeSubject,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub struct Fleet {
    ca: CertificateAuthority,
}

impl Fleet {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let ca = CertificateAuthority::load(dir)
            .with_context(|| format!("--tls-dir {}: no CA to issue from", dir.display()))?;
        Ok(Self { ca })
    }

    /// Trusts the control plane; presents nothing (the admin client).
    pub fn server_only(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
    }

    /// Trusts the control plane and presents a fresh certificate for `node`.
    pub fn node(&self, node: &str) -> anyhow::Result<ClientTlsConfig> {
        let pem = self
            .ca
            .issue_node(&NodeSubject {
                node_id: node,
                namespace: "fanout",
                service_account: "default",
                trust_domain: DEFAULT_TRUST_DOMAIN,
            })
            .map_err(|e: certs::CertError| anyhow::anyhow!("{e}"))?;
        Ok(self
            .server_only()
            .identity(Identity::from_pem(pem.cert, pem.key)))
    }
}
