//! The WAL format: CommitIds, WAL offsets, records, chained checksums and
//! segments.
//!
//! Role in the spec: this is the data the Primary appends and exposes (rule
//! P1) and the Receiver, Validator and Applier pass along (R1, V1, W1). It is
//! pure data and pure functions: no IO, no clock, no SQLite.
//!
//! The byte layout is documented in `docs/wal-format.md`; this module is its
//! only implementation. Everything is little-endian. Decoding checks every
//! length against a named limit before it allocates, never panics on any
//! input, and names the segment, the CommitId, the WAL offset and the byte
//! position where it failed.
//!
//! Integrity has three layers:
//! - each record carries a CRC32 of its own bytes (bit flips);
//! - each record carries the previous record's *chained checksum* and its
//!   own, which is a CRC32 over its bytes including that previous value, so
//!   record N+1 proves it follows record N of the same history (forks,
//!   restored primaries);
//! - each segment carries a header CRC32 and a CRC32 over all its bytes.

use std::fmt;

/// Format version written in every segment header.
pub const FORMAT_VERSION: u16 = 3;
/// First bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 4] = *b"AEWS";
/// Bytes of the segment header, including its CRC.
pub const SEGMENT_HEADER_LEN: usize = 60;
/// Bytes after the body: the segment CRC32.
pub const SEGMENT_TRAILER_LEN: usize = 4;
/// Fixed bytes of a record: length, CommitId, WAL offset, change count,
/// previous chain, chain, CRC.
pub const RECORD_OVERHEAD: usize = 4 + 8 + 8 + 4 + 4 + 4 + 4;

/// Largest value (TEXT or BLOB) a change may carry.
pub const MAX_VALUE_BYTES: usize = 32 << 20;
/// Largest encoded record (one committed transaction).
pub const MAX_RECORD_BYTES: usize = 64 << 20;
/// Largest segment body; a segment can always hold one maximal record.
pub const MAX_SEGMENT_BODY_BYTES: usize = MAX_RECORD_BYTES + (16 << 20);
/// Most records in one segment.
pub const MAX_RECORDS_PER_SEGMENT: u32 = 1 << 20;
/// Most changes in one record.
pub const MAX_CHANGES_PER_RECORD: u32 = (1 << 24) - 1;
/// Most columns (or key columns) in one change; SQLite's default limit.
pub const MAX_COLUMNS: usize = 2000;
/// Longest table name.
pub const MAX_TABLE_NAME_BYTES: usize = 1024;
/// Longest schema statement.
pub const MAX_SCHEMA_SQL_BYTES: usize = 1 << 20;

/// A commit's position in the primary's history: 1, 2, 3, ... with no gaps.
/// 0 means "nothing yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CommitId(pub u64);

impl CommitId {
    /// The CommitId after this one (saturating: decoding refuses the last
    /// representable CommitId, so this never wraps on real data).
    pub fn next(self) -> CommitId {
        CommitId(self.0.saturating_add(1))
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A byte position in the primary's logical WAL stream (like a PostgreSQL
/// LSN). Record 1 starts at 0; each record starts where the previous ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WalOffset(pub u64);

impl fmt::Display for WalOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A random id chosen when a database becomes a primary. WAL of another
/// generation is another history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A SQLite value. TEXT keeps its bytes as SQLite stored them, so a value
/// survives the round trip even if it is not valid UTF-8.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// INTEGER.
    Integer(i64),
    /// REAL.
    Real(f64),
    /// TEXT, as stored.
    Text(Vec<u8>),
    /// BLOB.
    Blob(Vec<u8>),
}

/// What a change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// The row with this key is now these values (inserted, or replacing
    /// the row with the same primary key).
    Insert = 1,
    /// The row with this key, which exists, now holds these values.
    Update = 2,
    /// The row with this key, which exists, is gone.
    Delete = 3,
    /// A table started being replicated: its `CREATE TABLE` statement.
    Schema = 4,
    /// The row with this key, if there is one, is gone.
    Discard = 5,
}

impl Operation {
    fn from_byte(b: u8) -> Option<Operation> {
        match b {
            1 => Some(Operation::Insert),
            2 => Some(Operation::Update),
            3 => Some(Operation::Delete),
            4 => Some(Operation::Schema),
            5 => Some(Operation::Discard),
            _ => None,
        }
    }
}

/// One row change (or schema change) of a committed transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// `values` are all stored columns, in table order.
    Insert {
        /// Table name.
        table: String,
        /// Column values in table order.
        values: Vec<Value>,
    },
    /// The row with primary key `key` now holds `values` (whose key columns
    /// may differ from `key`).
    Update {
        /// Table name.
        table: String,
        /// The old primary key, in primary-key order.
        key: Vec<Value>,
        /// The new column values in table order.
        values: Vec<Value>,
    },
    /// The row with primary key `key` was deleted; the replica must have
    /// it (a replica without it has diverged).
    Delete {
        /// Table name.
        table: String,
        /// The primary key, in primary-key order.
        key: Vec<Value>,
    },
    /// No row with primary key `key` exists at the end of the commit
    /// (whether or not one existed before it).
    Discard {
        /// Table name.
        table: String,
        /// The primary key, in primary-key order.
        key: Vec<Value>,
    },
    /// `table` is replicated from this commit on, created by `sql`.
    Schema {
        /// Table name.
        table: String,
        /// Its `CREATE TABLE` statement as the primary's schema holds it.
        sql: String,
        /// Its `CREATE INDEX` statements, by index name: unique ones decide
        /// which rows `REPLACE` deletes, so the replica must have the same.
        /// The table's rows at this commit follow as Inserts in the record.
        indexes: Vec<String>,
    },
}

