//! gateway-tcp: the `tcp:` link driver, for Wi-Fi and Ethernet. Frames travel
//! over one TCP connection with gateway-link's u32 length-prefix framer.
//!
//! It does not find peers (that is gateway-discovery's mDNS) and does not
//! encrypt (gateway-secure runs Noise over the frames).
#![warn(missing_docs)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gateway_link::framer::{FrameReader, write_frame};
use gateway_link::{
    Adapter, FrameRx, FrameTx, Link, LinkCaps, LinkDriver, LinkError, LinkInfo, LinkKind, Listener,
    OpenError, Selector, SelectorError,
};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, lookup_host};
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

/// Largest frame: a 16 MiB chunk plus room for the frame around it.
pub const MAX_FRAME: usize = 16 * 1024 * 1024 + 64 * 1024;
/// How long `open` waits for name resolution and the connection, unless `?timeout=` says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `?user_timeout=`: how long sent data may stay unacknowledged before
/// the kernel declares the peer dead, so a send to a vanished peer errors.
pub const DEFAULT_USER_TIMEOUT: Duration = Duration::from_secs(60);
/// Read buffer; frames at least this big are read straight into their own
/// buffer, past it.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Keepalive: probe an idle connection after 10 s, every 5 s, give up after 3,
/// so a peer that vanished while idle is noticed in about 25 s.
#[cfg(any(target_os = "linux", target_os = "android"))]
const KEEPALIVE: (u32, u32, u32) = (10, 5, 3);

/// The `tcp` driver.
///
/// - `open tcp:HOST:PORT`: HOST is an IPv4 address, `[IPv6]` or a name
///   (each resolved address is tried in turn). `?timeout=5s` bounds resolution
///   plus connect; `?user_timeout=60s` bounds unacknowledged sends (0 = kernel
///   default).
/// - `listen tcp:ADDR:PORT`: port 0 picks a free port. `local_selector()`
///   gives the real port; for a wildcard address it names loopback instead
///   (`0.0.0.0` → `127.0.0.1`, `[::]` → `[::1]`), which is what a test on this
///   machine can open; peers elsewhere use one of the addresses `probe` lists.
///
/// Sockets get TCP_NODELAY and SO_KEEPALIVE (with short keepalive timers and
/// TCP_USER_TIMEOUT on Linux), so half-dead peers turn into errors.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpDriver;

impl TcpDriver {
    /// The driver; register it with `Registry::register(Arc::new(TcpDriver::new()))`.
    pub fn new() -> Self {
        TcpDriver
    }
}

fn caps() -> LinkCaps {
    LinkCaps {
        kind: LinkKind::Tcp,
        max_frame: MAX_FRAME,
        reliable: true,
        ordered: true,
    }
}

/// Splits `HOST:PORT` / `[V6]:PORT`; an empty host is allowed (listen uses 0.0.0.0).
fn host_port(sel: &Selector) -> Result<(String, u16), SelectorError> {
    let bad = |expected: &str| SelectorError::BadAddress {
        input: sel.raw.clone(),
        expected: expected.to_string(),
    };
    let form =
        "HOST:PORT, e.g. tcp:192.168.1.7:7878, tcp:[fe80::1%wlan0]:7878 or tcp:myhost.local:7878";
    let (host, port) = if let Some(rest) = sel.address.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or_else(|| bad(form))?;
        (h, p.strip_prefix(':').ok_or_else(|| bad(form))?)
    } else {
        let (h, p) = sel.address.rsplit_once(':').ok_or_else(|| bad(form))?;
        if h.contains(':') {
            return Err(bad("an IPv6 address in brackets, e.g. tcp:[::1]:7878"));
        }
        (h, p)
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| bad("a port from 0 to 65535 after the last ':', e.g. tcp:192.168.1.7:7878"))?;
    Ok((host.to_string(), port))
}

