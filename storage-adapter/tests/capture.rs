//! Primary capture, proven on real files.
//!
//! Every way SQLite can change a row of a replicated table must land in the
//! WAL exactly once, in statement order, under one CommitId per committed
//! transaction, with CommitIds contiguous from 1 (DESIGN 3, 4; rule P1); a
//! connection without the capture functions must fail rather than write
//! uncaptured data (DESIGN 4); and the SQL surface of DESIGN 6 behaves as
//! documented.
//!
//! Each test writes a primary in a tempdir, reads its WAL the way a replica
//! does (`PrimaryWalReader::segment` -> `Segment::decode` -> `validate`),
//! asserts the exact changes, and applies them with `ReplicaDb::apply` to
//! compare the replica's tables with the primary's.

use replication::wal::{validate, ChainPosition, Change, CommitId, Record, Segment, Value};
use rstest::rstest;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{params, Connection};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use storage_adapter::capture::{self, CaptureError, CaptureHandle};
use storage_adapter::primary::{Primary, PrimaryError, PrimaryWalReader};
use storage_adapter::replica::ReplicaDb;
use storage_adapter::WalReadError;
use tempfile::TempDir;

// ------------------------------------------------------------------ helpers

/// The table most tests use.
const T: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)";

fn int(v: i64) -> Value {
    Value::Integer(v)
}

fn text(s: &str) -> Value {
    Value::Text(s.as_bytes().to_vec())
}

fn real(r: f64) -> Value {
    Value::Real(r)
}

fn insert(table: &str, values: Vec<Value>) -> Change {
    Change::Insert {
        table: table.into(),
        values,
    }
}

fn update(table: &str, key: Vec<Value>, values: Vec<Value>) -> Change {
    Change::Update {
        table: table.into(),
        key,
        values,
    }
}

fn discard(table: &str, key: Vec<Value>) -> Change {
    Change::Discard {
        table: table.into(),
        key,
    }
}

fn delete(table: &str, key: Vec<Value>) -> Change {
    Change::Delete {
        table: table.into(),
        key,
    }
}

fn sql_int(v: i64) -> SqlValue {
    SqlValue::Integer(v)
}

fn sql_text(s: &str) -> SqlValue {
    SqlValue::Text(s.into())
}

/// Every record of the primary at `path`, read, decoded and validated from
/// genesis exactly as a replica would; asserts CommitIds are 1, 2, 3, ...
fn wal_records(path: &Path) -> Vec<Record> {
    let reader = PrimaryWalReader::open(path).expect("open the primary's WAL read-only");
    let Some(bytes) = reader
        .segment(CommitId(1), usize::MAX)
        .expect("read the primary's WAL")
    else {
        return Vec::new();
    };
    let segment = Segment::decode(&bytes).expect("the primary's segment decodes");
    let validated = validate(segment, &ChainPosition::genesis(reader.generation()))
        .expect("the primary's WAL continues its genesis");
    let records = validated.segment().records.clone();
    let ids: Vec<u64> = records.iter().map(|r| r.commit_id.0).collect();
    let contiguous: Vec<u64> = (1..=records.len() as u64).collect();
    assert_eq!(ids, contiguous, "CommitIds are contiguous from 1");
    records
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `SELECT * FROM table ORDER BY order_by`. TEXT that is not UTF-8 is shown
/// as its hex bytes (rusqlite's `Value` only holds UTF-8 text).
fn dump(conn: &Connection, table: &str, order_by: &str) -> Vec<Vec<SqlValue>> {
    let sql = format!("SELECT * FROM {} ORDER BY {order_by}", quote(table));
    let mut stmt = conn
        .prepare(&sql)
        .unwrap_or_else(|e| panic!("prepare `{sql}`: {e}"));
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    ValueRef::Text(t) => match std::str::from_utf8(t) {
                        Ok(s) => SqlValue::Text(s.into()),
                        Err(_) => SqlValue::Text(format!("<not UTF-8: {t:02x?}>")),
                    },
                    other => other.into(),
                })
            })
            .collect()
    })
    .and_then(|rows| rows.collect())
    .unwrap_or_else(|e| panic!("run `{sql}`: {e}"))
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("`{sql}`: {e}"))
}

/// The error message of a statement that must fail.
fn sql_error(conn: &Connection, sql: &str) -> String {
    match conn.query_row(sql, [], |r| r.get::<_, SqlValue>(0)) {
        Ok(v) => panic!("`{sql}` returned {v:?}, expected an error"),
        Err(e) => e.to_string(),
    }
}

/// The error message of a batch that must fail.
fn exec_error(conn: &Connection, sql: &str) -> String {
    match conn.execute_batch(sql) {
        Ok(()) => panic!("`{sql}` succeeded, expected an error"),
        Err(e) => e.to_string(),
    }
}

/// The CaptureError of a refused `replicate`.
fn capture_error(result: Result<CommitId, PrimaryError>) -> CaptureError {
    match result {
        Ok(c) => panic!("replicate succeeded with commit {c}, expected a refusal"),
        Err(PrimaryError::Capture(e)) => e,
        Err(other) => panic!("expected a CaptureError, got {other}"),
    }
}

/// The token of `primary`, checked to be the same through the Rust API and
/// `SELECT aerodb_last_commit_id()`.
fn token(primary: &Primary) -> Option<u64> {
    let rust = primary
        .last_commit_id()
        .expect("Primary::last_commit_id")
        .map(|c| c.0);
    let sql: Option<i64> = primary
        .connection()
        .query_row("SELECT aerodb_last_commit_id()", [], |r| r.get(0))
        .expect("SELECT aerodb_last_commit_id()");
    assert_eq!(sql.map(|v| v as u64), rust, "SQL and Rust tokens agree");
    rust
}

/// The same for a connection that called `capture::register`.
fn handle_token(conn: &Connection, handle: &CaptureHandle) -> Option<u64> {
    let rust = handle
        .last_commit_id()
        .expect("CaptureHandle::last_commit_id")
        .map(|c| c.0);
    let sql: Option<i64> = conn
        .query_row("SELECT aerodb_last_commit_id()", [], |r| r.get(0))
        .expect("SELECT aerodb_last_commit_id()");
    assert_eq!(sql.map(|v| v as u64), rust, "SQL and Rust tokens agree");
    rust
}

/// A primary in a tempdir with some tables replicated, and a replica that
/// follows it on demand.
struct Fixture {
    dir: TempDir,
    path: PathBuf,
    primary: Primary,
    replica: RefCell<ReplicaDb>,
}

impl Fixture {
    /// Runs `schema` on a new primary and replicates `tables` in order: their
    /// schema records are commits 1..=tables.len().
    fn new(schema: &str, tables: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().expect("create a tempdir");
        let path = dir.path().join("primary.db");
        let primary = Primary::open(&path).expect("open the primary");
        primary
            .connection()
            .execute_batch(schema)
            .unwrap_or_else(|e| panic!("create the schema `{schema}`: {e}"));
        for (i, table) in tables.iter().enumerate() {
            let commit = primary
                .replicate(table)
                .unwrap_or_else(|e| panic!("replicate {table}: {e}"));
            assert_eq!(commit, CommitId(i as u64 + 1), "schema record of {table}");
        }
        let replica = ReplicaDb::open(dir.path().join("replica.db")).expect("open the replica");
        replica
            .init(primary.generation())
            .expect("bind the replica to the primary's generation");
        Fixture {
            dir,
            path,
            primary,
            replica: RefCell::new(replica),
        }
    }

    fn conn(&self) -> &Connection {
        self.primary.connection()
    }

    fn exec(&self, sql: &str) {
        self.conn()
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("`{sql}` failed: {e}"));
    }

    fn exec_error(&self, sql: &str) -> String {
        exec_error(self.conn(), sql)
    }

    fn head(&self) -> CommitId {
        self.primary.head().expect("Primary::head")
    }

    fn records(&self) -> Vec<Record> {
        wal_records(&self.path)
    }

    /// The changes of one commit.
    fn changes(&self, commit: u64) -> Vec<Change> {
        self.records()
            .into_iter()
            .find(|r| r.commit_id == CommitId(commit))
            .unwrap_or_else(|| panic!("no record for commit {commit}"))
            .changes
    }

    /// Changes in the WAL's committed records (the open transaction's
    /// record is written by its commit).
    fn change_rows(&self) -> i64 {
        count(
            self.conn(),
            "SELECT coalesce(sum(change_count), 0) FROM aerodb_commits",
        )
    }

    fn rows(&self, table: &str) -> Vec<Vec<SqlValue>> {
        dump(self.conn(), table, "1")
    }

    /// Applies the primary's new WAL to the replica (one segment, one
    /// transaction) and asserts every replicated table holds the same rows on
    /// both sides.
    fn assert_replica_matches(&self) {
        let reader = PrimaryWalReader::open(&self.path).expect("open the primary's WAL");
        let mut replica = self.replica.borrow_mut();
        let position = replica
            .position()
            .expect("read the replica position")
            .expect("the replica is initialized");
        if let Some(bytes) = reader
            .segment(position.commit_id.next(), usize::MAX)
            .expect("read the primary's WAL")
        {
            let segment = Segment::decode(&bytes).expect("the segment decodes");
            let segment = validate(segment, &position).expect("the segment continues the replica");
            replica
                .apply(&segment)
                .expect("the replica applies the segment");
        }
        let applied = replica
            .position()
            .expect("read the replica position")
            .expect("the replica is initialized");
        assert_eq!(
            applied.commit_id,
            reader.head().expect("PrimaryWalReader::head"),
            "the replica caught up with the primary"
        );
        let mut stmt = self
            .conn()
            .prepare("SELECT name, key_columns FROM aerodb_tables ORDER BY name")
            .expect("list replicated tables");
        let tables: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .expect("list replicated tables");
        for (table, keys) in tables {
            let order_by: Vec<String> = keys.split(',').map(quote).collect();
            let order_by = order_by.join(", ");
            assert_eq!(
                dump(replica.connection(), &table, &order_by),
                dump(self.conn(), &table, &order_by),
                "table {table} on the replica equals the primary at commit {}",
                applied.commit_id
            );
        }
    }
}

// -------------------------------------------------------------- row changes

/// replicate() writes one schema record holding the CREATE TABLE statement as
/// sqlite_schema stores it, and the replica creates the table from it.
#[test]
fn replicate_records_the_create_table_statement_as_a_schema_record() {
    let f = Fixture::new(
        "CREATE TABLE IF NOT EXISTS main.t(id INTEGER PRIMARY KEY, v TEXT)",
        &["t"],
    );
    assert_eq!(
        f.changes(1),
        vec![Change::Schema {
            table: "t".into(),
            sql: "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)".into(),
            indexes: vec![],
        }]
    );
    let registered: (String, i64, String) = f
        .conn()
        .query_row(
            "SELECT name, schema_commit_id, key_columns FROM aerodb_tables",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("read aerodb_tables");
    assert_eq!(registered, ("t".into(), 1, "id".into()));
    f.assert_replica_matches();
}

/// An INSERT is captured as one Insert of every stored column in table
/// order, whatever the column list order, with auto-assigned keys.
#[test]
fn insert_is_captured_with_every_column_in_table_order() {
    let f = Fixture::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL)",
        &["t"],
    );
    f.exec("INSERT INTO t VALUES (1, 'ada', 9.5)");
    f.exec("INSERT INTO t(score, name, id) VALUES (1.25, 'bob', 7)");
    f.exec("INSERT INTO t(name) VALUES ('cy')");
    assert_eq!(
        f.changes(2),
        vec![insert("t", vec![int(1), text("ada"), real(9.5)])]
    );
    assert_eq!(
        f.changes(3),
        vec![insert("t", vec![int(7), text("bob"), real(1.25)])]
    );
    // The rowid SQLite assigned (max + 1) is what the trigger sees.
    assert_eq!(
        f.changes(4),
        vec![insert("t", vec![int(8), text("cy"), Value::Null])]
    );
    assert_eq!(f.head(), CommitId(4));
    f.assert_replica_matches();
}

