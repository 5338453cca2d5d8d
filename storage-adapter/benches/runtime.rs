//! The threaded replica runtime ([`storage_adapter::runtime::Replica`]: the
//! Receiver, Validator, Applier and Supervisor threads) against raw SQLite,
//! measured in one run.
//!
//! Run with `cargo bench -p storage-adapter --bench runtime` (optionally
//! `-- FILTER...`: only cases whose id contains one of the filters; ids
//! `catchup-100k`, `catchup-1m`, `stages-100k`, `stages-1m`, `latency`,
//! `http-catchup-100k`, `http-latency`, `https-latency`, `serve-fanout`;
//! so `latency` also selects `http-latency` and `https-latency`, and
//! `catchup-100k` also `http-catchup-100k`).
//!
//! - `catchup-*`: a primary holding a backlog of 100,000 (1,000,000)
//!   single-row captured commits (`t(id INTEGER PRIMARY KEY, v INTEGER,
//!   pad TEXT)`, 40-byte pad; built with `synchronous=OFF`, it is not what
//!   is measured). Timed: `Replica::start_from_file` on a fresh replica
//!   file until `wait_for(head)` returns, with `Config::default()`. Against
//!   it: raw SQLite inserting the same rows with a prepared INSERT into a
//!   fresh file with the replica's pragmas (`journal_mode=WAL`,
//!   `synchronous=NORMAL`), in transactions of as many rows as one runtime
//!   segment holds (`Config::segment_bytes` of records). Ratio = raw time /
//!   runtime time (higher is better; target >= 0.8x). Every measured run is
//!   a child process (this binary re-executed with `AERODB_BENCH_CHILD`), so
//!   each reports its own peak RSS (`VmHWM` of `/proc/self/status`), its
//!   starting RSS, SQLite's own heap high-water mark (`sqlite3_status64`,
//!   page caches included) and the CPU time of each of its threads
//!   (`/proc/self/task/*/schedstat`: on CPU, waiting for a CPU). Runs
//!   alternate (ABBA), `CATCHUP_ROUNDS` each; the median is reported.
//! - `stages-*`: where the catch-up time goes. The runtime's own ports
//!   (`FileSource::fetch`, `WalStorage::persist`, `Segment::decode` +
//!   `validate`, `ApplyStorage::apply`) driven one after the other on one
//!   thread over the same backlog, each timed.
//! - `latency`: commit-to-visible latency at a steady 1,000 commits/s. A
//!   writer thread commits one row per transaction on the primary
//!   (`synchronous=NORMAL`) every 1 ms (an open-loop schedule: a late tick
//!   is not made up by a burst) and records the instant each commit
//!   returned, per CommitId. Visibility is taken from the runtime's
//!   published snapshot (`Replica::wait_until`, woken by the Supervisor's
//!   publish; the Supervisor publishes after the Applier committed and it
//!   recorded the event): the first instant a snapshot shows `applied >=`
//!   the CommitId. A second thread polls `aerodb_replica_position` in a
//!   read-only connection of the replica file every `FILE_POLL` (what a SQL
//!   reader sees, without the Supervisor's part); the received and
//!   validated CommitIds of the snapshots break the latency down.
//! - `http-catchup-100k`: the `catchup-100k` backlog through `aerodb serve`
//!   on loopback (`Replica::start_from_url`, one server process for the
//!   case, with a token file) against the file source
//!   (`Replica::start_from_file`) in the same run: each run a child
//!   process as above, alternating (ABBA), `CATCHUP_ROUNDS` each, median.
//!   Ratio = file time / HTTP time (higher is better; target >= 0.8x). The
//!   server's CPU per thread is read from `/proc/PID/task` around each
//!   HTTP run.
//! - `http-latency`: the `latency` case with the replica fed by `aerodb
//!   serve` on loopback (long-poll) instead of the primary file; the
//!   server's CPU over the run is reported too.
//! - `https-latency`: `http-latency` over HTTPS (`aerodb serve --tls-cert`
//!   with a certificate of a CA this bench makes; the replica trusts that
//!   CA, `HttpSource::open_with_ca`).
//! - `serve-fanout`: one server holding 1,000 long-polls (raw
//!   connections): its CPU while idle against the same server with no
//!   client, a new replica's catch-up of a 10,000-commit backlog with and
//!   without them, and how long one commit takes to answer all 1,000;
//!   then 1,000 `HttpSource` clients (the replica's transport, on threads
//!   of this process) long-polling as idle replicas do: the server's CPU
//!   and a new replica's catch-up meanwhile.
//!
//! The HTTP cases need the `aerodb` binary, which benches are not given
//! (`CARGO_BIN_EXE_*` exists for integration tests only). Before any HTTP
//! case runs, this bench runs `$CARGO build --release -p storage-adapter
//! --bin aerodb --message-format=json-render-diagnostics` in this
//! package's directory (`CARGO` is set by `cargo bench`; `cargo` if not)
//! and takes the `executable` cargo reports: it is built from the working
//! tree, into the same target directory (`CARGO_TARGET_DIR` is inherited),
//! and the build waits for cargo's lock if another build holds it. Set
//! `AERODB_BENCH_AERODB=PATH` to use a prebuilt binary instead.
//!
//! `AERODB_BENCH_SCALE` (default 1.0) scales the backlogs and the latency
//! run's duration, so CI can run it small. Databases live in a temporary
//! directory under `TMPDIR`. Nothing here asserts on timings: targets are
//! printed, not enforced. To profile the measured runtime runs, set
//! `AERODB_BENCH_WRAP` to a command prefix for them (see [`run_child`];
//! the runs of `http-catchup-100k` are numbered from 101). The server is
//! never wrapped: profile it with `perf record -p PID` (its PID is printed).
//! The latency run is in this process: to count SQLite's busy-handler
//! sleeps per thread, run the bench binary itself (`target/release/deps/
//! runtime-*  --bench latency`) under `strace -f -e trace=clock_nanosleep`.
//!
//! `cargo test --all-targets` also runs this binary, without `--bench`; it
//! then exits at once.

use replication::runtime::{Config, Storage, WalSource};
use replication::wal::{validate, ChainPosition, CommitId, Segment};
use rusqlite::{params, Connection, OpenFlags};
use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage_adapter::primary::{Primary, PrimaryWalReader};
use storage_adapter::replica::ReplicaDb;
use storage_adapter::runtime::{FileSource, Replica, SqliteStorage};

type R<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The environment variable that makes this binary a measured child.
const CHILD_ENV: &str = "AERODB_BENCH_CHILD";
/// Backlogs of the catch-up cases at scale 1: (id, commits).
const BACKLOGS: [(&str, f64); 2] = [("100k", 100_000.0), ("1m", 1_000_000.0)];
/// Measured runs per side of a catch-up case.
const CATCHUP_ROUNDS: usize = 3;
/// Duration of the latency run at scale 1.
const LATENCY_SECS: f64 = 10.0;
/// The writer's interval in the latency run (1,000 commits/s).
const WRITE_INTERVAL: Duration = Duration::from_millis(1);
/// Interval of the replica-file poller in the latency run.
const FILE_POLL: Duration = Duration::from_micros(250);
/// Generous deadlines: a run that needs them is broken, not slow.
const CATCHUP_DEADLINE: Duration = Duration::from_secs(3600);
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

const TABLE_SQL: &str =
    "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad TEXT NOT NULL)";
const INSERT_SQL: &str = "INSERT INTO t(id, v, pad) VALUES (?1, ?2, ?3)";

const TARGET_RATIO: f64 = 0.8;
const TARGET_RSS_ABOVE_CACHE_MIB: f64 = 64.0;
const TARGET_P99_MS: f64 = 20.0;
/// The backlog the HTTP catch-up case replays (an id of [`BACKLOGS`]).
const HTTP_BACKLOG: &str = "100k";
/// HTTP catch-up time against the file source's (file / HTTP).
const TARGET_HTTP_RATIO: f64 = 0.8;
/// Run numbers of `http-catchup-*` start after this (for `{run}`).
const HTTP_RUN_BASE: usize = 100;

struct Cfg {
    scale: f64,
    filters: Vec<String>,
    dir: tempfile::TempDir,
}

impl Cfg {
    fn wants(&self, id: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| id.contains(f.as_str()))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

// --------------------------------------------------------------- the rows

/// The row with key `id`: integer key, an integer, a 40-byte text. Built
/// without `format!`, so that the harness adds little to either side.
struct RowGen {
    pad: [u8; 40],
}

impl RowGen {
    fn new() -> RowGen {
        RowGen {
            pad: *b"pad-0000000000-abcdefghijklmnopqrstuvwxy",
        }
    }

