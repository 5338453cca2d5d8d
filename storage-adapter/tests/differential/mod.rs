//! The differential harness the capture suites share: a primary, a
//! replica synced the way a WAL source and Applier do
//! (`PrimaryWalReader::segment` -> `Segment::decode` -> `validate` ->
//! `ReplicaDb::apply`), and an exact comparison of every replicated table:
//! `quote(c)`, `typeof(c)` and the value itself, compared bit for bit.
// Each test crate uses its own part of it.
#![allow(dead_code)]

use replication::wal::{validate, CommitId, Segment};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use storage_adapter::primary::{Primary, PrimaryWalReader};
use storage_adapter::replica::{next_segment, ApplyError, ReplicaDb};
use tempfile::TempDir;

// ------------------------------------------------------------------ harness

/// Bytes asked per segment: small enough that a long backlog takes several
/// segments (a segment holds at least one record, whatever its size).
pub const SEGMENT_BYTES: usize = 64 << 10;

/// Columns compared per query: each takes three result columns, and SQLite
/// refuses result sets wider than 2000 columns.
pub const COMPARE_CHUNK: usize = 500;

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A value exactly as SQLite returned it (reals by their bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exact {
    Null,
    Integer(i64),
    Real(u64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl From<ValueRef<'_>> for Exact {
    fn from(v: ValueRef<'_>) -> Exact {
        match v {
            ValueRef::Null => Exact::Null,
            ValueRef::Integer(i) => Exact::Integer(i),
            ValueRef::Real(r) => Exact::Real(r.to_bits()),
            ValueRef::Text(t) => Exact::Text(t.to_vec()),
            ValueRef::Blob(b) => Exact::Blob(b.to_vec()),
        }
    }
}

/// `s`, cut to `max` characters (long values, errors quoting 1000-column
/// statements).
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let head: String = s.chars().take(max).collect();
        format!("{head}... ({} chars)", s.chars().count())
    }
}

pub fn shorten(s: &str) -> String {
    clip(s, 160)
}

/// An error message, cut to a readable length.
pub fn brief(e: impl std::fmt::Display) -> String {
    clip(&e.to_string(), 600)
}

/// A value for messages: its type and an exact rendering.
pub fn show_exact(v: &Exact) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
    shorten(&match v {
        Exact::Null => "NULL".into(),
        Exact::Integer(i) => format!("integer {i}"),
        Exact::Real(bits) => format!("real {:?} (bits {bits:#018x})", f64::from_bits(*bits)),
        Exact::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => format!("text {s:?} ({} bytes)", t.len()),
            Err(_) => format!("text, not UTF-8, bytes X'{}'", hex(t)),
        },
        Exact::Blob(b) => format!("blob X'{}' ({} bytes)", hex(b), b.len()),
    })
}

/// One compared cell: `quote(c)`, `typeof(c)`, `c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    quote: String,
    kind: String,
    value: Exact,
}

impl Cell {
    pub fn show(&self) -> String {
        format!(
            "typeof {} quote {} = {}",
            self.kind,
            shorten(&self.quote),
            show_exact(&self.value)
        )
    }
}

/// One row of a compare query: its key (as `quote`d literals) and cells.
pub struct Row {
    key: Vec<String>,
    cells: Vec<Cell>,
}

pub fn text_of(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Null => "<NULL>".into(),
        other => format!("{other:?}"),
    }
}

