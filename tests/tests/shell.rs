//! The loadable extension in the stock `sqlite3` shell (Debian 12: 3.40.1):
//! it loads, makes a primary, captures writes, shows `replica_state`,
//! refuses bad arguments with clear errors, and a shell without it cannot
//! write a replicated table.

use aerodb_e2e::{extension, shell};
use replication::wal::{validate, Change, CommitId, Segment};
use storage_adapter::primary::PrimaryWalReader;
use storage_adapter::replica::ReplicaDb;

fn load() -> String {
    format!(".load {}\n", extension().display())
}

#[test]
fn extension_loads_and_captures_writes_in_the_shell() {
    // P1: the primary assigns contiguous CommitIds and appends WAL, from the
    // shell's own statements.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("p.db");
    let run = shell(
        &db,
        &format!(
            "{}.bail on
PRAGMA journal_mode=WAL;
SELECT length(aerodb_primary_init());
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);
SELECT aerodb_replicate('t');
INSERT INTO t VALUES (1, 'a');
BEGIN; INSERT INTO t VALUES (2, 'b'); UPDATE t SET v = 'bb' WHERE id = 2; COMMIT;
BEGIN; DELETE FROM t; ROLLBACK;
SELECT aerodb_last_commit_id(), aerodb_head();
",
            load()
        ),
    );
    assert!(run.ok, "{run:?}");
    assert_eq!(run.stdout, "wal\n16\n1\n3|3\n", "{run:?}");

    let reader = PrimaryWalReader::open(&db).expect("reader");
    let bytes = reader
        .segment(CommitId(1), usize::MAX)
        .expect("read")
        .expect("some WAL");
    let segment = Segment::decode(&bytes).expect("decodes");
    let ops: Vec<Vec<&'static str>> = segment
        .records
        .iter()
        .map(|r| {
            r.changes
                .iter()
                .map(|c| match c {
                    Change::Schema { .. } => "schema",
                    Change::Insert { .. } => "insert",
                    Change::Update { .. } => "update",
                    Change::Delete { .. } => "delete",
                    Change::Discard { .. } => "discard",
                    Change::Unreplicate { .. } => "unreplicate",
                    Change::Alter { .. } => "alter",
                })
                .collect()
        })
        .collect();
    // Commit 3 inserted row 2 and updated it: its record carries the row
    // as the commit left it (format 2 records hold final rows).
    assert_eq!(ops, vec![vec!["schema"], vec!["insert"], vec!["insert"]]);
    match &segment.records[2].changes[0] {
        Change::Insert { values, .. } => assert_eq!(
            values,
            &vec![
                replication::wal::Value::Integer(2),
                replication::wal::Value::Text(b"bb".to_vec())
            ]
        ),
        other => panic!("commit 3: {other:?}"),
    }

    // The same WAL applies on a replica.
    let mut replica = ReplicaDb::open(dir.path().join("r.db")).expect("replica");
    let start = replica.init(reader.generation()).expect("init");
    replica
        .apply(&validate(segment, &start).expect("continues"))
        .expect("applies");
    let rows: Vec<(i64, String)> = replica
        .connection()
        .prepare("SELECT id, v FROM t ORDER BY id")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .expect("rows");
    assert_eq!(rows, vec![(1, "a".to_string()), (2, "bb".to_string())]);
}

