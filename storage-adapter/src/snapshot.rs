//! Consistent snapshots of a primary's replicated tables, for bootstrapping
//! a replica that is new or needs WAL the primary no longer has.
//!
//! A snapshot is a SQLite database file holding each replicated table (its
//! `CREATE TABLE` and `CREATE INDEX` statements as on the primary, and its
//! rows at one CommitId) and a table `aerodb_snapshot` with the generation,
//! the CommitId, the chain position after it and a checksum. The checksum
//! is a CRC32 over a canonical stream (tables by name, rows by primary key,
//! values in the WAL's value encoding), so the replica recomputes it over
//! what it installed and refuses a snapshot that does not match.
//!
//! Role in the spec: snapshot bootstrap metadata of the Replica State Store
//! (5.5, rule T1). Taking a snapshot only reads the primary (P2).

use crate::capture::verify_capture;
use crate::primary_wal::WalTables;
use crate::raw::RawConn;
use crate::table_info::quote_ident;
use replication::wal::{encode_value, ChainPosition, CommitId, Generation, WalOffset};
use rusqlite::types::{ToSqlOutput, Value};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::Path;

/// What a snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The primary's generation.
    pub generation: Generation,
    /// The CommitId the tables are at.
    pub commit_id: CommitId,
    /// WAL offset after that commit.
    pub wal_offset: WalOffset,
    /// Chained checksum of that commit.
    pub chain: u32,
    /// CRC32 of the tables' canonical content.
    pub checksum: u32,
    /// The replicated tables, by name.
    pub tables: Vec<String>,
}

impl SnapshotInfo {
    /// The chain position the snapshot ends at (where WAL continues).
    pub fn position(&self) -> ChainPosition {
        ChainPosition {
            generation: self.generation,
            commit_id: self.commit_id,
            wal_offset: self.wal_offset,
            chain: self.chain,
        }
    }
}

/// Why a snapshot could not be taken or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// SQLite failed.
    #[error("{doing}: {source}")]
    Sqlite {
        /// What was being done.
        doing: String,
        /// The error.
        source: rusqlite::Error,
    },
    /// The primary's WAL tables could not be read.
    #[error("{0}")]
    Primary(String),
    /// The snapshot file is not a valid AeroDB snapshot.
    #[error("not a valid AeroDB snapshot: {0}")]
    Invalid(String),
}

