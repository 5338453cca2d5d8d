//! `aerodb serve` under abuse, on loopback: 1,000 idle long-polls, 2,000
//! idle connections, 50 slowloris clients, 10 clients sending endless
//! headers, more connections than `--max-connections`. During each, a new
//! replica catches up the primary's backlog (and holds exactly its rows);
//! the server's threads and RSS stay under the bounds below; afterwards it
//! serves normally. Every wait is on a condition (a metric reaching a
//! value, a replica reaching a CommitId, a socket closing), bounded by
//! `WAIT`; nothing sleeps.
//!
//! Bounds, whatever clients do: at most `MAX_THREADS` threads (main, two
//! runtime workers, at most eight blocking threads, the head watcher, the
//! metrics listener's tasks share the runtime) and `MAX_RSS_MIB` of RSS.

mod serve_common;

use replication::runtime::{Config, View};
use replication::state::{GlobalState, ReadStatus};
use replication::wal::CommitId;
use rusqlite::{Connection, OpenFlags};
use serve_common::{deadline, exact_rows, token_file, Server, TOKEN, WAIT};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;
use storage_adapter::primary::Primary;
use storage_adapter::runtime::Replica;

const MAX_THREADS: u64 = 16;
const MAX_RSS_MIB: u64 = 128;
/// Peak RSS while clients hold the whole segment budget (256 MiB of
/// segments being read or waiting to be sent): the budget, the baseline
/// and what the allocator keeps of freed reads.
const MAX_BUDGET_RSS_MIB: u64 = 512;
/// Commits the primary holds before a scenario.
const BACKLOG: i64 = 300;

/// The test process holds thousands of sockets.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    p: Primary,
    head: CommitId,
    server: Server,
    metrics: u16,
}

impl Fixture {
    fn new(extra: &[&str]) -> Fixture {
        Fixture::with_journal(extra, "WAL")
    }

    /// [`new`](Fixture::new), the primary in `journal_mode`.
    fn with_journal(extra: &[&str], journal_mode: &str) -> Fixture {
        raise_fd_limit();
        let dir = tempfile::tempdir().expect("tempdir");
        let p_path = dir.path().join("p.db");
        let p = Primary::open(&p_path).expect("primary");
        p.connection()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
            .expect("table");
        p.replicate("t").expect("replicate");
        p.connection()
            .pragma_update(None, "journal_mode", journal_mode)
            .expect("journal mode");
        for id in 1..=BACKLOG {
            p.connection()
                .execute("INSERT INTO t VALUES (?1, printf('v%d', ?1))", [id])
                .expect("insert");
        }
        let head = p.head().expect("head");
        let mut flags = vec!["--metrics-listen", "127.0.0.1:0"];
        flags.extend_from_slice(extra);
        let mut server = Server::start_with(&p_path, &token_file(dir.path()), 0, &flags);
        let metrics = server.metrics_port();
        Fixture {
            dir,
            p,
            head,
            server,
            metrics,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }

    /// The value of the metric `name` (a gauge or a counter's `_total`).
    fn metric(&self, name: &str) -> f64 {
        let body = get(self.metrics, "/metrics", None).1;
        body.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("no metric {name} in {body}"))
    }

    /// Waits until the metric `name` satisfies `done`.
    fn wait_metric(&self, name: &str, done: impl Fn(f64) -> bool) -> f64 {
        let until = deadline();
        loop {
            let v = self.metric(name);
            if done(v) {
                return v;
            }
            assert!(Instant::now() < until, "{name} stayed at {v}");
        }
    }

