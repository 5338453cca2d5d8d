//! The replica's storage: the state store tables and transactional apply.
//!
//! Role in the spec: this is the storage the WAL Applier mutates (spec 5.4)
//! and the Replica State Store persists (5.5). Applying a segment is ONE
//! SQLite transaction: the row changes and the new applied CommitId, WAL
//! offset and chained checksum commit together or not at all (rules W1,
//! W2, T1). Inside that transaction the segment's continuity is checked
//! again against the *stored* position (STYLE 14), so a segment can never
//! be applied twice or out of order, whatever the caller validated against.

use replication::state::{check_segment, SegmentState};
use replication::wal::{
    check_continuity, ChainPosition, Change, CommitId, ContinuityError, Generation,
    ValidatedSegment, Value, WalOffset,
};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, CachedStatement, Connection, OptionalExtension, TransactionBehavior};
use std::collections::hash_map::{Entry, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::table_info::{self, quote_ident};

/// The replica schema (`sql/replica.sql`).
pub const REPLICA_SQL: &str = include_str!("../../sql/replica.sql");

/// Why a segment could not be applied. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The database has no replica position (not initialized).
    #[error("not an AeroDB replica: aerodb_replica_position is empty")]
    NotReplica,
    /// The replica follows another primary generation.
    #[error("replica follows generation {expected}, refusing to adopt generation {actual}")]
    ForeignGeneration {
        /// The replica's.
        expected: Generation,
        /// The one offered.
        actual: Generation,
    },
    /// The segment does not continue the stored position.
    #[error(transparent)]
    Continuity(#[from] ContinuityError),
    /// A row change did not match exactly one row: the replica's content
    /// differs from the primary's at this commit.
    #[error("replica diverged at commit {commit_id}: {operation} of '{table}' key {key} matched {matched} rows, expected 1")]
    Divergence {
        /// The commit.
        commit_id: CommitId,
        /// The table.
        table: String,
        /// "UPDATE" or "DELETE".
        operation: &'static str,
        /// The key, as SQL literals.
        key: String,
        /// Rows matched.
        matched: usize,
    },
    /// A change for a table with no schema record.
    #[error("commit {commit_id} changes table '{table}', which no schema record created on this replica")]
    UnknownTable {
        /// The commit.
        commit_id: CommitId,
        /// The table.
        table: String,
    },
    /// A change with the wrong number of values.
    #[error(
        "commit {commit_id}: change of '{table}' has {actual} {what}, the table has {expected}"
    )]
    ColumnCount {
        /// The commit.
        commit_id: CommitId,
        /// The table.
        table: String,
        /// "values" or "key values".
        what: &'static str,
        /// Columns on the replica.
        expected: usize,
        /// Values in the change.
        actual: usize,
    },
    /// The table exists on the replica with another definition.
    #[error("commit {commit_id}: schema of '{table}' differs: replica has `{replica}`, primary sent `{primary}`")]
    SchemaMismatch {
        /// The commit.
        commit_id: CommitId,
        /// The table.
        table: String,
        /// On the replica.
        replica: String,
        /// In the WAL.
        primary: String,
    },
    /// A schema record that is not a single CREATE TABLE of its table.
    #[error("commit {commit_id}: schema record for '{table}' refused: {problem}")]
    BadSchema {
        /// The commit.
        commit_id: CommitId,
        /// The table.
        table: String,
        /// What is wrong.
        problem: String,
    },
    /// SQLite failed.
    #[error("{doing}{}: {source}", commit_id.map(|c| format!(" at commit {c}")).unwrap_or_default())]
    Sqlite {
        /// What was being done.
        doing: &'static str,
        /// The commit, if applying one.
        commit_id: Option<CommitId>,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The connection is inside a transaction of its own.
    #[error("apply needs a connection outside any transaction")]
    InTransaction,
    /// A snapshot that cannot be installed (nothing changed).
    #[error("snapshot standing for commits {first}..={last} refused: {problem}")]
    Snapshot {
        /// First commit it stands for.
        first: CommitId,
        /// Its commit.
        last: CommitId,
        /// What is wrong.
        problem: String,
    },
    /// A segment that ends inside a transaction cannot be applied alone.
    #[error("segment {first}..={last} ends inside a transaction: it is applied together with the segments up to the one that ends it (ReplicaDb::apply_transaction); nothing applied")]
    EndsInsideTransaction {
        /// First CommitId.
        first: CommitId,
        /// Last CommitId.
        last: CommitId,
    },
    /// The WAL source failed while a transaction was being applied.
    #[error("reading the WAL source: {0}; nothing of the transaction applied")]
    Source(String),
    /// The WAL ended inside a transaction.
    #[error("the WAL has no segment after commit {after}, whose transaction continues; nothing of that transaction applied")]
    TransactionCut {
        /// The last record the source had.
        after: CommitId,
    },
    /// A held segment read back from WAL storage is not the one the
    /// Validator validated.
    #[error("held segment {first}..={last}: {problem}; nothing of its transaction applied")]
    HeldSegment {
        /// First CommitId.
        first: CommitId,
        /// Last CommitId.
        last: CommitId,
        /// What is wrong.
        problem: String,
    },
    /// The runtime applies only segments its Receiver persisted.
    #[error("segment {first}..={last} is not a received, unapplied segment in aerodb_replica_segments; nothing applied")]
    SegmentNotReceived {
        /// First CommitId.
        first: CommitId,
        /// Last CommitId.
        last: CommitId,
    },
    /// The segment state machine refuses the move (spec 6.2).
    #[error("segment {first}..={last}: {error}; nothing applied")]
    IllegalSegmentMove {
        /// First CommitId.
        first: CommitId,
        /// Last CommitId.
        last: CommitId,
        /// The refused move.
        error: String,
    },
}

