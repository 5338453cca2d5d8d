//! Replica write protection (issue 10 item 5): every replicated table on a
//! replica carries BEFORE INSERT / UPDATE / DELETE triggers that refuse
//! any write but replication's own. Their condition calls
//! [`GUARD_FN`], which only the Applier's connection defines to let its
//! writes through; the loadable extension defines it to refuse with a
//! clear message, and a connection without the extension cannot run the
//! trigger at all ("no such function: aerodb_replica_table_written_only_by_replication").
//! Either way the write fails and the rows stay as they were.

use super::{sql_err, ApplyError};
use crate::table_info::quote_ident;
use replication::wal::{CommitId, Generation};
use rusqlite::functions::FunctionFlags;
use rusqlite::Connection;

/// The SQL function a guard trigger calls: true (refuse) everywhere but on
/// the Applier's connection.
pub const GUARD_FN: &str = "aerodb_replica_table_written_only_by_replication";

/// The triggers' names for `table`, one per kind of write.
fn trigger_name(op: &str, table: &str) -> String {
    quote_ident(&format!("aerodb_replica_guard_{op}_{table}"))
}

/// The replica's state store tables (`sql/replica.sql`): guarded too, so
/// only the runtime's own connections record state.
pub(super) const STATE_TABLES: [&str; 10] = [
    "aerodb_replica_position",
    "aerodb_replica_tables",
    "aerodb_replica_segments",
    "aerodb_replica_segment_bytes",
    "aerodb_replica_bootstrap",
    "aerodb_replica_state",
    "aerodb_replica_transitions",
    "aerodb_replica_components",
    "aerodb_replica_source",
    "aerodb_replica_schema_check",
];

/// Installs (if missing) the guard triggers of replicated `table`.
pub(super) fn install(
    tx: &Connection,
    commit_id: Option<CommitId>,
    table: &str,
    generation: Generation,
) -> Result<(), ApplyError> {
    install_with(
        tx,
        commit_id,
        table,
        &format!(
            "replica table '{table}' is written only by replication (AeroDB replica of generation {generation}); write to the primary"
        ),
    )
}

/// Installs (if missing) the guard triggers of the state store tables.
pub(super) fn install_state(tx: &Connection) -> Result<(), ApplyError> {
    install_state_new(tx, &[])
}

/// The state store tables the replica holds now.
pub(super) fn state_tables_present(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM main.sqlite_schema WHERE type = 'table' AND name LIKE 'aerodb\\_replica\\_%' ESCAPE '\\'",
    )?;
    let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
    names.collect()
}

/// Installs the guards of the state store tables not in `existed` (just
/// created by this version).
pub(super) fn install_state_new(tx: &Connection, existed: &[String]) -> Result<(), ApplyError> {
    for table in STATE_TABLES {
        if !existed.iter().any(|e| e == table) {
            install_with(
                tx,
                None,
                table,
                &format!(
                    "'{table}' is the replica's state store: only the AeroDB runtime writes it"
                ),
            )?;
        }
    }
    Ok(())
}

fn install_with(
    tx: &Connection,
    commit_id: Option<CommitId>,
    table: &str,
    message: &str,
) -> Result<(), ApplyError> {
    let message = message.replace('\'', "''");
    for op in ["insert", "update", "delete"] {
        tx.execute_batch(&format!(
            "CREATE TRIGGER IF NOT EXISTS main.{name} BEFORE {verb} ON {table} WHEN {GUARD_FN}() BEGIN SELECT RAISE(ABORT, '{message}'); END",
            name = trigger_name(op, table),
            verb = op.to_uppercase(),
            table = quote_ident(table),
        ))
        .map_err(sql_err("installing the replica's write guard", commit_id))?;
    }
    Ok(())
}

/// Removes the guard triggers of `table` (it stopped being replicated):
/// it is a plain, writable table from then on.
pub(super) fn remove(tx: &Connection, commit_id: CommitId, table: &str) -> Result<(), ApplyError> {
    for op in ["insert", "update", "delete"] {
        tx.execute_batch(&format!(
            "DROP TRIGGER IF EXISTS main.{}",
            trigger_name(op, table)
        ))
        .map_err(sql_err(
            "removing the replica's write guard",
            Some(commit_id),
        ))?;
    }
    Ok(())
}

/// Makes one of the runtime's own connections (the Applier's, the state
/// store's, the Receiver's) a writer the guards let through: triggers do
/// not fire on it at all (`SQLITE_DBCONFIG_ENABLE_TRIGGER` off: the
/// guards cost its writes nothing, and a trigger a user added on a replica
/// table does not act on replicated changes, whose side effects arrive
/// from the primary as their own changes, as with foreign keys), and
/// [`GUARD_FN`] says "let through" should one fire anyway.
pub(crate) fn let_replication_write(conn: &Connection) -> Result<(), ApplyError> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )
    .map_err(sql_err(
        "turning triggers off on the runtime's connection",
        None,
    ))?;
    conn.create_scalar_function(GUARD_FN, 0, FunctionFlags::SQLITE_UTF8, |_| Ok(false))
        .map_err(sql_err("defining the replica's write guard", None))
}

/// The replica's schema version (`PRAGMA schema_version`: SQLite moves it
/// on every schema change, by any connection).
pub(crate) fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    // The pragma statement reads the header cookie (OP_ReadCookie); the
    // table-valued `pragma_schema_version` costs a virtual table cursor.
    conn.prepare_cached("PRAGMA main.schema_version")?
        .query_row([], |r| r.get(0))
}