/// Column names of `table` (stored and generated, in table order) and,
/// per column, its position in the primary key (0 if not in it).
pub fn table_columns(conn: &Connection, table: &str) -> Result<Vec<(String, i64)>, String> {
    let sql = "SELECT name, pk FROM pragma_table_xinfo(?1, 'main') WHERE hidden <> 1 ORDER BY cid";
    let mut stmt = conn
        .prepare(sql)
        .map_err(|e| format!("`{sql}`: {}", brief(e)))?;
    let cols = stmt
        .query_map([table], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading the columns of '{table}': {}", brief(e)))?;
    Ok(cols)
}

pub fn fetch_rows(conn: &Connection, sql: &str, nkey: usize) -> Result<Vec<Row>, String> {
    let mut stmt = conn
        .prepare(sql)
        .map_err(|e| format!("prepare: {}", brief(e)))?;
    let n = stmt.column_count();
    let ncells = (n - nkey) / 3;
    let mut rows = stmt.query([]).map_err(|e| format!("run: {}", brief(e)))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(|e| format!("step: {}", brief(e)))? {
        let mut key = Vec::with_capacity(nkey);
        for i in 0..nkey {
            key.push(text_of(r.get_ref(i).map_err(|e| e.to_string())?));
        }
        let mut cells = Vec::with_capacity(ncells);
        for c in 0..ncells {
            let at = nkey + 3 * c;
            let get = |i: usize| r.get_ref(i).map_err(|e| e.to_string());
            cells.push(Cell {
                quote: text_of(get(at)?),
                kind: text_of(get(at + 1)?),
                value: Exact::from(get(at + 2)?),
            });
        }
        out.push(Row { key, cells });
    }
    Ok(out)
}

pub fn count_rows(conn: &Connection, table: &str) -> Result<i64, String> {
    conn.query_row(
        &format!("SELECT count(*) FROM main.{}", quote_ident(table)),
        [],
        |r| r.get(0),
    )
    .map_err(|e| format!("counting the rows of '{table}': {}", brief(e)))
}

/// Compares `table` on the primary and the replica; the first difference.
pub fn compare_table(
    primary: &Connection,
    replica: &Connection,
    table: &str,
) -> Result<(), String> {
    let cols = table_columns(primary, table)?;
    if cols.is_empty() {
        return Err(format!("table '{table}' does not exist on the primary"));
    }
    let replica_cols = table_columns(replica, table)?;
    let names: Vec<&str> = cols.iter().map(|c| c.0.as_str()).collect();
    let replica_names: Vec<&str> = replica_cols.iter().map(|c| c.0.as_str()).collect();
    if names != replica_names {
        return Err(format!(
            "table '{table}': the primary has columns {names:?}, the replica {replica_names:?}"
        ));
    }
    let mut key: Vec<&(String, i64)> = cols.iter().filter(|c| c.1 > 0).collect();
    key.sort_by_key(|c| c.1);
    if key.is_empty() {
        return Err(format!("table '{table}' has no primary key on the primary"));
    }
    let key_names: Vec<&str> = key.iter().map(|c| c.0.as_str()).collect();
    let (primary_count, replica_count) = (count_rows(primary, table)?, count_rows(replica, table)?);
    // Keys unique under their own collation are unique, and totally
    // ordered, under BINARY; the order does not depend on rowids.
    let order: Vec<String> = key_names
        .iter()
        .map(|k| format!("{} COLLATE BINARY", quote_ident(k)))
        .collect();
    let key_exprs: Vec<String> = key_names
        .iter()
        .map(|k| format!("quote({})", quote_ident(k)))
        .collect();
    for chunk in cols.chunks(COMPARE_CHUNK) {
        let mut exprs = key_exprs.clone();
        for (c, _) in chunk {
            let c = quote_ident(c);
            exprs.push(format!("quote({c})"));
            exprs.push(format!("typeof({c})"));
            exprs.push(c);
        }
        let sql = format!(
            "SELECT {} FROM main.{} ORDER BY {}",
            exprs.join(", "),
            quote_ident(table),
            order.join(", ")
        );
        let on = |side: &str, e: String| format!("table '{table}', {side}: {e}");
        let p = fetch_rows(primary, &sql, key.len()).map_err(|e| on("primary", e))?;
        let r = fetch_rows(replica, &sql, key.len()).map_err(|e| on("replica", e))?;
        let counts = format!("(primary has {primary_count} rows, replica {replica_count})");
        for i in 0..p.len().max(r.len()) {
            let show_key = |row: &Row| format!("({})", row.key.join(", "));
            match (p.get(i), r.get(i)) {
                (Some(a), Some(b)) => {
                    if a.key != b.key {
                        return Err(format!(
                            "table '{table}' row {i} in key order: primary has key {} {key_names:?}, replica has key {} {counts}",
                            show_key(a),
                            show_key(b)
                        ));
                    }
                    for ((name, _), (x, y)) in chunk.iter().zip(a.cells.iter().zip(&b.cells)) {
                        if x != y {
                            return Err(format!(
                                "table '{table}' key {} {key_names:?} column '{name}':\n  primary: {}\n  replica: {}",
                                show_key(a),
                                x.show(),
                                y.show()
                            ));
                        }
                    }
                }
                (Some(a), None) => {
                    return Err(format!(
                        "table '{table}': replica lacks the row with key {} {key_names:?} {counts}",
                        show_key(a)
                    ))
                }
                (None, Some(b)) => {
                    return Err(format!(
                        "table '{table}': replica has a row with key {} {key_names:?} the primary does not have {counts}",
                        show_key(b)
                    ))
                }
                (None, None) => unreachable!(),
            }
        }
    }
    if primary_count != replica_count {
        return Err(format!(
            "table '{table}': primary has {primary_count} rows, replica {replica_count}"
        ));
    }
    Ok(())
}

/// Renders a value as a SQL literal (for asserting the primary's content).
pub fn literal(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(r) => format!("{r:?}"),
        ValueRef::Text(t) => format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''")),
        ValueRef::Blob(b) => format!(
            "X'{}'",
            b.iter().map(|x| format!("{x:02X}")).collect::<String>()
        ),
    }
}