fn sql_err(
    doing: &'static str,
    commit_id: Option<CommitId>,
) -> impl FnOnce(rusqlite::Error) -> ApplyError {
    move |source| ApplyError::Sqlite {
        doing,
        commit_id,
        source,
    }
}

/// A replicated table as the replica stores it. Shared (`Arc`) between the
/// cache and the statements of an apply, never copied per change.
#[derive(Debug)]
struct TableShape {
    columns: usize,
    key_len: usize,
    insert: String,
    update: String,
    delete: String,
}

fn to_sql(v: &Value) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(match v {
        Value::Null => ValueRef::Null,
        Value::Integer(i) => ValueRef::Integer(*i),
        Value::Real(r) => ValueRef::Real(*r),
        Value::Text(t) => ValueRef::Text(t),
        Value::Blob(b) => ValueRef::Blob(b),
    })
}

fn literal(values: &[Value]) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|v| match v {
            Value::Null => "NULL".into(),
            Value::Integer(i) => i.to_string(),
            Value::Real(r) => format!("{r:?}"),
            Value::Text(t) => format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''")),
            Value::Blob(b) => format!(
                "X'{}'",
                b.iter().map(|x| format!("{x:02X}")).collect::<String>()
            ),
        })
        .collect();
    format!("({})", parts.join(", "))
}

/// A replica database: its connection and the shapes of its replicated
/// tables.
pub struct ReplicaDb {
    conn: Connection,
    shapes: HashMap<String, Arc<TableShape>>,
    track_segments: bool,
}

