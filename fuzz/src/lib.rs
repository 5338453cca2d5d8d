//! Helpers shared by the fuzz targets of the WAL format (version 3,
//! `docs/wal-format.md`: transactions may span records). Nothing here is used by the replication crate.
//!
//! - bit-exact comparisons: `Value::Real` may hold a NaN, so the derived
//!   `PartialEq` of `Value`, `Change`, `Record` and `Segment` says a NaN
//!   change differs from itself; the fuzz targets compare bit patterns;
//! - re-encoding a decoded segment with the public API only;
//! - checksum fix-ups, so that mutated bytes reach the record and change
//!   decoders instead of stopping at a CRC;
//! - the structured input of `segment_roundtrip`.

use arbitrary::Arbitrary;
use replication::wal::{
    encode_change, encode_count, encode_value, segment_crc, AlteredTable, ChainPosition, Change,
    CommitId, EncodeError, EncodedRecord, Generation, Record, RecordEncoder, Segment,
    TableDefinition, Value, WalOffset, FORMAT_VERSION, MAX_COLUMNS, MAX_RECORDS_PER_SEGMENT,
    MAX_SCHEMA_SQL_BYTES, MAX_SEGMENT_BODY_BYTES, MAX_TABLE_NAME_BYTES, RECORD_HEADER_LEN,
    RECORD_OVERHEAD, SEGMENT_HEADER_LEN, SEGMENT_MAGIC, SEGMENT_TRAILER_LEN,
};

// ------------------------------------------------------------ comparisons

/// Same value, comparing REAL by bit pattern (NaN payloads included).
pub fn value_same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Real(x), Value::Real(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// Same value list, bit-exact.
pub fn values_same(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| value_same(x, y))
}

/// Same change, bit-exact.
pub fn change_same(a: &Change, b: &Change) -> bool {
    match (a, b) {
        (
            Change::Insert {
                table: t1,
                values: v1,
            },
            Change::Insert {
                table: t2,
                values: v2,
            },
        ) => t1 == t2 && values_same(v1, v2),
        (
            Change::Update {
                table: t1,
                key: k1,
                values: v1,
            },
            Change::Update {
                table: t2,
                key: k2,
                values: v2,
            },
        ) => t1 == t2 && values_same(k1, k2) && values_same(v1, v2),
        (Change::Delete { table: t1, key: k1 }, Change::Delete { table: t2, key: k2 })
        | (Change::Discard { table: t1, key: k1 }, Change::Discard { table: t2, key: k2 }) => {
            t1 == t2 && values_same(k1, k2)
        }
        (Change::Schema { .. }, Change::Schema { .. })
        | (Change::Unreplicate { .. }, Change::Unreplicate { .. })
        | (Change::Alter { .. }, Change::Alter { .. }) => a == b,
        _ => false,
    }
}

/// Same change lists, bit-exact.
pub fn changes_same(a: &[Change], b: &[Change]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| change_same(x, y))
}

/// Same record, bit-exact.
pub fn record_same(a: &Record, b: &Record) -> bool {
    a.commit_id == b.commit_id
        && a.wal_offset == b.wal_offset
        && a.len == b.len
        && a.prev_chain == b.prev_chain
        && a.chain == b.chain
        && a.crc == b.crc
        && a.continues == b.continues
        && changes_same(&a.changes, &b.changes)
}

/// Same segment, bit-exact.
pub fn segment_same(a: &Segment, b: &Segment) -> bool {
    a.header == b.header
        && a.records.len() == b.records.len()
        && a.records
            .iter()
            .zip(&b.records)
            .all(|(x, y)| record_same(x, y))
}

// ------------------------------------------------------------ re-encoding

/// Encodes a value list as `decode_value_list` reads it.
pub fn encode_value_list(values: &[Value]) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_count(&mut out, values.len())?;
    for v in values {
        encode_value(&mut out, v.as_ref())?;
    }
    Ok(out)
}

/// The position a decoded segment claims to continue: the one before its
/// first record (`first CommitId - 1`, its first WAL offset, the first
/// record's `prev_chain`). A decoded segment always has a first CommitId
/// of at least 1 and at least one record.
pub fn claimed_start(segment: &Segment) -> ChainPosition {
    ChainPosition {
        generation: segment.header.generation,
        commit_id: CommitId(segment.header.first_commit_id.0 - 1),
        wal_offset: segment.header.first_wal_offset,
        chain: segment.start_chain(),
    }
}

