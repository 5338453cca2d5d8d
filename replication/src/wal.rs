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

mod decode;
mod encode;
mod errors;
mod segment;

pub use decode::*;
pub use encode::*;
pub use errors::*;
pub use segment::*;

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
    /// A table stopped being replicated (`aerodb_unreplicate`): the replica
    /// stops maintaining it and keeps it as a plain table.
    Unreplicate = 6,
    /// DDL on replicated tables (`aerodb_alter`): the statements, and each
    /// changed table's definition after them.
    Alter = 7,
}

impl Operation {
    fn from_byte(b: u8) -> Option<Operation> {
        match b {
            1 => Some(Operation::Insert),
            2 => Some(Operation::Update),
            3 => Some(Operation::Delete),
            4 => Some(Operation::Schema),
            5 => Some(Operation::Discard),
            6 => Some(Operation::Unreplicate),
            7 => Some(Operation::Alter),
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
    /// `table` is no longer replicated from this commit on: later changes
    /// of it are not captured, and the replica keeps its rows as they are
    /// here, in a plain table it no longer writes or guards.
    Unreplicate {
        /// Table name.
        table: String,
    },
    /// DDL on replicated tables (`aerodb_alter`), in order with the data
    /// around it: the replica runs `statements` and checks that each table
    /// in `tables` then has exactly the definition the primary's has. No
    /// rows travel with it.
    Alter {
        /// The DDL statements, as the primary ran them.
        statements: String,
        /// Every replicated table they changed (at least one).
        tables: Vec<AlteredTable>,
    },
}

/// A replicated table an [`Change::Alter`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlteredTable {
    /// Its name before the statements.
    pub name: String,
    /// What it is after them; `None`: they dropped it.
    pub after: Option<TableDefinition>,
}

/// A table's definition as the primary's schema holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDefinition {
    /// Its name.
    pub name: String,
    /// Its `CREATE TABLE` statement.
    pub sql: String,
    /// Its `CREATE INDEX` statements, by index name.
    pub indexes: Vec<String>,
}

impl Change {
    /// The table the change concerns.
    pub fn table(&self) -> &str {
        match self {
            Change::Insert { table, .. }
            | Change::Update { table, .. }
            | Change::Delete { table, .. }
            | Change::Discard { table, .. }
            | Change::Schema { table, .. }
            | Change::Unreplicate { table } => table,
            Change::Alter { tables, .. } => tables.first().map_or("", |t| &t.name),
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
            Change::Unreplicate { .. } => Operation::Unreplicate,
            Change::Alter { .. } => Operation::Alter,
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

#[cfg(test)]
mod tests;