#[test]
fn shell_without_the_extension_cannot_write_a_replicated_table() {
    // DESIGN 4: a connection without capture fails, never writes uncaptured.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("p.db");
    let setup = shell(
        &db,
        &format!(
            "{}.bail on
SELECT length(aerodb_primary_init());
CREATE TABLE t(id INTEGER PRIMARY KEY, v);
SELECT aerodb_replicate('t');
",
            load()
        ),
    );
    assert!(setup.ok, "{setup:?}");
    for write in [
        "INSERT INTO t VALUES (1, 'x');",
        "UPDATE t SET v = 1;",
        "DELETE FROM t;",
    ] {
        let run = shell(&db, &format!(".bail on\n{write}\n"));
        assert!(!run.ok, "{write}: {run:?}");
        assert!(
            run.stderr.contains("no such table: main.aerodb_capture"),
            "{write}: {run:?}"
        );
    }
    let count = shell(
        &db,
        "SELECT count(*), (SELECT count(*) FROM aerodb_commits) FROM t;",
    );
    assert_eq!(
        count.stdout, "0|1\n",
        "nothing but the schema record: {count:?}"
    );
}

#[test]
fn capture_works_with_trusted_schema_off() {
    // Shells from 3.41 default to trusted_schema=0: trigger functions must
    // be SQLITE_INNOCUOUS.
    let dir = tempfile::tempdir().expect("tempdir");
    let run = shell(
        &dir.path().join("p.db"),
        &format!(
            "{}.bail on
PRAGMA trusted_schema = OFF;
SELECT length(aerodb_primary_init());
CREATE TABLE t(id INTEGER PRIMARY KEY, v);
SELECT aerodb_replicate('t');
INSERT INTO t VALUES (1, 'x');
UPDATE t SET v = 'y';
DELETE FROM t;
SELECT aerodb_head();
",
            load()
        ),
    );
    assert!(run.ok, "{run:?}");
    assert_eq!(run.stdout, "16\n1\n4\n");
}

#[test]
fn bad_sql_arguments_get_errors_naming_the_argument() {
    // STYLE 9: every SQL function validates its arguments.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("p.db");
    let cases = [
        (
            "SELECT aerodb_replicate('t');",
            "not an AeroDB primary: run aerodb_primary_init() first",
        ),
        ("SELECT aerodb_head();", "not an AeroDB primary"),
        (
            "SELECT aerodb_primary_init(); SELECT aerodb_replicate(42);",
            "aerodb_replicate: argument 1 (table) is Integer, expected a table name (TEXT)",
        ),
        (
            "SELECT aerodb_replicate(NULL);",
            "argument 1 (table) is Null",
        ),
        (
            "SELECT aerodb_replicate('missing');",
            "no table named 'missing' in the main database",
        ),
        (
            "CREATE TABLE nokey(a, b); SELECT aerodb_replicate('nokey');",
            "has no PRIMARY KEY",
        ),
        (
            "CREATE VIEW v AS SELECT 1; SELECT aerodb_replicate('v');",
            "it is a view",
        ),
        ("SELECT aerodb_replicate('aerodb_meta');", "reserved"),
        (
            "SELECT aerodb_capture_row(1, 't', 9, 1, 5);",
            "argument 3 (event)",
        ),
        (
            "SELECT aerodb_capture_row(1, 't', 1, 5);",
            "argument 4 (key length)",
        ),
        (
            "SELECT aerodb_replicate('a', 'b');",
            "wrong number of arguments",
        ),
    ];
    for (sql, expected) in cases {
        let run = shell(&db, &format!("{}{sql}\n", load()));
        assert!(
            run.stderr.contains(expected),
            "{sql}: expected `{expected}` in {run:?}"
        );
    }
}

