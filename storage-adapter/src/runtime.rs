//! The replica runtime on SQLite files: the ports of
//! [`replication::runtime`] implemented on a replica database, a WAL source
//! reading a primary file, and the embedding handle [`Replica`].
//!
//! Role in the spec: the Replica State Store (5.5) and the storage the
//! Receiver (WAL storage) and the Applier (rows + position) write; the Read
//! Safety Gate evaluated in a reader's own SQLite transaction (5.6, G1).
//!
//! ```
//! use replication::runtime::{Component, Config};
//! use replication::wal::CommitId;
//! use std::time::{Duration, Instant};
//! use storage_adapter::primary::Primary;
//! use storage_adapter::runtime::Replica;
//!
//! let dir = tempfile::tempdir()?;
//! // A primary: capture a table, write to it.
//! let primary = Primary::open(dir.path().join("primary.db"))?;
//! primary.connection().execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")?;
//! primary.replicate("t")?;
//! primary.connection().execute("INSERT INTO t VALUES (1, 'one')", [])?;
//! let token = primary.last_commit_id()?.expect("this connection committed");
//!
//! // A replica of it, running on its own threads.
//! let replica = Replica::start_from_file(
//!     dir.path().join("replica.db"),
//!     dir.path().join("primary.db"),
//!     Config::default(),
//! )?;
//! replica.wait_for(token, Instant::now() + Duration::from_secs(10))?;
//! let state = replica.snapshot();
//! println!("{} at commit {}", state.global, state.applied.commit_id);
//! println!("{}", state.component(Component::Applier).state);
//! assert!(replica.explain_read(Some(token))?.allowed());
//! let future = replica.explain_read(Some(CommitId(token.0 + 1)))?;
//! assert!(!future.allowed(), "{future}");
//! for t in replica.transitions()? {
//!     println!("{} -> {}: {}", t.from_state, t.to_state, t.reason);
//! }
//! let last = replica.stop(); // threads joined, stop recorded
//! assert!(!last.running);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::primary::{PrimaryError, PrimaryWalReader};
use crate::replica::{ApplyError, ReplicaDb};
use crate::state_store::SqliteStateStore;
use crate::WalReadError;
use replication::applier::HeldSegment;
use replication::read_gate::{self, Decision, ObservedState, ReadRequest};
use replication::runtime::{
    ApplyStorage, ComponentStatus, Config, Failure, Fetched, PersistedSegment, Runtime,
    SegmentReader, Snapshot, SnapshotFacts, StateStore, StopRequester, StopSignal, Storage,
    WaitError, WalSource, WalStorage, WAL_TRUNCATED,
};
use replication::state::{BlockReason, GlobalState, ReadStatus};
use replication::wal::{
    validate, ChainPosition, CommitId, Generation, Segment, ValidatedSegment, WalOffset,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connection waits for another's write lock before the write
/// fails. A lock wait, not coordination: the runtime's own transactions are
/// short; expiry (another process holding the replica's write lock this
/// long) is an explicit storage failure, never a silent one.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Applied segment rows kept (their metadata; raw bytes go at apply).
pub const KEEP_APPLIED_SEGMENTS: i64 = 1000;
/// Global transitions kept in `aerodb_replica_transitions`.
pub const KEEP_TRANSITIONS: i64 = 100_000;

pub(crate) fn storage_failure(doing: &str, e: impl std::fmt::Display) -> Failure {
    let text = e.to_string();
    let code = if text.contains("database or disk is full") {
        "DISK_FULL"
    } else {
        "STORAGE"
    };
    Failure::new(code, format!("{doing}: {text}"))
}

pub(crate) fn sql(doing: &'static str) -> impl FnOnce(rusqlite::Error) -> Failure {
    move |e| storage_failure(doing, e)
}

fn open_replica_connection(path: &Path) -> Result<Connection, Failure> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql("opening the replica"))?;
    conn.busy_timeout(LOCK_WAIT)
        .map_err(sql("setting the lock wait"))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql("setting synchronous"))?;
    Ok(conn)
}

// ------------------------------------------------------------------ source

