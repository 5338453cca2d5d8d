//! Adversarial review of the trigger + virtual-table capture design
//! (`storage-adapter/src/capture/`): experiments that try to make a replica
//! differ from its primary while replication reports success (silent
//! divergence), make a valid workload fail on the replica (false
//! divergence), commit uncaptured data, or crash.
//!
//! The harness (sync + exact compare) is `tests/differential/`, shared with
//! `exact_capture.rs`.
//! Tests named `defect_*` demonstrate a defect and fail until it is fixed;
//! the comment above each says what is expected and what happens. The
//! other tests are experiments that held, kept as regression tests.

#![allow(dead_code)]

use replication::wal::CommitId;
use rusqlite::Connection;
use storage_adapter::primary::Primary;

mod differential;

use differential::*;

// ================================================================ DEFECTS
//
// Silent divergence first.

/// DEFECT (silent divergence, uncaptured write): `RAISE(IGNORE)` in an
/// AFTER trigger that fires before the capture trigger (one created after
/// `aerodb_replicate`, or any TEMP trigger) abandons "any subsequent trigger
/// programs" of the row, the capture trigger included, while the row change
/// itself stays (SQLite: "No database changes are rolled back"). The
/// statement succeeds, the row commits, and it is never captured.
/// Expected: replica has (1, 'quiet') or the write is refused. Actual: the
/// replica lacks the row and replication reports success.
#[test]
fn raise_ignore_in_a_newer_after_trigger_makes_writes_refused() {
    // Fixed: writes are refused while a trigger that fires before capture
    // can RAISE; nothing uncaptured commits.
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    h.replicate("t");
    h.exec(
        "CREATE TRIGGER quiet AFTER INSERT ON t WHEN NEW.v = 'quiet' BEGIN SELECT RAISE(IGNORE); END;
         CREATE TRIGGER quiet_upd AFTER UPDATE ON t WHEN NEW.v = 'hush' BEGIN SELECT RAISE(IGNORE); END;",
    );
    let e = h.exec_err("INSERT INTO t VALUES (1, 'quiet')");
    assert!(
        e.contains("trigger quiet fires before its capture triggers"),
        "{e}"
    );
    assert!(h.rows("SELECT * FROM t").is_empty(), "nothing committed");
    h.check("after a refused write");
    // Running aerodb_replicate again puts capture first: writes work.
    h.replicate("t");
    h.exec("INSERT INTO t VALUES (1, 'quiet')");
    h.exec("INSERT INTO t VALUES (2, 'loud')");
    h.exec("UPDATE t SET v = 'hush' WHERE id = 2");
    h.check("after capture fires first again");
}

/// TEMP triggers always fire first: one that can RAISE makes writes to any
/// replicated table refused, even when it skipped the only capture.
#[test]
fn raise_ignore_in_a_temp_trigger_makes_writes_refused() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    h.replicate("t");
    h.exec("INSERT INTO t VALUES (1, 'a')");
    h.check("before the TEMP trigger");
    h.exec("CREATE TEMP TRIGGER quiet AFTER DELETE ON t BEGIN SELECT RAISE(IGNORE); END");
    let e = h.exec_err("DELETE FROM t WHERE id = 1");
    assert!(e.contains("trigger quiet"), "{e}");
    assert_eq!(
        h.rows("SELECT * FROM t"),
        ["(1, 'a')"],
        "the delete rolled back"
    );
    h.check("after a refused DELETE");
}

/// `RAISE(FAIL)` in a newer AFTER trigger would keep the row whose capture
/// it skipped: the commit is refused, and the statement's rows roll back.
#[test]
fn raise_fail_in_a_newer_after_trigger_makes_writes_refused() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    h.replicate("t");
    h.exec("CREATE TRIGGER picky AFTER INSERT ON t WHEN NEW.v = 'bad' BEGIN SELECT RAISE(FAIL, 'bad value'); END");
    let e = h.exec_err("INSERT INTO t VALUES (1, 'ok'), (2, 'bad'), (3, 'never')");
    assert!(e.contains("trigger picky"), "{e}");
    assert!(h.conn().is_autocommit());
    assert!(h.rows("SELECT * FROM t").is_empty(), "nothing committed");
    h.check("after a refused statement");
}

/// DEFECT (silent divergence): a key that equals another under the key's
/// collation (NOCASE 'abc' / 'ABC') is two buffer entries (keys are
/// compared as bytes). A REPLACE over the other spelling deletes the row
/// without any trigger, so the entry of the deleted spelling keeps its row
/// image as if it were exact ("touched once"), and its upsert, ordered after
/// the true final row, overwrites it on the replica.
/// Expected: replica ('abc', 2). Actual: replica ('ABC', 0).
#[test]
fn defect_nocase_key_replace_over_another_spelling_leaves_a_stale_row() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(k TEXT COLLATE NOCASE NOT NULL PRIMARY KEY, v)");
    h.replicate("t");
    h.exec("INSERT INTO t VALUES ('abc', 0)");
    h.check("after the insert");
    h.exec(
        "BEGIN;
         UPDATE t SET k = 'ABC' WHERE k = 'abc';
         INSERT OR REPLACE INTO t VALUES ('abc', 2);
         COMMIT",
    );
    assert_eq!(h.rows("SELECT * FROM t"), ["('abc', 2)"]);
    h.check("after REPLACE over a case variant of a key touched earlier in the transaction");
}

/// DEFECT (silent divergence): the same in one transaction from an empty
/// table, and with WITHOUT ROWID and RTRIM ('a' / 'a ').
#[test]
fn defect_collation_equal_keys_replace_in_one_transaction() {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE n(k TEXT COLLATE NOCASE PRIMARY KEY, v) WITHOUT ROWID;
         CREATE TABLE r(k TEXT COLLATE RTRIM NOT NULL PRIMARY KEY, v);",
    );
    h.replicate("n");
    h.replicate("r");
    h.exec(
        "BEGIN;
         INSERT INTO n VALUES ('abc', 0); DELETE FROM n WHERE k = 'abc';
         INSERT INTO n VALUES ('ABC', 1); INSERT OR REPLACE INTO n VALUES ('abc', 2);
         INSERT INTO r VALUES ('a', 0); DELETE FROM r WHERE k = 'a';
         INSERT INTO r VALUES ('a  ', 1); REPLACE INTO r VALUES ('a', 2);
         COMMIT",
    );
    assert_eq!(h.rows("SELECT * FROM n"), ["('abc', 2)"]);
    assert_eq!(h.rows("SELECT * FROM r"), ["('a', 2)"]);
    h.check("after REPLACE over collation-equal keys");
}