impl ReplicaDb {
    /// Opens (creating if needed) a replica database file.
    pub fn open(path: impl AsRef<Path>) -> Result<ReplicaDb, ApplyError> {
        let conn = Connection::open(path).map_err(sql_err("opening the replica", None))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql_err("setting journal_mode=WAL", None))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql_err("setting synchronous", None))?;
        ReplicaDb::from_connection(conn)
    }

    /// Uses an open connection; creates the state store tables.
    pub fn from_connection(conn: Connection) -> Result<ReplicaDb, ApplyError> {
        // Cascades and other side effects already happened on the primary
        // and arrive as their own changes.
        conn.pragma_update(None, "foreign_keys", "OFF")
            .map_err(sql_err("disabling foreign key actions", None))?;
        conn.execute_batch(REPLICA_SQL).map_err(sql_err(
            "creating the replica tables (sql/replica.sql)",
            None,
        ))?;
        Ok(ReplicaDb {
            conn,
            shapes: HashMap::new(),
            track_segments: false,
        })
    }

    /// From now on, applying a segment also moves its row in
    /// `aerodb_replica_segments` to Applied (dropping its raw bytes) in the
    /// same transaction, and refuses a segment the Receiver did not persist.
    /// The runtime's Applier works this way; `aerodb catch-up` does not.
    pub fn track_segments(&mut self) {
        self.track_segments = true;
    }

    /// The connection (for reads).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Binds this replica to `generation` (idempotent for the same
    /// generation; another generation is refused, never reset).
    pub fn init(&self, generation: Generation) -> Result<ChainPosition, ApplyError> {
        if let Some(p) = self.position()? {
            if p.generation != generation {
                return Err(ApplyError::ForeignGeneration {
                    expected: p.generation,
                    actual: generation,
                });
            }
            return Ok(p);
        }
        let p = ChainPosition::genesis(generation);
        self.conn
            .execute(
                "INSERT INTO aerodb_replica_position(id, generation, applied_commit_id, applied_wal_offset, applied_chain) VALUES (1, ?1, 0, 0, ?2)",
                params![p.generation.0 as i64, i64::from(p.chain)],
            )
            .map_err(sql_err("initializing the replica position", None))?;
        Ok(p)
    }

    /// The applied position, as committed.
    pub fn position(&self) -> Result<Option<ChainPosition>, ApplyError> {
        read_position(&self.conn)
    }

    /// Applies a validated segment in one transaction: its row changes and
    /// the new position commit together, or nothing changes.
    pub fn apply(&mut self, segment: &ValidatedSegment) -> Result<ChainPosition, ApplyError> {
        if segment.ends_inside_transaction() {
            let (first, last) = segment.segment().header.range();
            return Err(ApplyError::EndsInsideTransaction { first, last });
        }
        self.apply_transaction(Some(segment), &mut |_, _| {
            unreachable!("a segment that ends a transaction needs no next one")
        })
    }

    /// Applies `first` (when given) and then, while the segment applied
    /// last ends inside a transaction, the segments `next` returns, asked
    /// with this transaction's connection and the position reached so far:
    /// all in ONE transaction, so a transaction that spans segments is
    /// applied whole and the position advances once, past its last
    /// record. Each segment must continue the position reached (checked
    /// here again); memory holds one segment at a time.
    pub fn apply_transaction(
        &mut self,
        first: Option<&ValidatedSegment>,
        next: &mut dyn FnMut(&Connection, &ChainPosition) -> Result<ValidatedSegment, ApplyError>,
    ) -> Result<ChainPosition, ApplyError> {
        if !self.conn.is_autocommit() {
            return Err(ApplyError::InTransaction);
        }
        let shapes_before = self.shapes.clone();
        let result = self.apply_in_transaction(first, next);
        if result.is_err() {
            // A rolled-back schema record must not leave a cached shape.
            self.shapes = shapes_before;
        }
        result
    }

    fn apply_in_transaction(
        &mut self,
        first: Option<&ValidatedSegment>,
        next: &mut dyn FnMut(&Connection, &ChainPosition) -> Result<ValidatedSegment, ApplyError>,
    ) -> Result<ChainPosition, ApplyError> {
        let ReplicaDb {
            conn,
            shapes,
            track_segments,
        } = self;
        // IMMEDIATE: take the write lock before reading the position, so the
        // position checked is the one this transaction replaces.
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
            .map_err(sql_err("beginning the apply transaction", None))?;
        let stored = read_position(&tx)?.ok_or(ApplyError::NotReplica)?;
        let mut end = stored;
        let mut owned;
        let mut segment = match first {
            Some(s) => s,
            None => {
                owned = next(&tx, &end)?;
                &owned
            }
        };
        loop {
            // Check at both ends: the position committed now (or reached in
            // this transaction), not the one the Validator saw.
            check_continuity(segment.segment(), &end)?;
            {
                // Dropped (statements back to the cache) before the commit.
                let mut tables = Tables::default();
                for record in &segment.segment().records {
                    for change in &record.changes {
                        apply_change(&tx, shapes, &mut tables, record.commit_id, change)?;
                    }
                }
            }
            if *track_segments {
                // Received -> Validated (if the Supervisor has not recorded
                // it yet: this segment is a ValidatedSegment) -> Applied; a
                // Rejected or Applied row does not match.
                let range = segment.segment().header.range();
                mark_applied(&tx, range, segment.start().wal_offset, segment.end())?;
            }
            end = segment.end();
            if !segment.ends_inside_transaction() {
                break;
            }
            owned = next(&tx, &end)?;
            segment = &owned;
        }
        let updated = tx
            .prepare_cached(
                "UPDATE aerodb_replica_position SET applied_commit_id = ?1, applied_wal_offset = ?2, applied_chain = ?3 WHERE id = 1 AND applied_commit_id = ?4",
            )
            .and_then(|mut s| s.execute(params![end.commit_id.0 as i64, end.wal_offset.0 as i64, i64::from(end.chain), stored.commit_id.0 as i64]))
            .map_err(sql_err("advancing the replica position", Some(end.commit_id)))?;
        assert_eq!(updated, 1, "the position row was read in this transaction");
        tx.commit().map_err(sql_err(
            "committing the apply transaction",
            Some(end.commit_id),
        ))?;
        Ok(end)
    }

    /// Applies every segment `source` gives from the replica's position on,
    /// one transaction per transaction boundary: a segment that ends inside
    /// a transaction is applied with those that follow it, up to the one
    /// that ends it. `source(from)` returns the segment starting at commit
    /// `from`, already validated against the given position, or `None` when
    /// there is nothing more. Returns the position reached.
    pub fn apply_from(
        &mut self,
        mut position: ChainPosition,
        source: &mut dyn FnMut(&ChainPosition) -> Result<Option<ValidatedSegment>, ApplyError>,
    ) -> Result<ChainPosition, ApplyError> {
        while let Some(segment) = source(&position)? {
            position = self.apply_transaction(Some(&segment), &mut |_, at| {
                source(at)?.ok_or(ApplyError::TransactionCut {
                    after: at.commit_id,
                })
            })?;
        }
        Ok(position)
    }
}

