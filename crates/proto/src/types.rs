//! Owned frame types: what `decode` returns and `encode` takes.

use crate::ranges::Range;

/// 16-byte transfer id, chosen at random by the sender.
pub type TransferId = [u8; 16];
/// 32-byte BLAKE3 hash.
pub type Hash = [u8; 32];

/// Logical stream of the peer session a frame belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Hello and link identity.
    Identity,
    /// File transfer frames (Offer, Data, Ack, ...).
    File,
    /// Session control (Ping, Pong, Bye, Error).
    Control,
}

/// First frame on every link: who the sending node is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    /// Human-readable node name.
    pub name: String,
    /// Stable node id (peer key).
    pub node_id: String,
    /// Kind of node, free text (e.g. "laptop").
    pub node_type: String,
    /// MAC addresses of the node.
    pub macs: Vec<String>,
    /// IP addresses of the node.
    pub ips: Vec<String>,
    /// Link selectors the node can be reached on.
    pub links: Vec<String>,
    /// Protocol version the node speaks.
    pub version: u32,
}

/// Sender proposes a new transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Transfer id.
    pub transfer_id: TransferId,
    /// File name: one path component (see [`validate_name`](crate::validate_name)).
    pub name: String,
    /// File size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Unix permission bits.
    pub mode: u32,
    /// Chunk size in bytes (the last chunk may be shorter).
    pub chunk_size: u32,
    /// BLAKE3 of the whole file, if already known.
    pub file_hash: Option<Hash>,
    /// A directory tree (`name` is its root, `size` the sum of its files),
    /// checked by [`validate_tree`](crate::validate_tree); `None` for a file.
    pub entries: Option<Vec<crate::Entry>>,
}

/// Sender resumes a transfer it holds state for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reload {
    /// Transfer id.
    pub transfer_id: TransferId,
    /// File name: one path component.
    pub name: String,
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Chunks the sender believes are durable on the receiver.
    pub durable: Vec<Range>,
}

/// Receiver accepts an Offer/Reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accept {
    /// Transfer id.
    pub transfer_id: TransferId,
    /// Chunks the receiver already holds durably (its database wins).
    pub have: Vec<Range>,
}

/// Why a receiver refused an Offer/Reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectCode {
    /// Not enough disk space.
    NoSpace,
    /// A different file already has that name.
    NameTaken,
    /// The sender is not trusted.
    NotTrusted,
    /// The name is not acceptable.
    BadName,
    /// The file is larger than the receiver allows.
    TooBig,
    /// Reload of a transfer the receiver does not know.
    UnknownTransfer,
    /// Try again later.
    Busy,
    /// Anything else (also what unknown codes from newer peers decode to).
    Other,
}

/// Receiver refuses an Offer/Reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// Transfer id.
    pub transfer_id: TransferId,
    /// Reason.
    pub code: RejectCode,
    /// Human-readable detail.
    pub message: String,
}

/// File bytes at `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    /// Transfer id.
    pub transfer_id: TransferId,
    /// Byte offset in the file.
    pub offset: u64,
    /// Payload; when decoded, a zero-copy slice of the input buffer.
    pub data: bytes::Bytes,
    /// BLAKE3 of the chunk, if sent.
    pub chunk_hash: Option<Hash>,
}

/// Receiver acknowledges chunks received (not necessarily durable yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Transfer id.
    pub transfer_id: TransferId,
    /// Chunks acknowledged.
    pub ranges: Vec<Range>,
}

/// Receiver: these chunks are on disk and committed to its database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Transfer id.
    pub transfer_id: TransferId,
    /// The full durable set.
    pub durable: Vec<Range>,
}

/// Sender: every chunk is durable; here is the whole-file hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Complete {
    /// Transfer id.
    pub transfer_id: TransferId,
    /// BLAKE3 of the whole file.
    pub file_hash: Hash,
    /// The verify round this Complete opens: 0, then one more after each
    /// failed verdict.
    pub round: u32,
}

/// Receiver's answer to Complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Transfer id.
    pub transfer_id: TransferId,
    /// True if the receiver's copy hashes to the sender's file hash.
    pub ok: bool,
    /// Chunks found bad, to be sent again.
    pub bad_chunks: Vec<Range>,
    /// Human-readable detail.
    pub message: String,
    /// The round of the Complete this answers (a late copy of an earlier
    /// round's verdict must not be taken for the current one).
    pub round: u32,
}

/// Code carried by an Error frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be decoded.
    Malformed,
    /// A size or count was over a limit.
    TooLarge,
    /// An offset or range was out of bounds.
    OutOfBounds,
    /// The transfer id is not known.
    UnknownTransfer,
    /// The file name was refused.
    BadName,
    /// The receiver's disk is full.
    DiskFull,
    /// Another I/O error.
    Io,
    /// A frame arrived that the protocol does not allow here.
    Protocol,
    /// The peer is not trusted.
    NotTrusted,
    /// A bug or unexpected state (also what unknown codes from newer peers decode to).
    Internal,
    /// The receiver is at one of its caps (links, handshakes, open transfers);
    /// try again later.
    Busy,
}

/// Error report, optionally about one transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The transfer concerned, if any.
    pub transfer_id: Option<TransferId>,
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// The body of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Offer`].
    Offer(Offer),
    /// See [`Reload`].
    Reload(Reload),
    /// See [`Accept`].
    Accept(Accept),
    /// See [`Reject`].
    Reject(Reject),
    /// See [`Data`].
    Data(Data),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`Checkpoint`].
    Checkpoint(Checkpoint),
    /// See [`Complete`].
    Complete(Complete),
    /// See [`Verdict`].
    Verdict(Verdict),
    /// See [`ErrorFrame`].
    Error(ErrorFrame),
    /// Liveness probe carrying a nonce.
    Ping(u64),
    /// Answer to Ping, echoing its nonce.
    Pong(u64),
    /// Orderly goodbye with a reason.
    Bye(String),
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Logical stream.
    pub stream: Stream,
    /// Body.
    pub body: Body,
}
