//! gateway-usb: the `usb:` link driver, for two Linux boxes joined by a USB
//! cable, one as host and one as device (gadget).
//!
//! - Host side (`usb:`, `usb:VID:PID`, `usb:VID:PID/SERIAL`): nusb over
//!   usbfs, pure Rust (no libusb, no system package). It finds the gateway's
//!   vendor-class interface, claims it and keeps several bulk transfers in
//!   flight each way.
//! - Gadget side (`usb:gadget`, `usb:gadget:UDC`, root): a configfs gadget
//!   with one FunctionFS function, built, bound and removed by this process
//!   (usb-gadget); endpoints served with queued Linux AIO.
//!
//! Either side may listen or open: the host always starts a session with a
//! vendor control request, which resets both pipes, so a link killed
//! mid-frame never leaves stale bytes for the next (see `wire.rs`). Frames
//! are length-prefixed as over TCP; a write that ends on a packet boundary
//! is followed by a zero-length packet. An unplug, a host reset or an
//! unbound UDC fails the link's halves; the engine reopens the selector, and
//! the link is back when the device is.
//!
//! It does not find peers (mDNS does) and does not encrypt (Noise runs over
//! the frames). Boards whose gadget stack does only serial use CDC-ACM with
//! the `serial:` driver instead.
#![warn(missing_docs)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gateway_link::{
    Adapter, FrameRx, FrameTx, Link, LinkCaps, LinkDriver, LinkError, LinkInfo, LinkKind, Listener,
    OpenError, Selector, SelectorError,
};

mod gadget;
mod host;

#[doc(hidden)]
pub use gadget::{GadgetParts, parts as gadget_parts};
pub use gadget::{setup as setup_gadget, teardown as teardown_gadget};
mod probe;
mod wire;

/// USB vendor id of the gateway gadget: the Linux Foundation's.
pub const VENDOR_ID: u16 = 0x1d6b;
/// USB product id of the gateway gadget: "Multifunction Composite Gadget".
pub const PRODUCT_ID: u16 = 0x0104;
/// The gateway interface is vendor-specific ...
pub const INTERFACE_CLASS: u8 = 0xff;
/// ... with subclass 'G' ...
pub const INTERFACE_SUBCLASS: u8 = b'G';
/// ... and protocol 'W', so a host finds it among other functions (CDC-ACM).
pub const INTERFACE_PROTOCOL: u8 = b'W';
/// The interface's string descriptor.
pub const INTERFACE_NAME: &str = "gateway";
/// The configfs gadget `usb:gadget` creates: `/sys/kernel/config/usb_gadget/gateway`.
pub const GADGET_NAME: &str = "gateway";
/// Bytes per bulk transfer (URB on the host, AIO request on the gadget).
pub const TRANSFER_BYTES: usize = 256 * 1024;
/// Bulk transfers kept in flight per direction on each side.
pub const TRANSFERS_IN_FLIGHT: usize = 8;
/// Largest frame: a 16 MiB chunk plus room for the frame around it (as TCP).
pub const MAX_FRAME: usize = 16 * 1024 * 1024 + 64 * 1024;

/// An open USB link of either end: its info and its two halves.
struct UsbLink<T, R> {
    info: LinkInfo,
    tx: T,
    rx: R,
}

impl<T: FrameTx + 'static, R: FrameRx + 'static> Link for UsbLink<T, R> {
    fn caps(&self) -> LinkCaps {
        caps()
    }
    fn info(&self) -> &LinkInfo {
        &self.info
    }
    fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
        (Box::new(self.tx), Box::new(self.rx))
    }
}

fn caps() -> LinkCaps {
    LinkCaps {
        kind: LinkKind::Usb,
        max_frame: MAX_FRAME,
        reliable: true,
        ordered: true,
    }
}

/// What a `usb:` selector names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// The host end: a device with the gateway interface.
    Host(host::HostFilter),
    /// The gadget end, on the named UDC or the first free one; with `ffs`,
    /// served from a FunctionFS mount `gateway usb-gadget setup` prepared.
    Gadget {
        udc: Option<String>,
        ffs: Option<std::path::PathBuf>,
    },
}

