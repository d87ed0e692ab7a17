//! An upstream SSE response streamed back event by event, with `tools/list`
//! results filtered and the sidecar's own answers (for refused calls of a
//! batch) sent first. Events policy does not touch are forwarded byte for
//! byte, and only events that may hold a list reply are parsed. On a POST's
//! stream, once every `tools/list` reply it awaits has passed, the rest is
//! relayed without parsing; a GET stream (which a client may resume with
//! `Last-Event-ID`, replaying earlier replies) is watched to its end.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http::header;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tollgate_policy::{Annotations, Listing};

use crate::mcp::answer;
use crate::mcp::list_filter::{self, ListIds};
use crate::mcp::sse::{SseParser, write_event};
use crate::state::Route;
use crate::upstream::http::{Body, BoxError};

/// The largest single SSE event parsed while `tools/list` results are awaited.
const MAX_EVENT: usize = 16 << 20;

struct Filter<L> {
    body: Body,
    parser: Option<SseParser>,
    out: VecDeque<Bytes>,
    ids: ListIds,
    /// List replies still awaited; `None`: watch the whole stream.
    awaited: Option<usize>,
    listing: L,
    route: Arc<Route>,
    ended: bool,
}

/// Whether a response's `Content-Type` is `text/event-stream`.
pub fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

/// Wraps an SSE response; see the module docs.
pub fn filter_stream<L>(
    ids: &ListIds,
    route: &Arc<Route>,
    resp: Response<Body>,
    awaited: Option<usize>,
    answers: Vec<Bytes>,
    listing: L,
) -> Response<Body>
where
    L: Fn(&str, Option<&Annotations>) -> Listing + Send + Sync + 'static,
{
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let state = Filter {
        body,
        parser: (awaited != Some(0)).then(|| SseParser::new(MAX_EVENT)),
        out: answers.iter().map(|a| answer::sse_event(a)).collect(),
        ids: ids.clone(),
        awaited,
        listing,
        route: Arc::clone(route),
        ended: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let item = st.next().await?;
        Some((item, st))
    });
    Response::from_parts(parts, Body::boxed(StreamBody::new(stream)))
}

impl<L: Fn(&str, Option<&Annotations>) -> Listing> Filter<L> {
    async fn next(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        loop {
            if let Some(bytes) = self.out.pop_front() {
                return Some(Ok(Frame::data(bytes)));
            }
            if let Some(parser) = &mut self.parser {
                match parser.next_event() {
                    Ok(Some(event)) => {
                        // Parsed whatever its spelling (`"\u0074ools"` is `"tools"`).
                        let rewritten = ListIds::may_hold_list(event.data.as_bytes())
                            .then(|| self.filter(&event.data))
                            .flatten();
                        self.out.push_back(match rewritten {
                            Some(data) => {
                                write_event(event.id.as_deref(), event.event.as_deref(), &data)
                            }
                            None => event.raw,
                        });
                        if self.awaited == Some(0) {
                            // Nothing more to filter: relay the rest as it comes.
                            if let Some(tail) = self
                                .parser
                                .take()
                                .map(SseParser::finish)
                                .filter(|t| !t.is_empty())
                            {
                                self.out.push_back(tail);
                            }
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(server = %self.route.server, "{e}");
                        return Some(Err(Box::new(e)));
                    }
                }
            }
            if self.ended {
                if let Some(tail) = self
                    .parser
                    .take()
                    .map(SseParser::finish)
                    .filter(|t| !t.is_empty())
                {
                    self.out.push_back(tail);
                    continue;
                }
                return None;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match &mut self.parser {
                        Some(p) => p.push(data),
                        None => return Some(Ok(Frame::data(data))),
                    },
                    Err(frame) => return Some(Ok(frame)),
                },
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    self.ended = true;
                    // A last event without its blank line is still read by
                    // lenient clients, so it is parsed (and filtered) too.
                    if let Some(p) = &mut self.parser {
                        p.push(Bytes::from_static(b"\n\n"));
                    }
                }
            }
        }
    }

    /// The event's data with `tools/list` results filtered, if it changed.
    fn filter(&mut self, data: &str) -> Option<String> {
        let filtered = list_filter::filter(data.as_bytes(), &self.ids, &self.listing);
        self.route.learn(filtered.seen);
        if let Some(n) = &mut self.awaited {
            *n = n.saturating_sub(filtered.matched);
        }
        filtered.bytes.and_then(|f| String::from_utf8(f).ok())
    }
}
