//! Adversarial review (helper-20) of the replica schema check (6d3a617):
//! `guard::tampering`, run by the read gate and the Applier when
//! `PRAGMA schema_version` moved past `aerodb_replica_schema_check`.
//!
//! `fixed_*` tests failed on the code under review (each showed a defect,
//! fixed since); `holds_*` are scenarios that held; the ignored `fn_*`
//! are known gaps (false negatives the check cannot see), and the ignored
//! `cost_*` measures and prints (`--ignored`).

mod serve_common;
mod verify_common;

use replication::read_gate::DecisionCode;
use replication::runtime::Config;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use storage_adapter::primary::Primary;
use storage_adapter::runtime::{read_gate_in, Replica};
use verify_common::*;

fn gate(r: &Path) -> (DecisionCode, String) {
    let d = read_gate_in(&Connection::open(r).unwrap(), None);
    (d.code, d.explanation)
}

fn assert_allowed(r: &Path, what: &str) {
    let (code, why) = gate(r);
    assert_eq!(code, DecisionCode::Allowed, "{what}: {why}");
}

fn status_exit(r: &Path) -> i32 {
    std::process::Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .arg("status")
        .arg(r)
        .output()
        .unwrap()
        .status
        .code()
        .unwrap_or(-1)
}

/// DDL a user may run on a replica: a table of their own. It moves
/// schema_version, so the next gate evaluations run the full check.
fn harmless_ddl(r: &Path, n: usize) {
    Connection::open(r)
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE mine_{n}(x); CREATE INDEX mine_{n}_x ON mine_{n}(x);"
        ))
        .unwrap();
}

// ------------------------------------------------------------ false positives

/// The gate's check reads the registrations and the guard triggers in two
/// statements; on a connection in autocommit (Replica::explain_read,
/// aerodb_wait, `aerodb metrics`, any caller of read_gate_in) each is its own
/// snapshot. A replicated RENAME committed by the Applier between them makes
/// a healthy replica read as DIVERGED. The interleaving is forced, not slept
/// for: the Applier (`aerodb catch-up`) runs from the gate connection's
/// statement trace callback, when the trigger query begins (before it takes
/// its read snapshot).
static RACE_PATHS: Mutex<Option<(PathBuf, PathBuf)>> = Mutex::new(None);
static RACE_FIRED: AtomicBool = AtomicBool::new(false);
static RACE_CATCH_UP_OK: AtomicBool = AtomicBool::new(false);

unsafe extern "C" fn race_trace(
    kind: std::os::raw::c_uint,
    _ctx: *mut std::os::raw::c_void,
    stmt: *mut std::os::raw::c_void,
    _x: *mut std::os::raw::c_void,
) -> std::os::raw::c_int {
    if kind != rusqlite::ffi::SQLITE_TRACE_STMT {
        return 0;
    }
    let sql = unsafe { rusqlite::ffi::sqlite3_sql(stmt as *mut rusqlite::ffi::sqlite3_stmt) };
    if sql.is_null() {
        return 0;
    }
    let sql = unsafe { std::ffi::CStr::from_ptr(sql) }.to_string_lossy();
    if sql.contains("type = 'trigger' AND name LIKE 'aerodb")
        && !RACE_FIRED.swap(true, Ordering::SeqCst)
    {
        let (p, r) = RACE_PATHS.lock().unwrap().clone().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_aerodb"))
            .args(["catch-up", "--primary"])
            .arg(&p)
            .arg("--replica")
            .arg(&r)
            .output();
        RACE_CATCH_UP_OK.store(
            matches!(out, Ok(ref o) if o.status.success()),
            Ordering::SeqCst,
        );
    }
    0
}