/// Each row of `sql` as `(v1, v2, ...)` of SQL literals.
pub fn rows_of(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn
        .prepare(sql)
        .unwrap_or_else(|e| panic!("prepare `{sql}`: {e}"));
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        let parts = (0..n)
            .map(|i| r.get_ref(i).map(literal))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(format!("({})", parts.join(", ")))
    })
    .and_then(|rows| rows.collect())
    .unwrap_or_else(|e| panic!("run `{sql}`: {e}"))
}

/// The capture chunk the harness's primary connections use: from
/// `AERODB_TEST_CHUNK_BYTES`, else 1 byte (every row and statement spills
/// the transaction's buffer into a record that continues) in test crates
/// whose name ends in `_spilled`, else the default.
pub fn test_chunk_bytes() -> Option<i64> {
    if let Ok(v) = std::env::var("AERODB_TEST_CHUNK_BYTES") {
        return Some(
            v.parse()
                .expect("AERODB_TEST_CHUNK_BYTES is a number of bytes"),
        );
    }
    let exe = std::env::current_exe().ok()?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    // Test binaries are named `<crate>-<hash>`.
    let krate = name.rsplit_once('-').map_or(name.as_str(), |(c, _)| c);
    krate.ends_with("_spilled").then_some(1)
}

/// The harness's primaries spill transactions into several records, so a
/// transaction may take more than one CommitId.
pub fn spilling() -> bool {
    test_chunk_bytes().is_some_and(|n| n < 1 << 20)
}

/// How many of the primary's stored records continue into the next one
/// (bit 31 of the change-count word, bytes 20..24 of a record).
pub fn continued_records(conn: &Connection) -> i64 {
    conn.query_row(
        "SELECT count(*) FROM aerodb_commits WHERE hex(substr(record, 24, 1)) >= '80'",
        [],
        |r| r.get(0),
    )
    .expect("count continued records")
}

/// Sets [`test_chunk_bytes`] on a connection with capture registered.
pub fn use_test_chunk(conn: &Connection) {
    if let Some(n) = test_chunk_bytes() {
        conn.query_row("SELECT aerodb_capture_chunk_bytes(?1)", [n], |_| Ok(()))
            .expect("aerodb_capture_chunk_bytes");
    }
}

