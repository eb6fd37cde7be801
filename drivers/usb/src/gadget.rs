//! The gadget (device) side: a configfs gadget with one FunctionFS function
//! (usb-gadget builds it, mounts FunctionFS and writes the descriptors), its
//! endpoints served with queued Linux AIO requests.
//!
//! One [`Gadget`] per UDC lives as long as the driver: links come and go on
//! it. A task reads ep0's events: the host's [`REQ_OPEN`] ends the session
//! before (its halves then fail), drops every queued transfer, and starts a
//! new session, which `accept`/`open` hand out; the function being disabled
//! (unplug, host reset, UDC unbound) ends the session too.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use gateway_link::{FrameRx, FrameTx, Link, LinkError, LinkInfo, OpenError};
use tokio::sync::{Mutex, mpsc, watch};
use usb_gadget::function::custom::{
    Custom, CustomBuilder, Endpoint, EndpointDirection, EndpointReceiver, EndpointSender, Event,
    Interface,
};
use usb_gadget::{Class, Config, Gadget as GadgetDef, Id, RegGadget, Strings, Udc};

use crate::wire::{self, HEADER_LEN, Item, REQ_OPEN, Reassembler};
use crate::{
    GADGET_NAME, INTERFACE_NAME, INTERFACE_PROTOCOL, INTERFACE_SUBCLASS, MAX_FRAME, PRODUCT_ID,
    TRANSFER_BYTES, TRANSFERS_IN_FLIGHT, UsbLink, VENDOR_ID,
};

/// How long a new session waits for the old one's halves to let go.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);
/// Max packet size when the endpoint cannot tell (high speed bulk).
const DEFAULT_MPS: usize = 512;

/// The endpoints, shared by the session halves and the event task.
struct Endpoints {
    tx: Mutex<EndpointSender>,
    rx: Mutex<EndpointReceiver>,
    /// The running session's "it is over" switch, and why it ended.
    current: StdMutex<Option<watch::Sender<bool>>>,
    why: StdMutex<String>,
}

impl Endpoints {
    fn end_session(&self, why: &str) {
        if let Some(s) = self.current.lock().unwrap().take() {
            *self.why.lock().unwrap() = why.to_string();
            let _ = s.send(true);
            tracing::debug!(why, "USB gadget session ended");
        }
    }
}

/// A gadget bound to a UDC, serving sessions.
pub(crate) struct Gadget {
    pub(crate) udc: String,
    sessions: Mutex<mpsc::Receiver<Session>>,
    task: tokio::task::JoinHandle<()>,
    reg: StdMutex<Option<RegGadget>>,
}

impl Drop for Gadget {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(reg) = self.reg.lock().unwrap().take()
            && let Err(e) = reg.remove()
        {
            tracing::warn!(error = %e, "removing the USB gadget failed");
        }
    }
}

/// One session, before it is handed out as a link.
pub(crate) struct Session {
    id: u64,
    eps: Arc<Endpoints>,
    dead: watch::Receiver<bool>,
    mps: usize,
    udc: String,
}

fn udc_error(e: io::Error, what: &str) -> OpenError {
    match e.kind() {
        io::ErrorKind::PermissionDenied => OpenError::PermissionDenied {
            what: format!("the USB gadget configuration ({what})"),
            fix: "building a gadget in configfs needs root (CAP_SYS_ADMIN); run the gadget side as root".into(),
        },
        io::ErrorKind::ResourceBusy => OpenError::Busy(format!("{what}: {e}")),
        io::ErrorKind::NotFound => OpenError::Unsupported(format!(
            "{what}: {e}; the gadget side needs configfs and FunctionFS: `modprobe libcomposite usb_f_fs` (and a UDC driver)"
        )),
        _ => OpenError::Io(io::Error::new(e.kind(), format!("{what}: {e}"))),
    }
}