/// A WAL source reading a primary database file, read-only, each fetch in
/// its own read transaction. New WAL is noticed by polling `PRAGMA
/// data_version` (it changes when another connection commits) every
/// `poll_interval`, waiting on the stop signal in between: the wait decides
/// only when to look again.
pub struct FileSource {
    path: PathBuf,
    reader: PrimaryWalReader,
    seen_version: i64,
    poll_interval: Duration,
}

/// Default interval between `data_version` polls of a file source.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(1);

impl FileSource {
    /// Opens the primary file read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<FileSource, PrimaryError> {
        let reader = PrimaryWalReader::open(path.as_ref())?;
        Ok(FileSource {
            path: path.as_ref().to_path_buf(),
            seen_version: reader.data_version()?,
            reader,
            poll_interval: DEFAULT_POLL_INTERVAL,
        })
    }

    /// Sets the polling interval.
    pub fn with_poll_interval(mut self, d: Duration) -> FileSource {
        self.poll_interval = d;
        self
    }

    /// The primary's generation.
    pub fn generation(&self) -> Generation {
        self.reader.generation()
    }
}

fn source_failure(path: &Path, e: PrimaryError) -> Failure {
    Failure::new("SOURCE", format!("primary file {}: {e}", path.display()))
}

impl WalSource for FileSource {
    fn describe(&self) -> String {
        format!("primary file {}", self.path.display())
    }

    fn fetch(&mut self, from: CommitId, max_bytes: usize) -> Result<Option<Fetched>, Failure> {
        // Read the version first: a commit after this read is noticed by
        // the next wait even if this fetch already saw it.
        self.seen_version = self
            .reader
            .data_version()
            .map_err(|e| source_failure(&self.path, e))?;
        let oldest = self
            .reader
            .oldest()
            .map_err(|e| source_failure(&self.path, e))?;
        if from < oldest {
            return Err(Failure::new(
                WAL_TRUNCATED,
                format!(
                    "primary file {}: commit {from} is no longer in its WAL (oldest retained commit is {oldest})",
                    self.path.display()
                ),
            ));
        }
        let (records, head) = self
            .reader
            .records_and_head(from, max_bytes)
            .map_err(|e| match e {
                PrimaryError::Wal(WalReadError::Truncated { oldest_sealed, .. }) => Failure::new(
                    WAL_TRUNCATED,
                    format!(
                        "primary file {}: commit {from} is no longer in its WAL (oldest retained commit is {oldest_sealed})",
                        self.path.display()
                    ),
                ),
                e => source_failure(&self.path, e),
            })?;
        if from.0 > head.0 + 1 {
            return Err(Failure::new(
                "SOURCE_BEHIND",
                format!(
                    "primary file {}: its head is commit {head}, behind this replica (which needs commit {from} next): was it restored from an older backup?",
                    self.path.display()
                ),
            ));
        }
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(None);
        };
        let (first, last) = (first.commit_id, last.commit_id);
        let bytes = Segment::encode(self.reader.generation(), &records).map_err(|e| {
            Failure::new("SOURCE", format!("encoding segment {first}..={last}: {e}"))
                .at(first, last)
        })?;
        Ok(Some(Fetched {
            first,
            last,
            bytes,
            source_head: head,
        }))
    }

    fn snapshot(&mut self, dest: &Path) -> Result<CommitId, Failure> {
        crate::snapshot::take(&self.path, dest)
            .map(|info| info.commit_id)
            .map_err(|e| {
                Failure::new(
                    "SOURCE",
                    format!("snapshot of primary file {}: {e}", self.path.display()),
                )
            })
    }

    fn wait_for_wal(&mut self, stop: &StopSignal) -> Result<bool, Failure> {
        loop {
            let v = self
                .reader
                .data_version()
                .map_err(|e| source_failure(&self.path, e))?;
            if v != self.seen_version {
                return Ok(true);
            }
            if stop.wait(self.poll_interval) {
                return Ok(false);
            }
        }
    }
}

// ----------------------------------------------------------------- storage

/// The storage ports on one replica database file.
pub struct SqliteStorage {
    path: PathBuf,
    lock: WriteTurn,
}

