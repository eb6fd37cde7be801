//! The packets the gateway GATT service carries, one per ATT value (a write
//! without response one way, a notification the other).
//!
//! Every packet starts with a channel byte, so several centrals can share the
//! one write socket and the one (broadcast) notify socket BlueZ gives a GATT
//! application per characteristic; channel 0 is the handshake. Then a kind
//! byte. Data packets carry a sequence byte, so a packet BlueZ dropped is
//! noticed as a gap instead of silently shortening a frame, and the first
//! packet of a frame carries the frame's length, so a truncated value is
//! noticed too.
//!
//! ```text
//! FIRST     chan 0x01 seq len:u32 payload   first fragment of a frame
//! MORE      chan 0x02 seq payload           following fragments
//! CLOSE     chan 0x03 seq                   the sender closed its direction
//! CREDIT    chan 0x10 n:u16                 the receiver took n more data packets
//! KEEPALIVE chan 0x11                       still here (each second)
//! RESET     chan 0x12 [seq]                 the link was dropped without close
//! HELLO     0 0x20 ver nonce:u64 window:u16 packet:u16        central -> peripheral
//! WELCOME   0 0x21 ver nonce:u64 chan payload:u16 window:u16  peripheral -> central
//! REFUSE    0 0x22 ver nonce:u64 reason                       peripheral -> central
//! ```
//!
//! Integers are big-endian. Handshake packets fit the default ATT MTU of 23
//! (20 bytes of value), since neither end knows the negotiated MTU before.

use bytes::{BufMut, Bytes, BytesMut};
use gateway_link::LinkError;

/// Version of this packet format, in HELLO and WELCOME.
pub const VERSION: u8 = 1;
/// The channel of the handshake packets.
pub const HANDSHAKE: u8 = 0;
/// Bytes before the payload of a FIRST packet.
pub const FIRST_HEADER: usize = 7;
/// Bytes before the payload of a MORE packet.
pub const MORE_HEADER: usize = 3;
/// The smallest packet size a link works with: the default ATT MTU's value size.
pub const MIN_PACKET: usize = 20;
/// The largest: an ATT value is at most 512 bytes (and bluetoothd reads
/// notifications from the socket 512 bytes at a time).
pub const MAX_PACKET: usize = 512;
/// The largest packet a central writes: bluetoothd before 5.69 checks the
/// length of a write's whole body (2 bytes of handle + value) against the
/// 512-byte value limit, so it drops writes of 511 and 512 bytes without a
/// word (write commands have no answer). Fixed upstream by "shared/gatt-server:
/// Fix not allowing valid attribute writes" (8bf3a4a26, BlueZ 5.69).
/// Notifications are not affected.
pub const MAX_WRITE_PACKET: usize = MAX_PACKET - 2;

const FIRST: u8 = 0x01;
const MORE: u8 = 0x02;
const CLOSE: u8 = 0x03;
const CREDIT: u8 = 0x10;
const KEEPALIVE: u8 = 0x11;
const RESET: u8 = 0x12;
const HELLO: u8 = 0x20;
const WELCOME: u8 = 0x21;
const REFUSE: u8 = 0x22;

/// Why a peripheral refused a HELLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// All channels are in use.
    Busy,
    /// The central speaks another version of this format.
    Version,
}

/// One decoded packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// First fragment of a frame of `len` bytes.
    First {
        /// Sequence number of this data packet.
        seq: u8,
        /// Length of the whole frame.
        len: u32,
        /// This fragment's bytes.
        payload: Bytes,
    },
    /// A following fragment.
    More {
        /// Sequence number of this data packet.
        seq: u8,
        /// This fragment's bytes.
        payload: Bytes,
    },
    /// The sender closed its direction; `seq` follows the last data packet.
    Close {
        /// Sequence number.
        seq: u8,
    },
    /// The receiver consumed `n` more data packets: the sender may send `n` more.
    Credit(u16),
    /// Nothing but proof of life.
    Keepalive,
    /// The sender dropped the link without closing it. `seq`, when given,
    /// is the sequence number its next data packet would have had: the
    /// receiver acts on the reset once every packet before it arrived
    /// (packets overtake each other on Enhanced ATT), not before. Without
    /// it (older senders), at once.
    Reset {
        /// The sender's next sequence number.
        seq: Option<u8>,
    },
    /// A central asks for a channel.
    Hello {
        /// Format version.
        version: u8,
        /// Random, echoed in the answer so a central knows its own.
        nonce: u64,
        /// Data packets the central can take before it grants credit.
        window: u16,
        /// The largest packet the central can be sent (from its own ATT
        /// MTU; the peripheral's notify socket is shared by centrals of
        /// different MTUs). 0: not said (a central before this field).
        packet: u16,
    },
    /// The peripheral gives a channel.
    Welcome {
        /// Format version.
        version: u8,
        /// The HELLO's nonce.
        nonce: u64,
        /// The channel of the new link.
        channel: u8,
        /// Largest packet either side sends, from the negotiated ATT MTU.
        packet: u16,
        /// Data packets the peripheral can take before it grants credit.
        window: u16,
    },
    /// The peripheral refuses the HELLO.
    Refuse {
        /// Format version.
        version: u8,
        /// The HELLO's nonce.
        nonce: u64,
        /// Why.
        reason: Refusal,
    },
}

