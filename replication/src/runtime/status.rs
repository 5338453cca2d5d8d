//! The components of spec 5, each one's status, and a global transition
//! as recorded (rule M2).

use super::Failure;
use crate::state::{GlobalState, ReadStatus};
use crate::supervisor::{Progress, Transition};
use crate::wal::{ChainPosition, WalOffset};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// A component of spec 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    /// Replica Supervisor (5.1).
    Supervisor,
    /// WAL Receiver (5.2).
    Receiver,
    /// WAL Validator (5.3).
    Validator,
    /// WAL Applier (5.4).
    Applier,
    /// Replica State Store (5.5).
    StateStore,
    /// Read Safety Gate (5.6).
    ReadGate,
}

impl Component {
    /// Every component, in spec order.
    pub const ALL: [Component; 6] = [
        Component::Supervisor,
        Component::Receiver,
        Component::Validator,
        Component::Applier,
        Component::StateStore,
        Component::ReadGate,
    ];

    /// The spec's name, as shown in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Supervisor => "Supervisor",
            Component::Receiver => "WAL Receiver",
            Component::Validator => "WAL Validator",
            Component::Applier => "WAL Applier",
            Component::StateStore => "Replica State Store",
            Component::ReadGate => "Read Safety Gate",
        }
    }

    /// Parses [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub(super) fn index(self) -> usize {
        Component::ALL
            .iter()
            .position(|c| *c == self)
            .expect("listed")
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One component's observable status (rule O1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentStatus {
    /// Which.
    pub component: Component,
    /// Its current state, as its core names it.
    pub state: String,
    /// Why it cannot make progress, if it cannot.
    pub blocking_reason: Option<String>,
    /// Its last successful transition, in a sentence.
    pub last_transition: Option<String>,
    /// Its last error, kept until a later success replaces it.
    pub last_error: Option<Failure>,
}

impl ComponentStatus {
    pub(super) fn new(component: Component, state: &str) -> ComponentStatus {
        ComponentStatus {
            component,
            state: state.into(),
            blocking_reason: None,
            last_transition: None,
            last_error: None,
        }
    }
}

/// A global transition as recorded (rule M2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionRecord {
    /// From (its display form).
    pub from: String,
    /// To.
    pub to: String,
    /// The state's kind and read status, for tables.
    pub to_kind: &'static str,
    /// Read status after it ("read-safe", "read-blocked" or "").
    pub read_status: &'static str,
    /// The blocking code after it (BLOCKED or DIVERGED), if read-blocked.
    pub blocking_code: Option<&'static str>,
    /// The blocking reason after it, if read-blocked.
    pub blocking_reason: Option<String>,
    /// Why.
    pub reason: String,
    /// Received / validated / applied CommitIds at that moment.
    pub progress: Progress,
    /// The applied WAL offset at that moment.
    pub applied_wal_offset: WalOffset,
    /// Wall-clock time, informational only (never compared).
    pub at_unix_ms: i64,
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) fn read_status(
    state: &GlobalState,
) -> (&'static str, Option<&'static str>, Option<String>) {
    match state {
        GlobalState::Ready {
            read: ReadStatus::Safe,
        } => ("read-safe", None, None),
        GlobalState::Ready {
            read: ReadStatus::Blocked(r),
        } => ("read-blocked", Some(r.code()), Some(r.to_string())),
        _ => ("", None, None),
    }
}

impl TransitionRecord {
    /// The record of `t`, made at wall-clock time `at_unix_ms`.
    pub(super) fn at(t: &Transition, applied: ChainPosition, at_unix_ms: i64) -> TransitionRecord {
        let (read, blocking_code, blocking) = read_status(&t.to);
        TransitionRecord {
            from: t.from.to_string(),
            to: t.to.to_string(),
            to_kind: t.to.kind().as_str(),
            read_status: read,
            blocking_code,
            blocking_reason: blocking,
            reason: t.reason.clone(),
            progress: t.progress,
            applied_wal_offset: applied.wal_offset,
            at_unix_ms,
        }
    }
}
