//! The two state machines of spec section 6: the replica's global state
//! (6.1) and a WAL segment's state (6.2), each with its table of legal
//! transitions. An illegal move is a typed error, never a silent change
//! (rules A2, M1, M3).
//!
//! Pure data and pure functions: the Supervisor owns the one global state
//! value (S1) and the components' runners persist and log each move (M2);
//! this module only says which moves exist.

use crate::code::FailureCode;
use crate::wal::{CommitId, WalOffset};
use std::fmt;

/// Why reads are refused while the replica is otherwise up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockReason {
    /// A segment failed validation; nothing after it is applied.
    SegmentRejected {
        /// The segment's CommitId range.
        first: CommitId,
        /// Last CommitId of the segment.
        last: CommitId,
        /// WAL offset of its first record.
        wal_offset: WalOffset,
        /// The rejection's code (CORRUPT, GAP, FORK, ...).
        code: FailureCode,
        /// The Validator's explanation.
        reason: String,
    },
    /// The WAL source failed; replication stopped at the applied CommitId.
    ReceiverFailed {
        /// Its failure's code.
        code: FailureCode,
        /// The Receiver's explanation.
        reason: String,
    },
    /// The Validator could not read what it must validate (a stored
    /// segment or snapshot); nothing more is validated until a restart.
    ValidatorFailed {
        /// The Validator's explanation.
        reason: String,
    },
    /// Applying a segment failed again after recovery; replication stopped.
    ApplierFailed {
        /// The segment's first CommitId.
        first: CommitId,
        /// Its last CommitId.
        last: CommitId,
        /// The failure's code.
        code: FailureCode,
        /// The storage error.
        reason: String,
    },
    /// A block reason as the state store recorded it, when the state is
    /// read back from storage by another process or reader.
    Recorded {
        /// Whether the recorded code ([`BlockReason::code`]) is DIVERGED.
        diverged: bool,
        /// The recorded sentence.
        reason: String,
    },
}

impl BlockReason {
    /// A stable code: DIVERGED when the histories differ (fork, foreign
    /// generation, divergent rows), otherwise BLOCKED.
    pub fn code(&self) -> &'static str {
        if self.is_divergence() {
            "DIVERGED"
        } else {
            "BLOCKED"
        }
    }

    /// Whether an operator's resume may lift it: a failure of this
    /// replica's own storage or of its source (a full disk freed, a source
    /// fixed). Never a divergence (the histories differ: re-bootstrap) nor
    /// a rejection of what the source sent (it would be rejected again).
    pub fn is_resumable(&self) -> bool {
        match self {
            BlockReason::ApplierFailed { .. }
            | BlockReason::ValidatorFailed { .. }
            | BlockReason::ReceiverFailed { .. } => !self.is_divergence(),
            BlockReason::SegmentRejected { .. } | BlockReason::Recorded { .. } => false,
        }
    }

    /// Whether the block means the replica's history and the primary's
    /// differ.
    pub fn is_divergence(&self) -> bool {
        match self {
            // Fork, foreign generation, divergent rows, a source behind
            // the replica (restored from an older backup): by code.
            BlockReason::SegmentRejected { code, .. }
            | BlockReason::ApplierFailed { code, .. }
            | BlockReason::ReceiverFailed { code, .. } => code.is_divergence(),
            BlockReason::Recorded { diverged, .. } => *diverged,
            BlockReason::ValidatorFailed { .. } => false,
        }
    }
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockReason::SegmentRejected {
                first,
                last,
                wal_offset,
                reason,
                ..
            } => write!(
                f,
                "segment {first}..={last} at WAL offset {wal_offset} rejected: {reason}"
            ),
            BlockReason::ReceiverFailed { reason, .. } => {
                write!(f, "WAL receiver failed: {reason}")
            }
            BlockReason::ValidatorFailed { reason } => write!(f, "WAL validator failed: {reason}"),
            BlockReason::ApplierFailed {
                first,
                last,
                reason,
                ..
            } => write!(
                f,
                "applying segment {first}..={last} failed again after recovery: {reason}"
            ),
            BlockReason::Recorded { reason, .. } => write!(f, "{reason}"),
        }
    }
}

