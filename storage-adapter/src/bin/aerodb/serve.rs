//! `aerodb serve --db PRIMARY.db --listen HOST:PORT --token-file FILE`:
//! serves a primary's WAL read-only over HTTP (protocol:
//! `storage_adapter::http_source`). It opens the primary read-only and
//! never writes it; the primary itself runs no replication threads.
//!
//! Requests are handled by a fixed pool of worker threads, each with its
//! own read-only connection. A long-poll waits for the primary's
//! `PRAGMA data_version` to move (checked every millisecond), at most the
//! time the client asked for and never more than `MAX_WAIT`: a transport
//! wait that decides nothing but when to answer.
//!
//! Every request gets one access-log line (`tracing` target
//! `aerodb::access`: method, path, status, bytes, duration, peer); no log
//! line ever holds a header or a query (the token travels in a header).

use super::Failure;
use clap::Args;
use replication::wal::{CommitId, Segment};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};
use storage_adapter::primary::{PrimaryError, PrimaryWalReader};
use storage_adapter::snapshot;
use storage_adapter::WalReadError;
use tiny_http::{Header, Method, Request, Response, Server};

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
    /// Bind a non-loopback address (the WAL is served over plain HTTP).
    #[arg(long)]
    allow_remote: bool,
    /// Serve Prometheus metrics (/metrics) and /health on HOST:PORT,
    /// unauthenticated (port 0: any free port, printed).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
}

/// Longest long-poll a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Largest segment a client may ask for.
const MAX_SEGMENT_BYTES: usize = 64 << 20;
/// Longest request target accepted.
const MAX_URL: usize = 2048;
/// Worker threads (each may hold one long-poll).
const WORKERS: usize = 16;

struct Config {
    db: String,
    token: String,
    metrics: super::metrics::ServeMetrics,
}

/// The addresses `listen` (the value of `command`'s `flag`) names: every
/// one must be loopback unless `allow_remote` (plain HTTP must not face a
/// network by accident).
pub(super) fn resolve(
    command: &'static str,
    flag: &str,
    listen: &str,
    allow_remote: bool,
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
        if !allow_remote {
            return Err(usage(format!(
                "{flag} {listen} resolves to {remote}, which is not a loopback address; the WAL is served over plain HTTP (no TLS), so pass --allow-remote to bind it anyway"
            )));
        }
    }
    Ok(addrs)
}

pub fn run(args: ServeArgs) -> Result<(), Failure> {
    let ServeArgs {
        db,
        listen,
        token_file,
        allow_remote,
        metrics_listen,
    } = args;
    let addrs = resolve("serve", "--listen", &listen, allow_remote)?;
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
    PrimaryWalReader::open(&db).map_err(|e| run(format!("--db {db}: {e}")))?;
    // The first address that binds (a name such as localhost may resolve
    // to 127.0.0.1 and ::1; one listener serves).
    let mut errors = Vec::new();
    let listener = addrs
        .iter()
        .find_map(|a| listen_nodelay(*a).map_err(|e| errors.push(e)).ok())
        .ok_or_else(|| run(errors.join("; ")))?;
    let server = Server::from_listener(listener, None)
        .map_err(|e| run(format!("listening on {listen}: {e}")))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| run("the server is not bound to an IP address".into()))?;
    println!("aerodb serve: serving the WAL of {db} on http://{bound}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!(db = %db, listen = %bound, "serving the WAL read-only");
    let metrics = super::metrics::ServeMetrics::default();
    let metrics_server = match &metrics_listen {
        Some(listen) => {
            let addrs = resolve("serve", "--metrics-listen", listen, true)?;
            let server = Server::http(&addrs[..])
                .map_err(|e| run(format!("--metrics-listen {listen}: cannot listen: {e}")))?;
            let at = server
                .server_addr()
                .to_ip()
                .map(|a| a.to_string())
                .unwrap_or_else(|| listen.clone());
            println!("aerodb serve: metrics on http://{at}");
            let _ = std::io::stdout().flush();
            let (metrics, db) = (metrics.clone(), db.clone());
            Some(
                std::thread::Builder::new()
                    .name("aerodb-serve-metrics".into())
                    .spawn(move || super::metrics::serve_primary(&server, &metrics, &db))
                    .map_err(|e| run(format!("spawning the metrics thread: {e}")))?,
            )
        }
        None => None,
    };
    let config = std::sync::Arc::new(Config { db, token, metrics });
    let server = std::sync::Arc::new(server);
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            let (server, config) = (server.clone(), config.clone());
            std::thread::Builder::new()
                .name(format!("aerodb-serve-{i}"))
                .spawn(move || worker(&server, &config))
                .map_err(|e| run(format!("spawning a worker: {e}")))
        })
        .collect::<Result<_, _>>()?;
    for w in workers {
        let _ = w.join();
    }
    if let Some(m) = metrics_server {
        let _ = m.join();
    }
    Ok(())
}

