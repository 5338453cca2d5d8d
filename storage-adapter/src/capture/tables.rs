//! The registry of replicated tables (`aerodb_tables`) and the check that
//! each still has the shape its capture was made for.
//!
//! Capture refuses to commit a write to a table whose definition, indexes
//! or triggers changed since `aerodb_replicate` (ALTER TABLE, CREATE INDEX,
//! DROP/CREATE, a dropped trigger), and the WAL reader refuses to serve
//! such a primary: never uncaptured or partial data (rule P1).

use super::{sqlite, CaptureError};
use crate::raw::RawConn;
use crate::sql_text::sql_tokens;
use crate::table_info::{self, quote_ident};
use rusqlite::types::ValueRef;

/// Separates column names in `aerodb_tables.columns`.
pub(crate) const SHAPE_SEPARATOR: char = '\u{1f}';
/// Separates statements and names in `aerodb_tables.indexes` / `triggers`.
pub(crate) const LIST_SEPARATOR: char = '\u{1e}';

/// What the commit needs of a replicated table.
#[derive(Debug, Clone)]
pub(crate) struct TableInfo {
    /// Its name, as registered (as its CREATE TABLE spells it).
    pub name: String,
    /// Its stored columns.
    pub columns: usize,
    /// It has UNIQUE constraints besides its primary key.
    pub extra_unique: bool,
    /// Reads a row's stored columns by key, matched as the key compares.
    pub lookup_sql: String,
    /// The capture triggers are the first to fire after a row change (no
    /// TEMP trigger on the table, no trigger created after them): the
    /// first touch of a key then tells whether its row existed before the
    /// transaction. A user trigger that fires first can change the row
    /// before capture sees the change, so then existence is unknown.
    pub order_known: bool,
    /// Its capture triggers probe the table before each INSERT and UPDATE
    /// (other UNIQUE constraints, or keys that compare equal in other
    /// bytes): a REPLACE's silent deletions are noted, and a key not found
    /// existing there was new.
    pub probed: bool,
    /// A trigger that fires before its capture triggers and can
    /// `RAISE(IGNORE)` / `RAISE(FAIL)`: SQLite then keeps the row change
    /// but skips the capture trigger, so writes to the table are refused.
    pub raises_first: Option<String>,
}

/// A registry row.
struct Registered {
    name: String,
    sql: String,
    columns: String,
    indexes: String,
    triggers: String,
}

fn registry(conn: RawConn, name: Option<&str>) -> Result<Vec<Registered>, CaptureError> {
    let doing = "reading aerodb_tables";
    let mut s = conn
        .prepare(
            "SELECT name, sql, columns, indexes, triggers FROM main.aerodb_tables WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
        )
        .map_err(sqlite(doing))?;
    s.bind(
        1,
        name.map_or(ValueRef::Null, |n| ValueRef::Text(n.as_bytes())),
    )
    .map_err(sqlite(doing))?;
    let mut out = Vec::new();
    while s.step().map_err(sqlite(doing))? {
        let text = |i| s.column(i).into_string().unwrap_or_default();
        out.push(Registered {
            name: text(0),
            sql: text(1),
            columns: text(2),
            indexes: text(3),
            triggers: text(4),
        });
    }
    Ok(out)
}

/// The shape string of `columns`.
pub(crate) fn shape_of(columns: &[table_info::Column]) -> String {
    columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(&SHAPE_SEPARATOR.to_string())
}

/// `table`'s CREATE INDEX statements (named indexes), by name, joined.
pub(crate) fn indexes_of(conn: RawConn, table: &str) -> Result<Vec<String>, CaptureError> {
    let doing = || format!("reading the indexes of '{table}'");
    let mut s = conn
        .prepare(table_info::INDEXES_SQL)
        .map_err(sqlite(doing()))?;
    s.bind(1, ValueRef::Text(table.as_bytes()))
        .map_err(sqlite(doing()))?;
    let mut out = Vec::new();
    while s.step().map_err(sqlite(doing()))? {
        out.push(s.column(0).into_string().unwrap_or_default());
    }
    Ok(out)
}

fn current_sql(conn: RawConn, table: &str) -> Result<Option<String>, CaptureError> {
    Ok(conn
        .query_value(
            "SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
            &[ValueRef::Text(table.as_bytes())],
        )
        .map_err(sqlite("reading the table's schema"))?
        .and_then(|v| v.into_string()))
}

