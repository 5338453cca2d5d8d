//! DDL on a replica behind replication's back (issue 10 item 5: SQLite
//! has no trigger that could refuse it): a replicated table dropped,
//! altered or stripped of its write guard, from a connection without the
//! extension. The read gate refuses reads as DIVERGED, naming the table,
//! from the moment the schema changes; the Applier refuses to apply over
//! it and the block is recorded; verify names it. DDL that leaves
//! replication's tables as they were (an index, a view, a table of one's
//! own, VACUUM) changes nothing.

mod serve_common;
mod verify_common;

use replication::read_gate::DecisionCode;
use replication::runtime::Config;
use rusqlite::Connection;
use std::path::Path;
use storage_adapter::primary::Primary;
use storage_adapter::runtime::{read_gate_in, Replica};
use verify_common::*;

const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
     CREATE TABLE k(name TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, n) WITHOUT ROWID;
     INSERT INTO t VALUES (1, 'one'), (2, 2.0);
     INSERT INTO k VALUES ('a', 1.5);";

fn gate(r: &Path) -> (DecisionCode, String) {
    let d = read_gate_in(&Connection::open(r).unwrap(), None);
    (d.code, d.explanation)
}

fn status_exit(r: &Path) -> i32 {
    std::process::Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .arg("status")
        .arg(r)
        .output()
        .unwrap()
        .status
        .code()
        .unwrap_or(-1)
}

/// A replica caught up and stopped, then `ddl` run on it by a plain
/// connection (no extension, as any SQLite tool would).
fn tampered(
    ddl: &str,
) -> (
    tempfile::TempDir,
    Primary,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t", "k"]);
    assert_eq!(gate(&r).0, DecisionCode::Allowed);
    Connection::open(&r).unwrap().execute_batch(ddl).unwrap();
    (dir, primary, p, r)
}

