//! The engine's holds (see [`super`]): `aerodb verify` holds a running
//! replica, the pipeline stops and the hold is recorded; its release
//! re-opens the store and restarts the pipeline through Recovering.

use super::{AfterOpen, AfterStop, Command, Phase, ReplyId, SupervisorEngine};
use crate::runtime::{Component, Failure, StoredState};
use crate::supervisor::SupervisorInput;

/// The pipeline's components, whose state a hold replaces.
const PIPELINE: [Component; 3] = [
    Component::Receiver,
    Component::Validator,
    Component::Applier,
];

impl SupervisorEngine {
    /// Answers `reply` with `answer` now.
    pub(super) fn answer(&mut self, reply: ReplyId, answer: Result<String, String>) {
        self.out.push(Command::Reply { to: reply, answer });
    }

    pub(super) fn hold(&mut self, reason: String, reply: ReplyId) -> Result<(), Failure> {
        let refused = match &self.phase {
            Phase::Held { reason: by } => Some(format!("the replica is already held by {by}")),
            _ if self.stopping.is_some() => Some("the replica is stopping".into()),
            Phase::Running => None,
            _ => Some("a recovery or restart is under way (ask again once it ends)".into()),
        };
        if let Some(why) = refused {
            self.answer(reply, Err(format!("not held: {why}")));
            return Ok(());
        }
        // What the pipeline reports while it stops is recorded; then the
        // hold (`AfterStop::Hold`).
        self.flush(false);
        self.stop_pipeline(AfterStop::Hold { reply, reason });
        Ok(())
    }

    pub(super) fn release(&mut self, reply: ReplyId) -> Result<(), Failure> {
        match &self.phase {
            Phase::Held { reason } => {
                let reason = reason.clone();
                self.open_store(AfterOpen::Release { reply, reason });
            }
            _ => self.answer(reply, Err("the replica is not held".into())),
        }
        Ok(())
    }

    /// [`AfterStop::Hold`]: the pipeline has stopped; the hold is
    /// recorded and answered, unless a stop came meanwhile.
    pub(super) fn held(&mut self, reply: ReplyId, reason: String) {
        if self.stopping.is_some() {
            self.answer(
                reply,
                Err("the replica is stopping; nothing is held".into()),
            );
            return;
        }
        let at = self.applied.commit_id;
        let held = format!("Held by {reason} (applied commit {at})");
        for c in PIPELINE {
            self.set_state(c, &held);
        }
        self.status(Component::Supervisor).last_transition = Some(format!(
            "held by {reason} at applied commit {at}: nothing is received or applied until it releases"
        ));
        self.record_components();
        self.flush(false);
        self.publish(true);
        self.phase = Phase::Held { reason };
        self.answer(reply, Ok(format!("held at applied commit {at}")));
    }

    /// [`AfterOpen::Release`]: the store is open again; the pipeline
    /// restarts from what it holds, recorded, and the release is answered.
    pub(super) fn released(
        &mut self,
        stored: &StoredState,
        reply: ReplyId,
        reason: String,
    ) -> Result<(), Failure> {
        let at = stored.applied.commit_id;
        self.core
            .restart_after_hold(stored.applied, stored.received);
        self.start_pipeline(stored);
        // Recorded as a transition (with where the replica stands now):
        // recovery re-validates what is stored.
        self.drive(SupervisorInput::Released {
            reason: reason.clone(),
        })?;
        let released = format!("released by {reason} at applied commit {at}");
        for c in PIPELINE.into_iter().chain([Component::Supervisor]) {
            self.status(c).last_transition = Some(released.clone());
        }
        self.record_components();
        self.flush(false);
        self.publish(true);
        self.answer(reply, Ok(released));
        Ok(())
    }
}