fn check(conn: RawConn, r: &Registered) -> Result<(), CaptureError> {
    let broken = |problem: String| CaptureError::CaptureBroken {
        table: r.name.clone(),
        problem,
    };
    let Some(sql) = current_sql(conn, &r.name)? else {
        return Err(broken("the table no longer exists".into()));
    };
    if sql != r.sql {
        return Err(broken(format!(
            "its definition is now `{sql}`, capture was set up for `{}`",
            r.sql
        )));
    }
    let shape = shape_of(
        &table_info::columns(conn, "main", &r.name)
            .map_err(sqlite(format!("reading the columns of '{}'", r.name)))?,
    );
    if shape != r.columns {
        let show = |s: &str| s.replace(SHAPE_SEPARATOR, ", ");
        return Err(broken(format!(
            "its columns are now ({}), capture was set up for ({})",
            show(&shape),
            show(&r.columns)
        )));
    }
    let indexes = indexes_of(conn, &r.name)?.join(&LIST_SEPARATOR.to_string());
    if indexes != r.indexes {
        let show = |s: &str| {
            if s.is_empty() {
                "none".to_string()
            } else {
                s.replace(LIST_SEPARATOR, "; ")
            }
        };
        return Err(broken(format!(
            "its indexes are now ({}), capture was set up for ({})",
            show(&indexes),
            show(&r.indexes)
        )));
    }
    let expected: Vec<&str> = r.triggers.split(LIST_SEPARATOR).collect();
    let mut present = 0;
    for name in &expected {
        let found = conn
            .query_value(
                "SELECT 1 FROM main.sqlite_schema WHERE type = 'trigger' AND name = ?1 AND tbl_name = ?2",
                &[
                    ValueRef::Text(name.as_bytes()),
                    ValueRef::Text(r.name.as_bytes()),
                ],
            )
            .map_err(sqlite("reading capture triggers"))?;
        present += usize::from(found.is_some());
    }
    if present != expected.len() {
        return Err(broken(format!(
            "{present} of its {} capture triggers exist (the table was recreated or a trigger dropped)",
            expected.len()
        )));
    }
    Ok(())
}

/// Checks the registered table `name` (every touched table at commit).
pub(crate) fn verify(conn: RawConn, name: &str) -> Result<(), CaptureError> {
    match registry(conn, Some(name))?.first() {
        Some(r) => check(conn, r),
        None => Err(CaptureError::CaptureBroken {
            table: name.to_owned(),
            problem: "it is not in aerodb_tables (its capture triggers outlived its registration)"
                .into(),
        }),
    }
}

/// Checks every registered table (the WAL reader, before serving).
pub(crate) fn verify_capture(conn: RawConn) -> Result<(), CaptureError> {
    registry(conn, None)?
        .iter()
        .try_for_each(|r| check(conn, r))
}

/// What the commit needs of every registered table.
pub(crate) fn registered(conn: RawConn) -> Result<Vec<TableInfo>, CaptureError> {
    registry(conn, None)?
        .into_iter()
        .map(|r| {
            let mut i = info(conn, &r.name)?;
            let (first, raises) = capture_fires_first(conn, &r)?;
            i.order_known = first && !self_cascading(conn, &r.name)?;
            i.raises_first = raises;
            Ok(i)
        })
        .collect()
}

/// A user trigger (not one of AeroDB's capture triggers; TEMP ones too) on
/// a replicated table, described for a message.
pub(crate) fn user_trigger_on_replicated(conn: RawConn) -> Result<Option<String>, CaptureError> {
    let found = conn
        .query_value(
            "SELECT 'trigger ' || name || ' on replicated table ''' || tbl_name || ''' may write rows that a REPLACE of the same statement deletes unseen' FROM ( \
               SELECT name, tbl_name FROM main.sqlite_schema WHERE type = 'trigger' \
               UNION ALL SELECT name, tbl_name FROM temp.sqlite_schema WHERE type = 'trigger') AS g \
             WHERE g.tbl_name COLLATE NOCASE IN (SELECT name FROM main.aerodb_tables) \
             AND NOT EXISTS (SELECT 1 FROM main.aerodb_tables AS a \
               WHERE instr(char(30) || a.triggers || char(30), char(30) || g.name || char(30)) > 0) \
             LIMIT 1",
            &[],
        )
        .map_err(sqlite("reading the triggers on replicated tables"))?;
    Ok(found.and_then(|v| v.into_string()))
}

