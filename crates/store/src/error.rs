//! The store's error type.

use std::path::PathBuf;

use crate::model::{Direction, hex};
use gateway_proto::TransferId;

/// Everything that can go wrong in the store.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be opened or configured (pragmas).
    #[error("cannot open database {}: {source}", .path.display())]
    Open {
        /// The file we tried to open (`:memory:` for an in-memory store).
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The schema migrations could not be applied, e.g. the file was written
    /// by a newer version of gateway.
    #[error("cannot migrate database {}: {source}", .path.display())]
    Migrate {
        /// The file being migrated.
        path: PathBuf,
        /// What the migration runner said.
        #[source]
        source: rusqlite_migration::Error,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value does not decode (bad range blob, wrong id length,
    /// unknown enum text, ...).
    #[error("corrupt database: {0}")]
    Corrupt(String),
    /// An update named a transfer that is not in the store.
    #[error("no {direction} transfer {} in the store", hex(.id))]
    UnknownTransfer {
        /// The transfer id.
        id: TransferId,
        /// Which side of it.
        direction: Direction,
    },
    /// A value is too large for an SQLite INTEGER (i64).
    #[error("{what} = {value} does not fit in the database (max {})", i64::MAX)]
    OutOfRange {
        /// Which value.
        what: &'static str,
        /// The value given.
        value: u64,
    },
}
