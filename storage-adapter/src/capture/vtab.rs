//! `aerodb_capture`: the eponymous virtual table that makes capture part of
//! every transaction that writes a replicated table.
//!
//! Why a virtual table: SQLite gives a loadable extension one point inside
//! the commit where it may still write, a virtual table's `xSync` (FTS3/4/5
//! flush their pending data to their shadow tables there). Every capture
//! trigger holds an `INSERT INTO aerodb_capture SELECT ... WHERE
//! aerodb_capture_row(...)` whose SELECT yields no row: the statement makes
//! SQLite call `xBegin` once per transaction (the table joins it), and from
//! then on SQLite reports every savepoint, `ROLLBACK TO`, release, rollback,
//! the sync (where [`super::commit`] writes and seals the record) and the
//! commit. No row is ever inserted; `xUpdate` refuses direct writes.
//!
//! rusqlite's vtab layer exposes neither `xSync` nor the savepoint methods,
//! so this is a raw `sqlite3_module`. Every callback catches panics: none
//! crosses into SQLite.

use super::commit::{self, SpillPoint};
use super::{lock, lock_now, CaptureError, ConnState, Shared};
use crate::raw::RawConn;
use rusqlite::ffi;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Arc;

/// `SQLITE_VTAB_INNOCUOUS` (3.31; not in every binding rusqlite ships):
/// triggers may write the table with `trusted_schema=OFF`.
const VTAB_INNOCUOUS: c_int = 2;

/// The module's name, as the capture triggers write it.
pub(crate) const MODULE_NAME: &CStr = c"aerodb_capture";

/// One connection's instance of the table.
#[repr(C)]
struct CaptureVtab {
    base: ffi::sqlite3_vtab,
    db: *mut ffi::sqlite3,
    shared: Shared,
    /// Statements the commit runs, prepared once per connection and
    /// finalized in `xDisconnect` (SQLite disconnects virtual tables before
    /// it checks for unfinalized statements on close).
    statements: commit::Statements,
}

#[repr(C)]
struct EmptyCursor {
    base: ffi::sqlite3_vtab_cursor,
}

static MODULE: ffi::sqlite3_module = {
    // SAFETY: all-zero is a valid sqlite3_module (every callback None).
    let mut m: ffi::sqlite3_module = unsafe { std::mem::zeroed() };
    m.iVersion = 2;
    // xCreate NULL: eponymous-only, nothing in the schema.
    m.xConnect = Some(x_connect);
    m.xBestIndex = Some(x_best_index);
    m.xDisconnect = Some(x_disconnect);
    m.xDestroy = Some(x_disconnect);
    m.xOpen = Some(x_open);
    m.xClose = Some(x_close);
    m.xFilter = Some(x_filter);
    m.xNext = Some(x_next);
    m.xEof = Some(x_eof);
    m.xColumn = Some(x_column);
    m.xRowid = Some(x_rowid);
    m.xUpdate = Some(x_update);
    m.xBegin = Some(x_begin);
    m.xSync = Some(x_sync);
    m.xCommit = Some(x_commit);
    m.xRollback = Some(x_rollback);
    m.xSavepoint = Some(x_savepoint);
    m.xRelease = Some(x_release);
    m.xRollbackTo = Some(x_rollback_to);
    m
};

/// Registers the module on `db`, sharing `shared` with the capture
/// functions.
pub(crate) fn register(db: *mut ffi::sqlite3, shared: &Shared) -> Result<(), CaptureError> {
    let aux = Arc::into_raw(Arc::clone(shared)) as *mut c_void;
    // SAFETY: db is open; MODULE is 'static; aux is released by
    // `drop_aux`, which SQLite calls exactly once, also on failure.
    let rc = unsafe {
        ffi::sqlite3_create_module_v2(db, MODULE_NAME.as_ptr(), &MODULE, aux, Some(drop_aux))
    };
    if rc != ffi::SQLITE_OK {
        return Err(CaptureError::Sqlite {
            doing: "registering the aerodb_capture virtual table".into(),
            source: crate::raw::RawError {
                code: rc,
                message: "sqlite3_create_module_v2 failed".into(),
                sql: String::new(),
            },
        });
    }
    Ok(())
}

unsafe extern "C" fn drop_aux(aux: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: aux came from Arc::into_raw in `register`.
        drop(unsafe { Arc::from_raw(aux as *const std::sync::Mutex<ConnState>) });
    });
}

/// A copy of `message` in memory SQLite frees (`zErrMsg`).
fn sqlite_string(message: &str) -> *mut c_char {
    let bytes = message.as_bytes();
    // SAFETY: a fresh allocation of len + 1 bytes, filled and terminated.
    unsafe {
        let p = ffi::sqlite3_malloc64(bytes.len() as u64 + 1) as *mut u8;
        if !p.is_null() {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            *p.add(bytes.len()) = 0;
        }
        p.cast()
    }
}