fn parse(sel: &Selector) -> Result<Target, SelectorError> {
    let bad = |expected: &str| SelectorError::BadAddress {
        input: sel.raw.clone(),
        expected: expected.to_string(),
    };
    let form = "usb: (any gateway device), usb:VID:PID, usb:VID:PID/SERIAL (the host end), or usb:gadget, usb:gadget:UDC (the gadget end), e.g. usb:1d6b:0104 or usb:gadget:dummy_udc.0";
    let a = sel.address.trim();
    if a.is_empty() {
        return Ok(Target::Host(host::HostFilter::default()));
    }
    let ffs = match sel.params.get("ffs").map(|s| s.trim()) {
        None => None,
        Some(p) if p.starts_with('/') && p.len() > 1 => Some(std::path::PathBuf::from(p)),
        Some(other) => {
            return Err(SelectorError::BadParamValue {
                key: "ffs".into(),
                value: other.to_string(),
                expected: "the absolute path of a FunctionFS mount made by `gateway usb-gadget setup`, e.g. /dev/usb-ffs/gateway".into(),
            });
        }
    };
    if a == "gadget" {
        return Ok(Target::Gadget { udc: None, ffs });
    }
    if let Some(udc) = a.strip_prefix("gadget:") {
        if udc.is_empty() || udc.contains('/') {
            return Err(bad(form));
        }
        return Ok(Target::Gadget {
            udc: Some(udc.to_string()),
            ffs,
        });
    }
    if ffs.is_some() {
        return Err(bad(
            "?ffs= only with the gadget end: usb:gadget?ffs=/dev/usb-ffs/gateway",
        ));
    }
    let (ids, serial) = match a.split_once('/') {
        Some((ids, s)) if !s.is_empty() => (ids, Some(s.to_string())),
        Some(_) => return Err(bad(form)),
        None => (a, None),
    };
    let hex = |s: &str| {
        (s.len() == 4)
            .then(|| u16::from_str_radix(s, 16).ok())
            .flatten()
    };
    match ids.split_once(':') {
        Some((v, p)) => match (hex(v), hex(p)) {
            (Some(v), Some(p)) => Ok(Target::Host(host::HostFilter {
                vid_pid: Some((v, p)),
                serial,
            })),
            _ => Err(bad(
                "VID:PID as two 4-digit hex numbers, e.g. usb:1d6b:0104",
            )),
        },
        None => Err(bad(form)),
    }
}

/// The `usb` driver.
///
/// - `open usb:[VID:PID[/SERIAL]]` / `listen usb:[VID:PID[/SERIAL]]`: the
///   host end. Open takes the first matching device now; listen takes each
///   matching device that appears or is free.
/// - `open usb:gadget[:UDC]` / `listen usb:gadget[:UDC]`: the gadget end.
///   The first use builds the gadget and binds it (root); later uses share
///   it. Open waits (`?timeout=`, default 10 s) for the host's next session,
///   listen hands out each session the host starts.
#[derive(Default)]
pub struct UsbDriver {
    gadgets: Mutex<Vec<Arc<gadget::Gadget>>>,
}

/// How long `open usb:gadget` waits for the host, unless `?timeout=` says otherwise.
pub const DEFAULT_GADGET_OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl UsbDriver {
    /// The driver; register it with `Registry::register(Arc::new(UsbDriver::new()))`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The gadget on `udc` (or the first), built on first use.
    fn gadget(
        &self,
        udc: Option<&str>,
        ffs: Option<&std::path::Path>,
    ) -> Result<Arc<gadget::Gadget>, OpenError> {
        let mut gadgets = self.gadgets.lock().unwrap();
        if let Some(g) = gadgets
            .iter()
            .find(|g| udc.is_none_or(|u| g.udc == u))
            .cloned()
        {
            return Ok(g);
        }
        let g = Arc::new(gadget::Gadget::start(udc, ffs)?);
        gadgets.push(g.clone());
        Ok(g)
    }
}

fn normalized(t: &Target) -> String {
    match t {
        Target::Gadget { udc, ffs } => format!(
            "usb:gadget{}{}",
            udc.as_ref().map(|u| format!(":{u}")).unwrap_or_default(),
            ffs.as_ref()
                .map(|p| format!("?ffs={}", p.display()))
                .unwrap_or_default()
        ),
        Target::Host(f) => match (&f.vid_pid, &f.serial) {
            (None, _) => "usb:".into(),
            (Some((v, p)), None) => format!("usb:{v:04x}:{p:04x}"),
            (Some((v, p)), Some(s)) => format!("usb:{v:04x}:{p:04x}/{s}"),
        },
    }
}

