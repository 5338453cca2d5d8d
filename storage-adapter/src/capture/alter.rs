//! `aerodb_alter(sql)`: schema changes of replicated tables, replicated as
//! the statements themselves (WAL operation 7, `Change::Alter`) in order
//! with the data around them; no rows are re-shipped.
//!
//! In one savepoint of the caller's transaction: every replicated table
//! gets an anchor trigger (SQLite carries a table's triggers along a
//! RENAME, so the anchor tells where each table went, or that it was
//! dropped) and loses its capture triggers (they name every column, and a
//! DROP COLUMN refuses a column a trigger names); the statements run; each
//! table still there is captured again for its new shape and registered
//! anew, each one gone is unregistered; the anchors go. Any failure undoes
//! all of it. Refused, changing nothing: a statement other than ALTER
//! TABLE, CREATE [UNIQUE] INDEX, DROP INDEX and DROP TABLE; statements that
//! create or drop a table or an index of a table that is not replicated; a
//! table this transaction already wrote (its changes are captured as final
//! rows at commit, in the shape of that moment); a result that cannot be
//! replicated (as `aerodb_replicate` would refuse it).

use super::replicate::{all_or_nothing, find, register, triggers};
use super::tables::LIST_SEPARATOR;
use super::{lock, primary_generation, sqlite, CaptureError, Shared};
use crate::primary_wal::WalTables;
use crate::raw::RawConn;
use crate::table_info::quote_ident;
use replication::wal::{encode_change, AlteredTable, Change, CommitId, TableDefinition};
use rusqlite::types::ValueRef;
use std::collections::BTreeSet;

/// A registered table as `aerodb_alter` finds it before the statements.
struct Before {
    name: String,
    sql: String,
    indexes: String,
    triggers: Vec<String>,
}

fn refused(reason: String) -> CaptureError {
    CaptureError::AlterRefused { reason }
}

fn registered(conn: RawConn) -> Result<Vec<Before>, CaptureError> {
    let doing = "reading aerodb_tables";
    let mut s = conn
        .prepare("SELECT name, sql, indexes, triggers FROM main.aerodb_tables ORDER BY name")
        .map_err(sqlite(doing))?;
    let mut out = Vec::new();
    while s.step().map_err(sqlite(doing))? {
        let text = |i| s.column(i).into_string().unwrap_or_default();
        out.push(Before {
            name: text(0),
            sql: text(1),
            indexes: text(2),
            triggers: text(3)
                .split(LIST_SEPARATOR)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        });
    }
    Ok(out)
}

/// The tables and indexes of the main schema: (type, name, table, sql).
fn tables_and_indexes(conn: RawConn) -> Result<BTreeSet<[String; 4]>, CaptureError> {
    let doing = "reading the schema";
    let mut s = conn
        .prepare(
            "SELECT type, name, tbl_name, coalesce(sql, '') FROM main.sqlite_schema WHERE type IN ('table', 'index')",
        )
        .map_err(sqlite(doing))?;
    let mut out = BTreeSet::new();
    while s.step().map_err(sqlite(doing))? {
        let text = |i| s.column(i).into_string().unwrap_or_default();
        out.insert([text(0), text(1), text(2), text(3)]);
    }
    Ok(out)
}

fn sql_has_drop_table(sql: &str) -> bool {
    crate::sql_text::sql_tokens(sql)
        .windows(2)
        .any(|w| w[0] == "DROP" && w[1] == "TABLE")
}

/// `PRAGMA foreign_keys` is on and some table has an ON DELETE action.
fn foreign_key_actions_on(conn: RawConn) -> Result<bool, CaptureError> {
    let on = conn
        .query_value("PRAGMA foreign_keys", &[])
        .map_err(sqlite("reading PRAGMA foreign_keys"))?
        .and_then(|v| v.as_i64());
    if on != Some(1) {
        return Ok(false);
    }
    let actions = conn
        .query_value(
            "SELECT count(*) FROM main.sqlite_schema AS m, pragma_foreign_key_list(m.name, 'main') AS f WHERE m.type = 'table' AND f.on_delete NOT IN ('NO ACTION', 'RESTRICT')",
            &[],
        )
        .map_err(sqlite("reading foreign keys"))?
        .and_then(|v| v.as_i64());
    Ok(actions != Some(0))
}

