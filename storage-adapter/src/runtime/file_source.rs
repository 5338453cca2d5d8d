//! A WAL source reading a primary database file (read-only): what
//! `Replica::start_from_file` and the CLI use for a local primary.

use crate::primary::{PrimaryError, PrimaryWalReader};
use crate::WalReadError;
use replication::runtime::FailureCode;
use replication::runtime::{Failure, Fetched, StopSignal, WalSource};
use replication::wal::{CommitId, Generation, Segment};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A WAL source reading a primary database file, read-only, each fetch in
/// its own read transaction. New WAL is noticed by polling `PRAGMA
/// data_version` (it changes when another connection commits) every
/// `poll_interval`, waiting on the stop signal in between: the wait decides
/// only when to look again.
pub struct FileSource {
    path: PathBuf,
    reader: PrimaryWalReader,
    seen_version: i64,
    /// The primary's schema version when the last fetch began (a schema
    /// change after it is noticed by the wait after a failure).
    seen_schema: i64,
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
            seen_schema: reader.schema_version()?,
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

pub(super) fn source_failure(path: &Path, e: PrimaryError) -> Failure {
    Failure::new(
        FailureCode::Source,
        format!("primary file {}: {e}", path.display()),
    )
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
        self.seen_schema = self
            .reader
            .schema_version()
            .map_err(|e| source_failure(&self.path, e))?;
        let oldest = self
            .reader
            .oldest()
            .map_err(|e| source_failure(&self.path, e))?;
        if from < oldest {
            return Err(Failure::new(FailureCode::WalTruncated,
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
                PrimaryError::Wal(WalReadError::Truncated { oldest_sealed, .. }) => Failure::new(FailureCode::WalTruncated,
                    format!(
                        "primary file {}: commit {from} is no longer in its WAL (oldest retained commit is {oldest_sealed})",
                        self.path.display()
                    ),
                ),
                // A replicated table changed and not replicated again yet
                // (a migration under way): the primary serves again once
                // `aerodb_replicate` runs, so the Receiver waits for it
                // like for a source that does not answer.
                e @ PrimaryError::Capture(crate::capture::CaptureError::CaptureBroken { .. }) => {
                    Failure::new(
                        FailureCode::SourceUnavailable,
                        format!("primary file {}: {e}", self.path.display()),
                    )
                }
                e => source_failure(&self.path, e),
            })?;
        if from.0 > head.0 + 1 {
            return Err(Failure::new(FailureCode::SourceBehind,
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
            Failure::new(
                FailureCode::Source,
                format!("encoding segment {first}..={last}: {e}"),
            )
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
                    FailureCode::Source,
                    format!("snapshot of primary file {}: {e}", self.path.display()),
                )
            })
    }

    /// After a SOURCE_UNAVAILABLE (a replicated table not replicated again
    /// yet): the next schema change on the primary (its `aerodb_replicate`,
    /// say) is worth another fetch, not every commit of other tables; the
    /// resume is a recorded transition.
    fn wait_until_available(&mut self, stop: &StopSignal) -> Result<bool, Failure> {
        loop {
            let now = self
                .reader
                .schema_version()
                .map_err(|e| source_failure(&self.path, e))?;
            if now != self.seen_schema {
                return Ok(true);
            }
            if stop.wait(self.poll_interval) {
                return Ok(false);
            }
        }
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
