//! Primary capture: the SQL functions that make a database a primary and
//! record every committed change of a replicated table in the WAL, inside
//! the writing transaction.
//!
//! Role in the spec: the Primary "assigns CommitIds and appends WAL" (rule
//! P1) and is passive (P2): nothing here runs on its own; everything runs in
//! the application's own statements.
//!
//! How capture works (WAL format 3):
//! - `aerodb_replicate('t')` installs AFTER INSERT/UPDATE/DELETE triggers on
//!   `t` (and, when `t` has UNIQUE constraints besides its key, BEFORE
//!   triggers that note the rows a REPLACE could delete without firing a
//!   trigger). Each hands the row's key and values to
//!   `aerodb_capture_row`, which only appends them to the connection's
//!   [`buffer`]: no SQL and no b-tree write per row.
//! - The trigger statement is an `INSERT INTO aerodb_capture SELECT ...`
//!   that inserts nothing: it makes the [`vtab`] part of the transaction,
//!   so SQLite reports its savepoints, rollbacks and commit to the buffer.
//! - At commit ([`commit`], the table's `xSync`, still inside the
//!   transaction) the record is built from each touched key's final row
//!   (or its absence), given the next CommitId, written to
//!   `aerodb_commits` with its seal (CRC and chained checksum), one row.
//!   A transaction whose buffer outgrows a chunk ([`DEFAULT_CHUNK_BYTES`])
//!   is spilled while it runs: the buffer becomes a record that continues
//!   (its own CommitId, sealed, in the same transaction) and starts again
//!   empty, so memory stays bounded; the transaction's last record ends
//!   it. A crash can never leave data without WAL or WAL without data; `ROLLBACK` and `ROLLBACK TO` leave no trace; a
//!   transaction that changed nothing replicated gets no CommitId.
//!   SQLite's single writer serializes CommitIds across connections and
//!   processes. Writes to a primary that is not the connection's `main`
//!   database (ATTACH) are refused.
//! - A connection without the extension fails on the trigger ("no such
//!   table: main.aerodb_capture"): it can never write uncaptured data to a
//!   replicated table.

mod alter;
mod buffer;
mod commit;
mod error;
mod replicate;
mod tables;
mod vtab;

use crate::primary_wal::{WalReadError, WalTables};
use crate::raw::{RawConn, RawError};
use buffer::{Touch, TxBuffer};
use replication::wal::{encode_count, encode_value, CommitId, EncodeError, Generation};
use rusqlite::ffi;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::ffi::c_int;
use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) use error::sqlite;
pub use error::{check_sqlite_version, CaptureError, MIN_SQLITE_VERSION, MIN_SQLITE_VERSION_STR};
pub(crate) use tables::verify_capture;

/// A transaction's buffer is spilled into a record that continues once it
/// holds more than this (`aerodb_capture_chunk_bytes` changes it per
/// connection): the writer's memory stays a few times this, whatever the
/// transaction's size.
pub const DEFAULT_CHUNK_BYTES: usize = 8 << 20;

/// The largest chunk `aerodb_capture_chunk_bytes` accepts: a chunk's record
/// must stay under the record limit with room for the rows read at commit.
pub const MAX_CHUNK_BYTES: usize = replication::wal::MAX_RECORD_BYTES / 4;

/// The primary schema (`sql/primary.sql`).
pub const PRIMARY_SQL: &str = include_str!("../../../sql/primary.sql");

