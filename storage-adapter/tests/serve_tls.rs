//! `aerodb serve --tls-cert --tls-key` and `https://` sources, on loopback,
//! with a private CA each test makes (rcgen): a replica follows a random
//! workload over HTTPS and holds exactly the primary's rows; a replica
//! trusting another CA is refused at start with the reason, and a running
//! replica whose server comes back with a certificate it does not trust
//! stops with that reason in its components (never a silent retry); the
//! CLI's `--ca-file` works for `aerodb replica` and `aerodb verify`, and is
//! refused where it means nothing.

mod serve_common;

use replication::runtime::{Component, View};
use replication::state::{GlobalState, ReadStatus};
use replication::wal::CommitId;
use rusqlite::{Connection, OpenFlags};
use serve_common::{deadline, exact_rows, token_file, Pki, Server};
use std::path::{Path, PathBuf};
use std::process::Command;
use storage_adapter::options::{ReplicaOptions, Spelling};
use storage_adapter::primary::Primary;
use storage_adapter::runtime::Replica;

/// A test directory, the path of the primary in it and of a replica.
fn files() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, r) = (dir.path().join("p.db"), dir.path().join("r.db"));
    (dir, p, r)
}

fn primary(path: &Path) -> Primary {
    let p = Primary::open(path).expect("primary");
    p.connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .expect("table");
    p.replicate("t").expect("replicate");
    p
}

/// A random workload of `commits` transactions over ids 1..=50: inserts
/// (REPLACE), updates and deletes, with values of every storage class.
fn workload(p: &Primary, seed: u64, commits: usize) -> CommitId {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..commits {
        let conn = p.connection();
        conn.execute_batch("BEGIN").expect("begin");
        for _ in 0..(1 + next() % 4) {
            let id = (next() % 50 + 1) as i64;
            let value: rusqlite::types::Value = match next() % 5 {
                0 => rusqlite::types::Value::Null,
                1 => rusqlite::types::Value::Integer(next() as i64),
                2 => rusqlite::types::Value::Real((next() % 1000) as f64 / 7.0),
                3 => rusqlite::types::Value::Text(format!("t{}", next() % 1000)),
                _ => rusqlite::types::Value::Blob(next().to_le_bytes().to_vec()),
            };
            match next() % 3 {
                0 => conn
                    .execute("DELETE FROM t WHERE id = ?1", [id])
                    .expect("delete"),
                1 => conn
                    .execute(
                        "UPDATE t SET v = ?2 WHERE id = ?1",
                        rusqlite::params![id, value],
                    )
                    .expect("update"),
                _ => conn
                    .execute(
                        "INSERT OR REPLACE INTO t VALUES (?1, ?2)",
                        rusqlite::params![id, value],
                    )
                    .expect("insert"),
            };
        }
        conn.execute_batch("COMMIT").expect("commit");
    }
    p.head().expect("head")
}

fn options(ca: Option<&Path>, dir: &Path) -> ReplicaOptions {
    let mut o = ReplicaOptions::new(Spelling::Json);
    o.token_file = Some(token_file(dir).display().to_string());
    o.ca_file = ca.map(|c| c.display().to_string());
    o
}

fn start(r_path: &Path, url: &str, o: &ReplicaOptions) -> Replica {
    o.check_source(url).expect("options fit the source");
    let opened = o.open_source(url).expect("the source opens");
    Replica::start(r_path, opened.source, opened.generation, o.config.clone()).expect("start")
}

fn caught_up(s: &View, head: CommitId) -> bool {
    s.global
        == GlobalState::Ready {
            read: ReadStatus::Safe,
        }
        && s.applied.commit_id == head
}

fn wait(replica: &Replica, what: &str, done: impl FnMut(&View) -> bool) -> View {
    match replica.wait_until(deadline(), done) {
        Ok(s) => (*s).clone(),
        Err(s) => panic!("timed out waiting for {what}: {:?}", s),
    }
}

fn read_only(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("read-only")
}

