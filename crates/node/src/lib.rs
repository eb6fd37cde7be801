//! gateway-node: the tokio glue around the sans-IO engine.
//!
//! It owns sockets, files, tasks and clocks: the receiver's `file_stream`
//! per transfer (positional writes, fdatasync-then-commit checkpoints), the
//! sender's writer task per link, and the interrupt handler (IHS) task. The
//! decisions themselves live in `gateway-engine`; the CLI lives in `gateway`.
#![warn(missing_docs)]

pub mod config;
mod crash;
pub mod dirtree;
pub mod discover;
mod file_stream;
pub mod pair;
pub mod registry;
pub mod send;
pub mod serve;
pub mod state;
pub mod transfers;
pub mod tree;
pub mod trust;
pub mod wire;

pub use config::NodeConfig;
pub use state::NodeState;

/// Errors the node reports; each says what a person can do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A file-system operation failed.
    #[error("{what}: {err}")]
    Io {
        /// What we were doing.
        what: String,
        /// Why it failed (kept out of the error chain so it prints once).
        err: std::io::Error,
    },
    /// The state DB failed.
    #[error(transparent)]
    Store(#[from] gateway_store::StoreError),
    /// The node key, a handshake or pairing failed.
    #[error(transparent)]
    Secure(#[from] gateway_secure::SecureError),
    /// The peer is not trusted (the message says how to pair).
    #[error("{0}")]
    NotTrusted(String),
    /// A link could not be opened or listened on.
    #[error("{selector}: {err}")]
    Open {
        /// The selector as given.
        selector: String,
        /// Why (kept out of the error chain so it prints once).
        err: gateway_link::OpenError,
    },
    /// None of the links given could be opened.
    #[error("no link to the receiver could be opened:\n{0}")]
    NoLinks(String),
    /// The receiver refused the transfer.
    #[error("the receiver refused: {0}")]
    Rejected(String),
    /// The peer broke the protocol or reported an error.
    #[error("{0}")]
    Peer(String),
    /// The transfer is paused; state is saved and a rerun resumes it.
    #[error("paused: {0}")]
    Paused(String),
    /// The user stopped it; state is saved and a rerun resumes it.
    #[error("stopped by the user; run the same command again to resume")]
    Stopped,
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl NodeError {
    pub(crate) fn io(what: impl Into<String>, err: std::io::Error) -> Self {
        NodeError::Io {
            what: what.into(),
            err,
        }
    }
}
