//! The serial driver over a virtual null-modem cable made in this process:
//! two PTYs whose masters a pair of threads bridge, so both slave ends
//! (/dev/pts/N) behave as serial devices joined by a wire, and no system
//! package (socat) is needed. The conformance suite, noise on the wire,
//! error texts, and (ignored) a throughput figure against the raw cable.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gateway_link::{
    Adapter, Link, LinkDriver, LinkError, Listener, OpenError, Registry, Selector, conformance,
};
use gateway_serial::SerialDriver;
use gateway_serial::cable::{Cable, End};

/// A fresh in-process cable (`gateway_serial::cable`).
fn cable() -> Cable {
    Cable::new().expect("two PTYs for a cable")
}

/// The serial driver, except that a listener on one end of a cable names the
/// other end as its `local_selector`, which is what the conformance suite
/// opens: on a real cable each side names its own device.
struct CableDriver {
    inner: SerialDriver,
    ends: Vec<(String, String)>,
}

#[async_trait]
impl LinkDriver for CableDriver {
    fn scheme(&self) -> &'static str {
        "serial"
    }
    fn describe(&self) -> &'static str {
        "serial over an in-process PTY cable"
    }
    async fn probe(&self) -> Vec<Adapter> {
        self.inner.probe().await
    }
    async fn open(&self, sel: &Selector) -> Result<Box<dyn Link>, OpenError> {
        self.inner.open(sel).await
    }
    async fn listen(&self, sel: &Selector) -> Result<Box<dyn Listener>, OpenError> {
        let inner = self.inner.listen(sel).await?;
        let mine = inner.local_selector();
        let other = self
            .ends
            .iter()
            .find_map(|(x, y)| {
                let at = format!("serial:{x}@");
                mine.starts_with(&at)
                    .then(|| mine.replacen(&at, &format!("serial:{y}@"), 1))
            })
            .unwrap_or(mine);
        Ok(Box::new(OtherEnd { inner, other }))
    }
}

struct OtherEnd {
    inner: Box<dyn Listener>,
    other: String,
}

#[async_trait]
impl Listener for OtherEnd {
    fn local_selector(&self) -> String {
        self.other.clone()
    }
    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        self.inner.accept().await
    }
}

fn registry(c: &Cable) -> Registry {
    registry_between(&c.a, &c.b)
}

/// The serial driver, with `a` and `b` the two ends of one cable.
fn registry_between(a: &str, b: &str) -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(CableDriver {
        inner: SerialDriver::new(),
        ends: vec![
            (a.to_string(), b.to_string()),
            (b.to_string(), a.to_string()),
        ],
    }));
    r
}

/// Hardware in the loop: a real serial pair whose both ends are on this
/// machine, e.g. a USB CDC-ACM gadget looped back (the qemu rig:
/// `GATEWAY_HIL_SERIAL=/dev/ttyACM0 GATEWAY_HIL_SERIAL_PEER=/dev/ttyGS0`), or
/// two USB-serial adapters joined by a null-modem cable. Skipped, with the
/// reason printed, when those are unset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hil_conformance_over_a_real_serial_pair() {
    let (Ok(a), Ok(b)) = (
        std::env::var("GATEWAY_HIL_SERIAL"),
        std::env::var("GATEWAY_HIL_SERIAL_PEER"),
    ) else {
        eprintln!(
            "skipped: set GATEWAY_HIL_SERIAL=DEV and GATEWAY_HIL_SERIAL_PEER=DEV (both ends of one serial pair on this machine) to run the conformance suite over real hardware"
        );
        return;
    };
    conformance::run_all(&registry_between(&a, &b), &format!("serial:{b}"))
        .await
        .unwrap();
}

