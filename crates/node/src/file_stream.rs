//! The receiver's `file_stream`: one per transfer, fed by every link that
//! carries its Data. The engine state sits behind a mutex; the payload is
//! written with positional writes (`pwrite`) at the chunk's offset into
//! `NAME.<id>.gateway-part` (a directory tree: into its files, staged under
//! `.NAME.<id>.gateway-part/`, see `dirtree.rs`), so writers on different
//! links never wait for each other's I/O. Checkpoints keep the crash-safety
//! order: fdatasync the data, then commit the durable set to SQLite, then
//! send Checkpoint.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use gateway_engine::{DataAction, EngineError, Receiver, RecvMeta, SyncJob};
use gateway_proto::{Ack, Checkpoint, Complete, Data, Hash, Offer, RangeSet, TransferId, Verdict};
use gateway_store::{Direction, TransferRecord, TransferState};
use tokio::sync::mpsc;

use crate::dirtree::{Conflict, ReadAt, Staged};
use crate::state::{NodeState, now_ms};
use crate::tree;
use crate::{NodeConfig, NodeError};

/// Why a Data frame was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DataError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub(crate) struct FileStream {
    pub(crate) id: TransferId,
    pub(crate) name: String,
    /// The sender's node id: the transfer is bound to its key.
    pub(crate) peer: String,
    dir: PathBuf,
    part_path: PathBuf,
    mtime_ns: i64,
    mode: u32,
    sink: Sink,
    /// What to do when the final name is taken.
    policy: Conflict,
    /// The file_stream mutex: one positional write at a time. Concurrent
    /// pwrites to one file contend on the inode lock in the kernel (ext4
    /// spins on it), which cost more CPU than the copies themselves.
    write_gate: Mutex<()>,
    geo: gateway_engine::Geometry,
    engine: Mutex<Receiver>,
    /// One checkpoint (or the final verification) at a time.
    sync_gate: tokio::sync::Mutex<()>,
    state: NodeState,
    /// Outboxes of the links feeding this transfer; Checkpoints go to the newest.
    /// Weak, so a link whose task ended closes even while the transfer lives on.
    outboxes: Mutex<Vec<mpsc::WeakSender<Bytes>>>,
    pub(crate) bytes_written: AtomicU64,
}

/// Where a transfer's bytes wait until they are verified and land.
enum Sink {
    /// One file: the part file.
    Part(File),
    /// A directory tree, staged file by file.
    Tree(Box<Staged>),
}

impl Sink {
    fn write_all_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        match self {
            Sink::Part(f) => f.write_all_at(data, offset),
            Sink::Tree(t) => t.write_all_at(data, offset),
        }
    }

    fn sync_data(&self, part: &Path) -> Result<(), NodeError> {
        match self {
            Sink::Part(f) => f
                .sync_data()
                .map_err(|e| NodeError::io(format!("fdatasync {}", part.display()), e)),
            Sink::Tree(t) => t.sync_data(),
        }
    }

    fn reader(&self) -> &dyn ReadAt {
        match self {
            Sink::Part(f) => f,
            Sink::Tree(t) => t.reader(),
        }
    }
}

/// What a reopened transfer still holds: its durable set, unless its part
/// file (or staging directory) vanished — then nothing, and the DB forgets
/// the chunks too, so it never claims bytes that are not on disk.
fn held_unless_vanished(
    state: &NodeState,
    rec: &TransferRecord,
    existed: bool,
    place: &Path,
) -> Result<RangeSet, NodeError> {
    if existed {
        return Ok(rec.durable.clone());
    }
    tracing::warn!(place = %place.display(), "what was received is gone; starting this transfer over");
    state
        .store()
        .forget_chunks(&rec.id, Direction::Recv, &rec.durable)?;
    Ok(RangeSet::new())
}

/// Longest file name most Linux filesystems take, in bytes.
const NAME_MAX_BYTES: usize = 255;

/// `prefix` + NAME + `.<first 8 hex of id>.gateway-part`, with NAME cut (on
/// a character boundary) so the whole stays within [`NAME_MAX_BYTES`]: a
/// 255-byte name is valid, and its part file must be creatable too. The id
/// keeps cut names apart.
fn part_name(prefix: &str, name: &str, id: &TransferId) -> String {
    let suffix = format!(".{}.gateway-part", hex::encode(&id[..4]));
    let room = NAME_MAX_BYTES - prefix.len() - suffix.len();
    let mut cut = name.len().min(room);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{prefix}{}{suffix}", &name[..cut])
}

