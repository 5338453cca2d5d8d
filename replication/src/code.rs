//! The stable code of every failure and rejection (rules E1, F6): one
//! vocabulary, typed. SQL, logs and the state store show
//! [`FailureCode::as_str`]; code that decides compares variants, never
//! text.

use std::fmt;

/// Why a component failed or a segment was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureCode {
    // ---- the WAL source
    /// The source failed (a bad answer, a file that cannot be read).
    Source,
    /// The source does not answer (transport): replication waits for it
    /// and resumes, recorded (F1).
    SourceUnavailable,
    /// The source no longer has the WAL asked for: bootstrap from a
    /// snapshot.
    WalTruncated,
    /// The source is behind the replica (restored from an older backup).
    SourceBehind,
    /// The source refused the credentials.
    Unauthorized,
    /// The source serves another primary's history.
    ForeignGeneration,
    /// The source delivered segments out of order.
    OutOfOrder,
    // ---- validation (a segment refused)
    /// Bytes that fail a checksum or a bound.
    Corrupt,
    /// A segment shorter than it says.
    Truncated,
    /// Not a WAL segment.
    NotWal,
    /// A WAL format this build does not read.
    UnsupportedVersion,
    /// A segment stored under another range than its header's.
    Mislabeled,
    /// Commits already applied.
    Duplicate,
    /// Commits missing before the segment.
    Gap,
    /// The next commit at another WAL offset: the histories differ.
    OffsetMismatch,
    /// A chained checksum that does not continue the applied history.
    Fork,
    /// A snapshot whose tables do not match its checksum.
    SnapshotChecksum,
    /// A snapshot file that cannot be read.
    SnapshotUnreadable,
    // ---- applying
    /// The replica's rows differ from what the WAL expects.
    Diverged,
    /// The replica's disk is full.
    DiskFull,
    /// The replica's storage failed.
    Storage,
    /// A change could not be applied.
    Apply,
    /// A segment does not continue the stored position.
    Continuity,
    /// A snapshot could not be installed.
    Snapshot,
    /// The database is not a replica.
    NotReplica,
    /// The state store contradicts itself.
    TornState,
    /// The state store is not open.
    StateStore,
    // ---- the runtime itself
    /// A state machine refused a move.
    IllegalTransition,
    /// A runner thread panicked (a bug).
    Panic,
    /// A thread could not be started.
    Thread,
    /// A component got what its protocol does not allow.
    Protocol,
    /// A component is blocked and takes no more input.
    Blocked,
    /// A code recorded by another version of AeroDB that this one does
    /// not know (read back from the state store; its text is kept in the
    /// failure's reason).
    Unrecognized,
}

impl FailureCode {
    /// Every code, in declaration order.
    pub const ALL: [FailureCode; 33] = {
        use FailureCode::*;
        [
            Source,
            SourceUnavailable,
            WalTruncated,
            SourceBehind,
            Unauthorized,
            ForeignGeneration,
            OutOfOrder,
            Corrupt,
            Truncated,
            NotWal,
            UnsupportedVersion,
            Mislabeled,
            Duplicate,
            Gap,
            OffsetMismatch,
            Fork,
            SnapshotChecksum,
            SnapshotUnreadable,
            Diverged,
            DiskFull,
            Storage,
            Apply,
            Continuity,
            Snapshot,
            NotReplica,
            TornState,
            StateStore,
            IllegalTransition,
            Panic,
            Thread,
            Protocol,
            Blocked,
            Unrecognized,
        ]
    };

    /// The upper-case code as SQL, logs and the state store show it.
    pub fn as_str(self) -> &'static str {
        use FailureCode::*;
        match self {
            Source => "SOURCE",
            SourceUnavailable => "SOURCE_UNAVAILABLE",
            WalTruncated => "WAL_TRUNCATED",
            SourceBehind => "SOURCE_BEHIND",
            Unauthorized => "UNAUTHORIZED",
            ForeignGeneration => "FOREIGN_GENERATION",
            OutOfOrder => "OUT_OF_ORDER",
            Corrupt => "CORRUPT",
            Truncated => "TRUNCATED",
            NotWal => "NOT_WAL",
            UnsupportedVersion => "UNSUPPORTED_VERSION",
            Mislabeled => "MISLABELED",
            Duplicate => "DUPLICATE",
            Gap => "GAP",
            OffsetMismatch => "OFFSET_MISMATCH",
            Fork => "FORK",
            SnapshotChecksum => "SNAPSHOT_CHECKSUM",
            SnapshotUnreadable => "SNAPSHOT_UNREADABLE",
            Diverged => "DIVERGED",
            DiskFull => "DISK_FULL",
            Storage => "STORAGE",
            Apply => "APPLY",
            Continuity => "CONTINUITY",
            Snapshot => "SNAPSHOT",
            NotReplica => "NOT_REPLICA",
            TornState => "TORN_STATE",
            StateStore => "STATE_STORE",
            IllegalTransition => "ILLEGAL_TRANSITION",
            Panic => "PANIC",
            Thread => "THREAD",
            Protocol => "PROTOCOL",
            Blocked => "BLOCKED",
            Unrecognized => "UNRECOGNIZED",
        }
    }

    /// The code `as_str` shows as `text`, if any.
    pub fn parse(text: &str) -> Option<FailureCode> {
        FailureCode::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// Whether the code means the replica's history and the primary's
    /// differ (the gate answers DIVERGED). OFFSET_MISMATCH is one: the
    /// same generation and the same next CommitId at another WAL offset
    /// means the commits before it differ (a primary restored from a
    /// backup and written again); so is a source behind the replica.
    pub fn is_divergence(self) -> bool {
        use FailureCode::*;
        matches!(
            self,
            Fork | ForeignGeneration | Diverged | OffsetMismatch | SourceBehind
        )
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for FailureCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for FailureCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_text_and_the_texts_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for c in FailureCode::ALL {
            assert_eq!(FailureCode::parse(c.as_str()), Some(c));
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_'));
        }
        assert_eq!(FailureCode::parse("NO_SUCH_CODE"), None);
    }
}