impl Change {
    /// The table the change concerns.
    pub fn table(&self) -> &str {
        match self {
            Change::Insert { table, .. }
            | Change::Update { table, .. }
            | Change::Delete { table, .. }
            | Change::Discard { table, .. }
            | Change::Schema { table, .. } => table,
        }
    }

    /// The operation.
    pub fn operation(&self) -> Operation {
        match self {
            Change::Insert { .. } => Operation::Insert,
            Change::Update { .. } => Operation::Update,
            Change::Delete { .. } => Operation::Delete,
            Change::Discard { .. } => Operation::Discard,
            Change::Schema { .. } => Operation::Schema,
        }
    }
}

/// Where a replica stands in a primary's history: the last applied CommitId,
/// the WAL offset where the next record must start, and the chained checksum
/// the next record must carry as its predecessor's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainPosition {
    /// The primary generation this history belongs to.
    pub generation: Generation,
    /// Last CommitId covered (0 = none).
    pub commit_id: CommitId,
    /// WAL offset just past the last covered record.
    pub wal_offset: WalOffset,
    /// Chained checksum of the last covered record (or the genesis value).
    pub chain: u32,
}

impl ChainPosition {
    /// The position before commit 1 of `generation`.
    pub fn genesis(generation: Generation) -> ChainPosition {
        ChainPosition {
            generation,
            commit_id: CommitId(0),
            wal_offset: WalOffset(0),
            chain: genesis_chain(generation),
        }
    }
}

/// The chained checksum "before" commit 1: binds the chain to the
/// generation, so two primaries never share a chain.
pub fn genesis_chain(generation: Generation) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(b"aerodb-genesis");
    h.update(&generation.0.to_le_bytes());
    h.finalize()
}

/// Errors building WAL on the primary (values or transactions too large).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A named limit was exceeded.
    #[error("{what} is {actual} bytes/items, over the limit of {limit}{}", at_commit(*commit_id))]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        actual: u64,
        /// The limit (see the `MAX_*` constants).
        limit: u64,
        /// The commit concerned, if known.
        commit_id: Option<CommitId>,
    },
    /// Records given to a segment are not contiguous.
    #[error("record for commit {actual} does not follow commit {previous} (expected commit {})", previous.next())]
    NotContiguous {
        /// The previous record's CommitId.
        previous: CommitId,
        /// The record that did not follow it.
        actual: CommitId,
    },
    /// A segment needs at least one record.
    #[error("a segment needs at least one record")]
    EmptySegment,
    /// A segment ending inside a transaction would hold the end of
    /// another one.
    #[error("a segment that ends inside the transaction of commit {last} cannot hold commit {ended}, which ends a transaction")]
    MixedTransactions {
        /// A record that ends its transaction.
        ended: CommitId,
        /// The segment's last record, which continues.
        last: CommitId,
    },
}

fn at_commit(c: Option<CommitId>) -> String {
    c.map(|c| format!(" (commit {c})")).unwrap_or_default()
}

