//! A frame link over a GATT packet pipe: fragmentation to the packet size,
//! credit flow control, keepalives, close and reset (see `wire.rs`).
//!
//! It knows nothing of Bluetooth: the peripheral (bluer sockets), the central
//! (btleplug in gateway-ble) and the in-memory pipe of the tests each give it
//! a [`PacketSink`] and a channel of packets that arrived for this link.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gateway_link::{FrameRx, FrameTx, Link, LinkCaps, LinkError, LinkInfo, LinkKind};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval};
use tracing::Instrument;

use super::wire::{self, Packet};

/// The numbers of a GATT link.
#[derive(Clone, Debug)]
pub struct GattConfig {
    /// Data packets a receiver takes before it must grant credit: the most
    /// in flight per direction. BlueZ's queues (the write socket, the
    /// notification queue) must hold this many, or they drop packets.
    pub window_packets: u16,
    /// Each end sends a keepalive this often.
    pub keepalive_interval: Duration,
    /// A link that hears nothing (not even a keepalive) this long is dead.
    pub silence_timeout: Duration,
    /// Largest frame, `LinkCaps::max_frame`.
    pub max_frame: usize,
    /// Whole frames received but not yet taken by `recv` before the link
    /// stops granting credit.
    pub frames_queued: usize,
}

/// Default `max_frame`: a 1 MiB chunk (the engine's default) plus room for
/// its Data frame and the secure layer's tags; about 2100 packets at the
/// largest MTU.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024 + 64 * 1024;

impl Default for GattConfig {
    fn default() -> Self {
        GattConfig {
            window_packets: 64,
            keepalive_interval: Duration::from_secs(1),
            silence_timeout: Duration::from_secs(8),
            max_frame: DEFAULT_MAX_FRAME,
            frames_queued: 4,
        }
    }
}

/// Where a link's packets go: one ATT write or notification per packet.
#[async_trait]
pub trait PacketSink: Send + 'static {
    /// Sends one packet (at most the link's packet size), in order.
    async fn send(&mut self, packet: Bytes) -> io::Result<()>;
    /// Runs once after the link's last packet (disconnects, frees the channel).
    async fn finish(&mut self) {}
}

/// What the handshake settled for one link.
#[derive(Clone, Copy, Debug)]
pub struct Wiring {
    /// The link's channel byte.
    pub channel: u8,
    /// Largest packet, from the ATT MTU.
    pub packet: usize,
    /// The peer's window: data packets we may send before its first credit.
    pub peer_window: u16,
}

/// Why a link died, kept so every later call reports it.
#[derive(Clone, Debug)]
enum Death {
    Closed,
    Io(io::ErrorKind, String),
    Timeout,
    Corrupt(String),
}

impl Death {
    fn error(&self) -> LinkError {
        match self {
            Death::Closed => LinkError::Closed,
            Death::Io(k, m) => LinkError::Io(io::Error::new(*k, m.clone())),
            Death::Timeout => LinkError::Timeout,
            Death::Corrupt(m) => LinkError::Corrupt(m.clone()),
        }
    }
    fn of(e: &LinkError) -> Death {
        match e {
            LinkError::Closed => Death::Closed,
            LinkError::Io(e) => Death::Io(e.kind(), e.to_string()),
            LinkError::Timeout => Death::Timeout,
            other => Death::Corrupt(other.to_string()),
        }
    }
}

struct Shared {
    /// Data packets we may still send; closed when the link dies.
    credits: Semaphore,
    /// The sequence number of the next data or close packet this end sends
    /// (what a RESET says, so the peer acts on it after what went before).
    next_seq: AtomicU8,
    death: watch::Sender<Option<Death>>,
}

impl Shared {
    /// A data or close packet (one sequence number) went out.
    fn sent_numbered(&self) {
        self.next_seq.fetch_add(1, Ordering::Relaxed);
    }

    fn kill(&self, d: Death) {
        self.death.send_if_modified(|cur| {
            if cur.is_none() {
                tracing::debug!(reason = ?d, "ble link died");
                *cur = Some(d);
                true
            } else {
                false
            }
        });
        self.credits.close();
    }
    fn error(&self) -> Option<LinkError> {
        self.death.borrow().as_ref().map(Death::error)
    }
}

