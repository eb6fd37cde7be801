//! The sending node: one writer task per link feeding the shared scheduler,
//! one reader task per link taking acks, and the control task that plays
//! the interrupt handler (IHS): ERROR → save, retry the link every
//! `retry_interval`, continue; COMPLETE → delete the records; USER_STOP →
//! save and stop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gateway_engine::ihs::{self, Action, Signal};
use gateway_engine::{Event, FileMeta, LinkId, Phase, Sender};
use gateway_link::{FrameRx, FrameTx, Link, LinkError, Registry};
use gateway_proto::{Body, ErrorCode, Frame, Hash, RangeSet, RejectCode, TransferId};
use gateway_store::{Direction, LinkStat, TransferRecord, TransferState};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::dirtree::{self, ReadAt};
use crate::state::{NodeState, now_ms};
use crate::tree;
use crate::trust;
use crate::wire::{self, WireError};
use crate::{NodeConfig, NodeError};
use gateway_secure::{Decision, NodeId};

/// What `gateway send` needs.
#[derive(Clone, Debug)]
pub struct SendOptions {
    /// The file to send.
    pub path: PathBuf,
    /// One selector per link to the same receiver; all are used at once,
    /// and one that is down is retried.
    pub to: Vec<String>,
    /// More links found by discovery: used if they open and reach the same
    /// receiver now, otherwise left out (not retried).
    pub extra: Vec<String>,
    /// The receiver's key, when it is known (a peer named by the user):
    /// links reaching another key are refused.
    pub expect: Option<NodeId>,
    /// How the receiver was named, to look for it again while a link is down
    /// (its address may have moved: Wi-Fi reconnect, DHCP renew).
    pub lookup: Option<Lookup>,
}

/// A named receiver, found again by discovery while links are down.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// Name, node id or id prefix, as the user gave it.
    pub query: String,
    /// Browse mDNS (else static and known addresses only).
    pub mdns: bool,
}

impl SendOptions {
    /// Sends `path` over the links `to` (no discovery).
    pub fn new(path: PathBuf, to: Vec<String>) -> Self {
        Self {
            path,
            to,
            extra: Vec::new(),
            expect: None,
            lookup: None,
        }
    }
}

/// One link's share, in the final report.
#[derive(Clone, Debug, Serialize)]
pub struct LinkReport {
    /// The selector as given.
    pub selector: String,
    /// DATA payload bytes put on this link in this run.
    pub bytes: u64,
    /// MB/s (10^6 bytes) over the transfer's elapsed time.
    pub mbps: f64,
    /// This link's fraction of the bytes acknowledged first.
    pub share: f64,
    /// Bytes sent again on this link (timeouts, deaths, duplicates).
    pub resent: u64,
    /// Its window at the end (bandwidth × minimum round trip × gain), bytes.
    pub window_bytes: u64,
    /// Its least round trip seen, a chunk's poll to its ack, ms.
    pub min_rtt_ms: f64,
}

/// The result of a finished transfer (the `--json` line).
#[derive(Clone, Debug, Serialize)]
pub struct SendReport {
    /// "ok".
    pub verdict: String,
    /// File size.
    pub bytes_total: u64,
    /// DATA payload put on links in this run.
    pub bytes_sent: u64,
    /// Bytes already durable at the receiver when this run began.
    pub bytes_resumed: u64,
    /// Seconds from start to verdict.
    pub elapsed_s: f64,
    /// BLAKE3 of the file, hex.
    pub hash: String,
    /// Per link.
    pub links: Vec<LinkReport>,
    /// Transfer id, hex.
    pub transfer_id: String,
    /// Where the receiver stored it (its name; the receiver may rename on conflict).
    pub name: String,
    /// The receiver's node id.
    pub peer_id: String,
    /// The receiver's name (from its Hello).
    pub peer_name: String,
    /// How long finding a named receiver took (mDNS, static, known), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery_ms: Option<u64>,
    /// Files in the tree (a directory send only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<usize>,
}

/// A live view for progress bars.
#[derive(Clone, Debug, Default)]
pub struct SendProgress {
    /// File name.
    pub name: String,
    /// File size.
    pub total: u64,
    /// Acknowledged by the receiver.
    pub acked: u64,
    /// Durable at the receiver.
    pub durable: u64,
    /// Durable before this run.
    pub resumed: u64,
    /// Per link: (selector, up, bytes acked first over it, bytes sent).
    pub links: Vec<LinkProgress>,
    /// What is happening, in words ("sending", "verifying", "waiting for links").
    pub status: String,
}

/// One link in [`SendProgress`].
#[derive(Clone, Debug, Default)]
pub struct LinkProgress {
    /// Selector.
    pub selector: String,
    /// Up now.
    pub up: bool,
    /// Bytes first acknowledged over this link.
    pub acked: u64,
    /// Bytes put on it.
    pub sent: u64,
}

/// The chunks' BLAKE3 chaining values, filled as writers hash them; the
/// whole-file hash is merged from them (see `tree`).
struct CvTable {
    cvs: Vec<Option<Hash>>,
    known: usize,
}

impl CvTable {
    fn set(&mut self, idx: u64, cv: Hash) {
        if let Some(slot) = self.cvs.get_mut(idx as usize) {
            if slot.is_none() {
                self.known += 1;
            }
            *slot = Some(cv);
        }
    }
}

struct Shared {
    engine: Mutex<Sender>,
    cvs: Mutex<CvTable>,
    /// Wakes writers when window room or work appears.
    wake: Notify,
    /// The file, or the tree's byte stream.
    source: Arc<dyn ReadAt + Send + Sync>,
    /// One per link id; links found later are appended.
    selectors: Mutex<Vec<String>>,
    /// Caps for frames from the receiver (the node's configured limits).
    limits: gateway_proto::Limits,
}

impl Shared {
    fn engine(&self) -> MutexGuard<'_, Sender> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn selectors(&self) -> Vec<String> {
        self.selectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn selector(&self, link: LinkId) -> String {
        self.selectors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(link as usize)
            .cloned()
            .unwrap_or_default()
    }
}

enum Internal {
    /// A link's reader or writer failed.
    Down {
        link: LinkId,
        generation: u64,
        reason: String,
    },
    /// A frame the control task must handle (Verdict, Reject, Error…).
    Frame { link: LinkId, frame: Frame },
    /// A retried link is back.
    Reopened { link: LinkId, conn: Joined },
    /// A retry failed.
    RetryFailed { link: LinkId, reason: String },
    /// Discovery looked for the receiver again (links were down).
    Found(Result<crate::discover::Route, String>),
    /// A path found by discovery joined the transfer.
    Added { selector: String, conn: Joined },
}