/// The segment `reader` has right after `at` (about `max_bytes`), decoded
/// and validated against `at`, or `None` when it has nothing more: what
/// [`ReplicaDb::apply_from`] and [`ReplicaDb::apply_transaction`] ask for
/// when a replica follows a primary file directly.
pub fn next_segment(
    reader: &crate::primary::PrimaryWalReader,
    at: &ChainPosition,
    max_bytes: usize,
) -> Result<Option<ValidatedSegment>, ApplyError> {
    let Some(bytes) = reader
        .segment(at.commit_id.next(), max_bytes)
        .map_err(|e| ApplyError::Source(e.to_string()))?
    else {
        return Ok(None);
    };
    let segment =
        replication::wal::Segment::decode(&bytes).map_err(|e| ApplyError::Source(e.to_string()))?;
    Ok(Some(replication::wal::validate(segment, at)?))
}

impl ReplicaDb {
    /// Installs the snapshot file `path`, standing for commits
    /// `first..=last`, in ONE transaction: the replicated tables are
    /// replaced by the snapshot's, the position becomes `end`, the
    /// bootstrap metadata is recorded, and (runtime) the item's row becomes
    /// Applied. The tables' checksum is recomputed inside the transaction
    /// and must equal the snapshot's, or nothing changes.
    pub fn install_snapshot(
        &mut self,
        first: CommitId,
        last: CommitId,
        path: &Path,
        end: ChainPosition,
    ) -> Result<ChainPosition, ApplyError> {
        if !self.conn.is_autocommit() {
            return Err(ApplyError::InTransaction);
        }
        let refuse = |problem: String| ApplyError::Snapshot {
            first,
            last,
            problem,
        };
        let file = path
            .to_str()
            .ok_or_else(|| refuse(format!("path {} is not UTF-8", path.display())))?;
        self.conn
            .execute("ATTACH DATABASE ?1 AS aerodb_snap", [file])
            .map_err(sql_err("attaching the snapshot", Some(last)))?;
        let result = self.install_attached(first, last, end);
        let detached = self
            .conn
            .execute_batch("DETACH DATABASE aerodb_snap")
            .map_err(sql_err("detaching the snapshot", Some(last)));
        // The tables were replaced (or the attempt rolled back): shapes are
        // looked up again.
        self.shapes.clear();
        let end = result?;
        detached?;
        let _ = std::fs::remove_file(path);
        Ok(end)
    }

