//! Length-prefix framing for stream transports: each frame is a u32 big-endian
//! length followed by that many bytes.
//!
//! A declared length above the reader's `max` gives [`LinkError::FrameTooLarge`];
//! the stream has then lost its framing (the rest of that frame is still in
//! it) and is unusable: close it and open a new link. A [`FrameReader`] says
//! so with [`LinkError::Corrupt`] on every later read.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::LinkError;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Reads one frame into a fresh buffer (one allocation of exactly the frame's
/// length, filled straight from the reader, no extra copy).
///
/// Returns [`LinkError::Closed`] on a clean end of stream at a frame boundary,
/// and an `UnexpectedEof` I/O error when the stream ends mid-frame. Not
/// cancel-safe; use a [`FrameReader`] where the future may be dropped.
pub async fn read_frame<R>(r: &mut R, max: usize) -> Result<Bytes, LinkError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    FrameReader::new(max).read(r).await
}

/// Writes one frame: the length prefix and the payload go out together in one
/// vectored write where the writer supports it, without copying the payload.
/// Frames longer than `max` are refused before anything is written.
pub async fn write_frame<W>(w: &mut W, frame: &[u8], max: usize) -> Result<(), LinkError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    if frame.len() > max || u32::try_from(frame.len()).is_err() {
        return Err(LinkError::FrameTooLarge {
            len: frame.len(),
            max,
        });
    }
    let header = (frame.len() as u32).to_be_bytes();
    let mut buf = Buf::chain(&header[..], frame);
    // Through `&mut W`, which is Sized even when W is not.
    let mut w = w;
    AsyncWriteExt::write_all_buf(&mut w, &mut buf).await?;
    w.flush().await?;
    Ok(())
}

/// A cancel-safe frame reader: a partly read frame is kept in the reader, so a
/// `read` future dropped inside `tokio::select!` loses nothing.
#[derive(Debug)]
pub struct FrameReader {
    max: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    body: Option<BytesMut>,
    want: usize,
    lost_framing: bool,
}

impl FrameReader {
    /// A reader refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameReader {
            max,
            header: [0; HEADER_LEN],
            header_len: 0,
            body: None,
            want: 0,
            lost_framing: false,
        }
    }

    /// Reads the next whole frame from `r`, which must be the same stream on
    /// every call.
    pub async fn read<R>(&mut self, r: &mut R) -> Result<Bytes, LinkError>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        if self.lost_framing {
            return Err(LinkError::Corrupt(format!(
                "the stream lost its framing after a frame above {} bytes; close this link and open a new one",
                self.max
            )));
        }
        if self.body.is_none() {
            while self.header_len < HEADER_LEN {
                let n = r.read(&mut self.header[self.header_len..]).await?;
                if n == 0 {
                    return Err(if self.header_len == 0 {
                        LinkError::Closed
                    } else {
                        eof_mid_frame()
                    });
                }
                self.header_len += n;
            }
            let len = u32::from_be_bytes(self.header) as usize;
            if len > self.max {
                self.lost_framing = true;
                return Err(LinkError::FrameTooLarge { len, max: self.max });
            }
            self.body = Some(BytesMut::with_capacity(len));
            self.want = len;
        }
        let body = self.body.as_mut().expect("set above");
        while body.len() < self.want {
            let left = (self.want - body.len()) as u64;
            // `take` keeps a roomier-than-asked buffer from swallowing the next frame.
            let n = (&mut *r).take(left).read_buf(body).await?;
            if n == 0 {
                return Err(eof_mid_frame());
            }
        }
        self.header_len = 0;
        Ok(self.body.take().expect("set above").freeze())
    }
}

fn eof_mid_frame() -> LinkError {
    LinkError::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the peer went away in the middle of a frame",
    ))
}

// ---- Marked streams: frames plus in-band close and keepalive ----
//
// Transports with no half-close of their own (USB bulk pipes, RFCOMM) mark a
// closed direction in the stream itself, with a length no frame has; a
// keepalive mark lets a receiver tell a silent peer from a gone one.

