//! Primary capture: the SQL functions that make a database a primary and
//! record every committed change of a replicated table in the WAL, inside
//! the writing transaction.
//!
//! Role in the spec: the Primary "assigns CommitIds and appends WAL" (rule
//! P1) and is passive (P2): nothing here runs on its own; everything runs in
//! the application's own statements.
//!
//! How capture works:
//! - `aerodb_replicate('t')` installs AFTER INSERT/UPDATE/DELETE triggers on
//!   `t`. Each trigger inserts one `aerodb_changes` row per changed row:
//!   the encoded change (`aerodb_capture_change`) at the position
//!   `aerodb_capture_pos` gives. Once per transaction and table,
//!   `aerodb_capture_pos` returns NULL and `aerodb_capture_begin` runs
//!   instead, fed by subqueries the trigger program itself evaluates (it is
//!   compiled with the application's statement, so no SQL is prepared per
//!   transaction): the WAL head, the newest sealed record and `t`'s current
//!   definition and indexes. It refuses the write if `t` no longer has the
//!   shape its triggers were made for, and at the first captured change of
//!   a transaction assigns the CommitId.
//!
//!   Trigger and data change are one SQLite transaction: a crash can never
//!   leave one without the other, and `ROLLBACK` or `ROLLBACK TO` removes
//!   both.
//! - CommitIds: the first captured change of a transaction takes
//!   `head + 1`; later ones in the same transaction reuse it. "Same
//!   transaction" is decided by the main database's data version
//!   (`SQLITE_FCNTL_DATA_VERSION`): it is stable for the whole of a
//!   transaction (including across `ROLLBACK TO`) and changes when this
//!   connection commits or sees another connection's commit. A transaction
//!   whose changes were all rolled back leaves no row, so the next one
//!   takes the same CommitId: CommitIds stay contiguous. No CommitId
//!   without a change row, none for transactions that changed nothing
//!   replicated. SQLite's single writer serializes assignment across
//!   connections and processes. Writes to a primary that is not the
//!   connection's `main` database (ATTACH) are refused.
//! - A connection without these functions fails on the trigger's first
//!   call ("no such function: aerodb_capture_begin"): it can never write
//!   uncaptured data to a replicated table.
//! - The commit hook only serves `aerodb_last_commit_id()`; capture does not
//!   depend on it.

use crate::primary_wal::{
    commit_of, first_pos, WalReadError, WalTables, MAX_COMMIT_ID, MAX_SEQ, SEAL_BATCH,
};
use crate::raw::{OwnedValue, RawConn, RawError};
use replication::wal::{
    encode_change, encode_change_header, encode_count, encode_value, Change, CommitId, EncodeError,
    Generation, Operation, Value, ValueRef as WalValue,
};
use replication::wal::{MAX_RECORD_BYTES, RECORD_OVERHEAD};
use rusqlite::ffi;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, MutexGuard};

/// `SQLITE_FCNTL_DATA_VERSION`.
const FCNTL_DATA_VERSION: c_int = 35;

/// The primary schema (`sql/primary.sql`).
pub const PRIMARY_SQL: &str = include_str!("../../sql/primary.sql");

/// Errors of the primary's SQL functions and Rust API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CaptureError {
    /// The database has not been made a primary.
    #[error("not an AeroDB primary: run aerodb_primary_init() first")]
    NotPrimary,
    /// The database is a replica: it cannot also be a primary.
    #[error("aerodb_primary_init(): this database is an AeroDB replica (it has aerodb_replica_position); a database cannot be both")]
    IsReplica,
    /// No such table in the main database.
    #[error("aerodb_replicate('{table}'): no table named '{table}' in the main database")]
    NoSuchTable {
        /// The argument.
        table: String,
    },
    /// The table cannot be replicated.
    #[error("aerodb_replicate('{table}'): {reason}")]
    Refused {
        /// The argument.
        table: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A SQL function got a bad argument.
    #[error("{function}: argument {argument} {problem}")]
    BadArgument {
        /// The function.
        function: &'static str,
        /// Argument position (1-based) or name.
        argument: String,
        /// What is wrong.
        problem: String,
    },
    /// The transaction's changes do not fit one WAL record.
    #[error("transaction too large for one WAL record at commit {commit_id}: more than {limit} change rows")]
    TooManyChanges {
        /// The commit being written.
        commit_id: CommitId,
        /// `MAX_SEQ`.
        limit: u32,
    },
    /// CommitIds exhausted.
    #[error("CommitId {0} exceeds the largest CommitId this format stores ({MAX_COMMIT_ID})")]
    CommitIdOverflow(CommitId),
    /// A value is over a WAL limit.
    #[error("cannot capture change of table '{table}': {source}")]
    Encode {
        /// The table.
        table: String,
        /// The limit broken.
        source: EncodeError,
    },
    /// Reading or sealing the WAL failed.
    #[error(transparent)]
    Wal(#[from] WalReadError),
    /// Other SQLite failure, with what was being done.
    #[error("{doing}: {source}")]
    Sqlite {
        /// What was being done.
        doing: String,
        /// The SQLite error.
        source: RawError,
    },
    /// A replicated table changed under capture: writes are refused until
    /// `aerodb_replicate` runs again.
    #[error("replication of table '{table}' is broken: {problem}; its writes are refused and its WAL is not served until aerodb_replicate('{table}') is run again")]
    CaptureBroken {
        /// The table.
        table: String,
        /// What changed.
        problem: String,
    },
    /// A captured write to a primary that is not this connection's main
    /// database.
    #[error("write to a replicated table of primary {generation} refused: the connection's main database is {}; write to a primary through a connection whose main database is that primary (not through ATTACH)", main.map(|g| format!("primary {g}")).unwrap_or_else(|| "not a primary".into()))]
    NotMainDatabase {
        /// The generation the table's triggers belong to.
        generation: Generation,
        /// The main database's generation, if it is a primary.
        main: Option<Generation>,
    },
    /// `aerodb_last_commit_id()` cannot be trusted.
    #[error("aerodb_last_commit_id is unknown on this connection: another commit hook replaced AeroDB's; do not install commit hooks on a capture connection")]
    CommitHookReplaced,
    /// The SQLite library is too old.
    #[error("SQLite {actual} is too old: AeroDB needs SQLite {required} or newer")]
    SqliteTooOld {
        /// The running version.
        actual: String,
        /// The minimum.
        required: &'static str,
    },
}

fn sqlite(doing: impl Into<String>) -> impl FnOnce(RawError) -> CaptureError {
    let doing = doing.into();
    move |source| CaptureError::Sqlite { doing, source }
}

/// Minimum SQLite version (`pragma_table_list`, 3.37).
pub const MIN_SQLITE_VERSION: c_int = 3_037_000;
/// The same, for messages.
pub const MIN_SQLITE_VERSION_STR: &str = "3.37.0";

/// Refuses SQLite libraries older than [`MIN_SQLITE_VERSION`].
pub fn check_sqlite_version() -> Result<(), CaptureError> {
    // SAFETY: plain getters with no preconditions.
    let (n, s) = unsafe {
        (
            ffi::sqlite3_libversion_number(),
            std::ffi::CStr::from_ptr(ffi::sqlite3_libversion())
                .to_string_lossy()
                .into_owned(),
        )
    };
    version_check(n, s)
}

fn version_check(number: c_int, text: String) -> Result<(), CaptureError> {
    if number < MIN_SQLITE_VERSION {
        return Err(CaptureError::SqliteTooOld {
            actual: text,
            required: MIN_SQLITE_VERSION_STR,
        });
    }
    Ok(())
}

/// The transaction a connection is capturing into.
#[derive(Debug, Clone)]
struct OpenCommit {
    /// Data version of the main database while the transaction runs.
    data_version: u32,
    /// The primary's generation (the one the triggers carry).
    generation: Generation,
    commit_id: CommitId,
    next_seq: u32,
    /// Tables whose shape was verified in this transaction.
    checked: Vec<String>,
}

/// This connection's read-your-writes token (`aerodb_last_commit_id()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// No captured commit on this connection yet.
    Nothing,
    /// The CommitId of this connection's last committed captured write.
    Known(CommitId),
    /// A transaction that opened `candidate` committed. Whether any of its
    /// change rows survived (`ROLLBACK TO` and failed statements remove
    /// them) is checked by SQL at the next call, since the commit hook may
    /// not run SQL.
    Unresolved {
        candidate: CommitId,
        previous: Option<CommitId>,
        /// Data version while that transaction ran: if a rollback follows
        /// with the version unchanged, the commit itself failed.
        data_version: u32,
    },
}

