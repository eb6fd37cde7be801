//! End-to-end tests with real processes: `gateway serve` and `gateway send`
//! run as separate children of the test, talk over loopback TCP, and are
//! killed (SIGKILL, SIGINT, SIGTERM) mid-transfer. Every child is killed when
//! its guard drops, so a failing test leaves no process behind.
//!
//! The transfer tests take a global lock: on a 2-core box two of them at once
//! only slow each other down.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
const MIB: u64 = 1 << 20;
/// `checkpoint_bytes` in crates/engine/src/config.rs.
const CHECKPOINT_BYTES: u64 = 16 * MIB;
/// Generous: a loaded 2-core box running a debug build.
const SEND_TIMEOUT: Duration = Duration::from_secs(300);
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Serializes the tests that move hundreds of MiB.
fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------- processes

/// A running `gateway` child; killed (SIGKILL) and reaped on drop.
struct Proc {
    what: String,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// Stderr, line by line, as it arrives.
    lines: mpsc::Receiver<String>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

/// What a finished child left behind.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Proc {
    fn spawn(what: &str, args: &[String]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("GATEWAY_STATE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} {args:?}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ltx, lines) = mpsc::channel();
        let mut out = child.stdout.take().expect("piped");
        let out_buf = stdout.clone();
        let r1 = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            out_buf
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_str(&s);
        });
        let err = child.stderr.take().expect("piped");
        let err_buf = stderr.clone();
        let r2 = std::thread::spawn(move || {
            let mut r = BufReader::new(err);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        err_buf
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push_str(&line);
                        let _ = ltx.send(line.trim_end().to_string());
                    }
                }
            }
        });
        Proc {
            what: what.to_string(),
            child,
            stdout,
            stderr,
            lines,
            readers: vec![r1, r2],
            status: None,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Its stderr, for failure messages.
    fn describe(&self) -> String {
        let s = self.stderr_text();
        let tail: String = if s.len() > 6000 {
            let mut cut = s.len() - 6000;
            while !s.is_char_boundary(cut) {
                cut += 1;
            }
            format!("…{}", &s[cut..])
        } else {
            s
        };
        format!("--- stderr of {} ---\n{tail}--- end ---", self.what)
    }

    /// Exited already? (reaps it)
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    fn wait_timeout(&mut self, t: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + t;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit (panics after `t`) and collects all output.
    fn finish(&mut self, t: Duration, others: &[&Proc]) -> Finished {
        let Some(status) = self.wait_timeout(t) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            fail(
                &format!("{} did not exit within {t:?}", self.what),
                &[self],
                others,
            );
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Finished {
            status,
            stdout: self
                .stdout
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            stderr: self.stderr_text(),
        }
    }

    /// SIGKILL and reap.
    fn kill9(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap_or_else(|e| panic!("kill({sig}) {}: {e}", self.what));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Panics with `msg` and the stderr of every process involved.
fn fail(msg: &str, main: &[&Proc], others: &[&Proc]) -> ! {
    let mut s = format!("{msg}\n");
    for p in main.iter().chain(others) {
        s.push_str(&p.describe());
        s.push('\n');
    }
    panic!("{s}");
}

fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp path").to_string()
}

/// Runs a short `gateway` command to completion.
fn gateway(args: &[&str]) -> Finished {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut p = Proc::spawn(&format!("gateway {}", args.join(" ")), &args);
    p.finish(START_TIMEOUT, &[])
}

/// `gateway serve` with one `--listen` per entry; returns once every listener
/// printed its resolved selector (`gateway: receiving into DIR on SEL`).
fn try_serve(state: &Path, dir: &Path, listen: &[String]) -> Result<(Proc, Vec<String>), String> {
    let mut args = vec![
        "--state".to_string(),
        s(state),
        "serve".into(),
        "--dir".into(),
        s(dir),
    ];
    for l in listen {
        args.push("--listen".into());
        args.push(l.clone());
    }
    let mut p = Proc::spawn("gateway serve", &args);
    let mut sels = Vec::new();
    let end = Instant::now() + START_TIMEOUT;
    while sels.len() < listen.len() {
        match p.lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if line.starts_with("gateway: receiving into ")
                    && let Some((_, sel)) = line.rsplit_once(" on ")
                {
                    sels.push(sel.to_string());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = p.wait_timeout(Duration::from_secs(5));
                return Err(format!(
                    "serve exited ({:?}) before listening:\n{}",
                    p.exited(),
                    p.describe()
                ));
            }
        }
        if Instant::now() > end {
            return Err(format!(
                "serve did not print its listeners within {START_TIMEOUT:?}:\n{}",
                p.describe()
            ));
        }
    }
    Ok((p, sels))
}

fn serve(state: &Path, dir: &Path, n_links: usize) -> (Proc, Vec<String>) {
    try_serve(state, dir, &vec!["tcp:127.0.0.1:0".to_string(); n_links])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `serve` again on the same selectors; the ports may take a moment to free.
fn serve_again(state: &Path, dir: &Path, sels: &[String]) -> Proc {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match try_serve(state, dir, sels) {
            Ok((p, got)) => {
                assert_eq!(got, sels, "restarted serve listens elsewhere");
                return p;
            }
            Err(e) if Instant::now() > end => panic!("cannot restart serve on {sels:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn send_args(state: &Path, file: &Path, to: &[String]) -> Vec<String> {
    let mut args = vec!["--state".to_string(), s(state), "send".into(), s(file)];
    for t in to {
        args.push("--to".into());
        args.push(t.clone());
    }
    args.push("--json".into());
    args
}

fn with_rate(sels: &[String], rate: &str) -> Vec<String> {
    sels.iter().map(|s| format!("{s}?rate={rate}")).collect()
}

/// Runs a send to completion; expects exit 0 and a JSON last line.
fn send_ok(state: &Path, file: &Path, to: &[String], others: &[&Proc]) -> Value {
    let mut p = Proc::spawn("gateway send", &send_args(state, file, to));
    let out = p.finish(SEND_TIMEOUT, others);
    if !out.status.success() {
        fail(
            &format!(
                "send: expected exit 0, got {:?}; stdout:\n{}",
                out.status, out.stdout
            ),
            &[&p],
            others,
        );
    }
    let last = out.stdout.lines().rev().find(|l| !l.trim().is_empty());
    match last.map(serde_json::from_str::<Value>) {
        Some(Ok(v)) => v,
        other => fail(
            &format!(
                "send --json: expected a JSON last line, got {other:?}; stdout:\n{}",
                out.stdout
            ),
            &[&p],
            others,
        ),
    }
}

/// `gateway --state DIR transfers --json`.
fn transfers(state: &Path) -> Vec<Value> {
    let out = gateway(&["--state", &s(state), "transfers", "--json"]);
    assert!(
        out.status.success(),
        "transfers --json: expected exit 0, got {:?}; stderr:\n{}",
        out.status,
        out.stderr
    );
    match serde_json::from_str::<Value>(out.stdout.trim()) {
        Ok(Value::Array(a)) => a,
        other => panic!(
            "transfers --json: expected a JSON array, got {other:?} from {:?}",
            out.stdout
        ),
    }
}

/// Polls the receiver's DB until some transfer holds more than `bytes`
/// durably; fails if the sender exits first.
fn wait_durable(recv_state: &Path, bytes: u64, sender: &mut Proc, receiver: &Proc) -> u64 {
    let end = Instant::now() + SEND_TIMEOUT;
    loop {
        let best = transfers(recv_state)
            .iter()
            .filter_map(|t| t["durable_bytes"].as_u64())
            .max()
            .unwrap_or(0);
        if best > bytes {
            return best;
        }
        if let Some(st) = sender.exited() {
            fail(
                &format!(
                    "sender exited ({st:?}) before the receiver held {bytes} bytes durably (had {best}); \
                     the kill would come too late"
                ),
                &[sender, receiver],
                &[],
            );
        }
        if Instant::now() > end {
            fail(
                &format!("receiver never held more than {bytes} bytes durably (had {best})"),
                &[sender, receiver],
                &[],
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// -------------------------------------------------------------------- files

/// Writes `size` bytes: one 1 MiB pseudo-random block repeated, with the
/// block index stamped every 4 KiB so no two chunks are equal. Returns the
/// BLAKE3 hex.
fn make_file(path: &Path, size: u64) -> String {
    let mut block = vec![0u8; MIB as usize];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for c in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let mut f = std::fs::File::create(path).expect("create the source file");
    let mut h = blake3::Hasher::new();
    let mut left = size;
    let mut i: u64 = 0;
    while left > 0 {
        for off in (0..block.len()).step_by(4096) {
            block[off..off + 8].copy_from_slice(&i.to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        f.write_all(&block[..n]).expect("write the source file");
        h.update(&block[..n]);
        left -= n as u64;
        i += 1;
    }
    f.sync_all().expect("sync the source file");
    h.finalize().to_hex().to_string()
}

fn hash_of(path: &Path) -> String {
    let f = std::fs::File::open(path)
        .unwrap_or_else(|e| panic!("expected {} to exist: {e}", path.display()));
    let mut h = blake3::Hasher::new();
    h.update_reader(f).expect("read the file");
    h.finalize().to_hex().to_string()
}

fn part_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".gateway-part"))
                .collect()
        })
        .unwrap_or_default()
}

/// One test's directories: source, inbox, and the two nodes' states.
struct Setup {
    _root: tempfile::TempDir,
    src: PathBuf,
    inbox: PathBuf,
    send_state: PathBuf,
    recv_state: PathBuf,
}

fn setup() -> Setup {
    let t = setup_unpaired();
    // The two nodes trust each other by id, as a user would with
    // `gateway id` on one box and `gateway trust ID` on the other.
    let (rid, sid) = (node_id(&t.recv_state), node_id(&t.send_state));
    for (state, other) in [(&t.recv_state, &sid), (&t.send_state, &rid)] {
        let out = gateway(&["--state", &s(state), "trust", other]);
        assert!(out.status.success(), "gateway trust failed: {}", out.stderr);
    }
    t
}

fn node_id(state: &Path) -> String {
    let out = gateway(&["--state", &s(state), "id"]);
    assert!(out.status.success(), "gateway id failed: {}", out.stderr);
    out.stdout.trim().to_string()
}

/// Two nodes that have never met.
fn setup_unpaired() -> Setup {
    let root = tempfile::Builder::new()
        .prefix("gateway-cli-test-")
        .tempdir()
        .expect("temp dir");
    let base = root.path().to_path_buf();
    std::fs::create_dir_all(base.join("outbox")).expect("outbox");
    Setup {
        src: base.join("outbox").join("payload.bin"),
        inbox: base.join("inbox"),
        send_state: base.join("sender-state"),
        recv_state: base.join("receiver-state"),
        _root: root,
    }
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("expected a number {k:?} in the report, got {v}"))
}

/// Everything a finished transfer must show: verdict, hash, sizes, the file
/// in place and no part file, nothing unfinished on either side.
fn check_delivered(
    t: &Setup,
    report: &Value,
    size: u64,
    want_hash: &str,
    procs: &[&Proc],
) -> String {
    let check = |ok: bool, what: String| {
        if !ok {
            fail(&format!("{what}\nreport: {report}"), procs, &[]);
        }
    };
    check(
        report["verdict"] == "ok",
        format!("verdict: expected \"ok\", got {}", report["verdict"]),
    );
    check(
        report["hash"] == want_hash,
        format!("hash: expected {want_hash}, got {}", report["hash"]),
    );
    check(
        u(report, "bytes_total") == size,
        format!(
            "bytes_total: expected {size}, got {}",
            report["bytes_total"]
        ),
    );
    let name = report["name"].as_str().unwrap_or("").to_string();
    check(
        name == "payload.bin",
        format!("name: expected payload.bin, got {name:?}"),
    );
    let got = hash_of(&t.inbox.join(&name));
    check(
        got == want_hash,
        format!("received file hash: expected {want_hash}, got {got}"),
    );
    let parts = part_files(&t.inbox);
    check(
        parts.is_empty(),
        format!("expected no *.gateway-part left, got {parts:?}"),
    );
    for (who, st) in [("sender", &t.send_state), ("receiver", &t.recv_state)] {
        let left = transfers(st);
        check(
            left.is_empty(),
            format!("{who} transfers --json: expected [], got {left:?}"),
        );
    }
    name
}

/// The resume accounting: something was resumed, and the rerun put at most
/// one checkpoint more on the links than the receiver was missing
/// (`bytes_sent + bytes_resumed <= bytes_total + one checkpoint`, as the
/// issue states it). Tail duplicates are the only slack the rerun itself
/// needs; they are bounded by the two links' windows (2 × 8 MiB = 16 MiB).
/// Returns (bytes_sent, bytes_resumed).
fn check_resumed(report: &Value, size: u64, procs: &[&Proc]) -> (u64, u64) {
    let sent = u(report, "bytes_sent");
    let resumed = u(report, "bytes_resumed");
    if resumed == 0 {
        fail(
            &format!("bytes_resumed: expected > 0, got 0\nreport: {report}"),
            procs,
            &[],
        );
    }
    let bound = size + CHECKPOINT_BYTES;
    if sent + resumed > bound {
        fail(
            &format!(
                "bytes_sent + bytes_resumed: expected <= {bound} (total + one checkpoint), \
                 got {sent} + {resumed} = {} ({} MiB over the total)\nreport: {report}",
                sent + resumed,
                (sent + resumed - size) as f64 / MIB as f64
            ),
            procs,
            &[],
        );
    }
    eprintln!(
        "resume accounting: sent {sent} + resumed {resumed} = {} for a total of {size} \
         ({} MiB over; bound {} MiB over)",
        sent + resumed,
        (sent + resumed).saturating_sub(size) as f64 / MIB as f64,
        CHECKPOINT_BYTES / MIB
    );
    (sent, resumed)
}

// -------------------------------------------------------------------- tests

#[test]
fn one_gib_over_two_tcp_links_arrives_with_the_right_hash_and_both_links_carry_data() {
    let _g = heavy();
    let t = setup();
    let size = 1 << 30;
    let started = Instant::now();
    let want = make_file(&t.src, size);
    eprintln!("generated 1 GiB in {:?}", started.elapsed());
    let (recv, sels) = serve(&t.recv_state, &t.inbox, 2);
    let started = Instant::now();
    let report = send_ok(&t.send_state, &t.src, &sels, &[&recv]);
    eprintln!("sent 1 GiB in {:?}: {report}", started.elapsed());
    check_delivered(&t, &report, size, &want, &[&recv]);
    let links = report["links"].as_array().cloned().unwrap_or_default();
    if links.len() != 2 {
        fail(
            &format!(
                "links: expected 2 entries, got {}\nreport: {report}",
                links.len()
            ),
            &[&recv],
            &[],
        );
    }
    for l in &links {
        if l["bytes"].as_u64().unwrap_or(0) == 0 {
            fail(
                &format!(
                    "link {}: expected bytes > 0, got {}\nreport: {report}",
                    l["selector"], l["bytes"]
                ),
                &[&recv],
                &[],
            );
        }
    }
    let sent = u(&report, "bytes_sent");
    assert!(
        sent >= size,
        "bytes_sent: expected >= {size}, got {sent}\nreport: {report}"
    );
}

#[test]
fn sender_killed_with_sigkill_resumes_on_rerun() {
    let _g = heavy();
    let t = setup();
    let size = 256 * MIB;
    let want = make_file(&t.src, size);
    let (recv, sels) = serve(&t.recv_state, &t.inbox, 2);
    let mut sender = Proc::spawn(
        "gateway send (rate-capped, to be killed)",
        &send_args(&t.send_state, &t.src, &with_rate(&sels, "40MB")),
    );
    let durable = wait_durable(&t.recv_state, 32 * MIB, &mut sender, &recv);
    sender.kill9();
    eprintln!("SIGKILLed the sender with {durable} bytes durable at the receiver");
    // The sender's DB still knows the transfer, so the rerun can Reload it.
    let mine = transfers(&t.send_state);
    assert_eq!(
        mine.len(),
        1,
        "sender transfers after SIGKILL: expected one unfinished transfer, got {mine:?}"
    );

    let report = send_ok(&t.send_state, &t.src, &sels, &[&recv]);
    check_resumed(&report, size, &[&recv]);
    check_delivered(&t, &report, size, &want, &[&recv]);
}

#[test]
fn receiver_killed_with_sigkill_resumes_after_restart() {
    let _g = heavy();
    let t = setup();
    let size = 256 * MIB;
    let want = make_file(&t.src, size);
    let (mut recv, sels) = serve(&t.recv_state, &t.inbox, 2);
    let mut sender = Proc::spawn(
        "gateway send (rate-capped, outlives the receiver)",
        &send_args(&t.send_state, &t.src, &with_rate(&sels, "40MB")),
    );
    let durable = wait_durable(&t.recv_state, 32 * MIB, &mut sender, &recv);
    recv.kill9();
    eprintln!("SIGKILLed the receiver with at least {durable} bytes durable");
    // The sender must ride out the dead links (retrying, not failing) — give
    // it one retry interval; then stop it before the receiver is back, so the
    // rerun, not this sender, does the resuming.
    std::thread::sleep(Duration::from_secs(3));
    if let Some(st) = sender.exited() {
        fail(
            &format!("sender: expected it to keep retrying its links, got exit {st:?}"),
            &[&sender, &recv],
            &[],
        );
    }
    sender.kill9();

    let recv2 = serve_again(&t.recv_state, &t.inbox, &sels);
    let report = send_ok(&t.send_state, &t.src, &sels, &[&recv2, &recv]);
    check_resumed(&report, size, &[&recv2, &recv]);
    check_delivered(&t, &report, size, &want, &[&recv2, &recv]);
}

#[test]
fn sender_rides_out_a_receiver_restart_by_retrying_its_links() {
    let _g = heavy();
    let t = setup();
    let size = 256 * MIB;
    let want = make_file(&t.src, size);
    let (mut recv, sels) = serve(&t.recv_state, &t.inbox, 2);
    let mut sender = Proc::spawn(
        "gateway send (rate-capped, must finish by itself)",
        &send_args(&t.send_state, &t.src, &with_rate(&sels, "40MB")),
    );
    wait_durable(&t.recv_state, 32 * MIB, &mut sender, &recv);
    recv.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let recv2 = serve_again(&t.recv_state, &t.inbox, &sels);
    let out = sender.finish(SEND_TIMEOUT, &[&recv2, &recv]);
    if !out.status.success() {
        fail(
            &format!(
                "sender across a receiver restart: expected exit 0, got {:?}; stdout:\n{}",
                out.status, out.stdout
            ),
            &[&sender, &recv2, &recv],
            &[],
        );
    }
    let report: Value = out
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("expected a JSON last line, got {:?}", out.stdout));
    // Proof that the restart happened mid-transfer: the sender saw its links
    // drop (a warning it logs by default) and still finished.
    if !out.stderr.contains("link down") {
        fail(
            "sender: expected a \"link down\" warning from the receiver restart, got none",
            &[&sender, &recv2, &recv],
            &[],
        );
    }
    check_delivered(&t, &report, size, &want, &[&sender, &recv2, &recv]);
}

#[test]
fn ctrl_c_is_user_stop_exit_130_and_rerun_resumes() {
    let _g = heavy();
    let t = setup();
    let size = 256 * MIB;
    let want = make_file(&t.src, size);
    let (recv, sels) = serve(&t.recv_state, &t.inbox, 2);
    let mut sender = Proc::spawn(
        "gateway send (rate-capped, to get Ctrl-C)",
        &send_args(&t.send_state, &t.src, &with_rate(&sels, "40MB")),
    );
    wait_durable(&t.recv_state, 32 * MIB, &mut sender, &recv);
    sender.signal(Signal::SIGINT);
    let out = sender.finish(Duration::from_secs(60), &[&recv]);
    if out.status.code() != Some(130) {
        fail(
            &format!(
                "send after SIGINT: expected exit 130, got {:?}; stdout:\n{}",
                out.status, out.stdout
            ),
            &[&sender, &recv],
            &[],
        );
    }

    let report = send_ok(&t.send_state, &t.src, &sels, &[&recv]);
    check_resumed(&report, size, &[&recv]);
    check_delivered(&t, &report, size, &want, &[&recv]);
}

#[test]
fn sigterm_to_serve_mid_transfer_is_exit_130_and_rerun_resumes() {
    let _g = heavy();
    let t = setup();
    let size = 256 * MIB;
    let want = make_file(&t.src, size);
    let (mut recv, sels) = serve(&t.recv_state, &t.inbox, 2);
    let mut sender = Proc::spawn(
        "gateway send (rate-capped, receiver gets SIGTERM)",
        &send_args(&t.send_state, &t.src, &with_rate(&sels, "40MB")),
    );
    wait_durable(&t.recv_state, 32 * MIB, &mut sender, &recv);
    recv.signal(Signal::SIGTERM);
    let out = recv.finish(Duration::from_secs(60), &[&sender]);
    if out.status.code() != Some(130) {
        fail(
            &format!(
                "serve after SIGTERM: expected exit 130, got {:?}",
                out.status
            ),
            &[&recv, &sender],
            &[],
        );
    }
    // The sender is now waiting for its links; Ctrl-C stops it too.
    sender.signal(Signal::SIGINT);
    let out = sender.finish(Duration::from_secs(60), &[&recv]);
    if out.status.code() != Some(130) {
        fail(
            &format!(
                "send after SIGINT while its receiver is gone: expected exit 130, got {:?}",
                out.status
            ),
            &[&sender, &recv],
            &[],
        );
    }

    let recv2 = serve_again(&t.recv_state, &t.inbox, &sels);
    let report = send_ok(&t.send_state, &t.src, &sels, &[&recv2, &recv]);
    check_resumed(&report, size, &[&recv2, &recv]);
    check_delivered(&t, &report, size, &want, &[&recv2, &recv]);
}

// ------------------------------------------------------------- trees (dirs)

/// A tree of 300 files (a few bytes to ~40 KiB, ~6 MiB in all) in 6
/// directories plus an empty one, each file's bytes distinct. Returns its
/// listing (see `tree_listing`).
fn make_tree(root: &Path) -> Vec<(String, Option<String>)> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    std::fs::create_dir_all(root.join("empty")).expect("make the tree");
    for i in 0..300u64 {
        let dir = root.join(format!("d{}", i % 6));
        std::fs::create_dir_all(&dir).expect("make the tree");
        let len = 7 + (i * 137) % 40_000;
        let mut data = Vec::with_capacity(len as usize);
        while (data.len() as u64) < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        data.truncate(len as usize);
        std::fs::write(dir.join(format!("f{i:03}.bin")), &data).expect("write the tree");
    }
    tree_listing(root)
}

/// Every entry under `root`, sorted: relative path and, for a file, its
/// BLAKE3 (None for a directory).
fn tree_listing(root: &Path) -> Vec<(String, Option<String>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Option<String>)>) {
        let rd = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("expected {} to be a directory: {e}", dir.display()));
        for e in rd {
            let p = e.expect("read the tree").path();
            let rel = p.strip_prefix(root).expect("under root");
            let rel = rel.to_string_lossy().into_owned();
            if p.is_dir() {
                out.push((rel, None));
                walk(root, &p, out);
            } else {
                out.push((rel, Some(hash_of(&p))));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn tree_bytes(root: &Path, listing: &[(String, Option<String>)]) -> u64 {
    listing
        .iter()
        .filter(|(_, h)| h.is_some())
        .map(|(p, _)| std::fs::metadata(root.join(p)).expect("stat").len())
        .sum()
}

/// A finished tree transfer: verdict ok, the sizes and file count in the
/// report, the received tree equal to the source entry by entry, no staging
/// directory and no record left on either side.
fn check_tree_delivered(
    t: &Setup,
    src: &Path,
    want: &[(String, Option<String>)],
    report: &Value,
    procs: &[&Proc],
) {
    let check = |ok: bool, what: String| {
        if !ok {
            fail(&format!("{what}\nreport: {report}"), procs, &[]);
        }
    };
    let files = want.iter().filter(|(_, h)| h.is_some()).count() as u64;
    let total = tree_bytes(src, want);
    check(
        report["verdict"] == "ok",
        format!("verdict: expected \"ok\", got {}", report["verdict"]),
    );
    check(
        u(report, "bytes_total") == total,
        format!(
            "bytes_total: expected {total}, got {}",
            report["bytes_total"]
        ),
    );
    check(
        report["files"].as_u64() == Some(files),
        format!("files: expected {files}, got {}", report["files"]),
    );
    let name = src.file_name().and_then(|n| n.to_str()).expect("a name");
    check(
        report["name"] == name,
        format!("name: expected {name:?}, got {}", report["name"]),
    );
    let got = tree_listing(&t.inbox.join(name));
    if got != want {
        let missing: Vec<_> = want.iter().filter(|e| !got.contains(e)).take(5).collect();
        let extra: Vec<_> = got.iter().filter(|e| !want.contains(e)).take(5).collect();
        check(
            false,
            format!(
                "received tree differs from the source ({} entries vs {}): \
                 missing or different {missing:?}, unexpected {extra:?}",
                got.len(),
                want.len()
            ),
        );
    }
    let parts = part_files(&t.inbox);
    check(
        parts.is_empty(),
        format!("expected no staging directory (*.gateway-part) left, got {parts:?}"),
    );
    for (who, st) in [("sender", &t.send_state), ("receiver", &t.recv_state)] {
        let left = transfers(st);
        check(
            left.is_empty(),
            format!("{who} transfers --json: expected [], got {left:?}"),
        );
    }
}

/// One checkpoint of a tree test's first run: at most `checkpoint_interval`
/// (1 s) at the 1 MB/s cap, i.e. one 1 MiB chunk.
const TREE_CHECKPOINT: u64 = MIB;

/// The rerun of a tree: what the receiver held durably when the first run
/// was killed came back as `bytes_resumed` (files already complete are not
/// sent again), and `bytes_sent + bytes_resumed <= bytes_total + one
/// checkpoint`.
fn check_tree_resumed(report: &Value, durable_at_kill: u64, procs: &[&Proc]) {
    let (sent, resumed, total) = (
        u(report, "bytes_sent"),
        u(report, "bytes_resumed"),
        u(report, "bytes_total"),
    );
    if resumed == 0 || resumed < durable_at_kill {
        fail(
            &format!(
                "bytes_resumed: expected > 0 and at least the {durable_at_kill} bytes durable \
                 when the first run was killed, got {resumed}\nreport: {report}"
            ),
            procs,
            &[],
        );
    }
    if sent + resumed > total + TREE_CHECKPOINT {
        fail(
            &format!(
                "bytes_sent + bytes_resumed: expected <= {total} + {TREE_CHECKPOINT} (total + one \
                 checkpoint), got {sent} + {resumed} = {}\nreport: {report}",
                sent + resumed
            ),
            procs,
            &[],
        );
    }
    eprintln!(
        "tree resume accounting: sent {sent} + resumed {resumed} = {} for a total of {total} \
         (durable at the kill: {durable_at_kill})",
        sent + resumed
    );
}

#[test]
fn a_tree_whose_sender_is_killed_with_sigkill_resumes_on_rerun_without_resending_complete_files() {
    let _g = heavy();
    let t = setup();
    let src = t.src.with_file_name("tree");
    let want = make_tree(&src);
    let (recv, sels) = serve(&t.recv_state, &t.inbox, 1);
    let mut sender = Proc::spawn(
        "gateway send DIR (1 MB/s, to be killed)",
        &send_args(&t.send_state, &src, &with_rate(&sels, "1MB")),
    );
    let durable = wait_durable(&t.recv_state, 2 * MIB, &mut sender, &recv);
    sender.kill9();
    eprintln!("SIGKILLed the tree's sender with {durable} bytes durable at the receiver");
    let mine = transfers(&t.send_state);
    assert_eq!(
        mine.len(),
        1,
        "sender transfers after SIGKILL: expected the unfinished tree, got {mine:?}"
    );

    let report = send_ok(&t.send_state, &src, &sels, &[&recv]);
    check_tree_resumed(&report, durable, &[&recv]);
    check_tree_delivered(&t, &src, &want, &report, &[&recv]);
}

#[test]
fn a_tree_whose_receiver_is_killed_with_sigkill_resumes_after_restart() {
    let _g = heavy();
    let t = setup();
    let src = t.src.with_file_name("tree");
    let want = make_tree(&src);
    let (mut recv, sels) = serve(&t.recv_state, &t.inbox, 1);
    let mut sender = Proc::spawn(
        "gateway send DIR (1 MB/s, outlives the receiver)",
        &send_args(&t.send_state, &src, &with_rate(&sels, "1MB")),
    );
    let durable = wait_durable(&t.recv_state, 2 * MIB, &mut sender, &recv);
    recv.kill9();
    eprintln!("SIGKILLed the tree's receiver with at least {durable} bytes durable");
    // The receiver's DB is the truth now (the kill may have come after a
    // later checkpoint than the one polled).
    let durable = transfers(&t.recv_state)
        .iter()
        .filter_map(|r| r["durable_bytes"].as_u64())
        .max()
        .unwrap_or(0)
        .max(durable);
    sender.kill9();

    let recv2 = serve_again(&t.recv_state, &t.inbox, &sels);
    let report = send_ok(&t.send_state, &src, &sels, &[&recv2, &recv]);
    check_tree_resumed(&report, durable, &[&recv2, &recv]);
    check_tree_delivered(&t, &src, &want, &report, &[&recv2, &recv]);
}

#[test]
fn serve_stops_on_sigterm_with_exit_130() {
    let t = setup();
    let (mut recv, _sels) = serve(&t.recv_state, &t.inbox, 1);
    recv.signal(Signal::SIGTERM);
    let out = recv.finish(Duration::from_secs(60), &[]);
    assert_eq!(
        out.status.code(),
        Some(130),
        "serve after SIGTERM: expected exit 130, got {:?}; stderr:\n{}",
        out.status,
        out.stderr
    );
}

// ------------------------------------------------------------ CLI messages

fn assert_error(out: &Finished, code: i32, needles: &[&str], what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}, got {:?}; stderr:\n{}",
        out.status,
        out.stderr
    );
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "{what}: expected the message to contain {n:?}, got stderr:\n{}",
            out.stderr
        );
    }
}

