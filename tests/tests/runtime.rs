//! The threaded runtime on real files: a replica follows a primary file,
//! its state, segments and transition history are recorded, and each
//! failure boundary of spec section 8 shows up as the state it must be.
//! Every wait is on a condition of the published state, never a sleep.

use aerodb_e2e::dump_table;
use replication::runtime::{Component, Config};
use replication::state::{GlobalKind, GlobalState, ReadStatus};
use replication::wal::CommitId;
use std::path::Path;
use std::time::{Duration, Instant};
use storage_adapter::primary::Primary;
use storage_adapter::runtime::Replica;

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn primary(path: &Path) -> Primary {
    let p = Primary::open(path).expect("primary");
    p.connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .expect("table");
    p.replicate("t").expect("replicate");
    p
}

fn write(p: &Primary, ids: std::ops::RangeInclusive<i64>) -> CommitId {
    for id in ids {
        p.connection()
            .execute("INSERT INTO t VALUES (?1, 'v' || ?1)", [id])
            .expect("insert");
    }
    p.head().expect("head")
}

fn ready(s: &replication::runtime::View) -> bool {
    s.global
        == GlobalState::Ready {
            read: ReadStatus::Safe,
        }
}

#[test]
fn replica_follows_a_primary_file_and_records_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(&dir.path().join("p.db"));
    let head = write(&p, 1..=50);
    let config = Config {
        segment_bytes: 512,
        ..Config::default()
    };
    let replica =
        Replica::start_from_file(dir.path().join("r.db"), dir.path().join("p.db"), config)
            .expect("start");
    replica.wait_for(head, deadline()).expect("caught up");
    let s = replica
        .wait_until(deadline(), ready)
        .expect("Ready once caught up");
    assert_eq!(s.progress.applied, head);
    // Live writes are followed.
    let head = write(&p, 51..=60);
    replica.wait_for(head, deadline()).expect("follows");
    let r = rusqlite::Connection::open(dir.path().join("r.db")).expect("open");
    assert_eq!(dump_table(&r, "t"), dump_table(p.connection(), "t"));
    let d = replica.explain_read(Some(head)).expect("gate");
    assert!(d.allowed(), "{d}");
    let d = replica.explain_read(Some(head.next())).expect("gate");
    assert!(!d.allowed(), "{d}");
    let segments = replica.segments().expect("segments");
    assert!(segments.len() > 3, "{segments:?}");
    assert!(
        segments.iter().all(|s| s.state == "Applied"),
        "{segments:?}"
    );
    let last = replica.stop();
    assert!(!last.running);
    assert_eq!(last.global, GlobalState::Disabled);
    let transitions = storage_adapter::runtime::transitions_in(&r).expect("history");
    let kinds: Vec<&str> = transitions.iter().map(|t| t.to_state.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"Initializing"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"Disabled"), "{kinds:?}");
    assert!(kinds.contains(&"ApplyingWAL"), "{kinds:?}");
    assert_eq!(
        last.component(Component::Applier).last_error,
        None,
        "{:?}",
        last.components
    );
    let _ = GlobalKind::Ready;
}

// ------------------------------------------------------ failure boundaries

use replication::runtime::{
    ApplyStorage, Failure, FailureCode, Fetched, StateStore, StopSignal, Storage, StoreOp,
    StoredState, View, WaitError, WalSource,
};
use replication::wal::{ChainPosition, ValidatedSegment};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use storage_adapter::runtime::{read_gate_in, segments_in, FileSource, SqliteStorage};

/// A file source with faults: fails the fetch numbered `fail_at` (counting
/// from 0), or flips one byte of the segment numbered `corrupt_at`.
struct FaultySource {
    inner: FileSource,
    fetches: usize,
    fail_at: Option<usize>,
    corrupt_at: Option<usize>,
}

