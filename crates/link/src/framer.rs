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
}
