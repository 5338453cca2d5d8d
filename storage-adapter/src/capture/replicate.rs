//! `aerodb_replicate(table)`: checks that a table can be replicated,
//! installs its capture triggers, registers it and puts its schema record
//! (with the rows it holds) into the open transaction's record.

use super::commit::SpillPoint;
use super::tables::{self, LIST_SEPARATOR};
use super::{lock, primary_generation, sqlite, CaptureError, Shared};
use crate::primary_wal::WalTables;
use crate::raw::RawConn;
use crate::table_info::{self, quote_ident, quote_literal, Column, KeyColumn, UniqueIndex};
use replication::wal::{
    encode_change, encode_change_header, encode_count, encode_value, Change, CommitId, Generation,
    Operation,
};
use rusqlite::ffi;
use rusqlite::types::ValueRef;

/// Arguments `aerodb_capture_row` takes before the key.
const FIXED_ARGS: usize = 4;

/// A table as `aerodb_replicate` found it.
pub(super) struct Found {
    /// Its name as its CREATE TABLE spells it.
    pub(super) name: String,
    pub(super) sql: String,
    pub(super) columns: Vec<Column>,
    pub(super) key: Vec<KeyColumn>,
    pub(super) unique: Vec<UniqueIndex>,
    pub(super) indexes: Vec<String>,
    /// Two equal keys may differ in bytes (collation, no affinity).
    pub(super) inexact_key: bool,
}

pub(super) fn find(conn: RawConn, table: &str) -> Result<Found, CaptureError> {
    let refused = |name: &str, reason: String| CaptureError::Refused {
        table: name.to_owned(),
        reason,
    };
    let mut q = conn
        .prepare("SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1 COLLATE NOCASE")
        .map_err(sqlite("looking up the table"))?;
    q.bind(1, ValueRef::Text(table.as_bytes()))
        .map_err(sqlite("looking up the table"))?;
    if !q.step().map_err(sqlite("looking up the table"))? {
        return Err(CaptureError::NoSuchTable {
            table: table.into(),
        });
    }
    let (name, kind, without_rowid) = (
        q.column(0).into_string().unwrap_or_default(),
        q.column(1).into_string(),
        q.column(2).as_i64() == Some(1),
    );
    drop(q);
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("aerodb_") || lower.starts_with("sqlite_") {
        return Err(refused(
            &name,
            "names starting with aerodb_ or sqlite_ are reserved".into(),
        ));
    }
    if kind.as_deref() != Some("table") {
        return Err(refused(
            &name,
            format!(
                "it is a {}, only ordinary tables can be replicated",
                kind.as_deref().unwrap_or("schema object of unknown type")
            ),
        ));
    }
    let doing = || format!("reading the shape of '{name}'");
    // A STORED generated column holds what the primary's SQLite computed
    // when the row was written; the replica's SQLite would compute its own
    // (another version, another function of the same name), and no record
    // could make it hold the primary's: refused. VIRTUAL ones are computed
    // when read, on each side, and stored nowhere.
    if let Some(column) =
        table_info::stored_generated(conn, "main", &name).map_err(sqlite(doing()))?
    {
        return Err(refused(
            &name,
            format!(
                "its column '{column}' is GENERATED ... STORED: the replica's SQLite would compute it again rather than hold the value the primary stored; make it VIRTUAL, or a plain column the application writes"
            ),
        ));
    }
    let columns = table_info::columns(conn, "main", &name).map_err(sqlite(doing()))?;
    let key = table_info::primary_key(conn, "main", &name).map_err(sqlite(doing()))?;
    if key.is_empty() {
        return Err(refused(
            &name,
            "it has no PRIMARY KEY; AeroDB replicates rows by primary key because rowids are not stable across VACUUM. Declare an explicit PRIMARY KEY".into(),
        ));
    }
    // A rowid table's key is the rowid (never NULL) exactly when SQLite made
    // no index for it: `INTEGER PRIMARY KEY` but not `INTEGER PRIMARY KEY
    // DESC`, whose column can hold NULL. WITHOUT ROWID keys are NOT NULL.
    let rowid_key = table_info::key_is_rowid(conn, "main", &name).map_err(sqlite(doing()))?;
    if !without_rowid && !rowid_key {
        for k in &key {
            if columns.iter().any(|c| c.name == k.name && !c.not_null) {
                return Err(refused(
                    &name,
                    format!(
                        "primary key column '{}' may be NULL (SQLite allows NULL keys in rowid tables), so rows cannot be identified; declare it NOT NULL",
                        k.name
                    ),
                ));
            }
        }
    }
    let unique = table_info::unique_indexes(conn, "main", &name).map_err(sqlite(doing()))?;
    if let Some(u) = unique.iter().find(|u| u.expression) {
        return Err(refused(
            &name,
            format!(
                "its UNIQUE index '{}' is on an expression: rows a REPLACE deletes through it cannot be captured",
                u.name
            ),
        ));
    }
    let sql = conn
        .query_value(
            "SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
            &[ValueRef::Text(name.as_bytes())],
        )
        .map_err(sqlite("reading the table's schema"))?
        .and_then(|v| v.into_string())
        .ok_or_else(|| {
            refused(
                &name,
                "its CREATE TABLE statement is not in sqlite_schema".into(),
            )
        })?;
    let indexes = tables::indexes_of(conn, &name)?;
    let inexact_key = !table_info::key_is_exact(&columns, &key, rowid_key);
    Ok(Found {
        inexact_key,
        name,
        sql,
        columns,
        key,
        unique,
        indexes,
    })
}

