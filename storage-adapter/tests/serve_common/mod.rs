//! `aerodb serve` run as a child process by the tests that talk to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The bearer token the servers of these tests accept.
pub const TOKEN: &str = "aerodb-test-token-5f2c9e1b7d";
/// Client-side deadline of every wait (never reached when things work).
pub const WAIT: Duration = Duration::from_secs(15);

pub fn deadline() -> Instant {
    Instant::now() + WAIT
}

// ------------------------------------------------------------------ server

/// A running `aerodb serve`, killed with SIGKILL when dropped.
pub struct Server {
    child: Child,
    /// Kept open: the server's stdout stays a live pipe.
    _stdout: BufReader<ChildStdout>,
    /// The server's stderr lines (its log, one access line per request),
    /// read as they come so a full pipe never blocks the server.
    stderr: mpsc::Receiver<String>,
    /// Lines already taken from `stderr`.
    log: Vec<String>,
    pub port: u16,
    scheme: &'static str,
}

impl Server {
    /// Starts a server on `127.0.0.1:port` (0: any free port) and waits for
    /// its "serving" line.
    pub fn start(db: &Path, token_file: &Path, port: u16) -> Server {
        Server::start_with::<&str>(db, token_file, port, &[])
    }

    /// [`start`](Server::start) with more flags (`--tls-cert`, ...).
    pub fn start_with<S: AsRef<std::ffi::OsStr>>(
        db: &Path,
        token_file: &Path,
        port: u16,
        extra: &[S],
    ) -> Server {
        let tls = extra.iter().any(|a| a.as_ref() == "--tls-cert");
        let mut child = Command::new(env!("CARGO_BIN_EXE_aerodb"))
            .arg("serve")
            .arg("--db")
            .arg(db)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--token-file")
            .arg(token_file)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning aerodb serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
        let mut line = String::new();
        let n = stdout
            .read_line(&mut line)
            .expect("reading the server's stdout");
        if n == 0 {
            let status = child.wait().expect("server exit status");
            let mut stderr = String::new();
            let _ = child
                .stderr
                .take()
                .expect("stderr piped")
                .read_to_string(&mut stderr);
            panic!(
                "aerodb serve --listen 127.0.0.1:{port} ended ({status}) before serving: {stderr}"
            );
        }
        let scheme = if tls { "https" } else { "http" };
        let prefix = format!(
            "aerodb serve: serving the WAL of {} on {scheme}://127.0.0.1:",
            db.display()
        );
        let bound: u16 = line
            .trim_end()
            .strip_prefix(&prefix)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}, expected {prefix}PORT"));
        if port != 0 {
            assert_eq!(bound, port, "the server bound another port");
        }
        let stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Server {
            child,
            _stdout: stdout,
            stderr: lines,
            log: Vec::new(),
            port: bound,
            scheme,
        }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The port of `--metrics-listen` (the server's next stdout line).
    pub fn metrics_port(&mut self) -> u16 {
        let mut line = String::new();
        self._stdout
            .read_line(&mut line)
            .expect("reading the server's stdout");
        line.trim_end()
            .strip_prefix("aerodb serve: metrics on http://")
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("expected the metrics line, got {line:?}"))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line for which `done` holds (the access line of a
    /// request is written once its response is sent).
    pub fn wait_log_line(&mut self, done: impl Fn(&str) -> bool) -> String {
        loop {
            match self.stderr.recv_timeout(WAIT) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if done(&line) {
                        return line;
                    }
                }
                Err(e) => panic!("no such log line ({e:?}); so far: {:#?}", self.log),
            }
        }
    }

    /// SIGKILL, reaped; returns everything the server wrote to stderr.
    pub fn kill(mut self) -> String {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
        let mut log = std::mem::take(&mut self.log);
        // The pipe closed with the process: the reader ends.
        log.extend(self.stderr.iter());
        log.join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("token.txt");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("token file");
    path
}

/// A private CA and a server certificate it signed for 127.0.0.1 and
/// localhost, as PEM files in `dir` (`<name>-ca.pem`, `<name>-cert.pem`,
/// `<name>-key.pem`).
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path, name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("AeroDB test CA {name}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
            .expect("server params");
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .expect("server certificate");
        let pki = Pki {
            ca: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}-cert.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&pki.ca, ca.pem()).expect("writing the CA");
        std::fs::write(&pki.cert, cert.pem()).expect("writing the certificate");
        std::fs::write(&pki.key, key.serialize_pem()).expect("writing the key");
        pki
    }

    /// `aerodb serve`'s flags for this certificate.
    pub fn serve_flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

/// Every row of `t` as SQLite shows it (`quote()` and `typeof()` of each
/// column): equal lists are equal contents, types included.
pub fn exact_rows(conn: &rusqlite::Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT quote(id) || ',' || quote(v) || ':' || typeof(v) FROM t ORDER BY id")
        .expect("select t");
    stmt.query_map([], |r| r.get(0))
        .expect("rows of t")
        .collect::<Result<_, _>>()
        .expect("rows of t")
}