/// A foreign key with an ON UPDATE / ON DELETE action whose parent is a
/// replicated table, described for a message.
pub(crate) fn cascade_into_replicated(conn: RawConn) -> Result<Option<String>, CaptureError> {
    let found = conn
        .query_value(
            "SELECT 'foreign key of ''' || m.name || ''' on replicated table ''' || f.\"table\" || ''' has an action that runs before the change that caused it is captured' \
             FROM main.sqlite_schema AS m, pragma_foreign_key_list(m.name, 'main') AS f \
             WHERE m.type = 'table' \
             AND (f.on_update NOT IN ('NO ACTION', 'RESTRICT') OR f.on_delete NOT IN ('NO ACTION', 'RESTRICT')) \
             AND f.\"table\" COLLATE NOCASE IN (SELECT name FROM main.aerodb_tables) LIMIT 1",
            &[],
        )
        .map_err(sqlite("reading the foreign keys on replicated tables"))?;
    Ok(found.and_then(|v| v.into_string()))
}

/// A foreign key of `table` to itself with an action: SQLite runs the
/// action (which changes rows of the table) before the AFTER triggers of
/// the change that caused it.
fn self_cascading(conn: RawConn, table: &str) -> Result<bool, CaptureError> {
    let n = conn
        .query_value(
            "SELECT count(*) FROM pragma_foreign_key_list(?1, 'main') WHERE \"table\" = ?1 COLLATE NOCASE \
             AND (on_update NOT IN ('NO ACTION', 'RESTRICT') OR on_delete NOT IN ('NO ACTION', 'RESTRICT'))",
            &[ValueRef::Text(table.as_bytes())],
        )
        .map_err(sqlite("reading the foreign keys of a replicated table"))?
        .and_then(|v| v.as_i64());
    Ok(n != Some(0))
}

/// Whether no trigger fires before `r`'s capture triggers (SQLite fires a
/// table's TEMP triggers first, then its triggers newest first, in the
/// order of their rows in sqlite_schema), and the name of one that fires
/// before them and can end its statement with IGNORE or FAIL after the
/// row change (see `can_raise_after`, `can_fail`).
fn capture_fires_first(
    conn: RawConn,
    r: &Registered,
) -> Result<(bool, Option<String>), CaptureError> {
    let before = triggers_before_capture(conn, r)?;
    let first = before.is_empty();
    let mut raises = before
        .iter()
        .find(|(_, sql)| can_raise_after(sql))
        .map(|(name, _)| name.clone());
    // A FAIL further in: an `OR FAIL` statement in the trigger, or a write
    // to a table whose constraints (`ON CONFLICT FAIL`) or triggers can
    // fail so (transitively). FAIL ends the statement keeping the row
    // change the trigger fired for, before capture ran.
    if raises.is_none() {
        for (name, sql) in &before {
            let tokens = sql_tokens(sql);
            if trigger_timing(&tokens) == Some("BEFORE") {
                continue;
            }
            let mut seen = Vec::new();
            if can_fail(conn, &tokens, &mut seen)? {
                raises = Some(name.clone());
                break;
            }
        }
    }
    Ok((first, raises))
}

/// The user triggers that fire before `r`'s capture triggers: (name, SQL).
fn triggers_before_capture(
    conn: RawConn,
    r: &Registered,
) -> Result<Vec<(String, String)>, CaptureError> {
    let doing = "reading the triggers of a replicated table";
    let ours = format!("{LIST_SEPARATOR}{}{LIST_SEPARATOR}", r.triggers);
    let mut s = conn
        .prepare(
            "SELECT name, sql FROM temp.sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE \
             UNION ALL \
             SELECT name, sql FROM main.sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1 COLLATE NOCASE \
             AND instr(?2, char(30) || name || char(30)) = 0 \
             AND rowid > (SELECT min(rowid) FROM main.sqlite_schema WHERE type = 'trigger' AND instr(?2, char(30) || name || char(30)) > 0)",
        )
        .map_err(sqlite(doing))?;
    s.bind(1, ValueRef::Text(r.name.as_bytes()))
        .map_err(sqlite(doing))?;
    s.bind(2, ValueRef::Text(ours.as_bytes()))
        .map_err(sqlite(doing))?;
    let mut out = Vec::new();
    while s.step().map_err(sqlite(doing))? {
        out.push((
            s.column(0).into_string().unwrap_or_default(),
            s.column(1).into_string().unwrap_or_default(),
        ));
    }
    Ok(out)
}

