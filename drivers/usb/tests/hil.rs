//! Hardware in the loop: the `usb:` driver over a real cable, both ends in
//! this process. The gadget end listens on `usb:gadget:$GATEWAY_HIL_USB_UDC`
//! and the host end opens `usb:` (or `usb:$GATEWAY_HIL_USB`, a VID:PID), so
//! the UDC must be wired to a host port of this same machine: dummy_hcd (the
//! qemu rig, `modprobe dummy_hcd`), or a cable from a host port to an OTG
//! port. Root, for the gadget. Without GATEWAY_HIL_USB_UDC every test prints
//! why it is skipped and passes.
//!
//! ```sh
//! GATEWAY_HIL_USB_UDC=dummy_udc.1 cargo test -p gateway-usb --test hil -- --test-threads=1
//! ```
//!
//! One test at a time: each builds the `gateway` gadget on the UDC, and a
//! second one cannot while the first holds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use gateway_link::{
    Adapter, FrameRx, FrameTx, Link, LinkCaps, LinkDriver, LinkError, LinkInfo, Listener,
    OpenError, Registry, Selector, conformance,
};
use gateway_usb::UsbDriver;

/// How to run these, printed when they are skipped.
const RUN: &str = "as root, on a machine whose UDC is wired to one of its own host ports (dummy_hcd, e.g. the qemu rig): \
GATEWAY_HIL_USB_UDC=dummy_udc.1 [GATEWAY_HIL_USB=1d6b:0104] cargo test -p gateway-usb --test hil -- --test-threads=1";
/// How long the host end waits for a gadget built a moment ago to enumerate.
const ENUMERATE: Duration = Duration::from_secs(15);
/// Every other wait in these tests.
const STEP: Duration = Duration::from_secs(30);
/// A big frame, cut off partway by dropping its sender.
const BIG: usize = 16 * 1024 * 1024;

/// The rig the environment names: the UDC of the gadget end and the selector
/// of the host end.
struct Rig {
    udc: String,
    host: String,
}

fn rig(test: &str) -> Option<Rig> {
    logs();
    match std::env::var("GATEWAY_HIL_USB_UDC") {
        Ok(udc) if !udc.trim().is_empty() => Some(Rig {
            udc: udc.trim().to_string(),
            host: match std::env::var("GATEWAY_HIL_USB") {
                Ok(ids) if !ids.trim().is_empty() => format!("usb:{}", ids.trim()),
                _ => "usb:".into(),
            },
        }),
        _ => {
            eprintln!("SKIPPED {test}: GATEWAY_HIL_USB_UDC is not set; run: {RUN}");
            None
        }
    }
}

/// The usb driver, except that a listener on the gadget end names the host
/// end as its `local_selector` (what the conformance suite opens), and an
/// open waits for the device to enumerate: the gadget is built by the first
/// listen, a moment before. Busy and every other error pass through.
struct Cable {
    inner: UsbDriver,
    host: String,
}

#[async_trait]
impl LinkDriver for Cable {
    fn scheme(&self) -> &'static str {
        "usb"
    }
    fn describe(&self) -> &'static str {
        "usb: both ends of one cable in this process"
    }
    async fn probe(&self) -> Vec<Adapter> {
        self.inner.probe().await
    }
    async fn open(&self, sel: &Selector) -> Result<Box<dyn Link>, OpenError> {
        let give_up = Instant::now() + ENUMERATE;
        loop {
            match self.inner.open(sel).await {
                Err(OpenError::NotFound(_)) if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                r => return r.map(|l| Box::new(Traced(l, "host")) as Box<dyn Link>),
            }
        }
    }
    async fn listen(&self, sel: &Selector) -> Result<Box<dyn Listener>, OpenError> {
        Ok(Box::new(HostEnd {
            inner: self.inner.listen(sel).await?,
            host: self.host.clone(),
        }))
    }
}

struct HostEnd {
    inner: Box<dyn Listener>,
    host: String,
}

#[async_trait]
impl Listener for HostEnd {
    fn local_selector(&self) -> String {
        self.host.clone()
    }
    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        let link = self.inner.accept().await?;
        Ok(Box::new(Traced(link, "gadget")))
    }
}

/// A link whose every send, close and recv is traced (`RUST_LOG=hil=trace`):
/// which frame a stuck check was waiting for, at which end.
struct Traced(Box<dyn Link>, &'static str);

impl Link for Traced {
    fn caps(&self) -> LinkCaps {
        self.0.caps()
    }
    fn info(&self) -> &LinkInfo {
        self.0.info()
    }
    fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
        let (end, (tx, rx)) = (self.1, self.0.split());
        (
            Box::new(TracedTx(tx, end, 0)),
            Box::new(TracedRx(rx, end, 0)),
        )
    }
}

