//! A verdict never lies (issue 11 item 4): a blocked or diverged replica
//! stays refused across stops and restarts, until a restart reaches Ready
//! read-safe again (a successful resume, recorded as a transition).
//! Every wait is on a condition of the published state, never a sleep.

use replication::read_gate::DecisionCode;
use replication::runtime::Config;
use replication::state::{GlobalState, ReadStatus};
use replication::wal::CommitId;
use std::path::Path;
use std::time::{Duration, Instant};
use storage_adapter::primary::Primary;
use storage_adapter::runtime::{read_gate_in, Replica};

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn primary(path: &Path, rows: i64) -> Primary {
    let p = Primary::open(path).expect("primary");
    p.connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .expect("table");
    p.replicate("t").expect("replicate");
    for id in 1..=rows {
        p.connection()
            .execute("INSERT INTO t VALUES (?1, 'v' || ?1)", [id])
            .expect("insert");
    }
    p
}

fn small() -> Config {
    Config {
        segment_bytes: 512,
        ..Config::default()
    }
}

/// The gate over the replica file, from a fresh connection (as
/// `read_safety` in another process sees it).
fn gate(replica: &Path, min: u64) -> replication::read_gate::Decision {
    let conn = rusqlite::Connection::open(replica).expect("open the replica");
    read_gate_in(&conn, Some(CommitId(min)))
}

#[test]
fn a_diverged_replica_stays_refused_across_stop_and_restart_until_a_resume_succeeds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, q_path, r_path) = (
        dir.path().join("p.db"),
        dir.path().join("q.db"),
        dir.path().join("r.db"),
    );
    let p = primary(&p_path, 3);
    let _q = primary(&q_path, 6);
    let head = p.head().expect("head");
    // Caught up with its own primary.
    let r = Replica::start_from_file(&r_path, &p_path, small()).expect("start");
    r.wait_for(head, deadline()).expect("caught up");
    drop(r.stop());
    assert!(gate(&r_path, 1).allowed());

    // Pointed at another primary (a foreign generation): diverged.
    let r = Replica::start_from_file(&r_path, &q_path, small()).expect("start on q");
    r.wait_until(deadline(), |s| replication::runtime::is_blocked(&s.global))
        .expect("blocked");
    let d = gate(&r_path, 1);
    assert_eq!(d.code, DecisionCode::Diverged, "{d}");
    drop(r.stop());

    // Stopped: the verdict stays, with its reason, in replica_state too.
    let d = gate(&r_path, 1);
    assert_eq!(d.code, DecisionCode::Diverged, "after stop: {d}");
    let conn = rusqlite::Connection::open(&r_path).expect("open");
    let (state, code, reason): (String, Option<String>, Option<String>) = conn
        .query_row(
            "SELECT global_state, blocking_code, blocking_reason FROM aerodb_replica_state",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("state");
    assert_eq!(state, "Disabled");
    assert_eq!(code.as_deref(), Some("DIVERGED"));
    assert!(reason.is_some_and(|r| !r.is_empty()));

    // Restarted against the same foreign primary: still refused, at every
    // moment (checked while it starts and once it blocked again).
    let r = Replica::start_from_file(&r_path, &q_path, small()).expect("restart on q");
    let d = gate(&r_path, 1);
    assert_ne!(d.code, DecisionCode::Allowed, "while restarting: {d}");
    r.wait_until(deadline(), |s| replication::runtime::is_blocked(&s.global))
        .expect("blocked again");
    assert_eq!(gate(&r_path, 1).code, DecisionCode::Diverged);
    drop(r.stop());

    // Restarted against its own primary: the resume succeeds (Ready
    // read-safe, recorded) and lifts the verdict.
    let r = Replica::start_from_file(&r_path, &p_path, small()).expect("restart on p");
    r.wait_until(deadline(), |s| {
        s.global
            == GlobalState::Ready {
                read: ReadStatus::Safe,
            }
    })
    .expect("ready");
    let d = r.explain_read(Some(head)).expect("gate");
    assert!(d.allowed(), "{d}");
    let lifted = r
        .transitions()
        .expect("transitions")
        .into_iter()
        .rev()
        .find(|t| t.to_state.starts_with("Ready"))
        .expect("a recorded Ready transition");
    assert!(lifted.to_state.contains("read-safe"), "{lifted:?}");
    drop(r.stop());
    assert!(gate(&r_path, 1).allowed());
}
