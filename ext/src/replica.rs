//! The replica side of the SQL surface (DESIGN 6): `aerodb_replica_start`,
//! `aerodb_replica_stop`, `aerodb_wait`, and the views `replica_components`,
//! `replica_segments`, `replica_transitions`, `read_safety(min_commit_id)`.
//!
//! Thin: the runtime is `storage_adapter::runtime::Replica`; the views read
//! the state store tables with the caller's own connection, so they see
//! the state of the snapshot the calling statement reads (and work in any
//! process that opens the replica file). Where the runtime runs on this
//! connection, `replica_components` adds its live state.
//!
//! The runtime started on a connection belongs to it: its handle lives in
//! the state the connection's functions own, so closing the connection
//! (`.quit` in the shell) drops it, which stops the threads cleanly.

use replication::read_gate::Decision;
use replication::runtime::{Component, WaitError};
use replication::wal::CommitId;
use rusqlite::functions::{Context as FnContext, FunctionFlags};
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::{
    eponymous_only_module, Context, Filters, IndexConstraintOp, IndexInfo, VTab, VTabConnection,
    VTabCursor,
};
use rusqlite::{ffi, Connection, Error, Result};
use std::ffi::c_int;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use storage_adapter::options::{ReplicaOptions, Spelling};
use storage_adapter::runtime::{read_gate_with, segments_in, transitions_in, Replica, SchemaMemo};

use crate::guard;

/// The runtime started by this connection, if any.
#[derive(Default)]
pub struct Registry {
    running: Mutex<Option<Running>>,
    /// The read gate's memory of this connection's last schema check.
    schema: SchemaMemo,
}

