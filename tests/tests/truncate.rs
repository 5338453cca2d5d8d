//! WAL retention (`aerodb_truncate_wal(N)`) is atomic and safe with
//! concurrent writers: a SIGKILL of the stock `sqlite3` shell in the middle
//! of a truncation leaves the primary either untouched or fully truncated,
//! never in between; a truncation inside the caller's transaction is undone
//! by its ROLLBACK and by a kill before its COMMIT; and truncating while
//! other connections write fails at worst with SQLITE_BUSY, never breaking
//! the WAL. In every case the WAL the primary serves stays contiguous and a
//! replica continues from it. Every wait is on an event (a line the shell
//! prints, a thread join), never a sleep.

use aerodb_e2e::{catch_up, dump_table, extension, shell};
use replication::wal::{ChainPosition, CommitId, EncodedRecord};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use storage_adapter::primary::{Primary, PrimaryWalReader};
use storage_adapter::replica::ReplicaDb;

/// Segment size of every catch-up here.
const SEGMENT_BYTES: usize = 1 << 20;

fn load() -> String {
    format!(".load {}\n", extension().display())
}

/// A primary file with table `t` (commit 1 is its schema record, commit
/// k + 1 inserts row k), checkpointed into its main file and closed.
struct Built {
    path: PathBuf,
    head: CommitId,
    /// Its WAL as written: the records of commits 1..=head.
    records: Vec<EncodedRecord>,
    /// The rows of `t`.
    rows: Vec<Vec<Value>>,
    /// Replica files (closed, checkpointed) caught up to exactly commit k.
    replicas: BTreeMap<u64, PathBuf>,
}

/// Runs `PRAGMA wal_checkpoint(TRUNCATE)`: afterwards the main file holds
/// every commit and the `-wal` file is empty.
fn checkpoint(conn: &Connection) {
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .expect("checkpoint");
    assert_eq!(busy, 0, "the checkpoint completed");
}

/// Writes `rows` single-row commits (each row `payload` bytes of text) fast
/// through [`Primary`]; on the way, saves a replica caught up to exactly
/// commit k for each k in `replica_at`.
fn build_primary(dir: &Path, rows: u64, payload: usize, replica_at: &[u64]) -> Built {
    let started = Instant::now();
    let path = dir.join("p.db");
    let primary = Primary::open(&path).expect("primary");
    let conn = primary.connection();
    // Speed only: the file is checkpointed before any copy is made.
    conn.pragma_update(None, "synchronous", "OFF")
        .expect("synchronous");
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .expect("table");
    assert_eq!(primary.replicate("t").expect("replicate"), CommitId(1));
    let reader = PrimaryWalReader::open(&path).expect("reader");
    let replica_path = dir.join("r.db");
    let mut replica = ReplicaDb::open(&replica_path).expect("replica");
    let mut position = replica.init(reader.generation()).expect("init");
    let mut replicas = BTreeMap::new();
    let fill = "x".repeat(payload);
    {
        let mut insert = conn
            .prepare("INSERT INTO t VALUES (?1, ?2)")
            .expect("prepare");
        for k in 1..=rows {
            // Before row k, the head is commit k.
            if replica_at.contains(&k) {
                position = catch_up(&reader, &mut replica, position, SEGMENT_BYTES);
                assert_eq!(position.commit_id, CommitId(k));
                checkpoint(replica.connection());
                let saved = dir.join(format!("r{k}.db"));
                std::fs::copy(&replica_path, &saved).expect("save the replica");
                replicas.insert(k, saved);
            }
            insert
                .execute(rusqlite::params![k as i64, format!("row {k} {fill}")])
                .expect("insert");
        }
    }
    let head = primary.head().expect("head");
    assert_eq!(head, CommitId(rows + 1));
    let records = reader.records(CommitId(1), usize::MAX).expect("records");
    assert_eq!(records.len() as u64, head.0);
    let rows = dump_table(conn, "t");
    checkpoint(conn);
    drop(reader);
    drop(replica);
    drop(primary);
    println!(
        "built a primary of {} commits in {:?}",
        head.0,
        started.elapsed()
    );
    Built {
        path,
        head,
        records,
        rows,
        replicas,
    }
}

