//! The `aerodb` command line as a user and a service manager meet it
//! (issue 12): a real binary, real primary and replica files, real signals.
//!
//! - Help and version on stdout with exit 0; `--version` is the string
//!   `aerodb_version()` returns in SQL.
//! - Usage errors exit 2 naming what is wrong (unknown flags, flags a
//!   command does not take, values outside the limits `aerodb_replica_start`
//!   also enforces, a `--listen` without a port or off loopback); runtime
//!   failures exit 1; `--flag=value` works.
//! - `aerodb serve --listen localhost:0` resolves the name and serves; every
//!   request gets an access-log line (text or JSON) that never holds the
//!   token.
//! - `aerodb replica` is a service: stdin EOF does not stop it (unless
//!   `--stop-on-stdin-eof`); SIGTERM/SIGINT stop it with exit 0 and the
//!   stop recorded (Disabled, the signal in the reason); when `aerodb
//!   serve` is killed and restarted, it keeps running and resumes.
//!
//! Rules proven: F1 (a source outage is an explicit, recorded block and
//! resuming a recorded transition, in the CLI as in the SQL runtime), T1
//! (the stop is recorded in the state store).
//!
//! No test sleeps: every wait is on a line the child prints (read by a
//! thread, received with a bounded deadline) or on the child's exit.

use rstest::rstest;
use rusqlite::{Connection, OpenFlags};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use storage_adapter::primary::Primary;
use storage_adapter::status::ReplicaStatus;
use storage_adapter::version::VERSION;

/// The bearer token the servers of these tests accept.
const TOKEN: &str = "aerodb-cli-test-token-3e8a61f0";
/// Client-side bound of every wait (never reached when things work).
const WAIT: Duration = Duration::from_secs(30);

fn aerodb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("running aerodb")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A primary with table `t` (its schema record is commit 1).
fn primary(path: &Path) -> Primary {
    let p = Primary::open(path).expect("primary");
    p.connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .expect("table");
    p.replicate("t").expect("replicate");
    p
}

/// One commit per row. Returns the head.
fn insert(p: &Primary, ids: RangeInclusive<i64>) -> u64 {
    for id in ids {
        p.connection()
            .execute("INSERT INTO t VALUES (?1, 'v' || ?1)", [id])
            .expect("insert");
    }
    p.head().expect("head").0
}

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("token.txt");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("token file");
    path
}