/// Whose turn it is to write the replica file, among this runtime's
/// connections. SQLite serializes writers anyway (and still guards against
/// other processes); taking turns here first means a writer waits for the
/// one before it instead of sleeping in SQLite's busy handler (1, 2, 5,
/// 10 ms ...), which dominated the latency tail. Correctness never rests
/// on it: every write still checks, in SQL, the state it moves from.
#[derive(Clone, Default)]
pub(crate) struct WriteTurn(Arc<std::sync::Mutex<()>>);

impl WriteTurn {
    pub(crate) fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SqliteStorage {
    /// The replica file (it must have been made a replica: see
    /// [`Replica::start`]).
    pub fn new(path: impl AsRef<Path>) -> SqliteStorage {
        // Absolute: snapshot paths recorded in the store must not depend on
        // the working directory of a later run.
        let path =
            std::path::absolute(path.as_ref()).unwrap_or_else(|_| path.as_ref().to_path_buf());
        SqliteStorage {
            path,
            lock: WriteTurn::default(),
        }
    }
}

impl Storage for SqliteStorage {
    fn state_store(&self) -> Result<Box<dyn StateStore>, Failure> {
        Ok(Box::new(SqliteStateStore::new(
            open_replica_connection(&self.path)?,
            self.lock.clone(),
        )))
    }

    fn wal_storage(&self) -> Result<Box<dyn WalStorage>, Failure> {
        let mut snapshot = self.path.clone().into_os_string();
        snapshot.push(".aerodb-snapshot");
        Ok(Box::new(SqliteWalStorage {
            conn: open_replica_connection(&self.path)?,
            snapshot: PathBuf::from(snapshot),
            lock: self.lock.clone(),
        }))
    }

    fn segment_reader(&self) -> Result<Box<dyn SegmentReader>, Failure> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql("opening the replica read-only"))?;
        Ok(Box::new(SqliteSegmentReader { conn }))
    }

    fn apply_storage(&self) -> Result<Box<dyn ApplyStorage>, Failure> {
        let conn = open_replica_connection(&self.path)?;
        let mut db = ReplicaDb::from_connection(conn).map_err(apply_failure)?;
        db.track_segments();
        Ok(Box::new(SqliteApply {
            db,
            lock: self.lock.clone(),
        }))
    }
}

struct SqliteWalStorage {
    conn: Connection,
    snapshot: PathBuf,
    lock: WriteTurn,
}

impl WalStorage for SqliteWalStorage {
    fn persist(&mut self, first: CommitId, last: CommitId, bytes: &[u8]) -> Result<(), Failure> {
        let _writing = self.lock.hold();
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(sql("beginning to persist a received segment"))?;
        tx.prepare_cached(
            "INSERT INTO aerodb_replica_segments(first_commit_id, last_commit_id, byte_len, state, received_unix_ms) VALUES (?1, ?2, ?3, 'Received', ?4)",
        )
        .and_then(|mut s| {
            s.execute(params![
                first.0 as i64,
                last.0 as i64,
                bytes.len() as i64,
                now_ms()
            ])
        })
        .map_err(sql("persisting a received segment"))?;
        tx.prepare_cached(
            "INSERT INTO aerodb_replica_segment_bytes(first_commit_id, bytes) VALUES (?1, ?2)",
        )
        .and_then(|mut s| s.execute(params![first.0 as i64, bytes]))
        .map_err(sql("persisting a received segment's bytes"))?;
        tx.commit().map_err(sql("committing a received segment"))
    }

    fn snapshot_path(&self, first: CommitId) -> PathBuf {
        let mut name = self.snapshot.clone().into_os_string();
        name.push(format!("-{}", first.0));
        PathBuf::from(name)
    }

