//! Finding peers with real mDNS (this host's interfaces) and real TCP
//! listeners in one process: a lying TXT record, two nodes with one name,
//! static addresses, and the identity exchange filling the peerstore.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gateway_discovery::{Advert, Advertiser};
use gateway_link::Registry;
use gateway_node::discover::{self, DiscoverOptions};
use gateway_node::serve::{ServeHandle, ServeOptions};
use gateway_node::{NodeConfig, NodeError, NodeState, trust};
use gateway_secure::NodeId;

/// A name no other test run on this network uses.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

fn node(dir: &Path, name: &str) -> NodeState {
    let mut st = NodeState::open(dir).unwrap();
    st.set_identity(Some(name), Some("server")).unwrap();
    st
}

async fn serve(st: NodeState, inbox: &Path, advertise: bool) -> ServeHandle {
    gateway_node::serve::start(
        st,
        NodeConfig::default(),
        Arc::new(gateway_node::registry::default_registry()),
        ServeOptions {
            dir: inbox.to_path_buf(),
            listen: vec!["tcp:0.0.0.0:0".into()],
            advertise,
        },
    )
    .await
    .unwrap()
}

fn reg() -> Arc<Registry> {
    Arc::new(gateway_node::registry::default_registry())
}

fn port_of(h: &ServeHandle) -> u16 {
    h.local_selectors[0]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Browses everyone for 2 s from `st`, as `gateway peers --browse 2` does.
async fn browse_all(st: &NodeState) -> discover::Discovery {
    let opts = DiscoverOptions {
        window: Duration::from_secs(2),
        want: None,
        settle: Duration::ZERO,
        mdns: true,
        scan: true,
    };
    discover::discover(st, &NodeConfig::default(), reg(), &opts)
        .await
        .unwrap()
}

/// One served node named `tag-…` (advertised or not) and a client node.
struct World {
    /// Holds the state directories until the test ends.
    root: tempfile::TempDir,
    name: String,
    server_id: String,
    server: ServeHandle,
    client: NodeState,
}

async fn world(tag: &str, advertise: bool) -> World {
    let root = tempfile::tempdir().unwrap();
    let name = unique(tag);
    let st = node(&root.path().join("a"), &name);
    let server_id = st.node_id.clone();
    let server = serve(st, &root.path().join("in"), advertise).await;
    let client = node(&root.path().join("b"), "client");
    World {
        root,
        name,
        server_id,
        server,
        client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_peer_is_found_verified_and_recorded_with_its_identity() {
    let World {
        root: _root,
        name,
        server_id,
        server: h,
        client,
    } = world("found", true).await;
    let route = discover::resolve(&client, &NodeConfig::default(), reg(), &name, true)
        .await
        .unwrap();
    assert_eq!(route.peer_id.as_str(), server_id);
    assert_eq!(route.name, name);
    assert!(!route.links.is_empty());
    let port = port_of(&h);
    assert!(
        route.links.iter().all(|l| l.ends_with(&format!(":{port}"))),
        "{route:?}"
    );
    assert!(route.found_after < Duration::from_secs(3), "{route:?}");
    // The identity exchange filled the peerstore.
    let rec = client.store().peer(&server_id).unwrap().unwrap();
    assert_eq!(rec.name, name);
    assert_eq!(rec.node_type, "server");
    assert!(!rec.ips.is_empty());
    assert!(!rec.links.is_empty());
    assert_eq!(rec.trust, trust::UNTRUSTED);
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txt_record_that_lies_about_the_node_id_is_flagged_not_used() {
    let root = tempfile::tempdir().unwrap();
    // A real node, not advertised...
    let honest = node(&root.path().join("honest"), "honest");
    let honest_id = NodeId::parse(&honest.node_id).unwrap();
    let h = serve(honest, &root.path().join("in"), false).await;
    // ...and a record that claims another id and name for its address.
    let fake_name = unique("liar");
    let fake_id = NodeState::open(&root.path().join("nobody"))
        .unwrap()
        .node_id;
    let adv = Advertiser::start(
        &Advert {
            node_id: fake_id.clone(),
            name: fake_name.clone(),
            node_type: "server".into(),
            version: 1,
            links: vec!["tcp".into()],
            bt: Vec::new(),
        },
        port_of(&h),
        "0.0.0.0".parse().unwrap(),
    )
    .unwrap();
    let client = node(&root.path().join("c"), "client");
    let cfg = NodeConfig {
        trust: gateway_secure::TrustPolicy::Tofu,
        ..NodeConfig::default()
    };
    let err = discover::resolve(&client, &cfg, reg(), &fake_name, true)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, NodeError::Other(_)), "{text}");
    assert!(text.contains("claims node id"), "{text}");
    // The key behind the lie is flagged and, even under TOFU, not trusted.
    let rec = client.store().peer(honest_id.as_str()).unwrap().unwrap();
    assert!(rec.flag.as_deref().unwrap().contains(&fake_id), "{rec:?}");
    assert_eq!(rec.trust, trust::UNTRUSTED);
    adv.stop().await;
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_with_one_name_are_told_apart_by_id_and_trust() {
    let root = tempfile::tempdir().unwrap();
    let name = unique("twin");
    let a = node(&root.path().join("a"), &name);
    let b = node(&root.path().join("b"), &name);
    let a_id = NodeId::parse(&a.node_id).unwrap();
    let b_id = NodeId::parse(&b.node_id).unwrap();
    let ha = serve(a, &root.path().join("ia"), true).await;
    let hb = serve(b, &root.path().join("ib"), true).await;
    let client = node(&root.path().join("c"), "client");
    let cfg = NodeConfig::default();
    let mut cfg_slow = cfg.clone();
    // Both must answer before the settle time ends.
    cfg_slow.discovery_settle = Duration::from_millis(1500);
    let err = discover::resolve(&client, &cfg_slow, reg(), &name, true)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("matches 2 nodes"), "{err}");
    assert!(
        err.contains(a_id.as_str()) && err.contains(b_id.as_str()),
        "{err}"
    );
    // By id, each is found alone.
    let by_id = discover::resolve(&client, &cfg, reg(), b_id.as_str(), true)
        .await
        .unwrap();
    assert_eq!(by_id.peer_id, b_id);
    // Trusting one makes the name mean that one, with a warning about the other.
    trust::set_trust(&client, &a_id, None, trust::PAIRED).unwrap();
    let r = discover::resolve(&client, &cfg_slow, reg(), &name, true)
        .await
        .unwrap();
    assert_eq!(r.peer_id, a_id);
    assert!(
        r.warnings.iter().any(|w| w.contains(b_id.as_str())),
        "{r:?}"
    );
    ha.shutdown().await.unwrap();
    hb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_address_reaches_a_peer_mdns_cannot_see() {
    let World {
        root: _root,
        name,
        server_id,
        server: h,
        client,
    } = world("static", false).await;
    let sel = format!("tcp:127.0.0.1:{}", port_of(&h));
    client.store().add_static_addr(&name, &sel, 1).unwrap();
    // mDNS off: only the static address can find it.
    let route = discover::resolve(&client, &NodeConfig::default(), reg(), &name, false)
        .await
        .unwrap();
    assert_eq!(route.peer_id.as_str(), server_id);
    assert!(route.links.contains(&sel), "{route:?}");
    // Nothing there: the error names what was tried and how to add an address.
    let missing = unique("missing");
    let err = discover::resolve(&client, &NodeConfig::default(), reg(), &missing, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("gateway peers add"), "{err}");
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_leaves_is_no_longer_live() {
    let World {
        root: _root,
        server_id,
        server: h,
        client,
        ..
    } = world("leaver", true).await;
    let d = browse_all(&client).await;
    assert!(
        d.verified.iter().any(|v| v.id.as_str() == server_id),
        "{d:?}"
    );
    h.shutdown().await.unwrap();
    let d = browse_all(&client).await;
    assert!(
        !d.verified.iter().any(|v| v.id.as_str() == server_id),
        "a stopped node still answered: {d:?}"
    );
    assert!(
        !d.sightings
            .iter()
            .any(|(s, _)| s.advert.node_id == server_id),
        "its record outlived the goodbye"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_serves_and_browses_does_not_list_itself() {
    let w = world("self", true).await;
    // The serving node's own state, opened a second time (as `gateway peers` would).
    let me = node(&w.root.path().join("a"), &w.name);
    let d = browse_all(&me).await;
    assert!(
        !d.verified.iter().any(|v| v.id.as_str() == w.server_id),
        "{d:?}"
    );
    assert!(me.store().peer(&w.server_id).unwrap().is_none());
    w.server.shutdown().await.unwrap();
}

/// `adv:NAME`: a mock link whose listeners "advertise" on the transport
/// itself, as a BLE peripheral does: `scan` reports every `adv:` listener.
struct AdvertisingDriver {
    listening: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl gateway_link::LinkDriver for AdvertisingDriver {
    fn scheme(&self) -> &'static str {
        "adv"
    }
    fn describe(&self) -> &'static str {
        "mock links that advertise themselves (discovery test)"
    }
    async fn probe(&self) -> Vec<gateway_link::Adapter> {
        Vec::new()
    }
    async fn open(
        &self,
        sel: &gateway_link::Selector,
    ) -> Result<Box<dyn gateway_link::Link>, gateway_link::OpenError> {
        let inner = gateway_link::Selector::parse(&format!("mock:{}", sel.address))?;
        gateway_link::mock::MockDriver.open(&inner).await
    }
    async fn listen(
        &self,
        sel: &gateway_link::Selector,
    ) -> Result<Box<dyn gateway_link::Listener>, gateway_link::OpenError> {
        self.listening
            .lock()
            .unwrap()
            .push(format!("adv:{}", sel.address));
        let inner = gateway_link::Selector::parse(&format!("mock:{}", sel.address))?;
        gateway_link::mock::MockDriver.listen(&inner).await
    }
    async fn scan(&self, _window: Duration, found: &gateway_link::ScanSink) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for s in self.listening.lock().unwrap().iter() {
            let _ = found.send(s.clone());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_no_address_known_and_no_mdns_record_is_found_by_a_transport_scan() {
    // No IP path in common: the receiver serves only on a transport that
    // advertises itself (BLE in real life) and is not on mDNS.
    let root = tempfile::tempdir().unwrap();
    let name = unique("scan");
    let st = node(&root.path().join("a"), &name);
    let server_id = st.node_id.clone();
    let mut r = gateway_node::registry::default_registry();
    r.register(Arc::new(AdvertisingDriver {
        listening: std::sync::Mutex::new(Vec::new()),
    }));
    let reg = Arc::new(r);
    let addr = unique("adv");
    let server = gateway_node::serve::start(
        st,
        NodeConfig::default(),
        reg.clone(),
        ServeOptions {
            dir: root.path().join("in"),
            listen: vec![format!("adv:{addr}")],
            advertise: false,
        },
    )
    .await
    .unwrap();
    let client = node(&root.path().join("b"), "client");
    let opts = DiscoverOptions {
        window: Duration::from_secs(2),
        want: Some(name.clone()),
        settle: Duration::from_millis(200),
        mdns: false,
        scan: true,
    };
    let d = discover::discover(&client, &NodeConfig::default(), reg, &opts)
        .await
        .unwrap();
    let v = d
        .verified
        .iter()
        .find(|v| v.id.as_str() == server_id)
        .unwrap_or_else(|| panic!("not found by the scan: {d:?}"));
    assert_eq!(v.selector, format!("adv:{addr}"));
    assert_eq!(v.source, discover::Source::Scan);
    assert_eq!(v.hello.name, name);
    // Recorded in the peerstore like any verified Hello.
    assert!(
        client
            .store()
            .peers()
            .unwrap()
            .iter()
            .any(|p| p.node_id == server_id)
    );
    server.shutdown().await.unwrap();
}
