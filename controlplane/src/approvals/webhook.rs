//! `--approval-webhook URL`: each new approval request is POSTed as JSON to
//! a chat or paging hook, signed so the receiver can tell it came from this
//! control plane.
//!
//! The body is `{"text": "<one line for a person>", "approval": {id, node,
//! grant, server, tool, arguments_sha256, policy_version, rule, created,
//! expires, url}}`, with `X-Tollgate-Timestamp: <unix seconds>` and
//! `X-Tollgate-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." +
//! body)>`. A receiver recomputes the HMAC and refuses old timestamps.
//!
//! Notices never hold up a request or a call: they go through a bounded
//! queue (the oldest dropped when it is full, counted and logged), one at a
//! time, each tried up to [`TRIES`] times with doubling backoff and a
//! per-try timeout. A 2xx answer delivers; 408, 429, 5xx and network errors
//! are retried; any other status is final (the hook refuses it).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::sync::{Notify, broadcast};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tollgate_policy::approvals::{ApprovalRecord, ApprovalState};

use super::Approvals;
use crate::metrics::ApprovalMetrics;

/// Notices waiting to be sent; past this the oldest is dropped.
pub const QUEUE: usize = 256;
/// Tries per notice.
pub const TRIES: u32 = 5;
/// The wait after the first failed try; doubled after each.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How long one try (connect, send, answer) may take.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(5);
/// The file in the data dir holding the generated signing secret.
pub const SECRET_FILE: &str = "approval-webhook-secret";
/// Where TLS roots come from for an `https://` hook, unless `SSL_CERT_FILE`
/// names another bundle.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why the webhook cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("--approval-webhook {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("--approval-webhook-secret-file {path}: {reason}")]
    SecretFile { path: String, reason: String },
    #[error("cannot keep the approval webhook's signing secret in {path}: {source}")]
    GeneratedSecret {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "--approval-webhook is https, but the TLS roots in {path} cannot be read ({reason}); \
         set SSL_CERT_FILE to a PEM bundle of CA certificates"
    )]
    Roots { path: String, reason: String },
}

/// Where and how notices go.
pub struct Webhook {
    url: http::Uri,
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
    secret: Vec<u8>,
    /// `--public-url`: the approval page is `<page_base>/approvals/ID`.
    page_base: String,
}