#[test]
fn send_of_a_missing_file_names_the_path_and_exits_1() {
    let t = setup();
    let missing = t.src.with_file_name("no-such-file.bin");
    let out = gateway(&[
        "--state",
        &s(&t.send_state),
        "send",
        &s(&missing),
        "--to",
        "tcp:127.0.0.1:1",
    ]);
    assert_error(&out, 1, &[&s(&missing)], "send of a missing file");
}

/// `gateway send` of a small file with these extra arguments fails with
/// exit 1 and a message holding every needle.
fn expect_send_error(args: &[&str], needles: &[&str], what: &str) {
    let t = setup();
    make_file(&t.src, 4096);
    let (state, src) = (s(&t.send_state), s(&t.src));
    let out = gateway(&[&["--state", &state, "send", &src][..], args].concat());
    assert_error(&out, 1, needles, what);
}

#[test]
fn send_to_an_unknown_scheme_names_it_and_lists_the_known_ones() {
    expect_send_error(
        &["--to", "nonsense:here"],
        &["nonsense", "unknown link scheme", "tcp"],
        "send --to nonsense:here",
    );
}

#[test]
fn send_to_a_name_nobody_answers_to_says_what_was_tried_and_how_to_add_an_address() {
    expect_send_error(
        &["--to", "nobody-by-this-name", "--no-mdns"],
        &[
            "no node named \"nobody-by-this-name\"",
            "gateway peers add nobody-by-this-name",
        ],
        "send --to an unknown name",
    );
}

