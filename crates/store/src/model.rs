//! The records the store keeps, and how their enums are spelled in SQL.

use std::fmt;

use gateway_proto::{Hash, RangeSet, TransferId};

/// Which side of a transfer a record describes. A node that sends to itself
/// holds both rows for one transfer id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We read the file and send it.
    Send,
    /// We receive the file and write it.
    Recv,
}

impl Direction {
    /// The text stored in the `direction` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Send => "send",
            Direction::Recv => "recv",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "send" => Some(Direction::Send),
            "recv" => Some(Direction::Recv),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a transfer stands. Finished transfers are deleted, not marked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransferState {
    /// Chunks are (or should be) moving.
    Active,
    /// No link left, or stopped by the user; resumes with `Reload`.
    Paused,
    /// All chunks durable; the whole-file hash is being compared.
    Verifying,
}

impl TransferState {
    /// The text stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Active => "active",
            TransferState::Paused => "paused",
            TransferState::Verifying => "verifying",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(TransferState::Active),
            "paused" => Some(TransferState::Paused),
            "verifying" => Some(TransferState::Verifying),
            _ => None,
        }
    }
}

impl fmt::Display for TransferState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One side of one transfer, keyed by `(id, direction)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    /// Transfer id, chosen by the sender.
    pub id: TransferId,
    /// Which side this row is.
    pub direction: Direction,
    /// The peer's node id (key fingerprint).
    pub peer: String,
    /// Send: canonical source path. Recv: final path in the target directory.
    pub path: String,
    /// The file name offered on the wire (one path component).
    pub name: String,
    /// File size in bytes.
    pub size: u64,
    /// Source modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Unix permission bits.
    pub mode: u32,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// BLAKE3 of the whole file, once known.
    pub file_hash: Option<Hash>,
    /// Where the transfer stands.
    pub state: TransferState,
    /// Chunk indices known to be on the receiver's disk.
    pub durable: RangeSet,
    /// When the record was created, ms since the epoch.
    pub created_at_ms: i64,
    /// When the record last changed, ms since the epoch.
    pub updated_at_ms: i64,
    /// Recv side of a directory tree: its entry list, as the encoded Offer
    /// frame (decoded and checked again when used). `None` for a file.
    pub tree: Option<Vec<u8>>,
}

/// A frame the interrupt handler saved with its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PausedFrame {
    /// Row id; increases with every save.
    pub id: i64,
    /// The transfer the frame belongs to, if any.
    pub transfer_id: Option<TransferId>,
    /// The signal that saved it (`ERROR`, `USER_STOP`, ...).
    pub signal: String,
    /// The encoded frame.
    pub frame: Vec<u8>,
    /// Free-form JSON metadata (link selector, error text, ...).
    pub meta_json: String,
    /// When it was saved, ms since the epoch.
    pub at_ms: i64,
}

/// A node we have heard a Hello from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    /// Fingerprint of the peer's static key.
    pub node_id: String,
    /// Human name from its Hello.
    pub name: String,
    /// Node type from its Hello.
    pub node_type: String,
    /// MAC addresses it reported.
    pub macs: Vec<String>,
    /// IP addresses it reported.
    pub ips: Vec<String>,
    /// Link selectors it reported.
    pub links: Vec<String>,
    /// Trust decision (e.g. `paired`, `tofu`, `untrusted`); the store does not
    /// interpret it.
    pub trust: String,
    /// First time seen, ms since the epoch. Never changed by `upsert_peer`.
    pub first_seen_ms: i64,
    /// Last time seen, ms since the epoch.
    pub last_seen_ms: i64,
    /// Why this peer is flagged (e.g. its mDNS record claimed another id),
    /// or `None`.
    pub flag: Option<String>,
}

/// Bytes one link carried for one transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStat {
    /// The transfer.
    pub transfer_id: TransferId,
    /// The link's selector, e.g. `tcp:192.168.1.7:7878`.
    pub selector: String,
    /// Payload bytes carried.
    pub bytes: u64,
    /// Over how long, in ms.
    pub elapsed_ms: u64,
    /// When recorded, ms since the epoch.
    pub at_ms: i64,
}

/// Lower-case hex, for ids in messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Encodes a string list as a JSON array (decoded in SQL with `json_each`).
pub(crate) fn json_string_array(items: &[String]) -> String {
    use fmt::Write as _;
    let mut s = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('"');
        for c in item.chars() {
            match c {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(s, "\\u{:04x}", c as u32);
                }
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push(']');
    s
}
