//! Behaviour of `gateway_store::Store` through its public API. A second, raw
//! SQLite connection on the same file is used to inspect pragmas and to inject
//! faults.

use std::path::Path;

use gateway_proto::{Range, RangeSet};
use gateway_store::{
    Direction, LinkStat, PeerRecord, Store, StoreError, TransferRecord, TransferState,
};
use rusqlite::Connection;

const ID: [u8; 16] = [7; 16];
const OTHER: [u8; 16] = [9; 16];

fn ranges(rs: &[(u64, u64)]) -> RangeSet {
    let mut s = RangeSet::new();
    for &(start, end) in rs {
        s.insert_range(Range { start, end });
    }
    s
}

fn record(id: [u8; 16], direction: Direction) -> TransferRecord {
    TransferRecord {
        id,
        direction,
        peer: "peer-key-fingerprint".into(),
        path: "/home/u/big.iso".into(),
        name: "big.iso".into(),
        size: 10 * 1024 * 1024 + 5,
        mtime_ns: 1_700_000_000_123_456_789,
        mode: 0o644,
        chunk_size: 1024 * 1024,
        file_hash: None,
        state: TransferState::Active,
        durable: RangeSet::new(),
        created_at_ms: 1_000,
        updated_at_ms: 1_000,
        tree: None,
    }
}

fn peer(node_id: &str, first: i64, last: i64) -> PeerRecord {
    PeerRecord {
        node_id: node_id.into(),
        name: "laptop".into(),
        node_type: "linux".into(),
        macs: vec!["aa:bb:cc:dd:ee:ff".into()],
        ips: vec!["192.168.1.7".into(), "fe80::1".into()],
        links: vec!["tcp:192.168.1.7:7878".into()],
        trust: "paired".into(),
        first_seen_ms: first,
        last_seen_ms: last,
        flag: None,
    }
}

fn hash(b: u8) -> [u8; 32] {
    [b; 32]
}

fn temp_db() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.db");
    (dir, path)
}

fn raw(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    c
}

fn user_version(path: &Path) -> i64 {
    raw(path)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn migrations_apply_to_a_fresh_file() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.path(), Some(path.as_path()));
    assert_eq!(user_version(&path), 4);
    let tables: Vec<String> = raw(&path)
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for t in [
        "chunk_hashes",
        "finished",
        "link_stats",
        "meta",
        "paused_frames",
        "peers",
        "static_addrs",
        "transfers",
    ] {
        assert!(
            tables.iter().any(|x| x == t),
            "missing table {t} in {tables:?}"
        );
    }
}

#[test]
fn migrations_are_idempotent_on_reopen() {
    let (_dir, path) = temp_db();
    drop(Store::open(&path).unwrap());
    drop(Store::open(&path).unwrap());
    let store = Store::open(&path).unwrap();
    assert_eq!(user_version(&path), 4);
    store.insert_transfer(&record(ID, Direction::Send)).unwrap();
}

#[test]
fn open_refuses_a_database_from_a_newer_version_and_names_it() {
    let (_dir, path) = temp_db();
    drop(Store::open(&path).unwrap());
    raw(&path).pragma_update(None, "user_version", 99).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Migrate { .. }), "{err:?}");
    assert!(err.to_string().contains("gateway.db"), "{err}");
}

#[test]
fn open_fails_naming_the_path_when_the_parent_dir_is_missing() {
    let (_dir, path) = temp_db();
    let path = path
        .parent()
        .unwrap()
        .join("no-such-dir")
        .join("gateway.db");
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}

