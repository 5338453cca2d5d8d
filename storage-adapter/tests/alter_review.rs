//! An adversarial review of aerodb_alter (helper-12, this session): the
//! cases that held, kept as regression tests; the defects it found are
//! refused now and tested in `alter.rs::what_could_diverge_is_refused`.
#![allow(dead_code)]

mod differential;

use differential::*;

/// A table dropped and created again with identical text, then written
/// (no capture triggers: nothing captured), is made to look healthy again
/// by an aerodb_alter of another table.
/// Rows written while a capture trigger was dropped.
/// DDL run directly on t, then aerodb_alter of another table.
/// DROP TABLE of a parent with foreign_keys on: the implicit DELETE
/// cascades into a replicated child while its capture triggers are down.
#[test]
fn r6_savepoint_rollback_to_across_alter() {
    let mut h = alter_fixture();
    h.exec("BEGIN; INSERT INTO other VALUES ('y', 2); SAVEPOINT s;");
    alter(&h, "ALTER TABLE t ADD COLUMN c DEFAULT 3");
    h.exec("ROLLBACK TO s; INSERT INTO t VALUES (3, 'c', 30); COMMIT");
    h.check("after ROLLBACK TO across an alter");
    h.exec("BEGIN; SAVEPOINT s;");
    alter(&h, "ALTER TABLE t ADD COLUMN c DEFAULT 3");
    h.exec("ROLLBACK TO s; INSERT INTO t VALUES (4, 'd', 40); COMMIT");
    h.check("after ROLLBACK TO across an alter (no prior write)");
    h.exec("SAVEPOINT s;");
    alter(&h, "ALTER TABLE t ADD COLUMN c DEFAULT 3");
    h.exec("SAVEPOINT s2; INSERT INTO other VALUES ('z', 3); ROLLBACK TO s; INSERT INTO t VALUES (5, 'e', 50); RELEASE s");
    h.check("after nested ROLLBACK TO across an alter");
}

#[test]
fn r7_renames() {
    let mut h = alter_fixture();
    alter(&h, "ALTER TABLE t RENAME COLUMN id TO pk");
    h.exec("INSERT INTO t VALUES (3, 'c', 30); UPDATE t SET pk = 33 WHERE pk = 3; DELETE FROM t WHERE pk = 1");
    h.check("after renaming the key");
    let e = alter_err(&h, "ALTER TABLE t RENAME TO T");
    eprintln!("case rename: {e}");
    alter(&h, "ALTER TABLE other RENAME TO \"we\"\"ird name\"");
    h.tables = vec!["t".into(), "we\"ird name".into()];
    h.exec("INSERT INTO \"we\"\"ird name\" VALUES ('q', 5)");
    h.check("after odd rename");
    alter(&h, "ALTER TABLE t RENAME TO T2; ALTER TABLE T2 RENAME TO t");
    h.exec("INSERT INTO t VALUES (4, 'd', 40)");
    h.check("after rename there and back");
}

#[test]
fn r8_second_connection_writes_after_rename() {
    let mut h = alter_fixture();
    let (c2, _hd) = second_connection(&h);
    c2.execute_batch("INSERT INTO t VALUES (3, 'c', 30); INSERT INTO other VALUES ('y', 2)")
        .unwrap();
    h.check("c2 write");
    alter(
        &h,
        "ALTER TABLE t RENAME TO items; ALTER TABLE other ADD COLUMN z DEFAULT 'zz'",
    );
    h.tables = vec!["items".into(), "other".into()];
    c2.execute_batch("SELECT 1 FROM sqlite_schema LIMIT 1")
        .unwrap();
    c2.execute_batch("INSERT INTO items VALUES (4, 'd', 40); INSERT INTO other VALUES ('w', 2, 'q'); UPDATE other SET n = 9").unwrap();
    h.check("after c2 wrote under the new name");
    // c2 recreates a table named t (not replicated) and writes it.
    alter(&h, "ALTER TABLE items DROP COLUMN w");
    c2.execute_batch("SELECT 1 FROM sqlite_schema LIMIT 1")
        .unwrap();
    c2.execute_batch("INSERT INTO items VALUES (5, 'e')")
        .unwrap();
    h.check("after drop column");
}

