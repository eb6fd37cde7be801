//! The length-prefix framers of `gateway-link` (`framer.rs`): the
//! cancel-safe `FrameReader` (TCP) and the marked-stream `Reassembler`
//! (USB, RFCOMM), against a model parser of the same byte format.
//!
//! Input: `[which][max: u16 LE][seed]` then the byte stream. `which` bit 0
//! picks FrameReader (1) or Reassembler (0); `max` is the frame limit;
//! `seed` drives the read sizes and, for FrameReader, reads that return
//! Pending and a `read` future dropped there (a `select!` cancelling it).
//!
//! Checks: the items out are exactly the model's (frames byte-equal, close
//! and keepalive marks, the oversize error at the same place, every later
//! read an error); FrameReader ends with `Closed` at a frame boundary and
//! `UnexpectedEof` mid-frame.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use gateway_fuzz::{Cursor, Rng, poll_once};
use gateway_link::LinkError;
use gateway_link::framer::{CLOSE, FrameReader, HEADER_LEN, Item, KEEPALIVE, Reassembler};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

#[derive(Debug, PartialEq)]
enum Want {
    Frame(Vec<u8>),
    Close,
    Keepalive,
    TooLarge(usize),
}

/// The format, parsed straight: what a reader must produce from `s`, and
/// whether the stream ends mid-item (after the last whole one).
fn model(s: &[u8], max: usize, marks: bool) -> (Vec<Want>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < s.len() {
        if s.len() - at < HEADER_LEN {
            return (out, true);
        }
        let head: [u8; 4] = s[at..at + 4].try_into().unwrap();
        if marks && head == CLOSE {
            out.push(Want::Close);
            at += 4;
            continue;
        }
        if marks && head == KEEPALIVE {
            out.push(Want::Keepalive);
            at += 4;
            continue;
        }
        let len = u32::from_be_bytes(head) as usize;
        if len > max {
            out.push(Want::TooLarge(len));
            return (out, false);
        }
        if s.len() - at - 4 < len {
            return (out, true);
        }
        out.push(Want::Frame(s[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    (out, false)
}

/// A stream whose reads return a few bytes at a time, or (one in four)
/// Pending, at any point of a frame.
struct Drip<'a> {
    data: &'a [u8],
    rng: Rng,
}

impl AsyncRead for Drip<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.rng.below(4) == 0 {
            return Poll::Pending;
        }
        let n = (self.rng.below(64) as usize + 1)
            .min(self.data.len())
            .min(buf.remaining());
        let (a, b) = self.data.split_at(n);
        buf.put_slice(a);
        self.data = b;
        Poll::Ready(Ok(()))
    }
}

fn reassembler(stream: &[u8], max: usize, rng: &mut Rng) {
    let (want, _) = model(stream, max, true);
    let mut r = Reassembler::new(max);
    let mut got = Vec::new();
    let mut rest = stream;
    let mut broken = false;
    loop {
        loop {
            match r.next_frame() {
                Ok(Some(Item::Frame(f))) => got.push(Want::Frame(f.to_vec())),
                Ok(Some(Item::Close)) => got.push(Want::Close),
                Ok(Some(Item::Keepalive)) => got.push(Want::Keepalive),
                Ok(None) => break,
                Err(LinkError::FrameTooLarge { len, max: m }) => {
                    assert_eq!(m, max);
                    got.push(Want::TooLarge(len));
                    broken = true;
                    break;
                }
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
        if broken || rest.is_empty() {
            break;
        }
        let n = (rng.below(300) as usize).min(rest.len());
        r.push(&rest[..n]);
        rest = &rest[n..];
    }
    assert_eq!(got, want, "Reassembler items differ from the model");
    if broken {
        r.push(&[0, 0, 0, 0]);
        assert!(
            matches!(r.next_frame(), Err(LinkError::Corrupt(_))),
            "a broken stream must stay broken"
        );
    }
}

fn frame_reader(stream: &[u8], max: usize, rng: Rng) {
    let (want, cut) = model(stream, max, false);
    let mut reader = FrameReader::new(max);
    let mut src = Drip { data: stream, rng };
    let mut got = Vec::new();
    let end = loop {
        // A read that returns Pending is dropped there, as a cancelled
        // `select!` branch is, and a new one started.
        let mut fut = Box::pin(reader.read(&mut src));
        let r = match poll_once(&mut fut) {
            Some(r) => r,
            None => {
                drop(fut);
                continue;
            }
        };
        match r {
            Ok(f) => got.push(Want::Frame(f.to_vec())),
            Err(LinkError::FrameTooLarge { len, max: m }) => {
                assert_eq!(m, max);
                got.push(Want::TooLarge(len));
                break None;
            }
            Err(e) => break Some(e),
        }
    };
    assert_eq!(got, want, "FrameReader frames differ from the model");
    match end {
        None => {
            let mut fut = Box::pin(reader.read(&mut src));
            let again = poll_once(&mut fut).expect("a broken reader answers without reading");
            assert!(matches!(again, Err(LinkError::Corrupt(_))), "{again:?}");
        }
        Some(LinkError::Closed) => assert!(!cut, "Closed although the stream ended mid-frame"),
        Some(LinkError::Io(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            assert!(cut, "UnexpectedEof at a frame boundary");
        }
        Some(e) => panic!("unexpected error {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let which = c.u8();
    let max = c.u16() as usize;
    let mut rng = Rng::new(u64::from(c.u8()));
    let stream = c.rest();
    if which & 1 == 0 {
        reassembler(stream, max, &mut rng);
    } else {
        frame_reader(stream, max, rng);
    }
});