#[test]
fn wal_mode_is_on() {
    let (_dir, path) = temp_db();
    let _store = Store::open(&path).unwrap();
    let mode: String = raw(&path)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn in_memory_store_has_the_schema() {
    let store = Store::open_in_memory().unwrap();
    assert_eq!(store.path(), None);
    store.insert_transfer(&record(ID, Direction::Recv)).unwrap();
    assert_eq!(store.list_transfers().unwrap().len(), 1);
}

#[test]
fn meta_set_replaces_and_meta_get_reads() {
    let store = Store::open_in_memory().unwrap();
    assert_eq!(store.meta_get("node_id").unwrap(), None);
    store.meta_set("node_id", "abc").unwrap();
    store.meta_set("node_id", "def").unwrap();
    assert_eq!(store.meta_get("node_id").unwrap().as_deref(), Some("def"));
}

#[test]
fn a_transfer_round_trips() {
    let store = Store::open_in_memory().unwrap();
    let mut t = record(ID, Direction::Recv);
    t.file_hash = Some(hash(0xab));
    t.state = TransferState::Verifying;
    t.durable = ranges(&[(0, 3), (5, 9)]);
    t.mode = 0o100_755;
    t.mtime_ns = -5; // before the epoch is legal
    store.insert_transfer(&t).unwrap();
    assert_eq!(store.get_transfer(&ID, Direction::Recv).unwrap(), Some(t));
    assert_eq!(store.get_transfer(&ID, Direction::Send).unwrap(), None);
    assert_eq!(store.get_transfer(&OTHER, Direction::Recv).unwrap(), None);
}

#[test]
fn one_id_may_be_stored_once_per_direction() {
    let store = Store::open_in_memory().unwrap();
    store.insert_transfer(&record(ID, Direction::Send)).unwrap();
    store.insert_transfer(&record(ID, Direction::Recv)).unwrap();
    let err = store
        .insert_transfer(&record(ID, Direction::Send))
        .unwrap_err();
    assert!(matches!(err, StoreError::Sqlite(_)), "{err:?}");
    assert_eq!(store.list_transfers().unwrap().len(), 2);
}

#[test]
fn insert_rejects_a_size_sqlite_cannot_hold() {
    let store = Store::open_in_memory().unwrap();
    let mut t = record(ID, Direction::Send);
    t.size = u64::MAX;
    let err = store.insert_transfer(&t).unwrap_err();
    assert!(
        matches!(err, StoreError::OutOfRange { what: "size", .. }),
        "{err:?}"
    );
}

#[test]
fn find_send_finds_by_peer_path_size_and_mtime() {
    let store = Store::open_in_memory().unwrap();
    let t = record(ID, Direction::Send);
    store.insert_transfer(&t).unwrap();
    let found = store
        .find_send(&t.peer, &t.path, t.size, t.mtime_ns)
        .unwrap();
    assert_eq!(found, Some(t));
}

#[test]
fn find_send_misses_when_any_key_differs() {
    let store = Store::open_in_memory().unwrap();
    let t = record(ID, Direction::Send);
    store.insert_transfer(&t).unwrap();
    let miss = |peer: &str, path: &str, size: u64, mtime: i64| {
        store.find_send(peer, path, size, mtime).unwrap().is_none()
    };
    assert!(
        miss(&t.peer, &t.path, t.size, t.mtime_ns + 1),
        "other mtime"
    );
    assert!(miss(&t.peer, &t.path, t.size + 1, t.mtime_ns), "other size");
    assert!(
        miss("someone-else", &t.path, t.size, t.mtime_ns),
        "other peer"
    );
    assert!(
        miss(&t.peer, "/home/u/other.iso", t.size, t.mtime_ns),
        "other path"
    );
}

#[test]
fn find_send_ignores_receive_records() {
    let store = Store::open_in_memory().unwrap();
    let t = record(ID, Direction::Recv);
    store.insert_transfer(&t).unwrap();
    assert_eq!(
        store
            .find_send(&t.peer, &t.path, t.size, t.mtime_ns)
            .unwrap(),
        None
    );
}

#[test]
fn find_send_prefers_the_most_recently_updated_match() {
    let store = Store::open_in_memory().unwrap();
    let old = record(ID, Direction::Send);
    let mut new = record(OTHER, Direction::Send);
    new.created_at_ms = 2_000;
    new.updated_at_ms = 2_000;
    store.insert_transfer(&old).unwrap();
    store.insert_transfer(&new).unwrap();
    let found = store
        .find_send(&old.peer, &old.path, old.size, old.mtime_ns)
        .unwrap()
        .unwrap();
    assert_eq!(found.id, OTHER);
}

#[test]
fn commit_durable_unions_and_stores_hashes() {
    let store = Store::open_in_memory().unwrap();
    let mut t = record(ID, Direction::Recv);
    t.durable = ranges(&[(0, 2)]);
    store.insert_transfer(&t).unwrap();

    store
        .commit_durable(
            &ID,
            Direction::Recv,
            &ranges(&[(2, 4), (6, 7)]),
            &[(2, hash(2)), (3, hash(3)), (6, hash(6))],
        )
        .unwrap();
    store
        .commit_durable(&ID, Direction::Recv, &ranges(&[(1, 3)]), &[])
        .unwrap();

    let got = store.get_transfer(&ID, Direction::Recv).unwrap().unwrap();
    assert_eq!(got.durable, ranges(&[(0, 4), (6, 7)]));
    assert!(got.updated_at_ms > t.updated_at_ms, "updated_at bumped");
    assert_eq!(got.created_at_ms, t.created_at_ms);
    assert_eq!(
        store.chunk_hashes(&ID).unwrap(),
        vec![(2, hash(2)), (3, hash(3)), (6, hash(6))]
    );
}

#[test]
fn commit_durable_replaces_the_hash_of_a_rewritten_chunk() {
    let store = Store::open_in_memory().unwrap();
    store.insert_transfer(&record(ID, Direction::Recv)).unwrap();
    let one = ranges(&[(4, 5)]);
    store
        .commit_durable(&ID, Direction::Recv, &one, &[(4, hash(1))])
        .unwrap();
    store
        .commit_durable(&ID, Direction::Recv, &one, &[(4, hash(2))])
        .unwrap();
    assert_eq!(store.chunk_hashes(&ID).unwrap(), vec![(4, hash(2))]);
}

#[test]
fn commit_durable_is_atomic_when_a_hash_insert_fails() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path).unwrap();
    let mut t = record(ID, Direction::Recv);
    t.durable = ranges(&[(0, 5)]);
    store.insert_transfer(&t).unwrap();

    // Fault injection: the third hash insert of the batch fails.
    raw(&path)
        .execute_batch(
            "CREATE TRIGGER fail_idx_7 BEFORE INSERT ON chunk_hashes WHEN NEW.idx = 7
             BEGIN SELECT RAISE(ABORT, 'simulated hash insert failure'); END;",
        )
        .unwrap();

    let err = store
        .commit_durable(
            &ID,
            Direction::Recv,
            &ranges(&[(5, 8)]),
            &[(5, hash(5)), (6, hash(6)), (7, hash(7))],
        )
        .unwrap_err();
    assert!(err.to_string().contains("simulated"), "{err}");

    // Neither the durable union nor the first two hashes survived.
    let got = store.get_transfer(&ID, Direction::Recv).unwrap().unwrap();
    assert_eq!(got.durable, ranges(&[(0, 5)]));
    assert_eq!(got.updated_at_ms, t.updated_at_ms);
    assert!(store.chunk_hashes(&ID).unwrap().is_empty());

    // And the connection is usable again afterwards (no dangling transaction).
    raw(&path).execute_batch("DROP TRIGGER fail_idx_7").unwrap();
    store
        .commit_durable(&ID, Direction::Recv, &ranges(&[(5, 8)]), &[(7, hash(7))])
        .unwrap();
    let got = store.get_transfer(&ID, Direction::Recv).unwrap().unwrap();
    assert_eq!(got.durable, ranges(&[(0, 8)]));
}