/// Picks the UDC: the named one, or the first with no gadget bound.
fn pick_udc(name: Option<&str>) -> Result<Udc, OpenError> {
    let udcs = usb_gadget::udcs().map_err(|e| udc_error(e, "listing UDCs"))?;
    if udcs.is_empty() {
        return Err(OpenError::NotFound(
            "this machine has no USB device controller (nothing in /sys/class/udc): it cannot be the gadget end of a cable; open `usb:` from this side instead (the host end)".into(),
        ));
    }
    let names = || {
        udcs.iter()
            .map(|u| u.name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(n) => udcs.iter().find(|u| u.name() == n).cloned().ok_or_else(|| {
            OpenError::NotFound(format!("no UDC named {n}; this machine has: {}", names()))
        }),
        None => udcs
            .iter()
            .find(|u| u.function().ok().flatten().is_none())
            .cloned()
            .ok_or_else(|| OpenError::Busy(format!("every UDC has a gadget bound ({})", names()))),
    }
}

/// Removes a `gateway` gadget a killed process left behind; refuses one that
/// is bound (another process serves it).
fn clear_stale() -> Result<(), OpenError> {
    let registered = usb_gadget::registered().map_err(|e| udc_error(e, "listing gadgets"))?;
    for g in registered {
        if g.name() != GADGET_NAME {
            continue;
        }
        if let Ok(Some(udc)) = g.udc() {
            return Err(OpenError::Busy(format!(
                "the gateway gadget is bound to UDC {} by another process; stop it, or remove {}",
                udc.to_string_lossy(),
                g.path().display()
            )));
        }
        if let Some(dir) = prepared_mount() {
            return Err(OpenError::Busy(format!(
                "a gateway gadget prepared by `gateway usb-gadget setup` is here (FunctionFS at {dir}): serve it with usb:gadget?ffs={dir}, or remove it with `gateway usb-gadget teardown`"
            )));
        }
        tracing::info!(path = %g.path().display(), "removing a stale gateway gadget");
        g.remove()
            .map_err(|e| udc_error(e, "removing a stale gadget"))?;
    }
    Ok(())
}

/// The pieces of a gateway gadget before it is registered: the FunctionFS
/// function (one vendor interface, bulk OUT + bulk IN, each with
/// [`TRANSFERS_IN_FLIGHT`] AIO requests queued), its endpoints, and a
/// one-configuration gadget with the gateway's identity.
#[doc(hidden)]
pub struct GadgetParts {
    /// ep0: events and control requests.
    pub custom: Custom,
    /// Bulk IN (device to host).
    pub tx: EndpointSender,
    /// Bulk OUT (host to device).
    pub rx: EndpointReceiver,
    /// The gadget; set its `name` and register it.
    pub def: GadgetDef,
}

/// The gateway function: one vendor interface, bulk OUT + bulk IN, each
/// with [`TRANSFERS_IN_FLIGHT`] AIO requests queued.
fn function() -> (CustomBuilder, EndpointSender, EndpointReceiver) {
    let (rx, rx_dir) = EndpointDirection::host_to_device();
    let (tx, tx_dir) = EndpointDirection::device_to_host();
    let queue = u32::try_from(TRANSFERS_IN_FLIGHT).expect("small");
    let builder = Custom::builder().with_interface(
        Interface::new(
            Class::vendor_specific(INTERFACE_SUBCLASS, INTERFACE_PROTOCOL),
            INTERFACE_NAME,
        )
        .with_endpoint(Endpoint::bulk(rx_dir.with_queue_len(queue)))
        .with_endpoint(Endpoint::bulk(tx_dir.with_queue_len(queue))),
    );
    (builder, tx, rx)
}

/// A one-configuration gadget with the gateway's identity around `handle`.
fn definition(product: &str, serial: &str, handle: usb_gadget::function::Handle) -> GadgetDef {
    GadgetDef::new(
        Class::INTERFACE_SPECIFIC,
        Id::new(VENDOR_ID, PRODUCT_ID),
        Strings::new("gateway", product, serial),
    )
    .with_config(Config::new("gateway").with_function(handle))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && h != "(none)")
        .unwrap_or_else(|| "gateway".into())
}