fn function_arg_limit(conn: RawConn) -> usize {
    // SAFETY: the connection is open; a negative value only reads.
    let n = unsafe { ffi::sqlite3_limit(conn.handle(), ffi::SQLITE_LIMIT_FUNCTION_ARG, -1) };
    usize::try_from(n).unwrap_or(0)
}

fn trigger_name(kind: &str, table: &str) -> String {
    format!("aerodb_capture_{kind}_{table}")
}

/// The capture triggers of `t`: (names, DDL).
pub(super) fn triggers(
    conn: RawConn,
    t: &Found,
    generation: Generation,
) -> Result<(Vec<String>, String), CaptureError> {
    let limit = function_arg_limit(conn);
    let nkey = t.key.len();
    if FIXED_ARGS + 2 * nkey > limit {
        return Err(CaptureError::Refused {
            table: t.name.clone(),
            reason: format!(
                "its primary key has {nkey} columns; this SQLite passes at most {limit} arguments to a function, so at most {} key columns can be captured",
                (limit.saturating_sub(FIXED_ARGS)) / 2
            ),
        });
    }
    // Only keys are handed over, and rows read at commit, for tables too
    // wide to hand every value to one call, and for probed tables: there a
    // row a trigger saw can still be deleted by a later REPLACE without a
    // trigger (one written by a BEFORE trigger that runs after the probe).
    let key_only =
        FIXED_ARGS + 2 * nkey + t.columns.len() > limit || !t.unique.is_empty() || t.inexact_key;
    let q = quote_ident(&t.name);
    let lit = quote_literal(&t.name);
    let g = generation.0 as i64;
    let col = |prefix: &str, name: &str| format!("{prefix}.{}", quote_ident(name));
    let key =
        |prefix: &str| -> Vec<String> { t.key.iter().map(|k| col(prefix, &k.name)).collect() };
    let all =
        |prefix: &str| -> Vec<String> { t.columns.iter().map(|c| col(prefix, &c.name)).collect() };
    let call = |event: u8, args: Vec<String>| {
        format!(
            "INSERT INTO aerodb_capture SELECT 1 WHERE aerodb_capture_row({g}, {lit}, {event}, {nkey}, {});",
            args.join(", ")
        )
    };
    let mut names = Vec::new();
    let mut ddl = String::new();
    let mut add = |kind: &str, timing: &str, body: String| {
        let name = trigger_name(kind, &t.name);
        ddl += &format!(
            "CREATE TRIGGER main.{} {timing} ON {q} BEGIN {body} END;\n",
            quote_ident(&name)
        );
        names.push(name);
    };
    let (insert, update) = if key_only {
        (
            call(5, key("NEW")),
            call(6, [key("OLD"), key("NEW")].concat()),
        )
    } else {
        (
            call(1, [key("NEW"), all("NEW")].concat()),
            call(2, [key("OLD"), key("NEW"), all("NEW")].concat()),
        )
    };
    add("insert", "AFTER INSERT", insert);
    add("update", "AFTER UPDATE", update);
    add("delete", "AFTER DELETE", call(3, key("OLD")));
    if !t.unique.is_empty() || t.inexact_key {
        // A REPLACE deletes the rows holding the new row's unique values
        // (or its key, spelled otherwise) without firing a trigger
        // (recursive_triggers is off by default): note those rows first,
        // so their fate is read at commit.
        // The row with the new row's key is probed too: a REPLACE deletes
        // it as well, and a key found absent here is known to be new.
        let key_index = UniqueIndex {
            name: String::new(),
            columns: t.key.clone(),
            expression: false,
        };
        let candidates: Vec<String> = std::iter::once(&key_index)
            .chain(&t.unique)
            .map(|u| {
                let matched = u
                    .columns
                    .iter()
                    .map(|c| {
                        format!(
                            "{} = NEW.{} COLLATE {}",
                            col("aerodb_old", &c.name),
                            quote_ident(&c.name),
                            quote_ident(&c.collation)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" AND ");
                format!(
                    "INSERT INTO aerodb_capture SELECT 1 FROM {q} AS aerodb_old WHERE {matched} AND CASE WHEN {matched} THEN aerodb_capture_row({g}, {lit}, 4, {nkey}, {}) ELSE 0 END;",
                    key("aerodb_old").join(", ")
                )
            })
            .collect();
        // Every UPDATE: `UPDATE OF` lists match the names written in SET,
        // which miss `rowid` for the key and generated columns.
        add("before_insert", "BEFORE INSERT", candidates.join(" "));
        add("before_update", "BEFORE UPDATE", candidates.join(" "));
    }
    Ok((names, ddl))
}

/// `aerodb_replicate(table)`. On a table already replicated with the
/// definition, columns and indexes it has now, nothing is shipped: its
/// capture triggers are installed again (so they fire before any trigger
/// created since) and the CommitId of its schema record is returned.
pub(super) fn replicate(
    shared: &Shared,
    conn: RawConn,
    table: &str,
) -> Result<CommitId, CaptureError> {
    let wal = WalTables::new(conn);
    let generation = primary_generation(&wal)?;
    let t = find(conn, table)?;
    let (names, ddl) = triggers(conn, &t, generation)?;
    if let Some((since, old)) = unchanged(conn, &t, &names, &ddl)? {
        all_or_nothing(conn, "aerodb_replicate", || {
            let drops = drop_triggers(
                old.split(LIST_SEPARATOR)
                    .chain(names.iter().map(String::as_str)),
            );
            conn.execute_batch(&format!("{drops}{ddl}"))
                .map_err(sqlite(format!(
                    "installing capture triggers on '{}'",
                    t.name
                )))?;
            conn.execute(
                "UPDATE main.aerodb_tables SET triggers = ?2 WHERE name = ?1",
                &[
                    ValueRef::Text(t.name.as_bytes()),
                    ValueRef::Text(names.join(&LIST_SEPARATOR.to_string()).as_bytes()),
                ],
            )
            .map_err(sqlite("registering the table"))?;
            note_schema(conn)
        })?;
        tracing::info!(
            table = t.name,
            "already replicated as it is: capture installed again"
        );
        return Ok(since);
    }
    resync_found(shared, conn, &t, generation, &names, &ddl)
}

/// `DROP TRIGGER IF EXISTS` statements for the triggers `names` (empty
/// names skipped).
fn drop_triggers<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .filter(|n| !n.is_empty())
        .map(|n| format!("DROP TRIGGER IF EXISTS main.{};\n", quote_ident(n)))
        .collect()
}

/// `aerodb_resync(table)`: a replicated table shipped again, whole: its
/// schema record and every row, in the calling transaction. Each replica
/// replaces its copy with it (the repair after writes made without
/// capture, say by a connection that turned triggers off).
pub(super) fn resync(
    shared: &Shared,
    conn: RawConn,
    table: &str,
) -> Result<CommitId, CaptureError> {
    let generation = primary_generation(&WalTables::new(conn))?;
    let t = find(conn, table).map_err(|e| match e {
        CaptureError::NoSuchTable { table } => CaptureError::ResyncRefused {
            reason: format!("there is no table named '{table}'"),
        },
        other => other,
    })?;
    let registered = conn
        .query_value(
            "SELECT 1 FROM main.aerodb_tables WHERE name = ?1 COLLATE NOCASE",
            &[ValueRef::Text(t.name.as_bytes())],
        )
        .map_err(sqlite("reading aerodb_tables"))?;
    if registered.is_none() {
        return Err(CaptureError::ResyncRefused {
            reason: format!(
                "'{}' is not replicated; start with aerodb_replicate('{}')",
                t.name, t.name
            ),
        });
    }
    let (names, ddl) = triggers(conn, &t, generation)?;
    resync_found(shared, conn, &t, generation, &names, &ddl)
}

fn resync_found(
    shared: &Shared,
    conn: RawConn,
    t: &Found,
    generation: Generation,
    names: &[String],
    ddl: &str,
) -> Result<CommitId, CaptureError> {
    let c = all_or_nothing(conn, "aerodb_replicate", || {
        install(shared, conn, t, generation, names, ddl)
    })?;
    tracing::info!(table = t.name, commit_id = c.0, "replicating table");
    Ok(c)
}

/// If `t` is registered under the same name with the definition, columns
/// and indexes it has now, and every capture trigger of it is in place as
/// `ddl` would create it (a table dropped and created again lost its
/// triggers with it, and its rows changed unseen): its schema record's
/// CommitId and its capture triggers' names.
/// Records the schema version AeroDB's own DDL left (replicate, alter,
/// unreplicate): a later schema change by anything else (a table dropped
/// and created again, even with its capture triggers restored from a dump)
/// moves it, and then no table counts as unchanged.
pub(super) fn note_schema(conn: RawConn) -> Result<(), CaptureError> {
    conn.execute(
        "INSERT OR REPLACE INTO main.aerodb_meta(key, value) SELECT 'schema_version_seen', schema_version FROM pragma_schema_version",
        &[],
    )
    .map_err(sqlite("recording the schema version"))?;
    Ok(())
}

fn unchanged(
    conn: RawConn,
    t: &Found,
    names: &[String],
    ddl: &str,
) -> Result<Option<(CommitId, String)>, CaptureError> {
    // Nothing but AeroDB changed the schema since it last did.
    let seen = conn
        .query_value(
            "SELECT (SELECT value FROM main.aerodb_meta WHERE key = 'schema_version_seen') = (SELECT schema_version FROM pragma_schema_version)",
            &[],
        )
        .map_err(sqlite("reading the schema version"))?
        .and_then(|v| v.as_i64());
    if seen != Some(1) {
        return Ok(None);
    }
    let expected: Vec<String> = ddl
        .split(";\n")
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.replacen("CREATE TRIGGER main.", "CREATE TRIGGER ", 1))
        .collect();
    for (name, sql) in names.iter().zip(&expected) {
        let stored = conn
            .query_value(
                "SELECT sql FROM main.sqlite_schema WHERE type = 'trigger' AND name = ?1 AND tbl_name = ?2",
                &[ValueRef::Text(name.as_bytes()), ValueRef::Text(t.name.as_bytes())],
            )
            .map_err(sqlite("reading capture triggers"))?
            .and_then(|v| v.into_string());
        if stored.as_deref() != Some(sql.as_str()) {
            return Ok(None);
        }
    }
    if names.len() != expected.len() {
        return Ok(None);
    }
    let mut s = conn
        .prepare(
            "SELECT schema_commit_id, sql, columns, indexes, triggers FROM main.aerodb_tables WHERE name = ?1",
        )
        .map_err(sqlite("reading aerodb_tables"))?;
    s.bind(1, ValueRef::Text(t.name.as_bytes()))
        .map_err(sqlite("reading aerodb_tables"))?;
    if !s.step().map_err(sqlite("reading aerodb_tables"))? {
        return Ok(None);
    }
    let text = |i| s.column(i).into_string().unwrap_or_default();
    let same = text(1) == t.sql
        && text(2) == tables::shape_of(&t.columns)
        && text(3) == t.indexes.join(&LIST_SEPARATOR.to_string());
    let since = s.column(0).as_i64().unwrap_or(0);
    Ok(same.then(|| (CommitId(since as u64), text(4))))
}

