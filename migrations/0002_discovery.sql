-- Issue 5: discovery.
--
-- Static addresses for a peer NAME (`gateway peers add NAME SEL...`), for
-- networks where mDNS does not reach (AP isolation, VLANs, VPNs). Keyed by
-- name because the user knows a name before this node has seen its key;
-- every address is still verified by the handshake before use.
CREATE TABLE static_addrs (
    name      TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 63),
    selector  TEXT NOT NULL CHECK (length(selector) BETWEEN 1 AND 255),
    added_ms  INTEGER NOT NULL,
    PRIMARY KEY (name, selector)
) WITHOUT ROWID;

-- Why a peer is flagged, if it is: e.g. an mDNS record that claimed
-- another node id than the key this peer presented. Shown by `gateway peers`.
ALTER TABLE peers ADD COLUMN flag TEXT;