/// A session over the cable: the listener on `b`, the end opened from `a`,
/// and the end the listener accepted.
async fn session(reg: &Registry, c: &Cable) -> (Box<dyn Listener>, Box<dyn Link>, Box<dyn Link>) {
    let mut l = reg.listen(&format!("serial:{}", c.b)).await.unwrap();
    let target = format!("serial:{}", c.a);
    let (a, b) = tokio::join!(reg.open(&target), l.accept());
    (l, a.unwrap(), b.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_a_pty_cable() {
    let c = cable();
    conformance::run_all(&registry(&c), &format!("serial:{}", c.a))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_xon_xoff_and_a_baud_rate() {
    // With ?flow=sw the tty itself eats 0x11/0x13; the frames (full of both)
    // must still arrive intact.
    let c = cable();
    let reg = registry(&c);
    let sel = format!("serial:{}@3000000?flow=sw", c.a);
    conformance::ordering(&reg, &sel).await.unwrap();
    conformance::max_frame(&reg, &sel).await.unwrap();
    conformance::reconnect(&reg, &sel).await.unwrap();
}

/// Noise on the wire mid-transfer: the segments it hit are dropped and sent
/// again, so every frame arrives, intact and in order, and the link stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_on_the_wire_costs_resends_not_frames() {
    let c = cable();
    let reg = registry(&c);
    let (_l, a, b) = session(&reg, &c).await;
    let (mut tx, _arx) = a.split();
    let (_btx, mut rx) = b.split();
    let before = gateway_serial::counters();
    let frame = |i: u32, len: usize| -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|j| (j as u32 * 7 + i) as u8).collect();
        v[..4].copy_from_slice(&i.to_le_bytes());
        v
    };
    const NOISY: u32 = 300;
    const CLEAN: u32 = 50;
    let sender = tokio::spawn(async move {
        for i in 0..NOISY + CLEAN {
            tx.send(&frame(i, 2000 + (i as usize * 37) % 3000))
                .await
                .unwrap();
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        tx
    });
    // Garbage into the a→b direction while the first frames travel.
    let mut to_b = c.inject(End::B).unwrap();
    let noise = std::thread::spawn(move || {
        let mut x = 0x9e37_79b9u32;
        for _ in 0..60 {
            let junk: Vec<u8> = (0..50)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            to_b.write_all(&junk).unwrap();
            std::thread::sleep(Duration::from_micros(300));
        }
    });
    let mut got = Vec::new();
    for want in 0..NOISY + CLEAN {
        let f = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("every frame should arrive within 20 s")
            .expect("the link should stay up through the noise");
        let i = u32::from_le_bytes(f[..4].try_into().unwrap());
        assert_eq!(i, want, "frame {i} arrived where frame {want} belongs");
        assert!(
            f[..] == frame(i, f.len())[..] && f.len() == 2000 + (i as usize * 37) % 3000,
            "frame {i} arrived altered"
        );
        got.push(i);
    }
    noise.join().unwrap();
    let mut tx = sender.await.unwrap();
    let after = gateway_serial::counters();
    let corrupt = after.dropped_corrupt - before.dropped_corrupt;
    let resent = after.resent_segments - before.resent_segments;
    println!(
        "{} of {} frames arrived; counters: {corrupt} corrupt, {} oversized, {} bytes discarded, {resent} segments sent again",
        got.len(),
        NOISY + CLEAN,
        after.dropped_oversized - before.dropped_oversized,
        after.discarded_bytes - before.discarded_bytes
    );
    assert!(
        corrupt == 0 || resent > 0,
        "{corrupt} packets were dropped as corrupt and nothing was sent again"
    );
    assert!(
        after.discarded_bytes > before.discarded_bytes,
        "3000 bytes of noise went by and nothing was discarded"
    );
    // Still a working link both ways.
    tx.send(b"still here").await.unwrap();
    assert_eq!(&rx.recv().await.unwrap()[..], b"still here");
}

/// The cable's garbling knob, as the node tests use it, in both directions
/// (frames one way, acks the other): every frame still arrives, intact and
/// in order, because damaged segments are sent again; the driver counts the
/// damaged packets and the resends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_garbled_both_ways_delivers_every_frame_intact_and_in_order() {
    let c = cable();
    let reg = registry(&c);
    let (_l, a, b) = session(&reg, &c).await;
    let (mut tx, _arx) = a.split();
    let (_btx, mut rx) = b.split();
    let before = gateway_serial::counters();
    const GARBLED: u32 = 200;
    const CLEAN: u32 = 20;
    let frame = |i: u32| -> Vec<u8> {
        let mut v: Vec<u8> = (0..4096u32).map(|j| (j * 13 + i) as u8).collect();
        v[..4].copy_from_slice(&i.to_le_bytes());
        v
    };
    c.garble(End::B, 16 << 10);
    c.garble(End::A, 2 << 10);
    let receiver = tokio::spawn(async move {
        let mut got = Vec::new();
        for want in 0..GARBLED + CLEAN {
            let f = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("every frame should arrive within 20 s")
                .expect("the link should stay up while garbled");
            let i = u32::from_le_bytes(f[..4].try_into().unwrap());
            assert_eq!(i, want, "frame {i} arrived where {want} belongs");
            assert!(f[..] == frame(i)[..], "frame {i} arrived altered");
            got.push(i);
        }
        got
    });
    for i in 0..GARBLED {
        tx.send(&frame(i)).await.unwrap();
    }
    c.garble(End::B, 0);
    c.garble(End::A, 0);
    for i in GARBLED..GARBLED + CLEAN {
        tx.send(&frame(i)).await.unwrap();
    }
    let got = receiver.await.unwrap();
    let after = gateway_serial::counters();
    println!(
        "{} of {} frames arrived; {} + {} bytes flipped (frames, acks), {} packets counted corrupt, {} segments sent again",
        got.len(),
        GARBLED + CLEAN,
        c.garbled(End::B),
        c.garbled(End::A),
        after.dropped_corrupt - before.dropped_corrupt,
        after.resent_segments - before.resent_segments
    );
    assert!(c.garbled(End::B) > 0);
    assert!(after.dropped_corrupt > before.dropped_corrupt);
    assert!(after.resent_segments > before.resent_segments);
    assert_eq!(got.len(), (GARBLED + CLEAN) as usize);
}

