//! The threaded replica runtime: thin runners around the sans-IO cores.
//!
//! Four threads, one per active component of spec 5 (Supervisor, WAL
//! Receiver, WAL Validator, WAL Applier), talking only through channels that
//! carry immutable values (rule C1):
//!
//! ```text
//!  WalSource -> [Receiver] --segment--> [Validator] --validated--> [Applier]
//!                   |        bounded       |          bounded       |
//!                   +---------- events ----+------------------------+--> [Supervisor]
//!                                                                        | records transitions
//!                                                                        v
//!                                                             state store + published Snapshot
//! ```
//!
//! Concurrency is what spec 7 allows: the Receiver runs with the Validator,
//! the Validator with the Applier only through a bounded queue, one
//! Applier. The Supervisor owns the global state (S1) and is the only
//! writer of the published [`Snapshot`]; observers (the handle, SQL) read
//! immutable snapshots (X2). The Receiver writes only WAL storage (R2), the
//! Validator writes nothing (V3), the Applier writes rows and its position
//! in one transaction (W1), the Supervisor records transitions, segment
//! states and component statuses (T2); SQLite's single-writer lock
//! serializes those transactions and each checks the state it moves from
//! (X3).
//!
//! Nothing waits on time to decide anything (X5): stages block on their
//! channels; the only timed wait is the source's transport waiting for new
//! WAL ([`WalSource::wait_for_wal`]), which decides nothing but when to
//! look again, and the handle's client-side [`Runtime::wait_for`] deadline.

mod ports;

pub use ports::{
    ApplyStorage, Fetched, PersistedSegment, SegmentReader, SnapshotFacts, StateStore, StopSignal,
    Storage, StoreOp, StoredState, WalSource, WalStorage, SOURCE_UNAVAILABLE, WAL_TRUNCATED,
};

use crate::applier::{Applier, ApplierInput, ApplierOutput, ApplierState};
use crate::read_gate::{self, Decision, ObservedState, ReadRequest};
use crate::receiver::{Receiver, ReceiverInput, ReceiverOutput};
use crate::state::{GlobalState, ReadStatus, SegmentState};
use crate::supervisor::{Progress, Supervisor, SupervisorInput, Transition};
use crate::validator::{Rejection, Validator, ValidatorInput, ValidatorOutput, ValidatorState};
use crate::wal::{ChainPosition, CommitId, Generation, ValidatedSegment, WalOffset};
use std::fmt;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver as Rx, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A component of spec 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    /// Replica Supervisor (5.1).
    Supervisor,
    /// WAL Receiver (5.2).
    Receiver,
    /// WAL Validator (5.3).
    Validator,
    /// WAL Applier (5.4).
    Applier,
    /// Replica State Store (5.5).
    StateStore,
    /// Read Safety Gate (5.6).
    ReadGate,
}

impl Component {
    /// Every component, in spec order.
    pub const ALL: [Component; 6] = [
        Component::Supervisor,
        Component::Receiver,
        Component::Validator,
        Component::Applier,
        Component::StateStore,
        Component::ReadGate,
    ];

    /// The spec's name, as shown in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Supervisor => "Supervisor",
            Component::Receiver => "WAL Receiver",
            Component::Validator => "WAL Validator",
            Component::Applier => "WAL Applier",
            Component::StateStore => "Replica State Store",
            Component::ReadGate => "Read Safety Gate",
        }
    }

    /// Parses [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.as_str() == s)
    }

    fn index(self) -> usize {
        Component::ALL
            .iter()
            .position(|c| *c == self)
            .expect("listed")
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure, with everything needed to explain it (rule E2): a stable
/// code, the sentence, and where available the segment, WAL offset and the
/// expected-versus-actual values.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Failure {
    /// Stable upper-case code (SOURCE, STORAGE, CORRUPT, GAP, FORK, ...).
    pub code: String,
    /// The explanation.
    pub reason: String,
    /// The segment concerned (first and last CommitId).
    pub segment: Option<(CommitId, CommitId)>,
    /// The WAL offset concerned.
    pub wal_offset: Option<WalOffset>,
    /// The expected value, where a check compared two.
    pub expected: Option<String>,
    /// The actual value.
    pub actual: Option<String>,
}

impl Failure {
    /// A failure with a code and a reason.
    pub fn new(code: &str, reason: impl Into<String>) -> Failure {
        Failure {
            code: code.into(),
            reason: reason.into(),
            ..Failure::default()
        }
    }

    /// The same failure, naming a segment.
    pub fn at(mut self, first: CommitId, last: CommitId) -> Failure {
        self.segment = Some((first, last));
        self
    }

