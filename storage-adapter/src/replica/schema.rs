//! Schema records from the WAL: the single CREATE TABLE / CREATE INDEX
//! statements they carry, checked, run and registered in the apply
//! transaction.

use super::rows::replica_indexes;
use super::{sql_err, ApplyError};
use crate::table_info::quote_ident;
use replication::wal::{AlteredTable, CommitId};
use rusqlite::{params, Connection, OptionalExtension};

/// What a schema statement from the WAL may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SchemaStatement {
    /// `CREATE TABLE`.
    Table,
    /// `CREATE INDEX` or `CREATE UNIQUE INDEX`.
    Index,
}

/// Runs one schema statement from the WAL after checking that it is a
/// single statement of the expected kind.
pub(super) fn run_schema_statement(
    tx: &Connection,
    commit_id: CommitId,
    table: &str,
    statement: &str,
    kind: SchemaStatement,
) -> Result<(), ApplyError> {
    let bad = |problem: String| ApplyError::BadSchema {
        commit_id,
        table: table.into(),
        problem,
    };
    let words: Vec<String> = statement
        .split_whitespace()
        .take(3)
        .map(str::to_ascii_uppercase)
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let ok = match kind {
        SchemaStatement::Table => words.starts_with(&["CREATE", "TABLE"]),
        SchemaStatement::Index => {
            words.starts_with(&["CREATE", "INDEX"]) || words == ["CREATE", "UNIQUE", "INDEX"]
        }
    };
    if !ok {
        return Err(bad(format!(
            "`{statement}` is not a {kind:?} creation statement"
        )));
    }
    // One statement only: prepare refuses a tail.
    let mut s = tx
        .prepare(statement)
        .map_err(|e| bad(format!("`{statement}` does not prepare: {e}")))?;
    s.raw_execute()
        .map_err(|e| bad(format!("`{statement}` failed: {e}")))?;
    Ok(())
}

/// The `CREATE TABLE` statement of `table` on this replica, if it exists.
pub(super) fn table_sql(
    tx: &Connection,
    commit_id: CommitId,
    table: &str,
) -> Result<Option<String>, ApplyError> {
    tx.query_row(
        // Table names match case-insensitively, as SQLite's do.
        "SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        [table],
        |r| r.get(0),
    )
    .optional()
    .map_err(sql_err("reading the replica's schema", Some(commit_id)))
}

/// Whether replication created `table` here (it is registered).
pub(super) fn registered(
    tx: &Connection,
    commit_id: CommitId,
    table: &str,
) -> Result<bool, ApplyError> {
    tx.query_row(
        "SELECT count(*) > 0 FROM main.aerodb_replica_tables WHERE name = ?1 COLLATE NOCASE",
        [table],
        |r| r.get(0),
    )
    .map_err(sql_err("reading the replicated tables", Some(commit_id)))
}

pub(super) fn apply_schema(
    tx: &Connection,
    commit_id: CommitId,
    table: &str,
    sql: &str,
    indexes: &[String],
) -> Result<(), ApplyError> {
    let existing = table_sql(tx, commit_id, table)?;
    if existing.is_some() && !registered(tx, commit_id, table)? {
        return Err(ApplyError::UserTable {
            commit_id,
            table: table.into(),
        });
    }
    if let Some(existing) = existing {
        let existing_indexes = replica_indexes(tx, commit_id, table)?;
        if existing == sql && existing_indexes == indexes {
            // Same table again (replicated anew, e.g. after DROP and
            // CREATE on the primary): its content restarts from the
            // Insert changes that follow in this record.
            tx.execute(&format!("DELETE FROM {}", quote_ident(table)), [])
                .map_err(sql_err(
                    "resetting the table for its schema record",
                    Some(commit_id),
                ))?;
            return register(tx, commit_id, table, sql);
        }
        // Replicated again after a change of its definition on the primary
        // (ALTER, CREATE INDEX, ...): the record carries the new definition
        // and every row, so the table replication created here is replaced
        // by it (a user's table never is: checked above).
        tracing::info!(
            table,
            %commit_id,
            replica = %existing,
            primary = %sql,
            "a replicated table's definition changed on the primary: replacing it"
        );
        tx.execute_batch(&format!("DROP TABLE main.{}", quote_ident(table)))
            .map_err(sql_err(
                "dropping the table its schema record replaces",
                Some(commit_id),
            ))?;
    }
    run_schema_statement(tx, commit_id, table, sql, SchemaStatement::Table)?;
    for index in indexes {
        run_schema_statement(tx, commit_id, table, index, SchemaStatement::Index)?;
    }
    let created = table_sql(tx, commit_id, table)?;
    let created_indexes = replica_indexes(tx, commit_id, table)?;
    if created.as_deref() != Some(sql) || created_indexes != indexes {
        return Err(ApplyError::BadSchema {
            commit_id,
            table: table.into(),
            problem: format!(
                "the statements did not create table '{table}' with exactly its unique indexes (created {created:?}, {created_indexes:?})"
            ),
        });
    }
    register(tx, commit_id, table, sql)
}

