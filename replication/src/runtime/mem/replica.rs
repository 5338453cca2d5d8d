//! The memory replica: every storage port of the runtime (see [`super`]).

use super::primary::read_snapshot;
use super::{apply_change, lock, Rows};
use crate::applier::HeldSegment;
use crate::code::FailureCode;
use crate::read_gate::ObservedState;
use crate::runtime::ports::{
    ApplyStorage, PersistedSegment, SegmentReader, SnapshotFacts, StateStore, Storage, StoreOp,
    StoredState, WalStorage,
};
use crate::runtime::{ComponentStatus, Failure, TransitionRecord};
use crate::state::{check_segment, BlockReason, GlobalState, ReadStatus, SegmentState};
use crate::wal::{validate, ChainPosition, CommitId, Generation, Segment, ValidatedSegment};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

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
        // All or nothing: check every segment move and discard first.
        for op in ops {
            if let StoreOp::Discard { from } = op {
                // Only Received segments are discarded (a damaged stored
                // copy and what was received after it), as in SQLite.
                let mut found = false;
                for (first, g) in s.segments.range(*from..) {
                    found = true;
                    if g.state != SegmentState::Received {
                        return Err(failure(
                            FailureCode::IllegalTransition,
                            format!(
                                "discarding from commit {from}: segment {first}..={} is {}, not Received",
                                g.last,
                                g.state.as_str()
                            ),
                        ));
                    }
                }
                if !found {
                    return Err(failure(
                        FailureCode::IllegalTransition,
                        format!("discarding from commit {from}: no segment is stored there"),
                    ));
                }
            }
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
        let mut s = self.state();
        if s.segments.contains_key(&first) {
            return Err(failure(
                FailureCode::Storage,
                format!("persisting segment {first}..={last}: a segment from commit {first} is stored already"),
            ));
        }
        s.segments.insert(
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
        let mut s = self.state();
        if s.segments.contains_key(&first) {
            return Err(failure(
                FailureCode::Storage,
                format!("persisting snapshot {first}..={last}: an item from commit {first} is stored already"),
            ));
        }
        s.segments.insert(
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