    fn insert(&mut self, stmt: &mut rusqlite::CachedStatement<'_>, id: i64) -> R<()> {
        let mut d = id.unsigned_abs();
        for c in self.pad[4..14].iter_mut().rev() {
            *c = b'0' + (d % 10) as u8;
            d /= 10;
        }
        let pad = std::str::from_utf8(&self.pad)?;
        let v = id.wrapping_mul(2_654_435_761) % 1_000_003;
        let n = stmt.execute(params![id, v, pad])?;
        assert_eq!(n, 1);
        Ok(())
    }
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", ".aerodb-lock"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// A primary with `commits` single-row captured commits after the schema
/// commit; returns its head and the build time.
fn build_primary(path: &Path, commits: u64) -> R<(CommitId, Duration)> {
    let t = Instant::now();
    let primary = Primary::open(path)?;
    let conn = primary.connection();
    // The primary is not what is measured: build it fast.
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.execute_batch(TABLE_SQL)?;
    let schema = primary.replicate("t")?;
    {
        let mut gen = RowGen::new();
        let mut stmt = conn.prepare_cached(INSERT_SQL)?;
        for id in 1..=commits {
            gen.insert(&mut stmt, id as i64)?;
        }
    }
    let head = primary.head()?;
    assert_eq!(
        head,
        CommitId(schema.0 + commits),
        "one CommitId per commit"
    );
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    drop(primary);
    Ok((head, t.elapsed()))
}

// ------------------------------------------------------- process metering

fn proc_status_kb(field: &str) -> R<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(field) {
            if let Some(v) = rest.strip_prefix(':') {
                let kb = v.trim().trim_end_matches("kB").trim();
                return Ok(kb.parse()?);
            }
        }
    }
    Err(format!("/proc/self/status has no {field}").into())
}

/// SQLite's heap: (now, high-water mark) in bytes (page caches included).
fn sqlite_heap() -> (i64, i64) {
    let (mut cur, mut hi) = (0i64, 0i64);
    // SAFETY: sqlite3_status64 only writes the two integers it is given.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_status64(
            rusqlite::ffi::SQLITE_STATUS_MEMORY_USED,
            &mut cur,
            &mut hi,
            0,
        )
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        (cur, hi)
    } else {
        (-1, -1)
    }
}

/// CPU time of one thread: on a CPU, and runnable but waiting for one.
#[derive(Clone, Copy, Default, Debug)]
struct CpuTime {
    run: Duration,
    wait: Duration,
}

/// Each live thread of this process: tid -> (name, CPU time).
fn thread_times() -> BTreeMap<u32, (String, CpuTime)> {
    threads_of(std::process::id())
}

/// Each live thread of process `pid`: tid -> (name, CPU time).
fn threads_of(pid: u32) -> BTreeMap<u32, (String, CpuTime)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let name = if tid == pid {
            "main".to_string()
        } else {
            std::fs::read_to_string(entry.path().join("comm"))
                .map(|s| s.trim().replace([' ', ':', ';', '='], "_"))
                .unwrap_or_else(|_| "?".into())
        };
        let sched = std::fs::read_to_string(entry.path().join("schedstat")).unwrap_or_default();
        let mut f = sched
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        let run = Duration::from_nanos(f.next().unwrap_or(0));
        let wait = Duration::from_nanos(f.next().unwrap_or(0));
        out.insert(tid, (name, CpuTime { run, wait }));
    }
    out
}

/// Per thread name, the CPU time used between two [`thread_times`] (threads
/// that appeared in between count from zero).
fn cpu_between(
    before: &BTreeMap<u32, (String, CpuTime)>,
    after: &BTreeMap<u32, (String, CpuTime)>,
) -> BTreeMap<String, CpuTime> {
    let mut out: BTreeMap<String, CpuTime> = BTreeMap::new();
    for (tid, (name, t)) in after {
        let b = before.get(tid).map(|(_, b)| *b).unwrap_or_default();
        let e = out.entry(name.clone()).or_default();
        e.run += t.run.saturating_sub(b.run);
        e.wait += t.wait.saturating_sub(b.wait);
    }
    out
}

fn encode_threads(t: &BTreeMap<String, CpuTime>) -> String {
    t.iter()
        .map(|(n, c)| {
            format!(
                "{n}:{:.1}:{:.1}",
                c.run.as_secs_f64() * 1e3,
                c.wait.as_secs_f64() * 1e3
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_threads(s: &str) -> BTreeMap<String, CpuTime> {
    let mut out = BTreeMap::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        let mut p = item.split(':');
        let (Some(n), Some(r), Some(w)) = (p.next(), p.next(), p.next()) else {
            continue;
        };
        let ms = |v: &str| Duration::from_secs_f64(v.parse::<f64>().unwrap_or(0.0) / 1e3);
        out.insert(
            n.to_string(),
            CpuTime {
                run: ms(r),
                wait: ms(w),
            },
        );
    }
    out
}

/// SQLite connections open on these database files: each holds one file
/// descriptor on its main database file (`-wal`, `-shm` not counted).
fn open_connections(files: &[&Path]) -> usize {
    let wanted: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| std::fs::canonicalize(f).ok())
        .collect();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| wanted.contains(target))
        .count()
}

// ---------------------------------------------------------------- children

fn env_path(name: &str) -> R<PathBuf> {
    Ok(PathBuf::from(
        std::env::var_os(name).ok_or_else(|| format!("{name} is not set"))?,
    ))
}

fn env_u64(name: &str) -> R<u64> {
    let v = std::env::var(name).map_err(|_| format!("{name} is not set"))?;
    Ok(v.parse()?)
}

/// What a child prints on its last line: `CHILD key=value ...`.
fn report(fields: &[(&str, String)]) {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("CHILD {}", body.join(" "));
}

fn child_main(mode: &str) -> R<()> {
    match mode {
        "catchup" => child_catchup(),
        "raw" => child_raw(),
        other => Err(format!("{CHILD_ENV}={other:?}: expected catchup or raw").into()),
    }
}

/// One measured catch-up: the runtime from start to `wait_for(head)`, fed
/// by the primary file, or by `aerodb serve` at `AERODB_BENCH_URL` (token
/// read from `AERODB_BENCH_TOKEN_FILE` before the clock starts).
fn child_catchup() -> R<()> {
    let primary = env_path("AERODB_BENCH_PRIMARY")?;
    let replica_path = env_path("AERODB_BENCH_REPLICA")?;
    let head = CommitId(env_u64("AERODB_BENCH_HEAD")?);
    let http = match std::env::var("AERODB_BENCH_URL") {
        Ok(url) => {
            let token = std::fs::read_to_string(env_path("AERODB_BENCH_TOKEN_FILE")?)?;
            Some((url, token.trim().to_string()))
        }
        Err(_) => None,
    };
    let base_kb = proc_status_kb("VmRSS")?;
    let threads0 = thread_times();
    let t = Instant::now();
    let replica = match &http {
        Some((url, token)) => {
            Replica::start_from_url(&replica_path, url, token, Config::default())?
        }
        None => Replica::start_from_file(&replica_path, &primary, Config::default())?,
    };
    let position = replica.wait_for(head, Instant::now() + CATCHUP_DEADLINE)?;
    let elapsed = t.elapsed();
    // Before stop(): the runtime's threads are still there to be read.
    let threads = cpu_between(&threads0, &thread_times());
    let connections = open_connections(&[&replica_path, &primary]);
    let t_stop = Instant::now();
    let last = replica.stop();
    let stop = t_stop.elapsed();
    let hwm_kb = proc_status_kb("VmHWM")?;
    let (_, sqlite_peak) = sqlite_heap();
    assert_eq!(position.commit_id, head);
    assert!(!last.running);
    // Checks and settings, after the peak was read.
    let conn = Connection::open_with_flags(&replica_path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
    let (segments, max_records): (i64, i64) = conn.query_row(
        "SELECT count(*), max(last_commit_id - first_commit_id + 1) FROM aerodb_replica_segments WHERE first_commit_id > 1",
        [],
        |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.unwrap_or(0))),
    )?;
    let cache_size: i64 = conn.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    report(&[
        ("secs", format!("{:.6}", elapsed.as_secs_f64())),
        ("stop_secs", format!("{:.6}", stop.as_secs_f64())),
        ("base_kb", base_kb.to_string()),
        ("hwm_kb", hwm_kb.to_string()),
        ("sqlite_peak", sqlite_peak.to_string()),
        ("rows", rows.to_string()),
        ("segments", segments.to_string()),
        ("max_records", max_records.to_string()),
        ("cache_size", cache_size.to_string()),
        ("page_size", page_size.to_string()),
        ("connections", connections.to_string()),
        ("threads", encode_threads(&threads)),
    ]);
    Ok(())
}

