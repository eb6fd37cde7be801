//! Pairing by short code: SPAKE2 over an established Noise link, then key
//! confirmation bound to the Noise handshake hash and both static keys. A
//! wrong code fails on both sides and tells an attacker one guess's worth.

use std::time::Duration;

use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::noise::SecureLink;
use crate::{NodeId, SecureError};

/// Wrong codes a listener accepts before the code is void.
pub const MAX_PAIR_ATTEMPTS: u32 = 3;

const MSG_SPAKE: u8 = 1;
const MSG_CONFIRM: u8 = 2;
const MSG_ABORT: u8 = 3;

/// What pairing proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paired {
    /// The peer's id.
    pub peer: NodeId,
    /// The peer's static key.
    pub peer_public: [u8; 32],
    /// Words both sides show, to compare by eye.
    pub sas: String,
}

/// A short code like `7-violet-anchor`: a number 2..=999 and two words from
/// a built-in list of 279 (about 26 bits; SPAKE2 allows one guess per run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairingCode(String);

const WORDS: &[&str] = &[
    "acid", "acorn", "actor", "adobe", "agent", "alarm", "album", "alpha", "amber", "anchor",
    "angle", "ankle", "apple", "april", "apron", "arena", "arrow", "aspen", "atlas", "attic",
    "audio", "badge", "bagel", "baker", "banjo", "barn", "basil", "beach", "beard", "bench",
    "berry", "bison", "blade", "blaze", "bloom", "board", "bonus", "boots", "brain", "brave",
    "bread", "brick", "bride", "brook", "brush", "cabin", "cable", "camel", "candy", "canoe",
    "cargo", "carol", "cedar", "chalk", "charm", "chess", "chief", "cider", "cinema", "civic",
    "cliff", "clock", "cloud", "clover", "coast", "cobra", "comet", "coral", "couch", "crane",
    "crown", "cubic", "curry", "daisy", "dance", "delta", "denim", "depot", "diary", "diner",
    "disco", "dodge", "dolphin", "donut", "dozen", "drama", "dream", "drift", "drum", "eagle",
    "earth", "easel", "echo", "elbow", "elder", "ember", "empty", "epoch", "equal", "fable",
    "fairy", "falcon", "fancy", "feast", "fence", "ferry", "fiber", "field", "flame", "flute",
    "focus", "forge", "fox", "frost", "fruit", "galaxy", "gamma", "garden", "gecko", "ghost",
    "giant", "ginger", "glade", "globe", "glove", "grain", "grape", "gravel", "guava", "guide",
    "habit", "harbor", "hazel", "heron", "hobby", "honey", "hotel", "house", "humor", "igloo",
    "image", "index", "indigo", "inlet", "iris", "ivory", "jacket", "jelly", "jewel", "joker",
    "judge", "juice", "kayak", "kernel", "kettle", "kiwi", "koala", "label", "ladder", "lake",
    "lamp", "lemon", "level", "lilac", "linen", "lion", "llama", "lobby", "lotus", "lunar",
    "magic", "mango", "maple", "marble", "meadow", "melon", "metro", "mint", "mocha", "model",
    "moose", "motor", "nacho", "navy", "nectar", "needle", "noble", "north", "novel", "oasis",
    "ocean", "olive", "omega", "onion", "opera", "orbit", "orchid", "otter", "oxide", "paddle",
    "panda", "paper", "pearl", "pepper", "piano", "pilot", "pixel", "plaza", "poem", "polar",
    "pond", "prism", "pulse", "quartz", "queen", "quiet", "quilt", "radar", "radio", "raven",
    "relay", "rhino", "ridge", "river", "robin", "rocket", "rose", "ruby", "saddle", "salad",
    "salmon", "sand", "satin", "scout", "shell", "silk", "slate", "solar", "sonic", "spice",
    "spoon", "squid", "stone", "storm", "sugar", "swan", "table", "tango", "temple", "thyme",
    "tiger", "toast", "topaz", "torch", "tower", "trail", "tulip", "tundra", "uncle", "union",
    "urban", "valley", "vapor", "velvet", "violet", "vivid", "wafer", "wagon", "walnut", "water",
    "whale", "willow", "window", "winter", "yacht", "yarn", "yeti", "zebra", "zesty",
];

