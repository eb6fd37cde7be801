//! The receiving side of one transfer: which Data to write, when to make it
//! durable, what to acknowledge, and the verdict at the end.
//!
//! The crash-safety order is encoded here: a checkpoint is a [`SyncJob`]
//! (the glue fdatasyncs the file, then commits the job's chunks to the DB)
//! and only when the glue reports it done ([`Receiver::on_durable`]) does a
//! `Checkpoint` frame go out. The DB never claims bytes that are not on disk.

use std::collections::HashMap;
use std::time::Instant;

use gateway_proto::{
    Accept, Ack, Checkpoint, Complete, Hash, Range, RangeSet, TransferId, Verdict,
};

use crate::geometry::{ChunkRef, Geometry};
use crate::{Config, EngineError};

/// What the receiver knows about the file it receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecvMeta {
    /// Transfer id.
    pub transfer_id: TransferId,
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
}

/// What to do with a verified Data frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataAction {
    /// Write the payload at `chunk.offset`, then call [`Receiver::on_written`].
    Write(ChunkRef),
    /// Already held (a duplicate copy lost the race): acknowledge, write nothing.
    AckOnly(ChunkRef),
}

/// A checkpoint to make durable: fdatasync the file, then commit these
/// chunks and hashes to the DB in one transaction, then call
/// [`Receiver::on_durable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncJob {
    /// Chunks written before the sync starts.
    pub chunks: RangeSet,
    /// Their BLAKE3 hashes, as verified on arrival.
    pub hashes: Vec<(u64, Hash)>,
}

/// What the glue does after `Complete`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finish {
    /// Make these durable first (may be empty).
    pub sync: SyncJob,
    /// The sender's whole-file BLAKE3.
    pub expected: Hash,
}

/// Where the receiving side stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvPhase {
    /// Data is arriving.
    Receiving,
    /// Complete arrived; the glue is hashing the file.
    Verifying,
    /// Verdict ok sent: rename into place and delete the records.
    Done,
}

/// The receiver state machine of one transfer. No I/O.
#[derive(Debug)]
pub struct Receiver {
    meta: RecvMeta,
    geo: Geometry,
    cfg: Config,
    phase: RecvPhase,
    durable: RangeSet,
    /// Written (pwrite returned) but not yet part of a sync job.
    written: RangeSet,
    /// In a sync job not yet reported done.
    syncing: RangeSet,
    hashes: HashMap<u64, Hash>,
    bytes_since_checkpoint: u64,
    last_checkpoint: Instant,
    expected: Option<Hash>,
    /// The round of the last Complete, echoed in the verdict.
    round: u32,
}

impl Receiver {
    /// A receiver for `meta` that already holds `durable` (from its DB).
    pub fn new(meta: RecvMeta, durable: RangeSet, cfg: Config, now: Instant) -> Self {
        let geo = Geometry::new(meta.size, meta.chunk_size);
        Self {
            meta,
            geo,
            cfg,
            phase: RecvPhase::Receiving,
            durable,
            written: RangeSet::new(),
            syncing: RangeSet::new(),
            hashes: HashMap::new(),
            bytes_since_checkpoint: 0,
            last_checkpoint: now,
            expected: None,
            round: 0,
        }
    }

    /// The chunk layout.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Where it stands.
    pub fn phase(&self) -> RecvPhase {
        self.phase
    }

    /// The answer to an Offer or Reload: what is already durable here.
    pub fn accept(&self) -> Accept {
        Accept {
            transfer_id: self.meta.transfer_id,
            have: self.durable.ranges().to_vec(),
        }
    }

    /// Checks a Data frame against this file: one whole chunk, aligned, in
    /// bounds, carrying a chunk hash that `computed` (the BLAKE3 of the
    /// payload, by the glue) matches.
    pub fn handle_data(
        &mut self,
        offset: u64,
        len: usize,
        claimed: Option<&Hash>,
        computed: &Hash,
    ) -> Result<DataAction, EngineError> {
        let chunk = self.geo.locate(offset, len)?;
        let claimed = claimed.ok_or(EngineError::MissingChunkHash { index: chunk.index })?;
        if claimed != computed {
            return Err(EngineError::ChunkHashMismatch { index: chunk.index });
        }
        if self.phase == RecvPhase::Done
            || self.durable.contains(chunk.index)
            || self.syncing.contains(chunk.index)
            || self.written.contains(chunk.index)
        {
            return Ok(DataAction::AckOnly(chunk));
        }
        Ok(DataAction::Write(chunk))
    }

