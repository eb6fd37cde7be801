//! A test utility, built only with the `test-cable` feature: a null-modem
//! cable inside one process. Two PTYs whose masters two threads bridge, so
//! both slave ends (`/dev/pts/N`) behave as serial devices joined by a wire
//! — no socat, no root, no hardware. The bridge can garble what it carries
//! ([`Cable::garble`]), and a test can put its own bytes on the wire
//! ([`Cable::inject`]).
//!
//! ```no_run
//! use gateway_serial::cable::{Cable, End};
//! let c = Cable::new().unwrap();
//! // Listen on `serial:{c.b}`, open `serial:{c.a}`; then, now and then, a
//! // byte of what travels towards b is flipped:
//! c.garble(End::B, 1 << 20);
//! ```

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One end of the cable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// [`Cable::a`].
    A,
    /// [`Cable::b`].
    B,
}

/// Two PTYs bridged master to master. `a` and `b` are the device paths of
/// the two ends: what a program writes on one, a program reading the other
/// gets (unless garbled).
pub struct Cable {
    /// The device at one end, e.g. `/dev/pts/3`.
    pub a: String,
    /// The device at the other end.
    pub b: String,
    /// The masters: writing on one puts bytes on the wire towards that end.
    to_a: File,
    to_b: File,
    towards_a: Arc<Garble>,
    towards_b: Arc<Garble>,
    /// The slaves stay open here, so the ttys live (and keep their raw
    /// settings) while drivers open and close them.
    _slaves: [OwnedFd; 2],
}

/// The corruption setting of one direction, which its bridge thread reads.
#[derive(Default)]
struct Garble {
    /// Flip one byte in about this many (0: carry everything intact).
    every: AtomicU64,
    /// Bytes flipped so far.
    flipped: AtomicU64,
    /// Bytes carried so far.
    carried: AtomicU64,
}

impl Cable {
    /// Makes a cable: two PTYs in raw mode, bridged by two threads that end
    /// when the cable and every file opened on its ends are closed.
    pub fn new() -> io::Result<Cable> {
        use nix::pty::openpty;
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let one = openpty(None, None)?;
        let two = openpty(None, None)?;
        for slave in [&one.slave, &two.slave] {
            let mut t = tcgetattr(slave)?;
            cfmakeraw(&mut t);
            tcsetattr(slave, SetArg::TCSANOW, &t)?;
        }
        let name = |fd: &OwnedFd| -> io::Result<String> {
            Ok(nix::unistd::ttyname(fd)?.display().to_string())
        };
        let (a, b) = (name(&one.slave)?, name(&two.slave)?);
        let m1 = File::from(one.master);
        let m2 = File::from(two.master);
        let (towards_a, towards_b) = (Arc::new(Garble::default()), Arc::new(Garble::default()));
        // What a program writes on a comes out of m1 and goes into m2, where
        // a program reading b gets it.
        bridge(
            "cable a→b",
            m1.try_clone()?,
            m2.try_clone()?,
            towards_b.clone(),
            0x5eed_0b0b,
        );
        bridge(
            "cable b→a",
            m2.try_clone()?,
            m1.try_clone()?,
            towards_a.clone(),
            0x5eed_0a0a,
        );
        Ok(Cable {
            a,
            b,
            to_a: m1,
            to_b: m2,
            towards_a,
            towards_b,
            _slaves: [one.slave, two.slave],
        })
    }

    /// The device at `end`.
    pub fn path(&self, end: End) -> &str {
        match end {
            End::A => &self.a,
            End::B => &self.b,
        }
    }

    /// From now on, flips one byte in about every `every` bytes travelling
    /// towards `end` (XOR with a non-zero value, at gaps drawn from a fixed
    /// seed between `every/2` and `3*every/2`); `0` stops it.
    pub fn garble(&self, towards: End, every: u64) {
        self.way(towards).every.store(every, Ordering::Relaxed);
    }

    /// How many bytes travelling towards `end` were flipped so far.
    pub fn garbled(&self, towards: End) -> u64 {
        self.way(towards).flipped.load(Ordering::Relaxed)
    }

    /// How many bytes travelled towards `end` so far.
    pub fn carried(&self, towards: End) -> u64 {
        self.way(towards).carried.load(Ordering::Relaxed)
    }

    /// A handle that puts bytes on the wire towards `end`, as if they came
    /// down the cable (noise, a stray sender).
    pub fn inject(&self, towards: End) -> io::Result<File> {
        match towards {
            End::A => self.to_a.try_clone(),
            End::B => self.to_b.try_clone(),
        }
    }

    fn way(&self, towards: End) -> &Garble {
        match towards {
            End::A => &self.towards_a,
            End::B => &self.towards_b,
        }
    }
}

/// Copies everything that comes out of `from` into `to`, garbling it as
/// `garble` says.
fn bridge(name: &str, mut from: File, mut to: File, garble: Arc<Garble>, seed: u64) {
    let run = move || {
        let mut rng = seed;
        let mut next = move || {
            // xorshift64: deterministic per direction.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut buf = vec![0u8; 64 * 1024];
        // The setting the gap below was drawn for, and the bytes to let
        // through before the next flip.
        let (mut every, mut gap) = (0u64, 0u64);
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            garble.carried.fetch_add(n as u64, Ordering::Relaxed);
            let now = garble.every.load(Ordering::Relaxed);
            if now != every {
                every = now;
                gap = every / 2 + next() % every.max(1);
            }
            if every > 0 {
                let mut at = 0usize;
                while gap < (n - at) as u64 {
                    at += gap as usize;
                    buf[at] ^= 1 + (next() % 255) as u8;
                    garble.flipped.fetch_add(1, Ordering::Relaxed);
                    at += 1;
                    gap = every / 2 + next() % every;
                }
                gap -= (n - at) as u64;
            }
            if to.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .expect("a thread for the cable");
}