impl Token {
    fn settled(self) -> Option<CommitId> {
        match self {
            Token::Nothing => None,
            Token::Known(c) => Some(c),
            Token::Unresolved { previous, .. } => previous,
        }
    }

    fn from(c: Option<CommitId>) -> Token {
        c.map(Token::Known).unwrap_or(Token::Nothing)
    }
}

/// Where a connection's commit hook stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HookStatus {
    Installed,
    /// Another commit hook replaced ours at some point.
    Replaced,
}

/// Per-connection capture state, shared by this connection's functions and
/// its commit/rollback hooks (never across connections).
#[derive(Debug)]
struct ConnState {
    db: *mut ffi::sqlite3,
    open: Option<OpenCommit>,
    token: Token,
    hook: HookStatus,
    /// Bytes of the current transaction's record so far, with the data
    /// version they belong to (changes rolled back to a savepoint still
    /// count: conservative; a rollback resets it).
    record_bytes: Option<(u32, usize)>,
    /// Generation of the primary in `main`, once read (it never changes).
    main_generation: Option<Generation>,
}

// SAFETY: the raw handle is only used on the thread that is running a call
// on that connection (SQLite calls functions and hooks on the caller's
// thread), and the Mutex serializes access to the rest.
unsafe impl Send for ConnState {}

type Shared = Arc<Mutex<ConnState>>;

fn lock(s: &Shared) -> MutexGuard<'_, ConnState> {
    // A poisoned lock means a panic was caught mid-call; the state is plain
    // data that each call re-validates against the data version.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn data_version(db: *mut ffi::sqlite3) -> Result<u32, CaptureError> {
    let mut v: u32 = 0;
    // SAFETY: db is open (we are inside one of its calls); the opcode
    // writes one u32.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            db,
            c"main".as_ptr(),
            FCNTL_DATA_VERSION,
            (&mut v as *mut u32).cast::<c_void>(),
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(CaptureError::Sqlite {
            doing: "reading the data version of the main database".into(),
            source: RawError {
                code: rc,
                message: "SQLITE_FCNTL_DATA_VERSION failed".into(),
                sql: String::new(),
            },
        });
    }
    Ok(v)
}

unsafe extern "C" fn on_commit(arg: *mut c_void) -> c_int {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: arg is the Mutex of an Arc kept alive by this connection's
        // registered functions (see `install_hooks`).
        let state = unsafe { &*(arg as *const Mutex<ConnState>) };
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = s.open.clone() {
            if data_version(s.db).ok() == Some(open.data_version) {
                // capture_pos settled the token before opening this commit.
                s.token = Token::Unresolved {
                    candidate: open.commit_id,
                    previous: s.token.settled(),
                    data_version: open.data_version,
                };
            }
        }
    });
    0
}

unsafe extern "C" fn on_rollback(arg: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: as in on_commit.
        let state = unsafe { &*(arg as *const Mutex<ConnState>) };
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if let Token::Unresolved {
            previous,
            data_version: v,
            ..
        } = s.token
        {
            // A successful commit bumps the data version; unchanged means
            // the commit the hook saw failed and rolled back.
            if data_version(s.db).ok() == Some(v) {
                s.token = Token::from(previous);
            }
        }
        s.open = None;
        s.record_bytes = None;
    });
}