/// One connection's capture state, shared by its SQL functions and its
/// instance of the capture table.
pub(crate) struct ConnState {
    db: *mut ffi::sqlite3,
    /// The capture table takes part in the open transaction.
    in_transaction: bool,
    /// What the open transaction touched.
    pub(crate) buffer: TxBuffer,
    /// The generation of the primary the open transaction writes (from its
    /// triggers), once it captured something.
    pub(crate) tx_generation: Option<Generation>,
    /// The CommitId the open transaction's record was written with, once
    /// the commit began (SQLite may retry a commit after SQLITE_BUSY).
    pub(crate) written: Option<CommitId>,
    /// This connection's last committed CommitId.
    last_commit: Option<CommitId>,
    /// The main database's generation, once read.
    main_generation: Option<Generation>,
    /// A row event this transaction could not capture: the commit is
    /// refused unless a rollback to a savepoint opened before it undoes it.
    /// (The capture trigger's write to `aerodb_capture` makes SQLite give
    /// every statement that fires it a statement savepoint, which undoes
    /// the failed statement's row; this is the second line, should a
    /// statement ever run without one.) The savepoint level that was
    /// newest when it happened, and the error.
    poisoned: Option<(Option<i32>, String)>,
    /// A trigger that can skip capture (see `tables::capture_fires_first`)
    /// on a replicated table when the capture table joined the open
    /// transaction (table, trigger): the commit is refused even if the
    /// trigger is dropped, or capture re-installed, before it (the row it
    /// skipped left no trace to check later).
    pub(crate) unsafe_at_begin: Option<(String, String)>,
    /// A capture trigger asked its `INSERT INTO aerodb_capture` to reach
    /// the table (`xUpdate`), which spills the buffer.
    spill_requested: bool,
    /// The buffer is spilled once it holds more than this many bytes.
    chunk_bytes: usize,
    /// The next size at which a capture trigger asks for a spill (raised
    /// when a spill could not be written at that point).
    spill_at: usize,
    /// Scratch space for encoding a row's key and values.
    scratch_key: Vec<u8>,
    scratch_new_key: Vec<u8>,
    scratch_values: Vec<u8>,
}

// SAFETY: the handle is used only by calls SQLite makes on its connection,
// which SQLite serializes.
unsafe impl Send for ConnState {}

type Shared = Arc<Mutex<ConnState>>;

fn lock(s: &Mutex<ConnState>) -> MutexGuard<'_, ConnState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`lock`] for the capture table's callbacks, which SQLite may call
/// while a capture function runs SQL: a call made while the state is held
/// on this thread fails instead of deadlocking.
fn lock_now(s: &Mutex<ConnState>) -> Result<MutexGuard<'_, ConnState>, CaptureError> {
    match s.try_lock() {
        Ok(g) => Ok(g),
        Err(std::sync::TryLockError::Poisoned(e)) => Ok(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => Err(CaptureError::Uncaptured(
            "the capture table was called back while capture was busy on this connection".into(),
        )),
    }
}

impl ConnState {
    /// The capture table joined a transaction (`xBegin`).
    fn begin(&mut self) {
        self.in_transaction = true;
        self.spill_requested = false;
        self.spill_at = self.chunk_bytes;
        self.poisoned = None;
        self.buffer.clear();
        self.tx_generation = None;
        self.written = None;
    }

    /// The transaction committed (`xCommit`, after SQLite's commit).
    fn committed(&mut self) {
        if let Some(c) = self.written.take() {
            self.last_commit = Some(c);
        }
        self.end();
    }

    /// The transaction rolled back (`xRollback`).
    fn rolled_back(&mut self) {
        self.written = None;
        self.end();
    }

    /// `ROLLBACK TO` savepoint `level`.
    fn rolled_back_to(&mut self, level: i32) {
        self.buffer.rollback_to(level);
        self.spill_at = self.spill_at.min(self.buffer.bytes() + self.chunk_bytes);
        if matches!(self.poisoned, Some((Some(newest), _)) if level <= newest) {
            // The failed statement's changes are undone with it.
            self.poisoned = None;
        }
    }

    fn end(&mut self) {
        self.in_transaction = false;
        self.poisoned = None;
        self.unsafe_at_begin = None;
        self.buffer.clear();
        self.tx_generation = None;
    }
}

fn check_main(
    s: &mut ConnState,
    conn: RawConn,
    generation: Generation,
) -> Result<(), CaptureError> {
    if s.main_generation != Some(generation) {
        s.main_generation = match conn.query_value(
            "SELECT value FROM main.aerodb_meta WHERE key = 'generation'",
            &[],
        ) {
            Ok(v) => v.and_then(|v| v.as_i64()).map(|g| Generation(g as u64)),
            Err(e) if e.message.contains("no such table") => None,
            Err(e) => return Err(sqlite("reading the main database's generation")(e)),
        };
    }
    if s.main_generation != Some(generation) {
        return Err(CaptureError::NotMainDatabase {
            generation,
            main: s.main_generation,
        });
    }
    Ok(())
}