/// A multi-row INSERT is one commit with one Insert per row, in VALUES order.
#[test]
fn multi_row_insert_is_one_commit_with_rows_in_values_order() {
    let f = Fixture::new(T, &["t"]);
    f.exec("INSERT INTO t VALUES (3, 'c'), (1, 'a'), (2, 'b')");
    assert_eq!(
        f.changes(2),
        vec![
            insert("t", vec![int(3), text("c")]),
            insert("t", vec![int(1), text("a")]),
            insert("t", vec![int(2), text("b")]),
        ]
    );
    assert_eq!(f.head(), CommitId(2));
    f.assert_replica_matches();
}

/// An UPDATE of non-key columns is captured as Update(old key, new row), one
/// per updated row; an UPDATE matching nothing takes no CommitId.
#[test]
fn update_of_non_key_columns_is_captured_with_the_key_and_the_new_row() {
    let f = Fixture::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL)",
        &["t"],
    );
    f.exec("INSERT INTO t VALUES (1, 'ada', 1.0), (2, 'bob', 2.0)");
    f.exec("UPDATE t SET score = score * 10 WHERE id = 2");
    assert_eq!(
        f.changes(3),
        vec![update(
            "t",
            vec![int(2)],
            vec![int(2), text("bob"), real(20.0)]
        )]
    );
    f.exec("UPDATE t SET name = upper(name)");
    assert_eq!(
        f.changes(4),
        vec![
            update("t", vec![int(1)], vec![int(1), text("ADA"), real(1.0)]),
            update("t", vec![int(2)], vec![int(2), text("BOB"), real(20.0)]),
        ]
    );
    f.exec("UPDATE t SET name = 'nobody' WHERE id = 99");
    assert_eq!(
        f.head(),
        CommitId(4),
        "an UPDATE of no row takes no CommitId"
    );
    f.assert_replica_matches();
}

/// An UPDATE that changes the primary key carries the OLD key, so the
/// replica finds the row it moves.
#[test]
fn update_changing_the_primary_key_carries_the_old_key() {
    let f = Fixture::new(T, &["t"]);
    f.exec("INSERT INTO t VALUES (1, 'ada'), (2, 'bob')");
    f.exec("UPDATE t SET id = 10 WHERE id = 1");
    // Format 2 records carry final rows: the old key goes, the row at its
    // new key comes (deletes first).
    assert_eq!(
        f.changes(3),
        vec![
            delete("t", vec![int(1)]),
            insert("t", vec![int(10), text("ada")])
        ]
    );
    f.exec("UPDATE t SET id = id + 100, v = v || '!'");
    assert_eq!(
        f.changes(4),
        vec![
            delete("t", vec![int(2)]),
            delete("t", vec![int(10)]),
            insert("t", vec![int(102), text("bob!")]),
            insert("t", vec![int(110), text("ada!")]),
        ]
    );
    assert_eq!(
        f.rows("t"),
        vec![
            vec![sql_int(102), sql_text("bob!")],
            vec![sql_int(110), sql_text("ada!")]
        ]
    );
    f.assert_replica_matches();
}

/// A DELETE is captured as Delete(key), one per deleted row; a DELETE of
/// nothing takes no CommitId.
#[test]
fn delete_is_captured_as_the_key_of_each_deleted_row() {
    let f = Fixture::new(T, &["t"]);
    f.exec("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')");
    f.exec("DELETE FROM t WHERE id = 2");
    assert_eq!(f.changes(3), vec![delete("t", vec![int(2)])]);
    f.exec("DELETE FROM t");
    assert_eq!(
        f.changes(4),
        vec![delete("t", vec![int(1)]), delete("t", vec![int(3)])]
    );
    f.exec("DELETE FROM t");
    assert_eq!(
        f.head(),
        CommitId(4),
        "a DELETE of no row takes no CommitId"
    );
    f.assert_replica_matches();
}

const UPSERT_TABLE: &str =
    "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, visits INTEGER NOT NULL)";

/// INSERT ... ON CONFLICT DO UPDATE is captured as an Update of the row it
/// conflicted with (on the key or another UNIQUE column), and as an Insert
/// when there is no conflict.
#[test]
fn upsert_do_update_replicates_the_updated_row_and_the_inserted_one() {
    let f = Fixture::new(UPSERT_TABLE, &["t"]);
    f.exec("INSERT INTO t VALUES (1, 'a@x', 1)");
    f.exec("INSERT INTO t VALUES (5, 'a@x', 1) ON CONFLICT(email) DO UPDATE SET visits = visits + excluded.visits");
    // The table has a UNIQUE column besides its key: an existing row's
    // final version is written after its old one is deleted, so no
    // transient UNIQUE conflict can arise on the replica.
    assert_eq!(
        f.changes(3),
        vec![
            delete("t", vec![int(1)]),
            insert("t", vec![int(1), text("a@x"), int(2)])
        ]
    );
    f.exec(
        "INSERT INTO t VALUES (1, 'z@x', 1) ON CONFLICT(id) DO UPDATE SET email = excluded.email",
    );
    assert_eq!(
        f.changes(4),
        vec![
            delete("t", vec![int(1)]),
            insert("t", vec![int(1), text("z@x"), int(2)])
        ]
    );
    f.exec("INSERT INTO t VALUES (2, 'b@x', 1) ON CONFLICT(id) DO UPDATE SET visits = visits + 1");
    assert_eq!(
        f.changes(5),
        vec![insert("t", vec![int(2), text("b@x"), int(1)])]
    );
    f.exec("INSERT INTO t VALUES (1, 'z@x', 0), (3, 'c@x', 1) ON CONFLICT(id) DO UPDATE SET visits = visits + 10");
    assert_eq!(
        f.changes(6),
        vec![
            delete("t", vec![int(1)]),
            insert("t", vec![int(1), text("z@x"), int(12)]),
            insert("t", vec![int(3), text("c@x"), int(1)]),
        ]
    );
    f.assert_replica_matches();
}

/// ON CONFLICT DO NOTHING (and INSERT OR IGNORE) that skips every row
/// captures nothing and takes no CommitId; the rows it does insert are
/// captured.
#[test]
fn upsert_do_nothing_on_conflict_captures_nothing_and_takes_no_commit_id() {
    let f = Fixture::new(UPSERT_TABLE, &["t"]);
    f.exec("INSERT INTO t VALUES (1, 'a@x', 1)");
    for sql in [
        "INSERT INTO t VALUES (1, 'q@x', 5) ON CONFLICT DO NOTHING",
        "INSERT INTO t VALUES (9, 'a@x', 5) ON CONFLICT(email) DO NOTHING",
        "INSERT OR IGNORE INTO t VALUES (1, 'q@x', 5)",
    ] {
        f.exec(sql);
        assert_eq!(f.head(), CommitId(2), "`{sql}` takes no CommitId");
        assert_eq!(f.change_rows(), 2, "`{sql}` leaves no change row");
        assert_eq!(
            token(&f.primary),
            Some(2),
            "`{sql}` does not move the token"
        );
    }
    f.exec("INSERT INTO t VALUES (1, 'q@x', 5), (2, 'b@x', 1) ON CONFLICT DO NOTHING");
    assert_eq!(
        f.changes(3),
        vec![insert("t", vec![int(2), text("b@x"), int(1)])]
    );
    f.assert_replica_matches();
}

/// INSERT OR REPLACE / REPLACE of an existing key is captured as one Insert
/// of the new row (the implicit delete fires no trigger) and replays exactly.
#[test]
fn insert_or_replace_of_an_existing_key_replaces_the_row_on_the_replica() {
    let f = Fixture::new(UPSERT_TABLE, &["t"]);
    f.exec("INSERT INTO t VALUES (1, 'a@x', 1)");
    f.exec("INSERT OR REPLACE INTO t VALUES (1, 'b@x', 7)");
    assert_eq!(
        f.changes(3),
        vec![
            delete("t", vec![int(1)]),
            insert("t", vec![int(1), text("b@x"), int(7)])
        ]
    );
    f.exec("REPLACE INTO t VALUES (1, 'c@x', 8)");
    assert_eq!(
        f.changes(4),
        vec![
            delete("t", vec![int(1)]),
            insert("t", vec![int(1), text("c@x"), int(8)])
        ]
    );
    assert_eq!(
        f.rows("t"),
        vec![vec![sql_int(1), sql_text("c@x"), sql_int(8)]]
    );
    f.assert_replica_matches();
}

/// A REPLACE that silently deletes a row conflicting on another UNIQUE
/// column (declared in CREATE TABLE) deletes it on the replica too: the
/// replica's table has the same constraint and applies with REPLACE.
#[test]
fn insert_or_replace_deleting_a_row_conflicting_on_another_unique_column_replicates_the_deletion() {
    let f = Fixture::new(UPSERT_TABLE, &["t"]);
    f.exec("INSERT INTO t VALUES (1, 'a@x', 1), (2, 'b@x', 2)");
    f.exec("INSERT OR REPLACE INTO t VALUES (3, 'a@x', 3)");
    // Row 1, deleted by the REPLACE without a trigger, is in the record.
    assert_eq!(
        f.changes(3),
        vec![
            delete("t", vec![int(1)]),
            insert("t", vec![int(3), text("a@x"), int(3)])
        ]
    );
    assert_eq!(
        f.rows("t"),
        vec![
            vec![sql_int(2), sql_text("b@x"), sql_int(2)],
            vec![sql_int(3), sql_text("a@x"), sql_int(3)],
        ]
    );
    f.assert_replica_matches();
    // Conflicts on the key (row 2) and on email (row 3): both go.
    f.exec("INSERT OR REPLACE INTO t VALUES (2, 'a@x', 4)");
    assert_eq!(
        f.changes(4),
        vec![
            delete("t", vec![int(2)]),
            delete("t", vec![int(3)]),
            insert("t", vec![int(2), text("a@x"), int(4)])
        ]
    );
    assert_eq!(
        f.rows("t"),
        vec![vec![sql_int(2), sql_text("a@x"), sql_int(4)]]
    );
    f.assert_replica_matches();
}

/// UPDATE OR REPLACE that silently deletes the row it now conflicts with
/// (on another UNIQUE column, or on the key it moves to) replays exactly.
#[test]
fn update_or_replace_deleting_the_conflicting_row_replicates_the_deletion() {
    let f = Fixture::new(UPSERT_TABLE, &["t"]);
    f.exec("INSERT INTO t VALUES (1, 'a@x', 1), (2, 'b@x', 2), (3, 'c@x', 3)");
    f.exec("UPDATE OR REPLACE t SET email = 'a@x' WHERE id = 2");
    assert_eq!(
        f.changes(3),
        vec![
            delete("t", vec![int(2)]),
            delete("t", vec![int(1)]),
            insert("t", vec![int(2), text("a@x"), int(2)])
        ]
    );
    assert_eq!(
        f.rows("t"),
        vec![
            vec![sql_int(2), sql_text("a@x"), sql_int(2)],
            vec![sql_int(3), sql_text("c@x"), sql_int(3)],
        ]
    );
    f.assert_replica_matches();
    f.exec("UPDATE OR REPLACE t SET id = 2 WHERE id = 3");
    assert_eq!(
        f.changes(4),
        vec![
            delete("t", vec![int(2)]),
            delete("t", vec![int(3)]),
            insert("t", vec![int(2), text("c@x"), int(3)])
        ]
    );
    assert_eq!(
        f.rows("t"),
        vec![vec![sql_int(2), sql_text("c@x"), sql_int(3)]]
    );
    f.assert_replica_matches();
}

