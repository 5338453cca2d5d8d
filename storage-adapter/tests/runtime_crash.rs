//! Crash recovery of the threaded replica runtime, proven by killing
//! processes: `aerodb replica` (Receiver, Validator, Applier and Supervisor
//! threads) follows a primary with a large backlog in small segments and is
//! killed with SIGKILL at many points chosen from its own output. After
//! every kill, one read transaction on the replica file shows:
//!
//! - its table equals the primary's content at its applied CommitId:
//!   nothing lost, nothing applied twice (W1, W2, T1);
//! - the state store agrees with itself: Applied segments end at or before
//!   the applied CommitId and kept no bytes; the segments not applied yet
//!   (Received or Validated, their bytes kept) continue the applied
//!   CommitId without a gap (R1, M3); the transition history is a chain the
//!   recorded global state ends (M2).
//!
//! Every restart resumes: its first transitions say the previous run ended
//! uncleanly and either start at the applied position or re-validate what
//! was received but not applied (V2). A last run catches up and stops
//! cleanly, equal to the primary.
//!
//! Kill points come from the child's output lines, never from time (X5).
//! The kill points are seeded; replay one with `AERODB_SEED=<seed> cargo
//! test -p storage-adapter --test runtime_crash`.

use rusqlite::{Connection, OpenFlags};
mod common;

use common::{model_at, write_backlog};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// Commits after the schema record.
const BACKLOG: i64 = 6000;
/// Target segment size asked from the primary: a few dozen commits, so the
/// Receiver is often segments ahead of the Applier.
const SEGMENT_BYTES: &str = "1500";
/// A run is killed after reading 0..=MAX_LINES_BEFORE_KILL of its lines.
const MAX_LINES_BEFORE_KILL: u64 = 4;
/// Kill points wanted at least.
const MIN_KILLS: usize = 50;
/// Kill points at most; the final run applies whatever is left.
const MAX_KILLS: usize = 150;
/// Default seed of the kill points.
const DEFAULT_SEED: u64 = 20_240_611;

/// splitmix64: a small seeded generator (no dependency).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    fn up_to(&mut self, max: u64) -> u64 {
        self.next_u64() % (max + 1)
    }
}

fn table_t(conn: &Connection) -> BTreeMap<i64, i64> {
    match conn.prepare("SELECT id, v FROM t") {
        Ok(mut s) => s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query t")
            .collect::<Result<_, _>>()
            .expect("rows of t"),
        // Not created until the schema record is applied.
        Err(_) => BTreeMap::new(),
    }
}

/// A row of `aerodb_replica_segments`.
#[derive(Debug)]
struct SegmentRow {
    first: i64,
    last: i64,
    end_wal_offset: Option<i64>,
    byte_len: i64,
    /// `length(bytes)`, NULL when the bytes are gone.
    bytes_len: Option<i64>,
    state: String,
}

/// A row of `aerodb_replica_transitions`.
#[derive(Debug, Clone)]
struct TransitionRow {
    seq: i64,
    from: String,
    to: String,
    reason: String,
    received: i64,
    validated: i64,
    applied: i64,
    applied_wal_offset: i64,
}

/// What the replica file holds, read in ONE read transaction.
#[derive(Debug, Default)]
struct Observed {
    applied: i64,
    applied_wal_offset: i64,
    rows: BTreeMap<i64, i64>,
    segments: Vec<SegmentRow>,
    transitions: Vec<TransitionRow>,
    /// `aerodb_replica_state`: (global_state, last_transition_seq).
    recorded: Option<(String, i64)>,
}

impl Observed {
    fn max_seq(&self) -> i64 {
        self.transitions.last().map_or(0, |t| t.seq)
    }

    /// The segments persisted but not applied (Received or Validated).
    fn unapplied(&self) -> impl Iterator<Item = &SegmentRow> {
        self.segments.iter().filter(|s| s.state != "Applied")
    }

    /// The last CommitId received but not applied, if any.
    fn received_beyond_applied(&self) -> Option<i64> {
        self.unapplied().map(|s| s.last).max()
    }
}