#[test]
fn fixed_a_replicated_rename_applied_while_the_gate_checks_is_not_read_as_diverged() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'one');",
        &["t"],
    );
    // The user's own table on the replica since the last apply: the gate
    // runs the full check until the Applier next records one.
    harmless_ddl(&r, 1);
    assert_allowed(&r, "after the user's own DDL");
    primary.alter("ALTER TABLE t RENAME TO t2").unwrap();
    *RACE_PATHS.lock().unwrap() = Some((p.clone(), r.clone()));
    let conn = Connection::open(&r).unwrap();
    unsafe {
        rusqlite::ffi::sqlite3_trace_v2(
            conn.handle(),
            rusqlite::ffi::SQLITE_TRACE_STMT,
            Some(race_trace),
            std::ptr::null_mut(),
        );
    }
    let d = read_gate_in(&conn, None);
    unsafe {
        rusqlite::ffi::sqlite3_trace_v2(conn.handle(), 0, None, std::ptr::null_mut());
    }
    assert!(RACE_FIRED.load(Ordering::SeqCst), "the trigger query ran");
    assert!(
        RACE_CATCH_UP_OK.load(Ordering::SeqCst),
        "catch-up applied the rename"
    );
    // The replica is healthy before and after (and equal to the primary).
    assert_allowed(&r, "after the rename, on a fresh connection");
    assert_equal(&p, &r, "after the rename");
    assert_eq!(
        d.code,
        DecisionCode::Allowed,
        "a healthy replica, read while the Applier applied a RENAME: {d}"
    );
}

/// A replica made before write guards existed (the runtime guards its
/// tables when it next opens it: `ReplicaDb::from_connection`, "tables
/// replicated before guards existed get theirs now") reads as DIVERGED -- and
/// `aerodb status` exits 2 -- until a runtime has opened it. The same file
/// state is "heal it" for the runtime and "rebuild it" for the gate.
///
/// The pre-guard file is simulated: a current replica with every guard
/// trigger and `aerodb_replica_schema_check` removed (what 1f97d9a^ leaves;
/// set AERODB_PRE_GUARD_BIN to an `aerodb` built at 1f97d9a^ to make it with
/// that binary instead).
#[test]
fn fixed_a_replica_from_before_guards_is_not_read_as_diverged_before_a_runtime_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.db");
    let r = dir.path().join("r.db");
    let primary = Primary::open(&p).unwrap();
    primary
        .connection()
        .execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'one');",
        )
        .unwrap();
    primary.replicate("t").unwrap();
    match std::env::var_os("AERODB_PRE_GUARD_BIN") {
        Some(old) => {
            let out = std::process::Command::new(old)
                .args(["catch-up", "--primary"])
                .arg(&p)
                .arg("--replica")
                .arg(&r)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        None => {
            catch_up(&p, &r);
            let c = Connection::open(&r).unwrap();
            let guards: Vec<String> = c
                .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE 'aerodb_replica_guard_%'")
                .unwrap()
                .query_map([], |row| row.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for g in guards {
                c.execute_batch(&format!("DROP TRIGGER \"{g}\"")).unwrap();
            }
            c.execute_batch("DROP TABLE aerodb_replica_schema_check")
                .unwrap();
        }
    }
    let before = gate(&r);
    let status_before = status_exit(&r);
    // What the runtime makes of the same file: it guards it and goes on.
    let replica = Replica::start_from_file(&r, &p, Config::default()).unwrap();
    replica
        .wait_for(primary.head().unwrap(), serve_common::deadline())
        .unwrap();
    replica.stop();
    assert_allowed(&r, "once a runtime opened it");
    assert_equal(&p, &r, "once a runtime opened it");
    assert_ne!(
        before.0,
        DecisionCode::Diverged,
        "a pre-guard replica the runtime upgrades in place, read before (aerodb status exit {status_before}): {}",
        before.1
    );
}

// ------------------------------------------------------------ verify

/// The commit says a tampered replica "is named by verify". At the head
/// (nothing to apply) verify never runs the check: the gate refuses reads
/// as DIVERGED and tells the operator to rebuild, verify says the replica
/// is equal (exit 0).
#[test]
fn fixed_verify_at_the_head_names_a_replica_the_gate_calls_diverged() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'one');",
        &["t"],
    );
    Connection::open(&r)
        .unwrap()
        .execute_batch("DROP TRIGGER aerodb_replica_guard_delete_t")
        .unwrap();
    let (code, why) = gate(&r);
    assert_eq!(code, DecisionCode::Diverged, "{why}");
    let (exit, out, err) = cli(&p, &r);
    assert_eq!(
        exit, 1,
        "verify of a replica the gate refuses as DIVERGED ({why}):\n{out}{err}"
    );
}