/// One measured raw-SQLite run: the same rows, batched.
fn child_raw() -> R<()> {
    let path = env_path("AERODB_BENCH_REPLICA")?;
    let rows = env_u64("AERODB_BENCH_ROWS")?;
    let batch = env_u64("AERODB_BENCH_BATCH")?.max(1);
    let base_kb = proc_status_kb("VmRSS")?;
    let threads0 = thread_times();
    let t = Instant::now();
    let conn = Connection::open(&path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(TABLE_SQL)?;
    {
        let mut gen = RowGen::new();
        let mut stmt = conn.prepare_cached(INSERT_SQL)?;
        let mut id = 1u64;
        while id <= rows {
            let end = (id + batch - 1).min(rows);
            conn.execute_batch("BEGIN")?;
            for k in id..=end {
                gen.insert(&mut stmt, k as i64)?;
            }
            conn.execute_batch("COMMIT")?;
            id = end + 1;
        }
    }
    let elapsed = t.elapsed();
    let threads = cpu_between(&threads0, &thread_times());
    let hwm_kb = proc_status_kb("VmHWM")?;
    let (_, sqlite_peak) = sqlite_heap();
    let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
    assert_eq!(n as u64, rows);
    let cache_size: i64 = conn.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
    report(&[
        ("secs", format!("{:.6}", elapsed.as_secs_f64())),
        ("base_kb", base_kb.to_string()),
        ("hwm_kb", hwm_kb.to_string()),
        ("sqlite_peak", sqlite_peak.to_string()),
        ("rows", n.to_string()),
        ("cache_size", cache_size.to_string()),
        ("threads", encode_threads(&threads)),
    ]);
    Ok(())
}

type ChildReport = HashMap<String, String>;

/// The measured runtime runs under `AERODB_BENCH_WRAP`, if set: a command
/// prefix (whitespace-separated; `{run}` becomes the run's number), e.g.
/// `perf record -g -o /tmp/aerodb-{run}.data --` or `strace -f -c -o
/// /tmp/aerodb-{run}.strace`. Raw SQLite runs are never wrapped.
fn run_child(mode: &str, run: usize, env: &[(&str, String)]) -> R<ChildReport> {
    let exe = std::env::current_exe()?;
    let wrap = match std::env::var("AERODB_BENCH_WRAP") {
        Ok(w) if mode == "catchup" => w
            .split_whitespace()
            .map(|a| a.replace("{run}", &run.to_string()))
            .collect(),
        _ => Vec::new(),
    };
    let mut cmd = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.env(CHILD_ENV, mode)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("child {mode} failed ({}): {stdout}", out.status).into());
    }
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("CHILD "))
        .ok_or_else(|| format!("child {mode} printed no result: {stdout}"))?;
    Ok(line
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn field<T: std::str::FromStr>(r: &ChildReport, k: &str) -> R<T>
where
    T::Err: Error + Send + Sync + 'static,
{
    Ok(r.get(k)
        .ok_or_else(|| format!("child report lacks {k}"))?
        .parse()?)
}

// ------------------------------------------------------------------ stats

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
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

fn mib(kb: f64) -> f64 {
    kb / 1024.0
}

// ---------------------------------------------------------------- catch-up

/// A primary with a backlog, built once for the cases that share it.
struct Backlog {
    id: &'static str,
    path: PathBuf,
    commits: u64,
    head: CommitId,
    /// Records of a full segment of `Config::default().segment_bytes`.
    per_segment: u64,
    segment_bytes: usize,
}

fn backlog(cfg: &Cfg, id: &'static str, nominal: f64) -> R<Backlog> {
    let commits = ((nominal * cfg.scale).round() as u64).max(1000);
    let path = cfg.path(&format!("primary-{id}.db"));
    eprintln!("[{id}] building a primary with {commits} single-row captured commits ...");
    let (head, build) = build_primary(&path, commits)?;
    eprintln!(
        "[{id}] built in {:.1} s ({} commits/s, synchronous=OFF)",
        build.as_secs_f64(),
        thousands(commits as f64 / build.as_secs_f64())
    );
    let segment_bytes = Config::default().segment_bytes;
    let reader = PrimaryWalReader::open(&path)?;
    // Commit 1 is the schema record; the row commits follow.
    let per_segment = reader.records(CommitId(2), segment_bytes)?.len() as u64;
    Ok(Backlog {
        id,
        path,
        commits,
        head,
        per_segment,
        segment_bytes,
    })
}

struct CatchupResult {
    id: &'static str,
    commits: u64,
    per_segment: u64,
    segment_bytes: usize,
    segments: u64,
    runtime_secs: Vec<f64>,
    raw_secs: Vec<f64>,
    /// Peak RSS of each runtime run; of the raw runs (max).
    runtime_hwm_kb: Vec<u64>,
    raw_hwm_kb: u64,
    base_kb: u64,
    sqlite_peak: i64,
    raw_sqlite_peak: i64,
    cache_size: i64,
    page_size: i64,
    /// SQLite connections the running replica held (on both files).
    connections: u64,
    stop_secs: f64,
    /// Threads of the median runtime run.
    threads: BTreeMap<String, CpuTime>,
    raw_threads: BTreeMap<String, CpuTime>,
}

impl CatchupResult {
    fn runtime(&self) -> f64 {
        median(&self.runtime_secs)
    }
    fn raw(&self) -> f64 {
        median(&self.raw_secs)
    }
    fn ratio(&self) -> f64 {
        self.raw() / self.runtime()
    }
    /// The highest and lowest peak RSS of the runtime's runs.
    fn hwm_kb(&self) -> (u64, u64) {
        let v = &self.runtime_hwm_kb;
        (
            v.iter().copied().max().unwrap_or(0),
            v.iter().copied().min().unwrap_or(0),
        )
    }
    /// SQLite's page cache bound: `cache_size` per connection times the
    /// connections the running replica held (counted from its open files:
    /// state store, WAL storage, segment reader and applier on the replica,
    /// the source's reader on the primary).
    fn cache_kb(&self) -> f64 {
        cache_kb(self.cache_size, self.page_size) * self.connections as f64
    }
}

fn cache_kb(cache_size: i64, page_size: i64) -> f64 {
    if cache_size < 0 {
        -cache_size as f64
    } else {
        (cache_size * page_size) as f64 / 1024.0
    }
}

fn catchup_case(cfg: &Cfg, b: &Backlog) -> R<CatchupResult> {
    let id = b.id;
    let mut res = CatchupResult {
        id,
        commits: b.commits,
        per_segment: b.per_segment,
        segment_bytes: b.segment_bytes,
        segments: 0,
        runtime_secs: Vec::new(),
        raw_secs: Vec::new(),
        runtime_hwm_kb: Vec::new(),
        raw_hwm_kb: 0,
        base_kb: 0,
        sqlite_peak: 0,
        raw_sqlite_peak: 0,
        cache_size: 0,
        page_size: 0,
        connections: 0,
        stop_secs: 0.0,
        threads: BTreeMap::new(),
        raw_threads: BTreeMap::new(),
    };
    let mut runtime_threads = Vec::new();
    let mut raw_threads = Vec::new();
    let mut run = 0;
    for round in 0..CATCHUP_ROUNDS {
        let sides: [bool; 2] = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for runtime in sides {
            run += 1;
            let replica = cfg.path(&format!("replica-{id}-{run}.db"));
            if runtime {
                eprintln!("[catchup-{id}] round {round}: runtime ...");
                let r = run_child(
                    "catchup",
                    run,
                    &[
                        ("AERODB_BENCH_PRIMARY", b.path.display().to_string()),
                        ("AERODB_BENCH_REPLICA", replica.display().to_string()),
                        ("AERODB_BENCH_HEAD", b.head.0.to_string()),
                    ],
                )?;
                let secs: f64 = field(&r, "secs")?;
                let rows: u64 = field(&r, "rows")?;
                assert_eq!(rows, b.commits, "the replica holds every row");
                eprintln!(
                    "[catchup-{id}]   {:.3} s, {} commits/s, peak RSS {:.1} MiB",
                    secs,
                    thousands(b.commits as f64 / secs),
                    mib(field::<f64>(&r, "hwm_kb")?)
                );
                res.runtime_secs.push(secs);
                res.runtime_hwm_kb.push(field(&r, "hwm_kb")?);
                res.base_kb = field(&r, "base_kb")?;
                res.sqlite_peak = res.sqlite_peak.max(field(&r, "sqlite_peak")?);
                res.cache_size = field(&r, "cache_size")?;
                res.page_size = field(&r, "page_size")?;
                res.connections = field(&r, "connections")?;
                res.segments = field(&r, "segments")?;
                res.stop_secs = res.stop_secs.max(field(&r, "stop_secs")?);
                runtime_threads.push((secs, decode_threads(&r["threads"])));
            } else {
                eprintln!("[catchup-{id}] round {round}: raw SQLite ...");
                let r = run_child(
                    "raw",
                    run,
                    &[
                        ("AERODB_BENCH_REPLICA", replica.display().to_string()),
                        ("AERODB_BENCH_ROWS", b.commits.to_string()),
                        ("AERODB_BENCH_BATCH", b.per_segment.to_string()),
                    ],
                )?;
                let secs: f64 = field(&r, "secs")?;
                eprintln!(
                    "[catchup-{id}]   {:.3} s, {} rows/s, peak RSS {:.1} MiB",
                    secs,
                    thousands(b.commits as f64 / secs),
                    mib(field::<f64>(&r, "hwm_kb")?)
                );
                res.raw_secs.push(secs);
                res.raw_hwm_kb = res.raw_hwm_kb.max(field(&r, "hwm_kb")?);
                res.raw_sqlite_peak = res.raw_sqlite_peak.max(field(&r, "sqlite_peak")?);
                raw_threads.push((secs, decode_threads(&r["threads"])));
            }
            remove_db(&replica);
        }
    }
    let pick_median = |mut v: Vec<(f64, BTreeMap<String, CpuTime>)>| {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = v.len();
        v.swap_remove(n / 2).1
    };
    res.threads = pick_median(runtime_threads);
    res.raw_threads = pick_median(raw_threads);
    Ok(res)
}

fn print_threads(label: &str, wall: f64, threads: &BTreeMap<String, CpuTime>) {
    let mut parts = Vec::new();
    let mut total = 0.0;
    for (name, t) in threads {
        let run = t.run.as_secs_f64();
        total += run;
        if run < 0.0005 * wall && t.wait.as_secs_f64() < 0.0005 * wall {
            continue;
        }
        parts.push(format!(
            "{name} {:.0}% (+{:.0}% runnable)",
            run / wall * 100.0,
            t.wait.as_secs_f64() / wall * 100.0
        ));
    }
    println!(
        "    {label}: CPU {:.2} cores over {:.2} s: {}",
        total / wall,
        wall,
        parts.join(", ")
    );
}

fn print_catchup(r: &CatchupResult) {
    let commits = r.commits as f64;
    println!();
    println!(
        "catchup-{}: {} single-row commits; segments of <= {} B hold {} records ({} segments persisted); {CATCHUP_ROUNDS} alternating runs per side, median",
        r.id,
        thousands(commits),
        r.segment_bytes,
        r.per_segment,
        r.segments,
    );
    let fmt_runs = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "    runtime  start_from_file -> wait_for(head): {:>8.3} s  {:>10} commits/s {:>10} rows/s   runs [{}] s; stop() {:.0} ms",
        r.runtime(),
        thousands((commits + 1.0) / r.runtime()),
        thousands(commits / r.runtime()),
        fmt_runs(&r.runtime_secs),
        r.stop_secs * 1e3
    );
    println!(
        "    raw SQLite, {:>6}-row transactions:      {:>8.3} s  {:>10} rows/s {:>23}   runs [{}] s",
        r.per_segment,
        r.raw(),
        thousands(commits / r.raw()),
        "",
        fmt_runs(&r.raw_secs),
    );
    println!(
        "    ratio raw/runtime {:.2}x (target >= {TARGET_RATIO:.1}x: {})",
        r.ratio(),
        verdict(r.ratio() >= TARGET_RATIO)
    );
    print_threads("runtime", r.runtime(), &r.threads);
    print_threads("raw    ", r.raw(), &r.raw_threads);
    println!(
        "    peak RSS: runtime {:.1} MiB (runs {:.1}..{:.1}; process start {:.1} MiB; SQLite heap peak {:.1} MiB), raw SQLite {:.1} MiB (SQLite heap peak {:.1} MiB); cache_size {} x {} connections = {:.1} MiB",
        mib(r.hwm_kb().0 as f64),
        mib(r.hwm_kb().1 as f64),
        mib(r.hwm_kb().0 as f64),
        mib(r.base_kb as f64),
        r.sqlite_peak as f64 / 1048576.0,
        mib(r.raw_hwm_kb as f64),
        r.raw_sqlite_peak as f64 / 1048576.0,
        r.cache_size,
        r.connections,
        mib(r.cache_kb()),
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISS"
    }
}

