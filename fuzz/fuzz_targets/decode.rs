//! `gateway_proto::decode` with the node's default `Limits`, on any bytes.
//!
//! Input: one encoded frame (raw bytes).
//!
//! Checks: no panic; a frame that decodes obeys every limit and check the
//! node relies on (names one path component, trees valid and inside the
//! target directory, ranges sorted/disjoint/in bounds, Data inside the
//! largest file); it re-encodes to bytes that decode to the same frame
//! (round trip), through both `encode` and the reusable `Encoder`.
#![no_main]

use bytes::Bytes;
use gateway_fuzz::names::{check_accepted_name, check_accepted_tree};
use gateway_proto::{
    Body, Encoder, Limits, Range, RangeSet, decode, encode, validate_name, validate_tree,
};
use libfuzzer_sys::fuzz_target;

fn check_ranges(what: &str, r: &[Range], limits: &Limits) {
    assert!(r.len() <= limits.max_ranges, "{what}: {} ranges", r.len());
    let set = RangeSet::from_ranges(r, limits.max_file_bytes)
        .unwrap_or_else(|e| panic!("{what}: decoded ranges {r:?} fail from_ranges: {e}"));
    assert_eq!(
        set.count(),
        r.iter().map(Range::len).sum::<u64>(),
        "{what}: ranges overlap"
    );
}

fn check_str(what: &str, s: &str, max: usize) {
    assert!(s.len() <= max, "{what}: {} bytes > {max}", s.len());
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(frame) = decode(Bytes::copy_from_slice(data), &limits) else {
        return;
    };
    match &frame.body {
        Body::Hello(h) => {
            for s in [&h.name, &h.node_id, &h.node_type] {
                check_str("hello", s, limits.max_string_bytes);
            }
            for l in [&h.macs, &h.ips, &h.links] {
                assert!(l.len() <= limits.max_list_items);
                l.iter()
                    .for_each(|s| check_str("hello list", s, limits.max_string_bytes));
            }
        }
        Body::Offer(o) => {
            validate_name(&o.name).expect("decoded Offer name");
            check_accepted_name(&o.name);
            assert!(o.size <= limits.max_file_bytes);
            assert!(o.chunk_size >= 1 && o.chunk_size <= limits.max_chunk_bytes);
            if let Some(entries) = &o.entries {
                assert!(entries.len() <= limits.max_tree_entries);
                validate_tree(entries, o.size).expect("decoded Offer tree");
                check_accepted_tree(&o.name, entries);
            }
        }
        Body::Reload(r) => {
            validate_name(&r.name).expect("decoded Reload name");
            check_accepted_name(&r.name);
            assert!(r.size <= limits.max_file_bytes);
            assert!(r.chunk_size >= 1 && r.chunk_size <= limits.max_chunk_bytes);
            check_ranges("reload", &r.durable, &limits);
        }
        Body::Accept(a) => check_ranges("accept", &a.have, &limits),
        Body::Ack(a) => check_ranges("ack", &a.ranges, &limits),
        Body::Checkpoint(c) => check_ranges("checkpoint", &c.durable, &limits),
        Body::Verdict(v) => {
            check_ranges("verdict", &v.bad_chunks, &limits);
            check_str("verdict", &v.message, limits.max_message_bytes);
        }
        Body::Data(d) => {
            assert!(d.data.len() <= limits.max_chunk_bytes as usize);
            let end = d
                .offset
                .checked_add(d.data.len() as u64)
                .expect("data end overflows");
            assert!(end <= limits.max_file_bytes);
        }
        Body::Reject(r) => check_str("reject", &r.message, limits.max_message_bytes),
        Body::Error(e) => check_str("error", &e.message, limits.max_message_bytes),
        Body::Bye(s) => check_str("bye", s, limits.max_message_bytes),
        Body::Complete(_) | Body::Ping(_) | Body::Pong(_) => {}
    }
    let again = encode(&frame);
    let back = decode(Bytes::from(again.clone()), &limits).unwrap_or_else(|e| {
        panic!("a decoded frame re-encodes to bytes decode refuses: {e}\n{frame:?}")
    });
    assert_eq!(back, frame, "decode(encode(frame)) differs from frame");
    let mut enc = Encoder::new();
    assert_eq!(
        enc.encode(&frame),
        &again[..],
        "Encoder::encode and encode differ"
    );
    if let Body::Data(d) = &frame.body {
        let fast = enc
            .data(&d.transfer_id, d.offset, &d.data, d.chunk_hash.as_ref())
            .to_vec();
        let back = decode(Bytes::from(fast), &limits).expect("Encoder::data output decodes");
        assert_eq!(back.body, frame.body, "Encoder::data round trip");
    }
});
