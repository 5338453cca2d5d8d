//! `aerodb verify` of a running replica (issue 10 item 8): the runtime is
//! held through its control socket (pipeline stopped, the hold recorded),
//! verify brings the replica to exactly the primary's head and digests it,
//! then releases it and the runtime goes on from there. And a stopped
//! replica whose Receiver stored segments it had not applied: verify
//! applies them (marked Applied) so the next start finds a consistent
//! state store.

mod serve_common;
mod verify_common;

use replication::runtime::{Config, Storage};
use replication::wal::CommitId;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use storage_adapter::primary::{Primary, PrimaryWalReader};
use storage_adapter::runtime::{Replica, SqliteStorage};
use storage_adapter::verify::{verify, verify_url};
use verify_common::*;

const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
     CREATE TABLE k(name TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, n) WITHOUT ROWID;
     INSERT INTO t VALUES (1, 'one'), (2, 2.0), (3, x'03');
     INSERT INTO k VALUES ('a', 1.5), ('B', NULL);";

fn start(r: &Path, p: &Path) -> Replica {
    Replica::start_from_file(r, p, Config::default()).unwrap()
}

/// A primary, a replica caught up, and a runtime running on it.
fn running() -> (tempfile::TempDir, Primary, PathBuf, PathBuf, Replica) {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t", "k"]);
    let replica = start(&r, &p);
    (dir, primary, p, r, replica)
}

/// Stops `replica`, which must end without a recorded error.
fn stop_clean(replica: Replica) {
    let view = replica.stop();
    assert!(
        view.components.iter().all(|c| c.last_error.is_none()),
        "{:?}",
        view.components
    );
}

/// Waits (client-side deadline, never reached when things work) until the
/// running replica has applied `head` and is no longer held.
fn wait_caught_up(replica: &Replica, head: CommitId) {
    replica
        .wait_until(serve_common::deadline(), |v| {
            v.applied.commit_id >= head
                && !v.components.iter().any(|c| c.state.starts_with("Held by"))
        })
        .unwrap_or_else(|v| panic!("not caught up to {head}: {v:?}"));
}

fn control(r: &Path) -> PathBuf {
    let mut p = r.as_os_str().to_owned();
    p.push(".aerodb-control");
    PathBuf::from(p)
}

/// Holds the running replica `r` as `who` over its control socket, as a
/// verify in another process would; the answer line and the connection.
fn hold(r: &Path, who: &str) -> (String, UnixStream) {
    let mut s = UnixStream::connect(control(r)).unwrap();
    writeln!(s, "hold {who}").unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    (line.trim_end().to_owned(), s)
}

fn commit(primary: &Primary, n: i64) {
    primary
        .connection()
        .execute(
            "INSERT INTO t VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET v = excluded.v",
            rusqlite::params![n, format!("v{n}")],
        )
        .unwrap();
}

