//! `Store`: one SQLite connection and the queries on it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use rusqlite_migration::{M, Migrations};

use crate::error::StoreError;
use crate::model::{
    Direction, LinkStat, PausedFrame, PeerRecord, TransferRecord, TransferState, hex,
    json_string_array,
};
use gateway_proto::{Hash, RangeSet, TransferId};

/// The schema, in order. Append; never edit a shipped entry.
const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("../../../migrations/0001_init.sql")),
    M::up(include_str!("../../../migrations/0002_discovery.sql")),
    M::up(include_str!("../../../migrations/0003_trees.sql")),
    M::up(include_str!("../../../migrations/0004_finished.sql")),
];

/// Finished receptions are remembered this long (and at most [`FINISHED_KEEP`]).
const FINISHED_KEEP_MS: i64 = 30 * 24 * 3600 * 1000;
/// Most finished receptions remembered.
const FINISHED_KEEP: i64 = 10_000;

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Columns of `transfers`, in the order [`RawTransfer::from_row`] reads them.
const TRANSFER_COLUMNS: &str = "id, direction, peer, path, name, size, mtime_ns, mode, \
     chunk_size, file_hash, state, durable, created_at_ms, updated_at_ms, tree";

/// A received transfer that finished (see [`Store::finish_received`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// The sender's node id.
    pub peer: String,
    /// Bytes.
    pub size: u64,
    /// Chunk size of the transfer.
    pub chunk_size: u32,
    /// BLAKE3 of what landed.
    pub file_hash: Hash,
    /// Where it landed.
    pub path: String,
}

/// The node's database: transfers and their durable chunk sets, chunk hashes,
/// saved frames, peers and link statistics.
///
/// One `Store` is one connection. It is `Send` but not `Sync`: keep one
/// writer behind a mutex. Every method is a single statement or a single
/// transaction, so a crash leaves either the old or the new state.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: Option<PathBuf>,
}

