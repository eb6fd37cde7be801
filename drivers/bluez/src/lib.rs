//! gateway-bluez: Bluetooth link drivers over BlueZ, through bluer.
//!
//! - `rfcomm:` — an RFCOMM stream (BR/EDR). Frames are length-prefixed with
//!   an in-band close ([`stream`]). Listening registers an SDP record (a
//!   BlueZ profile) when bluetoothd answers, and falls back to a plain
//!   socket when it does not.
//! - `l2cap:` — an L2CAP SeqPacket channel, BR/EDR or (with `?le=`) an LE
//!   credit-based channel; frames travel as MTU-sized fragments
//!   ([`packet`]).
//!
//! Both are plain kernel sockets: they need the kernel's Bluetooth stack and
//! a powered adapter, not bluetoothd. `open` retries a failed connect with
//! back-off ([`retry`]), since connects right after discovery often fail.
//! What is available, and why not, is [`probe`]'s job.
//!
//! Security: the sockets ask for no Bluetooth pairing (`BT_SECURITY_LOW`).
//! Every gateway link is authenticated and encrypted by gateway-secure's
//! Noise handshake above the link, as over TCP.
#![warn(missing_docs)]

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bluer::l2cap;
use bluer::rfcomm;
use bluer::{Address, AddressType, Uuid};
use gateway_link::{
    Adapter, Link, LinkCaps, LinkDriver, LinkError, LinkInfo, LinkKind, Listener, OpenError,
    Selector, SelectorError,
};

pub mod drain;
pub mod gatt;
pub mod packet;
pub mod probe;
pub mod retry;
pub mod stream;

use drain::DrainOnDrop;
use packet::{PacketLink, PacketSocket};
use retry::{GaveUp, RetryConfig, connect_with_retry};
use stream::StreamLink;

/// RFCOMM channel used when a selector names none.
pub const DEFAULT_RFCOMM_CHANNEL: u8 = 24;
/// BR/EDR L2CAP PSM used when a selector names none (dynamic range, odd).
pub const DEFAULT_L2CAP_PSM: u16 = 0x1047;
/// LE credit-based channel PSM used when a selector names none (LE dynamic range).
pub const DEFAULT_LE_PSM: u16 = 0x87;
/// The gateway's RFCOMM service class UUID, in the SDP record.
pub const RFCOMM_SERVICE_UUID: Uuid = Uuid::from_u128(0xbb7a_aa83_f00b_4db7_a6fa_d0ce_e717_ef42);
/// Largest frame: a 1 MiB chunk plus room around it. The secure layer cuts
/// bigger frames into segments of at most this, and at Bluetooth's 0.1–2 MB/s
/// one frame is already 0.5–10 s of radio time.
pub const MAX_FRAME: usize = 1024 * 1024 + 64 * 1024;
/// The L2CAP receive MTU asked for: fewer, larger packets per frame than the
/// default 672. Not the largest there is: in the rig (btvirt, kernel 6.1) a
/// receive MTU of 32767 or more made the channel reset right after its
/// configuration, at both ends; 16384 moved 1.7 MB/s raw against 1.3 at 672.
pub const L2CAP_RECV_MTU: u16 = 16_384;

fn caps() -> LinkCaps {
    LinkCaps {
        kind: LinkKind::Bluetooth,
        max_frame: MAX_FRAME,
        reliable: true,
        ordered: true,
    }
}

/// `ADDR[/N]`: a BD address (or `any`) and an optional channel or PSM.
fn addr_and_number(
    sel: &Selector,
    what: &str,
    example: &str,
) -> Result<(Address, Option<u16>), SelectorError> {
    let bad = |expected: String| SelectorError::BadAddress {
        input: sel.raw.clone(),
        expected,
    };
    let (a, n) = match sel.address.split_once('/') {
        Some((a, n)) => (a, Some(n)),
        None => (sel.address.as_str(), None),
    };
    let addr = if a.is_empty() || a.eq_ignore_ascii_case("any") {
        Address::any()
    } else {
        a.parse::<Address>().map_err(|_| {
            bad(format!(
                "a Bluetooth address AA:BB:CC:DD:EE:FF (or `any` to listen), then optionally /{what}, e.g. {example}"
            ))
        })?
    };
    let n = match n {
        None => None,
        Some(n) => {
            let parsed = match n.strip_prefix("0x").or_else(|| n.strip_prefix("0X")) {
                Some(hex) => u16::from_str_radix(hex, 16),
                None => n.parse::<u16>(),
            };
            Some(parsed.map_err(|_| bad(format!("a {what} number after '/', e.g. {example}")))?)
        }
    };
    Ok((addr, n))
}

