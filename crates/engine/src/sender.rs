//! The sending side of one transfer: which chunk goes on which link, when.
//!
//! The scheduler is pull-based: a link asks for work ([`Sender::poll_chunk`])
//! whenever its window has room, so a fast link simply asks more often and
//! takes a larger share. When nothing new is left, an idle link takes a copy
//! of the oldest chunk still in flight on another link (tail duplication), so
//! a slow or stalled link cannot hold the end of the file hostage; the first
//! copy to be acknowledged wins.
//!
//! Each link's window follows what it can carry: its delivery rate (the best
//! of the last ~1 s, sampled every 100 ms) times its minimum round trip (a
//! chunk's poll to its ack, the least seen in 10 s), times a gain, plus one
//! chunk. A slow link then holds only what it can deliver in a round trip or
//! two — the file's tail does not wait behind a deep queue on it — and a fast
//! far link gets enough in flight to fill its pipe.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use gateway_proto::{
    Accept, Complete, Hash, Offer, Range, RangeSet, Reject, Reload, TransferId, Verdict,
};

use crate::geometry::{ChunkRef, Geometry};
use crate::ihs::Signal;
use crate::{Config, EngineError, LinkId};

/// What the sender knows about the file it sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Transfer id (random, chosen by the sender, kept across resumes).
    pub transfer_id: TransferId,
    /// File name as the receiver will store it (one path component).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// Unix permission bits.
    pub mode: u32,
    /// Chunk size in bytes.
    pub chunk_size: u32,
}

/// Where the transfer stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Offer or Reload sent, waiting for Accept.
    Negotiating,
    /// Chunks are moving.
    Sending,
    /// Every chunk acked and Complete sent; waiting for the Verdict.
    Verifying,
    /// Verdict ok: the receiver holds the whole file under its final name.
    Done,
    /// Stopped by the user; state is saved and a rerun resumes.
    Stopped,
    /// The receiver refused or the verdict could not be repaired.
    Failed(String),
}

/// Something the glue must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A signal for the interrupt handler (IHS).
    Signal(Signal),
    /// The receiver reported a new durable set: record it (sender-side DB).
    SaveDurable(RangeSet),
    /// `link` failed earlier and its retry time has come: try to reopen it.
    RetryLink(LinkId),
}

#[derive(Clone, Debug, Default)]
struct LinkState {
    up: bool,
    inflight_bytes: u64,
    /// chunk index -> when and in what order the copy on this link was sent.
    inflight: BTreeMap<u64, Flight>,
    /// The order number of the next chunk sent on this link.
    next_seq: u64,
    /// When an ack for a chunk this link carried last arrived on it: a link
    /// that acks is moving, and chunks queued behind on it are not stuck.
    acked_at: Option<Instant>,
    /// Chunks this link gave back at chunk_timeout while up: their first
    /// copy may still be in its pipe, so an ack for one of them is ambiguous
    /// (which copy?) and says nothing about what was lost (Karn).
    timed_out: std::collections::BTreeSet<u64>,
    retry_at: Option<Instant>,
    /// When something last arrived on this link (see [`Sender::link_heard`]).
    heard_at: Option<Instant>,
    stats: LinkStats,
    est: Estimator,
}

/// One chunk copy in flight on a link.
#[derive(Clone, Copy, Debug)]
struct Flight {
    at: Instant,
    /// Its place in the link's send order. Links deliver in order, so a
    /// chunk sent before one that is acked, and not acked itself, was lost.
    seq: u64,
}

/// The most a link's queue adds to its chunk timeout (a link measured at a
/// crawl must still give its chunks back in bounded time).
const MAX_QUEUE_WAIT: Duration = Duration::from_secs(120);

/// How often a delivery-rate sample is taken.
const RATE_SAMPLE: Duration = Duration::from_millis(100);
/// Samples kept; the rate is their maximum (~1 s of history).
const RATE_SAMPLES: usize = 10;
/// A minimum round trip older than this is replaced by the next sample (the
/// path may have changed).
const MIN_RTT_VALID: Duration = Duration::from_secs(10);

/// A link's delivery rate and minimum round trip, from its acks.
#[derive(Clone, Debug, Default)]
struct Estimator {
    min_rtt: Option<(Duration, Instant)>,
    /// Bytes acked over this link since `since`.
    delivered: u64,
    since: Option<Instant>,
    samples: VecDeque<u64>,
}

impl Estimator {
    fn on_ack(&mut self, sent_at: Instant, len: u64, now: Instant) {
        let rtt = now.saturating_duration_since(sent_at);
        if self
            .min_rtt
            .is_none_or(|(m, at)| rtt <= m || now.saturating_duration_since(at) > MIN_RTT_VALID)
        {
            self.min_rtt = Some((rtt, now));
        }
        self.delivered += len;
        // The first sample starts when the first chunk was sent.
        let since = *self.since.get_or_insert(sent_at);
        let span = now.saturating_duration_since(since);
        if span >= RATE_SAMPLE {
            let rate = (u128::from(self.delivered) * 1_000_000_000 / span.as_nanos()) as u64;
            if self.samples.len() == RATE_SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back(rate);
            self.delivered = 0;
            self.since = Some(now);
        }
    }

    /// Bytes per second, if measured.
    fn rate(&self) -> Option<u64> {
        self.samples.iter().copied().max()
    }

    fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.map(|(d, _)| d)
    }

    /// The window these measurements call for.
    fn window(&self, cfg: &Config, chunk: u64) -> Option<u64> {
        let (rate, rtt) = (self.rate()?, self.min_rtt()?);
        let bdp = u128::from(rate) * rtt.as_nanos() / 1_000_000_000;
        let w = bdp * u128::from(cfg.window_gain_percent) / 100 + u128::from(chunk);
        let lo = u64::from(cfg.link_window_min_chunks.max(1)) * chunk;
        let hi = cfg.link_window_max_bytes.max(lo);
        Some((w.min(u128::from(u64::MAX)) as u64).clamp(lo, hi))
    }
}

impl LinkState {
    /// Its window in bytes: what its measurements call for, or
    /// `link_window_bytes` until it has them.
    fn window(&self, cfg: &Config, chunk: u64) -> u64 {
        self.est.window(cfg, chunk).unwrap_or(cfg.link_window_bytes)
    }

    /// Whether `len` more bytes fit in its window. One chunk may always be
    /// in flight, even when a chunk exceeds the window.
    fn has_room(&self, len: u64, cfg: &Config, chunk: u64) -> bool {
        self.inflight.is_empty() || self.inflight_bytes + len <= self.window(cfg, chunk)
    }

    /// How long this link may go without an ack before its chunks in flight
    /// are given back: `chunk_timeout`, plus the time its measured rate needs
    /// for what it has queued (a slow link that is moving is not stuck; one
    /// chunk may take longer than `chunk_timeout` on it alone).
    fn chunk_timeout(&self, cfg: &Config) -> Duration {
        let queued = match self.est.rate() {
            Some(rate) if rate > 0 => {
                Duration::from_secs_f64(self.inflight_bytes as f64 / rate as f64)
            }
            _ => Duration::ZERO,
        };
        cfg.chunk_timeout + queued.min(MAX_QUEUE_WAIT)
    }

    /// When a chunk sent on this link at `sent` is stuck: its chunk timeout
    /// after the later of its send and the link's last ack.
    fn stuck_at(&self, sent: Instant, cfg: &Config) -> Instant {
        self.acked_at.map_or(sent, |a| a.max(sent)) + self.chunk_timeout(cfg)
    }

    /// Forgets this link's copy of `idx` (`len` bytes), freeing its window.
    fn release(&mut self, idx: u64, len: u64) {
        if self.inflight.remove(&idx).is_some() {
            self.inflight_bytes = self.inflight_bytes.saturating_sub(len);
        }
    }
}

/// Per-link counters, for progress bars and `--json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Payload bytes handed to this link (including duplicates and re-sends).
    pub bytes_sent: u64,
    /// Payload bytes whose first acknowledgement came over this link.
    pub bytes_acked: u64,
    /// Payload bytes sent again (timeouts, link deaths, bad chunks, duplicates).
    pub bytes_resent: u64,
    /// Times this link went down.
    pub failures: u32,
    /// Its window now, in bytes.
    pub window_bytes: u64,
    /// Its delivery rate, bytes per second (0 until measured).
    pub rate_bytes_per_s: u64,
    /// Its minimum round trip, chunk poll to ack (zero until measured).
    pub min_rtt: Duration,
}

/// Progress of the whole transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// File size.
    pub total_bytes: u64,
    /// Bytes the receiver has acknowledged (written, maybe not yet durable).
    pub acked_bytes: u64,
    /// Bytes the receiver reported durable (fdatasync'd and committed).
    pub durable_bytes: u64,
    /// Bytes that were already durable when this run started (resume).
    pub resumed_bytes: u64,
}

/// The sender state machine of one transfer. No I/O: the glue reads chunks,
/// moves frames and feeds back acks, link events and the current time.
#[derive(Debug)]
pub struct Sender {
    meta: FileMeta,
    geo: Geometry,
    cfg: Config,
    phase: Phase,
    acked: RangeSet,
    durable: RangeSet,
    resumed: RangeSet,
    /// Not acked and not in flight anywhere.
    pending: RangeSet,
    /// chunk -> links carrying a copy now.
    copies: HashMap<u64, Vec<LinkId>>,
    /// Chunks ever sent in this run (to count re-sends).
    ever_sent: RangeSet,
    links: BTreeMap<LinkId, LinkState>,
    events: VecDeque<Event>,
    file_hash: Option<Hash>,
    complete_due: bool,
    /// Since when the Verdict is awaited (the Complete last went out).
    verdict_wait_since: Option<Instant>,
    verify_rounds: u32,
}

impl Sender {
    /// A sender for `meta`, configured by `cfg` (its chunk size is `meta.chunk_size`).
    pub fn new(meta: FileMeta, cfg: Config) -> Self {
        let geo = Geometry::new(meta.size, meta.chunk_size);
        Self {
            meta,
            geo,
            cfg,
            phase: Phase::Negotiating,
            acked: RangeSet::new(),
            durable: RangeSet::new(),
            resumed: RangeSet::new(),
            pending: RangeSet::new(),
            copies: HashMap::new(),
            ever_sent: RangeSet::new(),
            links: BTreeMap::new(),
            events: VecDeque::new(),
            file_hash: None,
            complete_due: false,
            verdict_wait_since: None,
            verify_rounds: 0,
        }
    }

    /// The file's metadata.
    pub fn meta(&self) -> &FileMeta {
        &self.meta
    }

