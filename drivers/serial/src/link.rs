//! Sessions over one open serial device: the handshake that starts one,
//! keepalives, close, and the `Link` halves.
//!
//! A serial line has no connections, so this module makes them: the opening
//! end sends HELLO(its nonce) every 250 ms until the listening end answers
//! ACK(that nonce, its own). Everything either end read before is ignored,
//! so bytes left on the line by an earlier session (or by someone else) never
//! reach the new one. Numbered segments then carry frames, and acks come
//! back (`arq.rs`: what a hole costs and how it is filled); FIN, a numbered
//! segment too, closes one direction after everything before it arrived;
//! RST tells an opener still sending that the listener has no session for it.
//!
//! A line also has no end-of-stream, so each end sends a lone 0x00 when it has
//! sent nothing for a second, and a receiver that hears nothing at all for
//! [`SILENCE_TIMEOUT`] declares the other end gone. That also fails sends.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gateway_link::{FrameRx, FrameTx, Link, LinkCaps, LinkError, LinkInfo, LinkKind, Listener};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_serial::SerialStream;

use crate::arq::{self, Arq, Incoming};
use crate::codec::{self, DecodeStats, Decoder};
use crate::{MAX_FRAME, SerialConfig};

/// A numbered segment of a frame of the layer above (see `arq.rs`).
const KIND_SEG: u8 = b'S';
/// Acknowledges segments (and asks for one again), see `arq.rs`.
const KIND_RACK: u8 = b'K';
/// Opener → listener: version, nonce (u64 LE).
const KIND_HELLO: u8 = b'H';
/// Listener → opener: version, the opener's nonce, the listener's nonce.
const KIND_ACK: u8 = b'A';
/// Listener → opener: no session here (the listener lost it or restarted).
const KIND_RST: u8 = b'R';
/// Version of this packet protocol, in HELLO and ACK (2: numbered segments
/// and retransmission).
const VERSION: u8 = 2;

/// A session whose other end sent nothing (not even a keepalive) for this
/// long is declared gone.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(8);
/// An idle sender sends a keepalive byte this often.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A `recv` (or a `send` waiting for acks) entered after a long pause waits
/// at least this long before it blames the other end for the silence.
const SILENCE_GRACE: Duration = Duration::from_secs(3);
/// The opener repeats its HELLO this often until it is answered.
const HELLO_RESEND: Duration = Duration::from_millis(250);
/// A write that makes no progress for this long fails the link (the other
/// end stopped reading and nobody noticed it go silent, e.g. because this
/// end never calls `recv`). Like TCP's user timeout.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Reads ask for this much. A tty hands over at most what its line
/// discipline buffered (4 KiB), so more is only headroom.
const READ_CHUNK: usize = 256 * 1024;
/// The listener answers stray segments with RST at most this often.
const RST_INTERVAL: Duration = Duration::from_millis(500);
/// Whole frames received and not yet taken by `recv`, at most (beyond it,
/// segments are refused and asked for again later).
const READY_LIMIT: usize = 2 * MAX_FRAME;
/// A `send` waiting for acks while nobody calls `recv` reads the line
/// itself, in slices this long.
const PUMP_SLICE: Duration = Duration::from_millis(100);

pub(crate) fn caps() -> LinkCaps {
    LinkCaps {
        kind: LinkKind::Serial,
        max_frame: MAX_FRAME,
        // Frames are never altered (CRC32C) nor reordered, and a segment hit
        // by line noise is sent again (arq.rs).
        reliable: true,
        ordered: true,
    }
}

/// One open device, shared by a listener and the session it runs.
pub(crate) struct Port {
    cfg: SerialConfig,
    reader: Arc<Mutex<Reader>>,
    writer: Arc<Mutex<Writer>>,
}

impl Port {
    pub(crate) fn new(cfg: SerialConfig, stream: SerialStream) -> Port {
        let (r, w) = tokio::io::split(stream);
        let escaped = cfg.escaped();
        Port {
            reader: Arc::new(Mutex::new(Reader {
                r,
                dec: Decoder::new(arq::HEADER + arq::SEG_BYTES, escaped),
                last_rx: Instant::now(),
                reported: DecodeStats::default(),
                path: cfg.path.clone(),
                scratch: vec![0; READ_CHUNK],
            })),
            writer: Arc::new(Mutex::new(Writer {
                w,
                out: Vec::new(),
                scratch: Vec::new(),
                escaped,
                last_write: Instant::now(),
            })),
            cfg,
        }
    }
}