fn rfcomm_target(sel: &Selector) -> Result<(Address, u8), SelectorError> {
    let (addr, ch) = addr_and_number(sel, "channel", "rfcomm:00:1A:7D:DA:71:13/24")?;
    let ch = ch.unwrap_or(DEFAULT_RFCOMM_CHANNEL as u16);
    if !(1..=30).contains(&ch) {
        return Err(SelectorError::BadAddress {
            input: sel.raw.clone(),
            expected: "an RFCOMM channel from 1 to 30".into(),
        });
    }
    Ok((addr, ch as u8))
}

fn l2cap_target(sel: &Selector) -> Result<l2cap::SocketAddr, SelectorError> {
    let le = match sel.param::<String>("le")?.as_deref() {
        None => None,
        Some("public") => Some(AddressType::LePublic),
        Some("random") => Some(AddressType::LeRandom),
        Some(v) => {
            return Err(SelectorError::BadParamValue {
                key: "le".into(),
                value: v.into(),
                expected: "public or random (the LE address type of the peer)".into(),
            });
        }
    };
    let (addr, psm) = addr_and_number(sel, "PSM", "l2cap:00:1A:7D:DA:71:13/0x1047")?;
    let bad = |expected: &str| SelectorError::BadAddress {
        input: sel.raw.clone(),
        expected: expected.into(),
    };
    let sa = match le {
        None => {
            let psm = psm.unwrap_or(DEFAULT_L2CAP_PSM);
            // Core spec: a BR/EDR PSM is odd and its upper byte's low bit is 0.
            if psm & 1 == 0 || psm & 0x100 != 0 {
                return Err(bad(
                    "a BR/EDR PSM: odd, with bit 8 clear, e.g. 0x1047 or 4097 (for LE add ?le=public)",
                ));
            }
            l2cap::SocketAddr::new(addr, AddressType::BrEdr, psm)
        }
        Some(t) => {
            let psm = psm.unwrap_or(DEFAULT_LE_PSM);
            if !(1..=0xff).contains(&psm) {
                return Err(bad("an LE PSM from 0x01 to 0xff, e.g. 0x87"));
            }
            l2cap::SocketAddr::new(addr, t, psm)
        }
    };
    Ok(sa)
}

/// `open` needs the peer's address: `any` is for listening.
fn need_peer(sel: &Selector, addr: Address, example: &str) -> Result<(), SelectorError> {
    if addr == Address::any() {
        return Err(SelectorError::BadAddress {
            input: sel.raw.clone(),
            expected: format!(
                "the peer's Bluetooth address, e.g. {example} (`any` is for listening)"
            ),
        });
    }
    Ok(())
}

/// `?from=ADDR`: the local adapter to connect from (default: the kernel's
/// route to the peer), for a machine with several adapters.
fn from_param(sel: &Selector) -> Result<Option<Address>, SelectorError> {
    match sel.param::<String>("from")? {
        None => Ok(None),
        Some(v) => v
            .parse::<Address>()
            .map(Some)
            .map_err(|_| SelectorError::BadParamValue {
                key: "from".into(),
                value: v,
                expected: "the address of a local adapter, AA:BB:CC:DD:EE:FF (see `gateway links`)"
                    .into(),
            }),
    }
}

/// The connect budget and back-off from `?timeout=` (default 30 s).
fn retry_config(sel: &Selector) -> Result<RetryConfig, SelectorError> {
    let mut cfg = RetryConfig::default();
    if let Some(t) = sel.duration_param("timeout")? {
        cfg.budget = t;
    }
    Ok(cfg)
}

