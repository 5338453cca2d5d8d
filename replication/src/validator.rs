//! WAL Validator (spec 5.3): the correctness proof of received WAL.
//!
//! A sans-IO core: a state enum, an input, and [`Validator::handle`], which
//! checks the move and returns outputs; no IO, no threads, no clock (STYLE
//! 2). A runner feeds it the Receiver's segments in order and forwards its
//! outputs to the Applier's queue.
//!
//! Rules: V1 (checksums, continuity, boundaries; validated segments or an
//! explicit failure), V2 (deterministic; its only state across runs is the
//! checkpoint it starts from: the replica's applied position), V3 (never
//! mutates storage or advances the CommitId: it only returns values), F2
//! (a rejection blocks application: after it, nothing more is validated
//! until a restart revalidates from the applied position).

use crate::code::FailureCode;
use crate::wal::{
    validate, ChainPosition, CommitId, ContinuityError, DecodeError, Segment, SegmentHeader,
    ValidatedSegment, WalOffset,
};

/// The Validator's state.
#[derive(Clone, Debug, PartialEq)]
pub enum ValidatorState {
    /// Expects the segment that continues `next`.
    Validating {
        /// End of the last segment validated (or the applied position).
        next: ChainPosition,
    },
    /// A segment was rejected; nothing after it is validated.
    Blocked {
        /// The rejection, as sent to the Supervisor.
        rejection: Rejection,
    },
}

/// A rejected segment and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// First CommitId the segment claims (0 if its header is unreadable).
    pub first: CommitId,
    /// Last CommitId it claims.
    pub last: CommitId,
    /// WAL offset of its first record as claimed.
    pub wal_offset: WalOffset,
    /// The stable code an application can branch on (shown as CORRUPT,
    /// TRUNCATED, NOT_WAL, UNSUPPORTED_VERSION, MISLABELED,
    /// FOREIGN_GENERATION, DUPLICATE, GAP, OFFSET_MISMATCH, FORK, ...).
    pub code: FailureCode,
    /// What was expected, where the check compares two values.
    pub expected: Option<String>,
    /// What the segment holds instead.
    pub actual: Option<String>,
    /// The decode or continuity error, explained.
    pub reason: String,
}

fn hex(v: u32) -> Option<String> {
    Some(format!("0x{v:08x}"))
}

fn decode_rejection(e: &DecodeError) -> (FailureCode, Option<String>, Option<String>) {
    match e {
        DecodeError::Truncated {
            needed, available, ..
        } => (
            FailureCode::Truncated,
            Some(format!("{needed} bytes")),
            Some(format!("{available} bytes")),
        ),
        DecodeError::BadMagic { expected, actual } => (
            FailureCode::NotWal,
            Some(format!("{expected:02x?}")),
            Some(format!("{actual:02x?}")),
        ),
        DecodeError::UnsupportedVersion { expected, actual } => (
            FailureCode::UnsupportedVersion,
            Some(expected.to_string()),
            Some(actual.to_string()),
        ),
        DecodeError::HeaderChecksum { expected, actual }
        | DecodeError::SegmentChecksum {
            expected, actual, ..
        } => (FailureCode::Corrupt, hex(*expected), hex(*actual)),
        DecodeError::BadHeader { actual, rule, .. } => (
            FailureCode::Corrupt,
            Some(rule.clone()),
            Some(actual.to_string()),
        ),
        DecodeError::TrailingBytes { extra, .. } => (
            FailureCode::Corrupt,
            Some("0 bytes after the end".into()),
            Some(format!("{extra} bytes")),
        ),
        _ => (FailureCode::Corrupt, None, None),
    }
}

fn continuity_rejection(e: &ContinuityError) -> (FailureCode, Option<String>, Option<String>) {
    match e {
        ContinuityError::ForeignGeneration {
            expected, actual, ..
        } => (
            FailureCode::ForeignGeneration,
            Some(expected.to_string()),
            Some(actual.to_string()),
        ),
        ContinuityError::AlreadyApplied { applied, range } => (
            FailureCode::Duplicate,
            Some(format!("commit {}", applied.next())),
            Some(format!("commit {}", range.0)),
        ),
        ContinuityError::Gap { applied, range } => (
            FailureCode::Gap,
            Some(format!("commit {}", applied.next())),
            Some(format!("commit {}", range.0)),
        ),
        ContinuityError::OffsetMismatch {
            expected, actual, ..
        } => (
            FailureCode::OffsetMismatch,
            Some(format!("WAL offset {expected}")),
            Some(format!("WAL offset {actual}")),
        ),
        ContinuityError::ChainMismatch {
            expected, actual, ..
        } => (FailureCode::Fork, hex(*expected), hex(*actual)),
    }
}

