//! Value conversion between SQLite's values (rusqlite) and the WAL's,
//! one place for every side (capture, snapshots, apply): a value crosses
//! unchanged, TEXT as its bytes whether or not they are valid UTF-8.

use replication::wal::{Value as WalOwned, ValueRef as WalValue};
use rusqlite::types::ValueRef;

/// A SQLite value as the WAL encodes it.
pub(crate) fn wal_value(v: ValueRef<'_>) -> WalValue<'_> {
    match v {
        ValueRef::Null => WalValue::Null,
        ValueRef::Integer(i) => WalValue::Integer(i),
        ValueRef::Real(r) => WalValue::Real(r),
        ValueRef::Text(t) => WalValue::Text(t),
        ValueRef::Blob(b) => WalValue::Blob(b),
    }
}

/// A WAL value as SQLite binds it.
pub(crate) fn sqlite_value(v: &WalOwned) -> ValueRef<'_> {
    match v {
        WalOwned::Null => ValueRef::Null,
        WalOwned::Integer(i) => ValueRef::Integer(*i),
        WalOwned::Real(r) => ValueRef::Real(*r),
        WalOwned::Text(t) => ValueRef::Text(t),
        WalOwned::Blob(b) => ValueRef::Blob(b),
    }
}
