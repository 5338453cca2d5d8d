//! The replica runtime's control socket (issue 10 item 8): lets `aerodb
//! verify`, in any process, hold a running replica while it brings the
//! replica to the primary's head and digests it, then release it.
//!
//! A Unix socket next to the replica file (`<replica>.aerodb-control`),
//! open while the runtime runs, writable by whoever may write the replica
//! file (its mode follows the file's read/write bits). One line-based
//! exchange per connection:
//!
//! ```text
//! client: hold <who>    server: ok held at applied commit N    (or: refused <why>)
//! client: release        server: ok released by <who> at applied commit M
//! ```
//!
//! The hold lasts as long as the connection: a holder that exits or is
//! killed closes it, and the kernel's close releases the replica, so a
//! dead verify never leaves it held. Waiting is on the socket and the
//! Supervisor's answers only, never on time (X5).

use replication::runtime::Holder;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The control socket of the replica file `replica`: next to its real
/// path (see [`canonical`](super::gate::canonical)), named after it
/// (`<file>.aerodb-control`), or after a digest of its name when that
/// name is too long for a socket address (`.<digest>.aerodb-control`).
pub(crate) fn control_path(replica: &Path) -> PathBuf {
    let real = super::gate::canonical(replica);
    let name = real.file_name().unwrap_or_default().to_string_lossy();
    let mut file = format!("{name}.aerodb-control");
    if file.len() > MAX_SOCKET_NAME {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(name.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        file = format!(".{hex}.aerodb-control");
    }
    real.with_file_name(file)
}

/// A request line is at most this long (a `who` is cut to fit).
const MAX_LINE: u64 = 1024;

/// An answer line is at most this long.
const MAX_ANSWER: u64 = 64 << 10;

/// The longest path a Unix socket address holds (`sun_path`, its NUL
/// excluded).
const MAX_SOCKET_PATH: usize = 107;

/// A socket's file name longer than this is replaced by a digest: it must
/// fit an address `/proc/self/fd/N/<name>` (see [`socket_address`]).
const MAX_SOCKET_NAME: usize = 80;

/// The control socket `path` as a socket address can hold it: itself, or,
/// when too long, the same file reached through its directory's
/// descriptor (`/proc/self/fd/N/name`, Linux), which the returned `File`
/// keeps open.
pub(crate) fn socket_address(path: &Path) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return Ok((path.to_path_buf(), None));
    }
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(path.parent().unwrap_or(Path::new("/")))?;
    let name = path.file_name().unwrap_or_default();
    let short = Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    Ok((short, Some(dir)))
}

/// The connections being served, by number (a copy of each, to end them).
type Connections = Arc<Mutex<std::collections::HashMap<u64, UnixStream>>>;

/// At most this many connections are served at once (a hold needs one).
const MAX_CONNECTIONS: usize = 16;