    fn from_rejection(r: &Rejection) -> Failure {
        Failure {
            code: r.code.into(),
            reason: r.reason.clone(),
            segment: Some((r.first, r.last)),
            wal_offset: Some(r.wal_offset),
            expected: r.expected.clone(),
            actual: r.actual.clone(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}

/// One component's observable status (rule O1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentStatus {
    /// Which.
    pub component: Component,
    /// Its current state, as its core names it.
    pub state: String,
    /// Why it cannot make progress, if it cannot.
    pub blocking_reason: Option<String>,
    /// Its last successful transition, in a sentence.
    pub last_transition: Option<String>,
    /// Its last error, kept until a later success replaces it.
    pub last_error: Option<Failure>,
}

impl ComponentStatus {
    fn new(component: Component, state: &str) -> ComponentStatus {
        ComponentStatus {
            component,
            state: state.into(),
            blocking_reason: None,
            last_transition: None,
            last_error: None,
        }
    }
}

/// A global transition as recorded (rule M2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionRecord {
    /// From (its display form).
    pub from: String,
    /// To.
    pub to: String,
    /// The state's kind and read status, for tables.
    pub to_kind: &'static str,
    /// Read status after it ("read-safe", "read-blocked" or "").
    pub read_status: &'static str,
    /// The blocking code after it (BLOCKED or DIVERGED), if read-blocked.
    pub blocking_code: Option<&'static str>,
    /// The blocking reason after it, if read-blocked.
    pub blocking_reason: Option<String>,
    /// Why.
    pub reason: String,
    /// Received / validated / applied CommitIds at that moment.
    pub progress: Progress,
    /// The applied WAL offset at that moment.
    pub applied_wal_offset: WalOffset,
    /// Wall-clock time, informational only (never compared).
    pub at_unix_ms: i64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn read_status(state: &GlobalState) -> (&'static str, Option<&'static str>, Option<String>) {
    match state {
        GlobalState::Ready {
            read: ReadStatus::Safe,
        } => ("read-safe", None, None),
        GlobalState::Ready {
            read: ReadStatus::Blocked(r),
        } => ("read-blocked", Some(r.code()), Some(r.to_string())),
        _ => ("", None, None),
    }
}

impl TransitionRecord {
    fn new(t: &Transition, applied: ChainPosition) -> TransitionRecord {
        let (read, blocking_code, blocking) = read_status(&t.to);
        TransitionRecord {
            from: t.from.to_string(),
            to: t.to.to_string(),
            to_kind: t.to.kind().as_str(),
            read_status: read,
            blocking_code,
            blocking_reason: blocking,
            reason: t.reason.clone(),
            progress: t.progress,
            applied_wal_offset: applied.wal_offset,
            at_unix_ms: now_ms(),
        }
    }
}

/// What observers see: an immutable snapshot the Supervisor publishes after
/// every batch of events it has recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The global state.
    pub global: GlobalState,
    /// Received / validated / applied CommitIds, kept apart.
    pub progress: Progress,
    /// The applied position (CommitId, WAL offset, chain).
    pub applied: ChainPosition,
    /// Each component's status, in [`Component::ALL`] order.
    pub components: Vec<ComponentStatus>,
    /// The last global transition.
    pub last_transition: Option<TransitionRecord>,
    /// Whether the Supervisor thread still runs (false once stopped or
    /// failed).
    pub running: bool,
}

impl Snapshot {
    /// One component's status.
    pub fn component(&self, c: Component) -> &ComponentStatus {
        &self.components[c.index()]
    }

    /// The Read Safety Gate's decision over this snapshot (the live view;
    /// SQL readers evaluate the persisted state in their own transaction).
    pub fn explain_read(&self, min_commit_id: Option<CommitId>) -> Decision {
        read_gate::evaluate(
            &ObservedState {
                global: self.global.clone(),
                applied_commit_id: self.applied.commit_id,
                applied_wal_offset: self.applied.wal_offset,
                recorded_block: None,
            },
            &ReadRequest { min_commit_id },
        )
    }
}

/// Runtime settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Target size of a segment asked from the source.
    pub segment_bytes: usize,
    /// Segments queued between Receiver and Validator, and between
    /// Validator and Applier (bounds memory whatever the backlog).
    pub queue_depth: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            segment_bytes: 1 << 20,
            queue_depth: 2,
        }
    }
}

/// A segment (or snapshot) the Receiver persisted and passes on
/// (immutable).
struct ReceivedSegment {
    first: CommitId,
    last: CommitId,
    bytes: Vec<u8>,
    snapshot: Option<PathBuf>,
}

/// What the source delivered to the Receiver.
enum Delivery {
    Segment(Fetched),
    Snapshot {
        first: CommitId,
        last: CommitId,
        path: PathBuf,
        why: String,
    },
}

/// What the Validator passes to the Applier (immutable).
enum ToApply {
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
enum Event {
    ReceiverPersisted {
        first: CommitId,
        last: CommitId,
        caught_up: bool,
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
}

// ------------------------------------------------------------------ runners

fn send(events: &Sender<Event>, e: Event) {
    // The Supervisor outlives every runner; if it is gone the run is over.
    let _ = events.send(e);
}

/// Runs one runner's loop (`body`); if it panics, `report` gets the panic
/// as a `PANIC` failure of `component` while `keep` (the runner's sender
/// to the next stage) is still held, so the Supervisor learns why before
/// the next stage sees its input close. `None` after a panic.
fn guarded<T, K>(
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
                "PANIC",
                format!("the {component} thread panicked (a bug in aerodb): {what}"),
            ));
            None
        }
    };
    drop(keep);
    out
}