/// The opening end comes back (its process restarted) while the listening
/// end still holds the old link: the old link fails at once instead of after
/// the silence timeout, and the listener accepts the new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_line_replaces_the_old_session_at_once() {
    let c = cable();
    let reg = Arc::new(registry(&c));
    let mut l = reg.listen(&format!("serial:{}", c.b)).await.unwrap();
    let target = format!("serial:{}", c.a);
    let (a1, b1) = tokio::join!(reg.open(&target), l.accept());
    drop(a1.unwrap());
    let reg2 = reg.clone();
    let t2 = target.clone();
    let reopen = tokio::spawn(async move { reg2.open(&t2).await });
    let (_b1tx, mut b1rx) = b1.unwrap().split();
    let start = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(5), b1rx.recv())
        .await
        .expect("the old link should fail well before the silence timeout")
        .expect_err("the old link must not deliver anything");
    assert!(e.to_string().contains("opened the line anew"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    drop((_b1tx, b1rx));
    let b2 = l.accept().await.unwrap();
    let a2 = reopen.await.unwrap().unwrap();
    let (mut atx, _arx) = a2.split();
    let (_btx, mut brx) = b2.split();
    atx.send(b"second session").await.unwrap();
    assert_eq!(&brx.recv().await.unwrap()[..], b"second session");
}

/// The listening end dropped its link; the opening end, still sending, is
/// told by RST and fails at once instead of after the silence timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opener_whose_session_the_listener_dropped_is_reset() {
    let c = cable();
    let reg = registry(&c);
    let (mut l, a, b) = session(&reg, &c).await;
    drop(b);
    // The listener waits for the next HELLO and answers stray DATA.
    let accepting = tokio::spawn(async move {
        let r = l.accept().await.map(|_| ());
        (l, r)
    });
    let (mut atx, mut arx) = a.split();
    atx.send(b"anyone there?").await.unwrap();
    let start = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(5), arx.recv())
        .await
        .expect("RST should arrive well before the silence timeout")
        .expect_err("nobody answers this link");
    assert!(e.to_string().contains("no session for this link"), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(
        atx.send(b"more").await.is_err(),
        "a reset link must not send"
    );
    drop((atx, arx));
    // And the listener still takes a new session.
    let a2 = reg.open(&format!("serial:{}", c.a)).await.unwrap();
    let (_l, accepted) = accepting.await.unwrap();
    accepted.unwrap();
    drop(a2);
}

