//! Noise XX over any `Link`: the handshake travels in the link's frames, then
//! every frame is encrypted and authenticated.
//!
//! Handshake: `Noise_XX_25519_AESGCM_SHA256` (ring does AES-GCM and SHA-256;
//! snow's own X25519, since ring cannot take a static private key), prologue
//! `gateway/1`. The first message's cleartext payload is the same version
//! string, so a peer of another version is told so instead of "decrypt
//! error"; the other two payloads are empty.
//!
//! Transport: a frame larger than one Noise message (65535 bytes) is sealed
//! as a run of Noise messages written back to back into ONE inner frame.
//! Every segment but the last is exactly 65535 bytes (65519 of plaintext),
//! so no header is needed and the inner link still moves whole frames. Each
//! direction counts its own nonces (snow's stateless transport with explicit
//! nonces, shared in an `Arc`), so the two halves work from different tasks.
//! The last segment of a frame is sealed under a nonce with its top bit set,
//! so a frame cut at a segment boundary does not open as a shorter one.
//! A tampered, replayed, reordered or cut frame fails to authenticate:
//! `recv` returns `LinkError::Corrupt` and keeps returning it, because the
//! nonce stream is lost; drop the link and open a new one. A failed `send`
//! likewise leaves the link unusable.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use gateway_link::{FrameRx, FrameTx, Link, LinkCaps, LinkError, LinkInfo};
use snow::StatelessTransportState;

use crate::SecureError;
use crate::key::{NodeId, NodeKey};

const PATTERN: &str = "Noise_XX_25519_AESGCM_SHA256";
const PROLOGUE: &[u8] = b"gateway/1";
const MAX_MSG: usize = 65535;
const TAG: usize = 16;
const MAX_PT: usize = MAX_MSG - TAG;

pub(crate) fn builder() -> snow::Builder<'static> {
    let params = PATTERN.parse().expect("a valid Noise pattern");
    snow::Builder::with_resolver(
        params,
        Box::new(snow::resolvers::FallbackResolver::new(
            Box::new(snow::resolvers::RingResolver),
            Box::new(snow::resolvers::DefaultResolver),
        )),
    )
}

/// An authenticated, encrypted link to the holder of `remote_public`.
pub struct SecureLink {
    tx: SecureTx,
    rx: SecureRx,
    caps: LinkCaps,
    info: LinkInfo,
    local: [u8; 32],
    remote: [u8; 32],
    hash: [u8; 32],
}

impl std::fmt::Debug for SecureLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureLink")
            .field("remote", &self.remote_id())
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl SecureLink {
    /// The peer's static public key.
    pub fn remote_public(&self) -> &[u8; 32] {
        &self.remote
    }

    /// The peer's node id.
    pub fn remote_id(&self) -> NodeId {
        NodeId::from_public(&self.remote)
    }

    /// The Noise handshake hash (channel binding for pairing).
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.hash
    }

    /// This node's static public key on this link.
    pub(crate) fn local_public(&self) -> &[u8; 32] {
        &self.local
    }

    /// Both halves, for request/response exchanges (pairing) before `split`.
    pub fn frames(&mut self) -> (&mut dyn FrameTx, &mut dyn FrameRx) {
        (&mut self.tx, &mut self.rx)
    }
}

impl Link for SecureLink {
    fn caps(&self) -> LinkCaps {
        self.caps
    }

    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
        (Box::new(self.tx), Box::new(self.rx))
    }
}

/// Runs the handshake as initiator (the side that opened the link) and
/// returns the encrypted link; its peer is whoever holds
/// [`SecureLink::remote_public`], which the caller must still judge (see
/// [`decide`](crate::decide)).
///
/// On any error, and when `timeout` passes first, the link is dropped and
/// nothing of it is kept. Errors: [`SecureError::Timeout`],
/// [`SecureError::Handshake`] (a truncated, altered or replayed message, or
/// a peer that closed mid-handshake), [`SecureError::Version`],
/// [`SecureError::Link`] (the transport failed).
pub async fn connect(
    link: Box<dyn Link>,
    key: &NodeKey,
    timeout: Duration,
) -> Result<SecureLink, SecureError> {
    tokio::time::timeout(timeout, handshake(link, key, true))
        .await
        .map_err(|_| SecureError::Timeout(timeout))?
}