#[test]
fn send_to_a_port_nobody_listens_on_suggests_gateway_serve() {
    expect_send_error(
        &["--to", "tcp:127.0.0.1:1"],
        &["tcp:127.0.0.1:1", "refused", "gateway serve"],
        "send to a closed port",
    );
}

#[test]
fn links_lists_tcp_and_serial_and_the_radios_as_unavailable_with_a_reason() {
    let table = gateway(&["links"]);
    assert!(
        table.status.success(),
        "links: expected exit 0, got {:?}; stderr:\n{}",
        table.status,
        table.stderr
    );
    let json = gateway(&["links", "--json"]);
    assert!(
        json.status.success(),
        "links --json: expected exit 0, got {:?}; stderr:\n{}",
        json.status,
        json.stderr
    );
    let rows = match serde_json::from_str::<Value>(json.stdout.trim()) {
        Ok(Value::Array(a)) => a,
        other => panic!(
            "links --json: expected a JSON array, got {other:?} from {:?}",
            json.stdout
        ),
    };
    let of =
        |scheme: &str| -> Vec<&Value> { rows.iter().filter(|r| r["scheme"] == scheme).collect() };
    assert!(
        of("tcp").iter().any(|r| r["usable"] == true),
        "links --json: expected a usable tcp row, got {rows:?}"
    );
    // Serial is built in; whether a port is usable depends on the machine.
    assert!(
        !of("serial").is_empty(),
        "links --json: expected a serial row, got {rows:?}"
    );
    // USB is built in: a row for each end, unusable with the reason on a
    // machine without a USB host controller or device controller (CI).
    let usb = of("usb");
    assert!(
        usb.len() >= 2,
        "links --json: expected usb rows for the host end and the gadget end, got {usb:?}"
    );
    for row in &usb {
        let why = row["detail"].as_str().unwrap_or("");
        assert!(
            row["usable"] == true || !why.trim().is_empty(),
            "links --json: an unusable usb row must say why, got {row}"
        );
    }
    if !std::path::Path::new("/sys/bus/usb").exists() {
        assert!(
            usb.iter().any(|r| r["usable"] == false
                && r["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("no USB host controller")),
            "links --json: expected the host end unusable for want of a controller, got {usb:?}"
        );
    }
    // Bluetooth is built in (default feature): rows for RFCOMM and L2CAP,
    // and on a machine without Bluetooth (CI) the reason.
    for scheme in ["rfcomm", "l2cap"] {
        let r = of(scheme);
        assert!(
            !r.is_empty(),
            "links --json: expected a {scheme} row, got {rows:?}"
        );
        for row in &r {
            let why = row["detail"].as_str().unwrap_or("");
            assert!(
                row["usable"] == true
                    || why.contains("Bluetooth")
                    || why.contains("rfkill")
                    || why.contains("powered off"),
                "links --json: an unusable {scheme} row must say why, got {row}"
            );
        }
        if !std::path::Path::new("/sys/class/bluetooth").exists() {
            assert!(
                r.iter().all(|row| row["usable"] == false),
                "links --json: no Bluetooth here, yet {scheme} is usable: {r:?}"
            );
        }
    }
    for scheme in ["ble"] {
        let r = of(scheme);
        assert!(
            !r.is_empty(),
            "links --json: expected a {scheme} row, got {rows:?}"
        );
        for row in r {
            assert_eq!(
                row["usable"], false,
                "links --json: expected {scheme} unusable in this build, got {row}"
            );
            let why = row["detail"].as_str().unwrap_or("");
            assert!(
                !why.trim().is_empty(),
                "links --json: expected a reason for {scheme}, got {row}"
            );
        }
        // The table says the same, in words.
        let line = table
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(scheme))
            .unwrap_or_else(|| panic!("links: expected a {scheme} line, got:\n{}", table.stdout));
        assert!(
            line.split_whitespace().nth(2) == Some("no") && line.contains("not in this build"),
            "links: expected {scheme} as unusable with a reason, got {line:?}"
        );
    }
    let tcp_yes = table.stdout.lines().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.first() == Some(&"tcp") && w.get(2) == Some(&"yes")
    });
    assert!(
        tcp_yes,
        "links: expected a usable tcp line, got:\n{}",
        table.stdout
    );
}