/// Encodes `p` for `channel`.
pub fn encode(channel: u8, p: &Packet) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    b.put_u8(channel);
    match p {
        Packet::First { seq, len, payload } => {
            b.reserve(FIRST_HEADER + payload.len());
            b.put_u8(FIRST);
            b.put_u8(*seq);
            b.put_u32(*len);
            b.put_slice(payload);
        }
        Packet::More { seq, payload } => {
            b.reserve(MORE_HEADER + payload.len());
            b.put_u8(MORE);
            b.put_u8(*seq);
            b.put_slice(payload);
        }
        Packet::Close { seq } => {
            b.put_u8(CLOSE);
            b.put_u8(*seq);
        }
        Packet::Credit(n) => {
            b.put_u8(CREDIT);
            b.put_u16(*n);
        }
        Packet::Keepalive => b.put_u8(KEEPALIVE),
        Packet::Reset { seq } => {
            b.put_u8(RESET);
            if let Some(seq) = seq {
                b.put_u8(*seq);
            }
        }
        Packet::Hello {
            version,
            nonce,
            window,
            packet,
        } => {
            b.put_u8(HELLO);
            b.put_u8(*version);
            b.put_u64(*nonce);
            b.put_u16(*window);
            b.put_u16(*packet);
        }
        Packet::Welcome {
            version,
            nonce,
            channel,
            packet,
            window,
        } => {
            b.put_u8(WELCOME);
            b.put_u8(*version);
            b.put_u64(*nonce);
            b.put_u8(*channel);
            b.put_u16(*packet);
            b.put_u16(*window);
        }
        Packet::Refuse {
            version,
            nonce,
            reason,
        } => {
            b.put_u8(REFUSE);
            b.put_u8(*version);
            b.put_u64(*nonce);
            b.put_u8(match reason {
                Refusal::Busy => 1,
                Refusal::Version => 2,
            });
        }
    }
    b.freeze()
}

/// Decodes a packet into its channel and content; `None` for bytes that are
/// not a packet of this format.
pub fn decode(raw: &Bytes) -> Option<(u8, Packet)> {
    let (&chan, rest) = raw.split_first()?;
    let (&kind, body) = rest.split_first()?;
    let be16 = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
    let p = match kind {
        FIRST if body.len() >= 5 => Packet::First {
            seq: body[0],
            len: u32::from_be_bytes(body[1..5].try_into().expect("4 bytes")),
            payload: raw.slice(FIRST_HEADER..),
        },
        MORE if !body.is_empty() => Packet::More {
            seq: body[0],
            payload: raw.slice(MORE_HEADER..),
        },
        CLOSE if body.len() == 1 => Packet::Close { seq: body[0] },
        CREDIT if body.len() == 2 => Packet::Credit(be16(body)),
        KEEPALIVE if body.is_empty() => Packet::Keepalive,
        RESET if body.is_empty() => Packet::Reset { seq: None },
        RESET if body.len() == 1 => Packet::Reset { seq: Some(body[0]) },
        HELLO if body.len() == 11 || body.len() == 13 => Packet::Hello {
            version: body[0],
            nonce: be64(&body[1..]),
            window: be16(&body[9..]),
            packet: if body.len() == 13 {
                be16(&body[11..])
            } else {
                0
            },
        },
        WELCOME if body.len() == 14 => Packet::Welcome {
            version: body[0],
            nonce: be64(&body[1..]),
            channel: body[9],
            packet: be16(&body[10..]),
            window: be16(&body[12..]),
        },
        REFUSE if body.len() == 10 => Packet::Refuse {
            version: body[0],
            nonce: be64(&body[1..]),
            reason: if body[9] == 2 {
                Refusal::Version
            } else {
                Refusal::Busy
            },
        },
        _ => return None,
    };
    Some((chan, p))
}

