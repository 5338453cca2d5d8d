//! The Replica State Store (spec 5.5) on SQLite: the Supervisor's writes
//! (transitions, global state, segment Validated / Rejected, component
//! statuses) and the store's own crash recovery at open (torn-state checks,
//! Validated-but-unapplied segments back to Received).
//!
//! Mutated only by the Supervisor (through this type) and, scoped to its
//! apply transaction, the Applier (`ReplicaDb::apply` /
//! `install_snapshot`): rule T2. Tables: `sql/replica.sql`.

use crate::replica::{read_position, stored_segment_state};
use crate::runtime::{apply_failure, sql, WriteTurn, KEEP_APPLIED_SEGMENTS, KEEP_TRANSITIONS};
use replication::runtime::FailureCode;
use replication::runtime::{Component, ComponentStatus, Failure, StateStore, StoreOp, StoredState};
use replication::state::{check_segment, SegmentState};
use replication::wal::{CommitId, WalOffset};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// The state store on one connection to the replica file.
pub(crate) struct SqliteStateStore {
    conn: Connection,
    records: u64,
    lock: WriteTurn,
}

impl SqliteStateStore {
    pub(crate) fn new(conn: Connection, lock: WriteTurn) -> SqliteStateStore {
        SqliteStateStore {
            conn,
            records: 0,
            lock,
        }
    }
}

fn torn(reason: String) -> Failure {
    Failure::new(FailureCode::TornState, reason)
}

