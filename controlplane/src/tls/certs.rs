//! Development certificates (`tollgate certs`): a CA of this deployment's
//! own, the control plane's serving certificate, and one client certificate
//! per sidecar carrying the identity the control plane reads back
//! ([`super::peer`]): the node id as a DNS name and
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` as a URI.
//!
//! Keys are ECDSA P-256. Files are PEM; keys are written owner-only (0600).
//! For production, any CA that issues the same shape of certificate works
//! (cert-manager, a SPIFFE issuer): the control plane only reads them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The trust domain of SPIFFE ids when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// File names in a `tollgate certs init` directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const SERVER_CERT: &str = "control-plane.pem";
pub const SERVER_KEY: &str = "control-plane-key.pem";

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} already exists; pass --force to replace the CA and the control plane's certificate \
         (every certificate issued by the old CA stops being trusted)"
    )]
    Exists { path: String },
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "node id {0:?} is not a DNS name (lowercase letters, digits, '-' and '.', at most 253 \
         characters): the node certificate carries it as a DNS name; use the pod name"
    )]
    NodeId(String),
    #[error("{what} {value:?} may hold only lowercase letters, digits, '-' and '.'")]
    Segment { what: &'static str, value: String },
    #[error(
        "{path} is not a CA made by `tollgate certs init` (or its key does not match): {reason}"
    )]
    NotCa { path: String, reason: String },
}

/// One certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// Who a node certificate names.
#[derive(Debug, Clone)]
pub struct NodeSubject<'a> {
    pub node_id: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub trust_domain: &'a str,
}

impl NodeSubject<'_> {
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// A CA able to issue: its certificate (PEM) and signing key.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// A new self-signed CA, valid ten years.
    pub fn generate() -> Result<(Self, Pem), CertError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Tollgate development CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok((
            Self {
                cert_pem: pem.cert.clone(),
                issuer: Issuer::new(params, key),
            },
            pem,
        ))
    }

    /// The CA written by `tollgate certs init` in `dir`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert_path = dir.join(CA_CERT);
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&dir.join(CA_KEY))?;
        let not_ca = |reason: String| CertError::NotCa {
            path: cert_path.display().to_string(),
            reason,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| not_ca(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| not_ca(e.to_string()))?;
        Ok(Self { cert_pem, issuer })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A serving certificate for the control plane, valid one year, for
    /// these DNS names and IP addresses.
    pub fn issue_server(&self, names: &[String]) -> Result<Pem, CertError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Tollgate control plane");
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, 365);
        self.sign(params)
    }

    /// A sidecar's client certificate, valid one year.
    pub fn issue_node(&self, subject: &NodeSubject<'_>) -> Result<Pem, CertError> {
        if !is_dns_name(subject.node_id) {
            return Err(CertError::NodeId(subject.node_id.to_owned()));
        }
        for (what, value) in [
            ("namespace", subject.namespace),
            ("service account", subject.service_account),
            ("trust domain", subject.trust_domain),
        ] {
            if !is_dns_name(value) {
                return Err(CertError::Segment {
                    what,
                    value: value.to_owned(),
                });
            }
        }
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, subject.node_id);
        params.subject_alt_names = vec![
            SanType::DnsName(subject.node_id.try_into()?),
            SanType::URI(subject.spiffe_id().as_str().try_into()?),
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, 365);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Pem, CertError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// Valid from an hour ago (clock skew) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// Lowercase DNS name: labels of `a-z0-9-`, not starting or ending with
/// `-`, joined by `.`, at most 253 characters.
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// `tollgate certs init DIR`: a CA and the control plane's certificate for
/// `names`. Refuses to replace an existing CA unless `force`.
pub fn init(dir: &Path, names: &[String], force: bool) -> Result<Vec<PathBuf>, CertError> {
    let ca_cert = dir.join(CA_CERT);
    if ca_cert.exists() && !force {
        return Err(CertError::Exists {
            path: ca_cert.display().to_string(),
        });
    }
    create_dir(dir)?;
    let (ca, ca_pem) = CertificateAuthority::generate()?;
    let server = ca.issue_server(names)?;
    let written = [
        (CA_CERT, &ca_pem.cert),
        (CA_KEY, &ca_pem.key),
        (SERVER_CERT, &server.cert),
        (SERVER_KEY, &server.key),
    ]
    .into_iter()
    .map(|(name, text)| {
        let path = dir.join(name);
        write_private(&path, text)?;
        Ok(path)
    })
    .collect::<Result<Vec<_>, CertError>>()?;
    Ok(written)
}

/// `tollgate certs issue`: a node certificate from the CA in `dir`, written
/// to `out/<node-id>.pem` and `out/<node-id>-key.pem`.
pub fn issue(dir: &Path, out: &Path, subject: &NodeSubject<'_>) -> Result<[PathBuf; 2], CertError> {
    let ca = CertificateAuthority::load(dir)?;
    let pem = ca.issue_node(subject)?;
    create_dir(out)?;
    let cert = out.join(format!("{}.pem", subject.node_id));
    let key = out.join(format!("{}-key.pem", subject.node_id));
    write_private(&cert, &pem.cert)?;
    write_private(&key, &pem.key)?;
    Ok([cert, key])
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CertError::Io {
            path: dir.display().to_string(),
            source,
        })
}

/// Writes `text` to `path` readable by this user only, replacing it
/// atomically (a control plane re-reading its files never sees half a key).
pub fn write_private(path: &Path, text: &str) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("pem.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_dns_name("sidecar-0.payments"));
        assert!(is_dns_name("a"));
        for bad in ["", "A", "-a", "a-", "a..b", "a_b", "ä", &"a".repeat(64)] {
            assert!(!is_dns_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn init_refuses_to_replace_a_ca_and_issue_needs_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let written = init(dir.path(), &names, false).expect("init");
        assert_eq!(written.len(), 4);
        let again = init(dir.path(), &names, false).expect_err("refused");
        assert!(again.to_string().contains("--force"), "{again}");
        init(dir.path(), &names, true).expect("forced");

        let subject = NodeSubject {
            node_id: "sidecar-0",
            namespace: "payments",
            service_account: "agent",
            trust_domain: DEFAULT_TRUST_DOMAIN,
        };
        let [cert, key] = issue(dir.path(), &dir.path().join("nodes"), &subject).expect("issue");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            std::fs::read_to_string(cert)
                .expect("cert")
                .starts_with("-----BEGIN CERTIFICATE-----")
        );

        let empty = tempfile::tempdir().expect("tempdir");
        let err = issue(empty.path(), empty.path(), &subject).expect_err("no CA");
        assert!(err.to_string().contains(CA_CERT), "{err}");
        let bad = NodeSubject {
            node_id: "Sidecar_0",
            ..subject
        };
        assert!(matches!(
            issue(dir.path(), dir.path(), &bad),
            Err(CertError::NodeId(_))
        ));
    }
}
