//! Sessions over one open serial device: the handshake that starts one,
//! keepalives, close, and the `Link` halves.
//!
//! A serial line has no connections, so this module makes them: the opening
//! end sends HELLO(its nonce) every 250 ms until the listening end answers
//! ACK(that nonce, its own). Everything either end read before is ignored,
//! so bytes left on the line by an earlier session (or by someone else) never
//! reach the new one. DATA packets then carry frames; FIN closes one direction
//! (sent twice, so one hit by noise does not leave the peer waiting); RST tells
//! an opener still sending that the listener has no session for it.
//!
//! A line also has no end-of-stream, so each end sends a lone 0x00 when it has
//! sent nothing for a second, and a receiver that hears nothing at all for
//! [`SILENCE_TIMEOUT`] declares the other end gone. That also fails sends.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
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

use crate::codec::{self, DecodeStats, Decoder};
use crate::{MAX_FRAME, SerialConfig};

/// A frame of the layer above.
const KIND_DATA: u8 = b'D';
/// The sender closed its direction.
const KIND_FIN: u8 = b'F';
/// Opener → listener: version, nonce (u64 LE).
const KIND_HELLO: u8 = b'H';
/// Listener → opener: version, the opener's nonce, the listener's nonce.
const KIND_ACK: u8 = b'A';
/// Listener → opener: no session here (the listener lost it or restarted).
const KIND_RST: u8 = b'R';
/// Version of this packet protocol, in HELLO and ACK.
const VERSION: u8 = 1;

/// A session whose other end sent nothing (not even a keepalive) for this
/// long is declared gone.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(8);
/// An idle sender sends a keepalive byte this often.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A `recv` entered after a long pause waits at least this long before it
/// blames the other end for the silence.
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
/// The listener answers stray DATA with RST at most this often.
const RST_INTERVAL: Duration = Duration::from_millis(500);

pub(crate) fn caps() -> LinkCaps {
    LinkCaps {
        kind: LinkKind::Serial,
        max_frame: MAX_FRAME,
        // Frames are never altered (CRC32C) nor reordered. A frame hit by
        // line noise is dropped, though; see the crate docs.
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
                dec: Decoder::new(MAX_FRAME, escaped),
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
    wake: Arc<Notify>,
    /// The listener's one session slot, free again when this drops.
    _slot: Option<OwnedSemaphorePermit>,
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
}

/// Starts a session: spawns its keepalive task and returns the link.
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
        _slot: slot,
    });
    tokio::spawn(keepalive(Arc::downgrade(&session), wake));
    tracing::debug!(path = %port.cfg.path, peer = format_args!("{peer:016x}"), "serial session up");
    Box::new(SerialLink {
        session,
        reader,
        peer,
    })
}

/// Sends a keepalive byte when the line has been idle for a second, and a
/// repeated ACK when asked. Holds the session only weakly (and never across
/// an await), so dropping both halves closes the device at once.
async fn keepalive(session: Weak<Session>, wake: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(KEEPALIVE_INTERVAL / 2) => {}
            _ = wake.notified() => {}
        }
        let Some(s) = session.upgrade() else { return };
        if s.is_dead() {
            return;
        }
        // A frame being written keeps the line busy: nothing to add.
        let Ok(mut w) = s.writer.try_lock() else {
            continue;
        };
        if s.ack_pending.swap(false, Ordering::Relaxed)
            && let Some((theirs, mine)) = s.ack
        {
            let n = codec::encode(
                KIND_ACK,
                &ack(theirs, mine),
                w.escaped,
                &mut w.out,
                &mut Vec::new(),
            );
            w.write_now(n);
        } else if w.last_write.elapsed() >= KEEPALIVE_INTERVAL {
            w.keepalive();
        }
    }
}

struct SerialLink {
    session: Arc<Session>,
    reader: OwnedMutexGuard<Reader>,
    peer: u64,
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
            }),
            Box::new(SerialRx {
                session: self.session,
                reader: self.reader,
                peer: self.peer,
                state: RxState::Open,
            }),
        )
    }
}