/// `.NAME.<first 8 hex of id>.gateway-part/`: where a tree is staged.
pub(crate) fn stage_path(dir: &Path, name: &str, id: &TransferId) -> PathBuf {
    dir.join(part_name(".", name, id))
}

/// `NAME.<first 8 hex of id>.gateway-part`, so two transfers of one name never share a file.
pub(crate) fn part_path(dir: &Path, name: &str, id: &TransferId) -> PathBuf {
    dir.join(part_name("", name, id))
}

/// Opens (creating if needed) a part file and gives it the file's size; it
/// stays sparse until chunks land.
fn open_part(part: &Path, size: u64) -> Result<File, NodeError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(part)
        .map_err(|e| NodeError::io(format!("cannot open {}", part.display()), e))?;
    file.set_len(size)
        .map_err(|e| NodeError::io(format!("cannot size {}", part.display()), e))?;
    Ok(file)
}

impl FileStream {
    /// A new transfer from an Offer: record it, create the part file.
    pub(crate) fn create(
        state: &NodeState,
        cfg: &NodeConfig,
        dir: &Path,
        offer: &Offer,
        peer: &str,
    ) -> Result<Arc<Self>, NodeError> {
        let (sink, part, tree_blob) = match &offer.entries {
            None => {
                let part = part_path(dir, &offer.name, &offer.transfer_id);
                (Sink::Part(open_part(&part, offer.size)?), part, None)
            }
            Some(entries) => {
                let stage = stage_path(dir, &offer.name, &offer.transfer_id);
                let staged = Staged::open(&stage, entries.clone())?;
                let blob = crate::wire::encode(gateway_proto::Body::Offer(offer.clone()));
                (Sink::Tree(Box::new(staged)), stage, Some(blob.to_vec()))
            }
        };
        // A tree sent again: what already sits where it will land is copied
        // in place of being sent (its chunks are held from the start).
        let prefilled = match &sink {
            Sink::Tree(t) => t.prefill(&dir.join(&offer.name), offer.chunk_size)?,
            Sink::Part(_) => Vec::new(),
        };
        let now = now_ms();
        let rec = TransferRecord {
            id: offer.transfer_id,
            direction: Direction::Recv,
            peer: peer.to_string(),
            path: dir.join(&offer.name).to_string_lossy().into_owned(),
            name: offer.name.clone(),
            size: offer.size,
            mtime_ns: offer.mtime_ns,
            mode: offer.mode,
            chunk_size: offer.chunk_size,
            file_hash: offer.file_hash,
            state: TransferState::Active,
            durable: RangeSet::new(),
            created_at_ms: now,
            updated_at_ms: now,
            tree: tree_blob,
        };
        state.store().insert_transfer(&rec)?;
        let mut held = RangeSet::new();
        if !prefilled.is_empty() {
            let geo = gateway_engine::Geometry::new(offer.size, offer.chunk_size);
            let hashes = tree::hash_chunks(sink.reader(), geo, &prefilled, tree::hash_threads())
                .map_err(|e| NodeError::io(format!("reading {}", part.display()), e))?
                .cvs;
            for &i in &prefilled {
                held.insert(i);
            }
            // The copies were synced by prefill: the DB may say so.
            state
                .store()
                .commit_durable(&rec.id, Direction::Recv, &held, &hashes)?;
            tracing::info!(
                chunks = held.count(),
                "files already here with the same content: not sent again"
            );
        }
        Ok(Self::from_parts(state, cfg, rec, sink, held, part))
    }