/// What a capture trigger reports (`aerodb_capture_row`'s 3rd argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowEvent {
    /// 1: a row was inserted; key, then all stored columns.
    Insert,
    /// 2: a row was updated; old key, new key, then all stored columns.
    Update,
    /// 3: a row was deleted; its key.
    Delete,
    /// 4: a row a REPLACE may delete (BEFORE trigger); its key.
    Candidate,
    /// 5: a row was inserted in a table too wide to hand its values over;
    /// its key (looked up at commit).
    InsertKey,
    /// 6: the same for an update; old key, new key.
    UpdateKey,
}

impl RowEvent {
    fn from_code(code: i64) -> Option<RowEvent> {
        Some(match code {
            1 => RowEvent::Insert,
            2 => RowEvent::Update,
            3 => RowEvent::Delete,
            4 => RowEvent::Candidate,
            5 => RowEvent::InsertKey,
            6 => RowEvent::UpdateKey,
            _ => return None,
        })
    }

    /// How many key lists the arguments carry.
    fn keys(self) -> usize {
        match self {
            RowEvent::Update | RowEvent::UpdateKey => 2,
            _ => 1,
        }
    }

    fn has_values(self) -> bool {
        matches!(self, RowEvent::Insert | RowEvent::Update)
    }
}

/// The arguments of a raw SQL function call.
struct Args<'a>(&'a [*mut ffi::sqlite3_value]);

impl<'a> Args<'a> {
    fn len(&self) -> usize {
        self.0.len()
    }

    /// Argument `i` (< len), borrowed for the call.
    fn get_raw(&self, i: usize) -> ValueRef<'a> {
        let v = self.0[i];
        // SAFETY: SQLite passes `len` valid values for the duration of the
        // call; text and blob pointers stay valid until the call returns
        // and no conversion is requested between pointer and length.
        unsafe {
            let bytes = |p: *const u8, n: c_int| -> &'a [u8] {
                if p.is_null() || n <= 0 {
                    &[]
                } else {
                    std::slice::from_raw_parts(p, n as usize)
                }
            };
            match ffi::sqlite3_value_type(v) {
                ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_value_int64(v)),
                ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_value_double(v)),
                ffi::SQLITE_TEXT => {
                    let p = ffi::sqlite3_value_text(v);
                    ValueRef::Text(bytes(p, ffi::sqlite3_value_bytes(v)))
                }
                ffi::SQLITE_BLOB => {
                    let p = ffi::sqlite3_value_blob(v).cast::<u8>();
                    ValueRef::Blob(bytes(p, ffi::sqlite3_value_bytes(v)))
                }
                _ => ValueRef::Null,
            }
        }
    }
}

/// `SQLITE_INNOCUOUS` (3.31; not in every binding rusqlite ships).
const FUNCTION_INNOCUOUS: c_int = 0x0020_0000;

/// The raw entry point of `aerodb_capture_row`: it runs once per written
/// row, so it skips rusqlite's per-call wrapping. No panic crosses it.
unsafe extern "C" fn capture_row_entry(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    let result = std::panic::catch_unwind(|| {
        // SAFETY: user data is the Arc registered with the function, alive
        // until its destructor runs; argv holds argc values.
        let shared = unsafe { &*(ffi::sqlite3_user_data(ctx) as *const Mutex<ConnState>) };
        let args = if argc <= 0 || argv.is_null() {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(argv, argc as usize) }
        };
        capture_row(shared, &Args(args))
    });
    let message = match result {
        Ok(Ok(spill)) => {
            // 1 lets the trigger's INSERT reach the capture table, which
            // spills the buffer (`vtab::x_update`).
            // SAFETY: ctx is the live call context.
            unsafe { ffi::sqlite3_result_int(ctx, c_int::from(spill)) };
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "aerodb_capture_row: internal error (panic); the write is refused".to_string(),
    };
    // SAFETY: ctx is live; SQLite copies the message (length given).
    unsafe { ffi::sqlite3_result_error(ctx, message.as_ptr().cast(), message.len() as c_int) };
}

unsafe extern "C" fn drop_shared(p: *mut std::ffi::c_void) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: p came from Arc::into_raw when the function was registered.
        drop(unsafe { Arc::from_raw(p as *const Mutex<ConnState>) });
    });
}

