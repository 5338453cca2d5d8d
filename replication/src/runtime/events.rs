//! What runners pass on (immutable values, rule C1) and tell the
//! Supervisor, and the guard every runner thread runs in.

use super::{Component, Failure, Fetched};
use crate::code::FailureCode;
use crate::validator::Rejection;
use crate::wal::{ChainPosition, CommitId, ValidatedSegment};
use std::path::PathBuf;
use std::sync::mpsc::Sender;

/// A segment (or snapshot) the Receiver persisted and passes on
/// (immutable).
pub(super) struct ReceivedSegment {
    pub(super) first: CommitId,
    pub(super) last: CommitId,
    pub(super) bytes: Vec<u8>,
    pub(super) snapshot: Option<PathBuf>,
}

/// What the source delivered to the Receiver.
pub(super) enum Delivery {
    Segment(Fetched),
    Snapshot {
        first: CommitId,
        last: CommitId,
        path: PathBuf,
        why: String,
    },
}

/// What the Validator passes to the Applier (immutable).
pub(super) enum ToApply {
    Segment(ValidatedSegment),
    Snapshot {
        first: CommitId,
        last: CommitId,
        start: ChainPosition,
        end: ChainPosition,
        path: PathBuf,
    },
}

/// What runners tell the Supervisor (immutable values).
#[derive(Debug)]
pub(super) enum Event {
    ReceiverPersisted {
        first: CommitId,
        last: CommitId,
        caught_up: bool,
        /// The newest CommitId the source advertised with it.
        source_head: CommitId,
    },
    ReceiverIdle,
    ReceiverFailed(Failure),
    ReceiverResumed {
        source: String,
        next: CommitId,
    },
    ReceiverSnapshot {
        first: CommitId,
        last: CommitId,
        why: String,
    },
    ReceiverExited(String),
    ValidatorValidated {
        first: CommitId,
        last: CommitId,
        start: ChainPosition,
        end: ChainPosition,
    },
    ValidatorRejected(Rejection),
    /// Recovery's re-read of a stored segment (never rejected before)
    /// fails validation: the replica's own copy is damaged.
    ValidatorStoredRejected(Rejection),
    ValidatorRecovered {
        revalidated: u64,
        through: CommitId,
    },
    ValidatorFailed(Failure),
    ValidatorExited(String),
    ApplierApplied {
        first: CommitId,
        last: CommitId,
        end: ChainPosition,
    },
    ApplierHolding {
        first: CommitId,
        last: CommitId,
    },
    ApplierFailed(Failure),
    ApplierExited(String),
    Stop(String),
    /// An operator asks to resume a block (who asked; the answer goes back
    /// on `reply`: the state resumed from, or why nothing resumes).
    Resume {
        reason: String,
        reply: Sender<Result<String, String>>,
    },
    /// Something outside the runtime asks to hold the replica (who, and
    /// why; the answer goes back on `reply`).
    Hold {
        reason: String,
        reply: Sender<Result<String, String>>,
    },
    /// The holder releases it.
    Release {
        reply: Sender<Result<String, String>>,
    },
}

pub(super) fn send(events: &Sender<Event>, e: Event) {
    // The Supervisor outlives every runner; if it is gone the run is over.
    let _ = events.send(e);
}

/// Runs one runner's loop (`body`); if it panics, `report` gets the panic
/// as a `PANIC` failure of `component` while `keep` (the runner's sender
/// to the next stage) is still held, so the Supervisor learns why before
/// the next stage sees its input close. `None` after a panic.
pub(super) fn guarded<T, K>(
    component: Component,
    keep: K,
    body: impl FnOnce() -> T,
    report: impl FnOnce(Failure),
) -> Option<T> {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    let out = match run {
        Ok(t) => Some(t),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            tracing::error!(%component, panic = %what, "a runner thread panicked");
            report(Failure::new(
                FailureCode::Panic,
                format!("the {component} thread panicked (a bug in aerodb): {what}"),
            ));
            None
        }
    };
    drop(keep);
    out
}