    /// A new replica catches up the primary's head through the server and
    /// holds exactly its rows; returns how long it took.
    fn a_replica_catches_up(&self, name: &str) -> std::time::Duration {
        let r_path = self.dir.path().join(format!("{name}.db"));
        let started = Instant::now();
        let replica = Replica::start_from_url(
            &r_path,
            &format!("http://{}", self.addr()),
            TOKEN,
            Config::default(),
        )
        .expect("the replica starts");
        let head = self.p.head().expect("head");
        if let Err(s) = replica.wait_until(deadline(), |s| caught_up(s, head)) {
            panic!("the replica did not catch up: {s:?}");
        }
        let took = started.elapsed();
        replica.stop();
        let conn = Connection::open_with_flags(&r_path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("replica");
        assert_eq!(exact_rows(&conn), exact_rows(self.p.connection()));
        eprintln!("{name}: a new replica caught up {head} commits in {took:?}");
        took
    }

    /// The server's threads and RSS are within the bounds.
    fn within_bounds(&self, during: &str) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.server.pid()))
            .expect("the server's /proc status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {status}"))
        };
        let (threads, rss_kib) = (field("Threads:"), field("VmRSS:"));
        eprintln!(
            "{during}: server threads {threads}, RSS {} MiB",
            rss_kib / 1024
        );
        assert!(threads <= MAX_THREADS, "{during}: {threads} threads");
        assert!(
            rss_kib <= MAX_RSS_MIB * 1024,
            "{during}: RSS {} MiB",
            rss_kib / 1024
        );
    }

    /// The server answers a plain request normally.
    fn serves_normally(&self) {
        let (status, body) = get(self.server.port, "/v1/head", Some(TOKEN));
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(&format!("\"head\":{}", self.p.head().expect("head").0)),
            "{body}"
        );
    }
}

fn caught_up(s: &View, head: CommitId) -> bool {
    s.global
        == GlobalState::Ready {
            read: ReadStatus::Safe,
        }
        && s.applied.commit_id == head
}

/// `GET path` on a connection of its own (closed after): status and body.
fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("the answer");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"));
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// How many of `clients` have bytes to read (an answer begun).
fn answered(clients: &[TcpStream]) -> usize {
    clients
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).expect("nonblocking");
            let mut b = [0u8; 1];
            let got = matches!(s.peek(&mut b), Ok(n) if n > 0);
            s.set_nonblocking(false).expect("blocking");
            got
        })
        .count()
}

/// `n` authenticated clients that each ask for `target` and read nothing.
fn stalled_readers(f: &Fixture, n: usize, target: &str) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(f.addr()).expect("connect");
            write!(
                s,
                "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .expect("send");
            s
        })
        .collect()
}

/// Waits until one of `stalled` is answered; then the budget room taken
/// (at most the 256 MiB budget) and how many are answered.
fn budget_filled(f: &Fixture, stalled: &[TcpStream]) -> (f64, usize) {
    let until = deadline();
    while answered(stalled) < 1 {
        assert!(Instant::now() < until, "no segment was answered");
    }
    let held = f.metric("aerodb_serve_unsent_bytes");
    assert!(held <= 256.0 * 1048576.0, "{held} bytes held");
    (held, answered(stalled))
}

/// The server's peak RSS so far, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmHWM")
        / 1024
}

/// Whether the server closed `s` (EOF or a reset) before `WAIT`; what it
/// sent before closing is returned.
fn closed_by_server(s: &mut TcpStream) -> Option<String> {
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&got).into_owned())
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn a_thousand_idle_long_polls_are_held_and_all_woken_by_one_commit() {
    let f = Fixture::new(&[]);
    let from = f.head.0 + 1;
    let mut polls: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(f.addr()).expect("connect");
            write!(
                s,
                "GET /v1/segments?from={from}&wait_ms=30000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .expect("send");
            s
        })
        .collect();
    f.wait_metric("aerodb_serve_long_polls", |v| v >= 1000.0);
    f.within_bounds("1,000 long-polls held");
    f.a_replica_catches_up("r1");
    f.within_bounds("1,000 long-polls held, after a catch-up");
    // One commit answers every one of them with it.
    f.p.connection()
        .execute("INSERT INTO t VALUES (100000, 'wake')", [])
        .expect("insert");
    let new_head = f.p.head().expect("head");
    for (i, s) in polls.iter_mut().enumerate() {
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut reader = BufReader::new(&mut *s);
        let mut status = String::new();
        reader.read_line(&mut status).expect("an answer");
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "long-poll {i}: {status:?}"
        );
        let mut last = None;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("a header");
            if line.trim_end().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("x-aerodb-last: ") {
                last = v.trim().parse::<u64>().ok();
            }
        }
        assert_eq!(last, Some(new_head.0), "long-poll {i}");
    }
    drop(polls);
    f.wait_metric("aerodb_serve_long_polls", |v| v == 0.0);
    f.serves_normally();
}