impl WalSource for FaultySource {
    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }
    fn fetch(&mut self, from: CommitId, max: usize) -> Result<Option<Fetched>, Failure> {
        let n = self.fetches;
        let fetched = self.inner.fetch(from, max)?;
        if fetched.is_some() {
            self.fetches += 1;
        }
        if self.fail_at == Some(n) {
            return Err(Failure::new(
                FailureCode::Source,
                "injected: connection to the primary lost",
            ));
        }
        Ok(fetched.map(|mut f| {
            if self.corrupt_at == Some(n) {
                let i = f.bytes.len() - 10;
                f.bytes[i] ^= 0x40;
            }
            f
        }))
    }
    fn wait_for_wal(&mut self, stop: &StopSignal) -> Result<bool, Failure> {
        self.inner.wait_for_wal(stop)
    }
}

fn faulty(dir: &Path, fail_at: Option<usize>, corrupt_at: Option<usize>) -> Box<FaultySource> {
    Box::new(FaultySource {
        inner: FileSource::open(dir.join("p.db")).expect("source"),
        fetches: 0,
        fail_at,
        corrupt_at,
    })
}

fn small() -> Config {
    Config {
        segment_bytes: 300,
        ..Config::default()
    }
}

fn blocked(s: &View) -> bool {
    replication::runtime::is_blocked(&s.global)
}

fn generation(dir: &Path) -> replication::wal::Generation {
    FileSource::open(dir.join("p.db"))
        .expect("source")
        .generation()
}

#[test]
fn receiver_failure_stops_replication_explicitly() {
    // F1: the source fails; replication stops, read-blocked, reason visible.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(&dir.path().join("p.db"));
    let head = write(&p, 1..=20);
    let replica = Replica::start(
        dir.path().join("r.db"),
        faulty(dir.path(), Some(2), None),
        generation(dir.path()),
        small(),
    )
    .expect("start");
    let s = replica.wait_until(deadline(), blocked).expect("blocked");
    assert!(
        s.global
            .to_string()
            .contains("WAL receiver failed: SOURCE: injected: connection to the primary lost"),
        "{}",
        s.global
    );
    let r = s.component(Component::Receiver);
    assert_eq!(r.state, "Failed");
    assert_eq!(
        r.last_error.as_ref().map(|e| e.code.as_str()),
        Some("SOURCE")
    );
    // Nothing after the failure is received; reads are refused, with why.
    assert!(s.progress.received < head);
    let d = replica.explain_read(None).expect("gate");
    assert!(!d.allowed(), "{d}");
    assert!(d.explanation.contains("replication is blocked"), "{d}");
    match replica.wait_for(head, deadline()) {
        Err(WaitError::Unreachable { .. }) => {}
        other => panic!("waiting on a blocked replica must fail at once: {other:?}"),
    }
    replica.stop();
}

