//! A legacy HTTP+SSE (2024-11-05) client for hand-made requests: `GET` the
//! stream, read its `endpoint` event, and collect the messages it carries on
//! a thread of its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

/// A legacy HTTP+SSE client: the stream is read on a thread of its own.
pub struct SseClient {
    /// Where to POST messages (path and query on the sidecar).
    pub endpoint: String,
    events: mpsc::Receiver<Value>,
    /// Messages received but not yet asked for.
    pending: Vec<Value>,
    stream: TcpStream,
}

impl SseClient {
    /// `GET path` on the sidecar; waits for the `endpoint` event.
    pub fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let mut head = format!("GET {path} HTTP/1.1\r\nAccept: text/event-stream\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {addr}\r\n"));
        }
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let reader = BufReader::new(
            stream
                .try_clone()
                .unwrap_or_else(|e| panic!("cloning a socket: {e}")),
        );
        let (endpoint_tx, endpoint_rx) = mpsc::channel();
        let (events_tx, events) = mpsc::channel();
        std::thread::spawn(move || read_sse(reader, &endpoint_tx, &events_tx));
        let endpoint = endpoint_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("no endpoint event on {path}: {e}"))
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        SseClient {
            endpoint,
            events,
            pending: Vec::new(),
            stream,
        }
    }

    /// The message with this id (waits up to 10 s).
    pub fn answer(&mut self, label: &str, id: i64) -> Value {
        loop {
            if let Some(i) = self.pending.iter().position(|m| m["id"] == json!(id)) {
                return self.pending.remove(i);
            }
            match self.events.recv_timeout(Duration::from_secs(10)) {
                Ok(m) => self.pending.push(m),
                Err(e) => panic!(
                    "{label}: no answer with id {id} on the SSE stream ({e}); received: {:?}",
                    self.pending
                ),
            }
        }
    }
}

impl SseClient {
    /// Every message received so far (without waiting), besides those
    /// [`SseClient::answer`] took.
    pub fn received(&mut self) -> Vec<Value> {
        while let Ok(m) = self.events.try_recv() {
            self.pending.push(m);
        }
        self.pending.clone()
    }
}

impl Drop for SseClient {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Reads a chunked SSE response: the endpoint event's data goes to
/// `endpoint` (or, if the response is not a 200 stream, its status line and
/// body), each message (a batch's one by one) to `events`.
fn read_sse(
    mut reader: BufReader<TcpStream>,
    endpoint: &mpsc::Sender<Result<String, String>>,
    events: &mpsc::Sender<Value>,
) {
    let mut line = String::new();
    let mut status_line = String::new();
    let _ = reader.read_line(&mut status_line);
    let mut chunked = false;
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = endpoint.send(Err(format!(
                "the stream ended in its headers: {status_line}"
            )));
            return;
        }
        let l = line.trim().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
    }
    if !status_line.contains(" 200 ") || !chunked {
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        let _ = endpoint.send(Err(format!("{} {rest}", status_line.trim())));
        return;
    }
    let mut text = String::new();
    loop {
        // One chunk: its size in hex, the data, CRLF; size 0 ends the stream.
        let mut size = String::new();
        let _ = reader.read_line(&mut size);
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let mut data = vec![0; n + 2];
        if n == 0 || reader.read_exact(&mut data).is_err() {
            return;
        }
        data.truncate(n);
        text.push_str(&String::from_utf8_lossy(&data).replace("\r\n", "\n"));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut event = "message";
            let mut payload = Vec::new();
            for l in block.lines() {
                if let Some(v) = l.strip_prefix("event:") {
                    event = if v.trim() == "endpoint" {
                        "endpoint"
                    } else {
                        "message"
                    };
                } else if let Some(v) = l.strip_prefix("data:") {
                    payload.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
            let payload = payload.join("\n");
            if event == "endpoint" {
                let _ = endpoint.send(Ok(payload));
            } else if let Ok(v) = serde_json::from_str::<Value>(&payload) {
                let messages = match v {
                    Value::Array(items) => items,
                    one => vec![one],
                };
                for m in messages {
                    let _ = events.send(m);
                }
            }
        }
    }
}
