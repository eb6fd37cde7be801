//! Seeded fault injection around any link: drops, corruption, duplicates,
//! stalls, disconnects and rate caps, deterministic for a seed (smoltcp's
//! `FaultInjector`, for links).
//!
//! Faults hit frames passing through the wrapped end in the directions chosen
//! by [`FaultConfig::side`]. Each direction draws from its own RNG seeded from
//! [`FaultConfig::seed`], so the faults a given frame sequence meets are the
//! same on every run. Frame counts for `stall_after_frames` and
//! `disconnect_after_frames` are over both directions together; with traffic
//! both ways the exact frame that trips them depends on interleaving.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::{FrameRx, FrameTx, Link, LinkCaps, LinkError, LinkInfo, RateLimited};

/// Which directions of the wrapped end the faults hit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FaultSide {
    /// Frames sent and frames received.
    #[default]
    Both,
    /// Only frames this end sends.
    Send,
    /// Only frames this end receives.
    Recv,
}

/// What to inject. Probabilities are per frame, between 0 and 1.
/// `FaultConfig::default()` injects nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// RNG seed; the same seed and frames give the same faults.
    pub seed: u64,
    /// Share of frames silently dropped.
    pub drop: f64,
    /// Share of frames with one byte flipped (empty frames are left alone).
    pub corrupt: f64,
    /// Share of frames delivered twice.
    pub duplicate: f64,
    /// After this many frames, every further send and receive hangs (until
    /// a disconnect, if one is configured), like a link that stopped moving.
    pub stall_after_frames: Option<u64>,
    /// After this many frames, the link fails with an I/O error on both
    /// halves and the wrapped link is dropped, so the peer sees it die too.
    pub disconnect_after_frames: Option<u64>,
    /// Byte-rate cap in each direction (see [`RateLimited`]).
    pub rate_bytes_per_s: Option<u64>,
    /// Which directions the faults hit.
    pub side: FaultSide,
}

/// A link with faults injected as a [`FaultConfig`] says.
pub struct FaultyLink {
    inner: Box<dyn Link>,
    cfg: FaultConfig,
}

impl FaultyLink {
    /// Wraps `link`. Probabilities are clamped to 0..=1.
    pub fn wrap(link: Box<dyn Link>, mut cfg: FaultConfig) -> Box<dyn Link> {
        for p in [&mut cfg.drop, &mut cfg.corrupt, &mut cfg.duplicate] {
            *p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        }
        let rate = cfg.rate_bytes_per_s;
        let faulty: Box<dyn Link> = Box::new(FaultyLink { inner: link, cfg });
        match rate {
            Some(r) => RateLimited::wrap(faulty, r),
            None => faulty,
        }
    }
}

impl Link for FaultyLink {
    fn caps(&self) -> LinkCaps {
        let mut caps = self.inner.caps();
        let c = &self.cfg;
        caps.reliable &= c.drop == 0.0 && c.corrupt == 0.0 && c.duplicate == 0.0;
        caps
    }
    fn info(&self) -> &LinkInfo {
        self.inner.info()
    }
    fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
        let (tx, rx) = self.inner.split();
        let (dead, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            frames: AtomicU64::new(0),
            dead,
            cfg: self.cfg.clone(),
        });
        let on = |side| self.cfg.side == FaultSide::Both || self.cfg.side == side;
        (
            Box::new(FaultyTx {
                inner: Some(tx),
                dice: Dice::new(self.cfg.seed, on(FaultSide::Send)),
                shared: shared.clone(),
            }),
            Box::new(FaultyRx {
                inner: Some(rx),
                dice: Dice::new(self.cfg.seed ^ 0x5851_f42d_4c95_7f2d, on(FaultSide::Recv)),
                dead: shared.dead.subscribe(),
                shared,
                again: None,
            }),
        )
    }
}

struct Shared {
    frames: AtomicU64,
    dead: watch::Sender<bool>,
    cfg: FaultConfig,
}

enum Gate {
    Pass,
    Stall,
    Disconnect,
}

impl Shared {
    fn gate(&self) -> Gate {
        if *self.dead.borrow() {
            return Gate::Disconnect;
        }
        let n = self.frames.fetch_add(1, Ordering::SeqCst) + 1;
        if self.cfg.disconnect_after_frames.is_some_and(|d| n > d) {
            self.dead.send_replace(true);
            return Gate::Disconnect;
        }
        if self.cfg.stall_after_frames.is_some_and(|s| n > s) {
            return Gate::Stall;
        }
        Gate::Pass
    }

