//! The WAL Applier's thread: applies each validated segment in one
//! transaction with its position (spec 5.4; W1, W2).

use super::events::{send, Event, ToApply};
use super::{ApplyStorage, Failure};
use crate::applier::{Applier, ApplierInput, ApplierOutput, ApplierState};
use crate::code::FailureCode;
use crate::wal::ChainPosition;
use std::sync::mpsc::{Receiver as Rx, Sender};

pub(super) fn run_applier(
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
                FailureCode::Protocol,
                format!("unexpected applier output {other:?}"),
            )),
            Err(e) => Err(Failure::new(FailureCode::Protocol, e.to_string())),
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
                        Failure::new(
                            FailureCode::Protocol,
                            format!("unexpected applier output {other:?}"),
                        )
                        .at(range.0, range.1),
                    ),
                );
                return;
            }
            Err(e) => {
                send(
                    &events,
                    Event::ApplierFailed(
                        Failure::new(FailureCode::Protocol, e.to_string()).at(range.0, range.1),
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
