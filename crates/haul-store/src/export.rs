//! Flattening layers into a root filesystem.
//!
//! Layers are applied base first, each directory of a layer's diff in one
//! step: first its opaque marker (every lower entry of the directory is
//! removed), then its whiteouts (`.wh.NAME` removes `NAME` from the lower
//! layers), then its entries. A directory over a directory merges; anything
//! else replaces what was there, as overlayfs shows a stack of these
//! directories (so a layer's directory `a` replaces a lower symlink `a`
//! instead of writing through it). Hard links within a layer stay hard
//! links; ownership and devices need [`ExportOptions::as_root`].
//!
//! Nothing is ever written through a symlink: every path is checked with
//! `lstat` and created with `O_EXCL`/`O_NOFOLLOW`. A new target is built in
//! a temporary sibling and renamed into place at the end; an existing empty
//! directory (`.`, a mount point) is written into directly and emptied
//! again on failure. Either way a failure leaves no half-written target.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use haul_oci::Digest;
use rustix::fs::{FileType, Mode, CWD};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::remove_tree;
use crate::images::ImageRecord;
use crate::unpack::{
    create_file, is_whiteout_name, open_dir_nofollow, set_times_nofollow, OPAQUE_MARKER,
    WHITEOUT_PREFIX,
};
use crate::Store;

/// How to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// Apply ownership and create device nodes (needs root). Defaults to
    /// whether the process runs as root.
    pub as_root: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            as_root: crate::running_as_root(),
        }
    }
}

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Entries written (after whiteouts).
    pub entries: u64,
    /// Entries not written: devices when not root, sockets.
    pub skipped: u64,
}

impl Store {
    /// Writes the flattened root filesystem of `image` into `target`.
    pub fn export_image(
        &self,
        image: &ImageRecord,
        target: &Path,
        options: &ExportOptions,
    ) -> Result<ExportReport> {
        let chain: Vec<Digest> = image.layers.iter().map(|l| l.chain_id.clone()).collect();
        self.export_layers(&chain, target, options)
    }

    /// Writes the root filesystem of the layer `top` and those beneath it
    /// (following `parent` links) into `target`.
    pub fn export_rootfs(
        &self,
        top: &Digest,
        target: &Path,
        options: &ExportOptions,
    ) -> Result<ExportReport> {
        let chain: Vec<Digest> = self
            .layer_chain(top)?
            .into_iter()
            .map(|l| l.chain_id)
            .collect();
        self.export_layers(&chain, target, options)
    }

