//! Frame codec costs on the data path: encode and decode of a 1 MiB Data
//! frame (the default chunk size) and decode of a small Ack.
//!
//! `cargo bench -p gateway-proto --bench frames`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway_proto::{Ack, Body, Data, Encoder, Frame, Limits, Range, Stream, decode, encode};

const CHUNK: usize = 1 << 20;
const ID: [u8; 16] = [7; 16];
const HASH: [u8; 32] = [9; 32];

fn payload() -> Bytes {
    // Incompressible-looking bytes; the codec does not care, but keep it honest.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(CHUNK);
    while v.len() < CHUNK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(CHUNK);
    Bytes::from(v)
}

fn data_frame(data: Bytes) -> Frame {
    Frame {
        stream: Stream::File,
        body: Body::Data(Data {
            transfer_id: ID,
            offset: 5 * CHUNK as u64,
            data,
            chunk_hash: Some(HASH),
        }),
    }
}

fn ack_frame() -> Frame {
    Frame {
        stream: Stream::File,
        body: Body::Ack(Ack {
            transfer_id: ID,
            ranges: vec![Range { start: 5, end: 6 }],
        }),
    }
}

fn bench_data(c: &mut Criterion) {
    let data = payload();
    let frame = data_frame(data.clone());
    let limits = Limits::default();
    let mut g = c.benchmark_group("data_1mib");
    g.throughput(Throughput::Bytes(CHUNK as u64));

    // Hot path of the sender: reused builder, one copy of the payload.
    let mut enc = Encoder::new();
    g.bench_function("encode_reused_encoder", |b| {
        b.iter(|| {
            let out = enc.data(
                black_box(&ID),
                black_box(5 * CHUNK as u64),
                &data,
                Some(&HASH),
            );
            black_box(out.len())
        });
    });
    // Allocating encode of an owned Frame.
    g.bench_function("encode_alloc", |b| {
        b.iter(|| black_box(encode(black_box(&frame))).len());
    });
    // Decode: verifier + field checks; the payload is a zero-copy slice.
    let wire = Bytes::from(encode(&frame));
    g.bench_function("decode", |b| {
        b.iter(|| {
            let f = decode(black_box(wire.clone()), &limits).expect("valid frame");
            match f.body {
                Body::Data(d) => black_box(d.data.len()),
                _ => unreachable!("a Data frame"),
            }
        });
    });
    g.finish();
}

fn bench_ack(c: &mut Criterion) {
    let limits = Limits::default();
    let wire = Bytes::from(encode(&ack_frame()));
    let mut g = c.benchmark_group("ack");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_small", |b| {
        b.iter(|| black_box(decode(black_box(wire.clone()), &limits).expect("valid frame")));
    });
    g.finish();
}

criterion_group!(benches, bench_data, bench_ack);
criterion_main!(benches);