struct Running {
    replica: Replica,
    source: String,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The lock wait `aerodb_replica_start` gives a connection that has none.
const READER_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn user_error(msg: impl Into<String>) -> Error {
    Error::UserFunctionError(msg.into().into())
}

/// Longest `aerodb_wait` timeout (one day), so a typo cannot hang a shell
/// for years.
const MAX_WAIT_MS: i64 = 86_400_000;

fn text_arg<'a>(ctx: &'a FnContext<'_>, i: usize, what: &str) -> Result<&'a str> {
    match ctx.get_raw(i) {
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map_err(|_| user_error(format!("argument {} ({what}) is not valid UTF-8", i + 1))),
        other => Err(user_error(format!(
            "argument {} ({what}) must be text, got {}",
            i + 1,
            other.data_type()
        ))),
    }
}

fn int_arg(ctx: &FnContext<'_>, f: &str, i: usize, what: &str) -> Result<i64> {
    match ctx.get_raw(i) {
        ValueRef::Integer(n) => Ok(n),
        other => Err(user_error(format!(
            "{f}: argument {} ({what}) must be an integer, got {}",
            i + 1,
            other.data_type()
        ))),
    }
}

/// The replica functions start threads, join them or block: never inside
/// the caller's own transaction (the runtime's writes would wait for it).
fn outside_transaction(ctx: &FnContext<'_>, f: &str) -> Result<()> {
    // SAFETY: called on the connection running this function.
    let conn = unsafe { ctx.get_connection()? };
    if conn.is_autocommit() {
        Ok(())
    } else {
        Err(user_error(format!(
            "{f}: cannot run inside a transaction (the replica's writes would wait for it); COMMIT or ROLLBACK first"
        )))
    }
}

fn start(ctx: &FnContext<'_>, registry: &Registry) -> Result<i64> {
    if !(1..=2).contains(&ctx.len()) {
        return Err(user_error(format!(
            "aerodb_replica_start(source [, options_json]) takes 1 or 2 arguments, got {}",
            ctx.len()
        )));
    }
    let source = text_arg(ctx, 0, "source")
        .map_err(|e| user_error(format!("aerodb_replica_start: {e}")))?
        .to_owned();
    let options = match ctx.len() {
        2 if ctx.get_raw(1) != ValueRef::Null => Some(
            text_arg(ctx, 1, "options")
                .map_err(|e| user_error(format!("aerodb_replica_start: {e}")))?
                .to_owned(),
        ),
        _ => None,
    };
    let options = match options.as_deref() {
        Some(json) => ReplicaOptions::from_json(json),
        None => Ok(ReplicaOptions::new(Spelling::Json)),
    }
    .and_then(|o| o.check_source(&source).map(|()| o))
    .map_err(|e| user_error(format!("aerodb_replica_start: {e}")))?;
    outside_transaction(ctx, "aerodb_replica_start")?;
    // SAFETY: called on the connection running this function.
    let conn = unsafe { ctx.get_connection()? };
    let path = conn
        .path()
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            user_error("aerodb_replica_start: this connection's main database is in memory or temporary; a replica needs a database file")
        })?;
    let mode: String = conn.query_row("PRAGMA main.journal_mode", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(user_error(format!(
            "aerodb_replica_start: the replica database is in journal_mode={mode}; run PRAGMA journal_mode=WAL; first (the Applier writes while readers read)"
        )));
    }
    // This connection reads what the runtime's connections write: with no
    // lock wait of its own, a read that meets a writer resetting the WAL
    // fails with `database is locked`. Wait for the lock instead, as the
    // runtime's connections do (an application's own setting is kept).
    let wait: i64 = conn.query_row("PRAGMA busy_timeout", [], |r| r.get(0))?;
    if wait == 0 {
        conn.busy_timeout(READER_LOCK_WAIT)?;
    }
    drop(conn);
    let mut running = registry.lock();
    if let Some(r) = running.as_ref() {
        return Err(user_error(format!(
            "aerodb_replica_start: a replica of '{}' is already running on this connection; call aerodb_replica_stop() first",
            r.source
        )));
    }
    if std::fs::canonicalize(&source).ok() == std::fs::canonicalize(&path).ok() {
        return Err(user_error(format!(
            "aerodb_replica_start: source '{source}' is this replica's own database file"
        )));
    }
    let opened = options
        .open_source(&source)
        .map_err(|e| user_error(format!("aerodb_replica_start: {e}")))?;
    let replica = Replica::start(&path, opened.source, opened.generation, options.config)
        .map_err(|e| user_error(format!("aerodb_replica_start: {e}")))?;
    // The CommitId this run starts from: what the replica file records.
    let applied = replica.started_at().commit_id;
    *running = Some(Running { replica, source });
    Ok(applied.0 as i64)
}

fn stop(ctx: &FnContext<'_>, registry: &Registry) -> Result<i64> {
    if !ctx.is_empty() {
        return Err(user_error(format!(
            "aerodb_replica_stop() takes no arguments, got {}",
            ctx.len()
        )));
    }
    outside_transaction(ctx, "aerodb_replica_stop")?;
    let running = registry.lock().take().ok_or_else(|| {
        user_error("aerodb_replica_stop: no replica is running on this connection")
    })?;
    let last = running.replica.stop();
    if let Some(e) = &last
        .component(replication::runtime::Component::Supervisor)
        .last_error
    {
        return Err(user_error(format!(
            "aerodb_replica_stop: the replica stopped at commit {}, but its supervisor failed: {e}",
            last.applied.commit_id
        )));
    }
    Ok(last.applied.commit_id.0 as i64)
}

/// `aerodb_replica_resume()`: an operator lifts a block of this replica's
/// own storage or source (a full disk freed), recorded; returns the
/// applied CommitId recovery starts from.
fn resume(ctx: &FnContext<'_>, registry: &Registry) -> Result<i64> {
    const F: &str = "aerodb_replica_resume";
    if !ctx.is_empty() {
        return Err(user_error(format!(
            "{F}() takes no arguments, got {}",
            ctx.len()
        )));
    }
    outside_transaction(ctx, F)?;
    let running = registry.lock();
    let r = running.as_ref().ok_or_else(|| {
        user_error(format!(
            "{F}: no replica runs on this connection (start one with aerodb_replica_start)"
        ))
    })?;
    r.replica
        .resume("aerodb_replica_resume()")
        .map_err(|e| user_error(format!("{F}: {e}")))?;
    Ok(r.replica.view().applied.commit_id.0 as i64)
}