/// Installs our commit and rollback hooks; notes if another commit hook had
/// replaced ours.
fn install_hooks(shared: &Shared) {
    let arg = Arc::as_ptr(shared) as *mut c_void;
    let db = lock(shared).db;
    // SAFETY: db is open; arg stays valid while our functions are
    // registered on db (their closures own the Arc), and the hooks are
    // re-installed before any re-registration drops an old Arc.
    let (prev_commit, _) = unsafe {
        (
            ffi::sqlite3_commit_hook(db, Some(on_commit), arg),
            ffi::sqlite3_rollback_hook(db, Some(on_rollback), arg),
        )
    };
    if !prev_commit.is_null() && prev_commit != arg {
        tracing::warn!("a foreign commit hook was installed on a capture connection; aerodb_last_commit_id() is now unknown");
        lock(shared).hook = HookStatus::Replaced;
    }
}

/// What a capture trigger read in its own program (compiled once per
/// statement, so no SQL is prepared per transaction) for
/// [`capture_begin`].
#[derive(Debug, Clone, PartialEq)]
struct BeginInput<'a> {
    generation: Generation,
    table: &'a str,
    max_pos: Option<i64>,
    max_sealed: Option<i64>,
    /// The table's `CREATE TABLE` statement now, and when capture was set up.
    table_sql: Option<&'a str>,
    expected_sql: &'a str,
    /// Its index statements now (joined by [`INDEX_SEPARATOR`]) and then.
    indexes: Option<&'a str>,
    expected_indexes: &'a str,
}

/// `aerodb_capture_pos(generation, table)`: the `aerodb_changes.pos` of
/// the next change, or NULL when [`capture_begin`] must run first (first
/// captured change of the transaction, or first change of this table in
/// it). The trigger writes `coalesce(aerodb_capture_pos(..),
/// aerodb_capture_begin(..))`, and `coalesce` evaluates its second argument,
/// with the subqueries feeding it, only when the first is NULL.
fn capture_pos_fast(
    shared: &Shared,
    generation: Generation,
    table: &str,
) -> Result<Option<i64>, CaptureError> {
    let mut s = lock(shared);
    let version = data_version(s.db)?;
    match s.open.as_mut() {
        Some(o)
            if o.data_version == version
                && o.generation == generation
                && o.checked.iter().any(|t| t == table) =>
        {
            next_pos(o).map(Some)
        }
        _ => Ok(None),
    }
}

