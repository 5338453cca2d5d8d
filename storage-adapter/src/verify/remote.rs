//! `aerodb verify --primary URL`: the primary's digests from `aerodb
//! serve`'s `/v1/digest` (with each table's key ranges), its WAL up to
//! that head from `/v1/segments?until=`.

use super::{
    bring_to, compare, hold_replica, open_replica, release, replica_digests, rows_per_range, scan,
    table_sql, Bring, RangeDigest, TableDigest, TableRanges, Verdict, VerifyError,
};
use replication::wal::CommitId;
use rusqlite::Connection;
use std::path::Path;

/// Largest `/v1/digest` answer read.
const MAX_DIGEST_BYTES: u64 = 256 << 20;

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The first range where `replica`'s rows differ from the primary's
/// `ranges` (the replica's cut the same way), said for a message.
fn first_range_difference(replica: &Connection, primary: &TableRanges) -> Result<String, String> {
    if table_sql(replica, &primary.table)?.is_none() {
        return Ok("the replica registers it but has no such table".into());
    }
    let (_, mine) = scan(replica, &primary.table, Some(primary.rows_per_range))?;
    let per = primary.rows_per_range;
    let describe = |r: Option<&RangeDigest>| match r {
        Some(r) if r.first == r.last => format!("key {} ({})", r.first, plural(r.rows, "row")),
        Some(r) => format!("keys {} to {} ({})", r.first, r.last, plural(r.rows, "row")),
        None => "no rows".into(),
    };
    for i in 0..primary.ranges.len().max(mine.len()) {
        let (a, b) = (primary.ranges.get(i), mine.get(i));
        if a != b {
            let (a, b) = (describe(a), describe(b));
            let how = if a == b {
                format!("both have {a}, with other values")
            } else {
                format!("the primary has {a}, the replica {b}")
            };
            let i = i as u64;
            let at = if per == 1 {
                format!("row {} in key order differs", i + 1)
            } else {
                format!(
                    "rows {} to {} in key order differ",
                    i.saturating_mul(per).saturating_add(1),
                    (i + 1).saturating_mul(per)
                )
            };
            return Ok(format!("{at}: {how}"));
        }
    }
    Ok("every row is equal; its definition or its columns differ".into())
}

