//! Shared helpers of the end-to-end tests: building the loadable extension,
//! driving the real `sqlite3` shell, a seeded PRNG, and table dumps.

use rusqlite::types::Value;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// Builds `ext/` (its own workspace, rusqlite `loadable_extension`) in
/// release mode into the root target directory, once per test process;
/// returns the library path without extension, as `.load` takes it.
pub fn extension() -> &'static Path {
    static EXT: OnceLock<PathBuf> = OnceLock::new();
    EXT.get_or_init(|| {
        let root = root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(root.join("ext/Cargo.toml"))
            .arg("--target-dir")
            .arg(root.join("target"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building ext/ failed");
        let lib = root.join("target/release/libaerodb");
        assert!(
            lib.with_extension("so").exists(),
            "{} missing",
            lib.display()
        );
        lib
    })
}

/// Output of one `sqlite3` shell run.
#[derive(Debug)]
pub struct ShellRun {
    /// Exit status success.
    pub ok: bool,
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the system `sqlite3` shell on `db` with `script` on stdin.
pub fn shell(db: &Path, script: &str) -> ShellRun {
    use std::io::Write;
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sqlite3 shell is installed (.ci/run installs it)");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(script.as_bytes())
        .expect("script written");
    let out = child.wait_with_output().expect("sqlite3 exits");
    ShellRun {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A small seeded PRNG (splitmix64): tests print the seed and replay it.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// From a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Every row of `table`, ordered by primary key (or rowid).
pub fn dump_table(conn: &Connection, table: &str) -> Vec<Vec<Value>> {
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM \"{table}\" ORDER BY 1, 2"))
        .expect("dump prepares");
    let n = stmt.column_count();
    stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
        .expect("dump runs")
        .collect::<Result<_, _>>()
        .expect("dump rows")
}

/// Applies every segment the primary has after `position` (segments of at
/// most `segment_bytes`), one transaction each; returns the new position.
pub fn catch_up(
    reader: &storage_adapter::primary::PrimaryWalReader,
    replica: &mut storage_adapter::replica::ReplicaDb,
    position: replication::wal::ChainPosition,
    segment_bytes: usize,
) -> replication::wal::ChainPosition {
    // A segment that ends inside a transaction is applied with those that
    // follow, up to the one that ends it (one transaction).
    replica
        .apply_from(position, &mut |at| {
            storage_adapter::replica::next_segment(reader, at, segment_bytes)
        })
        .expect("segments apply")
}

/// A connection to a replica file that may write its guarded tables (the
/// replicated tables and the state store), as only the runtime's own
/// connections may: for tests that damage or tamper with a replica on
/// purpose. It defines the guard function to let its writes through.
pub fn tampering(replica: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(replica).expect("open the replica");
    conn.create_scalar_function(
        storage_adapter::replica::GUARD_FN,
        0,
        rusqlite::functions::FunctionFlags::SQLITE_UTF8,
        |_| Ok(false),
    )
    .expect("lift the replica's write guard on this connection");
    conn
}

/// A primary at `path` with table `t(id INTEGER PRIMARY KEY, v TEXT NOT
/// NULL)` (its schema record is commit 1) and `rows` rows, one commit each
/// (row k is `(k, 'vk')`, commit k + 1).
pub fn primary_with_rows(path: &Path, rows: i64) -> storage_adapter::primary::Primary {
    let p = storage_adapter::primary::Primary::open(path).expect("primary");
    p.connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .expect("table");
    p.replicate("t").expect("replicate");
    for id in 1..=rows {
        p.connection()
            .execute("INSERT INTO t VALUES (?1, 'v' || ?1)", [id])
            .expect("insert");
    }
    p
}

/// A client-side bound for waits on published state (never reached when
/// things work).
pub fn deadline() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(60)
}
