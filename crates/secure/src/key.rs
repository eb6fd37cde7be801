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
    /// Loads `dir/node.key`, creating it (mode 0600) on first start. The file
    /// holds two hex lines: the private key, then the public key. A key file
    /// that group or others can read is refused.
    pub fn load_or_create(dir: &Path) -> Result<NodeKey, SecureError> {
        let path = dir.join(KEY_FILE);
        let shown = path.display().to_string();
        let key_err = |err| SecureError::Key {
            path: shown.clone(),
            err,
        };
        match std::fs::metadata(&path) {
            Ok(md) => {
                if md.permissions().mode() & 0o077 != 0 {
                    return Err(SecureError::KeyPermissions { path: shown });
                }
                let text = std::fs::read_to_string(&path).map_err(key_err)?;
                Self::parse(&text).map_err(|why| SecureError::KeyCorrupt { path: shown, why })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(key_err)?;
                let kp = crate::noise::builder()
                    .generate_keypair()
                    .map_err(|e| SecureError::Handshake(e.to_string()))?;
                let key = NodeKey {
                    private: kp.private.as_slice().try_into().map_err(|_| {
                        SecureError::Handshake("X25519 private key is not 32 bytes".into())
                    })?,
                    public: kp.public.as_slice().try_into().map_err(|_| {
                        SecureError::Handshake("X25519 public key is not 32 bytes".into())
                    })?,
                };
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(key_err)?;
                writeln!(f, "{}\n{}", hex(&key.private), hex(&key.public)).map_err(key_err)?;
                f.sync_all().map_err(key_err)?;
                Ok(key)
            }
            Err(e) => Err(key_err(e)),
        }
    }

    fn parse(text: &str) -> Result<NodeKey, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let private = unhex32(lines.next().ok_or("empty file")?)?;
        let public = unhex32(lines.next().ok_or("no public key line")?)?;
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
        assert_ne!(NodeId::from_public(&[8; 32]), id);
    }
}
