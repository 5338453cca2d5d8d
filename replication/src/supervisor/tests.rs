//! The Supervisor core's tests: each input's transition, asserted exactly.

use super::*;
use crate::wal::{Generation, WalOffset};

fn pos(c: u64) -> ChainPosition {
    ChainPosition {
        generation: Generation(1),
        commit_id: CommitId(c),
        wal_offset: WalOffset(c * 10),
        chain: c as u32,
    }
}

/// A supervisor started at applied commit `applied` with `received`
/// commits persisted (the `Started` input after `start`).
fn started(applied: u64, received: u64) -> Supervisor {
    let mut s = Supervisor::new();
    s.start().expect("legal");
    s.handle(SupervisorInput::Started {
        applied: pos(applied),
        received: CommitId(received),
    })
    .expect("legal");
    s
}

fn kinds(s: &mut Supervisor, inputs: Vec<SupervisorInput>) -> Vec<String> {
    inputs
        .into_iter()
        .filter_map(|i| s.handle(i).expect("legal"))
        .map(|t| t.to.to_string())
        .collect()
}

#[test]
fn normal_catch_up_moves_through_the_pipeline_states() {
    // M1, M2: explicit, checked transitions with reasons and progress.
    let mut s = Supervisor::new();
    assert_eq!(s.start().expect("legal").to, GlobalState::Initializing);
    let seen = kinds(
        &mut s,
        vec![
            SupervisorInput::Started {
                applied: pos(0),
                received: CommitId(0),
            },
            SupervisorInput::Received { last: CommitId(5) },
            SupervisorInput::Validated { last: CommitId(5) },
            SupervisorInput::Applied { end: pos(5) },
            SupervisorInput::CaughtUp,
        ],
    );
    assert_eq!(
        seen,
        vec![
            "ReceivingWAL",
            "ValidatingWAL",
            "ApplyingWAL",
            "ReceivingWAL",
            "Ready (read-safe)"
        ]
    );
    assert_eq!(
        s.progress(),
        Progress {
            received: CommitId(5),
            validated: CommitId(5),
            applied: CommitId(5)
        }
    );
}

#[test]
fn restart_with_received_unapplied_segments_recovers_first() {
    let mut s = Supervisor::new();
    s.start().expect("legal");
    let t = s
        .handle(SupervisorInput::Started {
            applied: pos(3),
            received: CommitId(9),
        })
        .expect("legal")
        .expect("moves");
    assert_eq!(t.to, GlobalState::Recovering);
    assert_eq!(
        t.reason,
        "commits 4..=9 were received but not applied before the restart; re-validating them"
    );
    let t = s
        .handle(SupervisorInput::Recovered)
        .expect("legal")
        .expect("moves");
    assert_eq!(t.to, GlobalState::ValidatingWal);
}

#[test]
fn failures_block_or_recover_explicitly() {
    // F1, F2 -> read-blocked with the reason; F3 -> Recovering; F4 -> Disabled.
    let mut s = started(0, 0);
    let t = s
        .handle(SupervisorInput::Rejected(Rejection {
            first: CommitId(1),
            last: CommitId(2),
            wal_offset: WalOffset(0),
            code: FailureCode::Gap,
            expected: Some("commit 1".into()),
            actual: Some("commit 3".into()),
            reason: "gap".into(),
        }))
        .expect("legal")
        .expect("moves");
    assert_eq!(
        t.to.to_string(),
        "Ready (read-blocked: segment 1..=2 at WAL offset 0 rejected: gap)"
    );
    // Later progress does not silently unblock.
    assert_eq!(
        s.handle(SupervisorInput::Received { last: CommitId(3) })
            .expect("legal"),
        None
    );

    let mut s = started(0, 0);
    s.handle(SupervisorInput::Received { last: CommitId(2) })
        .expect("legal");
    s.handle(SupervisorInput::Validated { last: CommitId(2) })
        .expect("legal");
    let t = s
        .handle(SupervisorInput::ApplierFailed {
            range: (CommitId(1), CommitId(2)),
            code: FailureCode::DiskFull,
            reason: "disk full".into(),
        })
        .expect("legal")
        .expect("moves");
    assert_eq!(t.to, GlobalState::Recovering);
    assert_eq!(t.reason, "applying segment 1..=2 failed: disk full");
    let t = s
        .handle(SupervisorInput::Stop {
            reason: "stopped by user".into(),
        })
        .expect("legal")
        .expect("moves");
    assert_eq!(t.to, GlobalState::Disabled);
}

