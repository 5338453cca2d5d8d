//! Writing a transaction's record at commit (`xSync` of the capture
//! table), inside the committing transaction: CommitId, the record's
//! changes from the touched keys' final rows, and its seal (CRC and chained
//! checksum), all in one place so readers only verify.
//!
//! The changes of a record come in this order, which the replica applies
//! one by one (rule P1; DESIGN 4):
//! 1. pre-encoded changes: schema records and the rows they carry;
//! 2. `Delete` of every touched key that existed before the transaction
//!    and must go first: it has no row at the end, or its table has UNIQUE
//!    constraints besides the key (its old values could collide with
//!    another final row);
//! 3. `Discard` of keys without a final row whose existence before is
//!    unknown (a REPLACE over an existing key fires no delete trigger; in
//!    tables with other UNIQUE constraints the BEFORE triggers probe the
//!    key, so there a new key is known to be new);
//! 4. the final rows: `Update` of a key that existed (the replica must have
//!    it), `Insert` of the others (insert, or replace the row of the same
//!    key).
//!
//! Deletes come first, so no transient UNIQUE conflict can arise on the
//! replica, whatever order the primary's statements ran in.

mod changes;
mod statements;

use changes::{build_changes, Changes};
use statements::kept;
pub(crate) use statements::Statements;

use super::{sqlite, CaptureError, ConnState};
use crate::primary_wal::MAX_COMMIT_ID;
use crate::raw::{RawConn, Stmt};
use replication::wal::{CommitId, Generation, RecordEncoder, RecordSeal, MAX_RECORD_BYTES};
use rusqlite::types::ValueRef;

/// Writes and seals the open transaction's record, if it changed anything
/// replicated (no CommitId otherwise). Called once per commit attempt. A
/// transaction that spilled always ends with a record, possibly of no
/// changes: its spilled records continue into it.
pub(crate) fn write_record(
    conn: RawConn,
    stmts: &mut Statements,
    state: &mut ConnState,
) -> Result<(), CaptureError> {
    if let Some(c) = state.written.take() {
        // A commit that failed after the sync (SQLITE_BUSY) is being
        // retried: the transaction may have changed since. Write it anew
        // (its spilled records stand: they are the transaction's data).
        conn.execute(
            "DELETE FROM main.aerodb_commits WHERE commit_id >= ?1",
            &[ValueRef::Integer(c.0 as i64)],
        )
        .map_err(sqlite("rewriting a retried commit's record"))?;
    }
    if let Some((_, error)) = &state.poisoned {
        return Err(CaptureError::Uncaptured(error.clone()));
    }
    if let Some((table, trigger)) = &state.unsafe_at_begin {
        return Err(CaptureError::UnsafeTrigger {
            table: table.clone(),
            trigger: trigger.clone(),
        });
    }
    let Some(generation) = state.tx_generation else {
        // Nothing captured: still refused if a trigger could have skipped
        // a capture (the capture table joined: a replicated table was
        // written).
        let version = match stmts.head(conn, Generation(0)) {
            Ok((_, version)) => version,
            // Not a primary (a statement wrote aerodb_capture itself).
            Err(CaptureError::Sqlite { source, .. })
                if source.message.contains("no such table") =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        return stmts.check_tables(conn, &state.buffer, version);
    };
    if state.buffer.is_empty() && state.buffer.spills() == 0 {
        return Ok(());
    }
    if let Some(commit_id) = write_part(conn, stmts, state, generation, false)? {
        state.written = Some(commit_id);
    }
    Ok(())
}

/// A trigger that can skip capture on a replicated table, as the schema is
/// now: (table, trigger). `None` on a database that is not a primary, and
/// for any other problem (the commit finds those).
pub(crate) fn unsafe_trigger(conn: RawConn, stmts: &mut Statements) -> Option<(String, String)> {
    // The descriptions the commit checks, when the schemas have not
    // changed since; else read them once more here, leaving the commit's
    // to the commit.
    if let Some(found) = stmts.unsafe_trigger_now(conn) {
        return found;
    }
    // Not a primary (no registry): nothing to find.
    crate::capture::tables::registered(conn)
        .ok()?
        .into_iter()
        .find_map(|t| t.raises_first.map(|trigger| (t.name, trigger)))
}

/// Where a spill is asked for: whether every change made so far has been
/// seen by a capture trigger there decides whether the buffer may be
/// written out at that point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpillPoint {
    /// A savepoint opens: a statement starts, or `SAVEPOINT` runs. Every
    /// earlier statement has finished.
    Savepoint,
    /// A row event of an AFTER capture trigger, in the middle of a
    /// statement: a change can still be waiting for its own capture
    /// trigger when a trigger that fires before it, or a foreign key
    /// action, writes a replicated table.
    Row,
    /// `aerodb_replicate` reading the rows of a table (no statement of the
    /// connection is writing).
    Replicate,
}

