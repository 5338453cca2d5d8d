//! A replicated table whose schema changes under capture is never
//! replicated partially or silently (PEERS: "schema mismatch merged or
//! skipped silently"): captured writes are refused, the WAL reader refuses
//! to serve, and a replica refuses a schema record that differs from its
//! table.

use aerodb_e2e::{catch_up, extension, shell};
use replication::wal::CommitId;
use storage_adapter::primary::{Primary, PrimaryWalReader};
use storage_adapter::replica::ReplicaDb;

fn primary_with_table(dir: &std::path::Path) -> Primary {
    let primary = Primary::open(dir.join("p.db")).expect("primary");
    primary
        .connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE u(id INTEGER PRIMARY KEY);")
        .expect("tables");
    primary.replicate("t").expect("replicate t");
    primary.replicate("u").expect("replicate u");
    primary
        .connection()
        .execute("INSERT INTO t VALUES (1, 'a')", [])
        .expect("insert");
    primary
}

#[test]
fn altered_table_refuses_captured_writes_and_reads_until_replicated_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = primary_with_table(dir.path());
    // An existing replica, caught up with the old table.
    let mut replica = ReplicaDb::open(dir.path().join("r.db")).expect("replica");
    let start = {
        let reader = PrimaryWalReader::open(dir.path().join("p.db")).expect("reader");
        let start = replica.init(reader.generation()).expect("init");
        catch_up(&reader, &mut replica, start, usize::MAX)
    };
    assert_eq!(start.commit_id, primary.head().expect("head"));
    // Another process (the shell, no extension) adds a column.
    let run = shell(
        &dir.path().join("p.db"),
        "ALTER TABLE t ADD COLUMN w INTEGER;\n",
    );
    assert!(run.ok, "{run:?}");
    let head = primary.head().expect("head");

    let err = primary
        .connection()
        .execute("INSERT INTO t VALUES (2, 'b', 7)", [])
        .expect_err("write refused");
    assert!(
        err.to_string().contains(
            "replication of table 't' is broken: its definition is now `CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, w INTEGER)`, capture was set up for `CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)`"
        ),
        "{err}"
    );
    // Other replicated tables are unaffected: the check is per table.
    primary
        .connection()
        .execute("INSERT INTO u VALUES (5)", [])
        .expect("u is intact");
    let head = head.next();
    assert_eq!(primary.head().expect("head"), head, "nothing captured");
    let count: i64 = primary
        .connection()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count");
    assert_eq!(count, 1, "nothing written");

    let reader = PrimaryWalReader::open(dir.path().join("p.db")).expect("reader");
    let err = reader
        .segment(CommitId(1), usize::MAX)
        .expect_err("reader refuses");
    assert!(
        err.to_string()
            .contains("replication of table 't' is broken"),
        "{err}"
    );

    // Replicating it again records the new schema with every row; the
    // replica, which has the old table, replaces it by the new one (the
    // README's path: DDL, then aerodb_replicate again). Fresh and existing
    // replicas alike end exactly as the primary.
    let before = start;
    let schema_commit = primary.replicate("t").expect("replicate again");
    primary
        .connection()
        .execute("INSERT INTO t VALUES (2, 'b', 7)", [])
        .expect("captured again");
    let now = primary.head().expect("head");
    assert!(now > schema_commit);
    let at = catch_up(&reader, &mut replica, before, usize::MAX);
    assert_eq!(at.commit_id, now);
    let mut fresh = ReplicaDb::open(dir.path().join("fresh.db")).expect("fresh replica");
    let fresh_start = fresh.init(reader.generation()).expect("init");
    assert_eq!(
        catch_up(&reader, &mut fresh, fresh_start, 300).commit_id,
        now
    );
    let dump = |c: &rusqlite::Connection| {
        c.prepare("SELECT quote(id), quote(v), quote(w), typeof(w) FROM t ORDER BY id")
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(format!(
                        "{}|{}|{}|{}",
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .expect("rows of t")
    };
    let want = dump(primary.connection());
    assert_eq!(want, vec!["1|'a'|NULL|null", "2|'b'|7|integer"]);
    assert_eq!(dump(replica.connection()), want);
    assert_eq!(dump(fresh.connection()), want);
}

#[test]
fn recreated_table_without_triggers_is_refused_by_the_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = primary_with_table(dir.path());
    drop(primary);
    // A reader that already served this primary (and cached its check by
    // schema_version) must notice the change too.
    let reader = PrimaryWalReader::open(dir.path().join("p.db")).expect("reader");
    reader
        .segment(CommitId(1), usize::MAX)
        .expect("serves before the change");
    // DROP + CREATE from a shell with the extension: the new table has no
    // capture triggers, so its writes cannot be captured; the WAL reader
    // refuses to serve a primary in that state, so replicas stop, loudly.
    let run = shell(
        &dir.path().join("p.db"),
        &format!(
            ".load {}
.bail on
DROP TABLE t; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
INSERT INTO t VALUES (9, 'uncaptured');
",
            extension().display()
        ),
    );
    assert!(run.ok, "{run:?}");
    let err = reader
        .segment(CommitId(1), usize::MAX)
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("0 of its 3 capture triggers exist"),
        "{err}"
    );
}

