//! `aerodb serve` and the HTTP WAL source, end to end: a real server
//! process on loopback, real primary and replica files, the threaded
//! replica runtime.
//!
//! - A replica follows a primary through the server: backlog, then live
//!   writes (long-poll); the tables equal the primary's.
//! - The server is killed (SIGKILL) and restarted on the same port: the
//!   replica stops explicitly (`SOURCE_UNAVAILABLE`, reads refused), then
//!   resumes by itself, recorded as a transition; nothing lost or applied
//!   twice.
//! - A wrong token gets 401, logged (warning and access line with path and
//!   peer), and the server never logs the token.
//! - Malformed, oversized and out-of-range requests get a 4xx whose JSON
//!   `error` says why.
//! - A primary whose WAL was truncated bootstraps new and lagging replicas
//!   from a snapshot (over HTTP and from the file).
//! - A fork (primary restored from a backup and written again), a primary
//!   behind the replica and a foreign primary are DIVERGED, and nothing of
//!   their WAL is applied.
//!
//! Rules proven: F1 (a source failure stops replication explicitly,
//! read-blocked, and resuming is a recorded transition), V1 (fork, foreign
//! generation, continuity), T1 (snapshot bootstrap recorded with its
//! CommitId, generation and checksum), W1/W2 (nothing lost or applied
//! twice), E1/E2 (every refusal names its code, CommitIds and WAL offset).
//!
//! No test sleeps: every wait is on the replica's published state
//! (`Replica::wait_until`), on a child's output, or on a request line seen
//! by a relay in front of the server (to kill it while a long-poll is out).

use replication::read_gate::DecisionCode;
use replication::runtime::{Component, Config, Failure, View, WaitError};
use replication::state::{GlobalState, ReadStatus};
use replication::wal::{ChainPosition, CommitId, Generation};
use rstest::rstest;
use rusqlite::{Connection, OpenFlags};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;
use storage_adapter::primary::Primary;
use storage_adapter::runtime::{Replica, SegmentRow};

mod serve_common;
use serve_common::{deadline, token_file, Server, TOKEN};

/// A TCP relay in front of a server's port that reports every request line
/// passing through: it shows the test where the replica's Receiver is (a
/// long-poll sent), so a kill lands there by construction, not by timing.
struct Relay {
    port: u16,
    requests: mpsc::Receiver<String>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(server_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay bind");
        let port = listener.local_addr().expect("relay address").port();
        let (tx, requests) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                // No server: the client sees its connection closed.
                let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)) else {
                    continue;
                };
                let tx = tx.clone();
                let (mut c_in, mut s_out) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || {
                    // Client to server, reporting request lines.
                    let mut buf = [0u8; 4096];
                    let mut line = Vec::new();
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        for &b in &buf[..n] {
                            if b == b'\n' {
                                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                                if text.starts_with("GET ") {
                                    let _ = tx.send(text);
                                }
                                line.clear();
                            } else {
                                line.push(b);
                            }
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                std::thread::spawn(move || {
                    // Server to client; when the server goes, so does the
                    // client's connection.
                    let (mut s_in, mut c_out) = (server, client);
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(Shutdown::Both);
                    let _ = s_in.shutdown(Shutdown::Both);
                });
            }
        });
        Relay {
            port,
            requests,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits for a request line containing every one of `parts`; returns it.
    fn wait_for_request(&self, parts: &[&str]) -> String {
        let end = deadline();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.requests.recv_timeout(left) {
                Ok(line) if parts.iter().all(|p| line.contains(p)) => return line,
                Ok(_) => {}
                Err(e) => panic!("no request with {parts:?} came through the relay: {e}"),
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// How a replica reads its primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// `Replica::start_from_file`.
    File,
    /// `Replica::start_from_url` through `aerodb serve`.
    Http,
}

/// A primary file and, over HTTP, the server on it (restarted on the same
/// port each time it is needed again).
struct Source {
    via: Via,
    primary: PathBuf,
    token_file: PathBuf,
    server: Option<Server>,
    port: u16,
}

impl Source {
    fn new(via: Via, dir: &Path) -> Source {
        Source {
            via,
            primary: dir.join("p.db"),
            token_file: token_file(dir),
            server: None,
            port: 0,
        }
    }

    /// Starts a replica in `replica` on this source (and the server, if it
    /// is not running).
    fn start_replica(&mut self, replica: &Path, config: Config) -> Replica {
        match self.via {
            Via::File => Replica::start_from_file(replica, &self.primary, config),
            Via::Http => {
                let url = self.server().url();
                Replica::start_from_url(replica, &url, TOKEN, config)
            }
        }
        .expect("replica starts")
    }

    fn server(&mut self) -> &Server {
        if self.server.is_none() {
            let s = Server::start(&self.primary, &self.token_file, self.port);
            self.port = s.port;
            self.server = Some(s);
        }
        self.server.as_ref().expect("just started")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop_server(&mut self) {
        self.server.take();
    }
}

// ----------------------------------------------------------------- primary

/// A primary with table `t` (its schema record is commit 1).
fn primary(path: &Path) -> Primary {
    let p = Primary::open(path).expect("primary");
    p.connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .expect("table");
    p.replicate("t").expect("replicate");
    p
}

/// One commit per row: `(id, tag || id)`. Returns the head.
fn insert(p: &Primary, ids: RangeInclusive<i64>, tag: &str) -> CommitId {
    for id in ids {
        p.connection()
            .execute(
                "INSERT INTO t VALUES (?1, ?2 || ?1)",
                rusqlite::params![id, tag],
            )
            .expect("insert");
    }
    p.head().expect("head")
}

fn rows(conn: &Connection) -> Vec<(i64, String)> {
    conn.prepare("SELECT id, v FROM t ORDER BY id")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .expect("rows of t")
}

fn read_only(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open read-only")
}

/// Removes a database file and its `-wal` and `-shm`.
fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut f = path.as_os_str().to_owned();
        f.push(suffix);
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing {}: {e}", PathBuf::from(f).display()),
        }
    }
}

