//! `aerodb verify` (issue 10 item 8): does a replica hold exactly the rows
//! its primary held at one CommitId?
//!
//! In one read transaction on the primary: its head H and a digest of every
//! replicated table. Then the replica (a file no runtime holds) is brought
//! to exactly H, applying only WAL up to H, and the same digests are
//! computed there. A table's digest is SHA-256 over its rows in primary-key
//! order (the key's own collation), each row its values in the WAL's value
//! encoding: exact about types and values (1, 1.0 and '1' differ, REAL by
//! its bits, TEXT by its bytes), independent of page layout, VACUUM and
//! insertion order. Where digests differ, both tables are walked in key
//! order to name the first row that differs; over HTTP, where the
//! primary's rows are not fetched, its digest comes with each table's key
//! ranges (at most `MAX_RANGES` runs of rows in key order, each digested),
//! and the first range that differs is named with its keys.

use crate::primary::PrimaryWalReader;
use crate::primary_wal::WalTables;
use crate::raw::RawConn;
use crate::replica::{ApplyError, ReplicaDb};
use crate::runtime::control::ReplicaHold;
use crate::table_info::{self, quote_ident};
use replication::wal::{encode_count, encode_value, CommitId};
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};
use std::path::Path;

mod remote;
pub use remote::verify_url;

/// One table's rows, summed up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDigest {
    /// The table.
    pub table: String,
    /// How many rows.
    pub rows: u64,
    /// SHA-256 of its rows in key order, hex.
    pub sha256: String,
}

/// The digest of a run of a table's rows in key order: rows
/// `index * rows_per_range ..` of it (see [`TableRanges`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeDigest {
    /// Its first row's key, as SQL literals (`(1)`, `('a', x'00')`).
    pub first: String,
    /// Its last row's key.
    pub last: String,
    /// How many rows (`rows_per_range`, fewer in the last range).
    pub rows: u64,
    /// SHA-256 of its rows, hex.
    pub sha256: String,
}

/// A table's rows in key order cut into ranges of `rows_per_range` rows,
/// each digested: what lets a verify that cannot read the primary's rows
/// (over HTTP) name the key range where a replica differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRanges {
    /// The table.
    pub table: String,
    /// Rows per range (the last one may hold fewer).
    pub rows_per_range: u64,
    /// The ranges, in key order.
    pub ranges: Vec<RangeDigest>,
}

/// At most this many ranges per table: `rows_per_range` grows with the
/// table.
pub const MAX_RANGES: u64 = 256;
/// A range's keys are shown with at most this many characters (they name
/// the range for a message; its digest covers the rows).
const MAX_KEY_CHARS: usize = 200;

/// `key` shown, at most `MAX_KEY_CHARS` characters.
fn show_key(key: &[Stored]) -> String {
    let shown = show(key);
    match shown.char_indices().nth(MAX_KEY_CHARS) {
        Some((at, _)) => format!("{}...", &shown[..at]),
        None => shown,
    }
}

/// The first place a replica differs from its primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The table.
    pub table: String,
    /// What differs, naming the key (or that the table is missing).
    pub detail: String,
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The CommitId both sides were compared at.
    pub commit_id: CommitId,
    /// The primary's digests, by table name.
    pub primary: Vec<TableDigest>,
    /// The replica's.
    pub replica: Vec<TableDigest>,
    /// `None`: equal.
    pub difference: Option<Difference>,
    /// How a running replica was held while it was compared (its
    /// runtime's answers to the hold and the release); `None` when no
    /// runtime ran on it.
    pub held: Option<String>,
}

/// Why `verify` could not compare.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The primary could not be read.
    #[error("primary {path}: {message}")]
    Primary {
        /// Its path.
        path: String,
        /// What failed.
        message: String,
    },
    /// The replica could not be read or brought to the primary's head.
    #[error("replica {path}: {message}")]
    Replica {
        /// Its path.
        path: String,
        /// What failed.
        message: String,
    },
}