fn register_capture_row(db: *mut ffi::sqlite3, shared: &Shared) -> Result<(), CaptureError> {
    let user = Arc::into_raw(Arc::clone(shared)) as *mut std::ffi::c_void;
    // SAFETY: db is open; the name is NUL-terminated; SQLite calls
    // drop_shared exactly once for `user`, also when registration fails.
    let rc = unsafe {
        ffi::sqlite3_create_function_v2(
            db,
            c"aerodb_capture_row".as_ptr(),
            -1,
            ffi::SQLITE_UTF8 | FUNCTION_INNOCUOUS,
            user,
            Some(capture_row_entry),
            None,
            None,
            Some(drop_shared),
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(CaptureError::Sqlite {
            doing: "registering aerodb_capture_row".into(),
            source: RawError {
                code: rc,
                message: "sqlite3_create_function_v2 failed".into(),
                sql: String::new(),
            },
        });
    }
    Ok(())
}

fn arg_value<'a>(ctx: &Args<'a>, i: usize) -> replication::wal::ValueRef<'a> {
    crate::values::wal_value(ctx.get_raw(i))
}

fn encode_args(
    out: &mut Vec<u8>,
    ctx: &Args<'_>,
    args: std::ops::Range<usize>,
) -> Result<(), EncodeError> {
    out.clear();
    encode_count(out, args.len())?;
    args.into_iter()
        .try_for_each(|i| encode_value(out, arg_value(ctx, i)))
}

