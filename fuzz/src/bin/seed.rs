//! Writes the seed corpus, `fuzz/corpus/<target>/`, from real frames: every
//! frame body type from the real encoder, real length-prefixed, COBS and
//! L2CAP streams of those frames, the messages of a real Noise handshake,
//! and the range lists and trees of a real transfer, each wrapped in its
//! target's input format (see `fuzz_targets/*.rs`).
//!
//! Run from `fuzz/`: `cargo run --release --bin seed` (writes into
//! `corpus/`, replacing the `seed-*` files; the fuzzer's own finds are kept).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gateway_bluez::packet::{END, MORE};
use gateway_fuzz::{put_record, put_short, put_tree};
use gateway_link::framer::{CLOSE, KEEPALIVE, header};
use gateway_link::{FrameRx, FrameTx, Link, LinkCaps, LinkError, LinkInfo, LinkKind};
use gateway_proto::{
    Accept, Ack, Body, Checkpoint, Complete, Data, Encoder, Entry, EntryKind, ErrorCode,
    ErrorFrame, Frame, Hello, Offer, Range, Reject, RejectCode, Reload, Stream, Verdict, encode,
};
use tokio::sync::mpsc;

fn frames() -> Vec<(&'static str, Frame)> {
    let id = [0x5a; 16];
    let f = |stream, body| Frame { stream, body };
    let e = |path: &str, kind, size, target: &str| Entry {
        path: path.into(),
        kind,
        size,
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000,
        target: target.into(),
        hash: (kind == EntryKind::File).then_some([3; 32]),
    };
    vec![
        (
            "hello",
            f(
                Stream::Identity,
                Body::Hello(Hello {
                    name: "laptop".into(),
                    node_id: "abcd-efgh-ijkl-mnop-qrst".into(),
                    node_type: "laptop".into(),
                    macs: vec!["02:00:00:00:00:01".into()],
                    ips: vec!["192.168.1.2".into(), "fe80::1".into()],
                    links: vec!["tcp:192.168.1.2:7878".into(), "serial:/dev/ttyGS0".into()],
                    version: 1,
                }),
            ),
        ),
        (
            "offer",
            f(
                Stream::File,
                Body::Offer(Offer {
                    transfer_id: id,
                    name: "report.pdf".into(),
                    size: 3 << 20,
                    mtime_ns: 1_700_000_000_000_000_000,
                    mode: 0o644,
                    chunk_size: 1 << 20,
                    file_hash: Some([1; 32]),
                    entries: None,
                }),
            ),
        ),
        (
            "offer-tree",
            f(
                Stream::File,
                Body::Offer(Offer {
                    transfer_id: id,
                    name: "photos".into(),
                    size: 12,
                    mtime_ns: 0,
                    mode: 0o755,
                    chunk_size: 1024,
                    file_hash: None,
                    entries: Some(vec![
                        e("a", EntryKind::Dir, 0, ""),
                        e("a/b c", EntryKind::File, 5, ""),
                        e("a/ünï", EntryKind::Dir, 0, ""),
                        e("a/ünï/x", EntryKind::Symlink, 0, "../b c"),
                        e("top", EntryKind::File, 7, ""),
                        e("up", EntryKind::Symlink, 0, "a/./ünï/../b c"),
                    ]),
                }),
            ),
        ),
        (
            "reload",
            f(
                Stream::File,
                Body::Reload(Reload {
                    transfer_id: id,
                    name: "report.pdf".into(),
                    size: 3 << 20,
                    chunk_size: 1 << 20,
                    durable: vec![Range::new(0, 1), Range::new(2, 3)],
                }),
            ),
        ),
        (
            "accept",
            f(
                Stream::File,
                Body::Accept(Accept {
                    transfer_id: id,
                    have: vec![Range::new(0, 2)],
                }),
            ),
        ),
        (
            "reject",
            f(
                Stream::File,
                Body::Reject(Reject {
                    transfer_id: id,
                    code: RejectCode::NoSpace,
                    message: "not enough space".into(),
                }),
            ),
        ),
        (
            "data",
            f(
                Stream::File,
                Body::Data(Data {
                    transfer_id: id,
                    offset: 1 << 20,
                    data: Bytes::from_static(b"hello, chunk"),
                    chunk_hash: Some([4; 32]),
                }),
            ),
        ),
        (
            "ack",
            f(
                Stream::File,
                Body::Ack(Ack {
                    transfer_id: id,
                    ranges: vec![Range::new(1, 2)],
                }),
            ),
        ),
        (
            "checkpoint",
            f(
                Stream::File,
                Body::Checkpoint(Checkpoint {
                    transfer_id: id,
                    durable: vec![Range::new(0, 3)],
                }),
            ),
        ),
        (
            "complete",
            f(
                Stream::File,
                Body::Complete(Complete {
                    transfer_id: id,
                    file_hash: [1; 32],
                    round: 0,
                }),
            ),
        ),
        (
            "verdict",
            f(
                Stream::File,
                Body::Verdict(Verdict {
                    transfer_id: id,
                    ok: false,
                    bad_chunks: vec![Range::new(1, 2)],
                    message: "1 chunk(s) must be sent again".into(),
                    round: 0,
                }),
            ),
        ),
        (
            "error",
            f(
                Stream::Control,
                Body::Error(ErrorFrame {
                    transfer_id: Some(id),
                    code: ErrorCode::OutOfBounds,
                    message: "out of bounds".into(),
                }),
            ),
        ),
        ("ping", f(Stream::Control, Body::Ping(42))),
        ("pong", f(Stream::Control, Body::Pong(42))),
        ("bye", f(Stream::Control, Body::Bye("done".into()))),
    ]
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("corpus dir");
    std::fs::write(d.join(format!("seed-{name}")), bytes).expect("corpus file");
}

