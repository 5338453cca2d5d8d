//! Adversarial review (helper-19) of `aerodb verify` of a running replica:
//! the control socket, the Supervisor's hold and release, and what verify
//! leaves behind for the runtime.
//!
//! No test sleeps to order events: they wait on the runtime's published
//! state, on socket answers or on child processes; a client-side deadline
//! only bounds a wait that never ends when something is wrong.

mod serve_common;
mod verify_common;

use replication::runtime::{
    is_blocked, Component, Config, Failure, Fetched, StopSignal, View, WalSource,
};
use replication::state::{GlobalState, ReadStatus};
use replication::wal::{CommitId, Segment};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage_adapter::primary::Primary;
use storage_adapter::runtime::{FileSource, Replica};
use storage_adapter::verify::verify;
use verify_common::*;

const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
     INSERT INTO t VALUES (1, 'one'), (2, 2.0), (3, x'03');";

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

fn start(r: &Path, p: &Path) -> Replica {
    Replica::start_from_file(r, p, Config::default()).unwrap()
}

/// A primary, a replica, and a runtime on it caught up to the head.
fn caught_up() -> (tempfile::TempDir, Primary, PathBuf, PathBuf, Replica) {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t"]);
    let replica = start(&r, &p);
    wait_caught_up(&replica, primary.head().unwrap());
    (dir, primary, p, r, replica)
}

fn control(r: &Path) -> PathBuf {
    let mut p = r.as_os_str().to_owned();
    p.push(".aerodb-control");
    PathBuf::from(p)
}

fn held(v: &View) -> bool {
    v.components.iter().any(|c| c.state.starts_with("Held by"))
}

fn wait_caught_up(replica: &Replica, head: CommitId) -> std::sync::Arc<View> {
    replica
        .wait_until(deadline(), |v| v.applied.commit_id >= head && !held(v))
        .unwrap_or_else(|v| panic!("not caught up to {head}: {v:?}"))
}

fn commit(primary: &Primary, n: i64) {
    primary
        .connection()
        .execute(
            "INSERT INTO t(id, v) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET v = excluded.v",
            rusqlite::params![n, format!("v{n}")],
        )
        .unwrap();
}

/// `hold <who>` over the control socket; the answer line and the stream.
fn hold(r: &Path, who: &str) -> (String, UnixStream) {
    let mut s = UnixStream::connect(control(r)).unwrap();
    // A server that refuses may close before reading it all (EPIPE): its
    // answer is read all the same.
    let _ = writeln!(s, "hold {who}");
    (read_line(&s), s)
}

fn read_line(s: &UnixStream) -> String {
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim_end().to_owned()
}

fn release(mut s: UnixStream) -> String {
    if let Err(e) = writeln!(s, "release") {
        return format!("<writing release: {e}>");
    }
    let mut line = String::new();
    match BufReader::new(s).read_line(&mut line) {
        Ok(_) => line.trim_end().to_owned(),
        Err(e) => format!("<reading the answer: {e}>"),
    }
}

/// Runs `f` on a thread; its result, or `None` if it has not returned by
/// the deadline (it is then left running: the test fails).
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(30)).ok()
}

// ------------------------------------------------------------- defects

/// Found in review, fixed since (the test asserts the fix): The runtime's ControlServer wakes its acceptor (blocked in accept) by
/// connecting to the socket *path*; once that path no longer leads to the
/// socket (deleted by a cleaner, the directory renamed, a relative path
/// after a chdir), the acceptor never wakes and `Replica::stop` never
/// returns.
#[test]
fn stop_returns_after_the_control_socket_file_was_removed() {
    let (_dir, _primary, _p, r, replica) = caught_up();
    std::fs::remove_file(control(&r)).unwrap();
    let stopped = within(move || replica.stop().running);
    assert_eq!(
        stopped,
        Some(false),
        "Replica::stop did not return within 30 s after its control socket file was removed"
    );
}

