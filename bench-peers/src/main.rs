//! The cost of capturing writes: AeroDB against peers, measured in one run.
//!
//! Variants (each in its own database file in one temporary directory, WAL
//! mode, the same table and the same row generator):
//!
//! - `plain`: SQLite, no capture.
//! - `session`: the SQLite session extension. A `rusqlite::session::Session`
//!   attached to `items` records the transaction; before COMMIT its changeset
//!   is written into `changesets(id INTEGER PRIMARY KEY, cs BLOB)` in the same
//!   transaction; the session is then dropped and a new one created for the
//!   next transaction (the extension has no "clear").
//! - `trigger`: AFTER INSERT/UPDATE/DELETE triggers on `items` that insert
//!   one row of raw columns per change into `log(seq INTEGER PRIMARY KEY, op
//!   INTEGER, id, name, score, tag)`.
//! - `aerodb`: `Primary::open`, `Primary::replicate("items")`, writes
//!   through `Primary::connection()`.
//!
//! Workloads: `a-normal`, `a-full` (1-row transactions, BEGIN; INSERT;
//! COMMIT, `synchronous=NORMAL` / `FULL`) and `b-normal` (1,000-row
//! transactions: 1,000 executions of a prepared INSERT inside BEGIN..COMMIT,
//! `NORMAL`).
//!
//! Modes:
//!
//! - no `--variant`: the timed comparison. Per workload: a warm-up of every
//!   variant, a calibration on `plain` (the transaction count of one run, the
//!   same for all variants), then `--rounds` rounds in which every variant
//!   runs once, the starting variant rotating from round to round. Prints
//!   rows/s (median of the rounds) and the wall-time ratio against `plain`.
//! - `--variant V --workload W --count N [--warmup M]`: one variant, one
//!   workload, `M` warm-up transactions and then `N` measured transactions
//!   in one call of the never-inlined, unmangled function
//!   `bench_peers_measured_<V>`, for
//!   `valgrind --tool=callgrind --toggle-collect=bench_peers_measured_<V>`
//!   (see `callgrind.sh`). No timing loop.
//! - `--emit-shell-sql FIRST COUNT`: prints `COUNT` single-row INSERT
//!   statements (keys from `FIRST`) with this generator's rows, for
//!   `shell.sh`.

use rusqlite::session::Session;
use rusqlite::{params, CachedStatement, Connection};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use storage_adapter::primary::Primary;

type R<T> = Result<T, Box<dyn Error>>;

const TABLE_SQL: &str =
    "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL NOT NULL, tag BLOB NOT NULL)";
const INSERT_SQL: &str = "INSERT INTO items(id, name, score, tag) VALUES (?1, ?2, ?3, ?4)";
const CHANGESETS_SQL: &str = "CREATE TABLE changesets(id INTEGER PRIMARY KEY, cs BLOB)";
const SAVE_CHANGESET_SQL: &str = "INSERT INTO changesets(cs) VALUES (?1)";
const TRIGGER_SQL: &str = "
CREATE TABLE log(seq INTEGER PRIMARY KEY, op INTEGER, id, name, score, tag);
CREATE TRIGGER items_log_insert AFTER INSERT ON items BEGIN
  INSERT INTO log(op, id, name, score, tag) VALUES (1, NEW.id, NEW.name, NEW.score, NEW.tag);
END;
CREATE TRIGGER items_log_update AFTER UPDATE ON items BEGIN
  INSERT INTO log(op, id, name, score, tag) VALUES (2, NEW.id, NEW.name, NEW.score, NEW.tag);
END;
CREATE TRIGGER items_log_delete AFTER DELETE ON items BEGIN
  INSERT INTO log(op, id, name, score, tag) VALUES (3, OLD.id, OLD.name, OLD.score, OLD.tag);
END;
";

