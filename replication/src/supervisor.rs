//! Replica Supervisor (spec 5.1): owner of the global state.
//!
//! A sans-IO core (STYLE 2): the components' runners report events; the
//! Supervisor derives the next global state, checks the move against the
//! transition table and returns it as a [`Transition`] value (with its
//! reason and the CommitIds at that moment) for its runner to log with
//! `tracing` and persist (M2). It does no WAL IO, applies nothing, serves
//! no reads (S2); it is the only writer of the global state (S1, A1).
//! Received, validated and applied CommitIds are kept apart.

use crate::code::FailureCode;
use crate::state::{check_global, BlockReason, GlobalState, IllegalTransition, ReadStatus};
use crate::validator::Rejection;
use crate::wal::{ChainPosition, CommitId};

/// What the Supervisor is told.
#[derive(Clone, Debug, PartialEq)]
pub enum SupervisorInput {
    /// Storage is open: the committed position and whether received but
    /// unapplied segments were found (they are revalidated: Recovering).
    Started {
        /// Committed applied position.
        applied: ChainPosition,
        /// Last CommitId persisted by the Receiver (>= applied).
        received: CommitId,
    },
    /// Recovery re-validated (or discarded, recorded) what it found.
    Recovered,
    /// Recovery found a segment stored on the replica that fails
    /// validation though it was never rejected when the source sent it
    /// (the replica's own copy is damaged): it and everything received
    /// after it are discarded and fetched again from the source. Ends
    /// recovery, recorded with the segment named; a rejection of the copy
    /// the source sends again is an ordinary [`Rejected`](Self::Rejected).
    StoredSegmentDiscarded {
        /// The segment.
        range: (CommitId, CommitId),
        /// Why it failed validation.
        reason: String,
    },
    /// The Receiver persisted a segment.
    Received {
        /// Its last CommitId.
        last: CommitId,
    },
    /// The Validator validated a segment.
    Validated {
        /// Its last CommitId.
        last: CommitId,
    },
    /// The Applier committed a segment.
    Applied {
        /// The new applied position.
        end: ChainPosition,
    },
    /// The source has nothing after what was received (for now).
    CaughtUp,
    /// The Validator rejected a segment (F2).
    Rejected(Rejection),
    /// The Receiver stopped (F1).
    ReceiverStopped {
        /// Its failure's code.
        code: FailureCode,
        /// Why.
        reason: String,
    },
    /// The Validator failed (it could not read what it must validate):
    /// application is blocked (F2); only a restart lifts it.
    ValidatorFailed {
        /// Why.
        reason: String,
    },
    /// The source answers again after the Receiver stopped on a transport
    /// failure: replication resumes, as an explicit, recorded transition
    /// (only from Ready(read-blocked: WAL receiver failed)).
    SourceBack {
        /// What came back.
        reason: String,
    },
    /// The Applier's storage write failed (F3).
    ApplierFailed {
        /// The segment.
        range: (CommitId, CommitId),
        /// The failure's code.
        code: FailureCode,
        /// Why.
        reason: String,
    },
    /// Recovery cannot make progress: the Applier failed again on the
    /// segment it failed on before recovery. Replication stops, read-blocked,
    /// instead of retrying (X4).
    RecoveryFailed {
        /// The segment.
        range: (CommitId, CommitId),
        /// The failure's code.
        code: FailureCode,
        /// Why.
        reason: String,
    },
    /// An operator asked to resume a block that [`BlockReason::is_resumable`]
    /// (e.g. a full disk freed): recovery runs from the applied position,
    /// recorded with who asked. Only from such a block.
    Resume {
        /// Who asked, and why.
        reason: String,
    },
    /// A hold (`aerodb verify`) was released: the pipeline restarted from
    /// what the store holds ([`Supervisor::restart_after_hold`]), so
    /// recovery re-validates what is stored, as after a restart. A block
    /// an operator's resume would lift is lifted the same way (the new
    /// pipeline meets its cause again if it is still there); another block
    /// (a divergence, a rejected segment) stays.
    Released {
        /// Who held it.
        reason: String,
    },
    /// Stop requested (or a component/runner failure: F4).
    Stop {
        /// Why.
        reason: String,
    },
}

