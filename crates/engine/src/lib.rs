//! gateway-engine: the sans-IO transfer state machines of `gateway`.
//!
//! A [`Sender`] schedules one file's chunks over N links (pull-based, with
//! tail duplication), a [`Receiver`] decides what to write, when to make it
//! durable and what verdict to give, and [`ihs`] holds the interrupt
//! handler's decisions. Nothing here touches sockets, files, tasks or
//! clocks: callers pass frames, link events and `now`, and act on what comes
//! back — so whole transfers run as fast, deterministic unit tests.
#![warn(missing_docs)]

mod config;
mod geometry;
pub mod ihs;
mod receiver;
mod sender;

pub use config::Config;
pub use geometry::{ChunkRef, Geometry};
pub use receiver::{DataAction, Finish, Receiver, RecvMeta, RecvPhase, SyncJob};
pub use sender::{Event, FileMeta, LinkStats, Phase, Progress, Sender};

/// The glue's name for one link of a transfer.
pub type LinkId = u32;

/// A frame that cannot be applied to this transfer. The glue answers with an
/// Error frame (see [`EngineError::code`]) and drops the link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Bytes past the end of the file.
    #[error("data at offset {offset} (+{len} bytes) lies past the end of the {size}-byte file")]
    OutOfBounds {
        /// Offset given.
        offset: u64,
        /// Length given.
        len: u64,
        /// File size.
        size: u64,
    },
    /// Offset not at a chunk boundary.
    #[error("data offset {offset} is not a multiple of the chunk size {chunk_size}")]
    Misaligned {
        /// Offset given.
        offset: u64,
        /// Chunk size.
        chunk_size: u32,
    },
    /// A chunk of the wrong length.
    #[error("chunk {index} must be {expected} bytes, got {got}")]
    WrongChunkLength {
        /// Chunk index.
        index: u64,
        /// Length expected.
        expected: u32,
        /// Length received.
        got: u64,
    },
    /// Data without its BLAKE3.
    #[error("chunk {index} came without a chunk hash")]
    MissingChunkHash {
        /// Chunk index.
        index: u64,
    },
    /// The payload does not match its hash (corrupted on the way).
    #[error("chunk {index} does not match its hash")]
    ChunkHashMismatch {
        /// Chunk index.
        index: u64,
    },
    /// A frame for a transfer this engine does not run.
    #[error("frame for an unknown transfer")]
    UnknownTransfer,
    /// A frame out of order.
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
    /// Ranges that do not fit this file.
    #[error(transparent)]
    Proto(#[from] gateway_proto::ProtoError),
}

impl EngineError {
    /// The code to put in the Error frame sent to the peer.
    pub fn code(&self) -> gateway_proto::ErrorCode {
        use gateway_proto::ErrorCode;
        match self {
            EngineError::OutOfBounds { .. }
            | EngineError::Misaligned { .. }
            | EngineError::WrongChunkLength { .. } => ErrorCode::OutOfBounds,
            EngineError::MissingChunkHash { .. } | EngineError::ChunkHashMismatch { .. } => {
                ErrorCode::Malformed
            }
            EngineError::UnknownTransfer => ErrorCode::UnknownTransfer,
            EngineError::Unexpected(_) => ErrorCode::Protocol,
            EngineError::Proto(p) => p.code(),
        }
    }
}

#[cfg(test)]
mod sim;
