//! WAL Applier (spec 5.4): the only component that mutates replica
//! storage, one validated segment at a time.
//!
//! A sans-IO core (STYLE 2): [`Applier::handle`] decides, its runner does
//! the storage write it asks for (`ApplyToStorage`, one SQLite transaction
//! holding the row changes and the new position) and reports the outcome
//! back. Rules: W1 (applies validated WAL, advances the CommitId), W2
//! (single-threaded: one segment in flight; deterministic), W3 (takes only
//! [`ValidatedSegment`]s, and only the one that continues what it applied:
//! nothing speculative), F3 (a storage failure is reported for recovery,
//! never retried here: X4).

use crate::wal::{ChainPosition, CommitId, ValidatedSegment};

/// The Applier's state.
#[derive(Clone, Debug, PartialEq)]
pub enum ApplierState {
    /// Waiting for the segment that continues `applied`.
    Idle {
        /// Committed position.
        applied: ChainPosition,
    },
    /// Holding validated segments that end inside one transaction: nothing
    /// of it is applied until the segment that ends it is validated; then
    /// all of them are applied in one storage transaction, so the replica's
    /// position never stops inside a transaction. Only their ranges and
    /// positions are kept: the runner reads their stored bytes again when
    /// it applies them (bounded memory, whatever the transaction's size).
    Holding {
        /// Committed position (where the transaction starts).
        applied: ChainPosition,
        /// The held segments, in order.
        held: Vec<HeldSegment>,
    },
    /// The runner is writing this segment (it holds the segment; the core
    /// keeps its range and end, so nothing is copied).
    Applying {
        /// Position before it.
        applied: ChainPosition,
        /// First and last CommitId of the segment in flight.
        range: (CommitId, CommitId),
        /// Where it ends.
        end: ChainPosition,
    },
    /// Storage failed; the Supervisor must recover.
    Failed {
        /// Position still committed.
        applied: ChainPosition,
        /// First and last CommitId of the segment that failed.
        range: (CommitId, CommitId),
        /// The storage error.
        reason: String,
    },
}

/// A validated segment the Applier holds until its transaction ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldSegment {
    /// First and last CommitId.
    pub range: (CommitId, CommitId),
    /// The position it was validated against.
    pub start: ChainPosition,
    /// Where it ends (inside the transaction).
    pub end: ChainPosition,
}

/// What the Applier is given.
#[derive(Clone, Debug, PartialEq)]
pub enum ApplierInput {
    /// A segment from the Validator's queue.
    Validated(ValidatedSegment),
    /// A validated snapshot from the Validator's queue, standing for
    /// commits `first..=last`.
    ValidatedSnapshot {
        /// First CommitId it stands for.
        first: CommitId,
        /// The commit it is at.
        last: CommitId,
        /// The position it was validated against.
        start: ChainPosition,
        /// Where it ends.
        end: ChainPosition,
    },
    /// The runner committed the segment in flight; storage now holds `end`.
    StorageCommitted {
        /// The position the storage transaction committed.
        end: ChainPosition,
    },
    /// The runner's storage transaction failed (nothing was committed).
    StorageFailed {
        /// The error.
        reason: String,
    },
}

/// What the Applier asks for or reports.
#[derive(Clone, Debug, PartialEq)]
pub enum ApplierOutput {
    /// Runner: apply this segment in one storage transaction.
    ApplyToStorage(ValidatedSegment),
    /// Runner: nothing to write yet; the segment ends inside a transaction
    /// and is held (its stored bytes are read again with the rest).
    Held(HeldSegment),
    /// Runner: apply the held segments (their stored bytes, each checked
    /// to be the one validated) and then `last`, which ends their
    /// transaction, in one storage transaction.
    ApplyHeldToStorage {
        /// The held segments, in order.
        held: Vec<HeldSegment>,
        /// The segment that ends the transaction.
        last: ValidatedSegment,
    },
    /// Runner: install the snapshot standing for `first..=last` in one
    /// storage transaction (tables, position, bootstrap metadata).
    InstallSnapshot {
        /// First CommitId it stands for.
        first: CommitId,
        /// The commit it is at.
        last: CommitId,
        /// Where it ends.
        end: ChainPosition,
    },
    /// Supervisor: the replica now holds everything up to `end`.
    Applied {
        /// New applied position.
        end: ChainPosition,
    },
    /// Supervisor: applying failed; recover (F3).
    Failed {
        /// The failing segment's CommitIds.
        range: (CommitId, CommitId),
        /// The storage error.
        reason: String,
    },
}