#[allow(clippy::too_many_arguments)] // one runner, its ports and channels
fn run_receiver(
    mut source: Box<dyn WalSource>,
    mut storage: Box<dyn WalStorage>,
    after: CommitId,
    refuse: Option<Failure>,
    config: Config,
    stop: StopSignal,
    out: SyncSender<ReceivedSegment>,
    events: Sender<Event>,
) -> Box<dyn WalSource> {
    let mut core = Receiver::new(after);
    let mut idle = false;
    let fail = |core: &mut Receiver, f: Failure| {
        core.handle(ReceiverInput::Failed {
            reason: f.reason.clone(),
        });
        send(&events, Event::ReceiverFailed(f));
    };
    if let Some(f) = refuse {
        // The source serves another primary: nothing is received from it.
        fail(&mut core, f);
        send(&events, Event::ReceiverExited("failed".into()));
        return source;
    }
    let exit = loop {
        if stop.is_set() {
            break "stop requested".to_string();
        }
        let Some(next) = core.next() else {
            break "failed".to_string();
        };
        let fetched = match source.fetch(next, config.segment_bytes) {
            Ok(None) => {
                if !idle {
                    idle = true;
                    send(&events, Event::ReceiverIdle);
                }
                match source.wait_for_wal(&stop) {
                    Ok(true) => continue,
                    Ok(false) => break "stop requested".to_string(),
                    // A failure while waiting is a failure to fetch `next`.
                    Err(f) => Err(f),
                }
            }
            other => other,
        };
        let delivered = match fetched {
            Ok(Some(f)) => Ok(Delivery::Segment(f)),
            Ok(None) => continue,
            Err(f) if f.code == WAL_TRUNCATED => {
                // The primary no longer has WAL from `next`: bootstrap from
                // a snapshot standing for `next..=S`, in a file of its own.
                let path = storage.snapshot_path(next);
                let _ = std::fs::remove_file(&path);
                source.snapshot(&path).map(|at| Delivery::Snapshot {
                    first: next,
                    last: at,
                    path,
                    why: f.reason,
                })
            }
            Err(f) => Err(f),
        };
        let delivery = match delivered {
            Ok(d) => d,
            Err(f) => {
                let transient = f.code == SOURCE_UNAVAILABLE;
                fail(&mut core, f.at(next, next));
                if !transient {
                    break "failed".to_string();
                }
                // Replication is stopped (F1). The transport waits for the
                // source to answer again; resuming is an explicit event the
                // Supervisor records, never a silent retry.
                match source.wait_until_available(&stop) {
                    Ok(true) => {
                        core = Receiver::new(CommitId(next.0 - 1));
                        idle = false;
                        send(
                            &events,
                            Event::ReceiverResumed {
                                source: source.describe(),
                                next,
                            },
                        );
                        continue;
                    }
                    Ok(false) => break "failed".to_string(),
                    Err(f) => {
                        send(&events, Event::ReceiverFailed(f));
                        break "failed".to_string();
                    }
                }
            }
        };
        let mut forward = None;
        let mut snapshot = None;
        let (caught_up, range, mut outputs) = match delivery {
            Delivery::Segment(fetched) => (
                fetched.source_head == fetched.last,
                (fetched.first, fetched.last),
                core.handle(ReceiverInput::Delivered {
                    first: fetched.first,
                    last: fetched.last,
                    bytes: fetched.bytes,
                }),
            ),
            Delivery::Snapshot {
                first,
                last,
                path,
                why,
            } => {
                send(
                    &events,
                    Event::ReceiverSnapshot {
                        first,
                        last,
                        why: why.clone(),
                    },
                );
                snapshot = Some(path);
                (
                    false,
                    (first, last),
                    core.handle(ReceiverInput::SnapshotDelivered { first, last }),
                )
            }
        };
        while let Some(output) = outputs.pop() {
            match output {
                ReceiverOutput::PersistSnapshot { first, last } => {
                    let path = snapshot.clone().unwrap_or_default();
                    match storage.persist_snapshot(first, last, &path) {
                        Ok(()) => outputs.extend(core.handle(ReceiverInput::Persisted)),
                        Err(f) => {
                            fail(&mut core, f.at(first, last));
                            outputs.clear();
                        }
                    }
                }
                ReceiverOutput::Persist { first, last, bytes } => {
                    match storage.persist(first, last, &bytes) {
                        Ok(()) => {
                            forward = Some(bytes);
                            outputs.extend(core.handle(ReceiverInput::Persisted));
                        }
                        Err(f) => {
                            fail(&mut core, f.at(first, last));
                            outputs.clear();
                        }
                    }
                }
                ReceiverOutput::Forward { first, last } => {
                    idle = caught_up;
                    send(
                        &events,
                        Event::ReceiverPersisted {
                            first,
                            last,
                            caught_up,
                        },
                    );
                    let bytes = forward.take().unwrap_or_default();
                    let item = ReceivedSegment {
                        first,
                        last,
                        bytes,
                        snapshot: snapshot.take(),
                    };
                    if out.send(item).is_err() {
                        // The Validator stopped (it rejected a segment or
                        // the pipeline is stopping): nothing more to pass on.
                        send(
                            &events,
                            Event::ReceiverExited("the validator stopped taking segments".into()),
                        );
                        return source;
                    }
                }
                ReceiverOutput::Stopped { reason } => {
                    send(
                        &events,
                        Event::ReceiverFailed(
                            Failure::new("OUT_OF_ORDER", reason).at(range.0, range.1),
                        ),
                    );
                }
            }
        }
    };
    send(&events, Event::ReceiverExited(exit));
    source
}

fn run_validator(
    mut reader: Box<dyn SegmentReader>,
    applied: ChainPosition,
    recover_through: CommitId,
    input: Rx<ReceivedSegment>,
    out: SyncSender<ToApply>,
    events: Sender<Event>,
) {
    let mut core = Validator::new(applied);
    // Returns false when validation must stop (rejected, unreadable, or no
    // Applier).
    // `stored_copy`: the item is the replica's own stored copy, never
    // rejected before (recovery's re-read), so a rejection means the copy
    // is damaged.
    let mut validate =
        |reader: &mut dyn SegmentReader, item: ReceivedSegment, stored_copy: bool| {
            let input = match &item.snapshot {
                None => ValidatorInput::Persisted {
                    first: item.first,
                    last: item.last,
                    bytes: item.bytes,
                },
                Some(path) => match reader.inspect_snapshot(path) {
                    Ok(facts) => ValidatorInput::Snapshot {
                        first: item.first,
                        last: item.last,
                        recorded: facts.recorded,
                        recorded_checksum: facts.recorded_checksum,
                        computed_checksum: facts.computed_checksum,
                    },
                    Err(f) => {
                        send(&events, Event::ValidatorFailed(f.at(item.first, item.last)));
                        return false;
                    }
                },
            };
            match core.handle(input) {
                Ok(ValidatorOutput::Validated(segment)) => {
                    let (first, last) = segment.segment().header.range();
                    send(
                        &events,
                        Event::ValidatorValidated {
                            first,
                            last,
                            start: segment.start(),
                            end: segment.end(),
                        },
                    );
                    out.send(ToApply::Segment(segment)).is_ok()
                }
                Ok(ValidatorOutput::SnapshotValidated {
                    first,
                    last,
                    start,
                    end,
                }) => {
                    send(
                        &events,
                        Event::ValidatorValidated {
                            first,
                            last,
                            start,
                            end,
                        },
                    );
                    let path = item.snapshot.unwrap_or_default();
                    out.send(ToApply::Snapshot {
                        first,
                        last,
                        start,
                        end,
                        path,
                    })
                    .is_ok()
                }
                Ok(ValidatorOutput::Rejected(r)) if stored_copy => {
                    send(&events, Event::ValidatorStoredRejected(r));
                    false
                }
                Ok(ValidatorOutput::Rejected(r)) => {
                    send(&events, Event::ValidatorRejected(r));
                    false
                }
                Err(blocked) => {
                    send(
                        &events,
                        Event::ValidatorFailed(Failure::new("BLOCKED", blocked.to_string())),
                    );
                    false
                }
            }
        };
    // Recovery: what was persisted but not applied before this run is
    // validated again, in order, from the applied checkpoint (V2).
    let mut after = applied.commit_id;
    let mut revalidated = 0;
    while after < recover_through {
        match reader.next_after(after) {
            Ok(Some(s)) => {
                after = s.last;
                revalidated += 1;
                let stored_copy = !s.rejected;
                let item = ReceivedSegment {
                    first: s.first,
                    last: s.last,
                    bytes: s.bytes,
                    snapshot: s.snapshot,
                };
                if !validate(reader.as_mut(), item, stored_copy) {
                    send(&events, Event::ValidatorExited("blocked".into()));
                    return;
                }
            }
            Ok(None) => {
                send(
                    &events,
                    Event::ValidatorFailed(Failure::new(
                        "TORN_STATE",
                        format!(
                            "the state store lists commits through {recover_through} as received, but no persisted segment starts at commit {}",
                            after.next()
                        ),
                    )),
                );
                return;
            }
            Err(f) => {
                send(&events, Event::ValidatorFailed(f));
                return;
            }
        }
    }
    send(
        &events,
        Event::ValidatorRecovered {
            revalidated,
            through: after,
        },
    );
    for item in input {
        if !validate(reader.as_mut(), item, false) {
            break;
        }
    }
    let why = match core.state() {
        ValidatorState::Blocked { .. } => "blocked",
        ValidatorState::Validating { .. } => "input closed",
    };
    send(&events, Event::ValidatorExited(why.into()));
}

