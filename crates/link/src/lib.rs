//! gateway-link: the `Link` abstraction every transport driver implements (whole
//! frames, split into a sending and a receiving half), selectors, the driver
//! registry, framers, an in-memory `mock:` driver, a fault injector and the
//! conformance suite every driver runs.
//!
//! It is not a transport itself (drivers live in `drivers/*`), and it knows
//! nothing of the wire protocol, encryption or transfers carried in the frames.
#![warn(missing_docs)]

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

mod error;
mod rate;
mod registry;
mod selector;

pub mod conformance;
pub mod faulty;
pub mod framer;
pub mod mock;

pub use error::{LinkError, OpenError, SelectorError};
pub use rate::RateLimited;
pub use registry::Registry;
pub use selector::Selector;

/// What kind of transport a link runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkKind {
    /// TCP over Wi-Fi or Ethernet.
    Tcp,
    /// A serial line: CDC-ACM, UART, PTY.
    Serial,
    /// USB bulk endpoints or FunctionFS.
    Usb,
    /// Bluetooth BR/EDR or LE CoC (RFCOMM, L2CAP).
    Bluetooth,
    /// Bluetooth Low Energy GATT.
    Ble,
    /// In-memory link for tests.
    Mock,
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkKind::Tcp => "tcp",
            LinkKind::Serial => "serial",
            LinkKind::Usb => "usb",
            LinkKind::Bluetooth => "bluetooth",
            LinkKind::Ble => "ble",
            LinkKind::Mock => "mock",
        })
    }
}

/// What a link can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkCaps {
    /// Transport kind.
    pub kind: LinkKind,
    /// Largest frame `send` accepts and `recv` returns, in bytes.
    pub max_frame: usize,
    /// Frames are never lost or altered while the link is up.
    pub reliable: bool,
    /// Frames arrive in the order they were sent.
    pub ordered: bool,
}

/// Where a link goes, for logs and people.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LinkInfo {
    /// The selector as typed, normalized (e.g. "tcp:127.0.0.1:7878"); for an
    /// accepted link, the listener's selector.
    pub selector: String,
    /// Human-readable local address.
    pub local: String,
    /// Human-readable peer address.
    pub peer: String,
}

/// The sending half of a link.
///
/// `send` is not cancel-safe: dropping its future mid-frame may leave a
/// stream transport unusable.
#[async_trait]
pub trait FrameTx: Send {
    /// Sends one whole frame. A frame longer than `max_frame` is refused with
    /// [`LinkError::FrameTooLarge`] before anything is sent.
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError>;
    /// Flushes and closes the sending direction; the peer's `recv` then
    /// returns [`LinkError::Closed`] after the frames already sent.
    async fn close(&mut self) -> Result<(), LinkError>;
}

/// The receiving half of a link.
#[async_trait]
pub trait FrameRx: Send {
    /// Receives one whole frame. [`LinkError::Closed`] means the peer closed
    /// cleanly. The drivers in this workspace make it cancel-safe (a frame
    /// being read when the future is dropped is returned by the next call),
    /// so it can sit in `tokio::select!`.
    async fn recv(&mut self) -> Result<Bytes, LinkError>;
}

/// An open, bidirectional, frame-oriented link.
pub trait Link: Send {
    /// What this link can do.
    fn caps(&self) -> LinkCaps;
    /// Where this link goes.
    fn info(&self) -> &LinkInfo;
    /// Splits into halves so sending and receiving run in different tasks.
    /// Dropping both halves without `close` drops the link abruptly.
    fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>);
}

/// Accepts incoming links.
#[async_trait]
pub trait Listener: Send {
    /// The selector a peer can open to reach this listener, resolved (port 0
    /// becomes the real port).
    fn local_selector(&self) -> String;
    /// Waits for the next incoming link.
    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError>;
}

/// One local adapter a driver found, for `gateway links`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adapter {
    /// Driver scheme, e.g. "tcp".
    pub scheme: String,
    /// Adapter name, e.g. "wlan0", "/dev/ttyACM0", "hci0".
    pub name: String,
    /// Whether links can be opened through it now.
    pub usable: bool,
    /// Addresses, or why it is not usable and what to do.
    pub detail: String,
}

/// A transport driver: opens and listens for links of one scheme.
#[async_trait]
pub trait LinkDriver: Send + Sync {
    /// The selector scheme, e.g. "tcp", "serial", "mock".
    fn scheme(&self) -> &'static str;
    /// One line for `gateway links`.
    fn describe(&self) -> &'static str;
    /// Lists local adapters: present? usable? why not?
    async fn probe(&self) -> Vec<Adapter>;
    /// Opens a link. Drivers ignore `?rate=`; the [`Registry`] applies it.
    async fn open(&self, sel: &Selector) -> Result<Box<dyn Link>, OpenError>;
    /// Starts listening for incoming links.
    async fn listen(&self, sel: &Selector) -> Result<Box<dyn Listener>, OpenError>;
    /// Looks for peers that advertise gateway on this transport itself (BLE
    /// advertising, for nodes with no IP in common) for up to `window`, and
    /// sends a selector to open for each as it is seen. Transports whose
    /// peers are found by mDNS or known addresses find nothing here (the
    /// default). Nothing found is trusted: discovery verifies each one.
    async fn scan(&self, window: std::time::Duration, found: &ScanSink) {
        let _ = (window, found);
    }
}

/// Where [`LinkDriver::scan`] puts the selectors it finds.
pub type ScanSink = tokio::sync::mpsc::UnboundedSender<String>;