/// A value as stored: TEXT by its bytes (any bytes), REAL by its bits.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stored {
    Null,
    Integer(i64),
    Real(u64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Stored {
    fn of(v: rusqlite::types::ValueRef<'_>) -> Stored {
        use rusqlite::types::ValueRef as V;
        match v {
            V::Null => Stored::Null,
            V::Integer(i) => Stored::Integer(i),
            V::Real(r) => Stored::Real(r.to_bits()),
            V::Text(t) => Stored::Text(t.to_vec()),
            V::Blob(b) => Stored::Blob(b.to_vec()),
        }
    }
}

/// A rendering of values for messages (SQL literals; REAL exactly).
fn show(values: &[Stored]) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|v| match v {
            Stored::Null => "NULL".into(),
            Stored::Integer(i) => i.to_string(),
            Stored::Real(bits) => format!("{:?}", f64::from_bits(*bits)),
            Stored::Text(t) => match std::str::from_utf8(t) {
                Ok(t) => format!("'{}'", t.replace('\'', "''")),
                Err(_) => format!(
                    "CAST(x'{}' AS TEXT)",
                    t.iter().map(|x| format!("{x:02x}")).collect::<String>()
                ),
            },
            Stored::Blob(b) => format!(
                "x'{}'",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        })
        .collect();
    format!("({})", parts.join(", "))
}

/// The `SELECT` that reads `table` in key order (key columns first, then
/// the others in table order), how many key columns lead each row, and the
/// selected columns' names.
fn ordered_select(conn: &Connection, table: &str) -> Result<(String, usize, Vec<String>), String> {
    // SAFETY: used only within this call, on this thread.
    let raw = unsafe { RawConn::new(conn.handle()) };
    let columns = table_info::columns(raw, "main", table).map_err(|e| e.message)?;
    let key = table_info::primary_key(raw, "main", table).map_err(|e| e.message)?;
    if key.is_empty() {
        return Err(format!("table '{table}' has no primary key"));
    }
    let mut selected: Vec<String> = key.iter().map(|k| k.name.clone()).collect();
    selected.extend(
        columns
            .iter()
            .filter(|c| !key.iter().any(|k| k.name == c.name))
            .map(|c| c.name.clone()),
    );
    let order: Vec<String> = key
        .iter()
        .map(|k| {
            format!(
                "{} COLLATE {}",
                quote_ident(&k.name),
                quote_ident(&k.collation)
            )
        })
        .collect();
    let list: Vec<String> = selected.iter().map(|c| quote_ident(c)).collect();
    Ok((
        format!(
            "SELECT {} FROM main.{} ORDER BY {}",
            list.join(", "),
            quote_ident(table),
            order.join(", ")
        ),
        key.len(),
        selected,
    ))
}

/// `table`'s CREATE TABLE statement, if the table exists.
fn table_sql(conn: &Connection, table: &str) -> Result<Option<String>, String> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        "SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| e.to_string())
}

/// A table's digest: its definition (CREATE TABLE text, which both sides
/// hold byte for byte), its columns' names in table order, then its rows in
/// key order, each value in the WAL's encoding.
fn digest_of(conn: &Connection, table: &str) -> Result<TableDigest, String> {
    scan(conn, table, None).map(|(d, _)| d)
}

/// How many rows each range of a table of `rows` rows holds.
fn rows_per_range(rows: u64) -> u64 {
    rows.div_ceil(MAX_RANGES).max(1)
}

/// [`digest_of`], and with `rows_per_range` the digests of its rows' runs
/// of that many, in the same scan.
fn scan(
    conn: &Connection,
    table: &str,
    rows_per_range: Option<u64>,
) -> Result<(TableDigest, Vec<RangeDigest>), String> {
    let Some(sql) = table_sql(conn, table)? else {
        return Ok((
            TableDigest {
                table: table.to_owned(),
                rows: 0,
                sha256: "missing".into(),
            },
            Vec::new(),
        ));
    };
    let (select, nkey, columns) = ordered_select(conn, table)?;
    let mut hash = Sha256::new();
    hash.update((sql.len() as u32).to_le_bytes());
    hash.update(sql.as_bytes());
    for c in &columns {
        hash.update((c.len() as u32).to_le_bytes());
        hash.update(c.as_bytes());
    }
    let mut s = conn.prepare(&select).map_err(|e| e.to_string())?;
    let n = s.column_count();
    let mut rows = s.query([]).map_err(|e| e.to_string())?;
    let mut count = 0u64;
    let mut buf = Vec::new();
    let mut ranges: Vec<RangeDigest> = Vec::new();
    // The open range: its hash, first key (shown), last key, rows.
    let mut range: Option<(Sha256, String, Vec<Stored>, u64)> = None;
    let hex = |h: Sha256| -> String { h.finalize().iter().map(|b| format!("{b:02x}")).collect() };
    let close = |(h, first, last, rows): (Sha256, String, Vec<Stored>, u64)| RangeDigest {
        first,
        last: show_key(&last),
        rows,
        sha256: hex(h),
    };
    while let Some(r) = rows.next().map_err(|e| e.to_string())? {
        buf.clear();
        encode_count(&mut buf, n).map_err(|e| e.to_string())?;
        for i in 0..n {
            let v = r.get_ref(i).map_err(|e| e.to_string())?;
            encode_value(&mut buf, crate::values::wal_value(v)).map_err(|e| e.to_string())?;
        }
        hash.update((buf.len() as u32).to_le_bytes());
        hash.update(&buf);
        count += 1;
        if let Some(per) = rows_per_range {
            let key = (0..nkey)
                .map(|i| r.get_ref(i).map(Stored::of))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let (h, _, last, rows) =
                range.get_or_insert_with(|| (Sha256::new(), show_key(&key), Vec::new(), 0));
            h.update((buf.len() as u32).to_le_bytes());
            h.update(&buf);
            *last = key;
            *rows += 1;
            if *rows == per {
                ranges.extend(range.take().map(close));
            }
        }
    }
    ranges.extend(range.take().map(close));
    Ok((
        TableDigest {
            table: table.to_owned(),
            rows: count,
            sha256: hex(hash),
        },
        ranges,
    ))
}

