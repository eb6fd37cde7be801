//! The byte format on the line, without I/O: frames in, bytes out, and back.
//!
//! One packet on the wire is
//!
//! ```text
//! 0x00  COBS( kind:u8 ‖ body ‖ CRC32C(kind ‖ body) as u32 little endian )  0x00
//! ```
//!
//! COBS leaves no 0x00 inside, so 0x00 only ever delimits. The leading 0x00
//! costs one byte and means garbage on the line between two packets (noise,
//! or the tail of a packet torn by a cancelled send) ends up in a segment of
//! its own instead of spoiling the next packet. An empty segment (two 0x00 in
//! a row, or a lone 0x00 sent as keepalive) is not a packet and is skipped.
//!
//! With software flow control (XON/XOFF) the tty eats 0x11 and 0x13, so the
//! COBS bytes are escaped after encoding as PPP does: 0x11, 0x13 and the
//! escape byte 0x7d itself become 0x7d followed by the byte XOR 0x20.
//!
//! The [`Decoder`] resynchronises by itself: a segment that is not valid COBS
//! or fails its CRC is dropped and counted, and a run of bytes without a 0x00
//! longer than the largest packet is thrown away (the buffer never grows past
//! that) until the next 0x00.

use bytes::{Bytes, BytesMut};

/// A link-layer packet: its kind (see `link.rs`) and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packet {
    pub(crate) kind: u8,
    pub(crate) body: Bytes,
}

/// Bytes the packet adds around a body before COBS: the kind and the CRC.
const OVERHEAD: usize = 1 + 4;

const ESC: u8 = 0x7d;
const XON: u8 = 0x11;
const XOFF: u8 = 0x13;

fn needs_escape(b: u8) -> bool {
    b == XON || b == XOFF || b == ESC
}

/// Longest run of bytes between two delimiters that a body of `max_body`
/// bytes can produce.
pub(crate) fn max_segment(max_body: usize, escaped: bool) -> usize {
    let cobs = cobs::max_encoding_length(max_body + OVERHEAD);
    if escaped { cobs * 2 } else { cobs }
}

/// Encodes one packet into `out` (cleared first; its allocation is reused) and
/// returns the number of bytes to send. `scratch` is only used when `escaped`.
pub(crate) fn encode(
    kind: u8,
    body: &[u8],
    escaped: bool,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> usize {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), body).to_le_bytes();
    let target = if escaped { &mut *scratch } else { &mut *out };
    // Grow only: resizing from zero would clear the whole buffer on every frame.
    let need = cobs::max_encoding_length(body.len() + OVERHEAD) + 2;
    if target.len() < need {
        target.resize(need, 0);
    }
    target[0] = 0;
    let mut enc = cobs::CobsEncoder::new(&mut target[1..need - 1]);
    let fits = "the buffer is sized by max_encoding_length";
    enc.push(&[kind]).expect(fits);
    enc.push(body).expect(fits);
    enc.push(&crc).expect(fits);
    let n = enc.finalize();
    target[n + 1] = 0;
    let len = n + 2;
    if !escaped {
        return len;
    }
    out.clear();
    out.reserve(len + len / 64 + 8);
    for &b in &scratch[..len] {
        if needs_escape(b) {
            out.extend_from_slice(&[ESC, b ^ 0x20]);
        } else {
            out.push(b);
        }
    }
    out.len()
}

/// Undoes the XON/XOFF escape in place; `None` if the escaping is broken.
fn unescape_in_place(seg: &mut [u8]) -> Option<usize> {
    let mut w = 0;
    let mut r = 0;
    while r < seg.len() {
        let b = seg[r];
        if b == ESC {
            let next = *seg.get(r + 1)? ^ 0x20;
            if !needs_escape(next) {
                return None;
            }
            seg[w] = next;
            r += 2;
        } else {
            seg[w] = b;
            r += 1;
        }
        w += 1;
    }
    Some(w)
}

