//! The production Runtime over the memory ports, with a
//! state store / storage that fails where SQLite can (a full disk, a
//! connection that cannot be opened).

use replication::runtime::mem::{MemPrimary, MemReplica};
use replication::runtime::{
    ApplyStorage, Component, Config, Failure, FailureCode, Runtime, SegmentReader, StateStore,
    Storage, StoreOp, StoredState, WalStorage,
};
use replication::state::{GlobalState, ReadStatus};
use replication::wal::{Change, Generation, Value};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const GEN: Generation = Generation(0x5117);
const WAIT: Duration = Duration::from_secs(20);

/// MemReplica's storage; records holding a transition to Disabled fail
/// (`fail_stop_record`), opening WAL storage fails (`fail_wal_storage`).
struct Faulty {
    inner: MemReplica,
    fail_stop_record: bool,
    fail_wal_storage: bool,
}

struct FaultyStore {
    inner: Box<dyn StateStore>,
    fail_stop_record: bool,
}

impl StateStore for FaultyStore {
    fn open(&mut self) -> Result<StoredState, Failure> {
        self.inner.open()
    }
    fn record(&mut self, ops: &[StoreOp]) -> Result<(), Failure> {
        let stop = ops
            .iter()
            .any(|op| matches!(op, StoreOp::Transition(t) if t.to_kind == "Disabled"));
        if self.fail_stop_record && stop {
            return Err(Failure::new(
                FailureCode::StateStore,
                "database or disk is full (injected)",
            ));
        }
        self.inner.record(ops)
    }
}

impl Storage for Faulty {
    fn state_store(&self) -> Result<Box<dyn StateStore>, Failure> {
        Ok(Box::new(FaultyStore {
            inner: self.inner.storage().state_store()?,
            fail_stop_record: self.fail_stop_record,
        }))
    }
    fn wal_storage(&self) -> Result<Box<dyn WalStorage>, Failure> {
        if self.fail_wal_storage {
            return Err(Failure::new(
                FailureCode::Storage,
                "unable to open database file (injected)",
            ));
        }
        self.inner.storage().wal_storage()
    }
    fn segment_reader(&self) -> Result<Box<dyn SegmentReader>, Failure> {
        self.inner.storage().segment_reader()
    }
    fn apply_storage(&self) -> Result<Box<dyn ApplyStorage>, Failure> {
        self.inner.storage().apply_storage()
    }
}

fn insert(k: i64) -> Vec<Change> {
    vec![Change::Insert {
        table: "t".into(),
        values: vec![Value::Integer(k)],
    }]
}

/// Old runner: the stop's failed record is an F4 (recorded best effort,
/// published not running) and the thread ends. New: `stop()` never returns.
#[test]
fn a_stop_whose_record_fails_still_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let primary = MemPrimary::new(GEN);
    primary.commit(&insert(1));
    let replica = MemReplica::new(GEN, dir.path());
    let storage = Faulty {
        inner: replica.clone(),
        fail_stop_record: true,
        fail_wal_storage: false,
    };
    let rt = Runtime::start(
        Box::new(primary.source()),
        Box::new(storage),
        GEN,
        Config::default(),
    );
    let head = primary.head();
    rt.wait_until(Instant::now() + WAIT, |s| {
        s.applied.commit_id == head
            && s.global
                == GlobalState::Ready {
                    read: ReadStatus::Safe,
                }
    })
    .expect("caught up");
    // Ask for the stop without joining (a join would hang this test).
    rt.stop_requester().request_stop("stopped by the test");
    match rt.wait_until(Instant::now() + WAIT, |s| !s.running) {
        Ok(view) => {
            let sup = view.component(Component::Supervisor).last_error.clone();
            assert_eq!(sup.map(|f| f.code), Some(FailureCode::StateStore));
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(rt.stop());
            });
            rx.recv_timeout(WAIT).expect("Runtime::stop() returns");
        }
        Err(view) => {
            // The thread still reads events: what does it tell an operator?
            let answer = rt.resume("operator");
            // Leak it: dropping it would join a thread that never ends.
            std::mem::forget(rt);
            panic!(
                "no view that is not running within {WAIT:?}: published running={} global={} supervisor={:?}; resume answered {answer:?}",
                view.running,
                view.global,
                view.component(Component::Supervisor)
            );
        }
    }
}

