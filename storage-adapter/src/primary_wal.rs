//! The primary's WAL as stored in its SQLite file: reading records,
//! dropping old ones.
//!
//! Role in the spec: the Primary "appends WAL and exposes WAL segments"
//! (rule P1). The commit of each writing transaction stores its record's
//! bytes and its seal (offset, length, chained checksum, CRC) in one
//! `aerodb_commits` row, in that transaction (`capture/commit.rs`). Readers serve the bytes as stored, never
//! computing a checksum: a record altered on disk after its commit is
//! refused by every replica's Validator, naming its CommitId and offset.
//! Reading is read-only (P2): a replica or a server reads in its own read
//! transaction.

use crate::raw::{OwnedValue, RawConn, RawError, Stmt};
use replication::wal::{
    ChainPosition, CommitId, EncodeError, EncodedRecord, Generation, WalOffset,
};
use rusqlite::types::ValueRef;

/// Largest CommitId the WAL stores (an SQLite INTEGER).
pub const MAX_COMMIT_ID: u64 = i64::MAX as u64;

/// Errors reading the primary's WAL.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WalReadError {
    /// SQLite failed.
    #[error("reading the primary's WAL: {0}")]
    Sqlite(#[from] RawError),
    /// The database is not a primary.
    #[error("not an AeroDB primary: aerodb_meta has no generation (run aerodb_primary_init() on the primary)")]
    NotPrimary,
    /// The stored WAL contradicts itself.
    #[error("primary WAL corrupt at commit {commit_id}: {problem}")]
    Corrupt {
        /// The commit concerned.
        commit_id: CommitId,
        /// What is wrong, with expected and actual values.
        problem: String,
    },
    /// A record cannot be encoded (over a limit).
    #[error("primary WAL at commit {commit_id}: {source}")]
    Encode {
        /// The commit concerned.
        commit_id: CommitId,
        /// The limit broken.
        source: EncodeError,
    },
    /// Truncation asked to drop WAL past the head.
    #[error("aerodb_truncate_wal({requested}): the newest commit is {head}, so WAL can be dropped below at most commit {}", head.next())]
    BeyondHead {
        /// Requested.
        requested: CommitId,
        /// The head.
        head: CommitId,
    },
    /// The requested commit is older than the WAL the primary keeps.
    #[error(
        "commit {requested} is not in the primary's WAL (it starts after commit {oldest_sealed})"
    )]
    Truncated {
        /// Requested.
        requested: CommitId,
        /// Oldest position the primary can continue from.
        oldest_sealed: CommitId,
    },
}

/// A sealed record's stored values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sealed {
    commit_id: CommitId,
    wal_offset: u64,
    length: u64,
    change_count: u32,
    prev_chain: u32,
    chain: u32,
    crc: u32,
}

const SEALED_COLUMNS: &str = "commit_id, wal_offset, length, change_count, prev_chain, chain, crc";

/// Read access to the WAL tables of one primary connection, inside whatever
/// transaction the caller holds.
pub(crate) struct WalTables {
    conn: RawConn,
}

impl WalTables {
    pub(crate) fn new(conn: RawConn) -> WalTables {
        WalTables { conn }
    }

    pub(crate) fn conn(&self) -> RawConn {
        self.conn
    }

    pub(crate) fn generation(&self) -> Result<Generation, WalReadError> {
        let exists = self.conn.query_value(
            "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = 'aerodb_meta'",
            &[],
        )?;
        if exists.is_none() {
            return Err(WalReadError::NotPrimary);
        }
        let g = self.conn.query_value(
            "SELECT value FROM main.aerodb_meta WHERE key = 'generation'",
            &[],
        )?;
        match g.as_ref().and_then(OwnedValue::as_i64) {
            Some(g) => Ok(Generation(g as u64)),
            None => Err(WalReadError::NotPrimary),
        }
    }

    /// The newest CommitId (every committed record is sealed).
    pub(crate) fn head(&self) -> Result<CommitId, WalReadError> {
        Ok(CommitId(
            self.conn
                .query_value("SELECT max(commit_id) FROM main.aerodb_commits", &[])?
                .and_then(|v| v.as_i64())
                .unwrap_or(0) as u64,
        ))
    }