// -------------------------------------------------------------------- HTTP

/// The `aerodb` binary: `AERODB_BENCH_AERODB`, or built by cargo now (see
/// the module documentation).
fn aerodb_binary() -> R<PathBuf> {
    if let Some(p) = std::env::var_os("AERODB_BENCH_AERODB") {
        return Ok(PathBuf::from(p));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let args = [
        "build",
        "--release",
        "-p",
        "storage-adapter",
        "--bin",
        "aerodb",
        "--message-format=json-render-diagnostics",
    ];
    eprintln!(
        "[http] building the server: {} {} ...",
        Path::new(&cargo).display(),
        args.join(" ")
    );
    let t = Instant::now();
    let out = Command::new(&cargo)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("building aerodb failed ({})", out.status).into());
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["name"] == "aerodb"
                && m["target"]["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or("cargo reported no executable for the aerodb binary")?;
    eprintln!(
        "[http] server binary {} ({:.1} s)",
        exe.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(exe)
}

/// A bearer token in a file, for the server and its clients.
fn write_token(cfg: &Cfg) -> R<PathBuf> {
    let path = cfg.path("token.txt");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    std::fs::write(
        &path,
        format!("aerodb-bench-{:x}-{nanos:x}\n", std::process::id()),
    )?;
    Ok(path)
}

/// A running `aerodb serve` child process, killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    /// Kept open: the server's stdout stays a live pipe.
    _stdout: BufReader<ChildStdout>,
    url: String,
}

impl Server {
    /// Starts `exe serve` on the primary `db`, on any free loopback port,
    /// and waits for its "serving" line.
    fn start(exe: &Path, db: &Path, token_file: &Path) -> R<Server> {
        Server::start_with(exe, db, token_file, &[])
    }

    /// [`start`](Server::start) with more flags (`--tls-cert`, ...).
    fn start_with(exe: &Path, db: &Path, token_file: &Path, extra: &[String]) -> R<Server> {
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--db")
            .arg(db)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--token-file")
            .arg(token_file)
            .args(extra)
            // Warnings only: an access-log line per request would flood
            // the report and cost the server time it measures.
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("stdout is piped")?);
        let mut line = String::new();
        let n = stdout.read_line(&mut line)?;
        // Whatever the line says, from here on the child is killed on drop.
        let mut server = Server {
            child,
            _stdout: stdout,
            url: String::new(),
        };
        if n == 0 {
            let status = server.child.wait()?;
            return Err(format!("{} serve ended ({status}) before serving", exe.display()).into());
        }
        server.url = line
            .trim_end()
            .strip_prefix("aerodb serve: serving the WAL of ")
            .and_then(|rest| rest.rsplit_once(" on "))
            .map(|(_, url)| url.to_string())
            .filter(|url| {
                url.starts_with("http://127.0.0.1:") || url.starts_with("https://127.0.0.1:")
            })
            .ok_or_else(|| format!("aerodb serve printed {line:?}, not its serving line"))?;
        eprintln!(
            "[http] aerodb serve (pid {}) on {}",
            server.pid(),
            server.url
        );
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's threads by name: the tokio runtime's workers and
    /// blocking threads (`aerodb-serve`), the head watcher
    /// (`aerodb-serve-head`), the main thread (`aerodb`).
    fn threads(&self) -> BTreeMap<u32, (String, CpuTime)> {
        threads_of(self.pid())
    }

    /// SIGKILL and reap.
    fn kill(mut self) -> R<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time per thread name.
type Threads = BTreeMap<String, CpuTime>;

/// One side of the HTTP catch-up case, its runs in order.
#[derive(Default)]
struct SideRuns {
    secs: Vec<f64>,
    hwm_kb: Vec<u64>,
    /// (secs, the child's threads, the server's threads) per run.
    threads: Vec<(f64, Threads, Threads)>,
    segments: u64,
}

impl SideRuns {
    fn median(&self) -> f64 {
        median(&self.secs)
    }
    /// The threads of the median run: (child, server).
    fn median_threads(&self) -> (Threads, Threads) {
        let mut v: Vec<_> = self.threads.iter().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v.get(v.len() / 2)
            .map(|(_, c, s)| (c.clone(), s.clone()))
            .unwrap_or_default()
    }
}

struct HttpCatchupResult {
    id: &'static str,
    commits: u64,
    per_segment: u64,
    url: String,
    http: SideRuns,
    file: SideRuns,
}

impl HttpCatchupResult {
    /// File time / HTTP time: higher is better.
    fn ratio(&self) -> f64 {
        self.file.median() / self.http.median()
    }
}

fn http_catchup_case(
    cfg: &Cfg,
    b: &Backlog,
    exe: &Path,
    token_file: &Path,
) -> R<HttpCatchupResult> {
    let id = b.id;
    let server = Server::start(exe, &b.path, token_file)?;
    let mut res = HttpCatchupResult {
        id,
        commits: b.commits,
        per_segment: b.per_segment,
        url: server.url.clone(),
        http: SideRuns::default(),
        file: SideRuns::default(),
    };
    let mut run = HTTP_RUN_BASE;
    for round in 0..CATCHUP_ROUNDS {
        let sides: [bool; 2] = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for http in sides {
            run += 1;
            let replica = cfg.path(&format!("http-replica-{id}-{run}.db"));
            let mut env = vec![
                ("AERODB_BENCH_PRIMARY", b.path.display().to_string()),
                ("AERODB_BENCH_REPLICA", replica.display().to_string()),
                ("AERODB_BENCH_HEAD", b.head.0.to_string()),
            ];
            let label = if http { "HTTP" } else { "file" };
            if http {
                env.push(("AERODB_BENCH_URL", server.url.clone()));
                env.push(("AERODB_BENCH_TOKEN_FILE", token_file.display().to_string()));
            }
            eprintln!("[http-catchup-{id}] round {round}: {label} ...");
            let server0 = server.threads();
            let r = run_child("catchup", run, &env)?;
            let server_cpu = cpu_between(&server0, &server.threads());
            let secs: f64 = field(&r, "secs")?;
            let rows: u64 = field(&r, "rows")?;
            assert_eq!(rows, b.commits, "the replica holds every row");
            eprintln!(
                "[http-catchup-{id}]   {label}: {:.3} s, {} commits/s, peak RSS {:.1} MiB",
                secs,
                thousands((b.commits + 1) as f64 / secs),
                mib(field::<f64>(&r, "hwm_kb")?)
            );
            let side = if http { &mut res.http } else { &mut res.file };
            side.secs.push(secs);
            side.hwm_kb.push(field(&r, "hwm_kb")?);
            side.segments = field(&r, "segments")?;
            side.threads
                .push((secs, decode_threads(&r["threads"]), server_cpu));
            remove_db(&replica);
        }
    }
    server.kill()?;
    Ok(res)
}

fn print_http_catchup(r: &HttpCatchupResult) {
    let commits = (r.commits + 1) as f64;
    println!();
    println!(
        "http-catchup-{}: {} single-row commits ({} records per segment; {} segments persisted over HTTP, {} from the file) through aerodb serve at {}; {CATCHUP_ROUNDS} alternating runs per side, median",
        r.id,
        thousands(r.commits as f64),
        r.per_segment,
        r.http.segments,
        r.file.segments,
        r.url,
    );
    let fmt_runs = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (label, side) in [
        ("HTTP start_from_url  -> wait_for(head)", &r.http),
        ("file start_from_file -> wait_for(head)", &r.file),
    ] {
        println!(
            "    {label}: {:>8.3} s  {:>10} commits/s   runs [{}] s; peak RSS {:.1} MiB (max of runs)",
            side.median(),
            thousands(commits / side.median()),
            fmt_runs(&side.secs),
            mib(side.hwm_kb.iter().copied().max().unwrap_or(0) as f64),
        );
    }
    println!(
        "    ratio file/HTTP {:.2}x (target >= {TARGET_HTTP_RATIO:.1}x: {})",
        r.ratio(),
        verdict(r.ratio() >= TARGET_HTTP_RATIO)
    );
    let (http_threads, server_threads) = r.http.median_threads();
    let (file_threads, _) = r.file.median_threads();
    print_threads("HTTP replica", r.http.median(), &http_threads);
    print_threads("HTTP server ", r.http.median(), &server_threads);
    print_threads("file replica", r.file.median(), &file_threads);
}

// ------------------------------------------------------------------ stages

struct StageResult {
    id: &'static str,
    segments: u64,
    fetch: Duration,
    persist: Duration,
    decode_validate: Duration,
    apply: Duration,
    total: Duration,
    bytes: usize,
}

/// The runtime's ports driven one after the other on this thread.
fn stages_case(cfg: &Cfg, b: &Backlog) -> R<StageResult> {
    eprintln!("[stages-{}] driving the ports sequentially ...", b.id);
    let replica = cfg.path(&format!("stages-{}.db", b.id));
    let failure = |f: replication::runtime::Failure| f.to_string();
    let t_total = Instant::now();
    let mut source = FileSource::open(&b.path)?;
    let mut position: ChainPosition = ReplicaDb::open(&replica)?.init(source.generation())?;
    let storage = SqliteStorage::new(&replica);
    let mut wal = storage.wal_storage().map_err(failure)?;
    let mut apply = storage.apply_storage().map_err(failure)?;
    let mut res = StageResult {
        id: b.id,
        segments: 0,
        fetch: Duration::ZERO,
        persist: Duration::ZERO,
        decode_validate: Duration::ZERO,
        apply: Duration::ZERO,
        total: Duration::ZERO,
        bytes: 0,
    };
    let mut next = CommitId(1);
    loop {
        let t0 = Instant::now();
        let Some(f) = source.fetch(next, b.segment_bytes).map_err(failure)? else {
            break;
        };
        let t1 = Instant::now();
        wal.persist(f.first, f.last, &f.bytes).map_err(failure)?;
        let t2 = Instant::now();
        let segment = validate(Segment::decode(&f.bytes)?, &position)?;
        let t3 = Instant::now();
        position = apply.apply(&segment).map_err(failure)?;
        let t4 = Instant::now();
        res.fetch += t1 - t0;
        res.persist += t2 - t1;
        res.decode_validate += t3 - t2;
        res.apply += t4 - t3;
        res.segments += 1;
        res.bytes += f.bytes.len();
        next = f.last.next();
    }
    res.total = t_total.elapsed();
    assert_eq!(position.commit_id, b.head);
    drop((wal, apply, source));
    remove_db(&replica);
    Ok(res)
}

fn print_stages(s: &StageResult, commits: u64) {
    let total = s.total.as_secs_f64();
    println!();
    println!(
        "stages-{}: the runtime's ports one after the other on one thread, {} segments, {} B/record",
        s.id,
        s.segments,
        s.bytes / commits.max(1) as usize
    );
    for (name, d) in [
        ("FileSource::fetch (read primary + encode)", s.fetch),
        ("WalStorage::persist (segment blob INSERT)", s.persist),
        ("Segment::decode + validate", s.decode_validate),
        ("ApplyStorage::apply (rows + position + Applied)", s.apply),
    ] {
        let secs = d.as_secs_f64();
        println!(
            "    {name:<48} {:>8.3} s {:>5.1}%  {:>6.2} us/commit",
            secs,
            secs / total * 100.0,
            secs * 1e6 / commits as f64
        );
    }
    println!(
        "    {:<48} {:>8.3} s           {:>6.2} us/commit",
        "total (incl. opening)",
        total,
        total * 1e6 / commits as f64
    );
}

// ----------------------------------------------------------------- latency

/// One published snapshot's CommitIds as the observer saw them.
#[derive(Clone, Copy)]
struct Seen {
    at: Instant,
    received: CommitId,
    validated: CommitId,
    applied: CommitId,
}

struct Written {
    commit: CommitId,
    at: Instant,
    took: Duration,
    late: Duration,
}

struct LatencyResult {
    /// `latency`, `http-latency` or `https-latency`.
    id: &'static str,
    secs: f64,
    commits: usize,
    /// Latencies in ms, sorted: (label, values).
    series: Vec<(&'static str, Vec<f64>)>,
    write_ms: Vec<f64>,
    late_ticks: usize,
    threads: BTreeMap<String, CpuTime>,
    wall: f64,
    segments: u64,
    max_records: i64,
    /// HTTP: the server's URL and CPU per thread over the run.
    server: Option<(String, BTreeMap<String, CpuTime>)>,
}

/// For each write, the first observation (sorted by time, monotonic
/// CommitIds) whose `key` reaches its CommitId: latency in ms, sorted.
fn latencies<T>(
    writes: &[Written],
    obs: &[(Instant, T)],
    key: impl Fn(&T) -> CommitId,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(writes.len());
    let mut j = 0;
    for w in writes {
        while j < obs.len() && key(&obs[j].1) < w.commit {
            j += 1;
        }
        if j == obs.len() {
            break;
        }
        let at = obs[j].0;
        out.push(at.saturating_duration_since(w.at).as_secs_f64() * 1e3);
    }
    out.sort_by(f64::total_cmp);
    out
}

/// The `latency` case; with `http` (the `aerodb` binary and a token
/// file), `http-latency`: the replica fed by `aerodb serve` on the primary;
/// with `tls` too, `https-latency`: over HTTPS (a test CA).
fn latency_case(cfg: &Cfg, http: Option<(&Path, &Path)>, tls: Option<&Pki>) -> R<LatencyResult> {
    let id = match (http.is_some(), tls.is_some()) {
        (false, _) => "latency",
        (true, false) => "http-latency",
        (true, true) => "https-latency",
    };
    let duration = Duration::from_secs_f64((LATENCY_SECS * cfg.scale).max(1.0));
    let ppath = cfg.path(&format!("{id}-primary.db"));
    let rpath = cfg.path(&format!("{id}-replica.db"));
    eprintln!(
        "[{id}] {:.1} s at one commit per {} us ...",
        duration.as_secs_f64(),
        WRITE_INTERVAL.as_micros()
    );
    let head0 = {
        let primary = Primary::open(&ppath)?;
        primary
            .connection()
            .pragma_update(None, "synchronous", "NORMAL")?;
        primary.connection().execute_batch(TABLE_SQL)?;
        primary.replicate("t")?
    };
    let server = match http {
        Some((exe, token_file)) => {
            let flags = tls.map(Pki::serve_flags).unwrap_or_default();
            let server = Server::start_with(exe, &ppath, token_file, &flags)?;
            let token = std::fs::read_to_string(token_file)?;
            Some((server, token.trim().to_string()))
        }
        None => None,
    };
    let replica = match &server {
        Some((server, token)) => {
            let source = storage_adapter::http_source::HttpSource::open_with_ca(
                &server.url,
                token,
                tls.map(|t| t.ca.as_path()),
            )
            .map_err(|f| f.to_string())?;
            let generation = source.generation();
            Replica::start(&rpath, Box::new(source), generation, Config::default())?
        }
        None => Replica::start_from_file(&rpath, &ppath, Config::default())?,
    };
    replica.wait_for(head0, Instant::now() + SETTLE_DEADLINE)?;
    // Settle into the idle state (polling for new WAL) before writing.
    std::thread::sleep(Duration::from_millis(200));

    let stop_poll = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = Arc::clone(&stop_poll);
        let rpath = rpath.clone();
        std::thread::Builder::new()
            .name("bench-poller".into())
            .spawn(move || -> R<Vec<(Instant, CommitId)>> {
                let conn = Connection::open_with_flags(&rpath, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                let mut stmt = conn.prepare(
                    "SELECT applied_commit_id FROM aerodb_replica_position WHERE id = 1",
                )?;
                let mut seen = Vec::new();
                let mut last = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let a: i64 = stmt.query_row([], |r| r.get(0))?;
                    if a != last {
                        seen.push((Instant::now(), CommitId(a as u64)));
                        last = a;
                    }
                    std::thread::sleep(FILE_POLL);
                }
                Ok(seen)
            })?
    };
    let threads0 = thread_times();
    let server0 = server.as_ref().map(|(s, _)| s.threads());
    let t_start = Instant::now();
    let writer = {
        let ppath = ppath.clone();
        std::thread::Builder::new()
            .name("bench-writer".into())
            .spawn(move || -> R<Vec<Written>> {
                let primary = Primary::open(&ppath)?;
                let conn = primary.connection();
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                let mut stmt = conn.prepare_cached(INSERT_SQL)?;
                let mut gen = RowGen::new();
                let mut out = Vec::new();
                let start = Instant::now();
                for i in 0u32.. {
                    let tick = start + WRITE_INTERVAL * i;
                    if tick >= start + duration {
                        break;
                    }
                    let now = Instant::now();
                    if tick > now {
                        std::thread::sleep(tick - now);
                    }
                    let t0 = Instant::now();
                    gen.insert(&mut stmt, i64::from(i) + 1)?;
                    let at = Instant::now();
                    let commit = primary
                        .last_commit_id()?
                        .ok_or("the writer's connection committed")?;
                    out.push(Written {
                        commit,
                        at,
                        took: at - t0,
                        late: t0.saturating_duration_since(tick),
                    });
                }
                Ok(out)
            })?
    };
    // The observer: every published snapshot whose CommitIds moved.
    let mut seen: Vec<Seen> = Vec::new();
    let mut last = replica.view().progress;
    let mut last_applied = replica.view().applied.commit_id;
    let mut writes: Option<Vec<Written>> = None;
    let mut writer = Some(writer);
    let hard_end = t_start + duration + SETTLE_DEADLINE;
    loop {
        let _ = replica.wait_until(Instant::now() + Duration::from_millis(50), |s| {
            if s.progress != last || s.applied.commit_id != last_applied {
                last = s.progress;
                last_applied = s.applied.commit_id;
                seen.push(Seen {
                    at: Instant::now(),
                    received: s.progress.received,
                    validated: s.progress.validated,
                    applied: s.applied.commit_id,
                });
                true
            } else {
                !s.running
            }
        });
        if writer.as_ref().is_some_and(|w| w.is_finished()) {
            let w = writer.take().expect("checked above");
            writes = Some(w.join().map_err(|_| "the writer panicked")??);
        }
        if let Some(w) = &writes {
            let final_commit = w.last().map_or(head0, |w| w.commit);
            if last_applied >= final_commit {
                break;
            }
        }
        if Instant::now() > hard_end || !replica.view().running {
            return Err(
                format!("the replica did not catch up: {:?}", replica.view().global).into(),
            );
        }
    }
    let wall = t_start.elapsed().as_secs_f64();
    let threads = cpu_between(&threads0, &thread_times());
    let server_cpu = match (&server, &server0) {
        (Some((s, _)), Some(t0)) => Some((s.url.clone(), cpu_between(t0, &s.threads()))),
        _ => None,
    };
    // Let the poller see the last position.
    std::thread::sleep(Duration::from_millis(20));
    stop_poll.store(true, Ordering::Relaxed);
    let file_seen = poller.join().map_err(|_| "the poller panicked")??;
    let writes = writes.expect("the loop ends after the writer finished");
    let segments_info = {
        let conn = Connection::open_with_flags(&rpath, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.query_row(
            "SELECT count(*), max(last_commit_id - first_commit_id + 1) FROM aerodb_replica_segments WHERE first_commit_id > ?1",
            [head0.0 as i64],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?.unwrap_or(0))),
        )?
    };
    let final_snapshot = replica.stop();
    assert!(!final_snapshot.running);
    if let Some((server, _)) = server {
        server.kill()?;
    }

    let obs: Vec<(Instant, Seen)> = seen.iter().map(|s| (s.at, *s)).collect();
    let series = vec![
        (
            "applied, published snapshot (wait_until)",
            latencies(&writes, &obs, |s| s.applied),
        ),
        (
            "applied, replica file (aerodb_replica_position)",
            latencies(&writes, &file_seen, |c| *c),
        ),
        (
            "received (persisted), snapshot",
            latencies(&writes, &obs, |s| s.received),
        ),
        (
            "validated, snapshot",
            latencies(&writes, &obs, |s| s.validated),
        ),
    ];
    let mut write_ms: Vec<f64> = writes.iter().map(|w| w.took.as_secs_f64() * 1e3).collect();
    write_ms.sort_by(f64::total_cmp);
    let late_ticks = writes.iter().filter(|w| w.late > WRITE_INTERVAL).count();
    let secs = match (writes.first(), writes.last()) {
        (Some(a), Some(b)) => (b.at - a.at).as_secs_f64(),
        _ => 0.0,
    };
    remove_db(&ppath);
    remove_db(&rpath);
    Ok(LatencyResult {
        id,
        secs,
        commits: writes.len(),
        series,
        write_ms,
        late_ticks,
        threads,
        wall,
        segments: segments_info.0,
        max_records: segments_info.1,
        server: server_cpu,
    })
}

fn print_latency(l: &LatencyResult) {
    println!();
    println!(
        "{}: {} commits in {:.2} s = {} commits/s (target 1,000); {} ticks started > 1 ms late; primary commit took p50 {:.3} / p99 {:.3} / max {:.3} ms; {} segments since the start (largest {} records)",
        l.id,
        l.commits,
        l.secs,
        thousands(l.commits as f64 / l.secs.max(1e-9)),
        l.late_ticks,
        quantile(&l.write_ms, 0.5),
        quantile(&l.write_ms, 0.99),
        quantile(&l.write_ms, 1.0),
        l.segments,
        l.max_records,
    );
    println!(
        "    {:<50} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "commit -> ... (ms)", "p50", "p90", "p99", "max", "n"
    );
    for (label, v) in &l.series {
        println!(
            "    {label:<50} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>7}",
            quantile(v, 0.5),
            quantile(v, 0.9),
            quantile(v, 0.99),
            quantile(v, 1.0),
            v.len()
        );
    }
    print_threads("threads", l.wall, &l.threads);
    if let Some((url, server)) = &l.server {
        print_threads(&format!("aerodb serve at {url}"), l.wall, server);
    }
}

// -------------------------------------------------------------------- main

fn main() -> R<()> {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        return child_main(&mode);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "runtime: benchmark, not a test; skipped (run `cargo bench -p storage-adapter --bench runtime`)"
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
    let cfg = Cfg {
        scale,
        filters: args.into_iter().filter(|a| !a.starts_with('-')).collect(),
        dir: tempfile::Builder::new()
            .prefix("aerodb-bench-runtime-")
            .tempdir()?,
    };
    println!(
        "AeroDB threaded replica runtime vs raw SQLite {} (scale {scale}, {} CPUs; dir {})",
        rusqlite::version(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cfg.dir.path().display()
    );
    // The HTTP cases' server binary, built before any case runs.
    let http_catchup_id = format!("http-catchup-{HTTP_BACKLOG}");
    let http = if cfg.wants(&http_catchup_id)
        || cfg.wants("http-latency")
        || cfg.wants("https-latency")
        || cfg.wants("serve-fanout")
    {
        Some((aerodb_binary()?, write_token(&cfg)?))
    } else {
        None
    };
    let mut catchups = Vec::new();
    let mut stages = Vec::new();
    let mut http_catchups = Vec::new();
    for (id, nominal) in BACKLOGS {
        let (want_catchup, want_stages, want_http) = (
            cfg.wants(&format!("catchup-{id}")),
            cfg.wants(&format!("stages-{id}")),
            id == HTTP_BACKLOG && cfg.wants(&http_catchup_id),
        );
        if !want_catchup && !want_stages && !want_http {
            continue;
        }
        let b = backlog(&cfg, id, nominal)?;
        if want_catchup {
            let r = catchup_case(&cfg, &b)?;
            print_catchup(&r);
            catchups.push(r);
        }
        if want_stages {
            let s = stages_case(&cfg, &b)?;
            print_stages(&s, b.commits);
            stages.push(s);
        }
        if let (true, Some((exe, token_file))) = (want_http, &http) {
            let r = http_catchup_case(&cfg, &b, exe, token_file)?;
            print_http_catchup(&r);
            http_catchups.push(r);
        }
        remove_db(&b.path);
    }
    let mut latencies_run = Vec::new();
    if cfg.wants("latency") {
        let l = latency_case(&cfg, None, None)?;
        print_latency(&l);
        latencies_run.push(l);
    }
    if let (true, Some((exe, token_file))) = (cfg.wants("http-latency"), &http) {
        let l = latency_case(&cfg, Some((exe, token_file)), None)?;
        print_latency(&l);
        latencies_run.push(l);
    }
    if let (true, Some((exe, token_file))) = (cfg.wants("https-latency"), &http) {
        let pki = Pki::new(cfg.dir.path())?;
        let l = latency_case(&cfg, Some((exe, token_file)), Some(&pki))?;
        print_latency(&l);
        latencies_run.push(l);
    }
    if let (true, Some((exe, token_file))) = (cfg.wants("serve-fanout"), &http) {
        fanout_case(&cfg, exe, token_file)?;
    }

    println!();
    println!("summary (scale {scale})");
    if !catchups.is_empty() {
        println!(
            "  {:<14} {:>10} {:>9} {:>12} {:>12} {:>12} {:>7} {:>7} | {:>9} {:>9} {:>9} {:>10} {:>7}",
            "catch-up",
            "commits",
            "rows/seg",
            "commits/s",
            "rows/s",
            "raw rows/s",
            "ratio",
            ">=0.8",
            "peak RSS",
            "pg cache",
            "above",
            "raw RSS",
            "<64MiB"
        );
        for r in &catchups {
            let above = mib(r.hwm_kb().0 as f64 - r.cache_kb());
            println!(
                "  {:<14} {:>10} {:>9} {:>12} {:>12} {:>12} {:>6.2}x {:>7} | {:>5.1} MiB {:>5.1} MiB {:>5.1} MiB {:>6.1} MiB {:>7}",
                format!("catchup-{}", r.id),
                thousands(r.commits as f64),
                r.per_segment,
                thousands((r.commits + 1) as f64 / r.runtime()),
                thousands(r.commits as f64 / r.runtime()),
                thousands(r.commits as f64 / r.raw()),
                r.ratio(),
                verdict(r.ratio() >= TARGET_RATIO),
                mib(r.hwm_kb().0 as f64),
                mib(r.cache_kb()),
                above,
                mib(r.raw_hwm_kb as f64),
                verdict(above < TARGET_RSS_ABOVE_CACHE_MIB),
            );
        }
        if let Some(r) = catchups.first() {
            println!(
                "  page cache: cache_size = {} ({:.0} KiB per connection) x {} connections; peak RSS = VmHWM of a child process per run (max over runs), above = peak RSS - page cache bound",
                r.cache_size,
                cache_kb(r.cache_size, r.page_size),
                r.connections
            );
        }
        if catchups.len() == 2 {
            let (a, b) = (&catchups[0], &catchups[1]);
            println!(
                "  peak RSS {} vs {}: {:+.1} MiB (max of runs); runs {:.1}..{:.1} vs {:.1}..{:.1} MiB",
                a.id,
                b.id,
                mib(b.hwm_kb().0 as f64 - a.hwm_kb().0 as f64),
                mib(a.hwm_kb().1 as f64),
                mib(a.hwm_kb().0 as f64),
                mib(b.hwm_kb().1 as f64),
                mib(b.hwm_kb().0 as f64),
            );
        }
    }
    for s in &stages {
        println!(
            "  stages-{:<7} fetch {:.2} s, persist {:.2} s, decode+validate {:.2} s, apply {:.2} s (one thread)",
            s.id,
            s.fetch.as_secs_f64(),
            s.persist.as_secs_f64(),
            s.decode_validate.as_secs_f64(),
            s.apply.as_secs_f64()
        );
    }
    for r in &http_catchups {
        println!(
            "  {:<20} {:>10} commits: HTTP {:>10} commits/s, file source {:>10} commits/s, ratio file/HTTP {:.2}x ({} >= {TARGET_HTTP_RATIO}x); peak RSS HTTP {:.1} / file {:.1} MiB",
            format!("http-catchup-{}", r.id),
            thousands(r.commits as f64),
            thousands((r.commits + 1) as f64 / r.http.median()),
            thousands((r.commits + 1) as f64 / r.file.median()),
            r.ratio(),
            verdict(r.ratio() >= TARGET_HTTP_RATIO),
            mib(r.http.hwm_kb.iter().copied().max().unwrap_or(0) as f64),
            mib(r.file.hwm_kb.iter().copied().max().unwrap_or(0) as f64),
        );
    }
    for l in &latencies_run {
        let (_, v) = &l.series[0];
        let (_, f) = &l.series[1];
        println!(
            "  {} @{} commits/s: snapshot p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} p99 < {TARGET_P99_MS} ms); file p50 {:.2} / p99 {:.2} / max {:.2} ms",
            l.id,
            thousands(l.commits as f64 / l.secs.max(1e-9)),
            quantile(v, 0.5),
            quantile(v, 0.99),
            quantile(v, 1.0),
            verdict(quantile(v, 0.99) < TARGET_P99_MS),
            quantile(f, 0.5),
            quantile(f, 0.99),
            quantile(f, 1.0),
        );
    }
    Ok(())
}

// ------------------------------------------------------------- serve-fanout

/// A private CA and a server certificate for 127.0.0.1 (rcgen), as PEM
/// files, for `https-latency`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> R<Pki> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca = ca_params.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let cert =
            CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &ca, &ca_key)?;
        let pki = Pki {
            ca: dir.join("bench-ca.pem"),
            cert: dir.join("bench-cert.pem"),
            key: dir.join("bench-key.pem"),
        };
        std::fs::write(&pki.ca, ca.pem())?;
        std::fs::write(&pki.cert, cert.pem())?;
        std::fs::write(&pki.key, key.serialize_pem())?;
        Ok(pki)
    }

    fn serve_flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

