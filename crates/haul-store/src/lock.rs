//! File locks (`flock(2)`) that make two haul processes on one root safe.
//!
//! Three kinds of lock exist, each on its own file:
//!
//! - `ROOT/store.lock`, exclusive, held for the short critical sections that
//!   update metadata (`refs.json`, `content/index.json`, image records,
//!   distribution metadata). Readers do not take it: every metadata file is
//!   replaced by an atomic rename, so a reader sees the old or the new
//!   version, never a mix.
//! - `ROOT/ingest/ALG-HEX.lock`, exclusive, held by an [`Ingest`] for one
//!   digest, so that one partial file has one writer; a second process (or
//!   thread) asking for the same digest waits.
//! - `ROOT/gc.lock`: shared by a [`Lease`] (every ingest, layer
//!   registration and export takes one; callers take one around a whole
//!   pull), exclusive while garbage collection runs. So gc never removes
//!   something half-written or not yet referenced by an image.
//!
//! `flock` locks belong to an open file description: they are released when
//! the file is closed, including when the process dies, so a killed haul
//! never leaves a lock held. They exclude each other between threads of one
//! process too, as each acquisition opens the file anew.
//!
//! [`Ingest`]: crate::Ingest

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;

use crate::error::{Error, IoContext, Result};

/// Whether a lock excludes everyone or only exclusive holders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockKind {
    Shared,
    Exclusive,
}

