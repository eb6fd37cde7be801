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

/// A short code like `7-violet-anchor`: a number and two words (~23 bits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairingCode(String);

const WORDS: &[&str] = &[
    "acid", "acorn", "actor", "adobe", "agent", "alarm", "album", "alpha", "amber", "angle",
    "ankle", "apple", "april", "apron", "arena", "arrow", "aspen", "atlas", "attic", "audio",
    "badge", "bagel", "baker", "banjo", "barn", "basil", "beach", "beard", "bench", "berry",
    "bison", "blade", "blaze", "bloom", "board", "bonus", "boots", "brain", "brave", "bread",
    "brick", "bride", "brook", "brush", "cabin", "cable", "camel", "candy", "canoe", "cargo",
    "carol", "cedar", "chalk", "charm", "chess", "chief", "cider", "cinema", "civic", "cliff",
    "clock", "cloud", "clover", "coast", "cobra", "comet", "coral", "couch", "crane", "crown",
    "cubic", "curry", "daisy", "dance", "delta", "denim", "depot", "diary", "diner", "disco",
    "dodge", "dolphin", "donut", "dozen", "drama", "dream", "drift", "drum", "eagle", "earth",
    "easel", "echo", "elbow", "elder", "ember", "empty", "epoch", "equal", "fable", "fairy",
    "falcon", "fancy", "feast", "fence", "ferry", "fiber", "field", "flame", "flute", "focus",
    "forge", "fox", "frost", "fruit", "galaxy", "gamma", "garden", "gecko", "ghost", "giant",
    "ginger", "glade", "globe", "glove", "grain", "grape", "gravel", "guava", "guide", "habit",
    "harbor", "hazel", "heron", "hobby", "honey", "hotel", "house", "humor", "igloo", "image",
    "index", "indigo", "inlet", "iris", "ivory", "jacket", "jelly", "jewel", "joker", "judge",
    "juice", "kayak", "kernel", "kettle", "kiwi", "koala", "label", "ladder", "lake", "lamp",
    "lemon", "level", "lilac", "linen", "lion", "llama", "lobby", "lotus", "lunar", "magic",
    "mango", "maple", "marble", "meadow", "melon", "metro", "mint", "mocha", "model", "moose",
    "motor", "nacho", "navy", "nectar", "needle", "noble", "north", "novel", "oasis", "ocean",
    "olive", "omega", "onion", "opera", "orbit", "orchid", "otter", "oxide", "paddle", "panda",
    "paper", "pearl", "pepper", "piano", "pilot", "pixel", "plaza", "poem", "polar", "pond",
    "prism", "pulse", "quartz", "queen", "quiet", "quilt", "radar", "radio", "raven", "relay",
    "rhino", "ridge", "river", "robin", "rocket", "rose", "ruby", "saddle", "salad", "salmon",
    "sand", "satin", "scout", "shell", "silk", "slate", "solar", "sonic", "spice", "spoon",
    "squid", "stone", "storm", "sugar", "swan", "table", "tango", "temple", "thyme", "tiger",
    "toast", "topaz", "torch", "tower", "trail", "tulip", "tundra", "uncle", "union", "urban",
    "valley", "vapor", "velvet", "violet", "vivid", "wafer", "wagon", "walnut", "water", "whale",
    "willow", "window", "winter", "yacht", "yarn", "yeti", "zebra", "zesty",
];

impl PairingCode {
    /// A fresh random code.
    pub fn generate() -> PairingCode {
        let mut r = [0u8; 6];
        let _ = getrandom::fill(&mut r);
        let n = 2 + u16::from_le_bytes([r[0], r[1]]) % 998;
        let w1 = WORDS[usize::from(u16::from_le_bytes([r[2], r[3]])) % WORDS.len()];
        let w2 = WORDS[usize::from(u16::from_le_bytes([r[4], r[5]])) % WORDS.len()];
        PairingCode(format!("{n}-{w1}-{w2}"))
    }

    /// Parses a code as typed (case and surrounding spaces ignored).
    pub fn parse(s: &str) -> Result<PairingCode, SecureError> {
        let norm = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = norm.split('-').collect();
        let ok = parts.len() == 3
            && parts[0]
                .parse::<u16>()
                .is_ok_and(|n| (2..=999).contains(&n))
            && WORDS.contains(&parts[1])
            && WORDS.contains(&parts[2]);
        if !ok {
            return Err(SecureError::BadCode(s.to_string()));
        }
        Ok(PairingCode(norm))
    }