// ------------------------------------------------------------------ checks

fn ready_safe(s: &View) -> bool {
    s.global
        == GlobalState::Ready {
            read: ReadStatus::Safe,
        }
}

fn blocked(s: &View) -> bool {
    replication::runtime::is_blocked(&s.global)
}

fn caught_up(s: &View, head: CommitId) -> bool {
    ready_safe(s) && s.applied.commit_id == head
}

/// What a snapshot shows, for failure messages.
fn show(s: &View) -> String {
    let errors: Vec<String> = s
        .components
        .iter()
        .map(|c| format!("{}: {} {:?}", c.component, c.state, c.last_error))
        .collect();
    format!(
        "{} (applied {}, {:?}); {}",
        s.global,
        s.applied.commit_id,
        s.progress,
        errors.join("; ")
    )
}

fn wait(replica: &Replica, what: &str, done: impl FnMut(&View) -> bool) -> View {
    match replica.wait_until(deadline(), done) {
        Ok(s) => (*s).clone(),
        Err(s) => panic!("timed out waiting for {what}: {}", show(&s)),
    }
}

/// Every row Applied; they cover commits 1..=head exactly once, each
/// starting where the previous ended (CommitId and WAL offset).
fn assert_contiguous(segments: &[SegmentRow], head: CommitId) {
    let mut next = CommitId(1);
    let mut offset = None;
    for s in segments {
        assert_eq!(s.state, "Applied", "{segments:#?}");
        assert_eq!(
            s.first_commit_id, next,
            "each commit once, none missing: {segments:#?}"
        );
        assert!(s.last_commit_id >= s.first_commit_id, "{segments:#?}");
        if offset.is_some() {
            assert_eq!(s.first_wal_offset, offset, "{segments:#?}");
        }
        next = s.last_commit_id.next();
        offset = s.end_wal_offset;
    }
    assert_eq!(next, head.next(), "segments end at the head: {segments:#?}");
}

/// The replica's table equals the primary's.
fn assert_same_rows(p: &Primary, replica: &Path) {
    assert_eq!(rows(&read_only(replica)), rows(p.connection()));
}

/// `aerodb_replica_bootstrap` rows: (commit_id, generation, checksum,
/// replaced_from, tables).
fn bootstraps(replica: &Path) -> Vec<(i64, i64, i64, i64, String)> {
    read_only(replica)
        .prepare(
            "SELECT commit_id, generation, checksum, replaced_from, tables FROM aerodb_replica_bootstrap ORDER BY commit_id",
        )
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect()
        })
        .expect("bootstrap rows")
}

fn checksum_of_t(conn: &Connection) -> i64 {
    i64::from(
        storage_adapter::snapshot::checksum(conn, "main", &["t".to_string()]).expect("checksum"),
    )
}

// ----------------------------------------------------- 1. following

#[test]
fn replica_follows_a_primary_through_the_server_backlog_then_live_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = primary(&p_path);
    let backlog = insert(&p, 1..=40, "a");
    let server = Server::start(&p_path, &token_file(dir.path()), 0);
    let config = Config {
        segment_bytes: 400,
        ..Config::default()
    };
    let replica = Replica::start_from_url(&r_path, &server.url(), TOKEN, config).expect("start");
    wait(&replica, "the backlog", |s| caught_up(s, backlog));

    // Live writes reach the long-polling replica: inserts, an update, a
    // delete, a multi-row transaction.
    insert(&p, 41..=55, "a");
    p.connection()
        .execute("UPDATE t SET v = 'updated' WHERE id = 3", [])
        .expect("update");
    p.connection()
        .execute("DELETE FROM t WHERE id = 4", [])
        .expect("delete");
    p.connection()
        .execute_batch(
            "BEGIN; INSERT INTO t VALUES (100, 'x'); INSERT INTO t VALUES (101, 'y'); COMMIT;",
        )
        .expect("transaction");
    let head = p.head().expect("head");
    assert_eq!(head, CommitId(59), "one CommitId per committed transaction");
    let s = wait(&replica, "the live writes", |s| caught_up(s, head));

    assert_eq!(s.global.to_string(), "Ready (read-safe)");
    assert_eq!(
        s.progress,
        replication::supervisor::Progress {
            received: head,
            validated: head,
            applied: head
        }
    );
    let receiver = s.component(Component::Receiver);
    assert_eq!(
        receiver.state,
        format!("Waiting for WAL (next commit {})", head.next())
    );
    assert_eq!(receiver.last_error, None);
    assert_same_rows(&p, &r_path);
    let segments = replica.segments().expect("segments");
    assert!(
        segments.len() > 3,
        "a backlog in several segments: {segments:#?}"
    );
    assert_contiguous(&segments, head);
    let d = replica.explain_read(Some(head)).expect("gate");
    assert_eq!(d.code, DecisionCode::Allowed, "{d}");
    let d = replica.explain_read(Some(head.next())).expect("gate");
    assert_eq!(d.code, DecisionCode::Behind, "{d}");
    let history = replica.transitions().expect("transitions");
    assert_eq!(history[0].to_state, "Initializing");
    assert_eq!(history[0].reason, "replica starting for the first time");
    let last = replica.stop();
    assert_eq!(last.global, GlobalState::Disabled);
}

// --------------------------------------- 2. server killed and restarted