#[test]
fn commit_durable_on_an_unknown_transfer_fails_and_writes_nothing() {
    let store = Store::open_in_memory().unwrap();
    store.insert_transfer(&record(ID, Direction::Send)).unwrap();
    let err = store
        .commit_durable(&ID, Direction::Recv, &ranges(&[(0, 1)]), &[(0, hash(0))])
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::UnknownTransfer {
                direction: Direction::Recv,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(store.chunk_hashes(&ID).unwrap().is_empty());
}

#[test]
fn set_durable_replaces_the_set() {
    let store = Store::open_in_memory().unwrap();
    let mut t = record(ID, Direction::Send);
    t.durable = ranges(&[(0, 9)]);
    store.insert_transfer(&t).unwrap();
    store
        .set_durable(&ID, Direction::Send, &ranges(&[(2, 3)]))
        .unwrap();
    let got = store.get_transfer(&ID, Direction::Send).unwrap().unwrap();
    assert_eq!(got.durable, ranges(&[(2, 3)]));
    let err = store
        .set_durable(&OTHER, Direction::Send, &RangeSet::new())
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownTransfer { .. }), "{err:?}");
}

#[test]
fn forget_chunks_removes_them_from_durable_and_drops_their_hashes() {
    let store = Store::open_in_memory().unwrap();
    store.insert_transfer(&record(ID, Direction::Recv)).unwrap();
    let hashes: Vec<(u64, [u8; 32])> = (0..10).map(|i| (i, hash(i as u8))).collect();
    store
        .commit_durable(&ID, Direction::Recv, &ranges(&[(0, 10)]), &hashes)
        .unwrap();

    store
        .forget_chunks(&ID, Direction::Recv, &ranges(&[(2, 4), (9, 12)]))
        .unwrap();

    let got = store.get_transfer(&ID, Direction::Recv).unwrap().unwrap();
    assert_eq!(got.durable, ranges(&[(0, 2), (4, 9)]));
    let left: Vec<u64> = store
        .chunk_hashes(&ID)
        .unwrap()
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(left, vec![0, 1, 4, 5, 6, 7, 8]);
}