#[test]
fn index_created_after_replicate_refuses_writes_until_replicated_again() {
    // Unique indexes decide which rows REPLACE deletes, so the replica must
    // have the same ones: a new index is schema drift like a new column.
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = primary_with_table(dir.path());
    primary
        .connection()
        .execute_batch("CREATE UNIQUE INDEX t_v ON t(v)")
        .expect("index");
    let err = primary
        .connection()
        .execute("INSERT INTO t VALUES (2, 'b')", [])
        .expect_err("write refused");
    assert!(
        err.to_string().contains(
            "replication of table 't' is broken: its indexes are now (CREATE UNIQUE INDEX t_v ON t(v)), capture was set up for (none)"
        ),
        "{err}"
    );
    let commit = primary.replicate("t").expect("replicate again");
    primary
        .connection()
        .execute("INSERT INTO t VALUES (2, 'b')", [])
        .expect("captured again");
    assert_eq!(primary.head().expect("head"), commit.next());
}

#[test]
fn existing_rows_and_recreated_tables_reach_the_replica_exactly() {
    // Review finding: a table replicated with rows already in it, or
    // dropped, recreated and replicated again, must not leave the replica
    // with other content than the primary at the same CommitId.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("p.db");
    let primary = Primary::open(&p).expect("primary");
    primary
        .connection()
        .execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t_v ON t(v); \
             INSERT INTO t VALUES (1, 'before replicate'), (2, 'also before');",
        )
        .expect("table with rows and a plain index");
    primary.replicate("t").expect("replicate");
    primary
        .connection()
        .execute("INSERT INTO t VALUES (3, 'after')", [])
        .expect("insert");
    let reader = PrimaryWalReader::open(&p).expect("reader");
    let mut replica = ReplicaDb::open(dir.path().join("r.db")).expect("replica");
    let mut pos = replica.init(reader.generation()).expect("init");
    let dump = |c: &rusqlite::Connection| -> Vec<(i64, String)> {
        c.prepare("SELECT id, v FROM t ORDER BY id")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .expect("rows")
    };
    pos = catch_up(&reader, &mut replica, pos, 1 << 20);
    assert_eq!(dump(replica.connection()), dump(primary.connection()));
    let index: i64 = replica
        .connection()
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 't_v'",
            [],
            |r| r.get(0),
        )
        .expect("index");
    assert_eq!(index, 1, "the plain index travels with the schema record");

    primary
        .connection()
        .execute_batch(
            "DROP TABLE t; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t_v ON t(v); \
             INSERT INTO t VALUES (9, 'recreated');",
        )
        .expect("recreate");
    primary.replicate("t").expect("replicate again");
    catch_up(&reader, &mut replica, pos, 1 << 20);
    assert_eq!(
        dump(replica.connection()),
        vec![(9, "recreated".to_string())]
    );
    assert_eq!(dump(replica.connection()), dump(primary.connection()));
}
