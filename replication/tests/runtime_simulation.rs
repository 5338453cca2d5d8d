//! Seeded simulation of the production runtime (issue 11 item 2): the real
//! `Runtime` (its engine, Supervisor runner and the Receiver, Validator and
//! Applier threads) over the in-crate memory ports (`runtime::mem`), with
//! seeded faults: source outages (the Receiver's recorded resume), apply
//! failures once (recovery) and twice (X4 block, then an operator resume),
//! restarts, a corrupted record (a rejection that survives restarts),
//! snapshot bootstrap of a new replica of a truncated primary, a fork and a
//! foreign generation. Every step waits on the published state (never on
//! time), then checks:
//! - the applied rows equal the primary's at the applied CommitId, and the
//!   applied position is the primary's after that commit;
//! - the recorded verdict (the state store, as the SQL gate reads it)
//!   equals the live one (the published snapshot's);
//! - `Runtime::wait_for` answers as the gate does;
//! - every stored segment at or below the applied commit is Applied.
//!
//! A failing seed is printed; replay it with
//! `AERODB_SIM_SEED=<seed> cargo test -p replication --test runtime_simulation`.

use replication::read_gate::{evaluate, DecisionCode, ReadRequest};
use replication::runtime::mem::{MemPrimary, MemReplica};
use replication::runtime::{Config, Runtime, WaitError};
use replication::state::{GlobalState, ReadStatus, SegmentState};
use replication::wal::{Change, CommitId, Generation, Value};
use std::time::{Duration, Instant};

mod common;
use common::Rng;

const GEN: Generation = Generation(0x5117);
/// A generous bound on each wait: reaching it is a failure (a hang), never
/// what decides an outcome.
const WAIT: Duration = Duration::from_secs(30);

/// The primary's workload: inserts, updates and deletes of `t` by key,
/// consistent with what it holds.
struct Workload {
    keys: Vec<i64>,
    next_key: i64,
}

impl Workload {
    fn transaction(&mut self, rng: &mut Rng) -> Vec<Change> {
        (0..1 + rng.below(3))
            .map(|_| match rng.below(4) {
                1 | 2 if !self.keys.is_empty() => {
                    let i = rng.below(self.keys.len() as u64) as usize;
                    let k = self.keys[i];
                    if rng.below(2) == 0 {
                        self.keys.remove(i);
                        Change::Delete {
                            table: "t".into(),
                            key: vec![Value::Integer(k)],
                        }
                    } else {
                        Change::Update {
                            table: "t".into(),
                            key: vec![Value::Integer(k)],
                            values: vec![
                                Value::Integer(k),
                                Value::Text(vec![b'u'; rng.below(9) as usize]),
                            ],
                        }
                    }
                }
                _ => {
                    let k = self.next_key;
                    self.next_key += 1;
                    self.keys.push(k);
                    Change::Insert {
                        table: "t".into(),
                        values: vec![
                            Value::Integer(k),
                            Value::Blob(vec![k as u8; rng.below(30) as usize]),
                        ],
                    }
                }
            })
            .collect()
    }
}

fn config(rng: &mut Rng) -> Config {
    Config {
        segment_bytes: 64 + rng.below(400) as usize,
        queue_depth: 1 + rng.below(3) as usize,
    }
}

fn start(primary: &MemPrimary, replica: &MemReplica, rng: &mut Rng) -> Runtime {
    Runtime::start(
        Box::new(primary.source()),
        replica.storage(),
        primary.generation(),
        config(rng),
    )
}

fn blocked(g: &GlobalState) -> bool {
    matches!(
        g,
        GlobalState::Ready {
            read: ReadStatus::Blocked(_)
        }
    )
}

/// Waits until the replica has the primary's head read-safe, or is
/// blocked; the published global state.
fn settle(rt: &Runtime, primary: &MemPrimary, seed: u64, step: &str) -> GlobalState {
    let head = primary.head();
    let s = rt
        .wait_until(Instant::now() + WAIT, |s| {
            blocked(&s.global)
                || (s.applied.commit_id == head
                    && s.global
                        == GlobalState::Ready {
                            read: ReadStatus::Safe,
                        })
                || !s.running
        })
        .unwrap_or_else(|s| panic!("seed {seed}, {step}: no settled state within {WAIT:?}: {s:?}"));
    s.global.clone()
}

/// Waits until the replica has the primary's head read-safe (after a
/// recoverable fault: the block it caused must lift by itself).
fn settle_ready(rt: &Runtime, primary: &MemPrimary, seed: u64, step: &str) -> GlobalState {
    let head = primary.head();
    let s = rt
        .wait_until(Instant::now() + WAIT, |s| {
            (s.applied.commit_id == head
                && s.global
                    == GlobalState::Ready {
                        read: ReadStatus::Safe,
                    })
                || !s.running
        })
        .unwrap_or_else(|s| {
            panic!("seed {seed}, {step}: not caught up read-safe within {WAIT:?}: {s:?}")
        });
    s.global.clone()
}