fn recorded(replica: &Path) -> ReplicaStatus {
    let conn = Connection::open_with_flags(replica, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("replica opens");
    ReplicaStatus::read(&conn).expect("replica status")
}

fn last_transition_reason(replica: &Path) -> String {
    let conn = Connection::open_with_flags(replica, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("replica opens");
    conn.query_row(
        "SELECT to_state || ': ' || reason FROM aerodb_replica_transitions ORDER BY seq DESC LIMIT 1",
        [],
        |r| r.get(0),
    )
    .expect("a transition")
}

fn transitions(replica: &Path) -> Vec<String> {
    let conn = Connection::open_with_flags(replica, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("replica opens");
    let mut stmt = conn
        .prepare("SELECT reason FROM aerodb_replica_transitions ORDER BY seq")
        .expect("transitions");
    let rows = stmt
        .query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("reasons");
    rows
}

// ----------------------------------------------------- a child and its lines

/// A child whose stdout and stderr lines arrive on channels as it prints
/// them (so a full pipe never blocks it, and a test waits on a line).
struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
    seen_log: Vec<String>,
}

fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Running {
    fn start(args: &[&str], stdin: Stdio) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aerodb"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning aerodb");
        let stdout = lines_of(child.stdout.take().expect("stdout piped"));
        let stderr = lines_of(child.stderr.take().expect("stderr piped"));
        Running {
            child,
            stdout,
            stderr,
            seen: Vec::new(),
            seen_log: Vec::new(),
        }
    }

    /// Waits for a stdout line for which `done` holds; returns it.
    fn wait_line(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if done(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no stdout line {what} ({e:?}); stdout so far: {:#?}\nstderr: {}",
                    self.seen,
                    self.stderr_now()
                ),
            }
        }
    }

    /// Waits for a stderr line for which `done` holds; returns it.
    fn wait_log_line(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.seen_log.push(line.clone());
                    if done(&line) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no stderr line {what} ({e:?}); so far: {:#?}",
                    self.seen_log
                ),
            }
        }
    }

    fn stderr_now(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -s {name}");
    }

    /// Waits for the exit; returns its status and the rest of stdout and
    /// all of stderr.
    fn exit(mut self) -> (ExitStatus, Vec<String>, String) {
        let status = self.child.wait().expect("reaped");
        // The pipes close with the process: the readers end.
        let rest: Vec<String> = self.stdout.iter().collect();
        let mut stderr = std::mem::take(&mut self.seen_log);
        stderr.extend(self.stderr.iter());
        (status, rest, stderr.join("\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `aerodb serve` on `127.0.0.1:port` (0: any), started and serving.
fn serve(db: &Path, token: &Path, port: u16, extra: &[&str]) -> (Running, u16) {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "serve",
        "--db",
        db.to_str().expect("UTF-8 path"),
        "--listen",
        &listen,
        "--token-file",
        token.to_str().expect("UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    let mut server = Running::start(&args, Stdio::null());
    let line = server.wait_line("serving", |l| l.starts_with("aerodb serve: serving"));
    let bound = line
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (server, bound)
}

fn ready_at(line: &str, commit: u64) -> bool {
    line.starts_with(&format!("applied commit {commit} "))
        && line.ends_with("state Ready (read-safe)")
}

// ------------------------------------------------------- 1. conventions

#[rstest]
#[case::help(&["--help"], "Usage: aerodb [OPTIONS] <COMMAND>")]
#[case::short_help(&["-h"], "Commands:")]
#[case::help_command(&["help", "replica"], "Usage: aerodb replica [OPTIONS] --primary <FILE|URL> --replica <FILE>")]
#[case::command_help(&["replica", "--help"], "--stop-on-stdin-eof")]
#[case::serve_help(&["serve", "-h"], "--listen <HOST:PORT>")]
#[case::catch_up_help(&["catch-up", "--help"], "--segment-bytes <BYTES>")]
fn help_goes_to_stdout_with_exit_0(#[case] args: &[&str], #[case] shows: &str) {
    let out = aerodb(args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains(shows), "{}", text(&out.stdout));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn version_is_the_string_aerodb_version_returns_in_sql() {
    let out = aerodb(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let conn = Connection::open_in_memory().expect("in-memory database");
    storage_adapter::capture::register(&conn).expect("SQL functions");
    let sql: String = conn
        .query_row("SELECT aerodb_version()", [], |r| r.get(0))
        .expect("aerodb_version()");
    assert_eq!(sql, VERSION);
    assert_eq!(text(&out.stdout), format!("aerodb {sql}\n"));
}

#[rstest]
#[case::no_command(&[], "Usage: aerodb")]
#[case::unknown_command(&["bogus"], "unrecognized subcommand 'bogus'")]
#[case::unknown_flag(&["replica", "--primary", "p.db", "--replica", "r.db", "--bogus"], "unexpected argument '--bogus'")]
#[case::flag_of_another_command(&["catch-up", "--primary", "p.db", "--replica", "r.db", "--token-file", "t"], "unexpected argument '--token-file'")]
#[case::missing_flag(&["replica", "--primary", "p.db"], "--replica <FILE>")]
#[case::not_a_number(&["replica", "--primary", "p.db", "--replica", "r.db", "--queue-depth", "x"], "invalid value 'x' for '--queue-depth <N>'")]
#[case::segment_bytes_zero(&["replica", "--primary=p.db", "--replica=r.db", "--segment-bytes=0"], "--segment-bytes must be an integer from 1 to 67108864, got 0")]
#[case::queue_depth_over(&["replica", "--primary", "p.db", "--replica", "r.db", "--queue-depth=1025"], "--queue-depth must be an integer from 1 to 1024, got 1025")]
#[case::catch_up_segment_bytes(&["catch-up", "--primary", "p.db", "--replica", "r.db", "--segment-bytes", "67108865"], "--segment-bytes must be an integer from 1 to 67108864, got 67108865")]
#[case::http_without_token(&["replica", "--primary", "http://127.0.0.1:1", "--replica", "r.db"], "needs the --token-file")]
#[case::token_for_a_file(&["replica", "--primary", "p.db", "--replica", "r.db", "--token-file", "t"], "--token-file applies to http:// and https:// sources only")]
#[case::poll_for_http(&["replica", "--primary", "http://127.0.0.1:1", "--replica", "r.db", "--token-file", "t", "--poll-interval-ms", "5"], "--poll-interval-ms applies to primary file sources only")]
#[case::listen_without_port(&["serve", "--db", "p.db", "--listen", "localhost", "--token-file", "t"], "--listen 'localhost': expected HOST:PORT")]
#[case::listen_off_loopback(&["serve", "--db", "p.db", "--listen", "192.0.2.1:7070", "--token-file", "t"], "resolves to 192.0.2.1:7070, which is not a loopback address")]
#[case::log_format(&["--log-format=xml", "serve", "--db", "p.db", "--listen", "localhost:1", "--token-file", "t"], "invalid value 'xml' for '--log-format <LOG_FORMAT>'")]
fn usage_errors_exit_2_saying_what_is_wrong(#[case] args: &[&str], #[case] says: &str) {
    let out = aerodb(args);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(text(&out.stdout), "");
    assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
}

#[rstest]
#[case::missing_primary(&["replica", "--primary", "/nonexistent/p.db", "--replica", "r.db"], "aerodb: source '/nonexistent/p.db'")]
#[case::catch_up_missing_primary(&["catch-up", "--primary", "/nonexistent/p.db", "--replica", "r.db"], "aerodb: primary /nonexistent/p.db")]
#[case::serve_missing_token(&["serve", "--db", "p.db", "--listen", "localhost:0", "--token-file", "/nonexistent/t"], "aerodb: --token-file /nonexistent/t")]
fn runtime_failures_exit_1(#[case] args: &[&str], #[case] says: &str) {
    let out = aerodb(args);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
}

#[test]
fn flags_take_their_value_after_an_equals_sign() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = primary(&p_path);
    let head = insert(&p, 1..=5);
    let out = aerodb(&[
        "catch-up",
        &format!("--primary={}", p_path.display()),
        &format!("--replica={}", r_path.display()),
        "--segment-bytes=200",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stdout).ends_with(&format!("caught up: replica at commit {head}\n")),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(recorded(&r_path).applied_commit_id.map(|c| c.0), Some(head));
}

// ------------------------------------------------- 2. serve: names, logs

/// `GET target` with the token; returns the status code.
fn get(addr: &str, target: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connects");
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"))
}

#[rstest]
#[case::text("text")]
#[case::json("json")]
fn serve_resolves_localhost_and_logs_each_request_never_the_token(#[case] format: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p_path = dir.path().join("p.db");
    let p = primary(&p_path);
    insert(&p, 1..=2);
    let token = token_file(dir.path());
    let mut server = Running::start(
        &[
            "serve",
            "--db",
            p_path.to_str().expect("UTF-8"),
            "--listen",
            "localhost:0",
            "--token-file",
            token.to_str().expect("UTF-8"),
            "--log-format",
            format,
        ],
        Stdio::null(),
    );
    let line = server.wait_line("serving", |l| l.starts_with("aerodb serve: serving"));
    let addr = line
        .rsplit_once("http://")
        .map(|(_, a)| a.to_owned())
        .expect("an address");
    assert!(
        addr.starts_with("127.0.0.1:") || addr.starts_with("[::1]:"),
        "{line}"
    );
    let expected = [("/v1/head", 200), ("/v1/segments", 200), ("/nope", 404)];
    let mut access = Vec::new();
    for (path, status) in expected {
        let target = match path {
            "/v1/segments" => "/v1/segments?from=1&wait_ms=0",
            p => p,
        };
        assert_eq!(get(&addr, target), status);
        // The line is written once the response is sent: wait for it.
        access.push(server.wait_log_line(path, |l| {
            l.contains("aerodb::access") && l.contains(&format!("\"{path}\""))
        }));
    }
    server.signal("KILL");
    let (_, _, stderr) = server.exit();
    assert!(!stderr.contains(TOKEN), "the log shows the token: {stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("aerodb::access"))
            .count(),
        3,
        "{stderr}"
    );
    for (line, (path, status)) in access.iter().zip(expected) {
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let f = &v["fields"];
            assert_eq!(f["method"], "GET", "{line}");
            assert_eq!(f["path"], path, "{line}");
            assert_eq!(f["status"], status, "{line}");
            assert!(f["bytes"].as_u64().is_some_and(|b| b > 0), "{line}");
            assert!(f["duration_ms"].as_f64().is_some(), "{line}");
            assert!(
                f["peer"].as_str().is_some_and(|p| p.contains(':')),
                "{line}"
            );
            assert!(v["timestamp"].as_str().is_some(), "{line}");
        } else {
            for field in [
                "method=\"GET\"".to_string(),
                format!("path=\"{path}\""),
                format!("status={status}"),
                "bytes=".into(),
                "duration_ms=".into(),
                "peer=\"".into(),
            ] {
                assert!(line.contains(&field), "{field} not in {line}");
            }
            // A UTC timestamp opens the line.
            assert!(
                line.get(..4)
                    .is_some_and(|y| y.bytes().all(|b| b.is_ascii_digit()))
                    && line.contains('T')
                    && line.contains('Z'),
                "{line}"
            );
        }
    }
}

// ---------------------------------------------- 3. replica as a service

fn replica_args<'a>(p: &'a Path, r: &'a Path) -> Vec<&'a str> {
    vec![
        "replica",
        "--primary",
        p.to_str().expect("UTF-8"),
        "--replica",
        r.to_str().expect("UTF-8"),
    ]
}

/// `aerodb replica` of the server at `url` (its token in `token`) into
/// `r`, plus `extra` flags, stdin from /dev/null.
fn replica_of_server(url: &str, token: &Path, r: &Path, extra: &[&str]) -> Running {
    let mut args = vec![
        "replica",
        "--primary",
        url,
        "--token-file",
        token.to_str().expect("UTF-8"),
        "--replica",
        r.to_str().expect("UTF-8"),
    ];
    args.extend_from_slice(extra);
    Running::start(&args, Stdio::null())
}

#[rstest]
#[case::sigterm("TERM", "SIGTERM")]
#[case::sigint("INT", "SIGINT")]
fn a_signal_stops_the_replica_cleanly_with_the_stop_recorded_and_stdin_eof_does_not(
    #[case] signal: &str,
    #[case] name: &str,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = primary(&p_path);
    let head = insert(&p, 1..=3);
    // stdin is /dev/null: at EOF from the start, as under systemd or nohup.
    let mut replica = Running::start(&replica_args(&p_path, &r_path), Stdio::null());
    replica.wait_line("Ready at the head", |l| ready_at(l, head));
    // Still running after stdin's EOF: it follows a new commit.
    let head = insert(&p, 4..=4);
    replica.wait_line("Ready at the new head", |l| ready_at(l, head));
    let live = recorded(&r_path).runtime.expect("recorded state");
    assert_eq!(
        (live.global_state.as_str(), live.read_status.as_str()),
        ("Ready", "read-safe")
    );
    replica.signal(signal);
    let (status, rest, stderr) = replica.exit();
    assert_eq!(status.code(), Some(0), "{rest:?} {stderr}");
    assert_eq!(
        rest.last().map(String::as_str),
        Some(format!("stopped: applied commit {head}; state Disabled").as_str()),
        "{rest:?}"
    );
    assert!(stderr.contains(&format!("{name} received")), "{stderr}");
    let stopped = recorded(&r_path).runtime.expect("recorded state");
    assert_eq!(
        (stopped.global_state.as_str(), stopped.read_status.as_str()),
        ("Disabled", ""),
        "{stopped:?}"
    );
    assert_eq!(
        last_transition_reason(&r_path),
        format!("Disabled: stopped by {name} (aerodb replica)")
    );
}

#[test]
fn with_stop_on_stdin_eof_closing_stdin_stops_the_replica_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = primary(&p_path);
    let head = insert(&p, 1..=3);
    let mut args = replica_args(&p_path, &r_path);
    args.push("--stop-on-stdin-eof");
    let mut replica = Running::start(&args, Stdio::piped());
    replica.wait_line("Ready at the head", |l| ready_at(l, head));
    drop(replica.child.stdin.take());
    let (status, rest, stderr) = replica.exit();
    assert_eq!(status.code(), Some(0), "{rest:?} {stderr}");
    assert_eq!(
        recorded(&r_path).runtime.expect("state").global_state,
        "Disabled"
    );
    assert_eq!(
        last_transition_reason(&r_path),
        "Disabled: stdin closed (aerodb replica --stop-on-stdin-eof)"
    );
}

#[test]
fn replica_keeps_running_while_the_server_is_down_and_resumes_when_it_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = primary(&p_path);
    let head = insert(&p, 1..=3);
    let token = token_file(dir.path());
    let (server, port) = serve(&p_path, &token, 0, &[]);
    let url = format!("http://127.0.0.1:{port}");
    let mut replica = replica_of_server(&url, &token, &r_path, &[]);
    replica.wait_line("Ready at the head", |l| ready_at(l, head));
    let resume_at = head + 1;
    // The server goes away: the replica shows it, explicitly, and waits.
    drop(server);
    replica.wait_line("read-blocked on SOURCE_UNAVAILABLE", |l| {
        l.contains("read-blocked") && l.contains("SOURCE_UNAVAILABLE")
    });
    let head = insert(&p, 4..=6);
    let (_server, again) = serve(&p_path, &token, port, &[]);
    assert_eq!(again, port);
    replica.wait_line("Ready at the new head", |l| ready_at(l, head));
    assert!(
        transitions(&r_path)
            .iter()
            .any(|t| t.ends_with(&format!("answers again; resuming at commit {resume_at}"))),
        "{:?}",
        transitions(&r_path)
    );
    replica.signal("TERM");
    let (status, rest, stderr) = replica.exit();
    assert_eq!(status.code(), Some(0), "{rest:?} {stderr}");
    assert!(
        stderr.contains("the WAL source does not answer") && stderr.contains("answers again"),
        "{stderr}"
    );
    assert_eq!(recorded(&r_path).applied_commit_id.map(|c| c.0), Some(head));
}

#[test]
fn until_caught_up_exits_0_at_the_primary_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = primary(&p_path);
    let head = insert(&p, 1..=5);
    let mut args = replica_args(&p_path, &r_path);
    args.extend([
        "--until-caught-up",
        "--segment-bytes=200",
        "--queue-depth=1",
    ]);
    let out = aerodb(&args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stdout).ends_with(&format!("stopped: applied commit {head}; state Disabled\n")),
        "{}",
        text(&out.stdout)
    );
    // Progress against the source's head: where it is and what is left.
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("applied commit {head} "))
                && l.contains(&format!(" of source head {head}; state Ready"))),
        "{stdout}"
    );
    for l in stdout.lines().filter(|l| l.contains(" of source head ")) {
        assert!(
            l.starts_with(&format!("applied commit {head} ")) || l.contains(" to go"),
            "behind the head, a line says what is left: {l}"
        );
    }
}