    /// The code's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Pairs as the side that typed the code (SPAKE2 side A).
pub async fn pair_initiator(
    link: &mut SecureLink,
    code: &PairingCode,
    timeout: Duration,
) -> Result<Paired, SecureError> {
    run(link, code, true, timeout).await
}

/// Pairs as the side that showed the code (SPAKE2 side B).
pub async fn pair_responder(
    link: &mut SecureLink,
    code: &PairingCode,
    timeout: Duration,
) -> Result<Paired, SecureError> {
    run(link, code, false, timeout).await
}

async fn run(
    link: &mut SecureLink,
    code: &PairingCode,
    a: bool,
    timeout: Duration,
) -> Result<Paired, SecureError> {
    tokio::time::timeout(timeout, exchange(link, code, a))
        .await
        .map_err(|_| SecureError::Timeout(timeout))?
}

async fn exchange(
    link: &mut SecureLink,
    code: &PairingCode,
    a: bool,
) -> Result<Paired, SecureError> {
    let hh = link.handshake_hash();
    let remote = *link.remote_public();
    let pw = Password::new(code.as_str().as_bytes());
    let (ida, idb) = (
        Identity::new(b"gateway pair A"),
        Identity::new(b"gateway pair B"),
    );
    let (state, msg) = if a {
        Spake2::<Ed25519Group>::start_a(&pw, &ida, &idb)
    } else {
        Spake2::<Ed25519Group>::start_b(&pw, &ida, &idb)
    };
    let (tx, rx) = link.frames();
    tx.send(&[&[MSG_SPAKE][..], &msg].concat()).await?;
    let theirs = rx.recv().await?;
    let body = expect(&theirs, MSG_SPAKE)?;
    let k = state
        .finish(body)
        .map_err(|e| SecureError::Protocol(format!("bad SPAKE2 message: {e:?}")))?;
    let key: [u8; 32] = *blake3::hash(&k).as_bytes();
    // The side that showed the code confirms as B; each proves it holds K
    // for this very Noise session and these two static keys.
    let (my_role, their_role) = if a { (b'A', b'B') } else { (b'B', b'A') };
    let mine = confirm(&key, my_role, &hh);
    tx.send(&[&[MSG_CONFIRM][..], &mine].concat()).await?;
    let theirs = rx.recv().await?;
    let body = expect(&theirs, MSG_CONFIRM)?;
    let want = confirm(&key, their_role, &hh);
    if !constant_eq(body, &want) {
        return Err(SecureError::WrongCode);
    }
    let sas_bytes = blake3::derive_key("gateway pair sas v1", &[&key[..], &hh[..]].concat());
    let sas = (0..3)
        .map(|i| WORDS[usize::from(sas_bytes[i]) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Paired {
        peer: NodeId::from_public(&remote),
        peer_public: remote,
        sas,
    })
}

fn confirm(key: &[u8; 32], role: u8, hh: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"gateway pair confirm v1");
    h.update(&[role]);
    h.update(hh);
    *h.finalize().as_bytes()
}

fn expect(frame: &[u8], kind: u8) -> Result<&[u8], SecureError> {
    match frame.split_first() {
        Some((k, body)) if *k == kind && body.len() <= 256 => Ok(body),
        _ => Err(SecureError::Protocol("unexpected pairing message".into())),
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeKey;
    use gateway_link::Registry;

    async fn linked(name: &str) -> (SecureLink, SecureLink) {
        let reg = Registry::new();
        let da = tempfile::tempdir().unwrap();
        let db = tempfile::tempdir().unwrap();
        let ka = NodeKey::load_or_create(da.path()).unwrap();
        let kb = NodeKey::load_or_create(db.path()).unwrap();
        let mut l = reg.listen(&format!("mock:{name}")).await.unwrap();
        let sel = format!("mock:{name}");
        let (a, b) = tokio::join!(reg.open(&sel), l.accept());
        let t = Duration::from_secs(5);
        let (sa, sb) = tokio::join!(
            crate::connect(a.unwrap(), &ka, t),
            crate::accept(b.unwrap(), &kb, t)
        );
        (sa.unwrap(), sb.unwrap())
    }

    #[tokio::test]
    async fn the_right_code_pairs_both_sides_with_the_same_words() {
        let (mut a, mut b) = linked("pair-ok").await;
        let code = PairingCode::generate();
        let t = Duration::from_secs(5);
        let (pa, pb) = tokio::join!(
            pair_initiator(&mut a, &code, t),
            pair_responder(&mut b, &code, t)
        );
        let (pa, pb) = (pa.unwrap(), pb.unwrap());
        assert_eq!(pa.sas, pb.sas);
        assert_eq!(pa.peer, b_id(&a));
        assert_eq!(pb.peer, b.remote_id());
    }

    fn b_id(a: &SecureLink) -> NodeId {
        a.remote_id()
    }

    #[tokio::test]
    async fn a_wrong_code_fails_on_both_sides() {
        let (mut a, mut b) = linked("pair-bad").await;
        let t = Duration::from_secs(5);
        let good =
            PairingCode::parse("7-violet-anchor").unwrap_or_else(|_| PairingCode::generate());
        let bad = PairingCode::parse("8-violet-otter").unwrap();
        let (pa, pb) = tokio::join!(
            pair_initiator(&mut a, &bad, t),
            pair_responder(&mut b, &good, t)
        );
        assert!(matches!(pa, Err(SecureError::WrongCode)), "{pa:?}");
        assert!(matches!(pb, Err(SecureError::WrongCode)), "{pb:?}");
    }

    #[test]
    fn codes_parse_back_and_junk_is_refused() {
        for _ in 0..50 {
            let c = PairingCode::generate();
            assert_eq!(PairingCode::parse(&c.as_str().to_uppercase()).unwrap(), c);
        }
        for bad in [
            "",
            "7",
            "7-violet",
            "1-violet-otter",
            "7-violet-notaword",
            "x-violet-otter",
        ] {
            assert!(PairingCode::parse(bad).is_err(), "{bad}");
        }
    }
}
