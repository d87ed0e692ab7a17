//! The SSE parser never panics, and for any bytes cut into any chunks:
//! - the events read are the same as when the bytes come whole;
//! - every event's `raw`, then the tail from `finish`, is exactly the input;
//! - events written back with `to_bytes` read back the same;
//! - the size limit fails the same event however the input is cut.
//!
//! Input: two bytes seed the chunk sizes, one byte picks the limit, the rest is
//! the stream.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate_sidecar::mcp::sse::{Event, SseError, SseParser};

type Fields = (Option<String>, Option<String>, String, Option<u64>);

fuzz_target!(|data: &[u8]| {
    let [s0, s1, limit, stream @ ..] = data else {
        return;
    };
    let cuts = cut(stream, u16::from_le_bytes([*s0, *s1]));

    let (whole, whole_tail) = feed(&[stream], usize::MAX).expect("no limit");
    let (split, split_tail) = feed(&cuts, usize::MAX).expect("no limit");
    assert_eq!(
        fields(&split),
        fields(&whole),
        "chunking changed the events"
    );
    assert_eq!(
        concat(&whole, &whole_tail),
        stream,
        "raw is not lossless (whole)"
    );
    assert_eq!(
        concat(&split, &split_tail),
        stream,
        "raw is not lossless (split)"
    );
    if !stream.contains(&b'\r') {
        assert_eq!(split, whole, "raw split differently with no CR to cut");
    }
    for e in &whole {
        assert!(!e.raw.is_empty());
        assert!(
            e.raw.ends_with(b"\n") || e.raw.ends_with(b"\r"),
            "an event ends in a line ending"
        );
    }

    let rewritten: Vec<u8> = whole.iter().flat_map(|e| e.to_bytes().to_vec()).collect();
    let (again, tail) = feed(&[&rewritten], usize::MAX).expect("no limit");
    assert_eq!(
        fields(&again),
        fields(&whole),
        "to_bytes does not read back the same"
    );
    assert!(tail.is_empty());

    let max = usize::from(*limit);
    match (feed(&[stream], max), feed(&cuts, max)) {
        (Ok((w, _)), Ok((s, _))) => assert_eq!(fields(&s), fields(&w)),
        (Err((w, we)), Err((s, se))) => {
            assert_eq!(fields(&s), fields(&w));
            assert_eq!(se, we);
        }
        (w, s) => panic!(
            "limit {max}: whole ok {} but split ok {}",
            w.is_ok(),
            s.is_ok()
        ),
    }
});

/// `stream` cut into chunks of 0 to 16 bytes, from a xorshift seeded by `seed`.
fn cut(stream: &[u8], seed: u16) -> Vec<&[u8]> {
    let mut x = u32::from(seed) | 1;
    let mut rest = stream;
    let mut out = Vec::new();
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (x % 17) as usize;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        out.push(chunk);
        rest = tail;
    }
    out
}

fn feed(chunks: &[&[u8]], max: usize) -> Result<(Vec<Event>, Bytes), (Vec<Event>, SseError)> {
    let mut parser = SseParser::new(max);
    let mut events = Vec::new();
    for chunk in chunks {
        parser.push(Bytes::copy_from_slice(chunk));
        loop {
            match parser.next_event() {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(e) => return Err((events, e)),
            }
        }
    }
    Ok((events, parser.finish()))
}

fn fields(events: &[Event]) -> Vec<Fields> {
    events
        .iter()
        .map(|e| (e.id.clone(), e.event.clone(), e.data.clone(), e.retry))
        .collect()
}

fn concat(events: &[Event], tail: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
    out.extend_from_slice(tail);
    out
}