/// A WAL server that advertises `head` and never delivers a segment (it
/// closes every `/v1/segments` request unanswered): a replica of it stays
/// behind, waiting for its source. Serves until the process ends.
fn server_that_never_delivers(head: u64) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            if request.starts_with(b"GET /v1/head") {
                let body = format!(
                    "{{\"generation\": \"0123456789abcdef\", \"head\": {head}, \"oldest\": 1}}"
                );
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        }
    });
    port
}

#[test]
fn until_caught_up_exits_1_when_stopped_before_the_head() {
    // Asked to catch up with commit 473, stopped by SIGTERM at 0: not a
    // success (the old code exited 0 here).
    let dir = tempfile::tempdir().expect("tempdir");
    let r_path = dir.path().join("r.db");
    let token = token_file(dir.path());
    let url = format!("http://127.0.0.1:{}", server_that_never_delivers(473));
    let mut replica = replica_of_server(&url, &token, &r_path, &["--until-caught-up"]);
    replica.wait_line("read-blocked on SOURCE_UNAVAILABLE", |l| {
        l.contains("read-blocked") && l.contains("SOURCE_UNAVAILABLE")
    });
    replica.signal("TERM");
    let (status, rest, stderr) = replica.exit();
    assert_eq!(status.code(), Some(1), "{rest:?} {stderr}");
    assert!(
        stderr.contains(
            "aerodb: stopped by SIGTERM (aerodb replica) before catching up: applied commit 0 of the primary's head 473"
        ),
        "{stderr}"
    );
    // The stop itself is recorded as usual.
    assert_eq!(
        last_transition_reason(&r_path),
        "Disabled: stopped by SIGTERM (aerodb replica)"
    );
}