/// Old runner: starting the pipeline fails before the start is driven
/// further; the start transition and the F4 are recorded together
/// (`Disabled -> Initializing`, `Initializing -> Disabled`). New: the
/// Record that followed StartPipeline in the command list is dropped; the
/// store gets only the F4's transition, from a state it never recorded.
#[test]
fn a_pipeline_that_cannot_start_still_records_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let primary = MemPrimary::new(GEN);
    primary.commit(&insert(1));
    let replica = MemReplica::new(GEN, dir.path());
    let storage = Faulty {
        inner: replica.clone(),
        fail_stop_record: false,
        fail_wal_storage: true,
    };
    let rt = Runtime::start(
        Box::new(primary.source()),
        Box::new(storage),
        GEN,
        Config::default(),
    );
    let view = rt
        .wait_until(Instant::now() + WAIT, |s| !s.running)
        .expect("the run ends (F4)");
    drop(rt);
    let recorded: Vec<String> = replica
        .transitions()
        .iter()
        .map(|t| format!("{} -> {}", t.from, t.to))
        .collect();
    eprintln!("published: {} ; recorded: {recorded:?}", view.global);
    assert_eq!(
        recorded.first().map(String::as_str),
        Some("Disabled -> Initializing"),
        "recorded transitions: {recorded:?}"
    );
    let chained = replica
        .transitions()
        .windows(2)
        .all(|w| w[0].to == w[1].from);
    assert!(chained, "recorded transitions do not chain: {recorded:?}");
}

/// mem vs SQLite: `StoreOp::Discard` in SQLite refuses when a segment at or
/// after `from` is not Received (state_store.rs: "only Received segments
/// are discarded") or when none is stored; MemReplica removes whatever is
/// there, a Rejected segment (and so its rejection) included.
#[test]
fn mem_discard_refuses_a_rejected_segment_as_sqlite_does() {
    use replication::state::SegmentState;
    use replication::wal::{CommitId, WalOffset};
    let dir = tempfile::tempdir().unwrap();
    let mut r = MemReplica::new(GEN, dir.path());
    WalStorage::persist(&mut r, CommitId(1), CommitId(2), b"a").unwrap();
    WalStorage::persist(&mut r, CommitId(3), CommitId(4), b"b").unwrap();
    StateStore::record(
        &mut r,
        &[StoreOp::Segment {
            first: CommitId(3),
            last: CommitId(4),
            wal_offset: Some(WalOffset(0)),
            end_wal_offset: None,
            to: SegmentState::Rejected {
                reason: "bad".into(),
            },
        }],
    )
    .unwrap();
    let discarded = StateStore::record(&mut r, &[StoreOp::Discard { from: CommitId(1) }]);
    assert!(
        discarded.is_err(),
        "mem discarded a Rejected segment; left: {:?}",
        r.segments()
    );
}

/// mem vs SQLite: persisting a segment whose first CommitId is stored
/// already fails in SQLite (first_commit_id is the PRIMARY KEY);
/// MemReplica silently replaces it (here a Rejected one, back to Received).
#[test]
fn mem_persist_refuses_a_duplicate_as_sqlite_does() {
    use replication::state::SegmentState;
    use replication::wal::{CommitId, WalOffset};
    let dir = tempfile::tempdir().unwrap();
    let mut r = MemReplica::new(GEN, dir.path());
    WalStorage::persist(&mut r, CommitId(1), CommitId(2), b"a").unwrap();
    StateStore::record(
        &mut r,
        &[StoreOp::Segment {
            first: CommitId(1),
            last: CommitId(2),
            wal_offset: Some(WalOffset(0)),
            end_wal_offset: None,
            to: SegmentState::Rejected {
                reason: "bad".into(),
            },
        }],
    )
    .unwrap();
    let again = WalStorage::persist(&mut r, CommitId(1), CommitId(2), b"a");
    assert!(again.is_err(), "mem replaced it: {:?}", r.segments());
}