impl Webhook {
    /// A hook at `url` (`http://` or `https://`), signing with `secret`,
    /// linking to pages under `page_base`.
    pub fn new(url: &str, secret: Vec<u8>, page_base: &str) -> Result<Self, WebhookError> {
        let bad = |reason: &str| WebhookError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|_| bad("not a URL like https://hooks.example.com/T0/B0"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let host = uri
            .host()
            .ok_or_else(|| bad("the URL has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https { Some(connector()?) } else { None };
        Ok(Self {
            url: uri,
            host,
            port,
            tls,
            secret,
            page_base: page_base.trim_end_matches('/').to_owned(),
        })
    }

    /// Links approval pages under `page_base` (`--public-url`).
    pub fn link_pages_under(&mut self, page_base: &str) {
        page_base
            .trim_end_matches('/')
            .clone_into(&mut self.page_base);
    }

    /// Sends a notice for each request filed from now on, until `stop`
    /// resolves. Never waits on filing: see the module doc.
    pub async fn run(
        self,
        approvals: Arc<Approvals>,
        metrics: ApprovalMetrics,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let queue = Arc::new(Queue::default());
        let mut filed = approvals.subscribe();
        let hook = Arc::new(self);
        let sender = tokio::spawn(send_all(hook, queue.clone(), metrics.clone()));
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                change = filed.recv() => match change {
                    // Only filing makes a pending record.
                    Ok(r) if r.state == ApprovalState::Pending => {
                        if let Some(dropped) = queue.push(r) {
                            metrics.webhook_dropped.inc();
                            tracing::warn!(id = %dropped.id, queued = QUEUE, "approval webhook queue full; dropped its oldest notice");
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "the approval webhook fell behind; some notices are lost");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        sender.abort();
    }

    /// The JSON body for `r`.
    pub fn body(&self, r: &ApprovalRecord) -> String {
        let url = format!("{}/approvals/{}", self.page_base, r.id);
        let expires = rfc3339(r.expires_ms);
        let text = format!(
            "Approval needed: grant {} on node {} wants to call {} on server {} (arguments \
             sha256 {}…). Approve or deny by {expires}: {url} (or `tollgate approvals approve {}`)",
            r.call.grant,
            r.node,
            r.call.tool,
            r.call.server,
            r.call.arguments_sha256.get(..12).unwrap_or_default(),
            r.id
        );
        json!({
            "text": text,
            "approval": {
                "id": r.id,
                "node": r.node,
                "grant": r.call.grant,
                "server": r.call.server,
                "tool": r.call.tool,
                "arguments_sha256": r.call.arguments_sha256,
                "policy_version": r.policy_version,
                "rule": r.rule,
                "created": rfc3339(r.created_ms),
                "expires": expires,
                "url": url,
            }
        })
        .to_string()
    }

    /// One try: `Ok` when delivered, else whether to try again and why not.
    async fn post(&self, body: &str) -> Result<(), (bool, String)> {
        let timestamp = crate::status::unix_now().to_string();
        let request = http::Request::post(self.url.clone())
            .header(http::header::HOST, self.authority())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "tollgate-controlplane")
            .header("x-tollgate-timestamp", &timestamp)
            .header(
                "x-tollgate-signature",
                signature(&self.secret, &timestamp, body),
            )
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| (false, format!("cannot build the request: {e}")))?;
        let status = match tokio::time::timeout(TRY_TIMEOUT, self.send(request)).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return Err((true, e)),
            Err(_) => return Err((true, format!("no answer within {TRY_TIMEOUT:?}"))),
        };
        if status.is_success() {
            return Ok(());
        }
        let retry = status.is_server_error()
            || status == http::StatusCode::REQUEST_TIMEOUT
            || status == http::StatusCode::TOO_MANY_REQUESTS;
        Err((retry, format!("the hook answered {status}")))
    }

    async fn send(&self, request: http::Request<Full<Bytes>>) -> Result<http::StatusCode, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect to {}:{}: {e}", self.host, self.port))?;
        match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("{}: {e}", self.host))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", self.host))?;
                exchange(TokioIo::new(stream), request).await
            }
            None => exchange(TokioIo::new(tcp), request).await,
        }
    }

    fn authority(&self) -> String {
        self.url
            .authority()
            .map_or_else(|| self.host.clone(), |a| a.to_string())
    }
}

