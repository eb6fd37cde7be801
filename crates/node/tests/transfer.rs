//! Whole transfers between a real receiver and a real sender in one process,
//! over in-memory `mock:` links, loopback TCP and serial lines (an in-process
//! PTY cable, `gateway_serial::cable`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gateway_link::{FrameRx, FrameTx, Link, LinkError, Registry};
use gateway_node::send::{SendOptions, SendProgress, SendReport};
use gateway_node::serve::{ServeHandle, ServeOptions};
use gateway_node::{NodeConfig, NodeError, NodeState, wire};
use gateway_proto::{Body, Data, ErrorCode, Frame, Limits, Offer, Reload, Stream};
use gateway_serial::cable::{Cable, End};
use tokio::sync::watch;

fn write_file(path: &Path, size: usize, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

fn small_cfg() -> NodeConfig {
    let mut cfg = NodeConfig::default();
    cfg.engine.chunk_size_bytes = 64 << 10;
    cfg.engine.link_window_bytes = 512 << 10;
    cfg.engine.checkpoint_bytes = 1 << 20;
    cfg.engine.retry_interval = Duration::from_millis(100);
    cfg.pause_after = Duration::from_secs(3);
    cfg
}

/// Lab policy: any key may send (for hand-driven peers with fresh keys).
fn any_cfg() -> NodeConfig {
    NodeConfig {
        trust: gateway_secure::TrustPolicy::Any,
        ..small_cfg()
    }
}

struct Running {
    task: tokio::task::JoinHandle<Result<SendReport, NodeError>>,
    progress: watch::Receiver<SendProgress>,
    stop: watch::Sender<bool>,
}

impl Running {
    /// Waits until `pred` holds for the progress (or the send ends).
    async fn until(&mut self, pred: impl Fn(&SendProgress) -> bool) {
        while self.progress.changed().await.is_ok() {
            if pred(&self.progress.borrow()) {
                break;
            }
        }
    }
}

/// A TCP proxy in front of a receiver's `tcp:` listener. It forwards both
/// ways, counts what came from the sender (and with `record` keeps it), and
/// with `cut_after` dies for good once that many bytes came from the
/// sender: every connection is closed and nothing listens on its port any
/// more, so a link through it cannot come back.
struct Proxy {
    /// `tcp:127.0.0.1:PORT`, for the sender.
    selector: String,
    /// Bytes that came from the sender (ciphertext and framing).
    upstream: Arc<AtomicU64>,
    /// Connections accepted.
    accepted: Arc<AtomicU64>,
    /// The sender's bytes, with `record`.
    captured: Arc<std::sync::Mutex<Vec<u8>>>,
    /// True once it cut.
    cut: watch::Receiver<bool>,
}

impl Proxy {
    async fn start(target: &str, record: bool, cut_after: Option<u64>) -> Proxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let target = target.trim_start_matches("tcp:").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let selector = format!("tcp:{}", listener.local_addr().unwrap());
        let upstream = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let captured = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cut_tx, cut) = watch::channel(false);
        let cut_tx = Arc::new(cut_tx);
        let (up, acc, cap) = (upstream.clone(), accepted.clone(), captured.clone());
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            let mut dead = cut_tx.subscribe();
            loop {
                let (mut a, _) = tokio::select! {
                    _ = dead.wait_for(|c| *c) => break,
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(_) => break,
                    },
                };
                acc.fetch_add(1, Ordering::Relaxed);
                let (target, up, cap, cut_tx) =
                    (target.clone(), up.clone(), cap.clone(), cut_tx.clone());
                conns.spawn(async move {
                    let Ok(mut b) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut ar, mut aw) = a.split();
                    let (mut br, mut bw) = b.split();
                    let upward = async {
                        let mut buf = vec![0u8; 1 << 16];
                        loop {
                            let n = ar.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                let _ = bw.shutdown().await;
                                break;
                            }
                            let total = up.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                            if cut_after.is_some_and(|limit| total >= limit) {
                                // The accept loop closes everything now.
                                cut_tx.send_replace(true);
                                std::future::pending::<()>().await;
                            }
                            if record {
                                cap.lock().unwrap().extend_from_slice(&buf[..n]);
                            }
                            if bw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let downward = async {
                        let _ = tokio::io::copy(&mut br, &mut aw).await;
                    };
                    tokio::join!(upward, downward);
                });
            }
            // Not listening any more; every connection's sockets close.
            drop(listener);
            conns.shutdown().await;
        });
        Proxy {
            selector,
            upstream,
            accepted,
            captured,
            cut,
        }
    }
}

/// The result of a send task, or a panic if it takes longer than `limit`
/// (a hang, not slowness: limits are generous).
async fn within<T>(limit: Duration, task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(limit, task)
        .await
        .unwrap_or_else(|_| panic!("the send did not finish within {limit:?}"))
        .unwrap()
}

/// The progress of the link whose selector starts with `prefix`.
fn link_progress(p: &SendProgress, prefix: &str) -> gateway_node::send::LinkProgress {
    p.links
        .iter()
        .find(|l| l.selector.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} link in {:?}", p.links))
        .clone()
}

struct Pair {
    _root: tempfile::TempDir,
    reg: Arc<Registry>,
    inbox: PathBuf,
    outbox: PathBuf,
    recv_state: PathBuf,
    send_state: PathBuf,
}

