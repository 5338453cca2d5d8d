//! `aerodb verify` / `storage_adapter::verify` (issue 10 item 8): a
//! replica compared with its primary at the primary's head, exactly
//! (values and types), naming the first table and row that differ.

use rusqlite::config::DbConfig;
use rusqlite::Connection;
use std::path::Path;
use std::process::Command;
use storage_adapter::primary::Primary;
use storage_adapter::verify::verify;

/// A primary with two tables and rows, and a replica caught up to commit
/// `behind` commits before the head.
fn setup(dir: &Path) -> (Primary, std::path::PathBuf, std::path::PathBuf) {
    let p = dir.join("p.db");
    let r = dir.join("r.db");
    let primary = Primary::open(&p).unwrap();
    primary
        .connection()
        .execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v);
             CREATE TABLE k(name TEXT COLLATE NOCASE PRIMARY KEY NOT NULL, n REAL) WITHOUT ROWID;
             INSERT INTO t VALUES (1, 'one'), (2, 2.0), (3, x'03');
             INSERT INTO k VALUES ('a', 1.5), ('B', NULL);",
        )
        .unwrap();
    primary.replicate("t").unwrap();
    primary.replicate("k").unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(["catch-up", "--primary"])
        .arg(&p)
        .arg("--replica")
        .arg(&r)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    // More commits the replica has not seen: verify brings it there.
    primary
        .connection()
        .execute_batch("INSERT INTO t VALUES (4, 'four'); UPDATE k SET n = 2.5 WHERE name = 'a'")
        .unwrap();
    (primary, p, r)
}

/// A connection to the replica whose writes pass its guards (triggers
/// off), as a user bypassing the protection would.
fn behind_the_back(r: &Path) -> Connection {
    let c = Connection::open(r).unwrap();
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)
        .unwrap();
    c
}

fn cli(p: &Path, r: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(["verify", "--primary"])
        .arg(p)
        .arg("--replica")
        .arg(r)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn a_replica_behind_is_brought_to_the_head_and_found_equal() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = setup(dir.path());
    let v = verify(&p, &r).unwrap();
    assert_eq!(v.commit_id, primary.head().unwrap());
    assert_eq!(v.difference, None, "{v:?}");
    assert_eq!(v.primary, v.replica);
    assert_eq!(v.primary.len(), 2);
    assert_eq!(v.primary.iter().find(|d| d.table == "t").unwrap().rows, 4);
    let (code, out, err) = cli(&p, &r);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("equal: the replica holds exactly the primary's 2 table(s) at commit"),
        "{out}"
    );
    // Deterministic and independent of insertion order and page layout.
    behind_the_back(&r).execute_batch("VACUUM").unwrap();
    assert_eq!(verify(&p, &r).unwrap().replica, v.replica);
}

#[test]
fn an_altered_a_missing_and_an_extra_row_are_named() {
    for (tamper, table, needle) in [
        (
            "UPDATE t SET v = 'ONE' WHERE id = 1",
            "t",
            "the row with key (1) is (1, 'one') on the primary, (1, 'ONE') on the replica",
        ),
        // 2.0 and 2 are one value to `=`, two to verify.
        (
            "UPDATE t SET v = 2 WHERE id = 2",
            "t",
            "the row with key (2) is (2, 2.0) on the primary, (2, 2) on the replica",
        ),
        (
            "DELETE FROM t WHERE id = 4",
            "t",
            "the replica lacks the row with key (4)",
        ),
        (
            "INSERT INTO k VALUES ('z', 0)",
            "k",
            "the replica has a row the primary does not: key ('z')",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (_primary, p, r) = setup(dir.path());
        verify(&p, &r).unwrap();
        behind_the_back(&r).execute_batch(tamper).unwrap();
        let v = verify(&p, &r).unwrap();
        let d = v
            .difference
            .unwrap_or_else(|| panic!("{tamper}: not noticed"));
        assert_eq!(d.table, table, "{tamper}");
        assert!(d.detail.contains(needle), "{tamper}: {}", d.detail);
        let (code, out, _) = cli(&p, &r);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(&format!("table '{table}'")), "{out}");
    }
}

#[test]
fn what_cannot_be_compared_is_an_error_that_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, p, r) = setup(dir.path());
    // Not a replica: refused, the file left as it was.
    let plain = dir.path().join("plain.db");
    Connection::open(&plain)
        .unwrap()
        .execute_batch("CREATE TABLE x(a)")
        .unwrap();
    let e = verify(&p, &plain).unwrap_err().to_string();
    assert!(e.contains("it is not an AeroDB replica"), "{e}");
    let tables: i64 = Connection::open(&plain)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_schema", [], |x| x.get(0))
        .unwrap();
    assert_eq!(tables, 1, "nothing created in it");
    let (code, _, err) = cli(&p, &plain);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&p, &dir.path().join("missing.db"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such file"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(["verify", "--primary", "http://127.0.0.1:9", "--replica"])
        .arg(&r)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A replica of another primary.
    let other = Primary::open(dir.path().join("o.db")).unwrap();
    other
        .connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .unwrap();
    other.replicate("t").unwrap();
    let e = verify(dir.path().join("o.db"), &r).unwrap_err().to_string();
    assert!(e.contains("follows generation"), "{e}");
}