    fn persist_snapshot(
        &mut self,
        first: CommitId,
        last: CommitId,
        path: &Path,
    ) -> Result<(), Failure> {
        let len = std::fs::metadata(path)
            .map_err(|e| storage_failure(&format!("reading {}", path.display()), e))?
            .len();
        let _writing = self.lock.hold();
        self.conn
            .execute(
                "INSERT INTO aerodb_replica_segments(first_commit_id, last_commit_id, byte_len, state, received_unix_ms, snapshot_path) VALUES (?1, ?2, ?3, 'Received', ?4, ?5)",
                params![
                    first.0 as i64,
                    last.0 as i64,
                    len as i64,
                    now_ms(),
                    path.to_string_lossy()
                ],
            )
            .map_err(sql("persisting a received snapshot"))?;
        Ok(())
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct SqliteSegmentReader {
    conn: Connection,
}

impl SegmentReader for SqliteSegmentReader {
    fn next_after(&mut self, after: CommitId) -> Result<Option<PersistedSegment>, Failure> {
        self.conn
            .prepare_cached(
                "SELECT s.first_commit_id, s.last_commit_id, b.bytes, s.snapshot_path, s.state = 'Rejected' FROM aerodb_replica_segments s LEFT JOIN aerodb_replica_segment_bytes b ON b.first_commit_id = s.first_commit_id WHERE s.first_commit_id = ?1 AND s.state <> 'Applied'",
            )
            .and_then(|mut s| {
                s.query_row([after.next().0 as i64], |r| {
                    Ok(PersistedSegment {
                        first: CommitId(r.get::<_, i64>(0)? as u64),
                        last: CommitId(r.get::<_, i64>(1)? as u64),
                        bytes: r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
                        snapshot: r.get::<_, Option<String>>(3)?.map(PathBuf::from),
                        rejected: r.get(4)?,
                    })
                })
                .optional()
            })
            .map_err(sql("reading a persisted segment"))
    }

    fn inspect_snapshot(&mut self, path: &Path) -> Result<SnapshotFacts, Failure> {
        let (info, computed) = crate::snapshot::inspect(path).map_err(|e| {
            Failure::new(
                "SNAPSHOT_UNREADABLE",
                format!("snapshot {}: {e}", path.display()),
            )
        })?;
        Ok(SnapshotFacts {
            recorded: info.position(),
            recorded_checksum: info.checksum,
            computed_checksum: computed,
        })
    }
}

struct SqliteApply {
    db: ReplicaDb,
    lock: WriteTurn,
}

pub(crate) fn apply_failure(e: ApplyError) -> Failure {
    let mut f = match &e {
        ApplyError::Divergence { commit_id, .. } => {
            let mut f = Failure::new("DIVERGED", e.to_string());
            f.expected = Some("1 row".into());
            if let ApplyError::Divergence { matched, .. } = &e {
                f.actual = Some(format!("{matched} rows"));
            }
            f.at(*commit_id, *commit_id)
        }
        ApplyError::Continuity(c) => Failure::new("CONTINUITY", c.to_string()),
        ApplyError::Snapshot { .. } => Failure::new("SNAPSHOT", e.to_string()),
        ApplyError::IllegalSegmentMove { first, last, .. } => {
            Failure::new("ILLEGAL_TRANSITION", e.to_string()).at(*first, *last)
        }
        ApplyError::Sqlite { .. } => storage_failure("applying", &e),
        _ => Failure::new("APPLY", e.to_string()),
    };
    if f.code == "STORAGE" {
        f.reason = e.to_string();
    }
    f
}

impl ApplyStorage for SqliteApply {
    fn apply(&mut self, segment: &ValidatedSegment) -> Result<ChainPosition, Failure> {
        let _writing = self.lock.hold();
        self.db.apply(segment).map_err(|e| {
            let mut f = apply_failure(e);
            f.wal_offset = Some(segment.start().wal_offset);
            f
        })
    }

    fn apply_held(
        &mut self,
        held: &[HeldSegment],
        last: &ValidatedSegment,
    ) -> Result<ChainPosition, Failure> {
        let _writing = self.lock.hold();
        let start = held.first().map_or(last.start(), |h| h.start);
        let mut pending = held.iter();
        let mut last = Some(last);
        self.db
            .apply_transaction(None, &mut |tx, at| match pending.next() {
                Some(h) => read_held(tx, h, at),
                None => last.take().cloned().ok_or(ApplyError::TransactionCut {
                    after: at.commit_id,
                }),
            })
            .map_err(|e| {
                let mut f = apply_failure(e);
                f.wal_offset = Some(start.wal_offset);
                f
            })
    }

    fn install_snapshot(
        &mut self,
        first: CommitId,
        last: CommitId,
        path: &Path,
        end: ChainPosition,
    ) -> Result<ChainPosition, Failure> {
        let _writing = self.lock.hold();
        self.db
            .install_snapshot(first, last, path, end)
            .map_err(apply_failure)
    }
}

/// Reads held segment `h` back from WAL storage, in the apply transaction,
/// and checks it is the one the Validator validated: it decodes (its CRCs
/// hold), continues `at` and ends where it was validated to end.
fn read_held(
    tx: &Connection,
    h: &HeldSegment,
    at: &ChainPosition,
) -> Result<ValidatedSegment, ApplyError> {
    let (first, last) = h.range;
    let problem = |problem: String| ApplyError::HeldSegment {
        first,
        last,
        problem,
    };
    if h.start != *at {
        return Err(problem(format!(
            "it was validated after commit {}, the transaction reached commit {}",
            h.start.commit_id, at.commit_id
        )));
    }
    let bytes: Option<Vec<u8>> = tx
        .prepare_cached(
            "SELECT b.bytes FROM main.aerodb_replica_segments s JOIN main.aerodb_replica_segment_bytes b ON b.first_commit_id = s.first_commit_id WHERE s.first_commit_id = ?1 AND s.last_commit_id = ?2 AND s.state IN ('Received', 'Validated')",
        )
        .and_then(|mut s| {
            s.query_row([first.0 as i64, last.0 as i64], |r| r.get(0))
                .optional()
        })
        .map_err(|e| problem(format!("reading its stored bytes: {e}")))?;
    let bytes = bytes.ok_or_else(|| {
        problem("it is not a received, unapplied segment with stored bytes".into())
    })?;
    let segment = Segment::decode(&bytes)
        .map_err(|e| problem(format!("its stored bytes no longer decode: {e}")))?;
    let segment = validate(segment, at)
        .map_err(|e| problem(format!("its stored bytes no longer continue: {e}")))?;
    if segment.end() != h.end || segment.segment().header.range() != h.range {
        return Err(problem(format!(
            "its stored bytes end at commit {} (WAL offset {}), it was validated to end at commit {} (WAL offset {})",
            segment.end().commit_id,
            segment.end().wal_offset,
            h.end.commit_id,
            h.end.wal_offset
        )));
    }
    Ok(segment)
}

// --------------------------------------------------------- read-side views

/// A row of `aerodb_replica_segments`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRow {
    /// First CommitId.
    pub first_commit_id: CommitId,
    /// Last CommitId.
    pub last_commit_id: CommitId,
    /// WAL offset of its first record, once known.
    pub first_wal_offset: Option<WalOffset>,
    /// WAL offset after its last record, once known.
    pub end_wal_offset: Option<WalOffset>,
    /// Size of the raw segment.
    pub byte_len: u64,
    /// Received, Validated, Applied or Rejected.
    pub state: String,
    /// Why it was rejected.
    pub reason: Option<String>,
}

/// A row of `aerodb_replica_transitions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionRow {
    /// Sequence number (increasing).
    pub seq: i64,
    /// Wall-clock time (informational).
    pub at_unix_ms: i64,
    /// From.
    pub from_state: String,
    /// To.
    pub to_state: String,
    /// Why.
    pub reason: String,
    /// Received CommitId at that moment.
    pub received_commit_id: CommitId,
    /// Validated CommitId.
    pub validated_commit_id: CommitId,
    /// Applied CommitId.
    pub applied_commit_id: CommitId,
    /// Applied WAL offset.
    pub applied_wal_offset: WalOffset,
}

