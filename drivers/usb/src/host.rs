//! The host side: nusb over usbfs (pure Rust, no libusb). Finds the gateway
//! interface by class, claims it, starts a session with [`REQ_OPEN`] and
//! keeps [`TRANSFERS_IN_FLIGHT`] bulk transfers queued each way.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gateway_link::{FrameRx, FrameTx, Link, LinkError, LinkInfo, Listener, OpenError};
use nusb::descriptors::TransferType;
use nusb::io::{EndpointRead, EndpointWrite};
use nusb::transfer::{Bulk, ControlIn, ControlType, Direction, In, Out, Recipient};
use nusb::{DeviceInfo, ErrorKind};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::wire::{self, Item, OPEN_REPLY_LEN, REQ_OPEN, Reassembler};
use crate::{
    INTERFACE_CLASS, INTERFACE_PROTOCOL, INTERFACE_SUBCLASS, MAX_FRAME, TRANSFER_BYTES,
    TRANSFERS_IN_FLIGHT, UsbLink,
};

/// How long the session request and the gadget's hello may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a host-side listener looks for a gateway device.
const LISTEN_POLL: Duration = Duration::from_millis(500);
/// How long `open` retries a device whose interface is busy.
const BUSY_WAIT: Duration = Duration::from_secs(1);
/// Sessions tried before giving up on a device whose first frame was stale.
const SESSION_ATTEMPTS: usize = 3;

/// Which devices a host-side selector accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HostFilter {
    pub(crate) vid_pid: Option<(u16, u16)>,
    pub(crate) serial: Option<String>,
}

impl HostFilter {
    fn accepts(&self, d: &DeviceInfo) -> bool {
        self.vid_pid
            .is_none_or(|(v, p)| d.vendor_id() == v && d.product_id() == p)
            && self
                .serial
                .as_deref()
                .is_none_or(|s| d.serial_number() == Some(s))
    }
}

/// The gateway interface of a device, if it has one.
pub(crate) fn gateway_interface(d: &DeviceInfo) -> Option<u8> {
    d.interfaces()
        .find(|i| {
            i.class() == INTERFACE_CLASS
                && i.subclass() == INTERFACE_SUBCLASS
                && i.protocol() == INTERFACE_PROTOCOL
        })
        .map(|i| i.interface_number())
}

/// `BUS-PORT.PORT 1d6b:0104 SERIAL`, for logs and link info.
pub(crate) fn describe(d: &DeviceInfo) -> String {
    format!(
        "{} {:04x}:{:04x}{}",
        d.sysfs_path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{}-{}", d.busnum(), d.device_address())),
        d.vendor_id(),
        d.product_id(),
        d.serial_number()
            .map(|s| format!(" {s}"))
            .unwrap_or_default()
    )
}

/// The kernel driver holding interface `intf` of `d` ("usbfs" when a
/// process claimed it), from sysfs.
pub(crate) fn interface_driver(d: &DeviceInfo, intf: u8) -> Option<String> {
    let dev = d.sysfs_path();
    let name = dev.file_name()?.to_str()?.to_string();
    std::fs::read_dir(dev)
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix(&name)
                    .and_then(|r| r.strip_prefix(':'))
                    .and_then(|r| r.split_once('.'))
                    .is_some_and(|(_, i)| i.parse::<u8>().ok() == Some(intf))
            })
        })
        .find_map(|e| crate::probe::link_name(&e.path().join("driver")))
}

/// The usbfs node of a device, for permission errors.
pub(crate) fn node(d: &DeviceInfo) -> String {
    format!("/dev/bus/usb/{:03}/{:03}", d.busnum(), d.device_address())
}

/// The devices on the bus with a gateway interface that `filter` accepts.
pub(crate) async fn matching(filter: &HostFilter) -> Result<Vec<(DeviceInfo, u8)>, OpenError> {
    let list = nusb::list_devices().await.map_err(|e| {
        OpenError::Unsupported(format!(
            "cannot list USB devices ({e}); is /sys/bus/usb there (a USB host controller)?"
        ))
    })?;
    Ok(list
        .filter(|d| filter.accepts(d))
        .filter_map(|d| gateway_interface(&d).map(|i| (d, i)))
        .collect())
}