/// Where the gateway gadget's FunctionFS is mounted by `usb-gadget setup`
/// (not under `/dev/ffs-*`, where a process's own `usb:gadget` mounts it).
fn prepared_mount() -> Option<String> {
    let functions = std::fs::read_dir(gadget_dir().join("functions")).ok()?;
    let instances: Vec<String> = functions
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("ffs."))
                .map(String::from)
        })
        .collect();
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (src, dest, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "functionfs"
            && instances.iter().any(|i| i == src)
            && !dest.starts_with("/dev/ffs-"))
        .then(|| dest.to_string())
    })
}

/// A gateway gadget's parts, with `product` and `serial` as its strings
/// (also used by the raw bulk loop, so both run the same descriptors).
#[doc(hidden)]
pub fn parts(product: &str, serial: &str) -> GadgetParts {
    let (builder, tx, rx) = function();
    let (custom, handle) = builder.build();
    GadgetParts {
        custom,
        tx,
        rx,
        def: definition(product, serial, handle),
    }
}

/// The configfs directory of the gateway gadget.
fn gadget_dir() -> PathBuf {
    Path::new("/sys/kernel/config/usb_gadget").join(GADGET_NAME)
}

/// `gateway usb-gadget setup`: registers the gateway gadget (unbound), with
/// its FunctionFS mounted at `ffs_dir` and owned by `uid:gid`, and its `UDC`
/// attribute owned by them too. A process of that user then serves it with
/// `usb:gadget?ffs=DIR` without root: it writes the descriptors and binds
/// the UDC itself. With `acm`, the gadget also has a CDC-ACM function
/// (`/dev/ttyGS0` here, `/dev/ttyACM0` on the host) for the serial driver.
/// Returns the gadget's configfs directory.
pub fn setup(ffs_dir: &Path, uid: u32, gid: u32, acm: bool) -> Result<PathBuf, OpenError> {
    clear_stale()?;
    if let Some(parent) = ffs_dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| udc_error(e, &format!("creating {}", parent.display())))?;
    }
    let (mut builder, _tx, _rx) = function();
    builder.ffs_dir = Some(ffs_dir.to_path_buf());
    builder.ffs_uid = Some(uid);
    builder.ffs_gid = Some(gid);
    builder.ffs_no_init = true;
    let (_custom, handle) = builder.build();
    let mut def = definition("gateway link", &hostname(), handle);
    if acm {
        let (_serial, acm_handle) = usb_gadget::function::serial::Serial::new(
            usb_gadget::function::serial::SerialClass::Acm,
        );
        def.configs[0].add_function(acm_handle);
    }
    def.name = Some(GADGET_NAME.into());
    let mut reg = def
        .register()
        .map_err(|e| udc_error(e, "registering the gadget"))?;
    let dir = reg.path().to_path_buf();
    let udc_attr = dir.join("UDC");
    std::os::unix::fs::chown(&udc_attr, Some(uid), Some(gid))
        .map_err(|e| udc_error(e, &format!("chown {}", udc_attr.display())))?;
    // Outlives this process: the serving process binds it, teardown removes it.
    reg.detach();
    Ok(dir)
}

/// `gateway usb-gadget teardown`: unbinds and removes the gateway gadget
/// (and unmounts its FunctionFS). False when there was none.
pub fn teardown() -> Result<bool, OpenError> {
    let registered = usb_gadget::registered().map_err(|e| udc_error(e, "listing gadgets"))?;
    let mut found = false;
    for g in registered.into_iter().filter(|g| g.name() == GADGET_NAME) {
        g.remove()
            .map_err(|e| udc_error(e, "removing the gateway gadget"))?;
        found = true;
    }
    Ok(found)
}

