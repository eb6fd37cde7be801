//! gateway-serial: the `serial:` link driver, for serial lines — USB CDC-ACM
//! gadgets (`/dev/ttyACM*` on the host, `/dev/ttyGS*` on the gadget),
//! USB-serial adapters (`/dev/ttyUSB*`), UARTs (`/dev/ttyS*`) and PTYs.
//!
//! A line is point-to-point: one end listens on its device, the other opens
//! its own device, and one link at a time runs over the pair. Frames travel
//! COBS-encoded with a CRC32C, so a receiver finds the next frame after line
//! noise by itself (see `codec.rs` for the bytes, `link.rs` for sessions,
//! keepalives and close).
//!
//! Frames are cut into numbered segments of 32 KiB; a segment hit by noise
//! is dropped (counted in [`counters`]) and sent again (go-back-N with a NAK
//! on the first hole and a retransmission timer, `arq.rs`), so the layers
//! above see every frame in order, or an error, as over TCP. It does not
//! find peers and does not encrypt.
//! It needs no system library (tokio-serial without libudev).
#![warn(missing_docs)]

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use gateway_link::{Adapter, Link, LinkDriver, Listener, OpenError, Selector, SelectorError};
use tokio_serial::{DataBits, FlowControl, Parity, SerialStream, StopBits};

mod arq;
#[cfg(feature = "test-cable")]
pub mod cable;
mod codec;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod link;

pub use link::SILENCE_TIMEOUT;

/// Largest frame: a 16 MiB chunk plus room for the frame around it (the same
/// as TCP). On the wire COBS adds one byte per 254, the packet 7 more.
pub const MAX_FRAME: usize = 16 * 1024 * 1024 + 64 * 1024;
/// Baud rate when the selector names none: the common default of UARTs and
/// USB-serial adapters. CDC-ACM devices and PTYs ignore the baud rate and run
/// as fast as USB or the CPU allow.
pub const DEFAULT_BAUD: u32 = 115_200;
/// Highest baud rate a selector may ask for (fast USB-serial chips reach 12
/// Mbaud).
pub const MAX_BAUD: u32 = 20_000_000;
/// How long `open` waits for the listening end to answer, unless `?timeout=`
/// says otherwise.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `open`/`listen` retry a device that another open file holds
/// (e.g. a link of this process dropped a moment ago) before calling it busy.
const BUSY_WAIT: Duration = Duration::from_secs(1);

/// Flow control on the line (`?flow=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// `none` (default): no flow control.
    None,
    /// `hw`: RTS/CTS hardware handshake.
    Hardware,
    /// `sw`: XON/XOFF; frames are escaped so they never contain 0x11 or 0x13.
    Software,
}

/// A parsed `serial:` selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SerialConfig {
    pub(crate) path: String,
    pub(crate) baud: u32,
    pub(crate) flow: Flow,
    pub(crate) open_timeout: Duration,
    /// The selector links report (normalized).
    pub(crate) selector: String,
}

impl SerialConfig {
    fn parse(sel: &Selector) -> Result<SerialConfig, SelectorError> {
        let bad = |expected: &str| SelectorError::BadAddress {
            input: sel.raw.clone(),
            expected: expected.to_string(),
        };
        let form = "a device path with an optional baud rate, e.g. serial:/dev/ttyACM0 or serial:/dev/ttyUSB0@3000000";
        let (path, baud) = match sel.address.rsplit_once('@') {
            None => (sel.address.as_str(), DEFAULT_BAUD),
            Some((path, baud)) => {
                let rate = baud
                    .parse::<u32>()
                    .ok()
                    .filter(|b| (1..=MAX_BAUD).contains(b) && baud.bytes().all(|c| c.is_ascii_digit()))
                    .ok_or_else(|| {
                        bad(&format!(
                            "a baud rate from 1 to {MAX_BAUD} after '@' ('{baud}' is not one), e.g. serial:{path}@115200"
                        ))
                    })?;
                (path, rate)
            }
        };
        if !path.starts_with('/') || path.len() < 2 {
            return Err(bad(form));
        }
        let flow = match sel.params.get("flow").map(|s| s.trim()) {
            None | Some("none") => Flow::None,
            Some("hw") => Flow::Hardware,
            Some("sw") => Flow::Software,
            Some(other) => {
                return Err(SelectorError::BadParamValue {
                    key: "flow".into(),
                    value: other.to_string(),
                    expected: "none, hw (RTS/CTS) or sw (XON/XOFF)".into(),
                });
            }
        };
        let open_timeout = sel
            .duration_param("timeout")?
            .unwrap_or(DEFAULT_OPEN_TIMEOUT);
        Ok(SerialConfig {
            path: path.to_string(),
            baud,
            flow,
            open_timeout,
            selector: sel.to_string(),
        })
    }