#[async_trait]
impl LinkDriver for UsbDriver {
    fn scheme(&self) -> &'static str {
        "usb"
    }

    fn describe(&self) -> &'static str {
        "USB cable between two Linux boxes: bulk endpoints (host: usb:[VID:PID], gadget: usb:gadget[:UDC])"
    }

    async fn probe(&self) -> Vec<Adapter> {
        probe::probe().await
    }

    async fn open(&self, sel: &Selector) -> Result<Box<dyn Link>, OpenError> {
        let target = parse(sel)?;
        let selector = normalized(&target);
        match target {
            Target::Host(filter) => host::open(&filter, &selector).await,
            Target::Gadget { udc, ffs } => {
                let wait = sel
                    .duration_param("timeout")?
                    .unwrap_or(DEFAULT_GADGET_OPEN_TIMEOUT);
                let g = self.gadget(udc.as_deref(), ffs.as_deref())?;
                let s = tokio::time::timeout(wait, g.next_session())
                    .await
                    .map_err(|_| {
                        OpenError::Timeout(format!(
                            "no USB host opened a session within {wait:?}; is the cable in and is the host end running gateway with usb:?"
                        ))
                    })?
                    .map_err(|e| OpenError::Io(std::io::Error::other(e.to_string())))?;
                Ok(s.into_link(&selector))
            }
        }
    }

    async fn listen(&self, sel: &Selector) -> Result<Box<dyn Listener>, OpenError> {
        let target = parse(sel)?;
        let selector = normalized(&target);
        match target {
            Target::Host(filter) => Ok(Box::new(host::HostListener { filter, selector })),
            Target::Gadget { udc, ffs } => Ok(Box::new(GadgetListener {
                gadget: self.gadget(udc.as_deref(), ffs.as_deref())?,
                selector,
            })),
        }
    }
}

struct GadgetListener {
    gadget: Arc<gadget::Gadget>,
    selector: String,
}

#[async_trait]
impl Listener for GadgetListener {
    fn local_selector(&self) -> String {
        self.selector.clone()
    }
    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        Ok(self.gadget.next_session().await?.into_link(&self.selector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Result<Target, SelectorError> {
        parse(&Selector::parse(s).unwrap())
    }

    #[test]
    fn selectors_name_the_host_end_or_the_gadget_end() {
        assert_eq!(
            t("usb:").unwrap(),
            Target::Host(host::HostFilter::default())
        );
        assert_eq!(
            t("usb:1D6B:0104/abc").unwrap(),
            Target::Host(host::HostFilter {
                vid_pid: Some((0x1d6b, 0x0104)),
                serial: Some("abc".into())
            })
        );
        assert_eq!(
            t("usb:gadget").unwrap(),
            Target::Gadget {
                udc: None,
                ffs: None
            }
        );
        let g = t("usb:gadget:dummy_udc.1?ffs=/dev/usb-ffs/gateway").unwrap();
        assert_eq!(
            g,
            Target::Gadget {
                udc: Some("dummy_udc.1".into()),
                ffs: Some("/dev/usb-ffs/gateway".into())
            }
        );
        assert_eq!(
            normalized(&g),
            "usb:gadget:dummy_udc.1?ffs=/dev/usb-ffs/gateway"
        );
        assert_eq!(normalized(&t("usb:1D6B:0104").unwrap()), "usb:1d6b:0104");
    }

    #[test]
    fn malformed_selectors_say_what_is_expected() {
        for bad in [
            "usb:1d6b",
            "usb:xyz:0104",
            "usb:1d6b:104",
            "usb:1d6b:0104/",
            "usb:gadget:",
            "usb:gadget:a/b",
            "usb:1d6b:0104?ffs=/x",
            "usb:gadget?ffs=relative",
        ] {
            let e = t(bad).unwrap_err().to_string();
            assert!(e.contains("usb:") || e.contains("ffs"), "{bad}: {e}");
        }
    }
}
