//! L2CAP fragment reassembly (`drivers/bluez/src/packet.rs`): `PacketLink`
//! over a fake `PacketSocket` that plays packets from the fuzz input.
//!
//! Input: `[mode][max_frame: u16 LE][mtu: u16 LE]`, then records (u16 LE
//! length + bytes). Mode bit 0:
//! - 0, packets: each record is one received packet, as the peer sent it
//!   (cut to the receive MTU, as a SEQPACKET socket does); after the last
//!   the socket ends (`recv` returns 0);
//! - 1, frames: each record is a frame our own `FrameTx` sends over an MTU
//!   of `mtu` (at least 2); the packets it makes are received back.
//!
//! Checks: no panic; `recv` gives exactly what a model of the format says
//! (frames, close, FrameTooLarge past `max_frame`, Corrupt for a foreign
//! header, UnexpectedEof at the end of the socket); in frames mode every
//! frame within `max_frame` comes back byte-equal and each packet fits the
//! MTU.
#![no_main]

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gateway_bluez::packet::{CLOSE, END, MORE, PacketLink, PacketSocket};
use gateway_fuzz::{Cursor, ready};
use gateway_link::{Link, LinkCaps, LinkError, LinkInfo, LinkKind};
use libfuzzer_sys::fuzz_target;

struct Fake {
    q: Arc<Mutex<VecDeque<Vec<u8>>>>,
    mtu: usize,
}

#[async_trait]
impl PacketSocket for Fake {
    async fn send(&self, p: &[u8]) -> io::Result<usize> {
        assert!(
            p.len() <= self.mtu,
            "a {}-byte packet over an MTU of {}",
            p.len(),
            self.mtu
        );
        assert!(!p.is_empty(), "an empty packet sent");
        self.q.lock().unwrap().push_back(p.to_vec());
        Ok(p.len())
    }
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let p = self.q.lock().unwrap().pop_front().unwrap_or_default();
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        Ok(n)
    }
    fn send_mtu(&self) -> io::Result<usize> {
        Ok(self.mtu)
    }
    fn recv_mtu(&self) -> io::Result<usize> {
        Ok(self.mtu)
    }
}

#[derive(Debug, PartialEq)]
enum Want {
    Frame(Vec<u8>),
    Closed,
    TooLarge,
    Corrupt,
    Eof,
}

/// The format: what `recv` must return, call by call, for these packets.
fn model(packets: &[Vec<u8>], max: usize) -> Vec<Want> {
    let mut out = Vec::new();
    let mut frame = Vec::new();
    for p in packets {
        if p.is_empty() {
            out.push(Want::Eof);
            return out;
        }
        let (head, body) = (p[0], &p[1..]);
        match head {
            MORE | END => {
                if frame.len() + body.len() > max {
                    out.push(Want::TooLarge);
                    return out;
                }
                frame.extend_from_slice(body);
                if head == END {
                    out.push(Want::Frame(std::mem::take(&mut frame)));
                }
            }
            CLOSE if body.is_empty() && frame.is_empty() => {
                out.push(Want::Closed);
                return out;
            }
            _ => {
                out.push(Want::Corrupt);
                return out;
            }
        }
    }
    out.push(Want::Eof);
    out
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let mode = c.u8();
    let max = usize::from(c.u16());
    // Up to 4 KiB: a bigger MTU takes the same paths, and the receive buffer
    // (one MTU, zeroed per link) would cost most of each run.
    let mtu = usize::from(c.u16() % 4096).max(2);
    let q = Arc::new(Mutex::new(VecDeque::new()));
    let caps = LinkCaps {
        kind: LinkKind::Bluetooth,
        max_frame: max,
        reliable: true,
        ordered: true,
    };
    let link = Box::new(PacketLink::new(
        Fake { q: q.clone(), mtu },
        LinkInfo::default(),
        caps,
    ));
    let (mut tx, mut rx) = link.split();
    let mut sent = Vec::new();
    if mode & 1 == 0 {
        while !c.is_empty() {
            // What a SEQPACKET socket hands a reader whose buffer is `mtu`.
            let p = c.record();
            q.lock().unwrap().push_back(p[..p.len().min(mtu)].to_vec());
        }
    } else {
        while !c.is_empty() {
            let f = c.record();
            match ready(tx.send(f)) {
                Ok(()) => sent.push(f.to_vec()),
                Err(LinkError::FrameTooLarge { len, max: m }) => assert!(len > m && m == max),
                Err(e) => panic!("send failed: {e:?}"),
            }
        }
        if mode & 2 == 2 {
            ready(tx.close()).expect("close");
        }
    }
    let packets: Vec<Vec<u8>> = q.lock().unwrap().iter().cloned().collect();
    let want = model(&packets, max);
    let mut got = Vec::new();
    loop {
        let r = ready(rx.recv());
        let w = match r {
            Ok(f) => Want::Frame(f.to_vec()),
            Err(LinkError::Closed) => Want::Closed,
            Err(LinkError::FrameTooLarge { .. }) => Want::TooLarge,
            Err(LinkError::Corrupt(_)) => Want::Corrupt,
            Err(LinkError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Want::Eof,
            Err(e) => panic!("unexpected error {e:?}"),
        };
        let stop = !matches!(w, Want::Frame(_));
        got.push(w);
        if stop {
            break;
        }
    }
    assert_eq!(got, want, "recv differs from the model");
    if mode & 1 == 1 {
        let frames: Vec<&Vec<u8>> = got
            .iter()
            .filter_map(|w| match w {
                Want::Frame(f) => Some(f),
                _ => None,
            })
            .collect();
        assert_eq!(
            frames,
            sent.iter().collect::<Vec<_>>(),
            "frames sent do not come back"
        );
        let end = got.last().unwrap();
        assert!(
            if mode & 2 == 2 {
                *end == Want::Closed
            } else {
                *end == Want::Eof
            },
            "ends with {end:?}"
        );
    }
});