#[test]
fn chunk_hashes_lists_only_the_receive_side() {
    let store = Store::open_in_memory().unwrap();
    store.insert_transfer(&record(ID, Direction::Send)).unwrap();
    store.insert_transfer(&record(ID, Direction::Recv)).unwrap();
    store
        .commit_durable(&ID, Direction::Send, &ranges(&[(0, 1)]), &[(0, hash(1))])
        .unwrap();
    store
        .commit_durable(&ID, Direction::Recv, &ranges(&[(0, 1)]), &[(0, hash(2))])
        .unwrap();
    assert_eq!(store.chunk_hashes(&ID).unwrap(), vec![(0, hash(2))]);
}

#[test]
fn set_state_and_set_file_hash_update_the_record() {
    let store = Store::open_in_memory().unwrap();
    store.insert_transfer(&record(ID, Direction::Send)).unwrap();
    store
        .set_state(&ID, Direction::Send, TransferState::Paused)
        .unwrap();
    store
        .set_file_hash(&ID, Direction::Send, &hash(0x5a))
        .unwrap();
    let got = store.get_transfer(&ID, Direction::Send).unwrap().unwrap();
    assert_eq!(got.state, TransferState::Paused);
    assert_eq!(got.file_hash, Some(hash(0x5a)));
    assert!(matches!(
        store.set_state(&ID, Direction::Recv, TransferState::Active),
        Err(StoreError::UnknownTransfer { .. })
    ));
    assert!(matches!(
        store.set_file_hash(&OTHER, Direction::Send, &hash(0)),
        Err(StoreError::UnknownTransfer { .. })
    ));
}