#[test]
fn transfers_json_on_an_empty_state_prints_an_empty_array() {
    let t = setup();
    let out = gateway(&["--state", &s(&t.recv_state), "transfers", "--json"]);
    assert!(
        out.status.success(),
        "transfers --json: expected exit 0, got {:?}; stderr:\n{}",
        out.status,
        out.stderr
    );
    assert_eq!(
        out.stdout.trim(),
        "[]",
        "transfers --json on an empty state: expected [], got {:?}",
        out.stdout
    );
}

#[test]
fn demo_exits_zero_with_an_ok_verdict() {
    let out = gateway(&["demo", "--size", "16MiB", "--quiet"]);
    assert!(
        out.status.success(),
        "demo: expected exit 0, got {:?}; stdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.lines().any(|l| l.contains("OK")),
        "demo: expected a line containing OK, got stdout:\n{}",
        out.stdout
    );
}

/// `gateway pair` waiting on loopback: returns it with its selector and code.
fn pair_listener(state: &Path) -> (Proc, String, String) {
    let args: Vec<String> = ["--state", &s(state), "pair", "--listen", "tcp:127.0.0.1:0"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let p = Proc::spawn("gateway pair (listen)", &args);
    let (mut sel, mut code) = (None, None);
    let end = Instant::now() + START_TIMEOUT;
    while sel.is_none() || code.is_none() {
        if let Ok(line) = p.lines.recv_timeout(Duration::from_millis(100)) {
            if let Some(rest) = line.strip_prefix("gateway: waiting on ") {
                sel = rest.split(';').next().map(str::to_string);
            }
            if let Some(rest) = line.trim().strip_prefix("gateway pair ") {
                code = rest.split_whitespace().next().map(str::to_string);
            }
        }
        assert!(
            Instant::now() < end,
            "pair listener printed no code:\n{}",
            p.describe()
        );
    }
    (p, sel.unwrap_or_default(), code.unwrap_or_default())
}

#[test]
fn pairing_by_code_opens_the_file_stream_and_untrust_closes_it() {
    let t = setup_unpaired();
    make_file(&t.src, 3 * MIB);
    let (mut rx, sels) = serve(&t.recv_state, &t.inbox, 1);
    // Strangers: refused, with the way out in the message.
    let out = gateway(
        &send_args(&t.send_state, &t.src, &sels)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!out.status.success(), "an unpaired send succeeded");
    assert!(
        out.stderr.contains("gateway pair"),
        "no pairing hint in: {}",
        out.stderr
    );
    assert!(!t.inbox.join("payload.bin").exists());

    // Pair with the code the receiver shows.
    let (mut listener, psel, code) = pair_listener(&t.recv_state);
    let joined = gateway(&["--state", &s(&t.send_state), "pair", &code, "--to", &psel]);
    assert!(joined.status.success(), "pair failed: {}", joined.stderr);
    let done = listener.finish(START_TIMEOUT, &[]);
    assert!(
        done.status.success(),
        "pair listener failed: {}",
        done.stderr
    );
    let words = |e: &str| {
        e.lines()
            .find_map(|l| l.split("same words: ").nth(1).map(str::to_string))
    };
    assert_eq!(
        words(&joined.stderr),
        words(&done.stderr),
        "both sides must show the same words"
    );
    assert!(words(&done.stderr).is_some());

    let report = send_ok(&t.send_state, &t.src, &sels, &[&rx]);
    assert_eq!(report["verdict"], "ok");

    // Untrusted again: the next send is refused.
    let sid = node_id(&t.send_state);
    let out = gateway(&["--state", &s(&t.recv_state), "untrust", &sid]);
    assert!(out.status.success(), "untrust failed: {}", out.stderr);
    make_file(&t.src, 2 * MIB);
    let out = gateway(
        &send_args(&t.send_state, &t.src, &sels)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!out.status.success(), "an untrusted send succeeded");
    assert!(out.stderr.contains("does not trust"), "{}", out.stderr);
    rx.kill9();
}

#[test]
fn a_wrong_pairing_code_fails_on_both_sides_and_trusts_nobody() {
    let t = setup_unpaired();
    let (mut listener, psel, code) = pair_listener(&t.recv_state);
    let wrong = if code.starts_with("2-") {
        code.replacen("2-", "3-", 1)
    } else {
        format!("2-{}", code.split_once('-').unwrap().1)
    };
    let out = gateway(&["--state", &s(&t.send_state), "pair", &wrong, "--to", &psel]);
    assert!(!out.status.success(), "a wrong code paired");
    assert!(out.stderr.contains("wrong pairing code"), "{}", out.stderr);
    let peers = gateway(&[
        "--state",
        &s(&t.send_state),
        "peers",
        "--browse",
        "0",
        "--json",
    ]);
    let v: Value = serde_json::from_str(peers.stdout.trim()).expect("peers --json");
    assert!(
        v.as_array().unwrap().iter().all(|p| p["trust"] != "paired"),
        "a failed pairing recorded trust: {v}"
    );
    listener.kill9();
}

/// Runs `gateway ARGS` to completion as a tracked process and returns it.
fn run_ok(what: &str, args: &[String], others: &[&Proc]) -> Finished {
    let mut p = Proc::spawn(what, args);
    let out = p.finish(SEND_TIMEOUT, others);
    if !out.status.success() {
        fail(
            &format!(
                "{what}: expected exit 0, got {:?}; stdout:\n{}",
                out.status, out.stdout
            ),
            &[&p],
            others,
        );
    }
    out
}

fn last_json(out: &Finished) -> Value {
    let last = out.stdout.lines().rev().find(|l| !l.trim().is_empty());
    serde_json::from_str(last.unwrap_or(""))
        .unwrap_or_else(|e| panic!("expected a JSON last line ({e}); stdout:\n{}", out.stdout))
}

#[test]
fn gateway_stop_saves_a_running_send_and_transfers_resume_finishes_it() {
    let _g = heavy();
    let t = setup();
    let size = 64 * MIB;
    let want = make_file(&t.src, size);
    let (recv, sels) = serve(&t.recv_state, &t.inbox, 1);
    let mut sender = Proc::spawn(
        "gateway send (rate-capped, to be stopped)",
        &send_args(&t.send_state, &t.src, &with_rate(&sels, "20MB")),
    );
    wait_durable(&t.recv_state, 8 * MIB, &mut sender, &recv);
    let out = run_ok(
        "gateway stop send",
        &[
            "--state".into(),
            s(&t.send_state),
            "stop".into(),
            "send".into(),
        ],
        &[&sender, &recv],
    );
    assert!(out.stdout.contains("stopped send"), "{}", out.stdout);
    let out = sender.finish(Duration::from_secs(30), &[&recv]);
    assert_eq!(out.status.code(), Some(130), "a stopped send exits 130");
    let saved = transfers(&t.send_state);
    assert_eq!(saved.len(), 1, "the stopped send is saved: {saved:?}");
    let id = saved[0]["id"].as_str().unwrap()[..8].to_string();
    // Nothing is left to stop.
    let out = run_ok(
        "gateway stop (nothing)",
        &["--state".into(), s(&t.send_state), "stop".into()],
        &[&recv],
    );
    assert!(out.stdout.contains("nothing to stop"), "{}", out.stdout);

    let out = run_ok(
        "gateway transfers resume",
        &[
            "--state".into(),
            s(&t.send_state),
            "transfers".into(),
            "resume".into(),
            id,
            "--json".into(),
        ],
        &[&recv],
    );
    let report = last_json(&out);
    check_resumed(&report, size, &[&recv]);
    check_delivered(&t, &report, size, &want, &[&recv]);
}

#[test]
fn transfers_cancel_forgets_both_sides_and_deletes_the_partial_file() {
    let _g = heavy();
    let t = setup();
    let size = 64 * MIB;
    make_file(&t.src, size);
    let (mut recv, sels) = serve(&t.recv_state, &t.inbox, 1);
    let mut sender = Proc::spawn(
        "gateway send (rate-capped, to be stopped)",
        &send_args(&t.send_state, &t.src, &with_rate(&sels, "20MB")),
    );
    wait_durable(&t.recv_state, 4 * MIB, &mut sender, &recv);
    sender.signal(Signal::SIGTERM);
    sender.finish(Duration::from_secs(30), &[&recv]);
    recv.signal(Signal::SIGTERM);
    recv.finish(Duration::from_secs(30), &[]);
    assert_eq!(
        part_files(&t.inbox).len(),
        1,
        "a part file waits for the rest"
    );
    for state in [&t.send_state, &t.recv_state] {
        let saved = transfers(state);
        assert_eq!(saved.len(), 1, "{saved:?}");
        let id = saved[0]["id"].as_str().unwrap()[..6].to_string();
        let out = run_ok(
            "gateway transfers cancel",
            &[
                "--state".into(),
                s(state),
                "transfers".into(),
                "cancel".into(),
                id,
            ],
            &[],
        );
        assert!(out.stdout.contains("cancelled"), "{}", out.stdout);
        assert!(transfers(state).is_empty(), "the record is gone");
    }
    assert!(
        part_files(&t.inbox).is_empty(),
        "the partial file was deleted"
    );
    let bad = gateway(&["--state", &s(&t.send_state), "transfers", "cancel", "zz"]);
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("not a transfer id"), "{}", bad.stderr);
}