/// A primary, a reader of its WAL and a replica that follows it on demand.
pub struct Harness {
    pub primary: Primary,
    pub reader: PrimaryWalReader,
    pub replica: ReplicaDb,
    /// The names given to `replicate`, in order.
    pub tables: Vec<String>,
    /// The primary's file.
    pub path: std::path::PathBuf,
    pub _dir: TempDir,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_journal("WAL")
    }

    /// A primary in `journal_mode` (WAL or DELETE).
    pub fn with_journal(journal_mode: &str) -> Harness {
        let dir = tempfile::tempdir().expect("create a tempdir");
        let path = dir.path().join("primary.db");
        let conn = Connection::open(&path).expect("open the primary file");
        let mode: String = conn
            .query_row(&format!("PRAGMA journal_mode = {journal_mode}"), [], |r| {
                r.get(0)
            })
            .expect("set the journal mode");
        assert!(
            mode.eq_ignore_ascii_case(journal_mode),
            "journal mode {mode}"
        );
        let primary = Primary::from_connection(conn).expect("make it a primary");
        use_test_chunk(primary.connection());
        let reader = PrimaryWalReader::open(&path).expect("open the primary's WAL read-only");
        let replica = ReplicaDb::open(dir.path().join("replica.db")).expect("open the replica");
        replica
            .init(reader.generation())
            .expect("bind the replica to the primary's generation");
        Harness {
            primary,
            reader,
            replica,
            tables: Vec::new(),
            path,
            _dir: dir,
        }
    }

    pub fn conn(&self) -> &Connection {
        self.primary.connection()
    }

    /// Runs `sql` on the primary; it must succeed.
    pub fn exec(&self, sql: &str) {
        self.conn()
            .execute_batch(sql)
            .unwrap_or_else(|e| panic!("primary: `{}` failed: {}", clip(sql, 300), brief(e)));
    }

    /// Runs `sql` on the primary; it must fail. The error message.
    pub fn exec_err(&self, sql: &str) -> String {
        match self.conn().execute_batch(sql) {
            Ok(()) => panic!("primary: `{sql}` succeeded, expected an error"),
            Err(e) => e.to_string(),
        }
    }

    /// `replicate`, reporting a refusal instead of panicking.
    pub fn try_replicate(&mut self, table: &str) -> Result<(), String> {
        self.primary.replicate(table).map_err(brief)?;
        self.tables.push(table.to_owned());
        Ok(())
    }

    pub fn replicate(&mut self, table: &str) {
        self.primary
            .replicate(table)
            .unwrap_or_else(|e| panic!("replicate('{table}'): {}", brief(e)));
        self.tables.push(table.to_owned());
    }

    pub fn head(&self) -> CommitId {
        self.primary.head().expect("Primary::head")
    }

    pub fn rows(&self, sql: &str) -> Vec<String> {
        rows_of(self.conn(), sql)
    }

    /// Pulls, validates and applies segments from the replica's next
    /// CommitId until it has the reader's head; the replica's CommitId.
    pub fn sync(&mut self) -> Result<CommitId, String> {
        loop {
            let position = self
                .replica
                .position()
                .map_err(|e| format!("reading the replica's position: {}", brief(e)))?
                .ok_or("the replica has no position")?;
            let head = self
                .reader
                .head()
                .map_err(|e| format!("reading the primary's head: {}", brief(e)))?;
            if position.commit_id >= head {
                return Ok(position.commit_id);
            }
            let from = position.commit_id.next();
            let bytes = self
                .reader
                .segment(from, SEGMENT_BYTES)
                .map_err(|e| format!("reading the primary's WAL from commit {from}: {}", brief(e)))?
                .ok_or_else(|| format!("the head is {head} but there is no segment from {from}"))?;
            let segment = Segment::decode(&bytes)
                .map_err(|e| format!("decoding the segment from commit {from}: {}", brief(e)))?;
            let validated = validate(segment, &position)
                .map_err(|e| format!("validating the segment from commit {from}: {}", brief(e)))?;
            // A segment that ends inside a transaction is applied with the
            // ones up to the one that ends it, in one transaction.
            let reader = &self.reader;
            let applied = self
                .replica
                .apply_transaction(Some(&validated), &mut |_, at| {
                    next_segment(reader, at, SEGMENT_BYTES)?.ok_or(ApplyError::TransactionCut {
                        after: at.commit_id,
                    })
                })
                .map_err(|e| format!("applying the segment from commit {from}: {}", brief(e)))?;
            if applied.commit_id <= position.commit_id {
                return Err(format!(
                    "applying from commit {from} did not advance the replica (at {})",
                    applied.commit_id
                ));
            }
        }
    }

    /// Syncs, checks the replica reached the primary's head and compares
    /// every replicated table.
    pub fn try_check(&mut self) -> Result<(), String> {
        let at = self.sync()?;
        let head = self
            .primary
            .head()
            .map_err(|e| format!("Primary::head: {}", brief(e)))?;
        if at != head {
            return Err(format!(
                "after sync the replica is at commit {at}, the primary's head is {head}"
            ));
        }
        for table in &self.tables {
            compare_table(self.primary.connection(), self.replica.connection(), table)
                .map_err(|e| format!("at commit {head}: {}", brief(e)))?;
        }
        Ok(())
    }

    /// [`try_check`](Self::try_check), panicking with `when` on failure.
    pub fn check(&mut self, when: &str) {
        if let Err(e) = self.try_check() {
            panic!("replica differs from the primary {when}: {e}");
        }
    }
}