/// Whether reads of the applied prefix are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Reads are served (the read gate still checks each request's minimum
    /// CommitId).
    Safe,
    /// Replication is blocked; reads are refused with this reason.
    Blocked(BlockReason),
}

/// The replica's global state (spec 6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GlobalState {
    /// Not running.
    Disabled,
    /// Starting: opening storage, reading the persisted position.
    Initializing,
    /// Waiting for or receiving WAL.
    ReceivingWal,
    /// Validating received WAL.
    ValidatingWal,
    /// Applying validated WAL.
    ApplyingWal,
    /// Re-validating persisted segments after a restart or an applier
    /// failure.
    Recovering,
    /// Caught up with what the source offers (or blocked), serving reads
    /// according to `read`.
    Ready {
        /// Read status.
        read: ReadStatus,
    },
}

/// The name of a global state, without its data (for tables and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GlobalKind {
    /// [`GlobalState::Disabled`].
    Disabled,
    /// [`GlobalState::Initializing`].
    Initializing,
    /// [`GlobalState::ReceivingWal`].
    ReceivingWal,
    /// [`GlobalState::ValidatingWal`].
    ValidatingWal,
    /// [`GlobalState::ApplyingWal`].
    ApplyingWal,
    /// [`GlobalState::Recovering`].
    Recovering,
    /// [`GlobalState::Ready`].
    Ready,
}

impl GlobalKind {
    /// The name shown in SQL and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            GlobalKind::Disabled => "Disabled",
            GlobalKind::Initializing => "Initializing",
            GlobalKind::ReceivingWal => "ReceivingWAL",
            GlobalKind::ValidatingWal => "ValidatingWAL",
            GlobalKind::ApplyingWal => "ApplyingWAL",
            GlobalKind::Recovering => "Recovering",
            GlobalKind::Ready => "Ready",
        }
    }
}

impl GlobalState {
    /// The state named `name` (as [`GlobalKind::as_str`] writes it), for
    /// the states that carry no data; `Ready` needs its read status.
    pub fn from_plain_name(name: &str) -> Option<GlobalState> {
        [
            GlobalState::Disabled,
            GlobalState::Initializing,
            GlobalState::ReceivingWal,
            GlobalState::ValidatingWal,
            GlobalState::ApplyingWal,
            GlobalState::Recovering,
        ]
        .into_iter()
        .find(|s| s.kind().as_str() == name)
    }

    /// Its kind.
    pub fn kind(&self) -> GlobalKind {
        match self {
            GlobalState::Disabled => GlobalKind::Disabled,
            GlobalState::Initializing => GlobalKind::Initializing,
            GlobalState::ReceivingWal => GlobalKind::ReceivingWal,
            GlobalState::ValidatingWal => GlobalKind::ValidatingWal,
            GlobalState::ApplyingWal => GlobalKind::ApplyingWal,
            GlobalState::Recovering => GlobalKind::Recovering,
            GlobalState::Ready { .. } => GlobalKind::Ready,
        }
    }
}

impl fmt::Display for GlobalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GlobalState::Ready {
                read: ReadStatus::Safe,
            } => write!(f, "Ready (read-safe)"),
            GlobalState::Ready {
                read: ReadStatus::Blocked(r),
            } => write!(f, "Ready (read-blocked: {r})"),
            other => write!(f, "{}", other.kind().as_str()),
        }
    }
}