// ------------------------------------------------------------ false negatives

/// A user who drops a guard to "fix" a row and puts the guard back
/// (re-running its own CREATE TRIGGER from sqlite_schema): the structure is
/// as replication left it, the check passes, the row is not the primary's.
/// (Semi-deliberate: needs knowing about the guards; in one transaction
/// there is no window at all.)
#[test]
#[ignore = "known gap: a guard dropped and restored by hand leaves the schema as replication made it; aerodb verify finds the row"]
fn fn_a_guard_dropped_a_row_written_and_the_guard_restored_reads_as_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'one');",
        &["t"],
    );
    let c = Connection::open(&r).unwrap();
    let guard: String = c
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'aerodb_replica_guard_update_t'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    c.execute_batch(&format!(
        "BEGIN; DROP TRIGGER aerodb_replica_guard_update_t; UPDATE t SET v = 'fixed by hand' WHERE id = 1; {guard}; COMMIT;"
    ))
    .unwrap();
    drop(c);
    let (code, why) = gate(&r);
    let (exit, out, _) = cli(&p, &r);
    assert_eq!(exit, 1, "verify sees the row: {out}");
    assert_ne!(
        code,
        DecisionCode::Allowed,
        "the row is not the primary's (verify exit {exit}), the gate: {why}"
    );
}

/// A guard replaced by one of the same name whose body does nothing: only
/// names are checked. Deliberate bypass.
#[test]
fn fixed_a_guard_replaced_by_a_no_op_of_the_same_name_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, _p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'one');",
        &["t"],
    );
    let c = Connection::open(&r).unwrap();
    c.execute_batch(
        "DROP TRIGGER aerodb_replica_guard_insert_t;
         CREATE TRIGGER aerodb_replica_guard_insert_t BEFORE INSERT ON t WHEN 0 BEGIN SELECT 1; END;
         INSERT INTO t VALUES (99, 'not the primary''s');",
    )
    .unwrap();
    drop(c);
    let (code, why) = gate(&r);
    assert_ne!(
        code,
        DecisionCode::Allowed,
        "a no-op guard let a write in: {why}"
    );
}

/// A TEMP view shadowing a replicated table on the reader's connection: the
/// gate answers for `main`, the reader's unqualified reads get the view.
/// Own-connection only (accident-prone with tools that make TEMP objects).
#[test]
#[ignore = "known gap: a TEMP view shadows a table on its own connection only; main's schema does not move"]
fn fn_a_temp_view_shadowing_a_replicated_table_is_missed() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, _p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'one');",
        &["t"],
    );
    let c = Connection::open(&r).unwrap();
    c.execute_batch("CREATE TEMP VIEW t AS SELECT 1 AS id, 'not the primary''s' AS v")
        .unwrap();
    let d = read_gate_in(&c, None);
    let v: String = c
        .query_row("SELECT v FROM t WHERE id = 1", [], |row| row.get(0))
        .unwrap();
    assert_eq!(v, "not the primary's");
    assert_ne!(
        d.code,
        DecisionCode::Allowed,
        "reads of t on this connection see the TEMP view: {d}"
    );
}

