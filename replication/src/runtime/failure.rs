//! A component's failure: a stable code and everything needed to
//! explain it (rule E2).

use crate::code::FailureCode;
use crate::validator::Rejection;
use crate::wal::{CommitId, WalOffset};
use std::fmt;

/// A failure, with everything needed to explain it (rule E2): a stable
/// code, the sentence, and where available the segment, WAL offset and the
/// expected-versus-actual values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The stable code (SQL shows its `as_str()`: SOURCE, STORAGE, CORRUPT, ...).
    pub code: FailureCode,
    /// The explanation.
    pub reason: String,
    /// The segment concerned (first and last CommitId).
    pub segment: Option<(CommitId, CommitId)>,
    /// The WAL offset concerned.
    pub wal_offset: Option<WalOffset>,
    /// The expected value, where a check compared two.
    pub expected: Option<String>,
    /// The actual value.
    pub actual: Option<String>,
}

impl Failure {
    /// A failure with a code and a reason.
    pub fn new(code: FailureCode, reason: impl Into<String>) -> Failure {
        Failure {
            code,
            reason: reason.into(),
            segment: None,
            wal_offset: None,
            expected: None,
            actual: None,
        }
    }

    /// The same failure, naming a segment.
    pub fn at(mut self, first: CommitId, last: CommitId) -> Failure {
        self.segment = Some((first, last));
        self
    }

    pub(super) fn from_rejection(r: &Rejection) -> Failure {
        Failure {
            code: r.code,
            reason: r.reason.clone(),
            segment: Some((r.first, r.last)),
            wal_offset: Some(r.wal_offset),
            expected: r.expected.clone(),
            actual: r.actual.clone(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}