#[rstest]
#[case::while_the_replica_catches_up_a_backlog(true)]
#[case::while_the_replica_long_polls_for_new_wal(false)]
fn server_killed_and_restarted_on_the_same_port_replica_resumes_losing_and_duplicating_nothing(
    #[case] mid_backlog: bool,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let tokens = token_file(dir.path());
    let p = primary(&p_path);
    let head = insert(&p, 1..=if mid_backlog { 600 } else { 10 }, "a");
    let server = Server::start(&p_path, &tokens, 0);
    let port = server.port;
    // Idle, the replica reads through a relay that shows when its
    // long-poll is out; catching up, it reads the server directly.
    let relay = (!mid_backlog).then(|| Relay::start(port));
    let url = relay.as_ref().map_or_else(|| server.url(), Relay::url);
    let config = Config {
        segment_bytes: 300,
        ..Config::default()
    };
    let replica = Replica::start_from_url(&r_path, &url, TOKEN, config).expect("start");
    if let Some(relay) = &relay {
        wait(&replica, "the replica to catch up", |s| caught_up(s, head));
        relay.wait_for_request(&[&format!("from={}&", head.next()), "wait_ms=500"]);
    } else {
        wait(&replica, "part of the backlog", |s| {
            s.applied.commit_id >= CommitId(60)
        });
    }
    server.kill();

    // Replication stops, explicitly; reads are refused.
    let s = wait(&replica, "the replica to block", blocked);
    let receiver = s.component(Component::Receiver);
    assert_eq!(receiver.state, "Failed", "{}", show(&s));
    let e = receiver.last_error.clone().expect("the receiver's error");
    assert_eq!(e.code, "SOURCE_UNAVAILABLE", "{e:?}");
    assert!(
        e.reason.starts_with(&format!("WAL server {url}: ")),
        "{e:?}"
    );
    assert_eq!(
        s.global.to_string(),
        format!(
            "Ready (read-blocked: WAL receiver failed: SOURCE_UNAVAILABLE: {})",
            e.reason
        )
    );
    if mid_backlog {
        assert!(
            s.progress.received < head,
            "killed mid-stream: {}",
            show(&s)
        );
    }
    let d = replica.explain_read(None).expect("gate");
    assert_eq!(d.code, DecisionCode::Blocked, "{d}");
    assert_eq!(d.code.as_str(), "BLOCKED");
    assert!(
        d.explanation.starts_with(
            "read refused: replication is blocked (WAL receiver failed: SOURCE_UNAVAILABLE: "
        ),
        "{d}"
    );
    match replica.wait_for(head.next(), deadline()) {
        Err(WaitError::Unreachable { .. }) => {}
        other => panic!("waiting on a blocked replica must fail at once: {other:?}"),
    }
    let resume_at = s.progress.received.next();

    // The primary keeps taking writes; the server comes back on its port.
    let head = insert(&p, 1000..=1019, "b");
    let server = Server::start(&p_path, &tokens, port);
    let s = wait(&replica, "the replica to resume and catch up", |s| {
        caught_up(s, head)
    });
    assert_eq!(s.component(Component::Receiver).last_error, None);

    let history = replica.transitions().expect("transitions");
    let stopped = format!("replication stopped: SOURCE_UNAVAILABLE: WAL server {url}: ");
    let stops: Vec<usize> = (0..history.len())
        .filter(|&i| history[i].reason.starts_with(&stopped))
        .collect();
    assert_eq!(stops.len(), 1, "{history:#?}");
    let why = &history[stops[0]].reason["replication stopped: ".len()..];
    assert_eq!(
        history[stops[0]].to_state,
        format!("Ready (read-blocked: WAL receiver failed: {why})")
    );
    let resumed = format!("WAL server {url} answers again; resuming at commit {resume_at}");
    let resumes: Vec<usize> = (0..history.len())
        .filter(|&i| {
            history[i]
                .reason
                .contains("answers again; resuming at commit")
        })
        .collect();
    assert_eq!(resumes.len(), 1, "{history:#?}");
    let r = &history[resumes[0]];
    assert_eq!(r.reason, resumed);
    assert!(resumes[0] > stops[0], "{history:#?}");
    assert!(
        r.from_state
            .starts_with("Ready (read-blocked: WAL receiver failed: SOURCE_UNAVAILABLE"),
        "{r:?}"
    );

    // Nothing lost, nothing applied twice.
    assert_same_rows(&p, &r_path);
    assert_contiguous(&replica.segments().expect("segments"), head);
    replica.stop();
    drop(server);
}

// ---------------------------------------------------------- 3. wrong token

#[test]
fn wrong_token_is_refused_with_401_and_the_server_never_logs_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let p = primary(&p_path);
    insert(&p, 1..=3, "a");
    let mut server = Server::start(&p_path, &token_file(dir.path()), 0);
    let url = server.url();
    let wrong = "not-the-token-7b1e3a9c44d0";
    let err = match Replica::start_from_url(&r_path, &url, wrong, Config::default()) {
        Ok(_) => panic!("a wrong token must not start a replica"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        err,
        format!(
            "WAL source: UNAUTHORIZED: WAL server {url}: /v1/head answered 401: {{\"error\":\"missing or wrong bearer token\"}}"
        )
    );
    assert!(!r_path.exists(), "nothing was created");
    server.wait_log_line(|l| l.contains("aerodb::access") && l.contains("status=401"));
    let stderr = server.kill();
    // One warning and one access-log line for the refused request, both
    // naming the path and the peer.
    let refused: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("status=401") || l.contains("refused:"))
        .collect();
    assert_eq!(refused.len(), 2, "{stderr}");
    assert!(
        refused[0].contains(" WARN ")
            && refused[0].contains("refused: missing or wrong bearer token (401)"),
        "{stderr}"
    );
    assert!(refused[1].contains("aerodb::access"), "{stderr}");
    for line in &refused {
        assert!(line.contains("path=\"/v1/head\""), "{stderr}");
        assert!(line.contains("peer=\"127.0.0.1:"), "{stderr}");
    }
    for secret in [wrong, TOKEN, "Bearer"] {
        assert!(
            !stderr.contains(secret),
            "the log shows {secret:?}: {stderr}"
        );
    }
}

