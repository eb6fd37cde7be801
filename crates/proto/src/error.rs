use crate::types::ErrorCode;

/// Why a frame, a name or a range list was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoError {
    /// Not a valid frame: verifier failure, wrong identifier, missing or unknown field.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A size or count is above its [`Limits`](crate::Limits) cap.
    #[error("{what} too large: {got} > {max}")]
    TooLarge {
        /// What was too large ("frame", "data", "ranges", ...).
        what: &'static str,
        /// The value received.
        got: u64,
        /// The cap it exceeded.
        max: u64,
    },
    /// A file name that is not exactly one safe path component.
    #[error("bad name {name:?}: {why}")]
    BadName {
        /// The offending name (shortened if very long).
        name: String,
        /// Which rule it broke.
        why: &'static str,
    },
    /// A range list that is not non-empty, sorted and disjoint.
    #[error("bad ranges: {0}")]
    BadRanges(String),
    /// An offset or range outside what the frame or transfer allows.
    #[error("out of bounds: {0}")]
    OutOfBounds(String),
}

impl ProtoError {
    /// The code to put in the `Error` frame sent back to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::Malformed(_) | ProtoError::BadRanges(_) => ErrorCode::Malformed,
            ProtoError::TooLarge { .. } => ErrorCode::TooLarge,
            ProtoError::BadName { .. } => ErrorCode::BadName,
            ProtoError::OutOfBounds(_) => ErrorCode::OutOfBounds,
        }
    }
}