#[tokio::test]
async fn a_missing_device_says_which_and_why() {
    let reg = registry(&cable());
    for op in ["open", "listen"] {
        let sel = "serial:/dev/ttyACM99";
        let e = match op {
            "open" => reg.open(sel).await.err(),
            _ => reg.listen(sel).await.err(),
        }
        .expect("no such device");
        let msg = e.to_string();
        assert!(
            matches!(e, OpenError::NotFound(_)),
            "{op}: expected NotFound, got {e:?}"
        );
        assert!(
            msg.contains("/dev/ttyACM99") && msg.contains("plugged"),
            "{op}: {msg}"
        );
    }
}

#[tokio::test]
async fn bad_selectors_and_non_devices_are_refused_clearly() {
    let reg = registry(&cable());
    gateway_link::conformance::expect_open_errors(
        &reg,
        &[
            ("serial:/dev/ttyACM0@fast", "baud rate from 1 to"),
            ("serial:/dev/ttyACM0@0", "baud rate"),
            ("serial:dev/ttyACM0", "device path"),
            ("serial:/dev/ttyACM0?flow=maybe", "flow=maybe"),
            ("serial:/etc/hostname", "not a serial device"),
            ("serial:/dev/null", "cannot open /dev/null"),
        ],
    )
    .await;
}

#[tokio::test]
async fn open_without_a_listener_times_out_and_says_what_to_start() {
    let c = cable();
    let start = Instant::now();
    let e = registry(&c)
        .open(&format!("serial:{}?timeout=600ms", c.a))
        .await
        .err()
        .expect("nobody listens on the other end");
    let took = start.elapsed();
    assert!(
        matches!(e, OpenError::Timeout(_)),
        "expected Timeout, got {e:?}"
    );
    assert!(
        e.to_string().contains("gateway serve --listen serial:"),
        "{e}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "timeout=600ms took {took:?}"
    );
}

#[tokio::test]
async fn a_device_in_use_is_busy() {
    let c = cable();
    let reg = registry(&c);
    let _l = reg.listen(&format!("serial:{}", c.a)).await.unwrap();
    let e = reg
        .listen(&format!("serial:{}", c.a))
        .await
        .err()
        .expect("the device is held by the first listener");
    assert!(matches!(e, OpenError::Busy(_)), "expected Busy, got {e:?}");
    assert!(e.to_string().contains(&c.a), "{e}");
}

