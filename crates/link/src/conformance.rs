//! The conformance suite every driver runs: mocks in CI, real adapters under
//! `hil-tests`.
//!
//! Each check listens on `listen_sel` through the [`Registry`] (so `?rate=`
//! applies), opens the listener's [`local_selector`](crate::Listener::local_selector),
//! and drives the pair. Checks need a reliable, ordered link. Every wait is
//! bounded, so a broken driver fails with a message instead of hanging, and
//! every message says what was expected and what came.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::{FrameRx, FrameTx, Link, LinkError, Listener, Registry};

type Check = Result<(), String>;

/// A check's steps each get this long before the check fails.
const STEP: Duration = Duration::from_secs(30);
/// Bulk transfers (ordering, large frames) get this long.
const BULK: Duration = Duration::from_secs(180);
/// `close` must reach the peer this fast.
const PROMPT: Duration = Duration::from_secs(5);
/// A peer that vanished must be noticed within this time.
const HALF_DEAD: Duration = Duration::from_secs(20);

/// Every selector in `cases` fails to open, with an error that mentions its
/// word: drivers check that bad input gets a message a person can act on.
pub async fn expect_open_errors(reg: &Registry, cases: &[(&str, &str)]) {
    for (sel, want) in cases {
        let e = reg
            .open(sel)
            .await
            .err()
            .unwrap_or_else(|| panic!("{sel} should not open"));
        let msg = e.to_string();
        assert!(
            msg.contains(want),
            "{sel}: expected the error to mention '{want}', got: {msg}"
        );
    }
}

/// Runs every check in turn; the error lists each failed check with its reason.
pub async fn run_all(reg: &Registry, listen_sel: &str) -> Result<(), String> {
    let mut failed = Vec::new();
    macro_rules! run {
        ($($check:ident),*) => {$(
            if let Err(e) = $check(reg, listen_sel).await {
                failed.push(format!("{}: {e}", stringify!($check)));
            }
        )*};
    }
    run!(
        ordering,
        max_frame,
        close,
        half_dead,
        reconnect,
        large_frames
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "conformance on {listen_sel} failed:\n  {}",
            failed.join("\n  ")
        ))
    }
}

