//! Pairing two nodes with a short code: Noise handshake, Hello, then SPAKE2
//! bound to the handshake (see `gateway-secure`); both sides record each
//! other as `paired`.

use std::sync::Arc;

use gateway_link::Registry;
use gateway_secure::{Paired, PairingCode, SecureLink};

use crate::state::NodeState;
use crate::{NodeConfig, NodeError, trust, wire};

/// The outcome shown to people.
#[derive(Clone, Debug)]
pub struct PairResult {
    /// The peer's node id.
    pub peer_id: String,
    /// The peer's name from its Hello.
    pub peer_name: String,
    /// The short authentication string both sides print.
    pub sas: String,
}

/// Hello over a fresh secure link; returns the peer's name.
async fn hello_on(
    state: &NodeState,
    cfg: &NodeConfig,
    link: &mut SecureLink,
) -> Result<String, NodeError> {
    let ours = wire::hello(state, &[]);
    let (theirs, id) = link_hello(link, ours, cfg).await?;
    if !trust::same_id(&theirs.node_id, id.as_str()) {
        return Err(NodeError::NotTrusted(format!(
            "the peer's Hello claims {} but its key is {id}",
            theirs.node_id
        )));
    }
    trust::record_hello(state, cfg.trust, &id, &theirs, "")?;
    Ok(theirs.name)
}

async fn link_hello(
    link: &mut SecureLink,
    ours: gateway_proto::Hello,
    cfg: &NodeConfig,
) -> Result<(gateway_proto::Hello, gateway_secure::NodeId), NodeError> {
    let id = link.remote_id();
    let (tx, rx) = link.frames();
    let theirs = wire::exchange_hello(tx, rx, ours, &cfg.limits, cfg.hello_timeout)
        .await
        .map_err(|e| NodeError::Peer(format!("Hello failed: {e}")))?;
    Ok((theirs, id))
}

fn record(state: &NodeState, p: &Paired, name: &str) -> Result<PairResult, NodeError> {
    trust::set_trust(state, &p.peer, Some(name), trust::PAIRED)?;
    Ok(PairResult {
        peer_id: p.peer.to_string(),
        peer_name: name.to_string(),
        sas: p.sas.clone(),
    })
}

/// Waits on `listen` for a peer that knows `code`. A wrong code costs one
/// of [`gateway_secure::MAX_PAIR_ATTEMPTS`] attempts; then the code is void.
pub async fn listen(
    state: &NodeState,
    cfg: &NodeConfig,
    reg: Arc<Registry>,
    listen: &str,
    code: &PairingCode,
    ready: impl FnOnce(&str),
) -> Result<PairResult, NodeError> {
    let mut listener = reg.listen(listen).await.map_err(|err| NodeError::Open {
        selector: listen.to_string(),
        err,
    })?;
    ready(&listener.local_selector());
    let mut failures = 0;
    loop {
        let link = listener
            .accept()
            .await
            .map_err(|e| NodeError::Peer(e.to_string()))?;
        let peer_addr = link.info().peer.clone();
        let attempt = async {
            let mut s = gateway_secure::accept(link, &state.key, cfg.handshake_timeout).await?;
            let name = hello_on(state, cfg, &mut s).await?;
            let p = gateway_secure::pair_responder(&mut s, code, cfg.handshake_timeout).await?;
            record(state, &p, &name)
        };
        match attempt.await {
            Ok(r) => return Ok(r),
            Err(NodeError::Secure(gateway_secure::SecureError::WrongCode)) => {
                failures += 1;
                tracing::warn!(peer = %peer_addr, "wrong pairing code ({failures}/{})", gateway_secure::MAX_PAIR_ATTEMPTS);
                if failures >= gateway_secure::MAX_PAIR_ATTEMPTS {
                    return Err(NodeError::Other(format!(
                        "{failures} wrong pairing codes; this code is void. Run `gateway pair` again for a new one"
                    )));
                }
            }
            Err(e) => tracing::warn!(peer = %peer_addr, "pairing attempt failed: {e}"),
        }
    }
}

/// Pairs with the node listening at `sel` using `code`.
pub async fn connect(
    state: &NodeState,
    cfg: &NodeConfig,
    reg: Arc<Registry>,
    sel: &str,
    code: &PairingCode,
) -> Result<PairResult, NodeError> {
    let link = reg.open(sel).await.map_err(|err| NodeError::Open {
        selector: sel.to_string(),
        err,
    })?;
    let mut s = gateway_secure::connect(link, &state.key, cfg.handshake_timeout).await?;
    let name = hello_on(state, cfg, &mut s).await?;
    let p = gateway_secure::pair_initiator(&mut s, code, cfg.handshake_timeout).await?;
    record(state, &p, &name)
}