    /// `serial:PATH@BAUD[?flow=…]`: what a listener reports.
    fn canonical(&self) -> String {
        let flow = match self.flow {
            Flow::None => "",
            Flow::Hardware => "?flow=hw",
            Flow::Software => "?flow=sw",
        };
        format!("serial:{}@{}{flow}", self.path, self.baud)
    }

    pub(crate) fn escaped(&self) -> bool {
        self.flow == Flow::Software
    }
}

/// The `serial` driver.
///
/// Selector: `serial:DEVICE[@BAUD][?flow=none|hw|sw][&timeout=5s]`, e.g.
/// `serial:/dev/ttyACM0`, `serial:/dev/ttyUSB0@3000000?flow=hw`. BAUD defaults
/// to [`DEFAULT_BAUD`]; the line is always 8N1. Both ends must agree on baud
/// and flow (`sw` also changes the bytes on the wire).
///
/// - `listen serial:DEVICE` opens DEVICE at once (so a missing device or a
///   permission problem shows up then) and `accept` yields one link when the
///   other end opens; after that link is dropped, `accept` yields the next.
///   `local_selector()` is this end's selector: the other end opens its own
///   device.
/// - `open serial:DEVICE` opens DEVICE and waits up to `?timeout=` (default
///   [`DEFAULT_OPEN_TIMEOUT`]) for the listening end to answer.
///
/// A link whose other end is silent for [`SILENCE_TIMEOUT`] fails (idle ends
/// send a keepalive byte every second).
#[derive(Debug, Default, Clone, Copy)]
pub struct SerialDriver;

impl SerialDriver {
    /// The driver; register it with `Registry::register(Arc::new(SerialDriver::new()))`.
    pub fn new() -> Self {
        SerialDriver
    }
}

#[async_trait]
impl LinkDriver for SerialDriver {
    fn scheme(&self) -> &'static str {
        "serial"
    }

    fn describe(&self) -> &'static str {
        "serial lines (CDC-ACM gadgets, USB-serial adapters, UARTs, PTYs): serial:/dev/ttyACM0[@BAUD][?flow=none|hw|sw], one link per device"
    }

    async fn probe(&self) -> Vec<Adapter> {
        probe_devices(Path::new("/dev"), Path::new("/sys/class/tty"))
    }

    async fn open(&self, sel: &Selector) -> Result<Box<dyn Link>, OpenError> {
        let cfg = SerialConfig::parse(sel)?;
        let stream = open_device(&cfg).await?;
        link::connect(link::Port::new(cfg, stream)).await
    }

    async fn listen(&self, sel: &Selector) -> Result<Box<dyn Listener>, OpenError> {
        let mut cfg = SerialConfig::parse(sel)?;
        cfg.selector = cfg.canonical();
        let stream = open_device(&cfg).await?;
        tracing::debug!(path = %cfg.path, baud = cfg.baud, flow = ?cfg.flow, "serial listening");
        Ok(Box::new(link::SerialListener::new(link::Port::new(
            cfg, stream,
        ))))
    }
}

fn not_found(path: &str) -> OpenError {
    OpenError::NotFound(format!(
        "{path} does not exist: is the cable plugged in (for a USB gadget: is the other machine's gadget up)? `gateway links` lists the serial devices here"
    ))
}

/// The group owning `path` (e.g. dialout, uucp), for the permission hint.
fn owner_group(path: &str) -> String {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(m.gid())).ok())
        .flatten()
        .map(|g| g.name)
        .filter(|n| n != "root")
        .unwrap_or_else(|| "dialout".into())
}

fn permission_fix(path: &str) -> String {
    let group = owner_group(path);
    format!(
        "add yourself to the `{group}` group (`sudo usermod -aG {group} $USER`, then log out and in again), or see udev/ in the gateway sources for a rule"
    )
}