impl Pair {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let p = root.path().to_path_buf();
        std::fs::create_dir_all(p.join("outbox")).unwrap();
        // The two nodes trust each other's keys, as after `gateway pair`.
        let r = NodeState::open(&p.join("recv-state")).unwrap();
        let s = NodeState::open(&p.join("send-state")).unwrap();
        for (me, other) in [(&r, &s), (&s, &r)] {
            let id = gateway_secure::NodeId::parse(&other.node_id).unwrap();
            gateway_node::trust::set_trust(me, &id, None, gateway_node::trust::PAIRED).unwrap();
        }
        Self {
            reg: Arc::new(gateway_node::registry::default_registry()),
            inbox: p.join("inbox"),
            outbox: p.join("outbox"),
            recv_state: p.join("recv-state"),
            send_state: p.join("send-state"),
            _root: root,
        }
    }

    async fn serve(&self, listen: &[&str]) -> ServeHandle {
        self.serve_with(listen, small_cfg()).await
    }

    async fn serve_with(&self, listen: &[&str], cfg: NodeConfig) -> ServeHandle {
        gateway_node::serve::start(
            NodeState::open(&self.recv_state).unwrap(),
            cfg,
            self.reg.clone(),
            ServeOptions {
                dir: self.inbox.clone(),
                listen: listen.iter().map(|s| s.to_string()).collect(),
                advertise: false,
            },
        )
        .await
        .unwrap()
    }

    /// Starts a send in the background; returns its task, its progress and its stop switch.
    fn spawn_send(&self, path: &Path, to: &str) -> Running {
        self.spawn_send_with(path, &[to.to_string()], small_cfg())
    }

    /// [`Pair::spawn_send`] over several links, with `cfg`.
    fn spawn_send_with(&self, path: &Path, to: &[String], cfg: NodeConfig) -> Running {
        let (ptx, progress) = watch::channel(SendProgress::default());
        let (stop, stop_rx) = watch::channel(false);
        let st = NodeState::open(&self.send_state).unwrap();
        let reg = self.reg.clone();
        let opts = SendOptions::new(path.to_path_buf(), to.to_vec());
        let task = tokio::spawn(async move {
            gateway_node::send::send(st, cfg, reg, opts, ptx, stop_rx).await
        });
        Running {
            task,
            progress,
            stop,
        }
    }

    async fn send(&self, path: &Path, to: &[String]) -> Result<SendReport, NodeError> {
        let (ptx, _prx) = watch::channel(SendProgress::default());
        let (_stop_tx, stop_rx) = watch::channel(false);
        gateway_node::send::send(
            NodeState::open(&self.send_state).unwrap(),
            small_cfg(),
            self.reg.clone(),
            SendOptions::new(path.to_path_buf(), to.to_vec()),
            ptx,
            stop_rx,
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_crosses_two_links_at_once_and_both_carry_data() {
    let pair = Pair::new();
    let server = pair.serve(&["mock:two-a", "mock:two-b"]).await;
    let src = pair.outbox.join("f.bin");
    let data = write_file(&src, 6 << 20, 1);
    let report = pair
        .send(
            &src,
            &["mock:two-a?rate=20MB".into(), "mock:two-b?rate=20MB".into()],
        )
        .await
        .unwrap();
    assert_eq!(report.verdict, "ok");
    assert_eq!(std::fs::read(pair.inbox.join("f.bin")).unwrap(), data);
    for l in &report.links {
        assert!(
            l.bytes > 0,
            "link {} carried nothing: {report:?}",
            l.selector
        );
    }
    assert_eq!(report.bytes_resumed, 0);
    assert_eq!(report.hash, hex::encode(blake3::hash(&data).as_bytes()));
    // COMPLETE deleted the records on both sides.
    let s = NodeState::open(&pair.send_state).unwrap();
    assert!(s.store().list_transfers().unwrap().is_empty());
    let r = NodeState::open(&pair.recv_state).unwrap();
    assert!(r.store().list_transfers().unwrap().is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_crosses_loopback_tcp() {
    let pair = Pair::new();
    let server = pair.serve(&["tcp:127.0.0.1:0", "tcp:127.0.0.1:0"]).await;
    let src = pair.outbox.join("tcp.bin");
    let data = write_file(&src, 3 << 20, 2);
    let report = pair
        .send(&src, &server.local_selectors.clone())
        .await
        .unwrap();
    assert_eq!(std::fs::read(pair.inbox.join("tcp.bin")).unwrap(), data);
    assert_eq!(report.links.len(), 2);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_arrives_empty() {
    let pair = Pair::new();
    let server = pair.serve(&["mock:empty"]).await;
    let src = pair.outbox.join("empty");
    std::fs::write(&src, b"").unwrap();
    pair.send(&src, &["mock:empty".into()]).await.unwrap();
    assert_eq!(std::fs::read(pair.inbox.join("empty")).unwrap(), b"");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_already_taken_lands_beside_it_renamed() {
    let pair = Pair::new();
    let server = pair.serve(&["mock:clash"]).await;
    std::fs::create_dir_all(&pair.inbox).unwrap();
    std::fs::write(pair.inbox.join("a.txt"), b"old").unwrap();
    let src = pair.outbox.join("a.txt");
    std::fs::write(&src, b"new").unwrap();
    pair.send(&src, &["mock:clash".into()]).await.unwrap();
    assert_eq!(std::fs::read(pair.inbox.join("a.txt")).unwrap(), b"old");
    assert_eq!(std::fs::read(pair.inbox.join("a (1).txt")).unwrap(), b"new");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_link_costs_only_its_share() {
    let pair = Pair::new();
    let server = pair.serve(&["mock:die-a", "mock:die-b"]).await;
    let src = pair.outbox.join("d.bin");
    let data = write_file(&src, 8 << 20, 3);
    let report = pair
        .send(
            &src,
            &[
                "mock:die-a?rate=20MB".into(),
                "mock:die-b?rate=20MB&die_after=1MB".into(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(pair.inbox.join("d.bin")).unwrap(), data);
    // The second link died after ~1 MB; it may come back via retries
    // (die_after applies per connection), but the file is exact either way.
    assert!(report.links[0].bytes > 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_stop_then_rerun_resumes_on_a_restarted_receiver() {
    let pair = Pair::new();
    let src = pair.outbox.join("r.bin");
    let data = write_file(&src, 8 << 20, 4);
    let server = pair.serve(&["mock:resume"]).await;
    // First run: USER_STOP once ~2 MiB are durable at the receiver.
    let mut run = pair.spawn_send(&src, "mock:resume?rate=10MB");
    run.until(|p| p.durable >= 2 << 20).await;
    run.stop.send(true).unwrap();
    let first = run.task.await.unwrap();
    assert!(matches!(first, Err(NodeError::Stopped)), "{first:?}");
    // USER_STOP left a saved frame and the record.
    let s = NodeState::open(&pair.send_state).unwrap();
    assert_eq!(s.store().list_transfers().unwrap().len(), 1);
    server.shutdown().await.unwrap();

    // A new receiver on the same state and dir; the same send again.
    let server = pair.serve(&["mock:resume"]).await;
    let report = pair.send(&src, &["mock:resume".into()]).await.unwrap();
    assert!(
        report.bytes_resumed >= 2 << 20,
        "resumed too little: {report:?}"
    );
    assert!(
        report.bytes_sent + report.bytes_resumed <= report.bytes_total + (1 << 20),
        "re-sent more than one checkpoint: {report:?}"
    );
    assert_eq!(std::fs::read(pair.inbox.join("r.bin")).unwrap(), data);
    server.shutdown().await.unwrap();
}

/// A hand-driven peer: Hello done, then raw frames.
async fn raw_peer(reg: &Registry, sel: &str) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
    raw_peer_claiming(reg, sel, None).await
}

/// A peer with its own fresh key; its Hello claims `claim` as node id if given.
async fn raw_peer_claiming(
    reg: &Registry,
    sel: &str,
    claim: Option<&str>,
) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
    let state_dir = tempfile::tempdir().unwrap();
    let st = NodeState::open(state_dir.path()).unwrap();
    peer_as(reg, sel, &st, claim).await.unwrap()
}

/// A peer with `st`'s key on a new link: handshake and Hello done (the Hello
/// claims `claim` as node id if given).
async fn peer_as(
    reg: &Registry,
    sel: &str,
    st: &NodeState,
    claim: Option<&str>,
) -> Result<(Box<dyn FrameTx>, Box<dyn FrameRx>), String> {
    let link = reg.open(sel).await.map_err(|e| e.to_string())?;
    let secure = gateway_secure::connect(link, &st.key, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    let (mut tx, mut rx) = Box::new(secure).split();
    let mut hello = wire::hello(st, &[]);
    if let Some(c) = claim {
        hello.node_id = c.to_string();
    }
    wire::exchange_hello(
        &mut *tx,
        &mut *rx,
        hello,
        &Limits::default(),
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok((tx, rx))
}

/// Expects a Reject as the next frame.
async fn expect_reject(rx: &mut dyn FrameRx) -> gateway_proto::Reject {
    let f = wire::recv_within(rx, &Limits::default(), Duration::from_secs(5))
        .await
        .expect("a Reject frame");
    match f.body {
        Body::Reject(r) => r,
        other => panic!(
            "expected Reject, got {}",
            gateway_node::serve::body_name(&other)
        ),
    }
}

/// Expects an Error frame with `code`, then the link closing.
async fn expect_error_and_drop(rx: &mut dyn FrameRx, code: ErrorCode) -> String {
    let f = wire::recv_within(rx, &Limits::default(), Duration::from_secs(5))
        .await
        .expect("an Error frame");
    let Body::Error(e) = f.body else {
        panic!(
            "expected Error {code:?}, got {:?}",
            gateway_node::serve::body_name(&f.body)
        );
    };
    assert_eq!(e.code, code, "message: {}", e.message);
    let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(
        matches!(end, Ok(Err(_))),
        "expected the link to be dropped after the Error frame"
    );
    e.message
}

fn offer(name: &str, size: u64) -> Offer {
    Offer {
        transfer_id: [9; 16],
        name: name.into(),
        size,
        mtime_ns: 0,
        mode: 0o644,
        chunk_size: 64 << 10,
        file_hash: None,
        entries: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_an_error_and_the_link_is_dropped() {
    let pair = Pair::new();
    let server = pair.serve(&["mock:bad"]).await;
    for junk in [&b""[..], b"\x00\x01\x02", &[0xffu8; 64][..]] {
        let (mut tx, mut rx) = raw_peer(&pair.reg, "mock:bad").await;
        tx.send(junk).await.unwrap();
        expect_error_and_drop(&mut *rx, ErrorCode::Malformed).await;
    }
    // A real frame cut short.
    let (mut tx, mut rx) = raw_peer(&pair.reg, "mock:bad").await;
    let full = wire::encode(Body::Offer(offer("x", 10)));
    tx.send(&full[..full.len() / 2]).await.unwrap();
    expect_error_and_drop(&mut *rx, ErrorCode::Malformed).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_with_unsafe_names_are_refused_and_nothing_is_written() {
    let pair = Pair::new();
    let server = pair.serve(&["mock:names"]).await;
    for name in ["a/b", "..", "/etc/passwd", "a\0b", "../../escape", "."] {
        let (mut tx, mut rx) = raw_peer(&pair.reg, "mock:names").await;
        let frame = gateway_proto::encode(&Frame {
            stream: Stream::File,
            body: Body::Offer(offer(name, 10)),
        });
        tx.send(&frame).await.unwrap();
        let msg = expect_error_and_drop(&mut *rx, ErrorCode::BadName).await;
        assert!(!msg.is_empty());
    }
    let entries: Vec<_> = std::fs::read_dir(&pair.inbox).unwrap().collect();
    assert!(entries.is_empty(), "something was written: {entries:?}");
    assert!(!pair.inbox.parent().unwrap().join("escape").exists());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_past_the_end_and_unknown_reloads_are_refused() {
    let pair = Pair::new();
    let server = pair.serve_with(&["mock:bounds"], any_cfg()).await;
    let (mut tx, mut rx) = raw_peer(&pair.reg, "mock:bounds").await;
    wire::send(&mut *tx, Body::Offer(offer("small.bin", 100)))
        .await
        .unwrap();
    let f = wire::recv_within(&mut *rx, &Limits::default(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(f.body, Body::Accept(_)));
    let payload = vec![7u8; 64];
    let data = Data {
        transfer_id: [9; 16],
        offset: 64 << 10,
        data: payload.clone().into(),
        chunk_hash: Some(*blake3::hash(&payload).as_bytes()),
    };
    wire::send(&mut *tx, Body::Data(data)).await.unwrap();
    expect_error_and_drop(&mut *rx, ErrorCode::OutOfBounds).await;

    let (mut tx, mut rx) = raw_peer(&pair.reg, "mock:bounds").await;
    let reload = Reload {
        transfer_id: [1; 16],
        name: "ghost".into(),
        size: 10,
        chunk_size: 64 << 10,
        durable: vec![],
    };
    wire::send(&mut *tx, Body::Reload(reload)).await.unwrap();
    expect_error_and_drop(&mut *rx, ErrorCode::UnknownTransfer).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_peer_does_not_disturb_another_transfer() {
    let pair = Pair::new();
    let server = pair.serve(&["mock:iso"]).await;
    let src = pair.outbox.join("good.bin");
    let data = write_file(&src, 4 << 20, 5);
    let reg = pair.reg.clone();
    let attacker = tokio::spawn(async move {
        for _ in 0..20 {
            let (mut tx, mut rx) = raw_peer(&reg, "mock:iso").await;
            tx.send(b"garbage").await.unwrap();
            let _ = rx.recv().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    pair.send(&src, &["mock:iso?rate=20MB".into()])
        .await
        .unwrap();
    attacker.await.unwrap();
    assert_eq!(std::fs::read(pair.inbox.join("good.bin")).unwrap(), data);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_larger_than_the_free_space_is_rejected_with_numbers() {
    let pair = Pair::new();
    let server = pair.serve_with(&["mock:space"], any_cfg()).await;
    let (mut tx, mut rx) = raw_peer(&pair.reg, "mock:space").await;
    wire::send(&mut *tx, Body::Offer(offer("huge.bin", 1 << 49)))
        .await
        .unwrap();
    let r = expect_reject(&mut *rx).await;
    assert_eq!(r.code, gateway_proto::RejectCode::NoSpace);
    assert!(r.message.contains("available"), "{}", r.message);
    assert!(!pair.inbox.join("huge.bin").exists());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_says_what_to_do() {
    let pair = Pair::new();
    let src = pair.outbox.join("x");
    std::fs::write(&src, b"x").unwrap();
    let err = pair
        .send(&src, &["tcp:127.0.0.1:1".into()])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("tcp:127.0.0.1:1"), "{text}");
    let _ = LinkError::Closed;
}

/// Unmounts a tmpfs when the test ends, however it ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_mid_transfer_pauses_and_resumes_without_corruption() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs as the full disk needs root (CI runs as root)");
        return;
    }
    let pair = Pair::new();
    std::fs::create_dir_all(&pair.inbox).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12m", "tmpfs"])
        .arg(&pair.inbox)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let _mount = Mount(pair.inbox.clone());
    let mut cfg = small_cfg();
    cfg.reserve_free_bytes = 0;
    let server = pair.serve_with(&["mock:full"], cfg).await;
    let src = pair.outbox.join("big.bin");
    let data = write_file(&src, 10 << 20, 6);

    // Fill the disk once the transfer is under way.
    let mut run = pair.spawn_send(&src, "mock:full?rate=10MB");
    run.until(|p| p.acked >= 2 << 20).await;
    let filler = pair.inbox.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![1u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
    }
    let first = run.task.await.unwrap();
    match &first {
        Err(NodeError::Paused(why)) => assert!(why.contains("disk is full"), "{why}"),
        other => panic!("expected a pause for a full disk, got {other:?}"),
    }
    // Space comes back; the same send resumes and the file is exact.
    std::fs::remove_file(&filler).unwrap();
    let report = pair.send(&src, &["mock:full".into()]).await.unwrap();
    assert!(report.bytes_resumed > 0, "{report:?}");
    assert_eq!(std::fs::read(pair.inbox.join("big.bin")).unwrap(), data);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_sender_is_refused_with_a_pairing_hint_and_nothing_is_written() {
    let pair = Pair::new();
    let server = pair.serve(&["mock:untrusted"]).await;
    let (mut tx, mut rx) = raw_peer(&pair.reg, "mock:untrusted").await;
    wire::send(&mut *tx, Body::Offer(offer("x.bin", 10)))
        .await
        .unwrap();
    let r = expect_reject(&mut *rx).await;
    assert_eq!(r.code, gateway_proto::RejectCode::NotTrusted);
    assert!(
        r.message.contains("gateway pair"),
        "no pairing hint: {}",
        r.message
    );
    // It still shows up among the peers, as untrusted.
    let st = NodeState::open(&pair.recv_state).unwrap();
    let peers = st.store().peers().unwrap();
    assert!(
        peers
            .iter()
            .any(|p| p.trust == gateway_node::trust::UNTRUSTED)
    );
    assert!(!pair.inbox.exists() || std::fs::read_dir(&pair.inbox).unwrap().count() == 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusting_the_sender_refuses_its_next_send() {
    let pair = Pair::new();
    let server = pair.serve(&["mock:untrust"]).await;
    let src = pair.outbox.join("u.bin");
    write_file(&src, 100_000, 7);
    pair.send(&src, &["mock:untrust".into()]).await.unwrap();
    let r = NodeState::open(&pair.recv_state).unwrap();
    let s = NodeState::open(&pair.send_state).unwrap();
    let sid = gateway_secure::NodeId::parse(&s.node_id).unwrap();
    gateway_node::trust::set_trust(&r, &sid, None, gateway_node::trust::UNTRUSTED).unwrap();
    std::fs::write(&src, b"changed").unwrap();
    let err = pair.send(&src, &["mock:untrust".into()]).await.unwrap_err();
    assert!(matches!(err, NodeError::Rejected(_)), "{err:?}");
    assert!(err.to_string().contains("gateway pair"), "{err}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_that_lies_about_the_node_id_drops_the_link() {
    let pair = Pair::new();
    let server = pair.serve_with(&["mock:liar"], any_cfg()).await;
    let s = NodeState::open(&pair.send_state).unwrap();
    // Claims to be the (trusted) sender, but holds another key.
    let link = pair.reg.open("mock:liar").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let st = NodeState::open(dir.path()).unwrap();
    let secure = gateway_secure::connect(link, &st.key, Duration::from_secs(5))
        .await
        .unwrap();
    let (mut tx, mut rx) = Box::new(secure).split();
    let mut hello = wire::hello(&st, &[]);
    hello.node_id = s.node_id.clone();
    wire::send(&mut *tx, Body::Hello(hello)).await.unwrap();
    // Their Hello, then our Error and the drop.
    let f = wire::recv_within(&mut *rx, &Limits::default(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(f.body, Body::Hello(_)));
    let msg = expect_error_and_drop(&mut *rx, ErrorCode::NotTrusted).await;
    assert!(msg.contains("lies"), "{msg}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_on_a_tcp_link_is_ciphertext() {
    let pair = Pair::new();
    let server = pair.serve(&["tcp:127.0.0.1:0"]).await;
    let proxy = Proxy::start(&server.local_selectors[0], true, None).await;
    let src = pair.outbox.join("secret.txt");
    let marker = b"THE-PLAINTEXT-MARKER-THAT-MUST-NEVER-BE-SEEN-ON-THE-WIRE ";
    std::fs::write(&src, marker.repeat(4000)).unwrap();
    pair.send(&src, std::slice::from_ref(&proxy.selector))
        .await
        .unwrap();
    let wire_bytes = proxy.captured.lock().unwrap().clone();
    assert!(
        wire_bytes.len() > 200_000,
        "captured only {} bytes",
        wire_bytes.len()
    );
    let found = wire_bytes.windows(16).any(|w| w == &marker[..16]);
    assert!(!found, "plaintext of the file seen on the wire");
    assert!(
        !wire_bytes.windows(8).any(|w| w == b"secret.t"),
        "the file name travelled in clear"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_tofu_a_known_name_with_a_new_key_is_refused_loudly() {
    let pair = Pair::new();
    let cfg = NodeConfig {
        trust: gateway_secure::TrustPolicy::Tofu,
        ..small_cfg()
    };
    let server = pair.serve_with(&["mock:tofu"], cfg).await;
    // Forget the pairing: the sender is pinned by first use under its host name.
    let r = NodeState::open(&pair.recv_state).unwrap();
    let known = r.store().peers().unwrap();
    for p in known {
        let id = gateway_secure::NodeId::parse(&p.node_id).unwrap();
        gateway_node::trust::set_trust(&r, &id, None, gateway_node::trust::UNTRUSTED).unwrap();
    }
    // An unknown sender under a fresh name is pinned and may send...
    let (mut tx, mut rx) = raw_peer(&pair.reg, "mock:tofu").await;
    wire::send(&mut *tx, Body::Offer(offer("first.bin", 10)))
        .await
        .unwrap();
    let f = wire::recv_within(&mut *rx, &Limits::default(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        matches!(f.body, Body::Accept(_)),
        "the first key for a name is pinned"
    );
    // ...and another key under the same (host) name is refused, naming both keys.
    let (mut tx2, mut rx2) = raw_peer(&pair.reg, "mock:tofu").await;
    let mut o = offer("second.bin", 10);
    o.transfer_id = [4; 16];
    wire::send(&mut *tx2, Body::Offer(o)).await.unwrap();
    let rej = expect_reject(&mut *rx2).await;
    assert_eq!(rej.code, gateway_proto::RejectCode::NotTrusted);
    assert!(rej.message.contains("pinned"), "{}", rej.message);
    server.shutdown().await.unwrap();
}

/// A transfer begun on TCP continues over a serial line alone when TCP dies
/// mid-transfer and stays dead: the receiver listens on TCP and on one end
/// of a PTY cable, the sender is given both (TCP first, so the Offer goes
/// over TCP), and a proxy on the TCP path cuts every connection and stops
/// listening once 1 MiB came through it. What TCP did not deliver, serial
/// does, and the file arrives with the right BLAKE3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_begun_on_tcp_finishes_over_serial_alone_when_tcp_dies() {
    const CUT: u64 = 1 << 20;
    let pair = Pair::new();
    let cable = Cable::new().unwrap();
    let server = pair
        .serve(&["tcp:127.0.0.1:0", &format!("serial:{}", cable.b)])
        .await;
    let proxy = Proxy::start(&server.local_selectors[0], false, Some(CUT)).await;
    let src = pair.outbox.join("tcp-then-serial.bin");
    let data = write_file(&src, 8 << 20, 8);
    let total = data.len() as u64;
    let started = Instant::now();
    // Serial capped so that TCP, uncapped, carries most at first.
    let run = pair.spawn_send_with(
        &src,
        &[
            proxy.selector.clone(),
            format!("serial:{}?rate=20MB", cable.a),
        ],
        small_cfg(),
    );
    let mut cut = proxy.cut.clone();
    tokio::time::timeout(Duration::from_secs(30), cut.wait_for(|c| *c))
        .await
        .expect("1 MiB should cross the TCP proxy within 30 s")
        .unwrap();
    let serial_at_cut = cable.carried(End::B);
    let report = within(Duration::from_secs(60), run.task).await.unwrap();
    let took = started.elapsed();
    let last = run.progress.borrow().clone();
    let (tcp, serial) = (
        link_progress(&last, "tcp:"),
        link_progress(&last, "serial:"),
    );
    let through_proxy = proxy.upstream.load(Ordering::Relaxed);
    println!(
        "{total} bytes in {took:.2?}: tcp carried {} acked first ({} sent) before it died after {through_proxy} bytes through the proxy, when {serial_at_cut} bytes had gone down the cable; serial {} acked first ({} sent)",
        tcp.acked, tcp.sent, serial.acked, serial.sent
    );
    // Mid-transfer: when TCP died, neither link could have delivered the rest.
    assert!(
        serial_at_cut < total - through_proxy,
        "serial had carried {serial_at_cut} bytes before TCP died: not mid-transfer"
    );
    assert_eq!(
        proxy.accepted.load(Ordering::Relaxed),
        1,
        "TCP came back after it died"
    );
    assert_eq!(report.verdict, "ok");
    assert_eq!(report.hash, hex::encode(blake3::hash(&data).as_bytes()));
    assert_eq!(
        std::fs::read(pair.inbox.join("tcp-then-serial.bin")).unwrap(),
        data
    );
    assert_eq!(report.bytes_resumed, 0);
    // TCP delivered at most what crossed the proxy; serial carried the rest.
    // (Per-link acks do not add up to the file: a chunk whose ack died with
    // TCP is acked by the next checkpoint, which credits no link.)
    assert!(tcp.acked <= through_proxy, "{last:?}");
    let serial_report = report
        .links
        .iter()
        .find(|l| l.selector.starts_with("serial:"))
        .unwrap();
    assert!(
        serial_report.bytes >= total - through_proxy,
        "the report does not show serial carrying the rest: {report:?}"
    );
    server.shutdown().await.unwrap();
}

/// A transfer saved on one link kind resumes on another: sent over TCP
/// only and stopped by the user once 2 MiB are durable, the same send run
/// again with only a serial line resumes (only the rest travels) and the
/// file arrives with the right BLAKE3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_stopped_on_tcp_resumes_over_serial() {
    let pair = Pair::new();
    let cable = Cable::new().unwrap();
    let server = pair
        .serve(&["tcp:127.0.0.1:0", &format!("serial:{}", cable.b)])
        .await;
    let src = pair.outbox.join("tcp-resumed-on-serial.bin");
    let data = write_file(&src, 8 << 20, 9);
    let total = data.len() as u64;
    let tcp = format!("{}?rate=10MB", server.local_selectors[0]);
    let mut run = pair.spawn_send(&src, &tcp);
    run.until(|p| p.durable >= 2 << 20).await;
    run.stop.send(true).unwrap();
    let first = within(Duration::from_secs(30), run.task).await;
    assert!(matches!(first, Err(NodeError::Stopped)), "{first:?}");

    let started = Instant::now();
    let run = pair.spawn_send_with(&src, &[format!("serial:{}", cable.a)], small_cfg());
    let report = within(Duration::from_secs(60), run.task).await.unwrap();
    println!(
        "resumed over serial in {:.2?}: {} bytes resumed, {} sent, of {total}",
        started.elapsed(),
        report.bytes_resumed,
        report.bytes_sent
    );
    assert!(
        report.bytes_resumed >= 2 << 20,
        "resumed too little: {report:?}"
    );
    assert!(
        report.bytes_sent + report.bytes_resumed >= total
            && report.bytes_sent + report.bytes_resumed <= total + (1 << 20),
        "sent more than one checkpoint again, or not enough: {report:?}"
    );
    assert_eq!(report.links.len(), 1);
    assert!(
        report.links[0].selector.starts_with("serial:"),
        "{report:?}"
    );
    assert_eq!(report.links[0].bytes, report.bytes_sent);
    assert_eq!(report.hash, hex::encode(blake3::hash(&data).as_bytes()));
    assert_eq!(
        std::fs::read(pair.inbox.join("tcp-resumed-on-serial.bin")).unwrap(),
        data
    );
    server.shutdown().await.unwrap();
}

/// A serial line that flips about one byte per MiB towards the receiver and
/// one per 16 KiB towards the sender (where acks, checkpoints and the
/// verdict travel) still delivers the file with the right BLAKE3. The driver
/// drops each damaged segment and sends it again, so the encrypted link
/// above never sees a hole and is never reopened (the engine re-sends no
/// chunk). Prints the time taken and the damage counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_line_that_garbles_bytes_still_delivers_the_right_hash() {
    const EVERY: u64 = 1 << 20;
    let pair = Pair::new();
    let cable = Cable::new().unwrap();
    let server = pair.serve(&[&format!("serial:{}", cable.b)]).await;
    let src = pair.outbox.join("garbled.bin");
    let data = write_file(&src, 6 << 20, 10);
    // Reopening the line after each damaged frame leaves moments with no
    // link up; they must not add up to a pause.
    let cfg = NodeConfig {
        pause_after: Duration::from_secs(30),
        ..small_cfg()
    };
    let before = gateway_serial::counters();
    cable.garble(End::B, EVERY);
    cable.garble(End::A, 16 << 10);
    let started = Instant::now();
    let run = pair.spawn_send_with(&src, &[format!("serial:{}", cable.a)], cfg);
    let report = within(Duration::from_secs(90), run.task).await.unwrap();
    let took = started.elapsed();
    cable.garble(End::B, 0);
    cable.garble(End::A, 0);
    let after = gateway_serial::counters();
    let l = &report.links[0];
    println!(
        "{} bytes over a line flipping 1 byte in ~{EVERY}: {took:.2?}; {} bytes flipped of {} carried towards the receiver, {} towards the sender; driver counted {} corrupt packets, {} discarded bytes, {} segments resent (process-wide); {} bytes sent, {} resent",
        data.len(),
        cable.garbled(End::B),
        cable.carried(End::B),
        cable.garbled(End::A),
        after.dropped_corrupt - before.dropped_corrupt,
        after.discarded_bytes - before.discarded_bytes,
        after.resent_segments - before.resent_segments,
        l.bytes,
        l.resent,
    );
    assert!(cable.garbled(End::B) > 0, "nothing was garbled");
    assert_eq!(
        l.resent, 0,
        "the link was reopened: the driver let a hole through"
    );
    assert!(
        after.dropped_corrupt > before.dropped_corrupt,
        "bytes were flipped but the driver counted no damaged packet"
    );
    assert_eq!(report.verdict, "ok");
    assert_eq!(report.hash, hex::encode(blake3::hash(&data).as_bytes()));
    assert_eq!(std::fs::read(pair.inbox.join("garbled.bin")).unwrap(), data);
    server.shutdown().await.unwrap();
}

/// A tree with everything a tree may hold: nested directories, an empty
/// file, an empty directory, a symlink, names with spaces and non-ASCII,
/// modes other than the default, and a file spanning many chunks.
fn make_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join("empty dir")).unwrap();
    std::fs::create_dir_all(root.join("ünïcode dir")).unwrap();
    write_file(&root.join("sub/big.bin"), 700_000, 7);
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("ünïcode dir/a b ✓.txt"), "名前").unwrap();
    for i in 0..50 {
        std::fs::write(root.join(format!("sub/deeper/f{i}")), format!("small {i}")).unwrap();
    }
    std::os::unix::fs::symlink("sub/big.bin", root.join("link to big")).unwrap();
    std::os::unix::fs::symlink("../empty", root.join("sub/up")).unwrap();
    std::fs::set_permissions(root.join("sub"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::fs::set_permissions(root.join("empty"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(
        root.join("sub/deeper/f3"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

/// Every entry under `root`: (relative path, kind, mode, content or link
/// target, mtime for files).
fn listing(root: &Path) -> Vec<(String, char, u32, Vec<u8>, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let (kind, body, mtime) = if md.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                ('l', t.to_string_lossy().as_bytes().to_vec(), 0)
            } else if md.is_dir() {
                stack.push(p.clone());
                ('d', vec![], 0)
            } else {
                ('f', std::fs::read(&p).unwrap(), md.mtime())
            };
            let mode = if kind == 'l' { 0 } else { md.mode() & 0o7777 };
            out.push((rel, kind, mode, body, mtime));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_arrives_whole_with_links_modes_times_and_odd_names() {
    let pair = Pair::new();
    let server = pair.serve(&["mock:tree-a", "mock:tree-b"]).await;
    let src = pair.outbox.join("my tree");
    make_tree(&src);
    let report = pair
        .send(
            &src,
            &[
                "mock:tree-a?rate=20MB".into(),
                "mock:tree-b?rate=20MB".into(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(report.verdict, "ok");
    assert_eq!(report.files, Some(53));
    assert_eq!(listing(&pair.inbox.join("my tree")), listing(&src));
    // Nothing staged is left behind, and no records.
    let names: Vec<_> = std::fs::read_dir(&pair.inbox)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("my tree")]);
    let r = NodeState::open(&pair.recv_state).unwrap();
    assert!(r.store().list_transfers().unwrap().is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_whose_symlink_points_outside_is_refused_before_anything_moves() {
    let pair = Pair::new();
    let server = pair.serve(&["mock:escape"]).await;
    let src = pair.outbox.join("t");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/ok"), b"fine").unwrap();
    std::os::unix::fs::symlink("../../../etc/passwd", src.join("d/bad")).unwrap();
    let err = pair.send(&src, &["mock:escape".into()]).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("outside the tree"), "{msg}");
    assert!(msg.contains("d/bad"), "the message names the link: {msg}");
    assert!(!pair.inbox.exists() || std::fs::read_dir(&pair.inbox).unwrap().next().is_none());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tree_offers_are_refused_and_nothing_is_written() {
    use gateway_proto::{Entry, EntryKind};
    let pair = Pair::new();
    let server = pair.serve(&["mock:hostile"]).await;
    let e = |path: &str, kind: EntryKind, size: u64, target: &str| Entry {
        path: path.into(),
        kind,
        size,
        mode: 0o644,
        mtime_ns: 0,
        target: target.into(),
        hash: None,
    };
    let trees = vec![
        vec![e("..", EntryKind::File, 10, "")],
        vec![e("a/../../x", EntryKind::File, 10, "")],
        vec![
            e("d", EntryKind::Dir, 0, ""),
            e("d/l", EntryKind::Symlink, 0, "../../x"),
        ],
        vec![e("l", EntryKind::Symlink, 0, "/etc")],
    ];
    for entries in trees {
        let (mut tx, mut rx) = raw_peer(&pair.reg, "mock:hostile").await;
        let mut o = offer("t", 10);
        o.size = entries.iter().map(|e| e.size).sum();
        o.entries = Some(entries);
        let frame = gateway_proto::encode(&Frame {
            stream: Stream::File,
            body: Body::Offer(o),
        });
        tx.send(&frame).await.unwrap();
        let msg = expect_error_and_drop(&mut *rx, ErrorCode::BadName).await;
        assert!(!msg.is_empty());
    }
    let entries: Vec<_> = std::fs::read_dir(&pair.inbox).unwrap().collect();
    assert!(entries.is_empty(), "something was written: {entries:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_stopped_midway_resumes_without_resending_what_arrived() {
    let pair = Pair::new();
    let src = pair.outbox.join("many");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..120 {
        write_file(&src.join(format!("f{i:03}")), 50_000 + i * 10, i as u8);
    }
    let server = pair.serve(&["mock:tree-resume"]).await;
    let mut run = pair.spawn_send(&src, "mock:tree-resume?rate=5MB");
    run.until(|p| p.durable >= 2 << 20).await;
    run.stop.send(true).unwrap();
    let first = run.task.await.unwrap();
    assert!(matches!(first, Err(NodeError::Stopped)), "{first:?}");
    server.shutdown().await.unwrap();

    let server = pair.serve(&["mock:tree-resume"]).await;
    let report = pair.send(&src, &["mock:tree-resume".into()]).await.unwrap();
    assert!(
        report.bytes_resumed >= 2 << 20,
        "resumed too little: {report:?}"
    );
    assert!(
        report.bytes_sent + report.bytes_resumed <= report.bytes_total + (1 << 20),
        "re-sent more than one checkpoint: {report:?}"
    );
    assert_eq!(listing(&pair.inbox.join("many")), listing(&src));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_sent_again_sends_only_what_changed_and_lands_changed_files_beside() {
    let pair = Pair::new();
    let server = pair.serve(&["mock:again"]).await;
    let src = pair.outbox.join("docs");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("same.txt"), b"unchanged").unwrap();
    std::fs::write(src.join("d/edit.txt"), b"first").unwrap();
    write_file(&src.join("big.bin"), 600_000, 9);
    let first = pair.send(&src, &["mock:again".into()]).await.unwrap();
    assert_eq!(first.bytes_sent, first.bytes_total);
    std::fs::write(src.join("d/edit.txt"), b"second").unwrap();
    let again = pair.send(&src, &["mock:again".into()]).await.unwrap();
    assert!(
        again.bytes_resumed >= 8 * (64 << 10) && again.bytes_sent < 200_000,
        "the unchanged 600 kB file was sent again: {again:?}"
    );
    let dest = pair.inbox.join("docs");
    assert_eq!(std::fs::read(dest.join("same.txt")).unwrap(), b"unchanged");
    assert_eq!(std::fs::read(dest.join("d/edit.txt")).unwrap(), b"first");
    assert_eq!(
        std::fs::read(dest.join("d/edit (1).txt")).unwrap(),
        b"second"
    );
    assert!(
        !dest.join("same (1).txt").exists(),
        "an identical file was kept, not duplicated"
    );
    server.shutdown().await.unwrap();

    // The same with --on-conflict overwrite.
    let mut cfg = small_cfg();
    cfg.on_conflict = gateway_node::dirtree::Conflict::Overwrite;
    let server = pair.serve_with(&["mock:again"], cfg).await;
    std::fs::write(src.join("d/edit.txt"), b"third").unwrap();
    pair.send(&src, &["mock:again".into()]).await.unwrap();
    assert_eq!(std::fs::read(dest.join("d/edit.txt")).unwrap(), b"third");
    server.shutdown().await.unwrap();
}

// ---- the receiver's caps (NodeConfig::caps)

/// The next Refused event's reason, within 5 s.
async fn next_refusal(server: &mut ServeHandle) -> String {
    let limit = Instant::now() + Duration::from_secs(5);
    loop {
        let left = limit.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, server.events.recv()).await {
            Ok(Some(gateway_node::serve::ServeEvent::Refused { why, .. })) => return why,
            Ok(Some(_)) => {}
            _ => panic!("no Refused event within 5 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_at_its_open_transfer_cap_says_busy_and_the_next_sender_waits_its_turn() {
    let pair = Pair::new();
    let mut cfg = any_cfg();
    cfg.caps.max_open_transfers = 1;
    let server = pair.serve_with(&["mock:cap"], cfg).await;
    // One peer holds the only slot: its Offer is accepted, its link feeds it.
    let (mut tx1, mut rx1) = raw_peer(&pair.reg, "mock:cap").await;
    wire::send(&mut *tx1, Body::Offer(offer("held.bin", 1 << 20)))
        .await
        .unwrap();
    let f = wire::recv_within(&mut *rx1, &Limits::default(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(f.body, Body::Accept(_)), "first Offer accepted");
    // A second peer is told Busy, with the cap's name, and keeps its link.
    let (mut tx2, mut rx2) = raw_peer(&pair.reg, "mock:cap").await;
    let mut other = offer("other.bin", 10);
    other.transfer_id = [2; 16];
    wire::send(&mut *tx2, Body::Offer(other.clone()))
        .await
        .unwrap();
    let r = expect_reject(&mut *rx2).await;
    assert_eq!(r.code, gateway_proto::RejectCode::Busy);
    assert!(
        r.message.contains("serve.max_open_transfers"),
        "{}",
        r.message
    );
    // A real sender waits (its status says why) and lands once the slot frees.
    let src = pair.outbox.join("waits.bin");
    let data = write_file(&src, 300_000, 3);
    let mut run = pair.spawn_send_with(&src, &["mock:cap".into()], any_cfg());
    run.until(|p| p.status.contains("receiver busy")).await;
    assert!(
        !run.task.is_finished(),
        "the sender gave up instead of waiting"
    );
    drop((tx1, rx1));
    let report = within(Duration::from_secs(30), run.task).await.unwrap();
    assert_eq!(report.verdict, "ok");
    assert_eq!(std::fs::read(pair.inbox.join("waits.bin")).unwrap(), data);
    drop((tx2, rx2));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_is_capped_and_each_is_cut_at_the_handshake_timeout() {
    let pair = Pair::new();
    let mut cfg = small_cfg();
    cfg.caps.max_handshaking_links = 2;
    cfg.handshake_timeout = Duration::from_millis(500);
    let mut server = pair.serve_with(&["mock:loris"], cfg).await;
    // Two connections that never say a word hold both handshake slots ...
    let silent: Vec<Box<dyn Link>> = vec![
        pair.reg.open("mock:loris").await.unwrap(),
        pair.reg.open("mock:loris").await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ... so a third is closed at once, before any crypto runs.
    let t0 = Instant::now();
    let st = NodeState::open(&pair.send_state).unwrap();
    let third = peer_as(&pair.reg, "mock:loris", &st, None).await;
    assert!(third.is_err(), "a link past the handshake cap was served");
    assert!(
        t0.elapsed() < Duration::from_millis(450),
        "it waited for a timeout: {:?}",
        t0.elapsed()
    );
    let why = next_refusal(&mut server).await;
    assert!(why.contains("serve.max_handshaking_links"), "{why}");
    // Each silent one is cut at the handshake timeout; a real sender then lands.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let src = pair.outbox.join("after.bin");
    let data = write_file(&src, 200_000, 4);
    pair.send(&src, &["mock:loris".into()]).await.unwrap();
    assert_eq!(std::fs::read(pair.inbox.join("after.bin")).unwrap(), data);
    drop(silent);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_peer_that_goes_quiet_is_dropped_at_the_idle_timeout() {
    let pair = Pair::new();
    let mut cfg = any_cfg();
    cfg.caps.link_idle_timeout = Duration::from_millis(300);
    let server = pair.serve_with(&["mock:quiet"], cfg).await;
    let (_tx, mut rx) = raw_peer(&pair.reg, "mock:quiet").await;
    let t0 = Instant::now();
    let msg = expect_error_and_drop(&mut *rx, ErrorCode::Protocol).await;
    assert!(msg.contains("no frame within"), "{msg}");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "dropped too soon"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_from_one_key_past_the_per_peer_cap_are_refused_busy() {
    let pair = Pair::new();
    let mut cfg = any_cfg();
    cfg.caps.max_links_per_peer = 2;
    let server = pair.serve_with(&["mock:per"], cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let st = NodeState::open(dir.path()).unwrap();
    let a = peer_as(&pair.reg, "mock:per", &st, None).await.unwrap();
    let b = peer_as(&pair.reg, "mock:per", &st, None).await.unwrap();
    let err = peer_as(&pair.reg, "mock:per", &st, None).await;
    // The third link hears Busy (after its Hello; the key is known by then).
    let (_tx, mut rx) = match err {
        Ok(halves) => halves,
        Err(e) => panic!("the third link failed before its Hello: {e}"),
    };
    let msg = expect_error_and_drop(&mut *rx, ErrorCode::Busy).await;
    assert!(msg.contains("serve.max_links_per_peer"), "{msg}");
    // Another key is not counted against this one; a closed link frees its slot.
    let other = raw_peer(&pair.reg, "mock:per").await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = peer_as(&pair.reg, "mock:per", &st, None).await.unwrap();
    drop((b, other, again));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_the_transport_drops_before_its_hello_is_opened_again() {
    let pair = Pair::new();
    // The first link to this listener dies at its first frame, as a fresh
    // Bluetooth link that BlueZ drops at once.
    let server = pair.serve(&["mock:fresh?drop_opens=1"]).await;
    let src = pair.outbox.join("fresh.bin");
    let data = write_file(&src, 300_000, 9);
    let report = pair.send(&src, &["mock:fresh".into()]).await.unwrap();
    assert_eq!(report.verdict, "ok");
    assert_eq!(std::fs::read(pair.inbox.join("fresh.bin")).unwrap(), data);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_keeps_dying_before_its_hello_fails_the_send_after_three_tries() {
    let pair = Pair::new();
    let server = pair.serve(&["mock:dying?drop_opens=100"]).await;
    let src = pair.outbox.join("never.bin");
    write_file(&src, 1000, 1);
    let t0 = Instant::now();
    let err = pair.send(&src, &["mock:dying".into()]).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("no link to the receiver could be opened"),
        "{msg}"
    );
    assert!(msg.contains("handshake failed"), "{msg}");
    // Reopened twice, 0.5 s then 1 s later: bounded, not a loop.
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(!pair.inbox.join("never.bin").exists());
    server.shutdown().await.unwrap();
}
