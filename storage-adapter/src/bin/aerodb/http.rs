//! The HTTP/1.1 server under `aerodb serve` and both metrics listeners:
//! hyper on a small tokio runtime, so that an idle or long-polling
//! connection costs a task (a few KiB), not a thread.
//!
//! What any client can cost the process is bounded here, before a handler
//! runs:
//! - open connections: at most `Limits::max_connections`; one more is
//!   accepted and closed at once (counted, logged at most once per second
//!   of refusals... rather: once per burst, see `Refusals`);
//! - request head (request line and headers): at most
//!   `Limits::max_header_bytes` buffered (hyper answers 431 and closes);
//! - time to send a request head: `Limits::header_read_timeout` from its
//!   first byte (a slowloris client is closed); a TLS handshake gets the
//!   same bound;
//! - a response the client stops reading: a write that makes no progress
//!   for `Limits::write_stall_timeout` ends the connection.
//!
//! Handlers never read a request body (the API has none): a request that
//! announces one is answered 413 by the handler (hyper drains a small body
//! to keep the connection; a large or endless one closes it).
//!
//! These timeouts end connections; none decides anything about the
//! replication (spec X5): a replica whose connection is closed asks again.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A response body: bytes in memory, or a stream fed by a blocking task.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A whole body in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body of `len` bytes (when known) streamed from a channel (a task
/// sends its chunks; a bounded channel holds the reader to the client's
/// pace).
pub fn channel(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>, len: Option<u64>) -> Body {
    struct Chunks {
        rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
        len: Option<u64>,
    }
    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| c.map(Frame::data)))
        }
        fn size_hint(&self) -> hyper::body::SizeHint {
            match self.len {
                Some(n) => hyper::body::SizeHint::with_exact(n),
                None => hyper::body::SizeHint::default(),
            }
        }
    }
    BodyExt::boxed(Chunks { rx, len })
}

/// `body`, holding `permit` until it is dropped (sent, or its client gone).
pub fn holding(body: Body, permit: tokio::sync::OwnedSemaphorePermit) -> Body {
    struct Holding {
        body: Body,
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    impl hyper::body::Body for Holding {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Pin::new(&mut self.body).poll_frame(cx)
        }
        fn is_end_stream(&self) -> bool {
            self.body.is_end_stream()
        }
        fn size_hint(&self) -> hyper::body::SizeHint {
            self.body.size_hint()
        }
    }
    BodyExt::boxed(Holding {
        body,
        _permit: permit,
    })
}

/// What a client may cost the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub write_stall_timeout: Duration,
}

impl Limits {
    /// For a metrics listener: scrapers and probes, a few at a time. It is
    /// unauthenticated: a client holding connections is closed after 5 s,
    /// so a probe is refused at most that long by 256 idle connections.
    pub const METRICS: Limits = Limits {
        max_connections: 256,
        max_header_bytes: 16 << 10,
        header_read_timeout: Duration::from_secs(5),
        write_stall_timeout: Duration::from_secs(30),
    };
}

/// Open connections, shared with the metrics (`open()` is the gauge).
#[derive(Clone, Default)]
pub struct Connections {
    open: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

impl Connections {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Decrements the open count when the connection's task ends (however).
struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Binds the first of `addrs` that binds (a name such as localhost may
/// resolve to 127.0.0.1 and ::1; one listener serves). To be called inside
/// the runtime.
pub fn bind(addrs: &[SocketAddr], what: &str) -> Result<tokio::net::TcpListener, String> {
    let mut errors = Vec::new();
    for addr in addrs {
        let attempt = (|| {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(*addr)?;
            socket.listen(1024)
        })();
        match attempt {
            Ok(l) => return Ok(l),
            Err(e) => errors.push(format!("{what} {addr}: cannot listen: {e}")),
        }
    }
    Err(errors.join("; "))
}

/// A runtime for a server: `workers` threads for connections, at most
/// `blocking` threads for the handlers' SQLite work.
pub fn runtime(
    name: &str,
    workers: usize,
    blocking: usize,
) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(blocking)
        .thread_name(name)
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("starting the {name} runtime: {e}"))
}

/// Serves `listener` until `stop` completes: each connection on a task of
/// its own, within `limits`, TLS first when `tls` is given, each request
/// answered by `handler(request, peer)`.
pub async fn serve<H, F>(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    connections: Connections,
    handler: H,
    stop: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::pin!(stop);
    // What the last accept did; a change is logged, a run of the same not.
    #[derive(PartialEq)]
    enum Accepting {
        Normally,
        Failing,
        AtLimit,
    }
    let mut state = Accepting::Normally;
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or memory: the connections held
                // end in time (the limits above); accept again then. A
                // short pause keeps this loop from spinning meanwhile (it
                // orders nothing).
                if state != Accepting::Failing {
                    tracing::warn!(error = %e, "accepting connections fails; retrying every 50 ms");
                    state = Accepting::Failing;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if connections.open.load(Ordering::Relaxed) >= limits.max_connections {
            connections.refused.fetch_add(1, Ordering::Relaxed);
            if state != Accepting::AtLimit {
                tracing::warn!(
                    limit = limits.max_connections,
                    %peer,
                    "refusing connections: the open-connection limit is reached"
                );
                state = Accepting::AtLimit;
            }
            drop(stream);
            continue;
        }
        if state == Accepting::Failing {
            tracing::info!("accepting connections again");
        }
        state = Accepting::Normally;
        connections.open.fetch_add(1, Ordering::Relaxed);
        let held = Held(connections.open.clone());
        let (tls, handler) = (tls.clone(), handler.clone());
        tokio::spawn(async move {
            let _held = held;
            let _ = stream.set_nodelay(true);
            let stream = Stalls::new(stream, limits.write_stall_timeout);
            match tls {
                None => connection(stream, peer, limits, handler).await,
                Some(acceptor) => {
                    if !speaks_tls(&stream, limits.header_read_timeout).await {
                        plain_http_refused(stream).await;
                        return;
                    }
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => connection(stream, peer, limits, handler).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Whether the client's first byte opens a TLS handshake (a handshake
/// record, 0x16); false for plain HTTP, a timeout or a closed connection.
async fn speaks_tls(stream: &Stalls<tokio::net::TcpStream>, timeout: Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(timeout, stream.inner.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x16
    )
}

/// A plain-HTTP request on the TLS listener: told so, in plain HTTP, and
/// closed.
async fn plain_http_refused(mut stream: Stalls<tokio::net::TcpStream>) {
    use tokio::io::AsyncWriteExt;
    let body = "{\"error\":\"this server speaks HTTPS only: use an https:// URL\"}\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn connection<I, H, F>(io: I, peer: SocketAddr, limits: Limits, handler: H)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let answer = handler(request, peer);
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A stream whose writes fail once they have made no progress for
/// `timeout` (a client that stops reading a response).
struct Stalls<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Stalls<S> {
    fn new(inner: S, timeout: Duration) -> Stalls<S> {
        Stalls {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Called when a write is pending: fails once it has been for
    /// `timeout`.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalls<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalls<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.check(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.check(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.check(cx).map_ok(|_| ()),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response with `status`, `headers` and `body`.
pub fn response(status: u16, headers: &[(&str, String)], body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            r.headers_mut().append(n, v);
        }
    }
    r
}

/// A JSON response.
pub fn json(status: u16, body: &serde_json::Value) -> Response<Body> {
    response(
        status,
        &[("Content-Type", "application/json".into())],
        full(format!("{body}\n")),
    )
}

/// The process's open-file limit raised to its hard limit (each connection
/// holds a descriptor); returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}