/// An opened link that said Hello and joined the transfer.
struct Joined {
    tx: Box<dyn FrameTx>,
    rx: Box<dyn FrameRx>,
    accept: gateway_proto::Accept,
}

/// The two halves of an opened link.
type Halves = (Box<dyn FrameTx>, Box<dyn FrameRx>);

#[derive(Default)]
struct LinkSlot {
    generation: u64,
    tx: Option<Arc<tokio::sync::Mutex<Box<dyn FrameTx>>>>,
    tasks: Vec<JoinHandle<()>>,
    retrying: bool,
    /// Discovery no longer finds the receiver here: not retried.
    retired: bool,
}

impl LinkSlot {
    fn stop_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.tx = None;
    }
}

/// Sends one file over every link in `opts.to` at once. Resumes from the DB
/// when the same file (path, size, mtime) was sent to the same peer before.
/// `stop` turning true is USER_STOP.
pub async fn send(
    state: NodeState,
    cfg: NodeConfig,
    reg: Arc<Registry>,
    opts: SendOptions,
    progress: watch::Sender<SendProgress>,
    mut stop: watch::Receiver<bool>,
) -> Result<SendReport, NodeError> {
    let started = Instant::now();
    let (path, name, md) = inspect(&opts.path)?;
    if opts.to.is_empty() {
        return Err(NodeError::Other(
            "no link given: add --to SELECTOR (e.g. --to tcp:192.168.1.7:7878)".into(),
        ));
    }
    // A directory is one transfer of its files' bytes in list order; its
    // record is found again by the identity of its listing (in place of an
    // mtime), so any change to the tree starts a new transfer.
    let mut file_count = None;
    let (source, size, mtime_ns, tree_entries): (Arc<dyn ReadAt + Send + Sync>, u64, i64, _) =
        if md.is_dir() {
            let root = path.clone();
            let entries = tokio::task::spawn_blocking(move || dirtree::scan(&root, true))
                .await
                .map_err(|e| NodeError::Other(format!("scan task failed: {e}")))??;
            let layout = dirtree::Layout::new(entries.clone());
            let (size, identity) = (layout.size(), layout.identity());
            file_count = Some(layout.file_count());
            tracing::info!(
                files = file_count,
                entries = entries.len(),
                size,
                "sending a tree"
            );
            let src = dirtree::TreeFiles::new(&path, layout, false);
            (Arc::new(src), size, identity, Some(entries))
        } else {
            let file = File::open(&path)
                .map_err(|e| NodeError::io(format!("cannot open {}", path.display()), e))?;
            (Arc::new(file), md.len(), dirtree::mtime_ns(&md), None)
        };
    let is_tree = tree_entries.is_some();
    // Open every link at once; keep the ones that answer.
    let ours = wire::hello(&state, &[]);
    let mut opening = Vec::new();
    let explicit = opts.to.len();
    for sel in opts.to.iter().chain(&opts.extra) {
        let reg = reg.clone();
        let sel = sel.clone();
        let ours = ours.clone();
        let cfg = cfg.clone();
        let key = state.key.clone();
        opening.push(tokio::spawn(async move {
            open_and_hello(&reg, &key, &sel, ours, &cfg).await
        }));
    }
    let mut selectors: Vec<String> = Vec::new();
    let mut conns: Vec<Option<Halves>> = Vec::new();
    let mut failures = Vec::new();
    let mut peer: Option<(gateway_proto::Hello, NodeId, String)> = None;
    for (i, h) in opening.into_iter().enumerate() {
        let sel = opts
            .to
            .iter()
            .chain(&opts.extra)
            .nth(i)
            .expect("one task per selector");
        let given = i < explicit;
        match h.await.map_err(|e| NodeError::Other(e.to_string()))? {
            Ok((tx, rx, hello, id)) => {
                let expected = opts.expect.as_ref().or(peer.as_ref().map(|p| &p.1));
                if let Some(want) = expected
                    && *want != id
                {
                    if !given {
                        tracing::warn!(link = %sel, "reaches {} ({id}), not the receiver; left out", hello.name);
                        continue;
                    }
                    let first = peer.as_ref().map_or(String::new(), |p| {
                        format!("{} reaches node {} ({want}) but ", p.2, p.0.name)
                    });
                    return Err(NodeError::Other(format!(
                        "{first}{sel} reaches node {} ({id}); every --to must reach the same receiver",
                        hello.name
                    )));
                }
                if peer.is_none() {
                    peer = Some((hello, id, sel.clone()));
                }
                selectors.push(sel.clone());
                conns.push(Some((tx, rx)));
            }
            Err(e) if given => {
                failures.push(format!("  {e}"));
                selectors.push(sel.clone());
                conns.push(None);
            }
            Err(e) => tracing::info!(link = %sel, "announced link did not open; left out: {e}"),
        }
    }
    let Some((peer_hello, peer_id, first_sel)) = peer else {
        return Err(NodeError::NoLinks(failures.join("\n")));
    };
    // A file stream opens only towards a peer this node trusts.
    trust::record_hello(&state, cfg.trust, &peer_id, &peer_hello, &first_sel)?;
    match trust::decide(&state, cfg.trust, &peer_id, &peer_hello.name)? {
        Decision::Trusted => {}
        Decision::Untrusted { .. } => {
            return Err(NodeError::NotTrusted(format!(
                "this node does not trust the receiver {} ({peer_id}) yet: run `gateway pair` on the receiver and `gateway pair CODE --to {}` here (or use --trust tofu)",
                peer_hello.name, first_sel
            )));
        }
        Decision::KeyChanged {
            name,
            known,
            presented,
        } => {
            return Err(NodeError::NotTrusted(format!(
                "{name} was pinned to key {known} but now presents {presented}; refusing. If it really changed its key, run `gateway untrust {known}` and pair again"
            )));
        }
    }
    let peer_node_id = peer_id.to_string();
    for f in &failures {
        tracing::warn!("link not up yet, will retry: {}", f.trim());
    }

    // RELOAD or a new record.
    let canonical = path.to_string_lossy().into_owned();
    let existing = state
        .store()
        .find_send(&peer_node_id, &canonical, size, mtime_ns)?;
    let (rec, is_new) = match existing {
        Some(r) => (r, false),
        None => (
            new_record(&peer_node_id, &canonical, &name, size, mtime_ns, &md, &cfg)?,
            true,
        ),
    };
    if is_new {
        state.store().insert_transfer(&rec)?;
    }
    let mut engine_cfg = cfg.engine.clone();
    engine_cfg.chunk_size_bytes = rec.chunk_size;
    let meta = FileMeta {
        transfer_id: rec.id,
        name: name.clone(),
        size,
        mtime_ns,
        mode: rec.mode,
        chunk_size: rec.chunk_size,
    };
    let span = tracing::info_span!("transfer", id = %hex::encode(&rec.id[..4]), name = %name);
    let mut engine = Sender::new(meta, engine_cfg);

    // Negotiate on the first link that is up.
    let first = conns
        .iter()
        .position(Option::is_some)
        .expect("one link is up");
    let (mut tx0, mut rx0) = conns[first].take().expect("checked");
    let opening_body = if is_new {
        let mut offer = engine.offer();
        offer.entries = tree_entries;
        Body::Offer(offer)
    } else {
        tracing::info!(parent: &span, durable = rec.durable.count(), "found in the DB: RELOAD");
        Body::Reload(engine.reload(&rec.durable))
    };
    // A receiver at its caps answers Reject(Busy): wait (backing off) and
    // ask again, up to `pause_after`, like a link that is down.
    let busy_since = Instant::now();
    let mut busy_wait = BUSY_WAIT_FIRST;
    let answer = loop {
        wire::send_within(&mut *tx0, opening_body.clone(), cfg.accept_timeout)
            .await
            .map_err(|e| link_err(&selectors[first], e))?;
        let answer = await_answer(&mut *rx0, &cfg)
            .await
            .map_err(|e| link_err(&selectors[first], e))?;
        match &answer {
            Body::Reject(r)
                if r.code == RejectCode::Busy && busy_since.elapsed() < cfg.pause_after =>
            {
                tracing::info!(parent: &span, "{}; asking again in {busy_wait:?}", r.message);
                progress
                    .send_modify(|p| p.status = format!("receiver busy, waiting: {}", r.message));
                tokio::time::sleep(busy_wait).await;
                busy_wait = (busy_wait * 2).min(BUSY_WAIT_MAX);
            }
            _ => break answer,
        }
    };
    let accept = match answer {
        Body::Accept(a) => a,
        Body::Reject(r) => {
            engine.handle_reject(&r);
            return Err(NodeError::Rejected(r.message));
        }
        Body::Error(e) if e.code == ErrorCode::UnknownTransfer && !is_new => {
            // The receiver finished or forgot it: start over as a new transfer.
            tracing::warn!("the receiver does not know this transfer any more; sending it anew");
            state.store().delete_transfer(&rec.id, Direction::Send)?;
            drop((tx0, rx0));
            return Box::pin(send(state, cfg, reg, opts, progress, stop)).await;
        }
        Body::Error(e) => return Err(NodeError::Peer(format!("the receiver said: {}", e.message))),
        other => {
            return Err(NodeError::Peer(format!(
                "expected Accept, got {}",
                crate::serve::body_name(&other)
            )));
        }
    };
    engine
        .handle_accept(&accept)
        .map_err(|e| NodeError::Peer(e.to_string()))?;
    conns[first] = Some((tx0, rx0));
    // Every other link joins with a Reload and gets its own Accept.
    let mut joined: Vec<Option<Joined>> = Vec::new();
    for (i, c) in conns.into_iter().enumerate() {
        let Some((mut tx, mut rx)) = c else {
            joined.push(None);
            continue;
        };
        if i == first {
            joined.push(Some(Joined {
                tx,
                rx,
                accept: accept.clone(),
            }));
            continue;
        }
        match join(&mut *tx, &mut *rx, engine.reload(engine.durable()), &cfg).await {
            Ok(a) => joined.push(Some(Joined { tx, rx, accept: a })),
            Err(e) => {
                tracing::warn!(link = %selectors[i], "could not join: {e}");
                joined.push(None);
            }
        }
    }

    let resumed = engine.progress().resumed_bytes;
    let geo = engine.geometry();
    // Chunks the receiver already holds are not read by the writers: hash
    // them in the background; the writers hash the rest as they send them.
    let hash_task = {
        let f = source.clone();
        let held = RangeSet::from_ranges(&accept.have, geo.chunks())
            .map_err(|e| NodeError::Peer(e.to_string()))?;
        let idx: Vec<u64> = if geo.chunks() == 1 {
            vec![0]
        } else {
            held.iter().collect()
        };
        tokio::task::spawn_blocking(move || tree::hash_chunks(&*f, geo, &idx, tree::hash_threads()))
    };
    let shared = Arc::new(Shared {
        cvs: Mutex::new(CvTable {
            cvs: vec![None; geo.chunks() as usize],
            known: 0,
        }),
        engine: Mutex::new(engine),
        wake: Notify::new(),
        source,
        selectors: Mutex::new(selectors.clone()),
        limits: cfg.limits.clone(),
    });
    let (itx, mut irx) = mpsc::unbounded_channel::<Internal>();
    let mut slots: Vec<LinkSlot> = Vec::new();
    let now = Instant::now();
    for (i, j) in joined.into_iter().enumerate() {
        let mut slot = LinkSlot::default();
        let link = i as LinkId;
        {
            let mut e = shared.engine();
            e.link_up(link);
            if j.is_none() {
                e.link_down(link, "could not open", now);
            }
        }
        if let Some(j) = j {
            start_link(&shared, &mut slot, link, j, &itx, &span)?;
        }
        slots.push(slot);
    }

    // The control task: the IHS, timers, progress, Complete/Verdict.
    let mut tick = tokio::time::interval(cfg.tick);
    let mut file_hash: Option<Hash> = None;
    let mut single_chunk_root: Option<Hash> =
        (geo.chunks() == 0).then(|| *blake3::hash(b"").as_bytes());
    let mut hash_task = Some(hash_task);
    let mut no_links_since: Option<Instant> = None;
    // The receiver's disk is full: since when, its acked bytes then, its words.
    let mut disk_full: Option<(Instant, u64, String)> = None;
    let mut verify_started: Option<Instant> = None;
    let mut looking = false;
    let mut last_look: Option<Instant> = None;
    // The route was just resolved: the first look for new paths is due one
    // `grow_interval` from now.
    let resolved_at = Instant::now();
    let outcome: Result<(), NodeError> = loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    shared.engine().user_stop();
                }
            }
            Some(msg) = irx.recv() => {
                match msg {
                    Internal::Down { link, generation, reason } => {
                        let slot = &mut slots[link as usize];
                        if slot.generation == generation && slot.tx.is_some() {
                            slot.stop_tasks();
                            tracing::warn!(parent: &span, link = %shared.selector(link), "link down: {reason}");
                            shared.engine().link_down(link, &reason, Instant::now());
                            shared.wake.notify_waiters();
                        }
                    }
                    Internal::Frame { link, frame } => {
                        match handle_control_frame(&shared, link, frame, &state, &rec.id) {
                            Control::Continue => {}
                            Control::End(r) => break r,
                            Control::DiskFull(why) => {
                                // ERROR, not the end: the receiver dropped the
                                // link; the retry re-checks every
                                // retry_interval and the transfer continues
                                // once there is room, or pauses after
                                // pause_after without any.
                                if disk_full.is_none() {
                                    let acked = shared.engine().progress().acked_bytes;
                                    tracing::warn!(parent: &span, "the receiver's disk is full ({why}); waiting up to {:?} for room, checking every {:?}", cfg.pause_after, cfg.engine.retry_interval);
                                    save_signal(&state, &rec.id, &shared, &Signal::Error { link, reason: format!("receiver disk full: {why}"), requeued: Vec::new() }, "ERROR", cfg.max_paused_frames_per_transfer)?;
                                    disk_full = Some((Instant::now(), acked, why));
                                }
                            }
                        }
                    }
                    Internal::Reopened { link, conn } => {
                        let slot = &mut slots[link as usize];
                        slot.retrying = false;
                        {
                            let mut e = shared.engine();
                            if let Err(err) = e.handle_rejoin(&conn.accept) {
                                tracing::warn!("rejoin refused: {err}");
                                continue;
                            }
                            e.link_up(link);
                        }
                        tracing::info!(parent: &span, link = %shared.selector(link), "link back");
                        slot.generation += 1;
                        start_link(&shared, slot, link, conn, &itx, &span)?;
                        shared.wake.notify_waiters();
                    }
                    Internal::Found(found) => {
                        looking = false;
                        match found {
                            Ok(route) => {
                                let known = shared.selectors();
                                let paths: Vec<String> =
                                    route.links.iter().chain(&route.extra).cloned().collect();
                                for (i, sel) in known.iter().enumerate() {
                                    let slot = &mut slots[i];
                                    if !paths.contains(sel) && slot.tx.is_none() && !slot.retired {
                                        tracing::info!(parent: &span, link = %sel, "the receiver is no longer found here; not retrying it");
                                        slot.retired = true;
                                    }
                                }
                                for sel in paths.into_iter().filter(|p| !known.contains(p)) {
                                    let (reg, key, ours, cfg, itx) = (
                                        reg.clone(),
                                        state.key.clone(),
                                        ours.clone(),
                                        cfg.clone(),
                                        itx.clone(),
                                    );
                                    let reload = shared.engine().reload(&RangeSet::new());
                                    let expected = peer_id.clone();
                                    tokio::spawn(async move {
                                        match reopen(&reg, &key, &sel, ours, &cfg, reload, &expected).await {
                                            Ok(conn) => {
                                                let _ = itx.send(Internal::Added { selector: sel, conn });
                                            }
                                            Err(e) => tracing::debug!(link = %sel, "found but not joined: {e}"),
                                        }
                                    });
                                }
                            }
                            Err(why) => tracing::debug!(parent: &span, "looking for the receiver again: {why}"),
                        }
                    }
                    Internal::Added { selector, conn } => {
                        let link = {
                            let mut sels = shared.selectors.lock().unwrap_or_else(|p| p.into_inner());
                            if sels.contains(&selector) {
                                continue;
                            }
                            sels.push(selector.clone());
                            (sels.len() - 1) as LinkId
                        };
                        slots.push(LinkSlot::default());
                        {
                            let mut e = shared.engine();
                            if let Err(err) = e.handle_rejoin(&conn.accept) {
                                tracing::warn!("new link refused: {err}");
                            }
                            e.link_up(link);
                        }
                        tracing::info!(parent: &span, link = %selector, "a new path to the receiver joined");
                        start_link(&shared, &mut slots[link as usize], link, conn, &itx, &span)?;
                        shared.wake.notify_waiters();
                    }
                    Internal::RetryFailed { link, reason } => {
                        slots[link as usize].retrying = false;
                        tracing::debug!(link = %shared.selector(link), "retry failed: {reason}");
                        shared.engine().link_retry_failed(link, Instant::now());
                    }
                }
            }
        }
        // The whole-file hash, once every chunk's CV is known.
        if let Some(t) = &hash_task
            && t.is_finished()
        {
            let t = hash_task.take().expect("present");
            let tree::Hashed {
                cvs,
                single_root: single,
            } = t
                .await
                .map_err(|e| NodeError::Other(e.to_string()))?
                .map_err(|e| NodeError::io(format!("cannot read {}", path.display()), e))?;
            let mut table = shared.cvs.lock().unwrap_or_else(|p| p.into_inner());
            for (idx, cv) in cvs {
                table.set(idx, cv);
            }
            single_chunk_root = single_chunk_root.or(single);
        }
        if file_hash.is_none() && hash_task.is_none() {
            let root = {
                let table = shared.cvs.lock().unwrap_or_else(|p| p.into_inner());
                if geo.chunks() <= 1 {
                    single_chunk_root
                } else if table.known == table.cvs.len() {
                    let cvs: Vec<Hash> = table.cvs.iter().map(|c| c.unwrap_or_default()).collect();
                    tree::root_from_cvs(&cvs, geo)
                } else {
                    None
                }
            };
            if let Some(h) = root {
                if let Some(why) = source_changed(&path, size, mtime_ns, is_tree) {
                    break Err(NodeError::Other(why));
                }
                file_hash = Some(h);
                shared.engine().set_file_hash(h);
                state.store().set_file_hash(&rec.id, Direction::Send, &h)?;
            }
        }
        let now = Instant::now();
        shared.engine().handle_timeout(now);
        // Drain engine events through the IHS decisions.
        let mut finished: Option<Result<(), NodeError>> = None;
        loop {
            let ev = shared.engine().poll_event();
            let Some(ev) = ev else { break };
            match ev {
                Event::SaveDurable(set) => {
                    crate::crash::point("send_durable");
                    state.store().set_durable(&rec.id, Direction::Send, &set)?;
                }
                Event::RetryLink(link) => {
                    let slot = &mut slots[link as usize];
                    if !slot.retrying && !slot.retired {
                        slot.retrying = true;
                        let reg = reg.clone();
                        let sel = shared.selector(link);
                        let ours = ours.clone();
                        let cfg = cfg.clone();
                        let itx = itx.clone();
                        let reload = shared.engine().reload(&RangeSet::new());
                        let expected = peer_id.clone();
                        let key = state.key.clone();
                        tokio::spawn(async move {
                            let msg = match reopen(&reg, &key, &sel, ours, &cfg, reload, &expected)
                                .await
                            {
                                Ok(conn) => Internal::Reopened { link, conn },
                                Err(e) => Internal::RetryFailed {
                                    link,
                                    reason: e.to_string(),
                                },
                            };
                            let _ = itx.send(msg);
                        });
                    }
                }
                Event::Signal(sig) => {
                    for action in ihs::decide(&sig, &cfg.engine, now) {
                        match action {
                            Action::SaveFrame { signal } => save_signal(
                                &state,
                                &rec.id,
                                &shared,
                                &sig,
                                signal,
                                cfg.max_paused_frames_per_transfer,
                            )?,
                            Action::RetryLinkAt { .. } | Action::Continue | Action::KeepRecords => {
                            }
                            Action::DeleteRecords => {
                                crate::crash::point("send_done");
                                state.store().delete_transfer(&rec.id, Direction::Send)?;
                                finished = Some(Ok(()));
                            }
                            Action::Exit => {
                                finished = Some(Err(match &sig {
                                    Signal::UserStop => NodeError::Stopped,
                                    _ => NodeError::Other(phase_text(shared.engine().phase())),
                                }));
                            }
                        }
                    }
                }
            }
        }
        if let Some(r) = finished {
            break r;
        }
        if let Phase::Failed(why) = shared.engine().phase().clone() {
            break Err(NodeError::Other(why));
        }
        // Complete, once every chunk is acked and the hash is known.
        let complete = shared.engine().poll_complete();
        if let Some(c) = complete {
            tracing::info!(parent: &span, "every chunk acked; Complete sent, waiting for the verdict");
            verify_started = Some(now);
            if !send_on_any(&slots, Body::Complete(c)).await {
                // No link to carry it: the transfer goes back to waiting.
                tracing::warn!("no link up to send Complete on");
            }
        }
        if let Some(t) = verify_started
            && now.duration_since(t) > cfg.verdict_timeout
        {
            break Err(NodeError::Paused(format!(
                "no verdict from the receiver within {:?}",
                cfg.verdict_timeout
            )));
        }
        // Links the engine declared down (silent too long) stop their tasks;
        // the IHS retry reconnects them.
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.tx.is_some() && !shared.engine().link_is_up(i as LinkId) {
                tracing::warn!(parent: &span, link = %shared.selector(i as LinkId), "link silent; reconnecting");
                slot.stop_tasks();
            }
        }
        // A named receiver with links down: look for it again (its
        // address may have moved), at most every `rediscover_interval`.
        // With every link up, look anyway every `grow_interval`: a faster
        // path (Wi-Fi found by mDNS, a USB cable) joins as it appears.
        let some_down = shared.engine().links_up() < slots.iter().filter(|s| !s.retired).count();
        let due = if some_down {
            last_look.is_none_or(|t| now.duration_since(t) >= cfg.rediscover_interval)
        } else {
            !cfg.grow_interval.is_zero()
                && now.duration_since(last_look.unwrap_or(resolved_at)) >= cfg.grow_interval
        };
        if let Some(lk) = &opts.lookup
            && !looking
            && due
        {
            looking = true;
            last_look = Some(now);
            let (state, cfg, reg, itx, lk) = (
                state.clone(),
                cfg.clone(),
                reg.clone(),
                itx.clone(),
                lk.clone(),
            );
            tokio::spawn(async move {
                let found = crate::discover::resolve(&state, &cfg, reg, &lk.query, lk.mdns)
                    .await
                    .map_err(|e| e.to_string());
                let _ = itx.send(Internal::Found(found));
            });
        }
        // The receiver's disk: room again once acks move on; without room
        // for pause_after, pause.
        if let Some((since, acked, why)) = &disk_full {
            if shared.engine().progress().acked_bytes > *acked {
                tracing::info!(parent: &span, "the receiver has room again; continuing");
                disk_full = None;
            } else if now.duration_since(*since) > cfg.pause_after {
                break Err(NodeError::Paused(format!(
                    "the receiver's disk is full ({why}) and had no room for {:?}; state is saved: free space there, then run the same send again",
                    cfg.pause_after
                )));
            }
        }
        // No link at all for too long: pause.
        let up = shared.engine().links_up();
        if up == 0 {
            let since = *no_links_since.get_or_insert(now);
            if now.duration_since(since) > cfg.pause_after {
                break Err(NodeError::Paused(format!(
                    "no link to the receiver for {:?}; state is saved, run the same send again to resume",
                    cfg.pause_after
                )));
            }
        } else {
            no_links_since = None;
        }
        publish(&shared, &progress, &name);
    };

    // Wind down: tell the receiver, stop tasks, record per-link stats.
    let bye = match &outcome {
        Ok(()) => "done",
        Err(NodeError::Stopped) => "user stop",
        Err(_) => "paused",
    };
    send_on_all(&slots, Body::Bye(bye.into())).await;
    for s in &mut slots {
        s.stop_tasks();
    }
    let elapsed = started.elapsed();
    let mut report = build_report(&shared, &rec.id, &name, size, resumed, elapsed, file_hash);
    report.files = file_count;
    report.peer_id = peer_node_id.clone();
    report.peer_name = peer_hello.name.clone();
    for l in &report.links {
        let _ = state.store().record_link_stat(&LinkStat {
            transfer_id: rec.id,
            selector: l.selector.clone(),
            bytes: l.bytes,
            elapsed_ms: elapsed.as_millis() as u64,
            at_ms: now_ms(),
        });
    }
    publish(&shared, &progress, &name);
    outcome.map(|()| report)
}

