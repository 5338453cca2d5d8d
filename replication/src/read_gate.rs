//! Read Safety Gate (spec 5.6): decides whether a read may be served, as a
//! pure function of observable state and the read's request.
//!
//! Owns nothing and mutates nothing (rules G2, K2). The caller passes the
//! state visible in the reader's own SQLite read transaction, so the
//! decision is true of exactly the snapshot the read sees (G1: MVCC). It
//! compares CommitIds only: no clocks, no lag heuristics (G3). The decision
//! is a value with an explanation citing the global state, the applied
//! CommitId and WAL offset (E1, E2).

use crate::state::{BlockReason, GlobalState, ReadStatus};
use crate::wal::{CommitId, WalOffset};
use std::fmt;

/// What the gate looks at: the replica's state as committed in the
/// reader's snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedState {
    /// The global state.
    pub global: GlobalState,
    /// Last applied CommitId in the snapshot.
    pub applied_commit_id: CommitId,
    /// WAL offset after it.
    pub applied_wal_offset: WalOffset,
    /// A block recorded earlier that nothing has lifted since (a stop, a
    /// crash or a restart does not lift it; reaching Ready read-safe
    /// again does): reads stay refused with it, whatever the state now.
    pub recorded_block: Option<BlockReason>,
}

/// A read's requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReadRequest {
    /// The read must see at least this commit (a read-your-writes token
    /// from `aerodb_last_commit_id()` on the primary).
    pub min_commit_id: Option<CommitId>,
}

/// Why the gate decided as it did: a stable code an application can
/// branch on (shown upper-case in SQL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionCode {
    /// The snapshot holds everything the read requires.
    Allowed,
    /// The read requires a commit the snapshot does not hold yet; the
    /// replica is running, so it may get there.
    Behind,
    /// The read requires a commit the snapshot does not hold, and the
    /// replica is not running (Disabled or starting): nothing will bring it.
    NotStarted,
    /// Replication is blocked; reads are refused until it is resolved.
    Blocked,
    /// Replication is blocked because the replica's history and the
    /// primary's differ (fork, foreign primary, divergent rows).
    Diverged,
    /// The replica's state could not be observed: the read is refused
    /// (rule F5: a gate failure refuses reads).
    Unobservable,
}

impl DecisionCode {
    /// The code as shown in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionCode::Allowed => "ALLOWED",
            DecisionCode::Behind => "BEHIND",
            DecisionCode::NotStarted => "NOT_STARTED",
            DecisionCode::Blocked => "BLOCKED",
            DecisionCode::Diverged => "DIVERGED",
            DecisionCode::Unobservable => "UNOBSERVABLE",
        }
    }
}

/// The gate's answer, with its explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The code.
    pub code: DecisionCode,
    /// A sentence citing states, CommitIds and WAL offsets.
    pub explanation: String,
}

impl Decision {
    /// Whether the read may be served.
    pub fn allowed(&self) -> bool {
        self.code == DecisionCode::Allowed
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.explanation)
    }
}

/// The decision when the state could not be read (F5): refused, saying
/// why.
pub fn refuse_unobservable(error: &str) -> Decision {
    Decision {
        code: DecisionCode::Unobservable,
        explanation: format!(
            "read refused: the replica's state could not be read ({error}), so no read can be proven safe"
        ),
    }
}

