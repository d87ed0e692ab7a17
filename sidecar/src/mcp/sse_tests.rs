use proptest::prelude::*;

use super::*;

const NO_LIMIT: usize = usize::MAX;

/// Feeds `chunks` in order; the events and the tail.
fn feed(chunks: &[&[u8]], max: usize) -> Result<(Vec<Event>, Bytes), (Vec<Event>, SseError)> {
    let mut parser = SseParser::new(max);
    let mut events = Vec::new();
    for chunk in chunks {
        parser.push(Bytes::copy_from_slice(chunk));
        loop {
            match parser.next_event() {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(e) => return Err((events, e)),
            }
        }
    }
    Ok((events, parser.finish()))
}

fn parse(input: &str) -> Vec<Event> {
    let (events, tail) = feed(&[input.as_bytes()], NO_LIMIT).expect("no limit");
    assert!(tail.is_empty(), "unexpected tail {tail:?}");
    events
}

fn one(input: &str) -> Event {
    let mut events = parse(input);
    assert_eq!(events.len(), 1, "{events:?}");
    events.remove(0)
}

type Fields<'a> = (Option<&'a str>, Option<&'a str>, &'a str, Option<u64>);

fn fields(e: &Event) -> Fields<'_> {
    (e.id.as_deref(), e.event.as_deref(), &e.data, e.retry)
}

fn all_fields(events: &[Event]) -> Vec<Fields<'_>> {
    events.iter().map(fields).collect()
}

fn concat(events: &[Event], tail: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = events.iter().flat_map(|e| e.raw.iter().copied()).collect();
    out.extend_from_slice(tail);
    out
}

#[test]
fn a_full_event_is_read() {
    let e = one("id: 42\nevent: message\nretry: 3000\ndata: {\"jsonrpc\":\"2.0\"}\n\n");
    assert_eq!(
        fields(&e),
        (
            Some("42"),
            Some("message"),
            "{\"jsonrpc\":\"2.0\"}",
            Some(3000)
        )
    );
    assert_eq!(
        &e.raw[..],
        b"id: 42\nevent: message\nretry: 3000\ndata: {\"jsonrpc\":\"2.0\"}\n\n"
    );
}

#[test]
fn lf_cr_and_crlf_all_end_lines() {
    for ending in ["\n", "\r", "\r\n"] {
        let input = format!(
            "event: a{ending}data: x{ending}data: y{ending}{ending}data: z{ending}{ending}"
        );
        let events = parse(&input);
        assert_eq!(
            all_fields(&events),
            [(None, Some("a"), "x\ny", None), (None, None, "z", None)],
            "{ending:?}"
        );
        assert_eq!(concat(&events, b""), input.as_bytes());
    }
    // Mixed in one stream.
    let events = parse("data: a\rdata: b\r\ndata: c\n\r\n");
    assert_eq!(events[0].data, "a\nb\nc");
}

#[test]
fn one_leading_space_is_stripped_from_a_value() {
    assert_eq!(one("data:x\n\n").data, "x");
    assert_eq!(one("data: x\n\n").data, "x");
    assert_eq!(one("data:  x \n\n").data, " x ");
    assert_eq!(one("data:\tx\n\n").data, "\tx");
    assert_eq!(one("event:  spaced\n\n").event.as_deref(), Some(" spaced"));
    assert_eq!(
        one("data: a:b: c\n\n").data,
        "a:b: c",
        "only the first colon separates"
    );
}

#[test]
fn data_lines_are_joined_with_lf() {
    assert_eq!(one("data: a\ndata: b\ndata: c\n\n").data, "a\nb\nc");
    assert_eq!(one("data: a\ndata:\ndata: c\n\n").data, "a\n\nc");
    assert_eq!(one("data:\ndata:\n\n").data, "\n");
}

#[test]
fn a_field_without_a_colon_has_an_empty_value() {
    assert_eq!(one("data\ndata\n\n").data, "\n");
    assert_eq!(one("data: x\ndata\n\n").data, "x\n");
    assert_eq!(one("event\ndata: x\n\n").event.as_deref(), Some(""));
    assert_eq!(one("id\n\n").id.as_deref(), Some(""));
    let e = one("data : x\nDATA: y\n\n");
    assert_eq!(
        e.data, "",
        "field names are exact: `data ` and `DATA` are unknown"
    );
}

#[test]
fn later_fields_win_and_unknown_fields_are_ignored() {
    let e = one("event: a\nid: 1\nfoo: bar\nevent: b\nid: 2\ndata: x\n\n");
    assert_eq!(fields(&e), (Some("2"), Some("b"), "x", None));
}

