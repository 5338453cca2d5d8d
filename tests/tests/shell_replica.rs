//! The replica side of the SQL surface, driven through the real `sqlite3`
//! shell (DESIGN 6): `aerodb_replica_start` / `aerodb_replica_stop` /
//! `aerodb_wait`, the views `replica_state`, `replica_components`,
//! `replica_segments`, `replica_transitions`, `read_safety(min)`, bad calls,
//! and the runtime's life inside a shell (stop, `.quit`, closing). Waits are
//! on the shell's own output (it flushes after every statement) or on
//! `aerodb_wait`, never on sleeps.

use aerodb_e2e::{extension, shell};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

fn load() -> String {
    format!(".load {}\n", extension().display())
}

/// A primary with table `t`; commit k+1 inserts row k (commit 1 is the
/// schema record). Returns its path.
fn primary(dir: &Path, rows: u32) -> PathBuf {
    let p = dir.join("p.db");
    let mut script = format!(
        "{}.bail on
PRAGMA journal_mode = WAL;
SELECT aerodb_primary_init() IS NOT NULL;
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);
SELECT aerodb_replicate('t');
",
        load()
    );
    for k in 1..=rows {
        script.push_str(&format!("INSERT INTO t VALUES ({k}, 'row {k}');\n"));
    }
    let run = shell(&p, &script);
    assert!(run.ok, "{run:?}");
    p
}

fn write_rows(p: &Path, ids: std::ops::RangeInclusive<u32>) -> u64 {
    let mut script = format!("{}.bail on\n", load());
    for k in ids {
        script.push_str(&format!("INSERT INTO t VALUES ({k}, 'row {k}');\n"));
    }
    script.push_str("SELECT aerodb_last_commit_id();\n");
    let run = shell(p, &script);
    assert!(run.ok, "{run:?}");
    run.stdout.trim().parse().expect("a CommitId")
}

fn replica_prelude(p: &Path, options: &str) -> String {
    format!(
        "{}PRAGMA journal_mode = WAL;\nSELECT aerodb_replica_start('{}', '{options}');\n",
        load(),
        p.display()
    )
}

fn rows_of(db: &Path) -> String {
    let run = shell(
        db,
        "SELECT group_concat(id || '=' || v, ',') FROM (SELECT * FROM t ORDER BY id);\n",
    );
    assert!(run.ok, "{run:?}");
    run.stdout
}

#[test]
fn the_sql_surface_is_exactly_the_documented_one() {
    // Nothing added or lost by accident: the functions and modules that
    // loading adds, against DESIGN section 6 (plus the three internal
    // functions capture triggers call).
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("x.db");
    let list = "SELECT 'f:' || name FROM (SELECT DISTINCT name FROM pragma_function_list) UNION ALL SELECT 'm:' || name FROM pragma_module_list ORDER BY 1;\n";
    let before = shell(&db, list);
    let after = shell(&db, &format!("{}{list}", load()));
    assert!(before.ok && after.ok, "{before:?} {after:?}");
    let set = |s: &str| s.lines().map(str::to_owned).collect::<BTreeSet<_>>();
    let (before, after) = (set(&before.stdout), set(&after.stdout));
    assert!(
        before.is_subset(&after),
        "loading removed {:?}",
        before.difference(&after)
    );
    let added: Vec<&str> = after.difference(&before).map(String::as_str).collect();
    assert_eq!(
        added,
        vec![
            // DESIGN 6, primary.
            "f:aerodb_alter", // issue 10: DDL on replicated tables, replicated as statements
            "f:aerodb_capture_chunk_bytes", // issue 9: the spill chunk of this connection
            "f:aerodb_capture_row", // internal: called by capture triggers
            "f:aerodb_head",
            "f:aerodb_last_commit_id",
            "f:aerodb_primary_init",
            // DESIGN 6, replica.
            "f:aerodb_replica_resume", // issue 11: an operator lifts a resumable block
            "f:aerodb_replica_start",
            "f:aerodb_replica_stop",
            "f:aerodb_replica_table_written_only_by_replication", // issue 10: replica write guard
            "f:aerodb_replicate",
            "f:aerodb_resync", // issue 10: ship a replicated table again (repair)
            "f:aerodb_truncate_wal", // issue 5: WAL retention
            "f:aerodb_unreplicate", // issue 10: stop replicating a table
            "f:aerodb_version", // issue 12: same string as `aerodb --version`
            "f:aerodb_wait",
            "m:aerodb_capture", // internal: capture triggers join it to the transaction
            "m:read_safety",
            "m:replica_components",
            "m:replica_segments",
            "m:replica_state",
            "m:replica_transitions",
        ]
    );
}