// ---- a real Noise handshake, recorded

struct Tap {
    log: Arc<Mutex<Vec<Vec<u8>>>>,
    to: mpsc::UnboundedSender<Vec<u8>>,
}

#[async_trait]
impl FrameTx for Tap {
    async fn send(&mut self, f: &[u8]) -> Result<(), LinkError> {
        self.log.lock().unwrap().push(f.to_vec());
        let _ = self.to.send(f.to_vec());
        Ok(())
    }
    async fn close(&mut self) -> Result<(), LinkError> {
        Ok(())
    }
}

struct Ear(mpsc::UnboundedReceiver<Vec<u8>>);

#[async_trait]
impl FrameRx for Ear {
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        self.0
            .recv()
            .await
            .map(Bytes::from)
            .ok_or(LinkError::Closed)
    }
}

struct Pipe {
    info: LinkInfo,
    tx: Tap,
    rx: Ear,
}

impl Link for Pipe {
    fn caps(&self) -> LinkCaps {
        LinkCaps {
            kind: LinkKind::Mock,
            max_frame: 1 << 20,
            reliable: true,
            ordered: true,
        }
    }
    fn info(&self) -> &LinkInfo {
        &self.info
    }
    fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
        (Box::new(self.tx), Box::new(self.rx))
    }
}

