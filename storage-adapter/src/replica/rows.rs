//! Applying row changes: each replicated table's shape and statements,
//! prepared once per apply, and the checks that a change matched exactly
//! the rows it names (a divergence otherwise).

use super::schema::{apply_alter, apply_schema, apply_unreplicate};
use super::{sql_err, ApplyError};
use crate::table_info::{self, quote_ident};
use replication::wal::{Change, CommitId, Value};
use rusqlite::types::ToSqlOutput;
use rusqlite::{CachedStatement, Connection, OptionalExtension};
use std::collections::hash_map::{Entry, HashMap};
use std::sync::Arc;

/// A replicated table as the replica stores it. Shared (`Arc`) between the
/// cache and the statements of an apply, never copied per change.
#[derive(Debug)]
pub(super) struct TableShape {
    pub(super) columns: usize,
    pub(super) key_len: usize,
    pub(super) insert: String,
    pub(super) update: String,
    pub(super) delete: String,
}

pub(super) fn to_sql(v: &Value) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(crate::values::sqlite_value(v))
}

pub(super) fn literal(values: &[Value]) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|v| match v {
            Value::Null => "NULL".into(),
            Value::Integer(i) => i.to_string(),
            Value::Real(r) => format!("{r:?}"),
            Value::Text(t) => format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''")),
            Value::Blob(b) => format!(
                "X'{}'",
                b.iter().map(|x| format!("{x:02X}")).collect::<String>()
            ),
        })
        .collect();
    format!("({})", parts.join(", "))
}

/// The shape of a replicated table, from the cache or the replica's schema.
pub(super) fn shape(
    conn: &Connection,
    shapes: &mut HashMap<String, Arc<TableShape>>,
    commit_id: CommitId,
    table: &str,
) -> Result<Arc<TableShape>, ApplyError> {
    {
        if let Some(s) = shapes.get(table) {
            return Ok(Arc::clone(s));
        }
        let known: Option<i64> = conn
            .query_row(
                "SELECT 1 FROM aerodb_replica_tables WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_err("looking up a replicated table", Some(commit_id)))?;
        if known.is_none() {
            return Err(ApplyError::UnknownTable {
                commit_id,
                table: table.into(),
            });
        }
        // SAFETY: the connection is open; the handle is used only here.
        let raw = unsafe { crate::raw::RawConn::new(conn.handle()) };
        let err = |e: crate::RawError| ApplyError::Sqlite {
            doing: "reading the replicated table's shape",
            commit_id: Some(commit_id),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(e.code),
                Some(e.message),
            ),
        };
        let cols = table_info::columns(raw, "main", table).map_err(err)?;
        // Rows are found by their key as the key compares (its own
        // collation, not necessarily the column's).
        let key = table_info::primary_key(raw, "main", table).map_err(err)?;
        let rowid_key = table_info::key_is_rowid(raw, "main", table).map_err(err)?;
        let t = quote_ident(table);
        let names: Vec<String> = cols.iter().map(|c| quote_ident(&c.name)).collect();
        let n = cols.len();
        let marks: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
        let sets: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 1))
            .collect();
        let target: Vec<String> = key
            .iter()
            .map(|k| {
                if rowid_key {
                    quote_ident(&k.name)
                } else {
                    format!(
                        "{} COLLATE {}",
                        quote_ident(&k.name),
                        quote_ident(&k.collation)
                    )
                }
            })
            .collect();
        let excluded: Vec<String> = names
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let shape = Arc::new(TableShape {
            columns: n,
            key_len: key.len(),
            insert: format!(
                "INSERT INTO {t}({}) VALUES ({}) ON CONFLICT({}) DO UPDATE SET {}",
                names.join(", "),
                marks.join(", "),
                target.join(", "),
                excluded.join(", ")
            ),
            update: format!(
                "UPDATE {t} SET {} WHERE {}",
                sets.join(", "),
                table_info::key_match(&key, n + 1)
            ),
            delete: format!("DELETE FROM {t} WHERE {}", table_info::key_match(&key, 1)),
        });
        shapes.insert(table.to_owned(), Arc::clone(&shape));
        Ok(shape)
    }
}

/// The statements of one table, each prepared on its first use in a
/// segment and kept for the rest of it: looking a statement up in the cache,
/// resetting and returning it for every change cost more than binding and
/// running it.
pub(super) struct TableStatements<'c> {
    pub(super) shape: Arc<TableShape>,
    pub(super) insert: Option<CachedStatement<'c>>,
    pub(super) update: Option<CachedStatement<'c>>,
    pub(super) delete: Option<CachedStatement<'c>>,
}

/// The statements of one apply, by table name.
#[derive(Default)]
pub(super) struct Tables<'c, 's> {
    pub(super) list: Vec<(&'s str, TableStatements<'c>)>,
    /// Index in `list` of each table.
    pub(super) index: HashMap<&'s str, usize>,
    /// Index in `list` of the table of the previous change: runs of changes
    /// to one table are the common case, and comparing a name costs less
    /// than hashing it.
    pub(super) last: usize,
}

