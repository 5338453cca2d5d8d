//! The record's changes from the transaction's touched keys: each key's
//! final row (or its absence) read at commit, resolved against how it
//! existed before, deletes first, values in the WAL's encoding.

use super::statements::Statements;
use super::{Parts, KEPT_SCRATCH_BYTES, PART_BYTES};
use crate::capture::buffer::{Known, TxBuffer};
use crate::capture::tables::TableInfo;
use crate::capture::CaptureError;
use crate::raw::RawConn;
use replication::wal::{encode_change_header, EncodeError, Operation, RECORD_HEADER_LEN};
use std::rc::Rc;

/// A record being built in place: its header reserved, then its changes
/// framed as the record carries them (each a `u32` length and its bytes),
/// and how many.
pub(super) struct Changes {
    pub(super) framed: Vec<u8>,
    pub(super) count: usize,
}

impl Default for Changes {
    fn default() -> Changes {
        Changes {
            framed: vec![0; RECORD_HEADER_LEN],
            count: 0,
        }
    }
}

impl Changes {
    pub(super) fn clear(&mut self) {
        self.framed.clear();
        self.framed.resize(RECORD_HEADER_LEN, 0);
        self.count = 0;
    }

    /// Appends a pre-encoded change.
    pub(super) fn push_encoded(&mut self, change: &[u8]) {
        self.framed
            .extend_from_slice(&(change.len() as u32).to_le_bytes());
        self.framed.extend_from_slice(change);
        self.count += 1;
    }

    /// Appends a change made of its header and `parts`.
    pub(super) fn push(
        &mut self,
        op: Operation,
        table: &str,
        parts: &[&[u8]],
    ) -> Result<(), EncodeError> {
        let at = self.framed.len();
        self.framed.extend_from_slice(&[0; 4]);
        encode_change_header(&mut self.framed, op, table)?;
        for p in parts {
            self.framed.extend_from_slice(p);
        }
        let len = (self.framed.len() - at - 4) as u32;
        self.framed[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        Ok(())
    }
}

/// Whether a touched key's row existed before the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Existence {
    /// It did: the replica must have it.
    Existed,
    /// It did not (the BEFORE triggers of a table with other UNIQUE
    /// constraints probed the key).
    New,
    /// Not known: a REPLACE over an existing key fires no delete trigger,
    /// and a user trigger that fires before capture hides the order.
    Unknown,
}

pub(super) fn existence(e: &crate::capture::buffer::Entry, t: &Touched) -> Existence {
    match (
        t.info.order_known && !t.replicated,
        e.existed,
        t.info.probed,
    ) {
        (false, _, _) => Existence::Unknown,
        (true, true, _) => Existence::Existed,
        (true, false, true) => Existence::New,
        (true, false, false) => Existence::Unknown,
    }
}

/// A table the transaction touched, as its changes need it.
pub(super) struct Touched {
    pub(super) info: Rc<TableInfo>,
    /// `aerodb_replicate` ran on it in this transaction: its schema record
    /// restarts it on the replica from the rows of that moment, so whether
    /// a key's row existed there is not known.
    pub(super) replicated: bool,
}

/// The tables the transaction's schema records (`aerodb_replicate`) are for.
pub(super) fn replicated_tables(buffer: &TxBuffer) -> Vec<String> {
    buffer
        .section_changes()
        .filter(|c| c.first() == Some(&(Operation::Schema as u8)))
        .filter_map(|c| {
            let len = u16::from_le_bytes([*c.get(1)?, *c.get(2)?]) as usize;
            std::str::from_utf8(c.get(3..3 + len)?)
                .ok()
                .map(str::to_owned)
        })
        .collect()
}

/// A touched key's state at the end of the transaction.
pub(super) enum Final {
    /// Its row: from a lookup (`true`: in the looked-up bytes) or as its
    /// trigger saw it, and where.
    Row(bool, std::ops::Range<usize>),
    /// A row, read again when its change is written (the rows read at
    /// commit are held up to a bound).
    RowAgain,
    /// No row.
    Absent,
    /// The row was only noted as a REPLACE candidate and is unchanged.
    Unchanged,
}

/// The record's changes, in the order the module doc gives, into
/// `changes` (empty), records cut off through `parts` as they fill.
pub(super) fn build_changes(
    conn: RawConn,
    stmts: &mut Statements,
    buffer: &TxBuffer,
    changes: &mut Changes,
    parts: &mut Parts,
) -> Result<(), CaptureError> {
    // Room for every change at once (up to a part): growing by doubling
    // would hold up to twice a large record.
    let table_names: usize = buffer.tables.iter().map(String::len).sum();
    changes.framed.reserve(
        (buffer.section_bytes.len()
            + buffer.sections.len() * 4
            + buffer.values.len()
            + 2 * buffer.keys.len()
            + buffer.entries.len() * (16 + table_names.min(1024)))
        .min(PART_BYTES + PART_BYTES / 8),
    );
    for s in buffer.section_changes() {
        changes.push_encoded(s);
        parts.cut(conn, &mut stmts.insert_record, changes)?;
    }
    // Final rows of looked-up keys, and where each one's row is.
    let mut looked_up = std::mem::take(&mut stmts.looked_up);
    looked_up.clear();
    let r = resolve_and_order(conn, stmts, buffer, changes, parts, &mut looked_up);
    if looked_up.capacity() <= KEPT_SCRATCH_BYTES {
        stmts.looked_up = looked_up;
    }
    r
}

