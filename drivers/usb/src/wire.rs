//! What travels on the bulk pipes: u32 big-endian length-prefixed frames, as
//! over TCP, after a session handshake that makes a stale byte from an
//! earlier session impossible to mistake for a frame.
//!
//! A session starts with the host's vendor control request [`REQ_OPEN`] on
//! the gateway interface. The gadget drops everything of the session before
//! (queued transfers on both endpoints), answers with a fresh 8-byte session
//! id, and sends a HELLO frame carrying it; the host checks that HELLO (so
//! nothing stale came before it) and answers with its own. The length
//! [`CLOSE`] (never a frame's: frames are at most `MAX_FRAME`) closes a
//! direction cleanly, so an empty frame is an empty frame.

use bytes::{Buf, Bytes, BytesMut};
use gateway_link::LinkError;

/// Vendor control request (IN, recipient interface) that starts a session.
pub(crate) const REQ_OPEN: u8 = 0x47;
/// Bytes of the answer to [`REQ_OPEN`]: the session id.
pub(crate) const OPEN_REPLY_LEN: u16 = 8;
/// Bytes of the length prefix.
pub(crate) const HEADER_LEN: usize = 4;
const HELLO_MAGIC: &[u8; 8] = b"GWUSB\x00\x02\x00";
/// The length prefix that closes a direction.
pub(crate) const CLOSE: [u8; HEADER_LEN] = u32::MAX.to_be_bytes();
/// The length prefix of a keepalive (no body): each end sends one every
/// [`KEEPALIVE_INTERVAL`], so a peer that vanished without a word (a killed
/// host process, which the gadget is not told of) is noticed.
pub(crate) const KEEPALIVE: [u8; HEADER_LEN] = (u32::MAX - 1).to_be_bytes();
/// How often each end sends a keepalive.
pub(crate) const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// A receiver waiting this long with not one byte arriving (not even a
/// keepalive) declares the peer gone.
pub(crate) const SILENCE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

/// What the reassembler found next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// A whole frame (possibly empty).
    Frame(Bytes),
    /// The peer closed its direction.
    Close,
    /// The peer is alive.
    Keepalive,
}

/// The HELLO frame of session `id`, as sent by either side.
pub(crate) fn hello(id: u64) -> Vec<u8> {
    let mut v = HELLO_MAGIC.to_vec();
    v.extend_from_slice(&id.to_be_bytes());
    v
}

/// Checks that `frame` is the HELLO of session `id`.
pub(crate) fn check_hello(frame: &[u8], id: u64) -> Result<(), LinkError> {
    if frame.len() == 16 && &frame[..8] == HELLO_MAGIC {
        let got = u64::from_be_bytes(frame[8..16].try_into().expect("8 bytes"));
        if got == id {
            return Ok(());
        }
        return Err(LinkError::Corrupt(format!(
            "USB session hello for session {got:016x}, expected {id:016x} (a stale session's data)"
        )));
    }
    Err(LinkError::Corrupt(format!(
        "the first USB frame of a session is not a gateway hello ({} bytes); is the other end a gateway node?",
        frame.len()
    )))
}

/// Reassembles frames from the chunks bulk reads return (any sizes, zero
/// included). Holds a partial frame across calls, so a `recv` future dropped
/// between chunks loses nothing.
#[derive(Debug)]
pub(crate) struct Reassembler {
    max: usize,
    buf: BytesMut,
    broken: bool,
}

impl Reassembler {
    pub(crate) fn new(max: usize) -> Self {
        Reassembler {
            max,
            buf: BytesMut::new(),
            broken: false,
        }
    }

    /// Adds bytes read from the pipe.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame or the peer's close, if the bytes so far hold one.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Item>, LinkError> {
        if self.broken {
            return Err(LinkError::Corrupt(
                "the USB stream lost its framing earlier; open a new link".into(),
            ));
        }
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        if self.buf[..HEADER_LEN] == CLOSE {
            self.buf.advance(HEADER_LEN);
            return Ok(Some(Item::Close));
        }
        if self.buf[..HEADER_LEN] == KEEPALIVE {
            self.buf.advance(HEADER_LEN);
            return Ok(Some(Item::Keepalive));
        }
        let len = u32::from_be_bytes(self.buf[..HEADER_LEN].try_into().expect("4 bytes")) as usize;
        if len > self.max {
            self.broken = true;
            return Err(LinkError::FrameTooLarge { len, max: self.max });
        }
        if self.buf.len() < HEADER_LEN + len {
            // Reserve the whole frame once, so a big frame is not regrown chunk by chunk.
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        Ok(Some(Item::Frame(self.buf.split_to(len).freeze())))
    }
}

/// The length prefix of a frame of `len` bytes, refusing one over `max`.
pub(crate) fn header(len: usize, max: usize) -> Result<[u8; HEADER_LEN], LinkError> {
    if len > max || u32::try_from(len).is_err() {
        return Err(LinkError::FrameTooLarge { len, max });
    }
    Ok((len as u32).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in frames {
            v.extend_from_slice(&header(f.len(), 1 << 20).unwrap());
            v.extend_from_slice(f);
        }
        v
    }

    #[test]
    fn frames_come_back_whole_whatever_sizes_the_reads_return() {
        let big = vec![7u8; 70_000];
        let mut bytes = framed(&[b"one", &big]);
        bytes.extend_from_slice(&KEEPALIVE);
        bytes.extend(framed(&[b"", b"two"]));
        bytes.extend_from_slice(&CLOSE);
        for step in [1, 3, 512, 4096, 65_536, bytes.len()] {
            let mut r = Reassembler::new(1 << 20);
            let mut got = Vec::new();
            for chunk in bytes.chunks(step) {
                r.push(chunk);
                r.push(&[]); // a zero-length packet changes nothing
                while let Some(f) = r.next_frame().unwrap() {
                    if f != Item::Keepalive {
                        got.push(f);
                    }
                }
            }
            let frame = |i: usize| match &got[i] {
                Item::Frame(f) => f.clone(),
                other => panic!("step {step}: {other:?} at {i}"),
            };
            assert_eq!(got.len(), 5, "step {step}");
            assert_eq!(&frame(0)[..], b"one");
            assert_eq!(&frame(1)[..], &big[..]);
            assert!(
                frame(2).is_empty(),
                "an empty frame is a frame, not a close"
            );
            assert_eq!(&frame(3)[..], b"two");
            assert_eq!(got[4], Item::Close);
        }
    }

    #[test]
    fn an_oversized_length_breaks_the_stream_for_good() {
        let mut r = Reassembler::new(100);
        r.push(&1000u32.to_be_bytes());
        assert!(matches!(
            r.next_frame(),
            Err(LinkError::FrameTooLarge {
                len: 1000,
                max: 100
            })
        ));
        r.push(&framed(&[b"ok"]));
        assert!(matches!(r.next_frame(), Err(LinkError::Corrupt(_))));
    }

    #[test]
    fn a_hello_of_another_session_or_of_another_protocol_is_refused() {
        assert!(check_hello(&hello(5), 5).is_ok());
        assert!(
            matches!(check_hello(&hello(6), 5), Err(LinkError::Corrupt(m)) if m.contains("stale"))
        );
        assert!(matches!(
            check_hello(b"hello world 1234", 5),
            Err(LinkError::Corrupt(_))
        ));
        assert!(check_hello(&hello(5)[..15], 5).is_err());
    }
}
