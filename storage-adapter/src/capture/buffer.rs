//! The open transaction's capture buffer: which rows of which replicated
//! tables the transaction touched, and what is known of their final state.
//!
//! Role: capture records *which keys* a transaction touched; at commit the
//! record carries each touched key's final row (or its absence), so what
//! user triggers, cascades or REPLACE did in between cannot make the
//! replica differ (rule P1: the WAL holds what was committed). Per row the
//! capture trigger only hands its values to [`TxBuffer::touch`]: no SQL, no
//! b-tree write.
//!
//! A touch made once is exact: any later change of that row fires a
//! capture trigger again. A key touched twice may carry stale values (a
//! user trigger created after `aerodb_replicate` fires before the capture
//! trigger of the statement that fired it), so it is looked up at commit.
//!
//! Savepoints: SQLite tells the capture virtual table about every savepoint
//! (statement savepoints included); [`TxBuffer::savepoint`],
//! [`TxBuffer::rollback_to`] and [`TxBuffer::release`] keep the buffer equal
//! to what the data holds. Rolling back only truncates: an entry whose
//! state moved to [`Known::Lookup`] after the savepoint stays there, which
//! is always correct (the lookup reads the true final row).
//!
//! Spills: a large transaction's buffer is written out as a record that
//! continues (see `commit::spill`) and then emptied; [`TxBuffer::spilled`]
//! keeps the count. A spill written inside an open savepoint is undone by
//! SQLite when that savepoint is rolled back to, so the buffer must hold
//! again what it held when the savepoint opened: at each spill the buffer
//! keeps a copy of the part the open savepoints of that moment cover (keys,
//! existence, schema sections; values are dropped, so those keys are looked
//! up at commit). A copy is at most one chunk, and one is kept per
//! savepoint that saw a spill, so memory stays bounded.
//!
//! Nothing here does IO; it is unit-tested on its own.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

/// What is known of a touched key's row at the end of the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Known {
    /// The row holds these values (an encoded value list in
    /// [`TxBuffer::values`]).
    Row(Range<usize>),
    /// There is no row with this key.
    Absent,
    /// Unknown: read it at commit.
    Lookup,
    /// Only ever seen as a row a REPLACE could delete: read it at commit;
    /// if it is still there, it did not change.
    Candidate,
}

/// How a trigger saw a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Touch<'a> {
    /// A row now holds these values (encoded value list) at this key.
    Now(&'a [u8]),
    /// The row that held this key was deleted or moved to another key.
    Gone,
    /// The row's values were not handed over (wide tables): look it up.
    Lookup,
    /// A row with this key exists and a REPLACE may delete it without a
    /// trigger (BEFORE triggers of tables with other UNIQUE constraints).
    Candidate,
}

/// One touched key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Index into [`TxBuffer::tables`].
    pub table: u32,
    /// The encoded key value list, in [`TxBuffer::keys`].
    pub key: Range<usize>,
    /// The key's row existed before the transaction (its first touch saw
    /// it as an existing row, through OLD or a lookup of the table).
    pub existed: bool,
    /// Its final state, as far as known.
    pub known: Known,
    hash: u64,
    /// Previous entry with the same hash (`u32::MAX`: none).
    next: u32,
}

/// What the buffer held when a savepoint opened (lengths to truncate to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    level: i32,
    /// Spills written before the savepoint opened.
    spills: u32,
    tables: usize,
    entries: usize,
    keys: usize,
    values: usize,
    sections: usize,
    section_bytes: usize,
}

/// FNV-1a: keys are short, and the map must cost little per row.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
    fn write_u64(&mut self, v: u64) {
        // Already a hash: use it as is.
        self.0 = v;
    }
}

fn hash_key(table: u32, key: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(&table.to_le_bytes());
    h.write(key);
    h.finish()
}

const NONE: u32 = u32::MAX;

/// A buffer larger than this is freed, not kept, when its transaction ends.
const KEPT_BYTES: usize = 1 << 20;
/// The same for the number of touched keys.
const KEPT_ENTRIES: usize = 1 << 14;