impl Gadget {
    /// Builds the gadget, binds it to a UDC and starts serving ep0.
    pub(crate) fn start(udc: Option<&str>, ffs: Option<&Path>) -> Result<Gadget, OpenError> {
        let udc = pick_udc(udc)?;
        let udc_name = udc.name().to_string_lossy().into_owned();
        let (mut custom, tx, rx, reg) = match ffs {
            None => {
                clear_stale()?;
                let GadgetParts {
                    custom,
                    tx,
                    rx,
                    mut def,
                } = parts("gateway link", &hostname());
                def.name = Some(GADGET_NAME.into());
                let reg = def
                    .register()
                    .map_err(|e| udc_error(e, "registering the gadget"))?;
                reg.bind(Some(&udc))
                    .map_err(|e| udc_error(e, &format!("binding UDC {udc_name}")))?;
                (custom, tx, rx, Some(reg))
            }
            Some(dir) => {
                // Set up by `gateway usb-gadget setup`: write the descriptors,
                // then bind (the UDC attribute is ours to write).
                let (builder, tx, rx) = function();
                let custom = builder.existing(dir).map_err(|e| {
                    udc_error(
                        e,
                        &format!(
                            "writing descriptors to {}/ep0 (is `gateway usb-gadget setup` done, and is it free?)",
                            dir.display()
                        ),
                    )
                })?;
                let attr = gadget_dir().join("UDC");
                std::fs::write(&attr, &udc_name).map_err(|e| {
                    udc_error(e, &format!("binding UDC {udc_name} ({})", attr.display()))
                })?;
                (custom, tx, rx, None)
            }
        };
        tracing::info!(udc = %udc_name, "USB gadget bound");
        let eps = Arc::new(Endpoints {
            tx: Mutex::new(tx),
            rx: Mutex::new(rx),
            current: StdMutex::new(None),
            why: StdMutex::new(String::new()),
        });
        let (sessions_tx, sessions_rx) = mpsc::channel(4);
        let task_udc = udc_name.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = serve_ep0(&mut custom, &eps, &sessions_tx, &task_udc).await {
                tracing::warn!(error = %e, "USB gadget ep0 failed");
            }
            eps.end_session("the gadget's control endpoint failed");
        });
        Ok(Gadget {
            udc: udc_name,
            sessions: Mutex::new(sessions_rx),
            task,
            reg: StdMutex::new(reg),
        })
    }

    /// Waits for the host's next session.
    pub(crate) async fn next_session(&self) -> Result<Session, LinkError> {
        let mut rx = self.sessions.lock().await;
        loop {
            let s = rx.recv().await.ok_or_else(|| {
                LinkError::Io(io::Error::other(
                    "the USB gadget stopped serving (ep0 failed)",
                ))
            })?;
            // A session the host already replaced is of no use.
            if !*s.dead.borrow() {
                return Ok(s);
            }
        }
    }
}