/// Resolves `host` (names, IPv4, IPv6 with an optional `%scope`) before `deadline`.
async fn resolve(
    host: &str,
    port: u16,
    deadline: Instant,
    limit: Duration,
) -> Result<Vec<SocketAddr>, OpenError> {
    let addrs = match timeout_at(deadline, lookup_host((host, port))).await {
        Err(_) => {
            return Err(OpenError::Timeout(format!(
                "resolving {host} took longer than {limit:?}; check DNS/mDNS or use an IP address"
            )));
        }
        Ok(Err(e)) => {
            return Err(OpenError::NotFound(format!(
                "cannot resolve host '{host}' ({e}); check the name or use an IP address"
            )));
        }
        Ok(Ok(a)) => a.collect::<Vec<_>>(),
    };
    if addrs.is_empty() {
        return Err(OpenError::NotFound(format!(
            "host '{host}' has no addresses; use an IP address"
        )));
    }
    Ok(addrs)
}

fn connect_error(addr: SocketAddr, e: io::Error) -> OpenError {
    let port = addr.port();
    match e.kind() {
        io::ErrorKind::ConnectionRefused => OpenError::Refused(format!(
            "nothing listens on {addr}; start `gateway serve --listen tcp:0.0.0.0:{port}` there"
        )),
        io::ErrorKind::PermissionDenied => OpenError::PermissionDenied {
            what: format!("connecting to {addr}"),
            fix: "a firewall or security policy on this machine blocks it; allow outgoing TCP to that port".into(),
        },
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => OpenError::NotFound(format!(
            "no route to {addr} ({e}); check that this machine is on the peer's network"
        )),
        io::ErrorKind::TimedOut => OpenError::Timeout(format!(
            "{addr} did not answer ({e}); check the address and that the peer is reachable"
        )),
        _ => OpenError::Io(e),
    }
}

fn listen_error(addr: SocketAddr, e: io::Error) -> OpenError {
    match e.kind() {
        io::ErrorKind::AddrInUse => OpenError::Busy(format!(
            "{addr} is already in use; stop the other listener there or pick another port"
        )),
        io::ErrorKind::PermissionDenied => OpenError::PermissionDenied {
            what: format!("listening on {addr}"),
            fix: "ports below 1024 need root or CAP_NET_BIND_SERVICE; pick a port above 1023"
                .into(),
        },
        io::ErrorKind::AddrNotAvailable => OpenError::NotFound(format!(
            "{} is not an address of this machine; listen on 0.0.0.0 or an address `gateway links` shows",
            addr.ip()
        )),
        _ => OpenError::Io(e),
    }
}

/// Socket options for a half-dead peer to become an error, and for small
/// frames not to wait for Nagle.
fn tune(s: &TcpStream, user_timeout: Duration) {
    if let Err(e) = s.set_nodelay(true) {
        tracing::warn!(error = %e, "cannot set TCP_NODELAY");
    }
    use nix::sys::socket::{setsockopt, sockopt};
    let mut r = setsockopt(s, sockopt::KeepAlive, &true);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let (idle, intvl, count) = KEEPALIVE;
        r = r
            .and_then(|_| setsockopt(s, sockopt::TcpKeepIdle, &idle))
            .and_then(|_| setsockopt(s, sockopt::TcpKeepInterval, &intvl))
            .and_then(|_| setsockopt(s, sockopt::TcpKeepCount, &count));
        if !user_timeout.is_zero() {
            let ms = u32::try_from(user_timeout.as_millis()).unwrap_or(u32::MAX);
            r = r.and_then(|_| setsockopt(s, sockopt::TcpUserTimeout, &ms));
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = user_timeout;
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot set TCP keepalive options; a vanished peer may go unnoticed longer");
    }
}