/// A copy of the built primary in a new directory `name` (the primary is
/// closed and checkpointed, so its main file is all of it).
fn copy_of(built: &Built, dir: &Path, name: &str) -> PathBuf {
    let work = dir.join(name);
    std::fs::create_dir(&work).expect("work dir");
    let copy = work.join("c.db");
    std::fs::copy(&built.path, &copy).expect("copy the primary");
    copy
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Oldest commit 1, every commit's record present.
    Untouched,
    /// Oldest commit K, records from the seal of K - 1 on.
    Truncated,
}

fn count(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> i64 {
    conn.query_row(sql, params, |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Asserts `records` are the built WAL from commit `from` to the head:
/// CommitIds contiguous, each record starting where the previous ended,
/// byte for byte what was written.
fn assert_contiguous(records: &[EncodedRecord], from: CommitId, head: CommitId, what: &str) {
    assert_eq!(
        records.len() as u64,
        head.0 + 1 - from.0,
        "{what}: one record per commit from {from} to {head}"
    );
    for (i, pair) in records.windows(2).enumerate() {
        assert_eq!(
            pair[1].commit_id,
            pair[0].commit_id.next(),
            "{what}: record {i}"
        );
        assert_eq!(
            pair[1].wal_offset.0,
            pair[0].wal_offset.0 + pair[0].bytes.len() as u64,
            "{what}: commit {} starts where commit {} ends",
            pair[1].commit_id,
            pair[0].commit_id
        );
    }
    if let (Some(first), Some(last)) = (records.first(), records.last()) {
        assert_eq!(first.commit_id, from, "{what}");
        assert_eq!(last.commit_id, head, "{what}");
    }
}

/// Checks the (possibly crashed) copy is in exactly one consistent state
/// for `aerodb_truncate_wal(k)`, serves its WAL from its oldest commit to
/// the head, and replicas continue from it; returns the state.
fn check_copy(built: &Built, copy: &Path, k: u64, fresh_replica: bool) -> State {
    let work = copy.parent().expect("work dir");
    let head = built.head.0 as i64;
    let k = k as i64;
    // A read-write connection first: it recovers the file after a crash.
    let conn = Connection::open(copy).expect("reopen the copy");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok");
    let oldest: Option<i64> = conn
        .query_row(
            "SELECT value FROM aerodb_meta WHERE key = 'oldest_commit'",
            [],
            |r| r.get(0),
        )
        .optional()
        .expect("oldest_commit");
    let (min, max, n): (i64, i64, i64) = conn
        .query_row(
            "SELECT min(commit_id), max(commit_id), count(*) FROM aerodb_commits",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("aerodb_commits");
    // The chunked layout (records in aerodb_changes, `pos` = CommitId << 24
    // | chunk), if this build still has it.
    let chunked = count(
        &conn,
        "SELECT count(*) FROM sqlite_schema WHERE name = 'aerodb_changes'",
        [],
    ) == 1;
    let state = match oldest {
        None | Some(1) => {
            assert_eq!(
                (min, max, n),
                (1, head, head),
                "untouched: every commit's record"
            );
            if chunked {
                assert_eq!(
                    count(
                        &conn,
                        "SELECT count(DISTINCT pos >> 24) FROM aerodb_changes",
                        []
                    ),
                    head,
                    "untouched: every commit's chunks"
                );
            }
            State::Untouched
        }
        Some(oldest) => {
            assert_eq!(oldest, k, "oldest_commit is the requested K or 1");
            assert_eq!(
                (min, max, n),
                (k - 1, head, head - k + 2),
                "truncated: the seal of K - 1 and every record from K on, nothing below"
            );
            if chunked {
                assert_eq!(
                    count(
                        &conn,
                        "SELECT count(*) FROM aerodb_changes WHERE pos < ?1",
                        [k << 24]
                    ),
                    0,
                    "truncated: no chunk below K"
                );
                assert_eq!(
                    count(
                        &conn,
                        "SELECT count(DISTINCT pos >> 24) FROM aerodb_changes WHERE pos >= ?1",
                        [k << 24]
                    ),
                    head - k + 1,
                    "truncated: every chunk from K on"
                );
            }
            State::Truncated
        }
    };
    assert_eq!(
        dump_table(&conn, "t"),
        built.rows,
        "truncation keeps the data"
    );
    drop(conn);

    let reader = PrimaryWalReader::open(copy).expect("reader on the copy");
    let from = reader.oldest().expect("oldest");
    assert_eq!(
        from,
        CommitId(if state == State::Truncated {
            k as u64
        } else {
            1
        })
    );
    assert_eq!(reader.head().expect("head"), built.head);
    let records = reader.records(from, usize::MAX).expect("records");
    assert_contiguous(&records, from, built.head, "the copy's WAL");
    assert_eq!(
        records.as_slice(),
        &built.records[from.0 as usize - 1..],
        "the records kept are the ones written"
    );

    // A replica caught up to K - 1 before the kill continues to the head.
    let saved = &built.replicas[&(k as u64 - 1)];
    let cont = work.join("cont.db");
    std::fs::copy(saved, &cont).expect("copy the replica");
    let mut replica = ReplicaDb::open(&cont).expect("replica");
    let position: ChainPosition = replica.position().expect("position").expect("initialized");
    assert_eq!(position.commit_id, CommitId(k as u64 - 1));
    let end = catch_up(&reader, &mut replica, position, SEGMENT_BYTES);
    assert_eq!(end.commit_id, built.head);
    assert_eq!(dump_table(replica.connection(), "t"), built.rows);
    drop(replica);

    // Untouched: a fresh replica catches up from commit 1.
    if state == State::Untouched && fresh_replica {
        let mut fresh = ReplicaDb::open(work.join("fresh.db")).expect("fresh replica");
        let start = fresh.init(reader.generation()).expect("init");
        let end = catch_up(&reader, &mut fresh, start, SEGMENT_BYTES);
        assert_eq!(end.commit_id, built.head);
        assert_eq!(dump_table(fresh.connection(), "t"), built.rows);
    }
    state
}

/// Runs `aerodb_truncate_wal(k)` once in the shell on a copy, timed with
/// `.timer on`; returns the shell's "real" time.
fn timed_truncate(built: &Built, dir: &Path, k: u64) -> f64 {
    let copy = copy_of(built, dir, &format!("timed{k}"));
    let run = shell(
        &copy,
        &format!(
            "{}.bail on\n.timer on\nSELECT aerodb_truncate_wal({k});\n",
            load()
        ),
    );
    assert!(run.ok && run.stderr.is_empty(), "{run:?}");
    let mut lines = run.stdout.lines();
    assert_eq!(lines.next(), Some(k.to_string().as_str()), "{run:?}");
    let real: f64 = lines
        .next()
        .and_then(|l| l.strip_prefix("Run Time: real "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a timer line: {run:?}"));
    assert_eq!(check_copy(built, &copy, k, false), State::Truncated);
    real
}

#[test]
fn truncate_is_all_or_nothing_under_sigkill() {
    const ROWS: u64 = 20_000;
    const KILLS: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let head = ROWS + 1;
    // Dropping little (2: only the meta row changes), some, most, and all
    // but the head.
    let ks = [2, 500, 5_000, 12_000, head];
    let replica_at: Vec<u64> = ks.iter().map(|k| k - 1).collect();
    let built = build_primary(dir.path(), ROWS, 200, &replica_at);
    for &k in &ks {
        let real = timed_truncate(&built, dir.path(), k);
        println!(
            "aerodb_truncate_wal({k}) in the shell: {:.1} ms",
            real * 1e3
        );
    }

    let mut counts: BTreeMap<(KillAt, u64), [usize; 2]> = BTreeMap::new();
    for i in 0..KILLS {
        let k = ks[i % ks.len()];
        let at = [KillAt::Marker, KillAt::WalGrows, KillAt::AfterEnd][(i / ks.len()) % 3];
        let copy = copy_of(&built, dir.path(), &format!("kill{i}"));
        let mut child = Command::new("sqlite3")
            .arg(&copy)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sqlite3 shell runs");
        let mut stdin = child.stdin.take().expect("stdin");
        // stdin stays open: after 'end' the shell waits for more input, so
        // it ends only by the kill.
        write!(
            stdin,
            "{}.bail on\nSELECT 'start';\nSELECT aerodb_truncate_wal({k});\nSELECT 'end';\n",
            load()
        )
        .expect("script written");
        stdin.flush().expect("flushed");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the marker");
        assert_eq!(line, "start\n", "kill {i}");
        match at {
            KillAt::Marker => {}
            KillAt::WalGrows => {
                // The truncation is writing its pages (a cache spill or
                // its commit): kill it in the middle of that.
                let wal = copy.with_extension("db-wal");
                let deadline = Instant::now() + Duration::from_secs(60);
                while std::fs::metadata(&wal).map_or(0, |m| m.len()) == 0 {
                    assert!(Instant::now() < deadline, "kill {i}: the -wal never grew");
                    std::hint::spin_loop();
                }
            }
            KillAt::AfterEnd => {
                for expected in [format!("{k}\n"), "end\n".to_string()] {
                    line.clear();
                    stdout.read_line(&mut line).expect("read");
                    assert_eq!(line, expected, "kill {i}");
                }
            }
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("the shell ends");
        assert_eq!(status.signal(), Some(9), "kill {i}: ended by the kill");
        drop(stdin);
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).expect("rest of stdout");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("stderr");
        assert!(stderr.is_empty(), "kill {i}: {stderr}");
        assert!(
            rest.is_empty() || rest == format!("{k}\n") || rest == format!("{k}\nend\n"),
            "kill {i}: {rest:?}"
        );
        let state = check_copy(&built, &copy, k, i < ks.len());
        if at == KillAt::AfterEnd || rest.ends_with("end\n") {
            assert_eq!(
                state,
                State::Truncated,
                "kill {i}: the truncation's statement completed, so it committed"
            );
        }
        counts.entry((at, k)).or_default()[usize::from(state == State::Truncated)] += 1;
        std::fs::remove_dir_all(copy.parent().expect("work dir")).expect("clean up");
    }
    for ((at, k), [untouched, truncated]) in &counts {
        println!(
            "kill at {at:?}, K = {k}: {untouched} left it untouched, {truncated} fully truncated"
        );
    }
    let (untouched, truncated) = counts
        .values()
        .fold((0, 0), |(u, t), [a, b]| (u + a, t + b));
    println!("{KILLS} kills: {untouched} untouched, {truncated} fully truncated");
    assert_eq!(untouched + truncated, KILLS);
}

/// When the parent kills the shell running a truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KillAt {
    /// As soon as it printed the marker before the truncation.
    Marker,
    /// As soon as its `-wal` file holds a byte: in the middle of writing.
    WalGrows,
    /// After the statement after the truncation printed: committed.
    AfterEnd,
}

#[test]
fn truncate_in_the_callers_transaction_is_undone_by_its_rollback_and_by_a_kill() {
    const ROWS: u64 = 5_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let head = ROWS + 1;
    let k = ROWS - 1_000;
    let built = build_primary(dir.path(), ROWS, 200, &[k - 1]);

    // ROLLBACK, and ROLLBACK TO a savepoint around the call, undo it; so
    // does the ROLLBACK of a transaction that also wrote.
    for (i, (script, expected)) in [
        (
            format!(
                "BEGIN;
SELECT aerodb_truncate_wal({k});
SELECT value FROM aerodb_meta WHERE key = 'oldest_commit';
SELECT min(commit_id), count(*) FROM aerodb_commits;
ROLLBACK;
SELECT count(*) FROM aerodb_meta WHERE key = 'oldest_commit';
SELECT min(commit_id), count(*) FROM aerodb_commits;
SELECT aerodb_head();
"
            ),
            format!(
                "{k}\n{k}\n{}|{}\n0\n1|{head}\n{head}\n",
                k - 1,
                head - k + 2
            ),
        ),
        (
            format!(
                "BEGIN;
SAVEPOINT s;
SELECT aerodb_truncate_wal({k});
ROLLBACK TO s;
RELEASE s;
COMMIT;
SELECT count(*) FROM aerodb_meta WHERE key = 'oldest_commit';
SELECT min(commit_id), count(*) FROM aerodb_commits;
"
            ),
            format!("{k}\n0\n1|{head}\n"),
        ),
        (
            format!(
                "BEGIN;
INSERT INTO t VALUES (-1, 'rolled back');
SELECT aerodb_truncate_wal({k});
ROLLBACK;
SELECT count(*) FROM aerodb_meta WHERE key = 'oldest_commit';
SELECT min(commit_id), count(*) FROM aerodb_commits;
SELECT aerodb_head();
"
            ),
            format!("{k}\n0\n1|{head}\n{head}\n"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let copy = copy_of(&built, dir.path(), &format!("rollback{i}"));
        let run = shell(&copy, &format!("{}.bail on\n{script}", load()));
        assert!(run.ok && run.stderr.is_empty(), "{script}: {run:?}");
        assert_eq!(run.stdout, expected, "{script}");
        assert_eq!(
            check_copy(&built, &copy, k, i == 0),
            State::Untouched,
            "{script}"
        );
    }

    // A kill after the call, before COMMIT: with the default cache, and with
    // a tiny one so that the truncation's pages spill into the -wal file
    // before the kill (frames without a commit, which recovery drops).
    for (i, prelude) in ["", "PRAGMA cache_size = 5;\n"].into_iter().enumerate() {
        let copy = copy_of(&built, dir.path(), &format!("kill{i}"));
        let mut child = Command::new("sqlite3")
            .arg(&copy)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sqlite3 shell runs");
        let mut stdin = child.stdin.take().expect("stdin");
        write!(
            stdin,
            "{}.bail on\n{prelude}BEGIN;\nSELECT aerodb_truncate_wal({k});\nSELECT 'done';\n",
            load()
        )
        .expect("script written");
        stdin.flush().expect("flushed");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut lines = Vec::new();
        for _ in 0..2 {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read");
            lines.push(line);
        }
        assert_eq!(lines, [format!("{k}\n"), "done\n".to_string()]);
        // The shell now waits for more input, inside the transaction.
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("the shell ends");
        assert_eq!(status.signal(), Some(9), "ended by the kill");
        drop(stdin);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("stderr");
        assert!(stderr.is_empty(), "{stderr}");
        let wal = std::fs::metadata(copy.with_extension("db-wal")).map_or(0, |m| m.len());
        println!("kill inside the transaction ({prelude:?}): -wal holds {wal} bytes");
        if !prelude.is_empty() {
            assert!(wal > 0, "the tiny cache spilled the truncation's pages");
        }
        assert_eq!(check_copy(&built, &copy, k, false), State::Untouched);
    }
}

#[test]
fn truncate_with_concurrent_writers_fails_at_worst_with_busy() {
    const WRITERS: i64 = 3;
    const COMMITS_EACH: i64 = 500;
    const TRUNCATES: usize = 300;
    const SEED_ROWS: u64 = 50;
    const KEEP: u64 = 20;
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let built = build_primary(dir.path(), SEED_ROWS, 20, &[]);
    let path = built.path.clone();
    let open = |busy: Duration| {
        let conn = Connection::open(&path).expect("open");
        conn.busy_timeout(busy).expect("busy timeout");
        conn.pragma_update(None, "synchronous", "NORMAL")
            .expect("synchronous");
        Primary::from_connection(conn).expect("primary")
    };

    /// Counts a writer thread as done when it ends, even by a panic.
    struct Done<'a>(&'a AtomicUsize);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let running = AtomicUsize::new(WRITERS as usize);
    let (truncates, writers) = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let running = &running;
                scope.spawn(move || {
                    let _done = Done(running);
                    let primary = open(Duration::from_secs(5));
                    let mut last = CommitId(0);
                    for i in 0..COMMITS_EACH {
                        let id = 1_000_000 * (w + 1) + i;
                        primary
                            .connection()
                            .execute("INSERT INTO t VALUES (?1, 'writer ' || ?1)", [id])
                            .unwrap_or_else(|e| panic!("writer {w}, commit {i}: {e}"));
                        let id = primary
                            .last_commit_id()
                            .expect("last commit id")
                            .expect("it committed");
                        assert!(id > last, "writer {w}: CommitIds grow");
                        last = id;
                    }
                    last
                })
            })
            .collect();
        let running = &running;
        let truncator = scope.spawn(move || {
            // No busy timeout: a truncation that meets a writer fails at
            // once, with SQLITE_BUSY, and changes nothing.
            let primary = open(Duration::ZERO);
            let (mut ok, mut busy) = (0usize, 0usize);
            let mut oldest = CommitId(1);
            let mut i = 0;
            // At least TRUNCATES calls, and on until every writer is done.
            while i < TRUNCATES || running.load(Ordering::SeqCst) > 0 {
                let head = primary.head().expect("head");
                let below = CommitId(head.0.saturating_sub(KEEP).max(1));
                // Alternately the Rust API and the SQL function.
                let result: Result<u64, String> = if i % 2 == 0 {
                    primary
                        .truncate_wal(below)
                        .map(|c| c.0)
                        .map_err(|e| e.to_string())
                } else {
                    primary
                        .connection()
                        .query_row("SELECT aerodb_truncate_wal(?1)", [below.0 as i64], |r| {
                            r.get::<_, i64>(0)
                        })
                        .map(|c| c as u64)
                        .map_err(|e| e.to_string())
                };
                assert!(
                    primary.connection().is_autocommit(),
                    "truncate {i}: no transaction is left open"
                );
                match result {
                    Ok(c) => {
                        let c = CommitId(c);
                        assert!(c >= below && c >= oldest, "truncate {i}: {c} < {below}");
                        oldest = c;
                        ok += 1;
                    }
                    Err(e) if e.contains("database is locked") || e.contains("busy") => busy += 1,
                    Err(e) => panic!("truncate {i} (below {below}): {e}"),
                }
                i += 1;
            }
            (ok, busy, oldest)
        });
        let writers: Vec<CommitId> = writers
            .into_iter()
            .map(|w| w.join().expect("writer"))
            .collect();
        (truncator.join().expect("truncator"), writers)
    });
    let (ok, busy, last_oldest) = truncates;
    assert!(ok + busy >= TRUNCATES);
    println!(
        "{} truncations beside {WRITERS} writers: {ok} Ok, {busy} SQLITE_BUSY; writers' last commits {writers:?}; {:?}",
        ok + busy,
        started.elapsed()
    );

    let head = CommitId(1 + SEED_ROWS + (WRITERS * COMMITS_EACH) as u64);
    let reader = PrimaryWalReader::open(&path).expect("reader");
    assert_eq!(reader.head().expect("head"), head);
    assert_eq!(writers.iter().max(), Some(&head));
    let oldest = reader.oldest().expect("oldest");
    assert!(oldest >= last_oldest, "{oldest} < {last_oldest}");
    let records = reader.records(oldest, usize::MAX).expect("records");
    assert_contiguous(&records, oldest, head, "the WAL after the race");
    let conn = Connection::open(&path).expect("open");
    let (min, n): (i64, i64) = conn
        .query_row(
            "SELECT min(commit_id), count(*) FROM aerodb_commits",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("aerodb_commits");
    let base = oldest.0.max(2) as i64 - 1;
    assert_eq!(
        (min, n),
        (base, head.0 as i64 - base + 1),
        "the seal of oldest - 1 and every record from oldest on"
    );
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("rows");
    assert_eq!(rows as u64, SEED_ROWS + (WRITERS * COMMITS_EACH) as u64);
    if let Some(first) = records.first() {
        if oldest.0 > 1 {
            let (offset, length): (i64, i64) = conn
                .query_row(
                    "SELECT wal_offset, length FROM aerodb_commits WHERE commit_id = ?1",
                    [base],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .expect("the seal of oldest - 1");
            assert_eq!(first.wal_offset.0 as i64, offset + length);
        }
    }
}

/// Asking a truncated primary for WAL below its oldest commit is refused
/// as truncated (never reported as corruption), in the same read
/// transaction as the records, so a truncation racing a fetch cannot make
/// retained WAL look corrupt.
#[test]
fn reading_below_the_oldest_commit_is_refused_as_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.db");
    let primary = Primary::open(&path).expect("primary");
    primary
        .connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .expect("table");
    primary.replicate("t").expect("replicate");
    for i in 0..20 {
        primary
            .connection()
            .execute("INSERT INTO t VALUES (?1, 'x')", [i])
            .expect("insert");
    }
    assert_eq!(
        primary.truncate_wal(CommitId(10)).expect("truncate"),
        CommitId(10)
    );
    let reader = PrimaryWalReader::open(&path).expect("reader");
    for from in [1u64, 4, 9] {
        let err = reader
            .records(CommitId(from), usize::MAX)
            .expect_err("below the oldest commit");
        assert!(
            matches!(
                err,
                storage_adapter::primary::PrimaryError::Wal(
                    storage_adapter::WalReadError::Truncated { requested, oldest_sealed }
                ) if requested == CommitId(from) && oldest_sealed == CommitId(10)
            ),
            "{err}"
        );
    }
    let records = reader.records(CommitId(10), usize::MAX).expect("retained");
    assert_eq!(records.first().map(|r| r.commit_id), Some(CommitId(10)));
    assert_eq!(records.last().map(|r| r.commit_id), Some(CommitId(21)));
}