/// Encodes the record of `commit_id` from its encoded changes with
/// `RecordEncoder::seal_part_in_place` (the one encoder entry point that
/// can set `continues`), as an [`EncodedRecord`].
pub fn encode_record(
    encoder: &mut RecordEncoder,
    commit_id: CommitId,
    changes: &[&[u8]],
    continues: bool,
) -> Result<EncodedRecord, EncodeError> {
    let mut bytes = vec![0; RECORD_HEADER_LEN];
    for c in changes {
        bytes.extend_from_slice(&(c.len() as u32).to_le_bytes());
        bytes.extend_from_slice(c);
    }
    let seal = encoder.seal_part_in_place(commit_id, changes.len(), continues, &mut bytes)?;
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

/// Rebuilds a decoded segment with the public encoder only:
/// `encode_change` per change, [`encode_record`] per record (with the
/// record's `continues`) from [`claimed_start`], then `Segment::encode`.
/// Returns the records too.
pub fn reencode_segment(segment: &Segment) -> Result<(Vec<EncodedRecord>, Vec<u8>), String> {
    let mut encoder = RecordEncoder::new(claimed_start(segment));
    let mut records = Vec::with_capacity(segment.records.len());
    for r in &segment.records {
        let changes = r
            .changes
            .iter()
            .map(encode_change)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("encode_change refused a decoded change: {e}"))?;
        let refs: Vec<&[u8]> = changes.iter().map(Vec::as_slice).collect();
        let encoded = encode_record(&mut encoder, r.commit_id, &refs, r.continues)
            .map_err(|e| format!("the encoder refused a decoded record: {e}"))?;
        if encoded.continues() != r.continues {
            return Err(format!(
                "commit {}: re-encoded with continues = {}",
                r.commit_id,
                encoded.continues()
            ));
        }
        records.push(encoded);
    }
    let bytes = Segment::encode(segment.header.generation, &records)
        .map_err(|e| format!("Segment::encode refused decoded records: {e}"))?;
    Ok((records, bytes))
}

// ------------------------------------------------------------ fix-ups

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// How much of a mutated input [`fix_up`] repairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FixUp {
    /// Magic, version, header length, `body_len` (from the input length),
    /// every record's `chain` and `crc` (and `prev_chain` from the second
    /// record on), the header CRC and the segment CRC. The header's
    /// CommitIds, offsets and record count stay as the fuzzer wrote them.
    Checksums,
    /// As `Checksums`, and also the record count, the CommitId and WAL
    /// offset of every record and the header's ranges, from the records
    /// that the record lengths delimit (the input is cut after the last
    /// one). What can still fail is inside the records: change counts,
    /// change lengths and the change encodings.
    Structure,
}

/// Repairs `b` (a mutated segment) as `mode` says, following the layout of
/// `docs/wal-format.md`. Inputs shorter than a header and trailer are left
/// alone.
pub fn fix_up(b: &mut Vec<u8>, mode: FixUp) {
    const HDR: usize = SEGMENT_HEADER_LEN;
    if b.len() < HDR + SEGMENT_TRAILER_LEN {
        return;
    }
    b[0..4].copy_from_slice(&SEGMENT_MAGIC);
    set_u16(b, 4, FORMAT_VERSION);
    set_u16(b, 6, HDR as u16);
    let mut body_end = HDR + (b.len() - HDR - SEGMENT_TRAILER_LEN).min(MAX_SEGMENT_BODY_BYTES);
    b.truncate(body_end + SEGMENT_TRAILER_LEN);

    let mut first_commit = get_u64(b, 16);
    let mut first_offset = get_u64(b, 32);
    let walk_limit = match mode {
        FixUp::Checksums => get_u32(b, 48).min(MAX_RECORDS_PER_SEGMENT),
        FixUp::Structure => MAX_RECORDS_PER_SEGMENT,
    };
    if mode == FixUp::Structure {
        let max_records = (body_end - HDR) / RECORD_OVERHEAD + 1;
        if first_commit == 0 || first_commit > u64::MAX - 1 - max_records as u64 {
            first_commit = 1;
        }
        if first_offset > u64::MAX - (body_end - HDR) as u64 {
            first_offset = 0;
        }
    }

    let mut at = HDR;
    let mut n: u64 = 0;
    let mut last_start = HDR;
    let mut prev_chain: Option<u32> = None;
    while n < u64::from(walk_limit) && body_end - at >= RECORD_OVERHEAD {
        let len = get_u32(b, at) as usize;
        if len < RECORD_OVERHEAD || len > body_end - at {
            break;
        }
        let end = at + len;
        if mode == FixUp::Structure {
            set_u64(b, at + 4, first_commit + n);
            set_u64(b, at + 12, first_offset + (at - HDR) as u64);
        }
        if let Some(p) = prev_chain {
            set_u32(b, at + 24, p);
        }
        let chain = crc32fast::hash(&b[at..end - 8]);
        let mut h = crc32fast::Hasher::new();
        h.update(&b[at..at + 24]);
        h.update(&b[at + 28..end - 8]);
        let crc = h.finalize();
        set_u32(b, end - 8, chain);
        set_u32(b, end - 4, crc);
        prev_chain = Some(chain);
        last_start = at;
        at = end;
        n += 1;
    }
    if mode == FixUp::Structure && n > 0 {
        body_end = at;
        b.truncate(body_end + SEGMENT_TRAILER_LEN);
        set_u64(b, 16, first_commit);
        set_u64(b, 24, first_commit + n - 1);
        set_u64(b, 32, first_offset);
        set_u64(b, 40, first_offset + (last_start - HDR) as u64);
        set_u32(b, 48, n as u32);
    }
    set_u32(b, 52, (body_end - HDR) as u32);
    let header_crc = crc32fast::hash(&b[..56]);
    set_u32(b, 56, header_crc);
    let crc = segment_crc(&b[..body_end]);
    set_u32(b, body_end, crc);
}

