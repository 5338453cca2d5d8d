//! The Supervisor engine's tests: each input's commands, asserted exactly
//! where a list holds no store record or view, and by kind plus the
//! records' content where it does (transition records carry the test
//! clock's time, 7).

use super::*;
use crate::code::FailureCode;
use crate::validator::Rejection;
use crate::wal::WalOffset;

const GEN: Generation = Generation(0xabc);

fn pos(c: u64) -> ChainPosition {
    ChainPosition {
        generation: GEN,
        commit_id: CommitId(c),
        wal_offset: WalOffset(c * 10),
        chain: c as u32,
    }
}

fn engine() -> SupervisorEngine {
    let components = Component::ALL
        .iter()
        .map(|c| ComponentStatus::new(*c, "Not started"))
        .collect();
    SupervisorEngine::new(GEN, "file primary.db".into(), components, || 7)
}

fn stored(applied: u64, received: u64) -> StoredState {
    StoredState {
        applied: pos(applied),
        received: CommitId(received),
        previous_state: Some("Disabled".into()),
        revalidate: 0,
        components: Vec::new(),
    }
}

fn kinds(commands: &[Command]) -> Vec<&'static str> {
    commands
        .iter()
        .map(|c| match c {
            Command::Record {
                best_effort: false, ..
            } => "Record",
            Command::Record {
                best_effort: true, ..
            } => "RecordBestEffort",
            Command::Publish(_) => "Publish",
            Command::OpenStore => "OpenStore",
            Command::StartPipeline { .. } => "StartPipeline",
            Command::StopPipeline => "StopPipeline",
            Command::Reply { .. } => "Reply",
            Command::Exit => "Exit",
        })
        .collect()
}

/// The transitions (`from -> to`) a list records.
fn transitions(commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Record { ops, .. } => Some(ops),
            _ => None,
        })
        .flatten()
        .filter_map(|op| match op {
            StoreOp::Transition(t) => Some(format!("{} -> {}", t.from, t.to)),
            _ => None,
        })
        .collect()
}

/// An engine whose pipeline runs, replica Ready read-safe at commit 3.
fn running() -> SupervisorEngine {
    let mut e = engine();
    assert_eq!(e.handle(Input::Start), vec![Command::OpenStore]);
    let c = e.handle(Input::StoreOpened(stored(3, 3)));
    assert_eq!(kinds(&c), ["StartPipeline", "Record", "Publish"]);
    e.handle(Input::Report(Event::ReceiverIdle));
    e.handle(Input::BatchEnd);
    assert_eq!(e.view(true).global.to_string(), "Ready (read-safe)");
    e
}

fn applier_failed(first: u64, last: u64) -> Event {
    let mut f = Failure::new(FailureCode::Storage, "disk I/O error");
    f.segment = Some((CommitId(first), CommitId(last)));
    Event::ApplierFailed(f)
}

