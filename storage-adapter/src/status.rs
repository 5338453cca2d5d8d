//! What `replica_state` shows: the role of a database and, for a replica,
//! its committed position. Read from the persisted tables, so it works in
//! any process that opens the file.
//!
//! Role in the spec: observability of the Replica State Store (rules O2,
//! T1). Read-only.

use crate::primary_wal::WalTables;
use crate::raw::{RawConn, RawError};
use replication::wal::{CommitId, Generation, WalOffset};
use rusqlite::Connection;

/// What a database is to AeroDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Neither a primary nor a replica.
    None,
    /// `aerodb_primary_init()` ran here.
    Primary,
    /// A replica position exists here.
    Replica,
}

impl Role {
    /// Lowercase name, as shown in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// The persisted replica status of one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The database's role.
    pub role: Role,
    /// The primary generation followed (replica) or owned (primary).
    pub generation: Option<Generation>,
    /// Last applied CommitId (replica) or head (primary).
    pub applied_commit_id: Option<CommitId>,
    /// WAL offset after the last applied record (replica only).
    pub applied_wal_offset: Option<WalOffset>,
    /// Chained checksum of the last applied record (replica only).
    pub applied_chain: Option<u32>,
    /// Tables replicated (received schema records / captured).
    pub replicated_tables: i64,
    /// The replica runtime's recorded state (None if no runtime ever ran).
    pub runtime: Option<RecordedState>,
    /// The CommitId of the last snapshot this replica bootstrapped from.
    pub snapshot_commit_id: Option<CommitId>,
    /// The newest head the replica's source advertised (replica only;
    /// `None` until a runtime received something).
    pub source_head: Option<CommitId>,
}

/// What the Supervisor last recorded in `aerodb_replica_state`, and the
/// last transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedState {
    /// Global state: Disabled, Initializing, ..., Ready.
    pub global_state: String,
    /// read-safe / read-blocked (empty unless Ready).
    pub read_status: String,
    /// Why reads are blocked.
    pub blocking_reason: Option<String>,
    /// Last CommitId persisted by the Receiver.
    pub received_commit_id: CommitId,
    /// Last CommitId validated.
    pub validated_commit_id: CommitId,
    /// The last transition, "From -> To".
    pub last_transition: Option<String>,
    /// Its reason.
    pub last_transition_reason: Option<String>,
}

fn recorded(conn: RawConn) -> Result<Option<RecordedState>, RawError> {
    if !table_exists(conn, "aerodb_replica_state")? {
        return Ok(None);
    }
    let mut s = conn.prepare(
        "SELECT s.global_state, s.read_status, s.blocking_reason, s.received_commit_id, s.validated_commit_id, t.from_state || ' -> ' || t.to_state, t.reason FROM aerodb_replica_state s LEFT JOIN aerodb_replica_transitions t ON t.seq = s.last_transition_seq WHERE s.id = 1",
    )?;
    if !s.step()? {
        return Ok(None);
    }
    let text = |k| s.column(k).into_string();
    Ok(Some(RecordedState {
        global_state: text(0).unwrap_or_default(),
        read_status: text(1).unwrap_or_default(),
        blocking_reason: text(2),
        received_commit_id: CommitId(s.column(3).as_i64().unwrap_or(0) as u64),
        validated_commit_id: CommitId(s.column(4).as_i64().unwrap_or(0) as u64),
        last_transition: text(5),
        last_transition_reason: text(6),
    }))
}

fn table_exists(conn: RawConn, name: &str) -> Result<bool, RawError> {
    Ok(conn
        .query_value(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            &[rusqlite::types::ValueRef::Text(name.as_bytes())],
        )?
        .is_some())
}

fn count(conn: RawConn, sql: &str) -> Result<i64, RawError> {
    Ok(conn
        .query_value(sql, &[])?
        .and_then(|v| v.as_i64())
        .unwrap_or(0))
}

pub(crate) fn read_raw(conn: RawConn) -> Result<ReplicaStatus, RawError> {
    if table_exists(conn, "aerodb_replica_position")? {
        let mut s = conn.prepare(
            "SELECT generation, applied_commit_id, applied_wal_offset, applied_chain FROM aerodb_replica_position WHERE id = 1",
        )?;
        if s.step()? {
            let i = |k| s.column(k).as_i64().unwrap_or(0);
            let runtime = recorded(conn)?;
            let snapshot_commit_id = if table_exists(conn, "aerodb_replica_bootstrap")? {
                conn.query_value("SELECT max(commit_id) FROM aerodb_replica_bootstrap", &[])?
                    .and_then(|v| v.as_i64())
                    .map(|c| CommitId(c as u64))
            } else {
                None
            };
            let source_head = if table_exists(conn, "aerodb_replica_source")? {
                conn.query_value(
                    "SELECT head_commit_id FROM aerodb_replica_source WHERE id = 1",
                    &[],
                )?
                .and_then(|v| v.as_i64())
                .map(|c| CommitId(c as u64))
            } else {
                None
            };
            return Ok(ReplicaStatus {
                runtime,
                snapshot_commit_id,
                source_head,
                role: Role::Replica,
                generation: Some(Generation(i(0) as u64)),
                applied_commit_id: Some(CommitId(i(1) as u64)),
                applied_wal_offset: Some(WalOffset(i(2) as u64)),
                applied_chain: Some(i(3) as u32),
                replicated_tables: count(conn, "SELECT count(*) FROM aerodb_replica_tables")?,
            });
        }
    }
    if table_exists(conn, "aerodb_meta")? {
        let wal = WalTables::new(conn);
        if let Ok(generation) = wal.generation() {
            let head = wal.head().ok();
            return Ok(ReplicaStatus {
                role: Role::Primary,
                generation: Some(generation),
                applied_commit_id: head,
                applied_wal_offset: None,
                applied_chain: None,
                replicated_tables: count(conn, "SELECT count(*) FROM aerodb_tables")?,
                runtime: None,
                snapshot_commit_id: None,
                source_head: None,
            });
        }
    }
    Ok(ReplicaStatus {
        role: Role::None,
        generation: None,
        applied_commit_id: None,
        applied_wal_offset: None,
        applied_chain: None,
        replicated_tables: 0,
        runtime: None,
        snapshot_commit_id: None,
        source_head: None,
    })
}

impl ReplicaStatus {
    /// Commits the replica lacks of what its source advertised (`None`
    /// while the head is unknown).
    pub fn lag_commits(&self) -> Option<u64> {
        Some(
            self.source_head?
                .0
                .saturating_sub(self.applied_commit_id?.0),
        )
    }

    /// Reads the status of the main database of `conn`.
    pub fn read(conn: &Connection) -> Result<ReplicaStatus, RawError> {
        // SAFETY: conn is open for the whole call.
        read_raw(unsafe { RawConn::new(conn.handle()) })
    }

    /// The same, from a raw handle (for the loadable extension's virtual
    /// tables).
    ///
    /// # Safety
    /// `db` must be an open connection used by the calling thread only for
    /// the duration of the call.
    pub unsafe fn read_raw(db: *mut rusqlite::ffi::sqlite3) -> Result<ReplicaStatus, RawError> {
        read_raw(RawConn::new(db))
    }
}