    /// Applies the layers `chain_ids` (base first, all registered) into
    /// `target`, which must not exist or be an empty directory.
    pub fn export_layers(
        &self,
        chain_ids: &[Digest],
        target: &Path,
        options: &ExportOptions,
    ) -> Result<ExportReport> {
        let _lease = self.lease()?;
        let target_exists = match fs::symlink_metadata(target) {
            Ok(m) if m.is_dir() => {
                if fs::read_dir(target).at(target)?.next().is_some() {
                    return Err(Error::TargetNotEmpty {
                        path: target.to_path_buf(),
                    });
                }
                true
            }
            Ok(_) => {
                return Err(Error::TargetNotEmpty {
                    path: target.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e).at(target),
        };
        let mut diffs = Vec::with_capacity(chain_ids.len());
        for chain_id in chain_ids {
            if self.get_layer(chain_id)?.is_none() {
                return Err(Error::LayerNotFound {
                    chain_id: chain_id.clone(),
                });
            }
            diffs.push(self.layer_diff_dir(chain_id));
        }
        // A new target is built beside it and renamed into place; an
        // existing empty directory may be `.` or a mount point, which
        // cannot be replaced, so it is filled in place.
        let work = if target_exists {
            target.to_path_buf()
        } else {
            let parent = match target.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            fs::create_dir_all(&parent).map_err(|e| target_error(&parent, e))?;
            let name = target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            tempfile::Builder::new()
                .prefix(&format!(".{name}.haul-export-"))
                .tempdir_in(&parent)
                .map_err(|e| target_error(&parent, e))?
                .keep()
        };
        let result = (|| {
            let mut exporter = Exporter {
                options,
                dirs: Vec::new(),
                links: HashMap::new(),
                report: ExportReport::default(),
            };
            for diff in &diffs {
                exporter.links.clear();
                exporter.apply_dir(diff, &work)?;
            }
            exporter.finish_dirs()?;
            if !target_exists {
                fs::set_permissions(&work, fs::Permissions::from_mode(0o755)).at(&work)?;
                fs::rename(&work, target).at(target)?;
            }
            Ok(exporter.report)
        })();
        if result.is_err() {
            if target_exists {
                for name in crate::sorted_names(&work).unwrap_or_default() {
                    let _ = remove_tree(&work.join(name));
                }
            } else {
                let _ = remove_tree(&work);
            }
        }
        result.map_err(|err| match err {
            // I/O under the work directory is about the target: name the
            // target's own path, not the temporary sibling's.
            Error::Io { path, source } if path.starts_with(&work) => {
                let inside = path.strip_prefix(&work).unwrap_or(&path);
                target_error(&target.join(inside), source)
            }
            other => other,
        })
    }
}

fn target_error(path: &Path, source: io::Error) -> Error {
    Error::Target {
        path: path.to_path_buf(),
        source,
    }
}

struct Exporter<'a> {
    options: &'a ExportOptions,
    /// Directories to give their source's metadata at the end: the
    /// exported path, the layer directory it came from, its metadata.
    dirs: Vec<(PathBuf, PathBuf, fs::Metadata)>,
    /// Hard links of the current layer: source inode -> exported path.
    links: HashMap<(u64, u64), PathBuf>,
    report: ExportReport,
}

impl Exporter<'_> {
    /// Applies the layer directory `src` onto the (real) directory `dst`.
    fn apply_dir(&mut self, src: &Path, dst: &Path) -> Result<()> {
        let names = crate::sorted_names(src)?;
        if names.iter().any(|n| n == OPAQUE_MARKER) {
            for lower in crate::sorted_names(dst)? {
                remove_tree(&dst.join(lower))?;
            }
        }
        for name in &names {
            if name == OPAQUE_MARKER || !is_whiteout_name(name) {
                continue;
            }
            let hidden = &name.as_bytes()[WHITEOUT_PREFIX.len()..];
            if matches!(hidden, b"" | b"." | b"..") {
                continue;
            }
            remove_tree(&dst.join(OsStr::from_bytes(hidden)))?;
        }
        for name in &names {
            if is_whiteout_name(name) {
                continue;
            }
            let from = src.join(name);
            let to = dst.join(name);
            let meta = fs::symlink_metadata(&from).at(&from)?;
            if meta.is_dir() {
                match fs::symlink_metadata(&to) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_tree(&to)?;
                        make_dir(&to)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => make_dir(&to)?,
                    Err(e) => return Err(e).at(&to),
                }
                self.apply_dir(&from, &to)?;
                self.dirs.push((to, from, meta));
                self.report.entries += 1;
            } else {
                remove_tree(&to)?;
                self.copy_node(&from, &to, &meta)?;
            }
        }
        Ok(())
    }

    /// Creates the non-directory `to` like `from`.
    fn copy_node(&mut self, from: &Path, to: &Path, meta: &fs::Metadata) -> Result<()> {
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                fs::hard_link(first, to).at(to)?;
                self.report.entries += 1;
                return Ok(());
            }
        }
        let file_type = meta.file_type();
        if file_type.is_file() {
            let mut source = File::open(from).at(from)?;
            let mut file = create_file(to).at(to)?;
            io::copy(&mut source, &mut file).at(to)?;
            self.apply_to_fd(&file, from, meta).at(to)?;
        } else if file_type.is_symlink() {
            let link = fs::read_link(from).at(from)?;
            std::os::unix::fs::symlink(&link, to).at(to)?;
            if self.options.as_root {
                std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).at(to)?;
            }
            copy_xattrs(from, to);
            set_times_nofollow(to, mtime_of(meta)).at(to)?;
        } else if file_type.is_fifo()
            || ((file_type.is_char_device() || file_type.is_block_device()) && self.options.as_root)
        {
            let kind = if file_type.is_fifo() {
                FileType::Fifo
            } else if file_type.is_char_device() {
                FileType::CharacterDevice
            } else {
                FileType::BlockDevice
            };
            match rustix::fs::mknodat(CWD, to, kind, Mode::from_raw_mode(0o600), meta.rdev()) {
                Ok(()) => {}
                // Root without CAP_MKNOD (a user namespace): skip too.
                Err(rustix::io::Errno::PERM) | Err(rustix::io::Errno::ACCESS) => {
                    self.report.skipped += 1;
                    return Ok(());
                }
                Err(e) => return Err(e).at(to),
            }
            if self.options.as_root {
                std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).at(to)?;
            }
            copy_xattrs(from, to);
            fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777)).at(to)?;
            set_times_nofollow(to, mtime_of(meta)).at(to)?;
        } else {
            self.report.skipped += 1;
            return Ok(());
        }
        if meta.nlink() > 1 {
            self.links
                .insert((meta.dev(), meta.ino()), to.to_path_buf());
        }
        self.report.entries += 1;
        Ok(())
    }

    fn apply_to_fd(&self, file: &File, from: &Path, meta: &fs::Metadata) -> io::Result<()> {
        if self.options.as_root {
            std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()))?;
        }
        copy_xattrs_fd(from, file);
        file.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        let mtime = UNIX_EPOCH + mtime_of(meta);
        let atime = UNIX_EPOCH + Duration::from_secs(meta.atime().max(0) as u64);
        file.set_times(fs::FileTimes::new().set_accessed(atime).set_modified(mtime))
    }

    /// Gives directories their metadata, deepest first (the last layer to
    /// touch a directory wins).
    fn finish_dirs(&mut self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        let mut dirs: Vec<(PathBuf, PathBuf, fs::Metadata)> = Vec::new();
        for (path, from, meta) in self.dirs.drain(..).rev() {
            if seen.insert(path.clone()) {
                dirs.push((path, from, meta));
            }
        }
        dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
        for (path, from, meta) in dirs {
            let dir = match open_dir_nofollow(&path) {
                Ok(d) => d,
                // Removed or replaced by a later layer.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                    continue
                }
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
                    continue
                }
                Err(e) => return Err(e).at(&path),
            };
            let mtime = UNIX_EPOCH + mtime_of(&meta);
            if self.options.as_root {
                std::os::unix::fs::fchown(&dir, Some(meta.uid()), Some(meta.gid())).at(&path)?;
            }
            copy_xattrs_fd(&from, &dir);
            dir.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
                .at(&path)?;
            dir.set_times(fs::FileTimes::new().set_accessed(mtime).set_modified(mtime))
                .at(&path)?;
        }
        Ok(())
    }
}

