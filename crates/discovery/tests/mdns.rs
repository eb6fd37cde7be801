//! Real mDNS on this host (multicast on the interfaces mdns-sd finds,
//! loopback included): advertise, browse, withdraw, refuse bad records,
//! bound a flood.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use gateway_discovery::{Advert, Advertiser, BrowseEvent, Browser, SERVICE_TYPE};

fn advert(name: &str, id: &str) -> Advert {
    Advert {
        node_id: id.into(),
        name: name.into(),
        node_type: "server".into(),
        version: 1,
        links: vec!["tcp".into()],
        bt: Vec::new(),
    }
}

/// A node id unique to this test run, so parallel runs do not see each other.
fn unique_id(tag: char) -> String {
    // Distinct per call too: the flood test makes ids with the same tags as
    // the other tests of this process, and two equal ids mix their records.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let n = (std::process::id() as u64 * 1_000_003 + call * 7_919) ^ nanos;
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut s: String = std::iter::repeat_n(tag, 6).collect();
    let mut x = n;
    while s.len() < 26 {
        s.push(alphabet[(x % 32) as usize] as char);
        x = x / 32 + 7;
    }
    s.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("-")
}

async fn wait_for(
    b: &mut Browser,
    within: Duration,
    mut pred: impl FnMut(&BrowseEvent) -> bool,
) -> Option<BrowseEvent> {
    tokio::time::timeout(within, async {
        loop {
            let ev = b.next().await?;
            if pred(&ev) {
                return Some(ev);
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_finds_an_advertised_node_and_sees_it_leave() {
    let id = unique_id('a');
    let mut b = Browser::start(64).unwrap();
    let t0 = Instant::now();
    let adv = Advertiser::start(
        &advert("finder-test", &id),
        17878,
        IpAddr::from([0, 0, 0, 0]),
    )
    .unwrap();
    let found = wait_for(
        &mut b,
        Duration::from_secs(5),
        |e| matches!(e, BrowseEvent::Found(s) if s.advert.node_id == id),
    )
    .await
    .expect("the advertised node is found within 5 s");
    let BrowseEvent::Found(s) = found else {
        unreachable!()
    };
    eprintln!("found in {:?}: {s:?}", t0.elapsed());
    assert_eq!(s.advert.name, "finder-test");
    assert_eq!(s.advert.node_type, "server");
    assert!(
        s.addrs.iter().all(|a| a.port() == 17878),
        "every address carries the advertised port: {:?}",
        s.addrs
    );
    assert!(!s.addrs.is_empty());
    let instance = s.instance.clone();
    adv.stop().await;
    let gone = wait_for(
        &mut b,
        Duration::from_secs(5),
        |e| matches!(e, BrowseEvent::Gone { instance: i } if *i == instance),
    )
    .await;
    assert!(gone.is_some(), "the goodbye was seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_txt_record_is_ignored_with_a_reason() {
    let d = mdns_sd::ServiceDaemon::new().unwrap();
    let tag = unique_id('m');
    let props = [("id", "NOT AN ID!"), ("name", "liar")];
    let info = mdns_sd::ServiceInfo::new(
        SERVICE_TYPE,
        &format!("bad {tag}"),
        "bad-host.local.",
        "127.0.0.1",
        9,
        &props[..],
    )
    .unwrap();
    let full = info.get_fullname().to_string();
    let mut b = Browser::start(64).unwrap();
    d.register(info).unwrap();
    let ev = wait_for(&mut b, Duration::from_secs(5), |e| match e {
        BrowseEvent::Ignored { instance, .. } => *instance == full,
        BrowseEvent::Found(s) => s.instance == full,
        _ => false,
    })
    .await
    .expect("the record is reported");
    match ev {
        BrowseEvent::Ignored { why, .. } => assert!(why.contains("id"), "{why}"),
        other => panic!("a malformed record was accepted: {other:?}"),
    }
    let _ = d.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_services_is_bounded() {
    let d = mdns_sd::ServiceDaemon::new().unwrap();
    let tag = unique_id('f');
    let max = 8;
    let mut b = Browser::start(max).unwrap();
    for i in 0..40 {
        let id = unique_id(char::from(b'a' + (i % 26) as u8));
        let props = [("id", id.as_str()), ("name", "flood")];
        let info = mdns_sd::ServiceInfo::new(
            SERVICE_TYPE,
            &format!("flood {tag} {i}"),
            "flood-host.local.",
            "127.0.0.1",
            9,
            &props[..],
        )
        .unwrap();
        d.register(info).unwrap();
    }
    let mut found = std::collections::HashSet::new();
    let mut ignored = 0;
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), b.next()).await {
            Ok(Some(BrowseEvent::Found(s))) => {
                found.insert(s.instance);
            }
            Ok(Some(BrowseEvent::Ignored { why, .. })) if why.contains("more than") => ignored += 1,
            Ok(_) => {}
            Err(_) if found.len() >= max => break,
            Err(_) => {}
        }
    }
    assert!(found.len() <= max, "tracked {} > {max}", found.len());
    assert_eq!(found.len(), max, "the first {max} are still tracked");
    assert_eq!(ignored, 1, "the overflow is reported once");
    let _ = d.shutdown();
}