fn anchor(i: usize) -> String {
    format!("aerodb_alter_anchor_{i}")
}

/// `aerodb_alter(sql)`: the CommitId of the record that carries the
/// change (the calling transaction's), or the head if the statements
/// changed no replicated table.
pub(super) fn alter(shared: &Shared, conn: RawConn, sql: &str) -> Result<CommitId, CaptureError> {
    primary_generation(&WalTables::new(conn))?;
    crate::sql_text::check_ddl(sql).map_err(refused)?;
    all_or_nothing(conn, "aerodb_alter", || run(shared, conn, sql))
}

fn run(shared: &Shared, conn: RawConn, sql: &str) -> Result<CommitId, CaptureError> {
    let generation = primary_generation(&WalTables::new(conn))?;
    let before = registered(conn)?;
    // Every replicated table must be captured as registered: an alter
    // re-installs capture, which would otherwise hide a broken one.
    for b in &before {
        super::tables::verify(conn, &b.name).map_err(|e| {
            refused(format!(
                "'{}' is not captured as registered ({e}); repair it first",
                b.name
            ))
        })?;
    }
    // Only the main database: TEMP objects are found first by unqualified
    // names on this connection (and on no replica).
    let temp = conn
        .query_value(
            "SELECT name FROM temp.sqlite_schema WHERE type IN ('table', 'index') LIMIT 1",
            &[],
        )
        .map_err(sqlite("reading the TEMP schema"))?
        .and_then(|v| v.into_string());
    if let Some(t) = temp {
        return Err(refused(format!(
            "this connection has TEMP object '{t}', which unqualified names in the statements would find before the replicated tables; run aerodb_alter on a connection without TEMP tables"
        )));
    }
    // DROP TABLE deletes the table's rows first, and with foreign_keys on
    // their ON DELETE actions change other tables' rows without capture.
    if sql_has_drop_table(sql) && foreign_key_actions_on(conn)? {
        return Err(refused(
            "DROP TABLE with PRAGMA foreign_keys on and an ON DELETE action in the schema: the rows it deletes would change other tables through the action, uncaptured; delete the table's rows first (captured) or drop it with foreign_keys off".into(),
        ));
    }
    let mut setup = String::new();
    for (i, b) in before.iter().enumerate() {
        setup += &format!(
            "CREATE TRIGGER main.{} AFTER DELETE ON main.{} WHEN 0 BEGIN SELECT 1; END;\n",
            quote_ident(&anchor(i)),
            quote_ident(&b.name)
        );
        for t in &b.triggers {
            setup += &format!("DROP TRIGGER IF EXISTS main.{};\n", quote_ident(t));
        }
    }
    conn.execute_batch(&setup)
        .map_err(sqlite("preparing the replicated tables for the statements"))?;
    let schema_before = tables_and_indexes(conn)?;
    conn.execute_batch(sql).map_err(|e| {
        refused(format!(
            "the statements failed, nothing changed: {}",
            e.message
        ))
    })?;
    // Where each replicated table went.
    let mut after: Vec<Option<String>> = Vec::with_capacity(before.len());
    let mut drops = String::new();
    for i in 0..before.len() {
        let name = conn
            .query_value(
                "SELECT tbl_name FROM main.sqlite_schema WHERE type = 'trigger' AND name = ?1",
                &[ValueRef::Text(anchor(i).as_bytes())],
            )
            .map_err(sqlite("reading where a replicated table went"))?
            .and_then(|v| v.into_string());
        if name.is_some() {
            drops += &format!("DROP TRIGGER main.{};\n", quote_ident(&anchor(i)));
        }
        after.push(name);
    }
    conn.execute_batch(&drops)
        .map_err(sqlite("removing the anchors of the replicated tables"))?;
    // Tables and indexes of tables that are not replicated stay as they were.
    let replicated: BTreeSet<String> = before
        .iter()
        .map(|b| b.name.to_ascii_lowercase())
        .chain(after.iter().flatten().map(|n| n.to_ascii_lowercase()))
        .collect();
    let schema_after = tables_and_indexes(conn)?;
    if let Some([kind, name, table, _]) = schema_before
        .symmetric_difference(&schema_after)
        .find(|[_, _, table, _]| !replicated.contains(&table.to_ascii_lowercase()))
    {
        return Err(refused(format!(
            "the statements change {kind} '{name}' of '{table}', which is not replicated; aerodb_alter changes replicated tables only (run it directly, or replicate '{table}' first)"
        )));
    }
    let commit_id = WalTables::new(conn).head()?.next();
    let mut altered = Vec::new();
    let mut kept = Vec::new();
    for (b, now) in before.iter().zip(&after) {
        let Some(now) = now else {
            altered.push(AlteredTable {
                name: b.name.clone(),
                after: None,
            });
            continue;
        };
        let t = find(conn, now).map_err(|e| {
            refused(format!(
                "'{}' could not be replicated after the statements: {e}",
                b.name
            ))
        })?;
        let (names, ddl) = triggers(conn, &t, generation)?;
        conn.execute_batch(&ddl).map_err(sqlite(format!(
            "installing capture triggers on '{}'",
            t.name
        )))?;
        let indexes = t.indexes.join(&LIST_SEPARATOR.to_string());
        if t.name == b.name && t.sql == b.sql && indexes == b.indexes {
            // Unchanged (its capture triggers are the same again).
            continue;
        }
        altered.push(AlteredTable {
            name: b.name.clone(),
            after: Some(TableDefinition {
                name: t.name.clone(),
                sql: t.sql.clone(),
                indexes: t.indexes.clone(),
            }),
        });
        kept.push((t, names));
    }
    // Registrations: every changed table's old one goes first, then the new
    // ones (tables that swapped names keep one row each).
    for a in &altered {
        conn.execute(
            "DELETE FROM main.aerodb_tables WHERE name = ?1",
            &[ValueRef::Text(a.name.as_bytes())],
        )
        .map_err(sqlite("unregistering an altered table"))?;
    }
    for (t, names) in &kept {
        register(conn, t, commit_id, names, &t.name)?;
    }
    super::replicate::note_schema(conn)?;
    if altered.is_empty() {
        return Ok(CommitId(commit_id.0 - 1));
    }
    let written = {
        let s = lock(shared);
        altered
            .iter()
            .find(|a| {
                s.buffer
                    .tables
                    .iter()
                    .any(|w| w.eq_ignore_ascii_case(&a.name))
            })
            .map(|a| a.name.clone())
    };
    if let Some(t) = written {
        return Err(refused(format!(
            "this transaction already wrote '{t}'; commit those writes first, then run aerodb_alter in a transaction of its own (or before writing the table)"
        )));
    }
    let change = encode_change(&Change::Alter {
        statements: sql.to_owned(),
        tables: altered,
    })
    .map_err(|source| CaptureError::Encode {
        table: String::new(),
        source,
    })?;
    // The capture table joins the transaction (its buffer starts then), so
    // the record carrying the change is written at its commit.
    conn.execute_batch("INSERT INTO aerodb_capture SELECT 1 WHERE 0")
        .map_err(sqlite("joining the capture table to the transaction"))?;
    let mut s = lock(shared);
    s.tx_generation = Some(generation);
    s.buffer.push_section(&change);
    drop(s);
    tracing::info!(commit_id = commit_id.0, "replicated tables altered");
    Ok(commit_id)
}
