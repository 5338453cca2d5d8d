//! `aerodb serve --db PRIMARY.db --listen HOST:PORT --token-file FILE`:
//! serves a primary's WAL read-only over HTTP or HTTPS (protocol:
//! `storage_adapter::http_source`). It opens the primary read-only and
//! never writes it; the primary itself runs no replication threads.
//!
//! Connections are tasks on a two-thread tokio runtime (`http.rs`, which
//! also bounds what a client may cost: open connections, header size,
//! header read time, stalled writes). SQLite work runs on a bounded pool
//! of blocking threads, each request borrowing a read-only connection from
//! a small pool. A long-poll (`serve/segments.rs`) holds no thread: it
//! waits on the head watcher (`serve/watch.rs`), which wakes every waiting
//! long-poll when the primary commits; the long-poll's deadline decides
//! only when an empty answer is sent.
//!
//! Every request gets one access-log line (`tracing` target
//! `aerodb::access`: method, path, status, bytes, duration, peer); no log
//! line ever holds a header or a query (the token travels in a header).

// The error side of a handler's Result is the HTTP answer itself (128
// bytes), moved once per request: not worth a box each.
#![allow(clippy::result_large_err)]

mod segments;
mod watch;

use super::http::{self, Body, Connections, Limits};
use super::Failure;
use clap::Args;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use replication::wal::CommitId;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storage_adapter::primary::PrimaryWalReader;
use storage_adapter::snapshot;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The primary database file (opened read-only).
    #[arg(long, value_name = "FILE")]
    db: String,
    /// Address to listen on, HOST:PORT (e.g. 127.0.0.1:7070,
    /// localhost:7070, [::1]:7070; port 0 picks a free one).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// File holding the bearer token clients must send (>= 16 characters).
    #[arg(long, value_name = "FILE")]
    token_file: String,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<String>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<String>,
    /// Bind a non-loopback address without TLS (the WAL and the token then
    /// cross the network in the clear). Not needed with --tls-cert.
    #[arg(long)]
    allow_remote: bool,
    /// Most connections open at once; one more is closed at once
    /// [1..=100000, default 4096, or what the open-file limit allows].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_connections: Option<u32>,
    /// Seconds a client has to send a request head once the server reads
    /// one (an idle keep-alive connection is closed after them too)
    /// [1..=600, default 10].
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    header_timeout: u64,
    /// Seconds a response may wait for its client to read any of it before
    /// the connection is closed [1..=3600, default 60].
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    write_timeout: u64,
    /// Serve Prometheus metrics (/metrics) and /health on HOST:PORT,
    /// unauthenticated (port 0: any free port, printed).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
}

/// Longest long-poll a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Largest segment a client may ask for.
const MAX_SEGMENT_BYTES: usize = 64 << 20;
const _: () = assert!(2 * MAX_SEGMENT_BYTES <= BODY_BUDGET);
/// Longest request target accepted.
const MAX_URL: usize = 2048;
/// Longest request head (request line and headers) read.
const MAX_HEADER_BYTES: usize = 16 << 10;
/// Threads doing SQLite work for requests (each holds one read-only
/// connection while it works).
const BLOCKING_THREADS: usize = 8;
/// Snapshots and digests computed at once (others wait their turn).
const HEAVY_AT_ONCE: usize = 2;
/// Segment bytes being read or built and not yet sent, over all requests.
const BODY_BUDGET: usize = 256 << 20;
/// Room a segment read reserves at least (twice this): a record holding
/// the largest value capture takes (32 MiB; a rarer larger record, a row
/// of several big values, takes room for its body before it is sent). So
/// at most four reads run at once, on two cores.
const RECORD_ROOM: usize = replication::wal::MAX_RECORD_BYTES / 2;
/// Snapshots streamed at once (others wait their turn).
const SNAPSHOTS_AT_ONCE: usize = 4;
/// File descriptors kept for everything but connections: the pooled
/// read-only connections and the head watcher's (three each: database,
/// -wal, -shm), snapshots and digests being made and streamed, the metrics
/// listener's connections (`Limits::METRICS`), the listeners themselves.
const RESERVED_FDS: u64 = 128 + Limits::METRICS.max_connections as u64;
/// Connections open at once unless --max-connections says otherwise (and
/// the open-file limit allows it).
const DEFAULT_MAX_CONNECTIONS: u64 = 4096;

