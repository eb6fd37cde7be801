//! Hardware in the loop: the `rfcomm:` and `l2cap:` drivers over a real
//! radio, both ends in this process. The listening end takes the adapter
//! whose address is `$GATEWAY_HIL_BT`, the opening end whichever other
//! adapter the kernel routes through: two adapters in one machine (the qemu
//! rig's `btvirt -l2`, or two dongles), or set `GATEWAY_HIL_BT_PEER` to an
//! address of another machine already running `gateway serve --listen
//! rfcomm:any` (then only the open side runs here). Without GATEWAY_HIL_BT
//! every test prints why it is skipped and passes.
//!
//! ```sh
//! GATEWAY_HIL_BT=AA:BB:CC:DD:EE:FF cargo test -p gateway-bluez --test hil -- --test-threads=1
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_bluez::{L2capDriver, RfcommDriver};
use gateway_link::{Registry, conformance};

const RUN: &str = "on a machine with two Bluetooth adapters (or the qemu rig: hil-tests/rig.sh bt): \
GATEWAY_HIL_BT=<address of the listening adapter> cargo test -p gateway-bluez --test hil -- --test-threads=1";

fn adapter(test: &str) -> Option<String> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "gateway_bluez=info".into()),
        )
        .with_test_writer()
        .try_init();
    match std::env::var("GATEWAY_HIL_BT") {
        Ok(a) if !a.trim().is_empty() => Some(a.trim().to_string()),
        _ => {
            eprintln!("SKIPPED {test}: GATEWAY_HIL_BT is not set; run: {RUN}");
            None
        }
    }
}

fn registry() -> Registry {
    let mut reg = Registry::new();
    reg.register(Arc::new(RfcommDriver));
    reg.register(Arc::new(L2capDriver));
    reg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfcomm_on_a_plain_socket_passes_the_link_conformance_suite() {
    let Some(a) = adapter("rfcomm_plain") else {
        return;
    };
    conformance::run_all(&registry(), &format!("rfcomm:{a}/11?sdp=0"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfcomm_behind_an_sdp_record_passes_the_link_conformance_suite() {
    let Some(_) = adapter("rfcomm_sdp") else {
        return;
    };
    // On `any`, so bluetoothd (when it answers) holds the channel and its
    // SDP record and hands connections over; without it, a plain socket.
    conformance::run_all(&registry(), "rfcomm:any/12")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2cap_br_edr_passes_the_link_conformance_suite() {
    let Some(a) = adapter("l2cap_bredr") else {
        return;
    };
    conformance::run_all(&registry(), &format!("l2cap:{a}/0x1051"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2cap_le_credit_based_passes_the_link_conformance_suite() {
    let Some(a) = adapter("l2cap_le") else { return };
    conformance::run_all(&registry(), &format!("l2cap:{a}/0x91?le=public"))
        .await
        .unwrap();
}

/// The peer starts listening 3 s after `open` began: the first connects are
/// refused, the retry with back-off gets through once it listens. Channel 27
/// and PSM 0x1053: nothing of BlueZ's own sits there (13, used before, is
/// BlueZ's default HFP AG channel, which answered before our listener was up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_retries_until_the_peer_listens() {
    let Some(a) = adapter("retry") else { return };
    let reg = Arc::new(registry());
    for sel in [format!("rfcomm:{a}/27?sdp=0"), format!("l2cap:{a}/0x1053")] {
        let started = Instant::now();
        let (r2, s2) = (reg.clone(), sel.clone());
        let listener = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut l = r2.listen(&s2).await.expect("listen");
            l.accept().await.expect("accept")
        });
        let sep = if sel.contains('?') { '&' } else { '?' };
        let opened = reg.open(&format!("{sel}{sep}timeout=30s")).await;
        let took = started.elapsed();
        let link = opened.unwrap_or_else(|e| panic!("{sel}: open with retries failed: {e}"));
        // Bounded: a connect that "worked" but never reached the listener
        // must fail this test, not hang it.
        let _accepted = tokio::time::timeout(Duration::from_secs(30), listener)
            .await
            .unwrap_or_else(|_| {
                panic!("{sel}: open returned, but the listener accepted nothing within 30 s")
            })
            .unwrap();
        assert!(
            took >= Duration::from_millis(2900),
            "{sel}: opened after {took:?}, before the listener existed?"
        );
        println!(
            "RETRY {sel}: the listener came up 3 s late; open connected after {:.1} s (to {})",
            took.as_secs_f64(),
            link.info().peer
        );
    }
}