/// 1000 frames of varied sizes (0 to 64 KiB) each way at once, each direction
/// in its own tasks; every frame's length and content is checked in order.
pub async fn ordering(reg: &Registry, listen_sel: &str) -> Check {
    let (_l, a, b) = connect(reg, listen_sel).await?;
    needs_reliable(&*a)?;
    let max = a.caps().max_frame.min(64 * 1024);
    let size = move |i: u64| match i {
        0 => 0,
        1 => max,
        2 => 1,
        _ => (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % (max + 1),
    };
    let (atx, arx) = a.split();
    let (btx, brx) = b.split();
    let mut set = JoinSet::new();
    set.spawn(send_n(atx, 1000, A_TO_B, size));
    set.spawn(recv_n(
        brx,
        1000,
        A_TO_B,
        size,
        "opened end -> accepted end",
    ));
    set.spawn(send_n(btx, 1000, B_TO_A, size));
    set.spawn(recv_n(
        arx,
        1000,
        B_TO_A,
        size,
        "accepted end -> opened end",
    ));
    join_all(set, BULK, "1000 frames each way").await
}

/// A frame of exactly `caps.max_frame` goes through intact; one byte more is
/// refused by `send` with `FrameTooLarge`, and the link still works after.
pub async fn max_frame(reg: &Registry, listen_sel: &str) -> Check {
    let (_l, a, b) = connect(reg, listen_sel).await?;
    needs_reliable(&*a)?;
    let max = a.caps().max_frame;
    let (mut atx, _arx) = a.split();
    let (_btx, mut brx) = b.split();
    let sender = tokio::spawn(async move {
        let r = atx.send(&frame_bytes(A_TO_B, max)).await;
        (atx, r)
    });
    let got = step("receiving a max_frame frame", brx.recv()).await?;
    check_frame(
        &got.map_err(|e| format!("expected a frame of {max} bytes, got error {e}"))?,
        A_TO_B,
        max,
    )?;
    let (mut atx, sent) = step("sending a max_frame frame", sender)
        .await?
        .map_err(|e| e.to_string())?;
    sent.map_err(|e| format!("send of exactly max_frame={max} bytes: expected Ok, got {e}"))?;
    match step("sending max_frame+1 bytes", atx.send(&vec![0x55; max + 1])).await? {
        Err(LinkError::FrameTooLarge { .. }) => {}
        Ok(()) => {
            return Err(format!(
                "send of max_frame+1={} bytes: expected FrameTooLarge, got Ok",
                max + 1
            ));
        }
        Err(e) => {
            return Err(format!(
                "send of max_frame+1={} bytes: expected FrameTooLarge, got {e}",
                max + 1
            ));
        }
    }
    let tag = A_TO_B + 1;
    step(
        "sending a frame after the refused one",
        atx.send(&frame_bytes(tag, 1000)),
    )
    .await?
    .map_err(|e| format!("send after a refused oversized frame: expected Ok, got {e}"))?;
    let got = step("receiving the frame after the refused one", brx.recv()).await?;
    let got = got.map_err(|e| {
        format!("expected the 1000-byte frame sent after the refused one, got error {e}")
    })?;
    check_frame(&got, tag, 1000).map_err(|e| format!("after the refused oversized frame: {e}"))
}

/// `close` after three frames: the peer gets the three frames, then
/// `LinkError::Closed` within 5 s; a send after close fails. Then the same
/// the other way round.
pub async fn close(reg: &Registry, listen_sel: &str) -> Check {
    let (_l, a, b) = connect(reg, listen_sel).await?;
    needs_reliable(&*a)?;
    let (mut atx, mut arx) = a.split();
    let (mut btx, mut brx) = b.split();
    close_one_way(&mut *atx, &mut *brx, "opened end closes").await?;
    close_one_way(&mut *btx, &mut *arx, "accepted end closes").await
}

async fn close_one_way(tx: &mut dyn FrameTx, rx: &mut dyn FrameRx, what: &str) -> Check {
    for i in 0..3 {
        step(what, tx.send(&frame_bytes(i, 100)))
            .await?
            .map_err(|e| format!("{what}: send {i}: {e}"))?;
    }
    step(what, tx.close())
        .await?
        .map_err(|e| format!("{what}: close: expected Ok, got {e}"))?;
    for i in 0..3 {
        let got = step(what, rx.recv()).await?;
        let got = got.map_err(|e| {
            format!("{what}: frame {i} sent before close: expected it, got error {e}")
        })?;
        check_frame(&got, i, 100).map_err(|e| format!("{what}: {e}"))?;
    }
    match tokio::time::timeout(PROMPT, rx.recv()).await {
        Err(_) => {
            return Err(format!(
                "{what}: peer recv: expected Closed within {PROMPT:?}, still waiting"
            ));
        }
        Ok(Err(LinkError::Closed)) => {}
        Ok(Err(e)) => return Err(format!("{what}: peer recv: expected Closed, got error {e}")),
        Ok(Ok(f)) => {
            return Err(format!(
                "{what}: peer recv: expected Closed, got a frame of {} bytes",
                f.len()
            ));
        }
    }
    match step(what, tx.send(&[1, 2, 3])).await? {
        Ok(()) => Err(format!(
            "{what}: send after close: expected an error, got Ok"
        )),
        Err(_) => Ok(()),
    }
}

/// The opened end is dropped without `close`: the accepted end's `recv`
/// returns an error (not a frame, not a hang) within 20 s, and its `send`
/// errors within 20 s.
pub async fn half_dead(reg: &Registry, listen_sel: &str) -> Check {
    let (_l, a, b) = connect(reg, listen_sel).await?;
    let chunk = a.caps().max_frame.min(64 * 1024);
    drop(a);
    let (mut btx, mut brx) = b.split();
    match tokio::time::timeout(HALF_DEAD, brx.recv()).await {
        Err(_) => {
            return Err(format!(
                "recv from a dropped peer: expected an error within {HALF_DEAD:?}, still waiting"
            ));
        }
        Ok(Ok(f)) => {
            return Err(format!(
                "recv from a dropped peer: expected an error, got a frame of {} bytes",
                f.len()
            ));
        }
        Ok(Err(_)) => {}
    }
    let frame = vec![0xa5; chunk];
    let sending = async {
        let mut sent = 0u64;
        loop {
            if btx.send(&frame).await.is_err() {
                return sent;
            }
            sent += 1;
        }
    };
    match tokio::time::timeout(HALF_DEAD, sending).await {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "send to a dropped peer: expected an error within {HALF_DEAD:?}, every send succeeded"
        )),
    }
}

