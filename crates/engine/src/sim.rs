//! Deterministic simulation: a sender and a receiver engine joined by
//! simulated links of different rates, delays, losses and deaths. Time is
//! virtual, so a "minute" of transfer runs in milliseconds.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use gateway_proto::{Hash, RangeSet};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ihs::Signal;
use crate::{
    Config, DataAction, Event, FileMeta, LinkId, Phase, Receiver, RecvMeta, RecvPhase, Sender,
};

/// A toy 256-bit hash for the simulation (the node uses BLAKE3).
fn h(data: &[u8]) -> Hash {
    let mut out = [0u8; 32];
    for (lane, chunk) in out.chunks_mut(8).enumerate() {
        let mut x: u64 = 0xcbf2_9ce4_8422_2325 ^ lane as u64;
        for &b in data {
            x ^= u64::from(b);
            x = x.wrapping_mul(0x0100_0000_01b3);
        }
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    out
}

#[derive(Clone, Debug)]
pub(crate) struct SimLink {
    pub rate_bytes_per_s: u64,
    pub delay: Duration,
    pub loss: f64,
    pub die_at: Option<Duration>,
    pub revive_at: Option<Duration>,
}

impl SimLink {
    pub(crate) fn new(rate_bytes_per_s: u64, delay_ms: u64) -> Self {
        Self {
            rate_bytes_per_s,
            delay: Duration::from_millis(delay_ms),
            loss: 0.0,
            die_at: None,
            revive_at: None,
        }
    }
}

#[derive(Debug)]
enum Ev {
    Data { link: LinkId, idx: u64 },
    Ack { link: LinkId, idx: u64 },
    Checkpoint(Vec<gateway_proto::Range>),
    Complete(gateway_proto::Complete),
    Verdict(gateway_proto::Verdict),
    Die(LinkId),
}

pub(crate) struct Outcome {
    pub done: bool,
    pub phase: Phase,
    pub elapsed: Duration,
    pub per_link_acked: BTreeMap<LinkId, u64>,
    pub per_link_sent: BTreeMap<LinkId, u64>,
    pub per_link_stats: BTreeMap<LinkId, crate::LinkStats>,
    pub received: Vec<u8>,
    pub durable: RangeSet,
    pub signals: Vec<Signal>,
}

pub(crate) struct Sim {
    pub cfg: Config,
    pub file: Vec<u8>,
    pub links: Vec<SimLink>,
    pub seed: u64,
    /// Corrupt the received copy of this chunk once, after it is written.
    pub corrupt_on_disk: Option<u64>,
    /// Stop the run (a "crash") once this many bytes are durable.
    pub crash_after_durable: Option<u64>,
    /// Receiver state from a previous run (its DB and its part file).
    pub resume: Option<(RangeSet, Vec<u8>)>,
    pub time_limit: Duration,
}

impl Sim {
    pub(crate) fn new(size: usize, links: Vec<SimLink>) -> Self {
        let mut rng = StdRng::seed_from_u64(size as u64);
        let file = (0..size).map(|_| rng.random::<u8>()).collect();
        Self {
            cfg: Config {
                chunk_size_bytes: 64 << 10,
                link_window_bytes: 256 << 10,
                checkpoint_bytes: 1 << 20,
                chunk_timeout: Duration::from_millis(500),
                retry_interval: Duration::from_millis(200),
                tail_duplicate_after: Duration::from_millis(20),
                ..Config::default()
            },
            file,
            links,
            seed: 1,
            corrupt_on_disk: None,
            crash_after_durable: None,
            resume: None,
            time_limit: Duration::from_secs(600),
        }
    }

    pub(crate) fn run(&self) -> Outcome {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(self.seed);
        let meta = FileMeta {
            transfer_id: [7; 16],
            name: "f.bin".into(),
            size: self.file.len() as u64,
            mtime_ns: 0,
            mode: 0o644,
            chunk_size: self.cfg.chunk_size_bytes,
        };
        let mut sender = Sender::new(meta.clone(), self.cfg.clone());
        let (durable0, mut disk) = self
            .resume
            .clone()
            .unwrap_or_else(|| (RangeSet::new(), vec![0u8; self.file.len()]));
        let mut receiver = Receiver::new(
            RecvMeta {
                transfer_id: meta.transfer_id,
                size: meta.size,
                chunk_size: meta.chunk_size,
            },
            durable0,
            self.cfg.clone(),
            t0,
        );
        // The chunk hashes the receiver recorded as it wrote (kept in its DB
        // with the durable set, so a resumed receiver still has them).
        let mut recorded: HashMap<u64, Hash> = HashMap::new();
        if self.resume.is_some() {
            let geo = receiver.geometry();
            for idx in receiver.durable().iter() {
                let c = geo.chunk(idx).unwrap();
                recorded.insert(idx, h(&self.file[c.offset as usize..][..c.len as usize]));
            }
        }
        let mut corrupt_pending = self.corrupt_on_disk;
        // Accept arrives (the negotiation itself is covered by the node tests).
        sender.handle_accept(&receiver.accept()).unwrap();
        sender.set_file_hash(h(&self.file));

        let mut queue: BinaryHeap<Reverse<(Duration, u64)>> = BinaryHeap::new();
        let mut events: HashMap<u64, Ev> = HashMap::new();
        let mut seq = 0u64;
        let mut push = |q: &mut BinaryHeap<_>, evs: &mut HashMap<u64, Ev>, at: Duration, ev: Ev| {
            seq += 1;
            q.push(Reverse((at, seq)));
            evs.insert(seq, ev);
        };
        let mut alive: Vec<bool> = vec![true; self.links.len()];
        let mut tx_free: Vec<Duration> = vec![Duration::ZERO; self.links.len()];
        for (i, l) in self.links.iter().enumerate() {
            sender.link_up(i as LinkId);
            if let Some(d) = l.die_at {
                push(&mut queue, &mut events, d, Ev::Die(i as LinkId));
            }
        }
        let mut signals = Vec::new();
        let mut now = Duration::ZERO;
        loop {
            let inst = t0 + now;
            // Links pull work while their windows have room.
            for (i, l) in self.links.iter().enumerate() {
                let id = i as LinkId;
                if !alive[i] {
                    continue;
                }
                while let Some(c) = sender.poll_chunk(id, inst) {
                    let start = tx_free[i].max(now);
                    let tx =
                        Duration::from_nanos(u64::from(c.len) * 1_000_000_000 / l.rate_bytes_per_s);
                    tx_free[i] = start + tx;
                    if l.loss > 0.0 && rng.random_bool(l.loss) {
                        continue;
                    }
                    push(
                        &mut queue,
                        &mut events,
                        start + tx + l.delay,
                        Ev::Data {
                            link: id,
                            idx: c.index,
                        },
                    );
                }
            }
            if let Some(c) = sender.poll_complete() {
                let d = self.fastest_alive_delay(&alive);
                push(&mut queue, &mut events, now + d, Ev::Complete(c));
            }
            while let Some(ev) = sender.poll_event() {
                match ev {
                    Event::Signal(s) => signals.push(s),
                    Event::SaveDurable(_) => {}
                    Event::RetryLink(id) => {
                        let l = &self.links[id as usize];
                        if l.revive_at.is_some_and(|r| r <= now) {
                            alive[id as usize] = true;
                            tx_free[id as usize] = now;
                            sender.link_up(id);
                        } else {
                            sender.link_retry_failed(id, inst);
                        }
                    }
                }
            }
            if matches!(sender.phase(), Phase::Done | Phase::Failed(_)) {
                break;
            }
            if let Some(limit) = self.crash_after_durable
                && receiver.durable_bytes() >= limit
            {
                break;
            }
            // Next instant: the earliest of queued events and engine timers.
            let mut next = queue.peek().map(|Reverse((t, _))| *t);
            for t in [sender.poll_timeout(), receiver.poll_timeout()]
                .into_iter()
                .flatten()
            {
                let d = t.saturating_duration_since(t0).max(now);
                next = Some(next.map_or(d, |n| n.min(d)));
            }
            let Some(mut next) = next else { break };
            if next <= now {
                // A timer that is already due and changed nothing: step on.
                next = now + Duration::from_millis(1);
            }
            if next > self.time_limit {
                break;
            }
            now = next;
            let inst = t0 + now;
            while let Some(Reverse((t, id))) = queue.peek().copied() {
                if t > now {
                    break;
                }
                queue.pop();
                let ev = events.remove(&id).unwrap();
                match ev {
                    Ev::Die(link) => {
                        alive[link as usize] = false;
                        sender.link_down(link, "simulated death", inst);
                    }
                    Ev::Data { link, idx } => {
                        if !alive[link as usize] {
                            continue;
                        }
                        let c = receiver.geometry().chunk(idx).unwrap();
                        let payload = &self.file[c.offset as usize..][..c.len as usize];
                        let hash = h(payload);
                        match receiver.handle_data(c.offset, payload.len(), Some(&hash), &hash) {
                            Ok(DataAction::Write(c)) => {
                                disk[c.offset as usize..][..c.len as usize]
                                    .copy_from_slice(payload);
                                if corrupt_pending == Some(c.index) {
                                    disk[c.offset as usize] ^= 0xff;
                                    corrupt_pending = None;
                                }
                                recorded.insert(c.index, hash);
                                receiver.on_written(c, hash);
                            }
                            Ok(DataAction::AckOnly(_)) => {}
                            Err(e) => panic!("receiver refused sim data: {e}"),
                        }
                        let d = self.links[link as usize].delay;
                        push(&mut queue, &mut events, now + d, Ev::Ack { link, idx });
                    }
                    Ev::Ack { link, idx } => {
                        if alive[link as usize] {
                            sender
                                .handle_ack(
                                    link,
                                    &[gateway_proto::Range {
                                        start: idx,
                                        end: idx + 1,
                                    }],
                                    inst,
                                )
                                .unwrap();
                        }
                    }
                    Ev::Checkpoint(r) => sender.handle_checkpoint(&r).unwrap(),
                    Ev::Complete(c) => {
                        let fin = receiver.handle_complete(&c, inst).unwrap();
                        receiver.on_durable(&fin.sync);
                        let geo = receiver.geometry();
                        let mut bad = RangeSet::new();
                        for idx in 0..geo.chunks() {
                            let c = geo.chunk(idx).unwrap();
                            let on_disk = h(&disk[c.offset as usize..][..c.len as usize]);
                            if recorded.get(&idx).is_some_and(|r| *r != on_disk) {
                                bad.insert(idx);
                            }
                        }
                        let v = receiver.verdict(&h(&disk), &bad);
                        let d = self.fastest_alive_delay(&alive);
                        push(&mut queue, &mut events, now + d, Ev::Verdict(v));
                    }
                    Ev::Verdict(v) => sender.handle_verdict(&v).unwrap(),
                }
            }
            sender.handle_timeout(inst);
            if receiver.phase() == RecvPhase::Receiving
                && let Some(job) = receiver.poll_checkpoint(inst)
            {
                // fdatasync + DB commit are instant here; the order is what matters.
                let ck = receiver.on_durable(&job);
                let d = self.fastest_alive_delay(&alive);
                push(&mut queue, &mut events, now + d, Ev::Checkpoint(ck.durable));
            }
        }
        let per_link_acked = (0..self.links.len() as LinkId)
            .map(|l| (l, sender.link_stats(l).bytes_acked))
            .collect();
        let per_link_sent = (0..self.links.len() as LinkId)
            .map(|l| (l, sender.link_stats(l).bytes_sent))
            .collect();
        let per_link_stats = (0..self.links.len() as LinkId)
            .map(|l| (l, sender.link_stats(l)))
            .collect();
        Outcome {
            per_link_stats,
            done: *sender.phase() == Phase::Done,
            phase: sender.phase().clone(),
            elapsed: now,
            per_link_acked,
            per_link_sent,
            received: disk,
            durable: receiver.durable().clone(),
            signals,
        }
    }

    fn fastest_alive_delay(&self, alive: &[bool]) -> Duration {
        self.links
            .iter()
            .zip(alive)
            .filter(|(_, a)| **a)
            .map(|(l, _)| l.delay)
            .min()
            .unwrap_or(Duration::from_millis(1))
    }
}

const MB: u64 = 1_000_000;

fn sim_chunk() -> u32 {
    Sim::new(0, vec![]).cfg.chunk_size_bytes
}

#[test]
fn two_links_of_different_rates_deliver_the_file_and_share_by_rate() {
    let sim = Sim::new(
        8 << 20,
        vec![SimLink::new(40 * MB, 1), SimLink::new(10 * MB, 1)],
    );
    let out = sim.run();
    assert!(out.done, "transfer did not finish: {:?}", out.phase);
    assert_eq!(
        out.received, sim.file,
        "received bytes differ from the source"
    );
    let fast = out.per_link_acked[&0] as f64;
    let slow = out.per_link_acked[&1] as f64;
    let share = fast / (fast + slow);
    assert!(
        (0.7..=0.9).contains(&share),
        "expected the 4x faster link to carry ~80% of the bytes, it carried {:.0}%",
        share * 100.0
    );
}

#[test]
fn striping_is_faster_than_the_fastest_link_alone() {
    let size = 16 << 20;
    let alone = Sim::new(size, vec![SimLink::new(40 * MB, 2)]).run();
    let both = Sim::new(
        size,
        vec![SimLink::new(40 * MB, 2), SimLink::new(20 * MB, 2)],
    )
    .run();
    assert!(alone.done && both.done);
    assert!(
        both.elapsed < alone.elapsed,
        "two links took {:?}, the fast one alone {:?}",
        both.elapsed,
        alone.elapsed
    );
}

#[test]
fn a_very_slow_link_does_not_hold_the_tail_hostage() {
    let size = 8 << 20;
    let alone = Sim::new(size, vec![SimLink::new(50 * MB, 1)]).run();
    // A 100x slower link with a long delay joins: tail duplication must keep
    // the finish close to the fast link's own time.
    let both = Sim::new(
        size,
        vec![SimLink::new(50 * MB, 1), SimLink::new(MB / 2, 200)],
    )
    .run();
    assert!(both.done);
    assert_eq!(both.received, Sim::new(size, vec![]).file);
    assert!(
        both.elapsed <= alone.elapsed + Duration::from_millis(450),
        "with the slow link: {:?}, fast alone: {:?}",
        both.elapsed,
        alone.elapsed
    );
}

#[test]
fn a_long_fat_link_grows_its_window_to_its_bandwidth_delay_product() {
    // 50 MB/s with a 200 ms round trip: 10 MB must be in flight to fill it,
    // 40x the initial window of the simulation's config.
    let size = 32 << 20;
    let sim = Sim::new(size, vec![SimLink::new(50 * MB, 100)]);
    let out = sim.run();
    assert!(out.done);
    assert_eq!(out.received, sim.file);
    let st = out.per_link_stats[&0];
    let ideal = Duration::from_secs_f64(size as f64 / (50 * MB) as f64 + 0.2);
    println!(
        "elapsed {:?} (ideal {ideal:?}), window {} B, rate {} B/s, min rtt {:?}",
        out.elapsed, st.window_bytes, st.rate_bytes_per_s, st.min_rtt
    );
    assert!(
        st.window_bytes >= 10 * MB,
        "window {} B is below the 10 MB bandwidth-delay product",
        st.window_bytes
    );
    // The window doubles about once per round trip from 256 KiB, like TCP's
    // slow start: ~6 round trips of ramp; at the initial window: ~26 s.
    assert!(
        out.elapsed < ideal * 4,
        "took {:?}; at the initial window it would take ~26 s, ideal {ideal:?}",
        out.elapsed
    );
}

#[test]
fn a_slow_link_never_makes_a_transfer_slower_than_the_fastest_link_alone() {
    let size = 16 << 20;
    let fast = [SimLink::new(50 * MB, 1), SimLink::new(20 * MB, 10)];
    let slow = [
        SimLink::new(MB / 2, 200),
        SimLink::new(5 * MB, 80),
        SimLink::new(20 * MB, 300),
        SimLink::new(2 * MB, 1),
    ];
    for f in &fast {
        let alone = Sim::new(size, vec![f.clone()]).run();
        assert!(alone.done);
        for s in &slow {
            let both = Sim::new(size, vec![f.clone(), s.clone()]).run();
            assert!(both.done);
            println!(
                "fast {} MB/s {:?} + slow {} MB/s {:?}: {:?} vs alone {:?}",
                f.rate_bytes_per_s as f64 / 1e6,
                f.delay,
                s.rate_bytes_per_s as f64 / 1e6,
                s.delay,
                both.elapsed,
                alone.elapsed
            );
            // What no scheduler can avoid: the first chunk a link of
            // unknown speed takes, sent again by the fast link at the tail.
            let probe = Duration::from_secs_f64(f64::from(sim_chunk()) / f.rate_bytes_per_s as f64)
                + Sim::new(0, vec![]).cfg.tail_duplicate_after;
            assert!(
                both.elapsed <= alone.elapsed + probe,
                "fast {f:?} + slow {s:?}: {:?}, the fast link alone: {:?}",
                both.elapsed,
                alone.elapsed
            );
        }
    }
}

#[test]
fn link_death_requeues_its_chunks_and_the_other_link_finishes() {
    let mut slow = SimLink::new(20 * MB, 1);
    slow.die_at = Some(Duration::from_millis(100));
    let sim = Sim::new(8 << 20, vec![SimLink::new(20 * MB, 1), slow]);
    let out = sim.run();
    assert!(out.done, "{:?}", out.phase);
    assert_eq!(out.received, sim.file);
    let errors: Vec<_> = out
        .signals
        .iter()
        .filter(|s| matches!(s, Signal::Error { link: 1, .. }))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "expected one ERROR for link 1, got {:?}",
        out.signals
    );
    if let Signal::Error { requeued, .. } = errors[0] {
        assert!(!requeued.is_empty(), "the dead link had chunks in flight");
    }
    assert!(matches!(
        out.signals.last(),
        Some(Signal::Complete { ok: true })
    ));
}