struct Reader {
    r: ReadHalf<SerialStream>,
    dec: Decoder,
    /// When the last byte (of anything) arrived.
    last_rx: Instant,
    /// Decoder counts already added to the process-wide counters.
    reported: DecodeStats,
    path: String,
    scratch: Vec<u8>,
}

impl Reader {
    /// Reads what the device has (waiting for at least one byte); 0 = hung up.
    async fn fill(&mut self) -> io::Result<usize> {
        self.report();
        // Into a buffer that is already initialized: tokio-serial zeroes the
        // whole free space of the buffer it is given on every read, which
        // for `read_buf` into spare capacity costs more than the read.
        let n = self.r.read(&mut self.scratch).await?;
        if n > 0 {
            self.last_rx = Instant::now();
            self.dec.buffer().extend_from_slice(&self.scratch[..n]);
        }
        Ok(n)
    }

    fn report(&mut self) {
        let now = self.dec.stats();
        let was = std::mem::replace(&mut self.reported, now);
        if now != was {
            crate::count(&self.path, &was, &now);
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.report();
    }
}

struct Writer {
    w: WriteHalf<SerialStream>,
    out: Vec<u8>,
    scratch: Vec<u8>,
    escaped: bool,
    last_write: Instant,
}

type Dead = watch::Receiver<Option<Arc<str>>>;

impl Writer {
    /// Encodes and writes one packet. Gives up when `dead` says the session
    /// died, or when nothing could be written for [`WRITE_STALL_TIMEOUT`].
    async fn send(
        &mut self,
        kind: u8,
        body: &[u8],
        dead: Option<&mut Dead>,
    ) -> Result<(), LinkError> {
        let n = codec::encode(kind, body, self.escaped, &mut self.out, &mut self.scratch);
        self.write_range(0, n, dead).await
    }

    async fn write_range(
        &mut self,
        mut off: usize,
        n: usize,
        mut dead: Option<&mut Dead>,
    ) -> Result<(), LinkError> {
        while off < n {
            let write = timeout(WRITE_STALL_TIMEOUT, self.w.write(&self.out[off..n]));
            let r = match dead.as_deref_mut() {
                None => write.await,
                Some(dead) => tokio::select! {
                    r = write => r,
                    why = dead.wait_for(Option::is_some) => {
                        let why = why.ok().and_then(|g| g.clone());
                        return Err(dead_error(why.as_deref()));
                    }
                },
            };
            match r {
                Err(_) => {
                    return Err(LinkError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "nothing could be written for {WRITE_STALL_TIMEOUT:?}: the other end stopped reading"
                        ),
                    )));
                }
                Ok(Ok(0)) => return Err(LinkError::Io(io::ErrorKind::WriteZero.into())),
                Ok(Ok(k)) => {
                    off += k;
                    self.last_write = Instant::now();
                }
                Ok(Err(e)) => return Err(LinkError::Io(e)),
            }
        }
        Ok(())
    }

    /// Writes what fits now without waiting; a packet cut short is dropped by
    /// the receiver (the next one starts with its own delimiter).
    fn write_now(&mut self, n: usize) {
        let mut cx = Context::from_waker(Waker::noop());
        let w = std::pin::Pin::new(&mut self.w);
        if let Poll::Ready(Ok(k)) = w.poll_write(&mut cx, &self.out[..n])
            && k > 0
        {
            self.last_write = Instant::now();
        }
    }

    fn keepalive(&mut self) {
        if self.out.is_empty() {
            self.out.push(0);
        }
        self.out[0] = 0;
        self.write_now(1);
    }
}

fn dead_error(why: Option<&str>) -> LinkError {
    LinkError::Io(io::Error::new(
        io::ErrorKind::BrokenPipe,
        why.unwrap_or("the link is gone").to_string(),
    ))
}

