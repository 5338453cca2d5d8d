//! A minimal statement wrapper over a borrowed `sqlite3*`, for SQL run from
//! inside our SQL functions (capture triggers, `aerodb_replicate`).
//!
//! Why not rusqlite's `Context::get_connection`: dropping that temporary
//! `Connection` runs rusqlite's close path, which (when an application
//! enables rusqlite's `hooks` feature) clears every hook of the connection,
//! the application's and ours. Here nothing is closed, nothing cached
//! across calls: each statement is finalized when dropped.

use rusqlite::ffi;
use rusqlite::types::ValueRef;
use std::ffi::{c_int, CStr};

/// An SQLite error from nested SQL: result code, message and statement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (SQLite code {code}) in `{sql}`")]
pub struct RawError {
    /// Extended result code.
    pub code: c_int,
    /// `sqlite3_errmsg`.
    pub message: String,
    /// The statement.
    pub sql: String,
}

/// A borrowed connection handle, valid for the duration of one SQL function
/// call (or while its owning `rusqlite::Connection` is alive).
#[derive(Clone, Copy)]
pub(crate) struct RawConn {
    db: *mut ffi::sqlite3,
}

impl RawConn {
    /// # Safety
    /// `db` must be an open connection for as long as this value is used,
    /// on the thread that currently uses that connection.
    pub(crate) unsafe fn new(db: *mut ffi::sqlite3) -> RawConn {
        RawConn { db }
    }

    /// The connection handle.
    pub(crate) fn handle(&self) -> *mut ffi::sqlite3 {
        self.db
    }

    fn error(&self, code: c_int, sql: &str) -> RawError {
        // SAFETY: db is open (constructor contract); errmsg returns a
        // NUL-terminated string owned by SQLite, copied at once.
        let message = unsafe {
            let p = ffi::sqlite3_errmsg(self.db);
            if p.is_null() {
                String::from("unknown error")
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        RawError {
            code,
            message,
            sql: sql.to_owned(),
        }
    }

    /// How many of the connection's statements are running and may write
    /// (stepped, not reset, not read-only). SQLite refuses `SAVEPOINT`
    /// while one is, so inside a capture callback a count of one is the
    /// statement being run, and more means one runs nested in another.
    pub(crate) fn busy_writers(&self) -> usize {
        let mut n = 0;
        // SAFETY: db is open; next_stmt walks the connection's own list,
        // and the loop only reads each statement's flags.
        unsafe {
            let mut s = ffi::sqlite3_next_stmt(self.db, std::ptr::null_mut());
            while !s.is_null() {
                if ffi::sqlite3_stmt_busy(s) != 0 && ffi::sqlite3_stmt_readonly(s) == 0 {
                    n += 1;
                }
                s = ffi::sqlite3_next_stmt(self.db, s);
            }
        }
        n
    }

    /// Prepares one statement.
    pub(crate) fn prepare<'c>(&'c self, sql: &str) -> Result<Stmt<'c>, RawError> {
        let mut stmt = std::ptr::null_mut();
        let len = c_int::try_from(sql.len()).map_err(|_| RawError {
            code: ffi::SQLITE_TOOBIG,
            message: "statement too long".into(),
            sql: sql.chars().take(80).collect(),
        })?;
        // SAFETY: db is open; sql is valid for len bytes; stmt is an out
        // pointer.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                self.db,
                sql.as_ptr().cast(),
                len,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK || stmt.is_null() {
            // SAFETY: finalize accepts NULL.
            unsafe { ffi::sqlite3_finalize(stmt) };
            return Err(self.error(
                if rc == ffi::SQLITE_OK {
                    ffi::SQLITE_MISUSE
                } else {
                    rc
                },
                sql,
            ));
        }
        Ok(Stmt {
            conn: *self,
            stmt,
            sql: sql.to_owned(),
            _conn: std::marker::PhantomData,
        })
    }

