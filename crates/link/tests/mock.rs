//! The mock driver, the registry, the rate cap and the fault injector, and the
//! conformance suite over mock links.

use std::time::{Duration, Instant};

use gateway_link::faulty::{FaultConfig, FaultSide, FaultyLink};
use gateway_link::{FrameRx, FrameTx, Link, LinkError, OpenError, Registry, conformance};

async fn pair(
    reg: &Registry,
    listen: &str,
    open: &str,
) -> (
    Box<dyn Link>,
    Box<dyn Link>,
    Box<dyn gateway_link::Listener>,
) {
    let mut l = reg.listen(listen).await.unwrap();
    let a = reg.open(open).await.unwrap();
    let b = l.accept().await.unwrap();
    (a, b, l)
}

fn tag_of(f: &[u8]) -> u32 {
    u32::from_le_bytes(f[..4].try_into().unwrap())
}

#[tokio::test]
async fn conformance_passes_on_plain_mock() {
    conformance::run_all(&Registry::new(), "mock:conf-plain")
        .await
        .unwrap();
}

#[tokio::test]
async fn conformance_passes_on_mock_with_delay_and_rate() {
    conformance::run_all(&Registry::new(), "mock:conf-slow?delay=2ms&rate=400MB")
        .await
        .unwrap();
}

#[tokio::test]
async fn conformance_reports_what_came_on_a_lossy_link() {
    let e = conformance::ordering(&Registry::new(), "mock:conf-lossy?loss=0.1")
        .await
        .unwrap_err();
    assert!(e.contains("reliable") && e.contains("loss"), "{e}");
}

#[tokio::test]
async fn rate_cap_paces_a_1mib_frame_at_10mb_to_a_tenth_of_a_second() {
    let reg = Registry::new();
    let (a, b, _l) = pair(&reg, "mock:rate-10mb", "mock:rate-10mb?rate=10MB").await;
    let (mut tx, _) = a.split();
    let (_, mut rx) = b.split();
    let frame = vec![7u8; 1 << 20];
    let start = Instant::now();
    for _ in 0..4 {
        tx.send(&frame).await.unwrap();
        rx.recv().await.unwrap();
    }
    let took = start.elapsed();
    // 4 MiB at 10 MB/s is 0.42 s, less one 10 ms burst.
    assert!(
        took > Duration::from_millis(350) && took < Duration::from_secs(3),
        "expected ~0.41 s, took {took:?}"
    );
}

#[tokio::test]
async fn rate_cap_on_the_listener_caps_what_the_accepted_end_receives() {
    let reg = Registry::new();
    let (a, b, _l) = pair(&reg, "mock:rate-listen?rate=2MB", "mock:rate-listen").await;
    let (mut tx, _) = a.split();
    let (_, mut rx) = b.split();
    let start = Instant::now();
    for _ in 0..4 {
        tx.send(&[0; 100_000]).await.unwrap();
    }
    for _ in 0..4 {
        rx.recv().await.unwrap();
    }
    let took = start.elapsed();
    assert!(
        took > Duration::from_millis(150),
        "400 kB at 2 MB/s: expected ~0.2 s, took {took:?}"
    );
}

#[tokio::test]
async fn delay_is_pipelined_not_serialised() {
    let reg = Registry::new();
    let (a, b, _l) = pair(&reg, "mock:delay-pipe", "mock:delay-pipe?delay=100ms").await;
    let (mut tx, _) = a.split();
    let (_, mut rx) = b.split();
    let start = Instant::now();
    for i in 0..20u32 {
        tx.send(&i.to_le_bytes()).await.unwrap();
    }
    for i in 0..20u32 {
        assert_eq!(tag_of(&rx.recv().await.unwrap()), i);
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(1200),
        "20 frames with 100 ms one-way delay: expected ~0.1 s (2 s if serialised), took {took:?}"
    );
}

#[tokio::test]
async fn listener_parameters_are_defaults_for_opens() {
    let reg = Registry::new();
    let (a, b, _l) = pair(&reg, "mock:delay-default?delay=80ms", "mock:delay-default").await;
    let (mut tx, _) = a.split();
    let (_, mut rx) = b.split();
    let start = Instant::now();
    tx.send(b"x").await.unwrap();
    rx.recv().await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(80),
        "took {:?}",
        start.elapsed()
    );
}

async fn lossy_run(name: &str) -> Vec<u32> {
    let reg = Registry::new();
    let (a, b, _l) = pair(
        &reg,
        &format!("mock:{name}"),
        &format!("mock:{name}?loss=0.3&seed=7"),
    )
    .await;
    assert!(
        !a.caps().reliable && !b.caps().reliable,
        "loss>0 must clear caps.reliable"
    );
    let (mut tx, _) = a.split();
    let (_, mut rx) = b.split();
    for i in 0..1000u32 {
        tx.send(&i.to_le_bytes()).await.unwrap();
    }
    tx.close().await.unwrap();
    let mut got = Vec::new();
    loop {
        match rx.recv().await {
            Ok(f) => got.push(tag_of(&f)),
            Err(LinkError::Closed) => return got,
            Err(e) => panic!("expected frames then Closed, got {e}"),
        }
    }
}