impl StateStore for SqliteStateStore {
    fn open(&mut self) -> Result<StoredState, Failure> {
        let _writing = self.lock.hold();
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(sql("beginning the state store's recovery"))?;
        let applied = read_position(&tx).map_err(apply_failure)?.ok_or_else(|| {
            Failure::new(FailureCode::NotReplica, "the database is not a replica")
        })?;
        let a = applied.commit_id.0 as i64;
        let bad: Option<(i64, i64, String)> = tx
            .query_row(
                "SELECT first_commit_id, last_commit_id, state FROM aerodb_replica_segments WHERE (state = 'Applied' AND last_commit_id > ?1) OR (state <> 'Applied' AND first_commit_id <= ?1) LIMIT 1",
                [a],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(sql("checking segment states"))?;
        if let Some((f, l, s)) = bad {
            return Err(torn(format!(
                "segment {f}..={l} is {s}, but the replica's applied commit is {a}: the state store contradicts itself"
            )));
        }
        // Raw bytes exist exactly for the unapplied WAL segments.
        let bytes_wrong: Option<(i64, String)> = tx
            .query_row(
                "SELECT s.first_commit_id, s.state FROM aerodb_replica_segments s LEFT JOIN aerodb_replica_segment_bytes b ON b.first_commit_id = s.first_commit_id WHERE (s.state <> 'Applied' AND s.snapshot_path IS NULL AND b.bytes IS NULL) OR (s.state = 'Applied' AND b.bytes IS NOT NULL) LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql("checking segment bytes"))?;
        if let Some((f, state)) = bytes_wrong {
            return Err(torn(format!(
                "segment starting at commit {f} is {state} but its raw bytes are {}",
                if state == "Applied" {
                    "still stored"
                } else {
                    "missing"
                }
            )));
        }
        // Unapplied segments must continue the applied position, contiguous.
        let mut received = applied.commit_id;
        {
            let mut stmt = tx
                .prepare(
                    "SELECT first_commit_id, last_commit_id FROM aerodb_replica_segments WHERE first_commit_id > ?1 ORDER BY first_commit_id",
                )
                .map_err(sql("listing unapplied segments"))?;
            let rows = stmt
                .query_map([a], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .map_err(sql("listing unapplied segments"))?;
            for row in rows {
                let (f, l) = row.map_err(sql("listing unapplied segments"))?;
                if f as u64 != received.0 + 1 {
                    return Err(torn(format!(
                        "persisted segment {f}..={l} does not follow commit {received}: commits between them are missing from the state store"
                    )));
                }
                received = CommitId(l as u64);
            }
        }
        let revalidate =
            tx.execute(
                "UPDATE aerodb_replica_segments SET state = 'Received' WHERE state = 'Validated'",
                [],
            )
            .map_err(sql("moving Validated segments back to Received"))? as u64;
        let previous_state: Option<String> = tx
            .query_row(
                "SELECT global_state FROM aerodb_replica_state WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("reading the recorded state"))?;
        let components = read_components(&tx).map_err(sql("reading component statuses"))?;
        tx.commit()
            .map_err(sql("committing the state store's recovery"))?;
        Ok(StoredState {
            applied,
            received,
            previous_state,
            revalidate,
            components,
        })
    }

    fn record(&mut self, ops: &[StoreOp]) -> Result<(), Failure> {
        let _writing = self.lock.hold();
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(sql("beginning a state store write"))?;
        for op in ops {
            match op {
                StoreOp::Transition(t) => {
                    tx.prepare_cached(
                        "INSERT INTO aerodb_replica_transitions(at_unix_ms, from_state, to_state, reason, received_commit_id, validated_commit_id, applied_commit_id, applied_wal_offset) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            t.at_unix_ms,
                            t.from,
                            t.to,
                            t.reason,
                            t.progress.received.0 as i64,
                            t.progress.validated.0 as i64,
                            t.progress.applied.0 as i64,
                            t.applied_wal_offset.0 as i64
                        ])
                    })
                    .map_err(sql("recording a transition"))?;
                    let seq = tx.last_insert_rowid();
                    tx.prepare_cached(
                        // A block stays recorded until the replica is Ready and
                        // read-safe again (a successful resume): stopping,
                        // crashing or restarting does not lift it.
                        "INSERT OR REPLACE INTO aerodb_replica_state(id, global_state, read_status, blocking_code, blocking_reason, received_commit_id, validated_commit_id, last_transition_seq) \
                         SELECT 1, ?1, ?2, \
                           CASE WHEN ?7 IS NOT NULL OR ?1 = 'Ready' THEN ?7 ELSE (SELECT blocking_code FROM aerodb_replica_state WHERE id = 1) END, \
                           CASE WHEN ?7 IS NOT NULL OR ?1 = 'Ready' THEN ?3 ELSE (SELECT blocking_reason FROM aerodb_replica_state WHERE id = 1) END, \
                           ?4, ?5, ?6",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            t.to_kind,
                            t.read_status,
                            t.blocking_reason,
                            t.progress.received.0 as i64,
                            t.progress.validated.0 as i64,
                            seq,
                            t.blocking_code
                        ])
                    })
                    .map_err(sql("recording the global state"))?;
                }
                StoreOp::Segment {
                    first,
                    last,
                    wal_offset,
                    end_wal_offset,
                    to,
                } => {
                    // Each move goes through the segment state machine and
                    // must change exactly one row.
                    let reason = match to {
                        SegmentState::Rejected { reason } => Some(reason.as_str()),
                        _ => None,
                    };
                    let illegal = |what: String| {
                        Failure::new(
                            FailureCode::IllegalTransition,
                            format!("segment {first}..={last}: {what}"),
                        )
                        .at(*first, *last)
                    };
                    let current = match stored_segment_state(&tx, *first, *last)
                        .map_err(sql("reading a segment state"))?
                    {
                        Some(state) => state,
                        // Only Applied rows are pruned (the newest
                        // KEEP_APPLIED_SEGMENTS stay): one the position has
                        // passed was applied, and pruned before this record.
                        None if read_position(&tx)
                            .map_err(apply_failure)?
                            .is_some_and(|p| p.commit_id >= *last) =>
                        {
                            SegmentState::Applied
                        }
                        None => return Err(illegal("it is not in the state store".into())),
                    };
                    if current == SegmentState::Applied && *to == SegmentState::Validated {
                        // The Applier's transaction recorded the validation
                        // with the apply (it applies only what the Validator
                        // proved): nothing is left to move.
                        continue;
                    }
                    // A restart re-validates a Rejected segment (its bytes
                    // are kept) and rejects it again: not a move, the same
                    // state observed again, its reason rewritten.
                    let again = matches!(
                        (&current, to),
                        (SegmentState::Rejected { .. }, SegmentState::Rejected { .. })
                    );
                    if !again {
                        check_segment(&current, to).map_err(|e| illegal(e.to_string()))?;
                    }
                    let moved = tx
                        .prepare_cached(
                            "UPDATE aerodb_replica_segments SET state = ?3, reason = ?4, first_wal_offset = coalesce(?5, first_wal_offset), end_wal_offset = coalesce(?6, end_wal_offset) WHERE first_commit_id = ?1 AND last_commit_id = ?2 AND state = ?7",
                        )
                        .and_then(|mut s| {
                            s.execute(params![
                                first.0 as i64,
                                last.0 as i64,
                                to.as_str(),
                                reason,
                                wal_offset.map(|o| o.0 as i64),
                                end_wal_offset.map(|o| o.0 as i64),
                                current.as_str()
                            ])
                        })
                        .map_err(sql("recording a segment state"))?;
                    if moved != 1 {
                        return Err(illegal(format!(
                            "moving it from {} to {} changed {moved} rows, not 1",
                            current.as_str(),
                            to.as_str()
                        )));
                    }
                }
                StoreOp::SourceHead { head } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO aerodb_replica_source(id, head_commit_id, at_unix_ms) VALUES (1, ?1, ?2)",
                    )
                    .and_then(|mut s| s.execute(params![head.0 as i64, crate::wall_clock::now_ms()]))
                    .map_err(sql("recording the source's head"))?;
                }
                StoreOp::Discard { from } => {
                    // Only Received segments are discarded (a damaged stored
                    // copy and what was received after it).
                    let not_received: Option<(i64, String)> = tx
                        .query_row(
                            "SELECT first_commit_id, state FROM aerodb_replica_segments WHERE first_commit_id >= ?1 AND state <> 'Received' ORDER BY first_commit_id LIMIT 1",
                            [from.0 as i64],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()
                        .map_err(sql("checking the segments to discard"))?;
                    if let Some((f, state)) = not_received {
                        return Err(Failure::new(FailureCode::IllegalTransition,
                            format!("discarding segments from commit {from}: the segment starting at commit {f} is {state}; only Received segments are discarded"),
                        ));
                    }
                    tx.execute(
                        "DELETE FROM aerodb_replica_segment_bytes WHERE first_commit_id >= ?1",
                        [from.0 as i64],
                    )
                    .map_err(sql("discarding stored segment bytes"))?;
                    let gone = tx
                        .execute(
                            "DELETE FROM aerodb_replica_segments WHERE first_commit_id >= ?1",
                            [from.0 as i64],
                        )
                        .map_err(sql("discarding stored segments"))?;
                    if gone == 0 {
                        return Err(Failure::new(
                            FailureCode::IllegalTransition,
                            format!("discarding segments from commit {from}: none is stored"),
                        ));
                    }
                }
                StoreOp::Component(c) => {
                    let e = c.last_error.as_ref();
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO aerodb_replica_components(component, state, blocking_reason, last_transition, error_code, error, error_first_commit_id, error_last_commit_id, error_wal_offset, error_expected, error_actual) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            c.component.as_str(),
                            c.state,
                            c.blocking_reason,
                            c.last_transition,
                            e.map(|e| e.code.as_str()),
                            e.map(|e| e.reason.as_str()),
                            e.and_then(|e| e.segment).map(|s| s.0 .0 as i64),
                            e.and_then(|e| e.segment).map(|s| s.1 .0 as i64),
                            e.and_then(|e| e.wal_offset).map(|o| o.0 as i64),
                            e.and_then(|e| e.expected.as_deref()),
                            e.and_then(|e| e.actual.as_deref())
                        ])
                    })
                    .map_err(sql("recording a component status"))?;
                }
            }
        }
        self.records += 1;
        if self.records.is_multiple_of(64) {
            // Retention: the newest rows of each history are kept.
            tx.execute(
                "DELETE FROM aerodb_replica_transitions WHERE seq <= (SELECT max(seq) FROM aerodb_replica_transitions) - ?1",
                [KEEP_TRANSITIONS],
            )
            .map_err(sql("pruning old transitions"))?;
            tx.execute(
                "DELETE FROM aerodb_replica_segments WHERE state = 'Applied' AND first_commit_id < (SELECT first_commit_id FROM aerodb_replica_segments WHERE state = 'Applied' ORDER BY first_commit_id DESC LIMIT 1 OFFSET ?1)",
                [KEEP_APPLIED_SEGMENTS],
            )
            .map_err(sql("pruning old applied segments"))?;
        }
        tx.commit().map_err(sql("committing a state store write"))
    }
}

