//! Peek + decide on a ~1 KB `tools/call` body, against parsing the same body
//! into a `serde_json::Value` (what a proxy without a borrowed peek pays just
//! to read the tool's name). Goal: (peek + decide) / Value ≤ 1.0.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate_policy::{Arguments, Call, LocalCounters};
use tollgate_sidecar::mcp::peek::peek;

/// A `tools/call` of about 1 KB, with nested arguments.
fn body() -> Vec<u8> {
    let filler: Vec<String> = (0..12)
        .map(|i| format!("\"field_{i}\": \"value number {i} with some text\""))
        .collect();
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{{"name":"create_test_session_context","arguments":{{"name":"load test","options":{{"dry_run":false,"tags":["a","b","c"]}},{}}},"_meta":{{"progressToken":7}}}}}}"#,
        filler.join(",")
    );
    body.into_bytes()
}

fn bench(c: &mut Criterion) {
    let body = body();
    let policy = tollgate_policy::load(include_str!("../../examples/full-policy.json"))
        .expect("the example loads");
    let counters = LocalCounters::new();
    let mut g = c.benchmark_group(format!("peek/{}-byte-tools-call", body.len()));
    g.bench_function("peek+decide", |b| {
        let mut t = 0u64;
        b.iter(|| {
            t += 1;
            let peeked = peek(black_box(&body)).expect("valid");
            let m = &peeked.messages()[0];
            let call = m.call.as_ref().expect("a call");
            let d = policy.decide(
                &Call {
                    server: "default",
                    tool: &call.name,
                    arguments: call.arguments.map_or(Arguments::None, Arguments::Raw),
                    grant: "bench",
                    session: None,
                    annotations: None,
                },
                // A new minute each 30 calls keeps the 30/minute limit admitting.
                Duration::from_secs(t / 30 * 61),
                &counters,
            );
            black_box(d.outcome)
        });
    });
    g.bench_function("peek", |b| {
        b.iter(|| black_box(peek(black_box(&body)).expect("valid").messages().len()))
    });
    g.bench_function("serde_json::Value", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(&body)).expect("valid");
            black_box(v["params"]["name"].as_str().map(str::len))
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
