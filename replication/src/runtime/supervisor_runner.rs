//! The Replica Supervisor's thread: handles every runner's event, drives
//! the Supervisor core, records what it decides, starts and stops the
//! pipeline, publishes the view (spec 5.1; S1, S2, F1-F6).

use super::applier_runner::run_applier;
use super::events::{guarded, send, Event};
use super::receiver_runner::run_receiver;
use super::validator_runner::run_validator;
use super::view::Published;
use super::{
    Component, ComponentStatus, Config, Failure, Snapshot, StateStore, StopSignal, Storage,
    StoreOp, StoredState, TransitionRecord, WalSource,
};
use crate::code::FailureCode;
use crate::state::{GlobalState, SegmentState};
use crate::supervisor::{Progress, Supervisor, SupervisorInput, Transition};
use crate::wal::{ChainPosition, CommitId, Generation};
use std::sync::mpsc::{Receiver as Rx, Sender};
use std::sync::{mpsc, Arc};
use std::thread;
use std::thread::JoinHandle;

pub(super) struct Pipeline {
    pub(super) stop: Sender<()>,
    /// The source back (`None` once its thread panicked).
    pub(super) receiver: JoinHandle<Option<Box<dyn WalSource>>>,
    pub(super) validator: JoinHandle<Option<()>>,
    pub(super) applier: JoinHandle<Option<()>>,
}

pub(super) struct SupervisorRunner {
    pub(super) core: Supervisor,
    pub(super) storage: Box<dyn Storage>,
    pub(super) store: Option<Box<dyn StateStore>>,
    pub(super) source: Option<Box<dyn WalSource>>,
    pub(super) config: Config,
    pub(super) pipeline: Option<Pipeline>,
    pub(super) events_tx: Sender<Event>,
    pub(super) events: Rx<Event>,
    pub(super) published: Arc<Published>,
    pub(super) components: Vec<ComponentStatus>,
    pub(super) applied: ChainPosition,
    pub(super) last_transition: Option<TransitionRecord>,
    pub(super) pending: Vec<StoreOp>,
    /// The generation the source serves.
    pub(super) source_generation: Generation,
    /// The newest head the source advertised (recorded when it grows).
    pub(super) source_head: Option<CommitId>,
    /// Handling what a stopping pipeline reported (its failures are
    /// recorded, not acted on: one restart per stop).
    pub(super) draining: bool,
    pub(super) stopping: Option<String>,
}

impl SupervisorRunner {
    pub(super) fn status(&mut self, c: Component) -> &mut ComponentStatus {
        &mut self.components[c.index()]
    }

    /// Sets a component's state after a success: the transition is its last
    /// successful one and replaces its last error.
    pub(super) fn succeeded(&mut self, c: Component, state: &str, transition: String) {
        let s = self.status(c);
        let had_error = s.last_error.take().is_some() || s.blocking_reason.take().is_some();
        s.state = state.into();
        s.last_transition = Some(transition);
        if had_error {
            let s = s.clone();
            self.pending.push(StoreOp::Component(s));
        }
    }

    pub(super) fn failed(&mut self, c: Component, state: &str, f: Failure) {
        let s = self.status(c);
        s.state = state.into();
        s.blocking_reason = Some(f.reason.clone());
        s.last_error = Some(f);
        let s = s.clone();
        self.pending.push(StoreOp::Component(s));
    }

    pub(super) fn set_state(&mut self, c: Component, state: &str) {
        self.status(c).state = state.into();
    }

