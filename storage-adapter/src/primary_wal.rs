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

use crate::raw::{OwnedValue, RawConn, RawError, Stmt};
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

    /// The newest sealed record at or below `commit_id`, with its values.
    fn sealed_at_or_below(
        &self,
        commit_id: CommitId,
    ) -> Result<Option<(CommitId, Sealed)>, WalReadError> {
        let mut s = self.conn.prepare(
            "SELECT commit_id, wal_offset, length, change_count, prev_chain, chain, crc FROM main.aerodb_commits WHERE commit_id BETWEEN 1 AND ?1 ORDER BY commit_id DESC LIMIT 1",
        )?;
        s.bind(1, ValueRef::Integer(commit_id.0 as i64))?;
        if !s.step()? {
            return Ok(None);
        }
        Ok(Some(sealed_row(&s)))
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
        let start = self.sealed_start(generation, commit_id)?;
        let mut encoder = RecordEncoder::new(start);
        self.scan(
            &mut encoder,
            start.commit_id.next(),
            commit_id,
            usize::MAX,
            Sealing::NoneInRange,
            |_| {},
        )?;
        Ok(encoder.position())
    }

    /// The position just after the newest sealed record at or below
    /// `commit_id` (genesis if there is none): where computing records
    /// forward to `commit_id` starts.
    fn sealed_start(
        &self,
        generation: Generation,
        commit_id: CommitId,
    ) -> Result<ChainPosition, WalReadError> {
        match self.sealed_at_or_below(commit_id)? {
            Some((base, sealed)) => sealed.end_position(generation, base),
            None => Ok(ChainPosition::genesis(generation)),
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

    /// Drops the WAL below `below` (inside the caller's write
    /// transaction): seals every commit first, so the record of
    /// `below - 1` stays as the base later records chain from; returns the
    /// new oldest CommitId. Refuses to drop WAL past the head.
    pub(crate) fn truncate_below(
        &self,
        generation: Generation,
        below: CommitId,
    ) -> Result<CommitId, WalReadError> {
        let (head, _) = self.head()?;
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
        self.seal_through(generation, head)?;
        self.conn.execute(
            "DELETE FROM main.aerodb_changes WHERE pos < ?1",
            &[ValueRef::Integer(first_pos(below))],
        )?;
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
        self.scan(&mut encoder, from, last, max_bytes, Sealing::Check, |r| {
            out.push(r)
        })?;
        Ok(out)
    }

    /// Encodes the records `from..=last` after `encoder`'s position, in
    /// order, until their bytes reach `max_bytes` (at least one record if
    /// `from <= last`), and hands each to `sink`. With [`Sealing::Check`]
    /// each one is checked against its sealed values, if any.
    ///
    /// One statement reads the change rows of the whole range and (with
    /// [`Sealing::Check`]) one its sealed rows, merged by CommitId:
    /// preparing two statements per commit cost many times the encoding.
    fn scan(
        &self,
        encoder: &mut RecordEncoder,
        from: CommitId,
        last: CommitId,
        max_bytes: usize,
        sealing: Sealing,
        mut sink: impl FnMut(EncodedRecord),
    ) -> Result<(), WalReadError> {
        if from > last {
            return Ok(());
        }
        // No upper bound in SQL: the scan stops at `last` or at the byte
        // budget, whichever comes first, by not stepping further.
        let mut rows = self
            .conn
            .prepare("SELECT pos, change FROM main.aerodb_changes WHERE pos >= ?1 ORDER BY pos")?;
        rows.bind(1, ValueRef::Integer(first_pos(from)))?;
        let mut sealed = SealedRows::new(&self.conn, from, sealing)?;
        // The change rows gathered for `commit_id`, back to back, and where
        // each one ends.
        let mut changes: Vec<u8> = Vec::new();
        let mut ends: Vec<usize> = Vec::new();
        let mut commit_id = from;
        let mut bytes = 0usize;
        loop {
            let row_commit = if rows.step()? {
                match rows.column(0).as_i64() {
                    Some(pos) => Some(commit_of(pos)),
                    None => {
                        return Err(WalReadError::Corrupt {
                            commit_id,
                            problem: format!(
                                "a change row's pos is {:?}, expected an INTEGER",
                                rows.column(0)
                            ),
                        })
                    }
                }
            } else {
                None
            };
            if row_commit != Some(commit_id) {
                // A row of a later commit, or the end: `commit_id` has all
                // its rows.
                if !ends.is_empty() {
                    let record = encode(encoder, &mut sealed, commit_id, &changes, &ends)?;
                    bytes = bytes.saturating_add(record.bytes.len());
                    sink(record);
                    changes.clear();
                    ends.clear();
                    commit_id = commit_id.next();
                    if commit_id > last || bytes >= max_bytes {
                        return Ok(());
                    }
                }
                if row_commit != Some(commit_id) {
                    return Err(WalReadError::Corrupt {
                        commit_id,
                        problem: "no change rows (every commit has at least one)".into(),
                    });
                }
            }
            match rows.column_blob(1) {
                Some(change) => {
                    changes.extend_from_slice(change);
                    ends.push(changes.len());
                }
                None => {
                    return Err(WalReadError::Corrupt {
                        commit_id,
                        problem: format!(
                            "change {} is {:?}, expected a BLOB",
                            ends.len(),
                            rows.column(1)
                        ),
                    })
                }
            }
        }
    }

    /// Seals every unsealed commit up to `head` (writer side, inside the
    /// writing transaction).
    pub(crate) fn seal_through(
        &self,
        generation: Generation,
        head: CommitId,
    ) -> Result<(), WalReadError> {
        // After the newest sealed record.
        let start = self.sealed_start(generation, CommitId(i64::MAX as u64))?;
        if head <= start.commit_id {
            return Ok(());
        }
        let mut encoder = RecordEncoder::new(start);
        // Only the sealed values are kept, and the scan is done before the
        // first INSERT.
        let mut rows = Vec::new();
        self.scan(
            &mut encoder,
            start.commit_id.next(),
            head,
            usize::MAX,
            Sealing::NoneInRange,
            |r| rows.push((r.commit_id, Sealed::of(&r))),
        )?;
        let mut s = self.conn.prepare(
            "INSERT INTO main.aerodb_commits(commit_id, wal_offset, length, change_count, prev_chain, chain, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (commit_id, r) in rows {
            let values = [
                commit_id.0 as i64,
                r.wal_offset as i64,
                r.length as i64,
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

/// Encodes the record of `commit_id` from its change rows (`changes`, each
/// ending at the next of `ends`) after `encoder`'s position, and checks it
/// against its sealed values, if any.
fn encode(
    encoder: &mut RecordEncoder,
    sealed: &mut SealedRows<'_>,
    commit_id: CommitId,
    changes: &[u8],
    ends: &[usize],
) -> Result<EncodedRecord, WalReadError> {
    let mut start = 0;
    let refs: Vec<&[u8]> = ends
        .iter()
        .map(|&end| {
            let change = &changes[start..end];
            start = end;
            change
        })
        .collect();
    let record = encoder
        .push(commit_id, &refs)
        .map_err(|source| WalReadError::Encode { commit_id, source })?;
    if let Some(sealed) = sealed.get(commit_id)? {
        let computed = Sealed::of(&record);
        if computed != sealed {
            let same_place = Sealed {
                chain: sealed.chain,
                crc: sealed.crc,
                ..computed
            } == sealed;
            if !same_place {
                return Err(WalReadError::Corrupt {
                    commit_id,
                    problem: format!(
                        "sealed record is {sealed:?}, its change rows give {computed:?}"
                    ),
                });
            }
            // Same place, other checksums: the change rows or the sealed
            // checksums were damaged. Serve the record as stored (its
            // stored checksums over its bytes): the replica's Validator
            // refuses it, naming the commit and WAL offset. The primary
            // stays passive and changes nothing.
            tracing::warn!(
                commit_id = commit_id.0,
                "sealed checksums differ from the change rows; serving them as stored"
            );
            let record = record.with_stored_checksums(sealed.chain, sealed.crc);
            let end = record.end_position(encoder.position().generation);
            *encoder = RecordEncoder::new(end);
            return Ok(record);
        }
    }
    Ok(record)
}

impl Sealed {
    /// The values a writer seals for `record`.
    fn of(record: &EncodedRecord) -> Sealed {
        Sealed {
            wal_offset: record.wal_offset.0,
            length: record.bytes.len() as u64,
            change_count: record.change_count,
            prev_chain: record.prev_chain,
            chain: record.chain,
            crc: record.crc,
        }
    }

    /// The chain position just after the sealed record `commit_id`.
    fn end_position(
        &self,
        generation: Generation,
        commit_id: CommitId,
    ) -> Result<ChainPosition, WalReadError> {
        let end =
            self.wal_offset
                .checked_add(self.length)
                .ok_or_else(|| WalReadError::Corrupt {
                    commit_id,
                    problem: format!("sealed record {self:?} ends past the largest WAL offset"),
                })?;
        Ok(ChainPosition {
            generation,
            commit_id,
            wal_offset: WalOffset(end),
            chain: self.chain,
        })
    }
}

/// The sealed values in the current row of a statement selecting
/// `commit_id, wal_offset, length, change_count, prev_chain, chain, crc`.
fn sealed_row(s: &Stmt<'_>) -> (CommitId, Sealed) {
    // A value that is not an integer reads as -1, which no computed value
    // equals: the record is then reported corrupt, with both values.
    let col = |i| s.column(i).as_i64().unwrap_or(-1);
    (
        CommitId(col(0) as u64),
        Sealed {
            wal_offset: col(1) as u64,
            length: col(2) as u64,
            change_count: as_u32(col(3)),
            prev_chain: as_u32(col(4)),
            chain: as_u32(col(5)),
            crc: as_u32(col(6)),
        },
    )
}

/// Whether a scanned range may hold sealed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sealing {
    /// It may: each record is checked against its sealed values, if any.
    Check,
    /// It cannot: it starts just after the newest sealed record at or below
    /// its end (in this transaction), so there is nothing to read.
    NoneInRange,
}

/// The sealed rows of a range, in CommitId order, read alongside its change
/// rows: one statement for the range instead of one lookup per commit.
struct SealedRows<'c> {
    /// `None` for [`Sealing::NoneInRange`].
    stmt: Option<Stmt<'c>>,
    /// The row under the cursor; `None` before the first step or after the
    /// last row.
    current: Option<(CommitId, Sealed)>,
    /// No rows remain.
    done: bool,
}

impl<'c> SealedRows<'c> {
    fn new(
        conn: &'c RawConn,
        from: CommitId,
        sealing: Sealing,
    ) -> Result<SealedRows<'c>, WalReadError> {
        let stmt = match sealing {
            Sealing::NoneInRange => None,
            Sealing::Check => {
                let mut stmt = conn.prepare(
                    "SELECT commit_id, wal_offset, length, change_count, prev_chain, chain, crc FROM main.aerodb_commits WHERE commit_id >= ?1 ORDER BY commit_id",
                )?;
                stmt.bind(1, ValueRef::Integer(from.0 as i64))?;
                Some(stmt)
            }
        };
        Ok(SealedRows {
            done: stmt.is_none(),
            stmt,
            current: None,
        })
    }

    /// The sealed values of `commit_id`, if it is sealed. CommitIds must be
    /// asked in increasing order.
    fn get(&mut self, commit_id: CommitId) -> Result<Option<Sealed>, WalReadError> {
        loop {
            match self.current {
                Some((c, sealed)) if c == commit_id => return Ok(Some(sealed)),
                Some((c, _)) if c > commit_id => return Ok(None),
                _ if self.done => return Ok(None),
                _ => {}
            }
            let Some(stmt) = &mut self.stmt else {
                self.done = true;
                return Ok(None);
            };
            if stmt.step()? {
                self.current = Some(sealed_row(stmt));
            } else {
                self.current = None;
                self.done = true;
            }
        }
    }
}
