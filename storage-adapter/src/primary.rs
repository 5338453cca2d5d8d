//! The primary, for Rust applications: make a database a primary, choose
//! tables to replicate, get read-your-writes tokens; and read its WAL as
//! segments (what a replica's WAL source does).
//!
//! Role in the spec: the Primary (spec 4.1, rules P1, P2). Capture runs in
//! the application's own transactions (see [`crate::capture`]); reading is
//! read-only, in the reader's own read transaction.

use crate::capture::{self, CaptureError, CaptureHandle};
use crate::primary_wal::{WalReadError, WalTables};
use crate::raw::RawConn;
use replication::wal::{CommitId, EncodedRecord, Generation, Segment};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// Errors of the primary API.
#[derive(Debug, thiserror::Error)]
pub enum PrimaryError {
    /// SQLite failed.
    #[error("{doing}: {source}")]
    Sqlite {
        /// What was being done.
        doing: &'static str,
        /// The error.
        source: rusqlite::Error,
    },
    /// Capture refused or failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// Reading the WAL failed.
    #[error(transparent)]
    Wal(#[from] WalReadError),
}

fn sql_err(doing: &'static str) -> impl FnOnce(rusqlite::Error) -> PrimaryError {
    move |source| PrimaryError::Sqlite { doing, source }
}

/// A primary database and a connection that captures its writes.
pub struct Primary {
    capture: CaptureHandle,
    generation: Generation,
    conn: Connection,
}

impl Primary {
    /// Opens (creating if needed) `path` in WAL mode and makes it a primary.
    pub fn open(path: impl AsRef<Path>) -> Result<Primary, PrimaryError> {
        let conn = Connection::open(path).map_err(sql_err("opening the primary"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql_err("setting journal_mode=WAL"))?;
        Primary::from_connection(conn)
    }

    /// Makes the database of `conn` a primary (idempotent) and registers
    /// the capture functions on `conn`.
    pub fn from_connection(conn: Connection) -> Result<Primary, PrimaryError> {
        let capture =
            capture::register(&conn).map_err(sql_err("registering the capture functions"))?;
        let generation = capture.primary_init()?;
        Ok(Primary {
            capture,
            generation,
            conn,
        })
    }

    /// The primary's generation.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Starts replicating `table`; returns the CommitId of its schema record.
    pub fn replicate(&self, table: &str) -> Result<CommitId, PrimaryError> {
        Ok(self.capture.replicate(table)?)
    }

    /// Ships a replicated table again, whole (`aerodb_resync`): its schema
    /// record and every row; returns that record's CommitId.
    pub fn resync(&self, table: &str) -> Result<CommitId, PrimaryError> {
        Ok(self.capture.resync(table)?)
    }

    /// Runs DDL on replicated tables (`aerodb_alter`): the statements are
    /// replicated themselves, no rows re-shipped; returns the CommitId of
    /// the record that carries them (the head if they changed no
    /// replicated table).
    pub fn alter(&self, sql: &str) -> Result<CommitId, PrimaryError> {
        Ok(self.capture.alter(sql)?)
    }

    /// Stops replicating `table` (`aerodb_unreplicate`): returns the
    /// CommitId of the change that tells replicas, which keep the table as a
    /// plain one from there on.
    pub fn unreplicate(&self, table: &str) -> Result<CommitId, PrimaryError> {
        Ok(self.capture.unreplicate(table)?)
    }

    /// The CommitId of this connection's last committed captured write: the
    /// token a reader passes to a replica to read its own writes.
    pub fn last_commit_id(&self) -> Result<Option<CommitId>, PrimaryError> {
        Ok(self.capture.last_commit_id()?)
    }

    /// The newest CommitId in the WAL.
    pub fn head(&self) -> Result<CommitId, PrimaryError> {
        Ok(self.capture.head()?)
    }

    /// Drops the WAL below `below` (WAL retention); returns the oldest
    /// CommitId kept. A replica that needs older WAL bootstraps from a
    /// snapshot ([`crate::snapshot::take`]).
    pub fn truncate_wal(&self, below: CommitId) -> Result<CommitId, PrimaryError> {
        Ok(self.capture.truncate_wal(below)?)
    }

    /// The capturing connection: write through it (or through any other
    /// connection that called [`capture::register`]).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The same, mutably (for `transaction()`).
    pub fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// Reads a primary's WAL from its database file, read-only. Each call runs
/// in its own read transaction, so what it returns is one consistent
/// snapshot of the primary.
pub struct PrimaryWalReader {
    conn: Connection,
    generation: Generation,
    /// The `schema_version` at which capture was last verified: any schema
    /// change (ALTER, DROP, CREATE, trigger changes) moves it, so the
    /// check runs again exactly when the schema changed.
    verified_schema: std::cell::Cell<Option<i64>>,
}

impl PrimaryWalReader {
    /// Opens the primary file read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<PrimaryWalReader, PrimaryError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(sql_err("opening the primary read-only"))?;
        let generation = WalTables::new(raw(&conn)).generation()?;
        Ok(PrimaryWalReader {
            conn,
            generation,
            verified_schema: std::cell::Cell::new(None),
        })
    }

    /// The primary's generation.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    fn in_read_transaction<T>(
        &self,
        f: impl FnOnce(&WalTables) -> Result<T, PrimaryError>,
    ) -> Result<T, PrimaryError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(sql_err("beginning a read transaction"))?;
        let out = f(&WalTables::new(raw(&tx)))?;
        tx.finish()
            .map_err(sql_err("ending the read transaction"))?;
        Ok(out)
    }

