-- Issue 10 (kill -9 soak): received transfers that finished.
--
-- A receiver deletes a transfer's record once the file has landed. A sender
-- killed after its Complete and before it deleted its own record reruns the
-- same transfer id; without this table the receiver took it for a new
-- transfer, received the whole file again and landed it a second time as
-- "name (1)". With it, the rerun is told the receiver holds every chunk, and
-- its Complete gets the verdict of the landed file's hash. Rows older than
-- 30 days, and beyond the newest 10000, are pruned when one is added.
CREATE TABLE finished (
    transfer_id BLOB PRIMARY KEY,
    peer TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    file_hash BLOB NOT NULL,
    finished_at_ms INTEGER NOT NULL
);
CREATE INDEX finished_by_time ON finished (finished_at_ms);