/// DEFECT (silent divergence): the same with numerically equal keys of
/// different storage class in a key column without affinity (1 and 1.0 are
/// the same key to SQLite, different bytes to the buffer).
/// Expected: replica (1, 'c'). Actual: replica (1.0, 'b').
#[test]
fn defect_integer_and_real_spellings_of_one_key_replace() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(k NOT NULL PRIMARY KEY, v)");
    h.replicate("t");
    h.exec(
        "BEGIN;
         INSERT INTO t VALUES (1, 'a'); DELETE FROM t WHERE k = 1;
         INSERT INTO t VALUES (1.0, 'b'); INSERT OR REPLACE INTO t VALUES (1, 'c');
         COMMIT",
    );
    assert_eq!(
        h.rows("SELECT k, typeof(k), v FROM t"),
        ["(1, 'integer', 'c')"]
    );
    h.check("after REPLACE over the REAL spelling of an INTEGER key");
}

/// DEFECT (silent divergence): a user BEFORE INSERT trigger older than the
/// capture triggers (created before `aerodb_replicate`, the usual case for
/// an existing schema) fires after the capture's REPLACE probe; a row it
/// writes and the outer REPLACE then deletes through a UNIQUE column was
/// never probed, so its single touch stays "exact" and the replica keeps it.
/// Expected: replica only (1, 8, 'x'). Actual: replica also has
/// (101, 7, 'shadow'). (Without the later UPDATE the replica fails with a
/// UNIQUE error instead.)
#[test]
fn defect_older_before_trigger_row_deleted_by_replace_is_kept_on_the_replica() {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, u INTEGER UNIQUE, v TEXT);
         CREATE TRIGGER shadow BEFORE INSERT ON t WHEN NEW.v = 'x' BEGIN
           INSERT INTO t VALUES (NEW.id + 100, NEW.u, 'shadow'); END;",
    );
    h.replicate("t");
    h.exec(
        "BEGIN;
         INSERT OR REPLACE INTO t VALUES (1, 7, 'x');
         UPDATE t SET u = 8 WHERE id = 1;
         COMMIT",
    );
    assert_eq!(h.rows("SELECT * FROM t ORDER BY id"), ["(1, 8, 'x')"]);
    h.check("after REPLACE deleted a row an older BEFORE trigger inserted");
}

/// DEFECT (silent divergence): a UNIQUE generated column. `UPDATE OR
/// REPLACE ... SET a = ...` changes the generated column, but the capture's
/// `BEFORE UPDATE OF <key and unique columns>` probe fires only for columns
/// named in SET, so the row REPLACE deletes through the generated column
/// (row 2) is never noted. Expected: replica (1, 6) only. Actual: the
/// replica keeps row 2 too. (Without the second UPDATE the replica fails
/// with a UNIQUE error instead.)
#[test]
fn defect_unique_generated_column_replace_through_update() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, g INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL UNIQUE)");
    if let Err(e) = h.try_replicate("t") {
        // Refusing the table up front is a correct outcome.
        eprintln!("refused: {e}");
        return;
    }
    h.exec("INSERT INTO t(id, a) VALUES (1, 1), (2, 5)");
    h.check("after the inserts");
    h.exec("BEGIN; UPDATE OR REPLACE t SET a = 5 WHERE id = 1; UPDATE t SET a = 6 WHERE id = 1; COMMIT");
    assert_eq!(h.rows("SELECT id, a FROM t ORDER BY id"), ["(1, 6)"]);
    h.check("after UPDATE OR REPLACE through a UNIQUE generated column");
}

/// DEFECT (silent divergence, uncaptured write): incremental BLOB I/O
/// (`sqlite3_blob_write`) changes a row without firing any trigger.
/// Expected: the replica sees the new bytes, or the write is refused.
/// Actual: the primary's blob changes, the replica keeps the old one.
#[test]
#[ignore = "known defect: sqlite3_blob_write fires no trigger, so it is not captured"]
fn defect_incremental_blob_write_is_not_captured() {
    use rusqlite::ffi;
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)");
    h.replicate("t");
    h.exec("INSERT INTO t VALUES (1, x'00000000')");
    h.check("after the insert");
    // SAFETY: plain use of the C API on an open connection, no statement
    // running.
    unsafe {
        let db = h.conn().handle();
        let mut blob: *mut ffi::sqlite3_blob = std::ptr::null_mut();
        let rc = ffi::sqlite3_blob_open(
            db,
            c"main".as_ptr(),
            c"t".as_ptr(),
            c"b".as_ptr(),
            1,
            1,
            &mut blob,
        );
        assert_eq!(rc, ffi::SQLITE_OK, "blob_open");
        let data = [0xAAu8, 0xBB, 0xCC, 0xDD];
        let rc = ffi::sqlite3_blob_write(blob, data.as_ptr().cast(), 4, 0);
        assert_eq!(rc, ffi::SQLITE_OK, "blob_write");
        assert_eq!(ffi::sqlite3_blob_close(blob), ffi::SQLITE_OK);
    }
    assert_eq!(h.rows("SELECT * FROM t"), ["(1, X'AABBCCDD')"]);
    h.check("after an incremental blob write");
}

/// DEFECT (silent divergence): a copy of the primary (same generation,
/// e.g. `VACUUM INTO` or a file backup) attached to the primary's own
/// connection: its capture triggers pass the generation check (`check_main`
/// compares generations only), so its writes are recorded in the main
/// primary's WAL. Expected: the write through ATTACH is refused. Actual:
/// accepted; the replica gets (1, 'copy') and (5, 'copy only'), main has
/// (1, 'a').
#[test]
fn writes_through_an_attached_copy_of_the_primary_are_refused() {
    // Fixed: a connection with a same-generation copy attached refuses
    // writes to replicated tables (checked when capture joins).
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    h.replicate("t");
    h.exec("INSERT INTO t VALUES (1, 'a')");
    h.check("after the insert");
    let copy = h.path.with_file_name("copy.db");
    h.exec(&format!("VACUUM INTO '{}'", copy.display()));
    h.exec(&format!("ATTACH '{}' AS aux", copy.display()));
    let r = h.conn().execute_batch(
        "INSERT INTO aux.t VALUES (5, 'copy only'); UPDATE aux.t SET v = 'copy' WHERE id = 1",
    );
    eprintln!("write through the attached copy: {r:?}");
    let _ = h.conn().execute_batch("DETACH aux");
    // What the main primary's WAL now says, against main's own rows.
    let replica = h.try_check();
    assert!(
        r.is_err(),
        "a write to an attached copy of the primary was accepted; main's rows {:?}; replica vs main: {replica:?}",
        h.rows("SELECT * FROM t ORDER BY id")
    );
    h.check("after writes to an attached copy of the primary");
}

// False divergence: a valid workload the replica fails to apply.