/// One global transition, as logged and persisted.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// From.
    pub from: GlobalState,
    /// To.
    pub to: GlobalState,
    /// Why, in a sentence.
    pub reason: String,
    /// CommitIds at that moment.
    pub progress: Progress,
}

/// The three CommitIds the Supervisor keeps apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Progress {
    /// Last CommitId persisted by the Receiver.
    pub received: CommitId,
    /// Last CommitId validated.
    pub validated: CommitId,
    /// Last CommitId applied (committed in storage).
    pub applied: CommitId,
}

/// The Supervisor core.
#[derive(Clone, Debug, PartialEq)]
pub struct Supervisor {
    state: GlobalState,
    progress: Progress,
    /// The newest CommitId the source said it has (nothing after it yet).
    source_head: Option<CommitId>,
    /// The segment the Applier last failed on, until a segment applies (or
    /// an operator resumes): the same segment failing again after recovery
    /// stops replication instead of retrying (X4).
    failed_segment: Option<(CommitId, CommitId)>,
    /// What the recovery an Applier failure started must end in, once the
    /// pipeline has stopped: `Some` (this failure repeats the last one)
    /// blocks, `None` recovers.
    give_up: Option<(CommitId, CommitId, FailureCode, String)>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new()
    }
}

impl Supervisor {
    /// A supervisor in `Disabled`.
    pub fn new() -> Supervisor {
        Supervisor {
            state: GlobalState::Disabled,
            progress: Progress::default(),
            source_head: None,
            failed_segment: None,
            give_up: None,
        }
    }

    /// The global state (observers get it in the immutable published View).
    pub fn state(&self) -> &GlobalState {
        &self.state
    }

    /// Received / validated / applied CommitIds.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// After an Applier failure's recovery stopped the pipeline: the
    /// transition that ends it when the failure repeated the last one
    /// (read-blocked, no retry: X4), or `None` when recovery goes on
    /// (re-open the store, re-validate from the applied position).
    pub fn recovery_after_stop(&mut self) -> Result<Option<Transition>, IllegalTransition> {
        match self.give_up.take() {
            Some((first, last, code, reason)) => self.handle(SupervisorInput::RecoveryFailed {
                range: (first, last),
                code,
                reason,
            }),
            None => Ok(None),
        }
    }

    /// Whether [`SupervisorInput::Resume`] is taken now: only in a block
    /// that [`BlockReason::is_resumable`].
    pub fn can_resume(&self) -> bool {
        matches!(
            &self.state,
            GlobalState::Ready {
                read: ReadStatus::Blocked(b),
            } if b.is_resumable()
        )
    }

    /// Begins starting: Disabled -> Initializing.
    pub fn start(&mut self) -> Result<Transition, IllegalTransition> {
        self.start_because("replica starting".into(), Progress::default())
    }

    /// Begins starting, with the reason to record (e.g. how the previous
    /// run ended) and the progress the store holds (so the recorded
    /// transition names where the replica stands, not zeros).
    pub fn start_because(
        &mut self,
        reason: String,
        stored: Progress,
    ) -> Result<Transition, IllegalTransition> {
        self.source_head = None;
        self.progress = stored;
        self.move_to(GlobalState::Initializing, reason)
    }

    /// After a hold (`aerodb verify`): the pipeline was stopped while the
    /// holder applied WAL itself, so progress restarts from what the store
    /// holds now. No global transition: the state stays what it was (a
    /// block stays a block), and the pipeline's reports move it on as
    /// they would after any start.
    pub fn restart_after_hold(&mut self, applied: ChainPosition, received: CommitId) {
        self.source_head = None;
        self.progress = Progress {
            received: received.max(applied.commit_id),
            validated: applied.commit_id,
            applied: applied.commit_id,
        };
    }

    /// The running state the pipeline's progress calls for: the
    /// furthest-behind stage with work, or Ready once everything received
    /// is applied and the source has nothing more.
    fn running_state(&self) -> GlobalState {
        let p = self.progress;
        if p.applied < p.validated {
            GlobalState::ApplyingWal
        } else if p.validated < p.received {
            GlobalState::ValidatingWal
        } else if self.source_head == Some(p.received) {
            GlobalState::Ready {
                read: ReadStatus::Safe,
            }
        } else {
            GlobalState::ReceivingWal
        }
    }