/// Writes the buffer out as records that continue, when that is safe at
/// `point` (see [`SpillPoint`]). When it is not, the buffer keeps growing
/// until the next safe point.
pub(crate) fn spill(
    conn: RawConn,
    stmts: &mut Statements,
    state: &mut ConnState,
    point: SpillPoint,
) -> Result<(), CaptureError> {
    let Some(generation) = state.tx_generation.filter(|_| state.poisoned.is_none()) else {
        // Nothing captured, or a transaction the commit will refuse.
        return Ok(());
    };
    let writers = match point {
        SpillPoint::Savepoint | SpillPoint::Row => 1,
        SpillPoint::Replicate => 0,
    };
    let mut unsafe_here = (conn.busy_writers() > writers)
        .then(|| "a statement runs nested in another one".to_owned());
    if unsafe_here.is_none() && point == SpillPoint::Row {
        let (_, version) = stmts.head(conn, generation)?;
        stmts
            .check_tables(conn, &state.buffer, version)
            .inspect_err(|e| refuse_commit(state, e))?;
        unsafe_here = stmts.nesting(conn)?;
    }
    if let Some(reason) = unsafe_here {
        // Wait for a safe point: a later row, a statement boundary or the
        // commit (which writes any amount in parts). Until then the buffer
        // grows past its chunk.
        tracing::debug!(
            reason,
            bytes = state.buffer.bytes(),
            "capture buffer not spilled here"
        );
        state.spill_at = state.buffer.bytes() + state.chunk_bytes;
        return Ok(());
    }
    if write_part(conn, stmts, state, generation, true)
        .inspect_err(|e| refuse_commit(state, e))?
        .is_some()
    {
        state.buffer.spilled();
    }
    state.spill_at = state.buffer.bytes() + state.chunk_bytes;
    Ok(())
}

/// A spill found that the transaction cannot commit (a replicated table it
/// wrote changed shape, or a trigger can skip capture): the commit would
/// have refused it, so the commit still does, whatever the statement that
/// found it does next.
fn refuse_commit(state: &mut ConnState, e: &CaptureError) {
    if matches!(
        e,
        CaptureError::CaptureBroken { .. } | CaptureError::UnsafeTrigger { .. }
    ) && state.poisoned.is_none()
    {
        state.poisoned = Some((None, e.to_string()));
    }
}

/// Builds, seals and writes the open transaction's changes from its
/// buffer: one record, or several once they outgrow [`PART_BYTES`]; the
/// last continues when `continues`. Returns the first CommitId written,
/// `None` when there was nothing to write (only unchanged REPLACE
/// candidates; a commit that follows spills still writes its last record).
fn write_part(
    conn: RawConn,
    stmts: &mut Statements,
    state: &mut ConnState,
    generation: Generation,
    continues: bool,
) -> Result<Option<CommitId>, CaptureError> {
    let (start, version) = stmts.head(conn, generation)?;
    stmts.check_tables(conn, &state.buffer, version)?;
    let mut parts = Parts {
        encoder: RecordEncoder::new(start),
        next: start.commit_id.next(),
        first: None,
        table: state.buffer.tables.first().cloned().unwrap_or_default(),
    };
    let mut changes = std::mem::take(&mut stmts.changes);
    changes.clear();
    let r = build_changes(conn, stmts, &state.buffer, &mut changes, &mut parts).and_then(|()| {
        let end = !continues && (parts.first.is_some() || state.buffer.spills() > 0);
        if changes.count > 0 || end {
            parts.write(conn, &mut stmts.insert_record, &mut changes, continues)?;
        }
        Ok(parts.first)
    });
    changes.clear();
    if changes.framed.capacity() <= KEPT_SCRATCH_BYTES {
        stmts.changes = changes;
    }
    r
}