/// The control socket's listener and the connections it serves.
pub(crate) struct ControlServer {
    path: PathBuf,
    /// The acceptor's listener (a second handle): shut down to wake it.
    listener: UnixListener,
    stopping: Arc<AtomicBool>,
    connections: Connections,
    acceptor: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Listens on `replica`'s control socket, holding and releasing
    /// through `holder`. The caller holds the runtime's lock, so a socket
    /// file left there is a dead runtime's: it is replaced.
    pub(crate) fn start(replica: &Path, holder: Holder) -> std::io::Result<ControlServer> {
        let path = control_path(replica);
        let (address, _dir) = socket_address(&path)?;
        let listener = match UnixListener::bind(&address) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                std::fs::remove_file(&path)?;
                UnixListener::bind(&address)?
            }
            other => other?,
        };
        if let Ok(meta) = std::fs::metadata(replica) {
            let mode = meta.permissions().mode() & 0o666;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
        let wake = listener.try_clone()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let connections = Connections::default();
        let (stop, conns) = (stopping.clone(), connections.clone());
        let acceptor = std::thread::Builder::new()
            .name("aerodb-control".into())
            .spawn(move || {
                let mut handlers: Vec<JoinHandle<()>> = Vec::new();
                // Connections refused for their number, kept open a while:
                // closing one whose request is still unread would reset it
                // before its client reads why (the oldest goes first).
                let mut refused = std::collections::VecDeque::new();
                for (id, stream) in (0u64..).zip(listener.incoming()) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    handlers.retain(|h| !h.is_finished());
                    if handlers.len() >= MAX_CONNECTIONS {
                        let _ = send_line(
                            &stream,
                            &format!("refused too many control connections (at most {MAX_CONNECTIONS} are served at once)"),
                        );
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                        refused.push_back(stream);
                        if refused.len() > MAX_CONNECTIONS {
                            refused.pop_front();
                        }
                        continue;
                    }
                    let Ok(copy) = stream.try_clone() else {
                        continue;
                    };
                    lock(&conns).insert(id, copy);
                    let (holder, mine) = (holder.clone(), conns.clone());
                    let spawned = std::thread::Builder::new()
                        .name("aerodb-control-conn".into())
                        .spawn(move || {
                            serve(stream, &holder);
                            lock(&mine).remove(&id);
                        });
                    match spawned {
                        Ok(h) => handlers.push(h),
                        Err(_) => drop(lock(&conns).remove(&id)),
                    }
                }
                // Connections accepted while the drop ended the others.
                for (_, c) in lock(&conns).drain() {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
                for h in handlers {
                    let _ = h.join();
                }
            })?;
        Ok(ControlServer {
            path,
            listener: wake,
            stopping,
            connections,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Every connection ends (a holder's read sees the end: it releases
        // what is still held).
        for (_, c) in lock(&self.connections).drain() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // Shutting the listening socket down wakes the acceptor's accept
        // (Linux: it fails, EINVAL), whatever became of the socket's file
        // (removed, its directory renamed).
        let _ = socket2::SockRef::from(&self.listener).shutdown(std::net::Shutdown::Both);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock(c: &Connections) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, UnixStream>> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// One line from `reader`, at most `max` bytes, without its end; `None`
/// at the end of the stream, on an error, or for a longer line (what
/// follows it is not read as another request).
fn line(reader: &mut impl BufRead, max: u64) -> Option<String> {
    let mut buf = Vec::new();
    let n = std::io::Read::take(&mut *reader, max)
        .read_until(b'\n', &mut buf)
        .ok()?;
    if n == 0 || buf.last() != Some(&b'\n') {
        return None;
    }
    let text = String::from_utf8_lossy(&buf);
    Some(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// Writes `text` and a newline to `s`, without raising SIGPIPE when the
/// peer has gone (`MSG_NOSIGNAL`): the runtime may run inside a program
/// that does not ignore the signal (the sqlite3 shell), which it would
/// kill.
fn send_line(s: &UnixStream, text: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut buf = text.as_bytes().to_vec();
    buf.push(b'\n');
    let mut at = 0;
    while at < buf.len() {
        // SAFETY: the pointer and length are those of `buf[at..]`, and the
        // descriptor is `s`'s, open for the call.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                buf[at..].as_ptr().cast(),
                buf.len() - at,
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        at += n as usize;
    }
    Ok(())
}

/// Serves one connection: a hold, held until a `release` line or the
/// connection's end.
fn serve(stream: UnixStream, holder: &Holder) {
    let Ok(out) = stream.try_clone() else {
        return;
    };
    let mut input = BufReader::new(stream);
    let Some(request) = line(&mut input, MAX_LINE) else {
        let _ = send_line(
            &out,
            &format!("refused no request line (one line of at most {MAX_LINE} bytes: hold <who>)"),
        );
        return;
    };
    let Some(who) = request.strip_prefix("hold ") else {
        let _ = send_line(&out, "refused unknown request (expected: hold <who>)");
        return;
    };
    let who: String = who.chars().filter(|c| !c.is_control()).take(200).collect();
    match holder.hold(&who) {
        Ok(what) => {
            tracing::info!(%who, %what, "replica held");
            if send_line(&out, &format!("ok {what}")).is_err() {
                let _ = holder.release();
                return;
            }
        }
        Err(why) => {
            let _ = send_line(&out, &format!("refused {why}"));
            return;
        }
    }
    // Held until the holder says so or its connection ends (it exited).
    let asked = line(&mut input, MAX_LINE).is_some_and(|l| l == "release");
    let released = holder.release();
    tracing::info!(%who, ?released, asked, "replica released");
    if asked {
        let _ = match released {
            Ok(what) => send_line(&out, &format!("ok {what}")),
            Err(why) => send_line(&out, &format!("refused {why}")),
        };
    }
}

/// What `aerodb verify` holds a replica by: its runtime's lock (no runtime
/// runs on it), or a running runtime's hold over the control socket.
pub(crate) enum ReplicaHold {
    /// No runtime runs: the lock keeps one from starting.
    Stopped {
        /// Held, never read: dropping it releases the lock.
        _lock: std::fs::File,
    },
    /// A runtime runs and holds still: until [`ReplicaHold::release`] or
    /// this is dropped (the connection's end releases it).
    Running {
        stream: UnixStream,
        /// The runtime's answer (`held at applied commit N`).
        held: String,
    },
}

impl ReplicaHold {
    /// Holds the replica file `replica` for `who`: takes the runtime's
    /// lock if no runtime runs, else asks the running one to hold.
    pub(crate) fn take(replica: &Path, who: &str) -> Result<ReplicaHold, String> {
        if let Ok(lock) = super::take_lock(replica) {
            return Ok(ReplicaHold::Stopped { _lock: lock });
        }
        let path = control_path(replica);
        let no_answer = |e: std::io::Error| {
            format!(
                "a replica runtime holds it, but its control socket {} does not answer ({e}); stop the runtime, then verify",
                path.display()
            )
        };
        let (address, _dir) = socket_address(&path).map_err(no_answer)?;
        let stream = UnixStream::connect(address).map_err(no_answer)?;
        // A server that refused at once (too many connections) has closed
        // the connection: its answer is read all the same.
        let sent = send_line(&stream, &format!("hold {who}"));
        let mut input = BufReader::new(stream.try_clone().map_err(no_answer)?);
        match line(&mut input, MAX_ANSWER) {
            Some(l) if l.starts_with("ok ") => Ok(ReplicaHold::Running {
                stream,
                held: l["ok ".len()..].to_owned(),
            }),
            Some(l) => Err(format!(
                "its running replica runtime refused to hold it: {}",
                l.strip_prefix("refused ").unwrap_or(&l)
            )),
            None => Err(match sent {
                Err(e) => no_answer(e),
                Ok(()) => format!(
                    "its running replica runtime closed its control socket {} without answering (it is stopping, or serving {MAX_CONNECTIONS} control connections already)",
                    path.display()
                ),
            }),
        }
    }

    /// The running runtime's answer to the hold, if one runs.
    pub(crate) fn held(&self) -> Option<&str> {
        match self {
            ReplicaHold::Running { held, .. } => Some(held),
            ReplicaHold::Stopped { .. } => None,
        }
    }

    /// Releases a running runtime (it restarts from where the holder left
    /// the replica); the runtime's answer. A stopped replica's lock is
    /// just dropped.
    pub(crate) fn release(self) -> Result<Option<String>, String> {
        match self {
            ReplicaHold::Stopped { .. } => Ok(None),
            ReplicaHold::Running { stream, .. } => {
                send_line(&stream, "release").map_err(|e| e.to_string())?;
                let mut input = BufReader::new(stream);
                match line(&mut input, MAX_ANSWER) {
                    Some(l) if l.starts_with("ok ") => Ok(Some(l["ok ".len()..].to_owned())),
                    Some(l) => Err(l.strip_prefix("refused ").unwrap_or(&l).to_owned()),
                    None => Err("the runtime closed its control socket".into()),
                }
            }
        }
    }
}