impl Store {
    /// Opens (creating if missing) the database file at `path` and brings its
    /// schema up to date. The parent directory must exist.
    ///
    /// Sets `journal_mode=WAL`, `synchronous=NORMAL`, `foreign_keys=ON` and a
    /// 5 s busy timeout.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        configure(&conn, true).map_err(open_err)?;
        migrate(&mut conn, path)?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(Store {
            conn,
            path: Some(path.to_owned()),
        })
    }

    /// Opens a fresh in-memory database with the full schema (tests, dry runs).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let path = Path::new(":memory:");
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open_in_memory().map_err(open_err)?;
        configure(&conn, false).map_err(open_err)?;
        migrate(&mut conn, path)?;
        Ok(Store { conn, path: None })
    }

    /// The file this store was opened from; `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    // ---- meta ---------------------------------------------------------

    /// Reads a setting.
    pub fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    /// Writes a setting, replacing any previous value.
    pub fn meta_set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute([key, value])?;
        Ok(())
    }

    // ---- transfers ----------------------------------------------------

    /// Adds a new transfer record, stored as given (including its
    /// timestamps). Fails if `(id, direction)` already exists.
    pub fn insert_transfer(&self, t: &TransferRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO transfers (id, direction, peer, path, name, size, mtime_ns, mode,
                     chunk_size, file_hash, state, durable, created_at_ms, updated_at_ms, tree)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?
            .execute(params![
                &t.id[..],
                t.direction.as_str(),
                t.peer,
                t.path,
                t.name,
                to_i64("size", t.size)?,
                t.mtime_ns,
                t.mode,
                t.chunk_size,
                t.file_hash.as_ref().map(|h| &h[..]),
                t.state.as_str(),
                t.durable.to_blob(),
                t.created_at_ms,
                t.updated_at_ms,
                t.tree.as_deref(),
            ])?;
        Ok(())
    }

    /// Reads one side of a transfer.
    pub fn get_transfer(
        &self,
        id: &TransferId,
        dir: Direction,
    ) -> Result<Option<TransferRecord>, StoreError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = ?1 AND direction = ?2"
            ))?
            .query_row(params![&id[..], dir.as_str()], RawTransfer::from_row)
            .optional()?
            .map(RawTransfer::decode)
            .transpose()
    }

    /// Finds the send record for this file to this peer, if a previous send
    /// of the same file (same canonical path, size and mtime) was left
    /// unfinished. If several match, the most recently updated wins.
    pub fn find_send(
        &self,
        peer: &str,
        path: &str,
        size: u64,
        mtime_ns: i64,
    ) -> Result<Option<TransferRecord>, StoreError> {
        // `direction = 'send'` as a literal, so the partial index applies.
        self.conn
            .prepare_cached(&format!(
                "SELECT {TRANSFER_COLUMNS} FROM transfers
                 WHERE direction = 'send' AND peer = ?1 AND path = ?2
                   AND size = ?3 AND mtime_ns = ?4
                 ORDER BY updated_at_ms DESC, created_at_ms DESC LIMIT 1"
            ))?
            .query_row(
                params![peer, path, to_i64("size", size)?, mtime_ns],
                RawTransfer::from_row,
            )
            .optional()?
            .map(RawTransfer::decode)
            .transpose()
    }

    /// In one transaction: `durable := durable ∪ added`, the chunk hashes
    /// inserted (a hash already stored for an index is replaced), and
    /// `updated_at_ms` bumped. Either all of it lands or none of it.
    ///
    /// Call only after the data file has been fdatasync'ed: the store must
    /// never claim chunks that are not on disk.
    pub fn commit_durable(
        &self,
        id: &TransferId,
        dir: Direction,
        added: &RangeSet,
        chunk_hashes: &[(u64, Hash)],
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        let mut durable = read_durable(&tx, id, dir)?;
        durable.union(added);
        write_durable(&tx, id, dir, &durable)?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO chunk_hashes (transfer_id, direction, idx, hash)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (transfer_id, direction, idx) DO UPDATE SET hash = excluded.hash",
            )?;
            for (idx, hash) in chunk_hashes {
                ins.execute(params![
                    &id[..],
                    dir.as_str(),
                    to_i64("chunk index", *idx)?,
                    &hash[..]
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces the durable set (sender side, mirroring the receiver's
    /// `Checkpoint`).
    pub fn set_durable(
        &self,
        id: &TransferId,
        dir: Direction,
        durable: &RangeSet,
    ) -> Result<(), StoreError> {
        write_durable(&self.conn, id, dir, durable)
    }

    /// Forgets chunks (e.g. found bad at the final hash): removes them from
    /// the durable set and drops their hashes, in one transaction.
    pub fn forget_chunks(
        &self,
        id: &TransferId,
        dir: Direction,
        chunks: &RangeSet,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        let durable = read_durable(&tx, id, dir)?.difference(chunks);
        write_durable(&tx, id, dir, &durable)?;
        {
            let mut del = tx.prepare_cached(
                "DELETE FROM chunk_hashes
                 WHERE transfer_id = ?1 AND direction = ?2 AND idx >= ?3 AND idx < ?4",
            )?;
            for r in chunks.ranges() {
                // Indices above i64::MAX cannot have been stored; clamp.
                let start = i64::try_from(r.start).unwrap_or(i64::MAX);
                let end = i64::try_from(r.end).unwrap_or(i64::MAX);
                del.execute(params![&id[..], dir.as_str(), start, end])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The receiver-side chunk hashes of a transfer, by ascending index.
    pub fn chunk_hashes(&self, id: &TransferId) -> Result<Vec<(u64, Hash)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT idx, hash FROM chunk_hashes
             WHERE transfer_id = ?1 AND direction = 'recv' ORDER BY idx",
        )?;
        let rows = stmt.query_map([&id[..]], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (idx, hash) = row?;
            let idx = u64::try_from(idx)
                .map_err(|_| StoreError::Corrupt(format!("negative chunk index {idx}")))?;
            out.push((idx, to_hash(&hash, "chunk hash")?));
        }
        Ok(out)
    }

    /// Sets a transfer's state.
    pub fn set_state(
        &self,
        id: &TransferId,
        dir: Direction,
        s: TransferState,
    ) -> Result<(), StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE transfers SET state = ?3, updated_at_ms = ?4
                 WHERE id = ?1 AND direction = ?2",
            )?
            .execute(params![&id[..], dir.as_str(), s.as_str(), now_ms()])?;
        expect_one(n, id, dir)
    }

    /// Records where a verified file is about to land (`path`) and marks the
    /// transfer `Verifying`, in one update, before the part file is linked
    /// there: a crash after the link finds the file by this path.
    pub fn set_landing(
        &self,
        id: &TransferId,
        dir: Direction,
        path: &str,
    ) -> Result<(), StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE transfers SET path = ?3, state = ?4, updated_at_ms = ?5
                 WHERE id = ?1 AND direction = ?2",
            )?
            .execute(params![
                &id[..],
                dir.as_str(),
                path,
                TransferState::Verifying.as_str(),
                now_ms()
            ])?;
        expect_one(n, id, dir)
    }

    /// Records the whole-file hash.
    pub fn set_file_hash(
        &self,
        id: &TransferId,
        dir: Direction,
        h: &Hash,
    ) -> Result<(), StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE transfers SET file_hash = ?3, updated_at_ms = ?4
                 WHERE id = ?1 AND direction = ?2",
            )?
            .execute(params![&id[..], dir.as_str(), &h[..], now_ms()])?;
        expect_one(n, id, dir)
    }

    /// Deletes one side of a transfer with its chunk hashes, and its paused
    /// frames unless the other side of the same id is still stored. Deleting
    /// a transfer that is not there is not an error (COMPLETE may repeat).
    pub fn delete_transfer(&self, id: &TransferId, dir: Direction) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        // chunk_hashes go by ON DELETE CASCADE; say it anyway, so the result
        // does not depend on the foreign_keys pragma.
        tx.prepare_cached("DELETE FROM chunk_hashes WHERE transfer_id = ?1 AND direction = ?2")?
            .execute(params![&id[..], dir.as_str()])?;
        tx.prepare_cached("DELETE FROM transfers WHERE id = ?1 AND direction = ?2")?
            .execute(params![&id[..], dir.as_str()])?;
        tx.prepare_cached(
            "DELETE FROM paused_frames WHERE transfer_id = ?1
             AND NOT EXISTS (SELECT 1 FROM transfers WHERE id = ?1)",
        )?
        .execute([&id[..]])?;
        tx.commit()?;
        Ok(())
    }

    /// A received transfer has landed at `path` with `file_hash`: its record
    /// goes and a `finished` row takes its place, in one transaction, so a
    /// sender rerunning the same transfer id learns it is done instead of
    /// sending it again.
    pub fn finish_received(
        &self,
        id: &TransferId,
        path: &str,
        file_hash: &Hash,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO finished
               (transfer_id, peer, name, path, size, chunk_size, file_hash, finished_at_ms)
             SELECT id, peer, name, ?2, size, chunk_size, ?3, ?4
               FROM transfers WHERE id = ?1 AND direction = 'recv'",
        )?
        .execute(params![&id[..], path, &file_hash[..], now_ms])?;
        tx.prepare_cached(
            "DELETE FROM chunk_hashes WHERE transfer_id = ?1 AND direction = 'recv'",
        )?
        .execute([&id[..]])?;
        tx.prepare_cached("DELETE FROM transfers WHERE id = ?1 AND direction = 'recv'")?
            .execute([&id[..]])?;
        tx.prepare_cached(
            "DELETE FROM paused_frames WHERE transfer_id = ?1
             AND NOT EXISTS (SELECT 1 FROM transfers WHERE id = ?1)",
        )?
        .execute([&id[..]])?;
        tx.prepare_cached("DELETE FROM finished WHERE finished_at_ms < ?1")?
            .execute([now_ms - FINISHED_KEEP_MS])?;
        tx.prepare_cached(
            "DELETE FROM finished WHERE transfer_id NOT IN
               (SELECT transfer_id FROM finished ORDER BY finished_at_ms DESC LIMIT ?1)",
        )?
        .execute([FINISHED_KEEP])?;
        tx.commit()?;
        Ok(())
    }

    /// A received transfer that finished: (peer, size, chunk size, file hash, path).
    pub fn finished_received(&self, id: &TransferId) -> Result<Option<Finished>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT peer, size, chunk_size, file_hash, path FROM finished WHERE transfer_id = ?1",
            )?
            .query_row([&id[..]], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .optional()?;
        let Some((peer, size, chunk_size, hash, path)) = row else {
            return Ok(None);
        };
        let file_hash: Hash = hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("finished.file_hash is not 32 bytes".into()))?;
        Ok(Some(Finished {
            peer,
            size: size as u64,
            chunk_size: chunk_size as u32,
            file_hash,
            path,
        }))
    }

    /// Every stored transfer, oldest first.
    pub fn list_transfers(&self) -> Result<Vec<TransferRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers ORDER BY created_at_ms, id, direction"
        ))?;
        let raws = stmt
            .query_map([], RawTransfer::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter().map(RawTransfer::decode).collect()
    }

    // ---- paused frames ------------------------------------------------

    /// Saves a frame handed to the interrupt handler; returns its row id.
    pub fn save_paused_frame(
        &self,
        transfer: Option<&TransferId>,
        signal: &str,
        frame: &[u8],
        meta_json: &str,
        at_ms: i64,
    ) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO paused_frames (transfer_id, signal, frame, meta_json, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                transfer.map(|t| &t[..]),
                signal,
                frame,
                meta_json,
                at_ms
            ])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Keeps only the newest `keep` saved frames of a transfer (a link that
    /// fails again and again must not grow the DB without bound); returns how
    /// many were deleted.
    pub fn trim_paused_frames(
        &self,
        transfer: &TransferId,
        keep: usize,
    ) -> Result<usize, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        Ok(self
            .conn
            .prepare_cached(
                "DELETE FROM paused_frames WHERE transfer_id = ?1 AND id NOT IN
                   (SELECT id FROM paused_frames WHERE transfer_id = ?1 ORDER BY id DESC LIMIT ?2)",
            )?
            .execute(params![&transfer[..], keep])?)
    }

    /// The saved frames of a transfer, oldest first.
    pub fn paused_frames(&self, transfer: &TransferId) -> Result<Vec<PausedFrame>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, transfer_id, signal, frame, meta_json, at_ms
             FROM paused_frames WHERE transfer_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([&transfer[..]], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, tid, signal, frame, meta_json, at_ms) = row?;
            out.push(PausedFrame {
                id,
                transfer_id: tid.as_deref().map(to_transfer_id).transpose()?,
                signal,
                frame,
                meta_json,
                at_ms,
            });
        }
        Ok(out)
    }

    // ---- peers --------------------------------------------------------

    /// Inserts or updates a peer. An existing peer keeps its `first_seen_ms`;
    /// `last_seen_ms` never moves backwards; every other field is replaced
    /// by `p`'s (including `trust`: read the record first to keep it).
    pub fn upsert_peer(&self, p: &PeerRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO peers (node_id, name, node_type, macs, ips, links, trust,
                     first_seen_ms, last_seen_ms, flag)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (node_id) DO UPDATE SET
                     name = excluded.name,
                     node_type = excluded.node_type,
                     macs = excluded.macs,
                     ips = excluded.ips,
                     links = excluded.links,
                     trust = excluded.trust,
                     flag = excluded.flag,
                     last_seen_ms = max(peers.last_seen_ms, excluded.last_seen_ms)",
            )?
            .execute(params![
                p.node_id,
                p.name,
                p.node_type,
                json_string_array(&p.macs),
                json_string_array(&p.ips),
                json_string_array(&p.links),
                p.trust,
                p.first_seen_ms,
                p.last_seen_ms,
                p.flag,
            ])?;
        Ok(())
    }

    /// Records a static address for a peer name; `false` if it was there.
    pub fn add_static_addr(
        &self,
        name: &str,
        selector: &str,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "INSERT INTO static_addrs (name, selector, added_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name, selector) DO NOTHING",
            )?
            .execute(params![name, selector, at_ms])?;
        Ok(n == 1)
    }

    /// Removes a name's static addresses (one, or all with `None`); how many.
    pub fn remove_static_addrs(
        &self,
        name: &str,
        selector: Option<&str>,
    ) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "DELETE FROM static_addrs WHERE name = ?1 AND (?2 IS NULL OR selector = ?2)",
            )?
            .execute(params![name, selector])?)
    }

    /// Every static address as (name, selector), by name then age.
    pub fn static_addrs(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, selector FROM static_addrs ORDER BY name, added_ms, selector",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// One peer by node id.
    pub fn peer(&self, node_id: &str) -> Result<Option<PeerRecord>, StoreError> {
        Ok(self.query_peers("WHERE node_id = ?1", [node_id])?.pop())
    }

    /// Every known peer, most recently seen first.
    pub fn peers(&self) -> Result<Vec<PeerRecord>, StoreError> {
        self.query_peers("ORDER BY last_seen_ms DESC, node_id", [])
    }

    fn query_peers<P: rusqlite::Params>(
        &self,
        tail: &str,
        params: P,
    ) -> Result<Vec<PeerRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT node_id, name, node_type, macs, ips, links, trust,
                 first_seen_ms, last_seen_ms, flag FROM peers {tail}"
        ))?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((
                    PeerRecord {
                        node_id: r.get(0)?,
                        name: r.get(1)?,
                        node_type: r.get(2)?,
                        macs: Vec::new(),
                        ips: Vec::new(),
                        links: Vec::new(),
                        trust: r.get(6)?,
                        first_seen_ms: r.get(7)?,
                        last_seen_ms: r.get(8)?,
                        flag: r.get(9)?,
                    },
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (mut p, macs, ips, links) in rows {
            p.macs = self.decode_string_array(&macs, &p.node_id)?;
            p.ips = self.decode_string_array(&ips, &p.node_id)?;
            p.links = self.decode_string_array(&links, &p.node_id)?;
            out.push(p);
        }
        Ok(out)
    }

    /// Decodes a JSON array of strings with SQLite's `json_each`.
    fn decode_string_array(&self, json: &str, node_id: &str) -> Result<Vec<String>, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("peer {node_id}: bad string list {json:?}"));
        if !self
            .conn
            .prepare_cached("SELECT json_valid(?1) AND json_type(?1) = 'array'")?
            .query_row([json], |r| r.get::<_, bool>(0))?
        {
            return Err(corrupt());
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT type, value FROM json_each(?1) ORDER BY key")?;
        let items = stmt
            .query_map([json], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, rusqlite::types::Value>(1)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        items
            .into_iter()
            .map(|(ty, v)| match (ty.as_str(), v) {
                ("text", rusqlite::types::Value::Text(s)) => Ok(s),
                _ => Err(corrupt()),
            })
            .collect()
    }

    // ---- link stats ---------------------------------------------------

    /// Records what one link carried for one transfer.
    pub fn record_link_stat(&self, s: &LinkStat) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO link_stats (transfer_id, selector, bytes, elapsed_ms, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                &s.transfer_id[..],
                s.selector,
                to_i64("bytes", s.bytes)?,
                to_i64("elapsed_ms", s.elapsed_ms)?,
                s.at_ms,
            ])?;
        Ok(())
    }

    /// The link statistics of a transfer, oldest first.
    pub fn link_stats(&self, id: &TransferId) -> Result<Vec<LinkStat>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT selector, bytes, elapsed_ms, at_ms FROM link_stats
             WHERE transfer_id = ?1 ORDER BY id",
        )?;
        let rows = stmt
            .query_map([&id[..]], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(selector, bytes, elapsed_ms, at_ms)| {
                Ok(LinkStat {
                    transfer_id: *id,
                    selector,
                    bytes: from_i64("link_stats.bytes", bytes)?,
                    elapsed_ms: from_i64("link_stats.elapsed_ms", elapsed_ms)?,
                    at_ms,
                })
            })
            .collect()
    }

    // ---- helpers ------------------------------------------------------

    /// A write transaction that takes the write lock up front (BEGIN
    /// IMMEDIATE), so it cannot fail half-way on a lock upgrade.
    fn write_tx(&self) -> Result<Transaction<'_>, StoreError> {
        Ok(Transaction::new_unchecked(
            &self.conn,
            TransactionBehavior::Immediate,
        )?)
    }
}