/// `PRAGMA writable_schema` edits do not move schema_version: a guard's
/// body edited to `WHEN 0` is never looked at, and every new connection
/// writes the table. Deliberate bypass.
#[test]
#[ignore = "known gap: PRAGMA writable_schema edits bypass the schema version (deliberate)"]
fn fn_a_writable_schema_edit_of_a_guard_is_missed() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, _p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'one');",
        &["t"],
    );
    let c = Connection::open(&r).unwrap();
    let before: i64 = c
        .query_row("PRAGMA schema_version", [], |row| row.get(0))
        .unwrap();
    c.execute_batch(
        "PRAGMA writable_schema = ON;
         UPDATE sqlite_schema SET sql = replace(sql, 'WHEN aerodb_replica_table_written_only_by_replication()', 'WHEN 0') WHERE name = 'aerodb_replica_guard_insert_t';
         PRAGMA writable_schema = OFF;",
    )
    .unwrap();
    let after: i64 = c
        .query_row("PRAGMA schema_version", [], |row| row.get(0))
        .unwrap();
    drop(c);
    Connection::open(&r)
        .unwrap()
        .execute("INSERT INTO t VALUES (99, 'not the primary''s')", [])
        .unwrap();
    let (code, why) = gate(&r);
    assert_ne!(
        code,
        DecisionCode::Allowed,
        "schema_version {before} -> {after}; a fresh connection wrote t: {why}"
    );
}

// ------------------------------------------------------------ scenarios that held

fn alter_and_check(primary: &Primary, p: &Path, r: &Path, n: &mut usize, sql: &str) {
    primary.alter(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    primary
        .connection()
        .execute_batch("INSERT INTO log(x) VALUES ('after')")
        .unwrap();
    catch_up(p, r);
    assert_allowed(r, sql);
    *n += 1;
    harmless_ddl(r, *n);
    assert_allowed(r, &format!("{sql}, then the user's own DDL"));
    assert_equal(p, r, sql);
}

#[test]
fn holds_alter_unreplicate_resync_and_odd_names_keep_a_healthy_replica_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(
        dir.path(),
        r#"CREATE TABLE parent(id INTEGER PRIMARY KEY, name TEXT);
           CREATE TABLE child(id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent(id), w);
           CREATE TABLE "Odd ""q"" 50%_x y"(k TEXT PRIMARY KEY COLLATE NOCASE, "v v") WITHOUT ROWID;
           CREATE TABLE MiXeD(id INTEGER PRIMARY KEY, a);
           CREATE TABLE log(id INTEGER PRIMARY KEY, x);
           INSERT INTO parent VALUES (1, 'p');
           INSERT INTO child VALUES (1, 1, 'c');
           INSERT INTO "Odd ""q"" 50%_x y" VALUES ('A', 1);
           INSERT INTO MiXeD VALUES (1, 'm');"#,
        &["parent", "child", "Odd \"q\" 50%_x y", "MiXeD", "log"],
    );
    assert_allowed(&r, "caught up");
    let mut n = 0;
    for sql in [
        r#"ALTER TABLE "Odd ""q"" 50%_x y" ADD COLUMN "new col" DEFAULT 'd'"#,
        // Rewrites child's REFERENCES clause too.
        "ALTER TABLE parent RENAME COLUMN id TO pid_",
        "ALTER TABLE parent RENAME TO \"Parent 2%\"",
        "ALTER TABLE child DROP COLUMN w",
        r#"CREATE INDEX "i ""x""" ON "Odd ""q"" 50%_x y"("v v"); CREATE UNIQUE INDEX mixed_a ON MiXeD(a)"#,
        r#"DROP INDEX "i ""x""""#,
        r#"ALTER TABLE "Odd ""q"" 50%_x y" RENAME TO "odd_%_Renamed""#,
        "DROP TABLE child",
    ] {
        alter_and_check(&primary, &p, &r, &mut n, sql);
    }
    // Unreplicated: the user's from then on, whatever DDL they run on it.
    primary.unreplicate("MiXeD").unwrap();
    catch_up(&p, &r);
    Connection::open(&r)
        .unwrap()
        .execute_batch("ALTER TABLE MiXeD ADD COLUMN mine; DROP INDEX mixed_a; INSERT INTO MiXeD VALUES (5, 'x', 'y');")
        .unwrap();
    assert_allowed(&r, "DDL on an unreplicated table");
    // Replicated later, resynced (same shape, then a shape changed directly).
    primary
        .connection()
        .execute_batch(
            "CREATE TABLE later(id INTEGER PRIMARY KEY, z); INSERT INTO later VALUES (1, 2);",
        )
        .unwrap();
    primary.replicate("later").unwrap();
    catch_up(&p, &r);
    assert_allowed(&r, "a table replicated later");
    primary.resync("log").unwrap();
    catch_up(&p, &r);
    assert_allowed(&r, "resync");
    // VACUUM and schema_version moved by the user.
    Connection::open(&r)
        .unwrap()
        .execute_batch("VACUUM")
        .unwrap();
    assert_allowed(&r, "VACUUM");
    Connection::open(&r)
        .unwrap()
        .execute_batch("PRAGMA schema_version = 123456")
        .unwrap();
    assert_allowed(&r, "schema_version set by the user");
    // The runtime applies over all of it.
    let replica = Replica::start_from_file(&r, &p, Config::default()).unwrap();
    primary
        .connection()
        .execute_batch("INSERT INTO later VALUES (2, 3); UPDATE log SET x = 'z';")
        .unwrap();
    replica
        .wait_for(primary.head().unwrap(), serve_common::deadline())
        .unwrap();
    assert_allowed(&r, "runtime applied");
    replica.stop();
    assert_allowed(&r, "runtime stopped");
    assert_equal(&p, &r, "at the end");
}