/// The error `open` gives when connecting failed for good.
fn connect_error(what: &str, listen_hint: &str, g: GaveUp, budget: Duration) -> OpenError {
    match g {
        GaveUp::Fatal(e) => open_error(what, e),
        GaveUp::Exhausted { tries, last: None } => OpenError::Timeout(format!(
            "{what}: no connection within {budget:?} ({tries} tries); check that the peer is in range and powered, or raise ?timeout="
        )),
        GaveUp::Exhausted {
            tries,
            last: Some(e),
        } => match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => OpenError::Refused(format!(
                "{what}: nothing listens there ({tries} tries in {budget:?}); start `gateway serve --listen {listen_hint}` on the peer"
            )),
            Some(libc::EHOSTDOWN) | Some(libc::EHOSTUNREACH) | Some(libc::ETIMEDOUT) => {
                OpenError::NotFound(format!(
                    "{what}: the peer did not answer ({e}; {tries} tries in {budget:?}); check that it is in range, powered and connectable (`bluetoothctl show`: Powered yes)"
                ))
            }
            Some(libc::EACCES) => OpenError::PermissionDenied {
                what: what.into(),
                fix: format!(
                    "the peer refused the pairing BlueZ asked for ({tries} tries); remove the stale pairing on both ends (`bluetoothctl remove ADDR`) and try again"
                ),
            },
            _ => OpenError::Io(io::Error::new(
                e.kind(),
                format!("{what}: {e} (after {tries} tries in {budget:?})"),
            )),
        },
    }
}

/// Errors of opening a socket or listening, read for people.
fn open_error(what: &str, e: io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(libc::EAFNOSUPPORT) | Some(libc::EPROTONOSUPPORT) => OpenError::Unsupported(format!(
            "{what}: this kernel has no Bluetooth sockets ({e}); load the modules (`modprobe bluetooth rfcomm`) or see `gateway links`"
        )),
        Some(libc::EADDRNOTAVAIL) | Some(libc::ENODEV) => OpenError::NotFound(format!(
            "{what}: no such local Bluetooth adapter, or it is down ({e}); see `gateway links`"
        )),
        Some(libc::ENETDOWN) => OpenError::AdapterOff(format!(
            "{what}: the Bluetooth adapter is powered off ({e}); run `bluetoothctl power on` (see `gateway links`)"
        )),
        Some(libc::EADDRINUSE) => OpenError::Busy(format!(
            "{what}: that channel/PSM is in use on this adapter ({e}); stop the other listener or pick another number"
        )),
        Some(libc::EACCES) | Some(libc::EPERM) => OpenError::PermissionDenied {
            what: what.into(),
            fix: "PSMs below 0x1001 need CAP_NET_BIND_SERVICE; pick a dynamic PSM (0x1001 and up, odd)".into(),
        },
        _ => OpenError::Io(e),
    }
}

fn info(selector: String, local: impl ToString, peer: impl ToString) -> LinkInfo {
    LinkInfo {
        selector,
        local: local.to_string(),
        peer: peer.to_string(),
    }
}

fn rfcomm_link(s: rfcomm::Stream, selector: String) -> Box<dyn Link> {
    let local = s
        .as_ref()
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let drain = DrainOnDrop::new(s.as_ref().as_raw_fd()).map(Arc::new);
    let (r, w) = s.into_split();
    Box::new(StreamLink::new(
        KeepOpen {
            half: Some(r),
            _drain: drain.clone(),
        },
        KeepOpen {
            half: Some(w),
            _drain: drain,
        },
        info(selector, local, peer),
        caps(),
    ))
}

/// One half of an RFCOMM stream that does not shut the socket down when it
/// is dropped. bluer's owned halves call `shutdown(SHUT_RD / SHUT_WR)` on
/// drop, and RFCOMM has no half-close: either one disconnects the DLC both
/// ways, so a link whose sending half finished first lost what was still
/// coming the other way (the conformance suite's two-way `ordering`, on the
/// rig). Dropped this way, the socket closes when both halves are gone, and
/// the kernel sends the data it holds before its DISC; the shared
/// [`DrainOnDrop`] keeps it open until the kernel has sent it.
struct KeepOpen<H: Forget> {
    half: Option<H>,
    _drain: Option<Arc<DrainOnDrop>>,
}

trait Forget {
    fn forget(self);
}

impl Forget for rfcomm::stream::OwnedReadHalf {
    fn forget(self) {
        rfcomm::stream::OwnedReadHalf::forget(self);
    }
}

impl Forget for rfcomm::stream::OwnedWriteHalf {
    fn forget(self) {
        rfcomm::stream::OwnedWriteHalf::forget(self);
    }
}

impl<H: Forget> Drop for KeepOpen<H> {
    fn drop(&mut self) {
        if let Some(h) = self.half.take() {
            h.forget();
        }
    }
}

