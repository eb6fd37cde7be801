//! Round trips, hostile input and limits for `decode` / `encode` / `Encoder`.

mod common;

use bytes::Bytes;
use common::*;
use gateway_proto::*;

#[test]
fn round_trips_every_body_variant() {
    let frames = every_variant();
    let kinds: std::collections::HashSet<_> = frames
        .iter()
        .map(|f| std::mem::discriminant(&f.body))
        .collect();
    assert_eq!(kinds.len(), 14, "fixture must cover all 14 body variants");
    for f in frames {
        let buf = encode(&f);
        assert_eq!(&buf[4..8], FILE_IDENTIFIER.as_bytes());
        let back = decode(Bytes::from(buf), &Limits::default()).unwrap();
        assert_eq!(back, f);
    }
}

#[test]
fn reusable_encoder_matches_encode_for_every_variant() {
    let mut enc = Encoder::new();
    for f in every_variant() {
        assert_eq!(enc.encode(&f), encode(&f).as_slice());
    }
}

#[test]
fn encoder_data_round_trips_with_and_without_hash() {
    let mut enc = Encoder::new();
    for hash in [Some(&HASH), None] {
        let buf = enc.data(&ID, 77, b"payload", hash).to_vec();
        let f = decode_slice(&buf).unwrap();
        assert_eq!(f.stream, Stream::File);
        assert_eq!(
            f.body,
            Body::Data(Data {
                transfer_id: ID,
                offset: 77,
                data: Bytes::from_static(b"payload"),
                chunk_hash: hash.copied(),
            })
        );
    }
}

#[test]
fn decoded_data_is_a_zero_copy_slice_of_the_input() {
    let payload = vec![0x5a; 1 << 20];
    let buf = Bytes::from(Encoder::new().data(&ID, 0, &payload, None).to_vec());
    let range = buf.as_ptr_range();
    let Body::Data(d) = decode(buf.clone(), &Limits::default()).unwrap().body else {
        panic!("not data")
    };
    assert_eq!(d.data.len(), payload.len());
    assert!(range.contains(&d.data.as_ptr()), "payload was copied");
    assert_eq!(&d.data[..], &payload[..]);
}

#[test]
fn encoder_reuses_its_buffer_between_frames() {
    let payload = vec![1u8; 1 << 20];
    let mut enc = Encoder::new();
    // The builder fills its buffer back to front, so frames end at its end.
    let first = enc.data(&ID, 0, &payload, Some(&HASH)).as_ptr_range().end;
    let second = enc.data(&ID, 1 << 20, &payload, Some(&HASH));
    assert_eq!(first, second.as_ptr_range().end, "buffer was reallocated");
    let f = decode_slice(second).unwrap();
    let Body::Data(d) = f.body else { panic!() };
    assert_eq!(d.offset, 1 << 20);
    // A smaller frame after a big one still decodes (reset clears old state).
    let small = enc.data(&ID, 5, b"ab", None).to_vec();
    let Body::Data(d) = decode_slice(&small).unwrap().body else {
        panic!()
    };
    assert_eq!((&d.data[..], d.chunk_hash), (&b"ab"[..], None));
}

#[test]
fn truncated_frames_are_errors_at_every_length() {
    for f in every_variant() {
        let buf = encode(&f);
        for len in 0..buf.len() {
            match decode_slice(&buf[..len]) {
                Err(_) => {}
                // Cutting only the builder's trailing zero padding leaves a valid frame.
                Ok(back) => assert!(
                    back == f && buf[len..].iter().all(|&b| b == 0) && buf.len() - len < 8,
                    "{:?} truncated to {len} of {} bytes decoded as {back:?}",
                    f.body,
                    buf.len()
                ),
            }
        }
    }
}

#[test]
fn every_single_bit_flip_is_handled_without_panic() {
    for f in every_variant() {
        let buf = encode(&f);
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let _ = decode_slice(&b);
        }
    }
}

#[test]
fn random_multi_bit_flips_never_panic() {
    // xorshift64*: deterministic, no extra dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let frames: Vec<Vec<u8>> = every_variant().iter().map(encode).collect();
    for _ in 0..20_000 {
        let mut b = frames[(next() % frames.len() as u64) as usize].clone();
        for _ in 0..1 + next() % 8 {
            let i = (next() % b.len() as u64) as usize;
            b[i] ^= 1 << (next() % 8);
        }
        if next() % 4 == 0 {
            // Random bytes replace a word (offsets, lengths).
            let i = (next() % b.len() as u64) as usize;
            let end = (i + 4).min(b.len());
            let w = next().to_le_bytes();
            b[i..end].copy_from_slice(&w[..end - i]);
        }
        let _ = decode_slice(&b);
    }
}