/// A sentence if the source's size or mtime moved since the transfer began.
fn source_changed(path: &Path, size: u64, mtime_ns: i64, is_tree: bool) -> Option<String> {
    // (size, mtime) of a file; (size, identity of the listing) of a tree.
    let now = if is_tree {
        dirtree::scan(path, false)
            .map(|entries| {
                let l = dirtree::Layout::new(entries);
                (l.size(), l.identity())
            })
            .map_err(|e| format!("{}: {e}", path.display()))
    } else {
        std::fs::metadata(path)
            .map(|md| (md.len(), dirtree::mtime_ns(&md)))
            .map_err(|e| format!("{} can no longer be read: {e}", path.display()))
    };
    match now {
        Ok(now) if now == (size, mtime_ns) => None,
        Ok(_) => Some(format!(
            "{} changed while it was being sent; run the same send again to send the new version",
            path.display()
        )),
        Err(why) => Some(why),
    }
}

fn phase_text(p: &Phase) -> String {
    match p {
        Phase::Failed(why) => why.clone(),
        other => format!("{other:?}"),
    }
}

/// Reads the file's metadata and checks that its name can travel.
fn inspect(path: &Path) -> Result<(PathBuf, String, std::fs::Metadata), NodeError> {
    let canonical = path
        .canonicalize()
        .map_err(|e| NodeError::io(format!("cannot send {}", path.display()), e))?;
    let md = std::fs::metadata(&canonical)
        .map_err(|e| NodeError::io(format!("cannot read {}", path.display()), e))?;
    if !md.is_file() && !md.is_dir() {
        return Err(NodeError::Other(format!(
            "{} is not a regular file or a directory",
            path.display()
        )));
    }
    let name = canonical
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| NodeError::Other(format!("{} has no UTF-8 file name", path.display())))?
        .to_string();
    gateway_proto::validate_name(&name).map_err(|e| NodeError::Other(e.to_string()))?;
    Ok((canonical, name, md))
}

