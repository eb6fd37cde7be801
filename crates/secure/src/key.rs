//! The node's static X25519 key and its printable fingerprint.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::SecureError;

/// The static X25519 keypair that is this node's identity on every link.
pub struct NodeKey {
    private: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("id", &self.node_id())
            .finish_non_exhaustive()
    }
}

/// File name of the key in the state directory.
const KEY_FILE: &str = "node.key";

impl NodeKey {
    /// Loads `dir/node.key`, creating `dir` and the key (mode 0600) on first
    /// start. The file holds two lines of 64 hex digits: the X25519 private
    /// key, then its public key (checked against the private one on load).
    /// A key file that group or others can read or write is refused with the
    /// `chmod` that fixes it.
    pub fn load_or_create(dir: &Path) -> Result<NodeKey, SecureError> {
        let path = dir.join(KEY_FILE);
        match Self::load(&path) {
            Err(SecureError::Key { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        let shown = path.display().to_string();
        let key_err = |err| SecureError::Key {
            path: shown.clone(),
            err,
        };
        std::fs::create_dir_all(dir).map_err(key_err)?;
        let key = Self::generate()?;
        // Written under a temporary name and hard-linked into place, so a
        // crash never leaves a half-written key and two nodes starting at
        // once on one state dir agree on one key.
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| key_err(std::io::Error::other(e)))?;
        let tmp = dir.join(format!("{KEY_FILE}.{}.tmp", hex(&nonce)));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            writeln!(f, "{}\n{}", hex(&key.private), hex(&key.public))?;
            f.sync_all()?;
            std::fs::hard_link(&tmp, &path)
        })();
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                tracing::info!(id = %key.node_id(), path = %shown, "created a new node key");
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(&path),
            Err(e) => Err(key_err(e)),
        }
    }

    fn load(path: &Path) -> Result<NodeKey, SecureError> {
        let shown = path.display().to_string();
        let md = std::fs::metadata(path).map_err(|err| SecureError::Key {
            path: shown.clone(),
            err,
        })?;
        if md.permissions().mode() & 0o077 != 0 {
            return Err(SecureError::KeyPermissions { path: shown });
        }
        let text = std::fs::read_to_string(path).map_err(|err| SecureError::Key {
            path: shown.clone(),
            err,
        })?;
        Self::parse(&text).map_err(|why| SecureError::KeyCorrupt { path: shown, why })
    }

    fn generate() -> Result<NodeKey, SecureError> {
        let kp = crate::noise::builder()
            .generate_keypair()
            .map_err(|e| SecureError::Handshake(format!("cannot generate a key: {e}")))?;
        let private: [u8; 32] = kp
            .private
            .as_slice()
            .try_into()
            .map_err(|_| SecureError::Handshake("X25519 private key is not 32 bytes".into()))?;
        let public = public_of(&private)
            .ok_or_else(|| SecureError::Handshake("no X25519 implementation".into()))?;
        Ok(NodeKey { private, public })
    }

    fn parse(text: &str) -> Result<NodeKey, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let private = unhex32(lines.next().ok_or("empty file")?)?;
        let public = unhex32(lines.next().ok_or("no public key line")?)?;
        if public_of(&private) != Some(public) {
            return Err("the public key does not belong to the private key".into());
        }
        Ok(NodeKey { private, public })
    }

    /// The public key.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    pub(crate) fn private(&self) -> &[u8; 32] {
        &self.private
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_public(&self.public)
    }
}