fn run_applier(
    mut storage: Box<dyn ApplyStorage>,
    applied: ChainPosition,
    input: Rx<ToApply>,
    events: Sender<Event>,
) {
    let mut core = Applier::new(applied);
    for item in input {
        let (mut range, asked) = match item {
            ToApply::Segment(segment) => (
                segment.segment().header.range(),
                core.handle(ApplierInput::Validated(segment))
                    .map(|o| (o, None)),
            ),
            ToApply::Snapshot {
                first,
                last,
                start,
                end,
                path,
            } => (
                (first, last),
                core.handle(ApplierInput::ValidatedSnapshot {
                    first,
                    last,
                    start,
                    end,
                })
                .map(|o| (o, Some(path))),
            ),
        };
        let stored = match asked {
            Ok((ApplierOutput::Held(h), _)) => {
                send(
                    &events,
                    Event::ApplierHolding {
                        first: h.range.0,
                        last: h.range.1,
                    },
                );
                continue;
            }
            Ok((ApplierOutput::ApplyToStorage(segment), _)) => storage.apply(&segment),
            Ok((ApplierOutput::ApplyHeldToStorage { held, last }, _)) => {
                // Failures and the Applied report name the whole
                // transaction's segments.
                range.0 = held.first().map_or(range.0, |h| h.range.0);
                storage.apply_held(&held, &last)
            }
            Ok((ApplierOutput::InstallSnapshot { first, last, end }, Some(path))) => {
                storage.install_snapshot(first, last, &path, end)
            }
            Ok((other, _)) => Err(Failure::new(
                "PROTOCOL",
                format!("unexpected applier output {other:?}"),
            )),
            Err(e) => Err(Failure::new("PROTOCOL", e.to_string())),
        };
        let result = match stored {
            Ok(end) => core.handle(ApplierInput::StorageCommitted { end }),
            Err(f) => {
                let _ = core.handle(ApplierInput::StorageFailed {
                    reason: f.to_string(),
                });
                send(&events, Event::ApplierFailed(f.at(range.0, range.1)));
                return;
            }
        };
        match result {
            Ok(ApplierOutput::Applied { end }) => send(
                &events,
                Event::ApplierApplied {
                    first: range.0,
                    last: range.1,
                    end,
                },
            ),
            Ok(other) => {
                send(
                    &events,
                    Event::ApplierFailed(
                        Failure::new("PROTOCOL", format!("unexpected applier output {other:?}"))
                            .at(range.0, range.1),
                    ),
                );
                return;
            }
            Err(e) => {
                send(
                    &events,
                    Event::ApplierFailed(
                        Failure::new("PROTOCOL", e.to_string()).at(range.0, range.1),
                    ),
                );
                return;
            }
        }
    }
    let why = match core.state() {
        ApplierState::Failed { .. } => "failed",
        _ => "input closed",
    };
    send(&events, Event::ApplierExited(why.into()));
}

// --------------------------------------------------------------- supervisor

struct Pipeline {
    stop: Sender<()>,
    /// The source back (`None` once its thread panicked).
    receiver: JoinHandle<Option<Box<dyn WalSource>>>,
    validator: JoinHandle<Option<()>>,
    applier: JoinHandle<Option<()>>,
}

/// Published state and the condition observers wait on.
struct Published {
    snapshot: Mutex<Arc<Snapshot>>,
    changed: Condvar,
}

impl Published {
    fn lock(&self) -> MutexGuard<'_, Arc<Snapshot>> {
        // A panic while holding this lock cannot leave a half-written
        // snapshot: it is replaced whole.
        self.snapshot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct SupervisorRunner {
    core: Supervisor,
    storage: Box<dyn Storage>,
    store: Option<Box<dyn StateStore>>,
    source: Option<Box<dyn WalSource>>,
    config: Config,
    pipeline: Option<Pipeline>,
    events_tx: Sender<Event>,
    events: Rx<Event>,
    published: Arc<Published>,
    components: Vec<ComponentStatus>,
    applied: ChainPosition,
    last_transition: Option<TransitionRecord>,
    pending: Vec<StoreOp>,
    /// The segment the Applier last failed on, until a segment applies.
    failed_segment: Option<(CommitId, CommitId)>,
    /// The generation the source serves.
    source_generation: Generation,
    stopping: Option<String>,
}

impl SupervisorRunner {
    fn status(&mut self, c: Component) -> &mut ComponentStatus {
        &mut self.components[c.index()]
    }

    /// Sets a component's state after a success: the transition is its last
    /// successful one and replaces its last error.
    fn succeeded(&mut self, c: Component, state: &str, transition: String) {
        let s = self.status(c);
        let had_error = s.last_error.take().is_some() || s.blocking_reason.take().is_some();
        s.state = state.into();
        s.last_transition = Some(transition);
        if had_error {
            let s = s.clone();
            self.pending.push(StoreOp::Component(s));
        }
    }

    fn failed(&mut self, c: Component, state: &str, f: Failure) {
        let s = self.status(c);
        s.state = state.into();
        s.blocking_reason = Some(f.reason.clone());
        s.last_error = Some(f);
        let s = s.clone();
        self.pending.push(StoreOp::Component(s));
    }

    fn set_state(&mut self, c: Component, state: &str) {
        self.status(c).state = state.into();
    }

