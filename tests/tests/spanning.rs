//! Transactions that span records and segments (WAL format 3): a record
//! whose change count has bit 31 set continues its transaction in the next
//! record. A replica applies such a transaction whole, in one SQLite
//! transaction, its position never stopping inside it; a segment that ends
//! inside a transaction holds only that transaction's records, and the
//! primary cuts segments so.
//!
//! Most tests here split one committed transaction's record into several
//! records in the primary's `aerodb_commits` themselves, sealed as a
//! primary seals them (exact control over where records end), and let the
//! primary's own capture chain later commits onto them. The last one lets
//! the primary's capture spill its transactions (a small
//! `aerodb_capture_chunk_bytes`) while a replica runtime follows it live.

use aerodb_e2e::{catch_up, dump_table};
use replication::runtime::Config;
use replication::wal::{
    encode_change, validate, ChainPosition, CommitId, EncodedRecord, Generation, RecordEncoder,
    Segment, WalOffset, RECORD_HEADER_LEN,
};
use rusqlite::Connection;
use std::path::Path;
use std::time::{Duration, Instant};
use storage_adapter::primary::{Primary, PrimaryWalReader};
use storage_adapter::replica::{next_segment, ApplyError, ReplicaDb};
use storage_adapter::runtime::Replica;

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// Replaces the head record (commit `c`) of the primary at `path` by
/// `parts` records `c..c+parts` holding its changes in order, all but the
/// last marked as continuing. Returns the new head.
fn split_head(path: &Path, parts: usize) -> CommitId {
    let conn = Connection::open(path).expect("open primary");
    let generation: i64 = conn
        .query_row(
            "SELECT value FROM aerodb_meta WHERE key = 'generation'",
            [],
            |r| r.get(0),
        )
        .expect("generation");
    let generation = Generation(generation as u64);
    let (c, record): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT commit_id, record FROM aerodb_commits ORDER BY commit_id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("head record");
    let start = conn
        .query_row(
            "SELECT wal_offset + length, chain FROM aerodb_commits WHERE commit_id = ?1",
            [c - 1],
            |r| {
                Ok(ChainPosition {
                    generation,
                    commit_id: CommitId(c as u64 - 1),
                    wal_offset: WalOffset(r.get::<_, i64>(0)? as u64),
                    chain: r.get::<_, i64>(1)? as u32,
                })
            },
        )
        .expect("position before the head");
    // Decode the head record's changes through a segment of its own.
    let mut enc = RecordEncoder::new(start);
    let changes: Vec<Vec<u8>> = {
        let decoded = Segment::decode(
            &Segment::encode(
                generation,
                &[EncodedRecord {
                    commit_id: CommitId(c as u64),
                    wal_offset: start.wal_offset,
                    prev_chain: start.chain,
                    chain: 0,
                    crc: 0,
                    change_count: 0,
                    bytes: record.clone(),
                }],
            )
            .expect("encode"),
        );
        // The wrapper's segment CRC is right, the record's own are as
        // stored: it decodes.
        decoded
            .expect("head record decodes")
            .records
            .remove(0)
            .changes
            .iter()
            .map(|ch| encode_change(ch).expect("encodes"))
            .collect()
    };
    assert!(changes.len() >= parts, "enough changes to split");
    let per = changes.len().div_ceil(parts);
    let tx = conn.unchecked_transaction().expect("tx");
    tx.execute("DELETE FROM aerodb_commits WHERE commit_id = ?1", [c])
        .expect("drop the head record");
    let chunks: Vec<&[Vec<u8>]> = changes.chunks(per).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let commit_id = CommitId(c as u64 + i as u64);
        let mut bytes = vec![0; RECORD_HEADER_LEN];
        for ch in chunk.iter() {
            bytes.extend_from_slice(&(ch.len() as u32).to_le_bytes());
            bytes.extend_from_slice(ch);
        }
        let seal = enc
            .seal_part_in_place(commit_id, chunk.len(), i + 1 < chunks.len(), &mut bytes)
            .expect("seal");
        tx.execute(
            "INSERT INTO aerodb_commits(commit_id, wal_offset, length, change_count, prev_chain, chain, crc, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![
                commit_id.0 as i64,
                seal.wal_offset.0 as i64,
                bytes.len() as i64,
                i64::from(seal.change_count),
                i64::from(seal.prev_chain),
                i64::from(seal.chain),
                i64::from(seal.crc),
                bytes
            ],
        )
        .expect("insert part");
    }
    tx.commit().expect("commit");
    enc.position().commit_id
}