/// [`verify`](super::verify) against the primary an `aerodb serve` at `url` serves
/// (authenticating with `token`): its `/v1/digest`, then its WAL up to that
/// head (`/v1/segments?until=`). A difference names the table and the two
/// digests (the primary's rows are not fetched). An `https://` `url` is
/// checked against the CAs of the PEM file `ca_file` when given, else the
/// webpki roots.
pub fn verify_url(
    url: &str,
    token: &str,
    ca_file: Option<&Path>,
    replica: impl AsRef<Path>,
) -> Result<Verdict, VerifyError> {
    let rp = replica.as_ref();
    let base = url.trim_end_matches('/');
    let perr = |message: String| VerifyError::Primary {
        path: base.to_owned(),
        message,
    };
    let rerr = |message: String| VerifyError::Replica {
        path: rp.display().to_string(),
        message,
    };
    let agent = crate::http_source::agent(base, ca_file, std::time::Duration::from_secs(60))
        .map_err(|f| perr(f.reason))?;
    let get = |path: &str| {
        agent
            .get(&format!("{base}{path}"))
            .set("Authorization", &format!("Bearer {token}"))
            .call()
            .map_err(|e| match e {
                ureq::Error::Status(code, r) => {
                    format!("{path}: {code}: {}", r.into_string().unwrap_or_default())
                }
                other => format!("{path}: {other}"),
            })
    };
    let hold = hold_replica(rp).map_err(rerr)?;
    let mut body = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(
            get("/v1/digest").map_err(perr)?.into_reader(),
            MAX_DIGEST_BYTES,
        ),
        &mut body,
    )
    .map_err(|e| perr(format!("/v1/digest: {e}")))?;
    let digest: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| perr(format!("/v1/digest: {e}")))?;
    let field = |k: &str| {
        digest
            .get(k)
            .ok_or_else(|| perr(format!("/v1/digest lacks '{k}'")))
    };
    let head = CommitId(
        field("commit_id")?
            .as_u64()
            .ok_or_else(|| perr("/v1/digest: commit_id".into()))?,
    );
    let generation: replication::wal::Generation = field("generation")?
        .as_str()
        .and_then(|g| u64::from_str_radix(g, 16).ok())
        .map(replication::wal::Generation)
        .ok_or_else(|| perr("/v1/digest: generation".into()))?;
    let tables = field("tables")?
        .as_array()
        .ok_or_else(|| perr("/v1/digest: tables".into()))?
        .iter()
        .map(|t| {
            Some(TableDigest {
                table: t.get("table")?.as_str()?.to_owned(),
                rows: t.get("rows")?.as_u64()?,
                sha256: t.get("sha256")?.as_str()?.to_owned(),
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| perr("/v1/digest: a table entry is malformed".into()))?;
    // Each table's key ranges (servers before them send none: the
    // difference then names the table only).
    let ranges: Vec<TableRanges> = digest
        .get("ranges")
        .and_then(|r| r.as_array())
        .map(|all| {
            all.iter()
                .map(|t| {
                    Some(TableRanges {
                        table: t.get("table")?.as_str()?.to_owned(),
                        rows_per_range: t.get("rows_per_range")?.as_u64()?.max(1),
                        ranges: t
                            .get("ranges")?
                            .as_array()?
                            .iter()
                            .map(|r| {
                                Some(RangeDigest {
                                    first: r.get("first")?.as_str()?.to_owned(),
                                    last: r.get("last")?.as_str()?.to_owned(),
                                    rows: r.get("rows")?.as_u64()?,
                                    sha256: r.get("sha256")?.as_str()?.to_owned(),
                                })
                            })
                            .collect::<Option<Vec<_>>>()?,
                    })
                })
                .collect::<Option<Vec<_>>>()
        })
        .unwrap_or(Some(Vec::new()))
        .ok_or_else(|| perr("/v1/digest: a key range entry is malformed".into()))?;
    // The cut follows from the primary's row count; any other is not the
    // server's (and a tiny one would make the replica's side huge).
    for r in &ranges {
        let rows = tables.iter().find(|t| t.table == r.table).map(|t| t.rows);
        if rows.map(rows_per_range) != Some(r.rows_per_range) {
            return Err(perr(format!(
                "/v1/digest: table '{}' is cut in ranges of {} rows, not what its {} rows make",
                r.table,
                r.rows_per_range,
                rows.map_or("unknown number of".into(), |n| n.to_string())
            )));
        }
    }
    let (mut db, at) = open_replica(rp, generation, head).map_err(rerr)?;
    let brought = bring_to(&mut db, at, head, &|from| {
        let r = get(&format!(
            "/v1/segments?from={}&until={}&max_bytes={}",
            from.0,
            head.0,
            1 << 20
        ))?;
        if r.status() == 204 {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut r.into_reader(), &mut bytes)
            .map_err(|e| format!("/v1/segments: {e}"))?;
        Ok(Some(bytes))
    });
    let (_, replica) = replica_digests(&db).map_err(rerr)?;
    if let Err(b) = brought {
        return match b {
            Bring::Diverged(d) => Ok(Verdict {
                commit_id: head,
                primary: tables,
                replica,
                difference: Some(d),
                held: release(hold),
            }),
            Bring::Failed(e) => Err(rerr(e)),
        };
    }
    let difference = compare(&tables, &replica, &|t| {
        if let Some(r) = ranges.iter().find(|r| r.table == t) {
            return first_range_difference(db.connection(), r);
        }
        let (a, b) = (
            tables.iter().find(|d| d.table == t),
            replica.iter().find(|d| d.table == t),
        );
        Ok(match (a, b) {
            (Some(a), Some(b)) => format!(
                "the primary has {} rows (sha256 {}), the replica {} (sha256 {})",
                a.rows, a.sha256, b.rows, b.sha256
            ),
            _ => "their digests differ".into(),
        })
    })
    .map_err(rerr)?;
    Ok(Verdict {
        commit_id: head,
        primary: tables,
        replica,
        difference,
        held: release(hold),
    })
}