/// DEFECT (false divergence: the replica refuses the record): whether a
/// user trigger fires before capture is decided at commit from the schema
/// then, but a trigger created and dropped inside the transaction fired
/// before capture during it. Its UPDATE of the inserted row made the first
/// touch look like an existing row, so the record says Update of a row the
/// replica does not have. Expected: the replica applies the record.
/// Actual: "UPDATE ... changed 0 rows" style apply error.
#[test]
#[ignore = "known defect (false divergence): a trigger created and dropped inside the transaction is not seen at commit"]
fn defect_trigger_created_and_dropped_inside_the_transaction() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, w INTEGER)");
    h.replicate("t");
    h.exec(
        "BEGIN;
         CREATE TRIGGER stamp AFTER INSERT ON t BEGIN UPDATE t SET w = 1 WHERE id = NEW.id; END;
         INSERT INTO t VALUES (1, 'a', 0);
         DROP TRIGGER stamp;
         COMMIT",
    );
    assert_eq!(h.rows("SELECT * FROM t"), ["(1, 'a', 1)"]);
    h.check("after a transaction that created, used and dropped a trigger");
}

/// DEFECT (false divergence): `capture_fires_first` matches
/// `sqlite_schema.tbl_name` with `=` (BINARY), but a trigger's `tbl_name`
/// is the table name as the CREATE TRIGGER spelled it (`ON T`). A newer
/// trigger declared `ON T` for table `t` is missed, existence is inferred
/// from a first touch that the trigger made, and the replica is told to
/// UPDATE a row it does not have.
#[test]
fn defect_newer_trigger_declared_on_the_table_name_in_other_letter_case() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, w INTEGER)");
    h.replicate("t");
    h.exec(
        "CREATE TRIGGER stamp AFTER INSERT ON T BEGIN UPDATE t SET w = 1 WHERE id = NEW.id; END",
    );
    assert_eq!(
        h.rows("SELECT tbl_name FROM sqlite_schema WHERE name = 'stamp'"),
        ["('T')"]
    );
    h.exec("INSERT INTO t VALUES (1, 'a', 0)");
    h.check("after an insert stamped by a trigger declared ON T");
}

/// DEFECT (false divergence): a self-referencing foreign key with ON UPDATE
/// CASCADE. SQLite runs the FK action (which updates the moved row itself,
/// at its new key) before the AFTER UPDATE capture trigger, so the new key's
/// first touch is an UPDATE (OLD exists) and it is recorded as a row that
/// existed: Update of key 10, which the replica does not have.
/// Expected: replica (10, 10). Actual: apply error.
#[test]
fn defect_self_referencing_on_update_cascade_moving_a_row_that_refers_to_itself() {
    let mut h = Harness::new();
    h.exec(
        "PRAGMA foreign_keys = ON;
         CREATE TABLE node(id INTEGER PRIMARY KEY, parent INTEGER REFERENCES node(id) ON UPDATE CASCADE)",
    );
    h.replicate("node");
    h.exec("INSERT INTO node VALUES (1, 1), (2, 1)");
    h.check("after the inserts");
    h.exec("UPDATE node SET id = 10 WHERE id = 1");
    assert_eq!(
        h.rows("SELECT * FROM node ORDER BY id"),
        ["(2, 10)", "(10, 10)"]
    );
    h.check("after moving a self-referencing row with ON UPDATE CASCADE");
}

/// DEFECT (false divergence): `aerodb_replicate` of an already replicated
/// table inside a transaction that deleted one of its rows before. The
/// schema record resets the replica's table to the rows at the second
/// replicate (row 1 no longer among them), then the buffered Delete of row
/// 1 (existed) requires exactly one row. Expected: replica (2). Actual:
/// DELETE changed 0 rows.
#[test]
fn defect_replicate_again_in_a_transaction_after_deleting_a_row() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    h.replicate("t");
    h.exec("INSERT INTO t VALUES (1, 'a'), (2, 'b')");
    h.check("after the inserts");
    h.exec("BEGIN; DELETE FROM t WHERE id = 1");
    h.primary
        .replicate("t")
        .expect("replicate again inside the transaction");
    h.exec("COMMIT");
    assert_eq!(h.rows("SELECT id FROM t"), ["(2)"]);
    h.check("after a delete then aerodb_replicate again in one transaction");
}

/// DEFECT (false divergence): the same with `aerodb_replicate` called twice
/// in the transaction that starts replicating the table.
#[test]
fn defect_replicate_twice_in_one_transaction_with_a_delete_between() {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    );
    h.exec("BEGIN");
    h.replicate("t");
    h.exec("DELETE FROM t WHERE id = 1; UPDATE t SET v = 'bb' WHERE id = 2");
    h.primary.replicate("t").expect("second replicate");
    h.exec("COMMIT");
    h.check("after replicate, delete, replicate in one transaction");
}

/// DEFECT (low severity, misuse): `aerodb_capture_row` is callable by any
/// SQL of the connection while a capture transaction is open (it is
/// INNOCUOUS, not DIRECTONLY: triggers must call it), so an application
/// statement or trigger can forge changes: here a Delete of a row the
/// primary keeps. Expected: refused, or the record still equals the data.
#[test]
#[ignore = "known defect (misuse): the internal aerodb_capture_row can be called directly and forge a change"]
fn defect_capture_row_can_be_called_directly_inside_a_capture_transaction() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    h.replicate("t");
    h.exec("INSERT INTO t VALUES (1, 'a')");
    h.check("after the insert");
    let g = h.primary.generation().0 as i64;
    let forged = h.conn().execute_batch(&format!(
        "BEGIN; INSERT INTO t VALUES (2, 'b'); SELECT aerodb_capture_row({g}, 't', 3, 1, 1); COMMIT"
    ));
    let _ = h.conn().execute_batch("ROLLBACK");
    eprintln!("direct call: {forged:?}");
    h.check("after a direct call of aerodb_capture_row");
}

// ================================================================ HELD
//
// Experiments that held: kept as regression tests.

const BIG: usize = (32 << 20) + 1;

