//! Review of the long-poll shortcut (serve.rs `nothing_past`): an
//! answer is always read, never taken from what an earlier read found;
//! concurrent long-polls each reach every burst of commits.
mod serve_common;

use serve_common::{token_file, Server, TOKEN};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use storage_adapter::primary::Primary;

/// Status, X-AeroDB-Head, X-AeroDB-Last of `GET path` (read timeout 5 s).
fn get(port: u16, path: &str) -> (u16, u64, Option<u64>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{path}: no answer within 5 s ({e})"));
    let text = String::from_utf8_lossy(&out);
    let head_end = text.find("\r\n\r\n").unwrap_or(text.len());
    let headers = &text[..head_end];
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("{path}: answer {text:?}"));
    let h = |name: &str| {
        headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name)
                .then(|| v.trim().parse::<u64>().ok())?
        })
    };
    (status, h("X-AeroDB-Head").unwrap_or(0), h("X-AeroDB-Last"))
}

fn fixture() -> (tempfile::TempDir, Primary, Server) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let p = Primary::open(&path).unwrap();
    p.connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .unwrap();
    p.replicate("t").unwrap();
    let s = Server::start(&path, &token_file(dir.path()), 0);
    (dir, p, s)
}

/// A request sent after a commit returned must see it (before the change,
/// every request read the WAL once).
#[test]
fn a_request_sent_after_a_commit_returned_sees_it() {
    let (_dir, p, s) = fixture();
    let mut stale = Vec::new();
    for id in 1..=200i64 {
        let h = p.head().unwrap().0;
        let (st, head, _) = get(s.port, &format!("/v1/segments?from={}&wait_ms=0", h + 1));
        assert_eq!((st, head), (204, h));
        p.connection()
            .execute("INSERT INTO t VALUES (?1, 'x')", [id])
            .unwrap();
        let (st, head, _) = get(s.port, &format!("/v1/segments?from={}&wait_ms=0", h + 1));
        if st != 200 {
            stale.push((id, st, head, h + 1));
        }
    }
    assert!(
        stale.is_empty(),
        "{} of 200 requests sent after commit h+1 returned answered (status, X-AeroDB-Head) as if it did not exist; first: {:?}",
        stale.len(),
        stale.first()
    );
}

/// Many long-polls at different `from`, commits in bursts: every client
/// reaches the head, no long-poll held 5 s while its commit exists.
#[test]
fn concurrent_long_polls_all_reach_each_burst_head() {
    let (_dir, p, s) = fixture();
    let port = s.port;
    let target = Arc::new(AtomicU64::new(p.head().unwrap().0));
    let stop = Arc::new(AtomicBool::new(false));
    let reached: Vec<Arc<AtomicU64>> = (0..16).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut threads = Vec::new();
    for (i, r) in reached.iter().enumerate() {
        let (r, stop, target) = (r.clone(), stop.clone(), target.clone());
        threads.push(std::thread::spawn(move || {
            // Clients start at different points (some behind).
            let mut at = (i as u64) % 2;
            while !stop.load(Ordering::SeqCst) {
                let max = if i % 2 == 0 { 1 } else { 1 << 20 };
                let (st, head, last) = get(
                    port,
                    &format!("/v1/segments?from={}&wait_ms=30000&max_bytes={max}", at + 1),
                );
                match st {
                    200 => at = last.unwrap(),
                    204 => {
                        assert!(
                            stop.load(Ordering::SeqCst) || head < at + 1,
                            "204 with head {head} for from {}",
                            at + 1
                        );
                        panic!(
                            "a 30 s long-poll answered 204 at from {} (head {head}, target {})",
                            at + 1,
                            target.load(Ordering::SeqCst)
                        );
                    }
                    other => panic!("status {other}"),
                }
                r.store(at, Ordering::SeqCst);
            }
        }));
    }
    let mut id = 0i64;
    for burst in 0..60 {
        for _ in 0..(1 + burst % 4) {
            id += 1;
            p.connection()
                .execute("INSERT INTO t VALUES (?1, 'x')", [id])
                .unwrap();
        }
        let h = p.head().unwrap().0;
        target.store(h, Ordering::SeqCst);
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while reached.iter().any(|r| r.load(Ordering::SeqCst) < h) {
            assert!(
                std::time::Instant::now() < until,
                "burst {burst}: head {h}, clients at {:?}",
                reached
                    .iter()
                    .map(|r| r.load(Ordering::SeqCst))
                    .collect::<Vec<_>>()
            );
            assert!(threads.iter().all(|t| !t.is_finished()), "a client failed");
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::SeqCst);
    // Wake the remaining long-polls.
    p.connection()
        .execute("INSERT INTO t VALUES (?1, 'x')", [id + 1])
        .unwrap();
    for t in threads {
        t.join().expect("client");
    }
}
