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

/// Runs the handshake as initiator (the side that opened the link).
pub async fn connect(
    link: Box<dyn Link>,
    key: &NodeKey,
    timeout: Duration,
) -> Result<SecureLink, SecureError> {
    tokio::time::timeout(timeout, handshake(link, key, true))
        .await
        .map_err(|_| SecureError::Timeout(timeout))?
}

/// Runs the handshake as responder (the side that accepted the link).
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
            tx.send(&buf[..len]).await?;
        } else {
            let msg = rx.recv().await?;
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
        },
        caps,
        info,
        local: *key.public(),
        remote,
        hash,
    })
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
        let mut at = 0;
        let mut pieces = frame.chunks(MAX_PT);
        let first = pieces.next().unwrap_or_default();
        for piece in std::iter::once(first).chain(pieces) {
            let end = at + piece.len() + TAG;
            self.state
                .write_message(self.nonce, piece, &mut self.out[at..end])
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
        let mut plain = BytesMut::zeroed(sealed.len());
        let mut at = 0;
        for seg in sealed.chunks(MAX_MSG) {
            match self
                .state
                .read_message(self.nonce, seg, &mut plain[at..at + seg.len()])
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
        plain.truncate(plain_len);
        Ok(plain.freeze())
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

    async fn pair_over(reg: &Registry, name: &str) -> (SecureLink, SecureLink, NodeKey, NodeKey) {
        let da = tempfile::tempdir().unwrap();
        let db = tempfile::tempdir().unwrap();
        let ka = NodeKey::load_or_create(da.path()).unwrap();
        let kb = NodeKey::load_or_create(db.path()).unwrap();
        let mut l = reg.listen(&format!("mock:{name}")).await.unwrap();
        let sel = format!("mock:{name}");
        let (a, b) = tokio::join!(reg.open(&sel), l.accept());
        let t = Duration::from_secs(5);
        let (sa, sb) = tokio::join!(connect(a.unwrap(), &ka, t), accept(b.unwrap(), &kb, t));
        (sa.unwrap(), sb.unwrap(), ka, kb)
    }

    #[tokio::test]
    async fn both_ends_learn_each_others_key_and_frames_round_trip() {
        let reg = Registry::new();
        let (a, b, ka, kb) = pair_over(&reg, "noise-rt").await;
        assert_eq!(a.remote_public(), kb.public());
        assert_eq!(b.remote_public(), ka.public());
        assert_eq!(a.handshake_hash(), b.handshake_hash());
        let (mut at, _ar) = Box::new(a).split();
        let (_bt, mut br) = Box::new(b).split();
        for len in [
            0usize,
            1,
            MAX_PT - 1,
            MAX_PT,
            MAX_PT + 1,
            3 * MAX_PT + 7,
            4 << 20,
        ] {
            let f: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            at.send(&f).await.unwrap();
            assert_eq!(
                br.recv().await.unwrap().as_ref(),
                &f[..],
                "frame of {len} bytes"
            );
        }
    }

    #[test]
    fn the_largest_plaintext_fits_the_inner_frame() {
        for inner in [100usize, MAX_MSG, MAX_MSG + 1, (16 << 20) + (64 << 10)] {
            let p = max_plaintext(inner);
            assert!(ciphertext_len(p) <= inner, "inner {inner}");
        }
    }

    /// A link whose frames the test can see and change.
    struct Tap {
        inner: Box<dyn Link>,
        seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        flip: Option<usize>,
        replay: bool,
    }
    struct TapTx {
        inner: Box<dyn FrameTx>,
        seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        flip: Option<usize>,
        replay: bool,
        count: usize,
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
            (
                Box::new(TapTx {
                    inner: t,
                    seen: self.seen,
                    flip: self.flip,
                    replay: self.replay,
                    count: 0,
                }),
                r,
            )
        }
    }
    #[async_trait]
    impl FrameTx for TapTx {
        async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
            self.count += 1;
            self.seen.lock().unwrap().push(frame.to_vec());
            let mut f = frame.to_vec();
            if self.flip == Some(self.count) && !f.is_empty() {
                let i = f.len() / 2;
                f[i] ^= 0x40;
            }
            self.inner.send(&f).await?;
            if self.replay && self.count == 4 {
                self.inner.send(&f).await?;
            }
            Ok(())
        }
        async fn close(&mut self) -> Result<(), LinkError> {
            self.inner.close().await
        }
    }

    async fn tapped(
        name: &str,
        flip: Option<usize>,
        replay: bool,
    ) -> (
        Result<SecureLink, SecureError>,
        Result<SecureLink, SecureError>,
        Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    ) {
        let reg = Registry::new();
        let da = tempfile::tempdir().unwrap();
        let db = tempfile::tempdir().unwrap();
        let ka = NodeKey::load_or_create(da.path()).unwrap();
        let kb = NodeKey::load_or_create(db.path()).unwrap();
        let mut l = reg.listen(&format!("mock:{name}")).await.unwrap();
        let sel = format!("mock:{name}");
        let (a, b) = tokio::join!(reg.open(&sel), l.accept());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let a: Box<dyn Link> = Box::new(Tap {
            inner: a.unwrap(),
            seen: seen.clone(),
            flip,
            replay,
        });
        let t = Duration::from_secs(2);
        let (sa, sb) = tokio::join!(connect(a, &ka, t), accept(b.unwrap(), &kb, t));
        (sa, sb, seen)
    }

    #[tokio::test]
    async fn no_plaintext_of_a_frame_is_on_the_wire() {
        let (a, b, seen) = tapped("noise-wire", None, false).await;
        let (mut at, _) = Box::new(a.unwrap()).split();
        let (_, mut br) = Box::new(b.unwrap()).split();
        let secret = b"a very secret sentence that must not be seen".repeat(100);
        at.send(&secret).await.unwrap();
        br.recv().await.unwrap();
        let wire = seen.lock().unwrap().concat();
        assert!(!wire.windows(20).any(|w| w == &secret[..20]));
    }

    #[tokio::test]
    async fn a_bit_flipped_handshake_message_fails_cleanly() {
        // Frame 2 from the initiator is its third handshake message (s, se).
        let (a, b, _) = tapped("noise-flip-hs", Some(2), false).await;
        assert!(
            a.is_ok() != b.is_ok() || (a.is_err() && b.is_err()),
            "one side must notice"
        );
        assert!(matches!(
            b,
            Err(SecureError::Handshake(_)) | Err(SecureError::Timeout(_))
        ));
    }

    #[tokio::test]
    async fn a_tampered_frame_is_refused_and_breaks_the_link() {
        // Frames 1-2 are handshake; frame 3 is the first data frame.
        let (a, b, _) = tapped("noise-flip-data", Some(3), false).await;
        let (mut at, _) = Box::new(a.unwrap()).split();
        let (_, mut br) = Box::new(b.unwrap()).split();
        at.send(b"hello").await.unwrap();
        assert!(matches!(br.recv().await, Err(LinkError::Corrupt(_))));
        at.send(b"again").await.unwrap();
        assert!(
            matches!(br.recv().await, Err(LinkError::Corrupt(_))),
            "the link stays broken"
        );
    }

    #[tokio::test]
    async fn a_replayed_frame_is_refused() {
        let (a, b, _) = tapped("noise-replay", None, true).await;
        let (mut at, _) = Box::new(a.unwrap()).split();
        let (_, mut br) = Box::new(b.unwrap()).split();
        at.send(b"one").await.unwrap(); // frame 3
        at.send(b"two").await.unwrap(); // frame 4, sent twice
        assert_eq!(br.recv().await.unwrap().as_ref(), b"one");
        assert_eq!(br.recv().await.unwrap().as_ref(), b"two");
        assert!(matches!(br.recv().await, Err(LinkError::Corrupt(_))));
    }

    #[tokio::test]
    async fn truncated_or_junk_handshake_messages_fail_without_panic() {
        let reg = Registry::new();
        let d = tempfile::tempdir().unwrap();
        let k = NodeKey::load_or_create(d.path()).unwrap();
        for junk in [&b""[..], b"\x01", &[0u8; 31][..], &[0xffu8; 200][..]] {
            let mut l = reg.listen("mock:noise-junk").await.unwrap();
            let (a, b) = tokio::join!(reg.open("mock:noise-junk"), l.accept());
            let (mut tx, _rx) = a.unwrap().split();
            tx.send(junk).await.unwrap();
            let r = accept(b.unwrap(), &k, Duration::from_secs(1)).await;
            assert!(r.is_err(), "junk {junk:?} accepted");
            drop(l);
        }
    }

    #[tokio::test]
    async fn a_handshake_that_never_finishes_times_out() {
        let reg = Registry::new();
        let d = tempfile::tempdir().unwrap();
        let k = NodeKey::load_or_create(d.path()).unwrap();
        let mut l = reg.listen("mock:noise-silent").await.unwrap();
        let (a, b) = tokio::join!(reg.open("mock:noise-silent"), l.accept());
        let _keep = a.unwrap();
        let r = accept(b.unwrap(), &k, Duration::from_millis(200)).await;
        assert!(matches!(r, Err(SecureError::Timeout(_))));
    }

    #[tokio::test]
    async fn encrypted_frames_move_fast() {
        let reg = Registry::new();
        let (a, b, _, _) = pair_over(&reg, "noise-speed").await;
        let (mut at, _ar) = Box::new(a).split();
        let (_bt, mut br) = Box::new(b).split();
        let frame = vec![9u8; 1 << 20];
        let n = 256;
        let t0 = std::time::Instant::now();
        let recv = tokio::spawn(async move {
            for _ in 0..n {
                assert_eq!(br.recv().await.unwrap().len(), 1 << 20);
            }
        });
        for _ in 0..n {
            at.send(&frame).await.unwrap();
        }
        recv.await.unwrap();
        let mbps = (n << 20) as f64 / t0.elapsed().as_secs_f64() / 1e6;
        eprintln!("encrypted mock link: {mbps:.0} MB/s (256 MiB, 1 MiB frames)");
    }
}