/// A REPLACE that silently deletes a row conflicting on a UNIQUE INDEX
/// created separately (not part of CREATE TABLE) must delete it on the
/// replica too.
#[test]

fn replace_deleting_a_row_conflicting_on_a_separate_unique_index_replicates_the_deletion() {
    let f = Fixture::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, email TEXT NOT NULL);\
         CREATE UNIQUE INDEX t_email ON t(email);",
        &["t"],
    );
    f.exec("INSERT INTO t VALUES (1, 'a@x'), (2, 'b@x')");
    f.exec("INSERT OR REPLACE INTO t VALUES (3, 'a@x')");
    assert_eq!(
        f.rows("t"),
        vec![
            vec![sql_int(2), sql_text("b@x")],
            vec![sql_int(3), sql_text("a@x")]
        ]
    );
    f.assert_replica_matches();
    f.exec("UPDATE OR REPLACE t SET email = 'a@x' WHERE id = 2");
    assert_eq!(f.rows("t"), vec![vec![sql_int(2), sql_text("a@x")]]);
    f.assert_replica_matches();
}

/// Deletes made by ON DELETE CASCADE reach the WAL as Deletes of the child
/// rows, in the same commit as the parent's delete (the replica applies with
/// foreign keys off).
#[test]
fn foreign_key_cascade_is_captured_as_deletes_of_the_child_rows() {
    let f = Fixture::new(
        "PRAGMA foreign_keys = ON;\
         CREATE TABLE parent(id INTEGER PRIMARY KEY);\
         CREATE TABLE child(id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent(id) ON DELETE CASCADE);",
        &["parent", "child"],
    );
    f.exec(
        "INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (10, 1), (11, 1), (12, 2)",
    );
    f.exec("DELETE FROM parent WHERE id = 1");
    assert_eq!(
        f.changes(5),
        vec![
            delete("child", vec![int(10)]),
            delete("child", vec![int(11)]),
            delete("parent", vec![int(1)]),
        ]
    );
    f.assert_replica_matches();
}

// ------------------------------------------------------------- transactions

/// A multi-statement transaction over two tables is ONE CommitId whose
/// changes are in statement order; the next transaction takes the next one.
#[test]
fn multi_statement_transaction_is_one_commit_with_changes_in_order() {
    let f = Fixture::new(
        "CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT);\
         CREATE TABLE b(k TEXT NOT NULL PRIMARY KEY, n INTEGER);",
        &["a", "b"],
    );
    f.exec(
        "BEGIN;\
         INSERT INTO a VALUES (1, 'x');\
         INSERT INTO b VALUES ('k1', 1);\
         UPDATE a SET v = 'y' WHERE id = 1;\
         INSERT INTO a VALUES (2, 'z');\
         DELETE FROM b WHERE k = 'k1';\
         UPDATE b SET n = 5;\
         COMMIT;",
    );
    // One record for the transaction, with each touched key's final state:
    // b's row k1 came and went (its absence), a's rows as they ended.
    assert_eq!(
        f.changes(3),
        vec![
            discard("b", vec![text("k1")]),
            insert("a", vec![int(1), text("y")]),
            insert("a", vec![int(2), text("z")]),
        ]
    );
    assert_eq!(token(&f.primary), Some(3));
    f.exec("INSERT INTO b VALUES ('k2', 2)");
    assert_eq!(f.changes(4), vec![insert("b", vec![text("k2"), int(2)])]);
    assert_eq!(token(&f.primary), Some(4));
    f.assert_replica_matches();
}

/// ROLLBACK TO a savepoint removes the changes after it from the WAL; the
/// rest of the transaction keeps its CommitId and the next one follows it.
#[test]
fn rolled_back_savepoint_leaves_no_trace_and_no_gap() {
    let f = Fixture::new(T, &["t"]);
    f.exec(
        "BEGIN;\
         INSERT INTO t VALUES (1, 'keep');\
         SAVEPOINT s;\
         INSERT INTO t VALUES (2, 'drop');\
         UPDATE t SET v = 'drop' WHERE id = 1;\
         ROLLBACK TO s;\
         INSERT INTO t VALUES (3, 'keep');\
         RELEASE s;\
         COMMIT;",
    );
    assert_eq!(
        f.changes(2),
        vec![
            insert("t", vec![int(1), text("keep")]),
            insert("t", vec![int(3), text("keep")]),
        ]
    );
    assert_eq!(
        f.change_rows(),
        3,
        "schema + two kept changes, nothing else"
    );
    f.exec("INSERT INTO t VALUES (4, 'next')");
    assert_eq!(f.changes(3), vec![insert("t", vec![int(4), text("next")])]);
    f.assert_replica_matches();
}

/// A transaction whose captured changes were all rolled back to a savepoint
/// takes no CommitId: the next transaction gets the next one (no gap).
#[test]
fn transaction_whose_captured_changes_were_all_rolled_back_to_a_savepoint_takes_no_commit_id() {
    let f = Fixture::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE notes(n)",
        &["t"],
    );
    f.exec(
        "BEGIN;\
         SAVEPOINT s;\
         INSERT INTO t VALUES (1, 'gone');\
         ROLLBACK TO s;\
         RELEASE s;\
         INSERT INTO notes VALUES ('uncaptured');\
         COMMIT;",
    );
    assert_eq!(f.head(), CommitId(1));
    assert_eq!(f.change_rows(), 1);
    f.exec("INSERT INTO t VALUES (2, 'kept')");
    assert_eq!(f.changes(2), vec![insert("t", vec![int(2), text("kept")])]);
    f.assert_replica_matches();
}

/// Nested savepoints: only changes under released savepoints survive, in
/// order, and a SAVEPOINT used as the outermost transaction works the same.
#[test]
fn nested_savepoints_keep_exactly_the_released_changes() {
    let f = Fixture::new(T, &["t"]);
    f.exec(
        "BEGIN;\
         INSERT INTO t VALUES (1, 'a');\
         SAVEPOINT outer_sp;\
           INSERT INTO t VALUES (2, 'b');\
           SAVEPOINT inner_sp;\
             INSERT INTO t VALUES (3, 'rolled back');\
             UPDATE t SET v = 'rolled back' WHERE id = 1;\
           ROLLBACK TO inner_sp;\
           INSERT INTO t VALUES (4, 'd');\
           SAVEPOINT inner2_sp;\
             INSERT INTO t VALUES (5, 'e');\
           RELEASE inner2_sp;\
         RELEASE outer_sp;\
         SAVEPOINT other_sp;\
           DELETE FROM t;\
         ROLLBACK TO other_sp;\
         RELEASE other_sp;\
         COMMIT;",
    );
    assert_eq!(
        f.changes(2),
        vec![
            insert("t", vec![int(1), text("a")]),
            insert("t", vec![int(2), text("b")]),
            insert("t", vec![int(4), text("d")]),
            insert("t", vec![int(5), text("e")]),
        ]
    );
    // SAVEPOINT outside BEGIN opens the transaction; RELEASE commits it.
    f.exec(
        "SAVEPOINT a_sp;\
           INSERT INTO t VALUES (7, 'g');\
           SAVEPOINT b_sp;\
             INSERT INTO t VALUES (8, 'rolled back');\
           ROLLBACK TO b_sp;\
         RELEASE a_sp;",
    );
    assert_eq!(f.changes(3), vec![insert("t", vec![int(7), text("g")])]);
    assert_eq!(f.head(), CommitId(3));
    f.assert_replica_matches();
}

/// A full ROLLBACK (SQL or a dropped rusqlite Transaction) leaves no change
/// row, and the next transaction reuses the CommitId: still contiguous.
#[test]
fn full_rollback_leaves_no_trace_and_the_next_transaction_reuses_the_commit_id() {
    let f = Fixture::new(T, &["t"]);
    f.exec("INSERT INTO t VALUES (1, 'a')");
    f.exec(
        "BEGIN;\
         INSERT INTO t VALUES (2, 'b');\
         UPDATE t SET v = 'z';\
         DELETE FROM t WHERE id = 1;\
         ROLLBACK;",
    );
    assert_eq!(f.head(), CommitId(2));
    assert_eq!(f.change_rows(), 2);
    {
        let tx = f
            .conn()
            .unchecked_transaction()
            .expect("begin a transaction");
        tx.execute("INSERT INTO t VALUES (9, 'dropped')", [])
            .expect("insert inside the transaction");
        // Dropped without commit: rolled back.
    }
    assert_eq!(f.head(), CommitId(2));
    assert_eq!(f.change_rows(), 2);
    assert_eq!(f.rows("t"), vec![vec![sql_int(1), sql_text("a")]]);
    f.exec("INSERT INTO t VALUES (3, 'c')");
    assert_eq!(f.changes(3), vec![insert("t", vec![int(3), text("c")])]);
    f.assert_replica_matches();
}

/// A transaction that changes only tables that are not replicated (or only
/// the schema of one) gets no CommitId.
#[test]
fn transaction_touching_only_uncaptured_tables_gets_no_commit_id() {
    let f = Fixture::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)",
        &["t"],
    );
    f.exec("BEGIN; INSERT INTO notes VALUES (1, 'n'); UPDATE notes SET body = 'm'; COMMIT");
    f.exec("INSERT INTO notes VALUES (2, 'autocommit')");
    f.exec("CREATE TABLE more_notes(x)");
    assert_eq!(f.head(), CommitId(1));
    assert_eq!(f.change_rows(), 1);
    f.exec("INSERT INTO t VALUES (1, 'x')");
    assert_eq!(f.changes(2), vec![insert("t", vec![int(1), text("x")])]);
    f.assert_replica_matches();
}

/// A statement failing on a constraint in autocommit mode leaves no change
/// row and takes no CommitId, even when its first rows were captured.
#[rstest]
#[case::unique(
    "INSERT INTO t VALUES (2, 'b'), (1, 'dup')",
    "UNIQUE constraint failed: t.id"
)]
#[case::not_null(
    "INSERT INTO t VALUES (3, 'c'), (4, NULL)",
    "NOT NULL constraint failed: t.v"
)]
#[case::check(
    "UPDATE t SET v = v || 'too long'",
    "CHECK constraint failed: length(v) < 5"
)]
#[case::update_key(
    "INSERT INTO t VALUES (2, 'b'); UPDATE t SET id = 1 WHERE id = 2",
    "UNIQUE constraint failed: t.id"
)]
fn failing_statement_leaves_no_trace(#[case] sql: &str, #[case] error: &str) {
    let f = Fixture::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL CHECK (length(v) < 5))",
        &["t"],
    );
    f.exec("INSERT INTO t VALUES (1, 'a')");
    let before_rows = f.change_rows();
    let before = f.head();
    let before_content = f.rows("t");
    assert_eq!(f.exec_error(sql), error);
    if sql.starts_with("INSERT INTO t VALUES (2, 'b');") {
        // The batch's first statement committed on its own: one commit.
        assert_eq!(f.changes(3), vec![insert("t", vec![int(2), text("b")])]);
        assert_eq!(f.head(), CommitId(3));
    } else {
        assert_eq!(f.head(), before);
        assert_eq!(f.change_rows(), before_rows);
        assert_eq!(f.rows("t"), before_content);
    }
    let next = f.head().next();
    f.exec("INSERT INTO t VALUES (9, 'ok')");
    assert_eq!(
        f.changes(next.0),
        vec![insert("t", vec![int(9), text("ok")])]
    );
    f.assert_replica_matches();
}

