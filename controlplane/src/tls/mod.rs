//! The control plane's transport security: TLS on both ports with files
//! re-read as they rotate ([`acceptor`]), node identity from client
//! certificates ([`peer`]), and development certificates ([`certs`]).

pub mod acceptor;
pub mod certs;
pub mod peer;

pub use acceptor::{ReloadingConfig, TlsError, TlsFiles};
pub use peer::NodeIdentity;