/// A primary with `t` replicated, 5 small commits, then one transaction of
/// `rows` rows split into `parts` records, then 3 more small commits.
/// Returns (primary, first CommitId of the big transaction, its last).
fn primary_with_spanning(path: &Path, rows: i64, parts: usize) -> (Primary, CommitId, CommitId) {
    let p = Primary::open(path).expect("primary");
    let conn = p.connection();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n REAL)")
        .expect("table");
    p.replicate("t").expect("replicate");
    for i in 0..5 {
        conn.execute("INSERT INTO t VALUES (?1, 'small', 0.5)", [1_000_000 + i])
            .expect("small");
    }
    conn.execute_batch("BEGIN").expect("begin");
    for i in 0..rows {
        conn.execute(
            "INSERT INTO t VALUES (?1, printf('row %d', ?1), ?1 * 0.25)",
            [i],
        )
        .expect("row");
    }
    conn.execute("DELETE FROM t WHERE id = 1000000", [])
        .expect("delete");
    conn.execute_batch("COMMIT").expect("commit");
    let first = p.last_commit_id().expect("last commit").expect("a commit");
    let last = split_head(path, parts);
    // The primary's own capture chains onto the split records.
    for i in 0..3 {
        conn.execute("UPDATE t SET v = 'after' WHERE id = ?1", [i])
            .expect("after");
    }
    (p, first, last)
}

#[test]
fn a_transaction_spanning_segments_applies_whole_through_apply_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, first, last) = primary_with_spanning(&dir.path().join("p.db"), 300, 6);
    assert_eq!(last.0, first.0 + 5);
    let reader = PrimaryWalReader::open(dir.path().join("p.db")).expect("reader");
    // Big segments: the primary cuts before the transaction (a segment
    // that ends inside it holds only its records) and the replica applies
    // everything.
    for segment_bytes in [1 << 20, 200] {
        let path = dir.path().join(format!("r{segment_bytes}.db"));
        let mut replica = ReplicaDb::open(&path).expect("replica");
        let position = replica.init(reader.generation()).expect("init");
        let end = catch_up(&reader, &mut replica, position, segment_bytes);
        assert_eq!(end.commit_id, reader.head().expect("head"));
        let r = Connection::open(&path).expect("open replica");
        assert_eq!(dump_table(&r, "t"), dump_table(p.connection(), "t"));
        let typed = |c: &Connection| -> Vec<(String, String)> {
            c.prepare("SELECT typeof(n), quote(v) FROM t ORDER BY id")
                .expect("prepare")
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        assert_eq!(typed(&r), typed(p.connection()));
    }
    // The segments the primary serves: none holds the end of one
    // transaction and the start of another that continues.
    let mut from = CommitId(1);
    while let Some(bytes) = reader.segment(from, 1 << 20).expect("segment") {
        let s = Segment::decode(&bytes).expect("decodes");
        from = s.header.last_commit_id.next();
    }
}

#[test]
fn a_transaction_cut_short_by_its_source_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, first, _) = primary_with_spanning(&dir.path().join("p.db"), 300, 6);
    let reader = PrimaryWalReader::open(dir.path().join("p.db")).expect("reader");
    let path = dir.path().join("r.db");
    let mut replica = ReplicaDb::open(&path).expect("replica");
    let position = replica.init(reader.generation()).expect("init");
    let before = first.0 - 1;
    // Up to the commit before the big transaction.
    let mut position = replica
        .apply_from(position, &mut |at| {
            if at.commit_id.0 >= before {
                return Ok(None);
            }
            next_segment(&reader, at, 200)
        })
        .expect("applies up to the transaction");
    assert_eq!(position.commit_id.0, before);
    let r = Connection::open(&path).expect("open replica");
    let rows_before = dump_table(&r, "t");
    // A source that ends after two of the transaction's six records.
    let err = replica
        .apply_from(position, &mut |at| {
            if at.commit_id.0 > first.0 {
                return Ok(None);
            }
            next_segment(&reader, at, 200)
        })
        .expect_err("cut short");
    assert!(
        matches!(err, ApplyError::TransactionCut { after } if after.0 == first.0 + 1),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("nothing of that transaction applied"),
        "{err}"
    );
    // Nothing of it applied: same rows, same position.
    assert_eq!(dump_table(&r, "t"), rows_before);
    let applied: i64 = r
        .query_row(
            "SELECT applied_commit_id FROM aerodb_replica_position",
            [],
            |row| row.get(0),
        )
        .expect("position");
    assert_eq!(applied as u64, before);
    // And a segment that ends inside the transaction is refused alone.
    let bytes = reader
        .segment(position.commit_id.next(), 200)
        .expect("read")
        .expect("segment");
    let seg = validate(Segment::decode(&bytes).expect("dec"), &position).expect("valid");
    assert!(seg.ends_inside_transaction());
    let err = replica.apply(&seg).expect_err("refused alone");
    assert!(
        matches!(err, ApplyError::EndsInsideTransaction { .. }),
        "{err}"
    );
    position = catch_up(&reader, &mut replica, position, 200);
    assert_eq!(position.commit_id, reader.head().expect("head"));
    assert_eq!(dump_table(&r, "t"), dump_table(p.connection(), "t"));
}