#[test]
fn a_recovered_link_rejoins_the_running_transfer() {
    let mut flaky = SimLink::new(20 * MB, 1);
    flaky.die_at = Some(Duration::from_millis(50));
    flaky.revive_at = Some(Duration::from_millis(300));
    let sim = Sim::new(16 << 20, vec![SimLink::new(10 * MB, 1), flaky]);
    let out = sim.run();
    assert!(out.done);
    assert_eq!(out.received, sim.file);
    // Before death it carried ~50 ms x 20 MB/s ~ 1 MB; after revival it must carry more.
    assert!(
        out.per_link_acked[&1] > 4 * MB,
        "revived link carried only {} bytes",
        out.per_link_acked[&1]
    );
}

#[test]
fn all_links_dead_pauses_with_state_saved() {
    let mut a = SimLink::new(10 * MB, 1);
    a.die_at = Some(Duration::from_millis(300));
    let sim = Sim {
        time_limit: Duration::from_secs(5),
        ..Sim::new(8 << 20, vec![a])
    };
    let out = sim.run();
    assert!(!out.done);
    assert!(
        !out.durable.is_empty(),
        "some chunks were made durable before the death"
    );
    // What the receiver calls durable is exactly what it has on disk.
    let geo = crate::Geometry::new(sim.file.len() as u64, sim.cfg.chunk_size_bytes);
    for idx in out.durable.iter() {
        let c = geo.chunk(idx).unwrap();
        let r = c.offset as usize..c.offset as usize + c.len as usize;
        assert_eq!(
            out.received[r.clone()],
            sim.file[r],
            "durable chunk {idx} differs"
        );
    }
}