/// A single-row INSERT (and UPDATE) whose value is over MAX_VALUE_BYTES
/// fails inside `aerodb_capture_row`; the statement is undone (SQLite opens
/// a statement journal because the trigger writes a virtual table), the
/// transaction stays open and commits exactly what was captured.
#[test]
fn value_over_the_limit_fails_its_statement_and_the_row_does_not_stay() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v)");
    h.replicate("t");
    h.exec("BEGIN; INSERT INTO t VALUES (1, 'a')");
    let e = h.exec_err(&format!("INSERT INTO t VALUES (2, zeroblob({BIG}))"));
    assert!(e.contains("cannot capture"), "{e}");
    assert!(!h.conn().is_autocommit());
    assert_eq!(
        h.rows("SELECT id FROM t"),
        ["(1)"],
        "the failed row is not in the transaction"
    );
    let e = h.exec_err(&format!(
        "UPDATE t SET v = CAST(zeroblob({BIG}) AS TEXT) WHERE id = 1"
    ));
    assert!(e.contains("cannot capture"), "{e}");
    assert_eq!(h.rows("SELECT v FROM t"), ["('a')"]);
    let e = h.exec_err(&format!(
        "INSERT OR FAIL INTO t VALUES (3, 'c'), (4, zeroblob({BIG})), (5, 'e')"
    ));
    assert!(e.contains("cannot capture"), "{e}");
    let e = h.exec_err(&format!(
        "INSERT OR IGNORE INTO t VALUES (6, 'f'), (7, zeroblob({BIG}))"
    ));
    assert!(e.contains("cannot capture"), "{e}");
    h.exec("COMMIT");
    let kept = h.rows("SELECT id FROM t ORDER BY id");
    eprintln!("kept after the failures: {kept:?}");
    h.check("after statements that failed on a value over the limit");
    // Autocommit.
    let e = h.exec_err(&format!("INSERT INTO t VALUES (8, zeroblob({BIG}))"));
    assert!(e.contains("cannot capture"), "{e}");
    assert!(h.rows("SELECT id FROM t WHERE id = 8").is_empty());
    h.check("after an autocommit insert over the limit");
}

/// A table too wide to hand its values to the capture function (keys only,
/// rows read at commit): a value over the limit fails the COMMIT itself
/// (xSync), and SQLite rolls the whole transaction back: nothing
/// uncaptured commits.
#[test]
fn wide_table_value_over_the_limit_fails_the_commit_and_rolls_back() {
    let mut h = Harness::new();
    let cols: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
    h.exec(&format!(
        "CREATE TABLE w(id INTEGER PRIMARY KEY, {})",
        cols.join(", ")
    ));
    h.replicate("w");
    h.exec("INSERT INTO w(id, c0) VALUES (1, 'a')");
    h.check("after a small insert");
    h.exec(&format!(
        "BEGIN; INSERT INTO w(id, c5) VALUES (2, zeroblob({BIG}))"
    ));
    let e = h.exec_err("COMMIT");
    eprintln!("commit: {e}");
    if !h.conn().is_autocommit() {
        h.exec("ROLLBACK");
    }
    assert!(
        h.rows("SELECT id FROM w WHERE id = 2").is_empty(),
        "the row must not commit"
    );
    h.check("after a commit refused for a value over the limit");
    let e = h.exec_err(&format!(
        "INSERT INTO w(id, c5) VALUES (3, zeroblob({BIG}))"
    ));
    eprintln!("autocommit: {e}");
    assert!(h.rows("SELECT id FROM w WHERE id = 3").is_empty());
    h.check("after an autocommit insert over the limit");
}

/// COMMIT that fails with SQLITE_BUSY (rollback journal: a reader holds
/// SHARED) after xSync wrote the record, then more writes, then a
/// ROLLBACK TO, then the retried COMMIT: the record is rewritten from the
/// transaction as it is at the successful commit.
#[test]
fn busy_commit_retried_after_more_writes_in_rollback_journal_mode() {
    let mut h = Harness::with_journal("DELETE");
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    h.replicate("t");
    h.exec("INSERT INTO t VALUES (1, 'a')");
    h.check("after the first insert");
    h.conn().busy_timeout(std::time::Duration::ZERO).unwrap();
    let reader = Connection::open(&h.path).unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM t")
        .unwrap();
    let n: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    h.exec("BEGIN; INSERT INTO t VALUES (2, 'b'); SAVEPOINT s; UPDATE t SET v = 'a2' WHERE id = 1");
    let e = h
        .conn()
        .execute_batch("COMMIT")
        .expect_err("COMMIT must be BUSY");
    assert_eq!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy),
        "{e}"
    );
    assert!(
        !h.conn().is_autocommit(),
        "a BUSY commit leaves the transaction open"
    );
    // The transaction changes after the failed commit.
    h.exec("INSERT INTO t VALUES (3, 'c'); ROLLBACK TO s; DELETE FROM t WHERE id = 1; RELEASE s");
    let e = h.conn().execute_batch("COMMIT").expect_err("still BUSY");
    assert_eq!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy),
        "{e}"
    );
    h.exec("INSERT INTO t VALUES (4, 'd')");
    reader.execute_batch("COMMIT").unwrap();
    h.exec("COMMIT");
    assert_eq!(
        h.rows("SELECT * FROM t ORDER BY id"),
        ["(2, 'b')", "(4, 'd')"]
    );
    assert_eq!(h.head(), CommitId(3));
    assert_eq!(h.primary.last_commit_id().unwrap(), Some(CommitId(3)));
    h.check("after a BUSY commit retried with more writes");
    // BUSY then ROLLBACK: no trace, no CommitId.
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM t")
        .unwrap();
    h.exec("BEGIN; DELETE FROM t");
    assert!(h.conn().execute_batch("COMMIT").is_err());
    h.exec("ROLLBACK");
    reader.execute_batch("COMMIT").unwrap();
    assert_eq!(h.head(), CommitId(3));
    h.exec("INSERT INTO t VALUES (5, 'e')");
    assert_eq!(h.head(), CommitId(4));
    h.check("after a BUSY commit rolled back");
}

/// Two capturing connections in WAL mode interleaving transactions (and a
/// BUSY on the second writer): CommitIds stay contiguous, each
/// connection's last CommitId is its own.
#[test]
fn two_connections_in_wal_mode() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    h.replicate("t");
    let (other, handle) = second_connection(&h);
    other.busy_timeout(std::time::Duration::ZERO).unwrap();
    for i in 0..5 {
        h.exec(&format!("INSERT INTO t VALUES ({}, 'main')", 2 * i));
        other
            .execute_batch(&format!("INSERT INTO t VALUES ({}, 'other')", 2 * i + 1))
            .unwrap();
    }
    assert_eq!(h.primary.last_commit_id().unwrap(), Some(CommitId(10)));
    assert_eq!(handle.last_commit_id().unwrap(), Some(CommitId(11)));
    h.exec("BEGIN IMMEDIATE; UPDATE t SET v = 'x' WHERE id = 0");
    let e = other
        .execute_batch("UPDATE t SET v = 'y' WHERE id = 1")
        .expect_err("busy");
    assert_eq!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy)
    );
    h.exec("COMMIT");
    other
        .execute_batch(
            "BEGIN; UPDATE t SET v = 'y' WHERE id = 1; DELETE FROM t WHERE id = 0; COMMIT",
        )
        .unwrap();
    assert_eq!(h.head(), CommitId(13));
    h.check("after interleaved writers");
}