/// The length prefix that closes a direction.
pub const CLOSE: [u8; HEADER_LEN] = u32::MAX.to_be_bytes();
/// The length prefix of a keepalive (no body): each end sends one every
/// interval the driver picks, so a peer that vanished without a word (a killed
/// host process, which the gadget is not told of) is noticed.
pub const KEEPALIVE: [u8; HEADER_LEN] = (u32::MAX - 1).to_be_bytes();

/// What the reassembler found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A whole frame (possibly empty).
    Frame(Bytes),
    /// The peer closed its direction.
    Close,
    /// The peer is alive.
    Keepalive,
}

/// Reassembles frames from the chunks a transport's reads return (any sizes, zero
/// included). Holds a partial frame across calls, so a `recv` future dropped
/// between chunks loses nothing.
#[derive(Debug)]
pub struct Reassembler {
    max: usize,
    buf: BytesMut,
    broken: bool,
}

impl Reassembler {
    /// A reassembler refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Reassembler {
            max,
            buf: BytesMut::new(),
            broken: false,
        }
    }

    /// Adds bytes read from the pipe.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame or the peer's close, if the bytes so far hold one.
    pub fn next_frame(&mut self) -> Result<Option<Item>, LinkError> {
        if self.broken {
            return Err(LinkError::Corrupt(
                "the stream lost its framing earlier; open a new link".into(),
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
pub fn header(len: usize, max: usize) -> Result<[u8; HEADER_LEN], LinkError> {
    if len > max || u32::try_from(len).is_err() {
        return Err(LinkError::FrameTooLarge { len, max });
    }
    Ok((len as u32).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_frames_of_any_size() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let sizes = [0usize, 1, 3, 4, 5, 1000, 70_000, 300_000];
        let writer = tokio::spawn(async move {
            for (i, &n) in sizes.iter().enumerate() {
                write_frame(&mut a, &vec![i as u8; n], 1 << 20)
                    .await
                    .unwrap();
            }
        });
        for (i, &n) in sizes.iter().enumerate() {
            let f = read_frame(&mut b, 1 << 20).await.unwrap();
            assert_eq!(f.len(), n, "frame {i}: expected {n} bytes, got {}", f.len());
            assert!(f.iter().all(|&x| x == i as u8), "frame {i} content differs");
        }
        writer.await.unwrap();
        assert!(matches!(
            read_frame(&mut b, 1 << 20).await,
            Err(LinkError::Closed)
        ));
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_both_ways() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let e = write_frame(&mut a, &[0; 11], 10).await.unwrap_err();
        assert!(
            matches!(e, LinkError::FrameTooLarge { len: 11, max: 10 }),
            "{e:?}"
        );
        write_frame(&mut a, &[0; 11], 100).await.unwrap();
        let mut r = FrameReader::new(10);
        let e = r.read(&mut b).await.unwrap_err();
        assert!(
            matches!(e, LinkError::FrameTooLarge { len: 11, max: 10 }),
            "{e:?}"
        );
        let e = r.read(&mut b).await.unwrap_err();
        assert!(
            matches!(&e, LinkError::Corrupt(m) if m.contains("open a new one")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn eof_mid_frame_is_an_io_error() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 9, 1, 2]).await.unwrap();
        drop(a);
        let e = read_frame(&mut b, 100).await.unwrap_err();
        assert!(
            matches!(&e, LinkError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn reader_is_cancel_safe() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut r = FrameReader::new(1000);
        a.write_all(&[0, 0, 0, 6, 1, 2, 3]).await.unwrap();
        // The read stops after a partial body; the frame must survive the cancel.
        let t = tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut b)).await;
        assert!(t.is_err(), "read should still be waiting for the rest");
        a.write_all(&[4, 5, 6]).await.unwrap();
        assert_eq!(&r.read(&mut b).await.unwrap()[..], &[1, 2, 3, 4, 5, 6]);
    }

    fn marked_framed(frames: &[&[u8]]) -> Vec<u8> {
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
        let mut bytes = marked_framed(&[b"one", &big]);
        bytes.extend_from_slice(&KEEPALIVE);
        bytes.extend(marked_framed(&[b"", b"two"]));
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
        r.push(&marked_framed(&[b"ok"]));
        assert!(matches!(r.next_frame(), Err(LinkError::Corrupt(_))));
    }
}