#[test]
fn fields_belong_to_their_own_block() {
    let events = parse("id: 1\nevent: e\nretry: 5\ndata: a\n\ndata: b\n\n");
    assert_eq!(
        all_fields(&events),
        [
            (Some("1"), Some("e"), "a", Some(5)),
            (None, None, "b", None)
        ]
    );
}

#[test]
fn ids_with_nul_are_ignored() {
    assert_eq!(one("id: 1\nid: a\0b\ndata: x\n\n").id.as_deref(), Some("1"));
    assert_eq!(
        one("id: 7\nid: \ndata: x\n\n").id.as_deref(),
        Some(""),
        "an empty id resets the last event ID"
    );
}

#[test]
fn retry_must_be_ascii_digits() {
    assert_eq!(one("retry: 1500\n\n").retry, Some(1500));
    assert_eq!(one("retry: 007\n\n").retry, Some(7));
    for bad in [
        "retry: 1.5",
        "retry: -1",
        "retry: 10 ",
        "retry: ",
        "retry",
        "retry: 99999999999999999999999",
        "retry: ١",
    ] {
        assert_eq!(one(&format!("{bad}\n\n")).retry, None, "{bad:?}");
    }
    assert_eq!(
        one("retry: 10\nretry: x\n\n").retry,
        Some(10),
        "a bad value leaves the last good one"
    );
}

#[test]
fn comments_stay_in_raw_and_keep_alives_are_events() {
    let input = ": keep-alive\n\n:\n\ndata: x\n: note\ndata: y\n\n";
    let events = parse(input);
    assert_eq!(
        all_fields(&events),
        [
            (None, None, "", None),
            (None, None, "", None),
            (None, None, "x\ny", None)
        ]
    );
    assert_eq!(&events[0].raw[..], b": keep-alive\n\n");
    assert_eq!(&events[2].raw[..], b"data: x\n: note\ndata: y\n\n");
}

#[test]
fn stray_blank_lines_are_empty_events() {
    let events = parse("\n\r\ndata: x\n\n\n");
    assert_eq!(
        events.iter().map(|e| &e.raw[..]).collect::<Vec<_>>(),
        [&b"\n"[..], b"\r\n", b"data: x\n\n", b"\n"]
    );
    assert_eq!(all_fields(&events)[2], (None, None, "x", None));
}

#[test]
fn a_leading_bom_is_stripped_once() {
    let events = parse("\u{FEFF}data: x\n\n\u{FEFF}data: y\n\n");
    assert_eq!(events[0].data, "x");
    assert_eq!(
        &events[0].raw[..3],
        BOM,
        "the BOM is forwarded with the first event"
    );
    assert_eq!(events[1].data, "", "a BOM later is part of the field name");
    assert_eq!(
        one("\u{FEFF}\u{FEFF}data: x\n\n").data,
        "",
        "only one BOM is stripped"
    );
    assert_eq!(one("\u{FEFF}\n").raw.len(), 4);
}

#[test]
fn a_bom_split_across_chunks_is_still_stripped() {
    for split in 1..=3 {
        let input = b"\xEF\xBB\xBFdata: x\n\n";
        let (events, tail) = feed(&[&input[..split], &input[split..]], NO_LIMIT).expect("no limit");
        assert_eq!(
            all_fields(&events),
            [(None, None, "x", None)],
            "split at {split}"
        );
        assert!(tail.is_empty());
    }
    let (events, _) = feed(&[b"\xEF", b"\xBB", b"data: x\n\n"], NO_LIMIT).expect("no limit");
    assert_eq!(
        events[0].data, "",
        "a BOM prefix that is not a BOM is part of the line"
    );
    let (events, tail) = feed(&[b"\xEF\xBB"], NO_LIMIT).expect("no limit");
    assert!(events.is_empty());
    assert_eq!(&tail[..], b"\xEF\xBB");
}

#[test]
fn invalid_utf8_is_replaced() {
    let (events, _) = feed(&[b"data: a\xFFb\xE2\x82\n\n"], NO_LIMIT).expect("no limit");
    assert_eq!(events[0].data, "a\u{FFFD}b\u{FFFD}");
}

#[test]
fn utf8_split_across_chunks_is_decoded_whole() {
    let input = "data: €uro\n\n".as_bytes();
    for split in 0..=input.len() {
        let (events, _) = feed(&[&input[..split], &input[split..]], NO_LIMIT).expect("no limit");
        assert_eq!(events[0].data, "€uro", "split at {split}");
    }
}