fn read_components(conn: &Connection) -> rusqlite::Result<Vec<ComponentStatus>> {
    let mut stmt = conn.prepare(
        "SELECT component, state, blocking_reason, last_transition, error_code, error, error_first_commit_id, error_last_commit_id, error_wal_offset, error_expected, error_actual FROM aerodb_replica_components",
    )?;
    let rows = stmt.query_map([], |r| {
        let name: String = r.get(0)?;
        let code: Option<String> = r.get(4)?;
        let first: Option<i64> = r.get(6)?;
        let last: Option<i64> = r.get(7)?;
        let last_error = match code {
            Some(text) => Some(Failure {
                code: FailureCode::parse(&text).unwrap_or(FailureCode::Unrecognized),
                reason: {
                    let reason = r.get::<_, Option<String>>(5)?.unwrap_or_default();
                    // A code another version recorded keeps its text.
                    match FailureCode::parse(&text) {
                        Some(_) => reason,
                        None => format!("{text}: {reason}"),
                    }
                },
                segment: first
                    .zip(last)
                    .map(|(f, l)| (CommitId(f as u64), CommitId(l as u64))),
                wal_offset: r.get::<_, Option<i64>>(8)?.map(|o| WalOffset(o as u64)),
                expected: r.get(9)?,
                actual: r.get(10)?,
            }),
            None => None,
        };
        Ok(Component::parse(&name).map(|component| ComponentStatus {
            component,
            state: r.get(1).unwrap_or_default(),
            blocking_reason: r.get(2).unwrap_or_default(),
            last_transition: r.get(3).unwrap_or_default(),
            last_error,
        }))
    })?;
    let mut out = Vec::new();
    for row in rows {
        out.extend(row?);
    }
    Ok(out)
}
