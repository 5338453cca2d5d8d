//! Never overwrite a user's data (issue 10 item 6): a replica started on a
//! file that already holds a table named like a replicated one refuses the
//! schema record (or the snapshot) that would replace it, naming the
//! table, and the user's rows stay as they were; a primary is never made a
//! replica too (`aerodb catch-up` included). The old code emptied the
//! user's table and filled it with the primary's rows.

use replication::runtime::Config;
use std::path::Path;
use std::time::{Duration, Instant};
use storage_adapter::primary::Primary;
use storage_adapter::replica::ReplicaDb;
use storage_adapter::runtime::Replica;

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

const T: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)";

fn primary(path: &Path) -> Primary {
    let p = Primary::open(path).expect("primary");
    p.connection().execute_batch(T).expect("table");
    p.replicate("t").expect("replicate");
    for id in 1..=3 {
        p.connection()
            .execute("INSERT INTO t VALUES (?1, 'primary ' || ?1)", [id])
            .expect("insert");
    }
    p
}

/// A file holding the user's own `t`, with the same definition.
fn users_file(path: &Path) {
    let c = rusqlite::Connection::open(path).expect("open");
    c.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; {T}; INSERT INTO t VALUES (1, 'mine'), (42, 'also mine');"
    ))
    .expect("the user's table");
}

fn rows(path: &Path) -> Vec<(i64, String)> {
    rusqlite::Connection::open(path)
        .and_then(|c| {
            c.prepare("SELECT id, v FROM t ORDER BY id")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .expect("rows")
}

fn refused_naming_t(replica: &Replica) {
    let s = replica
        .wait_until(deadline(), |s| replication::runtime::is_blocked(&s.global))
        .expect("blocked, not applied");
    assert!(
        s.global
            .to_string()
            .contains("already holds a table 't' that replication did not create"),
        "{}",
        s.global
    );
}

/// Puts the user's own `t` in `r_path`, starts a replica of `p_path` on
/// it: refused naming `t`, and the user's rows are untouched.
fn starting_on_the_users_file_keeps_its_rows(p_path: &Path, r_path: &Path) {
    users_file(r_path);
    let before = rows(r_path);
    let replica = Replica::start_from_file(r_path, p_path, Config::default()).expect("starts");
    refused_naming_t(&replica);
    replica.stop();
    assert_eq!(rows(r_path), before, "the user's rows are untouched");
}

#[test]
fn a_users_table_named_like_a_replicated_one_is_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let _p = primary(&p_path);
    starting_on_the_users_file_keeps_its_rows(&p_path, &r_path);
}

#[test]
fn a_snapshot_never_replaces_a_users_table_either() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = primary(&p_path);
    let head = p.head().expect("head");
    p.truncate_wal(head)
        .expect("truncate: a new replica bootstraps");
    starting_on_the_users_file_keeps_its_rows(&p_path, &r_path);
}

#[test]
fn a_primary_is_never_made_a_replica_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, q_path) = (dir.path().join("p.db"), dir.path().join("q.db"));
    let _p = primary(&p_path);
    let _q = primary(&q_path);
    let e = ReplicaDb::open(&q_path).err().expect("refused");
    assert!(e.to_string().contains("it is an AeroDB primary"), "{e}");
    let c = rusqlite::Connection::open(&q_path).expect("open");
    let replica_tables: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'aerodb_replica%'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(replica_tables, 0, "nothing was created in the primary");
}

