//! The stable code of every failure and rejection (rules E1, F6): one
//! vocabulary, typed. SQL, logs and the state store show
//! [`FailureCode::as_str`]; code that decides compares variants, never
//! text.

use std::fmt;

/// Declares [`FailureCode`], its [`ALL`](FailureCode::ALL) list and its
/// text, from one list (a variant and its text are written once).
macro_rules! failure_codes {
    ($($(#[$doc:meta])* $variant:ident => $text:literal,)*) => {
        /// Why a component failed or a segment was refused.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum FailureCode {
            $($(#[$doc])* $variant,)*
        }

        impl FailureCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [FailureCode] = &[$(FailureCode::$variant,)*];

            /// The upper-case code as SQL, logs and the state store show it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(FailureCode::$variant => $text,)*
                }
            }
        }
    };
}

failure_codes! {
    // ---- the WAL source
    /// The source failed (a bad answer, a file that cannot be read).
    Source => "SOURCE",
    /// The source does not answer (transport): replication waits for it
    /// and resumes, recorded (F1).
    SourceUnavailable => "SOURCE_UNAVAILABLE",
    /// The source no longer has the WAL asked for: bootstrap from a
    /// snapshot.
    WalTruncated => "WAL_TRUNCATED",
    /// The source is behind the replica (restored from an older backup).
    SourceBehind => "SOURCE_BEHIND",
    /// The source refused the credentials.
    Unauthorized => "UNAUTHORIZED",
    /// The source serves another primary's history.
    ForeignGeneration => "FOREIGN_GENERATION",
    /// The source delivered segments out of order.
    OutOfOrder => "OUT_OF_ORDER",
    // ---- validation (a segment refused)
    /// Bytes that fail a checksum or a bound.
    Corrupt => "CORRUPT",
    /// A segment shorter than it says.
    Truncated => "TRUNCATED",
    /// Not a WAL segment.
    NotWal => "NOT_WAL",
    /// A WAL format this build does not read.
    UnsupportedVersion => "UNSUPPORTED_VERSION",
    /// A segment stored under another range than its header's.
    Mislabeled => "MISLABELED",
    /// Commits already applied.
    Duplicate => "DUPLICATE",
    /// Commits missing before the segment.
    Gap => "GAP",
    /// The next commit at another WAL offset: the histories differ.
    OffsetMismatch => "OFFSET_MISMATCH",
    /// A chained checksum that does not continue the applied history.
    Fork => "FORK",
    /// A snapshot whose tables do not match its checksum.
    SnapshotChecksum => "SNAPSHOT_CHECKSUM",
    /// A snapshot file that cannot be read.
    SnapshotUnreadable => "SNAPSHOT_UNREADABLE",
    // ---- applying
    /// The replica's rows differ from what the WAL expects.
    Diverged => "DIVERGED",
    /// The replica's disk is full.
    DiskFull => "DISK_FULL",
    /// The replica's storage failed.
    Storage => "STORAGE",
    /// A change could not be applied.
    Apply => "APPLY",
    /// A segment does not continue the stored position.
    Continuity => "CONTINUITY",
    /// A snapshot could not be installed.
    Snapshot => "SNAPSHOT",
    /// The database is not a replica.
    NotReplica => "NOT_REPLICA",
    /// The state store contradicts itself.
    TornState => "TORN_STATE",
    /// The state store is not open.
    StateStore => "STATE_STORE",
    // ---- the runtime itself
    /// A state machine refused a move.
    IllegalTransition => "ILLEGAL_TRANSITION",
    /// A runner thread panicked (a bug).
    Panic => "PANIC",
    /// A thread could not be started.
    Thread => "THREAD",
    /// A component got what its protocol does not allow.
    Protocol => "PROTOCOL",
    /// A component is blocked and takes no more input.
    Blocked => "BLOCKED",
    /// A code recorded by another version of AeroDB that this one does
    /// not know (read back from the state store; its text is kept in the
    /// failure's reason).
    Unrecognized => "UNRECOGNIZED",
}

impl FailureCode {
    /// The code `as_str` shows as `text`, if any.
    pub fn parse(text: &str) -> Option<FailureCode> {
        FailureCode::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == text)
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
        for &c in FailureCode::ALL {
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