/// Inside a transaction a failing statement is rolled back alone: the
/// commit holds exactly the other statements' changes.
#[test]
fn failing_statement_inside_a_transaction_keeps_only_the_other_statements_changes() {
    let f = Fixture::new(T, &["t"]);
    f.exec("INSERT INTO t VALUES (1, 'a')");
    f.exec("BEGIN; INSERT INTO t VALUES (2, 'b')");
    assert_eq!(
        f.exec_error("INSERT INTO t VALUES (3, 'c'), (1, 'dup')"),
        "UNIQUE constraint failed: t.id"
    );
    f.exec("INSERT INTO t VALUES (4, 'd'); COMMIT");
    assert_eq!(
        f.changes(3),
        vec![
            insert("t", vec![int(2), text("b")]),
            insert("t", vec![int(4), text("d")]),
        ]
    );
    assert_eq!(f.head(), CommitId(3));
    f.assert_replica_matches();
}

/// INSERT OR FAIL keeps (and commits) the rows before the failing one: they
/// are captured, and the token names their commit.
#[test]
fn insert_or_fail_captures_the_rows_it_keeps() {
    let f = Fixture::new(T, &["t"]);
    f.exec("INSERT INTO t VALUES (1, 'a')");
    assert_eq!(
        f.exec_error("INSERT OR FAIL INTO t VALUES (2, 'b'), (1, 'dup'), (3, 'c')"),
        "UNIQUE constraint failed: t.id"
    );
    assert_eq!(f.changes(3), vec![insert("t", vec![int(2), text("b")])]);
    assert_eq!(f.head(), CommitId(3));
    assert_eq!(token(&f.primary), Some(3));
    f.assert_replica_matches();
}

/// Capture works with `PRAGMA trusted_schema = OFF` (the capture functions
/// are innocuous, so triggers may call them).
#[test]
fn capture_works_with_trusted_schema_off() {
    let f = Fixture::new(T, &["t"]);
    f.exec("PRAGMA trusted_schema = OFF");
    f.exec("INSERT INTO t VALUES (1, 'a'); UPDATE t SET v = 'b'; DELETE FROM t");
    assert_eq!(f.changes(2), vec![insert("t", vec![int(1), text("a")])]);
    assert_eq!(
        f.changes(3),
        vec![update("t", vec![int(1)], vec![int(1), text("b")])]
    );
    assert_eq!(f.changes(4), vec![delete("t", vec![int(1)])]);
    f.assert_replica_matches();
}

// ----------------------------------------------------- connections, processes

/// Three connections (Primary, Primary::from_connection, capture::register)
/// writing alternately get contiguous CommitIds, and each one's token is its
/// own last commit.
#[test]
fn connections_writing_alternately_get_contiguous_commit_ids_and_their_own_tokens() {
    let f = Fixture::new(T, &["t"]);
    let c2 = Connection::open(&f.path).expect("open a second connection");
    let h2 = capture::register(&c2).expect("register capture on the second connection");
    let p3 = Primary::from_connection(Connection::open(&f.path).expect("open a third connection"))
        .expect("make the third connection a capture connection");
    let c3 = p3.connection();
    assert_eq!(
        p3.generation(),
        f.primary.generation(),
        "one primary, one generation"
    );
    assert_eq!(handle_token(&c2, &h2), None);
    assert_eq!(token(&p3), None);

    f.exec("INSERT INTO t VALUES (1, 'one')");
    c2.execute_batch("INSERT INTO t VALUES (2, 'two')")
        .expect("c2 insert");
    c3.execute_batch("INSERT INTO t VALUES (3, 'three')")
        .expect("c3 insert");
    f.exec("UPDATE t SET v = 'TWO' WHERE id = 2");
    c2.execute_batch(
        "BEGIN; INSERT INTO t VALUES (4, 'four'); UPDATE t SET v = 'ONE' WHERE id = 1; COMMIT",
    )
    .expect("c2 transaction");
    c3.execute_batch("DELETE FROM t WHERE id = 3")
        .expect("c3 delete");
    f.exec("BEGIN; INSERT INTO t VALUES (5, 'rolled back'); ROLLBACK");
    c2.execute_batch("INSERT INTO t VALUES (6, 'six')")
        .expect("c2 insert");

    let records = f.records();
    let changes: Vec<Vec<Change>> = records[1..].iter().map(|r| r.changes.clone()).collect();
    assert_eq!(
        changes,
        vec![
            vec![insert("t", vec![int(1), text("one")])],
            vec![insert("t", vec![int(2), text("two")])],
            vec![insert("t", vec![int(3), text("three")])],
            vec![update("t", vec![int(2)], vec![int(2), text("TWO")])],
            vec![
                insert("t", vec![int(4), text("four")]),
                update("t", vec![int(1)], vec![int(1), text("ONE")]),
            ],
            vec![delete("t", vec![int(3)])],
            vec![insert("t", vec![int(6), text("six")])],
        ]
    );
    assert_eq!(token(&f.primary), Some(5));
    assert_eq!(handle_token(&c2, &h2), Some(8));
    assert_eq!(token(&p3), Some(7));
    for (name, conn) in [("primary", f.conn()), ("c2", &c2), ("c3", c3)] {
        assert_eq!(
            count(conn, "SELECT aerodb_head()"),
            8,
            "aerodb_head() on {name}"
        );
    }
    assert_eq!(h2.head().expect("CaptureHandle::head"), CommitId(8));
    f.assert_replica_matches();
}

/// A connection whose read snapshot is older than another connection's
/// commit cannot write (SQLite refuses the upgrade), captures nothing, and
/// gets the right CommitId once it starts a fresh transaction.
#[test]
fn writer_with_a_stale_snapshot_is_refused_and_captures_nothing() {
    let f = Fixture::new(T, &["t"]);
    let c2 = Connection::open(&f.path).expect("open a second connection");
    let _h2 = capture::register(&c2).expect("register capture");
    f.exec("BEGIN");
    assert_eq!(count(f.conn(), "SELECT count(*) FROM t"), 0);
    c2.execute_batch("INSERT INTO t VALUES (1, 'from c2')")
        .expect("c2 insert");
    assert_eq!(
        f.exec_error("INSERT INTO t VALUES (2, 'stale')"),
        "database is locked"
    );
    f.exec("ROLLBACK");
    f.exec("INSERT INTO t VALUES (2, 'fresh')");
    assert_eq!(
        f.changes(2),
        vec![insert("t", vec![int(1), text("from c2")])]
    );
    assert_eq!(f.changes(3), vec![insert("t", vec![int(2), text("fresh")])]);
    assert_eq!(token(&f.primary), Some(3));
    f.assert_replica_matches();
}

/// A connection whose main database is another file cannot capture writes
/// to a primary it ATTACHed (its transactions are tracked on `main`): the
/// write is refused with a clear error and nothing is written.
#[test]
fn writes_through_an_attached_primary_are_refused_and_write_nothing() {
    let f = Fixture::new(T, &["t"]);
    let app = Connection::open(f.dir.path().join("app.db")).expect("open another database");
    let _h = capture::register(&app).expect("register capture");
    app.execute(
        "ATTACH DATABASE ?1 AS p",
        [f.path.to_str().expect("a UTF-8 temp path")],
    )
    .expect("attach the primary");
    let err = app
        .execute_batch("INSERT INTO p.t VALUES (1, 'a')")
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("the connection's main database is not a primary")
            && err.to_string().contains("not through ATTACH"),
        "{err}"
    );
    assert_eq!(f.head(), CommitId(1), "nothing captured");
    assert!(f.rows("t").is_empty(), "nothing written");
}

/// Whatever capture does with writes through ATTACH (capture or refuse),
/// a committed record never changes afterwards and no row reaches the
/// replicated table without its change in the WAL.
#[test]
fn writes_through_an_attached_primary_never_change_a_committed_record() {
    let f = Fixture::new(T, &["t"]);
    let app = Connection::open(f.dir.path().join("app.db")).expect("open another database");
    let _h = capture::register(&app).expect("register capture");
    app.execute(
        "ATTACH DATABASE ?1 AS p",
        [f.path.to_str().expect("a UTF-8 temp path")],
    )
    .expect("attach the primary");
    let mut committed = f.records();
    for (id, v) in [(1, "a"), (2, "b"), (3, "c")] {
        // The outcome of the write itself is not the point here.
        let _ = app.execute("INSERT INTO p.t VALUES (?1, ?2)", params![id, v]);
        let now = f.records();
        assert!(
            now.len() >= committed.len() && now[..committed.len()] == committed[..],
            "a committed record changed after the write of row {id}"
        );
        committed = now;
    }
    let captured: Vec<Change> = committed.into_iter().flat_map(|r| r.changes).collect();
    for row in f.rows("t") {
        let values: Vec<Value> = row
            .iter()
            .map(|v| match v {
                SqlValue::Integer(i) => int(*i),
                SqlValue::Text(s) => text(s),
                other => panic!("unexpected value {other:?}"),
            })
            .collect();
        assert!(
            captured.contains(&insert("t", values.clone())),
            "row {values:?} is in t but not in the WAL"
        );
    }
}

const CHILD_DB: &str = "AERODB_CAPTURE_TEST_CHILD_DB";
const CHILD_WRITER: &str = "AERODB_CAPTURE_TEST_CHILD_WRITER";
const CHILD_COUNT: &str = "AERODB_CAPTURE_TEST_CHILD_COUNT";
const CHILD_LINE: &str = "AERODB_CHILD_COMMIT";
const PROCESS_TEST: &str =
    "several_processes_writing_concurrently_get_exactly_contiguous_commit_ids";

fn payload(writer: i64, seq: i64) -> String {
    format!("writer {writer} row {seq} ✓")
}

/// A child process's capture connection: even writers use the Rust API,
/// odd ones register the functions on a plain connection.
enum ChildWriter {
    Api(Primary),
    Registered(Connection, CaptureHandle),
}

impl ChildWriter {
    fn conn(&self) -> &Connection {
        match self {
            ChildWriter::Api(p) => p.connection(),
            ChildWriter::Registered(c, _) => c,
        }
    }

    fn last_commit_id(&self) -> Option<CommitId> {
        match self {
            ChildWriter::Api(p) => p.last_commit_id().expect("child: last_commit_id"),
            ChildWriter::Registered(_, h) => h.last_commit_id().expect("child: last_commit_id"),
        }
    }
}

/// The child side of the multi-process test: `count` transactions, each an
/// insert of its own row and an increment of the shared counter; prints the
/// token after each commit.
fn child_writer(db: &str) {
    let var = |name: &str| -> i64 {
        std::env::var(name)
            .unwrap_or_else(|e| panic!("child: {name}: {e}"))
            .parse()
            .unwrap_or_else(|e| panic!("child: {name}: {e}"))
    };
    let writer = var(CHILD_WRITER);
    let count = var(CHILD_COUNT);
    let conn = Connection::open(db).expect("child: open the primary");
    // SQLite's own lock wait, retried at once instead of sleeping, so the
    // writers take turns at the lock rather than one starving the others.
    // (Bounded: a writer that cannot get the lock fails the test.)
    conn.busy_handler(Some(|attempt: i32| {
        std::thread::yield_now();
        attempt < 100_000_000
    }))
    .expect("child: set a busy handler");
    let w = if writer % 2 == 0 {
        ChildWriter::Api(Primary::from_connection(conn).expect("child: Primary::from_connection"))
    } else {
        let handle = capture::register(&conn).expect("child: capture::register");
        ChildWriter::Registered(conn, handle)
    };
    // Start line: every writer is connected; the parent closes stdin to let
    // all of them go at once.
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
        .expect("child: wait for the start signal");
    for seq in 0..count {
        let conn = w.conn();
        conn.execute_batch("BEGIN IMMEDIATE")
            .expect("child: BEGIN IMMEDIATE");
        conn.execute(
            "INSERT INTO log(writer, seq, payload) VALUES (?1, ?2, ?3)",
            params![writer, seq, payload(writer, seq)],
        )
        .expect("child: insert");
        conn.execute("UPDATE counter SET n = n + 1 WHERE id = 1", [])
            .expect("child: increment");
        conn.execute_batch("COMMIT").expect("child: COMMIT");
        let c = w
            .last_commit_id()
            .expect("child: a committed capture has a token");
        println!("{CHILD_LINE} {writer} {seq} {}", c.0);
    }
}