/// Pragmas every connection gets. `file` is false for `:memory:`, where WAL
/// does not exist.
fn configure(conn: &Connection, file: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if file {
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // E.g. a filesystem without shared memory. Still correct, slower.
            tracing::warn!(journal_mode = %mode, "SQLite refused WAL mode");
        }
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    Migrations::from_slice(MIGRATIONS)
        .to_latest(conn)
        .map_err(|source| StoreError::Migrate {
            path: path.to_owned(),
            source,
        })
}

fn read_durable(
    conn: &Connection,
    id: &TransferId,
    dir: Direction,
) -> Result<RangeSet, StoreError> {
    let blob: Vec<u8> = conn
        .prepare_cached("SELECT durable FROM transfers WHERE id = ?1 AND direction = ?2")?
        .query_row(params![&id[..], dir.as_str()], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::UnknownTransfer {
            id: *id,
            direction: dir,
        })?;
    decode_durable(&blob, id)
}

fn write_durable(
    conn: &Connection,
    id: &TransferId,
    dir: Direction,
    durable: &RangeSet,
) -> Result<(), StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE transfers SET durable = ?3, updated_at_ms = ?4
             WHERE id = ?1 AND direction = ?2",
        )?
        .execute(params![&id[..], dir.as_str(), durable.to_blob(), now_ms()])?;
    expect_one(n, id, dir)
}

