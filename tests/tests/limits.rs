//! Named limits are enforced where the data is written: a transaction
//! whose WAL record would exceed `MAX_RECORD_BYTES` is refused on the
//! primary (the statement fails, nothing of it is captured), instead of
//! producing WAL that no replica could ever read.

use aerodb_e2e::catch_up;
use replication::wal::{CommitId, MAX_RECORD_BYTES};
use storage_adapter::primary::{Primary, PrimaryWalReader};
use storage_adapter::replica::ReplicaDb;

#[test]
fn transaction_over_the_record_limit_is_refused_when_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p.db");
    let mut primary = Primary::open(&p).expect("primary");
    primary
        .connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)")
        .expect("table");
    primary.replicate("t").expect("replicate");
    let blob = (MAX_RECORD_BYTES / 3) as i64;
    let tx = primary.connection_mut().transaction().expect("tx");
    tx.execute("INSERT INTO t VALUES (1, zeroblob(?1))", [blob])
        .expect("first third");
    tx.execute("INSERT INTO t VALUES (2, zeroblob(?1))", [blob])
        .expect("second third");
    let err = tx
        .execute("INSERT INTO t VALUES (3, zeroblob(?1))", [blob])
        .expect_err("over the limit");
    assert!(
        err.to_string().contains("transaction's WAL record is")
            && err
                .to_string()
                .contains(&format!("over the limit of {MAX_RECORD_BYTES} (commit 2)")),
        "{err}"
    );
    tx.commit().expect("the rest commits");

    // What committed is readable and applies.
    let reader = PrimaryWalReader::open(&p).expect("reader");
    let mut replica = ReplicaDb::open(dir.path().join("r.db")).expect("replica");
    let start = replica.init(reader.generation()).expect("init");
    let pos = catch_up(&reader, &mut replica, start, 1 << 20);
    assert_eq!(pos.commit_id, CommitId(2));
    let n: i64 = replica
        .connection()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 2);
}
