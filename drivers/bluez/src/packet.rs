//! A link over a sequenced-packet socket (L2CAP SeqPacket, BR/EDR or LE
//! credit-based): the socket keeps packet boundaries but takes packets of at
//! most its send MTU, so a frame travels as fragments of up to MTU - 1 bytes,
//! each after one header byte:
//!
//! - [`MORE`]: more fragments of this frame follow;
//! - [`END`]: the last (or only) fragment of a frame, possibly empty;
//! - [`CLOSE`]: the sender closed its direction (alone in its packet).
//!
//! L2CAP has no half-close (shutting a socket down disconnects the channel),
//! hence the in-band close. The end of the socket without one means the peer
//! went away. A reassembled frame above `max_frame`, an unknown header or an
//! empty packet fails the link: it is not a gateway peer, or it is broken.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use gateway_link::{FrameRx, FrameTx, Link, LinkCaps, LinkError, LinkInfo};

use crate::stream::gone;

/// Header: more fragments of this frame follow.
pub const MORE: u8 = 0x00;
/// Header: the last fragment of a frame.
pub const END: u8 = 0x01;
/// Header: the sender closed its direction.
pub const CLOSE: u8 = 0x02;

/// A socket that sends and receives whole packets.
#[async_trait]
pub trait PacketSocket: Send + Sync + 'static {
    /// Sends one packet of at most [`send_mtu`](Self::send_mtu) bytes.
    async fn send(&self, packet: &[u8]) -> io::Result<usize>;
    /// Receives one packet; `Ok(0)` is the end of the socket.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// The largest packet the peer takes.
    fn send_mtu(&self) -> io::Result<usize>;
    /// The largest packet this end takes.
    fn recv_mtu(&self) -> io::Result<usize>;
}

/// A link over a packet socket.
pub struct PacketLink<S> {
    info: LinkInfo,
    caps: LinkCaps,
    sock: Arc<S>,
}

impl<S: PacketSocket> PacketLink<S> {
    /// A link over `sock`.
    pub fn new(sock: S, info: LinkInfo, caps: LinkCaps) -> Self {
        PacketLink {
            info,
            caps,
            sock: Arc::new(sock),
        }
    }
}

impl<S: PacketSocket> Link for PacketLink<S> {
    fn caps(&self) -> LinkCaps {
        self.caps
    }

    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
        let max = self.caps.max_frame;
        let recv_mtu = self.sock.recv_mtu().unwrap_or(65_535).max(2);
        let span = tracing::debug_span!("bt_link", peer = %self.info.peer);
        (
            Box::new(PacketTx {
                sock: self.sock.clone(),
                max,
                buf: Vec::new(),
                closed: false,
            }),
            Box::new(PacketRx {
                sock: self.sock,
                max,
                buf: vec![0; recv_mtu],
                frame: BytesMut::new(),
                closed: false,
                span,
            }),
        )
    }
}

struct PacketTx<S> {
    sock: Arc<S>,
    max: usize,
    buf: Vec<u8>,
    closed: bool,
}