    /// The chunk layout.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Where the transfer stands.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The opening frame for a new transfer.
    pub fn offer(&self) -> Offer {
        Offer {
            transfer_id: self.meta.transfer_id,
            name: self.meta.name.clone(),
            size: self.meta.size,
            mtime_ns: self.meta.mtime_ns,
            mode: self.meta.mode,
            chunk_size: self.meta.chunk_size,
            file_hash: self.file_hash,
            entries: None,
        }
    }

    /// The opening frame for a transfer found in the local DB (RELOAD).
    pub fn reload(&self, durable: &RangeSet) -> Reload {
        Reload {
            transfer_id: self.meta.transfer_id,
            name: self.meta.name.clone(),
            size: self.meta.size,
            chunk_size: self.meta.chunk_size,
            durable: durable.ranges().to_vec(),
        }
    }

    /// The receiver accepted; `have` is what it already holds durably (its DB wins).
    pub fn handle_accept(&mut self, accept: &Accept) -> Result<(), EngineError> {
        self.check_id(&accept.transfer_id)?;
        if self.phase != Phase::Negotiating {
            return Err(EngineError::Unexpected("Accept after negotiation"));
        }
        let have = RangeSet::from_ranges(&accept.have, self.geo.chunks())?;
        self.acked = have.clone();
        self.durable = have.clone();
        self.resumed = have;
        self.pending = RangeSet::full(self.geo.chunks()).difference(&self.acked);
        self.phase = Phase::Sending;
        self.maybe_complete();
        Ok(())
    }

    /// A link (re)joined the running transfer and the receiver answered its
    /// Reload with what it holds now. Chunks we counted as acked that it no
    /// longer holds (it restarted and lost unsynced data) are queued again;
    /// chunks it holds whose Ack we lost count as acked.
    pub fn handle_rejoin(&mut self, accept: &Accept) -> Result<(), EngineError> {
        self.check_id(&accept.transfer_id)?;
        let have = RangeSet::from_ranges(&accept.have, self.geo.chunks())?;
        let lost = self.acked.difference(&have);
        for idx in lost.iter() {
            self.acked.remove(idx);
            self.durable.remove(idx);
            if !self.copies.contains_key(&idx) {
                self.pending.insert(idx);
            }
        }
        for idx in have.iter() {
            if self.acked.insert(idx) {
                self.pending.remove(idx);
            }
        }
        if !lost.is_empty() && self.phase == Phase::Verifying {
            self.phase = Phase::Sending;
            self.complete_due = false;
        } else {
            // The receiver may have restarted after our Complete and before
            // its Verdict (it holds everything, but lost the Complete with
            // its process): say it again. A receiver that got it already
            // finishes once (it answers a repeated Complete with the same
            // verdict).
            self.resend_complete();
        }
        self.maybe_complete();
        Ok(())
    }

    /// The receiver refused the transfer.
    pub fn handle_reject(&mut self, reject: &Reject) {
        self.phase = Phase::Failed(format!("receiver refused: {}", reject.message));
    }

    /// The BLAKE3 of the whole file, computed by the glue (it may arrive late).
    pub fn set_file_hash(&mut self, hash: Hash) {
        self.file_hash = Some(hash);
        self.maybe_complete();
    }

    /// A link is up and may carry chunks.
    pub fn link_up(&mut self, link: LinkId) {
        let st = self.links.entry(link).or_default();
        st.up = true;
        st.retry_at = None;
        // A reopened link may run over another path: measure it afresh.
        st.est = Estimator::default();
    }

    /// A link died: its in-flight chunks go back to the queue at once and the
    /// IHS is told (ERROR); the link is retried every `retry_interval`.
    pub fn link_down(&mut self, link: LinkId, reason: &str, now: Instant) {
        let Some(st) = self.links.get_mut(&link) else {
            return;
        };
        if !st.up {
            return;
        }
        st.up = false;
        st.stats.failures += 1;
        st.retry_at = Some(now + self.cfg.retry_interval);
        let lost: Vec<u64> = std::mem::take(&mut st.inflight).into_keys().collect();
        st.inflight_bytes = 0;
        st.timed_out.clear();
        let mut requeued = Vec::new();
        for idx in lost {
            if self.drop_copy(idx, link) {
                requeued.push(idx);
            }
        }
        self.events.push_back(Event::Signal(Signal::Error {
            link,
            reason: reason.to_string(),
            requeued,
        }));
        // Waiting for the Verdict: it may have been lost with this link (the
        // Complete went out on it, or the Verdict was coming back on it).
        // Say Complete again on a link that lives; the receiver answers a
        // repeated Complete with the same verdict.
        if self.links.values().any(|l| l.up) {
            self.resend_complete();
        }
    }

    /// The glue could not reopen `link`; try again after `retry_interval`.
    pub fn link_retry_failed(&mut self, link: LinkId, now: Instant) {
        if let Some(st) = self.links.get_mut(&link)
            && !st.up
        {
            st.retry_at = Some(now + self.cfg.retry_interval);
        }
    }

    /// Forget a link for good (e.g. the user gave up on it).
    pub fn remove_link(&mut self, link: LinkId, now: Instant) {
        self.link_down(link, "removed", now);
        self.links.remove(&link);
    }

    /// Whether `link` is up now.
    pub fn link_is_up(&self, link: LinkId) -> bool {
        self.links.get(&link).is_some_and(|l| l.up)
    }

    /// Something (an ack, a checkpoint, a pong) arrived on `link` at `now`:
    /// it is alive. A link with chunks in flight that stays silent for
    /// `link_silence_timeout` is declared down by [`Sender::handle_timeout`].
    pub fn link_heard(&mut self, link: LinkId, now: Instant) {
        if let Some(st) = self.links.get_mut(&link) {
            st.heard_at = Some(now);
        }
    }

