//! Chunk range sets (`gateway_proto::RangeSet`) and the engine's handling of
//! a peer's range lists: the sender's Accept (new transfer and rejoin by
//! Reload), Ack, Checkpoint and Verdict; the receiver's Data placement,
//! checkpoints and verdict (`crates/engine/src/{sender,receiver}.rs`).
//!
//! Input: `[mode]`, then:
//! - mode 0, set ops: `[op][a][b]...` on a RangeSet and a model (a sorted
//!   set of u64); values are small, or near u64::MAX for single indices;
//! - mode 1, sender: `[size: u16][chunk: u8]`, then ops with range lists
//!   (`[count: u8]` then pairs of u16) from the "peer";
//! - mode 2, receiver: `[size: u16][chunk: u8][durable ranges]`, then ops.
//!
//! Checks: the set equals the model after every op and keeps its shape
//! (non-empty, sorted, non-adjacent ranges), wire and blob forms round-trip;
//! the engine refuses any range past the file's last chunk, never hands out
//! or places a chunk outside the file, never counts more bytes acked or
//! durable than the file has, its Accept is a valid range list for the file,
//! and Done comes only from a Verdict ok after every chunk was acked.
#![no_main]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gateway_engine::{Config, DataAction, FileMeta, Phase, Receiver, RecvMeta, Sender};
use gateway_fuzz::Cursor;
use gateway_proto::{Accept, Complete, Range, RangeSet, Verdict};
use libfuzzer_sys::fuzz_target;

fn check_shape(s: &RangeSet) {
    let r = s.ranges();
    for w in r.windows(2) {
        assert!(
            w[0].end < w[1].start,
            "ranges not sorted, disjoint and non-adjacent: {r:?}"
        );
    }
    assert!(
        r.iter().all(|x| x.start < x.end),
        "an empty range kept: {r:?}"
    );
}

fn value(c: &mut Cursor<'_>) -> u64 {
    match c.u8() {
        b @ 0..=247 => u64::from(b),
        b => u64::MAX - u64::from(255 - b),
    }
}

fn set_ops(c: &mut Cursor<'_>) {
    let mut s = RangeSet::new();
    let mut m: BTreeSet<u64> = BTreeSet::new();
    while !c.is_empty() {
        match c.u8() % 10 {
            0 => {
                let v = value(c);
                let new = v != u64::MAX && m.insert(v);
                assert_eq!(s.insert(v), new, "insert({v})");
            }
            1 => {
                let v = value(c);
                assert_eq!(s.remove(v), m.remove(&v), "remove({v})");
            }
            2 => {
                let (a, b) = (u64::from(c.u8()), u64::from(c.u8()));
                s.insert_range(Range::new(a, b));
                m.extend(a..b);
            }
            3 => {
                let v = value(c);
                assert_eq!(s.contains(v), m.contains(&v), "contains({v})");
            }
            4 | 5 => {
                let mut o = RangeSet::new();
                let mut om = BTreeSet::new();
                for _ in 0..c.u8() % 8 {
                    let (a, n) = (u64::from(c.u8()), u64::from(c.u8() % 16));
                    o.insert_range(Range::new(a, a + n));
                    om.extend(a..a + n);
                }
                if c.u8() % 2 == 0 {
                    s.union(&o);
                    m.extend(om);
                } else {
                    s = s.difference(&o);
                    m = m.difference(&om).copied().collect();
                }
            }
            6 => {
                let n = u64::from(c.u8());
                let want = (0..n).find(|i| !m.contains(i));
                assert_eq!(s.first_missing(n), want, "first_missing({n})");
            }
            7 => {
                let n = u64::from(c.u8());
                s = RangeSet::full(n);
                m = (0..n).collect();
            }
            8 => {
                // Wire form: any list from the peer; accepted only if valid.
                let mut list = Vec::new();
                for _ in 0..c.u8() % 8 {
                    list.push(Range::new(u64::from(c.u8()), u64::from(c.u8())));
                }
                let bound = u64::from(c.u8());
                let valid = list.iter().all(|r| r.start < r.end && r.end <= bound)
                    && list.windows(2).all(|w| w[0].end <= w[1].start);
                match RangeSet::from_ranges(&list, bound) {
                    Ok(t) => {
                        assert!(valid, "from_ranges accepted {list:?} (bound {bound})");
                        check_shape(&t);
                        let tm: BTreeSet<u64> = list.iter().flat_map(|r| r.start..r.end).collect();
                        assert!(
                            t.iter().eq(tm.iter().copied()),
                            "from_ranges({list:?}) = {t:?}"
                        );
                    }
                    Err(_) => assert!(!valid, "from_ranges refused valid {list:?} (bound {bound})"),
                }
            }
            _ => {
                let blob = s.to_blob();
                assert_eq!(
                    RangeSet::from_blob(&blob).expect("own blob"),
                    s,
                    "blob round trip"
                );
                let mut junk = blob.clone();
                let n = usize::from(c.u8() % 40);
                junk.extend_from_slice(c.take(n));
                if let Ok(t) = RangeSet::from_blob(&junk) {
                    check_shape(&t);
                }
            }
        }
        check_shape(&s);
        assert_eq!(s.count(), m.len() as u64, "count");
        if m.len() < 4096 {
            assert!(
                s.iter().eq(m.iter().copied()),
                "set {s:?} differs from the model"
            );
        }
    }
}