impl PairingCode {
    /// A fresh random code from the OS random source.
    pub fn generate() -> PairingCode {
        let mut r = [0u8; 12];
        // Without randomness every code would be the same one; that must
        // never happen silently.
        getrandom::fill(&mut r).expect("the OS random source failed");
        let pick = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let n = 2 + pick(&r[0..4]) % 998;
        let w1 = WORDS[pick(&r[4..8]) as usize % WORDS.len()];
        let w2 = WORDS[pick(&r[8..12]) as usize % WORDS.len()];
        PairingCode(format!("{n}-{w1}-{w2}"))
    }

    /// Parses a code as typed: case, spaces around it, and spaces or dots
    /// instead of dashes are accepted.
    pub fn parse(s: &str) -> Result<PairingCode, SecureError> {
        let norm = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = norm
            .split(['-', ' ', '.'])
            .filter(|p| !p.is_empty())
            .collect();
        let ok = parts.len() == 3
            && parts[0].len() <= 3
            && parts[0]
                .parse::<u16>()
                .is_ok_and(|n| (2..=999).contains(&n))
            && WORDS.binary_search(&parts[1]).is_ok()
            && WORDS.binary_search(&parts[2]).is_ok();
        if !ok {
            return Err(SecureError::BadCode(s.to_string()));
        }
        let n: u16 = parts[0].parse().unwrap_or_default();
        Ok(PairingCode(format!("{n}-{}-{}", parts[1], parts[2])))
    }

