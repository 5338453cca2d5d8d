//! Helpers of the verify review tests (`verify_review.rs`, `verify_held.rs`).

#![allow(dead_code)]

use rusqlite::config::DbConfig;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::process::Command;
use storage_adapter::primary::Primary;
use storage_adapter::verify::verify;

pub fn catch_up(p: &Path, r: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(["catch-up", "--primary"])
        .arg(p)
        .arg("--replica")
        .arg(r)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

pub fn cli(p: &Path, r: &Path) -> (i32, String, String) {
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

pub fn behind_the_back(r: &Path) -> Connection {
    let c = Connection::open(r).unwrap();
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)
        .unwrap();
    c
}

/// A primary with `schema` (tables replicated: `tables`) and a replica caught up.
pub fn pair(dir: &Path, schema: &str, tables: &[&str]) -> (Primary, PathBuf, PathBuf) {
    let p = dir.join("p.db");
    let r = dir.join("r.db");
    let primary = Primary::open(&p).unwrap();
    primary.connection().execute_batch(schema).unwrap();
    for t in tables {
        primary.replicate(t).unwrap();
    }
    catch_up(&p, &r);
    (primary, p, r)
}

pub fn assert_equal(p: &Path, r: &Path, what: &str) {
    let v = verify(p, r).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(v.difference, None, "{what}: {v:?}");
    let (code, out, err) = cli(p, r);
    assert_eq!(code, 0, "{what}: {out}{err}");
}