/// The legal global moves. Spec 6.1 draws the order a replica first goes
/// through; once running, Receiver, Validator and Applier work concurrently
/// (spec 7), so the state names the furthest-behind stage with work
/// (ApplyingWAL, then ValidatingWAL, then ReceivingWAL) and moves among
/// them and Ready as work arrives. Only Disabled starts; every state may
/// go to Disabled (stop, or a Supervisor failure making the replica
/// unavailable, rule F4).
pub const GLOBAL_TRANSITIONS: &[(GlobalKind, GlobalKind)] = {
    use GlobalKind::*;
    &[
        (Disabled, Initializing),
        (Initializing, Recovering),
        (Initializing, ReceivingWal),
        (Recovering, ReceivingWal),
        (Recovering, ValidatingWal),
        (Recovering, ApplyingWal),
        (Recovering, Ready),
        (ReceivingWal, ValidatingWal),
        (ReceivingWal, Ready),
        (ValidatingWal, ApplyingWal),
        (ValidatingWal, ReceivingWal),
        (ValidatingWal, Ready),
        (ApplyingWal, ReceivingWal),
        (ApplyingWal, ValidatingWal),
        (ApplyingWal, Ready),
        (ApplyingWal, Recovering),
        (ReceivingWal, ApplyingWal),
        // A hold's release restarts the pipeline from any running state
        // (`SupervisorInput::Released`): recovery re-validates what is
        // stored, as after a restart.
        (ReceivingWal, Recovering),
        (ValidatingWal, Recovering),
        (Ready, ReceivingWal),
        (Ready, ValidatingWal),
        (Ready, ApplyingWal),
        (Ready, Recovering),
        (Ready, Ready),
        (Initializing, Disabled),
        (ReceivingWal, Disabled),
        (ValidatingWal, Disabled),
        (ApplyingWal, Disabled),
        (Recovering, Disabled),
        (Ready, Disabled),
    ]
};

/// A move a state machine does not allow (typed: the states themselves,
/// not their names).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IllegalTransition {
    /// A global move [`GLOBAL_TRANSITIONS`] does not list.
    #[error("illegal global transition {from} -> {to}")]
    Global {
        /// From.
        from: GlobalState,
        /// To.
        to: GlobalState,
    },
    /// A segment move [`check_segment`] refuses.
    #[error("illegal segment transition {} -> {}", from.as_str(), to.as_str())]
    Segment {
        /// From.
        from: SegmentState,
        /// To.
        to: SegmentState,
    },
    /// A recovery rollback to Received of a segment that is not Validated.
    #[error("illegal segment (recovery) transition {} -> Received", from.as_str())]
    SegmentRecovery {
        /// From.
        from: SegmentState,
    },
    /// An input the global state does not take.
    #[error("illegal global transition from {state}: {input}")]
    NotInState {
        /// The state.
        state: GlobalState,
        /// What was asked, in a few words.
        input: &'static str,
    },
}

/// Checks a global move against [`GLOBAL_TRANSITIONS`].
pub fn check_global(from: &GlobalState, to: &GlobalState) -> Result<(), IllegalTransition> {
    if GLOBAL_TRANSITIONS.contains(&(from.kind(), to.kind())) && from != to {
        Ok(())
    } else {
        Err(IllegalTransition::Global {
            from: from.clone(),
            to: to.clone(),
        })
    }
}

/// A WAL segment's state (spec 6.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentState {
    /// Raw bytes persisted by the Receiver.
    Received,
    /// Proven by the Validator to continue the applied history.
    Validated,
    /// Applied by the Applier in one transaction with the position.
    Applied,
    /// Refused by the Validator; never applied.
    Rejected {
        /// The explanation.
        reason: String,
    },
}

impl SegmentState {
    /// The name shown in SQL and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            SegmentState::Received => "Received",
            SegmentState::Validated => "Validated",
            SegmentState::Applied => "Applied",
            SegmentState::Rejected { .. } => "Rejected",
        }
    }

    /// The state a stored name stands for (`reason` is a Rejected
    /// segment's); `None` for a name no state has.
    pub fn from_stored(name: &str, reason: Option<&str>) -> Option<SegmentState> {
        Some(match name {
            "Received" => SegmentState::Received,
            "Validated" => SegmentState::Validated,
            "Applied" => SegmentState::Applied,
            "Rejected" => SegmentState::Rejected {
                reason: reason.unwrap_or_default().to_owned(),
            },
            _ => return None,
        })
    }
}

/// Checks a segment move: Received -> Validated -> Applied, or Received ->
/// Rejected; no skipping, nothing back. (A Validated segment a crash left
/// unapplied goes back to Received only through crash recovery:
/// [`check_segment_recovery`].)
pub fn check_segment(from: &SegmentState, to: &SegmentState) -> Result<(), IllegalTransition> {
    use SegmentState::*;
    match (from, to) {
        (Received, Validated) | (Validated, Applied) | (Received, Rejected { .. }) => Ok(()),
        _ => Err(IllegalTransition::Segment {
            from: from.clone(),
            to: to.clone(),
        }),
    }
}

