//! Unfinished transfers by id, for `gateway transfers resume|cancel`.

use std::path::{Path, PathBuf};

use gateway_store::{Direction, TransferRecord};

use crate::file_stream::{part_path, stage_path};
use crate::{NodeError, NodeState};

/// The one unfinished transfer whose hex id starts with `prefix` (at least 4
/// characters). Errors say what matched when it is not exactly one.
pub fn find(state: &NodeState, prefix: &str) -> Result<TransferRecord, NodeError> {
    let p = prefix.trim().to_ascii_lowercase();
    if p.len() < 4 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NodeError::Other(format!(
            "{prefix:?} is not a transfer id: give at least 4 hex digits of an ID that `gateway transfers` lists"
        )));
    }
    let mut hits: Vec<TransferRecord> = state
        .store()
        .list_transfers()?
        .into_iter()
        .filter(|t| hex::encode(t.id).starts_with(&p))
        .collect();
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => Err(NodeError::Other(format!(
            "no unfinished transfer has an id starting with {p}; `gateway transfers` lists them"
        ))),
        n => Err(NodeError::Other(format!(
            "{n} transfers have an id starting with {p} ({}); give more digits",
            hits.iter()
                .map(|t| format!("{} {}", &hex::encode(t.id)[..12], t.direction))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Forgets a transfer on this node: its record (and saved frames) and, on
/// the receiving side, what it received so far (the part file or the staged
/// tree). The other node keeps its own record until it is cancelled there
/// too (a sender rerunning the same send starts over). Returns what was
/// deleted from disk.
pub fn cancel(state: &NodeState, rec: &TransferRecord) -> Result<Vec<PathBuf>, NodeError> {
    let mut removed = Vec::new();
    if rec.direction == Direction::Recv {
        let dir = Path::new(&rec.path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let part = part_path(&dir, &rec.name, &rec.id);
        let stage = stage_path(&dir, &rec.name, &rec.id);
        if part.is_file() {
            std::fs::remove_file(&part)
                .map_err(|e| NodeError::io(format!("cannot remove {}", part.display()), e))?;
            removed.push(part);
        }
        if stage.is_dir() {
            std::fs::remove_dir_all(&stage)
                .map_err(|e| NodeError::io(format!("cannot remove {}", stage.display()), e))?;
            removed.push(stage);
        }
    }
    state.store().delete_transfer(&rec.id, rec.direction)?;
    Ok(removed)
}
