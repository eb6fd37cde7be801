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

/// This node's Hello on the identity stream.
pub fn hello(state: &NodeState, links: Vec<String>) -> Hello {
    Hello {
        name: state.name.clone(),
        node_id: state.node_id.clone(),
        node_type: "linux".into(),
        macs: Vec::new(),
        ips: Vec::new(),
        links,
        version: PROTOCOL_VERSION,
    }
}

/// Sends our Hello and waits for the peer's.
pub async fn exchange_hello(
    tx: &mut dyn FrameTx,
    rx: &mut dyn FrameRx,
    ours: Hello,
    limits: &Limits,
    timeout: Duration,
) -> Result<Hello, WireError> {
    send(tx, Body::Hello(ours)).await?;
    loop {
        let f = recv_within(rx, limits, timeout).await?;
        match f.body {
            Body::Hello(h) => return Ok(h),
            Body::Ping(n) => send(tx, Body::Pong(n)).await?,
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