#[test]
fn rejects_garbage_and_wrong_identifier() {
    assert!(matches!(decode_slice(b""), Err(ProtoError::Malformed(_))));
    assert!(matches!(
        decode_slice(&[0xff; 64]),
        Err(ProtoError::Malformed(_))
    ));
    let mut buf = encode(&every_variant()[0]);
    buf[4..8].copy_from_slice(b"XXXX");
    let err = decode_slice(&buf).unwrap_err();
    assert!(matches!(err, ProtoError::Malformed(ref m) if m.contains("identifier")));
}

#[test]
fn rejects_frame_larger_than_max_frame_bytes() {
    let buf = Encoder::new().data(&ID, 0, &[0; 1000], None).to_vec();
    let limits = Limits {
        max_frame_bytes: buf.len() - 1,
        ..Limits::default()
    };
    let err = decode(Bytes::from(buf.clone()), &limits).unwrap_err();
    assert!(
        matches!(err, ProtoError::TooLarge { what: "frame", got, .. } if got == buf.len() as u64)
    );
    let limits = Limits {
        max_frame_bytes: buf.len(),
        ..Limits::default()
    };
    decode(Bytes::from(buf), &limits).unwrap();
}

#[test]
fn rejects_data_payload_larger_than_max_chunk_bytes() {
    let limits = Limits {
        max_chunk_bytes: 100,
        ..Limits::default()
    };
    let mut enc = Encoder::new();
    let ok = Bytes::copy_from_slice(enc.data(&ID, 0, &[0; 100], None));
    decode(ok, &limits).unwrap();
    let big = Bytes::copy_from_slice(enc.data(&ID, 0, &[0; 101], None));
    let err = decode(big, &limits).unwrap_err();
    assert!(matches!(
        err,
        ProtoError::TooLarge {
            what: "data",
            got: 101,
            max: 100
        }
    ));
    assert_eq!(err.code(), ErrorCode::TooLarge);
}

#[test]
fn rejects_data_whose_offset_plus_len_overflows() {
    let buf = Encoder::new()
        .data(&ID, u64::MAX - 2, b"abcd", None)
        .to_vec();
    let err = decode_slice(&buf).unwrap_err();
    assert!(matches!(err, ProtoError::OutOfBounds(ref m) if m.contains("overflow")));
    assert_eq!(err.code(), ErrorCode::OutOfBounds);
}

#[test]
fn rejects_data_ending_past_max_file_bytes() {
    let limits = Limits::default();
    let buf = Encoder::new()
        .data(&ID, limits.max_file_bytes - 2, b"abcd", None)
        .to_vec();
    assert!(matches!(
        decode_slice(&buf),
        Err(ProtoError::OutOfBounds(_))
    ));
    let buf = Encoder::new()
        .data(&ID, limits.max_file_bytes - 4, b"abcd", None)
        .to_vec();
    decode_slice(&buf).unwrap();
}

fn with_offer(f: impl FnOnce(&mut Offer)) -> Vec<u8> {
    let mut frame = offer("ok.txt");
    let Body::Offer(o) = &mut frame.body else {
        unreachable!()
    };
    f(o);
    encode(&frame)
}

#[test]
fn rejects_offer_with_zero_or_oversized_chunk_size() {
    let err = decode_slice(&with_offer(|o| o.chunk_size = 0)).unwrap_err();
    assert!(matches!(err, ProtoError::Malformed(_)));
    let max = Limits::default().max_chunk_bytes;
    decode_slice(&with_offer(|o| o.chunk_size = max)).unwrap();
    let err = decode_slice(&with_offer(|o| o.chunk_size = max + 1)).unwrap_err();
    assert!(matches!(
        err,
        ProtoError::TooLarge {
            what: "chunk_size",
            ..
        }
    ));
}

#[test]
fn rejects_offer_larger_than_max_file_bytes() {
    let max = Limits::default().max_file_bytes;
    decode_slice(&with_offer(|o| o.size = max)).unwrap();
    let err = decode_slice(&with_offer(|o| o.size = max + 1)).unwrap_err();
    assert!(matches!(
        err,
        ProtoError::TooLarge {
            what: "file size",
            ..
        }
    ));
}

