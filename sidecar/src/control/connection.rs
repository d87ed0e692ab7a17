//! The one HTTP/2 connection to the control plane that every stream rides.
//!
//! [`Connection::link`] hands out the channel in use, dialling it first when
//! there is none: the first stream to ask connects, a stream asking meanwhile
//! waits for that connection rather than opening its own. A stream that finds
//! the connection broken says so ([`Connection::broken`]); the next `link`
//! dials again, re-reading the TLS files ([`Dial::endpoint`]), so rotated
//! certificates are used from the next reconnect. A stream that still runs on
//! the old connection keeps it until it ends; a report of a connection
//! already replaced is ignored, so two streams that see the same failure
//! reconnect once, onto the same new connection.

use std::time::Duration;

use tokio::sync::Mutex;
use tonic::transport::Channel;

use super::ControlError;
use super::dial::{ClientTls, Dial};

/// The shared connection (see the module doc).
#[derive(Debug)]
pub struct Connection {
    dial: Dial,
    current: Mutex<Current>,
}

/// The channel in use, numbered so a stale report of breakage is recognised.
#[derive(Debug, Default)]
struct Current {
    generation: u64,
    channel: Option<Channel>,
}

/// The channel lent to one stream session.
#[derive(Debug, Clone)]
pub struct Link {
    generation: u64,
    channel: Channel,
}

impl Link {
    /// A handle on the shared channel (cheap: channels are shared handles).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

/// Why there is no connection.
#[derive(Debug)]
pub enum Unreachable {
    /// The TLS files cannot be read or used.
    Setup(String),
    /// No connection could be made.
    Connect(tonic::transport::Error),
}

impl Connection {
    /// Checks the URL and its TLS files' pairing; connects only on first use.
    pub fn new(url: &str, tls: Option<ClientTls>) -> Result<Self, ControlError> {
        Ok(Self {
            dial: Dial::new(url, tls)?,
            current: Mutex::new(Current::default()),
        })
    }

    /// The control plane's URL.
    pub fn url(&self) -> &str {
        self.dial.url()
    }

    /// The channel in use, connecting first when there is none.
    pub async fn link(&self) -> Result<Link, Unreachable> {
        // Held while connecting: a stream asking meanwhile gets this connection.
        let mut current = self.current.lock().await;
        if let Some(channel) = &current.channel {
            return Ok(Link {
                generation: current.generation,
                channel: channel.clone(),
            });
        }
        let endpoint = self
            .dial
            .endpoint()
            .map_err(Unreachable::Setup)?
            .connect_timeout(Duration::from_secs(5))
            // Notice a dead control plane (or a NAT that dropped the flow)
            // while the streams are idle, rather than waiting forever.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await.map_err(Unreachable::Connect)?;
        current.generation += 1;
        current.channel = Some(channel.clone());
        Ok(Link {
            generation: current.generation,
            channel,
        })
    }

    /// Forgets `link`'s connection, unless it was replaced already: the next
    /// [`Connection::link`] dials afresh.
    pub async fn broken(&self, link: &Link) {
        let mut current = self.current.lock().await;
        if current.generation == link.generation {
            current.channel = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_share_one_connection_until_it_is_reported_broken() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let connection = Connection::new(&format!("http://{addr}"), None).expect("dial");
        let accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let a = connection.link().await.expect("connect");
        let b = connection.link().await.expect("shared");
        assert_eq!(a.generation, b.generation, "one connection for both");
        connection.broken(&a).await;
        // The second report names a connection already forgotten: no effect.
        let c = connection.link().await.expect("reconnect");
        connection.broken(&b).await;
        let d = connection.link().await.expect("still the new one");
        assert_eq!(c.generation, a.generation + 1);
        assert_eq!(d.generation, c.generation);
        accepting.abort();
    }
}