#[test]
fn a_block_an_operator_must_resolve_stops_the_replica_and_exits_1() {
    // A replica of one primary pointed at another (a foreign generation):
    // not an outage, so the service does not wait for it to pass.
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, q_path, r_path) = (
        dir.path().join("p.db"),
        dir.path().join("q.db"),
        dir.path().join("r.db"),
    );
    let p = primary(&p_path);
    insert(&p, 1..=2);
    let q = primary(&q_path);
    insert(&q, 1..=4);
    let mut args = replica_args(&p_path, &r_path);
    args.push("--until-caught-up");
    assert_eq!(aerodb(&args).status.code(), Some(0));
    let out = aerodb(&replica_args(&q_path, &r_path));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("aerodb: replication was blocked: Ready (read-blocked: "),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        recorded(&r_path).runtime.expect("state").global_state,
        "Disabled"
    );
}

// ------------------------------------------ catch-up on a truncated primary

fn rows_of(db: &Path) -> Vec<(i64, String)> {
    Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.prepare("SELECT id, v FROM t ORDER BY id")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .expect("rows of t")
}

#[test]
fn catch_up_on_a_truncated_primary_bootstraps_from_a_snapshot_then_follows_the_wal() {
    // Found by trying (issue 11): catch-up on a truncated primary failed
    // instead of bootstrapping as `aerodb replica` does.
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path, s_path) = (
        dir.path().join("p.db"),
        dir.path().join("r.db"),
        dir.path().join("s.db"),
    );
    let p = primary(&p_path);
    insert(&p, 1..=9);
    let catch_up = |replica: &Path| {
        aerodb(&[
            "catch-up",
            "--primary",
            p_path.to_str().expect("UTF-8"),
            "--replica",
            replica.to_str().expect("UTF-8"),
            "--segment-bytes=300",
        ])
    };
    // s.db follows up to commit 10 while the WAL is whole.
    let out = catch_up(&s_path);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let head = insert(&p, 10..=29);
    assert_eq!(
        p.truncate_wal(replication::wal::CommitId(20))
            .expect("truncate")
            .0,
        20
    );

    // A new replica (needs commit 1) and one at commit 10 (needs 11): both
    // bootstrap, then apply the WAL after the snapshot.
    for (replica, needs) in [(&r_path, 1), (&s_path, 11)] {
        let out = catch_up(replica);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert!(
            stdout.contains(&format!(
                "the primary's WAL starts at commit 20; the replica needs commit {needs}: bootstrapping from a snapshot"
            )) && stdout.contains(&format!("installed a snapshot of commits {needs}..={head}")),
            "{stdout}"
        );
        assert!(
            stdout.ends_with(&format!("caught up: replica at commit {head}\n")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "took a snapshot of the primary at commit {head} ("
            )),
            "{stdout}"
        );
        assert_eq!(rows_of(replica), rows_of(&p_path));
    }
    // No snapshot file is left beside the replicas.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("snapshot"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // WAL after the snapshot: the next catch-up applies it, no bootstrap.
    let head = insert(&p, 30..=34);
    let out = catch_up(&r_path);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!stdout.contains("bootstrapping"), "{stdout}");
    assert!(
        stdout.ends_with(&format!("caught up: replica at commit {head}\n")),
        "{stdout}"
    );
    assert_eq!(rows_of(&r_path), rows_of(&p_path));
}

