//! The backlog the crash tests kill processes over, and its model.

use std::collections::BTreeMap;
use std::path::Path;
use storage_adapter::primary::Primary;

/// Writes a primary at `path` with table `t` and `backlog` commits after
/// the schema record: commit `k + 1` (k = 1..=backlog) inserts row k; every
/// 7th also updates row k-3 and every 11th deletes row k-5, in one
/// transaction.
pub fn write_backlog(path: &Path, backlog: i64) {
    let mut primary = Primary::open(path).expect("primary");
    primary
        .connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad TEXT)")
        .expect("table");
    primary.replicate("t").expect("replicate");
    for k in 1..=backlog {
        let tx = primary.connection_mut().transaction().expect("tx");
        tx.execute(
            "INSERT INTO t VALUES (?1, ?2, 'padding padding')",
            [k, k * 10],
        )
        .expect("insert");
        if k % 7 == 0 {
            tx.execute("UPDATE t SET v = -v WHERE id = ?1", [k - 3])
                .expect("update");
        }
        if k % 11 == 0 {
            tx.execute("DELETE FROM t WHERE id = ?1", [k - 5])
                .expect("delete");
        }
        tx.commit().expect("commit");
    }
}

/// The primary's table `t` (id -> v) at CommitId `commit` (1 = schema
/// only).
pub fn model_at(commit: i64) -> BTreeMap<i64, i64> {
    let mut rows = BTreeMap::new();
    for k in 1..commit {
        rows.insert(k, k * 10);
        if k % 7 == 0 {
            if let Some(v) = rows.get_mut(&(k - 3)) {
                *v = -*v;
            }
        }
        if k % 11 == 0 {
            rows.remove(&(k - 5));
        }
    }
    rows
}