struct TracedTx(Box<dyn FrameTx>, &'static str, u64);

#[async_trait]
impl FrameTx for TracedTx {
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        let (end, n) = (self.1, self.2);
        self.2 += 1;
        tracing::trace!(target: "hil", end, n, len = frame.len(), "send");
        let r = self.0.send(frame).await;
        tracing::trace!(target: "hil", end, n, result = ?r.as_ref().err(), "sent");
        r
    }
    async fn close(&mut self) -> Result<(), LinkError> {
        tracing::trace!(target: "hil", end = self.1, "close");
        let r = self.0.close().await;
        tracing::trace!(target: "hil", end = self.1, result = ?r.as_ref().err(), "closed");
        r
    }
}

struct TracedRx(Box<dyn FrameRx>, &'static str, u64);

#[async_trait]
impl FrameRx for TracedRx {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        let (end, n) = (self.1, self.2);
        let r = self.0.recv().await;
        if r.is_ok() {
            self.2 += 1;
        }
        tracing::trace!(target: "hil", end, n, result = ?r.as_ref().map(|f| f.len()), "recv");
        r
    }
}

fn registry(rig: &Rig) -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(Cable {
        inner: UsbDriver::new(),
        host: rig.host.clone(),
    }));
    r
}

async fn step<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after {STEP:?}"))
}

/// A new session: the host end opened, the gadget end accepted. A failed
/// open fails the test at once (the accept would wait for ever).
///
/// `busy_grace`: how long to retry an open refused as busy. Right after a
/// host end of this process was dropped, nusb may still hold its claim on
/// the interface for a moment (a killed process's claim goes with its file);
/// the test says how long that took, and the conformance suite, which opens
/// without grace, shows whether the driver copes by itself.
async fn session(
    reg: &Registry,
    rig: &Rig,
    l: &mut Box<dyn Listener>,
    what: &str,
    busy_grace: Duration,
) -> (Box<dyn Link>, Box<dyn Link>) {
    let open = async {
        let t0 = Instant::now();
        loop {
            match reg.open(&rig.host).await {
                Err(OpenError::Busy(e)) if t0.elapsed() < busy_grace => {
                    eprintln!("{what}: open {} busy ({e}); retrying", rig.host);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{what}: open {}: {e}", rig.host),
                Ok(link) => {
                    if t0.elapsed() > Duration::from_millis(100) {
                        eprintln!("{what}: open took {:?}", t0.elapsed());
                    }
                    return link;
                }
            }
        }
    };
    let (host, gadget) = step(what, async { tokio::join!(open, l.accept()) }).await;
    let gadget = gadget.unwrap_or_else(|e| panic!("{what}: accept on usb:gadget:{}: {e}", rig.udc));
    (host, gadget)
}

/// Driver logs on stderr, per `RUST_LOG` (default: the driver's debug lines;
/// `RUST_LOG=gateway_usb=debug,hil=trace` adds every frame at both ends).
fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("gateway_usb=debug,warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Frame `tag` of `len` bytes: the tag, then a pattern from a tag-dependent
/// offset (copied, not computed per byte: 16 MiB frames in a debug build
/// under an emulated CPU).
fn frame(tag: u64, len: usize) -> Vec<u8> {
    const P: usize = 4093;
    static PATTERN: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        (0..2 * P)
            .map(|i| (i % P).wrapping_mul(31).wrapping_add(7) as u8)
            .collect()
    });
    let mut v = Vec::with_capacity(len);
    let mut at = (tag as usize).wrapping_mul(1237) % P;
    while v.len() < len {
        let n = (len - v.len()).min(P);
        v.extend_from_slice(&PATTERN[at..at + n]);
        at = (at + n) % P;
    }
    let k = len.min(8);
    v[..k].copy_from_slice(&tag.to_le_bytes()[..k]);
    v
}

fn check(what: &str, got: &Bytes, tag: u64, len: usize) {
    let want = frame(tag, len);
    if got[..] != want[..] {
        let at = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(len));
        panic!(
            "{what}: expected frame {tag} of {len} bytes intact, got {} bytes differing first at byte {at}",
            got.len()
        );
    }
}

/// The conformance suite, one test per check so each starts on a fresh
/// gadget and one failure does not cascade into the next check (the list is
/// `conformance::run_all`'s; keep them in step).
macro_rules! conformance_checks {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let Some(rig) = rig(concat!("conformance::", stringify!($check))) else {
                return;
            };
            let sel = format!("usb:gadget:{}", rig.udc);
            if let Err(e) = conformance::$check(&registry(&rig), &sel).await {
                panic!("conformance::{} on {sel} <-> {}: {e}", stringify!($check), rig.host);
            }
        }
    )*};
}

mod conformance_over_a_usb_cable {
    use super::*;
    conformance_checks!(
        ordering,
        max_frame,
        close,
        half_dead,
        reconnect,
        large_frames
    );
}