    /// A transfer found in the DB (RELOAD after a restart). If the part file
    /// is gone, nothing is held any more and the durable set starts empty —
    /// unless the verified file had already been linked into place when the
    /// process died: then that file is the stream, whole, and the next
    /// Complete only re-checks it.
    pub(crate) fn reopen(
        state: &NodeState,
        cfg: &NodeConfig,
        rec: TransferRecord,
    ) -> Result<Arc<Self>, NodeError> {
        let dir = Path::new(&rec.path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if let Some(blob) = &rec.tree {
            return Self::reopen_tree(state, cfg, &dir, blob, rec.clone());
        }
        let part = part_path(&dir, &rec.name, &rec.id);
        if !part.exists() && rec.state == TransferState::Verifying {
            let landed = Path::new(&rec.path);
            if landed.metadata().is_ok_and(|m| m.len() == rec.size) {
                tracing::info!(path = %landed.display(), "found the file already in place from before a restart");
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(landed)
                    .map_err(|e| NodeError::io(format!("cannot open {}", landed.display()), e))?;
                let all = RangeSet::full(
                    gateway_engine::Geometry::new(rec.size, rec.chunk_size).chunks(),
                );
                let landed = landed.to_path_buf();
                return Ok(Self::from_parts(
                    state,
                    cfg,
                    rec,
                    Sink::Part(file),
                    all,
                    landed,
                ));
            }
        }
        let existed = part.exists();
        let file = open_part(&part, rec.size)?;
        let durable = held_unless_vanished(state, &rec, existed, &part)?;
        Ok(Self::from_parts(
            state,
            cfg,
            rec,
            Sink::Part(file),
            durable,
            part,
        ))
    }

    /// A tree found in the DB: its entry list comes back from the stored
    /// Offer (checked again), its staging directory is reopened. Files that
    /// vanished from it (moved into place by a landing a crash cut short, or
    /// deleted) come back empty: the verdict then names their chunks, the
    /// sender sends them again, and landing keeps the copy already in place.
    fn reopen_tree(
        state: &NodeState,
        cfg: &NodeConfig,
        dir: &Path,
        blob: &[u8],
        rec: TransferRecord,
    ) -> Result<Arc<Self>, NodeError> {
        let frame = gateway_proto::decode(bytes::Bytes::copy_from_slice(blob), &cfg.limits)
            .map_err(|e| {
                NodeError::Other(format!("the saved tree of {} is damaged: {e}", rec.name))
            })?;
        let gateway_proto::Body::Offer(offer) = frame.body else {
            return Err(NodeError::Other(format!(
                "the saved tree of {} is not an Offer",
                rec.name
            )));
        };
        let entries = offer.entries.unwrap_or_default();
        let stage = stage_path(dir, &rec.name, &rec.id);
        let existed = stage.exists();
        let staged = Staged::open(&stage, entries)?;
        let durable = held_unless_vanished(state, &rec, existed, &stage)?;
        Ok(Self::from_parts(
            state,
            cfg,
            rec,
            Sink::Tree(Box::new(staged)),
            durable,
            stage,
        ))
    }

    fn from_parts(
        state: &NodeState,
        cfg: &NodeConfig,
        rec: TransferRecord,
        sink: Sink,
        durable: RangeSet,
        part: PathBuf,
    ) -> Arc<Self> {
        let dir = Path::new(&rec.path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut engine_cfg = cfg.engine.clone();
        engine_cfg.chunk_size_bytes = rec.chunk_size;
        let engine = Receiver::new(
            RecvMeta {
                transfer_id: rec.id,
                size: rec.size,
                chunk_size: rec.chunk_size,
            },
            durable,
            engine_cfg,
            Instant::now(),
        );
        Arc::new(Self {
            id: rec.id,
            name: rec.name.clone(),
            peer: rec.peer.clone(),
            part_path: part,
            dir,
            mtime_ns: rec.mtime_ns,
            mode: rec.mode,
            sink,
            policy: cfg.on_conflict,
            write_gate: Mutex::new(()),
            geo: engine.geometry(),
            engine: Mutex::new(engine),
            sync_gate: tokio::sync::Mutex::new(()),
            state: state.clone(),
            outboxes: Mutex::new(Vec::new()),
            bytes_written: AtomicU64::new(0),
        })
    }

    fn engine(&self) -> MutexGuard<'_, Receiver> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Accept for an Offer/Reload/join: every chunk this process holds.
    pub(crate) fn accept(&self) -> gateway_proto::Accept {
        let e = self.engine();
        gateway_proto::Accept {
            transfer_id: self.id,
            have: e.held().ranges().to_vec(),
        }
    }

    /// Checkpoints for this transfer go to this link (the newest one first).
    pub(crate) fn attach(&self, outbox: &mpsc::Sender<Bytes>) {
        let mut o = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        o.retain(|b| b.strong_count() > 0);
        if !o
            .iter()
            .any(|b| b.upgrade().is_some_and(|s| s.same_channel(outbox)))
        {
            o.push(outbox.downgrade());
        }
    }

    /// Whether a live link feeds this stream now (it counts against the
    /// receiver's open-transfer caps).
    pub(crate) fn is_fed(&self) -> bool {
        let o = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        o.iter().any(|b| b.strong_count() > 0)
    }

    /// Verifies one Data frame and writes it at its offset. Blocking (pwrite);
    /// returns the Ack.
    pub(crate) fn write(&self, data: &Data) -> Result<Ack, DataError> {
        // Bounds and alignment first: only a well-placed chunk is hashed.
        let placed = self.geo.locate(data.offset, data.data.len())?;
        let computed: Hash = tree::chunk_cv(placed.offset, &data.data);
        let action = self.engine().handle_data(
            data.offset,
            data.data.len(),
            data.chunk_hash.as_ref(),
            &computed,
        )?;
        match action {
            DataAction::AckOnly(c) => Ok(self.engine().ack(c)),
            DataAction::Write(c) => {
                let _gate = self.write_gate.lock().unwrap_or_else(|p| p.into_inner());
                self.sink
                    .write_all_at(&data.data, c.offset)
                    .map_err(|source| DataError::Io {
                        path: self.part_path.display().to_string(),
                        source,
                    })?;
                self.bytes_written
                    .fetch_add(u64::from(c.len), Ordering::Relaxed);
                Ok(self.engine().on_written(c, computed))
            }
        }
    }

    /// Written-but-not-durable data is at the crash budget
    /// (`checkpoint_bytes`): the caller checkpoints before writing more.
    pub(crate) fn over_budget(&self) -> bool {
        self.engine().over_budget()
    }

    /// Whether a checkpoint is due now.
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.engine().checkpoint_due(Instant::now())
    }

    /// Runs a checkpoint if one is due (or `force`): fdatasync, then DB
    /// commit, then the Checkpoint frame to the newest attached link.
    pub(crate) async fn checkpoint(self: &Arc<Self>, force: bool) -> Result<(), NodeError> {
        let _gate = self.sync_gate.lock().await;
        let job = {
            let mut e = self.engine();
            if force {
                e.take_checkpoint(Instant::now())
            } else {
                e.poll_checkpoint(Instant::now())
            }
        };
        let Some(job) = job else { return Ok(()) };
        let ck = self.make_durable(job).await?;
        // Never wait on a link while holding the gate: a link whose peer
        // vanished would hold up every checkpoint and the Complete behind it.
        drop(_gate);
        self.send_to_newest(gateway_proto::Body::Checkpoint(ck));
        Ok(())
    }

    async fn make_durable(self: &Arc<Self>, job: SyncJob) -> Result<Checkpoint, NodeError> {
        let this = self.clone();
        let job2 = job.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(), NodeError> {
            // Order matters: data on disk first, then the DB may say so.
            this.sink.sync_data(&this.part_path)?;
            crate::crash::point("recv_synced");
            this.state.store().commit_durable(
                &this.id,
                Direction::Recv,
                &job2.chunks,
                &job2.hashes,
            )?;
            crate::crash::point("recv_committed");
            Ok(())
        })
        .await
        .map_err(|e| NodeError::Other(format!("checkpoint task failed: {e}")))?;
        match res {
            Ok(()) => Ok(self.engine().on_durable(&job)),
            Err(e) => {
                self.engine().on_sync_failed(&job);
                Err(e)
            }
        }
    }

