//! Finding peers: mDNS sightings, static addresses (`gateway peers add`) and
//! the peerstore's last known links. Nothing is believed until it is
//! verified: connect, Noise handshake, Hello on the identity stream, and the
//! key must match any id the candidate was advertised with. Every verified
//! Hello is upserted into the peerstore.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_discovery::{BrowseEvent, Browser, MAX_SERVICES_DEFAULT, Sighting};
use gateway_link::Registry;
use gateway_proto::Hello;
use gateway_secure::{Decision, NodeId};
use tokio::task::JoinSet;

use crate::state::NodeState;
use crate::{NodeConfig, NodeError, trust, wire};

/// How a candidate address became known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// An mDNS record.
    Mdns,
    /// `gateway peers add`.
    Static,
    /// The peerstore (a link the peer announced earlier).
    Known,
    /// A link the peer announced in this Hello.
    Announced,
    /// A transport's own advertising (BLE): peers with no IP in common.
    Scan,
}

/// What to look for.
#[derive(Clone, Debug)]
pub struct DiscoverOptions {
    /// Browse at most this long.
    pub window: Duration,
    /// Only this peer (name, node id or id prefix of ≥ 8 characters); `None`: every peer.
    pub want: Option<String>,
    /// Once the wanted peer is verified, wait this long for more paths to it.
    pub settle: Duration,
    /// Browse mDNS (off: static and known addresses only).
    pub mdns: bool,
    /// Scan the transports that advertise by themselves (BLE), for peers
    /// with no IP path in common; independent of `mdns`.
    pub scan: bool,
}

/// A candidate that answered with a verified Hello.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The key's id.
    pub id: NodeId,
    /// Its Hello.
    pub hello: Hello,
    /// The selector that reached it.
    pub selector: String,
    /// How that selector was found.
    pub source: Source,
    /// Time from the start of discovery.
    pub after: Duration,
}

/// Everything one discovery run saw.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Verified paths, in the order they answered.
    pub verified: Vec<Verified>,
    /// mDNS records seen (and still there at the end), with when.
    pub sightings: Vec<(Sighting, Duration)>,
    /// Candidates that did not answer: "selector: why".
    pub failed: Vec<String>,
    /// Peers caught lying (their mDNS id is not their key), in words.
    pub flagged: Vec<String>,
    /// mDNS records ignored (malformed, flood), in words.
    pub ignored: Vec<String>,
    /// Why mDNS was not used, if it was not.
    pub mdns_error: Option<String>,
}

/// Whether a peer called `name` with id `id` is the one `want` names.
pub fn matches(want: &str, name: &str, id: &str) -> bool {
    let w = trust::typed_id(want);
    name == want || (w.len() >= 8 && trust::typed_id(id).starts_with(&w))
}

/// An address to try, and what it was said to be.
struct Candidate {
    selector: String,
    source: Source,
    /// (node id, mDNS instance) the address was advertised with, if any.
    claimed: Option<(String, String)>,
}

struct Attempt {
    candidate: Candidate,
    result: Result<(Hello, NodeId), NodeError>,
}

/// Most identity exchanges in flight at once.
const MAX_IN_FLIGHT: usize = 8;