    fn move_to(
        &mut self,
        to: GlobalState,
        reason: String,
    ) -> Result<Transition, IllegalTransition> {
        check_global(&self.state, &to)?;
        let from = std::mem::replace(&mut self.state, to.clone());
        tracing::info!(from = %from, to = %to, %reason, applied = self.progress.applied.0, "replica state");
        Ok(Transition {
            from,
            to,
            reason,
            progress: self.progress,
        })
    }

    /// After pipeline progress: the running state it calls for, unless
    /// blocked or recovering (no silent recovery).
    fn progress_made(
        &mut self,
        blocked: bool,
        reason: String,
    ) -> Result<Option<Transition>, IllegalTransition> {
        let to = self.running_state();
        if blocked || to == self.state {
            return Ok(None);
        }
        self.move_to(to, reason).map(Some)
    }

    /// Handles one event; returns the transition it causes, if any.
    pub fn handle(
        &mut self,
        input: SupervisorInput,
    ) -> Result<Option<Transition>, IllegalTransition> {
        // Blocked: stays blocked until a restart resolves it. Recovering:
        // only `Recovered` ends it. Progress is still counted meanwhile.
        let blocked = matches!(
            self.state,
            GlobalState::Ready {
                read: ReadStatus::Blocked(_)
            } | GlobalState::Recovering
        );
        let (to, reason) = match input {
            SupervisorInput::Started { applied, received } => {
                let received = received.max(applied.commit_id);
                self.progress = Progress {
                    received,
                    validated: applied.commit_id,
                    applied: applied.commit_id,
                };
                if received > applied.commit_id {
                    (
                        GlobalState::Recovering,
                        format!(
                            "commits {}..={received} were received but not applied before the restart; re-validating them",
                            applied.commit_id.next()
                        ),
                    )
                } else {
                    (
                        GlobalState::ReceivingWal,
                        format!(
                            "started at applied commit {} (WAL offset {})",
                            applied.commit_id, applied.wal_offset
                        ),
                    )
                }
            }
            SupervisorInput::Recovered => (self.running_state(), "recovery finished".into()),
            SupervisorInput::Resume { reason } => {
                if !self.can_resume() {
                    return Err(IllegalTransition::NotInState {
                        state: self.state.clone(),
                        input: "a resume (only a block of this replica's storage or source resumes)",
                    });
                }
                self.progress.validated = self.progress.applied;
                self.source_head = None;
                self.failed_segment = None;
                (
                    GlobalState::Recovering,
                    format!(
                        "resumed by {reason}: re-validating from applied commit {}",
                        self.progress.applied
                    ),
                )
            }
            SupervisorInput::Released { reason } => {
                let resumable = self.can_resume();
                if self.state == GlobalState::Recovering || (blocked && !resumable) {
                    return Ok(None);
                }
                self.failed_segment = None;
                (
                    GlobalState::Recovering,
                    format!(
                        "released by {reason}: the pipeline restarted at applied commit {}{}; re-validating what is stored",
                        self.progress.applied,
                        if resumable { " (which lifts the block)" } else { "" }
                    ),
                )
            }
            SupervisorInput::StoredSegmentDiscarded { range, reason } => {
                // Recovery re-reads stored segments; the source may have
                // failed meanwhile (a migration under way on the primary),
                // and come back, which moves the state on while stored
                // segments are still being re-read: the discard and the
                // restart go on from any of those states. Never from
                // another block (a discard does not lift a rejection or a
                // divergence), nor outside a run.
                let receiver_blocked = matches!(
                    &self.state,
                    GlobalState::Ready {
                        read: ReadStatus::Blocked(BlockReason::ReceiverFailed { .. })
                    }
                );
                let running = matches!(
                    &self.state,
                    GlobalState::ReceivingWal
                        | GlobalState::ValidatingWal
                        | GlobalState::ApplyingWal
                        | GlobalState::Ready {
                            read: ReadStatus::Safe
                        }
                );
                if self.state != GlobalState::Recovering && !receiver_blocked && !running {
                    return Err(IllegalTransition::NotInState {
                        state: self.state.clone(),
                        input: "a discard of stored segments (only recovery re-reads them)",
                    });
                }
                // What was received from the damaged segment on is gone;
                // what is kept before it is validated again.
                self.progress.received = CommitId(range.0 .0.saturating_sub(1)).max(self.progress.applied);
                self.progress.validated = self.progress.applied;
                self.source_head = None;
                (
                    self.running_state(),
                    format!(
                        "segment {}..={} as stored on this replica fails validation ({reason}); it and everything received after it were discarded and are fetched again from the source from commit {}",
                        range.0, range.1, range.0
                    ),
                )
            }
            SupervisorInput::Stop { reason } => (GlobalState::Disabled, reason),
            SupervisorInput::ApplierFailed {
                range,
                code,
                reason,
            } => {
                // Recovery re-validates everything after the applied
                // position: nothing beyond it counts as validated. The same
                // segment failing again gives up once the pipeline stopped.
                self.progress.validated = self.progress.applied;
                let again = self.failed_segment == Some(range);
                self.failed_segment = Some(range);
                self.give_up = again.then(|| (range.0, range.1, code, reason.clone()));
                (
                    GlobalState::Recovering,
                    format!(
                        "applying segment {}..={} failed: {reason}",
                        range.0, range.1
                    ),
                )
            }
            SupervisorInput::RecoveryFailed {
                range,
                code,
                reason,
            } => (
                GlobalState::Ready {
                    read: ReadStatus::Blocked(BlockReason::ApplierFailed {
                        first: range.0,
                        last: range.1,
                        code,
                        reason: reason.clone(),
                    }),
                },
                format!(
                    "recovery failed: applying segment {}..={} failed again after recovery: {reason}",
                    range.0, range.1
                ),
            ),
            SupervisorInput::Rejected(r) => {
                let reason = format!("segment {}..={} rejected", r.first, r.last);
                (
                    GlobalState::Ready {
                        read: ReadStatus::Blocked(BlockReason::SegmentRejected {
                            first: r.first,
                            last: r.last,
                            wal_offset: r.wal_offset,
                            code: r.code,
                            reason: r.reason,
                        }),
                    },
                    reason,
                )
            }
            SupervisorInput::ReceiverStopped { code, reason } => (
                GlobalState::Ready {
                    read: ReadStatus::Blocked(BlockReason::ReceiverFailed {
                        code,
                        reason: reason.clone(),
                    }),
                },
                format!("replication stopped: {reason}"),
            ),
            SupervisorInput::ValidatorFailed { reason } => (
                GlobalState::Ready {
                    read: ReadStatus::Blocked(BlockReason::ValidatorFailed {
                        reason: reason.clone(),
                    }),
                },
                format!("application blocked: WAL validator failed: {reason}"),
            ),
            SupervisorInput::SourceBack { reason } => {
                let receiver_failed = matches!(
                    self.state,
                    GlobalState::Ready {
                        read: ReadStatus::Blocked(BlockReason::ReceiverFailed { .. })
                    }
                );
                if !receiver_failed {
                    return Ok(None);
                }
                self.source_head = None;
                (self.running_state(), reason)
            }
            SupervisorInput::Received { last } => {
                self.progress.received = self.progress.received.max(last);
                return self.progress_made(blocked, format!("received WAL through commit {last}"));
            }
            SupervisorInput::Validated { last } => {
                self.progress.validated = self.progress.validated.max(last);
                return self.progress_made(blocked, format!("validated WAL through commit {last}"));
            }
            SupervisorInput::Applied { end } => {
                self.progress.applied = end.commit_id;
                self.failed_segment = None;
                return self.progress_made(
                    blocked,
                    format!(
                        "applied commit {} (WAL offset {})",
                        end.commit_id, end.wal_offset
                    ),
                );
            }
            SupervisorInput::CaughtUp => {
                self.source_head = Some(self.progress.received);
                let reason = format!(
                    "caught up with the source at commit {}",
                    self.progress.received
                );
                return self.progress_made(blocked, reason);
            }
        };
        if to == self.state {
            return Ok(None);
        }
        self.move_to(to, reason).map(Some)
    }
}

#[cfg(test)]
mod tests;
