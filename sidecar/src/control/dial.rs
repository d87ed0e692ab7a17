//! How the sidecar reaches its control plane: the URL and, for `https://`,
//! the CA it trusts (`--ca`) and the client certificate it presents
//! (`--cert`, `--key`; the control plane reads the node's identity from
//! it). The files are read again on every connection, so certificates
//! rotated on disk (a renewed Kubernetes secret) are used from the next
//! reconnect without a restart.

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::ControlError;

/// The files of an `https://` control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA (PEM) that signed the control plane's certificate.
    pub ca: PathBuf,
    /// This sidecar's certificate and key (PEM), for mTLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Dial {
    url: String,
    tls: Option<ClientTls>,
}

impl Dial {
    /// Checks the URL and that TLS files go with `https://` (and only with it).
    pub fn new(url: &str, tls: Option<ClientTls>) -> Result<Self, ControlError> {
        let bad = |reason: &str| ControlError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        Endpoint::from_shared(url.to_owned()).map_err(|e| bad(&e.to_string()))?;
        match (url.starts_with("https://"), &tls) {
            (true, None) => {
                return Err(bad(
                    "an https:// control plane needs --ca (the CA that signed its certificate; \
                     `tollgate certs init` writes ca.pem)",
                ));
            }
            (false, Some(_)) if url.starts_with("http://") => {
                return Err(bad(
                    "--ca, --cert and --key are for an https:// control plane; this URL is \
                     plaintext",
                ));
            }
            _ => {}
        }
        Ok(Self {
            url: url.to_owned(),
            tls,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// An endpoint for the next connection, with the TLS files as they are
    /// on disk now. The error names the file and what is wrong with it.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let endpoint = Endpoint::from_shared(self.url.clone()).map_err(|e| e.to_string())?;
        let Some(tls) = &self.tls else {
            return Ok(endpoint);
        };
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&tls.ca, "--ca")?));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(
                read(cert, "--cert")?,
                read(key, "--key")?,
            ));
        }
        endpoint
            .tls_config(config)
            .map_err(|e| format!("the TLS files cannot be used: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_go_with_https_only() {
        let tls = ClientTls {
            ca: "ca.pem".into(),
            identity: None,
        };
        assert!(Dial::new("http://127.0.0.1:1", None).is_ok());
        assert!(Dial::new("https://127.0.0.1:1", Some(tls.clone())).is_ok());
        let e = Dial::new("https://127.0.0.1:1", None).expect_err("no ca");
        assert!(e.to_string().contains("--ca"), "{e}");
        assert!(Dial::new("http://127.0.0.1:1", Some(tls.clone())).is_err());
        let missing = Dial::new("https://127.0.0.1:1", Some(tls)).expect("dial");
        let e = missing.endpoint().expect_err("file missing");
        assert!(e.contains("--ca ca.pem"), "{e}");
    }
}