/// Three processes writing the same primary concurrently get CommitIds
/// exactly 1..=total with no gap or duplicate, each record is exactly one
/// writer's transaction, and each process's token names the commit holding
/// its row (SQLite's single writer serializes assignment across processes).
#[test]
fn several_processes_writing_concurrently_get_exactly_contiguous_commit_ids() {
    if let Ok(db) = std::env::var(CHILD_DB) {
        child_writer(&db);
        return;
    }
    const WRITERS: i64 = 3;
    const PER_WRITER: i64 = 60;
    let f = Fixture::new(
        "CREATE TABLE log(writer INTEGER NOT NULL, seq INTEGER NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (writer, seq)) WITHOUT ROWID;\
         CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL);",
        &["log", "counter"],
    );
    f.exec("INSERT INTO counter VALUES (1, 0)");
    let base = 3u64;
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut children: Vec<_> = (0..WRITERS)
        .map(|w| {
            Command::new(&exe)
                .args([PROCESS_TEST, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_DB, &f.path)
                .env(CHILD_WRITER, w.to_string())
                .env(CHILD_COUNT, PER_WRITER.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a writer process")
        })
        .collect();
    for child in &mut children {
        drop(child.stdin.take()); // the start signal
    }
    let mut reported: BTreeMap<(i64, i64), u64> = BTreeMap::new();
    for (w, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("wait for a writer process");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "writer {w} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for line in stdout.lines() {
            // libtest may print "test <name> ... " on the same line.
            let Some(at) = line.find(CHILD_LINE) else {
                continue;
            };
            let rest = &line[at + CHILD_LINE.len()..];
            let fields: Vec<i64> = rest
                .split_whitespace()
                .map(|s| s.parse().expect("child lines are numbers"))
                .collect();
            assert_eq!(fields.len(), 3, "child line `{line}`");
            reported.insert((fields[0], fields[1]), fields[2] as u64);
        }
    }

    let total = base + (WRITERS * PER_WRITER) as u64;
    assert_eq!(f.head(), CommitId(total));
    let reader = PrimaryWalReader::open(&f.path).expect("open the WAL");
    assert_eq!(
        reader.head().expect("PrimaryWalReader::head"),
        CommitId(total)
    );
    let records = f.records(); // contiguous 1..=total, chain valid from genesis
    assert_eq!(records.len() as u64, total);
    let mut seen: BTreeMap<(i64, i64), u64> = BTreeMap::new();
    for (k, record) in records[base as usize..].iter().enumerate() {
        let k = k as i64 + 1;
        let (w, s) = match record.changes.as_slice() {
            [Change::Insert { table, values }, counter] => {
                assert_eq!(table, "log", "commit {}", record.commit_id);
                // The k-th writer transaction saw the counter at k - 1.
                assert_eq!(
                    counter,
                    &update("counter", vec![int(1)], vec![int(1), int(k)]),
                    "commit {}",
                    record.commit_id
                );
                match values.as_slice() {
                    [Value::Integer(w), Value::Integer(s), p] => {
                        assert_eq!(p, &text(&payload(*w, *s)), "commit {}", record.commit_id);
                        (*w, *s)
                    }
                    other => panic!("commit {}: log row {other:?}", record.commit_id),
                }
            }
            other => panic!(
                "commit {} is not one writer transaction: {other:?}",
                record.commit_id
            ),
        };
        assert_eq!(
            seen.insert((w, s), record.commit_id.0),
            None,
            "row ({w}, {s}) captured twice"
        );
    }
    let expected: BTreeSet<(i64, i64)> = (0..WRITERS)
        .flat_map(|w| (0..PER_WRITER).map(move |s| (w, s)))
        .collect();
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), expected);
    for w in 0..WRITERS {
        let commits: Vec<u64> = (0..PER_WRITER).map(|s| seen[&(w, s)]).collect();
        assert!(
            commits.windows(2).all(|p| p[0] < p[1]),
            "writer {w}'s transactions are in its own order: {commits:?}"
        );
    }
    // Read-your-writes across processes: each token is the commit of the row.
    assert_eq!(reported, seen);
    let by_commit: BTreeMap<u64, i64> = seen.iter().map(|(&(w, _), &c)| (c, w)).collect();
    let writers: Vec<i64> = by_commit.values().copied().collect();
    let switches = writers.windows(2).filter(|p| p[0] != p[1]).count();
    // Informational: how much the writers interleaved in this run.
    println!(
        "{} writer transactions, {switches} switches between writers",
        writers.len()
    );
    assert_eq!(
        count(f.conn(), "SELECT n FROM counter WHERE id = 1"),
        WRITERS * PER_WRITER
    );
    // Every record was sealed by its own writer's commit.
    assert_eq!(
        count(f.conn(), "SELECT max(commit_id) FROM aerodb_commits"),
        total as i64
    );
    f.assert_replica_matches();
}

// -------------------------------------------------------------------- values

/// A value as (storage class, exact bytes): REAL by bit pattern, TEXT by its
/// stored bytes.
fn exact_sql(v: &SqlValue) -> (&'static str, Vec<u8>) {
    match v {
        SqlValue::Null => ("null", Vec::new()),
        SqlValue::Integer(i) => ("integer", i.to_le_bytes().to_vec()),
        SqlValue::Real(r) => ("real", r.to_bits().to_le_bytes().to_vec()),
        SqlValue::Text(t) => ("text", t.as_bytes().to_vec()),
        SqlValue::Blob(b) => ("blob", b.clone()),
    }
}

fn exact_wal(v: &Value) -> (&'static str, Vec<u8>) {
    match v {
        Value::Null => ("null", Vec::new()),
        Value::Integer(i) => ("integer", i.to_le_bytes().to_vec()),
        Value::Real(r) => ("real", r.to_bits().to_le_bytes().to_vec()),
        Value::Text(t) => ("text", t.clone()),
        Value::Blob(b) => ("blob", b.clone()),
    }
}

type ExactRow = (i64, (&'static str, Vec<u8>));

/// `x` of every row of `v`, exactly: TEXT is read as its bytes (CAST AS
/// BLOB) so invalid UTF-8 survives the comparison.
fn exact_rows(conn: &Connection) -> Vec<ExactRow> {
    let mut stmt = conn
        .prepare("SELECT id, typeof(x), CASE typeof(x) WHEN 'text' THEN CAST(x AS BLOB) ELSE x END FROM v ORDER BY id")
        .expect("prepare the exact dump");
    stmt.query_map([], |r| {
        let id: i64 = r.get(0)?;
        let class: String = r.get(1)?;
        let value: SqlValue = r.get(2)?;
        let (c, bytes) = exact_sql(&value);
        let class = match class.as_str() {
            "text" => "text",
            _ => c,
        };
        Ok((id, (class, bytes)))
    })
    .and_then(|rows| rows.collect())
    .expect("run the exact dump")
}

/// Compares exact rows without printing megabytes on failure.
fn assert_exact_rows(actual: &[ExactRow], expected: &[ExactRow], what: &str) {
    let summary = |r: &ExactRow| {
        let (class, bytes) = &r.1;
        format!(
            "id {} {class} {} bytes {:02x?}",
            r.0,
            bytes.len(),
            &bytes[..bytes.len().min(16)]
        )
    };
    assert_eq!(actual.len(), expected.len(), "{what}: row count");
    for (a, e) in actual.iter().zip(expected) {
        assert!(
            a == e,
            "{what}: got {}, expected {}",
            summary(a),
            summary(e)
        );
    }
}

/// NULL, INTEGER (incl. i64::MIN/MAX), REAL (incl. subnormal, -0.0,
/// infinities), TEXT (incl. non-ASCII, NUL, invalid UTF-8) and BLOB (incl.
/// empty and 5 MiB) round-trip byte-exactly primary -> WAL -> replica.
#[test]
fn every_value_type_round_trips_byte_exactly_to_the_replica() {
    let f = Fixture::new("CREATE TABLE v(id INTEGER PRIMARY KEY, x)", &["v"]);
    let big: Vec<u8> = (0..5 * 1024 * 1024)
        .map(|i: usize| (i * 31 % 251) as u8)
        .collect();
    let inputs: Vec<SqlValue> = vec![
        SqlValue::Null,
        SqlValue::Integer(i64::MIN),
        SqlValue::Integer(i64::MAX),
        SqlValue::Integer(0),
        SqlValue::Integer(-1),
        SqlValue::Real(0.1),
        SqlValue::Real(-1.5e300),
        SqlValue::Real(f64::MIN_POSITIVE),
        SqlValue::Real(f64::from_bits(1)),
        SqlValue::Real(-0.0),
        SqlValue::Real(f64::INFINITY),
        SqlValue::Real(f64::NEG_INFINITY),
        SqlValue::Real(1.0),
        SqlValue::Text(String::new()),
        SqlValue::Text("héllo wörld ✓ 日本語 🦀 Ωμέγα".into()),
        SqlValue::Text("nul\0inside".into()),
        SqlValue::Blob(Vec::new()),
        SqlValue::Blob(vec![0x00, 0xff, 0x01, 0xfe]),
        SqlValue::Blob(big),
    ];
    let tx = f.conn().unchecked_transaction().expect("begin");
    for (i, x) in inputs.iter().enumerate() {
        tx.execute("INSERT INTO v VALUES (?1, ?2)", params![i as i64 + 1, x])
            .expect("insert a value");
    }
    let invalid_utf8_id = inputs.len() as i64 + 1;
    tx.execute(
        "INSERT INTO v VALUES (?1, CAST(X'C328FF' AS TEXT))",
        [invalid_utf8_id],
    )
    .expect("insert invalid UTF-8 text");
    tx.commit().expect("commit");

    let mut expected: Vec<ExactRow> = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| (i as i64 + 1, exact_sql(x)))
        .collect();
    expected.push((invalid_utf8_id, ("text", vec![0xc3, 0x28, 0xff])));
    assert_exact_rows(&exact_rows(f.conn()), &expected, "primary");

    // The WAL: one commit, one Insert per row, each value exact.
    let changes = f.changes(2);
    let from_wal: Vec<ExactRow> = changes
        .iter()
        .map(|c| match c {
            Change::Insert { table, values } if table == "v" => match values.as_slice() {
                [Value::Integer(id), x] => (*id, exact_wal(x)),
                other => panic!("Insert of v with values {other:?}"),
            },
            other => panic!("unexpected change {other:?}"),
        })
        .collect();
    assert_exact_rows(&from_wal, &expected, "WAL");

    f.assert_replica_matches();
    let replica = f.replica.borrow();
    assert_exact_rows(&exact_rows(replica.connection()), &expected, "replica");
}

/// Key values of every type (and non-ASCII text) identify their row on the
/// replica for Update and Delete.
#[test]
fn keys_of_every_type_find_their_row_on_the_replica() {
    let f = Fixture::new(
        "CREATE TABLE k(key NOT NULL PRIMARY KEY, note TEXT)",
        &["k"],
    );
    f.exec(
        "INSERT INTO k VALUES (-9223372036854775808, 'int'), (2.5, 'real'), ('ключ 🔑', 'text'), \
         (X'00FF', 'blob'), ('', 'empty text'), (X'', 'empty blob')",
    );
    f.exec("UPDATE k SET note = 'updated ' || typeof(key)");
    assert_eq!(
        f.changes(3),
        vec![
            update(
                "k",
                vec![int(i64::MIN)],
                vec![int(i64::MIN), text("updated integer")]
            ),
            update("k", vec![real(2.5)], vec![real(2.5), text("updated real")]),
            update(
                "k",
                vec![text("ключ 🔑")],
                vec![text("ключ 🔑"), text("updated text")]
            ),
            update(
                "k",
                vec![Value::Blob(vec![0x00, 0xff])],
                vec![Value::Blob(vec![0x00, 0xff]), text("updated blob")]
            ),
            update("k", vec![text("")], vec![text(""), text("updated text")]),
            update(
                "k",
                vec![Value::Blob(Vec::new())],
                vec![Value::Blob(Vec::new()), text("updated blob")]
            ),
        ]
    );
    f.assert_replica_matches();
    f.exec("DELETE FROM k WHERE typeof(key) IN ('real', 'blob')");
    f.exec("UPDATE k SET key = 'ключ 2' WHERE key = 'ключ 🔑'");
    f.assert_replica_matches();
    assert_eq!(
        dump(f.replica.borrow().connection(), "k", "note, key"),
        vec![
            vec![sql_int(i64::MIN), sql_text("updated integer")],
            vec![sql_text(""), sql_text("updated text")],
            vec![sql_text("ключ 2"), sql_text("updated text")],
        ]
    );
}

// -------------------------------------------------------------------- schema

/// A table without an explicit PRIMARY KEY is refused (rowids are not stable
/// across VACUUM), and the refusal changes nothing.
#[test]
fn table_without_primary_key_is_refused_naming_primary_key_and_vacuum() {
    let f = Fixture::new("CREATE TABLE nokey(a, b)", &[]);
    let err = capture_error(f.primary.replicate("nokey"));
    let message = err.to_string();
    assert!(message.contains("PRIMARY KEY"), "{message}");
    assert!(message.contains("VACUUM"), "{message}");
    assert_eq!(
        err,
        CaptureError::Refused {
            table: "nokey".into(),
            reason: "it has no PRIMARY KEY; AeroDB replicates rows by primary key because rowids are not stable across VACUUM. Declare an explicit PRIMARY KEY".into(),
        }
    );
    assert_nothing_installed(&f);
}

/// After a refused replicate(): no trigger, no registered table, no WAL.
fn assert_nothing_installed(f: &Fixture) {
    assert_eq!(
        count(
            f.conn(),
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'"
        ),
        0
    );
    assert_eq!(count(f.conn(), "SELECT count(*) FROM aerodb_tables"), 0);
    assert_eq!(f.head(), CommitId(0));
    assert_eq!(f.change_rows(), 0);
}

/// A rowid table whose primary key is not a rowid alias and may be NULL is
/// refused, naming the column (NULL keys cannot identify rows).
#[rstest]
#[case::text("CREATE TABLE t(k TEXT PRIMARY KEY, v)", "k")]
#[case::int_is_not_integer("CREATE TABLE t(k INT PRIMARY KEY, v)", "k")]
#[case::no_type("CREATE TABLE t(k PRIMARY KEY, v)", "k")]
#[case::composite(
    "CREATE TABLE t(a INTEGER NOT NULL, b INTEGER, v, PRIMARY KEY (a, b))",
    "b"
)]
fn rowid_table_with_nullable_non_integer_primary_key_is_refused(
    #[case] schema: &str,
    #[case] column: &str,
) {
    let f = Fixture::new(schema, &[]);
    assert_eq!(
        capture_error(f.primary.replicate("t")),
        CaptureError::Refused {
            table: "t".into(),
            reason: format!("primary key column '{column}' may be NULL (SQLite allows NULL keys in rowid tables), so rows cannot be identified; declare it NOT NULL"),
        }
    );
    assert_nothing_installed(&f);
}

