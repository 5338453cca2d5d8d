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
//! order to name the first row that differs.

use crate::primary::PrimaryWalReader;
use crate::primary_wal::WalTables;
use crate::raw::RawConn;
use crate::replica::{next_segment_until, ApplyError, ReplicaDb};
use crate::table_info::{self, quote_ident};
use replication::wal::{encode_count, encode_value, CommitId};
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};
use std::path::Path;

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

/// A canonical rendering of a row for messages.
fn show(values: &[rusqlite::types::Value]) -> String {
    use rusqlite::types::Value as V;
    let parts: Vec<String> = values
        .iter()
        .map(|v| match v {
            V::Null => "NULL".into(),
            V::Integer(i) => i.to_string(),
            V::Real(r) => format!("{r:?}"),
            V::Text(t) => format!("'{}'", t.replace('\'', "''")),
            V::Blob(b) => format!(
                "x'{}'",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        })
        .collect();
    format!("({})", parts.join(", "))
}

/// The `SELECT` that reads `table` in key order, and how many key columns
/// lead each row.
fn ordered_select(conn: &Connection, table: &str) -> Result<(String, usize), String> {
    // SAFETY: used only within this call, on this thread.
    let raw = unsafe { RawConn::new(conn.handle()) };
    let columns = table_info::columns(raw, "main", table).map_err(|e| e.message)?;
    let key = table_info::primary_key(raw, "main", table).map_err(|e| e.message)?;
    if key.is_empty() {
        return Err(format!("table '{table}' has no primary key"));
    }
    let mut names: Vec<String> = key.iter().map(|k| quote_ident(&k.name)).collect();
    names.extend(
        columns
            .iter()
            .filter(|c| !key.iter().any(|k| k.name == c.name))
            .map(|c| quote_ident(&c.name)),
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
    Ok((
        format!(
            "SELECT {} FROM main.{} ORDER BY {}",
            names.join(", "),
            quote_ident(table),
            order.join(", ")
        ),
        key.len(),
    ))
}

fn rows_of(conn: &Connection, table: &str) -> Result<Vec<Vec<rusqlite::types::Value>>, String> {
    let (sql, _) = ordered_select(conn, table)?;
    let mut s = conn.prepare(&sql).map_err(|e| e.to_string())?;
    let n = s.column_count();
    let rows = s
        .query_map([], |r| {
            (0..n).map(|i| r.get(i)).collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

fn digest_of(conn: &Connection, table: &str) -> Result<TableDigest, String> {
    let (sql, _) = ordered_select(conn, table)?;
    let mut s = conn.prepare(&sql).map_err(|e| e.to_string())?;
    let n = s.column_count();
    let mut rows = s.query([]).map_err(|e| e.to_string())?;
    let mut hash = Sha256::new();
    let mut count = 0u64;
    let mut buf = Vec::new();
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
    }
    let sha: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(TableDigest {
        table: table.to_owned(),
        rows: count,
        sha256: sha,
    })
}

fn names(conn: &Connection, sql: &str) -> Result<Vec<String>, String> {
    let mut s = conn.prepare(sql).map_err(|e| e.to_string())?;
    let rows = s.query_map([], |r| r.get(0)).map_err(|e| e.to_string())?;
    rows.collect::<Result<Vec<String>, _>>()
        .map_err(|e| e.to_string())
}

/// The first row where two tables' key-ordered rows differ.
fn first_difference(p: &Connection, r: &Connection, table: &str) -> Result<String, String> {
    let (pr, rr) = (rows_of(p, table)?, rows_of(r, table)?);
    let (_, nkey) = ordered_select(p, table)?;
    for i in 0..pr.len().max(rr.len()) {
        match (pr.get(i), rr.get(i)) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) if a[..nkey] == b[..nkey] => {
                return Ok(format!(
                    "the row with key {} is {} on the primary, {} on the replica",
                    show(&a[..nkey]),
                    show(a),
                    show(b)
                ))
            }
            (Some(a), Some(b)) => {
                return Ok(format!(
                    "from key {} on they differ: the primary's next row is {}, the replica's {}",
                    show(&a[..nkey]),
                    show(a),
                    show(b)
                ))
            }
            (Some(a), None) => {
                return Ok(format!(
                    "the replica lacks the row with key {} ({}) and every row after it",
                    show(&a[..nkey]),
                    show(a)
                ))
            }
            (None, Some(b)) => {
                return Ok(format!(
                    "the replica has a row the primary does not: key {} ({})",
                    show(&b[..nkey]),
                    show(b)
                ))
            }
            (None, None) => break,
        }
    }
    Ok("their digests differ".into())
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
    if !rp.exists() {
        return Err(rerr("no such file".into()));
    }
    // A file that is not a replica is never changed (opening it as one
    // would create the replica's tables).
    let probe = Connection::open_with_flags(rp, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| rerr(e.to_string()))?;
    let is_replica: bool = probe
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'aerodb_replica_position'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| rerr(e.to_string()))?;
    drop(probe);
    if !is_replica {
        return Err(rerr("it is not an AeroDB replica".into()));
    }
    if crate::runtime::holds_lock(rp) {
        return Err(rerr(
            "a replica runtime holds it; stop it first (verify brings the replica to the primary's head itself)"
                .into(),
        ));
    }
    let p = Connection::open_with_flags(pp, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| perr(e.to_string()))?;
    // One read transaction: the head and the tables at exactly that head.
    p.execute_batch("BEGIN").map_err(|e| perr(e.to_string()))?;
    // SAFETY: used only within this call, on this thread.
    let wal = WalTables::new(unsafe { RawConn::new(p.handle()) });
    let head = wal.head().map_err(|e| perr(e.to_string()))?;
    let tables = names(&p, "SELECT name FROM main.aerodb_tables ORDER BY name").map_err(perr)?;
    let primary_digests = tables
        .iter()
        .map(|t| digest_of(&p, t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(perr)?;

    // The replica, brought to exactly the head.
    let reader = PrimaryWalReader::open(pp).map_err(|e| perr(e.to_string()))?;
    let mut db = ReplicaDb::open(rp).map_err(|e| rerr(e.to_string()))?;
    let mut at = db
        .position()
        .map_err(|e| rerr(e.to_string()))?
        .ok_or_else(|| rerr("it is not an AeroDB replica (no position)".into()))?;
    if at.generation != reader.generation() {
        return Err(rerr(format!(
            "it follows generation {}, the primary is generation {}",
            at.generation,
            reader.generation()
        )));
    }
    if at.commit_id > head {
        return Err(rerr(format!(
            "it is at commit {}, past the primary's head {head} (a restored or forked primary?)",
            at.commit_id
        )));
    }
    const BYTES: usize = 1 << 20;
    while at.commit_id < head {
        let from = at.commit_id.next();
        let first = next_segment_until(&reader, &at, Some(head), BYTES)
            .map_err(|e| rerr(e.to_string()))?
            .ok_or_else(|| {
                perr(format!(
                    "its WAL from commit {from} is gone (truncated): bootstrap the replica first (aerodb catch-up)"
                ))
            })?;
        at = db
            .apply_transaction(Some(&first), &mut |_, after| {
                next_segment_until(&reader, after, Some(head), BYTES)?.ok_or(
                    ApplyError::TransactionCut {
                        after: after.commit_id,
                    },
                )
            })
            .map_err(|e| rerr(e.to_string()))?;
    }
    let r = db.connection();
    let replica_tables = names(
        r,
        "SELECT name FROM main.aerodb_replica_tables ORDER BY name",
    )
    .map_err(rerr)?;
    let replica_digests = replica_tables
        .iter()
        .map(|t| digest_of(r, t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(rerr)?;
    let mut difference = None;
    for t in tables.iter().chain(&replica_tables) {
        let (a, b) = (
            primary_digests.iter().find(|d| &d.table == t),
            replica_digests.iter().find(|d| &d.table == t),
        );
        let detail = match (a, b) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(_), Some(_)) => first_difference(&p, r, t).map_err(rerr)?,
            (Some(_), None) => "the replica does not replicate it".into(),
            (None, _) => "the primary does not replicate it".into(),
        };
        difference = Some(Difference {
            table: t.clone(),
            detail,
        });
        break;
    }
    p.execute_batch("COMMIT").map_err(|e| perr(e.to_string()))?;
    Ok(Verdict {
        commit_id: head,
        primary: primary_digests,
        replica: replica_digests,
        difference,
    })
}
