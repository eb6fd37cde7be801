//! Rough hot-path timing; run with
//! `cargo test -p gateway-proto --release --test perf -- --ignored --nocapture`.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use gateway_proto::{Body, Encoder, Limits, decode};

const MIB: usize = 1 << 20;
const ROUNDS: u32 = 2000;

fn per_round(f: impl FnMut()) -> f64 {
    let mut f = f;
    for _ in 0..50 {
        f();
    }
    let t = Instant::now();
    for _ in 0..ROUNDS {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS)
}

#[test]
#[ignore = "timing; run in release with --ignored --nocapture"]
fn data_frame_1mib_costs_about_one_memcpy() {
    let payload = vec![0x42u8; MIB];
    let mut dst = vec![0u8; MIB + 128];
    let memcpy = per_round(|| {
        dst[..MIB].copy_from_slice(black_box(&payload));
        black_box(&dst);
    });

    let mut enc = Encoder::new();
    let encode = per_round(|| {
        black_box(enc.data(&[1; 16], 0, black_box(&payload), Some(&[2; 32])));
    });

    let frame = Bytes::copy_from_slice(enc.data(&[1; 16], 0, &payload, Some(&[2; 32])));
    let limits = Limits::default();
    let decode_us = per_round(|| {
        let f = decode(black_box(frame.clone()), &limits).unwrap();
        let Body::Data(d) = f.body else { panic!() };
        black_box(d.data);
    });

    println!(
        "1 MiB: memcpy {memcpy:.1} us, Encoder::data {encode:.1} us, decode {decode_us:.2} us"
    );
    // Encoding = builder reset (memset of the last frame) + one memcpy; decoding is
    // zero-copy. Loose bounds so a noisy CI box does not flake.
    assert!(encode < memcpy * 4.0 + 50.0, "encode too slow");
    assert!(decode_us < memcpy, "decode should not touch the payload");
}
