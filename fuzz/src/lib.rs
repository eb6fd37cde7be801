//! Shared pieces of gateway's fuzz targets: a byte cursor that turns fuzz
//! input into choices, the input formats of the structured targets (so the
//! seed writer in `src/bin/seed.rs` produces exactly what the targets read),
//! the invariants several targets check, and a poller for futures that never
//! wait.
//!
//! Each target's input format is documented at the top of its file in
//! `fuzz_targets/`.

use std::future::Future;
use std::path::{Component, Path};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use gateway_proto::{Entry, EntryKind};

pub mod names;

/// Reads choices off the fuzz input; past its end every read gives zeros /
/// empty slices, so a target never has to handle "too short".
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// One byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// Little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    /// A record: a u16 LE length, then that many bytes (fewer at the end).
    pub fn record(&mut self) -> &'a [u8] {
        let n = self.u16() as usize;
        self.take(n)
    }

    /// A short record: a u8 length, then that many bytes.
    pub fn short(&mut self) -> &'a [u8] {
        let n = self.u8() as usize;
        self.take(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Appends a record as [`Cursor::record`] reads it.
pub fn put_record(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = u16::try_from(bytes.len()).expect("a record is at most 65535 bytes");
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Appends a short record as [`Cursor::short`] reads it.
pub fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = u8::try_from(bytes.len()).expect("a short record is at most 255 bytes");
    out.push(n);
    out.extend_from_slice(bytes);
}

/// A tiny deterministic generator (xorshift), for choices a target makes
/// many of (read sizes) from one input byte.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `seed` (0 works).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Polls a future that must never wait (every fake transport here answers
/// at once) to its end; panics if it returns `Pending`, which would be a
/// harness bug or a future that waits where it should not.
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a future over an always-ready fake transport returned Pending"),
    }
}

/// Polls once; `None` if it is pending.
pub fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::Pin::new(f).poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// The directory every harness joins names to, as the node joins them to
/// its `--dir`.
pub const TARGET_DIR: &str = "/srv/gateway/in";

/// Whether `p` is `dir` followed only by normal components (no `..`, no
/// root, no `.`), i.e. it cannot leave `dir` lexically.
pub fn stays_under(dir: &Path, p: &Path) -> bool {
    let Ok(rest) = p.strip_prefix(dir) else {
        return false;
    };
    rest.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Entries from tree records: kind byte (0 file, 1 dir, 2 symlink, others
/// cycle), size byte, short path, short target. Used by the `names` target
/// and the seed writer.
pub fn tree_from(c: &mut Cursor<'_>) -> Vec<Entry> {
    let mut out = Vec::new();
    while !c.is_empty() && out.len() < 64 {
        let kind = match c.u8() % 3 {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            _ => EntryKind::Symlink,
        };
        let size = u64::from(c.u8());
        let path = String::from_utf8_lossy(c.short()).into_owned();
        let target = String::from_utf8_lossy(c.short()).into_owned();
        out.push(Entry {
            path,
            kind,
            size,
            mode: 0o644,
            mtime_ns: 0,
            target,
            hash: None,
        });
    }
    out
}

/// The records [`tree_from`] reads back as `entries`.
pub fn put_tree(out: &mut Vec<u8>, entries: &[Entry]) {
    for e in entries {
        out.push(match e.kind {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink => 2,
        });
        out.push(u8::try_from(e.size).expect("seed sizes fit a byte"));
        put_short(out, e.path.as_bytes());
        put_short(out, e.target.as_bytes());
    }
}
