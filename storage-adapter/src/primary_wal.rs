//! The primary's WAL as stored in its SQLite file: reading records and
//! sealing them.
//!
//! Role in the spec: the Primary "appends WAL and exposes WAL segments"
//! (rule P1). Capture triggers append change rows (`aerodb_changes`); this
//! module turns committed change rows into the records of
//! [`replication::wal`], byte for byte the same whether the writer sealed
//! them (`aerodb_commits`) or a reader computes them. Reading is read-only
//! (P2): a replica or a server reads in its own read transaction.
//!
//! A record is a pure function of its changes and the previous record's
//! position and chain, so sealing only caches values; every read of a
//! sealed record recomputes it and checks the stored values (STYLE 14:
//! check at both ends of persistence).

use crate::raw::{OwnedValue, RawConn, RawError};
use replication::wal::{
    ChainPosition, CommitId, EncodeError, EncodedRecord, Generation, RecordEncoder, WalOffset,
};
use rusqlite::types::ValueRef;

/// Bits of `aerodb_changes.pos` that hold the change's sequence number
/// within its commit; the CommitId is in the bits above.
pub const SEQ_BITS: u32 = 24;
/// Most change rows one transaction can write (sequence numbers are not
/// reused after `ROLLBACK TO`, so this counts those too).
pub const MAX_SEQ: u32 = (1 << SEQ_BITS) - 1;
/// A writer seals the unsealed tail once it is this many commits long; a
/// reader computes at most about this many records beyond the last sealed.
pub const SEAL_BATCH: u64 = 64;
/// Largest CommitId `pos` can hold.
pub const MAX_COMMIT_ID: u64 = (i64::MAX as u64) >> SEQ_BITS;

/// First `pos` of `commit_id`.
pub fn first_pos(commit_id: CommitId) -> i64 {
    (commit_id.0 << SEQ_BITS) as i64
}

/// The CommitId of a `pos`.
pub fn commit_of(pos: i64) -> CommitId {
    CommitId((pos as u64) >> SEQ_BITS)
}

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
    wal_offset: u64,
    length: u64,
    change_count: u32,
    prev_chain: u32,
    chain: u32,
    crc: u32,
}

/// Read access to the WAL tables of one primary connection, inside whatever
/// transaction the caller holds.
pub(crate) struct WalTables {
    conn: RawConn,
}

