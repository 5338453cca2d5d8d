//! What capture (primary) and apply (replica) both need to know of a
//! replicated table, read from SQLite's own description of it: its stored
//! columns, its primary key with the collation the key compares with, and
//! its other UNIQUE constraints. One place, so both sides match rows the
//! same way (a key declared `PRIMARY KEY (k COLLATE BINARY)` on a NOCASE
//! column is matched with BINARY on both).

use crate::raw::{RawConn, RawError};
use rusqlite::types::ValueRef;

/// `table`'s `CREATE INDEX` statements (indexes made by CREATE INDEX, not
/// by constraints, which the CREATE TABLE statement carries), by name.
pub(crate) const INDEXES_SQL: &str =
    "SELECT sql FROM main.sqlite_schema WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL ORDER BY name";

/// `"name"` with inner quotes doubled.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A stored (not generated) column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    /// Its name.
    pub name: String,
    /// Declared NOT NULL.
    pub not_null: bool,
    /// Position in the primary key (1-based), 0 if not in it.
    pub pk: i64,
    /// Declared type (decides the column's affinity).
    pub decl_type: String,
}

/// A column of a key or unique index, with the collation it compares with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyColumn {
    /// Column name.
    pub name: String,
    /// Collation name (`BINARY`, `NOCASE`, `RTRIM` or an application's).
    pub collation: String,
}

/// A UNIQUE index other than the primary key's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UniqueIndex {
    /// Index name.
    pub name: String,
    /// Its key columns; empty when it indexes an expression.
    pub columns: Vec<KeyColumn>,
    /// It indexes an expression (or the rowid).
    pub expression: bool,
}

/// The stored columns of `schema.table`, in table order (generated
/// columns, which the replica computes itself, left out).
pub(crate) fn columns(conn: RawConn, schema: &str, table: &str) -> Result<Vec<Column>, RawError> {
    let mut s = conn.prepare(
        "SELECT name, \"notnull\", pk, hidden, type FROM pragma_table_xinfo(?1, ?2) ORDER BY cid",
    )?;
    s.bind(1, ValueRef::Text(table.as_bytes()))?;
    s.bind(2, ValueRef::Text(schema.as_bytes()))?;
    let mut out = Vec::new();
    while s.step()? {
        if s.column(3).as_i64() != Some(0) {
            continue;
        }
        out.push(Column {
            name: s.column(0).into_string().unwrap_or_default(),
            not_null: s.column(1).as_i64() == Some(1),
            pk: s.column(2).as_i64().unwrap_or(0),
            decl_type: s.column(4).into_string().unwrap_or_default(),
        });
    }
    Ok(out)
}

/// The first STORED generated column of `schema.table`, if any
/// (`pragma_table_xinfo.hidden` is 3 for them, 2 for VIRTUAL ones).
pub(crate) fn stored_generated(
    conn: RawConn,
    schema: &str,
    table: &str,
) -> Result<Option<String>, RawError> {
    let mut s = conn.prepare(
        "SELECT name FROM pragma_table_xinfo(?1, ?2) WHERE hidden = 3 ORDER BY cid LIMIT 1",
    )?;
    s.bind(1, ValueRef::Text(table.as_bytes()))?;
    s.bind(2, ValueRef::Text(schema.as_bytes()))?;
    Ok(if s.step()? {
        s.column(0).into_string()
    } else {
        None
    })
}

/// The key columns of `index`, in index order, with their collations; the
/// second value says whether one of them is an expression or the rowid.
fn index_key(conn: RawConn, schema: &str, index: &str) -> Result<(Vec<KeyColumn>, bool), RawError> {
    let mut s = conn.prepare(
        "SELECT cid, name, coll FROM pragma_index_xinfo(?1, ?2) WHERE key = 1 ORDER BY seqno",
    )?;
    s.bind(1, ValueRef::Text(index.as_bytes()))?;
    s.bind(2, ValueRef::Text(schema.as_bytes()))?;
    let (mut out, mut expression) = (Vec::new(), false);
    while s.step()? {
        if s.column(0).as_i64().unwrap_or(-2) < 0 {
            expression = true;
            continue;
        }
        out.push(KeyColumn {
            name: s.column(1).into_string().unwrap_or_default(),
            collation: s.column(2).into_string().unwrap_or_else(|| "BINARY".into()),
        });
    }
    Ok((out, expression))
}

