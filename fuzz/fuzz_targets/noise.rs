//! The Noise XX handshake and the sealed transport (`crates/secure/src/
//! noise.rs`), through the public `connect`/`accept`.
//!
//! Input: `[mode]`, then records (u16 LE length + bytes).
//! - mode 0 / 1: a real initiator / responder against a fake peer whose
//!   handshake messages are the records (then the link closes).
//! - mode 2: a real initiator and a real responder, with a man in the middle
//!   that applies one tamper op per message (handshake, then up to four
//!   transport frames initiator -> responder). An op is `[kind]` plus
//!   arguments: 0 pass, 1 flip a byte (`pos: u16, xor: u8`), 2 truncate
//!   (`len: u16`), 3 append a record, 4 replace with a record, 5 replay an
//!   earlier message (`which: u8`), 6 drop. Transport frames are a record of
//!   plaintext then the op.
//!
//! Checks: no panic; garbage never completes a handshake (modes 0/1 always
//! fail); in mode 2 a side that completes received every handshake message
//! its transcript depends on unaltered, knows the other side's real static
//! key, and both agree on the handshake hash; a transport frame opens only
//! if every frame up to it arrived unaltered and in order, opens to exactly
//! what was sent, and once one fails every later one fails.
#![no_main]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gateway_fuzz::Cursor;
use gateway_link::{FrameRx, FrameTx, Link, LinkCaps, LinkError, LinkInfo, LinkKind};
use gateway_secure::{NodeKey, accept, connect};
use libfuzzer_sys::fuzz_target;
use tokio::sync::mpsc;

const CAPS: LinkCaps = LinkCaps {
    kind: LinkKind::Mock,
    max_frame: 1 << 20,
    reliable: true,
    ordered: true,
};
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn keys() -> &'static (NodeKey, NodeKey) {
    static KEYS: OnceLock<(NodeKey, NodeKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join("gateway-fuzz-noise-keys");
        (
            NodeKey::load_or_create(&dir.join("a")).expect("key a"),
            NodeKey::load_or_create(&dir.join("b")).expect("key b"),
        )
    })
}

thread_local! {
    // Paused time: a side left waiting (a dropped message) times out at
    // once instead of after the real timeout.
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
}

// ---- mode 0/1: one real side against scripted bytes

struct Scripted {
    script: VecDeque<Vec<u8>>,
}

struct NullTx;

#[async_trait]
impl FrameTx for NullTx {
    async fn send(&mut self, _: &[u8]) -> Result<(), LinkError> {
        Ok(())
    }
    async fn close(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
}

#[async_trait]
impl FrameRx for Scripted {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        self.script
            .pop_front()
            .map(Bytes::from)
            .ok_or(LinkError::Closed)
    }
}

struct Halves {
    info: LinkInfo,
    tx: Box<dyn FrameTx>,
    rx: Box<dyn FrameRx>,
}

impl Link for Halves {
    fn caps(&self) -> LinkCaps {
        CAPS
    }
    fn info(&self) -> &LinkInfo {
        &self.info
    }
    fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
        (self.tx, self.rx)
    }
}

// ---- mode 2: man in the middle

#[derive(Clone, Debug)]
enum Op {
    Pass,
    Flip(u16, u8),
    Truncate(u16),
    Append(Vec<u8>),
    Replace(Vec<u8>),
    Replay(u8),
    Drop,
}

fn op(c: &mut Cursor<'_>) -> Op {
    match c.u8() % 7 {
        0 => Op::Pass,
        1 => Op::Flip(c.u16(), c.u8()),
        2 => Op::Truncate(c.u16()),
        3 => Op::Append(c.record().to_vec()),
        4 => Op::Replace(c.record().to_vec()),
        5 => Op::Replay(c.u8()),
        _ => Op::Drop,
    }
}

#[derive(Default)]
struct Wire {
    ops: VecDeque<Op>,
    /// Every message sent, either way, in order (what Replay picks from).
    all: Vec<Vec<u8>>,
}

/// One direction: what was sent, and what the receiver got.
#[derive(Default)]
struct Log {
    sent: Vec<Vec<u8>>,
    got: Vec<Vec<u8>>,
}

struct MitmTx {
    wire: Arc<Mutex<Wire>>,
    log: Arc<Mutex<Log>>,
    to: mpsc::UnboundedSender<Vec<u8>>,
}

#[async_trait]
impl FrameTx for MitmTx {
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.log.lock().unwrap().sent.push(frame.to_vec());
        let mut w = self.wire.lock().unwrap();
        w.all.push(frame.to_vec());
        let op = w.ops.pop_front().unwrap_or(Op::Pass);
        let mut m = frame.to_vec();
        match op {
            Op::Pass => {}
            Op::Flip(pos, x) => {
                if !m.is_empty() {
                    let i = usize::from(pos) % m.len();
                    m[i] ^= x.max(1);
                }
            }
            Op::Truncate(n) => m.truncate(usize::from(n) % m.len().max(1)),
            Op::Append(b) => m.extend_from_slice(&b),
            Op::Replace(b) => m = b,
            Op::Replay(k) => m = w.all[usize::from(k) % w.all.len()].clone(),
            Op::Drop => return Ok(()),
        }
        let _ = self.to.send(m);
        Ok(())
    }
    async fn close(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
}