/// Splits `frame` into data packets of at most `packet` bytes each, numbered
/// from `*seq` on (which it advances). An empty frame is one FIRST packet.
pub fn fragments(channel: u8, frame: &[u8], packet: usize, seq: &mut u8) -> Vec<Bytes> {
    debug_assert!(packet >= MIN_PACKET);
    let mut out = Vec::with_capacity(frame.len() / (packet - MORE_HEADER) + 1);
    let first = frame.len().min(packet - FIRST_HEADER);
    let mut b = BytesMut::with_capacity(FIRST_HEADER + first);
    b.put_u8(channel);
    b.put_u8(FIRST);
    b.put_u8(*seq);
    b.put_u32(frame.len() as u32);
    b.put_slice(&frame[..first]);
    out.push(b.freeze());
    *seq = seq.wrapping_add(1);
    for chunk in frame[first..].chunks(packet - MORE_HEADER) {
        let mut b = BytesMut::with_capacity(MORE_HEADER + chunk.len());
        b.put_u8(channel);
        b.put_u8(MORE);
        b.put_u8(*seq);
        b.put_slice(chunk);
        out.push(b.freeze());
        *seq = seq.wrapping_add(1);
    }
    out
}

/// Rebuilds frames from data packets, checking sequence numbers and lengths.
/// Any error leaves it broken: the link has lost data and must be reopened.
#[derive(Debug)]
pub struct Reassembler {
    max_frame: usize,
    next_seq: u8,
    /// The frame being rebuilt and its announced length.
    partial: Option<(BytesMut, usize)>,
}

impl Reassembler {
    /// A reassembler refusing frames over `max_frame`.
    pub fn new(max_frame: usize) -> Self {
        Reassembler {
            max_frame,
            next_seq: 0,
            partial: None,
        }
    }

    fn check_seq(&mut self, seq: u8) -> Result<(), LinkError> {
        if seq != self.next_seq {
            return Err(LinkError::Corrupt(format!(
                "BLE packet {seq} arrived where {} was due: the Bluetooth stack dropped {} packet(s) (flow control should have prevented it); reopen the link",
                self.next_seq,
                seq.wrapping_sub(self.next_seq)
            )));
        }
        self.next_seq = seq.wrapping_add(1);
        Ok(())
    }

    /// Takes one data packet (FIRST or MORE); returns a frame when it completes one.
    pub fn push(&mut self, p: Packet) -> Result<Option<Bytes>, LinkError> {
        match p {
            Packet::First { seq, len, payload } => {
                self.check_seq(seq)?;
                if self.partial.is_some() {
                    return Err(LinkError::Corrupt(
                        "a new BLE frame started before the last one was complete; reopen the link"
                            .into(),
                    ));
                }
                let len = len as usize;
                if len > self.max_frame {
                    return Err(LinkError::FrameTooLarge {
                        len,
                        max: self.max_frame,
                    });
                }
                let mut buf = BytesMut::with_capacity(len);
                buf.put_slice(&payload);
                self.partial = Some((buf, len));
            }
            Packet::More { seq, payload } => {
                self.check_seq(seq)?;
                let Some((buf, _)) = self.partial.as_mut() else {
                    return Err(LinkError::Corrupt(
                        "a BLE fragment arrived outside any frame; reopen the link".into(),
                    ));
                };
                buf.put_slice(&payload);
            }
            other => unreachable!("not a data packet: {other:?}"),
        }
        let (buf, len) = self.partial.as_ref().expect("set above");
        match buf.len().cmp(len) {
            std::cmp::Ordering::Less => Ok(None),
            std::cmp::Ordering::Equal => Ok(Some(self.partial.take().expect("set").0.freeze())),
            std::cmp::Ordering::Greater => Err(LinkError::Corrupt(format!(
                "a BLE frame announced {len} bytes but {} arrived; reopen the link",
                buf.len()
            ))),
        }
    }