/// The one rollback spec 6.2 allows: after a restart, a Validated (not
/// Applied) segment is validated again.
pub fn check_segment_recovery(from: &SegmentState) -> Result<(), IllegalTransition> {
    match from {
        SegmentState::Validated => Ok(()),
        other => Err(IllegalTransition::SegmentRecovery {
            from: other.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn ready() -> GlobalState {
        GlobalState::Ready {
            read: ReadStatus::Safe,
        }
    }

    fn blocked() -> GlobalState {
        GlobalState::Ready {
            read: ReadStatus::Blocked(BlockReason::ReceiverFailed {
                code: FailureCode::SourceUnavailable,
                reason: "source gone".into(),
            }),
        }
    }

    // M1, M3: the legal moves.
    #[rstest]
    #[case(GlobalState::Disabled, GlobalState::Initializing)]
    #[case(GlobalState::Initializing, GlobalState::Recovering)]
    #[case(GlobalState::Recovering, GlobalState::ReceivingWal)]
    #[case(GlobalState::ReceivingWal, GlobalState::ValidatingWal)]
    #[case(GlobalState::ValidatingWal, GlobalState::ApplyingWal)]
    #[case(GlobalState::ApplyingWal, ready())]
    #[case(GlobalState::ApplyingWal, GlobalState::Recovering)]
    #[case(ready(), blocked())]
    #[case(blocked(), GlobalState::Disabled)]
    fn allows_legal_global_moves(#[case] from: GlobalState, #[case] to: GlobalState) {
        check_global(&from, &to).expect("legal");
    }

    #[rstest]
    #[case(GlobalState::Disabled, GlobalState::ApplyingWal)]
    #[case(GlobalState::Disabled, ready())]
    #[case(GlobalState::Initializing, GlobalState::ApplyingWal)]
    #[case(GlobalState::Recovering, GlobalState::Initializing)]
    #[case(ready(), ready())]
    #[case(GlobalState::Disabled, GlobalState::Disabled)]
    fn refuses_illegal_global_moves(#[case] from: GlobalState, #[case] to: GlobalState) {
        let err = check_global(&from, &to).expect_err("illegal");
        assert_eq!(err, IllegalTransition::Global { from, to });
    }

    #[test]
    fn every_state_can_stop_and_only_disabled_starts() {
        use GlobalKind::*;
        for k in [
            Initializing,
            ReceivingWal,
            ValidatingWal,
            ApplyingWal,
            Recovering,
            Ready,
        ] {
            assert!(GLOBAL_TRANSITIONS.contains(&(k, Disabled)), "{k:?}");
            assert!(!GLOBAL_TRANSITIONS.contains(&(k, Initializing)), "{k:?}");
        }
    }

    #[test]
    fn segment_moves_only_forward() {
        use SegmentState::*;
        let rejected = Rejected {
            reason: "gap".into(),
        };
        check_segment(&Received, &Validated).expect("legal");
        check_segment(&Validated, &Applied).expect("legal");
        check_segment(&Received, &rejected).expect("legal");
        for (from, to) in [
            (Received, Applied),
            (Applied, Validated),
            (Applied, Received),
            (Validated, rejected.clone()),
            (rejected.clone(), Validated),
            (Validated, Validated),
        ] {
            assert!(check_segment(&from, &to).is_err(), "{from:?} -> {to:?}");
        }
        check_segment_recovery(&Validated).expect("recovery re-validates");
        assert!(check_segment_recovery(&Applied).is_err());
        assert!(check_segment_recovery(&rejected).is_err());
    }

    #[test]
    fn states_explain_themselves() {
        assert_eq!(ready().to_string(), "Ready (read-safe)");
        assert_eq!(
            blocked().to_string(),
            "Ready (read-blocked: WAL receiver failed: source gone)"
        );
        let rejected = BlockReason::SegmentRejected {
            first: CommitId(5),
            last: CommitId(9),
            wal_offset: WalOffset(640),
            code: FailureCode::Gap,
            reason: "gap".into(),
        };
        assert_eq!(
            rejected.to_string(),
            "segment 5..=9 at WAL offset 640 rejected: gap"
        );
    }
}