fn make_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new().mode(0o700).create(path).at(path)
}

/// Copies extended attributes, best effort (a filesystem or a user may not
/// allow some).
fn copy_xattrs(from: &Path, to: &Path) {
    for (name, value) in list_xattrs(from) {
        let _ = rustix::fs::lsetxattr(to, &name, &value, rustix::fs::XattrFlags::empty());
    }
}

fn copy_xattrs_fd(from: &Path, to: &File) {
    for (name, value) in list_xattrs(from) {
        let _ = rustix::fs::fsetxattr(to, &name, &value, rustix::fs::XattrFlags::empty());
    }
}

fn list_xattrs(path: &Path) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(0) | Err(_) => return Vec::new(),
        Ok(n) => n,
    };
    let mut names = vec![0u8; size];
    let Ok(len) = rustix::fs::llistxattr(path, &mut names[..]) else {
        return Vec::new();
    };
    names.truncate(len);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::ffi::OsStr::from_bytes(name);
        let Ok(size) = rustix::fs::lgetxattr_query(path, name) else {
            continue;
        };
        let mut value = vec![0u8; size];
        if let Ok(len) = rustix::fs::lgetxattr(path, name, &mut value[..]) {
            value.truncate(len);
            out.push((name.to_os_string(), value));
        }
    }
    out
}

/// A file's modification time since the epoch, nanoseconds included.
fn mtime_of(meta: &fs::Metadata) -> Duration {
    use std::os::unix::fs::MetadataExt;
    Duration::new(
        meta.mtime().max(0) as u64,
        meta.mtime_nsec().clamp(0, 999_999_999) as u32,
    )
}