/// Runs the handshake as responder (the side that accepted the link); the
/// same contract as [`connect`].
pub async fn accept(
    link: Box<dyn Link>,
    key: &NodeKey,
    timeout: Duration,
) -> Result<SecureLink, SecureError> {
    tokio::time::timeout(timeout, handshake(link, key, false))
        .await
        .map_err(|_| SecureError::Timeout(timeout))?
}

fn hs_err(e: snow::Error) -> SecureError {
    SecureError::Handshake(format!("the Noise library refused to proceed: {e}"))
}

/// Why reading handshake message `n` (1..=3) failed, in words.
fn read_err(n: usize, len: usize, e: &snow::Error) -> SecureError {
    let why = match e {
        snow::Error::Decrypt => {
            "it failed authentication (altered, replayed, from another session, or the peer runs another gateway version)"
        }
        snow::Error::Input => "it is truncated or malformed",
        _ => "it is invalid",
    };
    SecureError::Handshake(format!(
        "handshake message {n} ({len} bytes) was refused: {why}; the link is dropped"
    ))
}

async fn handshake(
    link: Box<dyn Link>,
    key: &NodeKey,
    initiator: bool,
) -> Result<SecureLink, SecureError> {
    let selector = link.info().selector.clone();
    let r = run_handshake(link, key, initiator).await;
    if let Err(e) = &r {
        tracing::debug!(link = %selector, initiator, "noise handshake failed: {e}");
    }
    r
}

fn closed_mid_handshake(e: LinkError) -> SecureError {
    match e {
        LinkError::Closed => SecureError::Handshake(
            "the peer closed the link during the handshake; is a gateway node of the same version listening there?".into(),
        ),
        e => SecureError::Link(e),
    }
}

async fn run_handshake(
    link: Box<dyn Link>,
    key: &NodeKey,
    initiator: bool,
) -> Result<SecureLink, SecureError> {
    let inner_caps = link.caps();
    let info = link.info().clone();
    let (mut tx, mut rx) = link.split();
    let b = builder()
        .local_private_key(key.private())
        .map_err(hs_err)?
        .prologue(PROLOGUE)
        .map_err(hs_err)?;
    let mut hs = if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    }
    .map_err(hs_err)?;
    let mut buf = vec![0u8; MAX_MSG];
    let mut payload = vec![0u8; MAX_MSG];
    // XX: -> e; <- e, ee, s, es; -> s, se. Message 1 carries the version in
    // clear (it is also the prologue, so it cannot be swapped unnoticed).
    let mut n = 1;
    while !hs.is_handshake_finished() {
        let my_turn = (n % 2 == 1) == initiator;
        let version: &[u8] = if n == 1 { PROLOGUE } else { &[] };
        if my_turn {
            let len = hs.write_message(version, &mut buf).map_err(hs_err)?;
            tx.send(&buf[..len]).await.map_err(closed_mid_handshake)?;
        } else {
            let msg = rx.recv().await.map_err(closed_mid_handshake)?;
            if msg.len() > MAX_MSG {
                return Err(SecureError::Handshake(format!(
                    "handshake message {n} is {} bytes, more than a Noise message can be; the peer does not speak gateway's handshake",
                    msg.len()
                )));
            }
            let got = hs
                .read_message(&msg, &mut payload)
                .map_err(|e| read_err(n, msg.len(), &e))?;
            if payload[..got] != *version {
                return Err(if n == 1 {
                    SecureError::Version {
                        peer: String::from_utf8_lossy(&payload[..got.min(32)]).into_owned(),
                    }
                } else {
                    SecureError::Handshake(format!(
                        "handshake message {n} carries an unexpected {got}-byte payload"
                    ))
                });
            }
        }
        n += 1;
    }
    let remote: [u8; 32] = hs
        .get_remote_static()
        .and_then(|r| r.try_into().ok())
        .ok_or_else(|| SecureError::Handshake("the peer sent no static key".into()))?;
    let hash: [u8; 32] = hs
        .get_handshake_hash()
        .get(..32)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| SecureError::Handshake("short handshake hash".into()))?;
    let state = Arc::new(hs.into_stateless_transport_mode().map_err(hs_err)?);
    let caps = LinkCaps {
        max_frame: max_plaintext(inner_caps.max_frame),
        ..inner_caps
    };
    tracing::debug!(peer = %NodeId::from_public(&remote), link = %info.selector, initiator, "noise handshake done");
    Ok(SecureLink {
        tx: SecureTx {
            inner: tx,
            state: state.clone(),
            nonce: 0,
            out: Vec::new(),
            max_plain: caps.max_frame,
        },
        rx: SecureRx {
            inner: rx,
            state,
            nonce: 0,
            broken: false,
            buf: BytesMut::new(),
        },
        caps,
        info,
        local: *key.public(),
        remote,
        hash,
    })
}