/// How long an identity exchange with a candidate a transport scan found
/// may take: a BLE connect, GATT service resolution and the Noise handshake
/// at BLE speed take seconds, not the 3 s an IP path gets.
const SCAN_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs one discovery. Returns when the window is over, or `settle` after
/// the wanted peer was verified.
pub async fn discover(
    state: &NodeState,
    cfg: &NodeConfig,
    reg: Arc<Registry>,
    opts: &DiscoverOptions,
) -> Result<Discovery, NodeError> {
    let started = Instant::now();
    let mut out = Discovery::default();
    let mut browser = if opts.mdns {
        match Browser::start(MAX_SERVICES_DEFAULT) {
            Ok(b) => Some(b),
            Err(e) => {
                out.mdns_error = Some(e.to_string());
                None
            }
        }
    } else {
        out.mdns_error = Some("mDNS is off".into());
        None
    };
    let mut queue: Vec<Candidate> = initial_candidates(state, opts.want.as_deref())?;
    let ours = wire::hello(state, &[]);
    let sem = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tried: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<Attempt> = JoinSet::new();
    let mut sightings: HashMap<String, (Sighting, Duration)> = HashMap::new();
    let mut deadline = tokio::time::Instant::now() + opts.window;
    let mut settle_at: Option<tokio::time::Instant> = None;
    let exchange_timeout = cfg.handshake_timeout.min(Duration::from_secs(3));
    // Transports that advertise by themselves (BLE) are scanned beside mDNS.
    let (scan_tx, mut scan_rx) = tokio::sync::mpsc::unbounded_channel();
    let scan = opts.scan.then(|| {
        let (reg, window) = (reg.clone(), opts.window);
        tokio::spawn(async move { reg.scan(window, scan_tx).await })
    });
    let mut scanning = scan.is_some();
    loop {
        for c in queue.drain(..) {
            if !tried.insert(c.selector.clone()) {
                continue;
            }
            let (reg, key, ours, cfg, sem) = (
                reg.clone(),
                state.key.clone(),
                ours.clone(),
                cfg.clone(),
                sem.clone(),
            );
            let within = if c.source == Source::Scan {
                SCAN_EXCHANGE_TIMEOUT
            } else {
                exchange_timeout
            };
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let result = identify(&reg, &key, &c.selector, ours, &cfg, within).await;
                Attempt {
                    candidate: c,
                    result,
                }
            });
        }
        // Without mDNS or a scan, nothing new can turn up once every
        // candidate answered.
        if browser.is_none() && !scanning && tasks.is_empty() {
            break;
        }
        let end = match settle_at {
            Some(s) => s.min(deadline),
            None => deadline,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(end) => {
                // The window is over, but the wanted peer is not verified
                // yet: the exchanges under way (a slow BLE connect) may
                // still be it. Wait for them, not for new candidates.
                let found = opts.want.as_deref().is_some_and(|w| {
                    out.verified.iter().any(|v| matches(w, &v.hello.name, v.id.as_str()))
                });
                if found || opts.want.is_none() || tasks.is_empty() {
                    break;
                }
                browser = None;
                scanning = false;
                settle_at = None;
                deadline = tokio::time::Instant::now() + SCAN_EXCHANGE_TIMEOUT;
            }
            sel = scan_rx.recv(), if scanning => match sel {
                Some(selector) => {
                    tracing::debug!(%selector, "a transport scan found a gateway peer");
                    queue.push(Candidate {
                        selector,
                        source: Source::Scan,
                        claimed: None,
                    });
                }
                None => scanning = false,
            },
            ev = async { browser.as_mut()?.next().await }, if browser.is_some() => match ev {
                Some(BrowseEvent::Found(s)) if trust::same_id(&s.advert.node_id, &state.node_id) => {
                    // This node's own record (it serves too).
                }
                Some(BrowseEvent::Found(s)) => {
                    let wanted = opts
                        .want
                        .as_deref()
                        .is_none_or(|w| matches(w, &s.advert.name, &s.advert.node_id));
                    if wanted {
                        for a in &s.addrs {
                            queue.push(Candidate {
                                selector: format!("tcp:{a}"),
                                source: Source::Mdns,
                                claimed: Some((s.advert.node_id.clone(), s.instance.clone())),
                            });
                        }
                    }
                    let at = sightings.get(&s.instance).map_or(started.elapsed(), |(_, t)| *t);
                    sightings.insert(s.instance.clone(), (s, at));
                }
                Some(BrowseEvent::Gone { instance }) => {
                    sightings.remove(&instance);
                }
                Some(BrowseEvent::Ignored { instance, why }) => {
                    tracing::info!(%instance, "mDNS record ignored: {why}");
                    out.ignored.push(format!("{instance}: {why}"));
                }
                None => browser = None,
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok(a) = done else { continue };
                if let Some(v) = settle(state, cfg, a, started, &mut out)? {
                    let wanted = opts
                        .want
                        .as_deref()
                        .is_some_and(|w| matches(w, &v.hello.name, v.id.as_str()));
                    if wanted {
                        settle_at.get_or_insert(tokio::time::Instant::now() + opts.settle);
                        // The peer's own list of its links: try each.
                        for l in &v.hello.links {
                            queue.push(Candidate {
                                selector: l.clone(),
                                source: Source::Announced,
                                claimed: None,
                            });
                        }
                    }
                    out.verified.push(v);
                }
            }
        }
    }
    // Browsing everyone: give exchanges under way a moment to finish.
    if opts.want.is_none() {
        let grace = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Some(Ok(a))) = tokio::time::timeout_at(grace, tasks.join_next()).await {
            if let Some(v) = settle(state, cfg, a, started, &mut out)? {
                out.verified.push(v);
            }
        }
    }
    tasks.abort_all();
    if let Some(s) = scan {
        s.abort();
    }
    let mut seen: Vec<(Sighting, Duration)> = sightings.into_values().collect();
    seen.sort_by_key(|(_, t)| *t);
    out.sightings = seen;
    Ok(out)
}