/// A held `flock` on a file; released on drop.
#[derive(Debug)]
pub(crate) struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Opens (creating) `path` and locks it, waiting at most `timeout`
    /// (forever when `None`).
    pub(crate) fn acquire(
        path: &Path,
        kind: LockKind,
        timeout: Option<Duration>,
    ) -> Result<FileLock> {
        let file = open_lock_file(path)?;
        lock_file(&file, path, kind, timeout)?;
        Ok(FileLock {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Locks `path` without waiting; `None` when someone else holds it.
    pub(crate) fn try_acquire(path: &Path, kind: LockKind) -> Result<Option<FileLock>> {
        let file = open_lock_file(path)?;
        let op = match kind {
            LockKind::Shared => FlockOperation::NonBlockingLockShared,
            LockKind::Exclusive => FlockOperation::NonBlockingLockExclusive,
        };
        match rustix::fs::flock(&file, op) {
            Ok(()) => Ok(Some(FileLock {
                file,
                path: path.to_path_buf(),
            })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e).at(path),
        }
    }

    /// Like [`FileLock::acquire`] (exclusive) for a lock file that its
    /// holder may delete when done: after locking, checks that `path` still
    /// names the locked file, and starts over if it was deleted or replaced
    /// meanwhile. The holder may then remove the file while holding the
    /// lock ([`FileLock::remove_file`]).
    pub(crate) fn acquire_deletable(path: &Path, timeout: Option<Duration>) -> Result<FileLock> {
        let start = Instant::now();
        loop {
            let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
            let lock = Self::acquire(path, LockKind::Exclusive, left)?;
            let held = lock.file.metadata().at(path)?;
            match std::fs::metadata(path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(lock),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(path),
            }
            if let Some(t) = timeout {
                if start.elapsed() >= t {
                    return Err(timeout_error(path, start.elapsed()));
                }
            }
        }
    }

    /// Removes the lock file while still holding the lock (see
    /// [`FileLock::acquire_deletable`]); a missing file is fine.
    pub(crate) fn remove_file(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(&self.path),
            _ => Ok(()),
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at(path)
}

fn lock_file(file: &File, path: &Path, kind: LockKind, timeout: Option<Duration>) -> Result<()> {
    let (blocking, non_blocking) = match kind {
        LockKind::Shared => (
            FlockOperation::LockShared,
            FlockOperation::NonBlockingLockShared,
        ),
        LockKind::Exclusive => (
            FlockOperation::LockExclusive,
            FlockOperation::NonBlockingLockExclusive,
        ),
    };
    let Some(timeout) = timeout else {
        loop {
            match rustix::fs::flock(file, blocking) {
                Err(rustix::io::Errno::INTR) => continue,
                other => return other.at(path),
            }
        }
    };
    // flock has no timeout of its own: poll, backing off up to 50 ms.
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match rustix::fs::flock(file, non_blocking) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e).at(path),
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(timeout_error(path, waited));
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn timeout_error(path: &Path, waited: Duration) -> Error {
    let holders = holders_of(path);
    Error::LockTimeout {
        path: path.to_path_buf(),
        waited,
        holders: if holders.is_empty() {
            "another process".to_string()
        } else {
            holders.join(", ")
        },
    }
}

/// The processes holding a `flock` on `path`, as `pid N (command line)`,
/// read from `/proc/locks` (Linux); empty when that cannot be told.
pub(crate) fn holders_of(path: &Path) -> Vec<String> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut pids: Vec<u32> = locks
        .lines()
        .filter_map(|line| lock_line_pid(line, meta.ino()))
        .filter(|pid| *pid != me)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .map(|pid| {
            let command = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    raw.split(|b| *b == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            if command.is_empty() {
                format!("pid {pid}")
            } else {
                format!("pid {pid} ({command})")
            }
        })
        .collect()
}

/// The pid of a `/proc/locks` line for a `FLOCK` on inode `ino`:
/// `1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF` (blocked waiters,
/// marked `->`, are not holders).
fn lock_line_pid(line: &str, ino: u64) -> Option<u32> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(1) != Some(&"FLOCK") {
        return None;
    }
    let pid = fields.get(4)?.parse().ok()?;
    let inode = fields.get(5)?.rsplit(':').next()?.parse::<u64>().ok()?;
    (inode == ino).then_some(pid)
}

/// Keeps garbage collection away while held: content added under a lease
/// (partial downloads, freshly committed blobs, layers not yet named by an
/// image) is never removed by [`Store::gc`](crate::Store::gc), which waits
/// for every lease to end.
///
/// Take one ([`Store::lease`](crate::Store::lease)) around a whole pull, from
/// the first blob to the final tag. Ingests, layer registrations and exports
/// take their own. Do not call `gc` on a thread (or in a process) that holds
/// a lease: it would wait for itself.
#[derive(Debug)]
pub struct Lease {
    _lock: FileLock,
}

impl Lease {
    pub(crate) fn acquire(path: &Path, timeout: Option<Duration>) -> Result<Lease> {
        Ok(Lease {
            _lock: FileLock::acquire(path, LockKind::Shared, timeout)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_lock_times_out_while_held_and_succeeds_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = FileLock::acquire(&path, LockKind::Exclusive, None).unwrap();
        let err = FileLock::acquire(&path, LockKind::Exclusive, Some(Duration::from_millis(30)))
            .unwrap_err();
        assert!(matches!(err, Error::LockTimeout { .. }), "{err}");
        assert!(FileLock::try_acquire(&path, LockKind::Shared)
            .unwrap()
            .is_none());
        drop(held);
        assert!(FileLock::try_acquire(&path, LockKind::Exclusive)
            .unwrap()
            .is_some());
    }

    #[test]
    fn proc_locks_lines_give_the_holder() {
        assert_eq!(
            lock_line_pid("1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF", 1234),
            Some(4242)
        );
        assert_eq!(
            lock_line_pid("1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF", 99),
            None
        );
        assert_eq!(
            lock_line_pid("1: -> FLOCK  ADVISORY  WRITE 77 08:01:1234 0 EOF", 1234),
            None
        );
        assert_eq!(
            lock_line_pid("2: POSIX  ADVISORY  WRITE 4242 08:01:1234 0 EOF", 1234),
            None
        );
    }

    #[test]
    fn shared_locks_coexist_and_exclude_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gc.lock");
        let a = Lease::acquire(&path, None).unwrap();
        let b = Lease::acquire(&path, Some(Duration::from_millis(10))).unwrap();
        assert!(FileLock::try_acquire(&path, LockKind::Exclusive)
            .unwrap()
            .is_none());
        drop((a, b));
        assert!(FileLock::try_acquire(&path, LockKind::Exclusive)
            .unwrap()
            .is_some());
    }

    #[test]
    fn deletable_lock_survives_removal_by_previous_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.lock");
        let first = FileLock::acquire_deletable(&path, None).unwrap();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || FileLock::acquire_deletable(&path, None).unwrap())
        };
        std::thread::sleep(Duration::from_millis(50));
        first.remove_file().unwrap();
        drop(first);
        let second = waiter.join().unwrap();
        // The waiter holds a lock on the file that `path` names now.
        let held = second.file.metadata().unwrap();
        let now = std::fs::metadata(&path).unwrap();
        assert_eq!((held.dev(), held.ino()), (now.dev(), now.ino()));
    }
}