/// Set in the nonce of a frame's last segment. Without it, a frame cut at a
/// segment boundary would open as a valid shorter frame; with it, the cut
/// frame's new last segment fails authentication (as in the STREAM
/// construction). Counters stay below this bit, so no nonce repeats.
const LAST_SEGMENT: u64 = 1 << 63;

fn segment_nonce(counter: u64, last: bool) -> u64 {
    if last {
        counter | LAST_SEGMENT
    } else {
        counter
    }
}

/// Sealed length of a `plain`-byte frame: one 16-byte tag per segment of up
/// to `MAX_PT` bytes (an empty frame is one empty segment).
fn ciphertext_len(plain: usize) -> usize {
    plain + plain.div_ceil(MAX_PT).max(1) * TAG
}

/// The largest plaintext whose sealed form fits in `inner` bytes.
fn max_plaintext(inner: usize) -> usize {
    let segments = inner.div_ceil(MAX_MSG).max(1);
    let last = inner - (segments - 1) * MAX_MSG;
    if last >= TAG {
        inner - segments * TAG
    } else {
        // A last segment could not even hold its tag: use one fewer, full.
        (segments - 1) * MAX_PT
    }
}

/// Plaintext length of a sealed frame of `sealed` bytes, or `None` if no
/// sender could have produced that length.
fn plaintext_len(sealed: usize) -> Option<usize> {
    let rest = sealed % MAX_MSG;
    if sealed == 0 || (rest != 0 && rest < TAG) {
        return None;
    }
    Some(sealed - sealed.div_ceil(MAX_MSG) * TAG)
}

struct SecureTx {
    inner: Box<dyn FrameTx>,
    state: Arc<StatelessTransportState>,
    nonce: u64,
    /// Reused between frames: the sealed frame is built here.
    out: Vec<u8>,
    max_plain: usize,
}

#[async_trait]
impl FrameTx for SecureTx {
    async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        if frame.len() > self.max_plain {
            return Err(LinkError::FrameTooLarge {
                len: frame.len(),
                max: self.max_plain,
            });
        }
        // The payload is copied once, into `out`, and sealed there in place.
        self.out.resize(ciphertext_len(frame.len()), 0);
        let segments = frame.len().div_ceil(MAX_PT).max(1);
        if self.nonce + segments as u64 >= LAST_SEGMENT {
            return Err(LinkError::Corrupt(
                "this link has used up its nonces; open a new link".into(),
            ));
        }
        let mut at = 0;
        let mut pieces = frame.chunks(MAX_PT);
        let first = pieces.next().unwrap_or_default();
        for (i, piece) in std::iter::once(first).chain(pieces).enumerate() {
            let end = at + piece.len() + TAG;
            let nonce = segment_nonce(self.nonce, i + 1 == segments);
            self.state
                .write_message(nonce, piece, &mut self.out[at..end])
                .map_err(|e| LinkError::Corrupt(format!("cannot encrypt: {e}")))?;
            self.nonce += 1;
            at = end;
        }
        debug_assert_eq!(at, self.out.len());
        self.inner.send(&self.out).await
    }

    async fn close(&mut self) -> Result<(), LinkError> {
        self.inner.close().await
    }
}

struct SecureRx {
    inner: Box<dyn FrameRx>,
    state: Arc<StatelessTransportState>,
    nonce: u64,
    broken: bool,
    buf: BytesMut,
}

impl SecureRx {
    fn fail(&mut self, why: String) -> LinkError {
        self.broken = true;
        LinkError::Corrupt(why)
    }