fn link(stream: TcpStream, selector: String, user_timeout: Duration) -> io::Result<Box<dyn Link>> {
    tune(&stream, user_timeout);
    let info = LinkInfo {
        selector,
        local: stream.local_addr()?.to_string(),
        peer: stream.peer_addr()?.to_string(),
    };
    let (r, w) = stream.into_split();
    Ok(Box::new(TcpLink { info, r, w }))
}

#[async_trait]
impl LinkDriver for TcpDriver {
    fn scheme(&self) -> &'static str {
        "tcp"
    }

    fn describe(&self) -> &'static str {
        "TCP over Wi-Fi/Ethernet: tcp:HOST:PORT (open), tcp:0.0.0.0:PORT (listen); ?timeout=5s"
    }

    async fn probe(&self) -> Vec<Adapter> {
        probe_interfaces()
    }

    async fn open(&self, sel: &Selector) -> Result<Box<dyn Link>, OpenError> {
        let (host, port) = host_port(sel)?;
        if host.is_empty() {
            return Err(SelectorError::BadAddress {
                input: sel.raw.clone(),
                expected: "a host before the port, e.g. tcp:192.168.1.7:7878".into(),
            }
            .into());
        }
        let limit = sel
            .duration_param("timeout")?
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let user_timeout = sel
            .duration_param("user_timeout")?
            .unwrap_or(DEFAULT_USER_TIMEOUT);
        let span = tracing::debug_span!("tcp_open", selector = %sel);
        async {
            let deadline = Instant::now() + limit;
            let mut last = None;
            for addr in resolve(&host, port, deadline, limit).await? {
                match timeout_at(deadline, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => {
                        tracing::debug!(%addr, "connected");
                        return Ok(link(s, sel.to_string(), user_timeout)?);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "connect failed");
                        last = Some(connect_error(addr, e));
                    }
                    Err(_) => {
                        return Err(OpenError::Timeout(format!(
                            "no answer from {addr} within {limit:?}; check the address and that the peer is reachable, or raise ?timeout="
                        )));
                    }
                }
            }
            Err(last.expect("resolve returns at least one address"))
        }
        .instrument(span)
        .await
    }

    async fn listen(&self, sel: &Selector) -> Result<Box<dyn Listener>, OpenError> {
        let (host, port) = host_port(sel)?;
        let host = if host.is_empty() {
            "0.0.0.0".to_string()
        } else {
            host
        };
        let user_timeout = sel
            .duration_param("user_timeout")?
            .unwrap_or(DEFAULT_USER_TIMEOUT);
        let limit = DEFAULT_CONNECT_TIMEOUT;
        let addr = resolve(&host, port, Instant::now() + limit, limit).await?[0];
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| listen_error(addr, e))?;
        let bound = listener.local_addr()?;
        let shown = match bound.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bound.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), bound.port())
            }
            _ => bound,
        };
        tracing::debug!(selector = %sel, %bound, "tcp listening");
        Ok(Box::new(TcpLinkListener {
            listener,
            local_selector: format!("tcp:{shown}"),
            user_timeout,
        }))
    }
}

struct TcpLinkListener {
    listener: TcpListener,
    local_selector: String,
    user_timeout: Duration,
}

#[async_trait]
impl Listener for TcpLinkListener {
    fn local_selector(&self) -> String {
        self.local_selector.clone()
    }

    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        let (s, peer) = self.listener.accept().await?;
        tracing::debug!(selector = %self.local_selector, %peer, "tcp accepted");
        Ok(link(s, self.local_selector.clone(), self.user_timeout)?)
    }
}

struct TcpLink {
    info: LinkInfo,
    r: OwnedReadHalf,
    w: OwnedWriteHalf,
}

impl Link for TcpLink {
    fn caps(&self) -> LinkCaps {
        caps()
    }
    fn info(&self) -> &LinkInfo {
        &self.info
    }
    fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
        (
            Box::new(TcpTx {
                w: self.w,
                closed: false,
            }),
            Box::new(TcpRx {
                r: BufReader::with_capacity(READ_BUFFER_BYTES, self.r),
                frames: FrameReader::new(MAX_FRAME),
            }),
        )
    }
}