/// `aerodb_capture_row(generation, table, event, key_len, ...)`: one row
/// event of a capture trigger, appended to the transaction's buffer.
/// True asks for a spill of the buffer (see [`ConnState::spill_requested`]).
fn capture_row(shared: &Mutex<ConnState>, ctx: &Args<'_>) -> Result<bool, CaptureError> {
    const F: &str = "aerodb_capture_row";
    let bad = |argument: &str, problem: String| CaptureError::BadArgument {
        function: F,
        argument: argument.into(),
        problem,
    };
    if ctx.len() < 4 {
        return Err(bad(
            "count",
            format!("is {}, expected at least 4", ctx.len()),
        ));
    }
    let generation = match ctx.get_raw(0) {
        ValueRef::Integer(g) => Generation(g as u64),
        other => {
            return Err(bad(
                "1 (generation)",
                format!("is {:?}, expected INTEGER", other.data_type()),
            ))
        }
    };
    let table = match ctx.get_raw(1) {
        ValueRef::Text(t) => {
            std::str::from_utf8(t).map_err(|e| bad("2 (table)", format!("is not UTF-8: {e}")))?
        }
        other => {
            return Err(bad(
                "2 (table)",
                format!("is {:?}, expected TEXT", other.data_type()),
            ))
        }
    };
    let event = match ctx.get_raw(2) {
        ValueRef::Integer(c) => RowEvent::from_code(c),
        _ => None,
    }
    .ok_or_else(|| {
        bad(
            "3 (event)",
            format!("is {:?}, expected 1..=6", ctx.get_raw(2)),
        )
    })?;
    let rest = ctx.len() - 4;
    let nkey = match ctx.get_raw(3) {
        ValueRef::Integer(n) if n >= 1 && (n as usize) * event.keys() <= rest => n as usize,
        other => {
            return Err(bad(
                "4 (key length)",
                format!("is {other:?}, expected 1..={}", rest / event.keys()),
            ))
        }
    };
    let values_at = 4 + nkey * event.keys();
    if !event.has_values() && values_at != ctx.len() {
        return Err(bad(
            "count",
            format!("is {}, expected {values_at} for event {event:?}", ctx.len()),
        ));
    }
    let mut guard = lock(shared);
    let s = &mut *guard;
    if !s.in_transaction {
        return Err(bad(
            "call",
            "came from outside a capture trigger (only AeroDB's capture triggers call it)".into(),
        ));
    }
    if s.tx_generation != Some(generation) {
        // SAFETY: called by SQLite on this connection, which is open.
        check_main(s, unsafe { RawConn::new(s.db) }, generation)?;
        s.tx_generation = Some(generation);
    }
    let encoded = |source| CaptureError::Encode {
        table: table.to_owned(),
        source,
    };
    let (mut key, mut new_key, mut values) = (
        std::mem::take(&mut s.scratch_key),
        std::mem::take(&mut s.scratch_new_key),
        std::mem::take(&mut s.scratch_values),
    );
    let result = (|| -> Result<(), CaptureError> {
        encode_args(&mut key, ctx, 4..4 + nkey).map_err(encoded)?;
        if event.has_values() {
            encode_args(&mut values, ctx, values_at..ctx.len()).map_err(encoded)?;
        }
        let b = &mut s.buffer;
        match event {
            RowEvent::Insert => b.touch(table, &key, false, Touch::Now(&values)),
            RowEvent::Delete => b.touch(table, &key, true, Touch::Gone),
            RowEvent::Candidate => b.touch(table, &key, true, Touch::Candidate),
            RowEvent::InsertKey => b.touch(table, &key, false, Touch::Lookup),
            RowEvent::Update | RowEvent::UpdateKey => {
                encode_args(&mut new_key, ctx, 4 + nkey..4 + 2 * nkey).map_err(encoded)?;
                let now = if event == RowEvent::Update {
                    Touch::Now(&values)
                } else {
                    Touch::Lookup
                };
                if new_key == key {
                    b.touch(table, &key, true, now);
                } else {
                    b.touch(table, &key, true, Touch::Gone);
                    b.touch(table, &new_key, false, now);
                }
            }
        }
        // A row event of an AFTER trigger: every change made so far has
        // been seen, so the buffer may be spilled here (not in a BEFORE
        // trigger's probe: the REPLACE it prepares for has not run).
        if b.bytes() > s.spill_at && event != RowEvent::Candidate {
            s.spill_requested = true;
        }
        Ok(())
    })();
    s.scratch_key = key;
    s.scratch_new_key = new_key;
    s.scratch_values = values;
    if let Err(e) = &result {
        if s.poisoned.is_none() {
            s.poisoned = Some((s.buffer.newest_savepoint(), e.to_string()));
        }
    }
    result.map(|()| s.spill_requested)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn primary_init(conn: RawConn) -> Result<Generation, CaptureError> {
    let replica = conn
        .query_value(
            "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = 'aerodb_replica_position'",
            &[],
        )
        .map_err(sqlite("checking whether this database is a replica"))?;
    if replica.is_some() {
        return Err(CaptureError::IsReplica);
    }
    let version = conn
        .query_value(
            "SELECT value FROM main.aerodb_meta WHERE key = 'format_version'",
            &[],
        )
        .ok()
        .flatten()
        .and_then(|v| v.as_i64());
    if let Some(v) = version.filter(|&v| v != i64::from(replication::wal::FORMAT_VERSION)) {
        return Err(CaptureError::Refused {
            table: String::new(),
            reason: format!(
                "this primary's WAL is in format {v}, this AeroDB writes format {}; make a new primary from a copy of its tables",
                replication::wal::FORMAT_VERSION
            ),
        });
    }
    conn.execute_batch(PRIMARY_SQL)
        .map_err(sqlite("creating the primary's tables (sql/primary.sql)"))?;
    if let Ok(g) = WalTables::new(conn).generation() {
        return Ok(g);
    }
    let g = Generation(random_u64());
    conn.execute(
        "INSERT INTO main.aerodb_meta(key, value) VALUES ('generation', ?1), ('format_version', ?2)",
        &[
            ValueRef::Integer(g.0 as i64),
            ValueRef::Integer(i64::from(replication::wal::FORMAT_VERSION)),
        ],
    )
    .map_err(sqlite("recording the primary's generation"))?;
    Ok(g)
}

fn primary_generation(wal: &WalTables) -> Result<Generation, CaptureError> {
    wal.generation().map_err(|e| match e {
        WalReadError::NotPrimary => CaptureError::NotPrimary,
        other => other.into(),
    })
}

fn truncate_wal(conn: RawConn, below: CommitId) -> Result<CommitId, CaptureError> {
    let wal = WalTables::new(conn);
    primary_generation(&wal)?;
    Ok(wal.truncate_below(below)?)
}

fn head(conn: RawConn) -> Result<CommitId, CaptureError> {
    let wal = WalTables::new(conn);
    primary_generation(&wal)?;
    Ok(wal.head()?)
}

fn last_commit_id(shared: &Shared) -> Option<CommitId> {
    lock(shared).last_commit
}

fn user_err(e: CaptureError) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(Box::new(e))
}