struct MitmRx {
    log: Arc<Mutex<Log>>,
    from: mpsc::UnboundedReceiver<Vec<u8>>,
}

#[async_trait]
impl FrameRx for MitmRx {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        let m = self.from.recv().await.ok_or(LinkError::Closed)?;
        self.log.lock().unwrap().got.push(m.clone());
        Ok(Bytes::from(m))
    }
}

fn mitm(c: &mut Cursor<'_>) {
    let (ka, kb) = keys();
    let wire = Arc::new(Mutex::new(Wire::default()));
    {
        let mut w = wire.lock().unwrap();
        for _ in 0..3 {
            let o = op(c);
            w.ops.push_back(o);
        }
    }
    let ab = Arc::new(Mutex::new(Log::default()));
    let ba = Arc::new(Mutex::new(Log::default()));
    let (to_b, from_a) = mpsc::unbounded_channel();
    let (to_a, from_b) = mpsc::unbounded_channel();
    let a = Box::new(Halves {
        info: LinkInfo::default(),
        tx: Box::new(MitmTx {
            wire: wire.clone(),
            log: ab.clone(),
            to: to_b,
        }),
        rx: Box::new(MitmRx {
            log: ba.clone(),
            from: from_b,
        }),
    });
    let b = Box::new(Halves {
        info: LinkInfo::default(),
        tx: Box::new(MitmTx {
            wire: wire.clone(),
            log: ba.clone(),
            to: to_a,
        }),
        rx: Box::new(MitmRx {
            log: ab.clone(),
            from: from_a,
        }),
    });
    let (ra, rb) = RT.with(|rt| {
        rt.block_on(async {
            tokio::join!(
                connect(a, ka, HANDSHAKE_TIMEOUT),
                accept(b, kb, HANDSHAKE_TIMEOUT)
            )
        })
    });
    let intact = |log: &Arc<Mutex<Log>>, n: usize| {
        let l = log.lock().unwrap();
        l.got.len() >= n && l.sent.len() >= n && l.got[..n] == l.sent[..n]
    };
    if let Ok(sa) = &ra {
        assert!(
            intact(&ab, 1) && intact(&ba, 1),
            "initiator completed on an altered message 1 or 2"
        );
        assert_eq!(
            sa.remote_public(),
            kb.public(),
            "initiator authenticated someone else"
        );
    }
    if let Ok(sb) = &rb {
        assert!(
            intact(&ab, 2) && intact(&ba, 1),
            "responder completed on an altered handshake message"
        );
        assert_eq!(
            sb.remote_public(),
            ka.public(),
            "responder authenticated someone else"
        );
    }
    let (Ok(mut sa), Ok(mut sb)) = (ra, rb) else {
        return;
    };
    assert_eq!(
        sa.handshake_hash(),
        sb.handshake_hash(),
        "the two sides' handshake hashes differ"
    );
    // Transport: initiator -> responder, each frame tampered or not.
    let base_sent = ab.lock().unwrap().sent.len();
    let base_got = ab.lock().unwrap().got.len();
    let mut failed = false;
    // The plaintext of every frame sent, in order: a frame held back (dropped
    // now, replayed later into its own place) opens to its own plaintext.
    let mut plains: Vec<Vec<u8>> = Vec::new();
    for _ in 0..4 {
        if c.is_empty() {
            break;
        }
        let plain = c.record().to_vec();
        plains.push(plain.clone());
        let o = op(c);
        wire.lock().unwrap().ops.push_back(o);
        let (tx, _) = sa.frames();
        RT.with(|rt| rt.block_on(tx.send(&plain)))
            .expect("send over the fake wire");
        let (_, rx) = sb.frames();
        let r = RT.with(|rt| {
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), rx.recv()).await })
        });
        let Ok(r) = r else {
            continue; // dropped: nothing arrived
        };
        // Every frame the responder got so far is the one sent at its place.
        let l = ab.lock().unwrap();
        let got = &l.got[base_got..];
        let in_order = got == &l.sent[base_sent..base_sent + got.len()];
        match r {
            Ok(opened) => {
                assert!(!failed, "a frame opened after an earlier one failed");
                assert!(in_order, "a tampered, replayed or reordered frame opened");
                // In order, so the frame that opened is the one sent at the
                // place of the last frame received.
                let n = l.got.len() - base_got;
                assert_eq!(
                    &opened[..],
                    &plains[n - 1][..],
                    "a frame opened to other bytes than were sent at its place"
                );
            }
            Err(LinkError::Corrupt(_)) => {
                assert!(!in_order || failed, "an intact frame failed to open");
                failed = true;
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let mode = c.u8() % 3;
    if mode == 2 {
        mitm(&mut c);
        return;
    }
    let mut script = VecDeque::new();
    while !c.is_empty() && script.len() < 4 {
        script.push_back(c.record().to_vec());
    }
    let link = Box::new(Halves {
        info: LinkInfo::default(),
        tx: Box::new(NullTx),
        rx: Box::new(Scripted { script }),
    });
    let (ka, _) = keys();
    let r = RT.with(|rt| {
        rt.block_on(async {
            if mode == 0 {
                connect(link, ka, HANDSHAKE_TIMEOUT).await
            } else {
                accept(link, ka, HANDSHAKE_TIMEOUT).await
            }
        })
    });
    assert!(
        r.is_err(),
        "a handshake completed against scripted bytes (mode {mode})"
    );
});