#[test]
fn holds_a_replica_bootstrapped_from_a_snapshot_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.db");
    let r = dir.path().join("r.db");
    let primary = Primary::open(&p).unwrap();
    primary
        .connection()
        .execute_batch(
            r#"CREATE TABLE "s %_""x"(id INTEGER PRIMARY KEY, v);
               CREATE TABLE w(k TEXT PRIMARY KEY, n) WITHOUT ROWID;
               CREATE UNIQUE INDEX w_n ON w(n);"#,
        )
        .unwrap();
    primary.replicate("s %_\"x").unwrap();
    primary.replicate("w").unwrap();
    for i in 0..20 {
        primary
            .connection()
            .execute_batch(&format!(
                "INSERT INTO \"s %_\"\"x\" VALUES ({i}, 'v{i}'); INSERT INTO w VALUES ('k{i}', {i});"
            ))
            .unwrap();
    }
    let head = primary.head().unwrap();
    primary.truncate_wal(head).unwrap();
    catch_up(&p, &r);
    let booted: i64 = Connection::open(&r)
        .unwrap()
        .query_row("SELECT count(*) FROM aerodb_replica_bootstrap", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(booted, 1, "bootstrapped from a snapshot");
    assert_allowed(&r, "after the snapshot");
    harmless_ddl(&r, 1);
    assert_allowed(&r, "after the snapshot and the user's DDL");
    primary
        .connection()
        .execute_batch("INSERT INTO w VALUES ('new', 100)")
        .unwrap();
    primary.alter("ALTER TABLE w ADD COLUMN extra").unwrap();
    catch_up(&p, &r);
    assert_allowed(&r, "after applying past the snapshot");
    assert_equal(&p, &r, "after the snapshot");
}