// ------------------------------------------------------------ helpers

/// A second connection to the primary's file, with capture registered.
pub fn second_connection(h: &Harness) -> (Connection, storage_adapter::capture::CaptureHandle) {
    let conn = Connection::open(&h.path).expect("open a second connection");
    let handle = storage_adapter::capture::register(&conn).expect("register capture");
    use_test_chunk(&conn);
    (conn, handle)
}

/// Syncs and compares; panics with `what` and the difference (or apply
/// error) if the replica does not match.
pub fn expect_match(h: &mut Harness, what: &str) {
    h.check(what);
}

// ------------------------------------------------------------ aerodb_alter

/// `SELECT aerodb_alter(sql)` on the primary; it must succeed.
pub fn alter(h: &Harness, sql: &str) -> i64 {
    h.conn()
        .query_row("SELECT aerodb_alter(?1)", [sql], |r| r.get(0))
        .unwrap_or_else(|e| panic!("aerodb_alter({sql}): {e}"))
}

/// The bytes of WAL the primary holds (its records' lengths).
pub fn wal_bytes(h: &Harness) -> i64 {
    h.conn()
        .query_row(
            "SELECT coalesce(sum(length), 0) FROM aerodb_commits",
            [],
            |r| r.get(0),
        )
        .expect("WAL size")
}

/// `SELECT aerodb_alter(sql)` on the primary; it must fail: the message.
pub fn alter_err(h: &Harness, sql: &str) -> String {
    h.conn()
        .query_row("SELECT aerodb_alter(?1)", [sql], |r| r.get::<_, i64>(0))
        .expect_err(sql)
        .to_string()
}

/// `t(id, v, w)` and WITHOUT ROWID `other(k, n)`, with rows, replicated.
pub fn alter_fixture() -> Harness {
    let mut h = Harness::new();
    h.exec(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, w INTEGER);
         CREATE TABLE other(k TEXT PRIMARY KEY NOT NULL, n) WITHOUT ROWID;
         INSERT INTO t VALUES (1, 'a', 10), (2, 'b', 20);
         INSERT INTO other VALUES ('x', 1);",
    );
    h.replicate("t");
    h.replicate("other");
    h.check("after replicate");
    h
}