// ------------------------------------------- completions, man page, conventions

/// The commands `gateway --help` lists (without `help`): the tests below
/// check every one of them, so a new command cannot be forgotten.
fn subcommand_names() -> Vec<String> {
    let out = gateway(&["--help"]);
    assert!(
        out.status.success(),
        "gateway --help: expected exit 0, got {:?}; stderr:\n{}",
        out.status,
        out.stderr
    );
    let names: Vec<String> = out
        .stdout
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    for want in ["serve", "send", "peers", "completions", "man"] {
        assert!(
            names.iter().any(|n| n == want),
            "gateway --help: expected {want:?} among the commands, got {names:?} from:\n{}",
            out.stdout
        );
    }
    names
}

fn ok(out: &Finished, what: &str) {
    assert!(
        out.status.success(),
        "{what}: expected exit 0, got {:?}; stderr:\n{}",
        out.status,
        out.stderr
    );
}

#[test]
fn bash_completions_name_every_subcommand_and_every_shell_gets_a_script() {
    let names = subcommand_names();
    let bash = gateway(&["completions", "bash"]);
    ok(&bash, "completions bash");
    assert!(
        bash.stdout.contains("complete -F _gateway"),
        "completions bash: expected a bash `complete` registration, got:\n{}",
        bash.stdout
    );
    for n in names.iter().map(String::as_str).chain(["add", "remove"]) {
        assert!(
            bash.stdout.split_whitespace().any(|w| w == n)
                || bash.stdout.contains(&format!("gateway__{n}")),
            "completions bash: expected the command {n:?} in the script"
        );
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = gateway(&["completions", shell]);
        ok(&out, &format!("completions {shell}"));
        assert!(
            out.stdout.contains("send") && out.stdout.contains("--to"),
            "completions {shell}: expected `send` and `--to` in the script, got:\n{}",
            out.stdout
        );
    }
}

