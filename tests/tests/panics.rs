//! A panic in a runner thread (a bug) becomes that component's recorded
//! failure, never a hang (issue 11 item 5): the Receiver's panic blocks
//! replication with the panic as its reason; the Applier's panic is an
//! Applier failure, so recovery runs once and a second panic blocks. Each
//! is recorded in `aerodb_replica_components`, the gate refuses, and the
//! runtime stops when asked. The test source and storage panic on purpose;
//! every wait is on published state, never a sleep.

use replication::runtime::{
    ApplyStorage, Component, Config, Failure, Fetched, SegmentReader, StateStore, StopSignal,
    Storage, View, WalSource, WalStorage,
};
use replication::wal::{ChainPosition, CommitId, ValidatedSegment};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use storage_adapter::runtime::{FileSource, Replica, SqliteStorage};

use aerodb_e2e::{deadline, primary_with_rows as primary};

fn small() -> Config {
    Config {
        segment_bytes: 300,
        ..Config::default()
    }
}

fn blocked(s: &View) -> bool {
    replication::runtime::is_blocked(&s.global)
}

/// A file source whose fetch number `panic_at` (from 0) panics.
struct PanickingSource {
    inner: FileSource,
    fetches: usize,
    panic_at: usize,
}

impl WalSource for PanickingSource {
    fn describe(&self) -> String {
        format!("panicking {}", self.inner.describe())
    }
    fn fetch(&mut self, from: CommitId, max: usize) -> Result<Option<Fetched>, Failure> {
        self.fetches += 1;
        if self.fetches - 1 == self.panic_at {
            panic!("injected: the source's decoder hit a bug at commit {from}");
        }
        self.inner.fetch(from, max)
    }
    fn wait_for_wal(&mut self, stop: &StopSignal) -> Result<bool, Failure> {
        self.inner.wait_for_wal(stop)
    }
}

/// Storage whose Applier panics on its first `panics` segments from
/// commit 3 on.
struct PanickingStorage {
    inner: SqliteStorage,
    panics: Arc<AtomicUsize>,
}

struct PanickingApply {
    inner: Box<dyn ApplyStorage>,
    panics: Arc<AtomicUsize>,
}

impl ApplyStorage for PanickingApply {
    fn apply(&mut self, segment: &ValidatedSegment) -> Result<ChainPosition, Failure> {
        let left = self.panics.load(Ordering::SeqCst);
        if left > 0 && segment.start().commit_id.0 >= 3 {
            self.panics.store(left - 1, Ordering::SeqCst);
            panic!("injected: the applier hit a bug");
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

impl Storage for PanickingStorage {
    fn state_store(&self) -> Result<Box<dyn StateStore>, Failure> {
        self.inner.state_store()
    }
    fn wal_storage(&self) -> Result<Box<dyn WalStorage>, Failure> {
        self.inner.wal_storage()
    }
    fn segment_reader(&self) -> Result<Box<dyn SegmentReader>, Failure> {
        self.inner.segment_reader()
    }
    fn apply_storage(&self) -> Result<Box<dyn ApplyStorage>, Failure> {
        Ok(Box::new(PanickingApply {
            inner: self.inner.apply_storage()?,
            panics: Arc::clone(&self.panics),
        }))
    }
}

/// (error_code, error) of a component, as recorded in the replica file.
fn recorded_error(replica: &Path, component: Component) -> (Option<String>, Option<String>) {
    rusqlite::Connection::open(replica)
        .expect("open")
        .query_row(
            "SELECT error_code, error FROM aerodb_replica_components WHERE component = ?1",
            [component.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("a recorded component row")
}

#[test]
fn a_receiver_panic_is_a_recorded_receiver_failure_not_a_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = primary(&p_path, 20);
    let source = FileSource::open(&p_path).expect("source");
    let generation = source.generation();
    let replica = Replica::start(
        &r_path,
        Box::new(PanickingSource {
            inner: source,
            fetches: 0,
            panic_at: 2,
        }),
        generation,
        small(),
    )
    .expect("start");
    let s = replica
        .wait_until(deadline(), blocked)
        .expect("blocked, not stuck in ReceivingWAL");
    let r = s.component(Component::Receiver);
    let e = r.last_error.as_ref().expect("the Receiver's failure");
    assert_eq!(e.code, "PANIC", "{e}");
    assert!(
        e.reason
            .contains("WAL Receiver thread panicked (a bug in aerodb): injected: the source's decoder hit a bug"),
        "{e}"
    );
    assert!(s.global.to_string().contains("PANIC"), "{}", s.global);
    assert!(s.progress.applied < p.head().expect("head"));
    let d = replica.explain_read(None).expect("gate");
    assert!(!d.allowed(), "{d}");
    let (code, error) = recorded_error(&r_path, Component::Receiver);
    assert_eq!(code.as_deref(), Some("PANIC"));
    assert!(error.is_some_and(|e| e.contains("injected")));
    let last = replica.stop();
    assert!(!last.running);
}

#[rstest::rstest]
#[case::once_then_recovers(1)]
#[case::again_after_recovery_blocks(usize::MAX)]
fn an_applier_panic_is_an_applier_failure(#[case] panics: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = primary(&p_path, 20);
    let head = p.head().expect("head");
    let source = FileSource::open(&p_path).expect("source");
    let generation = source.generation();
    let panics = Arc::new(AtomicUsize::new(panics));
    let counter = Arc::clone(&panics);
    let replica = Replica::start_with_storage(
        &r_path,
        Box::new(source),
        generation,
        small(),
        move |path| {
            Box::new(PanickingStorage {
                inner: SqliteStorage::new(path),
                panics: counter,
            })
        },
    )
    .expect("start");
    let s = replica
        .wait_until(deadline(), |s| {
            blocked(s)
                || (s.applied.commit_id == head
                    && !blocked(s)
                    && s.global.to_string().starts_with("Ready"))
        })
        .expect("recovered or blocked, not stuck");
    let transitions: Vec<String> = replica
        .transitions()
        .expect("transitions")
        .into_iter()
        .map(|t| format!("{}: {}", t.to_state, t.reason))
        .collect();
    assert!(
        transitions
            .iter()
            .any(|t| t.starts_with("Recovering") && t.contains("PANIC")),
        "{transitions:#?}"
    );
    if panics.load(Ordering::SeqCst) == 0 {
        // Panicked once: recovery re-validated and applied everything.
        assert_eq!(s.applied.commit_id, head, "{}", s.global);
        assert!(replica.explain_read(Some(head)).expect("gate").allowed());
    } else {
        assert!(blocked(&s), "{}", s.global);
        assert!(
            s.global.to_string().contains("failed again after recovery"),
            "{}",
            s.global
        );
        assert!(!replica.explain_read(None).expect("gate").allowed());
        let (code, _) = recorded_error(&r_path, Component::Applier);
        assert_eq!(code.as_deref(), Some("PANIC"));
    }
    assert!(!replica.stop().running);
}