// ------------------------------------------------------- 4. raw requests

/// An HTTP/1.1 response: status, headers (lower-case names), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `request` as is and reads the response until the server closes.
fn exchange(port: u16, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.write_all(request).expect("send");
    let mut raw = Vec::new();
    // The server may close without reading a body it refused: what was
    // read before a reset is the response.
    if let Err(e) = stream.read_to_end(&mut raw) {
        assert!(!raw.is_empty(), "no response: {e}");
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = raw[end + 4..].to_vec();
    let reply = Reply {
        status,
        headers,
        body,
    };
    if let Some(len) = reply.header("content-length") {
        assert_eq!(reply.body.len().to_string(), len, "{head}");
    }
    reply
}

/// The `Authorization` a raw request carries.
#[derive(Clone, Copy, Debug)]
enum Auth {
    /// `Bearer TOKEN`.
    Token,
    /// None at all.
    Missing,
    /// This header value.
    Other(&'static str),
}

fn request(method: &str, target: &str, auth: Auth, body: &str) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    match auth {
        Auth::Token => r.push_str(&format!("Authorization: Bearer {TOKEN}\r\n")),
        Auth::Missing => {}
        Auth::Other(a) => r.push_str(&format!("Authorization: {a}\r\n")),
    }
    if !body.is_empty() || method != "GET" {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

#[rstest]
#[case::segments_without_from("GET", "/v1/segments".into(), Auth::Token, "", 400,
    "query parameter 'from' is required")]
#[case::from_that_is_not_a_number("GET", "/v1/segments?from=abc".into(), Auth::Token, "", 400,
    "query parameter 'from' must be a non-negative integer, got 'abc'")]
#[case::negative_from("GET", "/v1/segments?from=-1".into(), Auth::Token, "", 400,
    "query parameter 'from' must be a non-negative integer, got '-1'")]
#[case::from_zero("GET", "/v1/segments?from=0".into(), Auth::Token, "", 400,
    "query parameter 'from' is 0, it must be from 1 to 9223372036854775807")]
#[case::unknown_query_parameter("GET", "/v1/segments?from=1&limit=5".into(), Auth::Token, "", 400,
    "unknown query parameter 'limit' (known: from, max_bytes, wait_ms, until)")]
#[case::wait_over_the_limit("GET", "/v1/segments?from=1&wait_ms=30001".into(), Auth::Token, "", 400,
    "query parameter 'wait_ms' is 30001, it must be from 0 to 30000")]
#[case::max_bytes_over_the_limit("GET", "/v1/segments?from=1&max_bytes=67108865".into(), Auth::Token, "", 400,
    "query parameter 'max_bytes' is 67108865, it must be from 1 to 67108864")]
#[case::max_bytes_zero("GET", "/v1/segments?from=1&max_bytes=0".into(), Auth::Token, "", 400,
    "query parameter 'max_bytes' is 0, it must be from 1 to 67108864")]
#[case::post("POST", "/v1/head".into(), Auth::Token, "", 405,
    "POST is not allowed; use GET")]
#[case::a_request_with_a_body("GET", "/v1/head".into(), Auth::Token, "abcd", 413,
    "requests carry no body")]
#[case::an_over_long_url("GET", format!("/v1/segments?from=1&pad={}", "a".repeat(2100)), Auth::Token, "", 414,
    "request target longer than 2048 bytes")]
#[case::unknown_path("GET", "/v2/wal".into(), Auth::Token, "", 404,
    "no such endpoint '/v2/wal' (endpoints: /v1/head, /v1/segments, /v1/snapshot, /v1/digest)")]
#[case::missing_authorization("GET", "/v1/head".into(), Auth::Missing, "", 401,
    "missing or wrong bearer token")]
#[case::wrong_scheme("GET", "/v1/head".into(), Auth::Other("Basic YWVyb2RiOnRva2Vu"), "", 401,
    "missing or wrong bearer token")]
#[case::repeated_parameter("GET", "/v1/segments?from=1&from=5".into(), Auth::Token, "", 400,
    "query parameter 'from' is given more than once")]
#[case::percent_encoded_value_is_decoded("GET", "/v1/segments?from=%2D1".into(), Auth::Token, "", 400,
    "query parameter 'from' must be a non-negative integer, got '-1'")]
#[case::from_beyond_head_plus_one("GET", "/v1/segments?from=5".into(), Auth::Token, "", 409,
    "commit 5 is beyond the primary's head 3: the primary is behind this replica (was it restored from an older backup?)")]
