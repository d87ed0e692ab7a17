//! One legacy session's SSE stream relayed to its client: the upstream's
//! `endpoint` event rewritten to the sidecar's message endpoint, `tools/list`
//! results filtered, the sidecar's answers injected between events. The
//! session ends with the stream, however it ends.

use std::sync::Arc;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::sessions::{SseSession, SseSessions, lock};
use crate::mcp::answer;
use crate::mcp::list_filter::{self, ListIds};
use crate::mcp::sse::{Event, SseParser, write_event};
use crate::snapshot::{self, LivePolicy};
use crate::state::Route;
use crate::upstream::http::{Body, BoxError};

/// The largest SSE event parsed on a legacy stream.
const MAX_EVENT: usize = 16 << 20;

/// The state of one relayed stream.
pub struct Relay {
    body: Body,
    parser: SseParser,
    inject: mpsc::Receiver<Bytes>,
    session: Arc<SseSession>,
    sessions: Arc<SseSessions>,
    key: String,
    route: Arc<Route>,
    sse_path: String,
    policy: Arc<LivePolicy>,
    list_ids: ListIds,
    ended: bool,
}

/// The session ends with its stream, however it ends: the upstream closing
/// it, or the client going away (hyper drops the body).
impl Drop for Relay {
    fn drop(&mut self) {
        self.sessions.remove(&self.key);
    }
}

/// Where a relay's parts come from.
pub struct Parts {
    /// The upstream's SSE body.
    pub body: Body,
    /// The answers to inject.
    pub inject: mpsc::Receiver<Bytes>,
    /// The session.
    pub session: Arc<SseSession>,
    /// The table it is in.
    pub sessions: Arc<SseSessions>,
    /// Its key.
    pub key: String,
    /// Its route.
    pub route: Arc<Route>,
    /// The upstream SSE endpoint's path (relative endpoints resolve against it).
    pub sse_path: String,
    /// The policy, read at each list reply.
    pub policy: Arc<LivePolicy>,
    /// The ids forwarded `tools/list` requests carry.
    pub list_ids: ListIds,
}

impl Relay {
    /// A relay over `parts`.
    pub fn new(p: Parts) -> Self {
        Self {
            body: p.body,
            parser: SseParser::new(MAX_EVENT),
            inject: p.inject,
            session: p.session,
            sessions: p.sessions,
            key: p.key,
            route: p.route,
            sse_path: p.sse_path,
            policy: p.policy,
            list_ids: p.list_ids,
            ended: false,
        }
    }

    /// The next frame for the client.
    pub async fn next(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        loop {
            match self.parser.next_event() {
                Ok(Some(event)) => return Some(Ok(Frame::data(self.rewrite(event)))),
                Ok(None) => {}
                Err(e) => return Some(Err(Box::new(e))),
            }
            if self.ended {
                return None;
            }
            tokio::select! {
                injected = self.inject.recv() => {
                    if let Some(bytes) = injected {
                        return Some(Ok(Frame::data(answer::sse_event(&bytes))));
                    }
                }
                frame = self.body.frame() => match frame {
                    Some(Ok(f)) => match f.into_data() {
                        Ok(data) => self.parser.push(data),
                        Err(other) => return Some(Ok(other)),
                    },
                    Some(Err(e)) => return Some(Err(e)),
                    None => {
                        self.ended = true;
                        // A last event without its blank line is still read
                        // by lenient clients: parse it like the others.
                        self.parser.push(Bytes::from_static(b"\n\n"));
                    }
                },
            }
        }
    }

    /// Rewrites the `endpoint` event and filters `tools/list` results.
    fn rewrite(&mut self, event: Event) -> Bytes {
        if event.event.as_deref() == Some("endpoint") {
            let upstream = resolve(&self.sse_path, event.data.trim());
            *lock(&self.session.upstream_endpoint) = Some(upstream);
            let ours = format!("{}/message?tg={}", self.route.path, self.key);
            return write_event(event.id.as_deref(), Some("endpoint"), &ours);
        }
        // Parsed whatever its spelling (`"\u0074ools"` is `"tools"`).
        if !ListIds::may_hold_list(event.data.as_bytes()) {
            return event.raw;
        }
        let filtered = list_filter::filter(
            event.data.as_bytes(),
            &self.list_ids,
            snapshot::listing(
                self.policy.load(),
                Arc::clone(&self.route.server),
                Arc::clone(&self.session.grant),
            ),
        );
        self.route.learn(filtered.seen);
        match filtered.bytes.and_then(|f| String::from_utf8(f).ok()) {
            Some(data) => write_event(event.id.as_deref(), event.event.as_deref(), &data),
            None => event.raw,
        }
    }
}

/// The upstream's message endpoint as a path and query on the upstream.
fn resolve(sse_path: &str, endpoint: &str) -> String {
    if let Some(rest) = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
    {
        return rest
            .find('/')
            .map_or_else(|| "/".to_owned(), |i| rest[i..].to_owned());
    }
    if endpoint.starts_with('/') {
        return endpoint.to_owned();
    }
    let dir = sse_path.rfind('/').map_or("", |i| &sse_path[..i]);
    format!("{dir}/{endpoint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve_against_the_sse_path() {
        assert_eq!(
            resolve("/sse", "/messages?sessionId=a"),
            "/messages?sessionId=a"
        );
        assert_eq!(resolve("/x/sse", "messages?s=1"), "/x/messages?s=1");
        assert_eq!(
            resolve("/sse", "http://127.0.0.1:3001/messages?s=1"),
            "/messages?s=1"
        );
    }
}
