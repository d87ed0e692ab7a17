//! A closed-loop load generator for an MCP endpoint.
//!
//! `--connections` keep-alive HTTP/1.1 connections each send a ~1 KB
//! `tools/call` (`accept: application/json, text/event-stream`), wait for the
//! whole response, and send the next, until `--warmup` + `--duration`
//! seconds have passed (or `--max-requests` per connection were sent). Only
//! responses completed inside the measured window (after the warm-up) count
//! towards the rate and the latency histogram; failures count at any time.
//!
//! A response is good when it is HTTP 200 and its body is the upstream's
//! result for this request's id (`"id":<id>` and `"isError":false`): the
//! sidecar answers refusals with HTTP 200 too, so the status alone would not
//! tell a refused call from a forwarded one.
//!
//! `--watch NAME:PID` (repeatable; PID `self` is the generator) samples the
//! process's CPU time (utime and stime of /proc/PID/stat) at the start and
//! end of the measured window.
//!
//! Prints one line: `RESULT label=… rps=… p50_us=… p99_us=… … errors=…`,
//! and exits 3 (after saying so loudly on stderr) if any request failed.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tollgate_loadtest::{CallTemplate, Flags};

const USAGE: &str = "loadgen --url http://127.0.0.1:18103/mcp [--connections 64] [--duration 10] \
[--warmup 2] [--tool jira_search_users] [--label NAME] [--watch NAME:PID]… [--clk-tck 100] \
[--timeout 5] [--max-requests 100000000]";

/// The window every connection shares.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure: Instant,
    end: Instant,
    timeout: Duration,
    max_requests: u64,
}

/// What one connection saw.
struct Tally {
    latency_ns: Histogram<u64>,
    ok: u64,
    non200: u64,
    bad_body: u64,
    errors: u64,
    first_problem: Option<String>,
}

impl Tally {
    fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            // 1 µs to 60 s, 3 significant digits.
            latency_ns: Histogram::new_with_bounds(1_000, 60_000_000_000, 3)?,
            ok: 0,
            non200: 0,
            bad_body: 0,
            errors: 0,
            first_problem: None,
        })
    }

    fn problem(&mut self, what: String) {
        self.first_problem.get_or_insert(what);
    }

    fn merge(&mut self, other: Tally) -> Result<(), hdrhistogram::AdditionError> {
        self.latency_ns.add(&other.latency_ns)?;
        self.ok += other.ok;
        self.non200 += other.non200;
        self.bad_body += other.bad_body;
        self.errors += other.errors;
        if self.first_problem.is_none() {
            self.first_problem = other.first_problem;
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let flags = Flags::from_env(USAGE);
    let url: Uri = flags.get("url", "http://127.0.0.1:18103/mcp".parse()?);
    let connections: u64 = flags.get("connections", 64);
    let duration = Duration::from_secs_f64(flags.get("duration", 10.0));
    let warmup = Duration::from_secs_f64(flags.get("warmup", 2.0));
    let tool: String = flags.get("tool", "jira_search_users".to_owned());
    let label: String = flags.get("label", "run".to_owned());
    let clk_tck: f64 = flags.get("clk-tck", 100.0);
    let timeout = Duration::from_secs_f64(flags.get("timeout", 5.0));
    let max_requests: u64 = flags.get("max-requests", 100_000_000);
    let watches: Vec<(String, String)> = flags
        .all("watch")
        .iter()
        .map(|w| match w.split_once(':') {
            Some((n, p)) => Ok((n.to_owned(), p.to_owned())),
            None => Err(format!("--watch {w}: expected NAME:PID")),
        })
        .collect::<Result<_, _>>()?;
    let authority = url
        .authority()
        .ok_or("--url needs a host and port")?
        .clone();
    let addr: SocketAddr = authority.as_str().parse()?;
    if !addr.ip().is_loopback() {
        return Err(format!("--url {url}: only loopback targets are allowed").into());
    }
    if connections == 0 || duration.is_zero() {
        return Err("--connections and --duration must be positive".into());
    }
    let host = HeaderValue::from_str(authority.as_str())?;
    let path = url.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let template = CallTemplate::new(&tool);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let start = Instant::now();
        let window = Window {
            measure: start + warmup,
            end: start + warmup + duration,
            timeout,
            max_requests,
        };
        let mut tasks = Vec::new();
        for i in 0..connections {
            let (host, path, template) = (host.clone(), path.clone(), template.clone());
            tasks.push(tokio::spawn(connection(
                i, addr, host, path, template, window,
            )));
        }
        tokio::time::sleep_until(window.measure.into()).await;
        let before: Vec<Option<(u64, u64)>> = watches.iter().map(|(_, p)| cpu_ticks(p)).collect();
        tokio::time::sleep_until(window.end.into()).await;
        let after: Vec<Option<(u64, u64)>> = watches.iter().map(|(_, p)| cpu_ticks(p)).collect();

        let mut total = Tally::new()?;
        // Every connection stops by `end` + one request timeout; this bounds the wait.
        let deadline = window.end + timeout + Duration::from_secs(5);
        for t in tasks {
            match tokio::time::timeout_at(deadline.into(), t).await {
                Ok(Ok(Ok(tally))) => total.merge(tally)?,
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(join)) => return Err(format!("a connection task failed: {join}").into()),
                Err(_) => return Err("connections did not stop in time".into()),
            }
        }

        let secs = duration.as_secs_f64();
        let h = &total.latency_ns;
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
        let mut line = format!(
            "RESULT label={label} connections={connections} duration_s={secs} ok={} rps={:.0} \
             mean_us={:.1} p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} \
             non200={} bad_body={} errors={}",
            total.ok,
            total.ok as f64 / secs,
            h.mean() / 1_000.0,
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            h.max() as f64 / 1_000.0,
            total.non200,
            total.bad_body,
            total.errors,
        );
        for (((name, _), b), a) in watches.iter().zip(&before).zip(&after) {
            if let (Some(b), Some(a)) = (b, a) {
                let user = a.0.saturating_sub(b.0) as f64 / clk_tck;
                let sys = a.1.saturating_sub(b.1) as f64 / clk_tck;
                let cpu = user + sys;
                let per10k = |s: f64| {
                    if total.ok > 0 {
                        s / total.ok as f64 * 10_000.0
                    } else {
                        f64::NAN
                    }
                };
                line.push_str(&format!(
                    " {name}_cpu_s={cpu:.2} {name}_util={:.2} {name}_cpu_s_per_10k={:.4} \
                     {name}_user_s_per_10k={:.4} {name}_sys_s_per_10k={:.4}",
                    cpu / secs,
                    per10k(cpu),
                    per10k(user),
                    per10k(sys),
                ));
            }
        }
        println!("{line}");
        let failed = total.non200 + total.bad_body + total.errors;
        if failed > 0 || total.ok == 0 {
            eprintln!(
                "\n!!!!!!!! {label}: {failed} FAILED REQUESTS ({} non-200, {} wrong body, {} errors), {} good; first: {}\n",
                total.non200,
                total.bad_body,
                total.errors,
                total.ok,
                total.first_problem.as_deref().unwrap_or("(none: no request completed)")
            );
            std::process::exit(3);
        }
        Ok(())
    })
}