impl<H: Forget> KeepOpen<H> {
    fn half(self: std::pin::Pin<&mut Self>) -> std::pin::Pin<&mut H>
    where
        H: Unpin,
    {
        std::pin::Pin::new(
            self.get_mut()
                .half
                .as_mut()
                .expect("a half is taken only when it is dropped"),
        )
    }
}

impl tokio::io::AsyncRead for KeepOpen<rfcomm::stream::OwnedReadHalf> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.half().poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for KeepOpen<rfcomm::stream::OwnedWriteHalf> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        self.half().poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.half().poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        self.half().poll_shutdown(cx)
    }
}

/// An L2CAP SeqPacket socket as a [`PacketSocket`], open after its link is
/// dropped until what it queued is sent ([`DrainOnDrop`]).
struct SeqPacket {
    sock: l2cap::SeqPacket,
    _drain: Option<DrainOnDrop>,
}

#[async_trait]
impl PacketSocket for SeqPacket {
    async fn send(&self, p: &[u8]) -> io::Result<usize> {
        self.sock.send(p).await
    }
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf).await
    }
    fn send_mtu(&self) -> io::Result<usize> {
        self.sock.send_mtu()
    }
    fn recv_mtu(&self) -> io::Result<usize> {
        self.sock.recv_mtu()
    }
}

fn l2cap_name(a: l2cap::SocketAddr) -> String {
    format!("{}/{:#x}", a.addr, a.psm)
}

fn l2cap_link(s: l2cap::SeqPacket, selector: String) -> Box<dyn Link> {
    let local = s.as_ref().local_addr().map(l2cap_name).unwrap_or_default();
    let peer = s.peer_addr().map(l2cap_name).unwrap_or_default();
    tracing::debug!(
        send_mtu = s.send_mtu().unwrap_or(0),
        recv_mtu = s.recv_mtu().unwrap_or(0),
        %peer,
        "L2CAP channel up"
    );
    let drain = DrainOnDrop::new(s.as_ref().as_raw_fd());
    Box::new(PacketLink::new(
        SeqPacket {
            sock: s,
            _drain: drain,
        },
        info(selector, local, peer),
        caps(),
    ))
}

/// BR/EDR L2CAP in basic mode has no flow control: a receiver whose socket
/// buffer is full drops whole packets (the rig lost fragments that way, in
/// the conformance suite's both-ways ordering check). Enhanced
/// Retransmission Mode retransmits and flow-controls. LE credit-based
/// channels are flow-controlled already.
/// `L2CAP_MODE_ERTM` of the kernel's `l2cap.h` (L2CAP_OPTIONS' mode).
const L2CAP_MODE_ERTM: u8 = 0x03;

fn reliable_mode(s: &l2cap::Socket<l2cap::SeqPacket>, sa: &l2cap::SocketAddr) {
    if sa.addr_type != AddressType::BrEdr {
        return;
    }
    // L2CAP_OPTIONS' mode field, not BT_MODE: kernels take BT_MODE only with
    // their experimental LE ECRED switch on (ENOPROTOOPT otherwise, as in the
    // rig's 6.1).
    let r = s.l2cap_opts().and_then(|mut o| {
        o.mode = L2CAP_MODE_ERTM;
        s.set_l2cap_opts(&o)
    });
    if let Err(e) = r {
        tracing::debug!(error = %e, "L2CAP ERTM not available; basic mode (may drop packets when the receiver falls behind)");
    }
}

fn any_local(sa: &l2cap::SocketAddr) -> l2cap::SocketAddr {
    if sa.addr_type == AddressType::BrEdr {
        l2cap::SocketAddr::any_br_edr()
    } else {
        l2cap::SocketAddr::any_le()
    }
}

/// The `rfcomm` driver.
///
/// - `open rfcomm:ADDR[/CH]`: connect to channel CH (default 24) of the
///   adapter with BD address ADDR; `?timeout=30s` bounds the retries,
///   `?from=LOCAL_ADDR` picks the local adapter.
/// - `listen rfcomm:any[/CH]` (or a local adapter's address): accept on CH.
///   With bluetoothd, a BlueZ profile holds the channel and its SDP record
///   (service class [`RFCOMM_SERVICE_UUID`]); `?sdp=0`, or no bluetoothd, or
///   a local address other than `any`, listens on a plain socket instead.
#[derive(Debug, Default, Clone, Copy)]
pub struct RfcommDriver;