fn open_error(d: &DeviceInfo, what: &str, e: nusb::Error) -> OpenError {
    match e.kind() {
        ErrorKind::PermissionDenied => OpenError::PermissionDenied {
            what: format!("{} ({})", node(d), describe(d)),
            fix: crate::probe::open_permission_fix(
                std::path::Path::new(&node(d)),
                d.vendor_id(),
                d.product_id(),
            ),
        },
        ErrorKind::Busy => OpenError::Busy(format!(
            "the gateway interface of {} is claimed by another process or kernel driver ({what}: {e})",
            describe(d)
        )),
        ErrorKind::NotFound | ErrorKind::Disconnected => {
            OpenError::NotFound(format!("{} went away ({what}: {e})", describe(d)))
        }
        _ => OpenError::Io(std::io::Error::other(format!(
            "{}: {what}: {e}",
            describe(d)
        ))),
    }
}

/// Opens the first device `filter` accepts, as a link.
pub(crate) async fn open(filter: &HostFilter, selector: &str) -> Result<Box<dyn Link>, OpenError> {
    let found = matching(filter).await?;
    if found.is_empty() {
        return Err(OpenError::NotFound(format!(
            "no USB device with a gateway interface{} is attached; is the cable in and is the other end running `gateway serve --listen usb:gadget`? `gateway links` lists the USB devices here",
            filter
                .vid_pid
                .map(|(v, p)| format!(" ({v:04x}:{p:04x})"))
                .unwrap_or_default()
        )));
    }
    // A link of this process dropped a moment ago may still hold the
    // interface (usbfs releases it shortly after): busy is retried a while.
    let give_up = tokio::time::Instant::now() + BUSY_WAIT;
    loop {
        let mut last = None;
        for (d, intf) in &found {
            match connect(d, *intf, selector).await {
                Ok(link) => return Ok(Box::new(link)),
                Err(e) => {
                    tracing::debug!(device = %describe(d), error = %e, "USB open failed");
                    last = Some(e);
                }
            }
        }
        let e = last.expect("at least one device was tried");
        if !matches!(e, OpenError::Busy(_)) || tokio::time::Instant::now() >= give_up {
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Claims `intf` of `d` and runs the session handshake.
async fn connect(
    d: &DeviceInfo,
    intf: u8,
    selector: &str,
) -> Result<UsbLink<HostTx, HostRx>, OpenError> {
    let dev = d.open().await.map_err(|e| open_error(d, "open", e))?;
    let iface = dev
        .claim_interface(intf)
        .await
        .map_err(|e| open_error(d, "claim", e))?;
    let desc = iface.descriptor().ok_or_else(|| {
        OpenError::Unsupported(format!(
            "{}: interface {intf} has no descriptor",
            describe(d)
        ))
    })?;
    let bulk = |dir: Direction| {
        let eps: Vec<u8> = desc
            .endpoints()
            .filter(|e| e.transfer_type() == TransferType::Bulk && e.direction() == dir)
            .map(|e| e.address())
            .collect();
        match eps[..] {
            [one] => Ok(one),
            _ => Err(OpenError::Unsupported(format!(
                "{} has the gateway interface but {} bulk {dir:?} endpoints, not one: not a gateway gadget (or another version)",
                describe(d),
                eps.len()
            ))),
        }
    };
    let (ep_in, ep_out) = (bulk(Direction::In)?, bulk(Direction::Out)?);
    let info = LinkInfo {
        selector: selector.to_string(),
        local: "usb host".into(),
        peer: describe(d),
    };
    let mut last = None;
    for attempt in 1..=SESSION_ATTEMPTS {
        let reply = timeout(
            SESSION_TIMEOUT,
            iface.control_in(
                ControlIn {
                    control_type: ControlType::Vendor,
                    recipient: Recipient::Interface,
                    request: REQ_OPEN,
                    value: 0,
                    index: intf.into(),
                    length: OPEN_REPLY_LEN,
                },
                SESSION_TIMEOUT,
            ),
        )
        .await
        .map_err(|_| OpenError::Timeout(format!("{}: session request", describe(d))))?
        .map_err(|e| {
            OpenError::Refused(format!(
                "{} did not accept the gateway session request ({e}); is a gateway node running on the gadget side?",
                describe(d)
            ))
        })?;
        let id = <[u8; 8]>::try_from(&reply[..])
            .map(u64::from_be_bytes)
            .map_err(|_| {
                OpenError::Refused(format!(
                    "{} answered the session request with {} bytes, not 8",
                    describe(d),
                    reply.len()
                ))
            })?;
        let endpoint_error = |e| open_error(d, "endpoint", e);
        let mut reader = iface
            .endpoint::<Bulk, In>(ep_in)
            .map_err(endpoint_error)?
            .reader(TRANSFER_BYTES)
            .with_num_transfers(TRANSFERS_IN_FLIGHT);
        let mut writer = iface
            .endpoint::<Bulk, Out>(ep_out)
            .map_err(endpoint_error)?
            .writer(TRANSFER_BYTES)
            .with_num_transfers(TRANSFERS_IN_FLIGHT);
        let mut frames = Reassembler::new(MAX_FRAME);
        let first = match timeout(SESSION_TIMEOUT, next_item(&mut reader, &mut frames)).await {
            Err(_) => Err(LinkError::Timeout),
            Ok(Ok(Item::Frame(f))) => Ok(f),
            Ok(Ok(_)) => Err(LinkError::Closed),
            Ok(Err(e)) => Err(e),
        };
        match first.and_then(|f| wire::check_hello(&f, id)) {
            Ok(()) => {
                send_frame(&mut writer, &wire::hello(id))
                    .await
                    .map_err(|e| {
                        OpenError::Io(std::io::Error::other(format!(
                            "{}: hello: {e}",
                            describe(d)
                        )))
                    })?;
                tracing::debug!(device = %describe(d), session = %format!("{id:016x}"), "USB session open");
                return Ok(UsbLink {
                    info,
                    tx: HostTx::new(writer),
                    rx: HostRx {
                        reader,
                        frames,
                        closed: false,
                    },
                });
            }
            Err(e) => {
                tracing::debug!(device = %describe(d), attempt, error = %e, "USB session hello failed");
                last = Some(e);
            }
        }
    }
    Err(OpenError::Refused(format!(
        "{}: no clean session after {SESSION_ATTEMPTS} tries ({})",
        describe(d),
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// A failed bulk transfer, said as what it most often means.
fn transfer_error(e: LinkError) -> LinkError {
    match e {
        LinkError::Io(e) => LinkError::Io(std::io::Error::new(
            e.kind(),
            format!("USB transfer failed ({e}): unplugged, or the gadget end stopped or reset"),
        )),
        other => other,
    }
}

/// Writes one frame (or, with `header` = [`wire::CLOSE`] and no body, the
/// close) and submits it, ending with a short or zero-length packet so the
/// gadget's read completes there.
async fn send_raw(
    w: &mut EndpointWrite<Bulk>,
    header: [u8; wire::HEADER_LEN],
    body: &[u8],
) -> Result<(), LinkError> {
    w.write_all(&header).await?;
    w.write_all(body).await?;
    w.submit_end();
    Ok(())
}

async fn send_frame(w: &mut EndpointWrite<Bulk>, frame: &[u8]) -> Result<(), LinkError> {
    send_raw(w, wire::header(frame.len(), MAX_FRAME)?, frame).await
}

/// The next frame or close from the IN pipe. Cancel-safe: bytes move from
/// the reader's buffer into `frames` with no await in between.
async fn next_item(
    reader: &mut EndpointRead<Bulk>,
    frames: &mut Reassembler,
) -> Result<Item, LinkError> {
    loop {
        match frames.next_frame()? {
            Some(Item::Keepalive) => continue,
            Some(item) => return Ok(item),
            None => {}
        }
        let buf = timeout(wire::SILENCE_TIMEOUT, reader.fill_buf())
            .await
            .map_err(|_| {
                LinkError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "nothing from the gadget for {:?}, not even a keepalive: it is gone",
                        wire::SILENCE_TIMEOUT
                    ),
                ))
            })??;
        if buf.is_empty() {
            return Err(LinkError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let n = buf.len();
        frames.push(buf);
        reader.consume(n);
    }
}

/// How long `close` (or a dropped sending half) waits for what it sent to be
/// taken by the gadget.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

type SharedWriter = Arc<tokio::sync::Mutex<Option<EndpointWrite<Bulk>>>>;

struct HostTx {
    /// Shared with the keepalive task; None once closed or dropped.
    writer: SharedWriter,
    keepalive: tokio::task::JoinHandle<()>,
}

impl HostTx {
    fn new(writer: EndpointWrite<Bulk>) -> HostTx {
        let writer: SharedWriter = Arc::new(tokio::sync::Mutex::new(Some(writer)));
        let w = Arc::downgrade(&writer);
        let keepalive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(wire::KEEPALIVE_INTERVAL).await;
                let Some(w) = w.upgrade() else { return };
                let mut g = w.lock().await;
                let Some(w) = g.as_mut() else { return };
                if send_raw(w, wire::KEEPALIVE, &[]).await.is_err() {
                    return;
                }
            }
        });
        HostTx { writer, keepalive }
    }
}

#[async_trait]
impl FrameTx for HostTx {
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        let mut g = self.writer.lock().await;
        let w = g.as_mut().ok_or(LinkError::Closed)?;
        send_frame(w, frame).await.map_err(transfer_error)
    }
    async fn close(&mut self) -> Result<(), LinkError> {
        self.keepalive.abort();
        let mut w = self.writer.lock().await.take().ok_or(LinkError::Closed)?;
        send_raw(&mut w, wire::CLOSE, &[])
            .await
            .map_err(transfer_error)?;
        timeout(FLUSH_TIMEOUT, w.flush_end_async())
            .await
            .map_err(|_| LinkError::Timeout)?
            .map_err(|e| transfer_error(e.into()))
    }
}

impl Drop for HostTx {
    /// Frames `send` accepted still go out (nusb would cancel them with the
    /// endpoint), as a socket's buffered bytes do after it is dropped.
    fn drop(&mut self) {
        self.keepalive.abort();
        let writer = self.writer.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(mut w) = writer.lock().await.take() {
                    let _ = timeout(FLUSH_TIMEOUT, w.flush_end_async()).await;
                }
            });
        }
    }
}