/// Opens and configures the device (raw 8N1, baud, flow control).
async fn open_device(cfg: &SerialConfig) -> Result<SerialStream, OpenError> {
    let path = cfg.path.as_str();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found(path)),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(OpenError::PermissionDenied {
                what: path.to_string(),
                fix: permission_fix(path),
            });
        }
        Err(e) => return Err(OpenError::Io(e)),
        Ok(m) if !m.file_type().is_char_device() => {
            return Err(OpenError::Unsupported(format!(
                "{path} is not a serial device (not a character device)"
            )));
        }
        Ok(_) => {}
    }
    let builder = tokio_serial::new(path, cfg.baud)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(match cfg.flow {
            Flow::None => FlowControl::None,
            Flow::Hardware => FlowControl::Hardware,
            Flow::Software => FlowControl::Software,
        })
        // Not TIOCEXCL: it outlives our close while any other file keeps the
        // tty open (a PTY's master, say), and then refuses every later open
        // but root's. The exclusive flock below is released with our file.
        .exclusive(false);
    let busy = || {
        OpenError::Busy(format!(
            "{path} is open in another program (another gateway, screen, minicom, ModemManager…); close it and try again"
        ))
    };
    let give_up = tokio::time::Instant::now() + BUSY_WAIT;
    loop {
        let e = match SerialStream::open(&builder) {
            Ok(s) => match lock_exclusive(&s) {
                Ok(()) => return Ok(s),
                Err(e) if e == nix::errno::Errno::EWOULDBLOCK => {
                    if tokio::time::Instant::now() >= give_up {
                        return Err(busy());
                    }
                    drop(s);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => {
                    return Err(OpenError::Io(io::Error::other(format!(
                        "cannot lock {path} for this process: {e}"
                    ))));
                }
            },
            Err(e) => e,
        };
        use tokio_serial::ErrorKind as K;
        return Err(match e.kind {
            // serialport reports a device another file holds locked as NoDevice.
            K::NoDevice if tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            K::NoDevice => busy(),
            K::Io(io::ErrorKind::NotFound) => not_found(path),
            K::Io(io::ErrorKind::PermissionDenied) => OpenError::PermissionDenied {
                what: path.to_string(),
                fix: permission_fix(path),
            },
            K::InvalidInput => OpenError::Unsupported(format!(
                "{path} refused the settings ({}); try another baud rate",
                e.description
            )),
            K::Io(kind) => OpenError::Io(io::Error::new(
                kind,
                format!("cannot open {path}: {}", e.description),
            )),
            K::Unknown => OpenError::Io(io::Error::other(format!(
                "cannot open {path} as a serial port: {} (is the device present and a serial line?)",
                e.description
            ))),
        });
    }
}

/// Takes the device for this open file only (other gateways and serialport
/// users take the same lock): two readers on one line would each get half
/// the bytes.
fn lock_exclusive(s: &SerialStream) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // `Flock` wants to own the file, which SerialStream does; the lock belongs
    // to the open file description and goes when SerialStream closes it.
    #[allow(deprecated)]
    nix::fcntl::flock(s.as_raw_fd(), nix::fcntl::FlockArg::LockExclusiveNonblock)
}

/// Process-wide counts of packets serial links received and dropped (every
/// device, since the process started).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Packets received intact (frames, and the link's own packets).
    pub packets: u64,
    /// Packets dropped because they were not valid COBS or failed the CRC.
    pub dropped_corrupt: u64,
    /// Packets dropped because they were longer than the largest frame.
    pub dropped_oversized: u64,
    /// Bytes thrown away in dropped packets and while resynchronising.
    pub discarded_bytes: u64,
    /// Segments sent again (a hole reported by the other end, or no ack in time).
    pub resent_segments: u64,
}

static PACKETS: AtomicU64 = AtomicU64::new(0);
static CORRUPT: AtomicU64 = AtomicU64::new(0);
static RESENT: AtomicU64 = AtomicU64::new(0);
static OVERSIZED: AtomicU64 = AtomicU64::new(0);
static DISCARDED: AtomicU64 = AtomicU64::new(0);

/// What every serial link of this process received and dropped so far.
pub fn counters() -> Counters {
    Counters {
        packets: PACKETS.load(Ordering::Relaxed),
        dropped_corrupt: CORRUPT.load(Ordering::Relaxed),
        dropped_oversized: OVERSIZED.load(Ordering::Relaxed),
        discarded_bytes: DISCARDED.load(Ordering::Relaxed),
        resent_segments: RESENT.load(Ordering::Relaxed),
    }
}