// ------------------------------------------------------------- aerodb status

fn status(replica: &Path, json: bool) -> (Option<i32>, String, String) {
    let mut args = vec!["status", replica.to_str().expect("UTF-8")];
    if json {
        args.push("--json");
    }
    let out = aerodb(&args);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

fn status_json(replica: &Path) -> (Option<i32>, serde_json::Value) {
    let (code, stdout, stderr) = status(replica, true);
    let v = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("status --json is one JSON object ({e}): {stdout} {stderr}"));
    (code, v)
}

#[test]
fn status_exits_0_read_safe_1_blocked_2_diverged_or_unreadable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, q_path, r_path, b_path) = (
        dir.path().join("p.db"),
        dir.path().join("q.db"),
        dir.path().join("r.db"),
        dir.path().join("b.db"),
    );
    let p = primary(&p_path);
    let head = insert(&p, 1..=3);
    let mut args = replica_args(&p_path, &r_path);
    args.push("--until-caught-up");
    assert_eq!(aerodb(&args).status.code(), Some(0));

    // Caught up and stopped: reads allowed, exit 0.
    let (code, stdout, _) = status(&r_path, false);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("commit {head} (WAL offset"))
            && stdout.contains("state                  Disabled")
            && stdout.contains("reads                  ALLOWED: ")
            && stdout.contains("WAL Applier"),
        "{stdout}"
    );
    let (code, v) = status_json(&r_path);
    assert_eq!(code, Some(0));
    assert_eq!(v["role"], "replica");
    assert_eq!(v["applied_commit_id"], head);
    assert_eq!(v["global_state"], "Disabled");
    assert_eq!(v["verdict"]["code"], "ALLOWED");
    assert_eq!(v["verdict"]["allowed"], true);
    assert_eq!(v["source_head_commit_id"], head, "{v}");
    assert_eq!(v["lag_commits"], 0, "{v}");
    assert!(
        v["components"].as_array().is_some_and(|c| c.len() == 6),
        "{v}"
    );

    // Pointed at a foreign primary: diverged, exit 2, also once stopped.
    let q = primary(&q_path);
    insert(&q, 1..=4);
    assert_eq!(
        aerodb(&replica_args(&q_path, &r_path)).status.code(),
        Some(1)
    );
    let (code, v) = status_json(&r_path);
    assert_eq!(code, Some(2), "{v}");
    assert_eq!(v["verdict"]["code"], "DIVERGED", "{v}");
    assert_eq!(v["verdict"]["allowed"], false);
    assert!(
        v["blocking_reason"]
            .as_str()
            .is_some_and(|r| r.contains("FOREIGN_GENERATION")),
        "{v}"
    );

    // A record corrupted on the primary: rejected, blocked, exit 1.
    let head = insert(&p, 4..=6);
    {
        let c = Connection::open(&p_path).expect("open the primary");
        let mut record: Vec<u8> = c
            .query_row(
                "SELECT record FROM aerodb_commits WHERE commit_id = ?1",
                [head as i64],
                |r| r.get(0),
            )
            .expect("the last record");
        let n = record.len();
        record[n - 9] ^= 0x01; // a byte of its row's text value
        c.execute(
            "UPDATE aerodb_commits SET record = ?2 WHERE commit_id = ?1",
            rusqlite::params![head as i64, record],
        )
        .expect("corrupt the last record");
    }
    let mut args = replica_args(&p_path, &b_path);
    args.push("--until-caught-up");
    assert_eq!(aerodb(&args).status.code(), Some(1));
    let (code, v) = status_json(&b_path);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["verdict"]["code"], "BLOCKED", "{v}");
    // It knows what it lacks: the source advertised the head it cannot apply.
    assert_eq!(v["source_head_commit_id"], head, "{v}");
    let applied = v["applied_commit_id"].as_u64().expect("applied");
    assert!(applied < head, "{v}");
    assert_eq!(v["lag_commits"], head - applied, "{v}");
    let (code, stdout, _) = status(&b_path, false);
    assert_eq!(code, Some(1));
    assert!(stdout.contains("last error CORRUPT: "), "{stdout}");

    // Not a replica, or no file at all: exit 2 with the reason.
    let (code, v) = status_json(&p_path);
    assert_eq!(code, Some(2));
    assert_eq!(v["error"], "it is an AeroDB primary, not a replica");
    let missing = dir.path().join("missing.db");
    let (code, _, stderr) = status(&missing, false);
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with(&format!(
            "aerodb status: {}: opening it read-only: ",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(!missing.exists(), "status never creates a file");
}

// ---------------------------------------------- metrics, /health, /ready

/// `GET path` on `port` without credentials: (status, body).
fn plain_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn metric(body: &str, name: &str) -> Option<i64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn replica_metrics_health_and_ready_follow_the_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = primary(&p_path);
    let head = insert(&p, 1..=3);
    let token = token_file(dir.path());
    let (server, port) = serve(&p_path, &token, 0, &[]);
    let url = format!("http://127.0.0.1:{port}");
    let mut replica =
        replica_of_server(&url, &token, &r_path, &["--metrics-listen", "127.0.0.1:0"]);
    let line = replica.wait_line("the metrics address", |l| l.starts_with("metrics: serving"));
    let mport: u16 = line
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    replica.wait_line("Ready at the head", |l| ready_at(l, head));

    assert_eq!(plain_get(mport, "/health"), (200, "ok\n".to_string()));
    let (code, ready) = plain_get(mport, "/ready");
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("\"ready\":true"), "{ready}");
    let (code, body) = plain_get(mport, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        metric(&body, "aerodb_replica_applied_commit_id"),
        Some(head as i64),
        "{body}"
    );
    assert_eq!(
        metric(&body, "aerodb_replica_source_head_commit_id"),
        Some(head as i64),
        "{body}"
    );
    assert_eq!(
        metric(&body, "aerodb_replica_lag_commits"),
        Some(0),
        "{body}"
    );
    assert_eq!(metric(&body, "aerodb_replica_read_safe"), Some(1), "{body}");
    assert_eq!(
        metric(&body, "aerodb_replica_state{state=\"Ready\"}"),
        Some(1),
        "{body}"
    );
    assert_eq!(
        metric(&body, "aerodb_replica_state{state=\"Disabled\"}"),
        Some(0),
        "{body}"
    );
    assert!(
        metric(&body, "aerodb_replica_transitions_total").is_some_and(|n| n > 0),
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(plain_get(mport, "/nope").0, 404);

    // The source goes away: read-blocked, /ready says why, /health stays.
    drop(server);
    replica.wait_line("read-blocked on SOURCE_UNAVAILABLE", |l| {
        l.contains("read-blocked") && l.contains("SOURCE_UNAVAILABLE")
    });
    let (code, ready) = plain_get(mport, "/ready");
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready.contains("\"ready\":false") && ready.contains("SOURCE_UNAVAILABLE"),
        "{ready}"
    );
    assert_eq!(plain_get(mport, "/health").0, 200);
    let (_, body) = plain_get(mport, "/metrics");
    assert_eq!(metric(&body, "aerodb_replica_read_safe"), Some(0), "{body}");
    assert!(
        body.contains("aerodb_replica_component_error{component=\"WAL Receiver\",code=\"SOURCE_UNAVAILABLE\"} 1"),
        "{body}"
    );

    // SIGTERM: the listener closes with the replica.
    replica.signal("TERM");
    let (status, rest, stderr) = replica.exit();
    assert_eq!(status.code(), Some(0), "{rest:?} {stderr}");
    assert!(
        TcpStream::connect(("127.0.0.1", mport)).is_err(),
        "the listener closed"
    );
}