#[tokio::test]
async fn permission_denied_names_the_group_to_join() {
    if nix::unistd::geteuid().is_root() {
        println!("skipping: root may open any device, so there is no permission error to see");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let c = cable();
    std::fs::set_permissions(&c.a, std::fs::Permissions::from_mode(0o000)).unwrap();
    let e = registry(&c)
        .open(&format!("serial:{}", c.a))
        .await
        .err()
        .expect("the device is mode 000");
    let msg = e.to_string();
    assert!(
        matches!(e, OpenError::PermissionDenied { .. }),
        "expected PermissionDenied, got {e:?}"
    );
    assert!(
        msg.contains(&c.a) && msg.contains("group") && msg.contains("udev/"),
        "{msg}"
    );
}

#[tokio::test]
async fn probe_lists_only_serial_devices() {
    let adapters = SerialDriver::new().probe().await;
    for a in &adapters {
        assert_eq!(a.scheme, "serial");
        let name = a.name.rsplit('/').next().unwrap();
        assert!(
            ["ttyACM", "ttyUSB", "ttyGS", "ttyS"]
                .iter()
                .any(|p| name.starts_with(p)),
            "{a:?}"
        );
    }
    println!("{adapters:#?}");
}

/// 64 MiB in 1 MiB frames over the cable, then the same bytes over the same
/// cable with no framing at all, through the same tokio-serial ports; five
/// rounds, each framed run followed by a raw one. Also the CPU time this
/// process spent (driver, bridge threads, test), per run.
/// `cargo test --release -p gateway-serial --test serial -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; run it with --release"]
async fn throughput_64_mib_framed_vs_raw() {
    const FRAME: usize = 1 << 20;
    const FRAMES: usize = 64;
    const ROUNDS: usize = 5;
    let c = cable();
    let reg = registry(&c);
    let base: Vec<u8> = (0..FRAME).map(|i| (i * 31 % 251) as u8).collect();
    let (mut framed, mut raw, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut framed_cpu, mut raw_cpu) = (Vec::new(), Vec::new());
    for _round in 0..ROUNDS {
        // Framed, through the driver.
        let (l, a, b) = session(&reg, &c).await;
        let (mut tx, arx) = a.split();
        let (btx, mut rx) = b.split();
        let data = base.clone();
        let (start, cpu0) = (Instant::now(), cpu_seconds());
        let sender = tokio::spawn(async move {
            for _ in 0..FRAMES {
                tx.send(&data).await.unwrap();
            }
            tx
        });
        for i in 0..FRAMES {
            let f = rx.recv().await.unwrap();
            assert_eq!(f.len(), FRAME, "frame {i}");
        }
        let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        let f = (FRAME * FRAMES) as f64 / 1e6 / secs;
        drop(sender.await.unwrap());
        drop((rx, arx, btx, l));

        // Raw: the same bytes, written and read with no framing.
        let (r, rcpu) = raw_mb_s(&c.a, &c.b, &base, FRAMES).await;
        framed.push(f);
        raw.push(r);
        ratios.push(f / r);
        framed_cpu.push(cpu / (FRAME * FRAMES) as f64 * 1e6 * 1e3);
        raw_cpu.push(rcpu / (FRAME * FRAMES) as f64 * 1e6 * 1e3);
    }
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        v[v.len() / 2]
    };
    println!("serial over an in-process PTY cable, 64 MiB per run, medians of {ROUNDS}:");
    println!(
        "  framed (COBS + CRC32C, 1 MiB frames): {:6.1} MB/s  {:.2} ms CPU/MB   runs {framed:.1?}",
        med(&framed),
        med(&framed_cpu)
    );
    println!(
        "  raw (same ports, no framing):         {:6.1} MB/s  {:.2} ms CPU/MB   runs {raw:.1?}",
        med(&raw),
        med(&raw_cpu)
    );
    println!(
        "  framed/raw per round: median {:.2}  {ratios:.2?}",
        med(&ratios)
    );
}

/// User + system CPU time of this whole process so far.
fn cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

/// MB/s and CPU seconds of moving `n` x `chunk` from `a` to `b` with no framing.
async fn raw_mb_s(a: &str, b: &str, chunk: &[u8], n: usize) -> (f64, f64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The driver's link was just dropped; its control task may hold the
    // device a moment longer (the driver's own open waits the same way).
    let open = async |p: &str| {
        for _ in 0..100 {
            match tokio_serial::SerialStream::open(&tokio_serial::new(p, 115_200).exclusive(false))
            {
                Ok(s) => return s,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        panic!("{p} still busy after 1 s");
    };
    let (mut wa, mut rb) = (open(a).await, open(b).await);
    let total = chunk.len() * n;
    let data = chunk.to_vec();
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    let writer = tokio::spawn(async move {
        for _ in 0..n {
            AsyncWriteExt::write_all(&mut wa, &data).await.unwrap();
        }
        wa
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < total {
        let k = AsyncReadExt::read(&mut rb, &mut buf).await.unwrap();
        assert!(k > 0);
        got += k;
    }
    let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    drop(writer.await.unwrap());
    (total as f64 / 1e6 / secs, cpu)
}