/// The connection these functions were registered on. SQLite calls a
/// function only on the connection it was registered on, so this is the
/// connection running the call.
fn raw(shared: &Shared) -> RawConn {
    // SAFETY: the connection is open while its functions can be called.
    unsafe { RawConn::new(lock(shared).db) }
}

fn text_arg<'a>(ctx: &'a Context<'_>, function: &'static str) -> Result<&'a str, rusqlite::Error> {
    match ctx.get_raw(0) {
        ValueRef::Text(t) => std::str::from_utf8(t).map_err(|e| {
            user_err(CaptureError::BadArgument {
                function,
                argument: "1 (table)".into(),
                problem: format!("is not valid UTF-8: {e}"),
            })
        }),
        other => Err(user_err(CaptureError::BadArgument {
            function,
            argument: "1 (table)".into(),
            problem: format!("is {}, expected a table name (TEXT)", other.data_type()),
        })),
    }
}

/// Registers the primary's SQL functions and the capture table on `conn`.
/// Every connection that writes a replicated table needs them (the
/// extension does this on load); without them such writes fail.
pub fn register(conn: &Connection) -> Result<CaptureHandle, rusqlite::Error> {
    check_sqlite_version().map_err(user_err)?;
    // SAFETY: the handle of a live connection, used only by calls on it.
    let db = unsafe { conn.handle() };
    let shared: Shared = Arc::new(Mutex::new(ConnState {
        db,
        in_transaction: false,
        buffer: TxBuffer::default(),
        tx_generation: None,
        written: None,
        last_commit: None,
        main_generation: None,
        poisoned: None,
        unsafe_at_begin: None,
        spill_requested: false,
        chunk_bytes: DEFAULT_CHUNK_BYTES,
        spill_at: DEFAULT_CHUNK_BYTES,
        scratch_key: Vec::new(),
        scratch_new_key: Vec::new(),
        scratch_values: Vec::new(),
    }));
    let utf8 = FunctionFlags::SQLITE_UTF8;
    let direct = utf8 | FunctionFlags::SQLITE_DIRECTONLY;

    register_capture_row(db, &shared).map_err(user_err)?;
    let s = shared.clone();
    conn.create_scalar_function("aerodb_primary_init", 0, direct, move |_ctx| {
        primary_init(raw(&s))
            .map(|g| g.to_string())
            .map_err(user_err)
    })?;
    let s = shared.clone();
    conn.create_scalar_function("aerodb_replicate", 1, direct, move |ctx| {
        let table = text_arg(ctx, "aerodb_replicate")?;
        replicate::replicate(&s, raw(&s), table)
            .map(|c| c.0 as i64)
            .map_err(user_err)
    })?;
    let s = shared.clone();
    conn.create_scalar_function("aerodb_alter", 1, direct, move |ctx| {
        let sql = match ctx.get_raw(0) {
            ValueRef::Text(t) => std::str::from_utf8(t).map_err(|e| {
                user_err(CaptureError::BadArgument {
                    function: "aerodb_alter",
                    argument: "1 (sql)".into(),
                    problem: format!("is not valid UTF-8: {e}"),
                })
            })?,
            other => {
                return Err(user_err(CaptureError::BadArgument {
                    function: "aerodb_alter",
                    argument: "1 (sql)".into(),
                    problem: format!("is {}, expected DDL statements (TEXT)", other.data_type()),
                }))
            }
        };
        alter::alter(&s, raw(&s), sql)
            .map(|c| c.0 as i64)
            .map_err(user_err)
    })?;
    let s = shared.clone();
    conn.create_scalar_function("aerodb_resync", 1, direct, move |ctx| {
        let table = text_arg(ctx, "aerodb_resync")?;
        replicate::resync(&s, raw(&s), table)
            .map(|c| c.0 as i64)
            .map_err(user_err)
    })?;
    let s = shared.clone();
    conn.create_scalar_function("aerodb_unreplicate", 1, direct, move |ctx| {
        let table = text_arg(ctx, "aerodb_unreplicate")?;
        replicate::unreplicate(&s, raw(&s), table)
            .map(|c| c.0 as i64)
            .map_err(user_err)
    })?;
    let s = shared.clone();
    conn.create_scalar_function("aerodb_head", 0, utf8, move |_ctx| {
        head(raw(&s)).map(|c| c.0 as i64).map_err(user_err)
    })?;
    let s = shared.clone();
    conn.create_scalar_function("aerodb_truncate_wal", 1, direct, move |ctx| {
        let below = match ctx.get_raw(0) {
            ValueRef::Integer(n) if n >= 1 => CommitId(n as u64),
            other => {
                return Err(user_err(CaptureError::BadArgument {
                    function: "aerodb_truncate_wal",
                    argument: "1 (below_commit_id)".into(),
                    problem: format!("is {other:?}, expected a CommitId >= 1 (INTEGER)"),
                }))
            }
        };
        truncate_wal(raw(&s), below)
            .map(|c| c.0 as i64)
            .map_err(user_err)
    })?;
    let s = shared.clone();
    conn.create_scalar_function("aerodb_capture_chunk_bytes", 1, direct, move |ctx| {
        let bytes = match ctx.get_raw(0) {
            ValueRef::Integer(n) if n >= 1 && n as u64 <= MAX_CHUNK_BYTES as u64 => n as usize,
            other => {
                return Err(user_err(CaptureError::BadArgument {
                    function: "aerodb_capture_chunk_bytes",
                    argument: "1 (bytes)".into(),
                    problem: format!("is {other:?}, expected an INTEGER in 1..={MAX_CHUNK_BYTES}"),
                }))
            }
        };
        let mut state = lock(&s);
        let previous = std::mem::replace(&mut state.chunk_bytes, bytes);
        state.spill_at = state.spill_at.min(state.buffer.bytes() + bytes);
        Ok(previous as i64)
    })?;
    let s = shared.clone();
    conn.create_scalar_function("aerodb_last_commit_id", 0, utf8, move |_ctx| {
        Ok(last_commit_id(&s).map(|c| c.0 as i64))
    })?;
    crate::version::register(conn)?;
    // The table last, once every function holds the new state: it shares
    // the state the functions own.
    vtab::register(db, &shared).map_err(user_err)?;
    Ok(CaptureHandle { shared })
}

