//! Who may open a FILE stream: the peerstore's trust strings plus the policy.
//!
//! Identity is the Noise static key (its [`NodeId`]); a Hello that claims
//! another id is a lie and the link is dropped. Trust strings in the store:
//! `paired` (SPAKE2 pairing or `gateway trust`), `tofu` (first key seen for a
//! name under the tofu policy), `untrusted` (seen, or `gateway untrust`).

use gateway_proto::Hello;
use gateway_secure::{Decision, NodeId, TrustPolicy};
use gateway_store::PeerRecord;

use crate::NodeError;
use crate::state::{NodeState, now_ms};

/// Trust string for a paired peer.
pub const PAIRED: &str = "paired";
/// Trust string for a peer pinned on first use.
pub const TOFU: &str = "tofu";
/// Trust string for a peer seen but not trusted.
pub const UNTRUSTED: &str = "untrusted";

/// Records a verified peer (its Hello, on a link whose key is `id`). Keeps
/// the trust it had; a new peer is `untrusted`, or `tofu` under the tofu
/// policy when no other key is pinned for its name.
pub fn record_hello(
    state: &NodeState,
    policy: TrustPolicy,
    id: &NodeId,
    hello: &Hello,
    addr: &str,
) -> Result<PeerRecord, NodeError> {
    let store = state.store();
    let now = now_ms();
    let old = store.peer(id.as_str())?;
    let trust = match &old {
        Some(p) => p.trust.clone(),
        None if policy == TrustPolicy::Tofu
            && pinned_for_name_in(&store, &hello.name)?.is_none() =>
        {
            TOFU.to_string()
        }
        None => UNTRUSTED.to_string(),
    };
    // The address we saw it at first, then what it says it has.
    let mut ips: Vec<String> = observed_ip(addr).into_iter().collect();
    for ip in &hello.ips {
        if !ips.contains(ip) {
            ips.push(ip.clone());
        }
    }
    ips.truncate(crate::wire::MAX_HELLO_LIST);
    let rec = PeerRecord {
        node_id: id.to_string(),
        name: hello.name.clone(),
        node_type: hello.node_type.clone(),
        macs: hello.macs.clone(),
        ips,
        links: hello
            .links
            .iter()
            .take(crate::wire::MAX_HELLO_LIST)
            .cloned()
            .collect(),
        trust,
        first_seen_ms: old.as_ref().map_or(now, |p| p.first_seen_ms),
        last_seen_ms: now,
        flag: old.as_ref().and_then(|p| p.flag.clone()),
    };
    store.upsert_peer(&rec)?;
    Ok(rec)
}

/// The IP in a link's peer address (`10.0.0.2:5555`) or TCP selector
/// (`tcp:10.0.0.2:7878`); other addresses (a serial device) as they are.
fn observed_ip(addr: &str) -> Option<String> {
    if addr.is_empty() {
        return None;
    }
    let bare = addr.strip_prefix("tcp:").unwrap_or(addr);
    let bare = bare.split('?').next().unwrap_or(bare);
    Some(
        bare.parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| addr.to_string()),
    )
}

/// Flags a peer (it lied in an mDNS record, say); a new peer is recorded
/// untrusted, so TOFU never pins a key that came with a lie.
pub fn flag_peer(state: &NodeState, id: &NodeId, why: &str) -> Result<(), NodeError> {
    let store = state.store();
    let now = now_ms();
    let mut rec = store.peer(id.as_str())?.unwrap_or_else(|| unseen(id, now));
    rec.flag = Some(why.chars().take(300).collect());
    store.upsert_peer(&rec)?;
    Ok(())
}

fn pinned_for_name_in(
    store: &gateway_store::Store,
    name: &str,
) -> Result<Option<NodeId>, NodeError> {
    let mut pinned: Vec<PeerRecord> = store
        .peers()?
        .into_iter()
        .filter(|p| p.name == name && (p.trust == TOFU || p.trust == PAIRED))
        .collect();
    pinned.sort_by_key(|p| p.first_seen_ms);
    Ok(pinned.first().and_then(|p| NodeId::parse(&p.node_id).ok()))
}

/// Whether `id` (named `name` in its Hello) may open a FILE stream here.
pub fn decide(
    state: &NodeState,
    policy: TrustPolicy,
    id: &NodeId,
    name: &str,
) -> Result<Decision, NodeError> {
    let store = state.store();
    let known = store.peer(id.as_str())?.map(|p| p.trust);
    let pinned = pinned_for_name_in(&store, name)?;
    // A new key under a pinned name was stored as untrusted by record_hello;
    // under TOFU that is a changed key, and the user must hear so loudly.
    let known = match known.as_deref() {
        Some(UNTRUSTED)
            if policy == TrustPolicy::Tofu && pinned.as_ref().is_some_and(|p| p != id) =>
        {
            None
        }
        other => other.map(str::to_string),
    };
    Ok(gateway_secure::decide(
        policy,
        id,
        known.as_deref(),
        name,
        pinned.as_ref(),
    ))
}

/// Sets a peer's trust (`gateway trust` / `untrust` / pairing). The peer is
/// created if it was never seen.
pub fn set_trust(
    state: &NodeState,
    id: &NodeId,
    name: Option<&str>,
    trust: &str,
) -> Result<(), NodeError> {
    let store = state.store();
    let now = now_ms();
    let mut rec = store.peer(id.as_str())?.unwrap_or_else(|| unseen(id, now));
    if let Some(n) = name {
        rec.name = n.to_string();
    }
    rec.trust = trust.to_string();
    if trust == PAIRED {
        // The user looked at this peer and decided: an old flag is answered.
        rec.flag = None;
    }
    store.upsert_peer(&rec)?;
    Ok(())
}

/// The record of a peer known only by its id (trusted ahead of time, or flagged).
fn unseen(id: &NodeId, now: i64) -> PeerRecord {
    PeerRecord {
        node_id: id.to_string(),
        name: String::new(),
        node_type: String::new(),
        macs: Vec::new(),
        ips: Vec::new(),
        links: Vec::new(),
        trust: UNTRUSTED.into(),
        first_seen_ms: now,
        last_seen_ms: now,
        flag: None,
    }
}

/// A node id (or prefix) as a person may type it, for comparing: any case,
/// dashes optional.
pub(crate) fn typed_id(s: &str) -> String {
    s.replace('-', "").to_ascii_lowercase()
}

/// Whether a node id on the wire (a Hello, a TXT record) is `key`'s id,
/// dashes aside.
pub(crate) fn same_id(claimed: &str, key: &str) -> bool {
    claimed.replace('-', "") == key.replace('-', "")
}

/// Finds a known peer by full id, unique id prefix (dashes optional) or name.
pub fn find_peer(state: &NodeState, query: &str) -> Result<PeerRecord, NodeError> {
    let peers = state.store().peers()?;
    let q = typed_id(query);
    let hits: Vec<&PeerRecord> = peers
        .iter()
        .filter(|p| (!q.is_empty() && typed_id(&p.node_id).starts_with(&q)) || p.name == query)
        .collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(NodeError::Other(format!(
            "no known peer matches {query:?}; `gateway peers` lists the ones this node has seen"
        ))),
        many => Err(NodeError::Other(format!(
            "{query:?} matches {} peers ({}); give more of the id",
            many.len(),
            many.iter()
                .map(|p| p.node_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