/// A running `aerodb serve` on a free loopback port, killed when dropped.
struct Serve {
    child: std::process::Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(db: &Path, token_file: &Path) -> Serve {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .arg("--token-file")
        .arg(token_file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim_end().rsplit(':').next().unwrap().to_owned();
    assert!(!port.is_empty(), "aerodb serve did not start: {line:?}");
    Serve {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

#[test]
fn a_replica_is_verified_against_a_primary_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = setup(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token-0123456789\n").unwrap();
    let server = serve(&p, &token);
    let v = storage_adapter::verify::verify_url(&server.url, "s3cret-token-0123456789", None, &r)
        .unwrap();
    assert_eq!(v.commit_id, primary.head().unwrap());
    assert_eq!(v.difference, None, "{v:?}");
    // The same digests as the file's.
    assert_eq!(
        v.primary,
        storage_adapter::verify::digests_at_head(&p).unwrap().tables
    );
    let out = Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(["verify", "--primary", &server.url, "--token-file"])
        .arg(&token)
        .arg("--replica")
        .arg(&r)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Behind the replica's back: named, exit 1.
    behind_the_back(&r)
        .execute_batch("UPDATE k SET n = 9 WHERE name = 'a'")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(["verify", "--primary", &server.url, "--token-file"])
        .arg(&token)
        .arg("--replica")
        .arg(&r)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text.contains(
            "table 'k': row 1 in key order differs: both have key ('a') (1 row), with other values"
        ),
        "{text}"
    );
    // A wrong token: an error, exit 2, nothing changed.
    let e = storage_adapter::verify::verify_url(&server.url, "wrong", None, &r)
        .unwrap_err()
        .to_string();
    assert!(e.contains("401"), "{e}");
}

/// Over HTTP the primary's rows are not fetched: its digest comes with
/// each table's key ranges (at most 256), and the difference names the
/// first range whose rows differ, with its keys.
#[test]
fn over_http_a_difference_names_its_key_range() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = setup(dir.path());
    // 5,000 rows more in t: 20 rows per range.
    primary
        .connection()
        .execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 10 UNION ALL SELECT i + 1 FROM n WHERE i < 5009)
             INSERT INTO t SELECT i, 'v' || i FROM n;",
        )
        .unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token-0123456789\n").unwrap();
    let server = serve(&p, &token);
    let verify = || {
        storage_adapter::verify::verify_url(&server.url, "s3cret-token-0123456789", None, &r)
            .unwrap()
    };
    assert_eq!(verify().difference, None);
    let rows: u64 = primary
        .connection()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 5004);
    // Keys in order: 1, 2, 3, 4, 10, 11, ...: key 2000 is row 1995, in
    // range 100 (rows 1981 to 2000, keys 1986 to 2005).
    let detail = |tamper: &str| {
        behind_the_back(&r).execute_batch(tamper).unwrap();
        let d = verify().difference.expect("a difference");
        behind_the_back(&r)
            .execute_batch(
                "DELETE FROM t WHERE id = 5 OR id >= 10; WITH RECURSIVE n(i) AS (SELECT 10 UNION ALL SELECT i + 1 FROM n WHERE i < 5009) INSERT INTO t SELECT i, 'v' || i FROM n;",
            )
            .unwrap();
        assert_eq!(d.table, "t");
        d.detail
    };
    assert_eq!(
        detail("UPDATE t SET v = 'changed' WHERE id = 2000"),
        "rows 1981 to 2000 in key order differ: both have keys (1986) to (2005) (20 rows), with other values"
    );
    assert_eq!(
        detail("DELETE FROM t WHERE id = 2000"),
        "rows 1981 to 2000 in key order differ: the primary has keys (1986) to (2005) (20 rows), the replica keys (1986) to (2006) (20 rows)"
    );
    assert_eq!(
        detail("INSERT INTO t VALUES (5, 'extra')"),
        "rows 1 to 20 in key order differ: the primary has keys (1) to (25) (20 rows), the replica keys (1) to (24) (20 rows)"
    );
    assert_eq!(
        detail("DELETE FROM t WHERE id = 5009"),
        "rows 5001 to 5020 in key order differ: the primary has keys (5006) to (5009) (4 rows), the replica keys (5006) to (5008) (3 rows)"
    );
}

#[test]
fn a_running_replica_is_held_while_verified_and_a_stopped_one_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, p, r) = setup(dir.path());
    let running = storage_adapter::runtime::Replica::start_from_file(
        &r,
        &p,
        replication::runtime::Config::default(),
    )
    .unwrap();
    // Held through its control socket (verify_running.rs has the rest).
    let v = verify(&p, &r).unwrap();
    assert_eq!(v.difference, None);
    assert!(v.held.is_some(), "{v:?}");
    running.stop();
    let v = verify(&p, &r).unwrap();
    assert_eq!((v.difference, v.held), (None, None));
    // Verify of a stopped replica holds the runtime's own lock (released
    // when it returns, as here): no runtime starts on it meanwhile.
    storage_adapter::runtime::Replica::start_from_file(
        &r,
        &p,
        replication::runtime::Config::default(),
    )
    .unwrap()
    .stop();
}