/// Savepoint edge cases: the capture table joins inside a savepoint and
/// the savepoint is rolled back; nested savepoints released and rolled
/// back in odd orders; re-opened names; ROLLBACK TO after a failed
/// statement; RELEASE of the outermost savepoint as the commit; a
/// transaction whose only replicated write is rolled back.
#[test]
fn savepoint_edge_cases() {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, u INTEGER UNIQUE, v TEXT); CREATE TABLE plain(x)",
    );
    h.replicate("t");
    h.exec("INSERT INTO t VALUES (1, 1, 'a'), (2, 2, 'b')");
    // Joins inside s2 (s1 and s2 opened before any capture).
    h.exec(
        "BEGIN; INSERT INTO plain VALUES (1);
         SAVEPOINT s1; SAVEPOINT s2;
           UPDATE t SET v = 'x' WHERE id = 1;
         ROLLBACK TO s1;
           INSERT INTO t VALUES (3, 3, 'c');
         RELEASE s1;
         COMMIT",
    );
    h.check("after join inside s2 then ROLLBACK TO s1");
    let before = h.head();
    h.exec(
        "BEGIN; SAVEPOINT a; UPDATE t SET v = 'gone' WHERE id = 2; SAVEPOINT b; DELETE FROM t WHERE id = 1;
         RELEASE b; ROLLBACK TO a; RELEASE a; COMMIT",
    );
    assert_eq!(h.head(), before, "only rolled-back writes: no CommitId");
    h.exec(
        "BEGIN;
         UPDATE t SET v = 'p' WHERE id = 1;
         SAVEPOINT a; UPDATE t SET v = 'q' WHERE id = 1;
           SAVEPOINT b; DELETE FROM t WHERE id = 2;
             SAVEPOINT a; INSERT INTO t VALUES (4, 4, 'd');
           ROLLBACK TO b;
           INSERT INTO t VALUES (5, 5, 'e');
         RELEASE a;
         SAVEPOINT c; INSERT OR REPLACE INTO t VALUES (6, 1, 'steals u=1'); ROLLBACK TO c;
         INSERT OR REPLACE INTO t VALUES (7, 3, 'steals u=3');
         ROLLBACK TO c; RELEASE c;
         COMMIT",
    );
    h.check("after nested savepoints in odd orders");
    // A failed statement inside a savepoint, then ROLLBACK TO.
    h.exec("BEGIN; SAVEPOINT s; INSERT INTO t VALUES (8, 8, 'h')");
    let e = h.exec_err("INSERT INTO t VALUES (9, 9, 'i'), (10, 8, 'dup')");
    assert!(e.contains("UNIQUE"), "{e}");
    h.exec("UPDATE t SET v = 'hh' WHERE id = 8; ROLLBACK TO s; INSERT INTO t VALUES (11, 11, 'k'); RELEASE s; COMMIT");
    h.check("after a failed statement and ROLLBACK TO");
    // RELEASE of the outermost savepoint commits; inner rolled back.
    h.exec("SAVEPOINT o; DELETE FROM t WHERE id = 11; SAVEPOINT i; DELETE FROM t; ROLLBACK TO i; RELEASE o");
    h.check("after RELEASE of the outermost savepoint");
    // aerodb_replicate inside a savepoint that is rolled back (no write to
    // the table), then other writes.
    h.exec("CREATE TABLE late(id INTEGER PRIMARY KEY, v); INSERT INTO late VALUES (1, 'x')");
    h.exec("BEGIN; SAVEPOINT r; SELECT aerodb_replicate('late'); ROLLBACK TO r; RELEASE r; INSERT INTO t VALUES (12, 12, 'l'); COMMIT");
    assert!(h
        .rows("SELECT name FROM aerodb_tables WHERE name = 'late'")
        .is_empty());
    h.check("after aerodb_replicate rolled back to a savepoint");
}

/// DEFECT (valid transaction refused at COMMIT on the primary):
/// `TxBuffer::rollback_to` truncates entries but not `TxBuffer::tables`.
/// A table replicated and written inside a savepoint that is rolled back
/// stays in the list of touched tables; at commit `check_tables` verifies
/// it, finds it unregistered (its registration was rolled back too) and
/// fails the COMMIT with "replication of table 'late' is broken".
/// Expected: the COMMIT succeeds with row 12 of t. Actual: COMMIT error.
#[test]
fn defect_rolled_back_replicate_and_write_fails_the_commit() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE late(id INTEGER PRIMARY KEY, v)");
    h.replicate("t");
    h.exec(
        "BEGIN; SAVEPOINT r; SELECT aerodb_replicate('late'); INSERT INTO late VALUES (2, 'y');
         ROLLBACK TO r; RELEASE r; INSERT INTO t VALUES (12, 'l'); COMMIT",
    );
    h.check("after aerodb_replicate and a write rolled back to a savepoint");
}

/// User triggers of every timing and age, TEMP, recursive_triggers=ON,
/// writing the same row, other rows, another replicated table, and REPLACE
/// inside triggers.
#[test]
fn user_triggers_of_every_timing_and_age() {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE u(id INTEGER PRIMARY KEY, tag TEXT UNIQUE, hits INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE log(id INTEGER PRIMARY KEY, what TEXT);
         CREATE TRIGGER old_ai AFTER INSERT ON t BEGIN
           UPDATE t SET n = n + 1 WHERE id = NEW.id;
           INSERT INTO log(what) VALUES ('old_ai ' || NEW.id); END;
         CREATE TRIGGER old_bu BEFORE UPDATE OF v ON t BEGIN
           UPDATE t SET n = n + 100 WHERE id = NEW.id + 1; END;",
    );
    h.replicate("t");
    h.replicate("u");
    h.replicate("log");
    h.exec(
        "CREATE TRIGGER new_au AFTER UPDATE OF v ON t BEGIN
           INSERT OR REPLACE INTO u(id, tag, hits) VALUES (NEW.id, NEW.v, 1);
           DELETE FROM log WHERE id = (SELECT min(id) FROM log); END;
         CREATE TRIGGER new_ad AFTER DELETE ON t BEGIN
           INSERT INTO t(id, v) VALUES (OLD.id + 1000, 'ghost of ' || OLD.v); END;
         CREATE TEMP TRIGGER tmp_ai AFTER INSERT ON main.t BEGIN
           UPDATE t SET v = v || '!' WHERE id = NEW.id; END;
         CREATE TEMP TRIGGER tmp_bd BEFORE DELETE ON main.u BEGIN
           UPDATE t SET n = n + 7 WHERE id = OLD.id; END;",
    );
    h.exec("INSERT INTO t(id, v) VALUES (1, 'a'), (2, 'b'), (3, 'c')");
    h.check("after inserts through every trigger");
    h.exec("UPDATE t SET v = 'same' WHERE id IN (1, 2)");
    h.check("after updates whose triggers REPLACE through a UNIQUE tag");
    h.exec("DELETE FROM t WHERE id = 2; DELETE FROM u WHERE id = 1");
    h.check("after deletes");
    h.exec("PRAGMA recursive_triggers = ON");
    h.exec(
        "CREATE TABLE r(id INTEGER PRIMARY KEY, k INTEGER UNIQUE, depth INTEGER);
         CREATE TABLE r2(id INTEGER PRIMARY KEY, v);",
    );
    h.replicate("r");
    h.replicate("r2");
    h.exec(
        "CREATE TRIGGER r_chain AFTER INSERT ON r WHEN NEW.depth < 5 BEGIN
           INSERT OR REPLACE INTO r VALUES (NEW.id + 1, NEW.k % 3, NEW.depth + 1); END;
         CREATE TRIGGER r_del AFTER DELETE ON r BEGIN INSERT OR REPLACE INTO r2 VALUES (OLD.id, OLD.k); END;",
    );
    h.exec("INSERT INTO r VALUES (1, 10, 0); INSERT OR REPLACE INTO r VALUES (20, 2, 4); REPLACE INTO r2 VALUES (1, 'x')");
    h.check("after recursive triggers with REPLACE");
    h.exec("PRAGMA recursive_triggers = OFF");
}

