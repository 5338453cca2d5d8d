//! The Replica Supervisor's thread: carries out what its engine
//! (`engine.rs`) decides and reports back what became of it. It owns the
//! IO: the state store, the pipeline's threads, the source between runs,
//! the published view and the answers to resume requests (spec 5.1; S1,
//! S2, F1-F6). It decides nothing.

use super::applier_runner::run_applier;
use super::engine::{Command, Input, ReplyId, SupervisorEngine};
use super::events::{guarded, send, Event};
use super::receiver_runner::run_receiver;
use super::validator_runner::run_validator;
use super::view::Published;
use super::StoreOp;
use super::{Component, Config, Failure, StateStore, StopSignal, Storage, StoredState, WalSource};
use crate::code::FailureCode;
use crate::wal::{ChainPosition, CommitId};
use std::collections::HashMap;
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
    pub(super) engine: SupervisorEngine,
    pub(super) storage: Box<dyn Storage>,
    pub(super) store: Option<Box<dyn StateStore>>,
    pub(super) source: Option<Box<dyn WalSource>>,
    pub(super) config: Config,
    pub(super) pipeline: Option<Pipeline>,
    pub(super) events_tx: Sender<Event>,
    pub(super) events: Rx<Event>,
    pub(super) published: Arc<Published>,
    /// Where the answers to resume requests go.
    pub(super) replies: HashMap<ReplyId, Sender<Result<String, String>>>,
    pub(super) next_reply: ReplyId,
    /// The engine said [`Command::Exit`].
    pub(super) exited: bool,
}

impl SupervisorRunner {
    pub(super) fn run(mut self) {
        self.input(Input::Start);
        while !self.exited {
            let Ok(event) = self.events.recv() else { break };
            self.report(event);
            // Record everything already queued in one transaction.
            while !self.exited && self.engine.pending_len() <= 256 {
                match self.events.try_recv() {
                    Ok(event) => self.report(event),
                    Err(_) => break,
                }
            }
            if !self.exited {
                self.input(Input::BatchEnd);
            }
        }
        if !self.exited {
            // Every sender is gone (cannot happen while this holds one).
            let s = self.engine.view(false);
            self.publish(s);
        }
    }

    /// A runner's report (a resume's answer channel is kept here).
    fn report(&mut self, event: Event) {
        match event {
            Event::Resume { reason, reply } => {
                let id = self.keep_reply(reply);
                self.input(Input::Resume { reason, reply: id });
            }
            Event::Hold { reason, reply } => {
                let id = self.keep_reply(reply);
                self.input(Input::Hold { reason, reply: id });
            }
            Event::Release { reply } => {
                let id = self.keep_reply(reply);
                self.input(Input::Release { reply: id });
            }
            event => self.input(Input::Report(event)),
        }
    }

    /// Keeps an answer's channel until the engine answers.
    fn keep_reply(&mut self, reply: Sender<Result<String, String>>) -> ReplyId {
        let id = self.next_reply;
        self.next_reply += 1;
        self.replies.insert(id, reply);
        id
    }

    fn input(&mut self, input: Input) {
        let commands = self.engine.handle(input);
        self.execute(commands);
    }

    /// Carries out `commands` in order; one that fails ends the list and
    /// is reported with the store ops left unrecorded (the engine fails the
    /// Supervisor: F4).
    fn execute(&mut self, commands: Vec<Command>) {
        let mut commands = commands.into_iter();
        while let Some(command) = commands.next() {
            if self.exited {
                return;
            }
            if let Err((failure, mut unrecorded)) = self.execute_one(command) {
                for c in commands {
                    if let Command::Record { ops, .. } = c {
                        unrecorded.extend(ops);
                    }
                }
                self.input(Input::Failed {
                    failure,
                    unrecorded,
                });
                return;
            }
        }
    }

    /// Carries out one command; on failure, the store ops it did not
    /// record (a failed record's own).
    fn execute_one(&mut self, command: Command) -> Result<(), (Failure, Vec<StoreOp>)> {
        let failed = |f| (f, Vec::new());
        match command {
            Command::Record { ops, best_effort } => match self.record(&ops) {
                Err(f) if !best_effort => Err((f, ops)),
                _ => Ok(()),
            },
            Command::Publish(snapshot) => {
                self.publish(snapshot);
                Ok(())
            }
            Command::OpenStore => {
                let stored = self.open_store().map_err(failed)?;
                self.input(Input::StoreOpened(stored));
                Ok(())
            }
            Command::StartPipeline {
                applied,
                received,
                refuse,
            } => self
                .start_pipeline(applied, received, refuse)
                .map_err(failed),
            Command::StopPipeline => {
                let panicked = self.stop_pipeline();
                self.input(Input::PipelineStopped { panicked });
                Ok(())
            }
            Command::Reply { to, answer } => {
                if let Some(reply) = self.replies.remove(&to) {
                    let _ = reply.send(answer);
                }
                Ok(())
            }
            Command::Exit => {
                self.exited = true;
                Ok(())
            }
        }
    }

    fn record(&mut self, ops: &[StoreOp]) -> Result<(), Failure> {
        match self.store.as_mut() {
            Some(store) => store.record(ops),
            None => Err(Failure::new(
                FailureCode::StateStore,
                "the state store is not open; transitions cannot be recorded",
            )),
        }
    }

    fn publish(&self, snapshot: crate::runtime::View) {
        *self.published.lock() = Arc::new(snapshot);
        self.published.changed.notify_all();
    }

    /// Opens the store (its crash recovery) and returns what it holds.
    fn open_store(&mut self) -> Result<StoredState, Failure> {
        let store = match self.store.as_mut() {
            Some(s) => s,
            None => self.store.insert(self.storage.state_store()?),
        };
        store.open()
    }

    /// Starts the pipeline threads from `applied` / `received`.
    fn start_pipeline(
        &mut self,
        applied: ChainPosition,
        received: CommitId,
        refuse: Option<Failure>,
    ) -> Result<(), Failure> {
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
        let (ev, config) = (self.events_tx.clone(), self.config.clone());
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
        Ok(())
    }

    /// Stops the pipeline threads (the Receiver stops receiving, the
    /// Validator and Applier finish what is queued), then hands what they
    /// reported on the way out to the engine. The components whose thread
    /// panicked past its guard.
    fn stop_pipeline(&mut self) -> Vec<Component> {
        let mut panicked = Vec::new();
        if let Some(p) = self.pipeline.take() {
            let _ = p.stop.send(());
            let joined = p.receiver.join();
            let v = p.validator.join();
            let a = p.applier.join();
            match joined {
                Ok(Some(source)) => self.source = Some(source),
                // Its panic was reported (and recorded) as its failure.
                Ok(None) => {}
                Err(_) => panicked.push(Component::Receiver),
            }
            if v.is_err() {
                panicked.push(Component::Validator);
            }
            if a.is_err() {
                panicked.push(Component::Applier);
            }
            while let Ok(e) = self.events.try_recv() {
                if self.exited {
                    break;
                }
                self.report(e);
            }
        }
        panicked
    }
}
