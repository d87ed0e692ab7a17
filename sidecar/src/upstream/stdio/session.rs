//! MCP sessions and where the child's messages go: to the POST stream that
//! carried the request, to the one whose request gave a progress token, to
//! the most recent open POST stream, to the GET stream, or to a bounded
//! backlog for the next GET stream.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::error::BridgeError;
use super::events::{Events, event_stream};
use super::lock;
use crate::mcp::peek::{Kind, Message};
use crate::upstream::http::{Body, full};

/// One MCP session: one child process and the streams its output goes to.
pub(super) struct Session {
    pub(super) id: String,
    /// The grant that started it (`None`: a caller the sidecar did not name).
    pub(super) grant: Option<std::sync::Arc<str>>,
    pub(super) stdin: mpsc::Sender<Bytes>,
    /// Set to end the session (DELETE, or a failed first POST).
    pub(super) stop: watch::Sender<bool>,
    pub(super) routing: Mutex<Routing>,
}

/// Where the child's messages go. Locked briefly, never across an await.
pub(super) struct Routing {
    /// The child is gone or going: no new messages or streams.
    pub(super) ended: bool,
    /// Open POST streams, oldest first.
    pub(super) streams: Vec<PostStream>,
    pub(super) next_stream: u64,
    pub(super) get: Option<mpsc::Sender<Bytes>>,
    /// Messages for a GET stream not open yet.
    pub(super) backlog: VecDeque<Bytes>,
    pub(super) last_active: Instant,
}

pub(super) struct PostStream {
    id: u64,
    pub(super) tx: mpsc::Sender<Bytes>,
    /// The requests it carried that are not answered yet.
    pub(super) waiting: Vec<Waiting>,
    /// The progress tokens its requests gave, canonical JSON.
    progress: Vec<String>,
}

pub(super) struct Waiting {
    /// The id as canonical JSON, to match the child's response.
    key: String,
    pub(super) id: Box<RawValue>,
}

/// Where one of the child's messages is to go.
pub(super) enum Destination {
    Response(String),
    Progress(String),
    Any,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Channel {
    Post(u64),
    Get,
}

enum Pick {
    Send(Channel, mpsc::Sender<Bytes>, Bytes),
    /// Kept for the next GET stream.
    Backlogged,
    /// A response to no open stream's request (its client went away, or
    /// cancelled it): nobody waits for it.
    Orphan,
    Ended,
}

impl Session {
    pub(super) fn routing(&self) -> MutexGuard<'_, Routing> {
        lock(&self.routing)
    }

