//! Named limits, where the data is written. A transaction has no size
//! limit: one larger than a WAL record (`MAX_RECORD_BYTES`) is written as
//! records that continue one another and applies whole. A single value
//! over `MAX_VALUE_BYTES` is refused on the primary (the statement fails,
//! nothing of it is captured, the rest of the transaction commits),
//! instead of producing WAL that no replica could ever read.

use aerodb_e2e::catch_up;
use replication::wal::{CommitId, MAX_RECORD_BYTES, MAX_VALUE_BYTES};
use storage_adapter::primary::{Primary, PrimaryWalReader};
use storage_adapter::replica::ReplicaDb;

fn blobs(conn: &rusqlite::Connection) -> Vec<(i64, Vec<u8>)> {
    let mut s = conn
        .prepare("SELECT id, b FROM t ORDER BY id")
        .expect("prepare");
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn a_transaction_larger_than_a_record_commits_and_replicates_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p.db");
    let mut primary = Primary::open(&p).expect("primary");
    primary
        .connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)")
        .expect("table");
    primary.replicate("t").expect("replicate");
    // Four values of a third of a record each: over the record limit.
    let blob = (MAX_RECORD_BYTES / 3) as i64;
    let tx = primary.connection_mut().transaction().expect("tx");
    for id in 1..=4 {
        tx.execute("INSERT INTO t VALUES (?1, randomblob(?2))", [id, blob])
            .expect("insert");
    }
    tx.commit().expect("commits: no transaction size limit");
    // Commit 1 is the schema record; the transaction spans several records.
    let head = primary.head().expect("head");
    assert!(head > CommitId(2), "{head}");

    let reader = PrimaryWalReader::open(&p).expect("reader");
    let mut replica = ReplicaDb::open(dir.path().join("r.db")).expect("replica");
    let start = replica.init(reader.generation()).expect("init");
    let pos = catch_up(&reader, &mut replica, start, 1 << 20);
    assert_eq!(pos.commit_id, head);
    let (want, got) = (blobs(primary.connection()), blobs(replica.connection()));
    assert_eq!(want.len(), 4);
    assert!(want == got, "the replica's blobs differ from the primary's");
}

#[test]
fn a_value_over_the_value_limit_is_refused_when_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p.db");
    let mut primary = Primary::open(&p).expect("primary");
    primary
        .connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)")
        .expect("table");
    primary.replicate("t").expect("replicate");
    let tx = primary.connection_mut().transaction().expect("tx");
    tx.execute(
        "INSERT INTO t VALUES (1, randomblob(?1))",
        [MAX_VALUE_BYTES as i64],
    )
    .expect("a value at the limit");
    let err = tx
        .execute(
            "INSERT INTO t VALUES (2, zeroblob(?1))",
            [MAX_VALUE_BYTES as i64 + 1],
        )
        .expect_err("a value over the limit");
    let msg = err.to_string();
    assert!(
        msg.contains(&MAX_VALUE_BYTES.to_string())
            && msg.contains(&(MAX_VALUE_BYTES + 1).to_string()),
        "{msg}"
    );
    tx.commit().expect("the rest commits");
    let head = primary.head().expect("head");

    let reader = PrimaryWalReader::open(&p).expect("reader");
    let mut replica = ReplicaDb::open(dir.path().join("r.db")).expect("replica");
    let start = replica.init(reader.generation()).expect("init");
    let pos = catch_up(&reader, &mut replica, start, 1 << 20);
    assert_eq!(pos.commit_id, head);
    let (want, got) = (blobs(primary.connection()), blobs(replica.connection()));
    assert_eq!(want.len(), 1, "row 2 was refused");
    assert!(want == got, "the replica's blobs differ from the primary's");
}