/// Replica write protection (issue 10 item 5): on a replica, a write to a
/// replicated table or to the state store from any connection but the
/// runtime's is refused (with the extension loaded: a clear message; without
/// it the guard cannot even run), the rows stay as they were, and
/// replication goes on. The old code let all of them through, and some
/// diverged silently while reads were allowed.
#[test]
fn writes_to_a_replica_are_refused_except_replications_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = primary(&p_path);
    let replica = Replica::start_from_file(&r_path, &p_path, Config::default()).expect("start");
    replica
        .wait_for(p.head().expect("head"), deadline())
        .expect("caught up");
    let before = rows(&r_path);

    // Without the extension, while the runtime runs.
    let plain = rusqlite::Connection::open(&r_path).expect("open");
    for sql in [
        "INSERT INTO t VALUES (99, 'not replicated')",
        "UPDATE t SET v = 'changed' WHERE id = 1",
        "DELETE FROM t WHERE id = 2",
        "UPDATE aerodb_replica_position SET applied_commit_id = applied_commit_id + 1",
        "DELETE FROM aerodb_replica_transitions",
    ] {
        let e = plain.execute(sql, []).expect_err(sql);
        assert!(
            e.to_string()
                .contains("no such function: aerodb_replica_table_written_only_by_replication"),
            "{sql}: {e}"
        );
    }
    assert_eq!(rows(&r_path), before);

    // Replication goes on through its own connection.
    p.connection()
        .execute("INSERT INTO t VALUES (4, 'primary 4')", [])
        .expect("insert");
    replica
        .wait_for(p.head().expect("head"), deadline())
        .expect("follows");
    let want = rows(&p_path);
    assert_eq!(rows(&r_path), want);
    let generation = replica.view().applied.generation;
    replica.stop();

    // With the extension loaded, in the stock shell: a clear message.
    let run = aerodb_e2e::shell(
        &r_path,
        &format!(
            ".load {}\nINSERT INTO t VALUES (99, 'x');\nUPDATE aerodb_replica_state SET global_state = 'Ready';\nSELECT count(*) FROM t;\n",
            aerodb_e2e::extension().display()
        ),
    );
    assert!(
        run.stderr.contains(&format!(
            "replica table 't' is written only by replication (AeroDB replica of generation {generation}); write to the primary"
        )),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("'aerodb_replica_state' is the replica's state store: only the AeroDB runtime writes it"),
        "{run:?}"
    );
    assert_eq!(run.stdout.trim(), want.len().to_string(), "{run:?}");
    assert_eq!(rows(&r_path), want);
}

/// Found in review: a replicated table dropped on the replica (DDL is not
/// guarded) made the replica fail to start at all; its next change must
/// block replication with the reason instead.
#[test]
fn a_replicated_table_dropped_on_the_replica_blocks_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = primary(&p_path);
    let replica = Replica::start_from_file(&r_path, &p_path, Config::default()).expect("start");
    replica
        .wait_for(p.head().expect("head"), deadline())
        .expect("caught up");
    replica.stop();
    rusqlite::Connection::open(&r_path)
        .and_then(|c| c.execute_batch("DROP TABLE t"))
        .expect("DROP TABLE is not guarded");
    p.connection()
        .execute("INSERT INTO t VALUES (9, 'after the drop')", [])
        .expect("insert");
    let replica = Replica::start_from_file(&r_path, &p_path, Config::default())
        .expect("starts despite the missing table");
    let s = replica
        .wait_until(deadline(), |s| replication::runtime::is_blocked(&s.global))
        .expect("blocked");
    assert!(
        s.global.to_string().contains("'t'") || s.global.to_string().contains(" t"),
        "{}",
        s.global
    );
    replica.stop();
}

/// Found in review: re-replicating a table recreated with its name in
/// another case ("Users" dropped, "users" created) blocked every replica
/// (`table users already exists`); names match case-insensitively.
#[test]
fn a_table_recreated_with_its_name_in_another_case_replicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = Primary::open(&p_path).expect("primary");
    p.connection()
        .execute_batch("CREATE TABLE Users(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO Users VALUES (1, 'a');")
        .expect("table");
    p.replicate("Users").expect("replicate");
    let replica = Replica::start_from_file(&r_path, &p_path, Config::default()).expect("start");
    replica
        .wait_for(p.head().expect("head"), deadline())
        .expect("caught up");
    p.connection()
        .execute_batch("DROP TABLE Users; CREATE TABLE users(id INTEGER PRIMARY KEY, v TEXT, w INT); INSERT INTO users VALUES (2, 'b', 3);")
        .expect("recreated");
    p.replicate("users").expect("replicate again");
    let head = p.head().expect("head");
    // Between the DROP and the new aerodb_replicate the primary serves no
    // WAL (SOURCE_UNAVAILABLE: read-blocked); its next commits resume it.
    replica
        .wait_until(deadline(), |s| {
            s.applied.commit_id == head && !replication::runtime::is_blocked(&s.global)
        })
        .expect("follows the recreated table");
    replica.stop();
    let got: Vec<(i64, String, i64)> = rusqlite::Connection::open(&r_path)
        .and_then(|c| {
            c.prepare("SELECT id, v, w FROM users ORDER BY id")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .expect("rows");
    assert_eq!(got, vec![(2, "b".to_string(), 3)]);
}
