//! The line codec (`codec.rs`) for the fuzz targets in `fuzz/`, behind the
//! `fuzzing` feature: thin wrappers, so the codec itself stays private and
//! nothing here is an API.
#![doc(hidden)]

use bytes::Bytes;

use crate::codec;

/// One packet on the wire (leading and trailing 0x00 included).
pub fn encode(kind: u8, body: &[u8], escaped: bool) -> Vec<u8> {
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    let n = codec::encode(kind, body, escaped, &mut out, &mut scratch);
    out.truncate(n);
    out
}

/// Longest run between two delimiters a body of `max_body` bytes can make.
pub fn max_segment(max_body: usize, escaped: bool) -> usize {
    codec::max_segment(max_body, escaped)
}

/// The receiving half of the codec.
#[derive(Debug)]
pub struct Decoder(codec::Decoder);

/// What a [`Decoder`] counted: packets, corrupt, oversized, discarded bytes.
pub type Stats = (u64, u64, u64, u64);

impl Decoder {
    /// A decoder for bodies of at most `max_body` bytes.
    pub fn new(max_body: usize, escaped: bool) -> Self {
        Decoder(codec::Decoder::new(max_body, escaped))
    }

    /// Appends bytes read from the line.
    pub fn push(&mut self, bytes: &[u8]) {
        self.0.buffer().extend_from_slice(bytes);
    }

    /// Bytes held now.
    pub fn buffered(&mut self) -> usize {
        self.0.buffer().len()
    }

    /// The next packet as (kind, body).
    pub fn next_packet(&mut self) -> Option<(u8, Bytes)> {
        self.0.next_packet().map(|p| (p.kind, p.body))
    }

    /// Packets, corrupt, oversized, discarded bytes.
    pub fn stats(&self) -> Stats {
        let s = self.0.stats();
        (s.packets, s.corrupt, s.oversized, s.discarded_bytes)
    }
}