/// A range list from the peer: `[count]` then (start, end) u16 pairs.
fn peer_ranges(c: &mut Cursor<'_>) -> Vec<Range> {
    (0..c.u8() % 6)
        .map(|_| Range::new(u64::from(c.u16()), u64::from(c.u16())))
        .collect()
}

/// Whether the engine must take `r` for a file of `chunks` chunks.
fn fits(r: &[Range], chunks: u64) -> bool {
    RangeSet::from_ranges(r, chunks).is_ok()
}

fn sender(c: &mut Cursor<'_>) {
    let size = u64::from(c.u16());
    let chunk = u32::from(c.u8()).max(1);
    let id = [7u8; 16];
    let cfg = Config {
        chunk_size_bytes: chunk,
        ..Config::default()
    };
    let mut s = Sender::new(
        FileMeta {
            transfer_id: id,
            name: "f".into(),
            size,
            mtime_ns: 0,
            mode: 0o644,
            chunk_size: chunk,
        },
        cfg,
    );
    let chunks = s.geometry().chunks();
    let t0 = Instant::now();
    let mut now = t0;
    let mut verdict_ok_allowed = false;
    // Failed verdicts taken so far: the round the next Complete opens.
    let mut rounds: u32 = 0;
    while !c.is_empty() {
        let before = s.phase().clone();
        match c.u8() % 12 {
            0 => {
                let have = peer_ranges(c);
                let r = s.handle_accept(&Accept {
                    transfer_id: id,
                    have: have.clone(),
                });
                if !fits(&have, chunks) {
                    assert!(r.is_err(), "Accept {have:?} past {chunks} chunks was taken");
                }
            }
            1 => {
                let have = peer_ranges(c);
                let r = s.handle_rejoin(&Accept {
                    transfer_id: id,
                    have: have.clone(),
                });
                assert_eq!(
                    r.is_ok(),
                    fits(&have, chunks),
                    "rejoin {have:?} ({chunks} chunks)"
                );
            }
            2 => {
                let link = u32::from(c.u8() % 3);
                let r = peer_ranges(c);
                assert_eq!(
                    s.handle_ack(link, &r, now).is_ok(),
                    fits(&r, chunks),
                    "ack {r:?}"
                );
            }
            3 => {
                let r = peer_ranges(c);
                assert_eq!(
                    s.handle_checkpoint(&r).is_ok(),
                    fits(&r, chunks),
                    "checkpoint {r:?}"
                );
            }
            4 => {
                let ok = c.u8() % 2 == 0;
                let round = u32::from(c.u8() % 3);
                let bad = peer_ranges(c);
                let live = before == Phase::Verifying && round == rounds;
                verdict_ok_allowed = live;
                let r = s.handle_verdict(&Verdict {
                    transfer_id: id,
                    ok,
                    bad_chunks: bad.clone(),
                    message: String::new(),
                    round,
                });
                // A copy of an earlier round's verdict, or any after the end,
                // is no news: taken quietly, nothing changes.
                let stale = round < rounds
                    || matches!(before, Phase::Done | Phase::Failed(_) | Phase::Stopped);
                if stale {
                    assert!(
                        r.is_ok(),
                        "a stale verdict (round {round} of {rounds}) was an error"
                    );
                    assert_eq!(*s.phase(), before, "a stale verdict changed the phase");
                } else if !live {
                    assert!(
                        r.is_err(),
                        "a Verdict taken in {before:?} (round {round} of {rounds})"
                    );
                } else if !ok {
                    assert_eq!(r.is_ok(), fits(&bad, chunks), "verdict {bad:?}");
                    if r.is_ok() {
                        rounds += 1;
                    }
                }
            }
            5 => s.link_up(u32::from(c.u8() % 3)),
            6 => s.link_down(u32::from(c.u8() % 3), "fuzz", now),
            7 => {
                let link = u32::from(c.u8() % 3);
                for _ in 0..c.u8() % 8 {
                    let Some(ch) = s.poll_chunk(link, now) else {
                        break;
                    };
                    assert!(ch.index < chunks, "chunk {ch:?} of a {chunks}-chunk file");
                    assert!(
                        ch.len > 0 && ch.offset + u64::from(ch.len) <= size,
                        "chunk {ch:?} outside {size} bytes"
                    );
                    assert_eq!(ch.offset, ch.index * u64::from(chunk));
                    if c.u8() % 4 == 0 {
                        s.unsent(link, ch.index);
                    }
                }
            }
            8 => {
                now += Duration::from_millis(u64::from(c.u16()) * 10);
                s.handle_timeout(now);
            }
            9 => s.set_file_hash([1; 32]),
            10 => {
                if let Some(Complete {
                    transfer_id, round, ..
                }) = s.poll_complete()
                {
                    assert_eq!(transfer_id, id);
                    assert_eq!(round, rounds, "Complete opens the wrong round");
                    assert_eq!(
                        s.progress().acked_bytes,
                        size,
                        "Complete before every byte was acked"
                    );
                }
            }
            _ => while s.poll_event().is_some() {},
        }
        let p = s.progress();
        assert!(
            p.acked_bytes <= size && p.durable_bytes <= size && p.resumed_bytes <= size,
            "{p:?} of {size} bytes"
        );
        assert!(
            s.durable().ranges().last().is_none_or(|r| r.end <= chunks),
            "durable past the file"
        );
        check_shape(s.durable());
        if *s.phase() == Phase::Done && before != Phase::Done {
            assert!(
                verdict_ok_allowed,
                "Done without a Verdict ok while verifying"
            );
            assert_eq!(p.acked_bytes, size, "Done before every byte was acked");
        }
    }
}

