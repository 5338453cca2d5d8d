//! What the runners need from the outside world: a WAL source, WAL storage,
//! the apply storage and the state store. `storage-adapter` implements them
//! on SQLite files; tests implement them with faults injected.

use crate::applier::HeldSegment;
use crate::code::FailureCode;
use crate::runtime::{ComponentStatus, Failure, TransitionRecord};
use crate::state::SegmentState;
use crate::wal::{ChainPosition, CommitId, ValidatedSegment, WalOffset};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

/// A segment as a source delivers it: the range the source announces (the
/// Receiver checks ordering against it, and never reads the bytes) and the
/// raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// First CommitId.
    pub first: CommitId,
    /// Last CommitId.
    pub last: CommitId,
    /// The raw segment bytes.
    pub bytes: Vec<u8>,
    /// The newest CommitId the source had when it answered (a hint for the
    /// Supervisor's "caught up", never used to decide correctness).
    pub source_head: CommitId,
}

/// The stop request a Receiver's transport waits on. Waiting for new WAL is
/// a transport matter: a source may wait on this signal with a poll
/// interval, but no correctness decision depends on when it wakes.
pub struct StopSignal {
    rx: Receiver<()>,
    stopped: Cell<bool>,
}

impl StopSignal {
    /// Wraps the receiving end of a stop channel (a send or a disconnect
    /// means stop).
    pub fn new(rx: Receiver<()>) -> StopSignal {
        StopSignal {
            rx,
            stopped: Cell::new(false),
        }
    }

    /// Whether a stop was requested (does not wait).
    pub fn is_set(&self) -> bool {
        if !self.stopped.get() && !matches!(self.rx.try_recv(), Err(TryRecvError::Empty)) {
            self.stopped.set(true);
        }
        self.stopped.get()
    }

    /// Waits up to `d` for a stop request; true if one came.
    pub fn wait(&self, d: Duration) -> bool {
        if !self.stopped.get() && !matches!(self.rx.recv_timeout(d), Err(RecvTimeoutError::Timeout))
        {
            self.stopped.set(true);
        }
        self.stopped.get()
    }
}

/// Where WAL comes from (spec 5.2 input: the primary WAL stream).
pub trait WalSource: Send {
    /// A description for explanations ("primary file /data/p.db").
    fn describe(&self) -> String;

    /// The segment starting at `from`, of about `max_bytes`, or `None` if
    /// the source has nothing from `from` on yet.
    fn fetch(&mut self, from: CommitId, max_bytes: usize) -> Result<Option<Fetched>, Failure>;

    /// Returns when the source may have WAL it did not have at the last
    /// `fetch` (true), or when `stop` is requested (false).
    fn wait_for_wal(&mut self, stop: &StopSignal) -> Result<bool, Failure>;

    /// After a failure with code [`FailureCode::SourceUnavailable`]: returns true when
    /// the source answers again (the Receiver then resumes, recorded as a
    /// transition), false on stop or if this source cannot come back. The
    /// default cannot.
    fn wait_until_available(&mut self, stop: &StopSignal) -> Result<bool, Failure> {
        let _ = stop;
        Ok(false)
    }

    /// Writes a consistent snapshot of the primary's replicated tables to
    /// the new file `dest` and returns the CommitId it is at. Asked when
    /// `fetch` failed with [`FailureCode::WalTruncated`]. The default cannot.
    fn snapshot(&mut self, dest: &Path) -> Result<CommitId, Failure> {
        let _ = dest;
        Err(Failure::new(
            FailureCode::WalTruncated,
            format!("{} cannot provide a snapshot", self.describe()),
        ))
    }
}

/// The Receiver's WAL storage: raw bytes, persisted before they are passed
/// on (rule R1). The only storage the Receiver writes (R2).
pub trait WalStorage: Send {
    /// Stores segment `first..=last` as received, state Received.
    fn persist(&mut self, first: CommitId, last: CommitId, bytes: &[u8]) -> Result<(), Failure>;

    /// Where a downloaded snapshot standing for commits from `first` is
    /// kept until it is installed (one file per item).
    fn snapshot_path(&self, first: CommitId) -> PathBuf;

    /// Records the snapshot file at `path` as the Received item standing
    /// for commits `first..=last`.
    fn persist_snapshot(
        &mut self,
        first: CommitId,
        last: CommitId,
        path: &Path,
    ) -> Result<(), Failure>;
}

/// A persisted, not yet applied segment, as the Validator re-reads it on
/// recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistedSegment {
    /// First CommitId, as stored.
    pub first: CommitId,
    /// Last CommitId, as stored.
    pub last: CommitId,
    /// Raw bytes (empty for a snapshot).
    pub bytes: Vec<u8>,
    /// The snapshot file, if this item is a snapshot.
    pub snapshot: Option<PathBuf>,
    /// Whether it is recorded Rejected (the Validator refused it when the
    /// source sent it): a rejection that stays a block. Otherwise a stored
    /// copy that fails validation is the replica's own damage, fetched
    /// again.
    pub rejected: bool,
}