/// Found in review, fixed since (the test asserts the fix): Same hang, by renaming the directory the replica lives in (the runtime
/// goes on through its open descriptors; its socket moved with the
/// directory).
#[test]
fn stop_returns_after_the_replicas_directory_was_renamed() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("a");
    std::fs::create_dir(&dir).unwrap();
    let (primary, p, r) = pair(&dir, SCHEMA, &["t"]);
    let replica = start(&r, &p);
    wait_caught_up(&replica, primary.head().unwrap());
    std::fs::rename(&dir, top.path().join("b")).unwrap();
    let stopped = within(move || replica.stop().running);
    assert_eq!(
        stopped,
        Some(false),
        "Replica::stop did not return within 30 s after the replica's directory was renamed"
    );
}

/// Found in review, fixed since (the test asserts the fix): A replica file name longer than 75 bytes: its control socket does not
/// fit a socket address even as `/proc/self/fd/N/<name>.aerodb-control`,
/// so the runtime runs without one and a running replica cannot be
/// verified (a legal file name up to 255 bytes).
#[test]
fn a_running_replica_with_a_long_file_name_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.db");
    let r = dir.path().join(format!("{}.db", "r".repeat(100)));
    let primary = Primary::open(&p).unwrap();
    primary.connection().execute_batch(SCHEMA).unwrap();
    primary.replicate("t").unwrap();
    catch_up(&p, &r);
    let replica = start(&r, &p);
    commit(&primary, 10);
    let v = verify(&p, &r);
    let v = v.unwrap_or_else(|e| panic!("verify of the running replica failed: {e}"));
    assert_eq!(v.difference, None);
    assert!(v.held.is_some());
    replica.stop();
}

/// Found in review, fixed since (the test asserts the fix): A hold while the Receiver is blocked on a source outage (here the
/// primary's capture is broken by a migration under way), and the source
/// comes back while held: after the release the new Receiver fetches and
/// everything is applied, yet the replica stays `Ready (read-blocked:
/// WAL receiver failed ...)` for good. The block only lifts on the old
/// Receiver's `ReceiverResumed`, which the hold's stop killed, and
/// `restart_after_hold` keeps the block ("a block stays a block").
/// Without a hold the same outage lifts by itself.
#[test]
fn a_source_outage_that_ends_while_held_does_not_leave_the_replica_read_blocked() {
    let (_dir, primary, _p, r, replica) = caught_up();
    primary
        .connection()
        .execute_batch("ALTER TABLE t ADD COLUMN w TEXT")
        .expect("a migration under way");
    let v = replica
        .wait_until(deadline(), |v| is_blocked(&v.global))
        .unwrap_or_else(|v| panic!("not blocked by the migration: {v:?}"));
    assert!(v.global.to_string().contains("receiver"), "{}", v.global);
    let (answer, holder) = hold(&r, "a verify");
    assert!(answer.starts_with("ok held"), "{answer}");
    // The migration ends while the replica is held.
    primary.replicate("t").expect("replicate again");
    let released = release(holder);
    assert!(released.starts_with("ok released"), "{released}");
    commit(&primary, 20);
    let head = primary.head().unwrap();
    wait_caught_up(&replica, head);
    let v = replica
        .wait_until(deadline(), |v| {
            v.global
                == GlobalState::Ready {
                    read: ReadStatus::Safe,
                }
        })
        .unwrap_or_else(|v| {
            panic!(
                "applied commit {} = the primary's head {head}, source answering, yet still {} (decision: {:?})",
                v.applied.commit_id,
                v.global,
                replica.explain_read(Some(head)).unwrap()
            )
        });
    assert!(v.running);
    replica.stop();
}

