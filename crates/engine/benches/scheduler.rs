//! Scheduler bookkeeping cost: a whole 4096-chunk transfer driven through
//! `Sender::poll_chunk` / `Sender::handle_ack` over 4 links, with no I/O.
//!
//! `cargo bench -p gateway-engine --bench scheduler`
//!
//! Every link pulls until its window is full, then the chunks it carries are
//! acked (one Ack per chunk, as the receiver sends them, or one Ack per window
//! round); repeat until everything is acked. `now` is fixed, so no tail
//! duplication happens and the run is deterministic.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gateway_engine::{Config, FileMeta, LinkId, Sender};
use gateway_proto::{Accept, Range};

const LINKS: LinkId = 4;
const CHUNKS: u64 = 4096;
const CHUNK_SIZE: u32 = 1 << 20;
const ID: [u8; 16] = [3; 16];

fn sender() -> Sender {
    let meta = FileMeta {
        transfer_id: ID,
        name: "bench.bin".to_owned(),
        size: CHUNKS * u64::from(CHUNK_SIZE),
        mtime_ns: 0,
        mode: 0o644,
        chunk_size: CHUNK_SIZE,
    };
    let mut s = Sender::new(meta, Config::default());
    for l in 0..LINKS {
        s.link_up(l);
    }
    s.handle_accept(&Accept {
        transfer_id: ID,
        have: Vec::new(),
    })
    .expect("accept");
    s.set_file_hash([0; 32]);
    s
}

/// Runs the transfer to the end; returns the number of chunks polled.
fn run(mut s: Sender, now: Instant, batch_acks: bool) -> u64 {
    let mut polled = 0;
    let mut inflight: Vec<Vec<u64>> = vec![Vec::new(); LINKS as usize];
    let mut ranges = Vec::new();
    while s.poll_complete().is_none() {
        for l in 0..LINKS {
            while let Some(c) = s.poll_chunk(l, now) {
                inflight[l as usize].push(c.index);
                polled += 1;
            }
        }
        for l in 0..LINKS {
            let chunks = &mut inflight[l as usize];
            if batch_acks {
                ranges.clear();
                ranges.extend(chunks.iter().map(|&i| Range {
                    start: i,
                    end: i + 1,
                }));
                s.handle_ack(l, &ranges, now).expect("ack");
            } else {
                for &i in chunks.iter() {
                    s.handle_ack(
                        l,
                        &[Range {
                            start: i,
                            end: i + 1,
                        }],
                        now,
                    )
                    .expect("ack");
                }
            }
            chunks.clear();
        }
    }
    assert_eq!(polled, CHUNKS, "every chunk sent exactly once");
    polled
}

fn bench_scheduler(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("scheduler_4links_4096chunks");
    g.throughput(Throughput::Elements(CHUNKS));
    g.bench_function("ack_each_chunk", |b| {
        b.iter_batched(
            sender,
            |s| black_box(run(s, now, false)),
            BatchSize::LargeInput,
        );
    });
    g.bench_function("ack_per_window", |b| {
        b.iter_batched(
            sender,
            |s| black_box(run(s, now, true)),
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

criterion_group!(benches, bench_scheduler);
criterion_main!(benches);