/// Runs `f` in savepoint `name`: all or nothing, even when called from a
/// statement in autocommit mode.
pub(super) fn all_or_nothing<T>(
    conn: RawConn,
    name: &str,
    f: impl FnOnce() -> Result<T, CaptureError>,
) -> Result<T, CaptureError> {
    conn.execute_batch(&format!("SAVEPOINT {name}"))
        .map_err(sqlite("opening a savepoint"))?;
    match f() {
        Ok(t) => {
            conn.execute_batch(&format!("RELEASE {name}"))
                .map_err(sqlite(format!("committing {name}")))?;
            Ok(t)
        }
        Err(e) => {
            let _ = conn.execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"));
            Err(e)
        }
    }
}

fn install(
    shared: &Shared,
    conn: RawConn,
    t: &Found,
    generation: Generation,
    names: &[String],
    ddl: &str,
) -> Result<CommitId, CaptureError> {
    // Triggers of an earlier aerodb_replicate of this table go first.
    let old = conn
        .query_value(
            "SELECT group_concat(triggers, char(30)) FROM main.aerodb_tables WHERE name = ?1 COLLATE NOCASE",
            &[ValueRef::Text(t.name.as_bytes())],
        )
        .map_err(sqlite("reading aerodb_tables"))?
        .and_then(|v| v.into_string())
        .unwrap_or_default();
    let drops = drop_triggers(
        old.split(LIST_SEPARATOR)
            .chain(names.iter().map(String::as_str)),
    );
    conn.execute_batch(&format!("{drops}{ddl}"))
        .map_err(sqlite(format!(
            "installing capture triggers on '{}'",
            t.name
        )))?;
    // The capture table joins the transaction (a statement that writes it,
    // inserting nothing), so the schema record is written at its commit.
    conn.execute_batch("INSERT INTO aerodb_capture SELECT 1 WHERE 0")
        .map_err(sqlite("joining the capture table to the transaction"))?;
    let commit_id = WalTables::new(conn).head()?.next();
    register(conn, t, commit_id, names, &t.name)?;
    note_schema(conn)?;
    let encoded = |source| CaptureError::Encode {
        table: t.name.clone(),
        source,
    };
    let schema = encode_change(&Change::Schema {
        table: t.name.clone(),
        sql: t.sql.clone(),
        indexes: t.indexes.clone(),
    })
    .map_err(encoded)?;
    {
        let mut s = lock(shared);
        s.tx_generation = Some(generation);
        s.buffer.push_section(&schema);
    }
    // The table's rows at this commit follow the schema change in the same
    // record: a replica starts it from exactly the primary's content (also
    // after DROP/CREATE and replicate again).
    let names: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let doing = || format!("reading the rows of '{}'", t.name);
    let mut rows = conn
        .prepare(&format!(
            "SELECT {} FROM main.{}",
            names.join(", "),
            quote_ident(&t.name)
        ))
        .map_err(sqlite(doing()))?;
    let mut change = Vec::new();
    // The rows go out in records that continue, a chunk at a time, so a
    // table of any size is replicated with bounded memory. The statements
    // a spill runs are finalized when this call returns.
    let mut stmts = super::commit::Statements::default();
    while rows.step().map_err(sqlite(doing()))? {
        change.clear();
        encode_change_header(&mut change, Operation::Insert, &t.name).map_err(encoded)?;
        encode_count(&mut change, t.columns.len()).map_err(encoded)?;
        for i in 0..t.columns.len() {
            encode_value(&mut change, crate::values::wal_value(rows.column_ref(i)))
                .map_err(encoded)?;
        }
        let mut s = lock(shared);
        s.buffer.push_section(&change);
        if s.buffer.bytes() > s.chunk_bytes {
            super::commit::spill(conn, &mut stmts, &mut s, SpillPoint::Replicate)?;
        }
    }
    Ok(commit_id)
}

