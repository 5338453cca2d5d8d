//! The WAL Validator's thread: re-validates what recovery finds stored,
//! then validates each received segment (spec 5.3; V1, V2).

use super::events::{send, Event, ReceivedSegment, ToApply};
use super::{Failure, SegmentReader};
use crate::code::FailureCode;
use crate::validator::{Validator, ValidatorInput, ValidatorOutput, ValidatorState};
use crate::wal::{ChainPosition, CommitId};
use std::sync::mpsc::{Receiver as Rx, Sender, SyncSender};

pub(super) fn run_validator(
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
    let mut validate = |reader: &mut dyn SegmentReader,
                        item: ReceivedSegment,
                        stored_copy: bool| {
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
                    Event::ValidatorFailed(Failure::new(FailureCode::Blocked, blocked.to_string())),
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
                    Event::ValidatorFailed(Failure::new(FailureCode::TornState,
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