fn receiver(c: &mut Cursor<'_>) {
    let size = u64::from(c.u16());
    let chunk = u32::from(c.u8()).max(1);
    let id = [9u8; 16];
    let geo_chunks = size.div_ceil(u64::from(chunk));
    let durable = RangeSet::from_ranges(&peer_ranges(c), geo_chunks).unwrap_or_default();
    let t0 = Instant::now();
    let mut now = t0;
    let mut r = Receiver::new(
        RecvMeta {
            transfer_id: id,
            size,
            chunk_size: chunk,
        },
        durable,
        Config::default(),
        t0,
    );
    let mut jobs = Vec::new();
    while !c.is_empty() {
        match c.u8() % 7 {
            0 => {
                let offset = u64::from(c.u16());
                let len = usize::from(c.u16() % 512);
                let hash = [c.u8(); 32];
                let claimed = (c.u8() % 4 != 0).then_some(hash);
                match r.handle_data(offset, len, claimed.as_ref(), &[hash[0]; 32]) {
                    Ok(DataAction::Write(ch)) | Ok(DataAction::AckOnly(ch)) => {
                        assert_eq!(
                            (ch.offset, ch.len as usize),
                            (offset, len),
                            "placed elsewhere than sent"
                        );
                        assert!(
                            ch.index < geo_chunks && offset + len as u64 <= size,
                            "{ch:?} outside the file"
                        );
                        assert!(offset % u64::from(chunk) == 0, "misaligned {ch:?} accepted");
                        if c.u8() % 2 == 0 {
                            let ack = r.on_written(ch, hash);
                            assert_eq!(ack.ranges, vec![Range::new(ch.index, ch.index + 1)]);
                        }
                    }
                    Err(_) => {}
                }
            }
            1 => {
                now += Duration::from_millis(u64::from(c.u16()));
                if let Some(j) = r.poll_checkpoint(now) {
                    jobs.push(j);
                }
            }
            2 => {
                if !jobs.is_empty() {
                    let j = jobs.remove(0);
                    if c.u8() % 3 == 0 {
                        r.on_sync_failed(&j);
                    } else {
                        let cp = r.on_durable(&j);
                        assert!(
                            fits(&cp.durable, geo_chunks),
                            "Checkpoint {:?} not valid for the file",
                            cp.durable
                        );
                    }
                }
            }
            3 => {
                if let Some(j) = r.take_checkpoint(now) {
                    jobs.push(j);
                }
            }
            4 => {
                if let Ok(f) = r.handle_complete(
                    &Complete {
                        transfer_id: id,
                        file_hash: [2; 32],
                        round: 0,
                    },
                    now,
                ) {
                    jobs.push(f.sync);
                }
            }
            5 => {
                let bad = RangeSet::from_ranges(&peer_ranges(c), geo_chunks).unwrap_or_default();
                let v = r.verdict(&[c.u8() % 3; 32], &bad);
                assert!(
                    fits(&v.bad_chunks, geo_chunks),
                    "Verdict {:?} not valid for the file",
                    v.bad_chunks
                );
                if v.ok {
                    assert_eq!(
                        r.durable().count(),
                        geo_chunks,
                        "verdict ok with chunks missing"
                    );
                }
            }
            _ => {
                let held = r.held();
                check_shape(&held);
                assert!(held.ranges().last().is_none_or(|x| x.end <= geo_chunks));
            }
        }
        let a = r.accept();
        assert!(
            fits(&a.have, geo_chunks),
            "Accept {:?} not valid for a {geo_chunks}-chunk file",
            a.have
        );
        assert!(r.durable_bytes() <= size);
        check_shape(r.durable());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    match c.u8() % 3 {
        0 => set_ops(&mut c),
        1 => sender(&mut c),
        _ => receiver(&mut c),
    }
});