/// An Alter change (`aerodb_alter` on the primary): the statements run
/// here, in the apply transaction, and every table they changed must then
/// have exactly the definition the primary's has (another SQLite version
/// that wrote it otherwise, or an index a user added here that the
/// statements trip on, stops replication with the reason: never a silent
/// difference). Registrations and write guards follow renames and drops.
pub(super) fn apply_alter(
    tx: &Connection,
    commit_id: CommitId,
    statements: &str,
    tables: &[AlteredTable],
) -> Result<(), ApplyError> {
    let first = tables.first().map_or("", |t| t.name.as_str());
    let bad = |table: &str, problem: String| ApplyError::BadSchema {
        commit_id,
        table: table.into(),
        problem,
    };
    crate::sql_text::check_ddl(statements).map_err(|e| bad(first, e))?;
    let mut registered_names = Vec::with_capacity(tables.len());
    for t in tables {
        let name: Option<String> = tx
            .query_row(
                "SELECT name FROM main.aerodb_replica_tables WHERE name = ?1 COLLATE NOCASE",
                [&t.name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_err("reading the replicated tables", Some(commit_id)))?;
        let name = name.ok_or_else(|| {
            bad(
                &t.name,
                format!(
                    "it alters '{}', which this replica does not replicate",
                    t.name
                ),
            )
        })?;
        super::guard::remove(tx, commit_id, &name)?;
        registered_names.push(name);
    }
    tx.execute_batch(statements).map_err(|e| {
        bad(
            first,
            format!("running the primary's statements `{statements}` failed here: {e}"),
        )
    })?;
    let generation = super::read_position(tx)?
        .ok_or(ApplyError::NotReplica)?
        .generation;
    // Old registrations first, then the new ones (tables that swapped names
    // keep one row each).
    for name in &registered_names {
        tx.execute(
            "DELETE FROM aerodb_replica_tables WHERE name = ?1 COLLATE NOCASE",
            [name],
        )
        .map_err(sql_err("registering an altered table", Some(commit_id)))?;
    }
    let kept_as = |name: &str| {
        tables
            .iter()
            .filter_map(|t| t.after.as_ref())
            .any(|d| d.name.eq_ignore_ascii_case(name))
    };
    for (t, name) in tables.iter().zip(&registered_names) {
        match &t.after {
            // Gone, unless another altered table took its name.
            None if kept_as(name) => {}
            None => {
                if let Some(sql) = table_sql(tx, commit_id, name)? {
                    return Err(bad(
                        name,
                        format!("the primary dropped it, here it is still `{sql}`"),
                    ));
                }
            }
            Some(d) => {
                let sql = table_sql(tx, commit_id, &d.name)?;
                let indexes = replica_indexes(tx, commit_id, &d.name)?;
                if sql.as_deref() != Some(d.sql.as_str()) || indexes != d.indexes {
                    return Err(bad(
                        &d.name,
                        format!(
                            "after the statements the primary has `{}` with indexes {:?}, this replica `{}` with {indexes:?}",
                            d.sql,
                            d.indexes,
                            sql.unwrap_or_else(|| "no table".into())
                        ),
                    ));
                }
                tx.execute(
                    "INSERT INTO aerodb_replica_tables(name, schema_commit_id, sql) VALUES (?1, ?2, ?3)",
                    params![d.name, commit_id.0 as i64, d.sql],
                )
                .map_err(sql_err("registering an altered table", Some(commit_id)))?;
                super::guard::install(tx, Some(commit_id), &d.name, generation)?;
            }
        }
    }
    tracing::info!(%commit_id, statements, "replicated tables altered");
    Ok(())
}

/// An Unreplicate change: `table` is no longer maintained here. Its
/// registration and write guard go; its rows stay, as of this change, in a
/// plain table the user owns from then on.
pub(super) fn apply_unreplicate(
    tx: &Connection,
    commit_id: CommitId,
    table: &str,
) -> Result<(), ApplyError> {
    if !registered(tx, commit_id, table)? {
        return Err(ApplyError::BadSchema {
            commit_id,
            table: table.into(),
            problem: format!(
                "it stops replicating '{table}', which this replica does not replicate"
            ),
        });
    }
    let name: String = tx
        .query_row(
            "SELECT name FROM main.aerodb_replica_tables WHERE name = ?1 COLLATE NOCASE",
            [table],
            |r| r.get(0),
        )
        .map_err(sql_err("reading the replicated tables", Some(commit_id)))?;
    tx.execute(
        "DELETE FROM aerodb_replica_tables WHERE name = ?1 COLLATE NOCASE",
        [table],
    )
    .map_err(sql_err("unregistering the table", Some(commit_id)))?;
    super::guard::remove(tx, commit_id, &name)?;
    tracing::info!(table = name, %commit_id, "the primary stopped replicating a table: kept as a plain table");
    Ok(())
}

/// Records `table` as replicated (from its schema record at `commit_id`)
/// and installs its write guard.
fn register(
    tx: &Connection,
    commit_id: CommitId,
    table: &str,
    sql: &str,
) -> Result<(), ApplyError> {
    // One row per table, whatever the case its name was spelled in before.
    tx.execute(
        "DELETE FROM aerodb_replica_tables WHERE name = ?1 COLLATE NOCASE",
        [table],
    )
    .map_err(sql_err("registering the replicated table", Some(commit_id)))?;
    tx.execute(
        "INSERT OR REPLACE INTO aerodb_replica_tables(name, schema_commit_id, sql) VALUES (?1, ?2, ?3)",
        params![table, commit_id.0 as i64, sql],
    )
    .map_err(sql_err("registering the replicated table", Some(commit_id)))?;
    let generation = super::read_position(tx)?
        .ok_or(ApplyError::NotReplica)?
        .generation;
    super::guard::install(tx, Some(commit_id), table, generation)
}
