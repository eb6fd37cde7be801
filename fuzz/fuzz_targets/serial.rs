//! The serial line codec (`drivers/serial/src/codec.rs`: COBS + CRC32C,
//! optional XON/XOFF escaping), through `gateway_serial::fuzzing`.
//!
//! Input: `[flags][max_body: u16 LE][seed]`, then by `flags` bit 1:
//! - 0, raw: the rest is the line's bytes;
//! - 1, packets: records `[kind][body: u16 LE length + bytes][junk: u8
//!   length + bytes]`: each packet is encoded with the real encoder and the
//!   junk (line noise, zeros included) goes on the line after it.
//! `flags` bit 0 turns escaping on; `seed` drives the read sizes.
//!
//! Checks: no panic; the buffer never holds more than the longest packet
//! plus one read; every packet out has a body within `max_body` and
//! re-encodes to a packet that decodes to itself; in packets mode every
//! encoded packet within `max_body` comes out, in order, whatever the noise
//! between them (extra packets may come out of the noise only).
#![no_main]

use gateway_fuzz::{Cursor, Rng};
use gateway_serial::fuzzing::{Decoder, encode, max_segment};
use libfuzzer_sys::fuzz_target;

fn feed(dec: &mut Decoder, line: &[u8], rng: &mut Rng, limit: usize) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let n = (rng.below(512) as usize + 1).min(rest.len());
        dec.push(&rest[..n]);
        rest = &rest[n..];
        while let Some((kind, body)) = dec.next_packet() {
            out.push((kind, body.to_vec()));
        }
        let held = dec.buffered();
        assert!(
            held <= limit + n,
            "decoder holds {held} bytes; the limit is {limit} + one read of {n}"
        );
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let escaped = flags & 1 == 1;
    let max_body = usize::from(c.u16());
    let mut rng = Rng::new(u64::from(c.u8()));
    let limit = max_segment(max_body, escaped);
    let mut sent = Vec::new();
    let line = if flags & 2 == 0 {
        c.rest().to_vec()
    } else {
        let mut line = Vec::new();
        while !c.is_empty() {
            let kind = c.u8();
            let body = c.record();
            line.extend(encode(kind, body, escaped));
            if body.len() <= max_body {
                sent.push((kind, body.to_vec()));
            }
            line.extend_from_slice(c.short());
        }
        line
    };
    let mut dec = Decoder::new(max_body, escaped);
    let got = feed(&mut dec, &line, &mut rng, limit);
    let (packets, ..) = dec.stats();
    assert_eq!(
        packets,
        got.len() as u64,
        "stats count {packets} packets, {} came out",
        got.len()
    );
    for (kind, body) in &got {
        assert!(
            body.len() <= max_body,
            "a {}-byte body came out of a decoder for {max_body}",
            body.len()
        );
        let mut again = Decoder::new(max_body, escaped);
        again.push(&encode(*kind, body, escaped));
        assert_eq!(
            again.next_packet().map(|(k, b)| (k, b.to_vec())),
            Some((*kind, body.clone())),
            "re-encoded packet does not decode to itself"
        );
    }
    // Every packet sent comes out, in order, among whatever the noise made.
    let mut it = got.iter();
    for (i, want) in sent.iter().enumerate() {
        assert!(
            it.any(|g| g == want),
            "packet {i} of {} (kind {}, {} bytes) did not come out in order",
            sent.len(),
            want.0,
            want.1.len()
        );
    }
});
