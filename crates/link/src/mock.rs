//! In-memory links for tests: `mock:NAME?delay=5ms&loss=0.01&die_after=1MB&seed=7`.
//!
//! Listening on `mock:NAME` registers NAME in a process-global table until the
//! listener is dropped; opening `mock:NAME` creates an in-memory duplex pair
//! and hands the other end to that listener's `accept`. Parameters given to
//! the listener are defaults for every open to it; the open's own win.
//!
//! - `delay=5ms`: one-way latency per frame. Frames are pipelined, like on a
//!   real link: each arrives `delay` after it was sent, not after the previous.
//! - `loss=0.01`: each end drops that share of the frames it sends, from a
//!   seeded RNG; the link then reports `reliable: false`.
//! - `die_after=1MB`: at most that many bytes (both directions together) get
//!   through; the send that would exceed it kills the link, and both ends then
//!   fail with [`LinkError::Io`].
//! - `seed=7`: RNG seed for `loss` (default 0).
//! - `max_frame=N`: the frame limit (default 16 MiB + 64 KiB, like TCP).
//! - `drop_opens=N`: the first N links opened to the listener (counted per
//!   listener) are dropped by the "transport" at once: both ends' first
//!   send fails with [`LinkError::Io`], as a radio that drops a fresh link.
//! - `rate=10MB` is applied by the [`Registry`](crate::Registry), not here.
//!
//! At most 4 MiB of frames are in flight per direction; senders wait beyond that.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, sleep_until};

use crate::{
    Adapter, FrameRx, FrameTx, Link, LinkCaps, LinkDriver, LinkError, LinkInfo, LinkKind, Listener,
    OpenError, Selector, SelectorError,
};

/// Default frame limit of mock links, the same as TCP's.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024 + 64 * 1024;
const WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// The `mock` driver; [`Registry::new`](crate::Registry::new) registers it.
#[derive(Debug, Default, Clone, Copy)]
pub struct MockDriver;

struct Entry {
    id: u64,
    conns: mpsc::UnboundedSender<MockLink>,
    defaults: Selector,
    /// Links opened to this listener so far.
    opened: Arc<AtomicU64>,
}

static LISTENERS: LazyLock<Mutex<HashMap<String, Entry>>> = LazyLock::new(Default::default);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn listeners() -> std::sync::MutexGuard<'static, HashMap<String, Entry>> {
    LISTENERS.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Debug)]
struct Config {
    delay: Duration,
    loss: f64,
    die_after: Option<u64>,
    seed: u64,
    max_frame: usize,
    drop_opens: u64,
}

impl Config {
    fn from(sel: &Selector) -> Result<Config, SelectorError> {
        let loss = sel.param::<f64>("loss")?.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&loss) {
            return Err(SelectorError::BadParamValue {
                key: "loss".into(),
                value: loss.to_string(),
                expected: "a fraction between 0 and 1, e.g. 0.01".into(),
            });
        }
        Ok(Config {
            delay: sel.duration_param("delay")?.unwrap_or(Duration::ZERO),
            loss,
            die_after: sel.bytes_param("die_after")?,
            seed: sel.param::<u64>("seed")?.unwrap_or(0),
            max_frame: sel
                .bytes_param("max_frame")?
                .map_or(DEFAULT_MAX_FRAME, |n| n as usize),
            drop_opens: sel.param::<u64>("drop_opens")?.unwrap_or(0),
        })
    }
}

fn name_of(sel: &Selector) -> Result<&str, SelectorError> {
    let name = sel.address.as_str();
    if name.is_empty() {
        return Err(SelectorError::BadAddress {
            input: sel.raw.clone(),
            expected: "a name, e.g. mock:a".into(),
        });
    }
    Ok(name)
}