#[test]
fn a_damaged_stored_segment_ends_recovery_by_fetching_it_again() {
    // Issue 11 item 5: recovery re-read a stored copy that fails
    // validation; the move names it and where fetching resumes, and
    // the progress forgets what was discarded.
    let mut s = started(5, 20);
    assert_eq!(s.state(), &GlobalState::Recovering);
    let t = s
        .handle(SupervisorInput::StoredSegmentDiscarded {
            range: (CommitId(11), CommitId(15)),
            reason: "CORRUPT: segment CRC32".into(),
        })
        .expect("legal")
        .expect("moves");
    assert_eq!(
        (t.from, t.to.clone()),
        (GlobalState::Recovering, GlobalState::ValidatingWal)
    );
    assert_eq!(
        t.reason,
        "segment 11..=15 as stored on this replica fails validation (CORRUPT: segment CRC32); it and everything received after it were discarded and are fetched again from the source from commit 11"
    );
    assert_eq!(
        t.progress,
        Progress {
            received: CommitId(10),
            validated: CommitId(5),
            applied: CommitId(5)
        }
    );
    // The source failing meanwhile (a migration under way) does not
    // stop the discard: it goes on from the Receiver's block.
    let mut b = started(5, 20);
    b.handle(SupervisorInput::ReceiverStopped {
        code: FailureCode::SourceUnavailable,
        reason: "SOURCE_UNAVAILABLE: migration".into(),
    })
    .expect("legal");
    let t = b
        .handle(SupervisorInput::StoredSegmentDiscarded {
            range: (CommitId(11), CommitId(15)),
            reason: "CORRUPT".into(),
        })
        .expect("legal from the Receiver's block")
        .expect("moves");
    assert_eq!(t.to, GlobalState::ValidatingWal);
    // The source coming back during recovery moves the state on while
    // stored segments are still re-read: a discard is legal from there.
    s.handle(SupervisorInput::StoredSegmentDiscarded {
        range: (CommitId(11), CommitId(15)),
        reason: "again".into(),
    })
    .expect("legal while running");
    assert_eq!(s.state(), &GlobalState::ValidatingWal);
    // Never from another block: a discard does not lift a rejection.
    let mut r = started(5, 20);
    r.handle(SupervisorInput::Rejected(Rejection {
        first: CommitId(6),
        last: CommitId(8),
        wal_offset: WalOffset(60),
        code: FailureCode::Corrupt,
        expected: None,
        actual: None,
        reason: "bad".into(),
    }))
    .expect("legal");
    assert!(replication_blocked(r.state()), "{}", r.state());
    let e = r
        .handle(SupervisorInput::StoredSegmentDiscarded {
            range: (CommitId(11), CommitId(15)),
            reason: "again".into(),
        })
        .expect_err("blocked by a rejection");
    assert!(matches!(e, IllegalTransition::NotInState { .. }), "{e}");
}

fn replication_blocked(s: &GlobalState) -> bool {
    matches!(
        s,
        GlobalState::Ready {
            read: ReadStatus::Blocked(_)
        }
    )
}