    /// Checks a CLOSE: it must follow a whole frame, with the next sequence number.
    pub fn close(&mut self, seq: u8) -> Result<(), LinkError> {
        self.check_seq(seq)?;
        if let Some((buf, len)) = &self.partial {
            return Err(LinkError::Corrupt(format!(
                "the peer closed the BLE link in the middle of a frame ({} of {len} bytes)",
                buf.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(p: &Bytes) -> Packet {
        decode(p).expect("decodes").1
    }

    #[test]
    fn every_packet_kind_decodes_to_what_was_encoded() {
        let all = [
            Packet::Close { seq: 9 },
            Packet::Credit(513),
            Packet::Keepalive,
            Packet::Reset { seq: None },
            Packet::Reset { seq: Some(200) },
            Packet::Hello {
                version: VERSION,
                nonce: 0x0102_0304_0506_0708,
                window: 64,
                packet: 512,
            },
            Packet::Welcome {
                version: VERSION,
                nonce: u64::MAX,
                channel: 7,
                packet: 244,
                window: 32,
            },
            Packet::Refuse {
                version: VERSION,
                nonce: 3,
                reason: Refusal::Version,
            },
            Packet::More {
                seq: 255,
                payload: Bytes::from_static(b"abc"),
            },
            Packet::First {
                seq: 0,
                len: 70_000,
                payload: Bytes::from_static(b"x"),
            },
        ];
        for p in all {
            let raw = encode(5, &p);
            assert!(
                raw.len() <= MIN_PACKET || matches!(p, Packet::First { .. } | Packet::More { .. })
            );
            assert_eq!(decode(&raw), Some((5, p.clone())), "{p:?} as {raw:?}");
        }
        assert_eq!(decode(&Bytes::from_static(b"\x01")), None);
        assert_eq!(decode(&Bytes::from_static(b"\x01\x99")), None);
        assert_eq!(decode(&Bytes::from_static(b"\x00\x20\x01")), None);
    }

    #[test]
    fn a_hello_without_the_packet_field_still_decodes() {
        let mut raw = encode(
            HANDSHAKE,
            &Packet::Hello {
                version: VERSION,
                nonce: 7,
                window: 64,
                packet: 244,
            },
        )
        .to_vec();
        raw.truncate(raw.len() - 2);
        assert_eq!(
            decode(&Bytes::from(raw)),
            Some((
                HANDSHAKE,
                Packet::Hello {
                    version: VERSION,
                    nonce: 7,
                    window: 64,
                    packet: 0
                }
            ))
        );
    }

    #[test]
    fn frames_survive_fragmentation_at_every_packet_size() {
        let frames: Vec<Vec<u8>> =
            vec![vec![], vec![1], (0..=255).collect(), vec![7; 5000], vec![]];
        for packet in [MIN_PACKET, 21, 23, 185, 244, MAX_PACKET] {
            let mut seq = 250; // wraps within the test
            let mut r = Reassembler::new(5000);
            r.next_seq = 250;
            let mut got = Vec::new();
            for f in &frames {
                for p in fragments(3, f, packet, &mut seq) {
                    assert!(p.len() <= packet, "packet of {} > {packet}", p.len());
                    if let Some(f) = r.push(data(&p)).unwrap() {
                        got.push(f.to_vec());
                    }
                }
            }
            r.close(seq).unwrap();
            assert_eq!(got, frames, "packet size {packet}");
        }
    }

    #[test]
    fn a_lost_packet_is_an_error_not_a_short_frame() {
        let mut seq = 0;
        let ps = fragments(1, &[9; 100], MIN_PACKET, &mut seq);
        let mut r = Reassembler::new(1000);
        r.push(data(&ps[0])).unwrap();
        let e = r.push(data(&ps[2])).unwrap_err();
        assert!(
            matches!(&e, LinkError::Corrupt(m) if m.contains("dropped 1")),
            "{e}"
        );
    }

    #[test]
    fn a_truncated_or_oversized_frame_is_refused() {
        let mut seq = 0;
        let ps = fragments(1, &[9; 100], MIN_PACKET, &mut seq);
        let mut r = Reassembler::new(50);
        assert!(matches!(
            r.push(data(&ps[0])),
            Err(LinkError::FrameTooLarge { len: 100, max: 50 })
        ));
        // a close in the middle of a frame
        let mut r = Reassembler::new(1000);
        r.push(data(&ps[0])).unwrap();
        assert!(r.close(1).is_err());
    }
}
