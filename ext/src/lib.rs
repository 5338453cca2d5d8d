//! The AeroDB loadable SQLite extension: `libaerodb.so`, entry point
//! `sqlite3_aerodb_init`.
//!
//! The SQL surface is thin (STYLE 9): it registers the functions of
//! `storage_adapter::capture`, the `replica_state` virtual table over
//! `storage_adapter::status`, and the replica functions and views of
//! [`replica`] over `storage_adapter::runtime`; no replication logic lives
//! here. `docs/sql.md` documents every name and column. Calls go
//! through the host's `sqlite3_api_routines` (rusqlite `loadable_extension`),
//! so the extension uses the SQLite of the program that loads it. No panic
//! crosses into SQLite: the entry point and every virtual table method catch
//! unwinding; rusqlite catches it for scalar functions.

use rusqlite::ffi;
use rusqlite::vtab::{
    eponymous_only_module, Context, Filters, IndexInfo, VTab, VTabConnection, VTabCursor,
};
use rusqlite::{Connection, Error, Result};
use std::ffi::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};
use storage_adapter::status::ReplicaStatus;

mod replica;

/// Entry point SQLite derives from the file name `libaerodb.so`.
///
/// # Safety
/// Called by SQLite's extension loader with a valid connection and API
/// routines table.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_aerodb_init(
    db: *mut ffi::sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut ffi::sqlite3_api_routines,
) -> c_int {
    catch_unwind(|| {
        // SAFETY: arguments come straight from SQLite's loader.
        unsafe { Connection::extension_init2(db, pz_err_msg, p_api, init) }
    })
    .unwrap_or(ffi::SQLITE_ERROR)
}

fn init(conn: Connection) -> Result<bool> {
    // Refuses hosts older than the minimum version with a clear error.
    storage_adapter::capture::register(&conn)?;
    conn.create_module(
        c"replica_state",
        eponymous_only_module::<ReplicaStateTab>(),
        None,
    )?;
    replica::register(&conn)?;
    Ok(false)
}

fn guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::ModuleError(format!(
            "internal error in {what} (a bug in aerodb; nothing was changed)"
        )))
    })
}

/// `replica_state`: one row describing this database's replica status.
#[repr(C)]
struct ReplicaStateTab {
    /// Base class; must be first.
    base: ffi::sqlite3_vtab,
    db: *mut ffi::sqlite3,
}

const COLUMNS: &str = "CREATE TABLE x(role TEXT, generation TEXT, applied_commit_id INTEGER, applied_wal_offset INTEGER, applied_chain TEXT, replicated_tables INTEGER, global_state TEXT, read_status TEXT, blocking_reason TEXT, received_commit_id INTEGER, validated_commit_id INTEGER, last_transition TEXT, last_transition_reason TEXT, snapshot_commit_id INTEGER, source_head_commit_id INTEGER, lag_commits INTEGER)";

unsafe impl<'vtab> VTab<'vtab> for ReplicaStateTab {
    type Aux = ();
    type Cursor = ReplicaStateCursor<'vtab>;

    fn connect(
        db: &mut VTabConnection,
        _aux: Option<&()>,
        _args: &[&[u8]],
    ) -> Result<(String, Self)> {
        guard("replica_state connect", || {
            Ok((
                COLUMNS.to_owned(),
                ReplicaStateTab {
                    base: ffi::sqlite3_vtab::default(),
                    // SAFETY: the handle outlives the virtual table.
                    db: unsafe { db.handle() },
                },
            ))
        })
    }

    fn best_index(&self, info: &mut IndexInfo) -> Result<()> {
        guard("replica_state best_index", || {
            info.set_estimated_cost(1.0);
            info.set_estimated_rows(1);
            Ok(())
        })
    }

    fn open(&'vtab mut self) -> Result<ReplicaStateCursor<'vtab>> {
        guard("replica_state open", || {
            Ok(ReplicaStateCursor {
                base: ffi::sqlite3_vtab_cursor::default(),
                db: self.db,
                row: None,
                phantom: std::marker::PhantomData,
            })
        })
    }
}

#[repr(C)]
struct ReplicaStateCursor<'vtab> {
    /// Base class; must be first.
    base: ffi::sqlite3_vtab_cursor,
    db: *mut ffi::sqlite3,
    /// The row not yet consumed; `None` once the cursor is past it.
    row: Option<ReplicaStatus>,
    phantom: std::marker::PhantomData<&'vtab ReplicaStateTab>,
}

unsafe impl VTabCursor for ReplicaStateCursor<'_> {
    fn filter(
        &mut self,
        _idx_num: c_int,
        _idx_str: Option<&str>,
        _args: &Filters<'_>,
    ) -> Result<()> {
        guard("replica_state filter", || {
            // SAFETY: the connection running this query.
            let status = unsafe { ReplicaStatus::read_raw(self.db) }
                .map_err(|e| Error::ModuleError(format!("replica_state: {e}")))?;
            self.row = Some(status);
            Ok(())
        })
    }

    fn next(&mut self) -> Result<()> {
        guard("replica_state next", || {
            self.row = None;
            Ok(())
        })
    }

    fn eof(&self) -> bool {
        self.row.is_none()
    }

    fn column(&self, ctx: &mut Context, i: c_int) -> Result<()> {
        guard("replica_state column", || {
            let Some(s) = &self.row else {
                return ctx.set_result(&rusqlite::types::Null);
            };
            match i {
                0 => ctx.set_result(&s.role.as_str()),
                1 => ctx.set_result(&s.generation.map(|g| g.to_string())),
                2 => ctx.set_result(&s.applied_commit_id.map(|c| c.0 as i64)),
                3 => ctx.set_result(&s.applied_wal_offset.map(|o| o.0 as i64)),
                4 => ctx.set_result(&s.applied_chain.map(|c| format!("0x{c:08x}"))),
                5 => ctx.set_result(&s.replicated_tables),
                6..=12 => {
                    let Some(r) = &s.runtime else {
                        return ctx.set_result(&rusqlite::types::Null);
                    };
                    match i {
                        6 => ctx.set_result(&r.global_state),
                        7 => ctx.set_result(&r.read_status),
                        8 => ctx.set_result(&r.blocking_reason),
                        9 => ctx.set_result(&(r.received_commit_id.0 as i64)),
                        10 => ctx.set_result(&(r.validated_commit_id.0 as i64)),
                        11 => ctx.set_result(&r.last_transition),
                        _ => ctx.set_result(&r.last_transition_reason),
                    }
                }
                13 => ctx.set_result(&s.snapshot_commit_id.map(|c| c.0 as i64)),
                14 => ctx.set_result(&s.source_head.map(|c| c.0 as i64)),
                15 => ctx.set_result(&s.lag_commits().map(|n| n as i64)),
                _ => ctx.set_result(&rusqlite::types::Null),
            }
        })
    }

    fn rowid(&self) -> Result<i64> {
        Ok(1)
    }
}