fn wait(ctx: &FnContext<'_>, registry: &Registry) -> Result<i64> {
    const F: &str = "aerodb_wait";
    if ctx.len() != 2 {
        return Err(user_error(format!(
            "aerodb_wait(min_commit_id, timeout_ms) takes 2 arguments, got {}",
            ctx.len()
        )));
    }
    let min = int_arg(ctx, F, 0, "min_commit_id")?;
    let timeout = int_arg(ctx, F, 1, "timeout_ms")?;
    if min < 0 {
        return Err(user_error(format!(
            "{F}: argument 1 (min_commit_id) must be >= 0, got {min}"
        )));
    }
    if !(0..=MAX_WAIT_MS).contains(&timeout) {
        return Err(user_error(format!(
            "{F}: argument 2 (timeout_ms) must be from 0 to {MAX_WAIT_MS}, got {timeout}"
        )));
    }
    outside_transaction(ctx, F)?;
    let running = registry.lock();
    let r = running.as_ref().ok_or_else(|| {
        user_error(format!(
            "{F}: no replica runs on this connection (start one with aerodb_replica_start)"
        ))
    })?;
    let deadline = Instant::now() + Duration::from_millis(timeout as u64);
    match r.replica.wait_for(CommitId(min as u64), deadline) {
        Ok(p) => Ok(p.commit_id.0 as i64),
        Err(WaitError::Timeout { wanted, view }) => Err(user_error(format!(
            "{F}: timed out after {timeout} ms waiting for commit {wanted}: {}",
            view.explain_read(Some(wanted)).explanation
        ))),
        Err(WaitError::Unreachable { wanted, view }) => Err(user_error(format!(
            "{F}: commit {wanted} cannot be reached: {}",
            r.replica
                .explain_read(Some(wanted))
                .unwrap_or_else(|_| view.explain_read(Some(wanted)))
        ))),
        // The gate is the one authority: applied, but reads are refused.
        Err(WaitError::Refused { wanted, decision }) => Err(user_error(format!(
            "{F}: commit {wanted} is applied, but read_safety({wanted}) refuses it: {decision}"
        ))),
    }
}

/// Registers the replica functions and views on `conn`.
pub fn register(conn: &Connection) -> Result<()> {
    let registry = Arc::new(Registry::default());
    // Not callable from triggers or views (they start threads / block).
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY;
    let r = Arc::clone(&registry);
    conn.create_scalar_function("aerodb_replica_start", -1, flags, move |ctx| start(ctx, &r))?;
    let r = Arc::clone(&registry);
    conn.create_scalar_function("aerodb_replica_stop", -1, flags, move |ctx| stop(ctx, &r))?;
    let r = Arc::clone(&registry);
    conn.create_scalar_function("aerodb_wait", -1, flags, move |ctx| wait(ctx, &r))?;
    let r = Arc::clone(&registry);
    conn.create_scalar_function("aerodb_replica_resume", -1, flags, move |ctx| {
        resume(ctx, &r)
    })?;
    // Replica write protection: the guard triggers on replicated tables
    // call it; on every connection but the Applier's it refuses (true), so
    // the trigger raises its clear message. Callable from triggers (not
    // DIRECTONLY).
    conn.create_scalar_function(
        storage_adapter::replica::GUARD_FN,
        0,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |_| Ok(true),
    )?;
    conn.create_module(
        c"replica_components",
        eponymous_only_module::<RowsTab<Components>>(),
        Some(Arc::clone(&registry)),
    )?;
    conn.create_module(
        c"replica_segments",
        eponymous_only_module::<RowsTab<Segments>>(),
        Some(Arc::clone(&registry)),
    )?;
    conn.create_module(
        c"replica_transitions",
        eponymous_only_module::<RowsTab<Transitions>>(),
        Some(Arc::clone(&registry)),
    )?;
    conn.create_module(
        c"read_safety",
        eponymous_only_module::<RowsTab<ReadSafety>>(),
        Some(registry),
    )?;
    Ok(())
}

