//! The replica's storage: the state store tables and transactional apply.
//!
//! Role in the spec: this is the storage the WAL Applier mutates (spec 5.4)
//! and the Replica State Store persists (5.5). Applying a segment is ONE
//! SQLite transaction: the row changes and the new applied CommitId, WAL
//! offset and chained checksum commit together or not at all (rules W1,
//! W2, T1). Inside that transaction the segment's continuity is checked
//! again against the *stored* position (STYLE 14), so a segment can never
//! be applied twice or out of order, whatever the caller validated against.

pub(crate) mod guard;
mod rows;
mod schema;
mod segments;
mod snapshot_install;

pub use guard::GUARD_FN;
use rows::{apply_change, TableShape, Tables};
pub(crate) use segments::mark_applied;
pub(crate) use segments::stored_segment_state;

use replication::wal::{
    check_continuity, ChainPosition, Change, CommitId, ContinuityError, Generation,
    ValidatedSegment, WalOffset,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::hash_map::HashMap;
use std::path::Path;
use std::sync::Arc;

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
    /// The file is an AeroDB primary: it cannot also be a replica.
    #[error("it is an AeroDB primary (it has aerodb_meta); a database cannot be both a primary and a replica: replicate into another file")]
    IsPrimary,
    /// The replica file holds a table of that name that replication did
    /// not create (a user's table): it is never overwritten.
    #[error("commit {commit_id}: the replica file already holds a table '{table}' that replication did not create (it is not in aerodb_replica_tables); AeroDB never overwrites a user's table (one released by aerodb_unreplicate is the user's from then on): replicate into another file, or rename or drop that table yourself")]
    UserTable {
        /// The commit whose schema record names it.
        commit_id: CommitId,
        /// The table.
        table: String,
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
    /// A segment the replica's Receiver stored, applied by something else
    /// than the runtime (`aerodb verify`), cannot be.
    #[error("the replica's stored segment {first}..={last}: {problem}; nothing of its transaction applied")]
    Stored {
        /// First CommitId.
        first: CommitId,
        /// Last CommitId.
        last: CommitId,
        /// What is wrong.
        problem: String,
    },
    /// A replicated or state store table was changed by DDL behind
    /// replication's back (dropped, altered, its write guard dropped):
    /// what it holds may not be the primary's.
    #[error("commit {commit_id}: replica table '{table}' was changed behind replication's back: {what}; what it holds may no longer be the primary's: rebuild the replica from the primary (aerodb catch-up into a new file); nothing applied")]
    Tampered {
        /// The commit that was to be applied.
        commit_id: CommitId,
        /// The table.
        table: String,
        /// What happened to it.
        what: String,
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

/// A replica database: its connection and the shapes of its replicated
/// tables.
pub struct ReplicaDb {
    conn: Connection,
    shapes: HashMap<String, Arc<TableShape>>,
    track_segments: bool,
    /// The schema version this connection last found (or left) the
    /// replica's tables as replication left them at.
    checked_schema: Option<i64>,
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
        // Never turn a primary into a replica too (before anything is
        // created in it).
        let is_primary: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'aerodb_meta'",
                [],
                |r| r.get(0),
            )
            .map_err(sql_err("checking whether the file is a primary", None))?;
        if is_primary {
            return Err(ApplyError::IsPrimary);
        }
        // Cascades and other side effects already happened on the primary
        // and arrive as their own changes.
        conn.pragma_update(None, "foreign_keys", "OFF")
            .map_err(sql_err("disabling foreign key actions", None))?;
        let existed = guard::state_tables_present(&conn)
            .map_err(sql_err("listing the replica's state store tables", None))?;
        conn.execute_batch(REPLICA_SQL).map_err(sql_err(
            "creating the replica tables (sql/replica.sql)",
            None,
        ))?;
        // This connection applies: its writes pass the replicated tables'
        // guards.
        guard::let_replication_write(&conn)?;
        // Tables replicated before guards existed get theirs now. Once the
        // replica's schema has been checked, a missing guard was dropped
        // behind replication's back: putting it back would hide the rows
        // written past it, so it is left for the check to name.
        let checked = guard::checked_version(&conn)
            .map_err(sql_err("reading the replica's schema check", None))?
            .is_some();
        if checked {
            // State store tables a later version added, created just now,
            // get their guards (one the user dropped stays unguarded: the
            // check names it).
            guard::install_state_new(&conn, &existed)?;
        } else {
            guard::install_state(&conn)?;
            if let Some(position) = read_position(&conn)? {
                let tables: Vec<String> = conn
                    .prepare("SELECT name FROM main.aerodb_replica_tables")
                    .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                    .map_err(sql_err("listing replicated tables", None))?;
                for t in &tables {
                    // A replicated table dropped on the replica gets no
                    // guard here: the schema check names it.
                    if schema::table_sql(&conn, CommitId(0), t)?.is_some() {
                        guard::install(&conn, None, t, position.generation)?;
                    }
                }
            }
        }
        Ok(ReplicaDb {
            conn,
            shapes: HashMap::new(),
            track_segments: false,
            checked_schema: None,
        })
    }

    /// Checks that the replica's tables are as replication left them
    /// (see [`guard::tampering`]) and, if so and not recorded yet for its
    /// current schema version, records it, so readers need not look again.
    /// A replica that is not is left as it is: its next apply transaction
    /// refuses, naming the table.
    pub(crate) fn record_schema_check(&mut self) -> Result<(), ApplyError> {
        let doing = || sql_err("checking the replica's schema", None);
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(doing())?;
        let version = guard::schema_version(&tx).map_err(doing())?;
        if guard::checked_version(&tx).map_err(doing())? == Some(version)
            || guard::tampering(&tx).map_err(doing())?.is_some()
        {
            return Ok(());
        }
        guard::record_checked(&tx, version).map_err(doing())?;
        tx.commit().map_err(doing())?;
        self.checked_schema = Some(version);
        Ok(())
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
            checked_schema,
        } = self;
        // IMMEDIATE: take the write lock before reading the position, so the
        // position checked is the one this transaction replaces.
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
            .map_err(sql_err("beginning the apply transaction", None))?;
        let stored = read_position(&tx)?.ok_or(ApplyError::NotReplica)?;
        // DDL by any connection since the replica was last found as
        // replication left it: look again before writing anything.
        let doing = sql_err(
            "checking the replica's schema",
            Some(stored.commit_id.next()),
        );
        let version = guard::schema_version(&tx).map_err(doing)?;
        let mut record = false;
        if *checked_schema != Some(version)
            && guard::checked_version(&tx)
                .map_err(sql_err("checking the replica's schema", None))?
                != Some(version)
        {
            if let Some(t) =
                guard::tampering(&tx).map_err(sql_err("checking the replica's schema", None))?
            {
                return Err(ApplyError::Tampered {
                    commit_id: stored.commit_id.next(),
                    table: t.table,
                    what: t.what,
                });
            }
            record = true;
        }
        let mut end = stored;
        // Whether this transaction runs DDL of its own (schema records,
        // alters, unreplicates): the schema version then moves with it.
        let mut ddl = false;
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
                        ddl |= matches!(
                            change,
                            Change::Schema { .. }
                                | Change::Alter { .. }
                                | Change::Unreplicate { .. }
                        );
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
        // This transaction's own DDL (schema records, alters) leaves the
        // replica as replication made it.
        let after = if ddl {
            guard::schema_version(&tx).map_err(sql_err(
                "checking the replica's schema",
                Some(end.commit_id),
            ))?
        } else {
            version
        };
        if record || after != version {
            guard::record_checked(&tx, after).map_err(sql_err(
                "recording the replica's schema check",
                Some(end.commit_id),
            ))?;
        }
        tx.commit().map_err(sql_err(
            "committing the apply transaction",
            Some(end.commit_id),
        ))?;
        *checked_schema = Some(after);
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
    next_segment_until(reader, at, None, max_bytes)
}

/// [`next_segment`] holding no record after `until` (when given).
pub fn next_segment_until(
    reader: &crate::primary::PrimaryWalReader,
    at: &ChainPosition,
    until: Option<CommitId>,
    max_bytes: usize,
) -> Result<Option<ValidatedSegment>, ApplyError> {
    let Some(bytes) = reader
        .segment_until(at.commit_id.next(), until, max_bytes)
        .map_err(|e| ApplyError::Source(e.to_string()))?
    else {
        return Ok(None);
    };
    let segment =
        replication::wal::Segment::decode(&bytes).map_err(|e| ApplyError::Source(e.to_string()))?;
    Ok(Some(replication::wal::validate(segment, at)?))
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