/// Why a segment could not be decoded. Every variant says where: the byte
/// position within the segment and, once the header has been read, the
/// segment's CommitId range; per-record variants name the CommitId and WAL
/// offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the structure at `at` needs.
    #[error(
        "segment truncated: {needed} bytes needed at byte {at}, only {available} present{}",
        in_range(range)
    )]
    Truncated {
        /// Byte position in the segment.
        at: usize,
        /// Bytes needed from there.
        needed: usize,
        /// Bytes present from there.
        available: usize,
        /// The segment's CommitId range, if the header was readable.
        range: Option<(CommitId, CommitId)>,
    },
    /// The segment does not start with the magic bytes.
    #[error("not an AeroDB WAL segment: magic {actual:02x?} at byte 0, expected {expected:02x?}")]
    BadMagic {
        /// Expected magic.
        expected: [u8; 4],
        /// Found.
        actual: [u8; 4],
    },
    /// A format version this build does not read.
    #[error(
        "unsupported WAL format version {actual} at byte 4 (this build reads version {expected})"
    )]
    UnsupportedVersion {
        /// Supported version.
        expected: u16,
        /// Found.
        actual: u16,
    },
    /// The header CRC does not match its bytes.
    #[error("segment header corrupt: header CRC32 at byte 56 is 0x{actual:08x}, computed 0x{expected:08x}")]
    HeaderChecksum {
        /// CRC computed over the header bytes.
        expected: u32,
        /// CRC stored.
        actual: u32,
    },
    /// A header field is out of its bounds or inconsistent.
    #[error("segment {}..={} header invalid: {field} is {actual}, {rule}", range.0, range.1)]
    BadHeader {
        /// The field.
        field: &'static str,
        /// Its value.
        actual: u64,
        /// The rule it breaks.
        rule: String,
        /// The segment's CommitId range as the header claims it.
        range: (CommitId, CommitId),
    },
    /// The segment has bytes past its declared end.
    #[error("segment {}..={}: {extra} unexpected bytes after the end at byte {at}", range.0, range.1)]
    TrailingBytes {
        /// Where the segment should end.
        at: usize,
        /// How many bytes follow.
        extra: usize,
        /// The segment's CommitId range.
        range: (CommitId, CommitId),
    },
    /// The whole-segment CRC does not match.
    #[error("segment {}..={} corrupt: segment CRC32 at byte {at} is 0x{actual:08x}, computed 0x{expected:08x}", range.0, range.1)]
    SegmentChecksum {
        /// Byte position of the CRC.
        at: usize,
        /// Computed.
        expected: u32,
        /// Stored.
        actual: u32,
        /// The segment's CommitId range.
        range: (CommitId, CommitId),
    },
    /// A record is malformed: a length, count or tag out of bounds, or a
    /// header field that contradicts its position.
    #[error("segment {}..={}: record for commit {commit_id} at WAL offset {wal_offset} (byte {at}) malformed: {problem}", range.0, range.1)]
    BadRecord {
        /// CommitId the record must have at this position.
        commit_id: CommitId,
        /// WAL offset the record must have at this position.
        wal_offset: WalOffset,
        /// Byte position in the segment.
        at: usize,
        /// What is wrong, with expected and actual values.
        problem: String,
        /// The segment's CommitId range.
        range: (CommitId, CommitId),
    },
    /// A record's CRC does not match its bytes.
    #[error("segment {}..={}: record for commit {commit_id} at WAL offset {wal_offset} (byte {at}) corrupt: record CRC32 is 0x{actual:08x}, computed 0x{expected:08x}", range.0, range.1)]
    RecordChecksum {
        /// The record's CommitId.
        commit_id: CommitId,
        /// The record's WAL offset.
        wal_offset: WalOffset,
        /// Byte position in the segment.
        at: usize,
        /// Computed.
        expected: u32,
        /// Stored.
        actual: u32,
        /// The segment's CommitId range.
        range: (CommitId, CommitId),
    },
    /// A record's chain does not continue the previous record's, or does not
    /// match its own bytes.
    #[error("segment {}..={}: chained checksum broken at commit {commit_id} (WAL offset {wal_offset}): {which} is 0x{actual:08x}, expected 0x{expected:08x}", range.0, range.1)]
    ChainBroken {
        /// The record's CommitId.
        commit_id: CommitId,
        /// The record's WAL offset.
        wal_offset: WalOffset,
        /// Which value: "previous chain" or "chain".
        which: &'static str,
        /// Expected.
        expected: u32,
        /// Found.
        actual: u32,
        /// The segment's CommitId range.
        range: (CommitId, CommitId),
    },
}

fn in_range(r: &Option<(CommitId, CommitId)>) -> String {
    r.map(|(a, b)| format!(" (segment {a}..={b})"))
        .unwrap_or_default()
}

/// Why a well-formed segment does not continue a replica's history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContinuityError {
    /// The segment is from another primary generation.
    #[error("segment {}..={} rejected: generation {actual} is foreign, the replica follows generation {expected}", range.0, range.1)]
    ForeignGeneration {
        /// The replica's generation.
        expected: Generation,
        /// The segment's.
        actual: Generation,
        /// The segment's CommitId range.
        range: (CommitId, CommitId),
    },
    /// The segment starts at or before a commit already covered.
    #[error("segment {}..={} rejected: starts at commit {}, but commit {applied} is already applied (expected commit {})", range.0, range.1, range.0, applied.next())]
    AlreadyApplied {
        /// The replica's last commit.
        applied: CommitId,
        /// The segment's range.
        range: (CommitId, CommitId),
    },
    /// Commits are missing between the replica and the segment.
    #[error("segment {}..={} rejected: gap, expected commit {} first (replica applied commit {applied})", range.0, range.1, applied.next())]
    Gap {
        /// The replica's last commit.
        applied: CommitId,
        /// The segment's range.
        range: (CommitId, CommitId),
    },
    /// The segment starts at another WAL offset than the replica's end.
    #[error("segment {}..={} rejected: first record at WAL offset {actual}, expected WAL offset {expected} (replica applied commit {applied})", range.0, range.1)]
    OffsetMismatch {
        /// The replica's end offset.
        expected: WalOffset,
        /// The segment's first offset.
        actual: WalOffset,
        /// The replica's last commit.
        applied: CommitId,
        /// The segment's range.
        range: (CommitId, CommitId),
    },
    /// The first record does not chain onto the replica's last record: the
    /// primary's history forked or was restored.
    #[error("segment {}..={} rejected: chained checksum at commit {} is 0x{actual:08x}, expected 0x{expected:08x} (replica applied commit {applied}); the primary's history differs from the replica's", range.0, range.1, range.0)]
    ChainMismatch {
        /// The replica's chain.
        expected: u32,
        /// The first record's previous-chain field.
        actual: u32,
        /// The replica's last commit.
        applied: CommitId,
        /// The segment's range.
        range: (CommitId, CommitId),
    },
}

