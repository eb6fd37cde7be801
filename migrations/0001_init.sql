-- gateway store, schema version 1.
--
-- Applied by rusqlite_migration inside one transaction; the schema version is
-- kept in PRAGMA user_version. Never edit a migration that has shipped: add
-- migrations/NNNN_name.sql instead and list it in crates/store/src/lib.rs.
--
-- Integers: SQLite INTEGER is i64. u64 sizes and chunk indices are checked
-- by the store before they are written (file sizes are capped at 2^50).

-- Small key/value settings (node id, format markers, ...).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Every node we have heard a Hello from. node_id is the fingerprint of the
-- peer's static key. macs/ips/links are JSON arrays of strings.
CREATE TABLE peers (
    node_id       TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL,
    node_type     TEXT NOT NULL,
    macs          TEXT NOT NULL DEFAULT '[]',
    ips           TEXT NOT NULL DEFAULT '[]',
    links         TEXT NOT NULL DEFAULT '[]',
    trust         TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per transfer and side. The same id may exist twice on one node
-- (send and recv) when a node sends to itself.
--
-- durable: the chunk indices known to be on disk (fdatasync'ed), as
-- gateway_proto::RangeSet::to_blob() (u64 LE start/end pairs).
CREATE TABLE transfers (
    id            BLOB NOT NULL CHECK (length(id) = 16),
    direction     TEXT NOT NULL CHECK (direction IN ('send', 'recv')),
    peer          TEXT NOT NULL,
    path          TEXT NOT NULL,
    name          TEXT NOT NULL,
    size          INTEGER NOT NULL CHECK (size >= 0),
    mtime_ns      INTEGER NOT NULL,
    mode          INTEGER NOT NULL CHECK (mode >= 0),
    chunk_size    INTEGER NOT NULL CHECK (chunk_size > 0),
    file_hash     BLOB CHECK (file_hash IS NULL OR length(file_hash) = 32),
    state         TEXT NOT NULL CHECK (state IN ('active', 'paused', 'verifying')),
    durable       BLOB NOT NULL DEFAULT x'',
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (id, direction)
);

-- Sender-side lookup before every send: (peer, canonical path, size, mtime).
CREATE INDEX transfers_find_send
    ON transfers (peer, path, size, mtime_ns)
    WHERE direction = 'send';

-- BLAKE3 of each durable chunk (receiver side), so that a mismatch at the
-- final hash can be narrowed down to the bad chunks.
CREATE TABLE chunk_hashes (
    transfer_id BLOB NOT NULL,
    direction   TEXT NOT NULL,
    idx         INTEGER NOT NULL CHECK (idx >= 0),
    hash        BLOB NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (transfer_id, direction, idx),
    FOREIGN KEY (transfer_id, direction)
        REFERENCES transfers (id, direction) ON DELETE CASCADE
) WITHOUT ROWID;

-- Frames handed to the interrupt handler (ERROR, USER_STOP) with their
-- metadata. transfer_id is NULL for frames that belong to no transfer.
CREATE TABLE paused_frames (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    transfer_id BLOB CHECK (transfer_id IS NULL OR length(transfer_id) = 16),
    signal      TEXT NOT NULL,
    frame       BLOB NOT NULL,
    meta_json   TEXT NOT NULL,
    at_ms       INTEGER NOT NULL
);

CREATE INDEX paused_frames_transfer ON paused_frames (transfer_id, id);

-- Bytes moved per link per transfer; kept after the transfer completes.
CREATE TABLE link_stats (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    transfer_id BLOB NOT NULL CHECK (length(transfer_id) = 16),
    selector    TEXT NOT NULL,
    bytes       INTEGER NOT NULL CHECK (bytes >= 0),
    elapsed_ms  INTEGER NOT NULL CHECK (elapsed_ms >= 0),
    at_ms       INTEGER NOT NULL
);

CREATE INDEX link_stats_transfer ON link_stats (transfer_id, id);