/// One keep-alive connection in a closed loop; reconnects after a failure.
async fn connection(
    index: u64,
    addr: SocketAddr,
    host: HeaderValue,
    path: String,
    template: CallTemplate,
    w: Window,
) -> Result<Tally, Box<dyn std::error::Error + Send + Sync>> {
    let mut tally = Tally::new()?;
    let mut sent = 0u64;
    'connect: while Instant::now() < w.end && sent < w.max_requests {
        let mut sender = match tokio::time::timeout(w.timeout, handshake(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tally.errors += 1;
                tally.problem(format!("connecting to {addr}: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => {
                tally.errors += 1;
                tally.problem(format!("connecting to {addr}: timed out"));
                continue;
            }
        };
        while Instant::now() < w.end && sent < w.max_requests {
            sent += 1;
            let id = (index << 40) | sent;
            let req = Request::builder()
                .method(Method::POST)
                .uri(&path)
                .header(header::HOST, host.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json, text/event-stream")
                .body(Full::new(Bytes::from(template.body(id))))?;
            let t0 = Instant::now();
            let exchange = async {
                sender.ready().await?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, body))
            };
            let result = tokio::time::timeout(w.timeout, exchange).await;
            let t1 = Instant::now();
            match result {
                Ok(Ok((status, body))) => {
                    if status != StatusCode::OK {
                        tally.non200 += 1;
                        tally.problem(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
                    } else if !is_result_for(&body, id) {
                        tally.bad_body += 1;
                        tally.problem(format!(
                            "not the upstream's result for id {id}: {}",
                            String::from_utf8_lossy(&body)
                        ));
                    } else if t1 >= w.measure && t1 <= w.end {
                        tally.ok += 1;
                        tally
                            .latency_ns
                            .saturating_record((t1 - t0).as_nanos() as u64);
                    }
                }
                Ok(Err(e)) => {
                    tally.errors += 1;
                    tally.problem(format!("request: {e}"));
                    continue 'connect;
                }
                Err(_) => {
                    tally.errors += 1;
                    tally.problem(format!("request: no response in {:?}", w.timeout));
                    continue 'connect;
                }
            }
        }
    }
    Ok(tally)
}

async fn handshake(
    addr: SocketAddr,
) -> Result<http1::SendRequest<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Whether `body` is the fast upstream's successful result for `id`.
fn is_result_for(body: &[u8], id: u64) -> bool {
    let want_id = format!(r#""id":{id},"#);
    contains(body, want_id.as_bytes()) && contains(body, br#""isError":false"#)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// utime and stime of a process (all its threads), in clock ticks.
fn cpu_ticks(pid: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_matched_by_id() {
        let body = br#"{"jsonrpc":"2.0","id":42,"result":{"content":[],"isError":false}}"#;
        assert!(is_result_for(body, 42));
        assert!(!is_result_for(body, 4));
        let refused = br#"{"jsonrpc":"2.0","id":42,"result":{"content":[],"isError":true}}"#;
        assert!(!is_result_for(refused, 42));
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_ticks("self").is_some());
    }
}
