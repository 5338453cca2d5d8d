//! The head watcher: what wakes every held long-poll when the primary
//! commits.

use std::time::Duration;
use storage_adapter::primary::PrimaryWalReader;

/// Watches the primary for commits and moves `tx` after each: inotify on
/// the database's files says one of them was written, and
/// `PRAGMA data_version` says whether a commit became visible (a WAL
/// write is seen a moment before the commit is published in the shared
/// memory index, so after an event it is checked every millisecond for a
/// short while). Without inotify (or if it fails) it checks every second:
/// slower answers, never wrong ones, since a woken long-poll reads the WAL
/// itself and a long-poll not woken is answered empty at its deadline and
/// asked again.
pub(super) fn watch_head(db: &str, tx: &tokio::sync::watch::Sender<u64>) {
    // The directory SQLite writes in: that of the file a symbolic link
    // names (its -wal and -journal are next to it).
    let real = std::fs::canonicalize(db).unwrap_or_else(|_| db.into());
    let watcher = crate::inotify::DirWatch::new(&real);
    if let Err(e) = &watcher {
        tracing::warn!(error = %e, "no inotify on the primary's files: long-polls see commits within a second");
    }
    let wait = |timeout: Duration| match &watcher {
        Ok(w) => w.wait(timeout),
        Err(_) => {
            std::thread::sleep(timeout);
            false
        }
    };
    // A connection of its own; opened again (each second, or at the next
    // write) while it cannot be (the primary locked, or gone a moment).
    let mut reader: Option<PrimaryWalReader> = None;
    let mut seen: Option<i64> = None;
    let mut complained = false;
    // Whether a commit became visible since the last check. An error (the
    // primary locked past the busy timeout) publishes nothing: waking the
    // long-polls would only send them into the same lock.
    let mut moved = |reader: &mut Option<PrimaryWalReader>| -> bool {
        if reader.is_none() {
            match PrimaryWalReader::open(db) {
                Ok(r) => {
                    complained = false;
                    *reader = Some(r);
                }
                Err(e) => {
                    if !complained {
                        tracing::warn!(error = %e, "the head watcher cannot open the primary; long-polls wait their deadline until it can");
                        complained = true;
                    }
                    return false;
                }
            }
        }
        let Some(r) = reader.as_ref() else {
            return false;
        };
        match r.data_version() {
            Ok(v) if Some(v) != seen => {
                seen = Some(v);
                tx.send_modify(|n| *n += 1);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %e, "the head watcher could not read data_version");
                false
            }
        }
    };
    moved(&mut reader);
    loop {
        let written = wait(Duration::from_secs(1));
        if tx.is_closed() {
            return;
        }
        if moved(&mut reader) || !written {
            continue;
        }
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(1));
            if moved(&mut reader) {
                break;
            }
        }
    }
}