/// Ends the link's tasks when the link and both halves are gone; a link
/// dropped without both directions closed sends RESET first.
struct Guard {
    shared: Arc<Shared>,
    outbox: mpsc::Sender<Bytes>,
    channel: u8,
    rx_task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.shared.error().is_none() {
            let _ = self.outbox.try_send(wire::encode(
                self.channel,
                &Packet::Reset {
                    seq: Some(self.shared.next_seq.load(Ordering::Relaxed)),
                },
            ));
        }
        if let Some(t) = self
            .rx_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            t.abort();
        }
    }
}

/// The queue a link's arriving packets go into: room for a full window plus
/// the control packets that travel outside it. A packet that finds it full
/// is dropped, as BlueZ drops what overflows its queues; the link then
/// fails with a sequence gap instead of losing data silently.
pub fn incoming_queue(cfg: &GattConfig) -> (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>) {
    mpsc::channel(usize::from(cfg.window_packets) + 32)
}

/// Builds a link over `sink` and the packets in `incoming` (already
/// filtered to this link's channel, from [`incoming_queue`]). Spawns its tasks on the current runtime.
pub fn spawn_link(
    cfg: &GattConfig,
    wiring: Wiring,
    sink: impl PacketSink,
    incoming: mpsc::Receiver<Bytes>,
    info: LinkInfo,
    kind: LinkKind,
) -> Box<dyn Link> {
    let span = tracing::info_span!("ble_link", peer = %info.peer, channel = wiring.channel, packet = wiring.packet);
    let (death, _) = watch::channel(None);
    let shared = Arc::new(Shared {
        credits: Semaphore::new(wiring.peer_window as usize),
        next_seq: Default::default(),
        death,
    });
    // Small: packets wait here only while the sink is busy.
    let (outbox, out_rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(write_loop(sink, out_rx, shared.clone()).instrument(span.clone()));
    let (frames_tx, frames_rx) = mpsc::channel(cfg.frames_queued.max(1));
    let rx_task = tokio::spawn(
        read_loop(
            cfg.clone(),
            wiring.channel,
            incoming,
            frames_tx,
            outbox.clone(),
            shared.clone(),
        )
        .instrument(span.clone()),
    );
    let guard = Arc::new(Guard {
        shared: shared.clone(),
        outbox: outbox.clone(),
        channel: wiring.channel,
        rx_task: Mutex::new(Some(rx_task)),
    });
    let caps = LinkCaps {
        kind,
        max_frame: cfg.max_frame,
        reliable: true,
        ordered: true,
    };
    Box::new(GattLink {
        caps,
        info,
        tx: GattTx {
            wiring,
            max_frame: cfg.max_frame,
            seq: 0,
            closed: false,
            outbox,
            shared,
            _guard: guard.clone(),
        },
        rx: GattRx {
            frames: frames_rx,
            end: None,
            _guard: guard,
        },
    })
}

async fn write_loop(
    mut sink: impl PacketSink,
    mut out: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    while let Some(p) = out.recv().await {
        if let Err(e) = sink.send(p).await {
            tracing::debug!(error = %e, "ble packet send failed");
            shared.kill(Death::Io(
                e.kind(),
                format!(
                    "sending over BLE failed: {e}; the peer disconnected or the adapter went away"
                ),
            ));
            break;
        }
    }
    sink.finish().await;
}

async fn read_loop(
    cfg: GattConfig,
    channel: u8,
    mut incoming: mpsc::Receiver<Bytes>,
    frames: mpsc::Sender<Result<Bytes, LinkError>>,
    outbox: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
) {
    let mut reasm = wire::Reassembler::new(cfg.max_frame);
    let mut reorder = Reorder::default();
    // Frames (and the peer's close) waiting for room in `frames`.
    let mut pending: VecDeque<Result<Bytes, LinkError>> = VecDeque::new();
    // Credit earned but not yet granted; and credit for packets of frames
    // still pending, granted once they are taken.
    let (mut owed, mut withheld) = (0u32, 0u32);
    let grant_at = u32::from(cfg.window_packets / 4).max(1);
    let mut peer_closed = false;
    let mut heard = Instant::now();
    let mut tick = interval(cfg.keepalive_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut death = shared.death.subscribe();
    let fail = |pending: &mut VecDeque<_>, e: LinkError| {
        shared.kill(Death::of(&e));
        pending.push_back(Err(e));
    };
    // The way out is gone (the peer dropped its end): no more credit, but
    // what already arrived is still delivered.
    let mut outbox_gone = false;
    let mut incoming_done = false;
    loop {
        if owed >= grant_at && !outbox_gone {
            let n = owed.min(u32::from(u16::MAX));
            if outbox
                .send(wire::encode(channel, &Packet::Credit(n as u16)))
                .await
                .is_err()
            {
                outbox_gone = true;
            }
            owed -= n;
        }
        let dead = death.borrow().is_some();
        if dead && pending.is_empty() && (incoming_done || incoming.is_empty()) {
            // Whatever killed the link: `recv` reports it from `Shared`,
            // after every frame that arrived before it.
            break;
        }
        tokio::select! {
            biased;
            permit = frames.reserve(), if !pending.is_empty() => {
                let Ok(permit) = permit else { break };
                permit.send(pending.pop_front().expect("not empty"));
                if pending.is_empty() {
                    owed += std::mem::take(&mut withheld);
                }
            }
            _ = death.changed(), if !dead => {}
            // Read on after the link died: packets that arrived before the
            // death still make their frames (a frame after an error is
            // never handed out: `recv` stops at the error).
            p = incoming.recv(), if !incoming_done => {
                let Some(raw) = p else {
                    incoming_done = true;
                    if dead {
                        continue;
                    }
                    fail(&mut pending, LinkError::Io(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the BLE connection went away (disconnected, or the GATT service stopped)",
                    )));
                    continue;
                };
                heard = Instant::now();
                let Some((_, packet)) = wire::decode(&raw) else {
                    fail(&mut pending, LinkError::Corrupt(format!(
                        "a {}-byte BLE packet is not of the gateway format; is the peer a gateway node of the same version?",
                        raw.len()
                    )));
                    continue;
                };
                match packet {
                    Packet::Credit(n) => shared.credits.add_permits(n as usize),
                    Packet::Keepalive => {}
                    Packet::Reset { seq: None } => fail(&mut pending, reset()),
                    p @ (Packet::First { .. }
                    | Packet::More { .. }
                    | Packet::Close { .. }
                    | Packet::Reset { seq: Some(_) }) => {
                        let ready = match reorder.take(p) {
                            Ok(r) => r,
                            Err(e) => {
                                fail(&mut pending, e);
                                continue;
                            }
                        };
                        for p in ready {
                            if let Packet::Reset { .. } = p {
                                // Every packet sent before it has arrived.
                                fail(&mut pending, reset());
                                break;
                            }
                            if let Packet::Close { seq } = p {
                                match reasm.close(seq) {
                                    Ok(()) if !peer_closed => {
                                        peer_closed = true;
                                        pending.push_back(Err(LinkError::Closed));
                                    }
                                    Ok(()) => {}
                                    Err(e) => fail(&mut pending, e),
                                }
                                continue;
                            }
                            if peer_closed {
                                fail(&mut pending, LinkError::Corrupt("BLE data after the peer's close".into()));
                                break;
                            }
                            if pending.is_empty() {
                                owed += 1;
                            } else {
                                withheld += 1;
                            }
                            match reasm.push(p) {
                                Ok(Some(f)) => pending.push_back(Ok(f)),
                                Ok(None) => {}
                                Err(e) => {
                                    fail(&mut pending, e);
                                    break;
                                }
                            }
                        }
                    }
                    other => tracing::debug!(?other, "ignoring a handshake packet on a link"),
                }
            }
            _ = tick.tick(), if !dead => {
                if reorder.gap_for() > cfg.silence_timeout {
                    fail(&mut pending, LinkError::Corrupt(format!(
                        "BLE packet {} never arrived though later ones did: the Bluetooth stack lost it; reopen the link",
                        reorder.next
                    )));
                    continue;
                }
                if heard.elapsed() > cfg.silence_timeout {
                    tracing::debug!(silence = ?heard.elapsed(), "ble peer silent");
                    fail(&mut pending, LinkError::Timeout);
                    continue;
                }
                // A full outbox means packets are leaving anyway.
                let _ = outbox.try_send(wire::encode(channel, &Packet::Keepalive));
            }
        }
    }
}

/// The error a RESET from the peer ends the link with.
fn reset() -> LinkError {
    LinkError::Io(io::Error::new(
        io::ErrorKind::ConnectionReset,
        "the BLE peer dropped the link without closing it",
    ))
}

/// Puts data packets back in sequence order. ATT is ordered on one bearer,
/// but with Enhanced ATT (BlueZ 5.6x, `[GATT] Channels`) write commands and
/// notifications spread over several L2CAP channels and overtake each other.
/// Credit bounds how far apart they can be: a window, below half the
/// sequence space.
#[derive(Default)]
struct Reorder {
    next: u8,
    held: std::collections::HashMap<u8, Packet>,
    /// Since when a packet has been missing while later ones wait.
    gap_since: Option<Instant>,
}

impl Reorder {
    fn take(&mut self, p: Packet) -> Result<Vec<Packet>, LinkError> {
        let seq = match &p {
            Packet::First { seq, .. }
            | Packet::More { seq, .. }
            | Packet::Close { seq }
            | Packet::Reset { seq: Some(seq) } => *seq,
            _ => unreachable!("only data, close and a numbered reset are sequenced"),
        };
        let ahead = seq.wrapping_sub(self.next);
        if ahead >= 128 || self.held.contains_key(&seq) {
            return Err(LinkError::Corrupt(format!(
                "BLE packet {seq} arrived where {} was due, outside the flow-control window: packets were lost or duplicated; reopen the link",
                self.next
            )));
        }
        self.held.insert(seq, p);
        let mut out = Vec::new();
        while let Some(p) = self.held.remove(&self.next) {
            out.push(p);
            self.next = self.next.wrapping_add(1);
        }
        self.gap_since = match (self.held.is_empty(), self.gap_since) {
            (true, _) => None,
            (false, None) => Some(Instant::now()),
            (false, since) => since,
        };
        Ok(out)
    }

    fn gap_for(&self) -> Duration {
        self.gap_since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

struct GattLink {
    caps: LinkCaps,
    info: LinkInfo,
    tx: GattTx,
    rx: GattRx,
}

impl Link for GattLink {
    fn caps(&self) -> LinkCaps {
        self.caps
    }
    fn info(&self) -> &LinkInfo {
        &self.info
    }
    fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
        (Box::new(self.tx), Box::new(self.rx))
    }
}

struct GattTx {
    wiring: Wiring,
    max_frame: usize,
    seq: u8,
    closed: bool,
    outbox: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    _guard: Arc<Guard>,
}

impl GattTx {
    fn dead(&self) -> LinkError {
        self.shared.error().unwrap_or_else(|| {
            LinkError::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the BLE link's sender stopped",
            ))
        })
    }
}