#[test]
fn a_replica_in_a_second_shell_follows_and_explains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(dir.path(), 8);
    let token = write_rows(&p, 9..=10);
    let r = dir.path().join("r.db");
    let run = shell(
        &r,
        &format!(
            "{}SELECT aerodb_wait({token}, 60000);
SELECT applied_commit_id, role FROM replica_state;
SELECT allowed, reason_code FROM read_safety({token});
SELECT allowed, reason_code, reason FROM read_safety({});
SELECT component, live_state IS NOT NULL FROM replica_components;
SELECT count(*) > 1, min(first_commit_id), max(last_commit_id), sum(state = 'Applied') = count(*) FROM replica_segments;
SELECT to_state FROM replica_transitions WHERE seq = 1;
SELECT aerodb_replica_stop();
SELECT global_state, last_transition_reason FROM replica_state;
",
            replica_prelude(&p, r#"{"segment_bytes": 200}"#),
            token + 1
        ),
    );
    assert!(run.ok && run.stderr.is_empty(), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "wal");
    assert_eq!(lines[1], "0", "started at applied commit 0");
    assert_eq!(lines[2], token.to_string());
    assert_eq!(lines[3], format!("{token}|replica"));
    assert_eq!(lines[4], "1|ALLOWED");
    assert!(
        lines[5].starts_with(&format!(
            "0|BEHIND|read refused: it needs commit {}, but the replica in state",
            token + 1
        )),
        "{}",
        lines[5]
    );
    assert!(
        lines[5].contains(&format!("has applied commit {token} (WAL offset")),
        "{}",
        lines[5]
    );
    assert_eq!(
        &lines[6..12],
        [
            "Supervisor|1",
            "WAL Receiver|1",
            "WAL Validator|1",
            "WAL Applier|1",
            "Replica State Store|1",
            "Read Safety Gate|1"
        ]
    );
    assert_eq!(lines[12], format!("1|1|{token}|1"));
    assert_eq!(lines[13], "Initializing");
    assert_eq!(
        lines[14],
        token.to_string(),
        "stop returns the applied CommitId"
    );
    assert_eq!(lines[15], "Disabled|stopped by the application");
    assert_eq!(rows_of(&r), rows_of(&p));
}

/// A `sqlite3` shell kept running, fed statements one at a time.
struct LiveShell {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl LiveShell {
    fn open(db: &Path) -> LiveShell {
        let mut child = Command::new("sqlite3")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sqlite3 runs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        LiveShell {
            child,
            stdin,
            stdout,
        }
    }

    /// Runs statements that print exactly `lines` lines; returns them.
    fn run(&mut self, sql: &str, lines: usize) -> Vec<String> {
        writeln!(self.stdin, "{sql}").expect("shell alive");
        (0..lines)
            .map(|_| {
                let mut l = String::new();
                self.stdout.read_line(&mut l).expect("read");
                l.trim_end().to_owned()
            })
            .collect()
    }