// ---------------------------------------------------------------- encoding

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn too_large(what: &'static str, actual: usize, limit: usize) -> EncodeError {
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

fn encode_values(out: &mut Vec<u8>, values: &[Value]) -> Result<(), EncodeError> {
    encode_count(out, values.len())?;
    values
        .iter()
        .try_for_each(|v| encode_value(out, v.as_ref()))
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
                if statement.len() > MAX_SCHEMA_SQL_BYTES {
                    return Err(too_large(
                        "schema statement",
                        statement.len(),
                        MAX_SCHEMA_SQL_BYTES,
                    ));
                }
                put_u32(&mut out, statement.len() as u32);
                out.extend_from_slice(statement.as_bytes());
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
const HEADER_CRC_AT: usize = 56;

/// Bytes of a record before its first change.
pub const RECORD_HEADER_LEN: usize = 28;

/// Offset of `prev_chain` in a record.
const PREV_CHAIN_AT: usize = 24;

/// Offset of the change count word in a record.
const COUNT_AT: usize = 20;

/// Bit 31 of a record's change count word: its transaction continues in
/// the next record.
pub const CONTINUES: u32 = 1 << 31;

/// A record's own CRC: over its bytes before the two checksums, without
/// `prev_chain`. It checks the record by itself, independent of history;
/// the chain (which covers `prev_chain`) checks its place in history. (A
/// CRC over bytes that end with their own CRC would be a constant.)
fn record_crc(before_checksums: &[u8]) -> u32 {
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

// ---------------------------------------------------------------- segments

/// A segment header, as encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version.
    pub version: u16,
    /// Primary generation.
    pub generation: Generation,
    /// First record's CommitId.
    pub first_commit_id: CommitId,
    /// Last record's CommitId.
    pub last_commit_id: CommitId,
    /// First record's WAL offset.
    pub first_wal_offset: WalOffset,
    /// Last record's WAL offset (where it starts).
    pub last_wal_offset: WalOffset,
    /// Number of records.
    pub record_count: u32,
    /// Bytes of all records.
    pub body_len: u32,
}

impl SegmentHeader {
    /// Reads and checks only the header of segment bytes (magic, version,
    /// header CRC, bounds), e.g. to name a segment whose body is corrupt.
    pub fn peek(bytes: &[u8]) -> Result<SegmentHeader, DecodeError> {
        decode_header(bytes)
    }

    /// The CommitId range.
    pub fn range(&self) -> (CommitId, CommitId) {
        (self.first_commit_id, self.last_commit_id)
    }

    /// WAL offset just past the last record.
    pub fn end_wal_offset(&self) -> WalOffset {
        WalOffset(self.first_wal_offset.0 + u64::from(self.body_len))
    }
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Its CommitId.
    pub commit_id: CommitId,
    /// Where it starts in the WAL stream.
    pub wal_offset: WalOffset,
    /// Its length in bytes.
    pub len: u32,
    /// The previous record's chained checksum.
    pub prev_chain: u32,
    /// Its chained checksum.
    pub chain: u32,
    /// Its CRC32.
    pub crc: u32,
    /// Its transaction continues in the next record: a replica applies
    /// both in one transaction and never stops between them.
    pub continues: bool,
    /// Its changes, in commit order.
    pub changes: Vec<Change>,
}

/// A decoded, internally consistent segment: CRCs verified, records
/// contiguous in CommitId, WAL offset and chain. Whether it continues a
/// given replica is [`check_continuity`]'s question.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// The header.
    pub header: SegmentHeader,
    /// The records, in order.
    pub records: Vec<Record>,
}

impl Segment {
    /// Encodes contiguous records of `generation` into one segment.
    pub fn encode(
        generation: Generation,
        records: &[EncodedRecord],
    ) -> Result<Vec<u8>, EncodeError> {
        let (first, last) = match (records.first(), records.last()) {
            (Some(f), Some(l)) => (f, l),
            _ => return Err(EncodeError::EmptySegment),
        };
        for pair in records.windows(2) {
            if pair[1].commit_id != pair[0].commit_id.next() {
                return Err(EncodeError::NotContiguous {
                    previous: pair[0].commit_id,
                    actual: pair[1].commit_id,
                });
            }
        }
        if last.continues() {
            if let Some(r) = records.iter().find(|r| !r.continues()) {
                return Err(EncodeError::MixedTransactions {
                    ended: r.commit_id,
                    last: last.commit_id,
                });
            }
        }
        if records.len() > MAX_RECORDS_PER_SEGMENT as usize {
            return Err(too_large(
                "segment record count",
                records.len(),
                MAX_RECORDS_PER_SEGMENT as usize,
            ));
        }
        let body_len: usize = records.iter().map(|r| r.bytes.len()).sum();
        if body_len > MAX_SEGMENT_BODY_BYTES {
            return Err(too_large("segment body", body_len, MAX_SEGMENT_BODY_BYTES));
        }
        let mut out = Vec::with_capacity(SEGMENT_HEADER_LEN + body_len + SEGMENT_TRAILER_LEN);
        out.extend_from_slice(&SEGMENT_MAGIC);
        put_u16(&mut out, FORMAT_VERSION);
        put_u16(&mut out, SEGMENT_HEADER_LEN as u16);
        put_u64(&mut out, generation.0);
        put_u64(&mut out, first.commit_id.0);
        put_u64(&mut out, last.commit_id.0);
        put_u64(&mut out, first.wal_offset.0);
        put_u64(&mut out, last.wal_offset.0);
        put_u32(&mut out, records.len() as u32);
        put_u32(&mut out, body_len as u32);
        let header_crc = crc32fast::hash(&out);
        put_u32(&mut out, header_crc);
        for r in records {
            out.extend_from_slice(&r.bytes);
        }
        let crc = segment_crc(&out);
        put_u32(&mut out, crc);
        Ok(out)
    }

    /// Decodes and verifies a segment. Never panics; allocates only after a
    /// length has been checked against its limit and the bytes present.
    pub fn decode(bytes: &[u8]) -> Result<Segment, DecodeError> {
        let header = decode_header(bytes)?;
        let range = header.range();
        let body_start = SEGMENT_HEADER_LEN;
        let body_end = body_start + header.body_len as usize;
        let total = body_end + SEGMENT_TRAILER_LEN;
        if bytes.len() < total {
            return Err(DecodeError::Truncated {
                at: body_start,
                needed: total - body_start,
                available: bytes.len() - body_start,
                range: Some(range),
            });
        }
        if bytes.len() > total {
            return Err(DecodeError::TrailingBytes {
                at: total,
                extra: bytes.len() - total,
                range,
            });
        }
        let stored = read_u32(bytes, body_end);
        let computed = segment_crc(&bytes[..body_end]);
        if stored != computed {
            return Err(DecodeError::SegmentChecksum {
                at: body_end,
                expected: computed,
                actual: stored,
                range,
            });
        }
        let mut records = Vec::new();
        let mut at = body_start;
        let mut commit_id = header.first_commit_id;
        let mut wal_offset = header.first_wal_offset;
        let mut prev_chain: Option<u32> = None;
        for _ in 0..header.record_count {
            let record = decode_record(
                bytes, at, body_end, commit_id, wal_offset, prev_chain, range,
            )?;
            at += record.len as usize;
            wal_offset = WalOffset(wal_offset.0 + u64::from(record.len));
            prev_chain = Some(record.chain);
            commit_id = commit_id.next();
            records.push(record);
        }
        if at != body_end {
            return Err(DecodeError::BadHeader {
                field: "body length",
                actual: u64::from(header.body_len),
                rule: format!(
                    "but its {} records end after {} bytes",
                    header.record_count,
                    at - body_start
                ),
                range,
            });
        }
        check_transactions(&records, range)?;
        let last = records.last().map(|r| r.wal_offset).unwrap_or_default();
        if last != header.last_wal_offset {
            return Err(DecodeError::BadHeader {
                field: "last WAL offset",
                actual: header.last_wal_offset.0,
                rule: format!("but the last record starts at WAL offset {last}"),
                range,
            });
        }
        Ok(Segment { header, records })
    }

    /// The chain position just after this segment's last record.
    pub fn end_position(&self) -> ChainPosition {
        ChainPosition {
            generation: self.header.generation,
            commit_id: self.header.last_commit_id,
            wal_offset: self.header.end_wal_offset(),
            chain: self.records.last().map(|r| r.chain).unwrap_or_default(),
        }
    }

    /// Whether it ends inside a transaction: its last record continues in
    /// the next segment (then it holds records of that transaction only).
    pub fn ends_inside_transaction(&self) -> bool {
        self.records.last().is_some_and(|r| r.continues)
    }

    /// The previous-chain value the first record carries: the chain the
    /// replica must hold.
    pub fn start_chain(&self) -> u32 {
        self.records
            .first()
            .map(|r| r.prev_chain)
            .unwrap_or_default()
    }
}

/// A segment that ends inside a transaction holds that transaction's
/// records only: a replica then holds it whole until the segment that ends
/// the transaction, and applies everything from the transaction's first
/// record at once (a segment never has to be applied in part).
fn check_transactions(records: &[Record], range: (CommitId, CommitId)) -> Result<(), DecodeError> {
    if !records.last().is_some_and(|r| r.continues) {
        return Ok(());
    }
    match records.iter().find(|r| !r.continues) {
        None => Ok(()),
        Some(r) => Err(DecodeError::BadRecord {
            commit_id: r.commit_id,
            wal_offset: r.wal_offset,
            at: 0,
            problem: format!(
                "it ends a transaction, but the segment's last record (commit {}) continues in the next segment; a segment that ends inside a transaction holds only that transaction's records",
                range.1
            ),
            range,
        }),
    }
}

/// Checks that a decoded segment continues the history a replica holds at
/// `position`: same generation, starts at the next CommitId and at the
/// replica's end WAL offset, and its first record chains onto the replica's
/// last chained checksum (spec 5.3, rule V1).
pub fn check_continuity(
    segment: &Segment,
    position: &ChainPosition,
) -> Result<(), ContinuityError> {
    let h = &segment.header;
    let range = h.range();
    if h.generation != position.generation {
        return Err(ContinuityError::ForeignGeneration {
            expected: position.generation,
            actual: h.generation,
            range,
        });
    }
    let expected = position.commit_id.next();
    if h.first_commit_id < expected {
        return Err(ContinuityError::AlreadyApplied {
            applied: position.commit_id,
            range,
        });
    }
    if h.first_commit_id > expected {
        return Err(ContinuityError::Gap {
            applied: position.commit_id,
            range,
        });
    }
    if h.first_wal_offset != position.wal_offset {
        return Err(ContinuityError::OffsetMismatch {
            expected: position.wal_offset,
            actual: h.first_wal_offset,
            applied: position.commit_id,
            range,
        });
    }
    if segment.start_chain() != position.chain {
        return Err(ContinuityError::ChainMismatch {
            expected: position.chain,
            actual: segment.start_chain(),
            applied: position.commit_id,
            range,
        });
    }
    Ok(())
}

/// A segment proven to continue a given chain position. Only [`validate`]
/// makes one, so an applier that takes a `ValidatedSegment` cannot apply
/// unvalidated WAL (rule W3).
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedSegment {
    segment: Segment,
    start: ChainPosition,
}

impl ValidatedSegment {
    /// The segment.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The position it was validated against (where it starts).
    pub fn start(&self) -> ChainPosition {
        self.start
    }

    /// Where it ends.
    pub fn end(&self) -> ChainPosition {
        self.segment.end_position()
    }

    /// Whether it ends inside a transaction (see
    /// [`Segment::ends_inside_transaction`]).
    pub fn ends_inside_transaction(&self) -> bool {
        self.segment.ends_inside_transaction()
    }
}

/// Validates that `segment` continues `position` ([`check_continuity`]).
pub fn validate(
    segment: Segment,
    position: &ChainPosition,
) -> Result<ValidatedSegment, ContinuityError> {
    check_continuity(&segment, position)?;
    Ok(ValidatedSegment {
        segment,
        start: *position,
    })
}

// ---------------------------------------------------------------- decoding

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn decode_header(bytes: &[u8]) -> Result<SegmentHeader, DecodeError> {
    if bytes.len() < 4 {
        return Err(DecodeError::Truncated {
            at: 0,
            needed: SEGMENT_HEADER_LEN + SEGMENT_TRAILER_LEN,
            available: bytes.len(),
            range: None,
        });
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != SEGMENT_MAGIC {
        return Err(DecodeError::BadMagic {
            expected: SEGMENT_MAGIC,
            actual: magic,
        });
    }
    if bytes.len() < SEGMENT_HEADER_LEN + SEGMENT_TRAILER_LEN {
        return Err(DecodeError::Truncated {
            at: 0,
            needed: SEGMENT_HEADER_LEN + SEGMENT_TRAILER_LEN,
            available: bytes.len(),
            range: None,
        });
    }
    let version = read_u16(bytes, 4);
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            expected: FORMAT_VERSION,
            actual: version,
        });
    }
    let stored = read_u32(bytes, 56);
    let computed = crc32fast::hash(&bytes[..56]);
    if stored != computed {
        return Err(DecodeError::HeaderChecksum {
            expected: computed,
            actual: stored,
        });
    }
    let header = SegmentHeader {
        version,
        generation: Generation(read_u64(bytes, 8)),
        first_commit_id: CommitId(read_u64(bytes, 16)),
        last_commit_id: CommitId(read_u64(bytes, 24)),
        first_wal_offset: WalOffset(read_u64(bytes, 32)),
        last_wal_offset: WalOffset(read_u64(bytes, 40)),
        record_count: read_u32(bytes, 48),
        body_len: read_u32(bytes, 52),
    };
    let range = header.range();
    let bad = |field, actual: u64, rule: String| DecodeError::BadHeader {
        field,
        actual,
        rule,
        range,
    };
    let header_len = read_u16(bytes, 6);
    if header_len as usize != SEGMENT_HEADER_LEN {
        return Err(bad(
            "header length",
            header_len.into(),
            format!("expected {SEGMENT_HEADER_LEN}"),
        ));
    }
    if header.first_commit_id.0 == 0 {
        return Err(bad("first CommitId", 0, "CommitIds start at 1".into()));
    }
    if header.last_commit_id.0 == u64::MAX {
        return Err(bad(
            "last CommitId",
            u64::MAX,
            "the last representable CommitId is never used".into(),
        ));
    }
    if header.record_count == 0 || header.record_count > MAX_RECORDS_PER_SEGMENT {
        return Err(bad(
            "record count",
            header.record_count.into(),
            format!("must be 1..={MAX_RECORDS_PER_SEGMENT}"),
        ));
    }
    let span = header
        .last_commit_id
        .0
        .checked_sub(header.first_commit_id.0);
    if span != Some(u64::from(header.record_count) - 1) {
        return Err(bad(
            "last CommitId",
            header.last_commit_id.0,
            format!(
                "but {} records from commit {} end at commit {}",
                header.record_count,
                header.first_commit_id,
                header
                    .first_commit_id
                    .0
                    .saturating_add(u64::from(header.record_count) - 1)
            ),
        ));
    }
    if header.body_len as usize > MAX_SEGMENT_BODY_BYTES {
        return Err(bad(
            "body length",
            header.body_len.into(),
            format!("over the limit of {MAX_SEGMENT_BODY_BYTES}"),
        ));
    }
    let min_body = u64::from(header.record_count) * RECORD_OVERHEAD as u64;
    if u64::from(header.body_len) < min_body {
        return Err(bad(
            "body length",
            header.body_len.into(),
            format!(
                "too short for {} records (at least {min_body})",
                header.record_count
            ),
        ));
    }
    if header
        .first_wal_offset
        .0
        .checked_add(u64::from(header.body_len))
        .is_none()
        || header.last_wal_offset < header.first_wal_offset
        || header.last_wal_offset.0 - header.first_wal_offset.0 > u64::from(header.body_len)
    {
        return Err(bad(
            "last WAL offset",
            header.last_wal_offset.0,
            format!(
                "outside the body starting at WAL offset {} of {} bytes",
                header.first_wal_offset, header.body_len
            ),
        ));
    }
    Ok(header)
}