#[async_trait]
impl FrameTx for GattTx {
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        if self.closed {
            return Err(LinkError::Closed);
        }
        if frame.len() > self.max_frame {
            return Err(LinkError::FrameTooLarge {
                len: frame.len(),
                max: self.max_frame,
            });
        }
        if let Some(e) = self.shared.error() {
            return Err(e);
        }
        let packets = wire::fragments(
            self.wiring.channel,
            frame,
            self.wiring.packet,
            &mut self.seq,
        );
        for p in packets {
            match self.shared.credits.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return Err(self.dead()),
            }
            if self.outbox.send(p).await.is_err() {
                return Err(self.dead());
            }
            self.shared.sent_numbered();
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), LinkError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if let Some(e) = self.shared.error() {
            return Err(e);
        }
        self.outbox
            .send(wire::encode(
                self.wiring.channel,
                &Packet::Close { seq: self.seq },
            ))
            .await
            .map_err(|_| self.dead())?;
        self.shared.sent_numbered();
        Ok(())
    }
}

struct GattRx {
    frames: mpsc::Receiver<Result<Bytes, LinkError>>,
    /// Set once `recv` returned the peer's close or the link's death.
    end: Option<Death>,
    _guard: Arc<Guard>,
}

#[async_trait]
impl FrameRx for GattRx {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        if let Some(d) = &self.end {
            return Err(d.error());
        }
        match self.frames.recv().await {
            Some(Ok(f)) => Ok(f),
            Some(Err(LinkError::Closed)) => {
                self.end = Some(Death::Closed);
                Err(LinkError::Closed)
            }
            Some(Err(e)) => {
                self.end = Some(Death::of(&e));
                Err(e)
            }
            None => {
                let e = self._guard.shared.error().unwrap_or_else(|| {
                    LinkError::Io(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the BLE link's receiver stopped",
                    ))
                });
                self.end = Some(Death::of(&e));
                Err(e)
            }
        }
    }
}