fn new_record(
    peer: &str,
    path: &str,
    name: &str,
    size: u64,
    mtime_ns: i64,
    md: &std::fs::Metadata,
    cfg: &NodeConfig,
) -> Result<TransferRecord, NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let mut id: TransferId = [0; 16];
    getrandom::fill(&mut id).map_err(|e| NodeError::Other(e.to_string()))?;
    let now = now_ms();
    Ok(TransferRecord {
        id,
        direction: Direction::Send,
        peer: peer.to_string(),
        path: path.to_string(),
        name: name.to_string(),
        size,
        mtime_ns,
        mode: md.permissions().mode() & 0o7777,
        chunk_size: cfg.engine.chunk_size_bytes,
        file_hash: None,
        state: TransferState::Active,
        durable: RangeSet::new(),
        created_at_ms: now,
        updated_at_ms: now,
        tree: None,
    })
}

fn link_err(sel: &str, e: WireError) -> NodeError {
    NodeError::Peer(format!("{sel}: {e}"))
}

/// A link that opened and then failed with an I/O error before its Hello
/// (the transport dropped it at once: BlueZ does that to a fresh RFCOMM or
/// L2CAP link now and then) is opened again this many times, after
/// [`FRESH_LINK_PAUSE`] times the try's number. A peer that closes the link
/// on purpose (caps, refusal) or fails the handshake is not retried.
const FRESH_LINK_RETRIES: u32 = 2;
/// The pause before the first reopen of a link that died before its Hello.
const FRESH_LINK_PAUSE: Duration = Duration::from_millis(500);