#[async_trait]
impl LinkDriver for MockDriver {
    fn scheme(&self) -> &'static str {
        "mock"
    }

    fn describe(&self) -> &'static str {
        "in-memory links inside this process, for tests: mock:NAME?delay=&loss=&die_after=&seed="
    }

    async fn probe(&self) -> Vec<Adapter> {
        let mut names: Vec<String> = listeners().keys().cloned().collect();
        names.sort();
        vec![Adapter {
            scheme: "mock".into(),
            name: "mock".into(),
            usable: true,
            detail: if names.is_empty() {
                "in-memory, no listeners".into()
            } else {
                format!("in-memory, listeners: {}", names.join(", "))
            },
        }]
    }

    async fn open(&self, sel: &Selector) -> Result<Box<dyn Link>, OpenError> {
        let name = name_of(sel)?;
        let (conns, defaults, opened) = {
            let map = listeners();
            let e = map.get(name).ok_or_else(|| {
                OpenError::Refused(format!(
                    "no mock listener named {name}; listen on mock:{name} in this process first"
                ))
            })?;
            (e.conns.clone(), e.defaults.clone(), e.opened.clone())
        };
        let mut merged = defaults.clone();
        merged.params.extend(sel.params.clone());
        let mut cfg = Config::from(&merged)?;
        if opened.fetch_add(1, Ordering::Relaxed) < cfg.drop_opens {
            cfg.die_after = Some(0);
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let client = format!("mock:{name}/client#{id}");
        let (mine, theirs) = pair(
            &cfg,
            LinkInfo {
                selector: sel.to_string(),
                local: client.clone(),
                peer: format!("mock:{name}"),
            },
            LinkInfo {
                selector: defaults.to_string(),
                local: format!("mock:{name}"),
                peer: client,
            },
        );
        conns.send(theirs).map_err(|_| {
            OpenError::Refused(format!(
                "mock listener {name} is shutting down; listen on mock:{name} again"
            ))
        })?;
        Ok(Box::new(mine))
    }

    async fn listen(&self, sel: &Selector) -> Result<Box<dyn Listener>, OpenError> {
        let name = name_of(sel)?.to_string();
        Config::from(sel)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut map = listeners();
        if map.contains_key(&name) {
            return Err(OpenError::Busy(format!(
                "a mock listener named {name} already exists in this process; pick another name"
            )));
        }
        let defaults = sel.without_param("rate");
        map.insert(
            name.clone(),
            Entry {
                id,
                conns: tx,
                defaults,
                opened: Arc::default(),
            },
        );
        Ok(Box::new(MockListener {
            name,
            id,
            conns: rx,
        }))
    }
}

struct MockListener {
    name: String,
    id: u64,
    conns: mpsc::UnboundedReceiver<MockLink>,
}

impl Drop for MockListener {
    fn drop(&mut self) {
        let mut map = listeners();
        if map.get(&self.name).is_some_and(|e| e.id == self.id) {
            map.remove(&self.name);
        }
    }
}

#[async_trait]
impl Listener for MockListener {
    fn local_selector(&self) -> String {
        format!("mock:{}", self.name)
    }
    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        match self.conns.recv().await {
            Some(l) => Ok(Box::new(l)),
            None => Err(LinkError::Closed),
        }
    }
}

enum Msg {
    Frame {
        data: Bytes,
        at: Instant,
        _window: OwnedSemaphorePermit,
    },
    Close,
}

/// State both ends share: bytes sent so far and whether `die_after` killed the link.
struct Shared {
    sent: AtomicU64,
    dead: watch::Sender<bool>,
    die_after: Option<u64>,
}

impl Shared {
    fn kill(&self) {
        self.dead.send_replace(true);
    }
    fn death(&self) -> LinkError {
        LinkError::Io(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!(
                "mock link died after {} bytes (die_after)",
                self.die_after.unwrap_or(0)
            ),
        ))
    }
}

/// One end of a mock pair.
struct MockLink {
    caps: LinkCaps,
    info: LinkInfo,
    tx: MockTx,
    rx: MockRx,
}