/// The X25519 public key of `private`.
fn public_of(private: &[u8; 32]) -> Option<[u8; 32]> {
    use snow::resolvers::CryptoResolver;
    let mut dh =
        snow::resolvers::DefaultResolver.resolve_dh(&snow::params::DHChoice::Curve25519)?;
    dh.set(private);
    dh.pubkey().try_into().ok()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Result<[u8; 32], String> {
    if s.len() != 64 {
        return Err(format!(
            "a key line must be 64 hex digits, found {}",
            s.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| "not hex".to_string())?;
    }
    Ok(out)
}

/// A short, typable fingerprint of a node's public key:
/// `abcd-efgh-ijkl-mnop-qrst` (100 bits of BLAKE3, base32).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

const ID_CHARS: usize = 20;

impl NodeId {
    /// The id of a public key.
    pub fn from_public(pk: &[u8; 32]) -> NodeId {
        let mut h = blake3::Hasher::new();
        h.update(b"gateway node id v1");
        h.update(pk);
        let digest = h.finalize();
        let b32 = data_encoding::BASE32_NOPAD
            .encode(&digest.as_bytes()[..15])
            .to_ascii_lowercase();
        NodeId(group(&b32[..ID_CHARS]))
    }

    /// Parses an id typed by a person: any case, dashes optional.
    pub fn parse(s: &str) -> Result<NodeId, SecureError> {
        let raw: String = s
            .trim()
            .chars()
            .filter(|c| *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if raw.len() != ID_CHARS
            || !raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
        {
            return Err(SecureError::BadId(s.to_string()));
        }
        Ok(NodeId(group(&raw)))
    }

    /// The grouped text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn group(raw: &str) -> String {
    raw.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("-")
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_private_to_its_owner_and_reloads_with_the_same_id() {
        let dir = tempfile::tempdir().unwrap();
        let k = NodeKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = NodeKey::load_or_create(dir.path()).unwrap();
        assert_eq!(k.node_id(), again.node_id());
        assert_eq!(k.public(), again.public());
    }

    #[test]
    fn a_key_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        NodeKey::load_or_create(dir.path()).unwrap();
        let p = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = NodeKey::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, SecureError::KeyPermissions { .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn the_state_dir_is_created_and_the_file_holds_two_hex_lines() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b/state");
        let k = NodeKey::load_or_create(&state).unwrap();
        let text = std::fs::read_to_string(state.join(KEY_FILE)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        assert_eq!(lines[1], hex(k.public()));
        let names: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [KEY_FILE], "no temporary file is left behind");
    }

    #[test]
    fn nodes_starting_at_once_on_one_state_dir_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<NodeId> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| NodeKey::load_or_create(dir.path()).unwrap().node_id()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    }

    #[test]
    fn a_key_writable_by_the_group_is_refused_too() {
        let dir = tempfile::tempdir().unwrap();
        NodeKey::load_or_create(dir.path()).unwrap();
        let p = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o620)).unwrap();
        let e = NodeKey::load_or_create(dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("chmod 600 {}", p.display())),
            "{e}"
        );
    }

    #[test]
    fn a_public_key_that_does_not_match_the_private_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k = NodeKey::load_or_create(dir.path()).unwrap();
        let p = dir.path().join(KEY_FILE);
        std::fs::write(&p, format!("{}\n{}\n", hex(k.private()), hex(&[7; 32]))).unwrap();
        let e = NodeKey::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(e, SecureError::KeyCorrupt { .. }), "{e}");
    }

    #[test]
    fn a_damaged_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(KEY_FILE);
        std::fs::write(&p, "zz\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            NodeKey::load_or_create(dir.path()),
            Err(SecureError::KeyCorrupt { .. })
        ));
    }

    #[test]
    fn node_ids_are_grouped_and_parse_back_in_any_case() {
        let id = NodeId::from_public(&[7; 32]);
        assert_eq!(id.as_str().len(), 24);
        assert_eq!(id.as_str().matches('-').count(), 4);
        assert_eq!(NodeId::parse(&id.as_str().to_uppercase()).unwrap(), id);
        assert_eq!(NodeId::parse(&id.as_str().replace('-', "")).unwrap(), id);
        assert!(NodeId::parse("not-an-id").is_err());
        assert!(
            NodeId::parse(&id.as_str()[..19]).is_err(),
            "a prefix is not an id"
        );
        assert!(
            NodeId::parse("abcd-efgh-ijkl-mnop-qrs1").is_err(),
            "1 is not base32"
        );
        assert_eq!(id.to_string(), id.as_str());
        let c: Vec<char> = id.as_str().chars().collect();
        for (i, ch) in c.iter().enumerate() {
            if i % 5 == 4 {
                assert_eq!(*ch, '-', "{id}");
            } else {
                assert!(ch.is_ascii_lowercase() || ('2'..='7').contains(ch), "{id}");
            }
        }
        assert_ne!(NodeId::from_public(&[8; 32]), id);
    }
}