impl<S: PacketSocket> PacketTx<S> {
    async fn send_packet(&mut self, head: u8, body: &[u8]) -> Result<(), LinkError> {
        self.buf.clear();
        self.buf.push(head);
        self.buf.extend_from_slice(body);
        let n = self.sock.send(&self.buf).await.map_err(gone)?;
        if n != self.buf.len() {
            return Err(LinkError::Io(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("the socket took {n} of a {}-byte packet", self.buf.len()),
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl<S: PacketSocket> FrameTx for PacketTx<S> {
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        if self.closed {
            return Err(LinkError::Closed);
        }
        if frame.len() > self.max {
            return Err(LinkError::FrameTooLarge {
                len: frame.len(),
                max: self.max,
            });
        }
        // The MTU is read per frame: an LE channel's may change.
        let mtu = self.sock.send_mtu().map_err(gone)?;
        if mtu < 2 {
            return Err(LinkError::Io(io::Error::other(format!(
                "the peer's MTU is {mtu} bytes, too small for a fragment"
            ))));
        }
        let room = mtu - 1;
        if frame.is_empty() {
            return self.send_packet(END, &[]).await;
        }
        let mut chunks = frame.chunks(room).peekable();
        while let Some(chunk) = chunks.next() {
            let head = if chunks.peek().is_some() { MORE } else { END };
            self.send_packet(head, chunk).await?;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), LinkError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.send_packet(CLOSE, &[]).await
    }
}

struct PacketRx<S> {
    sock: Arc<S>,
    max: usize,
    buf: Vec<u8>,
    /// The frame being reassembled: kept across cancelled `recv`s.
    frame: BytesMut,
    closed: bool,
    span: tracing::Span,
}

#[async_trait]
impl<S: PacketSocket> FrameRx for PacketRx<S> {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        loop {
            if self.closed {
                return Err(LinkError::Closed);
            }
            // One packet per call of the socket: cancel-safe.
            let n = self.sock.recv(&mut self.buf).await.map_err(gone)?;
            if n == 0 {
                return Err(crate::stream::went_away());
            }
            let (head, body) = (self.buf[0], &self.buf[1..n]);
            match head {
                MORE | END => {
                    if self.frame.len() + body.len() > self.max {
                        return Err(LinkError::FrameTooLarge {
                            len: self.frame.len() + body.len(),
                            max: self.max,
                        });
                    }
                    self.frame.extend_from_slice(body);
                    if head == END {
                        return Ok(self.frame.split().freeze());
                    }
                }
                CLOSE if body.is_empty() && self.frame.is_empty() => {
                    self.closed = true;
                    tracing::debug!(parent: &self.span, "peer closed its direction");
                    return Err(LinkError::Closed);
                }
                _ => {
                    return Err(LinkError::Corrupt(format!(
                        "a {n}-byte L2CAP packet with header {head:#04x} is not a gateway fragment; is the peer a gateway node?"
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// An in-memory packet pipe with a tiny MTU, to see fragmentation.
    struct Pipe {
        q: Arc<Mutex<VecDeque<Vec<u8>>>>,
        mtu: usize,
    }

    #[async_trait]
    impl PacketSocket for Pipe {
        async fn send(&self, p: &[u8]) -> io::Result<usize> {
            assert!(p.len() <= self.mtu, "packet above the MTU");
            self.q.lock().unwrap().push_back(p.to_vec());
            Ok(p.len())
        }
        async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            let p = self.q.lock().unwrap().pop_front().unwrap_or_default();
            buf[..p.len()].copy_from_slice(&p);
            Ok(p.len())
        }
        fn send_mtu(&self) -> io::Result<usize> {
            Ok(self.mtu)
        }
        fn recv_mtu(&self) -> io::Result<usize> {
            Ok(self.mtu)
        }
    }

    fn link(q: &Arc<Mutex<VecDeque<Vec<u8>>>>, max: usize) -> Box<dyn Link> {
        let caps = LinkCaps {
            kind: gateway_link::LinkKind::Bluetooth,
            max_frame: max,
            reliable: true,
            ordered: true,
        };
        Box::new(PacketLink::new(
            Pipe {
                q: q.clone(),
                mtu: 5,
            },
            LinkInfo::default(),
            caps,
        ))
    }

    #[tokio::test]
    async fn frames_of_any_length_cross_an_mtu_of_five_then_the_close() {
        let q = Arc::new(Mutex::new(VecDeque::new()));
        let (mut tx, mut rx) = link(&q, 100).split();
        let frames: Vec<Vec<u8>> = [0usize, 1, 4, 5, 9, 100]
            .iter()
            .map(|&n| (0..n as u8).collect())
            .collect();
        for f in &frames {
            tx.send(f).await.unwrap();
        }
        tx.close().await.unwrap();
        assert!(matches!(tx.send(b"x").await, Err(LinkError::Closed)));
        assert!(q.lock().unwrap().iter().all(|p| !p.is_empty()));
        for f in &frames {
            assert_eq!(&rx.recv().await.unwrap()[..], &f[..]);
        }
        assert!(matches!(rx.recv().await, Err(LinkError::Closed)));
    }

    #[tokio::test]
    async fn a_frame_above_max_is_refused_by_both_ends() {
        let q = Arc::new(Mutex::new(VecDeque::new()));
        let (mut tx, _) = link(&q, 10).split();
        assert!(matches!(
            tx.send(&[0; 11]).await,
            Err(LinkError::FrameTooLarge { len: 11, max: 10 })
        ));
        // A peer ignoring the limit: its fragments pile up past max.
        for _ in 0..3 {
            q.lock().unwrap().push_back(vec![MORE, 1, 2, 3, 4]);
        }
        let (_, mut rx) = link(&q, 10).split();
        assert!(matches!(
            rx.recv().await,
            Err(LinkError::FrameTooLarge { max: 10, .. })
        ));
    }

    #[tokio::test]
    async fn a_foreign_packet_or_the_end_without_close_is_an_error_not_a_frame() {
        let q = Arc::new(Mutex::new(VecDeque::new()));
        q.lock().unwrap().push_back(vec![0x47, 1]);
        let (_, mut rx) = link(&q, 10).split();
        assert!(
            matches!(rx.recv().await, Err(LinkError::Corrupt(m)) if m.contains("not a gateway"))
        );
        let (_, mut rx) = link(&q, 10).split();
        assert!(
            matches!(rx.recv().await, Err(LinkError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof)
        );
    }
}