/// The capture state of one connection, for the typed Rust API. Use it only
/// with the connection [`register`] was called on, on that connection's
/// thread, while no statement of it is running.
#[derive(Clone)]
pub struct CaptureHandle {
    shared: Shared,
}

impl CaptureHandle {
    /// As `aerodb_primary_init()`.
    pub fn primary_init(&self) -> Result<Generation, CaptureError> {
        primary_init(raw(&self.shared))
    }

    /// As `aerodb_replicate(table)`.
    pub fn replicate(&self, table: &str) -> Result<CommitId, CaptureError> {
        replicate::replicate(&self.shared, raw(&self.shared), table)
    }

    /// As `aerodb_alter(sql)`.
    pub fn alter(&self, sql: &str) -> Result<CommitId, CaptureError> {
        alter::alter(&self.shared, raw(&self.shared), sql)
    }

    /// As `aerodb_resync(table)`.
    pub fn resync(&self, table: &str) -> Result<CommitId, CaptureError> {
        replicate::resync(&self.shared, raw(&self.shared), table)
    }

    /// As `aerodb_unreplicate(table)`.
    pub fn unreplicate(&self, table: &str) -> Result<CommitId, CaptureError> {
        replicate::unreplicate(&self.shared, raw(&self.shared), table)
    }

    /// As `aerodb_head()`.
    pub fn head(&self) -> Result<CommitId, CaptureError> {
        head(raw(&self.shared))
    }

    /// As `aerodb_truncate_wal(below)`.
    pub fn truncate_wal(&self, below: CommitId) -> Result<CommitId, CaptureError> {
        truncate_wal(raw(&self.shared), below)
    }

    /// As `aerodb_last_commit_id()`.
    pub fn last_commit_id(&self) -> Result<Option<CommitId>, CaptureError> {
        Ok(last_commit_id(&self.shared))
    }
}