/// A bounds-checked reader over one record's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.end - self.pos < n {
            return Err(format!(
                "{what} needs {n} bytes at byte {}, only {} left in the record",
                self.pos,
                self.end - self.pos
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
}

fn decode_record(
    bytes: &[u8],
    at: usize,
    body_end: usize,
    commit_id: CommitId,
    wal_offset: WalOffset,
    prev_chain: Option<u32>,
    range: (CommitId, CommitId),
) -> Result<Record, DecodeError> {
    let malformed = |problem: String| DecodeError::BadRecord {
        commit_id,
        wal_offset,
        at,
        problem,
        range,
    };
    if body_end - at < RECORD_OVERHEAD {
        return Err(malformed(format!(
            "needs at least {RECORD_OVERHEAD} bytes, only {} left in the segment body",
            body_end - at
        )));
    }
    let len = read_u32(bytes, at) as usize;
    if !(RECORD_OVERHEAD..=MAX_RECORD_BYTES).contains(&len) || len > body_end - at {
        return Err(malformed(format!(
            "record length {len} out of bounds (at least {RECORD_OVERHEAD}, at most {}, {} bytes left in the body)",
            MAX_RECORD_BYTES,
            body_end - at
        )));
    }
    let end = at + len;
    let stored_crc = read_u32(bytes, end - 4);
    let crc = record_crc(&bytes[at..end - 8]);
    if stored_crc != crc {
        return Err(DecodeError::RecordChecksum {
            commit_id,
            wal_offset,
            at,
            expected: crc,
            actual: stored_crc,
            range,
        });
    }
    let stored_chain = read_u32(bytes, end - 8);
    let chain = crc32fast::hash(&bytes[at..end - 8]);
    if stored_chain != chain {
        return Err(DecodeError::ChainBroken {
            commit_id,
            wal_offset,
            which: "chain",
            expected: chain,
            actual: stored_chain,
            range,
        });
    }
    let mut r = Reader {
        bytes,
        pos: at + 4,
        end: end - 8,
    };
    let actual_commit = CommitId(r.u64("CommitId").map_err(malformed)?);
    if actual_commit != commit_id {
        return Err(malformed(format!(
            "CommitId field is {actual_commit}, expected {commit_id}"
        )));
    }
    let actual_offset = WalOffset(r.u64("WAL offset").map_err(malformed)?);
    if actual_offset != wal_offset {
        return Err(malformed(format!(
            "WAL offset field is {actual_offset}, expected {wal_offset}"
        )));
    }
    let word = r.u32("change count").map_err(malformed)?;
    let (count, continues) = (word & !CONTINUES, word & CONTINUES != 0);
    if count > MAX_CHANGES_PER_RECORD {
        return Err(malformed(format!(
            "change count {count} over the limit of {MAX_CHANGES_PER_RECORD}"
        )));
    }
    let record_prev_chain = r.u32("previous chain").map_err(malformed)?;
    if let Some(expected) = prev_chain {
        if record_prev_chain != expected {
            return Err(DecodeError::ChainBroken {
                commit_id,
                wal_offset,
                which: "previous chain",
                expected,
                actual: record_prev_chain,
                range,
            });
        }
    }
    // Each change takes at least 4 bytes of length: bound the allocation by
    // the bytes present, not by the count field.
    let mut changes = Vec::with_capacity((count as usize).min((r.end - r.pos) / 4));
    for i in 0..count {
        let clen = r.u32("change length").map_err(malformed)? as usize;
        let body = r
            .take(clen, "change")
            .map_err(|e| malformed(format!("change {i}: {e}")))?;
        let change = decode_change(body).map_err(|e| malformed(format!("change {i}: {e}")))?;
        changes.push(change);
    }
    if r.pos != r.end {
        return Err(malformed(format!(
            "{} bytes after the last of {count} changes",
            r.end - r.pos
        )));
    }
    Ok(Record {
        commit_id,
        wal_offset,
        len: len as u32,
        prev_chain: record_prev_chain,
        chain: stored_chain,
        crc: stored_crc,
        continues,
        changes,
    })
}

/// Decodes one change as stored on the primary (without its length prefix).
pub fn decode_change(bytes: &[u8]) -> Result<Change, String> {
    let mut r = Reader {
        bytes,
        pos: 0,
        end: bytes.len(),
    };
    let op_byte = r.u8("operation")?;
    let op = Operation::from_byte(op_byte).ok_or_else(|| format!("unknown operation {op_byte}"))?;
    let name_len = r.u16("table name length")? as usize;
    if name_len > MAX_TABLE_NAME_BYTES {
        return Err(format!(
            "table name length {name_len} over the limit of {MAX_TABLE_NAME_BYTES}"
        ));
    }
    let table = std::str::from_utf8(r.take(name_len, "table name")?)
        .map_err(|e| format!("table name is not UTF-8: {e}"))?
        .to_owned();
    let change = match op {
        Operation::Insert => Change::Insert {
            table,
            values: decode_values(&mut r, "values")?,
        },
        Operation::Update => Change::Update {
            table,
            key: decode_values(&mut r, "key")?,
            values: decode_values(&mut r, "values")?,
        },
        Operation::Delete => Change::Delete {
            table,
            key: decode_values(&mut r, "key")?,
        },
        Operation::Discard => Change::Discard {
            table,
            key: decode_values(&mut r, "key")?,
        },
        Operation::Schema => {
            let count = r.u16("index count")? as usize;
            if count > MAX_COLUMNS {
                return Err(format!(
                    "index count {count} over the limit of {MAX_COLUMNS}"
                ));
            }
            let sql = decode_statement(&mut r)?;
            let indexes = (0..count)
                .map(|_| decode_statement(&mut r))
                .collect::<Result<Vec<_>, _>>()?;
            Change::Schema {
                table,
                sql,
                indexes,
            }
        }
    };
    if r.pos != r.end {
        return Err(format!(
            "{} bytes after the end of the change",
            r.end - r.pos
        ));
    }
    Ok(change)
}

fn decode_statement(r: &mut Reader<'_>) -> Result<String, String> {
    let n = r.u32("schema statement length")? as usize;
    if n > MAX_SCHEMA_SQL_BYTES {
        return Err(format!(
            "schema statement length {n} over the limit of {MAX_SCHEMA_SQL_BYTES}"
        ));
    }
    Ok(std::str::from_utf8(r.take(n, "schema statement")?)
        .map_err(|e| format!("schema statement is not UTF-8: {e}"))?
        .to_owned())
}

/// Decodes a whole value list (a `u16` count and that many values), as
/// [`encode_count`] and [`encode_value`] write it.
pub fn decode_value_list(bytes: &[u8]) -> Result<Vec<Value>, String> {
    let mut r = Reader {
        bytes,
        pos: 0,
        end: bytes.len(),
    };
    let values = decode_values(&mut r, "values")?;
    if r.pos != r.end {
        return Err(format!("{} bytes after the value list", r.end - r.pos));
    }
    Ok(values)
}

fn decode_values(r: &mut Reader<'_>, what: &str) -> Result<Vec<Value>, String> {
    let n = r.u16(what)? as usize;
    if n > MAX_COLUMNS {
        return Err(format!("{what} count {n} over the limit of {MAX_COLUMNS}"));
    }
    let mut values = Vec::with_capacity(n.min(r.end - r.pos));
    for i in 0..n {
        let tag = r.u8("value type")?;
        let v = match tag {
            0 => Value::Null,
            1 => Value::Integer(r.u64("integer")? as i64),
            2 => Value::Real(f64::from_bits(r.u64("real")?)),
            3 | 4 => {
                let len = r.u32("value length")? as usize;
                if len > MAX_VALUE_BYTES {
                    return Err(format!(
                        "{what} {i}: value length {len} over the limit of {MAX_VALUE_BYTES}"
                    ));
                }
                let b = r.take(len, "value")?.to_vec();
                if tag == 3 {
                    Value::Text(b)
                } else {
                    Value::Blob(b)
                }
            }
            t => return Err(format!("{what} {i}: unknown value type {t}")),
        };
        values.push(v);
    }
    Ok(values)
}

#[cfg(test)]
mod tests;