fn hello(nonce: u64) -> Vec<u8> {
    let mut b = vec![VERSION];
    b.extend(nonce.to_le_bytes());
    b
}

fn parse_hello(b: &[u8]) -> Option<u64> {
    match b {
        [VERSION, n @ ..] if n.len() == 8 => Some(u64::from_le_bytes(n.try_into().ok()?)),
        _ => None,
    }
}

fn ack(theirs: u64, mine: u64) -> Vec<u8> {
    let mut b = vec![VERSION];
    b.extend(theirs.to_le_bytes());
    b.extend(mine.to_le_bytes());
    b
}

fn parse_ack(b: &[u8]) -> Option<(u64, u64)> {
    match b {
        [VERSION, n @ ..] if n.len() == 16 => Some((
            u64::from_le_bytes(n[..8].try_into().ok()?),
            u64::from_le_bytes(n[8..].try_into().ok()?),
        )),
        _ => None,
    }
}

fn nonce() -> u64 {
    rand::random::<u64>() | 1
}

/// What both halves of one link share.
struct Session {
    info: LinkInfo,
    writer: Arc<Mutex<Writer>>,
    /// Why the session died; `None` while it lives.
    dead: watch::Sender<Option<Arc<str>>>,
    /// (opener's nonce, listener's nonce): the ACK to repeat when the opener
    /// repeats its HELLO (the first ACK was lost). Listener side only.
    ack: Option<(u64, u64)>,
    ack_pending: AtomicBool,
    /// Wakes the control task: an ack, a NAK or a retransmission is due.
    wake: Arc<Notify>,
    /// Retransmission state of both directions.
    arq: std::sync::Mutex<Arq>,
    /// Acks moved the send window.
    room: Notify,
    /// The receiving side; whoever holds it reads the line.
    rx: Mutex<RxSide>,
    /// Halves not yet dropped; the last one to go ends the session.
    halves: AtomicUsize,
    /// The listener's one session slot, free again when this drops.
    _slot: Option<OwnedSemaphorePermit>,
}

/// What the line delivered and nobody took yet.
struct RxSide {
    reader: OwnedMutexGuard<Reader>,
    /// The opener's nonce of this session.
    peer: u64,
    ready: VecDeque<Bytes>,
    ready_bytes: usize,
    state: RxState,
}

enum RxState {
    Open,
    Closed,
    Failed(io::ErrorKind, String),
}