#[test]
fn validator_rejection_blocks_application_and_names_the_segment() {
    // F2 + E1/E2: a corrupt segment is rejected, named by CommitIds and WAL
    // offset; nothing after it is applied; the replica keeps what it had.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(&dir.path().join("p.db"));
    let head = write(&p, 1..=20);
    let replica = Replica::start(
        dir.path().join("r.db"),
        faulty(dir.path(), None, Some(1)),
        generation(dir.path()),
        small(),
    )
    .expect("start");
    // Blocked, and everything validated before the rejection applied.
    let s = replica
        .wait_until(deadline(), |s| {
            blocked(s) && s.progress.applied == s.progress.validated
        })
        .expect("blocked");
    let v = s.component(Component::Validator);
    let e = v.last_error.clone().expect("validator error");
    assert_eq!(e.code, "CORRUPT", "{e:?}");
    let (first, last) = e.segment.expect("segment named");
    assert_eq!(first, s.applied.commit_id.next(), "the next segment");
    assert_eq!(e.wal_offset, Some(s.applied.wal_offset), "{e:?}");
    assert!(e.expected.is_some() && e.actual.is_some(), "{e:?}");
    assert!(
        s.global.to_string().contains(&format!(
            "segment {first}..={last} at WAL offset {} rejected",
            s.applied.wal_offset
        )),
        "{}",
        s.global
    );
    let applied_before = s.applied;
    replica.stop();
    let conn = rusqlite::Connection::open(dir.path().join("r.db")).expect("open");
    let rows = segments_in(&conn).expect("segments");
    let rejected: Vec<_> = rows.iter().filter(|r| r.state == "Rejected").collect();
    assert_eq!(rejected.len(), 1, "{rows:?}");
    assert_eq!(rejected[0].first_commit_id, first);
    assert!(
        rejected[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("segment CRC32"),
        "{rows:?}"
    );
    // The replica holds exactly the prefix it applied.
    let t = dump_table(&conn, "t");
    assert_eq!(
        t.len() as u64,
        applied_before.commit_id.0 - 1,
        "schema commit + rows"
    );
    // A restart re-validates the persisted segment (deterministic): still
    // blocked, same reason; the last error survived the restart.
    let replica = Replica::start(
        dir.path().join("r.db"),
        faulty(dir.path(), None, None),
        generation(dir.path()),
        small(),
    )
    .expect("restart");
    let s = replica
        .wait_until(deadline(), blocked)
        .expect("still blocked");
    assert_eq!(s.applied, applied_before);
    assert_eq!(
        s.component(Component::Validator)
            .last_error
            .as_ref()
            .map(|e| e.code.as_str()),
        Some("CORRUPT")
    );
    assert!(s.progress.applied < head);
    replica.stop();
}

/// Storage with faults: the Applier's storage fails `apply_failures` times
/// (as a full disk would), the state store fails after `records_ok`
/// writes.
struct FaultyStorage {
    inner: SqliteStorage,
    apply_failures: Arc<AtomicUsize>,
    records_ok: Option<usize>,
}

struct FaultyApply {
    inner: Box<dyn ApplyStorage>,
    failures: Arc<AtomicUsize>,
}

impl ApplyStorage for FaultyApply {
    fn apply(&mut self, segment: &ValidatedSegment) -> Result<ChainPosition, Failure> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 && segment.start().commit_id.0 >= 3 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(Failure::new(
                FailureCode::DiskFull,
                "injected: database or disk is full",
            ));
        }
        self.inner.apply(segment)
    }

    fn install_snapshot(
        &mut self,
        first: CommitId,
        last: CommitId,
        path: &Path,
        end: ChainPosition,
    ) -> Result<ChainPosition, Failure> {
        self.inner.install_snapshot(first, last, path, end)
    }
}

struct FaultyStore {
    inner: Box<dyn StateStore>,
    left: Option<usize>,
}

impl StateStore for FaultyStore {
    fn open(&mut self) -> Result<StoredState, Failure> {
        self.inner.open()
    }
    fn record(&mut self, ops: &[StoreOp]) -> Result<(), Failure> {
        match &mut self.left {
            Some(0) => Err(Failure::new(
                FailureCode::Storage,
                "injected: disk I/O error",
            )),
            Some(n) => {
                *n -= 1;
                self.inner.record(ops)
            }
            None => self.inner.record(ops),
        }
    }
}

impl Storage for FaultyStorage {
    fn state_store(&self) -> Result<Box<dyn StateStore>, Failure> {
        Ok(Box::new(FaultyStore {
            inner: self.inner.state_store()?,
            left: self.records_ok,
        }))
    }
    fn wal_storage(&self) -> Result<Box<dyn replication::runtime::WalStorage>, Failure> {
        self.inner.wal_storage()
    }
    fn segment_reader(&self) -> Result<Box<dyn replication::runtime::SegmentReader>, Failure> {
        self.inner.segment_reader()
    }
    fn apply_storage(&self) -> Result<Box<dyn ApplyStorage>, Failure> {
        Ok(Box::new(FaultyApply {
            inner: self.inner.apply_storage()?,
            failures: Arc::clone(&self.apply_failures),
        }))
    }
}

fn start_faulty(dir: &Path, failures: Arc<AtomicUsize>, records_ok: Option<usize>) -> Replica {
    Replica::start_with_storage(
        dir.join("r.db"),
        faulty(dir, None, None),
        generation(dir),
        small(),
        move |path| {
            Box::new(FaultyStorage {
                inner: SqliteStorage::new(path),
                apply_failures: failures,
                records_ok,
            })
        },
    )
    .expect("start")
}