    /// Prepares a statement kept across calls (a cache).
    ///
    /// # Safety
    /// The statement must be dropped (finalized) before the connection
    /// closes, and used only on the thread that uses the connection.
    pub(crate) unsafe fn prepare_kept(&self, sql: &str) -> Result<Stmt<'static>, RawError> {
        let s = self.prepare(sql)?;
        let kept = Stmt {
            conn: s.conn,
            stmt: s.stmt,
            sql: s.sql.clone(),
            _conn: std::marker::PhantomData,
        };
        std::mem::forget(s);
        Ok(kept)
    }

    /// Runs statements that return no rows (`sqlite3_exec`).
    pub(crate) fn execute_batch(&self, sql: &str) -> Result<(), RawError> {
        let c = std::ffi::CString::new(sql).map_err(|_| RawError {
            code: ffi::SQLITE_MISUSE,
            message: "statement contains NUL".into(),
            sql: sql.chars().take(80).collect(),
        })?;
        // SAFETY: db is open; c is NUL-terminated; no callback.
        let rc = unsafe {
            ffi::sqlite3_exec(
                self.db,
                c.as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.error(rc, sql))
        }
    }

    /// Runs one statement with parameters; returns the first column of the
    /// first row, if any.
    pub(crate) fn query_value(
        &self,
        sql: &str,
        params: &[ValueRef<'_>],
    ) -> Result<Option<OwnedValue>, RawError> {
        let mut s = self.prepare(sql)?;
        for (i, p) in params.iter().enumerate() {
            s.bind(i + 1, *p)?;
        }
        if s.step()? {
            Ok(Some(s.column(0)))
        } else {
            Ok(None)
        }
    }

    /// Runs one statement with parameters, ignoring rows.
    pub(crate) fn execute(&self, sql: &str, params: &[ValueRef<'_>]) -> Result<(), RawError> {
        let mut s = self.prepare(sql)?;
        for (i, p) in params.iter().enumerate() {
            s.bind(i + 1, *p)?;
        }
        while s.step()? {}
        Ok(())
    }
}

impl From<OwnedValue> for replication::wal::Value {
    fn from(v: OwnedValue) -> Self {
        use replication::wal::Value;
        match v {
            OwnedValue::Null => Value::Null,
            OwnedValue::Integer(i) => Value::Integer(i),
            OwnedValue::Real(r) => Value::Real(r),
            OwnedValue::Text(t) => Value::Text(t),
            OwnedValue::Blob(b) => Value::Blob(b),
        }
    }
}

/// A column value copied out of SQLite.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OwnedValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl OwnedValue {
    pub(crate) fn as_i64(&self) -> Option<i64> {
        match self {
            OwnedValue::Integer(i) => Some(*i),
            _ => None,
        }
    }
    pub(crate) fn into_string(self) -> Option<String> {
        match self {
            OwnedValue::Text(t) => String::from_utf8(t).ok(),
            _ => None,
        }
    }
}

/// A prepared statement, finalized on drop.
pub(crate) struct Stmt<'c> {
    conn: RawConn,
    stmt: *mut ffi::sqlite3_stmt,
    sql: String,
    _conn: std::marker::PhantomData<&'c RawConn>,
}

