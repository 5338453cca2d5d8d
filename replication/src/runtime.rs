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
//!                                                             state store + published View
//! ```
//!
//! Concurrency is what spec 7 allows: the Receiver runs with the Validator,
//! the Validator with the Applier only through a bounded queue, one
//! Applier. The Supervisor owns the global state (S1) and is the only
//! writer of the published [`View`]; observers (the handle, SQL) read
//! immutable views (X2). The Receiver writes only WAL storage (R2), the
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

mod applier_runner;
mod engine;
mod events;
mod failure;
pub mod mem;
mod ports;
mod receiver_runner;
mod status;
mod supervisor_runner;
mod validator_runner;
mod view;

use engine::SupervisorEngine;
use events::Event;
use status::now_ms;
use std::collections::HashMap;
use supervisor_runner::SupervisorRunner;
use view::Published;

pub use crate::code::FailureCode;
pub use failure::Failure;
pub use status::{Component, ComponentStatus, TransitionRecord};
pub use view::View;

pub use ports::{
    ApplyStorage, Fetched, PersistedSegment, SegmentReader, SnapshotFacts, StateStore, StopSignal,
    Storage, StoreOp, StoredState, WalSource, WalStorage,
};

use crate::read_gate::Decision;
use crate::state::{GlobalState, ReadStatus};
use crate::supervisor::Progress;
use crate::wal::{ChainPosition, CommitId, Generation};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

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

// ------------------------------------------------------------------- handle

/// Why [`Runtime::wait_for`] returned without the CommitId.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WaitError {
    /// The deadline passed first.
    #[error("timed out waiting for commit {wanted}: {}", view.explain_read(Some(*wanted)).explanation)]
    Timeout {
        /// The CommitId waited for.
        wanted: CommitId,
        /// The state when the deadline passed.
        view: Arc<View>,
    },
    /// Replication cannot reach it without intervention (blocked or
    /// stopped).
    #[error("commit {wanted} cannot be reached: {}", view.explain_read(Some(*wanted)).explanation)]
    Unreachable {
        /// The CommitId waited for.
        wanted: CommitId,
        /// The state that makes it unreachable.
        view: Arc<View>,
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

/// Reads a runtime's current [`View`] (see [`Runtime::views`]); after the
/// runtime stops it keeps answering its last view.
#[derive(Clone)]
pub struct Views(Arc<Published>);

impl Views {
    /// The current view.
    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.0.lock())
    }
}

/// A running replica: the handle of the Supervisor thread (which owns the
/// other threads). Dropping it stops the replica.
pub struct Runtime {
    events: Sender<Event>,
    published: Arc<Published>,
    supervisor: Option<JoinHandle<()>>,
}