#[test]
fn two_thousand_idle_connections_cost_no_thread_and_are_closed_in_time() {
    let f = Fixture::new(&[]);
    let mut idle: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(f.addr()).expect("connect"))
        .collect();
    f.wait_metric("aerodb_serve_open_connections", |v| v >= 2000.0);
    f.within_bounds("2,000 idle connections");
    f.a_replica_catches_up("r1");
    f.within_bounds("2,000 idle connections, after a catch-up");
    // Idle connections are closed by the server (the header read timeout).
    for s in idle.iter_mut().step_by(100) {
        assert!(
            closed_by_server(s).is_some(),
            "an idle connection stayed open"
        );
    }
    drop(idle);
    f.wait_metric("aerodb_serve_open_connections", |v| v == 0.0);
    f.serves_normally();
}

#[test]
fn slowloris_clients_are_closed_and_hold_nothing_meanwhile() {
    let f = Fixture::new(&[]);
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|i| {
            let mut s = TcpStream::connect(f.addr()).expect("connect");
            // A request head that never ends.
            write!(s, "GET /v1/head HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: a").expect("send");
            s
        })
        .collect();
    f.wait_metric("aerodb_serve_open_connections", |v| v >= 50.0);
    f.a_replica_catches_up("r1");
    f.within_bounds("50 slowloris clients");
    for (i, s) in slow.iter_mut().enumerate() {
        let sent = closed_by_server(s).unwrap_or_else(|| panic!("slowloris {i} stayed open"));
        assert!(
            sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
            "slowloris {i}: {sent:?}"
        );
    }
    f.wait_metric("aerodb_serve_open_connections", |v| v == 0.0);
    f.serves_normally();
}

#[test]
fn clients_sending_endless_headers_are_cut_off_at_the_header_limit() {
    let f = Fixture::new(&[]);
    let addr = f.addr();
    let clients: Vec<_> = (0..10)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_write_timeout(Some(WAIT)).expect("timeout");
                // Unauthenticated, and never done.
                s.write_all(b"GET /v1/head HTTP/1.1\r\nHost: x\r\n")
                    .expect("send");
                let line = format!("X-Endless-{i}: {}\r\n", "a".repeat(1000));
                let mut sent = 0usize;
                while sent < 50 << 20 {
                    match s.write(line.as_bytes()) {
                        Ok(n) => sent += n,
                        Err(_) => return (sent, closed_by_server(&mut s)),
                    }
                }
                (sent, None)
            })
        })
        .collect();
    f.a_replica_catches_up("r1");
    f.within_bounds("10 clients sending endless headers");
    for (i, c) in clients.into_iter().enumerate() {
        let (sent, answer) = c.join().expect("client thread");
        assert!(
            sent < 50 << 20,
            "client {i} sent 50 MiB of headers and the server still read"
        );
        if let Some(answer) = answer {
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
                "client {i}: {answer:?}"
            );
        }
    }
    f.within_bounds("after the endless headers");
    f.serves_normally();
}

#[test]
fn connections_over_the_limit_are_closed_on_accept_and_counted() {
    let f = Fixture::new(&["--max-connections", "50"]);
    let held: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(f.addr()).expect("connect"))
        .collect();
    f.wait_metric("aerodb_serve_open_connections", |v| v >= 50.0);
    let mut over = TcpStream::connect(f.addr()).expect("the kernel accepts it");
    assert_eq!(
        closed_by_server(&mut over).as_deref(),
        Some(""),
        "closed at once, without an answer"
    );
    f.wait_metric("aerodb_serve_refused_connections_total", |v| v >= 1.0);
    drop(held);
    f.wait_metric("aerodb_serve_open_connections", |v| v == 0.0);
    f.serves_normally();
    f.a_replica_catches_up("r1");
}

