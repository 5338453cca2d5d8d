//! Waiting for a database's files to be written: inotify on the
//! database's directory, events for the database file, its `-wal` and its
//! `-journal` only (Linux).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// An inotify watch on the directory of one database.
pub struct DirWatch {
    fd: OwnedFd,
    /// The database's file name; events for names starting with it count.
    name: Vec<u8>,
}

impl DirWatch {
    pub fn new(db: &Path) -> Result<DirWatch, String> {
        let dir = match db.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = db
            .file_name()
            .ok_or_else(|| format!("{}: not a file name", db.display()))?;
        use std::os::unix::ffi::OsStrExt;
        let c_dir = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| format!("{}: the path holds a NUL byte", dir.display()))?;
        // SAFETY: plain system calls; the descriptor is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(format!(
                "inotify_init1: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_MODIFY
            | libc::IN_CLOSE_WRITE
            | libc::IN_CREATE
            | libc::IN_DELETE
            | libc::IN_MOVED_TO;
        // SAFETY: `c_dir` is a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c_dir.as_ptr(), mask) };
        if wd < 0 {
            return Err(format!(
                "inotify_add_watch {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(DirWatch {
            fd,
            name: name.as_bytes().to_vec(),
        })
    }

    /// Waits until one of the database's files is written or `timeout`
    /// passes; true if one was.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut pollfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pollfd, 1, ms) };
        if ready <= 0 {
            return false;
        }
        self.drain()
    }

    /// Reads the queued events; true if one names the database's files.
    fn drain(&self) -> bool {
        let mut ours = false;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into `buf`, at most its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return ours;
            }
            let mut at = 0usize;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // SAFETY: the kernel wrote whole events; read unaligned.
                let event: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let name_at = at + header;
                let name_end = (name_at + event.len as usize).min(n as usize);
                let name = &buf[name_at..name_end];
                let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
                if event.mask & libc::IN_Q_OVERFLOW != 0 || name.starts_with(&self.name) {
                    ours = true;
                }
                at = name_end;
            }
        }
    }
}