/// The halves of a link past Hello, the peer's Hello and its key's id.
type Greeted = (
    Box<dyn FrameTx>,
    Box<dyn FrameRx>,
    gateway_proto::Hello,
    NodeId,
);

/// Opens a link, runs the Noise handshake (as initiator) and exchanges
/// Hello. Returns the halves, the peer's Hello and its key's id; a Hello
/// whose id differs from the key is refused. A link the transport drops
/// before its Hello is opened again ([`FRESH_LINK_RETRIES`]).
pub(crate) async fn open_and_hello(
    reg: &Registry,
    key: &gateway_secure::NodeKey,
    sel: &str,
    ours: gateway_proto::Hello,
    cfg: &NodeConfig,
) -> Result<Greeted, NodeError> {
    let mut reopened = 0;
    loop {
        match open_and_hello_once(reg, key, sel, ours.clone(), cfg).await {
            Err((e, true)) if reopened < FRESH_LINK_RETRIES => {
                reopened += 1;
                tracing::info!(link = %sel, reopened, "the link failed before its Hello; opening it again: {e}");
                tokio::time::sleep(FRESH_LINK_PAUSE * reopened).await;
            }
            r => return r.map_err(|(e, _)| e),
        }
    }
}

/// One try of [`open_and_hello`]; an error says whether the transport
/// failed under a link that had opened (worth opening again).
async fn open_and_hello_once(
    reg: &Registry,
    key: &gateway_secure::NodeKey,
    sel: &str,
    ours: gateway_proto::Hello,
    cfg: &NodeConfig,
) -> Result<Greeted, (NodeError, bool)> {
    let link = reg.open(sel).await.map_err(|err| {
        let e = NodeError::Open {
            selector: sel.to_string(),
            err,
        };
        (e, false)
    })?;
    let secure = gateway_secure::connect(link, key, cfg.handshake_timeout)
        .await
        .map_err(|e| {
            let fresh = matches!(e, gateway_secure::SecureError::Link(LinkError::Io(_)));
            (
                NodeError::Peer(format!("{sel}: handshake failed: {e}")),
                fresh,
            )
        })?;
    let remote = secure.remote_id();
    let (mut tx, mut rx) = Box::new(secure).split();
    let theirs = wire::exchange_hello(&mut *tx, &mut *rx, ours, &cfg.limits, cfg.hello_timeout)
        .await
        .map_err(|e| {
            let fresh = matches!(e, WireError::Link(LinkError::Io(_)));
            (link_err(sel, e), fresh)
        })?;
    if !trust::same_id(&theirs.node_id, remote.as_str()) {
        return Err((
            NodeError::NotTrusted(format!(
                "{sel}: the receiver's Hello claims node id {} but its key is {remote}; not sending to a peer that lies about its identity",
                theirs.node_id
            )),
            false,
        ));
    }
    Ok((tx, rx, theirs, remote))
}

