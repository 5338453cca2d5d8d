//! The segment state machine is checked in production (issue 11 item 3):
//! every move the Supervisor records goes through `check_segment` and must
//! change exactly one row; an illegal move is an `ILLEGAL_TRANSITION`
//! failure that changes nothing (the whole batch is refused), where the
//! SQL `UPDATE ... WHERE state = 'Received'` of before ignored it.

use replication::runtime::{Failure, Storage, StoreOp};
use replication::state::SegmentState;
use replication::wal::{CommitId, Generation};
use storage_adapter::replica::ReplicaDb;
use storage_adapter::runtime::{segments_in, SqliteStorage};

fn seg(first: u64, last: u64, to: SegmentState) -> StoreOp {
    StoreOp::Segment {
        first: CommitId(first),
        last: CommitId(last),
        wal_offset: None,
        end_wal_offset: None,
        to,
    }
}

fn states(path: &std::path::Path) -> Vec<(u64, u64, String)> {
    let conn = rusqlite::Connection::open(path).expect("open");
    segments_in(&conn)
        .expect("segments")
        .into_iter()
        .map(|s| (s.first_commit_id.0, s.last_commit_id.0, s.state))
        .collect()
}

fn illegal(e: Failure, says: &str) {
    assert_eq!(e.code, "ILLEGAL_TRANSITION", "{e}");
    assert!(e.reason.contains(says), "{e}");
}

#[test]
fn every_recorded_segment_move_is_checked_and_changes_exactly_one_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.db");
    ReplicaDb::open(&path)
        .and_then(|db| db.init(Generation(7)))
        .expect("a replica");
    let storage = SqliteStorage::new(&path);
    let mut store = storage.state_store().expect("store");
    store.open().expect("open");
    let mut wal = storage.wal_storage().expect("wal storage");
    wal.persist(CommitId(1), CommitId(2), b"segment 1..=2")
        .expect("persist");
    wal.persist(CommitId(3), CommitId(4), b"segment 3..=4")
        .expect("persist");

    // Legal: Received -> Validated, Received -> Rejected.
    store
        .record(&[seg(1, 2, SegmentState::Validated)])
        .expect("Received -> Validated");
    store
        .record(&[seg(
            3,
            4,
            SegmentState::Rejected {
                reason: "test".into(),
            },
        )])
        .expect("Received -> Rejected");
    let before = states(&path);
    assert_eq!(
        before,
        vec![(1, 2, "Validated".into()), (3, 4, "Rejected".into())]
    );

    // Illegal moves are typed failures naming the move; nothing changes.
    illegal(
        store
            .record(&[seg(1, 2, SegmentState::Validated)])
            .expect_err("Validated -> Validated"),
        "segment 1..=2: illegal segment transition Validated -> Validated",
    );
    illegal(
        store
            .record(&[seg(3, 4, SegmentState::Validated)])
            .expect_err("Rejected -> Validated"),
        "Rejected -> Validated",
    );
    illegal(
        store
            .record(&[seg(5, 6, SegmentState::Validated)])
            .expect_err("no such segment"),
        "segment 5..=6: it is not in the state store",
    );
    // A Rejected segment rejected again (a restart re-validates it) is the
    // same state observed again, not a move.
    store
        .record(&[seg(
            3,
            4,
            SegmentState::Rejected {
                reason: "test, after a restart".into(),
            },
        )])
        .expect("Rejected observed again");
    // A batch with a legal move and an illegal one: all or nothing.
    wal.persist(CommitId(5), CommitId(6), b"segment 5..=6")
        .expect("persist");
    illegal(
        store
            .record(&[
                seg(5, 6, SegmentState::Validated),
                seg(3, 4, SegmentState::Applied),
            ])
            .expect_err("Rejected -> Applied"),
        "Rejected -> Applied",
    );
    assert_eq!(
        states(&path),
        vec![
            (1, 2, "Validated".into()),
            (3, 4, "Rejected".into()),
            (5, 6, "Received".into())
        ]
    );
}