struct TcpTx {
    // Unbuffered: the header and payload leave in one vectored write, so a
    // 1 MiB frame is one syscall and no copy.
    w: OwnedWriteHalf,
    closed: bool,
}

#[async_trait]
impl FrameTx for TcpTx {
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        if self.closed {
            return Err(LinkError::Closed);
        }
        write_frame(&mut self.w, frame, MAX_FRAME).await
    }

    async fn close(&mut self) -> Result<(), LinkError> {
        if !self.closed {
            self.closed = true;
            self.w.shutdown().await?;
        }
        Ok(())
    }
}

struct TcpRx {
    r: BufReader<OwnedReadHalf>,
    frames: FrameReader,
}

#[async_trait]
impl FrameRx for TcpRx {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        self.frames.read(&mut self.r).await
    }
}

/// Every interface with its addresses; usable when up, running and addressed.
fn probe_interfaces() -> Vec<Adapter> {
    use nix::net::if_::InterfaceFlags;
    use std::collections::BTreeMap;
    let addrs = match nix::ifaddrs::getifaddrs() {
        Ok(a) => a,
        Err(e) => {
            return vec![Adapter {
                scheme: "tcp".into(),
                name: "tcp".into(),
                usable: false,
                detail: format!("cannot list network interfaces: {e}"),
            }];
        }
    };
    let mut ifaces: BTreeMap<String, (InterfaceFlags, Vec<String>)> = BTreeMap::new();
    for a in addrs {
        let entry = ifaces
            .entry(a.interface_name.clone())
            .or_insert((a.flags, Vec::new()));
        entry.0 |= a.flags;
        let Some(sa) = a.address else { continue };
        if let Some(v4) = sa.as_sockaddr_in() {
            entry.1.push(v4.ip().to_string());
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            let ip = v6.ip();
            // Link-local addresses need the interface as scope to be reachable.
            if ip.segments()[0] & 0xffc0 == 0xfe80 {
                entry.1.push(format!("{ip}%{}", a.interface_name));
            } else {
                entry.1.push(ip.to_string());
            }
        }
    }
    ifaces
        .into_iter()
        .map(|(name, (flags, ips))| {
            let up = flags.contains(InterfaceFlags::IFF_UP);
            let running = flags.contains(InterfaceFlags::IFF_RUNNING);
            let lo = if flags.contains(InterfaceFlags::IFF_LOOPBACK) {
                "loopback, "
            } else {
                ""
            };
            let (usable, detail) = if !up {
                (
                    false,
                    format!("{lo}down; bring it up with `ip link set {name} up`"),
                )
            } else if !running {
                (
                    false,
                    format!("{lo}up but no carrier; plug in the cable or join a Wi-Fi network"),
                )
            } else if ips.is_empty() {
                (
                    false,
                    format!("{lo}up but has no IP address; get one by DHCP or assign one"),
                )
            } else {
                (true, format!("{lo}up: {}", ips.join(", ")))
            };
            Adapter {
                scheme: "tcp".into(),
                name,
                usable,
                detail,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> Result<(String, u16), String> {
        host_port(&Selector::parse(s).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_host_and_port_forms() {
        assert_eq!(
            hp("tcp:127.0.0.1:7878").unwrap(),
            ("127.0.0.1".into(), 7878)
        );
        assert_eq!(hp("tcp:[::1]:0").unwrap(), ("::1".into(), 0));
        assert_eq!(
            hp("tcp:[fe80::1%eth0]:9").unwrap(),
            ("fe80::1%eth0".into(), 9)
        );
        assert_eq!(
            hp("tcp:myhost.local:80?timeout=1s").unwrap(),
            ("myhost.local".into(), 80)
        );
        assert_eq!(hp("tcp::7878").unwrap(), ("".into(), 7878));
    }
}