fn as_u32(v: i64) -> u32 {
    v as u32
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

    /// (newest CommitId, newest sealed CommitId).
    pub(crate) fn head(&self) -> Result<(CommitId, CommitId), WalReadError> {
        let max_pos = self
            .conn
            .query_value("SELECT max(pos) FROM main.aerodb_changes", &[])?
            .and_then(|v| v.as_i64());
        let sealed = self.max_sealed()?;
        let head = max_pos.map(commit_of).unwrap_or_default().max(sealed);
        Ok((head, sealed))
    }

    fn max_sealed(&self) -> Result<CommitId, WalReadError> {
        Ok(CommitId(
            self.conn
                .query_value("SELECT max(commit_id) FROM main.aerodb_commits", &[])?
                .and_then(|v| v.as_i64())
                .unwrap_or(0) as u64,
        ))
    }

    fn sealed(&self, commit_id: CommitId) -> Result<Option<Sealed>, WalReadError> {
        let mut s = self.conn.prepare(
            "SELECT wal_offset, length, change_count, prev_chain, chain, crc FROM main.aerodb_commits WHERE commit_id = ?1",
        )?;
        s.bind(1, ValueRef::Integer(commit_id.0 as i64))?;
        if !s.step()? {
            return Ok(None);
        }
        let col = |i| s.column(i).as_i64().unwrap_or(-1);
        Ok(Some(Sealed {
            wal_offset: col(0) as u64,
            length: col(1) as u64,
            change_count: as_u32(col(2)),
            prev_chain: as_u32(col(3)),
            chain: as_u32(col(4)),
            crc: as_u32(col(5)),
        }))
    }

    /// The newest sealed CommitId at or below `commit_id`.
    fn sealed_at_or_below(&self, commit_id: CommitId) -> Result<Option<CommitId>, WalReadError> {
        Ok(self
            .conn
            .query_value(
                "SELECT max(commit_id) FROM main.aerodb_commits WHERE commit_id <= ?1",
                &[ValueRef::Integer(commit_id.0 as i64)],
            )?
            .and_then(|v| v.as_i64())
            .map(|c| CommitId(c as u64)))
    }

    fn changes(&self, commit_id: CommitId) -> Result<Vec<Vec<u8>>, WalReadError> {
        let mut s = self.conn.prepare(
            "SELECT change FROM main.aerodb_changes WHERE pos >= ?1 AND pos < ?2 ORDER BY pos",
        )?;
        s.bind(1, ValueRef::Integer(first_pos(commit_id)))?;
        s.bind(2, ValueRef::Integer(first_pos(commit_id.next())))?;
        let mut out = Vec::new();
        while s.step()? {
            match s.column(0) {
                OwnedValue::Blob(b) => out.push(b),
                other => {
                    return Err(WalReadError::Corrupt {
                        commit_id,
                        problem: format!("change {} is {other:?}, expected a BLOB", out.len()),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Encodes the record of `commit_id` after `encoder`'s position and
    /// checks it against its sealed values, if any.
    fn encode(
        &self,
        encoder: &mut RecordEncoder,
        commit_id: CommitId,
    ) -> Result<EncodedRecord, WalReadError> {
        let changes = self.changes(commit_id)?;
        if changes.is_empty() {
            return Err(WalReadError::Corrupt {
                commit_id,
                problem: "no change rows (every commit has at least one)".into(),
            });
        }
        let refs: Vec<&[u8]> = changes.iter().map(Vec::as_slice).collect();
        let record = encoder
            .push(commit_id, &refs)
            .map_err(|source| WalReadError::Encode { commit_id, source })?;
        if let Some(sealed) = self.sealed(commit_id)? {
            let computed = Sealed {
                wal_offset: record.wal_offset.0,
                length: record.bytes.len() as u64,
                change_count: record.change_count,
                prev_chain: record.prev_chain,
                chain: record.chain,
                crc: record.crc,
            };
            if computed != sealed {
                return Err(WalReadError::Corrupt {
                    commit_id,
                    problem: format!(
                        "sealed record is {sealed:?}, its change rows give {computed:?}"
                    ),
                });
            }
        }
        Ok(record)
    }

    /// The chain position just after `commit_id`: from its sealed row, or
    /// computed forward from the newest sealed record below it.
    pub(crate) fn position_after(
        &self,
        generation: Generation,
        commit_id: CommitId,
    ) -> Result<ChainPosition, WalReadError> {
        if commit_id.0 == 0 {
            return Ok(ChainPosition::genesis(generation));
        }
        if let Some(s) = self.sealed(commit_id)? {
            return Ok(ChainPosition {
                generation,
                commit_id,
                wal_offset: WalOffset(s.wal_offset + s.length),
                chain: s.chain,
            });
        }
        let base = self.sealed_at_or_below(commit_id)?;
        let mut encoder = RecordEncoder::new(match base {
            Some(b) => self.position_after(generation, b)?,
            None => ChainPosition::genesis(generation),
        });
        let mut c = base.unwrap_or_default().next();
        while c <= commit_id {
            self.encode(&mut encoder, c)?;
            c = c.next();
        }
        Ok(encoder.position())
    }

    /// Records from `from` on, at most up to `last`, until their bytes reach
    /// `max_bytes` (at least one record if any exists).
    pub(crate) fn records(
        &self,
        generation: Generation,
        from: CommitId,
        last: CommitId,
        max_bytes: usize,
    ) -> Result<Vec<EncodedRecord>, WalReadError> {
        let start = self.position_after(generation, CommitId(from.0.saturating_sub(1)))?;
        let mut encoder = RecordEncoder::new(start);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut c = from;
        while c <= last && (out.is_empty() || bytes < max_bytes) {
            let r = self.encode(&mut encoder, c)?;
            bytes += r.bytes.len();
            out.push(r);
            c = c.next();
        }
        Ok(out)
    }

    /// Seals every unsealed commit up to `head` (writer side, inside the
    /// writing transaction).
    pub(crate) fn seal_through(
        &self,
        generation: Generation,
        head: CommitId,
    ) -> Result<(), WalReadError> {
        let sealed = self.max_sealed()?;
        if head <= sealed {
            return Ok(());
        }
        let records = self.records(generation, sealed.next(), head, usize::MAX)?;
        let mut s = self.conn.prepare(
            "INSERT INTO main.aerodb_commits(commit_id, wal_offset, length, change_count, prev_chain, chain, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for r in records {
            let values = [
                r.commit_id.0 as i64,
                r.wal_offset.0 as i64,
                r.bytes.len() as i64,
                i64::from(r.change_count),
                i64::from(r.prev_chain),
                i64::from(r.chain),
                i64::from(r.crc),
            ];
            for (i, v) in values.iter().enumerate() {
                s.bind(i + 1, ValueRef::Integer(*v))?;
            }
            while s.step()? {}
            s.reset();
        }
        Ok(())
    }
}