/// The host end dropped while it is halfway through sending a big frame:
/// the gadget end never delivers the cut frame (an error, not a short or
/// spliced frame), and the next session opens and carries intact frames
/// both ways from its first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_frame_to_the_gadget_leaves_a_clean_next_session() {
    let Some(rig) = rig("a_host_killed_mid_frame_to_the_gadget_leaves_a_clean_next_session") else {
        return;
    };
    let reg = registry(&rig);
    let mut l = step("listen", reg.listen(&format!("usb:gadget:{}", rig.udc)))
        .await
        .unwrap_or_else(|e| panic!("listen usb:gadget:{}: {e}", rig.udc));
    let (host, gadget) = session(&reg, &rig, &mut l, "first session", Duration::ZERO).await;
    let (mut htx, hrx) = host.split();
    let (_gtx, mut grx) = gadget.split();
    // The gadget end takes whole frames until its session ends; each must be
    // a big frame, intact.
    let receiver = tokio::spawn(async move {
        let mut whole = 0u64;
        loop {
            match grx.recv().await {
                Ok(f) => {
                    check("gadget end, first session", &f, whole, BIG);
                    whole += 1;
                }
                Err(e) => return (whole, e),
            }
        }
    });
    // Send big frames until one is cut off by the drop (a send still running
    // after 30 ms has not handed all its bytes to the bus).
    let mut sent = 0u64;
    loop {
        assert!(
            sent < 20,
            "20 frames of {BIG} bytes each went in under 30 ms: cannot cut one"
        );
        match tokio::time::timeout(Duration::from_millis(30), htx.send(&frame(sent, BIG))).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(e)) => panic!("host end, first session: send of frame {sent}: {e}"),
            Err(_) => break,
        }
    }
    drop((htx, hrx));
    eprintln!("host end dropped while sending frame {sent} ({sent} whole before it)");

    let (host, gadget) = session(
        &reg,
        &rig,
        &mut l,
        "the session after the cut",
        Duration::from_secs(5),
    )
    .await;
    let (whole, why) = step("the first session's gadget end ending", receiver)
        .await
        .expect("receiver task");
    assert!(
        whole <= sent,
        "the gadget end delivered {whole} frames, but only {sent} were sent whole"
    );
    eprintln!("first session's gadget end: {whole} whole frames, then: {why}");
    first_frames_intact(host, gadget).await;
}

/// The host end dropped while it is halfway through receiving a big frame
/// the gadget sends (the gadget's queued transfers still hold the rest): the
/// next session's first frame at the host is the new one, intact, not the
/// old frame's tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_frame_from_the_gadget_leaves_a_clean_next_session() {
    let Some(rig) = rig("a_host_killed_mid_frame_from_the_gadget_leaves_a_clean_next_session")
    else {
        return;
    };
    let reg = registry(&rig);
    let mut l = step("listen", reg.listen(&format!("usb:gadget:{}", rig.udc)))
        .await
        .unwrap_or_else(|e| panic!("listen usb:gadget:{}: {e}", rig.udc));
    let (host, gadget) = session(&reg, &rig, &mut l, "first session", Duration::ZERO).await;
    let (htx, mut hrx) = host.split();
    let (mut gtx, _grx) = gadget.split();
    // The gadget end sends big frames until its session ends.
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            if let Err(e) = gtx.send(&frame(sent, BIG)).await {
                return (sent, e);
            }
            sent += 1;
        }
    });
    // Let the frame get going (the host end keeps transfers queued, so its
    // first megabytes land before any recv), then take whole frames until a
    // recv is cut off partway by the drop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut whole = 0u64;
    loop {
        assert!(
            whole < 20,
            "20 frames of {BIG} bytes each came in under 30 ms: cannot cut one"
        );
        match tokio::time::timeout(Duration::from_millis(30), hrx.recv()).await {
            Ok(Ok(f)) => {
                check("host end, first session", &f, whole, BIG);
                whole += 1;
            }
            Ok(Err(e)) => panic!("host end, first session: recv of frame {whole}: {e}"),
            Err(_) => break,
        }
    }
    drop((htx, hrx));
    eprintln!("host end dropped while receiving frame {whole} ({whole} whole before it)");

    let (host, gadget) = session(
        &reg,
        &rig,
        &mut l,
        "the session after the cut",
        Duration::from_secs(5),
    )
    .await;
    let (sent, why) = step("the first session's gadget end ending", sender)
        .await
        .expect("sender task");
    eprintln!("first session's gadget end: {sent} frames sent whole, then: {why}");
    first_frames_intact(host, gadget).await;
}

/// A new session's first frame each way arrives intact: never the tail of a
/// frame the session before was cut off in.
async fn first_frames_intact(host: Box<dyn Link>, gadget: Box<dyn Link>) {
    let (mut htx, mut hrx) = host.split();
    let (mut gtx, mut grx) = gadget.split();
    step("host -> gadget", htx.send(&frame(1000, 1 << 20)))
        .await
        .expect("host end, new session: send");
    let got = step("gadget end, new session: recv", grx.recv())
        .await
        .expect("gadget end, new session: the first frame");
    check(
        "gadget end, new session: the first frame",
        &got,
        1000,
        1 << 20,
    );
    step("gadget -> host", gtx.send(&frame(2000, 1 << 20)))
        .await
        .expect("gadget end, new session: send");
    let got = step("host end, new session: recv", hrx.recv())
        .await
        .expect("host end, new session: the first frame");
    check(
        "host end, new session: the first frame",
        &got,
        2000,
        1 << 20,
    );
}