/// `INTEGER PRIMARY KEY DESC` is NOT a rowid alias in SQLite (a documented
/// quirk) and accepts NULL keys, so it must be refused like any nullable key.
#[test]

fn integer_primary_key_desc_is_not_a_rowid_alias_and_is_refused_when_nullable() {
    let f = Fixture::new("CREATE TABLE t(id INTEGER PRIMARY KEY DESC, v)", &[]);
    // SQLite really does accept two NULL keys here.
    f.exec("CREATE TABLE probe(id INTEGER PRIMARY KEY DESC, v); INSERT INTO probe VALUES (NULL, 1), (NULL, 2)");
    assert_eq!(
        count(f.conn(), "SELECT count(*) FROM probe WHERE id IS NULL"),
        2
    );
    assert_eq!(
        capture_error(f.primary.replicate("t")),
        CaptureError::Refused {
            table: "t".into(),
            reason: "primary key column 'id' may be NULL (SQLite allows NULL keys in rowid tables), so rows cannot be identified; declare it NOT NULL".into(),
        }
    );
}

/// Keys that cannot be NULL are accepted: rowid aliases (any case, DESC in a
/// table constraint), NOT NULL keys, WITHOUT ROWID tables, composite keys.
#[rstest]
#[case::rowid_alias("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")]
#[case::rowid_alias_lower_case("CREATE TABLE t(id integer primary key, v)")]
#[case::rowid_alias_table_constraint_desc("CREATE TABLE t(id INTEGER, v, PRIMARY KEY (id DESC))")]
#[case::text_not_null("CREATE TABLE t(k TEXT NOT NULL PRIMARY KEY, v)")]
#[case::without_rowid("CREATE TABLE t(k TEXT PRIMARY KEY, v) WITHOUT ROWID")]
#[case::composite_not_null(
    "CREATE TABLE t(a TEXT NOT NULL, b INTEGER NOT NULL, v, PRIMARY KEY (a, b))"
)]
#[case::composite_without_rowid(
    "CREATE TABLE t(a TEXT, b INTEGER, v, PRIMARY KEY (b, a)) WITHOUT ROWID"
)]
#[case::quoted_name(
    "CREATE TABLE \"odd \"\"name\"\" t\"(id INTEGER PRIMARY KEY, v); CREATE TABLE t(id INTEGER PRIMARY KEY, v)"
)]
fn tables_whose_key_cannot_be_null_are_accepted(#[case] schema: &str) {
    let f = Fixture::new(schema, &["t"]);
    assert_eq!(f.head(), CommitId(1));
    assert_eq!(
        count(
            f.conn(),
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 't'"
        ),
        3,
        "insert, update and delete triggers"
    );
    f.assert_replica_matches();
}

/// A table whose name needs quoting is captured and replayed under its name.
#[test]
fn table_name_needing_quotes_is_captured_and_replayed() {
    let name = "odd \"name\" t";
    let f = Fixture::new(
        "CREATE TABLE \"odd \"\"name\"\" t\"(\"my id\" INTEGER PRIMARY KEY, \"v'al\" TEXT)",
        &[name],
    );
    f.exec("INSERT INTO \"odd \"\"name\"\" t\" VALUES (1, 'a'); UPDATE \"odd \"\"name\"\" t\" SET \"v'al\" = 'b'");
    assert_eq!(f.changes(2), vec![insert(name, vec![int(1), text("a")])]);
    assert_eq!(
        f.changes(3),
        vec![update(name, vec![int(1)], vec![int(1), text("b")])]
    );
    f.assert_replica_matches();
}

/// WITHOUT ROWID with a composite key declared in another order than the
/// columns: keys travel in PRIMARY KEY order, key changes included.
#[test]
fn without_rowid_composite_key_travels_in_primary_key_order() {
    let f = Fixture::new(
        "CREATE TABLE m(region TEXT NOT NULL, day INTEGER NOT NULL, total REAL, PRIMARY KEY (day, region)) WITHOUT ROWID",
        &["m"],
    );
    f.exec("INSERT INTO m VALUES ('eu', 1, 10.0), ('us', 1, 20.0)");
    assert_eq!(
        f.changes(2),
        vec![
            insert("m", vec![text("eu"), int(1), real(10.0)]),
            insert("m", vec![text("us"), int(1), real(20.0)]),
        ]
    );
    f.exec("UPDATE m SET total = total + 1 WHERE region = 'us'");
    assert_eq!(
        f.changes(3),
        vec![update(
            "m",
            vec![int(1), text("us")],
            vec![text("us"), int(1), real(21.0)]
        )]
    );
    f.exec("UPDATE m SET day = 2 WHERE region = 'eu'");
    assert_eq!(
        f.changes(4),
        vec![
            delete("m", vec![int(1), text("eu")]),
            insert("m", vec![text("eu"), int(2), real(10.0)])
        ]
    );
    f.exec("DELETE FROM m WHERE day = 1");
    assert_eq!(f.changes(5), vec![delete("m", vec![int(1), text("us")])]);
    f.assert_replica_matches();
}

/// A rowid table with a composite NOT NULL key: Update and Delete carry both
/// key columns.
#[test]
fn rowid_table_with_composite_key_replicates_updates_and_deletes() {
    let f = Fixture::new(
        "CREATE TABLE r(a TEXT NOT NULL, b INTEGER NOT NULL, v TEXT, PRIMARY KEY (a, b))",
        &["r"],
    );
    f.exec("INSERT INTO r VALUES ('x', 1, 'one'), ('x', 2, 'two')");
    f.exec("UPDATE r SET b = 3, v = 'three' WHERE a = 'x' AND b = 2");
    assert_eq!(
        f.changes(3),
        vec![
            delete("r", vec![text("x"), int(2)]),
            insert("r", vec![text("x"), int(3), text("three")])
        ]
    );
    f.exec("DELETE FROM r WHERE b = 1");
    assert_eq!(f.changes(4), vec![delete("r", vec![text("x"), int(1)])]);
    f.assert_replica_matches();
}

/// VIRTUAL generated columns (even between stored ones) are not captured:
/// stored nowhere, each side computes them when read.
#[test]
fn generated_columns_are_skipped_on_capture_and_recomputed_on_the_replica() {
    let f = Fixture::new(
        "CREATE TABLE g(id INTEGER PRIMARY KEY, twice INTEGER AS (a * 2) VIRTUAL, a INTEGER NOT NULL, b TEXT, label TEXT AS (b || '#' || a) VIRTUAL)",
        &["g"],
    );
    f.exec("INSERT INTO g(id, a, b) VALUES (1, 21, 'x')");
    f.exec("UPDATE g SET a = 5");
    assert_eq!(
        f.changes(2),
        vec![insert("g", vec![int(1), int(21), text("x")])]
    );
    assert_eq!(
        f.changes(3),
        vec![update("g", vec![int(1)], vec![int(1), int(5), text("x")])]
    );
    f.assert_replica_matches();
    assert_eq!(
        dump(f.replica.borrow().connection(), "g", "id"),
        vec![vec![
            sql_int(1),
            sql_int(10),
            sql_int(5),
            sql_text("x"),
            sql_text("x#5")
        ]]
    );
}