    fn install_attached(
        &mut self,
        first: CommitId,
        last: CommitId,
        end: ChainPosition,
    ) -> Result<ChainPosition, ApplyError> {
        let refuse = |problem: String| ApplyError::Snapshot {
            first,
            last,
            problem,
        };
        let snap = |e: crate::snapshot::SnapshotError| refuse(e.to_string());
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(sql_err("beginning the snapshot transaction", None))?;
        let stored = read_position(&tx)?.ok_or(ApplyError::NotReplica)?;
        if stored.generation != end.generation {
            return Err(ApplyError::ForeignGeneration {
                expected: stored.generation,
                actual: end.generation,
            });
        }
        if first != stored.commit_id.next() {
            return Err(refuse(format!(
                "the replica is at commit {}, the snapshot stands for commits from {first}",
                stored.commit_id
            )));
        }
        let info = crate::snapshot::read_info(&tx, "aerodb_snap").map_err(snap)?;
        if info.position() != end || info.commit_id != last {
            return Err(refuse(format!(
                "it records {:?}, it was validated as ending at {end:?}",
                info.position()
            )));
        }
        let old: Vec<String> = tx
            .prepare("SELECT name FROM main.aerodb_replica_tables")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(sql_err("listing replicated tables", Some(last)))?;
        for t in &old {
            tx.execute_batch(&format!("DROP TABLE IF EXISTS main.{}", quote_ident(t)))
                .map_err(sql_err("dropping a replaced table", Some(last)))?;
        }
        tx.execute("DELETE FROM main.aerodb_replica_tables", [])
            .map_err(sql_err("clearing replicated tables", Some(last)))?;
        for t in &info.tables {
            let (create, indexes) =
                crate::snapshot::definition(&tx, "aerodb_snap", t).map_err(snap)?;
            // The statements come from a file: one CREATE each, and they
            // must create exactly this table.
            run_schema_statement(&tx, last, t, &create, SchemaStatement::Table)?;
            for i in &indexes {
                run_schema_statement(&tx, last, t, i, SchemaStatement::Index)?;
            }
            if table_sql(&tx, last, t)?.as_deref() != Some(create.as_str()) {
                return Err(refuse(format!(
                    "its statement `{create}` did not create table '{t}'"
                )));
            }
            let cols: Vec<String> = tx
                .prepare(
                    "SELECT name FROM pragma_table_xinfo(?1, 'main') WHERE hidden = 0 ORDER BY cid",
                )
                .and_then(|mut s| s.query_map([t], |r| r.get(0))?.collect())
                .map_err(sql_err("reading table columns", Some(last)))?;
            let list: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
            tx.execute_batch(&format!(
                "INSERT INTO main.{t}({l}) SELECT {l} FROM aerodb_snap.{t}",
                t = quote_ident(t),
                l = list.join(", ")
            ))
            .map_err(sql_err("copying rows from the snapshot", Some(last)))?;
            tx.execute(
                "INSERT INTO main.aerodb_replica_tables(name, schema_commit_id, sql) VALUES (?1, ?2, ?3)",
                params![t, last.0 as i64, create],
            )
            .map_err(sql_err("recording a replicated table", Some(last)))?;
        }
        let computed = crate::snapshot::checksum(&tx, "main", &info.tables).map_err(snap)?;
        if computed != info.checksum {
            return Err(refuse(format!(
                "the installed tables' checksum is 0x{computed:08x}, the snapshot records 0x{:08x}",
                info.checksum
            )));
        }
        tx.execute(
            "UPDATE main.aerodb_replica_position SET applied_commit_id = ?1, applied_wal_offset = ?2, applied_chain = ?3 WHERE id = 1 AND applied_commit_id = ?4",
            params![
                end.commit_id.0 as i64,
                end.wal_offset.0 as i64,
                i64::from(end.chain),
                stored.commit_id.0 as i64
            ],
        )
        .map_err(sql_err("advancing the replica position", Some(last)))?;
        if self.track_segments {
            mark_applied(&tx, (first, last), stored.wal_offset, end)?;
        }
        let at = crate::wall_clock::now_ms();
        tx.execute(
            "INSERT OR REPLACE INTO main.aerodb_replica_bootstrap(commit_id, generation, wal_offset, chain, checksum, replaced_from, tables, at_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                end.commit_id.0 as i64,
                end.generation.0 as i64,
                end.wal_offset.0 as i64,
                i64::from(end.chain),
                i64::from(info.checksum),
                first.0 as i64,
                info.tables.join("\n"),
                at
            ],
        )
        .map_err(sql_err("recording the bootstrap", Some(last)))?;
        tx.commit()
            .map_err(sql_err("committing the snapshot transaction", Some(last)))?;
        Ok(end)
    }
}

