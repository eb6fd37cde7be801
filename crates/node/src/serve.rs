//! The receiving node: listeners, one task per accepted link, the transfers'
//! `file_stream`s, and the checkpoint ticker.
//!
//! Every accepted link carries two logical streams: IDENTITY (Hello first)
//! and FILE (Offer/Reload/Data/Complete). A link that sends anything invalid
//! gets an Error frame and is dropped; other links and transfers go on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gateway_link::{FrameRx, Link, Registry};
use gateway_proto::{Body, ErrorCode, Offer, Reject, RejectCode, Reload, TransferId};
use gateway_store::Direction;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::file_stream::{DataError, FileStream};
use crate::state::{NodeState, now_ms};
use crate::trust;
use crate::wire::{self, WireError};
use crate::{NodeConfig, NodeError};
use gateway_secure::{Decision, NodeId};

/// What `gateway serve` needs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Files land here.
    pub dir: PathBuf,
    /// Selectors to listen on.
    pub listen: Vec<String>,
    /// Advertise this node over mDNS (`_gateway._tcp`) for the first TCP listener.
    pub advertise: bool,
}

/// Something that happened, for the CLI to print.
#[derive(Clone, Debug)]
pub enum ServeEvent {
    /// A file arrived whole and verified.
    Received {
        /// Where it is now.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// A transfer started or resumed.
    Started {
        /// File name.
        name: String,
        /// Size.
        size: u64,
        /// Bytes already held.
        resumed: u64,
    },
    /// A link was dropped for bad input.
    Refused {
        /// Link's peer address.
        peer: String,
        /// Why.
        why: String,
    },
}

struct Server {
    state: NodeState,
    cfg: NodeConfig,
    dir: PathBuf,
    streams: Mutex<HashMap<TransferId, Arc<FileStream>>>,
    events: mpsc::UnboundedSender<ServeEvent>,
    /// The listeners' selectors, told to peers in Hello (expanded per interface).
    listening: Vec<String>,
    /// `caps.max_links`: one permit per link served.
    links: Arc<Semaphore>,
    /// `caps.max_handshaking_links`: one permit per link before its Hello.
    handshaking: Arc<Semaphore>,
    /// Links per peer key (`caps.max_links_per_peer`).
    peer_links: Mutex<HashMap<String, usize>>,
}

/// One peer link counted in `Server::peer_links`; uncounted on drop.
struct PeerLinkSlot {
    server: Arc<Server>,
    peer: String,
}

impl Drop for PeerLinkSlot {
    fn drop(&mut self) {
        let mut m = self
            .server
            .peer_links
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

/// A running receiver.
pub struct ServeHandle {
    /// The listeners' resolved selectors (port 0 → real port).
    pub local_selectors: Vec<String>,
    server: Arc<Server>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Events for the CLI.
    pub events: mpsc::UnboundedReceiver<ServeEvent>,
    /// The mDNS instance advertised, or why nothing is.
    pub advertised: Result<String, String>,
    advertiser: Option<gateway_discovery::Advertiser>,
}

/// Starts listening on every selector; fails if any cannot be bound.
pub async fn start(
    state: NodeState,
    cfg: NodeConfig,
    reg: Arc<Registry>,
    opts: ServeOptions,
) -> Result<ServeHandle, NodeError> {
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| NodeError::io(format!("cannot create {}", opts.dir.display()), e))?;
    let dir = opts
        .dir
        .canonicalize()
        .map_err(|e| NodeError::io(format!("cannot open {}", opts.dir.display()), e))?;
    let mut listeners = Vec::new();
    for sel in &opts.listen {
        let listener = reg.listen(sel).await.map_err(|err| NodeError::Open {
            selector: sel.clone(),
            err,
        })?;
        tracing::info!(listen = %listener.local_selector(), "listening");
        listeners.push(listener);
    }
    let local: Vec<String> = listeners.iter().map(|l| l.local_selector()).collect();
    let (etx, erx) = mpsc::unbounded_channel();
    let server = Arc::new(Server {
        links: Arc::new(Semaphore::new(cfg.caps.max_links)),
        handshaking: Arc::new(Semaphore::new(cfg.caps.max_handshaking_links)),
        peer_links: Mutex::new(HashMap::new()),
        state,
        cfg,
        dir,
        streams: Mutex::new(HashMap::new()),
        events: etx,
        listening: opts
            .listen
            .iter()
            .zip(&local)
            .map(|(asked, bound)| announce_form(asked, bound))
            .collect(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (mut listener, local_sel) in listeners.into_iter().zip(local.clone()) {
        let server = server.clone();
        let mut stop_rx = stop_rx.clone();
        tasks.spawn(async move {
            let mut links = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    acc = listener.accept() => match acc {
                        Ok(link) => {
                            // Over a connection cap the link is closed before
                            // any crypto runs: a flood costs an accept each.
                            let Some(permits) = server.admit(&*link) else {
                                continue;
                            };
                            let span = tracing::info_span!("link", sel = %link.info().selector, peer = %link.info().peer);
                            links.spawn(serve_link(server.clone(), link, permits, stop_rx.clone()).instrument(span));
                        }
                        Err(e) => {
                            tracing::warn!(listen = %local_sel, "accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    },
                    Some(_) = links.join_next(), if !links.is_empty() => {}
                }
            }
            links.shutdown().await;
        });
    }
    // Time-based checkpoints (data written but idle for checkpoint_interval).
    {
        let server = server.clone();
        let mut stop_rx = stop_rx.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(server.cfg.tick);
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    _ = tick.tick() => {
                        for s in server.all_streams() {
                            if s.checkpoint_due()
                                && let Err(e) = s.checkpoint(false).await {
                                    tracing::warn!(name = %s.name, "checkpoint failed: {e}");
                                }
                        }
                    }
                }
            }
        });
    }
    let (advertiser, advertised) = if opts.advertise {
        match advertise(&server.state, &server.listening) {
            Ok(a) => {
                let name = a.fullname().to_string();
                (Some(a), Ok(name))
            }
            Err(why) => {
                tracing::warn!("not advertising over mDNS: {why}");
                (None, Err(why))
            }
        }
    } else {
        (None, Err("mDNS advertising is off (--no-mdns)".into()))
    };
    Ok(ServeHandle {
        local_selectors: local,
        server,
        stop,
        tasks,
        events: erx,
        advertised,
        advertiser,
    })
}

/// What peers are told about a listener: the wildcard form when it listens
/// on every address (expanded per interface in each Hello, so it follows
/// addresses as they change), else the bound address.
fn announce_form(asked: &str, bound: &str) -> String {
    let Some(rest) = asked.strip_prefix("tcp:") else {
        return bound.to_string();
    };
    let addr = rest.split('?').next().unwrap_or(rest);
    let host = addr.rsplit_once(':').map_or("", |(h, _)| h);
    let port = bound.rsplit(':').next().unwrap_or("0");
    match host {
        "" | "0.0.0.0" => format!("tcp:0.0.0.0:{port}"),
        "[::]" => format!("tcp:[::]:{port}"),
        _ => bound.to_string(),
    }
}

/// Advertises the first TCP listener over mDNS, with this node's identity
/// and the kinds of every listener in TXT.
fn advertise(state: &NodeState, local: &[String]) -> Result<gateway_discovery::Advertiser, String> {
    let tcp = local
        .iter()
        .find_map(|s| s.strip_prefix("tcp:")?.parse::<std::net::SocketAddr>().ok())
        .ok_or_else(|| "no TCP listener to advertise".to_string())?;
    let mut kinds: Vec<String> = Vec::new();
    for sel in local {
        let kind = sel.split(':').next().unwrap_or_default().to_string();
        if kind != "mock" && !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    let advert = gateway_discovery::Advert {
        node_id: state.node_id.clone(),
        name: state.name.clone(),
        node_type: state.node_type.clone(),
        version: wire::PROTOCOL_VERSION,
        links: kinds,
        // Bluetooth paths as the Hello names them now (adapters that are up).
        bt: wire::hello(state, local)
            .links
            .into_iter()
            .filter(|l| {
                ["rfcomm:", "l2cap:", "ble:"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .take(gateway_discovery::txt::MAX_BT_SELECTORS)
            .collect(),
    };
    gateway_discovery::Advertiser::start(&advert, tcp.port(), tcp.ip()).map_err(|e| e.to_string())
}

impl ServeHandle {
    /// USER_STOP: stop accepting, make every written byte durable, record the
    /// stop in the DB, and return. A sender that reruns resumes.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        if let Some(a) = self.advertiser.take() {
            a.stop().await;
        }
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        for s in self.server.all_streams() {
            s.checkpoint(true).await?;
            let meta = serde_json::json!({"name": s.name, "durable_bytes": s.durable_bytes()});
            self.server.state.store().save_paused_frame(
                Some(&s.id),
                "USER_STOP",
                &[],
                &meta.to_string(),
                now_ms(),
            )?;
            self.server
                .state
                .store()
                .trim_paused_frames(&s.id, self.server.cfg.max_paused_frames_per_transfer)?;
        }
        Ok(())
    }
}

/// The permits an accepted link holds: one of `max_links` for its life, one
/// of `max_handshaking_links` until its Hello.
struct Admitted {
    link: OwnedSemaphorePermit,
    handshake: OwnedSemaphorePermit,
}

impl Server {
    /// Admits a new link under the connection caps, or drops it and says why.
    fn admit(&self, link: &dyn Link) -> Option<Admitted> {
        let refused = |why: String| {
            tracing::warn!(peer = %link.info().peer, "link closed at once: {why}");
            let _ = self.events.send(ServeEvent::Refused {
                peer: link.info().peer.clone(),
                why,
            });
            None
        };
        let Ok(link_permit) = self.links.clone().try_acquire_owned() else {
            return refused(format!(
                "{} links are open (serve.max_links)",
                self.cfg.caps.max_links
            ));
        };
        let Ok(handshake) = self.handshaking.clone().try_acquire_owned() else {
            return refused(format!(
                "{} links are in their handshake (serve.max_handshaking_links); a flood of silent connections?",
                self.cfg.caps.max_handshaking_links
            ));
        };
        Some(Admitted {
            link: link_permit,
            handshake,
        })
    }

    /// Counts one more link from `peer`, or `Err(links it has)` at the cap.
    fn peer_link(self: &Arc<Self>, peer: &str) -> Result<PeerLinkSlot, usize> {
        let mut m = self.peer_links.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(peer.to_string()).or_insert(0);
        if *n >= self.cfg.caps.max_links_per_peer {
            return Err(*n);
        }
        *n += 1;
        Ok(PeerLinkSlot {
            server: self.clone(),
            peer: peer.to_string(),
        })
    }

    /// Transfers being fed now (a link attached), in all and from `peer`.
    fn open_transfers(&self, peer: &str) -> (usize, usize) {
        let m = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let fed = m.values().filter(|s| s.is_fed());
        fed.fold((0, 0), |(all, mine), s| {
            (all + 1, mine + usize::from(s.peer == peer))
        })
    }

    /// `Some(Reject(Busy))` when one more transfer fed by `peer` would pass a
    /// cap. A stream already fed is no new load and is never refused.
    fn refuse_busy(&self, id: TransferId, peer: &str) -> Option<Reject> {
        if self.stream(&id).is_some_and(|s| s.is_fed()) {
            return None;
        }
        let caps = &self.cfg.caps;
        let (all, mine) = self.open_transfers(peer);
        let why = if all >= caps.max_open_transfers {
            format!("{all} transfers are open (serve.max_open_transfers)")
        } else if mine >= caps.max_open_transfers_per_peer {
            format!("{mine} of your transfers are open (serve.max_open_transfers_per_peer)")
        } else {
            return None;
        };
        Some(Reject {
            transfer_id: id,
            code: RejectCode::Busy,
            message: format!("the receiver is busy: {why}; wait and try again"),
        })
    }

    fn all_streams(&self) -> Vec<Arc<FileStream>> {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn stream(&self, id: &TransferId) -> Option<Arc<FileStream>> {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The stream of a transfer: in memory, else from the DB (after a restart).
    fn load(&self, id: &TransferId) -> Result<Option<Arc<FileStream>>, NodeError> {
        if let Some(s) = self.stream(id) {
            return Ok(Some(s));
        }
        let Some(rec) = self.state.store().get_transfer(id, Direction::Recv)? else {
            return Ok(None);
        };
        let s = FileStream::reopen(&self.state, &self.cfg, rec)?;
        let mut map = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Some(map.entry(*id).or_insert(s).clone()))
    }

    fn free_bytes(&self) -> Option<u64> {
        nix::sys::statvfs::statvfs(&self.dir)
            .ok()
            .map(|s| s.blocks_available() * s.fragment_size())
    }

    /// A transfer from `peer` that already landed here: the Accept a rerun
    /// of it gets (every chunk held), so nothing is sent or landed twice.
    fn finished_accept(&self, id: &TransferId, peer: &str) -> Result<Option<Body>, NodeError> {
        let Some(f) = self.state.store().finished_received(id)? else {
            return Ok(None);
        };
        if f.peer != peer {
            return Ok(None);
        }
        let chunks = gateway_engine::Geometry::new(f.size, f.chunk_size).chunks();
        tracing::info!(path = %f.path, "a rerun of a transfer that already landed; telling the sender it is done");
        Ok(Some(Body::Accept(gateway_proto::Accept {
            transfer_id: *id,
            have: if chunks == 0 {
                Vec::new()
            } else {
                vec![gateway_proto::Range {
                    start: 0,
                    end: chunks,
                }]
            },
        })))
    }

    /// The verdict on a Complete for a transfer that already landed.
    fn finished_verdict(
        &self,
        c: &gateway_proto::Complete,
        peer: &str,
    ) -> Option<gateway_proto::Verdict> {
        let f = self
            .state
            .store()
            .finished_received(&c.transfer_id)
            .ok()??;
        if f.peer != peer {
            return None;
        }
        let ok = f.file_hash == c.file_hash;
        Some(gateway_proto::Verdict {
            transfer_id: c.transfer_id,
            ok,
            bad_chunks: Vec::new(),
            message: if ok {
                format!("already received: {}", f.path)
            } else {
                format!(
                    "this transfer id landed here as {} with another hash; send the file again as a new transfer",
                    f.path
                )
            },
            round: c.round,
        })
    }

    fn on_offer(&self, offer: &Offer, peer: &str) -> Result<Body, NodeError> {
        if let Some(body) = self.finished_accept(&offer.transfer_id, peer)? {
            return Ok(body);
        }
        if let Some(s) = self.load(&offer.transfer_id)? {
            if s.peer != peer {
                return Ok(Body::Reject(Reject {
                    transfer_id: offer.transfer_id,
                    code: RejectCode::Other,
                    message: "that transfer id belongs to another peer".into(),
                }));
            }
            return Ok(Body::Accept(s.accept()));
        }
        if !crate::tree::valid_chunk_size(offer.chunk_size) {
            return Ok(Body::Reject(Reject {
                transfer_id: offer.transfer_id,
                code: RejectCode::Other,
                message: format!(
                    "chunk size {} is not a power of two of at least 1024 bytes",
                    offer.chunk_size
                ),
            }));
        }
        let needed = offer.size + self.cfg.reserve_free_bytes;
        if let Some(free) = self.free_bytes()
            && free < needed
        {
            return Ok(Body::Reject(Reject {
                transfer_id: offer.transfer_id,
                code: RejectCode::NoSpace,
                message: format!(
                    "not enough space in {}: {} needs {} bytes (with a {}-byte reserve), {} available",
                    self.dir.display(),
                    offer.name,
                    needed,
                    self.cfg.reserve_free_bytes,
                    free
                ),
            }));
        }
        let s = FileStream::create(&self.state, &self.cfg, &self.dir, offer, peer)?;
        let _ = self.events.send(ServeEvent::Started {
            name: offer.name.clone(),
            size: offer.size,
            resumed: 0,
        });
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(offer.transfer_id, s.clone());
        Ok(Body::Accept(s.accept()))
    }

    /// A Reload joins a transfer only if it belongs to the same peer key.
    fn on_reload(&self, reload: &Reload, peer: &str) -> Result<Option<Arc<FileStream>>, NodeError> {
        let Some(s) = self.load(&reload.transfer_id)? else {
            return Ok(None);
        };
        Ok((s.peer == peer).then_some(s))
    }
}

/// One accepted link: Noise handshake, Hello, then FILE frames until it
/// closes or misbehaves.
async fn serve_link(
    server: Arc<Server>,
    link: Box<dyn Link>,
    permits: Admitted,
    mut stop: watch::Receiver<bool>,
) {
    let Admitted {
        link: _link_permit,
        handshake: handshake_permit,
    } = permits;
    let info = link.info().clone();
    let cfg = &server.cfg;
    let secure = tokio::select! {
        _ = stop.changed() => return,
        r = gateway_secure::accept(link, &server.state.key, cfg.handshake_timeout) => r,
    };
    let link = match secure {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(peer = %info.peer, "handshake failed, link dropped: {e}");
            let _ = server.events.send(ServeEvent::Refused {
                peer: info.peer.clone(),
                why: format!("handshake failed: {e}"),
            });
            return;
        }
    };
    let remote = link.remote_id();
    let (mut tx, mut rx) = Box::new(link).split();
    let (otx, mut orx) = mpsc::channel::<Bytes>(256);
    // The link's writer: acks, checkpoints, verdicts, errors, in order.
    let writer = tokio::spawn(async move {
        while let Some(frame) = orx.recv().await {
            if let Err(e) = tx.send(&frame).await {
                tracing::debug!("link send failed: {e}");
                break;
            }
        }
        let _ = tx.close().await;
    });
    let hello = wire::hello(&server.state, &server.listening);
    let _ = otx.send(wire::encode(Body::Hello(hello))).await;
    let peer = tokio::select! {
        _ = stop.changed() => None,
        r = first_hello(&mut *rx, &cfg.limits, cfg.hello_timeout) => match r {
            Ok(h) if !trust::same_id(&h.node_id, remote.as_str()) => {
                refuse_with(
                    &server,
                    &otx,
                    &info.peer,
                    None,
                    ErrorCode::NotTrusted,
                    format!(
                        "Hello claims node id {} but the link's key is {remote}; refusing a peer that lies about its identity",
                        h.node_id
                    ),
                )
                .await;
                None
            }
            Ok(h) => Some(h),
            Err(e) => {
                refuse(&server, &otx, &info.peer, None, &e).await;
                None
            }
        }
    };
    // Past its Hello (or refused): no longer a handshaking link.
    drop(handshake_permit);
    let slot = match peer {
        Some(hello) => match server.peer_link(remote.as_str()) {
            Ok(slot) => Some((hello, slot)),
            Err(n) => {
                refuse_with(
                    &server,
                    &otx,
                    &info.peer,
                    None,
                    ErrorCode::Busy,
                    format!(
                        "this receiver already serves {n} links from your key (serve.max_links_per_peer); try again when one closes"
                    ),
                )
                .await;
                None
            }
        },
        None => None,
    };
    if let Some((hello, _slot)) = slot {
        match trust::record_hello(&server.state, cfg.trust, &remote, &hello, &info.peer) {
            Ok(rec) => {
                tracing::info!(peer = %hello.name, id = %remote, trust = %rec.trust, "hello")
            }
            Err(e) => tracing::warn!("peerstore: {e}"),
        }
        let who = Peer {
            id: remote,
            name: hello.name,
            addr: info.peer.clone(),
        };
        tokio::select! {
            _ = stop.changed() => {}
            () = file_loop(&server, &mut *rx, &otx, &who) => {}
        }
    }
    drop(otx);
    let _ = writer.await;
}

/// The verified peer on a link.
struct Peer {
    id: NodeId,
    name: String,
    addr: String,
}

impl Server {
    /// `Some(Reject)` unless `peer` may open a FILE stream now.
    fn refuse_untrusted(&self, peer: &Peer, transfer_id: TransferId) -> Option<Reject> {
        let decision = match trust::decide(&self.state, self.cfg.trust, &peer.id, &peer.name) {
            Ok(d) => d,
            Err(e) => {
                return Some(Reject {
                    transfer_id,
                    code: RejectCode::Other,
                    message: format!("cannot read the trust store: {e}"),
                });
            }
        };
        match decision {
            Decision::Trusted => None,
            Decision::Untrusted { hint } => Some(Reject {
                transfer_id,
                code: RejectCode::NotTrusted,
                message: hint,
            }),
            Decision::KeyChanged {
                name,
                known,
                presented,
            } => {
                tracing::error!(%name, %known, %presented, "a known peer name presents a different key");
                Some(Reject {
                    transfer_id,
                    code: RejectCode::NotTrusted,
                    message: format!(
                        "{name} was pinned to key {known} but this link presents {presented}; if the peer really changed its key, run `gateway untrust {known}` and pair again"
                    ),
                })
            }
        }
    }
}

async fn first_hello(
    rx: &mut dyn FrameRx,
    limits: &gateway_proto::Limits,
    timeout: std::time::Duration,
) -> Result<gateway_proto::Hello, WireError> {
    let f = wire::recv_within(rx, limits, timeout).await?;
    match f.body {
        Body::Hello(h) => Ok(h),
        _ => Err(WireError::Proto(gateway_proto::ProtoError::Malformed(
            "the first frame on a link must be Hello".into(),
        ))),
    }
}

/// Sends an Error frame for bad input and reports it.
async fn refuse(
    server: &Server,
    otx: &mpsc::Sender<Bytes>,
    peer: &str,
    id: Option<TransferId>,
    e: &WireError,
) {
    let code = match e {
        WireError::Proto(p) => p.code(),
        WireError::Timeout(_) => ErrorCode::Protocol, // idle past serve.link_idle_timeout
        WireError::Link(_) | WireError::Stalled(_) => return, // nothing to tell a dead link
    };
    refuse_with(server, otx, peer, id, code, e.to_string()).await;
}

async fn refuse_with(
    server: &Server,
    otx: &mpsc::Sender<Bytes>,
    peer: &str,
    id: Option<TransferId>,
    code: ErrorCode,
    msg: String,
) {
    tracing::warn!(%peer, "dropping link: {msg}");
    let body = wire::error_body(id, code, msg.clone());
    let _ = reply(otx, body, server.cfg.caps.link_idle_timeout).await;
    let _ = server.events.send(ServeEvent::Refused {
        peer: peer.to_string(),
        why: msg,
    });
}

async fn file_loop(
    server: &Arc<Server>,
    rx: &mut dyn FrameRx,
    otx: &mpsc::Sender<Bytes>,
    peer: &Peer,
) {
    let peer_id = peer.id.as_str();
    let peer_addr = peer.addr.as_str();
    // The stream this link last worked on (a link may carry several transfers).
    let mut current: Option<Arc<FileStream>> = None;
    // Transfers this link joined by Offer or Reload: the only ones it may feed.
    let mut joined: std::collections::HashSet<TransferId> = std::collections::HashSet::new();
    let idle = server.cfg.caps.link_idle_timeout;
    loop {
        let frame = match wire::recv_within(rx, &server.cfg.limits, idle).await {
            Ok(f) => f,
            Err(e) => {
                refuse(server, otx, peer_addr, current.as_ref().map(|s| s.id), &e).await;
                return;
            }
        };
        // Only a trusted key opens a FILE stream; anyone may say Hello.
        let refusal = match &frame.body {
            Body::Offer(o) => server
                .refuse_untrusted(peer, o.transfer_id)
                .or_else(|| server.refuse_busy(o.transfer_id, peer_id)),
            Body::Reload(r) => server
                .refuse_untrusted(peer, r.transfer_id)
                .or_else(|| server.refuse_busy(r.transfer_id, peer_id)),
            _ => None,
        };
        if let Some(r) = refusal {
            tracing::warn!(peer = %peer.id, name = %peer.name, "refused: {}", r.message);
            if !reply(otx, Body::Reject(r), idle).await {
                return;
            }
            continue;
        }
        match frame.body {
            Body::Offer(offer) => match server.on_offer(&offer, peer_id) {
                Ok(body) => {
                    if let Body::Accept(_) = body {
                        // A stream, or a transfer that already landed.
                        joined.insert(offer.transfer_id);
                        if let Some(s) = server.stream(&offer.transfer_id) {
                            s.attach(otx);
                            current = Some(s);
                        }
                    }
                    if !reply(otx, body, idle).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!("offer failed: {e}");
                    if !reply(
                        otx,
                        Body::Reject(Reject {
                            transfer_id: offer.transfer_id,
                            code: RejectCode::Other,
                            message: e.to_string(),
                        }),
                        idle,
                    )
                    .await
                    {
                        return;
                    }
                }
            },
            Body::Reload(reload) => match server.on_reload(&reload, peer_id) {
                Ok(Some(s)) => {
                    s.attach(otx);
                    joined.insert(reload.transfer_id);
                    if !reply(otx, Body::Accept(s.accept()), idle).await {
                        return;
                    }
                    current = Some(s);
                }
                Ok(None)
                    if let Ok(Some(body)) =
                        server.finished_accept(&reload.transfer_id, peer_id) =>
                {
                    joined.insert(reload.transfer_id);
                    if !reply(otx, body, idle).await {
                        return;
                    }
                }
                Ok(None) => {
                    refuse_with(
                        server,
                        otx,
                        peer_addr,
                        Some(reload.transfer_id),
                        ErrorCode::UnknownTransfer,
                        format!(
                            "no transfer {} here; send it again as a new transfer",
                            hex::encode(reload.transfer_id)
                        ),
                    )
                    .await;
                    return;
                }
                Err(e) => {
                    refuse_with(
                        server,
                        otx,
                        peer_addr,
                        Some(reload.transfer_id),
                        ErrorCode::Internal,
                        e.to_string(),
                    )
                    .await;
                    return;
                }
            },
            Body::Data(data) => {
                let s = match &current {
                    Some(s) if s.id == data.transfer_id => s.clone(),
                    _ => match server
                        .stream(&data.transfer_id)
                        .filter(|_| joined.contains(&data.transfer_id))
                    {
                        Some(s) => {
                            s.attach(otx);
                            current = Some(s.clone());
                            s
                        }
                        None => {
                            refuse_with(
                                server,
                                otx,
                                peer_addr,
                                Some(data.transfer_id),
                                ErrorCode::UnknownTransfer,
                                "Data for a transfer this link did not join with Offer or Reload"
                                    .into(),
                            )
                            .await;
                            return;
                        }
                    },
                };
                // A crash must never cost more than checkpoint_bytes: at the
                // budget, this link waits for the running checkpoint (and
                // makes the rest durable) before it writes more.
                if s.over_budget()
                    && let Err(e) = s.checkpoint(true).await
                {
                    tracing::warn!(name = %s.name, "checkpoint failed: {e}");
                }
                match s.write(&data) {
                    Ok(ack) => {
                        if !reply(otx, Body::Ack(ack), idle).await {
                            return;
                        }
                        if s.checkpoint_due() {
                            let s2 = s.clone();
                            tokio::spawn(async move {
                                if let Err(e) = s2.checkpoint(false).await {
                                    tracing::warn!(name = %s2.name, "checkpoint failed: {e}");
                                }
                            });
                        }
                    }
                    Err(DataError::Engine(e)) => {
                        refuse_with(server, otx, peer_addr, Some(s.id), e.code(), e.to_string())
                            .await;
                        return;
                    }
                    Err(DataError::Io { path, source }) => {
                        // Disk full or failing: keep what is durable, tell the
                        // sender to pause; nothing already on disk is touched.
                        let code = if source.raw_os_error() == Some(libc_enospc()) {
                            ErrorCode::DiskFull
                        } else {
                            ErrorCode::Io
                        };
                        let _ = s.checkpoint(true).await;
                        refuse_with(
                            server,
                            otx,
                            peer_addr,
                            Some(s.id),
                            code,
                            format!("receiver cannot write {path}: {source}"),
                        )
                        .await;
                        return;
                    }
                }
            }
            Body::Complete(c) => {
                let verdict_of_landed = || {
                    joined
                        .contains(&c.transfer_id)
                        .then(|| server.finished_verdict(&c, peer_id))
                        .flatten()
                };
                let loaded = server.load(&c.transfer_id).ok().flatten();
                if loaded.is_none()
                    && let Some(v) = verdict_of_landed()
                {
                    if !reply(otx, Body::Verdict(v), idle).await {
                        return;
                    }
                    continue;
                }
                let Some(s) = loaded.filter(|_| joined.contains(&c.transfer_id)) else {
                    refuse_with(
                        server,
                        otx,
                        peer_addr,
                        Some(c.transfer_id),
                        ErrorCode::UnknownTransfer,
                        "Complete for an unknown transfer".into(),
                    )
                    .await;
                    return;
                };
                match s.finish(&c).await {
                    Ok((verdict, path)) => {
                        let ok = verdict.ok;
                        if !reply(otx, Body::Verdict(verdict), idle).await {
                            return;
                        }
                        if ok {
                            server
                                .streams
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&c.transfer_id);
                            if let Some(path) = path {
                                tracing::info!(path = %path.display(), "received");
                                let size = s.size();
                                let _ = server
                                    .events
                                    .send(ServeEvent::Received { path, bytes: size });
                            }
                            current = None;
                        }
                    }
                    Err(e) => {
                        refuse_with(
                            server,
                            otx,
                            peer_addr,
                            Some(c.transfer_id),
                            ErrorCode::Io,
                            e.to_string(),
                        )
                        .await;
                        return;
                    }
                }
            }
            Body::Ping(n) => {
                if !reply(otx, Body::Pong(n), idle).await {
                    return;
                }
            }
            Body::Pong(_) | Body::Hello(_) => {}
            Body::Bye(_) => return,
            Body::Error(e) => {
                tracing::warn!(peer = %peer_addr, "peer error: {}", e.message);
                return;
            }
            other => {
                refuse_with(
                    server,
                    otx,
                    peer_addr,
                    None,
                    ErrorCode::Protocol,
                    format!("a sender does not send {}", body_name(&other)),
                )
                .await;
                return;
            }
        }
    }
}

/// Queues one frame for the link's writer, waiting at most `idle` for room.
/// `false`: the peer has not taken our frames for that long (it stopped
/// reading); the caller drops the link rather than wait on it for good.
async fn reply(otx: &mpsc::Sender<Bytes>, body: Body, idle: std::time::Duration) -> bool {
    otx.send_timeout(wire::encode(body), idle).await.is_ok()
}

fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

/// A body's name, for messages.
pub fn body_name(b: &Body) -> &'static str {
    match b {
        Body::Hello(_) => "Hello",
        Body::Offer(_) => "Offer",
        Body::Reload(_) => "Reload",
        Body::Accept(_) => "Accept",
        Body::Reject(_) => "Reject",
        Body::Data(_) => "Data",
        Body::Ack(_) => "Ack",
        Body::Checkpoint(_) => "Checkpoint",
        Body::Complete(_) => "Complete",
        Body::Verdict(_) => "Verdict",
        Body::Error(_) => "Error",
        Body::Ping(_) => "Ping",
        Body::Pong(_) => "Pong",
        Body::Bye(_) => "Bye",
    }
}

#[cfg(test)]
mod tests {
    use super::announce_form;

    #[test]
    fn a_wildcard_listener_is_announced_as_a_wildcard_with_its_real_port() {
        assert_eq!(
            announce_form("tcp:0.0.0.0:0", "tcp:127.0.0.1:4711"),
            "tcp:0.0.0.0:4711"
        );
        assert_eq!(
            announce_form("tcp::7878", "tcp:127.0.0.1:7878"),
            "tcp:0.0.0.0:7878"
        );
        assert_eq!(
            announce_form("tcp:[::]:7878?rate=1MB", "tcp:[::1]:7878"),
            "tcp:[::]:7878"
        );
        assert_eq!(
            announce_form("tcp:10.0.0.1:7878", "tcp:10.0.0.1:7878"),
            "tcp:10.0.0.1:7878"
        );
        assert_eq!(announce_form("mock:a", "mock:a"), "mock:a");
    }
}