/// A STORED generated column holds what the primary's SQLite computed; the
/// replica's would compute its own (issue 10, item 7): such a table is
/// refused with the reason, by aerodb_replicate and aerodb_resync, and
/// nothing is installed or shipped.
#[test]
fn a_table_with_a_stored_generated_column_is_refused_with_the_reason() {
    let f = Fixture::new(
        "CREATE TABLE s(id INTEGER PRIMARY KEY, a INTEGER, total INTEGER GENERATED ALWAYS AS (a * 3) STORED);\
         INSERT INTO s(id, a) VALUES (1, 2);",
        &[],
    );
    let head = f.primary.head().expect("head");
    let reason = "its column 'total' is GENERATED ... STORED: the replica's SQLite would compute it again rather than hold the value the primary stored; make it VIRTUAL, or a plain column the application writes";
    assert_eq!(
        capture_error(f.primary.replicate("S")),
        CaptureError::Refused {
            table: "s".into(),
            reason: reason.into(),
        }
    );
    assert_eq!(f.primary.head().expect("head"), head, "nothing shipped");
    let installed: i64 = f
        .primary
        .connection()
        .query_row(
            "SELECT (SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 's') + (SELECT count(*) FROM aerodb_tables)",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(installed, 0, "no trigger, no registry row");
}

/// Views, virtual tables, shadow tables and reserved names (aerodb_*,
/// sqlite_*, any case) are refused with a reason, and nothing is installed.
#[rstest]
#[case::view("vw", "it is a view, only ordinary tables can be replicated")]
#[case::virtual_table("docs", "it is a virtual, only ordinary tables can be replicated")]
#[case::shadow_table("docs_data", "it is a shadow, only ordinary tables can be replicated")]
#[case::aerodb_wal(
    "aerodb_commits",
    "names starting with aerodb_ or sqlite_ are reserved"
)]
#[case::aerodb_user_table("aerodb_mine", "names starting with aerodb_ or sqlite_ are reserved")]
#[case::aerodb_mixed_case("AeroDB_Mine2", "names starting with aerodb_ or sqlite_ are reserved")]
#[case::sqlite_internal(
    "sqlite_sequence",
    "names starting with aerodb_ or sqlite_ are reserved"
)]
#[case::sqlite_schema("sqlite_schema", "names starting with aerodb_ or sqlite_ are reserved")]
fn views_virtual_tables_and_reserved_names_are_refused(#[case] table: &str, #[case] reason: &str) {
    let f = Fixture::new(
        "CREATE TABLE base(id INTEGER PRIMARY KEY AUTOINCREMENT, v);\
         INSERT INTO base(v) VALUES (1);\
         CREATE VIEW vw AS SELECT id, v FROM base;\
         CREATE VIRTUAL TABLE docs USING fts5(body);\
         CREATE TABLE aerodb_mine(id INTEGER PRIMARY KEY);\
         CREATE TABLE AeroDB_Mine2(id INTEGER PRIMARY KEY);",
        &[],
    );
    assert_eq!(
        capture_error(f.primary.replicate(table)),
        CaptureError::Refused {
            table: table.into(),
            reason: reason.into(),
        }
    );
    assert_nothing_installed(&f);
}

/// replicate() on a database that is not a primary is refused, through the
/// Rust API and SQL, and installs nothing; the WAL reader refuses it too.
#[test]
fn replicate_before_primary_init_is_refused_as_not_a_primary() {
    let dir = tempfile::tempdir().expect("create a tempdir");
    let path = dir.path().join("plain.db");
    let conn = Connection::open(&path).expect("open a plain database");
    conn.execute_batch(T).expect("create t");
    let handle = capture::register(&conn).expect("register capture");
    assert_eq!(handle.replicate("t"), Err(CaptureError::NotPrimary));
    assert_eq!(handle.head(), Err(CaptureError::NotPrimary));
    let not_primary = "not an AeroDB primary: run aerodb_primary_init() first";
    assert_eq!(
        sql_error(&conn, "SELECT aerodb_replicate('t')"),
        not_primary
    );
    assert_eq!(sql_error(&conn, "SELECT aerodb_head()"), not_primary);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM sqlite_schema"),
        1,
        "only t: no trigger, no aerodb_ table"
    );
    conn.execute_batch("INSERT INTO t VALUES (1, 'uncaptured')")
        .expect("t is an ordinary table");
    match PrimaryWalReader::open(&path) {
        Err(PrimaryError::Wal(WalReadError::NotPrimary)) => {}
        Err(other) => panic!("expected NotPrimary, got {other}"),
        Ok(_) => panic!("a plain database opened as a primary's WAL"),
    }
}

/// replicate() of a table that is not in the main database names it.
#[rstest]
#[case::missing("missing")]
#[case::temp_table("tmp")]
fn replicate_of_a_missing_table_names_it(#[case] table: &str) {
    let f = Fixture::new("CREATE TEMP TABLE tmp(id INTEGER PRIMARY KEY)", &[]);
    let err = capture_error(f.primary.replicate(table));
    assert_eq!(
        err,
        CaptureError::NoSuchTable {
            table: table.into()
        }
    );
    assert_eq!(
        err.to_string(),
        format!("aerodb_replicate('{table}'): no table named '{table}' in the main database")
    );
    assert_nothing_installed(&f);
}

/// `SELECT aerodb_replicate(...)` with a bad argument fails with a message
/// naming the function, the argument and what is wrong, and changes nothing.
#[rstest]
#[case::integer(
    "SELECT aerodb_replicate(42)",
    "aerodb_replicate: argument 1 (table) is Integer, expected a table name (TEXT)"
)]
#[case::null(
    "SELECT aerodb_replicate(NULL)",
    "aerodb_replicate: argument 1 (table) is Null, expected a table name (TEXT)"
)]
#[case::real(
    "SELECT aerodb_replicate(1.5)",
    "aerodb_replicate: argument 1 (table) is Real, expected a table name (TEXT)"
)]
#[case::blob(
    "SELECT aerodb_replicate(X'74')",
    "aerodb_replicate: argument 1 (table) is Blob, expected a table name (TEXT)"
)]
#[case::missing_table(
    "SELECT aerodb_replicate('nope')",
    "aerodb_replicate('nope'): no table named 'nope' in the main database"
)]
#[case::no_argument(
    "SELECT aerodb_replicate()",
    "wrong number of arguments to function aerodb_replicate() in SELECT aerodb_replicate() at offset 7"
)]
fn aerodb_replicate_sql_errors_name_the_argument(#[case] sql: &str, #[case] expected: &str) {
    let f = Fixture::new(T, &["t"]);
    assert_eq!(sql_error(f.conn(), sql), expected);
    assert_eq!(f.head(), CommitId(1));
    assert_eq!(count(f.conn(), "SELECT count(*) FROM aerodb_tables"), 1);
}

/// `SELECT aerodb_replicate('t')` returns the CommitId of the schema record;
/// replicating the unchanged table again ships nothing and returns the same
/// CommitId (issue 10 item 4); `aerodb_resync('t')` writes a new, identical
/// schema record followed by the table's rows, which the replica accepts
/// (restarting the table from them).
#[test]
fn aerodb_replicate_in_sql_returns_the_commit_id_of_its_schema_record() {
    let f = Fixture::new(T, &[]);
    assert_eq!(count(f.conn(), "SELECT aerodb_replicate('t')"), 1);
    f.exec("INSERT INTO t VALUES (1, 'a')");
    assert_eq!(count(f.conn(), "SELECT aerodb_replicate('t')"), 1);
    assert_eq!(f.head(), CommitId(2), "nothing shipped");
    assert_eq!(count(f.conn(), "SELECT aerodb_resync('t')"), 3);
    let schema = Change::Schema {
        table: "t".into(),
        sql: T.into(),
        indexes: vec![],
    };
    assert_eq!(f.changes(1), vec![schema.clone()]);
    assert_eq!(
        f.changes(3),
        vec![schema, insert("t", vec![int(1), text("a")])]
    );
    f.exec("INSERT INTO t VALUES (2, 'b')");
    assert_eq!(f.changes(4), vec![insert("t", vec![int(2), text("b")])]);
    f.assert_replica_matches();
}

// --------------------------------------------- connections without capture

/// A connection without the capture functions cannot write a replicated
/// table: the trigger's call fails and nothing is written.
#[rstest]
#[case::insert("INSERT INTO t VALUES (2, 'two')")]
#[case::update("UPDATE t SET v = 'changed' WHERE id = 1")]
#[case::delete("DELETE FROM t WHERE id = 1")]
#[case::upsert("INSERT INTO t VALUES (1, 'x') ON CONFLICT(id) DO UPDATE SET v = excluded.v")]
#[case::replace("REPLACE INTO t VALUES (1, 'x')")]
#[case::in_transaction("BEGIN; INSERT INTO notes VALUES (1); INSERT INTO t VALUES (2, 'two')")]
fn connection_without_capture_functions_cannot_write_a_replicated_table(#[case] sql: &str) {
    let f = Fixture::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE notes(n)",
        &["t"],
    );
    f.exec("INSERT INTO t VALUES (1, 'one')");
    let plain = Connection::open(&f.path).expect("open without capture functions");
    let error = exec_error(&plain, sql);
    assert!(
        error.contains("no such table: main.aerodb_capture"),
        "{error}"
    );
    if !plain.is_autocommit() {
        plain.execute_batch("COMMIT").expect("commit the rest");
    }
    assert_eq!(f.rows("t"), vec![vec![sql_int(1), sql_text("one")]]);
    assert_eq!(f.head(), CommitId(2));
    assert_eq!(f.change_rows(), 2);
    // Tables that are not replicated stay writable.
    plain
        .execute_batch("INSERT INTO notes VALUES ('plain')")
        .expect("write an unreplicated table");
    f.assert_replica_matches();
}

// ---------------------------------------------------------- tokens and head

/// aerodb_last_commit_id() is NULL before any write, then the CommitId of
/// this connection's last committed transaction (Rust API and SQL agree);
/// other connections' commits do not move it.
#[test]
fn last_commit_id_is_none_before_any_write_then_the_last_committed_commit_id() {
    let dir = tempfile::tempdir().expect("create a tempdir");
    let path = dir.path().join("primary.db");
    let p = Primary::open(&path).expect("open the primary");
    assert_eq!(token(&p), None);
    p.connection()
        .execute_batch(T)
        .expect("create t (uncaptured DDL)");
    assert_eq!(token(&p), None);
    assert_eq!(p.replicate("t").expect("replicate t"), CommitId(1));
    // The schema record is this connection's write.
    assert_eq!(token(&p), Some(1));
    p.connection()
        .execute_batch("INSERT INTO t VALUES (1, 'a')")
        .expect("insert");
    assert_eq!(token(&p), Some(2));
    p.connection()
        .execute_batch("BEGIN; INSERT INTO t VALUES (2, 'b'); UPDATE t SET v = 'c'; COMMIT")
        .expect("transaction");
    assert_eq!(token(&p), Some(3));
    let other =
        Primary::from_connection(Connection::open(&path).expect("open")).expect("second primary");
    other
        .connection()
        .execute_batch("INSERT INTO t VALUES (3, 'other')")
        .expect("other insert");
    assert_eq!(token(&other), Some(4));
    assert_eq!(token(&p), Some(3), "another connection's commit");
    p.connection()
        .execute_batch("DELETE FROM t WHERE id = 1")
        .expect("delete");
    assert_eq!(token(&p), Some(5));
}

/// aerodb_last_commit_id() does not change on ROLLBACK, on transactions
/// that change no captured table, or on failed or no-op statements.
#[test]
fn last_commit_id_does_not_change_on_rollback_or_without_captured_changes() {
    let f = Fixture::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE notes(n)",
        &["t"],
    );
    f.exec("INSERT INTO t VALUES (1, 'a')");
    assert_eq!(token(&f.primary), Some(2));
    for sql in [
        "BEGIN; INSERT INTO t VALUES (2, 'b'); ROLLBACK",
        "BEGIN; UPDATE t SET v = 'x'; DELETE FROM t; ROLLBACK",
        "INSERT INTO notes VALUES (1)",
        "BEGIN; INSERT INTO notes VALUES (2); COMMIT",
        "UPDATE t SET v = 'x' WHERE id = 99",
        "INSERT INTO t VALUES (1, 'x') ON CONFLICT DO NOTHING",
    ] {
        f.exec(sql);
        assert_eq!(token(&f.primary), Some(2), "after `{sql}`");
    }
    {
        let tx = f.conn().unchecked_transaction().expect("begin");
        tx.execute("INSERT INTO t VALUES (3, 'c')", [])
            .expect("insert");
    }
    assert_eq!(token(&f.primary), Some(2), "after a dropped transaction");
    f.exec_error("INSERT INTO t VALUES (4, 'd'), (1, 'dup')");
    assert_eq!(token(&f.primary), Some(2), "after a failed statement");
    assert_eq!(f.head(), CommitId(2));
    f.exec("INSERT INTO t VALUES (5, 'e')");
    assert_eq!(token(&f.primary), Some(3));
}