pub(crate) fn count_resent(n: u64) {
    if n > 0 {
        RESENT.fetch_add(n, Ordering::Relaxed);
    }
}

pub(crate) fn count(path: &str, was: &codec::DecodeStats, now: &codec::DecodeStats) {
    PACKETS.fetch_add(now.packets - was.packets, Ordering::Relaxed);
    CORRUPT.fetch_add(now.corrupt - was.corrupt, Ordering::Relaxed);
    OVERSIZED.fetch_add(now.oversized - was.oversized, Ordering::Relaxed);
    DISCARDED.fetch_add(now.discarded_bytes - was.discarded_bytes, Ordering::Relaxed);
    if now.corrupt + now.oversized > was.corrupt + was.oversized {
        tracing::debug!(
            path,
            corrupt = now.corrupt,
            oversized = now.oversized,
            discarded_bytes = now.discarded_bytes,
            "serial: packets dropped on this device so far"
        );
    }
}

/// What kind of serial device a /dev name is, if it is one we list.
fn device_kind(name: &str) -> Option<&'static str> {
    let digits = |rest: &str| !rest.is_empty() && rest.bytes().all(|c| c.is_ascii_digit());
    [
        ("ttyACM", "USB CDC-ACM device"),
        ("ttyUSB", "USB-serial adapter"),
        (
            "ttyGS",
            "USB serial gadget (this machine is the USB device)",
        ),
        ("ttyS", "UART"),
    ]
    .into_iter()
    .find(|(prefix, _)| name.strip_prefix(prefix).is_some_and(digits))
    .map(|(_, kind)| kind)
}

/// ttyS0..31 exist whether or not a UART is behind them; the kernel reports
/// the UART type, 0 when there is none.
fn uart_present(sys: &Path, name: &str) -> bool {
    std::fs::read_to_string(sys.join(name).join("type"))
        .is_ok_and(|t| t.trim() != "0" && !t.trim().is_empty())
}

