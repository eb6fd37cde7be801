//! The Bluetooth links' framing over real kernel sockets of the same kinds,
//! on any machine: RFCOMM's stream framing over a Unix stream socket, L2CAP's
//! fragments over a Unix SOCK_SEQPACKET socket (boundaries kept, EOF when the
//! peer closes, as L2CAP). The link conformance suite runs over both. The
//! real radios run the same suite in the rig (`hil-tests/rig.sh bt`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use gateway_bluez::packet::{PacketLink, PacketSocket};
use gateway_bluez::stream::StreamLink;
use gateway_link::{
    Adapter, Link, LinkCaps, LinkDriver, LinkError, LinkInfo, LinkKind, Listener, OpenError,
    Registry, Selector, conformance,
};
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, accept4, bind, connect, listen,
};
use tokio::io::unix::AsyncFd;
use tokio::net::{UnixListener, UnixStream};

fn caps() -> LinkCaps {
    LinkCaps {
        kind: LinkKind::Bluetooth,
        max_frame: gateway_bluez::MAX_FRAME,
        reliable: true,
        ordered: true,
    }
}

fn info(sel: &str) -> LinkInfo {
    LinkInfo {
        selector: sel.into(),
        ..Default::default()
    }
}

/// A nonblocking Unix SOCK_SEQPACKET socket with a small MTU, as L2CAP's.
struct SeqPacket {
    fd: AsyncFd<OwnedFd>,
    mtu: usize,
}

const MTU: usize = 1021;

impl SeqPacket {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(SeqPacket {
            fd: async_fd(fd)?,
            mtu: MTU,
        })
    }
}

#[async_trait]
impl PacketSocket for SeqPacket {
    async fn send(&self, p: &[u8]) -> io::Result<usize> {
        loop {
            let mut g = self.fd.writable().await?;
            match g.try_io(|fd| {
                socket::send(fd.as_raw_fd(), p, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
            }) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut g = self.fd.readable().await?;
            match g.try_io(|fd| {
                socket::recv(fd.as_raw_fd(), buf, MsgFlags::empty()).map_err(io::Error::from)
            }) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
    fn send_mtu(&self) -> io::Result<usize> {
        Ok(self.mtu)
    }
    fn recv_mtu(&self) -> io::Result<usize> {
        Ok(self.mtu)
    }
}

/// `AsyncFd::new` is deprecated for fds the caller might close behind its
/// back; an `OwnedFd` moved into the `AsyncFd` cannot be.
#[allow(deprecated)]
fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::new(fd)
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// `sim-rfcomm:PATH` and `sim-l2cap:PATH`: the Bluetooth framings over Unix sockets.
struct SimDriver {
    packets: bool,
}

struct StreamListener(UnixListener, String);
struct PacketListener(AsyncFd<OwnedFd>, String);

#[async_trait]
impl Listener for StreamListener {
    fn local_selector(&self) -> String {
        self.1.clone()
    }
    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        let (s, _) = self.0.accept().await?;
        let (r, w) = s.into_split();
        Ok(Box::new(StreamLink::new(r, w, info(&self.1), caps())))
    }
}

#[async_trait]
impl Listener for PacketListener {
    fn local_selector(&self) -> String {
        self.1.clone()
    }
    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        loop {
            let mut g = self.0.readable().await?;
            let r = g.try_io(|fd| {
                accept4(
                    fd.as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )
                .map_err(io::Error::from)
            });
            if let Ok(r) = r {
                use std::os::fd::FromRawFd;
                // SAFETY: accept4 returned a fresh descriptor we now own.
                #[allow(unsafe_code)]
                let fd = unsafe { OwnedFd::from_raw_fd(r?) };
                return Ok(Box::new(PacketLink::new(
                    SeqPacket::new(fd)?,
                    info(&self.1),
                    caps(),
                )));
            }
        }
    }
}

#[async_trait]
impl LinkDriver for SimDriver {
    fn scheme(&self) -> &'static str {
        if self.packets {
            "sim-l2cap"
        } else {
            "sim-rfcomm"
        }
    }
    fn describe(&self) -> &'static str {
        "test"
    }
    async fn probe(&self) -> Vec<Adapter> {
        Vec::new()
    }
    async fn open(&self, sel: &Selector) -> Result<Box<dyn Link>, OpenError> {
        let path = PathBuf::from(&sel.address);
        if !self.packets {
            let (r, w) = UnixStream::connect(&path).await?.into_split();
            return Ok(Box::new(StreamLink::new(r, w, info(&sel.raw), caps())));
        }
        let fd = seqpacket_socket()?;
        let addr = UnixAddr::new(&path).map_err(io::Error::from)?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) | Err(nix::errno::Errno::EINPROGRESS) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => return Err(io::Error::from(e).into()),
        }
        Ok(Box::new(PacketLink::new(
            SeqPacket::new(fd)?,
            info(&sel.raw),
            caps(),
        )))
    }
    async fn listen(&self, sel: &Selector) -> Result<Box<dyn Listener>, OpenError> {
        let path = PathBuf::from(&sel.address);
        let _ = std::fs::remove_file(&path);
        if !self.packets {
            return Ok(Box::new(StreamListener(
                UnixListener::bind(&path)?,
                sel.raw.clone(),
            )));
        }
        let fd = seqpacket_socket()?;
        let addr = UnixAddr::new(&path).map_err(io::Error::from)?;
        bind(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
        listen(&fd, socket::Backlog::new(8).expect("8 is a valid backlog"))
            .map_err(io::Error::from)?;
        Ok(Box::new(PacketListener(async_fd(fd)?, sel.raw.clone())))
    }
}

fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.register(Arc::new(SimDriver { packets: false }));
    reg.register(Arc::new(SimDriver { packets: true }));
    reg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfcomm_framing_passes_the_link_conformance_suite_over_a_kernel_stream() {
    let d = tempfile::tempdir().unwrap();
    let sel = format!("sim-rfcomm:{}", d.path().join("s").display());
    conformance::run_all(&registry(), &sel).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2cap_fragments_pass_the_link_conformance_suite_over_a_kernel_seqpacket_socket() {
    let d = tempfile::tempdir().unwrap();
    let sel = format!("sim-l2cap:{}", d.path().join("p").display());
    conformance::run_all(&registry(), &sel).await.unwrap();
}
