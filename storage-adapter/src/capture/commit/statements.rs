//! The statements a commit runs (final rows of touched keys, the WAL
//! tables), prepared once and kept by the capture table for the life of the
//! connection's schema.

use super::changes::Changes;
use super::check_attached;
use crate::capture::buffer::TxBuffer;
use crate::capture::tables::{self, TableInfo};
use crate::capture::{sqlite, CaptureError};
use crate::raw::{RawConn, Stmt};
use crate::values::{sqlite_value, wal_value};
use replication::wal::{
    decode_value_list, encode_count, encode_value, ChainPosition, CommitId, Generation, WalOffset,
};
use std::collections::HashMap;
use std::rc::Rc;

/// Statements the commit runs, kept by the capture table for the life of
/// the connection's schema (see `vtab.rs`).
#[derive(Default)]
pub(crate) struct Statements {
    pub(super) head: Option<Stmt<'static>>,
    pub(super) journal_mode: Option<Stmt<'static>>,
    pub(super) database_list: Option<Stmt<'static>>,
    pub(super) insert_record: Option<Stmt<'static>>,

    /// Replicated tables as the registry and schema describe them, read
    /// when the head statement had been prepared `tables_at` times again.
    pub(super) tables: HashMap<String, TableCommit>,
    /// A foreign key with an action whose parent is a replicated table
    /// (read with `tables`): while `foreign_keys` is on, its action writes
    /// before the change that caused it reaches its capture trigger.
    pub(super) cascade: Option<String>,
    /// A user trigger on a replicated table (read with `tables`): a BEFORE
    /// one can write a row that the REPLACE its statement is about to do
    /// deletes without a trigger, and one that fires before capture can
    /// write while a change waits for its capture trigger.
    pub(super) user_trigger: Option<String>,
    pub(super) tables_at: Option<i32>,
    /// `PRAGMA main.schema_version` and `temp.schema_version` when
    /// `tables` was read: while they are the same, so are the triggers.
    pub(super) cookies_at: Option<(i64, i64)>,
    pub(super) main_cookie: Option<Stmt<'static>>,
    pub(super) temp_cookie: Option<Stmt<'static>>,
    /// Scratch space kept between commits.
    pub(super) changes: Changes,
    pub(super) looked_up: Vec<u8>,
}

pub(super) struct TableCommit {
    pub(super) info: Rc<TableInfo>,
    pub(super) lookup: Option<Stmt<'static>>,
}

pub(super) fn kept<'a>(
    slot: &'a mut Option<Stmt<'static>>,
    conn: RawConn,
    sql: &str,
) -> Result<&'a mut Stmt<'static>, CaptureError> {
    if slot.is_none() {
        // SAFETY: kept in the capture table, which SQLite disconnects (and
        // so finalizes these) before it closes the connection.
        *slot = Some(unsafe { conn.prepare_kept(sql) }.map_err(sqlite("preparing capture SQL"))?);
    }
    Ok(slot.as_mut().expect("just filled"))
}