/// A listening socket with TCP_NODELAY (accepted connections inherit it
/// on Linux): tiny_http writes a response's headers and body separately,
/// and with Nagle's algorithm the body waited for the client's delayed ACK
/// (~40 ms per long-poll answer).
fn listen_nodelay(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    use socket2::{Domain, Socket, Type};
    let fail = |e: std::io::Error| format!("listening on {addr}: {e}");
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_nodelay(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(128).map_err(fail)?;
    Ok(socket.into())
}

fn worker(server: &Server, config: &Config) {
    // Each worker reads the primary through its own read-only connection.
    let mut reader = None;
    while let Ok(request) = server.recv() {
        if reader.is_none() {
            reader = PrimaryWalReader::open(&config.db).ok();
        }
        let started = Instant::now();
        let response = match reader.as_ref() {
            // A bug that panics answers 500 with its message as JSON, and
            // the worker goes on serving.
            Some(r) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handle(&request, r, config)
            }))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                tracing::error!(panic = %what, "a request handler panicked");
                error(500, &format!("internal error (a bug): {what}"))
            }),
            None => error(503, "the primary database cannot be opened"),
        };
        let status = response.status_code().0;
        let bytes = response.data_length();
        config
            .metrics
            .request(request.url().split('?').next().unwrap_or(""), status, bytes);
        let method = request.method().to_string();
        // The path only: never a header (the token) and never the query.
        let path = request.url().split('?').next().unwrap_or("").to_owned();
        let peer = request.remote_addr().map(|a| a.to_string());
        let sent = request.respond(response);
        tracing::info!(
            target: "aerodb::access",
            method,
            path,
            status,
            bytes,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            peer = peer.as_deref().unwrap_or("-"),
            sent = sent.is_ok(),
            "request"
        );
    }
}

type Reply = tiny_http::ResponseBox;

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

fn json(status: u16, body: serde_json::Value) -> Reply {
    Response::from_data(body.to_string().into_bytes())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
        .boxed()
}

fn error(status: u16, message: &str) -> Reply {
    json(status, serde_json::json!({ "error": message }))
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
fn authorized(request: &Request, token: &str) -> bool {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().trim().split_once(' '))
        .is_some_and(|(scheme, given)| {
            scheme.eq_ignore_ascii_case("bearer")
                && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
        })
}