struct HostRx {
    reader: EndpointRead<Bulk>,
    frames: Reassembler,
    closed: bool,
}

#[async_trait]
impl FrameRx for HostRx {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        if self.closed {
            return Err(LinkError::Closed);
        }
        match next_item(&mut self.reader, &mut self.frames)
            .await
            .map_err(transfer_error)?
        {
            Item::Frame(f) => Ok(f),
            Item::Close | Item::Keepalive => {
                self.closed = true;
                Err(LinkError::Closed)
            }
        }
    }
}

/// A host-side listener: takes the next gateway device that appears (or is
/// there and free), polling the bus.
pub(crate) struct HostListener {
    pub(crate) filter: HostFilter,
    pub(crate) selector: String,
}

#[async_trait]
impl Listener for HostListener {
    fn local_selector(&self) -> String {
        self.selector.clone()
    }
    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        loop {
            let found = matching(&self.filter)
                .await
                .map_err(|e| LinkError::Io(std::io::Error::other(e.to_string())))?;
            // Claimed (by a link of ours, or anyone): not ours to take.
            for (d, intf) in found
                .into_iter()
                .filter(|(d, i)| interface_driver(d, *i).is_none())
            {
                match connect(&d, intf, &self.selector).await {
                    Ok(link) => return Ok(Box::new(link)),
                    // In use by a link of ours (or someone else's): not news.
                    Err(OpenError::Busy(_)) => {}
                    Err(e) => {
                        tracing::debug!(device = %describe(&d), error = %e, "USB accept failed")
                    }
                }
            }
            tokio::time::sleep(LISTEN_POLL).await;
        }
    }
}