/// Checks that `generation` is the primary in this connection's `main`
/// database: transactions are told apart by `main`'s data version, so a
/// write to a primary attached under another name is refused.
fn check_main(
    s: &mut ConnState,
    conn: RawConn,
    generation: Generation,
) -> Result<(), CaptureError> {
    if s.main_generation != Some(generation) {
        // Cold path: main's generation never changes once set.
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

/// `aerodb_capture_begin(...)`: verifies the table still has the shape its
/// triggers were made for and, at the first captured change of a
/// transaction, assigns its CommitId (`head + 1`), settles the previous
/// read-your-writes token and seals a batch of records if due.
fn capture_begin(
    shared: &Shared,
    conn: RawConn,
    input: BeginInput<'_>,
) -> Result<(), CaptureError> {
    let mut s = lock(shared);
    check_main(&mut s, conn, input.generation)?;
    let broken = |problem: String| CaptureError::CaptureBroken {
        table: input.table.to_owned(),
        problem,
    };
    match input.table_sql {
        None => return Err(broken("the table no longer exists".into())),
        Some(now) if now != input.expected_sql => {
            return Err(broken(format!(
                "its definition is now `{now}`, capture was set up for `{}`",
                input.expected_sql
            )))
        }
        Some(_) => {}
    }
    let indexes = input.indexes.unwrap_or_default();
    if indexes != input.expected_indexes {
        return Err(indexes_changed(
            input.table,
            indexes,
            input.expected_indexes,
        ));
    }
    let version = data_version(s.db)?;
    if let Some(open) = s
        .open
        .as_mut()
        .filter(|o| o.data_version == version && o.generation == input.generation)
    {
        open.checked.push(input.table.to_owned());
        return Ok(());
    }
    // First captured change of this transaction.
    let sealed = CommitId(input.max_sealed.unwrap_or(0) as u64);
    let head = input.max_pos.map(commit_of).unwrap_or_default().max(sealed);
    if let Token::Unresolved {
        candidate,
        previous,
        ..
    } = s.token
    {
        // The last transaction's captured rows survived iff its CommitId
        // is in the WAL now (see `resolve_token` for the one ambiguous case).
        s.token = if head >= candidate {
            Token::Known(candidate)
        } else {
            Token::from(previous)
        };
    }
    let commit_id = head.next();
    if commit_id.0 > MAX_COMMIT_ID {
        return Err(CaptureError::CommitIdOverflow(commit_id));
    }
    if head.0 - sealed.0 >= SEAL_BATCH {
        WalTables::new(conn).seal_through(input.generation, head)?;
    }
    s.open = Some(OpenCommit {
        data_version: version,
        generation: input.generation,
        commit_id,
        next_seq: 0,
        checked: vec![input.table.to_owned()],
    });
    drop(s);
    install_hooks(shared);
    Ok(())
}

/// The position of the next change of the open transaction (after
/// [`capture_begin`] opened it).
fn capture_pos(shared: &Shared, generation: Generation) -> Result<i64, CaptureError> {
    let mut s = lock(shared);
    let version = data_version(s.db)?;
    let Some(open) = s
        .open
        .as_mut()
        .filter(|o| o.data_version == version && o.generation == generation)
    else {
        return Err(CaptureError::BadArgument {
            function: "aerodb_capture_begin",
            argument: "call".into(),
            problem: "did not open a transaction (only capture triggers call it)".into(),
        });
    };
    next_pos(open)
}

fn next_pos(open: &mut OpenCommit) -> Result<i64, CaptureError> {
    if open.next_seq > MAX_SEQ {
        return Err(CaptureError::TooManyChanges {
            commit_id: open.commit_id,
            limit: MAX_SEQ,
        });
    }
    let pos = first_pos(open.commit_id) | i64::from(open.next_seq);
    open.next_seq += 1;
    Ok(pos)
}

fn arg_value<'a>(ctx: &'a Context<'_>, i: usize) -> WalValue<'a> {
    match ctx.get_raw(i) {
        ValueRef::Null => WalValue::Null,
        ValueRef::Integer(v) => WalValue::Integer(v),
        ValueRef::Real(v) => WalValue::Real(v),
        ValueRef::Text(t) => WalValue::Text(t),
        ValueRef::Blob(b) => WalValue::Blob(b),
    }
}

/// `aerodb_capture_change(table, op, nkey, key..., values...)`: encodes one
/// change. Called by the capture triggers only.
/// Counts an encoded change against the open record's size limit, so a
/// transaction whose record could never be read is refused when written,
/// not discovered by a replica later.
fn account(shared: &Shared, table: &str, len: usize) -> Result<(), CaptureError> {
    let mut s = lock(shared);
    let version = data_version(s.db)?;
    // Keyed by data version, not by the open commit: SQLite may evaluate a
    // row's change before its position.
    let bytes = match s.record_bytes {
        Some((v, b)) if v == version => b,
        _ => RECORD_OVERHEAD,
    } + 4
        + len;
    s.record_bytes = Some((version, bytes));
    if bytes > MAX_RECORD_BYTES {
        let commit_id = s
            .open
            .as_ref()
            .filter(|o| o.data_version == version)
            .map(|o| o.commit_id);
        return Err(CaptureError::Encode {
            table: table.to_owned(),
            source: EncodeError::TooLarge {
                what: "transaction's WAL record",
                actual: bytes as u64,
                limit: MAX_RECORD_BYTES as u64,
                commit_id,
            },
        });
    }
    Ok(())
}

fn capture_change(shared: &Shared, ctx: &Context<'_>) -> Result<Vec<u8>, CaptureError> {
    const F: &str = "aerodb_capture_change";
    let bad = |argument: &str, problem: String| CaptureError::BadArgument {
        function: F,
        argument: argument.into(),
        problem,
    };
    if ctx.len() < 3 {
        return Err(bad(
            "count",
            format!("is {}, expected at least 3", ctx.len()),
        ));
    }
    let table = match ctx.get_raw(0) {
        ValueRef::Text(t) => {
            std::str::from_utf8(t).map_err(|e| bad("1 (table)", format!("is not UTF-8: {e}")))?
        }
        other => {
            return Err(bad(
                "1 (table)",
                format!("is {:?}, expected TEXT", other.data_type()),
            ))
        }
    };
    let op = match ctx.get_raw(1) {
        ValueRef::Integer(1) => Operation::Insert,
        ValueRef::Integer(2) => Operation::Update,
        ValueRef::Integer(3) => Operation::Delete,
        other => {
            return Err(bad(
                "2 (operation)",
                format!("is {other:?}, expected 1, 2 or 3"),
            ))
        }
    };
    let rest = ctx.len() - 3;
    let nkey = match ctx.get_raw(2) {
        ValueRef::Integer(n) if n >= 0 && (n as usize) <= rest => n as usize,
        other => {
            return Err(bad(
                "3 (key count)",
                format!("is {other:?}, expected 0..={rest}"),
            ))
        }
    };
    let encode = |out: &mut Vec<u8>| -> Result<(), EncodeError> {
        encode_change_header(out, op, table)?;
        match op {
            Operation::Insert => {
                encode_count(out, rest)?;
                (3..ctx.len()).try_for_each(|i| encode_value(out, arg_value(ctx, i)))
            }
            Operation::Update => {
                encode_count(out, nkey)?;
                (3..3 + nkey).try_for_each(|i| encode_value(out, arg_value(ctx, i)))?;
                encode_count(out, rest - nkey)?;
                (3 + nkey..ctx.len()).try_for_each(|i| encode_value(out, arg_value(ctx, i)))
            }
            _ => {
                encode_count(out, rest)?;
                (3..ctx.len()).try_for_each(|i| encode_value(out, arg_value(ctx, i)))
            }
        }
    };
    let mut out = Vec::with_capacity(64);
    encode(&mut out).map_err(|source| CaptureError::Encode {
        table: table.to_owned(),
        source,
    })?;
    account(shared, table, out.len())?;
    Ok(out)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness; mixing in the time and
    // pid keeps two primaries created in one process apart too.
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

/// `aerodb_primary_init()`: creates the capture tables and the generation
/// (idempotent); returns the generation.
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

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A column of a table to replicate.
#[derive(Debug)]
struct Column {
    name: String,
    not_null: bool,
    /// Position in the primary key, 0 if not part of it.
    pk: i64,
}

/// Reads the stored (non-generated) columns of `table`.
fn columns(conn: RawConn, table: &str) -> Result<Vec<Column>, CaptureError> {
    let doing = || format!("reading the columns of '{table}'");
    let mut s = conn
        .prepare(
            "SELECT name, \"notnull\", pk, hidden FROM pragma_table_xinfo(?1, 'main') ORDER BY cid",
        )
        .map_err(sqlite(doing()))?;
    s.bind(1, ValueRef::Text(table.as_bytes()))
        .map_err(sqlite(doing()))?;
    let mut out = Vec::new();
    while s.step().map_err(sqlite(doing()))? {
        // hidden: 0 stored column, 2/3 generated (computed on the replica
        // from its own definition), 1 virtual-table hidden column.
        if s.column(3).as_i64() != Some(0) {
            continue;
        }
        out.push(Column {
            name: s.column(0).into_string().unwrap_or_default(),
            not_null: s.column(1).as_i64() == Some(1),
            pk: s.column(2).as_i64().unwrap_or(0),
        });
    }
    Ok(out)
}

/// Separator of column names in `aerodb_tables.columns`.
const SHAPE_SEPARATOR: char = '\u{1f}';

/// The captured shape of a table: its stored column names, in order.
fn shape_of(cols: &[Column]) -> String {
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    names.join(&SHAPE_SEPARATOR.to_string())
}

/// The `CREATE INDEX` statements of table `?1` in `main`, by index name;
/// primary and replica list them the same way. (Indexes SQLite makes for
/// constraints in `CREATE TABLE` have no statement and travel with it.)
pub(crate) const INDEXES_SQL: &str =
    "SELECT sql FROM main.sqlite_schema WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL ORDER BY name";

/// The same, inside a capture trigger (unqualified: the trigger's own
/// database), joined by [`INDEX_SEPARATOR`]; `{table}` is a quoted literal.
const TRIGGER_INDEXES_SQL: &str =
    "(SELECT group_concat(sql, char(30)) FROM (SELECT sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = {table} AND sql IS NOT NULL ORDER BY name))";

/// Separator of statements in `aerodb_tables.indexes`.
const INDEX_SEPARATOR: char = '\u{1e}';

/// The `CREATE INDEX` statements of `table`, by index name (unique ones
/// decide which rows `REPLACE` deletes, so a replica needs the same).
fn indexes_of(conn: RawConn, table: &str) -> Result<Vec<String>, CaptureError> {
    let doing = || format!("reading the indexes of '{table}'");
    let mut s = conn.prepare(INDEXES_SQL).map_err(sqlite(doing()))?;
    s.bind(1, ValueRef::Text(table.as_bytes()))
        .map_err(sqlite(doing()))?;
    let mut out = Vec::new();
    while s.step().map_err(sqlite(doing()))? {
        out.push(s.column(0).into_string().unwrap_or_default());
    }
    Ok(out)
}

/// A table's indexes differ from those its capture was set up for.
fn indexes_changed(table: &str, now: &str, expected: &str) -> CaptureError {
    let show = |s: &str| {
        if s.is_empty() {
            "none".to_string()
        } else {
            s.replace(INDEX_SEPARATOR, "; ")
        }
    };
    CaptureError::CaptureBroken {
        table: table.to_owned(),
        problem: format!(
            "its indexes are now ({}), capture was set up for ({})",
            show(now),
            show(expected)
        ),
    }
}

/// Checks that every replicated table still has the shape and the three
/// triggers `aerodb_replicate` made for it. Run when the schema changed
/// (writers) and on every WAL read (readers).
pub(crate) fn verify_capture(conn: RawConn) -> Result<(), CaptureError> {
    let mut s = conn
        .prepare("SELECT name, columns, indexes FROM main.aerodb_tables ORDER BY name")
        .map_err(sqlite("reading aerodb_tables"))?;
    let mut registered = Vec::new();
    while s.step().map_err(sqlite("reading aerodb_tables"))? {
        registered.push((
            s.column(0).into_string().unwrap_or_default(),
            s.column(1).into_string().unwrap_or_default(),
            s.column(2).into_string().unwrap_or_default(),
        ));
    }
    drop(s);
    for (table, shape, indexes) in registered {
        let broken = |problem: String| CaptureError::CaptureBroken {
            table: table.clone(),
            problem,
        };
        let current = shape_of(&columns(conn, &table)?);
        if current.is_empty() {
            return Err(broken("the table no longer exists".into()));
        }
        if current != shape {
            let show = |s: &str| s.replace(SHAPE_SEPARATOR, ", ");
            return Err(broken(format!(
                "its columns are now ({}), capture was set up for ({})",
                show(&current),
                show(&shape)
            )));
        }
        let current = indexes_of(conn, &table)?.join(&INDEX_SEPARATOR.to_string());
        if current != indexes {
            return Err(indexes_changed(&table, &current, &indexes));
        }
        let triggers = conn
            .query_value(
                "SELECT count(*) FROM main.sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1 AND name IN (?2, ?3, ?4)",
                &[
                    ValueRef::Text(table.as_bytes()),
                    ValueRef::Text(trigger_name("insert", &table).as_bytes()),
                    ValueRef::Text(trigger_name("update", &table).as_bytes()),
                    ValueRef::Text(trigger_name("delete", &table).as_bytes()),
                ],
            )
            .map_err(sqlite("reading capture triggers"))?
            .and_then(|v| v.as_i64());
        if triggers != Some(3) {
            return Err(broken(format!(
                "{} of its 3 capture triggers exist (the table was recreated or a trigger dropped)",
                triggers.unwrap_or(0)
            )));
        }
    }
    Ok(())
}

fn trigger_name(event: &str, table: &str) -> String {
    format!("aerodb_capture_{event}_{table}")
}

/// `aerodb_replicate(table)`: starts capturing `table`; returns the CommitId
/// of its schema record.
fn replicate(shared: &Shared, conn: RawConn, table: &str) -> Result<CommitId, CaptureError> {
    let wal = WalTables::new(conn);
    let generation = wal.generation().map_err(|e| match e {
        WalReadError::NotPrimary => CaptureError::NotPrimary,
        other => other.into(),
    })?;
    let refused = |reason: String| CaptureError::Refused {
        table: table.to_owned(),
        reason,
    };
    let lower = table.to_ascii_lowercase();
    if lower.starts_with("aerodb_") || lower.starts_with("sqlite_") {
        return Err(refused(
            "names starting with aerodb_ or sqlite_ are reserved".into(),
        ));
    }
    let mut q = conn
        .prepare("SELECT type, wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1")
        .map_err(sqlite("looking up the table"))?;
    q.bind(1, ValueRef::Text(table.as_bytes()))
        .map_err(sqlite("looking up the table"))?;
    let found = q.step().map_err(sqlite("looking up the table"))?;
    let (kind, wr) = (q.column(0).into_string(), q.column(1).as_i64());
    drop(q);
    let without_rowid = match kind.as_deref() {
        _ if !found => {
            return Err(CaptureError::NoSuchTable {
                table: table.into(),
            })
        }
        Some("table") => wr == Some(1),
        other => {
            return Err(refused(format!(
                "it is a {}, only ordinary tables can be replicated",
                other.unwrap_or("schema object of unknown type")
            )))
        }
    };
    let cols = columns(conn, table)?;
    let mut key: Vec<&Column> = cols.iter().filter(|c| c.pk > 0).collect();
    key.sort_by_key(|c| c.pk);
    if key.is_empty() {
        return Err(refused(
            "it has no PRIMARY KEY; AeroDB replicates rows by primary key because rowids are not stable across VACUUM. Declare an explicit PRIMARY KEY".into(),
        ));
    }
    // A rowid table's key is the rowid (never NULL) exactly when SQLite made
    // no index for it: `INTEGER PRIMARY KEY` but not `INTEGER PRIMARY KEY
    // DESC`, whose column can hold NULL.
    let pk_index = conn
        .query_value(
            "SELECT count(*) FROM pragma_index_list(?1, 'main') WHERE origin = 'pk'",
            &[ValueRef::Text(table.as_bytes())],
        )
        .map_err(sqlite("reading the table's indexes"))?
        .and_then(|v| v.as_i64());
    let rowid_alias = !without_rowid && key.len() == 1 && pk_index == Some(0);
    if !without_rowid && !rowid_alias {
        if let Some(c) = key.iter().find(|c| !c.not_null) {
            return Err(refused(format!(
                "primary key column '{}' may be NULL (SQLite allows NULL keys in rowid tables), so rows cannot be identified; declare it NOT NULL",
                c.name
            )));
        }
    }
    let sql = conn
        .query_value(
            "SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
            &[ValueRef::Text(table.as_bytes())],
        )
        .map_err(sqlite("reading the table's schema"))?
        .and_then(OwnedValue::into_string)
        .ok_or_else(|| refused("its CREATE TABLE statement is not in sqlite_schema".into()))?;
    let indexes = indexes_of(conn, table)?;
    let joined_indexes = indexes.join(&INDEX_SEPARATOR.to_string());

    let t = quote_ident(table);
    let lit = quote_literal(table);
    let g = generation.0 as i64;
    // The begin call and its subqueries run once per transaction and table
    // (the trigger program is compiled with the application's statement,
    // so nothing is prepared per transaction); the rest once per row.
    let pos = format!(
        "coalesce(aerodb_capture_pos({g}, {lit}), aerodb_capture_begin({g}, {lit}, \
         (SELECT max(pos) FROM aerodb_changes), (SELECT max(commit_id) FROM aerodb_commits), \
         (SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = {lit}), {}, {}, {}))",
        TRIGGER_INDEXES_SQL.replace("{table}", &lit),
        quote_literal(&sql),
        quote_literal(&joined_indexes),
    );
    let new_vals: Vec<String> = cols
        .iter()
        .map(|c| format!("NEW.{}", quote_ident(&c.name)))
        .collect();
    let old_key: Vec<String> = key
        .iter()
        .map(|c| format!("OLD.{}", quote_ident(&c.name)))
        .collect();
    let trigger = |event: &str, op: u8, nkey: usize, args: Vec<String>| {
        let name = quote_ident(&trigger_name(&event.to_ascii_lowercase(), table));
        format!(
            "DROP TRIGGER IF EXISTS main.{name};\n\
             CREATE TRIGGER main.{name} AFTER {event} ON {t} BEGIN \
             INSERT INTO aerodb_changes(pos, change) VALUES ({pos}, aerodb_capture_change({lit}, {op}, {nkey}, {})); END;\n",
            args.join(", ")
        )
    };
    let mut ddl = String::new();
    ddl += &trigger("INSERT", 1, 0, new_vals.clone());
    ddl += &trigger(
        "UPDATE",
        2,
        key.len(),
        old_key.iter().cloned().chain(new_vals).collect(),
    );
    ddl += &trigger("DELETE", 3, key.len(), old_key);

    // All or nothing, even when called from a statement in autocommit mode.
    conn.execute_batch("SAVEPOINT aerodb_replicate")
        .map_err(sqlite("opening a savepoint"))?;
    let result = (|| -> Result<CommitId, CaptureError> {
        conn.execute_batch(&ddl)
            .map_err(sqlite(format!("installing capture triggers on '{table}'")))?;
        let change = encode_change(&Change::Schema {
            table: table.to_owned(),
            sql: sql.clone(),
            indexes: indexes.clone(),
        })
        .map_err(|source| CaptureError::Encode {
            table: table.to_owned(),
            source,
        })?;
        // Register the new shape first: the position assignment below
        // verifies every replicated table against the registry.
        let key_names: Vec<&str> = key.iter().map(|c| c.name.as_str()).collect();
        conn.execute(
            "INSERT OR REPLACE INTO main.aerodb_tables(name, schema_commit_id, columns, indexes, key_columns) VALUES (?1, 0, ?2, ?3, ?4)",
            &[
                ValueRef::Text(table.as_bytes()),
                ValueRef::Text(shape_of(&cols).as_bytes()),
                ValueRef::Text(joined_indexes.as_bytes()),
                ValueRef::Text(key_names.join(",").as_bytes()),
            ],
        )
        .map_err(sqlite("registering the table"))?;
        // The same steps as a capture trigger, with the values read here.
        let max = |sql: &str| -> Result<Option<i64>, CaptureError> {
            Ok(conn
                .query_value(sql, &[])
                .map_err(sqlite("reading the WAL head"))?
                .and_then(|v| v.as_i64()))
        };
        capture_begin(
            shared,
            conn,
            BeginInput {
                generation,
                table,
                max_pos: max("SELECT max(pos) FROM main.aerodb_changes")?,
                max_sealed: max("SELECT max(commit_id) FROM main.aerodb_commits")?,
                table_sql: Some(&sql),
                expected_sql: &sql,
                indexes: Some(&joined_indexes),
                expected_indexes: &joined_indexes,
            },
        )?;
        let pos = capture_pos(shared, generation)?;
        account(shared, table, change.len())?;
        conn.execute(
            "INSERT INTO main.aerodb_changes(pos, change) VALUES (?1, ?2)",
            &[ValueRef::Integer(pos), ValueRef::Blob(&change)],
        )
        .map_err(sqlite("writing the schema record"))?;
        // The table's rows at this commit follow the schema change in the
        // same record: a replica starts it from exactly the primary's
        // content (also after DROP/CREATE and replicate again).
        let names: Vec<String> = cols.iter().map(|c| quote_ident(&c.name)).collect();
        let mut rows = conn
            .prepare(&format!("SELECT {} FROM main.{t}", names.join(", ")))
            .map_err(sqlite(format!("reading the rows of '{table}'")))?;
        let mut insert = conn
            .prepare("INSERT INTO main.aerodb_changes(pos, change) VALUES (?1, ?2)")
            .map_err(sqlite("writing the table's rows"))?;
        while rows
            .step()
            .map_err(sqlite(format!("reading the rows of '{table}'")))?
        {
            let values: Vec<Value> = (0..cols.len()).map(|i| rows.column(i).into()).collect();
            let change = encode_change(&Change::Insert {
                table: table.to_owned(),
                values,
            })
            .map_err(|source| CaptureError::Encode {
                table: table.to_owned(),
                source,
            })?;
            let pos = capture_pos(shared, generation)?;
            account(shared, table, change.len())?;
            insert
                .bind(1, ValueRef::Integer(pos))
                .map_err(sqlite("writing the table's rows"))?;
            insert
                .bind(2, ValueRef::Blob(&change))
                .map_err(sqlite("writing the table's rows"))?;
            while insert.step().map_err(sqlite("writing the table's rows"))? {}
            insert.reset();
        }
        drop((rows, insert));
        let commit_id = commit_of(pos);
        conn.execute(
            "UPDATE main.aerodb_tables SET schema_commit_id = ?2 WHERE name = ?1",
            &[
                ValueRef::Text(table.as_bytes()),
                ValueRef::Integer(commit_id.0 as i64),
            ],
        )
        .map_err(sqlite("registering the table"))?;
        Ok(commit_id)
    })();
    match result {
        Ok(c) => {
            conn.execute_batch("RELEASE aerodb_replicate")
                .map_err(sqlite("releasing the savepoint"))?;
            tracing::info!(table, commit_id = c.0, "replicating table");
            Ok(c)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO aerodb_replicate; RELEASE aerodb_replicate");
            Err(e)
        }
    }
}

/// `aerodb_truncate_wal(below)`: drops the primary's WAL below `below`;
/// returns the oldest CommitId the WAL still has. Replicas that need older
/// WAL bootstrap from a snapshot.
fn truncate_wal(conn: RawConn, below: CommitId) -> Result<CommitId, CaptureError> {
    let wal = WalTables::new(conn);
    let generation = wal.generation().map_err(|e| match e {
        WalReadError::NotPrimary => CaptureError::NotPrimary,
        other => other.into(),
    })?;
    Ok(wal.truncate_below(generation, below)?)
}

fn head(conn: RawConn) -> Result<CommitId, CaptureError> {
    let wal = WalTables::new(conn);
    wal.generation().map_err(|e| match e {
        WalReadError::NotPrimary => CaptureError::NotPrimary,
        other => other.into(),
    })?;
    Ok(wal.head()?.0)
}

/// Settles an unresolved token: the candidate CommitId counts only if
/// change rows of it exist. If they exist but another connection committed
/// that CommitId after this one's captured rows were all rolled back, the
/// token names that later commit: a reader then waits for a commit that
/// exists, never for one that may never come, and never reads older data.
fn resolve_token(s: &mut ConnState, conn: RawConn) -> Result<(), CaptureError> {
    if let Token::Unresolved {
        candidate,
        previous,
        ..
    } = s.token
    {
        let exists = conn
            .query_value(
                "SELECT EXISTS (SELECT 1 FROM main.aerodb_changes WHERE pos >= ?1 AND pos < ?2) \
                 OR EXISTS (SELECT 1 FROM main.aerodb_commits WHERE commit_id = ?3)",
                &[
                    ValueRef::Integer(first_pos(candidate)),
                    ValueRef::Integer(first_pos(candidate.next())),
                    ValueRef::Integer(candidate.0 as i64),
                ],
            )
            .map_err(sqlite("checking this connection's last commit"))?
            .and_then(|v| v.as_i64());
        s.token = if exists == Some(1) {
            Token::Known(candidate)
        } else {
            Token::from(previous)
        };
    }
    Ok(())
}

fn last_commit_id(shared: &Shared, conn: RawConn) -> Result<Option<CommitId>, CaptureError> {
    let mut s = lock(shared);
    if s.hook == HookStatus::Replaced {
        return Err(CaptureError::CommitHookReplaced);
    }
    resolve_token(&mut s, conn)?;
    Ok(s.token.settled())
}

fn user_err(e: CaptureError) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(Box::new(e))
}

/// Argument 1 of the capture trigger functions: the primary's generation.
fn generation_arg(
    ctx: &Context<'_>,
    function: &'static str,
) -> Result<Generation, rusqlite::Error> {
    match ctx.get_raw(0) {
        ValueRef::Integer(g) => Ok(Generation(g as u64)),
        other => Err(user_err(CaptureError::BadArgument {
            function,
            argument: "1 (generation)".into(),
            problem: format!(
                "is {}, expected the primary's generation (INTEGER)",
                other.data_type()
            ),
        })),
    }
}

/// A TEXT argument.
fn text_arg<'a>(
    ctx: &'a Context<'_>,
    i: usize,
    function: &'static str,
    argument: &str,
) -> Result<&'a str, rusqlite::Error> {
    match ctx.get_raw(i) {
        ValueRef::Text(t) => std::str::from_utf8(t).map_err(|e| {
            user_err(CaptureError::BadArgument {
                function,
                argument: argument.into(),
                problem: format!("is not valid UTF-8: {e}"),
            })
        }),
        other => Err(user_err(CaptureError::BadArgument {
            function,
            argument: argument.into(),
            problem: format!("is {}, expected TEXT", other.data_type()),
        })),
    }
}