/// What a [`Decoder`] threw away since it was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DecodeStats {
    /// Packets delivered.
    pub(crate) packets: u64,
    /// Segments dropped because they were not valid COBS (or escaping) or
    /// failed their CRC.
    pub(crate) corrupt: u64,
    /// Segments dropped because they were longer than the largest packet.
    pub(crate) oversized: u64,
    /// Bytes thrown away (in dropped segments, or skipped to resynchronise).
    pub(crate) discarded_bytes: u64,
}

/// Splits a byte stream into packets. Feed it through [`Decoder::buffer`],
/// then call [`Decoder::next_packet`] until it returns `None`.
#[derive(Debug)]
pub(crate) struct Decoder {
    buf: BytesMut,
    /// `buf[..scanned]` holds no 0x00.
    scanned: usize,
    /// Dropping bytes up to the next 0x00 (after an overlong segment).
    skipping: bool,
    max_body: usize,
    max_segment: usize,
    escaped: bool,
    stats: DecodeStats,
}

impl Decoder {
    /// A decoder for bodies of at most `max_body` bytes.
    pub(crate) fn new(max_body: usize, escaped: bool) -> Self {
        Decoder {
            buf: BytesMut::new(),
            scanned: 0,
            skipping: false,
            max_body,
            max_segment: max_segment(max_body, escaped),
            escaped,
            stats: DecodeStats::default(),
        }
    }

    /// The buffer to append received bytes to (e.g. with `read_buf`).
    pub(crate) fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// What was delivered and dropped so far.
    pub(crate) fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// The next whole packet in the buffer, dropping broken segments on the
    /// way; `None` when more bytes are needed.
    pub(crate) fn next_packet(&mut self) -> Option<Packet> {
        loop {
            let Some(i) = memchr::memchr(0, &self.buf[self.scanned..]) else {
                self.scanned = self.buf.len();
                if self.buf.len() > self.max_segment {
                    // No 0x00 within the longest possible packet: this is no
                    // packet. Drop it now rather than buffer without bound.
                    if !self.skipping {
                        self.stats.oversized += 1;
                        tracing::debug!(
                            bytes = self.buf.len(),
                            max = self.max_segment,
                            "serial: no delimiter within the largest packet; skipping to the next 0x00"
                        );
                    }
                    self.stats.discarded_bytes += self.buf.len() as u64;
                    self.buf.clear();
                    self.scanned = 0;
                    self.skipping = true;
                }
                return None;
            };
            let end = self.scanned + i;
            let mut seg = self.buf.split_to(end + 1);
            self.scanned = 0;
            seg.truncate(end);
            if std::mem::take(&mut self.skipping) {
                self.stats.discarded_bytes += seg.len() as u64;
                continue;
            }
            if seg.is_empty() {
                continue;
            }
            if seg.len() > self.max_segment {
                self.stats.oversized += 1;
                self.stats.discarded_bytes += seg.len() as u64;
                tracing::debug!(
                    bytes = seg.len(),
                    max = self.max_segment,
                    "serial: dropped an oversized packet"
                );
                continue;
            }
            let seg_len = seg.len();
            match self.decode(seg) {
                Ok(p) => {
                    self.stats.packets += 1;
                    return Some(p);
                }
                Err(why) => {
                    self.stats.corrupt += 1;
                    self.stats.discarded_bytes += seg_len as u64;
                    tracing::debug!(bytes = seg_len, why, "serial: dropped a corrupt packet");
                }
            }
        }
    }