/// `aerodb_unreplicate(table)`: stops capturing `table` (its triggers and
/// registry row go) and puts an Unreplicate change into the open
/// transaction's record, so every replica stops maintaining it at that
/// commit and keeps it as a plain table. Its rows stay on the primary.
pub(super) fn unreplicate(
    shared: &Shared,
    conn: RawConn,
    table: &str,
) -> Result<CommitId, CaptureError> {
    let wal = WalTables::new(conn);
    let generation = primary_generation(&wal)?;
    let registered = conn
        .query_value(
            "SELECT name || char(30) || triggers FROM main.aerodb_tables WHERE name = ?1 COLLATE NOCASE",
            &[ValueRef::Text(table.as_bytes())],
        )
        .map_err(sqlite("reading aerodb_tables"))?
        .and_then(|v| v.into_string())
        .ok_or_else(|| CaptureError::UnreplicateRefused {
            table: table.to_owned(),
            reason: "it is not replicated (no row in aerodb_tables)".into(),
        })?;
    let mut parts = registered.split(LIST_SEPARATOR);
    let name = parts.next().unwrap_or_default().to_owned();
    let triggers: Vec<String> = parts.filter(|n| !n.is_empty()).map(str::to_owned).collect();
    if lock(shared)
        .buffer
        .tables
        .iter()
        .any(|t| t.eq_ignore_ascii_case(&name))
    {
        // Its changes so far are captured as the rows' final state at
        // commit, which would include writes made after capture stopped.
        return Err(CaptureError::UnreplicateRefused {
            table: name,
            reason: "this transaction already wrote it; commit those writes first, then run aerodb_unreplicate in a transaction of its own (or before writing the table)".into(),
        });
    }
    let encoded = encode_change(&Change::Unreplicate {
        table: name.clone(),
    })
    .map_err(|source| CaptureError::Encode {
        table: name.clone(),
        source,
    })?;
    let c = all_or_nothing(conn, "aerodb_unreplicate", || {
        let drops = drop_triggers(triggers.iter().map(String::as_str));
        conn.execute_batch(&drops)
            .map_err(sqlite(format!("removing the capture triggers of '{name}'")))?;
        conn.execute(
            "DELETE FROM main.aerodb_tables WHERE name = ?1 COLLATE NOCASE",
            &[ValueRef::Text(name.as_bytes())],
        )
        .map_err(sqlite("unregistering the table"))?;
        // The capture table joins the transaction, so the record carrying
        // the change is written at its commit.
        conn.execute_batch("INSERT INTO aerodb_capture SELECT 1 WHERE 0")
            .map_err(sqlite("joining the capture table to the transaction"))?;
        note_schema(conn)?;
        let commit_id = WalTables::new(conn).head()?.next();
        let mut s = lock(shared);
        s.tx_generation = Some(generation);
        s.buffer.push_section(&encoded);
        Ok(commit_id)
    })?;
    tracing::info!(table = name, commit_id = c.0, "stopped replicating table");
    Ok(c)
}