/// Found in review, fixed since (the test asserts the fix): After a verify of a running replica applied commits the runtime had
/// not received, the recorded state (`aerodb_replica_state`, what `aerodb
/// status` shows as "received / validated") still names the commit the
/// hold began at: the release records component rows but no transition,
/// and a replica that is caught up afterwards makes none, so the record
/// says received 1 < applied N until the primary's next commit.
#[test]
fn the_recorded_progress_after_a_verify_is_not_behind_the_applied_position() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t"]);
    // The source withholds new WAL until told (a runtime that has not
    // polled yet when verify holds it).
    let open = Arc::new(AtomicBool::new(true));
    let replica = gated(&r, &p, open.clone(), Config::default());
    let start_head = primary.head().unwrap();
    replica
        .wait_until(deadline(), |v| {
            v.applied.commit_id >= start_head
                && v.global
                    == GlobalState::Ready {
                        read: ReadStatus::Safe,
                    }
        })
        .unwrap();
    open.store(false, Ordering::SeqCst);
    for n in 10..15 {
        commit(&primary, n);
    }
    // (The gate stays closed: after the release the runtime finds nothing
    // new, as it would once verify brought it to the primary's head.)
    let v = verify(&p, &r).unwrap();
    assert_eq!(v.difference, None);
    let head = primary.head().unwrap();
    assert_eq!(v.commit_id, head);
    // Released: the runtime looks at its source again and finds nothing
    // new (it is caught up).
    replica
        .wait_until(deadline(), |v| {
            !held(v)
                && v.component(Component::Receiver)
                    .state
                    .starts_with("Waiting for WAL")
        })
        .unwrap_or_else(|v| panic!("{v:?}"));
    let (state, received, validated, applied): (String, i64, i64, i64) =
        rusqlite::Connection::open(&r)
            .unwrap()
            .query_row(
                "SELECT s.global_state, s.received_commit_id, s.validated_commit_id, p.applied_commit_id FROM aerodb_replica_state s, aerodb_replica_position p",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .arg("status")
        .arg(&r)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(applied as u64, head.0);
    assert!(
        received >= applied && validated >= applied,
        "recorded {state}: received {received}, validated {validated}, but applied {applied}:\n{status}"
    );
    replica.stop();
}

/// The control for the test above: the same outage and its end, without
/// a hold, lifts by itself (the Receiver's `ReceiverResumed`).
#[test]
fn held_control_a_source_outage_without_a_hold_lifts() {
    let (_dir, primary, _p, _r, replica) = caught_up();
    primary
        .connection()
        .execute_batch("ALTER TABLE t ADD COLUMN w TEXT")
        .unwrap();
    replica
        .wait_until(deadline(), |v| is_blocked(&v.global))
        .unwrap_or_else(|v| panic!("not blocked by the migration: {v:?}"));
    primary.replicate("t").unwrap();
    commit(&primary, 20);
    let head = primary.head().unwrap();
    replica
        .wait_until(deadline(), |v| {
            v.applied.commit_id >= head
                && v.global
                    == GlobalState::Ready {
                        read: ReadStatus::Safe,
                    }
        })
        .unwrap_or_else(|v| panic!("{}", v.global));
    replica.stop();
}

/// The control socket reads a request line of at most 1024 bytes. Found
/// in review: a `hold` whose line was longer was answered `ok held ...`,
/// and the rest of the line was taken as the holder's next line (not
/// `release`), so the replica was released at once while its holder,
/// told it held it, went on. Such a line is refused now, and nothing is
/// held.
#[test]
fn a_hold_answered_ok_lasts_until_its_release() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t"]);
    let replica = start(&r, &p);
    let head = primary.head().unwrap();
    wait_caught_up(&replica, head);
    let who = format!("a verify with a long name {}", "x".repeat(1100));
    let (answer, _holder) = hold(&r, &who);
    assert_eq!(
        answer,
        "refused no request line (one line of at most 1024 bytes: hold <who>)"
    );
    assert!(!held(&replica.view()), "{:?}", replica.components());
    // A hold of an ordinary length lasts until its release.
    let (answer, holder) = hold(&r, "a verify");
    assert_eq!(answer, format!("ok held at applied commit {head}"));
    assert!(held(&replica.view()));
    assert_eq!(
        release(holder),
        format!("ok released by a verify at applied commit {head}")
    );
    replica.stop();
}

// --------------------------------------------------- scenarios that held

/// A WAL source that passes everything through until it has delivered a
/// segment ending inside a transaction; then it has nothing more (the
/// Receiver idles) until `open` is set again.
struct Gated {
    inner: FileSource,
    open: Arc<AtomicBool>,
}