/// Reads what the touched keys' final states need and appends their
/// changes: deletes first, then the final rows.
pub(super) fn resolve_and_order(
    conn: RawConn,
    stmts: &mut Statements,
    buffer: &TxBuffer,
    changes: &mut Changes,
    parts: &mut Parts,
    looked_up: &mut Vec<u8>,
) -> Result<(), CaptureError> {
    // What decides each change, per touched table (one lookup per table).
    let replicated = replicated_tables(buffer);
    let mut finals: Vec<Final> = Vec::with_capacity(buffer.entries.len());
    for e in &buffer.entries {
        let table = &buffer.tables[e.table as usize];
        finals.push(match &e.known {
            Known::Row(r) => Final::Row(false, r.clone()),
            Known::Absent => Final::Absent,
            Known::Lookup => {
                let start = looked_up.len();
                match stmts.lookup(conn, table, buffer.key(e), looked_up)? {
                    true if looked_up.len() <= PART_BYTES => {
                        Final::Row(true, start..looked_up.len())
                    }
                    true => {
                        // Held rows are bounded: this one is read again
                        // when its change is written.
                        looked_up.truncate(start);
                        Final::RowAgain
                    }
                    false => Final::Absent,
                }
            }
            Known::Candidate => {
                // Still there: nothing changed it (a change would have
                // fired a capture trigger). Gone: a REPLACE deleted it.
                let start = looked_up.len();
                let found = stmts.lookup(conn, table, buffer.key(e), looked_up)?;
                looked_up.truncate(start);
                match found {
                    true => Final::Unchanged,
                    false => Final::Absent,
                }
            }
        });
    }
    let tables: Vec<Touched> = buffer
        .tables
        .iter()
        .map(|t| Touched {
            info: Rc::clone(&stmts.tables[t].info),
            replicated: replicated.iter().any(|r| r == t),
        })
        .collect();
    let encode = |r: Result<(), EncodeError>, table: &str| {
        r.map_err(|source| CaptureError::Encode {
            table: table.to_owned(),
            source,
        })
    };
    // Deletes first: existing keys, then keys whose existence is unknown
    // (a key equal to an existing one under its collation comes after it).
    for first_pass in [true, false] {
        for (e, f) in buffer.entries.iter().zip(&finals) {
            let t = &tables[e.table as usize];
            let (info, existence) = (&*t.info, existence(e, t));
            let delete = match (f, existence) {
                (Final::Unchanged, _) | (_, Existence::New) => false,
                (Final::Absent, _) => true,
                (Final::Row(..) | Final::RowAgain, _) => info.extra_unique,
            };
            if !delete || (existence == Existence::Existed) != first_pass {
                continue;
            }
            let op = match existence {
                Existence::Existed => Operation::Delete,
                _ => Operation::Discard,
            };
            encode(changes.push(op, &info.name, &[buffer.key(e)]), &info.name)?;
            parts.cut(conn, &mut stmts.insert_record, changes)?;
        }
    }
    let mut again = Vec::new();
    for (e, f) in buffer.entries.iter().zip(&finals) {
        let t = &tables[e.table as usize];
        let (info, table) = (&*t.info, &t.info.name);
        let row = match f {
            Final::Row(true, range) => &looked_up[range.clone()],
            Final::Row(false, range) => &buffer.values[range.clone()],
            Final::RowAgain => {
                again.clear();
                if !stmts.lookup(conn, table, buffer.key(e), &mut again)? {
                    return Err(CaptureError::Sqlite {
                        doing: format!("reading the final row of a touched key of '{table}'"),
                        source: crate::raw::RawError {
                            code: rusqlite::ffi::SQLITE_INTERNAL,
                            message: "the row was there a moment ago and is gone, inside the committing transaction".into(),
                            sql: String::new(),
                        },
                    });
                }
                &again[..]
            }
            Final::Absent | Final::Unchanged => continue,
        };
        if existence(e, t) == Existence::Existed && !info.extra_unique {
            encode(
                changes.push(Operation::Update, table, &[buffer.key(e), row]),
                table,
            )?;
        } else {
            encode(changes.push(Operation::Insert, table, &[row]), table)?;
        }
        parts.cut(conn, &mut stmts.insert_record, changes)?;
    }
    Ok(())
}