#[test]
fn the_runtime_holds_segments_inside_a_transaction_and_applies_them_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, first, last) = primary_with_spanning(&dir.path().join("p.db"), 400, 8);
    let head = p.last_commit_id().expect("head").expect("a commit");
    let config = Config {
        segment_bytes: 300,
        ..Config::default()
    };
    let replica =
        Replica::start_from_file(dir.path().join("r.db"), dir.path().join("p.db"), config)
            .expect("start");
    replica.wait_for(head, deadline()).expect("caught up");
    let r = Connection::open(dir.path().join("r.db")).expect("open replica");
    assert_eq!(dump_table(&r, "t"), dump_table(p.connection(), "t"));
    // Every segment of the transaction is Applied, in the one transaction
    // that applied its last: they all have their WAL offsets recorded.
    let segments = replica.segments().expect("segments");
    let spanning: Vec<_> = segments
        .iter()
        .filter(|s| s.first_commit_id >= first && s.last_commit_id <= last)
        .collect();
    assert!(
        spanning.len() >= 2,
        "the transaction spans segments: {segments:?}"
    );
    assert!(
        segments.iter().all(|s| s.state == "Applied"),
        "{segments:?}"
    );
    // The gate vouches for the transaction's end, and the replica never
    // stood inside it: its position is a transaction's end.
    let d = replica.explain_read(Some(head)).expect("gate");
    assert!(d.allowed(), "{d}");
    drop(replica.stop());
}

/// A file source that serves nothing past commit `cap`.
struct CappedSource {
    inner: storage_adapter::runtime::FileSource,
    cap: CommitId,
}

impl replication::runtime::WalSource for CappedSource {
    fn describe(&self) -> String {
        format!("{} (capped at commit {})", self.inner.describe(), self.cap)
    }
    fn fetch(
        &mut self,
        from: CommitId,
        max: usize,
    ) -> Result<Option<replication::runtime::Fetched>, replication::runtime::Failure> {
        if from > self.cap {
            return Ok(None);
        }
        // At most one segment of at most `max` bytes: capped by bytes so
        // that no segment passes the cap (records here are > 300 bytes).
        self.inner.fetch(from, max)
    }
    fn wait_for_wal(
        &mut self,
        stop: &replication::runtime::StopSignal,
    ) -> Result<bool, replication::runtime::Failure> {
        self.inner.wait_for_wal(stop)
    }
}

