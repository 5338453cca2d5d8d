//! The ports of [`replication::runtime`] on one replica database file:
//! the Receiver's WAL storage, the Validator's read-only segment reader,
//! the Applier's storage (rows and position in one transaction).

use super::state_store::SqliteStateStore;
use super::{io_failure, open_replica_connection, sql, storage_failure};
use crate::replica::{ApplyError, ReplicaDb};
use replication::applier::HeldSegment;
use replication::runtime::FailureCode;
use replication::runtime::{
    ApplyStorage, Failure, PersistedSegment, SegmentReader, SnapshotFacts, StateStore, Storage,
    WalStorage,
};
use replication::wal::{validate, ChainPosition, CommitId, Segment, ValidatedSegment};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// [`Replica::start`](super::Replica::start)).
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
        // Readers then find the check recorded for the schema as it is.
        let _writing = self.lock.hold();
        db.record_schema_check().map_err(apply_failure)?;
        Ok(Box::new(SqliteApply {
            db,
            lock: self.lock.clone(),
        }))
    }
}

pub(super) struct SqliteWalStorage {
    pub(super) conn: Connection,
    pub(super) snapshot: PathBuf,
    pub(super) lock: WriteTurn,
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
                crate::wall_clock::now_ms()
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
            .map_err(|e| io_failure(&format!("reading {}", path.display()), &e))?
            .len();
        let _writing = self.lock.hold();
        self.conn
            .execute(
                "INSERT INTO aerodb_replica_segments(first_commit_id, last_commit_id, byte_len, state, received_unix_ms, snapshot_path) VALUES (?1, ?2, ?3, 'Received', ?4, ?5)",
                params![
                    first.0 as i64,
                    last.0 as i64,
                    len as i64,
                    crate::wall_clock::now_ms(),
                    path.to_string_lossy()
                ],
            )
            .map_err(sql("persisting a received snapshot"))?;
        Ok(())
    }
}

pub(super) struct SqliteSegmentReader {
    pub(super) conn: Connection,
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
                FailureCode::SnapshotUnreadable,
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

pub(super) struct SqliteApply {
    pub(super) db: ReplicaDb,
    pub(super) lock: WriteTurn,
}

pub(crate) fn apply_failure(e: ApplyError) -> Failure {
    match &e {
        ApplyError::Divergence { commit_id, .. } => {
            let mut f = Failure::new(FailureCode::Diverged, e.to_string());
            f.expected = Some("1 row".into());
            if let ApplyError::Divergence { matched, .. } = &e {
                f.actual = Some(format!("{matched} rows"));
            }
            f.at(*commit_id, *commit_id)
        }
        ApplyError::Tampered { commit_id, .. } => {
            Failure::new(FailureCode::Diverged, e.to_string()).at(*commit_id, *commit_id)
        }
        ApplyError::Continuity(c) => Failure::new(FailureCode::Continuity, c.to_string()),
        ApplyError::Snapshot { .. } => Failure::new(FailureCode::Snapshot, e.to_string()),
        ApplyError::IllegalSegmentMove { first, last, .. } => {
            Failure::new(FailureCode::IllegalTransition, e.to_string()).at(*first, *last)
        }
        ApplyError::Sqlite { source, .. } => {
            let mut f = storage_failure("applying", source);
            f.reason = e.to_string();
            f
        }
        _ => Failure::new(FailureCode::Apply, e.to_string()),
    }
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
pub(super) fn read_held(
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