/// Reads ep0 events until it fails.
async fn serve_ep0(
    custom: &mut Custom,
    eps: &Arc<Endpoints>,
    sessions: &mpsc::Sender<Session>,
    udc: &str,
) -> io::Result<()> {
    loop {
        custom.wait_event().await?;
        let ev = custom.event()?;
        match ev {
            Event::SetupDeviceToHost(req)
                if req.ctrl_req().request == REQ_OPEN
                    && req.ctrl_req().request_type & 0x60 == 0x40 =>
            {
                eps.end_session("the host opened a new session");
                let id: u64 = rand::random();
                let (dead_tx, dead_rx) = watch::channel(false);
                let mps = {
                    let (mut tx, mut rx) = tokio::time::timeout(RELEASE_TIMEOUT, async {
                        (eps.tx.lock().await, eps.rx.lock().await)
                    })
                    .await
                    .map_err(|_| {
                        io::Error::other("an old USB session did not let go of its endpoints")
                    })?;
                    tx.cancel()?;
                    rx.cancel()?;
                    // Reads queued from the start: the host's first frames
                    // (and a close) complete even before anyone calls recv.
                    for _ in 0..TRANSFERS_IN_FLIGHT {
                        rx.try_recv(BytesMut::with_capacity(TRANSFER_BYTES))?;
                    }
                    tx.max_packet_size().unwrap_or(DEFAULT_MPS).max(1)
                };
                *eps.current.lock().unwrap() = Some(dead_tx);
                let n = req.send(&id.to_be_bytes())?;
                if n != 8 {
                    eps.end_session("the session reply was cut short");
                    continue;
                }
                let session = Session {
                    id,
                    eps: eps.clone(),
                    dead: dead_rx,
                    mps,
                    udc: udc.to_string(),
                };
                // Our hello goes first, so the host can tell it from stale bytes.
                let mut tx = GadgetTx {
                    eps: eps.clone(),
                    dead: session.dead.clone(),
                    mps,
                    closed: false,
                };
                if let Err(e) = tx.send(&wire::hello(id)).await {
                    tracing::debug!(error = %e, "USB gadget hello failed");
                    continue;
                }
                tracing::debug!(session = %format!("{id:016x}"), "USB gadget session open");
                tokio::spawn(async move {
                    let mut dead = tx.dead.clone();
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep(wire::KEEPALIVE_INTERVAL) => {}
                            () = ended(&mut dead) => return,
                        }
                        if tx.send_raw(wire::KEEPALIVE, &[]).await.is_err() {
                            return;
                        }
                    }
                });
                if sessions.try_send(session).is_err() {
                    tracing::debug!("no one takes USB sessions now; this one is dropped");
                }
            }
            Event::SetupDeviceToHost(req) => req.halt()?,
            Event::SetupHostToDevice(req) => req.halt()?,
            Event::Disable => {
                eps.end_session("the USB host disabled the function (unplugged or reset)")
            }
            Event::Unbind => eps.end_session("the gadget was unbound from its UDC"),
            other => tracing::trace!(event = ?other, "USB gadget event"),
        }
    }
}

/// Resolves when the session is over (or its switch is gone).
async fn ended(dead: &mut watch::Receiver<bool>) {
    let _ = dead.wait_for(|d| *d).await;
}

fn gone(eps: &Endpoints) -> LinkError {
    let why = eps.why.lock().unwrap().clone();
    LinkError::Io(io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("USB session ended: {why}"),
    ))
}

impl Session {
    pub(crate) fn into_link(self, selector: &str) -> Box<dyn Link> {
        Box::new(UsbLink {
            info: LinkInfo {
                selector: selector.to_string(),
                local: format!("usb gadget on {}", self.udc),
                peer: "usb host".into(),
            },
            tx: GadgetTx {
                eps: self.eps.clone(),
                dead: self.dead.clone(),
                mps: self.mps,
                closed: false,
            },
            rx: GadgetRx {
                eps: self.eps,
                dead: self.dead,
                id: self.id,
                hello_seen: false,
                primed: true,
                closed: false,
                frames: Reassembler::new(MAX_FRAME),
            },
        })
    }
}

struct GadgetTx {
    eps: Arc<Endpoints>,
    dead: watch::Receiver<bool>,
    mps: usize,
    closed: bool,
}