/// Waits for the answer to an Offer/Reload, skipping Pings.
async fn await_answer(rx: &mut dyn FrameRx, cfg: &NodeConfig) -> Result<Body, WireError> {
    loop {
        let f = wire::recv_within(rx, &cfg.limits, cfg.accept_timeout).await?;
        match f.body {
            Body::Ping(_) | Body::Pong(_) | Body::Hello(_) | Body::Checkpoint(_) | Body::Ack(_) => {
            }
            other => return Ok(other),
        }
    }
}

/// A second link joins a running transfer: Reload, then the receiver's Accept.
async fn join(
    tx: &mut dyn FrameTx,
    rx: &mut dyn FrameRx,
    reload: gateway_proto::Reload,
    cfg: &NodeConfig,
) -> Result<gateway_proto::Accept, NodeError> {
    wire::send_within(tx, Body::Reload(reload), cfg.accept_timeout)
        .await
        .map_err(|e| NodeError::Peer(e.to_string()))?;
    match await_answer(rx, cfg)
        .await
        .map_err(|e| NodeError::Peer(e.to_string()))?
    {
        Body::Accept(a) => Ok(a),
        Body::Error(e) => Err(NodeError::Peer(e.message)),
        Body::Reject(r) => Err(NodeError::Rejected(r.message)),
        other => Err(NodeError::Peer(format!(
            "expected Accept, got {}",
            crate::serve::body_name(&other)
        ))),
    }
}