/// The `l2cap` driver.
///
/// - `open l2cap:ADDR[/PSM]`: BR/EDR SeqPacket to PSM (default 0x1047);
///   `l2cap:ADDR[/PSM]?le=public|random`: an LE credit-based channel (default
///   PSM 0x87). `?timeout=30s` bounds the retries, `?from=LOCAL_ADDR` picks
///   the local adapter.
/// - `listen l2cap:any[/PSM]` (add `?le=public` for LE): accept there.
#[derive(Debug, Default, Clone, Copy)]
pub struct L2capDriver;

#[async_trait]
impl LinkDriver for RfcommDriver {
    fn scheme(&self) -> &'static str {
        "rfcomm"
    }

    fn describe(&self) -> &'static str {
        "Bluetooth RFCOMM (BlueZ): rfcomm:ADDR[/CH] (open), rfcomm:any[/CH] (listen); channel 24 by default"
    }

    async fn probe(&self) -> Vec<Adapter> {
        probe::rows("rfcomm", &probe::facts().await)
    }

    async fn open(&self, sel: &Selector) -> Result<Box<dyn Link>, OpenError> {
        let (addr, ch) = rfcomm_target(sel)?;
        need_peer(sel, addr, "rfcomm:00:1A:7D:DA:71:13/24")?;
        let cfg = retry_config(sel)?;
        let what = format!("RFCOMM to {addr} channel {ch}");
        let span = tracing::debug_span!("rfcomm_open", %addr, ch);
        let _e = span.enter();
        let sa = rfcomm::SocketAddr::new(addr, ch);
        let from = from_param(sel)?;
        let r = connect_with_retry(cfg, |_| async move {
            let s = rfcomm::Socket::new()?;
            s.bind(rfcomm::SocketAddr::new(from.unwrap_or(Address::any()), 0))?;
            s.connect(sa).await
        })
        .await;
        match r {
            Ok((s, tries)) => {
                tracing::debug!(tries, "RFCOMM connected");
                Ok(rfcomm_link(s, sel.to_string()))
            }
            Err(g) => Err(connect_error(
                &what,
                &format!("rfcomm:any/{ch}"),
                g,
                cfg.budget,
            )),
        }
    }

    async fn listen(&self, sel: &Selector) -> Result<Box<dyn Listener>, OpenError> {
        let (addr, ch) = rfcomm_target(sel)?;
        let want_sdp = sel.param::<u8>("sdp")?.unwrap_or(1) != 0;
        let what = format!("listening on RFCOMM channel {ch}");
        if want_sdp && addr == Address::any() {
            match register_profile(ch).await {
                Ok(l) => return Ok(Box::new(l)),
                Err(why) => tracing::info!("RFCOMM without an SDP record: {why}"),
            }
        }
        let l = rfcomm::Listener::bind(rfcomm::SocketAddr::new(addr, ch))
            .await
            .map_err(|e| open_error(&what, e))?;
        let local = l.as_ref().local_addr().map_err(|e| open_error(&what, e))?;
        Ok(Box::new(RfcommListener {
            selector: reachable(format!(
                "rfcomm:{}/{}",
                local_name(local.addr),
                local.channel
            )),
            inner: RfcommAccept::Socket(l),
        }))
    }
}

/// The selectors a peer dials for a Bluetooth listener `sel` as announced in
/// a Hello: `rfcomm:any/CH` (and `l2cap:any/PSM[?le=..]`) become one selector
/// per adapter that is up, with its address. `None` when `sel` is not a
/// Bluetooth listener on `any` (it is then announced as it is).
pub fn dialable(sel: &str) -> Option<Vec<String>> {
    let (scheme, rest) = sel.split_once(':')?;
    if !matches!(scheme, "rfcomm" | "l2cap") {
        return None;
    }
    let rest = rest.strip_prefix("any")?;
    let names = probe::adapter_names(std::path::Path::new("/sys/class/bluetooth"));
    Some(
        names
            .iter()
            .filter_map(|n| n.strip_prefix("hci")?.parse::<u16>().ok())
            .filter_map(|id| probe::hci_info(id).ok())
            .filter(|i| i.up)
            .map(|i| format!("{scheme}:{}{rest}", i.address))
            .collect(),
    )
}

/// A listener's selector a peer (or a test on this machine) can open: on
/// `any`, the first adapter that is up stands in, as TCP's wildcard names
/// loopback.
fn reachable(sel: String) -> String {
    dialable(&sel)
        .and_then(|v| v.into_iter().next())
        .unwrap_or(sel)
}

