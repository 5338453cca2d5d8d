//! Adversarial review of aerodb verify (helper-14): the defects it found (swapped or extra columns called equal, a diverged replica reported as an error, invalid UTF-8 text, a table missing on the replica, a refused verify changing the replica, -0.0 vs 0.0 not named), each fixed.

mod verify_common;

use rusqlite::Connection;
use storage_adapter::primary::Primary;
use storage_adapter::verify::verify;
use verify_common::*;

#[test]
fn d1_columns_swapped_on_the_replica_are_found_equal() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE acct(id INTEGER PRIMARY KEY, owner TEXT, note TEXT);
         INSERT INTO acct VALUES (1, 'ann', 'vip'), (2, 'bob', 'new');",
        &["acct"],
    );
    assert_equal(&p, &r, "before");
    behind_the_back(&r)
        .execute_batch(
            "ALTER TABLE acct RENAME COLUMN owner TO tmp;
             ALTER TABLE acct RENAME COLUMN note TO owner;
             ALTER TABLE acct RENAME COLUMN tmp TO note;",
        )
        .unwrap();
    let owner: String = Connection::open(&r)
        .unwrap()
        .query_row("SELECT owner FROM acct WHERE id = 1", [], |x| x.get(0))
        .unwrap();
    assert_eq!(owner, "vip", "the replica now answers owner = 'vip'");
    let v = verify(&p, &r).unwrap();
    assert!(
        v.difference.is_some(),
        "owner differs on every row, yet: {v:?}"
    );
}

#[test]
fn d1b_extra_column_on_an_empty_replica_table_is_found_equal() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v);",
        &["t"],
    );
    behind_the_back(&r)
        .execute_batch("ALTER TABLE t ADD COLUMN extra")
        .unwrap();
    let v = verify(&p, &r).unwrap();
    // The next commit cannot be applied: verify's "equal" was wrong.
    primary
        .connection()
        .execute_batch("INSERT INTO t VALUES (1, 1)")
        .unwrap();
    let after = verify(&p, &r)
        .map(|v| v.difference)
        .map_err(|e| e.to_string());
    assert!(v.difference.is_some(), "said equal; next verify: {after:?}");
}

#[test]
fn d2_a_replica_that_diverged_is_exit_2_error_not_exit_1_differ() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
        &["t"],
    );
    behind_the_back(&r)
        .execute_batch("DELETE FROM t WHERE id = 1")
        .unwrap();
    primary
        .connection()
        .execute_batch("UPDATE t SET v = 'A' WHERE id = 1")
        .unwrap();
    let (code, out, err) = cli(&p, &r);
    assert_eq!(
        code, 1,
        "the replica differs (row 1 missing): stdout {out:?} stderr {err:?}"
    );
}

#[test]
fn d3_a_replicated_table_dropped_on_the_replica_is_an_error_about_primary_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a');",
        &["t"],
    );
    behind_the_back(&r).execute_batch("DROP TABLE t").unwrap();
    let (code, out, err) = cli(&p, &r);
    assert_eq!(code, 1, "stdout {out:?} stderr {err:?}");
}

#[test]
fn d4_invalid_utf8_text_in_a_differing_table_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
         INSERT INTO t VALUES (1, CAST(x'ff' AS TEXT)), (2, 'b');",
        &["t"],
    );
    assert_equal(&p, &r, "equal: digests handle the bytes");
    behind_the_back(&r)
        .execute_batch("UPDATE t SET v = 'B' WHERE id = 2")
        .unwrap();
    let (code, out, err) = cli(&p, &r);
    assert_eq!(code, 1, "stdout {out:?} stderr {err:?}");
}

#[test]
fn d5_a_refused_verify_still_changes_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, _p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a');",
        &["t"],
    );
    // E.g. a replica file switched to a rollback journal to copy it.
    let mode: String = Connection::open(&r)
        .unwrap()
        .query_row("PRAGMA journal_mode = DELETE", [], |x| x.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    let other = Primary::open(dir.path().join("o.db")).unwrap();
    other
        .connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .unwrap();
    other.replicate("t").unwrap();
    let e = verify(dir.path().join("o.db"), &r).unwrap_err().to_string();
    assert!(e.contains("follows generation"), "{e}");
    let mode: String = Connection::open(&r)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |x| x.get(0))
        .unwrap();
    assert_eq!(
        mode, "delete",
        "refused, yet the replica's journal mode was changed"
    );
}

#[test]
fn d6_negative_zero_difference_is_not_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 0.0), (2, 'x');",
        &["t"],
    );
    behind_the_back(&r)
        .execute_batch("UPDATE t SET v = -0.0 WHERE id = 1")
        .unwrap();
    let d = verify(&p, &r).unwrap().difference.expect("bits differ");
    assert!(d.detail.contains("key (1)"), "{}", d.detail);
}