/// One write's records are cut once their changes reach this many bytes,
/// so no record nears the limit and the writer holds at most about this
/// much of them at a time.
const PART_BYTES: usize = MAX_RECORD_BYTES / 4;

/// The records one write (a spill or the commit) makes.
struct Parts {
    encoder: RecordEncoder,
    next: CommitId,
    first: Option<CommitId>,
    /// A table for messages.
    table: String,
}

impl Parts {
    /// Seals `changes` as the next record, writes it and empties `changes`.
    fn write(
        &mut self,
        conn: RawConn,
        insert: &mut Option<Stmt<'static>>,
        changes: &mut Changes,
        continues: bool,
    ) -> Result<(), CaptureError> {
        let commit_id = self.next;
        if commit_id.0 > MAX_COMMIT_ID {
            return Err(CaptureError::CommitIdOverflow(commit_id));
        }
        let seal = self
            .encoder
            .seal_part_in_place(commit_id, changes.count, continues, &mut changes.framed)
            .map_err(|source| CaptureError::Encode {
                table: self.table.clone(),
                source,
            })?;
        insert_record(conn, insert, commit_id, &seal, &changes.framed)?;
        self.first.get_or_insert(commit_id);
        self.next = commit_id.next();
        changes.clear();
        Ok(())
    }

    /// Writes `changes` out as a record that continues once they are
    /// [`PART_BYTES`] or more.
    fn cut(
        &mut self,
        conn: RawConn,
        insert: &mut Option<Stmt<'static>>,
        changes: &mut Changes,
    ) -> Result<(), CaptureError> {
        if changes.framed.len() >= PART_BYTES {
            self.write(conn, insert, changes, true)?;
        }
        Ok(())
    }
}

/// Refuses when an attached database (names joined by char(30)) is a
/// primary of the main database's generation.
fn check_attached(conn: RawConn, attached: &str) -> Result<(), CaptureError> {
    let generation = |schema: &str| -> Option<i64> {
        conn.query_value(
            &format!(
                "SELECT value FROM {}.aerodb_meta WHERE key = 'generation'",
                crate::table_info::quote_ident(schema)
            ),
            &[],
        )
        .ok()
        .flatten()
        .and_then(|v| v.as_i64())
    };
    let Some(main) = generation("main") else {
        return Ok(());
    };
    for schema in attached.split('\u{1e}') {
        if generation(schema) == Some(main) {
            return Err(CaptureError::CopyAttached {
                schema: schema.to_owned(),
            });
        }
    }
    Ok(())
}

/// Scratch buffers larger than this are not kept between commits.
const KEPT_SCRATCH_BYTES: usize = 1 << 20;

/// Writes the record and its seal: one `aerodb_commits` row.
fn insert_record(
    conn: RawConn,
    insert: &mut Option<Stmt<'static>>,
    commit_id: CommitId,
    seal: &RecordSeal,
    bytes: &[u8],
) -> Result<(), CaptureError> {
    let s = kept(
        insert,
        conn,
        "INSERT INTO main.aerodb_commits(commit_id, wal_offset, length, change_count, prev_chain, chain, crc, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let values = [
        commit_id.0 as i64,
        seal.wal_offset.0 as i64,
        bytes.len() as i64,
        i64::from(seal.change_count),
        i64::from(seal.prev_chain),
        i64::from(seal.chain),
        i64::from(seal.crc),
    ];
    let r = values
        .iter()
        .enumerate()
        .try_for_each(|(i, v)| s.bind(i + 1, ValueRef::Integer(*v)))
        // SAFETY: `bytes` outlives the step and the reset below.
        .and_then(|()| unsafe { s.bind_blob_static(8, bytes) })
        .and_then(|()| s.step().map(|_| ()));
    s.reset();
    // No binding may outlive `bytes`.
    s.clear_bindings();
    r.map_err(sqlite("writing the WAL record"))
}