    /// The payload of `chunk` is written at its offset; returns the Ack to send.
    pub fn on_written(&mut self, chunk: ChunkRef, hash: Hash) -> Ack {
        if self.written.insert(chunk.index) {
            self.hashes.insert(chunk.index, hash);
            self.bytes_since_checkpoint += u64::from(chunk.len);
        }
        Self::ack_for(self.meta.transfer_id, chunk.index)
    }

    /// The Ack for a chunk (also used for duplicates).
    pub fn ack(&self, chunk: ChunkRef) -> Ack {
        Self::ack_for(self.meta.transfer_id, chunk.index)
    }

    fn ack_for(transfer_id: TransferId, index: u64) -> Ack {
        Ack {
            transfer_id,
            ranges: vec![Range {
                start: index,
                end: index + 1,
            }],
        }
    }

    /// A checkpoint is due (`checkpoint_bytes` written or `checkpoint_interval`
    /// passed with unsynced data) and no other is running.
    pub fn poll_checkpoint(&mut self, now: Instant) -> Option<SyncJob> {
        if !self.checkpoint_due(now) {
            return None;
        }
        Some(self.take_job(now))
    }

    fn take_job(&mut self, now: Instant) -> SyncJob {
        let chunks = std::mem::take(&mut self.written);
        let hashes = chunks
            .iter()
            .filter_map(|i| self.hashes.remove(&i).map(|h| (i, h)))
            .collect();
        self.syncing.union(&chunks);
        self.bytes_since_checkpoint = 0;
        self.last_checkpoint = now;
        SyncJob { chunks, hashes }
    }

    /// Everything written so far as one job, whether due or not (a link
    /// closed, the node stops). `None` if nothing is unsynced or a job runs.
    pub fn take_checkpoint(&mut self, now: Instant) -> Option<SyncJob> {
        if self.written.is_empty() || !self.syncing.is_empty() {
            return None;
        }
        Some(self.take_job(now))
    }

    /// Bytes written here and not yet durable (written or being synced):
    /// what a crash now would make the sender send again. The glue holds
    /// writes while this is at `checkpoint_bytes` (see
    /// [`Receiver::over_budget`]), so a crash never costs more.
    pub fn unsynced_bytes(&self) -> u64 {
        (self.written.count() + self.syncing.count()) * u64::from(self.geo.chunk_size)
    }

    /// Unsynced data reached `checkpoint_bytes`: write nothing more until
    /// the running checkpoint is durable.
    pub fn over_budget(&self) -> bool {
        self.unsynced_bytes() >= self.cfg.checkpoint_bytes
    }

    /// Whether [`Receiver::poll_checkpoint`] would return a job now: half of
    /// `checkpoint_bytes` written (so the sync runs while the other half
    /// arrives) or `checkpoint_interval` passed with unsynced data.
    pub fn checkpoint_due(&self, now: Instant) -> bool {
        !self.written.is_empty()
            && self.syncing.is_empty()
            && (self.bytes_since_checkpoint >= self.cfg.checkpoint_bytes / 2
                || now.saturating_duration_since(self.last_checkpoint)
                    >= self.cfg.checkpoint_interval)
    }

    /// Every chunk written here (durable or not): what a joining link need
    /// not send again while this process lives.
    pub fn held(&self) -> RangeSet {
        let mut all = self.durable.clone();
        all.union(&self.written);
        all.union(&self.syncing);
        all
    }

