//! Byte-rate cap around any link (`?rate=` on every selector).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::{Instant, sleep_until};

use crate::{FrameRx, FrameTx, Link, LinkCaps, LinkError, LinkInfo};

/// How far ahead of the cap a sender may run: small, so one 1 MiB frame at
/// 10 MB/s takes about 0.1 s instead of slipping through as a burst.
const BURST: Duration = Duration::from_millis(10);

/// Token bucket kept as a "theoretical arrival time" (GCRA): each frame moves
/// `tat` by len/rate; a caller runs ahead of it by at most [`BURST`].
#[derive(Debug)]
struct Bucket {
    bytes_per_s: f64,
    tat: Instant,
}

impl Bucket {
    fn new(bytes_per_s: u64) -> Self {
        Bucket {
            bytes_per_s: bytes_per_s as f64,
            tat: Instant::now(),
        }
    }

    /// Charges `len` bytes; returns when the caller may go on.
    fn charge(&mut self, len: usize) -> Instant {
        let now = Instant::now();
        self.tat = self.tat.max(now) + Duration::from_secs_f64(len as f64 / self.bytes_per_s);
        self.tat.checked_sub(BURST).unwrap_or(now).max(now)
    }
}

/// A link whose two directions are each capped at a byte rate.
///
/// The outgoing bucket is charged before a frame is sent, the incoming one
/// before a received frame is handed up, so a cap on one end holds both
/// directions even when the peer is uncapped. Frame headers of the
/// transport are not counted.
pub struct RateLimited {
    inner: Box<dyn Link>,
    bytes_per_s: u64,
}

impl RateLimited {
    /// Wraps `link`, capping each direction at `bytes_per_s` (must be > 0).
    pub fn wrap(link: Box<dyn Link>, bytes_per_s: u64) -> Box<dyn Link> {
        Box::new(RateLimited {
            inner: link,
            bytes_per_s: bytes_per_s.max(1),
        })
    }
}

impl Link for RateLimited {
    fn caps(&self) -> LinkCaps {
        self.inner.caps()
    }
    fn info(&self) -> &LinkInfo {
        self.inner.info()
    }
    fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
        let max_frame = self.inner.caps().max_frame;
        let (tx, rx) = self.inner.split();
        (
            Box::new(RateTx {
                inner: tx,
                bucket: Bucket::new(self.bytes_per_s),
                max_frame,
            }),
            Box::new(RateRx {
                inner: rx,
                bucket: Bucket::new(self.bytes_per_s),
                pending: None,
            }),
        )
    }
}

struct RateTx {
    inner: Box<dyn FrameTx>,
    bucket: Bucket,
    max_frame: usize,
}

#[async_trait]
impl FrameTx for RateTx {
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        // Refuse before charging: a refused frame must cost nothing.
        if frame.len() > self.max_frame {
            return Err(LinkError::FrameTooLarge {
                len: frame.len(),
                max: self.max_frame,
            });
        }
        let go = self.bucket.charge(frame.len());
        sleep_until(go).await;
        self.inner.send(frame).await
    }
    async fn close(&mut self) -> Result<(), LinkError> {
        self.inner.close().await
    }
}

struct RateRx {
    inner: Box<dyn FrameRx>,
    bucket: Bucket,
    /// A received frame waiting for its tokens; kept here so `recv` stays cancel-safe.
    pending: Option<(Bytes, Instant)>,
}

#[async_trait]
impl FrameRx for RateRx {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        if self.pending.is_none() {
            let frame = self.inner.recv().await?;
            let go = self.bucket.charge(frame.len());
            self.pending = Some((frame, go));
        }
        let go = self.pending.as_ref().expect("set above").1;
        sleep_until(go).await;
        Ok(self.pending.take().expect("set above").0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_mib_at_10mb_takes_about_a_tenth_of_a_second() {
        let mut b = Bucket::new(10_000_000);
        let start = Instant::now();
        let go = b.charge(1 << 20);
        let waited = go - start;
        assert!(
            waited > Duration::from_millis(85) && waited < Duration::from_millis(110),
            "expected ~95 ms, got {waited:?}"
        );
        // A second frame queues behind the first.
        let go2 = b.charge(1 << 20);
        assert!(
            go2 - start > Duration::from_millis(190),
            "got {:?}",
            go2 - start
        );
    }
}