#[test]
fn a_stopped_replica_with_received_but_unapplied_segments_is_verified_and_starts_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t", "k"]);
    let applied: i64 = rusqlite::Connection::open(&r)
        .unwrap()
        .query_row(
            "SELECT applied_commit_id FROM aerodb_replica_position",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let applied = CommitId(applied as u64);
    for n in 10..15 {
        commit(&primary, n);
    }
    // The Receiver of a runtime stopped under load stored commits it had
    // not applied yet: two segments, as its WAL storage persists them.
    let reader = PrimaryWalReader::open(&p).unwrap();
    let storage = SqliteStorage::new(&r);
    let mut wal = storage.wal_storage().unwrap();
    let mut from = CommitId(applied.0 + 1);
    for until in [CommitId(applied.0 + 2), CommitId(applied.0 + 5)] {
        let bytes = reader
            .segment_until(from, Some(until), 1 << 20)
            .unwrap()
            .unwrap();
        wal.persist(from, until, &bytes).unwrap();
        from = until.next();
    }
    drop(wal);
    // The primary went on.
    for n in 15..20 {
        commit(&primary, n);
    }
    let v = verify(&p, &r).unwrap();
    assert_eq!(v.difference, None, "{v:?}");
    assert_eq!(v.held, None, "no runtime ran");
    assert_eq!(v.commit_id, primary.head().unwrap());
    // Its stored segments were applied and recorded Applied, not left
    // behind the position (a torn state store the next start refuses).
    let states: Vec<(i64, String)> = rusqlite::Connection::open(&r)
        .unwrap()
        .prepare("SELECT first_commit_id, state FROM aerodb_replica_segments WHERE first_commit_id > ?1 ORDER BY 1")
        .unwrap()
        .query_map([applied.0 as i64], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let a = applied.0 as i64;
    assert_eq!(
        states,
        [
            (a + 1, "Applied".to_string()),
            (a + 3, "Applied".to_string())
        ]
    );
    let replica = start(&r, &p);
    commit(&primary, 20);
    let head = primary.head().unwrap();
    wait_caught_up(&replica, head);
    stop_clean(replica);
    assert_equal(&p, &r, "after the restart");
}

#[test]
fn a_running_replica_under_writes_is_held_verified_equal_and_released() {
    let (_dir, primary, p, r, replica) = running();
    // A writer commits all along while verify runs, over and over.
    let (done_tx, done) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        for n in 100..700 {
            commit(&primary, n);
            if n % 7 == 0 {
                primary
                    .connection()
                    .execute("DELETE FROM t WHERE id = ?1", [n - 50])
                    .unwrap();
            }
        }
        done_tx.send(()).unwrap();
        primary
    });
    let mut verified = 0;
    loop {
        let finished = done.try_recv().is_ok();
        let v = verify(&p, &r).unwrap();
        assert_eq!(v.difference, None, "{v:?}");
        let held = v.held.clone().expect("the runtime was held");
        assert!(held.starts_with("held at applied commit "), "{held}");
        assert!(
            held.contains(&format!(
                "released by aerodb verify (pid {}) at applied commit {}",
                std::process::id(),
                v.commit_id
            )),
            "{held}"
        );
        verified += 1;
        if finished {
            break;
        }
    }
    assert!(verified >= 2, "{verified}");
    let primary = writer.join().unwrap();
    let head = primary.head().unwrap();
    // Released each time: it replicates on its own again.
    wait_caught_up(&replica, head);
    let supervisor = replica
        .components()
        .into_iter()
        .find(|c| c.component == replication::runtime::Component::Supervisor)
        .unwrap();
    assert!(supervisor.last_error.is_none(), "{supervisor:?}");
    // And from another process, the CLI: exit 0, the hold reported.
    let (code, out, err) = cli(&p, &r);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("the running replica runtime was held at applied commit"),
        "{out}"
    );
    wait_caught_up(&replica, head);
    stop_clean(replica);
}

#[test]
fn a_row_changed_behind_a_running_replicas_back_is_named_and_replication_goes_on() {
    let (_dir, primary, p, r, replica) = running();
    behind_the_back(&r)
        .execute("UPDATE t SET v = 'changed' WHERE id = 1", [])
        .unwrap();
    commit(&primary, 50);
    let v = verify(&p, &r).unwrap();
    let d = v.difference.expect("a difference");
    assert_eq!(d.table, "t");
    assert_eq!(
        d.detail,
        "the row with key (1) is (1, 'one') on the primary, (1, 'changed') on the replica"
    );
    let (code, out, _) = cli(&p, &r);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("table 't'"), "{out}");
    // The hold was released both times: the next commit arrives.
    commit(&primary, 51);
    wait_caught_up(&replica, primary.head().unwrap());
    replica.stop();
}