    /// Links that are up now.
    pub fn links_up(&self) -> usize {
        self.links.values().filter(|l| l.up).count()
    }

    /// Pull: `link` has room and asks for its next chunk. `None` when its
    /// window is full or nothing is left to send on it.
    pub fn poll_chunk(&mut self, link: LinkId, now: Instant) -> Option<ChunkRef> {
        if self.phase != Phase::Sending {
            return None;
        }
        let st = self.links.get(&link)?;
        if !st.up {
            return None;
        }
        let chunk_size = u64::from(self.geo.chunk_size);
        let room = |len: u32| st.has_room(u64::from(len), &self.cfg, chunk_size);
        let next = if let Some(first) = self.pending.ranges().first() {
            let chunk = self.geo.chunk(first.start)?;
            if !room(chunk.len) {
                return None;
            }
            self.pending.remove(chunk.index);
            chunk
        } else {
            let idx = self.tail_candidate(link, now)?;
            let chunk = self.geo.chunk(idx)?;
            if !room(chunk.len) {
                return None;
            }
            chunk
        };
        self.record_send(link, next, now);
        Some(next)
    }

    /// The oldest chunk in flight elsewhere that this link does not carry and
    /// that has fewer than `max_copies_per_chunk` copies.
    fn tail_candidate(&self, link: LinkId, now: Instant) -> Option<u64> {
        let mut best: Option<(Instant, u64)> = None;
        for (other_id, other) in &self.links {
            if *other_id == link {
                continue;
            }
            for (&idx, &Flight { at: sent_at, .. }) in &other.inflight {
                if now.saturating_duration_since(sent_at) < self.cfg.tail_duplicate_after {
                    continue;
                }
                let copies = self.copies.get(&idx).map_or(0, Vec::len);
                if copies >= self.cfg.max_copies_per_chunk
                    || self.copies.get(&idx).is_some_and(|c| c.contains(&link))
                {
                    continue;
                }
                if best.is_none_or(|(t, i)| (sent_at, idx) < (t, i)) {
                    best = Some((sent_at, idx));
                }
            }
        }
        best.map(|(_, idx)| idx)
    }

    fn record_send(&mut self, link: LinkId, chunk: ChunkRef, now: Instant) {
        let resent = !self.ever_sent.insert(chunk.index);
        let st = self.links.get_mut(&link).expect("link exists");
        st.inflight.insert(
            chunk.index,
            Flight {
                at: now,
                seq: st.next_seq,
            },
        );
        st.next_seq += 1;
        st.inflight_bytes += u64::from(chunk.len);
        st.stats.bytes_sent += u64::from(chunk.len);
        if resent {
            st.stats.bytes_resent += u64::from(chunk.len);
        }
        self.copies.entry(chunk.index).or_default().push(link);
    }

    /// Removes the copy of `idx` on `link` from the bookkeeping; puts the chunk
    /// back in the queue if it was the last copy and is not acked. Returns
    /// whether it was requeued.
    fn drop_copy(&mut self, idx: u64, link: LinkId) -> bool {
        let Some(list) = self.copies.get_mut(&idx) else {
            return false;
        };
        list.retain(|l| *l != link);
        if list.is_empty() {
            self.copies.remove(&idx);
            if !self.acked.contains(idx) {
                self.pending.insert(idx);
                return true;
            }
        }
        false
    }

    /// The writer could not put a chunk on its link (the link is going down):
    /// the chunk goes back to the queue. Call before [`Sender::link_down`].
    pub fn unsent(&mut self, link: LinkId, idx: u64) {
        let len = self.geo.chunk(idx).map_or(0, |c| u64::from(c.len));
        if let Some(st) = self.links.get_mut(&link) {
            st.release(idx, len);
        }
        self.drop_copy(idx, link);
    }

    /// The receiver acknowledged chunks (written at their offsets) over `link`.
    pub fn handle_ack(
        &mut self,
        link: LinkId,
        ranges: &[Range],
        now: Instant,
    ) -> Result<(), EngineError> {
        let set = RangeSet::from_ranges(ranges, self.geo.chunks())?;
        // The latest-sent chunk this ack covers on this link.
        let mut newest_seq: Option<u64> = None;
        for idx in set.iter() {
            let first = self.acked.insert(idx);
            let len = self.geo.chunk(idx).map_or(0, |c| u64::from(c.len));
            if let Some(st) = self.links.get_mut(&link) {
                if first {
                    st.stats.bytes_acked += len;
                }
                // The copy this link carried: a round trip and a delivery.
                let ambiguous = st.timed_out.remove(&idx);
                let carried = st.inflight.get(&idx).copied();
                if carried.is_some() || ambiguous {
                    st.acked_at = Some(now);
                }
                if let Some(f) = carried.filter(|_| !ambiguous) {
                    st.est.on_ack(f.at, len, now);
                    newest_seq = Some(newest_seq.map_or(f.seq, |n| n.max(f.seq)));
                }
            }
            if first {
                self.pending.remove(idx);
            }
            // First copy wins: every copy stops counting against its link's window.
            if let Some(carriers) = self.copies.remove(&idx) {
                for l in carriers {
                    if let Some(st) = self.links.get_mut(&l) {
                        st.release(idx, len);
                    }
                }
            }
        }
        // Sent on this link before the newest chunk acked here, and not
        // acked: lost on the way (links deliver in order). Give them back now
        // rather than after chunk_timeout.
        if let Some(newest) = newest_seq
            && let Some(st) = self.links.get(&link)
        {
            let lost: Vec<u64> = st
                .inflight
                .iter()
                .filter(|(_, f)| f.seq < newest)
                .map(|(&idx, _)| idx)
                .collect();
            for idx in lost {
                self.unsent(link, idx);
            }
        }
        self.maybe_complete();
        Ok(())
    }