#[test]
fn start_opens_the_store_then_starts_the_pipeline_from_what_it_holds() {
    let mut e = engine();
    assert_eq!(e.handle(Input::Start), vec![Command::OpenStore]);
    let c = e.handle(Input::StoreOpened(stored(3, 5)));
    assert_eq!(kinds(&c), ["StartPipeline", "Record", "Publish"]);
    assert_eq!(
        c[0],
        Command::StartPipeline {
            applied: pos(3),
            received: CommitId(5),
            refuse: None,
        }
    );
    assert_eq!(
        transitions(&c),
        ["Disabled -> Initializing", "Initializing -> Recovering"]
    );
    match &c[2] {
        Command::Publish(s) => {
            assert!(s.running);
            assert_eq!(s.applied, pos(3));
            assert_eq!(
                s.components[Component::Receiver.index()].state,
                "Receiving (next commit 6)"
            );
            assert_eq!(s.components[Component::StateStore.index()].state, "Open");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_source_of_another_generation_is_refused_by_the_receiver_it_starts() {
    let mut e = engine();
    e.handle(Input::Start);
    let mut s = stored(3, 3);
    s.applied.generation = Generation(0xdef);
    let c = e.handle(Input::StoreOpened(s));
    assert_eq!(
        c[0],
        Command::StartPipeline {
            applied: ChainPosition {
                generation: Generation(0xdef),
                ..pos(3)
            },
            received: CommitId(3),
            refuse: Some(Failure::new(
                FailureCode::ForeignGeneration,
                "file primary.db serves generation 0000000000000abc, the replica follows generation 0000000000000def (applied commit 3)"
            )),
        }
    );
}

#[test]
fn an_applier_failure_stops_the_pipeline_then_recovers_from_the_store() {
    let mut e = running();
    let c = e.handle(Input::Report(applier_failed(4, 6)));
    assert_eq!(kinds(&c), ["Record", "Publish", "StopPipeline"]);
    assert_eq!(transitions(&c), ["Ready (read-safe) -> Recovering"]);
    // What the stopping pipeline still reports is recorded, not acted on:
    // no second stop, no resume answered as done.
    assert_eq!(e.handle(Input::Report(applier_failed(4, 6))), vec![]);
    assert_eq!(
        e.handle(Input::Resume {
            reason: "operator".into(),
            reply: 9,
        }),
        vec![Command::Reply {
            to: 9,
            answer: Err(
                "nothing to resume now: a recovery is under way (ask again once it ends)".into()
            ),
        }]
    );
    let c = e.handle(Input::PipelineStopped { panicked: vec![] });
    assert_eq!(kinds(&c), ["Record", "OpenStore"]);
    assert_eq!(
        e.handle(Input::StoreOpened(stored(3, 3))),
        vec![Command::StartPipeline {
            applied: pos(3),
            received: CommitId(3),
            refuse: None,
        }]
    );
}

#[test]
fn the_same_segment_failing_again_gives_up_without_a_restart() {
    let mut e = running();
    e.handle(Input::Report(applier_failed(4, 6)));
    e.handle(Input::PipelineStopped { panicked: vec![] });
    e.handle(Input::StoreOpened(stored(3, 3)));
    let c = e.handle(Input::Report(applier_failed(4, 6)));
    assert_eq!(kinds(&c), ["Record", "Publish", "StopPipeline"]);
    let c = e.handle(Input::PipelineStopped { panicked: vec![] });
    assert_eq!(kinds(&c), Vec::<&str>::new(), "no OpenStore: X4 gives up");
    let c = e.handle(Input::BatchEnd);
    assert_eq!(kinds(&c), ["Record", "Publish"]);
    assert_eq!(
        transitions(&c),
        ["Recovering -> Ready (read-blocked: applying segment 4..=6 failed again after recovery: STORAGE: disk I/O error)"]
    );
}

#[test]
fn a_resume_outside_a_block_is_answered_with_why_and_changes_nothing() {
    let mut e = running();
    assert_eq!(
        e.handle(Input::Resume {
            reason: "operator".into(),
            reply: 1,
        }),
        vec![Command::Reply {
            to: 1,
            answer: Err("nothing to resume: the replica is Ready (read-safe) (only a block of this replica's storage or source resumes: not a divergence, not a rejected segment)".into()),
        }]
    );
}

#[test]
fn a_stop_ends_the_run_recorded_once_the_pipeline_has_stopped() {
    let mut e = running();
    assert_eq!(e.handle(Input::Report(Event::Stop("asked".into()))), vec![]);
    assert_eq!(e.handle(Input::BatchEnd), vec![Command::StopPipeline]);
    let c = e.handle(Input::PipelineStopped { panicked: vec![] });
    assert_eq!(kinds(&c), ["Record", "Publish", "Exit"]);
    assert_eq!(transitions(&c), ["Ready (read-safe) -> Disabled"]);
    match &c[1] {
        Command::Publish(s) => {
            assert!(!s.running);
            assert_eq!(s.components[Component::StateStore.index()].state, "Closed");
            assert_eq!(s.components[Component::Applier.index()].state, "Stopped");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_command_that_fails_fails_the_supervisor_and_ends_the_run() {
    let mut e = running();
    let f = Failure::new(FailureCode::StateStore, "database is locked");
    assert_eq!(
        e.handle(Input::Failed {
            failure: f.clone(),
            unrecorded: vec![],
        }),
        vec![Command::StopPipeline]
    );
    let c = e.handle(Input::PipelineStopped {
        panicked: vec![Component::Applier],
    });
    assert_eq!(kinds(&c), ["RecordBestEffort", "Publish", "Exit"]);
    match &c[1] {
        Command::Publish(s) => {
            assert!(!s.running);
            let sup = &s.components[Component::Supervisor.index()];
            assert_eq!(sup.last_error.as_ref(), Some(&f));
            let applier = &s.components[Component::Applier.index()];
            assert_eq!(
                applier.last_error.as_ref().map(|f| f.code),
                Some(FailureCode::Panic)
            );
        }
        other => panic!("{other:?}"),
    }
    // Nothing after: a best-effort record that fails is the end.
    assert_eq!(
        e.handle(Input::Failed {
            failure: f,
            unrecorded: vec![],
        }),
        vec![]
    );
}

/// Recovery's re-validation of stored segment 4..=6 fails.
fn damaged_stored_4_to_6() -> Rejection {
    Rejection {
        first: CommitId(4),
        last: CommitId(6),
        wal_offset: WalOffset(40),
        code: FailureCode::Corrupt,
        expected: None,
        actual: None,
        reason: "segment checksum mismatch".into(),
    }
}

#[test]
fn a_damaged_stored_segment_is_discarded_through_the_store_and_fetched_again() {
    // Recovery (received past applied) re-validates what is stored.
    let mut e = engine();
    e.handle(Input::Start);
    e.handle(Input::StoreOpened(stored(3, 6)));
    assert_eq!(e.view(true).global.to_string(), "Recovering");
    let c = e.handle(Input::Report(Event::ValidatorStoredRejected(
        damaged_stored_4_to_6(),
    )));
    assert_eq!(kinds(&c), ["Record", "Publish", "StopPipeline"]);
    let c = e.handle(Input::PipelineStopped { panicked: vec![] });
    assert_eq!(kinds(&c), ["OpenStore"]);
    let c = e.handle(Input::StoreOpened(stored(3, 6)));
    assert_eq!(kinds(&c), ["Record", "OpenStore"]);
    assert_eq!(
        transitions(&c),
        ["Recovering -> ReceivingWAL"],
        "the discard ends recovery, recorded with the segment named"
    );
    match &c[0] {
        Command::Record { ops, .. } => {
            assert!(
                ops.contains(&StoreOp::Discard { from: CommitId(4) }),
                "{ops:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.handle(Input::StoreOpened(stored(3, 3))),
        vec![Command::StartPipeline {
            applied: pos(3),
            received: CommitId(3),
            refuse: None,
        }]
    );
}

#[test]
fn a_source_answering_again_while_a_discard_stops_the_pipeline_moves_nothing() {
    // Recovery meets a damaged stored segment while the source is down
    // (a migration under way): the discard is decided in the Receiver's
    // block. The source answering again before the pipeline has stopped
    // used to drive the resume, so the discard found the state moved on
    // and was illegal (the Supervisor went down; seen under load).
    let mut e = engine();
    e.handle(Input::Start);
    e.handle(Input::StoreOpened(stored(3, 6)));
    e.handle(Input::Report(Event::ReceiverFailed(Failure::new(
        FailureCode::SourceUnavailable,
        "a migration under way",
    ))));
    assert!(
        e.view(true)
            .global
            .to_string()
            .contains("WAL receiver failed"),
        "{}",
        e.view(true).global
    );
    let c = e.handle(Input::Report(Event::ValidatorStoredRejected(
        damaged_stored_4_to_6(),
    )));
    assert_eq!(kinds(&c), ["Record", "Publish", "StopPipeline"]);
    let c = e.handle(Input::Report(Event::ReceiverResumed {
        source: "primary file p.db".into(),
        next: CommitId(7),
    }));
    assert!(transitions(&c).is_empty(), "{c:?}");
    let c = e.handle(Input::PipelineStopped { panicked: vec![] });
    assert_eq!(kinds(&c), ["OpenStore"]);
    let c = e.handle(Input::StoreOpened(stored(3, 6)));
    assert_eq!(kinds(&c), ["Record", "OpenStore"], "{c:?}");
    assert_eq!(transitions(&c).len(), 1, "{c:?}");
    assert!(
        transitions(&c)[0].ends_with("-> ReceivingWAL"),
        "{:?}",
        transitions(&c)
    );
}

#[test]
fn a_source_answering_again_just_before_recovery_meets_a_damaged_stored_segment() {
    // The other order of the race above (found in review): the source
    // fails and comes back during recovery, which moves the state on
    // while stored segments are still re-read; then one of them is found
    // damaged. The discard is legal from there (it was refused, and the
    // Supervisor went down).
    let mut e = engine();
    e.handle(Input::Start);
    e.handle(Input::StoreOpened(stored(3, 6)));
    assert_eq!(e.view(true).global.to_string(), "Recovering");
    e.handle(Input::Report(Event::ReceiverFailed(Failure::new(
        FailureCode::SourceUnavailable,
        "a migration under way",
    ))));
    e.handle(Input::Report(Event::ReceiverResumed {
        source: "primary file p.db".into(),
        next: CommitId(7),
    }));
    let c = e.handle(Input::Report(Event::ValidatorStoredRejected(
        damaged_stored_4_to_6(),
    )));
    assert_eq!(kinds(&c), ["Record", "Publish", "StopPipeline"]);
    let c = e.handle(Input::PipelineStopped { panicked: vec![] });
    assert_eq!(kinds(&c), ["OpenStore"]);
    let c = e.handle(Input::StoreOpened(stored(3, 6)));
    assert!(
        !matches!(e.phase, Phase::Stopping(AfterStop::Fail(_))),
        "the Supervisor failed: {:?}",
        e.view(true).components[Component::Supervisor.index()].last_error
    );
    assert_eq!(kinds(&c), ["Record", "OpenStore"], "{c:?}");
}

#[test]
fn a_failure_while_the_pipeline_stops_ends_the_run_once() {
    let mut e = running();
    e.handle(Input::Report(applier_failed(4, 6)));
    // Recording what the stopping pipeline reported fails: the run ends
    // (the pipeline is being stopped already; a second stop is immediate).
    let f = Failure::new(FailureCode::StateStore, "disk full");
    assert_eq!(
        e.handle(Input::Failed {
            failure: f,
            unrecorded: vec![],
        }),
        vec![Command::StopPipeline]
    );
    let c = e.handle(Input::PipelineStopped { panicked: vec![] });
    assert_eq!(kinds(&c), ["RecordBestEffort", "Publish", "Exit"]);
    // The outer stop's end and anything after it change nothing.
    assert_eq!(
        e.handle(Input::PipelineStopped { panicked: vec![] }),
        vec![]
    );
    assert_eq!(e.handle(Input::BatchEnd), vec![]);
    assert_eq!(e.handle(Input::Report(applier_failed(4, 6))), vec![]);
}

#[test]
fn a_batch_records_what_is_pending_and_publishes_the_view() {
    let mut e = running();
    // Nothing pending: the view alone.
    let view = e.view(true);
    assert_eq!(e.handle(Input::BatchEnd), vec![Command::Publish(view)]);
    // A source head that grew is recorded with the batch.
    let persisted = Event::ReceiverPersisted {
        first: CommitId(4),
        last: CommitId(4),
        caught_up: false,
        source_head: CommitId(9),
    };
    let c = e.handle(Input::Report(persisted));
    assert_eq!(c, vec![]);
    let c = e.handle(Input::BatchEnd);
    assert_eq!(kinds(&c), ["Record", "Publish"]);
    match &c[0] {
        Command::Record { ops, best_effort } => {
            assert!(!best_effort);
            assert_eq!(ops[0], StoreOp::SourceHead { head: CommitId(9) });
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c[1], Command::Publish(e.view(true)));
}

#[test]
fn a_stop_whose_record_fails_still_ends_the_run() {
    let mut e = running();
    e.handle(Input::Report(Event::Stop("asked".into())));
    assert_eq!(e.handle(Input::BatchEnd), vec![Command::StopPipeline]);
    let c = e.handle(Input::PipelineStopped { panicked: vec![] });
    assert_eq!(kinds(&c), ["Record", "Publish", "Exit"]);
    let Command::Record { ops, .. } = &c[0] else {
        panic!("{c:?}")
    };
    // The record fails: the runner drops the Publish and the Exit.
    let c = e.handle(Input::Failed {
        failure: Failure::new(FailureCode::DiskFull, "database or disk is full"),
        unrecorded: ops.clone(),
    });
    assert_eq!(kinds(&c), ["RecordBestEffort", "Publish", "Exit"]);
    assert!(
        transitions(&c).contains(&"Ready (read-safe) -> Disabled".to_string()),
        "the stop's ops are tried again: {:?}",
        transitions(&c)
    );
    match &c[1] {
        Command::Publish(v) => {
            assert!(!v.running);
            let sup = v.component(Component::Supervisor);
            assert_eq!(
                sup.last_error.as_ref().map(|f| f.code),
                Some(FailureCode::DiskFull)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pipeline_that_cannot_start_still_records_the_start() {
    let mut e = engine();
    e.handle(Input::Start);
    let c = e.handle(Input::StoreOpened(stored(3, 3)));
    assert_eq!(kinds(&c), ["StartPipeline", "Record", "Publish"]);
    let Command::Record { ops, .. } = &c[1] else {
        panic!("{c:?}")
    };
    // StartPipeline fails: its list's record comes back unrecorded.
    let f = Failure::new(FailureCode::Storage, "unable to open database file");
    assert_eq!(
        e.handle(Input::Failed {
            failure: f,
            unrecorded: ops.clone(),
        }),
        vec![Command::StopPipeline]
    );
    let c = e.handle(Input::PipelineStopped { panicked: vec![] });
    assert_eq!(kinds(&c), ["RecordBestEffort", "Publish", "Exit"]);
    assert_eq!(
        transitions(&c),
        [
            "Disabled -> Initializing",
            "Initializing -> ReceivingWAL",
            "ReceivingWAL -> Disabled"
        ],
        "the start is recorded before the failure that ended it"
    );
}

fn hold(e: &mut SupervisorEngine, reply: ReplyId) -> Vec<Command> {
    e.handle(Input::Hold {
        reason: "aerodb verify (pid 9)".into(),
        reply,
    })
}

fn published(c: &[Command]) -> &View {
    c.iter()
        .find_map(|c| match c {
            Command::Publish(v) => Some(v),
            _ => None,
        })
        .expect("a view is published")
}

#[test]
fn a_hold_stops_the_pipeline_records_it_and_answers_then_a_release_restarts_from_the_store() {
    let mut e = running();
    assert_eq!(kinds(&hold(&mut e, 1)), ["StopPipeline"]);
    // The stopping pipeline applied what was queued: commit 5.
    e.handle(Input::Report(Event::ApplierApplied {
        first: CommitId(4),
        last: CommitId(5),
        end: pos(5),
    }));
    let c = e.handle(Input::PipelineStopped { panicked: vec![] });
    assert_eq!(kinds(&c), ["Record", "Publish", "Reply"]);
    assert_eq!(
        transitions(&c),
        Vec::<String>::new(),
        "no global transition"
    );
    let view = published(&c);
    assert!(view.running);
    assert_eq!(
        view.components[Component::Applier.index()].state,
        "Held by aerodb verify (pid 9) (applied commit 5)"
    );
    // The hold is recorded: every component's row is written.
    let Command::Record { ops, .. } = &c[0] else {
        panic!("{c:?}")
    };
    assert!(ops.iter().any(|op| matches!(op, StoreOp::Component(s)
        if s.component == Component::Receiver && s.state.starts_with("Held by aerodb verify"))));
    assert_eq!(
        c[2],
        Command::Reply {
            to: 1,
            answer: Ok("held at applied commit 5".into())
        }
    );
    // Held: nothing else is held, resumed or published on a batch end.
    assert_eq!(
        hold(&mut e, 2),
        vec![Command::Reply {
            to: 2,
            answer: Err("not held: the replica is already held by aerodb verify (pid 9)".into())
        }]
    );
    assert_eq!(
        kinds(&e.handle(Input::Resume {
            reason: "operator".into(),
            reply: 3
        })),
        ["Reply"]
    );
    assert_eq!(e.handle(Input::BatchEnd), vec![]);
    // The holder moved the replica to commit 9; the release restarts there.
    assert_eq!(
        e.handle(Input::Release { reply: 4 }),
        vec![Command::OpenStore]
    );
    let c = e.handle(Input::StoreOpened(stored(9, 9)));
    assert_eq!(kinds(&c), ["StartPipeline", "Record", "Publish", "Reply"]);
    assert_eq!(transitions(&c), ["Ready (read-safe) -> Recovering"]);
    let Command::Record { ops, .. } = &c[1] else {
        panic!("{c:?}")
    };
    assert!(ops.iter().any(|op| matches!(op, StoreOp::Transition(t)
        if t.progress.applied == CommitId(9) && t.progress.received == CommitId(9)
            && t.reason == "released by aerodb verify (pid 9): the pipeline restarted at applied commit 9; re-validating what is stored")));
    assert_eq!(
        c[0],
        Command::StartPipeline {
            applied: pos(9),
            received: CommitId(9),
            refuse: None,
        }
    );
    assert_eq!(published(&c).applied, pos(9));
    assert_eq!(
        c[3],
        Command::Reply {
            to: 4,
            answer: Ok("released by aerodb verify (pid 9) at applied commit 9".into())
        }
    );
    assert_eq!(e.core.progress().received, CommitId(9));
    // Running again once the Validator re-validated what is stored: the
    // next commits are taken as usual.
    e.handle(Input::Report(Event::ValidatorRecovered {
        revalidated: 0,
        through: CommitId(9),
    }));
    e.handle(Input::Report(Event::ReceiverPersisted {
        first: CommitId(10),
        last: CommitId(10),
        caught_up: true,
        source_head: CommitId(10),
    }));
    e.handle(Input::Report(Event::ApplierApplied {
        first: CommitId(10),
        last: CommitId(10),
        end: pos(10),
    }));
    e.handle(Input::BatchEnd);
    assert_eq!(e.view(true).applied, pos(10));
    assert_eq!(
        e.handle(Input::Release { reply: 5 }),
        vec![Command::Reply {
            to: 5,
            answer: Err("the replica is not held".into())
        }]
    );
}

#[test]
fn a_stop_while_held_ends_the_run_and_a_hold_while_stopping_is_refused() {
    let mut e = running();
    hold(&mut e, 1);
    e.handle(Input::PipelineStopped { panicked: vec![] });
    assert_eq!(e.handle(Input::Report(Event::Stop("asked".into()))), vec![]);
    assert_eq!(e.handle(Input::BatchEnd), vec![Command::StopPipeline]);
    let c = e.handle(Input::PipelineStopped { panicked: vec![] });
    assert_eq!(kinds(&c), ["Record", "Publish", "Exit"]);
    assert_eq!(transitions(&c), ["Ready (read-safe) -> Disabled"]);

    // A stop asked while the hold's stop is under way: the hold is refused.
    let mut e = running();
    hold(&mut e, 1);
    e.handle(Input::Report(Event::Stop("asked".into())));
    let c = e.handle(Input::PipelineStopped { panicked: vec![] });
    assert_eq!(
        c,
        vec![Command::Reply {
            to: 1,
            answer: Err("the replica is stopping; nothing is held".into())
        }]
    );
    assert_eq!(e.handle(Input::BatchEnd), vec![Command::StopPipeline]);
    // And a hold during a recovery is refused with why.
    let mut e = running();
    e.handle(Input::Report(applier_failed(4, 4)));
    e.handle(Input::BatchEnd);
    assert_eq!(
        hold(&mut e, 2),
        vec![Command::Reply {
            to: 2,
            answer: Err(
                "not held: a recovery or restart is under way (ask again once it ends)".into()
            )
        }]
    );
}