fn check(rt: &Runtime, primary: &MemPrimary, replica: &MemReplica, seed: u64, step: &str) {
    let at = |what: &str| format!("seed {seed}, {step}: {what}");
    let applied = replica.applied();
    assert_eq!(
        applied,
        primary.position(applied.commit_id),
        "{}",
        at("applied position")
    );
    assert!(
        replica.rows() == primary.rows_at(applied.commit_id),
        "{}",
        at(&format!("rows at commit {} differ", applied.commit_id))
    );
    for (first, last, state) in replica.segments() {
        if last <= applied.commit_id {
            assert_eq!(
                state,
                SegmentState::Applied,
                "{}",
                at(&format!("segment {first}..={last}"))
            );
        } else {
            assert_ne!(
                state,
                SegmentState::Applied,
                "{}",
                at(&format!("segment {first}..={last}"))
            );
        }
    }
    let live = rt.view();
    let want = Some(applied.commit_id);
    let recorded = evaluate(
        &replica.observed(live.running),
        &ReadRequest {
            min_commit_id: want,
        },
    );
    let live_decision = live.explain_read(want);
    assert_eq!(
        recorded.code,
        live_decision.code,
        "{}",
        at(&format!(
            "recorded verdict `{}` differs from the live one `{}`",
            recorded.explanation, live_decision.explanation
        ))
    );
    let waited = rt.wait_for(applied.commit_id, Instant::now() + WAIT);
    match (&waited, recorded.code) {
        (Ok(_), DecisionCode::Allowed) => {}
        (Err(WaitError::Refused { .. } | WaitError::Unreachable { .. }), c)
            if c != DecisionCode::Allowed => {}
        (w, c) => panic!(
            "{}",
            at(&format!("wait_for answered {w:?}, the gate {c:?}"))
        ),
    }
}

fn run_seed(seed: u64) {
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = MemPrimary::new(GEN);
    let replica = MemReplica::new(GEN, dir.path());
    let mut w = Workload {
        keys: Vec::new(),
        next_key: 1,
    };
    for _ in 0..rng.below(5) {
        primary.commit(&w.transaction(&mut rng));
    }
    let mut rt = start(&primary, &replica, &mut rng);
    let mut steps = Vec::new();
    for step in 0..12 {
        let action = rng.below(9);
        steps.push(action);
        let name = format!("step {step} (action {action}, actions {steps:?})");
        match action {
            // An outage: commits while the source is down, then back.
            0 => {
                primary.set_available(false);
                primary.commit(&w.transaction(&mut rng));
                let g = settle(&rt, &primary, seed, &name);
                assert!(
                    blocked(&g),
                    "seed {seed}, {name}: not blocked by the outage: {g}"
                );
                primary.set_available(true);
            }
            // One apply failure: recovery applies it on the second try.
            1 => {
                replica.fail_applies(1);
                primary.commit(&w.transaction(&mut rng));
            }
            // Two: recovery fails again (X4 block); an operator resumes.
            2 => {
                replica.fail_applies(2);
                primary.commit(&w.transaction(&mut rng));
                let g = settle(&rt, &primary, seed, &name);
                if blocked(&g) {
                    rt.resume("simulated operator")
                        .unwrap_or_else(|e| panic!("seed {seed}, {name}: resume refused: {e}"));
                }
            }
            // A restart.
            3 => {
                let s = rt.stop();
                assert!(!s.running);
                check_stopped(&s, &primary, &replica, seed, &name);
                rt = start(&primary, &replica, &mut rng);
            }
            // Commits.
            _ => {
                for _ in 0..1 + rng.below(4) {
                    primary.commit(&w.transaction(&mut rng));
                }
            }
        }
        let g = settle_ready(&rt, &primary, seed, &name);
        check(&rt, &primary, &replica, seed, &name);
        assert!(
            !blocked(&g),
            "seed {seed}, {name}: blocked after a recoverable fault: {g}"
        );
        assert_eq!(
            replica.applied().commit_id,
            primary.head(),
            "seed {seed}, {name}"
        );
    }
    // A corrupted record: rejected, and the verdict survives a restart.
    let bad = CommitId(primary.head().0 + 1);
    primary.corrupt(bad);
    primary.commit(&w.transaction(&mut rng));
    let g = settle(&rt, &primary, seed, "corrupt record");
    assert!(
        blocked(&g),
        "seed {seed}: a corrupted record was not refused: {g}"
    );
    check(&rt, &primary, &replica, seed, "corrupt record");
    assert!(
        rt.resume("operator").is_err(),
        "a rejection does not resume"
    );
    rt.stop();
    let rt = start(&primary, &replica, &mut rng);
    let g = settle(&rt, &primary, seed, "restart after the rejection");
    assert!(
        blocked(&g),
        "seed {seed}: the rejection did not survive a restart: {g}"
    );
    check(&rt, &primary, &replica, seed, "restart after the rejection");
    rt.stop();
    if std::env::var("SIM_DEBUG").is_ok() {
        for t in replica.transitions() {
            eprintln!("{} -> {}: {}", t.from, t.to, t.reason);
        }
    }
}