fn observe(path: &Path) -> Observed {
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open replica");
    let tx = conn.unchecked_transaction().expect("read transaction");
    let (applied, applied_wal_offset) = tx
        .query_row(
            "SELECT applied_commit_id, applied_wal_offset FROM aerodb_replica_position",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the replica has a position");
    let rows = table_t(&tx);
    let segments = tx
        .prepare(
            "SELECT s.first_commit_id, s.last_commit_id, s.end_wal_offset, s.byte_len, length(b.bytes), s.state FROM aerodb_replica_segments s LEFT JOIN aerodb_replica_segment_bytes b ON b.first_commit_id = s.first_commit_id ORDER BY s.first_commit_id",
        )
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok(SegmentRow {
                    first: r.get(0)?,
                    last: r.get(1)?,
                    end_wal_offset: r.get(2)?,
                    byte_len: r.get(3)?,
                    bytes_len: r.get(4)?,
                    state: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()
        })
        .expect("segments");
    // Insertion order (rowid), to check that seq increases with it.
    let transitions = tx
        .prepare(
            "SELECT seq, from_state, to_state, reason, received_commit_id, validated_commit_id, applied_commit_id, applied_wal_offset FROM aerodb_replica_transitions ORDER BY rowid",
        )
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok(TransitionRow {
                    seq: r.get(0)?,
                    from: r.get(1)?,
                    to: r.get(2)?,
                    reason: r.get(3)?,
                    received: r.get(4)?,
                    validated: r.get(5)?,
                    applied: r.get(6)?,
                    applied_wal_offset: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()
        })
        .expect("transitions");
    let recorded = tx
        .query_row(
            "SELECT global_state, last_transition_seq FROM aerodb_replica_state WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    tx.commit().expect("end of the read transaction");
    Observed {
        applied,
        applied_wal_offset,
        rows,
        segments,
        transitions,
        recorded,
    }
}

/// The replica file's content and state store agree with themselves and
/// with the primary's history (checks (a) and (b)).
fn check_consistent(o: &Observed, at: &str) {
    let a = o.applied;
    assert_eq!(
        o.rows,
        model_at(a),
        "{at}: the replica at commit {a} differs from the primary at commit {a}"
    );
    for s in &o.segments {
        match s.state.as_str() {
            "Applied" => {
                assert!(
                    s.last <= a,
                    "{at}: segment {}..={} is Applied but the applied commit is {a}",
                    s.first,
                    s.last
                );
                assert_eq!(
                    s.bytes_len, None,
                    "{at}: Applied segment {}..={} kept its bytes",
                    s.first, s.last
                );
            }
            "Received" | "Validated" => {
                assert!(
                    s.first > a,
                    "{at}: segment {}..={} is {} but the applied commit is {a}",
                    s.first,
                    s.last,
                    s.state
                );
                assert_eq!(
                    s.bytes_len,
                    Some(s.byte_len),
                    "{at}: {} segment {}..={} lost its bytes",
                    s.state,
                    s.first,
                    s.last
                );
            }
            other => panic!(
                "{at}: segment {}..={} is {other} in a backlog with nothing wrong",
                s.first, s.last
            ),
        }
    }
    let mut expected_first = a + 1;
    for s in o.unapplied() {
        assert_eq!(
            s.first,
            expected_first,
            "{at}: unapplied segment {}..={} does not continue commit {} (applied {a}): {:?}",
            s.first,
            s.last,
            expected_first - 1,
            o.segments
                .iter()
                .filter(|s| s.state != "Applied")
                .collect::<Vec<_>>()
        );
        expected_first = s.last + 1;
    }
    if a > 0 {
        // The Applier marks its segment Applied in the transaction that
        // advances the position: the newest Applied segment ends there.
        let newest = o
            .segments
            .iter()
            .filter(|s| s.state == "Applied")
            .max_by_key(|s| s.last)
            .unwrap_or_else(|| panic!("{at}: applied commit {a} but no Applied segment"));
        assert_eq!(
            (newest.last, newest.end_wal_offset),
            (a, Some(o.applied_wal_offset)),
            "{at}: the newest Applied segment does not end at the applied position"
        );
    }
    for w in o.transitions.windows(2) {
        let (p, t) = (&w[0], &w[1]);
        assert!(
            t.seq > p.seq,
            "{at}: transition seq {} recorded after seq {}",
            t.seq,
            p.seq
        );
        let restart = t.from == "Disabled" && t.to == "Initializing";
        assert!(
            t.from == p.to || restart,
            "{at}: transition {} is {} -> {} but the previous one (seq {}) ended in {}",
            t.seq,
            t.from,
            t.to,
            p.seq,
            p.to
        );
    }
    if let Some(t) = o.transitions.last() {
        assert!(
            t.applied <= a,
            "{at}: transition {} records applied commit {} beyond the committed {a}",
            t.seq,
            t.applied
        );
        let (state, seq) = o
            .recorded
            .as_ref()
            .unwrap_or_else(|| panic!("{at}: transitions recorded but no global state"));
        assert_eq!(
            *seq, t.seq,
            "{at}: the recorded state is not the last transition's"
        );
        assert!(
            t.to.starts_with(state.as_str()),
            "{at}: recorded global state {state} but the last transition went to {}",
            t.to
        );
    } else {
        assert!(
            o.recorded.is_none(),
            "{at}: a global state but no transition"
        );
    }
}

/// The progress each recorded transition claims (M2: "received, validated
/// and applied CommitIds at that moment"): its applied CommitId and WAL
/// offset are a position the replica really had (genesis or the end of an
/// Applied segment), the applied CommitId never goes back along the
/// history, and received >= validated >= applied. Returns the violations.
fn recorded_progress_violations(o: &Observed) -> Vec<String> {
    let mut positions: BTreeMap<i64, i64> = BTreeMap::from([(0, 0)]);
    for s in o.segments.iter().filter(|s| s.state == "Applied") {
        positions.insert(s.last, s.end_wal_offset.expect("Applied has an end offset"));
    }
    let mut violations = Vec::new();
    let mut previous: Option<&TransitionRow> = None;
    for t in &o.transitions {
        let mut wrong = Vec::new();
        let offset = positions.get(&t.applied);
        if offset != Some(&t.applied_wal_offset) {
            wrong.push(format!(
                "applied commit {} with WAL offset {}, but commit {} ends at WAL offset {offset:?}",
                t.applied, t.applied_wal_offset, t.applied
            ));
        }
        if !(t.received >= t.validated && t.validated >= t.applied) {
            wrong.push(format!(
                "received {} / validated {} / applied {}",
                t.received, t.validated, t.applied
            ));
        }
        if let Some(p) = previous.filter(|p| t.applied < p.applied) {
            wrong.push(format!(
                "applied commit {} after transition {} recorded {}",
                t.applied, p.seq, p.applied
            ));
        }
        if !wrong.is_empty() {
            violations.push(format!("transition {}: {}: {t:?}", t.seq, wrong.join("; ")));
        }
        previous = Some(t);
    }
    violations
}

/// How a restart began, as recorded.
struct Restart {
    /// It said the previous run ended uncleanly.
    unclean: bool,
    /// It went Initializing -> Recovering to re-validate unapplied segments.
    recovered: bool,
}

/// What a restart recorded first, given what the file held when it
/// started; `None` if it was killed before its first state store write.
fn check_restart(before: &Observed, after: &Observed, at: &str) -> Option<Restart> {
    let new: Vec<&TransitionRow> = after
        .transitions
        .iter()
        .filter(|t| t.seq > before.max_seq())
        .collect();
    // None: killed before the Supervisor's first write.
    let first = new.first()?;
    let expected_start = match before.recorded.as_ref().map(|(s, _)| s.as_str()) {
        None => "replica starting for the first time".to_string(),
        Some("Disabled") => panic!("{at}: a killed run recorded a clean stop"),
        Some(s) => format!("replica starting after an unclean end (last recorded state: {s})"),
    };
    assert_eq!(
        (
            first.from.as_str(),
            first.to.as_str(),
            first.reason.as_str()
        ),
        ("Disabled", "Initializing", expected_start.as_str()),
        "{at}: first transition of the restart"
    );
    // Recorded with the first in one state store write.
    let second = new
        .get(1)
        .unwrap_or_else(|| panic!("{at}: Initializing recorded alone: {new:?}"));
    assert_eq!(second.from, "Initializing", "{at}: {new:?}");
    assert_eq!(
        second.applied, before.applied,
        "{at}: the restart did not resume at applied commit {}",
        before.applied
    );
    let recovered = match before.received_beyond_applied() {
        Some(received) => {
            assert_eq!(
                (second.to.as_str(), second.reason.clone()),
                (
                    "Recovering",
                    format!(
                        "commits {}..={received} were received but not applied before the restart; re-validating them",
                        before.applied + 1
                    )
                ),
                "{at}: restart with unapplied segments"
            );
            true
        }
        None => {
            assert_eq!(
                (second.to.as_str(), second.reason.clone()),
                (
                    "ReceivingWAL",
                    format!(
                        "started at applied commit {} (WAL offset {})",
                        before.applied, before.applied_wal_offset
                    )
                ),
                "{at}: restart with nothing unapplied"
            );
            false
        }
    };
    Some(Restart {
        unclean: before.recorded.is_some(),
        recovered,
    })
}

/// `applied commit N (WAL offset O); state S` -> N.
fn applied_in(line: &str) -> Option<i64> {
    line.strip_prefix("applied commit ")?
        .split_once(' ')?
        .0
        .parse()
        .ok()
}

fn replica_command(primary: &Path, replica: &Path, log: &File) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_aerodb"));
    c.arg("replica")
        .arg("--primary")
        .arg(primary)
        .arg("--replica")
        .arg(replica)
        .args(["--segment-bytes", SEGMENT_BYTES])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log.try_clone().expect("log handle")));
    c
}

