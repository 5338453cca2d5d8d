//! Installing a snapshot in one transaction: the replicated tables
//! replaced, the checksum recomputed over what was installed, the position
//! and the bootstrap recorded (spec 5.5, T1).

use super::schema::{run_schema_statement, table_sql, SchemaStatement};
use super::segments::mark_applied;
use super::{read_position, sql_err, ApplyError, ReplicaDb};
use crate::table_info::quote_ident;
use replication::wal::{ChainPosition, CommitId};
use rusqlite::{params, TransactionBehavior};
use std::path::Path;

impl ReplicaDb {
    /// Installs the snapshot file `path`, standing for commits
    /// `first..=last`, in ONE transaction: the replicated tables are
    /// replaced by the snapshot's, the position becomes `end`, the
    /// bootstrap metadata is recorded, and (runtime) the item's row becomes
    /// Applied. The tables' checksum is recomputed inside the transaction
    /// and must equal the snapshot's, or nothing changes.
    pub fn install_snapshot(
        &mut self,
        first: CommitId,
        last: CommitId,
        path: &Path,
        end: ChainPosition,
    ) -> Result<ChainPosition, ApplyError> {
        if !self.conn.is_autocommit() {
            return Err(ApplyError::InTransaction);
        }
        let refuse = |problem: String| ApplyError::Snapshot {
            first,
            last,
            problem,
        };
        let file = path
            .to_str()
            .ok_or_else(|| refuse(format!("path {} is not UTF-8", path.display())))?;
        self.conn
            .execute("ATTACH DATABASE ?1 AS aerodb_snap", [file])
            .map_err(sql_err("attaching the snapshot", Some(last)))?;
        let result = self.install_attached(first, last, end);
        let detached = self
            .conn
            .execute_batch("DETACH DATABASE aerodb_snap")
            .map_err(sql_err("detaching the snapshot", Some(last)));
        // The tables were replaced (or the attempt rolled back): shapes are
        // looked up again.
        self.shapes.clear();
        let end = result?;
        detached?;
        let _ = std::fs::remove_file(path);
        Ok(end)
    }

    pub(super) fn install_attached(
        &mut self,
        first: CommitId,
        last: CommitId,
        end: ChainPosition,
    ) -> Result<ChainPosition, ApplyError> {
        let refuse = |problem: String| ApplyError::Snapshot {
            first,
            last,
            problem,
        };
        let snap = |e: crate::snapshot::SnapshotError| refuse(e.to_string());
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(sql_err("beginning the snapshot transaction", None))?;
        let stored = read_position(&tx)?.ok_or(ApplyError::NotReplica)?;
        if stored.generation != end.generation {
            return Err(ApplyError::ForeignGeneration {
                expected: stored.generation,
                actual: end.generation,
            });
        }
        if first != stored.commit_id.next() {
            return Err(refuse(format!(
                "the replica is at commit {}, the snapshot stands for commits from {first}",
                stored.commit_id
            )));
        }
        let info = crate::snapshot::read_info(&tx, "aerodb_snap").map_err(snap)?;
        if info.position() != end || info.commit_id != last {
            return Err(refuse(format!(
                "it records {:?}, it was validated as ending at {end:?}",
                info.position()
            )));
        }
        let old: Vec<String> = tx
            .prepare("SELECT name FROM main.aerodb_replica_tables")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(sql_err("listing replicated tables", Some(last)))?;
        for t in &old {
            tx.execute_batch(&format!("DROP TABLE IF EXISTS main.{}", quote_ident(t)))
                .map_err(sql_err("dropping a replaced table", Some(last)))?;
        }
        tx.execute("DELETE FROM main.aerodb_replica_tables", [])
            .map_err(sql_err("clearing replicated tables", Some(last)))?;
        for t in &info.tables {
            // The replicated tables were dropped above: one still here is a
            // user's, never overwritten.
            if table_sql(&tx, last, t)?.is_some() {
                return Err(ApplyError::UserTable {
                    commit_id: last,
                    table: t.clone(),
                });
            }
            let (create, indexes) =
                crate::snapshot::definition(&tx, "aerodb_snap", t).map_err(snap)?;
            // The statements come from a file: one CREATE each, and they
            // must create exactly this table.
            run_schema_statement(&tx, last, t, &create, SchemaStatement::Table)?;
            for i in &indexes {
                run_schema_statement(&tx, last, t, i, SchemaStatement::Index)?;
            }
            if table_sql(&tx, last, t)?.as_deref() != Some(create.as_str()) {
                return Err(refuse(format!(
                    "its statement `{create}` did not create table '{t}'"
                )));
            }
            let (cols, _) = crate::snapshot::shape(&tx, "main", t).map_err(snap)?;
            let list: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
            tx.execute_batch(&format!(
                "INSERT INTO main.{t}({l}) SELECT {l} FROM aerodb_snap.{t}",
                t = quote_ident(t),
                l = list.join(", ")
            ))
            .map_err(sql_err("copying rows from the snapshot", Some(last)))?;
            tx.execute(
                "INSERT INTO main.aerodb_replica_tables(name, schema_commit_id, sql) VALUES (?1, ?2, ?3)",
                params![t, last.0 as i64, create],
            )
            .map_err(sql_err("recording a replicated table", Some(last)))?;
            super::guard::install(&tx, Some(last), t, end.generation)?;
        }
        let computed = crate::snapshot::checksum(&tx, "main", &info.tables).map_err(snap)?;
        if computed != info.checksum {
            return Err(refuse(format!(
                "the installed tables' checksum is 0x{computed:08x}, the snapshot records 0x{:08x}",
                info.checksum
            )));
        }
        tx.execute(
            "UPDATE main.aerodb_replica_position SET applied_commit_id = ?1, applied_wal_offset = ?2, applied_chain = ?3 WHERE id = 1 AND applied_commit_id = ?4",
            params![
                end.commit_id.0 as i64,
                end.wal_offset.0 as i64,
                i64::from(end.chain),
                stored.commit_id.0 as i64
            ],
        )
        .map_err(sql_err("advancing the replica position", Some(last)))?;
        if self.track_segments {
            mark_applied(&tx, (first, last), stored.wal_offset, end)?;
        }
        let at = crate::wall_clock::now_ms();
        tx.execute(
            "INSERT OR REPLACE INTO main.aerodb_replica_bootstrap(commit_id, generation, wal_offset, chain, checksum, replaced_from, tables, at_unix_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                end.commit_id.0 as i64,
                end.generation.0 as i64,
                end.wal_offset.0 as i64,
                i64::from(end.chain),
                i64::from(info.checksum),
                first.0 as i64,
                info.tables.join("\n"),
                at
            ],
        )
        .map_err(sql_err("recording the bootstrap", Some(last)))?;
        tx.commit()
            .map_err(sql_err("committing the snapshot transaction", Some(last)))?;
        Ok(end)
    }
}
