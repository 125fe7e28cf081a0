//! Small filesystem helpers: atomic replacement, directory fsync, removal
//! of trees with read-only directories, JSON files.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, IoContext, Result};

/// A point where a test may have the process die as `kill -9` would:
/// with `HAUL_TEST_CRASH_AT=N` in the environment, the N-th crash point
/// the process reaches aborts it. Placed before and after every rename
/// and removal that changes what the store holds, so tests can check that
/// no such moment leaves a store the next command misreads.
pub(crate) fn crash_point() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    static REACHED: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        std::env::var("HAUL_TEST_CRASH_AT")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(at) = at {
        if REACHED.fetch_add(1, Ordering::SeqCst) + 1 == *at {
            std::process::abort();
        }
    }
}

/// Makes `path` (a file or a whole directory tree) unreachable with one
/// rename into `trash_dir`, fsynced, then deletes it there. A process
/// killed midway leaves either the entry whole where it was, or an
/// unreachable leftover in the trash that [`empty_trash`] deletes later:
/// never a half-deleted entry where readers look.
pub(crate) fn remove_via_trash(trash_dir: &Path, path: &Path) -> Result<()> {
    let Some(parent) = path.parent() else {
        return remove_tree(path);
    };
    create_dirs(trash_dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let slot = tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(trash_dir)
        .at(trash_dir)?
        .keep();
    let target = slot.join("entry");
    crash_point();
    match fs::rename(path, &target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let _ = fs::remove_dir(&slot);
            return Ok(());
        }
        Err(e) => return Err(e).at(path),
    }
    fsync_dir(parent)?;
    crash_point();
    // Unreachable now: a failure here (another process emptying the trash
    // at the same time) only leaves work for the next command.
    let _ = remove_tree(&slot);
    crash_point();
    Ok(())
}

/// Deletes what killed processes left in the trash (best effort: another
/// process may be deleting the same entries).
pub(crate) fn empty_trash(trash_dir: &Path) {
    let Ok(entries) = fs::read_dir(trash_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let _ = remove_tree(&entry.path());
    }
}

/// Entries (files, directories, links...) under `dir`, not counting `dir`
/// itself; `None` when `dir` cannot be read. Reads directory entries only,
/// no file contents.
pub(crate) fn count_entries(dir: &Path) -> Option<u64> {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).ok()? {
            let entry = entry.ok()?;
            total += 1;
            if entry.file_type().ok()?.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Some(total)
}

/// Flushes a directory's entries (a rename or a new file in it) to disk.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Flushes everything written to the filesystem holding `path` (its data
/// and metadata, by any process) to disk: Linux's syncfs(2).
pub(crate) fn syncfs(path: &Path) -> Result<()> {
    let dir = fs::File::open(path).at(path)?;
    rustix::fs::syncfs(&dir).map_err(io::Error::from).at(path)
}

/// Replaces `dest` with `bytes` atomically: written to a temporary file in
/// `tmp_dir` (same filesystem), fsynced, renamed over `dest`, and the
/// directory of `dest` fsynced. A reader sees the old or the new content.
pub(crate) fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(tmp_dir)
        .at(tmp_dir)?;
    tmp.write_all(bytes).at(tmp.path())?;
    tmp.as_file().sync_data().at(tmp.path())?;
    // Readable by others, like any file of the store (tempfile uses 0600).
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644)).at(tmp.path())?;
    crash_point();
    tmp.persist(dest).map_err(|e| Error::Io {
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    if let Some(parent) = dest.parent() {
        fsync_dir(parent)?;
    }
    crash_point();
    Ok(())
}

/// [`write_atomic`] for several files at once, with two syncs of the
/// filesystem in all instead of two fsyncs per file: every file is written
/// to a temporary file, the filesystem synced, every file renamed over its
/// destination, the filesystem synced again. Each destination is replaced
/// atomically (old or new content); a crash between two renames may leave
/// some replaced and some not.
pub(crate) fn write_atomic_batch(
    tmp_dir: &Path,
    files: &[(std::path::PathBuf, Vec<u8>)],
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let mut temps = Vec::with_capacity(files.len());
    for (dest, bytes) in files {
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(tmp_dir)
            .at(tmp_dir)?;
        tmp.write_all(bytes).at(tmp.path())?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644)).at(tmp.path())?;
        temps.push((tmp, dest));
    }
    syncfs(tmp_dir)?;
    crash_point();
    for (tmp, dest) in temps {
        tmp.persist(dest).map_err(|e| Error::Io {
            path: dest.clone(),
            source: e.error,
        })?;
    }
    syncfs(tmp_dir)?;
    crash_point();
    Ok(())
}

/// `value` as the pretty JSON [`write_json`] writes.
pub(crate) fn json_bytes<T: Serialize>(dest: &Path, value: &T) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::Metadata {
        path: dest.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Writes `value` as pretty JSON with [`write_atomic`].
pub(crate) fn write_json<T: Serialize>(tmp_dir: &Path, dest: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::Metadata {
        path: dest.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(tmp_dir, dest, &bytes)
}

/// Reads a JSON file; `None` when it does not exist.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(path),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| Error::Metadata {
            path: path.to_path_buf(),
            source,
        })
}

/// Removes a file, symlink or directory tree; a missing path is fine.
/// Directories without write or search permission (a layer's read-only
/// directories, when not running as root) are made accessible first.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(path),
    };
    if !meta.is_dir() {
        return remove_file_if_exists(path);
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path);
            fs::remove_dir_all(path).at(path)
        }
        Err(e) => Err(e).at(path),
    }
}

fn make_dirs_writable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                make_dirs_writable(&entry.path());
            }
        }
    }
}

/// Removes a file; a missing one is fine.
pub(crate) fn remove_file_if_exists(path: &Path) -> Result<()> {
    crash_point();
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).at(path),
        _ => Ok(()),
    }
}

/// Bytes used by the regular files under `path` (each inode counted once
/// per directory entry; good enough for a report).
pub(crate) fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    let mut total = 0;
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            total += tree_size(&entry.path());
        }
    }
    total
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Creates `dir` and its parents.
pub(crate) fn create_dirs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).at(dir)
}