/// An input the Applier may not act on in its state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplierError {
    /// A segment that does not start at the applied position (it was
    /// validated against another one): never applied speculatively.
    #[error("applier refuses segment {}..={}: it starts after commit {validated_after}, the replica applied commit {applied}", range.0, range.1)]
    NotNext {
        /// The segment.
        range: (CommitId, CommitId),
        /// Where it was validated to start.
        validated_after: CommitId,
        /// Where the Applier stands.
        applied: CommitId,
    },
    /// A second segment while one is in flight (the runner must queue).
    #[error("applier is applying segment {}..={}; segment {}..={} must wait in the queue", busy.0, busy.1, offered.0, offered.1)]
    Busy {
        /// In flight.
        busy: (CommitId, CommitId),
        /// Offered.
        offered: (CommitId, CommitId),
    },
    /// A storage report with no segment in flight, or one that does not
    /// match it.
    #[error("applier got a storage report it did not ask for ({detail})")]
    UnexpectedReport {
        /// What was unexpected.
        detail: String,
    },
    /// Failed: only recovery (a new Applier from the committed position)
    /// continues.
    #[error("applier failed on segment {}..={} ({reason}); it applies nothing until recovery", range.0, range.1)]
    Failed {
        /// The failing segment.
        range: (CommitId, CommitId),
        /// Why.
        reason: String,
    },
}

/// The Applier core.
#[derive(Clone, Debug, PartialEq)]
pub struct Applier {
    state: ApplierState,
}

fn range(s: &ValidatedSegment) -> (CommitId, CommitId) {
    s.segment().header.range()
}

fn held_segment(s: &ValidatedSegment) -> HeldSegment {
    HeldSegment {
        range: range(s),
        start: s.start(),
        end: s.end(),
    }
}

impl Applier {
    /// Starts from the position storage has committed.
    pub fn new(applied: ChainPosition) -> Applier {
        Applier {
            state: ApplierState::Idle { applied },
        }
    }

    /// The current state (an immutable snapshot for observers).
    pub fn state(&self) -> &ApplierState {
        &self.state
    }