/// After a stop: the recorded verdict is the last published one.
fn check_stopped(
    last: &replication::runtime::View,
    primary: &MemPrimary,
    replica: &MemReplica,
    seed: u64,
    step: &str,
) {
    let applied = replica.applied();
    assert!(
        replica.rows() == primary.rows_at(applied.commit_id),
        "seed {seed}, {step}: rows after the stop"
    );
    let want = Some(applied.commit_id);
    let recorded = evaluate(
        &replica.observed(false),
        &ReadRequest {
            min_commit_id: want,
        },
    );
    let live = last.explain_read(want);
    assert_eq!(
        recorded.code, live.code,
        "seed {seed}, {step}: recorded `{}`, last published `{}`",
        recorded.explanation, live.explanation
    );
}

fn seeds() -> Vec<u64> {
    common::seeds(24)
}

#[test]
fn seeded_runs_of_the_production_runtime_keep_every_invariant() {
    for seed in seeds() {
        let r = std::panic::catch_unwind(|| run_seed(seed));
        if let Err(e) = r {
            eprintln!("failing seed: AERODB_SIM_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn a_new_replica_of_a_truncated_primary_bootstraps_from_a_snapshot() {
    for seed in seeds() {
        let mut rng = Rng(seed);
        let dir = tempfile::tempdir().expect("tempdir");
        let primary = MemPrimary::new(GEN);
        let mut w = Workload {
            keys: Vec::new(),
            next_key: 1,
        };
        for _ in 0..3 + rng.below(10) {
            primary.commit(&w.transaction(&mut rng));
        }
        primary.truncate_below(CommitId(primary.head().0 - rng.below(2)));
        let replica = MemReplica::new(GEN, dir.path());
        let rt = start(&primary, &replica, &mut rng);
        let g = settle(&rt, &primary, seed, "bootstrap");
        assert!(!blocked(&g), "seed {seed}: {g}");
        check(&rt, &primary, &replica, seed, "bootstrap");
        // Then it follows the WAL.
        primary.commit(&w.transaction(&mut rng));
        settle(&rt, &primary, seed, "after the bootstrap");
        check(&rt, &primary, &replica, seed, "after the bootstrap");
        assert!(
            replica
                .transitions()
                .iter()
                .all(|t| t.blocking_code.is_none()),
            "seed {seed}: a bootstrap is no block"
        );
        rt.stop();
    }
}

#[test]
fn a_fork_and_a_foreign_generation_are_refused_and_stay_refused() {
    let mut rng = Rng(7);
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = MemPrimary::new(GEN);
    let mut w = Workload {
        keys: Vec::new(),
        next_key: 1,
    };
    for _ in 0..4 {
        primary.commit(&w.transaction(&mut rng));
    }
    let replica = MemReplica::new(GEN, dir.path());
    let rt = start(&primary, &replica, &mut rng);
    settle(&rt, &primary, 7, "start");
    check(&rt, &primary, &replica, 7, "start");
    rt.stop();

    // A primary of the same generation with another history (restored
    // from a backup, say): its commit 5 does not chain onto the replica's 4.
    let fork = MemPrimary::new(GEN);
    let mut other = Workload {
        keys: Vec::new(),
        next_key: 100,
    };
    for _ in 0..6 {
        fork.commit(&other.transaction(&mut rng));
    }
    let rt = start(&fork, &replica, &mut rng);
    let g = settle(&rt, &fork, 7, "fork");
    match &g {
        GlobalState::Ready {
            read: ReadStatus::Blocked(b),
        } => assert_eq!(b.code(), "DIVERGED", "{g}"),
        other => panic!("a fork was not refused: {other}"),
    }
    let d = rt.view().explain_read(Some(CommitId(4)));
    assert_eq!(d.code, DecisionCode::Diverged, "{}", d.explanation);
    rt.stop();
    let recorded = evaluate(
        &replica.observed(false),
        &ReadRequest {
            min_commit_id: Some(CommitId(4)),
        },
    );
    assert_eq!(
        recorded.code,
        DecisionCode::Diverged,
        "{}",
        recorded.explanation
    );

    // Another generation at the same place.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let replica2 = MemReplica::new(GEN, dir2.path());
    let foreign = MemPrimary::new(Generation(0xf0f0));
    foreign.commit(&w.transaction(&mut rng));
    // As production starts it: with the generation the source serves.
    let rt = Runtime::start(
        Box::new(foreign.source()),
        replica2.storage(),
        foreign.generation(),
        config(&mut rng),
    );
    let s = rt
        .wait_until(Instant::now() + WAIT, |s| blocked(&s.global))
        .unwrap_or_else(|s| panic!("a foreign generation was not refused: {s:?}"));
    assert!(
        s.global.to_string().contains("FOREIGN_GENERATION"),
        "{}",
        s.global
    );
    let d = s.explain_read(Some(CommitId(1)));
    assert_eq!(d.code, DecisionCode::Diverged, "{}", d.explanation);
    assert_eq!(replica2.applied().commit_id, CommitId(0));
    rt.stop();
}