#[test]
fn a_holder_that_goes_away_releases_the_replica_and_a_second_hold_is_refused() {
    let (_dir, primary, p, r, replica) = running();
    let head = primary.head().unwrap();
    wait_caught_up(&replica, head);
    let (answer, holder) = hold(&r, "a test");
    assert_eq!(answer, format!("ok held at applied commit {head}"));
    // The hold is recorded: every pipeline component's state names it.
    let recorded: Vec<String> = rusqlite::Connection::open(&r)
        .unwrap()
        .prepare("SELECT state FROM aerodb_replica_components WHERE component IN ('WAL Receiver', 'WAL Validator', 'WAL Applier')")
        .and_then(|mut s| s.query_map([], |row| row.get(0))?.collect())
        .unwrap();
    assert_eq!(
        recorded,
        vec![format!("Held by a test (applied commit {head})"); 3]
    );
    // Another verify meanwhile is refused, with who holds it.
    let e = verify(&p, &r).unwrap_err().to_string();
    assert!(
        e.contains("its running replica runtime refused to hold it: not held: the replica is already held by a test"),
        "{e}"
    );
    // A malformed request changes nothing.
    let mut other = UnixStream::connect(control(&r)).unwrap();
    writeln!(other, "drop everything").unwrap();
    let mut answer = String::new();
    BufReader::new(other).read_line(&mut answer).unwrap();
    assert_eq!(
        answer.trim_end(),
        "refused unknown request (expected: hold <who>)"
    );
    // A commit while held is not applied: the release finds the replica
    // where the hold left it.
    commit(&primary, 60);
    let mut holder = holder;
    writeln!(holder, "release").unwrap();
    let mut answer = String::new();
    BufReader::new(holder.try_clone().unwrap())
        .read_line(&mut answer)
        .unwrap();
    assert_eq!(
        answer.trim_end(),
        format!("ok released by a test at applied commit {head}")
    );
    let head = primary.head().unwrap();
    wait_caught_up(&replica, head);
    // A holder that goes away without a word (as a killed verify's socket
    // closes): the replica is released all the same.
    let (answer, holder) = hold(&r, "another test");
    assert_eq!(answer, format!("ok held at applied commit {head}"));
    drop(holder);
    replica
        .wait_until(serve_common::deadline(), |v| {
            v.components.iter().any(|c| {
                c.last_transition.as_deref()
                    == Some(&format!(
                        "released by another test at applied commit {head}"
                    ))
            })
        })
        .unwrap_or_else(|v| panic!("not released: {v:?}"));
    commit(&primary, 61);
    wait_caught_up(&replica, primary.head().unwrap());
    replica.stop();
    assert_equal(&p, &r, "after the release");
}

#[test]
fn a_stop_while_held_ends_the_runtime_and_closes_the_holders_connection() {
    let (_dir, primary, p, r, replica) = running();
    wait_caught_up(&replica, primary.head().unwrap());
    let (answer, holder) = hold(&r, "a test");
    assert!(answer.starts_with("ok held at applied commit"), "{answer}");
    let view = replica.stop();
    assert!(!view.running);
    assert_eq!(view.global.to_string(), "Disabled");
    // The holder's connection ends (nothing is held any more) and the
    // socket is gone with the runtime.
    let mut rest = String::new();
    BufReader::new(holder).read_line(&mut rest).unwrap();
    assert_eq!(rest, "");
    assert!(!control(&r).exists());
    // The next start is a clean one, and verify finds it equal.
    commit(&primary, 70);
    let replica = start(&r, &p);
    wait_caught_up(&replica, primary.head().unwrap());
    let v = verify(&p, &r).unwrap();
    assert_eq!(v.difference, None);
    assert!(v.held.is_some());
    replica.stop();
}

#[test]
fn a_running_replica_is_verified_against_a_served_primary() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t", "k"]);
    let token = serve_common::token_file(dir.path());
    let server = serve_common::Server::start(&p, &token, 0);
    let replica =
        Replica::start_from_url(&r, &server.url(), serve_common::TOKEN, Config::default()).unwrap();
    for n in 80..90 {
        commit(&primary, n);
    }
    let v = verify_url(&server.url(), serve_common::TOKEN, None, &r).unwrap();
    assert_eq!(v.difference, None, "{v:?}");
    assert!(v.held.is_some());
    commit(&primary, 90);
    wait_caught_up(&replica, primary.head().unwrap());
    replica.stop();
}