/// The schema version at which the replica's tables were last found as
/// replication left them (`aerodb_replica_schema_check`); `None` if never
/// (or on a replica from before the check).
pub(crate) fn checked_version(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    use rusqlite::OptionalExtension;
    let mut stmt = match conn
        .prepare_cached("SELECT schema_version FROM main.aerodb_replica_schema_check WHERE id = 1")
    {
        // A replica from before the check (the runtime creates the table
        // when it next opens it).
        Err(e) if e.to_string().contains("no such table") => return Ok(None),
        other => other?,
    };
    stmt.query_row([], |r| r.get(0)).optional()
}

/// Records, in the apply transaction `tx`, that the replica's tables are
/// as replication left them at schema version `version`.
pub(super) fn record_checked(tx: &Connection, version: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO main.aerodb_replica_schema_check(id, schema_version) VALUES (1, ?1)",
    )?
    .execute([version])
    .map(|_| ())
}

/// Something changed on the replica behind replication's back, by DDL
/// (SQLite has no trigger that could refuse it): the table concerned and
/// what happened to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tampering {
    /// The replicated (or state store) table.
    pub table: String,
    /// What happened to it, as a sentence.
    pub what: String,
}

/// Whether the replica's tables are as replication left them: every
/// registered table exists with the definition replication gave it, and
/// it and every state store table still carry their three write guards,
/// each still a guard (on that table, refusing through [`GUARD_FN`]).
/// The first that is not. Only the schema is read (what DDL can undo), in
/// ONE statement, so one snapshot: a replicated change committed while it
/// runs cannot make a healthy replica look tampered.
pub(crate) fn tampering(conn: &Connection) -> rusqlite::Result<Option<Tampering>> {
    use std::collections::HashMap;
    let found = |table: &str, what: String| {
        Ok(Some(Tampering {
            table: table.to_owned(),
            what,
        }))
    };
    let mut registered: Vec<(String, String)> = Vec::new();
    let mut tables: HashMap<String, String> = HashMap::new();
    let mut triggers: HashMap<String, (String, String)> = HashMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT 0, name, sql, NULL FROM main.aerodb_replica_tables
             UNION ALL SELECT 1, name, sql, NULL FROM main.sqlite_schema WHERE type = 'table' AND (lower(name) IN (SELECT lower(name) FROM main.aerodb_replica_tables) OR name LIKE 'aerodb\\_replica\\_%' ESCAPE '\\')
             UNION ALL SELECT 2, name, sql, tbl_name FROM main.sqlite_schema WHERE type = 'trigger' AND name LIKE 'aerodb\\_replica\\_guard\\_%' ESCAPE '\\'",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (kind, name): (i64, String) = (r.get(0)?, r.get(1)?);
            let sql: Option<String> = r.get(2)?;
            let sql = sql.unwrap_or_default();
            match kind {
                0 => registered.push((name, sql)),
                1 => {
                    tables.insert(name.to_lowercase(), sql);
                }
                _ => {
                    triggers.insert(name.to_lowercase(), (sql, r.get(3)?));
                }
            }
        }
    }
    registered.sort();
    // The first of `table`'s guards that is gone or no longer guards it.
    let unguarded = |table: &str| -> Option<String> {
        ["insert", "update", "delete"].into_iter().find_map(|op| {
            let name = format!("aerodb_replica_guard_{op}_{table}");
            match triggers.get(&name.to_lowercase()) {
                None => Some(format!("trigger {name}) was dropped")),
                Some((sql, on)) if !on.eq_ignore_ascii_case(table) || !guards(sql, op) => Some(
                    format!("trigger {name}) was replaced by one that does not guard it"),
                ),
                Some(_) => None,
            }
        })
    };
    for (table, made) in &registered {
        match tables.get(&table.to_lowercase()) {
            None => return found(table, "it was dropped".into()),
            Some(now) if now != made => {
                return found(
                    table,
                    format!("it was altered: it is `{now}`, replication made it `{made}`"),
                )
            }
            Some(_) => {}
        }
        if let Some(what) = unguarded(table) {
            return found(
                table,
                format!("its write guard ({what}, so other connections could write it"),
            );
        }
    }
    for table in STATE_TABLES {
        // One a later version added is created, and guarded, when its
        // runtime first opens the replica.
        if !tables.contains_key(table) {
            continue;
        }
        if let Some(what) = unguarded(table) {
            return found(
                table,
                format!(
                    "the state store's write guard ({what}, so other connections could write it"
                ),
            );
        }
    }
    Ok(None)
}

/// Whether `sql` (a trigger's, as `sqlite_schema` stores it) is still a
/// write guard for `op`: BEFORE that write, when [`GUARD_FN`] says so,
/// aborting. (A look at its shape, against accidents: a no-op trigger of
/// the same name. It is not a proof against a deliberate forgery.)
fn guards(sql: &str, op: &str) -> bool {
    let verb = op.to_uppercase();
    sql.contains(&format!(" BEFORE {verb} ON "))
        && sql.contains(&format!(" WHEN {GUARD_FN}() BEGIN SELECT RAISE(ABORT, '"))
        && sql.ends_with("'); END")
}
