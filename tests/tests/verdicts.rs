//! A verdict never lies (issue 11 item 4): a blocked or diverged replica
//! stays refused across stops and restarts, until a restart reaches Ready
//! read-safe again (a successful resume, recorded as a transition).
//! Every wait is on a condition of the published state, never a sleep.

use replication::read_gate::DecisionCode;
use replication::runtime::Config;
use replication::state::{GlobalState, ReadStatus};
use replication::wal::CommitId;
use std::path::Path;
use storage_adapter::runtime::{read_gate_in, Replica};

use aerodb_e2e::{deadline, primary_with_rows as primary};

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

/// In the stock `sqlite3` shell: `aerodb_replica_start` returns the
/// CommitId the replica starts from, and `aerodb_wait` answers as the gate
/// does: a replica that holds commit 3 but is diverged refuses to vouch
/// for a read at 3, live and right after a restart, with the gate's
/// explanation (the old code returned 0 from the start and 3 from the
/// waits).
#[test]
fn in_the_shell_aerodb_wait_answers_as_the_gate_and_start_returns_where_it_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, q_path, r_path) = (
        dir.path().join("p.db"),
        dir.path().join("q.db"),
        dir.path().join("r.db"),
    );
    let p = primary(&p_path, 2);
    let _q = primary(&q_path, 6);
    let head = p.head().expect("head").0;
    assert_eq!(head, 3, "schema record and two rows");
    let load = format!(".load {}\n", aerodb_e2e::extension().display());
    let start = |source: &Path| {
        format!(
            "SELECT 'start=' || aerodb_replica_start('{}');\n",
            source.display()
        )
    };
    // Caught up with its own primary, then stopped.
    let run = aerodb_e2e::shell(
        &r_path,
        &format!(
            "{load}PRAGMA journal_mode = WAL;\n{}SELECT 'wait=' || aerodb_wait({head}, 60000);\nSELECT 'source=' || source_head_commit_id || ' lag=' || lag_commits FROM replica_state;\nSELECT aerodb_replica_stop();\n",
            start(&p_path)
        ),
    );
    assert!(run.ok, "{run:?}");
    assert!(run.stdout.contains("start=0\n"), "{run:?}");
    assert!(run.stdout.contains(&format!("wait={head}\n")), "{run:?}");
    assert!(
        run.stdout.contains(&format!("source={head} lag=0\n")),
        "{run:?}"
    );

    // Pointed at the foreign primary: waiting for commit 4 ends when it
    // blocks (it cannot be reached); then a wait for commit 3, which the
    // replica holds, is refused with the gate's reason.
    let run = aerodb_e2e::shell(
        &r_path,
        &format!(
            "{load}{}SELECT 'wait4=' || aerodb_wait(4, 60000);\nSELECT 'wait3=' || aerodb_wait(3, 60000);\nSELECT 'gate=' || reason_code FROM read_safety(3);\nSELECT aerodb_replica_resume();\nSELECT aerodb_replica_stop();\n",
            start(&q_path)
        ),
    );
    assert!(run.stdout.contains(&format!("start={head}\n")), "{run:?}");
    assert!(
        !run.stdout.contains("wait4=") && !run.stdout.contains("wait3="),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("aerodb_wait: commit 4 cannot be reached: DIVERGED"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("aerodb_wait: commit 3 is applied, but read_safety(3) refuses it: DIVERGED"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("gate=DIVERGED\n"), "{run:?}");
    // An operator's resume does not lift a divergence.
    assert!(
        run.stderr.contains(
            "aerodb_replica_resume: nothing to resume: the replica is Ready (read-blocked: WAL receiver failed: FOREIGN_GENERATION"
        ),
        "{}",
        run.stderr
    );

    // Restarted on the foreign primary: the wait for 3 begins before the
    // runtime has seen anything, and still refuses (the recorded verdict).
    let run = aerodb_e2e::shell(
        &r_path,
        &format!(
            "{load}{}SELECT 'wait3=' || aerodb_wait(3, 60000);\nSELECT aerodb_replica_stop();\n",
            start(&q_path)
        ),
    );
    assert!(run.stdout.contains(&format!("start={head}\n")), "{run:?}");
    assert!(!run.stdout.contains("wait3="), "{run:?}");
    assert!(
        run.stderr
            .contains("aerodb_wait: commit 3 is applied, but read_safety(3) refuses it: DIVERGED"),
        "{}",
        run.stderr
    );

    // Back on its own primary: the resume lifts the verdict and the wait
    // answers.
    let run = aerodb_e2e::shell(
        &r_path,
        &format!(
            "{load}{}SELECT 'wait=' || aerodb_wait({head}, 60000);\nSELECT 'gate=' || reason_code FROM read_safety({head});\nSELECT aerodb_replica_stop();\n",
            start(&p_path)
        ),
    );
    assert!(run.ok, "{run:?}");
    assert!(run.stdout.contains(&format!("wait={head}\n")), "{run:?}");
    assert!(run.stdout.contains("gate=ALLOWED\n"), "{run:?}");
}