/// IHS retry: reopen a failed link, check it is the same peer, join.
async fn reopen(
    reg: &Registry,
    key: &gateway_secure::NodeKey,
    sel: &str,
    ours: gateway_proto::Hello,
    cfg: &NodeConfig,
    reload: gateway_proto::Reload,
    expected_peer: &NodeId,
) -> Result<Joined, NodeError> {
    let (mut tx, mut rx, _hello, id) = open_and_hello(reg, key, sel, ours, cfg).await?;
    if id != *expected_peer {
        return Err(NodeError::NotTrusted(format!(
            "{sel} now reaches a different node ({id}, not {expected_peer}); not resuming on it"
        )));
    }
    let accept = join(&mut *tx, &mut *rx, reload, cfg).await?;
    Ok(Joined { tx, rx, accept })
}

/// Starts the writer and reader tasks of a joined link.
fn start_link(
    shared: &Arc<Shared>,
    slot: &mut LinkSlot,
    link: LinkId,
    conn: Joined,
    itx: &mpsc::UnboundedSender<Internal>,
    span: &tracing::Span,
) -> Result<(), NodeError> {
    slot.stop_tasks();
    let tx = Arc::new(tokio::sync::Mutex::new(conn.tx));
    slot.tx = Some(tx.clone());
    let generation = slot.generation;
    let sel = shared.selector(link);
    let lspan = tracing::info_span!(parent: span, "link", sel = %sel);
    slot.tasks.push(tokio::spawn(
        writer(shared.clone(), link, generation, tx, itx.clone()).instrument(lspan.clone()),
    ));
    slot.tasks.push(tokio::spawn(
        reader(shared.clone(), link, generation, conn.rx, itx.clone()).instrument(lspan),
    ));
    Ok(())
}

/// A link's writer: pulls chunks while its window has room, reads each at
/// its offset, hashes it, wraps it in a Data frame and sends it.
async fn writer(
    shared: Arc<Shared>,
    link: LinkId,
    generation: u64,
    tx: Arc<tokio::sync::Mutex<Box<dyn FrameTx>>>,
    itx: mpsc::UnboundedSender<Internal>,
) {
    let mut enc = gateway_proto::Encoder::new();
    let mut buf = Vec::new();
    let id = shared.engine().meta().transfer_id;
    loop {
        let notified = shared.wake.notified();
        let next = shared.engine().poll_chunk(link, Instant::now());
        let Some(chunk) = next else {
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            continue;
        };
        buf.resize(chunk.len as usize, 0);
        if let Err(e) = shared.source.read_exact_at(&mut buf, chunk.offset) {
            shared.engine().unsent(link, chunk.index);
            let _ = itx.send(Internal::Down {
                link,
                generation,
                reason: format!("reading the source file failed: {e}"),
            });
            return;
        }
        let cv = tree::chunk_cv(chunk.offset, &buf);
        shared
            .cvs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(chunk.index, cv);
        let frame = enc.data(&id, chunk.offset, &buf, Some(&cv));
        let res = tx.lock().await.send(frame).await;
        if let Err(e) = res {
            shared.engine().unsent(link, chunk.index);
            let _ = itx.send(Internal::Down {
                link,
                generation,
                reason: e.to_string(),
            });
            return;
        }
    }
}