/// Static addresses and, for a wanted peer, the links it announced before.
fn initial_candidates(state: &NodeState, want: Option<&str>) -> Result<Vec<Candidate>, NodeError> {
    let store = state.store();
    let known: Vec<_> = match want {
        Some(w) => store
            .peers()?
            .into_iter()
            .filter(|p| matches(w, &p.name, &p.node_id))
            .collect(),
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for (name, sel) in store.static_addrs()? {
        let wanted = match want {
            None => true,
            Some(w) => name == w || known.iter().any(|p| p.name == name),
        };
        if wanted {
            out.push(Candidate {
                selector: sel,
                source: Source::Static,
                claimed: None,
            });
        }
    }
    for p in &known {
        for l in &p.links {
            out.push(Candidate {
                selector: l.clone(),
                source: Source::Known,
                claimed: None,
            });
        }
    }
    Ok(out)
}

/// Records a finished identity exchange; `Some` if it is a verified path.
fn settle(
    state: &NodeState,
    cfg: &NodeConfig,
    a: Attempt,
    started: Instant,
    out: &mut Discovery,
) -> Result<Option<Verified>, NodeError> {
    let Attempt {
        candidate: a,
        result,
    } = a;
    let (hello, id) = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(selector = %a.selector, "candidate did not answer: {e}");
            out.failed.push(format!("{}: {e}", a.selector));
            return Ok(None);
        }
    };
    if id.as_str() == state.node_id {
        // An address of this very node (a static address, a loop).
        return Ok(None);
    }
    if let Some((claimed, instance)) = &a.claimed
        && !trust::same_id(claimed, id.as_str())
    {
        let why = format!(
            "its mDNS record {instance:?} claims node id {claimed}, but the node at {} holds the key of {id}",
            a.selector
        );
        tracing::warn!("{why}");
        trust::flag_peer(state, &id, &why)?;
        trust::record_hello(state, cfg.trust, &id, &hello, &a.selector)?;
        out.flagged.push(why);
        return Ok(None);
    }
    trust::record_hello(state, cfg.trust, &id, &hello, &a.selector)?;
    Ok(Some(Verified {
        id,
        hello,
        selector: a.selector,
        source: a.source,
        after: started.elapsed(),
    }))
}

/// Connects, handshakes, exchanges Hello, says goodbye.
async fn identify(
    reg: &Registry,
    key: &gateway_secure::NodeKey,
    sel: &str,
    ours: Hello,
    cfg: &NodeConfig,
    within: Duration,
) -> Result<(Hello, NodeId), NodeError> {
    let opened = tokio::time::timeout(
        within,
        crate::send::open_and_hello(reg, key, sel, ours, cfg),
    )
    .await
    .map_err(|_| NodeError::Peer(format!("no answer within {within:?}")))??;
    let (mut tx, _rx, hello, id) = opened;
    let _ = wire::send(&mut *tx, gateway_proto::Body::Bye("identified".into())).await;
    let _ = tx.close().await;
    Ok((hello, id))
}

/// Where to send to a peer named by the user.
#[derive(Clone, Debug)]
pub struct Route {
    /// The peer's key.
    pub peer_id: NodeId,
    /// Its name.
    pub name: String,
    /// Verified selectors to it.
    pub links: Vec<String>,
    /// Links it announced that did not answer yet (tried once by the sender).
    pub extra: Vec<String>,
    /// When it was first verified, from the start of discovery.
    pub found_after: Duration,
    /// Things the user should hear (flagged look-alikes, other same-named nodes).
    pub warnings: Vec<String>,
}