fn bad_requests_get_a_4xx_saying_why(
    #[case] method: &str,
    #[case] target: String,
    #[case] auth: Auth,
    #[case] body: &str,
    #[case] status: u16,
    #[case] error: &str,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p_path = dir.path().join("p.db");
    let p = primary(&p_path);
    assert_eq!(insert(&p, 1..=2, "a"), CommitId(3));
    let server = Server::start(&p_path, &token_file(dir.path()), 0);
    let reply = exchange(server.port, &request(method, &target, auth, body));
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(reply.status, status, "{text}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let json = reply.json();
    assert_eq!(json["error"], error, "{text}");
    if status == 401 {
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    if status == 409 {
        assert_eq!(json["head"], 3, "{text}");
    }
}

#[test]
fn well_formed_requests_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p_path = dir.path().join("p.db");
    let p = primary(&p_path);
    assert_eq!(insert(&p, 1..=2, "a"), CommitId(3));
    let server = Server::start(&p_path, &token_file(dir.path()), 0);
    let get = |target: &str| exchange(server.port, &request("GET", target, Auth::Token, ""));

    let head = get("/v1/head");
    assert_eq!(head.status, 200);
    // Auth schemes are case-insensitive; a query is percent-decoded.
    let lower = exchange(
        server.port,
        &request(
            "GET",
            "/v1/head",
            Auth::Other(Box::leak(format!("bearer {TOKEN}").into_boxed_str())),
            "",
        ),
    );
    assert_eq!(
        lower.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&lower.body)
    );
    let decoded = get("/v1/segments?from=%31&max%5Fbytes=1048576");
    assert_eq!(decoded.status, 200);
    assert_eq!(decoded.header("x-aerodb-first"), Some("1"));
    assert_eq!(
        head.json(),
        serde_json::json!({
            "generation": p.generation().to_string(),
            "head": 3,
            "oldest": 1,
            "schema_version": p
                .connection()
                .query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
                .expect("schema_version"),
        })
    );
    let seg = get("/v1/segments?from=2&max_bytes=1048576&wait_ms=0");
    assert_eq!(seg.status, 200);
    assert_eq!(seg.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        (
            seg.header("x-aerodb-first"),
            seg.header("x-aerodb-last"),
            seg.header("x-aerodb-head")
        ),
        (Some("2"), Some("3"), Some("3"))
    );
    let decoded = replication::wal::Segment::decode(&seg.body).expect("a WAL segment");
    assert_eq!(decoded.header.range(), (CommitId(2), CommitId(3)));
    // From head + 1: nothing yet, 204 after the (zero) wait.
    let none = get("/v1/segments?from=4&wait_ms=0");
    assert_eq!(
        (none.status, none.header("x-aerodb-head")),
        (204, Some("3"))
    );
    assert!(none.body.is_empty());
    let snap = get("/v1/snapshot");
    assert_eq!(snap.status, 200);
    assert_eq!(snap.header("x-aerodb-snapshot-commit"), Some("3"));
    assert_eq!(
        snap.header("x-aerodb-generation"),
        Some(p.generation().to_string().as_str())
    );
}

// ------------------------------------------------ 5. truncated WAL

#[rstest]
fn new_replica_of_a_truncated_primary_bootstraps_from_a_snapshot(
    #[values(Via::File, Via::Http)] via: Via,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let r_path = dir.path().join("r.db");
    let mut source = Source::new(via, dir.path());
    let p = primary(&source.primary);
    let head = insert(&p, 1..=29, "a");
    assert_eq!(head, CommitId(30));
    assert_eq!(
        p.truncate_wal(CommitId(20)).expect("truncate"),
        CommitId(20)
    );
    let checksum = checksum_of_t(p.connection());
    if via == Via::Http {
        let port = source.server().port;
        let gone = exchange(
            port,
            &request("GET", "/v1/segments?from=1", Auth::Token, ""),
        );
        assert_eq!(gone.status, 410);
        assert_eq!(
            gone.json(),
            serde_json::json!({
                "error": "commit 1 is no longer in the primary's WAL (oldest retained commit is 20); bootstrap from /v1/snapshot",
                "oldest": 20
            })
        );
    }
    let replica = source.start_replica(&r_path, Config::default());
    let s = wait(&replica, "the bootstrap", |s| caught_up(s, head));
    assert_eq!(s.component(Component::Validator).last_error, None);
    assert_eq!(
        bootstraps(&r_path),
        vec![(30, p.generation().0 as i64, checksum, 1, "t".to_string())]
    );
    assert_eq!(checksum_of_t(&read_only(&r_path)), checksum);
    assert_same_rows(&p, &r_path);
    let segments = replica.segments().expect("segments");
    assert_eq!(
        (segments[0].first_commit_id, segments[0].last_commit_id),
        (CommitId(1), CommitId(30)),
        "the snapshot stands for commits 1..=30: {segments:#?}"
    );

    // WAL continues from the snapshot's CommitId.
    let head = insert(&p, 30..=34, "a");
    wait(&replica, "writes after the snapshot", |s| {
        caught_up(s, head)
    });
    assert_same_rows(&p, &r_path);
    assert_contiguous(&replica.segments().expect("segments"), head);
    replica.stop();
}

/// Every row of `table`, exactly: each value's type and bytes (`hex`
/// keeps TEXT that is not valid UTF-8 comparable).
fn exact_rows(conn: &Connection, table: &str) -> Vec<Vec<String>> {
    let cols: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
        .and_then(|mut s| s.query_map([table], |r| r.get(0))?.collect())
        .expect("columns");
    let list: Vec<String> = cols
        .iter()
        .map(|c| format!("typeof(\"{c}\") || ':' || hex(\"{c}\")"))
        .collect();
    conn.prepare(&format!(
        "SELECT {} FROM \"{table}\" ORDER BY rowid",
        list.join(", ")
    ))
    .and_then(|mut s| {
        s.query_map([], |r| (0..cols.len()).map(|i| r.get(i)).collect())?
            .collect()
    })
    .expect("rows")
}