/// A link's reader: acks and checkpoints go straight to the engine; the
/// rest goes to the control task.
async fn reader(
    shared: Arc<Shared>,
    link: LinkId,
    generation: u64,
    mut rx: Box<dyn FrameRx>,
    itx: mpsc::UnboundedSender<Internal>,
) {
    loop {
        let frame = match wire::recv(&mut *rx, &shared.limits).await {
            Ok(f) => f,
            Err(e) => {
                let _ = itx.send(Internal::Down {
                    link,
                    generation,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let now = Instant::now();
        shared.engine().link_heard(link, now);
        match &frame.body {
            Body::Ack(a) => {
                let r = shared.engine().handle_ack(link, &a.ranges, now);
                if let Err(e) = r {
                    let _ = itx.send(Internal::Down {
                        link,
                        generation,
                        reason: format!("bad Ack: {e}"),
                    });
                    return;
                }
                shared.wake.notify_waiters();
            }
            Body::Checkpoint(c) => {
                let r = shared.engine().handle_checkpoint(&c.durable);
                if let Err(e) = r {
                    let _ = itx.send(Internal::Down {
                        link,
                        generation,
                        reason: format!("bad Checkpoint: {e}"),
                    });
                    return;
                }
            }
            Body::Pong(_) | Body::Hello(_) | Body::Accept(_) => {}
            _ => {
                let is_error = matches!(frame.body, Body::Error(_));
                let _ = itx.send(Internal::Frame { link, frame });
                if is_error {
                    // The receiver drops a link after an Error frame.
                    let _ = itx.send(Internal::Down {
                        link,
                        generation,
                        reason: "receiver reported an error".into(),
                    });
                    return;
                }
            }
        }
    }
}

/// What a control frame from the receiver means for the transfer.
enum Control {
    Continue,
    End(Result<(), NodeError>),
    /// The receiver could not write: its disk is full (its words).
    DiskFull(String),
}

/// Verdict, Reject and Error frames.
fn handle_control_frame(
    shared: &Shared,
    link: LinkId,
    frame: Frame,
    state: &NodeState,
    id: &TransferId,
) -> Control {
    match frame.body {
        Body::Verdict(v) => {
            let r = shared.engine().handle_verdict(&v);
            if let Err(e) = r {
                return Control::End(Err(NodeError::Peer(e.to_string())));
            }
            if !v.ok {
                tracing::warn!("verdict: {}; re-sending those chunks", v.message);
                let _ = state
                    .store()
                    .set_durable(id, Direction::Send, shared.engine().durable());
                shared.wake.notify_waiters();
            }
            Control::Continue
        }
        Body::Reject(r) => Control::End(Err(NodeError::Rejected(r.message))),
        Body::Error(e) => {
            tracing::warn!(link = %shared.selector(link), "receiver error: {}", e.message);
            match e.code {
                ErrorCode::DiskFull => Control::DiskFull(e.message),
                _ => Control::Continue,
            }
        }
        _ => Control::Continue,
    }
}

fn save_signal(
    state: &NodeState,
    id: &TransferId,
    shared: &Shared,
    sig: &Signal,
    name: &str,
    keep: usize,
) -> Result<(), NodeError> {
    let meta = match sig {
        Signal::Error {
            link,
            reason,
            requeued,
        } => serde_json::json!({
            "link": shared.selector(*link),
            "reason": reason,
            "requeued_chunks": requeued,
        }),
        _ => serde_json::json!({
            "durable": shared.engine().durable().count(),
        }),
    };
    // The frame saved is the transfer's Reload as it stands: enough to resume.
    let e = shared.engine();
    let frame = wire::encode(Body::Reload(e.reload(e.durable())));
    drop(e);
    state
        .store()
        .save_paused_frame(Some(id), name, &frame, &meta.to_string(), now_ms())?;
    state.store().trim_paused_frames(id, keep)?;
    Ok(())
}

/// How long the control task waits for a link's writer to let go of it.
/// A writer stuck on a path that died silently holds its link until TCP
/// gives up (a minute); the control task must not wait with it.
const LINK_LOCK_WAIT: Duration = Duration::from_millis(500);

/// A busy receiver is asked again after this, doubling up to `BUSY_WAIT_MAX`.
const BUSY_WAIT_FIRST: Duration = Duration::from_millis(250);
const BUSY_WAIT_MAX: Duration = Duration::from_secs(4);

/// How long the control task waits for a link to take one small frame
/// (a Complete). A stalled link (the peer stopped reading; a path that died
/// without an error) would hold the control task, and with it the transfer,
/// for good; the next link is tried instead, and the stalled one is declared
/// down by its silence.
const CONTROL_SEND_WAIT: Duration = Duration::from_secs(5);

async fn send_on_any(slots: &[LinkSlot], body: Body) -> bool {
    let frame = wire::encode(body);
    for s in slots {
        let Some(tx) = &s.tx else { continue };
        if let Ok(mut g) = tokio::time::timeout(LINK_LOCK_WAIT, tx.lock()).await
            && let Ok(Ok(())) = tokio::time::timeout(CONTROL_SEND_WAIT, g.send(&frame)).await
        {
            return true;
        }
    }
    false
}

async fn send_on_all(slots: &[LinkSlot], body: Body) {
    let frame = wire::encode(body);
    for s in slots {
        if let Some(tx) = &s.tx
            && let Ok(mut g) = tokio::time::timeout(LINK_LOCK_WAIT, tx.lock()).await
        {
            let _ = tokio::time::timeout(Duration::from_millis(500), g.send(&frame)).await;
            let _ = tokio::time::timeout(Duration::from_millis(500), g.close()).await;
        }
    }
}

fn publish(shared: &Shared, progress: &watch::Sender<SendProgress>, name: &str) {
    let e = shared.engine();
    let p = e.progress();
    let status = match e.phase() {
        Phase::Negotiating => "negotiating".to_string(),
        Phase::Sending if e.links_up() == 0 => "waiting for a link".to_string(),
        Phase::Sending => "sending".to_string(),
        Phase::Verifying => "verifying".to_string(),
        Phase::Done => "done".to_string(),
        Phase::Stopped => "stopped".to_string(),
        Phase::Failed(w) => format!("failed: {w}"),
    };
    let selectors = shared.selectors();
    let links = selectors
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let st = e.link_stats(i as LinkId);
            LinkProgress {
                selector: s.clone(),
                up: e.link_is_up(i as LinkId),
                acked: st.bytes_acked,
                sent: st.bytes_sent,
            }
        })
        .collect();
    progress.send_replace(SendProgress {
        name: name.to_string(),
        total: p.total_bytes,
        acked: p.acked_bytes,
        durable: p.durable_bytes,
        resumed: p.resumed_bytes,
        links,
        status,
    });
}

fn build_report(
    shared: &Shared,
    id: &TransferId,
    name: &str,
    size: u64,
    resumed: u64,
    elapsed: Duration,
    hash: Option<Hash>,
) -> SendReport {
    let selectors = shared.selectors();
    let e = shared.engine();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let acked_total: u64 = (0..selectors.len())
        .map(|i| e.link_stats(i as LinkId).bytes_acked)
        .sum();
    let links: Vec<LinkReport> = selectors
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let st = e.link_stats(i as LinkId);
            LinkReport {
                selector: s.clone(),
                bytes: st.bytes_sent,
                mbps: st.bytes_sent as f64 / secs / 1e6,
                share: if acked_total == 0 {
                    0.0
                } else {
                    st.bytes_acked as f64 / acked_total as f64
                },
                resent: st.bytes_resent,
                window_bytes: st.window_bytes,
                min_rtt_ms: st.min_rtt.as_secs_f64() * 1e3,
            }
        })
        .collect();
    SendReport {
        verdict: "ok".into(),
        bytes_total: size,
        bytes_sent: links.iter().map(|l| l.bytes).sum(),
        bytes_resumed: resumed,
        elapsed_s: elapsed.as_secs_f64(),
        hash: hash.map(hex::encode).unwrap_or_default(),
        links,
        transfer_id: hex::encode(id),
        name: name.to_string(),
        peer_id: String::new(),
        peer_name: String::new(),
        discovery_ms: None,
        files: None,
    }
}