/// `any`, or the address.
fn local_name(a: Address) -> String {
    if a == Address::any() {
        "any".into()
    } else {
        a.to_string()
    }
}

/// Registers the gateway's RFCOMM profile (SDP record on channel `ch`) with
/// bluetoothd, which then accepts and hands connections over.
async fn register_profile(ch: u8) -> Result<RfcommListener, String> {
    let go = async {
        let session = bluer::Session::new()
            .await
            .map_err(|e| format!("no D-Bus system bus ({e})"))?;
        let profile = rfcomm::Profile {
            uuid: RFCOMM_SERVICE_UUID,
            name: Some("gateway".into()),
            role: Some(rfcomm::Role::Server),
            channel: Some(ch.into()),
            require_authentication: Some(false),
            require_authorization: Some(false),
            ..Default::default()
        };
        let handle = session
            .register_profile(profile)
            .await
            .map_err(|e| format!("bluetoothd refused the profile ({e})"))?;
        Ok::<_, String>(RfcommListener {
            selector: reachable(format!("rfcomm:any/{ch}")),
            inner: RfcommAccept::Profile {
                handle,
                _session: session,
            },
        })
    };
    tokio::time::timeout(Duration::from_secs(5), go)
        .await
        .unwrap_or_else(|_| Err("bluetoothd did not answer within 5 s".into()))
}

enum RfcommAccept {
    Socket(rfcomm::Listener),
    Profile {
        handle: rfcomm::ProfileHandle,
        _session: bluer::Session,
    },
}

struct RfcommListener {
    selector: String,
    inner: RfcommAccept,
}

#[async_trait]
impl Listener for RfcommListener {
    fn local_selector(&self) -> String {
        self.selector.clone()
    }

    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        let s = match &mut self.inner {
            RfcommAccept::Socket(l) => l.accept().await?.0,
            RfcommAccept::Profile { handle, .. } => {
                use futures::StreamExt;
                let req = handle.next().await.ok_or_else(|| {
                    LinkError::Io(io::Error::other(
                        "bluetoothd dropped the gateway RFCOMM profile (did it restart?)",
                    ))
                })?;
                tracing::debug!(peer = %req.device(), "RFCOMM connection via the profile");
                req.accept().map_err(|e| LinkError::Io(e.into()))?
            }
        };
        Ok(rfcomm_link(s, self.selector.clone()))
    }
}

#[async_trait]
impl LinkDriver for L2capDriver {
    fn scheme(&self) -> &'static str {
        "l2cap"
    }

    fn describe(&self) -> &'static str {
        "Bluetooth L2CAP (BlueZ): l2cap:ADDR[/PSM] (BR/EDR) or ?le=public|random (LE CoC) to open, l2cap:any[/PSM] to listen"
    }

    async fn probe(&self) -> Vec<Adapter> {
        probe::rows("l2cap", &probe::facts().await)
    }

    async fn open(&self, sel: &Selector) -> Result<Box<dyn Link>, OpenError> {
        let sa = l2cap_target(sel)?;
        need_peer(sel, sa.addr, "l2cap:00:1A:7D:DA:71:13/0x1047")?;
        let cfg = retry_config(sel)?;
        let what = format!("L2CAP to {} PSM {:#x}", sa.addr, sa.psm);
        let span = tracing::debug_span!("l2cap_open", addr = %sa.addr, psm = sa.psm);
        let _e = span.enter();
        let from = from_param(sel)?;
        let attempt = |_| async move {
            let s = l2cap::Socket::<l2cap::SeqPacket>::new_seq_packet()?;
            s.set_recv_mtu(L2CAP_RECV_MTU)?;
            reliable_mode(&s, &sa);
            let mut local = any_local(&sa);
            if let Some(a) = from {
                local.addr = a;
            }
            s.bind(local)?;
            s.connect(sa).await
        };
        match connect_with_retry(cfg, attempt).await {
            Ok((s, tries)) => {
                tracing::debug!(tries, "L2CAP connected");
                Ok(l2cap_link(s, sel.to_string()))
            }
            Err(g) => {
                let le = match sa.addr_type {
                    AddressType::BrEdr => "",
                    _ => "?le=public",
                };
                Err(connect_error(
                    &what,
                    &format!("l2cap:any/{:#x}{le}", sa.psm),
                    g,
                    cfg.budget,
                ))
            }
        }
    }

    async fn listen(&self, sel: &Selector) -> Result<Box<dyn Listener>, OpenError> {
        let sa = l2cap_target(sel)?;
        let what = format!("listening on L2CAP PSM {:#x}", sa.psm);
        let s = l2cap::Socket::<l2cap::SeqPacket>::new_seq_packet()
            .map_err(|e| open_error(&what, e))?;
        s.set_recv_mtu(L2CAP_RECV_MTU)
            .map_err(|e| open_error(&what, e))?;
        reliable_mode(&s, &sa);
        s.bind(sa).map_err(|e| open_error(&what, e))?;
        let l = s.listen(8).map_err(|e| open_error(&what, e))?;
        let le = match sa.addr_type {
            AddressType::BrEdr => "",
            AddressType::LePublic => "?le=public",
            AddressType::LeRandom => "?le=random",
        };
        Ok(Box::new(L2capListener {
            selector: reachable(format!("l2cap:{}/{:#x}{le}", local_name(sa.addr), sa.psm)),
            l,
        }))
    }
}