/// The buffer of one connection's open transaction.
#[derive(Default)]
pub(crate) struct TxBuffer {
    /// Names of the tables touched, in first-touch order.
    pub tables: Vec<String>,
    /// The touched keys, in first-touch order.
    pub entries: Vec<Entry>,
    /// Encoded key value lists.
    pub keys: Vec<u8>,
    /// Encoded row value lists.
    pub values: Vec<u8>,
    /// Pre-encoded changes of the record (schema records and the rows that
    /// travel with them), back to back; they go before the touched keys'
    /// changes.
    pub section_bytes: Vec<u8>,
    /// Where each pre-encoded change ends in `section_bytes`.
    pub sections: Vec<usize>,
    index: HashMap<u64, u32, BuildHasherDefault<Fnv>>,
    marks: Vec<Mark>,
    /// Index of the last table touched (runs of one table are common).
    last_table: usize,
    /// Records written by spills of this transaction (they continue).
    spills: u32,
    /// What the buffer held, up to its newest open savepoint, when spill
    /// `epoch` was written: (epoch, copy without values).
    saved: Vec<(u32, Box<TxBuffer>)>,
}

impl TxBuffer {
    /// True when the transaction has nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.sections.is_empty()
    }

    /// Bytes held (for the record-size bound).
    pub fn bytes(&self) -> usize {
        self.keys.len()
            + self.values.len()
            + self.section_bytes.len()
            + self.entries.len() * std::mem::size_of::<Entry>()
    }

    /// Forgets everything (commit or rollback).
    pub fn clear(&mut self) {
        // Keep the allocations of a busy connection, not those of a big
        // transaction.
        if self.bytes() > KEPT_BYTES || self.index.capacity() > KEPT_ENTRIES {
            *self = TxBuffer::default();
            return;
        }
        self.tables.clear();
        self.entries.clear();
        self.keys.clear();
        self.values.clear();
        self.section_bytes.clear();
        self.sections.clear();
        self.index.clear();
        self.marks.clear();
        self.last_table = 0;
        self.spills = 0;
        self.saved.clear();
    }

    /// How many records spills of this transaction wrote (and SQLite has
    /// not rolled back).
    pub fn spills(&self) -> u32 {
        self.spills
    }

    /// The buffer was written out as a record that continues: keep what the
    /// open savepoints need should they be rolled back to, then empty it.
    pub fn spilled(&mut self) {
        let covered = self
            .marks
            .iter()
            .rev()
            .find(|m| m.spills == self.spills)
            .copied();
        if let Some(m) = covered {
            let mut copy = TxBuffer {
                tables: self.tables[..m.tables].to_vec(),
                entries: self.entries[..m.entries].to_vec(),
                keys: self.keys[..m.keys].to_vec(),
                section_bytes: self.section_bytes[..m.section_bytes].to_vec(),
                sections: self.sections[..m.sections].to_vec(),
                ..TxBuffer::default()
            };
            for e in &mut copy.entries {
                if matches!(e.known, Known::Row(_)) {
                    e.known = Known::Lookup;
                }
            }
            self.saved.push((self.spills, Box::new(copy)));
        }
        self.tables.clear();
        self.entries.clear();
        self.keys.clear();
        self.values.clear();
        self.section_bytes.clear();
        self.sections.clear();
        self.index.clear();
        self.last_table = 0;
        self.spills += 1;
    }

    /// The index of `table` in [`TxBuffer::tables`].
    pub fn table_index(&mut self, table: &str) -> u32 {
        if self.tables.get(self.last_table).map(String::as_str) != Some(table) {
            self.last_table = match self.tables.iter().position(|t| t == table) {
                Some(i) => i,
                None => {
                    self.tables.push(table.to_owned());
                    self.tables.len() - 1
                }
            };
        }
        self.last_table as u32
    }

    /// Records that a trigger saw `key` (an encoded value list) of `table`
    /// as `touch`; `existing` says the row existed when it was seen (OLD,
    /// or read from the table).
    pub fn touch(&mut self, table: &str, key: &[u8], existing: bool, touch: Touch<'_>) {
        let table = self.table_index(table);
        let hash = hash_key(table, key);
        let mut at = self.index.get(&hash).copied().unwrap_or(NONE);
        while at != NONE {
            let e = &mut self.entries[at as usize];
            if e.table == table && self.keys[e.key.clone()] == *key {
                // Touched again: the values this trigger saw may be stale.
                e.known = match (&e.known, touch) {
                    (Known::Candidate, Touch::Candidate) => Known::Candidate,
                    _ => Known::Lookup,
                };
                return;
            }
            at = e.next;
        }
        let start = self.keys.len();
        self.keys.extend_from_slice(key);
        let known = match touch {
            Touch::Now(values) => {
                let start = self.values.len();
                self.values.extend_from_slice(values);
                Known::Row(start..self.values.len())
            }
            Touch::Gone => Known::Absent,
            Touch::Lookup => Known::Lookup,
            Touch::Candidate => Known::Candidate,
        };
        let next = self
            .index
            .insert(hash, self.entries.len() as u32)
            .unwrap_or(NONE);
        self.entries.push(Entry {
            table,
            key: start..self.keys.len(),
            existed: existing,
            known,
            hash,
            next,
        });
    }

    /// Appends a pre-encoded change (a schema record or one of its rows).
    pub fn push_section(&mut self, change: &[u8]) {
        self.section_bytes.extend_from_slice(change);
        self.sections.push(self.section_bytes.len());
    }

    /// The pre-encoded changes, in order.
    pub fn section_changes(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.sections.iter().map(move |&end| {
            let s = &self.section_bytes[start..end];
            start = end;
            s
        })
    }

    /// The encoded key of `e`.
    pub fn key(&self, e: &Entry) -> &[u8] {
        &self.keys[e.key.clone()]
    }

    /// Savepoint `level` opens (SQLite numbers them from 0, statement
    /// savepoints included).
    pub fn savepoint(&mut self, level: i32) {
        self.marks.retain(|m| m.level < level);
        self.marks.push(Mark {
            level,
            spills: self.spills,
            tables: self.tables.len(),
            entries: self.entries.len(),
            keys: self.keys.len(),
            values: self.values.len(),
            sections: self.sections.len(),
            section_bytes: self.section_bytes.len(),
        });
    }

    /// The level of the newest open savepoint the buffer knows of.
    pub fn newest_savepoint(&self) -> Option<i32> {
        self.marks.last().map(|m| m.level)
    }

    /// Savepoint `level` and those inside it are released.
    pub fn release(&mut self, level: i32) {
        self.marks.retain(|m| m.level < level);
        self.forget_unneeded_copies();
    }

    /// Drops copies no open savepoint can roll back to.
    fn forget_unneeded_copies(&mut self) {
        let marks = &self.marks;
        self.saved
            .retain(|(epoch, _)| marks.iter().any(|m| m.spills == *epoch));
    }

    /// `ROLLBACK TO` savepoint `level`: back to what the buffer held when it
    /// opened (empty if it opened before the buffer took part in the
    /// transaction). The savepoint stays open.
    pub fn rollback_to(&mut self, level: i32) {
        self.marks.retain(|m| m.level <= level);
        let mark = match self.marks.last() {
            Some(m) => *m,
            None => Mark {
                level,
                spills: 0,
                tables: 0,
                entries: 0,
                keys: 0,
                values: 0,
                sections: 0,
                section_bytes: 0,
            },
        };
        if mark.spills < self.spills {
            // SQLite undid the spills written since the savepoint opened:
            // back to the copy of what the buffer held then.
            let copy = self
                .saved
                .iter()
                .position(|(epoch, _)| *epoch == mark.spills)
                .map(|i| std::mem::take(&mut *self.saved[i].1));
            let copy = copy.unwrap_or_default();
            self.tables = copy.tables;
            self.entries = copy.entries;
            self.keys = copy.keys;
            self.values.clear();
            self.section_bytes = copy.section_bytes;
            self.sections = copy.sections;
            self.spills = mark.spills;
            self.saved.retain(|(epoch, _)| *epoch < mark.spills);
            self.index.clear();
            for (i, e) in self.entries.iter_mut().enumerate() {
                e.next = self.index.insert(e.hash, i as u32).unwrap_or(NONE);
            }
        }
        while self.entries.len() > mark.entries {
            let e = self.entries.pop().expect("len > mark.entries >= 0");
            // Entries are removed newest first, so each is its hash's head.
            if e.next == NONE {
                self.index.remove(&e.hash);
            } else {
                self.index.insert(e.hash, e.next);
            }
        }
        // A table first touched after the savepoint has all its entries
        // after it too.
        self.tables.truncate(mark.tables);
        self.last_table = 0;
        self.keys.truncate(mark.keys);
        self.values.truncate(mark.values.min(self.values.len()));
        self.sections.truncate(mark.sections);
        self.section_bytes.truncate(mark.section_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (table, key, existed, row, looked up) of each entry.
    type Seen = (String, Vec<u8>, bool, Option<Vec<u8>>, bool);

    fn known(b: &TxBuffer) -> Vec<Seen> {
        b.entries
            .iter()
            .map(|e| {
                let (row, lookup) = match &e.known {
                    Known::Row(r) => (Some(b.values[r.clone()].to_vec()), false),
                    Known::Absent => (None, false),
                    Known::Lookup | Known::Candidate => (None, true),
                };
                (
                    b.tables[e.table as usize].clone(),
                    b.key(e).to_vec(),
                    e.existed,
                    row,
                    lookup,
                )
            })
            .collect()
    }

    #[test]
    fn a_key_touched_once_keeps_what_its_trigger_saw() {
        let mut b = TxBuffer::default();
        b.touch("t", b"k1", false, Touch::Now(b"row1"));
        b.touch("t", b"k2", true, Touch::Gone);
        b.touch("u", b"k1", true, Touch::Lookup);
        assert_eq!(
            known(&b),
            vec![
                (
                    "t".into(),
                    b"k1".to_vec(),
                    false,
                    Some(b"row1".to_vec()),
                    false
                ),
                ("t".into(), b"k2".to_vec(), true, None, false),
                ("u".into(), b"k1".to_vec(), true, None, true),
            ]
        );
    }

    #[test]
    fn a_key_touched_twice_is_looked_up_and_keeps_its_first_existence() {
        let mut b = TxBuffer::default();
        b.touch("t", b"k1", true, Touch::Now(b"new"));
        b.touch("t", b"k1", false, Touch::Now(b"stale"));
        assert_eq!(b.entries.len(), 1);
        assert!(b.entries[0].existed);
        assert_eq!(b.entries[0].known, Known::Lookup);
    }

    #[test]
    fn a_candidate_stays_one_until_a_trigger_reports_a_change() {
        let mut b = TxBuffer::default();
        b.touch("t", b"k1", true, Touch::Candidate);
        b.touch("t", b"k1", true, Touch::Candidate);
        assert_eq!(b.entries[0].known, Known::Candidate);
        b.touch("t", b"k1", true, Touch::Gone);
        assert_eq!(b.entries[0].known, Known::Lookup);
    }

    #[test]
    fn rollback_to_a_savepoint_forgets_what_came_after_it() {
        let mut b = TxBuffer::default();
        b.touch("t", b"k1", false, Touch::Now(b"a"));
        b.savepoint(0);
        b.touch("t", b"k2", false, Touch::Now(b"b"));
        b.push_section(b"schema");
        b.savepoint(1);
        b.touch("t", b"k3", false, Touch::Now(b"c"));
        b.rollback_to(1);
        assert_eq!(b.entries.len(), 2);
        b.rollback_to(0);
        assert_eq!(b.entries.len(), 1);
        assert!(b.sections.is_empty());
        // The index forgot k2: touching it again is a first touch.
        b.touch("t", b"k2", true, Touch::Gone);
        assert_eq!(b.entries[1].known, Known::Absent);
        assert!(b.entries[1].existed);
        // Released savepoints are gone; rolling back to one opened before
        // the buffer joined empties it.
        b.release(0);
        b.rollback_to(0);
        assert!(b.is_empty());
    }

    #[test]
    fn rollback_keeps_entries_that_moved_to_lookup() {
        let mut b = TxBuffer::default();
        b.touch("t", b"k1", false, Touch::Now(b"a"));
        b.savepoint(0);
        b.touch("t", b"k1", false, Touch::Now(b"b"));
        b.rollback_to(0);
        assert_eq!(b.entries.len(), 1);
        assert_eq!(b.entries[0].known, Known::Lookup, "lookup is always right");
    }

    #[test]
    fn many_keys_with_colliding_buckets_stay_distinct() {
        let mut b = TxBuffer::default();
        for i in 0..10_000u32 {
            b.touch("t", &i.to_le_bytes(), false, Touch::Gone);
        }
        b.savepoint(0);
        for i in 5_000..15_000u32 {
            b.touch("t", &i.to_le_bytes(), false, Touch::Gone);
        }
        assert_eq!(b.entries.len(), 15_000);
        b.rollback_to(0);
        assert_eq!(b.entries.len(), 10_000);
        assert!(b.entries[..5_000].iter().all(|e| e.known == Known::Absent));
        assert!(b.entries[5_000..].iter().all(|e| e.known == Known::Lookup));
        b.touch("t", &12_000u32.to_le_bytes(), false, Touch::Gone);
        assert_eq!(b.entries.len(), 10_001);
    }

    #[test]
    fn rollback_across_spills_restores_what_the_savepoint_covered_as_lookups() {
        let mut b = TxBuffer::default();
        b.touch("t", b"k1", false, Touch::Now(b"a"));
        b.touch("t", b"k2", true, Touch::Gone);
        b.savepoint(0);
        b.touch("t", b"k3", false, Touch::Now(b"c"));
        b.savepoint(1);
        b.touch("t", b"k4", false, Touch::Now(b"d"));
        b.spilled();
        assert!(b.is_empty());
        assert_eq!(b.spills(), 1);
        b.touch("t", b"k5", false, Touch::Now(b"e"));
        b.spilled();
        b.touch("t", b"k6", false, Touch::Now(b"f"));
        // Savepoint 1 opened before both spills: back to k1..k3, values
        // dropped (looked up at commit), existence and absence kept.
        b.rollback_to(1);
        assert_eq!(b.spills(), 0);
        let seen = known(&b);
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0], ("t".into(), b"k1".to_vec(), false, None, true));
        assert_eq!(seen[1], ("t".into(), b"k2".to_vec(), true, None, false));
        assert_eq!(seen[2].1, b"k3".to_vec());
        // The index works again: k1 touched again is not a new entry.
        b.touch("t", b"k1", false, Touch::Gone);
        assert_eq!(b.entries.len(), 3);
        // A savepoint opened after a spill rolls back within its epoch.
        b.spilled();
        b.savepoint(2);
        b.touch("t", b"k7", false, Touch::Now(b"g"));
        b.rollback_to(2);
        assert!(b.is_empty());
        assert_eq!(b.spills(), 1);
        // Releasing every savepoint drops the kept copies.
        b.release(0);
        assert!(b.saved.is_empty());
    }

    #[test]
    fn a_spill_with_no_savepoint_open_keeps_no_copy() {
        let mut b = TxBuffer::default();
        for i in 0..100u32 {
            b.touch("t", &i.to_le_bytes(), false, Touch::Now(b"v"));
        }
        b.spilled();
        assert!(b.saved.is_empty());
        // Rolling back to a savepoint opened before the buffer joined
        // empties it and forgets the spills (SQLite undid them).
        b.touch("t", b"x", false, Touch::Gone);
        b.rollback_to(0);
        assert!(b.is_empty());
        assert_eq!(b.spills(), 0);
    }
}