#[test]
fn rejects_offer_name_with_slash() {
    let err = decode_slice(&encode(&offer("a/b"))).unwrap_err();
    assert!(
        matches!(err, ProtoError::BadName { ref name, why } if name == "a/b" && why.contains('/'))
    );
    assert_eq!(err.code(), ErrorCode::BadName);
}

#[test]
fn rejects_reload_with_bad_name() {
    let f = Frame {
        stream: Stream::File,
        body: Body::Reload(Reload {
            transfer_id: ID,
            name: "..".into(),
            size: 1,
            chunk_size: 1,
            durable: vec![],
        }),
    };
    assert!(matches!(
        decode_slice(&encode(&f)),
        Err(ProtoError::BadName { .. })
    ));
}

#[test]
fn rejects_every_bad_name_in_offers() {
    let long = "n".repeat(256);
    for name in [
        "a/b",
        "..",
        ".",
        "",
        "/etc/passwd",
        "a\0b",
        &long,
        "tab\there",
        "bell\x07",
        "del\x7f",
    ] {
        let err = decode_slice(&encode(&offer(name))).unwrap_err();
        match err {
            ProtoError::BadName { why, .. } => assert!(!why.is_empty()),
            other => panic!("{name:?}: expected BadName, got {other:?}"),
        }
    }
}

#[test]
fn accepts_legal_odd_names_in_offers() {
    let max = "é".repeat(127) + "x"; // 255 bytes
    for name in [
        "with space.txt",
        " leading",
        "ünïcødé 文件.txt",
        ".hidden",
        "...",
        "a\\b",
        &max,
    ] {
        let f = decode_slice(&encode(&offer(name))).unwrap();
        assert_eq!(f, offer(name));
    }
}

#[test]
fn rejects_name_over_max_string_bytes_limit() {
    let limits = Limits {
        max_string_bytes: 8,
        ..Limits::default()
    };
    let err = decode(Bytes::from(encode(&offer("123456789"))), &limits).unwrap_err();
    assert!(matches!(
        err,
        ProtoError::TooLarge {
            what: "name",
            got: 9,
            max: 8
        }
    ));
}

#[test]
fn rejects_unsorted_ranges() {
    let err = decode_slice(&encode(&ack(vec![Range::new(5, 6), Range::new(1, 2)]))).unwrap_err();
    assert!(matches!(err, ProtoError::BadRanges(_)), "{err:?}");
    assert_eq!(err.code(), ErrorCode::Malformed);
}

#[test]
fn rejects_overlapping_ranges() {
    let err = decode_slice(&encode(&ack(vec![Range::new(0, 6), Range::new(5, 9)]))).unwrap_err();
    assert!(matches!(err, ProtoError::BadRanges(_)), "{err:?}");
}

#[test]
fn rejects_empty_and_inverted_ranges() {
    for r in [Range::new(3, 3), Range::new(4, 3)] {
        let err = decode_slice(&encode(&ack(vec![Range::new(0, 1), r]))).unwrap_err();
        assert!(matches!(err, ProtoError::BadRanges(_)), "{err:?}");
    }
}

#[test]
fn accepts_adjacent_ranges_on_the_wire() {
    let rs = vec![Range::new(0, 2), Range::new(2, 4)];
    assert_eq!(decode_slice(&encode(&ack(rs.clone()))).unwrap(), ack(rs));
}

#[test]
fn rejects_ranges_past_max_file_bytes() {
    let max = Limits::default().max_file_bytes;
    decode_slice(&encode(&ack(vec![Range::new(0, max)]))).unwrap();
    let err = decode_slice(&encode(&ack(vec![Range::new(0, max + 1)]))).unwrap_err();
    assert!(matches!(err, ProtoError::OutOfBounds(_)), "{err:?}");
}

#[test]
fn rejects_too_many_ranges() {
    let limits = Limits {
        max_ranges: 3,
        ..Limits::default()
    };
    let rs = |n: u64| {
        (0..n)
            .map(|i| Range::new(2 * i, 2 * i + 1))
            .collect::<Vec<_>>()
    };
    decode(Bytes::from(encode(&ack(rs(3)))), &limits).unwrap();
    let err = decode(Bytes::from(encode(&ack(rs(4)))), &limits).unwrap_err();
    assert!(matches!(
        err,
        ProtoError::TooLarge {
            what: "ranges",
            got: 4,
            max: 3
        }
    ));
}