#[test]
fn lossy_links_still_deliver_the_exact_file() {
    let mut a = SimLink::new(20 * MB, 2);
    a.loss = 0.05;
    let mut b = SimLink::new(10 * MB, 5);
    b.loss = 0.2;
    let sim = Sim {
        seed: 42,
        ..Sim::new(8 << 20, vec![a, b])
    };
    let out = sim.run();
    assert!(out.done, "{:?}", out.phase);
    assert_eq!(out.received, sim.file);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let mk = || {
        let mut a = SimLink::new(20 * MB, 2);
        a.loss = 0.1;
        Sim {
            seed: 9,
            ..Sim::new(4 << 20, vec![a, SimLink::new(5 * MB, 3)])
        }
        .run()
    };
    let (x, y) = (mk(), mk());
    assert_eq!(x.elapsed, y.elapsed);
    assert_eq!(x.per_link_sent, y.per_link_sent);
}

#[test]
fn resume_sends_only_what_was_not_durable() {
    let size = 8 << 20;
    let first = Sim {
        crash_after_durable: Some(3 << 20),
        ..Sim::new(
            size,
            vec![SimLink::new(10 * MB, 1), SimLink::new(10 * MB, 1)],
        )
    }
    .run();
    assert!(!first.done);
    let durable = first.durable.clone();
    let held = crate::Geometry::new(size as u64, 64 << 10).bytes_of(&durable);
    assert!(held >= 3 << 20);
    let second = Sim {
        resume: Some((durable, first.received.clone())),
        ..Sim::new(size, vec![SimLink::new(10 * MB, 1)])
    };
    let out = second.run();
    assert!(out.done);
    assert_eq!(out.received, second.file);
    let sent: u64 = out.per_link_sent.values().sum();
    assert_eq!(
        sent,
        size as u64 - held,
        "expected only the {} non-durable bytes to be sent",
        size as u64 - held
    );
}

