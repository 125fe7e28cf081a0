//! A layer diff's seal: every directory of the tree with its inode number
//! and status-change time (ctime), recorded once when the layer is staged,
//! so that reading the layer later can tell "untouched since" with one
//! `lstat` per directory instead of listing every entry.
//!
//! Why that is enough: adding, removing, renaming or replacing any entry
//! changes its parent directory (mtime and ctime), and a directory's ctime
//! cannot be set back from user space. So when every recorded directory
//! still has its inode and ctime, no entry was added to or removed from the
//! tree, which is what the entry count of `layer.json` checks. The seal
//! also notices what the count misses (an entry renamed, or removed and
//! another added; a directory's mode, owner or xattrs changed). Neither
//! notices a regular file's content or metadata changed in place.
//!
//! A seal that does not match is not a verdict: the tree may have been
//! copied (`cp -a`, `rsync` give every directory a new inode and ctime) or
//! touched harmlessly. The caller then falls back to the full count (see
//! `Store::get_layer`). Timestamps are as fine as the filesystem's clock
//! (a few milliseconds on Linux): a change within that moment after the
//! seal was taken goes unseen, which only matters for a change made while
//! the layer is being registered.
//!
//! On disk, `layers/sha256/CHAIN/diff.seal`: a header line, then one record
//! per directory, `INO CTIME_SEC CTIME_NSEC PATH\0`, the path relative to
//! `diff/` (`.` for `diff/` itself; paths hold any byte but NUL). Its
//! digest and record count go into `layer.json`, so a seal file that is
//! cut or damaged never matches.

use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use haul_oci::{Digest, Digester};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};

/// The seal file's name, next to `diff/`.
pub(crate) const SEAL_FILE: &str = "diff.seal";

const HEADER: &[u8] = b"haul-diff-seal 1\n";

/// What `layer.json` records of a layer's seal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSeal {
    /// Directories recorded (`diff/` itself included).
    pub directories: u64,
    /// SHA-256 of the seal file.
    pub digest: Digest,
}

/// What walking a fresh diff found: its entry count and its seal.
#[derive(Debug, Clone)]
pub(crate) struct Sealed {
    /// Entries under `diff/`, not counting `diff/` itself.
    pub entries: u64,
    pub seal: DiffSeal,
}

/// Walks the diff `diff` once: counts its entries and writes the seal of
/// its directories to `seal_path`.
pub(crate) fn seal_tree(diff: &Path, seal_path: &Path) -> io::Result<Sealed> {
    let mut out = Vec::with_capacity(64 * 1024);
    out.extend_from_slice(HEADER);
    let mut entries = 0;
    let mut directories = 0;
    let root = fs::symlink_metadata(diff)?;
    record(&mut out, Path::new("."), &root);
    directories += 1;
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for entry in fs::read_dir(diff.join(&rel))? {
            let entry = entry?;
            entries += 1;
            if entry.file_type()?.is_dir() {
                let child = rel.join(entry.file_name());
                record(&mut out, &child, &entry.metadata()?);
                directories += 1;
                pending.push(child);
            }
        }
    }
    let mut file = fs::File::create(seal_path)?;
    file.write_all(&out)?;
    Ok(Sealed {
        entries,
        seal: DiffSeal {
            directories,
            digest: Digest::sha256_of(&out),
        },
    })
}

