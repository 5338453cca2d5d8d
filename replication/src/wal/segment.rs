//! Segments: header, records, decoding a segment whole, the continuity
//! proof a Validator runs and the `ValidatedSegment` it yields.

use super::decode::{decode_header, decode_record, read_u32};
use super::encode::{put_u16, put_u32, put_u64, segment_crc, too_large, EncodedRecord};
use super::errors::{ContinuityError, DecodeError, EncodeError};
use super::{
    ChainPosition, Change, CommitId, Generation, WalOffset, FORMAT_VERSION,
    MAX_RECORDS_PER_SEGMENT, MAX_SEGMENT_BODY_BYTES, SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
    SEGMENT_TRAILER_LEN,
};

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
pub(super) fn check_transactions(
    records: &[Record],
    range: (CommitId, CommitId),
) -> Result<(), DecodeError> {
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
