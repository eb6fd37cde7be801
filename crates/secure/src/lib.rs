//! gateway-secure: the node key, a Noise XX session over any `Link`, pairing
//! by short code (SPAKE2 bound to the Noise handshake), and the trust policy.
//!
//! It is not a transport and knows nothing of transfers: it turns a `Link`
//! into an authenticated, encrypted `Link` whose peer is a static key.
//! Storing trust and limiting pairing attempts are the caller's job.
#![warn(missing_docs)]

mod key;
mod noise;
mod pair;
mod trust;

pub use key::{NodeId, NodeKey};
pub use noise::{SecureLink, accept, connect};
pub use pair::{MAX_PAIR_ATTEMPTS, Paired, PairingCode, pair_initiator, pair_responder};
pub use trust::{Decision, TrustPolicy, decide};

/// What went wrong; each message says what a person can do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecureError {
    /// The key file could not be read or written.
    #[error("node key {path}: {err}")]
    Key {
        /// The key file.
        path: String,
        /// Why.
        err: std::io::Error,
    },
    /// The key file is readable by others.
    #[error(
        "node key {path} is open to other users (group or other permission bits set); run `chmod 600 {path}` (or delete it to make a new identity, after which peers must pair again)"
    )]
    KeyPermissions {
        /// The key file.
        path: String,
    },
    /// The key file is not a key.
    #[error(
        "node key {path} is damaged: {why}; delete it to make a new identity (peers must pair again)"
    )]
    KeyCorrupt {
        /// The key file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The Noise handshake failed: a message was truncated, altered or
    /// replayed, or the peer is not a gateway node. The link is dropped.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The peer speaks another version of gateway's handshake.
    #[error(
        "the peer speaks handshake version {peer:?}, this node gateway/1; run the same gateway version on both nodes"
    )]
    Version {
        /// The version string the peer sent (at most 32 bytes, lossy UTF-8).
        peer: String,
    },
    /// The peer did not finish the handshake or pairing in time; nothing of
    /// the link is kept.
    #[error(
        "the peer did not answer within {0:?}; check that a gateway node listens there (and, for pairing, that the other side runs `gateway pair`)"
    )]
    Timeout(std::time::Duration),
    /// The pairing codes on the two sides differ; neither side trusts the other.
    #[error(
        "wrong pairing code: the code typed here is not the one the other node shows; nothing was trusted, try again with the code `gateway pair` printed"
    )]
    WrongCode,
    /// Not a pairing code.
    #[error("{0:?} is not a pairing code; it looks like 7-violet-anchor")]
    BadCode(String),
    /// Not a node id.
    #[error("{0:?} is not a node id; `gateway id` prints one, like abcd-efgh-ijkl-mnop-qrst")]
    BadId(String),
    /// Not a trust policy.
    #[error("{0:?} is not a trust policy; use paired, tofu or any")]
    BadPolicy(String),
    /// The peer broke the pairing protocol.
    #[error("pairing: {0}")]
    Protocol(String),
    /// The link failed.
    #[error(transparent)]
    Link(#[from] gateway_link::LinkError),
}
