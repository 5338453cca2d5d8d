//! A WAL source reading a primary through `aerodb serve` over HTTP or
//! HTTPS (rustls; the server's certificate checked against the webpki
//! roots, or against the CAs of a `ca_file` for a private CA).
//!
//! Role in the spec: the WAL Receiver's transport (5.2, input "primary WAL
//! stream"). It trusts nothing it receives (the Validator proves it); it
//! only maps HTTP to [`WalSource`]: `GET /v1/segments` (long-poll: the
//! server answers as soon as the primary's head moves, or 204 after its
//! wait limit), `GET /v1/head`. Transport failures are
//! [`SOURCE_UNAVAILABLE`]: replication stops, explicitly; when the server
//! answers again the Receiver resumes and the Supervisor records it.
//!
//! Protocol (all requests carry `Authorization: Bearer <token>`):
//! - `GET /v1/head` -> 200, JSON `{"generation": "hex", "head": N, "oldest": M, "schema_version": S}`
//!   (`schema_version` moves with every schema change of the primary)
//! - a `/v1/segments` answer of 503, JSON `{"error": ..., "schema_version": S}`:
//!   a replicated table changed and not replicated again yet (a migration
//!   under way); the source waits for the schema version to move past `S`
//! - `GET /v1/segments?from=N&max_bytes=B&wait_ms=W` -> 200 with the segment
//!   bytes and headers `X-AeroDB-First`, `X-AeroDB-Last`, `X-AeroDB-Head`;
//!   204 if nothing from `N` on within `W` ms; 410 if the primary no longer
//!   has commit `N` (JSON with `oldest`).
//! - `GET /v1/snapshot` -> 200 with a snapshot database file and headers
//!   `X-AeroDB-Snapshot-Commit`, `X-AeroDB-Generation`, `X-AeroDB-Checksum`.
//! - `GET /v1/digest` -> 200, JSON `{"generation", "commit_id", "tables":
//!   [{"table", "rows", "sha256"}], "ranges": [{"table", "rows_per_range",
//!   "ranges": [{"first", "last", "rows", "sha256"}]}]}`: the replicated
//!   tables' digests at the head, read in one transaction, each table cut
//!   into at most 256 key ranges (`aerodb verify --primary URL`).

use replication::runtime::FailureCode;
use replication::runtime::{Failure, Fetched, StopSignal, WalSource};
use replication::wal::{CommitId, Generation};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long the server may hold a long-poll (the client asks for this).
pub const LONG_POLL: Duration = Duration::from_millis(500);

/// Longest segment body accepted (a segment is at most a few records of
/// at most 64 MiB each; the client asks for far less).
const MAX_BODY: u64 = 256 << 20;

/// The primary's head as the server reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteHead {
    /// Generation.
    pub generation: Generation,
    /// Newest CommitId.
    pub head: CommitId,
    /// Oldest CommitId the primary still has WAL for.
    pub oldest: CommitId,
    /// The primary's schema version (servers before it was added omit it).
    pub schema_version: Option<i64>,
}

/// A WAL source over HTTP.
pub struct HttpSource {
    base: String,
    token: String,
    agent: ureq::Agent,
    generation: Generation,
    /// Where the last fetch asked from (long-polls ask from there).
    next: Option<(CommitId, usize)>,
    /// A segment a long-poll brought, returned by the next fetch.
    pending: Option<Fetched>,
    poll_interval: Duration,
    /// The schema version a 503 named (a migration under way), until the
    /// wait after it.
    broken_schema: std::cell::Cell<Option<i64>>,
}

/// A transport failure: the server does not answer (an outage, waited
/// out), or, over HTTPS, a TLS failure (an untrusted or mismatched
/// certificate is a configuration to fix, not an outage: [`FailureCode::Source`]).
fn unavailable(base: &str, e: &(dyn std::error::Error + 'static)) -> Failure {
    if let Some(tls) = rustls_error(e) {
        let hint = match tls {
            rustls::Error::InvalidCertificate(_) => {
                "; the server's certificate is not trusted: give the CA that signed it (PEM) as ca_file (--ca-file), or check the host name"
            }
            rustls::Error::InvalidMessage(_) => {
                "; is the server speaking plain HTTP? (then use an http:// URL)"
            }
            _ => "",
        };
        return Failure::new(
            FailureCode::Source,
            format!("WAL server {base}: TLS: {tls}{hint}"),
        );
    }
    Failure::new(
        FailureCode::SourceUnavailable,
        format!("WAL server {base}: {e}"),
    )
}

/// The rustls error somewhere in `e`'s chain of causes.
fn rustls_error<'a>(mut e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(t) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(t);
        }
        e = e.source()?;
    }
}