/// Three rounds on one listener: open, exchange a frame each way, close both
/// ways; each new open after a close must work.
pub async fn reconnect(reg: &Registry, listen_sel: &str) -> Check {
    let mut l = step("listen", reg.listen(listen_sel))
        .await?
        .map_err(|e| format!("listen {listen_sel}: {e}"))?;
    for round in 0..3u64 {
        let (a, b) = pair(reg, &mut l)
            .await
            .map_err(|e| format!("round {round}: {e}"))?;
        let (mut atx, mut arx) = a.split();
        let (mut btx, mut brx) = b.split();
        let r = async {
            exchange(&mut *atx, &mut *brx, A_TO_B + round, "opened -> accepted").await?;
            exchange(&mut *btx, &mut *arx, B_TO_A + round, "accepted -> opened").await?;
            atx.close().await.map_err(|e| format!("close: {e}"))?;
            match step("peer recv after close", brx.recv()).await? {
                Err(LinkError::Closed) => {}
                other => {
                    return Err(format!(
                        "peer recv after close: expected Closed, got {}",
                        show(&other)
                    ));
                }
            }
            btx.close().await.map_err(|e| format!("close: {e}"))?;
            match step("recv after peer close", arx.recv()).await? {
                Err(LinkError::Closed) => Ok(()),
                other => Err(format!(
                    "recv after peer close: expected Closed, got {}",
                    show(&other)
                )),
            }
        };
        r.await.map_err(|e| format!("round {round}: {e}"))?;
    }
    Ok(())
}

/// 32 frames of 4 MiB (or `max_frame` if smaller) one way, content checked.
pub async fn large_frames(reg: &Registry, listen_sel: &str) -> Check {
    let (_l, a, b) = connect(reg, listen_sel).await?;
    needs_reliable(&*a)?;
    let len = a.caps().max_frame.min(4 * 1024 * 1024);
    let (atx, _arx) = a.split();
    let (_btx, brx) = b.split();
    let mut set = JoinSet::new();
    set.spawn(send_n(atx, 32, A_TO_B, move |_| len));
    set.spawn(recv_n(brx, 32, A_TO_B, move |_| len, "32 large frames"));
    join_all(set, BULK, "32 frames of 4 MiB").await
}

// ---- helpers ----

const A_TO_B: u64 = 0;
const B_TO_A: u64 = 1 << 32;

/// Listens, opens the listener's own selector and accepts.
async fn connect(
    reg: &Registry,
    listen_sel: &str,
) -> Result<(Box<dyn Listener>, Box<dyn Link>, Box<dyn Link>), String> {
    let mut l = step("listen", reg.listen(listen_sel))
        .await?
        .map_err(|e| format!("listen {listen_sel}: {e}"))?;
    let (a, b) = pair(reg, &mut l).await?;
    Ok((l, a, b))
}

async fn pair(
    reg: &Registry,
    l: &mut Box<dyn Listener>,
) -> Result<(Box<dyn Link>, Box<dyn Link>), String> {
    let target = l.local_selector();
    let (a, b) = tokio::join!(step("open", reg.open(&target)), step("accept", l.accept()));
    let a = a?.map_err(|e| format!("open {target}: expected a link, got {e}"))?;
    let b = b?.map_err(|e| format!("accept on {target}: expected a link, got {e}"))?;
    Ok((a, b))
}

fn needs_reliable(l: &dyn Link) -> Check {
    let c = l.caps();
    if c.reliable && c.ordered {
        Ok(())
    } else {
        Err(format!(
            "this check needs a reliable, ordered link; {} has reliable={} ordered={} (drop loss=/fault parameters)",
            l.info().selector,
            c.reliable,
            c.ordered
        ))
    }
}

