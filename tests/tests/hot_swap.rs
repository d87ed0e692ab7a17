//! ARCHITECTURE.md §2 and §6: a policy swap fails no request and never widens access.
//!
//! Eight clients call `echo` through the sidecar without pause while the
//! policy file is rewritten again and again — policy A allows `echo`, policy
//! B denies it with the reason `B` — and, halfway, replaced by an invalid
//! policy and by a half-written file. Every request must get HTTP 200 with a
//! JSON-RPC result that is A's decision (the upstream's answer) or B's (the
//! sidecar's refusal), never anything else; what the upstream received must
//! match the allowed answers one for one; while the file is invalid, the
//! last good policy decides.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_e2e::net;
use tollgate_e2e::recorder::{Recorded, Recorder, called};
use tollgate_e2e::{Sidecar, sidecar};

/// Concurrent clients.
const CLIENTS: usize = 8;
/// Calls each client makes at least (it goes on until the swapping is over).
const MIN_CALLS: usize = 250;
/// Valid policy swaps, alternating B, A, B, …
const SWAPS: usize = 20;
/// Calls made from the test thread while the file is invalid.
const PROBES: usize = 40;

/// Allows `echo`.
fn policy_a() -> Value {
    json!({ "version": "1", "default": "deny", "tools": { "echo": { "action": "allow" } } })
}

/// Denies `echo`, reason `B`.
fn policy_b() -> Value {
    json!({ "version": "1", "default": "deny", "tools": { "echo": { "action": "deny", "reason": "B" } } })
}

/// Which policy decided a call, judging by the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    A,
    B,
}

/// One `echo` through the sidecar: A's or B's decision, or what went wrong.
fn call_echo(addr: SocketAddr, id: usize) -> Result<(Decided, Value), String> {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"m{id}"}}}}}}"#
    );
    let reply = net::request(
        addr,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        Some(body.as_bytes()),
    )
    .map_err(|e| format!("call {id}: {e}"))?;
    let msg: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("call {id}: {} {} ({e})", reply.status, reply.text()))?;
    let wrong = || format!("call {id}: {} {msg}", reply.status);
    if reply.status != 200 || msg["id"] != json!(id) {
        return Err(wrong());
    }
    let result = &msg["result"];
    let text = &result["content"][0]["text"];
    if result["isError"] == json!(false) && *text == json!(called("echo")) {
        Ok((Decided::A, msg))
    } else if result["isError"] == json!(true)
        && *text == json!("Denied by policy: B")
        && result["_meta"]["tollgate/decision"]["decision"] == json!("deny")
    {
        Ok((Decided::B, msg))
    } else {
        Err(wrong())
    }
}

/// The version `/readyz` reports (`sha256:…`).
fn version(sidecar: &Sidecar) -> String {
    sidecar
        .readiness()
        .trim()
        .strip_prefix("ready: policy ")
        .unwrap_or_else(|| panic!("not ready: {:?}", sidecar.readiness()))
        .to_owned()
}

/// `tollgate_policy_reload_failures_total`.
fn reload_failures(sidecar: &Sidecar) -> u64 {
    let metrics = sidecar.metrics();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_policy_reload_failures_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no tollgate_policy_reload_failures_total in:\n{metrics}"))
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("swap");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}

