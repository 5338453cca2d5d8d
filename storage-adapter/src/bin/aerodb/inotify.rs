//! Waiting for a database's files to be written (Linux inotify): a watch
//! on the database file and on its `-wal` (writes), and on their directory
//! for files of the database appearing or going (a `-wal` created, a
//! `-journal` deleted at a rollback-journal commit). Writes to other files
//! in the directory wake nothing.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// inotify watches on one database's files and their directory.
pub struct DirWatch {
    fd: OwnedFd,
    /// The database's file name; directory events for names starting with
    /// it count.
    name: Vec<u8>,
    dir: std::path::PathBuf,
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
        // SAFETY: plain system calls; the descriptor is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(format!(
                "inotify_init1: {}",
                std::io::Error::last_os_error()
            ));
        }
        let w = DirWatch {
            // SAFETY: `fd` is a new descriptor nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            name: name.as_bytes().to_vec(),
            dir: dir.to_path_buf(),
        };
        w.add(dir, libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO)?;
        w.watch_file(&dir.join(name))?;
        // Absent until the database is in WAL mode: watched when created.
        let mut wal = name.to_os_string();
        wal.push("-wal");
        let _ = w.watch_file(&dir.join(wal));
        Ok(w)
    }

    /// Watches `path` for writes (an error if it does not exist).
    fn watch_file(&self, path: &Path) -> Result<(), String> {
        self.add(path, libc::IN_MODIFY | libc::IN_CLOSE_WRITE)
    }

    fn add(&self, path: &Path, mask: u32) -> Result<(), String> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| format!("{}: the path holds a NUL byte", path.display()))?;
        // SAFETY: `c` is a NUL-terminated path; the descriptor is ours.
        if unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask) } < 0 {
            return Err(format!(
                "inotify_add_watch {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
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
                if event.mask & libc::IN_Q_OVERFLOW != 0 {
                    ours = true;
                } else if name.is_empty() {
                    // A watched file written (or its watch gone with it).
                    ours |= event.mask & (libc::IN_MODIFY | libc::IN_CLOSE_WRITE) != 0;
                } else if name.starts_with(&self.name) {
                    // A file of the database created, moved in or deleted:
                    // a new -wal is watched too.
                    ours = true;
                    if event.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                        let _ = self.watch_file(&self.dir.join(std::ffi::OsStr::from_bytes(name)));
                    }
                }
                at = name_end;
            }
        }
    }
}