/// Rows of a (b) transaction.
const BATCH_ROWS: u64 = 1000;
/// SQLite's default `wal_autocheckpoint`, in frames.
const WAL_AUTOCHECKPOINT_FRAMES: u64 = 1000;
/// Default rounds of the timed comparison.
const DEFAULT_ROUNDS: usize = 7;
/// Default minimum duration of one `plain` run.
const DEFAULT_MIN_RUN: f64 = 0.5;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Plain,
    Session,
    Trigger,
    AeroDb,
}

const VARIANTS: [Variant; 4] = [
    Variant::Plain,
    Variant::Session,
    Variant::Trigger,
    Variant::AeroDb,
];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Session => "session",
            Variant::Trigger => "trigger",
            Variant::AeroDb => "aerodb",
        }
    }

    /// The symbol to pass to callgrind's `--toggle-collect`.
    fn measured_fn(self) -> &'static str {
        match self {
            Variant::Plain => "bench_peers_measured_plain",
            Variant::Session => "bench_peers_measured_session",
            Variant::Trigger => "bench_peers_measured_trigger",
            Variant::AeroDb => "bench_peers_measured_aerodb",
        }
    }

    fn parse(s: &str) -> R<Variant> {
        VARIANTS.into_iter().find(|v| v.name() == s).ok_or_else(|| {
            format!("unknown variant {s:?} (plain, session, trigger, aerodb)").into()
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Workload {
    id: &'static str,
    rows: u64,
    synchronous: &'static str,
    label: &'static str,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        id: "a-normal",
        rows: 1,
        synchronous: "NORMAL",
        label: "(a) 1-row tx, NORMAL",
    },
    Workload {
        id: "a-full",
        rows: 1,
        synchronous: "FULL",
        label: "(a) 1-row tx, FULL",
    },
    Workload {
        id: "b-normal",
        rows: BATCH_ROWS,
        synchronous: "NORMAL",
        label: "(b) 1000-row tx, NORMAL",
    },
];

impl Workload {
    fn parse(s: &str) -> R<Workload> {
        WORKLOADS
            .into_iter()
            .find(|w| w.id == s)
            .ok_or_else(|| format!("unknown workload {s:?} (a-normal, a-full, b-normal)").into())
    }
}

/// The row with key `id`: integer key, 24-byte text, real, 16-byte blob.
/// Built without `format!`, so that the harness adds little to any variant.
/// The same generator as `storage-adapter/benches/capture_apply.rs`.
struct RowGen {
    name: [u8; 24],
}

impl RowGen {
    fn new() -> RowGen {
        RowGen {
            name: *b"item-0000000000-abcdefgh",
        }
    }

    fn row(&mut self, id: i64) -> (&str, f64, [u8; 16]) {
        let mut v = id.unsigned_abs();
        for d in self.name[5..15].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        let score = id as f64 * 0.5 + 0.25;
        let mut tag = [0u8; 16];
        tag[..8].copy_from_slice(&id.to_le_bytes());
        tag[8..].copy_from_slice(&(!id).to_le_bytes());
        // Only ASCII digits were written into an ASCII buffer.
        let name = std::str::from_utf8(&self.name).expect("row name is ASCII");
        (name, score, tag)
    }

    fn insert(&mut self, stmt: &mut CachedStatement<'_>, id: i64) -> R<()> {
        let (name, score, tag) = self.row(id);
        let n = stmt
            .execute(params![id, name, score, &tag[..]])
            .map_err(|e| format!("INSERT of row {id}: {e}"))?;
        if n != 1 {
            return Err(format!("INSERT of row {id} changed {n} rows").into());
        }
        Ok(())
    }
}

/// One variant's database and where its keys continue.
struct Db {
    variant: Variant,
    path: PathBuf,
    conn: Option<Connection>,
    primary: Option<Primary>,
    /// The next key to insert.
    next: i64,
    /// Transactions written so far.
    txs: u64,
    /// AeroDB's head after setup.
    head0: u64,
    /// Reused changeset buffer of `session`.
    buf: Vec<u8>,
}

fn sql<T>(doing: &str, r: rusqlite::Result<T>) -> R<T> {
    r.map_err(|e| format!("{doing}: {e}").into())
}

impl Db {
    fn open(variant: Variant, path: PathBuf, synchronous: &str) -> R<Db> {
        let (conn, primary, head0) = match variant {
            Variant::AeroDb => {
                let primary = Primary::open(&path)
                    .map_err(|e| format!("Primary::open({}): {e}", path.display()))?;
                sql(
                    "setting synchronous",
                    primary
                        .connection()
                        .pragma_update(None, "synchronous", synchronous),
                )?;
                sql(
                    "creating items",
                    primary.connection().execute_batch(TABLE_SQL),
                )?;
                primary
                    .replicate("items")
                    .map_err(|e| format!("Primary::replicate(\"items\"): {e}"))?;
                let head0 = primary.head().map_err(|e| format!("Primary::head: {e}"))?.0;
                (None, Some(primary), head0)
            }
            _ => {
                let conn = sql(
                    &format!("opening {}", path.display()),
                    Connection::open(&path),
                )?;
                let mode: String = sql(
                    "setting journal_mode=WAL",
                    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)),
                )?;
                if !mode.eq_ignore_ascii_case("wal") {
                    return Err(format!("journal_mode is {mode}, not wal").into());
                }
                sql(
                    "setting synchronous",
                    conn.pragma_update(None, "synchronous", synchronous),
                )?;
                sql("creating items", conn.execute_batch(TABLE_SQL))?;
                match variant {
                    Variant::Session => {
                        sql("creating changesets", conn.execute_batch(CHANGESETS_SQL))?
                    }
                    Variant::Trigger => {
                        sql("creating the log triggers", conn.execute_batch(TRIGGER_SQL))?
                    }
                    _ => {}
                }
                (Some(conn), None, 0)
            }
        };
        Ok(Db {
            variant,
            path,
            conn,
            primary,
            next: 1,
            txs: 0,
            head0,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    fn conn(&self) -> &Connection {
        match (&self.conn, &self.primary) {
            (Some(c), _) => c,
            (None, Some(p)) => p.connection(),
            (None, None) => unreachable!("a Db has a connection or a primary"),
        }
    }

    /// Runs `txs` transactions of `rows` rows through the variant's measured
    /// (never-inlined, unmangled) function.
    fn run_measured(&mut self, txs: u64, rows: u64) -> R<()> {
        let mut gen = RowGen::new();
        let mut next = self.next;
        let r = match self.variant {
            Variant::Plain => {
                bench_peers_measured_plain(self.conn(), &mut gen, &mut next, txs, rows)
            }
            Variant::Trigger => {
                bench_peers_measured_trigger(self.conn(), &mut gen, &mut next, txs, rows)
            }
            Variant::AeroDb => {
                let primary = self.primary.as_ref().expect("aerodb variant has a primary");
                bench_peers_measured_aerodb(primary, &mut gen, &mut next, txs, rows)
            }
            Variant::Session => {
                let conn = self
                    .conn
                    .as_ref()
                    .expect("session variant has a connection");
                bench_peers_measured_session(conn, &mut gen, &mut next, txs, rows, &mut self.buf)
            }
        };
        self.next = next;
        self.txs += txs;
        r.map_err(|e| format!("{}: {e}", self.variant.name()).into())
    }

    /// Warm-up: the same work, but not through the measured function, so
    /// callgrind's `--toggle-collect` leaves it out.
    fn run_unmeasured(&mut self, txs: u64, rows: u64) -> R<()> {
        let mut gen = RowGen::new();
        let mut next = self.next;
        let r = match self.variant {
            Variant::Session => {
                let conn = self
                    .conn
                    .as_ref()
                    .expect("session variant has a connection");
                session_txs(conn, &mut gen, &mut next, txs, rows, &mut self.buf)
            }
            _ => write_txs(self.conn(), &mut gen, &mut next, txs, rows),
        };
        self.next = next;
        self.txs += txs;
        r.map_err(|e| format!("{} (warm-up): {e}", self.variant.name()).into())
    }

    /// Frames the database's WAL file has room for (its size; SQLite does
    /// not shrink it without `journal_size_limit`).
    fn wal_frames(&self) -> R<u64> {
        let page: i64 = sql(
            "reading page_size",
            self.conn().query_row("PRAGMA page_size", [], |r| r.get(0)),
        )?;
        let mut p = self.path.as_os_str().to_owned();
        p.push("-wal");
        let len = std::fs::metadata(&p)
            .map_err(|e| format!("size of {}: {e}", PathBuf::from(&p).display()))?
            .len();
        Ok(len.saturating_sub(32) / (page as u64 + 24))
    }

    /// Checks that every row was written and captured as the variant says.
    fn verify(&self, rows_per_tx: u64) -> R<()> {
        let conn = self.conn();
        let name = self.variant.name();
        let rows = (self.next - 1) as u64;
        if rows != self.txs * rows_per_tx {
            return Err(format!(
                "{name}: {rows} keys used for {} transactions of {rows_per_tx}",
                self.txs
            )
            .into());
        }
        let count = |q: &str| -> R<u64> {
            let n: i64 = sql(q, conn.query_row(q, [], |r| r.get(0)))?;
            Ok(n as u64)
        };
        let items = count("SELECT count(*) FROM items")?;
        if items != rows {
            return Err(format!("{name}: items has {items} rows, expected {rows}").into());
        }
        match self.variant {
            Variant::Plain => {}
            Variant::Trigger => {
                let logged = count("SELECT count(*) FROM log WHERE op = 1")?;
                if logged != rows {
                    return Err(format!("{name}: log has {logged} inserts, expected {rows}").into());
                }
            }
            Variant::Session => {
                let n = count("SELECT count(*) FROM changesets")?;
                if n != self.txs {
                    return Err(format!(
                        "{name}: {n} changesets, expected one per transaction ({})",
                        self.txs
                    )
                    .into());
                }
                // The last changeset holds exactly the last transaction's rows.
                let cs: Vec<u8> = sql(
                    "reading the last changeset",
                    conn.query_row(
                        "SELECT cs FROM changesets ORDER BY id DESC LIMIT 1",
                        [],
                        |r| r.get(0),
                    ),
                )?;
                let mut input: &[u8] = &cs;
                let input_ref: &mut dyn std::io::Read = &mut input;
                let mut it = sql(
                    "reading a changeset",
                    rusqlite::session::ChangesetIter::start_strm(&input_ref),
                )?;
                let mut ops = 0u64;
                while let Some(_item) = sql(
                    "iterating a changeset",
                    rusqlite::fallible_streaming_iterator::FallibleStreamingIterator::next(&mut it),
                )? {
                    ops += 1;
                }
                if ops != rows_per_tx {
                    return Err(format!(
                        "{name}: the last changeset has {ops} changes, expected {rows_per_tx}"
                    )
                    .into());
                }
            }
            Variant::AeroDb => {
                let primary = self.primary.as_ref().expect("aerodb variant has a primary");
                let head = primary.head().map_err(|e| format!("Primary::head: {e}"))?.0;
                if head != self.head0 + self.txs {
                    return Err(format!(
                        "{name}: head is {head}, expected {} + {} transactions",
                        self.head0, self.txs
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    fn close(mut self) {
        self.conn = None;
        self.primary = None;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

/// Prepared statements of one run.
struct Stmts<'c> {
    begin: CachedStatement<'c>,
    commit: CachedStatement<'c>,
    insert: CachedStatement<'c>,
}

impl<'c> Stmts<'c> {
    fn new(conn: &'c Connection) -> R<Stmts<'c>> {
        Ok(Stmts {
            begin: sql("preparing BEGIN", conn.prepare_cached("BEGIN"))?,
            commit: sql("preparing COMMIT", conn.prepare_cached("COMMIT"))?,
            insert: sql("preparing INSERT", conn.prepare_cached(INSERT_SQL))?,
        })
    }

    fn begin(&mut self) -> R<()> {
        sql("BEGIN", self.begin.execute([]))?;
        Ok(())
    }

    fn commit(&mut self) -> R<()> {
        sql("COMMIT", self.commit.execute([]))?;
        Ok(())
    }
}

/// `txs` transactions of `rows` INSERTs each (BEGIN; INSERT x rows;
/// COMMIT), keys from `*next`: plain, trigger and aerodb (their capture
/// runs inside SQLite).
fn write_txs(conn: &Connection, gen: &mut RowGen, next: &mut i64, txs: u64, rows: u64) -> R<()> {
    let mut s = Stmts::new(conn)?;
    for _ in 0..txs {
        s.begin()?;
        for _ in 0..rows {
            gen.insert(&mut s.insert, *next)?;
            *next += 1;
        }
        s.commit()?;
    }
    Ok(())
}

/// The same with a session per transaction whose changeset is stored in
/// `changesets` before COMMIT.
fn session_txs(
    conn: &Connection,
    gen: &mut RowGen,
    next: &mut i64,
    txs: u64,
    rows: u64,
    buf: &mut Vec<u8>,
) -> R<()> {
    let mut s = Stmts::new(conn)?;
    let mut save = sql(
        "preparing the changeset INSERT",
        conn.prepare_cached(SAVE_CHANGESET_SQL),
    )?;
    for _ in 0..txs {
        let mut session = sql("creating a session", Session::new(conn))?;
        sql("attaching items", session.attach(Some("items")))?;
        s.begin()?;
        for _ in 0..rows {
            gen.insert(&mut s.insert, *next)?;
            *next += 1;
        }
        buf.clear();
        sql("generating the changeset", session.changeset_strm(buf))?;
        sql("storing the changeset", save.execute([&buf[..]]))?;
        s.commit()?;
        drop(session);
    }
    Ok(())
}

// The measured functions: one per variant, never inlined, with unmangled
// names so that `valgrind --tool=callgrind --toggle-collect=<name>` finds
// them; `black_box` on the result keeps the inner call from being a tail
// call, so the whole run happens inside the toggled function. Each body
// also black-boxes its own variant: with identical bodies, rustc's function
// merging would make `trigger` an alias of `plain`, and callgrind would
// count it under the other name.

/// Measured: plain SQLite.
#[no_mangle]
#[inline(never)]
fn bench_peers_measured_plain(
    conn: &Connection,
    gen: &mut RowGen,
    next: &mut i64,
    txs: u64,
    rows: u64,
) -> R<()> {
    std::hint::black_box(Variant::Plain);
    std::hint::black_box(write_txs(conn, gen, next, txs, rows))
}

/// Measured: the session extension.
#[no_mangle]
#[inline(never)]
fn bench_peers_measured_session(
    conn: &Connection,
    gen: &mut RowGen,
    next: &mut i64,
    txs: u64,
    rows: u64,
    buf: &mut Vec<u8>,
) -> R<()> {
    std::hint::black_box(Variant::Session);
    std::hint::black_box(session_txs(conn, gen, next, txs, rows, buf))
}

/// Measured: the naive trigger log.
#[no_mangle]
#[inline(never)]
fn bench_peers_measured_trigger(
    conn: &Connection,
    gen: &mut RowGen,
    next: &mut i64,
    txs: u64,
    rows: u64,
) -> R<()> {
    std::hint::black_box(Variant::Trigger);
    std::hint::black_box(write_txs(conn, gen, next, txs, rows))
}

/// Measured: AeroDB capture.
#[no_mangle]
#[inline(never)]
fn bench_peers_measured_aerodb(
    primary: &Primary,
    gen: &mut RowGen,
    next: &mut i64,
    txs: u64,
    rows: u64,
) -> R<()> {
    std::hint::black_box(Variant::AeroDb);
    std::hint::black_box(write_txs(primary.connection(), gen, next, txs, rows))
}

/// Median of samples.
fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// (max - min) / median, in percent.
fn spread(samples: &[f64]) -> f64 {
    let lo = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (hi - lo) / median(samples) * 100.0
}

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct Timed {
    workload: Workload,
    /// Transactions per run.
    txs_per_run: u64,
    /// Seconds per row of each variant, one per round, in `VARIANTS` order.
    per_row: Vec<Vec<f64>>,
}

fn timed_run(db: &mut Db, txs: u64, rows: u64) -> R<Duration> {
    let t = Instant::now();
    db.run_measured(txs, rows)?;
    Ok(t.elapsed())
}

fn timed_workload(dir: &Path, w: Workload, rounds: usize, min_run: Duration) -> R<Timed> {
    eprintln!("{}: setting up ...", w.id);
    let mut dbs = VARIANTS
        .into_iter()
        .map(|v| {
            Db::open(
                v,
                dir.join(format!("{}-{}.db", w.id, v.name())),
                w.synchronous,
            )
        })
        .collect::<R<Vec<Db>>>()?;
    // Warm-up: statement caches, the page cache, and the WAL file. Until a
    // WAL file has reached the auto-checkpoint size (1,000 frames) and been
    // restarted, every commit appends to it, and at synchronous=FULL an
    // fsync of a growing file costs much more than one of a file rewritten
    // in place: a variant writing fewer frames per commit (plain) would
    // stay in that slower phase longer. So plain (the fewest frames per
    // commit) warms up until its WAL holds more than 1,000 frames, and every
    // other variant runs the same transactions (same rows everywhere).
    let chunk = if w.rows == 1 { 100 } else { 5 };
    dbs[0].run_unmeasured(chunk, w.rows)?;
    while dbs[0].wal_frames()? <= WAL_AUTOCHECKPOINT_FRAMES {
        if dbs[0].txs >= 1_000_000 {
            return Err(format!(
                "plain: the WAL stays at {} frames after {} warm-up transactions",
                dbs[0].wal_frames()?,
                dbs[0].txs
            )
            .into());
        }
        dbs[0].run_unmeasured(chunk, w.rows)?;
    }
    let warm_txs = dbs[0].txs;
    for db in dbs.iter_mut().skip(1) {
        db.run_unmeasured(warm_txs, w.rows)?;
        let frames = db.wal_frames()?;
        if frames <= WAL_AUTOCHECKPOINT_FRAMES {
            eprintln!(
                "{}: warning: {} WAL has only {frames} frames after the warm-up",
                w.id,
                db.variant.name()
            );
        }
    }
    // Calibration on plain: transactions of one run of at least `min_run`.
    let plain = &mut dbs[0];
    let probe = min_run / 5;
    let mut n = 1u64;
    let per_tx = loop {
        let d = timed_run(plain, n, w.rows)?;
        if d >= probe || n >= 1 << 30 {
            break d.as_secs_f64() / n as f64;
        }
        let grow = (probe.as_secs_f64() / d.as_secs_f64().max(1e-6)).clamp(2.0, 16.0);
        n = ((n as f64) * grow).ceil() as u64;
    };
    let txs_per_run = ((min_run.as_secs_f64() / per_tx).ceil() as u64).max(1);
    // The other variants get as many calibration transactions, so that all
    // databases hold the same rows when the rounds start.
    let calibrated = dbs[0].txs - warm_txs;
    for db in dbs.iter_mut().skip(1) {
        db.run_unmeasured(calibrated, w.rows)?;
    }
    eprintln!(
        "{}: {rounds} rounds of {txs_per_run} transactions x {} rows per variant ...",
        w.id, w.rows
    );
    let mut per_row = vec![Vec::new(); VARIANTS.len()];
    for round in 0..rounds {
        for k in 0..VARIANTS.len() {
            let i = (round + k) % VARIANTS.len();
            let d = timed_run(&mut dbs[i], txs_per_run, w.rows)?;
            per_row[i].push(d.as_secs_f64() / (txs_per_run * w.rows) as f64);
        }
    }
    for db in dbs {
        db.verify(w.rows)?;
        db.close();
    }
    Ok(Timed {
        workload: w,
        txs_per_run,
        per_row,
    })
}

fn print_table(results: &[Timed], rounds: usize) {
    println!();
    print!("{:<25}", "workload");
    for v in VARIANTS {
        if v == Variant::Plain {
            print!(" {:>12}", "plain rows/s");
        } else {
            print!(" {:>14} {:>6}", format!("{} rows/s", v.name()), "ratio");
        }
    }
    println!();
    for r in results {
        let plain = median(&r.per_row[0]);
        print!("{:<25}", r.workload.label);
        for (i, v) in VARIANTS.into_iter().enumerate() {
            let m = median(&r.per_row[i]);
            if v == Variant::Plain {
                print!(" {:>12}", thousands(1.0 / m));
            } else {
                print!(" {:>14} {:>5.2}x", thousands(1.0 / m), m / plain);
            }
        }
        println!();
    }
    println!();
    println!(
        "per variant: spread of the {rounds} rounds = (max-min)/median; paired = median over the rounds of (variant / plain in that round)"
    );
    for r in results {
        print!("{:<25}", r.workload.label);
        for (i, v) in VARIANTS.into_iter().enumerate() {
            if v == Variant::Plain {
                print!("  plain {:>5.1}%", spread(&r.per_row[i]));
            } else {
                let paired: Vec<f64> = r.per_row[i]
                    .iter()
                    .zip(&r.per_row[0])
                    .map(|(x, p)| x / p)
                    .collect();
                print!(
                    "  {} {:>5.1}% paired {:.2}x",
                    v.name(),
                    spread(&r.per_row[i]),
                    median(&paired)
                );
            }
        }
        println!("  ({} tx/run)", r.txs_per_run);
    }
}

struct Args {
    variant: Option<Variant>,
    workloads: Vec<Workload>,
    count: Option<u64>,
    warmup: Option<u64>,
    rounds: usize,
    min_run: f64,
    dir: Option<PathBuf>,
    emit: Option<(i64, u64)>,
}

const USAGE: &str = "usage:
  bench-peers [--workload W]... [--rounds N] [--min-run SECS] [--dir DIR]
      timed comparison of all variants (default: all workloads, 7 rounds, runs >= 0.5 s)
  bench-peers --variant V --workload W --count N [--warmup M] [--dir DIR]
      one variant, one workload: M warm-up transactions (default N/10), then N
      transactions inside bench_peers_measured_<V> (for callgrind --toggle-collect)
  bench-peers --emit-shell-sql FIRST COUNT
      COUNT single-row INSERT statements of the row generator, keys from FIRST
variants: plain, session, trigger, aerodb; workloads: a-normal, a-full, b-normal";

fn parse_args() -> R<Args> {
    let mut args = Args {
        variant: None,
        workloads: Vec::new(),
        count: None,
        warmup: None,
        rounds: DEFAULT_ROUNDS,
        min_run: DEFAULT_MIN_RUN,
        dir: None,
        emit: None,
    };
    let mut it = std::env::args().skip(1);
    let value = |it: &mut dyn Iterator<Item = String>, flag: &str| -> R<String> {
        it.next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}").into())
    };
    fn num<T: std::str::FromStr>(flag: &str, s: &str) -> R<T> {
        s.parse::<T>()
            .map_err(|_| format!("{flag} {s:?}: expected a number").into())
    }
    while let Some(a) = it.next() {
        match a.as_str() {
            "--variant" => args.variant = Some(Variant::parse(&value(&mut it, &a)?)?),
            "--workload" => args.workloads.push(Workload::parse(&value(&mut it, &a)?)?),
            "--count" => args.count = Some(num(&a, &value(&mut it, &a)?)?),
            "--warmup" => args.warmup = Some(num(&a, &value(&mut it, &a)?)?),
            "--rounds" => args.rounds = num(&a, &value(&mut it, &a)?)?,
            "--min-run" => args.min_run = num(&a, &value(&mut it, &a)?)?,
            "--dir" => args.dir = Some(PathBuf::from(value(&mut it, &a)?)),
            "--emit-shell-sql" => {
                let first = num(&a, &value(&mut it, &a)?)?;
                let count = num(&a, &value(&mut it, &a)?)?;
                args.emit = Some((first, count));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // `cargo bench`/`cargo test` style flags are not ours.
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        }
    }
    if args.rounds == 0 || !(args.min_run.is_finite() && args.min_run > 0.0) {
        return Err("--rounds and --min-run must be positive".into());
    }
    Ok(args)
}

fn emit_shell_sql(first: i64, count: u64) -> R<()> {
    use std::io::Write;
    let mut gen = RowGen::new();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for id in first..first + count as i64 {
        let (name, score, tag) = gen.row(id);
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        // `{:?}` of an f64 prints enough digits to read back the same value.
        writeln!(
            out,
            "INSERT INTO items(id, name, score, tag) VALUES ({id}, '{name}', {score:?}, X'{hex}');"
        )
        .map_err(|e| format!("writing SQL to stdout: {e}"))?;
    }
    out.flush()
        .map_err(|e| format!("writing SQL to stdout: {e}"))?;
    Ok(())
}

fn temp_dir(dir: &Option<PathBuf>) -> R<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix("bench-peers-");
    let d = match dir {
        Some(d) => b.tempdir_in(d),
        None => b.tempdir(),
    };
    d.map_err(|e| format!("creating a temporary directory: {e}").into())
}

fn main() -> R<()> {
    let args = parse_args()?;
    if let Some((first, count)) = args.emit {
        return emit_shell_sql(first, count);
    }
    let dir = temp_dir(&args.dir)?;
    if let Some(variant) = args.variant {
        // One variant, one workload, once: for callgrind.
        let [w] = args.workloads[..] else {
            return Err(format!("--variant needs exactly one --workload\n{USAGE}").into());
        };
        let count = args
            .count
            .ok_or_else(|| format!("--variant needs --count\n{USAGE}"))?;
        let warmup = args.warmup.unwrap_or((count / 10).max(1));
        let mut db = Db::open(
            variant,
            dir.path().join(format!("{}-{}.db", w.id, variant.name())),
            w.synchronous,
        )?;
        db.run_unmeasured(warmup, w.rows)?;
        db.run_measured(count, w.rows)?;
        db.verify(w.rows)?;
        db.close();
        println!(
            "variant={} workload={} warmup_txs={warmup} measured_txs={count} rows_per_tx={} measured_fn={}",
            variant.name(),
            w.id,
            w.rows,
            variant.measured_fn()
        );
        return Ok(());
    }
    if args.count.is_some() || args.warmup.is_some() {
        return Err(format!("--count and --warmup need --variant\n{USAGE}").into());
    }
    let workloads = if args.workloads.is_empty() {
        WORKLOADS.to_vec()
    } else {
        args.workloads.clone()
    };
    println!(
        "bench-peers: capture cost vs plain SQLite {} ({} rounds, plain runs >= {:.2} s, median; dir {})",
        rusqlite::version(),
        args.rounds,
        args.min_run,
        dir.path().display()
    );
    println!("ratio = variant wall time / plain wall time for the same rows (lower is better)");
    let mut results = Vec::new();
    for w in workloads {
        results.push(timed_workload(
            dir.path(),
            w,
            args.rounds,
            Duration::from_secs_f64(args.min_run),
        )?);
    }
    print_table(&results, args.rounds);
    Ok(())
}