#[test]
fn a_replica_follows_an_https_server_of_a_private_ca_exactly() {
    let (dir, p_path, r_path) = files();
    let pki = Pki::new(dir.path(), "a");
    let p = primary(&p_path);
    let backlog = workload(&p, 7, 200);
    let server = Server::start_with(&p_path, &token_file(dir.path()), 0, &pki.serve_flags());
    let url = server.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let replica = start(&r_path, &url, &options(Some(&pki.ca), dir.path()));
    wait(&replica, "the backlog over HTTPS", |s| {
        caught_up(s, backlog)
    });
    assert_eq!(exact_rows(&read_only(&r_path)), exact_rows(p.connection()));
    // Live writes reach the long-polling replica over TLS.
    for round in 0..5u64 {
        let head = workload(&p, 100 + round, 20);
        wait(&replica, "live writes over HTTPS", |s| caught_up(s, head));
        assert_eq!(
            exact_rows(&read_only(&r_path)),
            exact_rows(p.connection()),
            "after round {round} (commit {head})"
        );
    }
    let s = replica.stop();
    assert_eq!(s.component(Component::Receiver).last_error, None);
}

#[test]
fn a_replica_that_does_not_trust_the_servers_ca_is_refused_with_the_reason() {
    let (dir, p_path, r_path) = files();
    let (served, other) = (
        Pki::new(dir.path(), "served"),
        Pki::new(dir.path(), "other"),
    );
    let p = primary(&p_path);
    workload(&p, 3, 5);
    let server = Server::start_with(&p_path, &token_file(dir.path()), 0, &served.serve_flags());
    let url = server.url();
    for (ca, why) in [
        (Some(other.ca.as_path()), "UnknownIssuer"),
        // The webpki roots do not know a private CA either.
        (None, "UnknownIssuer"),
    ] {
        let e = match options(ca, dir.path()).open_source(&url) {
            Ok(_) => panic!("a server of an untrusted CA must be refused (ca {ca:?})"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            e,
            format!(
                "source '{url}': SOURCE: WAL server {url}: TLS: invalid peer certificate: {why}; the server's certificate is not trusted: give the CA that signed it (PEM) as ca_file (--ca-file), or check the host name"
            )
        );
    }
    assert!(!r_path.exists(), "nothing was created");
    // A CA file that is not one is named.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("junk");
    let e = options(Some(&junk), dir.path())
        .open_source(&url)
        .err()
        .expect("refused")
        .to_string();
    assert_eq!(
        e,
        format!(
            "source '{url}': SOURCE: ca_file '{}': holds no PEM certificate",
            junk.display()
        )
    );
}

#[test]
fn a_running_replica_whose_server_returns_with_an_untrusted_certificate_stops_saying_why() {
    let (dir, p_path, r_path) = files();
    let (trusted, other) = (
        Pki::new(dir.path(), "trusted"),
        Pki::new(dir.path(), "other"),
    );
    let p = primary(&p_path);
    let head = workload(&p, 11, 30);
    let tokens = token_file(dir.path());
    let server = Server::start_with(&p_path, &tokens, 0, &trusted.serve_flags());
    let (url, port) = (server.url(), server.port);
    let replica = start(&r_path, &url, &options(Some(&trusted.ca), dir.path()));
    wait(&replica, "the backlog", |s| caught_up(s, head));
    // The server goes away (an outage, waited out), then comes back on the
    // same port with a certificate of another CA.
    server.kill();
    let s = wait(&replica, "the outage", |s| {
        s.component(Component::Receiver)
            .last_error
            .as_ref()
            .is_some_and(|f| f.code == "SOURCE_UNAVAILABLE")
    });
    assert_eq!(s.applied.commit_id, head);
    let _server = Server::start_with(&p_path, &tokens, port, &other.serve_flags());
    let s = wait(&replica, "the TLS refusal", |s| {
        s.component(Component::Receiver)
            .last_error
            .as_ref()
            .is_some_and(|f| f.code == "SOURCE")
    });
    let e = s
        .component(Component::Receiver)
        .last_error
        .clone()
        .expect("error");
    assert_eq!(
        e.reason,
        format!("WAL server {url}: TLS: invalid peer certificate: UnknownIssuer; the server's certificate is not trusted: give the CA that signed it (PEM) as ca_file (--ca-file), or check the host name")
    );
    assert!(
        replication::runtime::is_blocked(&s.global),
        "reads are refused: {}",
        s.global
    );
    // What `replica_components` shows, from the file, after the stop.
    replica.stop();
    let conn = read_only(&r_path);
    let shown: String = conn
        .query_row(
            "SELECT error_code || ': ' || error FROM aerodb_replica_components WHERE error_code IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .expect("the Receiver's recorded error");
    assert!(
        shown.starts_with("SOURCE: ") && shown.contains("the server's certificate is not trusted"),
        "{shown}"
    );
}

fn aerodb(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aerodb"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running aerodb")
}

#[test]
fn the_cli_takes_a_ca_file_for_https_primaries_and_refuses_it_elsewhere() {
    let (dir, p_path, r_path) = files();
    let pki = Pki::new(dir.path(), "cli");
    let p = primary(&p_path);
    let head = workload(&p, 5, 40);
    let tokens = token_file(dir.path());
    let server = Server::start_with(&p_path, &tokens, 0, &pki.serve_flags());
    let url = server.url();
    let (tokens_s, ca_s, r_s) = (
        tokens.display().to_string(),
        pki.ca.display().to_string(),
        r_path.display().to_string(),
    );
    let out = aerodb(&[
        "replica",
        "--primary",
        &url,
        "--replica",
        &r_s,
        "--token-file",
        &tokens_s,
        "--ca-file",
        &ca_s,
        "--until-caught-up",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(exact_rows(&read_only(&r_path)), exact_rows(p.connection()));
    let out = aerodb(&[
        "verify",
        "--primary",
        &url,
        "--replica",
        &r_s,
        "--token-file",
        &tokens_s,
        "--ca-file",
        &ca_s,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "equal: the replica holds exactly the primary's 1 table(s) at commit {head}"
        )),
        "{stdout}"
    );
    // --ca-file with a plain-http or file primary: a usage error.
    let out = aerodb(&[
        "replica",
        "--primary",
        &p_path.display().to_string(),
        "--replica",
        &r_s,
        "--ca-file",
        &ca_s,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--ca-file applies to https:// sources only"),
        "{stderr}"
    );
    // --tls-cert without --tls-key: a usage error.
    let out = aerodb(&[
        "serve",
        "--db",
        &p_path.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        &tokens_s,
        "--tls-cert",
        &pki.cert.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

#[test]
fn a_scheme_that_does_not_match_the_server_is_refused_saying_so() {
    let (dir, p_path, r_path) = files();
    let pki = Pki::new(dir.path(), "scheme");
    let p = primary(&p_path);
    workload(&p, 9, 3);
    let tokens = token_file(dir.path());
    let tls = Server::start_with(&p_path, &tokens, 0, &pki.serve_flags());
    let plain = Server::start(&p_path, &tokens, 0);
    // http:// to the HTTPS server: it answers in plain HTTP what to do.
    let url = format!("http://127.0.0.1:{}", tls.port);
    let e = options(None, dir.path())
        .open_source(&url)
        .err()
        .expect("refused")
        .to_string();
    assert_eq!(
        e,
        format!("source '{url}': SOURCE: WAL server {url}: /v1/head answered 400: {{\"error\":\"this server speaks HTTPS only: use an https:// URL\"}}")
    );
    // https:// to a plain HTTP server.
    let url = format!("https://127.0.0.1:{}", plain.port);
    let e = options(Some(&pki.ca), dir.path())
        .open_source(&url)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.starts_with(&format!("source '{url}': SOURCE: WAL server {url}: TLS: "))
            && e.ends_with("; is the server speaking plain HTTP? (then use an http:// URL)"),
        "{e}"
    );
    // Both servers still serve their own scheme.
    let replica = start(&r_path, &tls.url(), &options(Some(&pki.ca), dir.path()));
    let head = p.head().expect("head");
    wait(&replica, "catch-up over HTTPS", |s| caught_up(s, head));
}