#[tokio::test]
async fn loss_is_seeded_and_deterministic() {
    let first = lossy_run("loss-1").await;
    let second = lossy_run("loss-2").await;
    assert!(
        (600..800).contains(&first.len()),
        "loss=0.3 of 1000: expected ~700 through, got {}",
        first.len()
    );
    assert_eq!(first, second, "same seed must lose the same frames");
}

#[tokio::test]
async fn die_after_kills_both_ends() {
    let reg = Registry::new();
    let (a, b, _l) = pair(&reg, "mock:die", "mock:die?die_after=10KB").await;
    let (mut atx, mut arx) = a.split();
    let (mut btx, mut brx) = b.split();
    for i in 0..10 {
        atx.send(&[0; 1000])
            .await
            .unwrap_or_else(|e| panic!("send {i} within 10 kB: {e}"));
    }
    let e = atx.send(&[0; 1000]).await.unwrap_err();
    assert!(
        matches!(&e, LinkError::Io(io) if io.to_string().contains("die_after")),
        "{e:?}"
    );
    assert!(matches!(btx.send(b"x").await, Err(LinkError::Io(_))));
    let e = brx.recv().await.unwrap_err();
    assert!(matches!(e, LinkError::Io(_)), "{e:?}");
    let e = tokio::time::timeout(Duration::from_secs(1), arx.recv())
        .await
        .expect("recv must not hang");
    assert!(matches!(e, Err(LinkError::Io(_))), "{e:?}");
}

#[tokio::test]
async fn opening_an_unknown_mock_name_is_refused() {
    let e = Registry::new()
        .open("mock:nobody-here")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, OpenError::Refused(m) if m.contains("no mock listener named nobody-here")),
        "{e}"
    );
}

#[tokio::test]
async fn dropping_a_listener_frees_its_name() {
    let reg = Registry::new();
    let l = reg.listen("mock:reuse").await.unwrap();
    let e = reg.listen("mock:reuse").await.err().unwrap();
    assert!(
        matches!(&e, OpenError::Busy(m) if m.contains("reuse")),
        "{e}"
    );
    drop(l);
    let _l = reg.listen("mock:reuse").await.unwrap();
    drop(_l);
    assert!(matches!(
        reg.open("mock:reuse").await,
        Err(OpenError::Refused(_))
    ));
}

#[tokio::test]
async fn unknown_scheme_lists_the_known_ones() {
    let e = Registry::new()
        .open("carrier-pigeon:roof")
        .await
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(
        matches!(e, OpenError::UnknownScheme { .. }) && msg.contains("known schemes: mock"),
        "{msg}"
    );
}

#[tokio::test]
async fn selector_without_scheme_says_the_form() {
    let e = Registry::new()
        .open("192.168.1.7")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("scheme:address"), "{e}");
    let e = Registry::new()
        .open("mock:x?rate=fast")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("rate=fast") && e.contains("10MB"), "{e}");
}

#[tokio::test]
async fn probe_lists_the_mock_adapter() {
    let a = Registry::new().probe_all().await;
    assert!(a.iter().any(|a| a.scheme == "mock" && a.usable), "{a:?}");
}

async fn faulty_pair(
    name: &str,
    cfg: FaultConfig,
) -> (
    Box<dyn FrameTx>,
    Box<dyn FrameRx>,
    Box<dyn gateway_link::Listener>,
) {
    let reg = Registry::new();
    let (a, b, l) = pair(&reg, &format!("mock:{name}"), &format!("mock:{name}")).await;
    let (tx, _) = FaultyLink::wrap(a, cfg).split();
    let (_, rx) = b.split();
    (tx, rx, l)
}

async fn send_and_collect(name: &str, cfg: FaultConfig, n: u32) -> Vec<Vec<u8>> {
    let (mut tx, mut rx, _l) = faulty_pair(name, cfg).await;
    for i in 0..n {
        tx.send(&[i.to_le_bytes(), [0xab; 4]].concat())
            .await
            .unwrap();
    }
    tx.close().await.unwrap();
    let mut got = Vec::new();
    while let Ok(f) = rx.recv().await {
        got.push(f.to_vec());
    }
    got
}

#[tokio::test]
async fn faulty_drops_are_deterministic_for_a_seed() {
    let cfg = FaultConfig {
        seed: 42,
        drop: 0.3,
        ..Default::default()
    };
    let a = send_and_collect("faulty-drop-1", cfg.clone(), 500).await;
    let b = send_and_collect("faulty-drop-2", cfg, 500).await;
    assert!(
        (280..420).contains(&a.len()),
        "drop=0.3 of 500: expected ~350, got {}",
        a.len()
    );
    assert_eq!(a, b, "same seed must drop the same frames");
    let c = send_and_collect(
        "faulty-drop-3",
        FaultConfig {
            seed: 43,
            drop: 0.3,
            ..Default::default()
        },
        500,
    )
    .await;
    assert_ne!(a, c, "another seed should drop other frames");
}