/// Waits until the reload failures exceed `before`.
fn wait_for_reload_failure(sidecar: &mut Sidecar, before: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while reload_failures(sidecar) <= before {
        sidecar.process().assert_running();
        assert!(
            Instant::now() < deadline,
            "{what}: no policy reload failure counted within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What every client saw.
#[derive(Debug, Default)]
struct Tally {
    a: AtomicUsize,
    b: AtomicUsize,
    failures: Mutex<Vec<String>>,
    /// B's refusals' `policy_version`s.
    b_versions: Mutex<BTreeMap<String, usize>>,
}

impl Tally {
    fn count(&self, outcome: Result<(Decided, Value), String>) -> Option<Decided> {
        match outcome {
            Ok((Decided::A, _)) => {
                self.a.fetch_add(1, Ordering::Relaxed);
                Some(Decided::A)
            }
            Ok((Decided::B, msg)) => {
                self.b.fetch_add(1, Ordering::Relaxed);
                let v = msg["result"]["_meta"]["tollgate/decision"]["policy_version"]
                    .as_str()
                    .unwrap_or("(none)")
                    .to_owned();
                *self
                    .b_versions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(v)
                    .or_default() += 1;
                Some(Decided::B)
            }
            Err(e) => {
                self.failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(e);
                None
            }
        }
    }
}

/// Clears the flag the clients run on when dropped — also when an assertion
/// on the swapping side panics, so the scope's join does not wait forever.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Calls made while the file is invalid must all be `expected`'s.
fn probe_last_good(addr: SocketAddr, tally: &Tally, expected: Decided, what: &str, base: usize) {
    for i in 0..PROBES {
        let got = tally.count(call_echo(addr, base + i));
        assert_eq!(
            got,
            Some(expected),
            "{what}: call {i} was not decided by the last good policy"
        );
    }
}

#[test]
fn concurrent_calls_across_policy_swaps_all_succeed_with_a_or_b() {
    let recorder = Recorder::start();
    let mut sidecar = sidecar::builder()
        .upstream(recorder.url())
        .policy(&policy_a())
        .start();
    let addr = sidecar.listen;
    let version_a = version(&sidecar);
    let tally = Tally::default();
    let swapping = AtomicBool::new(true);
    let mut version_b = None;
    let failures_before = reload_failures(&sidecar);

    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (tally, swapping) = (&tally, &swapping);
                scope.spawn(move || {
                    let mut n = 0;
                    while n < MIN_CALLS || swapping.load(Ordering::SeqCst) {
                        tally.count(call_echo(addr, (c + 1) * 1_000_000 + n));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let stop_clients = StopOnDrop(&swapping);

        let mut current = Decided::A;
        for i in 0..SWAPS {
            let (next, policy) = match current {
                Decided::A => (Decided::B, policy_b()),
                Decided::B => (Decided::A, policy_a()),
            };
            sidecar.set_policy(&policy);
            current = next;
            let v = version(&sidecar);
            match current {
                Decided::A => assert_eq!(v, version_a, "policy A's version changed"),
                Decided::B => {
                    assert_eq!(*version_b.get_or_insert_with(|| v.clone()), v);
                }
            }
            if i == SWAPS / 2 {
                // An invalid policy (a typo'd field) keeps the last good one.
                let before = reload_failures(&sidecar);
                write_atomically(
                    &sidecar.policy_path,
                    r#"{"version":"1","default":"allow","tools":{"echo":{"acton":"deny"}}}"#,
                );
                wait_for_reload_failure(&mut sidecar, before, "a policy with a typo");
                assert_eq!(version(&sidecar), v, "an invalid policy replaced {v}");
                probe_last_good(addr, &tally, current, "after a typo", 10_000_000);

                // So does a half-written file, until the rest of it lands.
                let (other, text, other_version) = match current {
                    Decided::A => (Decided::B, policy_b(), version_b.clone()),
                    Decided::B => (Decided::A, policy_a(), Some(version_a.clone())),
                };
                let other_version =
                    other_version.unwrap_or_else(|| panic!("policy B has not loaded yet"));
                let before = reload_failures(&sidecar);
                let text = text.to_string();
                let (head, tail) = text.split_at(text.len() / 2);
                let mut file = std::fs::File::create(&sidecar.policy_path)
                    .unwrap_or_else(|e| panic!("rewriting the policy file: {e}"));
                file.write_all(head.as_bytes())
                    .and_then(|()| file.flush())
                    .unwrap_or_else(|e| panic!("writing half the policy: {e}"));
                wait_for_reload_failure(&mut sidecar, before, "a half-written policy");
                assert_eq!(version(&sidecar), v, "half a policy replaced {v}");
                probe_last_good(addr, &tally, current, "half-written", 20_000_000);
                file.write_all(tail.as_bytes())
                    .and_then(|()| file.flush())
                    .unwrap_or_else(|e| panic!("writing the rest of the policy: {e}"));
                drop(file);
                // Whole, the file is the other policy: wait for it to be in force.
                let deadline = Instant::now() + Duration::from_secs(10);
                while version(&sidecar) != other_version {
                    sidecar.process().assert_running();
                    assert!(
                        Instant::now() < deadline,
                        "the policy written in two halves did not load (still {})",
                        version(&sidecar)
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                current = other;
            }
        }
        drop(stop_clients);
        let calls: usize = clients
            .into_iter()
            .map(|c| c.join().unwrap_or_else(|_| panic!("a client panicked")))
            .sum();
        assert!(calls >= CLIENTS * MIN_CALLS, "{calls} calls");
        println!("{calls} calls from {CLIENTS} clients across {SWAPS} swaps");
    });

    let failures = tally.failures.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = (
        tally.a.load(Ordering::SeqCst),
        tally.b.load(Ordering::SeqCst),
    );
    assert!(
        failures.is_empty(),
        "{} of {} calls failed or were decided by neither A nor B; the first:\n{}",
        failures.len(),
        a + b + failures.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!("decided by A: {a}, by B: {b}");
    assert!(
        a > 0 && b > 0,
        "A decided {a} calls, B {b}: the swaps did not show"
    );
    let version_b = version_b.unwrap_or_else(|| panic!("policy B never loaded"));
    let b_versions = tally.b_versions.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(
        b_versions.keys().collect::<Vec<_>>(),
        [&version_b],
        "B's refusals name other policy versions"
    );

    // The upstream saw exactly the calls A allowed: none of B's.
    let forwarded: Vec<String> = recorder
        .requests()
        .iter()
        .flat_map(Recorded::tool_calls)
        .collect();
    assert!(forwarded.iter().all(|n| n == "echo"), "{forwarded:?}");
    assert_eq!(
        forwarded.len(),
        a,
        "the upstream received {} calls, A allowed {a}",
        forwarded.len()
    );

    // Every decision recorded was A's allow or B's deny, under its version.
    let total = a + b;
    let records = sidecar.decisions(total);
    assert!(!records.is_empty(), "no decision records");
    let mut mismatched = Vec::new();
    for r in &records {
        let pair = (
            r["policy_version"].as_str().unwrap_or(""),
            r["decision"].as_str().unwrap_or(""),
        );
        if pair != (version_a.as_str(), "allow") && pair != (version_b.as_str(), "deny") {
            mismatched.push(r.to_string());
        }
    }
    assert!(
        mismatched.is_empty(),
        "{} decision records are neither A's allow ({version_a}) nor B's deny ({version_b}); the first:\n{}",
        mismatched.len(),
        mismatched
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        reload_failures(&sidecar) >= failures_before + 2,
        "the typo and the half-written file were not both counted"
    );
    sidecar.process().assert_running();
}
