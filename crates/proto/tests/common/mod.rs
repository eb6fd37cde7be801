//! Shared fixtures: one frame of every body variant.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use gateway_proto::*;

pub const ID: TransferId = [7; 16];
pub const HASH: Hash = [0xab; 32];

pub fn every_variant() -> Vec<Frame> {
    let r = |s, e| Range::new(s, e);
    let bodies = vec![
        (
            Stream::Identity,
            Body::Hello(Hello {
                name: "node α".into(),
                node_id: "k1:abcdef".into(),
                node_type: "laptop".into(),
                macs: vec!["00:11:22:33:44:55".into(), "66:77:88:99:aa:bb".into()],
                ips: vec!["10.0.0.1".into(), "fe80::1".into()],
                links: vec!["tcp:10.0.0.1:7878".into()],
                version: 3,
            }),
        ),
        (
            Stream::File,
            Body::Offer(Offer {
                transfer_id: ID,
                name: "report 2024 – final.pdf".into(),
                size: 123_456_789,
                mtime_ns: -5,
                mode: 0o644,
                chunk_size: 1 << 20,
                file_hash: Some(HASH),
                entries: None,
            }),
        ),
        (
            Stream::File,
            Body::Offer(Offer {
                transfer_id: ID,
                name: "x".into(),
                size: 0,
                mtime_ns: i64::MAX,
                mode: 0,
                chunk_size: 1,
                file_hash: None,
                entries: None,
            }),
        ),
        (
            Stream::File,
            Body::Offer(Offer {
                transfer_id: ID,
                name: "photos".into(),
                size: 12,
                mtime_ns: 1,
                mode: 0o755,
                chunk_size: 1 << 20,
                file_hash: None,
                entries: Some(vec![
                    Entry {
                        path: "2024".into(),
                        kind: EntryKind::Dir,
                        size: 0,
                        mode: 0o755,
                        mtime_ns: 3,
                        target: String::new(),
                        hash: None,
                    },
                    Entry {
                        path: "2024/a b ü.jpg".into(),
                        kind: EntryKind::File,
                        size: 12,
                        mode: 0o600,
                        mtime_ns: -4,
                        target: String::new(),
                        hash: Some(HASH),
                    },
                    Entry {
                        path: "latest".into(),
                        kind: EntryKind::Symlink,
                        size: 0,
                        mode: 0o777,
                        mtime_ns: 0,
                        target: "2024/a b ü.jpg".into(),
                        hash: None,
                    },
                ]),
            }),
        ),
        (
            Stream::File,
            Body::Reload(Reload {
                transfer_id: ID,
                name: "data.bin".into(),
                size: 1 << 40,
                chunk_size: 4096,
                durable: vec![r(0, 10), r(10, 11), r(20, 1000)],
            }),
        ),
        (
            Stream::File,
            Body::Accept(Accept {
                transfer_id: ID,
                have: vec![r(1, 2)],
            }),
        ),
        (
            Stream::File,
            Body::Accept(Accept {
                transfer_id: ID,
                have: vec![],
            }),
        ),
        (
            Stream::File,
            Body::Reject(Reject {
                transfer_id: ID,
                code: RejectCode::NameTaken,
                message: "exists".into(),
            }),
        ),
        (
            Stream::File,
            Body::Data(Data {
                transfer_id: ID,
                offset: 4096,
                data: Bytes::from_static(b"hello, world"),
                chunk_hash: Some(HASH),
            }),
        ),
        (
            Stream::File,
            Body::Data(Data {
                transfer_id: ID,
                offset: 0,
                data: Bytes::new(),
                chunk_hash: None,
            }),
        ),
        (
            Stream::File,
            Body::Ack(Ack {
                transfer_id: ID,
                ranges: vec![r(0, 1), r(5, 9)],
            }),
        ),
        (
            Stream::File,
            Body::Checkpoint(Checkpoint {
                transfer_id: ID,
                durable: vec![r(0, 100)],
            }),
        ),
        (
            Stream::File,
            Body::Complete(Complete {
                transfer_id: ID,
                file_hash: HASH,
                round: 2,
            }),
        ),
        (
            Stream::File,
            Body::Verdict(Verdict {
                transfer_id: ID,
                ok: false,
                bad_chunks: vec![r(3, 4), r(7, 8)],
                message: "2 chunks differ".into(),
                round: 1,
            }),
        ),
        (
            Stream::File,
            Body::Verdict(Verdict {
                transfer_id: ID,
                ok: true,
                bad_chunks: vec![],
                message: String::new(),
                round: 0,
            }),
        ),
        (
            Stream::Control,
            Body::Error(ErrorFrame {
                transfer_id: Some(ID),
                code: ErrorCode::DiskFull,
                message: "ENOSPC".into(),
            }),
        ),
        (
            Stream::Control,
            Body::Error(ErrorFrame {
                transfer_id: None,
                code: ErrorCode::Protocol,
                message: String::new(),
            }),
        ),
        (Stream::Control, Body::Ping(u64::MAX)),
        (Stream::Control, Body::Pong(42)),
        (Stream::Control, Body::Bye("user stop".into())),
        (Stream::Control, Body::Bye(String::new())),
    ];
    bodies
        .into_iter()
        .map(|(stream, body)| Frame { stream, body })
        .collect()
}

pub fn decode_slice(b: &[u8]) -> Result<Frame, ProtoError> {
    decode(Bytes::copy_from_slice(b), &Limits::default())
}

pub fn offer(name: &str) -> Frame {
    Frame {
        stream: Stream::File,
        body: Body::Offer(Offer {
            transfer_id: ID,
            name: name.into(),
            size: 10,
            mtime_ns: 0,
            mode: 0o600,
            chunk_size: 4,
            file_hash: None,
            entries: None,
        }),
    }
}

pub fn ack(ranges: Vec<Range>) -> Frame {
    Frame {
        stream: Stream::File,
        body: Body::Ack(Ack {
            transfer_id: ID,
            ranges,
        }),
    }
}