#[tokio::test]
async fn faulty_corrupts_and_duplicates() {
    let got = send_and_collect(
        "faulty-corrupt",
        FaultConfig {
            corrupt: 1.0,
            side: FaultSide::Send,
            ..Default::default()
        },
        50,
    )
    .await;
    assert_eq!(got.len(), 50);
    for (i, f) in got.iter().enumerate() {
        assert_ne!(
            f,
            &[(i as u32).to_le_bytes(), [0xab; 4]].concat(),
            "frame {i} should be corrupted"
        );
    }
    let got = send_and_collect(
        "faulty-dup",
        FaultConfig {
            duplicate: 1.0,
            ..Default::default()
        },
        10,
    )
    .await;
    assert_eq!(got.len(), 20, "duplicate=1.0: expected every frame twice");
    assert_eq!(got[0], got[1]);
}

#[tokio::test]
async fn faulty_disconnects_and_stalls_after_n_frames() {
    let (mut tx, mut rx, _l) = faulty_pair(
        "faulty-disc",
        FaultConfig {
            disconnect_after_frames: Some(5),
            ..Default::default()
        },
    )
    .await;
    for _ in 0..5 {
        tx.send(b"ok").await.unwrap();
    }
    assert!(matches!(tx.send(b"dead").await, Err(LinkError::Io(_))));
    for _ in 0..5 {
        rx.recv().await.unwrap();
    }
    let e = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("peer must see the link die");
    assert!(
        e.is_err(),
        "expected an error after the disconnect, got a frame"
    );

    let (mut tx, _rx, _l) = faulty_pair(
        "faulty-stall",
        FaultConfig {
            stall_after_frames: Some(3),
            ..Default::default()
        },
    )
    .await;
    for _ in 0..3 {
        tx.send(b"ok").await.unwrap();
    }
    let r = tokio::time::timeout(Duration::from_millis(200), tx.send(b"stuck")).await;
    assert!(
        r.is_err(),
        "send after stall_after_frames should hang, got {r:?}"
    );
}

/// A driver that truncates every frame to 1000 bytes: the suite must catch it
/// and say what it expected and what came.
mod liar {
    use async_trait::async_trait;
    use gateway_link::mock::MockDriver;
    use gateway_link::*;

    pub(crate) struct Liar;

    fn as_mock(sel: &Selector) -> Selector {
        Selector {
            scheme: "mock".into(),
            ..sel.clone()
        }
    }

    struct Truncating(Box<dyn Link>);
    struct TruncTx(Box<dyn FrameTx>);
    struct TruncListener(Box<dyn Listener>);

    impl Link for Truncating {
        fn caps(&self) -> LinkCaps {
            self.0.caps()
        }
        fn info(&self) -> &LinkInfo {
            self.0.info()
        }
        fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
            let (tx, rx) = self.0.split();
            (Box::new(TruncTx(tx)), rx)
        }
    }

    #[async_trait]
    impl FrameTx for TruncTx {
        async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
            self.0.send(&frame[..frame.len().min(1000)]).await
        }
        async fn close(&mut self) -> Result<(), LinkError> {
            self.0.close().await
        }
    }

    #[async_trait]
    impl Listener for TruncListener {
        fn local_selector(&self) -> String {
            self.0.local_selector().replacen("mock:", "liar:", 1)
        }
        async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
            Ok(Box::new(Truncating(self.0.accept().await?)))
        }
    }

    #[async_trait]
    impl LinkDriver for Liar {
        fn scheme(&self) -> &'static str {
            "liar"
        }
        fn describe(&self) -> &'static str {
            "truncates frames"
        }
        async fn probe(&self) -> Vec<Adapter> {
            Vec::new()
        }
        async fn open(&self, sel: &Selector) -> Result<Box<dyn Link>, OpenError> {
            Ok(Box::new(Truncating(MockDriver.open(&as_mock(sel)).await?)))
        }
        async fn listen(&self, sel: &Selector) -> Result<Box<dyn Listener>, OpenError> {
            Ok(Box::new(TruncListener(
                MockDriver.listen(&as_mock(sel)).await?,
            )))
        }
    }
}

#[tokio::test]
async fn conformance_catches_a_driver_that_truncates_frames() {
    let mut reg = Registry::new();
    reg.register(std::sync::Arc::new(liar::Liar));
    let e = conformance::run_all(&reg, "liar:conf-liar")
        .await
        .unwrap_err();
    for check in ["ordering:", "max_frame:", "large_frames:"] {
        assert!(e.contains(check), "expected {check} to fail, got:\n{e}");
    }
    for check in ["close:", "reconnect:", "half_dead:"] {
        assert!(
            !e.contains(check),
            "{check} should pass on a truncating driver, got:\n{e}"
        );
    }
    assert!(
        e.contains("expected frame") && e.contains("got 1000 bytes"),
        "{e}"
    );
    println!("{e}");
}