#[test]
fn r9_unique_index_then_replace() {
    let mut h = alter_fixture();
    alter(&h, "CREATE UNIQUE INDEX tv ON t(v COLLATE NOCASE)");
    h.exec("INSERT OR REPLACE INTO t VALUES (3, 'A', 1); REPLACE INTO t VALUES (4, 'B', 2)");
    h.check("after replace through unique index");
    let (c2, _hd) = second_connection(&h);
    c2.execute_batch("REPLACE INTO t VALUES (5, 'a', 3)")
        .unwrap();
    h.check("c2 replace");
    alter(
        &h,
        "DROP INDEX tv; ALTER TABLE other ADD COLUMN u; CREATE UNIQUE INDEX ou ON other(u)",
    );
    c2.execute_batch("SELECT 1 FROM sqlite_schema LIMIT 1")
        .unwrap();
    c2.execute_batch("INSERT INTO other VALUES ('m', 1, 1); REPLACE INTO other VALUES ('n', 1, 1); INSERT INTO t VALUES (6, 'a', 0)").unwrap();
    h.check("after second alter");
}

#[test]
fn r10_alter_after_replicate_same_tx() {
    let mut h = alter_fixture();
    h.exec("CREATE TABLE n(id INTEGER PRIMARY KEY, a); INSERT INTO n VALUES (1, 'x'); BEGIN");
    h.replicate("n");
    alter(
        &h,
        "ALTER TABLE n ADD COLUMN b DEFAULT 2; ALTER TABLE n RENAME TO n2",
    );
    h.exec("INSERT INTO n2 VALUES (2, 'y', 3); COMMIT");
    h.tables = vec!["t".into(), "other".into(), "n2".into()];
    h.check("replicate then alter in one tx");
}

#[test]
fn r11_add_column_variants() {
    let mut h = alter_fixture();
    alter(&h, "ALTER TABLE t ADD COLUMN a INTEGER NOT NULL DEFAULT 7");
    alter(
        &h,
        "ALTER TABLE t ADD COLUMN b TEXT COLLATE NOCASE DEFAULT 'X'",
    );
    alter(
        &h,
        "ALTER TABLE t ADD COLUMN c INTEGER CHECK (c IS NULL OR c > 0)",
    );
    alter(&h, "ALTER TABLE t ADD COLUMN d INTEGER REFERENCES other(k)");
    alter(
        &h,
        "ALTER TABLE t ADD COLUMN g GENERATED ALWAYS AS (id * 2) VIRTUAL",
    );
    alter(&h, "ALTER TABLE t ADD COLUMN e DEFAULT (-0.0)");
    alter(&h, "ALTER TABLE t ADD COLUMN f REAL DEFAULT 1");
    h.exec("INSERT INTO t(id, v, w, a, b, c, d, e, f) VALUES (3, 'c', 30, 1, 'y', 2, 'x', 1, 2)");
    h.check("after add column variants");
}

#[test]
fn r4b_plain_cascade_is_captured() {
    let mut h = Harness::new();
    h.exec(
        "PRAGMA foreign_keys = ON;
         CREATE TABLE p(id INTEGER PRIMARY KEY);
         CREATE TABLE c(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES p(id) ON DELETE CASCADE);
         INSERT INTO p VALUES (1), (2);
         INSERT INTO c VALUES (10, 1), (20, 2);",
    );
    h.replicate("p");
    h.replicate("c");
    h.exec("DELETE FROM p WHERE id = 1");
    h.check("after a plain cascading delete");
}

#[test]
fn r3b_before_the_alter() {
    let mut h = alter_fixture();
    h.exec("ALTER TABLE t ADD COLUMN direct DEFAULT 5");
    eprintln!("r3 before: {:?}", h.try_check());
}