    fn decode(&self, mut seg: BytesMut) -> Result<Packet, &'static str> {
        if self.escaped {
            let n = unescape_in_place(&mut seg).ok_or("broken XON/XOFF escape")?;
            seg.truncate(n);
        }
        let n = cobs::decode_in_place(&mut seg).map_err(|_| "not valid COBS")?;
        if n < OVERHEAD {
            return Err("too short for a packet");
        }
        if n - OVERHEAD > self.max_body {
            return Err("longer than the largest frame");
        }
        let (data, crc) = seg[..n].split_at(n - 4);
        let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32c::crc32c(data) != want {
            return Err("CRC mismatch");
        }
        let kind = seg[0];
        let body = seg.freeze().slice(1..n - 4);
        Ok(Packet { kind, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const KIND: u8 = 0x44;

    fn wire(body: &[u8], escaped: bool) -> Vec<u8> {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let n = encode(KIND, body, escaped, &mut out, &mut scratch);
        out.truncate(n);
        out
    }

    fn body(i: usize, len: usize) -> Vec<u8> {
        // Zeros and the XON/XOFF/escape bytes are frequent on purpose.
        let alphabet = [0u8, 0x11, 0x13, 0x7d, 0x20, 0xff, 1, 2];
        (0..len)
            .map(|j| {
                let x = (i * 7919 + j * 31) ^ (j >> 3);
                if x.is_multiple_of(3) {
                    alphabet[x % alphabet.len()]
                } else {
                    x as u8
                }
            })
            .collect()
    }

    /// Feeds `bytes` in pieces of `step` and collects every packet.
    fn decode_all(dec: &mut Decoder, bytes: &[u8], step: usize) -> Vec<Packet> {
        let mut got = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            dec.buffer().extend_from_slice(piece);
            while let Some(p) = dec.next_packet() {
                got.push(p);
            }
        }
        got
    }

    #[test]
    fn round_trips_bodies_of_every_awkward_size() {
        for escaped in [false, true] {
            let sizes = [
                0usize, 1, 2, 3, 4, 253, 254, 255, 256, 508, 509, 1000, 70_000,
            ];
            let mut stream = Vec::new();
            for (i, &n) in sizes.iter().enumerate() {
                let w = wire(&body(i, n), escaped);
                assert_eq!(w.first(), Some(&0));
                assert_eq!(w.last(), Some(&0));
                assert!(
                    !w[1..w.len() - 1].contains(&0),
                    "a 0x00 inside an encoded packet"
                );
                if escaped {
                    assert!(
                        !w.contains(&XON) && !w.contains(&XOFF),
                        "XON/XOFF left in an escaped packet"
                    );
                }
                stream.extend_from_slice(&w);
            }
            for step in [1, 7, 4096, stream.len()] {
                let mut dec = Decoder::new(1 << 20, escaped);
                let got = decode_all(&mut dec, &stream, step);
                assert_eq!(
                    got.len(),
                    sizes.len(),
                    "escaped={escaped} step={step}: expected {} packets, got {}",
                    sizes.len(),
                    got.len()
                );
                for (i, (p, &n)) in got.iter().zip(&sizes).enumerate() {
                    assert_eq!(p.kind, KIND);
                    assert!(
                        p.body[..] == body(i, n)[..],
                        "escaped={escaped} step={step}: packet {i} ({n} bytes) differs"
                    );
                }
                let s = dec.stats();
                assert_eq!((s.corrupt, s.oversized, s.discarded_bytes), (0, 0, 0));
            }
        }
    }

    #[test]
    fn keepalive_zeros_between_packets_are_not_packets() {
        let mut stream = vec![0, 0, 0];
        stream.extend(wire(b"a", false));
        stream.extend([0, 0]);
        stream.extend(wire(b"", false));
        let mut dec = Decoder::new(100, false);
        let got = decode_all(&mut dec, &stream, 1);
        let bodies: Vec<&[u8]> = got.iter().map(|p| &p.body[..]).collect();
        assert_eq!(bodies, [&b"a"[..], &b""[..]]);
        assert_eq!(dec.stats().corrupt, 0);
    }

    /// Line noise of every kind: each packet whose bytes and leading delimiter
    /// came through untouched is delivered, in order; nothing else is; the
    /// decoder never needs more than one segment of buffer.
    #[test]
    fn resynchronises_after_flipped_dropped_and_inserted_bytes() {
        for escaped in [false, true] {
            for seed in 0..40u64 {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut stream = Vec::new();
                let mut expect = Vec::new();
                let mut damaged_packets = 0;
                for i in 0..200 {
                    let n = match rng.random_range(0..10) {
                        0 => 0,
                        1..=6 => rng.random_range(1..300),
                        _ => rng.random_range(300..5000),
                    };
                    let b = body(i, n);
                    let mut w = wire(&b, escaped);
                    let mut damaged = false;
                    match rng.random_range(0..8) {
                        // flip a byte (never into itself)
                        0 => {
                            let at = rng.random_range(0..w.len());
                            w[at] ^= rng.random_range(1..=255u8);
                            damaged = true;
                        }
                        // drop a byte inside the packet
                        1 => {
                            let at = rng.random_range(1..w.len() - 1);
                            w.remove(at);
                            damaged = true;
                        }
                        // garbage (maybe with zeros) before the packet
                        2 => {
                            let junk: Vec<u8> =
                                (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
                            stream.extend_from_slice(&junk);
                        }
                        // garbage inserted inside the packet
                        3 => {
                            let at = rng.random_range(1..w.len());
                            let junk: Vec<u8> = (0..rng.random_range(1..8))
                                .map(|_| rng.random_range(1..=255u8))
                                .collect();
                            w.splice(at..at, junk);
                            damaged = true;
                        }
                        _ => {}
                    }
                    if damaged {
                        damaged_packets += 1;
                    } else {
                        expect.push(b);
                    }
                    stream.extend_from_slice(&w);
                }
                let mut dec = Decoder::new(8192, escaped);
                let step = rng.random_range(1..3000);
                let got = decode_all(&mut dec, &stream, step);
                let got: Vec<&[u8]> = got.iter().map(|p| &p.body[..]).collect();
                let want: Vec<&[u8]> = expect.iter().map(|b| &b[..]).collect();
                assert!(
                    got == want,
                    "escaped={escaped} seed={seed}: expected the {} intact packets in order, got {} packets",
                    want.len(),
                    got.len()
                );
                let s = dec.stats();
                assert!(
                    s.corrupt + s.oversized >= 1 || damaged_packets == 0,
                    "seed={seed}: {damaged_packets} damaged packets but nothing counted as dropped: {s:?}"
                );
            }
        }
    }

    #[test]
    fn a_packet_above_the_limit_is_dropped_and_the_next_one_arrives() {
        let mut stream = wire(&body(1, 5000), false);
        stream.extend(wire(&body(2, 100), false));
        let mut dec = Decoder::new(1000, false);
        let got = decode_all(&mut dec, &stream, 512);
        assert_eq!(got.len(), 1, "expected only the small packet, got {got:?}");
        assert!(got[0].body[..] == body(2, 100)[..]);
        assert_eq!(dec.stats().oversized, 1, "{:?}", dec.stats());
    }

    #[test]
    fn endless_noise_without_a_delimiter_is_not_buffered() {
        let limit = max_segment(1000, false);
        let mut dec = Decoder::new(1000, false);
        for _ in 0..1000 {
            dec.buffer().extend_from_slice(&[0x55; 4096]);
            assert!(dec.next_packet().is_none());
            assert!(
                dec.buffer().len() <= limit + 4096,
                "buffer grew to {} bytes; the limit is {limit} + one read",
                dec.buffer().len()
            );
        }
        // The first 0x00 ends the skipping; the packet after it arrives.
        let mut tail = vec![0x55, 0x55];
        tail.extend(wire(b"after the noise", false));
        let got = decode_all(&mut dec, &tail, 3);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].body[..], b"after the noise");
        assert_eq!(dec.stats().oversized, 1, "{:?}", dec.stats());
    }

    #[test]
    fn a_bad_crc_with_valid_cobs_is_dropped() {
        // Valid COBS of a body whose CRC is wrong.
        let mut raw = vec![KIND, 1, 2, 3];
        raw.extend(0xdead_beef_u32.to_le_bytes());
        let mut w = vec![0];
        w.extend(cobs::encode_vec(&raw));
        w.push(0);
        w.extend(wire(b"ok", false));
        let mut dec = Decoder::new(100, false);
        let got = decode_all(&mut dec, &w, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].body[..], b"ok");
        assert_eq!(dec.stats().corrupt, 1);
    }
}
