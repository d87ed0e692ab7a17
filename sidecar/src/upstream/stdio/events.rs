//! The SSE body of the bridge's POST and GET streams.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body::Frame;
use tokio::sync::mpsc;

use crate::upstream::http::{Body, BoxError};

pub(super) fn event_stream(events: Events) -> Response<Body> {
    let mut resp = Response::new(Body::boxed(events));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// An SSE body: `first`, then what arrives on `rx` until every sender is gone.
pub(super) struct Events {
    pub(super) first: VecDeque<Bytes>,
    pub(super) rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for Events {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(event) = self.first.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(event))));
        }
        self.rx
            .poll_recv(cx)
            .map(|event| event.map(|e| Ok(Frame::data(e))))
    }
}