// ------------------------------------------------------------ structured input

/// A value of any type. REAL is generated from its bit pattern, so NaNs,
/// infinities and negative zero all occur.
#[derive(Arbitrary, Debug, Clone)]
pub enum ArbValue {
    /// NULL.
    Null,
    /// INTEGER.
    Integer(i64),
    /// REAL, as bits.
    Real(u64),
    /// TEXT (any bytes: the format does not check UTF-8).
    Text(Vec<u8>),
    /// BLOB.
    Blob(Vec<u8>),
}

/// A change of any kind.
#[derive(Arbitrary, Debug, Clone)]
pub enum ArbChange {
    /// Insert.
    Insert {
        /// Table.
        table: String,
        /// Values.
        values: Vec<ArbValue>,
    },
    /// Update.
    Update {
        /// Table.
        table: String,
        /// Key.
        key: Vec<ArbValue>,
        /// Values.
        values: Vec<ArbValue>,
    },
    /// Delete.
    Delete {
        /// Table.
        table: String,
        /// Key.
        key: Vec<ArbValue>,
    },
    /// Discard.
    Discard {
        /// Table.
        table: String,
        /// Key.
        key: Vec<ArbValue>,
    },
    /// Schema.
    Schema {
        /// Table.
        table: String,
        /// `CREATE TABLE`.
        sql: String,
        /// `CREATE INDEX` statements.
        indexes: Vec<String>,
    },
    /// Unreplicate.
    Unreplicate {
        /// Table.
        table: String,
    },
    /// Alter: statements, then (name before, kept as (name, sql, indexes)).
    Alter {
        /// The statements.
        statements: String,
        /// The altered tables (an empty list is taken as one).
        tables: Vec<(String, Option<(String, String, Vec<String>)>)>,
    },
}

/// Where the segment's first record starts.
#[derive(Arbitrary, Debug, Clone)]
pub enum ArbStart {
    /// `ChainPosition::genesis(generation)`.
    Genesis,
    /// After some commit (clamped so that CommitIds and WAL offsets fit).
    After {
        /// Last applied CommitId.
        commit_id: u64,
        /// WAL offset where the next record starts.
        wal_offset: u64,
        /// Chain of the last applied record.
        chain: u32,
    },
}

/// The input of `segment_roundtrip`.
#[derive(Arbitrary, Debug, Clone)]
pub struct RoundtripInput {
    /// Generation of the segment.
    pub generation: u64,
    /// Start position.
    pub start: ArbStart,
    /// The records' changes; empty means one record without changes; at
    /// most [`MAX_FUZZ_RECORDS`] are used.
    pub records: Vec<Vec<ArbChange>>,
    /// Bit `i` asks record `i` to continue its transaction in the next
    /// record (see [`continues_flags`] for the layout rule applied).
    pub continues: u16,
    /// The segment ends inside a transaction: every record continues.
    pub ends_inside: bool,
    /// Byte to corrupt (modulo the segment length).
    pub flip_at: u32,
    /// XOR mask of the corruption (0 is taken as 1).
    pub flip_mask: u8,
}