// ------------------------------------------------------------------- views

/// A read-only view computed as rows from the caller's connection.
trait Rows {
    /// Name, for errors.
    const NAME: &'static str;
    /// The declared columns; the last `ARGS` are hidden arguments.
    const SCHEMA: &'static str;
    /// Number of hidden argument columns (table-valued function
    /// parameters), all required.
    const ARGS: usize;
    /// The rows.
    fn rows(conn: &Connection, registry: &Registry, args: &[Value]) -> Result<Vec<Vec<Value>>>;
}

fn columns_of(schema: &str) -> usize {
    schema.matches(',').count() + 1
}

#[repr(C)]
struct RowsTab<T: Rows> {
    base: ffi::sqlite3_vtab,
    /// A non-owning wrapper of the connection the table lives in: its
    /// statement cache keeps what the rows are read with prepared from one
    /// call to the next (preparing them on every `read_safety` was most of
    /// its cost). Dropped, and its statements finalized, when SQLite
    /// disconnects the table, before it closes the connection.
    conn: Connection,
    registry: Arc<Registry>,
    phantom: PhantomData<T>,
}

unsafe impl<'vtab, T: Rows + 'vtab> VTab<'vtab> for RowsTab<T> {
    type Aux = Arc<Registry>;
    type Cursor = RowsCursor<'vtab, T>;

    fn connect(
        db: &mut VTabConnection,
        aux: Option<&Arc<Registry>>,
        _args: &[&[u8]],
    ) -> Result<(String, Self)> {
        guard(T::NAME, || {
            Ok((
                T::SCHEMA.to_owned(),
                RowsTab {
                    base: ffi::sqlite3_vtab::default(),
                    // SAFETY: the handle outlives the virtual table; the
                    // wrapper does not close it.
                    conn: unsafe { Connection::from_handle(db.handle())? },
                    registry: aux.cloned().unwrap_or_default(),
                    phantom: PhantomData,
                },
            ))
        })
    }

    fn best_index(&self, info: &mut IndexInfo) -> Result<()> {
        guard(T::NAME, || {
            let first_arg = (columns_of(T::SCHEMA) - T::ARGS) as c_int;
            let mut found = vec![None; T::ARGS];
            let mut unusable = false;
            for (i, c) in info.constraints().enumerate() {
                let k = c.column() - first_arg;
                if c.column() >= first_arg
                    && c.operator() == IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ
                {
                    if c.is_usable() {
                        found[k as usize] = Some(i);
                    } else {
                        unusable = true;
                    }
                }
            }
            if found.iter().any(Option::is_none) && unusable {
                // The argument comes from a join: ask SQLite for another
                // plan, where it is known.
                return Err(Error::SqliteFailure(
                    ffi::Error::new(ffi::SQLITE_CONSTRAINT),
                    None,
                ));
            }
            if found.iter().any(Option::is_none) {
                // A table-valued function called without its argument.
                return Err(Error::ModuleError(format!(
                    "{} needs {} argument(s): {}(min_commit_id)",
                    T::NAME,
                    T::ARGS,
                    T::NAME
                )));
            }
            for (n, i) in found.into_iter().enumerate() {
                let mut usage = info.constraint_usage(i.expect("checked"));
                usage.set_argv_index(n as c_int + 1);
                usage.set_omit(true);
            }
            info.set_estimated_cost(1.0);
            Ok(())
        })
    }

    fn open(&'vtab mut self) -> Result<RowsCursor<'vtab, T>> {
        Ok(RowsCursor {
            base: ffi::sqlite3_vtab_cursor::default(),
            conn: &self.conn,
            registry: Arc::clone(&self.registry),
            rows: Vec::new(),
            at: 0,
            args: Vec::new(),
            phantom: PhantomData,
        })
    }
}