#[rstest]
fn a_snapshot_carries_whatever_the_primary_legally_holds(#[values(Via::File, Via::Http)] via: Via) {
    // Found by trying (issue 11): TEXT that is not UTF-8 made the Receiver
    // panic; a child table that sorts before its parent, and a dangling
    // reference the primary legally holds (foreign_keys off), failed the
    // snapshot; a generation whose hex reads as a number was converted by
    // the metadata column's affinity and refused.
    let dir = tempfile::tempdir().expect("tempdir");
    let r_path = dir.path().join("r.db");
    let mut source = Source::new(via, dir.path());
    drop(Primary::open(&source.primary).expect("primary"));
    Connection::open(&source.primary)
        .and_then(|c| {
            c.execute(
                "UPDATE aerodb_meta SET value = ?1 WHERE key = 'generation'",
                [0x0123_4567_8901_2345_i64],
            )
        })
        .expect("a generation whose hex reads as a number");
    let p = Primary::open(&source.primary).expect("primary");
    assert_eq!(p.generation().to_string(), "0123456789012345");
    p.connection()
        .execute_batch(
            "PRAGMA foreign_keys = OFF;
             CREATE TABLE z_parent(id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE a_child(id INTEGER PRIMARY KEY, parent INTEGER REFERENCES z_parent(id) ON DELETE CASCADE, v TEXT);",
        )
        .expect("tables");
    p.replicate("z_parent").expect("replicate");
    p.replicate("a_child").expect("replicate");
    p.connection()
        .execute_batch(
            "INSERT INTO z_parent VALUES (1, 'parent'), (2, CAST(x'c328' AS TEXT));
             INSERT INTO a_child VALUES (1, 1, CAST(x'ff00fe' AS TEXT)), (2, 99, 'dangling');",
        )
        .expect("rows");
    let head = p.head().expect("head");
    assert_eq!(p.truncate_wal(head).expect("truncate"), head);
    let replica = source.start_replica(&r_path, Config::default());
    let s = wait(&replica, "the bootstrap", |s| {
        caught_up(s, head) || blocked(s)
    });
    assert!(caught_up(&s, head), "{}", show(&s));
    assert_eq!(
        bootstraps(&r_path)[0].1,
        0x0123_4567_8901_2345_i64,
        "the generation, unconverted"
    );
    for table in ["z_parent", "a_child"] {
        assert_eq!(
            exact_rows(&read_only(&r_path), table),
            exact_rows(p.connection(), table),
            "{table}"
        );
    }
    assert!(exact_rows(p.connection(), "a_child")[0][2].starts_with("text:FF00FE"));

    // WAL after the snapshot applies over it; the replica's own foreign
    // keys never act (the parent's delete is the primary's, with foreign
    // keys off: the child stays).
    p.connection()
        .execute_batch(
            "DELETE FROM z_parent WHERE id = 1;
             INSERT INTO a_child VALUES (3, 2, CAST(x'80' AS TEXT));",
        )
        .expect("more writes");
    let head = p.head().expect("head");
    wait(&replica, "writes after the snapshot", |s| {
        caught_up(s, head)
    });
    for table in ["z_parent", "a_child"] {
        assert_eq!(
            exact_rows(&read_only(&r_path), table),
            exact_rows(p.connection(), table),
            "{table}"
        );
    }
    replica.stop();
}

#[rstest]
fn replica_that_needs_truncated_wal_bootstraps_and_then_equals_the_primary(
    #[values(Via::File, Via::Http)] via: Via,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let r_path = dir.path().join("r.db");
    let mut source = Source::new(via, dir.path());
    let p = primary(&source.primary);
    let a = insert(&p, 1..=9, "a");
    assert_eq!(a, CommitId(10));
    let replica = source.start_replica(&r_path, Config::default());
    wait(&replica, "commit 10", |s| caught_up(s, a));
    replica.stop();

    // The primary moves on and drops its WAL below 20: the replica needs
    // 11.., which is gone.
    let head = insert(&p, 10..=29, "a");
    assert_eq!(head, CommitId(30));
    assert_eq!(
        p.truncate_wal(CommitId(20)).expect("truncate"),
        CommitId(20)
    );
    let checksum = checksum_of_t(p.connection());
    let replica = source.start_replica(&r_path, Config::default());
    wait(&replica, "the bootstrap", |s| caught_up(s, head));
    assert_eq!(
        bootstraps(&r_path),
        vec![(30, p.generation().0 as i64, checksum, 11, "t".to_string())]
    );
    assert_same_rows(&p, &r_path);
    let segments = replica.segments().expect("segments");
    assert!(
        segments
            .iter()
            .any(|s| (s.first_commit_id, s.last_commit_id) == (CommitId(11), CommitId(30))),
        "the snapshot stands for commits 11..=30: {segments:#?}"
    );
    assert_contiguous(&segments, head);

    let head = insert(&p, 30..=34, "a");
    wait(&replica, "writes after the snapshot", |s| {
        caught_up(s, head)
    });
    assert_same_rows(&p, &r_path);
    assert_contiguous(&replica.segments().expect("segments"), head);
    replica.stop();
}

// ------------------------------------------- 6. forks, foreign primaries

/// A replica that applied commits 1..=10 of the primary and stopped, and a
/// backup of the primary taken at commit 5.
struct Forked {
    _dir: tempfile::TempDir,
    source: Source,
    replica: PathBuf,
    backup: PathBuf,
    generation: Generation,
    /// The replica's position (commit 10).
    applied: ChainPosition,
    /// The replica's table at commit 10.
    rows: Vec<(i64, String)>,
}

fn replica_at_10_with_a_backup_at_5(via: Via) -> Forked {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = Source::new(via, dir.path());
    let replica = dir.path().join("r.db");
    let backup = dir.path().join("backup.db");
    let p = primary(&source.primary);
    assert_eq!(insert(&p, 1..=4, "a"), CommitId(5));
    p.connection()
        .execute("VACUUM INTO ?1", [backup.to_str().expect("utf-8 path")])
        .expect("backup at commit 5");
    assert_eq!(insert(&p, 5..=9, "a"), CommitId(10));
    let r = source.start_replica(&replica, Config::default());
    wait(&r, "commit 10", |s| caught_up(s, CommitId(10)));
    let applied = r.stop().applied;
    assert_eq!(applied.commit_id, CommitId(10));
    source.stop_server();
    let generation = p.generation();
    drop(p);
    let rows = rows(&read_only(&replica));
    Forked {
        _dir: dir,
        source,
        replica,
        backup,
        generation,
        applied,
        rows,
    }
}

impl Forked {
    /// The primary restored from the backup (same generation).
    fn restore_backup(&self) -> Primary {
        remove_db(&self.source.primary);
        std::fs::copy(&self.backup, &self.source.primary).expect("restore the backup");
        let p = Primary::open(&self.source.primary).expect("restored primary");
        assert_eq!(
            p.generation(),
            self.generation,
            "a restore keeps the generation"
        );
        assert_eq!(p.head().expect("head"), CommitId(5));
        p
    }

    /// Restarts the replica (and the server on its port) and waits until
    /// it is blocked or caught up with what the source offers.
    fn restart(&mut self) -> (Replica, View) {
        let r = self.source.start_replica(&self.replica, Config::default());
        let s = wait(&r, "the replica to settle", |s| blocked(s) || ready_safe(s));
        (r, s)
    }

    /// Nothing of the other history was applied.
    fn assert_unchanged(&self, s: &View) {
        assert_eq!(s.applied, self.applied, "{}", show(s));
        assert_eq!(rows(&read_only(&self.replica)), self.rows);
    }
}

/// The replica's read gate answers DIVERGED, with a reason naming `needle`.
fn assert_diverged(replica: &Replica, s: &View, needle: &str) {
    assert!(blocked(s), "{}", show(s));
    let d = replica.explain_read(None).expect("gate");
    assert_eq!(d.code, DecisionCode::Diverged, "{d}");
    assert_eq!(d.code.as_str(), "DIVERGED");
    assert!(d.explanation.contains(needle), "{d}");
    assert_eq!(s.explain_read(None).code, DecisionCode::Diverged);
}

#[rstest]
fn primary_restored_from_a_backup_and_written_again_is_a_fork(
    #[values(Via::File, Via::Http)] via: Via,
) {
    let mut f = replica_at_10_with_a_backup_at_5(via);
    // Commits 6..=15 again, other values of the same sizes: the WAL
    // offsets match, the chained checksums do not.
    let p = f.restore_backup();
    assert_eq!(insert(&p, 5..=14, "b"), CommitId(15));
    let (replica, s) = f.restart();

    let e: Failure = s
        .component(Component::Validator)
        .last_error
        .clone()
        .unwrap_or_else(|| panic!("a validator rejection: {}", show(&s)));
    assert_eq!(e.code, "FORK", "{e:?}");
    assert_eq!(e.segment, Some((CommitId(11), CommitId(15))));
    assert_eq!(e.wal_offset, Some(f.applied.wal_offset));
    let expected = format!("0x{:08x}", f.applied.chain);
    assert_eq!(e.expected.as_deref(), Some(expected.as_str()));
    let actual = e.actual.clone().expect("the segment's chain");
    assert_ne!(actual, expected);
    let reason = format!(
        "segment 11..=15 rejected: chained checksum at commit 11 is {actual}, expected {expected} (replica applied commit 10); the primary's history differs from the replica's"
    );
    assert_eq!(e.reason, reason);
    assert_eq!(
        s.global.to_string(),
        format!(
            "Ready (read-blocked: segment 11..=15 at WAL offset {} rejected: {reason})",
            f.applied.wal_offset
        )
    );
    assert_diverged(&replica, &s, "chained checksum at commit 11");
    let segments = replica.segments().expect("segments");
    let rejected: Vec<&SegmentRow> = segments.iter().filter(|s| s.state == "Rejected").collect();
    assert_eq!(rejected.len(), 1, "{segments:#?}");
    assert_eq!(
        (rejected[0].first_commit_id, rejected[0].last_commit_id),
        (CommitId(11), CommitId(15))
    );
    f.assert_unchanged(&s);
    replica.stop();
}

#[rstest]
fn fork_with_rows_of_other_sizes_is_diverged_too(#[values(Via::File, Via::Http)] via: Via) {
    // The restored primary writes commits 6..=15 with longer values: its
    // WAL offsets differ from the replica's too. Still a fork.
    let mut f = replica_at_10_with_a_backup_at_5(via);
    let p = f.restore_backup();
    assert_eq!(insert(&p, 5..=14, "a much longer value "), CommitId(15));
    let (replica, s) = f.restart();
    let e = s
        .component(Component::Validator)
        .last_error
        .clone()
        .unwrap_or_else(|| panic!("a validator rejection: {}", show(&s)));
    assert_eq!(e.segment, Some((CommitId(11), CommitId(15))), "{e:?}");
    assert_diverged(&replica, &s, "segment 11..=15");
    f.assert_unchanged(&s);
    replica.stop();
}

#[rstest]
fn primary_restored_from_a_backup_behind_the_replica_is_diverged(
    #[values(Via::File, Via::Http)] via: Via,
) {
    let mut f = replica_at_10_with_a_backup_at_5(via);
    let p = f.restore_backup();
    assert_eq!(insert(&p, 5..=7, "b"), CommitId(8));
    let (replica, s) = f.restart();

    let e = s
        .component(Component::Receiver)
        .last_error
        .clone()
        .unwrap_or_else(|| panic!("a receiver failure: {}", show(&s)));
    assert_eq!(e.code, "SOURCE_BEHIND", "{e:?}");
    assert_eq!(e.segment, Some((CommitId(11), CommitId(11))));
    let reason = match via {
        Via::File => format!(
            "primary file {}: its head is commit 8, behind this replica (which needs commit 11 next): was it restored from an older backup?",
            f.source.primary.display()
        ),
        Via::Http => format!(
            "WAL server {}: /v1/segments?from=11&max_bytes=1048576&wait_ms=0 answered 409: {{\"error\":\"commit 11 is beyond the primary's head 8: the primary is behind this replica (was it restored from an older backup?)\",\"head\":8}}",
            f.source.url()
        ),
    };
    assert_eq!(e.reason, reason);
    assert_eq!(
        s.global.to_string(),
        format!("Ready (read-blocked: WAL receiver failed: SOURCE_BEHIND: {reason})")
    );
    assert_diverged(&replica, &s, "commit 11");
    f.assert_unchanged(&s);
    replica.stop();
}

#[rstest]
fn another_primary_at_the_same_path_or_address_is_foreign(
    #[values(Via::File, Via::Http)] via: Via,
    #[values(15, 10, 5)] other_head: u64,
) {
    let mut f = replica_at_10_with_a_backup_at_5(via);
    remove_db(&f.source.primary);
    let p = primary(&f.source.primary);
    assert_ne!(
        p.generation(),
        f.generation,
        "a new primary, a new generation"
    );
    let head = insert(&p, 1..=other_head as i64 - 1, "c");
    assert_eq!(head, CommitId(other_head));
    let (replica, s) = f.restart();

    assert!(
        blocked(&s),
        "a replica of generation {} must not follow generation {} (head {other_head}): {}",
        f.generation,
        p.generation(),
        show(&s)
    );
    // Refused either by the Validator (the first foreign segment) or, before
    // any fetch, by the Receiver: either way named FOREIGN_GENERATION, with
    // both generations, and the global state shows exactly that failure.
    let validator = s.component(Component::Validator).last_error.clone();
    let receiver = s.component(Component::Receiver).last_error.clone();
    let e = validator
        .clone()
        .or(receiver)
        .unwrap_or_else(|| panic!("a rejection or failure: {}", show(&s)));
    assert_eq!(e.code, "FOREIGN_GENERATION", "{e:?}");
    assert!(e.reason.contains(&p.generation().to_string()), "{e:?}");
    assert!(e.reason.contains(&f.generation.to_string()), "{e:?}");
    if validator.is_some() {
        let reason = format!(
            "segment 11..={other_head} rejected: generation {} is foreign, the replica follows generation {}",
            p.generation(),
            f.generation
        );
        assert_eq!(e.reason, reason);
        assert_eq!(e.segment, Some((CommitId(11), CommitId(other_head))));
        let offset = e.wal_offset.expect("the segment's WAL offset");
        assert_eq!(
            s.global.to_string(),
            format!("Ready (read-blocked: segment 11..={other_head} at WAL offset {offset} rejected: {reason})")
        );
    } else {
        assert_eq!(
            s.global.to_string(),
            format!(
                "Ready (read-blocked: WAL receiver failed: FOREIGN_GENERATION: {})",
                e.reason
            )
        );
    }
    assert_diverged(&replica, &s, &p.generation().to_string());
    f.assert_unchanged(&s);
    replica.stop();
}

#[test]
fn server_coming_back_with_another_primary_is_foreign() {
    // The replica is running, long-polling at commit 10; the server goes
    // away and comes back on the same port serving another primary.
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_path, r_path) = (dir.path().join("p.db"), dir.path().join("r.db"));
    let tokens = token_file(dir.path());
    let p = primary(&p_path);
    let head = insert(&p, 1..=9, "a");
    let generation = p.generation();
    let server = Server::start(&p_path, &tokens, 0);
    let port = server.port;
    let relay = Relay::start(port);
    let url = relay.url();
    let replica = Replica::start_from_url(&r_path, &url, TOKEN, Config::default()).expect("start");
    wait(&replica, "commit 10", |s| caught_up(s, head));
    relay.wait_for_request(&["from=11&", "wait_ms=500"]);
    let before = rows(&read_only(&r_path));
    server.kill();
    drop(p);
    remove_db(&p_path);
    let other = primary(&p_path);
    insert(&other, 1..=14, "c");
    let server = Server::start(&p_path, &tokens, port);
    let s = wait(&replica, "the foreign server to be noticed", |s| {
        s.component(Component::Receiver)
            .last_error
            .as_ref()
            .is_some_and(|e| e.code == "FOREIGN_GENERATION")
    });
    let reason = format!(
        "WAL server {url} came back serving generation {}, not {generation}",
        other.generation()
    );
    assert_eq!(
        s.global.to_string(),
        format!("Ready (read-blocked: WAL receiver failed: FOREIGN_GENERATION: {reason})")
    );
    assert_diverged(&replica, &s, "came back serving generation");
    assert_eq!(s.applied.commit_id, head);
    assert_eq!(rows(&read_only(&r_path)), before);
    replica.stop();
    drop(server);
}

