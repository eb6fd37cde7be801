//! A Bluetooth socket stays open after its link is dropped until the kernel
//! has sent what was queued on it (bounded by [`DRAIN_LIMIT`]).
//!
//! A link's `send` returns once the kernel took the bytes, as over TCP, and a
//! TCP socket closed with data queued still sends it before its FIN. A
//! Bluetooth socket closed that way may not: RFCOMM data still waiting for
//! the peer's credits, or L2CAP data not yet handed to the controller, can
//! be overtaken by the disconnect, so the peer read the end of the link
//! before the last frames (the conformance suite's `ordering` check lost
//! its final frames on the rig that way). [`DrainOnDrop`] holds a duplicate
//! of the socket's descriptor: the socket outlives the link's own handle
//! until its send queue is empty, then closes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// How long a dropped link's socket may stay open to send what it queued.
/// A peer that stopped reading (or went away) gets its disconnect after this.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How often a draining socket's queue is looked at.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// Bytes the kernel still holds to send on a Bluetooth socket: the
/// socket's send buffer less what `TIOCOUTQ` says is free in it (Bluetooth
/// sockets answer `TIOCOUTQ` with the free space, not the queued bytes).
#[allow(unsafe_code)] // the TIOCOUTQ ioctl and SO_SNDBUF, which std and nix do not read
pub fn queued_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut free: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int through the pointer, which is valid.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut free) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut sndbuf: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_SNDBUF writes at most `len` bytes into `sndbuf`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut sndbuf as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sndbuf.saturating_sub(free).max(0) as usize)
}

/// Keeps a socket open past its owner's close while it has data queued.
/// Create it from the socket's descriptor while the link is built; drop it
/// with the link's last half.
pub struct DrainOnDrop {
    fd: Option<OwnedFd>,
}

impl DrainOnDrop {
    /// A guard holding a duplicate of `fd`, the descriptor of a socket its
    /// caller owns; `None` if it cannot be duplicated (the socket then
    /// closes with its owner).
    pub fn new(fd: RawFd) -> Option<Self> {
        // bluer's sockets give a raw descriptor only.
        #[allow(unsafe_code)]
        // SAFETY: `fd` is open for this call: its owner is alive in the caller.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        match fd.try_clone_to_owned() {
            Ok(fd) => Some(DrainOnDrop { fd: Some(fd) }),
            Err(e) => {
                tracing::debug!(error = %e, "cannot hold the Bluetooth socket open to drain it");
                None
            }
        }
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(fd) = self.fd.take() else { return };
        match queued_bytes(fd.as_fd()) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // A thread, not a task: the drop may come from a runtime that is
        // shutting down, and the wait is a short poll of one ioctl.
        let spawned = std::thread::Builder::new()
            .name("bt-drain".into())
            .spawn(move || drain(fd, DRAIN_LIMIT));
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no thread to drain a Bluetooth socket; closing it now");
        }
    }
}

/// Waits until `fd` has nothing queued, or `limit` passed, then closes it.
fn drain(fd: OwnedFd, limit: Duration) {
    let started = Instant::now();
    loop {
        match queued_bytes(fd.as_fd()) {
            Ok(0) => break,
            Ok(n) if started.elapsed() >= limit => {
                tracing::debug!(
                    queued = n,
                    "closing a Bluetooth socket with data still queued (the peer took none for {limit:?})"
                );
                break;
            }
            Ok(_) => std::thread::sleep(DRAIN_POLL),
            Err(_) => break,
        }
    }
    let waited = started.elapsed();
    drop(fd);
    tracing::trace!(?waited, "Bluetooth socket drained and closed");
}