#[repr(C)]
struct RowsCursor<'vtab, T: Rows> {
    base: ffi::sqlite3_vtab_cursor,
    conn: &'vtab Connection,
    registry: Arc<Registry>,
    rows: Vec<Vec<Value>>,
    at: usize,
    args: Vec<Value>,
    phantom: PhantomData<&'vtab T>,
}

unsafe impl<T: Rows> VTabCursor for RowsCursor<'_, T> {
    fn filter(&mut self, _idx: c_int, _s: Option<&str>, args: &Filters<'_>) -> Result<()> {
        guard(T::NAME, || {
            self.args = (0..args.len())
                .map(|i| args.get::<Value>(i))
                .collect::<Result<_>>()?;
            self.rows = T::rows(self.conn, &self.registry, &self.args)?;
            self.at = 0;
            Ok(())
        })
    }

    fn next(&mut self) -> Result<()> {
        self.at += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.at >= self.rows.len()
    }

    fn column(&self, ctx: &mut Context, i: c_int) -> Result<()> {
        guard(T::NAME, || {
            let visible = columns_of(T::SCHEMA) - T::ARGS;
            let i = i as usize;
            if i >= visible {
                return ctx.set_result(self.args.get(i - visible).unwrap_or(&Value::Null));
            }
            ctx.set_result(
                self.rows
                    .get(self.at)
                    .and_then(|r| r.get(i))
                    .unwrap_or(&Value::Null),
            )
        })
    }

    fn rowid(&self) -> Result<i64> {
        Ok(self.at as i64 + 1)
    }
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

fn int(v: u64) -> Value {
    Value::Integer(v as i64)
}

fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

fn opt_text(s: Option<&str>) -> Value {
    s.map(text).unwrap_or(Value::Null)
}

struct Components;

impl Rows for Components {
    const NAME: &'static str = "replica_components";
    const SCHEMA: &'static str = "CREATE TABLE x(component TEXT, state TEXT, blocking_reason TEXT, last_transition TEXT, error_code TEXT, error TEXT, error_first_commit_id INTEGER, error_last_commit_id INTEGER, error_wal_offset INTEGER, error_expected TEXT, error_actual TEXT, live_state TEXT, live_blocking_reason TEXT)";
    const ARGS: usize = 0;

    fn rows(conn: &Connection, registry: &Registry, _: &[Value]) -> Result<Vec<Vec<Value>>> {
        let live = registry.lock().as_ref().map(|r| r.replica.view());
        let mut out: Vec<Vec<Value>> = Vec::new();
        if table_exists(conn, "aerodb_replica_components")? {
            let mut stmt = conn.prepare(
                "SELECT component, state, blocking_reason, last_transition, error_code, error, error_first_commit_id, error_last_commit_id, error_wal_offset, error_expected, error_actual FROM main.aerodb_replica_components",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                out.push(
                    (0..11)
                        .map(|i| r.get::<_, Value>(i))
                        .collect::<Result<_>>()?,
                );
            }
        }
        // Spec order; components with no recorded row yet still listed.
        let mut ordered = Vec::new();
        for c in Component::ALL {
            let mut row = out
                .iter()
                .find(|r| r[0] == text(c.as_str()))
                .cloned()
                .unwrap_or_else(|| {
                    let mut r = vec![Value::Null; 11];
                    r[0] = text(c.as_str());
                    r
                });
            match &live {
                Some(s) => {
                    let status = s.component(c);
                    row.push(text(status.state.clone()));
                    row.push(opt_text(status.blocking_reason.as_deref()));
                }
                None => row.extend([Value::Null, Value::Null]),
            }
            ordered.push(row);
        }
        Ok(ordered)
    }
}

