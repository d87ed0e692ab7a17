//! Newline-delimited reading of the child's stdout and stderr.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// One line read, without its `\n`.
pub(super) enum Line {
    Complete(Vec<u8>),
    /// A line over the limit: its first bytes; the rest was skipped.
    TooLong(Vec<u8>),
}

/// Newline-delimited reading with a bound on one line.
pub(super) struct Lines<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
    max: usize,
    overflow: bool,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    pub(super) fn new(reader: R, max: usize) -> Self {
        Lines {
            reader: BufReader::new(reader),
            buf: Vec::new(),
            max,
            overflow: false,
        }
    }

    /// The next line, or `None` at the end. Cancel safe: a partial line
    /// stays in `self` for the next call.
    pub(super) async fn next(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                if self.buf.is_empty() && !self.overflow {
                    return Ok(None);
                }
                return Ok(Some(self.take()));
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let part = &chunk[..newline.unwrap_or(chunk.len())];
            let room = self.max.saturating_sub(self.buf.len());
            if part.len() > room {
                self.overflow = true;
            }
            self.buf.extend_from_slice(&part[..part.len().min(room)]);
            let used = newline.map_or(chunk.len(), |i| i + 1);
            self.reader.consume(used);
            if newline.is_some() {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> Line {
        let line = std::mem::take(&mut self.buf);
        if std::mem::take(&mut self.overflow) {
            Line::TooLong(line)
        } else {
            Line::Complete(line)
        }
    }
}
