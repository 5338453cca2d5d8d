//! The memory primary and its WAL source (see [`super`]).

use super::{apply_change, lock, Rows};
use crate::code::FailureCode;
use crate::runtime::ports::{Fetched, StopSignal, WalSource};
use crate::runtime::Failure;
use crate::wal::{
    decode_change, encode_change, ChainPosition, Change, CommitId, EncodedRecord, Generation,
    RecordEncoder, Segment, WalOffset,
};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

struct PrimaryState {
    generation: Generation,
    records: Vec<EncodedRecord>,
    /// The position after each commit (index 0: genesis).
    positions: Vec<ChainPosition>,
    encoder: RecordEncoder,
    /// The oldest CommitId still served.
    oldest: CommitId,
    available: bool,
    /// Commits whose served bytes have one byte flipped.
    corrupt: Vec<CommitId>,
}

/// A primary in memory: its WAL (one record per transaction), retention,
/// and faults. Clones share it.
#[derive(Clone)]
pub struct MemPrimary {
    inner: Arc<Mutex<PrimaryState>>,
}

impl MemPrimary {
    /// A new primary of `generation`, without commits.
    pub fn new(generation: Generation) -> MemPrimary {
        let genesis = ChainPosition::genesis(generation);
        MemPrimary {
            inner: Arc::new(Mutex::new(PrimaryState {
                generation,
                records: Vec::new(),
                positions: vec![genesis],
                encoder: RecordEncoder::new(genesis),
                oldest: CommitId(1),
                available: true,
                corrupt: Vec::new(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, PrimaryState> {
        lock(&self.inner)
    }

    /// Commits one transaction of `changes`; its CommitId.
    pub fn commit(&self, changes: &[Change]) -> CommitId {
        let mut s = self.state();
        let commit_id = s.encoder.position().commit_id.next();
        let encoded: Vec<Vec<u8>> = changes
            .iter()
            .map(|c| encode_change(c).expect("a change within the format's limits"))
            .collect();
        let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let record = s.encoder.push(commit_id, &refs).expect("the next record");
        let end = s.encoder.position();
        s.records.push(record);
        s.positions.push(end);
        commit_id
    }

    /// Its newest CommitId.
    pub fn head(&self) -> CommitId {
        self.state().encoder.position().commit_id
    }

    /// Its generation.
    pub fn generation(&self) -> Generation {
        self.state().generation
    }

    /// The position after commit `c`.
    pub fn position(&self, c: CommitId) -> ChainPosition {
        self.state().positions[c.0 as usize]
    }

    /// The rows after commit `c`.
    pub fn rows_at(&self, c: CommitId) -> Rows {
        let s = self.state();
        let mut rows = Rows::new();
        for r in s.records.iter().take(c.0 as usize) {
            for change in record_changes(&r.bytes) {
                apply_change(&mut rows, &change).expect("the primary's history is consistent");
            }
        }
        rows
    }

    /// Drops the WAL below `below` (a replica that needs it bootstraps from
    /// a snapshot).
    pub fn truncate_below(&self, below: CommitId) {
        let mut s = self.state();
        s.oldest = s.oldest.max(below);
    }

    /// Makes the source answer (or fail with SOURCE_UNAVAILABLE).
    pub fn set_available(&self, available: bool) {
        self.state().available = available;
    }

    /// Serves commit `c` with one byte flipped from now on.
    pub fn corrupt(&self, c: CommitId) {
        self.state().corrupt.push(c);
    }

    /// Its source, as a replica pulls from it.
    pub fn source(&self) -> MemSource {
        MemSource {
            primary: self.clone(),
            fetched_at: CommitId(0),
        }
    }
}

/// The changes of an encoded record (header, framed changes, checksums).
fn record_changes(bytes: &[u8]) -> Vec<Change> {
    const HEADER: usize = crate::wal::RECORD_HEADER_LEN;
    let count = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]) & 0x7fff_ffff;
    let mut at = HEADER;
    (0..count)
        .map(|_| {
            let n = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
                as usize;
            let c = decode_change(&bytes[at + 4..at + 4 + n]).expect("an encoded change");
            at += 4 + n;
            c
        })
        .collect()
}

/// A [`MemPrimary`]'s WAL, as a replica pulls it.
pub struct MemSource {
    primary: MemPrimary,
    /// The primary's head at the last fetch: `wait_for_wal` returns once
    /// there is WAL past it.
    fetched_at: CommitId,
}

impl MemSource {
    /// Returns true once `ready` holds for the primary, false when `stop`
    /// is asked; looks again every millisecond, waiting on the stop signal.
    fn wait(&self, stop: &StopSignal, mut ready: impl FnMut(&PrimaryState) -> bool) -> bool {
        loop {
            if ready(&self.primary.state()) {
                return true;
            }
            if stop.wait(Duration::from_millis(1)) {
                return false;
            }
        }
    }
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"AEROMEM1";

impl WalSource for MemSource {
    fn describe(&self) -> String {
        format!("memory primary {}", self.primary.generation())
    }

    fn fetch(&mut self, from: CommitId, max_bytes: usize) -> Result<Option<Fetched>, Failure> {
        let s = self.primary.state();
        if !s.available {
            return Err(Failure::new(
                FailureCode::SourceUnavailable,
                format!("memory primary {} does not answer", s.generation),
            ));
        }
        let head = s.encoder.position().commit_id;
        self.fetched_at = head;
        if from < s.oldest {
            return Err(Failure::new(
                FailureCode::WalTruncated,
                format!(
                    "memory primary {} keeps WAL from commit {} only",
                    s.generation, s.oldest
                ),
            ));
        }
        if from > head {
            return Ok(None);
        }
        let mut records = Vec::new();
        let mut size = 0;
        for r in &s.records[from.0 as usize - 1..] {
            if !records.is_empty() && size + r.bytes.len() > max_bytes {
                break;
            }
            size += r.bytes.len();
            records.push(r.clone());
        }
        let last = records.last().map(|r| r.commit_id).unwrap_or(from);
        let mut bytes = Segment::encode(s.generation, &records)
            .map_err(|e| Failure::new(FailureCode::Source, format!("encoding a segment: {e}")))?;
        let mut at = crate::wal::SEGMENT_HEADER_LEN;
        for r in &records {
            if s.corrupt.contains(&r.commit_id) {
                // A change byte, past the record's header.
                let i = at + crate::wal::RECORD_HEADER_LEN;
                bytes[i] ^= 0x40;
            }
            at += r.bytes.len();
        }
        Ok(Some(Fetched {
            first: from,
            last,
            bytes,
            source_head: head,
        }))
    }

    fn wait_for_wal(&mut self, stop: &StopSignal) -> Result<bool, Failure> {
        let seen = self.fetched_at;
        Ok(self.wait(stop, |s| {
            s.encoder.position().commit_id > seen || !s.available
        }))
    }

    fn wait_until_available(&mut self, stop: &StopSignal) -> Result<bool, Failure> {
        Ok(self.wait(stop, |s| s.available))
    }

    fn snapshot(&mut self, dest: &Path) -> Result<CommitId, Failure> {
        let head = self.primary.head();
        let position = self.primary.position(head);
        let rows = self.primary.rows_at(head);
        write_snapshot(dest, position, &rows).map_err(|e| {
            Failure::new(
                FailureCode::Source,
                format!("writing snapshot {}: {e}", dest.display()),
            )
        })?;
        Ok(head)
    }
}

/// A snapshot file: magic, position, the rows' checksum, then each row as
/// an encoded Insert change (`u32` length first).
pub(super) fn write_snapshot(path: &Path, at: ChainPosition, rows: &Rows) -> std::io::Result<()> {
    let mut body = Vec::new();
    for ((table, _), values) in rows {
        let c = encode_change(&Change::Insert {
            table: table.clone(),
            values: values.clone(),
        })
        .map_err(std::io::Error::other)?;
        body.extend_from_slice(&(c.len() as u32).to_le_bytes());
        body.extend_from_slice(&c);
    }
    let mut out = SNAPSHOT_MAGIC.to_vec();
    out.extend_from_slice(&at.generation.0.to_le_bytes());
    out.extend_from_slice(&at.commit_id.0.to_le_bytes());
    out.extend_from_slice(&at.wal_offset.0.to_le_bytes());
    out.extend_from_slice(&at.chain.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    std::fs::write(path, out)
}

/// A snapshot file's recorded position and checksum, its computed
/// checksum and its rows.
pub(super) fn read_snapshot(path: &Path) -> Result<(ChainPosition, u32, u32, Rows), String> {
    let b = std::fs::read(path).map_err(|e| e.to_string())?;
    if b.len() < 40 || &b[..8] != SNAPSHOT_MAGIC {
        return Err("not a memory snapshot".into());
    }
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let at = ChainPosition {
        generation: Generation(u64_at(8)),
        commit_id: CommitId(u64_at(16)),
        wal_offset: WalOffset(u64_at(24)),
        chain: u32_at(32),
    };
    let (recorded, body) = (u32_at(36), &b[40..]);
    let mut rows = Rows::new();
    let mut i = 0;
    while i + 4 <= body.len() {
        let n = u32::from_le_bytes(body[i..i + 4].try_into().expect("4 bytes")) as usize;
        let c = body
            .get(i + 4..i + 4 + n)
            .ok_or("a row is cut short")
            .and_then(|c| decode_change(c).map_err(|_| "a row does not decode"))?;
        apply_change(&mut rows, &c)?;
        i += 4 + n;
    }
    Ok((at, recorded, crc32fast::hash(body), rows))
}