#[test]
fn the_max_connections_flag_is_checked() {
    for bad in ["0", "100001", "many"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_aerodb"))
            .args([
                "serve",
                "--db",
                "p.db",
                "--listen",
                "127.0.0.1:0",
                "--token-file",
                "t",
            ])
            .args(["--max-connections", bad])
            .output()
            .expect("aerodb");
        assert_eq!(out.status.code(), Some(2), "--max-connections {bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--max-connections"), "{stderr}");
    }
}

#[test]
fn a_request_announcing_a_body_it_never_sends_is_answered_413_and_closed() {
    let f = Fixture::new(&[]);
    for auth in [format!("Authorization: Bearer {TOKEN}\r\n"), String::new()] {
        let mut s = TcpStream::connect(f.addr()).expect("connect");
        write!(
            s,
            "GET /v1/head HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1073741824\r\n\r\nabc"
        )
        .expect("send");
        let answer = closed_by_server(&mut s).expect("the server closes the connection");
        let expected = if auth.is_empty() {
            "HTTP/1.1 401"
        } else {
            "HTTP/1.1 413"
        };
        assert!(answer.starts_with(expected), "{answer:?}");
    }
    f.serves_normally();
}

#[test]
fn clients_that_ask_for_big_segments_and_never_read_hold_at_most_the_budget() {
    let f = Fixture::new(&[]);
    // 24 commits of 4 MiB each after the backlog: 96 MiB of WAL.
    for id in 0..24 {
        f.p.connection()
            .execute(
                "INSERT INTO t VALUES (?1, randomblob(4194304))",
                [1_000_000 + id],
            )
            .expect("a big row");
    }
    // 20 authenticated clients each ask for a 64 MiB segment and read
    // nothing: without a budget the server would hold 20 x 64 MiB.
    let stalled = stalled_readers(&f, 20, "/v1/segments?from=1&max_bytes=67108864");
    // The budget fills: 64 MiB segments are built and answered (their
    // clients have bytes to read; a read reserves twice what it may build,
    // records and body); the others wait their turn.

    let (held, built) = budget_filled(&f, &stalled);
    assert!(
        built <= 4,
        "{built} bodies of 64 MiB built: more than the budget holds"
    );
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", f.server.pid())).expect("status");
    let kib = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("a /proc status field")
    };
    let (rss, peak) = (kib("VmRSS:") / 1024, kib("VmHWM:") / 1024);
    eprintln!("20 stalled 64 MiB readers: {built} answered, RSS {rss} MiB (peak {peak} MiB), {held} bytes held");
    assert!(peak <= MAX_BUDGET_RSS_MIB, "peak RSS {peak} MiB");
    // Unauthenticated and cheap requests are not held up by the budget.
    assert_eq!(get(f.server.port, "/v1/head", None).0, 401);
    assert_eq!(get(f.server.port, "/v1/head", Some(TOKEN)).0, 200);
    drop(stalled);
    f.wait_metric("aerodb_serve_unsent_bytes", |v| v == 0.0);
    f.a_replica_catches_up("r1");
}

#[test]
fn a_record_larger_than_max_bytes_counts_against_the_budget_whole() {
    let f = Fixture::new(&[]);
    // A 30 MiB value: its record (the first of its transaction's) is
    // served whole, whatever max_bytes a client asks for.
    f.p.connection()
        .execute("INSERT INTO t VALUES (2000000, randomblob(31457280))", [])
        .expect("a big row");
    let big = f.head.next();
    let stalled = stalled_readers(&f, 40, &format!("/v1/segments?from={}&max_bytes=1", big.0));
    let (_, built) = budget_filled(&f, &stalled);
    let peak = peak_rss_mib(f.server.pid());
    eprintln!("40 stalled readers of a 30 MiB record: {built} answered, peak RSS {peak} MiB");
    assert!(
        built <= 8,
        "{built} bodies of 30 MiB: more than the budget holds"
    );
    assert!(peak <= MAX_BUDGET_RSS_MIB, "peak RSS {peak} MiB");
    drop(stalled);
    f.wait_metric("aerodb_serve_unsent_bytes", |v| v == 0.0);
    f.a_replica_catches_up("r1");
}