#[test]
fn delete_transfer_removes_hashes_and_paused_frames() {
    let store = Store::open_in_memory().unwrap();
    store.insert_transfer(&record(ID, Direction::Recv)).unwrap();
    store
        .insert_transfer(&record(OTHER, Direction::Recv))
        .unwrap();
    for id in [ID, OTHER] {
        store
            .commit_durable(
                &id,
                Direction::Recv,
                &ranges(&[(0, 2)]),
                &[(0, hash(0)), (1, hash(1))],
            )
            .unwrap();
        store
            .save_paused_frame(Some(&id), "ERROR", b"frame", "{}", 5)
            .unwrap();
    }

    store.delete_transfer(&ID, Direction::Recv).unwrap();

    assert_eq!(store.get_transfer(&ID, Direction::Recv).unwrap(), None);
    assert!(store.chunk_hashes(&ID).unwrap().is_empty());
    assert!(store.paused_frames(&ID).unwrap().is_empty());
    // The other transfer is untouched.
    assert_eq!(store.chunk_hashes(&OTHER).unwrap().len(), 2);
    assert_eq!(store.paused_frames(&OTHER).unwrap().len(), 1);
    // Deleting again is fine.
    store.delete_transfer(&ID, Direction::Recv).unwrap();
}

#[test]
fn a_finished_reception_replaces_its_record_and_is_remembered_then_pruned() {
    let store = Store::open_in_memory().unwrap();
    store.insert_transfer(&record(ID, Direction::Recv)).unwrap();
    store
        .commit_durable(&ID, Direction::Recv, &ranges(&[(0, 1)]), &[(0, hash(0))])
        .unwrap();
    let day_ms = 24 * 3600 * 1000;
    store
        .finish_received(&ID, "/in/file.bin", &hash(7), 40 * day_ms)
        .unwrap();
    assert_eq!(store.get_transfer(&ID, Direction::Recv).unwrap(), None);
    assert!(store.chunk_hashes(&ID).unwrap().is_empty());
    let f = store.finished_received(&ID).unwrap().expect("remembered");
    assert_eq!((f.file_hash, f.path.as_str()), (hash(7), "/in/file.bin"));
    assert_eq!(store.finished_received(&OTHER).unwrap(), None);
    // 31 days later another one finishes: the first is forgotten.
    store
        .insert_transfer(&record(OTHER, Direction::Recv))
        .unwrap();
    store
        .finish_received(&OTHER, "/in/other.bin", &hash(8), 71 * day_ms)
        .unwrap();
    assert_eq!(store.finished_received(&ID).unwrap(), None);
    assert!(store.finished_received(&OTHER).unwrap().is_some());
}

#[test]
fn delete_transfer_keeps_paused_frames_while_the_other_side_remains() {
    let store = Store::open_in_memory().unwrap();
    store.insert_transfer(&record(ID, Direction::Send)).unwrap();
    store.insert_transfer(&record(ID, Direction::Recv)).unwrap();
    store
        .save_paused_frame(Some(&ID), "USER_STOP", b"f", "{}", 1)
        .unwrap();
    store.delete_transfer(&ID, Direction::Send).unwrap();
    assert_eq!(store.paused_frames(&ID).unwrap().len(), 1);
    store.delete_transfer(&ID, Direction::Recv).unwrap();
    assert!(store.paused_frames(&ID).unwrap().is_empty());
}

#[test]
fn trimming_paused_frames_keeps_the_newest_of_that_transfer_only() {
    let store = Store::open_in_memory().unwrap();
    let other = [8u8; 16];
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            store
                .save_paused_frame(Some(&ID), "ERROR", &[i], "{}", i64::from(i))
                .unwrap(),
        );
    }
    store
        .save_paused_frame(Some(&other), "ERROR", &[0], "{}", 0)
        .unwrap();
    assert_eq!(store.trim_paused_frames(&ID, 3).unwrap(), 7);
    let kept: Vec<i64> = store
        .paused_frames(&ID)
        .unwrap()
        .iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(kept, ids[7..]);
    assert_eq!(store.paused_frames(&other).unwrap().len(), 1);
    assert_eq!(store.trim_paused_frames(&ID, 3).unwrap(), 0);
}