struct Shared {
    db: String,
    token: String,
    metrics: super::metrics::ServeMetrics,
    /// Read-only connections not in use.
    readers: Mutex<Vec<PrimaryWalReader>>,
    /// Moves when the primary has committed (see `watch_head`).
    head: tokio::sync::watch::Receiver<u64>,
    /// Snapshots and digests read the whole database: at most
    /// `HEAVY_AT_ONCE` at a time, so that they never hold every blocking
    /// thread and the WAL keeps being served.
    heavy: tokio::sync::Semaphore,
    /// Bytes of segment bodies built and not yet sent, at most
    /// `BODY_BUDGET` (a permit per byte, held by the body until it is sent
    /// or its client goes): slow clients cannot make the server hold
    /// unbounded memory; a request over the budget waits for its turn.
    body_budget: Arc<tokio::sync::Semaphore>,
    /// The commit count seen before a read that found nothing past the
    /// head it names: while the count has not moved, asking past that head
    /// needs no read.
    nothing_past: Mutex<Option<(u64, CommitId)>>,
    /// Snapshot copies being streamed (each a file holding the replicated
    /// tables), at most `SNAPSHOTS_AT_ONCE`.
    snapshots: Arc<tokio::sync::Semaphore>,
}

/// The addresses `listen` (the value of `command`'s `flag`) names: every
/// one must be loopback unless `remote_ok` (plain HTTP must not face a
/// network by accident).
pub(super) fn resolve(
    command: &'static str,
    flag: &str,
    listen: &str,
    remote_ok: bool,
) -> Result<Vec<SocketAddr>, Failure> {
    let usage = |message: String| Failure::Usage { command, message };
    let port_ok = listen
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(usage(format!(
            "{flag} '{listen}': expected HOST:PORT (e.g. 127.0.0.1:7070 or localhost:7070)"
        )));
    }
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| Failure::Run(format!("{flag} '{listen}': cannot resolve it: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Failure::Run(format!(
            "{flag} '{listen}': resolves to no address"
        )));
    }
    if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        if !remote_ok {
            return Err(usage(format!(
                "{flag} {listen} resolves to {remote}, which is not a loopback address; without --tls-cert the WAL and the token would cross the network in the clear: serve HTTPS (--tls-cert, --tls-key) or pass --allow-remote to bind it anyway"
            )));
        }
    }
    Ok(addrs)
}

