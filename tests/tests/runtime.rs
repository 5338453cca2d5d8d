//! The threaded runtime on real files: a replica follows a primary file,
//! its state, segments and transition history are recorded, and each
//! failure boundary of spec section 8 shows up as the state it must be.
//! Every wait is on a condition of the published state, never a sleep.

use aerodb_e2e::dump_table;
use replication::runtime::{Component, Config};
use replication::state::{GlobalKind, GlobalState, ReadStatus};
use replication::wal::CommitId;
use std::path::Path;
use std::time::{Duration, Instant};
use storage_adapter::primary::Primary;
use storage_adapter::runtime::Replica;

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn primary(path: &Path) -> Primary {
    let p = Primary::open(path).expect("primary");
    p.connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .expect("table");
    p.replicate("t").expect("replicate");
    p
}

fn write(p: &Primary, ids: std::ops::RangeInclusive<i64>) -> CommitId {
    for id in ids {
        p.connection()
            .execute("INSERT INTO t VALUES (?1, 'v' || ?1)", [id])
            .expect("insert");
    }
    p.head().expect("head")
}

fn ready(s: &replication::runtime::Snapshot) -> bool {
    s.global
        == GlobalState::Ready {
            read: ReadStatus::Safe,
        }
}

#[test]
fn replica_follows_a_primary_file_and_records_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = primary(&dir.path().join("p.db"));
    let head = write(&p, 1..=50);
    let config = Config {
        segment_bytes: 512,
        ..Config::default()
    };
    let replica =
        Replica::start_from_file(dir.path().join("r.db"), dir.path().join("p.db"), config)
            .expect("start");
    replica.wait_for(head, deadline()).expect("caught up");
    let s = replica
        .wait_until(deadline(), ready)
        .expect("Ready once caught up");
    assert_eq!(s.progress.applied, head);
    // Live writes are followed.
    let head = write(&p, 51..=60);
    replica.wait_for(head, deadline()).expect("follows");
    let r = rusqlite::Connection::open(dir.path().join("r.db")).expect("open");
    assert_eq!(dump_table(&r, "t"), dump_table(p.connection(), "t"));
    let d = replica.explain_read(Some(head)).expect("gate");
    assert!(d.allowed(), "{d}");
    let d = replica.explain_read(Some(head.next())).expect("gate");
    assert!(!d.allowed(), "{d}");
    let segments = replica.segments().expect("segments");
    assert!(segments.len() > 3, "{segments:?}");
    assert!(
        segments.iter().all(|s| s.state == "Applied"),
        "{segments:?}"
    );
    let last = replica.stop();
    assert!(!last.running);
    assert_eq!(last.global, GlobalState::Disabled);
    let transitions = storage_adapter::runtime::transitions_in(&r).expect("history");
    let kinds: Vec<&str> = transitions.iter().map(|t| t.to_state.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"Initializing"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"Disabled"), "{kinds:?}");
    assert!(kinds.contains(&"ApplyingWAL"), "{kinds:?}");
    assert_eq!(
        last.component(Component::Applier).last_error,
        None,
        "{:?}",
        last.components
    );
    let _ = GlobalKind::Ready;
}