    /// The job's fdatasync and DB commit are done: the chunks are durable.
    /// Returns the Checkpoint frame to send.
    pub fn on_durable(&mut self, job: &SyncJob) -> Checkpoint {
        for idx in job.chunks.iter() {
            self.syncing.remove(idx);
        }
        self.durable.union(&job.chunks);
        Checkpoint {
            transfer_id: self.meta.transfer_id,
            durable: self.durable.ranges().to_vec(),
        }
    }

    /// A sync job failed (e.g. disk full): its chunks are written again later.
    pub fn on_sync_failed(&mut self, job: &SyncJob) {
        for idx in job.chunks.iter() {
            self.syncing.remove(idx);
        }
    }

    /// When [`Receiver::poll_checkpoint`] next may have work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.written.is_empty()).then_some(self.last_checkpoint + self.cfg.checkpoint_interval)
    }

    /// The sender says every chunk is acked; make the rest durable and hash.
    pub fn handle_complete(&mut self, c: &Complete, now: Instant) -> Result<Finish, EngineError> {
        if c.transfer_id != self.meta.transfer_id {
            return Err(EngineError::UnknownTransfer);
        }
        self.phase = RecvPhase::Verifying;
        self.expected = Some(c.file_hash);
        self.round = c.round;
        Ok(Finish {
            sync: self.take_job(now),
            expected: c.file_hash,
        })
    }

    /// Chunks not held durably (after the final sync): a Complete that came
    /// too early is answered by re-requesting these.
    pub fn missing(&self) -> RangeSet {
        RangeSet::full(self.geo.chunks()).difference(&self.durable)
    }

    /// The verdict, from the whole-file hash of the copy on disk and the
    /// chunks whose on-disk hash differs from the one verified on arrival.
    pub fn verdict(&mut self, on_disk: &Hash, bad: &RangeSet) -> Verdict {
        let expected = self.expected.unwrap_or([0; 32]);
        let mut bad = bad.clone();
        bad.union(&self.missing());
        let ok = bad.is_empty() && *on_disk == expected;
        let message = if ok {
            String::new()
        } else if bad.is_empty() {
            "whole-file hash differs although every chunk matched; did the source change?".into()
        } else {
            format!("{} chunk(s) must be sent again", bad.count())
        };
        for idx in bad.iter() {
            self.durable.remove(idx);
        }
        self.phase = if ok {
            RecvPhase::Done
        } else {
            RecvPhase::Receiving
        };
        Verdict {
            transfer_id: self.meta.transfer_id,
            ok,
            bad_chunks: bad.ranges().to_vec(),
            message,
            round: self.round,
        }
    }

    /// The durable set.
    pub fn durable(&self) -> &RangeSet {
        &self.durable
    }

    /// Bytes durable.
    pub fn durable_bytes(&self) -> u64 {
        self.geo.bytes_of(&self.durable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineError;

    fn rx(size: u64) -> Receiver {
        Receiver::new(
            RecvMeta {
                transfer_id: [1; 16],
                size,
                chunk_size: 100,
            },
            RangeSet::new(),
            Config::default(),
            Instant::now(),
        )
    }

    const H: Hash = [5; 32];

    #[test]
    fn a_checkpoint_starts_at_half_the_budget_and_writes_stop_at_all_of_it() {
        // 10 chunks of 100 bytes, a crash budget of 400 bytes.
        let t0 = Instant::now();
        let mut r = Receiver::new(
            RecvMeta {
                transfer_id: [1; 16],
                size: 1000,
                chunk_size: 100,
            },
            RangeSet::new(),
            Config {
                checkpoint_bytes: 400,
                ..Config::default()
            },
            t0,
        );
        let write = |r: &mut Receiver, i: u64| {
            let DataAction::Write(c) = r.handle_data(i * 100, 100, Some(&H), &H).unwrap() else {
                panic!("chunk {i} should be written");
            };
            r.on_written(c, H);
        };
        write(&mut r, 0);
        assert!(!r.checkpoint_due(t0));
        write(&mut r, 1);
        assert!(r.checkpoint_due(t0), "due at half the budget");
        let job = r.poll_checkpoint(t0).expect("a job");
        // The sync is slow: two more chunks arrive meanwhile, then the budget is spent.
        write(&mut r, 2);
        assert!(!r.over_budget());
        write(&mut r, 3);
        assert_eq!(r.unsynced_bytes(), 400);
        assert!(
            r.over_budget(),
            "nothing more may be written until the sync is done"
        );
        r.on_durable(&job);
        assert_eq!(r.unsynced_bytes(), 200);
        assert!(!r.over_budget());
    }

    #[test]
    fn data_past_the_end_is_refused() {
        let mut r = rx(250);
        let e = r.handle_data(200, 100, Some(&H), &H).unwrap_err();
        assert!(matches!(e, EngineError::OutOfBounds { .. }), "{e}");
        let e = r.handle_data(u64::MAX - 10, 50, Some(&H), &H).unwrap_err();
        assert!(matches!(e, EngineError::OutOfBounds { .. }), "{e}");
    }

    #[test]
    fn misaligned_or_wrong_length_data_is_refused() {
        let mut r = rx(250);
        assert!(matches!(
            r.handle_data(50, 100, Some(&H), &H),
            Err(EngineError::Misaligned { .. })
        ));
        assert!(matches!(
            r.handle_data(0, 99, Some(&H), &H),
            Err(EngineError::WrongChunkLength { .. })
        ));
        // The short last chunk must be exactly its length.
        assert!(r.handle_data(200, 50, Some(&H), &H).is_ok());
    }

    #[test]
    fn data_without_or_against_its_hash_is_refused() {
        let mut r = rx(250);
        assert!(matches!(
            r.handle_data(0, 100, None, &H),
            Err(EngineError::MissingChunkHash { index: 0 })
        ));
        assert!(matches!(
            r.handle_data(0, 100, Some(&[6; 32]), &H),
            Err(EngineError::ChunkHashMismatch { index: 0 })
        ));
    }

    #[test]
    fn a_duplicate_chunk_is_acked_but_not_written_twice() {
        let mut r = rx(250);
        let DataAction::Write(c) = r.handle_data(0, 100, Some(&H), &H).unwrap() else {
            panic!("first copy must be written");
        };
        r.on_written(c, H);
        assert!(matches!(
            r.handle_data(0, 100, Some(&H), &H).unwrap(),
            DataAction::AckOnly(_)
        ));
    }

    #[test]
    fn chunks_become_durable_only_when_the_glue_says_the_sync_is_done() {
        let mut r = rx(250);
        let t0 = Instant::now();
        for off in [0, 100] {
            let DataAction::Write(c) = r.handle_data(off, 100, Some(&H), &H).unwrap() else {
                panic!()
            };
            r.on_written(c, H);
        }
        assert!(r.poll_checkpoint(t0).is_none(), "not due yet");
        let job = r
            .poll_checkpoint(t0 + Config::default().checkpoint_interval)
            .expect("due by time");
        assert_eq!(job.chunks.count(), 2);
        assert_eq!(job.hashes.len(), 2);
        assert!(r.durable().is_empty(), "durable before the sync finished");
        // While the job runs no second job starts.
        assert!(r.take_checkpoint(t0).is_none());
        let ck = r.on_durable(&job);
        assert_eq!(ck.durable, vec![Range { start: 0, end: 2 }]);
    }

    #[test]
    fn a_failed_sync_claims_nothing_and_the_verdict_asks_again() {
        let mut r = rx(100);
        let DataAction::Write(c) = r.handle_data(0, 100, Some(&H), &H).unwrap() else {
            panic!()
        };
        r.on_written(c, H);
        let job = r.take_checkpoint(Instant::now()).unwrap();
        r.on_sync_failed(&job);
        assert!(r.durable().is_empty());
        let fin = r
            .handle_complete(
                &Complete {
                    transfer_id: [1; 16],
                    file_hash: H,
                    round: 0,
                },
                Instant::now(),
            )
            .unwrap();
        assert!(fin.sync.chunks.is_empty());
        let v = r.verdict(&H, &RangeSet::new());
        assert!(!v.ok);
        assert_eq!(v.bad_chunks, vec![Range { start: 0, end: 1 }]);
    }
}