impl<'c, 's> Tables<'c, 's> {
    /// The statements of `table` (its shape from the cache or the replica's
    /// schema on first use).
    pub(super) fn get(
        &mut self,
        tx: &'c Connection,
        shapes: &mut HashMap<String, Arc<TableShape>>,
        commit_id: CommitId,
        table: &'s str,
    ) -> Result<&mut TableStatements<'c>, ApplyError> {
        if self.list.get(self.last).map(|t| t.0) != Some(table) {
            self.last = match self.index.entry(table) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => {
                    let shape = shape(tx, shapes, commit_id, table)?;
                    self.list.push((
                        table,
                        TableStatements {
                            shape,
                            insert: None,
                            update: None,
                            delete: None,
                        },
                    ));
                    *e.insert(self.list.len() - 1)
                }
            };
        }
        Ok(&mut self.list[self.last].1)
    }

    /// Forgets every table's statements and shape (after a schema record;
    /// rare enough that the others are simply looked up again).
    pub(super) fn clear(&mut self) {
        self.list.clear();
        self.index.clear();
        self.last = 0;
    }
}

/// `slot`'s statement, prepared from `sql` if it is the first use.
pub(super) fn prepared<'a, 'c>(
    tx: &'c Connection,
    slot: &'a mut Option<CachedStatement<'c>>,
    sql: &str,
    doing: &'static str,
    commit_id: CommitId,
) -> Result<&'a mut CachedStatement<'c>, ApplyError> {
    match slot {
        Some(s) => Ok(s),
        None => Ok(slot.insert(
            tx.prepare_cached(sql)
                .map_err(sql_err(doing, Some(commit_id)))?,
        )),
    }
}

/// Binds `values` by index and runs `s`; the rows it changed. The caller
/// checked that there are exactly as many values as parameters, so no
/// binding of an earlier run survives.
pub(super) fn run<'v>(
    s: &mut CachedStatement<'_>,
    values: impl Iterator<Item = &'v Value>,
) -> rusqlite::Result<usize> {
    for (i, v) in values.enumerate() {
        s.raw_bind_parameter(i + 1, to_sql(v))?;
    }
    s.raw_execute()
}

pub(super) fn apply_change<'c, 's>(
    tx: &'c Connection,
    shapes: &mut HashMap<String, Arc<TableShape>>,
    tables: &mut Tables<'c, 's>,
    commit_id: CommitId,
    change: &'s Change,
) -> Result<(), ApplyError> {
    let err = |doing| sql_err(doing, Some(commit_id));
    match change {
        Change::Schema {
            table,
            sql,
            indexes,
        } => {
            shapes.remove(table);
            tables.clear();
            apply_schema(tx, commit_id, table, sql, indexes)
        }
        Change::Alter {
            statements,
            tables: altered,
        } => {
            shapes.clear();
            tables.clear();
            apply_alter(tx, commit_id, statements, altered)
        }
        Change::Unreplicate { table } => {
            shapes.retain(|t, _| !t.eq_ignore_ascii_case(table));
            tables.clear();
            apply_unreplicate(tx, commit_id, table)
        }
        Change::Insert { table, values } => {
            let t = tables.get(tx, shapes, commit_id, table)?;
            check_count(commit_id, table, "values", t.shape.columns, values.len())?;
            let s = prepared(
                tx,
                &mut t.insert,
                &t.shape.insert,
                "preparing INSERT",
                commit_id,
            )?;
            run(s, values.iter()).map_err(err("applying INSERT"))?;
            Ok(())
        }
        Change::Update { table, key, values } => {
            let t = tables.get(tx, shapes, commit_id, table)?;
            check_count(commit_id, table, "values", t.shape.columns, values.len())?;
            check_count(commit_id, table, "key values", t.shape.key_len, key.len())?;
            let s = prepared(
                tx,
                &mut t.update,
                &t.shape.update,
                "preparing UPDATE",
                commit_id,
            )?;
            let n = run(s, values.iter().chain(key)).map_err(err("applying UPDATE"))?;
            exactly_one(commit_id, table, "UPDATE", key, n)
        }
        Change::Delete { table, key } | Change::Discard { table, key } => {
            let t = tables.get(tx, shapes, commit_id, table)?;
            check_count(commit_id, table, "key values", t.shape.key_len, key.len())?;
            let s = prepared(
                tx,
                &mut t.delete,
                &t.shape.delete,
                "preparing DELETE",
                commit_id,
            )?;
            let n = run(s, key.iter()).map_err(err("applying DELETE"))?;
            match change {
                Change::Discard { .. } => Ok(()),
                _ => exactly_one(commit_id, table, "DELETE", key, n),
            }
        }
    }
}

pub(super) fn check_count(
    commit_id: CommitId,
    table: &str,
    what: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), ApplyError> {
    if expected == actual {
        Ok(())
    } else {
        Err(ApplyError::ColumnCount {
            commit_id,
            table: table.into(),
            what,
            expected,
            actual,
        })
    }
}

pub(super) fn exactly_one(
    commit_id: CommitId,
    table: &str,
    operation: &'static str,
    key: &[Value],
    matched: usize,
) -> Result<(), ApplyError> {
    if matched == 1 {
        Ok(())
    } else {
        Err(ApplyError::Divergence {
            commit_id,
            table: table.into(),
            operation,
            key: literal(key),
            matched,
        })
    }
}

/// The `CREATE UNIQUE INDEX` statements of `table` on this replica, by
/// index name (as the primary lists them in schema records).
pub(super) fn replica_indexes(
    tx: &Connection,
    commit_id: CommitId,
    table: &str,
) -> Result<Vec<String>, ApplyError> {
    let mut s = tx
        .prepare(crate::table_info::INDEXES_SQL)
        .map_err(sql_err("reading the replica's indexes", Some(commit_id)))?;
    let rows = s
        .query_map([table], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(sql_err("reading the replica's indexes", Some(commit_id)));
    rows
}