#[test]
fn serve_metrics_count_requests_bytes_and_held_long_polls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p_path = dir.path().join("p.db");
    let p = primary(&p_path);
    let head = insert(&p, 1..=3);
    let token = token_file(dir.path());
    let (mut server, port) = serve(&p_path, &token, 0, &["--metrics-listen", "127.0.0.1:0"]);
    let line = server.wait_line("the metrics address", |l| {
        l.starts_with("aerodb serve: metrics on")
    });
    let mport: u16 = line
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let addr = format!("127.0.0.1:{port}");
    assert_eq!(get(&addr, "/v1/head"), 200);
    assert_eq!(get(&addr, "/v1/head"), 200);
    assert_eq!(get(&addr, "/v1/segments?from=1"), 200);
    assert_eq!(get(&addr, "/nope/../etc"), 404);
    assert_eq!(plain_get(mport, "/health").0, 200);
    let (code, body) = plain_get(mport, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        metric(
            &body,
            "aerodb_serve_requests_total{endpoint=\"/v1/head\",status=\"200\"}"
        ),
        Some(2),
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            "aerodb_serve_requests_total{endpoint=\"other\",status=\"404\"}"
        ),
        Some(1),
        "{body}"
    );
    assert_eq!(
        metric(&body, "aerodb_serve_head_commit_id"),
        Some(head as i64),
        "{body}"
    );
    assert_eq!(
        metric(&body, "aerodb_serve_oldest_commit_id"),
        Some(1),
        "{body}"
    );
    assert!(
        metric(&body, "aerodb_serve_sent_bytes_total").is_some_and(|b| b > 0),
        "{body}"
    );
    assert_eq!(metric(&body, "aerodb_serve_long_polls"), Some(0), "{body}");

    // A long-poll past the head is held until the primary commits.
    let target = format!("/v1/segments?from={}&wait_ms=30000", head + 1);
    let poll = {
        let addr = addr.clone();
        std::thread::spawn(move || get(&addr, &target))
    };
    let held = (0..10_000)
        .any(|_| metric(&plain_get(mport, "/metrics").1, "aerodb_serve_long_polls") == Some(1));
    assert!(held, "the long-poll shows as held");
    insert(&p, 4..=4);
    assert_eq!(poll.join().expect("long-poll"), 200);
    let (_, body) = plain_get(mport, "/metrics");
    assert_eq!(metric(&body, "aerodb_serve_long_polls"), Some(0), "{body}");
}