/// The Applier and another connection's DDL: the DDL lands between two
/// applies (the Applier's transaction is IMMEDIATE, so never inside one),
/// and the next apply checks it.
#[test]
fn holds_ddl_between_applies_of_a_running_replica_is_checked_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'one');",
        &["t"],
    );
    let replica = Replica::start_from_file(&r, &p, Config::default()).unwrap();
    for i in 2..30 {
        primary
            .connection()
            .execute("INSERT INTO t VALUES (?1, 'x')", [i])
            .unwrap();
        if i == 15 {
            harmless_ddl(&r, i as usize);
        }
    }
    replica
        .wait_for(primary.head().unwrap(), serve_common::deadline())
        .unwrap();
    let checked: i64 = Connection::open(&r)
        .unwrap()
        .query_row(
            "SELECT schema_version FROM aerodb_replica_schema_check",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let now: i64 = Connection::open(&r)
        .unwrap()
        .query_row("PRAGMA schema_version", [], |row| row.get(0))
        .unwrap();
    assert_allowed(&r, "running");
    replica.stop();
    println!("checked {checked}, now {now}");
}

// ------------------------------------------------------------ cost

fn time_gate(conn: &Connection, n: u32) -> f64 {
    let start = std::time::Instant::now();
    for _ in 0..n {
        assert_eq!(read_gate_in(conn, None).code, DecisionCode::Allowed);
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

#[test]
#[ignore = "a measurement (prints microseconds per evaluation), not a check: run with --ignored"]
fn cost_of_the_gate_with_and_without_the_full_check() {
    for tables in [1usize, 50, 200] {
        let dir = tempfile::tempdir().unwrap();
        let mut schema = String::new();
        let names: Vec<String> = (0..tables).map(|i| format!("t{i}")).collect();
        for t in &names {
            schema += &format!("CREATE TABLE {t}(id INTEGER PRIMARY KEY, v);");
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let (_primary, _p, r) = pair(dir.path(), &schema, &refs);
        let conn = Connection::open(&r).unwrap();
        time_gate(&conn, 200);
        let matched = time_gate(&conn, 2000);
        // The user's own table: schema_version moves, nothing records a
        // check until the next apply (an idle primary: never).
        harmless_ddl(&r, 1);
        time_gate(&conn, 200);
        let unchecked = time_gate(&conn, 2000);
        println!(
            "{tables} replicated tables: read_gate_in {matched:.1} us/eval as checked, {unchecked:.1} us/eval after the user's own DDL ({:.1}x)",
            unchecked / matched
        );
    }
}

/// A replicated table replaced by a VIEW of its name (with an INSTEAD OF
/// trigger making it "writable") is caught as dropped.
#[test]
fn holds_a_table_replaced_by_a_view_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (_primary, _p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'one');",
        &["t"],
    );
    Connection::open(&r)
        .unwrap()
        .execute_batch(
            "CREATE TABLE shadow(id INTEGER PRIMARY KEY, v); INSERT INTO shadow SELECT * FROM t;
             DROP TABLE t; CREATE VIEW t AS SELECT * FROM shadow;
             CREATE TRIGGER t_w INSTEAD OF INSERT ON t BEGIN INSERT INTO shadow VALUES (new.id, new.v); END;",
        )
        .unwrap();
    let (code, why) = gate(&r);
    assert_eq!(code, DecisionCode::Diverged, "{why}");
    assert!(
        why.contains("'t' was changed behind replication's back: it was dropped"),
        "{why}"
    );
}

/// A user's UNIQUE index on a replicated table (not in the registered
/// definition, so not "tampering"): a primary insert it rejects stops
/// replication loudly; nothing is matched differently in silence.
#[test]
fn holds_a_users_unique_index_fails_the_apply_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, p, r) = pair(
        dir.path(),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'one');",
        &["t"],
    );
    Connection::open(&r)
        .unwrap()
        .execute_batch("CREATE UNIQUE INDEX mine ON t(v)")
        .unwrap();
    assert_allowed(&r, "a user's index");
    primary
        .connection()
        .execute("INSERT INTO t VALUES (2, 'one')", [])
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(["catch-up", "--primary"])
        .arg(&p)
        .arg("--replica")
        .arg(&r)
        .output()
        .unwrap();
    assert!(!out.status.success());
    println!("{}", String::from_utf8_lossy(&out.stderr));
}
