//! In-memory implementations of every runtime port (STYLE 19, raft-rs's
//! `MemStorage`): a primary and its [`WalSource`], and a replica's
//! [`Storage`] (state store, WAL storage, segment reader, apply storage),
//! with faults an operator or a test can switch on. They drive the
//! production [`Runtime`](super::Runtime) (its engine and runners) in tests
//! and in the seeded simulation (`tests/runtime_simulation.rs`) without
//! SQLite; `storage-adapter` implements the same ports on SQLite files.
//!
//! The row model is the WAL's: a row is identified by its table and its
//! first value (Insert replaces the row with that key, Update and Delete
//! require it, Discard removes it if present). Snapshots are small files in
//! a directory the caller names. The source waits for new WAL or for the
//! primary to answer as a file source does: on the stop signal, looking
//! again between waits (time decides when to look, never what happens).

use super::ports::{
    ApplyStorage, Fetched, PersistedSegment, SegmentReader, SnapshotFacts, StateStore, StopSignal,
    Storage, StoreOp, StoredState, WalSource, WalStorage,
};
use super::{ComponentStatus, Failure, TransitionRecord};
use crate::applier::HeldSegment;
use crate::code::FailureCode;
use crate::read_gate::ObservedState;
use crate::state::{check_segment, BlockReason, GlobalState, ReadStatus, SegmentState};
use crate::wal::{
    decode_change, encode_change, encode_value, validate, ChainPosition, Change, CommitId,
    EncodedRecord, Generation, RecordEncoder, Segment, ValidatedSegment, Value, WalOffset,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A table's rows by key (the encoded first value), and the table's name.
pub type Rows = BTreeMap<(String, Vec<u8>), Vec<Value>>;

fn key_of(table: &str, key: &Value) -> (String, Vec<u8>) {
    let mut k = Vec::new();
    // A value that does not encode (over the format's limits) never
    // reaches a record.
    let _ = encode_value(&mut k, key.as_ref());
    (table.to_owned(), k)
}

/// Applies one change to `rows`; an error names what diverged.
pub fn apply_change(rows: &mut Rows, change: &Change) -> Result<(), String> {
    let first = |values: &[Value], what: &str| -> Result<Value, String> {
        values
            .first()
            .cloned()
            .ok_or_else(|| format!("{what} of '{}' holds no value", change.table()))
    };
    match change {
        Change::Insert { table, values } => {
            rows.insert(key_of(table, &first(values, "an Insert")?), values.clone());
        }
        Change::Update { table, key, values } => {
            let old = key_of(table, &first(key, "an Update's key")?);
            if rows.remove(&old).is_none() {
                return Err(format!("UPDATE of '{table}' key {key:?} matched 0 rows"));
            }
            rows.insert(key_of(table, &first(values, "an Update")?), values.clone());
        }
        Change::Delete { table, key } => {
            if rows
                .remove(&key_of(table, &first(key, "a Delete")?))
                .is_none()
            {
                return Err(format!("DELETE of '{table}' key {key:?} matched 0 rows"));
            }
        }
        Change::Discard { table, key } => {
            rows.remove(&key_of(table, &first(key, "a Discard")?));
        }
        Change::Schema { .. } | Change::Unreplicate { .. } => {}
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ------------------------------------------------------------------ primary

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
        let seen = self.primary.head();
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
fn write_snapshot(path: &Path, at: ChainPosition, rows: &Rows) -> std::io::Result<()> {
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
fn read_snapshot(path: &Path) -> Result<(ChainPosition, u32, u32, Rows), String> {
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

// ------------------------------------------------------------------ replica

struct StoredSegment {
    last: CommitId,
    bytes: Vec<u8>,
    snapshot: Option<PathBuf>,
    state: SegmentState,
}

struct ReplicaState {
    position: ChainPosition,
    rows: Rows,
    /// Persisted segments by first CommitId.
    segments: BTreeMap<CommitId, StoredSegment>,
    /// The recorded global state (`to_kind`), read status and block.
    global: Option<&'static str>,
    read_status: &'static str,
    block: Option<(&'static str, String)>,
    transitions: Vec<TransitionRecord>,
    components: Vec<ComponentStatus>,
    source_head: Option<CommitId>,
    /// The next this many applies fail (a full disk, say).
    failing_applies: u32,
}

/// A replica's storage in memory. Clones share it; each run of the
/// runtime gets its parts from [`MemReplica::storage`].
#[derive(Clone)]
pub struct MemReplica {
    inner: Arc<Mutex<ReplicaState>>,
    dir: PathBuf,
}

impl MemReplica {
    /// An empty replica of `generation`; snapshot files go into `dir`.
    pub fn new(generation: Generation, dir: &Path) -> MemReplica {
        MemReplica {
            inner: Arc::new(Mutex::new(ReplicaState {
                position: ChainPosition::genesis(generation),
                rows: Rows::new(),
                segments: BTreeMap::new(),
                global: None,
                read_status: "",
                block: None,
                transitions: Vec::new(),
                components: Vec::new(),
                source_head: None,
                failing_applies: 0,
            })),
            dir: dir.to_owned(),
        }
    }

    fn state(&self) -> MutexGuard<'_, ReplicaState> {
        lock(&self.inner)
    }

    /// The storage a runtime runs on.
    pub fn storage(&self) -> Box<dyn Storage> {
        Box::new(self.clone())
    }

    /// The applied position.
    pub fn applied(&self) -> ChainPosition {
        self.state().position
    }

    /// The applied rows.
    pub fn rows(&self) -> Rows {
        self.state().rows.clone()
    }

    /// The recorded transitions, oldest first.
    pub fn transitions(&self) -> Vec<TransitionRecord> {
        self.state().transitions.clone()
    }

    /// Each persisted segment's range and state.
    pub fn segments(&self) -> Vec<(CommitId, CommitId, SegmentState)> {
        self.state()
            .segments
            .iter()
            .map(|(f, s)| (*f, s.last, s.state.clone()))
            .collect()
    }

    /// The next `n` applies fail with STORAGE, changing nothing.
    pub fn fail_applies(&self, n: u32) {
        self.state().failing_applies = n;
    }

    /// What the read gate observes in the recorded state (as
    /// `storage-adapter`'s gate reads its tables): the recorded state, the
    /// applied position and a block recorded before the replica left Ready.
    /// `running`: a runtime holds the replica (else a recorded running
    /// state is not true any more).
    pub fn observed(&self, running: bool) -> ObservedState {
        let s = self.state();
        let recorded = s
            .block
            .as_ref()
            .map(|(code, reason)| BlockReason::Recorded {
                diverged: *code == "DIVERGED",
                reason: reason.clone(),
            });
        let global = match s.global {
            None => GlobalState::Disabled,
            Some("Ready") => GlobalState::Ready {
                read: if s.read_status == "read-blocked" {
                    ReadStatus::Blocked(recorded.clone().unwrap_or(BlockReason::Recorded {
                        diverged: false,
                        reason: String::new(),
                    }))
                } else {
                    ReadStatus::Safe
                },
            },
            Some(kind) => GlobalState::from_plain_name(kind).unwrap_or(GlobalState::Disabled),
        };
        let global = match &global {
            GlobalState::Ready {
                read: ReadStatus::Blocked(_),
            } => global,
            _ if !running => GlobalState::Disabled,
            _ => global,
        };
        ObservedState {
            global,
            applied_commit_id: s.position.commit_id,
            applied_wal_offset: s.position.wal_offset,
            recorded_block: if s.global != Some("Ready") {
                recorded
            } else {
                None
            },
        }
    }
}

fn failure(code: FailureCode, text: String) -> Failure {
    Failure::new(code, text)
}

/// The Applier's move of an item to Applied, in its apply step. One the
/// Validator proved may still be recorded Received (the Supervisor records
/// Validated from the Validator's event, concurrently): both moves are
/// checked then, and the Supervisor's later Validated finds it Applied.
fn check_applied(from: &SegmentState) -> Result<(), crate::state::IllegalTransition> {
    match from {
        SegmentState::Received => check_segment(from, &SegmentState::Validated)
            .and_then(|()| check_segment(&SegmentState::Validated, &SegmentState::Applied)),
        other => check_segment(other, &SegmentState::Applied),
    }
}

impl Storage for MemReplica {
    fn state_store(&self) -> Result<Box<dyn StateStore>, Failure> {
        Ok(Box::new(self.clone()))
    }
    fn wal_storage(&self) -> Result<Box<dyn WalStorage>, Failure> {
        Ok(Box::new(self.clone()))
    }
    fn segment_reader(&self) -> Result<Box<dyn SegmentReader>, Failure> {
        Ok(Box::new(self.clone()))
    }
    fn apply_storage(&self) -> Result<Box<dyn ApplyStorage>, Failure> {
        Ok(Box::new(self.clone()))
    }
}

impl StateStore for MemReplica {
    fn open(&mut self) -> Result<StoredState, Failure> {
        let mut s = self.state();
        let mut revalidate = 0;
        let mut received = s.position.commit_id;
        let applied = s.position.commit_id;
        for (first, seg) in s.segments.iter_mut() {
            if *first <= applied {
                continue;
            }
            if first.0 != received.0 + 1 {
                return Err(failure(
                    FailureCode::TornState,
                    format!(
                        "persisted segment {first}..={} does not follow commit {received}",
                        seg.last
                    ),
                ));
            }
            if seg.state == SegmentState::Validated {
                seg.state = SegmentState::Received;
                revalidate += 1;
            }
            received = seg.last;
        }
        Ok(StoredState {
            applied: s.position,
            received,
            previous_state: s.global.map(str::to_owned),
            revalidate,
            components: s.components.clone(),
        })
    }

    fn record(&mut self, ops: &[StoreOp]) -> Result<(), Failure> {
        let mut s = self.state();
        // All or nothing: check every segment move first.
        for op in ops {
            if let StoreOp::Segment {
                first, last, to, ..
            } = op
            {
                let from = s
                    .segments
                    .get(first)
                    .filter(|g| g.last == *last)
                    .map(|g| g.state.clone())
                    .ok_or_else(|| {
                        failure(
                            FailureCode::IllegalTransition,
                            format!("segment {first}..={last} is not stored"),
                        )
                    })?;
                let again = matches!(
                    (&from, to),
                    (SegmentState::Rejected { .. }, SegmentState::Rejected { .. })
                        | (SegmentState::Applied, SegmentState::Validated)
                );
                if !again {
                    check_segment(&from, to).map_err(|e| {
                        failure(
                            FailureCode::IllegalTransition,
                            format!("segment {first}..={last}: {e}"),
                        )
                    })?;
                }
            }
        }
        for op in ops {
            match op {
                StoreOp::Transition(t) => {
                    s.global = Some(t.to_kind);
                    s.read_status = t.read_status;
                    // A block stays recorded until Ready read-safe again.
                    if let Some(code) = t.blocking_code {
                        s.block = Some((code, t.blocking_reason.clone().unwrap_or_default()));
                    } else if t.to_kind == "Ready" {
                        s.block = None;
                    }
                    s.transitions.push(t.clone());
                }
                StoreOp::Segment { first, to, .. } => {
                    if let Some(g) = s.segments.get_mut(first) {
                        // Applied with its validation by the Applier first:
                        // nothing left to move.
                        if g.state != SegmentState::Applied {
                            g.state = to.clone();
                        }
                    }
                }
                StoreOp::Component(c) => {
                    s.components.retain(|x| x.component != c.component);
                    s.components.push(c.clone());
                }
                StoreOp::SourceHead { head } => s.source_head = Some(*head),
                StoreOp::Discard { from } => {
                    let from = *from;
                    s.segments.retain(|f, _| *f < from);
                }
            }
        }
        Ok(())
    }
}

impl WalStorage for MemReplica {
    fn persist(&mut self, first: CommitId, last: CommitId, bytes: &[u8]) -> Result<(), Failure> {
        self.state().segments.insert(
            first,
            StoredSegment {
                last,
                bytes: bytes.to_vec(),
                snapshot: None,
                state: SegmentState::Received,
            },
        );
        Ok(())
    }

    fn snapshot_path(&self, first: CommitId) -> PathBuf {
        self.dir.join(format!("snapshot-from-{first}"))
    }

    fn persist_snapshot(
        &mut self,
        first: CommitId,
        last: CommitId,
        path: &Path,
    ) -> Result<(), Failure> {
        self.state().segments.insert(
            first,
            StoredSegment {
                last,
                bytes: Vec::new(),
                snapshot: Some(path.to_owned()),
                state: SegmentState::Received,
            },
        );
        Ok(())
    }
}

impl SegmentReader for MemReplica {
    fn next_after(&mut self, after: CommitId) -> Result<Option<PersistedSegment>, Failure> {
        let s = self.state();
        Ok(s.segments
            .get(&after.next())
            .filter(|g| g.state != SegmentState::Applied)
            .map(|g| PersistedSegment {
                first: after.next(),
                last: g.last,
                bytes: g.bytes.clone(),
                snapshot: g.snapshot.clone(),
                rejected: matches!(g.state, SegmentState::Rejected { .. }),
            }))
    }

    fn inspect_snapshot(&mut self, path: &Path) -> Result<SnapshotFacts, Failure> {
        let (recorded, recorded_checksum, computed_checksum, _) =
            read_snapshot(path).map_err(|e| {
                failure(
                    FailureCode::SnapshotUnreadable,
                    format!("snapshot {}: {e}", path.display()),
                )
            })?;
        Ok(SnapshotFacts {
            recorded,
            recorded_checksum,
            computed_checksum,
        })
    }
}

impl MemReplica {
    /// Applies `segments` (each validated to continue the one before) and
    /// marks them Applied, all or nothing.
    fn apply_all(&self, segments: &[ValidatedSegment]) -> Result<ChainPosition, Failure> {
        let mut s = self.state();
        if s.failing_applies > 0 {
            s.failing_applies -= 1;
            return Err(failure(
                FailureCode::Storage,
                "disk I/O error (injected)".into(),
            ));
        }
        let mut rows = s.rows.clone();
        for v in segments {
            let (first, last) = v.segment().header.range();
            if v.start() != s.position && Some(v) == segments.first() {
                return Err(failure(
                    FailureCode::Continuity,
                    format!(
                        "segment {first}..={last} was validated after commit {}, the replica is at {}",
                        v.start().commit_id,
                        s.position.commit_id
                    ),
                ));
            }
            for r in &v.segment().records {
                for c in &r.changes {
                    apply_change(&mut rows, c).map_err(|e| {
                        failure(
                            FailureCode::Diverged,
                            format!("commit {}: {e}", r.commit_id),
                        )
                        .at(r.commit_id, r.commit_id)
                    })?;
                }
            }
            match s.segments.get(&first).map(|g| g.state.clone()) {
                Some(from) => check_applied(&from).map_err(|e| {
                    failure(
                        FailureCode::IllegalTransition,
                        format!("segment {first}..={last}: {e}"),
                    )
                })?,
                None => {
                    return Err(failure(
                        FailureCode::IllegalTransition,
                        format!("segment {first}..={last} is not stored"),
                    ))
                }
            }
        }
        for v in segments {
            let first = v.segment().header.first_commit_id;
            if let Some(g) = s.segments.get_mut(&first) {
                g.state = SegmentState::Applied;
                g.bytes.clear();
            }
        }
        s.rows = rows;
        s.position = segments.last().map_or(s.position, |v| v.end());
        Ok(s.position)
    }
}

impl ApplyStorage for MemReplica {
    fn apply(&mut self, segment: &ValidatedSegment) -> Result<ChainPosition, Failure> {
        self.apply_all(std::slice::from_ref(segment))
    }

    fn apply_held(
        &mut self,
        held: &[HeldSegment],
        last: &ValidatedSegment,
    ) -> Result<ChainPosition, Failure> {
        // The held segments' stored bytes, read again and checked to still
        // decode, continue and end where they were validated to.
        let mut segments = Vec::with_capacity(held.len() + 1);
        for h in held {
            let (first, last_id) = h.range;
            let bytes = self
                .state()
                .segments
                .get(&first)
                .filter(|g| g.last == last_id)
                .map(|g| g.bytes.clone())
                .unwrap_or_default();
            let problem = |p: String| {
                failure(
                    FailureCode::Apply,
                    format!("held segment {first}..={last_id}: {p}"),
                )
            };
            let seg = Segment::decode(&bytes).map_err(|e| problem(e.to_string()))?;
            let v = validate(seg, &h.start).map_err(|e| problem(e.to_string()))?;
            if v.end() != h.end {
                return Err(problem("its stored bytes end elsewhere".into()));
            }
            segments.push(v);
        }
        segments.push(last.clone());
        self.apply_all(&segments)
    }

    fn install_snapshot(
        &mut self,
        first: CommitId,
        last: CommitId,
        path: &Path,
        end: ChainPosition,
    ) -> Result<ChainPosition, Failure> {
        let (at, _, _, rows) = read_snapshot(path).map_err(|e| {
            failure(
                FailureCode::Snapshot,
                format!("snapshot {}: {e}", path.display()),
            )
        })?;
        if at != end {
            return Err(failure(
                FailureCode::Snapshot,
                format!(
                    "snapshot {} is at commit {}, not {}",
                    path.display(),
                    at.commit_id,
                    end.commit_id
                ),
            ));
        }
        let mut s = self.state();
        match s.segments.get_mut(&first).filter(|g| g.last == last) {
            Some(g) => {
                check_applied(&g.state).map_err(|e| {
                    failure(
                        FailureCode::IllegalTransition,
                        format!("snapshot {first}..={last}: {e}"),
                    )
                })?;
                g.state = SegmentState::Applied;
            }
            None => {
                return Err(failure(
                    FailureCode::IllegalTransition,
                    format!("snapshot {first}..={last} is not stored"),
                ))
            }
        }
        s.rows = rows;
        s.position = end;
        let _ = std::fs::remove_file(path);
        Ok(end)
    }
}