/// Moves the runtime's item `first..=last` (a segment or a snapshot) from
/// Received or Validated to Applied, inside the transaction that applied
/// it, and drops its raw bytes. An item the Receiver did not persist, or
/// one already Applied or Rejected, refuses the whole transaction.
fn mark_applied(
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

/// The shape of a replicated table, from the cache or the replica's schema.
fn shape(
    conn: &Connection,
    shapes: &mut HashMap<String, Arc<TableShape>>,
    commit_id: CommitId,
    table: &str,
) -> Result<Arc<TableShape>, ApplyError> {
    {
        if let Some(s) = shapes.get(table) {
            return Ok(Arc::clone(s));
        }
        let known: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM aerodb_replica_tables WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_err("looking up a replicated table", Some(commit_id)))?;
        if known.is_none() {
            return Err(ApplyError::UnknownTable {
                commit_id,
                table: table.into(),
            });
        }
        // SAFETY: the connection is open; the handle is used only here.
        let raw = unsafe { crate::raw::RawConn::new(conn.handle()) };
        let err = |e: crate::RawError| ApplyError::Sqlite {
            doing: "reading the replicated table's shape",
            commit_id: Some(commit_id),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(e.code),
                Some(e.message),
            ),
        };
        let cols = table_info::columns(raw, "main", table).map_err(err)?;
        // Rows are found by their key as the key compares (its own
        // collation, not necessarily the column's).
        let key = table_info::primary_key(raw, "main", table).map_err(err)?;
        let rowid_key = table_info::key_is_rowid(raw, "main", table).map_err(err)?;
        let t = quote_ident(table);
        let names: Vec<String> = cols.iter().map(|c| quote_ident(&c.name)).collect();
        let n = cols.len();
        let marks: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
        let sets: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 1))
            .collect();
        let target: Vec<String> = key
            .iter()
            .map(|k| {
                if rowid_key {
                    quote_ident(&k.name)
                } else {
                    format!(
                        "{} COLLATE {}",
                        quote_ident(&k.name),
                        quote_ident(&k.collation)
                    )
                }
            })
            .collect();
        let excluded: Vec<String> = names
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let shape = Arc::new(TableShape {
            columns: n,
            key_len: key.len(),
            insert: format!(
                "INSERT INTO {t}({}) VALUES ({}) ON CONFLICT({}) DO UPDATE SET {}",
                names.join(", "),
                marks.join(", "),
                target.join(", "),
                excluded.join(", ")
            ),
            update: format!(
                "UPDATE {t} SET {} WHERE {}",
                sets.join(", "),
                table_info::key_match(&key, n + 1)
            ),
            delete: format!("DELETE FROM {t} WHERE {}", table_info::key_match(&key, 1)),
        });
        shapes.insert(table.to_owned(), Arc::clone(&shape));
        Ok(shape)
    }
}

/// The statements of one table, each prepared on its first use in a
/// segment and kept for the rest of it: looking a statement up in the cache,
/// resetting and returning it for every change cost more than binding and
/// running it.
struct TableStatements<'c> {
    shape: Arc<TableShape>,
    insert: Option<CachedStatement<'c>>,
    update: Option<CachedStatement<'c>>,
    delete: Option<CachedStatement<'c>>,
}

/// The statements of one apply, by table name.
#[derive(Default)]
struct Tables<'c, 's> {
    list: Vec<(&'s str, TableStatements<'c>)>,
    /// Index in `list` of each table.
    index: HashMap<&'s str, usize>,
    /// Index in `list` of the table of the previous change: runs of changes
    /// to one table are the common case, and comparing a name costs less
    /// than hashing it.
    last: usize,
}

impl<'c, 's> Tables<'c, 's> {
    /// The statements of `table` (its shape from the cache or the replica's
    /// schema on first use).
    fn get(
        &mut self,
        tx: &'c Connection,
        shapes: &mut HashMap<String, Arc<TableShape>>,
        commit_id: CommitId,
        table: &'s str,
    ) -> Result<&mut TableStatements<'c>, ApplyError> {
        if self.list.get(self.last).map(|t| t.0) != Some(table) {
            self.last = match self.index.entry(table) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => {
                    let shape = shape(tx, shapes, commit_id, table)?;
                    self.list.push((
                        table,
                        TableStatements {
                            shape,
                            insert: None,
                            update: None,
                            delete: None,
                        },
                    ));
                    *e.insert(self.list.len() - 1)
                }
            };
        }
        Ok(&mut self.list[self.last].1)
    }

    /// Forgets every table's statements and shape (after a schema record;
    /// rare enough that the others are simply looked up again).
    fn clear(&mut self) {
        self.list.clear();
        self.index.clear();
        self.last = 0;
    }
}