/// The signing secret: the file's contents (trimmed), else the one in the
/// data dir, generated on first use (32 random bytes, hex, mode 0600);
/// returns it and where it is.
pub fn secret(file: Option<&Path>, data: &Path) -> Result<(Vec<u8>, PathBuf), WebhookError> {
    if let Some(path) = file {
        let shown = || path.display().to_string();
        let text = std::fs::read(path).map_err(|e| WebhookError::SecretFile {
            path: shown(),
            reason: e.to_string(),
        })?;
        let secret = text.trim_ascii().to_vec();
        if secret.len() < 16 {
            return Err(WebhookError::SecretFile {
                path: shown(),
                reason: "the secret is shorter than 16 bytes; use at least 32 random bytes"
                    .to_owned(),
            });
        }
        return Ok((secret, path.to_owned()));
    }
    let path = data.join(SECRET_FILE);
    let kept = |source| WebhookError::GeneratedSecret {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(&path) {
        Ok(text) if !text.trim_ascii().is_empty() => {
            return Ok((text.trim_ascii().to_vec(), path));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(kept(e)),
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| kept(std::io::Error::other(e.to_string())))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(data).map_err(kept)?;
    write_private(&path, hex.as_bytes()).map_err(kept)?;
    Ok((hex.into_bytes(), path))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub fn signature(secret: &[u8], timestamp: &str, body: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Notices not yet sent, oldest first, at most [`QUEUE`].
#[derive(Default)]
struct Queue {
    items: Mutex<VecDeque<ApprovalRecord>>,
    ready: Notify,
}

impl Queue {
    /// Queues `r`; returns the notice dropped to make room, if any.
    fn push(&self, r: ApprovalRecord) -> Option<ApprovalRecord> {
        let dropped = {
            let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
            let dropped = (items.len() >= QUEUE).then(|| items.pop_front()).flatten();
            items.push_back(r);
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    async fn pop(&self) -> ApprovalRecord {
        loop {
            let next = self
                .items
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front();
            if let Some(r) = next {
                return r;
            }
            self.ready.notified().await;
        }
    }
}

/// Sends queued notices one at a time, each with its retries.
async fn send_all(hook: Arc<Webhook>, queue: Arc<Queue>, metrics: ApprovalMetrics) {
    loop {
        let r = queue.pop().await;
        let body = hook.body(&r);
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=TRIES {
            match hook.post(&body).await {
                Ok(()) => {
                    metrics.webhook_delivered.inc();
                    tracing::debug!(id = %r.id, attempt, "approval webhook delivered");
                    break;
                }
                Err((retry, why)) => {
                    metrics.webhook_failures.inc();
                    if !retry || attempt == TRIES {
                        metrics.webhook_dropped.inc();
                        tracing::warn!(id = %r.id, attempt, "approval webhook gave up: {why}");
                        break;
                    }
                    tracing::info!(id = %r.id, attempt, ?backoff, "approval webhook failed, retrying: {why}");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }
}

/// One HTTP/1.1 request on a fresh connection; the answer's status.
async fn exchange<S>(
    io: TokioIo<S>,
    request: http::Request<Full<Bytes>>,
) -> Result<http::StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let answer = sender.send_request(request).await;
    driver.abort();
    answer
        .map(|a| a.status())
        .map_err(|e| format!("sending the notice: {e}"))
}

/// A TLS connector trusting the system's CA bundle.
fn connector() -> Result<TlsConnector, WebhookError> {
    let path = std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| SYSTEM_ROOTS.to_owned());
    let roots_error = |reason: String| WebhookError::Roots {
        path: path.clone(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path).map_err(|e| roots_error(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| roots_error(e.to_string()))?;
        // A bundle may hold certificates rustls cannot use; the rest serve.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(roots_error("no CA certificate in it".to_owned()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| roots_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Unix milliseconds as RFC 3339, to the second.
fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed apart, with Python's hmac module.
        assert_eq!(
            signature(b"Jefe", "1700000000", r#"{"text":"hi"}"#),
            "sha256=78c16fb1347cc108e4fe45972cb2c71d070d22cb5c714af583367a3b7d491ce5"
        );
    }

    #[test]
    fn urls_and_secrets_are_checked() {
        assert!(Webhook::new("ftp://x", vec![], "http://p").is_err());
        assert!(Webhook::new("not a url", vec![], "http://p").is_err());
        let hook = Webhook::new("http://127.0.0.1:9/hook", b"k".to_vec(), "http://cp:8080/")
            .expect("http hook");
        assert_eq!((hook.host.as_str(), hook.port), ("127.0.0.1", 9));
        assert_eq!(hook.page_base, "http://cp:8080");

        let dir = tempfile::tempdir().expect("tempdir");
        let (made, path) = secret(None, dir.path()).expect("generated");
        assert_eq!(path, dir.path().join(SECRET_FILE));
        assert_eq!(made.len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(secret(None, dir.path()).expect("kept").0, made);
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").expect("write");
        let e = secret(Some(&short), dir.path()).unwrap_err().to_string();
        assert!(e.contains("shorter than 16 bytes"), "{e}");
    }

    #[test]
    fn the_queue_drops_its_oldest_when_full() {
        let q = Queue::default();
        let record = |n: usize| ApprovalRecord {
            id: format!("ap_{n}"),
            call: tollgate_policy::approvals::CallKey {
                grant: String::new(),
                server: String::new(),
                tool: String::new(),
                arguments_sha256: String::new(),
            },
            node: String::new(),
            session: String::new(),
            arguments_json: String::new(),
            policy_version: String::new(),
            rule: String::new(),
            created_ms: 0,
            expires_ms: 0,
            state: ApprovalState::Pending,
            reason: String::new(),
            decided_by: String::new(),
            decided_ms: 0,
            used_by: String::new(),
            used_ms: 0,
        };
        for n in 0..QUEUE {
            assert!(q.push(record(n)).is_none());
        }
        assert_eq!(q.push(record(QUEUE)).map(|r| r.id), Some("ap_0".to_owned()));
        assert_eq!(q.items.lock().unwrap().len(), QUEUE);
    }
}