/// The replica refuses reads naming `table`, blocks at the next commit
/// with the reason recorded (kept across a restart), and verify names it.
fn refused_everywhere(primary: &Primary, p: &Path, r: &Path, table: &str, what: &str) {
    let (code, why) = gate(r);
    assert_eq!(code, DecisionCode::Diverged, "{why}");
    assert!(
        why.contains(&format!(
            "replica table '{table}' was changed behind replication's back: {what}"
        )),
        "{why}"
    );
    assert_eq!(status_exit(r), 2);
    // The runtime refuses to apply over it, and records the divergence.
    primary
        .connection()
        .execute("INSERT INTO t VALUES (3, 'three')", [])
        .unwrap();
    let replica = Replica::start_from_file(r, p, Config::default()).unwrap();
    let view = replica
        .wait_until(serve_common::deadline(), |v| {
            replication::runtime::is_blocked(&v.global)
        })
        .unwrap_or_else(|v| panic!("not blocked: {v:?}"));
    let blocked = view.global.to_string();
    assert!(
        blocked.contains("diverged") || blocked.contains("DIVERGED"),
        "{blocked}"
    );
    assert!(blocked.contains(&format!("'{table}'")), "{blocked}");
    replica.stop();
    let recorded: String = Connection::open(r)
        .unwrap()
        .query_row(
            "SELECT blocking_code || ': ' || blocking_reason FROM aerodb_replica_state",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(recorded.starts_with("DIVERGED: "), "{recorded}");
    assert!(recorded.contains("behind replication's back"), "{recorded}");
    assert_eq!(gate(r).0, DecisionCode::Diverged);
    // Verify names the table (exit 1).
    let (exit, out, err) = cli(p, r);
    assert_eq!(exit, 1, "{out}{err}");
    assert!(out.contains(&format!("table '{table}'")), "{out}");
}

#[test]
fn a_dropped_write_guard_and_the_rows_written_past_it_are_refused() {
    let (_dir, primary, p, r) = tampered(
        "DROP TRIGGER aerodb_replica_guard_insert_t; INSERT INTO t VALUES (50, 'not the primary''s');",
    );
    refused_everywhere(
        &primary,
        &p,
        &r,
        "t",
        "its write guard (trigger aerodb_replica_guard_insert_t) was dropped",
    );
}

#[test]
fn a_replicated_table_dropped_and_made_again_is_refused() {
    let (_dir, primary, p, r) = tampered(
        "DROP TABLE t; CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'mine');",
    );
    refused_everywhere(
        &primary,
        &p,
        &r,
        "t",
        "its write guard (trigger aerodb_replica_guard_insert_t) was dropped",
    );
}

#[test]
fn a_replicated_table_altered_on_the_replica_is_refused() {
    let (_dir, primary, p, r) = tampered("ALTER TABLE k ADD COLUMN extra");
    refused_everywhere(&primary, &p, &r, "k", "it was altered: it is `CREATE TABLE k(name TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, n, extra) WITHOUT ROWID`, replication made it `CREATE TABLE k(name TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, n) WITHOUT ROWID`");
}

#[test]
fn a_replicated_table_dropped_on_the_replica_is_refused() {
    let (_dir, primary, p, r) = tampered("DROP TABLE k");
    refused_everywhere(&primary, &p, &r, "k", "it was dropped");
}

#[test]
fn a_state_store_guard_dropped_is_refused() {
    let (_dir, _primary, _p, r) =
        tampered("DROP TRIGGER aerodb_replica_guard_update_aerodb_replica_position");
    let (code, why) = gate(&r);
    assert_eq!(code, DecisionCode::Diverged, "{why}");
    assert!(why.contains("the state store's write guard (trigger aerodb_replica_guard_update_aerodb_replica_position) was dropped"), "{why}");
}

#[test]
fn ddl_that_leaves_replications_tables_as_they_were_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t", "k"]);
    let replica = Replica::start_from_file(&r, &p, Config::default()).unwrap();
    Connection::open(&r)
        .unwrap()
        .execute_batch(
            "CREATE INDEX t_v ON t(v); CREATE VIEW tv AS SELECT v FROM t;
             CREATE TABLE mine(x); INSERT INTO mine VALUES (1);
             CREATE TRIGGER mine_t AFTER INSERT ON mine BEGIN SELECT 1; END;",
        )
        .unwrap();
    assert_eq!(gate(&r).0, DecisionCode::Allowed, "{}", gate(&r).1);
    for n in 10..20 {
        primary
            .connection()
            .execute("INSERT INTO t VALUES (?1, 'x')", [n])
            .unwrap();
    }
    replica
        .wait_for(primary.head().unwrap(), serve_common::deadline())
        .unwrap();
    replica.stop();
    Connection::open(&r)
        .unwrap()
        .execute_batch("VACUUM")
        .unwrap();
    assert_eq!(gate(&r).0, DecisionCode::Allowed, "{}", gate(&r).1);
    assert_equal(&p, &r, "after harmless DDL");
    // A running replica that meets tampering blocks at its next commit.
    let replica = Replica::start_from_file(&r, &p, Config::default()).unwrap();
    replica
        .wait_for(primary.head().unwrap(), serve_common::deadline())
        .unwrap();
    // The runtime's own explanation remembers a clean schema check: DDL
    // of one's own is checked once, and a later tampering still is.
    Connection::open(&r)
        .unwrap()
        .execute_batch("CREATE INDEX k_n ON k(n)")
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            replica.explain_read(None).unwrap().code,
            DecisionCode::Allowed
        );
    }
    Connection::open(&r)
        .unwrap()
        .execute_batch("DROP TRIGGER aerodb_replica_guard_delete_k; DELETE FROM k;")
        .unwrap();
    assert_eq!(gate(&r).0, DecisionCode::Diverged);
    assert_eq!(
        replica.explain_read(None).unwrap().code,
        DecisionCode::Diverged
    );
    primary
        .connection()
        .execute("UPDATE t SET v = 'y' WHERE id = 10", [])
        .unwrap();
    let view = replica
        .wait_until(serve_common::deadline(), |v| {
            replication::runtime::is_blocked(&v.global)
        })
        .unwrap_or_else(|v| panic!("not blocked: {v:?}"));
    assert!(view.global.to_string().contains("'k'"), "{}", view.global);
    replica.stop();
}