    /// The sealed values of `commit_id`.
    fn sealed(&self, commit_id: CommitId) -> Result<Option<Sealed>, WalReadError> {
        let mut s = self.conn.prepare(&format!(
            "SELECT {SEALED_COLUMNS} FROM main.aerodb_commits WHERE commit_id = ?1"
        ))?;
        s.bind(1, ValueRef::Integer(commit_id.0 as i64))?;
        if !s.step()? {
            return Ok(None);
        }
        Ok(Some(sealed_row(&s)))
    }

    /// The chain position just after `commit_id`, from its seal.
    pub(crate) fn position_after(
        &self,
        generation: Generation,
        commit_id: CommitId,
    ) -> Result<ChainPosition, WalReadError> {
        if commit_id.0 == 0 {
            return Ok(ChainPosition::genesis(generation));
        }
        match self.sealed(commit_id)? {
            Some(sealed) => sealed.end_position(generation),
            None => Err(WalReadError::Truncated {
                requested: commit_id.next(),
                oldest_sealed: self.oldest()?,
            }),
        }
    }

    /// The oldest CommitId whose WAL the primary still has (1 unless the
    /// WAL was truncated).
    pub(crate) fn oldest(&self) -> Result<CommitId, WalReadError> {
        Ok(CommitId(
            self.conn
                .query_value(
                    "SELECT value FROM main.aerodb_meta WHERE key = 'oldest_commit'",
                    &[],
                )?
                .and_then(|v| v.as_i64())
                .unwrap_or(1)
                .max(1) as u64,
        ))
    }

    /// Drops the WAL below `below`, all or nothing: in one savepoint (a
    /// transaction of its own when called outside one), so a crash or a
    /// failure in the middle changes nothing, and under the write lock, so
    /// a concurrent writer can only make it fail with SQLITE_BUSY. The seal
    /// of `below - 1` stays as the base later records chain from. Returns
    /// the new oldest CommitId; refuses to drop WAL past the head.
    pub(crate) fn truncate_below(&self, below: CommitId) -> Result<CommitId, WalReadError> {
        self.conn.execute_batch("SAVEPOINT aerodb_truncate_wal")?;
        let r = self.truncate_in_savepoint(below);
        match r {
            Ok(c) => {
                self.conn.execute_batch("RELEASE aerodb_truncate_wal")?;
                Ok(c)
            }
            Err(e) => {
                let _ = self
                    .conn
                    .execute_batch("ROLLBACK TO aerodb_truncate_wal; RELEASE aerodb_truncate_wal");
                Err(e)
            }
        }
    }

    fn truncate_in_savepoint(&self, below: CommitId) -> Result<CommitId, WalReadError> {
        // Take the write lock first: what is read below is then the newest
        // state, and no writer can commit until this transaction ends.
        self.conn.execute(
            "UPDATE main.aerodb_meta SET value = value WHERE key = 'generation'",
            &[],
        )?;
        let head = self.head()?;
        let oldest = self.oldest()?;
        if below.0 > head.0 + 1 {
            return Err(WalReadError::BeyondHead {
                requested: below,
                head,
            });
        }
        if below <= oldest {
            return Ok(oldest);
        }
        self.conn.execute(
            "DELETE FROM main.aerodb_commits WHERE commit_id < ?1",
            &[ValueRef::Integer(below.0 as i64 - 1)],
        )?;
        self.conn.execute(
            "INSERT OR REPLACE INTO main.aerodb_meta(key, value) VALUES ('oldest_commit', ?1)",
            &[ValueRef::Integer(below.0 as i64)],
        )?;
        Ok(below)
    }

