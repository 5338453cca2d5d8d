//! The Replica Supervisor's engine (spec 5.1; STYLE 18): every decision of
//! the Supervisor's thread, sans IO. It takes one [`Input`] at a time (what
//! the runners report, and what became of the commands it gave) and
//! returns the [`Command`]s to carry out, in order: record these store
//! ops, publish this view, open the store, start or stop the pipeline,
//! answer a resume, exit. Its runner (`supervisor_runner.rs`) only carries
//! them out and reports back; it decides nothing.
//!
//! Sequences that wait for IO are explicit: a [`Command::StopPipeline`] or
//! [`Command::OpenStore`] is always the last command of a list, and what
//! follows it is held in the [`Phase`] ([`AfterStop`] / [`AfterOpen`])
//! until the runner reports [`Input::PipelineStopped`] /
//! [`Input::StoreOpened`]. While the
//! pipeline stops, what it still reports is handled as *draining*: its
//! failures are recorded, not acted on (one restart per stop).

use super::events::Event;
use super::{Component, ComponentStatus, Failure, StoreOp, StoredState, TransitionRecord, View};
use crate::code::FailureCode;
use crate::supervisor::{Progress, Supervisor, SupervisorInput, Transition};
use crate::wal::{ChainPosition, CommitId, Generation};

/// Identifies a resume request's answer (the runner keeps the channel).
pub(super) type ReplyId = u64;

/// What the engine is told.
#[derive(Debug)]
pub(super) enum Input {
    /// The Supervisor's thread starts.
    Start,
    /// A runner's report (never [`Event::Resume`]: that is [`Input::Resume`]).
    Report(Event),
    /// An operator asks to resume a block.
    Resume {
        /// Who asked, and why.
        reason: String,
        /// Where the answer goes.
        reply: ReplyId,
    },
    /// Something outside the runtime (`aerodb verify`) asks to hold the
    /// replica: the pipeline stops, the hold is recorded, and nothing is
    /// received or applied until [`Input::Release`].
    Hold {
        /// Who holds it, and why.
        reason: String,
        /// Where the answer goes.
        reply: ReplyId,
    },
    /// The holder releases the replica: the store is opened again (what
    /// the holder applied meanwhile is the position now) and the pipeline
    /// restarts from it.
    Release {
        /// Where the answer goes.
        reply: ReplyId,
    },
    /// Every report queued so far was handled: record and publish.
    BatchEnd,
    /// [`Command::OpenStore`] done: what the store holds after its crash
    /// recovery.
    StoreOpened(StoredState),
    /// [`Command::StopPipeline`] done (every thread joined, what they
    /// reported on the way out handed over): the threads that panicked
    /// past their guard.
    PipelineStopped {
        /// Components whose thread ended in a panic.
        panicked: Vec<Component>,
    },
    /// Carrying out a command failed (the store cannot record, a thread
    /// cannot be spawned, ...): the Supervisor fails (F4). The rest of that
    /// command list was not carried out; `unrecorded` holds the store ops
    /// of its records (the failed one's included), recorded as well as the
    /// store allows on the way out, as pending ops always were.
    Failed {
        /// What failed.
        failure: Failure,
        /// Store ops that were not recorded.
        unrecorded: Vec<StoreOp>,
    },
}

/// What the runner carries out.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Command {
    /// Record these ops in one state store transaction. `best_effort`: the
    /// Supervisor is failing; a failure to record is ignored.
    Record {
        /// The ops, a component's row once (its last status).
        ops: Vec<StoreOp>,
        /// Ignore a failure to record.
        best_effort: bool,
    },
    /// Publish this view to observers.
    Publish(View),
    /// Open the state store (its crash recovery), then report
    /// [`Input::StoreOpened`].
    OpenStore,
    /// Start the Receiver, Validator and Applier threads from this
    /// position. `refuse`: the Receiver refuses the source at once (it
    /// serves another generation).
    StartPipeline {
        /// The applied position.
        applied: ChainPosition,
        /// The last CommitId received.
        received: CommitId,
        /// The Receiver's refusal of the source, if any.
        refuse: Option<Failure>,
    },
    /// Stop the pipeline's threads, hand over what they report, then
    /// report [`Input::PipelineStopped`] (at once if none runs).
    StopPipeline,
    /// Answer a resume request.
    Reply {
        /// Which.
        to: ReplyId,
        /// The state resumed from, or why nothing resumes.
        answer: Result<String, String>,
    },
    /// The run is over.
    Exit,
}

