//! Server-Sent Events framing for MCP Streamable HTTP (WHATWG HTML, "Server-sent
//! events", §9.2.6 "Interpreting an event stream").
//!
//! Upstream responses are streamed event by event, never buffered whole
//! (ARCHITECTURE.md §2). [`SseParser`] takes body chunks as they arrive — split
//! anywhere, even inside a CRLF pair or a UTF-8 sequence — and hands back one
//! [`Event`] per block of lines ended by a blank line. Each event keeps its
//! exact original bytes in [`Event::raw`], so the proxy forwards what policy
//! does not touch byte for byte and re-serialises ([`Event::to_bytes`],
//! [`write_event`]) only the events it changes.
//!
//! Forwarding is lossless: the `raw` of every event, in order, followed by
//! [`SseParser::finish`], is exactly the input. That is why every block is an
//! event, including blocks of comments only (keep-alives) and stray blank
//! lines, which a browser would not dispatch.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

/// The UTF-8 byte order mark, stripped once at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One block of an event stream.
///
/// Fields hold what this block set, as a client would read them: text is
/// UTF-8 with invalid sequences replaced by U+FFFD, and none of them contains
/// CR or LF except `data`, whose lines are joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The last valid `id` field of this block (`Some("")` resets the client's
    /// last event ID). Clients keep the last ID across events; the parser does
    /// not, so `None` means only "this block set none".
    pub id: Option<String>,
    /// The last `event` field of this block; `None` means a `message` event.
    pub event: Option<String>,
    /// The `data` lines joined with `\n`; empty when the block has none — a
    /// comment-only keep-alive, or a block a client would not dispatch.
    pub data: String,
    /// The last valid `retry` field of this block: the reconnection time in
    /// milliseconds.
    pub retry: Option<u64>,
    /// The block's exact bytes, from its first byte through the line ending of
    /// the blank line that ends it, comments included. The first event's
    /// `raw` includes a leading byte order mark. When a chunk ends between the
    /// CR and LF of a blank line's CRLF, the event is handed back at the CR and
    /// the LF leads the next event's `raw` (a client reads it as part of the
    /// CRLF, so nothing changes): the event is not held back waiting for a
    /// byte that may never come.
    pub raw: Bytes,
}

impl Event {
    /// The event serialised afresh, ending in a blank line; see
    /// [`write_event`]. A `retry` is written too; comments are not.
    pub fn to_bytes(&self) -> Bytes {
        write(
            self.id.as_deref(),
            self.event.as_deref(),
            self.retry,
            &self.data,
        )
    }
}

/// Serialises one event: `id`, `event`, then `data` split at every CRLF, CR
/// or LF into one `data:` line each, then a blank line. Lines end in LF.
///
/// A client reads back the same `id`, `event` and `data`, except that line
/// breaks in `data` come back as `\n`, CR and LF in `id` and `event` (which
/// SSE cannot carry) are dropped, and an `id` containing NUL is ignored. An
/// empty `data` writes no `data:` line, so clients do not dispatch the event.
pub fn write_event(id: Option<&str>, event: Option<&str>, data: &str) -> Bytes {
    write(id, event, None, data)
}

fn write(id: Option<&str>, event: Option<&str>, retry: Option<u64>, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    if let Some(id) = id {
        put_field(&mut out, "id", &one_line(id));
    }
    if let Some(event) = event {
        put_field(&mut out, "event", &one_line(event));
    }
    if let Some(retry) = retry {
        put_field(&mut out, "retry", &retry.to_string());
    }
    if !data.is_empty() {
        let mut rest = data;
        while let Some(i) = rest.find(['\r', '\n']) {
            put_field(&mut out, "data", &rest[..i]);
            let ending = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
            rest = &rest[i + ending..];
        }
        put_field(&mut out, "data", rest);
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// `name: value`; the space is always written so that a value starting with a
/// space keeps it (a reader strips exactly one).
fn put_field(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_u8(b'\n');
}

fn one_line(s: &str) -> Cow<'_, str> {
    if s.contains(['\r', '\n']) {
        Cow::Owned(s.replace(['\r', '\n'], ""))
    } else {
        Cow::Borrowed(s)
    }
}

/// Why an event stream cannot be read further. Fatal: the stream should be
/// ended, since what follows cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One event is bigger than the parser may buffer.
    #[error(
        "the upstream sent an SSE event larger than {limit} bytes, the most the sidecar buffers for \
         one event; raise the event size limit or have the server send smaller events"
    )]
    EventTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
}

