//! What can go wrong building, decoding and continuing WAL, each error
//! naming the CommitId, WAL offset and byte position concerned.

use super::{CommitId, Generation, WalOffset};

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

pub(super) fn at_commit(c: Option<CommitId>) -> String {
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

pub(super) fn in_range(r: &Option<(CommitId, CommitId)>) -> String {
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