/// Decides a read against the observed state.
pub fn evaluate(state: &ObservedState, request: &ReadRequest) -> Decision {
    let at = format!(
        "replica in state {} has applied commit {} (WAL offset {})",
        state.global, state.applied_commit_id, state.applied_wal_offset
    );
    if let (Some(reason), false) = (
        &state.recorded_block,
        matches!(state.global, GlobalState::Ready { .. }),
    ) {
        return Decision {
            code: if reason.is_divergence() {
                DecisionCode::Diverged
            } else {
                DecisionCode::Blocked
            },
            explanation: format!(
                "read refused: replication was blocked ({reason}) and nothing has lifted that since (a restart that reaches Ready read-safe does); {at}"
            ),
        };
    }
    if let GlobalState::Ready {
        read: ReadStatus::Blocked(reason),
    } = &state.global
    {
        return Decision {
            code: if reason.is_divergence() {
                DecisionCode::Diverged
            } else {
                DecisionCode::Blocked
            },
            explanation: format!("read refused: replication is blocked ({reason}); {at}"),
        };
    }
    let running = !matches!(
        state.global,
        GlobalState::Disabled | GlobalState::Initializing
    );
    match request.min_commit_id {
        Some(min) if min > state.applied_commit_id && running => Decision {
            code: DecisionCode::Behind,
            explanation: format!("read refused: it needs commit {min}, but the {at}"),
        },
        Some(min) if min > state.applied_commit_id => Decision {
            code: DecisionCode::NotStarted,
            explanation: format!(
                "read refused: it needs commit {min}, but the {at} and is not running"
            ),
        },
        Some(min) => Decision {
            code: DecisionCode::Allowed,
            explanation: format!("read allowed: it needs commit {min}; the {at}"),
        },
        None => Decision {
            code: DecisionCode::Allowed,
            explanation: format!("read allowed: no minimum commit requested; the {at}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn observed(global: GlobalState, applied: u64) -> ObservedState {
        ObservedState {
            global,
            applied_commit_id: CommitId(applied),
            applied_wal_offset: WalOffset(applied * 100),
            recorded_block: None,
        }
    }

    fn ready() -> GlobalState {
        GlobalState::Ready {
            read: ReadStatus::Safe,
        }
    }

    // G1, E2: CommitIds decide; the explanation cites state, commit, offset.
    #[rstest]
    #[case(ready(), 10, None, DecisionCode::Allowed)]
    #[case(ready(), 10, Some(10), DecisionCode::Allowed)]
    #[case(ready(), 10, Some(11), DecisionCode::Behind)]
    #[case(GlobalState::ApplyingWal, 10, Some(3), DecisionCode::Allowed)]
    #[case(GlobalState::Recovering, 10, Some(12), DecisionCode::Behind)]
    #[case(GlobalState::Disabled, 0, Some(1), DecisionCode::NotStarted)]
    #[case(GlobalState::Disabled, 5, Some(5), DecisionCode::Allowed)]
    #[case(GlobalState::Initializing, 5, Some(6), DecisionCode::NotStarted)]
    fn decides_by_commit_id_only(
        #[case] global: GlobalState,
        #[case] applied: u64,
        #[case] min: Option<u64>,
        #[case] code: DecisionCode,
    ) {
        let d = evaluate(
            &observed(global, applied),
            &ReadRequest {
                min_commit_id: min.map(CommitId),
            },
        );
        assert_eq!(d.code, code, "{d}");
        assert!(d.explanation.contains(&format!("commit {applied}")), "{d}");
        assert!(
            d.explanation
                .contains(&format!("WAL offset {}", applied * 100)),
            "{d}"
        );
    }

    #[test]
    fn a_forked_history_is_reported_as_diverged() {
        let global = GlobalState::Ready {
            read: ReadStatus::Blocked(BlockReason::SegmentRejected {
                first: CommitId(8),
                last: CommitId(9),
                wal_offset: WalOffset(800),
                code: crate::code::FailureCode::Fork,
                reason: "chained checksum differs".into(),
            }),
        };
        let d = evaluate(&observed(global, 7), &ReadRequest::default());
        assert_eq!(d.code, DecisionCode::Diverged, "{d}");
        assert_eq!(d.code.as_str(), "DIVERGED");
    }

    #[test]
    fn blocked_replication_refuses_every_read_with_its_reason() {
        // F5 / read-blocked: even a read with no minimum is refused.
        let global = GlobalState::Ready {
            read: ReadStatus::Blocked(BlockReason::ReceiverFailed {
                code: crate::code::FailureCode::Source,
                reason: "primary file missing".into(),
            }),
        };
        let d = evaluate(&observed(global, 7), &ReadRequest::default());
        assert_eq!(d.code, DecisionCode::Blocked);
        assert_eq!(
            d.explanation,
            "read refused: replication is blocked (WAL receiver failed: primary file missing); \
             replica in state Ready (read-blocked: WAL receiver failed: primary file missing) \
             has applied commit 7 (WAL offset 700)"
        );
    }

    #[test]
    fn below_minimum_explains_both_commits() {
        let d = evaluate(
            &observed(ready(), 4),
            &ReadRequest {
                min_commit_id: Some(CommitId(9)),
            },
        );
        assert_eq!(
            d.to_string(),
            "BEHIND: read refused: it needs commit 9, but the replica in state Ready (read-safe) has applied commit 4 (WAL offset 400)"
        );
    }
}