fn sql(doing: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> SnapshotError {
    let doing = doing.into();
    move |source| SnapshotError::Sqlite { doing, source }
}

/// The columns (stored ones, in order) and the primary key columns of a
/// table of `schema` (the crate's one table introspection,
/// [`table_info::columns`](crate::table_info::columns)).
pub(crate) fn shape(
    conn: &Connection,
    schema: &str,
    table: &str,
) -> Result<(Vec<String>, Vec<String>), SnapshotError> {
    // SAFETY: `conn` is open for the whole call.
    let raw = unsafe { RawConn::new(conn.handle()) };
    let cols = crate::table_info::columns(raw, schema, table)
        .map_err(|e| SnapshotError::Invalid(format!("reading the columns of '{table}': {e}")))?;
    let mut key: Vec<&crate::table_info::Column> = cols.iter().filter(|c| c.pk > 0).collect();
    key.sort_by_key(|c| c.pk);
    let key = key.into_iter().map(|c| c.name.clone()).collect();
    Ok((cols.into_iter().map(|c| c.name).collect(), key))
}

/// CRC32 of the canonical content of `tables` in `schema` of `conn`.
pub fn checksum(conn: &Connection, schema: &str, tables: &[String]) -> Result<u32, SnapshotError> {
    let mut sorted = tables.to_vec();
    sorted.sort();
    let mut h = crc32fast::Hasher::new();
    let mut buf = Vec::new();
    for t in &sorted {
        h.update(t.as_bytes());
        h.update(&[0]);
        let (cols, key) = shape(conn, schema, t)?;
        let list: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
        let order: Vec<String> = key.iter().map(|c| quote_ident(c)).collect();
        let q = format!(
            "SELECT {} FROM {}.{} ORDER BY {}",
            list.join(", "),
            quote_ident(schema),
            quote_ident(t),
            order.join(", ")
        );
        let mut stmt = conn.prepare(&q).map_err(sql(format!("reading '{t}'")))?;
        let mut rows = stmt.query([]).map_err(sql(format!("reading '{t}'")))?;
        while let Some(row) = rows.next().map_err(sql(format!("reading '{t}'")))? {
            buf.clear();
            for i in 0..cols.len() {
                let v = row.get_ref(i).map_err(sql(format!("reading '{t}'")))?;
                encode_value(&mut buf, crate::values::wal_value(v))
                    .map_err(|e| SnapshotError::Invalid(format!("a value of '{t}': {e}")))?;
            }
            h.update(&buf);
        }
    }
    Ok(h.finalize())
}

/// The `CREATE TABLE` and `CREATE INDEX` statements of `table` in `schema`.
pub fn definition(
    conn: &Connection,
    schema: &str,
    table: &str,
) -> Result<(String, Vec<String>), SnapshotError> {
    let master = format!("{}.sqlite_schema", quote_ident(schema));
    let create: String = conn
        .query_row(
            &format!("SELECT sql FROM {master} WHERE type = 'table' AND name = ?1"),
            [table],
            |r| r.get(0),
        )
        .map_err(sql(format!("reading the definition of '{table}'")))?;
    let mut stmt = conn
        .prepare(&format!(
            "SELECT sql FROM {master} WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL ORDER BY name"
        ))
        .map_err(sql("reading indexes"))?;
    let indexes = stmt
        .query_map([table], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(sql(format!("reading the indexes of '{table}'")))?;
    Ok((create, indexes))
}

/// Takes a snapshot of the primary file `primary` (read-only, one read
/// transaction) into the new file `dest`.
pub fn take(
    primary: impl AsRef<Path>,
    dest: impl AsRef<Path>,
) -> Result<SnapshotInfo, SnapshotError> {
    let dest = dest.as_ref();
    if dest.exists() {
        return Err(SnapshotError::Invalid(format!(
            "{} already exists",
            dest.display()
        )));
    }
    let src = Connection::open_with_flags(
        primary.as_ref(),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql("opening the primary read-only"))?;
    // One read transaction: the tables and the position are one snapshot.
    let tx = src
        .unchecked_transaction()
        .map_err(sql("beginning a read transaction"))?;
    // SAFETY: the connection outlives `wal` (dropped before it).
    let wal = WalTables::new(unsafe { RawConn::new(tx.handle()) });
    let werr = |e: crate::primary_wal::WalReadError| SnapshotError::Primary(e.to_string());
    let generation = wal.generation().map_err(werr)?;
    verify_capture(wal.conn()).map_err(|e| SnapshotError::Primary(e.to_string()))?;
    let head = wal.head().map_err(werr)?;
    let position = wal.position_after(generation, head).map_err(werr)?;
    let mut tables: Vec<String> = {
        let mut s = tx
            .prepare("SELECT name FROM main.aerodb_tables ORDER BY name")
            .map_err(sql("listing replicated tables"))?;
        let names = s
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(sql("listing replicated tables"))?;
        names
    };
    tables.sort();
    let out = Connection::open(dest).map_err(sql("creating the snapshot file"))?;
    // Foreign keys off: the file holds what the primary holds, whatever
    // order its tables sort in and whatever dangling references the
    // primary legally keeps (its foreign_keys is off by default).
    out.execute_batch("PRAGMA foreign_keys = OFF; PRAGMA journal_mode = DELETE; BEGIN;")
        .map_err(sql("starting the snapshot file"))?;
    // `value` has no declared type, so no affinity converts what is stored
    // (a generation's hex such as '0123456789012345' stays text).
    out.execute_batch("CREATE TABLE aerodb_snapshot(key TEXT PRIMARY KEY, value NOT NULL)")
        .map_err(sql("creating aerodb_snapshot"))?;
    for t in &tables {
        let (create, indexes) = definition(&tx, "main", t)?;
        out.execute_batch(&create)
            .map_err(sql(format!("creating '{t}' in the snapshot")))?;
        for i in &indexes {
            out.execute_batch(i)
                .map_err(sql(format!("creating an index of '{t}'")))?;
        }
        let (cols, _) = shape(&tx, "main", t)?;
        let list: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let mut read = tx
            .prepare(&format!(
                "SELECT {} FROM main.{}",
                list.join(", "),
                quote_ident(t)
            ))
            .map_err(sql(format!("reading '{t}'")))?;
        let mut write = out
            .prepare(&format!(
                "INSERT INTO main.{}({}) VALUES ({})",
                quote_ident(t),
                list.join(", "),
                marks.join(", ")
            ))
            .map_err(sql(format!("writing '{t}'")))?;
        let mut rows = read.query([]).map_err(sql(format!("reading '{t}'")))?;
        while let Some(row) = rows.next().map_err(sql(format!("reading '{t}'")))? {
            // Values are copied as SQLite holds them: TEXT as its bytes,
            // whether or not they are valid UTF-8.
            let values: Vec<ToSqlOutput<'_>> = (0..cols.len())
                .map(|i| row.get_ref(i).map(ToSqlOutput::Borrowed))
                .collect::<Result<_, _>>()
                .map_err(sql(format!("reading '{t}'")))?;
            write
                .execute(rusqlite::params_from_iter(values))
                .map_err(sql(format!("writing '{t}'")))?;
        }
    }
    let checksum = checksum(&tx, "main", &tables)?;
    let info = SnapshotInfo {
        generation,
        commit_id: head,
        wal_offset: position.wal_offset,
        chain: position.chain,
        checksum,
        tables,
    };
    write_info(&out, &info)?;
    out.execute_batch("COMMIT")
        .map_err(sql("committing the snapshot file"))?;
    tx.finish().map_err(sql("ending the read transaction"))?;
    Ok(info)
}

fn write_info(out: &Connection, info: &SnapshotInfo) -> Result<(), SnapshotError> {
    let rows: [(&str, Value); 6] = [
        ("generation", Value::Text(info.generation.to_string())),
        ("commit_id", Value::Integer(info.commit_id.0 as i64)),
        ("wal_offset", Value::Integer(info.wal_offset.0 as i64)),
        ("chain", Value::Integer(i64::from(info.chain))),
        ("checksum", Value::Integer(i64::from(info.checksum))),
        ("tables", Value::Text(info.tables.join("\n"))),
    ];
    for (k, v) in rows {
        out.execute(
            "INSERT INTO aerodb_snapshot(key, value) VALUES (?1, ?2)",
            params![k, v],
        )
        .map_err(sql("writing aerodb_snapshot"))?;
    }
    Ok(())
}

/// The metadata a snapshot file records (in `schema` of `conn`).
pub fn read_info(conn: &Connection, schema: &str) -> Result<SnapshotInfo, SnapshotError> {
    let get = |k: &str| -> Result<Value, SnapshotError> {
        conn.query_row(
            &format!(
                "SELECT value FROM {}.aerodb_snapshot WHERE key = ?1",
                quote_ident(schema)
            ),
            [k],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql("reading aerodb_snapshot"))?
        .ok_or_else(|| SnapshotError::Invalid(format!("aerodb_snapshot has no '{k}'")))
    };
    let int = |k: &str| -> Result<i64, SnapshotError> {
        match get(k)? {
            Value::Integer(i) if i >= 0 => Ok(i),
            other => Err(SnapshotError::Invalid(format!(
                "aerodb_snapshot '{k}' is {other:?}"
            ))),
        }
    };
    let text = |k: &str| -> Result<String, SnapshotError> {
        match get(k)? {
            Value::Text(t) => Ok(t),
            other => Err(SnapshotError::Invalid(format!(
                "aerodb_snapshot '{k}' is {other:?}"
            ))),
        }
    };
    let generation = u64::from_str_radix(&text("generation")?, 16)
        .map_err(|e| SnapshotError::Invalid(format!("generation: {e}")))?;
    let chain = u32::try_from(int("chain")?)
        .map_err(|_| SnapshotError::Invalid("chain is out of range".into()))?;
    let checksum = u32::try_from(int("checksum")?)
        .map_err(|_| SnapshotError::Invalid("checksum is out of range".into()))?;
    let tables = text("tables")?;
    Ok(SnapshotInfo {
        generation: Generation(generation),
        commit_id: CommitId(int("commit_id")? as u64),
        wal_offset: WalOffset(int("wal_offset")? as u64),
        chain,
        checksum,
        tables: tables
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Opens a snapshot file read-only and returns what it records and the
/// checksum recomputed over its tables.
pub fn inspect(path: impl AsRef<Path>) -> Result<(SnapshotInfo, u32), SnapshotError> {
    let conn = Connection::open_with_flags(path.as_ref(), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql("opening the snapshot read-only"))?;
    let info = read_info(&conn, "main")?;
    let computed = checksum(&conn, "main", &info.tables)?;
    Ok((info, computed))
}