    /// Opens one sealed frame. Each segment is decrypted straight into its
    /// place in the output (an output slice as long as the segment lets ring
    /// open it in place without a temporary); the tag's room is overwritten
    /// by the next segment's plaintext and cut off at the end.
    fn open(&mut self, sealed: &[u8]) -> Result<Bytes, LinkError> {
        let Some(plain_len) = plaintext_len(sealed.len()) else {
            return Err(self.fail(format!(
                "a {}-byte frame cannot be a sealed frame (cut or padded on the way); the link is dropped",
                sealed.len()
            )));
        };
        // Reuses the last frame's allocation once the caller has dropped it
        // (saves mapping and faulting in fresh pages for every large frame).
        let plain = &mut self.buf;
        plain.clear();
        plain.reserve(sealed.len());
        plain.resize(sealed.len(), 0);
        let mut at = 0;
        let segments = sealed.len().div_ceil(MAX_MSG);
        for (i, seg) in sealed.chunks(MAX_MSG).enumerate() {
            let nonce = segment_nonce(self.nonce, i + 1 == segments);
            match self
                .state
                .read_message(nonce, seg, &mut plain[at..at + seg.len()])
            {
                Ok(n) => at += n,
                Err(_) => {
                    return Err(self.fail(format!(
                        "frame segment {} failed authentication (tampered, replayed, reordered or cut); the link is dropped",
                        self.nonce
                    )));
                }
            }
            self.nonce += 1;
        }
        debug_assert_eq!(at, plain_len);
        Ok(self.buf.split_to(plain_len).freeze())
    }
}