impl WalSource for Gated {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn fetch(&mut self, from: CommitId, max_bytes: usize) -> Result<Option<Fetched>, Failure> {
        if !self.open.load(Ordering::SeqCst) {
            // Looked at (so the next wait waits for a new commit), withheld.
            let _ = self.inner.fetch(from, max_bytes);
            return Ok(None);
        }
        let f = self.inner.fetch(from, max_bytes)?;
        if let Some(f) = &f {
            if Segment::decode(&f.bytes)
                .map(|s| s.ends_inside_transaction())
                .unwrap_or(false)
            {
                self.open.store(false, Ordering::SeqCst);
            }
        }
        Ok(f)
    }
    fn wait_for_wal(&mut self, stop: &StopSignal) -> Result<bool, Failure> {
        self.inner.wait_for_wal(stop)
    }
}

fn gated(r: &Path, p: &Path, open: Arc<AtomicBool>, config: Config) -> Replica {
    let inner = FileSource::open(p).unwrap();
    let generation = inner.generation();
    Replica::start(r, Box::new(Gated { inner, open }), generation, config).unwrap()
}

/// The Applier holds the first segment of a spilled transaction (stored,
/// Validated) when verify holds the runtime: verify applies the stored
/// piece, the rest from the primary, and the runtime goes on cleanly.
#[test]
fn held_a_spanning_transaction_partly_received_at_the_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t"]);
    let conn = primary.connection();
    conn.query_row("SELECT aerodb_capture_chunk_bytes(2048)", [], |_| Ok(()))
        .unwrap();
    let open = Arc::new(AtomicBool::new(true));
    let config = Config {
        segment_bytes: 4096,
        ..Config::default()
    };
    let replica = gated(&r, &p, open.clone(), config);
    wait_caught_up(&replica, primary.head().unwrap());
    conn.execute_batch(
        "BEGIN; WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 600) INSERT INTO t SELECT value + 100, printf('row %d %s', value, hex(randomblob(40))) FROM s; COMMIT;",
    )
    .unwrap();
    replica
        .wait_until(deadline(), |v| {
            v.component(Component::Applier).state.starts_with("Holding")
        })
        .unwrap_or_else(|v| panic!("the Applier holds no partial transaction: {v:?}"));
    let unapplied: i64 = rusqlite::Connection::open(&r)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM aerodb_replica_segments WHERE state <> 'Applied'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(unapplied >= 1);
    let v = verify(&p, &r).unwrap();
    assert_eq!(v.difference, None, "{v:?}");
    assert!(v.held.is_some());
    open.store(true, Ordering::SeqCst);
    commit(&primary, 5000);
    let view = wait_caught_up(&replica, primary.head().unwrap());
    assert!(
        view.components.iter().all(|c| c.last_error.is_none()),
        "{:?}",
        view.components
    );
    let view = replica.stop();
    assert!(view.components.iter().all(|c| c.last_error.is_none()));
    assert_equal(&p, &r, "after the spanning hold");
}

/// `aerodb verify` (a child process) SIGKILLed while it holds a running
/// replica far behind the primary: the kernel's close releases it, the
/// runtime re-opens what the killed verify left (maybe a rolled-back
/// apply) and goes on to an exact copy.
#[test]
fn held_a_verify_killed_while_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t"]);
    let open = Arc::new(AtomicBool::new(false));
    let replica = gated(&r, &p, open.clone(), Config::default());
    for n in 0..40 {
        primary
            .connection()
            .execute_batch(&format!(
                "WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 500) INSERT OR REPLACE INTO t SELECT value + {n} * 1000, hex(randomblob(64)) FROM s"
            ))
            .unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(["verify", "--primary"])
        .arg(&p)
        .arg("--replica")
        .arg(&r)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let who = format!("Held by aerodb verify (pid {})", child.id());
    let seen = replica.wait_until(deadline(), |v| {
        v.components.iter().any(|c| c.state.starts_with(&who))
            || v.components.iter().any(|c| {
                c.last_transition
                    .as_deref()
                    .is_some_and(|t| t.starts_with("released by aerodb verify"))
            })
    });
    assert!(seen.is_ok(), "{seen:?}");
    let _ = child.kill();
    let _ = child.wait();
    replica
        .wait_until(deadline(), |v| !held(v) && v.running)
        .unwrap_or_else(|v| panic!("still held after its holder was killed: {v:?}"));
    open.store(true, Ordering::SeqCst);
    commit(&primary, 99_999);
    let view = wait_caught_up(&replica, primary.head().unwrap());
    assert!(
        view.components.iter().all(|c| c.last_error.is_none()),
        "{:?}",
        view.components
    );
    replica.stop();
    assert_equal(&p, &r, "after the killed verify");
}

