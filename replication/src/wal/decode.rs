//! Decoding: the segment header, records and changes, every length checked
//! against a named limit before it allocates; never panics on any input.

use super::encode::{record_crc, CONTINUES};
use super::errors::DecodeError;
use super::segment::{Record, SegmentHeader};
use super::{
    AlteredTable, Change, CommitId, Generation, Operation, TableDefinition, Value, WalOffset,
    FORMAT_VERSION, MAX_CHANGES_PER_RECORD, MAX_COLUMNS, MAX_RECORDS_PER_SEGMENT, MAX_RECORD_BYTES,
    MAX_SCHEMA_SQL_BYTES, MAX_SEGMENT_BODY_BYTES, MAX_TABLE_NAME_BYTES, MAX_VALUE_BYTES,
    RECORD_OVERHEAD, SEGMENT_HEADER_LEN, SEGMENT_MAGIC, SEGMENT_TRAILER_LEN,
};

// ---------------------------------------------------------------- decoding

pub(super) fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(super) fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(super) fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(super) fn decode_header(bytes: &[u8]) -> Result<SegmentHeader, DecodeError> {
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
pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
    pub(super) end: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
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
    pub(super) fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    pub(super) fn u16(&mut self, what: &str) -> Result<u16, String> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    pub(super) fn u32(&mut self, what: &str) -> Result<u32, String> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    pub(super) fn u64(&mut self, what: &str) -> Result<u64, String> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
}

pub(super) fn decode_record(
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
        Operation::Unreplicate => Change::Unreplicate { table },
        Operation::Alter => {
            let statements = decode_statement(&mut r)?;
            let count = r.u16("altered table count")? as usize;
            if count == 0 || count > MAX_COLUMNS {
                return Err(format!(
                    "altered table count {count} is not in 1..={MAX_COLUMNS}"
                ));
            }
            let tables = (0..count)
                .map(|_| {
                    let name = decode_name(&mut r)?;
                    let after = match r.u8("altered table kept")? {
                        0 => None,
                        1 => {
                            let name = decode_name(&mut r)?;
                            let sql = decode_statement(&mut r)?;
                            let n = r.u16("index count")? as usize;
                            if n > MAX_COLUMNS {
                                return Err(format!(
                                    "index count {n} over the limit of {MAX_COLUMNS}"
                                ));
                            }
                            let indexes = (0..n)
                                .map(|_| decode_statement(&mut r))
                                .collect::<Result<Vec<_>, _>>()?;
                            Some(TableDefinition { name, sql, indexes })
                        }
                        other => {
                            return Err(format!("altered table kept flag {other} is not 0 or 1"))
                        }
                    };
                    Ok(AlteredTable { name, after })
                })
                .collect::<Result<Vec<_>, String>>()?;
            if tables[0].name != table {
                return Err(format!(
                    "an Alter names table '{table}' in its header and '{}' first",
                    tables[0].name
                ));
            }
            Change::Alter { statements, tables }
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

fn decode_name(r: &mut Reader<'_>) -> Result<String, String> {
    let n = r.u16("table name length")? as usize;
    if n > MAX_TABLE_NAME_BYTES {
        return Err(format!(
            "table name length {n} over the limit of {MAX_TABLE_NAME_BYTES}"
        ));
    }
    Ok(std::str::from_utf8(r.take(n, "table name")?)
        .map_err(|e| format!("table name is not UTF-8: {e}"))?
        .to_owned())
}

pub(super) fn decode_statement(r: &mut Reader<'_>) -> Result<String, String> {
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
/// [`encode_count`](super::encode_count) and [`encode_value`](super::encode_value) write it.
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

pub(super) fn decode_values(r: &mut Reader<'_>, what: &str) -> Result<Vec<Value>, String> {
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
