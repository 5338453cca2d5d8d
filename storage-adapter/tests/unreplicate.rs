//! `aerodb_unreplicate(table)` (issue 10 item 3): capture of the table
//! stops at a WAL change of its own; every replica stops maintaining it at
//! that commit and keeps its rows, as they stood there, in a plain table
//! it no longer guards. The other tables go on replicating exactly.

#![allow(dead_code)]

mod differential;

use differential::*;

/// `t` and `u` replicated, with rows; `t` then unreplicated.
fn unreplicated_t() -> Harness {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE u(k TEXT PRIMARY KEY NOT NULL, n REAL) WITHOUT ROWID;
         INSERT INTO t VALUES (1, 'a'), (2, 'b');
         INSERT INTO u VALUES ('x', 1.5);",
    );
    h.replicate("t");
    h.replicate("u");
    h.exec("UPDATE t SET v = 'b2' WHERE id = 2; INSERT INTO u VALUES ('y', 2)");
    h.check("before unreplicate");
    let before = h.head();
    let at: i64 = h
        .conn()
        .query_row("SELECT aerodb_unreplicate('T')", [], |r| r.get(0))
        .expect("aerodb_unreplicate");
    assert_eq!(at as u64, before.0 + 1, "the CommitId of its change");
    assert_eq!(h.head().0, before.0 + 1);
    h.tables.retain(|t| t != "t");
    h
}

#[test]
fn the_replica_keeps_an_unreplicated_table_as_a_plain_writable_table() {
    let mut h = unreplicated_t();
    // Writes after unreplicate: not captured, no CommitId for t's alone.
    let head = h.head();
    h.exec("INSERT INTO t VALUES (3, 'c'); DELETE FROM t WHERE id = 1");
    assert_eq!(
        h.head(),
        head,
        "writes to an unreplicated table get no CommitId"
    );
    h.exec("INSERT INTO u VALUES ('z', NULL)");
    h.check("after writes to both tables");
    let r = h.replica.connection();
    assert_eq!(
        rows_of(r, "SELECT id, quote(v) FROM t ORDER BY id"),
        rows_of(r, "SELECT * FROM (VALUES (1, '''a'''), (2, '''b2'''))"),
        "the replica keeps t as it stood at the Unreplicate change"
    );
    let registered: i64 = r
        .query_row(
            "SELECT count(*) FROM aerodb_replica_tables WHERE name = 't'",
            [],
            |x| x.get(0),
        )
        .unwrap();
    assert_eq!(registered, 0);
    // A plain table now: any connection may write it, without the extension.
    let plain = rusqlite::Connection::open(r.path().unwrap()).unwrap();
    plain
        .execute_batch("INSERT INTO t VALUES (9, 'mine'); UPDATE t SET v = 'x' WHERE id = 1")
        .expect("an unreplicated table is writable on the replica");
    // u is still guarded.
    let e = plain
        .execute_batch("INSERT INTO u VALUES ('w', 0)")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("aerodb_replica_table_written_only_by_replication"),
        "{e}"
    );
    drop(plain);
    h.exec("UPDATE u SET n = 7 WHERE k = 'x'");
    h.check("after the user wrote the unreplicated table on the replica");
    // The primary's registry and triggers are gone.
    assert_eq!(
        h.rows("SELECT count(*) FROM aerodb_tables WHERE name = 't' COLLATE NOCASE"),
        vec!["(0)".to_string()]
    );
    assert_eq!(
        h.rows("SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 't'"),
        vec!["(0)".to_string()]
    );
}

#[test]
fn unreplicate_refuses_what_it_cannot_do_and_changes_nothing() {
    let mut h = unreplicated_t();
    let head = h.head();
    let e = h.exec_err("SELECT aerodb_unreplicate('t')");
    assert!(
        e.contains("aerodb_unreplicate('t'): it is not replicated"),
        "{e}"
    );
    let e = h.exec_err("SELECT aerodb_unreplicate('nope')");
    assert!(e.contains("not replicated"), "{e}");
    let e = h.exec_err("SELECT aerodb_unreplicate(1)");
    assert!(e.contains("aerodb_unreplicate: argument 1"), "{e}");
    // A transaction that already wrote the table: refused, the writes and
    // the registration stay, and the transaction commits them captured.
    h.exec("BEGIN; INSERT INTO u VALUES ('q', 3)");
    let e = h.exec_err("SELECT aerodb_unreplicate('u')");
    assert!(e.contains("this transaction already wrote it"), "{e}");
    h.exec("COMMIT");
    assert_eq!(h.head().0, head.0 + 1);
    h.check("after the refused unreplicate");
    // Without the extension: no such function.
    let plain = rusqlite::Connection::open(&h.path).unwrap();
    let e = plain
        .execute_batch("SELECT aerodb_unreplicate('u')")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no such function"), "{e}");
}

#[test]
fn unreplicate_rolls_back_with_its_transaction() {
    let mut h = Harness::new();
    h.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 1)");
    h.replicate("t");
    let head = h.head();
    h.exec("BEGIN; SELECT aerodb_unreplicate('t'); ROLLBACK");
    assert_eq!(h.head(), head);
    h.exec("SAVEPOINT s; SELECT aerodb_unreplicate('t'); ROLLBACK TO s; RELEASE s");
    assert_eq!(h.head(), head, "ROLLBACK TO leaves no trace");
    h.exec("INSERT INTO t VALUES (2, 2)");
    h.check("t is still replicated");
    // In one transaction with writes to other tables and a new table.
    h.exec(
        "CREATE TABLE n(id INTEGER PRIMARY KEY, w);
         BEGIN;
         SELECT aerodb_unreplicate('t');
         INSERT INTO n VALUES (1, 'new');
         SELECT aerodb_replicate('n');
         INSERT INTO n VALUES (2, 'after');
         INSERT INTO t VALUES (3, 3);
         COMMIT;",
    );
    h.tables = vec!["n".into()];
    h.check("after unreplicate and replicate in one transaction");
    let r = h.replica.connection();
    assert_eq!(
        rows_of(r, "SELECT count(*) FROM t"),
        vec!["(2)".to_string()],
        "t kept as it stood at the change"
    );
}

#[test]
fn replicating_a_table_again_after_unreplicate_is_refused_on_the_replica_that_kept_it() {
    // The replica's copy became the user's: never overwritten. The next
    // schema record of that table stops the replica with the reason.
    let mut h = unreplicated_t();
    h.exec("SELECT aerodb_replicate('t')");
    let e = h.sync().unwrap_err();
    assert!(
        e.contains("already holds a table 't' that replication did not create")
            && e.contains("aerodb_unreplicate"),
        "{e}"
    );
}