    /// Records a global transition (logged by the core with `tracing`).
    fn transition(&mut self, t: Transition) {
        let record = TransitionRecord::new(&t, self.applied);
        self.status(Component::Supervisor).state = record.to.clone();
        self.status(Component::Supervisor).blocking_reason = record.blocking_reason.clone();
        self.status(Component::Supervisor).last_transition = Some(format!(
            "{} -> {}: {}",
            record.from, record.to, record.reason
        ));
        self.pending.push(StoreOp::Transition(record.clone()));
        // Component rows are written with every transition, so the store's
        // view of each component is never older than the global state.
        self.record_components();
        self.last_transition = Some(record);
    }

    /// Feeds the core; an illegal move is a Supervisor failure (F4).
    fn drive(&mut self, input: SupervisorInput) -> Result<(), Failure> {
        match self.core.handle(input) {
            Ok(Some(t)) => {
                self.transition(t);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(Failure::new("ILLEGAL_TRANSITION", e.to_string())),
        }
    }

    fn flush(&mut self) -> Result<(), Failure> {
        if !self.pending.is_empty() {
            let mut ops = std::mem::take(&mut self.pending);
            // A component's row is written once per batch: its last status.
            let mut seen = [false; Component::ALL.len()];
            for i in (0..ops.len()).rev() {
                if let StoreOp::Component(c) = &ops[i] {
                    if std::mem::replace(&mut seen[c.component.index()], true) {
                        ops.remove(i);
                    }
                }
            }
            match self.store.as_mut() {
                Some(store) => store.record(&ops)?,
                None => {
                    return Err(Failure::new(
                        "STATE_STORE",
                        "the state store is not open; transitions cannot be recorded",
                    ))
                }
            }
        }
        Ok(())
    }

    fn publish(&self, running: bool) {
        let snapshot = Arc::new(Snapshot {
            global: self.core.state().clone(),
            progress: self.core.progress(),
            applied: self.applied,
            components: self.components.clone(),
            last_transition: self.last_transition.clone(),
            running,
        });
        *self.published.lock() = snapshot;
        self.published.changed.notify_all();
    }

    /// Opens the store (its crash recovery) and returns what it holds.
    fn open_store(&mut self) -> Result<StoredState, Failure> {
        let store = match self.store.as_mut() {
            Some(s) => s,
            None => self.store.insert(self.storage.state_store()?),
        };
        let stored = store.open()?;
        self.applied = stored.applied;
        if stored.revalidate > 0 {
            self.status(Component::StateStore).last_transition = Some(format!(
                "moved {} Validated-but-unapplied segment(s) back to Received for re-validation",
                stored.revalidate
            ));
        }
        Ok(stored)
    }

    /// Starts the pipeline from what the store holds.
    fn start_pipeline(&mut self, stored: &StoredState) -> Result<(), Failure> {
        let source = self
            .source
            .take()
            .ok_or_else(|| Failure::new("SOURCE", "the WAL source was lost by a previous run"))?;
        let wal_storage = self.storage.wal_storage()?;
        let reader = self.storage.segment_reader()?;
        let apply = self.storage.apply_storage()?;
        let (stop_tx, stop_rx) = mpsc::channel();
        let (seg_tx, seg_rx) = mpsc::sync_channel(self.config.queue_depth);
        let (val_tx, val_rx) = mpsc::sync_channel(self.config.queue_depth);
        let spawn_err =
            |e: std::io::Error| Failure::new("THREAD", format!("spawning a thread: {e}"));
        let (ev, config, applied, received) = (
            self.events_tx.clone(),
            self.config.clone(),
            stored.applied,
            stored.received,
        );
        // A source serving another generation than the replica follows is
        // refused before anything is fetched (a foreign primary at the
        // same path or address, whatever its head).
        let refuse = (stored.applied.generation != self.source_generation).then(|| {
            Failure::new(
                "FOREIGN_GENERATION",
                format!(
                    "{} serves generation {}, the replica follows generation {} (applied commit {})",
                    source.describe(),
                    self.source_generation,
                    stored.applied.generation,
                    stored.applied.commit_id
                ),
            )
        });
        // Each runner is guarded: a panic (a bug) becomes its component's
        // failure, reported as the event its own failures are, before the
        // next stage sees its input close (the guard holds a sender).
        let receiver = thread::Builder::new()
            .name("aerodb-receiver".into())
            .spawn(move || {
                let (keep, report) = (seg_tx.clone(), ev.clone());
                guarded(
                    Component::Receiver,
                    keep,
                    || {
                        run_receiver(
                            source,
                            wal_storage,
                            received,
                            refuse,
                            config,
                            StopSignal::new(stop_rx),
                            seg_tx,
                            ev,
                        )
                    },
                    |f| {
                        send(&report, Event::ReceiverFailed(f));
                        send(&report, Event::ReceiverExited("panicked".into()));
                    },
                )
            })
            .map_err(spawn_err)?;
        let ev = self.events_tx.clone();
        let validator = thread::Builder::new()
            .name("aerodb-validator".into())
            .spawn(move || {
                let (keep, report) = (val_tx.clone(), ev.clone());
                guarded(
                    Component::Validator,
                    keep,
                    || run_validator(reader, applied, received, seg_rx, val_tx, ev),
                    |f| {
                        send(&report, Event::ValidatorFailed(f));
                        send(&report, Event::ValidatorExited("panicked".into()));
                    },
                )
            })
            .map_err(spawn_err)?;
        let ev = self.events_tx.clone();
        let applier = thread::Builder::new()
            .name("aerodb-applier".into())
            .spawn(move || {
                let report = ev.clone();
                guarded(
                    Component::Applier,
                    (),
                    || run_applier(apply, applied, val_rx, ev),
                    |f| {
                        send(&report, Event::ApplierFailed(f));
                        send(&report, Event::ApplierExited("panicked".into()));
                    },
                )
            })
            .map_err(spawn_err)?;
        self.pipeline = Some(Pipeline {
            stop: stop_tx,
            receiver,
            validator,
            applier,
        });
        let next = received.next();
        self.set_state(
            Component::Receiver,
            &format!("Receiving (next commit {next})"),
        );
        self.set_state(
            Component::Validator,
            &format!("Validating (after commit {})", applied.commit_id),
        );
        self.set_state(
            Component::Applier,
            &format!("Idle (applied commit {})", applied.commit_id),
        );
        Ok(())
    }

    /// Stops the pipeline threads: the Receiver stops receiving, the
    /// Validator and Applier finish what is queued. Then records what they
    /// reported on the way out.
    fn stop_pipeline(&mut self) -> Result<(), Failure> {
        if let Some(p) = self.pipeline.take() {
            let _ = p.stop.send(());
            let joined = p.receiver.join();
            let v = p.validator.join();
            let a = p.applier.join();
            match joined {
                Ok(Some(source)) => self.source = Some(source),
                // Its panic was reported (and recorded) as its failure.
                Ok(None) => {}
                Err(_) => {
                    self.failed(
                        Component::Receiver,
                        "Failed",
                        Failure::new("PANIC", "the receiver thread panicked"),
                    );
                }
            }
            if v.is_err() {
                self.failed(
                    Component::Validator,
                    "Failed",
                    Failure::new("PANIC", "the validator thread panicked"),
                );
            }
            if a.is_err() {
                self.failed(
                    Component::Applier,
                    "Failed",
                    Failure::new("PANIC", "the applier thread panicked"),
                );
            }
            while let Ok(e) = self.events.try_recv() {
                self.handle(e)?;
            }
        }
        Ok(())
    }

    /// Handles one event.
    fn handle(&mut self, event: Event) -> Result<(), Failure> {
        match event {
            Event::ReceiverPersisted {
                first,
                last,
                caught_up,
            } => {
                self.succeeded(
                    Component::Receiver,
                    &format!("Receiving (next commit {})", last.next()),
                    format!("persisted segment {first}..={last} as Received"),
                );
                self.drive(SupervisorInput::Received { last })?;
                if caught_up {
                    self.set_state(
                        Component::Receiver,
                        &format!("Waiting for WAL (next commit {})", last.next()),
                    );
                    self.drive(SupervisorInput::CaughtUp)?;
                }
            }
            Event::ReceiverIdle => {
                let next = self.core.progress().received.next();
                self.set_state(
                    Component::Receiver,
                    &format!("Waiting for WAL (next commit {next})"),
                );
                self.drive(SupervisorInput::CaughtUp)?;
            }
            Event::ReceiverFailed(f) => {
                let reason = f.to_string();
                self.failed(Component::Receiver, "Failed", f);
                self.drive(SupervisorInput::ReceiverStopped { reason })?;
            }
            Event::ReceiverResumed { source, next } => {
                self.succeeded(
                    Component::Receiver,
                    &format!("Receiving (next commit {next})"),
                    format!("{source} answers again; resuming at commit {next}"),
                );
                self.drive(SupervisorInput::SourceBack {
                    reason: format!("{source} answers again; resuming at commit {next}"),
                })?;
            }
            Event::ReceiverSnapshot { first, last, why } => {
                let text = format!(
                    "the source no longer has WAL from commit {first} ({why}); bootstrapping from a snapshot at commit {last}"
                );
                tracing::info!(first = first.0, last = last.0, "{text}");
                self.status(Component::Receiver).last_transition = Some(text);
            }
            Event::ReceiverExited(why) => {
                if self.status(Component::Receiver).state != "Failed" {
                    self.set_state(Component::Receiver, &format!("Stopped ({why})"));
                }
            }
            Event::ValidatorValidated {
                first,
                last,
                start,
                end,
            } => {
                self.succeeded(
                    Component::Validator,
                    &format!("Validating (after commit {last})"),
                    format!(
                        "validated segment {first}..={last} (WAL offsets {}..{})",
                        start.wal_offset, end.wal_offset
                    ),
                );
                self.pending.push(StoreOp::Segment {
                    first,
                    last,
                    wal_offset: Some(start.wal_offset),
                    end_wal_offset: Some(end.wal_offset),
                    to: SegmentState::Validated,
                });
                self.drive(SupervisorInput::Validated { last })?;
            }
            Event::ValidatorRejected(r) => {
                self.pending.push(StoreOp::Segment {
                    first: r.first,
                    last: r.last,
                    wal_offset: Some(r.wal_offset),
                    end_wal_offset: None,
                    to: SegmentState::Rejected {
                        reason: r.reason.clone(),
                    },
                });
                self.failed(
                    Component::Validator,
                    &format!("Blocked (segment {}..={} rejected)", r.first, r.last),
                    Failure::from_rejection(&r),
                );
                self.drive(SupervisorInput::Rejected(r))?;
            }
            Event::ValidatorStoredRejected(r) => {
                // The replica's stored copy is damaged (it was never
                // rejected when the source sent it): discard it and what
                // follows, recorded with the segment named, and fetch them
                // again. A rejection of the copy the source sends again is
                // an ordinary one (a block).
                let range = (r.first, r.last);
                let failure = Failure::from_rejection(&r);
                let reason = failure.to_string();
                self.failed(
                    Component::Validator,
                    &format!(
                        "Recovering (stored segment {}..={} fails validation)",
                        r.first, r.last
                    ),
                    failure,
                );
                self.flush()?;
                self.publish(true);
                self.stop_pipeline()?;
                if self.stopping.is_none() {
                    self.flush()?;
                    // The store's recovery first (Validated back to
                    // Received), then the discard and its transition,
                    // recorded in one batch.
                    self.open_store()?;
                    self.pending.push(StoreOp::Discard { from: r.first });
                    self.drive(SupervisorInput::StoredSegmentDiscarded { range, reason })?;
                    self.flush()?;
                    let stored = self.open_store()?;
                    self.start_pipeline(&stored)?;
                }
            }
            Event::ValidatorRecovered {
                revalidated,
                through,
            } => {
                if self.core.state() == &GlobalState::Recovering {
                    self.status(Component::Validator).last_transition = Some(format!(
                        "re-validated {revalidated} persisted segment(s) through commit {through}"
                    ));
                    self.drive(SupervisorInput::Recovered)?;
                }
            }
            Event::ValidatorFailed(f) => {
                let reason = f.to_string();
                self.failed(Component::Validator, "Failed", f);
                // A validator that cannot read what it must validate blocks
                // application like a rejection (F2); a returning source
                // does not lift it.
                self.drive(SupervisorInput::ValidatorFailed { reason })?;
            }
            Event::ValidatorExited(why) => {
                if self.status(Component::Validator).last_error.is_none() {
                    self.set_state(Component::Validator, &format!("Stopped ({why})"));
                }
            }
            Event::ApplierApplied { first, last, end } => {
                self.applied = end;
                self.failed_segment = None;
                self.succeeded(
                    Component::Applier,
                    &format!("Idle (applied commit {})", end.commit_id),
                    format!(
                        "applied segment {first}..={last}; replica at commit {} (WAL offset {})",
                        end.commit_id, end.wal_offset
                    ),
                );
                self.drive(SupervisorInput::Applied { end })?;
            }
            Event::ApplierHolding { first, last } => {
                self.set_state(
                    Component::Applier,
                    &format!(
                        "Holding (segment {first}..={last} ends inside a transaction; applied commit {})",
                        self.applied.commit_id
                    ),
                );
            }
            Event::ApplierFailed(f) => {
                let range = f.segment.unwrap_or_default();
                let reason = f.to_string();
                let again = self.failed_segment == Some(range);
                self.failed_segment = Some(range);
                self.failed(Component::Applier, "Failed", f);
                self.drive(SupervisorInput::ApplierFailed {
                    range,
                    reason: reason.clone(),
                })?;
                // Recovery: stop the pipeline, re-open the store, re-validate
                // from the applied position. A second failure on the same
                // segment stops replication instead of retrying (X4).
                self.flush()?;
                self.publish(true);
                self.stop_pipeline()?;
                if again {
                    self.drive(SupervisorInput::RecoveryFailed { range, reason })?;
                } else if self.stopping.is_none() {
                    // What the stopped pipeline reported is recorded before
                    // the store's recovery moves Validated segments back to
                    // Received, so no stale mark survives it.
                    self.flush()?;
                    let stored = self.open_store()?;
                    self.start_pipeline(&stored)?;
                }
            }
            Event::ApplierExited(why) => {
                if self.status(Component::Applier).state != "Failed" {
                    self.set_state(Component::Applier, &format!("Stopped ({why})"));
                }
            }
            Event::Stop(reason) => {
                if self.stopping.is_none() {
                    self.stopping = Some(reason);
                }
            }
        }
        Ok(())
    }

    fn run(mut self) {
        if let Err(f) = self.run_inner() {
            // F4: the replica becomes unavailable, with the reason visible.
            tracing::error!(%f, "replica supervisor failed");
            let _ = self.stop_pipeline();
            self.failed(Component::Supervisor, "Failed", f.clone());
            if let Ok(Some(t)) = self.core.handle(SupervisorInput::Stop {
                reason: format!("supervisor failed: {f}"),
            }) {
                self.transition(t);
            }
            // Best effort to record it; the published snapshot shows it either way.
            let _ = self.flush();
            self.pending.clear();
        }
        self.publish(false);
    }

    fn run_inner(&mut self) -> Result<(), Failure> {
        let stored = self.open_store()?;
        // Last errors survive restarts until a success replaces them.
        for c in &stored.components {
            let s = self.status(c.component);
            s.last_error = c.last_error.clone();
            s.last_transition = c.last_transition.clone();
        }
        let how = match stored.previous_state.as_deref() {
            None => "replica starting for the first time".to_string(),
            Some("Disabled") => "replica starting after a clean stop".to_string(),
            Some(s) => format!("replica starting after an unclean end (last recorded state: {s})"),
        };
        let stored_progress = Progress {
            received: stored.received.max(stored.applied.commit_id),
            validated: stored.applied.commit_id,
            applied: stored.applied.commit_id,
        };
        let t = self
            .core
            .start_because(how, stored_progress)
            .map_err(|e| Failure::new("ILLEGAL_TRANSITION", e.to_string()))?;
        self.transition(t);
        self.start_pipeline(&stored)?;
        self.set_state(Component::StateStore, "Open");
        self.drive(SupervisorInput::Started {
            applied: stored.applied,
            received: stored.received,
        })?;
        self.flush()?;
        self.publish(true);
        while let Ok(event) = self.events.recv() {
            self.handle(event)?;
            // Record everything already queued in one transaction.
            while let Ok(event) = self.events.try_recv() {
                self.handle(event)?;
                if self.pending.len() > 256 {
                    break;
                }
            }
            if let Some(reason) = self.stopping.clone() {
                self.stop_pipeline()?;
                self.drive(SupervisorInput::Stop { reason })?;
                self.set_state(Component::StateStore, "Closed");
                for c in [
                    Component::Receiver,
                    Component::Validator,
                    Component::Applier,
                ] {
                    if self.status(c).last_error.is_none() {
                        self.set_state(c, "Stopped");
                    }
                }
                self.record_components();
                self.flush()?;
                return Ok(());
            }
            self.flush()?;
            self.publish(true);
        }
        Ok(())
    }

    fn record_components(&mut self) {
        for c in self.components.clone() {
            self.pending.push(StoreOp::Component(c));
        }
    }
}

// ------------------------------------------------------------------- handle

/// Why [`Runtime::wait_for`] returned without the CommitId.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WaitError {
    /// The deadline passed first.
    #[error("timed out waiting for commit {wanted}: {}", snapshot.explain_read(Some(*wanted)).explanation)]
    Timeout {
        /// The CommitId waited for.
        wanted: CommitId,
        /// The state when the deadline passed.
        snapshot: Arc<Snapshot>,
    },
    /// Replication cannot reach it without intervention (blocked or
    /// stopped).
    #[error("commit {wanted} cannot be reached: {}", snapshot.explain_read(Some(*wanted)).explanation)]
    Unreachable {
        /// The CommitId waited for.
        wanted: CommitId,
        /// The state that makes it unreachable.
        snapshot: Arc<Snapshot>,
    },
    /// The replica holds the commit, but the read gate refuses reads at
    /// it (the replica is blocked or diverged): the gate is the one
    /// authority, so waiting does not vouch for a read it refuses.
    #[error("commit {wanted} is applied, but reads are refused: {decision}")]
    Refused {
        /// The CommitId waited for.
        wanted: CommitId,
        /// The gate's decision.
        decision: Decision,
    },
}

/// A running replica: the handle of the Supervisor thread (which owns the
/// other threads). Dropping it stops the replica.
pub struct Runtime {
    events: Sender<Event>,
    published: Arc<Published>,
    supervisor: Option<JoinHandle<()>>,
}

fn initial_snapshot(generation: Generation) -> Snapshot {
    Snapshot {
        global: GlobalState::Disabled,
        progress: Progress::default(),
        applied: ChainPosition::genesis(generation),
        components: Component::ALL
            .iter()
            .map(|c| ComponentStatus::new(*c, "Not started"))
            .collect(),
        last_transition: None,
        running: true,
    }
}

impl Runtime {
    /// Starts a replica: the Supervisor thread opens the state store,
    /// recovers, and starts the pipeline. Failures to start are states
    /// (Disabled, with the reason in the Supervisor's status), not errors
    /// here, so they are visible in the same place as every other failure.
    pub fn start(
        source: Box<dyn WalSource>,
        storage: Box<dyn Storage>,
        generation: Generation,
        config: Config,
    ) -> Runtime {
        let (events_tx, events) = mpsc::channel();
        let published = Arc::new(Published {
            snapshot: Mutex::new(Arc::new(initial_snapshot(generation))),
            changed: Condvar::new(),
        });
        let mut components: Vec<ComponentStatus> = Component::ALL
            .iter()
            .map(|c| ComponentStatus::new(*c, "Not started"))
            .collect();
        components[Component::ReadGate.index()].state =
            "Serving (evaluates each read in the reader's transaction)".into();
        let runner = SupervisorRunner {
            core: Supervisor::new(),
            storage,
            store: None,
            source: Some(source),
            config,
            pipeline: None,
            events_tx: events_tx.clone(),
            events,
            published: Arc::clone(&published),
            components,
            applied: ChainPosition::genesis(generation),
            last_transition: None,
            pending: Vec::new(),
            failed_segment: None,
            source_generation: generation,
            stopping: None,
        };
        let on_panic = Arc::clone(&published);
        let supervisor = thread::Builder::new()
            .name("aerodb-supervisor".into())
            .spawn(move || {
                // A bug that panics the Supervisor still makes the replica
                // unavailable, visibly (F4), instead of leaving a snapshot
                // that says it runs.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.run()));
                if run.is_err() {
                    let mut s = (**on_panic.lock()).clone();
                    s.running = false;
                    s.global = GlobalState::Disabled;
                    s.components[Component::Supervisor.index()].last_error = Some(Failure::new(
                        "PANIC",
                        "the supervisor thread panicked (a bug in aerodb); the replica is unavailable",
                    ));
                    *on_panic.lock() = Arc::new(s);
                    on_panic.changed.notify_all();
                }
            });
        match supervisor {
            Ok(h) => Runtime {
                events: events_tx,
                published,
                supervisor: Some(h),
            },
            Err(e) => {
                let mut s = initial_snapshot(generation);
                s.running = false;
                s.components[0].last_error = Some(Failure::new(
                    "THREAD",
                    format!("spawning the supervisor thread: {e}"),
                ));
                *published.lock() = Arc::new(s);
                Runtime {
                    events: events_tx,
                    published,
                    supervisor: None,
                }
            }
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.published.lock())
    }