/// Foreign keys: cascades over several levels (delete, update, set null,
/// set default) and deferred constraints whose COMMIT fails first.
#[test]
fn foreign_keys_cascades_and_deferred_constraints() {
    let mut h = Harness::new();
    h.exec(
        "PRAGMA foreign_keys = ON;
         CREATE TABLE a(id INTEGER PRIMARY KEY, name TEXT UNIQUE);
         CREATE TABLE b(id INTEGER PRIMARY KEY, a_name TEXT REFERENCES a(name) ON UPDATE CASCADE ON DELETE CASCADE);
         CREATE TABLE c(id INTEGER PRIMARY KEY, b_id INTEGER DEFAULT 0 REFERENCES b(id) ON DELETE SET DEFAULT ON UPDATE SET NULL);
         CREATE TABLE d(id INTEGER PRIMARY KEY, a_id INTEGER REFERENCES a(id) DEFERRABLE INITIALLY DEFERRED);",
    );
    for t in ["a", "b", "c", "d"] {
        h.replicate(t);
    }
    h.exec(
        "INSERT INTO a VALUES (1, 'x'), (2, 'y'); INSERT INTO b VALUES (0, NULL), (10, 'x'), (11, 'x'), (12, 'y');
         INSERT INTO c VALUES (100, 10), (101, 11), (102, 12);",
    );
    h.check("after the inserts");
    h.exec("UPDATE a SET name = 'xx' WHERE id = 1");
    h.check("after ON UPDATE CASCADE");
    h.exec("UPDATE b SET id = 13 WHERE id = 12");
    h.check("after ON UPDATE SET NULL");
    h.exec("DELETE FROM a WHERE id = 1");
    h.check("after ON DELETE CASCADE then SET DEFAULT");
    h.exec("INSERT OR REPLACE INTO a VALUES (5, 'y')");
    h.check("after REPLACE deleting a parent (cascade)");
    h.exec("BEGIN; INSERT INTO d VALUES (1, 99)");
    let e = h.exec_err("COMMIT");
    assert!(e.contains("FOREIGN KEY"), "{e}");
    assert!(!h.conn().is_autocommit());
    h.exec("INSERT INTO a VALUES (99, 'z'); COMMIT");
    h.check("after a deferred FK commit that failed then succeeded");
}

/// UPSERT whose DO UPDATE changes the key (also into a REPLACE through a
/// UNIQUE column declared ON CONFLICT REPLACE), and key swaps in one
/// UPDATE.
#[test]
fn upsert_changing_the_key_and_key_swaps() {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE u(id INTEGER PRIMARY KEY, k TEXT UNIQUE ON CONFLICT REPLACE, v TEXT);
         CREATE TABLE w(a TEXT, b INTEGER, v, PRIMARY KEY (a, b)) WITHOUT ROWID;",
    );
    h.replicate("t");
    h.replicate("u");
    h.replicate("w");
    h.exec("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'); INSERT INTO u VALUES (1, 'p', 'a'), (2, 'q', 'b'), (3, 'r', 'c')");
    h.exec("INSERT INTO w VALUES ('x', 1, 1), ('x', 2, 2), ('y', 1, 3)");
    h.check("after the inserts");
    h.exec("INSERT INTO t VALUES (1, 'z') ON CONFLICT(id) DO UPDATE SET id = 100, v = excluded.v");
    h.exec("INSERT INTO u VALUES (2, 'zz', 'z') ON CONFLICT(id) DO UPDATE SET id = 200, k = 's'");
    h.check("after UPSERT changing the key");
    h.exec("UPDATE OR REPLACE t SET id = 5 - id WHERE id IN (2, 3)");
    h.check("after UPDATE OR REPLACE swapping keys 2 and 3");
    h.exec("UPDATE t SET id = -id; UPDATE t SET id = 1000 - id");
    h.check("after moving every key twice");
    h.exec("UPDATE OR REPLACE t SET id = 7");
    h.check("after UPDATE OR REPLACE of every row onto one key");
    h.exec("UPDATE w SET b = b + 10 WHERE a = 'x'");
    let _ = h
        .conn()
        .execute_batch("UPDATE OR REPLACE w SET a = 'y' WHERE b = 1");
    h.exec("UPDATE OR REPLACE w SET b = 3 - b");
    h.check("after key swaps in a WITHOUT ROWID table");
}

/// Collations on keys when the table has another UNIQUE constraint (the
/// BEFORE probes match with the key's collation, so the REPLACE over a
/// case variant that fails without one holds here), and a BINARY key on a
/// NOCASE column.
#[test]
fn collation_keys_with_other_unique_constraints_hold() {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE t(k TEXT COLLATE NOCASE NOT NULL PRIMARY KEY, u INTEGER UNIQUE, v);
         CREATE TABLE b(k TEXT COLLATE NOCASE NOT NULL, v, PRIMARY KEY (k COLLATE BINARY));
         CREATE TABLE r(k TEXT COLLATE RTRIM PRIMARY KEY, u UNIQUE, v) WITHOUT ROWID;",
    );
    for x in ["t", "b", "r"] {
        h.replicate(x);
    }
    h.exec("INSERT INTO t VALUES ('abc', 1, 0); INSERT INTO r VALUES ('a', 1, 0)");
    h.exec(
        "BEGIN;
         UPDATE t SET k = 'ABC' WHERE k = 'abc';
         INSERT OR REPLACE INTO t VALUES ('abc', 2, 2);
         INSERT INTO t VALUES ('x', 5, 0); DELETE FROM t WHERE k = 'X';
         INSERT INTO t VALUES ('X', 6, 1); INSERT OR REPLACE INTO t VALUES ('x', 6, 2);
         UPDATE r SET k = 'a  ' WHERE k = 'a'; REPLACE INTO r VALUES ('a', 3, 3);
         INSERT INTO b VALUES ('abc', 1), ('ABC', 2); REPLACE INTO b VALUES ('abc', 3);
         UPDATE b SET k = 'Abc' WHERE k = 'ABC' COLLATE BINARY;
         COMMIT",
    );
    h.check("after REPLACE over collation variants with UNIQUE probes");
}