/// Long-polling clients of `serve-fanout`.
const FANOUT_CLIENTS: usize = 1000;
/// Backlog a new replica catches up in `serve-fanout`, at scale 1.
const FANOUT_BACKLOG: f64 = 10_000.0;
/// Idle measurement window of `serve-fanout`, at scale 1.
const FANOUT_IDLE_SECS: f64 = 10.0;

/// The server's CPU (cores) over `secs` of doing nothing but holding what
/// it holds.
fn idle_cpu(server: &Server, secs: f64) -> f64 {
    let before = threads_of(server.pid());
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let wall = t.elapsed().as_secs_f64();
    let used: f64 = cpu_between(&before, &threads_of(server.pid()))
        .values()
        .map(|c| c.run.as_secs_f64())
        .sum();
    used / wall
}

/// A new replica catching up `head` through `url`: seconds.
fn catch_up_secs(cfg: &Cfg, name: &str, url: &str, token: &str, head: CommitId) -> R<f64> {
    let rpath = cfg.path(name);
    let t = Instant::now();
    let replica = Replica::start_from_url(&rpath, url, token, Config::default())?;
    replica.wait_for(head, Instant::now() + SETTLE_DEADLINE)?;
    let secs = t.elapsed().as_secs_f64();
    replica.stop();
    remove_db(&rpath);
    Ok(secs)
}