/// Whether running the trigger body of `tokens` can end a statement with
/// FAIL: a FAIL keyword in it (`OR FAIL`, `RAISE(FAIL)`), or a write to a
/// table whose definition or triggers can (`seen`: tables already looked
/// at). Conservative: the word FAIL anywhere counts.
fn can_fail(
    conn: RawConn,
    tokens: &[String],
    seen: &mut Vec<String>,
) -> Result<bool, CaptureError> {
    let body = tokens
        .iter()
        .position(|t| t == "BEGIN")
        .map_or(tokens, |i| &tokens[i + 1..]);
    if body.iter().any(|t| t == "FAIL") {
        return Ok(true);
    }
    for table in written_tables(body) {
        if seen.iter().any(|s| s.eq_ignore_ascii_case(&table)) {
            continue;
        }
        seen.push(table.clone());
        let doing = "reading what a trigger writes";
        // A TEMP trigger's names resolve in temp, main, then every attached
        // database: all are read.
        let mut schemas = Vec::new();
        let mut d = conn
            .prepare("SELECT name FROM pragma_database_list")
            .map_err(sqlite(doing))?;
        while d.step().map_err(sqlite(doing))? {
            schemas.push(d.column(0).into_string().unwrap_or_default());
        }
        drop(d);
        let mut found = Vec::new();
        for schema in schemas {
            let mut q = conn
                .prepare(&format!(
                    "SELECT type, sql FROM {}.sqlite_schema WHERE tbl_name = ?1 COLLATE NOCASE AND type IN ('table', 'trigger')",
                    crate::table_info::quote_ident(&schema)
                ))
                .map_err(sqlite(doing))?;
            q.bind(1, ValueRef::Text(table.as_bytes()))
                .map_err(sqlite(doing))?;
            while q.step().map_err(sqlite(doing))? {
                found.push((
                    q.column(0).into_string().unwrap_or_default(),
                    q.column(1).into_string().unwrap_or_default(),
                ));
            }
        }
        for (kind, sql) in found {
            let t = sql_tokens(&sql);
            let fails = if kind == "table" {
                t.iter().any(|w| w == "FAIL")
            } else {
                can_fail(conn, &t, seen)?
            };
            if fails {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The tables a trigger body's statements write (INSERT / REPLACE INTO,
/// UPDATE, DELETE FROM), unquoted.
fn written_tables(body: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let name_at = |i: usize| -> Option<String> {
        let t = body.get(i)?;
        if t == "(" || t == ";" {
            return None;
        }
        Some(crate::sql_text::unquote(t))
    };
    for (i, t) in body.iter().enumerate() {
        let at = match t.as_str() {
            "INTO" => i + 1,
            "UPDATE" if body.get(i + 1).map(String::as_str) == Some("OR") => i + 3,
            "UPDATE" if body.get(i + 1).map(String::as_str) != Some("SET") => i + 1,
            "FROM" if i > 0 && body[i - 1] == "DELETE" => i + 1,
            _ => continue,
        };
        if let Some(name) = name_at(at) {
            out.push(name);
        }
    }
    out
}

/// A trigger that is not a BEFORE trigger and whose body calls
/// `RAISE(IGNORE)` or `RAISE(FAIL)` (a BEFORE trigger's RAISE stops the
/// change itself, and ABORT / ROLLBACK undo it: those are safe). Read from
/// its CREATE TRIGGER text with comments, string literals and quoted names
/// taken as SQLite takes them; unsure means yes.
fn can_raise_after(sql: &str) -> bool {
    let tokens = sql_tokens(sql);
    let raises = tokens
        .windows(3)
        .any(|w| w[0] == "RAISE" && w[1] == "(" && (w[2] == "IGNORE" || w[2] == "FAIL"));
    raises && trigger_timing(&tokens) != Some("BEFORE")
}

/// The timing keyword of a CREATE TRIGGER statement's tokens: `BEFORE`,
/// `AFTER` or `INSTEAD`; `BEFORE` when it is left out, as SQLite does;
/// `None` when the tokens do not read as expected.
fn trigger_timing(tokens: &[String]) -> Option<&'static str> {
    let mut t = tokens.iter().map(String::as_str);
    if t.next()? != "CREATE" {
        return None;
    }
    let mut next = t.next()?;
    if next == "TEMP" || next == "TEMPORARY" {
        next = t.next()?;
    }
    if next != "TRIGGER" {
        return None;
    }
    let mut name = t.next()?;
    if name == "IF" {
        if t.next()? != "NOT" || t.next()? != "EXISTS" {
            return None;
        }
        name = t.next()?;
    }
    let _ = name;
    let mut after_name = t.next()?;
    if after_name == "." {
        // schema.name
        t.next()?;
        after_name = t.next()?;
    }
    match after_name {
        "BEFORE" => Some("BEFORE"),
        "AFTER" => Some("AFTER"),
        "INSTEAD" => Some("INSTEAD"),
        "INSERT" | "UPDATE" | "DELETE" => Some("BEFORE"),
        _ => None,
    }
}

/// What the commit needs of `table`, from its schema.
pub(crate) fn info(conn: RawConn, table: &str) -> Result<TableInfo, CaptureError> {
    let doing = || format!("reading the shape of '{table}'");
    let columns = table_info::columns(conn, "main", table).map_err(sqlite(doing()))?;
    let key = table_info::primary_key(conn, "main", table).map_err(sqlite(doing()))?;
    let extra_unique = !table_info::unique_indexes(conn, "main", table)
        .map_err(sqlite(doing()))?
        .is_empty();
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    Ok(TableInfo {
        name: table.to_owned(),
        columns: columns.len(),
        extra_unique,
        order_known: false,
        probed: extra_unique
            || !table_info::key_is_exact(
                &columns,
                &key,
                table_info::key_is_rowid(conn, "main", table).map_err(sqlite(doing()))?,
            ),
        raises_first: None,
        lookup_sql: format!(
            "SELECT {} FROM main.{} WHERE {}",
            names.join(", "),
            quote_ident(table),
            table_info::key_match(&key, 1)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_timing_is_read_past_names_comments_and_quotes() {
        let t = |sql: &str| trigger_timing(&sql_tokens(sql));
        assert_eq!(
            t("CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1; END"),
            Some("AFTER")
        );
        assert_eq!(
            t("CREATE TRIGGER before AFTER INSERT ON t BEGIN END"),
            Some("AFTER")
        );
        assert_eq!(
            t("create temp trigger if not exists \"a b\" before\ndelete\non t begin end"),
            Some("BEFORE")
        );
        assert_eq!(
            t("CREATE TRIGGER [my trig] UPDATE OF v ON t BEGIN END"),
            Some("BEFORE")
        );
        assert_eq!(
            t("CREATE TRIGGER q/* before */ AFTER INSERT ON t BEGIN END"),
            Some("AFTER")
        );
        assert_eq!(
            t("CREATE TRIGGER r-- BEFORE\nAFTER INSERT ON t BEGIN END"),
            Some("AFTER")
        );
        assert_eq!(
            t("CREATE TRIGGER \"a \"\" before \" AFTER INSERT ON t BEGIN END"),
            Some("AFTER")
        );
        assert_eq!(
            t("CREATE TRIGGER main.before AFTER INSERT ON t BEGIN END"),
            Some("AFTER")
        );
    }

    #[test]
    fn the_tables_a_trigger_body_writes_are_found() {
        let body = |sql: &str| written_tables(&sql_tokens(sql));
        assert_eq!(
            body("INSERT INTO log VALUES (1); INSERT OR FAIL INTO \"we \"\"ird\" SELECT 1; REPLACE INTO [b] VALUES (2)"),
            ["LOG", "we \"ird", "b"]
        );
        assert_eq!(
            body("UPDATE OR FAIL u SET n = 1; UPDATE v SET n = 2; DELETE FROM w WHERE 1; INSERT INTO x(a) VALUES (1) ON CONFLICT DO UPDATE SET a = 2"),
            ["U", "V", "W", "X"]
        );
        assert_eq!(
            body("SELECT a FROM t WHERE b IN (SELECT c FROM d)"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn only_raise_ignore_or_fail_after_the_change_counts() {
        assert!(can_raise_after(
            "CREATE TRIGGER before AFTER INSERT ON t BEGIN SELECT RAISE(IGNORE); END"
        ));
        assert!(can_raise_after(
            "CREATE TRIGGER x AFTER INSERT\nON t BEGIN SELECT raise ( fail , 'no'); END"
        ));
        assert!(!can_raise_after(
            "CREATE TRIGGER x BEFORE INSERT ON t BEGIN SELECT RAISE(IGNORE); END"
        ));
        assert!(!can_raise_after(
            "CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT RAISE(ABORT, 'x'); END"
        ));
        assert!(!can_raise_after("CREATE TRIGGER x AFTER INSERT ON t BEGIN INSERT INTO log(praise) VALUES ('raised ' || NEW.v); END"));
        assert!(!can_raise_after(
            "CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 'RAISE(IGNORE)'; END"
        ));
        // Unreadable: assume it can.
        assert!(can_raise_after("CREATE TRIGGER x SELECT RAISE(IGNORE)"));
    }
}
