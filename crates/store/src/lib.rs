//! gateway-store: the node's SQLite database (transfers with their durable chunk
//! sets and chunk hashes, saved interrupt frames, peers, link stats), migrated at open.
//! It does not touch data files: callers fdatasync chunks *before* committing them.
#![warn(missing_docs)]

mod error;
mod model;
mod store;

pub use error::StoreError;
pub use model::{Direction, LinkStat, PausedFrame, PeerRecord, TransferRecord, TransferState};
pub use store::{Finished, Store};