impl Stmt<'_> {
    pub(crate) fn bind(&mut self, index: usize, value: ValueRef<'_>) -> Result<(), RawError> {
        let i = index as c_int;
        // SAFETY: stmt is a live statement; SQLITE_TRANSIENT makes SQLite
        // copy text and blobs before the call returns.
        let rc = unsafe {
            match value {
                ValueRef::Null => ffi::sqlite3_bind_null(self.stmt, i),
                ValueRef::Integer(v) => ffi::sqlite3_bind_int64(self.stmt, i, v),
                ValueRef::Real(v) => ffi::sqlite3_bind_double(self.stmt, i, v),
                ValueRef::Text(t) => ffi::sqlite3_bind_text64(
                    self.stmt,
                    i,
                    t.as_ptr().cast(),
                    t.len() as u64,
                    ffi::SQLITE_TRANSIENT(),
                    ffi::SQLITE_UTF8 as u8,
                ),
                ValueRef::Blob(t) => ffi::sqlite3_bind_blob64(
                    self.stmt,
                    i,
                    t.as_ptr().cast(),
                    t.len() as u64,
                    ffi::SQLITE_TRANSIENT(),
                ),
            }
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.conn.error(rc, &self.sql))
        }
    }

    /// Binds a BLOB without SQLite copying it.
    ///
    /// # Safety
    /// `bytes` must stay valid and unchanged until the statement is reset,
    /// rebound or finalized.
    pub(crate) unsafe fn bind_blob_static(
        &mut self,
        index: usize,
        bytes: &[u8],
    ) -> Result<(), RawError> {
        // SAFETY: stmt is live; the caller keeps bytes alive (SQLITE_STATIC).
        let rc = unsafe {
            ffi::sqlite3_bind_blob64(
                self.stmt,
                index as c_int,
                bytes.as_ptr().cast(),
                bytes.len() as u64,
                ffi::SQLITE_STATIC(),
            )
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.conn.error(rc, &self.sql))
        }
    }

    /// Drops every binding (back to NULL).
    pub(crate) fn clear_bindings(&mut self) {
        // SAFETY: stmt is live.
        unsafe { ffi::sqlite3_clear_bindings(self.stmt) };
    }

    /// Steps once: `true` if a row is available.
    pub(crate) fn step(&mut self) -> Result<bool, RawError> {
        // SAFETY: stmt is live.
        match unsafe { ffi::sqlite3_step(self.stmt) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(self.conn.error(rc, &self.sql)),
        }
    }

    /// How many times SQLite prepared this statement again (after schema
    /// changes): `SQLITE_STMTSTATUS_REPREPARE`.
    pub(crate) fn reprepares(&self) -> i32 {
        const STMTSTATUS_REPREPARE: c_int = 5;
        // SAFETY: stmt is live; reading a counter without resetting it.
        unsafe { ffi::sqlite3_stmt_status(self.stmt, STMTSTATUS_REPREPARE, 0) }
    }

    /// Makes the statement ready to run again (bindings are kept).
    pub(crate) fn reset(&mut self) {
        // SAFETY: stmt is live. The result repeats the last step's error,
        // which step() already reported.
        unsafe { ffi::sqlite3_reset(self.stmt) };
    }

    /// Column `i` of the current row, borrowed (valid until the next step,
    /// reset or finalize, which all take `&mut self`).
    pub(crate) fn column_ref(&self, i: usize) -> ValueRef<'_> {
        let i = i as c_int;
        // SAFETY: called after step() returned a row; see column_blob for
        // the lifetime of the pointers.
        unsafe {
            let bytes = |p: *const u8, n: c_int| -> &[u8] {
                if p.is_null() || n <= 0 {
                    &[]
                } else {
                    std::slice::from_raw_parts(p, n as usize)
                }
            };
            match ffi::sqlite3_column_type(self.stmt, i) {
                ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_column_int64(self.stmt, i)),
                ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_column_double(self.stmt, i)),
                ffi::SQLITE_TEXT => {
                    let p = ffi::sqlite3_column_text(self.stmt, i);
                    ValueRef::Text(bytes(p, ffi::sqlite3_column_bytes(self.stmt, i)))
                }
                ffi::SQLITE_BLOB => {
                    let p = ffi::sqlite3_column_blob(self.stmt, i).cast::<u8>();
                    ValueRef::Blob(bytes(p, ffi::sqlite3_column_bytes(self.stmt, i)))
                }
                _ => ValueRef::Null,
            }
        }
    }

    /// Copies column `i` of the current row.
    pub(crate) fn column(&self, i: usize) -> OwnedValue {
        match self.column_ref(i) {
            ValueRef::Null => OwnedValue::Null,
            ValueRef::Integer(v) => OwnedValue::Integer(v),
            ValueRef::Real(v) => OwnedValue::Real(v),
            ValueRef::Text(t) => OwnedValue::Text(t.to_vec()),
            ValueRef::Blob(b) => OwnedValue::Blob(b.to_vec()),
        }
    }

    /// Column `i` of the current row if it is a BLOB, borrowed: the WAL
    /// reader gathers every change of a commit, and a `Vec` per change row
    /// would cost more than the copy itself.
    pub(crate) fn column_blob(&self, i: usize) -> Option<&[u8]> {
        let i = i as c_int;
        // SAFETY: called after step() returned a row. The pointer stays
        // valid until the next step, reset or finalize, all of which take
        // `&mut self` (or `self`), so the borrow returned here ends first;
        // no conversion is requested between column_blob and column_bytes.
        unsafe {
            if ffi::sqlite3_column_type(self.stmt, i) != ffi::SQLITE_BLOB {
                return None;
            }
            let p = ffi::sqlite3_column_blob(self.stmt, i).cast::<u8>();
            let n = ffi::sqlite3_column_bytes(self.stmt, i) as usize;
            if p.is_null() || n == 0 {
                Some(&[])
            } else {
                Some(std::slice::from_raw_parts(p, n))
            }
        }
    }
}

impl Drop for Stmt<'_> {
    fn drop(&mut self) {
        // SAFETY: stmt is live and finalized exactly once.
        unsafe { ffi::sqlite3_finalize(self.stmt) };
    }
}