// ------------------------------------------- 7. migrations over HTTP

#[test]
fn a_replica_over_http_waits_out_a_migration_and_resumes_when_it_is_replicated_again() {
    // A replicated table altered on the primary: until `aerodb_replicate`
    // runs again the server answers 503 with the schema version; the
    // replica shows SOURCE_UNAVAILABLE once and resumes at the schema
    // change, not at every poll (the old code blocked until a restart).
    let dir = tempfile::tempdir().expect("tempdir");
    let r_path = dir.path().join("r.db");
    let mut source = Source::new(Via::Http, dir.path());
    let p = primary(&source.primary);
    let head = insert(&p, 1..=3, "a");
    let replica = source.start_replica(&r_path, Config::default());
    wait(&replica, "caught up", |s| caught_up(s, head));
    Connection::open(&source.primary)
        .and_then(|c| c.execute_batch("ALTER TABLE t ADD COLUMN w INTEGER"))
        .expect("DDL on the primary, without the extension");
    // Writes to it are refused meanwhile (capture is broken until then).
    assert!(p
        .connection()
        .execute("INSERT INTO t VALUES (10, 'b', 1)", [])
        .is_err());
    let s = wait(&replica, "waiting for the migration", blocked);
    assert!(
        s.global.to_string().contains("SOURCE_UNAVAILABLE"),
        "{}",
        show(&s)
    );
    assert!(
        s.global.to_string().contains("answered 503"),
        "{}",
        show(&s)
    );
    p.replicate("t").expect("replicate again");
    let head = p.head().expect("head");
    let s = wait(&replica, "resumed", |s| caught_up(s, head));
    assert_eq!(s.applied.commit_id, head);
    let resumes = replica
        .transitions()
        .expect("transitions")
        .iter()
        .filter(|t| t.reason.contains("answers again"))
        .count();
    assert_eq!(resumes, 1, "one resume, at the schema change");
    replica.stop();
}