fn names(conn: &Connection, sql: &str) -> Result<Vec<String>, String> {
    let mut s = conn.prepare(sql).map_err(|e| e.to_string())?;
    let rows = s.query_map([], |r| r.get(0)).map_err(|e| e.to_string())?;
    rows.collect::<Result<Vec<String>, _>>()
        .map_err(|e| e.to_string())
}

/// The first place two tables differ: their definitions, their columns,
/// or the first row in key order (both tables streamed, never loaded).
fn first_difference(p: &Connection, r: &Connection, table: &str) -> Result<String, String> {
    let (ps, rs) = (table_sql(p, table)?, table_sql(r, table)?);
    let Some(rs) = rs else {
        return Ok("the replica registers it but has no such table".into());
    };
    if ps.as_deref() != Some(rs.as_str()) {
        return Ok(format!(
            "its definition differs: the primary has `{}`, the replica `{rs}`",
            ps.unwrap_or_default()
        ));
    }
    let (pq, nkey, pc) = ordered_select(p, table)?;
    let (rq, _, rc) = ordered_select(r, table)?;
    if pc != rc {
        return Ok(format!(
            "its columns differ: the primary has ({}), the replica ({})",
            pc.join(", "),
            rc.join(", ")
        ));
    }
    let (mut a, mut b) = (
        p.prepare(&pq).map_err(|e| e.to_string())?,
        r.prepare(&rq).map_err(|e| e.to_string())?,
    );
    let n = pc.len();
    let (mut ar, mut br) = (
        a.query([]).map_err(|e| e.to_string())?,
        b.query([]).map_err(|e| e.to_string())?,
    );
    let row = |x: Option<&rusqlite::Row<'_>>| -> Result<Option<Vec<Stored>>, String> {
        x.map(|x| {
            (0..n)
                .map(|i| x.get_ref(i).map(Stored::of).map_err(|e| e.to_string()))
                .collect()
        })
        .transpose()
    };
    loop {
        let x = row(ar.next().map_err(|e| e.to_string())?)?;
        let y = row(br.next().map_err(|e| e.to_string())?)?;
        match (x, y) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) if a[..nkey] == b[..nkey] => {
                return Ok(format!(
                    "the row with key {} is {} on the primary, {} on the replica",
                    show(&a[..nkey]),
                    show(&a),
                    show(&b)
                ))
            }
            (Some(a), Some(b)) => {
                return Ok(format!(
                    "from key {} on they differ: the primary's next row is {}, the replica's {}",
                    show(&a[..nkey]),
                    show(&a),
                    show(&b)
                ))
            }
            (Some(a), None) => {
                return Ok(format!(
                    "the replica lacks the row with key {} ({}) and every row after it",
                    show(&a[..nkey]),
                    show(&a)
                ))
            }
            (None, Some(b)) => {
                return Ok(format!(
                    "the replica has a row the primary does not: key {} ({})",
                    show(&b[..nkey]),
                    show(&b)
                ))
            }
            (None, None) => return Ok("their digests differ".into()),
        }
    }
}