/// An incremental event stream parser.
///
/// ```text
/// parser.push(chunk);
/// while let Some(event) = parser.next_event()? { /* forward event.raw, or rewrite */ }
/// // at end of stream:
/// let tail = parser.finish(); // forward too
/// ```
#[derive(Debug)]
pub struct SseParser {
    /// The bytes of the current block, not yet handed back.
    buf: BytesMut,
    /// How far into `buf` lines have been read into `block`.
    scanned: usize,
    /// Where the current block's content starts in `buf`: 1 when `buf` begins
    /// with the LF of a CRLF whose CR ended the previous block, else 0.
    start: usize,
    /// The last line read ended in CR at the end of the input so far: an LF
    /// next belongs to that line ending.
    after_cr: bool,
    /// Whether the stream's first bytes have been checked for a BOM.
    bom_checked: bool,
    block: Block,
    max_event_bytes: usize,
    failed: bool,
}

/// Fields read so far from the current block.
#[derive(Debug, Default)]
struct Block {
    id: Option<String>,
    event: Option<String>,
    data: String,
    has_data: bool,
    retry: Option<u64>,
}

impl SseParser {
    /// A parser that buffers at most `max_event_bytes` of one event: the bytes
    /// of a block before the line ending of its blank line (or, at the end of
    /// the stream, of an unterminated block). A bigger event is an
    /// [`SseError::EventTooLarge`], however the stream is split into chunks.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            buf: BytesMut::new(),
            scanned: 0,
            start: 0,
            after_cr: false,
            bom_checked: false,
            block: Block::default(),
            max_event_bytes,
            failed: false,
        }
    }

    /// Adds the next chunk of the body. Cheap: no parsing happens until
    /// [`next_event`](Self::next_event).
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        if self.buf.is_empty() {
            // No copy when the chunk's buffer is not shared.
            self.buf = BytesMut::from(chunk);
        } else {
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next complete event, or `None` until more input is pushed.
    ///
    /// Call it until it returns `None` after every [`push`](Self::push). An
    /// error is final: every later call returns it again.
    pub fn next_event(&mut self) -> Result<Option<Event>, SseError> {
        if self.failed {
            return Err(self.too_large());
        }
        if !self.bom_checked {
            let n = self.buf.len().min(BOM.len());
            if self.buf[..n] != BOM[..n] {
                self.bom_checked = true;
            } else if n == BOM.len() {
                self.bom_checked = true;
                self.scanned = BOM.len();
            } else {
                // Could still be a BOM.
                return self.check_size(self.buf.len()).map(|()| None);
            }
        }
        loop {
            if self.after_cr && self.scanned < self.buf.len() {
                self.after_cr = false;
                if self.buf[self.scanned] == b'\n' {
                    self.scanned += 1;
                    if self.scanned == 1 {
                        // The LF ending the CR that ended the last event.
                        self.start = 1;
                    }
                }
            }
            let Some(offset) = self.buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
            else {
                return self.check_size(self.buf.len()).map(|()| None);
            };
            let line_end = self.scanned + offset;
            self.check_size(line_end)?;
            let mut next = line_end + 1;
            if self.buf[line_end] == b'\r' {
                match self.buf.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let line_start = self.scanned;
            self.scanned = next;
            if line_start == line_end {
                return Ok(Some(self.dispatch()));
            }
            let line = &self.buf[line_start..line_end];
            self.block.read_line(line);
        }
    }

    /// Ends the stream: the bytes not handed back in an event, to be forwarded
    /// as they are. Call it once [`next_event`](Self::next_event) has returned
    /// `None`.
    ///
    /// These bytes are a block with no blank line after it (possibly with an
    /// unfinished last line). Browsers discard such an event, but a lenient
    /// client may not: to see what it would read, parse the tail followed by
    /// `"\n\n"`.
    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }

    fn dispatch(&mut self) -> Event {
        let raw = self.buf.split_to(self.scanned).freeze();
        self.scanned = 0;
        self.start = 0;
        let block = std::mem::take(&mut self.block);
        Event {
            id: block.id,
            event: block.event,
            data: block.data,
            retry: block.retry,
            raw,
        }
    }

    /// Fails once the current block holds more than the limit, `end` being
    /// where in `buf` the block's bytes counted so far end.
    fn check_size(&mut self, end: usize) -> Result<(), SseError> {
        if end.saturating_sub(self.start) > self.max_event_bytes {
            self.failed = true;
            return Err(self.too_large());
        }
        Ok(())
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge {
            limit: self.max_event_bytes,
        }
    }
}

impl Block {
    /// Reads one non-empty line, without its line ending.
    fn read_line(&mut self, line: &[u8]) {
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return, // a comment
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        // CR and LF never occur inside a UTF-8 sequence, so decoding line by
        // line replaces exactly what decoding the whole stream would.
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.has_data = true;
                self.data.push_str(&String::from_utf8_lossy(value));
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned())
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // Too many digits for a u64: ignored, like any other bad value.
                if let Some(ms) = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()) {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;