    /// Writes a POST's messages to the child: 202 when it has no requests,
    /// else an event stream that ends once they are all answered.
    pub(super) async fn post(
        &self,
        messages: &[Message<'_>],
        stream_buffer: usize,
    ) -> Result<Response<Body>, BridgeError> {
        let mut waiting: Vec<Waiting> = Vec::new();
        let mut progress = Vec::new();
        let mut cancelled = Vec::new();
        for m in messages {
            match (m.kind, m.id) {
                (Kind::Request, Some(id)) => {
                    let key = canonical(id);
                    if waiting.iter().any(|w| w.key == key) {
                        return Err(BridgeError::DuplicateId(key));
                    }
                    if let Some(token) =
                        field(m.raw, "progressToken", "/params/_meta/progressToken")
                    {
                        progress.push(token.to_string());
                    }
                    waiting.push(Waiting {
                        key,
                        id: id.to_owned(),
                    });
                }
                _ if m.method() == "notifications/cancelled" => {
                    if let Some(id) = field(m.raw, "requestId", "/params/requestId") {
                        cancelled.push(id.to_string());
                    }
                }
                _ => {}
            }
        }
        let events = {
            let mut r = self.routing();
            if r.ended {
                return Err(BridgeError::UnknownSession);
            }
            r.last_active = Instant::now();
            for key in &cancelled {
                r.answered(key);
            }
            if let Some(w) = waiting.iter().find(|w| {
                r.streams
                    .iter()
                    .any(|s| s.waiting.iter().any(|o| o.key == w.key))
            }) {
                return Err(BridgeError::DuplicateId(w.key.clone()));
            }
            if waiting.is_empty() {
                None
            } else {
                let (tx, rx) = mpsc::channel(stream_buffer);
                r.next_stream += 1;
                let id = r.next_stream;
                r.streams.push(PostStream {
                    id,
                    tx,
                    waiting,
                    progress,
                });
                Some(rx)
            }
        };
        // One write for the whole POST: it waits for room in the queue at
        // most once, and the child reads the POSTs in the order they came.
        let mut lines = Vec::with_capacity(messages.iter().map(|m| m.raw.len() + 1).sum());
        for m in messages {
            lines.extend(one_line(m.raw));
            lines.push(b'\n');
        }
        if self.stdin.send(Bytes::from(lines)).await.is_err() && events.is_none() {
            // The child is going. Requests registered above are answered
            // by the session's end; a POST without requests is refused.
            return Err(BridgeError::UnknownSession);
        }
        Ok(match events {
            None => {
                let mut resp = Response::new(full(Bytes::new()));
                *resp.status_mut() = StatusCode::ACCEPTED;
                resp
            }
            Some(rx) => event_stream(Events {
                first: VecDeque::new(),
                rx,
            }),
        })
    }

    /// Sends one of the child's messages where it belongs, waiting while
    /// that stream is full; false if it was dropped. A stream whose client
    /// went away is forgotten and the message goes to the next choice.
    pub(super) async fn deliver(&self, to: &Destination, mut event: Bytes, backlog: usize) -> bool {
        loop {
            let (channel, tx, e) = match self.routing().pick(to, event, backlog) {
                Pick::Send(channel, tx, e) => (channel, tx, e),
                Pick::Backlogged => return true,
                Pick::Orphan | Pick::Ended => return false,
            };
            match tx.send(e).await {
                Ok(()) => return true,
                Err(mpsc::error::SendError(e)) => {
                    self.routing().forget(channel);
                    if let Destination::Response(_) = to {
                        return false;
                    }
                    event = e;
                }
            }
        }
    }

    /// Whether nothing has happened for `idle`. An open stream counts as
    /// activity, so its session's next check is `idle` from now.
    pub(super) fn is_idle(&self, idle: Duration) -> bool {
        let mut r = self.routing();
        if !r.streams.is_empty() || r.get.as_ref().is_some_and(|g| !g.is_closed()) {
            r.last_active = Instant::now();
            return false;
        }
        r.last_active.elapsed() >= idle
    }
}

impl Routing {
    fn pick(&mut self, to: &Destination, event: Bytes, backlog: usize) -> Pick {
        if self.ended {
            return Pick::Ended;
        }
        self.last_active = Instant::now();
        let stream = match to {
            Destination::Response(key) => {
                let Some(i) = self
                    .streams
                    .iter()
                    .position(|s| s.waiting.iter().any(|w| w.key == *key))
                else {
                    return Pick::Orphan;
                };
                let s = &mut self.streams[i];
                let id = s.id;
                s.waiting.retain(|w| w.key != *key);
                // The last answer takes the stream's sender with it, so the
                // stream ends once it is sent.
                let tx = if s.waiting.is_empty() {
                    self.streams.remove(i).tx
                } else {
                    s.tx.clone()
                };
                return Pick::Send(Channel::Post(id), tx, event);
            }
            Destination::Progress(token) => self
                .streams
                .iter()
                .rev()
                .find(|s| s.progress.contains(token))
                .or(self.streams.last()),
            Destination::Any => self.streams.last(),
        };
        if let Some(s) = stream {
            return Pick::Send(Channel::Post(s.id), s.tx.clone(), event);
        }
        if let Some(g) = &self.get {
            return Pick::Send(Channel::Get, g.clone(), event);
        }
        if self.backlog.len() >= backlog {
            tracing::warn!(
                "no GET stream has read the last {backlog} server messages; dropping the oldest"
            );
            self.backlog.pop_front();
        }
        self.backlog.push_back(event);
        Pick::Backlogged
    }

    fn forget(&mut self, channel: Channel) {
        match channel {
            Channel::Post(id) => self.streams.retain(|s| s.id != id),
            Channel::Get => self.get = None,
        }
    }

    /// A request answered or cancelled: its stream ends if it was the last.
    fn answered(&mut self, key: &str) {
        for s in &mut self.streams {
            s.waiting.retain(|w| w.key != key);
        }
        self.streams.retain(|s| !s.waiting.is_empty());
    }
}

pub(super) fn destination(m: &Message<'_>) -> Destination {
    match (m.kind, m.id) {
        (Kind::Response, Some(id)) => Destination::Response(canonical(id)),
        (Kind::Notification, _) if m.method() == "notifications/progress" => {
            match field(m.raw, "progressToken", "/params/progressToken") {
                Some(token) => Destination::Progress(token.to_string()),
                None => Destination::Any,
            }
        }
        _ => Destination::Any,
    }
}

/// A JSON value as canonical text, so that `1` and `1.0`, or escapes in
/// strings, compare as the child's JSON library will have read them.
fn canonical(raw: &RawValue) -> String {
    serde_json::from_str::<Value>(raw.get())
        .map(|v| v.to_string())
        .unwrap_or_else(|_| raw.get().to_owned())
}

/// The value at `pointer` in a message, parsed only if `name` occurs in it.
fn field(raw: &[u8], name: &str, pointer: &str) -> Option<Value> {
    if !raw.windows(name.len()).any(|w| w == name.as_bytes()) {
        return None;
    }
    let value: Value = serde_json::from_slice(raw).ok()?;
    value.pointer(pointer).filter(|v| !v.is_null()).cloned()
}

/// A message on one line. In valid JSON a raw CR or LF can only be
/// whitespace between tokens (inside strings they are escaped), so replacing
/// them keeps the message as it was.
pub(super) fn one_line(raw: &[u8]) -> Vec<u8> {
    raw.trim_ascii()
        .iter()
        .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b })
        .collect()
}