/// `slot`'s statement, prepared from `sql` if it is the first use.
fn prepared<'a, 'c>(
    tx: &'c Connection,
    slot: &'a mut Option<CachedStatement<'c>>,
    sql: &str,
    doing: &'static str,
    commit_id: CommitId,
) -> Result<&'a mut CachedStatement<'c>, ApplyError> {
    match slot {
        Some(s) => Ok(s),
        None => Ok(slot.insert(
            tx.prepare_cached(sql)
                .map_err(sql_err(doing, Some(commit_id)))?,
        )),
    }
}

/// Binds `values` by index and runs `s`; the rows it changed. The caller
/// checked that there are exactly as many values as parameters, so no
/// binding of an earlier run survives.
fn run<'v>(
    s: &mut CachedStatement<'_>,
    values: impl Iterator<Item = &'v Value>,
) -> rusqlite::Result<usize> {
    for (i, v) in values.enumerate() {
        s.raw_bind_parameter(i + 1, to_sql(v))?;
    }
    s.raw_execute()
}

fn apply_change<'c, 's>(
    tx: &'c Connection,
    shapes: &mut HashMap<String, Arc<TableShape>>,
    tables: &mut Tables<'c, 's>,
    commit_id: CommitId,
    change: &'s Change,
) -> Result<(), ApplyError> {
    let err = |doing| sql_err(doing, Some(commit_id));
    match change {
        Change::Schema {
            table,
            sql,
            indexes,
        } => {
            shapes.remove(table);
            tables.clear();
            apply_schema(tx, commit_id, table, sql, indexes)
        }
        Change::Insert { table, values } => {
            let t = tables.get(tx, shapes, commit_id, table)?;
            check_count(commit_id, table, "values", t.shape.columns, values.len())?;
            let s = prepared(
                tx,
                &mut t.insert,
                &t.shape.insert,
                "preparing INSERT",
                commit_id,
            )?;
            run(s, values.iter()).map_err(err("applying INSERT"))?;
            Ok(())
        }
        Change::Update { table, key, values } => {
            let t = tables.get(tx, shapes, commit_id, table)?;
            check_count(commit_id, table, "values", t.shape.columns, values.len())?;
            check_count(commit_id, table, "key values", t.shape.key_len, key.len())?;
            let s = prepared(
                tx,
                &mut t.update,
                &t.shape.update,
                "preparing UPDATE",
                commit_id,
            )?;
            let n = run(s, values.iter().chain(key)).map_err(err("applying UPDATE"))?;
            exactly_one(commit_id, table, "UPDATE", key, n)
        }
        Change::Delete { table, key } | Change::Discard { table, key } => {
            let t = tables.get(tx, shapes, commit_id, table)?;
            check_count(commit_id, table, "key values", t.shape.key_len, key.len())?;
            let s = prepared(
                tx,
                &mut t.delete,
                &t.shape.delete,
                "preparing DELETE",
                commit_id,
            )?;
            let n = run(s, key.iter()).map_err(err("applying DELETE"))?;
            match change {
                Change::Discard { .. } => Ok(()),
                _ => exactly_one(commit_id, table, "DELETE", key, n),
            }
        }
    }
}

fn check_count(
    commit_id: CommitId,
    table: &str,
    what: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), ApplyError> {
    if expected == actual {
        Ok(())
    } else {
        Err(ApplyError::ColumnCount {
            commit_id,
            table: table.into(),
            what,
            expected,
            actual,
        })
    }
}

fn exactly_one(
    commit_id: CommitId,
    table: &str,
    operation: &'static str,
    key: &[Value],
    matched: usize,
) -> Result<(), ApplyError> {
    if matched == 1 {
        Ok(())
    } else {
        Err(ApplyError::Divergence {
            commit_id,
            table: table.into(),
            operation,
            key: literal(key),
            matched,
        })
    }
}

/// The `CREATE UNIQUE INDEX` statements of `table` on this replica, by
/// index name (as the primary lists them in schema records).
fn replica_indexes(
    tx: &Connection,
    commit_id: CommitId,
    table: &str,
) -> Result<Vec<String>, ApplyError> {
    let mut s = tx
        .prepare(crate::table_info::INDEXES_SQL)
        .map_err(sql_err("reading the replica's indexes", Some(commit_id)))?;
    let rows = s
        .query_map([table], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(sql_err("reading the replica's indexes", Some(commit_id)));
    rows
}

/// Runs one schema statement from the WAL after checking that it is a
/// single statement of the expected kind.
/// What a schema statement from the WAL may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SchemaStatement {
    /// `CREATE TABLE`.
    Table,
    /// `CREATE INDEX` or `CREATE UNIQUE INDEX`.
    Index,
}

