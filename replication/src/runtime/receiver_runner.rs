//! The WAL Receiver's thread: fetches from the source, persists, passes
//! on (spec 5.2; rules R1, R2). Decisions are the Receiver core's.

use super::events::{send, Delivery, Event, ReceivedSegment};
use super::{Config, Failure, StopSignal, WalSource, WalStorage};
use crate::code::FailureCode;
use crate::receiver::{Receiver, ReceiverInput, ReceiverOutput};
use crate::wal::CommitId;
use std::sync::mpsc::{Sender, SyncSender};

#[allow(clippy::too_many_arguments)] // one runner, its ports and channels
pub(super) fn run_receiver(
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
            Err(f) if f.code == FailureCode::WalTruncated => {
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
                let transient = f.code == FailureCode::SourceUnavailable;
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
        let (caught_up, source_head, range, mut outputs) = match delivery {
            Delivery::Segment(fetched) => (
                fetched.source_head == fetched.last,
                fetched.source_head.max(fetched.last),
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
                    last,
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
                            source_head,
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
                            Failure::new(FailureCode::OutOfOrder, reason).at(range.0, range.1),
                        ),
                    );
                }
            }
        }
    };
    send(&events, Event::ReceiverExited(exit));
    source
}