#[test]
fn rejects_bad_ranges_in_every_range_carrying_body() {
    let bad = vec![Range::new(5, 6), Range::new(1, 2)];
    let bodies = [
        Body::Reload(Reload {
            transfer_id: ID,
            name: "f".into(),
            size: 10,
            chunk_size: 1,
            durable: bad.clone(),
        }),
        Body::Accept(Accept {
            transfer_id: ID,
            have: bad.clone(),
        }),
        Body::Checkpoint(Checkpoint {
            transfer_id: ID,
            durable: bad.clone(),
        }),
        Body::Verdict(Verdict {
            transfer_id: ID,
            ok: false,
            bad_chunks: bad.clone(),
            message: String::new(),
            round: 0,
        }),
    ];
    for body in bodies {
        let f = Frame {
            stream: Stream::File,
            body,
        };
        assert!(matches!(
            decode_slice(&encode(&f)),
            Err(ProtoError::BadRanges(_))
        ));
    }
}

#[test]
fn caps_hello_strings_and_lists() {
    let limits = Limits {
        max_string_bytes: 4,
        max_list_items: 2,
        ..Limits::default()
    };
    let hello = |h: Hello| {
        Bytes::from(encode(&Frame {
            stream: Stream::Identity,
            body: Body::Hello(h),
        }))
    };
    decode(
        hello(Hello {
            name: "abcd".into(),
            macs: vec!["1".into(), "2".into()],
            ..Hello::default()
        }),
        &limits,
    )
    .unwrap();
    let cases = [
        (
            Hello {
                name: "abcde".into(),
                ..Hello::default()
            },
            "hello name",
        ),
        (
            Hello {
                node_id: "abcde".into(),
                ..Hello::default()
            },
            "node_id",
        ),
        (
            Hello {
                node_type: "abcde".into(),
                ..Hello::default()
            },
            "node_type",
        ),
        (
            Hello {
                macs: vec!["1".into(); 3],
                ..Hello::default()
            },
            "macs",
        ),
        (
            Hello {
                ips: vec!["abcde".into()],
                ..Hello::default()
            },
            "ips",
        ),
        (
            Hello {
                links: vec!["1".into(); 3],
                ..Hello::default()
            },
            "links",
        ),
    ];
    for (h, field) in cases {
        let err = decode(hello(h), &limits).unwrap_err();
        assert!(
            matches!(err, ProtoError::TooLarge { what, .. } if what == field),
            "{field}: {err:?}"
        );
    }
}

#[test]
fn caps_messages_and_bye_reason() {
    let limits = Limits {
        max_message_bytes: 5,
        ..Limits::default()
    };
    let long = "123456".to_string();
    let bodies = [
        Body::Reject(Reject {
            transfer_id: ID,
            code: RejectCode::Other,
            message: long.clone(),
        }),
        Body::Verdict(Verdict {
            transfer_id: ID,
            ok: true,
            bad_chunks: vec![],
            message: long.clone(),
            round: 0,
        }),
        Body::Error(ErrorFrame {
            transfer_id: None,
            code: ErrorCode::Io,
            message: long.clone(),
        }),
        Body::Bye(long.clone()),
    ];
    for body in bodies {
        let f = Frame {
            stream: Stream::Control,
            body,
        };
        let err = decode(Bytes::from(encode(&f)), &limits).unwrap_err();
        assert!(
            matches!(err, ProtoError::TooLarge { got: 6, max: 5, .. }),
            "{err:?}"
        );
    }
}

#[test]
fn every_reject_and_error_code_round_trips() {
    use ErrorCode as E;
    use RejectCode as R;
    for code in [
        R::NoSpace,
        R::NameTaken,
        R::NotTrusted,
        R::BadName,
        R::TooBig,
        R::UnknownTransfer,
        R::Busy,
        R::Other,
    ] {
        let f = Frame {
            stream: Stream::File,
            body: Body::Reject(Reject {
                transfer_id: ID,
                code,
                message: String::new(),
            }),
        };
        assert_eq!(decode_slice(&encode(&f)).unwrap(), f);
    }
    for code in [
        E::Malformed,
        E::TooLarge,
        E::OutOfBounds,
        E::UnknownTransfer,
        E::BadName,
        E::DiskFull,
        E::Io,
        E::Protocol,
        E::NotTrusted,
        E::Internal,
    ] {
        let f = Frame {
            stream: Stream::Control,
            body: Body::Error(ErrorFrame {
                transfer_id: Some(ID),
                code,
                message: "m".into(),
            }),
        };
        assert_eq!(decode_slice(&encode(&f)).unwrap(), f);
    }
}