/// Sets the table's error message and returns `code`.
fn fail(vtab: *mut ffi::sqlite3_vtab, code: c_int, message: &str) -> c_int {
    // SAFETY: vtab is the live table SQLite passed in; the old message
    // (if any) was allocated by SQLite.
    unsafe {
        if !(*vtab).zErrMsg.is_null() {
            ffi::sqlite3_free((*vtab).zErrMsg.cast());
        }
        (*vtab).zErrMsg = sqlite_string(message);
    }
    code
}

/// Runs `f` on the table, turning a panic into an error.
fn with_vtab(
    vtab: *mut ffi::sqlite3_vtab,
    what: &str,
    f: impl FnOnce(&mut CaptureVtab) -> Result<(), CaptureError>,
) -> c_int {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: every sqlite3_vtab of this module is a CaptureVtab.
        f(unsafe { &mut *(vtab as *mut CaptureVtab) })
    }));
    match result {
        Ok(Ok(())) => ffi::SQLITE_OK,
        Ok(Err(e)) => fail(vtab, ffi::SQLITE_ERROR, &e.to_string()),
        Err(_) => fail(
            vtab,
            ffi::SQLITE_INTERNAL,
            &format!(
                "aerodb_capture {what}: internal error (panic); the transaction is not committed"
            ),
        ),
    }
}

unsafe extern "C" fn x_connect(
    db: *mut ffi::sqlite3,
    aux: *mut c_void,
    _argc: c_int,
    _argv: *const *const c_char,
    out: *mut *mut ffi::sqlite3_vtab,
    err: *mut *mut c_char,
) -> c_int {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: db is the connecting database; aux is the Arc from
        // `register`, alive while the module is.
        let rc = unsafe { ffi::sqlite3_declare_vtab(db, c"CREATE TABLE x(x)".as_ptr()) };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        // SAFETY: as above; a plain configuration call during xConnect.
        unsafe { ffi::sqlite3_vtab_config(db, VTAB_INNOCUOUS) };
        let shared = unsafe {
            let p = aux as *const std::sync::Mutex<ConnState>;
            Arc::increment_strong_count(p);
            Arc::from_raw(p)
        };
        let vtab = Box::new(CaptureVtab {
            // SAFETY: all-zero is a valid sqlite3_vtab.
            base: unsafe { std::mem::zeroed() },
            db,
            shared,
            statements: commit::Statements::default(),
        });
        // SAFETY: out is SQLite's out pointer.
        unsafe { *out = Box::into_raw(vtab).cast() };
        ffi::SQLITE_OK
    });
    match r {
        Ok(rc) => rc,
        Err(_) => {
            // SAFETY: err is SQLite's out pointer for a message.
            unsafe { *err = sqlite_string("aerodb_capture: internal error (panic) connecting") };
            ffi::SQLITE_INTERNAL
        }
    }
}