/// What follows a [`Command::StopPipeline`].
#[derive(Clone, Debug, PartialEq)]
pub(super) enum AfterStop {
    /// Recovery after an Applier failure: the core says whether it goes on
    /// (re-open the store, restart) or gives up (X4).
    Recover,
    /// A damaged stored segment: discard it and what follows, then restart.
    Discard {
        /// Its range.
        range: (CommitId, CommitId),
        /// Why it failed validation.
        reason: String,
    },
    /// An operator's resume: restart from the applied position, then answer.
    Resume {
        /// Where the answer goes.
        reply: ReplyId,
        /// The state resumed from.
        from: String,
    },
    /// A hold: record it, answer, and wait for the release.
    Hold {
        /// Where the answer goes.
        reply: ReplyId,
        /// Who holds it, and why.
        reason: String,
    },
    /// A requested stop: record it and exit.
    Exit {
        /// Why.
        reason: String,
    },
    /// The Supervisor failed (F4): record it as well as it can, and exit.
    Fail(Failure),
}

/// What follows a [`Command::OpenStore`].
#[derive(Clone, Debug, PartialEq)]
pub(super) enum AfterOpen {
    /// The run's first start.
    Initial,
    /// Start the pipeline (recovery, resume); then answer a resume.
    Start {
        /// A resume to answer once started.
        reply: Option<(ReplyId, String)>,
    },
    /// A hold's release: the pipeline restarts from where the holder left
    /// the replica; then answer.
    Release {
        /// Where the answer goes.
        reply: ReplyId,
        /// Who held it.
        reason: String,
    },
    /// Record the discard of a damaged stored segment, then open again.
    Discard {
        /// Its range.
        range: (CommitId, CommitId),
        /// Why it failed validation.
        reason: String,
    },
}

/// Where the Supervisor's thread stands.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Phase {
    /// The pipeline runs (or is stopped for good after X4); reports are
    /// acted on.
    Running,
    /// [`Command::StopPipeline`] was given: what the stopping pipeline
    /// reports is recorded, not acted on (one restart per stop); then this.
    Stopping(AfterStop),
    /// [`Command::OpenStore`] was given; then this.
    Opening(AfterOpen),
    /// Held ([`Input::Hold`]): no pipeline runs; the holder may apply to
    /// the replica itself. Ends with [`Input::Release`] or a stop.
    Held {
        /// Who holds it, and why.
        reason: String,
    },
    /// [`Command::Exit`] was given; `failed`: by the F4 path.
    Ended {
        /// The run ended failing (F4).
        failed: bool,
    },
}

/// The Supervisor's thread's state and decisions.
pub(super) struct SupervisorEngine {
    core: Supervisor,
    components: Vec<ComponentStatus>,
    applied: ChainPosition,
    last_transition: Option<TransitionRecord>,
    pending: Vec<StoreOp>,
    /// The generation the source serves, and how it names itself.
    source_generation: Generation,
    source_name: String,
    /// The newest head the source advertised (recorded when it grows).
    source_head: Option<CommitId>,
    /// A stop was asked for (or the run is failing): why.
    stopping: Option<String>,
    /// Where the thread's lifecycle stands.
    phase: Phase,
    /// Commands of the input being handled.
    out: Vec<Command>,
    /// Wall-clock milliseconds for transition records (informational).
    clock: fn() -> i64,
}

impl SupervisorEngine {
    pub(super) fn new(
        generation: Generation,
        source_name: String,
        components: Vec<ComponentStatus>,
        clock: fn() -> i64,
    ) -> SupervisorEngine {
        SupervisorEngine {
            core: Supervisor::new(),
            components,
            applied: ChainPosition::genesis(generation),
            last_transition: None,
            pending: Vec::new(),
            source_generation: generation,
            source_name,
            source_head: None,
            stopping: None,
            phase: Phase::Running,
            out: Vec::new(),
            clock,
        }
    }

    /// Handles one input; the commands to carry out, in order.
    pub(super) fn handle(&mut self, input: Input) -> Vec<Command> {
        if let Err(f) = self.handle_inner(input) {
            self.fail(f);
        }
        std::mem::take(&mut self.out)
    }