    /// Waits until `done` holds for a published snapshot, or the deadline
    /// passes (then `Err` with the last snapshot). A client-side wait: the
    /// runtime never waits on time.
    pub fn wait_until(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&Snapshot) -> bool,
    ) -> Result<Arc<Snapshot>, Arc<Snapshot>> {
        let mut guard = self.published.lock();
        loop {
            if done(&guard) {
                return Ok(Arc::clone(&guard));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Arc::clone(&guard));
            }
            guard = self
                .published
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until the replica has applied `commit_id` (returns the applied
    /// position), fails at once if replication is blocked or stopped, or
    /// when the deadline passes.
    pub fn wait_for(
        &self,
        commit_id: CommitId,
        deadline: Instant,
    ) -> Result<ChainPosition, WaitError> {
        let r = self.wait_until(deadline, |s| {
            s.applied.commit_id >= commit_id || !s.running || is_blocked(&s.global)
        });
        match r {
            Ok(s) if s.applied.commit_id >= commit_id => {
                let decision = s.explain_read(Some(commit_id));
                if decision.allowed() {
                    Ok(s.applied)
                } else {
                    Err(WaitError::Refused {
                        wanted: commit_id,
                        decision,
                    })
                }
            }
            Ok(snapshot) => Err(WaitError::Unreachable {
                wanted: commit_id,
                snapshot,
            }),
            Err(snapshot) => Err(WaitError::Timeout {
                wanted: commit_id,
                snapshot,
            }),
        }
    }

    /// Stops the replica: the Receiver stops, queued segments are applied,
    /// the stop is recorded (state Disabled), every thread is joined.
    /// Returns the final snapshot.
    pub fn stop(mut self) -> Arc<Snapshot> {
        self.shutdown("stopped by the application");
        self.snapshot()
    }

    /// A handle that asks this replica to stop from another thread (a
    /// signal handler's, say) without owning it: the Supervisor records
    /// the stop with `reason`, as [`stop`](Self::stop) does, and publishes
    /// a snapshot that is no longer running. The owner still calls
    /// [`stop`](Self::stop) (or drops the runtime) to join the threads.
    pub fn stop_requester(&self) -> StopRequester {
        StopRequester {
            events: self.events.clone(),
        }
    }

    fn shutdown(&mut self, reason: &str) {
        if let Some(h) = self.supervisor.take() {
            let _ = self.events.send(Event::Stop(reason.into()));
            let _ = h.join();
        }
    }
}

/// Asks a running replica to stop ([`Runtime::stop_requester`]).
#[derive(Clone, Debug)]
pub struct StopRequester {
    events: Sender<Event>,
}

impl StopRequester {
    /// Asks for a stop recorded with `reason` (the first reason asked
    /// wins). Does nothing once the replica has stopped.
    pub fn request_stop(&self, reason: impl Into<String>) {
        let _ = self.events.send(Event::Stop(reason.into()));
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown("replica handle dropped");
    }
}

/// Whether the state is Ready(read-blocked).
pub fn is_blocked(state: &GlobalState) -> bool {
    matches!(
        state,
        GlobalState::Ready {
            read: ReadStatus::Blocked(_)
        }
    )
}