struct Segments;

impl Rows for Segments {
    const NAME: &'static str = "replica_segments";
    const SCHEMA: &'static str = "CREATE TABLE x(first_commit_id INTEGER, last_commit_id INTEGER, first_wal_offset INTEGER, end_wal_offset INTEGER, byte_len INTEGER, state TEXT, reason TEXT)";
    const ARGS: usize = 0;

    fn rows(conn: &Connection, _: &Registry, _: &[Value]) -> Result<Vec<Vec<Value>>> {
        if !table_exists(conn, "aerodb_replica_segments")? {
            return Ok(Vec::new());
        }
        Ok(segments_in(conn)?
            .into_iter()
            .map(|s| {
                vec![
                    int(s.first_commit_id.0),
                    int(s.last_commit_id.0),
                    s.first_wal_offset.map(|o| int(o.0)).unwrap_or(Value::Null),
                    s.end_wal_offset.map(|o| int(o.0)).unwrap_or(Value::Null),
                    int(s.byte_len),
                    text(s.state),
                    opt_text(s.reason.as_deref()),
                ]
            })
            .collect())
    }
}

struct Transitions;

impl Rows for Transitions {
    const NAME: &'static str = "replica_transitions";
    const SCHEMA: &'static str = "CREATE TABLE x(seq INTEGER, at TEXT, from_state TEXT, to_state TEXT, reason TEXT, received_commit_id INTEGER, validated_commit_id INTEGER, applied_commit_id INTEGER, applied_wal_offset INTEGER)";
    const ARGS: usize = 0;

    fn rows(conn: &Connection, _: &Registry, _: &[Value]) -> Result<Vec<Vec<Value>>> {
        if !table_exists(conn, "aerodb_replica_transitions")? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for t in transitions_in(conn)? {
            let at: String = conn.query_row(
                "SELECT strftime('%Y-%m-%dT%H:%M:%fZ', ?1 / 1000.0, 'unixepoch')",
                [t.at_unix_ms],
                |r| r.get(0),
            )?;
            out.push(vec![
                Value::Integer(t.seq),
                text(at),
                text(t.from_state),
                text(t.to_state),
                text(t.reason),
                int(t.received_commit_id.0),
                int(t.validated_commit_id.0),
                int(t.applied_commit_id.0),
                int(t.applied_wal_offset.0),
            ]);
        }
        Ok(out)
    }
}

struct ReadSafety;

fn decision_row(d: &Decision) -> Vec<Value> {
    vec![
        Value::Integer(i64::from(d.allowed())),
        text(d.code.as_str()),
        text(d.explanation.clone()),
    ]
}

impl Rows for ReadSafety {
    const NAME: &'static str = "read_safety";
    const SCHEMA: &'static str =
        "CREATE TABLE x(allowed INTEGER, reason_code TEXT, reason TEXT, min_commit_id HIDDEN)";
    const ARGS: usize = 1;

    fn rows(conn: &Connection, registry: &Registry, args: &[Value]) -> Result<Vec<Vec<Value>>> {
        let min = match args.first() {
            Some(Value::Integer(n)) if *n >= 0 => Some(CommitId(*n as u64)),
            Some(Value::Null) => None,
            Some(other) => {
                return Err(Error::ModuleError(format!(
                    "read_safety(min_commit_id): min_commit_id must be a non-negative integer or NULL, got {other:?}"
                )))
            }
            None => None,
        };
        // The statement's own read transaction: the decision holds for the
        // snapshot this statement (and its transaction) reads.
        Ok(vec![decision_row(&read_gate_with(
            conn,
            min,
            &registry.schema,
        ))])
    }
}