#[test]
fn completions_for_an_unknown_shell_exit_2_and_list_the_known_ones() {
    let out = gateway(&["completions", "tcsh"]);
    assert_error(
        &out,
        2,
        &["tcsh", "bash", "zsh", "fish", "powershell"],
        "completions tcsh",
    );
    assert!(
        out.stdout.is_empty(),
        "completions tcsh: expected nothing on stdout, got:\n{}",
        out.stdout
    );
}

/// The codes listed under `.SH "EXIT STATUS"` in a man page.
fn man_exit_codes(page: &str) -> Vec<u8> {
    page.lines()
        .skip_while(|l| *l != ".SH \"EXIT STATUS\"")
        .skip(1)
        .take_while(|l| !l.starts_with(".SH"))
        .filter_map(|l| l.strip_prefix("\\fB")?.strip_suffix("\\fR")?.parse().ok())
        .collect()
}

/// `groff -man -ww` has nothing to say about `page` (skipped without groff).
fn groff_is_happy(page: &Path) {
    match Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .arg(page)
        .output()
    {
        Ok(o) => assert!(
            o.status.success() && o.stderr.is_empty(),
            "groff -man -ww {}: {:?}\n{}",
            page.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => eprintln!(
            "SKIPPED: groff not installed; {} not typeset",
            page.display()
        ),
    }
}

#[test]
fn man_is_roff_with_a_section_per_subcommand_exit_status_and_environment() {
    let names = subcommand_names();
    let out = gateway(&["man"]);
    ok(&out, "man");
    let page = out.stdout;
    assert!(
        page.lines().any(|l| l.starts_with(".TH GATEWAY 1 ")),
        "man: expected a .TH GATEWAY 1 title, got:\n{page}"
    );
    for h in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS"] {
        assert!(
            page.lines().any(|l| l == format!(".SH {h}")),
            "man: expected a {h} section, got:\n{page}"
        );
    }
    for h in ["EXIT STATUS", "ENVIRONMENT"] {
        assert!(
            page.lines()
                .any(|l| l == format!(".SH \"{h}\"") || l == format!(".SH {h}")),
            "man: expected an {h} section, got:\n{page}"
        );
    }
    for n in names
        .iter()
        .map(|n| n.to_string())
        .chain(["peers add".into()])
    {
        assert!(
            page.lines().any(|l| l == format!(".SS \"gateway {n}\"")),
            "man: expected a subsection for `gateway {n}`, got:\n{page}"
        );
    }
    assert_eq!(
        man_exit_codes(&page),
        vec![0, 1, 2, 75, 130],
        "man: EXIT STATUS should list every code the binary uses"
    );
    for var in [
        "GATEWAY_STATE",
        "GATEWAY_NAME",
        "GATEWAY_TYPE",
        "GATEWAY_TRUST",
        "RUST_LOG",
    ] {
        assert!(
            page.contains(&format!("\\fB{var}\\fR")),
            "man: expected {var} under ENVIRONMENT, got:\n{page}"
        );
    }
    assert!(
        page.is_ascii(),
        "man: expected an ASCII page (groff escapes for the rest)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("gateway.1");
    std::fs::write(&file, &page).expect("write the page");
    groff_is_happy(&file);
}

#[test]
fn man_dir_writes_gateway_1_and_a_page_per_subcommand() {
    let names = subcommand_names();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = gateway(&["man", "--dir", &s(dir.path())]);
    ok(&out, "man --dir");
    let whole = gateway(&["man"]);
    let top = std::fs::read_to_string(dir.path().join("gateway.1")).expect("gateway.1");
    assert_eq!(
        top, whole.stdout,
        "man --dir: gateway.1 should be the page `gateway man` prints"
    );
    for n in names
        .iter()
        .map(|n| n.to_string())
        .chain(["peers-add".into(), "peers-remove".into()])
    {
        let path = dir.path().join(format!("gateway-{n}.1"));
        let page = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("man --dir: expected {}: {e}", path.display()));
        assert!(
            out.stdout.lines().any(|l| l == s(&path)),
            "man --dir: expected {} among the printed paths, got:\n{}",
            path.display(),
            out.stdout
        );
        assert_eq!(
            man_exit_codes(&page),
            vec![0, 1, 2, 75, 130],
            "{}: EXIT STATUS",
            path.display()
        );
        groff_is_happy(&path);
    }
}