    /// The code's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PairingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Pairs as the side that typed the code (SPAKE2 side A).
///
/// Runs on an established link before it is split, through
/// [`SecureLink::frames`]; no other frames may be in flight meanwhile.
pub async fn pair_initiator(
    link: &mut SecureLink,
    code: &PairingCode,
    timeout: Duration,
) -> Result<Paired, SecureError> {
    run(link, code, Side::A, timeout).await
}

/// Pairs as the side that showed the code (SPAKE2 side B). It checks the
/// initiator's proof before it sends its own, so a wrong guess learns
/// nothing but "wrong".
pub async fn pair_responder(
    link: &mut SecureLink,
    code: &PairingCode,
    timeout: Duration,
) -> Result<Paired, SecureError> {
    run(link, code, Side::B, timeout).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

async fn run(
    link: &mut SecureLink,
    code: &PairingCode,
    side: Side,
    timeout: Duration,
) -> Result<Paired, SecureError> {
    let r = tokio::time::timeout(timeout, exchange(link, code, side))
        .await
        .map_err(|_| SecureError::Timeout(timeout))?;
    match &r {
        Ok(p) => tracing::info!(peer = %p.peer, "paired"),
        Err(e) => tracing::warn!(peer = %link.remote_id(), "pairing failed: {e}"),
    }
    r
}

/// The exchange, each message one frame `[kind, body..]` on the secure link:
///
/// ```text
/// A -> B  SPAKE   A's SPAKE2 message
/// B -> A  SPAKE   B's SPAKE2 message
/// A -> B  CONFIRM mac(K, 'A')
/// B -> A  CONFIRM mac(K, 'B')      or ABORT if A's mac was wrong
/// ```
///
/// `mac(K, role)` is keyed BLAKE3 over role || handshake hash || A's static
/// key || B's static key, so the proof holds for this Noise session and
/// these two keys only.
async fn exchange(
    link: &mut SecureLink,
    code: &PairingCode,
    side: Side,
) -> Result<Paired, SecureError> {
    let hh = link.handshake_hash();
    let remote = *link.remote_public();
    let local = *link.local_public();
    let (pk_a, pk_b) = match side {
        Side::A => (local, remote),
        Side::B => (remote, local),
    };
    let pw = Password::new(code.as_str().as_bytes());
    let ida = Identity::new(&[&b"gateway pair A"[..], &hh].concat());
    let idb = Identity::new(&[&b"gateway pair B"[..], &hh].concat());
    let (state, msg) = match side {
        Side::A => Spake2::<Ed25519Group>::start_a(&pw, &ida, &idb),
        Side::B => Spake2::<Ed25519Group>::start_b(&pw, &ida, &idb),
    };
    let (tx, rx) = link.frames();
    let theirs = match side {
        Side::A => {
            tx.send(&[&[MSG_SPAKE][..], &msg].concat()).await?;
            rx.recv().await?
        }
        Side::B => {
            let theirs = rx.recv().await?;
            tx.send(&[&[MSG_SPAKE][..], &msg].concat()).await?;
            theirs
        }
    };
    let body = expect(&theirs, MSG_SPAKE)?;
    let k = state
        .finish(body)
        .map_err(|e| SecureError::Protocol(format!("bad SPAKE2 message: {e:?}")))?;
    let key = blake3::derive_key("gateway pair key v1", &k);
    let mac = |role: u8| confirm(&key, role, &hh, &pk_a, &pk_b);
    match side {
        Side::A => {
            tx.send(&[&[MSG_CONFIRM][..], &mac(b'A')].concat()).await?;
            let reply = rx.recv().await?;
            if reply.first() == Some(&MSG_ABORT) {
                return Err(SecureError::WrongCode);
            }
            if !constant_eq(expect(&reply, MSG_CONFIRM)?, &mac(b'B')) {
                return Err(SecureError::WrongCode);
            }
        }
        Side::B => {
            let proof = rx.recv().await?;
            if !constant_eq(expect(&proof, MSG_CONFIRM)?, &mac(b'A')) {
                // Tell A, so it fails now instead of at its timeout.
                let _ = tx.send(&[MSG_ABORT]).await;
                return Err(SecureError::WrongCode);
            }
            tx.send(&[&[MSG_CONFIRM][..], &mac(b'B')].concat()).await?;
        }
    }
    Ok(Paired {
        peer: NodeId::from_public(&remote),
        peer_public: remote,
        sas: sas(&key, &hh),
    })
}

/// Three words from the pairing key and the handshake hash (~24 bits).
fn sas(key: &[u8; 32], hh: &[u8; 32]) -> String {
    let bytes = blake3::derive_key("gateway pair sas v1", &[&key[..], &hh[..]].concat());
    let mut x = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default());
    let n = WORDS.len() as u64;
    (0..3)
        .map(|_| {
            let w = WORDS[(x % n) as usize];
            x /= n;
            w
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn confirm(key: &[u8; 32], role: u8, hh: &[u8; 32], pk_a: &[u8; 32], pk_b: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"gateway pair confirm v1");
    h.update(&[role]);
    h.update(hh);
    h.update(pk_a);
    h.update(pk_b);
    *h.finalize().as_bytes()
}

fn expect(frame: &[u8], kind: u8) -> Result<&[u8], SecureError> {
    match frame.split_first() {
        Some((k, body)) if *k == kind && body.len() <= 64 => Ok(body),
        Some((k, _)) => Err(SecureError::Protocol(format!(
            "expected pairing message {kind}, got a {}-byte frame of kind {k}; is the peer running `gateway pair`?",
            frame.len()
        ))),
        None => Err(SecureError::Protocol(
            "got an empty frame instead of a pairing message".into(),
        )),
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeKey;
    use gateway_link::{Link, Registry};

    const T: Duration = Duration::from_secs(5);

    async fn linked(name: &str) -> (SecureLink, SecureLink) {
        let reg = Registry::new();
        let da = tempfile::tempdir().unwrap();
        let db = tempfile::tempdir().unwrap();
        let ka = NodeKey::load_or_create(da.path()).unwrap();
        let kb = NodeKey::load_or_create(db.path()).unwrap();
        let sel = format!("mock:{name}");
        let mut l = reg.listen(&sel).await.unwrap();
        let (a, b) = tokio::join!(reg.open(&sel), l.accept());
        let (sa, sb) = tokio::join!(
            crate::connect(a.unwrap(), &ka, T),
            crate::accept(b.unwrap(), &kb, T)
        );
        (sa.unwrap(), sb.unwrap())
    }

    #[tokio::test]
    async fn the_right_code_gives_both_sides_the_same_words_and_each_others_ids() {
        let (mut a, mut b) = linked("pair-ok").await;
        let (a_sees, b_sees) = (a.remote_id(), b.remote_id());
        let code = PairingCode::generate();
        let (pa, pb) = tokio::join!(
            pair_initiator(&mut a, &code, T),
            pair_responder(&mut b, &code, T)
        );
        let (pa, pb) = (pa.unwrap(), pb.unwrap());
        assert_eq!(pa.sas, pb.sas);
        assert_eq!(pa.sas.split(' ').count(), 3, "{}", pa.sas);
        assert_eq!(pa.peer, a_sees);
        assert_eq!(pb.peer, b_sees);
        assert_eq!(&pa.peer_public, a.remote_public());
        assert_eq!(&pb.peer_public, b.remote_public());
        // The link still carries frames after pairing.
        let (mut at, _) = Box::new(a).split();
        let (_, mut br) = Box::new(b).split();
        at.send(b"after").await.unwrap();
        assert_eq!(br.recv().await.unwrap().as_ref(), b"after");
    }

    #[tokio::test]
    async fn the_words_differ_between_sessions_with_the_same_code() {
        let code = PairingCode::parse("7-violet-anchor").unwrap();
        let mut words = Vec::new();
        for name in ["pair-s1", "pair-s2"] {
            let (mut a, mut b) = linked(name).await;
            let (pa, _) = tokio::join!(
                pair_initiator(&mut a, &code, T),
                pair_responder(&mut b, &code, T)
            );
            words.push(pa.unwrap().sas);
        }
        assert_ne!(
            words[0], words[1],
            "the SAS must depend on the Noise session"
        );
    }

    #[tokio::test]
    async fn a_wrong_code_fails_on_both_sides() {
        let (mut a, mut b) = linked("pair-bad").await;
        let good = PairingCode::parse("7-violet-anchor").unwrap();
        let bad = PairingCode::parse("8-violet-anchor").unwrap();
        let (pa, pb) = tokio::join!(
            pair_initiator(&mut a, &bad, T),
            pair_responder(&mut b, &good, T)
        );
        assert!(
            matches!(pa, Err(SecureError::WrongCode)),
            "initiator: {pa:?}"
        );
        assert!(
            matches!(pb, Err(SecureError::WrongCode)),
            "responder: {pb:?}"
        );
        let msg = pb.unwrap_err().to_string();
        assert!(msg.contains("nothing was trusted"), "{msg}");
    }

    #[tokio::test]
    async fn a_peer_that_is_not_pairing_gives_a_protocol_error_or_timeout() {
        let (mut a, b) = linked("pair-junk").await;
        let (mut bt, _br) = Box::new(b).split();
        bt.send(b"\x09hello, I am a Hello frame").await.unwrap();
        let code = PairingCode::generate();
        let r = pair_initiator(&mut a, &code, T).await;
        assert!(matches!(r, Err(SecureError::Protocol(_))), "{r:?}");

        let (mut a, _b) = linked("pair-silent").await;
        let r = pair_initiator(&mut a, &code, Duration::from_millis(200)).await;
        assert!(matches!(r, Err(SecureError::Timeout(_))), "{r:?}");
    }

    #[test]
    fn codes_parse_back_in_any_typed_form_and_junk_is_refused() {
        assert!(WORDS.len() >= 256);
        assert!(
            WORDS.windows(2).all(|w| w[0] < w[1]),
            "WORDS must stay sorted and unique"
        );
        for _ in 0..200 {
            let c = PairingCode::generate();
            assert_eq!(PairingCode::parse(&c.as_str().to_uppercase()).unwrap(), c);
            assert_eq!(
                PairingCode::parse(&c.as_str().replace('-', " ")).unwrap(),
                c
            );
        }
        assert_eq!(
            PairingCode::parse("  7 Violet-ANCHOR ").unwrap().as_str(),
            "7-violet-anchor"
        );
        assert_eq!(
            PairingCode::parse("007-violet-anchor").unwrap().as_str(),
            "7-violet-anchor"
        );
        for bad in [
            "",
            "7",
            "7-violet",
            "1-violet-otter",
            "1000-violet-otter",
            "0007-violet-anchor",
            "7-violet-notaword",
            "x-violet-otter",
            "7-violet-anchor-extra",
        ] {
            assert!(PairingCode::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