impl GadgetTx {
    /// Queues `header` + `body` in pieces of [`TRANSFER_BYTES`], then a
    /// zero-length packet if the last piece ends on a packet boundary.
    async fn send_raw(&mut self, header: [u8; HEADER_LEN], body: &[u8]) -> Result<(), LinkError> {
        if self.closed {
            return Err(LinkError::Closed);
        }
        if *self.dead.borrow() {
            return Err(gone(&self.eps));
        }
        let eps = self.eps.clone();
        let mut dead = self.dead.clone();
        let mps = self.mps;
        let work = async move {
            let mut tx = eps.tx.lock().await;
            let mut rest = body;
            let mut first = true;
            loop {
                let room = TRANSFER_BYTES - if first { HEADER_LEN } else { 0 };
                let take = rest.len().min(room);
                let mut piece = BytesMut::with_capacity(take + HEADER_LEN);
                if first {
                    piece.put_slice(&header);
                    first = false;
                }
                piece.put_slice(&rest[..take]);
                rest = &rest[take..];
                let len = piece.len();
                tx.send_async(piece.freeze()).await?;
                if rest.is_empty() {
                    if len.is_multiple_of(mps) {
                        // A zero-length packet ends the host's read here.
                        tx.send_async(Bytes::new()).await?;
                    }
                    return Ok::<(), io::Error>(());
                }
            }
        };
        tokio::select! {
            r = work => r.map_err(LinkError::Io),
            () = ended(&mut dead) => Err(gone(&self.eps)),
        }
    }
}

#[async_trait]
impl FrameTx for GadgetTx {
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.send_raw(wire::header(frame.len(), MAX_FRAME)?, frame)
            .await
    }

    async fn close(&mut self) -> Result<(), LinkError> {
        self.send_raw(wire::CLOSE, &[]).await?;
        self.closed = true;
        let eps = self.eps.clone();
        let mut dead = self.dead.clone();
        tokio::select! {
            r = async { eps.tx.lock().await.flush_async().await } => r.map_err(LinkError::Io),
            () = ended(&mut dead) => Err(gone(&self.eps)),
        }
    }
}

struct GadgetRx {
    eps: Arc<Endpoints>,
    dead: watch::Receiver<bool>,
    id: u64,
    hello_seen: bool,
    primed: bool,
    closed: bool,
    frames: Reassembler,
}

#[async_trait]
impl FrameRx for GadgetRx {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        loop {
            if self.closed {
                return Err(LinkError::Closed);
            }
            match self.frames.next_frame()? {
                Some(Item::Frame(f)) if !self.hello_seen => {
                    wire::check_hello(&f, self.id)?;
                    self.hello_seen = true;
                    continue;
                }
                Some(Item::Frame(f)) => return Ok(f),
                Some(Item::Close) => {
                    self.closed = true;
                    return Err(LinkError::Closed);
                }
                Some(Item::Keepalive) => continue,
                None => {}
            }
            if *self.dead.borrow() {
                return Err(gone(&self.eps));
            }
            let eps = self.eps.clone();
            let mut dead = self.dead.clone();
            let primed = &mut self.primed;
            let fetched = async {
                let mut rx = eps.rx.lock().await;
                if !*primed {
                    for _ in 0..TRANSFERS_IN_FLIGHT {
                        rx.try_recv(BytesMut::with_capacity(TRANSFER_BYTES))?;
                    }
                    *primed = true;
                }
                let chunk = rx.fetch_async().await?;
                // Keep the queue full: one buffer back for each filled.
                rx.try_recv(BytesMut::with_capacity(TRANSFER_BYTES))?;
                Ok::<_, io::Error>(chunk)
            };
            let chunk = tokio::select! {
                r = fetched => r.map_err(LinkError::Io)?,
                () = ended(&mut dead) => return Err(gone(&self.eps)),
                () = tokio::time::sleep(wire::SILENCE_TIMEOUT) => {
                    // The host is not told to us when its process dies: its
                    // keepalives stopping is how we learn it.
                    self.eps.end_session(&format!(
                        "nothing from the USB host for {:?}, not even a keepalive: it is gone",
                        wire::SILENCE_TIMEOUT
                    ));
                    return Err(gone(&self.eps));
                }
            };
            match chunk {
                Some(c) => self.frames.push(&c),
                None => self.primed = false,
            }
        }
    }
}
