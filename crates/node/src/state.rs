//! A node's state directory: the SQLite DB and its identity.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use gateway_secure::NodeKey;
use gateway_store::Store;

use crate::NodeError;

/// The state directory used when neither `--state` nor `GATEWAY_STATE` is given:
/// `$XDG_STATE_HOME/gateway` (usually `~/.local/state/gateway`).
pub fn default_state_dir() -> PathBuf {
    dirs::state_dir()
        .or_else(|| dirs::home_dir().map(|h| h.join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("gateway")
}

/// An opened state directory.
#[derive(Clone)]
pub struct NodeState {
    /// Where it lives.
    pub dir: PathBuf,
    store: Arc<Mutex<Store>>,
    /// The static key every link is authenticated with.
    pub key: Arc<NodeKey>,
    /// This node's id: the fingerprint of its key.
    pub node_id: String,
    /// This node's name (`--name`, default the host name).
    pub name: String,
    /// What kind of machine this is (`--type`, default a guess: laptop, board…).
    pub node_type: String,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("dir", &self.dir)
            .field("node_id", &self.node_id)
            .finish()
    }
}

impl NodeState {
    /// Opens (creating if needed, mode 0700) the state dir and its DB.
    pub fn open(dir: &Path) -> Result<Self, NodeError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| NodeError::io(format!("cannot create state dir {}", dir.display()), e))?;
        let key = NodeKey::load_or_create(dir)?;
        let node_id = key.node_id().to_string();
        let store = Store::open(&dir.join("gateway.db"))?;
        let name = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "gateway".into());
        Ok(Self {
            dir: dir.to_path_buf(),
            store: Arc::new(Mutex::new(store)),
            key: Arc::new(key),
            node_id,
            name,
            node_type: gateway_discovery::local::guess_node_type(),
        })
    }

    /// Overrides the name and type this node tells peers (Hello, mDNS).
    /// Both are checked as peers would check them.
    pub fn set_identity(
        &mut self,
        name: Option<&str>,
        node_type: Option<&str>,
    ) -> Result<(), NodeError> {
        let name = name.unwrap_or(&self.name).to_string();
        let node_type = node_type.unwrap_or(&self.node_type).to_string();
        let check = gateway_discovery::Advert {
            node_id: self.node_id.clone(),
            name: name.clone(),
            node_type: node_type.clone(),
            version: crate::wire::PROTOCOL_VERSION,
            links: Vec::new(),
            bt: Vec::new(),
        };
        check.to_txt().map_err(|e| {
            NodeError::Other(format!(
                "{e}; a name is 1 to {} bytes without control characters, a type is letters, digits and '-'",
                gateway_discovery::txt::MAX_NAME_BYTES
            ))
        })?;
        self.name = name;
        self.node_type = node_type;
        Ok(())
    }

    /// The DB (one writer connection).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Milliseconds since the Unix epoch (for records; the engines use `Instant`).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
