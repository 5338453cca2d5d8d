//! WAL Receiver (spec 5.2): WAL ingress only.
//!
//! A sans-IO core (STYLE 2). Its runner asks the WAL source for the segment
//! starting at [`Receiver::next`], hands what arrives to
//! [`Receiver::handle`], performs the `Persist` it asks for (raw bytes into
//! the state store, segment state Received) and reports back; only then is
//! the segment forwarded to the Validator. Rules: R1 (receives, enforces
//! ordering, persists raw bytes), R2 (never validates: it trusts nothing in
//! the bytes and reads no header; never applies, never advances the
//! CommitId, never skips: an out-of-order delivery stops it), F1 (a source
//! failure stops replication, explicitly, with its reason).

use crate::wal::CommitId;

/// The Receiver's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverState {
    /// Asking for the segment that starts at `next`.
    Receiving {
        /// First CommitId of the next segment to receive.
        next: CommitId,
    },
    /// Waiting for the runner to persist this segment's bytes.
    Persisting {
        /// The segment's range as the source delivered it.
        first: CommitId,
        /// Last CommitId.
        last: CommitId,
    },
    /// Stopped by a failure; replication is stopped (F1).
    Failed {
        /// Why.
        reason: String,
    },
}

/// What the Receiver is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverInput {
    /// The source delivered a segment it says covers `first..=last`.
    Delivered {
        /// First CommitId, as the source says.
        first: CommitId,
        /// Last CommitId, as the source says.
        last: CommitId,
        /// The raw bytes.
        bytes: Vec<u8>,
    },
    /// The source cannot serve WAL from the expected commit any more (it
    /// was truncated) and delivered a snapshot of its tables at `last`
    /// instead; it stands for commits `first..=last`.
    SnapshotDelivered {
        /// The first commit it replaces (the one expected next).
        first: CommitId,
        /// The commit the snapshot is at.
        last: CommitId,
    },
    /// The runner persisted the segment (or snapshot) in flight.
    Persisted,
    /// The source or the persistence failed.
    Failed {
        /// Why.
        reason: String,
    },
}

/// What the Receiver asks for or passes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverOutput {
    /// Runner: store these raw bytes as segment `first..=last`, Received.
    Persist {
        /// First CommitId.
        first: CommitId,
        /// Last CommitId.
        last: CommitId,
        /// The raw bytes.
        bytes: Vec<u8>,
    },
    /// Runner: keep the downloaded snapshot file as the item covering
    /// `first..=last`, Received.
    PersistSnapshot {
        /// First CommitId it stands for.
        first: CommitId,
        /// The commit it is at.
        last: CommitId,
    },
    /// Validator: a persisted segment (or snapshot), in order.
    Forward {
        /// First CommitId.
        first: CommitId,
        /// Last CommitId.
        last: CommitId,
    },
    /// Supervisor: replication stopped.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// The Receiver core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receiver {
    state: ReceiverState,
}

impl Receiver {
    /// Starts receiving after the last segment already persisted (or
    /// applied).
    pub fn new(after: CommitId) -> Receiver {
        Receiver {
            state: ReceiverState::Receiving { next: after.next() },
        }
    }

    /// The current state.
    pub fn state(&self) -> &ReceiverState {
        &self.state
    }

    /// The first CommitId to ask the source for, while receiving.
    pub fn next(&self) -> Option<CommitId> {
        match self.state {
            ReceiverState::Receiving { next } => Some(next),
            _ => None,
        }
    }

    fn fail(&mut self, reason: String) -> Vec<ReceiverOutput> {
        tracing::error!(%reason, "WAL receiver stopped");
        self.state = ReceiverState::Failed {
            reason: reason.clone(),
        };
        vec![ReceiverOutput::Stopped { reason }]
    }