    /// Handles one input.
    pub fn handle(&mut self, input: ApplierInput) -> Result<ApplierOutput, ApplierError> {
        match (&self.state, input) {
            (ApplierState::Failed { range, reason, .. }, _) => Err(ApplierError::Failed {
                range: *range,
                reason: reason.clone(),
            }),
            (ApplierState::Idle { applied }, ApplierInput::Validated(segment)) => {
                if segment.start() != *applied {
                    return Err(ApplierError::NotNext {
                        range: range(&segment),
                        validated_after: segment.start().commit_id,
                        applied: applied.commit_id,
                    });
                }
                if segment.ends_inside_transaction() {
                    let held = held_segment(&segment);
                    self.state = ApplierState::Holding {
                        applied: *applied,
                        held: vec![held],
                    };
                    return Ok(ApplierOutput::Held(held));
                }
                self.state = ApplierState::Applying {
                    applied: *applied,
                    range: range(&segment),
                    end: segment.end(),
                };
                Ok(ApplierOutput::ApplyToStorage(segment))
            }
            (ApplierState::Holding { applied, held }, ApplierInput::Validated(segment)) => {
                let expected = held.last().map_or(*applied, |h| h.end);
                if segment.start() != expected {
                    return Err(ApplierError::NotNext {
                        range: range(&segment),
                        validated_after: segment.start().commit_id,
                        applied: expected.commit_id,
                    });
                }
                let (applied, mut held) = (*applied, held.clone());
                if segment.ends_inside_transaction() {
                    let h = held_segment(&segment);
                    held.push(h);
                    self.state = ApplierState::Holding { applied, held };
                    return Ok(ApplierOutput::Held(h));
                }
                let first = held.first().map_or(range(&segment).0, |h| h.range.0);
                self.state = ApplierState::Applying {
                    applied,
                    range: (first, range(&segment).1),
                    end: segment.end(),
                };
                Ok(ApplierOutput::ApplyHeldToStorage {
                    held,
                    last: segment,
                })
            }
            (
                ApplierState::Holding { held, .. },
                ApplierInput::ValidatedSnapshot { first, last, .. },
            ) => Err(ApplierError::Busy {
                busy: (
                    held.first().map_or(first, |h| h.range.0),
                    held.last().map_or(last, |h| h.range.1),
                ),
                offered: (first, last),
            }),
            (ApplierState::Holding { .. }, report) => Err(ApplierError::UnexpectedReport {
                detail: format!("{report:?} while holding a transaction's segments"),
            }),
            (
                ApplierState::Idle { applied },
                ApplierInput::ValidatedSnapshot {
                    first,
                    last,
                    start,
                    end,
                },
            ) => {
                if start != *applied {
                    return Err(ApplierError::NotNext {
                        range: (first, last),
                        validated_after: start.commit_id,
                        applied: applied.commit_id,
                    });
                }
                self.state = ApplierState::Applying {
                    applied: *applied,
                    range: (first, last),
                    end,
                };
                Ok(ApplierOutput::InstallSnapshot { first, last, end })
            }
            (
                ApplierState::Applying { range: busy, .. },
                ApplierInput::ValidatedSnapshot { first, last, .. },
            ) => Err(ApplierError::Busy {
                busy: *busy,
                offered: (first, last),
            }),
            (ApplierState::Applying { range: busy, .. }, ApplierInput::Validated(offered)) => {
                Err(ApplierError::Busy {
                    busy: *busy,
                    offered: range(&offered),
                })
            }
            (
                ApplierState::Applying {
                    range: r,
                    end: expected,
                    ..
                },
                ApplierInput::StorageCommitted { end },
            ) => {
                if end != *expected {
                    return Err(ApplierError::UnexpectedReport {
                        detail: format!(
                            "storage committed commit {}, segment {}..={} ends at commit {}",
                            end.commit_id, r.0, r.1, expected.commit_id
                        ),
                    });
                }
                self.state = ApplierState::Idle { applied: end };
                Ok(ApplierOutput::Applied { end })
            }
            (
                ApplierState::Applying {
                    applied, range: r, ..
                },
                ApplierInput::StorageFailed { reason },
            ) => {
                let r = *r;
                tracing::error!(first = r.0 .0, last = r.1 .0, %reason, "apply failed");
                self.state = ApplierState::Failed {
                    applied: *applied,
                    range: r,
                    reason: reason.clone(),
                };
                Ok(ApplierOutput::Failed { range: r, reason })
            }
            (ApplierState::Idle { .. }, report) => Err(ApplierError::UnexpectedReport {
                detail: format!("{report:?} while idle"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{encode_change, validate, Change, Generation, RecordEncoder, Segment, Value};

    const GEN: Generation = Generation(7);

    /// Validated segments 1..=2 and 3..=4 of one history.
    fn two_segments() -> (ValidatedSegment, ValidatedSegment) {
        let mut enc = RecordEncoder::new(ChainPosition::genesis(GEN));
        let recs: Vec<_> = (1..=4)
            .map(|c| {
                let ch = encode_change(&Change::Delete {
                    table: "t".into(),
                    key: vec![Value::Integer(c)],
                })
                .expect("encodes");
                enc.push(CommitId(c as u64), &[&ch]).expect("record")
            })
            .collect();
        let a = Segment::decode(&Segment::encode(GEN, &recs[..2]).expect("enc")).expect("dec");
        let a = validate(a, &ChainPosition::genesis(GEN)).expect("valid");
        let b = Segment::decode(&Segment::encode(GEN, &recs[2..]).expect("enc")).expect("dec");
        let b = validate(b, &a.end()).expect("valid");
        (a, b)
    }

    #[test]
    fn applies_in_order_one_segment_in_flight() {
        // W1, W2: asks storage to apply, advances only on its commit.
        let (a, b) = two_segments();
        let mut ap = Applier::new(ChainPosition::genesis(GEN));
        assert_eq!(
            ap.handle(ApplierInput::Validated(a.clone())),
            Ok(ApplierOutput::ApplyToStorage(a.clone()))
        );
        assert_eq!(
            ap.handle(ApplierInput::Validated(b.clone())),
            Err(ApplierError::Busy {
                busy: (CommitId(1), CommitId(2)),
                offered: (CommitId(3), CommitId(4))
            })
        );
        assert_eq!(
            ap.handle(ApplierInput::StorageCommitted { end: a.end() }),
            Ok(ApplierOutput::Applied { end: a.end() })
        );
        assert_eq!(ap.state(), &ApplierState::Idle { applied: a.end() });
        assert_eq!(
            ap.handle(ApplierInput::Validated(b.clone())),
            Ok(ApplierOutput::ApplyToStorage(b))
        );
    }

    #[test]
    fn refuses_a_segment_that_does_not_continue_the_applied_position() {
        // W3: nothing speculative.
        let (_, b) = two_segments();
        let mut ap = Applier::new(ChainPosition::genesis(GEN));
        let err = ap.handle(ApplierInput::Validated(b)).expect_err("not next");
        assert_eq!(
            err.to_string(),
            "applier refuses segment 3..=4: it starts after commit 2, the replica applied commit 0"
        );
        assert_eq!(
            ap.state(),
            &ApplierState::Idle {
                applied: ChainPosition::genesis(GEN)
            }
        );
    }

    #[test]
    fn storage_failure_is_reported_and_stops_the_applier() {
        // F3 + X4: reported for recovery, never retried here.
        let (a, _) = two_segments();
        let mut ap = Applier::new(ChainPosition::genesis(GEN));
        ap.handle(ApplierInput::Validated(a.clone())).expect("asks");
        assert_eq!(
            ap.handle(ApplierInput::StorageFailed {
                reason: "disk full".into()
            }),
            Ok(ApplierOutput::Failed {
                range: (CommitId(1), CommitId(2)),
                reason: "disk full".into()
            })
        );
        let err = ap.handle(ApplierInput::Validated(a)).expect_err("failed");
        assert!(matches!(err, ApplierError::Failed { .. }), "{err}");
    }

    #[test]
    fn unexpected_storage_reports_are_refused() {
        let (a, b) = two_segments();
        let mut ap = Applier::new(ChainPosition::genesis(GEN));
        assert!(matches!(
            ap.handle(ApplierInput::StorageCommitted { end: a.end() }),
            Err(ApplierError::UnexpectedReport { .. })
        ));
        ap.handle(ApplierInput::Validated(a)).expect("asks");
        assert!(matches!(
            ap.handle(ApplierInput::StorageCommitted { end: b.end() }),
            Err(ApplierError::UnexpectedReport { .. })
        ));
    }

    /// Segments 1..=2 (commit 1 continues into 2), 3..=3 (continues), 4..=4
    /// (ends the transaction 1..=4) of one history.
    fn spanning_segments() -> Vec<ValidatedSegment> {
        let mut enc = RecordEncoder::new(ChainPosition::genesis(GEN));
        let recs: Vec<_> = (1..=4u64)
            .map(|c| {
                let ch = encode_change(&Change::Delete {
                    table: "t".into(),
                    key: vec![Value::Integer(c as i64)],
                })
                .expect("encodes");
                let mut bytes = vec![0; crate::wal::RECORD_HEADER_LEN];
                bytes.extend_from_slice(&(ch.len() as u32).to_le_bytes());
                bytes.extend_from_slice(&ch);
                let seal = enc
                    .seal_part_in_place(CommitId(c), 1, c < 4, &mut bytes)
                    .expect("seals");
                crate::wal::EncodedRecord {
                    commit_id: CommitId(c),
                    wal_offset: seal.wal_offset,
                    prev_chain: seal.prev_chain,
                    chain: seal.chain,
                    crc: seal.crc,
                    change_count: 1,
                    bytes,
                }
            })
            .collect();
        let mut at = ChainPosition::genesis(GEN);
        [&recs[..2], &recs[2..3], &recs[3..]]
            .iter()
            .map(|r| {
                let s = Segment::decode(&Segment::encode(GEN, r).expect("enc")).expect("dec");
                let v = validate(s, &at).expect("valid");
                at = v.end();
                v
            })
            .collect()
    }

    #[test]
    fn holds_segments_inside_a_transaction_and_applies_them_with_the_one_that_ends_it() {
        let segs = spanning_segments();
        let genesis = ChainPosition::genesis(GEN);
        let mut ap = Applier::new(genesis);
        let h1 = match ap.handle(ApplierInput::Validated(segs[0].clone())) {
            Ok(ApplierOutput::Held(h)) => h,
            other => panic!("expected Held, got {other:?}"),
        };
        assert_eq!(h1.range, (CommitId(1), CommitId(2)));
        // Out of order: refused, nothing changes.
        assert!(matches!(
            ap.handle(ApplierInput::Validated(segs[2].clone())),
            Err(ApplierError::NotNext { .. })
        ));
        // A storage report while holding is unexpected.
        assert!(matches!(
            ap.handle(ApplierInput::StorageCommitted { end: segs[0].end() }),
            Err(ApplierError::UnexpectedReport { .. })
        ));
        assert!(matches!(
            ap.handle(ApplierInput::Validated(segs[1].clone())),
            Ok(ApplierOutput::Held(_))
        ));
        match ap.handle(ApplierInput::Validated(segs[2].clone())) {
            Ok(ApplierOutput::ApplyHeldToStorage { held, last }) => {
                assert_eq!(held.len(), 2);
                assert_eq!(held[0].start, genesis);
                assert_eq!(held[1].start, segs[0].end());
                assert_eq!(last, segs[2]);
            }
            other => panic!("expected ApplyHeldToStorage, got {other:?}"),
        }
        // The position never stops inside the transaction: the only
        // committed position reported is its end.
        assert_eq!(
            ap.handle(ApplierInput::StorageCommitted { end: segs[1].end() }),
            Err(ApplierError::UnexpectedReport {
                detail: "storage committed commit 3, segment 1..=4 ends at commit 4".into()
            })
        );
        assert_eq!(
            ap.handle(ApplierInput::StorageCommitted { end: segs[2].end() }),
            Ok(ApplierOutput::Applied { end: segs[2].end() })
        );
        assert_eq!(
            ap.state(),
            &ApplierState::Idle {
                applied: segs[2].end()
            }
        );
    }
}