impl Session {
    fn kill(&self, why: &str) {
        self.dead.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(why.into());
                true
            } else {
                false
            }
        });
    }

    fn is_dead(&self) -> bool {
        self.dead.borrow().is_some()
    }

    fn arq(&self) -> std::sync::MutexGuard<'_, Arq> {
        self.arq.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails the receiving side and the session.
    fn fail(&self, rx: &mut RxSide, kind: io::ErrorKind, msg: String) {
        tracing::debug!(path = %self.info.local, "serial session down: {msg}");
        self.kill(&msg);
        if !matches!(rx.state, RxState::Failed(..)) {
            rx.state = RxState::Failed(kind, msg);
        }
    }

    /// Handles every whole packet the reader holds.
    fn process(&self, rx: &mut RxSide) {
        let path = &self.info.local;
        while let Some(p) = rx.reader.dec.next_packet() {
            match p.kind {
                KIND_SEG => {
                    let Some((seq, flags, payload)) = arq::parse_segment(p.body) else {
                        continue;
                    };
                    let mut arq = self.arq();
                    if rx.ready_bytes + payload.len() > READY_LIMIT {
                        arq.refuse(seq);
                        continue;
                    }
                    match arq.on_segment(seq, flags, &payload) {
                        Ok(Incoming::Nothing) => {}
                        Ok(Incoming::Frame(f)) => {
                            rx.ready_bytes += f.len();
                            rx.ready.push_back(f);
                        }
                        Ok(Incoming::Fin) => {
                            if matches!(rx.state, RxState::Open) {
                                rx.state = RxState::Closed;
                            }
                        }
                        Err(why) => {
                            drop(arq);
                            self.fail(rx, io::ErrorKind::InvalidData, format!("{path}: {why}"));
                            return;
                        }
                    }
                    if arq.has_output() {
                        self.wake.notify_one();
                    }
                }
                KIND_RACK => {
                    if let Some((next, nak)) = arq::parse_ack(&p.body) {
                        let mut arq = self.arq();
                        if arq.on_ack(next, nak, Instant::now().into_std()) {
                            self.room.notify_one();
                        }
                        if arq.has_output() {
                            self.wake.notify_one();
                        }
                    }
                }
                KIND_HELLO => match parse_hello(&p.body) {
                    // The opener missed our ACK and asks again.
                    Some(n) if n == rx.peer && self.ack.is_some() => {
                        self.ack_pending.store(true, Ordering::Relaxed);
                        self.wake.notify_one();
                    }
                    Some(n) if n == rx.peer => {}
                    Some(_) => {
                        let msg = format!(
                            "the other end of {path} opened the line anew; this link is gone"
                        );
                        self.fail(rx, io::ErrorKind::ConnectionReset, msg);
                        return;
                    }
                    None => {}
                },
                KIND_RST => {
                    let msg = format!(
                        "the other end of {path} has no session for this link (it closed or restarted)"
                    );
                    self.fail(rx, io::ErrorKind::ConnectionReset, msg);
                    return;
                }
                KIND_ACK => {} // a repeated answer to our HELLO
                other => {
                    tracing::debug!(kind = other, "serial: ignoring a packet of unknown kind")
                }
            }
        }
    }

    /// Reads the line once (at least one byte) until `until`; the other end
    /// is declared gone when nothing arrived for [`SILENCE_TIMEOUT`] (but not
    /// before `grace`); a failure is recorded in `rx` and kills the session.
    async fn pump(&self, rx: &mut RxSide, until: Instant, grace: Instant) {
        let silent_at = (rx.reader.last_rx + SILENCE_TIMEOUT).max(grace);
        let path = &self.info.local;
        match timeout_at(until.min(silent_at), rx.reader.fill()).await {
            Err(_) if until < silent_at => {}
            Err(_) => {
                let msg = format!(
                    "nothing heard from the other end of {path} for {SILENCE_TIMEOUT:?} (it sends a keepalive every second): the cable is unplugged or the other side stopped"
                );
                self.fail(rx, io::ErrorKind::TimedOut, msg);
            }
            Ok(Ok(0)) => {
                let msg = format!("{path} hung up: the device went away (unplugged?)");
                self.fail(rx, io::ErrorKind::UnexpectedEof, msg);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.fail(rx, e.kind(), format!("reading {path}: {e}")),
        }
    }

    /// Writes the ack and the retransmissions that are due. The caller holds
    /// the writer, so they go out before any new segment.
    async fn flush(&self, w: &mut Writer, dead: &mut Dead) -> Result<(), LinkError> {
        let (ack, again) = {
            let mut arq = self.arq();
            let again = arq.take_resend(Instant::now().into_std());
            crate::count_resent(again.len() as u64);
            (arq.take_ack(), again)
        };
        if let Some((next, nak)) = ack {
            w.send(KIND_RACK, &arq::ack_body(next, nak), Some(&mut *dead))
                .await?;
        }
        for body in again {
            w.send(KIND_SEG, &body, Some(&mut *dead)).await?;
        }
        Ok(())
    }
}

/// Starts a session: spawns its control task and returns the link.
fn start(
    port: &Port,
    reader: OwnedMutexGuard<Reader>,
    peer: u64,
    ack: Option<(u64, u64)>,
    slot: Option<OwnedSemaphorePermit>,
) -> Box<dyn Link> {
    let (dead, _) = watch::channel(None);
    let wake = Arc::new(Notify::new());
    let session = Arc::new(Session {
        info: LinkInfo {
            selector: port.cfg.selector.clone(),
            local: port.cfg.path.clone(),
            peer: format!("the other end of {} (session {peer:016x})", port.cfg.path),
        },
        writer: port.writer.clone(),
        dead,
        ack,
        ack_pending: AtomicBool::new(false),
        wake: wake.clone(),
        arq: std::sync::Mutex::new(Arq::new(MAX_FRAME)),
        room: Notify::new(),
        rx: Mutex::new(RxSide {
            reader,
            peer,
            ready: VecDeque::new(),
            ready_bytes: 0,
            state: RxState::Open,
        }),
        halves: AtomicUsize::new(2),
        _slot: slot,
    });
    tokio::spawn(control(Arc::downgrade(&session), wake));
    tracing::debug!(path = %port.cfg.path, peer = format_args!("{peer:016x}"), "serial session up");
    Box::new(SerialLink { session })
}