fn pair(cfg: &Config, a_info: LinkInfo, b_info: LinkInfo) -> (MockLink, MockLink) {
    let (dead, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        sent: AtomicU64::new(0),
        dead,
        die_after: cfg.die_after,
    });
    let caps = LinkCaps {
        kind: LinkKind::Mock,
        max_frame: cfg.max_frame,
        reliable: cfg.loss == 0.0,
        ordered: true,
    };
    let (a_to_b, b_from_a) = mpsc::unbounded_channel();
    let (b_to_a, a_from_b) = mpsc::unbounded_channel();
    let win_ab = Arc::new(Semaphore::new(WINDOW_BYTES));
    let win_ba = Arc::new(Semaphore::new(WINDOW_BYTES));
    let end = |info, tx, win_out: &Arc<Semaphore>, rx, win_in: &Arc<Semaphore>, seed| MockLink {
        caps,
        info,
        tx: MockTx {
            tx: Some(tx),
            window: win_out.clone(),
            shared: shared.clone(),
            cfg: cfg.clone(),
            rng: StdRng::seed_from_u64(seed),
        },
        rx: MockRx {
            rx,
            window: win_in.clone(),
            shared: shared.clone(),
            dead: shared.dead.subscribe(),
            pending: None,
            closed: false,
        },
    };
    let a = end(a_info, a_to_b, &win_ab, a_from_b, &win_ba, cfg.seed);
    let b = end(
        b_info,
        b_to_a,
        &win_ba,
        b_from_a,
        &win_ab,
        cfg.seed ^ 0x9e37_79b9_7f4a_7c15,
    );
    (a, b)
}

impl Link for MockLink {
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

struct MockTx {
    tx: Option<mpsc::UnboundedSender<Msg>>,
    window: Arc<Semaphore>,
    shared: Arc<Shared>,
    cfg: Config,
    rng: StdRng,
}

fn peer_gone() -> LinkError {
    LinkError::Io(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the mock peer went away",
    ))
}

#[async_trait]
impl FrameTx for MockTx {
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        if frame.len() > self.cfg.max_frame {
            return Err(LinkError::FrameTooLarge {
                len: frame.len(),
                max: self.cfg.max_frame,
            });
        }
        let Some(tx) = &self.tx else {
            return Err(LinkError::Closed);
        };
        if *self.shared.dead.borrow() {
            return Err(self.shared.death());
        }
        if let Some(limit) = self.shared.die_after {
            let before = self
                .shared
                .sent
                .fetch_add(frame.len() as u64, Ordering::SeqCst);
            if before + frame.len() as u64 > limit {
                self.shared.kill();
                return Err(self.shared.death());
            }
        }
        if self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss) {
            return Ok(());
        }
        let want = frame.len().clamp(1, WINDOW_BYTES) as u32;
        let mut dead = self.shared.dead.subscribe();
        let window = tokio::select! {
            biased;
            _ = dead.wait_for(|d| *d) => return Err(self.shared.death()),
            p = self.window.clone().acquire_many_owned(want) => p.map_err(|_| peer_gone())?,
        };
        let at = Instant::now() + self.cfg.delay;
        let data = Bytes::copy_from_slice(frame);
        tx.send(Msg::Frame {
            data,
            at,
            _window: window,
        })
        .map_err(|_| peer_gone())
    }

    async fn close(&mut self) -> Result<(), LinkError> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Close);
        }
        Ok(())
    }
}

struct MockRx {
    rx: mpsc::UnboundedReceiver<Msg>,
    window: Arc<Semaphore>,
    shared: Arc<Shared>,
    dead: watch::Receiver<bool>,
    /// A frame taken off the channel but not yet due; kept so `recv` is cancel-safe.
    pending: Option<(Bytes, Instant, OwnedSemaphorePermit)>,
    closed: bool,
}

impl Drop for MockRx {
    fn drop(&mut self) {
        // Wakes a peer blocked on the window so its send fails instead of hanging.
        self.window.close();
    }
}

#[async_trait]
impl FrameRx for MockRx {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        if self.pending.is_none() {
            if self.closed {
                return Err(LinkError::Closed);
            }
            let msg = tokio::select! {
                biased;
                _ = self.dead.wait_for(|d| *d) => return Err(self.shared.death()),
                m = self.rx.recv() => m,
            };
            match msg {
                None => {
                    return Err(LinkError::Io(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "the mock peer dropped the link without closing it",
                    )));
                }
                Some(Msg::Close) => {
                    self.closed = true;
                    return Err(LinkError::Closed);
                }
                Some(Msg::Frame { data, at, _window }) => self.pending = Some((data, at, _window)),
            }
        }
        let at = self.pending.as_ref().expect("set above").1;
        tokio::select! {
            biased;
            _ = self.dead.wait_for(|d| *d) => return Err(self.shared.death()),
            _ = sleep_until(at) => {}
        }
        Ok(self.pending.take().expect("set above").0)
    }
}