/// The reader's refusal before the alter, silence after.
#[test]
fn r12_spilled_write_then_alter_same_table() {
    let mut h = alter_fixture();
    h.conn()
        .query_row("SELECT aerodb_capture_chunk_bytes(1)", [], |_| Ok(()))
        .unwrap();
    h.exec("BEGIN; INSERT INTO t VALUES (7, 'g', 70); UPDATE t SET w = 11 WHERE id = 1;");
    let r = h.conn().query_row(
        "SELECT aerodb_alter('ALTER TABLE t DROP COLUMN w; ALTER TABLE t RENAME COLUMN v TO vv')",
        [],
        |r| r.get::<_, i64>(0),
    );
    eprintln!("r12 alter after a spilled write: {r:?}");
    h.exec("UPDATE t SET vv = 'G' WHERE id = 7; INSERT INTO t VALUES (8, 'h'); DELETE FROM t WHERE id = 2; COMMIT");
    h.check("after spilled write + alter");
    h.exec("BEGIN; INSERT INTO t VALUES (9, 'i'); SAVEPOINT s; INSERT INTO other VALUES ('q', 1);");
    alter(&h, "ALTER TABLE t ADD COLUMN z DEFAULT 1");
    h.exec("UPDATE t SET z = 2 WHERE id = 9; ROLLBACK TO s; UPDATE t SET vv = 'I' WHERE id = 9; COMMIT");
    h.check("after rollback to over spilled alter");
}

/// Two replicated tables swap names in one aerodb_alter.
#[test]
fn r13_swap_names() {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE a(id INTEGER PRIMARY KEY, x);
         CREATE TABLE b(id INTEGER PRIMARY KEY, y, z);
         INSERT INTO a VALUES (1, 'a1'); INSERT INTO b VALUES (1, 'b1', 'bz');",
    );
    h.replicate("a");
    h.replicate("b");
    h.check("after replicate");
    alter(
        &h,
        "ALTER TABLE a RENAME TO tmp; ALTER TABLE b RENAME TO a; ALTER TABLE tmp RENAME TO b",
    );
    eprintln!(
        "primary registry: {:?}",
        h.rows("SELECT name, sql FROM aerodb_tables ORDER BY name")
    );
    let w = h
        .conn()
        .execute_batch("INSERT INTO a VALUES (2, 'y2', 'z2'); INSERT INTO b VALUES (2, 'x2')");
    eprintln!("write after swap: {w:?}");
    h.check("after swapping names");
}

/// legacy_alter_table on the primary's connection: the child's REFERENCES
/// is left as it was there, rewritten on the replica.
#[test]
fn r14_legacy_alter_table() {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE p(id INTEGER PRIMARY KEY);
         CREATE TABLE c(id INTEGER PRIMARY KEY, pid REFERENCES p(id));
         INSERT INTO p VALUES (1); INSERT INTO c VALUES (1, 1);",
    );
    h.replicate("p");
    h.replicate("c");
    h.exec("PRAGMA legacy_alter_table = ON");
    alter(&h, "ALTER TABLE p RENAME TO p2");
    h.exec("PRAGMA legacy_alter_table = OFF");
    h.tables = vec!["p2".into(), "c".into()];
    h.check("after rename with legacy_alter_table");
    let ps: Vec<String> = h.rows("SELECT sql FROM sqlite_schema WHERE name = 'c'");
    let rs: String = h
        .replica
        .connection()
        .query_row("SELECT sql FROM sqlite_schema WHERE name = 'c'", [], |r| {
            r.get(0)
        })
        .unwrap();
    eprintln!("primary c: {ps:?}\nreplica c: {rs}");
    alter(&h, "ALTER TABLE c ADD COLUMN note");
    h.check("after a later alter of c");
}