#[test]
fn applier_failure_triggers_recovery_which_resumes() {
    // F3: a failed apply (disk full) -> Recovering -> re-validation from
    // the applied position -> applied; the error is kept until a success.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(&dir.path().join("p.db"));
    let head = write(&p, 1..=20);
    let replica = start_faulty(dir.path(), Arc::new(AtomicUsize::new(1)), None);
    replica
        .wait_for(head, deadline())
        .expect("recovered and caught up");
    let s = replica.wait_until(deadline(), ready).expect("ready");
    assert_eq!(
        s.component(Component::Applier).last_error,
        None,
        "cleared by a later success"
    );
    let history = replica.transitions().expect("history");
    let i = history
        .iter()
        .position(|t| t.to_state == "Recovering")
        .expect("went through Recovering");
    assert!(
        history[i]
            .reason
            .contains("failed: DISK_FULL: injected: database or disk is full"),
        "{:?}",
        history[i]
    );
    assert_eq!(history[i].from_state, "ApplyingWAL");
    assert_eq!(history[i + 1].reason, "recovery finished", "{history:?}");
    let r = rusqlite::Connection::open(dir.path().join("r.db")).expect("open");
    assert_eq!(dump_table(&r, "t"), dump_table(p.connection(), "t"));
    replica.stop();
}

#[test]
fn an_applier_failure_that_recovery_cannot_fix_blocks_instead_of_retrying() {
    // X4: no hidden retry loop: the same segment failing again after
    // recovery stops replication, read-blocked, with both failures told.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(&dir.path().join("p.db"));
    let _ = write(&p, 1..=20);
    let failures = Arc::new(AtomicUsize::new(usize::MAX));
    let replica = start_faulty(dir.path(), Arc::clone(&failures), None);
    let s = replica.wait_until(deadline(), blocked).expect("blocked");
    assert!(
        s.global
            .to_string()
            .contains("failed again after recovery: DISK_FULL: injected: database or disk is full"),
        "{}",
        s.global
    );
    let history = replica.transitions().expect("history");
    // Exactly two attempts: the first and the one after recovery.
    assert_eq!(
        usize::MAX - failures.load(Ordering::SeqCst),
        2,
        "{history:?}"
    );
    let finished = history
        .iter()
        .filter(|t| t.reason == "recovery finished")
        .count();
    assert!(finished <= 1, "{history:?}");
    let last = history.last().expect("transitions");
    assert!(
        last.reason.starts_with("recovery failed: applying segment"),
        "{last:?}"
    );
    let e = s
        .component(Component::Applier)
        .last_error
        .clone()
        .expect("error");
    assert_eq!(e.code, "DISK_FULL");
    assert!(e.segment.is_some(), "{e:?}");
    replica.stop();
}