#[test]
fn a_chunk_corrupted_on_disk_is_resent_alone_after_the_verdict() {
    let sim = Sim {
        corrupt_on_disk: Some(5),
        ..Sim::new(4 << 20, vec![SimLink::new(10 * MB, 1)])
    };
    let out = sim.run();
    assert!(out.done, "{:?}", out.phase);
    assert_eq!(out.received, sim.file);
    let sent: u64 = out.per_link_sent.values().sum();
    assert_eq!(
        sent,
        (4 << 20) + (64 << 10),
        "expected exactly one chunk re-sent"
    );
}

// ---- property: any schedule ends exact, or paused with a state that resumes exact

/// One link of a generated schedule: rate, delay, loss, and when (if ever)
/// it dies and comes back.
fn arb_link() -> impl proptest::strategy::Strategy<Value = SimLink> {
    use proptest::prelude::*;
    (
        100_000u64..50_000_000,
        0u64..80,
        prop_oneof![Just(0.0), 0.0f64..0.3],
        proptest::option::of(0u64..4_000),
        proptest::option::of(0u64..6_000),
    )
        .prop_map(|(rate, delay, loss, die, back)| {
            let mut l = SimLink::new(rate, delay);
            l.loss = loss;
            l.die_at = die.map(Duration::from_millis);
            // A link comes back only after it died.
            l.revive_at = l
                .die_at
                .zip(back)
                .map(|(d, b)| d + Duration::from_millis(b));
            l
        })
}