/// Statements that are no-ops on the primary act on the replica.
#[test]
fn r17_user_trigger_and_view_across_alter() {
    let mut h = alter_fixture();
    h.exec("CREATE TABLE log(id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, what);");
    h.replicate("log");
    h.exec(
        "CREATE TRIGGER tl AFTER INSERT ON t BEGIN INSERT INTO log(what) VALUES (NEW.v); END;
            CREATE VIEW tv AS SELECT id, v FROM t;",
    );
    h.exec("INSERT INTO t VALUES (3, 'c', 30)");
    h.check("before");
    alter(
        &h,
        "ALTER TABLE t RENAME COLUMN v TO label; ALTER TABLE t RENAME TO items",
    );
    h.tables = vec!["items".into(), "other".into(), "log".into()];
    h.exec(
        "INSERT INTO items VALUES (4, 'd', 40); INSERT OR REPLACE INTO items VALUES (4, 'e', 41)",
    );
    h.check("after alter with user trigger and view");
}

#[test]
fn r18_without_rowid_alters() {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE w(a TEXT NOT NULL COLLATE NOCASE, b INTEGER NOT NULL, v, PRIMARY KEY (a, b)) WITHOUT ROWID;
         INSERT INTO w VALUES ('A', 1, 'x'), ('b', 2, 'y');",
    );
    h.replicate("w");
    alter(
        &h,
        "ALTER TABLE w ADD COLUMN c DEFAULT 0; ALTER TABLE w RENAME COLUMN a TO aa",
    );
    h.exec(
        "INSERT OR REPLACE INTO w VALUES ('a', 1, 'z', 5); UPDATE w SET aa = 'B' WHERE aa = 'b'",
    );
    h.check("without rowid after alter");
    alter(
        &h,
        "ALTER TABLE w DROP COLUMN v; CREATE UNIQUE INDEX wc ON w(c)",
    );
    h.exec("REPLACE INTO w VALUES ('q', 9, 5)");
    h.check("without rowid after drop column + unique");
}

/// The rebuild idiom: drop a table, rename its replacement to its name.
#[test]
fn r19_drop_then_rename_into_its_name() {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE a(id INTEGER PRIMARY KEY, x);
         CREATE TABLE a_new(id INTEGER PRIMARY KEY, x, y);
         INSERT INTO a VALUES (1, 'a1'); INSERT INTO a_new VALUES (1, 'a1', 'y1');",
    );
    h.replicate("a");
    h.replicate("a_new");
    h.check("after replicate");
    alter(&h, "DROP TABLE a; ALTER TABLE a_new RENAME TO a");
    h.tables = vec!["a".into()];
    h.exec("INSERT INTO a VALUES (2, 'a2', 'y2')");
    h.check("after DROP a; RENAME a_new TO a");
}

#[test]
fn r20_resync_in_a_transaction_that_wrote_the_table() {
    let mut h = alter_fixture();
    h.exec("BEGIN; DELETE FROM t WHERE id = 1; UPDATE t SET v = 'B' WHERE id = 2; INSERT INTO t VALUES (3, 'c', 30);");
    let r = h
        .conn()
        .query_row("SELECT aerodb_resync('t')", [], |r| r.get::<_, i64>(0));
    eprintln!("r20 resync: {r:?}");
    h.exec("INSERT INTO t VALUES (4, 'd', 40); UPDATE t SET w = 0 WHERE id = 3; COMMIT");
    h.check("after resync in a writing transaction");
    h.exec("BEGIN; DELETE FROM t WHERE id = 2;");
    let r = h.conn().query_row(
        "SELECT aerodb_alter('ALTER TABLE other ADD COLUMN q')",
        [],
        |r| r.get::<_, i64>(0),
    );
    eprintln!("r20 alter: {r:?}");
    let r = h
        .conn()
        .query_row("SELECT aerodb_replicate('t')", [], |r| r.get::<_, i64>(0));
    eprintln!("r20 replicate: {r:?}");
    h.exec("COMMIT");
    h.check("after replicate in a writing transaction");
}
