//! The runtime's segment rows as the Applier moves them, inside its apply
//! transaction (spec 6.2, M3: checked by the segment state machine).

use super::{sql_err, ApplyError};
use replication::state::{check_segment, SegmentState};
use replication::wal::{ChainPosition, CommitId, WalOffset};
use rusqlite::{params, Connection, OptionalExtension};

/// Moves the runtime's item `first..=last` (a segment or a snapshot) from
/// Received or Validated to Applied, inside the transaction that applied
/// it, and drops its raw bytes. An item the Receiver did not persist, or
/// one already Applied or Rejected, refuses the whole transaction.
pub(crate) fn mark_applied(
    tx: &Connection,
    (first, last): (CommitId, CommitId),
    start: WalOffset,
    end: ChainPosition,
) -> Result<(), ApplyError> {
    // The move is checked by the segment state machine. A segment the
    // Validator proved may still be recorded Received (the Supervisor
    // records Validated from the Validator's event, concurrently): this
    // transaction then records both moves, each checked, and the
    // Supervisor's later Validated finds it Applied.
    let current = stored_segment_state(tx, first, last)
        .map_err(sql_err("reading the item's state", Some(end.commit_id)))?
        .ok_or(ApplyError::SegmentNotReceived { first, last })?;
    let checked = match &current {
        SegmentState::Received => check_segment(&current, &SegmentState::Validated)
            .and_then(|()| check_segment(&SegmentState::Validated, &SegmentState::Applied)),
        other => check_segment(other, &SegmentState::Applied),
    };
    checked.map_err(|e| ApplyError::IllegalSegmentMove {
        first,
        last,
        error: e.to_string(),
    })?;
    let marked = tx
        .prepare_cached(
            "UPDATE main.aerodb_replica_segments SET state = 'Applied', first_wal_offset = ?3, end_wal_offset = ?4 WHERE first_commit_id = ?1 AND last_commit_id = ?2 AND state = ?5",
        )
        .and_then(|mut s| {
            s.execute(params![
                first.0 as i64,
                last.0 as i64,
                start.0 as i64,
                end.wal_offset.0 as i64,
                current.as_str()
            ])
        })
        .map_err(sql_err("marking the item Applied", Some(end.commit_id)))?;
    if marked != 1 {
        return Err(ApplyError::IllegalSegmentMove {
            first,
            last,
            error: format!(
                "moving it from {} to Applied changed {marked} rows, not 1",
                current.as_str()
            ),
        });
    }
    tx.prepare_cached("DELETE FROM main.aerodb_replica_segment_bytes WHERE first_commit_id = ?1")
        .and_then(|mut s| s.execute([first.0 as i64]))
        .map_err(sql_err(
            "dropping the applied item's bytes",
            Some(end.commit_id),
        ))?;
    Ok(())
}

/// The recorded state of segment (or snapshot item) `first..=last`;
/// `None` if the state store has no such row. A name no state has reads
/// as an error (a state store written by something else).
pub(crate) fn stored_segment_state(
    conn: &Connection,
    first: CommitId,
    last: CommitId,
) -> rusqlite::Result<Option<SegmentState>> {
    let row: Option<(String, Option<String>)> = conn
        .prepare_cached(
            "SELECT state, reason FROM main.aerodb_replica_segments WHERE first_commit_id = ?1 AND last_commit_id = ?2",
        )?
        .query_row(params![first.0 as i64, last.0 as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    row.map(|(name, reason)| {
        SegmentState::from_stored(&name, reason.as_deref()).ok_or_else(|| {
            rusqlite::Error::InvalidColumnType(
                0,
                format!("segment state '{name}'"),
                rusqlite::types::Type::Text,
            )
        })
    })
    .transpose()
}