/// Finds the peer `want` (name, id, or id prefix) and every path to it.
pub async fn resolve(
    state: &NodeState,
    cfg: &NodeConfig,
    reg: Arc<Registry>,
    want: &str,
    mdns: bool,
) -> Result<Route, NodeError> {
    let d = discover(
        state,
        cfg,
        reg,
        &DiscoverOptions {
            window: cfg.discovery_window,
            want: Some(want.to_string()),
            settle: cfg.discovery_settle,
            mdns,
            scan: true,
        },
    )
    .await?;
    let mut by_id: Vec<(NodeId, Vec<&Verified>)> = Vec::new();
    for v in d
        .verified
        .iter()
        .filter(|v| matches(want, &v.hello.name, v.id.as_str()))
    {
        match by_id.iter_mut().find(|(id, _)| *id == v.id) {
            Some((_, list)) => list.push(v),
            None => by_id.push((v.id.clone(), vec![v])),
        }
    }
    let mut warnings = d.flagged.clone();
    let chosen = match by_id.len() {
        0 => return Err(not_found(want, &d)),
        1 => by_id.remove(0),
        _ => {
            let mut trusted: Vec<(NodeId, Vec<&Verified>)> = Vec::new();
            for (id, list) in by_id.iter().cloned() {
                let name = &list[0].hello.name;
                if trust::decide(state, cfg.trust, &id, name)? == Decision::Trusted {
                    trusted.push((id, list));
                }
            }
            if trusted.len() != 1 {
                let ids: Vec<String> = by_id
                    .iter()
                    .map(|(id, l)| format!("{id} ({})", l[0].hello.name))
                    .collect();
                return Err(NodeError::Other(format!(
                    "{want:?} matches {} nodes: {}; give the node id instead of the name",
                    by_id.len(),
                    ids.join(", ")
                )));
            }
            for (id, l) in &by_id {
                if *id != trusted[0].0 {
                    warnings.push(format!(
                        "another node also calls itself {:?} ({id}); it is not trusted here and was left out",
                        l[0].hello.name
                    ));
                }
            }
            trusted.remove(0)
        }
    };
    let (peer_id, paths) = chosen;
    let latest = paths.last().expect("one path at least");
    let announced = &latest.hello.links;
    let verified: Vec<&str> = paths.iter().map(|v| v.selector.as_str()).collect();
    // The peer's announced links are one per interface; other verified
    // paths (a second address of one interface) would only share a wire.
    // Static addresses are the user's word and always kept; if nothing
    // announced answered (NAT, VPN), every verified path is used.
    let mut links: Vec<String> = Vec::new();
    for v in &paths {
        let keep = announced.contains(&v.selector) || v.source == Source::Static;
        if keep && !links.contains(&v.selector) {
            links.push(v.selector.clone());
        }
    }
    if !paths.iter().any(|v| announced.contains(&v.selector)) {
        for v in &paths {
            if !links.contains(&v.selector) {
                links.push(v.selector.clone());
            }
        }
    }
    let extra: Vec<String> = announced
        .iter()
        .filter(|l| !verified.contains(&l.as_str()) && !links.contains(l))
        .cloned()
        .collect();
    Ok(Route {
        name: latest.hello.name.clone(),
        found_after: paths.iter().map(|v| v.after).min().unwrap_or_default(),
        peer_id,
        links,
        extra,
        warnings,
    })
}

fn not_found(want: &str, d: &Discovery) -> NodeError {
    let mut lines = vec![format!("no node named {want:?} answered:")];
    match &d.mdns_error {
        Some(e) => lines.push(format!("  mDNS was not used: {e}")),
        None => {
            let names: Vec<String> = d
                .sightings
                .iter()
                .map(|(s, _)| format!("{} ({})", s.advert.name, s.advert.node_id))
                .collect();
            lines.push(if names.is_empty() {
                "  mDNS found no gateway node (multicast may be filtered: AP isolation, VLANs, VPNs)"
                    .to_string()
            } else {
                format!("  mDNS found: {}", names.join(", "))
            });
        }
    }
    for f in d.failed.iter().chain(&d.flagged) {
        lines.push(format!("  {f}"));
    }
    lines.push(format!(
        "  if it is reachable at a known address, record it: gateway peers add {want} tcp:HOST:7878"
    ));
    NodeError::Other(lines.join("\n"))
}