    /// Ends the shell with `.quit`.
    fn quit(mut self) {
        writeln!(self.stdin, ".quit").expect("shell alive");
        assert!(self.child.wait().expect("exits").success());
    }
}

#[test]
fn read_your_writes_from_the_primary_shell_to_the_replica_shell() {
    // The token aerodb_last_commit_id() returns on the primary is what
    // aerodb_wait and read_safety take on the replica.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(dir.path(), 3);
    let r = dir.path().join("r.db");
    let mut replica = LiveShell::open(&r);
    let started = replica.run(&replica_prelude(&p, "{}"), 2);
    assert_eq!(started, ["wal", "0"]);
    for round in 0..5u32 {
        let id = 100 + round;
        let token = write_rows(&p, id..=id);
        let out = replica.run(
            &format!(
                "SELECT aerodb_wait({token}, 60000);\nSELECT allowed, reason_code FROM read_safety({token});\nSELECT v FROM t WHERE id = {id};"
            ),
            3,
        );
        assert_eq!(
            out,
            [token.to_string(), "1|ALLOWED".into(), format!("row {id}")]
        );
    }
    replica.quit();
}

#[test]
fn stop_quit_and_close_each_stop_cleanly_and_the_replica_resumes_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(dir.path(), 5);
    let r = dir.path().join("r.db");
    let mut head = write_rows(&p, 6..=8);
    let prelude = replica_prelude(&p, r#"{"segment_bytes": 150}"#);
    // 1. aerodb_replica_stop().
    let run = shell(
        &r,
        &format!("{prelude}SELECT aerodb_wait({head}, 60000);\nSELECT aerodb_replica_stop();\n"),
    );
    assert!(run.ok && run.stderr.is_empty(), "{run:?}");
    // 2. `.quit` while running.
    head = write_rows(&p, 9..=12);
    let run = shell(
        &r,
        &format!("{prelude}SELECT aerodb_wait({head}, 60000);\n.quit\n"),
    );
    assert!(run.ok && run.stderr.is_empty(), "{run:?}");
    // 3. end of input: the shell closes the connection.
    head = write_rows(&p, 13..=20);
    let run = shell(
        &r,
        &format!("{prelude}SELECT aerodb_wait({head}, 60000);\n"),
    );
    assert!(run.ok && run.stderr.is_empty(), "{run:?}");
    let check = shell(
        &r,
        &format!(
            "{}SELECT count(*) = count(DISTINCT first_commit_id), min(first_commit_id), max(last_commit_id), sum(state <> 'Applied') FROM replica_segments;
SELECT count(*) FROM replica_transitions WHERE to_state = 'Disabled';
SELECT reason FROM replica_transitions WHERE to_state = 'Disabled' ORDER BY seq;
SELECT count(*) FROM replica_transitions WHERE reason LIKE '%unclean%';
",
            load()
        ),
    );
    assert!(check.ok, "{check:?}");
    let lines: Vec<&str> = check.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("1|1|{head}|0"),
        "contiguous, nothing twice"
    );
    assert_eq!(lines[1], "3", "{check:?}");
    assert_eq!(lines[2], "stopped by the application");
    assert_eq!(lines[3], "replica handle dropped");
    assert_eq!(lines[4], "replica handle dropped");
    assert_eq!(lines[5], "0", "every stop was clean");
    assert_eq!(rows_of(&r), rows_of(&p));
}