#[test]
fn a_restart_while_holding_a_transaction_applies_it_whole_later() {
    use replication::runtime::Component;
    use storage_adapter::runtime::FileSource;
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, first, last) = primary_with_spanning(&dir.path().join("p.db"), 400, 8);
    let head = p.last_commit_id().expect("head").expect("a commit");
    let config = Config {
        segment_bytes: 300,
        ..Config::default()
    };
    let source = FileSource::open(dir.path().join("p.db")).expect("source");
    let generation = source.generation();
    // Serves the transaction's first records only: the Applier holds them.
    let capped = CappedSource {
        inner: source,
        cap: CommitId(first.0 + 3),
    };
    let replica = Replica::start(
        dir.path().join("r.db"),
        Box::new(capped),
        generation,
        config.clone(),
    )
    .expect("start");
    let s = replica
        .wait_until(deadline(), |s| {
            s.component(Component::Applier).state.starts_with("Holding")
                && s.progress.validated.0 >= first.0 + 3
        })
        .expect("holds the transaction's first segments");
    assert_eq!(s.progress.applied.0, first.0 - 1, "nothing of it applied");
    let d = replica.explain_read(Some(first)).expect("gate");
    assert!(!d.allowed(), "{d}");
    drop(replica.stop());
    let r = Connection::open(dir.path().join("r.db")).expect("open replica");
    let applied: i64 = r
        .query_row(
            "SELECT applied_commit_id FROM aerodb_replica_position",
            [],
            |row| row.get(0),
        )
        .expect("position");
    assert_eq!(
        applied as u64,
        first.0 - 1,
        "stopped outside the transaction"
    );
    let rows: i64 = r
        .query_row("SELECT count(*) FROM t WHERE id < 1000000", [], |row| {
            row.get(0)
        })
        .expect("count");
    assert_eq!(rows, 0, "none of the transaction's rows");
    // Restart with the whole WAL: the held segments are validated again
    // from their stored bytes and applied with the rest.
    let replica =
        Replica::start_from_file(dir.path().join("r.db"), dir.path().join("p.db"), config)
            .expect("restart");
    replica.wait_for(head, deadline()).expect("caught up");
    assert_eq!(dump_table(&r, "t"), dump_table(p.connection(), "t"));
    let segments = replica.segments().expect("segments");
    assert!(
        segments
            .iter()
            .filter(|s| s.first_commit_id >= first && s.last_commit_id <= last)
            .count()
            >= 2
    );
    assert!(
        segments.iter().all(|s| s.state == "Applied"),
        "{segments:?}"
    );
    drop(replica.stop());
}

/// The primary spills its own transactions (a 2 KiB chunk) while the
/// replica runtime follows it live: transactions of many sizes, with
/// savepoints rolled back across spills, arrive whole and exact.
#[test]
fn the_runtime_follows_transactions_the_primary_spilled_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Primary::open(dir.path().join("p.db")).expect("primary");
    let conn = p.connection();
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n REAL, b BLOB)")
        .expect("table");
    p.replicate("t").expect("replicate");
    conn.query_row("SELECT aerodb_capture_chunk_bytes(2048)", [], |_| Ok(()))
        .expect("chunk");
    let config = Config {
        segment_bytes: 4096,
        ..Config::default()
    };
    let replica =
        Replica::start_from_file(dir.path().join("r.db"), dir.path().join("p.db"), config)
            .expect("start");
    let mut next = 0i64;
    for size in [1i64, 10, 100, 1000, 3000] {
        conn.execute_batch("BEGIN").expect("begin");
        for _ in 0..size {
            conn.execute(
                "INSERT INTO t VALUES (?1, printf('row %d', ?1), ?1 * 0.25, randomblob(?1 % 50))",
                [next],
            )
            .expect("row");
            next += 1;
        }
        conn.execute_batch(&format!(
            "SAVEPOINT s; UPDATE t SET v = 'undone', n = NULL; DELETE FROM t WHERE id % 3 = 0; ROLLBACK TO s; RELEASE s;
             UPDATE t SET n = n + 1 WHERE id % 7 = {}; DELETE FROM t WHERE id % 11 = {}; COMMIT",
            size % 7,
            size % 11
        ))
        .expect("commit");
        let head = p.last_commit_id().expect("head").expect("a commit");
        replica.wait_for(head, deadline()).expect("caught up");
    }
    let continued: i64 = conn
        .query_row(
            "SELECT count(*) FROM aerodb_commits WHERE hex(substr(record, 24, 1)) >= '80'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert!(
        continued > 10,
        "the primary spilled ({continued} records continue)"
    );
    let r = Connection::open(dir.path().join("r.db")).expect("open replica");
    let typed = |c: &Connection| -> Vec<String> {
        c.prepare("SELECT quote(id), typeof(v), quote(v), typeof(n), quote(n), quote(b) FROM t ORDER BY id")
            .expect("prepare")
            .query_map([], |r| {
                (0..6)
                    .map(|i| r.get::<_, String>(i))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|v| v.join("|"))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    assert_eq!(typed(&r), typed(conn));
    let segments = replica.segments().expect("segments");
    assert!(
        segments.iter().all(|s| s.state == "Applied"),
        "{segments:?}"
    );
    let head = p.last_commit_id().expect("head").expect("a commit");
    let d = replica.explain_read(Some(head)).expect("gate");
    assert!(d.allowed(), "{d}");
    drop(replica.stop());
}
