//! Crash points for the kill -9 harness (`bench/killsoak.sh`): with the
//! `crash-points` feature, `GATEWAY_CRASH_AT=NAME[@N]` makes the process
//! SIGKILL itself the Nth time (default the first) it reaches point NAME,
//! so a crash lands exactly between two steps of the durability order, not
//! only at a random instant. Without the feature, [`point`] is empty.
//!
//! Points: `recv_synced` (data fdatasync'd, DB not yet committed),
//! `recv_committed` (DB committed, checkpoint not yet sent),
//! `recv_hashing` (final hash running), `recv_renamed` (file in place,
//! record not yet deleted), `send_durable` (sender saving the acknowledged
//! set), `send_done` (sender about to delete its record).

#[cfg(feature = "crash-points")]
pub(crate) fn point(name: &str) {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    static TARGET: Mutex<Option<Option<(String, u64)>>> = Mutex::new(None);
    static HITS: AtomicU64 = AtomicU64::new(0);
    let mut t = TARGET.lock().unwrap_or_else(|p| p.into_inner());
    let target = t.get_or_insert_with(|| {
        let v = std::env::var("GATEWAY_CRASH_AT").ok()?;
        let (n, at) = match v.split_once('@') {
            Some((n, at)) => (n.to_string(), at.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((n, at))
    });
    let Some((want, at)) = target else { return };
    if want != name {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == *at {
        eprintln!("gateway: crash point {name}@{at}: SIGKILL");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn point(_name: &str) {}