#[test]
fn an_operators_resume_lifts_only_a_resumable_block() {
    let blocked = |code: FailureCode| {
        let mut s = started(4, 4);
        s.handle(SupervisorInput::ReceiverStopped {
            code,
            reason: format!("{code}: test"),
        })
        .expect("legal");
        s
    };
    let mut s = blocked(FailureCode::DiskFull);
    assert!(s.can_resume());
    let t = s
        .handle(SupervisorInput::Resume {
            reason: "the operator".into(),
        })
        .expect("legal")
        .expect("moves");
    assert_eq!(t.to, GlobalState::Recovering);
    assert_eq!(
        t.reason,
        "resumed by the operator: re-validating from applied commit 4"
    );
    // A divergence never resumes; neither does a healthy replica.
    let mut s = blocked(FailureCode::ForeignGeneration);
    assert!(!s.can_resume());
    let e = s
        .handle(SupervisorInput::Resume {
            reason: "the operator".into(),
        })
        .expect_err("a divergence");
    assert!(matches!(e, IllegalTransition::NotInState { .. }), "{e}");
    let mut s = Supervisor::new();
    s.start().expect("legal");
    assert!(!s.can_resume());
}

#[test]
fn the_same_segment_failing_again_after_recovery_gives_up() {
    // X4, decided by the core: recovery goes on after a first failure,
    // gives up (read-blocked) when the same segment fails again, and a
    // segment applied in between resets it.
    let failed = |s: &mut Supervisor| {
        s.handle(SupervisorInput::ApplierFailed {
            range: (CommitId(3), CommitId(4)),
            code: FailureCode::DiskFull,
            reason: "DISK_FULL: full".into(),
        })
        .expect("legal")
    };
    let mut s = started(2, 2);
    let applying = |s: &mut Supervisor| {
        s.handle(SupervisorInput::Received { last: CommitId(4) })
            .expect("legal");
        s.handle(SupervisorInput::Validated { last: CommitId(4) })
            .expect("legal");
        assert_eq!(s.state(), &GlobalState::ApplyingWal);
    };
    applying(&mut s);
    assert_eq!(failed(&mut s).map(|t| t.to), Some(GlobalState::Recovering));
    assert_eq!(s.recovery_after_stop().expect("legal"), None, "recovers");
    s.handle(SupervisorInput::Recovered).expect("legal");
    applying(&mut s);
    assert_eq!(failed(&mut s).map(|t| t.to), Some(GlobalState::Recovering));
    let t = s.recovery_after_stop().expect("legal").expect("gives up");
    assert_eq!(
        t.to,
        GlobalState::Ready {
            read: ReadStatus::Blocked(BlockReason::ApplierFailed {
                first: CommitId(3),
                last: CommitId(4),
                code: FailureCode::DiskFull,
                reason: "DISK_FULL: full".into(),
            })
        }
    );
    assert!(
        t.reason
            .starts_with("recovery failed: applying segment 3..=4 failed again after recovery"),
        "{}",
        t.reason
    );
}

#[test]
fn applier_failure_recovers_through_revalidation() {
    // F3: Recovering, which only `Recovered` ends; then re-validation.
    let mut s = Supervisor::new();
    s.start().expect("legal");
    let _ = kinds(
        &mut s,
        vec![
            SupervisorInput::Started {
                applied: pos(0),
                received: CommitId(0),
            },
            SupervisorInput::Received { last: CommitId(2) },
            SupervisorInput::Validated { last: CommitId(2) },
            SupervisorInput::ApplierFailed {
                range: (CommitId(1), CommitId(2)),
                code: FailureCode::DiskFull,
                reason: "disk full".into(),
            },
        ],
    );
    assert_eq!(s.state(), &GlobalState::Recovering);
    assert_eq!(
        s.handle(SupervisorInput::Received { last: CommitId(4) })
            .expect("legal"),
        None
    );
    let t = s
        .handle(SupervisorInput::Recovered)
        .expect("legal")
        .expect("moves");
    assert_eq!(t.to, GlobalState::ValidatingWal);
    assert_eq!(t.progress.validated, CommitId(0));
    assert_eq!(t.progress.received, CommitId(4));
}