fn record(out: &mut Vec<u8>, rel: &Path, meta: &fs::Metadata) {
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{} {} {} ",
        meta.ino(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    out.extend_from_slice(rel.as_os_str().as_bytes());
    out.push(0);
}

/// Whether every directory `seal` records under `diff` still has its inode
/// and ctime (read from `seal_path`, which must be the file sealed then).
/// Any doubt (a file missing, cut, or not parsing) is `false`.
pub(crate) fn seal_holds(diff: &Path, seal_path: &Path, seal: &DiffSeal) -> bool {
    let Ok(bytes) = fs::read(seal_path) else {
        return false;
    };
    let mut digester = Digester::sha256();
    digester.update(&bytes);
    if digester.finish() != seal.digest {
        return false;
    }
    let Some(body) = bytes.strip_prefix(HEADER) else {
        return false;
    };
    let Ok(dir) = rustix::fs::open(
        diff,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let mut seen = 0;
    for record in body.split(|&b| b == 0) {
        if record.is_empty() {
            continue;
        }
        let Some((ino, ctime, ctime_nsec, path)) = parse_record(record) else {
            return false;
        };
        let Ok(stat) = rustix::fs::statat(
            &dir,
            std::ffi::OsStr::from_bytes(path),
            AtFlags::SYMLINK_NOFOLLOW,
        ) else {
            return false;
        };
        let holds = FileType::from_raw_mode(stat.st_mode) == FileType::Directory
            // (The field types differ between architectures.)
            && i128::from(stat.st_ino) == i128::from(ino)
            && i128::from(stat.st_ctime) == i128::from(ctime)
            && i128::from(stat.st_ctime_nsec) == i128::from(ctime_nsec);
        if !holds {
            return false;
        }
        seen += 1;
    }
    seen == seal.directories
}

/// `INO CTIME_SEC CTIME_NSEC PATH`.
fn parse_record(record: &[u8]) -> Option<(u64, i64, i64, &[u8])> {
    let mut fields = record.splitn(4, |&b| b == b' ');
    let number = |field: Option<&[u8]>| std::str::from_utf8(field?).ok()?.parse::<i64>().ok();
    let ino = u64::try_from(number(fields.next())?).ok()?;
    let ctime = number(fields.next())?;
    let ctime_nsec = number(fields.next())?;
    let path = fields.next().filter(|p| !p.is_empty())?;
    Some((ino, ctime, ctime_nsec, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small tree: a/b/c deep, files at several depths.
    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let top = tempfile::tempdir().unwrap();
        let diff = top.path().join("diff");
        fs::create_dir_all(diff.join("a/b/c")).unwrap();
        fs::create_dir_all(diff.join("d")).unwrap();
        fs::write(diff.join("top"), "t").unwrap();
        fs::write(diff.join("a/b/c/deep"), "x").unwrap();
        fs::write(diff.join("d/f"), "f").unwrap();
        let seal = top.path().join(SEAL_FILE);
        (top, diff, seal)
    }

    #[test]
    fn counts_entries_and_records_every_directory() {
        let (_top, diff, seal_path) = tree();
        let sealed = seal_tree(&diff, &seal_path).unwrap();
        assert_eq!(sealed.entries, 7, "a b c deep d f top");
        assert_eq!(sealed.seal.directories, 5, ". a a/b a/b/c d");
        assert!(seal_holds(&diff, &seal_path, &sealed.seal));
    }

    #[test]
    fn a_change_anywhere_in_the_tree_breaks_the_seal() {
        type Damage = fn(&Path);
        let damages: [(&str, Damage); 6] = [
            ("file removed deep", |d| {
                fs::remove_file(d.join("a/b/c/deep")).unwrap()
            }),
            ("file added deep", |d| {
                fs::write(d.join("a/b/new"), "n").unwrap()
            }),
            ("file renamed", |d| {
                fs::rename(d.join("d/f"), d.join("d/g")).unwrap()
            }),
            ("directory removed", |d| {
                fs::remove_dir_all(d.join("a/b")).unwrap()
            }),
            ("directory replaced by a symlink", |d| {
                fs::remove_dir_all(d.join("d")).unwrap();
                std::os::unix::fs::symlink("a", d.join("d")).unwrap();
            }),
            ("directory mode changed", |d| {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(d.join("a"), fs::Permissions::from_mode(0o700)).unwrap()
            }),
        ];
        for (what, damage) in damages {
            let (_top, diff, seal_path) = tree();
            let sealed = seal_tree(&diff, &seal_path).unwrap();
            damage(&diff);
            assert!(
                !seal_holds(&diff, &seal_path, &sealed.seal),
                "{what}: the seal still holds"
            );
        }
    }

    #[test]
    fn a_seal_file_cut_damaged_or_missing_never_holds() {
        let (_top, diff, seal_path) = tree();
        let sealed = seal_tree(&diff, &seal_path).unwrap();
        let bytes = fs::read(&seal_path).unwrap();
        fs::write(&seal_path, &bytes[..bytes.len() - 10]).unwrap();
        assert!(!seal_holds(&diff, &seal_path, &sealed.seal), "cut");
        let mut flipped = bytes.clone();
        flipped[HEADER.len()] ^= 1;
        fs::write(&seal_path, &flipped).unwrap();
        assert!(!seal_holds(&diff, &seal_path, &sealed.seal), "damaged");
        fs::remove_file(&seal_path).unwrap();
        assert!(!seal_holds(&diff, &seal_path, &sealed.seal), "missing");
        fs::write(&seal_path, &bytes).unwrap();
        assert!(seal_holds(&diff, &seal_path, &sealed.seal), "restored");
    }

    #[test]
    fn paths_with_spaces_and_newlines_are_recorded_whole() {
        let (_top, diff, seal_path) = tree();
        fs::create_dir_all(diff.join("with space/line\nbreak")).unwrap();
        let sealed = seal_tree(&diff, &seal_path).unwrap();
        assert_eq!(sealed.seal.directories, 7);
        assert!(seal_holds(&diff, &seal_path, &sealed.seal));
        fs::write(diff.join("with space/line\nbreak/x"), "x").unwrap();
        assert!(!seal_holds(&diff, &seal_path, &sealed.seal));
    }
}