fn run_schema_statement(
    tx: &Connection,
    commit_id: CommitId,
    table: &str,
    statement: &str,
    kind: SchemaStatement,
) -> Result<(), ApplyError> {
    let bad = |problem: String| ApplyError::BadSchema {
        commit_id,
        table: table.into(),
        problem,
    };
    let words: Vec<String> = statement
        .split_whitespace()
        .take(3)
        .map(str::to_ascii_uppercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let ok = match kind {
        SchemaStatement::Table => words.starts_with(&["CREATE", "TABLE"]),
        SchemaStatement::Index => {
            words.starts_with(&["CREATE", "INDEX"]) || words == ["CREATE", "UNIQUE", "INDEX"]
        }
    };
    if !ok {
        return Err(bad(format!(
            "`{statement}` is not a {kind:?} creation statement"
        )));
    }
    // One statement only: prepare refuses a tail.
    let mut s = tx
        .prepare(statement)
        .map_err(|e| bad(format!("`{statement}` does not prepare: {e}")))?;
    s.raw_execute()
        .map_err(|e| bad(format!("`{statement}` failed: {e}")))?;
    Ok(())
}

/// The `CREATE TABLE` statement of `table` on this replica, if it exists.
fn table_sql(
    tx: &Connection,
    commit_id: CommitId,
    table: &str,
) -> Result<Option<String>, ApplyError> {
    tx.query_row(
        "SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get(0),
    )
    .optional()
    .map_err(sql_err("reading the replica's schema", Some(commit_id)))
}

fn apply_schema(
    tx: &Connection,
    commit_id: CommitId,
    table: &str,
    sql: &str,
    indexes: &[String],
) -> Result<(), ApplyError> {
    let existing = table_sql(tx, commit_id, table)?;
    match existing {
        Some(existing) => {
            let existing_indexes = replica_indexes(tx, commit_id, table)?;
            if existing == sql && existing_indexes == indexes {
                // Same table again (replicated anew, e.g. after DROP and
                // CREATE on the primary): its content restarts from the
                // Insert changes that follow in this record.
                tx.execute(&format!("DELETE FROM {}", quote_ident(table)), [])
                    .map_err(sql_err(
                        "resetting the table for its schema record",
                        Some(commit_id),
                    ))?;
            } else {
                return Err(ApplyError::SchemaMismatch {
                    commit_id,
                    table: table.into(),
                    replica: std::iter::once(existing)
                        .chain(existing_indexes)
                        .collect::<Vec<_>>()
                        .join("; "),
                    primary: std::iter::once(sql.to_owned())
                        .chain(indexes.iter().cloned())
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
        }
        None => {
            run_schema_statement(tx, commit_id, table, sql, SchemaStatement::Table)?;
            for index in indexes {
                run_schema_statement(tx, commit_id, table, index, SchemaStatement::Index)?;
            }
            let created = table_sql(tx, commit_id, table)?;
            let created_indexes = replica_indexes(tx, commit_id, table)?;
            if created.as_deref() != Some(sql) || created_indexes != indexes {
                return Err(ApplyError::BadSchema {
                    commit_id,
                    table: table.into(),
                    problem: format!(
                        "the statements did not create table '{table}' with exactly its unique indexes (created {created:?}, {created_indexes:?})"
                    ),
                });
            }
        }
    }
    tx.execute(
        "INSERT OR REPLACE INTO aerodb_replica_tables(name, schema_commit_id, sql) VALUES (?1, ?2, ?3)",
        params![table, commit_id.0 as i64, sql],
    )
    .map_err(sql_err("registering the replicated table", Some(commit_id)))?;
    Ok(())
}

/// Reads the committed replica position.
pub fn read_position(conn: &Connection) -> Result<Option<ChainPosition>, ApplyError> {
    conn.prepare_cached(
        "SELECT generation, applied_commit_id, applied_wal_offset, applied_chain FROM aerodb_replica_position WHERE id = 1",
    )
    .and_then(|mut s| {
        s.query_row([], |r| {
            Ok(ChainPosition {
                generation: Generation(r.get::<_, i64>(0)? as u64),
                commit_id: CommitId(r.get::<_, i64>(1)? as u64),
                wal_offset: WalOffset(r.get::<_, i64>(2)? as u64),
                chain: r.get::<_, i64>(3)? as u32,
            })
        })
        .optional()
    })
    .map_err(sql_err("reading the replica position", None))
}
