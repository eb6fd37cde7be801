-- Issue 7: directory trees.
--
-- A received tree keeps its entry list (the encoded Offer frame, checked
-- again when read back) so a restarted receiver can map the stream's offsets
-- back to files and land them. NULL for a single file.
ALTER TABLE transfers ADD COLUMN tree BLOB;