/// Writes acks, NAKs and retransmissions when they are due, a repeated ACK
/// when asked, and a keepalive byte when the line has been idle for a
/// second. Holds the session only weakly while it sleeps, so dropping both
/// halves closes the device at once.
async fn control(session: Weak<Session>, wake: Arc<Notify>) {
    loop {
        let tick = Instant::now() + KEEPALIVE_INTERVAL / 2;
        let until = match session.upgrade() {
            None => return,
            Some(s) => s
                .arq()
                .timer()
                .map_or(tick, |t| Instant::from_std(t).min(tick)),
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = wake.notified() => {}
        }
        let Some(s) = session.upgrade() else { return };
        if s.is_dead() {
            return;
        }
        let work = {
            let mut arq = s.arq();
            arq.poll_timer(Instant::now().into_std());
            arq.has_output()
        };
        let repeat_ack = s.ack_pending.swap(false, Ordering::Relaxed);
        if work || repeat_ack {
            let mut dead = s.dead.subscribe();
            let mut w = s.writer.lock().await;
            let mut r = Ok(());
            if repeat_ack && let Some((theirs, mine)) = s.ack {
                r = w.send(KIND_ACK, &ack(theirs, mine), Some(&mut dead)).await;
            }
            if r.is_ok() {
                r = s.flush(&mut w, &mut dead).await;
            }
            if let Err(e) = r {
                s.kill(&format!("writing to {}: {e}", s.info.local));
                return;
            }
        } else if let Ok(mut w) = s.writer.try_lock()
            && w.last_write.elapsed() >= KEEPALIVE_INTERVAL
        {
            // A segment being written keeps the line busy: nothing to add.
            w.keepalive();
        }
    }
}

struct SerialLink {
    session: Arc<Session>,
}

impl Link for SerialLink {
    fn caps(&self) -> LinkCaps {
        caps()
    }

    fn info(&self) -> &LinkInfo {
        &self.session.info
    }

    fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
        let dead = self.session.dead.subscribe();
        (
            Box::new(SerialTx {
                session: self.session.clone(),
                dead,
                closed: false,
                mid_frame: false,
            }),
            Box::new(SerialRx {
                session: self.session,
            }),
        )
    }
}

/// The last half dropped ends the session (the control task stops sending
/// again what nobody will read).
fn drop_half(session: &Session) {
    if session.halves.fetch_sub(1, Ordering::AcqRel) == 1 {
        session.kill("the link was closed here");
    }
}

struct SerialTx {
    session: Arc<Session>,
    dead: Dead,
    closed: bool,
    /// A `send` was cancelled between two segments of a frame.
    mid_frame: bool,
}

impl SerialTx {
    fn check_alive(&self) -> Result<(), LinkError> {
        match &*self.dead.borrow() {
            Some(why) => Err(dead_error(Some(why))),
            None => Ok(()),
        }
    }

    /// Waits until the window has room for `len` more bytes. When nobody is
    /// in `recv`, reads the line itself so the acks get through.
    async fn wait_room(&mut self, len: usize) -> Result<(), LinkError> {
        let s = self.session.clone();
        let grace = Instant::now() + SILENCE_GRACE;
        loop {
            self.check_alive()?;
            if s.arq().room(len) {
                return Ok(());
            }
            if let Ok(mut rx) = s.rx.try_lock() {
                s.process(&mut rx);
                if s.arq().room(len) {
                    continue;
                }
                s.pump(&mut rx, Instant::now() + PUMP_SLICE, grace).await;
                s.process(&mut rx);
            } else {
                tokio::select! {
                    _ = s.room.notified() => {}
                    _ = tokio::time::sleep(PUMP_SLICE) => {}
                    _ = self.dead.changed() => {}
                }
            }
        }
    }