/// The chunks the receiver calls durable are on its disk, byte for byte
/// (the DB never claims bytes that are not on disk), but for the one the
/// simulation corrupts on disk after its write (bit rot the final hash finds).
fn assert_durable_is_on_disk(sim: &Sim, out: &Outcome) {
    let geo = crate::Geometry::new(sim.file.len() as u64, sim.cfg.chunk_size_bytes);
    for idx in out.durable.iter() {
        if sim.corrupt_on_disk == Some(idx) {
            continue;
        }
        let c = geo.chunk(idx).unwrap();
        let r = c.offset as usize..c.offset as usize + c.len as usize;
        assert!(
            out.received[r.clone()] == sim.file[r],
            "durable chunk {idx} differs from the source"
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64),
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Issue 10's engine property. For any file size, any set of 1–4 links
    /// (rates, delays, losses, deaths and returns), an optional crash of the
    /// receiver once some bytes are durable, and an optional chunk corrupted
    /// on its disk: the transfer ends with the exact file, or it is paused
    /// with a durable state that is on disk and from which a resumed run
    /// (whatever the crash lost besides) ends with the exact file.
    #[test]
    fn any_schedule_delivers_the_exact_file_or_pauses_with_a_state_that_resumes_exact(
        size in proptest::prop_oneof![0usize..70_000, 70_000usize..3_000_000],
        links in proptest::collection::vec(arb_link(), 1..=4),
        seed in proptest::prelude::any::<u64>(),
        crash_at in proptest::option::of(0u64..2_000_000),
        corrupt in proptest::option::of(0u64..48),
    ) {
        let chunks = crate::Geometry::new(size as u64, sim_chunk()).chunks();
        let sim = Sim {
            seed,
            crash_after_durable: crash_at,
            corrupt_on_disk: corrupt.filter(|c| *c < chunks),
            time_limit: Duration::from_secs(120),
            ..Sim::new(size, links)
        };
        let out = sim.run();
        if out.done {
            proptest::prop_assert!(out.received == sim.file, "done but the file differs");
            return Ok(());
        }
        proptest::prop_assert!(
            !matches!(out.phase, Phase::Failed(_)),
            "a transfer over links that may die failed instead of pausing: {:?}",
            out.phase
        );
        assert_durable_is_on_disk(&sim, &out);
        // The crash (or the pause) lost whatever was not durable: scramble it.
        let geo = crate::Geometry::new(size as u64, sim.cfg.chunk_size_bytes);
        let mut disk = out.received.clone();
        for idx in 0..geo.chunks() {
            if !out.durable.contains(idx) {
                let c = geo.chunk(idx).unwrap();
                for b in &mut disk[c.offset as usize..][..c.len as usize] {
                    *b = b.wrapping_add(0x5a);
                }
            }
        }
        let resumed = Sim {
            seed: seed ^ 1,
            resume: Some((out.durable.clone(), disk)),
            ..Sim::new(size, vec![SimLink::new(20 * MB, 2)])
        };
        let again = resumed.run();
        proptest::prop_assert!(again.done, "the resumed run did not finish: {:?}", again.phase);
        proptest::prop_assert!(again.received == sim.file, "the resumed run's file differs");
    }
}

/// Issue 10: one peer over 16 links of mixed rates (0.1–100 MB/s, 1–40 ms).
/// The file arrives exact, every link is used, and the aggregate is printed
/// against the sum of the link rates (a figure, not an assertion on speed
/// beyond "faster than the fastest link alone"). A crawling link's chunks may
/// all be overtaken by tail copies on faster links, so "used" is "sent".
#[test]
fn sixteen_links_of_mixed_rates_deliver_the_exact_file_and_all_carry() {
    let rates = [
        100_000,
        250_000,
        500_000,
        MB,
        2 * MB,
        3 * MB,
        5 * MB,
        8 * MB,
        10 * MB,
        12 * MB,
        20 * MB,
        30 * MB,
        40 * MB,
        60 * MB,
        80 * MB,
        100 * MB,
    ];
    let links: Vec<SimLink> = rates
        .iter()
        .enumerate()
        .map(|(i, &r)| SimLink::new(r, 1 + (i as u64 * 7) % 40))
        .collect();
    let size = 256 << 20;
    let sim = Sim::new(size, links);
    let out = sim.run();
    assert!(out.done, "{:?}", out.phase);
    assert!(out.received == sim.file, "the file differs");
    let sum: u64 = rates.iter().sum();
    let rate = size as f64 / out.elapsed.as_secs_f64();
    let alone = size as f64 / (100 * MB) as f64;
    let sent: u64 = out.per_link_sent.values().sum();
    eprintln!(
        "  sent {:.1} MB for a {:.1} MB file ({:.1} % copies and re-sends)",
        sent as f64 / 1e6,
        size as f64 / 1e6,
        100.0 * (sent as f64 / size as f64 - 1.0)
    );
    eprintln!(
        "16 links, sum of rates {:.1} MB/s: {} MiB in {:.2} s (virtual) = {:.1} MB/s, {:.0} % of the sum; fastest link alone {:.2} s",
        sum as f64 / 1e6,
        size >> 20,
        out.elapsed.as_secs_f64(),
        rate / 1e6,
        100.0 * rate / sum as f64,
        alone
    );
    for (l, sent) in &out.per_link_sent {
        eprintln!(
            "  link {l:2}: {:6.2} MB/s, sent {:7.2} MB",
            rates[*l as usize] as f64 / 1e6,
            *sent as f64 / 1e6,
        );
        assert!(
            *sent > 0,
            "link {l} ({} B/s) was never used",
            rates[*l as usize]
        );
    }
    assert!(
        out.elapsed.as_secs_f64() < alone,
        "16 links were slower than the fastest alone"
    );
}