/// INTEGER PRIMARY KEY DESC is not the rowid: refused unless NOT NULL;
/// with NOT NULL it replicates. WITHOUT ROWID, partial UNIQUE index,
/// generated columns.
#[test]
fn key_shapes_partial_unique_and_generated_columns() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE d(id INTEGER PRIMARY KEY DESC, v)");
    let e = h.try_replicate("d").expect_err("nullable DESC key refused");
    assert!(e.contains("NULL"), "{e}");
    h.exec(
        "CREATE TABLE dn(id INTEGER NOT NULL PRIMARY KEY DESC, v);
         CREATE TABLE p(id INTEGER PRIMARY KEY, u INTEGER, live INTEGER, v);
         CREATE UNIQUE INDEX p_u ON p(u) WHERE live = 1;
         CREATE TABLE g(id INTEGER PRIMARY KEY, a INTEGER, b TEXT,
           s INTEGER GENERATED ALWAYS AS (a + 1) VIRTUAL, x TEXT AS (upper(b)) VIRTUAL);",
    );
    for t in ["dn", "p", "g"] {
        h.replicate(t);
    }
    h.exec("INSERT INTO dn VALUES (1, 'a'), (2, 'b'); UPDATE dn SET id = 3 WHERE id = 1");
    h.exec(
        "INSERT INTO p VALUES (1, 7, 1, 'live'), (2, 7, 0, 'dead'), (3, 8, 1, 'x');
         INSERT OR REPLACE INTO p VALUES (4, 7, 1, 'steals');
         INSERT OR REPLACE INTO p VALUES (5, 7, 0, 'no conflict');
         UPDATE OR REPLACE p SET u = 8 WHERE id = 4;
         UPDATE p SET live = 1 WHERE id = 5;",
    );
    h.exec("INSERT INTO g(id, a, b) VALUES (1, 1, 'x'), (2, 2, 'y'); UPDATE g SET a = a * 10, b = b || b");
    h.check("after writes to DESC key, partial unique and generated tables");
}

/// A table written before and after `aerodb_replicate` in one transaction;
/// writes rolled back around it.
#[test]
fn table_written_before_and_after_replicate_in_one_transaction() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, u INTEGER UNIQUE, v TEXT); INSERT INTO t VALUES (1, 1, 'a'), (2, 2, 'b')");
    h.exec("BEGIN; UPDATE t SET v = 'before' WHERE id = 1; DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (3, 3, 'c')");
    h.replicate("t");
    h.exec(
        "UPDATE t SET v = 'after' WHERE id = 3; DELETE FROM t WHERE id = 1;
         INSERT OR REPLACE INTO t VALUES (4, 3, 'steals'); INSERT INTO t VALUES (1, 1, 'again'); COMMIT",
    );
    h.check("after writes before and after aerodb_replicate in one transaction");
}

/// ATTACH of another primary: writes to its replicated tables through this
/// connection are refused; writes to an attached non-primary are fine.
#[test]
fn writes_through_attach_to_another_primary_are_refused() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)");
    h.replicate("t");
    let other_path = h.path.with_file_name("other.db");
    {
        let other = Primary::open(&other_path).unwrap();
        other
            .connection()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            .unwrap();
        other.replicate("t").unwrap();
    }
    h.exec(&format!("ATTACH '{}' AS other", other_path.display()));
    let e = h.exec_err("INSERT INTO other.t VALUES (1, 'x')");
    assert!(e.contains("refused") || e.contains("no such table"), "{e}");
    h.exec("BEGIN; INSERT INTO main.t VALUES (1, 'main')");
    let e = h.exec_err("UPDATE other.t SET v = 'y'; INSERT INTO other.t VALUES (2, 'x')");
    assert!(e.contains("refused") || e.contains("no such table"), "{e}");
    h.exec("COMMIT");
    let n: i64 = h
        .conn()
        .query_row("SELECT count(*) FROM other.t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    h.exec("DETACH other");
    h.check("after refused writes through ATTACH");
}

/// Values of every kind in keys and columns: -0.0, NaN from an expression,
/// extreme integers, empty blobs, invalid UTF-8 text, TEXT '1' vs INTEGER 1
/// vs REAL 1.5 keys in a column without affinity; a key whose storage class
/// changes without REPLACE.
#[test]
fn edge_values_in_keys_and_columns() {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE t(k NOT NULL PRIMARY KEY, a, r REAL, i INTEGER, x TEXT, b BLOB);
         CREATE TABLE w(k NOT NULL, v, PRIMARY KEY (k)) WITHOUT ROWID;",
    );
    h.replicate("t");
    h.replicate("w");
    h.exec(
        "INSERT INTO t VALUES
           (1, -0.0, -0.0, -0.0, -0.0, -0.0),
           ('1', 1e999 - 1e999, 1e999, -1e999, CAST(x'ff00fe' AS TEXT), x''),
           (1.5, 9223372036854775807, -9223372036854775808, 9223372036854775807, '', CAST('' AS BLOB)),
           (x'', CAST(x'c3' AS TEXT), 0.1, '0x10', 'ß', zeroblob(0)),
           (CAST(x'ff' AS TEXT), 1, 2, 3, 4, 5),
           (-9223372036854775808, 1, 2, 3, 4, 5);
         INSERT INTO w VALUES (CAST(x'ff' AS TEXT), CAST(x'fe' AS TEXT)), (-0.0, 1), (x'00', 2), ('', 3);",
    );
    h.check("after inserting edge values");
    h.exec(
        "BEGIN;
         UPDATE t SET k = 2.0 WHERE k = 1;
         UPDATE t SET k = 2 WHERE k = 2.0;
         UPDATE t SET k = CAST(x'fe' AS TEXT) WHERE k = CAST(x'ff' AS TEXT);
         UPDATE w SET v = CAST(x'80' AS TEXT) WHERE k = 0;
         UPDATE w SET k = 0.0 WHERE k = 0;
         DELETE FROM t WHERE k = '1';
         COMMIT",
    );
    h.check("after changing key storage classes");
}