    /// After a `send` cancelled between two segments: tells the other end
    /// to drop the half frame, so it is not glued to the next one.
    async fn abort_half_frame(&mut self) -> Result<(), LinkError> {
        if std::mem::take(&mut self.mid_frame) {
            self.put(arq::FLAG_ABORT, &[]).await?;
        }
        Ok(())
    }

    /// Numbers one segment and writes it, after whatever is due first.
    async fn put(&mut self, flags: u8, payload: &[u8]) -> Result<(), LinkError> {
        self.wait_room(payload.len()).await?;
        let s = self.session.clone();
        let mut w = s.writer.lock().await;
        let r = async {
            s.flush(&mut w, &mut self.dead).await?;
            let body = s.arq().push(flags, payload, Instant::now().into_std());
            w.send(KIND_SEG, &body, Some(&mut self.dead)).await
        }
        .await;
        if let Err(e) = &r {
            s.kill(&format!("writing to {}: {e}", s.info.local));
        }
        r
    }
}

impl Drop for SerialTx {
    fn drop(&mut self) {
        drop_half(&self.session);
    }
}

#[async_trait]
impl FrameTx for SerialTx {
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        if frame.len() > MAX_FRAME {
            return Err(LinkError::FrameTooLarge {
                len: frame.len(),
                max: MAX_FRAME,
            });
        }
        if self.closed {
            return Err(LinkError::Closed);
        }
        self.check_alive()?;
        self.abort_half_frame().await?;
        // An empty frame is one empty segment.
        let pieces: Vec<&[u8]> = if frame.is_empty() {
            vec![frame]
        } else {
            frame.chunks(arq::SEG_BYTES).collect()
        };
        let n = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            // Cleared only when the whole frame is out: a cancelled send
            // leaves it set, and the next send aborts the half frame first.
            self.mid_frame = true;
            self.put(if i + 1 == n { arq::FLAG_LAST } else { 0 }, piece)
                .await?;
        }
        self.mid_frame = false;
        Ok(())
    }

    async fn close(&mut self) -> Result<(), LinkError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.check_alive()?;
        self.abort_half_frame().await?;
        self.put(arq::FLAG_FIN, &[]).await
    }
}

struct SerialRx {
    session: Arc<Session>,
}

impl Drop for SerialRx {
    fn drop(&mut self) {
        drop_half(&self.session);
    }
}

#[async_trait]
impl FrameRx for SerialRx {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        let s = self.session.clone();
        let grace = Instant::now() + SILENCE_GRACE;
        let mut rx = s.rx.lock().await;
        loop {
            s.process(&mut rx);
            if let Some(f) = rx.ready.pop_front() {
                rx.ready_bytes -= f.len();
                if s.arq().room_again() {
                    s.wake.notify_one();
                }
                return Ok(f);
            }
            match &rx.state {
                RxState::Open => {}
                RxState::Closed => return Err(LinkError::Closed),
                RxState::Failed(kind, msg) => {
                    return Err(LinkError::Io(io::Error::new(*kind, msg.clone())));
                }
            }
            let forever = Instant::now() + Duration::from_secs(86_400);
            s.pump(&mut rx, forever, grace).await;
        }
    }
}

/// Opens a session as the opening end: HELLO until ACK, or `open_timeout`.
pub(crate) async fn connect(port: Port) -> Result<Box<dyn Link>, gateway_link::OpenError> {
    let cfg = &port.cfg;
    let limit = cfg.open_timeout;
    let deadline = Instant::now() + limit;
    let mine = nonce();
    let mut reader = port.reader.clone().lock_owned().await;
    let no_answer = || {
        gateway_link::OpenError::Timeout(format!(
            "no answer on {} within {limit:?}: start `gateway serve --listen serial:DEVICE` on the other end (with its own device, e.g. /dev/ttyGS0 on a USB gadget), check the cable, and that both ends use the same baud rate and ?flow=",
            cfg.path
        ))
    };
    loop {
        {
            let mut w = port.writer.lock().await;
            match timeout_at(deadline, w.send(KIND_HELLO, &hello(mine), None)).await {
                Err(_) => return Err(no_answer()),
                Ok(r) => r.map_err(|e| open_io(cfg, e))?,
            }
        }
        let resend = (Instant::now() + HELLO_RESEND).min(deadline);
        loop {
            while let Some(p) = reader.dec.next_packet() {
                if p.kind == KIND_ACK
                    && let Some((echo, theirs)) = parse_ack(&p.body)
                    && echo == mine
                {
                    tracing::debug!(path = %cfg.path, "serial: HELLO answered");
                    return Ok(start(&port, reader, theirs, None, None));
                }
            }
            match timeout_at(resend, reader.fill()).await {
                Err(_) => break,
                Ok(Ok(0)) => return Err(hung_up(cfg)),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(open_io(cfg, LinkError::Io(e))),
            }
        }
        if Instant::now() >= deadline {
            return Err(no_answer());
        }
    }
}