unsafe extern "C" fn x_disconnect(vtab: *mut ffi::sqlite3_vtab) -> c_int {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: vtab came from Box::into_raw in x_connect; SQLite calls
        // this once. Dropping finalizes the cached statements.
        drop(unsafe { Box::from_raw(vtab as *mut CaptureVtab) });
    });
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_best_index(
    _vtab: *mut ffi::sqlite3_vtab,
    info: *mut ffi::sqlite3_index_info,
) -> c_int {
    // SAFETY: info is SQLite's. The table is always empty.
    unsafe {
        (*info).estimatedCost = 1.0;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_open(
    _vtab: *mut ffi::sqlite3_vtab,
    out: *mut *mut ffi::sqlite3_vtab_cursor,
) -> c_int {
    let cursor = Box::new(EmptyCursor {
        // SAFETY: all-zero is a valid cursor base.
        base: unsafe { std::mem::zeroed() },
    });
    // SAFETY: out is SQLite's out pointer.
    unsafe { *out = Box::into_raw(cursor).cast() };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_close(cursor: *mut ffi::sqlite3_vtab_cursor) -> c_int {
    // SAFETY: cursor came from Box::into_raw in x_open.
    drop(unsafe { Box::from_raw(cursor as *mut EmptyCursor) });
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_filter(
    _cursor: *mut ffi::sqlite3_vtab_cursor,
    _idx: c_int,
    _idx_str: *const c_char,
    _argc: c_int,
    _argv: *mut *mut ffi::sqlite3_value,
) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_next(_cursor: *mut ffi::sqlite3_vtab_cursor) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_eof(_cursor: *mut ffi::sqlite3_vtab_cursor) -> c_int {
    1
}

unsafe extern "C" fn x_column(
    _cursor: *mut ffi::sqlite3_vtab_cursor,
    ctx: *mut ffi::sqlite3_context,
    _i: c_int,
) -> c_int {
    // SAFETY: ctx is SQLite's.
    unsafe { ffi::sqlite3_result_null(ctx) };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_rowid(_cursor: *mut ffi::sqlite3_vtab_cursor, rowid: *mut i64) -> c_int {
    // SAFETY: rowid is SQLite's out pointer.
    unsafe { *rowid = 0 };
    ffi::SQLITE_OK
}

/// A row reaches the table only when `aerodb_capture_row` asked for it
/// (its buffer outgrew a chunk): the buffer is spilled here, in the
/// middle of the statement, when that is safe. Other writes are refused.
unsafe extern "C" fn x_update(
    vtab: *mut ffi::sqlite3_vtab,
    _argc: c_int,
    _argv: *mut *mut ffi::sqlite3_value,
    _rowid: *mut i64,
) -> c_int {
    with_vtab(vtab, "spill", |v| {
        let mut state = lock_now(&v.shared)?;
        if !std::mem::take(&mut state.spill_requested) {
            return Err(CaptureError::BadArgument {
                function: "aerodb_capture",
                argument: "row".into(),
                problem: "was written directly: aerodb_capture is written by AeroDB's capture triggers only".into(),
            });
        }
        // SAFETY: the connection is open and running the statement whose
        // trigger wrote this row, on this thread.
        let conn = unsafe { RawConn::new(v.db) };
        commit::spill(conn, &mut v.statements, &mut state, SpillPoint::Row)
    })
}

unsafe extern "C" fn x_begin(vtab: *mut ffi::sqlite3_vtab) -> c_int {
    with_vtab(vtab, "begin", |v| {
        // SQLite has the table join when the first statement that can
        // write it starts, before any of its row changes: whether a
        // trigger can skip capture is noted now, as the schema is.
        // SAFETY: the connection is open and starting that statement on
        // this thread.
        let conn = unsafe { RawConn::new(v.db) };
        let found = commit::unsafe_trigger(conn, &mut v.statements);
        let mut state = lock(&v.shared);
        state.begin();
        state.unsafe_at_begin = found;
        Ok(())
    })
}

unsafe extern "C" fn x_sync(vtab: *mut ffi::sqlite3_vtab) -> c_int {
    with_vtab(vtab, "sync", |v| {
        // SAFETY: the connection is open and busy committing on this
        // thread; SQL run here is part of the committing transaction.
        let conn = unsafe { RawConn::new(v.db) };
        let mut state = lock(&v.shared);
        commit::write_record(conn, &mut v.statements, &mut state)
    })
}

unsafe extern "C" fn x_commit(vtab: *mut ffi::sqlite3_vtab) -> c_int {
    with_vtab(vtab, "commit", |v| {
        lock(&v.shared).committed();
        Ok(())
    })
}

unsafe extern "C" fn x_rollback(vtab: *mut ffi::sqlite3_vtab) -> c_int {
    with_vtab(vtab, "rollback", |v| {
        lock(&v.shared).rolled_back();
        Ok(())
    })
}

/// A savepoint opens (a statement starts, or `SAVEPOINT`): every earlier
/// statement has finished, so a buffer that outgrew its chunk is spilled
/// here, before the savepoint's mark (the spill is not inside it).
unsafe extern "C" fn x_savepoint(vtab: *mut ffi::sqlite3_vtab, level: c_int) -> c_int {
    with_vtab(vtab, "savepoint", |v| {
        let mut state = lock_now(&v.shared)?;
        if state.in_transaction && state.buffer.bytes() > state.chunk_bytes {
            // SAFETY: the connection is open and opening the savepoint on
            // this thread; what the spill writes is part of the
            // transaction (FTS5 flushes its pending data here too).
            let conn = unsafe { RawConn::new(v.db) };
            commit::spill(conn, &mut v.statements, &mut state, SpillPoint::Savepoint)?;
        }
        state.buffer.savepoint(level);
        Ok(())
    })
}

unsafe extern "C" fn x_release(vtab: *mut ffi::sqlite3_vtab, level: c_int) -> c_int {
    with_vtab(vtab, "release", |v| {
        lock(&v.shared).buffer.release(level);
        Ok(())
    })
}

unsafe extern "C" fn x_rollback_to(vtab: *mut ffi::sqlite3_vtab, level: c_int) -> c_int {
    with_vtab(vtab, "rollback to", |v| {
        lock(&v.shared).rolled_back_to(level);
        Ok(())
    })
}
