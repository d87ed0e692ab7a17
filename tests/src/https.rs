//! A tiny blocking HTTPS/1.1 client for the control plane's TLS ports
//! (the admission webhook, a secured `--http` port): one request per
//! connection (`Connection: close`), the server verified against a CA file
//! as `tollgate certs init` writes it, no client certificate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::net::{self, Reply};

/// Trusts the certificates in one PEM file (e.g. `<certs>/ca.pem`).
#[derive(Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
}

impl Client {
    /// A client trusting the CA in `ca`; panics if the file is not PEM.
    pub fn trusting(ca: &Path) -> Client {
        let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("cannot read {}: {e}", ca.display()));
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.unwrap_or_else(|e| panic!("{} is not PEM: {e}", ca.display()));
            roots
                .add(cert)
                .unwrap_or_else(|e| panic!("{}: not a CA certificate: {e}", ca.display()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("TLS client configuration: {e}"))
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            config: Arc::new(config),
        }
    }

    /// `GET https://localhost:<port>{path}` at `addr`.
    pub fn get(&self, addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
        self.request(addr, "GET", path, &[], None)
    }

    /// One request on a fresh connection to `addr`, verifying the server as
    /// `localhost`; the whole reply is read.
    pub fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Reply> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
        let conn =
            ClientConnection::new(self.config.clone(), name).map_err(std::io::Error::other)?;
        let mut tls = StreamOwned::new(conn, tcp);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nConnection: close\r\nHost: localhost:{}\r\n",
            addr.port()
        );
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes())?;
        if let Some(b) = body {
            // A server refusing a large body may answer and close before
            // it is all sent: the answer is still read below.
            match tls.write_all(b) {
                Err(e)
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return Err(e);
                }
                _ => {}
            }
        }
        tls.flush()?;
        let mut raw = Vec::new();
        match tls.read_to_end(&mut raw) {
            Ok(_) => {}
            // A close without close_notify after a whole reply.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => {}
            Err(e) => return Err(e),
        }
        net::parse(&raw)
    }
}