struct L2capListener {
    selector: String,
    l: l2cap::SeqPacketListener,
}

#[async_trait]
impl Listener for L2capListener {
    fn local_selector(&self) -> String {
        self.selector.clone()
    }

    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        let (s, _) = self.l.accept().await?;
        Ok(l2cap_link(s, self.selector.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    #[test]
    fn rfcomm_selectors_take_an_address_and_a_channel() {
        let a: Address = "00:1A:7D:DA:71:13".parse().unwrap();
        assert_eq!(
            rfcomm_target(&sel("rfcomm:00:1A:7D:DA:71:13")).unwrap(),
            (a, 24)
        );
        assert_eq!(
            rfcomm_target(&sel("rfcomm:00:1a:7d:da:71:13/3")).unwrap(),
            (a, 3)
        );
        assert_eq!(
            rfcomm_target(&sel("rfcomm:any/5")).unwrap(),
            (Address::any(), 5)
        );
        for (bad, want) in [
            ("rfcomm:00:1A:7D:DA:71/3", "AA:BB:CC:DD:EE:FF"),
            ("rfcomm:00:1A:7D:DA:71:13/31", "1 to 30"),
            ("rfcomm:00:1A:7D:DA:71:13/x", "channel number"),
        ] {
            let e = rfcomm_target(&sel(bad)).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn l2cap_selectors_check_the_psm_rules_of_each_transport() {
        let s = l2cap_target(&sel("l2cap:00:1A:7D:DA:71:13")).unwrap();
        assert_eq!((s.psm, s.addr_type), (0x1047, AddressType::BrEdr));
        assert_eq!(l2cap_target(&sel("l2cap:any/4097")).unwrap().psm, 0x1001);
        let s = l2cap_target(&sel("l2cap:00:1A:7D:DA:71:13?le=random")).unwrap();
        assert_eq!((s.psm, s.addr_type), (0x87, AddressType::LeRandom));
        for (bad, want) in [
            ("l2cap:any/0x1002", "odd"),
            ("l2cap:any/0x1101", "bit 8"),
            ("l2cap:any/0x100?le=public", "0x01 to 0xff"),
            ("l2cap:any?le=yes", "public or random"),
        ] {
            let e = l2cap_target(&sel(bad)).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn a_connect_that_never_worked_says_what_to_do() {
        let budget = Duration::from_secs(30);
        let e = connect_error(
            "RFCOMM to X channel 24",
            "rfcomm:any/24",
            GaveUp::Exhausted {
                tries: 6,
                last: Some(io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            },
            budget,
        )
        .to_string();
        assert!(
            e.contains("gateway serve --listen rfcomm:any/24") && e.contains("6 tries"),
            "{e}"
        );
        let e = connect_error(
            "L2CAP",
            "l2cap:any/0x1047",
            GaveUp::Exhausted {
                tries: 3,
                last: Some(io::Error::from_raw_os_error(libc::EHOSTDOWN)),
            },
            budget,
        )
        .to_string();
        assert!(e.contains("in range"), "{e}");
        let e = connect_error(
            "L2CAP",
            "x",
            GaveUp::Fatal(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
            budget,
        )
        .to_string();
        assert!(e.contains("no Bluetooth sockets"), "{e}");
    }
}