#[test]
fn replica_state_shows_role_and_position() {
    // O2: the SQL surface shows CommitIds, WAL offsets and the generation.
    let dir = tempfile::tempdir().expect("tempdir");
    let none = shell(
        &dir.path().join("n.db"),
        &format!("{}SELECT * FROM replica_state;\n", load()),
    );
    assert_eq!(none.stdout, "none|||||0||||||||||\n", "{none:?}");
    let p = dir.path().join("p.db");
    let primary = shell(
        &p,
        &format!(
            "{}.bail on
SELECT length(aerodb_primary_init());
CREATE TABLE t(id INTEGER PRIMARY KEY);
SELECT aerodb_replicate('t');
INSERT INTO t VALUES (1);
SELECT role, applied_commit_id, replicated_tables FROM replica_state;
",
            load()
        ),
    );
    assert_eq!(primary.stdout, "16\n1\nprimary|2|1\n", "{primary:?}");

    let reader = PrimaryWalReader::open(&p).expect("reader");
    let mut replica = ReplicaDb::open(dir.path().join("r.db")).expect("replica");
    let start = replica.init(reader.generation()).expect("init");
    let seg = Segment::decode(
        &reader
            .segment(CommitId(1), usize::MAX)
            .expect("read")
            .expect("wal"),
    )
    .expect("decodes");
    let end = replica
        .apply(&validate(seg, &start).expect("valid"))
        .expect("applies");
    drop(replica);
    let run = shell(
        &dir.path().join("r.db"),
        &format!(
            "{}SELECT role, generation, applied_commit_id, applied_wal_offset, applied_chain, replicated_tables FROM replica_state;\n",
            load()
        ),
    );
    assert_eq!(
        run.stdout,
        format!(
            "replica|{}|2|{}|0x{:08x}|1\n",
            reader.generation(),
            end.wal_offset,
            end.chain
        ),
        "{run:?}"
    );
}

/// In the stock shell (Debian's 3.40: at most 127 arguments to a function)
/// a table with 300 columns replicates: its capture triggers hand over only
/// keys, and the commit reads the final rows. Mixed-case table names match
/// as SQLite's do.
#[test]
fn a_wide_table_replicates_from_the_stock_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("p.db");
    let cols: Vec<String> = (0..300).map(|i| format!("c{i}")).collect();
    let values = |k: i64| -> String {
        (0..300)
            .map(|i| match i % 3 {
                0 => format!("{}", k * 1000 + i),
                1 => format!("'v{k}_{i}'"),
                _ => "NULL".into(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let run = shell(
        &db,
        &format!(
            "{}.bail on
PRAGMA journal_mode=WAL;
SELECT length(aerodb_primary_init());
CREATE TABLE Wide(id INTEGER PRIMARY KEY, {});
SELECT aerodb_replicate('wide');
INSERT INTO Wide VALUES (1, {});
BEGIN; INSERT INTO Wide VALUES (2, {}); UPDATE Wide SET c7 = 'changed', c299 = 42 WHERE id = 1; COMMIT;
INSERT INTO Wide VALUES (3, {}); DELETE FROM Wide WHERE id = 2;
UPDATE Wide SET id = 30 WHERE id = 3;
SELECT aerodb_head();
",
            load(),
            cols.iter().map(|c| format!("{c} ANY")).collect::<Vec<_>>().join(", "),
            values(1),
            values(2),
            values(3)
        ),
    );
    assert!(run.ok, "{run:?}");
    assert_eq!(run.stdout, "wal\n16\n1\n6\n", "{run:?}");
    let reader = PrimaryWalReader::open(&db).expect("reader");
    let mut replica = ReplicaDb::open(dir.path().join("r.db")).expect("replica");
    let start = replica.init(reader.generation()).expect("init");
    let end = aerodb_e2e::catch_up(&reader, &mut replica, start, 1 << 20);
    assert_eq!(end.commit_id, CommitId(6));
    let primary = rusqlite::Connection::open(&db).expect("open primary");
    let quoted = |conn: &rusqlite::Connection| -> Vec<String> {
        let list: Vec<String> = std::iter::once("id".to_string())
            .chain(cols.iter().cloned())
            .map(|c| format!("quote({c}) || typeof({c})"))
            .collect();
        let mut s = conn
            .prepare(&format!(
                "SELECT {} FROM Wide ORDER BY id",
                list.join(" || ',' || ")
            ))
            .expect("prepare");
        s.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let expected = quoted(&primary);
    assert_eq!(expected.len(), 2);
    assert_eq!(quoted(replica.connection()), expected);
}