/// The TLS configuration from a PEM certificate chain and key.
fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, Failure> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let run = Failure::Run;
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| run(format!("--tls-cert {cert}: {e}")))?;
    if certs.is_empty() {
        return Err(run(format!("--tls-cert {cert}: holds no PEM certificate")));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| run(format!("--tls-key {key}: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| run(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| run(format!("--tls-cert {cert} with --tls-key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

pub fn run(args: ServeArgs) -> Result<(), Failure> {
    let ServeArgs {
        db,
        listen,
        token_file,
        tls_cert,
        tls_key,
        allow_remote,
        max_connections,
        header_timeout,
        write_timeout,
        metrics_listen,
    } = args;
    let tls = match (&tls_cert, &tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let addrs = resolve("serve", "--listen", &listen, allow_remote || tls.is_some())?;
    let run = Failure::Run;
    let token = std::fs::read_to_string(&token_file)
        .map_err(|e| run(format!("--token-file {token_file}: {e}")))?
        .trim()
        .to_owned();
    if token.len() < 16 {
        return Err(run(format!(
            "--token-file {token_file}: the token must be at least 16 characters"
        )));
    }
    // Fail now, not at the first request, if this is not a primary.
    let first = PrimaryWalReader::open(&db).map_err(|e| run(format!("--db {db}: {e}")))?;
    let fds = http::raise_fd_limit();
    let room = fds.saturating_sub(RESERVED_FDS);
    let max_connections = match max_connections {
        Some(n) if u64::from(n) > room => {
            return Err(run(format!(
                "--max-connections {n} needs {} file descriptors, and this process may open {fds} (raise `ulimit -n` or lower --max-connections)",
                u64::from(n) + RESERVED_FDS
            )))
        }
        Some(n) => u64::from(n),
        None if room == 0 => {
            return Err(run(format!(
                "this process may open {fds} files, fewer than the {RESERVED_FDS} the server needs besides its connections (raise `ulimit -n`)"
            )))
        }
        None => DEFAULT_MAX_CONNECTIONS.min(room),
    };
    let limits = Limits {
        max_connections: max_connections as usize,
        max_header_bytes: MAX_HEADER_BYTES,
        header_read_timeout: Duration::from_secs(header_timeout),
        write_stall_timeout: Duration::from_secs(write_timeout),
    };
    let runtime = http::runtime("aerodb-serve", 2, BLOCKING_THREADS).map_err(run)?;
    runtime.block_on(async move {
        let listener = http::bind(&addrs, "--listen").map_err(run)?;
        let bound = listener
            .local_addr()
            .map_err(|e| run(format!("--listen {listen}: {e}")))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let body_budget = Arc::new(tokio::sync::Semaphore::new(BODY_BUDGET));
        let metrics = super::metrics::ServeMetrics::new(body_budget.clone(), BODY_BUDGET);
        let connections = Connections::default();
        let (tx, head) = tokio::sync::watch::channel(0u64);
        {
            let db = db.clone();
            std::thread::Builder::new()
                .name("aerodb-serve-head".into())
                .spawn(move || watch::watch_head(&db, &tx))
                .map_err(|e| run(format!("spawning the head watcher: {e}")))?;
        }
        println!("aerodb serve: serving the WAL of {db} on {scheme}://{bound}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tracing::info!(db = %db, listen = %bound, scheme, max_connections, "serving the WAL read-only");
        if let Some(listen) = &metrics_listen {
            let addrs = resolve("serve", "--metrics-listen", listen, true)?;
            let listener = http::bind(&addrs, "--metrics-listen").map_err(run)?;
            let at = listener
                .local_addr()
                .map_err(|e| run(format!("--metrics-listen {listen}: {e}")))?;
            println!("aerodb serve: metrics on http://{at}");
            let _ = std::io::stdout().flush();
            let (metrics, db, open) = (metrics.clone(), db.clone(), connections.clone());
            let handler = move |request: Request<Incoming>, _peer: SocketAddr| {
                let (metrics, db, open) = (metrics.clone(), db.clone(), open.clone());
                async move {
                    let path = request.uri().path().to_owned();
                    tokio::task::spawn_blocking(move || {
                        super::metrics::primary_answer(&path, &metrics, &db, &open)
                    })
                    .await
                    .unwrap_or_else(|e| http::json(500, &serde_json::json!({"error": e.to_string()})))
                }
            };
            tokio::spawn(http::serve(
                listener,
                None,
                Limits::METRICS,
                Connections::default(),
                handler,
                std::future::pending(),
            ));
        }
        let shared = Arc::new(Shared {
            db,
            token,
            metrics,
            readers: Mutex::new(vec![first]),
            head,
            heavy: tokio::sync::Semaphore::new(HEAVY_AT_ONCE),
            body_budget,
            nothing_past: Mutex::new(None),
            snapshots: Arc::new(tokio::sync::Semaphore::new(SNAPSHOTS_AT_ONCE)),
        });
        let handler = move |request: Request<Incoming>, peer: SocketAddr| {
            let shared = shared.clone();
            async move { logged(request, peer, shared).await }
        };
        http::serve(listener, tls, limits, connections, handler, std::future::pending()).await;
        Ok(())
    })
}

/// Answers `request` and writes its access-log line.
async fn logged(
    request: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().to_string();
    // The path only: never a header (the token) and never the query.
    let path = request.uri().path().to_owned();
    let response = handle(request, peer, &shared).await;
    let status = response.status().as_u16();
    let bytes = hyper::body::Body::size_hint(response.body()).exact();
    shared.metrics.request(&path, status, bytes);
    tracing::info!(
        target: "aerodb::access",
        method,
        path,
        status,
        bytes = bytes.unwrap_or(0),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        peer = peer.to_string(),
        "request"
    );
    response
}

type Reply = Response<Body>;

fn error(status: u16, message: &str) -> Reply {
    http::json(status, &serde_json::json!({ "error": message }))
}

/// Whether SQLite failed for a reason that passes: the primary locked
/// longer than the busy timeout (a writer holding a rollback journal's
/// lock), or out of file descriptors.
fn passing(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(e);
    while let Some(e) = at {
        if let Some(rusqlite::Error::SqliteFailure(f, _)) = e.downcast_ref::<rusqlite::Error>() {
            use rusqlite::ErrorCode::*;
            if matches!(f.code, DatabaseBusy | DatabaseLocked | CannotOpen) {
                return true;
            }
        }
        at = e.source();
    }
    // Errors that keep only SQLite's message (the WAL reader's own
    // statements): its messages for the same codes.
    let text = e.to_string();
    [
        "database is locked",
        "database table is locked",
        "unable to open database file",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// The answer to a failure: 503 when it passes (the replica waits and asks
/// again, a recorded stop and resume), 500 otherwise.
fn failed(e: impl std::error::Error + 'static) -> Reply {
    if passing(&e) {
        error(
            503,
            &format!("the primary is busy or out of resources, ask again: {e}"),
        )
    } else {
        error(500, &e.to_string())
    }
}

/// Runs `work` with a read-only connection on a blocking thread. A
/// connection that fails to open answers 503; a bug that panics answers
/// 500 with its message, and its connection is dropped.
async fn with_reader<T: Send + 'static>(
    shared: &Arc<Shared>,
    work: impl FnOnce(&PrimaryWalReader) -> Result<T, Reply> + Send + 'static,
) -> Result<T, Reply> {
    let shared = shared.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let pooled = shared
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let reader = match pooled {
            Some(r) => r,
            None => PrimaryWalReader::open(&shared.db)
                .map_err(|e| error(503, &format!("the primary database cannot be opened: {e}")))?,
        };
        let out = work(&reader);
        let mut pool = shared.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < BLOCKING_THREADS {
            pool.push(reader);
        }
        out
    })
    .await;
    joined.unwrap_or_else(|e| {
        let what = e
            .try_into_panic()
            .ok()
            .and_then(|p| {
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
            })
            .unwrap_or_else(|| "a panic".into());
        tracing::error!(panic = %what, "a request handler panicked");
        Err(error(500, &format!("internal error (a bug): {what}")))
    })
}

/// Compares in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Authorization: Bearer TOKEN`, the scheme in any case (RFC 9110: auth
/// schemes are case-insensitive), the token compared in constant time.
fn authorized(request: &Request<Incoming>, token: &str) -> bool {
    request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .is_some_and(|(scheme, given)| {
            scheme.eq_ignore_ascii_case("bearer")
                && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
        })
}

/// The query's parameters, percent-decoded; a parameter given twice is
/// refused (which one would count is a guess).
fn query(raw: &str) -> Result<Vec<(String, String)>, Reply> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(error(
                400,
                &format!("query parameter '{k}' is given more than once"),
            ));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

fn number(
    params: &[(String, String)],
    name: &str,
    default: Option<u64>,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, Reply> {
    let value = match params.iter().find(|(k, _)| *k == name) {
        None => {
            default.ok_or_else(|| error(400, &format!("query parameter '{name}' is required")))?
        }
        Some((_, v)) => v.parse::<u64>().map_err(|_| {
            error(
                400,
                &format!("query parameter '{name}' must be a non-negative integer, got '{v}'"),
            )
        })?,
    };
    if !range.contains(&value) {
        return Err(error(
            400,
            &format!(
                "query parameter '{name}' is {value}, it must be from {} to {}",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(value)
}

/// Whether the request announces a body (the API takes none).
fn has_body(request: &Request<Incoming>) -> bool {
    let headers = request.headers();
    headers.contains_key(hyper::header::TRANSFER_ENCODING)
        || headers
            .get(hyper::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

async fn handle(request: Request<Incoming>, peer: SocketAddr, shared: &Arc<Shared>) -> Reply {
    let path = request.uri().path().to_owned();
    let target_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_URL {
        return error(414, &format!("request target longer than {MAX_URL} bytes"));
    }
    if !authorized(&request, &shared.token) {
        // Never log the presented credentials.
        tracing::warn!(
            method = %request.method(),
            path,
            peer = peer.to_string(),
            "refused: missing or wrong bearer token (401)"
        );
        let mut reply = error(401, "missing or wrong bearer token");
        reply.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return reply;
    }
    if request.method() != Method::GET {
        return error(
            405,
            &format!("{} is not allowed; use GET", request.method()),
        );
    }
    if has_body(&request) {
        return error(413, "requests carry no body");
    }
    let params = match query(request.uri().query().unwrap_or("")) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    let result = match path.as_str() {
        "/v1/head" => with_reader(shared, head).await,
        "/v1/segments" => segments::segments(shared, &params).await,
        "/v1/snapshot" => snapshot_reply(shared).await,
        "/v1/digest" => digest_reply(shared).await,
        _ => Err(error(
            404,
            &format!("no such endpoint '{path}' (endpoints: /v1/head, /v1/segments, /v1/snapshot, /v1/digest)"),
        )),
    };
    result.unwrap_or_else(|e| e)
}

fn head(reader: &PrimaryWalReader) -> Result<Reply, Reply> {
    let head = reader.head().map_err(failed)?;
    let oldest = reader.oldest().map_err(failed)?;
    Ok(http::json(
        200,
        &serde_json::json!({
            "generation": reader.generation().to_string(),
            "head": head.0,
            "oldest": oldest.0,
            // Moves with every schema change (an `aerodb_replicate`, say):
            // what a replica waiting out a 503 watches.
            "schema_version": reader.schema_version().map_err(failed)?,
        }),
    ))
}

/// The digests of the primary's replicated tables at its head, read in one
/// transaction (`aerodb verify --primary URL` compares a replica with them).
async fn digest_reply(shared: &Arc<Shared>) -> Result<Reply, Reply> {
    let _turn = shared
        .heavy
        .acquire()
        .await
        .map_err(|e| error(500, &e.to_string()))?;
    let db = shared.db.clone();
    with_reader(shared, move |_| {
        let d = storage_adapter::verify::digests_at_head(&db).map_err(failed)?;
        Ok(http::json(
            200,
            &serde_json::json!({
                "generation": d.generation.to_string(),
                "commit_id": d.commit_id.0,
                "tables": d.tables.iter().map(|t| serde_json::json!({
                    "table": t.table,
                    "rows": t.rows,
                    "sha256": t.sha256,
                })).collect::<Vec<_>>(),
                "ranges": d.ranges.iter().map(|t| serde_json::json!({
                    "table": t.table,
                    "rows_per_range": t.rows_per_range,
                    "ranges": t.ranges.iter().map(|r| serde_json::json!({
                        "first": r.first,
                        "last": r.last,
                        "rows": r.rows,
                        "sha256": r.sha256,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
        ))
    })
    .await
}

/// Chunks a snapshot is streamed in, and how many may wait for the client.
const SNAPSHOT_CHUNK: usize = 256 << 10;
const SNAPSHOT_CHUNKS_QUEUED: usize = 4;

async fn snapshot_reply(shared: &Arc<Shared>) -> Result<Reply, Reply> {
    // Held by the streaming task: until the copy is sent or its client goes.
    let streaming = shared
        .snapshots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| error(500, &e.to_string()))?;
    let turn = shared
        .heavy
        .acquire()
        .await
        .map_err(|e| error(500, &e.to_string()))?;
    let db = shared.db.clone();
    let (info, file, len) = with_reader(shared, move |_| {
        // A private directory (mode 0700): the copy holds the replicated data.
        let dir = tempfile::Builder::new()
            .prefix("aerodb-snapshot-")
            .tempdir()
            .map_err(|e| error(500, &format!("creating a private temporary directory: {e}")))?;
        let path = dir.path().join("snapshot.db");
        let info = snapshot::take(&db, &path).map_err(failed)?;
        let file = std::fs::File::open(&path)
            .map_err(|e| error(500, &format!("opening the snapshot: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| error(500, &format!("reading the snapshot's size: {e}")))?
            .len();
        // The open file streams the response; its name is gone already.
        drop(dir);
        Ok((info, file, len))
    })
    .await?;
    drop(turn);
    let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_CHUNKS_QUEUED);
    // The copy is read a chunk at a time as the client takes them (a
    // client that stops reading stops the reading; no thread waits on it).
    tokio::spawn(async move {
        let _streaming = streaming;
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::from_std(file);
        loop {
            let mut chunk = bytes::BytesMut::with_capacity(SNAPSHOT_CHUNK);
            let chunk = match file.read_buf(&mut chunk).await {
                Ok(0) => return,
                Ok(_) => Ok(chunk.freeze()),
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(http::response(
        200,
        &[
            ("Content-Type", "application/vnd.sqlite3".into()),
            ("X-AeroDB-Snapshot-Commit", info.commit_id.0.to_string()),
            ("X-AeroDB-Generation", info.generation.to_string()),
            ("X-AeroDB-Checksum", format!("{:016x}", info.checksum)),
        ],
        http::channel(rx, Some(len)),
    ))
}