fn decode_durable(blob: &[u8], id: &TransferId) -> Result<RangeSet, StoreError> {
    RangeSet::from_blob(blob)
        .map_err(|e| StoreError::Corrupt(format!("transfer {}: durable set: {e}", hex(id))))
}

fn expect_one(changed: usize, id: &TransferId, dir: Direction) -> Result<(), StoreError> {
    if changed == 0 {
        Err(StoreError::UnknownTransfer {
            id: *id,
            direction: dir,
        })
    } else {
        Ok(())
    }
}

/// Milliseconds since the epoch (0 if the clock is before it).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

fn from_i64(what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} is negative ({v})")))
}

fn to_transfer_id(b: &[u8]) -> Result<TransferId, StoreError> {
    b.try_into()
        .map_err(|_| StoreError::Corrupt(format!("transfer id of {} bytes", b.len())))
}

fn to_hash(b: &[u8], what: &str) -> Result<Hash, StoreError> {
    b.try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} of {} bytes", b.len())))
}

/// A `transfers` row as SQLite hands it over, before validation.
struct RawTransfer {
    id: Vec<u8>,
    direction: String,
    peer: String,
    path: String,
    name: String,
    size: i64,
    mtime_ns: i64,
    mode: i64,
    chunk_size: i64,
    file_hash: Option<Vec<u8>>,
    state: String,
    durable: Vec<u8>,
    created_at_ms: i64,
    updated_at_ms: i64,
    tree: Option<Vec<u8>>,
}