/// The primary key of `schema.table` in key order, each column with the
/// collation of the key (not necessarily the column's): from the key's own
/// index, or BINARY for an INTEGER PRIMARY KEY (the rowid, no index).
pub(crate) fn primary_key(
    conn: RawConn,
    schema: &str,
    table: &str,
) -> Result<Vec<KeyColumn>, RawError> {
    let pk_index = conn
        .query_value(
            "SELECT name FROM pragma_index_list(?1, ?2) WHERE origin = 'pk'",
            &[
                ValueRef::Text(table.as_bytes()),
                ValueRef::Text(schema.as_bytes()),
            ],
        )?
        .and_then(|v| v.into_string());
    if let Some(index) = pk_index {
        return Ok(index_key(conn, schema, &index)?.0);
    }
    let mut key: Vec<Column> = columns(conn, schema, table)?
        .into_iter()
        .filter(|c| c.pk > 0)
        .collect();
    key.sort_by_key(|c| c.pk);
    Ok(key
        .into_iter()
        .map(|c| KeyColumn {
            name: c.name,
            collation: "BINARY".into(),
        })
        .collect())
}

/// True when `schema.table`'s primary key is its rowid (`INTEGER PRIMARY
/// KEY`, no index of its own).
pub(crate) fn key_is_rowid(conn: RawConn, schema: &str, table: &str) -> Result<bool, RawError> {
    let n = conn
        .query_value(
            "SELECT count(*) FROM pragma_index_list(?1, ?2) WHERE origin = 'pk'",
            &[
                ValueRef::Text(table.as_bytes()),
                ValueRef::Text(schema.as_bytes()),
            ],
        )?
        .and_then(|v| v.as_i64());
    let without_rowid = conn
        .query_value(
            "SELECT wr FROM pragma_table_list WHERE schema = ?2 AND name = ?1",
            &[
                ValueRef::Text(table.as_bytes()),
                ValueRef::Text(schema.as_bytes()),
            ],
        )?
        .and_then(|v| v.as_i64());
    Ok(n == Some(0) && without_rowid == Some(0))
}

/// The UNIQUE indexes of `schema.table` besides its primary key's (UNIQUE
/// constraints and `CREATE UNIQUE INDEX`), by name.
pub(crate) fn unique_indexes(
    conn: RawConn,
    schema: &str,
    table: &str,
) -> Result<Vec<UniqueIndex>, RawError> {
    let mut s = conn.prepare(
        "SELECT name FROM pragma_index_list(?1, ?2) WHERE \"unique\" = 1 AND origin <> 'pk' ORDER BY name",
    )?;
    s.bind(1, ValueRef::Text(table.as_bytes()))?;
    s.bind(2, ValueRef::Text(schema.as_bytes()))?;
    let mut names = Vec::new();
    while s.step()? {
        names.push(s.column(0).into_string().unwrap_or_default());
    }
    drop(s);
    names
        .into_iter()
        .map(|name| {
            let (columns, expression) = index_key(conn, schema, &name)?;
            Ok(UniqueIndex {
                name,
                columns,
                expression,
            })
        })
        .collect()
}

/// True when two keys that compare equal are always the same bytes: every
/// key column compares with BINARY and has a type affinity (a column
/// without one stores 1 and 1.0 apart, yet they compare equal). The rowid
/// always does. Capture compares touched keys as bytes; for other keys it
/// probes the table as the key compares.
pub(crate) fn key_is_exact(columns: &[Column], key: &[KeyColumn], rowid_key: bool) -> bool {
    if rowid_key {
        return true;
    }
    key.iter().all(|k| {
        let affinity_blob = columns
            .iter()
            .find(|c| c.name == k.name)
            .map(|c| {
                let t = c.decl_type.to_ascii_uppercase();
                // ANY has no affinity in a STRICT table (and NUMERIC in
                // others): treat it as none either way.
                t.trim() == "ANY"
                    || !t.contains("INT")
                        && !t.contains("CHAR")
                        && !t.contains("CLOB")
                        && !t.contains("TEXT")
                        && !t.contains("REAL")
                        && !t.contains("FLOA")
                        && !t.contains("DOUB")
                        && (t.is_empty() || t.contains("BLOB"))
            })
            .unwrap_or(true);
        k.collation.eq_ignore_ascii_case("BINARY") && !affinity_blob
    })
}

/// `"k1" = ?{first} COLLATE "c1" AND ...`: the key matched as the key
/// compares (an explicit COLLATE on the parameter decides the comparison,
/// and lets SQLite use the key's index).
pub(crate) fn key_match(key: &[KeyColumn], first: usize) -> String {
    key.iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "{} = ?{} COLLATE {}",
                quote_ident(&c.name),
                first + i,
                quote_ident(&c.collation)
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal("o'k"), "'o''k'");
    }

    #[test]
    fn keys_are_matched_with_their_collation() {
        let key = vec![
            KeyColumn {
                name: "k".into(),
                collation: "BINARY".into(),
            },
            KeyColumn {
                name: "j".into(),
                collation: "NOCASE".into(),
            },
        ];
        assert_eq!(
            key_match(&key, 3),
            r#""k" = ?3 COLLATE "BINARY" AND "j" = ?4 COLLATE "NOCASE""#
        );
    }
}