fn hung_up(cfg: &SerialConfig) -> gateway_link::OpenError {
    gateway_link::OpenError::NotFound(format!(
        "{} hung up: the device went away (unplugged?)",
        cfg.path
    ))
}

fn open_io(cfg: &SerialConfig, e: LinkError) -> gateway_link::OpenError {
    match e {
        LinkError::Io(e) => {
            gateway_link::OpenError::Io(io::Error::new(e.kind(), format!("{}: {e}", cfg.path)))
        }
        other => gateway_link::OpenError::Io(io::Error::other(format!("{}: {other}", cfg.path))),
    }
}

/// The listening end: one session at a time on one device.
pub(crate) struct SerialListener {
    port: Port,
    slot: Arc<Semaphore>,
    /// The slot, once taken by an `accept` that was then cancelled.
    permit: Option<OwnedSemaphorePermit>,
    /// An opener's nonce whose HELLO was read but not yet answered.
    pending: Option<u64>,
    last_rst: Option<Instant>,
}

impl SerialListener {
    pub(crate) fn new(port: Port) -> SerialListener {
        SerialListener {
            port,
            slot: Arc::new(Semaphore::new(1)),
            permit: None,
            pending: None,
            last_rst: None,
        }
    }

    /// Tells an opener that still sends segments (its session ended here) to stop.
    async fn reset_stray(&mut self) {
        if self.last_rst.is_some_and(|t| t.elapsed() < RST_INTERVAL) {
            return;
        }
        self.last_rst = Some(Instant::now());
        let mut w = self.port.writer.lock().await;
        let n = codec::encode(KIND_RST, &[], w.escaped, &mut w.out, &mut Vec::new());
        w.write_now(n);
    }
}

#[async_trait]
impl Listener for SerialListener {
    fn local_selector(&self) -> String {
        self.port.cfg.selector.clone()
    }

    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        if self.permit.is_none() {
            let p = self.slot.clone().acquire_owned().await;
            self.permit = Some(p.expect("the semaphore is never closed"));
        }
        let mut reader = self.port.reader.clone().lock_owned().await;
        let theirs = 'hello: loop {
            if let Some(n) = self.pending {
                break n;
            }
            while let Some(p) = reader.dec.next_packet() {
                match p.kind {
                    KIND_HELLO => {
                        if let Some(n) = parse_hello(&p.body) {
                            self.pending = Some(n);
                            break 'hello n;
                        }
                        tracing::debug!(path = %self.port.cfg.path, "serial: HELLO of another version ignored");
                    }
                    KIND_SEG => self.reset_stray().await,
                    _ => {}
                }
            }
            match reader.fill().await {
                Ok(0) => {
                    return Err(LinkError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} hung up: the device went away (unplugged?)",
                            self.port.cfg.path
                        ),
                    )));
                }
                Ok(_) => {}
                Err(e) => return Err(LinkError::Io(e)),
            }
        };
        let mine = nonce();
        {
            let mut w = self.port.writer.lock().await;
            w.send(KIND_ACK, &ack(theirs, mine), None).await?;
        }
        self.pending = None;
        tracing::debug!(path = %self.port.cfg.path, "serial: accepted a session");
        Ok(start(
            &self.port,
            reader,
            theirs,
            Some((theirs, mine)),
            self.permit.take(),
        ))
    }
}