/// DEFECT (silent divergence): `UPDATE ... SET rowid = ...` (or `_rowid_`,
/// `oid`) on a table whose INTEGER PRIMARY KEY is the rowid and that has
/// another UNIQUE constraint. The probe trigger is `BEFORE UPDATE OF "id",
/// "u"`, and SQLite matches UPDATE OF against the names in SET: `rowid` is
/// not `id`, so the probe does not fire. The REPLACE over existing key 2
/// is not noted, key 2 is taken as new (Existence::New: no Delete), and its
/// delete later in the transaction is not replicated.
/// Expected: replica only (3, 3, 'c'). Actual: the replica keeps (2, 2, 'b').
#[test]
fn defect_update_of_the_rowid_by_its_alias_name_skips_the_probe() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, u INTEGER UNIQUE, v TEXT)");
    h.replicate("t");
    h.exec("INSERT INTO t VALUES (1, 1, 'a'), (2, 2, 'b'), (3, 3, 'c')");
    h.check("after the inserts");
    h.exec(
        "BEGIN; UPDATE OR REPLACE t SET rowid = 2 WHERE id = 1; DELETE FROM t WHERE id = 2; COMMIT",
    );
    assert_eq!(h.rows("SELECT * FROM t"), ["(3, 3, 'c')"]);
    h.check("after UPDATE OR REPLACE SET rowid onto an existing key, then its delete");
    h.exec("BEGIN; UPDATE OR REPLACE t SET _rowid_ = 5 WHERE id = 3; INSERT INTO t VALUES (6, 6, 'f'); UPDATE OR REPLACE t SET oid = 5 WHERE id = 6; DELETE FROM t WHERE id = 5; COMMIT");
    h.check("after the same through _rowid_ and oid");
}

/// Held: INSERT OR REPLACE through a UNIQUE generated column (NEW.g is
/// computed when the BEFORE INSERT probe runs).
#[test]
fn probe_insert_or_replace_through_a_unique_generated_column() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, g INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL UNIQUE)");
    h.replicate("t");
    h.exec("INSERT INTO t(id, a) VALUES (1, 1), (2, 5)");
    h.exec("BEGIN; INSERT OR REPLACE INTO t(id, a) VALUES (3, 5); UPDATE t SET a = 7 WHERE id = 3; COMMIT");
    assert_eq!(
        h.rows("SELECT id, a FROM t ORDER BY id"),
        ["(1, 1)", "(3, 7)"]
    );
    h.check("after INSERT OR REPLACE through a UNIQUE generated column");
}

/// Fixed: with `journal_mode=OFF` SQLite cannot undo a failed statement,
/// so a row whose capture failed would stay: a primary in that mode refuses
/// writes to replicated tables (checked when capture sets up on the
/// connection and after schema changes).
#[test]
fn journal_mode_off_refuses_writes_to_replicated_tables() {
    let mut h = Harness::with_journal("OFF");
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v)");
    let e = match h.try_replicate("t") {
        Err(e) => e,
        Ok(()) => h.exec_err("INSERT INTO t VALUES (1, 'a')"),
    };
    assert!(e.contains("journal_mode is OFF"), "{e}");
    assert!(h.rows("SELECT id FROM t").is_empty());
}

/// Known gap: switching an existing capture connection to
/// `journal_mode=OFF` later is not noticed (watching it costs a statement
/// per commit); a statement whose capture fails then keeps its row.
#[test]
#[ignore = "known defect (configuration): a later switch to journal_mode=OFF is not noticed"]
fn defect_a_later_switch_to_journal_mode_off_is_not_noticed() {
    let mut h = Harness::with_journal("DELETE");
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v)");
    h.replicate("t");
    h.exec("INSERT INTO t VALUES (1, 'a')");
    h.check("after the insert");
    h.exec("PRAGMA journal_mode = OFF");
    let e = h.exec_err("INSERT INTO t VALUES (2, 'b')");
    assert!(e.contains("journal_mode is OFF"), "{e}");
}

/// Held: FAIL semantics reached without any user trigger? SQLite runs
/// foreign-key actions before the parent's AFTER triggers; had a failing
/// action kept FAIL semantics (statement `OR FAIL`, or a child constraint
/// declared `ON CONFLICT FAIL`), the parent's change would stay
/// uncaptured. It does not: FK actions abort the statement.
#[test]
fn probe_fk_action_failing_with_fail_semantics() {
    let mut h = Harness::new();
    h.exec(
        "PRAGMA foreign_keys = ON;
         CREATE TABLE p(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE c(id INTEGER PRIMARY KEY,
           pid INTEGER NOT NULL ON CONFLICT FAIL REFERENCES p(id) ON UPDATE CASCADE ON DELETE SET NULL,
           CHECK (pid < 100));",
    );
    h.replicate("p");
    h.replicate("c");
    h.exec(
        "INSERT INTO p VALUES (1, 'a'), (2, 'b'), (3, 'c'); INSERT INTO c VALUES (10, 1), (20, 3)",
    );
    h.check("after the inserts");
    let e = h
        .conn()
        .execute_batch("UPDATE OR FAIL p SET id = id + 100 WHERE id IN (2, 1)");
    eprintln!(
        "UPDATE OR FAIL: {e:?}; p = {:?}; c = {:?}",
        h.rows("SELECT * FROM p ORDER BY id"),
        h.rows("SELECT * FROM c ORDER BY id")
    );
    h.check("after UPDATE OR FAIL whose cascade failed a CHECK");
    let e = h.conn().execute_batch("DELETE FROM p WHERE id = 3");
    eprintln!(
        "DELETE: {e:?}; p = {:?}; c = {:?}",
        h.rows("SELECT * FROM p ORDER BY id"),
        h.rows("SELECT * FROM c ORDER BY id")
    );
    h.check("after a DELETE whose SET NULL failed NOT NULL ON CONFLICT FAIL");
}

/// Held: `aerodb_replicate` called from statements that also read or
/// write the table, several times in one statement: no crash, and either
/// refused ("cannot open savepoint - SQL statements in progress") or
/// exact.
#[test]
fn probe_replicate_from_odd_statements() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a'), (2, 'b'); CREATE TABLE u(id INTEGER PRIMARY KEY, v)");
    let r = h
        .conn()
        .execute_batch("SELECT aerodb_replicate('t') FROM t");
    eprintln!("replicate per row of t: {r:?}");
    if r.is_ok() {
        h.tables.push("t".into());
    }
    h.check("after SELECT aerodb_replicate('t') FROM t");
    let r = h
        .conn()
        .execute_batch("INSERT INTO u SELECT 100 + id, aerodb_replicate('u') FROM t");
    eprintln!("replicate inside INSERT INTO u: {r:?}");
    if h.rows("SELECT name FROM aerodb_tables WHERE name = 'u'")
        .len()
        == 1
    {
        h.tables.push("u".into());
    }
    h.check("after INSERT INTO u SELECT aerodb_replicate('u')");
    let r = h
        .conn()
        .execute_batch("UPDATE t SET v = aerodb_replicate('t') WHERE id = 1");
    eprintln!("replicate inside UPDATE t: {r:?}");
    h.check("after UPDATE t SET v = aerodb_replicate('t')");
    h.exec("INSERT INTO t VALUES (3, 'c'); INSERT INTO u VALUES (3, 'c')");
    h.check("after later writes");
}
