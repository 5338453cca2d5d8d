//! Capture and apply overhead against raw SQLite, measured in one run.
//!
//! Run with `cargo bench -p storage-adapter --bench capture_apply`
//! (optionally `-- FILTER...`: only cases whose id contains one of the
//! filters, ids `a-normal`, `a-full`, `b-normal`, `b-full`, `c`).
//!
//! - (a) single-row write transactions on a captured table (a primary with
//!   `aerodb_replicate`) vs the same table uncaptured in another database
//!   file; WAL mode, `synchronous=NORMAL` and `FULL`. Ratio = captured time
//!   / plain time (lower is better).
//! - (b) the same with 1,000-row transactions.
//! - (c) applying 100,000 captured single-row commits to a fresh replica
//!   (`PrimaryWalReader::segment` of ~1 MiB, `Segment::decode`, `validate`,
//!   `ReplicaDb::apply`) vs inserting the same rows with a prepared INSERT
//!   in transactions of one segment's record count into a fresh database.
//!   Ratio = plain time / apply time (higher is better); decode+validate is
//!   timed separately.
//!
//! Each case warms up while calibrating, then runs captured and plain
//! alternately (`ROUNDS` rounds each, every run lasting at least the minimum
//! time) and reports the median, plus the ratio of the fastest runs (least
//! disturbed by other load). `AERODB_BENCH_SCALE` (default 1.0) scales
//! the minimum run time and the commit count of (c), so CI can run it small.
//! Databases live in a temporary directory under `TMPDIR`.
//!
//! Nothing here asserts on timings: targets are printed, not enforced.
//! `captured_writes`, `plain_writes`, `apply_run` and `plain_bulk_run` are
//! never inlined, for `valgrind --tool=callgrind --toggle-collect=...`; the
//! transaction totals printed to stderr normalize such profiles.
//!
//! `cargo test --all-targets` also runs this binary, without `--bench`; it
//! then exits at once.

use replication::wal::{validate, ChainPosition, CommitId, Segment};
use rusqlite::{params, Connection};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use storage_adapter::primary::{Primary, PrimaryWalReader};
use storage_adapter::replica::ReplicaDb;

type R<T> = Result<T, Box<dyn Error>>;

/// Measured runs per side.
const ROUNDS: usize = 5;
/// Rows of a (b) transaction.
const BATCH_ROWS: u64 = 1000;
/// Commits of (c) at scale 1.
const APPLY_COMMITS: f64 = 100_000.0;
/// Segment size of (c).
const SEGMENT_BYTES: usize = 1 << 20;

const TABLE_SQL: &str =
    "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL NOT NULL, tag BLOB NOT NULL)";
const INSERT_SQL: &str = "INSERT INTO items(id, name, score, tag) VALUES (?1, ?2, ?3, ?4)";

struct Config {
    scale: f64,
    /// Minimum duration of one measured run.
    min_run: Duration,
    filters: Vec<String>,
    dir: tempfile::TempDir,
}

impl Config {
    fn wants(&self, id: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| id.contains(f.as_str()))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The row with key `id`: integer key, 24-byte text, real, 16-byte blob.
/// Built without `format!`, so that the harness adds little to either side.
struct RowGen {
    name: [u8; 24],
}

impl RowGen {
    fn new() -> RowGen {
        RowGen {
            name: *b"item-0000000000-abcdefgh",
        }
    }

    fn insert(&mut self, stmt: &mut rusqlite::CachedStatement<'_>, id: i64) -> R<()> {
        let mut v = id.unsigned_abs();
        for d in self.name[5..15].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        let name = std::str::from_utf8(&self.name)?;
        let score = id as f64 * 0.5 + 0.25;
        let mut tag = [0u8; 16];
        tag[..8].copy_from_slice(&id.to_le_bytes());
        tag[8..].copy_from_slice(&(!id).to_le_bytes());
        let n = stmt.execute(params![id, name, score, &tag[..]])?;
        assert_eq!(n, 1);
        Ok(())
    }
}

fn plain_db(path: &Path, synchronous: &str) -> R<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.execute_batch(TABLE_SQL)?;
    Ok(conn)
}

