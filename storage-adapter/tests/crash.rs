//! Crash safety, proven by killing processes: `aerodb catch-up` applies a
//! large backlog in small segments and is killed with SIGKILL at many
//! points; after every kill the replica's tables equal the primary's content
//! at the replica's committed CommitId (data and position commit in one
//! SQLite transaction), and a restart resumes from there until it has
//! everything, nothing lost, nothing applied twice (rules W2, T1).

use rusqlite::{Connection, OpenFlags};
mod common;

use common::{model_at, write_backlog};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// Commits after the schema record.
/// Enough commits that, however far a killed process got past the line
/// that triggered the kill (a loaded machine lets it run on), the test
/// still kills it at 20 or more points.
const BACKLOG: i64 = 6000;

/// (applied CommitId, table content) as committed in the replica file, read
/// in one read transaction.
fn replica_state(path: &Path) -> (i64, BTreeMap<i64, i64>) {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open replica");
    let tx = conn.unchecked_transaction().expect("read transaction");
    let applied: i64 = tx
        .query_row(
            "SELECT applied_commit_id FROM aerodb_replica_position",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    let rows = match tx.prepare("SELECT id, v FROM t") {
        Ok(mut s) => s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows"),
        Err(_) => BTreeMap::new(),
    };
    (applied, rows)
}

#[test]
fn sigkill_during_catch_up_loses_nothing_and_applies_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = dir.path().join("primary.db");
    let replica = dir.path().join("replica.db");
    write_backlog(&primary, BACKLOG);
    let head = BACKLOG + 1;

    let mut kills = 0;
    let mut last_applied = 0;
    for round in 0.. {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aerodb"))
            .args(["catch-up", "--segment-bytes", "1500", "--primary"])
            .arg(&primary)
            .arg("--replica")
            .arg(&replica)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("aerodb starts");
        let stdout = child.stdout.take().expect("stdout piped");
        // Kill after a varying number of applied segments: the process is
        // then anywhere in its next apply (reading, inside the SQLite
        // transaction, committing). We wait on its output, never on time.
        let kill_after = 1 + (round * 7) % 5;
        let mut applied_lines = 0;
        let mut finished = false;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("utf-8 output");
            if line.starts_with("caught up") {
                finished = true;
            }
            if line.starts_with("applied segment") {
                applied_lines += 1;
                if applied_lines == kill_after {
                    break;
                }
            }
        }
        if finished {
            let status = child.wait().expect("exit");
            assert!(status.success(), "catch-up failed: {status}");
            break;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        kills += 1;

        let (applied, rows) = replica_state(&replica);
        assert!(
            applied >= last_applied,
            "round {round}: position went back from {last_applied} to {applied}"
        );
        assert_eq!(
            rows,
            model_at(applied),
            "round {round}: replica at commit {applied} differs from the primary"
        );
        last_applied = applied;
        assert!(round < 10_000, "no progress");
    }
    let (applied, rows) = replica_state(&replica);
    assert_eq!(applied, head);
    assert_eq!(rows, model_at(head));
    assert!(kills >= 20, "only {kills} kill points");
    println!("kill points: {kills}; backlog {BACKLOG} commits");
}