/// `serve-fanout`: one `aerodb serve` holding `FANOUT_CLIENTS` long-polls
/// (raw connections asking `/v1/segments` past the head with the longest
/// wait, 30 s): the server's CPU while they are held and nothing is
/// committed, against the same server idle with no client; a new replica
/// catching up a backlog meanwhile, against the same with no long-poll
/// held; then one commit, and the time until every held long-poll has its
/// answer (the wake fans out).
fn fanout_case(cfg: &Cfg, exe: &Path, token_file: &Path) -> R<()> {
    use std::io::{Read, Write};
    let commits = (FANOUT_BACKLOG * cfg.scale).max(1000.0) as u64;
    let idle = (FANOUT_IDLE_SECS * cfg.scale).clamp(2.0, 20.0);
    let ppath = cfg.path("fanout-primary.db");
    let (head, _) = build_primary(&ppath, commits)?;
    let server = Server::start(exe, &ppath, token_file)?;
    let token = std::fs::read_to_string(token_file)?.trim().to_string();
    let addr = server
        .url
        .strip_prefix("http://")
        .ok_or("an http:// server")?
        .to_string();
    eprintln!("[serve-fanout] idle server, no client, {idle:.0} s ...");
    let cpu_alone = idle_cpu(&server, idle);
    let catch_up_alone = catch_up_secs(cfg, "fanout-r0.db", &server.url, &token, head)?;
    eprintln!("[serve-fanout] {FANOUT_CLIENTS} long-polls ...");
    let mut polls = Vec::with_capacity(FANOUT_CLIENTS);
    for _ in 0..FANOUT_CLIENTS {
        let mut s = std::net::TcpStream::connect(&addr)?;
        write!(
            s,
            "GET /v1/segments?from={}&wait_ms=30000 HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\r\n",
            head.0 + 1
        )?;
        polls.push(s);
    }
    // Let every request arrive before the window opens (a bench may wait
    // on time; what it measures is CPU, not this pause).
    std::thread::sleep(Duration::from_secs(1));
    let cpu_held = idle_cpu(&server, idle);
    let threads = threads_of(server.pid()).len();
    let rss = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let catch_up_held = catch_up_secs(cfg, "fanout-r1.db", &server.url, &token, head)?;
    // One commit; every long-poll is answered with it.
    let primary = Primary::open(&ppath)?;
    let t = Instant::now();
    {
        let mut gen = RowGen::new();
        let mut stmt = primary.connection().prepare_cached(INSERT_SQL)?;
        gen.insert(&mut stmt, commits as i64 + 1)?;
    }
    let mut answered = 0;
    let mut buf = [0u8; 12];
    for s in &mut polls {
        s.set_read_timeout(Some(SETTLE_DEADLINE))?;
        s.read_exact(&mut buf)?;
        if &buf[..] == b"HTTP/1.1 200" {
            answered += 1;
        }
    }
    let wake_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(polls);
    let head = primary.head()?;
    // The same number of clients as replicas run them: `HttpSource`, the
    // Receiver's transport, each on a thread, fetching past the head and
    // then long-polling (`wait_for_wal`: asks again every LONG_POLL).
    eprintln!("[serve-fanout] {FANOUT_CLIENTS} replica transports ...");
    let (stops, clients): (Vec<_>, Vec<_>) = (0..FANOUT_CLIENTS)
        .map(|i| {
            let (stop, stopped) = std::sync::mpsc::channel::<()>();
            let (url, token) = (server.url.clone(), token.clone());
            let client = std::thread::Builder::new()
                .name(format!("bench-client-{i}"))
                .stack_size(256 << 10)
                .spawn(move || -> R<()> {
                    let mut source = storage_adapter::http_source::HttpSource::open(&url, &token)
                        .map_err(|f| f.to_string())?;
                    let stop = replication::runtime::StopSignal::new(stopped);
                    while source
                        .fetch(head.next(), 1 << 20)
                        .map_err(|f| f.to_string())?
                        .is_none()
                    {
                        if !source.wait_for_wal(&stop).map_err(|f| f.to_string())? {
                            break;
                        }
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string());
            (stop, client)
        })
        .unzip();
    std::thread::sleep(Duration::from_secs(1));
    let cpu_replicas = idle_cpu(&server, idle);
    let threads_replicas = threads_of(server.pid()).len();
    let catch_up_replicas = catch_up_secs(cfg, "fanout-r2.db", &server.url, &token, head)?;
    drop(stops);
    for c in clients {
        c?.join().map_err(|_| "a client thread panicked")??;
    }
    drop(server);
    remove_db(&ppath);
    println!(
        "serve-fanout: one aerodb serve, {FANOUT_CLIENTS} long-polls held (raw connections, wait_ms=30000), {commits} commits of backlog"
    );
    println!(
        "    server CPU idle: {:.2}% of a core with {FANOUT_CLIENTS} long-polls held, {:.2}% with none ({idle:.0} s windows); {threads} threads, RSS {:.1} MiB",
        cpu_held * 100.0,
        cpu_alone * 100.0,
        rss as f64 / 1024.0
    );
    println!(
        "    a new replica catching up {commits} commits: {:.3} s with the long-polls held, {:.3} s without (target < 1 s: {})",
        catch_up_held,
        catch_up_alone,
        verdict(catch_up_held < 1.0)
    );
    println!(
        "    one commit: {answered} of {FANOUT_CLIENTS} long-polls answered 200 with it, the last {wake_ms:.1} ms after the commit began"
    );
    println!(
        "    {FANOUT_CLIENTS} replica transports (HttpSource, asking again every {} ms): server CPU {:.1}% of a core, {threads_replicas} threads; a new replica catches up {} commits in {:.3} s meanwhile (target < 1 s: {})",
        storage_adapter::http_source::LONG_POLL.as_millis(),
        cpu_replicas * 100.0,
        head.0,
        catch_up_replicas,
        verdict(catch_up_replicas < 1.0)
    );
    Ok(())
}