#[test]
fn a_crlf_split_inside_an_event_stays_in_that_event() {
    let (events, tail) = feed(&[b"data: x\r", b"\ndata: y\r\n\r\n"], NO_LIMIT).expect("no limit");
    assert_eq!(all_fields(&events), [(None, None, "x\ny", None)]);
    assert_eq!(&events[0].raw[..], b"data: x\r\ndata: y\r\n\r\n");
    assert!(tail.is_empty());
}

#[test]
fn an_event_ending_in_a_split_crlf_is_not_held_back() {
    let mut parser = SseParser::new(NO_LIMIT);
    parser.push(Bytes::from_static(b"data: x\r\n\r"));
    let first = parser
        .next_event()
        .expect("no limit")
        .expect("handed back at the CR");
    assert_eq!(&first.raw[..], b"data: x\r\n\r");
    assert_eq!(parser.next_event(), Ok(None));
    parser.push(Bytes::from_static(b"\ndata: y\r\n\r\n"));
    let second = parser
        .next_event()
        .expect("no limit")
        .expect("the next event");
    assert_eq!(second.data, "y");
    assert_eq!(
        &second.raw[..],
        b"\ndata: y\r\n\r\n",
        "the LF of the CRLF leads the next event"
    );
    assert_eq!(parser.next_event(), Ok(None));
    // A CR then not an LF: a new line starts.
    let (events, _) = feed(&[b"data: x\r\r", b"data: y\r\r"], NO_LIMIT).expect("no limit");
    assert_eq!(
        all_fields(&events),
        [(None, None, "x", None), (None, None, "y", None)]
    );
}

#[test]
fn finish_hands_back_an_unterminated_event() {
    let (events, tail) = feed(&[b"data: a\n\ndata: b\n"], NO_LIMIT).expect("no limit");
    assert_eq!(events.len(), 1);
    assert_eq!(&tail[..], b"data: b\n");
    let (events, tail) = feed(&[b"data: a\n\ndata: par", b"tial"], NO_LIMIT).expect("no limit");
    assert_eq!(events.len(), 1);
    assert_eq!(&tail[..], b"data: partial");
    let (events, tail) = feed(&[], NO_LIMIT).expect("no limit");
    assert!(events.is_empty() && tail.is_empty());
}

#[test]
fn an_event_over_the_limit_is_an_error() {
    let limit = SseError::EventTooLarge { limit: 10 };
    // "data: 123\n" is 10 bytes before the blank line's ending: allowed.
    let (events, _) = feed(&[b"data: 123\n\n"], 10).expect("at the limit");
    assert_eq!(events[0].data, "123");
    let (events, e) = feed(&[b"data: a\n\ndata: 1234\n\ndata: b\n\n"], 10).expect_err("over");
    assert_eq!(
        (events.len(), e.clone()),
        (1, limit.clone()),
        "events before the big one are handed back"
    );
    // Incomplete, with no line ending yet: still bounded.
    let (events, e) = feed(&[b"data: 12345"], 10).expect_err("unterminated");
    assert_eq!((events.len(), e), (0, limit.clone()));
    let (_, e) = feed(&[b"data: 1", b"\ndata: 2\n"], 10).expect_err("over across lines");
    assert_eq!(e, limit);
    // The error is final.
    let mut parser = SseParser::new(4);
    parser.push(Bytes::from_static(b"data: x"));
    assert!(parser.next_event().is_err());
    parser.push(Bytes::from_static(b"\n\n"));
    assert_eq!(
        parser.next_event(),
        Err(SseError::EventTooLarge { limit: 4 })
    );
}

#[test]
fn the_limit_is_per_event_not_per_chunk() {
    let chunk = "data: 123\n\n".repeat(100);
    let (events, _) = feed(&[chunk.as_bytes()], 10).expect("many small events in one chunk");
    assert_eq!(events.len(), 100);
    let split_crlf: &[&[u8]] = &[b"data: 12\r\n\r", b"\ndata: 12\r\n\r\n"];
    let (events, _) = feed(split_crlf, 10).expect("the orphan LF does not count");
    assert_eq!(events.len(), 2);
}