impl Statements {
    /// Makes the table descriptions current and checks that every table
    /// this transaction wrote still has the shape its capture was made for
    /// (a transaction that altered a replicated table and then wrote it
    /// fails here, before anything uncaptured can commit).
    ///
    /// `version` counts the schema changes the head statement saw (see
    /// [`Statements::head`]): the descriptions are read again when it moved.
    pub(super) fn check_tables(
        &mut self,
        conn: RawConn,
        buffer: &TxBuffer,
        version: i32,
    ) -> Result<(), CaptureError> {
        let version = Some(version);
        if version.is_none() || version != self.tables_at {
            self.tables.clear();
            self.tables_at = None;
            self.check_connection(conn)?;
            for name in &buffer.tables {
                tables::verify(conn, name)?;
            }
            self.cascade = tables::cascade_into_replicated(conn)?;
            self.user_trigger = tables::user_trigger_on_replicated(conn)?;
            for info in tables::registered(conn)? {
                self.tables.insert(
                    info.name.clone(),
                    TableCommit {
                        info: Rc::new(info),
                        lookup: None,
                    },
                );
            }
            self.tables_at = version;
            self.cookies_at = self.cookies(conn).ok();
        }
        // A trigger that can skip capture refuses every write to
        // replicated tables: the write it skipped left no touch to name it.
        if let Some(t) = self.tables.values().find(|t| t.info.raises_first.is_some()) {
            return Err(CaptureError::UnsafeTrigger {
                table: t.info.name.clone(),
                trigger: t.info.raises_first.clone().unwrap_or_default(),
            });
        }
        for name in &buffer.tables {
            match self.tables.get(name) {
                None => {
                    return Err(CaptureError::CaptureBroken {
                        table: name.clone(),
                        problem: "it is not in aerodb_tables (its capture triggers outlived its registration)".into(),
                    })
                }
                Some(t) => {
                    if let Some(trigger) = &t.info.raises_first {
                        return Err(CaptureError::UnsafeTrigger {
                            table: name.clone(),
                            trigger: trigger.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The main and temp schemas' change counters.
    pub(super) fn cookies(&mut self, conn: RawConn) -> Result<(i64, i64), CaptureError> {
        let read = |slot: &mut Option<Stmt<'static>>, sql: &str| -> Result<i64, CaptureError> {
            let s = kept(slot, conn, sql)?;
            let v = if s.step().map_err(sqlite("reading the schema version"))? {
                s.column(0).as_i64().unwrap_or(0)
            } else {
                0
            };
            s.reset();
            Ok(v)
        };
        Ok((
            read(&mut self.main_cookie, "PRAGMA main.schema_version")?,
            read(&mut self.temp_cookie, "PRAGMA temp.schema_version")?,
        ))
    }

    /// With the table descriptions read while the schemas were as they are
    /// now: the (table, trigger) of a trigger that can skip capture, if
    /// any. `None` when they may be out of date.
    pub(super) fn unsafe_trigger_now(&mut self, conn: RawConn) -> Option<Option<(String, String)>> {
        let now = self.cookies(conn).ok()?;
        (self.tables_at.is_some() && self.cookies_at == Some(now)).then(|| {
            self.tables.values().find_map(|t| {
                t.info
                    .raises_first
                    .clone()
                    .map(|trigger| (t.info.name.clone(), trigger))
            })
        })
    }

    /// Why the buffer cannot be spilled from a capture trigger in the
    /// middle of a statement (`None`: it can): a change can then still be
    /// waiting for its own capture trigger, so the touched keys' rows of
    /// that moment are not a state the replica may pass through. After
    /// [`Statements::check_tables`].
    pub(super) fn nesting(&self, conn: RawConn) -> Result<Option<String>, CaptureError> {
        if let Some(trigger) = &self.user_trigger {
            return Ok(Some(trigger.clone()));
        }
        if let Some(t) = self.tables.values().find(|t| !t.info.order_known) {
            return Ok(Some(format!(
                "a trigger on '{}' fires before its capture triggers (or a foreign key of it to itself has an action)",
                t.info.name
            )));
        }
        if let Some(cascade) = &self.cascade {
            let on = conn
                .query_value("PRAGMA foreign_keys", &[])
                .map_err(sqlite("reading PRAGMA foreign_keys"))?
                .and_then(|v| v.as_i64());
            if on == Some(1) {
                return Ok(Some(cascade.clone()));
            }
        }
        Ok(None)
    }

    /// Refuses to capture into a database whose journal cannot undo a
    /// statement (`journal_mode=OFF`: a statement whose capture failed
    /// would keep its row), and on a connection that has a copy of its
    /// primary attached (same generation: the copy's capture triggers
    /// would record its writes as the primary's). Run with the table
    /// descriptions, when the head statement was prepared again: ATTACH
    /// and DETACH expire every statement, and so does any schema change;
    /// a later `PRAGMA journal_mode=OFF` alone is not noticed (it costs a
    /// statement per commit to watch).
    pub(super) fn check_connection(&mut self, conn: RawConn) -> Result<(), CaptureError> {
        // Plain pragmas: their table-valued forms prepare SQL on every run.
        let s = kept(&mut self.journal_mode, conn, "PRAGMA main.journal_mode")?;
        let r = s.step().map_err(sqlite("reading the journal mode"));
        let mode = match r {
            Ok(true) => s.column(0).into_string().unwrap_or_default(),
            Ok(false) => String::new(),
            Err(e) => {
                s.reset();
                return Err(e);
            }
        };
        s.reset();
        let s = kept(&mut self.database_list, conn, "PRAGMA database_list")?;
        let mut names = Vec::new();
        loop {
            match s.step() {
                Ok(true) => {
                    let name = s.column(1).into_string().unwrap_or_default();
                    if name != "main" && name != "temp" {
                        names.push(name);
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    s.reset();
                    return Err(sqlite("listing attached databases")(e));
                }
            }
        }
        s.reset();
        let attached = (!names.is_empty()).then(|| names.join("\u{1e}"));
        if mode.eq_ignore_ascii_case("off") {
            return Err(CaptureError::JournalOff);
        }
        if let Some(attached) = attached {
            check_attached(conn, &attached)?;
        }
        Ok(())
    }

    /// The position after the newest sealed record, and how many times
    /// SQLite prepared the head statement again. SQLite does so after any
    /// change of the main schema (by any connection) and after any change
    /// of this connection's TEMP schema (which expires every statement), so
    /// a new count means a replicated table's shape or the triggers on it
    /// may have changed; no `PRAGMA schema_version` per commit.
    pub(super) fn head(
        &mut self,
        conn: RawConn,
        generation: Generation,
    ) -> Result<(ChainPosition, i32), CaptureError> {
        let s = kept(
            &mut self.head,
            conn,
            "SELECT commit_id, wal_offset, length, chain FROM main.aerodb_commits ORDER BY commit_id DESC LIMIT 1",
        )?;
        let r = s.step().map_err(sqlite("reading the WAL head"));
        let position = match r {
            Ok(true) => {
                let col = |i| s.column(i).as_i64().unwrap_or(-1);
                let (c, offset, len, chain) = (col(0), col(1), col(2), col(3));
                if c < 0 || offset < 0 || len < 0 || chain < 0 {
                    s.reset();
                    return Err(CaptureError::Wal(crate::WalReadError::Corrupt {
                        commit_id: CommitId(c.max(0) as u64),
                        problem: "its sealed row holds values that are not non-negative integers"
                            .into(),
                    }));
                }
                ChainPosition {
                    generation,
                    commit_id: CommitId(c as u64),
                    wal_offset: WalOffset(offset as u64 + len as u64),
                    chain: chain as u32,
                }
            }
            Ok(false) => ChainPosition::genesis(generation),
            Err(e) => {
                s.reset();
                return Err(e);
            }
        };
        let reprepared = s.reprepares();
        s.reset();
        Ok((position, reprepared))
    }

    /// Reads the row of `key` (an encoded value list) of `table` now: its
    /// encoded value list appended to `out`, or `false` if there is none.
    pub(super) fn lookup(
        &mut self,
        conn: RawConn,
        table: &str,
        key: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, CaptureError> {
        let t = self
            .tables
            .get_mut(table)
            .expect("check_tables found every touched table");
        let doing = || format!("reading the final row of a touched key of '{table}'");
        let s = kept(&mut t.lookup, conn, &t.info.lookup_sql)?;
        let values = decode_value_list(key).map_err(|problem| CaptureError::Sqlite {
            doing: doing(),
            source: crate::raw::RawError {
                code: rusqlite::ffi::SQLITE_INTERNAL,
                message: format!("captured key does not decode: {problem}"),
                sql: String::new(),
            },
        })?;
        for (i, v) in values.iter().enumerate() {
            s.bind(i + 1, sqlite_value(v)).map_err(sqlite(doing()))?;
        }
        let found = match s.step() {
            Ok(found) => found,
            Err(e) => {
                s.reset();
                return Err(sqlite(doing())(e));
            }
        };
        if found {
            let n = t.info.columns;
            let r = encode_count(out, n).and_then(|()| {
                (0..n).try_for_each(|i| encode_value(out, wal_value(s.column_ref(i))))
            });
            if let Err(source) = r {
                s.reset();
                return Err(CaptureError::Encode {
                    table: table.to_owned(),
                    source,
                });
            }
        }
        s.reset();
        Ok(found)
    }
}
