//! A link over a byte stream with no half-close of its own (RFCOMM): frames
//! are u32 length-prefixed as over TCP, and a closed direction is marked in
//! the stream ([`gateway_link::framer::CLOSE`]), because shutting an RFCOMM
//! socket down disconnects both directions at once.
//!
//! The end of the stream without that mark means the peer went away (process
//! killed, radio lost): `recv` says so with an I/O error, never `Closed`.

use std::io;

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use gateway_link::framer::{CLOSE, Item, Reassembler, header};
use gateway_link::{FrameRx, FrameTx, Link, LinkCaps, LinkError, LinkInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes asked of one read.
const READ_BYTES: usize = 64 * 1024;

/// A link over a stream split into its halves.
pub struct StreamLink<R, W> {
    info: LinkInfo,
    caps: LinkCaps,
    r: R,
    w: W,
}

impl<R, W> StreamLink<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// A link over the halves `r` and `w` of one stream.
    pub fn new(r: R, w: W, info: LinkInfo, caps: LinkCaps) -> Self {
        StreamLink { info, caps, r, w }
    }
}

impl<R, W> Link for StreamLink<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    fn caps(&self) -> LinkCaps {
        self.caps
    }

    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
        let me = *self;
        let max = me.caps.max_frame;
        let span = tracing::debug_span!("bt_link", peer = %me.info.peer);
        (
            Box::new(StreamTx {
                w: me.w,
                max,
                closed: false,
            }),
            Box::new(StreamRx {
                r: me.r,
                re: Reassembler::new(max),
                buf: vec![0; READ_BYTES],
                closed: false,
                span,
            }),
        )
    }
}

struct StreamTx<W> {
    w: W,
    max: usize,
    closed: bool,
}

#[async_trait]
impl<W: AsyncWrite + Unpin + Send> FrameTx for StreamTx<W> {
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        if self.closed {
            return Err(LinkError::Closed);
        }
        let head = header(frame.len(), self.max)?;
        let mut buf = Buf::chain(&head[..], frame);
        self.w.write_all_buf(&mut buf).await.map_err(gone)?;
        self.w.flush().await.map_err(gone)?;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), LinkError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.w.write_all(&CLOSE).await.map_err(gone)?;
        self.w.flush().await.map_err(gone)?;
        Ok(())
    }
}

struct StreamRx<R> {
    r: R,
    re: Reassembler,
    buf: Vec<u8>,
    closed: bool,
    span: tracing::Span,
}

#[async_trait]
impl<R: AsyncRead + Unpin + Send> FrameRx for StreamRx<R> {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        loop {
            if self.closed {
                return Err(LinkError::Closed);
            }
            match self.re.next_frame()? {
                Some(Item::Frame(f)) => return Ok(f),
                Some(Item::Close) => {
                    self.closed = true;
                    tracing::debug!(parent: &self.span, "peer closed its direction");
                    return Err(LinkError::Closed);
                }
                Some(Item::Keepalive) => continue,
                None => {}
            }
            // A read is cancel-safe; what it returned is in the reassembler.
            let n = self.r.read(&mut self.buf).await.map_err(gone)?;
            if n == 0 {
                return Err(went_away());
            }
            self.re.push(&self.buf[..n]);
        }
    }
}

/// The end of a socket with no close before it: the peer went away.
pub(crate) fn went_away() -> LinkError {
    LinkError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the Bluetooth peer went away without closing the link (process killed, out of range or powered off)",
    ))
}

/// An I/O error with the Bluetooth reading of the common errno values.
pub(crate) fn gone(e: io::Error) -> LinkError {
    let why = match e.raw_os_error() {
        Some(libc::ECONNRESET) => "the Bluetooth peer reset the connection",
        Some(libc::ETIMEDOUT) => {
            "the Bluetooth link timed out (peer out of range or powered off: supervision timeout)"
        }
        Some(libc::EHOSTDOWN) | Some(libc::ENOTCONN) => "the Bluetooth peer is not connected",
        Some(libc::ENETDOWN) => "the local Bluetooth adapter went down (powered off or removed)",
        _ => return LinkError::Io(e),
    };
    LinkError::Io(io::Error::new(e.kind(), format!("{why} ({e})")))
}