/// The segments in the state store, oldest first.
pub fn segments_in(conn: &Connection) -> rusqlite::Result<Vec<SegmentRow>> {
    let mut stmt = conn.prepare(
        "SELECT first_commit_id, last_commit_id, first_wal_offset, end_wal_offset, byte_len, state, reason FROM aerodb_replica_segments ORDER BY first_commit_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(SegmentRow {
            first_commit_id: CommitId(r.get::<_, i64>(0)? as u64),
            last_commit_id: CommitId(r.get::<_, i64>(1)? as u64),
            first_wal_offset: r.get::<_, Option<i64>>(2)?.map(|o| WalOffset(o as u64)),
            end_wal_offset: r.get::<_, Option<i64>>(3)?.map(|o| WalOffset(o as u64)),
            byte_len: r.get::<_, i64>(4)? as u64,
            state: r.get(5)?,
            reason: r.get(6)?,
        })
    })?;
    rows.collect()
}

/// The recorded global transitions, oldest first.
pub fn transitions_in(conn: &Connection) -> rusqlite::Result<Vec<TransitionRow>> {
    let mut stmt = conn.prepare(
        "SELECT seq, at_unix_ms, from_state, to_state, reason, received_commit_id, validated_commit_id, applied_commit_id, applied_wal_offset FROM aerodb_replica_transitions ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(TransitionRow {
            seq: r.get(0)?,
            at_unix_ms: r.get(1)?,
            from_state: r.get(2)?,
            to_state: r.get(3)?,
            reason: r.get(4)?,
            received_commit_id: CommitId(r.get::<_, i64>(5)? as u64),
            validated_commit_id: CommitId(r.get::<_, i64>(6)? as u64),
            applied_commit_id: CommitId(r.get::<_, i64>(7)? as u64),
            applied_wal_offset: WalOffset(r.get::<_, i64>(8)? as u64),
        })
    })?;
    rows.collect()
}

