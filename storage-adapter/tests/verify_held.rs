//! Adversarial review of aerodb verify (helper-14): scenarios that held (VACUUM, snapshot bootstrap, aerodb_alter, spanning transactions, odd keys, generated columns, quoted names, concurrent primary writes).

mod verify_common;

use rusqlite::Connection;
use storage_adapter::primary::Primary;
use storage_adapter::verify::verify;
use verify_common::*;

#[test]
fn x_vacuum_both() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value+1 FROM s WHERE value < 500) SELECT value, randomblob(500) FROM s;",
        &["t"],
    );
    primary
        .connection()
        .execute_batch("DELETE FROM t WHERE id % 3 = 0; VACUUM;")
        .unwrap();
    assert_equal(&p, &r, "vacuum primary");
    behind_the_back(&r).execute_batch("VACUUM").unwrap();
    assert_equal(&p, &r, "vacuum replica");
}

#[test]
fn x_snapshot_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, _r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 1.0), (2, 'x'), (3, x'00'), (4, -0.0);
         CREATE TABLE k(name TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, n) WITHOUT ROWID; INSERT INTO k VALUES ('a', 1), ('B', 2);",
        &["t", "k"],
    );
    primary
        .connection()
        .execute_batch("INSERT INTO t VALUES (5, 5); UPDATE k SET n = 3;")
        .unwrap();
    let head = primary.head().unwrap();
    primary.truncate_wal(head).unwrap();
    let r2 = dir.path().join("r2.db");
    catch_up(&p, &r2);
    assert_equal(&p, &r2, "bootstrapped");
    primary
        .connection()
        .execute_batch("INSERT INTO t VALUES (6, 6)")
        .unwrap();
    assert_equal(&p, &r2, "bootstrapped then behind");
}

#[test]
fn x_alter() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
        &["t"],
    );
    primary
        .alter("ALTER TABLE t ADD COLUMN w TEXT DEFAULT 'dflt'")
        .unwrap();
    assert_equal(&p, &r, "add column");
    primary.alter("ALTER TABLE t RENAME TO u").unwrap();
    assert_equal(&p, &r, "rename to");
    primary
        .alter("ALTER TABLE u RENAME COLUMN v TO vv")
        .unwrap();
    assert_equal(&p, &r, "rename column");
    primary.alter("ALTER TABLE u DROP COLUMN vv").unwrap();
    assert_equal(&p, &r, "drop column");
    primary
        .connection()
        .execute_batch("INSERT INTO u VALUES (3, 'c')")
        .unwrap();
    assert_equal(&p, &r, "after");
}

#[test]
fn x_spanning() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v);",
        &["t"],
    );
    primary
        .connection()
        .query_row("SELECT aerodb_capture_chunk_bytes(1000)", [], |_| Ok(()))
        .unwrap();
    primary.connection().execute_batch("BEGIN; INSERT INTO t WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value+1 FROM s WHERE value < 200) SELECT value, randomblob(300) FROM s; UPDATE t SET v = 1 WHERE id < 50; COMMIT;").unwrap();
    primary.connection().execute_batch("BEGIN; INSERT INTO t WITH RECURSIVE s(value) AS (SELECT 201 UNION ALL SELECT value+1 FROM s WHERE value < 400) SELECT value, randomblob(300) FROM s; COMMIT;").unwrap();
    assert_equal(&p, &r, "spanning");
}

#[test]
fn x_keys_and_generated() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(
        dir.path(),
        r#"CREATE TABLE n(k TEXT COLLATE NOCASE NOT NULL, j TEXT COLLATE RTRIM NOT NULL, v, PRIMARY KEY (j, k DESC)) WITHOUT ROWID;
           CREATE TABLE g(id INTEGER PRIMARY KEY, a, b AS (a * 2), c AS (a || 'x') VIRTUAL);
           CREATE TABLE "we ""ird" ("c ol" NOT NULL PRIMARY KEY, "x""y");
           CREATE TABLE d(id INTEGER PRIMARY KEY DESC NOT NULL, v);
           CREATE TABLE m(k PRIMARY KEY NOT NULL, v);"#,
        &["n", "g", "we \"ird", "d", "m"],
    );
    primary.connection().execute_batch(
        r#"INSERT INTO n VALUES ('a', 'x', 1), ('B', 'x ', 2), ('c', 'Y', 3), ('Ä', 'y', 4);
           INSERT INTO g(id, a) VALUES (1, 1), (2, 'q'), (3, NULL);
           INSERT INTO "we ""ird" VALUES (1, 1), ('1', 2), (x'31', 3), (1.5, 4);
           INSERT INTO d VALUES (3, 'c'), (1, 'a'), (2, 'b');
           INSERT INTO m VALUES (1, 'i'), ('1', 't'), (x'01', 'b'), (2.5, 'r'), ('a', 'x'), ('A', 'y');
           UPDATE n SET k = 'A' WHERE k = 'a';"#,
    ).unwrap();
    assert_equal(&p, &r, "keys");
}

#[test]
fn x_unreplicate_and_later() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); CREATE TABLE u(id INTEGER PRIMARY KEY, v); INSERT INTO u VALUES (1, 1);",
        &["t"],
    );
    primary.replicate("u").unwrap();
    assert_equal(&p, &r, "later");
    primary.unreplicate("t").unwrap();
    assert_equal(&p, &r, "unreplicated");
}

#[test]
fn x_concurrent_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v);",
        &["t"],
    );
    for i in 0..300 {
        primary
            .connection()
            .execute("INSERT INTO t VALUES (?1, randomblob(2000))", [i])
            .unwrap();
    }
    drop(primary);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, p2) = (stop.clone(), p.clone());
    let w = std::thread::spawn(move || {
        let primary = Primary::open(&p2).unwrap();
        let mut i = 1000;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            primary
                .connection()
                .execute("INSERT INTO t VALUES (?1, ?1)", [i])
                .unwrap();
            primary
                .connection()
                .execute("UPDATE t SET v = v || 'x' WHERE id = ?1", [i % 300])
                .unwrap();
            i += 1;
        }
        i
    });
    for _ in 0..5 {
        let v = verify(&p, &r).unwrap();
        assert_eq!(v.difference, None, "{v:?}");
        let at: i64 = Connection::open(&r)
            .unwrap()
            .query_row(
                "SELECT applied_commit_id FROM aerodb_replica_position",
                [],
                |x| x.get(0),
            )
            .unwrap();
        assert_eq!(at as u64, v.commit_id.0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    eprintln!("writes {}", w.join().unwrap());
}