/// The three handshake messages and one sealed frame of a real session.
fn noise_messages() -> Vec<Vec<u8>> {
    let dir = std::env::temp_dir().join("gateway-fuzz-seed-keys");
    let ka = gateway_secure::NodeKey::load_or_create(&dir.join("a")).expect("key");
    let kb = gateway_secure::NodeKey::load_or_create(&dir.join("b")).expect("key");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (ab, from_a) = mpsc::unbounded_channel();
    let (ba, from_b) = mpsc::unbounded_channel();
    let a = Box::new(Pipe {
        info: LinkInfo::default(),
        tx: Tap {
            log: log.clone(),
            to: ab,
        },
        rx: Ear(from_b),
    });
    let b = Box::new(Pipe {
        info: LinkInfo::default(),
        tx: Tap {
            log: log.clone(),
            to: ba,
        },
        rx: Ear(from_a),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let t = Duration::from_secs(5);
        let (sa, sb) = tokio::join!(
            gateway_secure::connect(a, &ka, t),
            gateway_secure::accept(b, &kb, t)
        );
        let mut sa = sa.expect("handshake");
        let mut sb = sb.expect("handshake");
        let hello = encode(&frames()[0].1);
        sa.frames().0.send(&hello).await.expect("send");
        sb.frames().1.recv().await.expect("recv");
    });
    let out = log.lock().unwrap().clone();
    out
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let frames = frames();
    let encoded: Vec<(&str, Vec<u8>)> = frames.iter().map(|(n, f)| (*n, encode(f))).collect();

    // decode: each frame, and a Data frame from the hot-path encoder.
    for (name, bytes) in &encoded {
        write(&dir, "decode", name, bytes);
    }
    let mut enc = Encoder::new();
    write(
        &dir,
        "decode",
        "data-encoder",
        enc.data(&[1; 16], 0, b"abc", Some(&[2; 32])),
    );

    // framer: every frame length-prefixed, with marks (Reassembler) and
    // without (FrameReader); a limit that fits and one that does not.
    let mut stream = Vec::new();
    for (_, b) in &encoded {
        stream.extend_from_slice(&header(b.len(), 1 << 20).unwrap());
        stream.extend_from_slice(b);
    }
    let mut marked = stream.clone();
    marked.extend_from_slice(&KEEPALIVE);
    marked.extend_from_slice(&header(0, 10).unwrap());
    marked.extend_from_slice(&CLOSE);
    for (which, max, body, name) in [
        (0u8, 4096u16, &marked, "marked"),
        (1, 4096, &stream, "lenprefix"),
        (1, 64, &stream, "lenprefix-small-max"),
    ] {
        let mut v = vec![which];
        v.extend_from_slice(&max.to_le_bytes());
        v.push(7);
        v.extend_from_slice(body);
        write(&dir, "framer", name, &v);
    }

    // serial: the frames as COBS packets on a raw line, plain and escaped,
    // and as packet records with line noise between them.
    for escaped in [false, true] {
        let mut line = vec![0, 0x11, 0x55];
        for (i, (_, b)) in encoded.iter().enumerate() {
            line.extend(gateway_serial::fuzzing::encode(i as u8, b, escaped));
        }
        let mut v = vec![u8::from(escaped)];
        v.extend_from_slice(&1024u16.to_le_bytes());
        v.push(3);
        v.extend(&line);
        write(
            &dir,
            "serial",
            &format!("line-esc{}", u8::from(escaped)),
            &v,
        );
        let mut v = vec![2 | u8::from(escaped)];
        v.extend_from_slice(&512u16.to_le_bytes());
        v.push(5);
        for (i, (_, b)) in encoded.iter().enumerate() {
            v.push(i as u8);
            put_record(&mut v, b);
            put_short(&mut v, &[0x7d, 0, 0x13, 0x99][..i % 5]);
        }
        write(
            &dir,
            "serial",
            &format!("packets-esc{}", u8::from(escaped)),
            &v,
        );
    }

    // l2cap: the frames fragmented over an MTU of 23 (BLE's smallest) as a
    // peer sends them, then the close; and the frames for our own sender.
    let mtu = 23usize;
    let mut v = vec![0];
    v.extend_from_slice(&4096u16.to_le_bytes());
    v.extend_from_slice(&(mtu as u16).to_le_bytes());
    for (_, b) in &encoded {
        let mut pieces = b.chunks(mtu - 1).peekable();
        while let Some(p) = pieces.next() {
            let mut pkt = vec![if pieces.peek().is_some() { MORE } else { END }];
            pkt.extend_from_slice(p);
            put_record(&mut v, &pkt);
        }
    }
    put_record(&mut v, &[gateway_bluez::packet::CLOSE]);
    write(&dir, "l2cap", "packets", &v);
    let mut v = vec![3];
    v.extend_from_slice(&4096u16.to_le_bytes());
    v.extend_from_slice(&(mtu as u16).to_le_bytes());
    for (_, b) in &encoded {
        put_record(&mut v, b);
    }
    write(&dir, "l2cap", "frames", &v);

    // noise: a real handshake's messages to a fresh initiator (message 2)
    // and responder (messages 1 and 3), and a clean man-in-the-middle run
    // with two transport frames.
    let msgs = noise_messages();
    let mut v = vec![0];
    put_record(&mut v, &msgs[1]);
    write(&dir, "noise", "initiator", &v);
    let mut v = vec![1];
    put_record(&mut v, &msgs[0]);
    put_record(&mut v, &msgs[2]);
    write(&dir, "noise", "responder", &v);
    let mut v = vec![2, 0, 0, 0];
    for (_, b) in encoded.iter().take(2) {
        put_record(&mut v, b);
        v.push(0);
    }
    write(&dir, "noise", "mitm-clean", &v);
    let mut v = vec![2, 0, 0, 0];
    put_record(&mut v, &encoded[0].1);
    v.extend_from_slice(&[1, 9, 0, 1]); // flip a byte of the sealed frame
    put_record(&mut v, &encoded[1].1);
    v.push(0);
    write(&dir, "noise", "mitm-flip-frame", &v);

    // ranges: set ops; a sender's whole transfer (accept, link up, chunks
    // out, acks, checkpoint, hash, complete, verdict ok); a receiver's.
    write(
        &dir,
        "ranges",
        "set-ops",
        &[
            0, 0, 5, 0, 6, 0, 4, 2, 10, 20, 1, 12, 3, 15, 4, 2, 1, 40, 5, 0, 8, 2, 0, 2, 4, 6, 10,
            9, 0, 6, 30, 7, 9, 1, 3, 0, 255, 9, 0,
        ],
    );
    let mut v = vec![1];
    v.extend_from_slice(&4000u16.to_le_bytes());
    v.push(250); // 16 chunks
    v.extend_from_slice(&[0, 1, 0, 0, 2, 0]); // Accept have [0, 2)
    v.extend_from_slice(&[5, 0, 7, 0, 7, 1, 1, 1, 1, 1, 1, 1]); // link 0 up, 7 chunks out
    v.extend_from_slice(&[2, 0, 1, 2, 0, 16, 0]); // Ack [2, 16) on link 0
    v.extend_from_slice(&[3, 1, 0, 0, 16, 0]); // Checkpoint [0, 16)
    v.extend_from_slice(&[9, 10, 4, 0, 0, 11]); // hash, Complete, Verdict ok
    write(&dir, "ranges", "sender", &v);
    let mut v = vec![2];
    v.extend_from_slice(&1000u16.to_le_bytes());
    v.push(100); // 10 chunks
    v.extend_from_slice(&[1, 0, 0, 2, 0]); // durable [0, 2)
    v.extend_from_slice(&[0, 200, 0, 100, 0, 7, 1, 0]); // chunk 2, hashed, written
    v.extend_from_slice(&[3, 2, 1, 4, 2, 5, 0, 0, 6]);
    write(&dir, "ranges", "receiver", &v);

    // names: file names, a link and its target, the well-formed tree.
    for (i, n) in ["report.pdf", "ünï code.txt", ".hidden", "a b", "x"]
        .iter()
        .enumerate()
    {
        let mut v = vec![0];
        v.extend_from_slice(n.as_bytes());
        write(&dir, "names", &format!("name-{i}"), &v);
    }
    let mut v = vec![1];
    v.extend_from_slice(b"d/sub/l\xff../x/./y");
    write(&dir, "names", "link", &v);
    if let Some(Body::Offer(o)) = frames
        .iter()
        .find(|(n, _)| *n == "offer-tree")
        .map(|(_, f)| &f.body)
    {
        let entries: Vec<Entry> = o
            .entries
            .clone()
            .unwrap()
            .into_iter()
            .map(|mut e| {
                e.hash = None;
                e
            })
            .collect();
        let mut v = vec![2, 0];
        put_tree(&mut v, &entries);
        write(&dir, "names", "tree", &v);
    }
    println!("seed corpus written to {}", dir.display());
}
