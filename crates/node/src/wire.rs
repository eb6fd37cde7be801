//! Frames on links: encode, send, receive, decode, and the Hello exchange.

use std::time::Duration;

use bytes::Bytes;
use gateway_link::{FrameRx, FrameTx, LinkError};
use gateway_proto::{
    Body, ErrorCode, ErrorFrame, Frame, Hello, Limits, ProtoError, Stream, TransferId,
};

use crate::state::NodeState;

/// Protocol version carried in Hello.
pub const PROTOCOL_VERSION: u32 = 1;

/// What went wrong reading a frame.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The link failed or closed.
    #[error("link: {0}")]
    Link(#[from] LinkError),
    /// The peer sent something that is not a valid frame.
    #[error("bad frame: {0}")]
    Proto(#[from] ProtoError),
    /// Nothing arrived in time.
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    /// The link did not take a frame in time (stalled: the peer stopped
    /// reading, or the path died without an error).
    #[error("the link took no frame within {0:?} (stalled)")]
    Stalled(Duration),
}

/// The stream a body travels on.
pub fn stream_of(body: &Body) -> Stream {
    match body {
        Body::Hello(_) => Stream::Identity,
        Body::Ping(_) | Body::Pong(_) | Body::Bye(_) | Body::Error(_) => Stream::Control,
        _ => Stream::File,
    }
}

/// Encodes a body into a frame.
pub fn encode(body: Body) -> Bytes {
    let stream = stream_of(&body);
    Bytes::from(gateway_proto::encode(&Frame { stream, body }))
}

/// Sends one body.
pub async fn send(tx: &mut dyn FrameTx, body: Body) -> Result<(), LinkError> {
    tx.send(&encode(body)).await
}

/// Sends one body within `timeout`. A link that does not take it by then is
/// stalled; the caller drops it (a cancelled send may have left half a frame).
pub async fn send_within(
    tx: &mut dyn FrameTx,
    body: Body,
    timeout: Duration,
) -> Result<(), WireError> {
    tokio::time::timeout(timeout, send(tx, body))
        .await
        .map_err(|_| WireError::Stalled(timeout))?
        .map_err(WireError::Link)
}

/// Receives and decodes one frame (verifier + field checks).
pub async fn recv(rx: &mut dyn FrameRx, limits: &Limits) -> Result<Frame, WireError> {
    let buf = rx.recv().await?;
    Ok(gateway_proto::decode(buf, limits)?)
}

/// Receives one frame within `timeout`.
pub async fn recv_within(
    rx: &mut dyn FrameRx,
    limits: &Limits,
    timeout: Duration,
) -> Result<Frame, WireError> {
    tokio::time::timeout(timeout, recv(rx, limits))
        .await
        .map_err(|_| WireError::Timeout(timeout))?
}

/// The Error frame to send for `err`.
pub fn error_body(
    transfer_id: Option<TransferId>,
    code: ErrorCode,
    message: impl Into<String>,
) -> Body {
    let mut message: String = message.into();
    message.truncate(900);
    Body::Error(ErrorFrame {
        transfer_id,
        code,
        message,
    })
}

/// This node's Hello on the identity stream. `listening` are its
/// listeners' selectors, announced as links (a wildcard expanded per
/// interface); a node that only sends passes none.
pub fn hello(state: &NodeState, listening: &[String]) -> Hello {
    // Read once per Hello: the MACs, IPs and links all come from it.
    let ifs = gateway_discovery::local::interfaces();
    let links = dialable_links(listening, &ifs);
    let mut macs: Vec<String> = ifs
        .iter()
        .filter(|i| !i.loopback)
        .filter_map(|i| i.mac.clone())
        .collect();
    macs.dedup();
    let ips: Vec<String> = ifs
        .iter()
        .flat_map(|i| i.ips.iter())
        .filter(|ip| gateway_discovery::local::dialable(ip))
        .map(ToString::to_string)
        .collect();
    Hello {
        name: state.name.clone(),
        node_id: state.node_id.clone(),
        node_type: state.node_type.clone(),
        macs: bounded(macs),
        ips: bounded(ips),
        links: bounded(links),
        version: PROTOCOL_VERSION,
    }
}

/// Most entries a Hello list carries (a box with many interfaces or
/// addresses still sends a frame its peers accept).
pub const MAX_HELLO_LIST: usize = 32;

fn bounded(mut v: Vec<String>) -> Vec<String> {
    v.truncate(MAX_HELLO_LIST);
    v
}

/// The selectors a peer can dial for our listeners: an unspecified TCP
/// address (0.0.0.0 / [::]) becomes one selector per interface that is up
/// (its IPv4 address, else a global IPv6 one), so a Hello names every path
/// to this node as it is now; a Bluetooth listener on `any` becomes one
/// selector per adapter that is up; other selectors are kept as they are.
fn dialable_links(
    listening: &[String],
    ifs: &[gateway_discovery::local::Interface],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for sel in listening {
        let expanded = sel
            .strip_prefix("tcp:")
            .and_then(|rest| rest.parse::<std::net::SocketAddr>().ok())
            .filter(|a| a.ip().is_unspecified())
            .map(|a| {
                ifs.iter()
                    .filter_map(gateway_discovery::local::Interface::reachable_ip)
                    .filter(|ip| a.is_ipv6() || ip.is_ipv4())
                    .map(|ip| format!("tcp:{}", std::net::SocketAddr::new(ip, a.port())))
                    .collect::<Vec<_>>()
            });
        #[cfg(feature = "bluetooth")]
        let expanded = expanded.or_else(|| gateway_bluez::dialable(sel));
        match expanded {
            Some(list) => out.extend(list),
            // In-process links and point-to-point lines (a serial device
            // path or a USB gadget is this node's end, useless to a peer)
            // are not announced.
            None if ["mock:", "serial:", "usb:"]
                .iter()
                .any(|p| sel.starts_with(p)) => {}
            None => out.push(sel.clone()),
        }
    }
    out.dedup();
    out
}
/// Sends our Hello and waits for the peer's.
pub async fn exchange_hello(
    tx: &mut dyn FrameTx,
    rx: &mut dyn FrameRx,
    ours: Hello,
    limits: &Limits,
    timeout: Duration,
) -> Result<Hello, WireError> {
    send_within(tx, Body::Hello(ours), timeout).await?;
    loop {
        let f = recv_within(rx, limits, timeout).await?;
        match f.body {
            Body::Hello(h) => return Ok(h),
            Body::Ping(n) => send_within(tx, Body::Pong(n), timeout).await?,
            Body::Error(e) => {
                return Err(WireError::Link(LinkError::Io(std::io::Error::other(
                    format!("peer refused the link: {}", e.message),
                ))));
            }
            _ => {
                return Err(WireError::Proto(ProtoError::Malformed(
                    "expected Hello first on a new link".into(),
                )));
            }
        }
    }
}