    /// Hands `body` to the newest link whose outbox has room. A checkpoint's
    /// durable set is cumulative, so when every outbox is full (links
    /// stalled) dropping this one loses nothing: the next one says it all.
    fn send_to_newest(&self, body: gateway_proto::Body) {
        let frame = crate::wire::encode(body);
        let boxes: Vec<_> = self
            .outboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .filter_map(mpsc::WeakSender::upgrade)
            .collect();
        for b in boxes {
            if b.try_send(frame.clone()).is_ok() {
                return;
            }
        }
        tracing::debug!("no link with room for a checkpoint; the next one carries it");
    }

    /// COMPLETE: make everything durable, hash the file on disk, compare with
    /// the sender's hash and with each chunk's hash as verified on arrival.
    /// On a match the part file is renamed into place and the records deleted.
    /// Returns the verdict and, when ok, the final path.
    pub(crate) async fn finish(
        self: &Arc<Self>,
        complete: &Complete,
    ) -> Result<(Verdict, Option<PathBuf>), NodeError> {
        let _gate = self.sync_gate.lock().await;
        let fin = self
            .engine()
            .handle_complete(complete, Instant::now())
            .map_err(|e| NodeError::Peer(e.to_string()))?;
        if !fin.sync.chunks.is_empty() {
            self.make_durable(fin.sync.clone()).await?;
        } else {
            self.engine().on_durable(&fin.sync);
        }
        tracing::info!(name = %self.name, "final sync done; hashing the file on disk");
        let this = self.clone();
        let (whole, bad) = tokio::task::spawn_blocking(move || {
            crate::crash::point("recv_hashing");
            this.hash_on_disk()
        })
        .await
        .map_err(|e| NodeError::Other(format!("hash task failed: {e}")))??;
        let verdict = self.engine().verdict(&whole, &bad);
        tracing::info!(name = %self.name, ok = verdict.ok, "verdict");
        if !verdict.ok {
            let bad = RangeSet::from_ranges(&verdict.bad_chunks, u64::MAX)
                .map_err(|e| NodeError::Other(e.to_string()))?;
            self.state
                .store()
                .forget_chunks(&self.id, Direction::Recv, &bad)?;
            return Ok((verdict, None));
        }
        let this = self.clone();
        let final_path = tokio::task::spawn_blocking(move || this.finalize(&whole))
            .await
            .map_err(|e| NodeError::Other(format!("rename task failed: {e}")))??;
        Ok((verdict, Some(final_path)))
    }