    /// The newest CommitId.
    pub fn head(&self) -> Result<CommitId, PrimaryError> {
        self.in_read_transaction(|wal| Ok(wal.head()?))
    }

    /// The oldest CommitId whose WAL the primary still has.
    pub fn oldest(&self) -> Result<CommitId, PrimaryError> {
        self.in_read_transaction(|wal| Ok(wal.oldest()?))
    }

    /// `PRAGMA data_version`: changes when another connection commits. A
    /// transport polls it to notice new WAL (only to avoid useless reads; no
    /// correctness decision depends on when it is polled).
    pub fn data_version(&self) -> Result<i64, PrimaryError> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(sql_err("reading data_version"))
    }

    /// `PRAGMA schema_version`: changes with every schema change (an
    /// `aerodb_replicate` re-installing capture, say). A transport waiting
    /// out a primary whose capture is broken polls it.
    pub fn schema_version(&self) -> Result<i64, PrimaryError> {
        self.conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(sql_err("reading schema_version"))
    }

    /// Records from `from` on, until about `max_bytes` (at least one record
    /// if `from` exists). Empty if `from` is past the head.
    pub fn records(
        &self,
        from: CommitId,
        max_bytes: usize,
    ) -> Result<Vec<EncodedRecord>, PrimaryError> {
        Ok(self.records_and_head(from, max_bytes)?.0)
    }

    /// [`records`](Self::records) and the head, read in one transaction.
    pub fn records_and_head(
        &self,
        from: CommitId,
        max_bytes: usize,
    ) -> Result<(Vec<EncodedRecord>, CommitId), PrimaryError> {
        self.records_until(from, None, max_bytes)
    }

    /// [`records_and_head`](Self::records_and_head), holding no record
    /// after `until` (when given).
    pub fn records_until(
        &self,
        from: CommitId,
        until: Option<CommitId>,
        max_bytes: usize,
    ) -> Result<(Vec<EncodedRecord>, CommitId), PrimaryError> {
        self.in_read_transaction(|wal| {
            // Refuse to serve WAL of a primary whose capture is broken
            // (a replicated table altered, recreated or stripped of its
            // triggers): its WAL may lack writes.
            let schema = wal
                .conn()
                .query_value("PRAGMA main.schema_version", &[])
                .map_err(WalReadError::from)?
                .and_then(|v| v.as_i64());
            if schema.is_none() || self.verified_schema.get() != schema {
                crate::capture::verify_capture(wal.conn())?;
                self.verified_schema.set(schema);
            }
            let head = wal.head()?;
            let last = until.map_or(head, |u| u.min(head));
            if from > last || from.0 == 0 {
                return Ok((Vec::new(), head));
            }
            Ok((wal.records(from, last, max_bytes)?, head))
        })
    }

    /// An encoded segment from `from` on (see [`records`](Self::records)),
    /// or `None` if there is nothing from `from` on yet.
    pub fn segment(
        &self,
        from: CommitId,
        max_bytes: usize,
    ) -> Result<Option<Vec<u8>>, PrimaryError> {
        self.segment_until(from, None, max_bytes)
    }

    /// [`segment`](Self::segment), holding no record after `until` (when
    /// given): what brings a replica to exactly one CommitId.
    pub fn segment_until(
        &self,
        from: CommitId,
        until: Option<CommitId>,
        max_bytes: usize,
    ) -> Result<Option<Vec<u8>>, PrimaryError> {
        let records = self.records_until(from, until, max_bytes)?.0;
        if records.is_empty() {
            return Ok(None);
        }
        let bytes =
            Segment::encode(self.generation, &records).map_err(|source| WalReadError::Encode {
                commit_id: from,
                source,
            })?;
        Ok(Some(bytes))
    }
}

fn raw(conn: &Connection) -> RawConn {
    // SAFETY: the connection outlives every WalTables made from it here
    // (each is dropped before the call returns).
    unsafe { RawConn::new(conn.handle()) }
}