#[async_trait]
impl FrameRx for SecureRx {
    /// Cancel-safe as the inner `recv` is: nothing after it awaits.
    async fn recv(&mut self) -> Result<Bytes, LinkError> {
        if self.broken {
            return Err(LinkError::Corrupt(
                "an earlier frame failed authentication; open a new link".into(),
            ));
        }
        let sealed = self.inner.recv().await?;
        self.open(&sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_link::Registry;
    use std::sync::Mutex;

    fn keys() -> (NodeKey, NodeKey) {
        let da = tempfile::tempdir().unwrap();
        let db = tempfile::tempdir().unwrap();
        (
            NodeKey::load_or_create(da.path()).unwrap(),
            NodeKey::load_or_create(db.path()).unwrap(),
        )
    }

    async fn raw_pair(reg: &Registry, name: &str) -> (Box<dyn Link>, Box<dyn Link>) {
        let sel = format!("mock:{name}");
        let mut l = reg.listen(&sel).await.unwrap();
        let (a, b) = tokio::join!(reg.open(&sel), l.accept());
        (a.unwrap(), b.unwrap())
    }

    async fn pair_over(reg: &Registry, name: &str) -> (SecureLink, SecureLink, NodeKey, NodeKey) {
        let (ka, kb) = keys();
        let (a, b) = raw_pair(reg, name).await;
        let t = Duration::from_secs(5);
        let (sa, sb) = tokio::join!(connect(a, &ka, t), accept(b, &kb, t));
        (sa.unwrap(), sb.unwrap(), ka, kb)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
            .collect()
    }

    #[tokio::test]
    async fn both_ends_learn_each_others_key_and_frames_round_trip_both_ways() {
        let reg = Registry::new();
        let (a, b, ka, kb) = pair_over(&reg, "noise-rt").await;
        assert_eq!(a.remote_public(), kb.public());
        assert_eq!(b.remote_public(), ka.public());
        assert_eq!(a.remote_id(), kb.node_id());
        assert_eq!(b.remote_id(), ka.node_id());
        assert_eq!(a.handshake_hash(), b.handshake_hash());
        assert_eq!(a.info().selector, "mock:noise-rt");
        let (mut at, mut ar) = Box::new(a).split();
        let (mut bt, mut br) = Box::new(b).split();
        for len in [
            0usize,
            1,
            MAX_PT - 1,
            MAX_PT,
            MAX_PT + 1,
            2 * MAX_PT,
            3 * MAX_PT + 7,
            4 << 20,
        ] {
            let f = pattern(len, 1);
            at.send(&f).await.unwrap();
            let got = br.recv().await.unwrap();
            assert!(
                got == f,
                "a->b frame of {len} bytes came back as {} bytes, or altered",
                got.len()
            );
            let f = pattern(len, 2);
            bt.send(&f).await.unwrap();
            let got = ar.recv().await.unwrap();
            assert!(
                got == f,
                "b->a frame of {len} bytes came back as {} bytes, or altered",
                got.len()
            );
        }
    }

    #[tokio::test]
    async fn a_frame_of_exactly_max_frame_round_trips_and_one_more_byte_is_refused() {
        let reg = Registry::new();
        let (a, b, _, _) = pair_over(&reg, "noise-max").await;
        let max = a.caps().max_frame;
        assert_eq!(max, max_plaintext(gateway_link::mock::DEFAULT_MAX_FRAME));
        assert_eq!(ciphertext_len(max), gateway_link::mock::DEFAULT_MAX_FRAME);
        let (mut at, _ar) = Box::new(a).split();
        let (_bt, mut br) = Box::new(b).split();
        let f = pattern(max, 3);
        let (sent, got) = tokio::join!(at.send(&f), br.recv());
        sent.unwrap();
        assert!(got.unwrap() == f, "the max_frame frame was altered");
        match at.send(&vec![0; max + 1]).await {
            Err(LinkError::FrameTooLarge { len, max: m }) => assert_eq!((len, m), (max + 1, max)),
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        at.send(b"still fine").await.unwrap();
        assert_eq!(br.recv().await.unwrap().as_ref(), b"still fine");
    }

    #[test]
    fn the_largest_plaintext_fills_the_inner_frame_exactly() {
        let mut inners = vec![1usize, 15, 16, 17, 100, (16 << 20) + (64 << 10)];
        for k in 1..5 {
            for d in [0usize, 1, 15, 16, 17] {
                inners.push(k * MAX_MSG + d);
                inners.push(k * MAX_MSG - d);
            }
        }
        for inner in inners {
            let p = max_plaintext(inner);
            if inner >= TAG {
                assert!(
                    ciphertext_len(p) <= inner,
                    "inner {inner}: {p} does not fit"
                );
            }
            assert!(
                ciphertext_len(p + 1) > inner,
                "inner {inner}: {} would fit too",
                p + 1
            );
        }
        for p in (0..5 * MAX_PT)
            .step_by(997)
            .chain([0, MAX_PT, 2 * MAX_PT, MAX_PT + 1])
        {
            assert_eq!(plaintext_len(ciphertext_len(p)), Some(p), "plaintext {p}");
        }
        assert_eq!(plaintext_len(0), None);
        assert_eq!(plaintext_len(TAG - 1), None);
        assert_eq!(plaintext_len(MAX_MSG + TAG - 1), None);
    }

    /// What the tap does to the frames the opened end sends (counted from 1;
    /// frames 1 and 2 are handshake messages 1 and 3).
    #[derive(Clone, Copy, Debug)]
    enum Fault {
        None,
        /// Flip one bit in the middle of frame n.
        Flip(usize),
        /// Send only the first `keep` bytes of frame n.
        Cut(usize, usize),
        /// Send frame n twice.
        Replay(usize),
        /// Send frame n after frame n + 1.
        Swap(usize),
    }

    /// A link whose sent frames the test can see and damage.
    struct Tap {
        inner: Box<dyn Link>,
        seen: Arc<Mutex<Vec<u8>>>,
        fault: Fault,
    }
    struct TapTx {
        inner: Box<dyn FrameTx>,
        seen: Arc<Mutex<Vec<u8>>>,
        fault: Fault,
        count: usize,
        held: Option<Vec<u8>>,
    }
    impl Link for Tap {
        fn caps(&self) -> LinkCaps {
            self.inner.caps()
        }
        fn info(&self) -> &LinkInfo {
            self.inner.info()
        }
        fn split(self: Box<Self>) -> (Box<dyn FrameTx>, Box<dyn FrameRx>) {
            let (t, r) = self.inner.split();
            let tx = TapTx {
                inner: t,
                seen: self.seen,
                fault: self.fault,
                count: 0,
                held: None,
            };
            (Box::new(tx), r)
        }
    }
    #[async_trait]
    impl FrameTx for TapTx {
        async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
            self.count += 1;
            let n = self.count;
            self.seen.lock().unwrap().extend_from_slice(frame);
            let mut f = frame.to_vec();
            match self.fault {
                Fault::Flip(k) if k == n && !f.is_empty() => {
                    let i = f.len() / 2;
                    f[i] ^= 0x40;
                }
                Fault::Cut(k, keep) if k == n => f.truncate(keep),
                Fault::Replay(k) if k == n => self.inner.send(&f).await?,
                Fault::Swap(k) if k == n => {
                    self.held = Some(f);
                    return Ok(());
                }
                _ => {}
            }
            self.inner.send(&f).await?;
            if let Some(h) = self.held.take() {
                self.inner.send(&h).await?;
            }
            Ok(())
        }
        async fn close(&mut self) -> Result<(), LinkError> {
            self.inner.close().await
        }
    }

    type Handshaken = (
        Result<SecureLink, SecureError>,
        Result<SecureLink, SecureError>,
        Arc<Mutex<Vec<u8>>>,
    );

    async fn tapped(name: &str, fault: Fault) -> Handshaken {
        let reg = Registry::new();
        let (ka, kb) = keys();
        let (a, b) = raw_pair(&reg, name).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let a: Box<dyn Link> = Box::new(Tap {
            inner: a,
            seen: seen.clone(),
            fault,
        });
        let t = Duration::from_secs(2);
        let (sa, sb) = tokio::join!(connect(a, &ka, t), accept(b, &kb, t));
        (sa, sb, seen)
    }

    async fn halves(
        name: &str,
        fault: Fault,
    ) -> (Box<dyn FrameTx>, Box<dyn FrameRx>, Arc<Mutex<Vec<u8>>>) {
        let (a, b, seen) = tapped(name, fault).await;
        let (at, _) = Box::new(a.unwrap()).split();
        let (_, br) = Box::new(b.unwrap()).split();
        (at, br, seen)
    }

    fn is_corrupt(r: &Result<Bytes, LinkError>) -> bool {
        matches!(r, Err(LinkError::Corrupt(_)))
    }

    #[tokio::test]
    async fn no_plaintext_of_a_frame_is_on_the_wire() {
        let (mut at, mut br, seen) = halves("noise-wire", Fault::None).await;
        let secret = b"a very secret sentence that must not be seen; ".repeat(3000);
        at.send(&secret).await.unwrap();
        assert!(br.recv().await.unwrap() == secret);
        let wire = seen.lock().unwrap().clone();
        assert!(
            wire.len() > secret.len(),
            "expected the whole frame on the wire, saw {} bytes",
            wire.len()
        );
        let needle = &secret[..16];
        assert!(
            !wire.windows(needle.len()).any(|w| w == needle),
            "found plaintext on the wire"
        );
    }

    #[tokio::test]
    async fn a_bit_flipped_handshake_message_fails_cleanly() {
        // Frame 2 from the initiator is handshake message 3 (s, se).
        let (_, b, _) = tapped("noise-flip-hs", Fault::Flip(2)).await;
        match b {
            Err(SecureError::Handshake(why)) => assert!(why.contains("message 3"), "{why}"),
            other => panic!("expected a Handshake error, got {other:?}"),
        }
        // Frame 1 is message 1; its key is bare, so a flip surfaces at message 2.
        let (a, b, _) = tapped("noise-flip-hs1", Fault::Flip(1)).await;
        assert!(
            matches!(a, Err(SecureError::Handshake(_))),
            "expected the initiator to refuse message 2, got {a:?}"
        );
        assert!(b.is_err(), "the responder finished a broken handshake");
    }

    #[tokio::test]
    async fn a_truncated_handshake_message_fails_cleanly() {
        for (frame, keep) in [(1usize, 10usize), (2, 40), (2, 0)] {
            let t0 = std::time::Instant::now();
            let (_, b, _) = tapped("noise-cut-hs", Fault::Cut(frame, keep)).await;
            assert!(
                matches!(b, Err(SecureError::Handshake(_))),
                "frame {frame} cut to {keep}: expected a Handshake error, got {b:?}"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "it waited for the timeout"
            );
        }
    }

    #[tokio::test]
    async fn a_replayed_handshake_message_fails_cleanly() {
        // Message 1 sent twice: the responder reads the copy as message 3.
        let (_, b, _) = tapped("noise-replay-hs", Fault::Replay(1)).await;
        match b {
            Err(SecureError::Handshake(why)) => assert!(why.contains("message 3"), "{why}"),
            other => panic!("expected a Handshake error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_message_one_from_an_old_session_gets_no_further_than_a_timeout() {
        // Replaying a recorded first message to a new responder: it answers,
        // but nobody can write message 3, so it gives up at its timeout.
        let reg = Registry::new();
        let (_, kb) = keys();
        let (_, _, seen) = tapped("noise-rec", Fault::None).await;
        let recorded = seen.lock().unwrap()[..32 + PROLOGUE.len()].to_vec();
        let (a, b) = raw_pair(&reg, "noise-old").await;
        let (mut tx, mut rx) = a.split();
        tx.send(&recorded).await.unwrap();
        let r = accept(b, &kb, Duration::from_millis(300)).await;
        assert!(matches!(r, Err(SecureError::Timeout(_))), "{r:?}");
        // The responder dropped its end: the replayer sees the link close
        // (after message 2, which it cannot use).
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => break true,
                Err(_) => break false,
            }
        };
        assert!(closed, "the timed-out responder still holds the link");
    }

    #[tokio::test]
    async fn truncated_or_junk_first_messages_fail_without_panic() {
        let reg = Registry::new();
        let (k, _) = keys();
        let mut big = vec![0u8; 32];
        big.extend_from_slice(b"gateway/1 and more");
        for junk in [
            &b""[..],
            b"\x01",
            &[0u8; 31][..],
            &[0xffu8; 200][..],
            &big[..],
            &vec![7u8; MAX_MSG + 1][..],
        ] {
            let (a, b) = raw_pair(&reg, "noise-junk").await;
            let (mut tx, _rx) = a.split();
            tx.send(junk).await.unwrap();
            let r = accept(b, &k, Duration::from_secs(1)).await;
            assert!(
                matches!(
                    r,
                    Err(SecureError::Handshake(_) | SecureError::Version { .. })
                ),
                "junk of {} bytes: expected a Handshake or Version error, got {r:?}",
                junk.len()
            );
        }
    }

    #[tokio::test]
    async fn a_peer_that_hangs_up_mid_handshake_is_a_handshake_error() {
        let reg = Registry::new();
        let (k, _) = keys();
        let (a, b) = raw_pair(&reg, "noise-hangup").await;
        let (mut tx, _rx) = a.split();
        tx.close().await.unwrap();
        match accept(b, &k, Duration::from_secs(1)).await {
            Err(SecureError::Handshake(why)) => assert!(why.contains("closed"), "{why}"),
            other => panic!("expected a Handshake error, got {other:?}"),
        }
        // Dropped without a close: the transport's own error, promptly.
        let (a, b) = raw_pair(&reg, "noise-hangup2").await;
        drop(a);
        let r = accept(b, &k, Duration::from_secs(1)).await;
        assert!(matches!(r, Err(SecureError::Link(_))), "{r:?}");
    }

    #[tokio::test]
    async fn a_peer_of_another_version_is_told_so() {
        let reg = Registry::new();
        let (k, _) = keys();
        let (a, b) = raw_pair(&reg, "noise-v2").await;
        let (other, _) = keys();
        let mut hs = builder()
            .local_private_key(other.private())
            .unwrap()
            .prologue(b"gateway/2")
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut buf = vec![0u8; 200];
        let n = hs.write_message(b"gateway/2", &mut buf).unwrap();
        let (mut tx, _rx) = a.split();
        tx.send(&buf[..n]).await.unwrap();
        match accept(b, &k, Duration::from_secs(1)).await {
            Err(e @ SecureError::Version { .. }) => {
                assert!(e.to_string().contains("gateway/2"), "{e}")
            }
            other => panic!("expected a Version error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_handshake_that_never_finishes_times_out_on_either_side() {
        let reg = Registry::new();
        let (k, _) = keys();
        let (a, b) = raw_pair(&reg, "noise-silent").await;
        let t0 = std::time::Instant::now();
        let r = accept(b, &k, Duration::from_millis(200)).await;
        assert!(matches!(r, Err(SecureError::Timeout(_))), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        // The timed-out side let go of its link: the silent peer sees it close.
        let (_tx, mut rx) = a.split();
        let seen = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert!(
            matches!(seen, Ok(Err(_))),
            "expected the link closed, got {seen:?}"
        );

        let (a, _b) = raw_pair(&reg, "noise-silent2").await;
        let r = connect(a, &k, Duration::from_millis(200)).await;
        assert!(matches!(r, Err(SecureError::Timeout(_))), "{r:?}");
    }

    #[tokio::test]
    async fn a_tampered_frame_is_refused_and_breaks_the_link() {
        // Frames 1-2 are handshake; frame 3 is the first data frame.
        let (mut at, mut br, _) = halves("noise-flip-data", Fault::Flip(3)).await;
        at.send(b"hello").await.unwrap();
        assert!(is_corrupt(&br.recv().await));
        at.send(b"again").await.unwrap();
        assert!(is_corrupt(&br.recv().await), "the link stays broken");
    }

    #[tokio::test]
    async fn a_tampered_segment_of_a_large_frame_is_refused() {
        let (mut at, mut br, _) = halves("noise-flip-big", Fault::Flip(3)).await;
        at.send(&pattern(5 * MAX_PT + 3, 4)).await.unwrap();
        assert!(is_corrupt(&br.recv().await));
    }

    #[tokio::test]
    async fn a_replayed_frame_is_refused() {
        let (mut at, mut br, _) = halves("noise-replay", Fault::Replay(4)).await;
        at.send(b"one").await.unwrap(); // frame 3
        at.send(b"two").await.unwrap(); // frame 4, sent twice
        assert_eq!(br.recv().await.unwrap().as_ref(), b"one");
        assert_eq!(br.recv().await.unwrap().as_ref(), b"two");
        assert!(is_corrupt(&br.recv().await));
    }

    #[tokio::test]
    async fn reordered_frames_are_refused() {
        let (mut at, mut br, _) = halves("noise-swap", Fault::Swap(3)).await;
        at.send(b"one").await.unwrap();
        at.send(b"two").await.unwrap();
        assert!(is_corrupt(&br.recv().await));
    }

    #[tokio::test]
    async fn truncated_frames_are_refused_without_panic() {
        let big = 3 * MAX_PT + 100;
        let sealed = ciphertext_len(big);
        for keep in [0, 5, TAG, 2 * MAX_MSG, 2 * MAX_MSG + 3, sealed - 1] {
            let (mut at, mut br, _) = halves("noise-cut", Fault::Cut(3, keep)).await;
            at.send(&pattern(big, 5)).await.unwrap();
            let r = br.recv().await;
            assert!(
                is_corrupt(&r),
                "cut to {keep} bytes: expected Corrupt, got {r:?}"
            );
        }
    }

    /// Pushes 256 MiB in 1 MiB frames from one task to another; MB/s.
    async fn push_256_mib(mut tx: Box<dyn FrameTx>, mut rx: Box<dyn FrameRx>) -> f64 {
        let frame = pattern(1 << 20, 6);
        let check = frame.clone();
        let n = 256;
        let t0 = std::time::Instant::now();
        let recv = tokio::spawn(async move {
            for i in 0..n {
                let got = rx.recv().await.unwrap();
                assert!(got == check, "frame {i} altered");
            }
        });
        for _ in 0..n {
            tx.send(&frame).await.unwrap();
        }
        recv.await.unwrap();
        (n << 20) as f64 / t0.elapsed().as_secs_f64() / 1e6
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn encrypted_frames_move_fast() {
        let reg = Registry::new();
        let (a, b) = raw_pair(&reg, "plain-speed").await;
        let (at, _ar) = a.split();
        let (_bt, br) = b.split();
        let plain = push_256_mib(at, br).await;
        let (a, b, _, _) = pair_over(&reg, "noise-speed").await;
        let (at, _ar) = Box::new(a).split();
        let (_bt, br) = Box::new(b).split();
        let sealed = push_256_mib(at, br).await;
        eprintln!(
            "256 MiB in 1 MiB frames: plain mock link {plain:.0} MB/s, encrypted {sealed:.0} MB/s (seal and open on two tasks)"
        );
    }
}