fn initial_view(generation: Generation) -> View {
    View {
        global: GlobalState::Disabled,
        progress: Progress::default(),
        applied: ChainPosition::genesis(generation),
        components: Component::ALL
            .iter()
            .map(|c| ComponentStatus::new(*c, "Not started"))
            .collect(),
        last_transition: None,
        running: true,
        source_head: None,
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
            view: Mutex::new(Arc::new(initial_view(generation))),
            changed: Condvar::new(),
        });
        let mut components: Vec<ComponentStatus> = Component::ALL
            .iter()
            .map(|c| ComponentStatus::new(*c, "Not started"))
            .collect();
        components[Component::ReadGate.index()].state =
            "Serving (evaluates each read in the reader's transaction)".into();
        let engine = SupervisorEngine::new(generation, source.describe(), components, now_ms);
        let runner = SupervisorRunner {
            engine,
            storage,
            store: None,
            source: Some(source),
            config,
            pipeline: None,
            events_tx: events_tx.clone(),
            events,
            published: Arc::clone(&published),
            replies: HashMap::new(),
            next_reply: 0,
            exited: false,
        };
        let on_panic = Arc::clone(&published);
        let supervisor = thread::Builder::new()
            .name("aerodb-supervisor".into())
            .spawn(move || {
                // A bug that panics the Supervisor still makes the replica
                // unavailable, visibly (F4), instead of leaving a view
                // that says it runs.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.run()));
                if run.is_err() {
                    let mut s = (**on_panic.lock()).clone();
                    s.running = false;
                    s.global = GlobalState::Disabled;
                    s.components[Component::Supervisor.index()].last_error = Some(Failure::new(FailureCode::Panic,
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
                let mut s = initial_view(generation);
                s.running = false;
                s.components[0].last_error = Some(Failure::new(
                    FailureCode::Thread,
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

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.published.lock())
    }

    /// A handle that reads the current view, for an observer that may
    /// outlive a borrow of the runtime (a metrics listener's tasks).
    pub fn views(&self) -> Views {
        Views(Arc::clone(&self.published))
    }

    /// Waits until `done` holds for a published view, or the deadline
    /// passes (then `Err` with the last view). A client-side wait: the
    /// runtime never waits on time.
    pub fn wait_until(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&View) -> bool,
    ) -> Result<Arc<View>, Arc<View>> {
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
            Ok(view) => Err(WaitError::Unreachable {
                wanted: commit_id,
                view,
            }),
            Err(view) => Err(WaitError::Timeout {
                wanted: commit_id,
                view,
            }),
        }
    }

    /// Stops the replica: the Receiver stops, queued segments are applied,
    /// the stop is recorded (state Disabled), every thread is joined.
    /// Returns the final view.
    pub fn stop(mut self) -> Arc<View> {
        self.shutdown("stopped by the application");
        self.view()
    }

    /// A handle that asks this replica to stop from another thread (a
    /// signal handler's, say) without owning it: the Supervisor records
    /// the stop with `reason`, as [`stop`](Self::stop) does, and publishes
    /// a view that is no longer running. The owner still calls
    /// [`stop`](Self::stop) (or drops the runtime) to join the threads.
    pub fn stop_requester(&self) -> StopRequester {
        StopRequester {
            events: self.events.clone(),
        }
    }

    /// Asks the Supervisor to resume a block an operator may lift (a full
    /// disk freed, a source fixed: [`BlockReason::is_resumable`]), recorded
    /// as `resumed by {reason}`; recovery then runs from the applied
    /// position. Returns the state it resumed from, or why nothing resumes
    /// (not blocked, a divergence, a rejected segment, stopping). Waits
    /// only for the Supervisor's answer, never on time.
    ///
    /// [`BlockReason::is_resumable`]: crate::state::BlockReason::is_resumable
    pub fn resume(&self, reason: &str) -> Result<String, String> {
        ask(&self.events, |reply| Event::Resume {
            reason: reason.into(),
            reply,
        })
    }

    /// Holds the replica for something outside the runtime that applies
    /// to it itself (`aerodb verify`): see [`Holder::hold`].
    pub fn hold(&self, reason: &str) -> Result<String, String> {
        self.holder().hold(reason)
    }

    /// Ends a hold: see [`Holder::release`].
    pub fn release(&self) -> Result<String, String> {
        self.holder().release()
    }

    /// A handle that holds and releases this replica from another thread
    /// (the control socket's) without owning it.
    pub fn holder(&self) -> Holder {
        Holder {
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

/// Sends the Supervisor a request and waits for its answer (never on time).
fn ask(
    events: &Sender<Event>,
    request: impl FnOnce(mpsc::Sender<Result<String, String>>) -> Event,
) -> Result<String, String> {
    let (reply, answer) = mpsc::channel();
    events
        .send(request(reply))
        .map_err(|_| "the replica runtime is not running".to_string())?;
    answer
        .recv()
        .map_err(|_| "the replica runtime stopped before answering".to_string())?
}

/// Holds and releases a running replica ([`Runtime::holder`]).
#[derive(Clone, Debug)]
pub struct Holder {
    events: Sender<Event>,
}

impl Holder {
    /// Holds the replica for something outside the runtime that applies
    /// to it itself (`aerodb verify`): the pipeline stops (what is queued
    /// is applied first), the hold is recorded as each component's state
    /// (`Held by {reason} (applied commit N)`), and nothing is received or
    /// applied until [`release`](Self::release). The global state stays
    /// what it was. Refused while held already, stopping, or while a
    /// recovery or restart is under way. Waits only for the Supervisor's
    /// answer, never on time.
    pub fn hold(&self, reason: &str) -> Result<String, String> {
        ask(&self.events, |reply| Event::Hold {
            reason: reason.into(),
            reply,
        })
    }

    /// Ends a [`hold`](Self::hold): the store is opened again (its crash
    /// recovery checks what the holder left) and the pipeline restarts
    /// from the applied position it holds, recorded as `released by ...`.
    pub fn release(&self) -> Result<String, String> {
        ask(&self.events, |reply| Event::Release { reply })
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