    /// The view observers would get now.
    pub(super) fn view(&self, running: bool) -> View {
        View {
            global: self.core.state().clone(),
            progress: self.core.progress(),
            applied: self.applied,
            components: self.components.clone(),
            last_transition: self.last_transition.clone(),
            running,
            source_head: self.source_head,
        }
    }

    // ------------------------------------------------------------ helpers

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
        let record = TransitionRecord::at(&t, self.applied, (self.clock)());
        let s = self.status(Component::Supervisor);
        s.state = record.to.clone();
        s.blocking_reason = record.blocking_reason.clone();
        s.last_transition = Some(format!(
            "{} -> {}: {}",
            record.from, record.to, record.reason
        ));
        self.pending.push(StoreOp::Transition(record.clone()));
        // Component rows are written with every transition, so the store's
        // view of each component is never older than the global state.
        self.record_components();
        self.last_transition = Some(record);
    }

    fn record_components(&mut self) {
        for c in self.components.clone() {
            self.pending.push(StoreOp::Component(c));
        }
    }

    /// Feeds the core; an illegal move is a Supervisor failure (F4).
    fn drive(&mut self, input: SupervisorInput) -> Result<(), Failure> {
        match self.core.handle(input) {
            Ok(Some(t)) => {
                self.transition(t);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(Failure::new(FailureCode::IllegalTransition, e.to_string())),
        }
    }

    /// Emits what is pending as one [`Command::Record`] (a component's row
    /// once: its last status).
    fn flush(&mut self, best_effort: bool) {
        if self.pending.is_empty() {
            return;
        }
        let mut ops = std::mem::take(&mut self.pending);
        let mut seen = [false; Component::ALL.len()];
        for i in (0..ops.len()).rev() {
            if let StoreOp::Component(c) = &ops[i] {
                if std::mem::replace(&mut seen[c.component.index()], true) {
                    ops.remove(i);
                }
            }
        }
        self.out.push(Command::Record { ops, best_effort });
    }

    fn publish(&mut self, running: bool) {
        let s = self.view(running);
        self.out.push(Command::Publish(s));
    }

    /// Stops the pipeline; `then` follows once it has stopped.
    fn stop_pipeline(&mut self, then: AfterStop) {
        self.phase = Phase::Stopping(then);
        self.out.push(Command::StopPipeline);
    }

    /// What a stopping pipeline reports is recorded, not acted on.
    fn draining(&self) -> bool {
        !matches!(self.phase, Phase::Running)
    }

    fn exit(&mut self, failed: bool) {
        self.phase = Phase::Ended { failed };
        self.out.push(Command::Exit);
    }

    /// Opens the store; `then` follows once it is open.
    fn open_store(&mut self, then: AfterOpen) {
        self.phase = Phase::Opening(then);
        self.out.push(Command::OpenStore);
    }

    /// What an opened store tells.
    fn opened(&mut self, stored: &StoredState) {
        self.applied = stored.applied;
        if stored.revalidate > 0 {
            self.status(Component::StateStore).last_transition = Some(format!(
                "moved {} Validated-but-unapplied segment(s) back to Received for re-validation",
                stored.revalidate
            ));
        }
    }

    /// Starts the pipeline from what the store holds.
    fn start_pipeline(&mut self, stored: &StoredState) {
        let (applied, received) = (stored.applied, stored.received);
        // A source serving another generation than the replica follows is
        // refused before anything is fetched (a foreign primary at the
        // same path or address, whatever its head).
        let refuse = (applied.generation != self.source_generation).then(|| {
            Failure::new(
                FailureCode::ForeignGeneration,
                format!(
                    "{} serves generation {}, the replica follows generation {} (applied commit {})",
                    self.source_name, self.source_generation, applied.generation, applied.commit_id
                ),
            )
        });
        self.out.push(Command::StartPipeline {
            applied,
            received,
            refuse,
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
    }

    /// F4: the replica becomes unavailable, with the reason visible. The
    /// rest of what was being done is dropped; the pipeline stops (at once
    /// if it is stopped already) and the run ends, recorded as well as the
    /// store allows.
    fn fail(&mut self, f: Failure) {
        if self.failing() {
            return;
        }
        tracing::error!(%f, "replica supervisor failed");
        self.stopping
            .get_or_insert_with(|| format!("supervisor failed: {f}"));
        self.stop_pipeline(AfterStop::Fail(f));
    }

    /// The run is failing or over: nothing more is acted on.
    fn failing(&self) -> bool {
        matches!(
            self.phase,
            Phase::Stopping(AfterStop::Fail(_)) | Phase::Ended { .. }
        )
    }

    /// Store ops waiting for the next record.
    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    // ------------------------------------------------------------ inputs

    fn handle_inner(&mut self, input: Input) -> Result<(), Failure> {
        match input {
            Input::Start => {
                self.open_store(AfterOpen::Initial);
                Ok(())
            }
            Input::Report(event) => self.report(event),
            Input::Resume { reason, reply } => self.resume(reason, reply),
            Input::Hold { reason, reply } => self.hold(reason, reply),
            Input::Release { reply } => self.release(reply),
            Input::BatchEnd => {
                if matches!(self.phase, Phase::Held { .. }) {
                    // A stop while held ends the run (no pipeline runs: the
                    // stop is at once); the holder's release then finds
                    // nothing to release.
                    if let Some(reason) = self.stopping.clone() {
                        self.phase = Phase::Running;
                        self.stop_pipeline(AfterStop::Exit { reason });
                    }
                    return Ok(());
                }
                if self.phase != Phase::Running {
                    // A sequence is under way; it records and publishes.
                    return Ok(());
                }
                if let Some(reason) = self.stopping.clone() {
                    self.stop_pipeline(AfterStop::Exit { reason });
                } else {
                    self.flush(false);
                    self.publish(true);
                }
                Ok(())
            }
            Input::StoreOpened(stored) => self.store_opened(stored),
            Input::PipelineStopped { panicked } => self.pipeline_stopped(panicked),
            Input::Failed {
                failure,
                unrecorded,
            } => {
                self.pending.splice(0..0, unrecorded);
                match self.phase {
                    // The stop under way ends the run, or it ended failing.
                    Phase::Stopping(AfterStop::Fail(_)) | Phase::Ended { failed: true } => Ok(()),
                    // The run's last commands were lost with the failure
                    // (its stop record, say): end it as an F4 would.
                    Phase::Ended { failed: false } => {
                        tracing::error!(%failure, "replica supervisor failed while ending");
                        self.failed(Component::Supervisor, "Failed", failure);
                        self.flush(true);
                        self.publish(false);
                        self.exit(true);
                        Ok(())
                    }
                    _ => Err(failure),
                }
            }
        }
    }

    fn store_opened(&mut self, stored: StoredState) -> Result<(), Failure> {
        self.opened(&stored);
        let then = match std::mem::replace(&mut self.phase, Phase::Running) {
            Phase::Opening(then) => then,
            other => {
                self.phase = other;
                return Ok(());
            }
        };
        match then {
            AfterOpen::Initial => {
                // Last errors survive restarts until a success replaces them.
                for c in &stored.components {
                    let s = self.status(c.component);
                    s.last_error = c.last_error.clone();
                    s.last_transition = c.last_transition.clone();
                }
                let how = match stored.previous_state.as_deref() {
                    None => "replica starting for the first time".to_string(),
                    Some("Disabled") => "replica starting after a clean stop".to_string(),
                    Some(s) => {
                        format!("replica starting after an unclean end (last recorded state: {s})")
                    }
                };
                let stored_progress = Progress {
                    received: stored.received.max(stored.applied.commit_id),
                    validated: stored.applied.commit_id,
                    applied: stored.applied.commit_id,
                };
                let t = self
                    .core
                    .start_because(how, stored_progress)
                    .map_err(|e| Failure::new(FailureCode::IllegalTransition, e.to_string()))?;
                self.transition(t);
                self.start_pipeline(&stored);
                self.set_state(Component::StateStore, "Open");
                self.drive(SupervisorInput::Started {
                    applied: stored.applied,
                    received: stored.received,
                })?;
                self.flush(false);
                self.publish(true);
            }
            AfterOpen::Start { reply } => {
                self.start_pipeline(&stored);
                if let Some((to, from)) = reply {
                    self.out.push(Command::Reply {
                        to,
                        answer: Ok(from),
                    });
                }
            }
            AfterOpen::Release { reply, reason } => self.released(&stored, reply, reason)?,
            AfterOpen::Discard { range, reason } => {
                // The store's recovery first (Validated back to Received),
                // then the discard and its transition, recorded in one
                // batch; then the pipeline starts from the store as it is.
                self.pending.push(StoreOp::Discard { from: range.0 });
                self.drive(SupervisorInput::StoredSegmentDiscarded { range, reason })?;
                self.flush(false);
                self.open_store(AfterOpen::Start { reply: None });
            }
        }
        Ok(())
    }

    fn pipeline_stopped(&mut self, panicked: Vec<Component>) -> Result<(), Failure> {
        for c in panicked {
            let what = match c {
                Component::Receiver => "receiver",
                Component::Validator => "validator",
                _ => "applier",
            };
            self.failed(
                c,
                "Failed",
                Failure::new(FailureCode::Panic, format!("the {what} thread panicked")),
            );
        }
        let then = match std::mem::replace(&mut self.phase, Phase::Running) {
            Phase::Stopping(then) => then,
            other => {
                self.phase = other;
                return Ok(());
            }
        };
        match then {
            AfterStop::Recover => {
                let gave_up = self
                    .core
                    .recovery_after_stop()
                    .map_err(|e| Failure::new(FailureCode::IllegalTransition, e.to_string()))?;
                if let Some(t) = gave_up {
                    self.transition(t);
                } else if self.stopping.is_none() {
                    // What the stopped pipeline reported is recorded before
                    // the store's recovery moves Validated segments back to
                    // Received, so no stale mark survives it.
                    self.flush(false);
                    self.open_store(AfterOpen::Start { reply: None });
                }
            }
            AfterStop::Discard { range, reason } => {
                if self.stopping.is_none() {
                    self.flush(false);
                    self.open_store(AfterOpen::Discard { range, reason });
                }
            }
            AfterStop::Resume { reply, from } => {
                if self.stopping.is_none() {
                    self.flush(false);
                    self.open_store(AfterOpen::Start {
                        reply: Some((reply, from)),
                    });
                } else {
                    self.out.push(Command::Reply {
                        to: reply,
                        answer: Ok(from),
                    });
                }
            }
            AfterStop::Hold { reply, reason } => self.held(reply, reason),
            AfterStop::Exit { reason } => {
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
                self.flush(false);
                self.publish(false);
                self.exit(false);
            }
            AfterStop::Fail(f) => {
                self.failed(Component::Supervisor, "Failed", f.clone());
                if let Ok(Some(t)) = self.core.handle(SupervisorInput::Stop {
                    reason: format!("supervisor failed: {f}"),
                }) {
                    self.transition(t);
                }
                self.flush(true);
                self.publish(false);
                self.exit(true);
            }
        }
        Ok(())
    }

    fn resume(&mut self, reason: String, reply: ReplyId) -> Result<(), Failure> {
        if let Phase::Held { reason: by } = &self.phase {
            let answer = Err(format!(
                "nothing to resume now: the replica is held by {by} (it restarts when released)"
            ));
            self.answer(reply, answer);
            return Ok(());
        }
        if self.draining() {
            self.out.push(Command::Reply {
                to: reply,
                answer: Err(
                    "nothing to resume now: a recovery is under way (ask again once it ends)"
                        .into(),
                ),
            });
            return Ok(());
        }
        let from = self.core.state().to_string();
        if self.stopping.is_some() || !self.core.can_resume() {
            let answer = Err(format!(
                "nothing to resume: the replica is {from}{}",
                if self.core.can_resume() {
                    ", stopping"
                } else {
                    " (only a block of this replica's storage or source resumes: not a divergence, not a rejected segment)"
                }
            ));
            self.out.push(Command::Reply { to: reply, answer });
            return Ok(());
        }
        // Recovery, as after an Applier failure, asked for and recorded:
        // the pipeline restarts from the applied position.
        self.drive(SupervisorInput::Resume { reason })?;
        self.flush(false);
        self.publish(true);
        self.stop_pipeline(AfterStop::Resume { reply, from });
        Ok(())
    }
}

mod hold;
mod report;

#[cfg(test)]
mod tests;