#[test]
fn a_stored_segment_damaged_on_the_replica_is_discarded_and_fetched_again() {
    // Issue 11 item 5: a Received segment whose stored bytes fail their
    // checksum locally (the replica's own copy is damaged) while the source
    // still serves it is discarded and fetched again through a recorded
    // transition naming it. (A rejection of what the source sends stays a
    // block: validator_rejection_blocks_application_and_names_the_segment.)
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(&dir.path().join("p.db"));
    let head = write(&p, 1..=20);
    // An Applier that always fails from commit 3 on: received segments stay
    // stored, unapplied.
    let replica = start_faulty(dir.path(), Arc::new(AtomicUsize::new(usize::MAX)), None);
    let s = replica.wait_until(deadline(), blocked).expect("blocked");
    replica.stop();
    let r_path = dir.path().join("r.db");
    let damaged = {
        let conn = aerodb_e2e::tampering(&r_path);
        let (first, last, mut bytes): (i64, i64, Vec<u8>) = conn
            .query_row(
                "SELECT s.first_commit_id, s.last_commit_id, b.bytes FROM aerodb_replica_segments s JOIN aerodb_replica_segment_bytes b USING (first_commit_id) WHERE s.first_commit_id = ?1",
                [s.applied.commit_id.next().0 as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("the first unapplied stored segment");
        let n = bytes.len();
        bytes[n / 2] ^= 0x20;
        conn.execute(
            "UPDATE aerodb_replica_segment_bytes SET bytes = ?2 WHERE first_commit_id = ?1",
            rusqlite::params![first, bytes],
        )
        .expect("damage the stored copy");
        (first as u64, last as u64)
    };

    // Restarted with healthy storage: recovery reads the damaged copy,
    // discards it, fetches it again and catches up.
    let replica =
        Replica::start_from_file(&r_path, dir.path().join("p.db"), small()).expect("restart");
    let s = replica
        .wait_until(deadline(), |s| {
            blocked(s) || (ready(s) && s.applied.commit_id == head)
        })
        .expect("caught up or blocked");
    assert!(ready(&s) && s.applied.commit_id == head, "{}", s.global);
    let wanted = format!(
        "segment {}..={} as stored on this replica fails validation (CORRUPT: ",
        damaged.0, damaged.1
    );
    let history = replica.transitions().expect("history");
    let discard = history
        .iter()
        .find(|t| t.reason.starts_with(&wanted))
        .unwrap_or_else(|| panic!("no transition {wanted:?} in {history:#?}"));
    assert!(
        discard.reason.ends_with(&format!(
            "it and everything received after it were discarded and are fetched again from the source from commit {}",
            damaged.0
        )),
        "{discard:?}"
    );
    assert_eq!(discard.from_state, "Recovering", "{discard:?}");
    let r = rusqlite::Connection::open(&r_path).expect("open");
    assert_eq!(dump_table(&r, "t"), dump_table(p.connection(), "t"));
    assert!(replica.explain_read(Some(head)).expect("gate").allowed());
    replica.stop();
}

#[test]
fn two_failures_in_one_recovery_restart_the_pipeline_once() {
    // Found in review: recovery re-validates a good stored segment whose
    // apply fails once (disk full) and then a damaged stored segment; the
    // Supervisor handled the second failure inside the first one's
    // pipeline stop and started the pipeline twice (the replica went
    // Disabled: "the WAL source was lost by a previous run").
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(&dir.path().join("p.db"));
    let head = write(&p, 1..=20);
    let replica = start_faulty(dir.path(), Arc::new(AtomicUsize::new(usize::MAX)), None);
    replica.wait_until(deadline(), blocked).expect("blocked");
    replica.stop();
    {
        let conn = aerodb_e2e::tampering(&dir.path().join("r.db"));
        let (first, mut bytes): (i64, Vec<u8>) = conn
            .query_row(
                "SELECT s.first_commit_id, b.bytes FROM aerodb_replica_segments s JOIN aerodb_replica_segment_bytes b USING (first_commit_id) WHERE s.state <> 'Applied' ORDER BY s.first_commit_id LIMIT 1 OFFSET 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("the second unapplied stored segment");
        let n = bytes.len();
        bytes[n / 2] ^= 0x20;
        conn.execute(
            "UPDATE aerodb_replica_segment_bytes SET bytes = ?2 WHERE first_commit_id = ?1",
            rusqlite::params![first, bytes],
        )
        .expect("damage it");
    }
    let replica = start_faulty(dir.path(), Arc::new(AtomicUsize::new(1)), None);
    let s = replica
        .wait_until(deadline(), |s| {
            !s.running || blocked(s) || (ready(s) && s.applied.commit_id == head)
        })
        .expect("settled");
    assert!(
        s.running && ready(&s) && s.applied.commit_id == head,
        "{} running={} supervisor={:?}",
        s.global,
        s.running,
        s.component(Component::Supervisor).last_error
    );
    replica.stop();
}

#[test]
fn a_damaged_stored_segment_found_while_the_primary_is_mid_migration_is_refetched_after_it() {
    // Found in review: recovery meets a damaged stored segment while the
    // primary's capture is broken (a migration under way: the Receiver's
    // SOURCE_UNAVAILABLE may come first); the discard was refused outside
    // Recovering and the Supervisor went down. Both orders now end caught
    // up once the primary is replicated again.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(&dir.path().join("p.db"));
    write(&p, 1..=20);
    let replica = start_faulty(dir.path(), Arc::new(AtomicUsize::new(usize::MAX)), None);
    let s = replica.wait_until(deadline(), blocked).expect("blocked");
    replica.stop();
    let r_path = dir.path().join("r.db");
    {
        let conn = aerodb_e2e::tampering(&r_path);
        let (first, mut bytes): (i64, Vec<u8>) = conn
            .query_row(
                "SELECT s.first_commit_id, b.bytes FROM aerodb_replica_segments s JOIN aerodb_replica_segment_bytes b USING (first_commit_id) WHERE s.first_commit_id = ?1",
                [s.applied.commit_id.next().0 as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("the first unapplied stored segment");
        let n = bytes.len();
        bytes[n / 2] ^= 0x20;
        conn.execute(
            "UPDATE aerodb_replica_segment_bytes SET bytes = ?2 WHERE first_commit_id = ?1",
            rusqlite::params![first, bytes],
        )
        .expect("damage the stored copy");
    }
    p.connection()
        .execute_batch("ALTER TABLE t ADD COLUMN w TEXT")
        .expect("a migration under way");
    let replica =
        Replica::start_from_file(&r_path, dir.path().join("p.db"), small()).expect("restart");
    replica
        .wait_until(deadline(), |s| !s.running || blocked(s))
        .expect("waiting for the migration");
    p.replicate("t").expect("replicate again");
    let head = p.head().expect("head");
    let s = replica
        .wait_until(deadline(), |s| {
            !s.running || (ready(s) && s.applied.commit_id == head)
        })
        .expect("settled");
    assert!(
        s.running && ready(&s) && s.applied.commit_id == head,
        "{} running={} supervisor={:?}",
        s.global,
        s.running,
        s.component(Component::Supervisor).last_error
    );
    let r = rusqlite::Connection::open(&r_path).expect("open");
    assert_eq!(dump_table(&r, "t"), dump_table(p.connection(), "t"));
    replica.stop();
}

#[test]
fn a_full_disk_blocks_and_an_operators_resume_recovers_recorded() {
    // Issue 11 item 5: disk full stops replication explicitly (recovery
    // once, then blocked); once space is back, an operator's resume (here
    // the Rust API; `aerodb_replica_resume()` in SQL) recovers through a
    // recorded transition, without a restart.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(&dir.path().join("p.db"));
    let head = write(&p, 1..=20);
    // Two failures: the first apply and the one after recovery.
    let failures = Arc::new(AtomicUsize::new(2));
    let replica = start_faulty(dir.path(), Arc::clone(&failures), None);
    let s = replica.wait_until(deadline(), blocked).expect("blocked");
    assert!(
        s.global
            .to_string()
            .contains("failed again after recovery: DISK_FULL"),
        "{}",
        s.global
    );
    assert_eq!(failures.load(Ordering::SeqCst), 0, "space is back");
    // Nothing lifts it by itself; a resume does, recorded with who asked.
    let from = replica.resume("the test (disk freed)").expect("resumes");
    assert!(from.contains("DISK_FULL"), "{from}");
    let s = replica
        .wait_until(deadline(), |s| ready(s) && s.applied.commit_id == head)
        .expect("recovered and caught up");
    assert_eq!(s.component(Component::Applier).last_error, None);
    let history = replica.transitions().expect("history");
    assert!(
        history.iter().any(|t| t.to_state == "Recovering"
            && t.reason
                == format!(
                    "resumed by the test (disk freed): re-validating from applied commit {}",
                    t.applied_commit_id
                )),
        "{history:#?}"
    );
    assert!(replica.explain_read(Some(head)).expect("gate").allowed());
    // Nothing to resume on a healthy replica: refused, nothing recorded.
    let before = replica.transitions().expect("history").len();
    let e = replica.resume("the test").expect_err("not blocked");
    assert!(
        e.starts_with("nothing to resume: the replica is Ready (read-safe)"),
        "{e}"
    );
    assert_eq!(replica.transitions().expect("history").len(), before);
    replica.stop();
}

#[test]
fn supervisor_failure_makes_the_replica_unavailable() {
    // F4: the state store stops accepting writes; the Supervisor cannot
    // record transitions, so the replica goes Disabled, stops its threads,
    // and says why.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(&dir.path().join("p.db"));
    let head = write(&p, 1..=20);
    let replica = start_faulty(dir.path(), Arc::new(AtomicUsize::new(0)), Some(1));
    let s = replica
        .wait_until(deadline(), |s| !s.running)
        .expect("stopped");
    assert_eq!(s.global, GlobalState::Disabled);
    let e = s
        .component(Component::Supervisor)
        .last_error
        .clone()
        .expect("error");
    assert_eq!(e.code, "STORAGE");
    assert!(e.reason.contains("injected: disk I/O error"), "{e:?}");
    match replica.wait_for(head.next(), deadline()) {
        Err(WaitError::Unreachable { .. }) => {}
        other => panic!("an unavailable replica cannot be waited on: {other:?}"),
    }
    replica.stop();
}

#[test]
fn read_gate_failure_refuses_reads() {
    // F5: state that cannot be read refuses the read, saying why.
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = rusqlite::Connection::open(dir.path().join("plain.db")).expect("open");
    let d = read_gate_in(&plain, None);
    assert!(!d.allowed());
    assert_eq!(d.code.as_str(), "UNOBSERVABLE", "{d}");
    // A replica whose recorded state is unreadable is refused too.
    let p = primary(&dir.path().join("p.db"));
    let head = write(&p, 1..=3);
    let replica =
        Replica::start_from_file(dir.path().join("r.db"), dir.path().join("p.db"), small())
            .expect("start");
    replica.wait_for(head, deadline()).expect("caught up");
    replica.stop();
    let r = aerodb_e2e::tampering(&dir.path().join("r.db"));
    assert!(read_gate_in(&r, Some(head)).allowed());
    r.execute("UPDATE aerodb_replica_state SET global_state = 'Bogus'", [])
        .expect("tamper");
    let d = read_gate_in(&r, Some(head));
    assert!(!d.allowed(), "{d}");
    assert!(d.explanation.contains("'Bogus' is unknown"), "{d}");
}

#[test]
fn the_gate_answers_for_the_readers_own_snapshot() {
    // G1: inside a read transaction, the decision and the data agree even
    // while the replica applies more.
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(&dir.path().join("p.db"));
    let first = write(&p, 1..=5);
    let replica =
        Replica::start_from_file(dir.path().join("r.db"), dir.path().join("p.db"), small())
            .expect("start");
    replica.wait_for(first, deadline()).expect("caught up");
    let r = rusqlite::Connection::open(dir.path().join("r.db")).expect("open");
    r.execute_batch("BEGIN").expect("begin");
    let rows_before = dump_table(&r, "t").len();
    let later = write(&p, 6..=10);
    replica
        .wait_for(later, deadline())
        .expect("applied later commits");
    // This transaction still sees the old snapshot: the gate says so.
    let d = read_gate_in(&r, Some(later));
    assert!(!d.allowed(), "{d}");
    assert!(read_gate_in(&r, Some(first)).allowed());
    assert_eq!(dump_table(&r, "t").len(), rows_before);
    r.execute_batch("COMMIT").expect("end");
    assert!(read_gate_in(&r, Some(later)).allowed());
    replica.stop();
}

#[test]
fn a_second_runtime_on_the_same_replica_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _p = primary(&dir.path().join("p.db"));
    let a = Replica::start_from_file(dir.path().join("r.db"), dir.path().join("p.db"), small())
        .expect("start");
    let err = Replica::start_from_file(dir.path().join("r.db"), dir.path().join("p.db"), small())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("is already running"), "{err}");
    a.stop();
    let b = Replica::start_from_file(dir.path().join("r.db"), dir.path().join("p.db"), small())
        .expect("free again after stop");
    b.stop();
}
