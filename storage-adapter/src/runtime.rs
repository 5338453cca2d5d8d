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
//! let state = replica.view();
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

use replication::runtime::FailureCode;
mod file_source;
mod gate;
mod handle;
mod sqlite_ports;
pub(crate) mod state_store;

pub(crate) mod control;
pub use file_source::{FileSource, DEFAULT_POLL_INTERVAL};
pub use gate::{
    read_gate_in, read_gate_with, segments_in, transitions_in, SchemaMemo, SegmentRow,
    TransitionRow,
};
pub use handle::{Replica, StartError};
pub use sqlite_ports::SqliteStorage;
pub(crate) use sqlite_ports::{apply_failure, WriteTurn};

use replication::runtime::Failure;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

/// How long a connection waits for another's write lock before the write
/// fails. A lock wait, not coordination: the runtime's own transactions are
/// short; expiry (another process holding the replica's write lock this
/// long) is an explicit storage failure, never a silent one.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Applied segment rows kept (their metadata; raw bytes go at apply).
pub const KEEP_APPLIED_SEGMENTS: i64 = 1000;
/// Global transitions kept in `aerodb_replica_transitions`.
pub const KEEP_TRANSITIONS: i64 = 100_000;

/// A storage failure of SQLite: DISK_FULL when SQLite says so
/// (`SQLITE_FULL`), STORAGE otherwise. Decided by the error code, never by
/// the message text.
pub(crate) fn storage_failure(doing: &str, e: &rusqlite::Error) -> Failure {
    let code = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => FailureCode::DiskFull,
        _ => FailureCode::Storage,
    };
    Failure::new(code, format!("{doing}: {e}"))
}

/// A storage failure of the file system: DISK_FULL for `ENOSPC`.
pub(crate) fn io_failure(doing: &str, e: &std::io::Error) -> Failure {
    let code = match e.kind() {
        std::io::ErrorKind::StorageFull => FailureCode::DiskFull,
        _ => FailureCode::Storage,
    };
    Failure::new(code, format!("{doing}: {e}"))
}

pub(crate) fn sql(doing: &'static str) -> impl FnOnce(rusqlite::Error) -> Failure {
    move |e| storage_failure(doing, &e)
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
    // The runtime's own connection: its writes pass the replica's guards.
    crate::replica::guard::let_replication_write(&conn).map_err(sqlite_ports::apply_failure)?;
    Ok(conn)
}

/// Takes the lock a replica runtime holds on `replica` (so none can start
/// while it is held); `Err` when one holds it. Released when dropped.
pub(crate) fn take_lock(replica: &std::path::Path) -> Result<std::fs::File, String> {
    let path = gate::lock_path(replica);
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening lock file {}: {e}", path.display()))?;
    lock.try_lock()
        .map_err(|_| "a replica runtime holds it".to_string())?;
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_decided_by_sqlites_error_code_not_by_message_text() {
        // A real SQLITE_FULL: a database capped at its current size.
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t(b BLOB); PRAGMA max_page_count = 2;")
            .expect("cap");
        let full = conn
            .execute("INSERT INTO t VALUES (zeroblob(100000))", [])
            .expect_err("over the cap");
        let f = storage_failure("applying", &full);
        assert_eq!(f.code, FailureCode::DiskFull, "{f}");
        // The same words in another error's message are not a full disk.
        let other = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            Some("database or disk is full".into()),
        );
        assert_eq!(
            storage_failure("applying", &other).code,
            FailureCode::Storage
        );
        let enospc = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(io_failure("writing", &enospc).code, FailureCode::DiskFull);
    }
}