/// Many verifies at once on a replica under writes: each is equal or
/// refused with a reason; none hangs; the runtime goes on.
#[test]
fn held_concurrent_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t"]);
    let replica = start(&r, &p);
    let writer = std::thread::spawn(move || {
        for n in 100..400 {
            commit(&primary, n);
        }
        primary
    });
    let outcome = within(move || {
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (p, r) = (p.clone(), r.clone());
                std::thread::spawn(move || {
                    let mut ok = 0;
                    for _ in 0..4 {
                        match verify(&p, &r) {
                            Ok(v) => {
                                assert_eq!(v.difference, None, "{v:?}");
                                ok += 1;
                            }
                            Err(e) => {
                                let e = e.to_string();
                                assert!(e.contains("refused"), "{e}");
                            }
                        }
                    }
                    ok
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum::<i32>()
    });
    let ok = outcome.expect("concurrent verifies did not end");
    assert!(ok >= 1);
    let primary = writer.join().unwrap();
    let view = wait_caught_up(&replica, primary.head().unwrap());
    assert!(view.components.iter().all(|c| c.last_error.is_none()));
    replica.stop();
}

/// 16 silent connections, garbage, a hold then garbage: the runtime still
/// stops promptly, and the held one is released.
#[test]
fn held_silent_connections_and_garbage_do_not_hang_stop() {
    let (_dir, _primary, p, r, replica) = caught_up();
    let (answer, mut h) = hold(&r, "garbage after");
    assert!(answer.starts_with("ok held"), "{answer}");
    h.write_all(&[0xff, 0x00, b'\n']).unwrap();
    // The garbage ends the hold (not `release`).
    replica
        .wait_until(deadline(), |v| !held(v))
        .unwrap_or_else(|v| panic!("{v:?}"));
    let mut silent: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(control(&r)).unwrap())
        .collect();
    // The handler of the garbage's connection may still be ending, so a
    // slot may free up once: a verify that gets it holds and releases (its
    // own slot frees again), and one more silent connection takes it.
    // Silent connections never end, so the refusal comes.
    let mut refusal = None;
    for _ in 0..4 {
        match verify(&p, &r) {
            Err(e) if e.to_string().contains("too many control connections") => {
                refusal = Some(e.to_string());
                break;
            }
            Ok(v) => assert_eq!(v.difference, None),
            Err(e) => panic!("{e}"),
        }
        silent.push(UnixStream::connect(control(&r)).unwrap());
    }
    assert!(refusal.is_some(), "never refused for their number");
    let stopped = within(move || replica.stop().running);
    assert_eq!(stopped, Some(false));
    drop(silent);
}

/// A runtime SIGKILLed (the `aerodb replica` CLI) leaves its socket file;
/// verify of the stopped replica takes the lock; the next start replaces
/// the stale socket and a verify holds it.
#[test]
fn held_a_stale_socket_of_a_killed_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(["replica", "--primary"])
        .arg(&p)
        .arg("--replica")
        .arg(&r)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Its first stdout line comes once it runs (the socket is bound before).
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // Wait for the socket to answer a hold, then kill the process.
    let (answer, _s) = loop {
        if let Ok(mut s) = UnixStream::connect(control(&r)) {
            writeln!(s, "hold probe").unwrap();
            break (read_line(&s), s);
        }
        out.read_line(&mut line).unwrap();
    };
    assert!(answer.starts_with("ok held"), "{answer}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(control(&r).exists(), "a stale socket is left");
    commit(&primary, 40);
    let v = verify(&p, &r).unwrap();
    assert_eq!(v.difference, None);
    assert_eq!(v.held, None);
    let replica = start(&r, &p);
    commit(&primary, 41);
    wait_caught_up(&replica, primary.head().unwrap());
    let v = verify(&p, &r).unwrap();
    assert_eq!(v.difference, None);
    assert!(v.held.is_some());
    replica.stop();
    assert!(!control(&r).exists());
}

