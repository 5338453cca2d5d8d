//! The read side: the Read Safety Gate evaluated over the recorded state
//! in the reader's own transaction (spec 5.6, G1), and the segment and
//! transition rows as SQL shows them.

use replication::read_gate::{self, Decision, ObservedState, ReadRequest};
use replication::state::{BlockReason, GlobalState, ReadStatus};
use replication::wal::{CommitId, WalOffset};
use rusqlite::{Connection, OptionalExtension};
use std::fs::File;
use std::path::{Path, PathBuf};

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
    read_gate_with(conn, min_commit_id, &SchemaMemo::default())
}

/// What one connection remembers between its read checks: the schema
/// version at which it last found the replica's tables as replication left
/// them, so that after DDL of the user's own (an index, a view) it reads
/// the schema once, not on every check until the replica next applies.
#[derive(Debug, Default)]
pub struct SchemaMemo(std::sync::Mutex<Option<i64>>);

impl SchemaMemo {
    fn get(&self) -> Option<i64> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, version: i64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
    }
}

/// [`read_gate_in`] for a connection that keeps a [`SchemaMemo`] across
/// its checks (the extension's `read_safety`).
pub fn read_gate_with(
    conn: &Connection,
    min_commit_id: Option<CommitId>,
    memo: &SchemaMemo,
) -> Decision {
    type Row = (
        i64,
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        // The schema version last checked.
        Option<i64>,
    );
    let observe = || -> Result<ObservedState, String> {
        let not_replica = |e: rusqlite::Error| {
            if e.to_string().contains("no such table") {
                "this database is not an AeroDB replica".to_string()
            } else {
                e.to_string()
            }
        };
        let query = |sql: &str| {
            conn.prepare_cached(sql)?
                .query_row([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                })
                .optional()
        };
        // One statement: the state, and the schema version last checked
        // (NULL on a replica made before the check, which has no table for
        // it: nothing to compare with until its runtime records one).
        let state = |checked: &str| {
            format!(
                "SELECT p.applied_commit_id, p.applied_wal_offset, s.global_state, s.read_status, s.blocking_reason, s.blocking_code, {checked} FROM main.aerodb_replica_position p LEFT JOIN main.aerodb_replica_state s ON s.id = 1 WHERE p.id = 1"
            )
        };
        let row: Option<Row> = match query(&state(
            "(SELECT c.schema_version FROM main.aerodb_replica_schema_check c WHERE c.id = 1)",
        )) {
            Err(e) if e.to_string().contains("aerodb_replica_schema_check") => {
                query(&state("NULL")).map_err(not_replica)?
            }
            other => other.map_err(not_replica)?,
        };
        let (applied, offset, kind, read, reason, code, checked) =
            row.ok_or("this database is not an AeroDB replica")?;
        // The cookie in the header of the database this transaction reads
        // (a pragma statement: the table-valued pragma_schema_version
        // declares a virtual table on every prepare).
        let version = crate::replica::guard::schema_version(conn).map_err(|e| e.to_string())?;
        // A block recorded before the replica left Ready (it stopped, or a
        // restart has not reached Ready read-safe yet) still refuses.
        let recorded_block = match (&kind, &code) {
            (Some(k), Some(c)) if k != "Ready" && !c.is_empty() => Some(BlockReason::Recorded {
                diverged: c == "DIVERGED",
                reason: reason.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        let global = match kind {
            None => GlobalState::Disabled,
            Some(kind) if kind == "Ready" => GlobalState::Ready {
                read: if read.as_deref() == Some("read-blocked") {
                    ReadStatus::Blocked(BlockReason::Recorded {
                        diverged: code.as_deref() == Some("DIVERGED"),
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
        // DDL since the replica was last found as replication left it: a
        // table dropped, altered or unguarded behind replication's back
        // refuses reads as a divergence, whatever was recorded.
        // Never checked (`checked` NULL): nothing to compare with yet.
        let moved = checked.is_some_and(|c| c != version) && memo.get() != Some(version);
        let tampered = if moved {
            let found = crate::replica::guard::tampering(conn).map_err(|e| e.to_string())?;
            if found.is_none() {
                memo.set(version);
            }
            found
        } else {
            None
        };
        let global = match tampered {
            Some(t) => GlobalState::Ready {
                read: ReadStatus::Blocked(BlockReason::Recorded {
                    diverged: true,
                    reason: format!(
                        "replica table '{}' was changed behind replication's back: {}",
                        t.table, t.what
                    ),
                }),
            },
            None => global,
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
pub(crate) fn lock_path(replica: &Path) -> PathBuf {
    let mut p = canonical(replica).into_os_string();
    p.push(".aerodb-lock");
    PathBuf::from(p)
}

/// The replica file's own path, with symlinks, `.` and `..` resolved: it
/// names the file's lock and control socket, so every path that leads to
/// the file (a symlink, a relative one) finds the same ones. A file not
/// created yet: its directory resolved. (Another hard link is another
/// name: use one.)
pub(crate) fn canonical(replica: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(replica) {
        return p;
    }
    let dir = replica
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (std::fs::canonicalize(dir), replica.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => replica.to_path_buf(),
    }
}

/// Whether a runtime (in any process) holds the lock of the replica file
/// `path`. Never creates the lock file.
pub(crate) fn runtime_holds_lock(path: &str) -> bool {
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