#[test]
fn a_primary_locked_past_the_busy_timeout_answers_503_and_a_replica_rides_it_out() {
    // A rollback-journal primary: a writer's lock keeps readers out.
    let f = Fixture::with_journal(&[], "DELETE");
    f.p.connection()
        .execute_batch("CREATE TABLE other(x)")
        .expect("a table not replicated");
    let head = f.p.head().expect("head");
    let r_path = f.dir.path().join("r.db");
    let replica = Replica::start_from_url(
        &r_path,
        &format!("http://{}", f.addr()),
        TOKEN,
        Config::default(),
    )
    .expect("start");
    if let Err(s) = replica.wait_until(deadline(), |s| caught_up(s, head)) {
        panic!("no catch-up: {s:?}");
    }
    let locker = Connection::open(f.dir.path().join("p.db")).expect("a second connection");
    locker
        .execute_batch("BEGIN EXCLUSIVE; INSERT INTO other VALUES (1);")
        .expect("the lock");
    // A request meets the lock past SQLite's busy timeout: 503, not 500.
    let (status, body) = get(f.server.port, "/v1/head", Some(TOKEN));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database is locked"), "{body}");
    locker.execute_batch("COMMIT").expect("commit");
    drop(locker);
    // The replica waited it out (at most a recorded stop and resume) and
    // follows the next commit.
    f.p.connection()
        .execute("INSERT INTO t VALUES (3000000, 'after the lock')", [])
        .expect("insert");
    let head = f.p.head().expect("head");
    let s = match replica.wait_until(deadline(), |s| caught_up(s, head)) {
        Ok(s) => s,
        Err(s) => panic!("the replica did not follow after the lock: {s:?}"),
    };
    for c in &s.components {
        if let Some(e) = &c.last_error {
            assert_eq!(e.code, "SOURCE_UNAVAILABLE", "{e:?}");
        }
    }
    replica.stop();
    let conn =
        Connection::open_with_flags(&r_path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("replica");
    assert_eq!(exact_rows(&conn), exact_rows(f.p.connection()));
}

#[test]
fn the_default_connection_limit_fits_the_open_file_limit_and_an_explicit_one_must() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let p_path = dir.path().join("p.db");
    let p = Primary::open(&p_path).expect("primary");
    drop(p);
    let tokens = token_file(dir.path());
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_aerodb"));
        cmd.args(["serve", "--db"])
            .arg(&p_path)
            .args(["--listen", "127.0.0.1:0", "--token-file"])
            .arg(&tokens)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // SAFETY: setrlimit only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 1000,
                    rlim_max: 1000,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().expect("aerodb serve")
    };
    // An explicit limit the process cannot hold is refused.
    let out = run(&["--max-connections", "2000"])
        .wait_with_output()
        .expect("exit");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "--max-connections 2000 needs 2384 file descriptors, and this process may open 1000"
        ),
        "{stderr}"
    );
    // The default shrinks to fit, and says so in its start line.
    let mut child = run(&[]);
    let mut line = String::new();
    BufReader::new(child.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("the start line");
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("max_connections=616"), "{line}");
}

#[test]
fn a_client_that_stops_reading_is_cut_off_after_the_write_timeout() {
    let f = Fixture::new(&["--write-timeout", "2"]);
    // 8 commits of 4 MiB each: a 32 MiB segment, more than the socket
    // buffers hold.
    for id in 0..8 {
        f.p.connection()
            .execute(
                "INSERT INTO t VALUES (?1, randomblob(4194304))",
                [4_000_000 + id],
            )
            .expect("a big row");
    }
    let mut stalled = TcpStream::connect(f.addr()).expect("connect");
    write!(
        stalled,
        "GET /v1/segments?from={}&max_bytes=67108864 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
        f.head.0 + 1
    )
    .expect("send");
    f.wait_metric("aerodb_serve_unsent_bytes", |v| v > 0.0);
    // The client holds its socket and reads nothing: the server gives up
    // on it, its connection and its room in the budget.
    f.wait_metric("aerodb_serve_unsent_bytes", |v| v == 0.0);
    f.wait_metric("aerodb_serve_open_connections", |v| v == 0.0);
    drop(stalled);
    f.serves_normally();
}