/// The primary's replicated tables at its head, read in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryDigests {
    /// Its generation.
    pub generation: replication::wal::Generation,
    /// The head the digests are at.
    pub commit_id: CommitId,
    /// Each replicated table's digest, by name.
    pub tables: Vec<TableDigest>,
    /// Each table's key ranges and their digests (empty when not asked
    /// for).
    pub ranges: Vec<TableRanges>,
}

/// Opens the primary file read-only and begins the read transaction the
/// head and the digests are read in (with each table's key ranges when
/// `ranges`).
fn primary_at_head(pp: &Path, ranges: bool) -> Result<(Connection, PrimaryDigests), String> {
    let p = Connection::open_with_flags(pp, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    p.execute_batch("BEGIN").map_err(|e| e.to_string())?;
    // SAFETY: used only within this call, on this thread.
    let wal = WalTables::new(unsafe { RawConn::new(p.handle()) });
    let generation = wal.generation().map_err(|e| e.to_string())?;
    let head = wal.head().map_err(|e| e.to_string())?;
    let (mut tables, mut cut) = (Vec::new(), Vec::new());
    for t in names(&p, "SELECT name FROM main.aerodb_tables ORDER BY name")? {
        let per = if ranges {
            let rows: i64 = p
                .query_row(
                    &format!("SELECT count(*) FROM main.{}", quote_ident(&t)),
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| e.to_string())?;
            Some(rows_per_range(rows as u64))
        } else {
            None
        };
        let (d, r) = scan(&p, &t, per)?;
        tables.push(d);
        if let Some(per) = per {
            cut.push(TableRanges {
                table: t,
                rows_per_range: per,
                ranges: r,
            });
        }
    }
    Ok((
        p,
        PrimaryDigests {
            generation,
            commit_id: head,
            tables,
            ranges: cut,
        },
    ))
}

/// The digests of the primary file `primary`'s replicated tables at its
/// head, with each table's key ranges (what `aerodb serve` answers on
/// `/v1/digest`).
pub fn digests_at_head(primary: impl AsRef<Path>) -> Result<PrimaryDigests, VerifyError> {
    let pp = primary.as_ref();
    primary_at_head(pp, true)
        .map(|(_, d)| d)
        .map_err(|message| VerifyError::Primary {
            path: pp.display().to_string(),
            message,
        })
}

/// Holds the replica file `rp` for verify, before the primary is read
/// (so nothing it received can be past the primary's head): it must be a
/// replica; no runtime may start on it meanwhile, and a running one holds
/// still (stopped, the hold recorded) until the hold is released.
fn hold_replica(rp: &Path) -> Result<ReplicaHold, String> {
    if !rp.exists() {
        return Err("no such file".into());
    }
    // A file that is not a replica is never changed (opening it as one
    // would create the replica's tables).
    let probe = Connection::open_with_flags(rp, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let is_replica: bool = probe
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'aerodb_replica_position'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    if !is_replica {
        return Err("it is not an AeroDB replica".into());
    }
    drop(probe);
    ReplicaHold::take(rp, &format!("aerodb verify (pid {})", std::process::id()))
}

/// Opens the held replica `rp` to verify: it must follow `generation` and
/// not be past `head`.
fn open_replica(
    rp: &Path,
    generation: replication::wal::Generation,
    head: CommitId,
) -> Result<(ReplicaDb, replication::wal::ChainPosition), String> {
    // Every refusal before anything opens it for writing (opening it as a
    // replica sets its journal mode and re-installs its guards).
    let probe = Connection::open_with_flags(rp, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let at = crate::replica::read_position(&probe)
        .map_err(|e| e.to_string())?
        .ok_or("it is not an AeroDB replica (no position)")?;
    drop(probe);
    if at.generation != generation {
        return Err(format!(
            "it follows generation {}, the primary is generation {generation}",
            at.generation
        ));
    }
    if at.commit_id > head {
        return Err(format!(
            "it is at commit {}, past the primary's head {head} (a restored or forked primary?)",
            at.commit_id
        ));
    }
    let db = ReplicaDb::open(rp).map_err(|e| e.to_string())?;
    Ok((db, at))
}

/// Releases the hold on the replica (a running runtime restarts from
/// where verify left it); the runtime's answers, for the verdict.
fn release(hold: ReplicaHold) -> Option<String> {
    let held = hold.held().map(str::to_owned)?;
    match hold.release() {
        Ok(released) => Some(format!("{held}; {}", released.unwrap_or_default())),
        Err(e) => {
            tracing::warn!(error = %e, "releasing the replica after verify");
            Some(format!("{held}; releasing it failed: {e}"))
        }
    }
}

/// Why the replica could not be brought to the head.
enum Bring {
    /// Applying the primary's WAL found the replica's rows differ (a row
    /// an Update or Delete needs is not there): the table and why.
    Diverged(Difference),
    /// Anything else.
    Failed(String),
}

/// Applies WAL to `db` (at `at`) until it is exactly at `head`, taking
/// segments from `fetch(from)` (which holds no record after `head`).
fn bring_to(
    db: &mut ReplicaDb,
    at: replication::wal::ChainPosition,
    head: CommitId,
    fetch: &dyn Fn(CommitId) -> Result<Option<Vec<u8>>, String>,
) -> Result<(), Bring> {
    // DDL behind replication's back is a difference even when nothing
    // is left to apply (the Applier's own check meets it only then).
    match crate::replica::guard::tampering(db.connection()) {
        Ok(Some(t)) => {
            return Err(Bring::Diverged(Difference {
                detail: format!(
                    "replica table '{}' was changed behind replication's back: {}; what it holds may no longer be the primary's: rebuild the replica from the primary",
                    t.table, t.what
                ),
                table: t.table,
            }))
        }
        Ok(None) => {}
        Err(e) => return Err(Bring::Failed(format!("checking the replica's schema: {e}"))),
    }
    bring_to_inner(db, at, head, fetch).map_err(|e| match e {
        ApplyError::Tampered { ref table, .. } => Bring::Diverged(Difference {
            table: table.clone(),
            detail: e.to_string(),
        }),
        ApplyError::Divergence { ref table, .. } => Bring::Diverged(Difference {
            table: table.clone(),
            detail: format!(
                "the primary's WAL up to commit {head} does not apply to the replica's rows: {e}"
            ),
        }),
        other => Bring::Failed(other.to_string()),
    })
}

fn bring_to_inner(
    db: &mut ReplicaDb,
    mut at: replication::wal::ChainPosition,
    head: CommitId,
    fetch: &dyn Fn(CommitId) -> Result<Option<Vec<u8>>, String>,
) -> Result<(), ApplyError> {
    while at.commit_id < head {
        let begins = at;
        at = db.apply_transaction(None, &mut |tx, after| {
            // What the replica's Receiver stored first (it is applied and
            // marked Applied, as the runtime's Applier would), then the
            // primary's WAL.
            if let Some(s) = stored_segment(tx, after, head)? {
                return Ok(s);
            }
            let Some(bytes) = fetch(after.commit_id.next()).map_err(ApplyError::Source)? else {
                return Err(if *after == begins {
                    ApplyError::Source(format!(
                        "the primary's WAL from commit {} is gone (truncated): bootstrap the replica first (aerodb catch-up)",
                        after.commit_id.next()
                    ))
                } else {
                    ApplyError::TransactionCut {
                        after: after.commit_id,
                    }
                });
            };
            let segment = replication::wal::Segment::decode(&bytes)
                .map_err(|e| ApplyError::Source(e.to_string()))?;
            Ok(replication::wal::validate(segment, after)?)
        })?;
    }
    Ok(())
}

/// The segment the replica's Receiver stored right after `after` and has
/// not applied, validated and marked Applied in the apply transaction
/// `tx`; `None` if none is stored. One it cannot apply (Rejected, a
/// snapshot not installed, past `head`) refuses the transaction.
fn stored_segment(
    tx: &Connection,
    after: &replication::wal::ChainPosition,
    head: CommitId,
) -> Result<Option<replication::wal::ValidatedSegment>, ApplyError> {
    use rusqlite::OptionalExtension;
    let first = after.commit_id.next();
    type Row = (i64, String, Option<String>, Option<String>, Option<Vec<u8>>);
    let row: Option<Row> = tx
        .prepare_cached(
            "SELECT s.last_commit_id, s.state, s.reason, s.snapshot_path, b.bytes FROM main.aerodb_replica_segments s LEFT JOIN main.aerodb_replica_segment_bytes b ON b.first_commit_id = s.first_commit_id WHERE s.first_commit_id = ?1 AND s.state <> 'Applied'",
        )
        .and_then(|mut s| {
            s.query_row([first.0 as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()
        })
        .map_err(|e| ApplyError::Source(format!("reading the replica's stored segments: {e}")))?;
    let Some((last, state, reason, snapshot, bytes)) = row else {
        return Ok(None);
    };
    let last = CommitId(last as u64);
    let refuse = |problem: String| ApplyError::Stored {
        first,
        last,
        problem,
    };
    if state == "Rejected" {
        return Err(refuse(format!(
            "it was rejected ({}): replication is blocked there",
            reason.unwrap_or_default()
        )));
    }
    if snapshot.is_some() {
        return Err(refuse(
            "it is a received snapshot not installed yet: let the replica's runtime install it, then verify".into(),
        ));
    }
    if last > head {
        return Err(refuse(format!(
            "it is past the primary's head {head} (a restored or forked primary?)"
        )));
    }
    let bytes = bytes.ok_or_else(|| refuse("its bytes are not stored".into()))?;
    let segment = replication::wal::Segment::decode(&bytes)
        .map_err(|e| refuse(format!("its stored bytes do not decode: {e}")))?;
    let segment = replication::wal::validate(segment, after)
        .map_err(|e| refuse(format!("it does not continue the replica: {e}")))?;
    crate::replica::mark_applied(tx, (first, last), segment.start().wal_offset, segment.end())?;
    Ok(Some(segment))
}

fn replica_digests(db: &ReplicaDb) -> Result<(Vec<String>, Vec<TableDigest>), String> {
    let r = db.connection();
    let tables = names(
        r,
        "SELECT name FROM main.aerodb_replica_tables ORDER BY name",
    )?;
    let digests = tables
        .iter()
        .map(|t| digest_of(r, t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((tables, digests))
}

/// The first table whose digests differ, and how (`detail` names the row
/// when both sides' rows can be read: `rows` gives the primary's).
fn compare(
    primary: &[TableDigest],
    replica: &[TableDigest],
    detail: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Option<Difference>, String> {
    let names: Vec<&String> = primary
        .iter()
        .map(|d| &d.table)
        .chain(replica.iter().map(|d| &d.table))
        .collect();
    for t in names {
        let (a, b) = (
            primary.iter().find(|d| &d.table == t),
            replica.iter().find(|d| &d.table == t),
        );
        let what = match (a, b) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(_), Some(_)) => detail(t)?,
            (Some(_), None) => "the replica does not replicate it".into(),
            (None, _) => "the primary does not replicate it".into(),
        };
        return Ok(Some(Difference {
            table: t.clone(),
            detail: what,
        }));
    }
    Ok(None)
}

/// Compares the replica file `replica` with the primary file `primary` at
/// the primary's head, bringing the replica there first (WAL up to the
/// head only). The replica must not be running (stop it first).
pub fn verify(
    primary: impl AsRef<Path>,
    replica: impl AsRef<Path>,
) -> Result<Verdict, VerifyError> {
    let (pp, rp) = (primary.as_ref(), replica.as_ref());
    let perr = |message: String| VerifyError::Primary {
        path: pp.display().to_string(),
        message,
    };
    let rerr = |message: String| VerifyError::Replica {
        path: rp.display().to_string(),
        message,
    };
    let hold = hold_replica(rp).map_err(rerr)?;
    let (p, digests) = primary_at_head(pp, false).map_err(perr)?;
    let head = digests.commit_id;
    let (mut db, at) = open_replica(rp, digests.generation, head).map_err(rerr)?;
    let reader = PrimaryWalReader::open(pp).map_err(|e| perr(e.to_string()))?;
    const BYTES: usize = 1 << 20;
    let brought = bring_to(&mut db, at, head, &|from| {
        reader
            .segment_until(from, Some(head), BYTES)
            .map_err(|e| match e {
                crate::primary::PrimaryError::Wal(
                    crate::primary_wal::WalReadError::Truncated { .. },
                ) => format!(
                    "primary {}: {e}; bootstrap the replica first (aerodb catch-up)",
                    pp.display()
                ),
                e => format!("primary {}: {e}", pp.display()),
            })
    });
    let (_, replica) = replica_digests(&db).map_err(rerr)?;
    let difference = match brought {
        Err(Bring::Diverged(d)) => Some(d),
        Err(Bring::Failed(e)) => return Err(rerr(e)),
        Ok(()) => compare(&digests.tables, &replica, &|t| {
            first_difference(&p, db.connection(), t)
        })
        .map_err(rerr)?,
    };
    p.execute_batch("COMMIT").map_err(|e| perr(e.to_string()))?;
    drop(db);
    Ok(Verdict {
        commit_id: head,
        primary: digests.tables,
        replica,
        difference,
        held: release(hold),
    })
}