#[test]
fn paused_frames_round_trip_in_save_order() {
    let store = Store::open_in_memory().unwrap();
    let a = store
        .save_paused_frame(Some(&ID), "ERROR", &[1, 2, 3], r#"{"link":"tcp:x"}"#, 10)
        .unwrap();
    let b = store
        .save_paused_frame(Some(&ID), "USER_STOP", &[], "{}", 11)
        .unwrap();
    let none = store
        .save_paused_frame(None, "ERROR", &[9], "{}", 12)
        .unwrap();
    assert!(a < b && b < none);
    let got = store.paused_frames(&ID).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, a);
    assert_eq!(got[0].transfer_id, Some(ID));
    assert_eq!(got[0].signal, "ERROR");
    assert_eq!(got[0].frame, vec![1, 2, 3]);
    assert_eq!(got[0].meta_json, r#"{"link":"tcp:x"}"#);
    assert_eq!(got[0].at_ms, 10);
    assert_eq!(got[1].signal, "USER_STOP");
}

#[test]
fn upsert_peer_keeps_first_seen_and_updates_last_seen() {
    let store = Store::open_in_memory().unwrap();
    store.upsert_peer(&peer("node-a", 100, 100)).unwrap();
    let mut again = peer("node-a", 500, 500);
    again.name = "renamed".into();
    again.ips = vec!["10.0.0.2".into()];
    store.upsert_peer(&again).unwrap();

    let got = store.peer("node-a").unwrap().unwrap();
    assert_eq!(got.first_seen_ms, 100);
    assert_eq!(got.last_seen_ms, 500);
    assert_eq!(got.name, "renamed");
    assert_eq!(got.ips, vec!["10.0.0.2".to_string()]);

    // An older sighting arriving late does not move last_seen back.
    store.upsert_peer(&peer("node-a", 300, 300)).unwrap();
    assert_eq!(store.peer("node-a").unwrap().unwrap().last_seen_ms, 500);
}

#[test]
fn peers_round_trip_string_lists_with_awkward_characters() {
    let store = Store::open_in_memory().unwrap();
    let mut p = peer("node-b", 1, 2);
    p.macs = vec![];
    p.ips = vec!["quote\" back\\slash".into(), "tab\tnl\nctl\u{1}".into()];
    p.links = vec!["ünïcødé ✓".into(), String::new()];
    store.upsert_peer(&p).unwrap();
    store.upsert_peer(&peer("node-c", 1, 9)).unwrap();
    let all = store.peers().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].node_id, "node-c", "most recently seen first");
    assert_eq!(all[1], p);
    assert_eq!(store.peer("nobody").unwrap(), None);
}

#[test]
fn link_stats_round_trip_per_transfer() {
    let store = Store::open_in_memory().unwrap();
    let s1 = LinkStat {
        transfer_id: ID,
        selector: "tcp:192.168.1.7:7878".into(),
        bytes: 1 << 40,
        elapsed_ms: 1234,
        at_ms: 99,
    };
    let s2 = LinkStat {
        selector: "serial:/dev/ttyACM0@3000000".into(),
        ..s1.clone()
    };
    let s3 = LinkStat {
        transfer_id: OTHER,
        ..s1.clone()
    };
    for s in [&s1, &s2, &s3] {
        store.record_link_stat(s).unwrap();
    }
    assert_eq!(store.link_stats(&ID).unwrap(), vec![s1, s2]);
    assert_eq!(store.link_stats(&OTHER).unwrap(), vec![s3]);
}

