//! The tcp driver over loopback: the conformance suite, error texts, throughput.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_link::{OpenError, Registry, conformance};
use gateway_tcp::TcpDriver;

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(TcpDriver::new()));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_ipv4_loopback() {
    conformance::run_all(&registry(), "tcp:127.0.0.1:0")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_ipv6_loopback() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        println!("skipping IPv6 conformance: cannot bind [::1]:0 on this machine ({e})");
        return;
    }
    conformance::run_all(&registry(), "tcp:[::1]:0")
        .await
        .unwrap();
}

#[tokio::test]
async fn conformance_with_a_rate_cap() {
    // 400 MB/s keeps the suite quick while every frame still goes through the bucket.
    conformance::reconnect(&registry(), "tcp:127.0.0.1:0?rate=400MB")
        .await
        .unwrap();
    conformance::max_frame(&registry(), "tcp:127.0.0.1:0?rate=400MB")
        .await
        .unwrap();
}

#[tokio::test]
async fn refused_connection_says_what_to_start() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = registry()
        .open(&format!("tcp:127.0.0.1:{port}"))
        .await
        .err()
        .expect("nothing listens there");
    let msg = e.to_string();
    assert!(
        matches!(e, OpenError::Refused(_)),
        "expected Refused, got {e:?}"
    );
    assert!(
        msg.contains(&format!("nothing listens on 127.0.0.1:{port}"))
            && msg.contains(&format!("gateway serve --listen tcp:0.0.0.0:{port}")),
        "{msg}"
    );
}

#[tokio::test]
async fn bad_selectors_say_the_form() {
    let reg = registry();
    gateway_link::conformance::expect_open_errors(
        &reg,
        &[
            ("tcp:localhost", "HOST:PORT"),
            ("tcp:::1:7878", "brackets"),
            ("tcp:127.0.0.1:99999", "port from 0 to 65535"),
            ("tcp::7878", "a host before the port"),
            ("tcp:127.0.0.1:7878?timeout=soon", "timeout=soon"),
            ("127.0.0.1:7878", "scheme:address"),
        ],
    )
    .await;
}

#[tokio::test]
async fn unresolvable_host_is_not_found() {
    let e = registry()
        .open("tcp:no-such-host.invalid:7878?timeout=3s")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(e, OpenError::NotFound(_) | OpenError::Timeout(_)),
        "{e:?}"
    );
}

#[tokio::test]
async fn connect_times_out_when_the_peer_never_answers() {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, getsockname, listen, socket,
    };
    use std::os::fd::AsRawFd;
    // A listener with a zero backlog that never accepts: once its queue is
    // full, the kernel drops further SYNs, so connects hang like to a dead host.
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let port = getsockname::<SockaddrIn>(fd.as_raw_fd()).unwrap().port();
    let reg = registry();
    let mut held = Vec::new();
    for _ in 0..8 {
        let start = Instant::now();
        match reg
            .open(&format!("tcp:127.0.0.1:{port}?timeout=300ms"))
            .await
        {
            Ok(link) => held.push(link),
            Err(e) => {
                let took = start.elapsed();
                assert!(
                    matches!(e, OpenError::Timeout(_)),
                    "expected Timeout, got {e:?}"
                );
                assert!(e.to_string().contains("timeout="), "{e}");
                assert!(took < Duration::from_secs(2), "timeout=300ms took {took:?}");
                return;
            }
        }
    }
    panic!("8 connects to a listener that never accepts all succeeded; expected a Timeout");
}

#[tokio::test]
async fn wildcard_listen_names_loopback_and_names_resolve() {
    let reg = registry();
    let mut l = reg.listen("tcp:0.0.0.0:0").await.unwrap();
    let sel = l.local_selector();
    let port: u16 = sel
        .strip_prefix("tcp:127.0.0.1:")
        .expect(&sel)
        .parse()
        .unwrap();
    assert_ne!(port, 0, "{sel}");
    let target = format!("tcp:localhost:{port}");
    let (a, b) = tokio::join!(reg.open(&target), l.accept());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.info().peer, format!("127.0.0.1:{port}"));
    assert_eq!(b.info().selector, sel);
}

#[tokio::test]
async fn probe_lists_loopback_with_its_address() {
    let adapters = registry()
        .drivers()
        .iter()
        .find(|d| d.scheme() == "tcp")
        .unwrap()
        .probe()
        .await;
    assert!(
        adapters
            .iter()
            .any(|a| a.usable && a.detail.contains("127.0.0.1")),
        "expected a usable interface with 127.0.0.1, got {adapters:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_256_mib_through_loopback() {
    const FRAME: usize = 1 << 20;
    const FRAMES: u64 = 256;
    let reg = registry();
    let mut l = reg.listen("tcp:127.0.0.1:0").await.unwrap();
    let target = l.local_selector();
    let (a, b) = tokio::join!(reg.open(&target), l.accept());
    let (mut tx, _arx) = a.unwrap().split();
    let (_btx, mut rx) = b.unwrap().split();
    let base: Vec<u8> = (0..FRAME).map(|i| (i * 31 % 251) as u8).collect();
    let expect = base.clone();
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        let mut frame = base;
        for i in 0..FRAMES {
            frame[..8].copy_from_slice(&i.to_le_bytes());
            tx.send(&frame).await.unwrap();
        }
        tx.close().await.unwrap();
    });
    for i in 0..FRAMES {
        let f = rx.recv().await.unwrap();
        assert_eq!(
            f.len(),
            FRAME,
            "frame {i}: expected {FRAME} bytes, got {}",
            f.len()
        );
        assert_eq!(
            u64::from_le_bytes(f[..8].try_into().unwrap()),
            i,
            "frame {i} out of order"
        );
        assert!(f[8..] == expect[8..], "frame {i}: content differs");
    }
    assert!(matches!(
        rx.recv().await,
        Err(gateway_link::LinkError::Closed)
    ));
    sender.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    let mb = (FRAMES as usize * FRAME) as f64 / 1e6;
    println!(
        "tcp loopback: {mb:.0} MB in {secs:.2} s = {:.0} MB/s",
        mb / secs
    );
}