struct SerialTx {
    session: Arc<Session>,
    dead: Dead,
    closed: bool,
}

impl SerialTx {
    fn check_alive(&self) -> Result<(), LinkError> {
        match &*self.dead.borrow() {
            Some(why) => Err(dead_error(Some(why))),
            None => Ok(()),
        }
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
        let mut w = self.session.writer.lock().await;
        let r = w.send(KIND_DATA, frame, Some(&mut self.dead)).await;
        if let Err(e) = &r {
            self.session
                .kill(&format!("writing to {}: {e}", self.session.info.local));
        }
        r
    }

    async fn close(&mut self) -> Result<(), LinkError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.check_alive()?;
        let mut w = self.session.writer.lock().await;
        // Twice: the peer ignores the second, and needs it if noise ate the first.
        for _ in 0..2 {
            w.send(KIND_FIN, &[], Some(&mut self.dead)).await?;
        }
        Ok(())
    }
}

enum RxState {
    Open,
    Closed,
    Failed(io::ErrorKind, String),
}

struct SerialRx {
    session: Arc<Session>,
    reader: OwnedMutexGuard<Reader>,
    peer: u64,
    state: RxState,
}

impl SerialRx {
    fn fail(&mut self, kind: io::ErrorKind, msg: String) -> LinkError {
        tracing::debug!(path = %self.session.info.local, "serial session down: {msg}");
        self.session.kill(&msg);
        let e = LinkError::Io(io::Error::new(kind, msg.clone()));
        self.state = RxState::Failed(kind, msg);
        e
    }
}

#[async_trait]
impl FrameRx for SerialRx {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        match &self.state {
            RxState::Open => {}
            RxState::Closed => return Err(LinkError::Closed),
            RxState::Failed(kind, msg) => {
                return Err(LinkError::Io(io::Error::new(*kind, msg.clone())));
            }
        }
        let entered = Instant::now();
        let path = self.session.info.local.clone();
        loop {
            while let Some(p) = self.reader.dec.next_packet() {
                match p.kind {
                    KIND_DATA => return Ok(p.body),
                    KIND_FIN => {
                        self.state = RxState::Closed;
                        return Err(LinkError::Closed);
                    }
                    KIND_HELLO => match parse_hello(&p.body) {
                        // The opener missed our ACK and asks again.
                        Some(n) if n == self.peer && self.session.ack.is_some() => {
                            self.session.ack_pending.store(true, Ordering::Relaxed);
                            self.session.wake.notify_one();
                        }
                        Some(n) if n == self.peer => {}
                        Some(_) => {
                            return Err(self.fail(
                                io::ErrorKind::ConnectionReset,
                                format!("the other end of {path} opened the line anew; this link is gone"),
                            ));
                        }
                        None => {}
                    },
                    KIND_RST => {
                        return Err(self.fail(
                            io::ErrorKind::ConnectionReset,
                            format!("the other end of {path} has no session for this link (it closed or restarted)"),
                        ));
                    }
                    KIND_ACK => {} // a repeated answer to our HELLO
                    other => {
                        tracing::debug!(kind = other, "serial: ignoring a packet of unknown kind")
                    }
                }
            }
            let deadline = (self.reader.last_rx + SILENCE_TIMEOUT).max(entered + SILENCE_GRACE);
            match timeout_at(deadline, self.reader.fill()).await {
                Err(_) => {
                    return Err(self.fail(
                        io::ErrorKind::TimedOut,
                        format!(
                            "nothing heard from the other end of {path} for {SILENCE_TIMEOUT:?} (it sends a keepalive every second): the cable is unplugged or the other side stopped"
                        ),
                    ));
                }
                Ok(Ok(0)) => {
                    return Err(self.fail(
                        io::ErrorKind::UnexpectedEof,
                        format!("{path} hung up: the device went away (unplugged?)"),
                    ));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(self.fail(e.kind(), format!("reading {path}: {e}")));
                }
            }
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

    /// Tells an opener that still sends DATA (its session ended here) to stop.
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
                    KIND_DATA => self.reset_stray().await,
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