#[test]
fn readme_exit_codes_are_the_ones_the_man_page_lists() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let table: Vec<u8> = readme
        .lines()
        .skip_while(|l| *l != "### Exit codes")
        .skip(1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            l.trim_start_matches('|')
                .split('|')
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .collect();
    let man = gateway(&["man"]);
    ok(&man, "man");
    assert_eq!(
        table,
        man_exit_codes(&man.stdout),
        "README's Exit codes table and the man page's EXIT STATUS differ"
    );
}

#[test]
fn every_listing_command_prints_json_with_json() {
    let t = setup_unpaired();
    let state = s(&t.send_state);
    for args in [
        &["id", "--json"][..],
        &["peers", "--browse", "0", "--json"],
        &["links", "--json"],
        &["transfers", "--json"],
        &["config", "show", "--json"],
    ] {
        let out = gateway(&[&["--state", &state][..], args].concat());
        let what = args.join(" ");
        ok(&out, &what);
        if let Err(e) = serde_json::from_str::<Value>(out.stdout.trim()) {
            panic!(
                "{what}: expected JSON on stdout ({e}), got:\n{}",
                out.stdout
            );
        }
    }
}

#[test]
fn quiet_and_verbose_together_are_a_usage_error() {
    let out = gateway(&["-q", "-v", "links"]);
    assert_error(&out, 2, &["--quiet", "--verbose"], "-q -v");
}

#[test]
fn peers_add_takes_the_global_name_option_after_the_command() {
    let t = setup_unpaired();
    let state = s(&t.send_state);
    let out = gateway(&[
        "--state",
        &state,
        "peers",
        "add",
        "nas",
        "tcp:10.8.0.7:7878",
        "--name",
        "laptop",
    ]);
    ok(&out, "peers add … --name");
    let listed = gateway(&["--state", &state, "peers", "--browse", "0"]);
    ok(&listed, "peers");
    assert!(
        listed.stdout.contains("nas") && listed.stdout.contains("tcp:10.8.0.7:7878"),
        "peers: expected the static address of nas, got:\n{}",
        listed.stdout
    );
}

#[test]
fn a_listing_whose_reader_went_away_exits_0_without_a_panic() {
    let t = setup_unpaired();
    for args in [&["links"][..], &["transfers"], &["config", "show"]] {
        let mut child = Command::new(BIN)
            .args([&["--state", &s(&t.send_state)][..], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader leaves before the first byte is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