impl RawTransfer {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawTransfer {
            id: r.get(0)?,
            direction: r.get(1)?,
            peer: r.get(2)?,
            path: r.get(3)?,
            name: r.get(4)?,
            size: r.get(5)?,
            mtime_ns: r.get(6)?,
            mode: r.get(7)?,
            chunk_size: r.get(8)?,
            file_hash: r.get(9)?,
            state: r.get(10)?,
            durable: r.get(11)?,
            created_at_ms: r.get(12)?,
            updated_at_ms: r.get(13)?,
            tree: r.get(14)?,
        })
    }

    fn decode(self) -> Result<TransferRecord, StoreError> {
        let id = to_transfer_id(&self.id)?;
        let ctx = |what: &str, v: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("transfer {}: bad {what} {v}", hex(&id)))
        };
        Ok(TransferRecord {
            id,
            direction: Direction::parse(&self.direction)
                .ok_or_else(|| ctx("direction", &self.direction))?,
            peer: self.peer,
            path: self.path,
            name: self.name,
            size: u64::try_from(self.size).map_err(|_| ctx("size", &self.size))?,
            mtime_ns: self.mtime_ns,
            mode: u32::try_from(self.mode).map_err(|_| ctx("mode", &self.mode))?,
            chunk_size: u32::try_from(self.chunk_size)
                .map_err(|_| ctx("chunk_size", &self.chunk_size))?,
            file_hash: self
                .file_hash
                .as_deref()
                .map(|h| to_hash(h, "file hash"))
                .transpose()?,
            state: TransferState::parse(&self.state).ok_or_else(|| ctx("state", &self.state))?,
            durable: decode_durable(&self.durable, &id)?,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            tree: self.tree,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_list_is_valid() {
        Migrations::from_slice(MIGRATIONS).validate().unwrap();
    }

    #[test]
    fn open_sets_the_connection_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db")).unwrap();
        let get = |p: &str| -> String {
            store
                .conn
                .query_row(&format!("PRAGMA {p}"), [], |r| {
                    r.get::<_, rusqlite::types::Value>(0)
                })
                .map(|v| match v {
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Text(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap()
        };
        assert_eq!(get("journal_mode"), "wal");
        assert_eq!(get("synchronous"), "1", "NORMAL");
        assert_eq!(get("foreign_keys"), "1");
        assert_eq!(get("busy_timeout"), "5000");
    }

    #[test]
    fn foreign_keys_cascade_chunk_hashes() {
        let store = Store::open_in_memory().unwrap();
        store
            .conn
            .execute_batch(
                "INSERT INTO transfers (id, direction, peer, path, name, size, mtime_ns, mode,
                     chunk_size, state, created_at_ms, updated_at_ms)
                 VALUES (zeroblob(16), 'recv', 'p', '/x', 'x', 1, 0, 0, 1, 'active', 0, 0);
                 INSERT INTO chunk_hashes VALUES (zeroblob(16), 'recv', 0, zeroblob(32));
                 DELETE FROM transfers;",
            )
            .unwrap();
        let n: i64 = store
            .conn
            .query_row("SELECT count(*) FROM chunk_hashes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn string_lists_escape_json() {
        assert_eq!(json_string_array(&[]), "[]");
        assert_eq!(
            json_string_array(&["a\"b".into(), "\\\n\u{1}".into()]),
            r#"["a\"b","\\\n\u0001"]"#
        );
    }
}