/// What the Validator is given.
#[derive(Clone, Debug, PartialEq)]
pub enum ValidatorInput {
    /// Raw bytes the Receiver persisted, in receive order.
    Received {
        /// The segment's bytes.
        bytes: Vec<u8>,
    },
    /// A snapshot the Receiver persisted as the item covering
    /// `first..=last`, with what it records and the checksum recomputed
    /// over its tables (by the runner, read-only).
    Snapshot {
        /// First CommitId it stands for, as stored.
        first: CommitId,
        /// Last CommitId (the snapshot's), as stored.
        last: CommitId,
        /// The position the snapshot records.
        recorded: ChainPosition,
        /// The checksum it records.
        recorded_checksum: u32,
        /// The checksum of its tables, recomputed.
        computed_checksum: u32,
    },
    /// Raw bytes the Receiver persisted as segment `first..=last` (the
    /// range the source announced): a header claiming another range is
    /// rejected, so the stored row and its bytes always agree.
    Persisted {
        /// First CommitId, as stored.
        first: CommitId,
        /// Last CommitId, as stored.
        last: CommitId,
        /// The segment's bytes.
        bytes: Vec<u8>,
    },
}

/// What the Validator answers.
#[derive(Clone, Debug, PartialEq)]
pub enum ValidatorOutput {
    /// The segment continues the history: hand it to the Applier.
    Validated(ValidatedSegment),
    /// The segment is refused; application is blocked.
    Rejected(Rejection),
    /// The snapshot continues the checkpoint: hand it to the Applier.
    SnapshotValidated {
        /// First CommitId it stands for.
        first: CommitId,
        /// The commit it is at.
        last: CommitId,
        /// Where it was validated to start (the checkpoint).
        start: ChainPosition,
        /// Where it ends.
        end: ChainPosition,
    },
}

/// An input the Validator may not act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("validator is blocked by the rejection of segment {}..={} ({}); it validates nothing more", rejection.first, rejection.last, rejection.reason)]
pub struct ValidatorBlocked {
    /// The rejection that blocks it.
    pub rejection: Rejection,
}

/// The Validator core.
#[derive(Clone, Debug, PartialEq)]
pub struct Validator {
    state: ValidatorState,
}

impl Validator {
    /// Starts from a checkpoint: the replica's applied position (restart
    /// safe: a restart re-validates everything after it).
    pub fn new(applied: ChainPosition) -> Validator {
        Validator {
            state: ValidatorState::Validating { next: applied },
        }
    }

    /// The current state (an immutable snapshot for observers).
    pub fn state(&self) -> &ValidatorState {
        &self.state
    }