    /// Records a global transition (logged by the core with `tracing`).
    pub(super) fn transition(&mut self, t: Transition) {
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
    pub(super) fn drive(&mut self, input: SupervisorInput) -> Result<(), Failure> {
        match self.core.handle(input) {
            Ok(Some(t)) => {
                self.transition(t);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(Failure::new(FailureCode::IllegalTransition, e.to_string())),
        }
    }

    pub(super) fn flush(&mut self) -> Result<(), Failure> {
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
                        FailureCode::StateStore,
                        "the state store is not open; transitions cannot be recorded",
                    ))
                }
            }
        }
        Ok(())
    }

    pub(super) fn publish(&self, running: bool) {
        let snapshot = Arc::new(Snapshot {
            global: self.core.state().clone(),
            progress: self.core.progress(),
            applied: self.applied,
            components: self.components.clone(),
            last_transition: self.last_transition.clone(),
            running,
            source_head: self.source_head,
        });
        *self.published.lock() = snapshot;
        self.published.changed.notify_all();
    }

    /// Opens the store (its crash recovery) and returns what it holds.
    pub(super) fn open_store(&mut self) -> Result<StoredState, Failure> {
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
    pub(super) fn start_pipeline(&mut self, stored: &StoredState) -> Result<(), Failure> {
        let source = self.source.take().ok_or_else(|| {
            Failure::new(
                FailureCode::Source,
                "the WAL source was lost by a previous run",
            )
        })?;
        let wal_storage = self.storage.wal_storage()?;
        let reader = self.storage.segment_reader()?;
        let apply = self.storage.apply_storage()?;
        let (stop_tx, stop_rx) = mpsc::channel();
        let (seg_tx, seg_rx) = mpsc::sync_channel(self.config.queue_depth);
        let (val_tx, val_rx) = mpsc::sync_channel(self.config.queue_depth);
        let spawn_err = |e: std::io::Error| {
            Failure::new(FailureCode::Thread, format!("spawning a thread: {e}"))
        };
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
            Failure::new(FailureCode::ForeignGeneration,
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
    pub(super) fn stop_pipeline(&mut self) -> Result<(), Failure> {
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
                        Failure::new(FailureCode::Panic, "the receiver thread panicked"),
                    );
                }
            }
            if v.is_err() {
                self.failed(
                    Component::Validator,
                    "Failed",
                    Failure::new(FailureCode::Panic, "the validator thread panicked"),
                );
            }
            if a.is_err() {
                self.failed(
                    Component::Applier,
                    "Failed",
                    Failure::new(FailureCode::Panic, "the applier thread panicked"),
                );
            }
            // What the stopped pipeline reported is handled now; a
            // failure in it that would restart the pipeline is only
            // recorded (`draining`): the handler that stopped it restarts
            // once, and a cause still there is met again by the new run.
            let outer = std::mem::replace(&mut self.draining, true);
            let drained = (|| {
                while let Ok(e) = self.events.try_recv() {
                    self.handle(e)?;
                }
                Ok(())
            })();
            self.draining = outer;
            drained?;
        }
        Ok(())
    }

    /// Handles one event.
    pub(super) fn handle(&mut self, event: Event) -> Result<(), Failure> {
        match event {
            Event::ReceiverPersisted {
                first,
                last,
                caught_up,
                source_head,
            } => {
                if Some(source_head) > self.source_head {
                    // Recorded with the batch, for `replica_state`'s lag.
                    self.source_head = Some(source_head);
                    self.pending.push(StoreOp::SourceHead { head: source_head });
                }
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
            // The stopping pipeline's Receiver failed: recorded, not acted
            // on (the new run meets the cause again if it is still there;
            // acting on it here would block a run that is healthy).
            Event::ReceiverFailed(f) if self.draining => {
                self.failed(Component::Receiver, "Failed", f);
            }
            Event::ReceiverFailed(f) => {
                let (code, reason) = (f.code, f.to_string());
                self.failed(Component::Receiver, "Failed", f);
                self.drive(SupervisorInput::ReceiverStopped { code, reason })?;
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
            Event::ValidatorStoredRejected(r) if self.draining => {
                let failure = Failure::from_rejection(&r);
                self.failed(Component::Validator, "Stopped", failure);
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
            Event::ApplierFailed(f) if self.draining => {
                self.failed(Component::Applier, "Failed", f);
            }
            Event::ApplierFailed(f) => {
                let range = f.segment.unwrap_or_default();
                let (code, reason) = (f.code, f.to_string());
                self.failed(Component::Applier, "Failed", f);
                self.drive(SupervisorInput::ApplierFailed {
                    range,
                    code,
                    reason,
                })?;
                // Recovery: stop the pipeline, then the core says whether it
                // goes on (re-open the store, re-validate from the applied
                // position) or gives up (the same segment failed again: X4).
                self.flush()?;
                self.publish(true);
                self.stop_pipeline()?;
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
            Event::Resume { reply, .. } if self.draining => {
                let _ = reply.send(Err(
                    "nothing to resume now: a recovery is under way (ask again once it ends)"
                        .into(),
                ));
            }
            Event::Resume { reason, reply } => {
                let from = self.core.state().to_string();
                if self.stopping.is_some() || !self.core.can_resume() {
                    let _ = reply.send(Err(format!(
                        "nothing to resume: the replica is {from}{}",
                        if self.core.can_resume() {
                            ", stopping"
                        } else {
                            " (only a block of this replica's storage or source resumes: not a divergence, not a rejected segment)"
                        }
                    )));
                    return Ok(());
                }
                // Recovery, as after an Applier failure, asked for and
                // recorded: the pipeline restarts from the applied position.
                self.drive(SupervisorInput::Resume { reason })?;
                self.flush()?;
                self.publish(true);
                self.stop_pipeline()?;
                if self.stopping.is_none() {
                    self.flush()?;
                    let stored = self.open_store()?;
                    self.start_pipeline(&stored)?;
                }
                let _ = reply.send(Ok(from));
            }
        }
        Ok(())
    }

    pub(super) fn run(mut self) {
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

    pub(super) fn run_inner(&mut self) -> Result<(), Failure> {
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
            .map_err(|e| Failure::new(FailureCode::IllegalTransition, e.to_string()))?;
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

    pub(super) fn record_components(&mut self) {
        for c in self.components.clone() {
            self.pending.push(StoreOp::Component(c));
        }
    }
}