#[test]
fn write_event_writes_one_data_line_per_line() {
    assert_eq!(&write_event(None, None, "{}")[..], b"data: {}\n\n");
    assert_eq!(
        &write_event(Some("1"), Some("message"), "a\nb")[..],
        b"id: 1\nevent: message\ndata: a\ndata: b\n\n"
    );
    assert_eq!(
        &write_event(None, None, "a\r\nb\rc\n")[..],
        b"data: a\ndata: b\ndata: c\ndata: \n\n"
    );
    assert_eq!(&write_event(None, None, " x")[..], b"data:  x\n\n");
    assert_eq!(
        &write_event(None, None, "")[..],
        b"\n",
        "empty data: not dispatched"
    );
    assert_eq!(
        &write_event(Some("a\r\nb"), Some("e\nv"), "x")[..],
        b"id: ab\nevent: ev\ndata: x\n\n"
    );
}

#[test]
fn to_bytes_round_trips() {
    let e = one("id: 9\nevent:  sp\nretry: 250\n: dropped\ndata: a\ndata:\ndata:  b\n\n");
    assert_eq!(
        &e.to_bytes()[..],
        b"id: 9\nevent:  sp\nretry: 250\ndata: a\ndata: \ndata:  b\n\n"
    );
    let again = one(std::str::from_utf8(&e.to_bytes()).expect("utf-8"));
    assert_eq!(fields(&again), fields(&e));
}

/// A line a server might send, without its line ending.
fn line() -> impl Strategy<Value = String> {
    let text = "[ -~€é😀\u{FEFF}\0]{0,12}";
    prop_oneof![
        text.prop_map(|v| format!("data:{v}")),
        text.prop_map(|v| format!("data: {v}")),
        Just("data".to_string()),
        text.prop_map(|v| format!("event: {v}")),
        text.prop_map(|v| format!("id: {v}")),
        "[0-9]{1,22}|[0-9a-z]{0,3}".prop_map(|v| format!("retry: {v}")),
        text.prop_map(|v| format!(":{v}")),
        text.prop_map(|v| format!("other{v}")),
        Just(String::new()),
    ]
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    let ending = prop_oneof![Just("\n"), Just("\r"), Just("\r\n")];
    (
        any::<bool>(),
        prop::collection::vec((line(), ending), 0..24),
        any::<bool>(),
    )
        .prop_map(|(bom, lines, end)| {
            let mut s = String::new();
            if bom {
                s.push('\u{FEFF}');
            }
            for (line, ending) in lines {
                s.push_str(&line);
                s.push_str(ending);
            }
            if end {
                s.push('\n');
            }
            s.into_bytes()
        })
}

/// `input` cut at `cuts` (taken modulo its length).
fn chunks<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for cut in at.into_iter().chain([input.len()]) {
        out.push(&input[prev..cut]);
        prev = cut;
    }
    out
}

fn check_chunking(input: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    let (whole, whole_tail) = feed(&[input], NO_LIMIT).expect("no limit");
    let (split, split_tail) = feed(&chunks(input, cuts), NO_LIMIT).expect("no limit");
    prop_assert_eq!(all_fields(&split), all_fields(&whole));
    prop_assert_eq!(concat(&whole, &whole_tail), input);
    prop_assert_eq!(concat(&split, &split_tail), input);
    if !input.contains(&b'\r') {
        prop_assert_eq!(
            split,
            whole,
            "raw is split the same when no CRLF can be cut"
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn chunking_never_changes_events(input in stream(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        check_chunking(&input, &cuts)?;
    }

    #[test]
    fn chunking_never_changes_events_of_any_bytes(
        input in prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b':'), Just(b' '), any::<u8>()], 0..64),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        check_chunking(&input, &cuts)?;
    }

    #[test]
    fn reserialised_events_read_back_the_same(input in stream()) {
        let (events, _) = feed(&[&input], NO_LIMIT).expect("no limit");
        let rewritten: Vec<u8> = events.iter().flat_map(|e| e.to_bytes().to_vec()).collect();
        let (again, tail) = feed(&[&rewritten], NO_LIMIT).expect("no limit");
        prop_assert_eq!(all_fields(&again), all_fields(&events));
        prop_assert!(tail.is_empty());
    }

    #[test]
    fn the_limit_does_not_depend_on_chunking(
        input in stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        max in 0usize..40,
    ) {
        let whole = feed(&[&input], max);
        let split = feed(&chunks(&input, &cuts), max);
        match (whole, split) {
            (Ok((w, _)), Ok((s, _))) => prop_assert_eq!(all_fields(&s), all_fields(&w)),
            (Err((w, we)), Err((s, se))) => {
                prop_assert_eq!(all_fields(&s), all_fields(&w));
                prop_assert_eq!(se, we);
            }
            (w, s) => prop_assert!(false, "whole {:?} but split {:?}", w.is_ok(), s.is_ok()),
        }
    }
}
