//! How the CLI reaches a control plane: its address (checked against
//! `--ca` when it speaks TLS), and the operator token sent as
//! `authorization: Bearer …` on every call. The token comes from
//! `--token-file` (or `TOLLGATE_TOKEN_FILE`), else from `TOLLGATE_TOKEN`;
//! without one, calls go out bare and the control plane's refusal says how
//! to get one.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use tollgate_proto::v1::admin_client::AdminClient;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// The admin API client every command uses.
pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

/// Where the control plane is and who the operator is.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The control plane's gRPC URL.
    pub addr: String,
    /// The file holding the operator token; wins over `TOLLGATE_TOKEN`.
    pub token_file: Option<PathBuf>,
    /// The CA (PEM) that signed an `https://` control plane's certificate.
    pub ca: Option<PathBuf>,
}

/// Adds the operator token to every call, if there is one.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Sends `token` (`tgt_…`); `None` if it is not printable ASCII.
    pub fn token(token: &str) -> Option<Self> {
        let value = format!("Bearer {token}").parse().ok()?;
        Some(Bearer(Some(value)))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl Remote {
    /// Connects to the control plane with the operator's token.
    pub async fn connect(&self) -> anyhow::Result<Admin> {
        let bearer = self.bearer()?;
        let addr = &self.addr;
        let mut endpoint = Endpoint::from_shared(addr.clone())
            .with_context(|| format!("--addr {addr:?} is not a URL like https://HOST:PORT"))?;
        match (addr.starts_with("https://"), &self.ca) {
            (true, Some(ca)) => {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("cannot read --ca {}", ca.display()))?;
                endpoint = endpoint
                    .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                    .with_context(|| format!("--ca {} cannot be used", ca.display()))?;
            }
            (true, None) => bail!(
                "{addr} speaks TLS: pass --ca (or set TOLLGATE_CA) with the CA that signed its \
                 certificate (ca.pem from `tollgate certs init`)"
            ),
            (false, _) => {}
        }
        let channel = endpoint.connect().await.with_context(|| {
            format!("cannot reach the control plane at {addr} (set --addr or TOLLGATE_ADDR)")
        })?;
        Ok(AdminClient::with_interceptor(channel, bearer))
    }

    fn bearer(&self) -> anyhow::Result<Bearer> {
        let (token, source) = match &self.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!(
                        "cannot read the operator token in --token-file {}",
                        path.display()
                    )
                })?;
                (text, format!("--token-file {}", path.display()))
            }
            None => match std::env::var("TOLLGATE_TOKEN") {
                Ok(text) => (text, "TOLLGATE_TOKEN".to_owned()),
                Err(_) => return Ok(Bearer(None)),
            },
        };
        let token = token.trim();
        if token.is_empty() {
            bail!("{source} is empty; it should hold an operator token (tgt_…)");
        }
        Bearer::token(token)
            .ok_or_else(|| anyhow!("the operator token in {source} is not printable ASCII"))
    }
}

/// Turns a failed call into an error saying what was attempted and the
/// control plane's answer (`UNAUTHENTICATED: no operator token: …`).
pub trait Answer<T> {
    fn answer(self, attempted: &str) -> anyhow::Result<T>;
}

impl<T> Answer<T> for Result<T, Status> {
    fn answer(self, attempted: &str) -> anyhow::Result<T> {
        self.map_err(|s| anyhow!("{attempted}: {}: {}", code_name(s.code()), s.message()))
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