/// The Read Safety Gate over the state `conn` sees: the recorded global
/// state and the applied position, read by ONE statement (one snapshot).
/// Inside a transaction it answers for exactly the snapshot that
/// transaction reads (G1). A state it cannot read refuses the read (F5).
pub fn read_gate_in(conn: &Connection, min_commit_id: Option<CommitId>) -> Decision {
    type Row = (
        i64,
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let observe = || -> Result<ObservedState, String> {
        let row: Option<Row> = conn
            .query_row(
                "SELECT p.applied_commit_id, p.applied_wal_offset, s.global_state, s.read_status, s.blocking_reason, s.blocking_code FROM main.aerodb_replica_position p LEFT JOIN main.aerodb_replica_state s ON s.id = 1 WHERE p.id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()
            .map_err(|e| {
                if e.to_string().contains("no such table") {
                    "this database is not an AeroDB replica".to_string()
                } else {
                    e.to_string()
                }
            })?;
        let (applied, offset, kind, read, reason, code) =
            row.ok_or("this database is not an AeroDB replica")?;
        // A block recorded before the replica left Ready (it stopped, or a
        // restart has not reached Ready read-safe yet) still refuses.
        let recorded_block = match (&kind, &code) {
            (Some(k), Some(c)) if k != "Ready" && !c.is_empty() => Some(BlockReason::Recorded {
                code: c.clone(),
                reason: reason.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        let global = match kind {
            None => GlobalState::Disabled,
            Some(kind) if kind == "Ready" => GlobalState::Ready {
                read: if read.as_deref() == Some("read-blocked") {
                    ReadStatus::Blocked(BlockReason::Recorded {
                        code: code.unwrap_or_else(|| "BLOCKED".into()),
                        reason: reason.unwrap_or_default(),
                    })
                } else {
                    ReadStatus::Safe
                },
            },
            Some(kind) => GlobalState::from_plain_name(&kind)
                .ok_or_else(|| format!("recorded global state '{kind}' is unknown"))?,
        };
        // A recorded running state is only true while a runtime holds the
        // replica's lock: after a crash (or a stop that could not be
        // recorded) the replica is not running, whatever was recorded last.
        // A recorded block stays a block.
        let global = match (&global, conn.path().map(runtime_holds_lock)) {
            (
                GlobalState::Ready {
                    read: ReadStatus::Blocked(_),
                },
                _,
            ) => global,
            (_, Some(false)) => GlobalState::Disabled,
            _ => global,
        };
        Ok(ObservedState {
            global,
            applied_commit_id: CommitId(applied as u64),
            applied_wal_offset: WalOffset(offset as u64),
            recorded_block,
        })
    };
    match observe() {
        Ok(state) => read_gate::evaluate(&state, &ReadRequest { min_commit_id }),
        Err(e) => read_gate::refuse_unobservable(&e),
    }
}

/// The lock file a running runtime holds for `replica`.
fn lock_path(replica: &Path) -> PathBuf {
    let mut p = replica.as_os_str().to_owned();
    p.push(".aerodb-lock");
    PathBuf::from(p)
}

/// Whether a runtime (in any process) holds the lock of the replica file
/// `path`. Never creates the lock file.
fn runtime_holds_lock(path: &str) -> bool {
    if path.is_empty() {
        return false;
    }
    match File::open(lock_path(Path::new(path))) {
        Err(_) => false,
        // flock locks are per open file: this fails while a runtime, in
        // this process or another, holds it. (The probe holds a shared
        // lock for an instant; a runtime starting in exactly that instant
        // is told the replica is already running and can be started
        // again.)
        Ok(f) => f.try_lock_shared().is_err(),
    }
}

// ------------------------------------------------------------------ handle

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The WAL source could not be opened.
    #[error("WAL source: {0}")]
    Source(#[from] PrimaryError),
    /// The HTTP WAL source could not be reached.
    #[error("WAL source: {0}")]
    Http(String),
    /// The replica database could not be prepared.
    #[error("replica {path}: {reason}")]
    Replica {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another replica runtime holds this file.
    #[error("replica {path} is already running (its lock file {lock} is held by another runtime)")]
    AlreadyRunning {
        /// The file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
}

/// A running replica (the embedding API). Stop it with
/// [`stop`](Replica::stop); dropping it stops it too.
pub struct Replica {
    runtime: Option<Runtime>,
    path: PathBuf,
    started_at: ChainPosition,
    _lock: File,
}

impl Replica {
    /// Starts a replica of the primary file `primary` in the database file
    /// `replica` (created if missing).
    pub fn start_from_file(
        replica: impl AsRef<Path>,
        primary: impl AsRef<Path>,
        config: Config,
    ) -> Result<Replica, StartError> {
        let source = FileSource::open(primary)?;
        let generation = source.generation();
        Replica::start(replica, Box::new(source), generation, config)
    }

    /// Starts a replica of the primary served by `aerodb serve` at `url`
    /// (e.g. `http://127.0.0.1:7070`), authenticating with `token`.
    pub fn start_from_url(
        replica: impl AsRef<Path>,
        url: &str,
        token: &str,
        config: Config,
    ) -> Result<Replica, StartError> {
        let source = crate::http_source::HttpSource::open(url, token)
            .map_err(|f| StartError::Http(f.to_string()))?;
        let generation = source.generation();
        Replica::start(replica, Box::new(source), generation, config)
    }

    /// Starts a replica in `replica` fed by `source`, whose primary has
    /// `generation` (a new replica follows it; an existing replica of
    /// another generation stays what it is and rejects the foreign WAL).
    pub fn start(
        replica: impl AsRef<Path>,
        source: Box<dyn WalSource>,
        generation: Generation,
        config: Config,
    ) -> Result<Replica, StartError> {
        Replica::start_with_storage(replica, source, generation, config, |p| {
            Box::new(SqliteStorage::new(p))
        })
    }

    /// [`start`](Self::start) with the storage ports made by `storage`
    /// (tests inject faults this way).
    pub fn start_with_storage(
        replica: impl AsRef<Path>,
        source: Box<dyn WalSource>,
        generation: Generation,
        config: Config,
        storage: impl FnOnce(&Path) -> Box<dyn Storage>,
    ) -> Result<Replica, StartError> {
        let path = replica.as_ref().to_path_buf();
        let err = |reason: String| StartError::Replica {
            path: path.clone(),
            reason,
        };
        let lock_path = lock_path(&path);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| err(format!("opening lock file {}: {e}", lock_path.display())))?;
        if lock.try_lock().is_err() {
            return Err(StartError::AlreadyRunning {
                path,
                lock: lock_path,
            });
        }
        let started_at = {
            let db = ReplicaDb::open(&path).map_err(|e| err(e.to_string()))?;
            let is_primary: bool = db
                .connection()
                .query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE name = 'aerodb_meta'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n > 0)
                .map_err(|e| err(e.to_string()))?;
            if is_primary {
                return Err(err(
                    "is an AeroDB primary (it has aerodb_meta); a database cannot be both".into(),
                ));
            }
            match db.position().map_err(|e| err(e.to_string()))? {
                Some(p) => p,
                None => db.init(generation).map_err(|e| err(e.to_string()))?,
            }
        };
        let runtime = Runtime::start(source, storage(&path), generation, config);
        Ok(Replica {
            runtime: Some(runtime),
            path,
            started_at,
            _lock: lock,
        })
    }

    /// The applied position recorded in the replica file when it started:
    /// where this run resumes from (CommitId 0 for a new replica).
    pub fn started_at(&self) -> ChainPosition {
        self.started_at
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("present until stop")
    }

    /// The live state: global state, progress, components.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.runtime().snapshot()
    }

    /// Each component's status (state, blocking reason, last successful
    /// transition, last error).
    pub fn components(&self) -> Vec<ComponentStatus> {
        self.snapshot().components.clone()
    }

    fn reader(&self) -> rusqlite::Result<Connection> {
        Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
    }

    /// The segments in the state store.
    pub fn segments(&self) -> rusqlite::Result<Vec<SegmentRow>> {
        segments_in(&self.reader()?)
    }

    /// The recorded global transitions.
    pub fn transitions(&self) -> rusqlite::Result<Vec<TransitionRow>> {
        transitions_in(&self.reader()?)
    }

    /// Explains whether a read needing `min_commit_id` is served, over the
    /// state recorded in the replica file (one read transaction).
    pub fn explain_read(&self, min_commit_id: Option<CommitId>) -> rusqlite::Result<Decision> {
        Ok(read_gate_in(&self.reader()?, min_commit_id))
    }

    /// Waits until a read needing `commit_id` would be served: the replica
    /// has applied it and the read gate, over the state recorded in the
    /// replica file, allows it (client-side deadline). A replica that
    /// holds the commit but is blocked or diverged, live or as recorded
    /// earlier, answers [`WaitError::Refused`] with the gate's decision:
    /// `wait_for` never vouches for a read `explain_read` refuses.
    pub fn wait_for(
        &self,
        commit_id: CommitId,
        deadline: Instant,
    ) -> Result<ChainPosition, WaitError> {
        loop {
            // The live state allows the read (or this returns why not).
            let applied = self.runtime().wait_for(commit_id, deadline)?;
            let seen = self.snapshot();
            let decision = self
                .explain_read(Some(commit_id))
                .unwrap_or_else(|e| read_gate::refuse_unobservable(&e.to_string()));
            if decision.allowed() {
                return Ok(applied);
            }
            // The recorded state refuses what the live one allows: a block
            // recorded earlier that this run has not lifted yet (it lifts
            // when the run reaches Ready read-safe, recorded before it is
            // published). Wait for the next published state and ask the
            // gate again; at the deadline, or when nothing will lift it (the
            // runtime stopped or is blocked), its refusal is the answer.
            let settled = !seen.running || replication::runtime::is_blocked(&seen.global);
            if settled || self.wait_until(deadline, |s| *s != *seen).is_err() {
                return Err(WaitError::Refused {
                    wanted: commit_id,
                    decision,
                });
            }
        }
    }

    /// Waits until `done` holds for the live state (client-side deadline).
    pub fn wait_until(
        &self,
        deadline: Instant,
        done: impl FnMut(&Snapshot) -> bool,
    ) -> Result<Arc<Snapshot>, Arc<Snapshot>> {
        self.runtime().wait_until(deadline, done)
    }

    /// A handle that asks this replica to stop from another thread (e.g.
    /// on a signal); the stop is recorded with the reason given. Call
    /// [`stop`](Self::stop) afterwards to join the threads.
    pub fn stop_requester(&self) -> StopRequester {
        self.runtime().stop_requester()
    }

    /// Stops the replica (threads joined, stop recorded); returns the last
    /// state.
    pub fn stop(mut self) -> Arc<Snapshot> {
        self.runtime.take().expect("present until stop").stop()
    }
}