    fn snapshot(
        &mut self,
        next: ChainPosition,
        (first, last): (CommitId, CommitId),
        recorded: ChainPosition,
        recorded_checksum: u32,
        computed_checksum: u32,
    ) -> ValidatorOutput {
        let problem = if recorded.generation != next.generation {
            Some((
                FailureCode::ForeignGeneration,
                next.generation.to_string(),
                recorded.generation.to_string(),
                format!(
                    "snapshot at commit {} is of generation {}, the replica follows generation {}",
                    recorded.commit_id, recorded.generation, next.generation
                ),
            ))
        } else if recorded.commit_id != last || last < first {
            Some((
                FailureCode::Mislabeled,
                format!("commit {last}"),
                format!("commit {}", recorded.commit_id),
                format!(
                    "snapshot received as commits {first}..={last} records commit {}",
                    recorded.commit_id
                ),
            ))
        } else if first != next.commit_id.next() {
            Some((
                if first <= next.commit_id { FailureCode::Duplicate } else { FailureCode::Gap },
                format!("commit {}", next.commit_id.next()),
                format!("commit {first}"),
                format!(
                    "snapshot standing for commits {first}..={last} does not continue the replica at commit {}",
                    next.commit_id
                ),
            ))
        } else if computed_checksum != recorded_checksum {
            Some((
                FailureCode::SnapshotChecksum,
                format!("0x{recorded_checksum:08x}"),
                format!("0x{computed_checksum:08x}"),
                format!(
                    "snapshot at commit {last}: its tables' checksum is 0x{computed_checksum:08x}, it records 0x{recorded_checksum:08x}"
                ),
            ))
        } else {
            None
        };
        match problem {
            None => {
                self.state = ValidatorState::Validating { next: recorded };
                ValidatorOutput::SnapshotValidated {
                    first,
                    last,
                    start: next,
                    end: recorded,
                }
            }
            Some((code, expected, actual, reason)) => {
                let rejection = Rejection {
                    first,
                    last,
                    wal_offset: next.wal_offset,
                    code,
                    expected: Some(expected),
                    actual: Some(actual),
                    reason,
                };
                tracing::warn!(first = first.0, last = last.0, reason = %rejection.reason, "snapshot rejected");
                self.state = ValidatorState::Blocked {
                    rejection: rejection.clone(),
                };
                ValidatorOutput::Rejected(rejection)
            }
        }
    }