/// An HTTP agent for `url` (`http://` or `https://`), trusting the CAs in
/// the PEM file `ca_file` instead of the webpki roots when given;
/// `read_timeout` bounds a server that stops answering mid-response.
pub fn agent(
    url: &str,
    ca_file: Option<&Path>,
    read_timeout: Duration,
) -> Result<ureq::Agent, Failure> {
    let https = url.starts_with("https://");
    if !https && !url.starts_with("http://") {
        return Err(Failure::new(
            FailureCode::Source,
            format!("'{url}' is not an http:// or https:// URL"),
        ));
    }
    let mut builder = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(read_timeout);
    match (ca_file, https) {
        (Some(path), false) => {
            return Err(Failure::new(
                FailureCode::Source,
                format!(
                    "ca_file '{}' is for https:// sources; '{url}' is plain http",
                    path.display()
                ),
            ))
        }
        (Some(path), true) => builder = builder.tls_config(Arc::new(client_config(path)?)),
        (None, _) => {}
    }
    Ok(builder.build())
}

/// A TLS client configuration trusting exactly the certificates in the
/// PEM file `ca_file`.
fn client_config(ca_file: &Path) -> Result<rustls::ClientConfig, Failure> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let fail = |why: String| {
        Failure::new(
            FailureCode::Source,
            format!("ca_file '{}': {why}", ca_file.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("holds no PEM certificate".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| fail(format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn header_u64(r: &ureq::Response, name: &str, base: &str) -> Result<u64, Failure> {
    r.header(name).and_then(|v| v.parse().ok()).ok_or_else(|| {
        Failure::new(
            FailureCode::Source,
            format!("WAL server {base}: response lacks a numeric {name} header"),
        )
    })
}

impl HttpSource {
    /// Connects to `url` (e.g. `http://127.0.0.1:7070`) with `token` and
    /// reads the primary's generation (https: the webpki roots).
    pub fn open(url: &str, token: &str) -> Result<HttpSource, Failure> {
        HttpSource::open_with_ca(url, token, None)
    }

    /// [`open`](HttpSource::open), trusting for an `https://` `url` the CAs
    /// in the PEM file `ca_file` (a private CA) when given.
    pub fn open_with_ca(
        url: &str,
        token: &str,
        ca_file: Option<&Path>,
    ) -> Result<HttpSource, Failure> {
        let base = url.trim_end_matches('/').to_owned();
        if token.is_empty() {
            return Err(Failure::new(
                FailureCode::Source,
                "the bearer token is empty",
            ));
        }
        // Long-polls are held at most LONG_POLL by the server; the read
        // timeout only bounds a server that stops answering mid-response
        // (an explicit transport failure, never a correctness input).
        let agent = agent(&base, ca_file, LONG_POLL + Duration::from_secs(30))?;
        let mut source = HttpSource {
            base,
            token: token.to_owned(),
            agent,
            generation: Generation(0),
            next: None,
            pending: None,
            broken_schema: std::cell::Cell::new(None),
            poll_interval: Duration::from_millis(50),
        };
        source.generation = source.head()?.generation;
        Ok(source)
    }

    /// The primary's generation.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    fn get(&self, path: &str) -> Result<ureq::Response, Failure> {
        let url = format!("{}{path}", self.base);
        match self
            .agent
            .get(&url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
        {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => {
                let body = r.into_string().unwrap_or_default();
                let code_name = match code {
                    401 => FailureCode::Unauthorized,
                    409 => FailureCode::SourceBehind,
                    410 => FailureCode::WalTruncated,
                    // The primary cannot serve until its schema changes (a
                    // migration under way): waited out, watching the
                    // schema version the answer carries.
                    503 => {
                        self.broken_schema.set(
                            serde_json::from_str::<serde_json::Value>(&body)
                                .ok()
                                .and_then(|v| v.get("schema_version")?.as_i64()),
                        );
                        FailureCode::SourceUnavailable
                    }
                    _ => FailureCode::Source,
                };
                Err(Failure::new(
                    code_name,
                    format!(
                        "WAL server {}: {path} answered {code}: {}",
                        self.base,
                        body.trim()
                    ),
                ))
            }
            Err(ureq::Error::Transport(t)) => Err(unavailable(&self.base, &t)),
        }
    }

    /// `GET /v1/head`.
    pub fn head(&self) -> Result<RemoteHead, Failure> {
        let r = self.get("/v1/head")?;
        let text = r.into_string().map_err(|e| unavailable(&self.base, &e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Failure::new(
                FailureCode::Source,
                format!("WAL server {}: /v1/head: {e}", self.base),
            )
        })?;
        let num = |k: &str| v.get(k).and_then(|x| x.as_u64());
        let generation = v
            .get("generation")
            .and_then(|g| g.as_str())
            .and_then(|g| u64::from_str_radix(g, 16).ok());
        match (generation, num("head"), num("oldest")) {
            (Some(g), Some(h), Some(o)) => Ok(RemoteHead {
                generation: Generation(g),
                head: CommitId(h),
                oldest: CommitId(o),
                schema_version: v.get("schema_version").and_then(|x| x.as_i64()),
            }),
            _ => Err(Failure::new(
                FailureCode::Source,
                format!("WAL server {}: /v1/head answered {text}", self.base),
            )),
        }
    }

    fn segments(
        &self,
        from: CommitId,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Option<Fetched>, Failure> {
        let path = format!(
            "/v1/segments?from={}&max_bytes={max_bytes}&wait_ms={}",
            from.0,
            wait.as_millis()
        );
        let r = self.get(&path)?;
        if r.status() == 204 {
            return Ok(None);
        }
        let first = CommitId(header_u64(&r, "X-AeroDB-First", &self.base)?);
        let last = CommitId(header_u64(&r, "X-AeroDB-Last", &self.base)?);
        let head = CommitId(header_u64(&r, "X-AeroDB-Head", &self.base)?);
        let mut bytes = Vec::new();
        r.into_reader()
            .take(MAX_BODY)
            .read_to_end(&mut bytes)
            .map_err(|e| unavailable(&self.base, &e))?;
        Ok(Some(Fetched {
            first,
            last,
            bytes,
            source_head: head,
        }))
    }
}

impl WalSource for HttpSource {
    fn describe(&self) -> String {
        format!("WAL server {}", self.base)
    }

    fn fetch(&mut self, from: CommitId, max_bytes: usize) -> Result<Option<Fetched>, Failure> {
        self.next = Some((from, max_bytes));
        if let Some(p) = self.pending.take() {
            if p.first == from {
                return Ok(Some(p));
            }
        }
        self.segments(from, max_bytes, Duration::ZERO)
    }

    fn wait_for_wal(&mut self, stop: &StopSignal) -> Result<bool, Failure> {
        let Some((from, max_bytes)) = self.next else {
            return Ok(!stop.is_set());
        };
        // Long-poll: the server answers as soon as the head moves. Between
        // polls, only the stop signal is checked.
        loop {
            if stop.is_set() {
                return Ok(false);
            }
            if let Some(f) = self.segments(from, max_bytes, LONG_POLL)? {
                self.pending = Some(f);
                return Ok(true);
            }
        }
    }

    fn snapshot(&mut self, dest: &Path) -> Result<CommitId, Failure> {
        let r = self.get("/v1/snapshot")?;
        let commit = CommitId(header_u64(&r, "X-AeroDB-Snapshot-Commit", &self.base)?);
        let mut file = std::fs::File::create_new(dest).map_err(|e| {
            Failure::new(
                FailureCode::Storage,
                format!("creating {}: {e}", dest.display()),
            )
        })?;
        std::io::copy(&mut r.into_reader(), &mut file)
            .and_then(|_| file.sync_all())
            .map_err(|e| {
                let mut f = unavailable(&self.base, &e);
                f.reason = format!("downloading the snapshot: {}", f.reason);
                f
            })?;
        Ok(commit)
    }

    fn wait_until_available(&mut self, stop: &StopSignal) -> Result<bool, Failure> {
        self.pending = None;
        // After a 503 (a migration under way): only a schema change past
        // the one it named is worth another fetch.
        let broken = self.broken_schema.take();
        loop {
            match self.head() {
                Ok(h)
                    if h.generation == self.generation
                        && broken.is_some()
                        && h.schema_version == broken =>
                {
                    if stop.wait(self.poll_interval) {
                        return Ok(false);
                    }
                }
                Ok(h) if h.generation == self.generation => return Ok(true),
                Ok(h) => {
                    return Err(Failure::new(
                        FailureCode::ForeignGeneration,
                        format!(
                            "WAL server {} came back serving generation {}, not {}",
                            self.base, h.generation, self.generation
                        ),
                    ))
                }
                Err(f) if f.code == FailureCode::SourceUnavailable => {
                    if stop.wait(self.poll_interval) {
                        return Ok(false);
                    }
                }
                Err(f) => return Err(f),
            }
        }
    }
}
