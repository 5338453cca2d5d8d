//! The embedding handle [`Replica`]: starts a runtime on a replica file
//! (one per file, held by a lock file), waits, explains, stops.

use super::gate::lock_path;
use super::{
    read_gate_with, segments_in, transitions_in, FileSource, SegmentRow, SqliteStorage,
    TransitionRow,
};
use crate::primary::PrimaryError;
use crate::replica::ReplicaDb;
use replication::read_gate::{self, Decision};
use replication::runtime::{
    ComponentStatus, Config, Runtime, StopRequester, Storage, View, WaitError, WalSource,
};
use replication::wal::{ChainPosition, CommitId, Generation};
use rusqlite::{Connection, OpenFlags};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
    /// Dropped after the runtime (fields drop in order): a hold still
    /// open then finds nothing to release.
    _control: Option<super::control::ControlServer>,
    /// The read gate's memory of its last schema check (see
    /// [`SchemaMemo`](super::SchemaMemo)), across `explain_read` calls.
    schema: super::SchemaMemo,
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
            // Refuses a primary file before creating anything in it.
            let db = ReplicaDb::open(&path).map_err(|e| err(e.to_string()))?;
            match db.position().map_err(|e| err(e.to_string()))? {
                Some(p) => p,
                None => db.init(generation).map_err(|e| err(e.to_string()))?,
            }
        };
        let runtime = Runtime::start(source, storage(&path), generation, config);
        // `aerodb verify` holds a running replica through it. Without it the
        // replica still runs; verify then says to stop it first.
        let control = super::control::ControlServer::start(&path, runtime.holder())
            .map_err(|e| {
                tracing::warn!(replica = %path.display(), error = %e, "no control socket: aerodb verify cannot hold this running replica")
            })
            .ok();
        Ok(Replica {
            runtime: Some(runtime),
            _control: control,
            schema: super::SchemaMemo::default(),
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
    pub fn view(&self) -> Arc<View> {
        self.runtime().view()
    }

    /// A handle reading the live state, which may outlive a borrow of this
    /// replica (see `replication::runtime::Views`).
    pub fn views(&self) -> replication::runtime::Views {
        self.runtime().views()
    }

    /// Each component's status (state, blocking reason, last successful
    /// transition, last error).
    pub fn components(&self) -> Vec<ComponentStatus> {
        self.view().components.clone()
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
        Ok(read_gate_with(&self.reader()?, min_commit_id, &self.schema))
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
            let seen = self.view();
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
        done: impl FnMut(&View) -> bool,
    ) -> Result<Arc<View>, Arc<View>> {
        self.runtime().wait_until(deadline, done)
    }

    /// Resumes a block an operator may lift (a full disk freed, a source
    /// fixed), recorded as `resumed by {reason}`: see
    /// [`Runtime::resume`]. Returns the state it resumed from, or why
    /// nothing resumes.
    pub fn resume(&self, reason: &str) -> Result<String, String> {
        self.runtime().resume(reason)
    }

    /// A handle that asks this replica to stop from another thread (e.g.
    /// on a signal); the stop is recorded with the reason given. Call
    /// [`stop`](Self::stop) afterwards to join the threads.
    pub fn stop_requester(&self) -> StopRequester {
        self.runtime().stop_requester()
    }

    /// Stops the replica (threads joined, stop recorded); returns the last
    /// state.
    pub fn stop(mut self) -> Arc<View> {
        self.runtime.take().expect("present until stop").stop()
    }
}