/// The connection these functions were registered on. SQLite calls a
/// function only on the connection it was registered on, so this is the
/// connection running the call.
fn raw(shared: &Shared) -> RawConn {
    // SAFETY: the connection is open while its functions can be called.
    unsafe { RawConn::new(lock(shared).db) }
}

/// Registers the primary's SQL functions and hooks on `conn`. Every
/// connection that writes a replicated table needs them (the extension does
/// this on load); without them such writes fail.
pub fn register(conn: &Connection) -> Result<CaptureHandle, rusqlite::Error> {
    check_sqlite_version().map_err(user_err)?;
    // SAFETY: the handle of a live connection, used only by calls on it.
    let db = unsafe { conn.handle() };
    let shared: Shared = Arc::new(Mutex::new(ConnState {
        db,
        open: None,
        token: Token::Nothing,
        hook: HookStatus::Installed,
        record_bytes: None,
        main_generation: None,
    }));
    let utf8 = FunctionFlags::SQLITE_UTF8;
    let trigger_safe = utf8 | FunctionFlags::SQLITE_INNOCUOUS;
    let direct = utf8 | FunctionFlags::SQLITE_DIRECTONLY;

    let s = shared.clone();
    conn.create_scalar_function("aerodb_capture_pos", 2, trigger_safe, move |ctx| {
        let generation = generation_arg(ctx, "aerodb_capture_pos")?;
        let table = text_arg(ctx, 1, "aerodb_capture_pos", "2 (table)")?;
        capture_pos_fast(&s, generation, table).map_err(user_err)
    })?;
    let s = shared.clone();
    conn.create_scalar_function("aerodb_capture_begin", 8, trigger_safe, move |ctx| {
        const F: &str = "aerodb_capture_begin";
        let opt_int = |i: usize| match ctx.get_raw(i) {
            ValueRef::Integer(v) => Some(v),
            _ => None,
        };
        let opt_text = |i: usize| match ctx.get_raw(i) {
            ValueRef::Text(t) => std::str::from_utf8(t).ok(),
            _ => None,
        };
        let input = BeginInput {
            generation: generation_arg(ctx, F)?,
            table: text_arg(ctx, 1, F, "2 (table)")?,
            max_pos: opt_int(2),
            max_sealed: opt_int(3),
            table_sql: opt_text(4),
            indexes: opt_text(5),
            expected_sql: text_arg(ctx, 6, F, "7 (expected definition)")?,
            expected_indexes: text_arg(ctx, 7, F, "8 (expected indexes)")?,
        };
        let generation = input.generation;
        capture_begin(&s, raw(&s), input)
            .and_then(|()| capture_pos(&s, generation))
            .map_err(user_err)
    })?;
    let s = shared.clone();
    conn.create_scalar_function(
        "aerodb_capture_change",
        -1,
        trigger_safe | FunctionFlags::SQLITE_DETERMINISTIC,
        move |ctx| capture_change(&s, ctx).map_err(user_err),
    )?;
    let s = shared.clone();
    conn.create_scalar_function("aerodb_primary_init", 0, direct, move |_ctx| {
        primary_init(raw(&s))
            .map(|g| g.to_string())
            .map_err(user_err)
    })?;
    let s = shared.clone();
    conn.create_scalar_function("aerodb_replicate", 1, direct, move |ctx| {
        let table = match ctx.get_raw(0) {
            ValueRef::Text(t) => std::str::from_utf8(t).map_err(|e| {
                user_err(CaptureError::BadArgument {
                    function: "aerodb_replicate",
                    argument: "1 (table)".into(),
                    problem: format!("is not valid UTF-8: {e}"),
                })
            })?,
            other => {
                return Err(user_err(CaptureError::BadArgument {
                    function: "aerodb_replicate",
                    argument: "1 (table)".into(),
                    problem: format!("is {}, expected a table name (TEXT)", other.data_type()),
                }))
            }
        };
        replicate(&s, raw(&s), table)
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
    conn.create_scalar_function("aerodb_last_commit_id", 0, utf8, move |_ctx| {
        last_commit_id(&s, raw(&s))
            .map(|c| c.map(|c| c.0 as i64))
            .map_err(user_err)
    })?;
    // Hooks last, once every function holds the new state: the hooks
    // borrow the state the functions own. Had a registration above failed
    // (e.g. SQLITE_BUSY while statements run), the hooks still point at
    // the previous state, which the previous functions keep alive.
    install_hooks(&shared);
    lock(&shared).hook = HookStatus::Installed;
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
        replicate(&self.shared, raw(&self.shared), table)
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
        last_commit_id(&self.shared, raw(&self.shared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_sqlite_older_than_the_minimum_with_a_clear_error() {
        let err = version_check(3_036_000, "3.36.0".into()).expect_err("too old");
        assert_eq!(
            err.to_string(),
            "SQLite 3.36.0 is too old: AeroDB needs SQLite 3.37.0 or newer"
        );
        version_check(3_037_000, "3.37.0".into()).expect("minimum accepted");
        version_check(3_040_001, "3.40.1".into()).expect("Debian 12 accepted");
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal("o'k"), "'o''k'");
    }
}