#[test]
fn the_file_survives_reopen_with_data_intact() {
    let (_dir, path) = temp_db();
    let mut t = record(ID, Direction::Recv);
    t.durable = ranges(&[(0, 3)]);
    {
        let store = Store::open(&path).unwrap();
        store.insert_transfer(&t).unwrap();
        store
            .commit_durable(&ID, Direction::Recv, &ranges(&[(3, 4)]), &[(3, hash(3))])
            .unwrap();
        store.meta_set("node_id", "me").unwrap();
        store.upsert_peer(&peer("node-a", 1, 2)).unwrap();
        store
            .save_paused_frame(Some(&ID), "ERROR", b"x", "{}", 3)
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    let got = store.get_transfer(&ID, Direction::Recv).unwrap().unwrap();
    assert_eq!(got.durable, ranges(&[(0, 4)]));
    assert_eq!(got.path, t.path);
    assert_eq!(store.chunk_hashes(&ID).unwrap(), vec![(3, hash(3))]);
    assert_eq!(store.meta_get("node_id").unwrap().as_deref(), Some("me"));
    assert_eq!(store.peers().unwrap(), vec![peer("node-a", 1, 2)]);
    assert_eq!(store.paused_frames(&ID).unwrap().len(), 1);
}

#[test]
fn a_corrupt_durable_blob_is_reported_as_corrupt() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path).unwrap();
    store.insert_transfer(&record(ID, Direction::Send)).unwrap();
    raw(&path)
        .execute("UPDATE transfers SET durable = x'010203'", [])
        .unwrap();
    let err = store.get_transfer(&ID, Direction::Send).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(
        err.to_string().contains("0707"),
        "names the transfer: {err}"
    );
    assert!(matches!(
        store.list_transfers(),
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.commit_durable(&ID, Direction::Send, &ranges(&[(0, 1)]), &[]),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn store_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Store>();
    assert_send::<StoreError>();
}

#[test]
fn static_addresses_are_kept_per_name_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    assert!(
        store
            .add_static_addr("nas", "tcp:10.8.0.2:7878", 1)
            .unwrap()
    );
    assert!(
        !store
            .add_static_addr("nas", "tcp:10.8.0.2:7878", 2)
            .unwrap()
    );
    assert!(
        store
            .add_static_addr("nas", "tcp:10.9.0.2:7878", 3)
            .unwrap()
    );
    assert!(store.add_static_addr("pi", "tcp:10.1.0.5:7878", 4).unwrap());
    assert_eq!(
        store.static_addrs().unwrap(),
        vec![
            ("nas".to_string(), "tcp:10.8.0.2:7878".to_string()),
            ("nas".to_string(), "tcp:10.9.0.2:7878".to_string()),
            ("pi".to_string(), "tcp:10.1.0.5:7878".to_string()),
        ]
    );
    assert_eq!(
        store
            .remove_static_addrs("nas", Some("tcp:10.8.0.2:7878"))
            .unwrap(),
        1
    );
    assert_eq!(store.remove_static_addrs("nas", None).unwrap(), 1);
    assert_eq!(store.static_addrs().unwrap().len(), 1);
}

#[test]
fn a_peer_flag_is_stored_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("f.db")).unwrap();
    let mut p = peer("id-flag", 1, 2);
    p.flag = Some("claimed another id".into());
    store.upsert_peer(&p).unwrap();
    assert_eq!(
        store.peer("id-flag").unwrap().unwrap().flag.as_deref(),
        Some("claimed another id")
    );
    p.flag = None;
    store.upsert_peer(&p).unwrap();
    assert_eq!(store.peer("id-flag").unwrap().unwrap().flag, None);
}

#[test]
fn a_version_1_database_is_upgraded_keeping_its_peers() {
    let (_dir, path) = temp_db();
    {
        let c = raw(&path);
        c.execute_batch(include_str!("../../../migrations/0001_init.sql"))
            .unwrap();
        c.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO peers (node_id, name, node_type, trust, first_seen_ms, last_seen_ms)
             VALUES ('old-peer', 'nas', 'server', 'paired', 1, 2);",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(user_version(&path), 4);
    let p = store.peer("old-peer").unwrap().unwrap();
    assert_eq!(
        (p.name.as_str(), p.trust.as_str(), p.flag),
        ("nas", "paired", None)
    );
    assert!(
        store
            .add_static_addr("nas", "tcp:10.0.0.1:7878", 3)
            .unwrap()
    );
}

#[test]
fn a_received_trees_entry_list_round_trips() {
    let (_dir, path) = temp_db();
    let store = Store::open(&path).unwrap();
    let mut r = record(ID, Direction::Recv);
    r.tree = Some(vec![1, 2, 3, 0, 255]);
    store.insert_transfer(&r).unwrap();
    let back = store.get_transfer(&ID, Direction::Recv).unwrap().unwrap();
    assert_eq!(back.tree, Some(vec![1, 2, 3, 0, 255]));
}
