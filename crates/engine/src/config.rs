//! Every tunable number of a transfer, with its unit in its name.

use std::time::Duration;

/// Tunables shared by the sender and receiver engines.
///
/// Defaults start a checkpoint every 8 MiB or 1 s, and the receiver never
/// holds more than 16 MiB written but not yet durable, so a crash costs at
/// most 16 MiB of re-sent data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Size of one chunk (the unit of scheduling, acking and resume).
    pub chunk_size_bytes: u32,
    /// Bytes a link may have sent but not yet acked before its rate and
    /// round trip are measured; from then on its window is
    /// `window_gain_percent` of its bandwidth-delay product plus one chunk,
    /// between `link_window_min_chunks` and `link_window_max_bytes`.
    pub link_window_bytes: u64,
    /// Smallest window of one link, in chunks: a chunk passes several
    /// stages (read, seal, socket, open, hash, write, ack), and each needs
    /// one in hand to keep a CPU-bound path busy however short its round trip.
    pub link_window_min_chunks: u32,
    /// Largest window of one link, however fast and far.
    pub link_window_max_bytes: u64,
    /// Window as a percentage of the measured bandwidth × minimum round trip
    /// (200: room to find out that the link got faster).
    pub window_gain_percent: u32,
    /// An in-flight chunk not acked within this time is given to another link.
    pub chunk_timeout: Duration,
    /// A link with chunks in flight that has sent nothing back for this long
    /// is declared down (a pulled cable, a moved address: TCP would wait
    /// minutes); the IHS then retries it or discovery finds a new path.
    pub link_silence_timeout: Duration,
    /// How often a failed link is tried again (IHS ERROR).
    pub retry_interval: Duration,
    /// Most bytes the receiver holds written but not yet durable (what a
    /// crash may cost); it starts a checkpoint at half of it, and holds
    /// writes at all of it until the running checkpoint is durable...
    pub checkpoint_bytes: u64,
    /// ...or after this much time with unsynced data, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Most copies of one chunk in flight at once (tail duplication).
    pub max_copies_per_chunk: usize,
    /// An idle link duplicates only chunks in flight at least this long, so
    /// fast links do not waste bytes racing each other at the tail.
    pub tail_duplicate_after: Duration,
    /// Rounds of "re-send the bad chunks" after a failed whole-file hash.
    pub max_verify_rounds: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            chunk_size_bytes: 1 << 20,
            link_window_bytes: 8 << 20,
            link_window_min_chunks: 4,
            link_window_max_bytes: 64 << 20,
            window_gain_percent: 200,
            chunk_timeout: Duration::from_secs(20),
            link_silence_timeout: Duration::from_secs(15),
            retry_interval: Duration::from_secs(2),
            checkpoint_bytes: 16 << 20,
            checkpoint_interval: Duration::from_secs(1),
            max_copies_per_chunk: 2,
            tail_duplicate_after: Duration::from_millis(200),
            max_verify_rounds: 3,
        }
    }
}

impl Config {
    /// Number of chunks a file of `size` bytes is cut into with `chunk_size`.
    pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
        size.div_ceil(u64::from(chunk_size.max(1)))
    }
}
