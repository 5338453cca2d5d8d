//! The published view: the immutable [`View`] the Supervisor
//! publishes after every batch of events it recorded, and the cell
//! observers wait on.

use super::{Component, ComponentStatus, TransitionRecord};
use crate::read_gate::{self, Decision, ObservedState, ReadRequest};
use crate::state::GlobalState;
use crate::supervisor::Progress;
use crate::wal::{ChainPosition, CommitId};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// What observers see: an immutable view the Supervisor publishes after
/// every batch of events it has recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// The global state.
    pub global: GlobalState,
    /// Received / validated / applied CommitIds, kept apart.
    pub progress: Progress,
    /// The applied position (CommitId, WAL offset, chain).
    pub applied: ChainPosition,
    /// Each component's status, in [`Component::ALL`] order.
    pub components: Vec<ComponentStatus>,
    /// The last global transition.
    pub last_transition: Option<TransitionRecord>,
    /// Whether the Supervisor thread still runs (false once stopped or
    /// failed).
    pub running: bool,
    /// The newest head the source advertised in this run (`None` until
    /// something was received): informational, for progress and lag.
    pub source_head: Option<CommitId>,
}

impl View {
    /// One component's status.
    pub fn component(&self, c: Component) -> &ComponentStatus {
        &self.components[c.index()]
    }

    /// The Read Safety Gate's decision over this view (the live one;
    /// SQL readers evaluate the persisted state in their own transaction).
    pub fn explain_read(&self, min_commit_id: Option<CommitId>) -> Decision {
        read_gate::evaluate(
            &ObservedState {
                global: self.global.clone(),
                applied_commit_id: self.applied.commit_id,
                applied_wal_offset: self.applied.wal_offset,
                recorded_block: None,
            },
            &ReadRequest { min_commit_id },
        )
    }
}

/// Published state and the condition observers wait on.
pub(super) struct Published {
    pub(super) view: Mutex<Arc<View>>,
    pub(super) changed: Condvar,
}

impl Published {
    pub(super) fn lock(&self) -> MutexGuard<'_, Arc<View>> {
        // A panic while holding this lock cannot leave a half-written
        // view: it is replaced whole.
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }
}