/// The query's parameters, percent-decoded; a parameter given twice is
/// refused (which one would count is a guess).
fn query(url: &str) -> Result<Vec<(String, String)>, Reply> {
    let raw = url.split_once('?').map(|(_, q)| q).unwrap_or("");
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

fn handle(request: &Request, reader: &PrimaryWalReader, config: &Config) -> Reply {
    let url = request.url();
    let path = url.split('?').next().unwrap_or("");
    if url.len() > MAX_URL {
        return error(414, &format!("request target longer than {MAX_URL} bytes"));
    }
    if !authorized(request, &config.token) {
        // Never log the presented credentials.
        tracing::warn!(
            method = %request.method(),
            path,
            peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
            "refused: missing or wrong bearer token (401)"
        );
        return error(401, "missing or wrong bearer token")
            .with_header(header("WWW-Authenticate", "Bearer"));
    }
    if request.method() != &Method::Get {
        return error(
            405,
            &format!("{} is not allowed; use GET", request.method()),
        );
    }
    if request.body_length().unwrap_or(0) > 0 {
        return error(413, "requests carry no body");
    }
    let params = match query(url) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    let result = match path {
        "/v1/head" => head(reader),
        "/v1/segments" => segments(reader, &params, &config.metrics),
        "/v1/snapshot" => snapshot_reply(config),
        "/v1/digest" => digest_reply(config),
        _ => Err(error(
            404,
            &format!("no such endpoint '{path}' (endpoints: /v1/head, /v1/segments, /v1/snapshot, /v1/digest)"),
        )),
    };
    result.unwrap_or_else(|e| e)
}

fn head(reader: &PrimaryWalReader) -> Result<Reply, Reply> {
    let head = reader.head().map_err(|e| error(500, &e.to_string()))?;
    let oldest = reader.oldest().map_err(|e| error(500, &e.to_string()))?;
    Ok(json(
        200,
        serde_json::json!({
            "generation": reader.generation().to_string(),
            "head": head.0,
            "oldest": oldest.0,
            // Moves with every schema change (an `aerodb_replicate`, say):
            // what a replica waiting out a 503 watches.
            "schema_version": reader.schema_version().map_err(|e| error(500, &e.to_string()))?,
        }),
    ))
}

fn segments(
    reader: &PrimaryWalReader,
    params: &[(String, String)],
    metrics: &super::metrics::ServeMetrics,
) -> Result<Reply, Reply> {
    for (k, _) in params {
        if !["from", "max_bytes", "wait_ms", "until"].contains(&k.as_str()) {
            return Err(error(
                400,
                &format!("unknown query parameter '{k}' (known: from, max_bytes, wait_ms, until)"),
            ));
        }
    }
    let from = CommitId(number(params, "from", None, 1..=i64::MAX as u64)?);
    // `until`: no record after it (what brings a replica to exactly one
    // CommitId, `aerodb verify`); nothing to wait for past it.
    let until = params
        .iter()
        .any(|(k, _)| k == "until")
        .then(|| number(params, "until", None, 0..=i64::MAX as u64).map(CommitId))
        .transpose()?;
    let max_bytes = number(
        params,
        "max_bytes",
        Some(1 << 20),
        1..=MAX_SEGMENT_BYTES as u64,
    )? as usize;
    let wait = Duration::from_millis(number(
        params,
        "wait_ms",
        Some(0),
        0..=MAX_WAIT.as_millis() as u64,
    )?);
    let deadline = Instant::now() + wait;
    let fail = |e: storage_adapter::primary::PrimaryError| error(500, &e.to_string());
    loop {
        let version = reader.data_version().map_err(fail)?;
        // Read before the WAL: a replicated table changed and not replicated
        // again yet (a migration under way) answers 503 with it, and the
        // replica waits for the schema to move past it.
        let schema = reader.schema_version().map_err(fail)?;
        let oldest = reader.oldest().map_err(fail)?;
        if from < oldest {
            return Err(json(
                410,
                serde_json::json!({
                    "error": format!("commit {from} is no longer in the primary's WAL (oldest retained commit is {oldest}); bootstrap from /v1/snapshot"),
                    "oldest": oldest.0,
                }),
            ));
        }
        let (records, head) = match reader.records_until(from, until, max_bytes) {
            Ok(r) => r,
            Err(
                e @ PrimaryError::Capture(storage_adapter::capture::CaptureError::CaptureBroken {
                    ..
                }),
            ) => {
                return Err(json(
                    503,
                    serde_json::json!({
                        "error": e.to_string(),
                        "schema_version": schema,
                    }),
                ))
            }
            // Truncated after the check above: the same answer.
            Err(PrimaryError::Wal(WalReadError::Truncated { oldest_sealed, .. })) => {
                return Err(json(
                    410,
                    serde_json::json!({
                        "error": format!("commit {from} is no longer in the primary's WAL (oldest retained commit is {oldest_sealed}); bootstrap from /v1/snapshot"),
                        "oldest": oldest_sealed.0,
                    }),
                ))
            }
            Err(e) => return Err(fail(e)),
        };
        if from.0 > head.0 + 1 {
            return Err(json(
                409,
                serde_json::json!({
                    "error": format!("commit {from} is beyond the primary's head {head}: the primary is behind this replica (was it restored from an older backup?)"),
                    "head": head.0,
                }),
            ));
        }
        if let (Some(first), Some(last)) = (records.first(), records.last()) {
            let (first, last) = (first.commit_id, last.commit_id);
            let bytes = Segment::encode(reader.generation(), &records)
                .map_err(|e| error(500, &e.to_string()))?;
            return Ok(Response::from_data(bytes)
                .with_status_code(200)
                .with_header(header("Content-Type", "application/octet-stream"))
                .with_header(header("X-AeroDB-First", &first.0.to_string()))
                .with_header(header("X-AeroDB-Last", &last.0.to_string()))
                .with_header(header("X-AeroDB-Head", &head.0.to_string()))
                .boxed());
        }
        // Nothing from `from` on up to `until`: nothing to wait for.
        if until.is_some_and(|u| from > u) {
            return Ok(Response::from_data(Vec::new())
                .with_status_code(204)
                .with_header(header("X-AeroDB-Head", &head.0.to_string()))
                .boxed());
        }
        // Nothing from `from` on: wait for the primary to commit, up to the
        // deadline (data_version moves when another connection commits).
        let _held = metrics.long_poll();
        loop {
            if Instant::now() >= deadline {
                return Ok(Response::from_data(Vec::new())
                    .with_status_code(204)
                    .with_header(header("X-AeroDB-Head", &head.0.to_string()))
                    .boxed());
            }
            std::thread::sleep(Duration::from_millis(1));
            if reader.data_version().map_err(fail)? != version {
                break;
            }
        }
    }
}

/// The digests of the primary's replicated tables at its head, read in one
/// transaction (`aerodb verify --primary URL` compares a replica with them).
fn digest_reply(config: &Config) -> Result<Reply, Reply> {
    let d = storage_adapter::verify::digests_at_head(&config.db)
        .map_err(|e| json(500, serde_json::json!({ "error": e.to_string() })))?;
    Ok(json(
        200,
        serde_json::json!({
            "generation": d.generation.to_string(),
            "commit_id": d.commit_id.0,
            "tables": d.tables.iter().map(|t| serde_json::json!({
                "table": t.table,
                "rows": t.rows,
                "sha256": t.sha256,
            })).collect::<Vec<_>>(),
        }),
    ))
}

fn snapshot_reply(config: &Config) -> Result<Reply, Reply> {
    // A private directory (mode 0700): the copy holds the replicated data.
    let dir = tempfile::Builder::new()
        .prefix("aerodb-snapshot-")
        .tempdir()
        .map_err(|e| error(500, &format!("creating a private temporary directory: {e}")))?;
    let path = dir.path().join("snapshot.db");
    let taken = snapshot::take(&config.db, &path).and_then(|info| {
        std::fs::File::open(&path)
            .map(|f| (info, f))
            .map_err(|e| snapshot::SnapshotError::Invalid(e.to_string()))
    });
    // The open file streams the response; its name is gone already.
    drop(dir);
    let (info, file) = taken.map_err(|e| error(500, &e.to_string()))?;
    Ok(Response::from_file(file)
        .with_status_code(200)
        .with_header(header("Content-Type", "application/vnd.sqlite3"))
        .with_header(header(
            "X-AeroDB-Snapshot-Commit",
            &info.commit_id.0.to_string(),
        ))
        .with_header(header("X-AeroDB-Generation", &info.generation.to_string()))
        .with_header(header(
            "X-AeroDB-Checksum",
            &format!("{:016x}", info.checksum),
        ))
        .boxed())
}