#[test]
fn sigkill_of_the_threaded_replica_recovers_losing_nothing_and_applying_nothing_twice() {
    let seed = match std::env::var("AERODB_SEED") {
        Ok(s) => s.parse().expect("AERODB_SEED is a u64"),
        Err(_) => DEFAULT_SEED,
    };
    eprintln!("kill points seeded with {seed} (replay: AERODB_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = dir.path().join("primary.db");
    let replica = dir.path().join("replica.db");
    let log_path = dir.path().join("aerodb-stderr.log");
    let log = File::create(&log_path).expect("log file");
    let stderr_of_runs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    write_backlog(&primary, BACKLOG);
    let head = BACKLOG + 1;

    let mut before = Observed::default();
    let mut kills = 0;
    let mut kills_with_unapplied = 0;
    let mut kills_with_validated = 0;
    let mut restarts_unclean = 0;
    let mut recoveries = 0;
    while kills < MAX_KILLS && before.applied < head {
        let at = format!("kill {} (seed {seed})", kills + 1);
        let mut child = replica_command(&primary, &replica, &log)
            .stdin(Stdio::piped())
            .spawn()
            .expect("aerodb starts");
        // Kept open: the replica runs until stdin closes or it is killed.
        let stdin = child.stdin.take().expect("stdin piped");
        let stdout = child.stdout.take().expect("stdout piped");
        // The first run reads at least one line: the replica file exists
        // (made a replica) once the first line is printed.
        let min = u64::from(kills == 0);
        let kill_after = min + rng.up_to(MAX_LINES_BEFORE_KILL - min);
        let mut lines = BufReader::new(stdout).lines();
        let mut read = Vec::new();
        while (read.len() as u64) < kill_after {
            let Some(line) = lines.next() else {
                let status = child.wait().expect("exit");
                panic!(
                    "{at}: aerodb replica ended on its own ({status}) after {read:?}; stderr: {}",
                    stderr_of_runs()
                );
            };
            let line = line.expect("utf-8 output");
            let caught_up = applied_in(&line).is_some_and(|n| n >= head);
            read.push(line);
            // Caught up: it may print nothing more.
            if caught_up {
                break;
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        drop(stdin);
        kills += 1;

        let after = observe(&replica);
        check_consistent(&after, &at);
        // Whatever state the killed runtime recorded last, the gate knows
        // nothing runs: a read needing the next commit is NOT_STARTED.
        {
            let conn = Connection::open_with_flags(&replica, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open replica");
            let d = storage_adapter::runtime::read_gate_in(
                &conn,
                Some(replication::wal::CommitId(after.applied as u64 + 1)),
            );
            assert_eq!(d.code.as_str(), "NOT_STARTED", "{at}: {d}");
        }
        assert!(
            after.applied >= before.applied,
            "{at}: applied commit went back from {} to {}",
            before.applied,
            after.applied
        );
        if after.unapplied().next().is_some() {
            kills_with_unapplied += 1;
        }
        if after.segments.iter().any(|s| s.state == "Validated") {
            kills_with_validated += 1;
        }
        if let Some(r) = check_restart(&before, &after, &at) {
            restarts_unclean += usize::from(r.unclean);
            recoveries += usize::from(r.recovered);
        }
        before = after;
    }

    // The last run catches up and stops by itself.
    let at = format!("final run (seed {seed})");
    let mut child = replica_command(&primary, &replica, &log)
        .arg("--until-caught-up")
        .stdin(Stdio::null())
        .spawn()
        .expect("aerodb starts");
    let output: Vec<String> = BufReader::new(child.stdout.take().expect("stdout piped"))
        .lines()
        .collect::<Result<_, _>>()
        .expect("utf-8 output");
    let status = child.wait().expect("exit");
    assert!(
        status.success(),
        "{at}: {status}; output {output:?}; stderr: {}",
        stderr_of_runs()
    );
    assert_eq!(
        output.last().map(String::as_str),
        Some(format!("stopped: applied commit {head}; state Disabled").as_str()),
        "{at}: output {output:?}"
    );
    let after = observe(&replica);
    check_consistent(&after, &at);
    let r = check_restart(&before, &after, &at).expect("the final run recorded its start");
    assert!(
        r.unclean,
        "{at}: the last kill was not recorded as an unclean end"
    );
    restarts_unclean += 1;
    recoveries += usize::from(r.recovered);
    assert_eq!(after.applied, head, "{at}");
    let primary_rows = table_t(
        &Connection::open_with_flags(&primary, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open primary"),
    );
    assert_eq!(
        primary_rows,
        model_at(head),
        "the model is the primary's table"
    );
    assert_eq!(
        after.rows, primary_rows,
        "{at}: replica differs from the primary"
    );
    let unapplied: Vec<_> = after.unapplied().collect();
    assert!(unapplied.is_empty(), "{at}: not Applied: {unapplied:?}");
    let last = after.transitions.last().expect("transitions recorded");
    assert_eq!(
        (last.to.as_str(), last.reason.as_str()),
        ("Disabled", "stopped by the application"),
        "{at}"
    );
    let recovering_recorded = after
        .transitions
        .iter()
        .filter(|t| {
            t.from == "Initializing"
                && t.to == "Recovering"
                && t.reason.ends_with(
                    "were received but not applied before the restart; re-validating them",
                )
        })
        .count();

    eprintln!(
        "kill points: {kills} (replica at commit {} of {head} after the last); with received-but-unapplied segments persisted: {kills_with_unapplied} \
         (with Validated ones: {kills_with_validated}); restarts recorded as unclean: {restarts_unclean}; \
         restarts that re-validated: {recoveries} ({recovering_recorded} Recovering transitions in the history); \
         backlog {BACKLOG} commits in segments of ~{SEGMENT_BYTES} bytes",
        before.applied
    );
    assert!(kills >= MIN_KILLS, "only {kills} kill points");
    assert!(
        kills_with_unapplied > 0,
        "no kill landed with received-but-unapplied segments: recovery was not exercised"
    );
    assert!(recoveries > 0, "no restart went Initializing -> Recovering");
    assert!(recovering_recorded > 0);
    // Last, so that every check above has run: the history's claims.
    let violations = recorded_progress_violations(&after);
    assert!(
        violations.is_empty(),
        "{} of {} recorded transitions claim a progress the replica never had; first ones:\n{}",
        violations.len(),
        after.transitions.len(),
        violations[..violations.len().min(5)].join("\n")
    );
}
