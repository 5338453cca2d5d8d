//! The engine's handling of the runners' reports (see [`super`]).

use super::{AfterStop, Phase, SupervisorEngine};
use crate::runtime::events::Event;
use crate::runtime::{Component, Failure, StoreOp};
use crate::state::{GlobalState, SegmentState};
use crate::supervisor::SupervisorInput;

impl SupervisorEngine {
    /// Handles one runner report.
    pub(super) fn report(&mut self, event: Event) -> Result<(), Failure> {
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
            Event::ReceiverFailed(f) if self.draining() => {
                self.failed(Component::Receiver, "Failed", f);
            }
            Event::ReceiverFailed(f) => {
                let (code, reason) = (f.code, f.to_string());
                self.failed(Component::Receiver, "Failed", f);
                self.drive(SupervisorInput::ReceiverStopped { code, reason })?;
            }
            Event::ReceiverResumed { source, next }
                if matches!(self.phase, Phase::Stopping(AfterStop::Discard { .. })) =>
            {
                // The pipeline is being stopped to discard a damaged stored
                // segment, decided in the Receiver's block: the discard's
                // own transition leaves the block, and the restarted
                // Receiver asks the source again. Driving the resume here
                // moved the state on first, and the discard then found
                // itself illegal (the Supervisor went down; seen under load
                // in CI).
                self.status(Component::Receiver).last_transition = Some(format!(
                    "{source} answers again (next commit {next}) while the pipeline stops"
                ));
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
            Event::ValidatorStoredRejected(r) if self.draining() => {
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
                self.flush(false);
                self.publish(true);
                self.stop_pipeline(AfterStop::Discard { range, reason });
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
                let applied = self.applied.commit_id;
                self.set_state(
                    Component::Applier,
                    &format!(
                        "Holding (segment {first}..={last} ends inside a transaction; applied commit {applied})"
                    ),
                );
            }
            Event::ApplierFailed(f) if self.draining() => {
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
                // goes on or gives up (`AfterStop::Recover`).
                self.flush(false);
                self.publish(true);
                self.stop_pipeline(AfterStop::Recover);
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
            // The runner turns a resume, a hold or a release into its
            // `Input` (it keeps the answer's channel); one reaching here
            // has nobody to answer.
            Event::Resume { .. } | Event::Hold { .. } | Event::Release { .. } => {}
        }
        Ok(())
    }
}