    /// The receiver made these chunks durable (its fdatasync and DB commit are done).
    pub fn handle_checkpoint(&mut self, durable: &[Range]) -> Result<(), EngineError> {
        let set = RangeSet::from_ranges(durable, self.geo.chunks())?;
        if set != self.durable {
            self.durable = set.clone();
            // A durable chunk is acked even if its Ack was lost with a link.
            for idx in set.iter() {
                if self.acked.insert(idx) {
                    self.pending.remove(idx);
                }
            }
            self.events.push_back(Event::SaveDurable(set));
            self.maybe_complete();
        }
        Ok(())
    }

    /// Says Complete again, if one is owed: verifying, with every chunk
    /// acked and the hash known (the same conditions as the first).
    fn resend_complete(&mut self) {
        if self.phase == Phase::Verifying
            && self.file_hash.is_some()
            && self.acked.count() == self.geo.chunks()
        {
            self.complete_due = true;
        }
    }

    fn maybe_complete(&mut self) {
        if self.phase == Phase::Sending
            && self.file_hash.is_some()
            && self.acked.count() == self.geo.chunks()
        {
            self.phase = Phase::Verifying;
            self.complete_due = true;
        }
    }

    /// The Complete frame, once, when every chunk is acked and the hash is known.
    pub fn poll_complete(&mut self) -> Option<Complete> {
        // Only while verifying: a transfer that failed, finished or went back
        // to sending owes no Complete, whatever was due before.
        if !self.complete_due || self.phase != Phase::Verifying {
            self.complete_due = false;
            return None;
        }
        self.complete_due = false;
        Some(Complete {
            transfer_id: self.meta.transfer_id,
            file_hash: self.file_hash?,
            round: self.verify_rounds,
        })
    }

    /// The receiver's verdict on the whole-file hash. Bad chunks are sent
    /// again (only those), up to `max_verify_rounds` times.
    pub fn handle_verdict(&mut self, verdict: &Verdict) -> Result<(), EngineError> {
        self.check_id(&verdict.transfer_id)?;
        // Complete is said again when it may have been lost, so a verdict
        // can come twice, and a copy of an earlier round's can arrive after
        // the sender moved on: neither is news. (Taken for the current
        // round, a stale failing verdict would re-send chunks for nothing
        // and could spend the verify rounds until the transfer fails.)
        if verdict.round < self.verify_rounds
            || matches!(self.phase, Phase::Done | Phase::Failed(_) | Phase::Stopped)
        {
            return Ok(());
        }
        if self.phase != Phase::Verifying || verdict.round != self.verify_rounds {
            return Err(EngineError::Unexpected("Verdict before Complete"));
        }
        if verdict.ok {
            self.phase = Phase::Done;
            self.events
                .push_back(Event::Signal(Signal::Complete { ok: true }));
            return Ok(());
        }
        let bad = RangeSet::from_ranges(&verdict.bad_chunks, self.geo.chunks())?;
        self.verify_rounds += 1;
        if bad.is_empty() || self.verify_rounds > self.cfg.max_verify_rounds {
            self.phase = Phase::Failed(format!(
                "the receiver's copy does not match after {} round(s): {}",
                self.verify_rounds, verdict.message
            ));
            self.events
                .push_back(Event::Signal(Signal::Complete { ok: false }));
            return Ok(());
        }
        for idx in bad.iter() {
            self.acked.remove(idx);
            self.durable.remove(idx);
            self.pending.insert(idx);
        }
        self.phase = Phase::Sending;
        // A Complete not yet polled would go out with chunks unacked.
        self.complete_due = false;
        Ok(())
    }

    /// USER_STOP: stop handing out chunks; the glue checkpoints and exits.
    pub fn user_stop(&mut self) {
        if matches!(self.phase, Phase::Done | Phase::Failed(_)) {
            return;
        }
        self.phase = Phase::Stopped;
        self.events.push_back(Event::Signal(Signal::UserStop));
    }

