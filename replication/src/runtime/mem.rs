//! In-memory implementations of every runtime port (STYLE 19, raft-rs's
//! `MemStorage`): a primary and its [`WalSource`], and a replica's
//! [`Storage`] (state store, WAL storage, segment reader, apply storage),
//! with faults an operator or a test can switch on. They drive the
//! production [`Runtime`](super::Runtime) (its engine and runners) in tests
//! and in the seeded simulation (`tests/runtime_simulation.rs`) without
//! SQLite; `storage-adapter` implements the same ports on SQLite files.
//!
//! The row model is the WAL's: a row is identified by its table and its
//! first value (Insert replaces the row with that key, Update and Delete
//! require it, Discard removes it if present). Snapshots are small files in
//! a directory the caller names. The source waits for new WAL or for the
//! primary to answer as a file source does: on the stop signal, looking
//! again between waits (time decides when to look, never what happens).

mod primary;
mod replica;

pub use primary::{MemPrimary, MemSource};
pub use replica::MemReplica;

use crate::wal::{encode_value, Change, Value};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// A table's rows by key (the encoded first value), and the table's name.
pub type Rows = BTreeMap<(String, Vec<u8>), Vec<Value>>;

fn key_of(table: &str, key: &Value) -> (String, Vec<u8>) {
    let mut k = Vec::new();
    // A value that does not encode (over the format's limits) never
    // reaches a record.
    let _ = encode_value(&mut k, key.as_ref());
    (table.to_owned(), k)
}

/// Applies one change to `rows`; an error names what diverged.
pub fn apply_change(rows: &mut Rows, change: &Change) -> Result<(), String> {
    let first = |values: &[Value], what: &str| -> Result<Value, String> {
        values
            .first()
            .cloned()
            .ok_or_else(|| format!("{what} of '{}' holds no value", change.table()))
    };
    match change {
        Change::Insert { table, values } => {
            rows.insert(key_of(table, &first(values, "an Insert")?), values.clone());
        }
        Change::Update { table, key, values } => {
            let old = key_of(table, &first(key, "an Update's key")?);
            if rows.remove(&old).is_none() {
                return Err(format!("UPDATE of '{table}' key {key:?} matched 0 rows"));
            }
            rows.insert(key_of(table, &first(values, "an Update")?), values.clone());
        }
        Change::Delete { table, key } => {
            if rows
                .remove(&key_of(table, &first(key, "a Delete")?))
                .is_none()
            {
                return Err(format!("DELETE of '{table}' key {key:?} matched 0 rows"));
            }
        }
        Change::Discard { table, key } => {
            rows.remove(&key_of(table, &first(key, "a Discard")?));
        }
        // Renames and drops move or remove a table's rows; the model has no
        // columns, so column changes are not modelled.
        Change::Alter { tables, .. } => {
            for t in tables {
                let moved: Vec<_> = rows
                    .keys()
                    .filter(|(table, _)| *table == t.name)
                    .cloned()
                    .collect();
                for k in moved {
                    let values = rows.remove(&k).expect("listed");
                    if let Some(d) = &t.after {
                        rows.insert((d.name.clone(), k.1), values);
                    }
                }
            }
        }
        Change::Schema { .. } | Change::Unreplicate { .. } => {}
    }
    Ok(())
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