#[test]
fn proto_error_code_maps_each_variant() {
    let cases = [
        (ProtoError::Malformed("x".into()), ErrorCode::Malformed),
        (
            ProtoError::TooLarge {
                what: "frame",
                got: 2,
                max: 1,
            },
            ErrorCode::TooLarge,
        ),
        (
            ProtoError::BadName {
                name: "..".into(),
                why: "dots",
            },
            ErrorCode::BadName,
        ),
        (ProtoError::BadRanges("x".into()), ErrorCode::Malformed),
        (ProtoError::OutOfBounds("x".into()), ErrorCode::OutOfBounds),
    ];
    for (err, code) in cases {
        assert_eq!(err.code(), code, "{err}");
    }
}

#[test]
fn errors_display_useful_messages() {
    let e = ProtoError::TooLarge {
        what: "data",
        got: 10,
        max: 5,
    };
    assert_eq!(e.to_string(), "data too large: 10 > 5");
    let e = validate_name("a/b").unwrap_err();
    assert_eq!(e.to_string(), "bad name \"a/b\": contains '/'");
}

#[test]
fn default_limits_match_the_contract() {
    let l = Limits::default();
    assert_eq!(l.max_frame_bytes, 16 * 1024 * 1024 + 64 * 1024);
    assert_eq!(l.max_chunk_bytes, 16 * 1024 * 1024);
    assert_eq!(l.max_file_bytes, 1 << 50);
    assert_eq!(l.max_ranges, 1 << 16);
    assert_eq!(l.max_string_bytes, 255);
    assert_eq!(l.max_list_items, 64);
    assert_eq!(l.max_message_bytes, 1024);
}

#[test]
fn max_size_data_frame_fits_in_max_frame_bytes() {
    let l = Limits::default();
    let payload = vec![3u8; l.max_chunk_bytes as usize];
    let buf = Bytes::copy_from_slice(Encoder::new().data(&ID, 0, &payload, Some(&HASH)));
    assert!(buf.len() <= l.max_frame_bytes);
    let Body::Data(d) = decode(buf, &l).unwrap().body else {
        panic!()
    };
    assert_eq!(d.data.len(), payload.len());
}

fn tree_entry(path: &str, kind: EntryKind, size: u64, target: &str) -> Entry {
    Entry {
        path: path.into(),
        kind,
        size,
        mode: 0o644,
        mtime_ns: 0,
        target: target.into(),
        hash: None,
    }
}

#[test]
fn rejects_a_tree_that_would_write_outside_its_root() {
    let cases: Vec<(Vec<Entry>, u64)> = vec![
        (vec![tree_entry("..", EntryKind::File, 10, "")], 10),
        (vec![tree_entry("../x", EntryKind::File, 10, "")], 10),
        (vec![tree_entry("/etc/x", EntryKind::File, 10, "")], 10),
        (
            vec![
                tree_entry("d", EntryKind::Dir, 0, ""),
                tree_entry("d/l", EntryKind::Symlink, 0, "../../etc"),
            ],
            0,
        ),
        (vec![tree_entry("l", EntryKind::Symlink, 0, "/etc")], 0),
        (vec![tree_entry("a/b", EntryKind::File, 10, "")], 10),
        (vec![tree_entry("a", EntryKind::File, 9, "")], 10),
    ];
    for (entries, size) in cases {
        let what = format!("{entries:?}");
        let buf = with_offer(|o| {
            o.size = size;
            o.entries = Some(entries);
        });
        assert!(decode_slice(&buf).is_err(), "accepted {what}");
    }
}

#[test]
fn an_empty_tree_is_a_tree_and_no_tree_is_a_file() {
    let buf = with_offer(|o| {
        o.size = 0;
        o.entries = Some(vec![]);
    });
    let Body::Offer(o) = decode_slice(&buf).unwrap().body else {
        unreachable!()
    };
    assert_eq!(o.entries, Some(vec![]));
    let Body::Offer(o) = decode_slice(&with_offer(|_| {})).unwrap().body else {
        unreachable!()
    };
    assert_eq!(o.entries, None);
}