    fn hash_on_disk(&self) -> Result<(Hash, RangeSet), NodeError> {
        let recorded: std::collections::HashMap<u64, Hash> = self
            .state
            .store()
            .chunk_hashes(&self.id)?
            .into_iter()
            .collect();
        let geo = self.geo;
        let all: Vec<u64> = (0..geo.chunks()).collect();
        let tree::Hashed {
            mut cvs,
            single_root: single,
        } = tree::hash_chunks(self.sink.reader(), geo, &all, tree::hash_threads())
            .map_err(|e| NodeError::io(format!("reading {}", self.part_path.display()), e))?;
        cvs.sort_unstable_by_key(|(i, _)| *i);
        let mut bad = RangeSet::new();
        for (idx, cv) in &cvs {
            if recorded.get(idx).is_some_and(|r| r != cv) {
                bad.insert(*idx);
            }
        }
        let cvs: Vec<Hash> = cvs.into_iter().map(|(_, h)| h).collect();
        let whole = match geo.chunks() {
            0 => *blake3::hash(b"").as_bytes(),
            1 => single.unwrap_or_default(),
            _ => tree::root_from_cvs(&cvs, geo).unwrap_or_default(),
        };
        Ok((whole, bad))
    }

    /// Mode and mtime, fsync, then the part file is hard-linked to a free
    /// name (recorded in the DB first), the directory fsynced, the part name
    /// removed, and only then the DB record deleted. A crash anywhere in
    /// between is finished by the next Complete: the file is never sent
    /// twice and never lands twice.
    fn finalize(&self, hash: &Hash) -> Result<PathBuf, NodeError> {
        use std::os::unix::fs::PermissionsExt;
        let file = match &self.sink {
            Sink::Part(f) => f,
            Sink::Tree(t) => return self.land_tree(t, hash),
        };
        let mode = self.mode & 0o777;
        if mode != 0 {
            let _ = file.set_permissions(std::fs::Permissions::from_mode(mode | 0o600));
        }
        if self.mtime_ns > 0 {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(self.mtime_ns as u64);
            let _ = file.set_modified(t);
        }
        file.sync_all()
            .map_err(|e| NodeError::io(format!("fsync {}", self.part_path.display()), e))?;
        let target = self.link_into_place()?;
        sync_dir(&self.dir);
        crate::crash::point("recv_renamed");
        if target != self.part_path {
            match std::fs::remove_file(&self.part_path) {
                Ok(()) => sync_dir(&self.dir),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(NodeError::io(
                        format!("remove {}", self.part_path.display()),
                        e,
                    ));
                }
            }
        }
        self.state.store().finish_received(
            &self.id,
            &target.to_string_lossy(),
            hash,
            crate::state::now_ms(),
        )?;
        Ok(target)
    }

    /// A verified tree moves into `dir/NAME` (merged into it if it is a
    /// directory already; `NAME (1)`… if a file is in the way), then the
    /// record goes.
    fn land_tree(&self, staged: &Staged, hash: &Hash) -> Result<PathBuf, NodeError> {
        let mut dest = self.dir.join(&self.name);
        if dest.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
            dest = candidates(&self.dir, &self.name)
                .find(|c| c.symlink_metadata().is_err())
                .ok_or_else(|| NodeError::Other(format!("no free name for {}", self.name)))?;
        }
        let landed = staged.land(&dest, self.policy)?;
        tracing::info!(
            dest = %dest.display(),
            files = landed.files,
            unchanged = landed.unchanged,
            skipped = landed.skipped,
            renamed = landed.renamed.len(),
            "tree landed"
        );
        sync_dir(&self.dir);
        self.state.store().finish_received(
            &self.id,
            &dest.to_string_lossy(),
            hash,
            crate::state::now_ms(),
        )?;
        Ok(dest)
    }

    /// `dir/name`, or with `--on-conflict rename` (default) `name (1).ext`,
    /// `(2)`… if taken — never replacing a file; `overwrite` replaces it
    /// atomically; `skip` keeps it and drops what arrived. A name that
    /// already is this file (linked before a crash) is it.
    fn link_into_place(&self) -> Result<PathBuf, NodeError> {
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::metadata(&self.part_path)
            .map_err(|e| NodeError::io(format!("stat {}", self.part_path.display()), e))?;
        let first = self.dir.join(&self.name);
        let taken = std::fs::symlink_metadata(&first)
            .is_ok_and(|m| !(m.dev() == ours.dev() && m.ino() == ours.ino()));
        match self.policy {
            Conflict::Overwrite if taken => {
                self.state.store().set_landing(
                    &self.id,
                    Direction::Recv,
                    &first.to_string_lossy(),
                )?;
                std::fs::rename(&self.part_path, &first)
                    .map_err(|e| NodeError::io(format!("rename to {}", first.display()), e))?;
                return Ok(first);
            }
            Conflict::Skip if taken => {
                tracing::info!(path = %first.display(), "the name is taken; keeping what is there (--on-conflict skip)");
                std::fs::remove_file(&self.part_path).map_err(|e| {
                    NodeError::io(format!("remove {}", self.part_path.display()), e)
                })?;
                return Ok(first);
            }
            _ => {}
        }
        for candidate in candidates(&self.dir, &self.name) {
            match std::fs::symlink_metadata(&candidate) {
                Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => return Ok(candidate),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(NodeError::io(format!("stat {}", candidate.display()), e)),
            }
            self.state.store().set_landing(
                &self.id,
                Direction::Recv,
                &candidate.to_string_lossy(),
            )?;
            match std::fs::hard_link(&self.part_path, &candidate) {
                Ok(()) => return Ok(candidate),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                // File systems without hard links: an atomic no-clobber rename.
                Err(_) => return rename_no_clobber(&self.part_path, &self.dir, &self.name),
            }
        }
        Err(NodeError::Other(format!(
            "no free name for {} in {}",
            self.name,
            self.dir.display()
        )))
    }

    /// Bytes of the file (or of a tree's files).
    pub(crate) fn size(&self) -> u64 {
        self.geo.size
    }

    /// Progress in bytes (durable) for logs.
    pub(crate) fn durable_bytes(&self) -> u64 {
        self.engine().durable_bytes()
    }
}

pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// `dir/name`, then `dir/name (1).ext`, `(2)`…
fn candidates<'a>(dir: &'a Path, name: &'a str) -> impl Iterator<Item = PathBuf> + 'a {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    (0..10_000u32).map(move |n| {
        if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{stem} ({n}){ext}"))
        }
    })
}

/// Renames `from` to a free candidate name, never replacing an existing
/// file (RENAME_NOREPLACE, atomic).
pub(crate) fn rename_no_clobber(from: &Path, dir: &Path, name: &str) -> Result<PathBuf, NodeError> {
    for candidate in candidates(dir, name) {
        match nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            from,
            nix::fcntl::AT_FDCWD,
            &candidate,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => return Ok(candidate),
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => {
                return Err(NodeError::io(
                    format!("rename to {}", candidate.display()),
                    std::io::Error::from(e),
                ));
            }
        }
    }
    Err(NodeError::Other(format!(
        "no free name for {name} in {}",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_part_file_of_a_255_byte_name_fits_in_255_bytes() {
        let id = [0xab; 16];
        let long = "é".repeat(127) + "x"; // 255 bytes
        for p in [
            part_path(Path::new("/in"), &long, &id),
            stage_path(Path::new("/in"), &long, &id),
        ] {
            let n = p.file_name().unwrap().len();
            assert!(n <= 255, "{n} bytes: {}", p.display());
            assert!(p.to_string_lossy().ends_with(".abababab.gateway-part"));
        }
        assert_eq!(
            part_path(Path::new("/in"), "a.txt", &id),
            Path::new("/in/a.txt.abababab.gateway-part")
        );
    }

    use super::*;
    use gateway_proto::Offer;

    fn offer(size: u64) -> Offer {
        Offer {
            transfer_id: [3; 16],
            name: "f.bin".into(),
            size,
            mtime_ns: 0,
            mode: 0o644,
            chunk_size: 4096,
            file_hash: None,
            entries: None,
        }
    }

    async fn receive_all(s: &Arc<FileStream>, data: &[u8]) {
        for (i, chunk) in data.chunks(4096).enumerate() {
            let offset = (i * 4096) as u64;
            let d = Data {
                transfer_id: [3; 16],
                offset,
                data: bytes::Bytes::copy_from_slice(chunk),
                chunk_hash: Some(tree::chunk_cv(offset, chunk)),
            };
            s.write(&d).unwrap();
        }
        s.checkpoint(true).await.unwrap();
    }

    /// Receives `data`, links it into place, then "crashes" (drops the
    /// stream), optionally after removing the part name too, and reopens the
    /// transfer from the DB as a restarted node would.
    async fn crash_after_landing(
        data: &[u8],
        remove_part: bool,
    ) -> (
        tempfile::TempDir,
        NodeState,
        PathBuf,
        PathBuf,
        Arc<FileStream>,
    ) {
        let root = tempfile::tempdir().unwrap();
        let state = NodeState::open(&root.path().join("state")).unwrap();
        let dir = root.path().join("in");
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = NodeConfig::default();
        let s = FileStream::create(&state, &cfg, &dir, &offer(data.len() as u64), "peer").unwrap();
        receive_all(&s, data).await;
        let landed = s.link_into_place().unwrap();
        if remove_part {
            std::fs::remove_file(&s.part_path).unwrap();
        }
        drop(s);
        let rec = state
            .store()
            .get_transfer(&[3; 16], Direction::Recv)
            .unwrap()
            .unwrap();
        let s = FileStream::reopen(&state, &cfg, rec).unwrap();
        (root, state, dir, landed, s)
    }

    async fn finish_lands_once(data: &[u8], remove_part: bool) {
        let (_root, state, dir, landed, s) = crash_after_landing(data, remove_part).await;
        assert_eq!(s.accept().have.len(), 1, "the landed file counts as whole");
        let complete = Complete {
            transfer_id: [3; 16],
            file_hash: *blake3::hash(data).as_bytes(),
            round: 0,
        };
        let (verdict, path) = s.finish(&complete).await.unwrap();
        assert!(verdict.ok, "{}", verdict.message);
        assert_eq!(path.as_deref(), Some(landed.as_path()));
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["f.bin".to_string()],
            "landed once, no part file left"
        );
        assert_eq!(std::fs::read(&landed).unwrap(), data);
        assert!(state.store().list_transfers().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_crash_after_the_link_into_place_is_finished_by_the_next_complete() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        finish_lands_once(&data, false).await;
    }

    #[tokio::test]
    async fn a_crash_after_the_part_name_is_removed_is_finished_by_the_next_complete() {
        let data: Vec<u8> = (0..9_000u32).map(|i| (i % 13) as u8).collect();
        finish_lands_once(&data, true).await;
    }
}