/// What a snapshot file records and the checksum recomputed over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFacts {
    /// The position it records.
    pub recorded: ChainPosition,
    /// The checksum it records.
    pub recorded_checksum: u32,
    /// The checksum of its tables, recomputed.
    pub computed_checksum: u32,
}

/// Read-only access to persisted segments (the Validator reads, never
/// writes: V3).
pub trait SegmentReader: Send {
    /// The persisted segment that starts right after `after`, if any.
    fn next_after(&mut self, after: CommitId) -> Result<Option<PersistedSegment>, Failure>;

    /// Reads a snapshot file (read-only): what it records, and its
    /// tables' checksum recomputed.
    fn inspect_snapshot(&mut self, path: &Path) -> Result<SnapshotFacts, Failure>;
}

/// The Applier's storage: one transaction per segment holding the row
/// changes, the new applied position and the segment's state Applied.
pub trait ApplyStorage: Send {
    /// Applies a validated segment; returns the committed position.
    fn apply(&mut self, segment: &ValidatedSegment) -> Result<ChainPosition, Failure>;

    /// Applies the held segments of one transaction (read again from WAL
    /// storage, each checked to continue the previous one and to end where
    /// it was validated to) and then `last`, which ends the transaction,
    /// in one transaction: the changes, the position `last.end()` and every
    /// segment's state Applied. The default cannot.
    fn apply_held(
        &mut self,
        held: &[HeldSegment],
        last: &ValidatedSegment,
    ) -> Result<ChainPosition, Failure> {
        let _ = last;
        Err(Failure::new(
            FailureCode::Apply,
            format!(
                "this storage cannot apply a transaction spanning {} segments",
                held.len() + 1
            ),
        ))
    }

    /// Installs a validated snapshot standing for `first..=last` in one
    /// transaction: replaces the replicated tables, sets the position to
    /// `end`, records the bootstrap metadata and the item's state Applied.
    fn install_snapshot(
        &mut self,
        first: CommitId,
        last: CommitId,
        path: &Path,
        end: ChainPosition,
    ) -> Result<ChainPosition, Failure>;
}

/// What the state store holds at start, after crash recovery of its own
/// rows.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredState {
    /// The committed applied position.
    pub applied: ChainPosition,
    /// Last CommitId persisted by the Receiver (>= applied).
    pub received: CommitId,
    /// The global state the previous run recorded last (`Disabled` after a
    /// clean stop), if any run recorded one.
    pub previous_state: Option<String>,
    /// Segments that were Validated but not applied, moved back to
    /// Received to be validated again (the one rollback spec 6.2 allows).
    pub revalidate: u64,
    /// Each component's persisted status (last errors survive restarts).
    pub components: Vec<ComponentStatus>,
}

/// One change the Supervisor records in the state store.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreOp {
    /// A global transition, appended to the history and made current.
    Transition(TransitionRecord),
    /// A segment's state moved (Validated or Rejected; Applied is the
    /// Applier's, in its apply transaction).
    Segment {
        /// The segment's first CommitId.
        first: CommitId,
        /// Its last CommitId.
        last: CommitId,
        /// WAL offset of its first record, if known.
        wal_offset: Option<WalOffset>,
        /// WAL offset after its last record, if known.
        end_wal_offset: Option<WalOffset>,
        /// The new state.
        to: SegmentState,
    },
    /// A component's status (state, blocking reason, last transition, last
    /// error).
    Component(ComponentStatus),
    /// The newest CommitId the source advertised (a fetch's head): what
    /// `replica_state` shows beside the applied CommitId, and the lag.
    SourceHead {
        /// The head.
        head: CommitId,
    },
    /// Segments from `from` on, all Received (a stored copy failed
    /// validation), are discarded with their bytes: the Receiver fetches
    /// them again.
    Discard {
        /// The first discarded CommitId (the damaged segment's first).
        from: CommitId,
    },
}

/// The Replica State Store as the Supervisor writes it (T2: the Supervisor
/// and, scoped to its apply transaction, the Applier).
pub trait StateStore: Send {
    /// Opens the store at start: checks it for torn state and moves
    /// Validated-but-unapplied segments back to Received.
    fn open(&mut self) -> Result<StoredState, Failure>;

    /// Records `ops` in one transaction.
    fn record(&mut self, ops: &[StoreOp]) -> Result<(), Failure>;
}

/// Opens the storage parts, each on its own connection, for one run of the
/// pipeline (and again for each recovery).
pub trait Storage: Send {
    /// The Supervisor's state store.
    fn state_store(&self) -> Result<Box<dyn StateStore>, Failure>;
    /// The Receiver's WAL storage.
    fn wal_storage(&self) -> Result<Box<dyn WalStorage>, Failure>;
    /// The Validator's read-only view of persisted segments.
    fn segment_reader(&self) -> Result<Box<dyn SegmentReader>, Failure>;
    /// The Applier's storage.
    fn apply_storage(&self) -> Result<Box<dyn ApplyStorage>, Failure>;
}