#[test]
fn a_source_that_answers_again_resumes_only_a_receiver_failure() {
    let mut s = started(2, 2);
    s.handle(SupervisorInput::ReceiverStopped {
        code: FailureCode::SourceUnavailable,
        reason: "connection refused".into(),
    })
    .expect("legal");
    let t = s
        .handle(SupervisorInput::SourceBack {
            reason: "source reachable again".into(),
        })
        .expect("legal")
        .expect("moves");
    assert_eq!(t.to, GlobalState::ReceivingWal);
    assert_eq!(t.reason, "source reachable again");
    // A validator failure is not undone by the source coming back.
    let mut v = s.clone();
    v.handle(SupervisorInput::ValidatorFailed {
        reason: "snapshot unreadable".into(),
    })
    .expect("legal");
    assert_eq!(
        v.handle(SupervisorInput::SourceBack {
            reason: "again".into()
        })
        .expect("legal"),
        None
    );
    assert_eq!(
        v.state().to_string(),
        "Ready (read-blocked: WAL validator failed: snapshot unreadable)"
    );
    // A rejection is not undone by the source coming back.
    s.handle(SupervisorInput::Rejected(Rejection {
        first: CommitId(3),
        last: CommitId(3),
        wal_offset: WalOffset(30),
        code: FailureCode::Corrupt,
        expected: None,
        actual: None,
        reason: "crc".into(),
    }))
    .expect("legal");
    assert_eq!(
        s.handle(SupervisorInput::SourceBack {
            reason: "again".into()
        })
        .expect("legal"),
        None
    );
}

#[test]
fn illegal_moves_are_typed_errors() {
    // A2: e.g. an event before start.
    let mut s = Supervisor::new();
    let err = s
        .handle(SupervisorInput::Recovered)
        .expect_err("illegal from Disabled");
    assert!(
        matches!(
            &err,
            IllegalTransition::Global {
                from: GlobalState::Disabled,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(s.state(), &GlobalState::Disabled);
}

#[test]
fn a_release_restarts_through_recovery_and_lifts_only_a_resumable_block() {
    let release = || SupervisorInput::Released {
        reason: "aerodb verify (pid 9)".into(),
    };
    // From a running state: Recovering, with where the replica stands now.
    let mut s = started(2, 2);
    assert_eq!(s.state(), &GlobalState::ReceivingWal);
    s.restart_after_hold(pos(7), CommitId(7));
    let t = s.handle(release()).expect("legal").expect("moves");
    assert_eq!(t.to, GlobalState::Recovering);
    assert_eq!(t.progress.applied, CommitId(7));
    assert_eq!(
        t.reason,
        "released by aerodb verify (pid 9): the pipeline restarted at applied commit 7; re-validating what is stored"
    );
    // Already recovering: it stays so (the new Validator ends it).
    assert_eq!(s.handle(release()).expect("legal"), None);
    s.handle(SupervisorInput::Recovered).expect("legal");
    // A source outage ended while held: the release lifts it.
    s.handle(SupervisorInput::ReceiverStopped {
        code: FailureCode::SourceUnavailable,
        reason: "connection refused".into(),
    })
    .expect("legal");
    let t = s.handle(release()).expect("legal").expect("moves");
    assert_eq!(t.to, GlobalState::Recovering);
    assert!(
        t.reason
            .ends_with("(which lifts the block); re-validating what is stored"),
        "{}",
        t.reason
    );
    // A rejection stays.
    s.handle(SupervisorInput::Recovered).expect("legal");
    s.handle(SupervisorInput::Rejected(Rejection {
        first: CommitId(8),
        last: CommitId(8),
        wal_offset: WalOffset(80),
        code: FailureCode::Corrupt,
        expected: None,
        actual: None,
        reason: "crc".into(),
    }))
    .expect("legal");
    assert_eq!(s.handle(release()).expect("legal"), None);
    assert!(s.state().to_string().contains("rejected"), "{}", s.state());
}
