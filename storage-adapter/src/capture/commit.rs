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

use super::buffer::{Known, TxBuffer};
use super::tables::{self, TableInfo};
use super::{sqlite, CaptureError, ConnState};
use crate::primary_wal::MAX_COMMIT_ID;
use crate::raw::{RawConn, Stmt};
use replication::wal::{
    decode_value_list, encode_change_header, encode_count, encode_value, ChainPosition, CommitId,
    EncodeError, Generation, Operation, RecordEncoder, RecordSeal, ValueRef as WalValue, WalOffset,
    MAX_RECORD_BYTES, RECORD_HEADER_LEN,
};
use rusqlite::types::ValueRef;
use std::collections::HashMap;
use std::rc::Rc;

/// Statements the commit runs, kept by the capture table for the life of
/// the connection's schema (see `vtab.rs`).
#[derive(Default)]
pub(crate) struct Statements {
    head: Option<Stmt<'static>>,
    journal_mode: Option<Stmt<'static>>,
    database_list: Option<Stmt<'static>>,
    insert_record: Option<Stmt<'static>>,

    /// Replicated tables as the registry and schema describe them, read
    /// when the head statement had been prepared `tables_at` times again.
    tables: HashMap<String, TableCommit>,
    /// A foreign key with an action whose parent is a replicated table
    /// (read with `tables`): while `foreign_keys` is on, its action writes
    /// before the change that caused it reaches its capture trigger.
    cascade: Option<String>,
    /// A user trigger on a replicated table (read with `tables`): a BEFORE
    /// one can write a row that the REPLACE its statement is about to do
    /// deletes without a trigger, and one that fires before capture can
    /// write while a change waits for its capture trigger.
    user_trigger: Option<String>,
    tables_at: Option<i32>,
    /// Scratch space kept between commits.
    changes: Changes,
    looked_up: Vec<u8>,
}

struct TableCommit {
    info: Rc<TableInfo>,
    lookup: Option<Stmt<'static>>,
}

fn kept<'a>(
    slot: &'a mut Option<Stmt<'static>>,
    conn: RawConn,
    sql: &str,
) -> Result<&'a mut Stmt<'static>, CaptureError> {
    if slot.is_none() {
        // SAFETY: kept in the capture table, which SQLite disconnects (and
        // so finalizes these) before it closes the connection.
        *slot = Some(unsafe { conn.prepare_kept(sql) }.map_err(sqlite("preparing capture SQL"))?);
    }
    Ok(slot.as_mut().expect("just filled"))
}