    /// Timers: chunks stuck in flight past `chunk_timeout` are given back to
    /// the queue (the stalled link's window frees up too); failed links whose
    /// retry time has come are reported.
    pub fn handle_timeout(&mut self, now: Instant) {
        // No Verdict for chunk_timeout after the Complete: the Complete (or
        // the Verdict) may have been lost on a link that still looks up;
        // say Complete again (the receiver answers it with the same verdict).
        if self.phase == Phase::Verifying {
            let since = *self.verdict_wait_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.cfg.chunk_timeout {
                self.resend_complete();
                self.verdict_wait_since = Some(now);
            }
        } else {
            self.verdict_wait_since = None;
        }
        // Silent links: chunks in flight, nothing heard since the later of
        // the last word from it and its oldest chunk in flight.
        let silence = self.cfg.link_silence_timeout;
        let silent: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, st)| st.up)
            .filter_map(|(&id, st)| {
                let oldest = st.inflight.values().map(|f| f.at).min()?;
                let since = st.heard_at.map_or(oldest, |h| h.max(oldest));
                (now.saturating_duration_since(since) >= silence).then_some(id)
            })
            .collect();
        for id in silent {
            let why = format!("nothing heard for {silence:?} with chunks in flight");
            self.link_down(id, &why, now);
        }
        // Stuck chunks: no ack on their link for chunk_timeout since they
        // were sent. A slow link that keeps acking has its queue moving; its
        // chunks are not stuck however long they wait their turn.
        let mut expired = Vec::new();
        for (&id, st) in &self.links {
            for (&idx, f) in &st.inflight {
                if now >= st.stuck_at(f.at, &self.cfg) {
                    expired.push((id, idx));
                }
            }
        }
        for (link, idx) in expired {
            if let Some(st) = self.links.get_mut(&link)
                && st.up
            {
                st.timed_out.insert(idx);
            }
            self.unsent(link, idx);
        }
        for (&id, st) in &mut self.links {
            if let Some(at) = st.retry_at
                && at <= now
                && !st.up
            {
                st.retry_at = None;
                self.events.push_back(Event::RetryLink(id));
            }
        }
    }

    /// The next time [`Sender::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for st in self.links.values() {
            if let Some(oldest) = st.inflight.values().map(|f| f.at).min() {
                consider(st.stuck_at(oldest, &self.cfg));
                if st.up {
                    let since = st.heard_at.map_or(oldest, |h| h.max(oldest));
                    consider(since + self.cfg.link_silence_timeout);
                }
                if self.pending.is_empty() && self.phase == Phase::Sending {
                    // When a tail chunk becomes old enough to duplicate.
                    consider(oldest + self.cfg.tail_duplicate_after);
                }
            }
            if let Some(at) = st.retry_at {
                consider(at);
            }
        }
        next
    }

    /// The next thing the glue must act on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whole-transfer progress.
    pub fn progress(&self) -> Progress {
        Progress {
            total_bytes: self.geo.size,
            acked_bytes: self.geo.bytes_of(&self.acked),
            durable_bytes: self.geo.bytes_of(&self.durable),
            resumed_bytes: self.geo.bytes_of(&self.resumed),
        }
    }

    /// The durable set as last reported by the receiver.
    pub fn durable(&self) -> &RangeSet {
        &self.durable
    }

    /// Counters of one link.
    pub fn link_stats(&self, link: LinkId) -> LinkStats {
        self.links
            .get(&link)
            .map(|l| LinkStats {
                window_bytes: l.window(&self.cfg, u64::from(self.geo.chunk_size)),
                rate_bytes_per_s: l.est.rate().unwrap_or(0),
                min_rtt: l.est.min_rtt().unwrap_or_default(),
                ..l.stats
            })
            .unwrap_or_default()
    }

    /// Whether `link` has room for another chunk now (the glue uses it to
    /// decide when to wake a writer).
    pub fn has_work_for(&self, link: LinkId, now: Instant) -> bool {
        if self.phase != Phase::Sending {
            return false;
        }
        let Some(st) = self.links.get(&link) else {
            return false;
        };
        let chunk_size = u64::from(self.geo.chunk_size);
        st.up
            && st.has_room(chunk_size, &self.cfg, chunk_size)
            && (!self.pending.is_empty() || self.tail_candidate(link, now).is_some())
    }

    fn check_id(&self, id: &TransferId) -> Result<(), EngineError> {
        if *id != self.meta.transfer_id {
            return Err(EngineError::UnknownTransfer);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx() -> Sender {
        Sender::new(
            FileMeta {
                transfer_id: [1; 16],
                name: "f".into(),
                size: 1000,
                mtime_ns: 0,
                mode: 0o644,
                chunk_size: 100,
            },
            Config {
                link_window_bytes: 300,
                ..Config::default()
            },
        )
    }

    fn accept_all_missing(s: &mut Sender) {
        s.handle_accept(&Accept {
            transfer_id: [1; 16],
            have: vec![],
        })
        .unwrap();
    }

    #[test]
    fn a_failed_verdict_before_complete_is_polled_leaves_no_complete_to_send() {
        let mut s = tx();
        s.handle_accept(&Accept {
            transfer_id: [1; 16],
            have: vec![Range { start: 0, end: 10 }],
        })
        .unwrap();
        s.set_file_hash([7; 32]);
        assert_eq!(*s.phase(), Phase::Verifying);
        // The peer's Verdict arrives before the glue polled the Complete.
        s.handle_verdict(&Verdict {
            transfer_id: [1; 16],
            ok: false,
            bad_chunks: vec![Range { start: 3, end: 4 }],
            message: String::new(),
            round: 0,
        })
        .unwrap();
        assert_eq!(*s.phase(), Phase::Sending);
        let c = s.poll_complete();
        assert!(
            c.is_none(),
            "expected no Complete while chunk 3 is unacked, got {c:?}"
        );
        s.handle_ack(0, &[Range { start: 3, end: 4 }], Instant::now())
            .unwrap();
        assert!(
            s.poll_complete().is_some(),
            "expected a Complete once chunk 3 is acked again"
        );
    }

    #[test]
    fn accept_ranges_past_the_file_are_refused() {
        let mut s = tx();
        let e = s
            .handle_accept(&Accept {
                transfer_id: [1; 16],
                have: vec![Range { start: 5, end: 11 }],
            })
            .unwrap_err();
        assert!(matches!(e, EngineError::Proto(_)), "{e}");
    }

    #[test]
    fn acks_for_chunks_past_the_end_are_refused() {
        let mut s = tx();
        accept_all_missing(&mut s);
        assert!(
            s.handle_ack(0, &[Range { start: 9, end: 12 }], Instant::now())
                .is_err()
        );
    }

    #[test]
    fn a_link_never_exceeds_its_window() {
        let mut s = tx();
        accept_all_missing(&mut s);
        s.link_up(0);
        let now = Instant::now();
        let got: Vec<_> = std::iter::from_fn(|| s.poll_chunk(0, now)).collect();
        assert_eq!(
            got.len(),
            3,
            "window of 300 bytes holds three 100-byte chunks"
        );
        s.handle_ack(0, &[Range { start: 0, end: 1 }], Instant::now())
            .unwrap();
        assert_eq!(s.poll_chunk(0, now).map(|c| c.index), Some(3));
    }

    #[test]
    fn an_idle_link_duplicates_the_oldest_chunk_in_flight_elsewhere() {
        let mut s = tx();
        accept_all_missing(&mut s);
        s.link_up(0);
        s.link_up(1);
        let t0 = Instant::now();
        // Link 0 takes everything it can; link 1 drains the rest.
        while s.poll_chunk(0, t0).is_some() {}
        while s.poll_chunk(1, t0).is_some() {
            let c = s.links[&1].inflight.keys().copied().collect::<Vec<_>>();
            s.handle_ack(
                1,
                &[Range {
                    start: c[0],
                    end: c[0] + 1,
                }],
                Instant::now(),
            )
            .unwrap();
        }
        // Too early to duplicate.
        assert_eq!(s.poll_chunk(1, t0), None);
        let later = t0 + Config::default().tail_duplicate_after;
        let dup = s.poll_chunk(1, later).expect("a tail duplicate");
        assert_eq!(dup.index, 0, "the oldest chunk on link 0");
        // First copy wins: the ack over link 1 frees link 0's window too.
        s.handle_ack(1, &[Range { start: 0, end: 1 }], Instant::now())
            .unwrap();
        assert!(!s.links[&0].inflight.contains_key(&0));
    }

    #[test]
    fn a_link_silent_with_chunks_in_flight_is_declared_down_and_its_chunks_move() {
        let mut s = tx();
        accept_all_missing(&mut s);
        s.link_up(0);
        s.link_up(1);
        let t0 = Instant::now();
        let silence = Config::default().link_silence_timeout;
        assert_eq!(s.poll_chunk(0, t0).map(|c| c.index), Some(0));
        // Link 1 keeps talking; link 0 goes quiet.
        let c1 = s.poll_chunk(1, t0).unwrap().index;
        s.handle_ack(
            1,
            &[Range {
                start: c1,
                end: c1 + 1,
            }],
            Instant::now(),
        )
        .unwrap();
        s.link_heard(1, t0 + silence / 2);
        s.handle_timeout(t0 + silence / 2);
        assert!(s.link_is_up(0), "not silent long enough yet");
        // A word from link 0 restarts its clock.
        s.link_heard(0, t0 + silence / 2);
        s.handle_timeout(t0 + silence);
        assert!(s.link_is_up(0));
        s.handle_timeout(t0 + silence / 2 + silence);
        assert!(!s.link_is_up(0), "silent for the whole timeout");
        assert!(
            s.link_is_up(1),
            "link 1 has nothing in flight: idle is not silent"
        );
        match s.poll_event() {
            Some(Event::Signal(Signal::Error {
                link: 0,
                requeued,
                reason,
            })) => {
                assert_eq!(requeued, vec![0]);
                assert!(reason.contains("nothing heard"), "{reason}");
            }
            other => panic!("expected ERROR for link 0, got {other:?}"),
        }
        assert_eq!(s.poll_chunk(1, t0 + 2 * silence).map(|c| c.index), Some(0));
    }

    #[test]
    fn a_dead_link_gives_its_chunks_back_and_signals_error() {
        let mut s = tx();
        accept_all_missing(&mut s);
        s.link_up(0);
        let now = Instant::now();
        while s.poll_chunk(0, now).is_some() {}
        s.link_down(0, "cable pulled", now);
        match s.poll_event() {
            Some(Event::Signal(Signal::Error {
                link: 0, requeued, ..
            })) => {
                assert_eq!(requeued, vec![0, 1, 2]);
            }
            other => panic!("expected ERROR for link 0, got {other:?}"),
        }
        s.handle_timeout(now + Config::default().retry_interval);
        assert_eq!(s.poll_event(), Some(Event::RetryLink(0)));
    }

    #[test]
    fn a_rejoin_requeues_chunks_the_receiver_lost() {
        let mut s = tx();
        accept_all_missing(&mut s);
        s.link_up(0);
        let now = Instant::now();
        while s.poll_chunk(0, now).is_some() {}
        s.handle_ack(0, &[Range { start: 0, end: 3 }], Instant::now())
            .unwrap();
        // The receiver restarted and only chunk 0 had been made durable.
        s.handle_rejoin(&Accept {
            transfer_id: [1; 16],
            have: vec![Range { start: 0, end: 1 }],
        })
        .unwrap();
        assert_eq!(s.progress().acked_bytes, 100);
        let next: Vec<u64> = std::iter::from_fn(|| s.poll_chunk(0, now).map(|c| c.index)).collect();
        assert_eq!(next, vec![1, 2, 3]);
    }

    #[test]
    fn a_receiver_that_restarts_while_verifying_is_sent_complete_again() {
        let mut s = tx();
        accept_all_missing(&mut s);
        s.handle_ack(0, &[Range { start: 0, end: 10 }], Instant::now())
            .unwrap();
        s.set_file_hash([3; 32]);
        assert!(s.poll_complete().is_some());
        // Killed after committing everything, before its Verdict: it rejoins
        // holding every chunk.
        s.handle_rejoin(&Accept {
            transfer_id: [1; 16],
            have: vec![Range { start: 0, end: 10 }],
        })
        .unwrap();
        let c = s.poll_complete().expect("Complete again after the rejoin");
        assert_eq!(c.file_hash, [3; 32]);
    }

    #[test]
    fn a_link_lost_while_waiting_for_the_verdict_makes_complete_go_out_again() {
        let mut s = tx();
        accept_all_missing(&mut s);
        s.link_up(0);
        s.link_up(1);
        s.handle_ack(0, &[Range { start: 0, end: 10 }], Instant::now())
            .unwrap();
        s.set_file_hash([3; 32]);
        assert!(s.poll_complete().is_some());
        assert!(s.poll_complete().is_none());
        // The link that carried the Complete (and would carry the Verdict) dies.
        s.link_down(0, "adapter powered off", Instant::now());
        let c = s.poll_complete().expect("Complete again, for link 1");
        assert_eq!(c.file_hash, [3; 32]);
    }

    #[test]
    fn no_verdict_for_a_chunk_timeout_makes_complete_go_out_again() {
        let mut s = tx();
        accept_all_missing(&mut s);
        s.link_up(0);
        s.handle_ack(0, &[Range { start: 0, end: 10 }], Instant::now())
            .unwrap();
        s.set_file_hash([3; 32]);
        assert!(s.poll_complete().is_some());
        let t0 = Instant::now();
        s.handle_timeout(t0);
        assert!(s.poll_complete().is_none(), "not yet");
        s.handle_timeout(t0 + Config::default().chunk_timeout);
        assert!(s.poll_complete().is_some(), "the Complete was lost: again");
    }

    #[test]
    fn a_late_copy_of_an_earlier_rounds_verdict_changes_nothing() {
        // Found by the engine property test: Complete is said twice, the
        // receiver answers both, the second failing verdict arrives after the
        // sender went back to sending for the first. Before rounds, it ended
        // the transfer ("Verdict before Complete") or spent a verify round.
        let mut s = tx();
        accept_all_missing(&mut s);
        s.handle_ack(0, &[Range { start: 0, end: 10 }], Instant::now())
            .unwrap();
        s.set_file_hash([3; 32]);
        assert_eq!(s.poll_complete().map(|c| c.round), Some(0));
        let bad0 = Verdict {
            transfer_id: [1; 16],
            ok: false,
            bad_chunks: vec![Range { start: 2, end: 3 }],
            message: String::new(),
            round: 0,
        };
        s.handle_verdict(&bad0).unwrap();
        assert_eq!(*s.phase(), Phase::Sending);
        // The copy: taken quietly while sending, and again while verifying.
        s.handle_verdict(&bad0).unwrap();
        assert_eq!(*s.phase(), Phase::Sending);
        s.link_up(0);
        let c = s.poll_chunk(0, Instant::now()).expect("chunk 2 again");
        assert_eq!(c.index, 2);
        s.handle_ack(0, &[Range { start: 2, end: 3 }], Instant::now())
            .unwrap();
        assert_eq!(s.poll_complete().map(|c| c.round), Some(1));
        s.handle_verdict(&bad0).unwrap();
        assert_eq!(
            *s.phase(),
            Phase::Verifying,
            "round 0's verdict taken for round 1"
        );
        s.handle_verdict(&Verdict {
            ok: true,
            bad_chunks: vec![],
            round: 1,
            ..bad0.clone()
        })
        .unwrap();
        assert_eq!(*s.phase(), Phase::Done);
        // And after the end, another copy is no error either.
        s.handle_verdict(&bad0).unwrap();
        assert_eq!(*s.phase(), Phase::Done);
    }

    #[test]
    fn a_complete_due_when_the_transfer_failed_is_never_sent() {
        // Found by the `ranges` fuzz target: Complete due, a failing Verdict
        // ends the transfer, a rejoin takes the chunks back: no Complete.
        let mut s = tx();
        accept_all_missing(&mut s);
        s.handle_ack(0, &[Range { start: 0, end: 10 }], Instant::now())
            .unwrap();
        s.set_file_hash([3; 32]);
        s.handle_verdict(&Verdict {
            transfer_id: [1; 16],
            ok: false,
            bad_chunks: vec![],
            message: String::new(),
            round: 0,
        })
        .unwrap();
        assert!(matches!(s.phase(), Phase::Failed(_)));
        s.handle_rejoin(&Accept {
            transfer_id: [1; 16],
            have: vec![],
        })
        .unwrap();
        assert!(s.poll_complete().is_none());
    }

    #[test]
    fn complete_waits_for_every_ack_and_the_hash() {
        let mut s = tx();
        accept_all_missing(&mut s);
        s.handle_ack(0, &[Range { start: 0, end: 10 }], Instant::now())
            .unwrap();
        assert!(s.poll_complete().is_none(), "no hash yet");
        s.set_file_hash([3; 32]);
        let c = s.poll_complete().expect("complete");
        assert_eq!(c.file_hash, [3; 32]);
        assert!(s.poll_complete().is_none(), "only once");
    }
}
