//! Encoding: values and changes, records with their CRC and chained
//! checksum (`RecordEncoder`), record seals.

use super::errors::EncodeError;
use super::{
    ChainPosition, Change, CommitId, Generation, Operation, Value, WalOffset,
    MAX_CHANGES_PER_RECORD, MAX_COLUMNS, MAX_RECORD_BYTES, MAX_SCHEMA_SQL_BYTES,
    MAX_TABLE_NAME_BYTES, MAX_VALUE_BYTES, RECORD_OVERHEAD, SEGMENT_HEADER_LEN,
};

// ---------------------------------------------------------------- encoding

pub(super) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(super) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
pub(super) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn too_large(what: &'static str, actual: usize, limit: usize) -> EncodeError {
    EncodeError::TooLarge {
        what,
        actual: actual as u64,
        limit: limit as u64,
        commit_id: None,
    }
}

/// A borrowed SQLite value, for encoding without copying.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    /// NULL.
    Null,
    /// INTEGER.
    Integer(i64),
    /// REAL.
    Real(f64),
    /// TEXT bytes.
    Text(&'a [u8]),
    /// BLOB bytes.
    Blob(&'a [u8]),
}

impl Value {
    /// Borrows the value.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(t) => ValueRef::Text(t),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

/// Appends one value.
pub fn encode_value(out: &mut Vec<u8>, value: ValueRef<'_>) -> Result<(), EncodeError> {
    match value {
        ValueRef::Null => out.push(0),
        ValueRef::Integer(i) => {
            out.push(1);
            out.extend_from_slice(&i.to_le_bytes());
        }
        ValueRef::Real(r) => {
            out.push(2);
            out.extend_from_slice(&r.to_bits().to_le_bytes());
        }
        ValueRef::Text(b) | ValueRef::Blob(b) => {
            if b.len() > MAX_VALUE_BYTES {
                return Err(too_large("value", b.len(), MAX_VALUE_BYTES));
            }
            out.push(if matches!(value, ValueRef::Text(_)) {
                3
            } else {
                4
            });
            put_u32(out, b.len() as u32);
            out.extend_from_slice(b);
        }
    }
    Ok(())
}

/// Appends the header of a change: operation and table name.
pub fn encode_change_header(
    out: &mut Vec<u8>,
    op: Operation,
    table: &str,
) -> Result<(), EncodeError> {
    if table.len() > MAX_TABLE_NAME_BYTES {
        return Err(too_large("table name", table.len(), MAX_TABLE_NAME_BYTES));
    }
    out.push(op as u8);
    put_u16(out, table.len() as u16);
    out.extend_from_slice(table.as_bytes());
    Ok(())
}

/// Appends a column count (of key or values).
pub fn encode_count(out: &mut Vec<u8>, n: usize) -> Result<(), EncodeError> {
    if n > MAX_COLUMNS {
        return Err(too_large("column count", n, MAX_COLUMNS));
    }
    put_u16(out, n as u16);
    Ok(())
}

pub(super) fn encode_values(out: &mut Vec<u8>, values: &[Value]) -> Result<(), EncodeError> {
    encode_count(out, values.len())?;
    values
        .iter()
        .try_for_each(|v| encode_value(out, v.as_ref()))
}

/// A schema statement: a `u32` length (at most [`MAX_SCHEMA_SQL_BYTES`])
/// and its UTF-8 bytes.
fn put_statement(out: &mut Vec<u8>, statement: &str) -> Result<(), EncodeError> {
    if statement.len() > MAX_SCHEMA_SQL_BYTES {
        return Err(too_large(
            "schema statement",
            statement.len(),
            MAX_SCHEMA_SQL_BYTES,
        ));
    }
    put_u32(out, statement.len() as u32);
    out.extend_from_slice(statement.as_bytes());
    Ok(())
}

/// A table name: a `u16` length (at most [`MAX_TABLE_NAME_BYTES`]) and its
/// UTF-8 bytes.
fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), EncodeError> {
    if name.len() > MAX_TABLE_NAME_BYTES {
        return Err(too_large("table name", name.len(), MAX_TABLE_NAME_BYTES));
    }
    put_u16(out, name.len() as u16);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

/// Encodes one change as it is stored on the primary and carried in a
/// record.
pub fn encode_change(change: &Change) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_change_header(&mut out, change.operation(), change.table())?;
    match change {
        Change::Insert { values, .. } => encode_values(&mut out, values)?,
        Change::Update { key, values, .. } => {
            encode_values(&mut out, key)?;
            encode_values(&mut out, values)?;
        }
        Change::Delete { key, .. } | Change::Discard { key, .. } => encode_values(&mut out, key)?,
        Change::Schema { sql, indexes, .. } => {
            encode_count(&mut out, indexes.len())?;
            for statement in std::iter::once(sql).chain(indexes) {
                put_statement(&mut out, statement)?;
            }
        }
        Change::Unreplicate { .. } => {}
        Change::Alter { statements, tables } => {
            if tables.is_empty() {
                return Err(too_large("altered table count", 0, 0));
            }
            put_statement(&mut out, statements)?;
            encode_count(&mut out, tables.len())?;
            for t in tables {
                put_name(&mut out, &t.name)?;
                match &t.after {
                    None => out.push(0),
                    Some(d) => {
                        out.push(1);
                        put_name(&mut out, &d.name)?;
                        put_statement(&mut out, &d.sql)?;
                        encode_count(&mut out, d.indexes.len())?;
                        for i in &d.indexes {
                            put_statement(&mut out, i)?;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The segment CRC of a segment's bytes before its trailer: over the header
/// without its own CRC, and the body. (A CRC over bytes that include a CRC
/// of their start would not depend on that start: format 1 covered the
/// header CRC, so its segment CRC did not protect the header.)
pub fn segment_crc(before_trailer: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&before_trailer[..HEADER_CRC_AT.min(before_trailer.len())]);
    if before_trailer.len() > SEGMENT_HEADER_LEN {
        h.update(&before_trailer[SEGMENT_HEADER_LEN..]);
    }
    h.finalize()
}

/// Offset of the header CRC in a segment.
pub(super) const HEADER_CRC_AT: usize = 56;

/// Bytes of a record before its first change.
pub const RECORD_HEADER_LEN: usize = 28;

/// Offset of `prev_chain` in a record.
pub(super) const PREV_CHAIN_AT: usize = 24;

/// Offset of the change count word in a record.
pub(super) const COUNT_AT: usize = 20;

/// Bit 31 of a record's change count word: its transaction continues in
/// the next record.
pub const CONTINUES: u32 = 1 << 31;

/// A record's own CRC: over its bytes before the two checksums, without
/// `prev_chain`. It checks the record by itself, independent of history;
/// the chain (which covers `prev_chain`) checks its place in history. (A
/// CRC over bytes that end with their own CRC would be a constant.)
pub(super) fn record_crc(before_checksums: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&before_checksums[..PREV_CHAIN_AT]);
    h.update(&before_checksums[PREV_CHAIN_AT + 4..]);
    h.finalize()
}

/// One encoded record with the values a primary persists about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedRecord {
    /// Its CommitId.
    pub commit_id: CommitId,
    /// Where it starts in the WAL stream.
    pub wal_offset: WalOffset,
    /// Chained checksum of the previous record.
    pub prev_chain: u32,
    /// Its chained checksum.
    pub chain: u32,
    /// Its CRC32.
    pub crc: u32,
    /// Number of changes.
    pub change_count: u32,
    /// The record's bytes.
    pub bytes: Vec<u8>,
}

impl EncodedRecord {
    /// The same record carrying the checksums a store holds for it instead
    /// of the computed ones: a primary serves its WAL as stored, and a
    /// record whose stored checksums disagree with its bytes is then
    /// refused by the replica's Validator, naming its CommitId and offset.
    pub fn with_stored_checksums(mut self, chain: u32, crc: u32) -> EncodedRecord {
        let n = self.bytes.len();
        self.bytes[n - 8..n - 4].copy_from_slice(&chain.to_le_bytes());
        self.bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
        self.chain = chain;
        self.crc = crc;
        self
    }

    /// Whether its transaction continues in the next record (read from
    /// its bytes, as stored).
    pub fn continues(&self) -> bool {
        self.bytes
            .get(COUNT_AT..COUNT_AT + 4)
            .is_some_and(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) & CONTINUES != 0)
    }

    /// The chain position just after this record.
    pub fn end_position(&self, generation: Generation) -> ChainPosition {
        ChainPosition {
            generation,
            commit_id: self.commit_id,
            wal_offset: WalOffset(self.wal_offset.0 + self.bytes.len() as u64),
            chain: self.chain,
        }
    }
}

/// Encodes consecutive records, carrying the WAL offset and chain from one
/// to the next. Records are a pure function of (position, CommitId,
/// changes): the same history always gives the same bytes.
#[derive(Clone, Debug)]
pub struct RecordEncoder {
    position: ChainPosition,
}

impl RecordEncoder {
    /// Starts after `position`.
    pub fn new(position: ChainPosition) -> RecordEncoder {
        RecordEncoder { position }
    }

    /// The position after the last record encoded.
    pub fn position(&self) -> ChainPosition {
        self.position
    }

    /// Encodes the record of `commit_id` (which must be the next CommitId)
    /// from its encoded changes, in order.
    pub fn push(
        &mut self,
        commit_id: CommitId,
        changes: &[&[u8]],
    ) -> Result<EncodedRecord, EncodeError> {
        let mut framed = Vec::with_capacity(changes.iter().map(|c| 4 + c.len()).sum());
        for c in changes {
            put_u32(&mut framed, c.len() as u32);
            framed.extend_from_slice(c);
        }
        let mut bytes = Vec::new();
        let seal = self.push_framed(commit_id, changes.len(), &framed, &mut bytes)?;
        Ok(EncodedRecord {
            commit_id,
            wal_offset: seal.wal_offset,
            prev_chain: seal.prev_chain,
            chain: seal.chain,
            crc: seal.crc,
            change_count: seal.change_count,
            bytes,
        })
    }

    /// Encodes the record of `commit_id` (the next CommitId) into `out`
    /// (cleared first) from `count` changes already framed as the record
    /// carries them (each a `u32` length and its bytes, back to back), and
    /// returns its seal.
    pub fn push_framed(
        &mut self,
        commit_id: CommitId,
        count: usize,
        framed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<RecordSeal, EncodeError> {
        out.clear();
        out.reserve(RECORD_OVERHEAD + framed.len());
        out.resize(RECORD_HEADER_LEN, 0);
        out.extend_from_slice(framed);
        self.seal_in_place(commit_id, count, out)
    }

    /// Turns `record` (its first [`RECORD_HEADER_LEN`] bytes reserved,
    /// then `count` framed changes) into the record of `commit_id` (the
    /// next CommitId): fills in the header, appends the two checksums and
    /// returns its seal. Writers build the changes in place, so a record is
    /// held once in memory.
    pub fn seal_in_place(
        &mut self,
        commit_id: CommitId,
        count: usize,
        record: &mut Vec<u8>,
    ) -> Result<RecordSeal, EncodeError> {
        self.seal_part_in_place(commit_id, count, false, record)
    }

    /// [`RecordEncoder::seal_in_place`] for a record that may not end its
    /// transaction: with `continues`, the transaction's changes go on in
    /// the next record (which takes the next CommitId), and a replica
    /// applies them together, its position never stopping in between.
    pub fn seal_part_in_place(
        &mut self,
        commit_id: CommitId,
        count: usize,
        continues: bool,
        record: &mut Vec<u8>,
    ) -> Result<RecordSeal, EncodeError> {
        assert!(
            record.len() >= RECORD_HEADER_LEN,
            "seal_in_place: the caller reserves the record header"
        );
        if commit_id != self.position.commit_id.next() {
            return Err(EncodeError::NotContiguous {
                previous: self.position.commit_id,
                actual: commit_id,
            });
        }
        let too_big = |what, actual, limit| EncodeError::TooLarge {
            what,
            actual: actual as u64,
            limit: limit as u64,
            commit_id: Some(commit_id),
        };
        if count > MAX_CHANGES_PER_RECORD as usize {
            return Err(too_big(
                "change count",
                count,
                MAX_CHANGES_PER_RECORD as usize,
            ));
        }
        let len = record.len() + 8;
        if len > MAX_RECORD_BYTES {
            return Err(too_big("record", len, MAX_RECORD_BYTES));
        }
        // The decoder never accepts the last representable CommitId (its
        // successor does not exist), nor a record ending past the largest
        // WAL offset: refuse to write them.
        if commit_id.0 == u64::MAX {
            return Err(too_big("CommitId", usize::MAX, usize::MAX - 1));
        }
        let Some(end) = self.position.wal_offset.0.checked_add(len as u64) else {
            return Err(EncodeError::TooLarge {
                what: "WAL offset",
                actual: u64::MAX,
                limit: u64::MAX - len as u64,
                commit_id: Some(commit_id),
            });
        };
        let mut header = Vec::with_capacity(RECORD_HEADER_LEN);
        put_u32(&mut header, len as u32);
        put_u64(&mut header, commit_id.0);
        put_u64(&mut header, self.position.wal_offset.0);
        put_u32(
            &mut header,
            count as u32 | if continues { CONTINUES } else { 0 },
        );
        put_u32(&mut header, self.position.chain);
        record[..RECORD_HEADER_LEN].copy_from_slice(&header);
        let chain = crc32fast::hash(record);
        let crc = record_crc(record);
        put_u32(record, chain);
        put_u32(record, crc);
        let seal = RecordSeal {
            wal_offset: self.position.wal_offset,
            prev_chain: self.position.chain,
            chain,
            crc,
            change_count: count as u32,
        };
        self.position = ChainPosition {
            generation: self.position.generation,
            commit_id,
            wal_offset: WalOffset(end),
            chain,
        };
        Ok(seal)
    }
}

/// What a primary stores about a record besides its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSeal {
    /// Where the record starts in the WAL stream.
    pub wal_offset: WalOffset,
    /// The previous record's chained checksum.
    pub prev_chain: u32,
    /// Its chained checksum.
    pub chain: u32,
    /// Its CRC32.
    pub crc: u32,
    /// Number of changes.
    pub change_count: u32,
}
