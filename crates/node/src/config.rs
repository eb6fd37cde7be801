//! The node's tunables: the engine's numbers plus the glue's timeouts.

use std::time::Duration;

/// Every number the node uses, with units in the names. One struct, so a
/// config file and flags can override any of them in one place.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Chunking, windows, checkpoints, retries.
    pub engine: gateway_engine::Config,
    /// Caps applied to every decoded frame.
    pub limits: gateway_proto::Limits,
    /// How long a peer has to send its Hello after a link opens.
    pub hello_timeout: Duration,
    /// How long the Noise handshake on a new link may take.
    pub handshake_timeout: Duration,
    /// Who may open a FILE stream: paired peers (default), first key seen per name, or anyone.
    pub trust: gateway_secure::TrustPolicy,
    /// How long the receiver has to answer an Offer/Reload.
    pub accept_timeout: Duration,
    /// With no link up for this long, the sender saves and exits (paused).
    pub pause_after: Duration,
    /// How long the sender waits for the Verdict (the receiver hashes the whole file).
    pub verdict_timeout: Duration,
    /// How often the sender and receiver run their engine timers.
    pub tick: Duration,
    /// Keep this many bytes free on the receiver's disk beyond the file.
    pub reserve_free_bytes: u64,
    /// How long `send --to NAME` browses mDNS for the peer at most.
    pub discovery_window: Duration,
    /// Once the peer answered, how long to wait for its other paths.
    pub discovery_settle: Duration,
    /// While a link to a named receiver is down, look for it again this often.
    pub rediscover_interval: Duration,
    /// With every link to a named receiver up, still look for new paths to it
    /// this often (a transfer that started on Bluetooth gains Wi-Fi or a USB
    /// cable when it appears). Zero turns it off.
    pub grow_interval: Duration,
    /// Receiver: what to do when a name that lands is taken.
    pub on_conflict: crate::dirtree::Conflict,
    /// Receiver: what one `serve` holds at most, whatever its peers do.
    pub caps: Caps,
    /// Sender: ERROR/USER_STOP frames kept in the DB per transfer (the
    /// newest; older ones are deleted as new ones are saved).
    pub max_paused_frames_per_transfer: usize,
}

/// The receiver's caps. Each bounds what peers can make one `serve` hold;
/// a peer over a cap is told `Busy` (and a sender waits and retries) or, for
/// the connection caps, the link is closed before any crypto runs.
///
/// Memory: each served link holds at most about two frames (the link's
/// receive buffer and the frame being written), so receive memory is bounded
/// by `max_links * 2 * limits.max_frame_bytes`, and in practice by the
/// senders' chunk size (1 MiB by default) in place of the frame limit.
#[derive(Clone, Debug)]
pub struct Caps {
    /// Links served at once, in any state.
    pub max_links: usize,
    /// Links still in their Noise handshake or before their Hello. Each is
    /// cut after `handshake_timeout` + `hello_timeout`; this bounds how much
    /// a flood of silent connections (slow loris) can hold at once.
    pub max_handshaking_links: usize,
    /// Links from one peer key at once.
    pub max_links_per_peer: usize,
    /// Transfers being fed (a link attached) at once; an Offer or a Reload
    /// over it gets Reject(Busy) and the sender waits.
    pub max_open_transfers: usize,
    /// The same, per peer key.
    pub max_open_transfers_per_peer: usize,
    /// A verified link that delivers no whole frame, or does not take our
    /// reply, for this long is dropped (a peer that trickles or stops
    /// reading holds nothing for longer).
    pub link_idle_timeout: Duration,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            max_links: 256,
            max_handshaking_links: 64,
            max_links_per_peer: 16,
            max_open_transfers: 64,
            max_open_transfers_per_peer: 8,
            link_idle_timeout: Duration::from_secs(300),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            engine: gateway_engine::Config::default(),
            limits: gateway_proto::Limits::default(),
            hello_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            trust: gateway_secure::TrustPolicy::Paired,
            accept_timeout: Duration::from_secs(30),
            pause_after: Duration::from_secs(60),
            verdict_timeout: Duration::from_secs(600),
            tick: Duration::from_millis(100),
            reserve_free_bytes: 16 << 20,
            discovery_window: Duration::from_secs(3),
            discovery_settle: Duration::from_millis(300),
            rediscover_interval: Duration::from_secs(5),
            grow_interval: Duration::from_secs(15),
            on_conflict: crate::dirtree::Conflict::Rename,
            caps: Caps::default(),
            max_paused_frames_per_transfer: 32,
        }
    }
}