    /// Handles one input.
    pub fn handle(&mut self, input: ReceiverInput) -> Vec<ReceiverOutput> {
        match (&self.state, input) {
            (ReceiverState::Failed { .. }, _) => Vec::new(),
            (_, ReceiverInput::Failed { reason }) => self.fail(reason),
            (
                ReceiverState::Receiving { next },
                ReceiverInput::Delivered { first, last, bytes },
            ) => {
                if first != *next || last < first {
                    let next = *next;
                    return self.fail(format!(
                        "source delivered segment {first}..={last} out of order: expected a segment starting at commit {next}"
                    ));
                }
                self.state = ReceiverState::Persisting { first, last };
                vec![ReceiverOutput::Persist { first, last, bytes }]
            }
            (
                ReceiverState::Receiving { next },
                ReceiverInput::SnapshotDelivered { first, last },
            ) => {
                if first != *next || last < first {
                    let next = *next;
                    return self.fail(format!(
                        "source delivered a snapshot standing for commits {first}..={last}; expected one starting at commit {next}"
                    ));
                }
                self.state = ReceiverState::Persisting { first, last };
                vec![ReceiverOutput::PersistSnapshot { first, last }]
            }
            (
                ReceiverState::Persisting { first, last },
                ReceiverInput::SnapshotDelivered { .. },
            ) => {
                let (first, last) = (*first, *last);
                self.fail(format!(
                    "source delivered a snapshot while segment {first}..={last} was being persisted"
                ))
            }
            (ReceiverState::Persisting { first, last }, ReceiverInput::Persisted) => {
                let (first, last) = (*first, *last);
                self.state = ReceiverState::Receiving { next: last.next() };
                vec![ReceiverOutput::Forward { first, last }]
            }
            (ReceiverState::Persisting { first, last }, ReceiverInput::Delivered { .. }) => {
                let (first, last) = (*first, *last);
                self.fail(format!(
                    "source delivered a segment while segment {first}..={last} was being persisted"
                ))
            }
            (ReceiverState::Receiving { next }, ReceiverInput::Persisted) => {
                let next = *next;
                self.fail(format!(
                    "persistence reported a segment the receiver did not send (expecting commit {next})"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(first: u64, last: u64) -> ReceiverInput {
        ReceiverInput::Delivered {
            first: CommitId(first),
            last: CommitId(last),
            bytes: vec![first as u8],
        }
    }

    #[test]
    fn persists_before_forwarding_and_advances_in_order() {
        // R1: persist raw bytes, then pass on, in order.
        let mut r = Receiver::new(CommitId(0));
        assert_eq!(r.next(), Some(CommitId(1)));
        assert_eq!(
            r.handle(delivered(1, 3)),
            vec![ReceiverOutput::Persist {
                first: CommitId(1),
                last: CommitId(3),
                bytes: vec![1]
            }]
        );
        assert_eq!(r.next(), None, "nothing asked while persisting");
        assert_eq!(
            r.handle(ReceiverInput::Persisted),
            vec![ReceiverOutput::Forward {
                first: CommitId(1),
                last: CommitId(3)
            }]
        );
        assert_eq!(r.next(), Some(CommitId(4)));
    }

    #[test]
    fn out_of_order_delivery_stops_instead_of_skipping() {
        // R2 (never skips) + F1 (stops, with the reason).
        let mut r = Receiver::new(CommitId(3));
        let out = r.handle(delivered(6, 7));
        assert_eq!(
            out,
            vec![ReceiverOutput::Stopped {
                reason: "source delivered segment 6..=7 out of order: expected a segment starting at commit 4".into()
            }]
        );
        assert!(matches!(r.state(), ReceiverState::Failed { .. }));
        assert_eq!(r.handle(delivered(4, 4)), vec![], "stopped stays stopped");
    }

    #[test]
    fn source_failure_stops_replication_explicitly() {
        let mut r = Receiver::new(CommitId(0));
        let out = r.handle(ReceiverInput::Failed {
            reason: "primary file not found".into(),
        });
        assert_eq!(
            out,
            vec![ReceiverOutput::Stopped {
                reason: "primary file not found".into()
            }]
        );
        assert_eq!(r.next(), None);
    }
}