impl Statements {
    /// Makes the table descriptions current and checks that every table
    /// this transaction wrote still has the shape its capture was made for
    /// (a transaction that altered a replicated table and then wrote it
    /// fails here, before anything uncaptured can commit).
    ///
    /// `version` counts the schema changes the head statement saw (see
    /// [`Statements::head`]): the descriptions are read again when it moved.
    fn check_tables(
        &mut self,
        conn: RawConn,
        buffer: &TxBuffer,
        version: i32,
    ) -> Result<(), CaptureError> {
        let version = Some(version);
        if version.is_none() || version != self.tables_at {
            self.tables.clear();
            self.tables_at = None;
            self.check_connection(conn)?;
            for name in &buffer.tables {
                tables::verify(conn, name)?;
            }
            self.cascade = tables::cascade_into_replicated(conn)?;
            self.user_trigger = tables::user_trigger_on_replicated(conn)?;
            for info in tables::registered(conn)? {
                self.tables.insert(
                    info.name.clone(),
                    TableCommit {
                        info: Rc::new(info),
                        lookup: None,
                    },
                );
            }
            self.tables_at = version;
        }
        // A trigger that can skip capture refuses every write to
        // replicated tables: the write it skipped left no touch to name it.
        if let Some(t) = self.tables.values().find(|t| t.info.raises_first.is_some()) {
            return Err(CaptureError::UnsafeTrigger {
                table: t.info.name.clone(),
                trigger: t.info.raises_first.clone().unwrap_or_default(),
            });
        }
        for name in &buffer.tables {
            match self.tables.get(name) {
                None => {
                    return Err(CaptureError::CaptureBroken {
                        table: name.clone(),
                        problem: "it is not in aerodb_tables (its capture triggers outlived its registration)".into(),
                    })
                }
                Some(t) => {
                    if let Some(trigger) = &t.info.raises_first {
                        return Err(CaptureError::UnsafeTrigger {
                            table: name.clone(),
                            trigger: trigger.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Why the buffer cannot be spilled from a capture trigger in the
    /// middle of a statement (`None`: it can): a change can then still be
    /// waiting for its own capture trigger, so the touched keys' rows of
    /// that moment are not a state the replica may pass through. After
    /// [`Statements::check_tables`].
    fn nesting(&self, conn: RawConn) -> Result<Option<String>, CaptureError> {
        if let Some(trigger) = &self.user_trigger {
            return Ok(Some(trigger.clone()));
        }
        if let Some(t) = self.tables.values().find(|t| !t.info.order_known) {
            return Ok(Some(format!(
                "a trigger on '{}' fires before its capture triggers (or a foreign key of it to itself has an action)",
                t.info.name
            )));
        }
        if let Some(cascade) = &self.cascade {
            let on = conn
                .query_value("PRAGMA foreign_keys", &[])
                .map_err(sqlite("reading PRAGMA foreign_keys"))?
                .and_then(|v| v.as_i64());
            if on == Some(1) {
                return Ok(Some(cascade.clone()));
            }
        }
        Ok(None)
    }

    /// Refuses to capture into a database whose journal cannot undo a
    /// statement (`journal_mode=OFF`: a statement whose capture failed
    /// would keep its row), and on a connection that has a copy of its
    /// primary attached (same generation: the copy's capture triggers
    /// would record its writes as the primary's). Run with the table
    /// descriptions, when the head statement was prepared again: ATTACH
    /// and DETACH expire every statement, and so does any schema change;
    /// a later `PRAGMA journal_mode=OFF` alone is not noticed (it costs a
    /// statement per commit to watch).
    fn check_connection(&mut self, conn: RawConn) -> Result<(), CaptureError> {
        // Plain pragmas: their table-valued forms prepare SQL on every run.
        let s = kept(&mut self.journal_mode, conn, "PRAGMA main.journal_mode")?;
        let r = s.step().map_err(sqlite("reading the journal mode"));
        let mode = match r {
            Ok(true) => s.column(0).into_string().unwrap_or_default(),
            Ok(false) => String::new(),
            Err(e) => {
                s.reset();
                return Err(e);
            }
        };
        s.reset();
        let s = kept(&mut self.database_list, conn, "PRAGMA database_list")?;
        let mut names = Vec::new();
        loop {
            match s.step() {
                Ok(true) => {
                    let name = s.column(1).into_string().unwrap_or_default();
                    if name != "main" && name != "temp" {
                        names.push(name);
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    s.reset();
                    return Err(sqlite("listing attached databases")(e));
                }
            }
        }
        s.reset();
        let attached = (!names.is_empty()).then(|| names.join("\u{1e}"));
        if mode.eq_ignore_ascii_case("off") {
            return Err(CaptureError::JournalOff);
        }
        if let Some(attached) = attached {
            check_attached(conn, &attached)?;
        }
        Ok(())
    }

    /// The position after the newest sealed record, and how many times
    /// SQLite prepared the head statement again. SQLite does so after any
    /// change of the main schema (by any connection) and after any change
    /// of this connection's TEMP schema (which expires every statement), so
    /// a new count means a replicated table's shape or the triggers on it
    /// may have changed; no `PRAGMA schema_version` per commit.
    fn head(
        &mut self,
        conn: RawConn,
        generation: Generation,
    ) -> Result<(ChainPosition, i32), CaptureError> {
        let s = kept(
            &mut self.head,
            conn,
            "SELECT commit_id, wal_offset, length, chain FROM main.aerodb_commits ORDER BY commit_id DESC LIMIT 1",
        )?;
        let r = s.step().map_err(sqlite("reading the WAL head"));
        let position = match r {
            Ok(true) => {
                let col = |i| s.column(i).as_i64().unwrap_or(-1);
                let (c, offset, len, chain) = (col(0), col(1), col(2), col(3));
                if c < 0 || offset < 0 || len < 0 || chain < 0 {
                    s.reset();
                    return Err(CaptureError::Wal(crate::WalReadError::Corrupt {
                        commit_id: CommitId(c.max(0) as u64),
                        problem: "its sealed row holds values that are not non-negative integers"
                            .into(),
                    }));
                }
                ChainPosition {
                    generation,
                    commit_id: CommitId(c as u64),
                    wal_offset: WalOffset(offset as u64 + len as u64),
                    chain: chain as u32,
                }
            }
            Ok(false) => ChainPosition::genesis(generation),
            Err(e) => {
                s.reset();
                return Err(e);
            }
        };
        let reprepared = s.reprepares();
        s.reset();
        Ok((position, reprepared))
    }

    /// Reads the row of `key` (an encoded value list) of `table` now: its
    /// encoded value list appended to `out`, or `false` if there is none.
    fn lookup(
        &mut self,
        conn: RawConn,
        table: &str,
        key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, CaptureError> {
        let t = self
            .tables
            .get_mut(table)
            .expect("check_tables found every touched table");
        let doing = || format!("reading the final row of a touched key of '{table}'");
        let s = kept(&mut t.lookup, conn, &t.info.lookup_sql)?;
        let values = decode_value_list(key).map_err(|problem| CaptureError::Sqlite {
            doing: doing(),
            source: crate::raw::RawError {
                code: rusqlite::ffi::SQLITE_INTERNAL,
                message: format!("captured key does not decode: {problem}"),
                sql: String::new(),
            },
        })?;
        for (i, v) in values.iter().enumerate() {
            s.bind(i + 1, to_sqlite(v)).map_err(sqlite(doing()))?;
        }
        let found = match s.step() {
            Ok(found) => found,
            Err(e) => {
                s.reset();
                return Err(sqlite(doing())(e));
            }
        };
        if found {
            let n = t.info.columns;
            let r = encode_count(out, n).and_then(|()| {
                (0..n).try_for_each(|i| encode_value(out, wal_value(s.column_ref(i))))
            });
            if let Err(source) = r {
                s.reset();
                return Err(CaptureError::Encode {
                    table: table.to_owned(),
                    source,
                });
            }
        }
        s.reset();
        Ok(found)
    }
}

fn to_sqlite(v: &replication::wal::Value) -> ValueRef<'_> {
    use replication::wal::Value;
    match v {
        Value::Null => ValueRef::Null,
        Value::Integer(i) => ValueRef::Integer(*i),
        Value::Real(r) => ValueRef::Real(*r),
        Value::Text(t) => ValueRef::Text(t),
        Value::Blob(b) => ValueRef::Blob(b),
    }
}

pub(crate) fn wal_value(v: ValueRef<'_>) -> WalValue<'_> {
    match v {
        ValueRef::Null => WalValue::Null,
        ValueRef::Integer(i) => WalValue::Integer(i),
        ValueRef::Real(r) => WalValue::Real(r),
        ValueRef::Text(t) => WalValue::Text(t),
        ValueRef::Blob(b) => WalValue::Blob(b),
    }
}

/// A record being built in place: its header reserved, then its changes
/// framed as the record carries them (each a `u32` length and its bytes),
/// and how many.
struct Changes {
    framed: Vec<u8>,
    count: usize,
}

impl Default for Changes {
    fn default() -> Changes {
        Changes {
            framed: vec![0; RECORD_HEADER_LEN],
            count: 0,
        }
    }
}

impl Changes {
    fn clear(&mut self) {
        self.framed.clear();
        self.framed.resize(RECORD_HEADER_LEN, 0);
        self.count = 0;
    }

    /// Appends a pre-encoded change.
    fn push_encoded(&mut self, change: &[u8]) {
        self.framed
            .extend_from_slice(&(change.len() as u32).to_le_bytes());
        self.framed.extend_from_slice(change);
        self.count += 1;
    }

    /// Appends a change made of its header and `parts`.
    fn push(&mut self, op: Operation, table: &str, parts: &[&[u8]]) -> Result<(), EncodeError> {
        let at = self.framed.len();
        self.framed.extend_from_slice(&[0; 4]);
        encode_change_header(&mut self.framed, op, table)?;
        for p in parts {
            self.framed.extend_from_slice(p);
        }
        let len = (self.framed.len() - at - 4) as u32;
        self.framed[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        Ok(())
    }
}

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

/// Whether a touched key's row existed before the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existence {
    /// It did: the replica must have it.
    Existed,
    /// It did not (the BEFORE triggers of a table with other UNIQUE
    /// constraints probed the key).
    New,
    /// Not known: a REPLACE over an existing key fires no delete trigger,
    /// and a user trigger that fires before capture hides the order.
    Unknown,
}

fn existence(e: &super::buffer::Entry, t: &Touched) -> Existence {
    match (
        t.info.order_known && !t.replicated,
        e.existed,
        t.info.probed,
    ) {
        (false, _, _) => Existence::Unknown,
        (true, true, _) => Existence::Existed,
        (true, false, true) => Existence::New,
        (true, false, false) => Existence::Unknown,
    }
}

/// A table the transaction touched, as its changes need it.
struct Touched {
    info: Rc<TableInfo>,
    /// `aerodb_replicate` ran on it in this transaction: its schema record
    /// restarts it on the replica from the rows of that moment, so whether
    /// a key's row existed there is not known.
    replicated: bool,
}

/// The tables the transaction's schema records (`aerodb_replicate`) are for.
fn replicated_tables(buffer: &TxBuffer) -> Vec<String> {
    buffer
        .section_changes()
        .filter(|c| c.first() == Some(&(Operation::Schema as u8)))
        .filter_map(|c| {
            let len = u16::from_le_bytes([*c.get(1)?, *c.get(2)?]) as usize;
            std::str::from_utf8(c.get(3..3 + len)?)
                .ok()
                .map(str::to_owned)
        })
        .collect()
}

/// A touched key's state at the end of the transaction.
enum Final {
    /// Its row: from a lookup (`true`: in the looked-up bytes) or as its
    /// trigger saw it, and where.
    Row(bool, std::ops::Range<usize>),
    /// A row, read again when its change is written (the rows read at
    /// commit are held up to a bound).
    RowAgain,
    /// No row.
    Absent,
    /// The row was only noted as a REPLACE candidate and is unchanged.
    Unchanged,
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

/// The record's changes, in the order the module doc gives, into
/// `changes` (empty), records cut off through `parts` as they fill.
fn build_changes(
    conn: RawConn,
    stmts: &mut Statements,
    buffer: &TxBuffer,
    changes: &mut Changes,
    parts: &mut Parts,
) -> Result<(), CaptureError> {
    // Room for every change at once (up to a part): growing by doubling
    // would hold up to twice a large record.
    let table_names: usize = buffer.tables.iter().map(String::len).sum();
    changes.framed.reserve(
        (buffer.section_bytes.len()
            + buffer.sections.len() * 4
            + buffer.values.len()
            + 2 * buffer.keys.len()
            + buffer.entries.len() * (16 + table_names.min(1024)))
        .min(PART_BYTES + PART_BYTES / 8),
    );
    for s in buffer.section_changes() {
        changes.push_encoded(s);
        parts.cut(conn, &mut stmts.insert_record, changes)?;
    }
    // Final rows of looked-up keys, and where each one's row is.
    let mut looked_up = std::mem::take(&mut stmts.looked_up);
    looked_up.clear();
    let r = resolve_and_order(conn, stmts, buffer, changes, parts, &mut looked_up);
    if looked_up.capacity() <= KEPT_SCRATCH_BYTES {
        stmts.looked_up = looked_up;
    }
    r
}

/// Reads what the touched keys' final states need and appends their
/// changes: deletes first, then the final rows.
fn resolve_and_order(
    conn: RawConn,
    stmts: &mut Statements,
    buffer: &TxBuffer,
    changes: &mut Changes,
    parts: &mut Parts,
    looked_up: &mut Vec<u8>,
) -> Result<(), CaptureError> {
    // What decides each change, per touched table (one lookup per table).
    let replicated = replicated_tables(buffer);
    let mut finals: Vec<Final> = Vec::with_capacity(buffer.entries.len());
    for e in &buffer.entries {
        let table = &buffer.tables[e.table as usize];
        finals.push(match &e.known {
            Known::Row(r) => Final::Row(false, r.clone()),
            Known::Absent => Final::Absent,
            Known::Lookup => {
                let start = looked_up.len();
                match stmts.lookup(conn, table, buffer.key(e), looked_up)? {
                    true if looked_up.len() <= PART_BYTES => {
                        Final::Row(true, start..looked_up.len())
                    }
                    true => {
                        // Held rows are bounded: this one is read again
                        // when its change is written.
                        looked_up.truncate(start);
                        Final::RowAgain
                    }
                    false => Final::Absent,
                }
            }
            Known::Candidate => {
                // Still there: nothing changed it (a change would have
                // fired a capture trigger). Gone: a REPLACE deleted it.
                let start = looked_up.len();
                let found = stmts.lookup(conn, table, buffer.key(e), looked_up)?;
                looked_up.truncate(start);
                match found {
                    true => Final::Unchanged,
                    false => Final::Absent,
                }
            }
        });
    }
    let tables: Vec<Touched> = buffer
        .tables
        .iter()
        .map(|t| Touched {
            info: Rc::clone(&stmts.tables[t].info),
            replicated: replicated.iter().any(|r| r == t),
        })
        .collect();
    let encode = |r: Result<(), EncodeError>, table: &str| {
        r.map_err(|source| CaptureError::Encode {
            table: table.to_owned(),
            source,
        })
    };
    // Deletes first: existing keys, then keys whose existence is unknown
    // (a key equal to an existing one under its collation comes after it).
    for first_pass in [true, false] {
        for (e, f) in buffer.entries.iter().zip(&finals) {
            let t = &tables[e.table as usize];
            let (info, existence) = (&*t.info, existence(e, t));
            let delete = match (f, existence) {
                (Final::Unchanged, _) | (_, Existence::New) => false,
                (Final::Absent, _) => true,
                (Final::Row(..) | Final::RowAgain, _) => info.extra_unique,
            };
            if !delete || (existence == Existence::Existed) != first_pass {
                continue;
            }
            let op = match existence {
                Existence::Existed => Operation::Delete,
                _ => Operation::Discard,
            };
            encode(changes.push(op, &info.name, &[buffer.key(e)]), &info.name)?;
            parts.cut(conn, &mut stmts.insert_record, changes)?;
        }
    }
    let mut again = Vec::new();
    for (e, f) in buffer.entries.iter().zip(&finals) {
        let t = &tables[e.table as usize];
        let (info, table) = (&*t.info, &t.info.name);
        let row = match f {
            Final::Row(true, range) => &looked_up[range.clone()],
            Final::Row(false, range) => &buffer.values[range.clone()],
            Final::RowAgain => {
                again.clear();
                if !stmts.lookup(conn, table, buffer.key(e), &mut again)? {
                    return Err(CaptureError::Sqlite {
                        doing: format!("reading the final row of a touched key of '{table}'"),
                        source: crate::raw::RawError {
                            code: rusqlite::ffi::SQLITE_INTERNAL,
                            message: "the row was there a moment ago and is gone, inside the committing transaction".into(),
                            sql: String::new(),
                        },
                    });
                }
                &again[..]
            }
            Final::Absent | Final::Unchanged => continue,
        };
        if existence(e, t) == Existence::Existed && !info.extra_unique {
            encode(
                changes.push(Operation::Update, table, &[buffer.key(e), row]),
                table,
            )?;
        } else {
            encode(changes.push(Operation::Insert, table, &[row]), table)?;
        }
        parts.cut(conn, &mut stmts.insert_record, changes)?;
    }
    Ok(())
}