/// A transaction whose captured changes were all rolled back to a savepoint
/// commits no CommitId, so the token must not move to the unused CommitId.
#[test]

fn last_commit_id_is_unchanged_by_a_transaction_whose_captured_changes_were_rolled_back_to_a_savepoint(
) {
    let f = Fixture::new(T, &["t"]);
    f.exec("INSERT INTO t VALUES (1, 'a')");
    assert_eq!(token(&f.primary), Some(2));
    f.exec(
        "BEGIN; SAVEPOINT s; INSERT INTO t VALUES (5, 'gone'); ROLLBACK TO s; RELEASE s; COMMIT",
    );
    assert_eq!(f.head(), CommitId(2), "nothing was captured");
    assert_eq!(token(&f.primary), Some(2));
}

/// A ROLLBACK of a transaction that captured nothing (an explicit ROLLBACK,
/// or an autocommit statement failing before any row was written) must
/// not move the token: it still names this connection's last commit.
#[test]

fn last_commit_id_survives_a_rollback_that_captured_nothing() {
    let f = Fixture::new(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL CHECK (length(v) < 5)); CREATE TABLE notes(n)",
        &["t"],
    );
    f.exec("INSERT INTO t VALUES (1, 'a')");
    assert_eq!(token(&f.primary), Some(2));
    f.exec("BEGIN; INSERT INTO notes VALUES (1); ROLLBACK");
    assert_eq!(token(&f.primary), Some(2), "after an uncaptured ROLLBACK");
    f.exec("INSERT INTO t VALUES (2, 'b')");
    assert_eq!(token(&f.primary), Some(3));
    assert_eq!(
        f.exec_error("UPDATE t SET v = 'too long'"),
        "CHECK constraint failed: length(v) < 5"
    );
    assert_eq!(
        token(&f.primary),
        Some(3),
        "after a statement that failed before capturing"
    );
}

/// A transaction whose only captured statement failed (and was rolled back
/// alone) commits no CommitId, so the token must not move.
#[test]

fn last_commit_id_is_unchanged_by_a_transaction_whose_only_captured_statement_failed() {
    let f = Fixture::new(T, &["t"]);
    f.exec("INSERT INTO t VALUES (1, 'a')");
    assert_eq!(token(&f.primary), Some(2));
    f.exec("BEGIN");
    assert_eq!(
        f.exec_error("INSERT INTO t VALUES (5, 'e'), (1, 'dup')"),
        "UNIQUE constraint failed: t.id"
    );
    f.exec("COMMIT");
    assert_eq!(f.head(), CommitId(2), "nothing was captured");
    assert_eq!(token(&f.primary), Some(2));
}

/// aerodb_head() (SQL), Primary::head and PrimaryWalReader::head all give
/// the newest CommitId; a reader never sees an uncommitted one.
#[test]
fn head_is_the_newest_commit_id_in_sql_rust_and_the_wal_reader() {
    let dir = tempfile::tempdir().expect("create a tempdir");
    let path = dir.path().join("primary.db");
    let p = Primary::open(&path).expect("open the primary");
    let reader = PrimaryWalReader::open(&path).expect("open the WAL reader");
    let heads = || {
        let sql = count(p.connection(), "SELECT aerodb_head()") as u64;
        let rust = p.head().expect("Primary::head").0;
        let read = reader.head().expect("PrimaryWalReader::head").0;
        assert_eq!((sql, rust), (read, read), "SQL, Rust and reader agree");
        read
    };
    assert_eq!(heads(), 0, "a new primary has no commit");
    p.connection().execute_batch(T).expect("create t");
    p.replicate("t").expect("replicate t");
    assert_eq!(heads(), 1);
    for i in 0..3 {
        p.connection()
            .execute("INSERT INTO t VALUES (?1, 'x')", [i])
            .expect("insert");
    }
    assert_eq!(heads(), 4);
    assert_eq!(
        wal_records(&path).last().map(|r| r.commit_id),
        Some(CommitId(4))
    );
    p.connection()
        .execute_batch("BEGIN; INSERT INTO t VALUES (10, 'pending')")
        .expect("open a write transaction");
    assert_eq!(
        reader.head().expect("reader head"),
        CommitId(4),
        "the open transaction's commit is not visible"
    );
    p.connection().execute_batch("COMMIT").expect("commit");
    assert_eq!(heads(), 5);
}

// ------------------------------------------------------------------- sealing

/// (commit_id, wal_offset, length, change_count, prev_chain, chain, crc) of
/// every sealed record.
fn sealed_rows(conn: &Connection) -> Vec<[i64; 7]> {
    let mut stmt = conn
        .prepare("SELECT commit_id, wal_offset, length, change_count, prev_chain, chain, crc FROM aerodb_commits ORDER BY commit_id")
        .expect("prepare");
    stmt.query_map([], |r| {
        Ok([
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ])
    })
    .and_then(|rows| rows.collect())
    .expect("read aerodb_commits")
}

/// Every record is sealed by its own commit, inside its transaction, with
/// the values its bytes carry; a rolled-back transaction seals nothing
/// (readers verify, never compute).
#[test]
fn every_record_is_sealed_by_its_own_commit() {
    let f = Fixture::new(T, &["t"]);
    let reader = PrimaryWalReader::open(&f.path).expect("open the WAL reader");
    for i in 2..=70i64 {
        f.conn()
            .execute("INSERT INTO t VALUES (?1, 'row')", [i])
            .expect("insert");
        assert_eq!(
            sealed_rows(f.conn()).len() as i64,
            i,
            "commit {i} is sealed when it commits"
        );
    }
    f.exec("BEGIN; INSERT INTO t VALUES (1000, 'rolled back'); ROLLBACK");
    assert_eq!(sealed_rows(f.conn()).len(), 70, "a rollback seals nothing");
    let records = reader
        .records(CommitId(1), usize::MAX)
        .expect("read records");
    let expected_seals: Vec<[i64; 7]> = records
        .iter()
        .map(|r| {
            [
                r.commit_id.0 as i64,
                r.wal_offset.0 as i64,
                r.bytes.len() as i64,
                i64::from(r.change_count),
                i64::from(r.prev_chain),
                i64::from(r.chain),
                i64::from(r.crc),
            ]
        })
        .collect();
    assert_eq!(sealed_rows(f.conn()), expected_seals);
    // The bytes are those the format defines for these changes.
    let mut encoder =
        replication::wal::RecordEncoder::new(ChainPosition::genesis(reader.generation()));
    for r in &records {
        let decoded = Segment::decode(
            &Segment::encode(reader.generation(), std::slice::from_ref(r)).expect("encode"),
        )
        .expect("decode");
        let changes: Vec<Vec<u8>> = decoded.records[0]
            .changes
            .iter()
            .map(|c| replication::wal::encode_change(c).expect("encode change"))
            .collect();
        let refs: Vec<&[u8]> = changes.iter().map(Vec::as_slice).collect();
        assert_eq!(
            &encoder.push(r.commit_id, &refs).expect("re-encode"),
            r,
            "commit {} is byte-identical to its re-encoding",
            r.commit_id
        );
    }
    f.assert_replica_matches();
}

/// Reading from any commit (sealed, just after a seal, or in the computed
/// tail) gives the same records as a read from 1, and its segment is the
/// same bytes every time and continues the chain at that point.
#[test]
fn reading_from_a_middle_commit_continues_the_chain() {
    let f = Fixture::new(T, &["t"]);
    for i in 2..=200i64 {
        f.conn()
            .execute("INSERT INTO t VALUES (?1, 'row')", [i])
            .expect("insert");
    }
    assert_eq!(
        count(f.conn(), "SELECT max(commit_id) FROM aerodb_commits"),
        200,
        "every commit is sealed"
    );
    let reader = PrimaryWalReader::open(&f.path).expect("open the WAL reader");
    let generation = reader.generation();
    let all = reader.records(CommitId(1), usize::MAX).expect("read all");
    assert_eq!(all.len(), 200);
    for from in [1u64, 2, 63, 64, 65, 100, 128, 129, 150, 192, 193, 200] {
        let i = from as usize - 1;
        let records = reader
            .records(CommitId(from), usize::MAX)
            .expect("read from a middle commit");
        assert!(records == all[i..], "records from {from}");
        let bytes = reader
            .segment(CommitId(from), usize::MAX)
            .expect("read a segment")
            .expect("a segment exists");
        assert_eq!(
            bytes,
            Segment::encode(generation, &all[i..]).expect("encode"),
            "segment from {from} is the same bytes"
        );
        let start = match i {
            0 => ChainPosition::genesis(generation),
            _ => all[i - 1].end_position(generation),
        };
        let segment = validate(Segment::decode(&bytes).expect("decode"), &start)
            .unwrap_or_else(|e| panic!("segment from {from}: {e}"));
        assert_eq!(segment.segment().header.first_commit_id, CommitId(from));
        assert_eq!(segment.end(), all[199].end_position(generation));
    }
    // Bounded reads: at least one record, then stop once max_bytes is reached.
    let one = reader.records(CommitId(100), 1).expect("bounded read");
    assert!(one == all[99..100], "max_bytes 1 gives exactly commit 100");
    let two = reader
        .records(CommitId(100), all[99].bytes.len() + 1)
        .expect("bounded read");
    assert!(two == all[99..101], "just over one record gives two");
    assert!(reader
        .records(CommitId(201), usize::MAX)
        .expect("read past the head")
        .is_empty());
    assert!(reader
        .segment(CommitId(201), usize::MAX)
        .expect("read past the head")
        .is_none());
    f.assert_replica_matches();
}

/// A row event capture cannot take (a value over the WAL's value limit)
/// fails its statement; whether or not SQLite had a statement savepoint to
/// undo the row, nothing uncaptured commits: the row is gone with its
/// statement, or the commit is refused and the transaction rolled back.
#[rstest]
#[case::insert("CREATE TABLE t(id INTEGER PRIMARY KEY, v)", "INSERT")]
#[case::insert_not_null("CREATE TABLE t(id INTEGER PRIMARY KEY, v NOT NULL)", "INSERT")]
// OR REPLACE on a table with nothing else that can abort: SQLite opens no
// statement savepoint, so the row stays in the transaction.
#[case::insert_or_replace("CREATE TABLE t(id INTEGER PRIMARY KEY, v)", "INSERT OR REPLACE")]
fn a_write_capture_refuses_never_commits_uncaptured(#[case] ddl: &str, #[case] insert: &str) {
    let f = Fixture::new(ddl, &["t"]);
    f.exec("INSERT INTO t VALUES (1, 'kept')");
    let too_big = replication::wal::MAX_VALUE_BYTES as i64 + 1;
    f.exec("BEGIN; INSERT INTO t VALUES (2, 'before')");
    let err = f.exec_error(&format!("{insert} INTO t VALUES (3, zeroblob({too_big}))"));
    assert!(err.contains("value"), "{err}");
    let commit = f.conn().execute_batch("COMMIT");
    if !f.conn().is_autocommit() {
        f.exec("ROLLBACK");
    }
    let rows = count(f.conn(), "SELECT count(*) FROM t WHERE id = 3");
    match commit {
        // The statement savepoint undid row 3; row 2 committed, captured.
        Ok(()) => assert_eq!(rows, 0, "row 3 is gone with its statement"),
        // No statement savepoint: the commit is refused, all rolled back.
        Err(e) => {
            assert!(e.to_string().contains("was not captured"), "{e}");
            assert_eq!(count(f.conn(), "SELECT count(*) FROM t"), 1);
        }
    }
    f.assert_replica_matches();
}