    fn disconnected(&self) -> LinkError {
        LinkError::Io(io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!(
                "fault injection: disconnected after {} frames",
                self.cfg.disconnect_after_frames.unwrap_or(0)
            ),
        ))
    }

    /// Hangs until a disconnect, which it then reports.
    async fn stall(&self) -> LinkError {
        let mut dead = self.dead.subscribe();
        let _ = dead.wait_for(|d| *d).await;
        self.disconnected()
    }
}

/// What happens to one frame; every frame draws the same numbers, so the
/// sequence of faults depends only on the seed and the frame count.
struct Fate {
    drop: bool,
    corrupt: Option<(u64, u8)>,
    duplicate: bool,
}

struct Dice {
    rng: StdRng,
    on: bool,
}

impl Dice {
    fn new(seed: u64, on: bool) -> Self {
        Dice {
            rng: StdRng::seed_from_u64(seed),
            on,
        }
    }
    fn roll(&mut self, cfg: &FaultConfig) -> Fate {
        let (d, c, u): (f64, f64, f64) = (self.rng.random(), self.rng.random(), self.rng.random());
        let pos: u64 = self.rng.random();
        let mask: u8 = self.rng.random_range(1..=255);
        Fate {
            drop: self.on && d < cfg.drop,
            corrupt: (self.on && c < cfg.corrupt).then_some((pos, mask)),
            duplicate: self.on && u < cfg.duplicate,
        }
    }
}

fn corrupted(frame: &[u8], (pos, mask): (u64, u8)) -> Option<Bytes> {
    if frame.is_empty() {
        return None;
    }
    let mut b = BytesMut::from(frame);
    let i = (pos % frame.len() as u64) as usize;
    b[i] ^= mask;
    Some(b.freeze())
}

struct FaultyTx {
    inner: Option<Box<dyn FrameTx>>,
    dice: Dice,
    shared: Arc<Shared>,
}

#[async_trait]
impl FrameTx for FaultyTx {
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        if self.inner.is_none() {
            return Err(self.shared.disconnected());
        }
        match self.shared.gate() {
            Gate::Pass => {}
            Gate::Stall => {
                let e = self.shared.stall().await;
                self.inner = None;
                return Err(e);
            }
            Gate::Disconnect => {
                self.inner = None;
                return Err(self.shared.disconnected());
            }
        }
        let fate = self.dice.roll(&self.shared.cfg);
        if fate.drop {
            return Ok(());
        }
        let bad = fate.corrupt.and_then(|c| corrupted(frame, c));
        let frame = bad.as_deref().unwrap_or(frame);
        let inner = self.inner.as_mut().expect("checked above");
        inner.send(frame).await?;
        if fate.duplicate {
            inner.send(frame).await?;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), LinkError> {
        match self.inner.as_mut() {
            Some(i) => i.close().await,
            None => Err(self.shared.disconnected()),
        }
    }
}

struct FaultyRx {
    inner: Option<Box<dyn FrameRx>>,
    dice: Dice,
    shared: Arc<Shared>,
    dead: watch::Receiver<bool>,
    /// The second copy of a duplicated frame.
    again: Option<Bytes>,
}

#[async_trait]
impl FrameRx for FaultyRx {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        if let Some(f) = self.again.take() {
            return Ok(f);
        }
        loop {
            let Some(inner) = self.inner.as_mut() else {
                return Err(self.shared.disconnected());
            };
            let frame = tokio::select! {
                biased;
                _ = self.dead.wait_for(|d| *d) => {
                    self.inner = None;
                    return Err(self.shared.disconnected());
                }
                f = inner.recv() => f?,
            };
            match self.shared.gate() {
                Gate::Pass => {}
                Gate::Stall => {
                    let e = self.shared.stall().await;
                    self.inner = None;
                    return Err(e);
                }
                Gate::Disconnect => {
                    self.inner = None;
                    return Err(self.shared.disconnected());
                }
            }
            let fate = self.dice.roll(&self.shared.cfg);
            if fate.drop {
                continue;
            }
            let frame = fate
                .corrupt
                .and_then(|c| corrupted(&frame, c))
                .unwrap_or(frame);
            if fate.duplicate {
                self.again = Some(frame.clone());
            }
            return Ok(frame);
        }
    }
}