/// Lists the serial devices under `dev` (ttyACM*, ttyUSB*, ttyGS*, and the
/// ttyS* with a UART behind them per `sys`), usable when this user may read
/// and write them.
fn probe_devices(dev: &Path, sys: &Path) -> Vec<Adapter> {
    let Ok(entries) = std::fs::read_dir(dev) else {
        return Vec::new();
    };
    let mut found: Vec<(String, &'static str)> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| Some((device_kind(&name)?, name)))
        .filter(|(_, name)| !name.starts_with("ttyS") || uart_present(sys, name))
        .map(|(kind, name)| (name, kind))
        .collect();
    // ttyACM2 before ttyACM10.
    found.sort_by_key(|(name, _)| {
        let split = name
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(name.len());
        let n: u64 = name[split..].parse().unwrap_or(0);
        (name[..split].to_string(), n)
    });
    found
        .into_iter()
        .map(|(name, kind)| {
            let path = dev.join(&name);
            let driver = driver_name(&sys.join(&name).join("device"));
            let what = match driver {
                Some(d) => format!("{kind}, driver {d}"),
                None => kind.to_string(),
            };
            let access = nix::unistd::access(
                &path,
                nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
            );
            let path_s = path.display().to_string();
            adapter(&path_s, &what, access.map_err(|e| e.to_string()))
        })
        .collect()
}

/// The driver behind a tty's device: cdc_acm, ftdi_sio, serial8250… A UART's
/// own devices belong to the generic serial-core bus (drivers "port" and
/// "ctrl"), so look past those to the chip's driver.
fn driver_name(device: &Path) -> Option<String> {
    let mut dir = device.to_path_buf();
    for _ in 0..4 {
        let link = std::fs::read_link(dir.join("driver")).ok()?;
        if !link.to_string_lossy().contains("/serial-base/") {
            return Some(link.file_name()?.to_string_lossy().into_owned());
        }
        dir.push("..");
    }
    None
}

fn adapter(path: &str, what: &str, access: Result<(), String>) -> Adapter {
    let (usable, detail) = match access {
        Ok(()) => (true, format!("{what}: serial:{path}")),
        Err(e) => (
            false,
            format!(
                "{what}; not readable and writable by this user ({e}): {}",
                permission_fix(path)
            ),
        ),
    };
    Adapter {
        scheme: "serial".into(),
        name: path.to_string(),
        usable,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> Result<SerialConfig, String> {
        SerialConfig::parse(&Selector::parse(s).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_device_baud_and_flow() {
        let c = cfg("serial:/dev/ttyACM0").unwrap();
        assert_eq!(
            (c.path.as_str(), c.baud, c.flow),
            ("/dev/ttyACM0", DEFAULT_BAUD, Flow::None)
        );
        let c = cfg("serial:/dev/ttyUSB1@3000000?flow=hw&timeout=2s").unwrap();
        assert_eq!(
            (c.path.as_str(), c.baud, c.flow, c.open_timeout),
            (
                "/dev/ttyUSB1",
                3_000_000,
                Flow::Hardware,
                Duration::from_secs(2)
            )
        );
        assert_eq!(c.canonical(), "serial:/dev/ttyUSB1@3000000?flow=hw");
        let c =
            cfg("serial:/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0@9600?flow=sw").unwrap();
        assert_eq!(c.path, "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0");
        assert_eq!((c.baud, c.flow), (9600, Flow::Software));
        assert!(c.escaped());
    }

    #[test]
    fn bad_selectors_say_what_is_expected() {
        for (sel, want) in [
            ("serial:/dev/ttyACM0@fast", "baud rate from 1 to 20000000"),
            ("serial:/dev/ttyACM0@0", "'0' is not one"),
            ("serial:/dev/ttyACM0@99999999", "baud rate"),
            ("serial:/dev/ttyACM0@+9600", "baud rate"),
            ("serial:/dev/ttyACM0@", "baud rate"),
            ("serial:ttyACM0", "device path"),
            ("serial:", "device path"),
            (
                "serial:/dev/ttyACM0?flow=rtscts",
                "none, hw (RTS/CTS) or sw",
            ),
            ("serial:/dev/ttyACM0?timeout=soon", "timeout=soon"),
        ] {
            let e = cfg(sel).expect_err(sel);
            assert!(e.contains(want), "{sel}: expected '{want}' in: {e}");
        }
    }

    #[test]
    fn device_names_are_classified() {
        assert!(device_kind("ttyACM0").is_some());
        assert!(device_kind("ttyUSB12").is_some());
        assert!(device_kind("ttyGS0").is_some());
        assert!(device_kind("ttyS3").is_some());
        for not in ["tty1", "ttyACM", "ttySx", "ttyprintk", "ttyS0x", "console"] {
            assert!(device_kind(not).is_none(), "{not}");
        }
    }

    #[test]
    fn probe_lists_serial_devices_and_skips_empty_uart_slots() {
        let dir = std::env::temp_dir().join(format!("gw-serial-probe-{}", std::process::id()));
        let (dev, sys) = (dir.join("dev"), dir.join("sys"));
        let _ = std::fs::remove_dir_all(&dir);
        for name in [
            "ttyACM10", "ttyACM2", "ttyUSB0", "ttyS0", "ttyS1", "tty0", "null",
        ] {
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join(name), b"").unwrap();
        }
        for (name, ty) in [("ttyS0", "4\n"), ("ttyS1", "0\n")] {
            std::fs::create_dir_all(sys.join(name)).unwrap();
            std::fs::write(sys.join(name).join("type"), ty).unwrap();
        }
        let names: Vec<String> = probe_devices(&dev, &sys)
            .into_iter()
            .map(|a| a.name.rsplit('/').next().unwrap().to_string())
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(names, ["ttyACM2", "ttyACM10", "ttyS0", "ttyUSB0"]);
    }

    #[test]
    fn an_unwritable_device_is_listed_as_unusable_with_the_fix() {
        let a = adapter(
            "/dev/ttyACM0",
            "USB CDC-ACM device",
            Err("EACCES: Permission denied".into()),
        );
        assert!(!a.usable);
        assert!(
            a.detail.contains("not readable and writable")
                && a.detail.contains("group")
                && a.detail.contains("udev/"),
            "{}",
            a.detail
        );
        let a = adapter("/dev/ttyACM0", "USB CDC-ACM device", Ok(()));
        assert!(
            a.usable && a.detail.contains("serial:/dev/ttyACM0"),
            "{}",
            a.detail
        );
    }
}