/// Registers `t` (captured by triggers `names`) from `commit_id` on, in
/// place of the registration of `previous` (its name before, matched
/// case-insensitively): one registration per table, whatever the case its
/// name was spelled in before.
pub(super) fn register(
    conn: RawConn,
    t: &Found,
    commit_id: CommitId,
    names: &[String],
    previous: &str,
) -> Result<(), CaptureError> {
    for name in [previous, t.name.as_str()] {
        conn.execute(
            "DELETE FROM main.aerodb_tables WHERE name = ?1 COLLATE NOCASE",
            &[ValueRef::Text(name.as_bytes())],
        )
        .map_err(sqlite("registering the table"))?;
    }
    conn.execute(
        "INSERT OR REPLACE INTO main.aerodb_tables(name, schema_commit_id, sql, columns, indexes, key_columns, triggers) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        &[
            ValueRef::Text(t.name.as_bytes()),
            ValueRef::Integer(commit_id.0 as i64),
            ValueRef::Text(t.sql.as_bytes()),
            ValueRef::Text(tables::shape_of(&t.columns).as_bytes()),
            ValueRef::Text(t.indexes.join(&LIST_SEPARATOR.to_string()).as_bytes()),
            ValueRef::Text(t.key.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join(",").as_bytes()),
            ValueRef::Text(names.join(&LIST_SEPARATOR.to_string()).as_bytes()),
        ],
    )
    .map_err(sqlite("registering the table"))?;
    Ok(())
}