/// Most records `segment_roundtrip` puts in a segment.
pub const MAX_FUZZ_RECORDS: usize = 16;

/// The `continues` flag of each of `records` records, laid out as a
/// segment may hold them (`docs/wal-format.md`, "Transactions that span
/// records"): with `ends_inside`, every record continues (a segment that
/// ends inside a transaction holds only that transaction's records);
/// otherwise bit `i` of `bits` for every record but the last, which ends
/// its transaction. A segment may start inside a transaction either way.
pub fn continues_flags(bits: u16, ends_inside: bool, records: usize) -> Vec<bool> {
    (0..records)
        .map(|i| ends_inside || (i + 1 < records && bits & (1 << i) != 0))
        .collect()
}

fn clamp_str(mut s: String, limit: usize) -> String {
    if s.len() > limit {
        let mut cut = limit;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn to_values(values: &[ArbValue]) -> Vec<Value> {
    values
        .iter()
        .take(MAX_COLUMNS)
        .map(|v| match v {
            ArbValue::Null => Value::Null,
            ArbValue::Integer(i) => Value::Integer(*i),
            ArbValue::Real(bits) => Value::Real(f64::from_bits(*bits)),
            ArbValue::Text(t) => Value::Text(t.clone()),
            ArbValue::Blob(b) => Value::Blob(b.clone()),
        })
        .collect()
}

/// The change, clamped to the format's limits (fuzz inputs never reach the
/// 32 MiB value limit).
pub fn to_change(c: &ArbChange) -> Change {
    let table = |t: &String| clamp_str(t.clone(), MAX_TABLE_NAME_BYTES);
    match c {
        ArbChange::Insert { table: t, values } => Change::Insert {
            table: table(t),
            values: to_values(values),
        },
        ArbChange::Update {
            table: t,
            key,
            values,
        } => Change::Update {
            table: table(t),
            key: to_values(key),
            values: to_values(values),
        },
        ArbChange::Delete { table: t, key } => Change::Delete {
            table: table(t),
            key: to_values(key),
        },
        ArbChange::Discard { table: t, key } => Change::Discard {
            table: table(t),
            key: to_values(key),
        },
        ArbChange::Schema {
            table: t,
            sql,
            indexes,
        } => Change::Schema {
            table: table(t),
            sql: clamp_str(sql.clone(), MAX_SCHEMA_SQL_BYTES),
            indexes: indexes
                .iter()
                .take(MAX_COLUMNS)
                .map(|s| clamp_str(s.clone(), MAX_SCHEMA_SQL_BYTES))
                .collect(),
        },
        ArbChange::Unreplicate { table: t } => Change::Unreplicate { table: table(t) },
        ArbChange::Alter { statements, tables } => {
            let sql = |s: &String| clamp_str(s.clone(), MAX_SCHEMA_SQL_BYTES);
            let mut altered: Vec<AlteredTable> = tables
                .iter()
                .take(MAX_COLUMNS)
                .map(|(name, after)| AlteredTable {
                    name: table(name),
                    after: after.as_ref().map(|(n, s, i)| TableDefinition {
                        name: table(n),
                        sql: sql(s),
                        indexes: i.iter().take(MAX_COLUMNS).map(sql).collect(),
                    }),
                })
                .collect();
            if altered.is_empty() {
                altered.push(AlteredTable {
                    name: String::new(),
                    after: None,
                });
            }
            Change::Alter {
                statements: sql(statements),
                tables: altered,
            }
        }
    }
}

/// The start position, clamped so that `records` records of `body_len`
/// bytes in total fit: the last CommitId stays below `u64::MAX` (which the
/// decoder refuses) and the end WAL offset fits in a `u64`.
pub fn start_position(
    start: &ArbStart,
    generation: Generation,
    records: usize,
    body_len: u64,
) -> ChainPosition {
    match start {
        ArbStart::Genesis => ChainPosition::genesis(generation),
        ArbStart::After {
            commit_id,
            wal_offset,
            chain,
        } => ChainPosition {
            generation,
            commit_id: CommitId((*commit_id).min(u64::MAX - 1 - records as u64)),
            wal_offset: WalOffset((*wal_offset).min(u64::MAX - body_len)),
            chain: *chain,
        },
    }
}