async fn step<T>(what: &str, f: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(STEP, f)
        .await
        .map_err(|_| format!("{what}: expected to finish within {STEP:?}, still waiting"))
}

async fn join_all(mut set: JoinSet<Check>, limit: Duration, what: &str) -> Check {
    let all = async {
        while let Some(r) = set.join_next().await {
            r.map_err(|e| format!("task failed: {e}"))??;
        }
        Ok(())
    };
    // Dropping the set on timeout or error aborts the other tasks.
    tokio::time::timeout(limit, all)
        .await
        .map_err(|_| format!("{what}: expected to finish within {limit:?}, still running"))?
}

async fn send_n(mut tx: Box<dyn FrameTx>, n: u64, base: u64, size: impl Fn(u64) -> usize) -> Check {
    for i in 0..n {
        tx.send(&frame_bytes(base + i, size(i)))
            .await
            .map_err(|e| {
                format!(
                    "send of frame {i} ({} bytes): expected Ok, got {e}",
                    size(i)
                )
            })?;
    }
    Ok(())
}

async fn recv_n(
    mut rx: Box<dyn FrameRx>,
    n: u64,
    base: u64,
    size: impl Fn(u64) -> usize,
    what: &str,
) -> Check {
    for i in 0..n {
        let f = rx.recv().await.map_err(|e| {
            format!(
                "{what}: frame {i}: expected {} bytes, got error {e}",
                size(i)
            )
        })?;
        check_frame(&f, base + i, size(i)).map_err(|e| format!("{what}: frame {i}: {e}"))?;
    }
    Ok(())
}

async fn exchange(tx: &mut dyn FrameTx, rx: &mut dyn FrameRx, tag: u64, what: &str) -> Check {
    step(what, tx.send(&frame_bytes(tag, 1000)))
        .await?
        .map_err(|e| format!("{what}: send: {e}"))?;
    let got = step(what, rx.recv())
        .await?
        .map_err(|e| format!("{what}: expected a 1000-byte frame, got {e}"))?;
    check_frame(&got, tag, 1000).map_err(|e| format!("{what}: {e}"))
}

fn show(r: &Result<bytes::Bytes, LinkError>) -> String {
    match r {
        Ok(f) => format!("a frame of {} bytes", f.len()),
        Err(e) => format!("error {e}"),
    }
}

/// Pseudo-random bytes, an odd length so frames never line up with it.
static PATTERN: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut v = Vec::with_capacity(PATTERN_LEN + 8);
    while v.len() < PATTERN_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(PATTERN_LEN);
    v
});
const PATTERN_LEN: usize = (1 << 20) + 7;

/// The content of frame `tag` with length `len`: the tag in the first 8 bytes,
/// then the pattern from a tag-dependent offset.
fn frame_bytes(tag: u64, len: usize) -> Vec<u8> {
    let p = &PATTERN[..];
    let mut v = Vec::with_capacity(len);
    let mut pos = (tag.wrapping_mul(7919) % PATTERN_LEN as u64) as usize;
    while v.len() < len {
        let n = (len - v.len()).min(PATTERN_LEN - pos);
        v.extend_from_slice(&p[pos..pos + n]);
        pos = 0;
    }
    let stamp = tag.to_le_bytes();
    let k = len.min(8);
    v[..k].copy_from_slice(&stamp[..k]);
    v
}

fn check_frame(got: &[u8], tag: u64, len: usize) -> Check {
    if got.len() != len {
        let head = u64::from_le_bytes(
            got.get(..8)
                .and_then(|s| s.try_into().ok())
                .unwrap_or([0; 8]),
        );
        return Err(format!(
            "expected frame #{tag:#x} of {len} bytes, got {} bytes (its tag reads {head:#x})",
            got.len()
        ));
    }
    let want = frame_bytes(tag, len);
    if got != want {
        let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!(
            "frame #{tag:#x} of {len} bytes differs first at byte {at}: expected {:#04x}, got {:#04x}",
            want[at], got[at]
        ));
    }
    Ok(())
}