    /// Validates one received segment.
    pub fn handle(&mut self, input: ValidatorInput) -> Result<ValidatorOutput, ValidatorBlocked> {
        let next = match &self.state {
            ValidatorState::Validating { next } => *next,
            ValidatorState::Blocked { rejection } => {
                return Err(ValidatorBlocked {
                    rejection: rejection.clone(),
                })
            }
        };
        let (bytes, stored) = match input {
            ValidatorInput::Received { bytes } => (bytes, None),
            ValidatorInput::Persisted { first, last, bytes } => (bytes, Some((first, last))),
            ValidatorInput::Snapshot {
                first,
                last,
                recorded,
                recorded_checksum,
                computed_checksum,
            } => {
                return Ok(self.snapshot(
                    next,
                    (first, last),
                    recorded,
                    recorded_checksum,
                    computed_checksum,
                ))
            }
        };
        let result = Segment::decode(&bytes)
            .map_err(|e| {
                let (code, expected, actual) = decode_rejection(&e);
                let header = SegmentHeader::peek(&bytes).ok();
                (header, code, expected, actual, e.to_string())
            })
            .and_then(|segment| {
                let claimed = segment.header;
                match stored {
                    Some(range) if range != claimed.range() => {
                        return Err((
                            Some(claimed),
                            FailureCode::Mislabeled,
                            Some(format!("commits {}..={}", range.0, range.1)),
                            Some(format!("commits {}..={}", claimed.range().0, claimed.range().1)),
                            format!(
                                "segment received as commits {}..={} but its header says commits {}..={}",
                                range.0,
                                range.1,
                                claimed.range().0,
                                claimed.range().1
                            ),
                        ))
                    }
                    _ => {}
                }
                validate(segment, &next).map_err(|e| {
                    let (code, expected, actual) = continuity_rejection(&e);
                    (Some(claimed), code, expected, actual, e.to_string())
                })
            });
        match result {
            Ok(validated) => {
                self.state = ValidatorState::Validating {
                    next: validated.end(),
                };
                Ok(ValidatorOutput::Validated(validated))
            }
            Err((header, code, expected, actual, reason)) => {
                // A stored range names the segment when its header cannot.
                let (first, last) = header.map(|h| h.range()).or(stored).unwrap_or_default();
                let rejection = Rejection {
                    first,
                    last,
                    wal_offset: header.map(|h| h.first_wal_offset).unwrap_or_default(),
                    code,
                    expected,
                    actual,
                    reason,
                };
                tracing::warn!(first = rejection.first.0, last = rejection.last.0, reason = %rejection.reason, "segment rejected");
                self.state = ValidatorState::Blocked {
                    rejection: rejection.clone(),
                };
                Ok(ValidatorOutput::Rejected(rejection))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{encode_change, Change, EncodedRecord, Generation, RecordEncoder, Value};

    const GEN: Generation = Generation(42);

    fn records(n: u64) -> Vec<EncodedRecord> {
        let mut enc = RecordEncoder::new(ChainPosition::genesis(GEN));
        (1..=n)
            .map(|c| {
                let change = encode_change(&Change::Insert {
                    table: "t".into(),
                    values: vec![Value::Integer(c as i64)],
                })
                .expect("encodes");
                enc.push(CommitId(c), &[&change]).expect("record")
            })
            .collect()
    }

    fn seg(r: &[EncodedRecord]) -> ValidatorInput {
        ValidatorInput::Received {
            bytes: Segment::encode(GEN, r).expect("segment"),
        }
    }

    #[test]
    fn validates_consecutive_segments_and_advances_its_expectation() {
        // V1: continuity from the checkpoint, segment after segment.
        let r = records(6);
        let mut v = Validator::new(ChainPosition::genesis(GEN));
        let Ok(ValidatorOutput::Validated(a)) = v.handle(seg(&r[..2])) else {
            panic!("first segment validates")
        };
        let Ok(ValidatorOutput::Validated(b)) = v.handle(seg(&r[2..])) else {
            panic!("second segment validates")
        };
        assert_eq!(b.start(), a.end());
        assert_eq!(v.state(), &ValidatorState::Validating { next: b.end() });
    }

    #[test]
    fn rejection_blocks_everything_after_it() {
        // F2: a rejected segment blocks application; the next, even a good
        // one, is not validated (no skipping).
        let r = records(6);
        let mut v = Validator::new(ChainPosition::genesis(GEN));
        let out = v.handle(seg(&r[1..3])).expect("handled");
        let ValidatorOutput::Rejected(rejection) = out else {
            panic!("gap must be rejected")
        };
        assert_eq!(
            (rejection.first, rejection.last),
            (CommitId(2), CommitId(3))
        );
        assert!(
            rejection.reason.contains("gap, expected commit 1 first"),
            "{}",
            rejection.reason
        );
        let err = v.handle(seg(&r[..1])).expect_err("blocked");
        assert_eq!(err.rejection, rejection);
        assert!(matches!(v.state(), ValidatorState::Blocked { .. }));
    }

    #[test]
    fn corrupt_bytes_are_rejected_with_the_decode_error() {
        let r = records(2);
        let ValidatorInput::Received { mut bytes } = seg(&r) else {
            unreachable!("seg makes Received inputs")
        };
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        let mut v = Validator::new(ChainPosition::genesis(GEN));
        let Ok(ValidatorOutput::Rejected(rej)) = v.handle(ValidatorInput::Received { bytes })
        else {
            panic!("rejected")
        };
        assert!(rej.reason.contains("segment CRC32"), "{}", rej.reason);
        // E2: the readable header still names the segment.
        assert_eq!((rej.first, rej.last), (CommitId(1), CommitId(2)));
    }

    #[test]
    fn a_segment_stored_under_another_range_is_rejected() {
        // The stored row and the bytes must agree: the Receiver persisted
        // these bytes as commits 1..=1, the header says 1..=2.
        let r = records(2);
        let ValidatorInput::Received { bytes } = seg(&r) else {
            unreachable!("seg makes Received inputs")
        };
        let mut v = Validator::new(ChainPosition::genesis(GEN));
        let Ok(ValidatorOutput::Rejected(rej)) = v.handle(ValidatorInput::Persisted {
            first: CommitId(1),
            last: CommitId(1),
            bytes,
        }) else {
            panic!("rejected")
        };
        assert_eq!(rej.code, "MISLABELED");
        assert_eq!(rej.expected.as_deref(), Some("commits 1..=1"));
        assert_eq!(rej.actual.as_deref(), Some("commits 1..=2"));
    }

    #[test]
    fn restart_from_the_same_checkpoint_gives_the_same_answers() {
        // V2: deterministic; its only cross-run state is the checkpoint.
        let r = records(4);
        let run = || {
            let mut v = Validator::new(ChainPosition::genesis(GEN));
            [seg(&r[..1]), seg(&r[1..]), seg(&r[..1])]
                .into_iter()
                .map(|i| v.handle(i))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