#[test]
fn a_corrupted_wal_record_on_the_primary_is_rejected_and_explained() {
    // 80 commits, each sealed by its own commit; a byte of commit 31's
    // record is flipped on the primary file after its commit.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(dir.path(), 79);
    {
        let conn = rusqlite::Connection::open(&p).expect("open primary");
        let mut record: Vec<u8> = conn
            .query_row(
                "SELECT record FROM aerodb_commits WHERE commit_id = 31",
                [],
                |r| r.get(0),
            )
            .expect("record of commit 31");
        let n = record.len();
        record[n - 9] ^= 0x01; // the last byte of its row's text value
        conn.execute(
            "UPDATE aerodb_commits SET record = ?1 WHERE commit_id = 31",
            rusqlite::params![record],
        )
        .expect("corrupt");
    }
    let r = dir.path().join("r.db");
    let run = shell(
        &r,
        &format!(
            "{}SELECT aerodb_wait(80, 60000);
SELECT first_commit_id <= 31 AND last_commit_id >= 31, first_wal_offset IS NOT NULL, reason FROM replica_segments WHERE state = 'Rejected';
SELECT global_state, read_status, blocking_reason FROM replica_state;
SELECT allowed, reason_code FROM read_safety(NULL);
SELECT error_code, error_first_commit_id <= 31, error_wal_offset IS NOT NULL FROM replica_components WHERE component = 'WAL Validator';
SELECT applied_commit_id < 31 FROM replica_state;
SELECT count(*), max(id) FROM t;
",
            replica_prelude(&p, r#"{"segment_bytes": 300}"#)
        ),
    );
    assert!(
        run.stderr.contains("aerodb_wait: commit 80 cannot be reached: BLOCKED: read refused: replication is blocked (segment"),
        "{run:?}"
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(&lines[..2], ["wal", "0"], "{run:?}");
    assert!(lines[2].starts_with("1|1|"), "{run:?}");
    assert!(lines[2].contains("record for commit 31"), "{run:?}");
    assert!(
        lines[3].starts_with("Ready|read-blocked|segment ") && lines[3].contains(" rejected: "),
        "{run:?}"
    );
    assert_eq!(lines[4], "0|BLOCKED");
    assert_eq!(lines[5], "CORRUPT|1|1");
    assert_eq!(lines[6], "1");
    // The replica holds exactly the prefix before the rejected segment.
    // Read position and rows in one snapshot, after the runtime stopped:
    // the Applier may still apply segments validated before the rejected
    // one when aerodb_wait reports the block.
    let after = shell(
        &r,
        &format!(
            "{}SELECT applied_commit_id, (SELECT count(*) FROM t), (SELECT max(id) FROM t) FROM replica_state;\n",
            load()
        ),
    );
    let fields: Vec<u64> = after
        .stdout
        .trim()
        .split('|')
        .map(|f| f.parse().expect("a number"))
        .collect();
    let applied = fields[0];
    assert!(applied < 31, "{after:?}");
    assert_eq!(
        format!("{}|{}", fields[1], fields[2]),
        format!("{}|{}", applied - 1, applied - 1)
    );
}

#[test]
fn bad_calls_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(dir.path(), 2);
    let r = dir.path().join("r.db");
    let pp = p.display();
    let cases: Vec<(String, &str)> = vec![
        (
            "SELECT aerodb_replica_start();".into(),
            "takes 1 or 2 arguments, got 0",
        ),
        (
            "SELECT aerodb_replica_start(1);".into(),
            "argument 1 (source) must be text",
        ),
        (
            format!("SELECT aerodb_replica_start('{pp}', 'nope');"),
            "argument 2 (options) is not valid JSON",
        ),
        (
            format!("SELECT aerodb_replica_start('{pp}', '[1]');"),
            "must be a JSON object",
        ),
        (
            format!(r#"SELECT aerodb_replica_start('{pp}', '{{"bogus": 1}}');"#),
            "unknown option \"bogus\"",
        ),
        (
            format!(r#"SELECT aerodb_replica_start('{pp}', '{{"segment_bytes": 0}}');"#),
            "option \"segment_bytes\" must be an integer from 1",
        ),
        (
            "SELECT aerodb_replica_start('/nonexistent/p.db');".into(),
            "source '/nonexistent/p.db'",
        ),
        (
            "SELECT aerodb_replica_start('http://127.0.0.1:1');".into(),
            "needs the option \"token_file\"",
        ),
        (
            "SELECT aerodb_replica_stop();".into(),
            "no replica is running on this connection",
        ),
        (
            format!("BEGIN; SELECT aerodb_replica_start('{pp}');"),
            "aerodb_replica_start: cannot run inside a transaction",
        ),
        (
            "BEGIN; SELECT aerodb_wait(1, 10);".into(),
            "aerodb_wait: cannot run inside a transaction",
        ),
        (
            "SELECT aerodb_replica_stop(1);".into(),
            "takes no arguments",
        ),
        ("SELECT aerodb_wait(1);".into(), "takes 2 arguments, got 1"),
        (
            "SELECT aerodb_wait('x', 1);".into(),
            "argument 1 (min_commit_id) must be an integer",
        ),
        ("SELECT aerodb_wait(-1, 1);".into(), "must be >= 0"),
        (
            "SELECT aerodb_wait(1, -5);".into(),
            "argument 2 (timeout_ms) must be from 0",
        ),
        (
            "SELECT aerodb_wait(1, 10);".into(),
            "no replica runs on this connection",
        ),
        (
            "SELECT * FROM read_safety;".into(),
            "read_safety needs 1 argument",
        ),
        (
            "SELECT * FROM read_safety('x');".into(),
            "min_commit_id must be a non-negative integer",
        ),
    ];
    for (sql, expected) in &cases {
        let run = shell(
            &r,
            &format!("{}PRAGMA journal_mode = WAL;\n{sql}\n", load()),
        );
        assert!(
            run.stderr.contains(expected),
            "{sql}: expected `{expected}` in {run:?}"
        );
    }
    // Starting twice on one connection; a primary as a replica; a replica
    // as a primary; a replica not in WAL mode; an in-memory replica.
    let run = shell(
        &r,
        &format!(
            "{}SELECT aerodb_wait(3, 60000);\nSELECT aerodb_replica_start('{pp}');\n",
            replica_prelude(&p, "{}")
        ),
    );
    assert!(
        run.stderr.contains("is already running on this connection"),
        "{run:?}"
    );
    let run = shell(
        &p,
        &format!(
            "{}SELECT aerodb_replica_start('{}');\n",
            load(),
            r.display()
        ),
    );
    assert!(run.stderr.contains("not an AeroDB primary"), "{run:?}");
    let other = dir.path().join("p2.db");
    std::fs::copy(&p, &other).expect("copy");
    let run = shell(
        &other,
        &format!("{}SELECT aerodb_replica_start('{pp}');\n", load()),
    );
    assert!(run.stderr.contains("is an AeroDB primary"), "{run:?}");
    let run = shell(&r, &format!("{}SELECT aerodb_primary_init();\n", load()));
    assert!(
        run.stderr.contains("this database is an AeroDB replica"),
        "{run:?}"
    );
    let rollback = dir.path().join("rb.db");
    let run = shell(
        &rollback,
        &format!(
            "{}PRAGMA journal_mode = DELETE;\nSELECT aerodb_replica_start('{pp}');\n",
            load()
        ),
    );
    assert!(
        run.stderr.contains("run PRAGMA journal_mode=WAL"),
        "{run:?}"
    );
    let run = shell(
        Path::new(":memory:"),
        &format!("{}SELECT aerodb_replica_start('{pp}');\n", load()),
    );
    assert!(run.stderr.contains("in memory or temporary"), "{run:?}");
    // Nothing changed: the replica is where the one good start left it.
    assert_eq!(rows_of(&r), rows_of(&p));
}

#[test]
fn a_replica_of_a_truncated_primary_bootstraps_from_a_snapshot_in_the_shell() {
    // WAL retention from SQL, snapshot bootstrap shown in replica_state.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(dir.path(), 9);
    let run = shell(
        &p,
        &format!(
            "{}SELECT aerodb_truncate_wal(6);\nSELECT aerodb_truncate_wal(99);\n",
            load()
        ),
    );
    assert_eq!(run.stdout, "6\n", "{run:?}");
    assert!(
        run.stderr
            .contains("aerodb_truncate_wal(99): the newest commit is 10, so WAL can be dropped below at most commit 11"),
        "truncating past the head is refused: {run:?}"
    );
    let r = dir.path().join("r.db");
    let run = shell(
        &r,
        &format!(
            "{}SELECT aerodb_wait(10, 60000);\nSELECT snapshot_commit_id, applied_commit_id FROM replica_state;\nSELECT first_commit_id, last_commit_id, state FROM replica_segments;\n",
            replica_prelude(&p, "{}")
        ),
    );
    assert!(run.ok && run.stderr.is_empty(), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(&lines[2..], ["10", "10|10", "1|10|Applied"], "{run:?}");
    assert_eq!(rows_of(&r), rows_of(&p));
}