fn captured_db(path: &Path, synchronous: &str) -> R<Primary> {
    let primary = Primary::open(path)?;
    primary
        .connection()
        .pragma_update(None, "synchronous", synchronous)?;
    primary.connection().execute_batch(TABLE_SQL)?;
    primary.replicate("items")?;
    Ok(primary)
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Writes `txs` transactions of `rows` rows each, starting at key `*next`
/// (autocommit statements when `rows == 1`); returns the elapsed time.
fn write_txs(conn: &Connection, next: &mut i64, txs: u64, rows: u64) -> R<Duration> {
    let mut gen = RowGen::new();
    let mut stmt = conn.prepare_cached(INSERT_SQL)?;
    let start = Instant::now();
    for _ in 0..txs {
        if rows == 1 {
            gen.insert(&mut stmt, *next)?;
            *next += 1;
        } else {
            conn.execute_batch("BEGIN")?;
            for _ in 0..rows {
                gen.insert(&mut stmt, *next)?;
                *next += 1;
            }
            conn.execute_batch("COMMIT")?;
        }
    }
    Ok(start.elapsed())
}

/// The captured side of (a)/(b): its own symbol, for profilers.
#[inline(never)]
fn captured_writes(primary: &Primary, next: &mut i64, txs: u64, rows: u64) -> R<Duration> {
    // black_box: no tail call, so callgrind's --toggle-collect sees the
    // whole run inside this function.
    std::hint::black_box(write_txs(primary.connection(), next, txs, rows))
}

/// The plain side of (a), (b) and (c): its own symbol, for profilers.
#[inline(never)]
fn plain_writes(conn: &Connection, next: &mut i64, txs: u64, rows: u64) -> R<Duration> {
    std::hint::black_box(write_txs(conn, next, txs, rows))
}

/// Median, min and max of per-operation seconds.
#[derive(Debug, Clone)]
struct Stats {
    samples: Vec<f64>,
}

impl Stats {
    fn new(mut samples: Vec<f64>) -> Stats {
        samples.sort_by(f64::total_cmp);
        Stats { samples }
    }
    fn median(&self) -> f64 {
        let n = self.samples.len();
        if n % 2 == 1 {
            self.samples[n / 2]
        } else {
            (self.samples[n / 2 - 1] + self.samples[n / 2]) / 2.0
        }
    }
    /// The fastest run: least disturbed by other load.
    fn best(&self) -> f64 {
        self.samples[0]
    }
    /// (max - min) / median, in percent.
    fn spread(&self) -> f64 {
        let (lo, hi) = (self.samples[0], self.samples[self.samples.len() - 1]);
        (hi - lo) / self.median() * 100.0
    }
}

type Runner<'a> = dyn FnMut(u64) -> R<Duration> + 'a;

/// Warms up and calibrates `f` (`f(n)` runs n operations): doubles n until a
/// call lasts a fifth of the minimum run; returns seconds per operation.
fn calibrate(cfg: &Config, f: &mut Runner<'_>) -> R<f64> {
    let probe = cfg.min_run / 5;
    let mut n = 1u64;
    loop {
        let d = f(n)?;
        if d >= probe || n >= 1 << 32 {
            return Ok(d.as_secs_f64() / n as f64);
        }
        let grow = (probe.as_secs_f64() / d.as_secs_f64().max(1e-6)).clamp(2.0, 16.0);
        n = ((n as f64) * grow).ceil() as u64;
    }
}

/// Operations for one run of at least the minimum time.
fn run_len(cfg: &Config, per_op: f64) -> u64 {
    ((cfg.min_run.as_secs_f64() * 1.1 / per_op).ceil() as u64).max(1)
}

/// Calibrates both sides, then runs them alternately (ABBA order) for
/// `ROUNDS` rounds; per-operation seconds of each side.
fn compare(cfg: &Config, a: &mut Runner<'_>, b: &mut Runner<'_>) -> R<(Stats, Stats)> {
    let na = run_len(cfg, calibrate(cfg, a)?);
    let nb = run_len(cfg, calibrate(cfg, b)?);
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let mut run_a = || -> R<()> {
            sa.push(a(na)?.as_secs_f64() / na as f64);
            Ok(())
        };
        if round % 2 == 0 {
            run_a()?;
            sb.push(b(nb)?.as_secs_f64() / nb as f64);
        } else {
            sb.push(b(nb)?.as_secs_f64() / nb as f64);
            run_a()?;
        }
    }
    Ok((Stats::new(sa), Stats::new(sb)))
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

/// One printed line of (a)/(b).
struct Line {
    case: String,
    unit: &'static str,
    captured: Stats,
    plain: Stats,
    /// Operations per measured unit (rows per transaction), for rows/s.
    rows_per_op: u64,
    target: f64,
}

fn print_write_table(lines: &[Line]) {
    println!();
    println!(
        "{:<26} {:>15} {:>7} {:>15} {:>7} {:>8} {:>8}  {:<7} {:>11} {:>6}",
        "case",
        "captured",
        "spread",
        "plain",
        "spread",
        "ratio",
        "target",
        "verdict",
        "added/row",
        "best"
    );
    for l in lines {
        let ratio = l.captured.median() / l.plain.median();
        let added_us = (l.captured.median() - l.plain.median()) * 1e6 / l.rows_per_op as f64;
        println!(
            "{:<26} {:>10} {:<4} {:>6.1}% {:>10} {:<4} {:>6.1}% {:>7.2}x {:>5}{:.1}x  {:<7} {:>8.2} us {:>5.2}x",
            l.case,
            thousands(1.0 / l.captured.median()),
            l.unit,
            l.captured.spread(),
            thousands(1.0 / l.plain.median()),
            l.unit,
            l.plain.spread(),
            ratio,
            "<= ",
            l.target,
            if ratio <= l.target { "ok" } else { "MISS" },
            added_us,
            l.captured.best() / l.plain.best(),
        );
        if l.rows_per_op > 1 {
            println!(
                "{:<26} {:>10} {:<4} {:>7} {:>10} {:<4}",
                "",
                thousands(l.rows_per_op as f64 / l.captured.median()),
                "r/s",
                "",
                thousands(l.rows_per_op as f64 / l.plain.median()),
                "r/s",
            );
        }
    }
}

/// (a) and (b): captured vs plain writes at one synchronous level.
fn write_case(
    cfg: &Config,
    id: &str,
    rows: u64,
    synchronous: &str,
    target: f64,
) -> R<Option<Line>> {
    if !cfg.wants(id) {
        return Ok(None);
    }
    eprintln!("running {id} ...");
    let cpath = cfg.path(&format!("{id}-captured.db"));
    let ppath = cfg.path(&format!("{id}-plain.db"));
    let primary = captured_db(&cpath, synchronous)?;
    let plain = plain_db(&ppath, synchronous)?;
    let head0 = primary.head()?;
    let (mut cnext, mut pnext) = (1i64, 1i64);
    let mut ctxs = 0u64;
    let (captured, plain_stats) = compare(
        cfg,
        &mut |n| {
            ctxs += n;
            captured_writes(&primary, &mut cnext, n, rows)
        },
        &mut |n| plain_writes(&plain, &mut pnext, n, rows),
    )?;
    // Capture really happened: one CommitId per transaction.
    assert_eq!(primary.head()?, CommitId(head0.0 + ctxs));
    // Totals including calibration: to normalize profiles per transaction.
    eprintln!(
        "{id}: {ctxs} captured and {} plain transactions in total",
        (pnext - 1) as u64 / rows
    );
    drop(primary);
    drop(plain);
    remove_db(&cpath);
    remove_db(&ppath);
    Ok(Some(Line {
        case: format!(
            "({}) {}-row tx, {}",
            &id[..1],
            rows,
            synchronous.to_ascii_uppercase()
        ),
        unit: "tx/s",
        captured,
        plain: plain_stats,
        rows_per_op: rows,
        target,
    }))
}

/// Times of one (c) apply run.
#[derive(Default, Clone, Copy)]
struct ApplyRun {
    decode_validate: Duration,
    apply: Duration,
}

#[inline(never)]
fn apply_run(
    cfg: &Config,
    segments: &[Vec<u8>],
    generation: replication::wal::Generation,
    run: usize,
) -> R<ApplyRun> {
    let path = cfg.path(&format!("c-replica-{run}.db"));
    let mut replica = ReplicaDb::open(&path)?;
    let mut position: ChainPosition = replica.init(generation)?;
    let mut times = ApplyRun::default();
    for bytes in segments {
        let t0 = Instant::now();
        let segment = validate(Segment::decode(bytes)?, &position)?;
        let t1 = Instant::now();
        position = replica.apply(&segment)?;
        let t2 = Instant::now();
        times.decode_validate += t1 - t0;
        times.apply += t2 - t1;
    }
    drop(replica);
    remove_db(&path);
    Ok(times)
}

#[inline(never)]
fn plain_bulk_run(cfg: &Config, commits: u64, batch: u64, run: usize) -> R<Duration> {
    let path = cfg.path(&format!("c-plain-{run}.db"));
    let conn = plain_db(&path, "NORMAL")?;
    let mut next = 1i64;
    let full = commits / batch;
    let mut d = plain_writes(&conn, &mut next, full, batch)?;
    let rest = commits - full * batch;
    if rest > 0 {
        d += plain_writes(&conn, &mut next, 1, rest)?;
    }
    let n: i64 = conn.query_row("SELECT count(*) FROM items", [], |r| r.get(0))?;
    assert_eq!(n as u64, commits);
    drop(conn);
    remove_db(&path);
    Ok(d)
}

fn apply_case(cfg: &Config) -> R<()> {
    if !cfg.wants("c") {
        return Ok(());
    }
    let commits = ((APPLY_COMMITS * cfg.scale).round() as u64).max(100);
    eprintln!("running c: building a primary with {commits} single-row commits ...");
    let ppath = cfg.path("c-primary.db");
    let t = Instant::now();
    let primary = captured_db(&ppath, "OFF")?;
    let mut next = 1i64;
    write_txs(primary.connection(), &mut next, commits, 1)?;
    let build = t.elapsed();
    let head = primary.head()?;
    drop(primary);

    let reader = PrimaryWalReader::open(&ppath)?;
    let generation = reader.generation();
    let mut segments = Vec::new();
    let mut read = Duration::ZERO;
    let mut from = CommitId(1);
    let mut per_segment = 0u32;
    let mut bytes_total = 0usize;
    loop {
        let t = Instant::now();
        let Some(bytes) = reader.segment(from, SEGMENT_BYTES)? else {
            break;
        };
        read += t.elapsed();
        let header = Segment::decode(&bytes)?.header;
        per_segment = per_segment.max(header.record_count);
        bytes_total += bytes.len();
        from = header.last_commit_id.next();
        segments.push(bytes);
    }
    assert_eq!(from, head.next(), "segments cover the whole WAL");
    let batch = u64::from(per_segment);

    eprintln!("running c: warm-up ...");
    let warm_apply = apply_run(cfg, &segments, generation, 0)?;
    let warm_plain = plain_bulk_run(cfg, commits, batch, 0)?;
    let reps = |d: Duration| -> usize {
        ((cfg.min_run.as_secs_f64() / d.as_secs_f64().max(1e-6)).ceil() as usize).clamp(1, 50)
    };
    let (reps_apply, reps_plain) = (reps(warm_apply.apply), reps(warm_plain));
    let (mut apply, mut dv, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    let mut run = 1;
    for round in 0..ROUNDS {
        let mut do_apply = || -> R<()> {
            let mut sum = ApplyRun::default();
            for _ in 0..reps_apply {
                let t = apply_run(cfg, &segments, generation, run)?;
                run += 1;
                sum.apply += t.apply;
                sum.decode_validate += t.decode_validate;
            }
            apply.push(sum.apply.as_secs_f64() / reps_apply as f64 / commits as f64);
            dv.push(sum.decode_validate.as_secs_f64() / reps_apply as f64 / commits as f64);
            Ok(())
        };
        let mut do_plain = || -> R<()> {
            let mut sum = Duration::ZERO;
            for i in 0..reps_plain {
                sum += plain_bulk_run(cfg, commits, batch, 1000 + round * 100 + i)?;
            }
            plain.push(sum.as_secs_f64() / reps_plain as f64 / commits as f64);
            Ok(())
        };
        if round % 2 == 0 {
            do_apply()?;
            do_plain()?;
        } else {
            do_plain()?;
            do_apply()?;
        }
    }
    let (apply, dv, plain) = (Stats::new(apply), Stats::new(dv), Stats::new(plain));
    let ratio = plain.median() / apply.median();
    let ratio_all = plain.median() / (apply.median() + dv.median());
    let ratio_best = plain.best() / apply.best();
    let target = 0.8;
    println!();
    println!(
        "(c) apply {commits} single-row commits: {} segments of <= {SEGMENT_BYTES} B ({per_segment} records, {} B/record), runs of {reps_apply} (apply) / {reps_plain} (plain) x {commits}",
        segments.len(),
        bytes_total / commits.max(1) as usize,
    );
    println!(
        "    apply (ReplicaDb::apply)        {:>10} commits/s  spread {:>5.1}%   {:>8.1} ms per {commits}",
        thousands(1.0 / apply.median()),
        apply.spread(),
        apply.median() * commits as f64 * 1e3
    );
    println!(
        "    decode+validate                 {:>10} commits/s  spread {:>5.1}%   {:>8.1} ms per {commits}",
        thousands(1.0 / dv.median()),
        dv.spread(),
        dv.median() * commits as f64 * 1e3
    );
    println!(
        "    plain INSERT, {batch:>6}-row tx    {:>10} rows/s     spread {:>5.1}%   {:>8.1} ms per {commits}",
        thousands(1.0 / plain.median()),
        plain.spread(),
        plain.median() * commits as f64 * 1e3
    );
    println!(
        "    ratio plain/apply {:>5.2}x (target >= {target:.1}x: {})   incl. decode+validate {:>5.2}x   best runs {:>5.2}x",
        ratio,
        if ratio >= target { "ok" } else { "MISS" },
        ratio_all,
        ratio_best
    );
    println!(
        "    (not compared) reading segments (PrimaryWalReader::segment) {:.1} ms = {} commits/s; building the primary (captured, sync OFF) {} tx/s",
        read.as_secs_f64() * 1e3,
        thousands(commits as f64 / read.as_secs_f64()),
        thousands(commits as f64 / build.as_secs_f64()),
    );
    drop(reader);
    remove_db(&ppath);
    Ok(())
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "capture_apply: benchmark, not a test; skipped (run `cargo bench -p storage-adapter --bench capture_apply`)"
        );
        return Ok(());
    }
    let scale = match std::env::var("AERODB_BENCH_SCALE") {
        Ok(s) => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| format!("AERODB_BENCH_SCALE={s:?}: expected a positive number"))?,
        Err(_) => 1.0,
    };
    let cfg = Config {
        scale,
        min_run: Duration::from_secs_f64((1.0 * scale).max(0.02)),
        filters: args.into_iter().filter(|a| !a.starts_with('-')).collect(),
        dir: tempfile::Builder::new().prefix("aerodb-bench-").tempdir()?,
    };
    println!(
        "AeroDB capture/apply vs raw SQLite {} (scale {scale}, runs >= {:.2} s, {ROUNDS} alternating rounds, median; dir {})",
        rusqlite::version(),
        cfg.min_run.as_secs_f64(),
        cfg.dir.path().display()
    );
    println!("(a)/(b) ratio = captured time / plain time (lower is better); spread = (max-min)/median of the rounds; added/row = captured - plain time per row; best = ratio of the fastest runs");
    let mut lines = Vec::new();
    let cases: [(&str, u64, &str, f64); 4] = [
        ("a-normal", 1, "NORMAL", 1.3),
        ("a-full", 1, "FULL", 1.1),
        ("b-normal", BATCH_ROWS, "NORMAL", 2.0),
        ("b-full", BATCH_ROWS, "FULL", 2.0),
    ];
    for (id, rows, sync, target) in cases {
        lines.extend(write_case(&cfg, id, rows, sync, target)?);
    }
    if !lines.is_empty() {
        print_write_table(&lines);
    }
    apply_case(&cfg)?;
    Ok(())
}