/// A deep directory (path over 107 bytes, short file name): the
/// `/proc/self/fd/N` address works for both sides.
#[test]
fn held_a_deep_directory() {
    let top = tempfile::tempdir().unwrap();
    let mut dir = top.path().to_path_buf();
    for _ in 0..8 {
        dir.push("d".repeat(20));
    }
    std::fs::create_dir_all(&dir).unwrap();
    let (primary, p, r) = pair(&dir, SCHEMA, &["t"]);
    assert!(control(&r).as_os_str().len() > 107);
    let replica = start(&r, &p);
    commit(&primary, 10);
    let v = verify(&p, &r).unwrap();
    assert_eq!(v.difference, None);
    assert!(v.held.is_some());
    commit(&primary, 11);
    wait_caught_up(&replica, primary.head().unwrap());
    let stopped = within(move || replica.stop().running);
    assert_eq!(stopped, Some(false));
}

/// What `aerodb status` and the read gate say while held.
#[test]
fn held_status_while_held() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t"]);
    let replica = start(&r, &p);
    let head = primary.head().unwrap();
    wait_caught_up(&replica, head);
    let (answer, h) = hold(&r, "a status test");
    assert!(answer.starts_with("ok held"));
    let out = Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .arg("status")
        .arg(&r)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Held by a status test"), "{text}");
    let released = release(h);
    assert!(released.starts_with("ok released"));
    replica.stop();
    let _ = p;
}

/// The replica file reached through a symlink: the runtime's lock (and
/// control socket) are named after the path string, so verify takes a lock
/// nobody holds, calls the replica stopped, and applies and digests it
/// while the runtime goes on applying: no hold, the runtime never knows.
#[test]
fn a_running_replica_reached_through_a_symlink_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t"]);
    let replica = start(&r, &p);
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&r, &link).unwrap();
    commit(&primary, 10);
    let v = verify(&p, &link).unwrap();
    assert!(
        v.held.is_some(),
        "verify of the running replica (through {}) held nothing: {v:?}",
        link.display()
    );
    replica.stop();
}

/// What the unheld verify of the test above does under writes: it applies
/// commits from the primary that the runtime's Receiver is storing at the
/// same time, so the runtime's recovery finds a stored segment behind the
/// applied position (TORN_STATE), its Supervisor fails, and the replica
/// does not start again.
#[test]
fn a_symlinked_verify_under_writes_leaves_the_runtime_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(dir.path(), SCHEMA, &["t"]);
    let replica = start(&r, &p);
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&r, &link).unwrap();
    let writer = std::thread::spawn(move || {
        for n in 100..600 {
            commit(&primary, n);
        }
        primary
    });
    let mut verifies = 0;
    while !writer.is_finished() {
        let _ = verify(&p, &link);
        verifies += 1;
    }
    let primary = writer.join().unwrap();
    let head = primary.head().unwrap();
    let view = replica
        .wait_until(deadline(), |v| v.applied.commit_id >= head || !v.running)
        .unwrap_or_else(|v| v);
    let errors: Vec<_> = view
        .components
        .iter()
        .filter_map(|c| {
            c.last_error
                .as_ref()
                .map(|e| format!("{:?}: {e}", c.component))
        })
        .collect();
    replica.stop();
    let again = Replica::start_from_file(&r, &p, Config::default()).unwrap();
    let after = again
        .wait_until(deadline(), |v| v.applied.commit_id >= head || !v.running)
        .unwrap_or_else(|v| v);
    let supervisor = after.component(Component::Supervisor).clone();
    again.stop();
    assert!(
        errors.is_empty() && after.running,
        "after {verifies} verifies through {}: runtime errors: {errors:#?}; the next start: running={} {:?}",
        link.display(),
        after.running,
        supervisor.last_error
    );
}