    /// Records from `from` on, at most up to `last`, until their bytes reach
    /// `max_bytes` (at least one record if any exists), as stored.
    pub(crate) fn records(
        &self,
        from: CommitId,
        last: CommitId,
        max_bytes: usize,
    ) -> Result<Vec<EncodedRecord>, WalReadError> {
        let mut out = Vec::new();
        if from > last {
            return Ok(out);
        }
        // In the same read transaction as the records: a truncation that
        // commits between two reads cannot make retained WAL look corrupt.
        let oldest = self.oldest()?;
        if from < oldest {
            return Err(WalReadError::Truncated {
                requested: from,
                oldest_sealed: oldest,
            });
        }
        let mut rows = self.conn.prepare(&format!(
            "SELECT {SEALED_COLUMNS}, record FROM main.aerodb_commits WHERE commit_id >= ?1 ORDER BY commit_id"
        ))?;
        rows.bind(1, ValueRef::Integer(from.0 as i64))?;
        let mut bytes = 0usize;
        let mut expected_offset: Option<u64> = None;
        let mut commit_id = from;
        while commit_id <= last && (out.is_empty() || bytes < max_bytes) {
            if !rows.step()? {
                return Err(corrupt(
                    commit_id,
                    "it is not in aerodb_commits (every committed record is)".into(),
                ));
            }
            let seal = sealed_row(&rows);
            if seal.commit_id != commit_id {
                return Err(corrupt(
                    commit_id,
                    format!("the next record is commit {}'s", seal.commit_id),
                ));
            }
            if let Some(offset) = expected_offset.filter(|&o| o != seal.wal_offset) {
                return Err(corrupt(
                    commit_id,
                    format!(
                        "sealed at WAL offset {}, the previous record ends at {offset}",
                        seal.wal_offset
                    ),
                ));
            }
            let record = rows.column_blob(7).ok_or_else(|| {
                corrupt(
                    commit_id,
                    format!("its record is {:?}, expected a BLOB", rows.column(7)),
                )
            })?;
            if record.len() as u64 != seal.length {
                return Err(corrupt(
                    commit_id,
                    format!(
                        "its record holds {} bytes, its seal says {}",
                        record.len(),
                        seal.length
                    ),
                ));
            }
            let encoded = EncodedRecord {
                commit_id,
                wal_offset: WalOffset(seal.wal_offset),
                prev_chain: seal.prev_chain,
                chain: seal.chain,
                crc: seal.crc,
                change_count: seal.change_count,
                bytes: record.to_vec(),
            };
            // A segment that ends inside a transaction holds only that
            // transaction's records: a record that opens or continues a
            // transaction does not follow one that ends another.
            if encoded.continues() && out.iter().any(|r| !r.continues()) {
                break;
            }
            bytes = bytes.saturating_add(record.len());
            expected_offset = seal.wal_offset.checked_add(seal.length);
            out.push(encoded);
            commit_id = commit_id.next();
        }
        Ok(out)
    }
}

fn corrupt(commit_id: CommitId, problem: String) -> WalReadError {
    WalReadError::Corrupt { commit_id, problem }
}

impl Sealed {
    /// The chain position just after this record.
    fn end_position(&self, generation: Generation) -> Result<ChainPosition, WalReadError> {
        let end = self.wal_offset.checked_add(self.length).ok_or_else(|| {
            corrupt(
                self.commit_id,
                format!("sealed record {self:?} ends past the largest WAL offset"),
            )
        })?;
        Ok(ChainPosition {
            generation,
            commit_id: self.commit_id,
            wal_offset: WalOffset(end),
            chain: self.chain,
        })
    }
}

/// The sealed values in the current row of a statement selecting
/// [`SEALED_COLUMNS`].
fn sealed_row(s: &Stmt<'_>) -> Sealed {
    // A value that is not an integer reads as -1, which no true value
    // equals: the record is then reported corrupt or refused by replicas.
    let col = |i| s.column(i).as_i64().unwrap_or(-1);
    Sealed {
        commit_id: CommitId(col(0) as u64),
        wal_offset: col(1) as u64,
        length: col(2) as u64,
        change_count: col(3) as u32,
        prev_chain: col(4) as u32,
        chain: col(5) as u32,
        crc: col(6) as u32,
    }
}
